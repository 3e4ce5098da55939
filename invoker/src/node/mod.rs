//! The node agent: runs function instances on this machine.
//!
//! Instances are kept in pools per function configuration (version, code digest,
//! settings). An instance is a process speaking the Lambda Runtime API on its own
//! loopback port; it is resident (it serves call after call) until it has been idle
//! past the keep-alive, when the reaper kills it: functions scale to zero. A timeout
//! kills the instance; a crash fails only the call it was running, and the next call
//! gets a fresh instance.

pub mod code_cache;
pub mod runtime_api;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use code_service::DynStore;
use proto::node::FunctionRef;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use self::code_cache::CodeCache;
use self::runtime_api::{ApiShared, Invocation, RuntimeOutcome};

/// The python3 bootstrap shipped in the binary.
const PYTHON_BOOTSTRAP: &str = include_str!("../../runtimes/python_bootstrap.py");
/// The nodejs bootstrap shipped in the binary.
const NODE_BOOTSTRAP: &str = include_str!("../../runtimes/node_bootstrap.js");

/// How long an instance may take to initialise (Lambda's 10 s).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Node agent settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: String,
    /// Where the code cache and the runtime bootstraps live.
    pub work_dir: PathBuf,
    /// An idle instance lives this long.
    pub keep_alive: Duration,
    /// Most instances at once on this node.
    pub max_instances: usize,
    /// The region, for ARNs.
    pub region: String,
}

/// Why an invocation could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The function ran past its timeout; its instance was killed.
    #[error("the function timed out after {0} ms")]
    Timeout(u32),
    /// The instance could not start.
    #[error("{0}")]
    Init(String),
    /// The node has no room for another instance.
    #[error("the node has no room for another instance")]
    Capacity,
    /// Something on the node failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The result of one invocation.
#[derive(Debug, Clone)]
pub struct InvokeOutcome {
    /// The function's result (or its error document).
    pub result: Bytes,
    /// `Some("Unhandled")` when the function raised or crashed.
    pub function_error: Option<String>,
    /// Whether a new instance was started for it.
    pub cold_start: bool,
    /// For a cold start: sandbox, runtime and code load, in ms.
    pub init_ms: u32,
}

/// One line a function printed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Epoch ms.
    pub timestamp_ms: i64,
    /// The request running when it was printed ("" during init).
    pub request_id: String,
    /// "stdout" or "stderr".
    pub stream: &'static str,
    /// The line.
    pub message: String,
}

/// Recent log lines per function, bounded.
#[derive(Default)]
pub struct LogBuffer {
    /// By `tenant_id/function`.
    lines: Mutex<HashMap<String, VecDeque<LogLine>>>,
}

/// Lines kept per function.
const LOG_LINES_KEPT: usize = 5000;

impl LogBuffer {
    fn push(&self, key: &str, line: LogLine) {
        let mut m = self.lines.lock().expect("lock");
        let q = m.entry(key.to_string()).or_default();
        if q.len() == LOG_LINES_KEPT {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// Lines of a function at or after `since_ms`, oldest first, at most `limit`.
    pub fn read(
        &self,
        tenant_id: &str,
        function: &str,
        since_ms: i64,
        limit: usize,
    ) -> Vec<LogLine> {
        let m = self.lines.lock().expect("lock");
        let Some(q) = m.get(&format!("{tenant_id}/{function}")) else {
            return vec![];
        };
        let mut out: Vec<LogLine> = q
            .iter()
            .filter(|l| l.timestamp_ms >= since_ms)
            .cloned()
            .collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        out
    }

    /// Forgets a function's lines (it was deleted).
    pub fn forget(&self, tenant_id: &str, function: &str) {
        self.lines
            .lock()
            .expect("lock")
            .remove(&format!("{tenant_id}/{function}"));
    }
}

/// A running instance.
struct Instance {
    /// Feeds `GET /next`.
    tx: mpsc::Sender<Invocation>,
    /// The API server's state.
    shared: Arc<ApiShared>,
    /// The process id (also its process group).
    pid: u32,
    /// True once the process has exited.
    exited: watch::Receiver<bool>,
    /// When it last finished a call.
    last_used: Mutex<Instant>,
    /// The API server task.
    server: tokio::task::JoinHandle<()>,
}

impl Instance {
    fn alive(&self) -> bool {
        !*self.exited.borrow()
    }

    /// Kills the whole process group and stops the API server.
    fn kill(&self) {
        if self.alive() {
            // The group, so whatever the function forked dies too.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pid)])
                .stderr(Stdio::null())
                .status();
        }
        self.server.abort();
        self.shared.fail_inflight();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The node agent.
pub struct NodeAgent {
    /// Settings.
    cfg: NodeConfig,
    /// Unpacked packages.
    cache: CodeCache,
    /// Idle instances per configuration key, most recently used last.
    idle: Mutex<HashMap<String, Vec<Arc<Instance>>>>,
    /// Instances alive (idle or busy).
    live: AtomicUsize,
    /// The python interpreter, resolved once (shims cost milliseconds per start).
    python: PathBuf,
    /// The node interpreter.
    node: PathBuf,
    /// Function output.
    pub logs: Arc<LogBuffer>,
}

fn resolve(cmd: &str, probe: &[&str]) -> PathBuf {
    std::process::Command::new(cmd)
        .args(probe)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(cmd))
}

/// The pool key: instances are reused only for exactly the same configuration.
fn instance_key(f: &FunctionRef) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &f.runtime,
        &f.handler,
        &f.code_sha256,
        f.memory_mb,
        f.timeout_ms,
    )
        .hash(&mut h);
    let mut env: Vec<_> = f.env.iter().collect();
    env.sort();
    env.hash(&mut h);
    format!(
        "{}/{}/{}/{:x}",
        f.tenant_id,
        f.function_name,
        f.version,
        h.finish()
    )
}

impl NodeAgent {
    /// A node agent working under `cfg.work_dir`, fetching code from `store`.
    pub fn new(cfg: NodeConfig, store: DynStore) -> anyhow::Result<Arc<Self>> {
        let rt = cfg.work_dir.join("runtimes");
        std::fs::create_dir_all(&rt)?;
        std::fs::create_dir_all(cfg.work_dir.join("code"))?;
        std::fs::write(rt.join("python_bootstrap.py"), PYTHON_BOOTSTRAP)?;
        std::fs::write(rt.join("node_bootstrap.js"), NODE_BOOTSTRAP)?;
        let python = resolve("python3", &["-c", "import sys; print(sys.executable)"]);
        let node = resolve("node", &["-e", "console.log(process.execPath)"]);
        Ok(Arc::new(NodeAgent {
            cache: CodeCache::new(cfg.work_dir.join("code"), store),
            cfg,
            idle: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            python,
            node,
            logs: Arc::new(LogBuffer::default()),
        }))
    }

    /// Instances alive on this node.
    pub fn instances(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn take_idle(&self, key: &str) -> Option<Arc<Instance>> {
        let mut idle = self.idle.lock().expect("lock");
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if i.alive() {
                return Some(i);
            }
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        None
    }

    fn put_idle(&self, key: String, inst: Arc<Instance>) {
        *inst.last_used.lock().expect("lock") = Instant::now();
        self.idle
            .lock()
            .expect("lock")
            .entry(key)
            .or_default()
            .push(inst);
    }

    /// Kills idle instances older than the keep-alive. Returns how many.
    pub fn reap(&self) -> usize {
        let mut dead = Vec::new();
        {
            let mut idle = self.idle.lock().expect("lock");
            for list in idle.values_mut() {
                list.retain(|i| {
                    let keep = i.alive()
                        && i.last_used.lock().expect("lock").elapsed() < self.cfg.keep_alive;
                    if !keep {
                        dead.push(i.clone());
                    }
                    keep
                });
            }
            idle.retain(|_, l| !l.is_empty());
        }
        let n = dead.len();
        self.live.fetch_sub(n, Ordering::SeqCst);
        drop(dead);
        n
    }

    /// Kills every idle instance of a function (it changed or was deleted).
    pub fn drain(&self, tenant_id: &str, function: &str) -> usize {
        let prefix = format!("{tenant_id}/{function}/");
        let mut idle = self.idle.lock().expect("lock");
        let keys: Vec<String> = idle
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut n = 0;
        for k in keys {
            if let Some(list) = idle.remove(&k) {
                n += list.len();
            }
        }
        self.live.fetch_sub(n, Ordering::SeqCst);
        n
    }

    /// Runs the reaper until the agent is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every =
            (self.cfg.keep_alive / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(agent) => {
                        let n = agent.reap();
                        if n > 0 {
                            tracing::debug!(instances = n, "reaped idle instances");
                        }
                    }
                    None => return,
                }
            }
        })
    }

    /// Runs one invocation on a warm instance, or a new one.
    pub async fn invoke(
        &self,
        f: &FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        let key = instance_key(f);
        let (inst, cold, init_ms) = match self.take_idle(&key) {
            Some(i) => (i, false, 0),
            None => {
                let t = Instant::now();
                let i = self.start(f).await?;
                (i, true, t.elapsed().as_millis() as u32)
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let deadline = nimbus_core::now_ms() + f.timeout_ms as i64;
        let inv = Invocation {
            id: request_id.to_string(),
            event,
            deadline_ms: deadline,
            arn: format!(
                "arn:nimbus:{}:{}:function:{}:{}",
                self.cfg.region, f.tenant_id, f.function_name, f.version
            ),
            reply: reply_tx,
        };
        if inst.tx.send(inv).await.is_err() {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(NodeError::Init(
                "the instance stopped before the call".into(),
            ));
        }
        let mut exited = inst.exited.clone();
        let outcome = tokio::select! {
            r = reply_rx => r.ok(),
            _ = tokio::time::sleep(Duration::from_millis(f.timeout_ms as u64)) => {
                inst.kill();
                self.live.fetch_sub(1, Ordering::SeqCst);
                return Err(NodeError::Timeout(f.timeout_ms));
            }
            _ = exited.wait_for(|e| *e) => None,
        };
        let (result, function_error) = match outcome {
            Some(RuntimeOutcome::Response(b)) => (b, None),
            Some(RuntimeOutcome::Error(b)) => (b, Some("Unhandled".to_string())),
            None => {
                let doc = serde_json::json!({
                    "errorType": "Runtime.ExitError",
                    "errorMessage": format!("RequestId: {request_id} Error: the runtime exited during the invocation"),
                });
                (Bytes::from(doc.to_string()), Some("Unhandled".to_string()))
            }
        };
        if inst.alive() {
            self.put_idle(key, inst);
        } else {
            inst.kill();
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(InvokeOutcome {
            result,
            function_error,
            cold_start: cold,
            init_ms,
        })
    }

    /// Starts an instance and waits until its runtime asks for work.
    async fn start(&self, f: &FunctionRef) -> Result<Arc<Instance>, NodeError> {
        if self.live.fetch_add(1, Ordering::SeqCst) >= self.cfg.max_instances {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(NodeError::Capacity);
        }
        match self.spawn_instance(f).await {
            Ok(i) => Ok(i),
            Err(e) => {
                self.live.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    async fn spawn_instance(&self, f: &FunctionRef) -> Result<Arc<Instance>, NodeError> {
        let (code_dir, _cached) = self
            .cache
            .ensure(&f.code_sha256)
            .await
            .map_err(|e| NodeError::Init(format!("fetching the code: {e:#}")))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(anyhow::Error::from)?;
        let api_addr = listener.local_addr().map_err(anyhow::Error::from)?;
        let (shared, tx) = ApiShared::new();
        let server = tokio::spawn({
            let app = runtime_api::router(shared.clone());
            async move {
                let _ = axum::serve(listener, app).await;
            }
        });
        let rt = self.cfg.work_dir.join("runtimes");
        let mut cmd = match f.runtime.as_str() {
            "python3" => {
                let mut c = tokio::process::Command::new(&self.python);
                c.arg("-u").arg(rt.join("python_bootstrap.py"));
                c
            }
            "nodejs" => {
                let mut c = tokio::process::Command::new(&self.node);
                c.arg(rt.join("node_bootstrap.js"));
                c
            }
            "provided" => tokio::process::Command::new(code_dir.join("bootstrap")),
            other => {
                server.abort();
                return Err(NodeError::Init(format!(
                    "runtime '{other}' is not available on this node"
                )));
            }
        };
        cmd.current_dir(&code_dir)
            .env_clear()
            .envs(&f.env)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("TZ", ":UTC")
            .env("HOME", "/tmp")
            .env("AWS_LAMBDA_RUNTIME_API", api_addr.to_string())
            .env("_HANDLER", &f.handler)
            .env("LAMBDA_TASK_ROOT", &code_dir)
            .env("AWS_LAMBDA_FUNCTION_NAME", &f.function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", &f.version)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mb.to_string())
            .env("AWS_REGION", &self.cfg.region)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| NodeError::Init(format!("starting the {} runtime: {e}", f.runtime)))?;
        let pid = child.id().unwrap_or(0);
        let log_key = format!("{}/{}", f.tenant_id, f.function_name);
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let (shared, key, logs) = (shared.clone(), log_key.clone(), self.logs.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let request_id = shared.current.lock().expect("lock").clone();
                    logs.push(
                        &key,
                        LogLine {
                            timestamp_ms: nimbus_core::now_ms(),
                            request_id,
                            stream,
                            message: line,
                        },
                    );
                }
            });
        }
        let (exit_tx, exit_rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = exit_tx.send(true);
        });
        let inst = Arc::new(Instance {
            tx,
            shared: shared.clone(),
            pid,
            exited: exit_rx.clone(),
            last_used: Mutex::new(Instant::now()),
            server,
        });
        let mut exited = exit_rx;
        tokio::select! {
            _ = shared.ready.notified() => Ok(inst),
            _ = shared.init_failed.notified() => {
                let doc = shared.init_error.lock().expect("lock").clone().unwrap_or_default();
                Err(NodeError::Init(format!("the function failed to initialise: {}", String::from_utf8_lossy(&doc))))
            }
            _ = exited.wait_for(|e| *e) => Err(NodeError::Init("the runtime exited during initialisation".into())),
            _ = tokio::time::sleep(INIT_TIMEOUT) => Err(NodeError::Init("the runtime did not initialise within 10 s".into())),
        }
    }
}
