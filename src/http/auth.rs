//! Who may call `/api/v1`, and what they may do there.
//!
//! A caller proves who it is in one of two ways:
//! - a **bearer token** (`Authorization: Bearer <token>`; the scheme is
//!   matched case-insensitively, RFC 7235) — scripts and the CLI;
//! - a **console session** cookie obtained by logging in with a token
//!   ([`super::session`]); every state-changing request of a session must
//!   also carry its CSRF token in the `X-CSRF-Token` header.
//!
//! Each token carries a [`Role`]. The admin may do everything; the viewer
//! reads everything and changes nothing; the consumer (a downstream system:
//! collections tool, warehouse) reads only the read side — the invoice and
//! transaction lists, the change feed and the exports under
//! [`READ_SIDE`] — and nothing of the admin API. The check happens here,
//! before any handler runs, so a refused request changes nothing. The
//! consumer token cannot open a console session. Tokens are compared
//! in constant time and never logged. With no token configured at all the
//! API answers 403 and says why; health endpoints are not behind this.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::session::{self, CSRF_HEADER};
use crate::app::App;
use crate::secrets::Secret;

/// What a token lets its holder do. A new role is one more variant here,
/// with its token source in `[http]` and its answer in [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything: reads, manual decisions, flags, reloads, resyncs.
    Admin,
    /// Reads everything, changes nothing.
    Viewer,
    /// Reads the read side only (lists, change feed, exports).
    Consumer,
}

/// What an endpoint does, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only (every `GET`, and `POST`s that only compute, like a rule
    /// preview).
    Read,
    /// Changes data or the daemon's state.
    Change,
    /// Reads the read side for downstream systems ([`READ_SIDE`]).
    ReadSide,
}

/// The read-side endpoints (paths under `/api/v1`): all a consumer token
/// may call, with `GET`.
pub const READ_SIDE: [&str; 4] = ["/invoices", "/transactions", "/changes", "/exports/"];

fn is_read_side(path: &str) -> bool {
    READ_SIDE.iter().any(|p| match p.strip_suffix('/') {
        Some(dir) => path.starts_with(p) && path.len() > dir.len() + 1,
        None => path == *p,
    })
}

impl Role {
    /// The name used in actors (`web:admin`) and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Consumer => "consumer",
        }
    }

    pub fn allows(self, access: Access) -> bool {
        match self {
            Role::Admin => true,
            Role::Viewer => access != Access::Change,
            Role::Consumer => access == Access::ReadSide,
        }
    }
}

/// `POST` endpoints (paths under `/api/v1`) that only compute and change
/// nothing: a viewer may call them.
const READ_ONLY_POSTS: [&str; 2] = ["/rules/preview", "/reinclusions/estimate"];

/// What a request to `path` (under `/api/v1`) with `method` does.
pub fn access_of(method: &Method, path: &str) -> Access {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    if method == Method::GET || method == Method::HEAD {
        if is_read_side(path) {
            return Access::ReadSide;
        }
        return Access::Read;
    }
    if method == Method::POST && READ_ONLY_POSTS.contains(&path) {
        return Access::Read;
    }
    Access::Change
}

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Session,
}

/// The authenticated caller, put in the request's extensions for handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    pub via: Via,
}

impl Principal {
    /// The actor recorded in the audit trail. A console session is always
    /// `web:<role>` (whatever the body says); a bearer caller (a script, the
    /// CLI) may name itself in the request, else gets `default`.
    pub fn actor(&self, given: Option<&str>, default: &str) -> String {
        match self.via {
            Via::Session => format!("web:{}", self.role.name()),
            Via::Bearer => given.unwrap_or(default).to_string(),
        }
    }
}

/// The configured tokens, each with its role.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    admin: Option<Secret>,
    viewer: Option<Secret>,
    consumer: Option<Secret>,
}

impl Tokens {
    pub fn new(admin: Option<Secret>, viewer: Option<Secret>) -> Tokens {
        Tokens {
            admin,
            viewer,
            consumer: None,
        }
    }

    /// These tokens plus a consumer token.
    pub fn with_consumer(mut self, consumer: Option<Secret>) -> Tokens {
        self.consumer = consumer;
        self
    }

    /// The role of a presented token, comparing against every configured
    /// token in constant time.
    pub fn role_of(&self, given: &str) -> Option<Role> {
        let mut found = None;
        for (role, secret) in [
            (Role::Admin, &self.admin),
            (Role::Viewer, &self.viewer),
            (Role::Consumer, &self.consumer),
        ] {
            if let Some(s) = secret {
                if bool::from(given.as_bytes().ct_eq(s.expose().as_bytes())) {
                    found = found.or(Some(role));
                }
            }
        }
        found
    }

    /// Whether any token is configured (else the API is disabled).
    pub fn any(&self) -> bool {
        self.admin.is_some() || self.viewer.is_some() || self.consumer.is_some()
    }

    pub fn has_viewer(&self) -> bool {
        self.viewer.is_some()
    }
}

impl From<Option<Secret>> for Tokens {
    /// Only an admin token (no viewer).
    fn from(admin: Option<Secret>) -> Tokens {
        Tokens::new(admin, None)
    }
}

pub const NO_TOKEN: &str = "the admin API is disabled: no admin token is configured (set http.admin_token_file or http.admin_token_credential)";

/// The middleware in front of every `/api/v1` route but the login itself.
pub async fn require_token(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let ip = session::client_ip(&req);
    let principal = match authenticate(&app, ip, req.method(), req.headers()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let access = access_of(req.method(), req.uri().path());
    if !principal.role.allows(access) {
        if principal.role == Role::Consumer {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the consumer token reads only the read side (GET /api/v1/invoices, /api/v1/transactions, /api/v1/changes, /api/v1/exports/...): {} {} is not part of it",
                    req.method(),
                    req.uri().path()
                ),
            )
            .into_response();
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the {} role is read-only: {} {} changes data; log in with the admin token to do this",
                principal.role.name(),
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Identifies the caller by its bearer token or its session cookie; a
/// session's state-changing request must carry the session's CSRF token.
fn authenticate(
    app: &App,
    ip: std::net::IpAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    if !app.tokens.any() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, NO_TOKEN));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if let Some(t) = bearer {
        return match app.tokens.role_of(t) {
            Some(role) => Ok(Principal {
                role,
                via: Via::Bearer,
            }),
            None => {
                app.sessions.failures.record(ip, "a wrong bearer token");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong bearer token",
                ))
            }
        };
    }
    let Some(id) = session::cookie(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer <token>` (or log in to the web console)",
        ));
    };
    let Some(s) = app.sessions.get(id) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "your console session has expired or was closed: log in again",
        ));
    };
    if method != Method::GET && method != Method::HEAD {
        let given = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
        let ok = given.is_some_and(|g| bool::from(g.ct_eq(s.csrf.as_bytes())));
        if !ok {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("missing or wrong CSRF token: a console session must send its token in the {CSRF_HEADER} header with every change"),
            ));
        }
    }
    Ok(Principal {
        role: s.role,
        via: Via::Session,
    })
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
    use super::*;

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

    #[test]
    fn tokens_map_to_roles_and_unknown_ones_to_none() {
        let t = Tokens::new(Some(Secret::new("a-token")), Some(Secret::new("v-token")));
        assert_eq!(t.role_of("a-token"), Some(Role::Admin));
        assert_eq!(t.role_of("v-token"), Some(Role::Viewer));
        assert_eq!(t.role_of("a-toke"), None);
        assert_eq!(t.role_of(""), None);
        let admin_only = Tokens::from(Some(Secret::new("a")));
        assert_eq!(admin_only.role_of("v-token"), None);
        assert!(!Tokens::default().any());
    }

    #[test]
    fn gets_and_pure_computations_are_reads_everything_else_a_change() {
        let read = [
            (Method::GET, "/api/v1/customers"),
            (Method::HEAD, "/excluded.csv"),
            (Method::POST, "/rules/preview"),
            (Method::POST, "/api/v1/reinclusions/estimate"),
        ];
        for (m, p) in read {
            assert_eq!(access_of(&m, p), Access::Read, "{m} {p}");
        }
        let change = [
            (Method::POST, "/exclusions"),
            (Method::POST, "/api/v1/reinclusions"),
            (Method::DELETE, "/customers/demo/C1/decision"),
            (Method::POST, "/reload"),
            (Method::POST, "/rules/preview/x"),
            (Method::PUT, "/rules/preview"),
        ];
        for (m, p) in change {
            assert_eq!(access_of(&m, p), Access::Change, "{m} {p}");
        }
        assert!(Role::Admin.allows(Access::Change));
        assert!(Role::Viewer.allows(Access::Read));
        assert!(!Role::Viewer.allows(Access::Change));
    }

    #[test]
    fn the_consumer_reads_the_read_side_and_nothing_else() {
        for p in [
            "/api/v1/invoices",
            "/api/v1/transactions",
            "/api/v1/changes",
            "/api/v1/exports/open-invoices.csv",
            "/api/v1/exports/customers.csv",
        ] {
            assert_eq!(access_of(&Method::GET, p), Access::ReadSide, "{p}");
        }
        for (m, p) in [
            (Method::GET, "/api/v1/customers"),
            (Method::GET, "/api/v1/invoicesX"),
            (Method::GET, "/api/v1/exports/"),
            (Method::GET, "/api/v1/exports"),
            (Method::GET, "/api/v1/status"),
            (Method::POST, "/api/v1/invoices"),
        ] {
            assert_ne!(access_of(&m, p), Access::ReadSide, "{m} {p}");
        }
        assert!(Role::Consumer.allows(Access::ReadSide));
        assert!(!Role::Consumer.allows(Access::Read));
        assert!(!Role::Consumer.allows(Access::Change));
        assert!(Role::Viewer.allows(Access::ReadSide));
        assert!(Role::Admin.allows(Access::ReadSide));
        let t = Tokens::new(Some(Secret::new("a")), None).with_consumer(Some(Secret::new("c")));
        assert_eq!(t.role_of("c"), Some(Role::Consumer));
    }

    #[test]
    fn a_session_actor_is_its_role_a_bearer_caller_names_itself() {
        let web = Principal {
            role: Role::Admin,
            via: Via::Session,
        };
        assert_eq!(web.actor(Some("mallory"), "api"), "web:admin");
        let bearer = Principal {
            role: Role::Admin,
            via: Via::Bearer,
        };
        assert_eq!(bearer.actor(Some("cli:ann"), "api"), "cli:ann");
        assert_eq!(bearer.actor(None, "api"), "api");
    }
}
