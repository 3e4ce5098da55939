//! Errors become HTTP responses here, and only here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use invoker::router::InvokeError;
use nimbus_core::Error;
use serde_json::json;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware.
    pub static REQUEST_ID: String;
    /// The current request's trace context (the gateway's span in it), set by the
    /// same middleware.
    pub static TRACE: nimbus_core::trace::TraceContext;
}

/// The current request's trace context; outside a request, None.
pub fn trace() -> Option<nimbus_core::trace::TraceContext> {
    TRACE.try_with(|t| *t).ok()
}

/// The current request id, or "-" outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".into())
}

/// The contract's error body: `{"error": {...}}`.
#[derive(utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A machine-readable code, e.g. `FunctionNotFound`.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// The request's id, also in the `x-request-id` header.
    pub request_id: String,
}

/// An error on its way to the caller.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The contract's error code, e.g. `FunctionNotFound`.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 InvalidRequest.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        match e {
            Error::Invalid(m) => ApiError::new(S::BAD_REQUEST, "InvalidRequest", m),
            Error::InvalidCode(m) => ApiError::new(S::BAD_REQUEST, "InvalidCode", m),
            Error::Unauthenticated(m) => ApiError::new(S::UNAUTHORIZED, "Unauthenticated", m),
            Error::Forbidden(m) => ApiError::new(S::FORBIDDEN, "Forbidden", m),
            e @ Error::NotFound { kind, .. } => {
                ApiError::new(S::NOT_FOUND, &format!("{kind}NotFound"), e.to_string())
            }
            Error::Conflict(m) => ApiError::new(S::CONFLICT, "Conflict", m),
            Error::LimitExceeded(m) => ApiError::new(S::BAD_REQUEST, "InvalidRequest", m),
            Error::TooManyRequests(m) => {
                let mut e = ApiError::new(S::TOO_MANY_REQUESTS, "TooManyRequestsException", m);
                e.retry_after = Some(1);
                e
            }
            Error::PayloadTooLarge(m) => ApiError::new(S::PAYLOAD_TOO_LARGE, "PayloadTooLarge", m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "backend unavailable");
                ApiError::new(S::SERVICE_UNAVAILABLE, "Unavailable", m)
            }
            Error::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "an internal error occurred; it has been logged with this request id",
                )
            }
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Error::Internal(e).into()
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "request_id": request_id()}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Result for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// A refused or failed call (the router's [`InvokeError`]) as HTTP.
impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> ApiError {
        match e {
            e @ InvokeError::NotFound { kind, .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                &format!("{kind}NotFound"),
                e.to_string(),
            ),
            InvokeError::NotInvocable(m) => ApiError::new(StatusCode::CONFLICT, "Conflict", m),
            InvokeError::QuotaExceeded(m) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "QuotaExceeded", m)
            }
            InvokeError::Concurrency(m) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "ConcurrencyLimitExceeded", m)
            }
            e @ InvokeError::Timeout(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "FunctionTimeout",
                e.to_string(),
            ),
            e @ InvokeError::ResultTooLarge(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                e.to_string(),
            ),
            InvokeError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m)
            }
            InvokeError::Db(e) => Error::from(e).into(),
        }
    }
}
