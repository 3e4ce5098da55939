//! The data path.
//!
//! - [`router`]: resolves `{tenant, function, qualifier}` through a metadata cache
//!   invalidated by change events, picks a version by alias weight, enforces the
//!   concurrency quotas, and hands the call to a node through the
//!   [`nimbus_core::nodes::Nodes`] contract (the node agent is the `node` crate;
//!   [`remote`] reaches nodes over gRPC).
//! - [`provision`]: keeps provisioned concurrency and scheduled warm-ups on the nodes.
//! - [`remote`]: the nodes of the region over gRPC, and placement among them.
//! - [`quota`]: concurrency quotas, local or shared through Redis.
//! - [`metrics`]: per-function invocations, durations and calls running.
//! - [`usage`]: a usage record for every call (journaled, shipped exactly once) and
//!   the tenants' monthly caps.
//!
//! Asynchronous invocations and triggers (the `events` crate) call through the router.

mod journal;
pub mod metrics;
pub mod provision;
pub mod quota;
pub mod remote;
pub mod router;
pub mod usage;
mod usage_minutes;
mod usage_record;
mod usage_store;
