//! The executor: it takes runs that are due, moves each through its states, and
//! commits every transition — with its history events — before the next begins.
//!
//! A run is claimed with a lease (a conditional update: exactly one worker gets it),
//! and every later write of the run is conditional on that lease and on the run
//! still being `ready`: a worker that stalls past its lease, or whose run was
//! cancelled (the execution stopped, a sibling branch failed), finds its write refused
//! and drops the run. So every transition happens once; a Task whose result was not
//! committed before its worker died runs again (at least once), as in Step Functions.
//!
//! A run goes on in the same worker from state to state until it waits (a `Wait`, a
//! retry's backoff, its children) or ends; a sequence of states costs one commit
//! each and no polling. Children of a `Parallel` or `Map` are runs of their own; the
//! last one to finish makes its parent ready again. A `Map` queues its items beyond
//! `MaxConcurrency`; each finished item promotes the next one in the same
//! transaction, so no more than that many ever run.

use std::sync::Arc;
use std::time::Duration;

use invoker::router::Router;
use nimbus_core::db::{execution, execution_run};
use nimbus_core::shutdown::Shutdown;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, TryIntoModel,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::asl::{Retrier, State, Transition};
use crate::choice::{backoff_ms, catcher, choose, retrier};
use crate::history::Events;
use crate::lease::{LEASE_MS, held};
use crate::paths::{PathError, filter, put_result, select, template};
use crate::signal::wake;
use crate::step::{Failure, Step};

/// How often a running state's lease is renewed.
const RENEW: Duration = Duration::from_millis(3_000);
/// How often workers look for due runs when nothing woke them.
const POLL: Duration = Duration::from_millis(100);
/// Runs driven at once per process.
const WORKERS: usize = 64;
/// `attempts` of a final Wait whose wait is over.
const WAITED: u32 = u32::MAX;

/// A run that goes on in its worker after a committed transition.
struct Going {
    run: execution_run::Model,
    lease: i64,
    /// The execution as that transition left it.
    exec: execution::Model,
}

/// The executor of one process.
pub struct Engine {
    db: DatabaseConnection,
    router: Arc<Router>,
    slots: Arc<Semaphore>,
}

impl Engine {
    /// An engine calling functions through `router`.
    pub fn new(db: DatabaseConnection, router: Arc<Router>) -> Arc<Engine> {
        Arc::new(Engine {
            db,
            router,
            slots: Arc::new(Semaphore::new(WORKERS)),
        })
    }

    /// Takes due runs until shutdown; ends executions past their deadline.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut last_sweep = 0i64;
        loop {
            let woken = crate::signal::WAKE.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = nimbus_core::now_ms();
            if now - last_sweep > 1_000 {
                last_sweep = now;
                if let Err(e) = crate::store::time_out_overdue(&self.db).await {
                    tracing::warn!(error = %e, "orchestration: timing out executions");
                }
            }
            match self.claim_due().await {
                Ok(runs) if !runs.is_empty() => {
                    for (run, lease) in runs {
                        let permit = self.slots.clone().acquire_owned().await?;
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.drive(run, lease).await;
                            drop(permit);
                        });
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "orchestration: claiming runs"),
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    /// Claims up to the free worker slots of due runs.
    async fn claim_due(&self) -> Result<Vec<(execution_run::Model, i64)>, sea_orm::DbErr> {
        let room = self.slots.available_permits().min(32) as u64;
        if room == 0 {
            return Ok(vec![]);
        }
        let now = nimbus_core::now_ms();
        let due = execution_run::Entity::find()
            .filter(execution_run::Column::Status.eq("ready"))
            .filter(execution_run::Column::DueAt.lte(now))
            .filter(execution_run::Column::LeaseUntil.lt(now))
            .order_by_asc(execution_run::Column::DueAt)
            .limit(room)
            .all(&self.db)
            .await?;
        let mut out = vec![];
        for seen in due {
            if let Some(claimed) = crate::lease::claim(&self.db, &seen, now).await? {
                out.push(claimed);
            }
        }
        Ok(out)
    }

    /// Moves a claimed run through its states until it waits or ends.
    async fn drive(&self, mut run: execution_run::Model, mut lease: i64) {
        let mut exec = None;
        loop {
            match self.advance(&run, lease, exec.take()).await {
                Ok(Some(next)) => (run, lease, exec) = (next.run, next.lease, Some(next.exec)),
                Ok(None) => return,
                Err(e) => {
                    // The database failed: the lease runs out and a worker retries.
                    tracing::warn!(run = %run.id, error = %e, "orchestration: a transition failed");
                    return;
                }
            }
        }
    }

    /// Runs the run's current state and commits what it did. Some(next) to go on.
    /// `exec`: the execution as the previous transition of this run committed it
    /// (read again otherwise); its commit checks it again under lock.
    async fn advance(
        &self,
        run: &execution_run::Model,
        lease: i64,
        exec: Option<execution::Model>,
    ) -> Result<Option<Going>, sea_orm::DbErr> {
        let exec = match exec {
            Some(e) => e,
            None => match execution::Entity::find_by_id(run.execution_id.clone())
                .one(&self.db)
                .await?
            {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        if exec.status != "RUNNING" {
            return Ok(None);
        }
        let machine = match crate::store::machine_of(&exec) {
            Ok(m) => m,
            Err(e) => {
                self.fail_execution(&exec, "States.Runtime", &e).await?;
                return Ok(None);
            }
        };
        let Some(scope) = crate::store::scope(&machine, &run.scope) else {
            self.fail_execution(
                &exec,
                "States.Runtime",
                "a run's scope is not in the definition",
            )
            .await?;
            return Ok(None);
        };
        let Some(state) = scope.states.get(&run.state) else {
            self.fail_execution(
                &exec,
                "States.Runtime",
                "a run's state is not in the definition",
            )
            .await?;
            return Ok(None);
        };
        let input: Value = serde_json::from_str(&run.input).unwrap_or(Value::Null);
        let context = json!({
            "Execution": {"Id": exec.id, "Name": exec.name, "StartTime": nimbus_core::rfc3339(exec.started_at),
                          "Input": serde_json::from_str::<Value>(&exec.input).unwrap_or(Value::Null)},
            "StateMachine": {"Name": exec.machine_name},
            "State": {"Name": run.state, "EnteredTime": nimbus_core::rfc3339(nimbus_core::now_ms())},
            "Map": {"Item": {"Index": run.slot}},
        });
        let attempts: Vec<u32> = serde_json::from_str(&run.attempts).unwrap_or_default();
        // A state that runs long (a Task) renews the lease as it goes; a lost lease
        // (another worker has the run) drops the state.
        let mut lease = lease;
        let step = {
            let step = self.step(&exec, run, state, &input, &context, &attempts);
            tokio::pin!(step);
            loop {
                tokio::select! {
                    s = &mut step => break s?,
                    _ = tokio::time::sleep(RENEW) => match crate::lease::renew(&self.db, run, lease).await? {
                        Some(renewed) => lease = renewed,
                        None => return Ok(None),
                    },
                }
            }
        };
        self.commit(&exec, run, lease, state, &input, step, attempts)
            .await
    }

    /// What the state does with `input` (calls the function for a Task).
    async fn step(
        &self,
        exec: &execution::Model,
        run: &execution_run::Model,
        state: &State,
        input: &Value,
        context: &Value,
        attempts: &[u32],
    ) -> Result<Step, sea_orm::DbErr> {
        let then = |t: &Transition, out: Value| match t {
            Transition::Next(n) => Step::Next(n.clone(), out),
            Transition::End => Step::End(out),
        };
        let r = (|| -> Result<Option<Step>, PathError> {
            Ok(Some(match state {
                State::Pass(p) => {
                    let eff = filter(&p.io.input_path, input, context)?;
                    let eff = match &p.parameters {
                        Some(t) => template(t, &eff, context)?,
                        None => eff,
                    };
                    let result = p.result_value.clone().unwrap_or(eff);
                    let out = put_result(&p.result_path, input, result)?;
                    then(&p.then, filter(&p.io.output_path, &out, context)?)
                }
                State::Choice(c) => {
                    let eff = filter(&c.io.input_path, input, context)?;
                    let next = choose(&c.choices, c.default.as_deref(), &eff, context)?;
                    Step::Next(next.to_string(), filter(&c.io.output_path, input, context)?)
                }
                State::Wait(w) if attempts.first() == Some(&WAITED) => {
                    // The wait of a final Wait is over.
                    Step::End(filter(&w.io.output_path, input, context)?)
                }
                State::Wait(w) => {
                    let eff = filter(&w.io.input_path, input, context)?;
                    let now = nimbus_core::now_ms();
                    let until = match &w.wait {
                        crate::asl::WaitFor::Seconds(s) => now + crate::seconds_ms(*s),
                        crate::asl::WaitFor::SecondsPath(p) => {
                            let s =
                                select(p, &eff, context)?
                                    .as_u64()
                                    .ok_or_else(|| PathError {
                                        error: "States.Runtime",
                                        cause: format!(
                                            "SecondsPath '{p}' is not a whole number of seconds"
                                        ),
                                    })?;
                            now + crate::seconds_ms(s)
                        }
                        crate::asl::WaitFor::Timestamp(t) => timestamp_ms(t)?,
                        crate::asl::WaitFor::TimestampPath(p) => {
                            let v = select(p, &eff, context)?;
                            timestamp_ms(v.as_str().unwrap_or_default())?
                        }
                    };
                    let out = filter(&w.io.output_path, input, context)?;
                    match &w.then {
                        Transition::Next(n) => Step::Later(n.clone(), out, until),
                        // Waiting then ending: wait here (marked), end on the next pass.
                        Transition::End if until > now => Step::WaitThenEnd(until),
                        Transition::End => Step::End(out),
                    }
                }
                State::Succeed(s) => {
                    let eff = filter(&s.io.input_path, input, context)?;
                    Step::End(filter(&s.io.output_path, &eff, context)?)
                }
                State::Fail(f) => {
                    let text = |fixed: &Option<String>,
                                path: &Option<String>|
                     -> Result<String, PathError> {
                        Ok(match (fixed, path) {
                            (Some(s), _) => s.clone(),
                            (None, Some(p)) => match select(p, input, context)? {
                                Value::String(s) => s,
                                other => other.to_string(),
                            },
                            (None, None) => String::new(),
                        })
                    };
                    Step::Fail(Failure {
                        error: text(&f.error, &f.error_path)?,
                        cause: text(&f.cause, &f.cause_path)?,
                    })
                }
                _ => return Ok(None),
            }))
        })();
        match r {
            Ok(Some(step)) => return Ok(step),
            Err(e) => return Ok(Step::Fail(e.into())),
            Ok(None) => {}
        }
        // Task, Parallel, Map: they may fail and be retried or caught.
        let (outcome, retry) = match state {
            State::Task(t) => (
                crate::task::task(&self.router, &self.db, exec, t, input, context).await,
                &t.retry,
            ),
            State::Parallel(p) => (
                crate::fanout::gather(&self.db, run, p, input, context).await?,
                &p.retry,
            ),
            State::Map(m) => (
                crate::fanout::map(&self.db, run, m, input, context).await?,
                &m.retry,
            ),
            _ => unreachable!("handled above"),
        };
        Ok(match outcome {
            Err(f) => retry_or_fail(retry, attempts, f),
            Ok(step) => step,
        })
    }

    /// Commits what a state did. Some(run) if the run goes on in this worker.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        exec: &execution::Model,
        run: &execution_run::Model,
        lease: i64,
        state: &State,
        input: &Value,
        step: Step,
        attempts: Vec<u32>,
    ) -> Result<Option<Going>, sea_orm::DbErr> {
        let now = nimbus_core::now_ms();
        // A Catch turns a failure into a transition.
        let step = match step {
            Step::Fail(f) => match catch_of(state).and_then(|c| catcher(c, &f.error)) {
                Some(c) => {
                    let err = json!({"Error": f.error, "Cause": f.cause});
                    match put_result(&c.result_path, input, err) {
                        Ok(out) => Step::Next(c.next.clone(), out),
                        Err(e) => Step::Fail(e.into()),
                    }
                }
                None => Step::Fail(f),
            },
            other => other,
        };
        let turn = nimbus_core::db::group::turn(&self.db).await?;
        // An error here drops the turn: the transaction (its group's, on SQLite) is
        // rolled back.
        let written = self
            .write(turn.txn(), exec, run, lease, state, step, attempts, now)
            .await?;
        turn.commit().await?;
        match written {
            Some(going) => Ok(Some(going)),
            None => {
                wake();
                Ok(None)
            }
        }
    }

    /// The writes of a transition, in `txn`. The run's write, conditional on the lease,
    /// comes first: when it finds nothing, nothing has been written. Some(next) if
    /// the run goes on in this worker.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        exec: &execution::Model,
        run: &execution_run::Model,
        lease: i64,
        state: &State,
        step: Step,
        mut attempts: Vec<u32>,
        now: i64,
    ) -> Result<Option<Going>, sea_orm::DbErr> {
        // Transitions of one execution commit one at a time (its row is locked until
        // this commits; SQLite has one writer anyway), so its history is numbered
        // without gaps or clashes.
        let Some(exec) = execution::Entity::find_by_id(exec.id.clone())
            .lock_exclusive()
            .one(txn)
            .await?
            .filter(|e| e.status == "RUNNING")
        else {
            return Ok(None);
        };
        let exec = &exec;
        let leaving = matches!(state, State::Parallel(_) | State::Map(_))
            && !matches!(step, Step::Spawn(..) | Step::Defer);
        let mut events = Events::new(exec);
        let new_lease = now + LEASE_MS;
        let mut am: execution_run::ActiveModel = run.clone().into();
        // What the step does besides the run's own row, written after it.
        enum Then {
            Nothing,
            Spawn(Vec<(String, Value)>, u32),
            Finished(Result<Value, Failure>),
        }
        let (go_on, then) = match step {
            Step::Next(next, out) => {
                events.push("StateExited", Some(&run.state), json!({"output": out}));
                events.push("StateEntered", Some(&next), json!({"input": out}));
                am.state = Set(next);
                am.input = Set(out.to_string());
                am.attempts = Set("[]".into());
                am.lease_until = Set(new_lease);
                (true, Then::Nothing)
            }
            Step::Later(next, out, due) => {
                if next != run.state {
                    events.push(
                        "StateExited",
                        Some(&run.state),
                        json!({"output": out, "wait_until": nimbus_core::rfc3339(due)}),
                    );
                    events.push("StateEntered", Some(&next), json!({"input": out}));
                }
                am.state = Set(next);
                am.input = Set(out.to_string());
                am.attempts = Set("[]".into());
                am.due_at = Set(due);
                am.lease_until = Set(0);
                (false, Then::Nothing)
            }
            Step::Retry(i, delay, f) => {
                if attempts.len() <= i {
                    attempts.resize(i + 1, 0);
                }
                attempts[i] += 1;
                events.push(
                    "StateRetry",
                    Some(&run.state),
                    json!({"error": f.error, "cause": f.cause, "attempt": attempts[i], "delay_ms": delay}),
                );
                am.attempts = Set(serde_json::to_string(&attempts).unwrap_or_default());
                am.due_at = Set(now + delay as i64);
                am.lease_until = Set(0);
                (false, Then::Nothing)
            }
            Step::WaitThenEnd(due) => {
                am.attempts = Set(serde_json::to_string(&[WAITED]).unwrap_or_default());
                am.due_at = Set(due);
                am.lease_until = Set(0);
                (false, Then::Nothing)
            }
            Step::Defer => {
                am.due_at = Set(now + 200);
                am.lease_until = Set(0);
                (false, Then::Nothing)
            }
            Step::Spawn(children, limit) => {
                events.push(
                    "ChildrenStarted",
                    Some(&run.state),
                    json!({"count": children.len(), "max_concurrency": limit}),
                );
                am.pending = Set(children.len() as i32);
                am.lease_until = Set(0);
                am.status = Set("blocked".into());
                (false, Then::Spawn(children, limit))
            }
            Step::End(out) => {
                events.push("StateExited", Some(&run.state), json!({"output": out}));
                am.status = Set("done".into());
                am.result = Set(Some(out.to_string()));
                am.lease_until = Set(0);
                (false, Then::Finished(Ok(out)))
            }
            Step::Fail(f) => {
                events.push(
                    "StateFailed",
                    Some(&run.state),
                    json!({"error": f.error, "cause": f.cause}),
                );
                am.status = Set("failed".into());
                am.error = Set(Some(f.error.clone()));
                am.cause = Set(Some(f.cause.clone()));
                am.lease_until = Set(0);
                (false, Then::Finished(Err(f)))
            }
        };
        // The run must still be ours and ready: the write is conditional on it.
        let top_done = run.parent.is_none() && matches!(then, Then::Finished(_));
        let written = if top_done {
            // The execution ends: none of its runs is needed any more.
            held(execution_run::Entity::delete_many(), &run.id, lease)
                .exec(txn)
                .await?
                .rows_affected
        } else {
            held(
                execution_run::Entity::update_many().set(am.clone()),
                &run.id,
                lease,
            )
            .exec(txn)
            .await?
            .rows_affected
        };
        if written != 1 {
            return Ok(None);
        }
        // Leaving a Parallel or Map (not to spawn or wait for a slot): its children go.
        if leaving {
            execution_run::Entity::delete_many()
                .filter(execution_run::Column::Parent.eq(&run.id))
                .exec(txn)
                .await?;
        }
        match then {
            Then::Nothing => {}
            Then::Spawn(children, limit) => {
                let m = crate::store::machine_of(exec).map_err(sea_orm::DbErr::Custom)?;
                for (slot, (scope, child_input)) in children.into_iter().enumerate() {
                    let start = crate::store::scope(&m, &scope)
                        .map(|s| s.start_at.clone())
                        .unwrap_or_default();
                    let runs_now = limit == 0 || slot < limit as usize;
                    // Each branch or item's first state, with its input and place.
                    events.push(
                        "StateEntered",
                        Some(&start),
                        json!({"input": child_input, "index": slot, "parent": run.state}),
                    );
                    crate::store::new_run(
                        &exec.id,
                        Some((&run.id, slot)),
                        scope,
                        start,
                        &child_input,
                        runs_now,
                    )
                    .insert(txn)
                    .await?;
                }
            }
            Then::Finished(outcome) => {
                self.finished(txn, exec, run, &mut events, outcome).await?;
            }
        }
        let exec_after = execution::Model {
            events: events.next,
            ..exec.clone()
        };
        events.commit(txn).await?;
        if go_on && let Ok(next) = am.try_into_model() {
            return Ok(Some(Going {
                run: next,
                lease: new_lease,
                exec: exec_after,
            }));
        }
        Ok(None)
    }

    /// A run ended: its parent hears of it, or the execution ends with it.
    async fn finished<C: ConnectionTrait>(
        &self,
        txn: &C,
        exec: &execution::Model,
        run: &execution_run::Model,
        events: &mut Events,
        outcome: Result<Value, Failure>,
    ) -> Result<(), sea_orm::DbErr> {
        let now = nimbus_core::now_ms();
        let Some(parent) = &run.parent else {
            let mut am: execution::ActiveModel = exec.clone().into();
            match outcome {
                Ok(out) => {
                    events.push("ExecutionSucceeded", None, json!({"output": out}));
                    am.status = Set("SUCCEEDED".into());
                    am.output = Set(Some(out.to_string()));
                }
                Err(f) => {
                    events.push(
                        "ExecutionFailed",
                        None,
                        json!({"error": f.error, "cause": f.cause}),
                    );
                    am.status = Set("FAILED".into());
                    am.error = Set(Some(f.error));
                    am.cause = Set(Some(f.cause));
                }
            }
            am.stopped_at = Set(Some(now));
            am.events = Set(events.next);
            am.update(txn).await?;
            events.counted = true;
            execution_run::Entity::delete_many()
                .filter(execution_run::Column::ExecutionId.eq(&exec.id))
                .filter(execution_run::Column::Id.ne(&run.id))
                .exec(txn)
                .await?;
            return Ok(());
        };
        match outcome {
            Ok(_) => {
                // The next queued sibling (a Map beyond MaxConcurrency) may run now.
                if let Some(next) = execution_run::Entity::find()
                    .filter(execution_run::Column::Parent.eq(parent))
                    .filter(execution_run::Column::Status.eq("queued"))
                    .order_by_asc(execution_run::Column::Slot)
                    .one(txn)
                    .await?
                {
                    let mut n: execution_run::ActiveModel = next.into();
                    n.status = Set("ready".into());
                    n.due_at = Set(now);
                    n.update(txn).await?;
                }
                // The last child to finish makes its parent ready.
                execution_run::Entity::update_many()
                    .col_expr(
                        execution_run::Column::Pending,
                        Expr::col(execution_run::Column::Pending).sub(1),
                    )
                    .filter(execution_run::Column::Id.eq(parent))
                    .exec(txn)
                    .await?;
                execution_run::Entity::update_many()
                    .col_expr(execution_run::Column::Status, Expr::value("ready"))
                    .col_expr(execution_run::Column::DueAt, Expr::value(now))
                    .filter(execution_run::Column::Id.eq(parent))
                    .filter(execution_run::Column::Status.eq("blocked"))
                    .filter(execution_run::Column::Pending.lte(0))
                    .exec(txn)
                    .await?;
            }
            Err(_) => {
                // One failure fails the parent state: its other children stop.
                execution_run::Entity::update_many()
                    .col_expr(execution_run::Column::Status, Expr::value("cancelled"))
                    .filter(execution_run::Column::Parent.eq(parent))
                    .filter(execution_run::Column::Id.ne(&run.id))
                    .filter(execution_run::Column::Status.is_in(["ready", "queued", "blocked"]))
                    .exec(txn)
                    .await?;
                execution_run::Entity::update_many()
                    .col_expr(execution_run::Column::Status, Expr::value("ready"))
                    .col_expr(execution_run::Column::DueAt, Expr::value(now))
                    .col_expr(execution_run::Column::Pending, Expr::value(0))
                    .filter(execution_run::Column::Id.eq(parent))
                    .filter(execution_run::Column::Status.eq("blocked"))
                    .exec(txn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends an execution that cannot go on.
    async fn fail_execution(
        &self,
        exec: &execution::Model,
        error: &str,
        cause: &str,
    ) -> Result<(), sea_orm::DbErr> {
        crate::store::end(&self.db, &exec.id, "FAILED", Some((error, cause))).await
    }
}

/// A failure a retrier covers becomes a retry, while attempts remain.
fn retry_or_fail(retry: &[Retrier], attempts: &[u32], f: Failure) -> Step {
    if let Some((i, r)) = retrier(retry, &f.error) {
        let done = attempts.get(i).copied().unwrap_or(0);
        if done < r.max_attempts {
            let delay = backoff_ms(r, done + 1, rand::random::<f64>());
            return Step::Retry(i, delay, f);
        }
    }
    Step::Fail(f)
}

fn catch_of(s: &State) -> Option<&[crate::asl::Catcher]> {
    match s {
        State::Task(t) => Some(&t.catch),
        State::Parallel(p) => Some(&p.catch),
        State::Map(m) => Some(&m.catch),
        _ => None,
    }
}

fn timestamp_ms(t: &str) -> Result<i64, PathError> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|e| PathError {
            error: "States.Runtime",
            cause: format!("'{t}' is not an RFC 3339 timestamp: {e}"),
        })
}
