//! The Lambda routes' extractors: their rejections are Lambda errors.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;

use super::error::LambdaError;

/// A JSON body, whatever its `Content-Type` (the SDKs differ); an empty body is
/// `{}`. A bad one is a 400 `InvalidRequestContentException`.
pub struct LambdaJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for LambdaJson<T> {
    type Rejection = LambdaError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| LambdaError::invalid("the request body could not be read"))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(LambdaJson).map_err(|e| {
            LambdaError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                format!("Could not parse request body into json: {e}"),
            )
        })
    }
}

/// Query parameters; a bad one is a 400 `InvalidParameterValueException`.
pub struct LambdaQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for LambdaQuery<T> {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        crate::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| LambdaQuery(q.0))
            .map_err(LambdaError::from)
    }
}

/// The function name in the path (a name, a partial ARN or an ARN).
pub struct FunctionName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for FunctionName {
    type Rejection = LambdaError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        crate::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| FunctionName(p.0))
            .map_err(LambdaError::from)
    }
}
