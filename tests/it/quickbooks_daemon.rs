//! The real `erpsync` binary against the mock QuickBooks: inactive
//! customers are excluded natively with none of their invoices or
//! transactions stored, and refresh-token rotation survives restarts and
//! kill -9 at each step of a refresh without ever locking the account out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use erpsync::connectors::oauth;
use erpsync::model::{CustomerKey, Record};
use erpsync::store::Store;

use crate::quickbooks_mock::{MockConfig, MockQbo};
use crate::support::{free_port, Daemon, TOKEN};

fn write_config(mock: &MockQbo, dir: &Path, port: u16) -> PathBuf {
    mock.tokens.write_client_files(dir);
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let text = format!(
        r#"[daemon]
state_dir = "state"
[http]
listen = "127.0.0.1:{port}"
admin_token_file = "token"
[[connectors]]
id = "qbo"
kind = "quickbooks"
poll_interval = "1h"
[connectors.quickbooks]
realm_id = "{realm}"
api_base_url = "{api}"
page_size = 200
[connectors.quickbooks.oauth]
token_url = "{token}"
client_id_file = "client_id"
client_secret_file = "client_secret"
"#,
        realm = mock.config().realm_id,
        api = mock.base_url(),
        token = mock.token_url(),
    );
    let p = dir.join("erpsync.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `erpsync connect qbo --refresh-token-file F` with the daemon stopped.
fn connect(config: &Path, refresh_token: &str) {
    let file = config.with_file_name("refresh-token");
    std::fs::write(&file, format!("{refresh_token}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["connect", "qbo", "--refresh-token-file"])
        .arg(&file)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(refresh_token), "the token is echoed: {text}");
}

fn stored_refresh_token(dir: &Path) -> String {
    let store = Store::open(&dir.join("state")).unwrap();
    let json = store.credential("qbo", oauth::CREDENTIAL).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["refresh_token"].as_str().unwrap().to_string()
}

/// Waits (polling observable state, never a fixed sleep) until `f` holds.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_customers_are_excluded_with_no_records_stored() {
    let mock = Arc::new(
        MockQbo::start(MockConfig {
            customers: 400,
            invoices: 1_200,
            payments: 600,
            credit_memos: 300,
            ..MockConfig::default()
        })
        .await,
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(&mock, dir.path(), port);
    connect(&cfg, &mock.authorize());
    let m = Arc::clone(&mock);
    let (status, deleted) = tokio::task::spawn_blocking(move || {
        let d = Daemon::spawn(&cfg, format!("http://127.0.0.1:{port}"));
        let s = d.wait_passes(1);
        // A month without a sync (past CDC's window), with deletions in it:
        // the next pass verifies the stored invoices through the engine.
        m.advance_clock(Duration::from_secs(31 * 86_400));
        let snap = m.snapshot();
        let deleted: Vec<u64> = snap
            .of_kind(crate::quickbooks_mock::INVOICE)
            .filter(|t| snap.customers[&t.customer].active)
            .take(5)
            .map(|t| t.id)
            .collect();
        for id in &deleted {
            m.delete_txn(*id);
        }
        d.client
            .post("/api/v1/connectors/qbo/sync", &serde_json::json!({}));
        let s2 = d.wait_passes(2);
        let c = &s2["connectors"][0];
        assert_eq!(c["last_error"], serde_json::Value::Null, "{c:#}");
        assert!(
            c["counters"]["verified_invoices"].as_u64().unwrap() > 0,
            "{c:#}"
        );
        assert!(d.terminate().0.success());
        (s, deleted)
    })
    .await
    .unwrap();
    let c = &status["connectors"][0];
    assert_eq!(c["last_error"], serde_json::Value::Null, "{c:#}");
    let snap = mock.snapshot();
    let inactive: Vec<u64> = snap
        .customers
        .values()
        .filter(|c| !c.active)
        .map(|c| c.id)
        .collect();
    assert!(inactive.len() > 5);
    assert_eq!(status["customers"]["total"], snap.customers.len() as u64);
    assert_eq!(status["customers"]["excluded"], inactive.len() as u64);

    let store = Store::open(&dir.path().join("state")).unwrap();
    let snap = mock.snapshot();
    for id in &deleted {
        assert!(!snap.txns.contains_key(id));
    }
    for id in &inactive {
        let key = CustomerKey::new("qbo", id.to_string());
        let sc = store
            .customer(&key)
            .unwrap()
            .expect("an excluded customer keeps its record");
        assert_eq!(sc.classification.reason, "native:inactive");
        assert!(
            store.records_of(&key).unwrap().is_empty(),
            "customer {id} has records"
        );
    }
    // Every invoice, payment and credit memo of an active customer, once.
    let expected = snap
        .txns
        .values()
        .filter(|t| snap.customers[&t.customer].active)
        .count();
    let stored: Vec<Record> = store.records(Some("qbo")).map(|r| r.unwrap().1).collect();
    assert_eq!(stored.len(), expected);
    let dropped = c["counters"]["dropped_invoices"].as_u64().unwrap()
        + c["counters"]["dropped_transactions"].as_u64().unwrap();
    assert_eq!(dropped as usize, snap.txns.len() - expected);
    // Jobs keep their parent.
    let job = snap
        .customers
        .values()
        .find(|c| c.parent.is_some() && c.active)
        .unwrap();
    let sc = store
        .customer(&CustomerKey::new("qbo", job.id.to_string()))
        .unwrap()
        .unwrap();
    assert_eq!(
        sc.customer.custom["parent_id"],
        job.parent.unwrap().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_survives_restarts_and_kill_9_at_each_step() {
    let mock = Arc::new(MockQbo::start(MockConfig::default()).await);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(&mock, dir.path(), port);
    let rt0 = mock.authorize();
    connect(&cfg, &rt0);
    let day = Duration::from_secs(24 * 3600 + 60);
    let m = Arc::clone(&mock);
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let base = format!("http://127.0.0.1:{port}");
        let tokens = &m.tokens;
        // After each kill the daemon is started again at once (as systemd
        // does) and must finish a pass with the token it stored.
        let restart = |step: &str| {
            let daemon = Daemon::spawn(&cfg, base.clone());
            let s = daemon.wait_passes(1);
            let c = &s["connectors"][0];
            assert_eq!(c["last_error"], serde_json::Value::Null, "{step}: {c:#}");
            assert!(daemon.terminate().0.success());
            assert!(
                tokens.refresh_token_valid(&stored_refresh_token(&d)),
                "{step}: the stored refresh token is accepted"
            );
        };

        // 1. Killed while its refresh request waits at the token server.
        tokens.advance(day);
        tokens.hold_refreshes();
        let before = tokens.stats().refresh_requests;
        let daemon = Daemon::spawn(&cfg, base.clone());
        until("a held refresh", || {
            tokens.stats().refresh_requests > before
        });
        daemon.kill9();
        tokens.release_refreshes();
        restart("killed before the answer");

        // 2. Killed after the server rotated but the answer was lost on the
        //    way (the daemon never saw the new refresh token).
        tokens.advance(day);
        m.expire_access_tokens();
        tokens.lose_next_answers(1);
        let before = tokens.stats().refreshed;
        let daemon = Daemon::spawn(&cfg, base.clone());
        until("a lost refresh answer", || {
            tokens.stats().refreshed > before
        });
        daemon.kill9();
        restart("killed after a lost answer");

        // 3. Killed after a refresh was saved and used.
        tokens.advance(day);
        m.expire_access_tokens();
        let before = tokens.stats().refreshed;
        let daemon = Daemon::spawn(&cfg, base.clone());
        until("a refresh", || tokens.stats().refreshed > before);
        daemon.wait_passes(1);
        daemon.kill9();
        restart("killed after a saved refresh");

        // 4. An ordinary restart with a rotation in between.
        tokens.advance(day);
        m.expire_access_tokens();
        let daemon = Daemon::spawn(&cfg, base.clone());
        let s = daemon.wait_passes(1);
        assert_eq!(
            s["connectors"][0]["last_error"],
            serde_json::Value::Null,
            "{s:#}"
        );
        assert!(daemon.terminate().0.success());

        // Every grace period long over: the stored token alone still works.
        tokens.advance(day * 3);
        m.expire_access_tokens();
        let daemon = Daemon::spawn(&cfg, base);
        let s = daemon.wait_passes(1);
        let c = &s["connectors"][0];
        assert_eq!(c["last_error"], serde_json::Value::Null, "{c:#}");
        assert_ne!(c["state"], "needs_reconnect", "{c:#}");
        let log = daemon.log();
        assert!(daemon.terminate().0.success());
        assert_eq!(
            tokens.stats().invalid_grant,
            0,
            "the account was never locked out"
        );
        for t in tokens.issued_tokens() {
            assert!(!log.contains(&t), "a token is in the log");
        }
        assert_eq!(
            tokens.current_refresh_token(&rt0).as_deref(),
            Some(stored_refresh_token(&d).as_str())
        );
    })
    .await
    .unwrap();
    // All data arrived despite the kills.
    let store = Store::open(&dir.path().join("state")).unwrap();
    let snap = mock.snapshot();
    let expected = snap
        .txns
        .values()
        .filter(|t| snap.customers[&t.customer].active)
        .count();
    assert_eq!(store.records(Some("qbo")).count(), expected);
}
