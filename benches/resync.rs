//! Resync benchmark: re-includes many customers against a rate-limited demo
//! connector, in-process with the real App, store, poller and resync worker,
//! and compares what it cost with what the data and the rate limit allow at
//! minimum. Also measures how much regular polling is delayed meanwhile.
//!
//! Run with `cargo bench --bench resync`. Every knob has a default matching
//! docs/resync.md and can be changed through the environment:
//! `BENCH_CUSTOMERS` (1000), `BENCH_INVOICES` (50000), `BENCH_TRANSACTIONS`
//! (20000), `BENCH_PAGE_SIZE` (500), `BENCH_RPS` (10), `BENCH_CONCURRENCY`
//! (4), `BENCH_LATENCY_MS` (100), `BENCH_POLL_EVERY_MS` (4000).
//!
//! Steps: (1) a first sync with a fast budget, every customer excluded by
//! hand, so the store knows all customers and the poll cursors are at the
//! end; (2) the daemon restarts with the rate-limited budget; a few poll
//! passes are timed with nothing else running; (3) every customer is
//! re-included in one action and the resync runs to the end while a poll
//! pass is triggered every few seconds; (4) the store is checked against the
//! ERP and the figures are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use erpsync::app::{App, ConnectorHandle};
use erpsync::classify;
use erpsync::connectors::demo::{DemoConnector, DemoErp, DemoOptions};
use erpsync::connectors::Budget;
use erpsync::exclusion;
use erpsync::model::{CustomerKey, Entity, ManualAction, ManualDecision, Record};
use erpsync::resync::progress;
use erpsync::resync::queue::{self, JobState};
use erpsync::store::Store;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Params {
    customers: usize,
    invoices: usize,
    transactions: usize,
    page_size: usize,
    rps: f64,
    concurrency: u32,
    latency_ms: u64,
    poll_every: Duration,
}

fn config_text(p: &Params, rps: f64, concurrency: u32, burst: u32) -> String {
    format!(
        r#"[daemon]
state_dir = "state"
log_level = "warn"
[http]
listen = "127.0.0.1:0"
[[connectors]]
id = "demo"
kind = "demo"
poll_interval = "1h"
rate_limit = {{ requests_per_second = {rps}, burst = {burst}, max_concurrency = {concurrency} }}
[connectors.demo]
customers = {}
invoices = {}
transactions = {}
page_size = {}
inactive_ratio = 0.0
intercompany_ratio = 0.0
trickle = 10
latency_ms = {}
"#,
        p.customers, p.invoices, p.transactions, p.page_size, p.latency_ms
    )
}

/// An App over `erp` with the limits written in `text`.
fn build_app(dir: &std::path::Path, text: &str, erp: &Arc<DemoErp>, latency: Duration) -> Arc<App> {
    let path = dir.join("erpsync.toml");
    std::fs::write(&path, text).unwrap();
    let config = erpsync::config::load(&path, &erpsync::connectors::REGISTRY)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&config.daemon.state_dir).unwrap();
    let store = Arc::new(Store::open(&config.daemon.state_dir).unwrap());
    let cc = config.connectors[0].clone();
    let budget = Budget::new(cc.limits);
    let page_size = cc
        .options
        .get::<erpsync::connectors::demo::DemoOptions>()
        .expect("the bench configures a demo connector")
        .page_size;
    let conn = DemoConnector::new(Arc::clone(erp), Arc::clone(&budget), page_size, latency);
    let handle = Arc::new(ConnectorHandle::new(cc, Arc::new(conn), budget));
    App::new(config, store, vec![handle], None)
}

/// Sets a manual decision on every customer and applies it; re-included
/// customers go into one resync job, whose id is returned.
async fn decide_all(app: &App, ids: &[String], action: ManualAction) -> Option<u64> {
    let native = app.connectors[0].native.clone();
    let now = chrono::Utc::now();
    app.store
        .write(|tx| {
            let rules = app.rules();
            let mut back = Vec::new();
            for id in ids {
                let key = CustomerKey::new("demo", id);
                let d = ManualDecision {
                    action,
                    actor: "bench".into(),
                    reason: "bench".into(),
                    at: now,
                };
                tx.set_manual_decision(&key, Some(&d))?;
                if let Some(mut sc) = tx.customer(&key)? {
                    let was = sc.classification.clone();
                    let new = classify::classify(&sc.customer, Some(&d), &rules, &native);
                    let t = exclusion::apply(
                        tx,
                        &mut sc,
                        Some(&was),
                        new,
                        "bench",
                        "bench",
                        now,
                        false,
                    )?;
                    if t.newly_included {
                        back.push(id.clone());
                    }
                }
            }
            queue::enqueue(tx, "demo", &back, "re-included: bench", now)
        })
        .await
        .unwrap()
}

/// Triggers one poll pass and waits for it; returns its duration.
async fn timed_pass(app: &App) -> Duration {
    let h = &app.connectors[0];
    let n = h.status().passes;
    let t = Instant::now();
    h.poll_now.notify_one();
    while h.status().passes <= n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.elapsed()
}

fn stats(v: &[Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let max = ms.iter().cloned().fold(0.0, f64::max);
    (mean, max)
}

fn main() {
    let p = Params {
        customers: env("BENCH_CUSTOMERS", 1000) as usize,
        invoices: env("BENCH_INVOICES", 50_000) as usize,
        transactions: env("BENCH_TRANSACTIONS", 20_000) as usize,
        page_size: env("BENCH_PAGE_SIZE", 500) as usize,
        rps: env("BENCH_RPS", 10) as f64,
        concurrency: env("BENCH_CONCURRENCY", 4) as u32,
        latency_ms: env("BENCH_LATENCY_MS", 100),
        poll_every: Duration::from_millis(env("BENCH_POLL_EVERY_MS", 4000)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(p));
}

async fn run(p: Params) {
    let dir = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        customers: p.customers,
        invoices: p.invoices,
        transactions: p.transactions,
        page_size: p.page_size,
        inactive_ratio: 0.0,
        intercompany_ratio: 0.0,
        trickle: 10,
        latency_ms: p.latency_ms,
        ..DemoOptions::default()
    };
    let erp = DemoErp::new(&opts);
    let ids: Vec<String> = erp.customers().into_iter().map(|c| c.external_id).collect();

    // (1) First sync, fast, with everybody excluded by hand.
    {
        let text = config_text(&p, 1e6, 8, 1_000_000);
        let app = build_app(dir.path(), &text, &erp, Duration::ZERO);
        decide_all(&app, &ids, ManualAction::Exclude).await;
        erpsync::sync::sync_pass(&app, &app.connectors[0])
            .await
            .unwrap();
        let counts = app.store.classification_counts(Some("demo")).unwrap();
        assert_eq!(counts.excluded, ids.len() as u64, "everybody excluded");
        assert_eq!(app.store.records(Some("demo")).count(), 0);
    }

    // (2) The daemon with the rate-limited budget; polling alone.
    let burst = p.rps.ceil() as u32;
    let text = config_text(&p, p.rps, p.concurrency, burst);
    let app = build_app(dir.path(), &text, &erp, Duration::from_millis(p.latency_ms));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(erpsync::daemon::run_with(
        Arc::clone(&app),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    let h = Arc::clone(&app.connectors[0]);
    while h.status().passes < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut idle = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle.push(timed_pass(&app).await);
    }

    // (3) Re-include everybody; poll every few seconds while it runs.
    let before = h.budget.stats();
    let started = Instant::now();
    let job = decide_all(&app, &ids, ManualAction::Include)
        .await
        .expect("a resync job");
    app.resync_wakeup.notify_waiters();
    let mut during = Vec::new();
    let mut first_eta: Option<(f64, f64)> = None;
    let mut next_poll = Instant::now() + p.poll_every / 2;
    loop {
        let j = queue::job(&app.store, job).unwrap().unwrap();
        if first_eta.is_none() && j.done * 10 >= j.total && j.done > 0 {
            if let Some(v) = progress::view_of(&app, job).unwrap() {
                if let Some(e) = v.eta {
                    first_eta = Some((started.elapsed().as_secs_f64(), e.seconds as f64));
                }
            }
        }
        match j.state {
            JobState::Done => break,
            JobState::Failed => panic!("resync failed: {:?}", j.error),
            _ => {}
        }
        if Instant::now() >= next_poll {
            let d = timed_pass(&app).await;
            if queue::job(&app.store, job).unwrap().unwrap().state != JobState::Done {
                during.push(d);
            }
            next_poll = Instant::now() + p.poll_every;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let after = h.budget.stats();
    let j = queue::job(&app.store, job).unwrap().unwrap();
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();

    // (4) Check and report.
    let mut inv = 0usize;
    let mut txn = 0usize;
    let mut want: Vec<Record> = erp
        .invoices()
        .into_iter()
        .map(Record::Invoice)
        .chain(erp.transactions().into_iter().map(Record::Transaction))
        .collect();
    for r in &want {
        match r.entity() {
            Entity::Invoices => inv += 1,
            _ => txn += 1,
        }
    }
    let mut got: Vec<Record> = app
        .store
        .records(Some("demo"))
        .map(|r| r.unwrap().1)
        .collect();
    let key = |r: &Record| (r.entity(), r.external_id().to_string());
    want.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(got.len(), want.len(), "record count after the resync");
    assert!(
        got == want,
        "the store differs from the ERP after the resync"
    );

    let requests = after.resync_requests - before.resync_requests;
    let poll_requests = after.poll_requests - before.poll_requests;
    let min_requests = inv.div_ceil(p.page_size) + txn.div_ceil(p.page_size);
    let floor = min_requests as f64 / p.rps;
    let (idle_mean, idle_max) = stats(&idle);
    let (dur_mean, dur_max) = stats(&during);

    println!();
    println!(
        "resync benchmark: {} customers re-included, {inv} invoices + {txn} transactions, page {}, batch {}",
        j.total,
        p.page_size,
        h.connector.resync_batch_size()
    );
    println!(
        "budget: {} req/s, max {} concurrent, resync share {}, latency {} ms, a poll pass every {:.1} s",
        p.rps,
        p.concurrency,
        h.budget.limits().resync_share,
        p.latency_ms,
        p.poll_every.as_secs_f64()
    );
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>7} {:>8}",
        "", "measured", "minimum", "ratio", "target"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>7.2} {:>8}",
        "upstream requests (resync)",
        requests,
        min_requests,
        requests as f64 / min_requests as f64,
        "<= 1.10"
    );
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>7.2} {:>8}",
        "wall time, s",
        wall,
        floor,
        wall / floor,
        "<= 1.20"
    );
    println!(
        "{:<34} {:>10.0} {:>10} {:>7} {:>8}",
        "records fetched",
        j.records_fetched,
        inv + txn,
        "",
        ""
    );
    println!(
        "{:<34} {:>10} {:>10} {:>7} {:>8}",
        "poll requests meanwhile", poll_requests, "", "", ""
    );
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "poll pass", "passes", "mean ms", "max ms"
    );
    println!(
        "{:<34} {:>10} {:>10.0} {:>10.0}",
        "without resync",
        idle.len(),
        idle_mean,
        idle_max
    );
    println!(
        "{:<34} {:>10} {:>10.0} {:>10.0}",
        "during resync",
        during.len(),
        dur_mean,
        dur_max
    );
    if let Some((at, eta)) = first_eta {
        println!();
        println!(
            "ETA at {:.1} s (first estimate, >= 10 % done): {:.0} s left; actually {:.1} s left",
            at,
            eta,
            wall - at
        );
    }
    println!(
        "retries: {}, rate-limited answers: {}",
        after.retries - before.retries,
        after.rate_limited - before.rate_limited
    );
}
