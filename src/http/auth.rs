//! Bearer-token check for the admin API.
//!
//! The scheme is matched case-insensitively (`Bearer`, `bearer`: RFC 7235);
//! the token is compared in constant time. No token configured: the admin
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
        .and_then(bearer_token);
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

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive, other schemes give `None`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR   abc ",
            " Bearer abc",
        ] {
            assert_eq!(bearer_token(v), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearerabc", "Bearer", "", "Token abc"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
        assert_eq!(bearer_token("Bearer "), Some(""));
    }
}
