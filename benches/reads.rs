//! Read paths that walk many customers, at 20,000 demo customers (40,000
//! invoices, 20,000 transactions, the demo's rules and reminder scenarios):
//! the reminder summary and first candidate page, customer search pages
//! with their decisions, the excluded list, the impact of the rules and of
//! a mass exclusion. Each is timed as the daemon reads it (a few queries per
//! page or stretch of customers) and, for comparison, read the way it was
//! before: one query per customer (and per record for holds).
//!
//! Run: `cargo bench --bench reads` (SQLite, then PostgreSQL when
//! `ERPSYNC_TEST_PG` reaches a server), or `cargo bench --bench reads --
//! [sqlite|postgres] [CUSTOMERS]`.

use std::sync::Arc;
use std::time::Instant;

use erpsync::app::{App, ConnectorHandle};
use erpsync::config;
use erpsync::connectors::demo::{DemoConnector, DemoErp, DemoOptions};
use erpsync::connectors::Budget;
use erpsync::exclusion::{impact, manual, search};
use erpsync::model::Record;
use erpsync::reminders::{self, candidates, Filter};
use erpsync::store::testing::TestPg;
use erpsync::store::{Store, DEFAULT_CACHE_MB};
use rust_decimal::Decimal;

fn time<T>(label: &str, before: Option<f64>, f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    let s = t.elapsed().as_secs_f64();
    match before {
        Some(b) => println!(
            "  {label:<58} {:>9.1} ms   (one query per customer: {:>9.1} ms, x{:.0})",
            s * 1000.0,
            b * 1000.0,
            b / s.max(1e-9)
        ),
        None => println!("  {label:<58} {:>9.1} ms", s * 1000.0),
    }
    (v, s)
}

/// The reminder summary read one customer, one record and one flag at a
/// time, as the list read before (each customer then assessed the same
/// way): listed rows and money due.
fn summary_one_by_one(
    store: &Store,
    cfg: &erpsync::reminders::RemindersConfig,
    as_of: chrono::NaiveDate,
) -> (u64, Decimal) {
    let (mut rows, mut due) = (0u64, Decimal::ZERO);
    for sc in store.customers(None, None) {
        let sc = sc.unwrap();
        if sc.classification.excluded {
            continue;
        }
        let key = sc.key();
        let mut overdue = Vec::new();
        for r in store.records_of(&key).unwrap() {
            if let Record::Invoice(inv) = r {
                if candidates::is_overdue(&inv, as_of) {
                    let hold: Option<serde_json::Value> =
                        store.hold_flag(&key.connector, &inv.external_id).unwrap();
                    overdue.push((inv, hold.is_some()));
                }
            }
        }
        let stop: Option<serde_json::Value> = store.stop_flag(&key).unwrap();
        let overdue: Vec<candidates::OverdueInvoice<'_>> = overdue
            .iter()
            .map(|(inv, held)| candidates::OverdueInvoice {
                invoice: inv,
                held: inv.on_hold || *held,
            })
            .collect();
        let a = reminders::assess(
            cfg,
            &candidates::Facts {
                key: &key,
                customer: &sc.customer,
                excluded: None,
                overdue: &overdue,
                stopped: stop.is_some(),
            },
        );
        if let reminders::Assessment::Listed(c) = a {
            rows += 1;
            due += c.total_due.values().copied().sum::<Decimal>();
        }
    }
    (rows, due)
}

async fn run(postgres: bool, customers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let demo = include_str!("../config/demo.toml");
    let start = demo.find("\n[[rules]]").expect("demo.toml has rules");
    let cfg_text = format!(
        "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n\
         native_exclusions = [\"inactive\", \"intercompany\"]\n\
         rate_limit = {{ requests_per_second = 100000, burst = 100000, max_concurrency = 4 }}\n\
         [connectors.demo]\ncustomers = {customers}\ninvoices = {}\ntransactions = {}\npage_size = 1000\ntrickle = 0\n{}",
        customers * 2,
        customers,
        &demo[start..]
    );
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, cfg_text).unwrap();
    let cfg = config::load(&path, &erpsync::connectors::REGISTRY).unwrap();
    let opts = DemoOptions {
        customers,
        invoices: customers * 2,
        transactions: customers,
        page_size: 1000,
        trickle: 0,
        ..DemoOptions::default()
    };
    std::fs::create_dir_all(&cfg.daemon.state_dir).unwrap();
    let pg = if postgres {
        match TestPg::create("bench reads") {
            Some(p) => Some(p),
            None => {
                println!("postgres: no server at ERPSYNC_TEST_PG; skipped");
                return;
            }
        }
    } else {
        None
    };
    let store = match &pg {
        Some(p) => Store::open_location(&p.location(), DEFAULT_CACHE_MB).unwrap(),
        None => Store::open(&cfg.daemon.state_dir).unwrap(),
    };
    let cc = cfg.connectors[0].clone();
    let budget = Budget::new(cc.limits);
    let conn = DemoConnector::new(
        DemoErp::new(&opts),
        Arc::clone(&budget),
        1000,
        std::time::Duration::ZERO,
    );
    let h = Arc::new(ConnectorHandle::new(cc, Arc::new(conn), budget));
    let app = App::new(cfg, Arc::new(store), vec![Arc::clone(&h)], None);
    erpsync::sync::sync_pass(&app, &h).await.unwrap();
    let store = &app.store;
    let counts = store.classification_counts(None).unwrap();
    println!(
        "{}: {} customers ({} excluded), {} invoices, {} transactions",
        if postgres { "postgres" } else { "sqlite" },
        counts.total,
        counts.excluded,
        customers * 2,
        customers
    );
    let cfg = app.config();
    let as_of = reminders::today();

    // The reminder summary: the whole list, in stretches of 2,000 customers.
    let (reference, before) = time("reminder summary, one customer at a time", None, || {
        summary_one_by_one(store, &cfg.reminders, as_of)
    });
    let (listed, _) = time(
        "reminder summary (GET /api/v1/reminders/summary)",
        Some(before),
        || {
            let (mut rows, mut due) = (0u64, Decimal::ZERO);
            let mut after = None;
            loop {
                let s = reminders::scan(
                    store,
                    &cfg.reminders,
                    &Filter::default(),
                    as_of,
                    after.as_ref(),
                    usize::MAX,
                    2000,
                )
                .unwrap();
                for c in &s.items {
                    rows += 1;
                    due += c.total_due.values().copied().sum::<Decimal>();
                }
                if s.done {
                    return (rows, due);
                }
                after = s.last.or(after);
            }
        },
    );
    assert_eq!(
        listed, reference,
        "the set-based list says what the per-customer one says"
    );

    // The first candidate page (100 rows).
    time("reminder candidates, first page of 100", None, || {
        reminders::scan(
            store,
            &cfg.reminders,
            &Filter::default(),
            as_of,
            None,
            100,
            10_000,
        )
        .unwrap()
    });

    // Customer search: every page of 50 with its decisions.
    let pages = |with_decisions: bool| {
        let filter = search::Filter::new(None, None, None, None);
        let mut after = None;
        let mut n = 0;
        loop {
            let p = search::page(store, &filter, after.as_ref(), 50).unwrap();
            n += if with_decisions {
                p.summaries().len()
            } else {
                p.items
                    .iter()
                    .map(|sc| search::summary(store, sc).unwrap())
                    .collect::<Vec<_>>()
                    .len()
            };
            match p.next {
                Some(k) => after = Some(k),
                None => return n,
            }
        }
    };
    let (_, before) = time(
        "customer search, every page of 50, decision per customer",
        None,
        || pages(false),
    );
    time(
        "customer search, every page of 50 (GET /api/v1/customers)",
        Some(before),
        || pages(true),
    );

    // The excluded list and its CSV (one chunk per page).
    let excluded_ref = || {
        let filter = search::Filter::new(None, None, None, None);
        let mut n = 0;
        for sc in store.customers(None, None) {
            let sc = sc.unwrap();
            if filter.matches(&sc) {
                n += search::excluded_entry(store, app.as_ref(), &sc)
                    .unwrap()
                    .is_some() as u64;
            }
        }
        n
    };
    let (n_ref, before) = time("excluded list, one customer at a time", None, excluded_ref);
    let (n, _) = time(
        "excluded list, every page of 500 (excluded CSV)",
        Some(before),
        || {
            let filter = search::Filter::new(None, None, None, None);
            let mut after = None;
            let mut n = 0u64;
            loop {
                let (rows, next) =
                    search::excluded_page(store, app.as_ref(), &filter, after.as_ref(), 500)
                        .unwrap();
                n += rows.len() as u64;
                match next {
                    Some(k) => after = Some(k),
                    None => return n,
                }
            }
        },
    );
    assert_eq!(n, n_ref);

    // The impact of the rules in force (reload guard, rules preview) and of
    // a mass exclusion of every customer.
    let rules = app.rules();
    time(
        "impact of the rules (every customer classified)",
        None,
        || impact::of_rules(store, app.as_ref(), &rules).unwrap(),
    );
    let sel = manual::Selection {
        filter: search::Filter::new(None, None, None, None),
        condition: None,
    };
    time("impact of a mass exclusion of every customer", None, || {
        manual::mass_impact(store, &sel).unwrap()
    });
    drop(app);
    drop(pg);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let customers = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000usize);
    let backends: Vec<bool> = match args.iter().find(|a| *a == "sqlite" || *a == "postgres") {
        Some(b) => vec![b == "postgres"],
        None => vec![false, true],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for pg in backends {
        rt.block_on(run(pg, customers));
    }
}
