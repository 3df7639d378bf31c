//! Bearer-token check for the admin API.
//!
//! The token is compared in constant time. No token configured: the admin
//! API answers 403 and says why; health endpoints are not behind this.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::App;

pub async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(expected) = &app.admin_token else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: no admin token is configured (set http.admin_token_file or http.admin_token_credential)",
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer <token>`",
        )
        .into_response(),
        Some(t) if bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes())) => {
            next.run(req).await
        }
        Some(_) => {
            tracing::warn!("admin API request with a wrong token refused");
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response()
        }
    }
}
