//! `/metrics` in `nimbus up`, read by a real Prometheus server: per-function
//! invocations, durations and calls running; the node's instances, spares, cold
//! starts and code fetches; the API's requests; the bus, tasks, steps and outbox.
//! Every query of the Grafana dashboard (`deploy/grafana/`) runs against what it
//! scraped and finds series.

mod common;

use common::prom::Prometheus;
use common::{deploy, invoke, invoke_raw};
use serde_json::json;

const SRC: &str = r#"
import time
def handler(event, context):
    time.sleep(event.get("ms", 0) / 1000)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return event
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_by_prometheus_feed_the_dashboard() {
    let (p, api, _dir) = common::up(&[]).await;
    deploy(
        &api,
        "metered",
        "python3",
        "index.handler",
        &[("index.py", SRC)],
        json!({}),
    )
    .await;
    for i in 0..6 {
        let r = invoke(&api, "metered", "", json!({"fail": i % 3 == 0})).await;
        assert_eq!(r.status, 200);
    }
    // Asynchronous events that wait for the function's one slot, then fail for good.
    deploy(
        &api,
        "queued",
        "python3",
        "index.handler",
        &[("index.py", SRC)],
        json!({"reserved_concurrency": 1, "timeout_ms": 10000, "async": {"max_retries": 0}}),
    )
    .await;
    for _ in 0..3 {
        let r = invoke_raw(
            &api,
            "queued",
            "",
            json!({"ms": 3000, "fail": true}).to_string().into_bytes(),
            &[("x-nimbus-invocation-type", "async")],
        )
        .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let t = std::time::Instant::now();
    loop {
        let text = common::metrics_text(&p.url).await;
        let waited = text.lines().any(|l| {
            l.starts_with("nimbus_async_queue_depth{") && l.contains("queued") && !l.ends_with(" 0")
        });
        let dead = text.contains(r#"nimbus_dead_letters_total{tenant=""#)
            && text.lines().any(|l| {
                l.starts_with("nimbus_dead_letters_total{")
                    && l.contains("queued")
                    && l.ends_with(" 3")
            });
        if dead {
            assert!(
                text.contains("nimbus_async_queue_oldest_age_seconds{"),
                "{text}"
            );
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "no dead letters counted (waiting seen: {waited}):\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    // The exposition itself: OpenMetrics, per-function families with their labels.
    let resp = reqwest::get(format!("{}/metrics", p.url)).await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = resp.text().await.unwrap();
    for want in [
        r#"outcome="success"} 4"#,
        r#"outcome="function_error"} 2"#,
        "# TYPE nimbus_invocation_duration_seconds histogram",
        "nimbus_concurrent_executions{",
        "# TYPE nimbus_node_instances gauge",
        "nimbus_node_cold_starts_total{node=\"local\",runtime=\"python3\"}",
        "nimbus_http_requests_total{method=\"POST\",route=\"/v1/functions/{name}/invoke\",status=\"200\"} 6",
        "nimbus_bus_published_total{",
        "nimbus_task_duration_seconds_count{kind=\"create_function\",state=\"Succeeded\"}",
        "nimbus_step_duration_seconds_count{service=\"code\"",
        "nimbus_outbox_lag_seconds_count",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));

    // Prometheus scrapes it cleanly, and every dashboard query finds series.
    let addr = p.url.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&[("nimbus", addr)]).await;
    prom.wait_scraped(3).await;
    for i in 0..4 {
        invoke(&api, "metered", "", json!({"i": i})).await;
    }
    prom.wait_scraped(2).await;
    let calls = prom
        .query(r#"sum(nimbus_invocations_total{function="metered"})"#)
        .await;
    assert_eq!(calls[0]["value"][1], "10", "{calls:?}");
    let empty = prom.empty_dashboard_panels().await;
    assert!(
        empty.is_empty(),
        "dashboard queries with no series: {empty:#?}"
    );
    p.stop().await.unwrap();
}
