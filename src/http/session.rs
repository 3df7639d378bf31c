//! Console sessions: a token exchanged for a session cookie, its CSRF token,
//! logout, and the rate limit on failed logins.
//!
//! - `POST /api/v1/session` `{"token": "..."}` logs in: the token's role
//!   ([`Role`]) goes into a new session whose id is set as an `HttpOnly`,
//!   `SameSite=Strict` cookie (`Secure` when the request came over TLS, i.e.
//!   a proxy in front says `X-Forwarded-Proto: https`) with a `Max-Age`.
//!   The answer carries the session's CSRF token, which the console keeps in
//!   memory and sends in `X-CSRF-Token` with every change. The token itself
//!   is never stored by the browser, and never appears in a URL.
//! - `GET /api/v1/session` says who the session is (and gives the CSRF token
//!   again, for a reloaded page); `DELETE /api/v1/session` logs out (CSRF
//!   checked like any change).
//!
//! Sessions live in memory: a restart logs everyone out. A session ends
//! [`SESSION_TTL`] after login, or [`IDLE_TTL`] after its last request.
//! Only a hash of each session id is kept. Failed logins are counted per
//! client address: after [`MAX_FAILURES`] within [`FAILURE_WINDOW`] that
//! address gets 429 (with `Retry-After`) until the window has passed, even
//! with a right token. Failures (wrong console logins and wrong bearer
//! tokens) are logged at most once a minute per client address, the first at
//! once and later ones as a summary with their count, so a guessing client
//! cannot flood the journal. No token, id or CSRF token is ever logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::Role;
use super::error::{ApiError, JsonBody, NoQuery, Query};
use crate::app::App;
use crate::model::Timestamp;

/// The session cookie's name.
pub const COOKIE: &str = "erpsync_session";
/// The request header carrying a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after login, whatever happens.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// A session ends this long after its last request.
pub const IDLE_TTL: Duration = Duration::from_secs(3600);
/// Failed logins from one address within [`FAILURE_WINDOW`] before it is
/// refused with 429.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Sessions kept at most; the oldest goes when a login would exceed it.
const MAX_SESSIONS: usize = 1000;
/// Client addresses whose failures are remembered at most.
const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// Failure log lines at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What a session knows.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub csrf: String,
    pub expires_at: Timestamp,
    created: Instant,
    last_seen: Instant,
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.created) < SESSION_TTL
            && now.duration_since(self.last_seen) < IDLE_TTL
    }
}

/// The live sessions and the failed-login bookkeeping of one daemon.
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    guard: Mutex<HashMap<IpAddr, Failures>>,
    /// Summarised logging of authentication failures.
    pub failures: FailureLog,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Sessions {
    /// Opens a session; returns its id (the cookie value) and the session.
    pub fn create(&self, role: Role) -> (String, Session) {
        let now = Instant::now();
        let id = random_token();
        let s = Session {
            role,
            csrf: random_token(),
            expires_at: chrono::Utc::now()
                + chrono::Duration::from_std(SESSION_TTL).expect("a few hours"),
            created: now,
            last_seen: now,
        };
        let mut map = self.by_hash.lock().expect("sessions lock poisoned");
        map.retain(|_, s| s.alive(now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(hash(&id), s.clone());
        (id, s)
    }

    /// The live session with this id, touched (its idle time restarts).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.by_hash.lock().expect("sessions lock poisoned");
        let key = hash(id);
        match map.get_mut(&key) {
            Some(s) if s.alive(now) => {
                s.last_seen = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session; false if there was none.
    pub fn remove(&self, id: &str) -> bool {
        self.by_hash
            .lock()
            .expect("sessions lock poisoned")
            .remove(&hash(id))
            .is_some()
    }

    /// `Err(seconds to wait)` while `ip` has too many recent failures.
    fn check_allowed(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let map = self.guard.lock().expect("guard lock poisoned");
        match map.get(&ip) {
            Some(f) if f.count >= MAX_FAILURES && now.duration_since(f.first) < FAILURE_WINDOW => {
                Err((FAILURE_WINDOW - now.duration_since(f.first))
                    .as_secs()
                    .max(1))
            }
            _ => Ok(()),
        }
    }

    fn login_failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.guard.lock().expect("guard lock poisoned");
        if map.len() >= MAX_TRACKED_ADDRESSES {
            map.retain(|_, f| now.duration_since(f.first) < FAILURE_WINDOW);
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            first: now,
        });
        if now.duration_since(f.first) >= FAILURE_WINDOW {
            *f = Failures {
                count: 0,
                first: now,
            };
        }
        f.count += 1;
        let locked = f.count == MAX_FAILURES;
        drop(map);
        self.failures.record(
            ip,
            if locked {
                "a failed console login (the address is now refused for a while)"
            } else {
                "a failed console login"
            },
        );
    }

    fn login_succeeded(&self, ip: IpAddr) {
        self.guard.lock().expect("guard lock poisoned").remove(&ip);
    }
}

/// Logs authentication failures without flooding: per client address, the
/// first one at once, then at most one summary line a minute with the count
/// since. At most [`MAX_TRACKED_ADDRESSES`] addresses are tracked; past that
/// (addresses not seen for a minute are forgotten first) the rest share one
/// line.
#[derive(Debug, Default)]
pub struct FailureLog {
    state: Mutex<HashMap<IpAddr, LogState>>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    /// Counts one failure from `source` (`what`: a fixed description, never
    /// the token). Returns whether a line was logged.
    pub fn record(&self, source: IpAddr, what: &str) -> bool {
        let now = Instant::now();
        let mut map = self.state.lock().expect("failure log lock poisoned");
        let mut key = source;
        if !map.contains_key(&key) && map.len() >= MAX_TRACKED_ADDRESSES {
            map.retain(|_, st| st.last.is_some_and(|l| now.duration_since(l) < LOG_EVERY));
            if map.len() >= MAX_TRACKED_ADDRESSES {
                key = IpAddr::from([0, 0, 0, 0]);
            }
        }
        let st = map.entry(key).or_default();
        st.unlogged += 1;
        if st.last.is_some_and(|l| now.duration_since(l) < LOG_EVERY) {
            return false;
        }
        let n = std::mem::take(&mut st.unlogged);
        st.last = Some(now);
        drop(map);
        tracing::warn!(
            source = %key,
            failures = n,
            "authentication refused: {what} ({n} failure(s) from {key} since the last such line; at most one line a minute per address)"
        );
        true
    }
}

/// The session id from the request's cookies.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request reached us over TLS: a proxy in front terminating
/// TLS says so with `X-Forwarded-Proto: https` (or `Forwarded: proto=https`).
/// Trusting it is harmless: it only adds `Secure` to the cookie.
fn over_tls(headers: &HeaderMap) -> bool {
    let xfp = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let fwd = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    xfp || fwd
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie text is ASCII")
}

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/session", get(whoami).post(login).delete(logout))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    token: String,
}

/// What the console learns about its session.
#[derive(Debug, Serialize)]
struct SessionView {
    role: Role,
    /// The actor its changes are audited as.
    actor: String,
    csrf_token: String,
    expires_at: Timestamp,
    idle_timeout_seconds: u64,
}

impl SessionView {
    fn of(s: &Session) -> SessionView {
        SessionView {
            role: s.role,
            actor: format!("web:{}", s.role.name()),
            csrf_token: s.csrf.clone(),
            expires_at: s.expires_at,
            idle_timeout_seconds: IDLE_TTL.as_secs(),
        }
    }
}

/// The client's address; all clients behind one proxy share one.
pub(crate) fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

async fn login(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let ip = client_ip(&req);
    let tls = over_tls(req.headers());
    if let Err(wait) = app.sessions.check_allowed(ip) {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins from your address: try again in {wait} seconds"),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(r);
    }
    let (mut parts, body) = req.into_parts();
    let Query(NoQuery {}) =
        <Query<NoQuery> as axum::extract::FromRequestParts<()>>::from_request_parts(
            &mut parts,
            &(),
        )
        .await?;
    let req = Request::from_parts(parts, body);
    let JsonBody(b) =
        <JsonBody<LoginBody> as axum::extract::FromRequest<()>>::from_request(req, &()).await?;
    if !app.tokens.any() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, super::auth::NO_TOKEN));
    }
    let Some(role) = app.tokens.role_of(b.token.trim()) else {
        app.sessions.login_failed(ip);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong token: use the admin or the viewer token from the daemon's configuration",
        ));
    };
    if role == super::auth::Role::Consumer {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the consumer token is for downstream systems reading the read-side API; log in to the console with the admin or the viewer token",
        ));
    }
    app.sessions.login_succeeded(ip);
    let (id, s) = app.sessions.create(role);
    tracing::info!(actor = %format!("web:{}", role.name()), "console login");
    let mut r = Json(SessionView::of(&s)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&id, SESSION_TTL.as_secs(), tls),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn whoami(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Response, ApiError> {
    let s = cookie(&headers)
        .and_then(|id| app.sessions.get(id))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not logged in"))?;
    let mut r = Json(SessionView::of(&s)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Response, ApiError> {
    let id =
        cookie(&headers).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not logged in"))?;
    let s = app
        .sessions
        .get(id)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not logged in"))?;
    let csrf_ok = headers
        .get(CSRF_HEADER)
        .is_some_and(|g| bool::from(g.as_bytes().ct_eq(s.csrf.as_bytes())));
    if !csrf_ok {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("missing or wrong CSRF token: send it in the {CSRF_HEADER} header"),
        ));
    }
    app.sessions.remove(id);
    tracing::info!(actor = %format!("web:{}", s.role.name()), "console logout");
    let mut r = Json(serde_json::json!({"logged_out": true})).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, over_tls(&headers)));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_id_only_and_end_on_logout() {
        let s = Sessions::default();
        let (id, sess) = s.create(Role::Viewer);
        assert_eq!(id.len(), 43, "32 random bytes, base64url");
        assert_ne!(id, sess.csrf);
        assert_eq!(s.get(&id).unwrap().role, Role::Viewer);
        assert!(s.get("not-an-id").is_none());
        assert!(s.remove(&id));
        assert!(s.get(&id).is_none());
        assert!(!s.remove(&id));
    }

    #[test]
    fn an_address_is_refused_after_too_many_failures_and_a_success_resets_it() {
        let s = Sessions::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..MAX_FAILURES - 1 {
            s.login_failed(ip);
        }
        assert!(s.check_allowed(ip).is_ok());
        s.login_failed(ip);
        let wait = s.check_allowed(ip).unwrap_err();
        assert!(wait > 0 && wait <= FAILURE_WINDOW.as_secs(), "{wait}");
        assert!(s.check_allowed(other).is_ok());
        s.login_succeeded(ip);
        assert!(s.check_allowed(ip).is_ok());
    }

    #[test]
    fn failures_are_logged_once_then_summarised() {
        let log = FailureLog::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert!(log.record(a, "x"));
        for _ in 0..100 {
            assert!(!log.record(a, "x"));
        }
        assert!(log.record(b, "x"), "another address gets its own line");
        assert!(!log.record(b, "x"));
        assert_eq!(log.state.lock().unwrap()[&a].unlogged, 100);
        // A minute later the address gets one summary line with the count.
        log.state.lock().unwrap().get_mut(&a).unwrap().last = Some(Instant::now() - LOG_EVERY);
        assert!(log.record(a, "x"));
        assert!(!log.record(a, "x"));
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_with_its_attributes() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; erpsync_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("erpsync_session="));
        assert_eq!(cookie(&h), None);
        let c = set_cookie("xyz", 60, false);
        assert_eq!(
            c.to_str().unwrap(),
            "erpsync_session=xyz; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        assert!(set_cookie("xyz", 60, true)
            .to_str()
            .unwrap()
            .ends_with("; Secure"));
        let mut h = HeaderMap::new();
        assert!(!over_tls(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(over_tls(&h));
    }
}
