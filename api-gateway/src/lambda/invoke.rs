//! Invoke: `POST /2015-03-31/functions/{name}/invocations`, through the invoke path
//! the native API uses ([`native::run_call`]: the same router, quotas and async
//! queue), with Lambda's headers.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::error::{LambdaError, LambdaResult};
use super::extract::{FunctionName, LambdaQuery};
use super::shapes::name_and_qualifier;
use crate::AppState;
use crate::caller::Caller;
use crate::error::request_id;
use crate::handlers::invoke::{self as native, Answer, CallSpec, InvocationKind};

/// Lambda's limit on `X-Amz-Client-Context`, base64.
const MAX_CLIENT_CONTEXT: usize = 3583;

/// `X-Amz-Client-Context`: base64 of a JSON object, handed to the function as JSON.
fn client_context(headers: &HeaderMap) -> LambdaResult<Option<String>> {
    let Some(v) = headers.get("x-amz-client-context") else {
        return Ok(None);
    };
    let bad = || {
        LambdaError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Client context must be a valid Base64-encoded JSON object.",
        )
    };
    let b64 = v.to_str().map_err(|_| bad())?;
    if b64.len() > MAX_CLIENT_CONTEXT {
        return Err(LambdaError::invalid(format!(
            "X-Amz-Client-Context is longer than {MAX_CLIENT_CONTEXT} bytes"
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad())?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if !doc.is_object() {
        return Err(bad());
    }
    Ok(Some(doc.to_string()))
}

/// The log a `Tail` call gets, as Lambda prints it: START, the function's lines,
/// END and REPORT; base64 of its last 4 KiB.
fn log_result(
    rid: &str,
    version: &str,
    output: &[u8],
    took_ms: f64,
    memory_mb: u32,
    init_ms: Option<u32>,
) -> String {
    let mut log = format!("START RequestId: {rid} Version: {version}\n");
    log.push_str(&String::from_utf8_lossy(output));
    log.push_str(&format!("END RequestId: {rid}\n"));
    log.push_str(&format!(
        "REPORT RequestId: {rid}\tDuration: {took_ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mb} MB",
        took_ms.ceil().max(1.0) as u64
    ));
    if let Some(i) = init_ms {
        log.push_str(&format!("\tInit Duration: {i}.00 ms"));
    }
    log.push('\n');
    let limit = nimbus_core::nodes::LOG_TAIL;
    let bytes = log.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(limit)..];
    base64::engine::general_purpose::STANDARD.encode(tail)
}

/// `POST /2015-03-31/functions/{name}/invocations`: Invoke.
///
/// `X-Amz-Invocation-Type`: `RequestResponse` (200, the result), `Event` (202,
/// queued durably) or `DryRun` (204). A function error is a 200 with
/// `X-Amz-Function-Error: Unhandled` and the error document, as in Lambda; so is a
/// timeout. `X-Amz-Log-Type: Tail` answers the call's log in `X-Amz-Log-Result`.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    FunctionName(given): FunctionName,
    LambdaQuery(q): LambdaQuery<super::functions::QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> LambdaResult<Response> {
    let tenant = caller.tenant()?.clone();
    let (name, qualifier) = name_and_qualifier(&state, &tenant, &given, q.qualifier())?;
    let kind = match headers
        .get("x-amz-invocation-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("RequestResponse") => InvocationKind::Sync,
        Some("Event") => InvocationKind::Async,
        Some("DryRun") => InvocationKind::DryRun,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type '{other}' is not RequestResponse, Event or DryRun"
            )));
        }
    };
    let tail_log = match headers
        .get("x-amz-log-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("None") => false,
        Some("Tail") => kind == InvocationKind::Sync,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Log-Type '{other}' is not None or Tail"
            )));
        }
    };
    // Lambda takes JSON events only, and says so before anything runs.
    let body = if kind == InvocationKind::DryRun {
        body
    } else {
        // Read and bounded (6 MiB) with its signature check.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|_| LambdaError::invalid("the request body could not be read"))?;
        if !bytes.iter().all(u8::is_ascii_whitespace)
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            return Err(LambdaError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Could not parse request body into json: the payload must be JSON",
            ));
        }
        Body::from(bytes)
    };
    let spec = CallSpec {
        name,
        qualifier,
        kind,
        tail_log,
        client_context: client_context(&headers)?,
    };
    let rid = request_id();
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        out.insert("x-amzn-requestid", v);
    }
    let started = Instant::now();
    let done = match native::run_call(&state, &caller, spec, body).await {
        Ok(Answer::Ran(done)) => done,
        Ok(Answer::Queued(_)) => return Ok((StatusCode::ACCEPTED, out).into_response()),
        Ok(Answer::DryRun) => return Ok((StatusCode::NO_CONTENT, out).into_response()),
        // A timeout is the function's error, as Lambda reports it.
        Err(e) if e.code == "FunctionTimeout" => {
            let doc = json!({"errorType": "Sandbox.Timedout", "errorMessage": format!("RequestId: {rid} Error: {}", e.message)});
            out.insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
            return Ok((StatusCode::OK, out, axum::Json(doc)).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let o = done.outcome;
    out.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&done.executed_version) {
        out.insert("x-amz-executed-version", v);
    }
    out.insert(
        "x-nimbus-cold-start",
        HeaderValue::from_static(if o.cold_start { "true" } else { "false" }),
    );
    if o.function_error.is_some() {
        out.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    if tail_log {
        let memory_mb = done.memory_mb;
        let result = log_result(
            &rid,
            &done.executed_version,
            o.log_tail.as_deref().unwrap_or_default(),
            took_ms,
            memory_mb,
            o.cold_start.then_some(o.init_ms),
        );
        if let Ok(v) = HeaderValue::from_str(&result) {
            out.insert("x-amz-log-result", v);
        }
    }
    Ok((StatusCode::OK, out, o.result).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_result_reads_as_lambdas() {
        let b64 = log_result("r1", "$LATEST", b"hello\n", 1.234, 128, Some(52));
        let text = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            text,
            "START RequestId: r1 Version: $LATEST\nhello\nEND RequestId: r1\nREPORT RequestId: r1\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tInit Duration: 52.00 ms\n"
        );
        // At most 4 KiB: the end is kept.
        let long = vec![b'x'; 10_000];
        let b64 = log_result("r1", "1", &long, 1.0, 128, None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.ends_with(b"Memory Size: 128 MB\n"));
    }
}
