//! Functions and tasks: the control plane's asynchronous half (versions and
//! aliases are in `versions`).
//! Changes are validated here, recorded with a task, and answered with 202.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use nimbus_core::Error;
use nimbus_core::db::{function, task, task_step};
use nimbus_core::model::{self, AsyncConfig, ConfigChange, FunctionState, Role, Runtime};
use proto::bus::change_event;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, sea_query::Expr,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use workflow::TaskKind;

use crate::AppState;
use crate::caller::{Caller, TenantInfo};
use crate::env::seal_env;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::tasks::{claim, invalidate_local, refuse_if_deleting, start_task, start_task_with};
use crate::views::{
    FunctionAccepted, FunctionBody, FunctionList, FunctionView, TaskAccepted, TaskView,
};

/// The code part of a request: a zip, or the digest of a package this tenant
/// deployed before — in this region, or in `from_region`, which then sends it here
/// once.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    /// The zip, base64.
    #[serde(default)]
    pub(crate) zip_base64: Option<String>,
    /// Or the SHA-256 of a package the tenant deployed (lowercase hex).
    #[serde(default)]
    pub(crate) sha256: Option<String>,
    /// With `sha256`: the region that has the package, if this one does not.
    #[serde(default)]
    pub(crate) from_region: Option<String>,
}

impl CodeBody {
    /// A zip, base64.
    pub(crate) fn zip(zip_base64: String) -> CodeBody {
        CodeBody {
            zip_base64: Some(zip_base64),
            ..CodeBody::default()
        }
    }
}

/// Body of `POST /v1/functions`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFunction {
    pub(crate) name: String,
    pub(crate) runtime: String,
    pub(crate) handler: String,
    #[serde(default = "default_memory")]
    pub(crate) memory_mb: u32,
    #[serde(default = "default_timeout")]
    pub(crate) timeout_ms: u32,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) code: CodeBody,
    #[serde(default)]
    pub(crate) reserved_concurrency: Option<u32>,
    #[serde(default)]
    pub(crate) provisioned_concurrency: u32,
    #[serde(default, rename = "async")]
    pub(crate) async_config: Option<AsyncConfig>,
    /// `resident` (default) or `one-shot`.
    #[serde(default = "default_process_model")]
    pub(crate) process_model: String,
    /// Windows when instances are warmed ahead of load.
    #[serde(default)]
    pub(crate) scheduled_warmups: Vec<model::ScheduledWarmup>,
    /// What provisioned concurrency and warm-ups apply to: `$LATEST` (default), a
    /// version, or an alias (its main version).
    #[serde(default = "default_qualifier")]
    pub(crate) provisioned_qualifier: String,
    /// A description, 256 characters at most.
    #[serde(default)]
    pub(crate) description: String,
    /// Set by the Lambda-compatible API: the execution role, kept and shown.
    #[serde(skip)]
    pub(crate) role: Option<String>,
    /// Set by the Lambda-compatible API: the runtime's name as given.
    #[serde(skip)]
    pub(crate) runtime_name: Option<String>,
}

fn default_qualifier() -> String {
    "$LATEST".into()
}

/// Checks scheduled warm-ups, cron patterns included.
fn validate_warmups(w: &[model::ScheduledWarmup]) -> Result<(), Error> {
    model::validate_warmups(w)?;
    for x in w {
        nimbus_core::model::parse_cron(&x.cron)
            .map_err(|e| Error::Invalid(format!("scheduled_warmups: {e}")))?;
    }
    Ok(())
}

/// Instances kept for a function (provisioned, warm-ups) come out of its tenant's
/// `max_concurrency`: the tenant's provisioned concurrency in all, this function's
/// included, and any one warm-up window, stay within it.
async fn within_tenant_concurrency(
    state: &AppState,
    tenant: &crate::caller::TenantInfo,
    function: &str,
    provisioned: u32,
    warmups: &[model::ScheduledWarmup],
) -> Result<(), Error> {
    let max = tenant.limits.max_concurrency;
    // Summed in the database: a tenant may have thousands of functions.
    let others: i64 = function::Entity::find()
        .select_only()
        .column_as(
            Expr::cust("CAST(COALESCE(SUM(provisioned_concurrency), 0) AS BIGINT)"),
            "provisioned",
        )
        .filter(function::Column::TenantId.eq(&tenant.id))
        .filter(function::Column::Name.ne(function))
        .filter(function::Column::ProvisionedConcurrency.gt(0))
        .into_tuple()
        .one(&state.db)
        .await?
        .unwrap_or(0);
    if others + provisioned as i64 > max as i64 {
        return Err(Error::LimitExceeded(format!(
            "provisioned_concurrency {provisioned} with the tenant's other functions' {others} exceeds its max_concurrency {max}"
        )));
    }
    if let Some(w) = warmups.iter().find(|w| w.instances > max) {
        return Err(Error::LimitExceeded(format!(
            "scheduled_warmups: {} instances exceed the tenant's max_concurrency {max}",
            w.instances
        )));
    }
    Ok(())
}

fn default_process_model() -> String {
    "resident".into()
}

fn default_memory() -> u32 {
    128
}
fn default_timeout() -> u32 {
    3000
}

/// The package a request names — uploaded, or by digest (see [`crate::packages`]) —
/// checked against the runtime and handler. `credentials`: the caller's
/// `Authorization`, to fetch a package from another region with.
pub(crate) async fn package(
    state: &AppState,
    tenant: &TenantInfo,
    code: &CodeBody,
    runtime: Runtime,
    handler: &str,
    credentials: &str,
) -> Result<Bytes, Error> {
    match (&code.zip_base64, &code.sha256) {
        (Some(_), None) => decode_package(code, runtime, handler),
        (None, Some(sha)) => {
            let bytes = crate::packages::obtain(
                state,
                tenant,
                sha,
                code.from_region.as_deref(),
                credentials,
            )
            .await?;
            check_package(bytes.to_vec(), runtime, handler)
        }
        _ => Err(Error::Invalid(
            "code takes zip_base64, or sha256 (with from_region if another region has it)".into(),
        )),
    }
}

/// Decodes and checks an uploaded package against the runtime and handler.
pub(crate) fn decode_package(
    code: &CodeBody,
    runtime: Runtime,
    handler: &str,
) -> Result<Bytes, Error> {
    let b64 = code.zip_base64.as_deref().unwrap_or_default().trim();
    // Every 4 base64 characters carry 3 bytes: reject before decoding.
    if b64.len() / 4 * 3 > model::MAX_ZIP_BYTES + 3 {
        return Err(Error::PayloadTooLarge(
            "the code package is larger than 50 MiB zipped".into(),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Error::InvalidCode(format!("code.zip_base64 is not valid base64: {e}")))?;
    check_package(bytes, runtime, handler)
}

/// Checks a package's zip against the runtime and handler.
fn check_package(bytes: Vec<u8>, runtime: Runtime, handler: &str) -> Result<Bytes, Error> {
    match code_service::package::inspect(&bytes, runtime, handler) {
        Ok(_) => Ok(Bytes::from(bytes)),
        Err(code_service::package::PackageError::TooLarge(n)) => Err(Error::PayloadTooLarge(
            format!("the code package is {n} bytes; the limit is 50 MiB zipped"),
        )),
        Err(code_service::package::PackageError::BadHandler(m)) => Err(Error::Invalid(m)),
        Err(e) => Err(Error::InvalidCode(e.to_string())),
    }
}

/// The caller's `Authorization` header, as given.
fn credentials(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Puts an upload in staging for `code.store`.
async fn stage(state: &AppState, task_id: &str, bytes: Bytes) -> Result<(), Error> {
    state
        .store
        .put(&code_service::staging_key(task_id), bytes)
        .await
        .map_err(|e| Error::Unavailable(format!("object storage: {e:#}")))
}

async fn unstage(state: &AppState, task_id: &str) {
    let _ = state
        .store
        .delete(&code_service::staging_key(task_id))
        .await;
}

/// `POST /v1/functions`.
#[utoipa::path(post, path = "/v1/functions", tag = "functions", request_body = CreateFunction, responses((status = 202, description = "Accepted: the Pending function and its task id", body = FunctionAccepted), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 413, description = "PayloadTooLarge", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<CreateFunction>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    model::validate_name("function name", &body.name)?;
    let runtime: Runtime = body.runtime.parse()?;
    runtime.handler_files(&body.handler)?;
    model::validate_memory(body.memory_mb, tenant.limits.max_memory_mb)?;
    model::validate_timeout(body.timeout_ms)?;
    model::validate_env(&body.env)?;
    if let Some(r) = body.reserved_concurrency {
        model::validate_concurrency("reserved_concurrency", r)?;
    }
    model::validate_concurrency("provisioned_concurrency", body.provisioned_concurrency)?;
    model::validate_process_model(&body.process_model)?;
    validate_warmups(&body.scheduled_warmups)?;
    model::validate_qualifier("provisioned_qualifier", &body.provisioned_qualifier)?;
    model::validate_description(&body.description)?;
    let async_config = body.async_config.clone().unwrap_or_default();
    async_config.validate()?;
    within_tenant_concurrency(
        &state,
        &tenant,
        &body.name,
        body.provisioned_concurrency,
        &body.scheduled_warmups,
    )
    .await?;
    let bytes = package(
        &state,
        &tenant,
        &body.code,
        runtime,
        &body.handler,
        credentials(&headers),
    )
    .await?;

    let count = function::Entity::find()
        .filter(function::Column::TenantId.eq(&tenant.id))
        .count(&state.db)
        .await?;
    tenant.within("functions", count, tenant.limits.max_functions)?;
    let task_id = nimbus_core::new_id();
    stage(&state, &task_id, bytes).await?;
    let now = nimbus_core::now_ms();
    let function_id = nimbus_core::new_id();
    let f = function::Model {
        id: function_id.clone(),
        tenant_id: tenant.id.clone(),
        name: body.name.clone(),
        runtime: runtime.as_str().into(),
        handler: body.handler.clone(),
        memory_mb: body.memory_mb as i32,
        timeout_ms: body.timeout_ms as i32,
        env: seal_env(&state.secrets, &body.env, &function_id)?,
        state: FunctionState::Pending.as_str().into(),
        state_reason: None,
        code_sha256: None,
        code_size: 0,
        latest_version: 0,
        online: true,
        reserved_concurrency: body.reserved_concurrency.map(|n| n as i32),
        provisioned_concurrency: body.provisioned_concurrency as i32,
        async_config: serde_json::to_string(&async_config).map_err(anyhow::Error::from)?,
        pending_task: Some(task_id.clone()),
        revision: 1,
        created_at: now,
        updated_at: now,
        process_model: body.process_model.clone(),
        warmups: serde_json::to_string(&body.scheduled_warmups).map_err(anyhow::Error::from)?,
        provisioned_qualifier: body.provisioned_qualifier.clone(),
        description: body.description.clone(),
        role: body.role.clone(),
        runtime_name: body.runtime_name.clone(),
    };
    let params = json!({
        "function_id": f.id,
        "runtime": f.runtime,
        "handler": f.handler,
        "memory_mb": f.memory_mb,
        "provisioned_concurrency": f.provisioned_concurrency,
    });
    // The function, its task and the task's first command, written together.
    let mut w = nimbus_core::db::Batch::new(state.db.get_database_backend());
    w.insert(f.clone().into_active_model());
    let started = start_task_with(
        &state,
        w,
        task_id.clone(),
        TaskKind::CreateFunction,
        &f,
        params,
    )
    .await;
    let t = match started {
        Ok((t, _)) => t,
        Err(e) => {
            unstage(&state, &task_id).await;
            if nimbus_core::db::is_unique_violation(&e) {
                return Err(
                    Error::Conflict(format!("function '{}' already exists", body.name)).into(),
                );
            }
            return Err(e.into());
        }
    };
    Ok(crate::accepted(FunctionAccepted {
        function: FunctionView::new(&f, &tenant, &state, caller.role),
        task_id: t.id,
    }))
}

/// `GET /v1/functions`.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", responses((status = 200, description = "The tenant's functions", body = FunctionList), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let fs = function::Entity::find()
        .filter(function::Column::TenantId.eq(&tenant.id))
        .order_by_asc(function::Column::Name)
        .all(&state.db)
        .await?;
    let functions = fs
        .iter()
        .map(|f| FunctionView::new(f, tenant, &state, caller.role))
        .collect();
    Ok(axum::Json(FunctionList { functions }).into_response())
}

/// `GET /v1/functions/{name}`.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name")), responses((status = 200, description = "The function", body = FunctionBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let f = crate::queries::find_function(&state.db, tenant, &name).await?;
    Ok(axum::Json(FunctionBody {
        function: FunctionView::new(&f, tenant, &state, caller.role),
    })
    .into_response())
}

/// `PUT /v1/functions/{name}/code`.
/// Body of `PUT /v1/functions/{name}/code`: the package, and optionally the runtime
/// and handler it is for (checked with it, applied with it by the same task).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCode {
    /// The zip, base64.
    #[serde(default)]
    pub(crate) zip_base64: Option<String>,
    /// Or the SHA-256 of a package the tenant deployed (lowercase hex).
    #[serde(default)]
    pub(crate) sha256: Option<String>,
    /// With `sha256`: the region that has the package, if this one does not.
    #[serde(default)]
    pub(crate) from_region: Option<String>,
    /// A new runtime for the new package; absent: the function's.
    #[serde(default)]
    pub(crate) runtime: Option<String>,
    /// A new handler for the new package; absent: the function's.
    #[serde(default)]
    pub(crate) handler: Option<String>,
}

#[utoipa::path(put, path = "/v1/functions/{name}/code", tag = "functions", request_body = UpdateCode, params(("name" = String, Path, description = "Function name")), responses((status = 202, description = "Accepted: task id", body = TaskAccepted), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 413, description = "PayloadTooLarge", body = ErrorBody)), security(("bearer" = [])))]
pub async fn update_code(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<UpdateCode>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    refuse_if_deleting(&f)?;
    let runtime: Runtime = body.runtime.as_deref().unwrap_or(&f.runtime).parse()?;
    let handler = body.handler.clone().unwrap_or_else(|| f.handler.clone());
    runtime.handler_files(&handler)?;
    let code = CodeBody {
        zip_base64: body.zip_base64,
        sha256: body.sha256,
        from_region: body.from_region,
    };
    // The package is checked against the handler and runtime it will run with.
    let bytes = package(
        &state,
        &tenant,
        &code,
        runtime,
        &handler,
        credentials(&headers),
    )
    .await?;
    let task_id = nimbus_core::new_id();
    // Stage first: no transaction is held during the upload.
    stage(&state, &task_id, bytes).await?;
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    if let Err(e) = claim(txn, &f, &task_id, None).await {
        unstage(&state, &task_id).await;
        return Err(e.into());
    }
    let params = json!({"function_id": f.id, "runtime": runtime.as_str(), "handler": handler});
    let (t, _) = start_task(&state, turn, task_id, TaskKind::UpdateCode, &f, params).await?;
    Ok(crate::accepted(TaskAccepted { task_id: t.id }))
}

/// Body of `PATCH /v1/functions/{name}`. A field that is absent is left as it is;
/// `reserved_concurrency: null` removes the reservation.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[serde(default)]
    pub(crate) memory_mb: Option<u32>,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u32>,
    #[serde(default)]
    pub(crate) env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(crate) handler: Option<String>,
    #[serde(default, deserialize_with = "model::double_option::deserialize")]
    #[schema(value_type = Option<u32>, nullable)]
    pub(crate) reserved_concurrency: Option<Option<u32>>,
    #[serde(default)]
    pub(crate) provisioned_concurrency: Option<u32>,
    #[serde(default, rename = "async")]
    pub(crate) async_config: Option<AsyncConfig>,
    /// `resident` or `one-shot`.
    #[serde(default)]
    pub(crate) process_model: Option<String>,
    /// Replaces the scheduled warm-ups (`[]` removes them).
    #[serde(default)]
    pub(crate) scheduled_warmups: Option<Vec<model::ScheduledWarmup>>,
    /// `$LATEST`, a version, or an alias: what provisioned instances run.
    #[serde(default)]
    pub(crate) provisioned_qualifier: Option<String>,
    /// A description, 256 characters at most.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// Set by the Lambda-compatible API: the execution role.
    #[serde(skip)]
    pub(crate) role: Option<String>,
    /// Set by the Lambda-compatible API: the runtime's name, within the runtime.
    #[serde(skip)]
    pub(crate) runtime_name: Option<String>,
}

/// `PATCH /v1/functions/{name}`.
#[utoipa::path(patch, path = "/v1/functions/{name}", tag = "functions", request_body = UpdateConfig, params(("name" = String, Path, description = "Function name")), responses((status = 202, description = "Accepted: task id", body = TaskAccepted), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)), security(("bearer" = [])))]
pub async fn update_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<UpdateConfig>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    refuse_if_deleting(&f)?;
    let runtime: Runtime = f.runtime.parse()?;
    let mut change = ConfigChange::default();
    if let Some(m) = body.memory_mb {
        model::validate_memory(m, tenant.limits.max_memory_mb)?;
        change.memory_mb = Some(m);
    }
    if let Some(t) = body.timeout_ms {
        model::validate_timeout(t)?;
        change.timeout_ms = Some(t);
    }
    if let Some(env) = &body.env {
        model::validate_env(env)?;
        change.env = Some(seal_env(&state.secrets, env, &f.id)?);
    }
    if let Some(h) = &body.handler {
        runtime.handler_files(h)?;
        change.handler = Some(h.clone());
    }
    if let Some(r) = body.reserved_concurrency {
        if let Some(n) = r {
            model::validate_concurrency("reserved_concurrency", n)?;
        }
        change.reserved_concurrency = Some(r);
    }
    if let Some(p) = body.provisioned_concurrency {
        model::validate_concurrency("provisioned_concurrency", p)?;
        change.provisioned_concurrency = Some(p);
    }
    if let Some(m) = &body.process_model {
        model::validate_process_model(m)?;
        change.process_model = Some(m.clone());
    }
    if let Some(q) = &body.provisioned_qualifier {
        model::validate_qualifier("provisioned_qualifier", q)?;
        change.provisioned_qualifier = Some(q.clone());
    }
    if let Some(w) = &body.scheduled_warmups {
        validate_warmups(w)?;
        change.scheduled_warmups = Some(w.clone());
    }
    if let Some(a) = &body.async_config {
        a.validate()?;
        change.async_config = Some(a.clone());
    }
    if let Some(d) = &body.description {
        model::validate_description(d)?;
        change.description = Some(d.clone());
    }
    change.role = body.role.clone();
    change.runtime_name = body.runtime_name.clone();
    if change.is_empty() {
        return Err(Error::Invalid("nothing to change: give at least one field".into()).into());
    }
    if body.provisioned_concurrency.is_some() || body.scheduled_warmups.is_some() {
        let warmups: Vec<model::ScheduledWarmup> = match &body.scheduled_warmups {
            Some(w) => w.clone(),
            None => serde_json::from_str(&f.warmups).unwrap_or_default(),
        };
        within_tenant_concurrency(
            &state,
            &tenant,
            &name,
            body.provisioned_concurrency
                .unwrap_or(f.provisioned_concurrency.max(0) as u32),
            &warmups,
        )
        .await?;
    }
    let task_id = nimbus_core::new_id();
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    claim(txn, &f, &task_id, None).await?;
    let params = json!({
        "function_id": f.id,
        "changes": change,
        "memory_mb": body.memory_mb.map(|m| m as i32).unwrap_or(f.memory_mb),
        "provisioned_concurrency": body.provisioned_concurrency.map(|p| p as i32).unwrap_or(f.provisioned_concurrency),
        "previous_memory_mb": f.memory_mb,
        "previous_provisioned_concurrency": f.provisioned_concurrency,
    });
    let (t, _) = start_task(&state, turn, task_id, TaskKind::UpdateConfig, &f, params).await?;
    Ok(crate::accepted(TaskAccepted { task_id: t.id }))
}

/// `POST /v1/functions/{name}/offline` and `/online`: immediate, no task.
async fn set_online(
    state: Arc<AppState>,
    caller: Caller,
    name: String,
    online: bool,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    refuse_if_deleting(&f)?;
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    let mut am = f.clone().into_active_model();
    am.online = Set(online);
    am.revision = Set(f.revision + 1);
    am.updated_at = Set(nimbus_core::now_ms());
    let f = am.update(txn).await?;
    let change =
        workflow::outbox::put_change(txn, change_event::Kind::Function, &tenant.id, &f.name)
            .await?;
    turn.commit().await?;
    workflow::outbox::flush_rows_in_background(&state.db, &state.bus, vec![change]);
    invalidate_local(&state, &tenant.id, &f.name).await;
    Ok(axum::Json(FunctionBody {
        function: FunctionView::new(&f, &tenant, &state, caller.role),
    })
    .into_response())
}

/// `POST /v1/functions/{name}/offline`.
#[utoipa::path(post, path = "/v1/functions/{name}/offline", tag = "functions", params(("name" = String, Path, description = "Function name")), responses((status = 200, description = "The function, offline", body = FunctionBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn offline(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    set_online(state, caller, name, false).await
}

/// `POST /v1/functions/{name}/online`.
#[utoipa::path(post, path = "/v1/functions/{name}/online", tag = "functions", params(("name" = String, Path, description = "Function name")), responses((status = 200, description = "The function, online", body = FunctionBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn online(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    set_online(state, caller, name, true).await
}

/// `DELETE /v1/functions/{name}`.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name")), responses((status = 202, description = "Accepted: task id", body = TaskAccepted), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    let task_id = nimbus_core::new_id();
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    claim(txn, &f, &task_id, Some(FunctionState::Deleting)).await?;
    let params = json!({"function_id": f.id});
    let (t, _) = start_task(&state, turn, task_id, TaskKind::DeleteFunction, &f, params).await?;
    Ok(crate::accepted(TaskAccepted { task_id: t.id }))
}

/// The longest a task may be waited for in one request, seconds.
pub const MAX_TASK_WAIT_S: u64 = 20;

/// Query of `GET /v1/tasks/{id}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// A long poll: answer when the task ends (`Succeeded` or `Failed`), or after
    /// this many seconds, whichever comes first (0–20; default 0, answer at once).
    #[serde(default)]
    wait: Option<u64>,
}

/// `GET /v1/tasks/{id}`.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path), TaskQuery), responses((status = 200, description = "The task and its steps", body = TaskView), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_task(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let wait = match q.wait.unwrap_or(0) {
        w if w > MAX_TASK_WAIT_S => {
            return Err(
                Error::Invalid(format!("wait must be at most {MAX_TASK_WAIT_S} seconds")).into(),
            );
        }
        w => Duration::from_secs(w),
    };
    let scope = match (&caller.tenant, &caller.acting_for, caller.role) {
        (Some(t), _, _) | (None, Some(t), _) => Some(t.id.clone()),
        (None, None, Role::Admin) => None,
        _ => return Err(Error::not_found("Task", &id).into()),
    };
    // Subscribed before the first read, so an end announced between the read and
    // the wait still wakes it.
    let mut changes = state.function_changes.subscribe();
    let read = || async {
        task::Entity::find_by_id(id.clone())
            .one(&state.db)
            .await
            .map(|t| t.filter(|t| scope.as_ref().is_none_or(|s| *s == t.tenant_id)))
    };
    let mut t = read().await?.ok_or_else(|| Error::not_found("Task", &id))?;
    if !wait.is_zero()
        && !ended(&t)
        && let Some(_slot) = crate::watchers::Slot::take(&state.task_waiters, &t.tenant_id)
    {
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = state.stopping.subscribe();
        loop {
            // Woken by a change of the task's function; re-read at least every
            // second all the same, in case an announcement was lost.
            let recheck = deadline.min(tokio::time::Instant::now() + TASK_RECHECK);
            loop {
                tokio::select! {
                    c = changes.recv() => match c {
                        Ok(Some(k)) if k.0 != t.tenant_id || k.1 != t.function_name => {}
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            tokio::time::sleep_until(recheck).await;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(recheck) => break,
                    _ = stopping.changed() => break,
                }
            }
            t = read().await?.ok_or_else(|| Error::not_found("Task", &id))?;
            let stop = *stopping.borrow();
            if stop || ended(&t) || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
    }
    let steps = task_step::Entity::find()
        .filter(task_step::Column::TaskId.eq(&t.id))
        .order_by_asc(task_step::Column::Idx)
        .all(&state.db)
        .await?;
    let body = TaskView::new(&t, &steps);
    Ok(axum::Json(body).into_response())
}

/// How often a task wait re-reads its task without being woken.
const TASK_RECHECK: Duration = Duration::from_secs(1);

fn ended(t: &task::Model) -> bool {
    t.state == model::TaskState::Succeeded.as_str() || t.state == model::TaskState::Failed.as_str()
}
