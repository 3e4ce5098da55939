//! The small shared core of Nimbus.
//!
//! - [`model`]: domain types and their validation (names, runtimes, limits, roles).
//! - [`error`]: the domain error every service returns; the gateway alone maps it to HTTP.
//! - [`config`]: the one configuration file (TOML + `NIMBUS_*` overrides), validated
//!   before any port is bound.
//! - [`db`]: the metadata schema (sea-orm entities) and its migrations, the same on
//!   SQLite and PostgreSQL.
//! - [`bus`]: the message-bus trait with an in-process backend and a RabbitMQ backend.
//! - [`net`]: which addresses are the platform's inside, closed to tenants.
//! - [`secrets`]: sealing of secrets at rest (function environment variables).
//! - [`shutdown`]: the shutdown signal handed to every service's `run`.

pub mod bus;
pub mod config;
pub mod db;
pub mod error;
pub mod metrics;
pub mod model;
pub mod net;
pub mod nodes;
pub mod secrets;
pub mod shutdown;
pub mod step;
pub mod trace;

pub use error::{Error, Result};

/// The JSON Schema of spec files (`nimbus apply -f`), as the gateway publishes it at
/// `/schemas/nimbus-spec.json` and the CLI checks specs with it.
pub const SPEC_SCHEMA: &str = include_str!("../schemas/nimbus-spec.json");

/// Milliseconds since the Unix epoch: the one time representation in the metadata store.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats epoch milliseconds as RFC 3339, as the API shows times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses RFC 3339 into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A new time-ordered unique id (UUID v7, simple form).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
