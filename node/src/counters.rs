//! What a node counts: its starts and the time its instances sat idle.

use std::time::Instant;

/// Time instances were alive and not running a call: what keep-alive costs.
/// Sampled at each reaper pass (≤ 1 s apart).
#[derive(Debug, Default)]
pub(crate) struct IdleTime {
    /// Instance-seconds.
    pub(crate) instance_seconds: f64,
    /// The same weighted by each instance's memory, MB·s.
    pub(crate) mb_seconds: f64,
    /// The last sample.
    pub(crate) sampled_at: Option<Instant>,
}

/// Totals since the node started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Calls that found no idle instance (wasm: no module in memory).
    pub cold_starts: u64,
    /// Calls served by an idle instance (wasm: the module in memory).
    pub warm_starts: u64,
    /// Time instances were alive and not running a call, seconds: what keep-alive
    /// costs. Sampled at each reaper pass (≤ 1 s apart).
    pub idle_instance_seconds: f64,
    /// The same weighted by each instance's memory, MB·s.
    pub idle_mb_seconds: f64,
}
