//! The workflow module: turns a task into step commands for the sub-resource services
//! and advances on their results.
//!
//! - [`plan`]: the task kinds, as data.
//! - [`submit`]: records a new task and its first command (called by the API gateway,
//!   inside its own transaction).
//! - [`engine`]: consumes step results, retries with backoff, compensates, and runs the
//!   final metadata commit inline.
//! - [`outbox`]: the transactional outbox every writer uses.

pub mod engine;
pub mod metrics;
pub mod outbox;
pub mod plan;

use nimbus_core::db::Batch;
use nimbus_core::db::{task, task_step};
use nimbus_core::model::TaskState;
use proto::Message as _;
use proto::bus::{Phase, StepCommand};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, IntoActiveModel,
    QueryTrait, Set,
};
use serde_json::json;

pub use engine::run;
pub use plan::TaskKind;

/// What the gateway asks for.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The task's id, chosen by the caller (uploads are staged under it).
    pub id: String,
    /// The kind of task.
    pub kind: TaskKind,
    /// The owning tenant.
    pub tenant_id: String,
    /// The function the task changes.
    pub function_id: String,
    /// Its name.
    pub function_name: String,
    /// The request's parameters, passed to every step.
    pub params: serde_json::Value,
    /// The API request that caused it.
    pub request_id: String,
    /// That request's trace context: the task's steps continue its trace.
    pub trace: Option<nimbus_core::trace::TraceContext>,
}

/// Records a task and the command of its first step, in the caller's transaction.
/// Returns the task and the outbox rows to [`outbox::flush_rows`] after the commit.
pub async fn submit(
    txn: &DatabaseTransaction,
    new: NewTask,
) -> Result<(task::Model, Vec<outbox::Message>), DbErr> {
    let mut w = Batch::new(txn.get_database_backend());
    let submitted = submit_later(&mut w, new);
    w.run(txn).await?;
    Ok(submitted)
}

/// [`submit`], with its writes (the task, its steps in one statement, and the first
/// command) added to `w` instead of run now.
pub fn submit_later(w: &mut Batch, new: NewTask) -> (task::Model, Vec<outbox::Message>) {
    let now = nimbus_core::now_ms();
    let id = new.id.clone();
    let steps = new.kind.steps();
    let t = task::Model {
        id: id.clone(),
        tenant_id: new.tenant_id.clone(),
        kind: new.kind.as_str().into(),
        function_id: new.function_id.clone(),
        function_name: new.function_name.clone(),
        state: TaskState::Running.as_str().into(),
        cursor: 0,
        phase: "forward".into(),
        params: new.params.to_string(),
        context: "{}".into(),
        error: None,
        request_id: new.request_id.clone(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        traceparent: new.trace.map(|t| t.traceparent()),
    };
    w.insert(t.clone().into_active_model().reset_all());
    let steps_insert = task_step::Entity::insert_many(steps.iter().enumerate().map(|(i, spec)| {
        task_step::ActiveModel {
            task_id: Set(id.clone()),
            idx: Set(i as i32),
            service: Set(spec.service.into()),
            action: Set(spec.action.as_str().into()),
            compensation: Set(spec.compensation.map(|a| a.as_str().to_string())),
            state: Set(if i == 0 {
                TaskState::Running.as_str()
            } else {
                TaskState::Pending.as_str()
            }
            .into()),
            attempts: Set(if i == 0 { 1 } else { 0 }),
            comp_attempts: Set(0),
            error: Set(None),
            sent_at: Set(if i == 0 { Some(now) } else { None }),
            finished_at: Set(None),
        }
    }))
    .build(w.backend());
    w.push(steps_insert);
    let first = steps[0];
    let cmd = StepCommand {
        task_id: id.clone(),
        step_index: 0,
        service: first.service.into(),
        action: first.action.as_str().into(),
        phase: Phase::Forward as i32,
        attempt: 1,
        tenant_id: new.tenant_id,
        function_name: new.function_name,
        params_json: json!({"params": new.params, "context": {}})
            .to_string()
            .into_bytes(),
        request_id: new.request_id,
    };
    let oid = outbox::put_later(
        w,
        &nimbus_core::bus::names::step_queue(first.service),
        cmd.encode_to_vec(),
        0,
        new.trace.map(|t| t.traceparent()),
    );
    (t, vec![oid])
}
