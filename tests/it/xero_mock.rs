//! Mock Xero for the connector tests: an in-process Accounting API (axum on
//! 127.0.0.1:0) answering `GET /api.xro/2.0/{Contacts,Invoices,CreditNotes,Payments}`
//! and `GET /connections` the way Xero does, in front of the mock OAuth 2.0
//! server of `oauth_mock` (Xero's token policy: 30-minute access tokens, a
//! new refresh token on every refresh, the old one good for 30 minutes).
//!
//! What it models (facts from Xero's OpenAPI specification and the sources
//! in docs/connectors/xero.md):
//! - Auth: a bearer token the token server issued and has not expired or
//!   revoked, else 401 `{"Title":"Unauthorized","Detail":"TokenExpired: ..."}`;
//!   the `xero-tenant-id` header must name the connected organisation, else
//!   403 `{"Title":"Forbidden","Detail":"AuthenticationUnsuccessful"}`.
//! - Content negotiation: without `Accept: application/json` the answer is
//!   XML.
//! - Envelopes `{"Id","Status":"OK","ProviderName","DateTimeUTC","pagination":{...},"<Records>":[...]}`,
//!   MS-JSON dates (`/Date(ms+0000)/`, payments' times without an offset),
//!   money as JSON numbers.
//! - `page` / `pageSize` (default 100, at most 1,000) with the `pagination`
//!   block; `If-Modified-Since` at second precision (records modified after
//!   that second; milliseconds in the header are ignored); `where` (a
//!   parser for `==`, `!=`, `AND`, `OR`, parentheses, strings, `Guid("...")`,
//!   booleans, over the fields Xero documents for each endpoint; anything
//!   else is a 400 `QueryParseException`); `order` by `UpdatedDateUTC` or
//!   the id; `includeArchived` (ARCHIVED contacts are hidden without it);
//!   `ContactIDs` and `Statuses` on invoices. Unknown query parameters are
//!   refused with 400 (stricter than Xero, so a typo shows up).
//! - Limits per organisation: requests per minute, per day, in flight, and
//!   the app's minute limit, each window length configurable so tests run
//!   in seconds. Every counted answer carries `X-DayLimit-Remaining`,
//!   `X-MinLimit-Remaining`, `X-AppMinLimit-Remaining`; over a limit the
//!   answer is 429 with `Retry-After` and `X-Rate-Limit-Problem`
//!   (`day`, `minute`, `appminute`, `concurrent`). It records the most
//!   requests it ever saw in one minute window and in flight.
//! - Faults: 5xx, slow answers, a body cut off mid-stream, a malformed
//!   record, records changed between two pages of one read, forced 429s,
//!   the day's quota used up until a reset.
//!
//! What it does not model: XML bodies beyond an empty envelope, writes,
//! attachments, line items, `summaryOnly`, `searchTerm`, Xero's
//! high-volume refusal of unoptimised filters on very large organisations,
//! and the exact `X-Rate-Limit-Problem` values for the concurrent and app
//! limits (undocumented). It shares no code with the connector.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{NaiveDate, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::oauth_mock::{MockTokenServer, TokenPolicy};

// ============================================================================
// Configuration and data
// ============================================================================

#[derive(Clone, Debug)]
pub struct MockLimits {
    pub per_minute: u32,
    pub minute_window: Duration,
    pub per_day: u32,
    pub day_window: Duration,
    pub concurrent: u32,
    pub app_per_minute: u32,
}

impl Default for MockLimits {
    /// Xero's documented limits, with real windows.
    fn default() -> Self {
        MockLimits {
            per_minute: 60,
            minute_window: Duration::from_secs(60),
            per_day: 5000,
            day_window: Duration::from_secs(86_400),
            concurrent: 5,
            app_per_minute: 10_000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MockConfig {
    pub seed: u64,
    /// Customers (ACTIVE), among them `archived` and `gdpr` more.
    pub contacts: usize,
    pub archived: usize,
    pub gdpr: usize,
    /// Contacts that only ever send bills.
    pub suppliers: usize,
    pub invoices: usize,
    pub bills: usize,
    pub credit_notes: usize,
    pub supplier_credit_notes: usize,
    pub payments: usize,
    pub supplier_payments: usize,
    pub tenant_id: String,
    pub tenant_name: String,
    /// Other organisations the same connection can see.
    pub other_tenants: Vec<(String, String)>,
    pub limits: MockLimits,
    pub token_policy: TokenPolicy,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: 11,
            contacts: 200,
            archived: 10,
            gdpr: 5,
            suppliers: 20,
            invoices: 800,
            bills: 150,
            credit_notes: 120,
            supplier_credit_notes: 40,
            payments: 500,
            supplier_payments: 80,
            tenant_id: "6b8b7a2e-52f8-4c8a-9d7e-1f2a3b4c5d6e".into(),
            tenant_name: "Demo Company (NZ)".into(),
            other_tenants: vec![(
                "0c0ffee0-0000-4000-8000-00000000beef".into(),
                "Other Org Ltd".into(),
            )],
            limits: MockLimits {
                per_minute: 100_000,
                minute_window: Duration::from_secs(60),
                per_day: 1_000_000,
                day_window: Duration::from_secs(86_400),
                concurrent: 5,
                app_per_minute: 1_000_000,
            },
            token_policy: TokenPolicy::xero(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MockContact {
    pub id: String,
    pub status: String,
    pub name: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub phone: String,
    pub street: String,
    pub account_number: String,
    pub currency: String,
    pub is_supplier_only: bool,
    pub updated: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MockInvoice {
    pub id: String,
    /// `ACCREC` or `ACCPAY`.
    pub kind: String,
    pub number: String,
    pub contact: String,
    pub date: NaiveDate,
    pub due: NaiveDate,
    pub status: String,
    pub currency: String,
    pub total: Decimal,
    pub amount_due: Decimal,
    pub updated: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MockCreditNote {
    pub id: String,
    /// `ACCRECCREDIT` or `ACCPAYCREDIT`.
    pub kind: String,
    pub number: String,
    pub contact: String,
    pub date: NaiveDate,
    pub status: String,
    pub currency: String,
    pub total: Decimal,
    pub updated: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MockPayment {
    pub id: String,
    /// `ACCRECPAYMENT` or `ACCPAYPAYMENT`.
    pub kind: String,
    pub invoice: String,
    pub date: NaiveDate,
    pub amount: Decimal,
    pub status: String,
    pub updated: i64,
}

/// Everything the organisation holds. Times are milliseconds since the
/// epoch (UTC) on the mock's clock.
#[derive(Clone, Debug, Default)]
pub struct Db {
    pub contacts: Vec<MockContact>,
    pub invoices: Vec<MockInvoice>,
    pub credit_notes: Vec<MockCreditNote>,
    pub payments: Vec<MockPayment>,
    /// The mock's clock: each change moves it forward.
    pub clock: i64,
}

impl Db {
    /// The next modification time: a few hundred milliseconds later, so
    /// many records share a second.
    fn tick(&mut self, rng_ms: i64) -> i64 {
        self.clock += rng_ms.max(1);
        self.clock
    }

    pub fn invoice(&self, id: &str) -> Option<&MockInvoice> {
        self.invoices.iter().find(|i| i.id == id)
    }

    pub fn contact(&self, id: &str) -> Option<&MockContact> {
        self.contacts.iter().find(|c| c.id == id)
    }
}

fn guid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

const FIRST: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jon",
];
const LAST: &[&str] = &[
    "Parker", "Nguyen", "Okafor", "Schmidt", "Rossi", "Tanaka", "Kowalski", "Silva",
];
const CURRENCIES: &[&str] = &["NZD", "NZD", "NZD", "AUD", "USD"];

fn money(rng: &mut StdRng, lo: i64, hi: i64) -> Decimal {
    Decimal::new(rng.random_range(lo * 100..hi * 100), 2)
}

/// The seeded organisation.
pub fn generate(cfg: &MockConfig) -> Db {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
    let mut db = Db {
        clock: start.timestamp_millis(),
        ..Db::default()
    };
    let base_date = NaiveDate::from_ymd_opt(2025, 6, 1).unwrap();
    let n = cfg.contacts + cfg.archived + cfg.gdpr + cfg.suppliers;
    for i in 0..n {
        let status = if i < cfg.contacts {
            "ACTIVE"
        } else if i < cfg.contacts + cfg.archived {
            "ARCHIVED"
        } else if i < cfg.contacts + cfg.archived + cfg.gdpr {
            "GDPRREQUEST"
        } else {
            "ACTIVE"
        };
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let step = rng.random_range(0..400);
        let updated = db.tick(step);
        db.contacts.push(MockContact {
            id: guid(&mut rng),
            status: status.into(),
            name: format!("{first} {last} {i:05}"),
            first_name: first.into(),
            last_name: last.into(),
            email: format!(
                "{}.{}{i}@mail.example",
                first.to_lowercase(),
                last.to_lowercase()
            ),
            phone: format!("+64 21 {:03} {:04}", i % 1000, (i * 7) % 10000),
            street: format!("{} Queen Street", i % 300 + 1),
            account_number: format!("AC-{i:05}"),
            currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())].into(),
            is_supplier_only: i >= cfg.contacts + cfg.archived + cfg.gdpr,
            updated,
        });
    }
    let customers: Vec<(String, String)> = db
        .contacts
        .iter()
        .filter(|c| !c.is_supplier_only)
        .map(|c| (c.id.clone(), c.currency.clone()))
        .collect();
    let suppliers: Vec<(String, String)> = db
        .contacts
        .iter()
        .filter(|c| c.is_supplier_only)
        .map(|c| (c.id.clone(), c.currency.clone()))
        .collect();
    let make_invoice =
        |db: &mut Db, rng: &mut StdRng, kind: &str, k: usize, who: &[(String, String)]| {
            let (contact, currency) = who[rng.random_range(0..who.len())].clone();
            let date = base_date + chrono::Duration::days(rng.random_range(0..200));
            let total = money(rng, 20, 5000);
            let roll: f64 = rng.random();
            let status = if roll < 0.05 {
                "DRAFT"
            } else if roll < 0.07 {
                "SUBMITTED"
            } else if roll < 0.10 {
                "VOIDED"
            } else if roll < 0.12 {
                "DELETED"
            } else if roll < 0.55 {
                "PAID"
            } else {
                "AUTHORISED"
            };
            let amount_due = match status {
                "PAID" | "VOIDED" | "DELETED" => Decimal::ZERO,
                "AUTHORISED" if rng.random_bool(0.3) => (total / Decimal::from(2)).round_dp(2),
                _ => total,
            };
            let step = rng.random_range(0..500);
            let updated = db.tick(step);
            db.invoices.push(MockInvoice {
                id: guid(rng),
                kind: kind.into(),
                number: format!("{}-{k:05}", if kind == "ACCREC" { "INV" } else { "BILL" }),
                contact,
                date,
                due: date + chrono::Duration::days(30),
                status: status.into(),
                currency,
                total,
                amount_due,
                updated,
            });
        };
    for k in 0..cfg.invoices {
        make_invoice(&mut db, &mut rng, "ACCREC", k, &customers);
    }
    for k in 0..cfg.bills {
        make_invoice(&mut db, &mut rng, "ACCPAY", k, &suppliers);
    }
    let make_credit =
        |db: &mut Db, rng: &mut StdRng, kind: &str, k: usize, who: &[(String, String)]| {
            let (contact, currency) = who[rng.random_range(0..who.len())].clone();
            let roll: f64 = rng.random();
            let status = if roll < 0.05 {
                "DRAFT"
            } else if roll < 0.09 {
                "VOIDED"
            } else if roll < 0.11 {
                "DELETED"
            } else if roll < 0.5 {
                "PAID"
            } else {
                "AUTHORISED"
            };
            let step = rng.random_range(0..500);
            let updated = db.tick(step);
            db.credit_notes.push(MockCreditNote {
                id: guid(rng),
                kind: kind.into(),
                number: format!("CN-{k:05}"),
                contact,
                date: base_date + chrono::Duration::days(rng.random_range(0..200)),
                status: status.into(),
                currency,
                total: money(rng, 5, 800),
                updated,
            });
        };
    for k in 0..cfg.credit_notes {
        make_credit(&mut db, &mut rng, "ACCRECCREDIT", k, &customers);
    }
    for k in 0..cfg.supplier_credit_notes {
        make_credit(&mut db, &mut rng, "ACCPAYCREDIT", k, &suppliers);
    }
    let payable = |db: &Db, kind: &str| -> Vec<String> {
        db.invoices
            .iter()
            .filter(|i| i.kind == kind && matches!(i.status.as_str(), "AUTHORISED" | "PAID"))
            .map(|i| i.id.clone())
            .collect()
    };
    let sales = payable(&db, "ACCREC");
    let bills = payable(&db, "ACCPAY");
    for (kind, count, pool) in [
        ("ACCRECPAYMENT", cfg.payments, &sales),
        ("ACCPAYPAYMENT", cfg.supplier_payments, &bills),
    ] {
        for _ in 0..count {
            if pool.is_empty() {
                break;
            }
            let invoice = pool[rng.random_range(0..pool.len())].clone();
            let inv_date = db.invoice(&invoice).unwrap().date;
            let step = rng.random_range(0..500);
            let updated = db.tick(step);
            db.payments.push(MockPayment {
                id: guid(&mut rng),
                kind: kind.into(),
                invoice,
                date: inv_date + chrono::Duration::days(rng.random_range(0..60)),
                amount: money(&mut rng, 5, 2000),
                status: if rng.random_bool(0.04) {
                    "DELETED"
                } else {
                    "AUTHORISED"
                }
                .into(),
                updated,
            });
        }
    }
    db
}

// ============================================================================
// Public handle
// ============================================================================

/// One injected fault, applied to the next list request it matches.
#[derive(Clone, Debug)]
pub enum Fault {
    ServerError(u16),
    /// Answer normally, after this delay.
    Slow(Duration),
    /// A 200 whose body breaks off half-way (the connection is cut).
    TruncatedBody,
    /// A 200 whose first record has an unreadable `UpdatedDateUTC`-less
    /// amount and an invalid date.
    MalformedRecord,
    /// Answer normally, then modify the first `n` records of the page just
    /// served (they move to the end of an `UpdatedDateUTC` order), as a user
    /// editing them between two page requests would.
    TouchAfterPage(usize),
    /// A 429 naming this limit, with this `Retry-After` (seconds).
    RateLimited {
        problem: &'static str,
        retry_after: u64,
    },
}

#[derive(Clone, Debug, Default)]
pub struct MockStats {
    /// Requests to the API (every endpoint, every answer).
    pub requests: u64,
    pub by_endpoint: BTreeMap<String, u64>,
    /// Requests counted against the limits (authorised, tenant right).
    pub counted: u64,
    pub ok: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub bad_requests: u64,
    pub server_errors: u64,
    /// 429 answers by `X-Rate-Limit-Problem`.
    pub rate_limited: BTreeMap<String, u64>,
    /// Answers in XML (no `Accept: application/json`).
    pub xml_answers: u64,
    pub connections_requests: u64,
    /// Most API requests in flight at once.
    pub max_in_flight: usize,
    /// Most counted requests in any one minute window.
    pub max_per_minute_window: u32,
    /// The `If-Modified-Since` values received, in order.
    pub if_modified_since: Vec<String>,
}

impl MockStats {
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited.values().sum()
    }
}

struct Windows {
    minute: VecDeque<Instant>,
    day: VecDeque<Instant>,
    app_minute: VecDeque<Instant>,
    /// The day's quota is used up until then, whatever the count.
    day_exhausted_until: Option<Instant>,
}

struct Shared {
    cfg: MockConfig,
    oauth: Arc<MockTokenServer>,
    db: Mutex<Db>,
    faults: Mutex<VecDeque<(Option<String>, Fault)>>,
    windows: Mutex<Windows>,
    in_flight: AtomicUsize,
    stats: Mutex<MockStats>,
    log: Mutex<VecDeque<String>>,
}

pub struct MockXero {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockXero {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A mock Xero on its own runtime, for tests that drive the real binary
/// from plain (blocking) test functions.
pub struct BackgroundXero {
    mock: Option<MockXero>,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::ops::Deref for BackgroundXero {
    type Target = MockXero;
    fn deref(&self) -> &MockXero {
        self.mock.as_ref().expect("running")
    }
}

impl Drop for BackgroundXero {
    fn drop(&mut self) {
        drop(self.mock.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl MockXero {
    pub fn start_in_background(cfg: MockConfig) -> BackgroundXero {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mock = rt.block_on(MockXero::start(cfg));
        BackgroundXero {
            mock: Some(mock),
            rt: Some(rt),
        }
    }

    pub async fn start(cfg: MockConfig) -> MockXero {
        let oauth = Arc::new(MockTokenServer::start(cfg.token_policy.clone()).await);
        let db = generate(&cfg);
        let shared = Arc::new(Shared {
            cfg,
            oauth,
            db: Mutex::new(db),
            faults: Mutex::new(VecDeque::new()),
            windows: Mutex::new(Windows {
                minute: VecDeque::new(),
                day: VecDeque::new(),
                app_minute: VecDeque::new(),
                day_exhausted_until: None,
            }),
            in_flight: AtomicUsize::new(0),
            stats: Mutex::new(MockStats::default()),
            log: Mutex::new(VecDeque::new()),
        });
        let app = Router::new()
            .route("/api.xro/2.0/{endpoint}", get(api))
            .route("/connections", get(connections))
            .route("/Connections", get(connections))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockXero {
            addr,
            shared,
            server,
        }
    }

    /// The `base_url` of the connector's options.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn oauth(&self) -> &MockTokenServer {
        &self.shared.oauth
    }

    pub fn config(&self) -> &MockConfig {
        &self.shared.cfg
    }

    pub fn tenant_id(&self) -> &str {
        &self.shared.cfg.tenant_id
    }

    /// The connector's options table for this mock (`page_size` and more
    /// may follow in `extra`); writes the client id and secret into `dir`.
    pub fn options_toml(&self, dir: &std::path::Path, extra: &str) -> String {
        self.oauth().write_client_files(dir);
        format!(
            "tenant_id = \"{}\"\nbase_url = \"{}\"\n{extra}\n[connectors.xero.oauth]\ntoken_url = \"{}\"\nclient_id_file = \"client_id\"\nclient_secret_file = \"client_secret\"\n",
            self.tenant_id(),
            self.base_url(),
            self.oauth().token_url()
        )
    }

    pub fn stats(&self) -> MockStats {
        self.shared.stats.lock().unwrap().clone()
    }

    pub fn reset_stats(&self) {
        *self.shared.stats.lock().unwrap() = MockStats::default();
    }

    /// The last request URIs (path and query), oldest first.
    pub fn recent_requests(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().iter().cloned().collect()
    }

    /// Queues a fault for the next list request to `endpoint` (any when `None`).
    pub fn push_fault(&self, endpoint: Option<&str>, f: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .push_back((endpoint.map(str::to_string), f));
    }

    pub fn pending_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }

    /// Every request is refused with a daily-limit 429 until `reset_in` from
    /// now, when the day's count starts again (another integration used the
    /// organisation's quota).
    pub fn exhaust_day(&self, reset_in: Duration) {
        let mut w = self.shared.windows.lock().unwrap();
        w.day_exhausted_until = Some(Instant::now() + reset_in);
    }

    /// A copy of the organisation's data.
    pub fn snapshot(&self) -> Db {
        self.shared.db.lock().unwrap().clone()
    }

    /// Changes data; `f` gets the database and the next modification time.
    pub fn change<T>(&self, f: impl FnOnce(&mut Db, i64) -> T) -> T {
        let mut db = self.shared.db.lock().unwrap();
        let t = db.tick(337);
        f(&mut db, t)
    }

    pub fn edit_invoice(&self, id: &str, f: impl FnOnce(&mut MockInvoice)) {
        self.change(|db, t| {
            let i = db
                .invoices
                .iter_mut()
                .find(|i| i.id == id)
                .expect("invoice");
            f(i);
            i.updated = t;
        })
    }

    pub fn edit_credit_note(&self, id: &str, f: impl FnOnce(&mut MockCreditNote)) {
        self.change(|db, t| {
            let c = db
                .credit_notes
                .iter_mut()
                .find(|c| c.id == id)
                .expect("credit note");
            f(c);
            c.updated = t;
        })
    }

    pub fn edit_payment(&self, id: &str, f: impl FnOnce(&mut MockPayment)) {
        self.change(|db, t| {
            let p = db
                .payments
                .iter_mut()
                .find(|p| p.id == id)
                .expect("payment");
            f(p);
            p.updated = t;
        })
    }

    pub fn edit_contact(&self, id: &str, f: impl FnOnce(&mut MockContact)) {
        self.change(|db, t| {
            let c = db
                .contacts
                .iter_mut()
                .find(|c| c.id == id)
                .expect("contact");
            f(c);
            c.updated = t;
        })
    }

    /// A new sales invoice for `contact`; its id.
    pub fn add_invoice(&self, contact: &str, total: Decimal) -> String {
        self.change(|db, t| {
            let id = format!("{:08x}-0000-4000-8000-{:012x}", t as u32, db.invoices.len());
            let currency = db.contact(contact).expect("contact").currency.clone();
            let date = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
            db.invoices.push(MockInvoice {
                id: id.clone(),
                kind: "ACCREC".into(),
                number: format!("INV-N{}", db.invoices.len()),
                contact: contact.into(),
                date,
                due: date + chrono::Duration::days(14),
                status: "AUTHORISED".into(),
                currency,
                total,
                amount_due: total,
                updated: t,
            });
            id
        })
    }

    /// A new customer payment on `invoice`; its id.
    pub fn add_payment(&self, invoice: &str, amount: Decimal) -> String {
        self.change(|db, t| {
            let id = format!("{:08x}-0000-4000-9000-{:012x}", t as u32, db.payments.len());
            db.payments.push(MockPayment {
                id: id.clone(),
                kind: "ACCRECPAYMENT".into(),
                invoice: invoice.into(),
                date: NaiveDate::from_ymd_opt(2026, 2, 10).unwrap(),
                amount,
                status: "AUTHORISED".into(),
                updated: t,
            });
            id
        })
    }
}

// ============================================================================
// Wire helpers
// ============================================================================

fn ms_date(d: NaiveDate) -> String {
    let ms = d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
    format!("/Date({ms}+0000)/")
}

fn ms_time(ms: i64, with_offset: bool) -> String {
    if with_offset {
        format!("/Date({ms}+0000)/")
    } else {
        format!("/Date({ms})/")
    }
}

fn num(d: Decimal) -> Value {
    Value::Number(serde_json::Number::from_str(&d.to_string()).unwrap())
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Xero's problem-details error (401, 403).
fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "Type": null,
        "Title": status.canonical_reason().unwrap_or("Error"),
        "Status": status.as_u16(),
        "Detail": detail,
        "Instance": request_id(),
        "Extensions": {}
    });
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer error=\"invalid_token\"".parse().unwrap(),
        );
    }
    r
}

/// Xero's API exception (400).
fn api_exception(kind: &str, message: &str) -> Response {
    let body = json!({"ErrorNumber": 16, "Type": kind, "Message": message});
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        json!({"Title": "NotFound", "Status": 404, "Detail": format!("The resource {} was not found", uri.path())}).to_string(),
    )
        .into_response()
}

fn decode_component(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode_component(k), decode_component(v)),
            None => (decode_component(kv), String::new()),
        })
        .collect()
}

/// `If-Modified-Since` as Xero reads it: `yyyy-mm-ddThh:mm:ss` (UTC),
/// optionally with fractions (ignored) and an offset, or an HTTP date.
fn parse_if_modified_since(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc2822(v) {
        return Some(t.timestamp());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp());
    }
    chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

// ============================================================================
// The `where` language
// ============================================================================

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Guid(String),
    Bool(bool),
}

#[derive(Debug, Clone)]
enum Expr {
    Cmp { field: String, eq: bool, value: Lit },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.s[self.at..].starts_with(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.s[self.at..].starts_with(t) {
            self.at += t.len();
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        self.ws();
        let rest = &self.s[self.at..];
        if rest.len() >= w.len()
            && rest[..w.len()].eq_ignore_ascii_case(w)
            && !rest[w.len()..].starts_with(|c: char| c.is_alphanumeric())
        {
            self.at += w.len();
            true
        } else {
            false
        }
    }

    fn err(&self, what: &str) -> String {
        format!("{what} (at index {})", self.at)
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut e = self.term()?;
        while self.eat_word("OR") || self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.term()?));
        }
        Ok(e)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut e = self.factor()?;
        while self.eat_word("AND") || self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.factor()?));
        }
        Ok(e)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        if self.eat("(") {
            let e = self.expr()?;
            if !self.eat(")") {
                return Err(self.err("')' expected"));
            }
            return Ok(e);
        }
        self.ws();
        let start = self.at;
        while self.s[self.at..].starts_with(|c: char| c.is_alphanumeric() || c == '.') {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.err("Expression expected"));
        }
        let field = self.s[start..self.at].to_string();
        let eq = if self.eat("==") {
            true
        } else if self.eat("!=") {
            false
        } else {
            return Err(self.err("Operator '==' or '!=' expected"));
        };
        let value = self.literal()?;
        Ok(Expr::Cmp { field, eq, value })
    }

    fn string(&mut self) -> Result<String, String> {
        self.ws();
        if !self.s[self.at..].starts_with('"') {
            return Err(self.err("String literal expected"));
        }
        let rest = &self.s[self.at + 1..];
        let end = rest
            .find('"')
            .ok_or_else(|| self.err("Unterminated string literal"))?;
        let v = rest[..end].to_string();
        self.at += end + 2;
        Ok(v)
    }

    fn literal(&mut self) -> Result<Lit, String> {
        if self.eat_word("true") {
            return Ok(Lit::Bool(true));
        }
        if self.eat_word("false") {
            return Ok(Lit::Bool(false));
        }
        if self.eat_word("Guid") || self.eat_word("guid") {
            if !self.eat("(") {
                return Err(self.err("'(' expected"));
            }
            let g = self.string()?;
            if !self.eat(")") {
                return Err(self.err("')' expected"));
            }
            if uuid_shape(&g) {
                return Ok(Lit::Guid(g.to_ascii_lowercase()));
            }
            return Err(format!(
                "Guid should contain 32 digits with 4 dashes: `{g}`"
            ));
        }
        Ok(Lit::Str(self.string()?))
    }
}

fn uuid_shape(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn parse_where(s: &str) -> Result<Expr, String> {
    let mut p = Parser { s, at: 0 };
    let e = p.expr()?;
    p.ws();
    if p.at != s.len() {
        return Err(p.err("Syntax error"));
    }
    Ok(e)
}

/// A record's fields as `where` sees them.
enum FieldValue {
    Str(String),
    Guid(String),
    Bool(bool),
}

fn matches(e: &Expr, get: &dyn Fn(&str) -> Option<FieldValue>) -> bool {
    match e {
        Expr::And(a, b) => matches(a, get) && matches(b, get),
        Expr::Or(a, b) => matches(a, get) || matches(b, get),
        Expr::Cmp { field, eq, value } => {
            let same = match (get(field), value) {
                (Some(FieldValue::Str(a)), Lit::Str(b)) => &a == b,
                (Some(FieldValue::Guid(a)), Lit::Guid(b)) => a.eq_ignore_ascii_case(b),
                (Some(FieldValue::Guid(a)), Lit::Str(b)) => a.eq_ignore_ascii_case(b),
                (Some(FieldValue::Bool(a)), Lit::Bool(b)) => a == *b,
                _ => false,
            };
            same == *eq
        }
    }
}

fn fields_used(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            fields_used(a, out);
            fields_used(b, out);
        }
        Expr::Cmp { field, .. } => out.push(field.clone()),
    }
}

// ============================================================================
// Endpoints
// ============================================================================

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ep {
    Contacts,
    Invoices,
    CreditNotes,
    Payments,
}

impl Ep {
    fn parse(s: &str) -> Option<Ep> {
        match s {
            "Contacts" => Some(Ep::Contacts),
            "Invoices" => Some(Ep::Invoices),
            "CreditNotes" => Some(Ep::CreditNotes),
            "Payments" => Some(Ep::Payments),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Ep::Contacts => "Contacts",
            Ep::Invoices => "Invoices",
            Ep::CreditNotes => "CreditNotes",
            Ep::Payments => "Payments",
        }
    }
    fn type_name(self) -> &'static str {
        match self {
            Ep::Contacts => "Contact",
            Ep::Invoices => "Invoice",
            Ep::CreditNotes => "CreditNote",
            Ep::Payments => "Payment",
        }
    }
    fn id_field(self) -> &'static str {
        match self {
            Ep::Contacts => "ContactID",
            Ep::Invoices => "InvoiceID",
            Ep::CreditNotes => "CreditNoteID",
            Ep::Payments => "PaymentID",
        }
    }
    /// The query parameters Xero documents for the endpoint.
    fn params(self) -> &'static [&'static str] {
        match self {
            Ep::Contacts => &[
                "where",
                "order",
                "IDs",
                "page",
                "pageSize",
                "includeArchived",
                "summaryOnly",
                "searchTerm",
            ],
            Ep::Invoices => &[
                "where",
                "order",
                "IDs",
                "InvoiceNumbers",
                "ContactIDs",
                "Statuses",
                "page",
                "pageSize",
                "includeArchived",
                "createdByMyApp",
                "unitdp",
                "summaryOnly",
                "searchTerm",
            ],
            Ep::CreditNotes => &["where", "order", "page", "pageSize", "unitdp"],
            Ep::Payments => &["where", "order", "page", "pageSize"],
        }
    }
    /// The fields `where` may name (those Xero lists as filterable).
    fn where_fields(self) -> &'static [&'static str] {
        match self {
            Ep::Contacts => &[
                "ContactID",
                "ContactStatus",
                "Name",
                "IsCustomer",
                "IsSupplier",
            ],
            Ep::Invoices => &[
                "InvoiceID",
                "Type",
                "Status",
                "Contact.ContactID",
                "InvoiceNumber",
            ],
            Ep::CreditNotes => &["CreditNoteID", "Type", "Status", "Contact.ContactID"],
            Ep::Payments => &[
                "PaymentID",
                "PaymentType",
                "Status",
                "Invoice.InvoiceID",
                "Invoice.Contact.ContactID",
            ],
        }
    }
}

/// One record ready to be filtered and ordered; rendered only when served.
struct Row {
    idx: usize,
    id: String,
    updated: i64,
    fields: HashMap<&'static str, FieldValueOwned>,
    /// Hidden unless `includeArchived=true`.
    archived: bool,
    contact: Option<String>,
    status: String,
}

#[derive(Clone)]
enum FieldValueOwned {
    Str(String),
    Guid(String),
    Bool(bool),
}

/// What rendering needs beyond one record.
struct Ctx<'a> {
    invoices: HashMap<&'a str, &'a MockInvoice>,
    outstanding: HashMap<&'a str, Decimal>,
    customers: HashMap<&'a str, bool>,
}

fn ctx(db: &Db) -> Ctx<'_> {
    let mut outstanding: HashMap<&str, Decimal> = HashMap::new();
    let mut customers: HashMap<&str, bool> = HashMap::new();
    for i in &db.invoices {
        if i.kind == "ACCREC" {
            customers.insert(&i.contact, true);
            if i.status == "AUTHORISED" {
                *outstanding.entry(&i.contact).or_default() += i.amount_due;
            }
        }
    }
    Ctx {
        invoices: db.invoices.iter().map(|i| (i.id.as_str(), i)).collect(),
        outstanding,
        customers,
    }
}

fn rows(db: &Db, ep: Ep, cx: &Ctx<'_>) -> Vec<Row> {
    match ep {
        Ep::Contacts => db
            .contacts
            .iter()
            .enumerate()
            .map(|(idx, c)| {
                let mut fields = HashMap::new();
                fields.insert("ContactID", FieldValueOwned::Guid(c.id.clone()));
                fields.insert("ContactStatus", FieldValueOwned::Str(c.status.clone()));
                fields.insert("Name", FieldValueOwned::Str(c.name.clone()));
                fields.insert(
                    "IsCustomer",
                    FieldValueOwned::Bool(cx.customers.contains_key(c.id.as_str())),
                );
                fields.insert("IsSupplier", FieldValueOwned::Bool(c.is_supplier_only));
                Row {
                    idx,
                    id: c.id.clone(),
                    updated: c.updated,
                    fields,
                    archived: c.status == "ARCHIVED",
                    contact: Some(c.id.clone()),
                    status: c.status.clone(),
                }
            })
            .collect(),
        Ep::Invoices => db
            .invoices
            .iter()
            .enumerate()
            .map(|(idx, i)| {
                let mut fields = HashMap::new();
                fields.insert("InvoiceID", FieldValueOwned::Guid(i.id.clone()));
                fields.insert("Type", FieldValueOwned::Str(i.kind.clone()));
                fields.insert("Status", FieldValueOwned::Str(i.status.clone()));
                fields.insert(
                    "Contact.ContactID",
                    FieldValueOwned::Guid(i.contact.clone()),
                );
                fields.insert("InvoiceNumber", FieldValueOwned::Str(i.number.clone()));
                Row {
                    idx,
                    id: i.id.clone(),
                    updated: i.updated,
                    fields,
                    archived: false,
                    contact: Some(i.contact.clone()),
                    status: i.status.clone(),
                }
            })
            .collect(),
        Ep::CreditNotes => db
            .credit_notes
            .iter()
            .enumerate()
            .map(|(idx, c)| {
                let mut fields = HashMap::new();
                fields.insert("CreditNoteID", FieldValueOwned::Guid(c.id.clone()));
                fields.insert("Type", FieldValueOwned::Str(c.kind.clone()));
                fields.insert("Status", FieldValueOwned::Str(c.status.clone()));
                fields.insert(
                    "Contact.ContactID",
                    FieldValueOwned::Guid(c.contact.clone()),
                );
                Row {
                    idx,
                    id: c.id.clone(),
                    updated: c.updated,
                    fields,
                    archived: false,
                    contact: Some(c.contact.clone()),
                    status: c.status.clone(),
                }
            })
            .collect(),
        Ep::Payments => db
            .payments
            .iter()
            .enumerate()
            .map(|(idx, p)| {
                let contact = cx
                    .invoices
                    .get(p.invoice.as_str())
                    .map(|i| i.contact.clone())
                    .unwrap_or_default();
                let mut fields = HashMap::new();
                fields.insert("PaymentID", FieldValueOwned::Guid(p.id.clone()));
                fields.insert("PaymentType", FieldValueOwned::Str(p.kind.clone()));
                fields.insert("Status", FieldValueOwned::Str(p.status.clone()));
                fields.insert(
                    "Invoice.InvoiceID",
                    FieldValueOwned::Guid(p.invoice.clone()),
                );
                fields.insert(
                    "Invoice.Contact.ContactID",
                    FieldValueOwned::Guid(contact.clone()),
                );
                Row {
                    idx,
                    id: p.id.clone(),
                    updated: p.updated,
                    fields,
                    archived: false,
                    contact: Some(contact),
                    status: p.status.clone(),
                }
            })
            .collect(),
    }
}

/// One record as Xero writes it.
fn render(db: &Db, ep: Ep, idx: usize, cx: &Ctx<'_>) -> Value {
    let contact_ref = |id: &str| {
        let c = db.contact(id);
        json!({
            "ContactID": id,
            "Name": c.map(|c| c.name.clone()).unwrap_or_default(),
            "Addresses": [], "Phones": [], "ContactGroups": [], "ContactPersons": [],
            "HasValidationErrors": false
        })
    };
    match ep {
        Ep::Contacts => {
            let c = &db.contacts[idx];
            json!({
                "ContactID": c.id,
                "ContactNumber": format!("C{}", &c.id[..6]),
                "AccountNumber": c.account_number,
                "ContactStatus": c.status,
                "Name": c.name,
                "FirstName": c.first_name,
                "LastName": c.last_name,
                "EmailAddress": c.email,
                "BankAccountDetails": "",
                "Addresses": [
                    {"AddressType": "STREET", "AddressLine1": c.street, "City": "Auckland", "Region": "", "PostalCode": "1010", "Country": "New Zealand"},
                    {"AddressType": "POBOX", "City": "", "Region": "", "PostalCode": "", "Country": ""}
                ],
                "Phones": [
                    {"PhoneType": "DEFAULT", "PhoneNumber": c.phone, "PhoneAreaCode": "", "PhoneCountryCode": ""},
                    {"PhoneType": "MOBILE", "PhoneNumber": "", "PhoneAreaCode": "", "PhoneCountryCode": ""}
                ],
                "UpdatedDateUTC": ms_time(c.updated, true),
                "ContactGroups": [],
                "IsSupplier": c.is_supplier_only,
                "IsCustomer": cx.customers.contains_key(c.id.as_str()),
                "DefaultCurrency": c.currency,
                "Balances": {
                    "AccountsReceivable": {"Outstanding": num(cx.outstanding.get(c.id.as_str()).copied().unwrap_or_default()), "Overdue": 0.0},
                    "AccountsPayable": {"Outstanding": 0.0, "Overdue": 0.0}
                },
                "ContactPersons": [],
                "HasAttachments": false,
                "HasValidationErrors": false
            })
        }
        Ep::Invoices => {
            let i = &db.invoices[idx];
            let paid = match i.status.as_str() {
                "PAID" => i.total,
                "VOIDED" | "DELETED" => Decimal::ZERO,
                _ => i.total - i.amount_due,
            };
            json!({
                "Type": i.kind,
                "InvoiceID": i.id,
                "InvoiceNumber": i.number,
                "Reference": "",
                "Payments": [],
                "CreditNotes": [],
                "Prepayments": [],
                "Overpayments": [],
                "AmountDue": num(i.amount_due),
                "AmountPaid": num(paid),
                "AmountCredited": 0.0,
                "CurrencyRate": 1.0,
                "IsDiscounted": false,
                "HasAttachments": false,
                "HasErrors": false,
                "Contact": contact_ref(&i.contact),
                "DateString": format!("{}T00:00:00", i.date),
                "Date": ms_date(i.date),
                "DueDateString": format!("{}T00:00:00", i.due),
                "DueDate": ms_date(i.due),
                "Status": i.status,
                "LineAmountTypes": "Exclusive",
                "LineItems": [],
                "SubTotal": num(i.total),
                "TotalTax": 0.0,
                "Total": num(i.total),
                "UpdatedDateUTC": ms_time(i.updated, true),
                "CurrencyCode": i.currency
            })
        }
        Ep::CreditNotes => {
            let c = &db.credit_notes[idx];
            json!({
                "Type": c.kind,
                "CreditNoteID": c.id,
                "CreditNoteNumber": c.number,
                "Contact": contact_ref(&c.contact),
                "DateString": format!("{}T00:00:00", c.date),
                "Date": ms_date(c.date),
                "Status": c.status,
                "LineAmountTypes": "Exclusive",
                "LineItems": [],
                "SubTotal": num(c.total),
                "TotalTax": 0.0,
                "Total": num(c.total),
                "UpdatedDateUTC": ms_time(c.updated, true),
                "CurrencyCode": c.currency,
                "RemainingCredit": num(if c.status == "PAID" { Decimal::ZERO } else { c.total }),
                "Allocations": [],
                "HasAttachments": false
            })
        }
        Ep::Payments => {
            let p = &db.payments[idx];
            let inv = cx.invoices.get(p.invoice.as_str()).copied();
            let contact = inv.map(|i| i.contact.clone()).unwrap_or_default();
            json!({
                "PaymentID": p.id,
                "Date": ms_date(p.date),
                "BankAmount": num(p.amount),
                "Amount": num(p.amount),
                "Reference": "",
                "CurrencyRate": 1.0,
                "PaymentType": p.kind,
                "Status": p.status,
                "UpdatedDateUTC": ms_time(p.updated, false),
                "HasAccount": true,
                "IsReconciled": false,
                "Account": {"AccountID": "5690f1e8-1d02-4893-90c2-ee1a69eff942", "Code": "090"},
                "Invoice": {
                    "Type": inv.map(|i| i.kind.clone()).unwrap_or_default(),
                    "InvoiceID": p.invoice,
                    "InvoiceNumber": inv.map(|i| i.number.clone()).unwrap_or_default(),
                    "Payments": [], "CreditNotes": [], "Prepayments": [], "Overpayments": [],
                    "HasErrors": false, "IsDiscounted": false,
                    "Contact": contact_ref(&contact),
                    "LineItems": [],
                    "CurrencyCode": inv.map(|i| i.currency.clone()).unwrap_or_default()
                },
                "HasValidationErrors": false
            })
        }
    }
}

/// Request accounting: the in-flight count, released on drop (also when
/// the client goes away mid-answer).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Verdict {
    Go {
        day_left: u32,
        min_left: u32,
        app_left: u32,
    },
    Refused {
        problem: &'static str,
        retry_after: u64,
        day_left: u32,
        min_left: u32,
        app_left: u32,
    },
}

fn secs_until(t: Instant, now: Instant) -> u64 {
    let d = t.saturating_duration_since(now);
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Counts a request against the limits, or refuses it.
fn admit(s: &Shared, in_flight: usize) -> Verdict {
    let l = &s.cfg.limits;
    let now = Instant::now();
    let mut w = s.windows.lock().unwrap();
    let expire = |q: &mut VecDeque<Instant>, window: Duration| {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
    };
    expire(&mut w.minute, l.minute_window);
    expire(&mut w.app_minute, l.minute_window);
    if let Some(until) = w.day_exhausted_until {
        if until <= now {
            w.day_exhausted_until = None;
            w.day.clear();
        }
    }
    expire(&mut w.day, l.day_window);
    let left = |w: &Windows| {
        (
            l.per_day.saturating_sub(w.day.len() as u32),
            l.per_minute.saturating_sub(w.minute.len() as u32),
            l.app_per_minute.saturating_sub(w.app_minute.len() as u32),
        )
    };
    let (day_left, min_left, app_left) = left(&w);
    let refuse = |problem, retry_after| Verdict::Refused {
        problem,
        retry_after,
        day_left,
        min_left,
        app_left,
    };
    if let Some(until) = w.day_exhausted_until {
        return Verdict::Refused {
            problem: "day",
            retry_after: secs_until(until, now),
            day_left: 0,
            min_left,
            app_left,
        };
    }
    if day_left == 0 {
        return refuse("day", secs_until(w.day[0] + l.day_window, now));
    }
    if min_left == 0 {
        return refuse("minute", secs_until(w.minute[0] + l.minute_window, now));
    }
    if app_left == 0 {
        return refuse(
            "appminute",
            secs_until(w.app_minute[0] + l.minute_window, now),
        );
    }
    if in_flight > l.concurrent as usize {
        return refuse("concurrent", 1);
    }
    w.minute.push_back(now);
    w.app_minute.push_back(now);
    w.day.push_back(now);
    let in_window = w.minute.len() as u32;
    drop(w);
    let mut st = s.stats.lock().unwrap();
    st.counted += 1;
    st.max_per_minute_window = st.max_per_minute_window.max(in_window);
    Verdict::Go {
        day_left: day_left - 1,
        min_left: min_left - 1,
        app_left: app_left - 1,
    }
}

fn limit_headers(r: &mut Response, day: u32, min: u32, app: u32) {
    let h = r.headers_mut();
    h.insert("x-daylimit-remaining", day.to_string().parse().unwrap());
    h.insert("x-minlimit-remaining", min.to_string().parse().unwrap());
    h.insert("x-appminlimit-remaining", app.to_string().parse().unwrap());
}

fn too_many(problem: &str, retry_after: u64, day: u32, min: u32, app: u32) -> Response {
    let mut r = (StatusCode::TOO_MANY_REQUESTS, "").into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after.to_string().parse().unwrap(),
    );
    r.headers_mut()
        .insert("x-rate-limit-problem", problem.parse().unwrap());
    limit_headers(&mut r, day, min, app);
    r
}

fn next_fault(s: &Shared, ep: Ep) -> Option<Fault> {
    let mut q = s.faults.lock().unwrap();
    let pos = q
        .iter()
        .position(|(e, _)| e.as_deref().is_none_or(|e| e == ep.name()))?;
    q.remove(pos).map(|(_, f)| f)
}

async fn connections(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    s.stats.lock().unwrap().connections_requests += 1;
    if s.oauth.check_bearer(&headers).is_err() {
        return problem(StatusCode::UNAUTHORIZED, "TokenExpired: token expired");
    }
    let mut list = vec![(s.cfg.tenant_id.clone(), s.cfg.tenant_name.clone())];
    list.extend(s.cfg.other_tenants.iter().cloned());
    let body: Vec<Value> = list
        .into_iter()
        .map(|(id, name)| {
            json!({
                "id": request_id(),
                "authEventId": request_id(),
                "tenantId": id,
                "tenantType": "ORGANISATION",
                "tenantName": name,
                "createdDateUtc": "2026-01-02T03:04:05.1234560",
                "updatedDateUtc": "2026-01-02T03:04:05.1234560"
            })
        })
        .collect();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        Value::Array(body).to_string(),
    )
        .into_response()
}

async fn api(
    State(s): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let now_in_flight = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(Arc::clone(&s));
    {
        let mut st = s.stats.lock().unwrap();
        st.requests += 1;
        *st.by_endpoint.entry(endpoint.clone()).or_default() += 1;
        st.max_in_flight = st.max_in_flight.max(now_in_flight);
        let mut log = s.log.lock().unwrap();
        log.push_back(uri.to_string());
        if log.len() > 200 {
            log.pop_front();
        }
    }
    let Some(ep) = Ep::parse(&endpoint) else {
        return not_found(uri).await;
    };
    if s.oauth.check_bearer(&headers).is_err() {
        s.stats.lock().unwrap().unauthorized += 1;
        return problem(
            StatusCode::UNAUTHORIZED,
            "TokenExpired: token expired at 01/05/2026 00:00:00",
        );
    }
    let tenant_ok = headers
        .get("xero-tenant-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(&s.cfg.tenant_id));
    if !tenant_ok {
        s.stats.lock().unwrap().forbidden += 1;
        return problem(StatusCode::FORBIDDEN, "AuthenticationUnsuccessful");
    }
    let (day_left, min_left, app_left) = match admit(&s, now_in_flight) {
        Verdict::Go {
            day_left,
            min_left,
            app_left,
        } => (day_left, min_left, app_left),
        Verdict::Refused {
            problem,
            retry_after,
            day_left,
            min_left,
            app_left,
        } => {
            *s.stats
                .lock()
                .unwrap()
                .rate_limited
                .entry(problem.to_string())
                .or_default() += 1;
            return too_many(problem, retry_after, day_left, min_left, app_left);
        }
    };
    let mut r = answer(&s, ep, &headers, &uri).await;
    limit_headers(&mut r, day_left, min_left, app_left);
    r
}

async fn answer(s: &Arc<Shared>, ep: Ep, headers: &HeaderMap, uri: &Uri) -> Response {
    let fault = next_fault(s, ep);
    match &fault {
        Some(Fault::ServerError(code)) => {
            s.stats.lock().unwrap().server_errors += 1;
            return (
                StatusCode::from_u16(*code).unwrap(),
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Service Unavailable</body></html>",
            )
                .into_response();
        }
        Some(Fault::RateLimited {
            problem,
            retry_after,
        }) => {
            *s.stats
                .lock()
                .unwrap()
                .rate_limited
                .entry(problem.to_string())
                .or_default() += 1;
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "").into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                retry_after.to_string().parse().unwrap(),
            );
            r.headers_mut()
                .insert("x-rate-limit-problem", problem.parse().unwrap());
            return r;
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    let pairs = query_pairs(uri);
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in pairs {
        if !ep.params().contains(&k.as_str()) {
            s.stats.lock().unwrap().bad_requests += 1;
            return api_exception(
                "ValidationException",
                &format!(
                    "The query parameter '{k}' is not supported by {}",
                    ep.name()
                ),
            );
        }
        params.insert(k, v);
    }
    let bad = |m: String| {
        s.stats.lock().unwrap().bad_requests += 1;
        api_exception("QueryParseException", &m)
    };
    let since = match headers.get(header::IF_MODIFIED_SINCE) {
        Some(v) => {
            let text = v.to_str().unwrap_or("").to_string();
            s.stats.lock().unwrap().if_modified_since.push(text.clone());
            match parse_if_modified_since(&text) {
                Some(t) => Some(t),
                None => {
                    return bad(format!(
                        "The If-Modified-Since header `{text}` is not a date"
                    ))
                }
            }
        }
        None => None,
    };
    let filter = match params.get("where") {
        Some(w) => match parse_where(w) {
            Ok(e) => {
                let mut used = Vec::new();
                fields_used(&e, &mut used);
                if let Some(f) = used
                    .iter()
                    .find(|f| !ep.where_fields().contains(&f.as_str()))
                {
                    return bad(format!(
                        "No property or field '{f}' exists in type '{}'",
                        ep.type_name()
                    ));
                }
                Some(e)
            }
            Err(m) => return bad(m),
        },
        None => None,
    };
    let order = params.get("order").map(|o| o.trim().to_string());
    let (order_field, descending) = match order.as_deref() {
        None => ("UpdatedDateUTC".to_string(), false),
        Some(o) => {
            let mut parts = o.split_whitespace();
            let f = parts.next().unwrap_or("").to_string();
            let dir = parts.next().unwrap_or("ASC").to_ascii_uppercase();
            if parts.next().is_some() || !matches!(dir.as_str(), "ASC" | "DESC") {
                return bad(format!("Order `{o}` is not supported"));
            }
            if f != "UpdatedDateUTC" && f != ep.id_field() {
                return bad(format!(
                    "No property or field '{f}' exists in type '{}'",
                    ep.type_name()
                ));
            }
            (f, dir == "DESC")
        }
    };
    let page: usize = match params.get("page").map(|p| p.parse::<usize>()) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        _ => return bad("page must be a number of 1 or more".into()),
    };
    let page_size: usize = match params.get("pageSize").map(|p| p.parse::<usize>()) {
        None => 100,
        Some(Ok(p)) if p >= 1 => p.min(1000),
        _ => return bad("pageSize must be a number of 1 or more".into()),
    };
    let include_archived = params
        .get("includeArchived")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let contact_ids: Option<Vec<String>> = match params.get("ContactIDs") {
        Some(v) => {
            let ids: Vec<String> = v
                .split(',')
                .map(|x| x.trim().to_ascii_lowercase())
                .collect();
            if let Some(badid) = ids.iter().find(|x| !uuid_shape(x)) {
                return bad(format!("ContactIDs: `{badid}` is not a Guid"));
            }
            Some(ids)
        }
        None => None,
    };
    let statuses: Option<Vec<String>> = params
        .get("Statuses")
        .map(|v| v.split(',').map(|x| x.trim().to_string()).collect());
    let ids_param: Option<Vec<String>> = params.get("IDs").map(|v| {
        v.split(',')
            .map(|x| x.trim().to_ascii_lowercase())
            .collect()
    });
    if uri.query().map_or(0, str::len) > 4000 {
        return bad("The query string is too long".into());
    }

    // Select, order, page.
    let (mut records, served_ids, item_count, page_count) = {
        let db = s.db.lock().unwrap();
        let cx = ctx(&db);
        let mut selected: Vec<Row> = rows(&db, ep, &cx)
            .into_iter()
            .filter(|r| include_archived || !r.archived)
            .filter(|r| since.is_none_or(|t| r.updated > t * 1000))
            .filter(|r| {
                contact_ids
                    .as_ref()
                    .is_none_or(|ids| r.contact.as_ref().is_some_and(|c| ids.contains(c)))
            })
            .filter(|r| statuses.as_ref().is_none_or(|st| st.contains(&r.status)))
            .filter(|r| ids_param.as_ref().is_none_or(|ids| ids.contains(&r.id)))
            .filter(|r| {
                filter.as_ref().is_none_or(|e| {
                    let get = |f: &str| -> Option<FieldValue> {
                        r.fields.get(f).map(|v| match v {
                            FieldValueOwned::Str(s) => FieldValue::Str(s.clone()),
                            FieldValueOwned::Guid(s) => FieldValue::Guid(s.clone()),
                            FieldValueOwned::Bool(b) => FieldValue::Bool(*b),
                        })
                    };
                    matches(e, &get)
                })
            })
            .collect();
        selected.sort_by(|a, b| {
            let k = if order_field == "UpdatedDateUTC" {
                a.updated.cmp(&b.updated).then_with(|| a.id.cmp(&b.id))
            } else {
                a.id.cmp(&b.id)
            };
            if descending {
                k.reverse()
            } else {
                k
            }
        });
        let item_count = selected.len();
        let page_count = item_count.div_ceil(page_size).max(1);
        let served: Vec<&Row> = selected
            .iter()
            .skip((page - 1) * page_size)
            .take(page_size)
            .collect();
        let records: Vec<Value> = served.iter().map(|r| render(&db, ep, r.idx, &cx)).collect();
        let ids: Vec<String> = served.iter().map(|r| r.id.clone()).collect();
        (records, ids, item_count, page_count)
    };

    if matches!(fault, Some(Fault::MalformedRecord)) {
        if let Some(first) = records.first_mut() {
            if ep != Ep::Contacts {
                first["Status"] = json!("AUTHORISED");
            }
            first["Date"] = json!("2026-13-45");
            first["Total"] = json!("twelve");
            first["Amount"] = json!("twelve");
            first["ContactStatus"] = json!("SOMETHING_ELSE");
        }
    }
    if let Some(Fault::TouchAfterPage(n)) = fault {
        let mut db = s.db.lock().unwrap();
        for id in served_ids.iter().take(n) {
            let t = db.tick(211);
            match ep {
                Ep::Contacts => {
                    db.contacts
                        .iter_mut()
                        .find(|c| &c.id == id)
                        .unwrap()
                        .updated = t
                }
                Ep::Invoices => {
                    db.invoices
                        .iter_mut()
                        .find(|c| &c.id == id)
                        .unwrap()
                        .updated = t
                }
                Ep::CreditNotes => {
                    db.credit_notes
                        .iter_mut()
                        .find(|c| &c.id == id)
                        .unwrap()
                        .updated = t
                }
                Ep::Payments => {
                    db.payments
                        .iter_mut()
                        .find(|c| &c.id == id)
                        .unwrap()
                        .updated = t
                }
            }
        }
    }

    let accepts_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("application/json"));
    let now_ms = s.db.lock().unwrap().clock;
    if !accepts_json {
        s.stats.lock().unwrap().xml_answers += 1;
        let xml = format!(
            "<Response xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Id>{}</Id><Status>OK</Status><ProviderName>erpsync tests</ProviderName><DateTimeUTC>{}</DateTimeUTC><{} /></Response>",
            request_id(),
            Utc.timestamp_millis_opt(now_ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.f"),
            ep.name()
        );
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            xml,
        )
            .into_response();
    }
    let body = json!({
        "Id": request_id(),
        "Status": "OK",
        "ProviderName": "erpsync tests",
        "DateTimeUTC": ms_time(now_ms, false),
        "pagination": {
            "page": page,
            "pageSize": page_size,
            "pageCount": page_count,
            "itemCount": item_count
        },
        ep.name(): Value::Array(std::mem::take(&mut records)),
    })
    .to_string();
    s.stats.lock().unwrap().ok += 1;
    if matches!(fault, Some(Fault::TruncatedBody)) {
        let half = Bytes::from(body.as_bytes()[..body.len() / 2].to_vec());
        let stream = futures::stream::iter(vec![
            Ok::<Bytes, std::io::Error>(half),
            Err(std::io::Error::other("connection reset")),
        ]);
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The mock's own `where` parser.
#[test]
fn mock_where_clauses_parse_and_match() {
    let e = parse_where(
        r#"PaymentType=="ACCRECPAYMENT" AND (Invoice.Contact.ContactID==Guid("0C0FFEE0-0000-4000-8000-00000000BEEF") OR Status!="DELETED")"#,
    )
    .unwrap();
    let get = |f: &str| match f {
        "PaymentType" => Some(FieldValue::Str("ACCRECPAYMENT".into())),
        "Invoice.Contact.ContactID" => Some(FieldValue::Guid(
            "0c0ffee0-0000-4000-8000-00000000beef".into(),
        )),
        "Status" => Some(FieldValue::Str("DELETED".into())),
        _ => None,
    };
    assert!(matches(&e, &get));
    assert!(parse_where(r#"Type=="ACCREC" AND"#).is_err());
    assert!(parse_where(r#"Type="ACCREC""#).is_err());
    assert!(parse_where(r#"Contact.ContactID==Guid("nope")"#).is_err());
}
