//! What changed and what ran: the tenant's tasks and asynchronous invocations, newest
//! first, filtered by function and state.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use nimbus_core::Error;
use nimbus_core::db::{invocation, task, task_step};
use nimbus_core::model::Role;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::views::TaskView;

/// At most this many rows per answer.
const MAX_LIMIT: u64 = 1000;

/// Query of the task and invocation listings.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this function's.
    #[serde(default)]
    function: Option<String>,
    /// Only those in this state (tasks: `Running`, `Succeeded`, `Failed`;
    /// invocations: `Queued`, `Running`, `Succeeded`, `Failed`, `DeadLettered`).
    #[serde(default)]
    state: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    #[serde(default)]
    limit: Option<u64>,
}

impl HistoryQuery {
    fn check(&self, states: &[&str]) -> Result<u64, Error> {
        if let Some(s) = &self.state
            && !states.contains(&s.as_str())
        {
            return Err(Error::Invalid(format!(
                "state '{s}' is unknown: use one of {}",
                states.join(", ")
            )));
        }
        if let Some(f) = &self.function {
            nimbus_core::model::validate_name("function", f)?;
        }
        match self.limit {
            Some(0) => Err(Error::Invalid("limit must be at least 1".into())),
            Some(n) if n > MAX_LIMIT => {
                Err(Error::Invalid(format!("limit must be at most {MAX_LIMIT}")))
            }
            n => Ok(n.unwrap_or(50)),
        }
    }
}

/// The tenant's tasks, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskList {
    /// The tasks, with their steps.
    pub tasks: Vec<TaskView>,
}

/// `GET /v1/tasks`: the tenant's tasks (every change to a function), newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(HistoryQuery),
    responses((status = 200, description = "Tasks, newest first, with their steps", body = TaskList),
        (status = 400, description = "InvalidRequest", body = ErrorBody),
        (status = 401, description = "Unauthenticated", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn tasks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let limit = q.check(&["Running", "Succeeded", "Failed"])?;
    let mut find = task::Entity::find().filter(task::Column::TenantId.eq(&tenant.id));
    if let Some(f) = &q.function {
        find = find.filter(task::Column::FunctionName.eq(f));
    }
    if let Some(s) = &q.state {
        find = find.filter(task::Column::State.eq(s));
    }
    // Ids are time-ordered (UUID v7): newest first.
    let rows = find
        .order_by_desc(task::Column::Id)
        .limit(limit)
        .all(&state.db)
        .await
        .map_err(Error::from)?;
    let mut steps: HashMap<String, Vec<task_step::Model>> = HashMap::new();
    if !rows.is_empty() {
        for s in task_step::Entity::find()
            .filter(task_step::Column::TaskId.is_in(rows.iter().map(|t| t.id.clone())))
            .order_by_asc(task_step::Column::Idx)
            .all(&state.db)
            .await
            .map_err(Error::from)?
        {
            steps.entry(s.task_id.clone()).or_default().push(s);
        }
    }
    let tasks = rows
        .iter()
        .map(|t| TaskView::new(t, steps.get(&t.id).map(Vec::as_slice).unwrap_or_default()))
        .collect();
    Ok(axum::Json(TaskList { tasks }).into_response())
}

/// The tenant's asynchronous invocations, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InvocationList {
    /// The invocations, as `GET /v1/invocations/{id}` shows each.
    pub invocations: Vec<events::invocations::InvocationView>,
}

/// `GET /v1/invocations`: the tenant's asynchronous invocations, newest first.
#[utoipa::path(get, path = "/v1/invocations", tag = "invocation", params(HistoryQuery),
    responses((status = 200, description = "Asynchronous invocations, newest first", body = InvocationList),
        (status = 400, description = "InvalidRequest", body = ErrorBody),
        (status = 401, description = "Unauthenticated", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn invocations(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    use events::invocations::state as st;
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let limit = q.check(&[
        st::QUEUED,
        st::RUNNING,
        st::SUCCEEDED,
        st::FAILED,
        st::DEAD_LETTERED,
    ])?;
    let mut find = invocation::Entity::find().filter(invocation::Column::TenantId.eq(&tenant.id));
    if let Some(f) = &q.function {
        find = find.filter(invocation::Column::FunctionName.eq(f));
    }
    if let Some(s) = &q.state {
        find = find.filter(invocation::Column::State.eq(s));
    }
    let rows = find
        .order_by_desc(invocation::Column::Id)
        .limit(limit)
        .all(&state.db)
        .await
        .map_err(Error::from)?;
    let invocations = rows.iter().map(Into::into).collect();
    Ok(axum::Json(InvocationList { invocations }).into_response())
}
