//! The resync engine end to end on the demo connector: re-included customers
//! get back exactly the upstream's invoices and transactions, in batches; a
//! job shrinks when a member is excluded again; polling and resync racing on
//! the same records keep the newer version and no duplicate; a failing batch
//! fails its job only and can be retried; a daemon killed mid-job resumes
//! where it stopped; the admin API and CLI refuse bad input without queueing
//! anything.
//!
//! Tests that need to hold a resync at a precise point use [`Scripted`], a
//! demo connector whose customer-set reads wait at a gate after reading
//! upstream (so the page is a snapshot taken before the test's next change)
//! and can be made to fail.

use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use erpsync::app::{App, ConnectorHandle};
use erpsync::classify;
use erpsync::connectors::demo::{DemoConnector, DemoErp, DemoOptions};
use erpsync::connectors::{Budget, Connector, ConnectorError, Cursor, Lane, NativeExclusion, Page};
use erpsync::exclusion;
use erpsync::model::{
    Customer, CustomerKey, Entity, Invoice, InvoiceStatus, ManualAction, ManualDecision, Record,
};
use erpsync::resync::queue::{self, Job, JobState};
use erpsync::store::Store;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::{small_demo, Api, InProcess, Setup, TOKEN};

// ----- helpers ------------------------------------------------------------

/// Every invoice and transaction the ERP has for `customers`, in a stable order.
fn erp_records(erp: &DemoErp, customers: &[String]) -> Vec<Record> {
    let set: HashSet<&str> = customers.iter().map(String::as_str).collect();
    let mut out: Vec<Record> = erp
        .invoices()
        .into_iter()
        .map(Record::Invoice)
        .chain(erp.transactions().into_iter().map(Record::Transaction))
        .filter(|r| set.contains(r.customer_id()))
        .collect();
    out.sort_by_key(order);
    out
}

/// Every invoice and transaction the store holds for `customers`.
fn stored_records(store: &Store, customers: &[String]) -> Vec<Record> {
    let mut out = Vec::new();
    for c in customers {
        out.extend(store.records_of(&CustomerKey::new("demo", c)).unwrap());
    }
    out.sort_by_key(order);
    out
}

fn order(r: &Record) -> (Entity, String) {
    (r.entity(), r.external_id().to_string())
}

fn amount(r: &Record) -> Decimal {
    match r {
        Record::Invoice(i) => i.amount_due,
        Record::Transaction(t) => t.amount,
    }
}

/// Asserts the store holds exactly the ERP's records (same versions, same
/// amounts, nothing twice, nothing extra) for `customers`.
fn assert_same_records(store: &Store, erp: &DemoErp, customers: &[String]) {
    let want = erp_records(erp, customers);
    let got = stored_records(store, customers);
    assert_eq!(got.len(), want.len(), "record count");
    let sum = |v: &[Record]| v.iter().map(amount).sum::<Decimal>();
    assert_eq!(sum(&got), sum(&want), "amounts");
    assert_eq!(got, want, "records (ids, versions, amounts)");
}

/// The first `n` included customers of the store with at least one record
/// upstream, by id.
fn included_with_records(store: &Store, erp: &DemoErp, n: usize) -> Vec<String> {
    let owners: HashSet<String> = erp
        .invoices()
        .into_iter()
        .map(|i| i.customer_id)
        .chain(erp.transactions().into_iter().map(|t| t.customer_id))
        .collect();
    let out: Vec<String> = store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .filter(|c| !c.classification.excluded && owners.contains(&c.customer.external_id))
        .map(|c| c.customer.external_id)
        .take(n)
        .collect();
    assert_eq!(out.len(), n, "the demo has enough included customers");
    out
}

/// Excludes or re-includes customers by hand, in one store write, the way
/// the exclusion API does: a manual decision, then `exclusion::apply`.
/// Re-included customers are queued one job each when `queue_each`, else
/// into one job (returned first).
async fn decide(app: &App, ids: &[String], action: ManualAction, queue_each: bool) -> Vec<u64> {
    let native: Vec<NativeExclusion> = app.connectors[0].native.clone();
    let now = chrono::Utc::now();
    let jobs = app
        .store
        .write(|tx| {
            let rules = app.rules();
            let mut jobs = Vec::new();
            let mut back = Vec::new();
            for id in ids {
                let key = CustomerKey::new("demo", id);
                let mut sc = tx.customer(&key)?.expect("customer synced");
                let d = ManualDecision {
                    action,
                    actor: "test".into(),
                    reason: "test".into(),
                    at: now,
                };
                tx.set_manual_decision(&key, Some(&d))?;
                let was = sc.classification.clone();
                let new = classify::classify(&sc.customer, Some(&d), &rules, &native);
                let t = exclusion::apply(
                    tx,
                    &mut sc,
                    Some(&was),
                    new,
                    "test",
                    "test",
                    now,
                    queue_each,
                )?;
                jobs.extend(t.resync_job);
                if t.newly_included {
                    back.push(id.clone());
                }
            }
            if !queue_each && !back.is_empty() {
                let job = queue::enqueue(tx, "demo", &back, "re-included: manual", now)?;
                jobs.insert(0, job.expect("customers were not queued"));
            }
            Ok(jobs)
        })
        .await
        .unwrap();
    app.resync_wakeup.notify_waiters();
    jobs
}

/// Re-includes customers by hand, one job per group, all in one store
/// write (so the worker sees every job at once).
async fn include_jobs(app: &App, groups: &[&[String]]) -> Vec<u64> {
    let native: Vec<NativeExclusion> = app.connectors[0].native.clone();
    let now = chrono::Utc::now();
    let jobs = app
        .store
        .write(|tx| {
            let rules = app.rules();
            let mut jobs = Vec::new();
            for group in groups {
                for id in group.iter() {
                    let key = CustomerKey::new("demo", id);
                    let mut sc = tx.customer(&key)?.expect("customer synced");
                    let d = ManualDecision {
                        action: ManualAction::Include,
                        actor: "test".into(),
                        reason: "test".into(),
                        at: now,
                    };
                    tx.set_manual_decision(&key, Some(&d))?;
                    let was = sc.classification.clone();
                    let new = classify::classify(&sc.customer, Some(&d), &rules, &native);
                    exclusion::apply(tx, &mut sc, Some(&was), new, "test", "test", now, false)?;
                }
                let job = queue::enqueue(tx, "demo", group, "re-included: manual", now)?;
                jobs.push(job.expect("customers were not queued"));
            }
            Ok(jobs)
        })
        .await
        .unwrap();
    app.resync_wakeup.notify_waiters();
    jobs
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn job(store: &Store, id: u64) -> Job {
    queue::job(store, id).unwrap().expect("job exists")
}

/// Waits until no job is queued or running; returns all jobs.
async fn wait_queue_idle(store: &Store) -> Vec<Job> {
    wait_until("the resync queue to drain", || {
        queue::jobs(store)
            .unwrap()
            .iter()
            .all(|j| !j.state.is_active())
    })
    .await;
    queue::jobs(store).unwrap()
}

/// Requests one customer-set stream needs: one per page, at least one.
fn pages(records: usize, page_size: usize) -> u64 {
    records.div_ceil(page_size).max(1) as u64
}

/// Requests a batch of `customers` needs (one stream per entity).
fn batch_requests(erp: &DemoErp, customers: &[String], page_size: usize) -> u64 {
    let recs = erp_records(erp, customers);
    let inv = recs
        .iter()
        .filter(|r| r.entity() == Entity::Invoices)
        .count();
    pages(inv, page_size) + pages(recs.len() - inv, page_size)
}

// ----- a demo connector the test can hold back or break -------------------

/// The demo connector, with customer-set reads that wait at a per-entity
/// gate after reading upstream, and whose transactions reads of any set
/// naming `fail_for` get HTTP 503 on every attempt (through the budget, so
/// it retries as it would against a real ERP).
struct Scripted {
    inner: DemoConnector,
    budget: Arc<Budget>,
    invoices_gate: tokio::sync::Semaphore,
    transactions_gate: tokio::sync::Semaphore,
    /// Customer-set reads done upstream (before the gate).
    reads: AtomicUsize,
    fail_for: Mutex<Option<String>>,
}

impl Scripted {
    fn gate(&self, e: Entity) -> &tokio::sync::Semaphore {
        match e {
            Entity::Transactions => &self.transactions_gate,
            _ => &self.invoices_gate,
        }
    }

    fn open(&self, e: Entity) {
        self.gate(e).add_permits(1_000_000);
    }
}

#[async_trait]
impl Connector for Scripted {
    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError> {
        self.inner.fetch_customers(cursor).await
    }
    async fn fetch_records(
        &self,
        entity: Entity,
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        self.inner.fetch_records(entity, cursor).await
    }
    async fn fetch_records_for_customers(
        &self,
        entity: Entity,
        customer_ids: &[String],
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        let fail = self.fail_for.lock().unwrap().clone();
        if let Some(x) = fail {
            if entity == Entity::Transactions && customer_ids.contains(&x) {
                self.gate(entity)
                    .acquire()
                    .await
                    .expect("gate never closed")
                    .forget();
                // The ERP answers 503 to every attempt the budget makes.
                return self
                    .budget
                    .call(Lane::Resync, || async {
                        Err(ConnectorError::Server {
                            status: 503,
                            message: "injected".into(),
                        })
                    })
                    .await;
            }
        }
        let page = self
            .inner
            .fetch_records_for_customers(entity, customer_ids, cursor)
            .await;
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.gate(entity)
            .acquire()
            .await
            .expect("gate never closed")
            .forget();
        page
    }
    fn resync_batch_size(&self) -> usize {
        self.inner.resync_batch_size()
    }
    fn page_size(&self) -> usize {
        self.inner.page_size()
    }
}

/// The real server in-process over a [`Scripted`] demo connector, with
/// retries fast enough for tests (2 attempts, millisecond back-off).
struct Harness {
    app: Arc<App>,
    erp: Arc<DemoErp>,
    conn: Arc<Scripted>,
    api: Api,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start(opts: &DemoOptions) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let text = format!(
            "[daemon]\nstate_dir = \"state\"\n[http]\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"token\"\n\
             [[connectors]]\nid = \"demo\"\nkind = \"demo\"\npoll_interval = \"1h\"\n\
             rate_limit = {{ requests_per_second = 5000, burst = 5000, max_concurrency = 4, max_attempts = 2 }}\n{}",
            crate::support::demo_toml(opts)
        );
        let path = dir.path().join("erpsync.toml");
        std::fs::write(&path, text).unwrap();
        let config = erpsync::config::load(&path, &erpsync::connectors::REGISTRY)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&config.daemon.state_dir).unwrap();
        let store = Arc::new(Store::open(&config.daemon.state_dir).unwrap());
        let mut cc = config.connectors[0].clone();
        cc.limits.min_backoff = Duration::from_millis(1);
        cc.limits.max_backoff = Duration::from_millis(5);
        let budget = Budget::new(cc.limits);
        let erp = DemoErp::new(opts);
        let conn = Arc::new(Scripted {
            inner: DemoConnector::new(
                Arc::clone(&erp),
                Arc::clone(&budget),
                opts.page_size,
                Duration::ZERO,
            ),
            budget: Arc::clone(&budget),
            invoices_gate: tokio::sync::Semaphore::new(0),
            transactions_gate: tokio::sync::Semaphore::new(0),
            reads: AtomicUsize::new(0),
            fail_for: Mutex::new(None),
        });
        let handle = Arc::new(ConnectorHandle::new(
            cc,
            Arc::clone(&conn) as Arc<dyn Connector>,
            budget,
        ));
        let token = config.http.admin_token.as_ref().map(|s| s.load().unwrap());
        let app = App::new(config, store, vec![handle], token);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app2 = Arc::clone(&app);
        let task = tokio::spawn(async move {
            erpsync::daemon::run_with(app2, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let h = Harness {
            app,
            erp,
            conn,
            api: Api::new(&base),
            _dir: dir,
            stop: Some(tx),
            task: Some(task),
        };
        h.wait_passes(1).await;
        h
    }

    async fn wait_passes(&self, n: u64) {
        let c = &self.app.connectors[0];
        wait_until("a poll pass", || c.status().passes >= n).await;
    }

    async fn sync_now(&self) {
        let n = self.app.connectors[0].status().passes;
        self.app.connectors[0].poll_now.notify_one();
        self.wait_passes(n + 1).await;
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let api = self.api.clone();
        let (method, path) = (method.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || api.call(&method, &path, body.as_ref()))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

fn refs(ids: &[String]) -> Vec<String> {
    ids.iter().map(|i| format!("demo:{i}")).collect()
}

// ----- tests --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reincluded_customers_get_back_exactly_the_upstream_records_in_few_requests() {
    let opts = small_demo();
    let d = InProcess::start(&opts, "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let chosen = included_with_records(store, &d.erp, 150);
    decide(&d.app, &chosen, ManualAction::Exclude, false).await;
    assert!(
        stored_records(store, &chosen).is_empty(),
        "excluded customers were purged"
    );

    // One job of 100 customers, then 50 jobs of one: the worker batches the
    // 50 small jobs together instead of asking once per customer.
    let (big, small) = chosen.split_at(100);
    let before = d.app.connectors[0].budget.stats().resync_requests;
    let big_job = decide(&d.app, big, ManualAction::Include, false).await;
    let small_jobs = decide(&d.app, small, ManualAction::Include, true).await;
    assert_eq!(big_job.len(), 1);
    assert_eq!(small_jobs.len(), 50);
    let all = wait_queue_idle(store).await;
    assert!(all.iter().all(|j| j.state == JobState::Done), "{all:#?}");

    assert_same_records(store, &d.erp, &chosen);
    let requests = d.app.connectors[0].budget.stats().resync_requests - before;
    let expected =
        batch_requests(&d.erp, big, opts.page_size) + batch_requests(&d.erp, small, opts.page_size);
    assert_eq!(requests, expected, "one stream per entity per batch");
    assert!(
        requests < 2 * chosen.len() as u64 / 10,
        "{requests} requests for {} customers",
        chosen.len()
    );

    // Progress as the API shows it.
    let (st, v) = d
        .call("GET", &format!("/api/v1/resyncs/{}", big_job[0]), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "done");
    assert_eq!(v["customers_total"], 100);
    assert_eq!(v["customers_done"], 100);
    assert_eq!(
        v["records_fetched"],
        erp_records(&d.erp, big).len() as u64,
        "{v:#}"
    );
    assert_eq!(
        v["requests"],
        batch_requests(&d.erp, big, opts.page_size),
        "{v:#}"
    );
    assert!(v["started_at"].is_string() && v["finished_at"].is_string());
    assert_eq!(v["pending_customers"], json!([]));
    assert_eq!(v["eta"], Value::Null);
    let (st, list) = d.call("GET", "/api/v1/resyncs?state=done", None).await;
    assert_eq!(st, 200);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 51);
    let (_, status) = d.call("GET", "/status", None).await;
    assert_eq!(status["resync"]["jobs_done"], 51, "{status:#}");
    assert_eq!(status["resync"]["customers_pending"], 0);
    assert_eq!(status["resync"]["jobs"], json!([]));
    // Re-included by hand: classification says so, no queue entry is left.
    for c in &chosen {
        let sc = store
            .customer(&CustomerKey::new("demo", c))
            .unwrap()
            .unwrap();
        assert!(!sc.classification.excluded);
        assert!(!queue::is_queued(store, "demo", c).unwrap());
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_reactivated_upstream_is_resynced() {
    let opts = small_demo();
    let d = InProcess::start(&opts, "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let ids = included_with_records(store, &d.erp, 3);
    for id in &ids {
        assert!(d.erp.set_customer_inactive(id, true));
    }
    d.sync_now().await;
    assert!(stored_records(store, &ids).is_empty(), "inactive → purged");
    // Upstream keeps changing while it is inactive: a new invoice arrives
    // and is dropped at ingest.
    let mut extra = d
        .erp
        .invoices()
        .into_iter()
        .find(|i| i.customer_id == ids[0])
        .unwrap();
    extra.external_id = String::new();
    extra.amount_due = Decimal::new(12345, 2);
    let extra = d.erp.add_invoice(extra);
    d.sync_now().await;
    assert!(stored_records(store, &ids).is_empty());

    for id in &ids {
        assert!(d.erp.set_customer_inactive(id, false));
    }
    d.sync_now().await;
    let jobs = queue::jobs(store).unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0].reason, "included again upstream");
    assert_eq!(jobs[0].total, 3);
    wait_queue_idle(store).await;
    assert_eq!(job(store, jobs[0].id).state, JobState::Done);
    assert_same_records(store, &d.erp, &ids);
    assert!(stored_records(store, &ids[..1])
        .iter()
        .any(|r| r.external_id() == extra.external_id));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluding_a_member_mid_job_shrinks_the_job_and_purges_its_partial_data() {
    let h = Harness::start(&small_demo()).await;
    let store = &h.app.store;
    let ids = included_with_records(store, &h.erp, 10);
    let (x, rest) = (&ids[3], [&ids[..3], &ids[4..]].concat());
    assert!(!erp_records(&h.erp, std::slice::from_ref(x)).is_empty());
    decide(&h.app, &ids, ManualAction::Exclude, false).await;
    let id = decide(&h.app, &ids, ManualAction::Include, false).await[0];

    // Invoices flow, transactions are held: x's invoices are in the store.
    h.conn.open(Entity::Invoices);
    wait_until("the invoices of the batch", || {
        job(store, id).batches.first().is_some_and(|b| {
            b.streams
                .iter()
                .any(|s| s.entity == Entity::Invoices && s.done)
        })
    })
    .await;
    let partial = stored_records(store, std::slice::from_ref(x));
    assert!(!partial.is_empty());
    assert!(partial.iter().all(|r| r.entity() == Entity::Invoices));
    assert_eq!(job(store, id).state, JobState::Running);

    decide(
        &h.app,
        std::slice::from_ref(x),
        ManualAction::Exclude,
        false,
    )
    .await;
    let j = job(store, id);
    assert_eq!((j.total, j.done), (9, 0), "the job shrank");
    assert!(
        stored_records(store, std::slice::from_ref(x)).is_empty(),
        "partial data purged"
    );
    assert!(!queue::is_queued(store, "demo", x).unwrap());

    h.conn.open(Entity::Transactions);
    wait_queue_idle(store).await;
    let j = job(store, id);
    assert_eq!((j.state, j.total, j.done), (JobState::Done, 9, 9));
    assert!(
        stored_records(store, std::slice::from_ref(x)).is_empty(),
        "its transactions were dropped at ingest"
    );
    assert_same_records(store, &h.erp, &rest);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_during_a_resync_wins_with_newer_versions_and_deletions() {
    let h = Harness::start(&small_demo()).await;
    let store = &h.app.store;
    let ids = included_with_records(store, &h.erp, 5);
    let invoices: Vec<Invoice> = h
        .erp
        .invoices()
        .into_iter()
        .filter(|i| ids.contains(&i.customer_id))
        .collect();
    assert!(invoices.len() >= 3, "enough invoices to play with");
    decide(&h.app, &ids, ManualAction::Exclude, false).await;
    let id = decide(&h.app, &ids, ManualAction::Include, false).await[0];

    // The resync has read both streams upstream and waits at the gates.
    wait_until("both resync reads", || {
        h.conn.reads.load(Ordering::SeqCst) >= 2
    })
    .await;
    // Meanwhile upstream changes and polling brings the changes in first.
    let (changed, gone) = (&invoices[0], &invoices[1]);
    assert!(h.erp.update_invoice(&changed.external_id, |i| {
        i.amount_due = Decimal::new(1, 2);
        i.status = InvoiceStatus::Open;
    }));
    assert!(h.erp.delete_invoice(&gone.external_id));
    let mut new = invoices[2].clone();
    new.external_id = String::new();
    let new = h.erp.add_invoice(new);
    h.sync_now().await;
    let polled = stored_records(store, &ids);
    assert!(polled
        .iter()
        .any(|r| r.external_id() == changed.external_id && amount(r) == Decimal::new(1, 2)));

    // Now the resync writes its older snapshot: it must not win.
    h.conn.open(Entity::Invoices);
    h.conn.open(Entity::Transactions);
    wait_queue_idle(store).await;
    assert_eq!(job(store, id).state, JobState::Done);
    assert_same_records(store, &h.erp, &ids);
    let got = stored_records(store, &ids);
    assert!(got.iter().all(|r| r.external_id() != gone.external_id));
    assert!(got.iter().any(|r| r.external_id() == new.external_id));
    let unique: BTreeSet<(Entity, String)> = got.iter().map(order).collect();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_polling_with_trickle_and_resync_converge_to_upstream() {
    let opts = DemoOptions {
        page_size: 20,
        latency_ms: 5,
        trickle: 30,
        ..small_demo()
    };
    let d = InProcess::start(&opts, "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let ids = included_with_records(store, &d.erp, 200);
    decide(&d.app, &ids, ManualAction::Exclude, false).await;
    let id = decide(&d.app, &ids, ManualAction::Include, false).await[0];
    // Poll passes (each changing upstream first) while the job runs.
    while job(store, id).state.is_active() {
        d.sync_now().await;
    }
    assert_eq!(job(store, id).state, JobState::Done);
    d.sync_now().await;

    // The whole store equals upstream for every included customer.
    let included: Vec<String> = store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .filter(|c| !c.classification.excluded)
        .map(|c| c.customer.external_id)
        .collect();
    assert_same_records(store, &d.erp, &included);
    let all: Vec<(Entity, String)> = store
        .records(Some("demo"))
        .map(|r| order(&r.unwrap().1))
        .collect();
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(unique.len(), all.len(), "no record stored twice");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_fails_its_job_only_keeps_what_was_fetched_and_can_be_retried() {
    let h = Harness::start(&small_demo()).await;
    let store = &h.app.store;
    let ids = included_with_records(store, &h.erp, 6);
    let (a, b) = ids.split_at(3);
    *h.conn.fail_for.lock().unwrap() = Some(a[0].clone());
    decide(&h.app, &ids, ManualAction::Exclude, false).await;
    let jobs = include_jobs(&h.app, &[a, b]).await;
    let (ja, jb) = (jobs[0], jobs[1]);

    // The first batch mixes both jobs; its invoices land, then its
    // transactions fail: the batch is split, and only a's job fails.
    h.conn.open(Entity::Invoices);
    let invoices_of = |c: &[String]| -> Vec<Record> {
        erp_records(&h.erp, c)
            .into_iter()
            .filter(|r| r.entity() == Entity::Invoices)
            .collect()
    };
    wait_until("the mixed batch's invoices", || {
        stored_records(store, &ids) == invoices_of(&ids)
    })
    .await;
    h.conn.open(Entity::Transactions);
    wait_queue_idle(store).await;

    let fa = job(store, ja);
    assert_eq!(fa.state, JobState::Failed, "{fa:#?}");
    let err = fa.error.clone().unwrap();
    assert!(
        err.contains("transactions: ERP server error (HTTP 503): injected"),
        "{err}"
    );
    assert_eq!(fa.done, 0);
    let fb = job(store, jb);
    assert_eq!(fb.state, JobState::Done, "the other job went on");
    assert!(fb.requests > 0, "b was fetched in a batch of its own");
    assert_same_records(store, &h.erp, b);
    assert_eq!(
        stored_records(store, a),
        invoices_of(a),
        "what was fetched is kept"
    );
    let budget = h.app.connectors[0].budget.stats();
    assert!(budget.retries > 0, "the budget retried before giving up");

    // /status and the API show the failure.
    let (_, status) = h.call("GET", "/status", None).await;
    assert_eq!(status["resync"]["jobs_failed"], 1, "{status:#}");
    let shown = &status["resync"]["jobs"][0];
    assert_eq!(shown["id"], ja);
    assert_eq!(shown["state"], "failed");
    assert_eq!(shown["error"], err.as_str());
    assert!(shown["requests"].as_u64().unwrap() > 0, "{shown}");
    let (st, v) = h.call("GET", &format!("/api/v1/resyncs/{ja}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["pending_customers"], json!(refs(a)));

    // Retrying a job that did not fail is refused and changes nothing.
    let (st, v) = h
        .call("POST", &format!("/api/v1/resyncs/{jb}/retry"), None)
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(
        v["error"],
        format!("resync job {jb} is done; only a failed job can be retried")
    );
    assert_eq!(job(store, jb).state, JobState::Done);

    // The ERP recovers; the retried job completes.
    *h.conn.fail_for.lock().unwrap() = None;
    let (st, v) = h
        .call("POST", &format!("/api/v1/resyncs/{ja}/retry"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        matches!(v["state"].as_str(), Some("running" | "done")),
        "{v}"
    );
    wait_queue_idle(store).await;
    assert_eq!(job(store, ja).state, JobState::Done);
    assert_same_records(store, &h.erp, &ids);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_resync_refuses_bad_requests_without_queueing_anything() {
    let h = Harness::start(&small_demo()).await;
    let store = &h.app.store;
    let ids = included_with_records(store, &h.erp, 3);
    let excluded: Vec<String> = store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .filter(|c| c.classification.excluded)
        .map(|c| c.customer.external_id)
        .take(1)
        .collect();
    let ex = &excluded[0];
    let ex_reason = store
        .customer(&CustomerKey::new("demo", ex))
        .unwrap()
        .unwrap()
        .classification
        .reason;
    let cases: Vec<(Value, u16, Vec<String>)> = vec![
        (
            json!({"customers": []}),
            400,
            vec!["must name at least one customer".into()],
        ),
        (
            json!({"customers": [format!("demo:{}", ids[0]), "C00001", ":x"]}),
            400,
            vec!["not customer references".into(), "`C00001`, `:x`".into()],
        ),
        (
            json!({"customers": [format!("demo:{}", ids[0]), "sap:1"]}),
            404,
            vec!["unknown connectors: `sap`; configured: demo".into()],
        ),
        (
            json!({"customers": [format!("demo:{}", ids[0]), "demo:NOPE1", "demo:NOPE2"]}),
            404,
            vec!["unknown customers: demo:NOPE1, demo:NOPE2".into()],
        ),
        (
            json!({"customers": [format!("demo:{}", ids[0]), format!("demo:{ex}")]}),
            400,
            vec![
                "excluded customers are not resynced".into(),
                format!("demo:{ex} ({ex_reason})"),
            ],
        ),
        (
            json!({"customers": [format!("demo:{}", ids[0])], "why": "x"}),
            422,
            vec!["unknown field `why`".into()],
        ),
        (
            json!({"customers": [format!("demo:{}", ids[0])], "reason": "x".repeat(501)}),
            400,
            vec!["`reason` is longer than 500 characters".into()],
        ),
        (json!("demo:C1"), 422, vec!["invalid type".into()]),
    ];
    for (body, status, needles) in cases {
        let (st, v) = h.call("POST", "/api/v1/resyncs", Some(body.clone())).await;
        assert_eq!(st, status, "{body} → {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        for n in &needles {
            assert!(msg.contains(n.as_str()), "{body}: `{n}` not in `{msg}`");
        }
        assert!(
            queue::jobs(store).unwrap().is_empty(),
            "{body} queued a job"
        );
    }
    for (path, status, needle) in [
        ("/api/v1/resyncs/abc", 400, "`abc` is not a resync job id"),
        ("/api/v1/resyncs/987654", 404, "no resync job 987654"),
        ("/api/v1/resyncs?state=stuck", 400, "unknown state `stuck`"),
        ("/api/v1/resyncs?page=2", 400, "unknown field `page`"),
    ] {
        let (st, v) = h.call("GET", path, None).await;
        assert_eq!(st, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{path}: {v}");
    }
    let (st, v) = h.call("POST", "/api/v1/resyncs/987654/retry", None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (404, Some("no resync job 987654"))
    );
    let anonymous = h.api.without_token();
    let (st, _) =
        tokio::task::spawn_blocking(move || anonymous.call("GET", "/api/v1/resyncs", None))
            .await
            .unwrap();
    assert_eq!(st, 401);

    // A good request: queued without touching exclusion state.
    let decisions_before = store.manual_decisions().count();
    let (st, v) = h
        .call(
            "POST",
            "/api/v1/resyncs",
            Some(json!({"customers": refs(&ids[..2]), "reason": "amounts look off"})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["queued"], 2);
    let first = v["jobs"][0]["id"].as_u64().unwrap();
    assert_eq!(job(store, first).reason, "on demand: amounts look off");
    assert_eq!(store.manual_decisions().count(), decisions_before);
    // Held at the gate: asking again only queues the customer not queued yet.
    wait_until("the resync reads", || {
        h.conn.reads.load(Ordering::SeqCst) >= 2
    })
    .await;
    let (st, v) = h
        .call(
            "POST",
            "/api/v1/resyncs",
            Some(json!({"customers": refs(&ids)})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["queued"], 1);
    assert_eq!(
        v["already_queued"],
        json!([
            {"customer": format!("demo:{}", ids[0]), "job": first},
            {"customer": format!("demo:{}", ids[1]), "job": first},
        ])
    );
    let (_, status) = h.call("GET", "/status", None).await;
    let active = status["resync"]["jobs"].as_array().unwrap();
    assert_eq!(active.len(), 2, "{status:#}");
    assert_eq!(active[0]["state"], "queued");
    assert_eq!(
        active[0]["eta"],
        Value::Null,
        "nothing finished to estimate from"
    );
    assert!(
        active[0]["rate"]["allowed_requests_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    h.conn.open(Entity::Invoices);
    h.conn.open(Entity::Transactions);
    let all = wait_queue_idle(store).await;
    assert!(all.iter().all(|j| j.state == JobState::Done));
    assert_same_records(store, &h.erp, &ids);
    for id in &ids {
        let sc = store
            .customer(&CustomerKey::new("demo", id))
            .unwrap()
            .unwrap();
        assert_eq!(sc.classification.reason, "included");
    }
    h.stop().await;
}

// ----- the real binary ---------------------------------------------------

fn cli(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(args)
        .arg("--config")
        .arg(setup.config_path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Included customers with records, by id, from a closed store.
fn pick_from_state(state: &std::path::Path, erp: &DemoErp, n: usize) -> Vec<String> {
    let store = Store::open(state).unwrap();
    included_with_records(&store, erp, n)
}

#[test]
fn kill9_mid_job_then_restart_resumes_and_converges_exactly() {
    let fast = small_demo();
    let setup = Setup::demo(&fast, "1h", "");
    let state = setup.dir.path().join("state");
    let d = setup.start();
    d.wait_passes(1);
    assert!(d.terminate().0.success());

    // An admin doubts 200 customers' data: here it is really gone.
    let erp = DemoErp::new(&fast);
    let ids = pick_from_state(&state, &erp, 200);
    {
        let store = Store::open(&state).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.write(|tx| {
            for id in &ids {
                tx.purge_customer_records(&CustomerKey::new("demo", id))?;
            }
            Ok(())
        }))
        .unwrap();
    }

    // Same data, slower and smaller pages for the resync.
    let slow = DemoOptions {
        page_size: 10,
        latency_ms: 40,
        ..fast.clone()
    };
    let text = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            &crate::support::demo_toml(&fast),
            &crate::support::demo_toml(&slow),
        );
    setup.write_config(&text);
    let d = setup.start();
    d.wait_passes(1);
    let v = d
        .client
        .post("/api/v1/resyncs", &json!({"customers": refs(&ids)}));
    let id = v["jobs"][0]["id"].as_u64().unwrap();
    let total_pages = batch_requests(&erp, &ids[..100], 10) + batch_requests(&erp, &ids[100..], 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = d.client.get(&format!("/api/v1/resyncs/{id}"));
        if j["requests"].as_u64().unwrap() >= total_pages / 3 {
            assert_ne!(j["state"], "done", "killed too late: {j}");
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {j}");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();

    let done_pages = {
        let store = Store::open(&state).unwrap();
        let j = queue::job(&store, id).unwrap().unwrap();
        assert_eq!(j.state, JobState::Running);
        assert!(!j.batches.is_empty(), "checkpoints are stored");
        j.requests
    };
    assert!(done_pages > 0 && done_pages < total_pages);

    let d = setup.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    let j = loop {
        let j = d.client.get(&format!("/api/v1/resyncs/{id}"));
        if j["state"] == "done" {
            break j;
        }
        assert_ne!(j["state"], "failed", "{j}");
        assert!(Instant::now() < deadline, "job did not finish: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(j["customers_done"], 200);
    assert_eq!(j["requests"], total_pages, "every page committed once");
    let s = d.client.get("/status");
    assert_eq!(
        s["connectors"][0]["requests"]["resync_requests"],
        total_pages - done_pages,
        "after the restart only the pages not yet durable were fetched"
    );
    assert!(d.terminate().0.success());
    crate::daemon::assert_store_equals_erp(&state, &fast);
}

#[test]
fn cli_queues_lists_and_watches_resyncs() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", "");
    let state = setup.dir.path().join("state");
    let d = setup.start();
    d.wait_passes(1);
    // The daemon holds the store: pick included customers from the ERP (no
    // rules are configured, so neither inactive nor intercompany).
    let erp = DemoErp::new(&opts);
    let ids: Vec<String> = erp
        .customers()
        .into_iter()
        .filter(|c| !c.inactive && !c.intercompany)
        .map(|c| c.external_id)
        .take(2)
        .collect();
    let (code, _, err) = cli(&setup, &["resync", "demo:NOPE"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404 Not Found: unknown customers: demo:NOPE"),
        "{err}"
    );
    let (code, _, err) = cli(&setup, &["resync", "nocolon"]);
    assert_eq!(code, 2);
    assert!(err.contains("CONNECTOR:EXTERNAL_ID"), "{err}");
    assert_eq!(d.client.get("/api/v1/resyncs")["jobs"], json!([]));

    let r = refs(&ids);
    let (code, out, err) = cli(
        &setup,
        &["resync", &r[0], &r[1], "--reason", "cli test", "--watch"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued resync job"), "{out}");
    assert!(out.contains("(demo, 2 customers)"), "{out}");
    assert!(
        out.contains(" done: 2/2, "),
        "--watch follows the new job: {out}"
    );

    let (code, out, err) = cli(&setup, &["resyncs", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "done");
    assert_eq!(jobs[0]["reason"], "on demand: cli test");
    assert_eq!(jobs[0]["customers_done"], 2);
    let (code, out, _) = cli(&setup, &["resyncs", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("JOB"), "{out}");
    assert!(
        out.contains("on demand: cli test") && out.contains("2/2"),
        "{out}"
    );
    let (code, out, _) = cli(&setup, &["resyncs", "watch"]);
    assert_eq!(code, 0);
    assert!(out.contains("no resync job is queued or running"), "{out}");
    let (code, out, _) = cli(&setup, &["resyncs", "show", &jobs[0]["id"].to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("customers:  2/2 done"), "{out}");
    let (code, _, err) = cli(&setup, &["resyncs", "retry", &jobs[0]["id"].to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("only a failed job can be retried"), "{err}");
    assert!(d.terminate().0.success());
    let store = Store::open(&state).unwrap();
    assert_same_records(&store, &erp, &ids);
}
