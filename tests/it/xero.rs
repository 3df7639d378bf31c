//! The Xero connector against the mock Xero, through the real daemon
//! in-process (poller, ingest, store, resync worker, admin API): full and
//! incremental sync equal to the mock's receivables with more than 1,000 of
//! each entity, bills never stored, deletions and voids propagated, archived
//! and GDPR contacts excluded with nothing of theirs stored, resync by
//! customer set in batches, boundary records and changes between pages,
//! faults, minute 429s waited out, a day 429 parking the connector until its
//! reset, tenant errors, token expiry and rotation across restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use erpsync::app::{App, WorkerState};
use erpsync::connectors::oauth;
use erpsync::credentials::StoreCredentials;
use erpsync::model::{CustomerKey, Entity, InvoiceStatus, Record, TransactionKind};
use erpsync::resync::queue::{self, JobState};
use erpsync::secrets::Secret;
use erpsync::store::Store;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::{Api, TOKEN};
use crate::xero_mock::{Db, Fault, MockConfig, MockXero};

pub const ID: &str = "xero";

// ----------------------------------------------------------------------------
// What the store must hold
// ----------------------------------------------------------------------------

/// Records as compared: (entity, id) → (customer, amount, what).
pub type View = BTreeMap<(Entity, String), (String, Decimal, String)>;

/// Every contact with the classification reason it must get, and the
/// receivables records of included contacts: the mock's receivables data.
pub fn expected(db: &Db) -> (BTreeMap<String, String>, View) {
    let reason = |status: &str| match status {
        "ARCHIVED" => "native:archived",
        "GDPRREQUEST" => "native:gdpr_request",
        _ => "included",
    };
    let customers: BTreeMap<String, String> = db
        .contacts
        .iter()
        .map(|c| (c.id.clone(), reason(&c.status).to_string()))
        .collect();
    let included = |id: &str| customers.get(id).map(String::as_str) == Some("included");
    let mut view = View::new();
    for i in &db.invoices {
        if i.kind != "ACCREC" || !included(&i.contact) {
            continue;
        }
        let status = match i.status.as_str() {
            "DRAFT" | "SUBMITTED" => InvoiceStatus::Draft,
            "AUTHORISED" => InvoiceStatus::Open,
            "PAID" => InvoiceStatus::Paid,
            _ => continue,
        };
        view.insert(
            (Entity::Invoices, i.id.clone()),
            (
                i.contact.clone(),
                i.total,
                format!("{status:?} due {} {}", i.amount_due.normalize(), i.currency),
            ),
        );
    }
    for c in &db.credit_notes {
        if c.kind == "ACCRECCREDIT"
            && matches!(c.status.as_str(), "AUTHORISED" | "PAID")
            && included(&c.contact)
        {
            view.insert(
                (Entity::Transactions, c.id.clone()),
                (
                    c.contact.clone(),
                    c.total,
                    format!("CreditNote {}", c.currency),
                ),
            );
        }
    }
    for p in &db.payments {
        let Some(inv) = db.invoice(&p.invoice) else {
            continue;
        };
        if p.kind == "ACCRECPAYMENT"
            && p.status == "AUTHORISED"
            && inv.kind == "ACCREC"
            && included(&inv.contact)
        {
            view.insert(
                (Entity::Transactions, p.id.clone()),
                (
                    inv.contact.clone(),
                    p.amount,
                    format!("Payment {}", inv.currency),
                ),
            );
        }
    }
    (customers, view)
}

/// What the store holds, in the same shape.
pub fn stored(store: &Store) -> (BTreeMap<String, String>, View) {
    let customers = store
        .customers(Some(ID), None)
        .map(|c| {
            let c = c.unwrap();
            (c.customer.external_id, c.classification.reason)
        })
        .collect();
    let mut view = View::new();
    for r in store.records(Some(ID)) {
        let (_, r) = r.unwrap();
        let (key, value) = match r {
            Record::Invoice(i) => (
                (Entity::Invoices, i.external_id),
                (
                    i.customer_id,
                    i.total,
                    format!(
                        "{:?} due {} {}",
                        i.status,
                        i.amount_due.normalize(),
                        i.currency
                    ),
                ),
            ),
            Record::Transaction(t) => {
                let kind = match t.kind {
                    TransactionKind::CreditNote => "CreditNote",
                    TransactionKind::Payment => "Payment",
                };
                (
                    (Entity::Transactions, t.external_id),
                    (t.customer_id, t.amount, format!("{kind} {}", t.currency)),
                )
            }
        };
        assert!(view.insert(key.clone(), value).is_none(), "{key:?} twice");
    }
    (customers, view)
}

/// Asserts the store equals the mock's receivables, with a readable diff.
pub fn assert_same(store: &Store, db: &Db) {
    let (want_c, want_r) = expected(db);
    let (got_c, got_r) = stored(store);
    let diff_c: Vec<_> = want_c
        .iter()
        .filter(|(k, v)| got_c.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: want {v}, got {:?}", got_c.get(k)))
        .chain(
            got_c
                .keys()
                .filter(|k| !want_c.contains_key(*k))
                .map(|k| format!("{k}: not in Xero")),
        )
        .take(10)
        .collect();
    assert!(diff_c.is_empty(), "customers differ: {diff_c:#?}");
    let diff_r: Vec<_> = want_r
        .iter()
        .filter(|(k, v)| got_r.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got_r.get(k)))
        .chain(
            got_r
                .iter()
                .filter(|(k, _)| !want_r.contains_key(*k))
                .map(|(k, v)| format!("{k:?}: stored but not expected: {v:?}")),
        )
        .take(10)
        .collect();
    assert!(
        diff_r.is_empty(),
        "records differ ({} expected, {} stored): {diff_r:#?}",
        want_r.len(),
        got_r.len()
    );
}

// ----------------------------------------------------------------------------
// The daemon in-process
// ----------------------------------------------------------------------------

pub struct Settings {
    pub page_size: u32,
    pub rate_limit: String,
    /// More keys of the `[[connectors]]` entry.
    pub connector: String,
    /// More keys of `[connectors.xero]`.
    pub options: String,
    /// Replaces the mock's tenant id (`Some("")`: no tenant_id line).
    pub tenant: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            page_size: 500,
            rate_limit: "{ requests_per_second = 1000, burst = 100, max_concurrency = 5 }".into(),
            connector: String::new(),
            options: String::new(),
            tenant: None,
        }
    }
}

pub fn write_config(mock: &MockXero, dir: &Path, port: u16, s: &Settings) -> PathBuf {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut options =
        mock.options_toml(dir, &format!("page_size = {}\n{}", s.page_size, s.options));
    if let Some(t) = &s.tenant {
        let line = format!("tenant_id = \"{}\"\n", mock.tenant_id());
        options = if t.is_empty() {
            options.replace(&line, "")
        } else {
            options.replace(&line, &format!("tenant_id = \"{t}\"\n"))
        };
    }
    let text = format!(
        r#"[daemon]
state_dir = "state"
log_level = "info,erpsync=debug"
[http]
listen = "127.0.0.1:{port}"
admin_token_file = "token"
[[connectors]]
id = "{ID}"
kind = "xero"
poll_interval = "1h"
rate_limit = {rate}
{connector}
[connectors.xero]
{options}"#,
        rate = s.rate_limit,
        connector = s.connector,
    );
    let path = dir.join("erpsync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads a refresh token of the mock into the state directory, as
/// `erpsync connect` does with the daemon stopped.
pub async fn connect_offline(dir: &Path, refresh_token: &str) {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let creds = StoreCredentials::new(Arc::clone(&store), ID);
    oauth::connect(&creds, &Secret::new(refresh_token))
        .await
        .unwrap();
    store.flush().unwrap();
}

pub struct Running {
    pub app: Arc<App>,
    pub api: Api,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Starts the daemon on the config in `dir`.
    pub async fn start(dir: tempfile::TempDir) -> Running {
        let path = dir.path().join("erpsync.toml");
        let config = erpsync::config::load(&path, &erpsync::connectors::REGISTRY)
            .unwrap_or_else(|e| panic!("{e}"));
        let app = erpsync::daemon::build(config).unwrap();
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
        Running {
            app,
            api: Api::new(&base),
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A fresh state directory with a connected token, then started.
    pub async fn fresh(mock: &MockXero, s: &Settings) -> Running {
        let dir = tempfile::tempdir().unwrap();
        write_config(mock, dir.path(), 0, s);
        connect_offline(dir.path(), &mock.oauth().issue_refresh_token()).await;
        Running::start(dir).await
    }

    pub fn store(&self) -> &Store {
        &self.app.store
    }

    pub fn status(&self) -> erpsync::app::ConnectorStatus {
        self.app.connectors[0].status()
    }

    /// Waits until `n` passes finished.
    pub async fn wait_passes(&self, n: u64) -> erpsync::app::ConnectorStatus {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let s = self.status();
            if s.passes >= n && s.state != WorkerState::Syncing {
                return s;
            }
            assert!(Instant::now() < deadline, "no pass {n} within 180 s: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks for a pass now and waits for it.
    pub async fn sync_now(&self) -> erpsync::app::ConnectorStatus {
        let h = &self.app.connectors[0];
        let deadline = Instant::now() + Duration::from_secs(60);
        let n = loop {
            let n = h.status().passes;
            match h.request_pass() {
                Ok(()) => break n,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot start a pass: {e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.wait_passes(n + 1).await
    }

    /// Waits until every resync job is done.
    pub async fn wait_resyncs(&self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let jobs = queue::jobs(self.store()).unwrap();
            if jobs.iter().all(|j| j.state == JobState::Done) {
                return;
            }
            assert!(
                !jobs.iter().any(|j| j.state == JobState::Failed),
                "a resync failed: {jobs:?}"
            );
            assert!(Instant::now() < deadline, "resync not done: {jobs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let api = self.api.clone();
        let (method, path) = (method.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || api.call(&method, &path, body.as_ref()))
            .await
            .unwrap()
    }

    /// Stops the daemon; returns its directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let Running { app, dir, .. } = self;
        drop(app);
        dir
    }
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.push(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A mock with more than 1,000 of each receivables entity, and bills,
/// supplier credit notes and supplier payments besides.
pub fn big() -> MockConfig {
    MockConfig {
        contacts: 1100,
        archived: 30,
        gdpr: 12,
        suppliers: 40,
        invoices: 1500,
        bills: 300,
        credit_notes: 1250,
        supplier_credit_notes: 100,
        payments: 1300,
        supplier_payments: 200,
        ..MockConfig::default()
    }
}

// ----------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_sync_equal_the_receivables_and_keep_bills_out() {
    let mock = MockXero::start(big()).await;
    let d = Running::fresh(&mock, &Settings::default()).await;
    let s = d.wait_passes(1).await;
    assert_eq!(s.state, WorkerState::Idle, "{s:?}");
    let db = mock.snapshot();
    let (want_c, want_r) = expected(&db);
    assert!(want_c.len() > 1000);
    let count = |what: &str| {
        want_r
            .values()
            .filter(|(_, _, w)| w.starts_with(what))
            .count()
    };
    let invoices = want_r
        .keys()
        .filter(|(e, _)| *e == Entity::Invoices)
        .count();
    assert!(invoices > 1000, "{invoices} invoices");
    assert!(
        count("CreditNote") > 1000,
        "{} credit notes",
        count("CreditNote")
    );
    assert!(count("Payment") > 1000, "{} payments", count("Payment"));
    assert_same(d.store(), &db);

    // Bills, supplier credit notes and supplier payments: none stored, and
    // none even asked for.
    let supplier_ids: BTreeSet<String> = db
        .invoices
        .iter()
        .filter(|i| i.kind == "ACCPAY")
        .map(|i| i.id.clone())
        .chain(
            db.credit_notes
                .iter()
                .filter(|c| c.kind == "ACCPAYCREDIT")
                .map(|c| c.id.clone()),
        )
        .chain(
            db.payments
                .iter()
                .filter(|p| p.kind == "ACCPAYPAYMENT")
                .map(|p| p.id.clone()),
        )
        .collect();
    assert!(supplier_ids.len() > 500);
    let (_, got) = stored(d.store());
    assert!(got.keys().all(|(_, id)| !supplier_ids.contains(id)));
    let requests = mock.recent_requests();
    for r in &requests {
        let decoded = percent_encoding::percent_decode_str(r)
            .decode_utf8_lossy()
            .replace('+', " ");
        if decoded.contains("/Invoices") {
            assert!(decoded.contains(r#"where=Type=="ACCREC""#), "{decoded}");
        }
        if decoded.contains("/CreditNotes") {
            assert!(decoded.contains(r#"Type=="ACCRECCREDIT""#), "{decoded}");
        }
        if decoded.contains("/Payments") {
            assert!(
                decoded.contains(r#"PaymentType=="ACCRECPAYMENT""#),
                "{decoded}"
            );
        }
        if decoded.contains("/Contacts") {
            assert!(decoded.contains("includeArchived=true"), "{decoded}");
        }
    }
    let st = mock.stats();
    assert_eq!(st.xml_answers, 0, "every request asks for JSON");
    assert_eq!(
        st.bad_requests + st.unauthorized + st.forbidden,
        0,
        "{st:?}"
    );
    // Pages of 500: contacts 3, invoices 3 (+1 empty or not), credit notes and payments 3 each.
    let first_requests = d.app.connectors[0].budget.stats().poll_requests;
    assert!(first_requests <= 16, "{first_requests} requests");

    // Changes upstream.
    let included: Vec<&str> = db
        .contacts
        .iter()
        .filter(|c| c.status == "ACTIVE" && !c.is_supplier_only)
        .map(|c| c.id.as_str())
        .collect();
    let paid_invoices: BTreeSet<&str> = db.payments.iter().map(|p| p.invoice.as_str()).collect();
    // A customer with invoices is archived (excluded and purged), another
    // asks for its personal data to be removed.
    let with_invoices = |db: &Db, status: &str| -> Vec<String> {
        db.contacts
            .iter()
            .filter(|c| c.status == status && !c.is_supplier_only)
            .filter(|c| {
                db.invoices
                    .iter()
                    .any(|i| i.contact == c.id && i.status == "PAID")
            })
            .map(|c| c.id.clone())
            .collect()
    };
    let active = with_invoices(&db, "ACTIVE");
    let (to_archive, to_gdpr) = (active[0].clone(), active[1].clone());
    let included: Vec<&str> = included
        .into_iter()
        .filter(|c| *c != to_archive && *c != to_gdpr)
        .collect();
    let open = |db: &Db, n: usize| -> Vec<String> {
        db.invoices
            .iter()
            .filter(|i| {
                i.kind == "ACCREC"
                    && i.status == "AUTHORISED"
                    && !paid_invoices.contains(i.id.as_str())
                    && included.contains(&i.contact.as_str())
            })
            .take(n)
            .map(|i| i.id.clone())
            .collect()
    };
    let open_ids = open(&db, 3);
    mock.edit_invoice(&open_ids[0], |i| i.status = "VOIDED".into());
    mock.edit_invoice(&open_ids[1], |i| i.amount_due = Decimal::new(1, 2));
    let draft = db
        .invoices
        .iter()
        .find(|i| {
            i.kind == "ACCREC" && i.status == "DRAFT" && included.contains(&i.contact.as_str())
        })
        .unwrap()
        .id
        .clone();
    mock.edit_invoice(&draft, |i| i.status = "DELETED".into());
    let payment = db
        .payments
        .iter()
        .find(|p| {
            p.kind == "ACCRECPAYMENT"
                && p.status == "AUTHORISED"
                && included.contains(&db.invoice(&p.invoice).unwrap().contact.as_str())
        })
        .unwrap()
        .id
        .clone();
    mock.edit_payment(&payment, |p| p.status = "DELETED".into());
    let credit = db
        .credit_notes
        .iter()
        .find(|c| {
            c.kind == "ACCRECCREDIT"
                && c.status == "AUTHORISED"
                && included.contains(&c.contact.as_str())
        })
        .unwrap()
        .id
        .clone();
    mock.edit_credit_note(&credit, |c| c.status = "VOIDED".into());
    let new_invoice = mock.add_invoice(included[5], Decimal::new(123_456, 2));
    let new_payment = mock.add_payment(&open_ids[2], Decimal::new(5_000, 2));
    let bill = db
        .invoices
        .iter()
        .find(|i| i.kind == "ACCPAY")
        .unwrap()
        .id
        .clone();
    mock.edit_invoice(&bill, |i| i.total = Decimal::new(99, 0));
    mock.edit_contact(&to_archive, |c| c.status = "ARCHIVED".into());
    mock.edit_contact(&to_gdpr, |c| c.status = "GDPRREQUEST".into());
    // An archived customer comes back: included, and its history resynced.
    let back = with_invoices(&db, "ARCHIVED")[0].clone();
    mock.edit_contact(&back, |c| c.status = "ACTIVE".into());
    assert!(stored(d.store()).0[&back] == "native:archived");
    assert!(d
        .store()
        .records_of(&CustomerKey::new(ID, &back))
        .unwrap()
        .is_empty());

    mock.reset_stats();
    let before = d.app.connectors[0].budget.stats().poll_requests;
    let s = d.sync_now().await;
    assert_eq!(s.state, WorkerState::Idle, "{s:?}");
    d.wait_resyncs().await;
    let db2 = mock.snapshot();
    assert_same(d.store(), &db2);
    // One request per stream: contacts, invoices, credit notes, payments.
    assert_eq!(d.app.connectors[0].budget.stats().poll_requests - before, 4);
    let (_, got) = stored(d.store());
    assert!(
        !got.contains_key(&(Entity::Invoices, open_ids[0].clone())),
        "voided invoice removed"
    );
    assert!(
        !got.contains_key(&(Entity::Invoices, draft.clone())),
        "deleted invoice removed"
    );
    assert!(
        !got.contains_key(&(Entity::Transactions, payment.clone())),
        "deleted payment removed"
    );
    assert!(
        !got.contains_key(&(Entity::Transactions, credit.clone())),
        "voided credit note removed"
    );
    assert!(got.contains_key(&(Entity::Invoices, new_invoice)));
    assert!(got.contains_key(&(Entity::Transactions, new_payment)));
    assert!(d
        .store()
        .records_of(&CustomerKey::new(ID, &to_archive))
        .unwrap()
        .is_empty());
    assert!(!d
        .store()
        .records_of(&CustomerKey::new(ID, &back))
        .unwrap()
        .is_empty());
    let gdpr = d
        .store()
        .customer(&CustomerKey::new(ID, &to_gdpr))
        .unwrap()
        .unwrap();
    assert_eq!(gdpr.classification.reason, "native:gdpr_request");
    assert_eq!(gdpr.customer.name, "(personal data withheld: GDPR request)");
    assert_eq!(gdpr.customer.email, None);
    // Incremental reads: If-Modified-Since in whole UTC seconds.
    let st = mock.stats();
    assert_eq!(st.if_modified_since.len(), 4, "{st:?}");
    for v in &st.if_modified_since {
        assert!(
            chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S").is_ok(),
            "`{v}`"
        );
    }
    // The resync named the contact in one query per stream part.
    let resync: Vec<String> = mock
        .recent_requests()
        .into_iter()
        .filter(|r| r.contains("ContactIDs") || r.contains("Contact.ContactID"))
        .collect();
    assert!(!resync.is_empty() && resync.len() <= 3, "{resync:#?}");

    // Nothing changed: a pass reads one page per stream and stores nothing new.
    let s = d.sync_now().await;
    assert_eq!(s.state, WorkerState::Idle);
    assert_same(d.store(), &mock.snapshot());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_and_gdpr_contacts_are_excluded_with_nothing_of_theirs_stored() {
    let mock = MockXero::start(MockConfig::default()).await;
    let d = Running::fresh(&mock, &Settings::default()).await;
    d.wait_passes(1).await;
    let db = mock.snapshot();
    assert_same(d.store(), &db);
    let archived: Vec<_> = db
        .contacts
        .iter()
        .filter(|c| c.status == "ARCHIVED")
        .collect();
    let gdpr: Vec<_> = db
        .contacts
        .iter()
        .filter(|c| c.status == "GDPRREQUEST")
        .collect();
    assert!(!archived.is_empty() && !gdpr.is_empty());
    let has_invoices = |id: &str| db.invoices.iter().any(|i| i.contact == id);
    assert!(archived.iter().any(|c| has_invoices(&c.id)));
    assert!(gdpr.iter().any(|c| has_invoices(&c.id)));
    for c in archived.iter().chain(&gdpr) {
        let key = CustomerKey::new(ID, &c.id);
        let sc = d.store().customer(&key).unwrap().expect("kept, excluded");
        assert!(sc.classification.excluded);
        assert!(d.store().records_of(&key).unwrap().is_empty());
    }
    for c in &archived {
        let sc = d
            .store()
            .customer(&CustomerKey::new(ID, &c.id))
            .unwrap()
            .unwrap();
        assert_eq!(
            sc.customer.name, c.name,
            "an archived contact keeps its name"
        );
        assert!(sc.customer.inactive);
    }
    for c in &gdpr {
        let sc = d
            .store()
            .customer(&CustomerKey::new(ID, &c.id))
            .unwrap()
            .unwrap();
        assert_eq!(sc.customer.name, "(personal data withheld: GDPR request)");
        assert_eq!(sc.customer.email, None);
        assert_eq!(sc.customer.currency, None);
        assert_eq!(sc.customer.balance, Decimal::ZERO);
        let custom: Vec<_> = sc.customer.custom.keys().cloned().collect();
        assert_eq!(custom, ["contact_status", "is_customer", "is_supplier"]);
    }
    let dropped = d.store().counter(ID, "dropped_invoices").unwrap()
        + d.store().counter(ID, "dropped_transactions").unwrap();
    assert!(dropped > 0);
    // The admin API: explain says why; search does not find them by their
    // personal data.
    let g = &gdpr[0];
    let (st, v) = d
        .call(
            "GET",
            &format!("/api/v1/customers/{ID}/{}/explain", g.id),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v.to_string().contains("gdpr_request"), "{v}");
    for needle in [&g.email, &g.name, &g.last_name] {
        let (st, v) = d
            .call(
                "GET",
                &format!("/api/v1/customers?q={}", urlencode(needle)),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert!(!v.to_string().contains(&g.id), "found by `{needle}`: {v}");
    }
    let status = d.call("GET", "/status", None).await.1;
    assert_eq!(
        status["customers"]["excluded"].as_u64().unwrap(),
        (archived.len() + gdpr.len()) as u64,
        "{status}"
    );
    // Not a byte of a GDPR contact's personal fields anywhere in the state.
    let dir = d.stop().await;
    let files = all_bytes(&dir.path().join("state"));
    assert!(!files.is_empty());
    for c in &gdpr {
        for needle in [&c.name, &c.email, &c.phone, &c.street, &c.account_number] {
            assert!(
                !files.iter().any(|f| contains(f, needle)),
                "`{needle}` of a GDPR contact is in the state directory"
            );
        }
    }
    // While an ordinary contact's name is (the check can see names).
    let active = db.contacts.iter().find(|c| c.status == "ACTIVE").unwrap();
    assert!(files.iter().any(|f| contains(f, &active.name)));
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_records_repeat_and_changes_between_pages_are_not_lost() {
    let mock = MockXero::start(MockConfig::default()).await;
    // Records change while a pass pages through them: after the first page
    // of invoices and of payments, its first 30 records are modified.
    mock.push_fault(Some("Invoices"), Fault::TouchAfterPage(30));
    mock.push_fault(Some("Payments"), Fault::TouchAfterPage(30));
    let s = Settings {
        page_size: 100,
        ..Settings::default()
    };
    let d = Running::fresh(&mock, &s).await;
    d.wait_passes(1).await;
    assert_eq!(mock.pending_faults(), 0);
    assert_same(d.store(), &mock.snapshot());

    // A bulk change: 250 invoices modified within the same second, more
    // than a page.
    let db = mock.snapshot();
    let ids: Vec<String> = db
        .invoices
        .iter()
        .filter(|i| i.kind == "ACCREC" && i.status == "AUTHORISED")
        .take(250)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(ids.len(), 250);
    mock.change(|db, t| {
        for i in db.invoices.iter_mut().filter(|i| ids.contains(&i.id)) {
            i.amount_due = Decimal::new(777, 2);
            i.updated = t;
        }
    });
    let s = d.sync_now().await;
    assert_eq!(s.state, WorkerState::Idle, "{s:?}");
    assert_same(d.store(), &mock.snapshot());

    // The last second's records are read again by every pass: here the
    // whole bulk (3 pages) until a later change moves the boundary.
    let requests = d.app.connectors[0].budget.stats().poll_requests;
    d.sync_now().await;
    assert_eq!(
        d.app.connectors[0].budget.stats().poll_requests - requests,
        6
    );
    mock.change(|db, _| db.clock += 5_000);
    mock.edit_invoice(&ids[0], |i| i.amount_due = Decimal::ONE);
    d.sync_now().await;
    assert_same(d.store(), &mock.snapshot());

    // The boundary records repeat on every pass, and change nothing: one
    // request per stream, some records read again, none changed.
    let s = d.status();
    let before = stored(d.store());
    let received = s.session[&Entity::Invoices].received;
    let requests = d.app.connectors[0].budget.stats().poll_requests;
    let s = d.sync_now().await;
    assert!(
        s.session[&Entity::Invoices].received > received,
        "boundary re-read"
    );
    assert_eq!(
        d.app.connectors[0].budget.stats().poll_requests - requests,
        4
    );
    assert_eq!(stored(d.store()), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_and_a_malformed_record_is_quarantined() {
    let mock = MockXero::start(MockConfig::default()).await;
    mock.push_fault(Some("Contacts"), Fault::ServerError(503));
    mock.push_fault(Some("Invoices"), Fault::TruncatedBody);
    mock.push_fault(Some("Invoices"), Fault::ServerError(500));
    mock.push_fault(
        Some("CreditNotes"),
        Fault::Slow(Duration::from_millis(2500)),
    );
    mock.push_fault(Some("Payments"), Fault::MalformedRecord);
    let s = Settings {
        options: "request_timeout = \"1s\"\n".into(),
        ..Settings::default()
    };
    let d = Running::fresh(&mock, &s).await;
    let st = d.wait_passes(1).await;
    assert_eq!(st.state, WorkerState::Idle, "{st:?}");
    assert_eq!(mock.pending_faults(), 0);
    let b = d.app.connectors[0].budget.stats();
    assert!(b.retries >= 4, "{b:?}");
    // The first payment of the first page could not be read: quarantined
    // with its reason, everything else stored.
    let q = d.store().quarantine(ID, 10).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    let bad = q[0].record.external_id.clone().unwrap();
    assert_eq!(q[0].record.entity, Entity::Transactions);
    assert!(q[0].record.reason.contains("Date"), "{:?}", q[0].record);
    let db = mock.snapshot();
    let (_, mut want) = expected(&db);
    let (_, got) = stored(d.store());
    let was_expected = want.remove(&(Entity::Transactions, bad.clone())).is_some();
    assert_eq!(got, want);
    // Once it is fixed upstream (modified), the next pass stores it.
    mock.edit_payment(&bad, |_| {});
    d.sync_now().await;
    let (_, got) = stored(d.store());
    assert_eq!(got.contains_key(&(Entity::Transactions, bad)), was_expected);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_429s_are_waited_out_and_the_limits_are_never_exceeded() {
    let mut cfg = MockConfig::default();
    // Xero's limits on a ten-times faster clock: 60 per 6 s, 5 at once.
    cfg.limits.per_minute = 60;
    cfg.limits.minute_window = Duration::from_secs(6);
    cfg.limits.concurrent = 5;
    let mock = MockXero::start(cfg).await;
    mock.push_fault(
        Some("Invoices"),
        Fault::RateLimited {
            problem: "minute",
            retry_after: 2,
        },
    );
    mock.push_fault(
        Some("Payments"),
        Fault::RateLimited {
            problem: "minute",
            retry_after: 1,
        },
    );
    let s = Settings {
        page_size: 25,
        // 9 a second, at most 5 at once: under the mock's 10 a second.
        rate_limit: "{ requests_per_second = 9, burst = 1, max_concurrency = 5 }".into(),
        ..Settings::default()
    };
    let started = Instant::now();
    let d = Running::fresh(&mock, &s).await;
    let st = d.wait_passes(1).await;
    assert_eq!(st.state, WorkerState::Idle, "{st:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After waited out"
    );
    let m = mock.stats();
    assert_eq!(m.rate_limited.get("minute"), Some(&2), "{m:?}");
    assert_eq!(
        m.rate_limited_total(),
        2,
        "no refusal beyond the injected ones: {m:?}"
    );
    assert!(m.counted > 60, "more than a window's worth: {m:?}");
    assert!(m.max_per_minute_window <= 60, "{m:?}");
    assert!(m.max_in_flight <= 5, "{m:?}");
    let b = d.app.connectors[0].budget.stats();
    assert_eq!(b.rate_limited, 2);
    assert!(b.max_in_flight_seen <= 5);
    assert_same(d.store(), &mock.snapshot());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_429_parks_the_connector_until_its_reset() {
    let mock = MockXero::start(MockConfig::default()).await;
    let s = Settings {
        rate_limit: "{ requests_per_second = 1000, burst = 100, max_concurrency = 5, max_retry_wait = \"1s\" }".into(),
        ..Settings::default()
    };
    let d = Running::fresh(&mock, &s).await;
    d.wait_passes(1).await;
    let status = d.call("GET", "/status", None).await.1;
    let left = status["connectors"][0]["requests"]["erp_daily_remaining"].as_u64();
    assert!(
        left.is_some_and(|l| l > 900_000),
        "X-DayLimit-Remaining fed the budget: {status}"
    );

    // Another integration used up the organisation's day: every request is
    // refused with a day 429 for 4 seconds.
    mock.edit_invoice(&mock.snapshot().invoices[0].id, |_| {});
    mock.exhaust_day(Duration::from_secs(4));
    let counted = mock.stats().counted;
    let h = &d.app.connectors[0];
    h.request_pass().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let s = h.status();
        if s.state == WorkerState::QuotaExhausted {
            break s;
        }
        assert!(Instant::now() < deadline, "not parked: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let resumes_at = parked.resumes_at.expect("resumes_at");
    assert!(resumes_at > chrono::Utc::now() + chrono::TimeDelta::seconds(1));
    assert!(resumes_at < chrono::Utc::now() + chrono::TimeDelta::seconds(6));
    assert_eq!(mock.stats().rate_limited.get("day"), Some(&1));
    let (st, v) = d
        .call("POST", &format!("/api/v1/connectors/{ID}/sync"), None)
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(v.to_string().contains("resume"), "{v}");
    let status = d.call("GET", "/status", None).await.1;
    assert_eq!(
        status["connectors"][0]["state"], "quota_exhausted",
        "{status}"
    );
    // Resumes by itself after the reset, with nothing sent before it.
    let done = loop {
        let s = h.status();
        if s.state == WorkerState::Idle && s.passes > parked.passes {
            break s;
        }
        assert!(Instant::now() < deadline, "did not resume: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(done.last_sync_start.unwrap() >= resumes_at - chrono::TimeDelta::milliseconds(50));
    let m = mock.stats();
    assert_eq!(
        m.rate_limited.get("day"),
        Some(&1),
        "no request while parked: {m:?}"
    );
    assert!(m.counted > counted);
    assert_same(d.store(), &mock.snapshot());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_reads_a_customer_set_in_batches_never_one_query_per_customer() {
    let mock = MockXero::start(MockConfig::default()).await;
    let d = Running::fresh(&mock, &Settings::default()).await;
    d.wait_passes(1).await;
    let db = mock.snapshot();
    let ids: Vec<String> = db
        .contacts
        .iter()
        .filter(|c| c.status == "ACTIVE" && !c.is_supplier_only)
        .take(90)
        .map(|c| format!("{ID}:{}", c.id))
        .collect();
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": ids, "reason": "test"})),
        )
        .await;
    assert!((200..300).contains(&st), "{st} {v}");
    let (_, got) = stored(d.store());
    assert!(got.len() < expected(&db).1.len());
    mock.reset_stats();
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/reinclusions",
            Some(json!({"customers": ids})),
        )
        .await;
    assert!((200..300).contains(&st), "{st} {v}");
    d.wait_resyncs().await;
    // The customers are included by hand now (reason `manual`); their
    // records are all back.
    assert_eq!(stored(d.store()).1, expected(&mock.snapshot()).1);
    // 90 customers in batches of at most 40: 3 batches, each one invoice
    // query and two chunks of credit notes and payments — never 90 queries.
    let requests = mock.recent_requests();
    let resync: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("ContactIDs") || r.contains("Contact.ContactID"))
        .collect();
    assert!(
        resync.len() >= 3 && resync.len() <= 3 * 5,
        "{}",
        resync.len()
    );
    let invoice_queries = resync.iter().filter(|r| r.contains("ContactIDs")).count();
    assert_eq!(invoice_queries, 3, "{resync:#?}");
    for r in &resync {
        assert!(
            r.len() < 2100,
            "query string too long: {} characters",
            r.len()
        );
    }

    // Bad input: a batch larger than one query holds is refused, and ids
    // that are not Xero ContactIDs never reach a query.
    let conn = &d.app.connectors[0].connector;
    let many: Vec<String> = (0..41)
        .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    let sent = mock.stats().requests;
    let start = erpsync::connectors::Cursor::start();
    let e = conn
        .fetch_records_for_customers(Entity::Invoices, &many, &start)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "41 customers in one resync batch; at most 40 fit in one Xero query"
    );
    let odd = vec!["C00042".to_string(), "\") OR (Type==\"ACCPAY".to_string()];
    let page = conn
        .fetch_records_for_customers(Entity::Transactions, &odd, &start)
        .await
        .unwrap();
    assert!(page.items.is_empty() && !page.has_more);
    assert_eq!(mock.stats().requests, sent, "nothing sent");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_tenant_lists_the_organisations_the_token_can_see() {
    let mock = MockXero::start(MockConfig::default()).await;
    let s = Settings {
        tenant: Some("00000000-1111-4222-8333-444444444444".into()),
        ..Settings::default()
    };
    let d = Running::fresh(&mock, &s).await;
    let st = d.wait_passes(1).await;
    assert_eq!(st.state, WorkerState::Failing);
    let msg = st.last_error.unwrap().message;
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains("AuthenticationUnsuccessful"), "{msg}");
    assert!(
        msg.contains(&format!(
            "Demo Company (NZ) (ORGANISATION, tenant_id = \"{}\")",
            mock.tenant_id()
        )),
        "{msg}"
    );
    assert!(msg.contains("Other Org Ltd"), "{msg}");
    let m = mock.stats();
    assert_eq!(m.forbidden, 1, "no retry: {m:?}");
    assert_eq!(d.status().consecutive_errors, 1);
    d.stop().await;

    let s = Settings {
        tenant: Some(String::new()),
        ..Settings::default()
    };
    mock.reset_stats();
    let d = Running::fresh(&mock, &s).await;
    let st = d.wait_passes(1).await;
    let msg = st.last_error.unwrap().message;
    assert!(msg.contains("tenant_id is not set"), "{msg}");
    assert!(msg.contains(mock.tenant_id()), "{msg}");
    let m = mock.stats();
    assert_eq!(m.requests, 0, "no API request without a tenant: {m:?}");
    assert_eq!(m.connections_requests, 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_the_rotation_survives_a_restart() {
    let mock = MockXero::start(MockConfig::default()).await;
    let d = Running::fresh(&mock, &Settings::default()).await;
    d.wait_passes(1).await;
    assert_eq!(mock.oauth().stats().refreshed, 1);
    // Xero's access tokens expire: 401 TokenExpired, one refresh, retried.
    mock.oauth().expire_access_tokens();
    mock.edit_invoice(&mock.snapshot().invoices[3].id, |i| {
        i.amount_due = Decimal::ONE
    });
    let s = d.sync_now().await;
    assert_eq!(s.state, WorkerState::Idle, "{s:?}");
    assert_eq!(mock.oauth().stats().refreshed, 2);
    assert_eq!(mock.stats().unauthorized, 1);
    assert_same(d.store(), &mock.snapshot());
    let dir = d.stop().await;

    // Restart: the stored access token is used, no refresh.
    let d = Running::start(dir).await;
    d.wait_passes(1).await;
    assert_eq!(mock.oauth().stats().refreshed, 2);
    // 31 minutes later the access token has expired: the rotated refresh
    // token (the one stored) is used and accepted.
    mock.oauth().advance(Duration::from_secs(31 * 60));
    let s = d.sync_now().await;
    assert_eq!(s.state, WorkerState::Idle, "{s:?}");
    assert_eq!(mock.oauth().stats().refreshed, 3);
    assert_eq!(mock.oauth().stats().invalid_grant, 0);
    let status = d.call("GET", "/status", None).await.1;
    assert_eq!(
        status["connectors"][0]["auth"]["state"], "connected",
        "{status}"
    );
    let text = status.to_string();
    for t in mock.oauth().issued_tokens() {
        assert!(!text.contains(&t), "a token in /status");
    }
    d.stop().await;
}
