//! Write capengine (Spacedrive) extensions in Rust.
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use spacedrive_sdk::prelude::*;
//!
//! #[extension(id = "com.example.counter", name = "Counter", version = "0.1.0", jobs = [counter],
//!             operations = ["job.*"])]
//! struct Counter;
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct CounterState { current: u32, target: u32 }
//!
//! #[job(name = "counter")]
//! fn counter(ctx: &JobContext, state: &mut CounterState) -> Result<()> {
//!     while state.current < state.target {
//!         if ctx.check_interrupt() { ctx.checkpoint(state)?; return Err(Error::Interrupted); }
//!         state.current += 1;
//!         ctx.report_progress(state.current as f32 / state.target as f32, "counting");
//!         ctx.increment_items(1);
//!         if state.current % 10 == 0 { ctx.checkpoint(state)?; }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Everything goes through the one `spacedrive_call` import (docs/abi.md); the only `unsafe` code is in `ffi`.
//! See docs/sdk-rust.md for the tutorial.
#![deny(unsafe_code)]

mod context;
mod error;
#[allow(unsafe_code)]
mod ffi;
pub mod ops;
mod runner;

pub use context::{call_raw, log, Ai, Credentials, JobContext, Level, LibraryId, Vdfs};
pub use error::{Error, Result};
pub use spacedrive_sdk_macros::{extension, job};

/// For the macros' expansions only.
#[doc(hidden)]
pub mod __private {
    pub use crate::runner::{plugin_init, run_job, run_resumable_job};
}

#[doc(hidden)]
pub use serde_json;

/// `use spacedrive_sdk::prelude::*;` brings the macros, the context and the error types.
pub mod prelude {
    pub use crate::{extension, job, Error, JobContext, LibraryId, Result};
}
