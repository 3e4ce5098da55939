//! The gateway's HTTP metrics: requests by method, route and status, and their
//! duration by route. Routes are the matched templates (`/v1/functions/{name}`),
//! methods the standard ones (anything else is `other`), so labels stay bounded
//! whatever callers send. Each (route, method, status) keeps its handles, so a
//! request after the first allocates nothing here.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use axum::http::Method;
use nimbus_core::metrics::{self, Counters, Histograms};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

struct Families {
    requests: Counters,
    duration: Histograms,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    requests: metrics::counters("http_requests", "API requests by method, route and status"),
    duration: metrics::histograms(
        "http_request_duration",
        "Time to answer API requests, by method and route",
        metrics::latency_buckets,
    ),
});

/// A method as a label.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The handles of one route's series, by method and status.
type Handles = HashMap<(&'static str, u16), (Counter, Histogram)>;

/// Handles by route (bounded: routes are the API's templates).
static HANDLES: LazyLock<RwLock<HashMap<String, Handles>>> = LazyLock::new(Default::default);

/// The series of one (method, route, status), made on first use.
fn handles(method: &'static str, route: &str, status: u16) -> (Counter, Histogram) {
    if let Some(h) = HANDLES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(route)
        .and_then(|r| r.get(&(method, status)))
    {
        return h.clone();
    }
    let f = &*FAMILIES;
    let made = (
        f.requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .clone(),
        f.duration
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("route", route.to_string()),
            ])
            .clone(),
    );
    HANDLES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(route.to_string())
        .or_default()
        .insert((method, status), made.clone());
    made
}

/// Counts one request.
pub fn observe(method: &Method, route: &str, status: u16, took: Duration) {
    let (requests, duration) = handles(method_label(method), route, status);
    requests.inc();
    duration.observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached handle is the series itself: what it counts is what is scraped.
    #[test]
    fn cached_handles_count_in_the_family() {
        let route = "/v1/test-only/{id}";
        for _ in 0..3 {
            observe(&Method::GET, route, 200, Duration::from_millis(2));
        }
        let f = &*FAMILIES;
        let labels = |status: Option<&str>| {
            let mut l = vec![("method", "GET".to_string()), ("route", route.to_string())];
            if let Some(s) = status {
                l.push(("status", s.to_string()));
            }
            l
        };
        assert_eq!(f.requests.get_or_create(&labels(Some("200"))).get(), 3);
        let text = nimbus_core::metrics::render();
        assert!(
            text.contains("nimbus_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/test-only/{id}\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
