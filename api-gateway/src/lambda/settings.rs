//! PutFunctionConcurrency, GetFunctionConcurrency, DeleteFunctionConcurrency,
//! Put/Update/Get/DeleteFunctionEventInvokeConfig, and GetAccountSettings.
//!
//! Concurrency and async settings are configuration changes (tasks) on the native
//! API; Lambda applies them at once, so these calls wait for the task.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_core::db::function;
use nimbus_core::model::{AsyncConfig, Destination, Role};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{LambdaError, LambdaResult};
use super::extract::{FunctionName, LambdaJson, LambdaQuery};
use super::shapes::{function_arn, parse_function_name, unqualified_function, unqualified_name};
use super::versions::settled;
use crate::AppState;
use crate::caller::{Caller, TenantInfo};
use crate::handlers::functions as native;

/// Applies a configuration change through the native handler and waits for it.
async fn change(
    state: &Arc<AppState>,
    caller: &Caller,
    tenant: &TenantInfo,
    name: &str,
    body: native::UpdateConfig,
) -> LambdaResult<function::Model> {
    settled(state, tenant, name).await?;
    native::update_config(
        State(state.clone()),
        caller.clone(),
        crate::extract::Path(name.to_string()),
        crate::extract::Json(body),
    )
    .await?;
    settled(state, tenant, name).await
}

/// PutFunctionConcurrency's body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConcurrencyInput {
    reserved_concurrent_executions: Option<u32>,
}

/// `PUT /2017-10-31/functions/{name}/concurrency`: PutFunctionConcurrency. The
/// reservation also caps the function (0 throttles every call), as in Lambda.
pub async fn put_concurrency(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<ConcurrencyInput>,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let name = unqualified_name(&state, &tenant, &given)?;
    let n = input
        .reserved_concurrent_executions
        .ok_or_else(|| LambdaError::invalid("ReservedConcurrentExecutions is required"))?;
    if n > tenant.limits.max_concurrency {
        return Err(LambdaError::invalid(format!(
            "ReservedConcurrentExecutions {n} is above the account's concurrency limit of {}",
            tenant.limits.max_concurrency
        )));
    }
    let body = native::UpdateConfig {
        reserved_concurrency: Some(Some(n)),
        ..Default::default()
    };
    let f = change(&state, &caller, &tenant, &name, body).await?;
    Ok(Json(json!({"ReservedConcurrentExecutions": f.reserved_concurrency})).into_response())
}

/// `GET /2019-09-30/functions/{name}/concurrency`: GetFunctionConcurrency (`{}`
/// when nothing is reserved).
pub async fn get_concurrency(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let body = match f.reserved_concurrency {
        Some(n) => json!({"ReservedConcurrentExecutions": n}),
        None => json!({}),
    };
    Ok(Json(body).into_response())
}

/// `DELETE /2017-10-31/functions/{name}/concurrency`: DeleteFunctionConcurrency.
pub async fn delete_concurrency(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let name = f.name.clone();
    if f.reserved_concurrency.is_some() {
        let body = native::UpdateConfig {
            reserved_concurrency: Some(None),
            ..Default::default()
        };
        change(&state, &caller, &tenant, &name, body).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{"Destination": arn}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationInput {
    destination: Option<String>,
}

/// `DestinationConfig`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationConfigInput {
    on_success: Option<DestinationInput>,
    on_failure: Option<DestinationInput>,
}

/// Put/UpdateFunctionEventInvokeConfig's body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventInvokeConfigInput {
    maximum_retry_attempts: Option<u32>,
    maximum_event_age_in_seconds: Option<u64>,
    destination_config: Option<DestinationConfigInput>,
}

/// A destination ARN to a function of the same tenant. Only functions are
/// destinations here (not queues, topics or buses).
fn destination(
    state: &AppState,
    tenant: &TenantInfo,
    d: Option<DestinationInput>,
) -> LambdaResult<Option<Destination>> {
    let Some(arn) = d.and_then(|d| d.destination) else {
        return Ok(None);
    };
    if !arn.contains(":function:") && arn.starts_with("arn:") {
        return Err(LambdaError::invalid(format!(
            "Destination {arn}: only functions are destinations here"
        )));
    }
    let (name, q) = parse_function_name(state, tenant, &arn).map_err(|_| {
        LambdaError::invalid(format!(
            "Destination {arn} is not a function of this account"
        ))
    })?;
    if q.is_some() {
        return Err(LambdaError::invalid(
            "Destination: a destination is a function's $LATEST; give it without a qualifier",
        ));
    }
    Ok(Some(Destination { function: name }))
}

/// `FunctionEventInvokeConfig` of a function.
fn event_invoke_config(state: &AppState, tenant: &TenantInfo, f: &function::Model) -> Value {
    let c: AsyncConfig = serde_json::from_str(&f.async_config).unwrap_or_default();
    let dest = |d: &Option<Destination>| match d {
        Some(d) => json!({"Destination": function_arn(state, tenant, &d.function, None)}),
        None => json!({}),
    };
    json!({
        "LastModified": f.updated_at as f64 / 1000.0,
        "FunctionArn": function_arn(state, tenant, &f.name, Some("$LATEST")),
        "MaximumRetryAttempts": c.max_retries,
        "MaximumEventAgeInSeconds": c.max_event_age_s,
        "DestinationConfig": {"OnSuccess": dest(&c.on_success), "OnFailure": dest(&c.on_failure)},
    })
}

/// `PUT` (replace) and `POST` (update) `/2019-09-25/functions/{name}/event-invoke-config`.
async fn set_event_invoke_config(
    state: Arc<AppState>,
    caller: Caller,
    given: String,
    input: EventInvokeConfigInput,
    replace: bool,
) -> LambdaResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    let name = f.name.clone();
    let mut c: AsyncConfig = if replace {
        AsyncConfig::default()
    } else {
        serde_json::from_str(&f.async_config).unwrap_or_default()
    };
    // The callback URL is not Lambda's: it stays as it was.
    c.callback_url = serde_json::from_str::<AsyncConfig>(&f.async_config)
        .ok()
        .and_then(|old| old.callback_url);
    if let Some(n) = input.maximum_retry_attempts {
        if n > 2 {
            return Err(LambdaError::invalid("MaximumRetryAttempts must be 0 to 2"));
        }
        c.max_retries = n;
    }
    if let Some(s) = input.maximum_event_age_in_seconds {
        if !(60..=21_600).contains(&s) {
            return Err(LambdaError::invalid(
                "MaximumEventAgeInSeconds must be 60 to 21600",
            ));
        }
        c.max_event_age_s = s;
    }
    if let Some(d) = input.destination_config {
        c.on_success = destination(&state, &tenant, d.on_success)?;
        c.on_failure = destination(&state, &tenant, d.on_failure)?;
    } else if replace {
        c.on_success = None;
        c.on_failure = None;
    }
    let body = native::UpdateConfig {
        async_config: Some(c),
        ..Default::default()
    };
    let f = change(&state, &caller, &tenant, &name, body).await?;
    Ok(Json(event_invoke_config(&state, &tenant, &f)).into_response())
}

/// `PUT /2019-09-25/functions/{name}/event-invoke-config`: PutFunctionEventInvokeConfig.
pub async fn put_event_invoke_config(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<EventInvokeConfigInput>,
) -> LambdaResult<Response> {
    set_event_invoke_config(state, caller, given, input, true).await
}

/// `POST /2019-09-25/functions/{name}/event-invoke-config`: UpdateFunctionEventInvokeConfig.
pub async fn update_event_invoke_config(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaJson(input): LambdaJson<EventInvokeConfigInput>,
) -> LambdaResult<Response> {
    set_event_invoke_config(state, caller, given, input, false).await
}

/// `GET /2019-09-25/functions/{name}/event-invoke-config`: GetFunctionEventInvokeConfig.
pub async fn get_event_invoke_config(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let f = unqualified_function(&state, &tenant, &given).await?;
    Ok(Json(event_invoke_config(&state, &tenant, &f)).into_response())
}

/// `DELETE /2019-09-25/functions/{name}/event-invoke-config`: back to the defaults.
pub async fn delete_event_invoke_config(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
) -> LambdaResult<Response> {
    let input = EventInvokeConfigInput {
        maximum_retry_attempts: None,
        maximum_event_age_in_seconds: None,
        destination_config: None,
    };
    set_event_invoke_config(state, caller, given, input, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /2016-08-19/account-settings/`: GetAccountSettings, from the tenant's
/// limits and what it uses.
pub async fn account_settings(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    LambdaQuery(_q): LambdaQuery<serde_json::Map<String, Value>>,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let fs = function::Entity::find()
        .filter(function::Column::TenantId.eq(&tenant.id))
        .all(&state.db)
        .await
        .map_err(|e| LambdaError::from_core(e.into()))?;
    let code: i64 = fs.iter().map(|f| f.code_size).sum();
    let reserved: i64 = fs
        .iter()
        .filter_map(|f| f.reserved_concurrency)
        .map(i64::from)
        .sum();
    let max = i64::from(tenant.limits.max_concurrency);
    Ok(Json(json!({
        "AccountLimit": {
            // No total is enforced beyond this: every function at its largest.
            "TotalCodeSize": i64::from(tenant.limits.max_functions) * nimbus_core::model::MAX_ZIP_BYTES as i64,
            "CodeSizeUnzipped": nimbus_core::model::MAX_UNZIPPED_BYTES,
            "CodeSizeZipped": nimbus_core::model::MAX_ZIP_BYTES,
            "ConcurrentExecutions": max,
            "UnreservedConcurrentExecutions": (max - reserved).max(0),
        },
        "AccountUsage": {
            "TotalCodeSize": code,
            "FunctionCount": fs.len(),
        },
    }))
    .into_response())
}
