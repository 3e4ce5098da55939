//! What the API answers, typed: each body here is a struct, so `/openapi.json`
//! describes it field by field. Only a function's own result and events stay
//! free-form JSON.

use nimbus_core::db::{alias, function, task, task_step, version};
use nimbus_core::model::{Role, ScheduledWarmup};
use nimbus_core::rfc3339;
use nimbus_core::secrets::SecretBox;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::TenantInfo;
use crate::env::{open_env, shown_env};

/// A function as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionView {
    /// Its name, unique in the tenant.
    pub name: String,
    /// The tenant's name.
    pub tenant: String,
    /// The region it runs in.
    pub region: String,
    /// `python3`, `nodejs`, `provided` or `wasm`.
    pub runtime: String,
    /// What the runtime calls.
    pub handler: String,
    /// Memory, MB.
    pub memory_mb: i32,
    /// Timeout, ms.
    pub timeout_ms: i32,
    /// Its environment variables: values for developers and up, names only for
    /// invokers.
    #[schema(value_type = Object)]
    pub env: Value,
    /// `Pending`, `Active`, `Failed` or `Deleting`.
    pub state: String,
    /// Why it is `Failed`, if it is.
    pub state_reason: Option<String>,
    /// Whether it takes calls.
    pub online: bool,
    /// The code package's digest, once stored.
    pub code_sha256: Option<String>,
    /// The zipped package's size, bytes.
    pub code_size: i64,
    /// The newest published version, if any.
    pub latest_version: Option<String>,
    /// Concurrency kept for it alone (and its cap).
    pub reserved_concurrency: Option<i32>,
    /// Instances kept started.
    pub provisioned_concurrency: i32,
    /// `resident` or `one-shot`.
    pub process_model: String,
    /// Instances started ahead of calls, by cron.
    pub scheduled_warmups: Vec<ScheduledWarmup>,
    /// What provisioned instances run: `$LATEST`, a version or an alias.
    pub provisioned_qualifier: String,
    /// Asynchronous invocation settings.
    #[serde(rename = "async")]
    #[schema(value_type = Object)]
    pub async_config: Value,
    /// Its description ("" if none).
    pub description: String,
    /// Its ARN on the Lambda-compatible API.
    pub arn: String,
    /// The task changing it, if one runs.
    pub pending_task: Option<String>,
    /// Bumped by every change.
    pub revision: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl FunctionView {
    /// `f` as `role` may see it.
    pub fn new(f: &function::Model, tenant: &TenantInfo, state: &AppState, role: Role) -> Self {
        FunctionView {
            name: f.name.clone(),
            tenant: tenant.name.clone(),
            region: state.region.name.clone(),
            runtime: f.runtime.clone(),
            handler: f.handler.clone(),
            memory_mb: f.memory_mb,
            timeout_ms: f.timeout_ms,
            env: shown_env(open_env(&state.secrets, &f.env, &f.id), role),
            state: f.state.clone(),
            state_reason: f.state_reason.clone(),
            online: f.online,
            code_sha256: f.code_sha256.clone(),
            code_size: f.code_size,
            latest_version: (f.latest_version > 0).then(|| f.latest_version.to_string()),
            reserved_concurrency: f.reserved_concurrency,
            provisioned_concurrency: f.provisioned_concurrency,
            process_model: f.process_model.clone(),
            scheduled_warmups: serde_json::from_str(&f.warmups).unwrap_or_default(),
            provisioned_qualifier: f.provisioned_qualifier.clone(),
            async_config: serde_json::from_str(&f.async_config)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            description: f.description.clone(),
            arn: crate::lambda::shapes::function_arn(state, tenant, &f.name, None),
            pending_task: f.pending_task.clone(),
            revision: f.revision,
            created_at: rfc3339(f.created_at),
            updated_at: rfc3339(f.updated_at),
        }
    }
}

/// `{"function": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionBody {
    /// The function.
    pub function: FunctionView,
}

/// `{"functions": […]}`, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    /// The tenant's functions.
    pub functions: Vec<FunctionView>,
}

/// A function created: it is `Pending` until its task succeeds.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionAccepted {
    /// The function, as recorded.
    pub function: FunctionView,
    /// The task creating it (`GET /v1/tasks/{id}`).
    pub task_id: String,
}

/// A change accepted: its task runs it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskAccepted {
    /// The task (`GET /v1/tasks/{id}`).
    pub task_id: String,
}

/// One step of a task.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// The service that runs it: `code`, `network`, `resource` or `workflow`.
    pub service: String,
    /// What it does (`store`, `ensure`, `reserve`, `activate`, …).
    pub action: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Compensating` or `Compensated`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// Its last error.
    pub error: Option<String>,
}

impl From<&task_step::Model> for StepView {
    fn from(s: &task_step::Model) -> Self {
        StepView {
            service: s.service.clone(),
            action: s.action.clone(),
            state: s.state.clone(),
            attempts: s.attempts,
            error: s.error.clone(),
        }
    }
}

/// A task: one change to a function, step by step.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// Its id.
    pub id: String,
    /// `create_function`, `update_code`, `update_config`, `publish_version` or
    /// `delete_function`.
    pub kind: String,
    /// The function it changes.
    pub function: String,
    /// `Running`, `Succeeded` or `Failed`.
    pub state: String,
    /// Its steps, in order.
    pub steps: Vec<StepView>,
    /// What it produced (e.g. `{"version": "3"}`), once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The request that started it.
    pub request_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once it ended.
    pub finished_at: Option<String>,
}

impl TaskView {
    /// `t` with its `steps`.
    pub fn new(t: &task::Model, steps: &[task_step::Model]) -> Self {
        let ctx: Value = serde_json::from_str(&t.context).unwrap_or_default();
        TaskView {
            id: t.id.clone(),
            kind: t.kind.clone(),
            function: t.function_name.clone(),
            state: t.state.clone(),
            steps: steps.iter().map(StepView::from).collect(),
            result: ctx.get("result").cloned(),
            error: t.error.clone(),
            request_id: t.request_id.clone(),
            created_at: rfc3339(t.created_at),
            finished_at: t.finished_at.map(rfc3339),
        }
    }
}

/// A published version: an immutable snapshot of `$LATEST`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    /// Its number, as a string (`"1"`, `"2"`, …).
    pub version: String,
    /// What the publisher said of it.
    pub description: String,
    /// The runtime.
    pub runtime: String,
    /// The handler.
    pub handler: String,
    /// Memory, MB.
    pub memory_mb: i32,
    /// Timeout, ms.
    pub timeout_ms: i32,
    /// Its environment, shown as for the function.
    #[schema(value_type = Object)]
    pub env: Value,
    /// The code package's digest.
    pub code_sha256: String,
    /// The zipped package's size, bytes.
    pub code_size: i64,
    /// `resident` or `one-shot`.
    pub process_model: String,
    /// RFC 3339.
    pub created_at: String,
}

impl VersionView {
    /// `v` as `role` may see it.
    pub fn new(v: &version::Model, secrets: &SecretBox, role: Role) -> Self {
        VersionView {
            version: v.version.to_string(),
            description: v.description.clone(),
            runtime: v.runtime.clone(),
            handler: v.handler.clone(),
            memory_mb: v.memory_mb,
            timeout_ms: v.timeout_ms,
            env: shown_env(open_env(secrets, &v.env, &v.function_id), role),
            code_sha256: v.code_sha256.clone(),
            code_size: v.code_size,
            process_model: v.process_model.clone(),
            created_at: rfc3339(v.created_at),
        }
    }
}

/// `{"versions": […]}`, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    /// The function's versions.
    pub versions: Vec<VersionView>,
}

/// An alias: a name for a version, with part of its traffic sent to others.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasView {
    /// Its name.
    pub name: String,
    /// The version it points at.
    pub version: String,
    /// Other versions and the share of calls each gets (0 to 1).
    #[schema(value_type = Object)]
    pub additional_version_weights: Value,
    /// What it is for.
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&alias::Model> for AliasView {
    fn from(a: &alias::Model) -> Self {
        AliasView {
            name: a.name.clone(),
            version: a.version.clone(),
            additional_version_weights: serde_json::from_str(&a.additional_weights)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            description: a.description.clone(),
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
        }
    }
}

/// `{"alias": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasBody {
    /// The alias.
    pub alias: AliasView,
}

/// `{"aliases": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasList {
    /// The function's aliases.
    pub aliases: Vec<AliasView>,
}

/// A JWT minted from an API key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// The token (HS256).
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// Its id.
    pub id: String,
    /// Its name, unique.
    pub name: String,
    /// Its limits.
    pub limits: nimbus_core::model::Limits,
    /// RFC 3339.
    pub created_at: String,
}

impl TenantView {
    /// A tenant and when it was made (epoch ms).
    pub fn new(t: &TenantInfo, created_at: i64) -> Self {
        TenantView {
            id: t.id.clone(),
            name: t.name.clone(),
            limits: t.limits,
            created_at: rfc3339(created_at),
        }
    }
}

/// `{"tenant": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantBody {
    /// The tenant.
    pub tenant: TenantView,
}

/// `{"tenants": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    /// Every tenant, by name.
    pub tenants: Vec<TenantView>,
}

/// An API key, without its secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Its id (also the middle of the key).
    pub id: String,
    /// Its name.
    pub name: String,
    /// `invoker`, `developer`, `owner` or `admin`.
    pub role: String,
    /// Its tenant's name (None: an admin key).
    pub tenant: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl KeyView {
    /// A key and its tenant's name.
    pub fn new(k: &nimbus_core::db::api_key::Model, tenant_name: Option<&str>) -> Self {
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role.clone(),
            tenant: tenant_name.map(str::to_string),
            created_at: rfc3339(k.created_at),
            revoked: k.revoked_at.is_some(),
        }
    }
}

/// A key's secrets, shown once when it is made.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeySecrets {
    /// The API key (`nmb_…`): the bearer token of `/v1`.
    pub api_key: String,
    /// The access key id of its AWS pair (Signature V4 on the Lambda-compatible API).
    pub aws_access_key_id: String,
    /// The secret access key of its AWS pair.
    pub aws_secret_access_key: String,
    /// The region to scope signatures to.
    pub aws_region: String,
}

/// `POST /v1/api-keys`: the key and its secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// Its secrets, shown once.
    #[serde(flatten)]
    pub secrets: KeySecrets,
}

/// `POST /v1/tenants`: the tenant, its owner key and the key's secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    /// The tenant.
    pub tenant: TenantView,
    /// Its owner key.
    pub key: KeyView,
    /// The owner key's secrets, shown once.
    #[serde(flatten)]
    pub secrets: KeySecrets,
}

/// `{"api_keys": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Keys, oldest first.
    pub api_keys: Vec<KeyView>,
}

/// A tenant's network.
#[derive(Debug, Serialize, ToSchema)]
pub struct NetworkView {
    /// CIDRs or host names its functions may reach. Empty: no egress.
    pub egress: Vec<String>,
    /// The shared egress proxy, once allocated.
    pub proxy_endpoint: Option<String>,
}

/// `{"network": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NetworkBody {
    /// The network.
    pub network: NetworkView,
}

impl From<network_service::Vpc> for NetworkBody {
    fn from(v: network_service::Vpc) -> Self {
        NetworkBody {
            network: NetworkView {
                egress: v.egress,
                proxy_endpoint: v.proxy_endpoint,
            },
        }
    }
}

/// `{"invocation_id"}`: an event stored and queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationQueued {
    /// The asynchronous invocation's id.
    pub invocation_id: String,
}

/// A dead letter replayed as a new asynchronous invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// The new invocation's id.
    pub invocation_id: String,
    /// The dead letter's id.
    pub replay_of: String,
}

/// A dead letter: the invocation, with its id and event.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The invocation.
    #[serde(flatten)]
    pub invocation: events::invocations::InvocationView,
    /// Its id (as `invocation_id`).
    pub id: String,
    /// The event (JSON, or the text it was).
    #[schema(value_type = Object)]
    pub event: Value,
}

/// `{"dead_letters": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Newest first.
    pub dead_letters: Vec<DeadLetterView>,
}

/// One line a function printed.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLineView {
    /// RFC 3339.
    pub timestamp: String,
    /// The request running when it was printed ("" during init).
    pub request_id: String,
    /// `stdout`, `stderr`, or `platform` (the `START`, `END` and `REPORT` lines of
    /// each call, and why a call failed).
    pub stream: String,
    /// The line.
    pub message: String,
}

/// `{"lines": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogList {
    /// Oldest first.
    pub lines: Vec<LogLineView>,
}

/// A bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketView {
    /// Its name, unique in the tenant.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&nimbus_core::db::bucket::Model> for BucketView {
    fn from(b: &nimbus_core::db::bucket::Model) -> Self {
        BucketView {
            name: b.name.clone(),
            created_at: rfc3339(b.created_at),
        }
    }
}

/// `{"bucket": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketBody {
    /// The bucket.
    pub bucket: BucketView,
}

/// `{"buckets": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketList {
    /// The tenant's buckets.
    pub buckets: Vec<BucketView>,
}

/// An object stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectStored {
    /// The bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// Its entity tag.
    #[serde(rename = "eTag")]
    pub etag: String,
    /// Storage triggers fired by it.
    pub triggered: usize,
}

/// Storage events received: the invocations they queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Fired {
    /// Invocations queued.
    pub fired: usize,
}

/// A message queued on a tenant queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageQueued {
    /// The tenant's queue.
    pub queue: String,
    /// Its name on the broker.
    pub broker_queue: String,
}

/// A trigger, with its kind's settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    /// Its id.
    pub id: String,
    /// The function it calls.
    pub function: String,
    /// `http`, `timer`, `queue` or `storage`.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub created_at: String,
    /// `http`: where it is served, `/t/{tenant}{path}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_path: Option<String>,
    /// The kind's settings (`path`, `methods`, `cron`, `queue`, `bucket`, …).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, Value>,
}

impl TriggerView {
    /// A trigger of the tenant named `tenant_name`.
    pub fn new(t: &nimbus_core::db::trigger::Model, tenant_name: &str) -> Self {
        let settings = match serde_json::from_str(&t.config) {
            Ok(Value::Object(m)) => m,
            _ => Default::default(),
        };
        TriggerView {
            id: t.id.clone(),
            function: t.function_name.clone(),
            kind: t.kind.clone(),
            created_at: rfc3339(t.created_at),
            url_path: match (&t.route, t.kind.as_str()) {
                (Some(route), "http") => Some(format!("/t/{tenant_name}{route}")),
                _ => None,
            },
            settings,
        }
    }
}

/// `{"trigger": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerBody {
    /// The trigger.
    pub trigger: TriggerView,
}

/// `{"triggers": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerList {
    /// Oldest first.
    pub triggers: Vec<TriggerView>,
}

/// `{"status"}` of the health endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready`.
    pub status: &'static str,
    /// With a global directory: the link to it. A region whose link is down stays
    /// ready (it authenticates from its replica) and says so here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<crate::directory::replica::Link>,
}

/// `GET /v1/regions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionList {
    /// Every region of the platform (this one alone without a global directory).
    pub regions: Vec<RegionView>,
}

/// A region in the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionView {
    /// Its name, e.g. `ap-shanghai`.
    pub name: String,
    /// Its API endpoint.
    pub url: String,
    /// Its availability zones.
    pub zones: Vec<String>,
}

/// A state machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineView {
    pub name: String,
    /// Its ASL definition.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

/// `{"state_machine"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineBody {
    pub state_machine: MachineView,
}

/// `{"state_machines": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineList {
    pub state_machines: Vec<MachineView>,
}

/// An execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    pub execution_id: String,
    pub state_machine: String,
    /// The name it was started with (else its id).
    pub name: String,
    /// RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED.
    pub status: String,
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub started_at: String,
    pub stopped_at: Option<String>,
}

/// `POST …/executions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionStarted {
    pub execution_id: String,
    pub started_at: String,
}

/// `{"executions": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionView>,
}

/// One history event.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEvent {
    /// Its place in the history, from 0.
    pub id: i32,
    /// ExecutionStarted, StateEntered, StateExited, StateRetry, StateFailed,
    /// ChildrenStarted, ExecutionSucceeded, ExecutionFailed, ExecutionAborted,
    /// ExecutionTimedOut.
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub state: Option<String>,
    /// Input, output, error and cause, as they apply.
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub detail: serde_json::Value,
}

/// `GET /v1/executions/{id}/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    /// The execution's status now.
    pub status: String,
    pub events: Vec<HistoryEvent>,
}
