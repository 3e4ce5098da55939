//! CreateFunction, GetFunction, GetFunctionConfiguration, ListFunctions,
//! UpdateFunctionCode, UpdateFunctionConfiguration and DeleteFunction.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_core::db::{function, version};
use nimbus_core::model::Role;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{LambdaError, LambdaResult};
use super::extract::{FunctionName, LambdaJson, LambdaQuery};
use super::shapes::{FunctionConfiguration, name_and_qualifier, runtime_of, unqualified_name};
use crate::AppState;
use crate::caller::{Caller, TenantInfo};
use crate::handlers::functions as native;

/// `Code` of CreateFunction.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionCode {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

/// `Environment` of a request.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EnvironmentInput {
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

/// CreateFunction's body. Fields Nimbus cannot honour are refused by name; the
/// rest of Lambda's fields (tags, tracing, …) are accepted and not kept.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunctionInput {
    function_name: String,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    code: FunctionCode,
    #[serde(default)]
    description: String,
    timeout: Option<u32>,
    memory_size: Option<u32>,
    #[serde(default)]
    publish: bool,
    environment: Option<EnvironmentInput>,
    package_type: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Lambda features this endpoint does not have: refused by name when a request
/// asks for them, rather than silently ignored.
fn refuse_unsupported(other: &serde_json::Map<String, Value>) -> LambdaResult<()> {
    let unsupported = [
        ("Layers", "layers"),
        ("ImageConfig", "container images"),
        ("FileSystemConfigs", "file systems"),
        ("SnapStart", "SnapStart"),
        ("KMSKeyArn", "customer KMS keys"),
    ];
    for (field, what) in unsupported {
        let asked = match other.get(field) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if asked {
            return Err(LambdaError::invalid(format!(
                "{field}: {what} are not supported by Nimbus (see docs/lambda-api.md)"
            )));
        }
    }
    if let Some(Value::Object(vpc)) = other.get("VpcConfig")
        && vpc
            .get("SubnetIds")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty())
    {
        return Err(LambdaError::invalid(
            "VpcConfig: use Nimbus's network settings (PUT /v1/network) instead of subnets",
        ));
    }
    if let Some(a) = other.get("Architectures").and_then(Value::as_array)
        && a.iter().any(|x| x.as_str() != Some("x86_64"))
    {
        return Err(LambdaError::invalid(
            "Architectures: only x86_64 is offered",
        ));
    }
    Ok(())
}

/// The zip of a `Code`, base64 as the SDKs send it.
fn zip_of(code: &FunctionCode) -> LambdaResult<String> {
    if code.image_uri.is_some() {
        return Err(LambdaError::invalid(
            "Code.ImageUri: container images are not supported; upload a zip (Code.ZipFile)",
        ));
    }
    if code.s3_bucket.is_some() {
        return Err(LambdaError::invalid(
            "Code.S3Bucket: code from S3 is not supported yet; upload the zip (Code.ZipFile)",
        ));
    }
    code.zip_file
        .clone()
        .ok_or_else(|| LambdaError::invalid("Code.ZipFile is required"))
}

/// The caller's tenant.
fn tenant_of(caller: &Caller) -> LambdaResult<TenantInfo> {
    Ok(caller.tenant()?.clone())
}

/// Timeout, seconds to ms, within Lambda's 1 to 900.
fn timeout_ms(seconds: u32) -> LambdaResult<u32> {
    if !(1..=900).contains(&seconds) {
        return Err(LambdaError::invalid(format!(
            "Timeout {seconds} is out of range: it must be 1 to 900 seconds"
        )));
    }
    Ok(seconds * 1000)
}

/// The function, read back after a change.
async fn configuration(
    state: &AppState,
    tenant: &TenantInfo,
    name: &str,
    role: Role,
) -> LambdaResult<FunctionConfiguration> {
    let f = crate::queries::find_function(&state.db, tenant, name)
        .await
        .map_err(LambdaError::from_core)?;
    Ok(FunctionConfiguration::latest(state, tenant, &f, role))
}

/// `Publish: true`: waits for the change, publishes, and answers the new version.
async fn published(
    state: &Arc<AppState>,
    caller: &Caller,
    tenant: &TenantInfo,
    name: &str,
) -> LambdaResult<FunctionConfiguration> {
    let (f, v) =
        super::versions::publish_now(state, caller, tenant, name, String::new(), None).await?;
    Ok(FunctionConfiguration::version(
        state,
        tenant,
        &f,
        &v,
        caller.role,
    ))
}

/// `POST /2015-03-31/functions`: CreateFunction.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    LambdaJson(input): LambdaJson<CreateFunctionInput>,
) -> LambdaResult<Response> {
    let tenant = tenant_of(&caller)?;
    refuse_unsupported(&input.other)?;
    if input.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(LambdaError::invalid(
            "PackageType: only Zip packages are supported",
        ));
    }
    let runtime_name = input
        .runtime
        .clone()
        .ok_or_else(|| LambdaError::invalid("Runtime is required for a Zip package"))?;
    let runtime = runtime_of(&runtime_name)?;
    let handler = input
        .handler
        .clone()
        .ok_or_else(|| LambdaError::invalid("Handler is required for a Zip package"))?;
    let body = native::CreateFunction {
        name: input.function_name.clone(),
        runtime: runtime.as_str().into(),
        handler,
        memory_mb: input.memory_size.unwrap_or(128),
        timeout_ms: timeout_ms(input.timeout.unwrap_or(3))?,
        env: input.environment.unwrap_or_default().variables,
        code: native::CodeBody::zip(zip_of(&input.code)?),
        reserved_concurrency: None,
        provisioned_concurrency: 0,
        async_config: None,
        process_model: "resident".into(),
        scheduled_warmups: Vec::new(),
        provisioned_qualifier: "$LATEST".into(),
        description: input.description,
        role: input.role,
        runtime_name: Some(runtime_name),
    };
    native::create(
        State(state.clone()),
        caller.clone(),
        axum::http::HeaderMap::new(),
        crate::extract::Json(body),
    )
    .await?;
    let c = if input.publish {
        published(&state, &caller, &tenant, &input.function_name).await?
    } else {
        configuration(&state, &tenant, &input.function_name, caller.role).await?
    };
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

/// `?Qualifier=`.
#[derive(Deserialize, Default)]
pub struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

impl QualifierQuery {
    /// The qualifier, if given.
    pub fn qualifier(&self) -> Option<&str> {
        self.qualifier.as_deref()
    }
}

/// A published version a qualifier names (None: `$LATEST`).
async fn resolve(
    state: &AppState,
    f: &function::Model,
    qualifier: Option<&str>,
) -> LambdaResult<Option<version::Model>> {
    let not_found = |q: &str| LambdaError::not_found(format!("Function not found: {}:{q}", f.name));
    let number = match qualifier {
        None | Some("$LATEST") => return Ok(None),
        Some(q) if q.bytes().all(|b| b.is_ascii_digit()) => {
            q.parse::<i32>().map_err(|_| not_found(q))?
        }
        Some(q) => {
            let a = crate::queries::alias_of(&state.db, &f.id, q)
                .await
                .map_err(|e| LambdaError::from_core(e.into()))?
                .ok_or_else(|| not_found(q))?;
            if a.version == "$LATEST" {
                return Ok(None);
            }
            a.version.parse::<i32>().map_err(|_| not_found(q))?
        }
    };
    crate::queries::version_of(&state.db, &f.id, number)
        .await
        .map_err(|e| LambdaError::from_core(e.into()))?
        .map(Some)
        .ok_or_else(|| not_found(&number.to_string()))
}

/// The configuration a name and qualifier point at.
async fn configuration_of(
    state: &AppState,
    caller: &Caller,
    given: &str,
    qualifier: Option<&str>,
) -> LambdaResult<(function::Model, FunctionConfiguration)> {
    caller.require(Role::Invoker)?;
    let tenant = tenant_of(caller)?;
    let (name, q) = name_and_qualifier(state, &tenant, given, qualifier)?;
    let f = crate::queries::find_function(&state.db, &tenant, &name)
        .await
        .map_err(|_| LambdaError::not_found(format!("Function not found: {given}")))?;
    let c = match resolve(state, &f, q.as_deref()).await? {
        None => FunctionConfiguration::latest(state, &tenant, &f, caller.role),
        Some(v) => FunctionConfiguration::version(state, &tenant, &f, &v, caller.role),
    };
    Ok((f, c))
}

/// `GET /2015-03-31/functions/{name}`: GetFunction.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(name): FunctionName,
    LambdaQuery(q): LambdaQuery<QualifierQuery>,
) -> LambdaResult<Response> {
    let (f, c) = configuration_of(&state, &caller, &name, q.qualifier.as_deref()).await?;
    let mut body = json!({
        "Configuration": c,
        "Code": {"RepositoryType": "S3"},
        "Tags": {},
    });
    if let Some(n) = f.reserved_concurrency {
        body["Concurrency"] = json!({"ReservedConcurrentExecutions": n});
    }
    Ok(Json(body).into_response())
}

/// `GET /2015-03-31/functions/{name}/configuration`: GetFunctionConfiguration.
pub async fn get_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(name): FunctionName,
    LambdaQuery(q): LambdaQuery<QualifierQuery>,
) -> LambdaResult<Response> {
    let (_, c) = configuration_of(&state, &caller, &name, q.qualifier.as_deref()).await?;
    Ok(Json(c).into_response())
}

/// `?Marker=&MaxItems=` of ListFunctions.
#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<u64>,
    #[serde(rename = "FunctionVersion")]
    function_version: Option<String>,
    #[serde(rename = "MasterRegion")]
    master_region: Option<String>,
}

/// `GET /2015-03-31/functions/`: ListFunctions, by name, `MaxItems` (≤ 50) a page;
/// `NextMarker` is the last name of the page. `FunctionVersion=ALL` lists each
/// function's published versions after its `$LATEST`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    LambdaQuery(q): LambdaQuery<ListQuery>,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = tenant_of(&caller)?;
    if q.function_version.as_deref().is_some_and(|v| v != "ALL") || q.master_region.is_some() {
        return Err(LambdaError::invalid(
            "FunctionVersion may only be ALL, and MasterRegion is not supported",
        ));
    }
    let page = q.max_items.unwrap_or(50).clamp(1, 50);
    let mut query = function::Entity::find()
        .filter(function::Column::TenantId.eq(&tenant.id))
        .order_by_asc(function::Column::Name)
        .limit(page + 1);
    if let Some(m) = &q.marker {
        query = query.filter(function::Column::Name.gt(m.as_str()));
    }
    let mut fs = query
        .all(&state.db)
        .await
        .map_err(|e| LambdaError::from_core(e.into()))?;
    let more = fs.len() as u64 > page;
    fs.truncate(page as usize);
    let all_versions = q.function_version.as_deref() == Some("ALL");
    let mut functions: Vec<FunctionConfiguration> = Vec::new();
    for f in &fs {
        functions.push(FunctionConfiguration::latest(
            &state,
            &tenant,
            f,
            caller.role,
        ));
        if all_versions {
            let vs = crate::queries::versions_of(&state.db, &f.id)
                .await
                .map_err(|e| LambdaError::from_core(e.into()))?;
            functions.extend(
                vs.iter()
                    .map(|v| FunctionConfiguration::version(&state, &tenant, f, v, caller.role)),
            );
        }
    }
    let mut body = json!({"Functions": functions});
    if more && let Some(last) = fs.last() {
        body["NextMarker"] = json!(last.name);
    }
    Ok(Json(body).into_response())
}

/// UpdateFunctionCode's body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateCodeInput {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// `PUT /2015-03-31/functions/{name}/code`: UpdateFunctionCode.
pub async fn update_code(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<UpdateCodeInput>,
) -> LambdaResult<Response> {
    let tenant = tenant_of(&caller)?;
    let name = unqualified_name(&state, &tenant, &given)?;
    refuse_unsupported(&input.other)?;
    let zip = zip_of(&FunctionCode {
        zip_file: input.zip_file,
        s3_bucket: input.s3_bucket,
        image_uri: input.image_uri,
    })?;
    if input.dry_run {
        // Checks the package as the update would, and changes nothing.
        caller.require(Role::Developer)?;
        let f = crate::queries::find_function(&state.db, &tenant, &name)
            .await
            .map_err(LambdaError::from_core)?;
        let runtime: nimbus_core::model::Runtime =
            f.runtime.parse().map_err(LambdaError::from_core)?;
        native::decode_package(&native::CodeBody::zip(zip), runtime, &f.handler)
            .map_err(LambdaError::from_core)?;
        return Ok(Json(FunctionConfiguration::latest(
            &state,
            &tenant,
            &f,
            caller.role,
        ))
        .into_response());
    }
    native::update_code(
        State(state.clone()),
        caller.clone(),
        crate::extract::Path(name.clone()),
        axum::http::HeaderMap::new(),
        crate::extract::Json(native::UpdateCode {
            zip_base64: Some(zip),
            ..Default::default()
        }),
    )
    .await?;
    let c = if input.publish {
        published(&state, &caller, &tenant, &name).await?
    } else {
        configuration(&state, &tenant, &name, caller.role).await?
    };
    Ok(Json(c).into_response())
}

/// UpdateFunctionConfiguration's body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfigurationInput {
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<u32>,
    memory_size: Option<u32>,
    environment: Option<EnvironmentInput>,
    runtime: Option<String>,
    #[serde(rename = "RevisionId")]
    _revision_id: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// `PUT /2015-03-31/functions/{name}/configuration`: UpdateFunctionConfiguration.
/// A request that changes nothing answers the configuration as it is.
pub async fn update_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<UpdateConfigurationInput>,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = tenant_of(&caller)?;
    let name = unqualified_name(&state, &tenant, &given)?;
    refuse_unsupported(&input.other)?;
    let f = crate::queries::find_function(&state.db, &tenant, &name)
        .await
        .map_err(LambdaError::from_core)?;
    let mut body = native::UpdateConfig::default();
    if let Some(r) = &input.runtime {
        if runtime_of(r)?.as_str() != f.runtime {
            return Err(LambdaError::invalid(format!(
                "Runtime: {r} is another runtime than the function's ({}); create a new function for it",
                f.runtime
            )));
        }
        if f.runtime_name.as_deref() != Some(r) {
            body.runtime_name = Some(r.clone());
        }
    }
    if input.memory_size.is_some_and(|m| m as i32 != f.memory_mb) {
        body.memory_mb = input.memory_size;
    }
    if let Some(t) = input.timeout {
        let ms = timeout_ms(t)?;
        if ms as i32 != f.timeout_ms {
            body.timeout_ms = Some(ms);
        }
    }
    if input.handler.as_deref().is_some_and(|h| h != f.handler) {
        body.handler = input.handler.clone();
    }
    if input
        .description
        .as_deref()
        .is_some_and(|d| d != f.description)
    {
        body.description = input.description.clone();
    }
    if input.role.is_some() && input.role != f.role {
        body.role = input.role.clone();
    }
    if let Some(e) = input.environment {
        body.env = Some(e.variables);
    }
    let changes = body.memory_mb.is_some()
        || body.timeout_ms.is_some()
        || body.handler.is_some()
        || body.description.is_some()
        || body.role.is_some()
        || body.runtime_name.is_some()
        || body.env.is_some();
    if changes {
        native::update_config(
            State(state.clone()),
            caller.clone(),
            crate::extract::Path(name.clone()),
            crate::extract::Json(body),
        )
        .await?;
    }
    Ok(Json(configuration(&state, &tenant, &name, caller.role).await?).into_response())
}

/// `DELETE /2015-03-31/functions/{name}`: DeleteFunction (the whole function; a
/// version cannot be deleted alone yet).
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaQuery(q): LambdaQuery<QualifierQuery>,
) -> LambdaResult<Response> {
    let tenant = tenant_of(&caller)?;
    let (name, qualifier) = name_and_qualifier(&state, &tenant, &given, q.qualifier.as_deref())?;
    if qualifier.is_some_and(|q| q != "$LATEST") {
        return Err(LambdaError::invalid(
            "Qualifier: deleting one version is not supported; delete the function",
        ));
    }
    native::delete(State(state.clone()), caller, crate::extract::Path(name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
