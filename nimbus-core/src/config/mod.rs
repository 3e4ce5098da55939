//! The configuration of every Nimbus service: one TOML file, with `NIMBUS_*` overrides.
//!
//! An override names a key by its path, sections joined by a double underscore:
//! `NIMBUS_DATABASE__URL=postgres://…` sets `[database] url`. Variables without `__`
//! (such as the CLI's `NIMBUS_URL`) are not config overrides. Unknown keys are
//! rejected, in the file and in overrides alike, and the whole config is validated
//! before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod data_path;
mod directory;
mod usage;
pub use self::data_path::{NodeSection, RouterSection};
pub use self::directory::DirectoryConfig;
pub use self::usage::{PricingConfig, UsageConfig};

/// A configuration that cannot be used, with a sentence that says why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Everything a Nimbus process may need. Each service reads its own section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which region and zone this process serves.
    #[serde(default)]
    pub region: RegionConfig,
    /// The metadata store.
    pub database: DatabaseConfig,
    /// The control-plane message bus.
    #[serde(default)]
    pub bus: BusConfig,
    /// Where code packages are stored (not needed by `nimbus serve directory`).
    #[serde(default)]
    pub objects: ObjectsConfig,
    /// The REST API gateway.
    #[serde(default)]
    pub api: ApiConfig,
    /// The task engine.
    #[serde(default)]
    pub workflow: WorkflowConfig,
    /// The node registry.
    #[serde(default)]
    pub resource: ResourceConfig,
    /// Tenant networks.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Keys for secrets at rest.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The compute node agent.
    #[serde(default)]
    pub node: NodeSection,
    /// The data-path router (in the gateway).
    #[serde(default)]
    pub router: RouterSection,
    /// The availability zone's code cache (`nimbus serve code-cache`).
    #[serde(default)]
    pub code_cache: CodeCacheConfig,
    /// How every service stops.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The global identity directory (multi-region).
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// Health endpoints of services that serve no HTTP of their own.
    #[serde(default)]
    pub ops: OpsConfig,
    /// Usage metering.
    #[serde(default)]
    pub usage: UsageConfig,
    /// The price sheet for estimated costs.
    #[serde(default)]
    pub pricing: PricingConfig,
    /// The process's own log.
    #[serde(default)]
    pub log: LogConfig,
    /// Span export (OpenTelemetry).
    #[serde(default)]
    pub trace: TraceConfig,
}

/// Where spans go. Off unless an endpoint is set here or in the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` variable (which wins, as OpenTelemetry's SDKs do).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// An OTLP/gRPC collector, e.g. `http://otel-collector:4317`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0–1.0 (default 1.0). A trace that
    /// arrives with a `traceparent` follows its sampled flag.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
}

/// How a process writes its own log (to stderr; `NIMBUS_LOG` sets the levels).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (the default) or `json`: one JSON object per line, with the level,
    /// target, message, fields and the spans (a request's id among them).
    #[serde(default)]
    pub format: LogFormat,
}

/// A log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// Where a `nimbus serve` process without an HTTP API of its own (workflow, code,
/// network, resource, node, directory) answers `/healthz` (it runs) and `/readyz`
/// (its database answers), for orchestrators' probes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// The address, e.g. `0.0.0.0:9090` (`NIMBUS_OPS__LISTEN`). Unset: none.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// How a process stops on SIGTERM (or Ctrl-C): it stops accepting work at once, then
/// gives what is in flight (requests, calls on instances, step deliveries) this long
/// to finish before it exits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// The grace period, seconds (`NIMBUS_SHUTDOWN__GRACE_S`).
    #[serde(default = "default_grace_s")]
    pub grace_s: u64,
}

fn default_grace_s() -> u64 {
    30
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_s: default_grace_s(),
        }
    }
}

impl ShutdownConfig {
    /// The grace period.
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_s)
    }
}

/// The availability zone's code cache: one per zone, between the nodes' own caches
/// and object storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeCacheConfig {
    /// Where it serves `GET /v1/packages/{sha256}`.
    #[serde(default = "default_code_cache_listen")]
    pub listen: SocketAddr,
    /// Where the packages are kept (default: `nimbus-code-cache`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Most package bytes kept, in MB; least recently used go first.
    #[serde(default = "default_code_cache_mb")]
    pub max_mb: u64,
}

fn default_code_cache_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8084))
}
fn default_code_cache_mb() -> u64 {
    10_240
}

impl Default for CodeCacheConfig {
    fn default() -> Self {
        CodeCacheConfig {
            listen: default_code_cache_listen(),
            dir: None,
            max_mb: default_code_cache_mb(),
        }
    }
}

/// Keys for secrets at rest.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// AES-256 key (64 hex digits) sealing function environment variables; the same
    /// on every gateway and node of a region. Set it through `NIMBUS_SECRETS__KEY`.
    #[serde(default)]
    pub key: Option<String>,
}

/// Region and availability zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// The region's name, e.g. `ap-guangzhou`.
    #[serde(default = "default_region")]
    pub name: String,
    /// This process's availability zone.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// The region's public API endpoint, as clients reach it (listed by
    /// `GET /v1/regions`). Unset: the gateway's own address.
    #[serde(default)]
    pub url: Option<String>,
    /// Every availability zone of the region (listed by `GET /v1/regions`).
    /// Empty: this process's zone.
    #[serde(default)]
    pub zones: Vec<String>,
}

fn default_region() -> String {
    "local".into()
}
fn default_zone() -> String {
    "local-a".into()
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            name: default_region(),
            zone: default_zone(),
            url: None,
            zones: Vec::new(),
        }
    }
}

/// The metadata store: `sqlite://PATH?mode=rwc` or `postgres://…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The connection URL.
    pub url: String,
    /// PostgreSQL schema to use (created if missing); lets deployments and tests share a database.
    #[serde(default)]
    pub schema: Option<String>,
    /// Connection pool size.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// Log every SQL statement (at `info`, target `sqlx::query`): what a request
    /// costs the database, statement by statement.
    #[serde(default)]
    pub log_statements: bool,
}

fn default_pool() -> u32 {
    10
}

/// Which bus backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process queues: only within one process (`nimbus up`).
    #[default]
    Memory,
    /// RabbitMQ over AMQP 0-9-1.
    Amqp,
}

/// The control-plane bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// The backend.
    #[serde(default)]
    pub kind: BusKind,
    /// `amqp://user:pass@host:5672/%2f` for the RabbitMQ backend.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of every queue and exchange name, so deployments (and tests) can share a broker.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    "nimbus".into()
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Memory,
            url: None,
            prefix: default_prefix(),
        }
    }
}

/// Which object store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ObjectsKind {
    /// No object store: only for a process that stores no code (the directory); the
    /// default when `[objects]` is absent.
    #[default]
    None,
    /// A local directory.
    Local,
    /// Any S3-compatible server.
    S3,
}

/// The object store that holds code packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    /// The backend.
    pub kind: ObjectsKind,
    /// The directory, for `local`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The bucket, for `s3`.
    #[serde(default)]
    pub bucket: Option<String>,
    /// The endpoint URL, for S3-compatible servers other than AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The S3 region name.
    #[serde(default = "default_s3_region")]
    pub s3_region: String,
    /// Access key id; if absent, the AWS default credential chain applies.
    #[serde(default)]
    pub access_key: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// Path-style addressing (needed by most self-hosted S3 servers).
    #[serde(default = "default_true")]
    pub path_style: bool,
}

impl Default for ObjectsConfig {
    /// No object store (`[objects]` absent): fine for a process that stores no code
    /// (the directory); any other refuses to start.
    fn default() -> Self {
        ObjectsConfig {
            kind: ObjectsKind::None,
            dir: None,
            bucket: None,
            endpoint: None,
            s3_region: default_s3_region(),
            access_key: None,
            secret_key: None,
            path_style: true,
        }
    }
}

fn default_s3_region() -> String {
    "us-east-1".into()
}
fn default_true() -> bool {
    true
}

/// The REST API gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where to listen.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// HS256 secret for JWTs, shared by every gateway of a region (at least 32 bytes).
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// JWT lifetime, at most one hour.
    #[serde(default = "default_jwt_ttl")]
    pub jwt_ttl_s: u64,
    /// Where to write the bootstrap admin key on first start (mode 0600).
    #[serde(default)]
    pub admin_key_file: Option<PathBuf>,
    /// Origins (`https://console.example.com`) whose pages may call the API from a
    /// browser (CORS). Empty: only the gateway's own pages (the console at
    /// `/console`).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Serve the web console at `/console`.
    #[serde(default = "default_true")]
    pub console: bool,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_jwt_ttl() -> u64 {
    3600
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            jwt_secret: None,
            jwt_ttl_s: default_jwt_ttl(),
            admin_key_file: None,
            cors_origins: Vec::new(),
            console: true,
        }
    }
}

/// The task engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    /// Attempts per step before the task fails and compensates.
    #[serde(default = "default_attempts")]
    pub step_max_attempts: u32,
    /// Backoff before retry k is `retry_base_ms × 2^(k-1)`.
    #[serde(default = "default_retry_base")]
    pub retry_base_ms: u64,
    /// A step with no result after this long is sent again (same attempt, so idempotent).
    #[serde(default = "default_step_timeout")]
    pub step_timeout_ms: u64,
    /// How often the outbox relay looks for due messages.
    #[serde(default = "default_relay_interval")]
    pub relay_interval_ms: u64,
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_base() -> u64 {
    200
}
fn default_step_timeout() -> u64 {
    30_000
}
fn default_relay_interval() -> u64 {
    250
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig {
            step_max_attempts: default_attempts(),
            retry_base_ms: default_retry_base(),
            step_timeout_ms: default_step_timeout(),
            relay_interval_ms: default_relay_interval(),
        }
    }
}

/// The node registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Where the registry's gRPC service listens.
    #[serde(default = "default_registry_listen")]
    pub listen: SocketAddr,
    /// How often nodes should heartbeat.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// A node silent for this long is dead.
    #[serde(default = "default_node_timeout")]
    pub node_timeout_ms: u64,
    /// Where other processes reach the registry (`http://host:port`): nodes register
    /// there and gateways find nodes there. Unset in `nimbus up`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

fn default_registry_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_heartbeat() -> u64 {
    2_000
}
fn default_node_timeout() -> u64 {
    10_000
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            listen: default_registry_listen(),
            heartbeat_interval_ms: default_heartbeat(),
            node_timeout_ms: default_node_timeout(),
            endpoint: None,
        }
    }
}

/// Tenant networks and their egress proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The host the egress proxies listen on.
    #[serde(default = "default_proxy_host")]
    pub proxy_host: String,
    /// First port of the proxy port range.
    #[serde(default = "default_proxy_base")]
    pub proxy_port_base: u16,
    /// Number of ports in the range (one per tenant with a network).
    #[serde(default = "default_proxy_count")]
    pub proxy_port_count: u16,
}

fn default_proxy_host() -> String {
    "127.0.0.1".into()
}
fn default_proxy_base() -> u16 {
    20_000
}
fn default_proxy_count() -> u16 {
    10_000
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            proxy_host: default_proxy_host(),
            proxy_port_base: default_proxy_base(),
            proxy_port_count: default_proxy_count(),
        }
    }
}

impl Config {
    /// Parses `toml_text`, applies the `NIMBUS_SECTION__KEY` overrides found in `env`,
    /// and validates the result. `env` is passed in so tests never touch the process
    /// environment.
    pub fn load(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(toml_text).map_err(|e| ConfigError(e.to_string()))?;
        for (key, value) in env {
            let Some(path) = key.strip_prefix("NIMBUS_") else {
                continue;
            };
            if !path.contains("__") {
                continue;
            }
            let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(&mut table, &parts, parse_value(&value))
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: combinations and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(format!(
                "database.url must start with sqlite: or postgres:// (got '{url}')"
            )));
        }
        if let Some(schema) = &self.database.schema
            && (schema.is_empty()
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(ConfigError("database.schema must be [A-Za-z0-9_]+".into()));
        }
        if let Some(bad) = self.api.cors_origins.iter().find(|o| {
            !(o.starts_with("http://") || o.starts_with("https://"))
                || o.ends_with('/')
                || !o.chars().all(|c| c.is_ascii_graphic())
        }) {
            return Err(ConfigError(format!(
                "api.cors_origins: '{bad}' is not an origin (scheme://host[:port], no path)"
            )));
        }
        if let Some(bad) = self
            .node
            .egress_open_networks
            .iter()
            .find(|n| crate::net::Cidr::parse(n).is_none())
        {
            return Err(ConfigError(format!(
                "node.egress_open_networks: '{bad}' is not an address range (e.g. 10.20.0.0/16)"
            )));
        }
        if !(100..=600_000).contains(&self.node.predictor_bin_ms) {
            return Err(ConfigError(
                "node.predictor_bin_ms must be 100..=600000".into(),
            ));
        }
        if self.bus.kind == BusKind::Amqp && self.bus.url.is_none() {
            return Err(ConfigError("bus.kind = \"amqp\" needs bus.url".into()));
        }
        if self.bus.prefix.is_empty()
            || !self
                .bus
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(ConfigError("bus.prefix must be [A-Za-z0-9_.-]+".into()));
        }
        match self.objects.kind {
            ObjectsKind::Local if self.objects.dir.is_none() => {
                return Err(ConfigError(
                    "objects.kind = \"local\" needs objects.dir".into(),
                ));
            }
            ObjectsKind::S3 if self.objects.bucket.is_none() => {
                return Err(ConfigError(
                    "objects.kind = \"s3\" needs objects.bucket".into(),
                ));
            }
            _ => {}
        }
        if self.objects.access_key.is_some() != self.objects.secret_key.is_some() {
            return Err(ConfigError(
                "objects.access_key and objects.secret_key go together".into(),
            ));
        }
        if let Some(secret) = &self.api.jwt_secret
            && secret.len() < 32
        {
            return Err(ConfigError(
                "api.jwt_secret must be at least 32 bytes".into(),
            ));
        }
        if let Some(k) = &self.secrets.key {
            crate::secrets::SecretBox::from_hex(k)
                .map_err(|e| ConfigError(format!("secrets.key: {e}")))?;
        }
        if let Some(u) = &self.router.redis_url
            && !(u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(ConfigError(format!(
                "router.redis_url must start with redis:// (got '{u}')"
            )));
        }
        if let Some(u) = &self.trace.otlp_endpoint
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "trace.otlp_endpoint must be an http:// URL (got '{u}')"
            )));
        }
        if let Some(r) = self.trace.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(ConfigError("trace.sample_ratio must be 0.0..=1.0".into()));
        }
        if let Some(u) = &self.resource.endpoint
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "resource.endpoint must be an http:// URL (got '{u}')"
            )));
        }
        if let Some(u) = &self.node.zone_cache
            && !u.starts_with("http://")
        {
            return Err(ConfigError(format!(
                "node.zone_cache must be an http:// URL (got '{u}')"
            )));
        }
        if !(100..=300_000).contains(&self.router.provision_interval_ms) {
            return Err(ConfigError(
                "router.provision_interval_ms must be 100..=300000".into(),
            ));
        }
        if self.code_cache.max_mb == 0 {
            return Err(ConfigError("code_cache.max_mb must be positive".into()));
        }
        if self.node.memory_mb == Some(0) || self.node.max_instances == Some(0) {
            return Err(ConfigError(
                "node.memory_mb and node.max_instances must be positive".into(),
            ));
        }
        if self.api.jwt_ttl_s == 0 || self.api.jwt_ttl_s > 3600 {
            return Err(ConfigError("api.jwt_ttl_s must be 1..=3600".into()));
        }
        if self.workflow.step_max_attempts == 0 {
            return Err(ConfigError(
                "workflow.step_max_attempts must be at least 1".into(),
            ));
        }
        if self.network.proxy_port_count == 0 {
            return Err(ConfigError(
                "network.proxy_port_count must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Reads an override's value as a TOML literal (number, bool, array…), else as a string.
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("'{p}' is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [database]
        url = "sqlite::memory:"
        [objects]
        kind = "local"
        dir = "/tmp/x"
    "#;

    #[test]
    fn loads_with_defaults() {
        let c = Config::load(BASE, []).unwrap();
        assert_eq!(c.bus.kind, BusKind::Memory);
        assert_eq!(c.api.jwt_ttl_s, 3600);
    }

    #[test]
    fn env_overrides_and_ignores_cli_vars() {
        let env = [
            ("NIMBUS_BUS__KIND".to_string(), "amqp".to_string()),
            ("NIMBUS_BUS__URL".to_string(), "amqp://x".to_string()),
            (
                "NIMBUS_WORKFLOW__STEP_MAX_ATTEMPTS".to_string(),
                "7".to_string(),
            ),
            ("NIMBUS_URL".to_string(), "http://ignored".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::load(BASE, env).unwrap();
        assert_eq!(c.bus.kind, BusKind::Amqp);
        assert_eq!(c.workflow.step_max_attempts, 7);
    }

    #[test]
    fn rejects_unknown_keys() {
        let e = Config::load(&format!("{BASE}\n[api]\nlisten_addr = \"x\""), []).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let env = [("NIMBUS_API__BOGUS".to_string(), "1".to_string())];
        assert!(Config::load(BASE, env).is_err());
    }

    #[test]
    fn rejects_bad_combinations() {
        let env = [("NIMBUS_BUS__KIND".to_string(), "amqp".to_string())];
        assert!(
            Config::load(BASE, env)
                .unwrap_err()
                .to_string()
                .contains("bus.url")
        );
        let env = [("NIMBUS_API__JWT_SECRET".to_string(), "short".to_string())];
        assert!(Config::load(BASE, env).is_err());
    }
}
