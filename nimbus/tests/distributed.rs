//! The control plane distributed: every service its own process, over real RabbitMQ,
//! PostgreSQL and an S3-protocol server (s3s-fs), as `.ci/run` provides them.
//!
//! One test runs the scenarios in sequence, because one of them restarts the broker.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, unique};
use serde_json::{Value, json};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A child process killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    dir: PathBuf,
    config: PathBuf,
    schema: String,
    prefix: String,
    s3_root: PathBuf,
    bucket: String,
    procs: Vec<Proc>,
}

impl Cluster {
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn spawn(&mut self, service: &str, tag: &str) {
        let log = std::fs::File::create(self.log(tag)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["serve", service, "--config"])
            .arg(&self.config)
            .env("NIMBUS_LOG", "info,sqlx=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(Proc {
            name: tag.to_string(),
            child,
        });
    }

    fn kill(&mut self, tag: &str) {
        let i = self.procs.iter().position(|p| p.name == tag).unwrap();
        let mut p = self.procs.remove(i);
        // SIGKILL: no graceful anything.
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }

    /// Starts a gateway and returns its URL, read from its log.
    fn gateway(&mut self, tag: &str) -> String {
        self.spawn("api-gateway", tag);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(self.log(tag)).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("listening on ")) {
                return line.trim_start_matches("listening on ").trim().to_string();
            }
            assert!(Instant::now() < deadline, "{tag} did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dump_logs(&self) {
        for p in &self.procs {
            eprintln!(
                "===== {} =====\n{}",
                p.name,
                std::fs::read_to_string(self.log(&p.name)).unwrap_or_default()
            );
        }
    }
}

fn start_s3(root: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "nimbus", "--secret-key", "nimbus-secret"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs must be installed (.ci/run installs it: cargo install s3s-fs --features binary)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        Proc {
            name: "s3s-fs".into(),
            child,
        },
        port,
    )
}

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl")
        .arg(arg)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_all(api: &Api, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(api.wait_task(id).await);
    }
    out
}

/// Polls until `f` returns true, or panics after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cleanup(schema: &str, prefix: &str) {
    use sea_orm::ConnectionTrait;
    if let Ok(db) = sea_orm::Database::connect(PG).await {
        let _ = db
            .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
    if let Ok(conn) = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in [
            "step.code",
            "step.resource",
            "step.network",
            "workflow.results",
            "dead-letters",
        ] {
            let _ = ch
                .queue_delete(format!("{prefix}.{q}").as_str().into(), Default::default())
                .await;
        }
        for x in ["dlx", "topic.changes"] {
            let _ = ch
                .exchange_delete(format!("{prefix}.{x}").as_str().into(), Default::default())
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let id = unique();
    let s3_root = dir.path().join("s3");
    std::fs::create_dir_all(&s3_root).unwrap();
    let (s3, s3_port) = start_s3(&s3_root);
    let mut c = Cluster {
        dir: dir.path().to_path_buf(),
        config: dir.path().join("nimbus.toml"),
        schema: format!("t_{id}"),
        prefix: format!("t{id}"),
        s3_root,
        bucket: format!("nimbus-{id}"),
        procs: vec![s3],
    };
    let config = format!(
        r#"
[database]
url = "{PG}"
schema = "{schema}"
max_connections = 5

[bus]
kind = "amqp"
url = "{AMQP}"
prefix = "{prefix}"

[objects]
kind = "s3"
bucket = "{bucket}"
endpoint = "http://127.0.0.1:{s3_port}"
access_key = "nimbus"
secret_key = "nimbus-secret"

[api]
listen = "127.0.0.1:0"
jwt_secret = "{secret}"
admin_key_file = "{dir}/admin.key"

[resource]
listen = "127.0.0.1:0"

[secrets]
key = "{secrets_key}"

[workflow]
step_timeout_ms = 5000
relay_interval_ms = 100
"#,
        schema = c.schema,
        prefix = c.prefix,
        bucket = c.bucket,
        secret = "0123456789abcdef0123456789abcdef0123456789abcdef",
        secrets_key = nimbus_core::secrets::SecretBox::generate_key(),
        dir = dir.path().display(),
    );
    std::fs::write(&c.config, config).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(600), scenarios(&mut c)).await;
    if !matches!(result, Ok(Ok(()))) {
        c.dump_logs();
    }
    let (schema, prefix) = (c.schema.clone(), c.prefix.clone());
    drop(c);
    cleanup(&schema, &prefix).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e),
        Err(_) => panic!("the distributed scenarios took over 10 minutes"),
    }
}

async fn scenarios(c: &mut Cluster) -> Result<(), Box<dyn std::any::Any + Send>> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(run_scenarios(c))
        .catch_unwind()
        .await
}

async fn run_scenarios(c: &mut Cluster) {
    // The first gateway creates the schema and the admin key; then the rest start.
    let gw1 = c.gateway("gw1");
    let admin_key = std::fs::read_to_string(c.dir.join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    for s in ["workflow", "code", "network", "resource"] {
        c.spawn(s, s);
    }
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
