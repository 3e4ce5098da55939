//! The workflow's metrics: tasks by kind and end state with their durations, and
//! how long outbox rows wait before they are published.

use std::sync::LazyLock;

use nimbus_core::metrics::{self, Histogram, Histograms};

static TASKS: LazyLock<Histograms> = LazyLock::new(|| {
    metrics::histograms(
        "task_duration",
        "Control-plane tasks from accepted to ended, by kind and end state",
        metrics::slow_buckets,
    )
});

static OUTBOX_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    let h = metrics::slow_buckets();
    metrics::register_seconds(
        "outbox_lag",
        "How long outbox rows waited (past their due time) before they were published",
        h.clone(),
    );
    h
});

/// A task ended in `state` after `ms`.
pub fn task_ended(kind: &str, state: &str, ms: i64) {
    TASKS
        .get_or_create(&vec![
            ("kind", kind.to_string()),
            ("state", state.to_string()),
        ])
        .observe(ms.max(0) as f64 / 1e3);
}

/// An outbox row was published `ms` after it was due.
pub fn outbox_published(ms: i64) {
    OUTBOX_LAG.observe(ms.max(0) as f64 / 1e3);
}
