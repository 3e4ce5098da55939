//! The router's metrics, per function: invocations by outcome, duration and init
//! duration, and calls running. Each function's handles are made once, when its
//! metadata is loaded, so a call only touches atomics.

use std::sync::LazyLock;

use nimbus_core::metrics::{self, Counter, Counters, Gauge, Gauges, Histogram, Histograms};

struct Families {
    invocations: Counters,
    duration: Histograms,
    init: Histograms,
    running: Gauges,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    invocations: metrics::counters(
        "invocations",
        "Invocations by tenant, function and outcome (success, function_error, timeout, throttle, quota_exceeded, unavailable)",
    ),
    duration: metrics::histograms(
        "invocation_duration",
        "How long functions ran per call, init not included",
        metrics::latency_buckets,
    ),
    init: metrics::histograms(
        "init_duration",
        "Init time of calls that started an instance",
        metrics::slow_buckets,
    ),
    running: metrics::gauges("concurrent_executions", "Calls running now"),
});

/// One function's metric handles.
pub struct FnMetrics {
    pub(crate) success: Counter,
    pub(crate) function_error: Counter,
    pub(crate) timeout: Counter,
    pub(crate) throttle: Counter,
    pub(crate) quota_exceeded: Counter,
    pub(crate) unavailable: Counter,
    pub(crate) duration: Histogram,
    pub(crate) init: Histogram,
    pub(crate) running: Gauge,
}

impl FnMetrics {
    /// The handles of `function` of tenant `tenant_id`.
    pub fn new(tenant_id: &str, function: &str) -> FnMetrics {
        let f = &*FAMILIES;
        let labels = |extra: Option<&str>| {
            let mut l = vec![
                ("tenant", tenant_id.to_string()),
                ("function", function.to_string()),
            ];
            if let Some(o) = extra {
                l.push(("outcome", o.to_string()));
            }
            l
        };
        let outcome = |o: &str| f.invocations.get_or_create(&labels(Some(o))).clone();
        FnMetrics {
            success: outcome("success"),
            function_error: outcome("function_error"),
            timeout: outcome("timeout"),
            throttle: outcome("throttle"),
            quota_exceeded: outcome("quota_exceeded"),
            unavailable: outcome("unavailable"),
            duration: f.duration.get_or_create(&labels(None)).clone(),
            init: f.init.get_or_create(&labels(None)).clone(),
            running: f.running.get_or_create(&labels(None)).clone(),
        }
    }
}

/// Counts a call as running until dropped.
pub struct Running(Gauge);

impl Running {
    /// Starts counting.
    pub fn new(g: &Gauge) -> Running {
        g.inc();
        Running(g.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}
