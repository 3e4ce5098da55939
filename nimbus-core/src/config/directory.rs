//! The global identity directory, as a region's gateways and the directory itself see it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The global directory of tenants, API keys, roles, limits and regions.
///
/// In a region's gateway, `endpoint` set means identity is global: admin writes go to
/// the directory, and the gateway authenticates from the region's replica, which it
/// keeps up to date by following the directory's change log. Unset (the default, and
/// `nimbus up`): the region's own database is the directory.
///
/// In `nimbus serve directory`, `listen` is where it serves, and `[database]` is the
/// directory's own database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Where the directory serves its gRPC API (`nimbus serve directory`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where gateways reach it (`http://host:port`). Unset: no global directory.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The shared secret on every call to the directory (`NIMBUS_DIRECTORY__TOKEN`);
    /// the same on the directory and every region's gateways.
    #[serde(default)]
    pub token: Option<String>,
    /// AES-256 key (64 hex digits) that seals each API key's AWS secret access key in
    /// the directory, so that every region can check Signature V4 with it; the same on
    /// every region's gateways (`NIMBUS_DIRECTORY__IDENTITY_KEY`). The directory itself
    /// never needs it: it stores what gateways sealed.
    #[serde(default)]
    pub identity_key: Option<String>,
    /// How long an admin write waits for the directory before it is refused (503).
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8086))
}
fn default_write_timeout_ms() -> u64 {
    5_000
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            listen: default_listen(),
            endpoint: None,
            token: None,
            identity_key: None,
            write_timeout_ms: default_write_timeout_ms(),
        }
    }
}
