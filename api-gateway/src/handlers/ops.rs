//! Health, readiness, metrics, and the contract's 404/405.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_orm::ConnectionTrait;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::views::Health;

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

/// Readiness: the metadata store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Unavailable", body = ErrorBody)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.db.execute_unprepared("SELECT 1").await {
        Ok(_) => axum::Json(Health { status: "ready" }).into_response(),
        Err(e) => {
            // The details are for the operator's log, not for whoever asks.
            tracing::warn!(error = %e, "readiness: the metadata store does not answer");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "the metadata store does not answer",
            )
            .into_response()
        }
    }
}

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        match &state.data_path {
            // `nimbus up`: the node agent is in this process.
            Some(dp) => state.metrics.render() + &dp.router.nodes().metrics_text(),
            None => state.metrics.render(),
        },
    )
}

/// Unknown path.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such endpoint")
}

/// Known path, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "this endpoint does not accept that method",
    )
}

/// The OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi_json(),
    )
}
