//! Distributed tracing over real PostgreSQL, RabbitMQ, Redis and s3s-fs: every
//! process exports spans to an OTLP receiver in this test. A create (gateway → bus →
//! workflow → code, network and resource services) and an invoke (gateway → router →
//! node → function) each sent with a client `traceparent` form one trace each,
//! spanning every process they cross; the function gets the trace as
//! `_X_AMZN_TRACE_ID` (X-Ray form) and `context.traceparent`, and the response
//! carries `traceparent`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::cluster::*;
use common::otlp::{Receiver, Span};
use common::{Api, b64, invoke_raw};
use serde_json::json;

const SRC: &str = r#"
import os
def handler(event, context):
    return {"xray": os.environ.get("_X_AMZN_TRACE_ID"), "traceparent": context.traceparent}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_create_and_one_invoke_are_each_one_trace_across_processes() {
    let otlp = Receiver::start().await;
    let extra = format!("\n[trace]\notlp_endpoint = \"{}\"\n", otlp.endpoint);
    with_cluster_config(Duration::from_secs(180), &extra, move |c| {
        Box::pin(async move { scenario(c, &otlp).await })
    })
    .await;
}

/// Waits until the trace holds spans from each of `services`; returns it.
async fn trace_across(otlp: &Receiver, trace_id: &str, services: &[&str]) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = otlp.trace(trace_id);
        let seen: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        if services.iter().all(|s| seen.contains(s)) {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {trace_id} reached only {seen:?}, not all of {services:?}: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every span's parent is in the trace, except the root's, which is the client's.
fn assert_connected(spans: &[Span], client_span: &str) {
    let ids: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in spans {
        assert!(
            s.parent_span_id == client_span || ids.contains_key(s.parent_span_id.as_str()),
            "span {} of {} has a parent outside the trace: {spans:#?}",
            s.name,
            s.service
        );
    }
}

async fn scenario(c: &mut Cluster, otlp: &Receiver) {
    let (gw, admin_key) = c.control_plane();
    c.node("n1");
    let admin = Api::new(&gw, Some(&admin_key));
    eventually(30, "gateway ready", || async {
        admin.get("/readyz").await.status == 200
    })
    .await;
    let owner = admin.tenant("acme").await;
    let o = admin.with_token(&owner);
    c.wait_nodes(1).await;

    // A create, sent inside the client's trace.
    let create_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let zip = code_service::package::build_zip(&[("index.py", SRC.as_bytes())]);
    let r = reqwest::Client::new()
        .post(format!("{gw}/v1/functions"))
        .bearer_auth(&owner)
        .header("traceparent", format!("00-{create_trace}-{client_span}-01"))
        .json(
            &json!({"name": "traced", "runtime": "python3", "handler": "index.handler",
                      "code": {"zip_base64": b64(&zip)}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let echoed = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        echoed.starts_with(&format!("00-{create_trace}-")) && !echoed.contains(client_span),
        "the response carries the trace under the gateway's span: {echoed}"
    );
    let task: serde_json::Value = r.json().await.unwrap();
    let t = o.wait_task(task["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    let spans = trace_across(
        otlp,
        create_trace,
        &[
            "nimbus-api-gateway",
            "nimbus-workflow",
            "nimbus-code",
            "nimbus-network",
            "nimbus-resource",
        ],
    )
    .await;
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for step in [
        "step code.store",
        "step network.ensure",
        "step resource.reserve",
    ] {
        assert!(names.contains(step), "no {step} span: {names:?}");
    }
    assert_connected(&spans, client_span);

    // An invoke, sent inside another trace.
    let invoke_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let out = invoke_raw(
        &o,
        "traced",
        "",
        b"{}".to_vec(),
        &[(
            "traceparent",
            &format!("00-{invoke_trace}-{client_span}-01"),
        )],
    )
    .await;
    assert_eq!(out.status, 200, "{:?}", out.body);
    let echoed = out.h("traceparent").unwrap();
    assert!(
        echoed.starts_with(&format!("00-{invoke_trace}-")),
        "{echoed}"
    );
    // The function saw the same trace, in both forms, as a child of the node's span.
    let xray = out.body["xray"].as_str().unwrap();
    let want = format!(
        "Root=1-{}-{};Parent=",
        &invoke_trace[..8],
        &invoke_trace[8..]
    );
    assert!(
        xray.starts_with(&want) && xray.ends_with(";Sampled=1"),
        "{xray}"
    );
    let tp = out.body["traceparent"].as_str().unwrap();
    assert!(tp.starts_with(&format!("00-{invoke_trace}-")), "{tp}");
    let spans = trace_across(otlp, invoke_trace, &["nimbus-api-gateway", "nimbus-node"]).await;
    assert_connected(&spans, client_span);
    let node = spans
        .iter()
        .find(|s| s.service == "nimbus-node")
        .expect("a node span");
    let parent = spans
        .iter()
        .find(|s| s.span_id == node.parent_span_id)
        .expect("the node span's parent");
    assert_eq!(
        (parent.service.as_str(), parent.name.as_str()),
        ("nimbus-api-gateway", "invoke"),
        "the node's span is the router's child"
    );
    // The function's parent is the node's span.
    let xray_parent = xray
        .split("Parent=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(xray_parent, node.span_id);
    assert_eq!(tp.split('-').nth(2), Some(node.span_id.as_str()));

    // Without a traceparent, a new trace still reaches the function, in X-Ray form
    // with its time as the first part.
    let out = invoke_raw(&o, "traced", "", b"{}".to_vec(), &[]).await;
    assert_eq!(out.status, 200);
    let xray = out.body["xray"].as_str().unwrap();
    let secs = u64::from_str_radix(&xray["Root=1-".len().."Root=1-".len() + 8], 16).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) < 60, "{xray}");
    // A malformed traceparent starts a new trace rather than failing the call.
    let out = invoke_raw(
        &o,
        "traced",
        "",
        b"{}".to_vec(),
        &[("traceparent", "00-zz")],
    )
    .await;
    assert_eq!(out.status, 200);
}

/// With nothing exported (`nimbus up`, no collector), the trace context still
/// travels: the function and the response see the client's trace, and an
/// asynchronous event's attempt continues the trace of the request that queued it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_reaches_the_function_without_a_collector() {
    let (p, o, _dir) = common::up(&[]).await;
    common::deploy(
        &o,
        "traced",
        "python3",
        "index.handler",
        &[("index.py", SRC)],
        json!({}),
    )
    .await;
    let trace = "5e0c63257de34c92bf9efcd03927272e";
    let sent = format!("00-{trace}-b9c7c989f97918e1-01");
    let out = invoke_raw(&o, "traced", "", b"{}".to_vec(), &[("traceparent", &sent)]).await;
    assert_eq!(out.status, 200, "{:?}", out.body);
    let echoed = out.h("traceparent").unwrap();
    assert!(
        echoed.starts_with(&format!("00-{trace}-")) && echoed != sent,
        "{echoed}"
    );
    let xray = out.body["xray"].as_str().unwrap();
    assert!(
        xray.starts_with(&format!("Root=1-{}-{};Parent=", &trace[..8], &trace[8..])),
        "{xray}"
    );
    // An unsampled trace stays unsampled.
    let out = invoke_raw(
        &o,
        "traced",
        "",
        b"{}".to_vec(),
        &[("traceparent", &format!("00-{trace}-b9c7c989f97918e1-00"))],
    )
    .await;
    assert!(out.body["xray"].as_str().unwrap().ends_with(";Sampled=0"));
    assert!(out.h("traceparent").unwrap().ends_with("-00"));

    // Queued, then run later: the same trace.
    let queued = invoke_raw(
        &o,
        "traced",
        "",
        b"{}".to_vec(),
        &[
            ("traceparent", &sent),
            ("x-nimbus-invocation-type", "async"),
        ],
    )
    .await;
    assert_eq!(queued.status, 202, "{:?}", queued.body);
    let id = queued.body["invocation_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = o.get(&format!("/v1/invocations/{id}")).await;
        if r.body["state"] == "Succeeded" {
            break r.body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let tp = done["result"]["traceparent"].as_str().unwrap();
    assert!(tp.starts_with(&format!("00-{trace}-")), "{done}");
    p.stop().await.unwrap();
}
