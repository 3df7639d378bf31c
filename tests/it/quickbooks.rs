//! QuickBooks Online connector against the mock QuickBooks: full and
//! incremental sync past 1,000 rows of every entity, a second shared by more
//! records than a page holds, updates between pages, deletions through CDC
//! (and through verification when CDC overflows or expires), inactive
//! customers and jobs, resync by customer set, throttling, faults, and
//! request errors.
//!
//! Tests drive the connector directly and apply pages to an in-memory map
//! the way the store does (upsert when newer, drop deletions, verify stored
//! ids when asked). They do not touch the real store or scheduler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use erpsync::config::Limits;
use erpsync::connectors::credentials::MemoryCredentials;
use erpsync::connectors::oauth;
use erpsync::connectors::quickbooks::{QuickbooksConnector, QuickbooksOptions};
use erpsync::connectors::{Budget, BuildContext, Connector, ConnectorError, Cursor, Page};
use erpsync::model::{Customer, Entity, InvoiceStatus, Quarantined, Record, TransactionKind};
use erpsync::secrets::Secret;
use rust_decimal::Decimal;

use crate::quickbooks_mock::{Fault, MockConfig, MockQbo, Snapshot, CREDIT_MEMO, INVOICE, PAYMENT};

// ----------------------------------------------------------------------------
// Harness
// ----------------------------------------------------------------------------

pub fn limits(max_concurrency: u32) -> Limits {
    Limits {
        requests_per_second: 10_000.0,
        burst: 1_000,
        max_concurrency,
        resync_share: 0.5,
        max_attempts: 8,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        ..Limits::default()
    }
}

/// Options for the mock plus `extra` TOML lines (top-level keys); the
/// client credentials are written to files in `dir`.
pub fn options(mock: &MockQbo, dir: &Path, extra: &str) -> QuickbooksOptions {
    mock.tokens.write_client_files(dir);
    let text = format!(
        r#"
        realm_id = "{}"
        api_base_url = "{}"
        {extra}
        [oauth]
        token_url = "{}"
        client_id_file = "client_id"
        client_secret_file = "client_secret"
        "#,
        mock.config().realm_id,
        mock.base_url(),
        mock.token_url(),
    );
    toml::from_str(&text).unwrap()
}

/// A build context with in-memory credentials holding a freshly authorized
/// refresh token (what `erpsync connect` stores).
pub async fn context(mock: &MockQbo, dir: &Path, budget: Arc<Budget>) -> BuildContext {
    let creds = Arc::new(MemoryCredentials::default());
    oauth::connect(&*creds, &Secret::new(mock.authorize()))
        .await
        .unwrap();
    BuildContext {
        id: "qbo".into(),
        base_dir: dir.to_path_buf(),
        config_file: dir.join("erpsync.toml"),
        budget,
        credentials: creds,
    }
}

async fn connector(
    mock: &MockQbo,
    dir: &Path,
    extra: &str,
    budget: Arc<Budget>,
) -> QuickbooksConnector {
    let cx = context(mock, dir, budget).await;
    QuickbooksConnector::new(&options(mock, dir, extra), &cx).unwrap()
}

/// What the store would hold after applying pages.
#[derive(Default)]
struct Store {
    customers: BTreeMap<String, Customer>,
    records: BTreeMap<(Entity, String), Record>,
    quarantined: Vec<Quarantined>,
    pages: usize,
    items: usize,
    /// Ids delivered during the current pass of each stream.
    delivered: BTreeMap<Entity, Vec<String>>,
}

impl Store {
    fn apply_customers(&mut self, page: Page<Customer>) {
        self.pages += 1;
        self.items += page.items.len();
        let d = self.delivered.entry(Entity::Customers).or_default();
        for c in page.items {
            d.push(c.external_id.clone());
            match self.customers.get(&c.external_id) {
                Some(old) if old.last_modified > c.last_modified => {}
                _ => {
                    self.customers.insert(c.external_id.clone(), c);
                }
            }
        }
        self.quarantined.extend(page.quarantined);
    }

    fn apply_records(&mut self, entity: Entity, page: Page<Record>) {
        self.pages += 1;
        self.items += page.items.len();
        let d = self.delivered.entry(entity).or_default();
        for r in page.items {
            assert_eq!(r.entity(), entity);
            d.push(r.external_id().to_string());
            let key = (entity, r.external_id().to_string());
            match self.records.get(&key) {
                Some(old) if old.last_modified() > r.last_modified() => {}
                _ => {
                    self.records.insert(key, r);
                }
            }
        }
        for id in page.deleted {
            self.records.remove(&(entity, id));
        }
        self.quarantined.extend(page.quarantined);
    }

    /// No id delivered twice in one pass; returns the ids delivered.
    fn end_pass(&mut self, entity: Entity) -> BTreeSet<String> {
        let d = self.delivered.remove(&entity).unwrap_or_default();
        let set: BTreeSet<String> = d.iter().cloned().collect();
        assert_eq!(
            set.len(),
            d.len(),
            "{entity}: a record was delivered twice in one pass"
        );
        set
    }

    fn ids(&self, entity: Entity) -> Vec<String> {
        self.records
            .keys()
            .filter(|(e, _)| *e == entity)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// One full pass of a stream from `cursor`, with the engine's verification.
async fn pass(
    c: &QuickbooksConnector,
    entity: Entity,
    store: &mut Store,
    mut cursor: Cursor,
) -> Result<Cursor, ConnectorError> {
    loop {
        if entity == Entity::Customers {
            let page = c.fetch_customers(&cursor).await?;
            cursor = page.next.clone();
            let more = page.has_more;
            store.apply_customers(page);
            if !more {
                break;
            }
        } else {
            let page = c.fetch_records(entity, &cursor).await?;
            cursor = page.next.clone();
            let more = page.has_more;
            store.apply_records(entity, page);
            if !more {
                break;
            }
        }
    }
    if let Some(after) = c.verification(entity, &cursor) {
        let ids = store.ids(entity);
        for chunk in ids.chunks(c.verify_batch_size()) {
            for id in c.deleted_among(entity, chunk).await? {
                store.records.remove(&(entity, id));
            }
        }
        cursor = after;
    }
    store.end_pass(entity);
    Ok(cursor)
}

#[derive(Default)]
struct Cursors(BTreeMap<Entity, Cursor>);

async fn sync_all(c: &QuickbooksConnector, store: &mut Store, cursors: &mut Cursors) {
    for e in Entity::ALL {
        let from = cursors.0.get(&e).cloned().unwrap_or_default();
        let next = pass(c, e, store, from).await.unwrap();
        cursors.0.insert(e, next);
    }
}

/// QuickBooks stamps changes in whole seconds, so a pass defers records
/// stamped in the second it starts to the next pass. Tests that edit data
/// and sync right away let the mock's clock move on by one second first.
fn next_second(mock: &MockQbo) {
    mock.advance_clock(Duration::from_secs(1));
}

fn invoice_status(t: &crate::quickbooks_mock::MTxn) -> InvoiceStatus {
    if t.private_note.as_deref() == Some("Voided") {
        InvoiceStatus::Voided
    } else if t.balance > Decimal::ZERO {
        InvoiceStatus::Open
    } else {
        InvoiceStatus::Paid
    }
}

/// Asserts the store holds exactly the mock's data, field by field.
fn assert_equal(snap: &Snapshot, store: &Store) {
    assert!(
        store.quarantined.is_empty(),
        "{:?}",
        store.quarantined.first()
    );
    assert_eq!(
        store.customers.keys().cloned().collect::<BTreeSet<_>>(),
        snap.customers
            .keys()
            .map(u64::to_string)
            .collect::<BTreeSet<_>>(),
        "customer ids differ"
    );
    for (id, m) in &snap.customers {
        let c = &store.customers[&id.to_string()];
        assert_eq!(c.name, m.display_name, "customer {id}");
        assert_eq!(c.inactive, !m.active, "customer {id}");
        assert_eq!(c.balance, m.balance, "customer {id}");
        assert_eq!(
            c.currency.as_deref(),
            Some(m.currency.as_str()),
            "customer {id}"
        );
        assert_eq!(c.email, m.email, "customer {id}");
        assert_eq!(c.last_modified, m.updated, "customer {id}");
        assert_eq!(
            c.custom.get("parent_id").cloned(),
            m.parent.map(|p| p.to_string()),
            "customer {id}"
        );
        assert_eq!(
            c.custom["job"],
            m.parent.is_some().to_string(),
            "customer {id}"
        );
    }
    for (entity, kinds) in [
        (Entity::Invoices, &[INVOICE][..]),
        (Entity::Transactions, &[PAYMENT, CREDIT_MEMO][..]),
    ] {
        let expected: BTreeSet<String> = snap
            .txns
            .values()
            .filter(|t| kinds.contains(&t.kind))
            .map(|t| t.id.to_string())
            .collect();
        assert_eq!(
            store.ids(entity).into_iter().collect::<BTreeSet<_>>(),
            expected,
            "{entity} ids differ"
        );
        for id in expected {
            let m = &snap.txns[&id.parse().unwrap()];
            match &store.records[&(entity, id.clone())] {
                Record::Invoice(i) => {
                    assert_eq!(i.total, m.total, "invoice {id}");
                    assert_eq!(i.amount_due, m.balance, "invoice {id}");
                    assert_eq!(i.status, invoice_status(m), "invoice {id}");
                    assert_eq!(i.customer_id, m.customer.to_string(), "invoice {id}");
                    assert_eq!(i.issue_date, m.txn_date, "invoice {id}");
                    assert_eq!(Some(i.due_date), m.due_date, "invoice {id}");
                    assert_eq!(i.currency, m.currency, "invoice {id}");
                    assert_eq!(i.number, m.doc_number.clone().unwrap(), "invoice {id}");
                    assert_eq!(i.last_modified, m.updated, "invoice {id}");
                }
                Record::Transaction(t) => {
                    let kind = if m.kind == PAYMENT {
                        TransactionKind::Payment
                    } else {
                        TransactionKind::CreditNote
                    };
                    assert_eq!(t.kind, kind, "transaction {id}");
                    assert_eq!(t.amount, m.total, "transaction {id}");
                    assert_eq!(t.customer_id, m.customer.to_string(), "transaction {id}");
                    assert_eq!(t.date, m.txn_date, "transaction {id}");
                    assert_eq!(t.last_modified, m.updated, "transaction {id}");
                }
            }
        }
    }
}

fn big() -> MockConfig {
    MockConfig {
        customers: 1_150,
        invoices: 2_300,
        payments: 1_200,
        credit_memos: 1_050,
        tie_cluster: 1_100,
        ..MockConfig::default()
    }
}

fn print_rate(label: &str, requests: u64, records: usize) {
    println!(
        "quickbooks {label}: {requests} requests for {records} records = {:.2} requests per 1,000 records",
        requests as f64 * 1000.0 / records.max(1) as f64
    );
}

// ----------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_sync_equal_the_mock_past_1000_rows() {
    let mock = MockQbo::start(big()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "", Budget::new(limits(4))).await;
    let mut store = Store::default();
    let mut cursors = Cursors::default();
    sync_all(&c, &mut store, &mut cursors).await;
    let snap = mock.snapshot();
    assert!(snap.customers.values().filter(|c| !c.active).count() > 10);
    assert!(
        snap.customers
            .values()
            .filter(|c| c.parent.is_some())
            .count()
            > 10
    );
    assert_equal(&snap, &store);
    let s = mock.stats();
    let records = snap.customers.len() + snap.txns.len();
    print_rate("full sync", s.requests, records);
    // The 1,100 invoices of one second were swept, bracketed by counts.
    assert!(s.count_queries >= 2, "{s:?}");
    assert_eq!(s.minor_versions, vec!["75".to_string()]);
    assert_eq!(s.xml_answers, 0);
    assert_eq!((s.throttled, s.bad_requests, s.unauthorized), (0, 0, 0));

    // Incremental: edits, a new invoice, deletions, a customer turning inactive.
    let inv = mock.txn_ids(INVOICE);
    let pay = mock.txn_ids(PAYMENT);
    let cm = mock.txn_ids(CREDIT_MEMO);
    mock.update_txn(inv[3], |t| t.balance = Decimal::ZERO);
    mock.update_txn(inv[500], |t| t.total += Decimal::new(1, 2));
    mock.update_customer(5, |c| c.active = false);
    mock.update_customer(6, |c| c.display_name = "Renamed 'quoted' Co".into());
    let new = mock.insert_invoice(7, "19.99");
    mock.delete_txn(inv[10]);
    mock.delete_txn(pay[20]);
    mock.delete_txn(cm[30]);
    next_second(&mock);
    mock.reset_stats();
    sync_all(&c, &mut store, &mut cursors).await;
    let snap = mock.snapshot();
    assert!(snap.txns.contains_key(&new));
    assert_equal(&snap, &store);
    let s = mock.stats();
    // Three streams, one query page each plus one CDC request per entity.
    assert_eq!(s.cdc_requests, 3, "{:?}", mock.recent_queries());
    assert!(s.requests <= 8, "{s:?}");
    print_rate("incremental (8 changes)", s.requests, 8);

    // A quiet pass delivers nothing again: one query per entity and one
    // CDC request per transaction entity.
    next_second(&mock);
    mock.reset_stats();
    let before = store.items;
    sync_all(&c, &mut store, &mut cursors).await;
    assert_eq!(store.items, before);
    assert_eq!(mock.stats().requests, 7);
}

#[tokio::test]
async fn updates_between_pages_are_neither_lost_nor_duplicated() {
    let mock = MockQbo::start(MockConfig {
        invoices: 1_000,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "page_size = 100", Budget::new(limits(2))).await;
    let mut store = Store::default();
    let mut cursor = Cursor::start();
    let mut page_no = 0;
    let inv = mock.txn_ids(INVOICE);
    let changed: BTreeSet<String> = [inv[1], inv[2], inv[700], inv[900], inv[800], inv[950]]
        .iter()
        .map(u64::to_string)
        .collect();
    loop {
        let page = c.fetch_records(Entity::Invoices, &cursor).await.unwrap();
        cursor = page.next.clone();
        let more = page.has_more;
        store.apply_records(Entity::Invoices, page);
        page_no += 1;
        if page_no == 3 {
            // Edits while the pass runs: records already read, records not
            // read yet, a deletion, and a new invoice.
            for id in [inv[1], inv[2], inv[700], inv[900]] {
                mock.update_txn(id, |t| t.balance = Decimal::ONE);
            }
            mock.delete_txn(inv[800]);
            mock.insert_invoice(3, "5.00");
            // And an edit that lands between two requests of the connector.
            mock.push_faults([Fault::TouchInvoices(vec![inv[950].to_string()])]);
        }
        if !more {
            break;
        }
    }
    // Every invoice nobody touched during the pass was delivered, exactly
    // once; touched ones come now or with the next pass.
    let delivered = store.end_pass(Entity::Invoices);
    next_second(&mock);
    for id in &inv {
        let id = id.to_string();
        assert!(
            changed.contains(&id) || delivered.contains(&id),
            "invoice {id} skipped"
        );
    }
    let next = pass(&c, Entity::Invoices, &mut store, cursor)
        .await
        .unwrap();
    let snap = mock.snapshot();
    let stored: BTreeSet<String> = store.ids(Entity::Invoices).into_iter().collect();
    let want: BTreeSet<String> = snap.of_kind(INVOICE).map(|t| t.id.to_string()).collect();
    assert_eq!(stored, want);
    for t in snap.of_kind(INVOICE) {
        let Record::Invoice(i) = &store.records[&(Entity::Invoices, t.id.to_string())] else {
            panic!()
        };
        assert_eq!(
            (i.amount_due, i.last_modified),
            (t.balance, t.updated),
            "invoice {}",
            t.id
        );
    }
    assert!(!next.0.is_empty());
}

#[tokio::test]
async fn deletions_beyond_the_cdc_cap_or_window_are_found_by_verification() {
    let mock = MockQbo::start(MockConfig {
        invoices: 1_300,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "", Budget::new(limits(2))).await;
    let mut store = Store::default();
    let mut cursors = Cursors::default();
    sync_all(&c, &mut store, &mut cursors).await;
    // More deletions than one CDC answer holds (1,000 objects).
    let inv = mock.txn_ids(INVOICE);
    for id in &inv[..1_005] {
        mock.delete_txn(*id);
    }
    next_second(&mock);
    mock.reset_stats();
    sync_all(&c, &mut store, &mut cursors).await;
    assert_equal(&mock.snapshot(), &store);
    assert!(mock
        .recent_queries()
        .iter()
        .any(|q| q.contains("WHERE Id IN (")));

    // Thirty-one days without a sync: CDC is not asked (it would refuse).
    mock.advance_clock(Duration::from_secs(31 * 86_400));
    let pay = mock.txn_ids(PAYMENT);
    mock.delete_txn(pay[0]);
    mock.delete_txn(pay[1]);
    mock.update_txn(pay[2], |t| t.total = Decimal::new(777, 2));
    next_second(&mock);
    mock.reset_stats();
    sync_all(&c, &mut store, &mut cursors).await;
    assert_equal(&mock.snapshot(), &store);
    let s = mock.stats();
    assert_eq!(s.bad_requests, 0, "{:?}", mock.recent_queries());
    assert_eq!(
        s.cdc_requests, 0,
        "no CDC window older than 30 days is asked for"
    );
}

#[tokio::test]
async fn resync_reads_a_customer_set_with_customer_ref_in() {
    let mock = MockQbo::start(MockConfig {
        customers: 400,
        invoices: 2_500,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(
        &mock,
        dir.path(),
        "page_size = 200\nresync_batch_size = 150",
        Budget::new(limits(2)),
    )
    .await;
    let ids: Vec<String> = (1..=150u64).map(|i| i.to_string()).collect();
    let mut store = Store::default();
    for entity in [Entity::Invoices, Entity::Transactions] {
        let mut cursor = Cursor::start();
        loop {
            let page = c
                .fetch_records_for_customers(entity, &ids, &cursor)
                .await
                .unwrap();
            cursor = page.next.clone();
            let more = page.has_more;
            store.apply_records(entity, page);
            if !more {
                break;
            }
        }
        store.end_pass(entity);
    }
    let snap = mock.snapshot();
    let want: BTreeSet<String> = snap
        .txns
        .values()
        .filter(|t| t.customer <= 150)
        .map(|t| t.id.to_string())
        .collect();
    let got: BTreeSet<String> = store.records.keys().map(|(_, id)| id.clone()).collect();
    assert_eq!(got, want);
    let s = mock.stats();
    // Pages, not customers: about records / 200 queries.
    assert!(s.queries as usize <= want.len() / 200 + 4, "{s:?}");
    assert!(mock
        .recent_queries()
        .iter()
        .all(|q| q.contains("CustomerRef IN ('1', '10', '100'")));
    let too_many: Vec<String> = (1..=151u64).map(|i| i.to_string()).collect();
    assert!(matches!(
        c.fetch_records_for_customers(Entity::Invoices, &too_many, &Cursor::start()).await,
        Err(ConnectorError::Config(m)) if m.contains("151 customers")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_stays_under_the_limit_and_429s_back_off() {
    // A scaled-down minute: at most 10 requests in any 500 ms.
    let mock = MockQbo::start(MockConfig {
        requests_per_window: 10,
        window: Duration::from_millis(500),
        concurrency_limit: 3,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // burst 3 + 12/s × 0.5 s = 9 requests in any 500 ms, at most.
    let budget = Budget::new(Limits {
        requests_per_second: 12.0,
        burst: 3,
        max_concurrency: 3,
        ..limits(3)
    });
    let c = connector(&mock, dir.path(), "page_size = 100", budget.clone()).await;
    let mut store = Store::default();
    let mut cursors = Cursors::default();
    sync_all(&c, &mut store, &mut cursors).await;
    assert_equal(&mock.snapshot(), &store);
    let s = mock.stats();
    assert!(s.requests > 20, "{s:?}");
    assert_eq!(s.throttled, 0, "{s:?}");
    assert!(s.max_in_window <= 10, "{s:?}");
    assert!(s.max_in_flight <= 3, "{s:?}");

    // Intuit's 429 (no Retry-After): backed off and retried.
    mock.push_faults([Fault::Throttle, Fault::Throttle, Fault::Throttle]);
    let inv = mock.txn_ids(INVOICE);
    mock.update_txn(inv[0], |t| t.balance = Decimal::ZERO);
    next_second(&mock);
    sync_all(&c, &mut store, &mut cursors).await;
    assert_equal(&mock.snapshot(), &store);
    assert_eq!(budget.stats().rate_limited, 3);
}

#[tokio::test]
async fn faults_are_retried_and_malformed_records_quarantined() {
    let mock = MockQbo::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget::new(limits(2));
    let c = connector(&mock, dir.path(), "page_size = 300", budget.clone()).await;
    mock.push_faults([
        Fault::ServerError(503),
        Fault::SystemFaultIn200,
        Fault::TruncatedBody,
        Fault::Slow(Duration::from_millis(50)),
        Fault::ServerError(500),
    ]);
    let mut store = Store::default();
    let mut cursors = Cursors::default();
    sync_all(&c, &mut store, &mut cursors).await;
    assert_eq!(mock.pending_faults(), 0);
    assert_equal(&mock.snapshot(), &store);
    assert_eq!(mock.stats().faults_in_200, 1);
    assert_eq!(budget.stats().retries, 4);

    // An expired access token: one refresh, then on.
    mock.expire_access_tokens();
    let inv = mock.txn_ids(INVOICE);
    mock.update_txn(inv[1], |t| t.balance = Decimal::ZERO);
    mock.update_txn(inv[2], |t| t.balance = Decimal::ZERO);
    mock.update_customer(9, |c| c.balance = Decimal::new(4200, 2));
    let refreshes = mock.tokens.stats().refreshed;
    mock.push_faults([Fault::MalformedRecord]);
    next_second(&mock);
    sync_all(&c, &mut store, &mut cursors).await;
    assert_eq!(mock.tokens.stats().refreshed, refreshes + 1);
    // The customer page was corrupted: its first record is quarantined
    // with the reason, the rest went on.
    assert_eq!(store.quarantined.len(), 1, "{:?}", store.quarantined);
    let q = &store.quarantined[0];
    assert!(q.reason.contains("is not"), "{}", q.reason);
    assert!(q.raw.contains("12,5O"));
}

#[tokio::test]
async fn request_errors_are_clear_and_not_retried() {
    let mock = MockQbo::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // A realm this app is not connected to: the gateway's 403.
    let mut o = options(&mock, dir.path(), "");
    o.realm_id = "1234".into();
    let cx = context(&mock, dir.path(), Budget::new(limits(2))).await;
    let c = QuickbooksConnector::new(&o, &cx).unwrap();
    mock.reset_stats();
    match c.fetch_customers(&Cursor::start()).await {
        Err(ConnectorError::Auth(m)) => {
            assert!(m.contains("HTTP 403"), "{m}");
            assert!(m.contains("003100"), "{m}");
            assert!(m.contains("realm_id"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(mock.stats().requests, 1);

    // The user disconnected the app: the refresh is refused once, the
    // connector needs a reconnect and stops asking.
    let c = connector(&mock, dir.path(), "", Budget::new(limits(2))).await;
    mock.tokens.revoke_all();
    mock.reset_stats();
    let refused_before = mock.tokens.stats().invalid_grant;
    for _ in 0..3 {
        match c.fetch_records(Entity::Invoices, &Cursor::start()).await {
            Err(ConnectorError::NeedsReconnect { reason, command }) => {
                assert!(command.contains("erpsync connect qbo"), "{command}");
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(mock.tokens.stats().invalid_grant, refused_before + 1);
    assert_eq!(mock.stats().requests, 0);

    // Invalid options are refused before any request, naming the keys.
    let mut bad = options(&mock, dir.path(), "");
    bad.page_size = 5000;
    let err = QuickbooksConnector::new(&bad, &cx).unwrap_err();
    assert!(err.contains("page_size: 5000"), "{err}");
}

#[tokio::test]
async fn the_mock_speaks_intuits_wire_format() {
    let mock = MockQbo::start(MockConfig::default()).await;
    let http = reqwest::Client::new();
    let cfg = mock.config().clone();
    let rt = mock.authorize();
    let v: serde_json::Value = http
        .post(mock.token_url())
        // RFC 6749 §2.3.1: both parts form-encoded before Basic.
        .basic_auth(
            form(crate::oauth_mock::CLIENT_ID),
            Some(form(crate::oauth_mock::CLIENT_SECRET)),
        )
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = v["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/v3/company/{}/query", mock.base_url(), cfg.realm_id);
    let q = |text: &'static str, accept: bool| {
        let mut r = http
            .get(&url)
            .bearer_auth(&access)
            .query(&[("query", text), ("minorversion", "75")]);
        if accept {
            r = r.header("accept", "application/json");
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (st, body) = q("SELECT * FROM Invoice MAXRESULTS 1001", true).await;
    assert_eq!(st, 400);
    assert!(body.contains("Max allowed value is 1000"), "{body}");
    let (_, body) = q("SELECT * FROM Customer WHERE Id > '5'", true).await;
    assert!(body.contains("\"code\":\"4001\""), "{body}");
    let (_, body) = q("SELECT * FROM Invoice WHERE Id = '0'", true).await;
    assert!(body.starts_with("{\"QueryResponse\":{}"), "{body}");
    // Inactive customers are hidden by default.
    let (_, all) = q(
        "SELECT count(*) FROM Customer WHERE Active IN (true, false)",
        true,
    )
    .await;
    let (_, active) = q("SELECT count(*) FROM Customer", true).await;
    let n = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["QueryResponse"]["totalCount"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(n(&all), cfg.customers as u64);
    assert!(n(&active) < n(&all));
    // Without Accept: application/json, XML.
    let (_, xml) = q("SELECT * FROM Invoice MAXRESULTS 2", false).await;
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<IntuitResponse"), "{xml}");
    // CDC refuses windows older than 30 days.
    let old = (mock.now() - chrono::TimeDelta::days(31))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let r = http
        .get(format!(
            "{}/v3/company/{}/cdc",
            mock.base_url(),
            cfg.realm_id
        ))
        .bearer_auth(&access)
        .header("accept", "application/json")
        .query(&[("entities", "Invoice"), ("changedSince", old.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("older than fixed days"));
    // No token: the gateway's lower-case fault.
    let r = http
        .get(&url)
        .query(&[("query", "SELECT * FROM Invoice")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().starts_with("{\"fault\":{\"error\""));
}

#[tokio::test]
async fn a_second_swept_while_records_leave_it_is_swept_again() {
    let mock = MockQbo::start(MockConfig {
        invoices: 700,
        tie_cluster: 450,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "page_size = 100", Budget::new(limits(2))).await;
    let snap = mock.snapshot();
    let mut by_time: BTreeMap<chrono::DateTime<chrono::Utc>, Vec<u64>> = BTreeMap::new();
    for t in snap.of_kind(INVOICE) {
        by_time.entry(t.updated).or_default().push(t.id);
    }
    let cluster = by_time.values().find(|v| v.len() == 450).unwrap().clone();
    let mut store = Store::default();
    let mut cursor = Cursor::start();
    let mut touched = Vec::new();
    loop {
        let page = c.fetch_records(Entity::Invoices, &cursor).await.unwrap();
        cursor = page.next.clone();
        let more = page.has_more;
        store.apply_records(Entity::Invoices, page);
        // Once the sweep is under way, three members already delivered
        // leave the second (a user edits them): later members shift.
        if touched.is_empty() && mock.stats().count_queries > 0 {
            let delivered = store.delivered[&Entity::Invoices].clone();
            touched = cluster
                .iter()
                .filter(|id| delivered.contains(&id.to_string()))
                .take(3)
                .copied()
                .collect();
            assert_eq!(touched.len(), 3);
            for id in &touched {
                mock.update_txn(*id, |t| t.balance = Decimal::ZERO);
            }
        }
        if !more {
            break;
        }
    }
    let delivered = store.end_pass(Entity::Invoices);
    for id in &cluster {
        assert!(
            delivered.contains(&id.to_string()),
            "invoice {id} of the swept second was skipped"
        );
    }
    // Counted before, after the first sweep (changed), after the second.
    assert!(mock.stats().count_queries >= 3, "{:?}", mock.stats());
    next_second(&mock);
    pass(&c, Entity::Invoices, &mut store, cursor)
        .await
        .unwrap();
    assert_equal_invoices(&mock.snapshot(), &store);
}

fn form(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn assert_equal_invoices(snap: &Snapshot, store: &Store) {
    for t in snap.of_kind(INVOICE) {
        let Record::Invoice(i) = &store.records[&(Entity::Invoices, t.id.to_string())] else {
            panic!()
        };
        assert_eq!(
            (i.amount_due, i.last_modified),
            (t.balance, t.updated),
            "invoice {}",
            t.id
        );
    }
    assert_eq!(
        store.ids(Entity::Invoices).len(),
        snap.of_kind(INVOICE).count()
    );
}
