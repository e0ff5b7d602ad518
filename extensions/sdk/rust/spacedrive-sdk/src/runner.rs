//! What the macros expand to (`spacedrive_sdk::__private`): not part of the API.
//!
//! The job runner maps a job's `Result` to the exit codes of docs/abi.md — 0 completed, 1 interrupted,
//! 2 failed — and, for resumable jobs, loads the state (the last checkpoint, else the input) and checkpoints
//! it when the job returns `Err(Error::Interrupted)`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::{decode, log, read_input, JobContext, Level};
use crate::error::{Error, Result};

pub const COMPLETED: i32 = 0;
pub const INTERRUPTED: i32 = 1;
pub const FAILED: i32 = 2;

/// `plugin_init`: panics (which abort the module) are logged with their message and location first.
pub fn plugin_init() -> i32 {
    std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("panic: {}", info))));
    0
}

fn exit_code(job: &str, result: Result<()>) -> i32 {
    match result {
        Ok(()) => COMPLETED,
        Err(Error::Interrupted) => {
            log(Level::Info, &format!("job {} interrupted", job));
            INTERRUPTED
        }
        Err(err) => {
            log(Level::Error, &format!("job {} failed: {}", job, err));
            FAILED
        }
    }
}

fn context(job: &'static str) -> Result<JobContext> {
    Ok(JobContext::new(job, read_input()?))
}

/// A job whose parameter is read from the input.
pub fn run_job<I: DeserializeOwned>(job: &'static str, body: impl FnOnce(&JobContext, I) -> Result<()>) -> i32 {
    let result = context(job).and_then(|ctx| {
        let input = decode("the job input", ctx.input().clone())?;
        body(&ctx, input)
    });
    exit_code(job, result)
}

/// A resumable job: its state is the run's last checkpoint when the host resumes it, else the input.
pub fn run_resumable_job<S: Serialize + DeserializeOwned>(job: &'static str,
                                                         body: impl FnOnce(&JobContext, &mut S) -> Result<()>)
                                                         -> i32 {
    let result = context(job).and_then(|ctx| {
        let mut state: S = match ctx.saved_state()? {
            Some(saved) => {
                log(Level::Info, &format!("job {} resumes from its last checkpoint", job));
                decode("the last checkpoint", saved)?
            }
            None => decode("the job input", ctx.input().clone())?,
        };
        match body(&ctx, &mut state) {
            Err(Error::Interrupted) => {
                ctx.checkpoint_if_changed(&state)?;
                Err(Error::Interrupted)
            }
            other => other,
        }
    });
    exit_code(job, result)
}
