//! Reliability under faults: crashes at the worst instant of a reload,
//! store I/O errors, slow clients, configuration checked before any state
//! is touched, hostile ids and upstream error bodies, log floods.

use std::process::Command;
use std::time::{Duration, Instant};

use erpsync::store::Store;
use serde_json::Value;

use crate::support::{small_demo, Daemon, Setup};

/// Waits (polling, never a fixed sleep) until `f` holds.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hup(d: &Daemon) {
    assert!(Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

const GUARD: &str = "[exclusions]\nmax_new_exclusion_ratio = 0.3\n";
/// About a fifth of the demo's customers: within the guard.
const MID_RULE: &str = "\n[[rules]]\nid = \"mid-market\"\ndescription = \"\"\nwhen = { field = \"custom.segment\", op = \"is\", value = \"mid\" }\n";
/// About 70% of them: refused by the guard.
const SMB_RULE: &str = "\n[[rules]]\nid = \"small\"\ndescription = \"\"\nwhen = { field = \"custom.segment\", op = \"is\", value = \"smb\" }\n";

/// (customers of the segment, of those excluded by `rule`, customers
/// excluded by any rule).
fn rule_state(store: &Store, segment: &str, rule: &str) -> (usize, usize, usize) {
    let (mut seg, mut seg_by_rule, mut by_any_rule) = (0, 0, 0);
    for c in store.customers(Some("demo"), None) {
        let c = c.unwrap();
        let in_seg = c.customer.custom.get("segment").map(String::as_str) == Some(segment);
        let reason = &c.classification.reason;
        if in_seg {
            seg += 1;
            if reason == &format!("rule:{rule}") {
                seg_by_rule += 1;
            }
        }
        if reason.starts_with("rule:") {
            by_any_rule += 1;
        }
    }
    (seg, seg_by_rule, by_any_rule)
}

/// Starts the daemon with the reload's re-classification set to pause after
/// its first batch, reloads `MID_RULE` with SIGHUP and kills it with SIGKILL
/// there: a third of the customers classified with the new rule, the rest not.
fn kill_half_way_through_a_reload(setup: &Setup, plain: &str) {
    let pause = setup.dir.path().join("paused");
    let d = Daemon::spawn_with_env(
        &setup.config_path(),
        setup.base(),
        &[
            ("ERPSYNC_TEST_PAUSE_AT", "reclassify.batch"),
            ("ERPSYNC_TEST_PAUSE_FILE", pause.to_str().unwrap()),
        ],
    );
    d.wait_passes(1);
    setup.write_config(&format!("{plain}{MID_RULE}"));
    hup(&d);
    wait_until("the reload to pause", Duration::from_secs(60), || {
        pause.exists()
    });
    d.kill9();
    let (mid, excluded, _) = rule_state(&setup.open_store(), "mid", "mid-market");
    assert!(
        excluded > 0 && excluded < mid,
        "the kill must land half-way: {excluded} of {mid} mid-market customers excluded"
    );
}

fn last_reload(d: &Daemon) -> Value {
    d.client.get("/status")["last_reload"].clone()
}

/// A reload killed half-way and the config unchanged: the next start
/// completes it with the rules it was applying, and says so.
#[test]
fn a_reload_killed_half_way_is_completed_at_the_next_start() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", GUARD);
    let plain = std::fs::read_to_string(setup.config_path()).unwrap();
    kill_half_way_through_a_reload(&setup, &plain);

    let d = setup.start();
    let r = last_reload(&d);
    assert_eq!(r["applied"], true, "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("interrupted") && msg.contains("completed with the rules it was applying"),
        "{msg}"
    );
    assert!(
        d.log()
            .contains("a re-classification was interrupted by a crash or stop"),
        "{}",
        d.log()
    );
    assert!(d.terminate().0.success());
    let (mid, excluded, any) = rule_state(&setup.open_store(), "mid", "mid-market");
    assert_eq!(
        (excluded, any),
        (mid, mid),
        "every mid-market customer, no other"
    );
}

/// A reload killed half-way, then the rules edited to exclude 70% of the
/// customers: the guard compares with the last completed policy (no rules),
/// refuses, and the start reverts the half-applied reload too.
#[test]
fn a_reload_killed_half_way_keeps_the_ratio_guard_and_reverts() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", GUARD);
    let plain = std::fs::read_to_string(setup.config_path()).unwrap();
    kill_half_way_through_a_reload(&setup, &plain);
    setup.write_config(&format!("{plain}{SMB_RULE}"));

    let d = setup.start();
    let r = last_reload(&d);
    assert_eq!(r["applied"], false, "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("was reverted") && msg.contains("max_new_exclusion_ratio 30.0%"),
        "{msg}"
    );
    assert!(
        d.log().contains("start-up re-classification refused"),
        "{}",
        d.log()
    );
    // Guarded at run time too: the same edit by SIGHUP is refused again.
    hup(&d);
    wait_until("the reload to be refused", Duration::from_secs(60), || {
        last_reload(&d) != r
    });
    let r2 = last_reload(&d);
    assert_eq!(r2["applied"], false, "{r2}");
    // The customers the half-applied reload purged come back by resync.
    wait_until("resyncs to finish", Duration::from_secs(120), || {
        let v = d.client.get("/api/v1/resyncs?state=unfinished");
        v["jobs"].as_array().is_some_and(|j| j.is_empty())
    });
    assert!(d.terminate().0.success());
    let store = setup.open_store();
    let (smb, by_small, any) = rule_state(&store, "smb", "small");
    assert!(smb > 0);
    assert_eq!((by_small, any), (0, 0), "no customer excluded by a rule");
    crate::daemon::assert_equals_erp(&store, &opts);
}

/// The setup's config with `keys` added to its `[http]` table.
fn with_http_keys(setup: &Setup, keys: &str) {
    let text = std::fs::read_to_string(setup.config_path()).unwrap();
    setup.write_config(&text.replace(
        "admin_token_file = \"token\"\n",
        &format!("admin_token_file = \"token\"\n{keys}"),
    ));
}

/// A connection that sent part of a request's headers and stopped.
fn slow_connection(port: u16) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s
}

/// Reads what the server sends until it closes (or `limit` passes, which
/// fails the test).
fn read_to_close(s: &mut std::net::TcpStream, limit: Duration) -> String {
    try_read_to_close(s, limit).expect("the server did not close the connection")
}

/// Like [`read_to_close`]; `None` when the server kept it open.
fn try_read_to_close(s: &mut std::net::TcpStream, limit: Duration) -> Option<String> {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return None
        }
        Err(e) => panic!("{e}"),
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// One request on a fresh connection (`Connection: close`).
fn raw_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_to_close(&mut s, Duration::from_secs(30))
}

#[test]
fn healthz_answers_while_2000_slow_connections_are_open_and_the_excess_is_refused() {
    let setup = Setup::demo(&small_demo(), "1h", "");
    with_http_keys(
        &setup,
        "max_connections = 2003\nheader_read_timeout = \"10m\"\nidle_timeout = \"10m\"\n",
    );
    let d = setup.start();
    let mut slow: Vec<_> = (0..2000).map(|_| slow_connection(setup.port)).collect();
    let health = raw_get(setup.port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // They are all still open (nothing was closed to make room).
    for s in &slow {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut &*s, &mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a slow connection was closed: {r:?}"
        );
    }
    // Past the cap: an immediate 503, and the connection is closed.
    let mut extra: Vec<_> = (0..12).map(|_| slow_connection(setup.port)).collect();
    let refused = extra
        .iter_mut()
        .filter_map(|s| try_read_to_close(s, Duration::from_secs(2)))
        .filter(|r| r.starts_with("HTTP/1.1 503") && r.contains("too many open connections"))
        .count();
    assert!(
        refused >= 8,
        "only {refused} of 12 connections past the cap were refused"
    );
    assert!(
        d.log().contains("http.max_connections are open"),
        "{}",
        d.log()
    );
    slow.clear();
    // Slots come back as connections close.
    wait_until("a free slot", Duration::from_secs(30), || {
        raw_get(setup.port, "/healthz").starts_with("HTTP/1.1 200")
    });
    assert!(d.terminate().0.success());
}

#[test]
fn slow_headers_and_idle_connections_are_closed() {
    let setup = Setup::demo(&small_demo(), "1h", "");
    with_http_keys(
        &setup,
        "header_read_timeout = \"1s\"\nidle_timeout = \"1s\"\n",
    );
    let d = setup.start();
    // Headers that never finish: closed (a 408 or nothing, then EOF).
    let mut s = slow_connection(setup.port);
    let got = read_to_close(&mut s, Duration::from_secs(30));
    assert!(!got.contains("200 OK"), "{got}");
    // A connection that never sends a byte: closed.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    read_to_close(&mut silent, Duration::from_secs(30));
    // A kept-alive connection after its answer: closed when no request comes.
    {
        use std::io::Write;
        let mut k = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
        k.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let got = read_to_close(&mut k, Duration::from_secs(30));
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert!(d.terminate().0.success());
}

/// An ERP (or a proxy in front of it) that echoes the request's headers in
/// its error body: neither the consumer key, the token id nor the
/// signature reaches the error kept for `last_error`, `/status` and logs,
/// and what is kept is bounded.
#[tokio::test]
async fn upstream_error_bodies_echoing_credentials_are_redacted_and_bounded() {
    use crate::netsuite_mock::{Fault, MockConfig, MockNetsuite};
    use erpsync::connectors::budget::Budget;
    use erpsync::connectors::{Connector, Cursor};

    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = crate::netsuite::limits(1);
    let c = crate::netsuite::connector(&mock, dir.path(), "", Budget::new(limits));
    let creds = mock.config().credentials.clone();
    for (status, json, attempts) in [
        (400, true, 1),
        (403, true, 1),
        (500, true, limits.max_attempts),
        (502, false, limits.max_attempts),
        (404, false, 1),
    ] {
        mock.push_faults((0..attempts).map(|_| Fault::EchoHeaders { status, json }));
        let err = c.fetch_customers(&Cursor::start()).await.unwrap_err();
        assert_eq!(mock.pending_faults(), 0, "HTTP {status}: {err}");
        let msg = err.to_string();
        for secret in [
            creds.consumer_key.as_str(),
            creds.token_id.as_str(),
            "oauth_signature=\"",
        ] {
            assert!(
                !msg.contains(secret),
                "HTTP {status} leaked `{secret}`: {msg}"
            );
        }
        assert!(msg.contains("[redacted]"), "HTTP {status}: {msg}");
        assert!(msg.chars().count() < 600, "HTTP {status}: unbounded: {msg}");
        if json {
            assert!(
                msg.contains("INVALID_REQUEST"),
                "the ERP's code stays: {msg}"
            );
        }
    }
}

/// Manual exclusions of customers not synced yet: the id must have the
/// ERP's form (demo: `C` and digits); hostile ids are refused with the
/// reason and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_for_customers_not_yet_synced_are_validated_per_connector_kind() {
    use crate::support::InProcess;
    use serde_json::json;

    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let before = d.app.store.manual_decisions().count();
    let audit_before = d.app.store.audit(None, 1_000_000).unwrap().len();
    let huge = format!("C{}", "1".repeat(900_000));
    for (id, why) in [
        ("C00042 ", "white space"),
        ("C00042\n", "white space"),
        ("C000\n42", "control character U+000A"),
        ("C00\u{202E}42", "bidirectional-text control U+202E"),
        ("C00\u{2066}42", "bidirectional-text control U+2066"),
        (huge.as_str(), "at most 128"),
        ("../../etc/passwd", "demo customer ids are C and digits"),
        ("NEW1", "demo customer ids are C and digits"),
        ("", "not a customer reference"),
    ] {
        let (st, v) = d
            .call(
                "POST",
                "/api/v1/exclusions",
                Some(json!({"customers": ["demo:C00001", format!("demo:{id}")], "reason": "x"})),
            )
            .await;
        assert_eq!(st, 400, "{id:?}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(why), "{id:?}: {msg}");
        assert!(msg.len() < 400, "the message quotes a bounded id: {msg}");
    }
    assert_eq!(
        d.app.store.manual_decisions().count(),
        before,
        "nothing kept"
    );
    assert_eq!(
        d.app.store.audit(None, 1_000_000).unwrap().len(),
        audit_before
    );
    // The ERP's form is accepted and waits for the first sync.
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": ["demo:C99999"], "reason": "known fraudster"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["customers"][0]["effect"], "pending");
    d.stop().await;
}

#[test]
fn each_kind_checks_the_form_of_its_ids() {
    use erpsync::connectors::REGISTRY;
    let check = |kind: &str, id: &str| REGISTRY.get(kind).unwrap().check_customer_id(id);
    assert!(check("netsuite", "1234").is_ok());
    assert!(check("netsuite", "12a")
        .unwrap_err()
        .contains("NetSuite customer ids are numbers"));
    assert!(check("quickbooks", "58").is_ok());
    assert!(check("quickbooks", "-1").is_err());
    assert!(check("xero", "9b2c4a8e-1f3d-4c5e-8a7b-112233445566").is_ok());
    assert!(check("xero", "9b2c4a8e").unwrap_err().contains("GUID"));
    assert!(check("demo", "C00042").is_ok());
    assert!(check("demo", "C").is_err());
    assert!(check("netsuite", "12\u{200F}3")
        .unwrap_err()
        .contains("U+200F"));
}

/// Runs `erpsync <cmd> --config <cfg>` to its end; (exit code, stderr).
fn erpsync(cmd: &str, cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args([cmd, "--config"])
        .arg(cfg)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every check `run` makes before touching state, `check-config` makes
/// too: both exit 78 with the same `file:line: key` message, and `run`
/// has created nothing.
#[test]
fn check_config_refuses_what_run_refuses_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("token"), "t0k3n\n").unwrap();
    std::fs::write(p.join("empty"), "\n").unwrap();
    std::fs::create_dir(p.join("tokdir")).unwrap();
    let demo = "[[connectors]]\nid = \"d\"\nkind = \"demo\"\n";
    let netsuite = "[[connectors]]\nid = \"ns\"\nkind = \"netsuite\"\n[connectors.netsuite]\naccount_id = \"123456\"\ntimezone = \"+00:00\"\nconsumer_key_file = \"token\"\nconsumer_secret_file = \"empty\"\ntoken_id_file = \"token\"\ntoken_secret_file = \"token\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an empty token file",
            format!("[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"empty\"\n{demo}"),
            ":4: key `http.admin_token_file`: secret file",
        ),
        (
            "a directory as token file",
            format!("[daemon]\nstate_dir = \"state\"\n[http]\nviewer_token_file = \"tokdir\"\n{demo}"),
            ":4: key `http.viewer_token_file`: ",
        ),
        (
            "a systemd credential outside systemd",
            format!("[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_credential = \"admin-token\"\n{demo}"),
            ":4: key `http.admin_token_credential`: systemd credential `admin-token` requested but CREDENTIALS_DIRECTORY is not set",
        ),
        (
            "state_dir is a file",
            format!("[daemon]\nstate_dir = \"token\"\n[http]\nadmin_token_file = \"token\"\n{demo}"),
            ":2: key `daemon.state_dir`: ",
        ),
        (
            "state_dir cannot be created",
            format!("[daemon]\nstate_dir = \"token/state\"\n[http]\nadmin_token_file = \"token\"\n{demo}"),
            ":2: key `daemon.state_dir`: ",
        ),
        (
            "an empty store password",
            format!("[daemon]\nstate_dir = \"state\"\nstore = \"postgres://erpsync@127.0.0.1:1/erpsync\"\nstore_password_file = \"empty\"\n[http]\nadmin_token_file = \"token\"\n{demo}"),
            ":4: key `daemon.store_password_file`: secret file",
        ),
        (
            "an empty connector secret",
            format!("[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"token\"\n{netsuite}"),
            ":6: key `connectors.ns`: connector `ns`: ",
        ),
        (
            "the viewer token equal to the admin token",
            format!("[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"token\"\nviewer_token_file = \"token\"\n{demo}"),
            ":5: key `http.viewer_token_file`: the viewer token is the same",
        ),
    ];
    let cfg = p.join("erpsync.toml");
    for (what, text, expected) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let (code, err) = erpsync("check-config", &cfg);
        assert_eq!(code, Some(78), "check-config, {what}: {err}");
        assert!(
            err.contains(&format!("erpsync.toml{expected}")),
            "check-config, {what}: {err}"
        );
        let (code, run_err) = erpsync("run", &cfg);
        assert_eq!(code, Some(78), "run, {what}: {run_err}");
        assert!(
            run_err.contains(&format!("erpsync.toml{expected}")),
            "run, {what}: {run_err}"
        );
        assert!(!p.join("state").exists(), "run, {what}: state was created");
    }
    // The same configuration, fixed, passes both.
    std::fs::write(
        &cfg,
        format!("[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"token\"\nlisten = \"127.0.0.1:0\"\n{demo}"),
    )
    .unwrap();
    let (code, err) = erpsync("check-config", &cfg);
    assert_eq!(code, Some(0), "{err}");
}

/// Config messages point at the bad key's own line and name it.
#[test]
fn config_messages_name_the_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("token"), "t\n").unwrap();
    std::fs::create_dir(p.join("tokdir")).unwrap();
    let head = "[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"token\"\n";
    let cfg = p.join("erpsync.toml");
    for (text, expected) in [
        (
            format!("{head}[[connectors]]\nid = \"d\"\nkind = \"demo\"\nrate_limit = {{ requests_per_second = 10, max_concurrency = 99999999999 }}\n"),
            "erpsync.toml:8: key `connectors[0].rate_limit.max_concurrency`: must be between 1 and 1000, got 99999999999",
        ),
        (
            format!("{head}[[connectorz]]\nid = \"d\"\nkind = \"demo\"\n"),
            "erpsync.toml:5: unknown table `[[connectorz]]`",
        ),
        (
            format!("{head}[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[connectors.demo]\ncustomers = 10\npage_size = 0\n"),
            "erpsync.toml:10: key `connectors[0].demo.page_size`: must be between 1 and 1000",
        ),
        (
            format!("{head}[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[connectors.demo]\ncustomers = 10\npage_size = \"x\"\n"),
            "erpsync.toml:10: key `connectors[0].demo.page_size`: invalid type",
        ),
        (
            format!("{head}[[connectors]]\nid = \"d\"\nkind = \"demo\"\n[connectors.demo]\ncustomers = 10\n\nnope = 1\n"),
            "erpsync.toml:11: key `connectors[0].demo.nope`: unknown field `nope`",
        ),
        (
            "[daemon]\nstate_dir = \"state\"\n[http]\nadmin_token_file = \"tokdir\"\n[[connectors]]\nid = \"d\"\nkind = \"demo\"\n".to_string(),
            "erpsync.toml:4: key `http.admin_token_file`: ",
        ),
        (
            format!("{head}[[connectors]]\nid = \"n\"\nkind = \"netsuite\"\n[connectors.netsuite]\naccount_id = \"1\"\ntimezone = \"+00:00\"\nconsumer_key_file = \"token\"\nconsumer_secret_file = \"token\"\ntoken_id_file = \"tokdir\"\ntoken_secret_file = \"token\"\n"),
            "erpsync.toml:13: key `connectors[0].netsuite.token_id_file`: ",
        ),
    ] {
        std::fs::write(&cfg, &text).unwrap();
        let (code, err) = erpsync("check-config", &cfg);
        assert_eq!(code, Some(78), "{text}\n{err}");
        assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
        if expected.ends_with("file`: ") {
            assert!(err.contains("tokdir is a directory"), "{err}");
        }
    }
}

/// Waits until no resync job is queued or running (blocking client).
fn wait_resyncs_done(api: &crate::support::Api) {
    wait_until("resyncs to finish", Duration::from_secs(120), || {
        let (st, v) = api.call("GET", "/api/v1/resyncs?state=unfinished", None);
        st == 200 && v["jobs"].as_array().is_some_and(|j| j.is_empty())
    });
}

/// Ids of a customer's stored records, sorted.
fn stored_ids(store: &Store, key: &erpsync::model::CustomerKey) -> Vec<String> {
    let mut ids: Vec<String> = store
        .records_of(key)
        .unwrap()
        .iter()
        .map(|r| r.external_id().to_string())
        .collect();
    ids.sort();
    ids
}

/// A resync of a customer leaves exactly the ERP's records for it: records
/// deleted upstream without a trace in the deletion feed are removed (with
/// tombstones); other customers' records are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_resync_reconciles_with_the_demo_erp() {
    use crate::support::InProcess;
    use erpsync::model::CustomerKey;
    use serde_json::json;

    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    // Two included customers with at least two invoices and a transaction.
    let erp_ids = |c: &str| {
        let mut ids: Vec<String> = d
            .erp
            .invoices()
            .iter()
            .filter(|i| i.customer_id == c)
            .map(|i| i.external_id.clone())
            .chain(
                d.erp
                    .transactions()
                    .iter()
                    .filter(|t| t.customer_id == c)
                    .map(|t| t.external_id.clone()),
            )
            .collect();
        ids.sort();
        ids
    };
    let picks: Vec<String> = d
        .erp
        .customers()
        .iter()
        .filter(|c| {
            let k = CustomerKey::new("demo", &c.external_id);
            let stored = store.customer(&k).unwrap().unwrap();
            !stored.classification.excluded
                && d.erp
                    .invoices()
                    .iter()
                    .filter(|i| i.customer_id == c.external_id)
                    .count()
                    >= 2
                && d.erp
                    .transactions()
                    .iter()
                    .any(|t| t.customer_id == c.external_id)
        })
        .map(|c| c.external_id.clone())
        .take(2)
        .collect();
    let (target, other) = (&picks[0], &picks[1]);
    let inv = d
        .erp
        .invoices()
        .into_iter()
        .find(|i| &i.customer_id == target)
        .unwrap();
    let txn = d
        .erp
        .transactions()
        .into_iter()
        .find(|t| &t.customer_id == target)
        .unwrap();
    let other_inv = d
        .erp
        .invoices()
        .into_iter()
        .find(|i| &i.customer_id == other)
        .unwrap();
    for id in [&inv.external_id, &txn.external_id, &other_inv.external_id] {
        assert!(d.erp.forget_record(id));
    }
    // Polling cannot see these deletions.
    d.sync_now().await;
    let key = CustomerKey::new("demo", target);
    assert_ne!(
        stored_ids(store, &key),
        erp_ids(target),
        "polling kept them"
    );

    let (st, v) = d
        .call(
            "POST",
            "/api/v1/resyncs",
            Some(json!({"customers": [key.to_string()]})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let api = d.api.clone();
    tokio::task::spawn_blocking(move || wait_resyncs_done(&api))
        .await
        .unwrap();
    assert_eq!(
        stored_ids(store, &key),
        erp_ids(target),
        "exactly the ERP's records"
    );
    let other_key = CustomerKey::new("demo", other);
    assert!(
        stored_ids(store, &other_key).contains(&other_inv.external_id),
        "a customer not resynced keeps its records"
    );
    assert!(store.counter("demo", "deleted_invoices").unwrap() >= 1);
    assert!(store.counter("demo", "deleted_transactions").unwrap() >= 1);
    d.stop().await;
}

/// The same against the NetSuite mock through the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_resync_reconciles_with_netsuite() {
    use crate::netsuite_mock::{MockConfig, MockNetsuite};
    use erpsync::model::CustomerKey;
    use serde_json::json;

    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let cfg = crate::netsuite_daemon::write_config(
        &mock,
        dir.path(),
        port,
        &mock.config().credentials.token_secret.clone(),
    );
    let d = tokio::task::spawn_blocking(move || {
        let d = Daemon::spawn(&cfg, format!("http://127.0.0.1:{port}"));
        // A pass that failed (say on a loaded machine) counts in `passes`
        // but stored nothing: wait for one that succeeded.
        crate::platform::wait_connector(&d, "synced", |c| !c["last_success"].is_null());
        d
    })
    .await
    .unwrap();
    // A customer whose invoices are stored, and one of its transactions.
    let entity = mock.column("transaction", None, "entity");
    let ty = mock.column("transaction", None, "type");
    let inactive = mock.column("customer", None, "isinactive");
    let ic = mock.column("customer", None, &mock.config().intercompany_column.clone());
    let of = |cust: &str| -> Vec<u64> {
        entity
            .iter()
            .filter(|(id, c)| {
                c.as_deref() == Some(cust)
                    && matches!(
                        ty[*id].as_deref(),
                        Some("CustInvc" | "CustPymt" | "CustCred")
                    )
            })
            .map(|(id, _)| *id)
            .collect()
    };
    let target = inactive
        .iter()
        .find(|(id, v)| {
            v.as_deref() != Some("T")
                && ic.get(*id).cloned().flatten().is_none()
                && of(&id.to_string()).len() >= 3
        })
        .map(|(id, _)| id.to_string())
        .expect("an included customer with records");
    let ids = of(&target);
    mock.forget("transaction", ids[0]);
    mock.forget("transaction", ids[1]);
    let mut expected: Vec<String> = ids[2..].iter().map(u64::to_string).collect();
    expected.sort();
    let key = CustomerKey::new("ns", &target);
    let d = tokio::task::spawn_blocking(move || {
        let (st, v) = d.client.call(
            "POST",
            "/api/v1/resyncs",
            Some(&json!({"customers": [key.to_string()]})),
        );
        assert_eq!(st, 202, "{v}");
        wait_resyncs_done(&d.client);
        assert!(d.terminate().0.success());
    })
    .await;
    d.unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    assert_eq!(
        stored_ids(&store, &CustomerKey::new("ns", &target)),
        expected
    );
}

/// A tmpfs mounted for one test (a real disk that can be filled), unmounted
/// when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "the disk-full test mounts a tmpfs and needs root (as CI has)"
        );
        SmallDisk { path, _dir: dir }
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Changes that need store writes (exclusions of thousands of customers
/// not synced yet: big writes that queue no resync), until one is refused
/// with 503. Returns the refusal.
fn write_until_refused(d: &Daemon) -> Value {
    use serde_json::json;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..500 {
        let first = NEXT.fetch_add(10_000, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = (first..first + 10_000)
            .map(|n| format!("demo:C9{n:08}"))
            .collect();
        let (st, v) = d.client.call(
            "POST",
            "/api/v1/exclusions",
            Some(&json!({"customers": ids, "reason": "fill the log"})),
        );
        if st == 503 {
            return v;
        }
        assert_eq!(st, 200, "{v}");
    }
    panic!("the store never ran out of space");
}

fn readyz(d: &Daemon) -> (u16, Value) {
    d.client.without_token().call("GET", "/readyz", None)
}

/// A real disk-full (a small tmpfs filled up): writes fail with 503 and
/// change nothing, `/readyz` is 503 and `/status` says why, the watchdog
/// is no longer fed after `store_failure_timeout`; freeing the space heals
/// the daemon by itself; SIGTERM while the disk is full exits cleanly; and
/// the store ends equal to the ERP.
#[test]
fn a_full_disk_is_survived_and_healed_without_a_restart() {
    use std::os::unix::net::UnixDatagram;
    let disk = SmallDisk::mount(24);
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let text = std::fs::read_to_string(setup.config_path()).unwrap();
    setup.write_config(&text.replace(
        "state_dir = \"state\"\n",
        &format!(
            "state_dir = \"{}\"\nstore_failure_timeout = \"1s\"\n",
            disk.path.join("state").display()
        ),
    ));
    let sock_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let d = Daemon::spawn_with_env(
        &setup.config_path(),
        setup.base(),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    d.wait_passes(1);
    // Read every notification as systemd would (an unread socket would
    // block the sender), counting watchdog pings.
    let pings = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let pings = pings.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                    pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
    }
    let count = || pings.load(std::sync::atomic::Ordering::SeqCst);
    let fed_after = |n: u64| {
        wait_until("a watchdog ping", Duration::from_secs(30), || count() > n);
    };
    fed_after(0);

    disk.fill();
    let refused = write_until_refused(&d);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("store unavailable")
            && refused["error"].as_str().unwrap().contains("full"),
        "{refused}"
    );
    let (st, r) = readyz(&d);
    assert_eq!(st, 503, "{r}");
    assert_eq!(r["store"]["writable"], false, "{r}");
    let s = d.client.get("/status");
    assert_eq!(s["store"]["writable"], false, "{s:#}");
    assert!(
        s["store"]["error"].as_str().unwrap().contains("full"),
        "{s:#}"
    );
    // Writes keep failing (each attempt is refused with 503).
    // (The log is checked after every attempt, so a slow machine where one
    // attempt outlasts the deadline still sees the decision it logged.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("no longer feeding the systemd watchdog") {
        assert!(
            Instant::now() < deadline,
            "the watchdog was never starved:\n{}",
            d.log()
        );
        write_until_refused(&d);
    }
    // From then on no ping comes (over ten watchdog periods; one sent just
    // before the decision may still be on its way for a moment).
    std::thread::sleep(Duration::from_millis(300));
    let starved_at = count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(), starved_at, "still fed while starved");

    // Space comes back: the daemon heals on its own.
    disk.free();
    wait_until("ready again", Duration::from_secs(60), || {
        readyz(&d).0 == 200
    });
    fed_after(count());
    assert_eq!(d.client.get("/status")["store"]["writable"], true);
    let (st, v) = d.client.call(
        "POST",
        "/api/v1/reinclusions",
        Some(&serde_json::json!({"customers": ["demo:C00001"]})),
    );
    assert_eq!(st, 200, "{v}");
    assert!(d.log().contains("store writable again"), "{}", d.log());

    // Full again, then SIGTERM: a clean exit.
    disk.fill();
    write_until_refused(&d);
    let (status, _) = d.terminate();
    assert!(status.success(), "exit {status:?}");
    disk.free();

    // Restarted with space, it converges to the ERP.
    let d = setup.start();
    d.wait_passes(1);
    wait_resyncs_done(&d.client);
    assert!(d.terminate().0.success());
    crate::daemon::assert_equals_erp(&Store::open(&disk.path.join("state")).unwrap(), &opts);
}

/// A TCP proxy to PostgreSQL that the test can cut (every connection closed,
/// new ones closed at once) and restore.
struct CuttableProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    fn start(upstream: String) -> CuttableProxy {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut o = o.lock().unwrap();
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CuttableProxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// PostgreSQL out of reach (the connection cut by a proxy): writes fail
/// with 503 and change nothing, `/readyz` is 503 and `/status` says why;
/// once it is back the daemon heals by itself and converges; SIGTERM while
/// it is away exits cleanly.
#[test]
fn a_postgresql_outage_is_survived_and_healed_without_a_restart() {
    use erpsync::store::testing::TestPg;
    let Some(pg) = TestPg::create("reliability::pg_outage") else {
        return;
    };
    let rest = pg.url.strip_prefix("postgres://").unwrap();
    let (userhost, db) = rest.split_once('/').unwrap();
    let (user, hostport) = userhost.split_once('@').unwrap();
    let proxy = CuttableProxy::start(hostport.to_string());
    let url = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port);
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let text = std::fs::read_to_string(setup.config_path()).unwrap();
    setup.write_config(&text.replace(
        "state_dir = \"state\"\n",
        &format!("state_dir = \"state\"\nstore = \"{url}\"\n"),
    ));
    let d = setup.start();
    d.wait_passes(1);

    proxy.cut();
    let (st, v) = d.client.call(
        "POST",
        "/api/v1/exclusions",
        Some(&serde_json::json!({"customers": ["demo:C00001"], "reason": "x"})),
    );
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("store unavailable"),
        "{v}"
    );
    let (st, r) = readyz(&d);
    assert_eq!(st, 503, "{r}");
    let (st, s) = d.client.call("GET", "/status", None);
    assert_eq!(st, 503, "{s}");
    assert_eq!(s["store"]["writable"], false, "{s}");
    assert!(
        s["store"]["error"].as_str().unwrap().contains("postgres"),
        "{s}"
    );

    proxy.restore();
    wait_until("ready again", Duration::from_secs(90), || {
        readyz(&d).0 == 200
    });
    let (st, v) = d.client.call(
        "POST",
        "/api/v1/exclusions",
        Some(&serde_json::json!({"customers": ["demo:C00001"], "reason": "x"})),
    );
    assert_eq!(st, 200, "{v}");
    d.client
        .post("/api/v1/connectors/demo/sync", &serde_json::json!({}));
    d.wait_passes(2);

    proxy.cut();
    let (st, _) = d.client.call(
        "POST",
        "/api/v1/exclusions",
        Some(&serde_json::json!({"customers": ["demo:C00002"], "reason": "x"})),
    );
    assert_eq!(st, 503);
    let (status, _) = d.terminate();
    assert!(status.success(), "exit {status:?}");
    proxy.restore();
    let store = Store::open_location(&pg.location(), erpsync::store::DEFAULT_CACHE_MB).unwrap();
    crate::daemon::assert_equals_erp(&store, &opts);
}

/// Wrong tokens from one address flood nothing: at most one line a minute
/// per address (bearer and console login together), with a count; another
/// address gets its own line.
#[test]
fn wrong_token_logs_are_one_line_per_address_per_minute() {
    let setup = Setup::demo(&small_demo(), "1h", "");
    let d = setup.start();
    let hit = |from: [u8; 4], login: bool| {
        let base = d.base.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let c = reqwest::Client::builder()
                .local_address(std::net::IpAddr::from(from))
                .build()
                .unwrap();
            let r = if login {
                c.post(format!("{base}/api/v1/session"))
                    .json(&serde_json::json!({"token": "wrong"}))
                    .send()
                    .await
            } else {
                c.get(format!("{base}/api/v1/status"))
                    .bearer_auth("wrong")
                    .send()
                    .await
            };
            r.unwrap().status().as_u16()
        })
    };
    for _ in 0..60 {
        assert_eq!(hit([127, 0, 0, 1], false), 401);
    }
    let logins: Vec<u16> = (0..10).map(|_| hit([127, 0, 0, 1], true)).collect();
    assert!(logins.contains(&401), "{logins:?}");
    for _ in 0..40 {
        assert_eq!(hit([127, 0, 0, 2], false), 401);
    }
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authentication refused"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per address: {lines:#?}");
    assert!(
        lines[0].contains("127.0.0.1") && lines[1].contains("127.0.0.2"),
        "{lines:#?}"
    );
    assert!(!log.contains("wrong\""), "no token in the log");
    assert!(d.terminate().0.success());
}
