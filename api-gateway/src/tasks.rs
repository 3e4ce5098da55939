//! What every change to a function shares: one change at a time ([`claim`]), none
//! while it is being deleted, its task recorded and answered with 202
//! ([`start_task`]), and this gateway's router told at once.

use nimbus_core::Error;
use nimbus_core::db::group::Turn;
use nimbus_core::db::{Batch, function, task};
use nimbus_core::model::FunctionState;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};
use serde_json::Value;
use workflow::{NewTask, TaskKind};

use crate::AppState;
use crate::error::request_id;

/// Claims the function for one change at a time: fails with 409 if a task is running.
pub async fn claim(
    txn: &DatabaseTransaction,
    f: &function::Model,
    task_id: &str,
    state: Option<FunctionState>,
) -> Result<(), Error> {
    let mut q = function::Entity::update_many()
        .col_expr(function::Column::PendingTask, Expr::value(task_id))
        .col_expr(
            function::Column::UpdatedAt,
            Expr::value(nimbus_core::now_ms()),
        );
    if let Some(s) = state {
        q = q.col_expr(function::Column::State, Expr::value(s.as_str()));
    }
    let r = q
        .filter(function::Column::Id.eq(&f.id))
        .filter(function::Column::PendingTask.is_null())
        .exec(txn)
        .await?;
    if r.rows_affected == 0 {
        return Err(Error::Conflict(format!(
            "function '{}' is being changed by another task; try again when it finishes",
            f.name
        )));
    }
    Ok(())
}

/// Records the task and answers 202, after flushing the task's first command.
pub async fn start_task(
    state: &AppState,
    turn: Turn,
    task_id: String,
    kind: TaskKind,
    f: &function::Model,
    params: Value,
) -> Result<(task::Model, Vec<workflow::outbox::Message>), Error> {
    let (t, ids) = workflow::submit(turn.txn(), new_task(task_id, kind, f, params)).await?;
    turn.commit().await?;
    accepted(state, &t, &ids, kind, f);
    Ok((t, ids))
}

/// [`start_task`] for a change whose own writes are in `w` and need nothing read
/// back: they, the task and its first command are written together in one turn
/// (`group::write`: one round trip on SQLite). The error is the database's, for the
/// caller to tell a conflict from a failure.
pub async fn start_task_with(
    state: &AppState,
    mut w: Batch,
    task_id: String,
    kind: TaskKind,
    f: &function::Model,
    params: Value,
) -> Result<(task::Model, Vec<workflow::outbox::Message>), sea_orm::DbErr> {
    let (t, ids) = workflow::submit_later(&mut w, new_task(task_id, kind, f, params));
    nimbus_core::db::group::write(&state.db, w).await?;
    accepted(state, &t, &ids, kind, f);
    Ok((t, ids))
}

fn new_task(task_id: String, kind: TaskKind, f: &function::Model, params: Value) -> NewTask {
    NewTask {
        id: task_id,
        kind,
        tenant_id: f.tenant_id.clone(),
        function_id: f.id.clone(),
        function_name: f.name.clone(),
        params,
        request_id: request_id(),
        trace: crate::error::trace(),
    }
}

/// After the commit: the first command goes out, and the log says so.
fn accepted(
    state: &AppState,
    t: &task::Model,
    rows: &[workflow::outbox::Message],
    kind: TaskKind,
    f: &function::Model,
) {
    workflow::outbox::flush_rows_in_background(&state.db, &state.bus, rows.to_vec());
    tracing::info!(task = %t.id, kind = kind.as_str(), function = %f.name, "task accepted");
}

/// Refuses a change to a function that is being deleted (409).
pub fn refuse_if_deleting(f: &function::Model) -> Result<(), Error> {
    if f.state == FunctionState::Deleting.as_str() {
        return Err(Error::Conflict(format!(
            "function '{}' is being deleted",
            f.name
        )));
    }
    Ok(())
}

/// This gateway's own router sees a change at once; others through the change event.
pub async fn invalidate_local(state: &AppState, tenant_id: &str, name: &str) {
    if let Some(dp) = &state.data_path {
        dp.router.invalidate(tenant_id, name).await;
    }
}
