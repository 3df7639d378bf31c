//! The web console for finance admins, served at `/` from files embedded in
//! the binary (`web/`: plain ES modules and one style sheet, no build step).
//!
//! The console is a client of `/api/v1` and nothing else: every page reads
//! and changes data through the same API as scripts and the CLI, so it can
//! do nothing they cannot, and the role check of [`super::auth`] covers it.
//! This module only serves files; it never reads the store.
//!
//! - `GET /` is the page shell (`no-cache`), which names its scripts and
//!   style sheet under `/assets/<version>/`, where `<version>` is a hash of
//!   every embedded file: those answers are cached for a year
//!   (`immutable`), and a new build gets new URLs.
//! - Every answer of the port carries [`CSP`] (scripts and styles from this
//!   origin only: no inline script, no inline style, no `eval`), plus
//!   `nosniff`, `no-referrer` and a frame ban.
//! - The scripts build the page with DOM calls and `textContent` only,
//!   never `innerHTML`, so a customer name from the ERP (untrusted) is
//!   always text, never markup.

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::error::{ApiError, NoQuery, Query};
use crate::app::App;

/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("web/", $name)),
        }
    };
}

/// Every file under `/assets/<version>/`.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("ui.js", JS),
    asset!("login.js", JS),
    asset!("overview.js", JS),
    asset!("customers.js", JS),
    asset!("customer.js", JS),
    asset!("excluded.js", JS),
    asset!("rules.js", JS),
    asset!("resyncs.js", JS),
    asset!("reminders.js", JS),
];

const INDEX: &str = include_str!("web/index.html");

/// A hash of every embedded file: the assets' URL version.
pub fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let mut h = Sha256::new();
        h.update(INDEX.as_bytes());
        for a in ASSETS {
            h.update(a.name.as_bytes());
            h.update([0]);
            h.update(a.body);
        }
        h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// The page shell with the assets' versioned URLs.
fn index_html() -> &'static str {
    static I: OnceLock<String> = OnceLock::new();
    I.get_or_init(|| INDEX.replace("{{ASSETS}}", &format!("/assets/{}", version())))
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{version}/{file}", get(asset))
}

async fn index(Query(NoQuery {}): Query<NoQuery>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        index_html(),
    )
        .into_response()
}

async fn asset(path: Result<Path<(String, String)>, PathRejection>) -> Result<Response, ApiError> {
    let Path((v, file)) = path.map_err(super::error::bad_path)?;
    let found = ASSETS.iter().find(|a| a.name == file);
    match found {
        Some(a) if v == version() => Ok((
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response()),
        Some(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "asset version {v} is not this build's ({}): reload the page",
                version()
            ),
        )),
        None => Err(ApiError::not_found(format!("no asset {file}"))),
    }
}

/// Adds the security headers to every answer of the port.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_names_versioned_assets_and_has_no_inline_code() {
        let html = index_html();
        assert!(!html.contains("{{ASSETS}}"));
        assert!(html.contains(&format!("/assets/{}/app.js", version())));
        assert!(html.contains(&format!("/assets/{}/style.css", version())));
        let lower = html.to_lowercase();
        // Scripts only by `src`, no inline handlers or style attributes.
        assert_eq!(
            lower.matches("<script").count(),
            lower.matches("<script type=\"module\" src=").count()
        );
        for bad in [
            " onload=",
            " onclick=",
            " onerror=",
            " style=",
            "<style",
            "javascript:",
        ] {
            assert!(!lower.contains(bad), "{bad}");
        }
    }

    #[test]
    fn scripts_never_write_markup_from_strings() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for bad in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setAttribute('style'",
                ".style.cssText",
            ] {
                assert!(!text.contains(bad), "{} uses {bad}", a.name);
            }
        }
    }

    #[test]
    fn every_module_import_is_an_embedded_file() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let spec = line.rsplit("from ").next().unwrap();
                let name = spec
                    .trim_matches(|c| c == '\'' || c == '"' || c == ';' || c == ' ')
                    .trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} imports {name}, which is not embedded",
                    a.name
                );
            }
        }
    }
}
