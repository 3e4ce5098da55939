//! The Nimbus REST API gateway (the contract is `API.md`).
//!
//! It authenticates (API keys, JWT), authorises by role, rate-limits per tenant,
//! validates, records the request, and answers control-plane changes at once with
//! `202` and a task id; the workflow does the rest. Errors become HTTP in one place,
//! [`error`].

pub mod auth;
pub mod caller;
pub mod console;
pub mod directory;
pub mod env;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod identity;
pub mod lambda;
pub mod metrics;
pub mod packages;
pub mod queries;
pub mod state;
pub mod tasks;
pub mod views;
pub mod watchers;

pub use self::state::{AppState, DataPath};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use nimbus_core::bus::{Broadcast, names};
use nimbus_core::shutdown::Shutdown;
use proto::Message as _;
use proto::bus::{ChangeEvent, change_event};

use crate::error::{REQUEST_ID, TRACE};

/// Largest request body: a 50 MiB zip, base64-encoded, inside JSON.
pub const MAX_BODY_BYTES: usize = 72 * 1024 * 1024;

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Nimbus API", description = "The Nimbus serverless platform's REST API. docs/api.md describes the contract."),
    paths(
        handlers::admin::token,
        handlers::admin::whoami,
        handlers::admin::create_tenant,
        handlers::admin::list_tenants,
        handlers::admin::get_tenant,
        handlers::admin::delete_tenant,
        handlers::admin::set_limits,
        handlers::admin::create_key,
        handlers::admin::list_keys,
        handlers::admin::revoke_key,
        handlers::admin::get_network,
        handlers::admin::put_network,
        handlers::functions::create,
        handlers::functions::list,
        handlers::functions::get,
        handlers::functions::update_code,
        handlers::functions::update_config,
        handlers::functions::offline,
        handlers::functions::online,
        handlers::functions::delete,
        handlers::versions::publish,
        handlers::versions::list_versions,
        handlers::versions::put_alias,
        handlers::versions::get_alias,
        handlers::versions::list_aliases,
        handlers::versions::delete_alias,
        handlers::functions::get_task,
        handlers::history::tasks,
        handlers::history::invocations,
        packages::get_package,
        handlers::invoke::invoke,
        handlers::logs::logs,
        handlers::invoke::get_invocation,
        handlers::invoke::watch,
        handlers::invoke::dead_letters,
        handlers::invoke::replay,
        handlers::buckets::create,
        handlers::buckets::list,
        handlers::buckets::put_object,
        handlers::buckets::get_object,
        handlers::buckets::delete_object,
        handlers::buckets::s3_events,
        handlers::buckets::send_message,
        handlers::triggers::create,
        handlers::triggers::list,
        handlers::triggers::delete,
        handlers::flows::create,
        handlers::flows::list,
        handlers::flows::get,
        handlers::flows::update,
        handlers::flows::delete,
        handlers::flows::start,
        handlers::flows::executions,
        handlers::flows::describe,
        handlers::flows::history,
        handlers::flows::stop,
        handlers::ops::healthz,
        handlers::ops::readyz,
        handlers::ops::regions,
        handlers::ops::metrics,
        handlers::usage::usage,
        handlers::usage::tenant_usage,
        handlers::metrics::function_metrics,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Declares the bearer scheme (API key or JWT).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document as pretty JSON, as served at `/openapi.json`.
pub fn openapi_json() -> String {
    <ApiDoc as utoipa::OpenApi>::openapi()
        .to_pretty_json()
        .expect("OpenAPI serialises")
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    use handlers::{
        admin, buckets, flows, functions, history, invoke, logs, metrics, ops, triggers, usage,
        versions,
    };
    let v1 = Router::new()
        .route("/auth/token", post(admin::token))
        .route("/whoami", get(admin::whoami))
        .route(
            "/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/tenants/{tenant}",
            get(admin::get_tenant).delete(admin::delete_tenant),
        )
        .route("/tenants/{tenant}/limits", put(admin::set_limits))
        .route("/tenants/{tenant}/usage", get(usage::tenant_usage))
        .route("/usage", get(usage::usage))
        .route("/api-keys", post(admin::create_key).get(admin::list_keys))
        .route("/api-keys/{id}", delete(admin::revoke_key))
        .route("/network", get(admin::get_network).put(admin::put_network))
        .route("/regions", get(ops::regions))
        .route("/functions", post(functions::create).get(functions::list))
        .route(
            "/functions/{name}",
            get(functions::get)
                .patch(functions::update_config)
                .delete(functions::delete),
        )
        .route("/functions/{name}/code", put(functions::update_code))
        .route("/functions/{name}/offline", post(functions::offline))
        .route("/functions/{name}/online", post(functions::online))
        .route(
            "/functions/{name}/versions",
            post(versions::publish).get(versions::list_versions),
        )
        .route("/functions/{name}/aliases", get(versions::list_aliases))
        .route(
            "/functions/{name}/aliases/{alias}",
            put(versions::put_alias)
                .get(versions::get_alias)
                .delete(versions::delete_alias),
        )
        .route(
            "/functions/{name}/invoke",
            post(invoke::invoke).layer(axum::Extension(caller::ConcurrencyThrottled)),
        )
        .route("/functions/{name}/logs", get(logs::logs))
        .route("/functions/{name}/metrics", get(metrics::function_metrics))
        .route("/functions/{name}/dead-letters", get(invoke::dead_letters))
        .route("/invocations", get(history::invocations))
        .route("/invocations/{id}", get(invoke::get_invocation))
        .route("/invocations/{id}/watch", get(invoke::watch))
        .route(
            "/functions/{name}/triggers",
            post(triggers::create).get(triggers::list),
        )
        .route("/functions/{name}/triggers/{id}", delete(triggers::delete))
        .route("/dead-letters/{id}/replay", post(invoke::replay))
        .route("/tasks", get(history::tasks))
        .route("/tasks/{id}", get(functions::get_task))
        .route("/packages/{sha256}", get(packages::get_package))
        .route("/buckets", get(buckets::list))
        .route("/buckets/{bucket}", put(buckets::create))
        .route(
            "/buckets/{bucket}/objects/{*key}",
            put(buckets::put_object)
                .get(buckets::get_object)
                .delete(buckets::delete_object),
        )
        .route("/events/s3", post(buckets::s3_events))
        .route("/queues/{queue}/messages", post(buckets::send_message))
        .route("/state-machines", post(flows::create).get(flows::list))
        .route(
            "/state-machines/{name}",
            get(flows::get).put(flows::update).delete(flows::delete),
        )
        .route(
            "/state-machines/{name}/executions",
            post(flows::start).get(flows::executions),
        )
        .route("/executions/{id}", get(flows::describe))
        .route("/executions/{id}/history", get(flows::history))
        .route("/executions/{id}/stop", post(flows::stop));
    let app = Router::new()
        .nest("/v1", v1)
        .merge(lambda::routes(state.clone()))
        .route(
            "/t/{tenant}/{*path}",
            axum::routing::any(triggers::serve)
                .layer(axum::Extension(caller::ConcurrencyThrottled)),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/schemas/nimbus-spec.json", get(ops::spec_schema))
        .merge(console_routes(state.console))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_context));
    // Without origins to allow, no CORS layer at all: nothing on the invoke path.
    let app = match cors(&state.cors_origins) {
        Some(layer) => app.layer(layer),
        None => app,
    };
    app.with_state(state)
}

/// The web console's routes (none when `api.console = false`).
fn console_routes(enabled: bool) -> Router<Arc<AppState>> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/console", get(console::root))
        .route("/console/", get(console::asset))
        .route("/console/{*path}", get(console::asset))
}

/// CORS for the configured origins (`api.cors_origins`); with none, browsers allow
/// only same-origin calls, such as the console's own.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    let names = |ns: &[&'static str]| -> Vec<HeaderName> {
        ns.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    let layer = tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(names(&[
            "authorization",
            "content-type",
            "traceparent",
            "x-nimbus-invocation-type",
            "x-nimbus-tenant",
            "x-request-id",
        ]))
        .expose_headers(names(&[
            "x-request-id",
            "traceparent",
            "retry-after",
            "x-nimbus-request-id",
            "x-nimbus-executed-version",
            "x-nimbus-cold-start",
            "x-nimbus-function-error",
            "x-nimbus-init-ms",
        ]))
        .max_age(std::time::Duration::from_secs(600));
    Some(layer)
}

/// Gives every request an id (echoed as `x-request-id`), runs it inside that id's
/// scope so errors can carry it, and counts it for /metrics.
async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        // It becomes the Lambda request id inside the function (a path segment of
        // the Runtime API): letters, digits, '-', '_' and '.' only, else a new one.
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && !v.starts_with('.')
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(nimbus_core::new_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = Instant::now();
    let span = if nimbus_core::trace::exporting() {
        tracing::info_span!(
            "request",
            request_id = %id,
            %method,
            %route,
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
        )
    } else {
        tracing::info_span!("request", request_id = %id, %method, %route)
    };
    // The caller's trace, continued (a malformed header starts a new one).
    let parent = req
        .headers()
        .get(nimbus_core::trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(nimbus_core::trace::TraceContext::parse);
    let trace = nimbus_core::trace::enter(&span, parent);
    let mut resp = REQUEST_ID
        .scope(
            id.clone(),
            TRACE.scope(trace, tracing::Instrument::instrument(next.run(req), span)),
        )
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
        resp.headers_mut().insert(nimbus_core::trace::HEADER, v);
    }
    metrics::observe(&method, &route, resp.status().as_u16(), start.elapsed());
    resp
}

/// Applies change events from the bus to this gateway's caches.
async fn follow_changes(state: Arc<AppState>, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let mut sub = state.bus.subscribe(names::CHANGES).await?;
    loop {
        let msg = tokio::select! {
            m = sub.recv() => match m { Some(m) => m, None => return Ok(()) },
            _ = shutdown.wait() => return Ok(()),
        };
        match msg {
            Broadcast::Gap => {
                state.auth.evict_all();
                state.routes.invalidate_all();
                let _ = state.function_changes.send(None);
            }
            Broadcast::Message(bytes) => match ChangeEvent::decode(bytes.as_slice()) {
                Ok(ev) => match ev.kind() {
                    change_event::Kind::ApiKey => state.auth.evict_key(&ev.name).await,
                    change_event::Kind::Tenant => {
                        state.auth.evict_tenant(&ev.tenant_id);
                        state.routes.invalidate_all();
                    }
                    // Trigger changes are announced as changes of their function.
                    change_event::Kind::Function => {
                        state.routes.invalidate_all();
                        let key = Arc::new((ev.tenant_id, ev.name));
                        let _ = state.function_changes.send(Some(key));
                    }
                },
                Err(e) => tracing::warn!(error = %e, "undecodable change event"),
            },
        }
    }
}

/// Serves the API on `listener` until shutdown, then drains in-flight requests.
pub async fn run(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let follower = tokio::spawn(follow_changes(state.clone(), shutdown.clone()));
    // Streams that would never end (log followers) end when shutdown begins.
    let (stopping, mut sd) = (state.stopping.clone(), shutdown.clone());
    tokio::spawn(async move {
        sd.wait().await;
        stopping.send_replace(true);
    });
    if let directory::replica::Identity::Directory(replica) = &state.identity {
        let s = state.clone();
        tokio::spawn(replica.clone().follow(
            move |change| {
                let s = s.clone();
                async move { identity::touched(&s, &change).await }
            },
            shutdown.clone(),
        ));
    }
    tracing::info!(addr = %listener.local_addr()?, "API gateway listening");
    let drain = state.drain;
    let app = router(state).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        BODY_TIMEOUT,
    ));
    serve(listener, app, MAX_CONNECTIONS, drain, shutdown).await;
    follower.abort();
    Ok(())
}

/// Most connections a gateway holds open at once; past it, new ones are closed at
/// once (a client's flood of idle connections cannot take the gateway's memory and
/// descriptors).
pub const MAX_CONNECTIONS: usize = 10_000;
/// How long a client may take to send a request's head (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive (a body that trickles in).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Serves `app` on `listener` with bounded connections and read timeouts, until
/// shutdown; then stops accepting and gives in-flight requests `drain` to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    drain: Duration,
    mut shutdown: Shutdown,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little, go on.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(
        grace_s = drain.as_secs(),
        "shutdown: no new connections; draining requests"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("shutdown: every request answered"),
        _ = tokio::time::sleep(drain) => tracing::warn!(
            grace_s = drain.as_secs(),
            "shutdown: requests still running at the end of the grace period"
        ),
    }
}

/// 202 Accepted with a JSON body.
pub fn accepted(body: impl serde::Serialize) -> Response {
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}
