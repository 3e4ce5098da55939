//! The router: the short path from an authenticated call to a node.
//!
//! function exists and is invocable → resolve the qualifier (version, or alias by
//! weight) → concurrency quota (per function and per tenant) → node. Function
//! metadata is cached and dropped by change events, so a publish or an alias move
//! takes effect as soon as its event arrives (and within the cache TTL at worst).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::bus::{Broadcast, DynBus, names};
use nimbus_core::db::{alias, function, version, vpc};
use nimbus_core::model::FunctionState;
use nimbus_core::nodes::{InvokeOutcome, NodeError, Nodes};
use nimbus_core::secrets::SecretBox;
use nimbus_core::shutdown::Shutdown;
use proto::Message as _;
use proto::bus::{ChangeEvent, change_event};
use proto::node::FunctionRef;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::metrics::{FnMetrics, Running};
use crate::quota::{Ask, QuotaError, Quotas, Slot};
use crate::usage::{CapError, Meter, Outcome, UsageRecord, billed_ms};

/// Largest event and result (Lambda's 6 MiB).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// Why a call was refused or failed before the function answered.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No such function, version or alias (or another tenant's).
    #[error("{kind} '{name}' was not found")]
    NotFound {
        /// "Function", "Version" or "Alias".
        kind: &'static str,
        /// What was asked for.
        name: String,
    },
    /// The function is offline or not Active.
    #[error("{0}")]
    NotInvocable(String),
    /// A quota is full.
    #[error("{0}")]
    Concurrency(String),
    /// The tenant reached a monthly cap.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The function ran past its timeout.
    #[error("the function timed out after {0} ms")]
    Timeout(u32),
    /// The result is over 6 MiB.
    #[error("the function's result is {0} bytes; the limit is 6 MiB")]
    ResultTooLarge(usize),
    /// No node could take the call.
    #[error("{0}")]
    Unavailable(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// One call, as the gateway hands it over.
pub struct Call {
    /// The tenant's id.
    pub tenant_id: String,
    /// The tenant's concurrency limit.
    pub tenant_max_concurrency: u32,
    /// The function's name.
    pub function: String,
    /// `$LATEST`, a version number, or an alias; None is `$LATEST`.
    pub qualifier: Option<String>,
    /// The event.
    pub event: Bytes,
    /// The request id, passed to the function.
    pub request_id: String,
    /// Validate only.
    pub dry_run: bool,
    /// Sent by a timer trigger (a hint for the keep-alive predictor).
    pub from_timer: bool,
    /// Return the call's output with the outcome.
    pub tail_log: bool,
    /// The client context (JSON) handed to the function, if any.
    pub client_context: Option<String>,
    /// 0 for a caller waiting for the answer (its refusals are metered as
    /// throttles); else the attempt of a queued event or a workflow's task (each
    /// attempt metered on its own).
    pub attempt: u32,
    /// The caller's trace context; None starts a new trace.
    pub trace: Option<nimbus_core::trace::TraceContext>,
}

/// A call checked and holding its concurrency slot, ready to run.
pub struct Admitted {
    /// What runs.
    fref: FunctionRef,
    /// The caller's trace context.
    trace: Option<nimbus_core::trace::TraceContext>,
    /// The usage record's id.
    usage_id: String,
    /// Whether the caller waits for the answer (a refusal is then a throttle).
    sync_caller: bool,
    /// The function's metric handles.
    metrics: Arc<FnMetrics>,
    /// Counts the call as running until it ends.
    _running: Running,
    /// The slot, given back when dropped.
    _slot: Slot,
}

/// What a usage record needs of the function that ran.
struct Metered {
    tenant: String,
    function: String,
    version: String,
    memory_mb: u32,
    timeout_ms: u32,
}

impl From<&FunctionRef> for Metered {
    fn from(f: &FunctionRef) -> Self {
        Metered {
            tenant: f.tenant_id.clone(),
            function: f.function_name.clone(),
            version: f.version.clone(),
            memory_mb: f.memory_mb,
            timeout_ms: f.timeout_ms,
        }
    }
}

/// A finished call.
#[derive(Debug)]
pub struct Invoked {
    /// The version that ran.
    pub executed_version: String,
    /// Its memory, MB.
    pub memory_mb: u32,
    /// What the node reported.
    pub outcome: InvokeOutcome,
}

/// A function's metadata, as cached: `$LATEST`, versions and aliases, env opened.
struct Meta {
    function: function::Model,
    latest_env: HashMap<String, String>,
    versions: HashMap<i32, (version::Model, HashMap<String, String>)>,
    aliases: HashMap<String, alias::Model>,
    /// The tenant's egress rules.
    egress: Vec<String>,
    /// The function's metric handles.
    metrics: Arc<FnMetrics>,
}

/// The router.
pub struct Router {
    /// The metadata store.
    db: DatabaseConnection,
    /// Opens sealed environment variables.
    secrets: SecretBox,
    /// Function metadata by (tenant id, name).
    cache: moka::future::Cache<(String, String), Arc<Meta>>,
    /// Where calls run.
    nodes: Arc<dyn Nodes>,
    /// Calls in flight, per tenant and function.
    quotas: Quotas,
    /// Meters every call, and checks the tenants' monthly caps.
    meter: Option<Arc<Meter>>,
}

fn open_env(
    secrets: &SecretBox,
    sealed: &str,
    function_id: &str,
) -> Result<HashMap<String, String>, InvokeError> {
    secrets
        .open_for(sealed, &nimbus_core::secrets::env_place(function_id))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .ok_or_else(|| {
            InvokeError::Unavailable(
                "the function's environment cannot be opened with this region's key".into(),
            )
        })
}

impl Router {
    /// A router over `db`, running calls on `nodes`, counting calls in `quotas`,
    /// metering them with `meter`.
    pub fn new(
        db: DatabaseConnection,
        secrets: SecretBox,
        nodes: Arc<dyn Nodes>,
        quotas: Quotas,
        meter: Option<Arc<Meter>>,
    ) -> Arc<Self> {
        Arc::new(Router {
            db,
            secrets,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .support_invalidation_closures()
                .build(),
            nodes,
            quotas,
            meter,
        })
    }

    /// Applies change events to the cache until shutdown.
    pub async fn follow_changes(
        self: Arc<Self>,
        bus: DynBus,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let mut sub = bus.subscribe(names::CHANGES).await?;
        loop {
            let msg = tokio::select! {
                m = sub.recv() => match m { Some(m) => m, None => return Ok(()) },
                _ = shutdown.wait() => return Ok(()),
            };
            match msg {
                Broadcast::Gap => {
                    self.cache.invalidate_all();
                    if let Some(m) = &self.meter {
                        m.forget(None);
                    }
                }
                Broadcast::Message(b) => match ChangeEvent::decode(b.as_slice()) {
                    Ok(ev) if ev.kind() == change_event::Kind::Function => {
                        self.cache
                            .invalidate(&(ev.tenant_id.clone(), ev.name.clone()))
                            .await;
                        // A deleted function's instances go now, not at keep-alive's end.
                        let me = self.clone();
                        tokio::spawn(async move {
                            let gone = function::Entity::find()
                                .filter(function::Column::TenantId.eq(&ev.tenant_id))
                                .filter(function::Column::Name.eq(&ev.name))
                                .one(&me.db)
                                .await
                                .is_ok_and(|f| f.is_none());
                            if gone {
                                me.nodes.drain(&ev.tenant_id, &ev.name).await;
                            }
                        });
                    }
                    // Limits or network rules: every function of that tenant, and
                    // nothing of any other tenant's.
                    Ok(ev) if ev.kind() == change_event::Kind::Tenant => {
                        self.invalidate_tenant(&ev.tenant_id);
                    }
                    _ => {}
                },
            }
        }
    }

    /// Drops every function of a tenant from the cache now (the caller just changed
    /// the tenant).
    pub fn invalidate_tenant(&self, tenant_id: &str) {
        if let Some(m) = &self.meter {
            m.forget(Some(tenant_id));
        }
        let id = tenant_id.to_string();
        // Supported: the cache is built with invalidation closures.
        let _ = self.cache.invalidate_entries_if(move |k, _| k.0 == id);
    }

    /// Drops a function from the cache now (the caller just changed it).
    pub async fn invalidate(&self, tenant_id: &str, name: &str) {
        self.cache
            .invalidate(&(tenant_id.to_string(), name.to_string()))
            .await;
    }

    async fn load(&self, tenant_id: &str, name: &str) -> Result<Option<Arc<Meta>>, InvokeError> {
        let key = (tenant_id.to_string(), name.to_string());
        if let Some(m) = self.cache.get(&key).await {
            return Ok(Some(m));
        }
        let Some(f) = function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant_id))
            .filter(function::Column::Name.eq(name))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let mut versions = HashMap::new();
        for v in version::Entity::find()
            .filter(version::Column::FunctionId.eq(&f.id))
            .all(&self.db)
            .await?
        {
            let env = open_env(&self.secrets, &v.env, &v.function_id)?;
            versions.insert(v.version, (v, env));
        }
        let aliases = alias::Entity::find()
            .filter(alias::Column::FunctionId.eq(&f.id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        let egress = vpc::Entity::find_by_id(tenant_id.to_string())
            .one(&self.db)
            .await?
            .map(|v| serde_json::from_str(&v.egress).unwrap_or_default())
            .unwrap_or_default();
        let meta = Arc::new(Meta {
            egress,
            metrics: Arc::new(FnMetrics::new(tenant_id, name)),
            latest_env: open_env(&self.secrets, &f.env, &f.id)?,
            function: f,
            versions,
            aliases,
        });
        self.cache.insert(key, meta.clone()).await;
        Ok(Some(meta))
    }

    /// Picks what runs: `$LATEST`, a version, or an alias's version by weight.
    fn resolve(&self, m: &Meta, qualifier: Option<&str>) -> Result<FunctionRef, InvokeError> {
        let f = &m.function;
        let latest = || FunctionRef {
            tenant_id: f.tenant_id.clone(),
            function_name: f.name.clone(),
            version: "$LATEST".into(),
            runtime: f.runtime.clone(),
            handler: f.handler.clone(),
            code_sha256: f.code_sha256.clone().unwrap_or_default(),
            memory_mb: f.memory_mb as u32,
            timeout_ms: f.timeout_ms as u32,
            env: m.latest_env.clone(),
            process_model: f.process_model.clone(),
            egress: m.egress.clone(),
            from_timer: false,
            tail_log: false,
            client_context: String::new(),
            traceparent: String::new(),
        };
        let numbered = |n: i32| -> Result<FunctionRef, InvokeError> {
            let (v, env) = m.versions.get(&n).ok_or_else(|| InvokeError::NotFound {
                kind: "Version",
                name: format!("{}:{n}", f.name),
            })?;
            Ok(FunctionRef {
                tenant_id: f.tenant_id.clone(),
                function_name: f.name.clone(),
                version: n.to_string(),
                runtime: v.runtime.clone(),
                handler: v.handler.clone(),
                code_sha256: v.code_sha256.clone(),
                memory_mb: v.memory_mb as u32,
                timeout_ms: v.timeout_ms as u32,
                env: env.clone(),
                process_model: v.process_model.clone(),
                egress: m.egress.clone(),
                from_timer: false,
                tail_log: false,
                client_context: String::new(),
                traceparent: String::new(),
            })
        };
        match qualifier {
            None | Some("$LATEST") => Ok(latest()),
            Some(q) if q.chars().all(|c| c.is_ascii_digit()) => {
                numbered(q.parse().map_err(|_| InvokeError::NotFound {
                    kind: "Version",
                    name: q.into(),
                })?)
            }
            Some(q) => {
                let a = m.aliases.get(q).ok_or_else(|| InvokeError::NotFound {
                    kind: "Alias",
                    name: format!("{}:{q}", f.name),
                })?;
                let weights: HashMap<String, f64> =
                    serde_json::from_str(&a.additional_weights).unwrap_or_default();
                let mut roll = rand::random::<f64>();
                let mut chosen = a.version.clone();
                for (v, w) in &weights {
                    if roll < *w {
                        chosen = v.clone();
                        break;
                    }
                    roll -= w;
                }
                if chosen == "$LATEST" {
                    Ok(latest())
                } else {
                    numbered(chosen.parse().map_err(|_| InvokeError::NotFound {
                        kind: "Version",
                        name: chosen.clone(),
                    })?)
                }
            }
        }
    }

    /// What a qualifier of a function runs, env opened (None: no such function): for
    /// an alias, its main version (the one without a weight).
    pub async fn qualified_ref(
        &self,
        tenant_id: &str,
        name: &str,
        qualifier: &str,
    ) -> Result<Option<FunctionRef>, InvokeError> {
        let Some(m) = self.load(tenant_id, name).await? else {
            return Ok(None);
        };
        let q = m
            .aliases
            .get(qualifier)
            .map_or(qualifier.to_string(), |a| a.version.clone());
        self.resolve(&m, Some(&q)).map(Some)
    }

    /// The meter of this router's calls, if it meters.
    pub fn meter(&self) -> Option<&Arc<Meter>> {
        self.meter.as_ref()
    }

    /// Where calls run.
    pub fn nodes(&self) -> &Arc<dyn Nodes> {
        &self.nodes
    }

    /// The metadata store.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A function's asynchronous-delivery settings (None: no such function).
    pub async fn async_config(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<nimbus_core::model::AsyncConfig>, InvokeError> {
        Ok(self
            .load(tenant_id, name)
            .await?
            .map(|m| serde_json::from_str(&m.function.async_config).unwrap_or_default()))
    }

    /// Runs a call; a full quota answers at once.
    pub async fn invoke(&self, call: Call) -> Result<Option<Invoked>, InvokeError> {
        self.invoke_with(call, None).await
    }

    /// Runs a call; with `wait_for_slot`, a full quota is waited on that long instead
    /// of refused (queued events drain at the function's concurrency).
    pub async fn invoke_with(
        &self,
        call: Call,
        wait_for_slot: Option<Duration>,
    ) -> Result<Option<Invoked>, InvokeError> {
        match self.admit(&call, wait_for_slot).await? {
            Some(admitted) => self
                .run(admitted, call.event, &call.request_id)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Checks a call (function, state, qualifier) and takes its concurrency slot,
    /// without its event: a gateway admits a call before it reads the body, so a
    /// tenant's bodies in flight are bounded by its own concurrency. None for a dry
    /// run. `call.event` is not used.
    pub async fn admit(
        &self,
        call: &Call,
        wait_for_slot: Option<Duration>,
    ) -> Result<Option<Admitted>, InvokeError> {
        let m = self
            .load(&call.tenant_id, &call.function)
            .await?
            .ok_or_else(|| InvokeError::NotFound {
                kind: "Function",
                name: call.function.clone(),
            })?;
        let f = &m.function;
        if !f.online {
            return Err(InvokeError::NotInvocable(format!(
                "function '{}' is offline",
                f.name
            )));
        }
        if f.state != FunctionState::Active.as_str() || f.code_sha256.is_none() {
            return Err(InvokeError::NotInvocable(format!(
                "function '{}' is {}, not Active",
                f.name, f.state
            )));
        }
        let mut fref = self.resolve(&m, call.qualifier.as_deref())?;
        fref.from_timer = call.from_timer;
        fref.tail_log = call.tail_log;
        fref.client_context = call.client_context.clone().unwrap_or_default();
        if call.dry_run {
            return Ok(None);
        }
        if let Some(meter) = &self.meter {
            match meter.check_caps(&call.tenant_id).await {
                Ok(()) => {}
                Err(CapError::Exceeded(msg)) => {
                    m.metrics.quota_exceeded.inc();
                    return Err(InvokeError::QuotaExceeded(msg));
                }
                Err(CapError::Db(e)) => return Err(e.into()),
            }
        }
        let usage_id = if call.attempt > 1 {
            format!("{}:{}", call.request_id, call.attempt)
        } else {
            call.request_id.clone()
        };
        let ask = Ask {
            tenant: &call.tenant_id,
            tenant_max: call.tenant_max_concurrency,
            function: &call.function,
            function_max: f.reserved_concurrency.map(|n| n.max(0) as u32),
            timeout_ms: fref.timeout_ms,
        };
        let deadline = wait_for_slot.map(|w| std::time::Instant::now() + w);
        let mut pause = Duration::from_millis(5);
        let slot = loop {
            match self.quotas.acquire(&ask).await {
                Ok(slot) => break slot,
                Err(QuotaError::Full(full)) => match deadline {
                    Some(d) if std::time::Instant::now() < d => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(100));
                    }
                    _ => {
                        if call.attempt == 0 {
                            m.metrics.throttle.inc();
                            let f = Metered::from(&fref);
                            self.meter_call(&f, usage_id, Outcome::Throttle, None);
                        }
                        return Err(InvokeError::Concurrency(full));
                    }
                },
                Err(e @ QuotaError::Unavailable(_)) => {
                    return Err(InvokeError::Unavailable(e.to_string()));
                }
            }
        };
        Ok(Some(Admitted {
            fref,
            trace: call.trace,
            usage_id,
            sync_caller: call.attempt == 0,
            _running: Running::new(&m.metrics.running),
            metrics: m.metrics.clone(),
            _slot: slot,
        }))
    }

    /// Meters a call: one that ran (with the node's outcome), timed out, or was
    /// refused for concurrency.
    fn meter_call(&self, fref: &Metered, id: String, outcome: Outcome, o: Option<&InvokeOutcome>) {
        let Some(meter) = &self.meter else {
            return;
        };
        let (duration_us, init_ms, cold) = match (outcome, o) {
            // A timeout runs (and is billed) for the whole timeout.
            (Outcome::Timeout, _) => (fref.timeout_ms as u64 * 1000, 0, false),
            (_, Some(o)) => (o.duration_us, o.init_ms, o.cold_start),
            (_, None) => (0, 0, false),
        };
        let billed_ms = match outcome {
            Outcome::Throttle => 0,
            _ => billed_ms(duration_us, init_ms),
        };
        meter.record(&UsageRecord {
            id,
            tenant: fref.tenant.clone(),
            function: fref.function.clone(),
            version: fref.version.clone(),
            region: meter.region().to_string(),
            at_ms: nimbus_core::now_ms(),
            outcome,
            duration_us,
            billed_ms,
            memory_mb: fref.memory_mb,
            init_ms,
            cold,
        });
    }

    /// Runs an admitted call with its event; its slot is given back at the end.
    pub async fn run(
        &self,
        admitted: Admitted,
        event: Bytes,
        request_id: &str,
    ) -> Result<Invoked, InvokeError> {
        let Admitted {
            mut fref,
            trace,
            usage_id,
            sync_caller,
            metrics,
            _running,
            _slot,
        } = admitted;
        let executed_version = fref.version.clone();
        let memory_mb = fref.memory_mb;
        // Kept for metering only (the node takes the call's own).
        let metered = self.meter.as_ref().map(|_| Metered::from(&fref));
        let span = nimbus_core::span_if_exporting!(
            "invoke",
            otel.kind = "client",
            function = %fref.function_name,
            version = %fref.version,
            request_id,
        );
        fref.traceparent = nimbus_core::trace::enter(&span, trace).traceparent();
        let outcome =
            match tracing::Instrument::instrument(self.nodes.invoke(fref, event, request_id), span)
                .await
            {
                Ok(o) => o,
                Err(NodeError::Timeout(ms)) => {
                    metrics.timeout.inc();
                    if let Some(f) = &metered {
                        self.meter_call(f, usage_id, Outcome::Timeout, None);
                    }
                    return Err(InvokeError::Timeout(ms));
                }
                Err(NodeError::Capacity) => {
                    if sync_caller {
                        metrics.throttle.inc();
                    }
                    if let Some(f) = metered.as_ref().filter(|_| sync_caller) {
                        self.meter_call(f, usage_id, Outcome::Throttle, None);
                    }
                    return Err(InvokeError::Concurrency(
                        "no compute capacity is free; retry".into(),
                    ));
                }
                Err(NodeError::Init(why)) => InvokeOutcome {
                    result: Bytes::from(
                        serde_json::json!({"errorType": "Runtime.InitError", "errorMessage": why})
                            .to_string(),
                    ),
                    function_error: Some("Unhandled".into()),
                    cold_start: true,
                    init_ms: 0,
                    idle_after: 0,
                    log_tail: None,
                    duration_us: 0,
                },
                Err(NodeError::Internal(e)) => {
                    metrics.unavailable.inc();
                    return Err(InvokeError::Unavailable(format!("{e:#}")));
                }
            };
        match outcome.function_error {
            None => metrics.success.inc(),
            Some(_) => metrics.function_error.inc(),
        };
        metrics.duration.observe(outcome.duration_us as f64 / 1e6);
        if outcome.cold_start {
            metrics.init.observe(outcome.init_ms as f64 / 1e3);
        }
        if let Some(f) = &metered {
            let how = match outcome.function_error {
                None => Outcome::Success,
                Some(_) => Outcome::FunctionError,
            };
            self.meter_call(f, usage_id, how, Some(&outcome));
        }
        if outcome.result.len() > MAX_PAYLOAD {
            return Err(InvokeError::ResultTooLarge(outcome.result.len()));
        }
        Ok(Invoked {
            executed_version,
            memory_mb,
            outcome,
        })
    }
}
