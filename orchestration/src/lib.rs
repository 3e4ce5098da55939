//! Orchestration: durable workflows of functions, defined in Amazon States Language
//! (the JSON dialect of AWS Step Functions and Tencent's workflow service).
//!
//! - [`asl`]: definitions parsed into types and checked whole (unknown fields,
//!   unreachable states, a missing `Next`/`End` are refused, naming the state).
//! - [`paths`]: input and output processing — JSONPath (`serde_json_path`),
//!   payload templates, `ResultPath`, the intrinsic functions.
//! - [`choice`]: `Choice` rules; matching errors against `Retry` and `Catch`.
//! - [`store`]: state machines and executions in the database.
//! - [`engine`]: the executor — durable runs claimed with leases (`lease`), every transition
//!   committed with its history before the next begins; Tasks call functions through
//!   the router, with its quotas, like any invoke.
//!
//! `workflow/` stays the control plane's task engine; this crate shares its database
//! and nothing else.

pub mod asl;
pub mod choice;
pub mod engine;
mod fanout;
mod history;
mod lease;
pub mod parse;
pub mod paths;
mod signal;
mod step;
pub mod store;
mod task;

pub use engine::Engine;
pub use signal::wake;
pub use task::resource;

/// The most items one `Map` state may fan out to.
pub const MAX_MAP_ITEMS: usize = 10_000;
/// The most state machines one tenant may have.
pub const MAX_MACHINES: u64 = 1_000;
/// The most executions one tenant may have running at once.
pub const MAX_RUNNING: u64 = 10_000;
/// The longest a Wait or an execution's timeout counts (as in Step Functions, one
/// year): a larger number of seconds, from a definition or an input, means this.
pub const MAX_SECONDS: u64 = 366 * 24 * 3600;

/// Seconds as milliseconds, at most [`MAX_SECONDS`] (no overflow, whatever a
/// tenant's input says).
pub fn seconds_ms(s: u64) -> i64 {
    s.min(MAX_SECONDS) as i64 * 1000
}
