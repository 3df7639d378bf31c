//! The change feed on both backends: every change to served data has its
//! event (a consumer replaying the feed ends with exactly what the store
//! serves), sequence numbers, retention, webhook cursors, list filters.

use std::collections::BTreeMap;

use chrono::{NaiveDate, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

use super::*;
use crate::connectors::{Cursor, Page, NATIVE_INACTIVE};
use crate::ingest::{self, Ingest};
use crate::model::{Customer, Invoice, InvoiceStatus, Transaction, TransactionKind};
use crate::rules::RuleSet;

fn ts(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn cust(id: &str, inactive: bool, at: i64) -> Customer {
    Customer {
        external_id: id.into(),
        name: format!("Customer {id}"),
        email: Some(format!("{id}@example.com")),
        subsidiary: None,
        currency: Some("EUR".into()),
        balance: Decimal::new(12345, 2),
        inactive,
        intercompany: false,
        last_modified: ts(at),
        custom: Default::default(),
    }
}

fn inv(id: &str, c: &str, at: i64, status: InvoiceStatus, due_day: u32) -> Record {
    Record::Invoice(Invoice {
        external_id: id.into(),
        number: format!("N-{id}"),
        customer_id: c.into(),
        issue_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        due_date: NaiveDate::from_ymd_opt(2026, 2, due_day).unwrap(),
        currency: if due_day % 2 == 0 { "EUR" } else { "USD" }.into(),
        total: Decimal::new(10_050, 2),
        amount_due: Decimal::new(5_025, 2),
        status,
        on_hold: false,
        last_modified: ts(at),
    })
}

fn txn(id: &str, c: &str, at: i64) -> Record {
    Record::Transaction(Transaction {
        external_id: id.into(),
        kind: TransactionKind::Payment,
        customer_id: c.into(),
        date: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
        amount: Decimal::new(-1, 2),
        currency: "EUR".into(),
        last_modified: ts(at),
    })
}

fn page<T>(items: Vec<T>, deleted: Vec<String>) -> Page<T> {
    Page {
        items,
        deleted,
        quarantined: Vec::new(),
        next: Cursor::start(),
        has_more: false,
    }
}

type Key = (String, String);

/// What a downstream consumer keeps, built only from the feed.
#[derive(Debug, Default, PartialEq)]
struct Mirror {
    customers: BTreeMap<Key, Customer>,
    invoices: BTreeMap<Key, Record>,
    transactions: BTreeMap<Key, Record>,
    after: u64,
}

impl Mirror {
    fn apply(&mut self, e: &FeedEvent) {
        assert!(
            e.seq > self.after,
            "events in order: {} after {}",
            e.seq,
            self.after
        );
        self.after = e.seq;
        let k = (e.connector.clone(), e.entity_id.clone());
        match (e.kind, &e.data) {
            (EventType::CustomerUpserted | EventType::CustomerIncluded, EventData::Customer(c)) => {
                self.customers.insert(k, c.customer.clone());
            }
            (EventType::CustomerExcluded, _) => {
                self.customers.remove(&k);
            }
            (EventType::CustomerPurged, EventData::Json(j)) => {
                self.customers.remove(&k);
                let v: serde_json::Value = serde_json::from_str(j).unwrap();
                for (field, map) in [
                    ("invoices", &mut self.invoices),
                    ("transactions", &mut self.transactions),
                ] {
                    for id in v[field].as_array().unwrap() {
                        map.remove(&(e.connector.clone(), id.as_str().unwrap().to_string()));
                    }
                }
            }
            (EventType::InvoiceUpserted, EventData::Record(r, _)) => {
                self.invoices.insert(k, (**r).clone());
            }
            (EventType::TransactionUpserted, EventData::Record(r, _)) => {
                self.transactions.insert(k, (**r).clone());
            }
            (EventType::InvoiceDeleted, _) => {
                self.invoices.remove(&k);
            }
            (EventType::TransactionDeleted, _) => {
                self.transactions.remove(&k);
            }
            (EventType::CustomerPurged, other) => panic!("purge without ids: {other:?}"),
            // An upsert whose entity is no longer served; resync.finished.
            _ => {}
        }
    }

    fn catch_up(&mut self, store: &Store) {
        loop {
            let page = store.events_after(self.after, 37).unwrap();
            if page.is_empty() {
                return;
            }
            for e in &page {
                self.apply(e);
            }
        }
    }
}

/// Everything the store serves, read through the list queries.
fn served(store: &Store) -> Mirror {
    let mut m = Mirror::default();
    let mut after = None;
    loop {
        let p = store
            .included_customers_page(None, after.as_ref(), 50)
            .unwrap();
        if p.is_empty() {
            break;
        }
        for c in p {
            after = Some((c.connector.clone(), c.customer.external_id.clone()));
            m.customers.insert(
                (c.connector.clone(), c.customer.external_id.clone()),
                c.customer,
            );
        }
    }
    for invoices in [true, false] {
        let mut q = RecordQuery {
            limit: 41,
            ..Default::default()
        };
        loop {
            let p = if invoices {
                store.invoices_page(&q).unwrap()
            } else {
                store.transactions_page(&q).unwrap()
            };
            if p.is_empty() {
                break;
            }
            for r in p {
                let k = (r.connector.clone(), r.record.external_id().to_string());
                q.after = Some(k.clone());
                if invoices {
                    m.invoices.insert(k, r.record);
                } else {
                    m.transactions.insert(k, r.record);
                }
            }
        }
    }
    m
}

/// Every stored invoice and transaction, straight from the tables.
fn stored_records(store: &Store) -> (usize, usize) {
    let mut n = (0, 0);
    for r in store.records(None) {
        match r.unwrap().1 {
            Record::Invoice(_) => n.0 += 1,
            Record::Transaction(_) => n.1 += 1,
        }
    }
    n
}

async fn a_consumer_replaying_the_feed_holds_exactly_what_is_served(store: &Store) {
    let rules = RuleSet::default();
    let mut rng = StdRng::seed_from_u64(7);
    let mut mirror = Mirror::default();
    let mut clock = 0i64;
    let customers: Vec<String> = (0..12).map(|i| format!("C{i:02}")).collect();
    for round in 0..60 {
        clock += 10;
        let now = clock;
        let r: u32 = rng.random_range(0..100);
        let cust_items: Vec<Customer> = if r < 30 {
            // a few customers arrive or change, some inactive (excluded)
            (0..rng.random_range(1..5))
                .map(|_| {
                    let id = &customers[rng.random_range(0..customers.len())];
                    cust(id, rng.random_bool(0.3), now)
                })
                .collect()
        } else {
            Vec::new()
        };
        let deleted_customers: Vec<String> = if r >= 95 {
            vec![customers[rng.random_range(0..customers.len())].clone()]
        } else {
            Vec::new()
        };
        let recs: Vec<Record> = (0..rng.random_range(0..30))
            .map(|_| {
                let c = &customers[rng.random_range(0..customers.len())];
                let n = rng.random_range(0..40);
                let at = now - rng.random_range(0..25);
                if rng.random_bool(0.6) {
                    let status = [
                        InvoiceStatus::Open,
                        InvoiceStatus::Paid,
                        InvoiceStatus::Voided,
                    ][rng.random_range(0..3)];
                    inv(&format!("I{n:02}"), c, at, status, rng.random_range(1..28))
                } else {
                    txn(&format!("T{n:02}"), c, at)
                }
            })
            .collect();
        let deleted_records: Vec<String> = (0..rng.random_range(0..3))
            .map(|_| format!("I{:02}", rng.random_range(0..40)))
            .collect();
        store
            .write(|tx| {
                let ctx = Ingest {
                    connector: "demo",
                    rules: &rules,
                    native: &[NATIVE_INACTIVE],
                    now: ts(now),
                };
                ingest::customers(tx, &ctx, &page(cust_items, deleted_customers))?;
                let (invs, txns): (Vec<Record>, Vec<Record>) = recs
                    .into_iter()
                    .partition(|r| matches!(r, Record::Invoice(_)));
                ingest::records(tx, &ctx, Entity::Invoices, &page(invs, deleted_records))?;
                ingest::records(tx, &ctx, Entity::Transactions, &page(txns, vec![]))?;
                Ok(())
            })
            .await
            .unwrap();
        if round % 3 == 0 {
            mirror.catch_up(store);
            let want = served(store);
            assert_eq!(mirror.customers, want.customers, "round {round}");
            assert_eq!(mirror.invoices, want.invoices, "round {round}");
            assert_eq!(mirror.transactions, want.transactions, "round {round}");
        }
    }
    mirror.catch_up(store);
    let want = served(store);
    assert_eq!(
        (
            mirror.customers.len(),
            mirror.invoices.len(),
            mirror.transactions.len()
        ),
        (
            want.customers.len(),
            want.invoices.len(),
            want.transactions.len()
        )
    );
    assert_eq!(mirror.invoices, want.invoices);
    assert_eq!(mirror.transactions, want.transactions);
    // What is served is everything stored: ingest never stores records of
    // excluded customers.
    assert_eq!(
        stored_records(store),
        (want.invoices.len(), want.transactions.len())
    );
    assert!(!want.invoices.is_empty() && !want.transactions.is_empty());
    // A second consumer starting later from scratch ends the same.
    let mut late = Mirror::default();
    late.catch_up(store);
    assert_eq!(late.invoices, want.invoices);
    assert_eq!(late.customers, want.customers);
}

async fn sequence_numbers_are_consecutive_and_a_failed_write_emits_nothing(store: &Store) {
    assert_eq!(store.feed_bounds().unwrap(), FeedBounds::default());
    let rx = store.subscribe_feed();
    store
        .write(|tx| {
            tx.put_customer(&customer_of(cust("A", false, 1)))?;
            tx.upsert_records("demo", &[&inv("I1", "A", 1, InvoiceStatus::Open, 3)])?;
            tx.upsert_record("demo", &txn("T1", "A", 1), false)?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(*rx.borrow(), 3);
    let r = store
        .write(|tx| {
            tx.upsert_record("demo", &inv("I2", "A", 1, InvoiceStatus::Open, 3), false)?;
            tx.reject::<()>("no")
        })
        .await;
    assert!(r.is_err());
    assert_eq!(store.feed_bounds().unwrap().latest, 3);
    store
        .write(|tx| tx.remove_record("demo", Entity::Invoices, "I1", Some(ts(5))))
        .await
        .unwrap();
    let events = store.events_after(0, 100).unwrap();
    assert_eq!(
        events.iter().map(|e| (e.seq, e.kind)).collect::<Vec<_>>(),
        vec![
            (1, EventType::CustomerUpserted),
            (2, EventType::InvoiceUpserted),
            (3, EventType::TransactionUpserted),
            (4, EventType::InvoiceDeleted),
        ]
    );
    // The invoice is gone: its upsert event reads as having no data now.
    assert_eq!(events[1].data, EventData::None);
    match &events[2].data {
        EventData::Record(r, _) => assert_eq!(**r, txn("T1", "A", 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.events_after(2, 1).unwrap()[0].seq, 3);
    assert_eq!(*rx.borrow(), 4);
}

fn customer_of(c: Customer) -> StoredCustomer {
    StoredCustomer {
        connector: "demo".into(),
        customer: c,
        classification: Classification::included(),
        classified_at: ts(0),
        first_seen: ts(0),
    }
}

async fn excluding_a_customer_purges_by_name_and_hides_its_old_events(store: &Store) {
    store
        .write(|tx| {
            tx.put_customer(&customer_of(cust("A", false, 1)))?;
            tx.put_customer(&customer_of(cust("B", false, 1)))?;
            tx.upsert_record("demo", &inv("I1", "A", 1, InvoiceStatus::Open, 3), false)?;
            tx.upsert_record("demo", &txn("T1", "A", 1), false)?;
            tx.upsert_record("demo", &inv("I2", "B", 1, InvoiceStatus::Open, 3), false)?;
            Ok(())
        })
        .await
        .unwrap();
    let mut a = customer_of(cust("A", true, 2));
    store
        .write(|tx| {
            let was = Classification::included();
            let new = Classification {
                excluded: true,
                source: Some(crate::model::ExclusionSource::Manual),
                reason: "manual".into(),
            };
            crate::exclusion::apply(tx, &mut a, Some(&was), new, "t", "test", ts(2), false)?;
            Ok(())
        })
        .await
        .unwrap();
    let events = store.events_after(5, 10).unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EventType::CustomerPurged, EventType::CustomerExcluded]
    );
    let EventData::Json(j) = &events[0].data else {
        panic!("{:?}", events[0]);
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(j).unwrap(),
        serde_json::json!({"invoices": ["I1"], "transactions": ["T1"]})
    );
    // Nothing of A is served any more, not even through its old events.
    for e in store.events_after(0, 10).unwrap() {
        if e.entity_id == "A" || e.entity_id == "I1" || e.entity_id == "T1" {
            assert!(
                matches!(e.data, EventData::None | EventData::Json(_)),
                "{e:?}"
            );
        }
    }
}

async fn retention_drops_a_prefix_by_size_and_age(store: &Store) {
    for i in 0..5 {
        store
            .write(|tx| {
                for j in 0..10 {
                    tx.put_customer(&customer_of(cust(&format!("C{i}{j}"), false, 1)))?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    assert_eq!(store.feed_bounds().unwrap().latest, 50);
    let now = Utc::now();
    // Nothing is old yet; keep the newest 22.
    let n = store
        .expire_events(chrono::Duration::days(1), 22, now)
        .await
        .unwrap();
    assert_eq!(n, 28);
    let b = store.feed_bounds().unwrap();
    assert_eq!((b.latest, b.expired_through), (50, 28));
    assert_eq!(store.events_after(0, 1).unwrap()[0].seq, 29);
    // Everything is older than a day from tomorrow's point of view.
    let n = store
        .expire_events(
            chrono::Duration::days(1),
            1000,
            now + chrono::Duration::days(2),
        )
        .await
        .unwrap();
    assert_eq!(n, 22);
    assert_eq!(store.feed_bounds().unwrap().expired_through, 50);
    assert!(store.events_after(0, 10).unwrap().is_empty());
    // New events continue the sequence.
    store
        .write(|tx| tx.put_customer(&customer_of(cust("Z", false, 1))))
        .await
        .unwrap();
    assert_eq!(store.events_after(50, 10).unwrap()[0].seq, 51);
}

async fn webhook_cursors_round_trip(store: &Store) {
    assert_eq!(store.webhook_cursor("wh").unwrap(), None);
    let c = WebhookCursor {
        after_seq: 42,
        updated_at: ts(5),
        failing_since: Some(ts(3)),
        last_error: Some("HTTP 500".into()),
    };
    store.set_webhook_cursor("wh", &c).await.unwrap();
    assert_eq!(store.webhook_cursor("wh").unwrap(), Some(c));
    let c2 = WebhookCursor {
        after_seq: 50,
        updated_at: ts(6),
        failing_since: None,
        last_error: None,
    };
    store.set_webhook_cursor("wh", &c2).await.unwrap();
    assert_eq!(store.webhook_cursor("wh").unwrap(), Some(c2));
    assert_eq!(
        store.feed_bounds().unwrap().latest,
        0,
        "cursors are not events"
    );
}

async fn list_filters_and_key_paging(store: &Store) {
    store
        .write(|tx| {
            tx.put_customer(&customer_of(cust("A", false, 1)))?;
            tx.put_customer(&customer_of(cust("B", false, 1)))?;
            let mut x = customer_of(cust("X", true, 1));
            x.classification = Classification {
                excluded: true,
                source: Some(crate::model::ExclusionSource::Native),
                reason: "native:inactive".into(),
            };
            tx.put_customer(&x)?;
            for i in 0..20u32 {
                let c = if i % 2 == 0 { "A" } else { "B" };
                let status = if i < 12 {
                    InvoiceStatus::Open
                } else {
                    InvoiceStatus::Paid
                };
                tx.upsert_record(
                    "demo",
                    &inv(&format!("I{i:02}"), c, 1, status, i + 1),
                    false,
                )?;
            }
            // A record of an excluded customer that got in by mistake is
            // still never listed.
            tx.upsert_record("demo", &inv("IX", "X", 1, InvoiceStatus::Open, 1), false)?;
            tx.upsert_record("demo", &txn("T1", "A", 1), false)?;
            tx.upsert_record("demo", &txn("TX", "X", 1), false)?;
            Ok(())
        })
        .await
        .unwrap();
    let ids = |q: &RecordQuery| -> Vec<String> {
        store
            .invoices_page(q)
            .unwrap()
            .into_iter()
            .map(|r| r.record.external_id().to_string())
            .collect()
    };
    let q = |f: &dyn Fn(&mut RecordQuery)| {
        let mut q = RecordQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    assert_eq!(ids(&q(&|_| {})).len(), 20);
    assert_eq!(
        ids(&q(
            &|q| q.status = Some(StatusFilter::Is(InvoiceStatus::Paid))
        )),
        (12..20).map(|i| format!("I{i:02}")).collect::<Vec<_>>()
    );
    // Open and due before Feb 6: I00..I04 (due Feb 1..5).
    assert_eq!(
        ids(&q(&|q| q.status = Some(StatusFilter::OverdueOn(
            NaiveDate::from_ymd_opt(2026, 2, 6).unwrap()
        )))),
        (0..5).map(|i| format!("I{i:02}")).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&q(&|q| {
            q.connector = Some("demo".into());
            q.customer = Some("B".into());
            q.due_from = NaiveDate::from_ymd_opt(2026, 2, 4);
            q.due_to = NaiveDate::from_ymd_opt(2026, 2, 8);
        })),
        vec!["I03", "I05", "I07"]
    );
    // due day i+1 odd (USD) for even i
    assert_eq!(ids(&q(&|q| q.currency = Some("USD".into()))).len(), 10);
    assert_eq!(
        ids(&q(
            &|q| q.changed_since = Some(Utc::now() + chrono::Duration::hours(1))
        ))
        .len(),
        0
    );
    assert_eq!(
        ids(&q(
            &|q| q.changed_since = Some(Utc::now() - chrono::Duration::hours(1))
        ))
        .len(),
        20
    );
    // Paging by key: after I09 of connector demo, with and without the
    // connector filter.
    for conn in [None, Some("demo".to_string())] {
        let got = ids(&q(&|q| {
            q.connector = conn.clone();
            q.after = Some(("demo".into(), "I09".into()));
            q.limit = 3;
        }));
        assert_eq!(got, vec!["I10", "I11", "I12"]);
    }
    let t = store
        .transactions_page(&RecordQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].customer_name, "Customer A");
    let custs = store.included_customers_page(None, None, 10).unwrap();
    assert_eq!(
        custs
            .iter()
            .map(|c| c.customer.external_id.as_str())
            .collect::<Vec<_>>(),
        vec!["A", "B"]
    );
    let after = ("demo".to_string(), "A".to_string());
    assert_eq!(
        store
            .included_customers_page(Some("demo"), Some(&after), 10)
            .unwrap()
            .len(),
        1
    );
}

use crate::store::testing::{on_both_backends, Fixture};

on_both_backends!(
    "store::feed::";
    a_consumer_replaying_the_feed_holds_exactly_what_is_served,
    sequence_numbers_are_consecutive_and_a_failed_write_emits_nothing,
    excluding_a_customer_purges_by_name_and_hides_its_old_events,
    retention_drops_a_prefix_by_size_and_age,
    webhook_cursors_round_trip,
    list_filters_and_key_paging,
);

/// A store written by a release without the feed gets a feed that starts
/// after its data: a consumer from the beginning is told to do a full read.
#[test]
fn upgrading_a_store_with_data_marks_the_feed_as_starting_after_it() {
    use super::schema::{render, Dialect, MIGRATIONS};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SQLITE_FILE);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&super::schema::migrations_table(Dialect::Sqlite))
            .unwrap();
        c.execute_batch(&render(MIGRATIONS[0].1, Dialect::Sqlite))
            .unwrap();
        c.execute_batch(
            "INSERT INTO schema_migrations VALUES (1, '2026-01-01T00:00:00.000000000Z');
             INSERT INTO customers VALUES ('demo', 'A', 'A', NULL, NULL, 'EUR', '0', 0, 0,
               '2026-01-01T00:00:00.000000000Z', '{}', 0, NULL, 'included',
               '2026-01-01T00:00:00.000000000Z', '2026-01-01T00:00:00.000000000Z');
             INSERT INTO invoices VALUES ('demo', 'I1', 'A', 'N1', '2026-01-01', '2026-02-01',
               'EUR', '10', '10', 'open', 0, '2026-01-03T00:00:00.000000000Z');",
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.feed_bounds().unwrap(),
        FeedBounds {
            latest: 1,
            expired_through: 1
        }
    );
    let listed = store
        .invoices_page(&RecordQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed[0].changed_at, listed[0].record.last_modified());
    // An empty store starts its feed at the beginning.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        Store::open(empty.path()).unwrap().feed_bounds().unwrap(),
        FeedBounds::default()
    );
}

/// The list filters use indexes on SQLite (no full scan of the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_use_indexes_on_sqlite() {
    let f = Fixture::sqlite();
    let day = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
    let base = |f: &dyn Fn(&mut RecordQuery)| {
        let mut q = RecordQuery {
            connector: Some("demo".into()),
            limit: 100,
            after: Some(("demo".into(), "I1".into())),
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let cases: Vec<(&str, RecordQuery)> = vec![
        ("connector", base(&|_| {})),
        ("customer", base(&|q| q.customer = Some("A".into()))),
        (
            "status",
            base(&|q| q.status = Some(StatusFilter::Is(InvoiceStatus::Paid))),
        ),
        (
            "overdue",
            base(&|q| q.status = Some(StatusFilter::OverdueOn(day))),
        ),
        ("currency", base(&|q| q.currency = Some("EUR".into()))),
        ("changed_since", base(&|q| q.changed_since = Some(ts(0)))),
    ];
    for (name, q) in cases {
        let plan = f.store.explain_records_page(&q, true).unwrap().join(" | ");
        assert!(plan.contains("SEARCH i USING"), "{name}: {plan}");
        assert!(!plan.contains("SCAN i"), "{name}: {plan}");
        assert!(
            plan.contains("SEARCH c USING") && plan.contains("id=?)"),
            "{name}: the customer is looked up by key: {plan}"
        );
        println!("{name}: {plan}");
    }
}
