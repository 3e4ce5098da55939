//! Events: everything that runs a function later, or because something happened.
//!
//! - [`invocations`]: asynchronous invocations — the durable queue, the workers
//!   (fair across tenants), retries, dead letters and destinations.
//! - [`callbacks`]: an async invocation's outcome POSTed to public addresses only.
//! - [`triggers`]: http, timer, storage and queue triggers, one file per kind.
//!
//! Every event ends up as a call through the router (`invoker`).

pub mod callbacks;
pub mod invocations;
pub mod metrics;
pub mod triggers;
pub mod view;
