//! The control plane distributed: every service its own process, over real RabbitMQ,
//! PostgreSQL and an S3-protocol server (s3s-fs), as `.ci/run` provides them.
//!
//! One test runs the scenarios in sequence, because one of them restarts the broker.

mod common;

use std::time::{Duration, Instant};

use common::Api;
use common::cluster::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_control_plane() {
    with_cluster(Duration::from_secs(600), |c| Box::pin(run_scenarios(c))).await;
}

async fn run_scenarios(c: &mut Cluster) {
    let (gw1, admin_key) = c.control_plane();
    let gw2 = c.gateway("gw2");
    let admin1 = Api::new(&gw1, Some(&admin_key));
    let admin2 = Api::new(&gw2, Some(&admin_key));
    eventually(30, "both gateways ready", || async {
        admin1.get("/readyz").await.status == 200 && admin2.get("/readyz").await.status == 200
    })
    .await;

    // --- Lifecycle across processes: create on one gateway, watch on the other.
    let owner_key = admin1.tenant("acme").await;
    let o1 = admin1.with_token(&owner_key);
    let o2 = admin2.with_token(&owner_key);
    let t = o1.create_fn("hello", json!({})).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    let f = o2.get("/v1/functions/hello").await.body["function"].clone();
    assert_eq!(f["state"], "Active");
    let sha = f["code_sha256"].as_str().unwrap();
    let stored = c
        .s3_root
        .join(&c.bucket)
        .join("packages")
        .join(format!("{sha}.zip"));
    assert!(
        stored.exists(),
        "the package is in the S3 bucket: {}",
        stored.display()
    );
    let r = o2
        .post("/v1/functions/hello/versions", json!({"description": "v1"}))
        .await;
    assert_eq!(
        o1.wait_task(r.body["task_id"].as_str().unwrap()).await["result"]["version"],
        "1"
    );
    assert_eq!(
        o1.put("/v1/functions/hello/aliases/live", json!({"version": "1"}))
            .await
            .status,
        201
    );
    assert_eq!(
        o2.get("/v1/functions/hello/aliases/live").await.body["alias"]["version"],
        "1"
    );

    // --- A revoked key stops working on the other gateway too.
    let r = o1
        .post("/v1/api-keys", json!({"role": "developer", "name": "ci"}))
        .await;
    let (dev_id, dev_key) = (
        r.body["id"].as_str().unwrap().to_string(),
        r.body["api_key"].as_str().unwrap().to_string(),
    );
    let dev2 = admin2.with_token(&dev_key);
    assert_eq!(
        dev2.get("/v1/functions").await.status,
        200,
        "cached as valid on gw2"
    );
    assert_eq!(
        o1.delete(&format!("/v1/api-keys/{dev_id}")).await.status,
        204
    );
    let revoked_at = Instant::now();
    eventually(2, "gw2 rejects the revoked key", || async {
        dev2.get("/v1/functions").await.status == 401
    })
    .await;
    eprintln!(
        "revocation reached the other gateway in {:?}",
        revoked_at.elapsed()
    );

    // --- SIGKILL the workflow mid-task; the restarted one finishes every task once.
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = o1
            .post("/v1/functions", json!({"name": format!("crash{i}"), "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": common::py_zip(&format!("return {i}"))}}))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        ids.push(r.body["task_id"].as_str().unwrap().to_string());
    }
    eventually(30, "some task made progress", || async {
        let t = o1.get(&format!("/v1/tasks/{}", ids[0])).await.body;
        t["steps"][0]["state"] == "Succeeded"
    })
    .await;
    c.kill("workflow");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.spawn("workflow", "workflow-2");
    for t in wait_all(&o1, &ids).await {
        assert_eq!(t["state"], "Succeeded", "{t}");
    }
    for i in 0..6 {
        let f = o1.get(&format!("/v1/functions/crash{i}")).await.body["function"].clone();
        assert_eq!(
            (f["state"].as_str(), f["revision"].as_i64()),
            (Some("Active"), Some(2)),
            "activated exactly once: {f}"
        );
    }
    // The same for publishing: exactly one version per publish.
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = o1
            .post(&format!("/v1/functions/crash{i}/versions"), json!({}))
            .await;
        ids.push(r.body["task_id"].as_str().unwrap().to_string());
    }
    c.kill("workflow-2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.spawn("workflow", "workflow-3");
    for t in wait_all(&o1, &ids).await {
        assert_eq!(t["state"], "Succeeded", "{t}");
    }
    for i in 0..6 {
        let vs = o1
            .get(&format!("/v1/functions/crash{i}/versions"))
            .await
            .body["versions"]
            .clone();
        assert_eq!(vs.as_array().unwrap().len(), 1, "crash{i}: {vs}");
    }

    // --- SIGKILL a step service with commands in flight.
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = o1
            .put(
                &format!("/v1/functions/crash{i}/code"),
                json!({"zip_base64": common::py_zip(&format!("return {i} + 1"))}),
            )
            .await;
        ids.push(r.body["task_id"].as_str().unwrap().to_string());
    }
    c.kill("code");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.spawn("code", "code-2");
    for t in wait_all(&o1, &ids).await {
        assert_eq!(t["state"], "Succeeded", "{t}");
    }

    // --- Restart the broker mid-run: no task is lost.
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = o1
            .post("/v1/functions", json!({"name": format!("broker{i}"), "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": common::py_zip("return 0")}}))
            .await;
        ids.push(r.body["task_id"].as_str().unwrap().to_string());
    }
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The API still accepts work while the broker is down: the outbox keeps it.
    let r = o1
        .post("/v1/functions", json!({"name": "during-outage", "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": common::py_zip("return 0")}}))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    ids.push(r.body["task_id"].as_str().unwrap().to_string());
    rabbitmqctl("start_app");
    for t in wait_all(&o1, &ids).await {
        assert_eq!(t["state"], "Succeeded", "{t}");
    }

    // --- Delete across the cluster.
    let r = o2.delete("/v1/functions/hello").await;
    assert_eq!(
        o1.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    assert_eq!(o2.get("/v1/functions/hello").await.status, 404);
}
