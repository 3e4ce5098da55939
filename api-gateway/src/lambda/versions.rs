//! PublishVersion, ListVersionsByFunction, and the aliases: CreateAlias, GetAlias,
//! UpdateAlias, DeleteAlias, ListAliases (with `RoutingConfig`'s weights).
//!
//! Publishing is a task on the native API (202); Lambda's PublishVersion answers
//! the new version, so it waits here for the task (and so do the Publish flags of
//! CreateFunction and UpdateFunctionCode).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use nimbus_core::db::{alias, function, task, version};
use nimbus_core::model::{FunctionState, Role};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{LambdaError, LambdaResult};
use super::extract::{FunctionName, LambdaJson, LambdaQuery};
use super::shapes::{
    FunctionConfiguration, code_sha256, function_arn, unqualified_function, unqualified_name,
};
use crate::AppState;
use crate::caller::{Caller, TenantInfo};
use crate::handlers::versions as native;

/// The longest a Lambda call waits for a task it started (publishing, or the
/// change a `Publish` flag follows).
const TASK_WAIT: Duration = Duration::from_secs(60);

fn db_err(e: sea_orm::DbErr) -> LambdaError {
    LambdaError::from_core(e.into())
}

/// Waits until no task changes the function; answers it as it is then.
pub async fn settled(
    state: &AppState,
    tenant: &TenantInfo,
    name: &str,
) -> LambdaResult<function::Model> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let f = crate::queries::find_function(&state.db, tenant, name)
            .await
            .map_err(LambdaError::from_core)?;
        let Some(task_id) = &f.pending_task else {
            return Ok(f);
        };
        if start.elapsed() > TASK_WAIT {
            return Err(LambdaError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                format!(
                    "the change (task {task_id}) did not finish within {TASK_WAIT:?}; it goes on"
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Why a function's last task failed, if it did.
async fn last_failure(state: &AppState, f: &function::Model) -> Option<String> {
    let t = task::Entity::find()
        .filter(task::Column::FunctionId.eq(&f.id))
        .order_by_desc(task::Column::CreatedAt)
        .one(&state.db)
        .await
        .ok()??;
    (t.state == nimbus_core::model::TaskState::Failed.as_str())
        .then(|| t.error.unwrap_or_else(|| "the task failed".into()))
}

/// Publishes `$LATEST` as a new version and waits for it. `expect_sha256`: Lambda's
/// `CodeSha256` precondition (base64).
pub async fn publish_now(
    state: &Arc<AppState>,
    caller: &Caller,
    tenant: &TenantInfo,
    name: &str,
    description: String,
    expect_sha256: Option<&str>,
) -> LambdaResult<(function::Model, version::Model)> {
    let f = settled(state, tenant, name).await?;
    if f.state == FunctionState::Failed.as_str() {
        return Err(LambdaError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!("function '{name}' is Failed; it cannot be published"),
        ));
    }
    if let Some(want) = expect_sha256
        && f.code_sha256.as_deref().map(code_sha256).as_deref() != Some(want)
    {
        return Err(LambdaError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "CodeSha256 does not match the function's code",
        ));
    }
    let before = f.latest_version;
    let body = serde_json::to_vec(&json!({"description": description}))
        .map_err(|e| LambdaError::from_core(nimbus_core::Error::Internal(e.into())))?;
    native::publish(
        State(state.clone()),
        caller.clone(),
        crate::extract::Path(name.to_string()),
        Bytes::from(body),
    )
    .await?;
    let f = settled(state, tenant, name).await?;
    if f.latest_version <= before {
        let why = last_failure(state, &f)
            .await
            .unwrap_or_else(|| "no version was made".into());
        return Err(LambdaError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            format!("publishing failed: {why}"),
        ));
    }
    let v = crate::queries::version_of(&state.db, &f.id, f.latest_version)
        .await
        .map_err(db_err)?
        .ok_or_else(|| LambdaError::not_found("the published version is gone"))?;
    Ok((f, v))
}

/// PublishVersion's body.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct PublishInput {
    #[serde(default)]
    description: String,
    code_sha256: Option<String>,
    #[serde(rename = "RevisionId")]
    _revision_id: Option<String>,
}

/// `POST /2015-03-31/functions/{name}/versions`: PublishVersion (201, the version).
pub async fn publish(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<PublishInput>,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let name = unqualified_name(&state, &tenant, &given)?;
    let (f, v) = publish_now(
        &state,
        &caller,
        &tenant,
        &name,
        input.description,
        input.code_sha256.as_deref(),
    )
    .await?;
    let c = FunctionConfiguration::version(&state, &tenant, &f, &v, caller.role);
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

/// `?Marker=&MaxItems=`.
#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<usize>,
    #[serde(rename = "FunctionVersion")]
    function_version: Option<String>,
}

/// One page of `items` after `marker` (an index), and the next marker.
fn page<T>(items: Vec<T>, q: &PageQuery) -> LambdaResult<(Vec<T>, Option<String>)> {
    let start = match &q.marker {
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| LambdaError::invalid("Marker is not one this endpoint gave"))?,
        None => 0,
    };
    let size = q.max_items.unwrap_or(50).clamp(1, 10_000);
    let total = items.len();
    let end = (start + size).min(total);
    let next = (end < total).then(|| end.to_string());
    Ok((items.into_iter().skip(start).take(size).collect(), next))
}

/// `GET /2015-03-31/functions/{name}/versions`: ListVersionsByFunction (`$LATEST`
/// first, then the versions in order).
pub async fn list_versions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaQuery(q): LambdaQuery<PageQuery>,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let vs = crate::queries::versions_of(&state.db, &f.id)
        .await
        .map_err(db_err)?;
    let mut all = vec![FunctionConfiguration::latest(
        &state,
        &tenant,
        &f,
        caller.role,
    )];
    all.extend(
        vs.iter()
            .map(|v| FunctionConfiguration::version(&state, &tenant, &f, v, caller.role)),
    );
    let (items, next) = page(all, &q)?;
    let mut body = json!({"Versions": items});
    if let Some(n) = next {
        body["NextMarker"] = json!(n);
    }
    Ok(Json(body).into_response())
}

/// `RoutingConfig`.
#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct RoutingConfig {
    #[serde(default)]
    additional_version_weights: BTreeMap<String, f64>,
}

/// `AliasConfiguration`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AliasConfiguration {
    alias_arn: String,
    name: String,
    function_version: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_config: Option<RoutingConfig>,
    revision_id: String,
}

impl AliasConfiguration {
    fn new(state: &AppState, tenant: &TenantInfo, f: &function::Model, a: &alias::Model) -> Self {
        let weights: BTreeMap<String, f64> =
            serde_json::from_str(&a.additional_weights).unwrap_or_default();
        AliasConfiguration {
            alias_arn: function_arn(state, tenant, &f.name, Some(&a.name)),
            name: a.name.clone(),
            function_version: a.version.clone(),
            description: a.description.clone(),
            routing_config: (!weights.is_empty()).then_some(RoutingConfig {
                additional_version_weights: weights,
            }),
            revision_id: format!("{}-{}", a.id, a.updated_at),
        }
    }
}

/// CreateAlias's and UpdateAlias's body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasInput {
    name: Option<String>,
    function_version: Option<String>,
    description: Option<String>,
    routing_config: Option<RoutingConfig>,
    #[serde(rename = "RevisionId")]
    _revision_id: Option<String>,
}

async fn find_alias(
    state: &AppState,
    f: &function::Model,
    name: &str,
) -> LambdaResult<Option<alias::Model>> {
    crate::queries::alias_of(&state.db, &f.id, name)
        .await
        .map_err(db_err)
}

/// Creates or moves an alias through the native handler; answers it.
async fn put_alias(
    state: &Arc<AppState>,
    caller: &Caller,
    tenant: &TenantInfo,
    f: &function::Model,
    name: &str,
    body: native::PutAlias,
) -> LambdaResult<AliasConfiguration> {
    native::put_alias(
        State(state.clone()),
        caller.clone(),
        crate::extract::Path((f.name.clone(), name.to_string())),
        crate::extract::Json(body),
    )
    .await?;
    let a = find_alias(state, f, name)
        .await?
        .ok_or_else(|| LambdaError::not_found(format!("Alias not found: {}:{name}", f.name)))?;
    Ok(AliasConfiguration::new(state, tenant, f, &a))
}

/// `POST /2015-03-31/functions/{name}/aliases`: CreateAlias (201; 409 if it exists).
pub async fn create_alias(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<AliasInput>,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let name = f.name.clone();
    let alias_name = input
        .name
        .ok_or_else(|| LambdaError::invalid("Name is required"))?;
    let version = input
        .function_version
        .ok_or_else(|| LambdaError::invalid("FunctionVersion is required"))?;
    if find_alias(&state, &f, &alias_name).await?.is_some() {
        return Err(LambdaError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!(
                "Alias already exists: {}",
                function_arn(&state, &tenant, &name, Some(&alias_name))
            ),
        ));
    }
    let body = native::PutAlias {
        version,
        additional_version_weights: input
            .routing_config
            .unwrap_or_default()
            .additional_version_weights,
        description: input.description.unwrap_or_default(),
    };
    let a = put_alias(&state, &caller, &tenant, &f, &alias_name, body).await?;
    Ok((StatusCode::CREATED, Json(a)).into_response())
}

/// `PUT /2015-03-31/functions/{name}/aliases/{alias}`: UpdateAlias (404 if it does
/// not exist; fields not given stay).
pub async fn update_alias(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path((given, alias_name)): axum::extract::Path<(String, String)>,
    LambdaJson(input): LambdaJson<AliasInput>,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let name = f.name.clone();
    let a = find_alias(&state, &f, &alias_name)
        .await?
        .ok_or_else(|| LambdaError::not_found(format!("Alias not found: {name}:{alias_name}")))?;
    let weights = match input.routing_config {
        Some(r) => r.additional_version_weights,
        None => serde_json::from_str(&a.additional_weights).unwrap_or_default(),
    };
    let body = native::PutAlias {
        version: input.function_version.unwrap_or(a.version.clone()),
        additional_version_weights: weights,
        description: input.description.unwrap_or(a.description.clone()),
    };
    let a = put_alias(&state, &caller, &tenant, &f, &alias_name, body).await?;
    Ok(Json(a).into_response())
}

/// `GET /2015-03-31/functions/{name}/aliases/{alias}`: GetAlias.
pub async fn get_alias(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path((given, alias_name)): axum::extract::Path<(String, String)>,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let name = f.name.clone();
    let a = find_alias(&state, &f, &alias_name)
        .await?
        .ok_or_else(|| LambdaError::not_found(format!("Alias not found: {name}:{alias_name}")))?;
    Ok(Json(AliasConfiguration::new(&state, &tenant, &f, &a)).into_response())
}

/// `DELETE /2015-03-31/functions/{name}/aliases/{alias}`: DeleteAlias (204).
pub async fn delete_alias(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path((given, alias_name)): axum::extract::Path<(String, String)>,
) -> LambdaResult<Response> {
    let tenant = caller.tenant()?.clone();
    let name = unqualified_name(&state, &tenant, &given)?;
    native::delete_alias(
        State(state.clone()),
        caller,
        crate::extract::Path((name, alias_name)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /2015-03-31/functions/{name}/aliases`: ListAliases (optionally only those
/// pointing at `FunctionVersion`).
pub async fn list_aliases(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaQuery(q): LambdaQuery<PageQuery>,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let list = crate::queries::aliases_of(&state.db, &f.id)
        .await
        .map_err(db_err)?;
    let all: Vec<AliasConfiguration> = list
        .iter()
        .filter(|a| q.function_version.as_ref().is_none_or(|v| *v == a.version))
        .map(|a| AliasConfiguration::new(&state, &tenant, &f, a))
        .collect();
    let (items, next) = page(all, &q)?;
    let mut body: Value = json!({"Aliases": items});
    if let Some(n) = next {
        body["NextMarker"] = json!(n);
    }
    Ok(Json(body).into_response())
}
