//! Metrics: one registry per process (`prometheus-client`), served as OpenMetrics
//! text at `/metrics` by the gateway and by every other service's ops listener.
//!
//! Families are registered once per process, the first time their owner touches
//! them (statics), so several components of one kind in a process (tests run several
//! platforms in one) share a family and tell themselves apart by labels. State read
//! at scrape time (a node's instances) comes from [`Collector`]s.

use std::sync::{LazyLock, Mutex};

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
pub use prometheus_client::metrics::counter::{ConstCounter, Counter};
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a family: names are fixed, values come from the data.
pub type Labels = Vec<(&'static str, String)>;

/// A labelled family of counters.
pub type Counters = Family<Labels, Counter>;

/// A labelled family of gauges.
pub type Gauges = Family<Labels, Gauge>;

/// A labelled family of histograms.
pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("nimbus")));

/// Registers a metric under `nimbus_{name}` (help without a final period: the
/// encoder adds one).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    REGISTRY.lock().expect("lock").register(name, help, metric);
}

/// Registers a metric measured in seconds (`nimbus_{name}_seconds`).
pub fn register_seconds(name: &str, help: &str, metric: impl Metric) {
    REGISTRY
        .lock()
        .expect("lock")
        .register_with_unit(name, help, Unit::Seconds, metric);
}

/// Registers a collector, asked for its metrics at each scrape.
pub fn register_collector(c: Box<dyn Collector>) {
    REGISTRY.lock().expect("lock").register_collector(c);
}

/// A registered counter family.
pub fn counters(name: &str, help: &str) -> Counters {
    let f = Counters::default();
    register(name, help, f.clone());
    f
}

/// A registered gauge family.
pub fn gauges(name: &str, help: &str) -> Gauges {
    let f = Gauges::default();
    register(name, help, f.clone());
    f
}

/// A registered histogram family, in seconds, with `buckets` (seconds).
pub fn histograms(name: &str, help: &str, buckets: fn() -> Histogram) -> Histograms {
    let f = Histograms::new_with_constructor(buckets);
    register_seconds(name, help, f.clone());
    f
}

/// Latency buckets for calls and requests: 0.5 ms to 60 s.
pub fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// Buckets for slow things (tasks, cold starts): 5 ms to 5 min.
pub fn slow_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ])
}

/// Everything registered, as OpenMetrics text.
pub fn render() -> String {
    let mut out = String::new();
    let r = REGISTRY.lock().expect("lock");
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}

/// Encodes one gauge sample with `labels` into a collector's output.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        let g = ConstGauge::new(*v);
        g.encode(e.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one counter family's samples into a collector's output.
pub fn encode_counter<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, N)],
) -> Result<(), std::fmt::Error>
where
    N: prometheus_client::encoding::EncodeCounterValue + Copy + std::fmt::Debug,
{
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(e.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_escaped_with_buckets() {
        let c = counters("test_things", "Things done");
        c.get_or_create(&vec![("name", "a\"b\\c\nd".to_string())])
            .inc();
        let h = histograms("test_wait", "Waits", latency_buckets);
        h.get_or_create(&vec![("name", "x".to_string())])
            .observe(0.02);
        let text = render();
        assert!(text.contains("# TYPE nimbus_test_things counter"), "{text}");
        assert!(
            text.contains(r#"nimbus_test_things_total{name="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"nimbus_test_wait_seconds_bucket{le="0.025",name="x"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
