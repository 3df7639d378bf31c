//! The real `erpsync` binary with a Xero connector against the mock Xero:
//! `erpsync connect`, refresh-token rotation across restarts and kill -9
//! (during a refresh, and after a refresh whose answer was lost), a kill -9
//! in the middle of a pass, and config errors named at their line.

use std::time::Duration;

use erpsync::store::Store;

use crate::platform::{cli, wait_connector};
use crate::support::{free_port, Daemon, Setup};
use crate::xero::{assert_same, write_config, Settings};
use crate::xero_mock::{BackgroundXero, Fault, MockConfig, MockXero};

fn setup(mock: &BackgroundXero, s: &Settings) -> Setup {
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
        pg: None,
    };
    write_config(mock, setup.dir.path(), setup.port, s);
    setup
}

fn connect(setup: &Setup, mock: &BackgroundXero) {
    let file = setup.dir.path().join("refresh-token");
    std::fs::write(&file, format!("{}\n", mock.oauth().issue_refresh_token())).unwrap();
    let (code, out, err) = cli(
        setup,
        &[
            "connect",
            "xero",
            "--refresh-token-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

fn store_matches(setup: &Setup, mock: &BackgroundXero) {
    let store = Store::open(&setup.dir.path().join("state")).unwrap();
    assert_same(&store, &mock.snapshot());
}

/// Asks the running daemon for a pass and waits until it ran.
fn sync(setup: &Setup, d: &Daemon) -> serde_json::Value {
    let before = d.client.get("/status")["connectors"][0]["passes"]
        .as_u64()
        .unwrap();
    let (code, out, err) = cli(setup, &["sync", "xero"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_connector(d, "a pass", |c| {
        c["passes"].as_u64() > Some(before) && c["state"] != "syncing"
    })
}

#[test]
fn refresh_token_rotation_survives_restarts_and_kill_9_during_a_refresh() {
    let mock = MockXero::start_in_background(MockConfig::default());
    let setup = setup(&mock, &Settings::default());
    connect(&setup, &mock);
    let d = setup.start();
    let c = d.wait_passes(1)["connectors"][0].clone();
    assert_eq!(c["state"], "idle", "{c}");
    assert_eq!(c["auth"]["state"], "connected");
    assert_eq!(mock.oauth().stats().refreshed, 1);

    // kill -9 while a refresh is in flight: Xero has the request, the
    // daemon dies before any answer.
    mock.oauth().hold_refreshes();
    mock.oauth().expire_access_tokens();
    let held = mock.oauth().stats().refresh_requests;
    let (code, _, err) = cli(&setup, &["sync", "xero"]);
    assert_eq!(code, 0, "{err}");
    wait_until("the refresh request", || {
        mock.oauth().stats().refresh_requests > held
    });
    d.kill9();
    // Whether Xero still processes it (the refresh token rotates, nobody
    // gets the answer) or drops it, the restart below must succeed.
    mock.oauth().release_refreshes();
    mock.edit_invoice(&mock.snapshot().invoices[0].id.clone(), |i| {
        i.amount_due = rust_decimal::Decimal::new(4242, 2)
    });

    // Restart: the stored (now superseded) refresh token is still inside
    // Xero's 30-minute grace, so the refresh succeeds and rotates again.
    let d = setup.start();
    let c = d.wait_passes(1)["connectors"][0].clone();
    assert_eq!(c["state"], "idle", "{c}");
    assert_eq!(mock.oauth().stats().invalid_grant, 0);
    assert!(d.terminate().0.success());
    store_matches(&setup, &mock);

    // A refresh whose answer is lost, then kill -9 before a retry gets
    // through: the store still holds the previous refresh token.
    mock.oauth().lose_next_answers(1_000);
    mock.oauth().expire_access_tokens();
    let d = setup.start();
    let before = mock.oauth().stats().refreshed;
    wait_until("a lost refresh", || mock.oauth().stats().refreshed > before);
    d.kill9();
    mock.oauth().lose_next_answers(0);
    // Ten minutes later (within the grace) the daemon comes back.
    mock.oauth().advance(Duration::from_secs(600));
    let d = setup.start();
    let c = d.wait_passes(1)["connectors"][0].clone();
    assert_eq!(c["state"], "idle", "{c}");
    assert_eq!(c["auth"]["state"], "connected");
    assert_eq!(mock.oauth().stats().invalid_grant, 0);
    // A plain restart uses the stored access token: no refresh.
    let refreshed = mock.oauth().stats().refreshed;
    assert!(d.terminate().0.success());
    let d = setup.start();
    d.wait_passes(1);
    assert_eq!(mock.oauth().stats().refreshed, refreshed);
    let log = d.log();
    let status = d.client.get("/status").to_string();
    for t in mock.oauth().issued_tokens() {
        assert!(!log.contains(&t), "a token in the log");
        assert!(!status.contains(&t), "a token in /status");
    }
    assert!(d.terminate().0.success());
    store_matches(&setup, &mock);

    // Down for longer than the grace right after a lost answer: the refresh
    // token is refused, once; the daemon says how to reconnect.
    mock.oauth().lose_next_answers(1_000);
    mock.oauth().expire_access_tokens();
    let d = setup.start();
    let before = mock.oauth().stats().refreshed;
    wait_until("a lost refresh", || mock.oauth().stats().refreshed > before);
    d.kill9();
    mock.oauth().lose_next_answers(0);
    mock.oauth().advance(Duration::from_secs(31 * 60));
    let d = setup.start();
    let c = wait_connector(&d, "needs_reconnect", |c| c["state"] == "needs_reconnect");
    assert!(
        c["reconnect"]["command"]
            .as_str()
            .unwrap()
            .starts_with("erpsync connect xero --refresh-token-file <FILE>"),
        "{c}"
    );
    let refused = mock.oauth().stats().invalid_grant;
    assert_eq!(refused, 1);
    sync(&setup, &d);
    assert_eq!(
        mock.oauth().stats().invalid_grant,
        refused,
        "no retry storm"
    );
    // Reconnecting with a new grant recovers without a restart.
    let file = setup.dir.path().join("refresh-token");
    std::fs::write(&file, mock.oauth().issue_refresh_token()).unwrap();
    let (code, out, err) = cli(
        &setup,
        &[
            "connect",
            "xero",
            "--refresh-token-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_connector(&d, "recovered", |c| c["state"] == "idle");
    assert!(d.terminate().0.success());
    store_matches(&setup, &mock);
}

#[test]
fn a_kill_9_in_the_middle_of_a_pass_converges_after_restart() {
    let mock = MockXero::start_in_background(MockConfig::default());
    let s = Settings {
        page_size: 50,
        ..Settings::default()
    };
    let setup = setup(&mock, &s);
    connect(&setup, &mock);
    // The fifth invoices page is slow: the daemon is killed while it waits.
    for _ in 0..4 {
        mock.push_fault(Some("Invoices"), Fault::Slow(Duration::ZERO));
    }
    mock.push_fault(Some("Invoices"), Fault::Slow(Duration::from_secs(30)));
    let d = setup.start();
    wait_until("the slow page", || mock.pending_faults() == 0);
    d.kill9();
    let d = setup.start();
    let c = d.wait_passes(1)["connectors"][0].clone();
    assert_eq!(c["state"], "idle", "{c}");
    assert!(d.terminate().0.success());
    store_matches(&setup, &mock);
}

#[test]
fn xero_options_are_checked_at_their_line() {
    let mock = MockXero::start_in_background(MockConfig::default());
    let setup = setup(&mock, &Settings::default());
    let good = std::fs::read_to_string(setup.config_path()).unwrap();
    let (code, out, err) = cli(&setup, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    let text = good
        .replace(
            &format!("tenant_id = \"{}\"", mock.tenant_id()),
            "tenant_id = \"Demo Company (NZ)\"",
        )
        .replace("page_size = 500", "page_size = 5000\npage_sise = 5");
    setup.write_config(&text);
    let line = |key: &str| text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    let (code, _, err) = cli(&setup, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!(
            "erpsync.toml:{}: key `connectors[0].xero.page_sise`: unknown field `page_sise`",
            line("page_sise")
        )),
        "{err}"
    );
    // Fixed the typo: the meaning problems, every one at its line.
    let text = text.replace("page_sise = 5\n", "");
    setup.write_config(&text);
    let (code, _, err) = cli(&setup, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!(
            "erpsync.toml:{}: key `connectors[0].xero.tenant_id`: `Demo Company (NZ)` is not a Xero tenant id",
            line("tenant_id")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "erpsync.toml:{}: key `connectors[0].xero.page_size`: 5000 is out of range; use 1..=1000",
            line("page_size")
        )),
        "{err}"
    );
    // The daemon refuses to start on it, and the state is untouched.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(!setup.dir.path().join("state").exists());
    // A native exclusion the kind does not know.
    setup.write_config(&good.replace(
        "poll_interval = \"1h\"",
        "poll_interval = \"1h\"\nnative_exclusions = [\"archived\", \"inactive\"]",
    ));
    let (code, _, err) = cli(&setup, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("inactive"), "{err}");
    assert!(
        err.contains("archived") && err.contains("gdpr_request"),
        "{err}"
    );
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
