//! Graceful shutdown: on SIGTERM a process stops taking new work, lets what is in
//! flight finish within `shutdown.grace_s`, and exits 0 — through `nimbus up`, and
//! through a distributed gateway and node, each its own process.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{Api, Out, deploy, invoke};
use serde_json::json;

/// Calls in flight when the signal arrives.
const CALLS: usize = 50;

const SLOW: &str = "import time\ndef handler(event, context):\n    time.sleep(event['sleep'])\n    return {'n': event['n']}\n";

/// Deploys the slow function as `api`'s tenant.
async fn deploy_slow(api: &Api) {
    deploy(
        api,
        "slow",
        "python3",
        "index.handler",
        &[("index.py", SLOW)],
        json!({"memory_mb": 128, "timeout_ms": 60_000}),
    )
    .await;
}

/// Starts `CALLS` calls that each take `secs` once running, and waits until every one
/// has been sent (the gateway holds all of them).
async fn start_calls(api: &Api, secs: f64) -> Vec<tokio::task::JoinHandle<Out>> {
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let api = api.clone();
            tokio::spawn(
                async move { invoke(&api, "slow", "", json!({"n": n, "sleep": secs})).await },
            )
        })
        .collect();
    // Connecting and sending takes milliseconds on loopback; every call then runs
    // (or waits for its instance) for seconds more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "the calls must still be in flight when the signal arrives"
    );
    calls
}

/// Every call answered 200 with its own result.
async fn all_answered(calls: Vec<tokio::task::JoinHandle<Out>>) {
    for (n, c) in calls.into_iter().enumerate() {
        let r = c.await.expect("the call's task");
        assert_eq!(r.status, 200, "call {n}: {:?}", r.body);
        assert_eq!(r.body["n"], n, "call {n}: {:?}", r.body);
    }
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
}

/// Waits for `child` to exit, `limit` at most; its exit code.
async fn exit_code(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "still running {limit:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_nimbus_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("up.log");
    let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NIMBUS_LOG", "info,sqlx=warn")
        // Ten instances for fifty calls: most calls wait for one when the signal
        // comes, and must still be served.
        .env("NIMBUS_NODE__MAX_INSTANCES", "10")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed if the test fails half way.
    let mut up = Proc {
        name: "up".into(),
        child,
    };
    let url = format!("http://127.0.0.1:{port}");
    let admin_key = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(k) = text
                .lines()
                .find_map(|l| l.strip_prefix("admin key (shown once; also in "))
            {
                break k.rsplit(' ').next().unwrap().to_string();
            }
            if let Some(status) = up.child.try_wait().unwrap() {
                panic!("nimbus up exited ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "nimbus up did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let admin = Api::new(&url, Some(&admin_key));
    let owner = admin.with_token(&admin.tenant("acme").await);
    deploy_slow(&owner).await;

    let calls = start_calls(&owner, 3.0).await;
    sigterm(&up.child);
    // New connections are refused at once, while the calls in flight run on.
    eventually(5, "new connections refused", || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    all_answered(calls).await;
    let code = exit_code(&mut up.child, Duration::from_secs(40)).await;
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, Some(0), "exit code; stdout:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_distributed_gateway_and_node() {
    with_cluster(Duration::from_secs(300), |c| {
        Box::pin(async move {
            let (gw, admin_key) = c.control_plane();
            c.node_env("node-a", &[("NIMBUS_NODE__MAX_INSTANCES", "64".into())]);
            let admin = Api::new(&gw, Some(&admin_key));
            eventually(30, "the gateway ready", || async {
                admin.get("/readyz").await.status == 200
            })
            .await;
            let owner = admin.with_token(&admin.tenant("acme").await);
            deploy_slow(&owner).await;
            c.wait_nodes(1).await;
            eventually(30, "the function invocable", || async {
                invoke(&owner, "slow", "", json!({"n": 0, "sleep": 0}))
                    .await
                    .status
                    == 200
            })
            .await;

            let calls = start_calls(&owner, 4.0).await;
            for tag in ["gw1", "node-a"] {
                let p = c.procs.iter().find(|p| p.name == tag).unwrap();
                sigterm(&p.child);
            }
            all_answered(calls).await;
            for tag in ["gw1", "node-a"] {
                let i = c.procs.iter().position(|p| p.name == tag).unwrap();
                let code = exit_code(&mut c.procs[i].child, Duration::from_secs(40)).await;
                assert_eq!(code, Some(0), "{tag} exit code");
            }
        })
    })
    .await;
}

/// SIGTERM to the workflow engine and the code service while create tasks are half
/// way: both exit 0, and what they had taken but not finished is delivered again to
/// the ones started after them. Every task succeeds, each function activated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_workflow_steps_to_be_redelivered() {
    with_cluster(Duration::from_secs(300), |c| {
        Box::pin(async move {
            let (gw, admin_key) = c.control_plane();
            let admin = Api::new(&gw, Some(&admin_key));
            eventually(30, "the gateway ready", || async {
                admin.get("/readyz").await.status == 200
            })
            .await;
            let owner = admin.with_token(&admin.tenant("acme").await);
            let mut ids = Vec::new();
            for i in 0..8 {
                let r = owner
                    .post(
                        "/v1/functions",
                        json!({"name": format!("term{i}"), "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": common::py_zip(&format!("return {i}"))}}),
                    )
                    .await;
                assert_eq!(r.status, 202, "{r:?}");
                ids.push(r.body["task_id"].as_str().unwrap().to_string());
            }
            eventually(30, "some task made progress", || async {
                let t = owner.get(&format!("/v1/tasks/{}", ids[0])).await.body;
                t["steps"][0]["state"] == "Succeeded"
            })
            .await;
            for tag in ["workflow", "code"] {
                let p = c.procs.iter().find(|p| p.name == tag).unwrap();
                sigterm(&p.child);
            }
            for tag in ["workflow", "code"] {
                let i = c.procs.iter().position(|p| p.name == tag).unwrap();
                let code = exit_code(&mut c.procs[i].child, Duration::from_secs(40)).await;
                assert_eq!(code, Some(0), "{tag} exit code");
            }
            c.spawn("workflow", "workflow-2");
            c.spawn("code", "code-2");
            for t in wait_all(&owner, &ids).await {
                assert_eq!(t["state"], "Succeeded", "{t}");
            }
            for i in 0..8 {
                let f = owner.get(&format!("/v1/functions/term{i}")).await.body["function"].clone();
                assert_eq!(
                    (f["state"].as_str(), f["revision"].as_i64()),
                    (Some("Active"), Some(2)),
                    "activated exactly once: {f}"
                );
            }
        })
    })
    .await;
}
