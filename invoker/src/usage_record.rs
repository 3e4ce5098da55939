//! A usage record: what one call used, and how it is billed.

use serde::{Deserialize, Serialize};

/// How a metered call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The function answered.
    Success,
    /// The function raised, crashed or failed to start.
    FunctionError,
    /// The function ran past its timeout.
    Timeout,
    /// Refused for concurrency (not billed).
    Throttle,
    /// Provisioned concurrency kept ready for a minute (billed apart).
    Provisioned,
}

impl Outcome {
    /// The name stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::FunctionError => "function_error",
            Outcome::Timeout => "timeout",
            Outcome::Throttle => "throttle",
            Outcome::Provisioned => "provisioned",
        }
    }

    /// Whether it counts as a billed request.
    pub const fn billed(self) -> bool {
        matches!(
            self,
            Outcome::Success | Outcome::FunctionError | Outcome::Timeout
        )
    }
}

/// One invocation's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The request id (`{id}:{attempt}` for an asynchronous event's retries).
    pub id: String,
    /// The tenant's id.
    pub tenant: String,
    /// The function's name.
    pub function: String,
    /// The version that ran.
    pub version: String,
    /// The region that ran it.
    pub region: String,
    /// When it ended, epoch ms.
    pub at_ms: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// How long the handler ran, µs.
    pub duration_us: u64,
    /// Billed, ms.
    pub billed_ms: u64,
    /// The function's memory, MB.
    pub memory_mb: u32,
    /// Init (cold start), ms.
    pub init_ms: u32,
    /// Whether it started an instance.
    pub cold: bool,
}

impl UsageRecord {
    /// MB × billed ms.
    pub(crate) fn mb_ms(&self) -> i64 {
        self.memory_mb as i64 * self.billed_ms as i64
    }
}

pub use nimbus_core::nodes::billed_ms;

/// The start of the calendar month (UTC) that `ms` falls in, epoch ms; and the
/// next month's.
pub fn month_bounds(ms: i64) -> (i64, i64) {
    use chrono::Datelike as _;
    let d = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive();
    let start = d.with_day(1).unwrap_or(d);
    let next = start
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(start);
    let at = |d: chrono::NaiveDate| {
        d.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis()
    };
    (at(start), at(next))
}
