//! The HTTP port: health, readiness, status, Prometheus metrics, the
//! token-protected admin API under `/api/v1` and the web console at `/`.
//!
//! `/api/v1` authenticates by bearer token or console session and checks
//! the caller's role ([`auth`]); logging in and out is [`session`]; the
//! console's embedded pages and assets are [`console`], a client of
//! `/api/v1` like any other.
//!
//! Handlers only read the store and call into the library (exclusion, resync,
//! reminders); they never talk to an ERP. Every error is a JSON body
//! `{"error": "..."}` with a 4xx/5xx status (see [`error::ApiError`]): bad
//! query strings and path parameters, a wrong method (405, naming the
//! allowed ones) and a handler panic (500) included. Every endpoint refuses
//! query parameters it does not know. Long synchronous store work (scans of
//! every customer, big writes) runs on a blocking thread ([`blocking`]), so
//! it never stalls the runtime.

pub mod admin;
pub mod auth;
pub mod console;
pub mod error;
pub mod listener;
pub mod session;
pub mod status;

use std::any::Any;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

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
    let router = Router::new()
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/status", get(status::status))
        .route("/metrics", get(status::metrics))
        // Logging in needs no token: outside the token check.
        .merge(session::routes())
        .nest("/api/v1", api)
        .merge(console::routes())
        .fallback(|| async { error::ApiError::not_found("no such endpoint") })
        .with_state(app);
    harden(router)
}

/// The layers every route gets: a wrong method answers a JSON 405 naming the
/// allowed methods, and a handler panic a JSON 500 (not a dropped
/// connection).
pub fn harden(router: Router) -> Router {
    // `Router::layer` wraps each route inside its method router, before the
    // `Allow` header is set: wrap the whole router instead.
    Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn(method_not_allowed_as_json))
        .layer(CatchPanicLayer::custom(panic_as_json))
        .layer(axum::middleware::from_fn(console::security_headers))
}

/// Replaces axum's empty 405 with a JSON error; the `Allow` header stays.
async fn method_not_allowed_as_json(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    if res.status() != StatusCode::METHOD_NOT_ALLOWED {
        return res;
    }
    let allow = res
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut allowed: Vec<&str> = allow
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != Method::HEAD.as_str())
        .collect();
    allowed.dedup();
    let mut out = error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {path}; allowed: {}",
            allowed.join(", ")
        ),
    )
    .into_response();
    if let Some(v) = res.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, v.clone());
    }
    out
}

/// A handler panic as a JSON 500; the panic message is logged, not sent.
fn panic_as_json(panic: Box<dyn Any + Send + 'static>) -> Response {
    let msg = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %msg, "an API handler panicked");
    error::ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: the request handler panicked; see the daemon log",
    )
    .into_response()
}

/// Runs long synchronous work (store scans, big writes) on a blocking
/// thread, so the runtime keeps serving. A panic in `f` goes on unwinding
/// (the panic layer answers it).
pub async fn blocking<T, F>(f: F) -> Result<T, error::ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(error::ApiError::internal(e)),
    }
}

/// Runs an async store operation whose synchronous part is long (a store
/// write over thousands of customers, a reload) on a blocking thread.
pub async fn blocking_async<T, Fut>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> Result<T, error::ApiError>
where
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    blocking(move || tokio::runtime::Handle::current().block_on(f())).await
}

pub use crate::export::csv_safe;

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
    // The client's address (what failed logins are counted by) goes into
    // each request as `ConnectInfo`.
    let h = &app.config().http;
    let limits = listener::Limits {
        max_connections: h.max_connections,
        header_read_timeout: h.header_read_timeout,
        idle_timeout: h.idle_timeout,
    };
    listener::serve(listener, router(app), limits, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_safe_quotes_formula_starts_only() {
        for bad in [
            "=1+2",
            "+1",
            "-1+1",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "=HYPERLINK(\"http://x\")",
        ] {
            assert_eq!(csv_safe(bad), format!("'{bad}"), "{bad:?}");
        }
        for ok in [
            "",
            "ACME",
            "a=b",
            " =1",
            "'=1",
            "12.50",
            "demo:C1",
            "x@example.com",
        ] {
            assert!(
                matches!(csv_safe(ok), std::borrow::Cow::Borrowed(_)),
                "{ok:?}"
            );
            assert_eq!(csv_safe(ok), ok);
        }
    }

    /// Serves `router` through [`harden`] on a free port.
    async fn serve_hardened(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, harden(router)).await });
        base
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500_and_the_server_keeps_serving() {
        let base = serve_hardened(
            Router::new()
                .route(
                    "/boom",
                    get(|| async {
                        if true {
                            panic!("secret detail");
                        }
                        "unreachable"
                    }),
                )
                .route(
                    "/boom-blocking",
                    get(|| async {
                        blocking(|| -> u8 { panic!("in a blocking thread") }).await?;
                        Ok::<_, error::ApiError>("unreachable")
                    }),
                )
                .route("/ok", get(|| async { "fine" })),
        )
        .await;
        let client = reqwest::Client::new();
        for path in ["/boom", "/boom-blocking"] {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 500, "{path}");
            assert_eq!(r.headers()["content-type"], "application/json");
            let v: serde_json::Value = r.json().await.unwrap();
            let msg = v["error"].as_str().unwrap();
            assert!(msg.contains("handler panicked"), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
        }
        let r = client.get(format!("{base}/ok")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
    }

    #[tokio::test]
    async fn a_wrong_method_answers_a_json_405_naming_the_allowed_ones() {
        let base = serve_hardened(
            Router::new().route("/thing", get(|| async { "x" }).post(|| async { "y" })),
        )
        .await;
        let r = reqwest::Client::new()
            .delete(format!("{base}/thing"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405);
        assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            v["error"],
            "method DELETE is not allowed on /thing; allowed: GET, POST"
        );
    }
}
