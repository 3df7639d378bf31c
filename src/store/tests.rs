use super::*;
use crate::model::{Customer, Invoice, InvoiceStatus, Transaction, TransactionKind};
use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

fn ts(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn inv(id: &str, cust: &str, at: i64, due: i64) -> Record {
    Record::Invoice(Invoice {
        external_id: id.into(),
        number: format!("N-{id}"),
        customer_id: cust.into(),
        issue_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        due_date: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        currency: "USD".into(),
        total: Decimal::new(10000, 2),
        amount_due: Decimal::new(due, 2),
        status: InvoiceStatus::Open,
        on_hold: false,
        last_modified: ts(at),
    })
}

fn pmt(id: &str, cust: &str, at: i64) -> Record {
    Record::Transaction(Transaction {
        external_id: id.into(),
        kind: TransactionKind::Payment,
        customer_id: cust.into(),
        date: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
        amount: Decimal::new(500, 2),
        currency: "USD".into(),
        last_modified: ts(at),
    })
}

fn customer(id: &str) -> StoredCustomer {
    StoredCustomer {
        connector: "demo".into(),
        customer: Customer {
            external_id: id.into(),
            name: format!("Customer {id}"),
            email: None,
            subsidiary: None,
            currency: Some("USD".into()),
            balance: Decimal::ZERO,
            inactive: false,
            intercompany: false,
            last_modified: ts(0),
            custom: Default::default(),
        },
        classification: Classification::included(),
        classified_at: ts(0),
        first_seen: ts(0),
    }
}

fn key(id: &str) -> CustomerKey {
    CustomerKey::new("demo", id)
}

#[tokio::test]
async fn newer_version_wins_and_moves_between_customers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            assert_eq!(
                tx.upsert_record("demo", &inv("I1", "A", 10, 100), false)?,
                tx::Upsert::Inserted
            );
            // older version arriving later is refused
            assert_eq!(
                tx.upsert_record("demo", &inv("I1", "A", 5, 1), false)?,
                tx::Upsert::Stale
            );
            // newer version under another customer moves it
            assert_eq!(
                tx.upsert_record("demo", &inv("I1", "B", 20, 50), false)?,
                tx::Upsert::Updated
            );
            Ok(())
        })
        .await
        .unwrap();
    assert!(store.records_of(&key("A")).unwrap().is_empty());
    let b = store.records_of(&key("B")).unwrap();
    assert_eq!(b, vec![inv("I1", "B", 20, 50)]);
}

#[tokio::test]
async fn tombstones_refuse_older_copies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            tx.upsert_record("demo", &pmt("P1", "A", 10), false)?;
            assert!(tx.remove_record("demo", Entity::Transactions, "P1", Some(ts(15)))?);
            assert_eq!(
                tx.upsert_record("demo", &pmt("P1", "A", 12), false)?,
                tx::Upsert::Stale
            );
            Ok(())
        })
        .await
        .unwrap();
    assert!(store.records_of(&key("A")).unwrap().is_empty());
}

#[tokio::test]
async fn purge_removes_everything_of_one_customer_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            tx.put_customer(&customer("A"))?;
            tx.put_customer(&customer("A1"))?;
            tx.upsert_record("demo", &inv("I1", "A", 1, 1), false)?;
            tx.upsert_record("demo", &inv("I2", "A", 1, 1), false)?;
            tx.upsert_record("demo", &pmt("P1", "A", 1), false)?;
            tx.upsert_record("demo", &inv("I3", "A1", 1, 1), false)?;
            tx.upsert_record("demo", &pmt("P9", "A", 1), true)?;
            Ok(())
        })
        .await
        .unwrap();
    let n = store
        .write(|tx| tx.purge_customer_records(&key("A")))
        .await
        .unwrap();
    assert_eq!(n, (2, 2));
    assert!(store.records_of(&key("A")).unwrap().is_empty());
    assert_eq!(store.records_of(&key("A1")).unwrap().len(), 1);
    assert_eq!(store.parked_count("demo").unwrap(), 0);
    // customer record itself stays
    assert!(store.customer(&key("A")).unwrap().is_some());
}

#[tokio::test]
async fn failed_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let r: Result<()> = store
        .write(|tx| {
            tx.put_customer(&customer("A"))?;
            tx.set_cursor("demo", Entity::Customers, "x")?;
            tx.reject("no")
        })
        .await;
    assert!(matches!(r, Err(StoreError::Rejected(m)) if m == "no"));
    assert!(store.customer(&key("A")).unwrap().is_none());
    assert!(store.cursor("demo", Entity::Customers).unwrap().is_none());
}

#[tokio::test]
async fn data_survives_reopen_and_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write(|tx| {
                tx.put_customer(&customer("A"))?;
                tx.set_cursor("demo", Entity::Customers, "c1")?;
                tx.add_counter("demo", "dropped_invoices", 3)?;
                tx.add_counter("demo", "dropped_invoices", 2)?;
                Ok(())
            })
            .await
            .unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(
            err.to_string()
                .contains("locked by another running erpsync"),
            "{err}"
        );
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.cursor("demo", Entity::Customers).unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(store.counter("demo", "dropped_invoices").unwrap(), 5);
    assert_eq!(store.customers(None, None).count(), 1);
}

#[tokio::test]
async fn audit_is_newest_first_and_filterable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            for (i, c) in ["A", "B", "A"].iter().enumerate() {
                tx.audit(AuditEntry {
                    seq: 0,
                    at: ts(i as i64),
                    customer: key(c),
                    action: format!("a{i}"),
                    actor: "test".into(),
                    reason: String::new(),
                    from: None,
                    to: None,
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let all: Vec<_> = store
        .audit(None, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(all, ["a2", "a1", "a0"]);
    let a: Vec<_> = store
        .audit(Some(&key("A")), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(a, ["a2", "a0"]);
}

#[tokio::test]
async fn customers_page_after_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            for id in ["A", "B", "C"] {
                tx.put_customer(&customer(id))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let after: Vec<_> = store
        .customers(Some("demo"), Some(&key("A")))
        .map(|c| c.unwrap().customer.external_id)
        .collect();
    assert_eq!(after, ["B", "C"]);
}

#[tokio::test]
async fn paging_after_a_key_keeps_ids_that_extend_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            for id in ["1", "10", "100", "11", "2"] {
                tx.put_customer(&customer(id))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    // Page through two at a time: every customer exactly once.
    let mut seen = Vec::new();
    let mut after: Option<CustomerKey> = None;
    loop {
        let page: Vec<_> = store
            .customers(Some("demo"), after.as_ref())
            .take(2)
            .map(|c| c.unwrap().customer.external_id)
            .collect();
        if page.is_empty() {
            break;
        }
        after = Some(key(page.last().unwrap()));
        seen.extend(page);
    }
    assert_eq!(seen, ["1", "10", "100", "11", "2"]);
}
