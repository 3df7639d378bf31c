//! Mock OAuth 2.0 authorization server for the OAuth client and the OAuth
//! connectors' tests: an in-process token endpoint (axum on 127.0.0.1:0)
//! speaking RFC 6749's refresh-token grant, plus a bearer check an ERP mock
//! can put in front of its API.
//!
//! What it models, and why (see docs/connectors.md, "OAuth 2.0"):
//! - `POST /token`, `application/x-www-form-urlencoded`, client
//!   authentication by HTTP Basic (RFC 6749 §2.3.1, both parts form-encoded,
//!   as Intuit and Xero expect) or by `client_id`/`client_secret` fields.
//!   A wrong client is `401 {"error":"invalid_client"}` with
//!   `WWW-Authenticate: Basic`; an unknown, revoked or expired refresh token
//!   is `400 {"error":"invalid_grant"}` (§5.2); answers carry
//!   `Cache-Control: no-store`.
//! - **Rotation.** [`Rotation::EveryRefresh`] (Xero, Exact Online: every
//!   refresh returns a new refresh token and supersedes the one presented)
//!   or [`Rotation::After`] (Intuit: the same refresh token comes back for
//!   about 24 hours, then a new one). The answer always holds the family's
//!   current refresh token.
//! - **Grace.** A superseded refresh token is still accepted for
//!   [`TokenPolicy::grace`] after it was superseded (Xero: 30 minutes, "in
//!   case the response containing your new tokens is lost"; Intuit's older
//!   documentation: previous tokens expire 24 hours after a new one is
//!   issued). Using it rotates again: the token set issued before (never
//!   received) is superseded in turn. Past the grace it is `invalid_grant`.
//! - Access tokens expire after [`TokenPolicy::access_ttl`]; with
//!   `revoke_access_on_refresh` (Xero) a refresh also invalidates the
//!   family's earlier access tokens.
//! - Faults: an answer lost after the server processed the refresh (the
//!   connection breaks mid-body), 5xx or 429 answers, refreshes held until
//!   released, every token revoked (the user disconnected the app), a clock
//!   that tests move forward instead of sleeping.
//!
//! It shares no code with the client under test.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::json;

pub const CLIENT_ID: &str = "mock-client-id";
pub const CLIENT_SECRET: &str = "mock client/secret:+";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Every refresh issues a new refresh token.
    EveryRefresh,
    /// The refresh token changes once it is older than this.
    After(Duration),
}

#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub rotation: Rotation,
    /// How long a superseded refresh token is still accepted.
    pub grace: Duration,
    pub access_ttl: Duration,
    /// A refresh invalidates the family's earlier access tokens.
    pub revoke_access_on_refresh: bool,
    /// Sent as `x_refresh_token_expires_in` (Intuit) when set.
    pub refresh_ttl: Option<Duration>,
}

impl TokenPolicy {
    /// Xero: 30-minute access tokens, a new refresh token on every refresh,
    /// the old one good for 30 minutes more.
    pub fn xero() -> Self {
        TokenPolicy {
            rotation: Rotation::EveryRefresh,
            grace: Duration::from_secs(30 * 60),
            access_ttl: Duration::from_secs(30 * 60),
            revoke_access_on_refresh: true,
            refresh_ttl: None,
        }
    }

    /// Intuit: hour-long access tokens, the same refresh token for about a
    /// day, the previous one good for 24 hours after a new one is issued,
    /// `x_refresh_token_expires_in` of 100 days.
    pub fn intuit() -> Self {
        TokenPolicy {
            rotation: Rotation::After(Duration::from_secs(24 * 3600)),
            grace: Duration::from_secs(24 * 3600),
            access_ttl: Duration::from_secs(3600),
            revoke_access_on_refresh: false,
            refresh_ttl: Some(Duration::from_secs(100 * 86_400)),
        }
    }
}

#[derive(Debug, Clone)]
struct RefreshToken {
    family: u64,
    issued_at: Duration,
    superseded_at: Option<Duration>,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct AccessToken {
    family: u64,
    expires_at: Duration,
    revoked: bool,
}

/// What a test can see of the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Refresh-grant requests received (whatever their outcome).
    pub refresh_requests: u64,
    /// Refreshes answered with a token set (lost answers included).
    pub refreshed: u64,
    pub invalid_grant: u64,
    pub invalid_client: u64,
    /// Requests to the protected API, and those refused with 401.
    pub api_requests: u64,
    pub api_unauthorized: u64,
}

struct Inner {
    policy: TokenPolicy,
    /// The mock's clock: real time is never read, tests move it.
    now: Duration,
    next_id: u64,
    refresh: HashMap<String, RefreshToken>,
    /// Family → its current refresh token.
    current: HashMap<u64, String>,
    access: HashMap<String, AccessToken>,
    lose_answers: u32,
    fail_next: Vec<u16>,
    stats: TokenStats,
}

struct Shared {
    inner: Mutex<Inner>,
    /// While false, refresh requests wait (after being counted).
    open: tokio::sync::watch::Sender<bool>,
}

pub struct MockTokenServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockTokenServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A mock token server on its own runtime, for tests that drive the real
/// binary from plain (blocking) test functions.
pub struct BackgroundTokenServer {
    server: Option<MockTokenServer>,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::ops::Deref for BackgroundTokenServer {
    type Target = MockTokenServer;
    fn deref(&self) -> &MockTokenServer {
        self.server.as_ref().expect("running")
    }
}

impl Drop for BackgroundTokenServer {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl MockTokenServer {
    pub fn start_in_background(policy: TokenPolicy) -> BackgroundTokenServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(MockTokenServer::start(policy));
        BackgroundTokenServer {
            server: Some(server),
            rt: Some(rt),
        }
    }

    pub async fn start(policy: TokenPolicy) -> MockTokenServer {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                policy,
                now: Duration::ZERO,
                next_id: 1,
                refresh: HashMap::new(),
                current: HashMap::new(),
                access: HashMap::new(),
                lose_answers: 0,
                fail_next: Vec::new(),
                stats: TokenStats::default(),
            }),
            open: tokio::sync::watch::channel(true).0,
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/api/whoami", get(whoami))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockTokenServer {
            addr,
            shared,
            server,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A protected resource answering 200 for a valid bearer token.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/whoami", self.addr)
    }

    /// Writes the client id and secret into `dir` as `client_id` and
    /// `client_secret` (the files an `[...oauth]` table points to).
    pub fn write_client_files(&self, dir: &std::path::Path) {
        std::fs::write(dir.join("client_id"), format!("{CLIENT_ID}\n")).unwrap();
        std::fs::write(dir.join("client_secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    }

    /// A new grant (what the user's consent gives): its refresh token.
    pub fn issue_refresh_token(&self) -> String {
        let mut s = self.shared.inner.lock().unwrap();
        let family = s.next_id;
        s.next_id += 1;
        let now = s.now;
        let t = new_token(&mut s, "rt");
        s.refresh.insert(
            t.clone(),
            RefreshToken {
                family,
                issued_at: now,
                superseded_at: None,
                revoked: false,
            },
        );
        s.current.insert(family, t.clone());
        t
    }

    /// Moves the mock's clock forward.
    pub fn advance(&self, d: Duration) {
        self.shared.inner.lock().unwrap().now += d;
    }

    /// The next `n` refreshes are processed but their answers are lost.
    pub fn lose_next_answers(&self, n: u32) {
        self.shared.inner.lock().unwrap().lose_answers = n;
    }

    /// The next refresh requests answer these statuses (5xx or 429), one each.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.shared.inner.lock().unwrap().fail_next = statuses.to_vec();
    }

    /// Holds refresh requests (counted, not answered) until [`release`].
    pub fn hold_refreshes(&self) {
        self.shared.open.send_replace(false);
    }

    pub fn release_refreshes(&self) {
        self.shared.open.send_replace(true);
    }

    /// The user disconnected the app: every token is revoked.
    pub fn revoke_all(&self) {
        let mut s = self.shared.inner.lock().unwrap();
        for t in s.refresh.values_mut() {
            t.revoked = true;
        }
        for t in s.access.values_mut() {
            t.revoked = true;
        }
    }

    /// Every access token issued so far stops working (they expired).
    pub fn expire_access_tokens(&self) {
        let mut s = self.shared.inner.lock().unwrap();
        for t in s.access.values_mut() {
            t.revoked = true;
        }
    }

    /// Whether the server would accept `refresh_token` now.
    pub fn refresh_token_valid(&self, refresh_token: &str) -> bool {
        let s = self.shared.inner.lock().unwrap();
        check_refresh(&s, refresh_token).is_ok()
    }

    /// The current refresh token of the family `refresh_token` belongs to.
    pub fn current_refresh_token(&self, refresh_token: &str) -> Option<String> {
        let s = self.shared.inner.lock().unwrap();
        let family = s.refresh.get(refresh_token)?.family;
        s.current.get(&family).cloned()
    }

    pub fn stats(&self) -> TokenStats {
        self.shared.inner.lock().unwrap().stats.clone()
    }

    /// Every token value ever issued (to check none leaks into logs).
    pub fn issued_tokens(&self) -> Vec<String> {
        let s = self.shared.inner.lock().unwrap();
        s.refresh.keys().chain(s.access.keys()).cloned().collect()
    }

    /// The bearer check for an ERP mock: `Ok` for a valid access token,
    /// else the 401 answer to send.
    pub fn check_bearer(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        check_bearer(&self.shared, headers)
    }
}

fn new_token(s: &mut Inner, prefix: &str) -> String {
    let id = s.next_id;
    s.next_id += 1;
    let r: u64 = rand::random();
    format!("{prefix}-{id}-{r:016x}")
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"token\"".parse().unwrap(),
        );
    }
    r
}

fn form_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The client id and secret of a request, from Basic or from the form.
fn client_of(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let b64 = v.strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (id, secret) = raw.split_once(':')?;
        return Some((form_decode(id), form_decode(secret)));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

/// Whether a presented refresh token is accepted now: its family.
fn check_refresh(s: &Inner, token: &str) -> Result<u64, &'static str> {
    let t = s.refresh.get(token).ok_or("Token is invalid")?;
    if t.revoked {
        return Err("Token has been expired or revoked.");
    }
    if let Some(at) = t.superseded_at {
        if s.now.saturating_sub(at) > s.policy.grace {
            return Err("Token has been expired or revoked.");
        }
    }
    Ok(t.family)
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    {
        let mut s = shared.inner.lock().unwrap();
        s.stats.refresh_requests += 1;
    }
    // Held refreshes wait here, already counted.
    let mut open = shared.open.subscribe();
    while !*open.borrow_and_update() {
        if open.changed().await.is_err() {
            break;
        }
    }
    let mut s = shared.inner.lock().unwrap();
    if !headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "form body expected",
        );
    }
    if !s.fail_next.is_empty() {
        let status = s.fail_next.remove(0);
        let status = StatusCode::from_u16(status).unwrap();
        return if status == StatusCode::TOO_MANY_REQUESTS {
            (
                status,
                [(header::RETRY_AFTER, "1")],
                "{\"error\":\"too_many_requests\"}",
            )
                .into_response()
        } else {
            (status, "upstream trouble").into_response()
        };
    }
    match client_of(&headers, &form) {
        Some((id, secret)) if id == CLIENT_ID && secret == CLIENT_SECRET => {}
        _ => {
            s.stats.invalid_client += 1;
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only refresh_token",
        );
    }
    let Some(presented) = form.get("refresh_token").cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token missing",
        );
    };
    let family = match check_refresh(&s, &presented) {
        Ok(f) => f,
        Err(why) => {
            s.stats.invalid_grant += 1;
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
        }
    };
    let now = s.now;
    let current = s.current[&family].clone();
    let rotate = match s.policy.rotation {
        Rotation::EveryRefresh => true,
        // A superseded token used within its grace, or a current one old
        // enough, gets a new one.
        Rotation::After(d) => {
            presented != current || now.saturating_sub(s.refresh[&current].issued_at) >= d
        }
    };
    let refresh_token = if rotate {
        let fresh = new_token(&mut s, "rt");
        for t in [presented.clone(), current] {
            if let Some(r) = s.refresh.get_mut(&t) {
                r.superseded_at.get_or_insert(now);
            }
        }
        s.refresh.insert(
            fresh.clone(),
            RefreshToken {
                family,
                issued_at: now,
                superseded_at: None,
                revoked: false,
            },
        );
        s.current.insert(family, fresh.clone());
        fresh
    } else {
        presented
    };
    if s.policy.revoke_access_on_refresh {
        for a in s.access.values_mut().filter(|a| a.family == family) {
            a.revoked = true;
        }
    }
    let access = new_token(&mut s, "at");
    let ttl = s.policy.access_ttl;
    s.access.insert(
        access.clone(),
        AccessToken {
            family,
            expires_at: now + ttl,
            revoked: false,
        },
    );
    s.stats.refreshed += 1;
    let mut answer = json!({
        "token_type": "bearer",
        "access_token": access,
        "refresh_token": refresh_token,
        "expires_in": ttl.as_secs(),
    });
    if let Some(r) = s.policy.refresh_ttl {
        answer["x_refresh_token_expires_in"] = json!(r.as_secs());
    }
    let lose = s.lose_answers > 0;
    if lose {
        s.lose_answers -= 1;
    }
    drop(s);
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_TYPE, "application/json"),
    ];
    if lose {
        // The refresh happened; the connection breaks before the body.
        let body = Body::from_stream(futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection lost"))
        }));
        return (StatusCode::OK, headers, body).into_response();
    }
    (StatusCode::OK, headers, answer.to_string()).into_response()
}

fn check_bearer(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let mut s = shared.inner.lock().unwrap();
    s.stats.api_requests += 1;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let ok = token
        .as_ref()
        .and_then(|t| s.access.get(t))
        .is_some_and(|a| !a.revoked && a.expires_at > s.now);
    if ok {
        return Ok(());
    }
    s.stats.api_unauthorized += 1;
    Err(Box::new(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            "{\"error\":\"invalid_token\"}",
        )
            .into_response(),
    ))
}

async fn whoami(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match check_bearer(&shared, &headers) {
        Ok(()) => (StatusCode::OK, "{\"ok\":true}").into_response(),
        Err(r) => *r,
    }
}
