//! The node agent as its own process: the `nimbus.node.Node` gRPC service that
//! routers call, and the registration and heartbeats that tell the registry (and
//! through it every router) where the node is and what it has warm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::shutdown::Shutdown;
use proto::node::node_server::NodeServer;
use proto::node::registry_client::RegistryClient;
use proto::node::{
    DrainReply, DrainRequest, FunctionRef, HeartbeatRequest, InvokeFrame, InvokeReply,
    InvokeRequest, InvokeResult, NodeCapacity, PrewarmReply, PrewarmRequest, RegisterRequest,
    StatusReply, StatusRequest,
};
use tonic::{Request, Response, Status};

use nimbus_core::nodes::{MAX_MESSAGE, NodeError};

use crate::NodeAgent;

/// The gRPC face of a node agent.
pub struct NodeService {
    agent: Arc<NodeAgent>,
    capacity: NodeCapacity,
    shutdown: Shutdown,
}

/// Calls in flight on one invoke stream, at most. Past it a frame is refused as a
/// full node refuses one (RESOURCE_EXHAUSTED), and the router tries another node.
const STREAM_CALLS: usize = 4096;
/// Replies buffered for one stream's writer.
const STREAM_REPLIES: usize = 256;

/// One call, on a unary request or a stream's frame. `parent` is the caller's
/// trace context.
async fn call(
    agent: &NodeAgent,
    req: InvokeRequest,
    parent: Option<nimbus_core::trace::TraceContext>,
) -> Result<InvokeReply, Status> {
    let mut f = function(req.function)?;
    let span = nimbus_core::span_if_exporting!(
        "node invoke",
        otel.kind = "server",
        function = %f.function_name,
        version = %f.version,
        request_id = %req.request_id,
    );
    // The function's trace context is this span's child.
    f.traceparent = nimbus_core::trace::enter(&span, parent).traceparent();
    let o = tracing::Instrument::instrument(agent.invoke(&f, req.event, &req.request_id), span)
        .await
        .map_err(to_status)?;
    Ok(InvokeReply {
        result: o.result,
        function_error: o.function_error.unwrap_or_default(),
        cold_start: o.cold_start,
        init_ms: o.init_ms,
        idle: o.idle_after,
        log_tail: o.log_tail.unwrap_or_default(),
        duration_us: o.duration_us,
    })
}

fn result(id: u64, r: Result<InvokeReply, Status>) -> InvokeResult {
    match r {
        Ok(reply) => InvokeResult {
            id,
            code: 0,
            message: String::new(),
            reply: Some(reply),
        },
        Err(s) => InvokeResult {
            id,
            code: s.code() as u32,
            message: s.message().to_string(),
            reply: None,
        },
    }
}

/// Runs one invoke stream: each frame's call on its own task, its result sent back
/// when it ends. A cancel frame drops its call, as a reset stream drops a unary
/// call; so does a broken stream, for all of them.
///
/// On shutdown it refuses new frames (RESOURCE_EXHAUSTED: the router tries another
/// node), lets the calls in flight finish, then ends the stream cleanly. So a clean
/// end tells the router that every frame the node did not answer never started.
async fn serve_stream(
    agent: Arc<NodeAgent>,
    mut frames: tonic::Streaming<InvokeFrame>,
    tx: tokio::sync::mpsc::Sender<Result<InvokeResult, Status>>,
    mut shutdown: Shutdown,
) {
    let mut running = tokio::task::JoinSet::new();
    let mut calls: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            frame = frames.message() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    // The router closed its side, or the connection broke: drop
                    // every call (dropping `running` aborts them).
                    Ok(None) | Err(_) => return,
                };
                let id = frame.id;
                let Some(req) = frame.call else {
                    if let Some(h) = calls.remove(&id) {
                        h.abort();
                    }
                    continue;
                };
                if stopping || calls.len() >= STREAM_CALLS || calls.contains_key(&id) {
                    let refusal = if calls.contains_key(&id) {
                        Status::invalid_argument("a call with this id is in flight")
                    } else {
                        to_status(NodeError::Capacity)
                    };
                    if tx.send(Ok(result(id, Err(refusal)))).await.is_err() {
                        return;
                    }
                    continue;
                }
                let parent = req
                    .function
                    .as_ref()
                    .and_then(|f| nimbus_core::trace::TraceContext::parse(&f.traceparent));
                let (agent, tx) = (agent.clone(), tx.clone());
                let h = running.spawn(async move {
                    let r = call(&agent, req, parent).await;
                    // The router may be gone; the call is over either way.
                    let _ = tx.send(Ok(result(id, r))).await;
                    id
                });
                calls.insert(id, h);
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok(id) => {
                        calls.remove(&id);
                    }
                    // A call that panicked (a canceled one is no longer listed):
                    // its caller gets an error instead of waiting for its deadline.
                    Err(e) => {
                        let id = calls.iter().find(|(_, h)| h.id() == e.id()).map(|(id, _)| *id);
                        if let Some(id) = id {
                            calls.remove(&id);
                            let failed = Status::internal("the call failed on the node");
                            if tx.send(Ok(result(id, Err(failed)))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if stopping && running.is_empty() {
                    return;
                }
            }
            _ = shutdown.wait(), if !stopping => {
                stopping = true;
                if running.is_empty() {
                    return;
                }
            }
        }
    }
}

fn function(f: Option<FunctionRef>) -> Result<FunctionRef, Status> {
    let f = f.ok_or_else(|| Status::invalid_argument("function is required"))?;
    if f.tenant_id.is_empty() || f.function_name.is_empty() || f.code_sha256.is_empty() {
        return Err(Status::invalid_argument(
            "function needs tenant_id, function_name and code_sha256",
        ));
    }
    if f.timeout_ms == 0 || f.memory_mb == 0 {
        return Err(Status::invalid_argument(
            "function needs a timeout and a memory size",
        ));
    }
    Ok(f)
}

/// The status a node error travels as (the router maps it back).
pub fn to_status(e: NodeError) -> Status {
    match e {
        NodeError::Timeout(ms) => Status::deadline_exceeded(ms.to_string()),
        NodeError::Capacity => Status::resource_exhausted("no room for another instance"),
        NodeError::Init(m) => Status::failed_precondition(m),
        NodeError::Internal(e) => Status::internal(format!("{e:#}")),
    }
}

#[tonic::async_trait]
impl proto::node::node_server::Node for NodeService {
    async fn invoke(&self, req: Request<InvokeRequest>) -> Result<Response<InvokeReply>, Status> {
        let parent = req
            .metadata()
            .get(nimbus_core::trace::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(nimbus_core::trace::TraceContext::parse);
        call(&self.agent, req.into_inner(), parent)
            .await
            .map(Response::new)
    }

    type InvokeStreamStream = tokio_stream::wrappers::ReceiverStream<Result<InvokeResult, Status>>;

    async fn invoke_stream(
        &self,
        req: Request<tonic::Streaming<InvokeFrame>>,
    ) -> Result<Response<Self::InvokeStreamStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_REPLIES);
        tokio::spawn(serve_stream(
            self.agent.clone(),
            req.into_inner(),
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn prewarm(
        &self,
        req: Request<PrewarmRequest>,
    ) -> Result<Response<PrewarmReply>, Status> {
        let req = req.into_inner();
        let f = function(req.function)?;
        let n = if req.lease_ms > 0 {
            self.agent
                .provision(
                    &f,
                    req.instances as usize,
                    std::time::Duration::from_millis(req.lease_ms as u64),
                )
                .await
        } else {
            self.agent.prewarm(&f, req.instances as usize).await
        }
        .map_err(to_status)?;
        Ok(Response::new(PrewarmReply { warm: n as u32 }))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        let req = req.into_inner();
        let version = Some(req.version.as_str()).filter(|v| !v.is_empty());
        let n = self
            .agent
            .drain(&req.tenant_id, &req.function_name, version);
        Ok(Response::new(DrainReply { drained: n as u32 }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let (memory_mb, instance_slots) = self.agent.used();
        let fetches = self.agent.code_fetches();
        let counters = self.agent.counters();
        let tier = |(count, total_us)| proto::node::TierFetches { count, total_us };
        Ok(Response::new(StatusReply {
            zone_fetches: Some(tier(fetches.zone)),
            object_fetches: Some(tier(fetches.object)),
            zone_failures: fetches.zone_failures,
            cold_starts: counters.cold_starts,
            warm_starts: counters.warm_starts,
            idle_instance_seconds: counters.idle_instance_seconds,
            node_id: self.agent.config().node_id.clone(),
            capacity: Some(self.capacity),
            used: Some(NodeCapacity {
                memory_mb,
                instance_slots,
            }),
            instances: self.agent.instances() as u32,
            warm: self.agent.pools(),
            cached_code: self.agent.cached_code(),
        }))
    }
}

/// How a node presents itself to the registry.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The registry's URL (`http://host:port`).
    pub registry: String,
    /// The address routers dial.
    pub advertise: String,
    /// The zone.
    pub zone: String,
    /// Memory offered to functions, MB.
    pub memory_mb: u64,
    /// The region's internal token: sent to the registry, and required of every
    /// call to this node.
    pub token: Option<String>,
}

/// The machine's memory, MB, from /proc/meminfo.
pub fn machine_memory_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Serves the node on `listener` and keeps it registered, until shutdown; then
/// stops taking calls and kills the instances.
pub async fn serve(
    agent: Arc<NodeAgent>,
    listener: tokio::net::TcpListener,
    reg: Registration,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let capacity = NodeCapacity {
        memory_mb: reg.memory_mb,
        instance_slots: agent.config().max_instances as u32,
    };
    let require = proto::auth::RequireToken::new(reg.token.as_deref());
    let heartbeats = tokio::spawn(keep_registered(agent.clone(), reg, shutdown.clone()));
    let reaper = agent.spawn_reaper();
    let service = tonic::service::interceptor::InterceptedService::new(
        NodeServer::new(NodeService {
            agent: agent.clone(),
            capacity,
            shutdown: shutdown.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE),
        require,
    );
    let mut s = shutdown.clone();
    tracing::info!(addr = %listener.local_addr()?, node = %agent.config().node_id, "node agent listening");
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(proto::incoming(listener), async move { s.wait().await });
    // On shutdown the server takes no new connections and waits for the calls in
    // flight, for the grace period at most.
    let drain = agent.config().drain;
    let mut s = shutdown.clone();
    let served = tokio::select! {
        r = served => r,
        _ = async move {
            s.wait().await;
            tracing::info!(grace_s = drain.as_secs(), "shutdown: draining calls in flight");
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!("shutdown: calls still running at the end of the grace period");
            Ok(())
        }
    };
    heartbeats.abort();
    reaper.abort();
    agent.shutdown();
    served?;
    Ok(())
}

/// Registers, then heartbeats until shutdown; registers again whenever the registry
/// has forgotten the node (it restarted, or declared the node dead after a pause).
pub async fn keep_registered(
    agent: Arc<NodeAgent>,
    reg: Registration,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let capacity = NodeCapacity {
        memory_mb: reg.memory_mb,
        instance_slots: agent.config().max_instances as u32,
    };
    let channel = match tonic::transport::Endpoint::from_shared(reg.registry.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
        Err(e) => {
            anyhow::bail!("bad registry URL {}: {e}", reg.registry);
        }
    };
    let mut client =
        RegistryClient::with_interceptor(channel, proto::auth::AddToken::new(reg.token.as_deref()));
    // This process's session: the registry lets only it renew (or move) this node id.
    let session = nimbus_core::new_id();
    let cfg = agent.config().clone();
    let mut interval = Duration::from_secs(1);
    let mut registered = false;
    loop {
        if !registered {
            match client
                .register(RegisterRequest {
                    node_id: cfg.node_id.clone(),
                    address: reg.advertise.clone(),
                    region: cfg.region.clone(),
                    zone: reg.zone.clone(),
                    capacity: Some(capacity),
                    session: session.clone(),
                })
                .await
            {
                Ok(r) => {
                    registered = true;
                    interval = Duration::from_millis(r.into_inner().heartbeat_interval_ms.max(100));
                    tracing::info!(node = %cfg.node_id, registry = %reg.registry, "registered");
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "registering with the registry; retrying")
                }
            }
        } else {
            let (memory_mb, instance_slots) = agent.used();
            match client
                .heartbeat(HeartbeatRequest {
                    node_id: cfg.node_id.clone(),
                    used: Some(NodeCapacity {
                        memory_mb,
                        instance_slots,
                    }),
                    warm: agent.pools(),
                    cached_code: agent.cached_code(),
                    session: session.clone(),
                })
                .await
            {
                Ok(r) if !r.get_ref().known => registered = false,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message(), "heartbeat failed"),
            }
        }
        let wait = if registered {
            interval
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return Ok(()),
        }
    }
}
