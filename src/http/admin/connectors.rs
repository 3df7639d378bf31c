//! Admin API for connectors:
//!
//! - `POST /api/v1/connectors/{id}/sync`: starts a poll pass now:
//!   `202 {"started": true}`, or `409` when a pass is already running
//!   (`{"error": "a sync pass is already running", "running": true,
//!   "since": ...}`) or requests are parked until the daily quota resets
//!   (`{"error": ..., "resumes_at": ...}`) or, when several daemons share
//!   the store, another daemon holds the connector's lease (`{"error": ...,
//!   "owner": "<daemon id>"}`: ask that daemon);
//! - `POST /api/v1/connectors/{id}/connect` `{"refresh_token": "..."}`:
//!   loads the first (or a new) OAuth 2.0 refresh token of a connector that
//!   uses OAuth (`erpsync connect` calls it while the daemon runs) and asks
//!   for a pass, which refreshes with it. The token is never logged or
//!   echoed.
//!
//! Handlers never talk to an ERP.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{App, ConnectorHandle, PassRefused};
use crate::connectors::{oauth, REGISTRY};
use crate::credentials::StoreCredentials;
use crate::http::auth::Principal;
use crate::http::error::{bad_path, ApiError, JsonBody, NoQuery, Query};
use crate::secrets::Secret;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/connectors/{id}/sync", post(sync))
        .route("/connectors/{id}/connect", post(connect))
}

fn connector(
    app: &App,
    id: Result<Path<String>, PathRejection>,
) -> Result<Arc<ConnectorHandle>, ApiError> {
    let Path(id) = id.map_err(bad_path)?;
    app.connector(&id).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown connector `{id}`; configured connectors: {}",
            app.connectors
                .iter()
                .map(|h| h.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

async fn sync(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Response, ApiError> {
    let h = connector(&app, id)?;
    if let Some(c) = app.cluster() {
        let resource = crate::cluster::connector_resource(&h.id);
        if !c.holds(&resource) {
            let timeout = c.timeout;
            let a = Arc::clone(&app);
            let owner = crate::http::blocking(move || a.store.cluster_view(timeout))
                .await??
                .into_iter()
                .find(|d| d.leases.iter().any(|l| l.resource == resource))
                .map(|d| d.member.id);
            return Ok((
                StatusCode::CONFLICT,
                Json(json!({
                    "error": match &owner {
                        Some(o) => format!("connector `{}` is synced by daemon {o} (it holds the lease): ask that daemon", h.id),
                        None => format!("connector `{}` is not leased to any daemon right now: try again in a moment", h.id),
                    },
                    "connector": h.id,
                    "owner": owner,
                })),
            )
                .into_response());
        }
    }
    Ok(match h.request_pass() {
        Ok(()) => {
            tracing::info!(connector = %h.id, actor = %principal.actor(None, "api"), "sync pass requested");
            (
                StatusCode::ACCEPTED,
                Json(json!({"started": true, "connector": h.id})),
            )
                .into_response()
        }
        Err(PassRefused::Running { since }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "a sync pass is already running",
                "connector": h.id,
                "running": true,
                "since": since,
            })),
        )
            .into_response(),
        Err(PassRefused::Parked { resumes_at }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("the daily request quota is used up; requests resume at {resumes_at}"),
                "connector": h.id,
                "running": false,
                "resumes_at": resumes_at,
            })),
        )
            .into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    refresh_token: String,
}

async fn connect(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(body): JsonBody<ConnectBody>,
) -> Result<Response, ApiError> {
    let h = connector(&app, id)?;
    check_uses_oauth(&h)?;
    let creds = StoreCredentials::new(Arc::clone(&app.store), &h.id);
    oauth::connect(&creds, &Secret::new(body.refresh_token))
        .await
        .map_err(ApiError::bad_request)?;
    tracing::info!(connector = %h.id, actor = %principal.actor(None, "api"), "new OAuth refresh token loaded");
    // Refresh with it now; a pass already running uses it at its next request.
    let _ = h.request_pass();
    Ok((
        StatusCode::OK,
        Json(json!({"connected": true, "connector": h.id})),
    )
        .into_response())
}

fn check_uses_oauth(h: &ConnectorHandle) -> Result<(), ApiError> {
    let uses = REGISTRY
        .get(&h.config.kind)
        .is_some_and(|k| k.uses_oauth(&h.config.options));
    if uses {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "connector `{}` (kind {}) does not use OAuth 2.0; there is no refresh token to load",
            h.id, h.config.kind
        )))
    }
}
