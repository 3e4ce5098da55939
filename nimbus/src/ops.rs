//! `/healthz`, `/readyz` and `/metrics` for the services that serve no HTTP API of
//! their own (`[ops] listen`), so an orchestrator can probe, and Prometheus scrape,
//! every process the same way.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use nimbus_core::shutdown::Shutdown;
use sea_orm::{ConnectionTrait, DatabaseConnection};

/// Serves the health endpoints on `listen` until shutdown. `/readyz` asks `db`
/// (when the service has one) to answer.
pub async fn serve(
    listen: SocketAddr,
    service: &'static str,
    db: Option<DatabaseConnection>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        nimbus_core::metrics::CONTENT_TYPE,
                    )],
                    nimbus_core::metrics::render(),
                )
            }),
        )
        .route(
            "/healthz",
            get(move || async move {
                axum::Json(serde_json::json!({"status": "ok", "service": service}))
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let db = db.clone();
                async move {
                    let ready = match &db {
                        Some(db) => db.execute_unprepared("SELECT 1").await.is_ok(),
                        None => true,
                    };
                    let (code, status) = if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the metadata store does not answer",
                        )
                    };
                    (
                        code,
                        axum::Json(serde_json::json!({"status": status, "service": service})),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding ops.listen {listen}"))?;
    println!(
        "{service} ops listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await?;
    Ok(())
}
