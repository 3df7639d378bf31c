//! JSON errors for the HTTP port.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered as `{"error": message}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl std::fmt::Display) -> Self {
        tracing::error!(error = %m, "internal error answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {m}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Rejected(m) => ApiError::bad_request(m),
            e @ crate::store::StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{e}; nothing was changed, try again once the store is writable (see /status)"
                ),
            ),
            other => ApiError::internal(other),
        }
    }
}

/// JSON body extractor whose rejections are JSON errors too (malformed JSON,
/// wrong content type, body too large → 400/415/413 with a message).
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rej) => Err(ApiError::new(rej.status(), rej.body_text())),
        }
    }
}

/// Query-string extractor with JSON errors. Parameter structs refuse
/// unknown keys (`#[serde(deny_unknown_fields)]`), so a typo or an option an
/// endpoint does not have is a 400 naming it, never silently ignored.
pub struct Query<T>(pub T);

/// The query of an endpoint that takes no parameters: any is refused with a
/// 400 naming it (`Query<NoQuery>`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// A path parameter that did not parse (bad UTF-8, not a number...) as a
/// JSON 400; use with `Result<Path<T>, PathRejection>`.
pub fn bad_path(e: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(ApiError::bad_request(rej.body_text())),
        }
    }
}
