//! Xero connector throughput against the mock Xero (the test suite's, in
//! the same process): a full first sync through the real connector, ingest
//! and store (a flushed write per page), an incremental pass with nothing
//! changed, and a resync of a customer set. Prints requests per 1,000
//! records and records/s. The mock renders every answer on the same two
//! cores, so the figures include its cost.
//!
//! Run: `cargo bench --bench xero`

#[path = "../tests/it/oauth_mock.rs"]
mod oauth_mock;
#[path = "../tests/it/xero_mock.rs"]
mod xero_mock;

use std::sync::Arc;
use std::time::Instant;

use erpsync::connectors::oauth;
use erpsync::connectors::Cursor;
use erpsync::credentials::StoreCredentials;
use erpsync::model::Entity;
use erpsync::secrets::Secret;
use erpsync::store::Store;
use xero_mock::{MockConfig, MockXero};

async fn run(cfg: MockConfig, page_size: u32) {
    let mock = MockXero::start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let options = mock.options_toml(dir.path(), &format!("page_size = {page_size}"));
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\n[http]\nlisten = \"127.0.0.1:0\"\n[[connectors]]\nid = \"xero\"\nkind = \"xero\"\nrate_limit = {{ requests_per_second = 100000, burst = 100000, max_concurrency = 5, requests_per_day = 1000000 }}\n[connectors.xero]\n{options}"
    );
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, text).unwrap();
    {
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let creds = StoreCredentials::new(Arc::clone(&store), "xero");
        oauth::connect(&creds, &Secret::new(mock.oauth().issue_refresh_token()))
            .await
            .unwrap();
        store.flush().unwrap();
    }
    let config = erpsync::config::load(&path, &erpsync::connectors::REGISTRY).unwrap();
    let app = erpsync::daemon::build(config).unwrap();
    let h = Arc::clone(&app.connectors[0]);

    let t = Instant::now();
    let stats = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let full = t.elapsed();
    let requests = h.budget.stats().poll_requests;
    let records = stats.received;
    let t = Instant::now();
    let again = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let incr = t.elapsed();
    let incr_requests = h.budget.stats().poll_requests - requests;
    println!(
        "{records:>7} records (page {page_size:>4})  full sync {:>6.2} s  {:>7.0} records/s  {requests:>4} requests = {:.2} per 1,000 records  | incremental pass, nothing changed: {incr_requests} requests, {:.0} ms, {} boundary records re-read",
        full.as_secs_f64(),
        records as f64 / full.as_secs_f64(),
        requests as f64 * 1000.0 / records as f64,
        incr.as_secs_f64() * 1000.0,
        again.received,
    );

    // Resync: the full history of 400 customers, in batches of 40.
    let db = mock.snapshot();
    let ids: Vec<String> = db
        .contacts
        .iter()
        .filter(|c| c.status == "ACTIVE" && !c.is_supplier_only)
        .take(400)
        .map(|c| c.id.clone())
        .collect();
    let before = h.budget.stats().resync_requests;
    let t = Instant::now();
    let mut got = 0usize;
    for batch in ids.chunks(h.connector.resync_batch_size()) {
        for entity in [Entity::Invoices, Entity::Transactions] {
            let mut cursor = Cursor::start();
            loop {
                let page = h
                    .connector
                    .fetch_records_for_customers(entity, batch, &cursor)
                    .await
                    .unwrap();
                got += page.items.len();
                cursor = page.next;
                if !page.has_more {
                    break;
                }
            }
        }
    }
    let rs = h.budget.stats().resync_requests - before;
    println!(
        "         resync of {} customers: {got} records, {rs} requests = {:.2} per 1,000 records, {:.0} records/s",
        ids.len(),
        rs as f64 * 1000.0 / got.max(1) as f64,
        got as f64 / t.elapsed().as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("erpsync Xero benchmark (mock Xero in-process, flush per page)");
    for (contacts, invoices, credit_notes, payments, page_size) in [
        (1_500, 6_000, 1_500, 4_000, 1000),
        (5_000, 25_000, 5_000, 15_000, 1000),
        (5_000, 25_000, 5_000, 15_000, 100),
    ] {
        let cfg = MockConfig {
            seed: 3,
            contacts,
            archived: contacts / 50,
            gdpr: contacts / 200,
            suppliers: contacts / 20,
            invoices,
            bills: invoices / 10,
            credit_notes,
            supplier_credit_notes: credit_notes / 10,
            payments,
            supplier_payments: payments / 10,
            ..MockConfig::default()
        };
        rt.block_on(run(cfg, page_size));
    }
}
