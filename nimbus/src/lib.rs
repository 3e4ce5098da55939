//! Wiring: builds each service from the configuration and runs it.
//!
//! - [`Platform::start`]: every service in one process (`nimbus up`, and the
//!   in-process integration tests).
//! - [`serve`]: one service as its own process (`nimbus serve …`).
//!
//! Only this crate knows every backend; the services see traits.

pub mod bench;
pub mod bench_flow;
pub mod cli;
pub mod jail;
pub mod ops;
pub mod output;
pub mod propagation;
pub mod replay;
pub mod sandbox_init;
pub mod spec;
pub mod telemetry;
pub mod usage_cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nimbus_core::bus::DynBus;
use nimbus_core::config::{BusKind, Config};
use nimbus_core::shutdown::{self, Shutdown, Trigger};
use tokio::task::JoinSet;

/// Asynchronous invocations in flight per process.
const ASYNC_CONCURRENCY: u16 = 64;

/// The services `nimbus serve` can run.
pub const SERVICES: &[&str] = &[
    "api-gateway",
    "workflow",
    "code",
    "code-cache",
    "resource",
    "network",
    "node",
    "directory",
];

/// A running all-in-one platform.
pub struct Platform {
    /// The API's base URL.
    pub url: String,
    /// The API's address.
    pub addr: SocketAddr,
    /// The node registry's gRPC address.
    pub registry_addr: SocketAddr,
    /// The bootstrap admin key, if this start created it.
    pub admin_key: Option<String>,
    /// The resolved configuration.
    pub config: Config,
    /// Stops every service.
    trigger: Trigger,
    /// The node agent (instances die with it).
    pub node: std::sync::Arc<node::NodeAgent>,
    /// Its reaper.
    reaper: tokio::task::JoinHandle<()>,
    /// The services' tasks.
    tasks: JoinSet<anyhow::Result<()>>,
}

/// How to start the all-in-one platform.
pub struct UpOptions {
    /// Where the database, objects and keys live.
    pub data_dir: PathBuf,
    /// The API's address (port 0 picks one).
    pub listen: SocketAddr,
    /// A bus to use instead of a fresh in-process one (tests inject faults this way).
    pub bus: Option<DynBus>,
    /// Overrides of the generated configuration, as `NIMBUS_*` pairs.
    pub overrides: Vec<(String, String)>,
}

/// The embedded configuration for a data directory.
pub fn embedded_config(
    data_dir: &Path,
    listen: SocketAddr,
    jwt_secret: &str,
    secrets_key: &str,
) -> String {
    let dir = data_dir.display().to_string().replace('\\', "/");
    format!(
        r#"
[database]
url = "sqlite://{dir}/nimbus.db?mode=rwc"
max_connections = 8

[bus]
kind = "memory"

[objects]
kind = "local"
dir = "{dir}/objects"

[api]
listen = "{listen}"
jwt_secret = "{jwt_secret}"
admin_key_file = "{dir}/admin.key"

[resource]
listen = "127.0.0.1:0"

[secrets]
key = "{secrets_key}"
"#
    )
}

/// Reads a 32-byte key (hex) from the data directory, creating it (mode 0600) on
/// first start.
pub fn data_key(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        anyhow::ensure!(
            s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()),
            "{} is not a 64-digit hex key",
            path.display()
        );
        return Ok(s);
    }
    let s = nimbus_core::secrets::SecretBox::generate_key();
    write_private(&path, &s)?;
    Ok(s)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // A file that already existed keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Platform {
    /// Starts every service in this process.
    pub async fn start(opts: UpOptions) -> anyhow::Result<Platform> {
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating {}", opts.data_dir.display()))?;
        // Absolute from here on: sandboxes bind paths from another working directory.
        let data_dir = std::fs::canonicalize(&opts.data_dir)
            .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
        let opts = UpOptions { data_dir, ..opts };
        let jwt = data_key(&opts.data_dir, "jwt.secret")?;
        let secrets_key = data_key(&opts.data_dir, "secrets.key")?;
        let text = embedded_config(&opts.data_dir, opts.listen, &jwt, &secrets_key);
        let config = Config::load(&text, opts.overrides)?;
        let db = nimbus_core::db::connect(&config.database).await?;
        let bus = match opts.bus {
            Some(b) => b,
            None => nimbus_core::bus::from_config(&config.bus).await?,
        };
        let store = code_service::store::from_config(&config.objects).await?;
        let (trigger, sd) = shutdown::channel();
        let mut tasks = JoinSet::new();

        let api_listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("binding {}", config.api.listen))?;
        let addr = api_listener.local_addr()?;
        let registry_listener = tokio::net::TcpListener::bind(config.resource.listen).await?;
        let registry_addr = registry_listener.local_addr()?;

        let admin_key = bootstrap_admin(&db, &config).await?;
        // The data path: one in-process node agent behind the router.
        let node_dir = config
            .node
            .work_dir
            .clone()
            .unwrap_or_else(|| opts.data_dir.join("node"));
        let node = node::NodeAgent::new(
            node_config(&config, "local".into(), node_dir)?,
            store.clone(),
            node::logs::LogSink::with_rate(
                db.clone(),
                "local".into(),
                config.node.log_lines_per_sec,
            ),
        )?;
        node.expose_metrics();
        node.logs()
            .set_platform_lines(config.node.platform_log_lines);
        let reaper = node.spawn_reaper();
        let secrets_box = nimbus_core::secrets::SecretBox::from_hex(
            config.secrets.key.as_deref().unwrap_or_default(),
        )?;
        let meter = meter(&config, &db, opts.data_dir.join("usage"))?;
        tasks.spawn(meter.clone().ship(sd.clone()));
        let router = invoker::router::Router::new(
            db.clone(),
            secrets_box,
            node.clone(),
            quotas(&config).await?,
            Some(meter),
        );
        // This process is the only worker of asynchronous invocations.
        for t in data_path_tasks(&config, &router, &db, &bus, true, &sd) {
            tasks.spawn(t);
        }
        let data_path = api_gateway::DataPath { router };
        let state = api_gateway::AppState::new(
            &config,
            db.clone(),
            bus.clone(),
            store.clone(),
            Some(data_path),
        )?;
        // The network and resource services share this process and database: the
        // engine runs their steps in its own transactions. Their consumers still
        // serve what comes through the bus (retries, compensations).
        let network = network_service::NetworkService::new(config.network.clone());
        tasks.spawn(workflow::run(
            config.workflow.clone(),
            db.clone(),
            bus.clone(),
            vec![
                network.clone(),
                std::sync::Arc::new(resource_service::ResourceService),
            ],
            sd.clone(),
        ));
        tasks.spawn(nimbus_core::step::serve(
            code_service::CodeService::new(store.clone()),
            db.clone(),
            bus.clone(),
            4,
            sd.clone(),
        ));
        tasks.spawn(nimbus_core::step::serve(
            network,
            db.clone(),
            bus.clone(),
            4,
            sd.clone(),
        ));
        tasks.spawn(resource_service::run(
            config.resource.clone(),
            internal_token(&config),
            db.clone(),
            bus.clone(),
            registry_listener,
            sd.clone(),
        ));
        // The in-process node registers like any other: provisioned concurrency is
        // reserved on it.
        tasks.spawn(node::grpc::keep_registered(
            node.clone(),
            node::grpc::Registration {
                registry: format!("http://{registry_addr}"),
                advertise: "in-process".into(),
                zone: config.region.zone.clone(),
                memory_mb: node_memory_mb(&config),
                token: internal_token(&config),
            },
            sd.clone(),
        ));
        tasks.spawn(api_gateway::run(state, api_listener, sd));
        Ok(Platform {
            url: format!("http://{addr}"),
            addr,
            registry_addr,
            admin_key,
            config,
            trigger,
            node,
            reaper,
            tasks,
        })
    }

    /// Stops every service and waits for them: the gateway stops accepting at once
    /// and gives the requests in flight `shutdown.grace_s` to finish (their calls
    /// still run on the node), then the node's instances go.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.trigger.fire();
        let mut result = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                result = result.and(Err(e));
            }
        }
        self.reaper.abort();
        self.node.shutdown();
        result
    }

    /// Runs until a service fails or `stop` resolves.
    pub async fn wait(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = stop => {}
            Some(r) = self.tasks.join_next() => {
                r??;
                anyhow::bail!("a service stopped unexpectedly");
            }
        }
        self.stop().await
    }
}

/// The node agent's settings from the configuration.
fn node_config(
    config: &Config,
    node_id: String,
    work_dir: PathBuf,
) -> anyhow::Result<node::NodeConfig> {
    let policy = match config.node.keep_alive_policy.as_str() {
        "fixed" => keepalive::predictor::Policy::Fixed(config.node.keep_alive_ms as i64),
        p => p
            .parse()
            .map_err(|e| anyhow::anyhow!("node.keep_alive_policy: {e}"))?,
    };
    Ok(node::NodeConfig {
        node_id,
        work_dir,
        keep_alive: std::time::Duration::from_millis(config.node.keep_alive_ms),
        policy,
        predictor_bin_ms: config.node.predictor_bin_ms as i64,
        max_instances: config
            .node
            .max_instances
            .unwrap_or((node_memory_mb(config) / 16).max(1) as usize),
        memory_mb: node_memory_mb(config),
        spares: config.node.spares,
        region: config.region.name.clone(),
        zone_cache: config.node.zone_cache.clone(),
        zone_cache_token: zone_cache_token(config),
        sandbox: config.node.sandbox.clone(),
        init: config
            .node
            .init_path
            .clone()
            .map(|p| (p, None))
            .or_else(find_init),
        egress_open_networks: config.node.egress_open_networks.clone(),
        drain: config.shutdown.grace(),
    })
}

/// The token on every internal gRPC call of the region (registry, nodes): derived
/// from the region's secrets key; none without one (a single-machine setup).
pub fn internal_token(config: &Config) -> Option<String> {
    config
        .secrets
        .key
        .as_deref()
        .map(proto::auth::token_from_key)
}

/// The token between the region's nodes and its zone code caches: derived from the
/// region's secrets key; none without one (a single-machine setup).
fn zone_cache_token(config: &Config) -> Option<String> {
    config
        .secrets
        .key
        .as_deref()
        .map(code_service::zone_cache::token_from_key)
}

/// Memory a node offers to functions, MB: `node.memory_mb`, else 80 % of the machine's.
fn node_memory_mb(config: &Config) -> u64 {
    config
        .node
        .memory_mb
        .unwrap_or_else(|| node::grpc::machine_memory_mb().map_or(4096, |m| m * 4 / 5))
}

/// `nimbus-init` beside this executable (or one directory up, for test binaries,
/// which cargo puts in `deps/`); else this executable itself if it is `nimbus`
/// (`cargo run` builds only the binary it runs), as `nimbus __sandbox-init`.
fn find_init() -> Option<(PathBuf, Option<String>)> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let beside = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("nimbus-init"))
        .find(|p| p.is_file());
    match beside {
        Some(p) => Some((p, None)),
        None if exe.file_name().is_some_and(|n| n == "nimbus") => {
            Some((exe, Some(SANDBOX_INIT_ARG.into())))
        }
        None => None,
    }
}

/// The hidden first argument that makes `nimbus` act as `nimbus-init`.
pub const SANDBOX_INIT_ARG: &str = "__sandbox-init";

/// The router's quota counters: Redis leases if `router.redis_url` is set.
/// The prefix of the region's keys in Redis.
fn redis_prefix(config: &Config) -> String {
    config
        .router
        .redis_prefix
        .clone()
        .unwrap_or_else(|| format!("nimbus:{}", config.region.name))
}

/// The meter of this process's router, journaling to `usage.dir` (else `default`).
fn meter(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
    default: PathBuf,
) -> anyhow::Result<std::sync::Arc<invoker::usage::Meter>> {
    use sha2::Digest as _;
    let u = &config.usage;
    let dir = u.dir.clone().unwrap_or(default);
    let mut h = sha2::Sha256::new();
    for part in [
        config.database.url.as_str(),
        config.database.schema.as_deref().unwrap_or_default(),
        &config.region.name,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    invoker::usage::Meter::new(
        db.clone(),
        invoker::usage::MeterSettings {
            dir: dir.clone(),
            destination: hex::encode(&h.finalize()[..6]),
            region: config.region.name.clone(),
            flush: std::time::Duration::from_millis(u.flush_ms.max(10)),
            record_retention: std::time::Duration::from_secs(u.record_retention_h * 3600),
            metrics_retention: std::time::Duration::from_secs(u.metrics_retention_h * 3600),
            cap_refresh: std::time::Duration::from_millis(u.cap_refresh_ms),
            keep_records: u.keep_records,
        },
    )
    .with_context(|| format!("creating the usage journal {}", dir.display()))
}

async fn quotas(config: &Config) -> anyhow::Result<invoker::quota::Quotas> {
    Ok(match &config.router.redis_url {
        Some(url) => invoker::quota::Quotas::redis(url, &redis_prefix(config)).await?,
        None => invoker::quota::Quotas::local(),
    })
}

/// The gateway's data path in its own process: nodes found through the registry.
async fn remote_data_path(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
    bus: &DynBus,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<api_gateway::DataPath>> {
    let Some(registry) = &config.resource.endpoint else {
        tracing::warn!("resource.endpoint is not set: this gateway cannot invoke functions");
        return Ok(None);
    };
    let nodes = invoker::remote::RemoteNodes::connect(
        registry,
        internal_token(config).as_deref(),
        config.router.invoke_stream,
    )
    .await?;
    tokio::spawn(nodes.clone().follow(shutdown.clone()));
    let secrets = nimbus_core::secrets::SecretBox::from_hex(
        config.secrets.key.as_deref().unwrap_or_default(),
    )?;
    let meter = meter(config, db, default_data_dir().join("usage"))?;
    let shipper = meter.clone().ship(shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = shipper.await {
            tracing::error!(error = %e, "the usage shipper stopped");
        }
    });
    let router = invoker::router::Router::new(
        db.clone(),
        secrets,
        nodes,
        quotas(config).await?,
        Some(meter),
    );
    // Every gateway with a data path also works off the shared async queue, schedules
    // timers (each tick fires once in the region) and consumes tenant queues
    // (competing consumers).
    for t in data_path_tasks(config, &router, db, bus, false, shutdown) {
        tokio::spawn(async move {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a data-path task stopped");
            }
        });
    }
    Ok(Some(api_gateway::DataPath { router }))
}

/// What runs beside a router: its cache invalidation, the asynchronous-invocation
/// workers, the timer scheduler, the tenant-queue consumers, the provisioner and
/// the state machines' executor.
/// `sole_worker`: no other process runs invocations (`nimbus up`).
fn data_path_tasks(
    config: &Config,
    router: &std::sync::Arc<invoker::router::Router>,
    db: &sea_orm::DatabaseConnection,
    bus: &DynBus,
    sole_worker: bool,
    shutdown: &Shutdown,
) -> Vec<DataPathTask> {
    vec![
        Box::pin(router.clone().follow_changes(bus.clone(), shutdown.clone())),
        Box::pin(
            invoker::provision::Provisioner::new(
                router.clone(),
                std::time::Duration::from_millis(config.router.provision_interval_ms),
            )
            .run(shutdown.clone()),
        ),
        Box::pin(events::invocations::run_workers(
            router.clone(),
            db.clone(),
            bus.clone(),
            events::invocations::WorkerSettings {
                concurrency: ASYNC_CONCURRENCY,
                sole_worker,
                private_callbacks: config.router.callback_private_networks,
                retention: std::time::Duration::from_secs(config.router.invocation_retention_s),
                dead_letter_retention: std::time::Duration::from_secs(
                    config.router.dead_letter_retention_s,
                ),
            },
            shutdown.clone(),
        )),
        Box::pin(
            events::triggers::TimerScheduler::new(db.clone(), bus.clone()).run(shutdown.clone()),
        ),
        Box::pin(
            events::triggers::QueueConsumers::new(db.clone(), bus.clone()).run(shutdown.clone()),
        ),
        // State machines' executions: every gateway runs them (runs are claimed
        // with leases, so each transition happens once).
        Box::pin(orchestration::Engine::new(db.clone(), router.clone()).run(shutdown.clone())),
    ]
}

/// A task beside the router.
type DataPathTask = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// This machine's host name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Creates the first admin key if none exists, writing it to `api.admin_key_file`.
async fn bootstrap_admin(
    db: &sea_orm::DatabaseConnection,
    config: &Config,
) -> anyhow::Result<Option<String>> {
    let key = api_gateway::handlers::admin::bootstrap_admin(db)
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin key: {e}"))?;
    if let (Some(k), Some(path)) = (&key, &config.api.admin_key_file) {
        write_private(path, &format!("{k}\n"))?;
    }
    Ok(key)
}

/// Runs one service as this process, until `shutdown`.
pub async fn serve(service: &str, config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if service == "code-cache" {
        // Object storage is all it needs: no database, no bus.
        let store = code_service::store::from_config(&config.objects).await?;
        let dir = config
            .code_cache
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("nimbus-code-cache"));
        let cache = code_service::zone_cache::ZoneCache::open(
            dir,
            store,
            config.code_cache.max_mb.saturating_mul(1 << 20),
            zone_cache_token(&config),
        )?;
        let listener = tokio::net::TcpListener::bind(config.code_cache.listen)
            .await
            .with_context(|| format!("binding {}", config.code_cache.listen))?;
        println!(
            "zone {} code cache listening on http://{}",
            config.region.zone,
            listener.local_addr()?
        );
        return code_service::zone_cache::serve(cache, listener, shutdown).await;
    }
    if service == "directory" {
        return serve_directory(config, shutdown).await;
    }
    anyhow::ensure!(
        config.bus.kind != BusKind::Memory,
        "bus.kind = \"memory\" works only inside one process (nimbus up); set bus.kind = \"amqp\""
    );
    anyhow::ensure!(
        !config.database.url.contains(":memory:"),
        "an in-memory database cannot be shared between processes"
    );
    let db = nimbus_core::db::connect(&config.database).await?;
    spawn_ops(&config, service, Some(&db), &shutdown);
    let bus = nimbus_core::bus::from_config(&config.bus).await?;
    match service {
        "api-gateway" => {
            let store = code_service::store::from_config(&config.objects).await?;
            let listener = tokio::net::TcpListener::bind(config.api.listen)
                .await
                .with_context(|| format!("binding {}", config.api.listen))?;
            // With a global directory, the directory makes the first admin key.
            if config.directory.endpoint.is_none()
                && let Some(k) = bootstrap_admin(&db, &config).await?
            {
                println!("admin key (shown once): {k}");
            }
            println!("listening on http://{}", listener.local_addr()?);
            let data_path = remote_data_path(&config, &db, &bus, &shutdown).await?;
            let state = api_gateway::AppState::new(&config, db, bus, store, data_path)?;
            if let Some(url) = &config.router.redis_url {
                state.auth.share_rates(url, &redis_prefix(&config)).await?;
            }
            api_gateway::run(state, listener, shutdown).await
        }
        "workflow" => workflow::run(config.workflow.clone(), db, bus, vec![], shutdown).await,
        "code" => {
            let store = code_service::store::from_config(&config.objects).await?;
            nimbus_core::step::serve(code_service::CodeService::new(store), db, bus, 4, shutdown)
                .await
        }
        "network" => {
            nimbus_core::step::serve(
                network_service::NetworkService::new(config.network.clone()),
                db,
                bus,
                4,
                shutdown,
            )
            .await
        }
        "resource" => {
            let listener = tokio::net::TcpListener::bind(config.resource.listen)
                .await
                .with_context(|| format!("binding {}", config.resource.listen))?;
            resource_service::run(
                config.resource.clone(),
                internal_token(&config),
                db,
                bus,
                listener,
                shutdown,
            )
            .await
        }
        "node" => {
            let registry = config.resource.endpoint.clone().ok_or_else(|| {
                anyhow::anyhow!("a node needs resource.endpoint, the registry's URL")
            })?;
            let store = code_service::store::from_config(&config.objects).await?;
            let listener = tokio::net::TcpListener::bind(config.node.listen)
                .await
                .with_context(|| format!("binding {}", config.node.listen))?;
            let addr = listener.local_addr()?;
            let id = config
                .node
                .id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", hostname(), addr.port()));
            let work_dir = config
                .node
                .work_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("nimbus-node-{id}")));
            let agent = node::NodeAgent::new(
                node_config(&config, id.clone(), work_dir)?,
                store,
                node::logs::LogSink::with_rate(db, id.clone(), config.node.log_lines_per_sec),
            )?;
            agent.expose_metrics();
            agent
                .logs()
                .set_platform_lines(config.node.platform_log_lines);
            let memory_mb = node_memory_mb(&config);
            println!("node {id} listening on {addr}");
            node::grpc::serve(
                agent,
                listener,
                node::grpc::Registration {
                    registry,
                    advertise: config.node.advertise.clone().unwrap_or(addr.to_string()),
                    zone: config.node.zone.clone(),
                    memory_mb,
                    token: internal_token(&config),
                },
                shutdown,
            )
            .await
        }
        other => anyhow::bail!(
            "unknown service '{other}': use one of {}",
            SERVICES.join(", ")
        ),
    }
}

/// The global identity directory (`nimbus serve directory`): its own database
/// (`[database]`), no bus, no object store.
async fn serve_directory(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    use api_gateway::directory::server;
    let db = nimbus_core::db::connect(&config.database).await?;
    let service = server::Service::open(db.clone())
        .await
        .map_err(|e| anyhow::anyhow!("opening the directory: {e}"))?;
    if let Some(k) = server::bootstrap_admin(&service)
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin key: {e}"))?
    {
        if let Some(path) = &config.api.admin_key_file {
            write_private(path, &format!("{k}\n"))?;
        }
        println!("admin key (shown once): {k}");
    }
    let listener = tokio::net::TcpListener::bind(config.directory.listen)
        .await
        .with_context(|| format!("binding {}", config.directory.listen))?;
    println!("directory listening on http://{}", listener.local_addr()?);
    // Ready once it has its admin key and its port.
    spawn_ops(&config, "directory", Some(&db), &shutdown);
    server::serve(service, config.directory.token.clone(), listener, shutdown).await
}

/// Starts the health endpoints (`[ops] listen`) of a service that serves no HTTP API
/// of its own.
fn spawn_ops(
    config: &Config,
    service: &str,
    db: Option<&sea_orm::DatabaseConnection>,
    shutdown: &Shutdown,
) {
    let Some(listen) = config.ops.listen else {
        return;
    };
    if service == "api-gateway" {
        return;
    }
    let name = SERVICES
        .iter()
        .copied()
        .find(|s| *s == service)
        .unwrap_or("nimbus");
    let (db, sd) = (db.cloned(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = ops::serve(listen, name, db, sd).await {
            tracing::error!(error = %e, "the health endpoints stopped");
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// The default data directory: `$NIMBUS_DATA_DIR`, else `./nimbus-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("NIMBUS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nimbus-data"))
}
