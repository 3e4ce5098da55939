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
    let record = step_record::ActiveModel {
        key: Set(key.clone()),
        service: Set(handler.service().to_string()),
        result: Set(result.encode_to_vec()),
        created_at: Set(crate::now_ms()),
    };
    match record.insert(turn.txn()).await {
        Ok(_) => {
            turn.commit().await?;
            Ok((result, true))
        }
        Err(e) if crate::db::is_unique_violation(&e) => {
            // A concurrent delivery of the same command won the race: use its result.
            turn.rollback().await?;
            let rec = step_record::Entity::find_by_id(key)
                .one(db)
                .await?
                .ok_or_else(|| sea_orm::DbErr::RecordNotFound("step record".into()))?;
            Ok((decode_record(&rec), false))
        }
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
