//! The counter job of the SDK issue: counts from `current` to `target`, reporting progress and items,
//! checkpointing every 10 steps, and stopping (after a checkpoint) when the host interrupts it. A resumed run
//! continues from the last checkpoint, so the count is right however often it is interrupted.
//! Input: {"target": 100}.

use serde::{Deserialize, Serialize};
use spacedrive_sdk::prelude::*;

#[extension(id = "com.example.counter", name = "Counter", version = "0.1.0", jobs = [counter],
            operations = ["job.*"],
            description = "Counts to a target; reports progress, checkpoints every 10 steps, resumes after an interrupt.")]
struct Counter;

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct CounterState {
    current: u32,
    target: u32,
}

#[job(name = "counter")]
fn counter(ctx: &JobContext, state: &mut CounterState) -> Result<()> {
    while state.current < state.target {
        if ctx.check_interrupt() {
            ctx.checkpoint(state)?;
            return Err(Error::Interrupted);
        }
        state.current += 1;
        ctx.report_progress(state.current as f32 / state.target as f32, "counting");
        ctx.increment_items(1);
        if state.current % 10 == 0 {
            ctx.checkpoint(state)?;
        }
    }
    ctx.info(&format!("counted to {}", state.current));
    Ok(())
}
