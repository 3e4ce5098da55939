//! The asynchronous queue's metrics: events not finished per function and the age
//! of the oldest (the region's, read from the database by every worker process every few
//! seconds: the same figure from each, so aggregate them with `max`), and events
//! dead-lettered (counted by the process that gave up on them).

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use nimbus_core::metrics::{self, Counters, Gauges};

struct Families {
    depth: Gauges,
    age: Gauges,
    dead: Counters,
    /// Functions whose queue was measured: they stay, at 0 once drained.
    seen: Mutex<HashSet<(String, String)>>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    depth: metrics::gauges(
        "async_queue_depth",
        "Asynchronous events not finished (queued, retrying, or running), per function (the region's)",
    ),
    age: metrics::gauges(
        "async_queue_oldest_age_seconds",
        "Age of the oldest asynchronous event not finished, per function (the region's)",
    ),
    dead: metrics::counters(
        "dead_letters",
        "Asynchronous events dead-lettered after their last attempt, per function",
    ),
    seen: Mutex::default(),
});

fn labels(tenant_id: &str, function: &str) -> metrics::Labels {
    vec![
        ("tenant", tenant_id.to_string()),
        ("function", function.to_string()),
    ]
}

/// Sets the queue gauges from `waiting`: (tenant id, function, events, oldest
/// creation time in epoch ms); functions measured before and absent now are at 0.
pub fn set_waiting(waiting: &[(String, String, i64, i64)], now_ms: i64) {
    let f = &*FAMILIES;
    let mut seen = f.seen.lock().expect("lock");
    for (t, func) in seen.iter() {
        if !waiting.iter().any(|w| (&w.0, &w.1) == (t, func)) {
            f.depth.get_or_create(&labels(t, func)).set(0);
            f.age.get_or_create(&labels(t, func)).set(0);
        }
    }
    for (t, func, n, oldest) in waiting {
        seen.insert((t.clone(), func.clone()));
        f.depth.get_or_create(&labels(t, func)).set(*n);
        f.age
            .get_or_create(&labels(t, func))
            .set((now_ms - oldest).max(0) / 1000);
    }
}

/// Counts one event dead-lettered.
pub fn dead_lettered(tenant_id: &str, function: &str) {
    FAMILIES
        .dead
        .get_or_create(&labels(tenant_id, function))
        .inc();
}
