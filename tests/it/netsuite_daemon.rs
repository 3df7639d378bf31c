//! The real `erpsync` binary against the mock NetSuite: native exclusions
//! keep inactive and intercompany customers' transactions out of the store,
//! and a wrong secret shows as a clear auth error in /status after a single
//! request (no retry storm).

use std::collections::BTreeMap;
use std::path::Path;

use erpsync::model::{CustomerKey, Record};
use erpsync::store::Store;

use crate::netsuite_mock::{MockConfig, MockNetsuite};
use crate::support::{free_port, Daemon, TOKEN};

pub(crate) fn write_config(
    mock: &MockNetsuite,
    dir: &Path,
    port: u16,
    token_secret: &str,
) -> std::path::PathBuf {
    let c = &mock.config().credentials;
    for (file, value) in [
        ("consumer_key", c.consumer_key.as_str()),
        ("consumer_secret", c.consumer_secret.as_str()),
        ("token_id", c.token_id.as_str()),
        ("token_secret", token_secret),
    ] {
        std::fs::write(dir.join(file), format!("{value}\n")).unwrap();
    }
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let offset = mock.config().utc_offset_minutes;
    let tz = format!(
        "{}{:02}:{:02}",
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 60,
        offset.abs() % 60
    );
    let text = format!(
        r#"[daemon]
state_dir = "state"
[http]
listen = "127.0.0.1:{port}"
admin_token_file = "token"
[[connectors]]
id = "ns"
kind = "netsuite"
poll_interval = "1h"
rate_limit = {{ requests_per_second = 200, burst = 50, max_concurrency = 3 }}
[connectors.netsuite]
account_id = "{account}"
base_url = "{base}"
timezone = "{tz}"
consumer_key_file = "consumer_key"
consumer_secret_file = "consumer_secret"
token_id_file = "token_id"
token_secret_file = "token_secret"
page_size = 250
"#,
        account = mock.config().account_id,
        base = mock.base_url(),
    );
    let p = dir.join("erpsync.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_exclusions_keep_inactive_and_intercompany_data_out() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        &mock,
        dir.path(),
        port,
        &mock.config().credentials.token_secret.clone(),
    );
    let status = tokio::task::spawn_blocking(move || {
        let d = Daemon::spawn(&cfg, format!("http://127.0.0.1:{port}"));
        let s = d.wait_passes(1);
        assert!(d.terminate().0.success());
        s
    })
    .await
    .unwrap();
    let c = &status["connectors"][0];
    assert_eq!(c["last_error"], serde_json::Value::Null, "{c:#}");

    // Which customers the mock marks inactive or intercompany.
    let inactive = mock.column("customer", None, "isinactive");
    let ic = mock.column("customer", None, &mock.config().intercompany_column.clone());
    let flagged: BTreeMap<u64, &'static str> = inactive
        .iter()
        .filter_map(|(id, v)| {
            if v.as_deref() == Some("T") {
                Some((*id, "native:inactive"))
            } else if ic.get(id).cloned().flatten().is_some() {
                Some((*id, "native:intercompany"))
            } else {
                None
            }
        })
        .collect();
    assert!(flagged.values().any(|r| *r == "native:inactive"));
    assert!(flagged.values().any(|r| *r == "native:intercompany"));
    let t = mock.totals();
    assert_eq!(status["customers"]["total"], t.customers as u64);
    assert_eq!(status["customers"]["excluded"], flagged.len() as u64);

    let store = Store::open(&dir.path().join("state")).unwrap();
    for (id, reason) in &flagged {
        let key = CustomerKey::new("ns", id.to_string());
        let sc = store
            .customer(&key)
            .unwrap()
            .expect("excluded customer keeps its record");
        assert_eq!(sc.classification.reason, *reason);
        assert!(
            store.records_of(&key).unwrap().is_empty(),
            "customer {id} has records"
        );
    }
    // Every transaction of an included customer is stored, once.
    let entity = mock.column("transaction", None, "entity");
    let ty = mock.column("transaction", None, "type");
    let expected: usize = entity
        .iter()
        .filter(|(id, cust)| {
            matches!(
                ty[id].as_deref(),
                Some("CustInvc" | "CustPymt" | "CustCred")
            ) && !flagged.contains_key(&cust.as_deref().unwrap().parse::<u64>().unwrap())
        })
        .count();
    let stored: Vec<Record> = store.records(Some("ns")).map(|r| r.unwrap().1).collect();
    assert_eq!(stored.len(), expected);
    let dropped = c["counters"]["dropped_invoices"].as_u64().unwrap()
        + c["counters"]["dropped_transactions"].as_u64().unwrap();
    assert!(dropped > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_clear_auth_error_without_retry_storm() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(&mock, dir.path(), port, "not-the-secret");
    let status = tokio::task::spawn_blocking(move || {
        let d = Daemon::spawn(&cfg, format!("http://127.0.0.1:{port}"));
        let s = d.wait_passes(1);
        let log = d.log();
        assert!(!log.contains("not-the-secret"), "secret in log");
        assert!(d.terminate().0.success());
        s
    })
    .await
    .unwrap();
    let c = &status["connectors"][0];
    assert_eq!(c["state"], "failing");
    let msg = c["last_error"]["message"].as_str().unwrap();
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains("INVALID_LOGIN"), "{msg}");
    assert!(!msg.contains("not-the-secret"));
    // The first request of a pass goes alone: refused, nothing else is sent.
    assert_eq!(mock.stats().requests, 1, "exactly one request, no retries");
    assert_eq!(c["requests"]["retries"], 0);
}
