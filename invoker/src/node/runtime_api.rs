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
    /// Signalled on the first `GET /next`: the runtime is initialised.
    pub ready: Notify,
    /// Set by `POST /runtime/init/error`.
    pub init_error: std::sync::Mutex<Option<Bytes>>,
    /// Signalled with the init error.
    pub init_failed: Notify,
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
                ready: Notify::new(),
                init_error: std::sync::Mutex::new(None),
                init_failed: Notify::new(),
            }),
            tx,
        )
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
    put(
        &mut h,
        "lambda-runtime-trace-id",
        &format!("Root=1-{}", inv.id),
    );
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
    settle(&s, &id, RuntimeOutcome::Response(body))
}

async fn error(State(s): State<Arc<ApiShared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    settle(&s, &id, RuntimeOutcome::Error(body))
}

async fn init_error(State(s): State<Arc<ApiShared>>, body: Bytes) -> StatusCode {
    *s.init_error.lock().expect("lock") = Some(body);
    s.init_failed.notify_one();
    StatusCode::ACCEPTED
}
