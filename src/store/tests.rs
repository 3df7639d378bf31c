use super::*;
use crate::model::ExclusionSource;
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

async fn newer_version_wins_and_moves_between_customers(store: &Store) {
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

async fn tombstones_refuse_older_copies(store: &Store) {
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

async fn purge_removes_everything_of_one_customer_only(store: &Store) {
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

async fn failed_write_changes_nothing(store: &Store) {
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
async fn sqlite_data_survives_reopen_and_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(
        err.to_string()
            .contains("locked by another running erpsync"),
        "{err}"
    );
    let path = dir.path().to_path_buf();
    let reopen = move || Store::open(&path).unwrap();
    // the lock goes with the store: reopen after dropping it
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
    drop(store);
    let again = reopen();
    assert_eq!(
        again.cursor("demo", Entity::Customers).unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(again.counter("demo", "dropped_invoices").unwrap(), 5);
    assert_eq!(again.customers(None, None).count(), 1);
    assert_eq!(again.classification_counts(None).unwrap().total, 1);
    assert_eq!(again.path(), Some(dir.path().join(SQLITE_FILE).as_path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(SQLITE_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the store holds credentials");
}

async fn audit_is_newest_first_and_filterable(store: &Store) {
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

async fn customers_page_after_a_key(store: &Store) {
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

async fn paging_after_a_key_keeps_ids_that_extend_it(store: &Store) {
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

// ----- more of the contract ----------------------------------------------

fn customer_with(id: &str, class: Classification) -> StoredCustomer {
    let mut c = customer(id);
    c.classification = class;
    c
}

fn excluded(source: ExclusionSource, reason: &str) -> Classification {
    Classification {
        excluded: true,
        source: Some(source),
        reason: reason.into(),
    }
}

async fn classification_counts_follow_every_change(store: &Store) {
    store
        .write(|tx| {
            tx.put_customer(&customer("A"))?;
            tx.put_customer(&customer("B"))?;
            tx.put_customer(&customer_with(
                "C",
                excluded(ExclusionSource::Native, "native:inactive"),
            ))?;
            Ok(())
        })
        .await
        .unwrap();
    let c = store.classification_counts(Some("demo")).unwrap();
    assert_eq!((c.total, c.included, c.excluded), (3, 2, 1));
    assert_eq!(c.excluded_by_reason.get("native:inactive"), Some(&1));
    store
        .write(|tx| {
            // reclassify B, write A again unchanged, delete C
            tx.put_customer(&customer_with(
                "B",
                excluded(ExclusionSource::Rule, "rule:x"),
            ))?;
            tx.put_customer(&customer("A"))?;
            tx.delete_customer(&key("C"))?;
            Ok(())
        })
        .await
        .unwrap();
    let c = store.classification_counts(None).unwrap();
    assert_eq!((c.total, c.included, c.excluded), (2, 1, 1));
    assert_eq!(c.excluded_by_source.get("rule"), Some(&1));
    assert_eq!(c.excluded_by_reason.get("native:inactive"), None);
    // a rolled-back write leaves the counts alone
    let _ = store
        .write(|tx| {
            tx.put_customer(&customer("Z"))?;
            tx.reject::<()>("no")
        })
        .await;
    assert_eq!(store.classification_counts(None).unwrap().total, 2);
    let scanned = store.customers(None, None).count() as u64;
    assert_eq!(scanned, 2);
}

async fn money_and_dates_round_trip_exactly(store: &Store) {
    let mut r = inv("I1", "A", 1, 0);
    if let Record::Invoice(i) = &mut r {
        i.total = "12345678901234.56789".parse().unwrap();
        i.amount_due = "-0.01".parse().unwrap();
        i.due_date = NaiveDate::from_ymd_opt(1999, 12, 31).unwrap();
    }
    let mut c = customer("A");
    c.customer.balance = "0.10".parse().unwrap();
    c.customer
        .custom
        .insert("segment".into(), "retail \"quoted\" ✓".into());
    c.customer.email = Some("a@example.com".into());
    store
        .write(|tx| {
            tx.put_customer(&c)?;
            tx.upsert_record("demo", &r, false)?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.records_of(&key("A")).unwrap(), vec![r]);
    let back = store.customer(&key("A")).unwrap().unwrap();
    assert_eq!(back, c);
}

async fn parked_records_are_released_and_counted(store: &Store) {
    store
        .write(|tx| {
            tx.upsert_record("demo", &inv("I1", "N", 5, 1), true)?;
            tx.upsert_record("demo", &pmt("P1", "N", 5), true)?;
            // an older copy of a parked record is stale
            assert_eq!(
                tx.upsert_record("demo", &inv("I1", "N", 1, 1), true)?,
                Upsert::Stale
            );
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.parked_count("demo").unwrap(), 2);
    assert!(store.records_of(&key("N")).unwrap().is_empty());
    let taken = store.write(|tx| tx.take_parked(&key("N"))).await.unwrap();
    assert_eq!(taken, vec![inv("I1", "N", 5, 1), pmt("P1", "N", 5)]);
    assert_eq!(store.parked_count("demo").unwrap(), 0);
    // a parked record that gets stored leaves the parking
    store
        .write(|tx| {
            tx.upsert_record("demo", &inv("I2", "N", 5, 1), true)?;
            assert_eq!(
                tx.upsert_record("demo", &inv("I2", "N", 6, 1), false)?,
                Upsert::Updated
            );
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.parked_count("demo").unwrap(), 0);
    assert_eq!(store.records_of(&key("N")).unwrap().len(), 1);
}

async fn dropped_versions_refuse_older_copies_but_accept_the_same_one(store: &Store) {
    store
        .write(|tx| {
            tx.upsert_record("demo", &inv("I1", "A", 10, 1), false)?;
            // newer version for an excluded customer: the stored copy goes
            assert!(tx.drop_record("demo", &inv("I1", "B", 20, 1))?);
            assert_eq!(
                tx.upsert_record("demo", &inv("I1", "A", 15, 1), false)?,
                Upsert::Stale
            );
            // the same version is accepted (re-inclusion + resync)
            assert_eq!(
                tx.upsert_record("demo", &inv("I1", "B", 20, 1), false)?,
                Upsert::Inserted
            );
            assert_eq!(
                tx.record_owner("demo", Entity::Invoices, "I1")?.as_deref(),
                Some("B")
            );
            // an older version for an excluded customer does not remove it
            assert!(!tx.drop_record("demo", &inv("I1", "C", 12, 1))?);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.records_of(&key("B")).unwrap().len(), 1);
}

async fn records_stream_across_pages_and_tables(store: &Store) {
    let n = (super::PAGE as usize) + 7;
    store
        .write(|tx| {
            for i in 0..n {
                tx.upsert_record("demo", &inv(&format!("I{i:04}"), "A", 1, 1), false)?;
            }
            for i in 0..3 {
                tx.upsert_record("demo", &pmt(&format!("P{i}"), "A", 1), false)?;
            }
            tx.upsert_record("other", &pmt("P9", "X", 1), false)?;
            Ok(())
        })
        .await
        .unwrap();
    let all: Vec<_> = store.records(None).map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), n + 4);
    let demo = store.records(Some("demo")).count();
    assert_eq!(demo, n + 3);
    let mut ids: Vec<_> = all
        .iter()
        .map(|(c, r)| format!("{c}:{}", r.external_id()))
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), n + 4, "no record twice");
}

async fn feature_state_round_trips(store: &Store) {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Flag {
        actor: String,
        #[serde(default)]
        until: Option<String>,
    }
    let f = Flag {
        actor: "ann".into(),
        until: None,
    };
    let ids = store
        .write(|tx| {
            tx.put_stop_flag(&key("A"), &f)?;
            tx.put_stop_flag(&key("B"), &f)?;
            tx.put_hold_flag("demo", "I1", &f)?;
            tx.put_meta("policy", &serde_json::json!({"rules": ["x"]}))?;
            tx.put_credential("qb", "refresh_token", "s3cret")?;
            let a = tx.next_id()?;
            let b = tx.next_id()?;
            Ok((a, b))
        })
        .await
        .unwrap();
    assert!(ids.1 > ids.0);
    assert_eq!(store.stop_flag::<Flag>(&key("A")).unwrap(), Some(f));
    let all: Vec<_> = store.stop_flags::<Flag>(None, 10).unwrap();
    assert_eq!(all.len(), 2);
    let after: Vec<_> = store.stop_flags::<Flag>(Some(&key("A")), 10).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(store.hold_flags::<Flag>(None, 10).unwrap().len(), 1);
    assert_eq!(
        store.meta::<serde_json::Value>("policy").unwrap(),
        Some(serde_json::json!({"rules": ["x"]}))
    );
    assert_eq!(
        store.credential("qb", "refresh_token").unwrap().as_deref(),
        Some("s3cret")
    );
    store
        .put_credential("qb", "refresh_token", "rotated")
        .await
        .unwrap();
    assert_eq!(
        store.credential("qb", "refresh_token").unwrap().as_deref(),
        Some("rotated")
    );
    assert_eq!(store.credential("qb", "nothing").unwrap(), None);
    store
        .write(|tx| {
            tx.delete_stop_flag(&key("A"))?;
            tx.delete_hold_flag("demo", "I1")?;
            tx.delete_meta("policy")
        })
        .await
        .unwrap();
    assert_eq!(store.stop_flag::<Flag>(&key("A")).unwrap(), None);
    assert!(store.hold_flags::<Flag>(None, 10).unwrap().is_empty());
    assert_eq!(store.meta::<serde_json::Value>("policy").unwrap(), None);
    assert!(store.next_id().await.unwrap() > ids.1);
}

async fn resync_tables_keep_jobs_members_and_the_queue(store: &Store) {
    store
        .write(|tx| {
            tx.put_resync_job(
                7,
                "demo",
                "queued",
                ts(0),
                None,
                &serde_json::json!({"id": 7}),
            )?;
            tx.set_resync_member(7, "C1", false)?;
            tx.set_resync_member(7, "C2", false)?;
            tx.set_resync_queued("demo", "C1", Some(7))?;
            tx.set_resync_member(7, "C2", true)?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.resync_queued("demo", "C1").unwrap(), Some(7));
    assert_eq!(store.resync_queued("demo", "C2").unwrap(), None);
    let pending: Vec<_> = store.resync_pending(7).map(|r| r.unwrap()).collect();
    assert_eq!(pending, ["C1"]);
    assert_eq!(
        store.resync_members(7).unwrap(),
        vec![("C1".to_string(), false), ("C2".to_string(), true)]
    );
    assert_eq!(store.resync_jobs::<serde_json::Value>().unwrap().len(), 1);
    store.write(|tx| tx.delete_resync_job(7)).await.unwrap();
    assert!(store.resync_members(7).unwrap().is_empty());
    assert_eq!(store.resync_job::<serde_json::Value>(7).unwrap(), None);
}

async fn compaction_drops_only_history_past_its_retention(store: &Store) {
    let now = Utc::now();
    store
        .write(|tx| {
            tx.remove_record("demo", Entity::Invoices, "GONE", Some(ts(0)))?;
            for (i, at) in [now - chrono::Duration::days(400), now]
                .into_iter()
                .enumerate()
            {
                let mut e = AuditEntry::action(at, key("A"), "stop", "t", "r");
                e.action = format!("a{i}");
                tx.audit(e)?;
            }
            tx.put_resync_job(
                1,
                "demo",
                "done",
                ts(0),
                Some(now - chrono::Duration::days(60)),
                &1,
            )?;
            tx.set_resync_member(1, "A", true)?;
            tx.put_resync_job(2, "demo", "done", ts(0), Some(now), &2)?;
            tx.put_resync_job(
                3,
                "demo",
                "failed",
                ts(0),
                Some(now - chrono::Duration::days(60)),
                &3,
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let r = Retention {
        tombstones: chrono::Duration::days(30),
        audit: chrono::Duration::days(365),
        finished_jobs: chrono::Duration::days(30),
    };
    // nothing is old enough yet for tombstones (recorded now)
    let c = store.compact(&r, now).await.unwrap();
    assert_eq!(
        c,
        Compacted {
            tombstones: 0,
            audit: 1,
            jobs: 1
        }
    );
    let left: Vec<_> = store
        .audit(None, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(left, ["a1"]);
    let jobs: Vec<u64> = store.resync_jobs::<u64>().unwrap();
    assert_eq!(jobs, [2, 3], "failed jobs wait for an admin");
    assert!(store.resync_members(1).unwrap().is_empty());
    // later, the tombstone is past its retention
    let later = now + chrono::Duration::days(31);
    assert_eq!(store.compact(&r, later).await.unwrap().tombstones, 1);
    // ... and an old copy of the record is accepted again (it may be re-sent
    // only within the deletion window, which the retention covers)
    store
        .write(|tx| {
            assert_eq!(
                tx.upsert_record("demo", &inv("GONE", "A", -5, 1), false)?,
                Upsert::Inserted
            );
            Ok(())
        })
        .await
        .unwrap();
}

async fn a_panicking_writer_writes_nothing_and_the_store_goes_on(store: &Store) {
    let res = std::panic::AssertUnwindSafe(store.write(|tx| {
        tx.put_customer(&customer("P"))?;
        if tx.customer(&key("P"))?.is_some() {
            panic!("boom");
        }
        Ok(())
    }));
    let caught = futures::FutureExt::catch_unwind(res).await;
    assert!(caught.is_err());
    assert!(store.customer(&key("P")).unwrap().is_none());
    store
        .write(|tx| tx.put_customer(&customer("Q")))
        .await
        .unwrap();
    assert!(store.customer(&key("Q")).unwrap().is_some());
    assert_eq!(store.classification_counts(None).unwrap().total, 1);
}

async fn reads_inside_a_write_see_its_own_writes(store: &Store) {
    store
        .write(|tx| {
            tx.put_customer(&customer("A"))?;
            tx.set_manual_decision(
                &key("A"),
                Some(&ManualDecision {
                    action: crate::model::ManualAction::Exclude,
                    actor: "a".into(),
                    reason: "r".into(),
                    at: ts(1),
                }),
            )?;
            tx.upsert_record("demo", &inv("I1", "A", 1, 1), false)?;
            assert!(tx.customer(&key("A"))?.is_some());
            assert!(tx.manual_decision(&key("A"))?.is_some());
            assert_eq!(tx.records_of(&key("A"))?.len(), 1);
            tx.set_manual_decision(&key("A"), None)?;
            assert!(tx.manual_decision(&key("A"))?.is_none());
            Ok(())
        })
        .await
        .unwrap();
    let decisions: Vec<_> = store.manual_decisions().map(|r| r.unwrap()).collect();
    assert!(decisions.is_empty());
}

async fn reopen_keeps_everything(store: &Store, reopen: impl Fn() -> Store) {
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
    let again = reopen();
    assert_eq!(
        again.cursor("demo", Entity::Customers).unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(again.counter("demo", "dropped_invoices").unwrap(), 5);
    assert_eq!(again.customers(None, None).count(), 1);
    assert_eq!(again.classification_counts(None).unwrap().total, 1);
}

async fn batched_upserts_match_one_by_one(store: &Store) {
    // Prepare the same history under two connectors: a tombstone, a
    // dropped version, a parked copy and a stored newer copy.
    for conn in ["one", "many"] {
        store
            .write(|tx| {
                tx.remove_record(conn, Entity::Invoices, "DEL", Some(ts(50)))?;
                tx.drop_record(conn, &inv("DROP", "X", 30, 1))?;
                tx.upsert_record(conn, &pmt("PARK", "A", 10), true)?;
                tx.upsert_record(conn, &inv("NEW", "A", 40, 1), false)?;
                Ok(())
            })
            .await
            .unwrap();
    }
    let page = [
        inv("DEL", "A", 49, 1),  // refused by the deletion
        inv("DEL", "A", 51, 1),  // newer than the deletion
        inv("DROP", "A", 30, 1), // the dropped version itself is accepted
        pmt("PARK", "A", 11),    // leaves the parking
        inv("NEW", "A", 39, 1),  // older than stored
        inv("FRESH", "A", 1, 1), // new
        inv("FRESH", "B", 2, 1), // twice in one page: moves
        inv("FRESH", "C", 1, 1), // older than the one just written
    ];
    let refs: Vec<&Record> = page.iter().collect();
    let batched = store
        .write(|tx| tx.upsert_records("many", &refs))
        .await
        .unwrap();
    let single = store
        .write(|tx| {
            page.iter()
                .map(|r| tx.upsert_record("one", r, false))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .unwrap();
    assert_eq!(batched, single);
    let norm = |conn: &str| {
        let mut v: Vec<String> = store
            .records(Some(conn))
            .map(|r| format!("{:?}", r.unwrap().1))
            .collect();
        v.sort();
        v
    };
    assert_eq!(norm("many"), norm("one"));
    assert_eq!(store.parked_count("many").unwrap(), 0);
    assert_eq!(store.parked_count("one").unwrap(), 0);
}

async fn batched_drops_match_one_by_one(store: &Store) {
    for conn in ["one", "many"] {
        store
            .write(|tx| {
                tx.upsert_record(conn, &inv("OLD", "A", 10, 1), false)?;
                tx.upsert_record(conn, &inv("NEWER", "A", 50, 1), false)?;
                tx.upsert_record(conn, &pmt("PARK", "N", 10), true)?;
                tx.remove_record(conn, Entity::Invoices, "GONE", Some(ts(40)))?;
                Ok(())
            })
            .await
            .unwrap();
    }
    let page = [
        inv("OLD", "X", 20, 1),   // removes the stored copy
        inv("NEWER", "X", 20, 1), // the stored copy is newer: kept
        pmt("PARK", "X", 20),     // removes the parked copy
        inv("GONE", "X", 30, 1),  // a newer deletion is known: no tombstone change
        inv("FRESH", "X", 5, 1),  // nothing stored: remembered
    ];
    let refs: Vec<&Record> = page.iter().collect();
    let batched = store
        .write(|tx| tx.drop_records("many", &refs))
        .await
        .unwrap();
    let single = store
        .write(|tx| {
            page.iter()
                .map(|r| tx.drop_record("one", r))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .unwrap();
    assert_eq!(batched, vec![true, false, true, false, false]);
    assert_eq!(batched, single);
    // the same later copies are refused or accepted alike
    for conn in ["one", "many"] {
        let later = store
            .write(|tx| {
                Ok([
                    tx.upsert_record(conn, &inv("OLD", "A", 15, 1), false)?,
                    tx.upsert_record(conn, &inv("GONE", "A", 35, 1), false)?,
                    tx.upsert_record(conn, &inv("FRESH", "A", 5, 1), false)?,
                ])
            })
            .await
            .unwrap();
        assert_eq!(
            later,
            [Upsert::Stale, Upsert::Stale, Upsert::Inserted],
            "{conn}"
        );
        assert_eq!(store.parked_count(conn).unwrap(), 0);
    }
}

/// The set-based reads (one query per stretch or page of customers) answer
/// exactly what the per-customer reads answer, on a store with several
/// connectors, excluded customers (whose invoices are never returned, even
/// should the store hold one), holds, STOP flags, decisions and long audit
/// trails.
async fn set_reads_match_per_customer_reads(store: &Store) {
    use crate::model::{ManualAction, ManualDecision};
    let due = |d: u32| NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
    let as_of = due(15);
    let ids: Vec<String> = (0..40).map(|i| format!("C{i:02}")).collect();
    store
        .write(|tx| {
            for conn in ["demo", "erp2"] {
                for (n, id) in ids.iter().enumerate() {
                    let mut sc = customer(id);
                    sc.connector = conn.into();
                    if n % 7 == 3 {
                        sc.classification = excluded(ExclusionSource::Rule, "rule:r");
                    }
                    tx.put_customer(&sc)?;
                    for j in 0..(n % 4) {
                        let Record::Invoice(mut i) = inv(&format!("{conn}-{id}-I{j}"), id, 1, 0)
                        else {
                            unreachable!()
                        };
                        i.due_date = due(1 + (n as u32 * 3 + j as u32) % 28);
                        i.amount_due = Decimal::new((n as i64 % 3) * 1000, 2);
                        i.status = if j == 2 {
                            InvoiceStatus::Paid
                        } else {
                            InvoiceStatus::Open
                        };
                        i.on_hold = n % 5 == 0;
                        tx.upsert_record(conn, &Record::Invoice(i), false)?;
                        if (n + j) % 3 == 0 {
                            tx.put_hold_flag(
                                conn,
                                &format!("{conn}-{id}-I{j}"),
                                &serde_json::json!({"n": n}),
                            )?;
                        }
                    }
                    if n % 2 == 1 {
                        tx.upsert_record(conn, &pmt(&format!("{conn}-{id}-P"), id, 1), false)?;
                    }
                    if n % 6 == 1 {
                        tx.put_stop_flag(
                            &CustomerKey::new(conn, id),
                            &serde_json::json!({"n": n}),
                        )?;
                    }
                    if n % 4 == 2 {
                        let d = ManualDecision {
                            action: if n % 8 == 2 {
                                ManualAction::Exclude
                            } else {
                                ManualAction::Include
                            },
                            actor: format!("admin{n}"),
                            reason: "why".into(),
                            at: ts(n as i64),
                        };
                        tx.set_manual_decision(&CustomerKey::new(conn, id), Some(&d))?;
                    }
                    // Audit trails: a `classified` entry, then for some
                    // customers more other entries than the window.
                    let k = CustomerKey::new(conn, id);
                    tx.audit(AuditEntry::action(
                        ts(1),
                        k.clone(),
                        "classified",
                        format!("by{n}"),
                        "",
                    ))?;
                    let others = if n % 9 == 0 { 55 } else { n % 3 };
                    for _ in 0..others {
                        tx.audit(AuditEntry::action(ts(2), k.clone(), "stop", "x", ""))?;
                    }
                }
            }
            // An invoice the store holds for an excluded customer.
            tx.upsert_record("demo", &inv("stray", "C03", 1, 5000), false)?;
            Ok(())
        })
        .await
        .unwrap();

    // Customers with their decisions, as one page or after a key.
    for (conn, after) in [
        (None, None),
        (Some("erp2"), None),
        (Some("demo"), Some(key("C10"))),
        (None, Some(key("C39"))),
    ] {
        let joined: Vec<_> = store
            .customers_with_decisions(conn, after.as_ref())
            .collect::<Result<_>>()
            .unwrap();
        let one_by_one: Vec<_> = store
            .customers(conn, after.as_ref())
            .map(|sc| {
                let sc = sc.unwrap();
                let d = store.manual_decision(&sc.key()).unwrap();
                (sc, d)
            })
            .collect();
        assert_eq!(joined, one_by_one, "{conn:?} after {after:?}");
        for first in [1, 3, 7] {
            let growing: Vec<_> = store
                .customers_with_decisions_from(conn, after.as_ref(), first)
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(growing, joined, "{conn:?} after {after:?} from {first}");
        }
    }
    assert!(store
        .customers_with_decisions(None, None)
        .filter_map(|r| r.unwrap().1)
        .next()
        .is_some());

    for conn in ["demo", "erp2"] {
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut unknown = all.clone();
        unknown.push("nobody");
        // Open invoices due before a day with their holds, over stretches.
        for (first, last) in [
            ("C00", "C39"),
            ("C05", "C05"),
            ("C03", "C03"),
            ("C10", "C27"),
        ] {
            let set: Vec<(Invoice, Option<serde_json::Value>)> = store
                .open_invoices_due_before(conn, first, last, as_of)
                .unwrap();
            let mut one_by_one = Vec::new();
            for id in all.iter().filter(|id| **id >= first && **id <= last) {
                let k = CustomerKey::new(conn, *id);
                if store.customer(&k).unwrap().unwrap().classification.excluded {
                    continue;
                }
                for r in store.records_of(&k).unwrap() {
                    if let Record::Invoice(i) = r {
                        if i.status == InvoiceStatus::Open && i.due_date < as_of {
                            let h = store.hold_flag(conn, &i.external_id).unwrap();
                            one_by_one.push((i, h));
                        }
                    }
                }
            }
            assert_eq!(set, one_by_one, "{conn} {first}..={last}");
            assert!(set.iter().all(|(i, _)| i.external_id != "stray"));
        }
        // STOP flags of a stretch.
        let stops: Vec<(String, serde_json::Value)> =
            store.stop_flags_between(conn, "C02", "C30").unwrap();
        let one_by_one: Vec<(String, serde_json::Value)> = all
            .iter()
            .filter(|id| **id >= "C02" && **id <= "C30")
            .filter_map(|id| {
                store
                    .stop_flag(&CustomerKey::new(conn, *id))
                    .unwrap()
                    .map(|f| (id.to_string(), f))
            })
            .collect();
        assert!(!stops.is_empty());
        assert_eq!(stops, one_by_one, "{conn}");
        // Record counts.
        let counts = store.record_counts(conn, &unknown).unwrap();
        for id in &unknown {
            let recs = store.records_of(&CustomerKey::new(conn, *id)).unwrap();
            let i = recs
                .iter()
                .filter(|r| r.entity() == Entity::Invoices)
                .count() as u64;
            let t = recs.len() as u64 - i;
            let want = (i + t > 0).then_some((i, t));
            assert_eq!(counts.get(*id).copied(), want, "{conn}:{id}");
        }
        // Who classified each customer, within the newest 50 entries.
        let actors = store
            .latest_actors(conn, &unknown, "classified", 50)
            .unwrap();
        for id in &unknown {
            let want = store
                .audit(Some(&CustomerKey::new(conn, *id)), 50)
                .unwrap()
                .into_iter()
                .find(|e| e.action == "classified")
                .map(|e| e.actor);
            assert_eq!(actors.get(*id).cloned(), want, "{conn}:{id}");
        }
        assert!(actors.len() < all.len(), "long trails hide the entry");
        // Which customers are stored.
        let mut stored = store.stored_customers(conn, &unknown).unwrap();
        stored.sort();
        assert_eq!(stored, ids, "{conn}");
    }
}

// ----- running the suite on both backends --------------------------------

use crate::store::testing::{on_both_backends, Fixture};

on_both_backends!(
    "store::";
    newer_version_wins_and_moves_between_customers,
    tombstones_refuse_older_copies,
    purge_removes_everything_of_one_customer_only,
    failed_write_changes_nothing,
    audit_is_newest_first_and_filterable,
    customers_page_after_a_key,
    paging_after_a_key_keeps_ids_that_extend_it,
    classification_counts_follow_every_change,
    money_and_dates_round_trip_exactly,
    parked_records_are_released_and_counted,
    dropped_versions_refuse_older_copies_but_accept_the_same_one,
    records_stream_across_pages_and_tables,
    feature_state_round_trips,
    resync_tables_keep_jobs_members_and_the_queue,
    compaction_drops_only_history_past_its_retention,
    a_panicking_writer_writes_nothing_and_the_store_goes_on,
    reads_inside_a_write_see_its_own_writes,
    batched_upserts_match_one_by_one,
    batched_drops_match_one_by_one,
    set_reads_match_per_customer_reads,
);

#[tokio::test]
async fn postgres_reopen_keeps_everything_and_migrations_are_idempotent() {
    let Some(f) = Fixture::postgres("store::postgres_reopen_keeps_everything") else {
        return;
    };
    let loc = f.pg.as_ref().unwrap().location();
    reopen_keeps_everything(&f.store, || {
        Store::open_location(&loc, DEFAULT_CACHE_MB).unwrap()
    })
    .await;
}

#[tokio::test]
async fn postgres_refuses_a_password_in_the_url_and_names_an_unreachable_server() {
    let err = Store::open_location(
        &StoreLocation::Postgres {
            url: "postgres://u:hunter2@127.0.0.1:1/db".into(),
            password: None,
        },
        DEFAULT_CACHE_MB,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("contains a password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = Store::open_location(
        &StoreLocation::Postgres {
            url: "postgres://u@127.0.0.1:1/db".into(),
            password: None,
        },
        DEFAULT_CACHE_MB,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("postgres://u@127.0.0.1:1/db"), "{err}");
}

#[tokio::test]
async fn postgres_a_connection_lost_inside_a_write_writes_nothing_and_the_store_reconnects() {
    let Some(f) = Fixture::postgres("store::postgres_a_connection_lost_inside_a_write") else {
        return;
    };
    let pg = f.pg.as_ref().unwrap();
    let r = f
        .store
        .write(|tx| {
            tx.put_customer(&customer("A"))?;
            pg.terminate_connections();
            tx.put_customer(&customer("B"))?;
            tx.set_cursor("demo", Entity::Customers, "c1")
        })
        .await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("postgres"), "{err}");
    // Reads and writes reconnect; a read may see the lost connection once.
    let mut first = f.store.customer(&key("A"));
    if first.is_err() {
        first = f.store.customer(&key("A"));
    }
    assert!(
        first.unwrap().is_none(),
        "nothing of the broken write is kept"
    );
    assert!(f.store.cursor("demo", Entity::Customers).unwrap().is_none());
    f.store
        .write(|tx| tx.put_customer(&customer("C")))
        .await
        .unwrap();
    assert!(f.store.customer(&key("C")).unwrap().is_some());
    assert_eq!(f.store.classification_counts(None).unwrap().total, 1);
}

/// Migration 4 on a SQLite store holding records: every row and column is
/// kept, `invoices` and `transactions` become rowid tables with the same
/// named indexes (less `invoices_due`), and upserts by id still find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_4_keeps_records_and_named_indexes() {
    use super::schema::{render, Dialect, MIGRATIONS};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SQLITE_FILE);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&super::schema::migrations_table(Dialect::Sqlite))
            .unwrap();
        for (v, sql) in &MIGRATIONS[..3] {
            c.execute_batch(&render(sql, Dialect::Sqlite)).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, '2026-01-01T00:00:00.000000000Z')",
                [v],
            )
            .unwrap();
        }
        for id in ["A", "B"] {
            c.execute(
                "INSERT INTO customers VALUES ('demo', ?1, ?1, NULL, NULL, 'EUR', '0', 0, 0,
                   '2026-01-01T00:00:00.000000000Z', '{}', 0, NULL, 'included',
                   '2026-01-01T00:00:00.000000000Z', '2026-01-01T00:00:00.000000000Z')",
                [id],
            )
            .unwrap();
        }
        c.execute_batch(
            "INSERT INTO invoices VALUES ('demo', 'I1', 'A', 'N1', '2026-01-01', '2026-02-01',
               'EUR', '10.5', '7', 'open', 1, '2026-01-03T00:00:00.000000000Z',
               '2026-01-04T00:00:00.000000000Z');
             INSERT INTO invoices VALUES ('demo', 'I0', 'B', 'N0', '2026-01-01', '2026-02-01',
               'USD', '3', '0', 'paid', 0, '2026-01-02T00:00:00.000000000Z',
               '2026-01-02T00:00:00.000000000Z');
             INSERT INTO transactions VALUES ('demo', 'P1', 'A', 'payment', '2026-01-05', '2.25',
               'EUR', '2026-01-05T00:00:00.000000000Z', '2026-01-06T00:00:00.000000000Z');",
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let a = store.records_of(&key("A")).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        a[0],
        Record::Invoice(Invoice {
            external_id: "I1".into(),
            number: "N1".into(),
            customer_id: "A".into(),
            issue_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            due_date: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
            currency: "EUR".into(),
            total: Decimal::new(105, 1),
            amount_due: Decimal::new(7, 0),
            status: InvoiceStatus::Open,
            on_hold: true,
            last_modified: Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap(),
        })
    );
    assert_eq!(store.records_of(&key("B")).unwrap().len(), 1);
    let listed = store
        .invoices_page(&RecordQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|l| l.record.external_id() == "I1")
            .unwrap()
            .changed_at,
        Utc.with_ymd_and_hms(2026, 1, 4, 0, 0, 0).unwrap()
    );
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let names = |table: &str| -> Vec<String> {
            let mut st = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name")
                .unwrap();
            st.query_map([table], |r| r.get(0))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            names("invoices"),
            [
                "invoices_changed",
                "invoices_currency",
                "invoices_customer",
                "invoices_status"
            ]
        );
        assert_eq!(
            names("transactions"),
            ["transactions_changed", "transactions_customer"]
        );
        for table in ["invoices", "transactions"] {
            let sql: String = c
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
        }
        let version: i64 = c
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
    // Upserts by id find the migrated rows (a newer version replaces, an
    // older one is refused), also in the batched form.
    let out = store
        .write(|tx| {
            tx.upsert_records(
                "demo",
                &[&inv("I1", "A", -10, 1), &inv("I0", "A", 1_000_000_000, 1)],
            )
        })
        .await
        .unwrap();
    assert_eq!(out, [Upsert::Stale, Upsert::Updated]);
    assert!(store.records_of(&key("B")).unwrap().is_empty());
    assert_eq!(store.records_of(&key("A")).unwrap().len(), 3);
}
