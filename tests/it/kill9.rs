//! Crash safety on both store backends: the real binary is killed with
//! SIGKILL at random instants (seeded, `ERPSYNC_KILL_SEED` to vary) of a
//! first sync, of mass purges (a rule excluding a fifth of the customers
//! switched on) and of resyncs (the rule switched off again, re-including
//! them), then restarted; the store must end up holding exactly the
//! upstream data, nothing of excluded customers, and every resync finished.

use std::time::{Duration, Instant};

use erpsync::connectors::demo::DemoOptions;
use erpsync::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::daemon::assert_equals_erp;
use crate::support::on_both_backends;
use crate::support::{small_demo, Backend, Daemon, Setup};

/// Kills per scenario.
const KILLS: usize = 30;

fn rng(salt: u64) -> StdRng {
    let seed: u64 = std::env::var("ERPSYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_130);
    StdRng::seed_from_u64(seed ^ salt)
}

/// Starts the daemon and kills it `delay` after the start.
fn start_and_kill(setup: &Setup, delay: Duration) {
    let d = Daemon::spawn_unready(&setup.config_path(), setup.base());
    std::thread::sleep(delay);
    d.kill9();
}

fn first_sync(backend: Backend) {
    // ~265 pages of 20 records, 12 ms each: a first sync of a few seconds,
    // longer than the 30 kill instants together.
    let opts = DemoOptions {
        page_size: 20,
        latency_ms: 12,
        ..small_demo()
    };
    let Some(setup) = Setup::demo_on(backend, "kill9::first_sync", &opts, "1h", "") else {
        return;
    };
    let mut rng = rng(1);
    for _ in 0..KILLS {
        start_and_kill(&setup, Duration::from_millis(rng.random_range(0..250)));
    }
    let synced_before_last_start = setup
        .open_store()
        .counter("demo", "synced_invoices")
        .unwrap();
    let d = setup.start();
    d.wait_passes(1);
    assert!(d.terminate().0.success());
    println!(
        "kill9 first sync ({backend:?}): {KILLS} kills; {synced_before_last_start} invoice writes were durable before the last start"
    );
    assert_equals_erp(&setup.open_store(), &opts);
}

const RULE: &str = "\n[exclusions]\nmax_new_exclusion_ratio = 1.0\n\n[[rules]]\nid = \"mid-market\"\ndescription = \"Mid-market accounts are handled elsewhere\"\nwhen = { field = \"custom.segment\", op = \"is\", value = \"mid\" }\n";

/// Every customer of the mid-market segment is excluded by the rule exactly
/// when it is on, and nothing is left to resync.
fn assert_rule_state(store: &Store, rule_on: bool) {
    let mut mid = 0;
    for c in store.customers(Some("demo"), None) {
        let c = c.unwrap();
        let is_mid = c.customer.custom.get("segment").map(String::as_str) == Some("mid");
        let by_rule = c.classification.reason == "rule:mid-market";
        if is_mid {
            mid += 1;
        }
        // Rules beat native exclusions; no manual decisions here.
        assert_eq!(
            by_rule,
            rule_on && is_mid,
            "customer {} classified {:?} with the rule {}",
            c.customer.external_id,
            c.classification,
            if rule_on { "on" } else { "off" }
        );
    }
    assert!(mid > 0, "the demo has mid-market customers");
    let unfinished: Vec<_> = erpsync::resync::queue::jobs(store)
        .unwrap()
        .into_iter()
        .filter(|j| j.state.is_active())
        .collect();
    assert!(unfinished.is_empty(), "resync jobs left: {unfinished:?}");
}

/// Waits until no resync job is queued or running.
fn wait_resyncs_done(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = d.client.get("/api/v1/resyncs?state=unfinished");
        if v["jobs"].as_array().is_some_and(|j| j.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "resyncs did not finish: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn purge_and_resync(backend: Backend) {
    // Resync pages of 10 records at 4 ms: re-including a fifth of 300
    // customers takes long enough to be killed in the middle.
    let opts = DemoOptions {
        page_size: 10,
        latency_ms: 4,
        ..small_demo()
    };
    let Some(setup) = Setup::demo_on(backend, "kill9::purge_and_resync", &opts, "1h", "") else {
        return;
    };
    let plain = std::fs::read_to_string(setup.config_path()).unwrap();
    let with_rule = format!("{plain}{RULE}");
    let d = setup.start();
    d.wait_passes(1);
    assert!(d.terminate().0.success());

    let mut rng = rng(2);
    let (mut purge_kills, mut resync_kills) = (0, 0);
    for cycle in 0..2 * KILLS {
        if cycle % 2 == 0 {
            // Mass purge: re-classification at start-up excludes them and
            // deletes their records, batch by batch.
            setup.write_config(&with_rule);
            start_and_kill(&setup, Duration::from_millis(rng.random_range(0..200)));
            purge_kills += 1;
        } else {
            // Re-inclusion queues their resync, fetched page by page.
            setup.write_config(&plain);
            start_and_kill(&setup, Duration::from_millis(rng.random_range(0..500)));
            resync_kills += 1;
        }
    }

    // Converge with the rule off: everything back, every job done.
    setup.write_config(&plain);
    let d = setup.start();
    wait_resyncs_done(&d);
    d.wait_passes(1);
    assert!(d.terminate().0.success());
    let store = setup.open_store();
    assert_rule_state(&store, false);
    assert_equals_erp(&store, &opts);
    drop(store);

    // And once more with the rule on, without kills: exactly their data gone.
    setup.write_config(&with_rule);
    let d = setup.start();
    d.wait_passes(1);
    assert!(d.terminate().0.success());
    let store = setup.open_store();
    assert_rule_state(&store, true);
    crate::daemon::assert_equals_erp_with(&store, &opts, &crate::daemon::rules_of(RULE));
    println!(
        "kill9 purge/resync ({backend:?}): {purge_kills} kills during mass purges, {resync_kills} during resyncs"
    );
}

on_both_backends!(first_sync, purge_and_resync);
