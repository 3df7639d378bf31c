//! Mock NetSuite for the connector tests: an in-process SuiteTalk REST server
//! (axum on 127.0.0.1:0) that answers `POST /services/rest/query/v1/suiteql`
//! the way NetSuite does.
//!
//! It owns: token-based-auth verification (its own OAuth 1.0a HMAC-SHA256
//! implementation, not the connector's; nonce reuse and stale timestamps are
//! refused), collection paging rules (`limit` ≤ 1,000, `offset` a multiple of
//! `limit`, nothing past row 100,000), a small SuiteQL interpreter for the
//! query shapes the connector sends (anything else gets a 400 error envelope,
//! so query drift shows up as a failing test), NetSuite's row format (lower-case
//! keys, string values, `'T'`/`'F'`, NULL columns left out, raw dates
//! without their time), a concurrency limit answered with 429, injectable
//! faults, and a seeded data generator. It must not share code with the
//! connector beyond the public model types, or it could not catch the
//! connector's mistakes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use chrono::{Duration as TimeDelta, NaiveDate, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};

// ============================================================================
// Public handle
// ============================================================================

#[derive(Clone, Debug)]
pub struct Credentials {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub token_id: String,
    pub token_secret: String,
}

#[derive(Clone, Debug)]
pub struct MockConfig {
    pub seed: u64,
    pub customers: usize,
    pub invoices: usize,
    pub payments: usize,
    pub credit_memos: usize,
    pub account_id: String,
    /// The account time zone, minutes east of UTC.
    pub utc_offset_minutes: i32,
    pub concurrency_limit: usize,
    /// Name of the customer column marking intercompany customers.
    pub intercompany_column: String,
    pub credentials: Credentials,
    /// Longest `q` accepted (the real limit is not documented).
    pub max_query_len: usize,
    /// Added to every answer, like the round trip and query time of a real
    /// account (benchmarks).
    pub latency: Duration,
    /// A OneWorld account (subsidiaries). Without: no
    /// `customersubsidiaryrelationship` record and no
    /// `representingsubsidiary` column, as in a NetSuite account without
    /// OneWorld.
    pub oneworld: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: 7,
            customers: 300,
            invoices: 1_500,
            payments: 700,
            credit_memos: 120,
            account_id: "123456_SB1".into(),
            utc_offset_minutes: -8 * 60,
            concurrency_limit: 5,
            intercompany_column: "representingsubsidiary".into(),
            credentials: Credentials {
                consumer_key: "ck-3f1e2d".into(),
                consumer_secret: "cs+/ secret&=".into(),
                token_id: "tk-77aa".into(),
                token_secret: "ts~secret%x".into(),
            },
            max_query_len: 100_000,
            latency: Duration::ZERO,
            oneworld: true,
        }
    }
}

/// One injected fault, applied to the next authenticated request.
#[derive(Clone, Debug)]
pub enum Fault {
    TooManyRequests {
        retry_after: Option<u64>,
    },
    /// NetSuite's "over the concurrency limit" disguised as a login failure.
    InvalidLoginOverload,
    ServerError(u16),
    /// Delay the (otherwise normal) answer.
    Slow(Duration),
    /// A 200 whose JSON body is cut in half.
    TruncatedBody,
    /// A 200 whose first row has an unparseable number and date.
    MalformedRow,
    /// An error answer with `status` whose text echoes the request's
    /// headers, `Authorization` included (as a misconfigured proxy or a
    /// debugging endpoint does): in NetSuite's error envelope when `json`,
    /// else as plain text.
    EchoHeaders {
        status: u16,
        json: bool,
    },
    /// A normal answer (to place a later fault deeper into a sync).
    Pass,
    /// A 200 whose body stops half-way: the connection is reset.
    ResetMidBody,
    /// Runs the hook (say, changing the data), then answers normally.
    Before(Hook),
}

/// A test's code run by the mock inside a request ([`Fault::Before`]).
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// How the mock answers a request over its concurrency limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Overload {
    TooManyRequests,
    InvalidLogin,
}

#[derive(Clone, Debug, Default)]
pub struct MockStats {
    pub requests: u64,
    pub ok: u64,
    pub unauthorized: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub bad_requests: u64,
    pub max_in_flight: usize,
    pub last_auth_failure: Option<String>,
}

/// Aggregates of the mock's data, to compare a synced copy against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub customers: usize,
    pub inactive: usize,
    pub intercompany: usize,
    pub invoices: usize,
    pub invoice_total: Decimal,
    pub invoice_unpaid: Decimal,
    pub payments: usize,
    pub payment_total: Decimal,
    pub credit_memos: usize,
    /// Absolute value: credit memo totals are negative in NetSuite.
    pub credit_total: Decimal,
}

pub struct MockNetsuite {
    addr: SocketAddr,
    state: Arc<MockState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockNetsuite {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockNetsuite {
    pub async fn start(cfg: MockConfig) -> MockNetsuite {
        let db = generate(&cfg);
        let state = Arc::new(MockState {
            limit: AtomicUsize::new(cfg.concurrency_limit),
            cfg,
            db: Mutex::new(db),
            faults: Mutex::new(VecDeque::new()),
            nonces: Mutex::new(HashSet::new()),
            in_flight: AtomicUsize::new(0),
            overload: Mutex::new(Overload::TooManyRequests),
            stats: Mutex::new(MockStats::default()),
            queries: Mutex::new(VecDeque::new()),
            revoked: std::sync::atomic::AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/services/rest/query/v1/suiteql", post(suiteql))
            .fallback(not_found)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockNetsuite {
            addr,
            state,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &MockConfig {
        &self.state.cfg
    }

    pub fn stats(&self) -> MockStats {
        self.state.stats.lock().unwrap().clone()
    }

    pub fn reset_stats(&self) {
        *self.state.stats.lock().unwrap() = MockStats::default();
    }

    /// The last queries received (at most 50), newest last.
    pub fn recent_queries(&self) -> Vec<String> {
        self.state.queries.lock().unwrap().iter().cloned().collect()
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }

    /// Revokes the access token (every request then fails its login) or
    /// issues it again.
    pub fn set_revoked(&self, revoked: bool) {
        self.state.revoked.store(revoked, Ordering::SeqCst);
    }

    /// Drops faults not applied yet.
    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    pub fn pending_faults(&self) -> usize {
        self.state.faults.lock().unwrap().len()
    }

    pub fn set_concurrency_limit(&self, n: usize) {
        self.state.limit.store(n, Ordering::SeqCst);
    }

    pub fn set_overload_answer(&self, o: Overload) {
        *self.state.overload.lock().unwrap() = o;
    }

    /// "Now" in the account's time zone, as NetSuite stamps modifications.
    pub fn now_local(&self) -> NaiveDateTime {
        now_local(self.state.cfg.utc_offset_minutes)
    }

    pub fn totals(&self) -> Totals {
        let db = self.state.db.lock().unwrap();
        let mut t = Totals::default();
        let cust = &db.tables["customer"];
        let inactive = cust.col("isinactive").unwrap();
        let ic = cust.col(&self.state.cfg.intercompany_column);
        for row in cust.rows.values() {
            t.customers += 1;
            t.inactive += (row[inactive].as_deref() == Some("T")) as usize;
            t.intercompany += ic.is_some_and(|ic| row[ic].is_some()) as usize;
        }
        let txn = &db.tables["transaction"];
        let (ty, total, unpaid) = (
            txn.col("type").unwrap(),
            txn.col("foreigntotal").unwrap(),
            txn.col("foreignamountunpaid").unwrap(),
        );
        let dec = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| Decimal::from_str(s).ok())
                .unwrap_or_default()
        };
        for row in txn.rows.values() {
            match row[ty].as_deref() {
                Some("CustInvc") => {
                    t.invoices += 1;
                    t.invoice_total += dec(&row[total]);
                    t.invoice_unpaid += dec(&row[unpaid]);
                }
                Some("CustPymt") => {
                    t.payments += 1;
                    t.payment_total += dec(&row[total]).abs();
                }
                Some("CustCred") => {
                    t.credit_memos += 1;
                    t.credit_total += dec(&row[total]).abs();
                }
                _ => {}
            }
        }
        t
    }

    /// `column` of every row of `table` (optionally only transactions of
    /// `tx_type`), keyed by id. Values as stored (canonical text).
    pub fn column(
        &self,
        table: &str,
        tx_type: Option<&str>,
        column: &str,
    ) -> BTreeMap<u64, Option<String>> {
        let db = self.state.db.lock().unwrap();
        let t = &db.tables[table];
        let c = t
            .col(column)
            .unwrap_or_else(|| panic!("no column {column}"));
        let ty = t.col("type");
        t.rows
            .iter()
            .filter(|(_, r)| match (tx_type, ty) {
                (Some(want), Some(ty)) => r[ty].as_deref() == Some(want),
                _ => true,
            })
            .map(|(id, r)| (*id, r[c].clone()))
            .collect()
    }

    /// Ids of `table` rows (optionally of one transaction type).
    pub fn ids(&self, table: &str, tx_type: Option<&str>) -> Vec<u64> {
        self.column(table, tx_type, "id").into_keys().collect()
    }

    /// Changes columns of a record the way a user edit does: the values,
    /// and `lastmodifieddate` = now (account time).
    pub fn update(&self, table: &str, id: u64, values: &[(&str, &str)]) {
        let now = fmt_dt(self.now_local());
        let mut db = self.state.db.lock().unwrap();
        db.changed();
        let t = db.tables.get_mut(table).unwrap();
        for (col, v) in values {
            t.set(id, col, Some(v.to_string()));
        }
        t.set(id, "lastmodifieddate", Some(now));
    }

    /// Overwrites a stored value without touching `lastmodifieddate` (data
    /// corruption, for malformed-row tests).
    pub fn set_raw(&self, table: &str, id: u64, column: &str, value: Option<&str>) {
        let mut db = self.state.db.lock().unwrap();
        db.changed();
        db.tables
            .get_mut(table)
            .unwrap()
            .set(id, column, value.map(str::to_string));
    }

    /// Deletes a record without a `DeletedRecord` row, as when the deletion
    /// is older than the deletion log keeps: only a full read notices.
    pub fn forget(&self, table: &str, id: u64) {
        let mut db = self.state.db.lock().unwrap();
        db.changed();
        db.tables
            .get_mut(table)
            .unwrap()
            .remove(id)
            .unwrap_or_else(|| panic!("no {table} {id}"));
    }

    /// Deletes a record and writes its `DeletedRecord` row.
    pub fn delete(&self, table: &str, id: u64) {
        let now = fmt_dt(self.now_local());
        let mut db = self.state.db.lock().unwrap();
        db.changed();
        let t = db.tables.get_mut(table).unwrap();
        let row = t.remove(id).unwrap_or_else(|| panic!("no {table} {id}"));
        let kind = match table {
            "customer" => "Customer",
            _ => match row[t.col("type").unwrap()].as_deref() {
                Some("CustInvc") => "Invoice",
                Some("CustPymt") => "CustomerPayment",
                Some("CustCred") => "CreditMemo",
                other => panic!("cannot delete type {other:?}"),
            },
        };
        db.next_deleted += 1;
        let del_id = db.next_deleted;
        let d = db.tables.get_mut("deletedrecord").unwrap();
        d.insert(
            del_id,
            vec![
                Some(del_id.to_string()),
                Some(id.to_string()),
                Some(kind.to_string()),
                Some(now),
                Some(format!("{kind} {id}")),
            ],
        );
    }

    /// Adds a new open invoice for `customer` (now, in account time).
    pub fn insert_invoice(&self, customer: u64, total: &str) -> u64 {
        let now = self.now_local();
        let mut db = self.state.db.lock().unwrap();
        db.changed();
        db.next_txn += 1;
        let id = db.next_txn;
        let t = db.tables.get_mut("transaction").unwrap();
        let row = txn_row(
            t,
            TxnSpec {
                id,
                ty: "CustInvc",
                entity: customer,
                trandate: now.date(),
                duedate: Some(now.date() + TimeDelta::days(30)),
                currency: 1,
                total: Decimal::from_str(total).unwrap(),
                unpaid: Decimal::from_str(total).unwrap(),
                status: "A",
                voided: false,
                dispute: false,
                modified: now,
            },
        );
        t.insert(id, row);
        id
    }
}

// ============================================================================
// Storage: tiny typed tables of NetSuite-shaped text values
// ============================================================================

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    Int,
    Text,
    Bool,
    Money,
    Date,
    DateTime,
    /// Internal id of a row of another table (BUILTIN.DF shows its name).
    Ref(&'static str),
}

type Row = Vec<Option<String>>;

struct Table {
    name: &'static str,
    cols: Vec<(String, Ty)>,
    rows: BTreeMap<u64, Row>,
    /// Secondary indexes (column → value → ids), for joins.
    index: HashMap<usize, HashMap<String, Vec<u64>>>,
}

impl Table {
    fn new(name: &'static str, cols: &[(&str, Ty)], indexed: &[&str]) -> Table {
        let cols: Vec<(String, Ty)> = cols.iter().map(|(c, t)| (c.to_string(), *t)).collect();
        let index = indexed
            .iter()
            .map(|c| {
                (
                    cols.iter().position(|(n, _)| n == c).unwrap(),
                    HashMap::new(),
                )
            })
            .collect();
        Table {
            name,
            cols,
            rows: BTreeMap::new(),
            index,
        }
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|(n, _)| n == name)
    }

    fn insert(&mut self, id: u64, row: Row) {
        for (c, idx) in self.index.iter_mut() {
            if let Some(v) = &row[*c] {
                idx.entry(v.clone()).or_default().push(id);
            }
        }
        self.rows.insert(id, row);
    }

    fn remove(&mut self, id: u64) -> Option<Row> {
        let row = self.rows.remove(&id)?;
        for (c, idx) in self.index.iter_mut() {
            if let Some(ids) = row[*c].as_ref().and_then(|v| idx.get_mut(v)) {
                ids.retain(|x| *x != id);
            }
        }
        Some(row)
    }

    fn set(&mut self, id: u64, col: &str, value: Option<String>) {
        let c = self
            .col(col)
            .unwrap_or_else(|| panic!("{} has no column {col}", self.name));
        let mut row = self
            .remove(id)
            .unwrap_or_else(|| panic!("no {} {id}", self.name));
        row[c] = value;
        self.insert(id, row);
    }
}

struct Db {
    tables: BTreeMap<&'static str, Table>,
    next_txn: u64,
    next_deleted: u64,
    /// Ids matching a keyset query's other conditions, by the query with its
    /// keyset bound blanked out; cleared on every write. Lets each page of a
    /// 100,000-row table count `totalResults` without a full scan.
    matches: Mutex<HashMap<String, Arc<Vec<u64>>>>,
}

impl Db {
    fn changed(&mut self) {
        self.matches.get_mut().unwrap().clear();
    }
}

// ============================================================================
// Generator
// ============================================================================

const CURRENCIES: &[(&str, &str)] = &[
    ("US Dollar", "USD"),
    ("Euro", "EUR"),
    ("British pound", "GBP"),
    ("Canadian Dollar", "CAD"),
];
const SUBSIDIARIES: &[&str] = &["Parent Company", "Acme US", "Acme EU", "Acme UK"];
const REGIONS: &[&str] = &["EMEA", "AMER", "APAC"];
/// The values of the `customlist_tier` custom list.
pub const TIERS: &[&str] = &["Enterprise", "Mid-Market", "SMB"];

fn fmt_dt(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn now_local(offset_minutes: i32) -> NaiveDateTime {
    let t = Utc::now().naive_utc() + TimeDelta::minutes(offset_minutes as i64);
    t.with_nanosecond_zero()
}

trait NoNanos {
    fn with_nanosecond_zero(self) -> Self;
}
impl NoNanos for NaiveDateTime {
    fn with_nanosecond_zero(self) -> Self {
        chrono::Timelike::with_nanosecond(&self, 0).unwrap()
    }
}

fn money(rng: &mut StdRng, min_cents: i64, max_cents: i64) -> Decimal {
    Decimal::new(rng.random_range(min_cents..max_cents), 2)
}

struct TxnSpec {
    id: u64,
    ty: &'static str,
    entity: u64,
    trandate: NaiveDate,
    duedate: Option<NaiveDate>,
    currency: u64,
    total: Decimal,
    unpaid: Decimal,
    status: &'static str,
    voided: bool,
    dispute: bool,
    modified: NaiveDateTime,
}

fn txn_row(t: &Table, s: TxnSpec) -> Row {
    let mut row: Row = vec![None; t.cols.len()];
    let mut set = |c: &str, v: Option<String>| row[t.col(c).unwrap()] = v;
    let tf = |b: bool| Some(if b { "T" } else { "F" }.to_string());
    set("id", Some(s.id.to_string()));
    set("type", Some(s.ty.into()));
    let prefix = match s.ty {
        "CustInvc" => "INV",
        "CustPymt" => "PYMT",
        _ => "CM",
    };
    set("tranid", Some(format!("{prefix}{:06}", s.id)));
    set("entity", Some(s.entity.to_string()));
    set("trandate", Some(fmt_date(s.trandate)));
    set("duedate", s.duedate.map(fmt_date));
    set("currency", Some(s.currency.to_string()));
    set("foreigntotal", Some(s.total.normalize().to_string()));
    set(
        "foreignamountunpaid",
        (s.ty == "CustInvc").then(|| s.unpaid.normalize().to_string()),
    );
    set("status", Some(s.status.into()));
    set("voided", tf(s.voided));
    set("custbody_dispute", tf(s.dispute));
    set("lastmodifieddate", Some(fmt_dt(s.modified)));
    row
}

fn generate(cfg: &MockConfig) -> Db {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = NaiveDate::from_ymd_opt(2022, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let span_secs = (now_local(cfg.utc_offset_minutes) - TimeDelta::days(2) - start).num_seconds();
    let when = |rng: &mut StdRng| start + TimeDelta::seconds(rng.random_range(0..span_secs));

    let mut currency = Table::new(
        "currency",
        &[("id", Ty::Int), ("name", Ty::Text), ("symbol", Ty::Text)],
        &[],
    );
    for (i, (name, sym)) in CURRENCIES.iter().enumerate() {
        let id = i as u64 + 1;
        currency.insert(
            id,
            vec![
                Some(id.to_string()),
                Some(name.to_string()),
                Some(sym.to_string()),
            ],
        );
    }
    let mut subsidiary = Table::new("subsidiary", &[("id", Ty::Int), ("name", Ty::Text)], &[]);
    for (i, name) in SUBSIDIARIES.iter().enumerate() {
        let id = i as u64 + 1;
        subsidiary.insert(id, vec![Some(id.to_string()), Some(name.to_string())]);
    }

    let ic: &str = &cfg.intercompany_column;
    // A custom list, read by id or (BUILTIN.DF) by its display text.
    let mut tiers = Table::new(
        "customlist_tier",
        &[("id", Ty::Int), ("name", Ty::Text)],
        &[],
    );
    for (i, name) in TIERS.iter().enumerate() {
        let id = i as u64 + 1;
        tiers.insert(id, vec![Some(id.to_string()), Some(name.to_string())]);
    }
    let mut customer_cols = vec![
        ("id", Ty::Int),
        ("entityid", Ty::Text),
        ("companyname", Ty::Text),
        ("firstname", Ty::Text),
        ("lastname", Ty::Text),
        ("isperson", Ty::Bool),
        ("email", Ty::Text),
        ("currency", Ty::Ref("currency")),
        ("balancesearch", Ty::Money),
        ("isinactive", Ty::Bool),
    ];
    if cfg.oneworld {
        customer_cols.push((ic, Ty::Ref("subsidiary")));
    }
    customer_cols.extend([
        ("datecreated", Ty::DateTime),
        ("lastmodifieddate", Ty::DateTime),
        ("custentity_region", Ty::Text),
        ("custentity_segment", Ty::Text),
        ("custentity_tier", Ty::Ref("customlist_tier")),
    ]);
    let mut customer = Table::new("customer", &customer_cols, &[]);
    let mut rel = Table::new(
        "customersubsidiaryrelationship",
        &[
            ("id", Ty::Int),
            ("entity", Ty::Int),
            ("subsidiary", Ty::Ref("subsidiary")),
            ("isprimarysub", Ty::Bool),
        ],
        &["entity"],
    );
    let mut customer_ids = Vec::with_capacity(cfg.customers);
    let mut next_id = 0u64;
    let mut rel_id = 0u64;
    for n in 0..cfg.customers {
        next_id += rng.random_range(1..4);
        let id = next_id;
        customer_ids.push(id);
        let person = rng.random_bool(0.3);
        let created = when(&mut rng);
        let modified = created + TimeDelta::seconds(rng.random_range(0..90 * 86_400));
        let modified = modified.min(now_local(cfg.utc_offset_minutes) - TimeDelta::days(1));
        let tf = |b: bool| Some(if b { "T" } else { "F" }.to_string());
        let mut row: Row = vec![None; customer.cols.len()];
        let mut set = |c: &str, v: Option<String>| row[customer.col(c).unwrap()] = v;
        set("id", Some(id.to_string()));
        set("entityid", Some(format!("CUST{id:05}")));
        if person {
            set("firstname", Some(format!("First{n}")));
            set("lastname", Some(format!("Last{n}")));
        } else {
            set("companyname", Some(format!("Company {n} Ltd")));
        }
        set("isperson", tf(person));
        set(
            "email",
            rng.random_bool(0.85)
                .then(|| format!("billing{id}@example.com")),
        );
        set(
            "currency",
            Some(rng.random_range(1..=CURRENCIES.len() as u64).to_string()),
        );
        set(
            "balancesearch",
            Some(money(&mut rng, -50_000, 2_000_000).normalize().to_string()),
        );
        set("isinactive", tf(rng.random_bool(0.08)));
        let representing = rng
            .random_bool(0.04)
            .then(|| rng.random_range(2..=4u64).to_string());
        if cfg.oneworld {
            set(ic, representing);
        }
        set("datecreated", Some(fmt_dt(created)));
        set("lastmodifieddate", Some(fmt_dt(modified)));
        set(
            "custentity_region",
            rng.random_bool(0.9).then(|| REGIONS[n % 3].to_string()),
        );
        set(
            "custentity_segment",
            Some(if n % 10 == 0 { "Test" } else { "Retail" }.to_string()),
        );
        set("custentity_tier", Some((n % TIERS.len() + 1).to_string()));
        customer.insert(id, row);
        let primary = rng.random_range(1..=SUBSIDIARIES.len() as u64);
        rel_id += 1;
        rel.insert(
            rel_id,
            vec![
                Some(rel_id.to_string()),
                Some(id.to_string()),
                Some(primary.to_string()),
                tf(true),
            ],
        );
        if rng.random_bool(0.2) {
            rel_id += 1;
            let other = primary % SUBSIDIARIES.len() as u64 + 1;
            rel.insert(
                rel_id,
                vec![
                    Some(rel_id.to_string()),
                    Some(id.to_string()),
                    Some(other.to_string()),
                    tf(false),
                ],
            );
        }
    }

    let mut transaction = Table::new(
        "transaction",
        &[
            ("id", Ty::Int),
            ("type", Ty::Text),
            ("tranid", Ty::Text),
            ("entity", Ty::Int),
            ("trandate", Ty::Date),
            ("duedate", Ty::Date),
            ("currency", Ty::Ref("currency")),
            ("foreigntotal", Ty::Money),
            ("foreignamountunpaid", Ty::Money),
            ("status", Ty::Text),
            ("voided", Ty::Bool),
            ("custbody_dispute", Ty::Bool),
            ("lastmodifieddate", Ty::DateTime),
        ],
        &[],
    );
    let mut txn_id = 0u64;
    let kinds = std::iter::repeat_n("CustInvc", cfg.invoices)
        .chain(std::iter::repeat_n("CustPymt", cfg.payments))
        .chain(std::iter::repeat_n("CustCred", cfg.credit_memos));
    for ty in kinds {
        txn_id += rng.random_range(1..3);
        let entity = if customer_ids.is_empty() {
            1
        } else {
            customer_ids[rng.random_range(0..customer_ids.len())]
        };
        let trandate = when(&mut rng);
        let modified = (trandate + TimeDelta::seconds(rng.random_range(0..60 * 86_400)))
            .min(now_local(cfg.utc_offset_minutes) - TimeDelta::days(1));
        let total = money(&mut rng, 1_000, 5_000_000);
        let (status, unpaid, voided, total) = match ty {
            "CustInvc" => match rng.random_range(0..100) {
                0..=59 => {
                    let unpaid = if rng.random_bool(0.3) {
                        (total / Decimal::from(2)).round_dp(2)
                    } else {
                        total
                    };
                    ("A", unpaid, false, total)
                }
                60..=94 => ("B", Decimal::ZERO, false, total),
                _ => ("V", Decimal::ZERO, true, total),
            },
            "CustPymt" => ("C", Decimal::ZERO, false, total),
            _ => ("B", Decimal::ZERO, false, -total),
        };
        let row = txn_row(
            &transaction,
            TxnSpec {
                id: txn_id,
                ty,
                entity,
                trandate: trandate.date(),
                duedate: (ty == "CustInvc" && rng.random_bool(0.9))
                    .then(|| trandate.date() + TimeDelta::days(30)),
                currency: rng.random_range(1..=CURRENCIES.len() as u64),
                total,
                unpaid,
                status,
                voided,
                dispute: ty == "CustInvc" && rng.random_bool(0.03),
                modified,
            },
        );
        transaction.insert(txn_id, row);
    }

    let deleted = Table::new(
        "deletedrecord",
        &[
            ("id", Ty::Int),
            ("recordid", Ty::Int),
            ("type", Ty::Text),
            ("deleteddate", Ty::DateTime),
            ("name", Ty::Text),
        ],
        &[],
    );
    let mut tables = BTreeMap::new();
    for t in [currency, subsidiary, customer, tiers, transaction, deleted] {
        tables.insert(t.name, t);
    }
    if cfg.oneworld {
        tables.insert(rel.name, rel);
    }
    Db {
        tables,
        next_txn: txn_id,
        next_deleted: 0,
        matches: Mutex::new(HashMap::new()),
    }
}

// ============================================================================
// HTTP
// ============================================================================

struct MockState {
    cfg: MockConfig,
    db: Mutex<Db>,
    faults: Mutex<VecDeque<Fault>>,
    nonces: Mutex<HashSet<String>>,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    overload: Mutex<Overload>,
    stats: Mutex<MockStats>,
    queries: Mutex<VecDeque<String>>,
    /// The token was revoked: every request gets INVALID_LOGIN.
    revoked: std::sync::atomic::AtomicBool,
}

struct InFlight<'a>(&'a MockState);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// NetSuite's REST error envelope.
fn ns_error(status: u16, code: &str, detail: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let body = json!({
        "type": "https://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "o:errorDetails": [{"detail": detail, "o:errorCode": code}],
    });
    (
        status,
        [(
            "content-type",
            "application/vnd.oracle.resource+json; type=error",
        )],
        body.to_string(),
    )
        .into_response()
}

const INVALID_LOGIN: &str = "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI at Setup > Users/Roles > User Management > View Login Audit Trail.";

fn invalid_query(detail: &str) -> Response {
    ns_error(
        400,
        "INVALID_PARAMETER",
        &format!("Invalid search query. Detailed unprocessed description follows. {detail}"),
    )
}

async fn not_found(uri: Uri) -> Response {
    ns_error(
        404,
        "NONEXISTENT_ID",
        &format!("Invalid URL {}", uri.path()),
    )
}

async fn suiteql(
    State(st): State<Arc<MockState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.stats.lock().unwrap().requests += 1;
    let now_in_flight = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&st);
    {
        let mut s = st.stats.lock().unwrap();
        s.max_in_flight = s.max_in_flight.max(now_in_flight);
    }
    if !st.cfg.latency.is_zero() {
        tokio::time::sleep(st.cfg.latency).await;
    }
    let response = handle(&st, now_in_flight, method, uri, headers, body).await;
    let mut s = st.stats.lock().unwrap();
    match response.status().as_u16() {
        200 => s.ok += 1,
        401 => s.unauthorized += 1,
        429 => s.rate_limited += 1,
        500..=599 => s.server_errors += 1,
        _ => s.bad_requests += 1,
    }
    response
}

async fn handle(
    st: &MockState,
    in_flight: usize,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if in_flight > st.limit.load(Ordering::SeqCst) {
        return match *st.overload.lock().unwrap() {
            Overload::TooManyRequests => ns_error(
                429,
                "CONCURRENCY_LIMIT_EXCEEDED",
                "Concurrent request limit exceeded. Request blocked.",
            ),
            Overload::InvalidLogin => ns_error(401, "INVALID_LOGIN", INVALID_LOGIN),
        };
    }
    if st.revoked.load(Ordering::SeqCst) {
        st.stats.lock().unwrap().last_auth_failure = Some("token revoked".into());
        return ns_error(401, "INVALID_LOGIN", INVALID_LOGIN);
    }
    if let Err(why) = verify_oauth(st, &method, &uri, &headers) {
        st.stats.lock().unwrap().last_auth_failure = Some(why);
        return ns_error(401, "INVALID_LOGIN", INVALID_LOGIN);
    }
    let fault = st.faults.lock().unwrap().pop_front();
    match &fault {
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut r = ns_error(
                429,
                "CONCURRENCY_LIMIT_EXCEEDED",
                "Concurrent request limit exceeded. Request blocked.",
            );
            if let Some(s) = retry_after {
                r.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from_str(&s.to_string()).unwrap(),
                );
            }
            return r;
        }
        Some(Fault::InvalidLoginOverload) => return ns_error(401, "INVALID_LOGIN", INVALID_LOGIN),
        Some(Fault::ServerError(code)) => {
            return ns_error(
                *code,
                "UNEXPECTED_ERROR",
                "An unexpected error occurred. Error ID: mock",
            )
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Before(hook)) => (hook.0)(),
        Some(Fault::EchoHeaders { status, json }) => {
            let echoed: String = headers
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
                .collect();
            if *json {
                return ns_error(
                    *status,
                    "INVALID_REQUEST",
                    &format!("Invalid request. Received headers:\n{echoed}"),
                );
            }
            return (
                StatusCode::from_u16(*status).unwrap(),
                [("content-type", "text/plain")],
                format!("upstream error\n{echoed}"),
            )
                .into_response();
        }
        _ => {}
    }
    if !headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("transient"))
    {
        return ns_error(
            400,
            "INVALID_HEADER",
            "SuiteQL requests require the header Prefer: transient.",
        );
    }
    // Collection paging parameters.
    let params = query_pairs(uri.query().unwrap_or(""));
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let limit = match param("limit").map(|v| v.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return ns_error(
                400,
                "INVALID_PARAMETER",
                "Invalid value for the parameter 'limit'. Provide a value between 1 and 1000.",
            )
        }
    };
    let offset = match param("offset").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n % limit == 0 && n < 100_000 => n,
        Some(Ok(n)) if n >= 100_000 => {
            return ns_error(400, "INVALID_PARAMETER", "The maximum number of results for a SuiteQL query is 100000. Use a more specific query.")
        }
        Some(_) => {
            return ns_error(400, "INVALID_PARAMETER", "Invalid value for the parameter 'offset'. The offset must be a multiple of the limit.")
        }
    };
    let q = match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("q").and_then(Value::as_str).map(str::to_string))
    {
        Some(q) => q,
        None => {
            return ns_error(
                400,
                "INVALID_CONTENT",
                "The request body must be a JSON object with a string member q.",
            )
        }
    };
    {
        let mut qs = st.queries.lock().unwrap();
        qs.push_back(q.clone());
        if qs.len() > 50 {
            qs.pop_front();
        }
    }
    if q.len() > st.cfg.max_query_len {
        return invalid_query("Search error occurred: the query is too long.");
    }
    let result = {
        let db = st.db.lock().unwrap();
        execute(&db, &q, limit, offset)
    };
    let mut rs = match result {
        Ok(r) => r,
        Err(detail) => return invalid_query(&detail),
    };
    if matches!(fault, Some(Fault::MalformedRow)) {
        if let Some(first) = rs.rows.first_mut() {
            for (name, v) in rs.names.iter().zip(first.iter_mut()) {
                match name.as_str() {
                    "lastmodified" => *v = Some("31/02/2024 25:61".into()),
                    "foreigntotal" | "balancesearch" => *v = Some("12,5O".into()),
                    _ => {}
                }
            }
        }
    }
    // Nothing past row 100,000 is ever returned.
    let total = rs.total;
    let reachable = total.min(100_000);
    let count = rs.rows.len();
    let has_more = offset + count < reachable;
    let self_href = format!("{}?limit={limit}&offset={offset}", uri.path());
    let mut links = vec![json!({"rel": "self", "href": self_href})];
    if has_more {
        links.push(json!({"rel": "next", "href": format!("{}?limit={limit}&offset={}", uri.path(), offset + limit)}));
    }
    // Written by hand: building a serde_json::Value per row is the slowest
    // part of a 100,000-row test in an unoptimised test build.
    let mut body = format!(
        r#"{{"links":{},"count":{count},"hasMore":{has_more},"items":["#,
        Value::Array(links)
    );
    for (i, row) in rs.rows.iter().enumerate() {
        body.push_str(if i == 0 {
            r#"{"links":[]"#
        } else {
            r#",{"links":[]"#
        });
        for (name, v) in rs.names.iter().zip(row) {
            if let Some(v) = v {
                body.push_str(",\"");
                body.push_str(name);
                body.push_str("\":");
                body.push_str(&serde_json::to_string(v).unwrap());
            }
        }
        body.push('}');
    }
    body.push_str(&format!(r#"],"offset":{offset},"totalResults":{total}}}"#));
    if matches!(fault, Some(Fault::ResetMidBody)) {
        let cut = body.len() / 2;
        let first = Bytes::from(body[..cut].to_string());
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(first),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset mid-body",
            )),
        ];
        return (
            StatusCode::OK,
            [(
                "content-type",
                "application/vnd.oracle.resource+json; type=collection",
            )],
            axum::body::Body::from_stream(futures::stream::iter(chunks)),
        )
            .into_response();
    }
    if matches!(fault, Some(Fault::TruncatedBody)) {
        let cut = body.len() / 2;
        return (
            StatusCode::OK,
            [(
                "content-type",
                "application/vnd.oracle.resource+json; type=collection",
            )],
            body[..cut].to_string(),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/vnd.oracle.resource+json; type=collection",
        )],
        body,
    )
        .into_response()
}

// ---- OAuth 1.0a verification (independent of the connector's signer) ----

const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

fn dec(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(&k.replace('+', " ")), dec(&v.replace('+', " ")))
        })
        .collect()
}

fn verify_oauth(
    st: &MockState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), String> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let rest = header.strip_prefix("OAuth ").ok_or("not an OAuth header")?;
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("malformed header parameter")?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or("unquoted header value")?;
        if params.insert(dec(k), dec(v)).is_some() {
            return Err(format!("duplicate parameter {k}"));
        }
    }
    let get = |k: &str| params.get(k).cloned().ok_or(format!("missing {k}"));
    let c = &st.cfg.credentials;
    let expected_realm = st.cfg.account_id.to_ascii_uppercase().replace('-', "_");
    if get("realm")? != expected_realm {
        return Err("wrong realm".into());
    }
    if get("oauth_consumer_key")? != c.consumer_key || get("oauth_token")? != c.token_id {
        return Err("unknown consumer key or token".into());
    }
    if get("oauth_signature_method")? != "HMAC-SHA256" {
        return Err("signature method is not HMAC-SHA256".into());
    }
    if params.get("oauth_version").is_some_and(|v| v != "1.0") {
        return Err("oauth_version is not 1.0".into());
    }
    let ts: i64 = get("oauth_timestamp")?
        .parse()
        .map_err(|_| "bad timestamp")?;
    if (Utc::now().timestamp() - ts).abs() > 300 {
        return Err("stale timestamp".into());
    }
    let nonce = get("oauth_nonce")?;
    if nonce.len() < 6 {
        return Err("nonce too short".into());
    }
    // Base string from what actually arrived.
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Host")?;
    let base_uri = format!("http://{}{}", host.to_ascii_lowercase(), uri.path());
    let mut pairs: Vec<(String, String)> = query_pairs(uri.query().unwrap_or(""))
        .into_iter()
        .chain(
            params
                .iter()
                .filter(|(k, _)| *k != "realm" && *k != "oauth_signature")
                .map(|(k, v)| (k.clone(), v.clone())),
        )
        .map(|(k, v)| (enc(&k), enc(&v)))
        .collect();
    pairs.sort();
    let normalized: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let base = format!(
        "{}&{}&{}",
        method.as_str(),
        enc(&base_uri),
        enc(&normalized.join("&"))
    );
    let key = format!("{}&{}", enc(&c.consumer_secret), enc(&c.token_secret));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(base.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if get("oauth_signature")? != expected {
        return Err("signature mismatch".into());
    }
    // A nonce counts as used only once the signature is valid.
    if !st.nonces.lock().unwrap().insert(format!("{ts}:{nonce}")) {
        return Err("nonce reused".into());
    }
    Ok(())
}

// ============================================================================
// A small SuiteQL interpreter for the shapes the connector sends
// ============================================================================

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].to_string()));
        } else if c.is_ascii_digit() {
            let st = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Num(s[st..i].to_string()));
        } else if c == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                if i >= b.len() {
                    return Err("Search error occurred: unterminated string literal.".into());
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        v.push('\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                let ch = s[i..].chars().next().unwrap();
                v.push(ch);
                i += ch.len_utf8();
            }
            out.push(Tok::Str(v));
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            let sym = match two {
                ">=" => Some(">="),
                "<=" => Some("<="),
                "<>" => Some("<>"),
                "!=" => Some("!="),
                _ => None,
            };
            if let Some(sym) = sym {
                out.push(Tok::Sym(sym));
                i += 2;
                continue;
            }
            let sym = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '.' => ".",
                '=' => "=",
                '>' => ">",
                '<' => "<",
                _ => {
                    return Err(format!(
                        "Search error occurred: unexpected character '{c}'."
                    ))
                }
            };
            out.push(Tok::Sym(sym));
            i += 1;
        }
    }
    Ok(out)
}

#[derive(Clone, Debug)]
enum Expr {
    Col(Option<String>, String),
    Func(String, Vec<Expr>),
    Str(String),
    Num(String),
}

#[derive(Clone, Debug)]
enum Cond {
    Cmp(Expr, &'static str, Expr),
    In(Expr, Vec<Expr>),
}

struct Join {
    table: String,
    alias: String,
    on: Vec<Cond>,
}

struct SelectStmt {
    items: Vec<(Expr, Option<String>)>,
    from: (String, String),
    joins: Vec<Join>,
    conds: Vec<Cond>,
    order: Option<Expr>,
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

const KEYWORDS: &[&str] = &[
    "select", "from", "left", "join", "on", "where", "and", "order", "by", "as", "in", "asc",
];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(&kw.to_uppercase()))
        }
    }
    fn eat_sym(&mut self, sym: &str) -> bool {
        let yes = matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn expect_sym(&mut self, sym: &str) -> Result<(), String> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.unexpected(sym))
        }
    }
    fn unexpected(&self, wanted: &str) -> String {
        format!(
            "Search error occurred: expected {wanted} but found {} (mock SuiteQL supports only the connector's query shapes).",
            match self.peek() {
                Some(t) => format!("{t:?}"),
                None => "end of query".into(),
            }
        )
    }
    fn ident(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Ident(s)) if !KEYWORDS.contains(&s.to_ascii_lowercase().as_str()) => {
                let s = s.to_ascii_lowercase();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected("an identifier")),
        }
    }
    fn expr(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Num(n))
            }
            Some(Tok::Ident(_)) => {
                let first = self.ident()?;
                let (qual, name) = if self.eat_sym(".") {
                    (Some(first), self.ident()?)
                } else {
                    (None, first)
                };
                if self.eat_sym("(") {
                    let fname = match &qual {
                        Some(q) => format!("{q}.{name}"),
                        None => name,
                    }
                    .to_ascii_uppercase();
                    let mut args = vec![self.expr()?];
                    while self.eat_sym(",") {
                        args.push(self.expr()?);
                    }
                    self.expect_sym(")")?;
                    Ok(Expr::Func(fname, args))
                } else {
                    Ok(Expr::Col(qual, name))
                }
            }
            _ => Err(self.unexpected("an expression")),
        }
    }
    fn cond(&mut self) -> Result<Cond, String> {
        let left = self.expr()?;
        if self.eat_kw("in") {
            self.expect_sym("(")?;
            let mut list = vec![self.expr()?];
            while self.eat_sym(",") {
                list.push(self.expr()?);
            }
            self.expect_sym(")")?;
            return Ok(Cond::In(left, list));
        }
        let op = match self.peek() {
            Some(Tok::Sym(s @ ("=" | ">" | ">=" | "<" | "<=" | "<>" | "!="))) => *s,
            _ => return Err(self.unexpected("a comparison")),
        };
        self.pos += 1;
        Ok(Cond::Cmp(left, op, self.expr()?))
    }
    fn conds(&mut self) -> Result<Vec<Cond>, String> {
        let mut v = vec![self.cond()?];
        while self.eat_kw("and") {
            v.push(self.cond()?);
        }
        Ok(v)
    }
    fn select(&mut self) -> Result<SelectStmt, String> {
        self.expect_kw("select")?;
        let mut items = Vec::new();
        loop {
            let e = self.expr()?;
            let alias = if self.eat_kw("as") {
                Some(self.ident()?)
            } else {
                None
            };
            items.push((e, alias));
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_kw("from")?;
        let table = self.ident()?;
        let alias = if matches!(self.peek(), Some(Tok::Ident(s)) if !KEYWORDS.contains(&s.to_ascii_lowercase().as_str()))
        {
            self.ident()?
        } else {
            table.clone()
        };
        let mut joins = Vec::new();
        while self.eat_kw("left") {
            self.expect_kw("join")?;
            let t = self.ident()?;
            let a = self.ident()?;
            self.expect_kw("on")?;
            joins.push(Join {
                table: t,
                alias: a,
                on: self.conds()?,
            });
        }
        let conds = if self.eat_kw("where") {
            self.conds()?
        } else {
            Vec::new()
        };
        let order = if self.eat_kw("order") {
            self.expect_kw("by")?;
            let e = self.expr()?;
            self.eat_kw("asc");
            Some(e)
        } else {
            None
        };
        if self.peek().is_some() {
            return Err(self.unexpected("end of query"));
        }
        Ok(SelectStmt {
            items,
            from: (table, alias),
            joins,
            conds,
            order,
        })
    }
}

// ---- compilation and evaluation ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Num,
    Date,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum DateFmt {
    DateTime,
    Date,
}

fn date_fmt(s: &str) -> Option<DateFmt> {
    match s {
        "YYYY-MM-DD HH24:MI:SS" => Some(DateFmt::DateTime),
        "YYYY-MM-DD" => Some(DateFmt::Date),
        _ => None,
    }
}

enum CExpr {
    Col { a: usize, c: usize, ty: Ty },
    Df(Box<CExpr>),
    ToChar(Box<CExpr>, DateFmt),
    Lower(Box<CExpr>),
    Lit(String, Kind),
}

impl CExpr {
    fn kind(&self) -> Kind {
        match self {
            CExpr::Col { ty, .. } => match ty {
                Ty::Int | Ty::Money | Ty::Ref(_) => Kind::Num,
                Ty::Date | Ty::DateTime => Kind::Date,
                Ty::Text | Ty::Bool => Kind::Text,
            },
            CExpr::Lit(_, k) => *k,
            _ => Kind::Text,
        }
    }
    fn aliases(&self, out: &mut Vec<usize>) {
        match self {
            CExpr::Col { a, .. } => out.push(*a),
            CExpr::Df(e) | CExpr::ToChar(e, _) | CExpr::Lower(e) => e.aliases(out),
            CExpr::Lit(..) => {}
        }
    }
}

enum CCond {
    Cmp(CExpr, &'static str, CExpr, Kind),
    In(CExpr, Vec<String>, Kind),
}

impl CCond {
    fn max_alias(&self) -> usize {
        let mut v = Vec::new();
        match self {
            CCond::Cmp(l, _, r, _) => {
                l.aliases(&mut v);
                r.aliases(&mut v);
            }
            CCond::In(e, _, _) => e.aliases(&mut v),
        }
        v.into_iter().max().unwrap_or(0)
    }
}

struct Compiled<'a> {
    tables: Vec<&'a Table>,
    items: Vec<(CExpr, String)>,
    /// Per join: (index column on the joined table, key expression, extra conditions).
    joins: Vec<(usize, CExpr, Vec<CCond>)>,
    pre: Vec<CCond>,
    post: Vec<CCond>,
    order: Option<CExpr>,
}

struct Compiler<'a> {
    db: &'a Db,
    aliases: Vec<(String, &'a Table)>,
}

impl<'a> Compiler<'a> {
    fn table(&self, name: &str) -> Result<&'a Table, String> {
        self.db
            .tables
            .get(name)
            .ok_or_else(|| format!("Search error occurred: Record '{name}' was not found."))
    }
    fn expr(&self, e: &Expr) -> Result<CExpr, String> {
        Ok(match e {
            Expr::Col(qual, name) => {
                let a = match qual {
                    Some(q) => self
                        .aliases
                        .iter()
                        .position(|(n, _)| n == q)
                        .ok_or_else(|| {
                            format!("Search error occurred: Unknown identifier '{q}'.")
                        })?,
                    None if self.aliases.len() == 1 => 0,
                    None => {
                        return Err(format!("Search error occurred: Ambiguous column '{name}'."))
                    }
                };
                let t = self.aliases[a].1;
                let c = t.col(name).ok_or_else(|| {
                    format!(
                        "Search error occurred: Field '{name}' for record '{}' was not found. Reason: NOT_EXPOSED - Not available for channel SEARCH",
                        t.name
                    )
                })?;
                CExpr::Col {
                    a,
                    c,
                    ty: t.cols[c].1,
                }
            }
            Expr::Str(s) => CExpr::Lit(s.clone(), Kind::Text),
            Expr::Num(n) => CExpr::Lit(n.clone(), Kind::Num),
            Expr::Func(f, args) => match (f.as_str(), args.as_slice()) {
                ("BUILTIN.DF", [arg @ Expr::Col(..)]) => CExpr::Df(Box::new(self.expr(arg)?)),
                ("LOWER", [arg @ Expr::Col(..)]) => CExpr::Lower(Box::new(self.expr(arg)?)),
                ("TO_CHAR", [arg @ Expr::Col(..), Expr::Str(fmt)]) => {
                    let inner = self.expr(arg)?;
                    if inner.kind() != Kind::Date {
                        return Err("Search error occurred: TO_CHAR with a date format on a non-date field.".into());
                    }
                    let fmt = date_fmt(fmt).ok_or_else(|| {
                        format!("Search error occurred: unsupported date format '{fmt}' (mock).")
                    })?;
                    CExpr::ToChar(Box::new(inner), fmt)
                }
                ("TO_DATE", [Expr::Str(v), Expr::Str(fmt)]) => {
                    let canon = match date_fmt(fmt) {
                        Some(DateFmt::DateTime) => NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S").ok().map(fmt_dt),
                        Some(DateFmt::Date) => NaiveDate::parse_from_str(v, "%Y-%m-%d").ok().map(|d| format!("{} 00:00:00", fmt_date(d))),
                        None => None,
                    }
                    .ok_or_else(|| format!("Search error occurred: ORA-01861: literal does not match format string ('{v}', '{fmt}')."))?;
                    CExpr::Lit(canon, Kind::Date)
                }
                _ => {
                    return Err(format!(
                        "Search error occurred: unsupported function call {f} (mock)."
                    ))
                }
            },
        })
    }
    fn cond(&self, c: &Cond) -> Result<CCond, String> {
        match c {
            Cond::Cmp(l, op, r) => {
                let (l, r) = (self.expr(l)?, self.expr(r)?);
                let kind = match (l.kind(), r.kind()) {
                    (a, b) if a == b => a,
                    (Kind::Num, Kind::Text) | (Kind::Text, Kind::Num) => Kind::Num,
                    _ => return Err("Search error occurred: inconsistent datatypes (compare dates with TO_DATE).".into()),
                };
                Ok(CCond::Cmp(l, op, r, kind))
            }
            Cond::In(e, list) => {
                if list.len() > 1000 {
                    return Err("Search error occurred: ORA-01795: maximum number of expressions in a list is 1000.".into());
                }
                let e = self.expr(e)?;
                let kind = e.kind();
                let mut vals = Vec::new();
                for item in list {
                    match self.expr(item)? {
                        CExpr::Lit(v, k) if k == kind || (kind == Kind::Num && k == Kind::Text) => {
                            vals.push(if kind == Kind::Num { norm_num(&v).ok_or("Search error occurred: invalid number.")? } else { v })
                        }
                        _ => return Err("Search error occurred: IN lists take literals of the column's type (mock).".into()),
                    }
                }
                Ok(CCond::In(e, vals, kind))
            }
        }
    }
}

fn norm_num(s: &str) -> Option<String> {
    Decimal::from_str(s.trim())
        .ok()
        .map(|d| d.normalize().to_string())
}

fn compile<'a>(db: &'a Db, stmt: &SelectStmt) -> Result<Compiled<'a>, String> {
    let mut cx = Compiler {
        db,
        aliases: Vec::new(),
    };
    let from = cx.table(&stmt.from.0)?;
    cx.aliases.push((stmt.from.1.clone(), from));
    let mut joins = Vec::new();
    for j in &stmt.joins {
        let t = cx.table(&j.table)?;
        cx.aliases.push((j.alias.clone(), t));
        let me = cx.aliases.len() - 1;
        let mut key = None;
        let mut rest = Vec::new();
        for c in &j.on {
            let cc = cx.cond(c)?;
            match cc {
                CCond::Cmp(CExpr::Col { a: la, c: lc, .. }, "=", r @ CExpr::Col { .. }, _)
                    if la == me && key.is_none() =>
                {
                    key = Some((lc, r));
                }
                CCond::Cmp(l @ CExpr::Col { .. }, "=", CExpr::Col { a: ra, c: rc, .. }, _)
                    if ra == me && key.is_none() =>
                {
                    key = Some((rc, l));
                }
                other => rest.push(other),
            }
        }
        let (col, key_expr) = key
            .ok_or("Search error occurred: join needs an equality on the joined record (mock).")?;
        if t.cols[col].0 != "id" && !t.index.contains_key(&col) {
            return Err(format!(
                "Search error occurred: mock cannot join {} on {}.",
                t.name, t.cols[col].0
            ));
        }
        joins.push((col, key_expr, rest));
    }
    let mut items = Vec::new();
    for (n, (e, alias)) in stmt.items.iter().enumerate() {
        let name = match (alias, e) {
            (Some(a), _) => a.clone(),
            (None, Expr::Col(_, c)) => c.clone(),
            (None, _) => format!("expr{}", n + 1),
        };
        items.push((cx.expr(e)?, name));
    }
    let mut pre = Vec::new();
    let mut post = Vec::new();
    for c in &stmt.conds {
        let cc = cx.cond(c)?;
        if cc.max_alias() == 0 {
            pre.push(cc);
        } else {
            post.push(cc);
        }
    }
    let order = stmt.order.as_ref().map(|e| cx.expr(e)).transpose()?;
    Ok(Compiled {
        tables: cx.aliases.iter().map(|(_, t)| *t).collect(),
        items,
        joins,
        pre,
        post,
        order,
    })
}

type Combo<'a> = Vec<Option<&'a Row>>;

fn eval<'a>(db: &'a Db, e: &'a CExpr, rows: &[Option<&'a Row>]) -> Option<Cow<'a, str>> {
    match e {
        CExpr::Col { a, c, .. } => rows[*a].and_then(|r| r[*c].as_deref()).map(Cow::Borrowed),
        CExpr::Lit(v, _) => Some(Cow::Borrowed(v)),
        CExpr::Lower(inner) => eval(db, inner, rows).map(|v| Cow::Owned(v.to_lowercase())),
        CExpr::ToChar(inner, fmt) => eval(db, inner, rows).map(|v| {
            let full = if v.len() == 10 {
                format!("{v} 00:00:00")
            } else {
                v.into_owned()
            };
            Cow::Owned(match fmt {
                DateFmt::DateTime => full,
                DateFmt::Date => full[..10].to_string(),
            })
        }),
        CExpr::Df(inner) => {
            let v = eval(db, inner, rows)?;
            match **inner {
                CExpr::Col { ty: Ty::Ref(t), .. } => {
                    let table = &db.tables[t];
                    let row = table.rows.get(&v.parse::<u64>().ok()?)?;
                    row[table.col("name")?].as_deref().map(Cow::Borrowed)
                }
                _ => Some(v),
            }
        }
    }
}

fn cmp_values(kind: Kind, l: &str, r: &str) -> Option<std::cmp::Ordering> {
    match kind {
        Kind::Num => match (l.parse::<i64>(), r.parse::<i64>()) {
            (Ok(a), Ok(b)) => Some(a.cmp(&b)),
            _ => Some(Decimal::from_str(l).ok()?.cmp(&Decimal::from_str(r).ok()?)),
        },
        Kind::Date => {
            let n = |s: &str| {
                if s.len() == 10 {
                    format!("{s} 00:00:00")
                } else {
                    s.to_string()
                }
            };
            Some(n(l).cmp(&n(r)))
        }
        Kind::Text => Some(l.cmp(r)),
    }
}

fn test_cond<'a>(db: &'a Db, c: &'a CCond, rows: &[Option<&'a Row>]) -> bool {
    use std::cmp::Ordering::*;
    match c {
        CCond::Cmp(l, op, r, kind) => {
            let o = match (l, r, kind) {
                // Fast path: a column against a literal of the same text
                // form (text, or a datetime in canonical form).
                (CExpr::Col { a, c, .. }, CExpr::Lit(lit, _), Kind::Text | Kind::Date) => {
                    let Some(v) = rows[*a].and_then(|row| row[*c].as_deref()) else {
                        return false;
                    };
                    if v.len() == lit.len() {
                        v.cmp(lit.as_str())
                    } else {
                        let Some(o) = cmp_values(*kind, v, lit) else {
                            return false;
                        };
                        o
                    }
                }
                _ => {
                    let (Some(lv), Some(rv)) = (eval(db, l, rows), eval(db, r, rows)) else {
                        return false;
                    };
                    let Some(o) = cmp_values(*kind, &lv, &rv) else {
                        return false;
                    };
                    o
                }
            };
            match *op {
                "=" => o == Equal,
                ">" => o == Greater,
                ">=" => o != Less,
                "<" => o == Less,
                "<=" => o != Greater,
                _ => o != Equal,
            }
        }
        CCond::In(e, vals, kind) => {
            let Some(v) = eval(db, e, rows) else {
                return false;
            };
            match kind {
                Kind::Num => norm_num(&v).is_some_and(|n| vals.contains(&n)),
                _ => vals.iter().any(|x| x == v.as_ref()),
            }
        }
    }
}

/// Formats a stored value the way SuiteQL returns it.
fn output_value(e: &CExpr, v: &str) -> String {
    match e {
        CExpr::Col { ty: Ty::Money, .. } => {
            // Oracle drops the leading zero: 0.5 → ".5".
            if let Some(rest) = v.strip_prefix("0.") {
                format!(".{rest}")
            } else if let Some(rest) = v.strip_prefix("-0.") {
                format!("-.{rest}")
            } else {
                v.to_string()
            }
        }
        // Raw dates come back in the user's date format, time dropped.
        CExpr::Col {
            ty: Ty::Date | Ty::DateTime,
            ..
        } => NaiveDate::parse_from_str(&v[..10.min(v.len())], "%Y-%m-%d")
            .map(|d| d.format("%-m/%-d/%Y").to_string())
            .unwrap_or_else(|_| v.to_string()),
        _ => v.to_string(),
    }
}

fn join<'a>(db: &'a Db, q: &'a Compiled<'a>, row: &'a Row) -> Vec<Combo<'a>> {
    let mut combos: Vec<Combo<'a>> = vec![vec![Some(row)]];
    for (j, (col, key, rest)) in q.joins.iter().enumerate() {
        let t = q.tables[j + 1];
        let mut next = Vec::new();
        for combo in combos {
            let mut matched = false;
            if let Some(k) = eval(db, key, &combo) {
                let candidates: Vec<&Row> = if t.cols[*col].0 == "id" {
                    k.parse::<u64>()
                        .ok()
                        .and_then(|id| t.rows.get(&id))
                        .into_iter()
                        .collect()
                } else {
                    t.index[col]
                        .get(k.as_ref())
                        .into_iter()
                        .flatten()
                        .filter_map(|id| t.rows.get(id))
                        .collect()
                };
                for cand in candidates {
                    let mut c2 = combo.clone();
                    c2.push(Some(cand));
                    if rest.iter().all(|c| test_cond(db, c, &c2)) {
                        next.push(c2);
                        matched = true;
                    }
                }
            }
            if !matched {
                let mut c2 = combo;
                c2.push(None);
                next.push(c2);
            }
        }
        combos = next;
    }
    combos
}

/// The query with the number of its `<alias>.id > N` keyset bound blanked.
fn keyset_key(toks: &[Tok]) -> String {
    let mut key = String::new();
    for (i, t) in toks.iter().enumerate() {
        let is_bound = matches!(t, Tok::Num(_))
            && i >= 3
            && matches!(&toks[i - 1], Tok::Sym(">" | ">="))
            && matches!(&toks[i - 2], Tok::Ident(c) if c.eq_ignore_ascii_case("id"))
            && toks[i - 3] == Tok::Sym(".");
        if is_bound {
            key.push_str("<bound> ");
        } else {
            key.push_str(&format!("{t:?} "));
        }
    }
    key
}

/// `SELECT MIN(x.c) AS a, MAX(x.c) AS b, COUNT(x.c) AS n FROM ... [WHERE
/// ...]`: one row of numeric aggregates over the matching rows (what the
/// connector asks to split a first sync into id ranges); `None` for a query
/// without aggregates. Mixing aggregates and plain columns is refused, as
/// SuiteQL does without GROUP BY.
fn aggregate(db: &Db, stmt: &SelectStmt) -> Result<Option<ResultSet>, String> {
    let is_agg =
        |e: &Expr| matches!(e, Expr::Func(f, _) if matches!(f.as_str(), "MIN" | "MAX" | "COUNT"));
    let n = stmt.items.iter().filter(|(e, _)| is_agg(e)).count();
    if n == 0 {
        return Ok(None);
    }
    if n != stmt.items.len() {
        return Err("Search error occurred: ORA-00937: not a single-group group function.".into());
    }
    let mut funcs = Vec::new();
    let mut inner = Vec::new();
    let mut names = Vec::new();
    for (i, (e, alias)) in stmt.items.iter().enumerate() {
        let Expr::Func(f, args) = e else {
            unreachable!()
        };
        let [arg @ Expr::Col(..)] = args.as_slice() else {
            return Err(format!(
                "Search error occurred: {f} takes one column (mock)."
            ));
        };
        funcs.push(f.clone());
        inner.push((arg.clone(), None));
        names.push(alias.clone().unwrap_or_else(|| format!("expr{}", i + 1)));
    }
    let plain = SelectStmt {
        items: inner,
        from: stmt.from.clone(),
        joins: Vec::new(),
        conds: stmt.conds.clone(),
        order: None,
    };
    if !stmt.joins.is_empty() {
        return Err(
            "Search error occurred: aggregates over joins are not supported (mock).".into(),
        );
    }
    let q = compile(db, &plain)?;
    let main = q.tables[0];
    let mut acc: Vec<(Option<i64>, Option<i64>, u64)> = vec![(None, None, 0); funcs.len()];
    for row in main.rows.values() {
        let single = [Some(row)];
        if !q
            .pre
            .iter()
            .chain(q.post.iter())
            .all(|c| test_cond(db, c, &single))
        {
            continue;
        }
        for (i, (e, _)) in q.items.iter().enumerate() {
            let Some(v) = eval(db, e, &single) else {
                continue;
            };
            let a = &mut acc[i];
            a.2 += 1;
            if let Ok(x) = v.parse::<i64>() {
                a.0 = Some(a.0.map_or(x, |m| m.min(x)));
                a.1 = Some(a.1.map_or(x, |m| m.max(x)));
            }
        }
    }
    let row = funcs
        .iter()
        .zip(&acc)
        .map(|(f, (lo, hi, n))| match f.as_str() {
            "MIN" => lo.map(|v| v.to_string()),
            "MAX" => hi.map(|v| v.to_string()),
            _ => Some(n.to_string()),
        })
        .collect();
    Ok(Some(ResultSet {
        names,
        rows: vec![row],
        total: 1,
    }))
}

/// A query result: column names, the rows of the requested window (NULL as
/// `None`) and the number of matching rows.
struct ResultSet {
    names: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    total: usize,
}

fn execute(db: &Db, sql: &str, limit: usize, offset: usize) -> Result<ResultSet, String> {
    let toks = tokenize(sql)?;
    let stmt = Parser {
        toks: toks.clone(),
        pos: 0,
    }
    .select()?;
    if let Some(rs) = aggregate(db, &stmt)? {
        return Ok(rs);
    }
    let mut q = compile(db, &stmt)?;
    let main = q.tables[0];
    let id_col = main.col("id");
    // Keyset: ORDER BY <main>.id with <main>.id > N walks the primary key
    // from N on, so that condition needs no evaluation per row.
    let by_pk = matches!(q.order, Some(CExpr::Col { a: 0, c, .. }) if Some(c) == id_col);
    let mut lower = 0;
    if by_pk {
        if let Some(pos) = q.pre.iter().position(|c| {
            matches!(c, CCond::Cmp(CExpr::Col { a: 0, c, .. }, ">" | ">=", CExpr::Lit(v, _), _)
                if Some(*c) == id_col && v.parse::<u64>().is_ok())
        }) {
            if let CCond::Cmp(_, op, CExpr::Lit(v, _), _) = q.pre.remove(pos) {
                let n: u64 = v.parse().unwrap();
                lower = if op == ">" { n.saturating_add(1) } else { n };
            }
        }
    }
    let q = &q;
    let project = |combo: &Combo<'_>| -> Vec<Option<String>> {
        q.items
            .iter()
            .map(|(e, _)| eval(db, e, combo).map(|v| output_value(e, &v)))
            .collect()
    };

    let mut out = Vec::new();
    let mut total = 0usize;
    if by_pk && q.post.is_empty() {
        let key = keyset_key(&toks);
        let cached = db.matches.lock().unwrap().get(&key).cloned();
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let ids: Vec<u64> = main
                    .rows
                    .iter()
                    .filter(|(_, row)| q.pre.iter().all(|c| test_cond(db, c, &[Some(*row)])))
                    .map(|(id, _)| *id)
                    .collect();
                let ids = Arc::new(ids);
                db.matches.lock().unwrap().insert(key, Arc::clone(&ids));
                ids
            }
        };
        let start = ids.partition_point(|id| *id < lower);
        total = ids.len() - start;
        for id in ids[start..].iter().skip(offset).take(limit) {
            // Left joins never drop rows and add at most one per row here.
            let row = &main.rows[id];
            for combo in join(db, q, row) {
                if out.len() < limit {
                    out.push(project(&combo));
                }
            }
        }
    } else if by_pk {
        for (_, row) in main.rows.range(lower..) {
            let single = [Some(row)];
            if !q.pre.iter().all(|c| test_cond(db, c, &single)) {
                continue;
            }
            let in_window = total < offset + limit;
            if q.post.is_empty() && !in_window {
                // Left joins never drop rows; count without joining.
                total += 1;
                continue;
            }
            for combo in join(db, q, row) {
                if q.post.iter().all(|c| test_cond(db, c, &combo)) {
                    total += 1;
                    if total > offset && out.len() < limit {
                        out.push(project(&combo));
                    }
                }
            }
        }
    } else {
        let mut all: Vec<Combo<'_>> = Vec::new();
        for row in main.rows.values() {
            let single = [Some(row)];
            if q.pre.iter().all(|c| test_cond(db, c, &single)) {
                all.extend(
                    join(db, q, row)
                        .into_iter()
                        .filter(|combo| q.post.iter().all(|c| test_cond(db, c, combo))),
                );
            }
        }
        if let Some(order) = &q.order {
            let kind = order.kind();
            all.sort_by(|a, b| {
                let (x, y) = (eval(db, order, a), eval(db, order, b));
                match (x, y) {
                    (Some(x), Some(y)) => {
                        cmp_values(kind, &x, &y).unwrap_or(std::cmp::Ordering::Equal)
                    }
                    (x, y) => x.is_some().cmp(&y.is_some()),
                }
            });
        }
        total = all.len();
        out = all.iter().skip(offset).take(limit).map(project).collect();
    }
    Ok(ResultSet {
        names: q.items.iter().map(|(_, n)| n.clone()).collect(),
        rows: out,
        total,
    })
}
