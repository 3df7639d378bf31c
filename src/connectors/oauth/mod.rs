//! OAuth 2.0 for every connector whose ERP uses it (QuickBooks Online,
//! Xero, Business Central, Exact Online, ...): the refresh-token grant
//! (RFC 6749 §6) with rotating refresh tokens kept durably in the store.
//!
//! A connector holds one [`OAuthClient`], built from its
//! [`OAuthOptions`] and its [`BuildContext`](super::BuildContext), and wraps
//! each request in [`OAuthClient::authorized`]: it gets an access token
//! (refreshed shortly before it expires), sends the request, and after a
//! 401 ([`ConnectorError::Unauthorized`]) refreshes once and retries once.
//!
//! # Invariants
//!
//! - **Persist before use.** A refresh answer is written to the store (and
//!   flushed) before its access token is handed out; a refresh always
//!   starts from the token set in the store, never from one only in memory.
//!   So after a crash at any instant the store holds either the old refresh
//!   token (the answer was lost; the ERPs accept the old one again for a
//!   grace period, Xero 30 minutes, and the next attempt comes seconds
//!   later) or the new one. See docs/connectors.md for each step.
//! - **One refresh at a time** per connector: concurrent callers (and
//!   concurrent 401s) wait for the refresh in flight and use its result.
//! - **No retry storm.** A refused refresh token (`invalid_grant`) puts the
//!   client in `needs_reconnect`: every later call fails at once with
//!   [`ConnectorError::NeedsReconnect`] (the reason and the command that
//!   fixes it), without asking the token endpoint again, until a new refresh
//!   token is stored (`erpsync connect`). Other failures (network, 5xx, 429)
//!   are ordinary connector errors that the budget retries.
//! - Tokens are [`Secret`]s: never logged, never in `/status` or an error.
//!
//! This module never sleeps or retries by itself; it is called inside the
//! connector's [`Budget::call`](super::Budget::call).

mod options;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::credentials::CredentialStore;
use super::{parse_retry_after, BuildContext, ConnectorError};
use crate::model::Timestamp;
use crate::secrets::Secret;

pub use options::OAuthOptions;

/// The credential name under which the token set is stored.
pub const CREDENTIAL: &str = "oauth2";

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields.
    RequestBody,
}

/// What [`OAuthClient::new`] needs besides the build context.
pub struct OAuthSettings {
    pub token_url: reqwest::Url,
    pub client_id: Secret,
    pub client_secret: Secret,
    pub client_auth: ClientAuth,
    /// Timeout of one token request.
    pub timeout: Duration,
}

/// A bearer access token. Its value is only readable through
/// [`AccessToken::secret`], for the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    value: Secret,
    expires_at: Timestamp,
}

impl AccessToken {
    /// The token, for `Authorization: Bearer <token>` (`bearer_auth`).
    pub fn secret(&self) -> &str {
        self.value.expose()
    }

    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken([redacted], expires {})", self.expires_at)
    }
}

/// The token set as stored (JSON under credential [`CREDENTIAL`]).
#[derive(Clone, Serialize, Deserialize)]
struct StoredTokens {
    refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_expires_at: Option<Timestamp>,
    /// When the ERP says the refresh token itself expires (Intuit's
    /// `x_refresh_token_expires_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_expires_at: Option<Timestamp>,
    updated_at: Timestamp,
    /// `connect` (loaded by a person) or `refresh` (a token endpoint answer).
    source: String,
}

impl StoredTokens {
    fn decode(text: &str) -> Result<StoredTokens, ConnectorError> {
        serde_json::from_str(text).map_err(|e| {
            // serde's message names a field or a position, never a value.
            ConnectorError::Config(format!("the stored OAuth token set is unreadable ({e})"))
        })
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).expect("token sets serialise")
    }

    /// The stored access token, when it is still good for a while.
    fn usable_access(&self, now: Timestamp) -> Option<AccessToken> {
        let value = self.access_token.as_ref()?;
        let expires_at = self.access_expires_at?;
        let lifetime = expires_at - self.updated_at;
        (expires_at - refresh_margin(lifetime) > now).then(|| AccessToken {
            value: Secret::new(value.clone()),
            expires_at,
        })
    }
}

/// How long before expiry an access token is refreshed: a tenth of its
/// lifetime, between 10 s and 5 min (Exact's 10-minute tokens: 1 min;
/// Xero's 30 minutes: 3 min; Intuit's hour: 5 min).
fn refresh_margin(lifetime: chrono::TimeDelta) -> chrono::TimeDelta {
    let tenth = lifetime / 10;
    tenth.clamp(
        chrono::TimeDelta::seconds(10),
        chrono::TimeDelta::seconds(300),
    )
}

/// Loads the first refresh token of a connector (`erpsync connect`): the
/// token set in the store is replaced, so the next request refreshes with
/// it. `refresh_token` is checked for shape (the message never shows it).
pub async fn connect(store: &dyn CredentialStore, refresh_token: &Secret) -> Result<(), String> {
    let t = refresh_token.expose().trim();
    if t.is_empty() {
        return Err("the refresh token is empty".into());
    }
    if t.len() > 4096 {
        return Err(format!(
            "the refresh token is {} characters long; at most 4096 are accepted",
            t.len()
        ));
    }
    if !t.chars().all(|c| c.is_ascii_graphic()) {
        return Err(
            "the refresh token contains spaces or characters that are not printable ASCII; give the token alone"
                .into(),
        );
    }
    let record = StoredTokens {
        refresh_token: t.to_string(),
        access_token: None,
        access_expires_at: None,
        refresh_expires_at: None,
        updated_at: chrono::Utc::now(),
        source: "connect".into(),
    };
    store.save(CREDENTIAL, &record.encode()).await
}

/// The command that loads a new refresh token for `connector`.
pub fn reconnect_command(connector: &str, config_file: &std::path::Path) -> String {
    let mut cmd = format!("erpsync connect {connector} --refresh-token-file <FILE>");
    if config_file != std::path::Path::new(crate::config::DEFAULT_FILE) {
        cmd += &format!(" --config {}", config_file.display());
    }
    cmd
}

/// What `/status` may show of a connector's OAuth state: no token values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuthStatus {
    /// `not_connected`, `connected` or `needs_reconnect`.
    pub state: &'static str,
    pub access_expires_at: Option<Timestamp>,
    pub refresh_expires_at: Option<Timestamp>,
    pub last_refresh: Option<Timestamp>,
    /// Refreshes done since this process started.
    pub refreshes: u64,
    /// Why it needs reconnecting.
    pub reason: Option<String>,
}

/// The in-flight state, behind the single-flight lock.
#[derive(Default)]
struct FlightState {
    /// The refresh token the endpoint refused, with its reason: while the
    /// store holds that same token, calls fail at once.
    refused: Option<(Secret, String)>,
}

/// One connector's OAuth 2.0 client. Cheap to share (`Arc`) between the
/// connector's concurrent requests.
pub struct OAuthClient {
    connector: String,
    settings: OAuthSettings,
    http: reqwest::Client,
    store: Arc<dyn CredentialStore>,
    reconnect: String,
    /// The access token in use and when to refresh it (fast path, no
    /// store read).
    current: Mutex<Option<(AccessToken, Timestamp)>>,
    /// Single flight: whoever holds it is the one refreshing.
    flight: tokio::sync::Mutex<FlightState>,
    refreshes: AtomicU64,
    status: Mutex<AuthStatus>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("connector", &self.connector)
            .field("token_url", &self.settings.token_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A token endpoint answer that is not a token set.
enum RefreshFailure {
    /// The refresh token was refused: only reconnecting helps.
    Refused(String),
    Other(ConnectorError),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    x_refresh_token_expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// `expires_in` when the endpoint leaves it out (RFC 6749 makes it
/// optional): short, so a wrong guess costs one early refresh.
const DEFAULT_EXPIRES_IN: i64 = 600;

impl OAuthClient {
    pub fn new(settings: OAuthSettings, cx: &BuildContext) -> Result<OAuthClient, String> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("erpsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the OAuth HTTP client: {e}"))?;
        Ok(OAuthClient {
            connector: cx.id.clone(),
            settings,
            http,
            store: Arc::clone(&cx.credentials),
            reconnect: reconnect_command(&cx.id, &cx.config_file),
            current: Mutex::new(None),
            flight: tokio::sync::Mutex::new(FlightState::default()),
            refreshes: AtomicU64::new(0),
            status: Mutex::new(AuthStatus::default()),
        })
    }

    /// The command that fixes `needs_reconnect` for this connector.
    pub fn reconnect_command(&self) -> &str {
        &self.reconnect
    }

    /// The OAuth state for `/status` (no token values). Before the first
    /// request it is read from the store.
    pub fn status(&self) -> AuthStatus {
        let mut s = self.status.lock().expect("poisoned").clone();
        if s.state.is_empty() {
            match self
                .store
                .load(CREDENTIAL)
                .ok()
                .flatten()
                .map(|t| StoredTokens::decode(&t))
            {
                Some(Ok(t)) => {
                    s.state = "connected";
                    s.access_expires_at = t.access_expires_at;
                    s.refresh_expires_at = t.refresh_expires_at;
                }
                Some(Err(_)) => s.state = "connected",
                None => s.state = "not_connected",
            }
        }
        s.refreshes = self.refreshes.load(Ordering::Relaxed);
        s
    }

    /// Refresh requests sent since this client was built.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// An access token good for a while: the one in use, the one in the
    /// store, or a new one from a refresh (one at a time).
    pub async fn access_token(&self) -> Result<AccessToken, ConnectorError> {
        if let Some(t) = self.fresh_current() {
            return Ok(t);
        }
        self.obtain(None).await
    }

    /// After the ERP refused `rejected` (HTTP 401): a newer token, from a
    /// refresh unless another caller already replaced `rejected`.
    pub async fn refresh_after_unauthorized(
        &self,
        rejected: &AccessToken,
    ) -> Result<AccessToken, ConnectorError> {
        self.obtain(Some(rejected)).await
    }

    /// Runs one request with a bearer token: `send` gets the token and
    /// returns [`ConnectorError::Unauthorized`] for a 401; then the token is
    /// refreshed once and `send` runs once more. A second 401 is an
    /// [`ConnectorError::Auth`] error. Call it inside `Budget::call`.
    pub async fn authorized<T, F, Fut>(&self, mut send: F) -> Result<T, ConnectorError>
    where
        F: FnMut(AccessToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectorError>>,
    {
        let token = self.access_token().await?;
        match send(token.clone()).await {
            Err(ConnectorError::Unauthorized(first)) => {
                tracing::debug!(connector = %self.connector, detail = %first, "access token refused; refreshing once");
                let fresh = self.refresh_after_unauthorized(&token).await?;
                match send(fresh).await {
                    Err(ConnectorError::Unauthorized(m)) => Err(ConnectorError::Auth(format!(
                        "the ERP refused a freshly refreshed access token ({m}); check the app's scopes and the connected company"
                    ))),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The token in use, unless it is due for a refresh.
    fn fresh_current(&self) -> Option<AccessToken> {
        let cur = self.current.lock().expect("poisoned");
        let (t, refresh_at) = cur.as_ref()?;
        (chrono::Utc::now() < *refresh_at).then(|| t.clone())
    }

    async fn obtain(&self, rejected: Option<&AccessToken>) -> Result<AccessToken, ConnectorError> {
        let mut flight = self.flight.lock().await;
        let now = chrono::Utc::now();
        let not_rejected = |t: &AccessToken| rejected.is_none_or(|r| r.value != t.value);
        // Someone refreshed while we waited for the lock.
        if let Some(t) = self.fresh_current().filter(not_rejected) {
            return Ok(t);
        }
        let stored = self
            .store
            .load(CREDENTIAL)
            .map_err(|e| ConnectorError::Config(format!("cannot read the OAuth token set: {e}")))?;
        let Some(stored) = stored else {
            let reason = "no refresh token stored yet".to_string();
            self.set_needs_reconnect(&reason);
            return Err(self.needs_reconnect(reason));
        };
        let tokens = StoredTokens::decode(&stored)?;
        // The store's access token (saved before a crash, or by another
        // writer) is as good as a new one.
        if let Some(t) = tokens.usable_access(now).filter(not_rejected) {
            self.use_token(&t, &tokens);
            return Ok(t);
        }
        if let Some((refused, reason)) = &flight.refused {
            if refused.expose() == tokens.refresh_token {
                return Err(self.needs_reconnect(reason.clone()));
            }
        }
        match self.request_refresh(&tokens.refresh_token).await {
            Ok(answer) => {
                let now = chrono::Utc::now();
                let expires_in = answer
                    .expires_in
                    .filter(|s| *s > 0)
                    .unwrap_or(DEFAULT_EXPIRES_IN)
                    .min(86_400 * 30);
                let next = StoredTokens {
                    // RFC 6749 §6: no new refresh token means keep the old.
                    refresh_token: answer
                        .refresh_token
                        .filter(|r| !r.is_empty())
                        .unwrap_or(tokens.refresh_token),
                    access_token: Some(answer.access_token.clone()),
                    access_expires_at: Some(now + chrono::TimeDelta::seconds(expires_in)),
                    refresh_expires_at: answer
                        .x_refresh_token_expires_in
                        .filter(|s| *s > 0)
                        .map(|s| now + chrono::TimeDelta::seconds(s.min(86_400 * 365 * 10)))
                        .or(tokens.refresh_expires_at),
                    updated_at: now,
                    source: "refresh".into(),
                };
                // Durable before the new access token is used.
                self.store
                    .save(CREDENTIAL, &next.encode())
                    .await
                    .map_err(|e| {
                        ConnectorError::Config(format!(
                            "cannot store the refreshed OAuth token set ({e}); the next attempt refreshes again"
                        ))
                    })?;
                flight.refused = None;
                let t = AccessToken {
                    value: Secret::new(answer.access_token),
                    expires_at: now + chrono::TimeDelta::seconds(expires_in),
                };
                self.use_token(&t, &next);
                let mut s = self.status.lock().expect("poisoned");
                s.last_refresh = Some(now);
                drop(s);
                tracing::info!(connector = %self.connector, expires_at = %t.expires_at, "OAuth access token refreshed");
                Ok(t)
            }
            Err(RefreshFailure::Refused(reason)) => {
                tracing::error!(connector = %self.connector, reason = %reason, command = %self.reconnect, "the ERP refused the refresh token; the connector needs reconnecting");
                flight.refused = Some((Secret::new(tokens.refresh_token), reason.clone()));
                *self.current.lock().expect("poisoned") = None;
                self.set_needs_reconnect(&reason);
                Err(self.needs_reconnect(reason))
            }
            Err(RefreshFailure::Other(e)) => Err(e),
        }
    }

    fn use_token(&self, t: &AccessToken, tokens: &StoredTokens) {
        let refresh_at = t.expires_at - refresh_margin(t.expires_at - tokens.updated_at);
        *self.current.lock().expect("poisoned") = Some((t.clone(), refresh_at));
        let mut s = self.status.lock().expect("poisoned");
        s.state = "connected";
        s.reason = None;
        s.access_expires_at = Some(t.expires_at);
        s.refresh_expires_at = tokens.refresh_expires_at;
    }

    fn set_needs_reconnect(&self, reason: &str) {
        let mut s = self.status.lock().expect("poisoned");
        s.state = "needs_reconnect";
        s.reason = Some(reason.to_string());
        s.access_expires_at = None;
    }

    fn needs_reconnect(&self, reason: String) -> ConnectorError {
        ConnectorError::NeedsReconnect {
            reason,
            command: self.reconnect.clone(),
        }
    }

    /// One refresh-token grant request (RFC 6749 §6).
    async fn request_refresh(&self, refresh_token: &str) -> Result<TokenResponse, RefreshFailure> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let s = &self.settings;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let mut req = self
            .http
            .post(s.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        match s.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: each part form-encoded, then Basic.
                req = req.basic_auth(
                    url_form_encode(s.client_id.expose()),
                    Some(url_form_encode(s.client_secret.expose())),
                );
            }
            ClientAuth::RequestBody => {
                form.push(("client_id", s.client_id.expose()));
                form.push(("client_secret", s.client_secret.expose()));
            }
        }
        let response = req
            .form(&form)
            .send()
            .await
            .map_err(|e| RefreshFailure::Other(token_transport_error(e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response
            .bytes()
            .await
            .map_err(|e| RefreshFailure::Other(token_transport_error(e)))?;
        if (200..300).contains(&status) {
            let answer: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                RefreshFailure::Other(ConnectorError::Protocol(format!(
                    "the token endpoint's answer is not a token set ({})",
                    json_error_place(&e)
                )))
            })?;
            if !answer.token_type.eq_ignore_ascii_case("bearer") {
                return Err(RefreshFailure::Other(ConnectorError::Protocol(format!(
                    "the token endpoint issued a `{}` token; only bearer tokens are supported",
                    answer.token_type.chars().take(32).collect::<String>()
                ))));
            }
            if answer.access_token.is_empty() {
                return Err(RefreshFailure::Other(ConnectorError::Protocol(
                    "the token endpoint's answer has an empty access_token".into(),
                )));
            }
            return Ok(answer);
        }
        super::redact::log_body(&self.connector, status, &body);
        let parsed: Option<ErrorResponse> = serde_json::from_slice(&body).ok();
        let described = |e: &ErrorResponse| {
            let code: String = e
                .error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            match &e.error_description {
                Some(d) => format!("{code}: {}", super::redact::summary(d)),
                None => code,
            }
        };
        Err(match (status, &parsed) {
            (400 | 401, Some(e)) if e.error == "invalid_grant" => RefreshFailure::Refused(format!(
                "the token endpoint refused the refresh token ({}): it was revoked, expired, or already replaced by a newer one",
                described(e)
            )),
            (400 | 401, Some(e)) if matches!(e.error.as_str(), "invalid_client" | "unauthorized_client") => {
                RefreshFailure::Other(ConnectorError::Auth(format!(
                    "the token endpoint refused the client credentials ({}); check oauth.client_id and oauth.client_secret",
                    described(e)
                )))
            }
            (429, _) => RefreshFailure::Other(ConnectorError::RateLimited { retry_after }),
            (500..=599, _) => RefreshFailure::Other(ConnectorError::Server {
                status,
                message: parsed
                    .as_ref()
                    .map(described)
                    .unwrap_or_else(|| "token endpoint error".into()),
            }),
            (_, Some(e)) => RefreshFailure::Other(ConnectorError::Rejected {
                status,
                message: format!("token endpoint: {}", described(e)),
            }),
            (_, None) => RefreshFailure::Other(ConnectorError::Protocol(format!(
                "the token endpoint answered HTTP {status} without an OAuth error body"
            ))),
        })
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn url_form_encode(v: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_');
    percent_encoding::utf8_percent_encode(v, SET)
        .to_string()
        .replace("%20", "+")
}

/// A token request that failed in transport: retryable, without the URL's
/// query (there is none) or any form value in the message.
fn token_transport_error(e: reqwest::Error) -> ConnectorError {
    ConnectorError::Transport(format!("token endpoint: {}", e.without_url()))
}

/// The kind and place of a JSON error, never the text around it (which
/// could hold a token).
fn json_error_place(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_scale_with_the_lifetime() {
        let m = |s: i64| refresh_margin(chrono::TimeDelta::seconds(s)).num_seconds();
        assert_eq!(m(600), 60);
        assert_eq!(m(1800), 180);
        assert_eq!(m(3600), 300);
        assert_eq!(m(30), 10);
    }

    #[test]
    fn client_credentials_are_form_encoded_for_basic() {
        assert_eq!(url_form_encode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(url_form_encode("AB-12_x.y*"), "AB-12_x.y*");
    }

    #[test]
    fn reconnect_command_names_a_non_default_config() {
        assert_eq!(
            reconnect_command("qbo", std::path::Path::new("/etc/erpsync/erpsync.toml")),
            "erpsync connect qbo --refresh-token-file <FILE>"
        );
        assert_eq!(
            reconnect_command("qbo", std::path::Path::new("/srv/e.toml")),
            "erpsync connect qbo --refresh-token-file <FILE> --config /srv/e.toml"
        );
    }

    #[test]
    fn debug_never_shows_a_token() {
        let t = AccessToken {
            value: Secret::new("sekrit"),
            expires_at: chrono::Utc::now(),
        };
        assert!(!format!("{t:?}").contains("sekrit"));
    }

    #[tokio::test]
    async fn connect_checks_the_token_shape_without_echoing_it() {
        let store = crate::connectors::credentials::MemoryCredentials::default();
        for bad in ["", "two words", "tab\there"] {
            let e = connect(&store, &Secret::new(bad)).await.unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(store.load(CREDENTIAL).unwrap().is_none());
        connect(&store, &Secret::new(" RT1\n")).await.unwrap();
        let t = StoredTokens::decode(&store.load(CREDENTIAL).unwrap().unwrap()).unwrap();
        assert_eq!(t.refresh_token, "RT1");
        assert_eq!(t.source, "connect");
        assert!(t.access_token.is_none());
    }
}
