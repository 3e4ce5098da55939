//! The data path's sections: the router (in every gateway) and the compute node.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The data-path router.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// Redis shared by every router of the region (`redis://host:port/db`): concurrency
    /// quotas are leased there. Unset, each router counts alone, which is exact only
    /// with one router (as in `nimbus up`).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of the router's Redis keys, so regions (and tests) can share a server.
    #[serde(default)]
    pub redis_prefix: Option<String>,
    /// How often the router renews provisioned concurrency and scheduled warm-ups on
    /// the nodes; a node keeps them for three periods without news.
    #[serde(default = "default_provision_interval")]
    pub provision_interval_ms: u64,
    /// Let asynchronous invocations' `callback_url` reach loopback and private
    /// networks. Off: callbacks go to public addresses only, so a tenant's URL cannot
    /// reach the platform's own services or the cloud's metadata endpoint.
    #[serde(default)]
    pub callback_private_networks: bool,
    /// Finished asynchronous invocations (and timer-tick records) are deleted this
    /// many seconds after they end. Default 7 days.
    #[serde(default = "default_invocation_retention")]
    pub invocation_retention_s: u64,
    /// Dead letters are deleted this many seconds after they died. Default 14 days.
    #[serde(default = "default_dead_letter_retention")]
    pub dead_letter_retention_s: u64,
    /// Send calls whose event is at most 256 KiB as frames on one long-lived
    /// `InvokeStream` per node instead of one unary gRPC call each. On by default:
    /// it costs the gateway and the node about a quarter less CPU per call
    /// (`docs/benchmarks.md`, "Calls on one stream per node"). `false` sends every
    /// call unary.
    #[serde(default = "default_invoke_stream")]
    pub invoke_stream: bool,
}

fn default_invocation_retention() -> u64 {
    7 * 24 * 3600
}

fn default_dead_letter_retention() -> u64 {
    14 * 24 * 3600
}

fn default_invoke_stream() -> bool {
    true
}

fn default_provision_interval() -> u64 {
    5_000
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            redis_url: None,
            redis_prefix: None,
            provision_interval_ms: default_provision_interval(),
            callback_private_networks: false,
            invocation_retention_s: default_invocation_retention(),
            dead_letter_retention_s: default_dead_letter_retention(),
            invoke_stream: default_invoke_stream(),
        }
    }
}

/// The compute node agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Where the code cache and runtime files live (default: `<data-dir>/node`).
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// An idle instance is destroyed after this long: scale to zero.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_ms: u64,
    /// How idle instances are kept and pre-warmed: `hybrid` (the predictor: a
    /// histogram of idle times per function and concurrency level; `hybrid:5m` sets
    /// what one cold start is worth in idle time), `fixed` (`keep_alive_ms` after each
    /// call), `fixed:10m`, or `none`.
    #[serde(default = "default_keep_alive_policy")]
    pub keep_alive_policy: String,
    /// The predictor's histogram bin width, ms (its time resolution).
    #[serde(default = "default_predictor_bin_ms")]
    pub predictor_bin_ms: u64,
    /// Most instances at once on the node, whatever their memory. Unset: one per
    /// 16 MB of `memory_mb`. Within it, instances are admitted by the memory idle
    /// instances are measured to use (their cgroups), up to `memory_mb`.
    #[serde(default)]
    pub max_instances: Option<usize>,
    /// Spare instances kept started per process runtime (python3, nodejs, and
    /// provided in a sandbox), ready to become any function: a cold start skips the
    /// sandbox and interpreter start. Default 1; 0 turns them off (each used spare is
    /// replaced at once, which costs CPU on a saturated node).
    #[serde(default = "default_spares")]
    pub spares: usize,
    /// `namespaces` (the default: every instance in a sandbox `nimbus-init` builds;
    /// a node that cannot build one starts no process instance) or `none` (plain
    /// processes: trusted code only). `auto` and `bwrap` are older names of `namespaces`.
    #[serde(default = "default_sandbox")]
    pub sandbox: String,
    /// This node's id in the registry (`nimbus serve node`; default: the host name and
    /// the listen port).
    #[serde(default)]
    pub id: Option<String>,
    /// Where the node's gRPC service listens (`nimbus serve node`).
    #[serde(default = "default_node_listen")]
    pub listen: SocketAddr,
    /// The address routers dial, if not the listen address (e.g. behind NAT, or when
    /// listening on 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The availability zone, for placement.
    #[serde(default)]
    pub zone: String,
    /// The zone's code cache (`http://host:port` of `nimbus serve code-cache`): code
    /// is fetched there before object storage. Unset: straight to object storage.
    #[serde(default)]
    pub zone_cache: Option<String>,
    /// Memory offered to functions, in MB (default: 80 % of the machine's).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// The `nimbus-init` binary (default: beside the `nimbus` binary).
    #[serde(default)]
    pub init_path: Option<PathBuf>,
    /// Non-public address ranges (CIDRs, e.g. a tenant-facing service network) that
    /// functions may reach when their tenant's egress rules allow it. Everything else
    /// that is not on the public internet — loopback, private, link-local and
    /// metadata, CGNAT, multicast — is closed to functions whatever the rules say.
    #[serde(default)]
    pub egress_open_networks: Vec<String>,
    /// Output lines each tenant may log per second from this node (bursts of five
    /// seconds' worth); beyond, its lines are dropped and counted in its log.
    #[serde(default = "default_log_lines_per_sec")]
    pub log_lines_per_sec: u32,
    /// Frame each call's output with the platform's START, END and REPORT lines, as
    /// Lambda does (they count toward `log_lines_per_sec`). Off, as Lambda's system
    /// log level WARN: the function's own lines only.
    #[serde(default = "default_true")]
    pub platform_log_lines: bool,
}

fn default_true() -> bool {
    true
}

fn default_log_lines_per_sec() -> u32 {
    1_000
}

fn default_node_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8082))
}

fn default_sandbox() -> String {
    "namespaces".into()
}

fn default_predictor_bin_ms() -> u64 {
    10_000
}

fn default_keep_alive_policy() -> String {
    "hybrid".into()
}

fn default_keep_alive() -> u64 {
    600_000
}
fn default_spares() -> usize {
    1
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            work_dir: None,
            keep_alive_ms: default_keep_alive(),
            keep_alive_policy: default_keep_alive_policy(),
            predictor_bin_ms: default_predictor_bin_ms(),
            max_instances: None,
            spares: default_spares(),
            sandbox: default_sandbox(),
            id: None,
            listen: default_node_listen(),
            advertise: None,
            zone: String::new(),
            zone_cache: None,
            memory_mb: None,
            init_path: None,
            egress_open_networks: Vec::new(),
            log_lines_per_sec: default_log_lines_per_sec(),
            platform_log_lines: true,
        }
    }
}
