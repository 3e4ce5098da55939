//! State machines on the distributed platform (every service its own process, over
//! the real PostgreSQL, RabbitMQ, Redis and s3s-fs): 200 executions run while a
//! gateway (one of the two engines), a compute node and the workflow service are
//! SIGKILLed. Each execution still ends exactly once, succeeds with every Task's
//! work in its output (each Task ran at least once), and has a complete history:
//! every state entered and left exactly once, numbered without gaps.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{Api, deploy};
use serde_json::{Value, json};

const EXECUTIONS: usize = 200;

/// Adds one to `n`, slowly enough that calls are in flight when processes die.
const STEP: &str = r#"
import time

def handler(event, context):
    time.sleep(0.05)
    return {"n": event["n"] + 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_survive_killing_a_gateway_a_node_and_the_workflow() {
    with_cluster(Duration::from_secs(600), |c| Box::pin(scenario(c))).await;
}

async fn scenario(c: &mut Cluster) {
    let (gw1, admin_key) = c.control_plane();
    let gw2 = c.gateway("gw2");
    c.node("n1");
    c.node("n2");
    let admin = Api::new(&gw1, Some(&admin_key));
    eventually(30, "gw1 ready", || async {
        admin.get("/readyz").await.status == 200
    })
    .await;
    c.wait_nodes(2).await;
    let owner = admin.tenant("acme").await;
    admin.lift_limits("acme").await;
    let o1 = Api::new(&gw1, Some(&owner));
    let o2 = Api::new(&gw2, Some(&owner));
    deploy(
        &o1,
        "step",
        "python3",
        "index.handler",
        &[("index.py", STEP)],
        json!({}),
    )
    .await;
    let definition = json!({
        "StartAt": "A",
        "States": {
            "A": {"Type": "Task", "Resource": "step", "Next": "Pause"},
            "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Both"},
            "Both": {"Type": "Parallel",
                     "Branches": [
                        {"StartAt": "B1", "States": {"B1": {"Type": "Task", "Resource": "step", "End": true}}},
                        {"StartAt": "B2", "States": {"B2": {"Type": "Task", "Resource": "step", "End": true}}}],
                     "ResultSelector": {"n.$": "States.MathAdd($[0].n, $[1].n)"},
                     "Next": "C"},
            "C": {"Type": "Task", "Resource": "step", "End": true}
        }
    });
    let r = o1
        .post(
            "/v1/state-machines",
            json!({"name": "chain", "definition": definition}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // 200 executions, started on both gateways; while they run, SIGKILL a gateway
    // (its engine holds some of them), a node (calls in flight on it) and the
    // workflow service, then start replacements.
    let mut ids = vec![];
    for i in 0..EXECUTIONS {
        let api = if i % 2 == 0 { &o1 } else { &o2 };
        let r = api
            .post(
                "/v1/state-machines/chain/executions",
                json!({"name": format!("run-{i}"), "input": {"n": 0}}),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        ids.push(r.body["execution_id"].as_str().unwrap().to_string());
    }
    let running = |api: &Api| {
        let api = api.clone();
        async move {
            api.get("/v1/state-machines/chain/executions?status=RUNNING&limit=1000")
                .await
                .body["executions"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    assert!(running(&o2).await > 0, "executions are still running");
    c.kill("gw1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill("n1");
    c.kill("workflow");
    let still = running(&o2).await;
    eprintln!("killed gw1, n1 and workflow with {still} executions running");
    c.node("n3");
    c.spawn("workflow", "workflow2");
    let gw3 = c.gateway("gw3");
    let o3 = Api::new(&gw3, Some(&owner));

    // Every execution ends (the killed gateway's leases run out, and the other
    // engines take its runs), and succeeds.
    let t = Instant::now();
    loop {
        let n = running(&o3).await;
        if n == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "{n} executions still running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in &ids {
        let e = o3.get(&format!("/v1/executions/{id}")).await;
        assert_eq!(e.status, 200, "{e:?}");
        assert_eq!(e.body["status"], "SUCCEEDED", "{id}: {}", e.body);
        // 1 (A) → 2 in each branch → 4 → 5 (C): all four Tasks' work is there.
        assert_eq!(e.body["output"], json!({"n": 5}), "{id}");
        let h = o3.get(&format!("/v1/executions/{id}/history")).await;
        assert_eq!(h.status, 200, "{h:?}");
        let events = h.body["events"].as_array().unwrap();
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev["id"], i, "{id}: numbered without gaps: {events:?}");
        }
        let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
        assert_eq!(count("ExecutionStarted"), 1, "{id}: {events:?}");
        assert_eq!(count("ExecutionSucceeded"), 1, "{id}: {events:?}");
        assert_eq!(count("ExecutionFailed"), 0, "{id}: {events:?}");
        let mut per_state: BTreeMap<(String, String), usize> = BTreeMap::new();
        for ev in events {
            if let (Some(kind), Some(state)) = (ev["type"].as_str(), ev["state"].as_str()) {
                *per_state
                    .entry((kind.to_string(), state.to_string()))
                    .or_default() += 1;
            }
        }
        for state in ["A", "Pause", "Both", "B1", "B2", "C"] {
            for kind in ["StateEntered", "StateExited"] {
                assert_eq!(
                    per_state.get(&(kind.to_string(), state.to_string())),
                    Some(&1),
                    "{id}: {kind} {state} once: {}",
                    Value::Array(events.clone())
                );
            }
        }
    }
}
