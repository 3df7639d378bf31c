use super::*;
use crate::model::{Invoice, InvoiceStatus};
use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

fn ts(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn inv(id: &str, cust: &str) -> Record {
    Record::Invoice(Invoice {
        external_id: id.into(),
        number: format!("N-{id}"),
        customer_id: cust.into(),
        issue_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        due_date: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        currency: "USD".into(),
        total: Decimal::new(10000, 2),
        amount_due: Decimal::new(10000, 2),
        status: InvoiceStatus::Open,
        on_hold: false,
        last_modified: ts(1),
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    Fixture { _dir: dir, store }
}

async fn enqueue_ids(store: &Store, customers: &[&str], reason: &str) -> Option<u64> {
    store
        .write(|tx| enqueue(tx, "demo", &ids(customers), reason, ts(0)))
        .await
        .unwrap()
}

fn get(store: &Store, id: u64) -> Job {
    job(store, id).unwrap().unwrap()
}

/// The batch the worker would start first, with nothing busy or isolated.
fn first_batch(store: &Store) -> Result<Vec<BatchMember>> {
    next_batch(store, "demo", &HashSet::new(), &HashSet::new(), 10)
}

fn members(batch: &[BatchMember]) -> Vec<(u64, &str)> {
    batch.iter().map(|m| (m.job, m.customer.as_str())).collect()
}

async fn commit(
    store: &Store,
    batch: &Batch,
    entity: Entity,
    next: &str,
    last: bool,
    records: &[Record],
) -> Committed {
    store
        .write(|tx| {
            commit_page(
                tx,
                &PageCommit {
                    connector: "demo",
                    batch,
                    entity,
                    next: &Cursor(next.into()),
                    last,
                    records,
                    now: ts(10),
                },
            )
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn enqueue_skips_customers_already_queued_and_duplicates() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1", "C2", "C2"], "first")
        .await
        .unwrap();
    assert_eq!(get(&f.store, a).total, 2);
    let b = enqueue_ids(&f.store, &["C2", "C3"], "second")
        .await
        .unwrap();
    let jb = get(&f.store, b);
    assert_eq!((jb.total, jb.state), (1, JobState::Queued));
    assert_eq!(pending_members(&f.store, b).unwrap(), ids(&["C3"]));
    assert_eq!(enqueue_ids(&f.store, &["C1", "C3"], "third").await, None);
    assert_eq!(jobs(&f.store).unwrap().len(), 2, "no empty job is created");
    assert!(is_queued(&f.store, "demo", "C2").unwrap());
    assert!(!is_queued(&f.store, "other", "C2").unwrap());
}

#[tokio::test]
async fn removing_a_customer_shrinks_its_job_and_an_emptied_job_finishes() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1", "C2"], "r").await.unwrap();
    let removed = f
        .store
        .write(|tx| remove_customer(tx, "demo", "C1"))
        .await
        .unwrap();
    assert!(removed);
    let j = get(&f.store, a);
    assert_eq!((j.total, j.done, j.state), (1, 0, JobState::Queued));
    assert_eq!(pending_members(&f.store, a).unwrap(), ids(&["C2"]));
    assert!(!is_queued(&f.store, "demo", "C1").unwrap());
    let again = f
        .store
        .write(|tx| remove_customer(tx, "demo", "C1"))
        .await
        .unwrap();
    assert!(!again, "a customer not queued is not removed twice");
    f.store
        .write(|tx| remove_customer(tx, "demo", "C2"))
        .await
        .unwrap();
    let j = get(&f.store, a);
    assert_eq!((j.total, j.state), (0, JobState::Done));
    assert!(j.finished_at.is_some());
    // Re-queueing after removal makes a new job.
    let b = enqueue_ids(&f.store, &["C1"], "back").await.unwrap();
    assert_ne!(a, b);
}

#[tokio::test]
async fn batches_take_oldest_jobs_first_mix_jobs_and_skip_busy_failed_and_isolated() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1", "C2", "C3"], "a")
        .await
        .unwrap();
    let b = enqueue_ids(&f.store, &["C4", "C5"], "b").await.unwrap();
    let c = enqueue_ids(&f.store, &["C6"], "c").await.unwrap();
    let none = HashSet::new();
    let iso = HashSet::new();
    let batch = next_batch(&f.store, "demo", &none, &iso, 4).unwrap();
    assert_eq!(
        members(&batch),
        vec![(a, "C1"), (a, "C2"), (a, "C3"), (b, "C4")]
    );
    let busy: HashSet<String> = ["C1", "C2", "C3", "C4"].map(String::from).into();
    let batch = next_batch(&f.store, "demo", &busy, &iso, 4).unwrap();
    assert_eq!(members(&batch), vec![(b, "C5"), (c, "C6")]);
    assert!(next_batch(&f.store, "other", &none, &iso, 4)
        .unwrap()
        .is_empty());

    // An isolated job is batched alone, as lead or not at all.
    let iso_b: HashSet<u64> = [b].into();
    let batch = next_batch(&f.store, "demo", &none, &iso_b, 10).unwrap();
    assert_eq!(
        members(&batch),
        vec![(a, "C1"), (a, "C2"), (a, "C3"), (c, "C6")]
    );
    let busy_a: HashSet<String> = ["C1", "C2", "C3"].map(String::from).into();
    let batch = next_batch(&f.store, "demo", &busy_a, &iso_b, 10).unwrap();
    assert_eq!(members(&batch), vec![(b, "C4"), (b, "C5")]);

    // A failed job is not drawn from.
    let dummy = Batch::new(
        1,
        vec![BatchMember {
            job: a,
            customer: "C1".into(),
        }],
    );
    f.store
        .write(|tx| drop_batch(tx, &dummy, Some("boom"), ts(5)))
        .await
        .unwrap();
    let batch = next_batch(&f.store, "demo", &none, &iso, 10).unwrap();
    assert_eq!(members(&batch), vec![(b, "C4"), (b, "C5"), (c, "C6")]);
}

#[tokio::test]
async fn pages_checkpoint_the_batch_and_the_last_page_marks_members_done() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1", "C2"], "a").await.unwrap();
    let b = enqueue_ids(&f.store, &["C3"], "b").await.unwrap();
    let batch = Batch::new(77, first_batch(&f.store).unwrap());
    assert_eq!(batch.lead(), a);
    assert_eq!(batch.job_ids(), vec![a, b]);

    let page1 = [inv("I1", "C1"), inv("I2", "C3"), inv("I3", "C3")];
    let out = commit(
        &f.store,
        &batch,
        Entity::Invoices,
        "after-I3",
        false,
        &page1,
    )
    .await;
    assert!(!out.batch_complete);
    let ja = get(&f.store, a);
    assert_eq!(ja.state, JobState::Running);
    assert_eq!(ja.started_at, Some(ts(10)));
    assert_eq!((ja.records_fetched, ja.requests), (1, 1));
    assert_eq!(ja.batches.len(), 1, "the lead job holds the checkpoint");
    let cp = &ja.batches[0];
    assert_eq!(cp.id, 77);
    assert_eq!(cp.records, BTreeMap::from([(a, 1), (b, 2)]));
    assert_eq!(ja.records_done, 0, "no customer finished yet");
    let inv_pos = cp
        .streams
        .iter()
        .find(|s| s.entity == Entity::Invoices)
        .unwrap();
    assert_eq!(
        (inv_pos.cursor.0.as_str(), inv_pos.done, inv_pos.pages),
        ("after-I3", false, 1)
    );
    let jb = get(&f.store, b);
    assert_eq!(
        (jb.state, jb.records_fetched, jb.requests),
        (JobState::Running, 2, 0)
    );
    assert_eq!(batches(&f.store, "demo").unwrap(), vec![cp.clone()]);

    // Both streams end: every member is done, the checkpoint is gone.
    commit(&f.store, &batch, Entity::Invoices, "end", true, &[]).await;
    let out = commit(&f.store, &batch, Entity::Transactions, "t-end", true, &[]).await;
    assert!(out.batch_complete);
    assert_eq!(out.customers_done, 3);
    assert_eq!(out.jobs_finished, vec![a, b]);
    let ja = get(&f.store, a);
    assert_eq!(
        (ja.state, ja.done, ja.total, ja.requests),
        (JobState::Done, 2, 2, 3)
    );
    assert_eq!((ja.records_fetched, ja.records_done), (1, 1));
    assert_eq!(get(&f.store, b).records_done, 2);
    assert!(ja.batches.is_empty());
    assert_eq!(ja.finished_at, Some(ts(10)));
    assert!(batches(&f.store, "demo").unwrap().is_empty());
    for c in ["C1", "C2", "C3"] {
        assert!(!is_queued(&f.store, "demo", c).unwrap(), "{c}");
    }
    assert!(pending_members(&f.store, a).unwrap().is_empty());
}

#[tokio::test]
async fn a_member_excluded_mid_batch_is_not_marked_done_in_its_old_job() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1", "C2", "C3"], "a")
        .await
        .unwrap();
    let batch = Batch::new(5, first_batch(&f.store).unwrap());
    commit(&f.store, &batch, Entity::Invoices, "x", false, &[]).await;
    // C2 excluded (job shrinks); C3 excluded and re-included into a new job.
    f.store
        .write(|tx| {
            remove_customer(tx, "demo", "C2")?;
            remove_customer(tx, "demo", "C3")
        })
        .await
        .unwrap();
    let c = enqueue_ids(&f.store, &["C3"], "back").await.unwrap();
    assert_eq!(get(&f.store, a).total, 1);
    commit(&f.store, &batch, Entity::Invoices, "y", true, &[]).await;
    let out = commit(&f.store, &batch, Entity::Transactions, "z", true, &[]).await;
    assert_eq!(out.customers_done, 1);
    let ja = get(&f.store, a);
    assert_eq!((ja.state, ja.done, ja.total), (JobState::Done, 1, 1));
    let jc = get(&f.store, c);
    assert_eq!((jc.state, jc.done), (JobState::Queued, 0));
    assert_eq!(pending_members(&f.store, c).unwrap(), ids(&["C3"]));
    assert!(!is_queued(&f.store, "demo", "C2").unwrap());
}

#[tokio::test]
async fn a_failed_batch_fails_its_job_keeps_progress_and_retry_requeues_it() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1", "C2"], "a").await.unwrap();
    let batch = Batch::new(9, first_batch(&f.store).unwrap());
    commit(
        &f.store,
        &batch,
        Entity::Invoices,
        "p1",
        false,
        &[inv("I1", "C1")],
    )
    .await;

    // Retrying a job that has not failed is refused and changes nothing.
    let before = get(&f.store, a);
    let err = f.store.write(|tx| retry(tx, a)).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("resync job {a} is running; only a failed job can be retried")
    );
    assert_eq!(get(&f.store, a), before);
    let err = f
        .store
        .write(|tx| retry(tx, 424242))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.to_string(), "no resync job 424242");

    let failed = f
        .store
        .write(|tx| drop_batch(tx, &batch, Some("invoices: ERP server error"), ts(20)))
        .await
        .unwrap();
    assert_eq!(failed, vec![a]);
    let ja = get(&f.store, a);
    assert_eq!(ja.state, JobState::Failed);
    assert_eq!(ja.error.as_deref(), Some("invoices: ERP server error"));
    assert_eq!(ja.records_fetched, 1, "what was fetched is kept");
    assert!(ja.batches.is_empty());
    assert_eq!(pending_members(&f.store, a).unwrap(), ids(&["C1", "C2"]));
    // Still queued: re-including them does not make a second job.
    assert_eq!(enqueue_ids(&f.store, &["C1"], "again").await, None);

    let retried = f.store.write(|tx| retry(tx, a)).await.unwrap().unwrap();
    assert_eq!(retried.state, JobState::Running);
    assert_eq!((retried.error, retried.finished_at), (None, None));
    assert_eq!(
        members(&first_batch(&f.store).unwrap()),
        vec![(a, "C1"), (a, "C2")]
    );
}

#[tokio::test]
async fn dropping_a_mixed_batch_without_failing_leaves_jobs_running() {
    let f = fixture();
    let a = enqueue_ids(&f.store, &["C1"], "a").await.unwrap();
    let b = enqueue_ids(&f.store, &["C2"], "b").await.unwrap();
    let batch = Batch::new(3, first_batch(&f.store).unwrap());
    commit(&f.store, &batch, Entity::Invoices, "p1", false, &[]).await;
    let failed = f
        .store
        .write(|tx| drop_batch(tx, &batch, None, ts(20)))
        .await
        .unwrap();
    assert!(failed.is_empty());
    assert_eq!(get(&f.store, a).state, JobState::Running);
    assert_eq!(get(&f.store, b).state, JobState::Running);
    assert!(batches(&f.store, "demo").unwrap().is_empty());
}

#[tokio::test]
async fn finished_jobs_beyond_the_history_limit_are_pruned_with_their_members() {
    let f = fixture();
    let mut finished = Vec::new();
    for i in 0..(KEEP_FINISHED + 2) {
        let c = format!("C{i}");
        let id = enqueue_ids(&f.store, &[c.as_str()], "r").await.unwrap();
        let batch = Batch::new(
            1000 + i as u64,
            vec![BatchMember {
                job: id,
                customer: c.clone(),
            }],
        );
        commit(&f.store, &batch, Entity::Invoices, "e", true, &[]).await;
        commit(&f.store, &batch, Entity::Transactions, "e", true, &[]).await;
        finished.push(id);
    }
    let left: Vec<u64> = jobs(&f.store).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(left, finished[2..].to_vec());
    assert!(f.store.resync_members(finished[0]).unwrap().is_empty());
}
