//! The HTTP port: health, readiness, status, Prometheus metrics and the
//! token-protected admin API under `/api/v1`.
//!
//! Handlers only read the store and call into the library (exclusion, resync,
//! reminders); they never talk to an ERP. Every error is a JSON body
//! `{"error": "..."}` with a 4xx/5xx status (see [`error::ApiError`]).

pub mod admin;
pub mod auth;
pub mod error;
pub mod status;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use crate::app::App;

/// Builds the whole router. `api` routes (from the admin modules) are nested
/// under `/api/v1` behind the token check.
pub fn router(app: Arc<App>) -> Router {
    let max_body = app.config().http.max_body_bytes;
    let api = api_routes()
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body));
    Router::new()
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .nest("/api/v1", api)
        .fallback(|| async { error::ApiError::not_found("no such endpoint") })
        .with_state(app)
}

/// The admin API. Each feature module adds its routes here.
fn api_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/status", get(status::status))
        .merge(admin::routes())
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
