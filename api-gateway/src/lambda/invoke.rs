//! Invoke: `POST /2015-03-31/functions/{name}/invocations`, through the native
//! invoke (the same router, quotas and async queue), with Lambda's headers.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::model::Role;
use serde_json::json;

use super::error::{LambdaError, LambdaResult};
use super::shapes::name_and_qualifier;
use super::{FunctionName, LambdaQuery};
use crate::caller::Caller;
use crate::handlers::invoke as native;
use crate::AppState;

/// `POST /2015-03-31/functions/{name}/invocations`: Invoke.
///
/// `X-Amz-Invocation-Type`: `RequestResponse` (200, the result), `Event` (202,
/// queued durably) or `DryRun` (204). A function error is a 200 with
/// `X-Amz-Function-Error: Unhandled` and the error document, as in Lambda; so is a
/// timeout.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaQuery(q): LambdaQuery<super::functions::QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> LambdaResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let (name, qualifier) = name_and_qualifier(&state, &tenant, &given, q.qualifier())?;
    let kind = match headers
        .get("x-amz-invocation-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("RequestResponse") => "sync",
        Some("Event") => "async",
        Some("DryRun") => "dry-run",
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type '{other}' is not RequestResponse, Event or DryRun"
            )));
        }
    };
    match headers.get("x-amz-log-type").map(|v| v.to_str().unwrap_or("")) {
        None | Some("None") => {}
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Log-Type '{other}' is not supported yet: read the call's logs with GET /v1/functions/{{name}}/logs"
            )));
        }
    }
    let mut native_headers = HeaderMap::new();
    native_headers.insert("x-nimbus-invocation-type", HeaderValue::from_static(kind));
    let result = native::invoke(
        State(state.clone()),
        caller,
        crate::extract::Path(name),
        crate::extract::Query(native::InvokeQuery {
            qualifier,
            error_status: None,
        }),
        native_headers,
        body,
    )
    .await;
    let resp = match result {
        Ok(r) => r,
        // A timeout is the function's error, as Lambda reports it.
        Err(e) if e.code == "FunctionTimeout" => {
            let doc = json!({"errorType": "Sandbox.Timedout", "errorMessage": e.message});
            let mut r = (StatusCode::OK, axum::Json(doc)).into_response();
            r.headers_mut()
                .insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
            return Ok(r);
        }
        Err(e) => return Err(e.into()),
    };
    let (parts, body) = resp.into_parts();
    let mut out = HeaderMap::new();
    let copy = |out: &mut HeaderMap, from: &str, to: &'static str| {
        if let Some(v) = parts.headers.get(from) {
            out.insert(to, v.clone());
        }
    };
    copy(&mut out, "x-nimbus-request-id", "x-amzn-requestid");
    copy(&mut out, "x-nimbus-executed-version", "x-amz-executed-version");
    copy(&mut out, "x-nimbus-cold-start", "x-nimbus-cold-start");
    if parts.headers.contains_key("x-nimbus-function-error") {
        out.insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
    }
    match parts.status {
        StatusCode::OK => {
            copy(&mut out, "content-type", "content-type");
            Ok((StatusCode::OK, out, body).into_response())
        }
        // Event: queued; the body is empty, as Lambda's.
        StatusCode::ACCEPTED => Ok((StatusCode::ACCEPTED, out).into_response()),
        status => Ok((status, out).into_response()),
    }
}
