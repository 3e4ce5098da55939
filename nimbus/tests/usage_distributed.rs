//! Metering distributed, over real PostgreSQL, RabbitMQ, Redis and s3s-fs: 500
//! invocations through two gateways while the node running them is SIGKILLed, then
//! the gateway that served half of them (and never shipped its journal) is
//! SIGKILLed: the other gateway ships its records.
//! The usage records are reconciled with the responses the client got: one record
//! for every answer from a function (billed), one for every throttle, none for a call
//! the platform lost (503), none twice.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{Api, deploy, invoke};
use proto::node::StatusRequest;
use sea_orm::EntityTrait as _;
use serde_json::json;

const CALLS: usize = 500;

const SRC: &str = r#"
import time
def handler(event, context):
    time.sleep(0.02)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"i": event.get("i")}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reconciles_after_killing_a_node_and_a_gateway() {
    with_cluster(Duration::from_secs(300), |c| Box::pin(scenario(c))).await;
}

/// How the client saw one call: status, and whether the function raised.
type Seen = (u16, bool);

async fn scenario(c: &mut Cluster) {
    let (gw1, admin_key) = c.control_plane();
    let nodes = vec![
        ("n1".to_string(), c.node("n1")),
        ("n2".to_string(), c.node("n2")),
    ];
    // gw2 never ships its journal itself: what it records reaches the database only
    // through gw1, after gw2 is killed. It logs JSON lines.
    let gw2 = c.gateway_env(
        "gw2",
        &[
            ("NIMBUS_USAGE__FLUSH_MS", "3600000".into()),
            ("NIMBUS_LOG__FORMAT", "json".into()),
        ],
    );
    let admin = Api::new(&gw1, Some(&admin_key));
    eventually(30, "gateways ready", || async {
        admin.get("/readyz").await.status == 200
            && Api::new(&gw2, None).get("/readyz").await.status == 200
    })
    .await;
    let owner = admin.tenant("acme").await;
    admin.lift_limits("acme").await;
    let (o1, o2) = (admin.with_token(&owner), Api::new(&gw2, Some(&owner)));
    deploy(
        &o1,
        "meter",
        "python3",
        "index.handler",
        &[("index.py", SRC)],
        json!({"memory_mb": 128, "reserved_concurrency": 10}),
    )
    .await;
    c.wait_nodes(2).await;
    // Calls before the 500, billed too.
    let warmups = std::sync::atomic::AtomicU64::new(0);
    eventually(20, "the function invocable", || async {
        let mut both = true;
        for api in [&o1, &o2] {
            let ok = invoke(api, "meter", "", json!({})).await.status == 200;
            warmups.fetch_add(ok as u64, std::sync::atomic::Ordering::Relaxed);
            both &= ok;
        }
        both
    })
    .await;
    let warmups = warmups.into_inner();

    // 500 calls, 12 at a time (past the reserved 10, so some are throttled: those
    // back off 50 ms, as clients do), every tenth raising; half through each gateway.
    let seen: Arc<std::sync::Mutex<HashMap<String, Seen>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..12 {
        let api = if w % 2 == 0 { o1.clone() } else { o2.clone() };
        let (seen, next) = (seen.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= CALLS {
                    return;
                }
                let r = invoke(&api, "meter", "", json!({"i": i, "fail": i % 10 == 0})).await;
                let id = r.h("x-request-id").expect("x-request-id").to_string();
                let raised = r.h("x-nimbus-function-error").is_some();
                seen.lock().unwrap().insert(id, (r.status, raised));
                if r.status == 429 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    // Once a third is answered, SIGKILL the node holding the instances.
    let t = Instant::now();
    while seen.lock().unwrap().len() < CALLS / 3 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "calls are not being answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut busiest = (String::new(), 0);
    for (id, addr) in &nodes {
        if let Ok(mut n) = common::node_client(addr, &c.secrets_key).await
            && let Ok(s) = n.status(StatusRequest {}).await
            && s.get_ref().instances >= busiest.1
        {
            busiest = (id.clone(), s.get_ref().instances);
        }
    }
    c.kill(&busiest.0);
    eprintln!("killed {} ({} instances)", busiest.0, busiest.1);
    for w in workers {
        w.await.unwrap();
    }
    // The gateway dies before its next flush: its last records are only in its
    // journal, which the other gateway ships.
    c.kill("gw2");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), CALLS);
    let count = |f: &dyn Fn(&Seen) -> bool| seen.values().filter(|s| f(s)).count() as u64;
    let ok = count(&|s| s.0 == 200 && !s.1);
    let raised = count(&|s| s.0 == 200 && s.1);
    let throttled = count(&|s| s.0 == 429);
    let lost = count(&|s| s.0 == 503);
    eprintln!("{ok} succeeded, {raised} raised, {throttled} throttled, {lost} lost with the node");
    assert_eq!(ok + raised + throttled + lost, CALLS as u64, "{seen:?}");
    assert!(raised >= 25, "every tenth call raised: {raised}");
    assert!(ok >= 250, "most calls succeeded: {ok}");

    // The usage API, from the surviving gateway, shows every billed call once.
    let billed = ok + raised + warmups;
    let t = Instant::now();
    let report = loop {
        let r = o1.get("/v1/usage").await;
        assert_eq!(r.status, 200, "{r:?}");
        if r.body["totals"]["requests"].as_u64() == Some(billed)
            && r.body["totals"]["throttles"].as_u64() == Some(throttled)
        {
            break r.body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "usage never reconciled: want {billed} requests and {throttled} throttles, got {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        report["totals"]["errors"].as_u64(),
        Some(raised),
        "{report}"
    );

    // The function's per-minute metrics (shipped in the same transactions) agree.
    let items = report["items"].as_array().unwrap();
    let range = format!(
        "?from={}&period=3600",
        nimbus_core::rfc3339(nimbus_core::now_ms() - 86_400_000)
    );
    let mut invocations = 0;
    for i in items {
        let f = i["function"].as_str().unwrap();
        let m = o1.get(&format!("/v1/functions/{f}/metrics{range}")).await;
        assert_eq!(m.status, 200, "{m:?}");
        assert_eq!(
            m.body["totals"]["invocations"], i["requests"],
            "{f}: {}",
            m.body
        );
        assert_eq!(m.body["totals"]["errors"], i["errors"], "{f}: {}", m.body);
        assert_eq!(
            m.body["totals"]["throttles"], i["throttles"],
            "{f}: {}",
            m.body
        );
        invocations += m.body["totals"]["invocations"].as_u64().unwrap();
    }
    assert_eq!(invocations, billed);

    // Record by record: the same ids and outcomes as the responses.
    let db = nimbus_core::db::connect(&nimbus_core::config::DatabaseConfig {
        url: PG.into(),
        schema: Some(c.schema.clone()),
        max_connections: 2,
        log_statements: false,
    })
    .await
    .unwrap();
    let records: HashMap<String, String> = nimbus_core::db::usage_record::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.request_id, r.outcome))
        .collect();
    for (id, (status, raised)) in &seen {
        let want = match (status, raised) {
            (200, false) => Some("success"),
            (200, true) => Some("function_error"),
            (429, _) => Some("throttle"),
            _ => None,
        };
        assert_eq!(
            records.get(id).map(String::as_str),
            want,
            "request {id} answered {status}"
        );
    }
    assert_eq!(
        records.len() as u64,
        billed + throttled,
        "no record without a response"
    );
    db.close().await.ok();

    // gw2's log (`log.format = "json"`): its own lines are JSON objects.
    let log = std::fs::read_to_string(c.log("gw2")).unwrap();
    let json: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!json.is_empty(), "{log}");
    assert!(
        json.iter()
            .all(|j| j["level"].is_string() && j["fields"].is_object()),
        "{log}"
    );
    assert!(
        json.iter()
            .any(|j| j["fields"]["message"] == "API gateway listening"),
        "{log}"
    );

    // Every process left serves /metrics, and a real Prometheus scrapes each
    // cleanly: gateway, node, workflow, code, network, resource.
    let targets = c.metrics_targets();
    let jobs: Vec<(&str, String)> = targets
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    assert!(jobs.len() >= 6, "{jobs:?}");
    let prom = common::prom::Prometheus::start(&jobs).await;
    prom.wait_scraped(2).await;
    for (job, want) in [
        ("gw1", "nimbus_invocations_total"),
        ("workflow", "nimbus_task_duration_seconds_count"),
        ("code", "nimbus_step_duration_seconds_count"),
        ("resource", "nimbus_bus_consumed_total"),
        (
            nodes
                .iter()
                .map(|(id, _)| id.as_str())
                .find(|id| *id != busiest.0)
                .unwrap(),
            "nimbus_node_instances",
        ),
    ] {
        let r = prom.query(&format!("{want}{{job=\"{job}\"}}")).await;
        assert!(!r.is_empty(), "no {want} from {job}: {jobs:?}");
    }
}
