//! Sends every request type of the SDK through its typed API, once with every optional field set and once with
//! none, and logs "ok <method>" or "err <method> <CODE> <message>" for each. tests/test_sdk_rust.py runs it
//! under a host that validates each payload against capengine/schemas/operations/ and checks that every
//! registered operation, and every property of its schema, was sent: the SDK and the schemas cannot disagree
//! in either direction without a test failing. The answers go through the SDK's result types, so a result
//! shape the SDK cannot decode fails too.
//! Input: {"library": "<uuid>", "dir": "/photos", "file": "/photos/receipt.png"}.

use serde::{Deserialize, Serialize};
use spacedrive_sdk::ops;
use spacedrive_sdk::prelude::*;

#[extension(id = "com.example.sdk-conformance", name = "SDK conformance", version = "0.1.0", jobs = [conformance],
            operations = ["vdfs.*", "ai.*", "credentials.*", "test.*", "job.*"])]
struct Conformance;

#[derive(Deserialize)]
struct Input {
    dir: String,
    file: String,
}

#[derive(Serialize)]
struct State {
    step: u32,
    note: String,
}

fn outcome<T>(ctx: &JobContext, method: &str, result: Result<T>) {
    match result {
        Ok(_) => ctx.info(&format!("ok {}", method)),
        Err(err) => ctx.info(&format!("err {} {} {}", method, err.code(), err.message())),
    }
}

#[job(name = "conformance")]
fn conformance(ctx: &JobContext, input: Input) -> Result<()> {
    let (dir, file) = (input.dir.as_str(), input.file.as_str());
    let vdfs = ctx.vdfs();
    outcome(ctx, "vdfs.list_dir", vdfs.list_dir(dir));
    outcome(ctx, "vdfs.read_file", vdfs.read_range(file, Some(1), Some(7)).and_then(|d| {
        if d.data.len() == 7 && d.offset == 1 { Ok(d) } else { Err(Error::Decode(format!("read {} bytes at {}", d.data.len(), d.offset))) }
    }));
    outcome(ctx, "vdfs.read_file", vdfs.read_file(file));
    outcome(ctx, "vdfs.stat", vdfs.stat(file));
    outcome(ctx, "vdfs.write_sidecar", vdfs.write_sidecar(file, "sdk-test", "text with \"quotes\" and ünïcode"));
    outcome(ctx, "vdfs.read_sidecar", vdfs.read_sidecar(file, "sdk-test").and_then(|text| {
        if text == "text with \"quotes\" and ünïcode" { Ok(text) } else { Err(Error::Decode(format!("sidecar came back as {:?}", text))) }
    }));
    // The test installs this module, so its namespace is its id: naming itself as the writer reads the same sidecar.
    outcome(ctx, "vdfs.read_sidecar", vdfs.read_sidecar_of(file, "sdk-test", "com.example.sdk-conformance")
        .and_then(|text| {
            if text == "text with \"quotes\" and ünïcode" { Ok(text) } else { Err(Error::Decode(format!("sidecar came back as {:?}", text))) }
        }));
    outcome(ctx, "ai.ocr", ctx.ai().ocr_in(file, "eng"));
    outcome(ctx, "ai.ocr", ctx.ai().ocr(file));
    let creds = ctx.credentials();
    outcome(ctx, "credentials.store", creds.store("sdk-token", "first", None));
    outcome(ctx, "credentials.store", match creds.store("sdk-token", "again", None) {
        Err(Error::AlreadyExists { message }) => Ok(message),
        other => Err(Error::Decode(format!("a second store without replace gave {:?}", other.map(|_| ())))),
    });
    outcome(ctx, "credentials.store", ctx.call(&ops::StoreCredential {
        name: "sdk-token".to_string(), secret: "s3cr3t".to_string(), kind: Some("api-token".to_string()),
        replace: Some(true) }));
    outcome(ctx, "credentials.store", creds.replace("sdk-token", "s3cr3t", None));
    outcome(ctx, "credentials.get", creds.get("sdk-token").and_then(|s| {
        if s == "s3cr3t" { Ok(s) } else { Err(Error::Decode("wrong secret".to_string())) }
    }));
    outcome(ctx, "credentials.delete", creds.delete("sdk-token"));
    outcome(ctx, "test.ping", ctx.call(&ops::Ping { message: "hello".to_string() }));
    outcome(ctx, "job.progress", ctx.call(&ops::Progress { progress: 0.5, message: Some("half".to_string()) }));
    outcome(ctx, "job.progress", ctx.call(&ops::Progress { progress: 1.0, message: None }));
    outcome(ctx, "job.metrics", ctx.call(&ops::Metrics { items: Some(3), bytes: Some(1024) }));
    outcome(ctx, "job.metrics", ctx.call(&ops::Metrics { items: Some(1), bytes: None }));
    outcome(ctx, "job.interrupted", ctx.call(&ops::Interrupted {}));
    outcome(ctx, "job.warn", ctx.call(&ops::Warn { message: "a warning".to_string() }));
    outcome(ctx, "job.checkpoint", ctx.call(&ops::Checkpoint { state: State { step: 1, note: "n".to_string() } }));
    outcome(ctx, "job.state", ctx.call(&ops::JobState {}));
    Ok(())
}
