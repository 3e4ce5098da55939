//! Nodes in other processes: placement and the gRPC calls to them.
//!
//! The node list comes from the registry (refreshed every second, and at once when
//! a call finds no node, at most every 250 ms), with each node's
//! warm pools and cached code as of its last heartbeat. Replies refine that: every
//! reply says how many idle instances of the configuration the node has left, and
//! each dispatch counts one down, so the router's picture is fresher than the
//! heartbeats.
//!
//! Placement ranks the nodes for one call by
//! 1. an idle instance of that exact configuration,
//! 2. instances of it (all busy: the node queues briefly, then scales up),
//! 3. its code cached,
//! 4. a hash of the configuration and the node id (rendezvous hashing), so that
//!    every router sends a function to the same node while it has room, which keeps
//!    instances warm and code cached in few places.
//!
//! A node that says it is full, or cannot be reached, is skipped and the next one is
//! tried (at most three). A call that may have started on a node is never retried
//! elsewhere: it is failed instead, so nothing runs twice.
//! Connections (HTTP/2 channels) are made once per node and shared by every call.
//!
//! With `router.invoke_stream` on (the default; see `docs/benchmarks.md`, "Calls on
//! one stream per node"), calls with small events travel on one long-lived
//! `InvokeStream` per node: a
//! frame each way per call, tagged with an id, instead of an HTTP/2 stream of its
//! own (headers, trailers, stream set-up and tear-down on both sides). Large events
//! (which would hold up the calls behind them on one stream) and nodes that do not
//! offer the stream use unary `Invoke`. A caller that goes away or times out sends
//! a cancel frame, as a unary call resets its stream. A stream that breaks fails
//! the calls on it (they may have started); one the node ends cleanly (it is
//! shutting down, and has answered every frame it read) sends them elsewhere.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::nodes::{InvokeOutcome, MAX_MESSAGE, NodeError, Nodes, instance_key};
use nimbus_core::shutdown::Shutdown;
use proto::auth::AddToken;
use proto::node::node_client::NodeClient;
use proto::node::registry_client::RegistryClient;
use proto::node::{
    DrainRequest, FunctionRef, InvokeFrame, InvokeReply, InvokeRequest, InvokeResult,
    ListNodesRequest, NodeInfo, PrewarmRequest,
};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tonic::transport::Channel;

/// Nodes tried per call, at most.
const MAX_ATTEMPTS: usize = 3;
/// A node that could not be reached is skipped this long.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// A call that finds no node reloads the node list at most this often, so the
/// first calls after start need not wait for the next periodic refresh.
const EMPTY_REFRESH: Duration = Duration::from_millis(250);
/// What a reply taught about a node's idle instances is trusted this long.
const SEEN_TTL: Duration = Duration::from_secs(5);
/// Events larger than this go as unary calls, not on the node's invoke stream,
/// where they would hold up the calls behind them.
const STREAM_EVENT_MAX: usize = 256 * 1024;
/// Frames queued for a node's invoke stream before callers wait.
const STREAM_QUEUE: usize = 1024;
/// How long opening a node's invoke stream may take.
const STREAM_OPEN: Duration = Duration::from_secs(2);

/// How one call on a node's invoke stream ended.
enum Answer {
    /// The node answered.
    Done(InvokeResult),
    /// The node never started it: it ended the stream cleanly without reading the
    /// frame (it is shutting down).
    NotStarted,
    /// The stream broke: the call may have started.
    Lost(String),
}

/// Callers waiting on an invoke stream, by frame id; `None` once it has ended.
type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>>;

/// One node's invoke stream: frames go out on `frames`; a reader task hands each
/// result to the caller waiting in `pending`. The reader does not hold the
/// sender: when the node is forgotten and its last call is over, the stream's
/// request side ends, and with it the stream.
struct Pipe {
    frames: mpsc::Sender<InvokeFrame>,
    pending: Waiters,
    next: AtomicU64,
}

impl Pipe {
    fn closed(&self) -> bool {
        self.pending.lock().expect("lock").is_none()
    }
}

/// Reads a stream's results until it ends, then settles the calls still waiting.
async fn read_results(pending: Waiters, mut results: tonic::Streaming<InvokeResult>) {
    let end = loop {
        match results.message().await {
            Ok(Some(r)) => {
                let waiter = pending
                    .lock()
                    .expect("lock")
                    .as_mut()
                    .and_then(|p| p.remove(&r.id));
                if let Some(w) = waiter {
                    let _ = w.send(Answer::Done(r));
                }
            }
            Ok(None) => break None,
            Err(s) => break Some(s.message().to_string()),
        }
    };
    let waiting = pending.lock().expect("lock").take().unwrap_or_default();
    for (_, w) in waiting {
        let _ = w.send(match &end {
            None => Answer::NotStarted,
            Some(m) => Answer::Lost(m.clone()),
        });
    }
}

/// A call on a pipe: if its caller goes away first, the node is told to drop it.
struct InFlight<'a> {
    pipe: &'a Pipe,
    id: u64,
    settled: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(p) = self.pipe.pending.lock().expect("lock").as_mut() {
            p.remove(&self.id);
        }
        // With the queue full the cancel is lost: the call runs to its end on the
        // node and its result is dropped here.
        let _ = self.pipe.frames.try_send(InvokeFrame {
            id: self.id,
            call: None,
        });
    }
}

/// Why one attempt on a node failed.
enum Failure {
    /// The call did not reach the node: another may take it.
    NotSent(String),
    /// What the node (or the connection) said; the call may have started.
    Status(tonic::Status),
}

/// What a node's last heartbeat said.
#[derive(Default)]
struct Heartbeat {
    /// (idle, busy) instances per configuration.
    pools: HashMap<String, (u32, u32)>,
    /// Cached code digests.
    cached: HashSet<String>,
}

/// One node, as this router knows it.
struct RemoteNode {
    id: String,
    address: String,
    client: NodeClient<Authed>,
    /// Instance slots.
    slots: u32,
    /// Pools and cached code as of the last heartbeat.
    heartbeat: Mutex<Heartbeat>,
    /// Idle instances per configuration as of the last reply (or dispatch).
    seen: Mutex<HashMap<String, (u32, Instant)>>,
    /// Calls this router has running there.
    inflight: AtomicU32,
    /// Skipped until then.
    down_until: Mutex<Option<Instant>>,
    /// The invoke stream, once opened (and until it ends).
    pipe: Mutex<Option<Arc<Pipe>>>,
    /// Held while the stream is being opened.
    opening: tokio::sync::Mutex<()>,
    /// Calls go unary: the stream is off, or the node does not offer it (an older
    /// version).
    unary_only: AtomicBool,
}

impl RemoteNode {
    fn up(&self) -> bool {
        self.down_until
            .lock()
            .expect("lock")
            .is_none_or(|t| Instant::now() >= t)
    }

    /// (idle estimate, has instances of it, has the code).
    fn affinity(&self, key: &str, sha: &str) -> (u32, bool, bool) {
        let hb = self.heartbeat.lock().expect("lock");
        let (hb_idle, hb_busy) = hb.pools.get(key).copied().unwrap_or((0, 0));
        let idle = match self.seen.lock().expect("lock").get(key) {
            Some((n, at)) if at.elapsed() < SEEN_TTL => *n,
            _ => hb_idle,
        };
        (idle, idle + hb_busy > 0, hb.cached.contains(sha))
    }

    fn set_seen(&self, key: &str, idle: u32) {
        self.seen
            .lock()
            .expect("lock")
            .insert(key.to_string(), (idle, Instant::now()));
    }

    fn open_pipe(&self) -> Option<Arc<Pipe>> {
        self.pipe
            .lock()
            .expect("lock")
            .as_ref()
            .filter(|p| !p.closed())
            .cloned()
    }

    /// The node's invoke stream, opened if need be; `None` if the node has none.
    async fn pipe(&self) -> Result<Option<Arc<Pipe>>, Failure> {
        if self.unary_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some(p) = self.open_pipe() {
            return Ok(Some(p));
        }
        let _opening = self.opening.lock().await;
        if let Some(p) = self.open_pipe() {
            return Ok(Some(p));
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut client = self.client.clone();
        let call = client.invoke_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let results = match tokio::time::timeout(STREAM_OPEN, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if s.code() == Code::Unimplemented => {
                self.unary_only.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Ok(Err(s)) => {
                return Err(Failure::NotSent(format!(
                    "opening its invoke stream: {}",
                    s.message()
                )));
            }
            Err(_) => {
                return Err(Failure::NotSent(
                    "opening its invoke stream timed out".into(),
                ));
            }
        };
        let pipe = Arc::new(Pipe {
            frames: tx,
            pending: Arc::new(Mutex::new(Some(HashMap::new()))),
            next: AtomicU64::new(0),
        });
        tokio::spawn(read_results(pipe.pending.clone(), results));
        *self.pipe.lock().expect("lock") = Some(pipe.clone());
        Ok(Some(pipe))
    }

    /// One attempt at the call on this node.
    async fn call(
        &self,
        mut f: FunctionRef,
        traceparent: &str,
        event: &Bytes,
        request_id: &str,
        deadline: Duration,
    ) -> Result<InvokeReply, Failure> {
        if event.len() <= STREAM_EVENT_MAX
            && let Some(pipe) = self.pipe().await?
        {
            f.traceparent = traceparent.to_string();
            return stream_call(&pipe, f, event, request_id, deadline).await;
        }
        let mut req = tonic::Request::new(InvokeRequest {
            function: Some(f),
            event: event.clone(),
            request_id: request_id.to_string(),
        });
        req.set_timeout(deadline);
        // The trace context travels as gRPC metadata, as OpenTelemetry's own
        // instrumentation sends it.
        if let Ok(t) = traceparent.parse() {
            req.metadata_mut().insert(nimbus_core::trace::HEADER, t);
        }
        match self.client.clone().invoke(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if never_sent(&s) => Err(Failure::NotSent(s.message().to_string())),
            Err(s) => Err(Failure::Status(s)),
        }
    }
}

/// One call on a node's invoke stream.
async fn stream_call(
    pipe: &Pipe,
    f: FunctionRef,
    event: &Bytes,
    request_id: &str,
    deadline: Duration,
) -> Result<InvokeReply, Failure> {
    let id = pipe.next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    match pipe.pending.lock().expect("lock").as_mut() {
        Some(p) => p.insert(id, tx),
        None => return Err(Failure::NotSent("its invoke stream ended".into())),
    };
    let mut flight = InFlight {
        pipe,
        id,
        settled: false,
    };
    let frame = InvokeFrame {
        id,
        call: Some(InvokeRequest {
            function: Some(f),
            event: event.clone(),
            request_id: request_id.to_string(),
        }),
    };
    // The deadline covers the wait for room on the stream (a node that stopped
    // reading fills its queue) as well as the wait for the result.
    let until = tokio::time::Instant::now() + deadline;
    let queued = tokio::time::timeout_at(until, pipe.frames.send(frame)).await;
    if !matches!(queued, Ok(Ok(()))) {
        // Never queued: nothing to cancel on the node.
        flight.settled = true;
        if let Some(p) = pipe.pending.lock().expect("lock").as_mut() {
            p.remove(&id);
        }
        return Err(match queued {
            Err(_) => Failure::Status(tonic::Status::deadline_exceeded(
                "the call's deadline passed before the node's invoke stream took it",
            )),
            _ => Failure::NotSent("its invoke stream ended".into()),
        });
    }
    let answer = match tokio::time::timeout_at(until, rx).await {
        Ok(Ok(a)) => a,
        // The reader settles every waiter before it drops them.
        Ok(Err(_)) => Answer::Lost("its invoke stream ended".into()),
        // Timed out: `flight` cancels the call on the node as it drops.
        Err(_) => {
            return Err(Failure::Status(tonic::Status::deadline_exceeded(
                "the call's deadline passed",
            )));
        }
    };
    flight.settled = true;
    match answer {
        Answer::Done(r) if r.code == 0 => Ok(r.reply.unwrap_or_default()),
        Answer::Done(r) => Err(Failure::Status(tonic::Status::new(
            Code::from(r.code as i32),
            r.message,
        ))),
        Answer::NotStarted => Err(Failure::NotSent(
            "it ended its invoke stream (shutting down)".into(),
        )),
        Answer::Lost(m) => Err(Failure::Status(tonic::Status::unavailable(format!(
            "its invoke stream broke: {m}"
        )))),
    }
}

/// A stable 64-bit hash, the same in every router: FNV-1a, then MurmurHash3's
/// finaliser, without which ids that differ in their last character (n1, n2, …)
/// differ only in the high bits and one node wins most keys.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Compute nodes reached over gRPC.
pub struct RemoteNodes {
    registry: RegistryClient<Authed>,
    /// The region's internal token, sent on every call.
    token: AddToken,
    nodes: RwLock<Vec<Arc<RemoteNode>>>,
    /// Calls with small events go on each node's invoke stream
    /// (`router.invoke_stream`); otherwise every call is unary.
    stream: bool,
    /// When a call last found no node and reloaded the list (at most every
    /// `EMPTY_REFRESH`).
    empty_refresh: Mutex<Option<Instant>>,
}

/// A channel whose calls carry the region's internal token.
type Authed = tonic::service::interceptor::InterceptedService<Channel, AddToken>;

fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl RemoteNodes {
    /// Nodes listed by the registry at `registry` (`http://host:port`). Loads the
    /// list once before returning (an empty registry is not an error: calls get 503
    /// until a node registers). `stream`: use the nodes' invoke streams.
    pub async fn connect(
        registry: &str,
        token: Option<&str>,
        stream: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let token = AddToken::new(token);
        let nodes = Arc::new(RemoteNodes {
            registry: RegistryClient::with_interceptor(channel(registry)?, token.clone()),
            token,
            nodes: RwLock::new(Vec::new()),
            stream,
            empty_refresh: Mutex::new(None),
        });
        if let Err(e) = nodes.refresh().await {
            tracing::warn!(error = %e, "the node registry is not answering yet");
        }
        Ok(nodes)
    }

    /// Reloads the node list until shutdown.
    pub async fn follow(self: Arc<Self>, mut shutdown: Shutdown) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "refreshing the node list");
            }
        }
    }

    /// Reloads the node list from the registry now.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let list = self
            .registry
            .clone()
            .list_nodes(ListNodesRequest {
                include_dead: false,
            })
            .await?
            .into_inner()
            .nodes;
        let old: HashMap<String, Arc<RemoteNode>> = self
            .nodes
            .read()
            .expect("lock")
            .iter()
            .map(|n| (n.id.clone(), n.clone()))
            .collect();
        let mut next = Vec::with_capacity(list.len());
        for info in list {
            let node = match old.get(&info.node_id) {
                Some(n) if n.address == info.address => n.clone(),
                _ => Arc::new(self.node(&info)?),
            };
            *node.heartbeat.lock().expect("lock") = Heartbeat {
                pools: info
                    .warm
                    .iter()
                    .map(|w| (w.key.clone(), (w.idle, w.busy)))
                    .collect(),
                cached: info.cached_code.iter().cloned().collect(),
            };
            next.push(node);
        }
        *self.nodes.write().expect("lock") = next;
        Ok(())
    }

    fn node(&self, info: &NodeInfo) -> anyhow::Result<RemoteNode> {
        let client = NodeClient::with_interceptor(
            channel(&format!("http://{}", info.address))?,
            self.token.clone(),
        )
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        Ok(RemoteNode {
            id: info.node_id.clone(),
            address: info.address.clone(),
            client,
            slots: info.capacity.map_or(0, |c| c.instance_slots),
            heartbeat: Mutex::default(),
            seen: Mutex::default(),
            inflight: AtomicU32::new(0),
            down_until: Mutex::new(None),
            pipe: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            unary_only: AtomicBool::new(!self.stream),
        })
    }

    /// Whether a call that found no node may reload the list now.
    fn may_refresh_when_empty(&self) -> bool {
        let mut last = self.empty_refresh.lock().expect("lock");
        if last.is_some_and(|t| t.elapsed() < EMPTY_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// The nodes for one call, best first.
    fn rank(&self, key: &str, sha: &str) -> Vec<Arc<RemoteNode>> {
        let nodes = self.nodes.read().expect("lock");
        let mut ranked: Vec<_> = nodes
            .iter()
            .filter(|n| n.up())
            .map(|n| {
                let (idle, pooled, cached) = n.affinity(key, sha);
                let room = n.inflight.load(Ordering::Relaxed) < n.slots.max(1);
                let score = (
                    idle > 0,
                    room && pooled,
                    room && cached,
                    room,
                    fnv(&[key, &n.id]),
                );
                (score, n.clone())
            })
            .collect();
        ranked.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
        ranked.into_iter().map(|(_, n)| n).collect()
    }
}

/// Whether the call cannot have reached the node (so another may take it).
fn never_sent(s: &tonic::Status) -> bool {
    if s.code() != Code::Unavailable {
        return false;
    }
    let m = s.message().to_ascii_lowercase();
    if m.contains("connect") || m.contains("dns") {
        return true;
    }
    // A request the HTTP client canceled before writing it: the connection was found
    // closed (the node died just before the call).
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_canceled()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[async_trait]
impl Nodes for RemoteNodes {
    async fn invoke(
        &self,
        mut f: FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        let traceparent = std::mem::take(&mut f.traceparent);
        let key = instance_key(&f);
        let mut ranked = self.rank(&key, &f.code_sha256);
        if ranked.is_empty() && self.may_refresh_when_empty() {
            // Nodes may have registered since the last periodic refresh (as right
            // after start).
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reloading the node list failed");
            }
            ranked = self.rank(&key, &f.code_sha256);
        }
        if ranked.is_empty() {
            return Err(NodeError::Internal(anyhow::anyhow!(
                "no compute node is registered and alive"
            )));
        }
        let timeout_ms = f.timeout_ms;
        // Waiting for an instance, starting one, and the call itself.
        let deadline = Duration::from_millis(2 * timeout_ms as u64 + 15_000);
        let mut last = NodeError::Capacity;
        for node in ranked.into_iter().take(MAX_ATTEMPTS) {
            let (idle, _, _) = node.affinity(&key, &f.code_sha256);
            node.set_seen(&key, idle.saturating_sub(1));
            node.inflight.fetch_add(1, Ordering::Relaxed);
            let r = node
                .call(f.clone(), &traceparent, &event, request_id, deadline)
                .await;
            node.inflight.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(r) => {
                    node.set_seen(&key, r.idle);
                    return Ok(InvokeOutcome {
                        result: r.result,
                        function_error: Some(r.function_error).filter(|e| !e.is_empty()),
                        cold_start: r.cold_start,
                        init_ms: r.init_ms,
                        idle_after: r.idle,
                        log_tail: f.tail_log.then_some(r.log_tail),
                        duration_us: r.duration_us,
                    });
                }
                Err(Failure::Status(s)) if s.code() == Code::ResourceExhausted => {
                    node.set_seen(&key, 0);
                    last = NodeError::Capacity;
                }
                Err(Failure::NotSent(m)) => {
                    tracing::warn!(node = %node.id, error = %m, "node unreachable; trying another");
                    *node.down_until.lock().expect("lock") = Some(Instant::now() + DOWN_FOR);
                    last = NodeError::Internal(anyhow::anyhow!(
                        "node {} is unreachable: {m}",
                        node.id,
                    ));
                }
                Err(Failure::Status(s)) => {
                    if s.code() == Code::Unavailable {
                        // Its connection broke: skip it while it comes back (or is
                        // declared dead).
                        *node.down_until.lock().expect("lock") = Some(Instant::now() + DOWN_FOR);
                    }
                    return Err(match s.code() {
                        Code::DeadlineExceeded => NodeError::Timeout(timeout_ms),
                        Code::FailedPrecondition => NodeError::Init(s.message().to_string()),
                        _ => NodeError::Internal(anyhow::anyhow!(
                            "node {}: {}",
                            node.id,
                            s.message()
                        )),
                    });
                }
            }
        }
        Err(last)
    }

    async fn provision(
        &self,
        node: &str,
        f: FunctionRef,
        instances: u32,
        lease: Duration,
    ) -> Result<u32, NodeError> {
        let Some(n) = self
            .nodes
            .read()
            .expect("lock")
            .iter()
            .find(|n| n.id == node)
            .cloned()
        else {
            return Err(NodeError::Internal(anyhow::anyhow!(
                "node {node} is not registered and alive"
            )));
        };
        let key = instance_key(&f);
        let req = PrewarmRequest {
            function: Some(f),
            instances,
            lease_ms: lease.as_millis().clamp(1, u32::MAX as u128) as u32,
        };
        match n.client.clone().prewarm(req).await {
            Ok(r) => {
                let warm = r.into_inner().warm;
                // Calls may go there before its next heartbeat says so.
                if warm > 0 {
                    n.set_seen(&key, warm);
                }
                Ok(warm)
            }
            Err(s) if s.code() == Code::FailedPrecondition => {
                Err(NodeError::Init(s.message().to_string()))
            }
            Err(s) if s.code() == Code::ResourceExhausted => Err(NodeError::Capacity),
            Err(s) => Err(NodeError::Internal(anyhow::anyhow!(
                "node {}: {}",
                n.id,
                s.message()
            ))),
        }
    }

    fn home(&self, f: &FunctionRef) -> Option<String> {
        let key = instance_key(f);
        self.nodes
            .read()
            .expect("lock")
            .iter()
            .filter(|n| n.up())
            .max_by_key(|n| fnv(&[&key, &n.id]))
            .map(|n| n.id.clone())
    }

    async fn drain(&self, tenant_id: &str, function: &str) {
        let nodes: Vec<_> = self.nodes.read().expect("lock").clone();
        for n in nodes {
            let req = DrainRequest {
                tenant_id: tenant_id.to_string(),
                function_name: function.to_string(),
                version: String::new(),
            };
            if let Err(e) = n.client.clone().drain(req).await {
                tracing::debug!(node = %n.id, error = %e.message(), "draining a deleted function");
            }
        }
    }
}

#[cfg(test)]
mod tests;
