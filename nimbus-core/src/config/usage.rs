//! Metering: where usage records wait before they reach the database, and the price
//! sheet that turns usage into an estimated cost.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Usage metering (in every process that routes invocations).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// The journal's directory: every invocation's record is appended to a file here
    /// before the caller gets its answer, and shipped to the database from there.
    /// Unset: `usage/` in the data directory (`nimbus up`) or in the default data
    /// directory (`nimbus serve`). Several processes may share it.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often the journal is shipped to the database.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Also store every invocation's record in the database (`usage_records`, by
    /// request id), besides the hourly totals. Off by default: the `REPORT` log line
    /// says what each call was billed, and the records cost a database row per call.
    #[serde(default)]
    pub keep_records: bool,
    /// Per-invocation records (and the names of shipped segments) are kept this
    /// long; hourly totals are kept for good.
    #[serde(default = "default_record_retention_h")]
    pub record_retention_h: u64,
    /// How often a router re-reads a capped tenant's month-to-date usage.
    #[serde(default = "default_cap_refresh_ms")]
    pub cap_refresh_ms: u64,
    /// Each function's per-minute counts and durations (the metrics charts) are
    /// kept this long.
    #[serde(default = "default_metrics_retention_h")]
    pub metrics_retention_h: u64,
}

fn default_flush_ms() -> u64 {
    1_000
}

fn default_record_retention_h() -> u64 {
    72
}

fn default_metrics_retention_h() -> u64 {
    7 * 24
}

fn default_cap_refresh_ms() -> u64 {
    5_000
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            dir: None,
            flush_ms: default_flush_ms(),
            keep_records: false,
            record_retention_h: default_record_retention_h(),
            cap_refresh_ms: default_cap_refresh_ms(),
            metrics_retention_h: default_metrics_retention_h(),
        }
    }
}

/// The price sheet: what usage is estimated to cost. Defaults are Lambda's x86
/// on-demand prices in us-east-1 and its monthly free tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// The currency the prices are in.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Per GB-second of billed duration.
    #[serde(default = "default_per_gb_second")]
    pub per_gb_second: f64,
    /// Per million requests.
    #[serde(default = "default_per_million_requests")]
    pub per_million_requests: f64,
    /// Per GB-second of provisioned concurrency kept ready.
    #[serde(default = "default_per_provisioned_gb_second")]
    pub per_provisioned_gb_second: f64,
    /// GB-seconds free each calendar month.
    #[serde(default = "default_free_gb_seconds")]
    pub free_gb_seconds: f64,
    /// Requests free each calendar month.
    #[serde(default = "default_free_requests")]
    pub free_requests: u64,
}

fn default_currency() -> String {
    "USD".into()
}

fn default_per_gb_second() -> f64 {
    0.000_016_666_7
}

fn default_per_million_requests() -> f64 {
    0.20
}

fn default_per_provisioned_gb_second() -> f64 {
    0.000_004_166_7
}

fn default_free_gb_seconds() -> f64 {
    400_000.0
}

fn default_free_requests() -> u64 {
    1_000_000
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            currency: default_currency(),
            per_gb_second: default_per_gb_second(),
            per_million_requests: default_per_million_requests(),
            per_provisioned_gb_second: default_per_provisioned_gb_second(),
            free_gb_seconds: default_free_gb_seconds(),
            free_requests: default_free_requests(),
        }
    }
}

impl PricingConfig {
    /// The estimated cost of one calendar month's usage, free tier taken off.
    pub fn month_cost(&self, requests: u64, gb_seconds: f64, provisioned_gb_seconds: f64) -> f64 {
        let paid_requests = requests.saturating_sub(self.free_requests) as f64;
        let paid_gbs = (gb_seconds - self.free_gb_seconds).max(0.0);
        paid_requests / 1e6 * self.per_million_requests
            + paid_gbs * self.per_gb_second
            + provisioned_gb_seconds * self.per_provisioned_gb_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_tier_comes_off_each_month() {
        let p = PricingConfig::default();
        assert_eq!(p.month_cost(1_000_000, 400_000.0, 0.0), 0.0);
        let c = p.month_cost(3_000_000, 500_000.0, 0.0);
        let want = 2.0 * 0.20 + 100_000.0 * 0.000_016_666_7;
        assert!((c - want).abs() < 1e-9, "{c} != {want}");
        assert!((p.month_cost(0, 0.0, 1000.0) - 1000.0 * 0.000_004_166_7).abs() < 1e-12);
    }
}
