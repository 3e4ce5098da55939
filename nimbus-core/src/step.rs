//! The runner every sub-resource service uses to serve its step commands.
//!
//! It makes each handler idempotent: the result of every command is recorded under
//! the command's idempotency key `(task_id, step, phase, attempt)` in the same
//! database transaction as the handler's own database effects. A redelivered command
//! finds the record and gets the recorded result again, without running twice.
//! The delivery is acked only after the record is committed and the result is
//! published, so a crash at any point leads to a redelivery, never to a lost step.

use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use proto::bus::{StepCommand, StepResult};
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, Set, TransactionTrait,
};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::bus::{Delivery, DynBus, names};
use crate::db::step_record;
use crate::shutdown::Shutdown;

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Trying again will not help (bad input, not enough capacity).
    #[error("{0}")]
    Permanent(String),
    /// A transient fault (storage or database unavailable): the workflow retries.
    #[error("{0}")]
    Transient(String),
}

impl From<sea_orm::DbErr> for StepError {
    fn from(e: sea_orm::DbErr) -> Self {
        StepError::Transient(format!("metadata store: {e}"))
    }
}

/// A sub-resource service's step logic.
/// What a step does. On the wire (`StepCommand.action`) it travels as its name;
/// handlers match on this, so a misspelt action cannot compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// code: inflate, check and store a package.
    Store,
    /// code: undo a store (drop the staged upload).
    Discard,
    /// code: check that a package is still stored.
    Verify,
    /// code, network, resource: let go of what the function held.
    Release,
    /// network: attach the tenant's network.
    Ensure,
    /// resource: hold provisioned capacity.
    Reserve,
    /// resource: put the previous reservation back.
    Restore,
    /// workflow: commit the function's new state (the engine, inline).
    Activate,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::Store,
        Action::Discard,
        Action::Verify,
        Action::Release,
        Action::Ensure,
        Action::Reserve,
        Action::Restore,
        Action::Activate,
    ];

    /// Its name on the wire and in the task's record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Store => "store",
            Action::Discard => "discard",
            Action::Verify => "verify",
            Action::Release => "release",
            Action::Ensure => "ensure",
            Action::Reserve => "reserve",
            Action::Restore => "restore",
            Action::Activate => "activate",
        }
    }

    /// The action a command names, if it is one.
    pub fn of(cmd: &StepCommand) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == cmd.action)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    /// The service's name; it consumes `step.{service}`.
    fn service(&self) -> &'static str;

    /// Work that must not hold a database transaction (object-store I/O, CPU), run
    /// before [`handle`](Self::handle). Its effects must be idempotent themselves
    /// (e.g. content-addressed writes). Its output is handed to `handle`.
    async fn prepare(&self, _cmd: &StepCommand) -> Result<Option<serde_json::Value>, StepError> {
        Ok(None)
    }

    /// Runs one command. Database effects go through `txn`, which is committed
    /// together with the idempotency record. Keep it short: it holds the write lock
    /// on SQLite.
    async fn handle(
        &self,
        txn: &DatabaseTransaction,
        cmd: &StepCommand,
        prepared: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, StepError>;

    /// For a command whose database effects are writes that need nothing read:
    /// adds them to `w` and returns the output, instead of [`handle`](Self::handle).
    /// The runner commits them with the command's record in one round trip to the
    /// database (`group::write`). `None` (the default): the command goes to `handle`.
    fn writes(
        &self,
        _cmd: &StepCommand,
        _prepared: &Option<serde_json::Value>,
        _w: &mut crate::db::Batch,
    ) -> Option<Result<serde_json::Value, StepError>> {
        None
    }

    /// Runs after the result is committed (cleanup that must not happen earlier).
    async fn after_commit(&self, _cmd: &StepCommand, _result: &StepResult) {}

    /// Whether the workflow engine may run `cmd` in its own transaction, when this
    /// service shares the engine's process and database (`nimbus up`): only for a
    /// command that needs no [`prepare`](Self::prepare) and no
    /// [`after_commit`](Self::after_commit). See [`run_inline`].
    fn runs_inline(&self, _cmd: &StepCommand) -> bool {
        false
    }
}

/// Serves `step.{service}` until shutdown, with at most `concurrency` commands at once.
pub async fn serve(
    handler: Arc<dyn StepHandler>,
    db: DatabaseConnection,
    bus: DynBus,
    concurrency: u16,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let queue = names::step_queue(handler.service());
    let mut rx = bus.consume(&queue, concurrency).await?;
    let slots = Arc::new(Semaphore::new(concurrency.max(1) as usize));
    tracing::info!(service = handler.service(), "serving step commands");
    loop {
        let delivery = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => break },
            _ = shutdown.wait() => break,
        };
        let permit = slots.clone().acquire_owned().await?;
        let (handler, db, bus) = (handler.clone(), db.clone(), bus.clone());
        tokio::spawn(async move {
            handle_delivery(&*handler, &db, &bus, delivery).await;
            drop(permit);
        });
    }
    // Let in-flight commands finish (their deliveries are acked or come back).
    let _ = slots.acquire_many(concurrency.max(1) as u32).await;
    Ok(())
}

/// Step commands handled, by service, action and phase.
static STEPS: std::sync::LazyLock<crate::metrics::Histograms> = std::sync::LazyLock::new(|| {
    crate::metrics::histograms(
        "step_duration",
        "Step commands handled (run, or their recorded result replayed), by service, action and phase",
        crate::metrics::slow_buckets,
    )
});

/// The span of one step command: handled from the bus (a consumer), or inline in
/// the engine's transaction.
fn step_span(handler: &dyn StepHandler, cmd: &StepCommand, inline: bool) -> tracing::Span {
    tracing::info_span!(
        "step",
        service = handler.service(),
        action = %cmd.action,
        task = %cmd.task_id,
        request_id = %cmd.request_id,
        otel.name = %format_args!("step {}.{}", handler.service(), cmd.action),
        otel.kind = if inline { "internal" } else { "consumer" },
        inline,
    )
}

/// Counts a step command handled since `started`.
fn observe(cmd: &StepCommand, started: std::time::Instant) {
    STEPS
        .get_or_create(&vec![
            ("service", cmd.service.clone()),
            ("action", cmd.action.clone()),
            ("phase", cmd.phase().as_str_name().to_lowercase()),
        ])
        .observe(started.elapsed().as_secs_f64());
}

async fn handle_delivery(
    handler: &dyn StepHandler,
    db: &DatabaseConnection,
    bus: &DynBus,
    delivery: Delivery,
) {
    let cmd = match StepCommand::decode(delivery.payload.as_slice()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, service = handler.service(), "undecodable step command; dead-lettering");
            delivery.nack(false).await;
            return;
        }
    };
    let span = step_span(handler, &cmd, false);
    // Continues the task's trace (the workflow's span, or the gateway's for a
    // task's first step); the result carries this step's span back.
    let trace = crate::trace::enter_str(&span, delivery.traceparent.as_deref());
    let started = std::time::Instant::now();
    let ran = run_once(handler, db, &cmd, &span).await;
    observe(&cmd, started);
    match ran {
        Ok((result, fresh)) => {
            if let Err(e) = bus
                .publish_traced(
                    names::RESULTS,
                    result.encode_to_vec(),
                    Some(trace.traceparent()),
                )
                .await
            {
                tracing::warn!(error = %e, task = %cmd.task_id, "could not publish step result; will redeliver");
                delivery.nack(true).await;
                return;
            }
            delivery.ack().await;
            if fresh {
                handler.after_commit(&cmd, &result).await;
            }
        }
        Err(e) => {
            // The record could not be committed (database down): try again later.
            tracing::warn!(error = %e, task = %cmd.task_id, "step not recorded; requeueing");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            delivery.nack(true).await;
        }
    }
}

/// Runs the command once, or returns the recorded result of an earlier run.
/// The bool says whether this call ran it.
async fn run_once(
    handler: &dyn StepHandler,
    db: &DatabaseConnection,
    cmd: &StepCommand,
    span: &tracing::Span,
) -> Result<(StepResult, bool), sea_orm::DbErr> {
    let key = cmd.idempotency_key();
    if let Some(rec) = step_record::Entity::find_by_id(key.clone()).one(db).await? {
        tracing::debug!(%key, "duplicate step command; replaying the recorded result");
        return Ok((decode_record(&rec), false));
    }
    let prepared = handler.prepare(cmd).instrument(span.clone()).await;
    if let Ok(p) = &prepared {
        let mut w = crate::db::Batch::new(db.get_database_backend());
        if let Some(outcome) = handler.writes(cmd, p, &mut w) {
            return record_with(handler, db, cmd, key, outcome, w).await;
        }
    }
    // The handler's writes and the record commit together, in a turn at writing: on
    // SQLite, with the other writers of this process (`db::group`).
    let mut turn = crate::db::group::turn(db).await?;
    let outcome = match prepared {
        Ok(prepared) => {
            let out = handler
                .handle(turn.txn(), cmd, prepared)
                .instrument(span.clone())
                .await;
            if out.is_err() {
                // A handler that fails leaves no partial write behind: its turn is
                // undone, and the record is written in a new one.
                turn.rollback().await?;
                turn = crate::db::group::turn(db).await?;
            }
            out
        }
        Err(e) => Err(e),
    };
    let result = result_of(cmd, outcome);
    match record(handler, &key, &result).insert(turn.txn()).await {
        Ok(_) => {
            turn.commit().await?;
            Ok((result, true))
        }
        Err(e) if crate::db::is_unique_violation(&e) => {
            // A concurrent delivery of the same command won the race: use its result.
            turn.rollback().await?;
            Ok((recorded(db, key).await?, false))
        }
        Err(e) => Err(e),
    }
}

/// The record of `result`, the outcome of the command whose key is `key`.
fn record(handler: &dyn StepHandler, key: &str, result: &StepResult) -> step_record::ActiveModel {
    step_record::ActiveModel {
        key: Set(key.to_string()),
        service: Set(handler.service().to_string()),
        result: Set(result.encode_to_vec()),
        created_at: Set(crate::now_ms()),
    }
}

/// The result recorded for the command whose key is `key`.
async fn recorded(db: &DatabaseConnection, key: String) -> Result<StepResult, sea_orm::DbErr> {
    let rec = step_record::Entity::find_by_id(key)
        .one(db)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("step record".into()))?;
    Ok(decode_record(&rec))
}

/// Commits a handler's writes `w` (kept only if `outcome` is Ok) with the command's
/// record, in one turn of one round trip; or, if a concurrent delivery of the same
/// command recorded it first, returns that one's result.
async fn record_with(
    handler: &dyn StepHandler,
    db: &DatabaseConnection,
    cmd: &StepCommand,
    key: String,
    outcome: Result<serde_json::Value, StepError>,
    mut w: crate::db::Batch,
) -> Result<(StepResult, bool), sea_orm::DbErr> {
    if outcome.is_err() {
        w = crate::db::Batch::new(db.get_database_backend());
    }
    let result = result_of(cmd, outcome);
    w.insert(record(handler, &key, &result));
    match crate::db::group::write(db, w).await {
        Ok(()) => Ok((result, true)),
        Err(e) if crate::db::is_unique_violation(&e) => Ok((recorded(db, key).await?, false)),
        Err(e) => Err(e),
    }
}

/// The result a handler's outcome reports.
fn result_of(cmd: &StepCommand, outcome: Result<serde_json::Value, StepError>) -> StepResult {
    let mut result = StepResult {
        task_id: cmd.task_id.clone(),
        step_index: cmd.step_index,
        phase: cmd.phase,
        attempt: cmd.attempt,
        request_id: cmd.request_id.clone(),
        ..Default::default()
    };
    match outcome {
        Ok(output) => {
            result.ok = true;
            result.output_json = serde_json::to_vec(&output).unwrap_or_default();
        }
        Err(e) => {
            result.ok = false;
            result.retryable = matches!(e, StepError::Transient(_));
            result.error = e.to_string();
        }
    }
    result
}

/// Runs `cmd` in the caller's transaction `txn`: the workflow engine's, when the
/// service shares its process and database. The handler's writes commit with the
/// engine's step transition, so the command cannot take effect twice and needs no
/// idempotency record; a handler that fails leaves nothing behind (a savepoint).
/// Skipped for it: a message to the service, its record, a message back, and two
/// transactions.
pub async fn run_inline(
    handler: &dyn StepHandler,
    txn: &DatabaseTransaction,
    cmd: &StepCommand,
) -> Result<StepResult, sea_orm::DbErr> {
    let span = step_span(handler, cmd, true);
    let started = std::time::Instant::now();
    let sp = txn.begin().await?;
    let outcome = handler.handle(&sp, cmd, None).instrument(span).await;
    match &outcome {
        Ok(_) => sp.commit().await?,
        Err(_) => sp.rollback().await?,
    }
    observe(cmd, started);
    Ok(result_of(cmd, outcome))
}

/// [`run_inline`] without a savepoint of its own (two round trips fewer), for a
/// caller that undoes its whole transaction when the step fails: `None` then, and the
/// handler's writes, if it made any, are still in `txn` until the caller undoes them.
/// The caller runs the step again with [`run_inline`], which counts it.
pub async fn run_inline_unguarded(
    handler: &dyn StepHandler,
    txn: &DatabaseTransaction,
    cmd: &StepCommand,
) -> Result<Option<StepResult>, sea_orm::DbErr> {
    let span = step_span(handler, cmd, true);
    let started = std::time::Instant::now();
    let outcome = handler.handle(txn, cmd, None).instrument(span).await;
    if outcome.is_err() {
        return Ok(None);
    }
    observe(cmd, started);
    Ok(Some(result_of(cmd, outcome)))
}

fn decode_record(rec: &step_record::Model) -> StepResult {
    StepResult::decode(rec.result.as_slice()).unwrap_or_else(|e| StepResult {
        ok: false,
        retryable: false,
        error: format!("corrupt step record: {e}"),
        ..Default::default()
    })
}

/// The JSON parameters of a command: `{"params": …, "context": …}` as the workflow sends them.
pub fn params(cmd: &StepCommand) -> Result<serde_json::Value, StepError> {
    serde_json::from_slice(&cmd.params_json)
        .map_err(|e| StepError::Permanent(format!("bad step parameters: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use proto::bus::StepCommand;
    use sea_orm::{DatabaseTransaction, EntityTrait, Set};

    use super::{StepError, StepHandler, run_once};
    use crate::db::{Batch, package};

    /// A step whose only effect is a write: one `packages` row per task, whose size
    /// counts the runs.
    struct Counting(AtomicUsize);

    #[async_trait]
    impl StepHandler for Counting {
        fn service(&self) -> &'static str {
            "test"
        }

        async fn handle(
            &self,
            _txn: &DatabaseTransaction,
            _cmd: &StepCommand,
            _prepared: Option<serde_json::Value>,
        ) -> Result<serde_json::Value, StepError> {
            Err(StepError::Permanent("handle is not used".into()))
        }

        fn writes(
            &self,
            cmd: &StepCommand,
            _prepared: &Option<serde_json::Value>,
            w: &mut Batch,
        ) -> Option<Result<serde_json::Value, StepError>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) as i64 + 1;
            if cmd.action == "fail" {
                return Some(Err(StepError::Permanent("no".into())));
            }
            w.insert(package::ActiveModel {
                sha256: Set(cmd.task_id.clone()),
                size: Set(n),
                stored_at: Set(0),
            });
            Some(Ok(serde_json::json!({"run": n})))
        }
    }

    /// A step's writes and its record commit together; a command delivered again,
    /// or twice at once, runs once and the others replay its result; a step that
    /// fails keeps its record and none of its writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_commit_with_the_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::connect(&crate::config::DatabaseConfig {
            url: format!("sqlite://{}/s.db?mode=rwc", dir.path().display()),
            schema: None,
            max_connections: 4,
            log_statements: false,
        })
        .await
        .unwrap();
        let h = Counting(AtomicUsize::new(0));
        let cmd = |task: &str, action: &str| StepCommand {
            task_id: task.into(),
            service: "test".into(),
            action: action.into(),
            attempt: 1,
            ..Default::default()
        };
        let span = tracing::Span::none();
        let a = cmd("t1", "store");
        let (first, fresh) = run_once(&h, &db, &a, &span).await.unwrap();
        assert!(first.ok && fresh);
        let (again, fresh) = run_once(&h, &db, &a, &span).await.unwrap();
        assert!(!fresh);
        assert_eq!(again.output_json, first.output_json);
        // Twice at once: both answer with the one result that was recorded.
        let b = cmd("t2", "store");
        let (x, y) = tokio::join!(run_once(&h, &db, &b, &span), run_once(&h, &db, &b, &span));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.0.output_json, y.0.output_json);
        assert!(x.1 != y.1 || !x.1, "at most one of them ran it fresh");
        let kept = package::Entity::find_by_id("t2".to_string())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let recorded: serde_json::Value = serde_json::from_slice(&x.0.output_json).unwrap();
        assert_eq!(
            recorded["run"], kept.size,
            "the row kept is the recorded run's"
        );
        // A failure is recorded, and its writes are not kept.
        let c = cmd("t3", "fail");
        let (failed, _) = run_once(&h, &db, &c, &span).await.unwrap();
        assert!(!failed.ok && !failed.retryable);
        let (replayed, fresh) = run_once(&h, &db, &c, &span).await.unwrap();
        assert!(!fresh && !replayed.ok);
        assert!(
            package::Entity::find_by_id("t3".to_string())
                .one(&db)
                .await
                .unwrap()
                .is_none()
        );
    }
}
