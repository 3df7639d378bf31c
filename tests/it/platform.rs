//! The connector platform end to end: sync now (API and CLI), a daily quota
//! that parks the connector and resumes at the reset, and an OAuth connector
//! (the demo with `[connectors.demo.oauth]`) against the mock token server:
//! `erpsync connect` with the daemon stopped and running, `needs_reconnect`
//! after a refused refresh token, recovery.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::oauth_mock::{MockTokenServer, TokenPolicy};
use crate::support::{small_demo, Daemon, InProcess, Setup};

/// Runs the CLI with the setup's config; (exit code, stdout, stderr).
pub fn cli(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(args)
        .arg("--config")
        .arg(setup.config_path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `/status` until `f` holds for the first connector; returns it.
pub fn wait_connector(d: &Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = d.client.get("/status");
        let c = s["connectors"][0].clone();
        if f(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within 90 s: {c:#}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_starts_a_pass_or_says_one_is_running() {
    let opts = erpsync::connectors::demo::DemoOptions {
        latency_ms: 200,
        ..small_demo()
    };
    let d = InProcess::start(&opts, "1h", "").await;
    d.wait_passes(1).await;
    let h = &d.app.connectors[0];
    let passes = h.status().passes;
    let (st, v) = d.call("POST", "/api/v1/connectors/demo/sync", None).await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v, json!({"started": true, "connector": "demo"}));
    // Requested or running: a second request is refused, not queued.
    let (st, v) = d.call("POST", "/api/v1/connectors/demo/sync", None).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], "a sync pass is already running");
    assert_eq!(v["running"], true);
    d.wait_passes(passes + 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.status().state != erpsync::app::WorkerState::Idle {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.status().passes, passes + 1, "exactly one pass more");
    let (st, _) = d.call("POST", "/api/v1/connectors/demo/sync", None).await;
    assert_eq!(st, 202);
    d.wait_passes(passes + 2).await;
    // Unknown connector, wrong method: JSON errors.
    let (st, v) = d.call("POST", "/api/v1/connectors/nope/sync", None).await;
    assert_eq!(st, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown connector `nope`"),
        "{v}"
    );
    let (st, v) = d.call("GET", "/api/v1/connectors/demo/sync", None).await;
    assert_eq!(st, 405, "{v}");
    // A connector without OAuth has no refresh token to load.
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/connectors/demo/connect",
            Some(json!({"refresh_token": "rt-1"})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("does not use OAuth 2.0"),
        "{v}"
    );
    assert!(!v.to_string().contains("rt-1"));
    d.stop().await;
}

#[test]
fn erpsync_sync_asks_the_running_daemon() {
    let setup = Setup::demo(&small_demo(), "1h", "");
    let d = setup.start();
    d.wait_passes(1);
    let (code, out, err) = cli(&setup, &["sync", "demo"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sync pass of demo started"), "{out}");
    d.wait_passes(2);
    let (code, _, err) = cli(&setup, &["sync", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown connector `nope`"), "{err}");
    assert!(d.terminate().0.success());
    let (code, _, err) = cli(&setup, &["sync", "demo"]);
    assert_ne!(code, 0);
    assert!(err.contains("is the daemon running?"), "{err}");
}

/// The simulated ERP allows 4 requests per 10 s; a pass needs 3. The second
/// pass is refused on its second request with a Retry-After longer than
/// `max_retry_wait`: the connector parks (`quota_exhausted`, `resumes_at`),
/// sends nothing more, refuses sync-now, and finishes its work after the
/// reset with no early retry.
#[test]
fn a_daily_quota_parks_the_connector_and_resumes_at_the_reset() {
    let opts = erpsync::connectors::demo::DemoOptions {
        customers: 40,
        invoices: 120,
        transactions: 60,
        page_size: 1000,
        ..small_demo()
    };
    let setup = Setup::demo(&opts, "1h", "daily_quota = 4\nquota_window = \"10s\"\n");
    let cfg = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            "max_concurrency = 4 }",
            "max_concurrency = 1, max_retry_wait = \"1s\" }",
        );
    setup.write_config(&cfg);
    let d = setup.start();
    let first = d.wait_passes(1);
    assert_eq!(first["connectors"][0]["state"], "idle");
    assert_eq!(first["connectors"][0]["requests"]["poll_requests"], 3);
    assert_eq!(first["connectors"][0]["requests"]["erp_daily_remaining"], 1);
    let (code, out, err) = cli(&setup, &["sync", "demo"]);
    assert_eq!(code, 0, "{out}{err}");
    let parked = wait_connector(&d, "parked", |c| c["state"] == "quota_exhausted");
    let resumes_at: chrono::DateTime<chrono::Utc> =
        parked["resumes_at"].as_str().unwrap().parse().unwrap();
    assert!(resumes_at > chrono::Utc::now() - chrono::TimeDelta::seconds(1));
    assert_eq!(parked["requests"]["parked_until"], parked["resumes_at"]);
    assert!(
        parked["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily request quota used up"),
        "{parked}"
    );
    // While parked: sync-now is refused with the time it resumes.
    let (code, _, err) = cli(&setup, &["sync", "demo"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("409") && err.contains("requests resume at"),
        "{err}"
    );
    let (st, v) = d.client.call("POST", "/api/v1/connectors/demo/sync", None);
    assert_eq!(st, 409);
    assert_eq!(v["resumes_at"], parked["resumes_at"]);
    // After the reset the pass resumes on its own and finishes.
    let done = wait_connector(&d, "resumed", |c| {
        c["passes"].as_u64() == Some(3) && c["state"] == "idle"
    });
    assert!(chrono::Utc::now() >= resumes_at);
    assert_eq!(
        done["requests"]["rate_limited"], 1,
        "one refusal, no early retry"
    );
    // 3, then 2 (the second refused), then a whole pass of 3.
    assert_eq!(done["requests"]["poll_requests"], 8, "{done}");
    let invoices = |k: &str| done["counters"][k].as_u64().unwrap_or(0);
    assert_eq!(
        invoices("synced_invoices") + invoices("dropped_invoices"),
        120
    );
    assert!(d.terminate().0.success());
}

/// The demo connector with OAuth, against the mock token server.
fn oauth_setup(mock: &MockTokenServer) -> Setup {
    let opts = erpsync::connectors::demo::DemoOptions {
        customers: 40,
        invoices: 100,
        transactions: 50,
        page_size: 1000,
        ..small_demo()
    };
    let setup = Setup::demo(
        &opts,
        "1h",
        &format!(
            "[connectors.demo.oauth]\ntoken_url = \"{}\"\nclient_id_file = \"client_id\"\nclient_secret_file = \"client_secret\"\n",
            mock.token_url()
        ),
    );
    mock.write_client_files(setup.dir.path());
    setup
}

#[test]
fn oauth_connect_with_the_daemon_stopped_or_running_and_recovery_from_needs_reconnect() {
    let mut policy = TokenPolicy::xero();
    // Shorter than any refresh margin: every request refreshes, so a
    // revoked grant shows at the next request.
    policy.access_ttl = Duration::from_secs(5);
    let mock = MockTokenServer::start_in_background(policy);
    let setup = oauth_setup(&mock);
    let token_file = setup.dir.path().join("refresh-token");
    let config = setup.config_path();

    // Never connected: the daemon starts and says what to run.
    let d = setup.start();
    let c = wait_connector(&d, "needs_reconnect", |c| c["state"] == "needs_reconnect");
    assert_eq!(c["reconnect"]["reason"], "no refresh token stored yet");
    assert_eq!(
        c["reconnect"]["command"],
        format!(
            "erpsync connect demo --refresh-token-file <FILE> --config {}",
            config.display()
        )
    );
    assert_eq!(c["auth"]["state"], "needs_reconnect");
    assert_eq!(mock.stats().refresh_requests, 0);
    assert!(d.terminate().0.success());

    // Stopped: `connect` writes the store.
    std::fs::write(&token_file, format!("{}\n", mock.issue_refresh_token())).unwrap();
    let (code, out, err) = cli(
        &setup,
        &[
            "connect",
            "demo",
            "--refresh-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the daemon is not running"), "{out}");
    let d = setup.start();
    let c = d.wait_passes(1)["connectors"][0].clone();
    assert_eq!(c["state"], "idle", "{c}");
    assert_eq!(c["auth"]["state"], "connected");
    assert_eq!(c["counters"]["synced_invoices"], 100);
    assert!(mock.stats().refreshed >= 3, "{:?}", mock.stats());

    // The user disconnects the app: the next pass needs a reconnect, and
    // further passes do not hammer the token endpoint.
    mock.revoke_all();
    assert_eq!(cli(&setup, &["sync", "demo"]).0, 0);
    let c = wait_connector(&d, "needs_reconnect", |c| c["state"] == "needs_reconnect");
    assert!(
        c["reconnect"]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{c}"
    );
    let refused = mock.stats().refresh_requests;
    for n in 3..6 {
        assert_eq!(cli(&setup, &["sync", "demo"]).0, 0);
        wait_connector(&d, "another pass", |c| c["passes"].as_u64() >= Some(n));
    }
    assert_eq!(mock.stats().refresh_requests, refused, "no retry storm");

    // Running: `connect` goes through the API and the connector recovers.
    std::fs::write(&token_file, mock.issue_refresh_token()).unwrap();
    let (code, out, err) = cli(
        &setup,
        &[
            "connect",
            "demo",
            "--refresh-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("loaded into the running daemon"), "{out}");
    let c = wait_connector(&d, "recovered", |c| c["state"] == "idle");
    assert_eq!(c["auth"]["state"], "connected");
    assert!(c.get("reconnect").is_none(), "{c}");

    // No token in the log, in /status or in the CLI's output.
    let status = d.client.get("/status").to_string();
    let log = d.log();
    for t in mock.issued_tokens() {
        assert!(!log.contains(&t), "a token in the log");
        assert!(!status.contains(&t), "a token in /status");
        assert!(!out.contains(&t) && !err.contains(&t));
    }
    assert!(d.terminate().0.success());

    // `connect` checks what it is given.
    std::fs::write(&token_file, "two words\n").unwrap();
    let (code, _, err) = cli(
        &setup,
        &[
            "connect",
            "demo",
            "--refresh-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("spaces"), "{err}");
    assert!(!err.contains("two words"));
    let (code, _, err) = cli(
        &setup,
        &[
            "connect",
            "nope",
            "--refresh-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown connector `nope`"), "{err}");
    let (code, _, err) = cli(
        &setup,
        &[
            "connect",
            "demo",
            "--refresh-token-file",
            "/nonexistent/file",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/file does not exist"), "{err}");
}

#[test]
fn oauth_options_are_checked_at_their_own_line() {
    let mock = MockTokenServer::start_in_background(TokenPolicy::intuit());
    let setup = oauth_setup(&mock);
    let cfg = std::fs::read_to_string(setup.config_path()).unwrap();
    let cfg = cfg.replace(
        "client_secret_file = \"client_secret\"\n",
        "client_secret_file = \"client_secret\"\nclient_sekret = \"x\"\n",
    );
    setup.write_config(&cfg);
    let line = cfg
        .lines()
        .position(|l| l.starts_with("client_sekret"))
        .unwrap()
        + 1;
    let (code, _, err) = cli(&setup, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!(
            "erpsync.toml:{line}: key `connectors[0].demo.oauth.client_sekret`"
        )),
        "{err}"
    );
    let cfg = cfg.replace("client_sekret = \"x\"\n", "").replace(
        "client_id_file = \"client_id\"",
        "client_id_file = \"missing\"",
    );
    setup.write_config(&cfg);
    let (code, _, err) = cli(&setup, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("key `connectors[0].demo.oauth.client_id_file`")
            && err.contains("missing does not exist"),
        "{err}"
    );
}
