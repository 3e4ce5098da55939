//! Invocation (the data path's front) and function logs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use invoker::router::{Call, MAX_PAYLOAD};
use nimbus_core::Error;
use nimbus_core::model::{self, Role};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody, request_id};
use crate::extract::{Path, Query};
use crate::views::{DeadLetterList, DeadLetterView, InvocationQueued, Replayed};

/// Query of the invoke endpoint.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// A version number, an alias, or `$LATEST` (the default).
    #[serde(default)]
    pub(crate) qualifier: Option<String>,
    /// Answer a function error with 502 instead of 200.
    #[serde(default)]
    pub(crate) error_status: Option<bool>,
}

fn data_path(state: &AppState) -> Result<&crate::DataPath, ApiError> {
    state.data_path.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "this gateway has no data path: set resource.endpoint so it can find compute nodes",
        )
    })
}

/// `POST /v1/functions/{name}/invoke`: runs the function with the body as the event.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invocation",
    params(("name" = String, Path), InvokeQuery, ("x-nimbus-invocation-type" = Option<String>, Header, description = "sync (default), async or dry-run"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue; the response's traceparent carries the trace (every response has one)")),
    request_body(content = serde_json::Value, description = "The event, at most 6 MiB"),
    responses(
        (status = 200, description = "The function's result; x-nimbus-function-error is set if it raised", body = serde_json::Value,
            headers(("traceparent" = String, description = "The call's trace: the caller's trace id (or a new one) and the gateway's span"))),
        (status = 202, description = "async: `{invocation_id}`; the event is stored and queued", body = InvocationQueued),
        (status = 204, description = "dry-run: the call would be accepted"),
        (status = 404, description = "No such function, version or alias", body = ErrorBody),
        (status = 409, description = "Offline or not Active", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge", body = ErrorBody),
        (status = 429, description = "ConcurrencyLimitExceeded", body = ErrorBody),
        (status = 502, description = "FunctionError, with error_status=true", body = ErrorBody),
        (status = 504, description = "FunctionTimeout", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = match headers
        .get("x-nimbus-invocation-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("sync") | Some("RequestResponse") => InvocationKind::Sync,
        Some("dry-run") | Some("DryRun") => InvocationKind::DryRun,
        Some("async") | Some("Event") => InvocationKind::Async,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "x-nimbus-invocation-type '{other}' is unknown: use sync, async or dry-run"
            )));
        }
    };
    let rid = request_id();
    let answer = run_call(
        &state,
        &caller,
        CallSpec {
            name,
            qualifier: q.qualifier,
            kind,
            tail_log: false,
            client_context: None,
        },
        body,
    )
    .await?;
    let done = match answer {
        Answer::DryRun => return Ok(StatusCode::NO_CONTENT.into_response()),
        Answer::Queued(id) => {
            return Ok((
                StatusCode::ACCEPTED,
                [("x-nimbus-request-id", rid)],
                axum::Json(InvocationQueued { invocation_id: id }),
            )
                .into_response());
        }
        Answer::Ran(done) => done,
    };
    let o = done.outcome;
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let put = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(&mut h, "x-nimbus-request-id", &rid);
    put(&mut h, "x-nimbus-executed-version", &done.executed_version);
    put(
        &mut h,
        "x-nimbus-cold-start",
        if o.cold_start { "true" } else { "false" },
    );
    if o.cold_start {
        put(&mut h, "x-nimbus-init-ms", &o.init_ms.to_string());
    }
    if let Some(kind) = &o.function_error {
        put(&mut h, "x-nimbus-function-error", kind);
        if q.error_status == Some(true) {
            let doc: serde_json::Value = serde_json::from_slice(&o.result).unwrap_or(json!({}));
            let msg = doc["errorMessage"]
                .as_str()
                .unwrap_or("the function raised an error")
                .to_string();
            let mut resp =
                ApiError::new(StatusCode::BAD_GATEWAY, "FunctionError", msg).into_response();
            resp.headers_mut().extend(h);
            return Ok(resp);
        }
    }
    Ok((StatusCode::OK, h, o.result).into_response())
}

/// How a call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationKind {
    /// Run it and answer its result.
    Sync,
    /// Store and queue the event; answer at once.
    Async,
    /// Check that the call would be accepted; run nothing.
    DryRun,
}

/// One call, as either API asks for it.
pub struct CallSpec {
    /// The function's name.
    pub name: String,
    /// `$LATEST`, a version or an alias; None is `$LATEST`.
    pub qualifier: Option<String>,
    /// Sync, async or dry run.
    pub kind: InvocationKind,
    /// Return the call's output with the outcome.
    pub tail_log: bool,
    /// The client context (JSON) handed to the function.
    pub client_context: Option<String>,
}

/// What became of a call.
pub enum Answer {
    /// It ran.
    Ran(invoker::router::Invoked),
    /// Stored and queued, under this invocation id.
    Queued(String),
    /// Checked only.
    DryRun,
}

/// The invoke path both APIs share: checks the call and gives it its concurrency
/// slot before the body is read (the bodies a tenant has in flight are bounded by
/// its own concurrency), then runs it, queues it, or only checks it.
pub async fn run_call(
    state: &AppState,
    caller: &Caller,
    spec: CallSpec,
    body: Body,
) -> ApiResult<Answer> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let name = spec.name;
    model::validate_name("function", &name).map_err(|_| Error::not_found("Function", &name))?;
    let dp = data_path(state)?;
    let dry_run = spec.kind != InvocationKind::Sync;
    let rid = request_id();
    let admitted = dp
        .router
        .admit(
            &Call {
                tenant_id: tenant.id.clone(),
                tenant_max_concurrency: tenant.limits.max_concurrency,
                function: name.clone(),
                qualifier: spec.qualifier.clone(),
                event: axum::body::Bytes::new(),
                request_id: rid.clone(),
                dry_run,
                from_timer: false,
                tail_log: spec.tail_log,
                client_context: spec.client_context,
                attempt: 0,
                trace: crate::error::trace(),
            },
            None,
        )
        .await
        .map_err(ApiError::from)?;
    let event = axum::body::to_bytes(body, MAX_PAYLOAD).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            "the event is larger than 6 MiB, or it did not arrive in time",
        )
    })?;
    if let Some(a) = admitted {
        let done = dp
            .router
            .run(a, event, &rid)
            .await
            .map_err(ApiError::from)?;
        return Ok(Answer::Ran(done));
    }
    if spec.kind == InvocationKind::DryRun {
        return Ok(Answer::DryRun);
    }
    // Checked like a call (function, qualifier, state); now made durable and queued.
    let id = events::invocations::enqueue(
        &state.db,
        &state.bus,
        events::invocations::NewInvocation {
            tenant_id: &tenant.id,
            function: &name,
            qualifier: spec.qualifier.as_deref(),
            event,
            origin: events::invocations::Origin::Api,
            replay_of: None,
            trace: crate::error::trace(),
        },
    )
    .await
    .map_err(Error::from)?;
    Ok(Answer::Queued(id))
}

/// `GET /v1/invocations/{id}`: an asynchronous invocation's state, attempts, result
/// and errors.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocation",
    params(("id" = String, Path)),
    responses((status = 200, description = "The invocation", body = events::invocations::InvocationView),
        (status = 404, description = "No such invocation (or another tenant's)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_invocation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let inv = find_invocation(&state, &tenant.id, &id).await?;
    Ok(axum::Json(events::invocations::InvocationView::from(&inv)).into_response())
}

/// `GET /v1/invocations/{id}/watch`: a websocket that pushes the invocation (as
/// `GET /v1/invocations/{id}` shows it) at once and on each change of state or
/// attempts, and closes after the final state.
#[utoipa::path(get, path = "/v1/invocations/{id}/watch", tag = "invocation",
    params(("id" = String, Path)),
    responses((status = 101, description = "Switching to the websocket; text messages are the invocation's JSON"),
        (status = 400, description = "Not a websocket request", body = ErrorBody),
        (status = 404, description = "No such invocation (or another tenant's)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn watch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    find_invocation(&state, &tenant.id, &id).await?;
    let ws = ws.map_err(|_| {
        ApiError::invalid("this is a websocket endpoint: connect with Upgrade: websocket")
    })?;
    let Some(slot) = crate::watchers::Slot::take(&state.watchers, &tenant.id) else {
        return Err(Error::TooManyRequests(format!(
            "at most {} watches at once per tenant ({} per gateway)",
            crate::watchers::PER_TENANT,
            crate::watchers::TOTAL
        ))
        .into());
    };
    // A browser that sent its key as a subprotocol gets `nimbus` back, as the
    // websocket handshake requires.
    Ok(ws
        .protocols(["nimbus"])
        .on_upgrade(move |socket| async move {
            watch_loop(state, id, socket).await;
            drop(slot);
        }))
}

/// How often a watcher looks at the invocation at first; it looks less often (up to
/// once a second) the longer nothing changes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest a watch stays open.
const WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

async fn watch_loop(state: Arc<AppState>, id: String, mut socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message;
    use sea_orm::EntityTrait as _;
    let mut last = None;
    let mut every = WATCH_EVERY;
    let until = tokio::time::Instant::now() + WATCH_FOR;
    while tokio::time::Instant::now() < until {
        let inv = match nimbus_core::db::invocation::Entity::find_by_id(id.clone())
            .one(&state.db)
            .await
        {
            Ok(Some(i)) => i,
            _ => break,
        };
        let seen = (inv.state.clone(), inv.attempts);
        if last.as_ref() != Some(&seen) {
            let text = events::invocations::to_json(&inv).to_string();
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
            last = Some(seen);
            every = WATCH_EVERY;
        } else {
            every = (every * 2).min(std::time::Duration::from_secs(1));
        }
        if matches!(
            inv.state.as_str(),
            events::invocations::state::SUCCEEDED
                | events::invocations::state::FAILED
                | events::invocations::state::DEAD_LETTERED
        ) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            m = socket.recv() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                _ => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn find_invocation(
    state: &AppState,
    tenant_id: &str,
    id: &str,
) -> Result<nimbus_core::db::invocation::Model, ApiError> {
    use sea_orm::EntityTrait as _;
    nimbus_core::db::invocation::Entity::find_by_id(id.to_string())
        .one(&state.db)
        .await
        .map_err(Error::from)?
        .filter(|i| i.tenant_id == tenant_id)
        .ok_or_else(|| Error::not_found("Invocation", id).into())
}

/// Query of the dead-letters listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u64>,
}

/// `GET /v1/functions/{name}/dead-letters`: events that failed every attempt.
#[utoipa::path(get, path = "/v1/functions/{name}/dead-letters", tag = "invocation",
    params(("name" = String, Path), DeadLettersQuery),
    responses((status = 200, description = "Dead letters, newest first, with their events and every attempt's error", body = DeadLetterList),
        (status = 404, description = "No such function", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<DeadLettersQuery>,
) -> ApiResult<Response> {
    use nimbus_core::db::invocation;
    use sea_orm::{
        ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
    };
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    crate::queries::find_function(&state.db, &tenant, &name).await?;
    let rows = invocation::Entity::find()
        .filter(invocation::Column::TenantId.eq(&tenant.id))
        .filter(invocation::Column::FunctionName.eq(&name))
        .filter(invocation::Column::State.eq(events::invocations::state::DEAD_LETTERED))
        .order_by_desc(invocation::Column::Id)
        .limit(q.limit.unwrap_or(100).clamp(1, 1000))
        .all(&state.db)
        .await
        .map_err(Error::from)?;
    let dead_letters = rows
        .iter()
        .map(|i| DeadLetterView {
            invocation: i.into(),
            id: i.id.clone(),
            event: serde_json::from_slice(&i.event)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&i.event))),
        })
        .collect();
    Ok(axum::Json(DeadLetterList { dead_letters }).into_response())
}

/// `POST /v1/dead-letters/{id}/replay`: runs a dead letter's event again, as a new
/// asynchronous invocation.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "invocation",
    params(("id" = String, Path)),
    responses((status = 202, description = "`{invocation_id}` of the new invocation", body = Replayed),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "The invocation is not dead-lettered", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let inv = find_invocation(&state, &tenant.id, &id).await?;
    if inv.state != events::invocations::state::DEAD_LETTERED {
        return Err(Error::Conflict(format!(
            "invocation {id} is {}, not a dead letter",
            inv.state
        ))
        .into());
    }
    let new_id = events::invocations::enqueue(
        &state.db,
        &state.bus,
        events::invocations::NewInvocation {
            tenant_id: &tenant.id,
            function: &inv.function_name,
            qualifier: inv.qualifier.as_deref(),
            event: inv.event.clone().into(),
            origin: events::invocations::Origin::Replay,
            replay_of: Some(&inv.id),
            trace: crate::error::trace(),
        },
    )
    .await
    .map_err(Error::from)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Replayed {
            invocation_id: new_id,
            replay_of: inv.id,
        }),
    )
        .into_response())
}
