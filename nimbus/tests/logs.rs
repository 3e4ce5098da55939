//! Function logs in `nimbus up`: the platform's START / END / REPORT lines around
//! each call (with why it failed), one request's lines, and following new lines as
//! server-sent events.

mod common;

use std::time::{Duration, Instant};

use common::{Api, deploy, invoke};
use serde_json::{Value, json};

const SRC: &str = r#"
import time
def handler(event, context):
    print("hello from", context.aws_request_id)
    time.sleep(event.get("ms", 0) / 1000)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return "ok"
"#;

/// One request's lines, once its REPORT and its own output are stored (the output
/// is read from the instance's pipe while the answer comes back on the Runtime API:
/// a line printed just before returning may be stored just after END).
async fn request_lines(api: &Api, id: &str) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let r = api
            .get(&format!("/v1/functions/talker/logs?request_id={id}"))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let lines = r.body["lines"].as_array().cloned().unwrap_or_default();
        let has = |p: &str| {
            lines
                .iter()
                .any(|l| l["message"].as_str().unwrap().starts_with(p))
        };
        if has("REPORT") && has("hello from") {
            assert!(lines.iter().all(|l| l["request_id"] == id), "{lines:?}");
            return lines;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no REPORT for {id}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn messages(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

/// Deploys `talker` (SRC) with `settings`.
async fn deploy_talker(api: &common::Api, settings: serde_json::Value) {
    deploy(
        api,
        "talker",
        "python3",
        "index.handler",
        &[("index.py", SRC)],
        settings,
    )
    .await;
}

/// `Key: value` from a REPORT line's tab-separated fields.
fn field<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .split('\t')
        .find_map(|f| f.strip_prefix(&format!("{key}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_framed_by_platform_lines_and_can_be_followed() {
    let (p, api, _dir) = common::up(&[]).await;
    deploy_talker(&api, json!({"memory_mb": 192, "timeout_ms": 1000})).await;

    // A cold call that answers: START, its output, END, REPORT with an init.
    let r = invoke(&api, "talker", "", json!({"ms": 30})).await;
    assert_eq!(r.status, 200);
    let id = r.h("x-request-id").unwrap().to_string();
    let lines = request_lines(&api, &id).await;
    let m = messages(&lines);
    assert_eq!(
        m[0],
        format!("START RequestId: {id} Version: $LATEST"),
        "{m:?}"
    );
    assert!(m.contains(&format!("hello from {id}")), "{m:?}");
    let platform: Vec<&String> = m.iter().filter(|l| !l.starts_with("hello")).collect();
    assert_eq!(platform.len(), 3, "{m:?}");
    assert_eq!(platform[1], &format!("END RequestId: {id}"), "{m:?}");
    let report = platform[2];
    assert!(
        report.starts_with(&format!("REPORT RequestId: {id}\t")),
        "{report}"
    );
    let ms = |k: &str| -> f64 {
        field(report, k)
            .unwrap_or_else(|| panic!("no {k} in {report}"))
            .trim_end_matches(" ms")
            .trim_end_matches(" MB")
            .parse()
            .unwrap()
    };
    assert!(ms("Duration") >= 30.0, "{report}");
    assert!(ms("Init Duration") > 0.0, "{report}");
    assert_eq!(
        ms("Billed Duration"),
        (ms("Duration") + ms("Init Duration")).ceil(),
        "{report}"
    );
    assert_eq!(ms("Memory Size"), 192.0);
    assert_eq!(lines[0]["stream"], "platform");
    assert_eq!(lines[1]["stream"], "stdout");

    // A warm call that raises: no init, and the error before END.
    let r = invoke(&api, "talker", "", json!({"fail": true})).await;
    let id = r.h("x-request-id").unwrap().to_string();
    let m = messages(&request_lines(&api, &id).await);
    assert!(
        m.contains(&"[ERROR] ValueError: asked to fail".to_string()),
        "{m:?}"
    );
    let report = m.iter().find(|l| l.starts_with("REPORT")).unwrap();
    assert!(field(report, "Init Duration").is_none(), "{m:?}");

    // A call that times out.
    let r = invoke(&api, "talker", "", json!({"ms": 3000})).await;
    assert_eq!(r.status, 504);
    let id = r.h("x-request-id").unwrap().to_string();
    let m = messages(&request_lines(&api, &id).await);
    assert!(
        m.contains(&format!(
            "RequestId: {id} Task timed out after 1.00 seconds"
        )),
        "{m:?}"
    );
    let report = m.iter().find(|l| l.starts_with("REPORT")).unwrap();
    assert_eq!(field(report, "Billed Duration"), Some("1000 ms"), "{m:?}");

    // Following: a call made after the stream opened arrives as events.
    let mut resp = reqwest::Client::new()
        .get(format!(
            "{}/v1/functions/talker/logs?follow=true&limit=1",
            api.url
        ))
        .bearer_auth(api.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let r = invoke(&api, "talker", "", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = r.h("x-request-id").unwrap().to_string();
    let mut text = String::new();
    let t = Instant::now();
    while !(text.contains(&format!("REPORT RequestId: {id}"))
        && text.contains(&format!("hello from {id}")))
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not followed: {text}"
        );
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("stream ended: {other:?}\n{text}"),
        }
    }
    assert!(text.contains("event: line\n"), "{text}");
    assert!(text.contains(&format!("hello from {id}")), "{text}");
    // Bad filters are 400s.
    let r = api.get("/v1/functions/talker/logs?request_id=").await;
    assert_eq!(r.status, 400);
    p.stop().await.unwrap();
}

/// `node.platform_log_lines = false` (Lambda's system log level WARN): the
/// function's own lines only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_lines_can_be_turned_off() {
    let (p, api, _dir) = common::up(&[("NIMBUS_NODE__PLATFORM_LOG_LINES", "false")]).await;
    deploy_talker(&api, json!({})).await;
    let r = invoke(&api, "talker", "", json!({})).await;
    assert_eq!(r.status, 200);
    let id = r.h("x-request-id").unwrap().to_string();
    let t = Instant::now();
    let lines = loop {
        let r = api
            .get(&format!("/v1/functions/talker/logs?request_id={id}"))
            .await;
        let lines = r.body["lines"].as_array().cloned().unwrap_or_default();
        if !lines.is_empty() {
            break lines;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no output for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(messages(&lines), vec![format!("hello from {id}")]);
    // Nothing else comes later either (the node writes its lines in batches).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = api
        .get(&format!("/v1/functions/talker/logs?request_id={id}"))
        .await;
    let later = r.body["lines"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages(&later), vec![format!("hello from {id}")]);
    p.stop().await.unwrap();
}
