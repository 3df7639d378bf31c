//! The change feed's speed on SQLite and PostgreSQL: events written per
//! second (pages of 1,000 invoice upserts, one transaction each, every
//! record with its event), events read per second through the store
//! (`events_after`, each joined with its current row) and as `/changes`
//! JSON, and the query plans of the list filters on a populated store.
//!
//! Run: `cargo bench --bench feed` (both backends), or `cargo bench --bench
//! feed -- sqlite|postgres [RECORDS]` (default 200,000). PostgreSQL is the
//! server of `ERPSYNC_TEST_PG`; without one it is skipped.

use std::time::Instant;

use chrono::{NaiveDate, TimeZone, Utc};
use erpsync::model::{Classification, Customer, Invoice, InvoiceStatus, Record, Timestamp};
use erpsync::read::view::EventView;
use erpsync::store::testing::TestPg;
use erpsync::store::{RecordQuery, StatusFilter, Store, StoredCustomer, DEFAULT_CACHE_MB};
use rust_decimal::Decimal;

const PAGE: usize = 1000;
const CUSTOMERS: usize = 2000;

fn ts(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_750_000_000 + s, 0).unwrap()
}

fn invoice(i: usize) -> Record {
    let day = (i % 28) as u32 + 1;
    Record::Invoice(Invoice {
        external_id: format!("INV{i:08}"),
        number: format!("N-{i}"),
        customer_id: format!("C{:05}", i % CUSTOMERS),
        issue_date: NaiveDate::from_ymd_opt(2026, 1, day).unwrap(),
        due_date: NaiveDate::from_ymd_opt(2026, 2, day).unwrap(),
        currency: ["EUR", "USD", "GBP"][i % 3].into(),
        total: Decimal::new(12_345 + i as i64, 2),
        amount_due: Decimal::new(2_345, 2),
        status: if i % 4 == 0 {
            InvoiceStatus::Paid
        } else {
            InvoiceStatus::Open
        },
        on_hold: false,
        last_modified: ts(i as i64),
    })
}

async fn run(postgres: bool, records: usize) {
    let dir = tempfile::tempdir().unwrap();
    let pg = if postgres {
        match TestPg::create("bench feed") {
            Some(p) => Some(p),
            None => return,
        }
    } else {
        None
    };
    let store = match &pg {
        Some(p) => Store::open_location(&p.location(), DEFAULT_CACHE_MB).unwrap(),
        None => Store::open(dir.path()).unwrap(),
    };
    let name = if postgres { "postgres" } else { "sqlite" };
    store
        .write(|tx| {
            for c in 0..CUSTOMERS {
                tx.put_customer(&StoredCustomer {
                    connector: "demo".into(),
                    customer: Customer {
                        external_id: format!("C{c:05}"),
                        name: format!("Customer {c}"),
                        email: None,
                        subsidiary: None,
                        currency: Some("EUR".into()),
                        balance: Decimal::ZERO,
                        inactive: false,
                        intercompany: false,
                        last_modified: ts(0),
                        custom: Default::default(),
                    },
                    classification: Classification::included(),
                    classified_at: ts(0),
                    first_seen: ts(0),
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();

    // Writing: pages of 1,000 upserts, each record with its event.
    let t = Instant::now();
    let mut i = 0;
    while i < records {
        let page: Vec<Record> = (i..(i + PAGE).min(records)).map(invoice).collect();
        let refs: Vec<&Record> = page.iter().collect();
        store
            .write(|tx| tx.upsert_records("demo", &refs).map(|_| ()))
            .await
            .unwrap();
        i += PAGE;
    }
    let write = t.elapsed();
    let latest = store.feed_bounds().unwrap().latest;

    // Reading through the store, then as /changes JSON.
    let t = Instant::now();
    let (mut after, mut n) = (0, 0u64);
    loop {
        let page = store.events_after(after, PAGE).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        n += page.len() as u64;
    }
    let read = t.elapsed();
    let t = Instant::now();
    let (mut after, mut bytes) = (0, 0usize);
    let today = Utc::now().date_naive();
    loop {
        let page = store.events_after(after, PAGE).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        let views: Vec<EventView> = page.into_iter().map(|e| EventView::of(e, today)).collect();
        bytes += serde_json::to_vec(&views).unwrap().len();
    }
    let json = t.elapsed();
    println!(
        "{name:<8} {latest:>8} events  written {:>8.0} events/s (with their records, {:.2} s)  read {:>8.0} events/s  as /changes JSON {:>8.0} events/s ({} bytes/event)",
        latest as f64 / write.as_secs_f64(),
        write.as_secs_f64(),
        n as f64 / read.as_secs_f64(),
        n as f64 / json.as_secs_f64(),
        bytes / n.max(1) as usize,
    );

    // The list filters on the populated store, with current table
    // statistics (PostgreSQL's autovacuum gathers them after a large load;
    // here it would not have run yet).
    if let Some(p) = &pg {
        erpsync::store::pg::admin_exec(&p.url, "ANALYZE").unwrap();
    }
    let base = |f: &dyn Fn(&mut RecordQuery)| {
        let mut q = RecordQuery {
            connector: Some("demo".into()),
            after: Some(("demo".into(), "INV00001000".into())),
            limit: 1000,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let day = NaiveDate::from_ymd_opt(2026, 2, 10).unwrap();
    let cases: Vec<(&str, RecordQuery)> = vec![
        ("connector only", base(&|_| {})),
        ("customer", base(&|q| q.customer = Some("C00042".into()))),
        (
            "status=paid",
            base(&|q| q.status = Some(StatusFilter::Is(InvoiceStatus::Paid))),
        ),
        (
            "status=overdue",
            base(&|q| q.status = Some(StatusFilter::OverdueOn(day))),
        ),
        ("currency", base(&|q| q.currency = Some("GBP".into()))),
        (
            "modified_since (recent)",
            base(&|q| q.changed_since = Some(Utc::now() - chrono::Duration::seconds(1))),
        ),
        (
            "due range",
            base(&|q| {
                q.due_from = Some(day);
                q.due_to = Some(day);
            }),
        ),
    ];
    for (what, q) in cases {
        let t = Instant::now();
        let rows = store.invoices_page(&q).unwrap().len();
        let took = t.elapsed();
        let plan = store.explain_records_page(&q, true).unwrap();
        println!(
            "  {name} {what:<24} {rows:>5} rows {:>8.2} ms  plan: {}",
            took.as_secs_f64() * 1000.0,
            plan.iter()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    drop(store);
    drop(pg);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let backends: Vec<&str> = match args.iter().find(|a| *a == "sqlite" || *a == "postgres") {
        Some(b) => vec![b.as_str()],
        None => vec!["sqlite", "postgres"],
    };
    println!("erpsync change-feed benchmark ({records} invoice upserts in pages of {PAGE})");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for b in backends {
        rt.block_on(run(b == "postgres", records));
    }
}
