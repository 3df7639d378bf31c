//! Mock QuickBooks Online for the connector tests: an in-process Accounting
//! API and OAuth 2.0 token endpoint (axum on 127.0.0.1:0) that answer the way
//! Intuit's servers do.
//!
//! It owns: the realm-scoped query endpoint
//! (`GET|POST /v3/company/{realmId}/query`) with its own interpreter of the
//! query grammar (`SELECT * | count(*) FROM Entity [WHERE a AND b]
//! [ORDERBY p [ASC|DESC]] [STARTPOSITION n] [MAXRESULTS m]`: no OR, `Id` only
//! with `=`/`IN`, `\'` escapes, MAXRESULTS ≤ 1000 with default 100,
//! inactive customers hidden unless the query names `Active`), the
//! change-data-capture endpoint (`/cdc?entities=&changedSince=`, at most
//! 1,000 objects, deleted objects after active ones with `status: "Deleted"`,
//! windows older than 30 days refused), Intuit's envelopes (`QueryResponse`
//! with `startPosition`/`maxResults`, `{"QueryResponse":{}}` when empty,
//! `Fault` with `Error[]` and the gateway's lower-case `fault`), XML when the
//! request does not ask for JSON, bearer access tokens checked by the shared
//! mock token server ([`MockTokenServer`] with Intuit's rotation policy:
//! `refresh_token` grant, HTTP Basic client authentication, a new refresh
//! token about once a day, superseded ones refused after their grace), the
//! gateway's 401/403 for refused tokens and foreign realms, throttling
//! (requests per window and concurrency per realm, 429 without
//! `Retry-After`, measured), injectable faults, and a seeded data generator.
//!
//! It must not share code with the connector beyond the public model types,
//! or it could not catch the connector's mistakes.
//!
//! Modelling assumptions where Intuit publishes nothing: ties in ORDERBY are
//! broken by Id; transactions of all types share one Id sequence (the UI's
//! `txnId`); CDC's `changedSince` is inclusive; the refusal of an old CDC
//! window is an HTTP 400 `ValidationFault`; a query without ORDERBY returns
//! rows by Id.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::oauth_mock::{MockTokenServer, TokenPolicy};

// ============================================================================
// Public handle
// ============================================================================

#[derive(Clone, Debug)]
pub struct MockConfig {
    pub seed: u64,
    pub customers: usize,
    pub invoices: usize,
    pub payments: usize,
    pub credit_memos: usize,
    pub realm_id: String,
    /// The offset QuickBooks stamps `MetaData` times with, minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// Throttling: at most this many API requests per realm in any `window`.
    pub requests_per_window: usize,
    pub window: Duration,
    /// Concurrent API requests allowed per realm.
    pub concurrency_limit: usize,
    /// The token server's behaviour (Intuit's by default).
    pub token_policy: TokenPolicy,
    /// Number of invoices that share one `LastUpdatedTime` (a bulk import).
    pub tie_cluster: usize,
    /// Objects per CDC answer.
    pub cdc_cap: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: 11,
            customers: 300,
            invoices: 900,
            payments: 600,
            credit_memos: 200,
            realm_id: "9341452148364720".into(),
            utc_offset_minutes: -8 * 60,
            requests_per_window: 500,
            window: Duration::from_secs(60),
            concurrency_limit: 10,
            token_policy: TokenPolicy::intuit(),
            tie_cluster: 0,
            cdc_cap: 1000,
        }
    }
}

/// One injected fault, applied to the next API request (token requests have
/// their own queue).
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with Intuit's throttle body.
    Throttle,
    /// A 5xx with a `Fault` body.
    ServerError(u16),
    /// A `SystemFault` inside an HTTP 200 answer.
    SystemFaultIn200,
    /// Delay the (otherwise normal) answer.
    Slow(Duration),
    /// A 200 whose JSON body is cut in half.
    TruncatedBody,
    /// The first object of the answer carries unreadable money and dates.
    MalformedRecord,
    /// The gateway's 401 for an access token it no longer accepts.
    Unauthorized,
    /// Before answering, a user edits these invoices (their
    /// `LastUpdatedTime` becomes now): data changing between pages.
    TouchInvoices(Vec<String>),
}

#[derive(Clone, Debug, Default)]
pub struct MockStats {
    pub requests: u64,
    pub ok: u64,
    pub unauthorized: u64,
    pub throttled: u64,
    pub server_errors: u64,
    pub bad_requests: u64,
    pub faults_in_200: u64,
    pub queries: u64,
    pub count_queries: u64,
    pub cdc_requests: u64,
    pub xml_answers: u64,
    pub max_in_flight: usize,
    /// Most requests seen in any span of `window` (sliding).
    pub max_in_window: usize,
    pub minor_versions: Vec<String>,
    pub last_auth_failure: Option<String>,
}

pub const INVOICE: &str = "Invoice";
pub const PAYMENT: &str = "Payment";
pub const CREDIT_MEMO: &str = "CreditMemo";

#[derive(Clone, Debug, PartialEq)]
pub struct MCustomer {
    pub id: u64,
    pub display_name: String,
    pub company_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub email: Option<String>,
    pub currency: String,
    pub balance: Decimal,
    pub active: bool,
    pub parent: Option<u64>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub sync_token: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MTxn {
    pub id: u64,
    pub kind: &'static str,
    pub customer: u64,
    pub doc_number: Option<String>,
    pub txn_date: NaiveDate,
    pub due_date: Option<NaiveDate>,
    pub currency: String,
    pub total: Decimal,
    /// Invoice: amount still due. Credit memo: remaining credit. Payment:
    /// unapplied amount.
    pub balance: Decimal,
    pub private_note: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub sync_token: u32,
}

/// A copy of the mock's data, to compare a synced store against.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub customers: BTreeMap<u64, MCustomer>,
    pub txns: BTreeMap<u64, MTxn>,
}

impl Snapshot {
    pub fn of_kind(&self, kind: &str) -> impl Iterator<Item = &MTxn> + '_ {
        let kind = kind.to_string();
        self.txns.values().filter(move |t| t.kind == kind)
    }
}

pub struct MockQbo {
    addr: SocketAddr,
    /// The OAuth 2.0 token server whose access tokens the API accepts.
    pub tokens: Arc<MockTokenServer>,
    state: Arc<MockState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockQbo {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockQbo {
    pub async fn start(cfg: MockConfig) -> MockQbo {
        let db = generate(&cfg);
        let tokens = Arc::new(MockTokenServer::start(cfg.token_policy.clone()).await);
        let state = Arc::new(MockState {
            tokens: Arc::clone(&tokens),
            cfg,
            db: Mutex::new(db),
            faults: Mutex::new(VecDeque::new()),
            clock_offset: Mutex::new(TimeDelta::zero()),
            in_flight: AtomicUsize::new(0),
            recent: Mutex::new(VecDeque::new()),
            stats: Mutex::new(MockStats::default()),
            queries: Mutex::new(VecDeque::new()),
        });
        let app = Router::new()
            .route("/v3/company/{realm}/query", get(query_get).post(query_post))
            .route("/v3/company/{realm}/cdc", get(cdc))
            .fallback(not_found)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockQbo {
            addr,
            tokens,
            state,
            server,
        }
    }

    /// The API base URL (what `api_base_url` overrides).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint URL (what `oauth.token_url` overrides).
    pub fn token_url(&self) -> String {
        self.tokens.token_url()
    }

    pub fn config(&self) -> &MockConfig {
        &self.state.cfg
    }

    pub fn stats(&self) -> MockStats {
        self.state.stats.lock().unwrap().clone()
    }

    pub fn reset_stats(&self) {
        *self.state.stats.lock().unwrap() = MockStats::default();
        self.state.recent.lock().unwrap().clear();
    }

    /// The last queries and CDC requests received (at most 100), newest last.
    pub fn recent_queries(&self) -> Vec<String> {
        self.state.queries.lock().unwrap().iter().cloned().collect()
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }

    pub fn pending_faults(&self) -> usize {
        self.state.faults.lock().unwrap().len()
    }

    /// The server's clock (real time plus [`advance_clock`](Self::advance_clock)).
    pub fn now(&self) -> DateTime<Utc> {
        self.state.now()
    }

    /// A `MetaData` stamp: now, in whole seconds like QuickBooks'.
    fn stamp(&self) -> DateTime<Utc> {
        self.state.stamp()
    }

    /// Moves the server's clock forward (token expiry, CDC windows, stamps).
    pub fn advance_clock(&self, by: Duration) {
        *self.state.clock_offset.lock().unwrap() += TimeDelta::from_std(by).unwrap();
    }

    /// Issues a refresh token as the authorization flow would (what an
    /// operator hands to `erpsync connect`).
    pub fn authorize(&self) -> String {
        self.tokens.issue_refresh_token()
    }

    /// Every access token issued so far stops working.
    pub fn expire_access_tokens(&self) {
        self.tokens.expire_access_tokens();
    }

    pub fn snapshot(&self) -> Snapshot {
        let db = self.state.db.lock().unwrap();
        Snapshot {
            customers: db.customers.clone(),
            txns: db.txns.clone(),
        }
    }

    /// A user edit of a customer: `f` changes it, `LastUpdatedTime` = now.
    pub fn update_customer(&self, id: u64, f: impl FnOnce(&mut MCustomer)) {
        let now = self.stamp();
        let mut db = self.state.db.lock().unwrap();
        let c = db.customers.get_mut(&id).expect("no such customer");
        f(c);
        c.updated = now;
        c.sync_token += 1;
    }

    /// A user edit of a transaction: `f` changes it, `LastUpdatedTime` = now.
    pub fn update_txn(&self, id: u64, f: impl FnOnce(&mut MTxn)) {
        let now = self.stamp();
        let mut db = self.state.db.lock().unwrap();
        let t = db.txns.get_mut(&id).expect("no such transaction");
        f(t);
        t.updated = now;
        t.sync_token += 1;
    }

    /// Hard-deletes a transaction; CDC reports it for 30 days.
    pub fn delete_txn(&self, id: u64) {
        let now = self.stamp();
        let mut db = self.state.db.lock().unwrap();
        let t = db.txns.remove(&id).expect("no such transaction");
        db.deleted.push(Deleted {
            kind: t.kind,
            id,
            at: now,
        });
    }

    /// Adds an open invoice for `customer`, created now.
    pub fn insert_invoice(&self, customer: u64, total: &str) -> u64 {
        let now = self.stamp();
        let mut db = self.state.db.lock().unwrap();
        db.next_txn += 1;
        let id = db.next_txn;
        let total = Decimal::from_str(total).unwrap();
        let currency = db.customers[&customer].currency.clone();
        db.txns.insert(
            id,
            MTxn {
                id,
                kind: INVOICE,
                customer,
                doc_number: Some(format!("{}", 10_000 + id)),
                txn_date: self.local(now).date_naive(),
                due_date: Some(self.local(now).date_naive() + TimeDelta::days(30)),
                currency,
                total,
                balance: total,
                private_note: None,
                created: now,
                updated: now,
                sync_token: 0,
            },
        );
        id
    }

    fn local(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        t.with_timezone(&self.state.offset())
    }

    /// Ids of transactions of one kind.
    pub fn txn_ids(&self, kind: &str) -> Vec<u64> {
        let db = self.state.db.lock().unwrap();
        db.txns
            .values()
            .filter(|t| t.kind == kind)
            .map(|t| t.id)
            .collect()
    }
}

// ============================================================================
// Data
// ============================================================================

struct Deleted {
    kind: &'static str,
    id: u64,
    at: DateTime<Utc>,
}

struct Db {
    customers: BTreeMap<u64, MCustomer>,
    txns: BTreeMap<u64, MTxn>,
    deleted: Vec<Deleted>,
    next_txn: u64,
}

const CURRENCIES: &[(&str, &str)] = &[
    ("USD", "United States Dollar"),
    ("EUR", "Euro"),
    ("GBP", "British Pound Sterling"),
    ("CAD", "Canadian Dollar"),
];

fn currency_name(code: &str) -> &'static str {
    CURRENCIES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or("Unknown")
}

fn money(rng: &mut StdRng, min_cents: i64, max_cents: i64) -> Decimal {
    Decimal::new(rng.random_range(min_cents..max_cents), 2)
}

fn generate(cfg: &MockConfig) -> Db {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let now = Utc::now();
    let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap();
    // History spans two years; nothing is newer than two days ago, so tests
    // that change data "now" are the only recent changes.
    let start = now - TimeDelta::days(730);
    let span = (TimeDelta::days(728)).num_seconds();
    let when = |rng: &mut StdRng| start + TimeDelta::seconds(rng.random_range(0..span));
    let mut customers = BTreeMap::new();
    let mut ids = Vec::new();
    for n in 0..cfg.customers {
        let id = n as u64 + 1;
        let person = rng.random_bool(0.3);
        let created = when(&mut rng);
        let updated = (created + TimeDelta::seconds(rng.random_range(0..90 * 86_400)))
            .min(now - TimeDelta::days(2));
        // About one customer in ten is a job (sub-customer) of an earlier one.
        let parent = (n > 10 && rng.random_bool(0.1)).then(|| ids[rng.random_range(0..ids.len())]);
        let (company, given, family, display) = if person {
            let g = format!("Given{n}");
            let f = format!("Family{n}");
            (None, Some(g.clone()), Some(f.clone()), format!("{g} {f}"))
        } else {
            let c = match n % 7 {
                // Names with characters that need escaping in queries.
                0 => format!("O'Brien & Sons {n}"),
                _ => format!("Company {n} LLC"),
            };
            (Some(c.clone()), None, None, c)
        };
        let display = match parent {
            Some(_) => format!("Job {n}"),
            None => display,
        };
        customers.insert(
            id,
            MCustomer {
                id,
                display_name: display,
                company_name: company,
                given_name: given,
                family_name: family,
                email: rng
                    .random_bool(0.85)
                    .then(|| format!("billing{id}@example.com")),
                currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())].0.into(),
                balance: money(&mut rng, -20_000, 2_000_000),
                active: !rng.random_bool(0.08),
                parent,
                created,
                updated,
                sync_token: rng.random_range(0..5),
            },
        );
        ids.push(id);
    }
    let mut txns = BTreeMap::new();
    let mut txn_id = 100u64;
    let kinds = std::iter::repeat_n(INVOICE, cfg.invoices)
        .chain(std::iter::repeat_n(PAYMENT, cfg.payments))
        .chain(std::iter::repeat_n(CREDIT_MEMO, cfg.credit_memos));
    let tie_at = now - TimeDelta::days(20);
    let mut tied = 0;
    for kind in kinds {
        txn_id += rng.random_range(1..3);
        let customer = ids[rng.random_range(0..ids.len())];
        let created = when(&mut rng);
        let mut updated = (created + TimeDelta::seconds(rng.random_range(0..60 * 86_400)))
            .min(now - TimeDelta::days(2));
        if kind == INVOICE && tied < cfg.tie_cluster {
            updated = tie_at;
            tied += 1;
        }
        let total = money(&mut rng, 1_000, 5_000_000);
        let txn_date = created.with_timezone(&offset(cfg)).date_naive();
        let (balance, note, total) = match kind {
            INVOICE => match rng.random_range(0..100) {
                0..=54 => {
                    let due = if rng.random_bool(0.3) {
                        (total / Decimal::from(2)).round_dp(2)
                    } else {
                        total
                    };
                    (due, None, total)
                }
                55..=94 => (Decimal::ZERO, None, total),
                // Voided: QuickBooks zeroes the amounts and notes it.
                _ => (Decimal::ZERO, Some("Voided".to_string()), Decimal::ZERO),
            },
            PAYMENT => (
                if rng.random_bool(0.2) {
                    (total / Decimal::from(4)).round_dp(2)
                } else {
                    Decimal::ZERO
                },
                None,
                total,
            ),
            _ => (
                if rng.random_bool(0.5) {
                    total
                } else {
                    Decimal::ZERO
                },
                None,
                total,
            ),
        };
        txns.insert(
            txn_id,
            MTxn {
                id: txn_id,
                kind,
                customer,
                doc_number: (kind != PAYMENT || rng.random_bool(0.5))
                    .then(|| format!("{}", 1000 + txn_id)),
                txn_date,
                due_date: (kind == INVOICE).then(|| txn_date + TimeDelta::days(30)),
                currency: customers[&customer].currency.clone(),
                total,
                balance,
                private_note: note,
                created,
                updated,
                sync_token: rng.random_range(0..3),
            },
        );
    }
    Db {
        customers,
        txns,
        deleted: Vec::new(),
        next_txn: txn_id,
    }
}

fn offset(cfg: &MockConfig) -> FixedOffset {
    FixedOffset::east_opt(cfg.utc_offset_minutes * 60).unwrap()
}

// ============================================================================
// Rendering (JSON and XML)
// ============================================================================

fn fmt_ts(t: DateTime<Utc>, off: FixedOffset) -> String {
    t.with_timezone(&off)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn num(d: Decimal) -> Value {
    // JSON numbers, as Intuit sends them (e.g. 362.07).
    json!(d.to_f64().unwrap())
}

fn meta(created: DateTime<Utc>, updated: DateTime<Utc>, off: FixedOffset) -> Value {
    json!({"CreateTime": fmt_ts(created, off), "LastUpdatedTime": fmt_ts(updated, off)})
}

fn customer_json(c: &MCustomer, db: &Db, off: FixedOffset) -> Value {
    let mut o = Map::new();
    o.insert("Taxable".into(), json!(false));
    o.insert("Job".into(), json!(c.parent.is_some()));
    o.insert("BillWithParent".into(), json!(false));
    o.insert("Balance".into(), num(c.balance));
    o.insert("BalanceWithJobs".into(), num(c.balance));
    o.insert(
        "CurrencyRef".into(),
        json!({"value": c.currency, "name": currency_name(&c.currency)}),
    );
    o.insert("PreferredDeliveryMethod".into(), json!("Print"));
    o.insert("IsProject".into(), json!(false));
    o.insert("domain".into(), json!("QBO"));
    o.insert("sparse".into(), json!(false));
    o.insert("Id".into(), json!(c.id.to_string()));
    o.insert("SyncToken".into(), json!(c.sync_token.to_string()));
    o.insert("MetaData".into(), meta(c.created, c.updated, off));
    if let Some(g) = &c.given_name {
        o.insert("GivenName".into(), json!(g));
    }
    if let Some(f) = &c.family_name {
        o.insert("FamilyName".into(), json!(f));
    }
    let fq = match c.parent {
        Some(p) => format!(
            "{}:{}",
            db.customers
                .get(&p)
                .map(|p| p.display_name.as_str())
                .unwrap_or("?"),
            c.display_name
        ),
        None => c.display_name.clone(),
    };
    o.insert("FullyQualifiedName".into(), json!(fq));
    if let Some(co) = &c.company_name {
        o.insert("CompanyName".into(), json!(co));
    }
    o.insert("DisplayName".into(), json!(c.display_name));
    o.insert("PrintOnCheckName".into(), json!(c.display_name));
    o.insert("Active".into(), json!(c.active));
    if let Some(p) = c.parent {
        o.insert("ParentRef".into(), json!({"value": p.to_string()}));
        o.insert("Level".into(), json!(1));
    }
    if let Some(e) = &c.email {
        o.insert("PrimaryEmailAddr".into(), json!({"Address": e}));
    }
    Value::Object(o)
}

fn txn_json(t: &MTxn, db: &Db, off: FixedOffset) -> Value {
    let cust_name = db
        .customers
        .get(&t.customer)
        .map(|c| c.display_name.clone())
        .unwrap_or_default();
    let mut o = Map::new();
    o.insert("domain".into(), json!("QBO"));
    o.insert("sparse".into(), json!(false));
    o.insert("Id".into(), json!(t.id.to_string()));
    o.insert("SyncToken".into(), json!(t.sync_token.to_string()));
    o.insert("MetaData".into(), meta(t.created, t.updated, off));
    if let Some(d) = &t.doc_number {
        o.insert("DocNumber".into(), json!(d));
    }
    o.insert(
        "TxnDate".into(),
        json!(t.txn_date.format("%Y-%m-%d").to_string()),
    );
    o.insert(
        "CurrencyRef".into(),
        json!({"value": t.currency, "name": currency_name(&t.currency)}),
    );
    o.insert(
        "CustomerRef".into(),
        json!({"value": t.customer.to_string(), "name": cust_name}),
    );
    o.insert("TotalAmt".into(), num(t.total));
    if let Some(n) = &t.private_note {
        o.insert("PrivateNote".into(), json!(n));
    }
    match t.kind {
        INVOICE => {
            if let Some(d) = t.due_date {
                o.insert("DueDate".into(), json!(d.format("%Y-%m-%d").to_string()));
            }
            o.insert("Balance".into(), num(t.balance));
            o.insert("EmailStatus".into(), json!("NotSet"));
            o.insert("LinkedTxn".into(), json!([]));
            o.insert(
                "Line".into(),
                json!([{"Id": "1", "LineNum": 1, "Amount": num(t.total), "DetailType": "SalesItemLineDetail",
                        "SalesItemLineDetail": {"ItemRef": {"value": "1", "name": "Services"}}},
                       {"Amount": num(t.total), "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}}]),
            );
        }
        PAYMENT => {
            o.insert("UnappliedAmt".into(), num(t.balance));
            o.insert("ProcessPayment".into(), json!(false));
            o.insert("DepositToAccountRef".into(), json!({"value": "4"}));
            o.insert(
                "Line".into(),
                json!([{"Amount": num(t.total - t.balance), "LinkedTxn": []}]),
            );
        }
        _ => {
            o.insert("Balance".into(), num(t.balance));
            o.insert("RemainingCredit".into(), num(t.balance));
            o.insert(
                "Line".into(),
                json!([{"Id": "1", "LineNum": 1, "Amount": num(t.total), "DetailType": "SalesItemLineDetail",
                        "SalesItemLineDetail": {"ItemRef": {"value": "1", "name": "Services"}}}]),
            );
        }
    }
    Value::Object(o)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A small XML rendering of a JSON object: what a client that forgot
/// `Accept: application/json` gets.
fn to_xml(name: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in m {
                to_xml(k, v, out);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Array(a) => {
            for v in a {
                to_xml(name, v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => out.push_str(&format!("<{name}>{}</{name}>", xml_escape(s))),
        other => out.push_str(&format!("<{name}>{other}</{name}>")),
    }
}

// ============================================================================
// HTTP plumbing
// ============================================================================

struct MockState {
    cfg: MockConfig,
    tokens: Arc<MockTokenServer>,
    db: Mutex<Db>,
    faults: Mutex<VecDeque<Fault>>,
    clock_offset: Mutex<TimeDelta>,
    in_flight: AtomicUsize,
    /// Arrival times of recent API requests, for throttling and measuring.
    recent: Mutex<VecDeque<Instant>>,
    stats: Mutex<MockStats>,
    queries: Mutex<VecDeque<String>>,
}

impl MockState {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.clock_offset.lock().unwrap()
    }

    fn offset(&self) -> FixedOffset {
        offset(&self.cfg)
    }

    fn stamp(&self) -> DateTime<Utc> {
        let now = self.now();
        DateTime::from_timestamp(now.timestamp(), 0).unwrap()
    }

    fn time_field(&self) -> String {
        self.now()
            .with_timezone(&self.offset())
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string()
    }

    fn log_query(&self, q: String) {
        let mut qs = self.queries.lock().unwrap();
        qs.push_back(q);
        if qs.len() > 100 {
            qs.pop_front();
        }
    }
}

struct InFlight<'a>(&'a MockState);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [("content-type", "application/json;charset=UTF-8")],
        body,
    )
        .into_response()
}

/// Intuit's `Fault` envelope.
fn fault(
    st: &MockState,
    status: u16,
    ty: &str,
    code: &str,
    message: &str,
    detail: &str,
) -> Response {
    let body = json!({
        "Fault": {"Error": [{"Message": message, "Detail": detail, "code": code, "element": ""}], "type": ty},
        "time": st.time_field(),
    });
    json_response(StatusCode::from_u16(status).unwrap(), body.to_string())
}

/// The API gateway's lower-case envelope (401, 403).
fn gateway_fault(st: &MockState, status: u16, message: &str, detail: &str, code: &str) -> Response {
    let body = json!({
        "fault": {"error": [{"message": message, "detail": detail, "code": code}], "type": "AUTHENTICATION"},
        "time": st.time_field(),
    });
    json_response(StatusCode::from_u16(status).unwrap(), body.to_string())
}

fn parser_error(st: &MockState, detail: &str) -> Response {
    fault(
        st,
        400,
        "ValidationFault",
        "4000",
        "Error parsing query",
        &format!("QueryParserError: {detail}"),
    )
}

fn validation_error(st: &MockState, detail: &str) -> Response {
    fault(
        st,
        400,
        "ValidationFault",
        "4001",
        "Invalid query",
        &format!("QueryValidationError: {detail}"),
    )
}

fn throttled(st: &MockState) -> Response {
    fault(
        st,
        429,
        "SERVICE",
        "3001",
        "message=ThrottleExceeded; errorCode=003001; statusCode=429",
        "The request limit was reached.",
    )
}

async fn not_found(State(st): State<Arc<MockState>>, uri: Uri) -> Response {
    fault(
        &st,
        404,
        "ValidationFault",
        "4002",
        "Unsupported Operation",
        &format!("Operation {} is not supported.", uri.path()),
    )
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("application/json"))
}

/// Everything every API request goes through before its handler: counting,
/// throttling, concurrency, auth, minorversion, injected faults. Returns the
/// fault to apply to a successful answer, or the response to send instead.
async fn gate(
    st: &MockState,
    realm: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Fault>, Response> {
    let arrived = Instant::now();
    {
        let mut recent = st.recent.lock().unwrap();
        while recent
            .front()
            .is_some_and(|t| arrived.duration_since(*t) >= st.cfg.window)
        {
            recent.pop_front();
        }
        recent.push_back(arrived);
        let mut s = st.stats.lock().unwrap();
        s.max_in_window = s.max_in_window.max(recent.len());
        if recent.len() > st.cfg.requests_per_window {
            return Err(throttled(st));
        }
    }
    let now_in_flight = st.in_flight.load(Ordering::SeqCst);
    if now_in_flight > st.cfg.concurrency_limit {
        return Err(throttled(st));
    }
    // Bearer token, checked by the token server; refused with the
    // gateway's own envelope.
    if st.tokens.check_bearer(headers).is_err() {
        let why = if headers.contains_key("authorization") {
            "unknown or expired access token"
        } else {
            "no bearer token"
        };
        st.stats.lock().unwrap().last_auth_failure = Some(why.to_string());
        return Err(gateway_fault(
            st,
            401,
            "message=AuthenticationFailed; errorCode=003200; statusCode=401",
            "Token expired: [redacted]",
            "3200",
        ));
    }
    if realm != st.cfg.realm_id {
        st.stats.lock().unwrap().last_auth_failure = Some(format!("realm {realm}"));
        return Err(gateway_fault(
            st,
            403,
            "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
            "",
            "3100",
        ));
    }
    let params = query_pairs(uri.query().unwrap_or(""));
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "minorversion") {
        if v.parse::<u32>().is_err() {
            return Err(fault(
                st,
                400,
                "ValidationFault",
                "4001",
                "Invalid query",
                &format!("QueryValidationError: minorversion {v} is not a number"),
            ));
        }
        let mut s = st.stats.lock().unwrap();
        if !s.minor_versions.contains(v) {
            s.minor_versions.push(v.clone());
        }
    }
    let fault_now = st.faults.lock().unwrap().pop_front();
    match &fault_now {
        Some(Fault::Throttle) => return Err(throttled(st)),
        Some(Fault::ServerError(code)) => {
            return Err(fault(
                st,
                *code,
                "SystemFault",
                "10000",
                "An application error has occurred while processing your request",
                "System Failure Error: An unexpected error occurred while accessing or saving your data.",
            ))
        }
        Some(Fault::SystemFaultIn200) => {
            st.stats.lock().unwrap().faults_in_200 += 1;
            return Err(fault(
                st,
                200,
                "SystemFault",
                "10000",
                "An application error has occurred while processing your request",
                "System Failure Error: An unexpected error occurred while accessing or saving your data.",
            ));
        }
        Some(Fault::Unauthorized) => {
            return Err(gateway_fault(
                st,
                401,
                "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                "Token revocation: [redacted]",
                "3200",
            ))
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
        Some(Fault::TouchInvoices(ids)) => {
            let now = st.stamp();
            let mut db = st.db.lock().unwrap();
            for id in ids {
                if let Some(t) = db.txns.get_mut(&id.parse::<u64>().unwrap()) {
                    t.updated = now;
                    t.sync_token += 1;
                }
            }
        }
        _ => {}
    }
    Ok(fault_now)
}

async fn counted(st: &Arc<MockState>, f: impl std::future::Future<Output = Response>) -> Response {
    st.stats.lock().unwrap().requests += 1;
    let n = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(st);
    {
        let mut s = st.stats.lock().unwrap();
        s.max_in_flight = s.max_in_flight.max(n);
    }
    let r = f.await;
    let mut s = st.stats.lock().unwrap();
    match r.status().as_u16() {
        200 => s.ok += 1,
        401 | 403 => s.unauthorized += 1,
        429 => s.throttled += 1,
        500..=599 => s.server_errors += 1,
        _ => s.bad_requests += 1,
    }
    r
}

async fn query_get(
    State(st): State<Arc<MockState>>,
    Path(realm): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let params = query_pairs(uri.query().unwrap_or(""));
    let q = params
        .iter()
        .find(|(k, _)| k == "query")
        .map(|(_, v)| v.clone());
    counted(&st, async {
        let applied = match gate(&st, &realm, &uri, &headers).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        match q {
            Some(q) => run_query(&st, &q, applied, wants_json(&headers)),
            None => parser_error(
                &st,
                "Encountered \"<EOF>\" at line 0, column 0.\nWas expecting:\n    \"select\" ...",
            ),
        }
    })
    .await
}

async fn query_post(
    State(st): State<Arc<MockState>>,
    Path(realm): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    counted(&st, async {
        let applied = match gate(&st, &realm, &uri, &headers).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("application/text") {
            return fault(
                &st,
                415,
                "ValidationFault",
                "4000",
                "Unsupported Media Type",
                "A query in the request body needs Content-Type: application/text.",
            );
        }
        match std::str::from_utf8(&body) {
            Ok(q) => run_query(&st, q, applied, wants_json(&headers)),
            Err(_) => parser_error(&st, "Invalid content: the body is not UTF-8."),
        }
    })
    .await
}

fn finish(st: &MockState, body: Value, applied: Option<Fault>, json: bool) -> Response {
    if !json {
        st.stats.lock().unwrap().xml_answers += 1;
        let time = body["time"].as_str().unwrap_or_default().to_string();
        let mut inner = String::new();
        for (k, v) in body.as_object().unwrap() {
            if k != "time" {
                to_xml(k, v, &mut inner);
            }
        }
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<IntuitResponse xmlns=\"http://schema.intuit.com/finance/v3\" time=\"{time}\">{inner}</IntuitResponse>"
        );
        return (
            StatusCode::OK,
            [("content-type", "application/xml;charset=UTF-8")],
            xml,
        )
            .into_response();
    }
    let text = body.to_string();
    if matches!(applied, Some(Fault::TruncatedBody)) {
        let cut = text.len() / 2;
        return json_response(StatusCode::OK, text[..cut].to_string());
    }
    json_response(StatusCode::OK, text)
}

fn corrupt(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        for k in ["TotalAmt", "Balance"] {
            if o.contains_key(k) {
                o.insert(k.into(), json!("12,5O"));
            }
        }
        if let Some(m) = o.get_mut("MetaData") {
            m["LastUpdatedTime"] = json!("2024-02-31T25:61:00");
        }
        o.insert("TxnDate".into(), json!("31/02/2024"));
    }
}

// ============================================================================
// The query language
// ============================================================================

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Punct(&'static str),
}

fn lex(q: &str) -> Result<Vec<(Tok, usize)>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(format!(
                        "Lexical error at line 1, column {}. Encountered: <EOF> after : \"'{s}\"",
                        chars.len()
                    ))
                    }
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some(n) => s.push(*n),
                            None => {
                                return Err(format!(
                                    "Lexical error at line 1, column {}. Encountered: <EOF>",
                                    chars.len()
                                ))
                            }
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Str(s), col));
        } else if let Some(p) = ["<=", ">=", "!=", "(", ")", ",", "*", "=", "<", ">"]
            .into_iter()
            .find(|p| q[q.char_indices().nth(i).unwrap().0..].starts_with(p))
        {
            if p == "!=" {
                return Err(format!(
                    "Encountered \" \"!=\" \"!= \"\" at line 1, column {col}."
                ));
            }
            out.push((Tok::Punct(p), col));
            i += p.len();
        } else if c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '+') {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-' | ':' | '+'))
            {
                i += 1;
            }
            out.push((Tok::Word(chars[start..i].iter().collect()), col));
        } else {
            return Err(format!(
                "Invalid content. Lexical error at line 1, column {col}.  Encountered: \"{c}\" ({}), after : \"\"",
                c as u32
            ));
        }
    }
    Ok(out)
}

#[derive(Clone, Debug)]
enum Val {
    Str(String),
    Bool(bool),
    Num(String),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Str(s) | Val::Num(s) => s.clone(),
            Val::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Cmp(&'static str),
    In(Vec<Val>),
    Like(String),
}

#[derive(Clone, Debug)]
struct Cond {
    prop: Prop,
    op: Op,
    value: Option<Val>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prop {
    Id,
    Active,
    LastUpdated,
    Created,
    CustomerRef,
    TxnDate,
    DisplayName,
    DocNumber,
}

#[derive(Debug)]
struct Query {
    count: bool,
    entity: &'static str,
    conds: Vec<Cond>,
    order: Option<(Prop, bool)>,
    start: usize,
    max: usize,
}

enum QueryError {
    Parse(String),
    Invalid(String),
}

const ENTITIES: &[&str] = &["Customer", INVOICE, PAYMENT, CREDIT_MEMO];

fn prop_of(entity: &str, name: &str) -> Result<Prop, QueryError> {
    let n = name.to_ascii_lowercase();
    let p = match n.as_str() {
        "id" => Prop::Id,
        "metadata.lastupdatedtime" => Prop::LastUpdated,
        "metadata.createtime" => Prop::Created,
        "active" if entity == "Customer" => Prop::Active,
        "displayname" if entity == "Customer" => Prop::DisplayName,
        "customerref" if entity != "Customer" => Prop::CustomerRef,
        "txndate" if entity != "Customer" => Prop::TxnDate,
        "docnumber" if entity != "Customer" => Prop::DocNumber,
        _ => {
            return Err(QueryError::Invalid(format!(
                "property '{name}' is not queryable"
            )))
        }
    };
    Ok(p)
}

fn parse_query(q: &str) -> Result<Query, QueryError> {
    let toks = lex(q).map_err(QueryError::Parse)?;
    let mut i = 0;
    let word = |i: usize| match toks.get(i) {
        Some((Tok::Word(w), _)) => Some(w.to_ascii_lowercase()),
        _ => None,
    };
    let unexpected = |i: usize, expecting: &str| {
        let (what, col) = match toks.get(i) {
            Some((Tok::Word(w), c)) => (w.clone(), *c),
            Some((Tok::Str(s), c)) => (format!("'{s}'"), *c),
            Some((Tok::Punct(p), c)) => (p.to_string(), *c),
            None => ("<EOF>".to_string(), q.len()),
        };
        QueryError::Parse(format!(
            "Encountered \" \"{what}\" \"\" at line 1, column {col}.\nWas expecting:\n    {expecting} ..."
        ))
    };
    if word(i).as_deref() != Some("select") {
        return Err(unexpected(i, "\"select\""));
    }
    i += 1;
    let count = match (&toks.get(i), word(i)) {
        (Some((Tok::Punct("*"), _)), _) => {
            i += 1;
            false
        }
        (_, Some(w)) if w == "count" => {
            if toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Punct("("))
                || toks.get(i + 2).map(|t| &t.0) != Some(&Tok::Punct("*"))
                || toks.get(i + 3).map(|t| &t.0) != Some(&Tok::Punct(")"))
            {
                return Err(unexpected(i + 1, "\"(*)\""));
            }
            i += 4;
            true
        }
        _ => return Err(unexpected(i, "\"*\"")),
    };
    if word(i).as_deref() != Some("from") {
        return Err(unexpected(i, "\"from\""));
    }
    i += 1;
    let entity = match word(i) {
        Some(w) => match ENTITIES.iter().find(|e| e.eq_ignore_ascii_case(&w)) {
            Some(e) => *e,
            None => {
                return Err(QueryError::Invalid(format!(
                    "{} is not a queryable entity",
                    w
                )))
            }
        },
        None => return Err(unexpected(i, "<IDENTIFIER>")),
    };
    i += 1;
    let mut conds = Vec::new();
    if word(i).as_deref() == Some("where") {
        i += 1;
        loop {
            let name = match &toks.get(i) {
                Some((Tok::Word(w), _)) => w.clone(),
                _ => return Err(unexpected(i, "<IDENTIFIER>")),
            };
            let prop = prop_of(entity, &name)?;
            i += 1;
            let value = |i: usize| -> Result<Val, QueryError> {
                match &toks.get(i) {
                    Some((Tok::Str(s), _)) => Ok(Val::Str(s.clone())),
                    Some((Tok::Word(w), _)) if w.eq_ignore_ascii_case("true") => {
                        Ok(Val::Bool(true))
                    }
                    Some((Tok::Word(w), _)) if w.eq_ignore_ascii_case("false") => {
                        Ok(Val::Bool(false))
                    }
                    Some((Tok::Word(w), _))
                        if w.chars().all(|c| c.is_ascii_digit() || c == '.') =>
                    {
                        Ok(Val::Num(w.clone()))
                    }
                    _ => Err(unexpected(i, "<STRING>")),
                }
            };
            let cond = match (&toks.get(i), word(i)) {
                (Some((Tok::Punct(p @ ("=" | "<" | ">" | "<=" | ">=")), _)), _) => {
                    let v = value(i + 1)?;
                    i += 2;
                    Cond {
                        prop,
                        op: Op::Cmp(p),
                        value: Some(v),
                    }
                }
                (_, Some(w)) if w == "in" => {
                    if toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Punct("(")) {
                        return Err(unexpected(i + 1, "\"(\""));
                    }
                    i += 2;
                    let mut vals = Vec::new();
                    loop {
                        vals.push(value(i)?);
                        i += 1;
                        match toks.get(i).map(|t| &t.0) {
                            Some(Tok::Punct(",")) => i += 1,
                            Some(Tok::Punct(")")) => {
                                i += 1;
                                break;
                            }
                            _ => return Err(unexpected(i, "\")\"")),
                        }
                    }
                    Cond {
                        prop,
                        op: Op::In(vals),
                        value: None,
                    }
                }
                (_, Some(w)) if w == "like" => {
                    let pat = match &toks.get(i + 1) {
                        Some((Tok::Str(s), _)) => s.clone(),
                        _ => return Err(unexpected(i + 1, "<STRING>")),
                    };
                    i += 2;
                    Cond {
                        prop,
                        op: Op::Like(pat),
                        value: None,
                    }
                }
                _ => return Err(unexpected(i, "\"=\"")),
            };
            // Semantic checks Intuit makes.
            match (&cond.prop, &cond.op) {
                (Prop::Id, Op::Cmp("=")) | (Prop::Id, Op::In(_)) => {}
                (Prop::Id, _) => {
                    return Err(QueryError::Invalid(
                        "operator is not supported for property Id; use = or IN".into(),
                    ))
                }
                (Prop::Active, Op::Like(_)) | (Prop::CustomerRef, Op::Like(_)) => {
                    return Err(QueryError::Invalid(
                        "LIKE is only supported for string properties".into(),
                    ))
                }
                _ => {}
            }
            conds.push(cond);
            if word(i).as_deref() == Some("and") {
                i += 1;
                continue;
            }
            if word(i).as_deref() == Some("or") {
                return Err(unexpected(i, "\"orderby\""));
            }
            break;
        }
    }
    let mut order = None;
    if word(i).as_deref() == Some("orderby") {
        let name = match &toks.get(i + 1) {
            Some((Tok::Word(w), _)) => w.clone(),
            _ => return Err(unexpected(i + 1, "<IDENTIFIER>")),
        };
        let prop = prop_of(entity, &name)?;
        i += 2;
        let desc = match word(i).as_deref() {
            Some("desc") => {
                i += 1;
                true
            }
            Some("asc") => {
                i += 1;
                false
            }
            _ => false,
        };
        if toks.get(i).map(|t| &t.0) == Some(&Tok::Punct(",")) {
            return Err(unexpected(i, "\"startposition\""));
        }
        order = Some((prop, desc));
    }
    let mut start = 1;
    let mut max = 100;
    for (kw, slot) in [("startposition", &mut start), ("maxresults", &mut max)] {
        if word(i).as_deref() == Some(kw) {
            let n = match word(i + 1) {
                Some(n) => n,
                None => return Err(unexpected(i + 1, "<INTEGER>")),
            };
            let v: i64 = n.parse().map_err(|_| unexpected(i + 1, "<INTEGER>"))?;
            if v <= 0 {
                return Err(QueryError::Invalid(format!(
                    "{} must be a positive integer, not {v}",
                    kw.to_uppercase()
                )));
            }
            if kw == "maxresults" && v > 1000 {
                return Err(QueryError::Invalid(format!(
                    "value {v} is too large. Max allowed value is 1000"
                )));
            }
            *slot = v as usize;
            i += 2;
        }
    }
    if i != toks.len() {
        return Err(unexpected(i, "<EOF>"));
    }
    Ok(Query {
        count,
        entity,
        conds,
        order,
        start,
        max,
    })
}

/// A datetime literal: with an offset, or in the company's zone without one.
fn parse_dt(s: &str, off: FixedOffset) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return off
                .from_local_datetime(&n)
                .single()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| off.from_local_datetime(&d.and_hms_opt(0, 0, 0)?).single())
        .map(|t| t.with_timezone(&Utc))
}

/// One row the interpreter looks at.
enum Obj<'a> {
    C(&'a MCustomer),
    T(&'a MTxn),
}

impl Obj<'_> {
    fn id(&self) -> u64 {
        match self {
            Obj::C(c) => c.id,
            Obj::T(t) => t.id,
        }
    }
    fn updated(&self) -> DateTime<Utc> {
        match self {
            Obj::C(c) => c.updated,
            Obj::T(t) => t.updated,
        }
    }
}

fn cmp<T: PartialOrd>(a: &T, op: &str, b: &T) -> bool {
    match op {
        "=" => a == b,
        "<" => a < b,
        ">" => a > b,
        "<=" => a <= b,
        ">=" => a >= b,
        _ => false,
    }
}

fn like(s: &str, pat: &str) -> bool {
    let s = s.to_lowercase();
    let parts: Vec<String> = pat.to_lowercase().split('%').map(str::to_string).collect();
    if parts.len() == 1 {
        return s == parts[0];
    }
    let mut rest = s.as_str();
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(p.as_str()) {
                return false;
            }
            rest = &rest[p.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(p.as_str());
        } else if let Some(pos) = rest.find(p.as_str()) {
            rest = &rest[pos + p.len()..];
        } else {
            return false;
        }
    }
    true
}

fn matches(o: &Obj<'_>, c: &Cond, off: FixedOffset) -> Result<bool, QueryError> {
    let bad_dt = |v: &str| QueryError::Invalid(format!("Invalid date time format '{v}'"));
    Ok(match (&c.prop, &c.op) {
        (Prop::Id, Op::Cmp(_)) => c.value.as_ref().unwrap().text() == o.id().to_string(),
        (Prop::Id, Op::In(vs)) => vs.iter().any(|v| v.text() == o.id().to_string()),
        (Prop::Active, op) => {
            let Obj::C(cu) = o else { return Ok(false) };
            let want = |v: &Val| match v {
                Val::Bool(b) => Ok(*b),
                Val::Str(s) if s.eq_ignore_ascii_case("true") => Ok(true),
                Val::Str(s) if s.eq_ignore_ascii_case("false") => Ok(false),
                other => Err(QueryError::Invalid(format!(
                    "Active takes true or false, not {}",
                    other.text()
                ))),
            };
            match op {
                Op::Cmp("=") => want(c.value.as_ref().unwrap())? == cu.active,
                Op::In(vs) => {
                    let mut any = false;
                    for v in vs {
                        any |= want(v)? == cu.active;
                    }
                    any
                }
                _ => return Err(QueryError::Invalid("Active supports = and IN".into())),
            }
        }
        (Prop::LastUpdated | Prop::Created, op) => {
            let actual = match (o, c.prop) {
                (Obj::C(x), Prop::Created) => x.created,
                (Obj::T(x), Prop::Created) => x.created,
                _ => o.updated(),
            };
            match op {
                Op::Cmp(op) => {
                    let v = c.value.as_ref().unwrap().text();
                    let t = parse_dt(&v, off).ok_or_else(|| bad_dt(&v))?;
                    cmp(&actual, op, &t)
                }
                _ => return Err(QueryError::Invalid("dates support comparisons only".into())),
            }
        }
        (Prop::CustomerRef, op) => {
            let Obj::T(t) = o else { return Ok(false) };
            let id = t.customer.to_string();
            match op {
                Op::Cmp("=") => c.value.as_ref().unwrap().text() == id,
                Op::In(vs) => vs.iter().any(|v| v.text() == id),
                _ => return Err(QueryError::Invalid("CustomerRef supports = and IN".into())),
            }
        }
        (Prop::TxnDate, Op::Cmp(op)) => {
            let Obj::T(t) = o else { return Ok(false) };
            let v = c.value.as_ref().unwrap().text();
            let d = NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| bad_dt(&v))?;
            cmp(&t.txn_date, op, &d)
        }
        (Prop::DisplayName, Op::Cmp("=")) => {
            let Obj::C(cu) = o else { return Ok(false) };
            cu.display_name
                .eq_ignore_ascii_case(&c.value.as_ref().unwrap().text())
        }
        (Prop::DisplayName, Op::Like(p)) => {
            let Obj::C(cu) = o else { return Ok(false) };
            like(&cu.display_name, p)
        }
        (Prop::DocNumber, Op::Cmp("=")) => {
            let Obj::T(t) = o else { return Ok(false) };
            t.doc_number.as_deref() == Some(c.value.as_ref().unwrap().text().as_str())
        }
        (p, _) => {
            return Err(QueryError::Invalid(format!(
                "operator not supported for {p:?}"
            )))
        }
    })
}

fn run_query(st: &MockState, q: &str, applied: Option<Fault>, json: bool) -> Response {
    st.log_query(q.to_string());
    let parsed = match parse_query(q) {
        Ok(p) => p,
        Err(QueryError::Parse(d)) => return parser_error(st, &d),
        Err(QueryError::Invalid(d)) => return validation_error(st, &d),
    };
    let off = st.offset();
    let db = st.db.lock().unwrap();
    let mut rows: Vec<Obj<'_>> = Vec::new();
    // Inactive customers stay hidden unless the query asks about Active.
    let hide_inactive =
        parsed.entity == "Customer" && !parsed.conds.iter().any(|c| c.prop == Prop::Active);
    let candidates: Box<dyn Iterator<Item = Obj<'_>>> = if parsed.entity == "Customer" {
        Box::new(
            db.customers
                .values()
                .filter(|c| !hide_inactive || c.active)
                .map(Obj::C),
        )
    } else {
        let e = parsed.entity;
        Box::new(db.txns.values().filter(move |t| t.kind == e).map(Obj::T))
    };
    for o in candidates {
        let mut keep = true;
        for c in &parsed.conds {
            match matches(&o, c, off) {
                Ok(true) => {}
                Ok(false) => {
                    keep = false;
                    break;
                }
                Err(QueryError::Invalid(d)) | Err(QueryError::Parse(d)) => {
                    return validation_error(st, &d);
                }
            }
        }
        if keep {
            rows.push(o);
        }
    }
    {
        let mut s = st.stats.lock().unwrap();
        s.queries += 1;
        s.count_queries += parsed.count as u64;
    }
    let time = st.time_field();
    if parsed.count {
        let body = json!({"QueryResponse": {"totalCount": rows.len()}, "time": time});
        return finish(st, body, applied, json);
    }
    if let Some((prop, desc)) = parsed.order {
        rows.sort_by(|a, b| {
            let ord = match prop {
                Prop::LastUpdated => a.updated().cmp(&b.updated()),
                Prop::TxnDate => match (a, b) {
                    (Obj::T(x), Obj::T(y)) => x.txn_date.cmp(&y.txn_date),
                    _ => std::cmp::Ordering::Equal,
                },
                Prop::DisplayName => match (a, b) {
                    (Obj::C(x), Obj::C(y)) => x.display_name.cmp(&y.display_name),
                    _ => std::cmp::Ordering::Equal,
                },
                _ => a.id().cmp(&b.id()),
            };
            let ord = if desc { ord.reverse() } else { ord };
            ord.then(a.id().cmp(&b.id()))
        });
    }
    let page: Vec<Value> = rows
        .iter()
        .skip(parsed.start - 1)
        .take(parsed.max)
        .map(|o| match o {
            Obj::C(c) => customer_json(c, &db, off),
            Obj::T(t) => txn_json(t, &db, off),
        })
        .collect();
    drop(db);
    let body = if page.is_empty() {
        json!({"QueryResponse": {}, "time": time})
    } else {
        let n = page.len();
        let mut page = page;
        if matches!(applied, Some(Fault::MalformedRecord)) {
            corrupt(&mut page[0]);
        }
        json!({"QueryResponse": {parsed.entity: page, "startPosition": parsed.start, "maxResults": n}, "time": time})
    };
    finish(st, body, applied, json)
}

// ============================================================================
// Change data capture
// ============================================================================

async fn cdc(
    State(st): State<Arc<MockState>>,
    Path(realm): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    counted(&st, async {
        let applied = match gate(&st, &realm, &uri, &headers).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        st.stats.lock().unwrap().cdc_requests += 1;
        let params = query_pairs(uri.query().unwrap_or(""));
        st.log_query(format!("CDC {}", uri.query().unwrap_or("")));
        let param = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
        let (Some(entities), Some(since)) = (param("entities"), param("changedSince")) else {
            return validation_error(&st, "entities and changedSince are required for operation cdc");
        };
        let off = st.offset();
        let Some(since_t) = parse_dt(&since, off) else {
            return validation_error(&st, &format!("Invalid date time format '{since}'"));
        };
        let now = st.now();
        if since_t < now - TimeDelta::days(30) {
            return fault(
                &st,
                400,
                "ValidationFault",
                "10001",
                "Invalid query",
                &format!("Operation cdc with changedSince date {since} which is older than fixed days is not supported."),
            );
        }
        let mut names = Vec::new();
        for e in entities.split(',') {
            match ENTITIES.iter().find(|x| x.eq_ignore_ascii_case(e.trim())) {
                Some(x) => names.push(*x),
                None => return validation_error(&st, &format!("{e} is not supported by operation cdc")),
            }
        }
        let db = st.db.lock().unwrap();
        let mut budget = st.cfg.cdc_cap;
        let mut groups = Vec::new();
        for name in names {
            let mut objs: Vec<Value> = Vec::new();
            let mut active: Vec<Obj<'_>> = if name == "Customer" {
                db.customers.values().filter(|c| c.updated >= since_t).map(Obj::C).collect()
            } else {
                db.txns
                    .values()
                    .filter(|t| t.kind == name && t.updated >= since_t)
                    .map(Obj::T)
                    .collect()
            };
            active.sort_by(|a, b| a.updated().cmp(&b.updated()).then(a.id().cmp(&b.id())));
            for o in active.iter().take(budget) {
                objs.push(match o {
                    Obj::C(c) => customer_json(c, &db, off),
                    Obj::T(t) => txn_json(t, &db, off),
                });
            }
            budget -= objs.len();
            let mut deleted: Vec<&Deleted> =
                db.deleted.iter().filter(|d| d.kind == name && d.at >= since_t).collect();
            deleted.sort_by_key(|d| (d.at, d.id));
            for d in deleted.into_iter().take(budget) {
                objs.push(json!({"status": "Deleted", "domain": "QBO", "Id": d.id.to_string(),
                                 "MetaData": {"LastUpdatedTime": fmt_ts(d.at, off)}}));
                budget -= 1;
            }
            if objs.is_empty() {
                groups.push(json!({}));
            } else {
                let n = objs.len();
                groups.push(json!({name: objs, "startPosition": 1, "maxResults": n}));
            }
        }
        drop(db);
        let body = json!({"CDCResponse": [{"QueryResponse": groups}], "time": st.time_field()});
        finish(&st, body, applied, wants_json(&headers))
    })
    .await
}

// ============================================================================
// Self-tests of the mock's grammar (cheap, no server)
// ============================================================================

#[test]
fn mock_grammar_accepts_intuit_examples_and_refuses_the_rest() {
    for ok in [
        "SELECT * FROM Customer WHERE Active IN (true, false)",
        "select * from cUstomer where displayname = 'Adam\\'s Candy Shop' Startposition 10",
        "SELECT * FROM Invoice WHERE Metadata.LastUpdatedTime > '2011-08-10T10:20:30'",
        "SELECT COUNT(*) FROM Customer",
        "SELECT * FROM Invoice WHERE CustomerRef IN ('1', '2') ORDERBY Metadata.LastUpdatedTime DESC STARTPOSITION 11 MAXRESULTS 1000",
        "SELECT * FROM Invoice WHERE id in ('64523', '18761') AND MetaData.CreateTime >= '1990-12-12T12:50:30Z'",
    ] {
        assert!(parse_query(ok).is_ok(), "{ok}");
    }
    for bad in [
        "SELECT * FROM Invoice MAXRESULTS 1001",
        "SELECT * FROM Invoice WHERE Id > '5'",
        "SELECT * FROM Invoice WHERE TotalAmt > '5' OR Id = '1'",
        "SELECT * FROM Invoice STARTPOSITION 0",
        "SELECT * FROM Invoice WHERE DocNumber = 'a'b'",
        "SELECT * FROM Bogus",
        "SELECT Id FROM Invoice",
        "SELECT * FROM Invoice ORDERBY Metadata.LastUpdatedTime, Id",
    ] {
        assert!(parse_query(bad).is_err(), "{bad}");
    }
    assert!(like("O'Brien & Sons", "o'brien%"));
    assert!(!like("Company 1", "%x%"));
}
