//! Photo OCR with the Rust SDK: list a directory of a library, read each image, OCR it, store the text as an
//! "ocr-text" sidecar. The same calls, in the same order, as the C example (extensions/photo-ocr), so the
//! policy set decides both alike. Input: {"library": "<uuid>", "dir": "/photos"} (dir is optional).

use serde::Deserialize;
use spacedrive_sdk::ops::EntryKind;
use spacedrive_sdk::prelude::*;
use spacedrive_sdk::Level;

#[extension(id = "com.example.photo-ocr-rs", name = "Photo OCR (Rust)", version = "0.1.0", jobs = [scan],
            operations = ["vdfs.list_dir", "vdfs.read_file", "ai.ocr", "vdfs.write_sidecar"],
            description = "Recognises text in the photos of a library and stores it as ocr-text sidecars (Rust SDK).")]
struct PhotoOcr;

#[derive(Deserialize)]
struct ScanInput {
    #[allow(dead_code)] // read by the SDK as the context's library
    library: String,
    #[serde(default = "default_dir")]
    dir: String,
}

fn default_dir() -> String {
    "/photos".to_string()
}

const IMAGE_SUFFIXES: [&str; 9] = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".PNG", ".JPG", ".JPEG"];

fn is_image(name: &str) -> bool {
    IMAGE_SUFFIXES.iter().any(|s| name.len() > s.len() && name.ends_with(s))
}

/// Log a failed step the way the C example does (a log line, not job.warn: the C example makes no job.* calls,
/// and the policy set must see the same calls from both): "<what> <path>: <CODE>" (plus the deciding rule).
fn report(ctx: &JobContext, what: &str, path: &str, err: &Error) {
    let rule = err.rule().map(|r| format!(" (rule {})", r)).unwrap_or_default();
    ctx.log(Level::Warn, &format!("{} {}: {}{}", what, path, err.code(), rule));
}

/// One image: read, OCR, store the text. The error says which step failed.
fn recognise(ctx: &JobContext, path: &str) -> core::result::Result<String, (&'static str, Error)> {
    ctx.vdfs().read_range(path, None, Some(1 << 20)).map_err(|e| ("read", e))?;
    let text = ctx.ai().ocr(path).map_err(|e| ("ocr", e))?.text;
    ctx.vdfs().write_sidecar(path, "ocr-text", &text).map_err(|e| ("sidecar", e))?;
    Ok(text)
}

#[job(name = "scan")]
fn scan(ctx: &JobContext, input: ScanInput) -> Result<()> {
    if ctx.library().is_none() {
        return Err(Error::Failed("input must be {\"library\": \"<uuid>\", \"dir\": \"/photos\"} (dir is optional)".into()));
    }
    let dir = input.dir;
    let listing = ctx.vdfs().list_dir(&dir).map_err(|e| {
        report(ctx, "list", &dir, &e);
        e
    })?;
    let (mut done, mut failed) = (0u32, 0u32);
    for entry in listing.entries.iter().filter(|e| e.kind != EntryKind::Directory && is_image(&e.name)) {
        let path = if dir == "/" { format!("/{}", entry.name) } else { format!("{}/{}", dir, entry.name) };
        match recognise(ctx, &path) {
            Ok(text) => {
                ctx.info(&format!("ocr {}: {}", path, text));
                done += 1;
            }
            Err((what, err)) => {
                report(ctx, what, &path, &err);
                failed += 1;
            }
        }
    }
    ctx.info(&format!("scanned {}: {} image(s) recognised, {} failed", dir, done, failed));
    if failed > 0 {
        return Err(Error::Failed(format!("{} image(s) failed", failed)));
    }
    Ok(())
}
