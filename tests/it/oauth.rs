//! The shared OAuth 2.0 client against the mock authorization server
//! (`oauth_mock`), with its token set in a real store: rotation across
//! restarts, a crash at each step of a refresh, one refresh for many 401s,
//! `invalid_grant` → `needs_reconnect` → `erpsync connect` → recovered.
//!
//! A "crash" drops the client mid-refresh (its task aborted, its store
//! closed) exactly where a kill -9 would stop the process, then a new client
//! starts from the reopened store, as the restarted daemon would.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use erpsync::config::Limits;
use erpsync::connectors::oauth::{self, OAuthClient, OAuthOptions};
use erpsync::connectors::{Budget, BuildContext, ConnectorError, CredentialStore};
use erpsync::credentials::StoreCredentials;
use erpsync::secrets::Secret;
use erpsync::store::Store;

use crate::oauth_mock::{MockTokenServer, TokenPolicy};

const ID: &str = "acme";

/// A client of `mock` for connector `acme`, its token set in `creds`.
pub fn client(mock: &MockTokenServer, dir: &Path, creds: Arc<dyn CredentialStore>) -> OAuthClient {
    mock.write_client_files(dir);
    let opts: OAuthOptions = toml::from_str(&format!(
        "token_url = \"{}\"\nclient_id_file = \"client_id\"\nclient_secret_file = \"client_secret\"\nrequest_timeout = \"10s\"\n",
        mock.token_url()
    ))
    .unwrap();
    let cx = BuildContext {
        id: ID.into(),
        base_dir: dir.to_path_buf(),
        config_file: dir.join("erpsync.toml"),
        budget: Budget::new(Limits::default()),
        credentials: creds,
    };
    opts.client(None, &cx).unwrap()
}

/// One request to the mock's protected API the way a connector sends it.
pub async fn call_api(c: &OAuthClient, url: &str) -> Result<(), ConnectorError> {
    let http = reqwest::Client::new();
    c.authorized(|token| {
        let http = http.clone();
        async move {
            let r = http
                .get(url)
                .bearer_auth(token.secret())
                .send()
                .await
                .map_err(ConnectorError::from_reqwest)?;
            match r.status().as_u16() {
                200 => Ok(()),
                401 => Err(ConnectorError::Unauthorized("invalid_token".into())),
                s => Err(ConnectorError::Server {
                    status: s,
                    message: String::new(),
                }),
            }
        }
    })
    .await
}

/// Where a simulated crash stops the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashAt {
    /// Before the token request leaves.
    BeforeRequest,
    /// The server refreshed, the answer never arrived.
    AnswerLost,
    /// The answer arrived; the process dies before the save is durable.
    BeforeSave,
    /// The save is durable; the process dies before the token is used.
    AfterSave,
}

/// Credentials that stop forever at one point of `save`, as a killed
/// process would.
struct Crashing {
    inner: StoreCredentials,
    at: CrashAt,
    reached: AtomicBool,
}

#[async_trait]
impl CredentialStore for Crashing {
    fn load(&self, name: &str) -> Result<Option<String>, String> {
        self.inner.load(name)
    }
    async fn save(&self, name: &str, value: &str) -> Result<(), String> {
        match self.at {
            CrashAt::BeforeSave => {
                self.reached.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            CrashAt::AfterSave => {
                self.inner.save(name, value).await?;
                self.reached.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        self.inner.save(name, value).await
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn open(dir: &Path) -> Arc<Store> {
    // The previous process's store may still be closing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(&dir.join("state")) {
            Ok(s) => return Arc::new(s),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn creds(store: &Arc<Store>) -> Arc<dyn CredentialStore> {
    Arc::new(StoreCredentials::new(Arc::clone(store), ID))
}

async fn connect(store: &Arc<Store>, refresh_token: &str) {
    oauth::connect(creds(store).as_ref(), &Secret::new(refresh_token))
        .await
        .unwrap();
}

/// The stored refresh token (read the way an operator would not: only the
/// tests look inside the token set).
fn stored_refresh_token(store: &Store) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&store.credential(ID, oauth::CREDENTIAL).unwrap().unwrap()).unwrap();
    v["refresh_token"].as_str().unwrap().to_string()
}

async fn with_timeout<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn rotated_tokens_are_used_across_restarts() {
    let mock = MockTokenServer::start(TokenPolicy::xero()).await;
    let dir = tempfile::tempdir().unwrap();
    let rt0 = mock.issue_refresh_token();
    {
        let store = open(dir.path()).await;
        connect(&store, &rt0).await;
        let c = client(&mock, dir.path(), creds(&store));
        call_api(&c, &mock.api_url()).await.unwrap();
        assert_eq!(mock.stats().refresh_requests, 1);
        let rt1 = stored_refresh_token(&store);
        assert_ne!(rt1, rt0, "the rotated token is stored");
        assert_eq!(
            mock.current_refresh_token(&rt0).as_deref(),
            Some(rt1.as_str())
        );
        // A 401 (expired access token) refreshes once more, with rt1.
        mock.expire_access_tokens();
        call_api(&c, &mock.api_url()).await.unwrap();
        assert_eq!(mock.stats().refresh_requests, 2);
        assert_eq!(c.status().state, "connected");
    }
    // Restart: the stored access token is still good, no refresh needed.
    let store = open(dir.path()).await;
    let rt2 = stored_refresh_token(&store);
    let c = client(&mock, dir.path(), creds(&store));
    call_api(&c, &mock.api_url()).await.unwrap();
    assert_eq!(mock.stats().refresh_requests, 2);
    // Long after every grace period, only the latest token works, and it
    // is the one in the store.
    mock.advance(Duration::from_secs(2 * 3600));
    assert!(!mock.refresh_token_valid(&rt0));
    assert!(mock.refresh_token_valid(&rt2));
    call_api(&c, &mock.api_url()).await.unwrap();
    assert_eq!(
        mock.stats().refresh_requests,
        3,
        "expired access token refreshed"
    );
    assert_eq!(mock.stats().invalid_grant, 0);
}

/// A crash at `at` during a refresh, then a restart: the daemon goes on
/// with a working token, and the store holds the family's current token
/// (it still works after every grace period is over).
async fn crash_then_restart(policy: TokenPolicy, at: CrashAt) {
    let grace = policy.grace;
    let rotation_age = match policy.rotation {
        crate::oauth_mock::Rotation::After(d) => d,
        crate::oauth_mock::Rotation::EveryRefresh => Duration::ZERO,
    };
    let mock = MockTokenServer::start(policy).await;
    let dir = tempfile::tempdir().unwrap();
    let rt0 = mock.issue_refresh_token();
    {
        let store = open(dir.path()).await;
        connect(&store, &rt0).await;
    }
    // Old enough that this refresh rotates (Intuit keeps a token a day).
    mock.advance(rotation_age);
    let before = mock.stats().refresh_requests;
    {
        let store = open(dir.path()).await;
        match at {
            CrashAt::BeforeRequest => {}
            CrashAt::AnswerLost => {
                mock.lose_next_answers(1);
                let c = client(&mock, dir.path(), creds(&store));
                let e = c.access_token().await.unwrap_err();
                assert!(e.is_retryable(), "{e:?}");
                assert_eq!(stored_refresh_token(&store), rt0);
            }
            CrashAt::BeforeSave | CrashAt::AfterSave => {
                let crashing = Arc::new(Crashing {
                    inner: StoreCredentials::new(Arc::clone(&store), ID),
                    at,
                    reached: AtomicBool::new(false),
                });
                let c = Arc::new(client(&mock, dir.path(), crashing.clone()));
                let task = tokio::spawn({
                    let c = Arc::clone(&c);
                    async move { c.access_token().await }
                });
                until("the crash point", || {
                    crashing.reached.load(Ordering::SeqCst)
                })
                .await;
                task.abort();
                assert!(task.await.unwrap_err().is_cancelled());
                let expect = if at == CrashAt::BeforeSave {
                    rt0.clone()
                } else {
                    mock.current_refresh_token(&rt0).unwrap()
                };
                assert_eq!(stored_refresh_token(&store), expect, "{at:?}");
            }
        }
    }
    let store = open(dir.path()).await;
    let c = client(&mock, dir.path(), creds(&store));
    with_timeout(call_api(&c, &mock.api_url()))
        .await
        .unwrap_or_else(|e| panic!("{at:?}: {e}"));
    let stored = stored_refresh_token(&store);
    assert_eq!(
        mock.current_refresh_token(&rt0).as_deref(),
        Some(stored.as_str()),
        "{at:?}: the store holds the current refresh token"
    );
    // Nothing hangs on the grace period: past it, the stored token works.
    mock.advance(grace + Duration::from_secs(60) + rotation_age);
    mock.expire_access_tokens();
    with_timeout(call_api(&c, &mock.api_url()))
        .await
        .unwrap_or_else(|e| panic!("{at:?} after the grace: {e}"));
    assert_eq!(mock.stats().invalid_grant, 0, "{at:?}");
    assert!(mock.stats().refresh_requests > before, "{at:?}");
}

#[tokio::test]
async fn a_crash_at_each_step_of_a_refresh_loses_nothing_xero() {
    for at in [
        CrashAt::BeforeRequest,
        CrashAt::AnswerLost,
        CrashAt::BeforeSave,
        CrashAt::AfterSave,
    ] {
        crash_then_restart(TokenPolicy::xero(), at).await;
    }
}

#[tokio::test]
async fn a_crash_at_each_step_of_a_refresh_loses_nothing_intuit() {
    for at in [
        CrashAt::BeforeRequest,
        CrashAt::AnswerLost,
        CrashAt::BeforeSave,
        CrashAt::AfterSave,
    ] {
        crash_then_restart(TokenPolicy::intuit(), at).await;
    }
}

/// Two crashes in a row inside the grace period (the answer lost, then the
/// process killed before its save) still recover with the stored token.
#[tokio::test]
async fn repeated_crashes_within_the_grace_still_recover() {
    let mock = MockTokenServer::start(TokenPolicy::xero()).await;
    let dir = tempfile::tempdir().unwrap();
    let rt0 = mock.issue_refresh_token();
    let store = open(dir.path()).await;
    connect(&store, &rt0).await;
    mock.lose_next_answers(2);
    for _ in 0..2 {
        let c = client(&mock, dir.path(), creds(&store));
        assert!(c.access_token().await.unwrap_err().is_retryable());
        mock.advance(Duration::from_secs(60));
    }
    let c = client(&mock, dir.path(), creds(&store));
    call_api(&c, &mock.api_url()).await.unwrap();
    assert_eq!(mock.stats().refreshed, 3);
    let stored = stored_refresh_token(&store);
    assert_eq!(
        mock.current_refresh_token(&rt0).as_deref(),
        Some(stored.as_str())
    );
}

/// The limit of any client: an answer lost and no retry before the grace
/// ends cannot be recovered; the connector asks for a reconnect instead of
/// retrying forever.
#[tokio::test]
async fn an_answer_lost_past_the_grace_asks_for_a_reconnect() {
    let mock = MockTokenServer::start(TokenPolicy::xero()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    connect(&store, &mock.issue_refresh_token()).await;
    mock.lose_next_answers(1);
    let c = client(&mock, dir.path(), creds(&store));
    assert!(c.access_token().await.is_err());
    mock.advance(Duration::from_secs(31 * 60));
    match c.access_token().await {
        Err(ConnectorError::NeedsReconnect { reason, command }) => {
            assert!(reason.contains("invalid_grant"), "{reason}");
            assert!(
                command.starts_with("erpsync connect acme --refresh-token-file"),
                "{command}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn concurrent_401s_cause_one_refresh() {
    let mock = MockTokenServer::start(TokenPolicy::xero()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    connect(&store, &mock.issue_refresh_token()).await;
    let c = Arc::new(client(&mock, dir.path(), creds(&store)));
    call_api(&c, &mock.api_url()).await.unwrap();
    let before = mock.stats();
    assert_eq!(before.refresh_requests, 1);
    // Every access token expires; the refresh is held until all callers
    // have been refused.
    mock.expire_access_tokens();
    mock.hold_refreshes();
    const N: u64 = 8;
    let url = mock.api_url();
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (c, url) = (Arc::clone(&c), url.clone());
            tokio::spawn(async move { call_api(&c, &url).await })
        })
        .collect();
    until("every caller refused", || {
        let s = mock.stats();
        s.api_unauthorized - before.api_unauthorized == N && s.refresh_requests == 2
    })
    .await;
    mock.release_refreshes();
    for t in tasks {
        with_timeout(t).await.unwrap().unwrap();
    }
    let after = mock.stats();
    assert_eq!(after.refresh_requests, 2, "one refresh for {N} refusals");
    assert_eq!(after.api_requests - before.api_requests, 2 * N);
    assert_eq!(c.refresh_count(), 2);
}

#[tokio::test]
async fn access_tokens_are_refreshed_shortly_before_they_expire() {
    let mut policy = TokenPolicy::xero();
    // Shorter than the smallest margin (10 s): always due.
    policy.access_ttl = Duration::from_secs(5);
    let mock = MockTokenServer::start(policy).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    connect(&store, &mock.issue_refresh_token()).await;
    let c = client(&mock, dir.path(), creds(&store));
    for n in 1..=3 {
        call_api(&c, &mock.api_url()).await.unwrap();
        assert_eq!(mock.stats().refresh_requests, n);
    }
    assert_eq!(
        mock.stats().api_unauthorized,
        0,
        "refreshed before the API refused"
    );

    let mock = MockTokenServer::start(TokenPolicy::xero()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    connect(&store, &mock.issue_refresh_token()).await;
    let c = client(&mock, dir.path(), creds(&store));
    for _ in 0..3 {
        call_api(&c, &mock.api_url()).await.unwrap();
    }
    assert_eq!(
        mock.stats().refresh_requests,
        1,
        "a 30-minute token is reused"
    );
}

#[tokio::test]
async fn invalid_grant_needs_reconnect_without_a_retry_storm_then_connect_recovers() {
    let mock = MockTokenServer::start(TokenPolicy::intuit()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert!(matches!(
        client(&mock, dir.path(), creds(&store)).access_token().await,
        Err(ConnectorError::NeedsReconnect { ref reason, .. }) if reason.contains("no refresh token stored")
    ));
    assert_eq!(mock.stats().refresh_requests, 0);
    connect(&store, &mock.issue_refresh_token()).await;
    let c = client(&mock, dir.path(), creds(&store));
    call_api(&c, &mock.api_url()).await.unwrap();
    // The user disconnects the app in the ERP.
    mock.revoke_all();
    let e = call_api(&c, &mock.api_url()).await.unwrap_err();
    let ConnectorError::NeedsReconnect { reason, command } = &e else {
        panic!("{e:?}")
    };
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert_eq!(
        command.as_str(),
        format!(
            "erpsync connect acme --refresh-token-file <FILE> --config {}",
            dir.path().join("erpsync.toml").display()
        )
    );
    assert!(!e.is_retryable());
    assert_eq!(c.status().state, "needs_reconnect");
    let refreshes = mock.stats().refresh_requests;
    for _ in 0..20 {
        assert!(matches!(
            call_api(&c, &mock.api_url()).await,
            Err(ConnectorError::NeedsReconnect { .. })
        ));
    }
    assert_eq!(mock.stats().refresh_requests, refreshes, "no retry storm");
    // Errors never carry a token.
    for t in mock.issued_tokens() {
        assert!(!e.to_string().contains(&t));
    }
    // `erpsync connect` with a new grant: the same running client recovers.
    connect(&store, &mock.issue_refresh_token()).await;
    call_api(&c, &mock.api_url()).await.unwrap();
    assert_eq!(c.status().state, "connected");
    assert_eq!(mock.stats().refresh_requests, refreshes + 1);
}

#[tokio::test]
async fn token_endpoint_failures_map_to_budget_decisions() {
    let mock = MockTokenServer::start(TokenPolicy::xero()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    connect(&store, &mock.issue_refresh_token()).await;
    let c = client(&mock, dir.path(), creds(&store));
    mock.fail_next(&[503, 429]);
    let e = c.access_token().await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::Server { status: 503, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    let e = c.access_token().await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(1)),
        "{e:?}"
    );
    c.access_token().await.unwrap();
    // A wrong client secret is a configuration problem, not a reconnect.
    std::fs::write(dir.path().join("client_secret"), "wrong\n").unwrap();
    let opts: OAuthOptions = toml::from_str(&format!(
        "token_url = \"{}\"\nclient_id_file = \"client_id\"\nclient_secret_file = \"client_secret\"\n",
        mock.token_url()
    ))
    .unwrap();
    let cx = BuildContext {
        id: ID.into(),
        base_dir: dir.path().to_path_buf(),
        config_file: dir.path().join("erpsync.toml"),
        budget: Budget::new(Limits::default()),
        credentials: creds(&store),
    };
    let wrong = opts.client(None, &cx).unwrap();
    mock.expire_access_tokens();
    let e = call_api(&wrong, &mock.api_url()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth(m) if m.contains("invalid_client")),
        "{e:?}"
    );
    assert!(!e.to_string().contains("wrong"));
}
