//! The foundation: the real binary syncs the demo ERP end to end, resumes
//! from its cursors, survives SIGKILL mid-sync, stops cleanly on SIGTERM and
//! refuses bad config with precise messages.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use erpsync::connectors::demo::{DemoErp, DemoOptions};
use erpsync::connectors::REGISTRY;
use erpsync::model::{CustomerKey, Record};
use erpsync::rules::RuleSet;
use erpsync::store::Store;
use rust_decimal::Decimal;

use crate::support::on_both_backends;
use crate::support::{small_demo, Backend, Setup};

/// (id, customer, amount) of every record, the parts that do not depend on
/// when the ERP was generated.
fn fingerprint(r: &Record) -> (String, String, Decimal) {
    match r {
        Record::Invoice(i) => (i.external_id.clone(), i.customer_id.clone(), i.amount_due),
        Record::Transaction(t) => (t.external_id.clone(), t.customer_id.clone(), t.amount),
    }
}

/// Asserts the store holds exactly the ERP's data: every customer, and every
/// invoice and transaction of included customers, once; nothing of excluded ones.
pub fn assert_store_equals_erp(state_dir: &Path, opts: &DemoOptions) {
    assert_equals_erp(&Store::open(state_dir).unwrap(), opts)
}

/// [`assert_store_equals_erp`] on an open store (any backend), no rules.
pub fn assert_equals_erp(store: &Store, opts: &DemoOptions) {
    assert_equals_erp_with(store, opts, &RuleSet::default())
}

/// The rules of a config fragment (`[[rules]]` tables).
pub fn rules_of(fragment: &str) -> RuleSet {
    let text = format!("[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n{fragment}");
    erpsync::config::parse(Path::new("/x/erpsync.toml"), &text, &REGISTRY)
        .unwrap()
        .rules
}

/// Like [`assert_equals_erp`] with `rules` in force. Which customers must be
/// excluded is derived from the ERP's data, the rules, the demo's native
/// exclusions and the stored manual decisions, never from the store's own
/// classification, so a consistent misclassification fails too.
pub fn assert_equals_erp_with(store: &Store, opts: &DemoOptions, rules: &RuleSet) {
    let dropped = assert_connector_equals_erp(store, "demo", opts, rules);
    assert!(
        dropped > 0,
        "the demo should have records of excluded customers"
    );
}

/// [`assert_equals_erp_with`] for the demo connector `connector` (one of
/// several); returns how many ERP records belong to excluded customers.
pub fn assert_connector_equals_erp(
    store: &Store,
    connector: &str,
    opts: &DemoOptions,
    rules: &RuleSet,
) -> u64 {
    let erp = DemoErp::new(opts);
    let native = REGISTRY.get("demo").unwrap().native_exclusions();
    let customers: BTreeMap<String, bool> = erp
        .customers()
        .iter()
        .map(|c| {
            let key = CustomerKey::new(connector, &c.external_id);
            let manual = store.manual_decision(&key).unwrap();
            let expected = erpsync::classify::classify(c, manual.as_ref(), rules, native);
            let stored = store
                .customer(&key)
                .unwrap()
                .unwrap_or_else(|| panic!("{connector}: customer {} missing", c.external_id));
            assert_eq!(
                stored.classification.excluded, expected.excluded,
                "customer {} classified {:?}, expected {:?}",
                c.external_id, stored.classification, expected
            );
            (c.external_id.clone(), expected.excluded)
        })
        .collect();
    assert_eq!(
        store.customers(Some(connector), None).count(),
        customers.len(),
        "customer count"
    );
    let mut expected = Vec::new();
    let mut dropped = 0u64;
    for r in erp
        .invoices()
        .into_iter()
        .map(Record::Invoice)
        .chain(erp.transactions().into_iter().map(Record::Transaction))
    {
        match customers.get(r.customer_id()) {
            Some(false) => expected.push(fingerprint(&r)),
            Some(true) => dropped += 1,
            None => panic!("ERP record {} has an unknown customer", r.external_id()),
        }
    }
    let mut stored: Vec<_> = store
        .records(Some(connector))
        .map(|r| fingerprint(&r.unwrap().1))
        .collect();
    expected.sort();
    stored.sort();
    assert_eq!(
        stored.len(),
        expected.len(),
        "record count (no record missing, none twice)"
    );
    assert_eq!(stored, expected);
    for (id, excluded) in &customers {
        if *excluded {
            let recs = store.records_of(&CustomerKey::new(connector, id)).unwrap();
            assert!(
                recs.is_empty(),
                "excluded customer {id} has {} records",
                recs.len()
            );
        }
    }
    dropped
}

fn demo_sync_end_to_end_then_clean_shutdown(backend: Backend) {
    let opts = small_demo();
    let Some(setup) = Setup::demo_on(backend, "daemon::demo_sync_end_to_end", &opts, "1h", "")
    else {
        return;
    };
    let d = setup.start();
    let s = d.wait_passes(1);
    let cust = &s["customers"];
    assert_eq!(cust["total"], 300);
    assert!(
        cust["excluded_by_reason"]["native:inactive"]
            .as_u64()
            .unwrap()
            > 0,
        "{s:#}"
    );
    assert!(
        cust["excluded_by_reason"]["native:intercompany"]
            .as_u64()
            .unwrap()
            > 0,
        "{s:#}"
    );
    let c = &s["connectors"][0];
    assert_eq!(c["state"], "idle");
    assert!(c["counters"]["dropped_invoices"].as_u64().unwrap() > 0);
    assert!(c["last_sync_duration_ms"].is_u64());
    assert_eq!(c["last_error"], serde_json::Value::Null);
    // metrics speak Prometheus text
    let (st, m) = d.client.without_token().call("GET", "/metrics", None);
    assert_eq!(st, 200);
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains("erpsync_customers{connector=\"demo\",state=\"excluded\"}"),
        "{m}"
    );
    assert!(m.contains("erpsync_records_dropped_total{connector=\"demo\",entity=\"invoices\"}"));

    let (status, took) = d.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_equals_erp(&setup.open_store(), &opts);
}

fn restart_resumes_from_stored_cursors(backend: Backend) {
    let opts = small_demo();
    let Some(setup) = Setup::demo_on(backend, "daemon::restart_resumes", &opts, "1h", "") else {
        return;
    };
    let d = setup.start();
    let first = d.wait_passes(1);
    let received = first["connectors"][0]["session"]["invoices"]["received"]
        .as_u64()
        .unwrap();
    assert_eq!(received, 3000);
    assert!(d.terminate().0.success());

    let d = setup.start();
    let second = d.wait_passes(1);
    let c = &second["connectors"][0];
    // Nothing changed upstream: the second start reads nothing again, with
    // one request per entity.
    for e in ["customers", "invoices", "transactions"] {
        assert_eq!(
            c["session"][e]["received"], 0,
            "{e} re-read after restart: {c:#}"
        );
    }
    assert_eq!(c["requests"]["poll_requests"], 3);
    assert!(d.terminate().0.success());
}

fn sigkill_mid_first_sync_then_restart_converges_exactly(backend: Backend) {
    let opts = DemoOptions {
        page_size: 20,
        latency_ms: 15,
        ..small_demo()
    };
    let Some(setup) = Setup::demo_on(backend, "daemon::sigkill_mid_first_sync", &opts, "1h", "")
    else {
        return;
    };
    let d = setup.start();
    // The first pass needs ~265 pages at 15 ms: kill it once invoices are
    // being written, seen in /status (never after a fixed time).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.client.get("/status");
        let c = &s["connectors"][0];
        assert_eq!(
            c["passes"], 0,
            "the first pass ended before it was seen half-way: {c:#}"
        );
        if c["counters"]["synced_invoices"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {c:#}");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill9();

    let d = setup.start();
    d.wait_passes(1);
    assert!(d.terminate().0.success());
    assert_equals_erp(&setup.open_store(), &opts);
}

on_both_backends!(
    demo_sync_end_to_end_then_clean_shutdown,
    restart_resumes_from_stored_cursors,
    sigkill_mid_first_sync_then_restart_converges_exactly,
);

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let d = setup.start();
    // Same config but another port: must fail on the store lock.
    let text = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", setup.port),
            &format!("127.0.0.1:{}", crate::support::free_port()),
        );
    let other = setup.dir.path().join("other.toml");
    std::fs::write(&other, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another running erpsync"), "{err}");
    assert!(d.terminate().0.success());
}

fn check_config(dir: &Path, text: &str) -> (i32, String, String) {
    let p = dir.join("erpsync.toml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"[daemon]
state_dir = "state"

[http]
listen = "127.0.0.1:8089"

[[connectors]]
id = "demo"
kind = "demo"
poll_interval = "30s"
"#;

#[test]
fn check_config_accepts_a_good_file_and_summarises_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check_config(dir.path(), GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("connectors: 1"), "{out}");
    assert!(out.contains("demo (kind demo, poll every 30s"), "{out}");
    assert!(out.contains("listen: 127.0.0.1:8089"), "{out}");
    assert!(
        !dir.path().join("state").exists(),
        "check-config must not touch state"
    );
}

/// Each bad config: exit 78, the message names file:line and the key, and
/// no state directory is created.
#[test]
fn bad_configs_are_refused_with_file_line_and_key() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown key",
            "[daemon]\nstate_dir = \"state\"\nstat_dir = \"x\"\n",
            &["erpsync.toml:3", "key `stat_dir`", "unknown field `stat_dir`"],
        ),
        (
            "wrong type",
            "[[connectors]]\nid = \"demo\"\nkind = \"demo\"\nresync_share = \"half\"\n",
            &["erpsync.toml:4", "key `resync_share`", "invalid type"],
        ),
        (
            "duplicate connector ids",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"a\"\nkind = \"demo\"\n[[connectors]]\nid = \"a\"\nkind = \"demo\"\n",
            &["erpsync.toml:7", "key `connectors[1].id`", "duplicate connector id `a` (first defined on line 4)"],
        ),
        (
            "missing credential file",
            "[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"nope/token\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:4", "key `http.admin_token_file`", "nope/token does not exist"],
        ),
        (
            "password inside the store URL",
            "[daemon]\nstate_dir = \"state\"\nstore = \"postgres://erp:hunter2@db/erpsync\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:3", "key `daemon.store`", "contains a password", "store_password_file"],
        ),
        (
            "cache size with postgres",
            "[daemon]\nstate_dir = \"state\"\nstore = \"postgres://erp@db/erpsync\"\nstore_cache_mb = 64\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:4", "key `daemon.store_cache_mb`", "no effect with a PostgreSQL store", "shared_buffers"],
        ),
        (
            "store password without postgres",
            "[daemon]\nstate_dir = \"state\"\nstore_password_credential = \"pg\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:3", "only applies to a PostgreSQL store"],
        ),
        (
            "unknown store scheme",
            "[daemon]\nstate_dir = \"state\"\nstore = \"mysql://db/x\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:3", "key `daemon.store`", "neither a postgres:// URL nor a SQLite file path"],
        ),
        (
            "retention out of range",
            "[daemon]\nstate_dir = \"state\"\naudit_retention_days = 0\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:3", "key `daemon.audit_retention_days`", "between 1 and 36500"],
        ),
        (
            "unknown connector kind",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"sap\"\n",
            &["erpsync.toml:5", "key `connectors[0].kind`", "unknown connector kind `sap`"],
        ),
        (
            "bad duration",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\npoll_interval = \"soon\"\n",
            &["erpsync.toml:6", "key `connectors[0].poll_interval`", "not a duration"],
        ),
        (
            "unknown native exclusion",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\nnative_exclusions = [\"archived\"]\n",
            &["erpsync.toml:6", "`archived` is not a native exclusion of kind `demo`"],
        ),
        (
            "bad rule operator",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[[rules]]\nid = \"r1\"\ndescription = \"x\"\nwhen = { field = \"name\", op = \"resembles\", value = \"x\" }\n",
            &["erpsync.toml:9", "rules[0].when.op", "rule `r1`", "unknown operator `resembles`"],
        ),
        (
            "bad regex",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[[rules]]\nid = \"r2\"\nwhen = { field = \"email\", op = \"matches\", value = \"[\" }\n",
            &["erpsync.toml:8", "rule `r2`", "invalid regex"],
        ),
        (
            "duplicate rule id",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[[rules]]\nid = \"r\"\nwhen = { field = \"name\", op = \"is\", value = \"a\" }\n[[rules]]\nid = \"r\"\nwhen = { field = \"name\", op = \"is\", value = \"b\" }\n",
            &["erpsync.toml:10", "rules[1].id", "duplicate rule id `r` (first defined on line 7)"],
        ),
        (
            "demo option out of range",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[connectors.demo]\npage_size = 0\n",
            &["erpsync.toml:7", "key `connectors[0].demo.page_size`", "must be between 1 and 1000"],
        ),
        (
            "wrong type inside a connector's own table",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[connectors.demo]\nseed = 1\ncustomers = \"many\"\n",
            &["erpsync.toml:8", "key `connectors[0].demo.customers`", "invalid type"],
        ),
        (
            "unknown key inside a connector's own table",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n\n[connectors.demo]\nseed = 1\n\npagesize = 3\n",
            &["erpsync.toml:10", "key `connectors[0].demo.pagesize`", "unknown field `pagesize`"],
        ),
        (
            "unknown key inside the second connector's table",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"a\"\nkind = \"demo\"\n[[connectors]]\nid = \"b\"\nkind = \"demo\"\n[connectors.demo]\ntrickle = 0\nlatency = 5\n",
            &["erpsync.toml:11", "key `connectors[1].demo.latency`", "unknown field `latency`"],
        ),
        (
            "a table of another kind",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[connectors.netsuite]\naccount_id = \"1\"\n",
            &["erpsync.toml:6", "key `connectors[0].netsuite`", "does not apply to kind `demo`"],
        ),
        (
            "a NetSuite option in the config's one duration syntax",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"n\"\nkind = \"netsuite\"\n[connectors.netsuite]\naccount_id = \"1\"\ntimezone = \"UTC\"\nconsumer_key_credential = \"a\"\nconsumer_secret_credential = \"b\"\ntoken_id_credential = \"c\"\ntoken_secret_credential = \"d\"\noverlap = \"30\"\n",
            &["erpsync.toml:13", "key `connectors[0].netsuite.overlap`", "`30` has no unit"],
        ),
        (
            "a daemon duration without a unit",
            "[daemon]\nstate_dir = \"state\"\nshutdown_timeout = \"30\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:3", "key `daemon.shutdown_timeout`", "`30` has no unit"],
        ),
        (
            "a daily quota of zero",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\nrate_limit = { requests_per_day = 0 }\n",
            &["erpsync.toml:6", "key `connectors[0].rate_limit.requests_per_day`", "at least 1"],
        ),
        (
            "duration too long",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\npoll_interval = \"99999999999999999999d\"\n",
            &["erpsync.toml:6", "poll_interval", "too long"],
        ),
        (
            "rate too small",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\nrate_limit = { requests_per_second = 1e-20 }\n",
            &["erpsync.toml:6", "rate_limit.requests_per_second", "must be between"],
        ),
        (
            "store cache zero",
            "[daemon]\nstate_dir = \"state\"\nstore_cache_mb = 0\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n",
            &["erpsync.toml:3", "daemon.store_cache_mb"],
        ),
        (
            "rule id with a line break",
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[[rules]]\nid = \"a\\nb\"\nwhen = { field = \"name\", op = \"is\", value = \"a\" }\n",
            &["erpsync.toml:7", "rules[0].id", "not a valid rule id"],
        ),
        (
            "not TOML",
            "[daemon\nstate_dir = 1\n",
            &["erpsync.toml:1"],
        ),
    ];
    for (name, text, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (code, _out, err) = check_config(dir.path(), text);
        assert_eq!(code, 78, "{name}: exit code; stderr: {err}");
        for n in *needles {
            assert!(err.contains(n), "{name}: `{n}` not in:\n{err}");
        }
        assert!(!dir.path().join("state").exists(), "{name}: state touched");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"Bad Id\"\nkind = \"sap\"\npoll_interval = \"0s\"\n";
    let (code, _, err) = check_config(dir.path(), text);
    assert_eq!(code, 78);
    assert!(err.contains("3 problems"), "{err}");
}

#[test]
fn run_with_a_bad_config_exits_78_without_touching_state() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("erpsync.toml");
    std::fs::write(&p, "[daemon]\nstate_dir = \"state\"\nbogus = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `bogus`"));
    assert!(!dir.path().join("state").exists());
}

#[test]
fn unwritable_state_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the state directory should be.
    std::fs::write(dir.path().join("state"), "not a dir").unwrap();
    let p = dir.path().join("erpsync.toml");
    std::fs::write(
        &p,
        GOOD.replace("8089", &crate::support::free_port().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "a configuration problem");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `daemon.state_dir`: ") && err.contains("exists and is not a directory"),
        "{err}"
    );
}

#[test]
fn notifies_systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let sock_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let d = crate::support::Daemon::spawn_with_env(
        &setup.config_path(),
        setup.base(),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sock
            .recv(&mut buf)
            .expect("no notification from the daemon");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let (st, _) = d.terminate();
    assert!(st.success());
    let mut stopping = false;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM; saw {seen:?}");
}

#[test]
fn the_admin_token_never_reaches_the_logs() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let d = setup.start();
    d.wait_passes(1);
    // A wrong token and a right one: neither may be logged.
    let (st, body) = d
        .client
        .with_token("wrong-token-xyz")
        .call("GET", "/api/v1/status", None);
    assert_eq!(st, 401);
    assert_eq!(body["error"], "wrong bearer token");
    let (st, _) = d.client.call("GET", "/api/v1/status", None);
    assert_eq!(st, 200);
    let (st, body) = d.client.without_token().call("GET", "/api/v1/status", None);
    assert_eq!(st, 401);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("missing bearer token"));
    let log = d.log();
    assert!(!log.contains(crate::support::TOKEN), "token in log:\n{log}");
    assert!(!log.contains("wrong-token-xyz"));
    assert!(d.terminate().0.success());
}

#[test]
fn the_systemd_unit_is_hardened_and_uses_notify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/erpsync.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/erpsync run --config /etc/erpsync/erpsync.toml",
        "StateDirectory=erpsync",
        "ConfigurationDirectory=erpsync",
        "LoadCredential=admin-token:",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "WatchdogSec=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "missing `{line}`"
        );
    }
    // The example config reads the token from that credential.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/erpsync.example.toml"
    ))
    .unwrap();
    assert!(example.contains("admin_token_credential = \"admin-token\""));
}

#[test]
fn the_admin_api_is_forbidden_without_a_configured_token() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let text = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace("admin_token_file = \"token\"\n", "");
    setup.write_config(&text);
    let d = setup.start();
    let (st, body) = d.client.call("GET", "/api/v1/status", None);
    assert_eq!(st, 403);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("no admin token is configured"));
    // health endpoints stay open
    assert_eq!(
        d.client.without_token().call("GET", "/healthz", None).0,
        200
    );
    assert!(d.terminate().0.success());
}

#[test]
fn the_shipped_configs_are_valid() {
    let named = regex::Regex::new(r#"_credential\s*=\s*"([^"]+)""#).unwrap();
    for name in ["erpsync.example.toml", "demo.toml"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        // check-config reads every secret, as the service would: give it
        // the credentials the unit's LoadCredential= lines would.
        let creds = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for c in named.captures_iter(line) {
                std::fs::write(creds.path().join(&c[1]), "value\n").unwrap();
            }
        }
        let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
            .args(["check-config", "--config"])
            .arg(&p)
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn cli_status_reads_the_running_daemon() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let d = setup.start();
    d.wait_passes(1);
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_erpsync"));
        cmd.args(["status", "--config"]).arg(setup.config_path());
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("customers: 300 total"), "{text}");
    assert!(text.contains("CONNECTOR"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("demo") && l.contains("idle")),
        "{text}"
    );
    let out = run(true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["customers"]["total"], 300);
    assert!(d.terminate().0.success());

    // With the daemon gone the CLI says so and fails.
    let out = run(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the daemon running?"));
}

#[test]
fn a_missing_credential_is_a_config_error_found_before_any_state_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("erpsync.toml");
    std::fs::write(
        &p,
        GOOD.replace("8089", &crate::support::free_port().to_string())
            .replace(
                "[http]\n",
                "[http]\nadmin_token_credential = \"admin-token\"\n",
            ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(&p)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key `http.admin_token_credential`"), "{err}");
    assert!(err.contains("CREDENTIALS_DIRECTORY is not set"), "{err}");
    assert!(!dir.path().join("state").exists(), "state touched");
}

/// Under systemd the token is a credential only the service can read: the
/// CLI still shows status, says how to pass a token for admin commands, and
/// never sends anything through a proxy from the environment.
#[test]
fn cli_without_a_readable_token_and_with_a_proxy_in_the_environment() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let d = setup.start();
    d.wait_passes(1);
    // A client config whose token is a systemd credential.
    let text = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            "admin_token_file = \"token\"",
            "admin_token_credential = \"admin-token\"",
        );
    let client_cfg = setup.dir.path().join("client.toml");
    std::fs::write(&client_cfg, text).unwrap();
    // A "proxy" that would see the token if the CLI used it.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", trap.local_addr().unwrap());
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_erpsync"))
            .args(args)
            .arg("--config")
            .arg(&client_cfg)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("http_proxy", &proxy)
            .env("HTTP_PROXY", &proxy)
            .env("all_proxy", &proxy)
            .output()
            .unwrap()
    };
    let out = cli(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["customers", "search", "acme"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("--token-file"), "{err}");
    let out = cli(&[
        "customers",
        "search",
        "acme",
        "--token-file",
        setup.dir.path().join("token").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    trap.set_nonblocking(true).unwrap();
    assert!(trap.accept().is_err(), "the CLI connected to the proxy");
    assert!(d.terminate().0.success());

    // A broken config file: exit 78 like check-config.
    std::fs::write(&client_cfg, "bogus = 1\n").unwrap();
    let out = cli(&["status"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `bogus`"));
}
