//! The node agent: runs function instances on this machine.
//!
//! Instances are kept in pools per function configuration (version, code digest,
//! settings). An instance is a process speaking the Lambda Runtime API on its own
//! loopback port; it is resident (it serves call after call) until it has been idle
//! past the keep-alive, when the reaper kills it: functions scale to zero. A timeout
//! kills the instance; a crash fails only the call it was running, and the next call
//! gets a fresh instance.

mod acquire;
pub mod code_cache;
mod counters;
pub mod egress;
pub mod grpc;
mod instance;
mod launch;
pub mod logs;
mod metrics;
mod pool;
mod reaper;
pub mod runtime_api;
pub mod sandbox;
mod spares;
pub mod wasm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use code_service::DynStore;
use nimbus_core::model::Runtime;
use proto::node::FunctionRef;

pub use self::counters::Counters;
pub use nimbus_core::nodes::{InvokeOutcome, NodeError, instance_key};

use self::code_cache::CodeCache;
use self::counters::IdleTime;
use self::instance::SparePool;
use self::instance::{INIT_TIMEOUT, NODE_BOOTSTRAP, PYTHON_BOOTSTRAP, resolve};
use self::logs::{CallEnd, CallReport, LogLine, LogSink};
use self::pool::{Learning, Pools, Room};

/// The process model whose instances serve one call each.
pub const ONE_SHOT: &str = "one-shot";

/// Node agent settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: String,
    /// Where the code cache and the runtime bootstraps live.
    pub work_dir: PathBuf,
    /// An idle instance lives this long (the `fixed` policy, and the `hybrid`
    /// policy's fallback while it learns).
    pub keep_alive: Duration,
    /// How long idle instances are kept, and when they are pre-warmed.
    pub policy: keepalive::predictor::Policy,
    /// The predictor's histogram bin width, ms.
    pub predictor_bin_ms: i64,
    /// Most instances at once on this node, whatever their memory.
    pub max_instances: usize,
    /// Memory offered to instances, MB: instances are admitted by what they are
    /// measured to use, up to this.
    pub memory_mb: u64,
    /// Spare instances kept started per runtime (python3, nodejs), not yet given a
    /// function: a cold start takes one and loads the function's code into it.
    pub spares: usize,
    /// The region, for ARNs.
    pub region: String,
    /// The availability zone's code cache (`http://host:port`), between this node's
    /// cache and object storage. None: straight to object storage.
    pub zone_cache: Option<String>,
    /// The bearer token the zone cache wants (derived from the region's secrets key).
    pub zone_cache_token: Option<String>,
    /// `auto`, `bwrap` or `none`: see [`sandbox::Sandbox::detect`].
    pub sandbox: String,
    /// The `nimbus-init` program and a leading argument for it (when it is the
    /// `nimbus` binary itself), which gives sandboxed instances a network of their own.
    pub init: Option<(PathBuf, Option<String>)>,
    /// Non-public ranges (CIDRs) that tenants' egress rules may reach; everything
    /// else inside the platform's network is closed to functions.
    pub egress_open_networks: Vec<String>,
    /// At shutdown, how long calls in flight get to finish.
    pub drain: Duration,
}

/// The node agent.
pub struct NodeAgent {
    /// Settings.
    cfg: NodeConfig,
    /// Unpacked packages.
    cache: CodeCache,
    /// Instances per configuration key, and their count.
    pools: Mutex<Pools>,
    /// A handle on itself, for the tasks that start instances.
    me: std::sync::Weak<NodeAgent>,
    /// The python interpreter, resolved once (shims cost milliseconds per start).
    python: PathBuf,
    /// The node interpreter.
    node: PathBuf,
    /// How instances are confined.
    pub sandbox: sandbox::Sandbox,
    /// Function output.
    logs: Arc<LogSink>,
    /// The `wasm` runtime, made on first use (it reserves the engine's instance pool).
    wasm: OnceLock<Arc<wasm::WasmRuntime>>,
    /// Pre-started, not yet specialised instances, per runtime.
    spares: Mutex<HashMap<Runtime, SparePool>>,
    /// Cold starts served by a spare.
    spares_used: AtomicUsize,
    /// wasm calls running, and their memory limits' sum (MB): they are not instances,
    /// but they use the node's memory.
    wasm_running: (AtomicUsize, AtomicUsize),
    /// Calls that found no idle instance, and calls served warm.
    starts: (AtomicU64, AtomicU64),
    /// Idle time so far, sampled by the reaper.
    idle: Mutex<IdleTime>,
}

/// A call's output, once its pipes are read: the function wrote it before it
/// answered, but the readers may not have taken it from the pipes yet. Waits until
/// no line has come for [`TAIL_QUIET`] (at most [`TAIL_WAIT`]); only calls that
/// asked for their output wait.
async fn take_tail(inst: &instance::Instance) -> Bytes {
    let start = Instant::now();
    loop {
        let quiet = inst
            .shared
            .tail
            .lock()
            .expect("lock")
            .as_ref()
            .is_none_or(|t| t.last_line.elapsed() >= TAIL_QUIET);
        if quiet && start.elapsed() >= TAIL_QUIET || start.elapsed() >= TAIL_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let tail = inst.shared.tail.lock().expect("lock").take();
    Bytes::from(tail.map(|t| t.text()).unwrap_or_default())
}

/// How long no output must come before a call's output is taken as complete.
const TAIL_QUIET: Duration = Duration::from_millis(3);
/// The longest a call waits for its output.
const TAIL_WAIT: Duration = Duration::from_millis(50);

/// Counts a wasm call as running while it lives.
struct WasmRunning<'a>(&'a (AtomicUsize, AtomicUsize), usize);

impl<'a> WasmRunning<'a> {
    fn new(counters: &'a (AtomicUsize, AtomicUsize), memory_mb: u32) -> Self {
        counters.0.fetch_add(1, Ordering::SeqCst);
        counters.1.fetch_add(memory_mb as usize, Ordering::SeqCst);
        WasmRunning(counters, memory_mb as usize)
    }
}

impl Drop for WasmRunning<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
        self.0.1.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// The runtime a reference names (None: one this build does not know).
pub(crate) fn runtime_of(f: &FunctionRef) -> Option<Runtime> {
    f.runtime.parse().ok()
}

impl NodeAgent {
    /// A node agent working under `cfg.work_dir`, fetching code from `store`, sending
    /// function output to `logs`.
    pub fn new(
        mut cfg: NodeConfig,
        store: DynStore,
        logs: Arc<LogSink>,
    ) -> anyhow::Result<Arc<Self>> {
        use std::os::unix::fs::PermissionsExt as _;
        // Sandboxes bind these paths from another working directory: make them absolute.
        std::fs::create_dir_all(&cfg.work_dir)?;
        cfg.work_dir = std::fs::canonicalize(&cfg.work_dir)?;
        let rt = cfg.work_dir.join("runtimes");
        std::fs::create_dir_all(&rt)?;
        std::fs::create_dir_all(cfg.work_dir.join("code"))?;
        // Sockets and spares' task roots of instances that died with an earlier run.
        for d in ["run", "spare"] {
            let _ = std::fs::remove_dir_all(cfg.work_dir.join(d));
            std::fs::create_dir_all(cfg.work_dir.join(d))?;
        }
        // Sandboxed instances run as nobody and must reach their code and bootstraps.
        for d in [
            cfg.work_dir.clone(),
            rt.clone(),
            cfg.work_dir.join("code"),
            cfg.work_dir.join("run"),
            cfg.work_dir.join("spare"),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::write(rt.join("python_bootstrap.py"), PYTHON_BOOTSTRAP)?;
        std::fs::write(rt.join("node_bootstrap.js"), NODE_BOOTSTRAP)?;
        let sandbox = sandbox::Sandbox::detect(&cfg.sandbox, &cfg.work_dir, cfg.init.clone())?;
        // Inside a sandbox only /usr is visible: use the system interpreters there.
        let system = |p: &str| Some(PathBuf::from(p)).filter(|p| p.is_file());
        let python = system("/usr/bin/python3")
            .filter(|_| sandbox.isolated())
            .unwrap_or_else(|| resolve("python3", &["-c", "import sys; print(sys.executable)"]));
        let node = system("/usr/bin/node")
            .filter(|_| sandbox.isolated())
            .unwrap_or_else(|| resolve("node", &["-e", "console.log(process.execPath)"]));
        let zone = cfg
            .zone_cache
            .as_deref()
            .map(|url| code_service::zone_cache::ZoneClient::new(url, cfg.zone_cache_token.clone()))
            .transpose()?;
        let learning = Learning {
            policy: cfg.policy,
            bin_ms: cfg.predictor_bin_ms,
            fallback_ms: cfg.keep_alive.as_millis() as i64,
        };
        Ok(Arc::new_cyclic(|me| NodeAgent {
            cache: CodeCache::new(cfg.work_dir.join("code"), store, zone),
            pools: Mutex::new(Pools::new(
                Room {
                    max_instances: cfg.max_instances,
                    memory_mb: cfg.memory_mb,
                    max_starting: std::thread::available_parallelism()
                        .map_or(2, |n| n.get().max(2)),
                },
                learning,
            )),
            cfg,
            me: me.clone(),
            python,
            node,
            sandbox,
            logs,
            wasm: OnceLock::new(),
            spares: Mutex::new(HashMap::new()),
            spares_used: AtomicUsize::new(0),
            wasm_running: (AtomicUsize::new(0), AtomicUsize::new(0)),
            starts: (AtomicU64::new(0), AtomicU64::new(0)),
            idle: Mutex::new(IdleTime::default()),
        }))
    }

    /// Instances alive on this node.
    pub fn instances(&self) -> usize {
        self.pools.lock().expect("lock").live()
    }

    /// Runs one invocation on a warm instance, or a new one.
    pub async fn invoke(
        &self,
        f: &FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        if runtime_of(f) == Some(Runtime::Wasm) {
            return self.invoke_wasm(f, event, request_id).await;
        }
        let key = instance_key(f);
        self.invoke_on_instance(&key, f, event, request_id).await
    }

    /// The `wasm` runtime of this node.
    fn wasm(&self) -> Result<Arc<wasm::WasmRuntime>, NodeError> {
        if let Some(w) = self.wasm.get() {
            return Ok(w.clone());
        }
        let w = Arc::new(wasm::WasmRuntime::new(self.cfg.work_dir.join("wasm"))?);
        Ok(self.wasm.get_or_init(|| w).clone())
    }

    /// Runs a `wasm` call: a fresh instance of the module, in this process.
    async fn invoke_wasm(
        &self,
        f: &FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        let runtime = self.wasm()?;
        // A module in memory that reaches no file needs nothing from the package:
        // no look at its directory, no directory opened for the call.
        let code_dir;
        let source = match runtime.ready(&f.code_sha256, &f.handler) {
            Some(r) => wasm::Source::Ready(r),
            None => {
                code_dir = self.code_dir(f).await?;
                runtime
                    .fetch_compiled(&self.cache, &f.code_sha256, &f.handler)
                    .await;
                wasm::Source::Package(&code_dir)
            }
        };
        let mut env: Vec<(String, String)> =
            f.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(
            self.platform_env(f)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        env.extend([
            ("AWS_LAMBDA_REQUEST_ID".into(), request_id.to_string()),
            ("LAMBDA_TASK_ROOT".into(), wasm::TASK_ROOT.into()),
            ("_HANDLER".into(), f.handler.clone()),
        ]);
        // Counted for as long as the call runs: on this task, which a timeout drops.
        let _running = WasmRunning::new(&self.wasm_running, f.memory_mb);
        let started = std::time::Instant::now();
        let call = runtime.call(wasm::WasmCallSpec {
            source,
            code_sha256: &f.code_sha256,
            handler: &f.handler,
            env,
            memory_mb: f.memory_mb,
            timeout_ms: f.timeout_ms,
            event,
        });
        // The epoch deadline stops wasm code; this also bounds a module blocked in a
        // host call. The grace covers a cold module's compilation.
        let grace = Duration::from_millis(f.timeout_ms as u64) + INIT_TIMEOUT;
        let call = match tokio::time::timeout(grace, call).await {
            Ok(c) => c,
            Err(_) => {
                self.wasm_timed_out(f, request_id);
                return Err(NodeError::Timeout(f.timeout_ms));
            }
        };
        let took_us = started.elapsed().as_micros() as u64;
        if !matches!(call.outcome, wasm::WasmOutcome::Capacity) {
            self.logs
                .call_started(&f.tenant_id, &f.function_name, request_id, &f.version);
        }
        let now = nimbus_core::now_ms();
        for line in String::from_utf8_lossy(&call.stderr).lines() {
            self.logs.push(LogLine {
                tenant_id: f.tenant_id.clone(),
                function: f.function_name.clone(),
                timestamp_ms: now,
                request_id: request_id.to_string(),
                stream: "stderr".into(),
                message: line.to_string(),
            });
        }
        let init_ms = if call.cold {
            call.init_us.div_ceil(1000) as u32
        } else {
            0
        };
        let (result, function_error) = match call.outcome {
            wasm::WasmOutcome::Ok(b) => (b, None),
            wasm::WasmOutcome::Error(b) => (b, Some("Unhandled".to_string())),
            wasm::WasmOutcome::Timeout => {
                self.wasm_timed_out(f, request_id);
                return Err(NodeError::Timeout(f.timeout_ms));
            }
            wasm::WasmOutcome::Capacity => return Err(NodeError::Capacity),
        };
        // The module's compilation or load is its init, not its run.
        let duration_us = took_us.saturating_sub(if call.cold { call.init_us } else { 0 });
        self.report_call(
            f,
            request_id,
            duration_us,
            None,
            call.cold.then_some(init_ms),
            function_error.as_ref().map(|_| &result[..]),
        );
        self.count_start(call.cold, "wasm");
        let log_tail = f.tail_log.then(|| {
            let mut tail = runtime_api::Tail::default();
            for line in String::from_utf8_lossy(&call.stderr).lines() {
                tail.push(line);
            }
            Bytes::from(tail.text())
        });
        Ok(InvokeOutcome {
            result,
            function_error,
            cold_start: call.cold,
            init_ms,
            idle_after: 0,
            log_tail,
            duration_us,
        })
    }

    /// The platform's END and REPORT lines of a call that answered, or raised
    /// (`error`: its error document).
    fn report_call(
        &self,
        f: &FunctionRef,
        request_id: &str,
        duration_us: u64,
        max_memory_used_mb: Option<&dyn Fn() -> Option<u64>>,
        init_ms: Option<u32>,
        error: Option<&[u8]>,
    ) {
        self.logs.call_ended(
            &f.tenant_id,
            &f.function_name,
            &CallReport {
                request_id,
                duration_us,
                memory_mb: f.memory_mb,
                max_memory_used_mb,
                init_ms,
                end: error.map_or(CallEnd::Ok, CallEnd::Error),
            },
        );
    }

    /// The platform's lines of a wasm call that ran past its timeout.
    fn wasm_timed_out(&self, f: &FunctionRef, request_id: &str) {
        self.logs
            .call_started(&f.tenant_id, &f.function_name, request_id, &f.version);
        self.logs.call_ended(
            &f.tenant_id,
            &f.function_name,
            &CallReport {
                request_id,
                duration_us: f.timeout_ms as u64 * 1000,
                memory_mb: f.memory_mb,
                max_memory_used_mb: None,
                init_ms: None,
                end: CallEnd::Timeout(f.timeout_ms),
            },
        );
    }

    /// This node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Where this node's function output goes.
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }
}

#[async_trait::async_trait]
impl nimbus_core::nodes::Nodes for NodeAgent {
    async fn invoke(
        &self,
        f: FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        NodeAgent::invoke(self, &f, event, request_id).await
    }

    async fn drain(&self, tenant_id: &str, function: &str) {
        NodeAgent::drain(self, tenant_id, function, None);
    }

    async fn provision(
        &self,
        node: &str,
        f: FunctionRef,
        instances: u32,
        lease: Duration,
    ) -> Result<u32, NodeError> {
        if node != self.config().node_id {
            return Err(NodeError::Internal(anyhow::anyhow!(
                "no node '{node}' here (this node is '{}')",
                self.config().node_id
            )));
        }
        NodeAgent::provision(self, &f, instances as usize, lease)
            .await
            .map(|n| n as u32)
    }

    fn home(&self, _f: &FunctionRef) -> Option<String> {
        Some(self.config().node_id.clone())
    }
}
