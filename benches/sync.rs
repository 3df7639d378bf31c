//! Sync throughput and memory: a full first sync of the demo ERP at 72k,
//! 288k and 1M records, on SQLite and on PostgreSQL, through the real
//! connector, ingest and store (one durable transaction per page), then an
//! incremental pass. Prints records/s and the resident-memory growth during
//! the sync, which should not grow with the data size, and the CPU time and
//! bytes written during the sync (less sensitive to a busy machine than the
//! wall-clock rate).
//!
//! Run: `cargo bench --bench sync` (every size on both backends, one process
//! each), or `cargo bench --bench sync -- SCALE [sqlite|postgres]` for one
//! (SCALE 1 = 72k records). PostgreSQL is the server of `ERPSYNC_TEST_PG`
//! (a database is created and dropped); without one it is skipped.

use std::sync::Arc;
use std::time::Instant;

use erpsync::app::{App, ConnectorHandle};
use erpsync::config;
use erpsync::connectors::demo::{DemoConnector, DemoErp, DemoOptions};
use erpsync::connectors::Budget;
use erpsync::store::testing::TestPg;
use erpsync::store::{Store, DEFAULT_CACHE_MB};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process used so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Bytes this process wrote through the file system (`/proc/self/io`).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("wchar:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn run(customers: usize, invoices: usize, transactions: usize, postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg_text = format!(
        "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"demo\"\nkind = \"demo\"\nrate_limit = {{ requests_per_second = 100000, burst = 100000, max_concurrency = 4 }}\n[connectors.demo]\ncustomers = {customers}\ninvoices = {invoices}\ntransactions = {transactions}\npage_size = 1000\ntrickle = 0\n"
    );
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, cfg_text).unwrap();
    let cfg = config::load(&path, &erpsync::connectors::REGISTRY).unwrap();
    let opts = DemoOptions {
        customers,
        invoices,
        transactions,
        page_size: 1000,
        trickle: 0,
        ..DemoOptions::default()
    };
    let erp = DemoErp::new(&opts);
    std::fs::create_dir_all(&cfg.daemon.state_dir).unwrap();
    let pg = if postgres {
        match TestPg::create("bench sync") {
            Some(p) => Some(p),
            None => return,
        }
    } else {
        None
    };
    let store = match &pg {
        Some(p) => Store::open_location(&p.location(), DEFAULT_CACHE_MB).unwrap(),
        None => Store::open(&cfg.daemon.state_dir).unwrap(),
    };
    let store = Arc::new(store);
    let cc = cfg.connectors[0].clone();
    let budget = Budget::new(cc.limits);
    let conn = DemoConnector::new(erp, Arc::clone(&budget), 1000, std::time::Duration::ZERO);
    let h = Arc::new(ConnectorHandle::new(cc, Arc::new(conn), budget));
    let app = App::new(cfg, store, vec![Arc::clone(&h)], None);

    let rss_before = rss_kib();
    let (cpu_before, written_before) = (cpu_secs(), written_bytes());
    let t = Instant::now();
    let stats = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let full = t.elapsed();
    let rss_after = rss_kib();
    let cpu = cpu_secs() - cpu_before;
    let written = written_bytes() - written_before;
    let t = Instant::now();
    let again = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let incr = t.elapsed();
    let total = customers + invoices + transactions;
    println!(
        "{:<8} {:>9} records  full sync {:>7.2} s  {:>8.0} records/s  {:>5} requests  RSS growth {:>7} KiB  CPU {:>6.2} s  written {:>6} MiB ({:.1} KiB/record)  | incremental pass {:>6.1} ms, {} records read",
        if postgres { "postgres" } else { "sqlite" },
        total,
        full.as_secs_f64(),
        stats.received as f64 / full.as_secs_f64(),
        h.budget.stats().poll_requests,
        rss_after.saturating_sub(rss_before),
        cpu,
        written / (1 << 20),
        written as f64 / 1024.0 / total as f64,
        incr.as_secs_f64() * 1000.0,
        again.received
    );
    drop(app);
    drop(pg);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale: Option<usize> = args.iter().find_map(|a| a.parse().ok());
    let backend = args
        .iter()
        .find(|a| *a == "sqlite" || *a == "postgres")
        .cloned();
    match (scale, backend) {
        (Some(s), Some(b)) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(2_000 * s, 40_000 * s, 30_000 * s, b == "postgres"));
        }
        _ => {
            println!("erpsync sync benchmark (demo connector, page size 1000, one transaction per page, one process per size)");
            // One size per process, so one run's freed memory does not hide
            // the next one's growth.
            let scales = match scale {
                Some(s) => vec![s],
                None => vec![1, 4, 14],
            };
            for b in ["sqlite", "postgres"] {
                for s in &scales {
                    let status = std::process::Command::new(std::env::current_exe().unwrap())
                        .args([s.to_string(), b.to_string()])
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            }
        }
    }
}
