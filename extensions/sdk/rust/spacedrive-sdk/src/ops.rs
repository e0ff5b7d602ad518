//! The wire types of every registered operation: one request struct per operation (its fields are exactly the
//! properties of `capengine/schemas/operations/<method>.schema.json`; tests/test_sdk_rust.py checks both
//! directions) and the result it answers with.
//!
//! Use them through the typed handles (`ctx.vdfs().list_dir("/photos")`), or send one directly with
//! `ctx.call(&op)`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// An operation request: its method name, whether it runs in a library, and the result type it answers with.
pub trait Operation: Serialize {
    const METHOD: &'static str;
    /// Sent with the context's library id (vdfs.*, ai.*); the others are sent without one.
    const NEEDS_LIBRARY: bool;
    type Output: DeserializeOwned;
}

macro_rules! operation {
    ($req:ty, $method:literal, $library:literal, $out:ty) => {
        impl Operation for $req {
            const METHOD: &'static str = $method;
            const NEEDS_LIBRARY: bool = $library;
            type Output = $out;
        }
    };
}

/// What a directory entry is (`lstat` semantics: links are reported, never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

// ---- vdfs.* -------------------------------------------------------------------------------------------------

/// `vdfs.list_dir`: a directory's entries, sorted by name.
#[derive(Debug, Clone, Serialize)]
pub struct ListDir {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<DirEntry>,
}
operation!(ListDir, "vdfs.list_dir", true, DirListing);

/// `vdfs.read_file`: bytes of a regular file (`offset`/`length` for a part; at most 16 MiB per call).
#[derive(Debug, Clone, Serialize)]
pub struct ReadFile {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// The bytes read (decoded from the envelope's base64), the file's full size and its guessed MIME type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FileData {
    #[serde(deserialize_with = "base64_bytes")]
    pub data: Vec<u8>,
    pub size: u64,
    pub offset: u64,
    pub mime: String,
}
operation!(ReadFile, "vdfs.read_file", true, FileData);

fn base64_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    base64::decode(text.as_bytes()).map_err(serde::de::Error::custom)
}

/// `vdfs.stat`: kind, size and mtime of one entry.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Metadata {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: i64,
}
operation!(Stat, "vdfs.stat", true, Metadata);

/// `vdfs.write_sidecar`: store text derived from a regular file (atomically; keyed by the file's content).
#[derive(Debug, Clone, Serialize)]
pub struct WriteSidecar {
    pub path: String,
    pub kind: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SidecarWritten {
    pub path: String,
    pub kind: String,
    pub size: u64,
}
operation!(WriteSidecar, "vdfs.write_sidecar", true, SidecarWritten);

/// `vdfs.read_sidecar`: the text stored for a file and kind, by the caller or (`writer`: its id) by another
/// extension, when a policy lets the caller read it (policies see `args.writer`).
#[derive(Debug, Clone, Serialize)]
pub struct ReadSidecar {
    pub path: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sidecar {
    pub path: String,
    pub kind: String,
    /// Whose sidecar it is: the writer asked for, or the caller's own namespace.
    pub writer: String,
    pub data: String,
}
operation!(ReadSidecar, "vdfs.read_sidecar", true, Sidecar);

// ---- ai.* ---------------------------------------------------------------------------------------------------

/// `ai.ocr`: the text of an image (Tesseract); `language` like `eng` or `eng+deu`.
#[derive(Debug, Clone, Serialize)]
pub struct Ocr {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OcrText {
    pub text: String,
    /// Mean word confidence, 0..1.
    pub confidence: f64,
}
operation!(Ocr, "ai.ocr", true, OcrText);

// ---- credentials.* ------------------------------------------------------------------------------------------

/// `credentials.store`: a secret in the extension's own vault (never visible to policies or logs).
#[derive(Clone, Serialize)]
pub struct StoreCredential {
    pub name: String,
    pub secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Overwrite a secret already stored under `name`; without it (or `Some(false)`) that is
    /// `Error::AlreadyExists`. Policies see it as `args.replace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace: Option<bool>,
}

impl core::fmt::Debug for StoreCredential {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoreCredential").field("name", &self.name).field("secret", &"***")
            .field("kind", &self.kind).field("replace", &self.replace).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CredentialStored {
    pub name: String,
    pub kind: String,
    pub stored: bool,
}
operation!(StoreCredential, "credentials.store", false, CredentialStored);

/// `credentials.get`
#[derive(Debug, Clone, Serialize)]
pub struct GetCredential {
    pub name: String,
}

#[derive(Clone, PartialEq, Deserialize)]
pub struct Credential {
    pub name: String,
    pub kind: String,
    pub secret: String,
}

impl core::fmt::Debug for Credential {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credential").field("name", &self.name).field("kind", &self.kind).field("secret", &"***")
            .finish()
    }
}
operation!(GetCredential, "credentials.get", false, Credential);

/// `credentials.delete`
#[derive(Debug, Clone, Serialize)]
pub struct DeleteCredential {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CredentialDeleted {
    pub name: String,
    pub deleted: bool,
}
operation!(DeleteCredential, "credentials.delete", false, CredentialDeleted);

// ---- test.* -------------------------------------------------------------------------------------------------

/// `test.ping`: an echo, for round-trip tests.
#[derive(Debug, Clone, Serialize)]
pub struct Ping {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pong {
    pub message: String,
}
operation!(Ping, "test.ping", false, Pong);

// ---- job.* (the running job's lifecycle; docs/abi.md "Job operations") ----------------------------------------

/// Whether the host asks the job to stop (every job.* answer but `job.state` carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Interruption {
    pub interrupted: bool,
}

/// `job.progress`: the fraction done (0..1) and what the job is doing.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
operation!(Progress, "job.progress", false, Interruption);

/// `job.metrics`: add to the job's counters.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MetricTotals {
    pub items: u64,
    pub bytes: u64,
    pub interrupted: bool,
}
operation!(Metrics, "job.metrics", false, MetricTotals);

/// `job.interrupted`: has the host asked this job to stop (cancel, shutdown)?
#[derive(Debug, Clone, Serialize)]
pub struct Interrupted {}
operation!(Interrupted, "job.interrupted", false, Interruption);

/// `job.warn`: a warning the job's status shows (not a failure).
#[derive(Debug, Clone, Serialize)]
pub struct Warn {
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Warned {
    pub warnings: u64,
    pub interrupted: bool,
}
operation!(Warn, "job.warn", false, Warned);

/// `job.checkpoint`: persist the job's state; a resumed run starts from the last one.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint<S: Serialize> {
    pub state: S,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Checkpointed {
    pub size: u64,
    pub interrupted: bool,
}

impl<S: Serialize> Operation for Checkpoint<S> {
    const METHOD: &'static str = "job.checkpoint";
    const NEEDS_LIBRARY: bool = false;
    type Output = Checkpointed;
}

/// `job.state`: the last checkpoint of this run (`resumed` is true when there is one).
#[derive(Debug, Clone, Serialize)]
pub struct JobState {}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SavedState {
    pub resumed: bool,
    #[serde(default)]
    pub state: serde_json::Value,
}
operation!(JobState, "job.state", false, SavedState);
