//! What the API answers, typed: each body here is a struct, so `/openapi.json`
//! describes it field by field (functions, versions, aliases and tasks so far; the
//! other areas still answer `serde_json::Value`).

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
