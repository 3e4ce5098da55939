//! Request counters and latency totals, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// (method, route, status).
type Key = (String, String, u16);

/// Per (method, route, status): count and total seconds.
#[derive(Default)]
pub struct Metrics {
    /// The counters.
    http: Mutex<BTreeMap<Key, (u64, f64)>>,
}

impl Metrics {
    /// Counts one request.
    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut m = self.http.lock().expect("metrics lock");
        let e = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    /// Prometheus exposition text.
    pub fn render(&self) -> String {
        let m = self.http.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str(
            "# HELP nimbus_http_requests_total API requests by method, route and status.\n",
        );
        out.push_str("# TYPE nimbus_http_requests_total counter\n");
        for ((method, route, status), (n, _)) in m.iter() {
            let _ = writeln!(
                out,
                "nimbus_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP nimbus_http_request_seconds_sum Total time spent serving requests.\n");
        out.push_str("# TYPE nimbus_http_request_seconds_sum counter\n");
        for ((method, route, status), (_, secs)) in m.iter() {
            let _ = writeln!(
                out,
                "nimbus_http_request_seconds_sum{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {secs:.6}"
            );
        }
        out
    }
}
