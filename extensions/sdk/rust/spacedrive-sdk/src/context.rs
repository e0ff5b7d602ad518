//! `JobContext`: what a job sees of the host. Typed handles for the operations (`vdfs()`, `ai()`,
//! `credentials()`) and the job's lifecycle (progress, items, checkpoints, interruption, warnings).
//! Every method is one `spacedrive_call`, decided by the policy set like any other call.

use core::cell::Cell;
use core::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ffi;
use crate::ops::{self, Operation};

/// A library's id: 16 raw UUID bytes (RFC 4122 order), as `spacedrive_call` takes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LibraryId(pub [u8; 16]);

impl LibraryId {
    /// Parse `6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6` (hyphens optional, any case).
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for c in text.chars() {
            if c == '-' {
                continue;
            }
            let v = c.to_digit(16).ok_or_else(|| Error::InvalidArgument { message: format!("library id {:?} is not a UUID", text) })?;
            if nibbles >= 32 {
                return Err(Error::InvalidArgument { message: format!("library id {:?} is too long", text) });
            }
            out[nibbles / 2] |= (v as u8) << if nibbles % 2 == 0 { 4 } else { 0 };
            nibbles += 1;
        }
        if nibbles != 32 {
            return Err(Error::InvalidArgument { message: format!("library id {:?} is not a UUID", text) });
        }
        Ok(LibraryId(out))
    }
}

impl fmt::Display for LibraryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i == 4 || i == 6 || i == 8 || i == 10 {
                f.write_str("-")?;
            }
            write!(f, "{:02x}", b)?;
        }
        Ok(())
    }
}

impl fmt::Debug for LibraryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LibraryId({})", self)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// Send `method` with a JSON `payload`; the envelope's result, or its error as an `Error`.
pub fn call_raw(method: &str, library: Option<&LibraryId>, payload: &[u8]) -> Result<serde_json::Value> {
    let bytes = ffi::call(method, library.map(|l| &l.0), payload).map_err(Error::Abi)?;
    let envelope: Envelope = serde_json::from_slice(&bytes)?;
    if envelope.ok {
        return Ok(envelope.result.unwrap_or(serde_json::Value::Null));
    }
    let body = envelope.error.ok_or_else(|| Error::Decode("error envelope without an error".to_string()))?;
    Err(Error::from_envelope(&body.code, body.message, body.rule, body.retry_after_ms))
}

/// Log levels of `spacedrive_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

/// One line to the host's log for this job (cut at 4 KiB; at most 1,000 lines per job).
pub fn log(level: Level, message: &str) {
    ffi::log(level as i32, message);
}

/// FNV-1a: enough to tell whether a checkpoint repeats the previous one.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The running job's view of the host.
pub struct JobContext {
    job: &'static str,
    input: serde_json::Value,
    library: Option<LibraryId>,
    interrupted: Cell<bool>,
    lifecycle_error_logged: Cell<bool>,
    last_checkpoint: Cell<Option<u64>>,
}

impl JobContext {
    /// A context for `job` with its input; the library is the input's `"library"` field when it is a UUID.
    pub fn new(job: &'static str, input: serde_json::Value) -> Self {
        let library = input.get("library").and_then(|v| v.as_str()).and_then(|s| LibraryId::parse(s).ok());
        JobContext { job, input, library, interrupted: Cell::new(false), lifecycle_error_logged: Cell::new(false),
                     last_checkpoint: Cell::new(None) }
    }

    pub fn job_name(&self) -> &'static str {
        self.job
    }

    /// The job's input JSON as the host gave it.
    pub fn input(&self) -> &serde_json::Value {
        &self.input
    }

    /// The library vdfs/ai calls go to: the input's `"library"`, unless changed with `set_library`.
    pub fn library(&self) -> Option<LibraryId> {
        self.library
    }

    pub fn set_library(&mut self, library: Option<LibraryId>) {
        self.library = library;
    }

    /// Send one typed operation (with this context's library when the operation needs one).
    pub fn call<O: Operation>(&self, op: &O) -> Result<O::Output> {
        let library = if O::NEEDS_LIBRARY { self.library.as_ref() } else { None };
        if O::NEEDS_LIBRARY && library.is_none() {
            return Err(Error::LibraryRequired {
                message: format!("{} needs a library: give the job {{\"library\": \"<uuid>\"}} or call set_library", O::METHOD),
            });
        }
        let payload = serde_json::to_vec(op)?;
        let result = call_raw(O::METHOD, library, &payload)?;
        serde_json::from_value(result)
            .map_err(|e| Error::Decode(format!("{} answered with an unexpected shape: {}", O::METHOD, e)))
    }

    pub fn vdfs(&self) -> Vdfs<'_> {
        Vdfs { ctx: self }
    }

    pub fn ai(&self) -> Ai<'_> {
        Ai { ctx: self }
    }

    pub fn credentials(&self) -> Credentials<'_> {
        Credentials { ctx: self }
    }

    // ---- logging (spacedrive_log only: no host call, no decision) ----

    pub fn log(&self, level: Level, message: &str) {
        log(level, message);
    }

    pub fn debug(&self, message: &str) {
        log(Level::Debug, message);
    }

    pub fn info(&self, message: &str) {
        log(Level::Info, message);
    }

    pub fn error(&self, message: &str) {
        log(Level::Error, message);
    }

    // ---- lifecycle (job.*) ----

    /// A lifecycle call that failed (not declared, denied) must not fail the job, but must not go unnoticed.
    fn lifecycle<O: Operation>(&self, op: &O) -> Option<O::Output> {
        match self.call(op) {
            Ok(out) => Some(out),
            Err(err) => {
                if !self.lifecycle_error_logged.replace(true) {
                    log(Level::Warn, &format!("{} failed: {} (declare job.* in the manifest and allow it by policy)",
                                              O::METHOD, err));
                }
                None
            }
        }
    }

    /// Has the host asked this job to stop (a cancel, a shutdown)? Once true, it stays true.
    /// When it is, checkpoint and return `Err(Error::Interrupted)`.
    pub fn check_interrupt(&self) -> bool {
        if !self.interrupted.get() {
            if let Some(answer) = self.lifecycle(&ops::Interrupted {}) {
                self.interrupted.set(answer.interrupted);
            }
        }
        self.interrupted.get()
    }

    /// Progress as a fraction (clamped to 0..1; NaN counts as 0) and what the job is doing.
    pub fn report_progress(&self, fraction: f32, message: &str) {
        let fraction = if fraction.is_nan() { 0.0 } else { f64::from(fraction.max(0.0).min(1.0)) };
        let message = if message.is_empty() { None } else { Some(truncate(message, 256)) };
        if let Some(answer) = self.lifecycle(&ops::Progress { progress: fraction, message }) {
            self.interrupted.set(self.interrupted.get() || answer.interrupted);
        }
    }

    /// Count items done (files scanned, ...).
    pub fn increment_items(&self, count: u64) {
        self.add_metrics(Some(count), None);
    }

    /// Count bytes processed.
    pub fn increment_bytes(&self, count: u64) {
        self.add_metrics(None, Some(count));
    }

    fn add_metrics(&self, items: Option<u64>, bytes: Option<u64>) {
        if let Some(answer) = self.lifecycle(&ops::Metrics { items, bytes }) {
            self.interrupted.set(self.interrupted.get() || answer.interrupted);
        }
    }

    /// A warning the job's status shows (a job.warn call; also logged). Not a failure. For a log line alone,
    /// use `log(Level::Warn, ..)`.
    pub fn warn(&self, message: &str) {
        log(Level::Warn, message);
        if let Some(answer) = self.lifecycle(&ops::Warn { message: truncate(message, 1024) }) {
            self.interrupted.set(self.interrupted.get() || answer.interrupted);
        }
    }

    /// Persist `state`: if this run is interrupted (or the host stops), it resumes from here. Errors are
    /// returned (a checkpoint over the host's size cap is `ResourceExhausted`): losing one is not silent.
    pub fn checkpoint<S: Serialize>(&self, state: &S) -> Result<()> {
        let value = serde_json::to_value(state)?;
        let print = fingerprint(&serde_json::to_vec(&value)?);
        let answer = self.call(&ops::Checkpoint { state: value })?;
        self.last_checkpoint.set(Some(print));
        self.interrupted.set(self.interrupted.get() || answer.interrupted);
        Ok(())
    }

    /// `checkpoint`, unless `state` is what was checkpointed last.
    pub(crate) fn checkpoint_if_changed<S: Serialize>(&self, state: &S) -> Result<()> {
        let print = fingerprint(&serde_json::to_vec(&serde_json::to_value(state)?)?);
        if self.last_checkpoint.get() == Some(print) {
            return Ok(());
        }
        self.checkpoint(state)
    }

    /// The last checkpoint of this run, when the host resumes it.
    pub(crate) fn saved_state(&self) -> Result<Option<serde_json::Value>> {
        let saved = self.call(&ops::JobState {})?;
        Ok(if saved.resumed { Some(saved.state) } else { None })
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `vdfs.*` in the context's library.
pub struct Vdfs<'a> {
    ctx: &'a JobContext,
}

impl<'a> Vdfs<'a> {
    pub fn list_dir(&self, path: &str) -> Result<ops::DirListing> {
        self.ctx.call(&ops::ListDir { path: path.to_string() })
    }

    /// A whole file's bytes (at most 16 MiB; use `read_range` for more).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self.read_range(path, None, None)?.data)
    }

    /// Part of a file, with its full size and MIME type.
    pub fn read_range(&self, path: &str, offset: Option<u64>, length: Option<u64>) -> Result<ops::FileData> {
        self.ctx.call(&ops::ReadFile { path: path.to_string(), offset, length })
    }

    pub fn stat(&self, path: &str) -> Result<ops::Metadata> {
        self.ctx.call(&ops::Stat { path: path.to_string() })
    }

    /// Store text derived from the regular file at `path` as a sidecar of `kind` (e.g. "ocr-text").
    pub fn write_sidecar(&self, path: &str, kind: &str, data: &str) -> Result<ops::SidecarWritten> {
        self.ctx.call(&ops::WriteSidecar { path: path.to_string(), kind: kind.to_string(), data: data.to_string() })
    }

    /// The caller's own sidecar of `kind` for `path`.
    pub fn read_sidecar(&self, path: &str, kind: &str) -> Result<String> {
        Ok(self.ctx.call(&ops::ReadSidecar { path: path.to_string(), kind: kind.to_string(), writer: None })?.data)
    }

    /// The sidecar another extension (`writer`, its id) stored for `path`, if a policy allows reading it.
    pub fn read_sidecar_of(&self, path: &str, kind: &str, writer: &str) -> Result<String> {
        Ok(self.ctx.call(&ops::ReadSidecar { path: path.to_string(), kind: kind.to_string(),
                                             writer: Some(writer.to_string()) })?.data)
    }
}

/// `ai.*` in the context's library.
pub struct Ai<'a> {
    ctx: &'a JobContext,
}

impl<'a> Ai<'a> {
    /// The text of an image (English).
    pub fn ocr(&self, path: &str) -> Result<ops::OcrText> {
        self.ctx.call(&ops::Ocr { path: path.to_string(), language: None })
    }

    /// The text of an image in `language` (Tesseract codes: "eng", "eng+deu").
    pub fn ocr_in(&self, path: &str, language: &str) -> Result<ops::OcrText> {
        self.ctx.call(&ops::Ocr { path: path.to_string(), language: Some(language.to_string()) })
    }
}

/// `credentials.*`: the extension's own vault (another extension's secrets are unreachable).
pub struct Credentials<'a> {
    ctx: &'a JobContext,
}

impl<'a> Credentials<'a> {
    /// Store a new secret; `Error::AlreadyExists` when one of that name is stored (use `replace` to overwrite).
    pub fn store(&self, name: &str, secret: &str, kind: Option<&str>) -> Result<ops::CredentialStored> {
        self.ctx.call(&ops::StoreCredential { name: name.to_string(), secret: secret.to_string(),
                                              kind: kind.map(str::to_string), replace: None })
    }

    /// Store a secret, overwriting one of that name (`replace: true`; policies see `args.replace`).
    pub fn replace(&self, name: &str, secret: &str, kind: Option<&str>) -> Result<ops::CredentialStored> {
        self.ctx.call(&ops::StoreCredential { name: name.to_string(), secret: secret.to_string(),
                                              kind: kind.map(str::to_string), replace: Some(true) })
    }

    /// The secret; `Error::NotFound` when there is none of that name.
    pub fn get(&self, name: &str) -> Result<String> {
        Ok(self.ctx.call(&ops::GetCredential { name: name.to_string() })?.secret)
    }

    /// Whether a secret was deleted.
    pub fn delete(&self, name: &str) -> Result<bool> {
        Ok(self.ctx.call(&ops::DeleteCredential { name: name.to_string() })?.deleted)
    }
}

/// Read the job's input JSON (`{}` when the host gives none).
pub(crate) fn read_input() -> Result<serde_json::Value> {
    let bytes = ffi::input().map_err(Error::Abi)?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Decode `value` as T, naming what was being decoded.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Decode(format!("{}: {}", what, e)))
}
