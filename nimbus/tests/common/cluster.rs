//! A distributed Nimbus for tests: every service its own `nimbus serve` process, over
//! the real RabbitMQ, PostgreSQL and Redis on this machine and an S3-protocol server
//! (s3s-fs) on loopback, each cluster isolated by its own schema, queue prefix and
//! bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Api;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub schema: String,
    pub prefix: String,
    pub s3_root: PathBuf,
    pub bucket: String,
    pub procs: Vec<Proc>,
    /// The node registry's URL.
    pub registry: String,
    /// The region's secrets key.
    pub secrets_key: String,
}

impl Cluster {
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub fn spawn(&mut self, service: &str, tag: &str) {
        self.spawn_env(service, tag, &[]);
    }

    /// Starts `nimbus serve SERVICE` with extra environment (config overrides).
    pub fn spawn_env(&mut self, service: &str, tag: &str, env: &[(&str, String)]) {
        let log = std::fs::File::create(self.log(tag)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["serve", service, "--config"])
            .arg(&self.config)
            .env("NIMBUS_LOG", "info,sqlx=warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(Proc {
            name: tag.to_string(),
            child,
        });
    }

    pub fn kill(&mut self, tag: &str) {
        let i = self.procs.iter().position(|p| p.name == tag).unwrap();
        let mut p = self.procs.remove(i);
        // SIGKILL: no graceful anything.
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }

    /// Starts a gateway and returns its URL, read from its log.
    pub fn gateway(&mut self, tag: &str) -> String {
        self.gateway_env(tag, &[])
    }

    /// A gateway with extra environment (config overrides).
    pub fn gateway_env(&mut self, tag: &str, env: &[(&str, String)]) -> String {
        self.spawn_env("api-gateway", tag, env);
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

    /// Every running process's metrics address (`host:port`): the gateways' own,
    /// and the others' ops listeners, as (process, address).
    pub fn metrics_targets(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(self.log(&p.name)).unwrap_or_default();
            let addr = text.lines().find_map(|l| {
                l.strip_prefix("listening on ")
                    .or_else(|| l.split_once(" ops listening on ").map(|(_, a)| a))
            });
            if let Some(a) = addr {
                out.push((
                    p.name.clone(),
                    a.trim().trim_start_matches("http://").to_string(),
                ));
            }
        }
        out
    }

    pub fn dump_logs(&self) {
        for p in &self.procs {
            eprintln!(
                "===== {} =====\n{}",
                p.name,
                std::fs::read_to_string(self.log(&p.name)).unwrap_or_default()
            );
        }
    }
}

pub fn start_s3(root: &Path) -> (Proc, u16) {
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

pub fn rabbitmqctl(arg: &str) {
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

pub async fn wait_all(api: &Api, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(api.wait_task(id).await);
    }
    out
}

/// Polls until `f` returns true, or panics after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
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

pub async fn cleanup(schema: &str, prefix: &str) {
    use sea_orm::ConnectionTrait;
    if let Ok(db) = sea_orm::Database::connect(PG).await {
        let _ = db
            .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
    // Tenant queues are named after the tenant: find them.
    let tenant_queues: Vec<String> = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|q| q.starts_with(&format!("{prefix}.tq.")))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Ok(conn) = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in &tenant_queues {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for q in [
            "step.code",
            "step.resource",
            "step.network",
            "workflow.results",
            "dead-letters",
            "invoke.async",
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

pub const REDIS: &str = "redis://127.0.0.1:6379/0";

impl Cluster {
    /// A cluster under `dir` named by `id`: its own PostgreSQL schema, queue prefix,
    /// Redis key prefix and bucket (with s3s-fs started), and a shared config file
    /// with `extra` TOML appended. No Nimbus process runs yet.
    pub fn new(dir: &Path, id: &str, extra: &str) -> Cluster {
        let s3_root = dir.join("s3");
        std::fs::create_dir_all(&s3_root).unwrap();
        let (s3, s3_port) = start_s3(&s3_root);
        let registry_port = free_port();
        let c = Cluster {
            registry: format!("http://127.0.0.1:{registry_port}"),
            secrets_key: nimbus_core::secrets::SecretBox::generate_key(),
            dir: dir.to_path_buf(),
            config: dir.join("nimbus.toml"),
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
listen = "127.0.0.1:{registry_port}"
endpoint = "http://127.0.0.1:{registry_port}"
heartbeat_interval_ms = 500
node_timeout_ms = 3000

[router]
redis_url = "{REDIS}"
redis_prefix = "{prefix}"

[node]
listen = "127.0.0.1:0"
max_instances = 16

[secrets]
key = "{secrets_key}"

[workflow]
step_timeout_ms = 5000
relay_interval_ms = 100

[usage]
dir = "{dir}/usage"
flush_ms = 200
keep_records = true

[ops]
listen = "127.0.0.1:0"
{extra}
"#,
            schema = c.schema,
            prefix = c.prefix,
            bucket = c.bucket,
            secret = "0123456789abcdef0123456789abcdef0123456789abcdef",
            secrets_key = c.secrets_key,
            dir = dir.display(),
        );
        std::fs::write(&c.config, config).unwrap();
        c
    }

    /// Starts the first gateway (it creates the schema and the admin key), then the
    /// workflow, code, network and resource services. Returns the gateway's URL and
    /// the admin key.
    pub fn control_plane(&mut self) -> (String, String) {
        let gw = self.gateway("gw1");
        let admin_key = std::fs::read_to_string(self.dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_string();
        for s in ["workflow", "code", "network", "resource"] {
            self.spawn(s, s);
        }
        (gw, admin_key)
    }

    /// Waits until `n` nodes are registered and alive, then one router refresh more
    /// (every router's node list is a second old at most).
    pub async fn wait_nodes(&self, n: usize) {
        use proto::node::ListNodesRequest;
        let registry = self.registry.clone();
        let key = self.secrets_key.clone();
        eventually(30, &format!("{n} nodes registered"), || {
            let (registry, key) = (registry.clone(), key.clone());
            async move {
                let Ok(mut r) = super::registry_client(&registry, Some(&key)).await else {
                    return false;
                };
                r.list_nodes(ListNodesRequest {
                    include_dead: false,
                })
                .await
                .is_ok_and(|l| l.into_inner().nodes.len() >= n)
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    /// Starts a zone code cache named `tag` on a free port; returns its URL.
    pub fn code_cache(&mut self, tag: &str) -> String {
        let dir = self.dir.join(tag);
        self.spawn_env(
            "code-cache",
            tag,
            &[
                ("NIMBUS_CODE_CACHE__LISTEN", "127.0.0.1:0".to_string()),
                ("NIMBUS_CODE_CACHE__DIR", dir.display().to_string()),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(self.log(tag)).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("code cache listening on "))
            {
                return line.rsplit(' ').next().unwrap().trim().to_string();
            }
            assert!(Instant::now() < deadline, "{tag} did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a node agent named `id` with its own work dir; returns its gRPC address,
    /// read from its log.
    pub fn node(&mut self, id: &str) -> String {
        self.node_env(id, &[])
    }

    /// A node agent with extra environment (config overrides).
    pub fn node_env(&mut self, id: &str, env: &[(&str, String)]) -> String {
        let work = self.dir.join(format!("node-{id}"));
        let mut all = vec![
            ("NIMBUS_NODE__ID", id.to_string()),
            ("NIMBUS_NODE__WORK_DIR", work.display().to_string()),
        ];
        all.extend(env.iter().cloned());
        self.spawn_env("node", id, &all);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(self.log(id)).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with(&format!("node {id} listening on ")))
            {
                return line.rsplit(' ').next().unwrap().trim().to_string();
            }
            assert!(Instant::now() < deadline, "{id} did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `scenarios` on a fresh cluster; dumps every process's log if they fail or take
/// over `limit`; always removes the cluster's schema and queues.
pub async fn with_cluster<F>(limit: Duration, scenarios: F)
where
    F: for<'a> FnOnce(&'a mut Cluster) -> futures::future::BoxFuture<'a, ()>,
{
    with_cluster_config(limit, "", scenarios).await
}

/// [`with_cluster`] with `extra` TOML appended to the cluster's config.
pub async fn with_cluster_config<F>(limit: Duration, extra: &str, scenarios: F)
where
    F: for<'a> FnOnce(&'a mut Cluster) -> futures::future::BoxFuture<'a, ()>,
{
    use futures::FutureExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), &super::unique(), extra);
    let result = tokio::time::timeout(
        limit,
        std::panic::AssertUnwindSafe(scenarios(&mut c)).catch_unwind(),
    )
    .await;
    if !matches!(result, Ok(Ok(()))) {
        c.dump_logs();
    }
    let (schema, prefix) = (c.schema.clone(), c.prefix.clone());
    drop(c);
    cleanup(&schema, &prefix).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e),
        Err(_) => panic!("the scenarios took over {limit:?}"),
    }
}
