//! The node agent: runs function instances on this machine.
//!
//! Instances are kept in pools per function configuration (version, code digest,
//! settings). An instance is a process speaking the Lambda Runtime API on its own
//! loopback port; it is resident (it serves call after call) until it has been idle
//! past the keep-alive, when the reaper kills it: functions scale to zero. A timeout
//! kills the instance; a crash fails only the call it was running, and the next call
//! gets a fresh instance.

pub mod code_cache;
pub mod egress;
pub mod grpc;
pub mod logs;
pub mod runtime_api;
pub mod sandbox;
pub mod wasm;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use code_service::DynStore;
use proto::node::FunctionRef;
use tokio::sync::{mpsc, oneshot, watch};

use self::code_cache::CodeCache;
use self::logs::{LogLine, LogSink};
use self::runtime_api::{ApiShared, Invocation, RuntimeOutcome};

/// The python3 bootstrap shipped in the binary.
const PYTHON_BOOTSTRAP: &str = include_str!("../../runtimes/python_bootstrap.py");
/// The nodejs bootstrap shipped in the binary.
const NODE_BOOTSTRAP: &str = include_str!("../../runtimes/node_bootstrap.js");

/// The listeners of an instance with a network of its own.
struct Sockets {
    api: tokio::net::UnixListener,
    egress: Option<(tokio::net::UnixListener, Arc<egress::Rules>)>,
}

/// Binds an instance's sockets in `dir`, reachable by the sandbox's user.
fn open_sockets(
    dir: &std::path::Path,
    egress_rules: &[String],
    open: &[String],
) -> anyhow::Result<Sockets> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let bind = |name: &str| -> anyhow::Result<tokio::net::UnixListener> {
        let path = dir.join(name);
        let l = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(l)
    };
    let rules = egress::Rules::parse(egress_rules, open);
    Ok(Sockets {
        api: bind("api.sock")?,
        egress: if rules.any() {
            Some((bind("egress.sock")?, Arc::new(rules)))
        } else {
            None
        },
    })
}

/// The process model whose instances serve one call each.
pub const ONE_SHOT: &str = "one-shot";

/// How long an instance may take to initialise (Lambda's 10 s).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub policy: crate::predictor::Policy,
    /// The predictor's histogram bin width, ms.
    pub predictor_bin_ms: i64,
    /// Most instances at once on this node.
    pub max_instances: usize,
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
    /// Idle instances of this configuration on the node after the call (placement).
    pub idle_after: u32,
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
    /// The egress proxy task, if the instance may reach out.
    egress: Option<tokio::task::JoinHandle<()>>,
    /// The directory of its sockets, if it has a network of its own.
    run_dir: Option<PathBuf>,
    /// Its own task root, if it started as a spare (the code is linked in).
    task_dir: Option<PathBuf>,
    /// Its cgroups (a spare's memory limit changes when it is specialised).
    cgroups: Option<Arc<sandbox::InstanceCgroups>>,
}

impl Instance {
    fn alive(&self) -> bool {
        !*self.exited.borrow()
    }

    /// Kills the whole process group and stops the API server.
    fn kill(&self) {
        if self.alive() && self.pid > 0 {
            // The group, so whatever the function forked dies too.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            // And whatever left the group: everything in the instance's cgroups.
            if let Some(cg) = &self.cgroups {
                cg.kill_all();
            }
        }
        self.server.abort();
        if let Some(e) = &self.egress {
            e.abort();
        }
        self.shared.fail_inflight();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        for d in [&self.run_dir, &self.task_dir].into_iter().flatten() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Most instances of one configuration starting at once. A burst queues for the
/// instances already running and these few new ones, instead of starting one process
/// per queued call (a cold-start storm that starves the node's CPU).
const MAX_PARALLEL_STARTS: usize = 4;

/// An instance handed to a call.
struct Granted {
    inst: Arc<Instance>,
    cold: bool,
    init_ms: u32,
}

/// An instance in a call's hands. Dropped still armed — the call failed, timed out,
/// or was dropped half way because its client left — the instance is retired, so
/// the pool's counts stay true (a leaked `busy` or `live` once made a node refuse
/// every call after a burst whose clients hung up).
struct Lease<'a> {
    agent: &'a NodeAgent,
    key: &'a str,
    f: &'a FunctionRef,
    inst: Option<Arc<Instance>>,
}

impl Lease<'_> {
    /// Takes the instance back from the lease: the caller returns it to the pool.
    fn disarm(&mut self) -> Option<Arc<Instance>> {
        self.inst.take()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(inst) = self.inst.take() {
            self.agent.retire(self.key, self.f, &inst);
        }
    }
}

/// A call waiting for an instance. Dropped (the call gave up, or its client left)
/// after an instance was already handed to it, the instance goes back to the pool
/// instead of dying with the unread handover.
struct Waiting<'a> {
    agent: &'a NodeAgent,
    key: &'a str,
    rx: Option<oneshot::Receiver<Result<Granted, NodeError>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Ok(granted)) = rx.try_recv() {
                self.agent.hand_over(self.key, granted, true);
            }
        }
    }
}

/// The instances of one configuration.
#[derive(Default)]
struct Pool {
    /// Ready and unused, most recently used last.
    idle: Vec<Arc<Instance>>,
    /// Calls waiting for an instance, oldest first.
    waiters: VecDeque<oneshot::Sender<Result<Granted, NodeError>>>,
    /// Instances being started.
    starting: usize,
    /// Instances running a call.
    busy: usize,
    /// Memory of each instance, MB.
    memory_mb: u32,
    /// When an instance last finished a call.
    last_release: Option<Instant>,
    /// Keep-alive and pre-warm decisions per concurrency level (the predictor).
    keeper: Option<crate::predictor::Pool>,
    /// The concurrency autoscaler.
    scaler: Option<crate::autoscaler::Autoscaler>,
    /// The configuration, for instances started ahead of calls; None once superseded.
    func: Option<FunctionRef>,
    /// When a call last arrived, ms.
    last_call_ms: i64,
    /// Calls in flight over time, for the autoscaler.
    meter: Meter,
    /// A call not from a timer was seen: the function is not periodic.
    other_calls: bool,
    /// Provisioned concurrency: instances kept alive whatever the policy says, and
    /// until when (the router renews the lease while the reservation stands).
    floor: Option<(usize, Instant)>,
}

/// Calls in flight integrated over time: the autoscaler samples their average over
/// each reaper pass (Knative's average concurrency), not an instant's count.
#[derive(Default)]
struct Meter {
    running: u32,
    since: Option<Instant>,
    area_us: f64,
    window_start: Option<Instant>,
}

impl Meter {
    fn change(&mut self, delta: i32) {
        let now = Instant::now();
        if let Some(s) = self.since {
            self.area_us += self.running as f64 * now.duration_since(s).as_micros() as f64;
        }
        self.since = Some(now);
        self.running = (self.running as i32 + delta).max(0) as u32;
    }

    /// The average concurrency since the previous call.
    fn take_average(&mut self) -> f64 {
        self.change(0);
        let now = self.since.unwrap_or_else(Instant::now);
        let span = self
            .window_start
            .replace(now)
            .map_or(0.0, |s| now.duration_since(s).as_micros() as f64);
        let area = std::mem::take(&mut self.area_us);
        if span > 0.0 {
            area / span
        } else {
            self.running as f64
        }
    }
}

/// Ends a call's accounting even if the call is dropped half way (its client left).
struct Departure<'a>(&'a NodeAgent, &'a str);

impl Drop for Departure<'_> {
    fn drop(&mut self) {
        self.0.depart(self.1);
    }
}

impl Pool {
    /// Instances alive: idle, busy or starting.
    fn size(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }

    /// The provisioned instances this pool must keep now (0 once the lease ran out).
    fn floor(&self, now: Instant) -> usize {
        match self.floor {
            Some((n, until)) if now < until => n,
            _ => 0,
        }
    }

    /// Idle instances the floor holds: provisioned instances not running a call.
    fn floor_idle(&self, now: Instant) -> usize {
        self.floor(now).saturating_sub(self.busy)
    }
}

/// A pool whose function was not called for this long is forgotten with its history.
const FORGET_AFTER_MS: i64 = 4 * 3_600_000;

/// A call that finds every instance busy waits this long for one to come free before
/// a new instance is started, if instances came free recently (short calls): most
/// micro-bursts then cost nothing, where a cold start would cost tens of ms of CPU.
const SCALE_UP_DELAY: Duration = Duration::from_millis(20);

/// The node agent.
pub struct NodeAgent {
    /// Settings.
    cfg: NodeConfig,
    /// Unpacked packages.
    cache: CodeCache,
    /// Instances per configuration key.
    pools: Mutex<HashMap<String, Pool>>,
    /// A handle on itself, for the tasks that start instances.
    me: std::sync::Weak<NodeAgent>,
    /// Instances alive (idle or busy).
    live: AtomicUsize,
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
    spares: Mutex<HashMap<&'static str, SparePool>>,
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

/// Time instances were alive and not running a call: what keep-alive costs.
/// Sampled at each reaper pass (≤ 1 s apart).
#[derive(Debug, Default)]
struct IdleTime {
    /// Instance-seconds.
    instance_seconds: f64,
    /// The same weighted by each instance's memory, MB·s.
    mb_seconds: f64,
    /// The last sample.
    sampled_at: Option<Instant>,
}

/// Totals since the node started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Calls that found no idle instance (wasm: no module in memory).
    pub cold_starts: u64,
    /// Calls served by an idle instance (wasm: the module in memory).
    pub warm_starts: u64,
    /// Time instances were alive and not running a call, seconds: what keep-alive
    /// costs. Sampled at each reaper pass (≤ 1 s apart).
    pub idle_instance_seconds: f64,
    /// The same weighted by each instance's memory, MB·s.
    pub idle_mb_seconds: f64,
}

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

/// Runtimes with spares: interpreters whose start is most of a cold start, and
/// `provided`, whose sandbox is (nimbus-init holds it until the function is known;
/// only in a sandbox with nimbus-init).
const SPARE_RUNTIMES: [&str; 3] = ["python3", "nodejs", "provided"];
/// A spare's memory limit until it is specialised.
const SPARE_MEMORY_MB: u32 = 128;

/// One runtime's spares.
#[derive(Default)]
struct SparePool {
    /// Waiting to be specialised.
    ready: Vec<Arc<Instance>>,
    /// Being started.
    starting: usize,
    /// After a failed start, no retry before this.
    failed_until: Option<Instant>,
}

/// Links (or copies, across file systems) the tree `src` into the directory `dst`.
fn link_tree(src: &std::path::Path, dst: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            link_tree(&from, &to)?;
        } else if kind.is_file() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
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
/// Routers compute it too, to match a call with a node's warm pools.
pub fn instance_key(f: &FunctionRef) -> String {
    use sha2::Digest as _;
    // A digest that is the same in every process and every build.
    let mut h = sha2::Sha256::new();
    for part in [
        f.runtime.as_str(),
        &f.handler,
        &f.code_sha256,
        &f.memory_mb.to_string(),
        &f.timeout_ms.to_string(),
        &f.process_model,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let mut env: Vec<_> = f.env.iter().collect();
    env.sort();
    for (k, v) in env {
        for part in [k, v] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    h.update((f.egress.len() as u64).to_le_bytes());
    for rule in &f.egress {
        h.update((rule.len() as u64).to_le_bytes());
        h.update(rule.as_bytes());
    }
    format!(
        "{}/{}/{}/{}",
        f.tenant_id,
        f.function_name,
        f.version,
        hex::encode(&h.finalize()[..8])
    )
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
        Ok(Arc::new_cyclic(|me| NodeAgent {
            cache: CodeCache::new(cfg.work_dir.join("code"), store, zone),
            cfg,
            pools: Mutex::new(HashMap::new()),
            me: me.clone(),
            live: AtomicUsize::new(0),
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
        self.live.load(Ordering::SeqCst)
    }

    /// An instance for `f`: an idle one at once, else the next one that is released
    /// or started, whichever comes first.
    async fn acquire(&self, key: &str, f: &FunctionRef) -> Result<Granted, NodeError> {
        let rx = {
            let mut pools = self.pools.lock().expect("lock");
            if !pools.contains_key(key) {
                self.supersede(&mut pools, key);
            }
            let pool = pools.entry(key.to_string()).or_default();
            pool.memory_mb = f.memory_mb;
            while let Some(inst) = pool.idle.pop() {
                if inst.alive() {
                    pool.busy += 1;
                    return Ok(Granted {
                        inst,
                        cold: false,
                        init_ms: 0,
                    });
                }
                self.live.fetch_sub(1, Ordering::SeqCst);
            }
            // Nothing of this configuration runs or starts here, and no instance can be
            // started or evicted: say so now, so the router can try another node.
            if pool.busy == 0 && pool.starting == 0 {
                let full = self.live.load(Ordering::SeqCst) >= self.cfg.max_instances;
                if full && !pools.values().any(|p| !p.idle.is_empty()) {
                    return Err(NodeError::Capacity);
                }
            }
            let pool = pools.get_mut(key).expect("present");
            let (tx, rx) = oneshot::channel();
            pool.waiters.push_back(tx);
            let cycling = pool
                .last_release
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
            (rx, cycling)
        };
        let (rx, cycling) = rx;
        if cycling {
            if let Some(me) = self.me.upgrade() {
                let (key, f) = (key.to_string(), f.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(SCALE_UP_DELAY).await;
                    me.maybe_start(&key, &f);
                });
            }
        } else {
            self.maybe_start(key, f);
        }
        let mut waiting = Waiting {
            agent: self,
            key,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(Duration::from_millis(f.timeout_ms as u64), rx).await {
            Ok(Ok(granted)) => {
                waiting.rx = None;
                granted
            }
            _ => Err(NodeError::Capacity),
        }
    }

    /// Starts another instance if calls are waiting and fewer than
    /// [`MAX_PARALLEL_STARTS`] are starting; makes room by evicting another
    /// configuration's idle instance when the node is full.
    fn maybe_start(&self, key: &str, f: &FunctionRef) {
        let Some(me) = self.me.upgrade() else { return };
        {
            let mut pools = self.pools.lock().expect("lock");
            let Some(pool) = pools.get_mut(key) else {
                return;
            };
            pool.waiters.retain(|w| !w.is_closed());
            if pool.starting >= MAX_PARALLEL_STARTS || pool.starting >= pool.waiters.len() {
                return;
            }
            if self.live.load(Ordering::SeqCst) >= self.cfg.max_instances
                && !self.evict_one(&mut pools, key)
            {
                return;
            }
            let pool = pools.get_mut(key).expect("present");
            pool.starting += 1;
            self.live.fetch_add(1, Ordering::SeqCst);
        }
        let (key, f) = (key.to_string(), f.clone());
        tokio::spawn(async move {
            if let Err(e) = me.start_one(&key, &f).await {
                // The oldest waiter gets the failure; the others try again.
                let waiter = me
                    .pools
                    .lock()
                    .expect("lock")
                    .get_mut(&key)
                    .and_then(|p| p.waiters.pop_front());
                if let Some(w) = waiter {
                    let _ = w.send(Err(e));
                }
            }
            me.maybe_start(&key, &f);
        });
    }

    /// Starts one instance of `f` (already counted as starting and live) and hands it
    /// to a waiting call or the idle pool; on failure, uncounts it.
    async fn start_one(&self, key: &str, f: &FunctionRef) -> Result<(), NodeError> {
        let t = Instant::now();
        let started = self.spawn_instance(f).await;
        if let Some(pool) = self.pools.lock().expect("lock").get_mut(key) {
            pool.starting -= 1;
        }
        match started {
            Ok(inst) => {
                let init_ms = t.elapsed().as_millis() as u32;
                self.hand_over(
                    key,
                    Granted {
                        inst,
                        cold: true,
                        init_ms,
                    },
                    false,
                );
                Ok(())
            }
            Err(e) => {
                self.live.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// A new configuration of a version (its code or settings changed) makes the idle
    /// instances of the old one useless: they are killed now rather than at the end of
    /// their keep-alive.
    fn supersede(&self, pools: &mut HashMap<String, Pool>, key: &str) {
        let Some((version, _)) = key.rsplit_once('/') else {
            return;
        };
        let prefix = format!("{version}/");
        let mut n = 0;
        for (k, pool) in pools.iter_mut() {
            if k.starts_with(&prefix) && k != key {
                n += pool.idle.len();
                pool.idle.clear();
                pool.func = None;
                pool.floor = None;
            }
        }
        if n > 0 {
            self.live.fetch_sub(n, Ordering::SeqCst);
            tracing::debug!(instances = n, "superseded idle instances");
        }
    }

    /// Kills the least recently used idle instance of another configuration.
    fn evict_one(&self, pools: &mut HashMap<String, Pool>, except: &str) -> bool {
        let now = Instant::now();
        let victim = pools
            .iter()
            .filter(|(k, p)| k.as_str() != except && p.idle.len() > p.floor_idle(now))
            .flat_map(|(k, p)| {
                p.idle
                    .first()
                    .map(|i| (k.clone(), *i.last_used.lock().expect("lock")))
            })
            .min_by_key(|(_, used)| *used);
        let Some(pool) = victim.and_then(|(k, _)| pools.get_mut(&k)) else {
            return false;
        };
        // Dropping the instance kills it.
        drop(pool.idle.remove(0));
        self.live.fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Gives an instance to the oldest waiting call, or puts it in the idle pool.
    /// `was_busy`: it just finished a call (rather than just started).
    fn hand_over(&self, key: &str, mut granted: Granted, was_busy: bool) {
        let mut pools = self.pools.lock().expect("lock");
        let pool = pools.entry(key.to_string()).or_default();
        if was_busy {
            pool.busy = pool.busy.saturating_sub(1);
        }
        pool.last_release = Some(Instant::now());
        while let Some(w) = pool.waiters.pop_front() {
            match w.send(Ok(granted)) {
                Ok(()) => {
                    pool.busy += 1;
                    return;
                }
                Err(Ok(back)) => granted = back,
                Err(Err(_)) => return,
            }
        }
        *granted.inst.last_used.lock().expect("lock") = Instant::now();
        pool.idle.push(granted.inst);
    }

    /// Kills every idle instance and fails every waiting call: the node is stopping.
    pub fn shutdown(&self) {
        self.spares.lock().expect("lock").clear();
        let pools: Vec<Pool> = self
            .pools
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, p)| p)
            .collect();
        let n: usize = pools.iter().map(|p| p.idle.len()).sum();
        self.live.fetch_sub(n, Ordering::SeqCst);
        drop(pools);
    }

    /// Applies the keep-alive policy: kills the idle instances the predictor (and,
    /// in a burst, the autoscaler) no longer wants, and starts those they want ahead
    /// of calls (pre-warms). Pools made only by [`NodeAgent::prewarm`] keep their
    /// instances for the fixed keep-alive. Returns how many instances were killed.
    pub fn reap(&self) -> usize {
        let now = nimbus_core::now_ms();
        let mut dead = Vec::new();
        let mut starts: Vec<(String, FunctionRef)> = Vec::new();
        {
            let mut pools = self.pools.lock().expect("lock");
            let mut room = self
                .cfg
                .max_instances
                .saturating_sub(self.live.load(Ordering::SeqCst));
            let instant = Instant::now();
            // Idle time since the last pass, at the idle counts of now.
            {
                let mut idle = self.idle.lock().expect("lock");
                if let Some(prev) = idle.sampled_at {
                    let dt = instant.duration_since(prev).as_secs_f64();
                    for p in pools.values() {
                        idle.instance_seconds += p.idle.len() as f64 * dt;
                        idle.mb_seconds += (p.idle.len() * p.memory_mb as usize) as f64 * dt;
                    }
                }
                idle.sampled_at = Some(instant);
            }
            for (key, pool) in pools.iter_mut() {
                pool.idle.retain(|i| {
                    if !i.alive() {
                        dead.push(i.clone());
                    }
                    i.alive()
                });
                // Provisioned instances stay, and the missing ones start, whatever
                // the policy below says.
                let floor_idle = pool.floor_idle(instant);
                let floor_missing = pool.floor(instant).saturating_sub(pool.size());
                let to_start = if let Some(keeper) = &pool.keeper {
                    let running = pool.busy + pool.waiters.len();
                    let average = pool.meter.take_average();
                    let mut want_idle = keeper.loaded_idle(now).len().max(floor_idle);
                    // Only pre-warm intervals start instances; keep-alive intervals
                    // keep the ones there are (a call that failed or crashed leaves
                    // none).
                    let mut may_start = keeper.prewarms_due(now).max(floor_missing);
                    let size = pool.size() as u32;
                    if let Some(scaler) = &mut pool.scaler {
                        scaler.record(now, average);
                        let scale = scaler.decide(now, size);
                        // A burst: hold (and start) what the panic window asks for.
                        if scale.panic {
                            let burst = (scale.desired as usize).saturating_sub(running);
                            want_idle = want_idle.max(burst);
                            may_start = may_start.max(burst);
                        }
                    }
                    // The least recently used go first (`idle` is oldest first).
                    while pool.idle.len() > want_idle {
                        dead.push(pool.idle.remove(0));
                    }
                    want_idle
                        .saturating_sub(pool.idle.len() + pool.starting)
                        .min(may_start)
                } else {
                    // Made by pre-warms only: the fixed keep-alive, most recently
                    // used kept first.
                    let mut kept = 0;
                    for i in std::mem::take(&mut pool.idle).into_iter().rev() {
                        let fresh =
                            i.last_used.lock().expect("lock").elapsed() < self.cfg.keep_alive;
                        if fresh || kept < floor_idle {
                            kept += 1;
                            pool.idle.push(i);
                        } else {
                            dead.push(i);
                        }
                    }
                    pool.idle.reverse();
                    floor_missing
                };
                if let Some(f) = &pool.func {
                    for _ in 0..to_start.min(room).min(MAX_PARALLEL_STARTS) {
                        pool.starting += 1;
                        room -= 1;
                        self.live.fetch_add(1, Ordering::SeqCst);
                        starts.push((key.clone(), f.clone()));
                    }
                }
            }
            pools.retain(|_, p| {
                p.size() > 0
                    || !p.waiters.is_empty()
                    || p.floor(instant) > 0
                    || (p.func.is_some() && now - p.last_call_ms < FORGET_AFTER_MS)
            });
        }
        let n = dead.len();
        self.live.fetch_sub(n, Ordering::SeqCst);
        drop(dead);
        if let Some(me) = self.me.upgrade() {
            for (key, f) in starts {
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.start_one(&key, &f).await {
                        // No more pre-warms of it until it is called again: a
                        // function that cannot start is not restarted every pass.
                        tracing::debug!(error = %e, "pre-warm failed");
                        if let Some(pool) = me.pools.lock().expect("lock").get_mut(&key) {
                            pool.func = None;
                        }
                    }
                });
            }
        }
        n
    }

    /// Kills every idle instance of a function (it changed or was deleted), or of one
    /// of its versions.
    pub fn drain(&self, tenant_id: &str, function: &str, version: Option<&str>) -> usize {
        let prefix = match version {
            Some(v) => format!("{tenant_id}/{function}/{v}/"),
            None => format!("{tenant_id}/{function}/"),
        };
        let mut pools = self.pools.lock().expect("lock");
        let mut n = 0;
        for (k, pool) in pools.iter_mut() {
            if k.starts_with(&prefix) {
                n += pool.idle.len();
                pool.idle.clear();
                pool.func = None;
            }
        }
        self.live.fetch_sub(n, Ordering::SeqCst);
        n
    }

    /// Runs the reaper until the agent is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        // Once a second at most: the autoscaler samples concurrency at each pass, and
        // pre-warms start within half a predictor bin of their time.
        let every = (self.cfg.keep_alive / 4)
            .min(Duration::from_millis(
                self.cfg.predictor_bin_ms.max(100) as u64 / 2,
            ))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(agent) => {
                        agent.top_up_spares();
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
        if f.runtime == "wasm" {
            return self.invoke_wasm(f, event, request_id).await;
        }
        let key = instance_key(f);
        self.arrive(&key, f);
        let _departure = Departure(self, &key);
        self.invoke_on_instance(&key, f, event, request_id).await
    }

    /// A call of `f` arrived: the predictor and the autoscaler learn of it.
    fn arrive(&self, key: &str, f: &FunctionRef) {
        let now = nimbus_core::now_ms();
        let mut pools = self.pools.lock().expect("lock");
        if !pools.contains_key(key) {
            self.supersede(&mut pools, key);
        }
        let pool = pools.entry(key.to_string()).or_default();
        let (policy, bin_ms) = (self.cfg.policy, self.cfg.predictor_bin_ms);
        let fallback = self.cfg.keep_alive.as_millis() as i64;
        // Calls only ever from a timer are periodic: the predictor trusts fewer idle
        // times. One call from anywhere else and the function is not.
        pool.other_calls |= !f.from_timer;
        let keeper = pool
            .keeper
            .get_or_insert_with(|| crate::predictor::Pool::with(policy, bin_ms, fallback));
        keeper.set_periodic(!pool.other_calls);
        keeper.enter(now);
        pool.scaler.get_or_insert_with(|| {
            crate::autoscaler::Autoscaler::new(crate::autoscaler::AutoscalerConfig::default())
        });
        pool.func = Some(f.clone());
        pool.last_call_ms = now;
        pool.meter.change(1);
    }

    /// A call of the configuration `key` ended.
    fn depart(&self, key: &str) {
        let mut pools = self.pools.lock().expect("lock");
        let Some(pool) = pools.get_mut(key) else {
            return;
        };
        pool.meter.change(-1);
        if let Some(k) = pool.keeper.as_mut() {
            k.leave(nimbus_core::now_ms());
        }
    }

    /// Runs one call on a warm instance, or a new one.
    async fn invoke_on_instance(
        &self,
        key: &str,
        f: &FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        let key = key.to_string();
        let Granted {
            inst,
            cold,
            init_ms,
        } = self.acquire(&key, f).await?;
        let mut lease = Lease {
            agent: self,
            key: &key,
            f,
            inst: Some(inst.clone()),
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
            // The lease retires it.
            return Err(NodeError::Init(
                "the instance stopped before the call".into(),
            ));
        }
        let mut exited = inst.exited.clone();
        let outcome = tokio::select! {
            r = reply_rx => r.ok(),
            _ = tokio::time::sleep(Duration::from_millis(f.timeout_ms as u64)) => {
                // The lease retires it.
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
        if inst.alive() && f.process_model != ONE_SHOT {
            lease.disarm();
            self.hand_over(
                &key,
                Granted {
                    inst,
                    cold: false,
                    init_ms: 0,
                },
                true,
            );
        } else {
            drop(lease);
        }
        self.count_start(cold);
        Ok(InvokeOutcome {
            result,
            function_error,
            cold_start: cold,
            init_ms,
            idle_after: self.idle_count(&key),
        })
    }

    /// The function's unpacked code on this node (fetched if need be).
    async fn code_dir(&self, f: &FunctionRef) -> Result<PathBuf, NodeError> {
        self.cache
            .ensure(&f.code_sha256)
            .await
            .map(|(dir, _)| dir)
            .map_err(|e| NodeError::Init(format!("fetching the code: {e:#}")))
    }

    /// The variables the platform sets for every runtime (a function's own `env`
    /// cannot override them).
    fn platform_env(&self, f: &FunctionRef) -> [(&'static str, String); 4] {
        [
            ("AWS_LAMBDA_FUNCTION_NAME", f.function_name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", f.version.clone()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mb.to_string()),
            ("AWS_REGION", self.cfg.region.clone()),
        ]
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
        let code_dir = self.code_dir(f).await?;
        let runtime = self.wasm()?;
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
        let (sha, handler) = (f.code_sha256.clone(), f.handler.clone());
        let (memory_mb, timeout_ms) = (f.memory_mb, f.timeout_ms);
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| anyhow::anyhow!("the node is stopping"))?;
        let call = tokio::task::spawn_blocking(move || {
            // Counted for as long as the call really runs (past a timeout here too).
            let _running = WasmRunning::new(&me.wasm_running, memory_mb);
            runtime.call(wasm::WasmCallSpec {
                code_dir: &code_dir,
                code_sha256: &sha,
                handler: &handler,
                env,
                memory_mb,
                timeout_ms,
                event,
            })
        });
        // The epoch deadline stops wasm code; this also bounds a module blocked in a
        // host call. The grace covers a cold module's compilation.
        let grace = Duration::from_millis(f.timeout_ms as u64) + INIT_TIMEOUT;
        let call = match tokio::time::timeout(grace, call).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(NodeError::Internal(anyhow::anyhow!("wasm call: {e}"))),
            Err(_) => return Err(NodeError::Timeout(f.timeout_ms)),
        };
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
            wasm::WasmOutcome::Timeout => return Err(NodeError::Timeout(f.timeout_ms)),
            wasm::WasmOutcome::Capacity => return Err(NodeError::Capacity),
        };
        self.count_start(call.cold);
        Ok(InvokeOutcome {
            result,
            function_error,
            cold_start: call.cold,
            init_ms,
            idle_after: 0,
        })
    }

    /// Kills a busy instance that will not serve again (it timed out, crashed, or was
    /// one-shot), and starts another if calls are waiting for one.
    fn retire(&self, key: &str, f: &FunctionRef, inst: &Instance) {
        inst.kill();
        self.live.fetch_sub(1, Ordering::SeqCst);
        let waiting = {
            let mut pools = self.pools.lock().expect("lock");
            pools.get_mut(key).is_some_and(|p| {
                p.busy = p.busy.saturating_sub(1);
                !p.waiters.is_empty()
            })
        };
        if waiting {
            self.maybe_start(key, f);
        }
    }

    /// Idle instances of a configuration.
    fn idle_count(&self, key: &str) -> u32 {
        self.pools
            .lock()
            .expect("lock")
            .get(key)
            .map_or(0, |p| p.idle.len() as u32)
    }

    /// Instances per configuration: what a heartbeat reports for placement.
    pub fn pools(&self) -> Vec<proto::node::WarmPool> {
        self.pools
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, p)| proto::node::WarmPool {
                key: k.clone(),
                idle: p.idle.len() as u32,
                busy: (p.busy + p.starting) as u32,
            })
            .collect()
    }

    /// Memory (MB) and instances in use on this node; a running wasm call counts as
    /// an instance of its memory limit.
    pub fn used(&self) -> (u64, u32) {
        let pools = self.pools.lock().expect("lock");
        let (m, n) = pools.values().fold((0, 0), |(m, n), p| {
            let k = p.idle.len() + p.busy + p.starting;
            (m + k as u64 * p.memory_mb as u64, n + k as u32)
        });
        // Running wasm calls, at their memory limits.
        (
            m + self.wasm_running.1.load(Ordering::SeqCst) as u64,
            n + self.wasm_running.0.load(Ordering::SeqCst) as u32,
        )
    }

    fn count_start(&self, cold: bool) {
        let c = if cold { &self.starts.0 } else { &self.starts.1 };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// What the node has done since it started.
    pub fn counters(&self) -> Counters {
        let idle = self.idle.lock().expect("lock");
        Counters {
            cold_starts: self.starts.0.load(Ordering::Relaxed),
            warm_starts: self.starts.1.load(Ordering::Relaxed),
            idle_instance_seconds: idle.instance_seconds,
            idle_mb_seconds: idle.mb_seconds,
        }
    }

    /// The node's metrics, Prometheus text.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let c = self.counters();
        let (memory_mb, instances) = self.used();
        let tiers = self.code_fetches();
        let node = &self.cfg.node_id;
        let rows: [(&str, &str, &str, String); 9] = [
            (
                "nimbus_node_cold_starts_total",
                "counter",
                "Calls that started an instance (or loaded a wasm module).",
                c.cold_starts.to_string(),
            ),
            (
                "nimbus_node_warm_starts_total",
                "counter",
                "Calls served by an instance already loaded.",
                c.warm_starts.to_string(),
            ),
            (
                "nimbus_node_idle_instance_seconds_total",
                "counter",
                "Time instances were loaded and not running a call.",
                format!("{:.3}", c.idle_instance_seconds),
            ),
            (
                "nimbus_node_idle_mb_seconds_total",
                "counter",
                "Idle instance time weighted by memory, MB-s.",
                format!("{:.1}", c.idle_mb_seconds),
            ),
            (
                "nimbus_node_instances",
                "gauge",
                "Instances alive (and wasm calls running).",
                instances.to_string(),
            ),
            (
                "nimbus_node_memory_mb",
                "gauge",
                "Memory of the instances alive, MB.",
                memory_mb.to_string(),
            ),
            (
                "nimbus_node_spares_used_total",
                "counter",
                "Cold starts served by a spare.",
                self.spares_used().to_string(),
            ),
            (
                "nimbus_node_code_fetches_zone_total",
                "counter",
                "Code packages fetched from the zone cache.",
                tiers.zone.0.to_string(),
            ),
            (
                "nimbus_node_code_fetches_object_total",
                "counter",
                "Code packages fetched from object storage.",
                tiers.object.0.to_string(),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
        }
        out
    }

    /// What each code tier (zone cache, object storage) has served this node.
    pub fn code_fetches(&self) -> code_cache::TierStats {
        self.cache.stats()
    }

    /// Digests of the packages unpacked on this node.
    pub fn cached_code(&self) -> Vec<String> {
        self.cache.digests()
    }

    /// This node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Starts instances of `f` until `n` exist (idle, busy or starting), within the
    /// node's room; they wait idle for calls. Returns how many exist.
    ///
    /// A `wasm` function has no resident instances: pre-warming loads its module,
    /// and answers 1.
    pub async fn prewarm(&self, f: &FunctionRef, n: usize) -> Result<usize, NodeError> {
        if f.runtime == "wasm" {
            let code_dir = self.code_dir(f).await?;
            let runtime = self.wasm()?;
            let (sha, handler) = (f.code_sha256.clone(), f.handler.clone());
            tokio::task::spawn_blocking(move || runtime.preload(&code_dir, &sha, &handler))
                .await
                .map_err(|e| NodeError::Internal(e.into()))?
                .map_err(|e| NodeError::Init(format!("{e:#}")))?;
            return Ok(1);
        }
        let key = instance_key(f);
        let want = {
            let mut pools = self.pools.lock().expect("lock");
            let pool = pools.entry(key.clone()).or_default();
            pool.memory_mb = f.memory_mb;
            let have = pool.idle.len() + pool.busy + pool.starting;
            let room = self
                .cfg
                .max_instances
                .saturating_sub(self.live.load(Ordering::SeqCst));
            let want = n.saturating_sub(have).min(room);
            pool.starting += want;
            self.live.fetch_add(want, Ordering::SeqCst);
            want
        };
        let starts = (0..want).map(|_| self.start_one(&key, f));
        let results = futures::future::join_all(starts).await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e);
        }
        let pools = self.pools.lock().expect("lock");
        Ok(pools
            .get(&key)
            .map_or(0, |p| p.idle.len() + p.busy + p.starting))
    }

    /// Provisioned concurrency: keeps at least `n` instances of `f` alive (idle or
    /// busy) until `lease` from now, starting the missing ones at once and again
    /// whenever one dies. Each call renews the lease; `n` = 0 ends it. A new
    /// configuration of the same version (new code or settings) replaces the old one's
    /// instances. Returns the instances alive now.
    pub async fn provision(
        &self,
        f: &FunctionRef,
        n: usize,
        lease: Duration,
    ) -> Result<usize, NodeError> {
        if f.runtime == "wasm" {
            // One-shot instances: provisioning means the module is loaded.
            return if n > 0 {
                self.prewarm(f, 1).await
            } else {
                Ok(0)
            };
        }
        let key = instance_key(f);
        {
            let mut pools = self.pools.lock().expect("lock");
            if n > 0 {
                self.supersede(&mut pools, &key);
            }
            let pool = pools.entry(key.clone()).or_default();
            pool.memory_mb = f.memory_mb;
            pool.floor = (n > 0).then(|| (n, Instant::now() + lease));
            if n > 0 {
                pool.func = Some(f.clone());
            }
        }
        if n == 0 {
            return Ok(0);
        }
        self.prewarm(f, n).await
    }

    /// What an instance is told of its function (`GET /2018-06-01/nimbus/specialize`):
    /// its handler and environment, the platform's variables last.
    fn function_spec(&self, f: &FunctionRef, proxy: bool) -> Bytes {
        let mut env: serde_json::Map<String, serde_json::Value> = f
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        for (k, v) in self.platform_env(f) {
            env.insert(k.into(), v.into());
        }
        if proxy {
            let proxy = format!("http://{}", sandbox::PROXY_ADDR);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(k.into(), proxy.clone().into());
            }
        }
        Bytes::from(serde_json::json!({"handler": f.handler, "env": env}).to_string())
    }

    /// A plain process (`node.sandbox = "none"`: trusted code only), which must
    /// still die with the node.
    fn unsandboxed(
        &self,
        f: &FunctionRef,
        program: &std::path::Path,
        args: &[std::ffi::OsString],
        code_dir: &std::path::Path,
        env: &[(&str, String)],
    ) -> tokio::process::Command {
        let mut cmd = match ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
        {
            Some(setpriv) => {
                let mut c = tokio::process::Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(args)
            .current_dir(code_dir)
            .env_clear()
            .envs(f.env.iter())
            .envs(self.platform_env(f))
            .envs(env.iter().cloned())
            .env("_HANDLER", &f.handler);
        cmd
    }

    async fn spawn_instance(&self, f: &FunctionRef) -> Result<Arc<Instance>, NodeError> {
        let code_dir = self.code_dir(f).await?;
        if let Some(inst) = self.specialize_spare(f, &code_dir).await? {
            return Ok(inst);
        }
        let inst = self.launch(f, &code_dir, None).await?;
        Self::await_ready(inst).await
    }

    /// Starts an instance's process in its sandbox, without waiting for it to
    /// initialise. `spare`: the directory bound as its (still empty) task root; it
    /// then waits to be specialised (see [`NodeAgent::specialize_spare`]).
    async fn launch(
        &self,
        f: &FunctionRef,
        code_dir: &std::path::Path,
        spare: Option<PathBuf>,
    ) -> Result<Arc<Instance>, NodeError> {
        let code_dir = code_dir.to_path_buf();
        let (shared, tx) = ApiShared::new();
        // An interpreter's spare asks for its function itself, when it gets one.
        let interpreter_spare = spare.is_some() && f.runtime != "provided";
        let app = runtime_api::router(shared.clone());
        let instance_id = nimbus_core::new_id();
        let jailed = self.sandbox.isolated();
        // Sandboxed: a network of its own, the Runtime API (and the egress proxy) on
        // Unix sockets that nimbus-init forwards to inside. Else a port on the node's
        // loopback (node.sandbox = "none").
        let (server, api_addr, run_dir, egress) = if jailed {
            let dir = self.cfg.work_dir.join("run").join(&instance_id);
            let net = open_sockets(&dir, &f.egress, &self.cfg.egress_open_networks)
                .map_err(NodeError::Internal)?;
            let server = tokio::spawn(async move {
                let _ = axum::serve(runtime_api::PassedConnections(net.api), app).await;
            });
            let egress = net
                .egress
                .map(|(l, rules)| tokio::spawn(egress::serve(l, rules)));
            (server, sandbox::API_ADDR.to_string(), Some(dir), egress)
        } else {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(anyhow::Error::from)?;
            let addr = listener.local_addr().map_err(anyhow::Error::from)?;
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (server, addr.to_string(), None, None)
        };
        if spare.is_none() {
            // Handed over at once: nimbus-init asks for it inside the sandbox, so
            // nothing of the tenant's passes through the launcher.
            shared.specialize(
                (f.tenant_id.clone(), f.function_name.clone()),
                self.function_spec(f, egress.is_some()),
            );
        }
        let cleanup = |server: &tokio::task::JoinHandle<()>| {
            server.abort();
            if let Some(e) = &egress {
                e.abort();
            }
            if let Some(d) = &run_dir {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        let rt = self.cfg.work_dir.join("runtimes");
        let (task_root, runtime_root) = self.sandbox.paths(&code_dir, &rt);
        let (program, args): (PathBuf, Vec<std::ffi::OsString>) = match f.runtime.as_str() {
            "python3" => (
                self.python.clone(),
                vec!["-u".into(), runtime_root.join("python_bootstrap.py").into()],
            ),
            "nodejs" => (
                self.node.clone(),
                vec![runtime_root.join("node_bootstrap.js").into()],
            ),
            "provided" => (task_root.join("bootstrap"), vec![]),
            other => {
                cleanup(&server);
                return Err(NodeError::Init(format!(
                    "runtime '{other}' is not available on this node"
                )));
            }
        };
        // The node's own constants; the function's variables come with its spec.
        let mut env: Vec<(&str, String)> = vec![
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG", "C.UTF-8".into()),
            ("TZ", ":UTC".into()),
            ("HOME", "/tmp".into()),
            ("AWS_LAMBDA_RUNTIME_API", api_addr.clone()),
            ("LAMBDA_TASK_ROOT", task_root.display().to_string()),
            ("LAMBDA_RUNTIME_DIR", runtime_root.display().to_string()),
        ];
        if interpreter_spare {
            env.push(("NIMBUS_SPARE", "1".into()));
        }
        let (mut cmd, cgroups) = match &run_dir {
            Some(dir) => match self.sandbox.command(sandbox::Launch {
                id: &instance_id,
                program: &program,
                args: &args,
                code_dir: &code_dir,
                runtime_dir: &rt,
                memory_mb: f.memory_mb,
                run_dir: dir,
                api: true,
                egress: egress.is_some(),
                function: !interpreter_spare,
                env: &env,
            }) {
                Ok(c) => c,
                Err(e) => {
                    cleanup(&server);
                    return Err(NodeError::Init(format!("{e:#}")));
                }
            },
            None => (self.unsandboxed(f, &program, &args, &code_dir, &env), None),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup(&server);
                return Err(NodeError::Init(format!(
                    "starting the {} runtime: {e}",
                    f.runtime
                )));
            }
        };
        let pid = child.id().unwrap_or(0);
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
            let (shared, logs) = (shared.clone(), self.logs.clone());
            tokio::spawn(logs::read_lines(pipe, move |line| {
                let request_id = shared.current.lock().expect("lock").clone();
                // A spare's output before it has a function goes nowhere.
                let Some((tenant_id, function)) = shared.owner.lock().expect("lock").clone() else {
                    return;
                };
                logs.push(LogLine {
                    tenant_id,
                    function,
                    timestamp_ms: nimbus_core::now_ms(),
                    request_id,
                    stream: stream.into(),
                    message: line,
                });
            }));
        }
        let (exit_tx, exit_rx) = watch::channel(false);
        let cgroups = cgroups.map(Arc::new);
        let cg = cgroups.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = exit_tx.send(true);
            // The cgroups go once the sandbox is empty.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(cg);
        });
        Ok(Arc::new(Instance {
            tx,
            shared: shared.clone(),
            pid,
            exited: exit_rx.clone(),
            last_used: Mutex::new(Instant::now()),
            server,
            egress,
            run_dir,
            task_dir: spare,
            cgroups,
        }))
    }

    /// Cold starts served by a spare so far.
    pub fn spares_used(&self) -> usize {
        self.spares_used.load(Ordering::SeqCst)
    }

    /// Spares waiting, per runtime.
    pub fn spares_ready(&self) -> Vec<(String, usize)> {
        self.spares
            .lock()
            .expect("lock")
            .iter()
            .map(|(rt, p)| (rt.to_string(), p.ready.len()))
            .collect()
    }

    /// Turns a spare into an instance of `f`, if one fits: the function's code is
    /// linked into its task root, its memory limit set, and its environment and
    /// handler handed over; the runtime then imports the handler as usual.
    async fn specialize_spare(
        &self,
        f: &FunctionRef,
        code_dir: &std::path::Path,
    ) -> Result<Option<Arc<Instance>>, NodeError> {
        if self.cfg.spares == 0 || !f.egress.is_empty() {
            return Ok(None);
        }
        let Some(rt) = self.spare_runtimes().find(|r| **r == f.runtime) else {
            return Ok(None);
        };
        let inst = {
            let mut spares = self.spares.lock().expect("lock");
            let Some(pool) = spares.get_mut(rt) else {
                return Ok(None);
            };
            pool.ready.retain(|i| i.alive());
            pool.ready.pop()
        };
        // Replaced now (one start per spare taken), so back-to-back cold starts
        // find one too.
        self.top_up_spares();
        let Some(inst) = inst else { return Ok(None) };
        let dir = inst.task_dir.clone().expect("a spare has a task root");
        let src = code_dir.to_path_buf();
        tokio::task::spawn_blocking(move || link_tree(&src, &dir))
            .await
            .map_err(|e| NodeError::Internal(e.into()))?
            .map_err(|e| NodeError::Internal(anyhow::Error::from(e).context("linking the code")))?;
        if let Some(cg) = &inst.cgroups {
            cg.set_memory(f.memory_mb)
                .map_err(|e| NodeError::Internal(anyhow::Error::from(e).context("memory limit")))?;
        }
        inst.shared.specialize(
            (f.tenant_id.clone(), f.function_name.clone()),
            self.function_spec(f, false),
        );
        self.spares_used.fetch_add(1, Ordering::SeqCst);
        Self::await_ready(inst).await.map(Some)
    }

    /// The runtimes this node keeps spares of.
    fn spare_runtimes(&self) -> impl Iterator<Item = &'static &'static str> {
        let jailed = self.sandbox.isolated();
        let usable = self.sandbox.unavailable().is_none();
        SPARE_RUNTIMES
            .iter()
            .filter(move |rt| usable && (**rt != "provided" || jailed))
    }

    /// Starts a spare for each runtime that has fewer than `spares` of them (one per
    /// runtime per call: a burst's replacements are spread out; after a failed
    /// start, that runtime waits 30 s).
    pub fn top_up_spares(&self) {
        if self.cfg.spares == 0 {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let mut todo = Vec::new();
        {
            let mut spares = self.spares.lock().expect("lock");
            for &rt in self.spare_runtimes() {
                let pool = spares.entry(rt).or_default();
                pool.ready.retain(|i| i.alive());
                if pool.failed_until.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                if pool.ready.len() + pool.starting < self.cfg.spares {
                    pool.starting += 1;
                    todo.push(rt);
                }
            }
        }
        for rt in todo {
            let me = me.clone();
            tokio::spawn(async move {
                let started = me.start_spare(rt).await;
                let mut spares = me.spares.lock().expect("lock");
                let pool = spares.entry(rt).or_default();
                pool.starting -= 1;
                match started {
                    Ok(inst) => pool.ready.push(inst),
                    Err(e) => {
                        tracing::debug!(runtime = rt, error = %e, "a spare did not start");
                        pool.failed_until = Some(Instant::now() + Duration::from_secs(30));
                    }
                }
            });
        }
    }

    /// Starts one spare of runtime `rt` and waits until it asks for its function.
    async fn start_spare(&self, rt: &str) -> Result<Arc<Instance>, NodeError> {
        use std::os::unix::fs::PermissionsExt as _;
        let f = FunctionRef {
            runtime: rt.to_string(),
            memory_mb: SPARE_MEMORY_MB,
            ..Default::default()
        };
        let dir = self.cfg.work_dir.join("spare").join(nimbus_core::new_id());
        std::fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(anyhow::Error::from)?;
        let inst = self.launch(&f, &dir, Some(dir.clone())).await?;
        let mut exited = inst.exited.clone();
        tokio::select! {
            _ = inst.shared.spare_waiting.notified() => Ok(inst),
            _ = exited.wait_for(|e| *e) => Err(NodeError::Init("the spare exited".into())),
            _ = tokio::time::sleep(INIT_TIMEOUT) => Err(NodeError::Init("the spare did not start within 10 s".into())),
        }
    }

    /// Waits for a started instance to initialise (its first `GET /next`).
    async fn await_ready(inst: Arc<Instance>) -> Result<Arc<Instance>, NodeError> {
        let shared = inst.shared.clone();
        let mut exited = inst.exited.clone();
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
