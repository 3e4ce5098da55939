//! What every request handler shares: the gateway's state.

use std::sync::Arc;
use std::time::Duration;

use code_service::DynStore;
use nimbus_core::bus::DynBus;
use nimbus_core::config::{Config, NetworkConfig, RegionConfig};
use nimbus_core::db::{tenant, trigger};
use sea_orm::DatabaseConnection;

use crate::auth::Auth;
use crate::directory::replica::{Identity, Replica, ThisRegion};
use crate::watchers;

/// http trigger routes, cached: (tenant name, path) → the tenant and its trigger.
pub type RouteCache =
    moka::future::Cache<(String, String), Option<Arc<(tenant::Model, trigger::Model)>>>;

/// Everything a request handler may use.
pub struct AppState {
    /// The metadata store.
    pub db: DatabaseConnection,
    /// The control-plane bus (change events; the outbox publishes here).
    pub bus: DynBus,
    /// Object storage, for staging uploads.
    pub store: DynStore,
    /// Authentication, caches and rate limits.
    pub auth: Auth,
    /// The region this gateway serves.
    pub region: RegionConfig,
    /// Network defaults.
    pub network: NetworkConfig,
    /// The price sheet for usage's estimated costs.
    pub pricing: nimbus_core::config::PricingConfig,
    /// Seals function environment variables at rest.
    pub secrets: nimbus_core::secrets::SecretBox,
    /// The data path, when this process has one.
    pub data_path: Option<DataPath>,
    /// http trigger routes: (tenant name, path) → the tenant and the trigger, or
    /// nothing. Dropped by function and tenant change events.
    pub routes: RouteCache,
    /// The bus's name prefix (tenant queues are named after it on the broker).
    pub bus_prefix: String,
    /// (tenant id, queue) pairs known to be recorded against the tenant's
    /// `max_queues`, so a send reads the database only for a new queue.
    pub known_queues: moka::sync::Cache<(String, String), ()>,
    /// Open invocation watches, bounded per tenant and per gateway.
    pub watchers: Arc<watchers::Watchers>,
    /// Open task waits (`GET /v1/tasks/{id}?wait=`), bounded the same way.
    pub task_waiters: Arc<watchers::Watchers>,
    /// Functions changed, as the bus announces them (every task's end is one):
    /// wakes the task waits. `None` after a gap in the announcements.
    pub function_changes: tokio::sync::broadcast::Sender<Option<Arc<FunctionKey>>>,
    /// Turns true when shutdown begins: endless streams end then.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// How long in-flight requests get to finish at shutdown.
    pub drain: Duration,
    /// Where identity writes go: this region's database, or the global directory.
    pub identity: Identity,
    /// Seals each key's AWS secret: the directory's identity key with a global
    /// directory (every region opens it), else the region's secrets key.
    pub identity_box: nimbus_core::secrets::SecretBox,
    /// Origins allowed to call the API from a browser.
    pub cors_origins: Vec<String>,
    /// Whether `/console` is served.
    pub console: bool,
}

/// A function, as change events name it: (tenant id, function name).
pub type FunctionKey = (String, String);

/// The data path a gateway forwards invocations to.
#[derive(Clone)]
pub struct DataPath {
    /// Resolves and places calls.
    pub router: Arc<invoker::router::Router>,
}

impl AppState {
    /// State for a gateway configured by `config`, which must set `api.jwt_secret`
    /// and `secrets.key`.
    pub fn new(
        config: &Config,
        db: DatabaseConnection,
        bus: DynBus,
        store: DynStore,
        data_path: Option<DataPath>,
    ) -> anyhow::Result<Arc<Self>> {
        let jwt =
            config.api.jwt_secret.as_deref().ok_or_else(|| {
                anyhow::anyhow!("api.jwt_secret is not set (NIMBUS_API__JWT_SECRET)")
            })?;
        let key = config.secrets.key.as_deref().ok_or_else(|| {
            anyhow::anyhow!("secrets.key is not set (NIMBUS_SECRETS__KEY, 64 hex digits)")
        })?;
        let secrets = nimbus_core::secrets::SecretBox::from_hex(key)?;
        let (identity, identity_box) = match &config.directory.endpoint {
            None => (Identity::Local, secrets.clone()),
            Some(endpoint) => {
                let idk = config.directory.identity_key.as_deref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "directory.identity_key is not set (NIMBUS_DIRECTORY__IDENTITY_KEY, 64 hex \
                         digits, the same in every region)"
                    )
                })?;
                let replica = Replica::new(
                    db.clone(),
                    endpoint,
                    config.directory.token.as_deref(),
                    ThisRegion {
                        name: config.region.name.clone(),
                        url: config.region.url.clone(),
                        zones: config.region.zones.clone(),
                    },
                    Duration::from_millis(config.directory.write_timeout_ms),
                )?;
                (
                    Identity::Directory(replica),
                    nimbus_core::secrets::SecretBox::from_hex(idk)?,
                )
            }
        };
        Ok(Arc::new(AppState {
            db,
            bus,
            store,
            auth: Auth::new(jwt.as_bytes(), Duration::from_secs(config.api.jwt_ttl_s)),
            region: config.region.clone(),
            network: config.network.clone(),
            pricing: config.pricing.clone(),
            bus_prefix: config.bus.prefix.clone(),
            routes: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            secrets,
            identity,
            identity_box,
            cors_origins: config.api.cors_origins.clone(),
            console: config.api.console,
            data_path,
            watchers: Arc::default(),
            task_waiters: Arc::default(),
            function_changes: tokio::sync::broadcast::Sender::new(1024),
            drain: config.shutdown.grace(),
            stopping: tokio::sync::watch::Sender::new(false),
            known_queues: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }))
    }
}
