//! Extractors whose rejections speak the contract's error format, and the
//! [`Caller`] of every authenticated request.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use nimbus_core::model::Role;
use nimbus_core::{Error, model};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::caller::{Caller, ConcurrencyThrottled};
use crate::error::ApiError;

/// JSON body; a bad body is a 400 `InvalidRequest`, an oversized one a 413.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PayloadTooLarge",
                    format!(
                        "the request body is larger than {} MiB",
                        crate::MAX_BODY_BYTES / 1024 / 1024
                    ),
                ))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::invalid(
                "the body must be JSON, with Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::invalid(format!(
                "the body is not valid: {}",
                e.body_text()
            ))),
        }
    }
}

/// Path parameters; a bad one is a 400.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::invalid(e.body_text()))
    }
}

/// Query parameters; a bad one is a 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::invalid(e.body_text()))
    }
}

/// Extracts and verifies the caller, resolves `x-nimbus-tenant` for admins, and
/// applies the tenant's rate limit.
/// The credential: `Authorization: Bearer <token>`, or, on a websocket upgrade
/// (which browsers cannot give headers), a `bearer.<token>` entry of
/// `Sec-WebSocket-Protocol` beside the `nimbus` protocol the server answers with.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    if let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let header = header.to_str().unwrap_or_default();
        return header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Error::Unauthenticated("the Authorization header must be 'Bearer <token>'".into())
                    .into()
            });
    }
    let upgrade = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade
        && let Some(token) = parts
            .headers
            .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix("bearer."))
    {
        return Ok(token);
    }
    Err(Error::Unauthenticated("missing Authorization: Bearer <api key or token>".into()).into())
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let mut caller = state.auth.verify(&state.db, token).await?;
        if caller.role == Role::Admin
            && let Some(name) = parts
                .headers
                .get("x-nimbus-tenant")
                .and_then(|v| v.to_str().ok())
        {
            model::validate_name("tenant", name)?;
            caller.acting_for = Some(
                crate::queries::tenant_by_name(&state.db, name)
                    .await?
                    .into(),
            );
        }
        // Invocations are throttled by the concurrency quotas (as in Lambda), not by
        // the API call rate, so load tests are not capped at `rate_per_sec`.
        let is_invoke = parts.extensions.get::<ConcurrencyThrottled>().is_some();
        if let Some(t) = &caller.tenant
            && !is_invoke
            && let Err(wait) = state.auth.check_rate(t).await
        {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "tenant '{}' is over its rate limit of {} calls per second",
                    t.name, t.limits.rate_per_sec
                ),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        Ok(caller)
    }
}
