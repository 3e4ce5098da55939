//! The contract between the router and the nodes: the [`Nodes`] trait the router
//! places calls through, what a call returns, why it fails, and the key of a warm
//! pool. The router (`invoker`) and the node agent (`node`) both depend on this, and
//! neither on the other.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use proto::node::FunctionRef;

/// Largest gRPC message between routers and nodes: a 6 MiB event or result, with
/// room for the envelope.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Where calls run.
#[async_trait]
pub trait Nodes: Send + Sync + 'static {
    /// Runs one call somewhere.
    async fn invoke(
        &self,
        f: FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError>;

    /// Kills the idle instances of a function everywhere (it was deleted).
    async fn drain(&self, tenant_id: &str, function: &str);

    /// Keeps at least `instances` of `f` alive on `node` until `lease` from now
    /// (provisioned concurrency, scheduled warm-ups); see `node::NodeAgent::provision`.
    /// Returns the instances alive there.
    async fn provision(
        &self,
        node: &str,
        f: FunctionRef,
        instances: u32,
        lease: Duration,
    ) -> Result<u32, NodeError>;

    /// The node that `f`'s calls go to first when none is warm, if any is up.
    fn home(&self, f: &FunctionRef) -> Option<String>;
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
    /// What the function printed during the call (its last [`LOG_TAIL`] bytes), when
    /// the call asked (`FunctionRef::tail_log`).
    pub log_tail: Option<Bytes>,
    /// How long the function ran for this call (its handler, from the event handed
    /// over to the answer; init not included), in microseconds: what is billed.
    pub duration_us: u64,
}

/// What a call is billed, ms: the handler's run plus its init, rounded up to the
/// millisecond (as Lambda bills), at least 1 ms. The node prints it in the call's
/// `REPORT` line and the router meters it: the same number.
pub fn billed_ms(duration_us: u64, init_ms: u32) -> u64 {
    (duration_us + init_ms as u64 * 1000).div_ceil(1000).max(1)
}

/// The most output a call with `tail_log` gets back (Lambda's 4 KiB).
pub const LOG_TAIL: usize = 4096;

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
