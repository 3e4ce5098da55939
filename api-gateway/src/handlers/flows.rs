//! State machines (Amazon States Language) and their executions: the API of the
//! `orchestration` crate, which runs them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_core::db::{execution, execution_event, state_machine};
use nimbus_core::model::Role;
use nimbus_core::{Error, rfc3339};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::views::{
    ExecutionList, ExecutionStarted, ExecutionView, HistoryEvent, HistoryView, MachineBody,
    MachineList, MachineView,
};

impl From<&state_machine::Model> for MachineView {
    fn from(m: &state_machine::Model) -> Self {
        MachineView {
            name: m.name.clone(),
            definition: serde_json::from_str(&m.definition).unwrap_or(Value::Null),
            created_at: rfc3339(m.created_at),
            updated_at: rfc3339(m.updated_at),
        }
    }
}

impl From<&execution::Model> for ExecutionView {
    fn from(e: &execution::Model) -> Self {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
        ExecutionView {
            execution_id: e.id.clone(),
            state_machine: e.machine_name.clone(),
            name: e.name.clone(),
            status: e.status.clone(),
            input: json(&e.input),
            output: e.output.as_deref().map(json),
            error: e.error.clone(),
            cause: e.cause.clone(),
            started_at: rfc3339(e.started_at),
            stopped_at: e.stopped_at.map(rfc3339),
        }
    }
}

impl From<&execution_event::Model> for HistoryEvent {
    fn from(e: &execution_event::Model) -> Self {
        HistoryEvent {
            id: e.seq,
            kind: e.kind.clone(),
            timestamp: rfc3339(e.at),
            state: e.state.clone(),
            detail: serde_json::from_str(&e.detail).unwrap_or(Value::Null),
        }
    }
}

/// Body of `POST /v1/state-machines`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachine {
    name: String,
    /// The ASL definition.
    definition: Value,
}

/// Body of `PUT /v1/state-machines/{name}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    definition: Value,
}

/// `POST /v1/state-machines`: checks the definition (400 naming the state) and
/// stores it.
#[utoipa::path(post, path = "/v1/state-machines", tag = "orchestration", request_body = CreateMachine, responses((status = 201, description = "The state machine", body = MachineBody), (status = 400, description = "InvalidRequest: the definition is refused, naming the state", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<CreateMachine>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?;
    let m = orchestration::store::create(
        &state.db,
        &tenant.id,
        &body.name,
        &body.definition,
        orchestration::MAX_MACHINES,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(MachineBody {
            state_machine: MachineView::from(&m),
        }),
    )
        .into_response())
}

/// `GET /v1/state-machines`.
#[utoipa::path(get, path = "/v1/state-machines", tag = "orchestration", responses((status = 200, description = "The tenant's state machines", body = MachineList), (status = 401, description = "Unauthenticated", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let all = orchestration::store::machines(&state.db, &tenant.id).await?;
    Ok(axum::Json(MachineList {
        state_machines: all.iter().map(MachineView::from).collect(),
    })
    .into_response())
}

/// `GET /v1/state-machines/{name}`.
#[utoipa::path(get, path = "/v1/state-machines/{name}", tag = "orchestration", params(("name" = String, Path)), responses((status = 200, description = "The state machine", body = MachineBody), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let m = orchestration::store::machine(&state.db, &tenant.id, &name).await?;
    Ok(axum::Json(MachineBody {
        state_machine: MachineView::from(&m),
    })
    .into_response())
}

/// `PUT /v1/state-machines/{name}`: a new definition (running executions keep theirs).
#[utoipa::path(put, path = "/v1/state-machines/{name}", tag = "orchestration", params(("name" = String, Path)), request_body = UpdateMachine, responses((status = 200, description = "The state machine", body = MachineBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<UpdateMachine>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?;
    let m = orchestration::store::update(&state.db, &tenant.id, &name, &body.definition).await?;
    Ok(axum::Json(MachineBody {
        state_machine: MachineView::from(&m),
    })
    .into_response())
}

/// `DELETE /v1/state-machines/{name}`: its running executions are aborted.
#[utoipa::path(delete, path = "/v1/state-machines/{name}", tag = "orchestration", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?;
    orchestration::store::delete(&state.db, &tenant.id, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `POST /v1/state-machines/{name}/executions`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartExecution {
    /// The execution's input (default `{}`).
    #[serde(default)]
    input: Option<Value>,
    /// A name unique for this machine: starting again with it answers the same
    /// execution.
    #[serde(default)]
    name: Option<String>,
}

/// Largest execution input, bytes (as Step Functions: 256 KiB).
const MAX_INPUT: usize = 256 * 1024;

/// `POST /v1/state-machines/{name}/executions` → 202 with the execution id.
#[utoipa::path(post, path = "/v1/state-machines/{name}/executions", tag = "orchestration", params(("name" = String, Path)), request_body = StartExecution, responses((status = 202, description = "Started (or, with a name already used, the execution of that name)", body = ExecutionStarted), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The name is used with another input", body = ErrorBody), (status = 429, description = "Too many running executions", body = ErrorBody)), security(("bearer" = [])))]
pub async fn start(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<StartExecution>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let input = body.input.unwrap_or_else(|| serde_json::json!({}));
    if input.to_string().len() > MAX_INPUT {
        return Err(Error::PayloadTooLarge(format!(
            "an execution's input is at most {MAX_INPUT} bytes"
        ))
        .into());
    }
    let m = orchestration::store::machine(&state.db, &tenant.id, &name).await?;
    let (e, _) = orchestration::store::start(
        &state.db,
        &m,
        &input,
        body.name.as_deref(),
        orchestration::MAX_RUNNING,
    )
    .await?;
    Ok(crate::accepted(ExecutionStarted {
        execution_id: e.id,
        started_at: rfc3339(e.started_at),
    }))
}

/// `?status=` of the execution list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

/// `GET /v1/state-machines/{name}/executions?status=RUNNING`.
#[utoipa::path(get, path = "/v1/state-machines/{name}/executions", tag = "orchestration", params(("name" = String, Path), ("status" = Option<String>, Query), ("limit" = Option<u64>, Query)), responses((status = 200, description = "Executions, newest first", body = ExecutionList), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn executions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let m = orchestration::store::machine(&state.db, &tenant.id, &name).await?;
    let list = orchestration::store::executions(
        &state.db,
        &m,
        q.status.as_deref(),
        q.limit.unwrap_or(100).min(1000),
    )
    .await?;
    Ok(axum::Json(ExecutionList {
        executions: list.iter().map(ExecutionView::from).collect(),
    })
    .into_response())
}

/// `GET /v1/executions/{id}`.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "orchestration", params(("id" = String, Path)), responses((status = 200, description = "The execution", body = ExecutionView), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn describe(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let e = orchestration::store::execution(&state.db, &tenant.id, &id).await?;
    Ok(axum::Json(ExecutionView::from(&e)).into_response())
}

/// `?after=` of the history.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    #[serde(default)]
    after: Option<i32>,
    #[serde(default)]
    limit: Option<u64>,
}

/// `GET /v1/executions/{id}/history`: every event, in order (`after`: from that
/// event on, for following a running execution).
#[utoipa::path(get, path = "/v1/executions/{id}/history", tag = "orchestration", params(("id" = String, Path), ("after" = Option<i32>, Query), ("limit" = Option<u64>, Query)), responses((status = 200, description = "The events", body = HistoryView), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let e = orchestration::store::execution(&state.db, &tenant.id, &id).await?;
    let events = orchestration::store::history(
        &state.db,
        &e,
        q.after.unwrap_or(0).max(0),
        q.limit.unwrap_or(1000).min(10_000),
    )
    .await?;
    Ok(axum::Json(HistoryView {
        status: e.status.clone(),
        events: events.iter().map(HistoryEvent::from).collect(),
    })
    .into_response())
}

/// Body of `POST /v1/executions/{id}/stop`.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopExecution {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    cause: Option<String>,
}

/// `POST /v1/executions/{id}/stop`: ABORTED (a finished execution is left as it is).
#[utoipa::path(post, path = "/v1/executions/{id}/stop", tag = "orchestration", params(("id" = String, Path)), request_body = StopExecution, responses((status = 200, description = "The execution", body = ExecutionView), (status = 404, description = "Not found", body = ErrorBody)), security(("bearer" = [])))]
pub async fn stop(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    // The body is optional.
    let body: StopExecution = if body.iter().all(u8::is_ascii_whitespace) {
        StopExecution::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("the body is not a stop request: {e}")))?
    };
    let e = orchestration::store::execution(&state.db, &tenant.id, &id).await?;
    orchestration::store::stop(&state.db, &e, body.error.as_deref(), body.cause.as_deref()).await?;
    let e = orchestration::store::execution(&state.db, &tenant.id, &id).await?;
    Ok(axum::Json(ExecutionView::from(&e)).into_response())
}
