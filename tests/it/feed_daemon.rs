//! The change feed with the real binary, on both store backends: a consumer
//! reading `/api/v1/changes` while the daemon is killed with SIGKILL in the
//! middle of syncs, mass purges and resyncs ends with exactly the store's
//! data; a webhook receiver that verifies every signature with the
//! reference Standard Webhooks library, fails for a while (the endpoint is
//! marked failing) and sees a restart, ends with the same; `erpsync
//! webhooks test` and `erpsync export` work from the command line.

use std::process::Command;
use std::time::Duration;

use erpsync::connectors::demo::DemoOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::consumer::{
    assert_same, wait_webhook, webhook_toml, Mirror, Mode, Receiver, Snapshot, SECRET,
};
use crate::support::on_both_backends;
use crate::support::{small_demo, Backend, Daemon, Setup};

const RULE: &str = "\n[exclusions]\nmax_new_exclusion_ratio = 1.0\n\n[[rules]]\nid = \"mid-market\"\ndescription = \"Mid-market accounts are handled elsewhere\"\nwhen = { field = \"custom.segment\", op = \"is\", value = \"mid\" }\n";

/// Reads whatever the feed has now, ignoring a daemon that is not (yet)
/// answering.
fn try_catch_up(m: &mut Mirror, d: &Daemon) {
    let Some((st, v)) = d
        .client
        .try_get(&format!("/api/v1/changes?after={}&limit=200", m.after))
    else {
        return;
    };
    if st == 200 {
        for e in v["events"].as_array().unwrap() {
            m.apply(e);
        }
    }
}

fn wait_resyncs_done(d: &Daemon) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = d.client.get("/api/v1/resyncs?state=unfinished");
        if v["jobs"].as_array().is_some_and(|j| j.is_empty()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "resyncs did not finish: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_consumer_survives_kill9_of_the_daemon(backend: Backend) {
    // ~265 pages of 20 records at 12 ms: a first sync of a few seconds.
    let opts = DemoOptions {
        page_size: 20,
        latency_ms: 12,
        trickle: 5,
        ..small_demo()
    };
    let Some(setup) = Setup::demo_on(backend, "feed_daemon::kill9", &opts, "1h", "") else {
        return;
    };
    let plain = std::fs::read_to_string(setup.config_path()).unwrap();
    let with_rule = format!("{plain}{RULE}");
    let seed: u64 = std::env::var("ERPSYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = Mirror::default();
    // First sync, then mass purges (rule on) and resyncs (rule off), each
    // cut by a SIGKILL at a random instant; the consumer reads whatever the
    // daemon serves in between.
    for cycle in 0..12 {
        let cfg = match cycle {
            0..=3 => &plain,
            c if c % 2 == 0 => &with_rule,
            _ => &plain,
        };
        setup.write_config(cfg);
        let d = Daemon::spawn_unready(&setup.config_path(), setup.base());
        let until = std::time::Instant::now() + Duration::from_millis(rng.random_range(100..700));
        while std::time::Instant::now() < until {
            try_catch_up(&mut m, &d);
            std::thread::sleep(Duration::from_millis(10));
        }
        d.kill9();
    }
    // Then converge through every phase in turn (without the rule, with
    // it, without it, with it), so purges, re-inclusions and their
    // resyncs all reach the feed whatever instants the kills hit on a slow
    // machine; read to the end, stop cleanly, compare with the store itself.
    for (phase, cfg) in [&plain, &with_rule, &plain, &with_rule]
        .into_iter()
        .enumerate()
    {
        setup.write_config(cfg);
        let d = setup.start();
        wait_resyncs_done(&d);
        d.wait_passes(1);
        m.catch_up(&d.client);
        if phase == 3 {
            assert_same(
                &m.snapshot(),
                &Snapshot::of_api(&d.client),
                "consumer vs a full read",
            );
        }
        assert!(d.terminate().0.success());
    }
    let store = setup.open_store();
    let want = Snapshot::of_store(&store);
    assert_same(&m.snapshot(), &want, "consumer vs the store after kill -9s");
    assert!(
        m.kinds.get("customer.purged").copied().unwrap_or(0) > 0,
        "{:?}",
        m.kinds
    );
    assert!(
        m.kinds.get("customer.included").copied().unwrap_or(0) > 0,
        "{:?}",
        m.kinds
    );
    assert!(
        m.kinds.get("resync.finished").copied().unwrap_or(0) > 0,
        "{:?}",
        m.kinds
    );
    println!(
        "feed kill9 ({backend:?}): consumer at event {}, {} events applied, {:?}",
        m.after,
        m.kinds.values().sum::<u64>(),
        m.kinds
    );
}

fn a_webhook_receiver_ends_with_the_store_after_failures_and_a_restart(backend: Backend) {
    let receiver = Receiver::start(Mode::Fail(503));
    let opts = DemoOptions {
        trickle: 20,
        ..small_demo()
    };
    let extra = webhook_toml(
        "warehouse",
        &receiver.url,
        "wh-secret",
        "allow_private_network = true",
    );
    let Some(setup) = Setup::demo_on(backend, "feed_daemon::webhooks", &opts, "1h", &extra) else {
        return;
    };
    std::fs::write(setup.dir.path().join("wh-secret"), format!("{SECRET}\n")).unwrap();
    let d = setup.start();
    d.wait_passes(1);
    // Down for a while: the endpoint is marked failing, in /status and
    // /metrics, and nothing is lost.
    let w = wait_webhook(&d.client, "warehouse", "failing", |w| {
        w["state"] == "failing"
    });
    assert!(w["failing_since"].is_string());
    assert!(w["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("HTTP 503"));
    let metrics = d.client.call("GET", "/metrics", None).1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("erpsync_webhook_failing{endpoint=\"warehouse\"} 1"),
        "{metrics}"
    );
    // Back up: it resumes from its cursor and catches up.
    receiver.set_mode(Mode::Accept);
    let w = wait_webhook(&d.client, "warehouse", "caught up", |w| {
        w["lag_events"] == 0 && w["state"] == "idle"
    });
    assert!(w["failing_since"].is_null());
    assert_same(
        &receiver.snapshot(),
        &Snapshot::of_api(&d.client),
        "after recovery",
    );

    // Changes while the receiver is down again, and a restart in between.
    receiver.set_mode(Mode::Fail(500));
    let picked: Vec<String> = Snapshot::of_api(&d.client)
        .customers
        .keys()
        .take(3)
        .map(|k| format!("demo:{}", k.1))
        .collect();
    d.client.post(
        "/api/v1/exclusions",
        &json!({"customers": picked, "reason": "moved to another collector"}),
    );
    let v = d.client.post("/api/v1/connectors/demo/sync", &json!({}));
    assert_eq!(v["started"], true);
    d.wait_passes(2);
    wait_webhook(&d.client, "warehouse", "retrying", |w| {
        w["consecutive_failures"].as_u64() > Some(0)
    });
    assert!(d.terminate().0.success());
    let d = setup.start();
    d.wait_passes(1);
    d.client
        .post("/api/v1/reinclusions", &json!({"customers": picked[..1]}));
    wait_resyncs_done(&d);
    receiver.set_mode(Mode::Accept);
    wait_webhook(&d.client, "warehouse", "caught up after the restart", |w| {
        w["lag_events"] == 0 && w["state"] == "idle"
    });
    assert_same(
        &receiver.snapshot(),
        &Snapshot::of_api(&d.client),
        "after a restart",
    );
    assert!(d.terminate().0.success());
    assert_same(
        &receiver.snapshot(),
        &Snapshot::of_store(&setup.open_store()),
        "receiver vs the store",
    );
    assert_eq!(receiver.bad_signatures(), 0, "every delivery verified");
    assert_eq!(receiver.out_of_order(), 0, "batches arrive in feed order");
    let kinds = receiver.kinds();
    for k in [
        "customer.purged",
        "customer.excluded",
        "customer.included",
        "resync.finished",
    ] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 0, "{k}: {kinds:?}");
    }
    println!(
        "webhooks ({backend:?}): {} requests, {} accepted, {} events, {} redelivered",
        receiver.requests(),
        receiver.accepted(),
        kinds.values().sum::<u64>(),
        receiver.duplicates()
    );

    // The command line: a signed ping, and the CSV exports.
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["webhooks", "test", "warehouse", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("accepted a signed webhook.ping (HTTP 204)"),
        "{stdout}"
    );
    assert_eq!(receiver.pings(), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["webhooks", "test", "nope", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no webhook `nope`"));
    receiver.set_mode(Mode::Fail(500));
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["webhooks", "test", "warehouse", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answered HTTP 500"), "{err}");
    assert!(!err.contains(SECRET) && !err.contains("/hook"), "{err}");

    let d = setup.start();
    let file = setup.dir.path().join("open.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["export", "open-invoices", "-o"])
        .arg(&file)
        .arg("--config")
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = std::fs::read_to_string(&file).unwrap().lines().count() - 1;
    let open = Snapshot::of_api(&d.client)
        .invoices
        .values()
        .filter(|r| r[7] == "open")
        .count();
    assert_eq!(rows, open);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("wrote {rows} open invoices")));
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["export", "customers", "--connector", "demo", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("connector,customer_id,name,"));
    assert!(d.terminate().0.success());
}

on_both_backends!(
    a_consumer_survives_kill9_of_the_daemon,
    a_webhook_receiver_ends_with_the_store_after_failures_and_a_restart,
);
