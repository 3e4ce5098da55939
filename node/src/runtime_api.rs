//! The AWS Lambda Runtime API, served to one instance on its own loopback port
//! (`AWS_LAMBDA_RUNTIME_API`). Unmodified Lambda runtime clients work against it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

/// One invocation handed to the instance.
pub struct Invocation {
    /// The request id (`Lambda-Runtime-Aws-Request-Id`).
    pub id: String,
    /// The event.
    pub event: Bytes,
    /// Epoch ms by which it must finish.
    pub deadline_ms: i64,
    /// The function's ARN-like name.
    pub arn: String,
    /// Where the answer goes.
    pub reply: oneshot::Sender<RuntimeOutcome>,
    /// The client context (JSON), if the caller gave one.
    pub client_context: Option<String>,
    /// The call's trace context (`Lambda-Runtime-Trace-Id` in X-Ray form, and
    /// `traceparent`).
    pub trace: nimbus_core::trace::TraceContext,
}

/// A call's output, kept for the caller while the call runs (its last
/// [`nimbus_core::nodes::LOG_TAIL`] bytes).
#[derive(Debug)]
pub struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    /// When the last line came.
    pub last_line: std::time::Instant,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            lines: Default::default(),
            bytes: 0,
            last_line: std::time::Instant::now(),
        }
    }
}

impl Tail {
    /// Keeps a line, dropping the oldest past the limit.
    pub fn push(&mut self, line: &str) {
        let limit = nimbus_core::nodes::LOG_TAIL;
        let line: String = if line.len() > limit {
            let mut start = line.len() - limit;
            while !line.is_char_boundary(start) {
                start += 1;
            }
            line[start..].to_string()
        } else {
            line.to_string()
        };
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > limit {
            match self.lines.pop_front() {
                Some(l) => self.bytes -= l.len() + 1,
                None => break,
            }
        }
        self.last_line = std::time::Instant::now();
    }

    /// The lines, one per line.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(self.bytes);
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// What the runtime said about one invocation.
#[derive(Debug)]
pub enum RuntimeOutcome {
    /// `POST …/response`.
    Response(Bytes),
    /// `POST …/error`, with the error document.
    Error(Bytes),
}

/// State shared by the instance's API server and its owner.
pub struct ApiShared {
    /// Invocations waiting for `GET /next`.
    pub next: Mutex<mpsc::Receiver<Invocation>>,
    /// Invocations handed out, waiting for their answer.
    pub inflight: std::sync::Mutex<HashMap<String, oneshot::Sender<RuntimeOutcome>>>,
    /// The request now running, for log lines.
    pub current: std::sync::Mutex<String>,
    /// The running call's output, when its caller asked for it.
    pub tail: std::sync::Mutex<Option<Tail>>,
    /// Signalled on the first `GET /next`: the runtime is initialised.
    pub ready: Notify,
    /// Set by `POST /runtime/init/error`.
    pub init_error: std::sync::Mutex<Option<Bytes>>,
    /// Signalled with the init error.
    pub init_failed: Notify,
    /// Whose instance it is (tenant id, function name), for log lines; a spare has
    /// no owner until it is specialised.
    pub owner: std::sync::Mutex<Option<(String, String)>>,
    /// A spare's specialisation (the function's handler and environment, JSON),
    /// answered to its `GET /2018-06-01/nimbus/specialize`.
    pub specialization: std::sync::Mutex<Option<Bytes>>,
    /// Signalled when the specialisation is set.
    pub specialized: Notify,
    /// Signalled when a spare asks for its specialisation: it is ready to become one.
    pub spare_waiting: Notify,
}

impl ApiShared {
    /// Shared state and the sender that feeds `GET /next`.
    pub fn new() -> (Arc<Self>, mpsc::Sender<Invocation>) {
        let (tx, rx) = mpsc::channel(1);
        (
            Arc::new(ApiShared {
                next: Mutex::new(rx),
                inflight: std::sync::Mutex::new(HashMap::new()),
                current: std::sync::Mutex::new(String::new()),
                tail: std::sync::Mutex::new(None),
                ready: Notify::new(),
                init_error: std::sync::Mutex::new(None),
                init_failed: Notify::new(),
                owner: std::sync::Mutex::new(None),
                specialization: std::sync::Mutex::new(None),
                specialized: Notify::new(),
                spare_waiting: Notify::new(),
            }),
            tx,
        )
    }

    /// Hands a spare its function: its `GET …/specialize` returns `spec`.
    pub fn specialize(&self, owner: (String, String), spec: Bytes) {
        *self.owner.lock().expect("lock") = Some(owner);
        *self.specialization.lock().expect("lock") = Some(spec);
        self.specialized.notify_one();
    }

    /// Fails every invocation handed out (the instance died).
    pub fn fail_inflight(&self) {
        self.inflight.lock().expect("lock").clear();
    }
}

/// The routes of the Runtime API.
pub fn router(shared: Arc<ApiShared>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .route("/2018-06-01/nimbus/specialize", get(specialize))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(shared)
}

async fn next(State(s): State<Arc<ApiShared>>) -> Response {
    s.ready.notify_one();
    let inv = {
        let mut rx = s.next.lock().await;
        match rx.recv().await {
            Some(inv) => inv,
            None => return StatusCode::GONE.into_response(),
        }
    };
    *s.current.lock().expect("lock") = inv.id.clone();
    s.inflight
        .lock()
        .expect("lock")
        .insert(inv.id.clone(), inv.reply);
    let mut h = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(&mut h, "lambda-runtime-aws-request-id", &inv.id);
    put(
        &mut h,
        "lambda-runtime-deadline-ms",
        &inv.deadline_ms.to_string(),
    );
    put(&mut h, "lambda-runtime-invoked-function-arn", &inv.arn);
    if let Some(c) = &inv.client_context {
        put(&mut h, "lambda-runtime-client-context", c);
    }
    put(&mut h, "lambda-runtime-trace-id", &inv.trace.xray());
    put(&mut h, nimbus_core::trace::HEADER, &inv.trace.traceparent());
    // Some runtime clients (awslambdaric) crash without a Content-Type.
    put(&mut h, "content-type", "application/json");
    (StatusCode::OK, h, inv.event).into_response()
}

fn settle(s: &ApiShared, id: &str, outcome: RuntimeOutcome) -> StatusCode {
    match s.inflight.lock().expect("lock").remove(id) {
        Some(reply) => {
            let _ = reply.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State(s): State<Arc<ApiShared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let status = settle(&s, &id, RuntimeOutcome::Response(body));
    // The caller's task, just woken, answers its client before this connection
    // goes on to the runtime's next request (the shipped runtimes send it in the
    // same write).
    tokio::task::yield_now().await;
    status
}

async fn error(State(s): State<Arc<ApiShared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let status = settle(&s, &id, RuntimeOutcome::Error(body));
    tokio::task::yield_now().await;
    status
}

/// A spare runtime waits here for the function it becomes.
async fn specialize(State(s): State<Arc<ApiShared>>) -> Response {
    s.spare_waiting.notify_one();
    loop {
        let notified = s.specialized.notified();
        if let Some(spec) = s.specialization.lock().expect("lock").clone() {
            let h = [("content-type", "application/json")];
            return (StatusCode::OK, h, spec).into_response();
        }
        notified.await;
    }
}

async fn init_error(State(s): State<Arc<ApiShared>>, body: Bytes) -> StatusCode {
    *s.init_error.lock().expect("lock") = Some(body);
    s.init_failed.notify_one();
    StatusCode::ACCEPTED
}

/// Runtime API connections that `nimbus-init` accepted inside a sandbox and handed
/// over (the descriptor, over a Unix socket): the server then reads and writes the
/// runtime's own TCP connection, in the sandbox's network namespace.
pub struct PassedConnections(pub tokio::net::UnixListener);

/// Receives one handed-over connection.
async fn receive(conn: tokio::net::UnixStream) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt as _;
    use withfd::WithFdExt as _;
    let mut conn = conn.with_fd();
    let mut byte = [0u8; 1];
    tokio::time::timeout(
        std::time::Duration::from_secs(1),
        conn.read_exact(&mut byte),
    )
    .await
    .map_err(|_| std::io::Error::other("no descriptor within 1 s"))??;
    let fd = conn
        .take_fds()
        .next()
        .ok_or_else(|| std::io::Error::other("no descriptor was passed"))?;
    let tcp = std::net::TcpStream::from(fd);
    tcp.set_nonblocking(true)?;
    tcp.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(tcp)
}

impl axum::serve::Listener for PassedConnections {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((conn, _)) => match receive(conn).await {
                    Ok(tcp) => {
                        let peer = tcp
                            .peer_addr()
                            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
                        return (tcp, peer);
                    }
                    Err(e) => tracing::debug!(error = %e, "a handed-over connection"),
                },
                // Out of descriptors, say: wait instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(crate::sandbox::API_ADDR.parse().expect("a socket address"))
    }
}
