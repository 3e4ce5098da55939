//! The data path distributed: two gateways (each with its router) and two node agents
//! as their own processes, finding each other through the registry, sharing
//! concurrency quotas in Redis, over real RabbitMQ, PostgreSQL, Redis and s3s-fs.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::{Api, deploy, invoke};
use proto::node::StatusRequest;
use serde_json::{Value, json};

/// Instances per node, as the nodes themselves report them.
async fn instances(nodes: &[(String, String)], key: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (id, addr) in nodes {
        let n = match common::node_client(addr, key).await {
            Ok(mut c) => c
                .status(StatusRequest {})
                .await
                .map(|r| r.into_inner().instances)
                .unwrap_or(0),
            Err(_) => 0,
        };
        out.push((id.clone(), n));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_data_path() {
    with_cluster(Duration::from_secs(300), |c| Box::pin(scenarios(c))).await;
}

const PY_WHO: &str = r#"
import os, time
CALLS = 0
INSTANCE = os.urandom(8).hex()
def handler(event, context):
    global CALLS
    CALLS += 1
    print("call", context.aws_request_id)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("crash"):
        os._exit(1)
    return {"version": context.function_version, "instance": INSTANCE, "calls": CALLS,
            "tag": os.environ.get("TAG")}
"#;

async fn scenarios(c: &mut Cluster) {
    let (gw1, admin_key) = c.control_plane();
    let nodes = vec![
        ("node-a".to_string(), c.node("node-a")),
        ("node-b".to_string(), c.node("node-b")),
    ];
    // gw1 sends its calls on the nodes' invoke streams (the default), gw2 unary:
    // every scenario below that calls through both covers both.
    let gw2 = c.gateway_env("gw2", &[("NIMBUS_ROUTER__INVOKE_STREAM", "false".into())]);
    let admin1 = Api::new(&gw1, Some(&admin_key));
    let admin2 = Api::new(&gw2, Some(&admin_key));
    eventually(30, "both gateways ready", || async {
        admin1.get("/readyz").await.status == 200 && admin2.get("/readyz").await.status == 200
    })
    .await;
    let owner = admin1.tenant("acme").await;
    let (o1, o2) = (admin1.with_token(&owner), admin2.with_token(&owner));
    deploy(
        &o1,
        "who",
        "python3",
        "index.handler",
        &[("index.py", PY_WHO)],
        json!({"env": {"TAG": "one"}}),
    )
    .await;
    // Both gateways see both nodes once they have registered (a call placed while
    // only one was known would make its instance there, not where the other gateway
    // looks first).
    c.wait_nodes(2).await;
    eventually(20, "the function invocable", || async {
        invoke(&o1, "who", "", json!({})).await.status == 200
    })
    .await;

    // --- Placement: warm instances are reused, from either gateway: ten calls, one
    // instance in the whole cluster.
    let first = invoke(&o1, "who", "", json!({})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let instance = first.body["instance"].clone();
    let t = Instant::now();
    let mut warm_from_gw2 = false;
    while t.elapsed() < Duration::from_secs(5) {
        let r = invoke(&o2, "who", "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.h("x-nimbus-cold-start") == Some("false") {
            assert_eq!(r.body["instance"], instance, "the warm instance served it");
            warm_from_gw2 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(warm_from_gw2, "gw2 found the warm instance");
    for i in 0..10 {
        let api = if i % 2 == 0 { &o1 } else { &o2 };
        let r = invoke(api, "who", "", json!({})).await;
        assert_eq!(r.h("x-nimbus-cold-start"), Some("false"), "{:?}", r.body);
        assert_eq!(r.body["instance"], instance);
    }
    let counts = instances(&nodes, &c.secrets_key).await;
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<u32>(),
        1,
        "one instance in the cluster: {counts:?}"
    );
    // The nodes count what they did: one cold start, the rest warm.
    let (mut cold, mut warm) = (0, 0);
    for (_, addr) in &nodes {
        let st = common::node_client(addr, &c.secrets_key)
            .await
            .unwrap()
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        cold += st.cold_starts;
        warm += st.warm_starts;
    }
    assert_eq!(cold, 1, "{cold} cold, {warm} warm");
    assert!(warm >= 11, "{cold} cold, {warm} warm");

    // --- Function logs are stored centrally: the other gateway reads them.
    let rid = first.h("x-nimbus-request-id").unwrap().to_string();
    eventually(5, "the log line is readable on gw2", || async {
        let l = o2.get("/v1/functions/who/logs").await;
        l.body["lines"].as_array().is_some_and(|ls| {
            ls.iter()
                .any(|x| x["request_id"] == rid.as_str() && x["message"] == format!("call {rid}"))
        })
    })
    .await;

    // --- Invalidation with two routers: publish, move an alias, and the next calls
    // on both gateways see it.
    let publish = |api: Api| async move {
        let r = api.post("/v1/functions/who/versions", json!({})).await;
        assert_eq!(r.status, 202, "{r:?}");
        let t = api.wait_task(r.body["task_id"].as_str().unwrap()).await;
        t["result"]["version"].as_str().unwrap().to_string()
    };
    let v1 = publish(o1.clone()).await;
    let r = o1
        .put("/v1/functions/who/aliases/live", json!({"version": v1}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let live = |api: Api| async move {
        let r = invoke(&api, "who", "?qualifier=live", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        (r.body["version"].clone(), r.body["tag"].clone())
    };
    assert_eq!(live(o1.clone()).await, (json!("1"), json!("one")));
    assert_eq!(live(o2.clone()).await, (json!("1"), json!("one")));
    let r = o2
        .patch("/v1/functions/who", json!({"env": {"TAG": "two"}}))
        .await;
    assert_eq!(
        o2.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    let v2 = publish(o2.clone()).await;
    let r = o2
        .put("/v1/functions/who/aliases/live", json!({"version": v2}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let moved = Instant::now();
    // The gateway that moved it sees it at once; the other within a second.
    assert_eq!(live(o2.clone()).await, (json!("2"), json!("two")));
    let mut seen = false;
    while moved.elapsed() < Duration::from_secs(1) {
        if live(o1.clone()).await == (json!("2"), json!("two")) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "gw1 saw the alias move within 1 s");
    eprintln!(
        "the alias move reached the other router in {:?}",
        moved.elapsed()
    );
    // Once seen, never the old version again.
    for _ in 0..5 {
        assert_eq!(live(o1.clone()).await.0, json!("2"));
    }

    // --- Quotas shared through Redis: reserved_concurrency 2 across both gateways.
    deploy(
        &o1,
        "slow",
        "python3",
        "index.handler",
        &[("index.py", PY_WHO)],
        json!({"reserved_concurrency": 2, "timeout_ms": 10000}),
    )
    .await;
    let busy1 = tokio::spawn({
        let o1 = o1.clone();
        async move { invoke(&o1, "slow", "", json!({"sleep": 3})).await.status }
    });
    let busy2 = tokio::spawn({
        let o2 = o2.clone();
        async move { invoke(&o2, "slow", "", json!({"sleep": 3})).await.status }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for api in [&o1, &o2] {
        let r = invoke(api, "slow", "", json!({})).await;
        assert_eq!(r.status, 429, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "ConcurrencyLimitExceeded");
    }
    assert_eq!(busy1.await.unwrap(), 200);
    assert_eq!(busy2.await.unwrap(), 200);
    // The leases came back.
    assert_eq!(invoke(&o2, "slow", "", json!({})).await.status, 200);

    // --- Timeouts and crashes through the node process.
    deploy(
        &o1,
        "short",
        "python3",
        "index.handler",
        &[("index.py", PY_WHO)],
        json!({"timeout_ms": 1000}),
    )
    .await;
    let r = invoke(&o1, "short", "", json!({"sleep": 5})).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "FunctionTimeout");
    let r = invoke(&o1, "short", "", json!({"crash": true})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    let r = invoke(&o1, "short", "", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["calls"], 1, "a fresh instance after the crash");

    // --- A node dies: calls go to the other one.
    let warm_node = instances(&nodes, &c.secrets_key)
        .await
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap()
        .0;
    c.kill(&warm_node);
    let mut r = invoke(&o1, "who", "", json!({})).await;
    if r.status == 503 {
        // The call raced the death (the request may have reached the node): it fails
        // rather than risk running twice. The node is skipped from then on.
        let m = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(&warm_node), "{:?}", r.body);
        r = invoke(&o1, "who", "", json!({})).await;
    }
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.h("x-nimbus-cold-start"), Some("true"));
    let r = invoke(&o2, "who", "", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // --- One-shot: every call a new instance, none left behind.
    deploy(
        &o1,
        "once",
        "python3",
        "index.handler",
        &[("index.py", PY_WHO)],
        json!({"process_model": "one-shot"}),
    )
    .await;
    let mut seen_instances = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = invoke(&o1, "once", "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.h("x-nimbus-cold-start"), Some("true"));
        assert_eq!(r.body["calls"], 1);
        seen_instances.insert(r.body["instance"].to_string());
    }
    assert_eq!(seen_instances.len(), 3);
    let f: Value = o1.get("/v1/functions/once").await.body["function"].clone();
    assert_eq!(f["process_model"], "one-shot");

    // --- 1,000 asynchronous events on RabbitMQ survive a SIGKILL of a gateway (one of
    // the two workers) mid-run: every event ends Succeeded. At least once: some may run
    // twice, and the count is reported.
    admin1.lift_limits("acme").await;
    let mut ids = Vec::new();
    for n in 0..1000 {
        // Half way, SIGKILL gw1 (one of the two workers) in the middle of the run.
        if n == 500 {
            c.kill("gw1");
        }
        let api = if n % 2 == 0 && n < 500 { &o1 } else { &o2 };
        let r = common::invoke_raw(
            api,
            "who",
            "",
            json!({"n": n}).to_string().into_bytes(),
            &[("x-nimbus-invocation-type", "async")],
        )
        .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.push(r.body["invocation_id"].as_str().unwrap().to_string());
    }
    let gw3 = c.gateway("gw3");
    let o3 = Api::new(&gw3, Some(&owner));
    let t = Instant::now();
    let mut duplicates = 0;
    for id in &ids {
        loop {
            let r = o3.get(&format!("/v1/invocations/{id}")).await;
            assert_eq!(r.status, 200, "{r:?}");
            if r.body["state"] == "Succeeded" {
                duplicates += (r.body["attempts"].as_i64().unwrap() - 1).max(0);
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{id} did not finish: {:?}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "1,000 async events, a gateway SIGKILLed mid-run: all succeeded; {duplicates} ran more than once"
    );

    // --- A queue trigger over RabbitMQ: messages sent through either gateway are
    // consumed, each once.
    deploy(
        &o3,
        "jobs",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "def handler(event, context):\n    print('JOB ' + event['Records'][0]['body'])\n",
        )],
        json!({}),
    )
    .await;
    let r = o3
        .post(
            "/v1/functions/jobs/triggers",
            json!({"type": "queue", "queue": "jobs"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let mut broker_queue = String::new();
    for n in 0..10 {
        let api = if n % 2 == 0 { &o2 } else { &o3 };
        let r = api
            .post("/v1/queues/jobs/messages", json!({"job": n}))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        broker_queue = r.body["broker_queue"].as_str().unwrap().to_string();
    }
    assert!(
        broker_queue.starts_with(&format!("{}.tq.", c.prefix)),
        "{broker_queue}"
    );
    eventually(30, "ten queue messages consumed", || async {
        let l = o3.get("/v1/functions/jobs/logs?limit=1000").await;
        let jobs: Vec<String> = l.body["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["message"].as_str())
            .filter(|m| m.starts_with("JOB "))
            .map(str::to_string)
            .collect();
        jobs.len() == 10 && (0..10).all(|n| jobs.contains(&format!("JOB {{\"job\":{n}}}")))
    })
    .await;

    // --- The zone's code cache: a new node of the zone gets its code from there, not
    // from object storage; once the zone has it, object storage is not asked again.
    let zone = c.code_cache("zone-cache");
    let f = o3.get("/v1/functions/who").await.body["function"].clone();
    let who = proto::node::FunctionRef {
        tenant_id: f["tenant_id"].as_str().unwrap_or("acme").to_string(),
        function_name: "who".into(),
        version: "$LATEST".into(),
        runtime: "python3".into(),
        handler: "index.handler".into(),
        code_sha256: f["code_sha256"].as_str().unwrap().to_string(),
        memory_mb: 128,
        timeout_ms: 3000,
        ..Default::default()
    };
    let mut zoned = Vec::new();
    for id in ["node-z1", "node-z2"] {
        let addr = c.node_env(id, &[("NIMBUS_NODE__ZONE_CACHE", zone.clone())]);
        zoned.push((id.to_string(), addr.clone()));
        let mut client = common::node_client(&addr, &c.secrets_key).await.unwrap();
        let warm = client
            .prewarm(proto::node::PrewarmRequest {
                function: Some(who.clone()),
                instances: 1,
                lease_ms: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .warm;
        assert_eq!(warm, 1, "{id} started an instance");
        let st = client.status(StatusRequest {}).await.unwrap().into_inner();
        let count = |t: Option<proto::node::TierFetches>| t.unwrap_or_default().count;
        assert_eq!(
            (
                count(st.zone_fetches),
                count(st.object_fetches),
                st.zone_failures
            ),
            (1, 0, 0),
            "{id} fetched the code from the zone cache"
        );
        assert!(st.cached_code.contains(&who.code_sha256));
        assert_eq!(
            (st.cold_starts, st.warm_starts),
            (0, 0),
            "a pre-warm is not a call"
        );
    }
    // --- Provisioned concurrency: the reserved instances start on the nodes holding
    // the reservations before any call (each gateway renews them every 5 s).
    deploy(
        &o3,
        "pcd",
        "python3",
        "index.handler",
        &[("index.py", PY_WHO)],
        json!({"provisioned_concurrency": 2}),
    )
    .await;
    let mut all_nodes = nodes.clone();
    all_nodes.extend(zoned.iter().cloned());
    eventually(
        30,
        "two provisioned instances idle in the cluster",
        || async {
            let mut idle = 0;
            for (_, addr) in &all_nodes {
                if let Ok(mut n) = common::node_client(addr, &c.secrets_key).await
                    && let Ok(st) = n.status(StatusRequest {}).await
                {
                    idle += st
                        .into_inner()
                        .warm
                        .iter()
                        .filter(|w| w.key.contains("/pcd/"))
                        .map(|w| w.idle)
                        .sum::<u32>();
                }
            }
            idle == 2
        },
    )
    .await;
    // Every router learns of them from the next heartbeat it reads (the one that
    // provisioned them knows at once): 0.5 s heartbeats, 1 s refresh.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for _ in 0..4 {
        let r = invoke(&o3, "pcd", "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.h("x-nimbus-cold-start"), Some("false"), "{:?}", r.body);
    }

    // The first node's fetch filled the zone cache from S3; the second was a hit.
    // It serves the region's nodes only: they carry a token derived from the
    // region's secrets key.
    let url = format!("{zone}/v1/packages/{}", who.code_sha256);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 401);
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(code_service::zone_cache::token_from_key(&c.secrets_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-nimbus-cache"], "hit");
}
