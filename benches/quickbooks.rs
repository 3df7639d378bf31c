//! QuickBooks Online connector against the in-process mock QuickBooks (the
//! one the integration tests use), through the real sync engine, ingest and
//! store: a full first sync, then an incremental pass after 1% of the
//! transactions changed and 100 were deleted. Prints requests per 1,000
//! records and records/s (the mock unthrottled, so the connector, engine and
//! store set the pace), and how long the same request count takes at the
//! kind's default budget (8 requests/s).
//!
//! Run: `cargo bench --bench quickbooks` (`-- 4` for four times the data).

#[path = "../tests/it/oauth_mock.rs"]
mod oauth_mock;
#[path = "../tests/it/quickbooks_mock.rs"]
mod quickbooks_mock;

use std::sync::Arc;
use std::time::{Duration, Instant};

use erpsync::app::{App, ConnectorHandle};
use erpsync::config;
use erpsync::connectors::quickbooks::{Quickbooks, QuickbooksOptions};
use erpsync::connectors::{oauth, Budget, BuildContext, ConnectorKind, REGISTRY};
use erpsync::credentials::StoreCredentials;
use erpsync::secrets::Secret;
use erpsync::store::Store;
use rust_decimal::Decimal;

use quickbooks_mock::{MockConfig, MockQbo, CREDIT_MEMO, INVOICE, PAYMENT};

async fn run(scale: usize) {
    let mock = MockQbo::start(MockConfig {
        customers: 2_000 * scale,
        invoices: 20_000 * scale,
        payments: 10_000 * scale,
        credit_memos: 5_000 * scale,
        requests_per_window: 1_000_000,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    mock.tokens.write_client_files(dir.path());
    let cfg_text = format!(
        "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"qbo\"\nkind = \"quickbooks\"\nrate_limit = {{ requests_per_second = 100000, burst = 100000, max_concurrency = 4 }}\n[connectors.quickbooks]\nrealm_id = \"{}\"\napi_base_url = \"{}\"\n[connectors.quickbooks.oauth]\ntoken_url = \"{}\"\nclient_id_file = \"client_id\"\nclient_secret_file = \"client_secret\"\n",
        mock.config().realm_id,
        mock.base_url(),
        mock.token_url()
    );
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, cfg_text).unwrap();
    let cfg = config::load(&path, &REGISTRY).unwrap();
    std::fs::create_dir_all(&cfg.daemon.state_dir).unwrap();
    let store = Arc::new(Store::open(&cfg.daemon.state_dir).unwrap());
    let creds = Arc::new(StoreCredentials::new(Arc::clone(&store), "qbo"));
    oauth::connect(&*creds, &Secret::new(mock.authorize()))
        .await
        .unwrap();
    let cc = cfg.connectors[0].clone();
    let budget = Budget::new(cc.limits);
    let options: &QuickbooksOptions = cc.options.get().unwrap();
    let conn = Quickbooks::build(
        options,
        BuildContext {
            id: "qbo".into(),
            base_dir: dir.path().to_path_buf(),
            config_file: path.clone(),
            budget: Arc::clone(&budget),
            credentials: creds,
        },
    )
    .unwrap();
    let h = Arc::new(ConnectorHandle::new(cc, conn, budget));
    let app = App::new(cfg, store, vec![Arc::clone(&h)], None);

    let records = 37_000 * scale;
    let t = Instant::now();
    let stats = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let full = t.elapsed();
    let requests = mock.stats().requests;
    let default_rate = Quickbooks::default_limits().requests_per_second;
    println!(
        "full sync   {:>7} records  {:>6.2} s  {:>7.0} records/s  {:>4} requests = {:.2} per 1,000 records  (at {} requests/s: {:.1} s of budget)",
        stats.received,
        full.as_secs_f64(),
        stats.received as f64 / full.as_secs_f64(),
        requests,
        requests as f64 * 1000.0 / records as f64,
        default_rate,
        requests as f64 / default_rate
    );

    // 1% of the transactions change, 100 are deleted.
    let mut changed = 0;
    for kind in [INVOICE, PAYMENT, CREDIT_MEMO] {
        let ids = mock.txn_ids(kind);
        for id in ids.iter().step_by(100) {
            mock.update_txn(*id, |t| t.balance = Decimal::ZERO);
            changed += 1;
        }
        for id in ids.iter().skip(1).step_by(ids.len() / 33 + 1).take(33) {
            mock.delete_txn(*id);
        }
    }
    mock.advance_clock(Duration::from_secs(1));
    mock.reset_stats();
    let t = Instant::now();
    let again = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let incr = t.elapsed();
    let requests = mock.stats().requests;
    println!(
        "incremental {:>7} changed, {:>3} deleted  {:>6.1} ms  {:>4} requests = {:.2} per 1,000 changes",
        again.received,
        again.deleted,
        incr.as_secs_f64() * 1000.0,
        requests,
        requests as f64 * 1000.0 / changed as f64
    );
}

fn main() {
    let scale: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    println!("erpsync QuickBooks Online benchmark (mock QuickBooks, page size 1000, engine and store included, scale {scale})");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(scale));
}
