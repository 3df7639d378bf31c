//! NetSuite connector against the mock NetSuite: full and incremental sync,
//! keyset paging past 100,000 rows, deletions, native flags, resync by
//! customer set, limits and faults, auth and request errors.
//!
//! Tests drive the connector directly and apply pages to an in-memory map the
//! way the store does (upsert when newer, drop deletions). They do not touch
//! the real store, sync scheduler or classifier.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use erpsync::connectors::budget::{Budget, Limits};
use erpsync::connectors::netsuite::{Netsuite, NetsuiteConnector, NetsuiteOptions};
use erpsync::connectors::{Connector, ConnectorError, ConnectorKind, Cursor, Page};
use erpsync::model::{Customer, Entity, InvoiceStatus, Quarantined, Record, TransactionKind};
use rust_decimal::Decimal;

use crate::netsuite_mock::{Fault, MockConfig, MockNetsuite, Overload};

// ----------------------------------------------------------------------------
// Harness
// ----------------------------------------------------------------------------

pub(crate) fn limits(max_concurrency: u32) -> Limits {
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

/// Writes the mock's TBA secrets to files and builds options from them plus
/// `extra` TOML lines.
fn options(mock: &MockNetsuite, dir: &Path, extra: &str) -> NetsuiteOptions {
    let c = &mock.config().credentials;
    for (file, value) in [
        ("consumer_key", &c.consumer_key),
        ("consumer_secret", &c.consumer_secret),
        ("token_id", &c.token_id),
        ("token_secret", &c.token_secret),
    ] {
        std::fs::write(dir.join(file), format!("{value}\n")).unwrap();
    }
    let offset = mock.config().utc_offset_minutes;
    let tz = format!(
        "{}{:02}:{:02}",
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 60,
        offset.abs() % 60
    );
    let text = format!(
        r#"
        account_id = "{}"
        base_url = "{}"
        timezone = "{tz}"
        consumer_key_file = "consumer_key"
        consumer_secret_file = "consumer_secret"
        token_id_file = "token_id"
        token_secret_file = "token_secret"
        {extra}
        "#,
        mock.config().account_id,
        mock.base_url()
    );
    let o: NetsuiteOptions = toml::from_str(&text).unwrap();
    assert_eq!(o.validate(dir), Vec::<String>::new());
    o
}

pub(crate) fn connector(
    mock: &MockNetsuite,
    dir: &Path,
    extra: &str,
    budget: Arc<Budget>,
) -> NetsuiteConnector {
    NetsuiteConnector::new(&options(mock, dir, extra), dir, budget).unwrap()
}

/// The account-local `YYYY-MM-DD HH:MM:SS` of the mock as a UTC instant.
fn mock_utc(mock: &MockNetsuite, local: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
    (naive - chrono::Duration::minutes(mock.config().utc_offset_minutes as i64)).and_utc()
}

/// What the store would hold after applying pages.
#[derive(Default)]
struct Store {
    customers: BTreeMap<String, Customer>,
    records: BTreeMap<(Entity, String), Record>,
    quarantined: Vec<Quarantined>,
    pages: usize,
    items_received: usize,
}

fn assert_unique_ids<'a>(ids: impl Iterator<Item = &'a str>) {
    let mut seen = BTreeSet::new();
    for id in ids {
        assert!(seen.insert(id.to_string()), "id {id} twice in one page");
    }
}

impl Store {
    fn apply_customers(&mut self, page: Page<Customer>) {
        assert_unique_ids(page.items.iter().map(|c| c.external_id.as_str()));
        self.pages += 1;
        self.items_received += page.items.len();
        for c in page.items {
            match self.customers.get(&c.external_id) {
                Some(old) if old.last_modified > c.last_modified => {}
                _ => {
                    self.customers.insert(c.external_id.clone(), c);
                }
            }
        }
        for id in page.deleted {
            self.customers.remove(&id);
        }
        self.quarantined.extend(page.quarantined);
    }

    fn apply_records(&mut self, entity: Entity, page: Page<Record>) {
        assert_unique_ids(page.items.iter().map(Record::external_id));
        self.pages += 1;
        self.items_received += page.items.len();
        for r in page.items {
            assert_eq!(r.entity(), entity);
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

    fn records(&self, entity: Entity) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(move |((e, _), _)| *e == entity)
            .map(|(_, r)| r)
    }
}

/// Runs one full pass of the customer stream from `cursor`.
async fn pass_customers(
    c: &NetsuiteConnector,
    store: &mut Store,
    mut cursor: Cursor,
) -> Result<Cursor, ConnectorError> {
    loop {
        let page = c.fetch_customers(&cursor).await?;
        let (next, more) = (page.next.clone(), page.has_more);
        store.apply_customers(page);
        cursor = next;
        if !more {
            return Ok(cursor);
        }
    }
}

async fn pass_records(
    c: &NetsuiteConnector,
    entity: Entity,
    store: &mut Store,
    mut cursor: Cursor,
) -> Result<Cursor, ConnectorError> {
    loop {
        let page = c.fetch_records(entity, &cursor).await?;
        let (next, more) = (page.next.clone(), page.has_more);
        store.apply_records(entity, page);
        cursor = next;
        if !more {
            return Ok(cursor);
        }
    }
}

async fn resync(
    c: &NetsuiteConnector,
    entity: Entity,
    ids: &[String],
    store: &mut Store,
) -> Result<(), ConnectorError> {
    let mut cursor = Cursor::start();
    loop {
        let page = c.fetch_records_for_customers(entity, ids, &cursor).await?;
        let (next, more) = (page.next.clone(), page.has_more);
        store.apply_records(entity, page);
        cursor = next;
        if !more {
            return Ok(());
        }
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Asserts the store holds exactly the mock's invoices (ids, amounts, status
/// inputs, last-modified instants).
fn assert_invoices_match(mock: &MockNetsuite, store: &Store) {
    let unpaid = mock.column("transaction", Some("CustInvc"), "foreignamountunpaid");
    let modified = mock.column("transaction", Some("CustInvc"), "lastmodifieddate");
    let stored: BTreeMap<u64, &Record> = store
        .records(Entity::Invoices)
        .map(|r| (r.external_id().parse().unwrap(), r))
        .collect();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        unpaid.keys().copied().collect::<Vec<_>>(),
        "invoice ids differ"
    );
    for (id, r) in stored {
        let Record::Invoice(inv) = r else {
            panic!("not an invoice")
        };
        assert_eq!(
            inv.amount_due,
            dec(unpaid[&id].as_deref().unwrap()),
            "invoice {id}"
        );
        assert_eq!(
            inv.last_modified,
            mock_utc(mock, modified[&id].as_deref().unwrap()),
            "invoice {id}"
        );
    }
}

fn print_rate(label: &str, requests: u64, records: usize) {
    println!(
        "netsuite {label}: {requests} requests for {records} records = {:.2} requests per 1,000 records",
        requests as f64 * 1000.0 / records.max(1) as f64
    );
}

// ----------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------

#[tokio::test]
async fn full_sync_equals_the_mock_exactly() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(
        &mock,
        dir.path(),
        r#"custom_fields = ["custentity_region", "custentity_segment"]"#,
        Budget::new(limits(4)),
    );
    let mut store = Store::default();
    pass_customers(&c, &mut store, Cursor::start())
        .await
        .unwrap();
    pass_records(&c, Entity::Invoices, &mut store, Cursor::start())
        .await
        .unwrap();
    pass_records(&c, Entity::Transactions, &mut store, Cursor::start())
        .await
        .unwrap();
    assert!(
        store.quarantined.is_empty(),
        "{:?}",
        store.quarantined.first()
    );

    let t = mock.totals();
    let invoices: Vec<_> = store.records(Entity::Invoices).collect();
    let (mut total, mut unpaid) = (Decimal::ZERO, Decimal::ZERO);
    for r in &invoices {
        let Record::Invoice(i) = r else { panic!() };
        total += i.total;
        unpaid += i.amount_due;
    }
    let (mut payments, mut pay_sum, mut credits, mut credit_sum) =
        (0, Decimal::ZERO, 0, Decimal::ZERO);
    for r in store.records(Entity::Transactions) {
        let Record::Transaction(tx) = r else { panic!() };
        match tx.kind {
            TransactionKind::Payment => {
                payments += 1;
                pay_sum += tx.amount;
            }
            TransactionKind::CreditNote => {
                credits += 1;
                credit_sum += tx.amount;
            }
        }
    }
    assert_eq!(store.customers.len(), t.customers);
    assert_eq!(
        (invoices.len(), total, unpaid),
        (t.invoices, t.invoice_total, t.invoice_unpaid)
    );
    assert_eq!((payments, pay_sum), (t.payments, t.payment_total));
    assert_eq!((credits, credit_sum), (t.credit_memos, t.credit_total));
    assert_invoices_match(&mock, &store);

    // Customer details: time zone, custom fields, subsidiary, names.
    let modified = mock.column("customer", None, "lastmodifieddate");
    let region = mock.column("customer", None, "custentity_region");
    let company = mock.column("customer", None, "companyname");
    let rel_entity = mock.column("customersubsidiaryrelationship", None, "entity");
    let rel_sub = mock.column("customersubsidiaryrelationship", None, "subsidiary");
    let rel_primary = mock.column("customersubsidiaryrelationship", None, "isprimarysub");
    let sub_name = mock.column("subsidiary", None, "name");
    let mut primary_sub = BTreeMap::new();
    for (rid, e) in &rel_entity {
        if rel_primary[rid].as_deref() == Some("T") {
            let sid: u64 = rel_sub[rid].as_deref().unwrap().parse().unwrap();
            primary_sub.insert(e.clone().unwrap(), sub_name[&sid].clone().unwrap());
        }
    }
    for (id, cust) in &store.customers {
        let n: u64 = id.parse().unwrap();
        assert_eq!(
            cust.last_modified,
            mock_utc(&mock, modified[&n].as_deref().unwrap())
        );
        assert_eq!(cust.custom.get("custentity_region"), region[&n].as_ref());
        assert!(cust.custom.contains_key("custentity_segment"));
        assert_eq!(cust.subsidiary.as_ref(), primary_sub.get(id));
        if let Some(name) = &company[&n] {
            assert_eq!(&cust.name, name);
        } else {
            assert!(cust.name.starts_with("First"), "person name: {}", cust.name);
        }
        assert!(cust.currency.as_deref().is_some_and(|c| c.len() == 3));
    }
    let statuses: BTreeSet<String> = store
        .records(Entity::Invoices)
        .map(|r| match r {
            Record::Invoice(i) => format!("{:?}", i.status),
            _ => unreachable!(),
        })
        .collect();
    assert!(statuses.contains("Open") && statuses.contains("Paid") && statuses.contains("Voided"));

    let records = store.customers.len() + store.records.len();
    let s = mock.stats();
    assert_eq!(s.requests, s.ok, "no failed requests expected: {s:?}");
    print_rate("full sync", s.requests, records);
    // One request per 1,000-row page plus one DeletedRecord query per stream.
    assert!(
        s.requests <= 3 + 3 + (records as u64).div_ceil(1000),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_table_over_100k_rows_syncs_completely() {
    let started = Instant::now();
    let mock = MockNetsuite::start(MockConfig {
        customers: 50,
        invoices: 100_500,
        payments: 0,
        credit_memos: 0,
        ..MockConfig::default()
    })
    .await;
    let generated = started.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "", Budget::new(limits(4)));
    let mut store = Store::default();
    pass_records(&c, Entity::Invoices, &mut store, Cursor::start())
        .await
        .unwrap();
    let t = mock.totals();
    let n = store.records(Entity::Invoices).count();
    let sum: Decimal = store
        .records(Entity::Invoices)
        .map(|r| match r {
            Record::Invoice(i) => i.total,
            _ => unreachable!(),
        })
        .sum();
    assert_eq!((n, sum), (100_500, t.invoice_total));
    let s = mock.stats();
    print_rate("100k-row table", s.requests, n);
    println!(
        "netsuite 100k-row table: generated in {:?}, synced in {:?}",
        generated,
        started.elapsed() - generated
    );
    assert_eq!(
        s.requests,
        101 + 1,
        "101 pages of 1,000 plus one deletions query"
    );
}

#[tokio::test]
async fn changes_and_deletions_between_pages_are_picked_up() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "page_size = 100", Budget::new(limits(4)));
    let mut store = Store::default();

    // Two pages into the first pass...
    let mut cursor = Cursor::start();
    for _ in 0..2 {
        let page = c.fetch_records(Entity::Invoices, &cursor).await.unwrap();
        assert!(page.has_more);
        cursor = page.next.clone();
        store.apply_records(Entity::Invoices, page);
    }
    let read: Vec<u64> = store
        .records(Entity::Invoices)
        .map(|r| r.external_id().parse().unwrap())
        .collect();
    let all = mock.ids("transaction", Some("CustInvc"));
    let ahead: Vec<u64> = all
        .iter()
        .copied()
        .filter(|id| id > read.last().unwrap())
        .collect();
    // ...the ERP changes behind and ahead of the keyset position.
    let (behind_mod, behind_del) = (read[3], read[10]);
    let (ahead_mod, ahead_del) = (ahead[50], ahead[60]);
    mock.update(
        "transaction",
        behind_mod,
        &[("foreignamountunpaid", "0"), ("status", "B")],
    );
    mock.delete("transaction", behind_del);
    mock.update("transaction", ahead_mod, &[("foreignamountunpaid", "1.23")]);
    mock.delete("transaction", ahead_del);
    let customer = mock.ids("customer", None)[0];
    let new_id = mock.insert_invoice(customer, "99.99");

    let cursor = pass_records(&c, Entity::Invoices, &mut store, cursor)
        .await
        .unwrap();
    // Deletions and changes ahead are in after the first pass.
    assert!(!store
        .records
        .contains_key(&(Entity::Invoices, behind_del.to_string())));
    assert!(!store
        .records
        .contains_key(&(Entity::Invoices, ahead_del.to_string())));
    assert!(store
        .records
        .contains_key(&(Entity::Invoices, new_id.to_string())));

    // The next pass is incremental and brings the change behind the keyset.
    let before = store.items_received;
    mock.reset_stats();
    pass_records(&c, Entity::Invoices, &mut store, cursor)
        .await
        .unwrap();
    let reread = store.items_received - before;
    assert!(
        (3..20).contains(&reread),
        "incremental pass re-read {reread} invoices"
    );
    assert_eq!(mock.stats().requests, 2, "one page and one deletions query");
    assert_invoices_match(&mock, &store);
    let Record::Invoice(i) = &store.records[&(Entity::Invoices, behind_mod.to_string())] else {
        panic!()
    };
    assert_eq!(
        (i.status, i.amount_due),
        (InvoiceStatus::Paid, Decimal::ZERO)
    );

    // A customer deleted between passes disappears too.
    let mut customers = Store::default();
    let cc = pass_customers(&c, &mut customers, Cursor::start())
        .await
        .unwrap();
    mock.delete("customer", customer);
    pass_customers(&c, &mut customers, cc).await.unwrap();
    assert!(!customers.customers.contains_key(&customer.to_string()));
    assert_eq!(customers.customers.len(), mock.totals().customers);
}

#[tokio::test]
async fn a_restart_resumes_mid_table_from_the_checkpoint() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::default();
    let mut saved = Cursor::start();
    {
        let c = connector(&mock, dir.path(), "page_size = 50", Budget::new(limits(2)));
        for _ in 0..3 {
            let page = c.fetch_customers(&saved).await.unwrap();
            saved = page.next.clone();
            store.apply_customers(page);
        }
    }
    assert!(saved.0.contains("\"after_id\":"), "{}", saved.0);
    // A new process continues from the stored cursor, not from the start.
    let c = connector(&mock, dir.path(), "page_size = 50", Budget::new(limits(2)));
    pass_customers(&c, &mut store, saved).await.unwrap();
    assert_eq!(store.customers.len(), mock.totals().customers);
    assert_eq!(
        store.items_received,
        mock.totals().customers,
        "nothing read twice"
    );
    let pages = (mock.totals().customers as u64).div_ceil(50);
    assert_eq!(mock.stats().requests, pages + 1);
}

#[tokio::test]
async fn inactive_and_intercompany_customers_are_flagged() {
    let mock = MockNetsuite::start(MockConfig {
        intercompany_column: "custentity_represents_sub".into(),
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(
        &mock,
        dir.path(),
        r#"intercompany_column = "custentity_represents_sub""#,
        Budget::new(limits(2)),
    );
    let native = <Netsuite as ConnectorKind>::NATIVE_EXCLUSIONS;
    let kinds: Vec<&str> = native.iter().map(|n| n.name).collect();
    assert_eq!(kinds, ["inactive", "intercompany"]);
    let mut store = Store::default();
    pass_customers(&c, &mut store, Cursor::start())
        .await
        .unwrap();
    let t = mock.totals();
    assert!(t.inactive > 0 && t.intercompany > 0, "{t:?}");
    let inactive = mock.column("customer", None, "isinactive");
    let ic = mock.column("customer", None, "custentity_represents_sub");
    for (id, cust) in &store.customers {
        let n: u64 = id.parse().unwrap();
        assert_eq!(
            cust.inactive,
            inactive[&n].as_deref() == Some("T"),
            "customer {id}"
        );
        assert_eq!(cust.intercompany, ic[&n].is_some(), "customer {id}");
        assert_eq!((native[0].applies)(cust), cust.inactive);
    }
    assert_eq!(
        store.customers.values().filter(|c| c.inactive).count(),
        t.inactive
    );
    assert_eq!(
        store.customers.values().filter(|c| c.intercompany).count(),
        t.intercompany
    );

    // An account without the column: switch it off, nothing is intercompany.
    let c = connector(
        &mock,
        dir.path(),
        r#"intercompany_column = """#,
        Budget::new(limits(2)),
    );
    let mut store = Store::default();
    pass_customers(&c, &mut store, Cursor::start())
        .await
        .unwrap();
    assert!(store.customers.values().all(|c| !c.intercompany));
}

#[tokio::test]
async fn resync_reads_a_customer_set_in_one_query_per_page() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "page_size = 100", Budget::new(limits(2)));
    assert_eq!(c.resync_batch_size(), 200);
    let customers: Vec<u64> = mock
        .ids("customer", None)
        .into_iter()
        .step_by(2)
        .take(150)
        .collect();
    let mut ids: Vec<String> = customers.iter().map(u64::to_string).collect();
    ids.push("1) OR (1=1".into()); // never reaches the query
    let mut store = Store::default();
    resync(&c, Entity::Invoices, &ids, &mut store)
        .await
        .unwrap();
    resync(&c, Entity::Transactions, &ids, &mut store)
        .await
        .unwrap();
    let wanted: BTreeSet<String> = customers.iter().map(u64::to_string).collect();
    let entity = mock.column("transaction", None, "entity");
    let expected: BTreeSet<u64> = entity
        .iter()
        .filter(|(_, e)| wanted.contains(e.as_deref().unwrap()))
        .map(|(id, _)| *id)
        .collect();
    let got: BTreeSet<u64> = store
        .records
        .keys()
        .map(|(_, id)| id.parse().unwrap())
        .collect();
    assert_eq!(got, expected);
    assert!(mock
        .recent_queries()
        .iter()
        .all(|q| !q.contains(" OR ") && !q.contains("1=1")));
    let requests = mock.stats().requests;
    let per_entity_pages = |n: usize| (n as u64 / 100) + 1;
    let inv = store.records(Entity::Invoices).count();
    let tx = store.records(Entity::Transactions).count();
    assert_eq!(requests, per_entity_pages(inv) + per_entity_pages(tx));
    print_rate("resync", requests, inv + tx);

    let too_many: Vec<String> = (1..=201).map(|i| i.to_string()).collect();
    let err = c
        .fetch_records_for_customers(Entity::Invoices, &too_many, &Cursor::start())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_exceeds_the_concurrency_limit_and_survives_faults() {
    let mock = MockNetsuite::start(MockConfig {
        concurrency_limit: 3,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget::new(limits(3));
    let c = connector(&mock, dir.path(), "page_size = 100", Arc::clone(&budget));
    // A first successful call, as any running daemon has made.
    c.fetch_customers(&Cursor::start()).await.unwrap();
    mock.push_faults([
        Fault::TooManyRequests { retry_after: None },
        Fault::ServerError(503),
        Fault::Slow(Duration::from_millis(40)),
        Fault::TruncatedBody,
        Fault::InvalidLoginOverload,
        Fault::ServerError(500),
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
        Fault::Slow(Duration::from_millis(40)),
        Fault::TruncatedBody,
        Fault::ServerError(502),
    ]);
    let started = Instant::now();
    let customers = mock.ids("customer", None);
    let ids: Vec<String> = customers.iter().take(100).map(u64::to_string).collect();
    let (a, b, t, r) = tokio::join!(
        async {
            let mut s = Store::default();
            pass_customers(&c, &mut s, Cursor::start()).await.map(|_| s)
        },
        async {
            let mut s = Store::default();
            pass_records(&c, Entity::Invoices, &mut s, Cursor::start())
                .await
                .map(|_| s)
        },
        async {
            let mut s = Store::default();
            pass_records(&c, Entity::Transactions, &mut s, Cursor::start())
                .await
                .map(|_| s)
        },
        async {
            let mut s = Store::default();
            resync(&c, Entity::Invoices, &ids, &mut s).await.map(|_| s)
        },
    );
    let (a, b, t, _r) = (a.unwrap(), b.unwrap(), t.unwrap(), r.unwrap());
    let totals = mock.totals();
    assert_eq!(a.customers.len(), totals.customers);
    assert_invoices_match(&mock, &b);
    assert_eq!(t.records.len(), totals.payments + totals.credit_memos);
    let s = mock.stats();
    assert_eq!(mock.pending_faults(), 0);
    assert!(s.max_in_flight <= 3, "{s:?}");
    assert!(s.max_in_flight <= budget.stats().max_in_flight_seen);
    assert!(
        s.rate_limited >= 2 && s.server_errors >= 3 && s.unauthorized >= 1,
        "{s:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_erp_limit_backs_off_and_finishes() {
    // The budget allows more than the account does: NetSuite pushes back
    // with 429, or with 401 INVALID_LOGIN after successful calls.
    for overload in [Overload::TooManyRequests, Overload::InvalidLogin] {
        let mock = MockNetsuite::start(MockConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits(6);
        l.max_attempts = 30;
        let c = connector(&mock, dir.path(), "page_size = 100", Budget::new(l));
        c.fetch_customers(&Cursor::start()).await.unwrap();
        mock.set_concurrency_limit(1);
        mock.set_overload_answer(overload);
        mock.push_faults((0..6).map(|_| Fault::Slow(Duration::from_millis(30))));
        let (a, b, t) = tokio::join!(
            async {
                let mut s = Store::default();
                pass_customers(&c, &mut s, Cursor::start()).await.map(|_| s)
            },
            async {
                let mut s = Store::default();
                pass_records(&c, Entity::Invoices, &mut s, Cursor::start())
                    .await
                    .map(|_| s)
            },
            async {
                let mut s = Store::default();
                pass_records(&c, Entity::Transactions, &mut s, Cursor::start())
                    .await
                    .map(|_| s)
            },
        );
        let totals = mock.totals();
        assert_eq!(a.unwrap().customers.len(), totals.customers);
        assert_eq!(b.unwrap().records.len(), totals.invoices);
        assert_eq!(
            t.unwrap().records.len(),
            totals.payments + totals.credit_memos
        );
        let s = mock.stats();
        assert!(s.rate_limited + s.unauthorized > 0, "{overload:?}: {s:?}");
    }
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_error_after_one_request() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let o = options(&mock, dir.path(), "");
    std::fs::write(dir.path().join("token_secret"), "not-the-secret\n").unwrap();
    let budget = Budget::new(limits(4));
    let c = NetsuiteConnector::new(&o, dir.path(), Arc::clone(&budget)).unwrap();
    let err = c.fetch_customers(&Cursor::start()).await.unwrap_err();
    let ConnectorError::Auth(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("INVALID_LOGIN") && msg.contains("Invalid login attempt"),
        "{msg}"
    );
    assert!(
        !msg.contains("not-the-secret")
            && !msg.contains(&mock.config().credentials.consumer_secret)
    );
    let s = mock.stats();
    assert_eq!(
        (s.requests, s.unauthorized),
        (1, 1),
        "no retry storm: {s:?}"
    );
    assert_eq!(s.last_auth_failure.as_deref(), Some("signature mismatch"));
    assert_eq!(budget.stats().retries, 0);
}

#[tokio::test]
async fn a_rejected_query_surfaces_netsuite_error_details() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(
        &mock,
        dir.path(),
        r#"custom_fields = ["custentity_nope"]"#,
        Budget::new(limits(4)),
    );
    let err = c.fetch_customers(&Cursor::start()).await.unwrap_err();
    let ConnectorError::Rejected { status, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 400);
    assert!(
        message.starts_with("INVALID_PARAMETER: Invalid search query."),
        "{message}"
    );
    assert!(
        message.contains("Field 'custentity_nope' for record 'customer' was not found"),
        "{message}"
    );
    assert_eq!(mock.stats().requests, 1);
}

#[tokio::test]
async fn malformed_rows_are_quarantined_and_the_sync_goes_on() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(&mock, dir.path(), "", Budget::new(limits(2)));
    let inv = mock.ids("transaction", Some("CustInvc"));
    mock.set_raw("transaction", inv[5], "foreigntotal", Some("12,5O"));
    mock.set_raw("transaction", inv[7], "lastmodifieddate", Some("garbage"));
    mock.set_raw("transaction", inv[9], "status", Some("Q"));
    let mut store = Store::default();
    pass_records(&c, Entity::Invoices, &mut store, Cursor::start())
        .await
        .unwrap();
    let q: BTreeMap<String, String> = store
        .quarantined
        .iter()
        .map(|q| (q.external_id.clone().unwrap(), q.reason.clone()))
        .collect();
    assert_eq!(q.len(), 3, "{q:?}");
    assert!(q[&inv[5].to_string()].contains("foreigntotal"));
    assert!(q[&inv[7].to_string()].contains("lastmodified"));
    assert!(q[&inv[9].to_string()].contains("status"));
    assert_eq!(store.records(Entity::Invoices).count(), inv.len() - 3);

    // A response-level malformed row is quarantined the same way.
    mock.push_faults([Fault::MalformedRow]);
    let mut store = Store::default();
    pass_customers(&c, &mut store, Cursor::start())
        .await
        .unwrap();
    assert_eq!(store.quarantined.len(), 1);
    assert_eq!(store.customers.len(), mock.totals().customers - 1);
}

/// The mock itself: auth checks, paging rules and query-shape strictness.
#[tokio::test]
async fn the_mock_enforces_netsuite_rules() {
    use erpsync::connectors::netsuite::auth::Signer;
    use erpsync::secrets::Secret;

    let mock = MockNetsuite::start(MockConfig::default()).await;
    let cr = mock.config().credentials.clone();
    let signer = |secret: &str| {
        Signer::new(
            "123456_SB1",
            Secret::new(cr.consumer_key.clone()),
            Secret::new(cr.consumer_secret.clone()),
            Secret::new(cr.token_id.clone()),
            Secret::new(secret),
        )
    };
    let good = signer(&cr.token_secret);
    let http = reqwest::Client::new();
    let send = |query: &str, q: &str, auth: Option<String>, prefer: bool| {
        let url = reqwest::Url::parse(&format!(
            "{}/services/rest/query/v1/suiteql?{query}",
            mock.base_url()
        ))
        .unwrap();
        let auth = auth.unwrap_or_else(|| good.authorize_now("POST", &url));
        let mut rb = http
            .post(url)
            .header("authorization", auth)
            .json(&serde_json::json!({ "q": q }));
        if prefer {
            rb = rb.header("prefer", "transient");
        }
        async move {
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let ok_q =
        "SELECT c.id, c.datecreated, c.balancesearch FROM customer c WHERE c.id > 0 ORDER BY c.id";

    let (st, body) = send("limit=2&offset=0", ok_q, None, true).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["count"], 2);
    assert_eq!(body["hasMore"], true);
    assert_eq!(body["totalResults"], mock.totals().customers);
    let item = &body["items"][0];
    assert_eq!(item["links"], serde_json::json!([]));
    assert!(item["id"].is_string());
    let raw_date = item["datecreated"].as_str().unwrap();
    assert!(
        raw_date.contains('/') && !raw_date.contains(':'),
        "raw dates lose their time: {raw_date}"
    );

    for (query, code) in [
        ("limit=1001&offset=0", 400),
        ("limit=1000&offset=100000", 400),
        ("limit=10&offset=5", 400),
    ] {
        let (st, body) = send(query, ok_q, None, true).await;
        assert_eq!(st, code, "{query}: {body}");
        assert!(body["o:errorDetails"][0]["detail"].is_string());
    }
    for q in [
        "SELECT * FROM customer",
        "SELECT c.id FROM customer c WHERE c.lastmodifieddate >= '1/1/2024' ORDER BY c.id",
        "SELECT c.id FROM customer c UNION SELECT 1 FROM dual",
        "SELECT c.nosuchcolumn FROM customer c",
    ] {
        let (st, body) = send("limit=10&offset=0", q, None, true).await;
        assert_eq!(st, 400, "{q}: {body}");
        assert_eq!(
            body["o:errorDetails"][0]["o:errorCode"],
            "INVALID_PARAMETER"
        );
    }
    let (st, _) = send("limit=10&offset=0", ok_q, None, false).await;
    assert_eq!(st, 400, "Prefer: transient is required");

    // Auth: wrong secret, reused nonce, stale timestamp.
    let url = reqwest::Url::parse(&format!(
        "{}/services/rest/query/v1/suiteql?limit=10&offset=0",
        mock.base_url()
    ))
    .unwrap();
    let now = Utc::now().timestamp();
    let (st, body) = send(
        "limit=10&offset=0",
        ok_q,
        Some(signer("wrong").authorize_now("POST", &url)),
        true,
    )
    .await;
    assert_eq!(
        (st, body["o:errorDetails"][0]["o:errorCode"].as_str()),
        (401, Some("INVALID_LOGIN"))
    );
    let fixed = good.authorize("POST", &url, "nonce-once-123", now);
    assert_eq!(
        send("limit=10&offset=0", ok_q, Some(fixed.clone()), true)
            .await
            .0,
        200
    );
    assert_eq!(
        send("limit=10&offset=0", ok_q, Some(fixed), true).await.0,
        401
    );
    assert_eq!(
        mock.stats().last_auth_failure.as_deref(),
        Some("nonce reused")
    );
    let stale = good.authorize("POST", &url, "nonce-stale-123", now - 3600);
    assert_eq!(
        send("limit=10&offset=0", ok_q, Some(stale), true).await.0,
        401
    );
    assert_eq!(
        mock.stats().last_auth_failure.as_deref(),
        Some("stale timestamp")
    );
    // Signed for other query parameters than those sent.
    let other = reqwest::Url::parse(&format!(
        "{}/services/rest/query/v1/suiteql?limit=5&offset=0",
        mock.base_url()
    ))
    .unwrap();
    let (st, _) = send(
        "limit=10&offset=0",
        ok_q,
        Some(good.authorize_now("POST", &other)),
        true,
    )
    .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn an_account_without_oneworld_is_detected_and_read_without_subsidiaries() {
    let mock = MockNetsuite::start(MockConfig {
        oneworld: false,
        customers: 40,
        invoices: 60,
        payments: 10,
        credit_memos: 5,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Detected: the first customer query is refused for the missing
    // subsidiary relationship, the same page is read without it.
    let c = connector(&mock, dir.path(), "", Budget::new(limits(2)));
    let p = c.fetch_customers(&Cursor::start()).await.unwrap();
    assert_eq!(p.items.len(), 40);
    assert!(p
        .items
        .iter()
        .all(|c| c.subsidiary.is_none() && !c.intercompany));
    assert_eq!(mock.stats().bad_requests, 1);
    let q = mock.recent_queries().last().unwrap().clone();
    assert!(!q.contains("customersubsidiaryrelationship"), "{q}");
    assert!(!q.contains("representingsubsidiary"), "{q}");
    // Once known, never asked again.
    let mut cursor = p.next;
    loop {
        let p = c.fetch_customers(&cursor).await.unwrap();
        cursor = p.next;
        if !p.has_more {
            break;
        }
    }
    assert_eq!(mock.stats().bad_requests, 1);

    // `oneworld = false`: no failed query at all.
    mock.reset_stats();
    let c = connector(
        &mock,
        dir.path(),
        "oneworld = false",
        Budget::new(limits(2)),
    );
    assert_eq!(
        c.fetch_customers(&Cursor::start())
            .await
            .unwrap()
            .items
            .len(),
        40
    );
    assert_eq!(mock.stats().bad_requests, 0);

    // `oneworld = true` on such an account: a clear error naming the option,
    // nothing read.
    let c = connector(&mock, dir.path(), "oneworld = true", Budget::new(limits(2)));
    match c.fetch_customers(&Cursor::start()).await {
        Err(ConnectorError::Config(m)) => {
            assert!(m.contains("not a OneWorld account"), "{m}");
            assert!(
                m.contains("set `oneworld = false` in [connectors.netsuite]"),
                "{m}"
            );
            assert!(m.contains("customersubsidiaryrelationship"), "{m}");
        }
        other => panic!("{other:?}"),
    }

    // A OneWorld account still reads subsidiaries.
    let ow = MockNetsuite::start(MockConfig {
        customers: 20,
        ..MockConfig::default()
    })
    .await;
    let c = connector(&ow, dir.path(), "", Budget::new(limits(2)));
    let p = c.fetch_customers(&Cursor::start()).await.unwrap();
    assert!(p.items.iter().all(|c| c.subsidiary.is_some()));
    assert_eq!(ow.stats().bad_requests, 0);
}

#[tokio::test]
async fn display_fields_pass_custom_list_values_as_their_text() {
    let mock = MockNetsuite::start(MockConfig {
        customers: 30,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let by_text = connector(
        &mock,
        dir.path(),
        "display_fields = [\"custentity_tier\"]",
        Budget::new(limits(2)),
    );
    let p = by_text.fetch_customers(&Cursor::start()).await.unwrap();
    let q = mock.recent_queries().last().unwrap().clone();
    assert!(
        q.contains("BUILTIN.DF(c.custentity_tier) AS custentity_tier"),
        "{q}"
    );
    let tiers: BTreeSet<&str> = p
        .items
        .iter()
        .map(|c| c.custom["custentity_tier"].as_str())
        .collect();
    let all: BTreeSet<&str> = crate::netsuite_mock::TIERS.iter().copied().collect();
    assert_eq!(tiers, all);
    // A rule can name the text.
    let rule = erpsync::rules::Condition::parse(
        &serde_json::json!(
            { "field": "custom.custentity_tier", "op": "is", "value": "Enterprise" }
        ),
        erpsync::rules::ParseOptions {
            case_sensitive: true,
        },
    )
    .unwrap();
    let enterprise = p.items.iter().filter(|c| rule.matches(c)).count();
    assert_eq!(enterprise, 10);

    // As a plain custom field it is the internal id.
    let by_id = connector(
        &mock,
        dir.path(),
        "custom_fields = [\"custentity_tier\"]",
        Budget::new(limits(2)),
    );
    let p = by_id.fetch_customers(&Cursor::start()).await.unwrap();
    assert!(p
        .items
        .iter()
        .all(|c| ["1", "2", "3"].contains(&c.custom["custentity_tier"].as_str())));
}
