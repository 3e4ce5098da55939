//! The data path.
//!
//! - [`node`]: the node agent — instance pools, the Lambda Runtime API per instance,
//!   the node-local code cache, the python3/nodejs bootstraps and `provided`.
//! - [`router`]: resolves `{tenant, function, qualifier}` through a metadata cache
//!   invalidated by change events, picks a version by alias weight, enforces the
//!   concurrency quotas, and hands the call to a node.
//! - [`provision`]: keeps provisioned concurrency and scheduled warm-ups on the nodes.
//! - [`callbacks`]: an async invocation's outcome POSTed to public addresses only.

pub mod autoscaler;
pub mod callbacks;
pub mod invocations;
pub mod node;
pub mod predictor;
pub mod provision;
pub mod quota;
pub mod remote;
pub mod router;
pub mod triggers;
