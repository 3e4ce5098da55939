//! The Lambda-compatible API: AWS Lambda's REST routes (`/2015-03-31/functions/…`),
//! request and response shapes, headers and exception names, signed with AWS
//! Signature V4 by a key's access-key pair. boto3, the AWS CLI and the AWS SDKs
//! work against it with only the endpoint changed.
//!
//! It is an adapter: every operation calls the native handler of the same
//! operation (the same validation, roles, quotas, tasks and data path) and renames
//! its inputs, answers and errors. A function made through one API is seen,
//! invoked and changed through the other.

pub mod error;
mod extract;
mod functions;
mod invoke;
mod settings;
pub mod shapes;
mod sigv4;
mod versions;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use self::error::LambdaError;
use crate::AppState;

/// Largest body: a 50 MiB zip, base64-encoded, inside JSON (as on `/v1`).
const MAX_BODY: usize = crate::MAX_BODY_BYTES;

/// The Lambda-compatible routes, authenticated by Signature V4.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/2015-03-31/functions",
            post(functions::create).get(functions::list),
        )
        .route("/2015-03-31/functions/", get(functions::list))
        .route(
            "/2015-03-31/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            put(functions::update_code),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/2015-03-31/functions/{name}/versions",
            post(versions::publish).get(versions::list_versions),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases",
            post(versions::create_alias).get(versions::list_aliases),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases/{alias}",
            get(versions::get_alias)
                .put(versions::update_alias)
                .delete(versions::delete_alias),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(settings::put_concurrency).delete(settings::delete_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(settings::get_concurrency),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            put(settings::put_event_invoke_config)
                .post(settings::update_event_invoke_config)
                .get(settings::get_event_invoke_config)
                .delete(settings::delete_event_invoke_config),
        )
        .route(
            "/2016-08-19/account-settings",
            get(settings::account_settings),
        )
        .route(
            "/2016-08-19/account-settings/",
            get(settings::account_settings),
        )
        .layer(middleware::from_fn_with_state(state, authenticate))
}

/// Most bytes of request bodies the Lambda routes hold at once in this gateway,
/// MiB. A body must be read whole before its signature can be checked; this bounds
/// what callers with a valid access key id can make the gateway hold.
const BODY_BUDGET_MIB: usize = 1024;

fn body_budget() -> &'static tokio::sync::Semaphore {
    static BUDGET: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| tokio::sync::Semaphore::new(BODY_BUDGET_MIB))
}

/// Checks the request's signature and puts its [`crate::caller::Caller`] in the
/// request's extensions; applies the tenant's API rate (not to invocations, which
/// the concurrency quotas bound, as on `/v1`).
///
/// Everything the headers tell is checked before the body is read (an unknown key
/// never makes the gateway read one); then the body, at most 6 MiB for an Invoke
/// and 72 MiB otherwise, within the gateway's [`BODY_BUDGET_MIB`].
async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let checked = match sigv4::check_headers(&state, &parts).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let is_invoke = parts.uri.path().ends_with("/invocations");
    if let Some(t) = &checked.caller().tenant
        && !is_invoke
        && let Err(wait) = state.auth.check_rate(t).await
    {
        let mut e = LambdaError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            format!(
                "Rate exceeded: tenant '{}' may make {} calls per second",
                t.name, t.limits.rate_per_sec
            ),
        );
        e.reason = Some("CallerRateLimitExceeded");
        e.retry_after = Some(wait);
        return e.into_response();
    }
    let limit = if is_invoke {
        invoker::router::MAX_PAYLOAD
    } else {
        MAX_BODY
    };
    let too_large = || {
        LambdaError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            format!("Request must be smaller than {limit} bytes for this operation"),
        )
        .into_response()
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let mib = declared.unwrap_or(limit).div_ceil(1024 * 1024).max(1) as u32;
    let Ok(held) = body_budget().try_acquire_many(mib) else {
        let mut e = LambdaError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            "the gateway holds too many request bodies now; retry",
        );
        e.retry_after = Some(1);
        return e.into_response();
    };
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let caller = match checked.verify(&state, &parts, &body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    drop(held);
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, Body::from(body))).await
}
