//! Health, readiness, metrics, and the contract's 404/405.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_orm::ConnectionTrait;

use crate::AppState;
use crate::caller::Caller;
use crate::directory::replica::Identity;
use crate::error::ApiResult;
use crate::error::{ApiError, ErrorBody};
use crate::views::{Health, RegionList, RegionView};
use nimbus_core::db::region;
use sea_orm::{EntityTrait, QueryOrder};

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(Health {
        status: "ok",
        directory: None,
    })
}

/// Readiness: the metadata store answers. With a global directory, the detail says
/// whether the link to it is up; a region with the link down stays ready.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Unavailable", body = ErrorBody)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.db.execute_unprepared("SELECT 1").await {
        Ok(_) => axum::Json(Health {
            status: "ready",
            directory: match &state.identity {
                Identity::Directory(r) => Some(r.link()),
                Identity::Local => None,
            },
        })
        .into_response(),
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

/// This process's metrics (in `nimbus up`, every service's), OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text (what Prometheus scrapes)", content_type = "application/openmetrics-text")))]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, nimbus_core::metrics::CONTENT_TYPE)],
        nimbus_core::metrics::render(),
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

/// The JSON Schema of spec files (`nimbus apply -f`), for editors and CI to check
/// specs with.
pub async fn spec_schema() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        nimbus_core::SPEC_SCHEMA,
    )
}

/// `GET /v1/regions`: the region catalogue. Without a global directory, this region
/// alone (its URL as configured, else as the caller reached it).
#[utoipa::path(get, path = "/v1/regions", tag = "operations", responses((status = 200, description = "Every region", body = RegionList), (status = 401, description = "Unauthenticated", body = ErrorBody)), security(("bearer" = [])))]
pub async fn regions(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let mut regions: Vec<RegionView> = region::Entity::find()
        .order_by_asc(region::Column::Name)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|r| RegionView {
            zones: serde_json::from_str(&r.zones).unwrap_or_default(),
            name: r.name,
            url: r.url,
        })
        .collect();
    if !regions.iter().any(|r| r.name == state.region.name) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        regions.push(RegionView {
            name: state.region.name.clone(),
            url: state
                .region
                .url
                .clone()
                .unwrap_or_else(|| format!("http://{host}")),
            zones: if state.region.zones.is_empty() {
                vec![state.region.zone.clone()]
            } else {
                state.region.zones.clone()
            },
        });
        regions.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(axum::Json(RegionList { regions }).into_response())
}
