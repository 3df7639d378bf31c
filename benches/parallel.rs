//! First-sync wall time against the NetSuite mock with 100 ms per answer and
//! 1,000-row pages, at `max_concurrency` 1, 2, 4 and 8: parallel entity
//! streams, partitioned first syncs and one page of prefetch per stream,
//! through the real connector, engine and store (SQLite). Prints, per run,
//! the requests sent, the requests per 1,000 records, the wall time and the
//! floor `requests × latency / max_concurrency` with the ratio to it.
//!
//! Run: `cargo bench --bench parallel` (100k records, every concurrency, one
//! process each), `cargo bench --bench parallel -- 1000000` for 1M, or
//! `cargo bench --bench parallel -- RECORDS CONCURRENCY` for one run.

#[allow(dead_code)]
#[path = "../tests/it/netsuite_mock.rs"]
mod netsuite_mock;

use std::time::{Duration, Instant};

use erpsync::connectors::REGISTRY;
use netsuite_mock::{MockConfig, MockNetsuite};

const LATENCY: Duration = Duration::from_millis(100);

/// The answer latency: 100 ms, or `ERPSYNC_BENCH_LATENCY_MS` (0 shows
/// what the engine, the store and the in-process mock cost on their own).
fn latency() -> Duration {
    std::env::var("ERPSYNC_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(LATENCY)
}

async fn run(records: usize, max_concurrency: u32) {
    // The shares of a receivables ledger: 2% customers, 60% invoices, 33%
    // payments, 5% credit memos.
    let customers = records / 50;
    let invoices = records * 60 / 100;
    let credit_memos = records * 5 / 100;
    let payments = records - customers - invoices - credit_memos;
    let t = Instant::now();
    let mock = MockNetsuite::start(MockConfig {
        customers,
        invoices,
        payments,
        credit_memos,
        concurrency_limit: 64,
        latency: latency(),
        ..MockConfig::default()
    })
    .await;
    let generated = t.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let c = &mock.config().credentials;
    for (file, value) in [
        ("consumer_key", &c.consumer_key),
        ("consumer_secret", &c.consumer_secret),
        ("token_id", &c.token_id),
        ("token_secret", &c.token_secret),
    ] {
        std::fs::write(dir.path().join(file), format!("{value}\n")).unwrap();
    }
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
[[connectors]]
id = "ns"
kind = "netsuite"
rate_limit = {{ requests_per_second = 1000, burst = 100, max_concurrency = {max_concurrency} }}
[connectors.netsuite]
account_id = "{account}"
base_url = "{base}"
timezone = "{tz}"
consumer_key_file = "consumer_key"
consumer_secret_file = "consumer_secret"
token_id_file = "token_id"
token_secret_file = "token_secret"
page_size = 1000
"#,
        account = mock.config().account_id,
        base = mock.base_url(),
    );
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = erpsync::config::load(&path, &REGISTRY).unwrap();
    let app = erpsync::daemon::build(cfg).unwrap();
    let h = std::sync::Arc::clone(&app.connectors[0]);

    mock.reset_stats();
    let t = Instant::now();
    let stats = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let wall = t.elapsed();
    let seen = mock.stats();
    let total = customers + invoices + payments + credit_memos;
    assert_eq!(stats.received as usize, total, "every record read once");
    let requests = seen.requests;
    let floor = latency().as_secs_f64() * requests as f64 / max_concurrency as f64;
    println!(
        "| {total:>9} | {max_concurrency:>2} | {requests:>5} | {:>4.2} | {:>7.1} s | {:>7.1} s | {:>5.2}× | {:>2} | (mock generated in {:.0} s)",
        requests as f64 * 1000.0 / total as f64,
        wall.as_secs_f64(),
        floor,
        wall.as_secs_f64() / floor,
        seen.max_in_flight,
        generated.as_secs_f64(),
    );
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    match args.as_slice() {
        [records, c] => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(*records as usize, *c as u32));
        }
        other => {
            let records = other.first().copied().unwrap_or(100_000);
            println!("erpsync parallel first-sync benchmark (NetSuite mock, {} ms per answer, 1,000-row pages, SQLite, one process per run)", latency().as_millis());
            println!("| records | max_concurrency | requests | per 1,000 | wall | floor | wall / floor | max in flight |");
            println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
            for c in [1, 2, 4, 8] {
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([records.to_string(), c.to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
    }
}
