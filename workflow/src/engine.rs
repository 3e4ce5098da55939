//! The engine: advances tasks on step results.
//!
//! Every state change and the messages it causes are committed in one transaction
//! (with the outbox), and the result delivery is acked only after that commit. A
//! crash anywhere therefore either loses nothing (the result is redelivered) or
//! repeats nothing (a duplicate result is recognised as stale and ignored).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::bus::{Delivery, DynBus, names};
use nimbus_core::config::WorkflowConfig;
use nimbus_core::db::{Batch, alias, function, reservation, task, task_step, version};
use nimbus_core::model::{ConfigChange, FunctionState, TaskState};
use nimbus_core::shutdown::Shutdown;
use nimbus_core::step::StepHandler;
use proto::Message as _;
use proto::bus::{Phase, StepCommand, StepResult, change_event};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, IntoActiveModel, JoinType, QueryFilter, QuerySelect, Set,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::outbox;
use crate::plan::{StepSpec, TaskKind, WORKFLOW};

/// Task and step states, as stored ([`TaskState`]'s names).
const RUNNING: &str = TaskState::Running.as_str();
const SUCCEEDED: &str = TaskState::Succeeded.as_str();
const FAILED: &str = TaskState::Failed.as_str();
const COMPENSATING: &str = TaskState::Compensating.as_str();
const COMPENSATED: &str = TaskState::Compensated.as_str();

const FORWARD: &str = "forward";
const COMPENSATE: &str = "compensate";

/// An inline step run without a savepoint failed: its turn is to be undone and
/// applied again with savepoints.
const INLINE_STEP_FAILED: &str = "an inline step failed outside a savepoint";

/// What applying one result carries along.
struct Pending {
    /// The engine's own writes (steps, the task, the outbox), waiting to run.
    w: Batch,
    /// Whether inline steps run in savepoints of their own.
    guarded: bool,
}

/// The task engine.
pub struct Engine {
    /// The metadata store, where task state lives.
    db: DatabaseConnection,
    /// Where step commands go and results come from.
    bus: DynBus,
    /// Retry and timeout policy.
    cfg: WorkflowConfig,
    /// Step services that share this process and database, by name: their commands
    /// that can run inline do, in the engine's transaction (`nimbus up`).
    inline: HashMap<&'static str, Arc<dyn StepHandler>>,
}

/// Runs the engine until shutdown: consumes step results, sweeps the outbox, and
/// resends commands that got no answer in time. `inline` are the step services
/// that share this process and its database (none when the engine runs alone).
pub async fn run(
    cfg: WorkflowConfig,
    db: DatabaseConnection,
    bus: DynBus,
    inline: Vec<Arc<dyn StepHandler>>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let inline = inline.into_iter().map(|h| (h.service(), h)).collect();
    let engine = Arc::new(Engine {
        db,
        bus,
        cfg,
        inline,
    });
    let mut results = engine.bus.consume(names::RESULTS, 64).await?;
    let sweeper = tokio::spawn(engine.clone().sweep_loop(shutdown.clone()));
    let slots = Arc::new(Semaphore::new(16));
    tracing::info!("workflow engine running");
    loop {
        let delivery = tokio::select! {
            d = results.recv() => match d { Some(d) => d, None => break },
            _ = shutdown.wait() => break,
        };
        let permit = slots.clone().acquire_owned().await?;
        let engine = engine.clone();
        tokio::spawn(async move {
            engine.handle_delivery(delivery).await;
            drop(permit);
        });
    }
    let _ = slots.acquire_many(16).await;
    sweeper.abort();
    Ok(())
}

impl Engine {
    async fn handle_delivery(&self, delivery: Delivery) {
        let result = match StepResult::decode(delivery.payload.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "undecodable step result; dead-lettering");
                delivery.nack(false).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "workflow result",
            task = %result.task_id,
            step = result.step_index,
            request_id = %result.request_id,
            otel.kind = "consumer",
        );
        nimbus_core::trace::enter_str(&span, delivery.traceparent.as_deref());
        match tracing::Instrument::instrument(self.on_result(&result), span).await {
            Ok(msgs) => {
                delivery.ack().await;
                outbox::flush_rows(&self.db, &self.bus, &msgs).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, task = %result.task_id, "could not apply step result; requeueing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                delivery.nack(true).await;
            }
        }
    }

    async fn sweep_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        let every = Duration::from_millis(self.cfg.relay_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return,
            }
            if let Err(e) = outbox::sweep(&self.db, &self.bus).await {
                tracing::warn!(error = %e, "outbox sweep failed");
            }
            if let Err(e) = self.resend_stale().await {
                tracing::warn!(error = %e, "stale-step check failed");
            }
        }
    }

    /// Resends the command of every step that got no result within the step timeout.
    /// The attempt number is unchanged, so the service replays its recorded result if
    /// it did the work already.
    async fn resend_stale(&self) -> Result<(), DbErr> {
        let cutoff = nimbus_core::now_ms() - self.cfg.step_timeout_ms as i64;
        let stale = task_step::Entity::find()
            .filter(task_step::Column::State.is_in([RUNNING, COMPENSATING]))
            .filter(task_step::Column::SentAt.lt(cutoff))
            .limit(100)
            .all(&self.db)
            .await?;
        for s in stale {
            let turn = nimbus_core::db::group::turn(&self.db).await?;
            match self.resend(turn.txn(), &s).await? {
                Some(msg) => {
                    turn.commit().await?;
                    outbox::flush_rows(&self.db, &self.bus, &[msg]).await;
                }
                None => turn.rollback().await?,
            }
        }
        Ok(())
    }

    /// Resends the command of stale step `s` in `txn`, if it is still waiting.
    async fn resend(
        &self,
        txn: &DatabaseTransaction,
        s: &task_step::Model,
    ) -> Result<Option<outbox::Message>, DbErr> {
        let Some((t, step)) = lock_task_and_step(txn, &s.task_id, s.idx).await? else {
            return Ok(None);
        };
        if t.state != RUNNING || t.cursor != s.idx || step.sent_at != s.sent_at {
            return Ok(None);
        }
        let Some(kind) = TaskKind::parse(&t.kind) else {
            return Ok(None);
        };
        let spec = kind.steps()[s.idx as usize];
        let (phase, attempt) = if step.state == COMPENSATING {
            (Phase::Compensate, step.comp_attempts)
        } else {
            (Phase::Forward, step.attempts)
        };
        tracing::warn!(task = %t.id, step = s.idx, "no result within the step timeout; resending");
        let mut w = Batch::new(txn.get_database_backend());
        let msg = send(&mut w, &t, s.idx, spec, phase, attempt as u32, 0);
        let mut am = step.into_active_model();
        am.sent_at = Set(Some(nimbus_core::now_ms()));
        w.update(am)?;
        w.run(txn).await?;
        Ok(Some(msg))
    }

    /// Applies one step result. Returns the outbox rows to flush after the ack.
    pub async fn on_result(&self, r: &StepResult) -> Result<Vec<outbox::Message>, DbErr> {
        // A turn at writing: on SQLite, with the other writers of this process.
        // Inline steps run without savepoints of their own (two round trips each):
        // if one fails, the whole turn is undone and applied again with them.
        let mut turn = nimbus_core::db::group::turn(&self.db).await?;
        let applied = match self.apply(turn.txn(), r, false).await {
            Err(DbErr::Custom(why)) if why == INLINE_STEP_FAILED => {
                turn.rollback().await?;
                turn = nimbus_core::db::group::turn(&self.db).await?;
                self.apply(turn.txn(), r, true).await?
            }
            applied => applied?,
        };
        match applied {
            Some(msgs) => {
                turn.commit().await?;
                Ok(msgs)
            }
            None => {
                turn.rollback().await?;
                Ok(vec![])
            }
        }
    }

    /// [`on_result`](Self::on_result) in `txn`: None if the result changes nothing.
    /// Inline steps run in savepoints of their own if `guarded`; otherwise one that
    /// fails ends this with [`INLINE_STEP_FAILED`], and its writes are to be undone.
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        r: &StepResult,
        guarded: bool,
    ) -> Result<Option<Vec<outbox::Message>>, DbErr> {
        let Some((t, step)) = lock_task_and_step(txn, &r.task_id, r.step_index as i32).await?
        else {
            tracing::warn!(task = %r.task_id, step = r.step_index, "result for an unknown task or step; ignored");
            return Ok(None);
        };
        // The engine's own writes (steps, the task, the outbox) go in one batch at
        // the end: nothing reads them back before then.
        let mut p = Pending {
            w: Batch::new(txn.get_database_backend()),
            guarded,
        };
        let applied = self.apply_to(txn, &mut p, t, step, r).await?;
        p.w.run(txn).await?;
        Ok(applied)
    }

    /// Applies result `r` to task `t` (locked) and its step `step`, as they are in
    /// `txn` with `p`'s writes: the engine's writes go to `p`, to be run by the caller.
    async fn apply_to(
        &self,
        txn: &DatabaseTransaction,
        p: &mut Pending,
        mut t: task::Model,
        step: task_step::Model,
        r: &StepResult,
    ) -> Result<Option<Vec<outbox::Message>>, DbErr> {
        let Some(kind) = TaskKind::parse(&t.kind) else {
            return Ok(None);
        };
        let idx = r.step_index as i32;
        let expected = match (t.phase.as_str(), r.phase()) {
            (FORWARD, Phase::Forward) => step.state == RUNNING && step.attempts == r.attempt as i32,
            (COMPENSATE, Phase::Compensate) => {
                step.state == COMPENSATING && step.comp_attempts == r.attempt as i32
            }
            _ => false,
        };
        if t.state != RUNNING || t.cursor != idx || !expected {
            tracing::debug!(task = %t.id, step = idx, "stale or duplicate result; ignored");
            return Ok(None);
        }
        let spec = kind.steps()[idx as usize];
        let now = nimbus_core::now_ms();
        let mut msgs = Vec::new();
        let mut s = step.clone().into_active_model();
        if r.phase() == Phase::Forward {
            if r.ok {
                s.state = Set(SUCCEEDED.into());
                s.error = Set(None);
                s.finished_at = Set(Some(now));
                p.w.update(s)?;
                merge_context(&mut t, &r.output_json);
                self.advance(txn, p, &mut t, kind, idx + 1, &mut msgs)
                    .await?;
            } else if r.retryable && step.attempts < self.cfg.step_max_attempts as i32 {
                let attempt = step.attempts + 1;
                let due = now + self.backoff(step.attempts);
                s.attempts = Set(attempt);
                s.error = Set(Some(r.error.clone()));
                s.sent_at = Set(Some(due));
                p.w.update(s)?;
                tracing::info!(task = %t.id, step = idx, attempt, error = %r.error, "step failed; retrying");
                msgs.push(send(
                    &mut p.w,
                    &t,
                    idx,
                    spec,
                    Phase::Forward,
                    attempt as u32,
                    due,
                ));
                save_task(&mut p.w, &t)?;
            } else {
                s.state = Set(FAILED.into());
                s.error = Set(Some(r.error.clone()));
                s.finished_at = Set(Some(now));
                p.w.update(s)?;
                t.error = Some(format!(
                    "{}.{} failed: {}",
                    spec.service, spec.action, r.error
                ));
                self.compensate_from(txn, p, &mut t, kind, idx, &mut msgs)
                    .await?;
            }
        } else {
            if r.ok {
                s.state = Set(COMPENSATED.into());
                s.finished_at = Set(Some(now));
                p.w.update(s)?;
            } else if r.retryable && step.comp_attempts < self.cfg.step_max_attempts as i32 {
                let attempt = step.comp_attempts + 1;
                let due = now + self.backoff(step.comp_attempts);
                s.comp_attempts = Set(attempt);
                s.sent_at = Set(Some(due));
                p.w.update(s)?;
                msgs.push(send(
                    &mut p.w,
                    &t,
                    idx,
                    spec,
                    Phase::Compensate,
                    attempt as u32,
                    due,
                ));
                save_task(&mut p.w, &t)?;
                return Ok(Some(msgs));
            } else {
                // The compensation failed for good: record it and go on undoing the rest.
                s.state = Set(FAILED.into());
                s.error = Set(Some(format!("compensation failed: {}", r.error)));
                p.w.update(s)?;
            }
            self.compensate_from(txn, p, &mut t, kind, idx, &mut msgs)
                .await?;
        }
        Ok(Some(msgs))
    }

    fn backoff(&self, attempts_so_far: i32) -> i64 {
        let exp = (attempts_so_far.max(1) - 1).min(16) as u32;
        (self.cfg.retry_base_ms.saturating_mul(1u64 << exp)) as i64
    }

    /// Moves the task to step `next`: sends its command, or runs it inline if it is the
    /// engine's own `activate`.
    async fn advance(
        &self,
        txn: &DatabaseTransaction,
        p: &mut Pending,
        t: &mut task::Model,
        kind: TaskKind,
        next: i32,
        msgs: &mut Vec<outbox::Message>,
    ) -> Result<(), DbErr> {
        let spec = kind.steps()[next as usize];
        t.cursor = next;
        // Updated by its key without reading it first.
        let mut s = task_step::ActiveModel {
            task_id: Set(t.id.clone()),
            idx: Set(next),
            ..Default::default()
        };
        let now = nimbus_core::now_ms();
        if spec.service == WORKFLOW {
            s.attempts = Set(1);
            match activate(txn, &mut p.w, t, kind).await? {
                Ok(result) => {
                    s.state = Set(SUCCEEDED.into());
                    s.finished_at = Set(Some(now));
                    p.w.update(s)?;
                    let mut ctx: Value =
                        serde_json::from_str(&t.context).unwrap_or_else(|_| json!({}));
                    ctx["result"] = result;
                    t.context = ctx.to_string();
                    t.state = SUCCEEDED.into();
                    t.finished_at = Some(now);
                    save_task(&mut p.w, t)?;
                    crate::metrics::task_ended(&t.kind, SUCCEEDED, now - t.created_at);
                    msgs.push(change_event(&mut p.w, t));
                    tracing::info!(task = %t.id, kind = t.kind, "task succeeded");
                }
                Err(why) => {
                    s.state = Set(FAILED.into());
                    s.error = Set(Some(why.clone()));
                    s.finished_at = Set(Some(now));
                    p.w.update(s)?;
                    t.error = Some(format!("activate failed: {why}"));
                    self.compensate_from(txn, p, t, kind, next, msgs).await?;
                }
            }
        } else {
            s.state = Set(RUNNING.into());
            s.attempts = Set(1);
            s.sent_at = Set(Some(now));
            p.w.update(s)?;
            let cmd = command(t, next, spec, Phase::Forward, 1);
            match self.inline.get(spec.service) {
                Some(h) if h.runs_inline(&cmd) => {
                    // The step runs here and its result is applied at once, in this
                    // transaction, as if it had come back from the service: the next
                    // step may run inline too. The task is saved by the last of them
                    // (`t` is carried, not re-read); the callers do not use `t` after
                    // this.
                    let result = if p.guarded {
                        nimbus_core::step::run_inline(&**h, txn, &cmd).await?
                    } else {
                        nimbus_core::step::run_inline_unguarded(&**h, txn, &cmd)
                            .await?
                            .ok_or_else(|| DbErr::Custom(INLINE_STEP_FAILED.into()))?
                    };
                    // The step as the update above leaves it (a pending step has no
                    // error and no compensation attempt yet).
                    let step = task_step::Model {
                        task_id: t.id.clone(),
                        idx: next,
                        service: spec.service.into(),
                        action: spec.action.as_str().into(),
                        compensation: spec.compensation.map(|a| a.as_str().to_string()),
                        state: RUNNING.into(),
                        attempts: 1,
                        comp_attempts: 0,
                        error: None,
                        sent_at: Some(now),
                        finished_at: None,
                    };
                    let more = Box::pin(self.apply_to(txn, p, t.clone(), step, &result)).await?;
                    msgs.extend(more.unwrap_or_default());
                }
                _ => {
                    msgs.push(put_command(&mut p.w, t, &cmd, spec, 0));
                    save_task(&mut p.w, t)?;
                }
            }
        }
        Ok(())
    }

    /// Compensates the succeeded steps before `from`, last first; when none is left,
    /// the task ends `Failed`.
    async fn compensate_from(
        &self,
        txn: &DatabaseTransaction,
        p: &mut Pending,
        t: &mut task::Model,
        kind: TaskKind,
        from: i32,
        msgs: &mut Vec<outbox::Message>,
    ) -> Result<(), DbErr> {
        // The steps are read below: the writes waiting go first.
        p.w.run(txn).await?;
        t.phase = COMPENSATE.into();
        for j in (0..from).rev() {
            let spec = kind.steps()[j as usize];
            if spec.compensation.is_none() {
                continue;
            }
            let Some(step) = task_step::Entity::find_by_id((t.id.clone(), j))
                .one(txn)
                .await?
            else {
                continue;
            };
            if step.state != SUCCEEDED {
                continue;
            }
            t.cursor = j;
            let mut s = step.into_active_model();
            s.state = Set(COMPENSATING.into());
            s.comp_attempts = Set(1);
            s.sent_at = Set(Some(nimbus_core::now_ms()));
            p.w.update(s)?;
            msgs.push(send(&mut p.w, t, j, spec, Phase::Compensate, 1, 0));
            save_task(&mut p.w, t)?;
            return Ok(());
        }
        finish_failed(txn, &mut p.w, t, kind).await?;
        msgs.push(change_event(&mut p.w, t));
        Ok(())
    }
}

/// Task `id` (locked) and its step `idx`, in one query.
async fn lock_task_and_step(
    txn: &DatabaseTransaction,
    id: &str,
    idx: i32,
) -> Result<Option<(task::Model, task_step::Model)>, DbErr> {
    let steps = task::Entity::belongs_to(task_step::Entity)
        .from(task::Column::Id)
        .to(task_step::Column::TaskId)
        .into();
    let row = task::Entity::find_by_id(id.to_string())
        .select_also(task_step::Entity)
        .join(JoinType::InnerJoin, steps)
        .filter(task_step::Column::Idx.eq(idx))
        .lock_exclusive()
        .one(txn)
        .await?;
    Ok(row.and_then(|(t, s)| Some((t, s?))))
}

/// Adds the update of task `t` to `w`.
fn save_task(w: &mut Batch, t: &task::Model) -> Result<(), DbErr> {
    let mut t = t.clone();
    t.updated_at = nimbus_core::now_ms();
    // Mark every field as changed: the model was edited in place.
    w.update(t.into_active_model().reset_all())
}

fn merge_context(t: &mut task::Model, output_json: &[u8]) {
    let mut ctx: Value = serde_json::from_str(&t.context).unwrap_or_else(|_| json!({}));
    if let (Some(obj), Ok(Value::Object(out))) = (
        ctx.as_object_mut(),
        serde_json::from_slice::<Value>(output_json),
    ) {
        obj.extend(out);
    }
    t.context = ctx.to_string();
}

/// Writes a step command to the outbox.
fn send(
    w: &mut Batch,
    t: &task::Model,
    idx: i32,
    spec: StepSpec,
    phase: Phase,
    attempt: u32,
    not_before: i64,
) -> outbox::Message {
    let cmd = command(t, idx, spec, phase, attempt);
    put_command(w, t, &cmd, spec, not_before)
}

/// The command of step `idx` of task `t`.
fn command(t: &task::Model, idx: i32, spec: StepSpec, phase: Phase, attempt: u32) -> StepCommand {
    let action = match phase {
        Phase::Forward => spec.action,
        Phase::Compensate => spec.compensation.unwrap_or(spec.action),
    };
    let params: Value = serde_json::from_str(&t.params).unwrap_or(Value::Null);
    let context: Value = serde_json::from_str(&t.context).unwrap_or(Value::Null);
    StepCommand {
        task_id: t.id.clone(),
        step_index: idx as u32,
        service: spec.service.to_string(),
        action: action.to_string(),
        phase: phase as i32,
        attempt,
        tenant_id: t.tenant_id.clone(),
        function_name: t.function_name.clone(),
        params_json: json!({"params": params, "context": context})
            .to_string()
            .into_bytes(),
        request_id: t.request_id.clone(),
    }
}

/// Writes `cmd` to the outbox, due at `not_before`.
fn put_command(
    w: &mut Batch,
    t: &task::Model,
    cmd: &StepCommand,
    spec: StepSpec,
    not_before: i64,
) -> outbox::Message {
    // Inside the span of the result that led here (or of the sweep).
    let parent = t
        .traceparent
        .as_deref()
        .and_then(nimbus_core::trace::TraceContext::parse);
    outbox::put_later(
        w,
        &names::step_queue(spec.service),
        cmd.encode_to_vec(),
        not_before,
        Some(nimbus_core::trace::current(parent).traceparent()),
    )
}

fn change_event(w: &mut Batch, t: &task::Model) -> outbox::Message {
    outbox::put_change_later(
        w,
        change_event::Kind::Function,
        &t.tenant_id,
        &t.function_name,
    )
}

/// Ends a task `Failed` and tells its function why.
async fn finish_failed(
    txn: &DatabaseTransaction,
    w: &mut Batch,
    t: &mut task::Model,
    kind: TaskKind,
) -> Result<(), DbErr> {
    let now = nimbus_core::now_ms();
    t.state = FAILED.into();
    t.finished_at = Some(now);
    save_task(w, t)?;
    crate::metrics::task_ended(&t.kind, FAILED, now - t.created_at);
    tracing::warn!(task = %t.id, kind = t.kind, error = ?t.error, "task failed");
    if let Some(f) = function::Entity::find_by_id(t.function_id.clone())
        .one(txn)
        .await?
    {
        let mut am = f.into_active_model();
        am.pending_task = Set(None);
        am.state_reason = Set(t.error.clone());
        if matches!(kind, TaskKind::CreateFunction | TaskKind::DeleteFunction) {
            am.state = Set(FunctionState::Failed.as_str().into());
        }
        am.updated_at = Set(now);
        am.update(txn).await?;
    }
    Ok(())
}

/// The engine's own final step: commits the task's effect on the function's metadata.
/// `Ok(Err(why))` is a permanent failure that leads to compensation. The function's
/// row is read here, under the task's lock, and its new values go to `w`, the
/// turn's batch (nothing reads them back before it runs); a delete runs at once.
async fn activate(
    txn: &DatabaseTransaction,
    w: &mut Batch,
    t: &task::Model,
    kind: TaskKind,
) -> Result<Result<Value, String>, DbErr> {
    let Some(f) = function::Entity::find_by_id(t.function_id.clone())
        .one(txn)
        .await?
    else {
        return Ok(Err("the function no longer exists".into()));
    };
    let ctx: Value = serde_json::from_str(&t.context).unwrap_or_else(|_| json!({}));
    let params: Value = serde_json::from_str(&t.params).unwrap_or_else(|_| json!({}));
    let now = nimbus_core::now_ms();
    let revision = f.revision + 1;
    let mut am = f.clone().into_active_model();
    am.pending_task = Set(None);
    am.state_reason = Set(None);
    am.revision = Set(revision);
    am.updated_at = Set(now);
    let result = match kind {
        TaskKind::CreateFunction | TaskKind::UpdateCode => {
            let Some(sha) = ctx["code_sha256"].as_str() else {
                return Ok(Err("code.store reported no digest".into()));
            };
            am.code_sha256 = Set(Some(sha.to_string()));
            am.code_size = Set(ctx["code_size"].as_i64().unwrap_or(0));
            am.state = Set(FunctionState::Active.as_str().into());
            // A new package may come with the runtime and handler it was checked for.
            if kind == TaskKind::UpdateCode {
                if let Some(r) = params["runtime"].as_str()
                    && r != f.runtime
                {
                    am.runtime = Set(r.to_string());
                    // A Lambda runtime name (python3.12) belonged to the old runtime.
                    am.runtime_name = Set(None);
                }
                if let Some(h) = params["handler"].as_str() {
                    am.handler = Set(h.to_string());
                }
            }
            w.update(am)?;
            json!({"code_sha256": sha})
        }
        TaskKind::UpdateConfig => {
            let c: ConfigChange = match serde_json::from_value(params["changes"].clone()) {
                Ok(c) => c,
                Err(e) => return Ok(Err(format!("the task's changes do not read: {e}"))),
            };
            if let Some(v) = c.memory_mb {
                am.memory_mb = Set(v as i32);
            }
            if let Some(v) = c.timeout_ms {
                am.timeout_ms = Set(v as i32);
            }
            if let Some(v) = c.handler {
                am.handler = Set(v);
            }
            // Sealed by the gateway: stored as given.
            if let Some(env) = c.env {
                am.env = Set(env);
            }
            if let Some(v) = c.reserved_concurrency {
                am.reserved_concurrency = Set(v.map(|n| n as i32));
            }
            if let Some(v) = c.provisioned_concurrency {
                am.provisioned_concurrency = Set(v as i32);
            }
            if let Some(v) = c.process_model {
                am.process_model = Set(v);
            }
            if let Some(q) = c.provisioned_qualifier {
                am.provisioned_qualifier = Set(q);
            }
            if let Some(w) = &c.scheduled_warmups {
                am.warmups =
                    Set(serde_json::to_string(w).map_err(|e| DbErr::Custom(e.to_string()))?);
            }
            if let Some(a) = &c.async_config {
                am.async_config =
                    Set(serde_json::to_string(a).map_err(|e| DbErr::Custom(e.to_string()))?);
            }
            if let Some(d) = c.description {
                am.description = Set(d);
            }
            if let Some(r) = c.role {
                am.role = Set(Some(r));
            }
            if let Some(n) = c.runtime_name {
                am.runtime_name = Set(Some(n));
            }
            w.update(am)?;
            json!({"revision": revision})
        }
        TaskKind::PublishVersion => {
            let Some(sha) = f.code_sha256.clone() else {
                return Ok(Err("the function has no code to publish".into()));
            };
            let n = f.latest_version + 1;
            w.insert(version::ActiveModel {
                id: Set(nimbus_core::new_id()),
                function_id: Set(f.id.clone()),
                version: Set(n),
                description: Set(params["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()),
                runtime: Set(f.runtime.clone()),
                handler: Set(f.handler.clone()),
                memory_mb: Set(f.memory_mb),
                timeout_ms: Set(f.timeout_ms),
                env: Set(f.env.clone()),
                code_sha256: Set(sha),
                code_size: Set(f.code_size),
                created_at: Set(now),
                process_model: Set(f.process_model.clone()),
            });
            am.latest_version = Set(n);
            w.update(am)?;
            json!({"version": n.to_string()})
        }
        TaskKind::DeleteFunction => {
            alias::Entity::delete_many()
                .filter(alias::Column::FunctionId.eq(&f.id))
                .exec(txn)
                .await?;
            version::Entity::delete_many()
                .filter(version::Column::FunctionId.eq(&f.id))
                .exec(txn)
                .await?;
            reservation::Entity::delete_many()
                .filter(reservation::Column::FunctionId.eq(&f.id))
                .exec(txn)
                .await?;
            nimbus_core::db::trigger::Entity::delete_many()
                .filter(nimbus_core::db::trigger::Column::TenantId.eq(&f.tenant_id))
                .filter(nimbus_core::db::trigger::Column::FunctionName.eq(&f.name))
                .exec(txn)
                .await?;
            function::Entity::delete_by_id(f.id.clone())
                .exec(txn)
                .await?;
            json!({"deleted": true})
        }
    };
    Ok(Ok(result))
}
