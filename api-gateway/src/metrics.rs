//! The gateway's HTTP metrics: requests by method, route and status, and their
//! duration by route. Routes are the matched templates (`/v1/functions/{name}`),
//! methods the standard ones (anything else is `other`), so labels stay bounded
//! whatever callers send.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::Method;
use nimbus_core::metrics::{self, Counters, Histograms};

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

/// Counts one request.
pub fn observe(method: &Method, route: &str, status: u16, took: Duration) {
    let f = &*FAMILIES;
    let method = method_label(method);
    f.requests
        .get_or_create(&vec![
            ("method", method.to_string()),
            ("route", route.to_string()),
            ("status", status.to_string()),
        ])
        .inc();
    f.duration
        .get_or_create(&vec![
            ("method", method.to_string()),
            ("route", route.to_string()),
        ])
        .observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
