//! Asynchronous invocation: accept now, run from a queue, retry, dead-letter.
//!
//! - [`enqueue`] records the event in the `invocations` table (state `Queued`) and
//!   puts its id on the durable work queue `invoke.async` (a RabbitMQ quorum queue
//!   when distributed). The row is the truth; the queue only wakes a worker.
//! - [`run_workers`] consumes the queue in every process that has a data path. A
//!   worker claims the row (`Queued` → `Running`, one attempt more) with a
//!   conditional update, so a duplicate message never runs an event twice; it then
//!   runs the call through the same router, quotas and nodes as a synchronous call,
//!   waiting for a quota slot rather than failing (a burst drains at the function's
//!   concurrency).
//! - A function error or timeout is retried after `retry_base_delay_ms × 2^(k-1)`
//!   while attempts remain and the event is younger than `max_event_age_s`; then the
//!   event is `DeadLettered`, keeping the event and every attempt's error, and the
//!   `on_failure` function is invoked with it. A success invokes `on_success`. Both
//!   POST to `callback_url` when set.
//! - A pump publishes what is due (new events whose publish failed, retries whose
//!   wait is over); a sweeper takes back events whose worker died and re-publishes
//!   events whose message was lost.
//!
//! Delivery is at least once: an event whose worker dies after the function ran but
//! before the outcome was recorded runs again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::bus::DynBus;
use nimbus_core::db::{invocation, tenant};
use nimbus_core::model::AsyncConfig;
use nimbus_core::shutdown::Shutdown;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::{Value, json};

use invoker::router::{Call, InvokeError, Router};

/// The work queue of asynchronous invocations.
pub const QUEUE: &str = "invoke.async";

/// Invocation states.
pub mod state {
    /// Waiting for a worker (or for its retry time).
    pub const QUEUED: &str = "Queued";
    /// Taken by a worker.
    pub const RUNNING: &str = "Running";
    /// The function returned a result.
    pub const SUCCEEDED: &str = "Succeeded";
    /// It cannot run at all (the function is gone).
    pub const FAILED: &str = "Failed";
    /// Every attempt failed: kept as a dead letter.
    pub const DEAD_LETTERED: &str = "DeadLettered";
}

/// How long a worker waits for a quota slot before putting the event back.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// A `Running` event untouched this long lost its worker (the longest timeout is
/// 15 minutes).
const RUNNING_STALE_MS: i64 = 16 * 60 * 1000;
/// A `Queued` event published this long ago and still waiting lost its message.
const QUEUED_STALE_MS: i64 = 10 * 60 * 1000;

/// Where an invocation came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// `POST …/invoke` with `x-nimbus-invocation-type: async`.
    Api,
    /// A dead letter run again.
    Replay,
    /// The success destination of another invocation.
    OnSuccess,
    /// The failure destination (disaster-recovery handler) of another invocation.
    OnFailure,
    /// A timer trigger's tick.
    Timer,
    /// A storage trigger's object event.
    Storage,
    /// A queue trigger's message.
    Queue,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Replay => "replay",
            Origin::OnSuccess => "on_success",
            Origin::OnFailure => "on_failure",
            Origin::Timer => "timer",
            Origin::Storage => "storage",
            Origin::Queue => "queue",
        }
    }
}

/// One event to run later.
pub struct NewInvocation<'a> {
    /// The tenant's id.
    pub tenant_id: &'a str,
    /// The function's name.
    pub function: &'a str,
    /// A version or alias; None is `$LATEST`.
    pub qualifier: Option<&'a str>,
    /// The event.
    pub event: Bytes,
    /// Where it came from.
    pub origin: Origin,
    /// The dead letter it replays.
    pub replay_of: Option<&'a str>,
    /// The trace context of the request that queued it.
    pub trace: Option<nimbus_core::trace::TraceContext>,
}

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The tenant has as many events waiting or running as its `max_queued_events`.
    #[error(
        "the tenant has {0} asynchronous events waiting or running, its limit (max_queued_events); try again later"
    )]
    Backlog(u32),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sea_orm::DbErr),
}

impl From<EnqueueError> for nimbus_core::Error {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Backlog(_) => nimbus_core::Error::TooManyRequests(e.to_string()),
            EnqueueError::Db(e) => e.into(),
        }
    }
}

/// Records an event and queues it, if its tenant's backlog has room. Returns its
/// id. The event is durable once this returns; if the queue cannot take the id now,
/// the pump publishes it later.
pub async fn enqueue(
    db: &DatabaseConnection,
    bus: &DynBus,
    n: NewInvocation<'_>,
) -> Result<String, EnqueueError> {
    let limit = tenant::Entity::find_by_id(n.tenant_id.to_string())
        .one(db)
        .await?
        .map_or(0, |t| t.max_queued_events.max(0) as u32);
    let backlog = invocation::Entity::find()
        .filter(invocation::Column::TenantId.eq(n.tenant_id))
        .filter(invocation::Column::State.is_in([state::QUEUED, state::RUNNING]))
        .count(db)
        .await?;
    if backlog >= limit as u64 {
        return Err(EnqueueError::Backlog(limit));
    }
    let id = nimbus_core::new_id();
    let now = nimbus_core::now_ms();
    invocation::ActiveModel {
        id: Set(id.clone()),
        tenant_id: Set(n.tenant_id.to_string()),
        function_name: Set(n.function.to_string()),
        qualifier: Set(n.qualifier.map(str::to_string)),
        event: Set(n.event.to_vec()),
        state: Set(state::QUEUED.into()),
        attempts: Set(0),
        result: Set(None),
        error: Set(None),
        errors: Set("[]".into()),
        executed_version: Set(None),
        due_at: Set(now),
        published_at: Set(Some(now)),
        started_at: Set(None),
        finished_at: Set(None),
        origin: Set(n.origin.as_str().into()),
        replay_of: Set(n.replay_of.map(str::to_string)),
        created_at: Set(now),
        updated_at: Set(now),
        traceparent: Set(n.trace.map(|t| t.traceparent())),
    }
    .insert(db)
    .await?;
    if let Err(e) = bus.publish(QUEUE, id.clone().into_bytes()).await {
        tracing::warn!(error = %e, invocation = %id, "queueing an invocation; the pump will retry");
        unpublish(db, &id).await;
    }
    Ok(id)
}

/// Marks an invocation for the pump to publish.
async fn unpublish(db: &DatabaseConnection, id: &str) {
    let r = invocation::Entity::update_many()
        .col_expr(invocation::Column::PublishedAt, Expr::value(None::<i64>))
        .filter(invocation::Column::Id.eq(id))
        .exec(db)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, invocation = %id, "marking an invocation for republishing");
    }
}

use crate::view::event_json;
pub use crate::view::{InvocationView, to_json};

pub use crate::callbacks::{CallbackError, callback_client, is_public, post_callback};

/// How a process's async workers run.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Events in flight at once in this process.
    pub concurrency: u16,
    /// This process is the only one running invocations (`nimbus up`), so at start
    /// every `Running` event is an orphan of its previous run and every `Queued` one
    /// is re-published (an in-process queue does not survive a restart).
    pub sole_worker: bool,
    /// Whether callbacks may go to loopback and private networks.
    pub private_callbacks: bool,
    /// Finished events (and timer-tick claims) are deleted this long after they end.
    pub retention: Duration,
    /// Dead letters are deleted this long after they died.
    pub dead_letter_retention: Duration,
}

/// Runs the workers, the pump and the sweeper until shutdown.
pub async fn run_workers(
    router: Arc<Router>,
    db: DatabaseConnection,
    bus: DynBus,
    settings: WorkerSettings,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let WorkerSettings {
        concurrency,
        sole_worker,
        private_callbacks,
        ..
    } = settings.clone();
    if sole_worker {
        recover_all(&db).await?;
    }
    let w = Arc::new(Worker {
        router,
        db,
        bus: bus.clone(),
        http: callback_client(private_callbacks)?,
        private_callbacks,
        share: (concurrency as usize / 4).max(1),
        settings,
        tenants: Mutex::new(HashMap::new()),
    });
    let pump = tokio::spawn(w.clone().pump(shutdown.clone()));
    let mut rx = bus.consume(QUEUE, concurrency).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency as usize));
    // In-flight events die with the workers (as with the process): their messages
    // stay unacked, and their rows are taken back.
    let mut running = tokio::task::JoinSet::new();
    loop {
        let d = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => break },
            _ = shutdown.wait() => break,
        };
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.wait() => break,
        };
        let w = w.clone();
        running.spawn(async move {
            let id = String::from_utf8_lossy(&d.payload).to_string();
            match w.handle(&id, d.redelivered).await {
                Ok(()) => d.ack().await,
                Err(e) => {
                    // The row is unchanged: let the queue deliver it again.
                    tracing::warn!(error = %e, invocation = %id, "async invocation; requeued");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    d.nack(true).await;
                }
            }
            drop(permit);
        });
    }
    pump.abort();
    running.shutdown().await;
    Ok(())
}

/// After a restart of the only worker: nothing is running, everything queued is
/// published again.
async fn recover_all(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    let now = nimbus_core::now_ms();
    invocation::Entity::update_many()
        .col_expr(invocation::Column::State, Expr::value(state::QUEUED))
        .col_expr(invocation::Column::UpdatedAt, Expr::value(now))
        .filter(invocation::Column::State.eq(state::RUNNING))
        .exec(db)
        .await?;
    invocation::Entity::update_many()
        .col_expr(invocation::Column::PublishedAt, Expr::value(None::<i64>))
        .filter(invocation::Column::State.eq(state::QUEUED))
        .exec(db)
        .await?;
    Ok(())
}

struct Worker {
    router: Arc<Router>,
    db: DatabaseConnection,
    bus: DynBus,
    http: reqwest::Client,
    /// Whether callbacks may go to loopback and private networks.
    private_callbacks: bool,
    /// Events of one tenant in flight in this process, at most (a quarter of the
    /// slots): one tenant's backlog never holds the others' share.
    share: usize,
    /// Per tenant: events in flight here, and how often it was over its share lately.
    tenants: Mutex<HashMap<String, TenantLoad>>,
    /// Retention and the rest.
    settings: WorkerSettings,
}

/// One tenant's use of this process's workers.
#[derive(Default)]
struct TenantLoad {
    /// Events in flight.
    running: usize,
    /// Events put back for being over the share, since `since`.
    deferred: u32,
    /// Start of the current second of deferrals.
    since: i64,
}

/// A tenant's slot among the workers; given back when dropped.
struct Turn<'a> {
    worker: &'a Worker,
    tenant: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut all = self.worker.tenants.lock().expect("lock");
        if let Some(t) = all.get_mut(&self.tenant) {
            t.running = t.running.saturating_sub(1);
            if t.running == 0 && t.deferred == 0 {
                all.remove(&self.tenant);
            }
        }
    }
}

/// What became of one attempt.
enum Outcome {
    /// The function returned.
    Success { result: Bytes, version: String },
    /// The function failed or timed out: retry or dead-letter.
    Failure(Value),
    /// It cannot run: no retries.
    Fatal(Value),
    /// No slot or no capacity: put it back without counting the attempt.
    Deferred,
}

impl Worker {
    /// A slot for one of `tenant`'s events, if it is within its share; else how
    /// long to put the event back for (longer the more the tenant floods).
    fn take_turn(&self, tenant: &str) -> Result<Turn<'_>, i64> {
        let now = nimbus_core::now_ms();
        let mut all = self.tenants.lock().expect("lock");
        let t = all.entry(tenant.to_string()).or_default();
        if now - t.since > 1_000 {
            t.deferred = 0;
            t.since = now;
        }
        if t.running >= self.share {
            t.deferred += 1;
            return Err((250 * t.deferred as i64).min(30_000));
        }
        t.running += 1;
        Ok(Turn {
            worker: self,
            tenant: tenant.to_string(),
        })
    }

    async fn handle(&self, id: &str, redelivered: bool) -> Result<(), sea_orm::DbErr> {
        let Some(inv) = invocation::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?
        else {
            return Ok(());
        };
        let now = nimbus_core::now_ms();
        let due = inv.state == state::QUEUED && inv.due_at <= now + 50;
        if !(due || (inv.state == state::RUNNING && redelivered)) {
            // Not due yet (a duplicate message), or already taken: nothing to do.
            return Ok(());
        }
        let _turn = match self.take_turn(&inv.tenant_id) {
            Ok(t) => t,
            Err(wait) if due => {
                // Over its share: back to the pump, without an attempt.
                invocation::Entity::update_many()
                    .col_expr(invocation::Column::DueAt, Expr::value(now + wait))
                    .col_expr(invocation::Column::PublishedAt, Expr::value(None::<i64>))
                    .filter(invocation::Column::Id.eq(id))
                    .filter(invocation::Column::State.eq(state::QUEUED))
                    .filter(invocation::Column::Attempts.eq(inv.attempts))
                    .exec(&self.db)
                    .await?;
                return Ok(());
            }
            // A redelivered running event (its worker died) is taken back at once.
            Err(_) => {
                let mut all = self.tenants.lock().expect("lock");
                all.entry(inv.tenant_id.clone()).or_default().running += 1;
                Turn {
                    worker: self,
                    tenant: inv.tenant_id.clone(),
                }
            }
        };
        // Claim it: one attempt more. A duplicate message finds it taken.
        let claim = invocation::Entity::update_many()
            .col_expr(invocation::Column::State, Expr::value(state::RUNNING))
            .col_expr(invocation::Column::Attempts, Expr::value(inv.attempts + 1))
            .col_expr(invocation::Column::StartedAt, Expr::value(now))
            .col_expr(invocation::Column::UpdatedAt, Expr::value(now))
            .filter(invocation::Column::Id.eq(id))
            .filter(invocation::Column::Attempts.eq(inv.attempts));
        let claim = match inv.state.as_str() {
            state::QUEUED if inv.due_at <= now + 50 => {
                claim.filter(invocation::Column::State.eq(state::QUEUED))
            }
            // Redelivered by the broker: the worker that held it died mid-run.
            state::RUNNING if redelivered => {
                claim.filter(invocation::Column::State.eq(state::RUNNING))
            }
            _ => return Ok(()),
        };
        if claim.exec(&self.db).await?.rows_affected != 1 {
            return Ok(());
        }
        let attempt = inv.attempts + 1;
        let cfg = self
            .router
            .async_config(&inv.tenant_id, &inv.function_name)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let outcome = self.attempt(&inv).await;
        let now = nimbus_core::now_ms();
        let mut am: invocation::ActiveModel = invocation::ActiveModel {
            id: Set(inv.id.clone()),
            updated_at: Set(now),
            ..Default::default()
        };
        let record_error = |err: &Value| {
            let mut errors: Vec<Value> = serde_json::from_str(&inv.errors).unwrap_or_default();
            errors.push(json!({"attempt": attempt, "at": nimbus_core::rfc3339(now), "error": err}));
            Value::from(errors).to_string()
        };
        match outcome {
            Outcome::Deferred => {
                am.state = Set(state::QUEUED.into());
                am.attempts = Set(inv.attempts);
                am.due_at = Set(now + 200);
                am.published_at = Set(None);
                am.update(&self.db).await?;
            }
            Outcome::Success { result, version } => {
                am.state = Set(state::SUCCEEDED.into());
                am.result = Set(Some(result.to_vec()));
                am.executed_version = Set(Some(version));
                am.finished_at = Set(Some(now));
                let done = am.update(&self.db).await?;
                if let Some(dest) = &cfg.on_success {
                    let ev = json!({"invocation_id": inv.id, "function": inv.function_name,
                        "event": event_json(&inv.event), "result": event_json(&result)});
                    self.destination(&inv, &dest.function, ev, Origin::OnSuccess)
                        .await;
                }
                self.callback(&cfg, &done);
            }
            Outcome::Fatal(err) => {
                am.state = Set(state::FAILED.into());
                am.errors = Set(record_error(&err));
                am.error = Set(Some(err.to_string()));
                am.finished_at = Set(Some(now));
                let done = am.update(&self.db).await?;
                self.callback(&cfg, &done);
            }
            Outcome::Failure(err) => {
                let wait = cfg
                    .retry_base_delay_ms
                    .saturating_mul(1 << (attempt - 1).min(20));
                let retries_left = (attempt as u32) <= cfg.max_retries;
                // The retry would run past the event's maximum age: it expires now.
                let young = now + wait as i64 - inv.created_at < cfg.max_event_age_s as i64 * 1000;
                am.errors = Set(record_error(&err));
                am.error = Set(Some(err.to_string()));
                if retries_left && young {
                    am.state = Set(state::QUEUED.into());
                    am.due_at = Set(now + wait as i64);
                    am.published_at = Set(None);
                    am.update(&self.db).await?;
                } else {
                    am.state = Set(state::DEAD_LETTERED.into());
                    am.finished_at = Set(Some(now));
                    let done = am.update(&self.db).await?;
                    tracing::info!(invocation = %inv.id, function = %inv.function_name, attempts = attempt, "dead-lettered");
                    crate::metrics::dead_lettered(&inv.tenant_id, &inv.function_name);
                    if let Some(dest) = &cfg.on_failure {
                        let errors: Value = serde_json::from_str(&done.errors).unwrap_or_default();
                        let ev = json!({"invocation_id": inv.id, "function": inv.function_name,
                            "event": event_json(&inv.event), "error": err, "errors": errors,
                            "attempts": attempt});
                        self.destination(&inv, &dest.function, ev, Origin::OnFailure)
                            .await;
                    }
                    self.callback(&cfg, &done);
                }
            }
        }
        Ok(())
    }

    /// Runs the event once through the data path.
    async fn attempt(&self, inv: &invocation::Model) -> Outcome {
        let tenant_max = match tenant::Entity::find_by_id(inv.tenant_id.clone())
            .one(&self.db)
            .await
        {
            Ok(Some(t)) => t.max_concurrency.max(0) as u32,
            Ok(None) => {
                return Outcome::Fatal(
                    json!({"errorType": "TenantNotFound", "errorMessage": "the tenant no longer exists"}),
                );
            }
            Err(e) => {
                return Outcome::Failure(
                    json!({"errorType": "Unavailable", "errorMessage": e.to_string()}),
                );
            }
        };
        let call = Call {
            tenant_id: inv.tenant_id.clone(),
            tenant_max_concurrency: tenant_max,
            function: inv.function_name.clone(),
            qualifier: inv.qualifier.clone(),
            event: Bytes::from(inv.event.clone()),
            request_id: inv.id.clone(),
            dry_run: false,
            from_timer: inv.origin == Origin::Timer.as_str(),
            tail_log: false,
            client_context: None,
            attempt: inv.attempts.max(0) as u32 + 1,
            trace: inv
                .traceparent
                .as_deref()
                .and_then(nimbus_core::trace::TraceContext::parse),
        };
        match self.router.invoke_with(call, Some(SLOT_WAIT)).await {
            Ok(Some(done)) => match done.outcome.function_error {
                None => Outcome::Success {
                    result: done.outcome.result,
                    version: done.executed_version,
                },
                Some(_) => {
                    Outcome::Failure(serde_json::from_slice(&done.outcome.result).unwrap_or_else(
                        |_| json!({"errorMessage": String::from_utf8_lossy(&done.outcome.result)}),
                    ))
                }
            },
            Ok(None) => Outcome::Deferred,
            Err(InvokeError::Concurrency(_)) => Outcome::Deferred,
            // Over a monthly cap: dead-lettered at once, replayable once the cap is
            // raised or the month turns.
            Err(InvokeError::QuotaExceeded(why)) => {
                Outcome::Fatal(json!({"errorType": "QuotaExceeded", "errorMessage": why}))
            }
            Err(e @ InvokeError::NotFound { .. }) => Outcome::Fatal(
                json!({"errorType": "ResourceNotFound", "errorMessage": e.to_string()}),
            ),
            Err(e @ InvokeError::Timeout(_)) => Outcome::Failure(
                json!({"errorType": "FunctionTimeout", "errorMessage": e.to_string()}),
            ),
            Err(e) => Outcome::Failure(
                json!({"errorType": "InvocationError", "errorMessage": e.to_string()}),
            ),
        }
    }

    /// Invokes a destination function asynchronously with `event`.
    async fn destination(
        &self,
        inv: &invocation::Model,
        function: &str,
        event: Value,
        origin: Origin,
    ) {
        let r = enqueue(
            &self.db,
            &self.bus,
            NewInvocation {
                tenant_id: &inv.tenant_id,
                function,
                qualifier: None,
                event: Bytes::from(event.to_string()),
                origin,
                replay_of: None,
                trace: None,
            },
        )
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, invocation = %inv.id, destination = function, "invoking a destination");
        }
    }

    /// POSTs the outcome to the function's callback URL, if it has one (best effort,
    /// three tries, in the background).
    fn callback(&self, cfg: &AsyncConfig, done: &invocation::Model) {
        let Some(url) = cfg.callback_url.clone() else {
            return;
        };
        let (http, body) = (self.http.clone(), to_json(done));
        let private = self.private_callbacks;
        tokio::spawn(async move {
            for attempt in 0..3u32 {
                match post_callback(&http, &url, &body, private).await {
                    Ok(()) => return,
                    Err(CallbackError::Forbidden(why)) => {
                        tracing::warn!(%url, why, "callback refused: not a public address");
                        return;
                    }
                    Err(CallbackError::Failed(e)) => {
                        tracing::debug!(error = %e, %url, "callback failed")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            tracing::warn!(%url, "callback gave up after 3 tries");
        });
    }

    /// Publishes what is due, and takes back what was lost, until shutdown.
    async fn pump(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut last_sweep = 0;
        let mut last_prune = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.wait() => return,
            }
            if let Err(e) = self.publish_due().await {
                tracing::warn!(error = %e, "publishing due invocations");
            }
            let now = nimbus_core::now_ms();
            if now - last_sweep > 5_000 {
                last_sweep = now;
                if let Err(e) = self.sweep(now).await {
                    tracing::warn!(error = %e, "sweeping invocations");
                }
                if let Err(e) = self.measure_waiting(now).await {
                    tracing::warn!(error = %e, "measuring the async queue");
                }
            }
            // Every minute, or twice per retention period when that is shorter.
            let retention = self.settings.retention.as_millis() as i64;
            if now - last_prune > (retention / 2).clamp(1_000, 60_000) {
                last_prune = now;
                if let Err(e) = self.prune(now).await {
                    tracing::warn!(error = %e, "pruning old invocations");
                }
            }
        }
    }

    /// Sets the queue gauges: events not finished (waiting, retrying, or claimed by a
    /// worker and waiting for a slot or running) per function, and the oldest's age.
    async fn measure_waiting(&self, now: i64) -> Result<(), sea_orm::DbErr> {
        let rows: Vec<(String, String, i64, i64)> = invocation::Entity::find()
            .select_only()
            .column(invocation::Column::TenantId)
            .column(invocation::Column::FunctionName)
            .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "waiting")
            .column_as(Expr::cust("CAST(MIN(created_at) AS BIGINT)"), "oldest")
            .filter(invocation::Column::State.is_in([state::QUEUED, state::RUNNING]))
            .group_by(invocation::Column::TenantId)
            .group_by(invocation::Column::FunctionName)
            .into_tuple()
            .all(&self.db)
            .await?;
        crate::metrics::set_waiting(&rows, now);
        Ok(())
    }

    async fn publish_due(&self) -> Result<(), sea_orm::DbErr> {
        let now = nimbus_core::now_ms();
        let due = invocation::Entity::find()
            .select_only()
            .column(invocation::Column::Id)
            .filter(invocation::Column::State.eq(state::QUEUED))
            .filter(invocation::Column::PublishedAt.is_null())
            .filter(invocation::Column::DueAt.lte(now))
            .order_by_asc(invocation::Column::DueAt)
            .limit(500)
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        for id in due {
            // Claimed by one pump only.
            let r = invocation::Entity::update_many()
                .col_expr(invocation::Column::PublishedAt, Expr::value(now))
                .filter(invocation::Column::Id.eq(&id))
                .filter(invocation::Column::PublishedAt.is_null())
                .exec(&self.db)
                .await?;
            if r.rows_affected == 1
                && let Err(e) = self.bus.publish(QUEUE, id.clone().into_bytes()).await
            {
                tracing::warn!(error = %e, "publishing an invocation");
                unpublish(&self.db, &id).await;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Deletes what is past retention: finished events, dead letters, and the claims
    /// of timer ticks. Bounds every tenant's rows.
    async fn prune(&self, now: i64) -> Result<u64, sea_orm::DbErr> {
        use nimbus_core::db::trigger_fire;
        let done = now - self.settings.retention.as_millis() as i64;
        let dead = now - self.settings.dead_letter_retention.as_millis() as i64;
        let a = invocation::Entity::delete_many()
            .filter(invocation::Column::State.is_in([state::SUCCEEDED, state::FAILED]))
            .filter(invocation::Column::UpdatedAt.lt(done))
            .exec(&self.db)
            .await?;
        let b = invocation::Entity::delete_many()
            .filter(invocation::Column::State.eq(state::DEAD_LETTERED))
            .filter(invocation::Column::UpdatedAt.lt(dead))
            .exec(&self.db)
            .await?;
        let c = trigger_fire::Entity::delete_many()
            .filter(trigger_fire::Column::FiredAt.lt(done))
            .exec(&self.db)
            .await?;
        Ok(a.rows_affected + b.rows_affected + c.rows_affected)
    }

    /// Running events whose worker died (no redelivery came), and queued events
    /// whose message was lost, go back to the pump.
    async fn sweep(&self, now: i64) -> Result<(), sea_orm::DbErr> {
        invocation::Entity::update_many()
            .col_expr(invocation::Column::State, Expr::value(state::QUEUED))
            .col_expr(invocation::Column::PublishedAt, Expr::value(None::<i64>))
            .col_expr(invocation::Column::UpdatedAt, Expr::value(now))
            .filter(invocation::Column::State.eq(state::RUNNING))
            .filter(invocation::Column::StartedAt.lt(now - RUNNING_STALE_MS))
            .exec(&self.db)
            .await?;
        invocation::Entity::update_many()
            .col_expr(invocation::Column::PublishedAt, Expr::value(None::<i64>))
            .filter(invocation::Column::State.eq(state::QUEUED))
            .filter(invocation::Column::PublishedAt.lt(now - QUEUED_STALE_MS))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
