//! Errors on the Lambda-compatible API, as the AWS SDKs parse them: the exception's
//! name in `x-amzn-ErrorType`, and a JSON body with `Type` and `message` (plus
//! `Reason` for throttles). Native errors ([`ApiError`]) are renamed here, once.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::Error;
use serde_json::json;

use crate::error::{ApiError, request_id};

/// An error on its way to an AWS client.
#[derive(Debug)]
pub struct LambdaError {
    /// HTTP status.
    pub status: StatusCode,
    /// The exception's name, e.g. `ResourceNotFoundException`.
    pub name: &'static str,
    /// A human sentence.
    pub message: String,
    /// Why a call was throttled (`TooManyRequestsException` only).
    pub reason: Option<&'static str>,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

impl LambdaError {
    /// An error with a status, exception name and message.
    pub fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> Self {
        LambdaError {
            status,
            name,
            message: message.into(),
            reason: None,
            retry_after: None,
        }
    }

    /// 400 `InvalidParameterValueException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    /// 404 `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }

    /// 403 `InvalidSignatureException`.
    pub fn invalid_signature(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "InvalidSignatureException", message)
    }

    /// 403 `UnrecognizedClientException`: no such access key, or it was revoked.
    pub fn unrecognized_client() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    }

    /// 403 `MissingAuthenticationTokenException`: the request is not signed.
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign the request with AWS Signature V4 (service lambda)",
        )
    }

    /// A platform error, renamed.
    pub fn from_core(e: Error) -> Self {
        ApiError::from(e).into()
    }
}

/// Native error codes to Lambda's exceptions.
impl From<ApiError> for LambdaError {
    fn from(e: ApiError) -> Self {
        use StatusCode as S;
        let (status, name, reason) = match (e.status, e.code.as_str()) {
            (S::NOT_FOUND, _) => (S::NOT_FOUND, "ResourceNotFoundException", None),
            (S::CONFLICT, _) => (S::CONFLICT, "ResourceConflictException", None),
            (S::PAYLOAD_TOO_LARGE, _) => (S::PAYLOAD_TOO_LARGE, "RequestTooLargeException", None),
            (S::UNAUTHORIZED, _) => (S::FORBIDDEN, "UnrecognizedClientException", None),
            (S::FORBIDDEN, _) => (S::FORBIDDEN, "AccessDeniedException", None),
            (S::TOO_MANY_REQUESTS, "ConcurrencyLimitExceeded") => (
                S::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                Some("ConcurrentInvocationLimitExceeded"),
            ),
            (S::TOO_MANY_REQUESTS, _) => (
                S::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                Some("CallerRateLimitExceeded"),
            ),
            (S::BAD_REQUEST, _) => (S::BAD_REQUEST, "InvalidParameterValueException", None),
            (S::SERVICE_UNAVAILABLE, _) => (S::SERVICE_UNAVAILABLE, "ServiceException", None),
            (s, _) if s.is_client_error() => (s, "InvalidRequestContentException", None),
            _ => (S::INTERNAL_SERVER_ERROR, "ServiceException", None),
        };
        LambdaError {
            status,
            name,
            message: e.message,
            reason,
            retry_after: e.retry_after,
        }
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let mut body = json!({"Type": kind, "message": self.message});
        if let Some(r) = self.reason {
            body["Reason"] = json!(r);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert("x-amzn-errortype", HeaderValue::from_static(self.name));
        if let Ok(id) = HeaderValue::from_str(&request_id()) {
            h.insert("x-amzn-requestid", id);
        }
        if let Some(s) = self.retry_after {
            h.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Result for Lambda handlers.
pub type LambdaResult<T> = Result<T, LambdaError>;
