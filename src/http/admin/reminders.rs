//! Admin API routes for reminders: the candidate list (JSON pages and a
//! streamed CSV), STOP flags, invoice holds, and one customer's standing.
//!
//! Handlers parse and check the request, then call [`crate::reminders`];
//! they read `app.config().reminders` on every request, so a config reload
//! takes effect on the next call. A refused request changes nothing. Query
//! strings refuse unknown parameters; scans run on a blocking thread.
//!
//! | route | what |
//! |---|---|
//! | `GET /reminders/candidates` | a page of the list; `scenario`, `selected`, `as_of`, `connector`, `cursor`, `limit` |
//! | `GET /reminders/candidates.csv` | the whole list as CSV, streamed; same filters, no paging |
//! | `GET /reminders/customers/{connector:id}` | one customer's standing (`as_of`) |
//! | `GET /reminders/summary` | counts and totals per currency of the whole list; same filters, no paging |
//! | `POST /reminders/stop` | `{"customer", "reason", "until"?: "YYYY-MM-DD", "note"?, "actor"?}` |
//! | `POST /reminders/unstop` | `{"customer", "reason", "actor"?}` |
//! | `POST /reminders/hold`, `/reminders/release` | `{"invoice": "connector:id", "reason", "actor"?}` |
//! | `GET /reminders/stops`, `/reminders/holds` | the flags set (`limit`) |

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::config::Config;
use crate::http::auth::Principal;
use crate::http::error::{bad_path, ApiError, JsonBody, NoQuery, Query};
use crate::http::{blocking, csv_safe};
use crate::model::CustomerKey;
use crate::reminders::flags::{self, FlagOutcome, HoldEntry, Request, StopEntry, StopTerms};
use crate::reminders::{self, Candidate, Explanation, Filter, Reason, ReminderError};
use crate::store::valid_id;

/// Default and largest page of the JSON list.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Customers looked at per JSON page at most: a sparse filter answers a
/// short (even empty) page with a cursor rather than scanning everything.
pub const SCAN_BUDGET: u64 = 10_000;
/// Customers looked at per CSV chunk.
const CSV_CHUNK_CUSTOMERS: u64 = 500;
/// Actor recorded when the request does not name one.
pub const DEFAULT_ACTOR: &str = "api";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/reminders/candidates", get(candidates))
        .route("/reminders/candidates.csv", get(candidates_csv))
        .route("/reminders/summary", get(summary))
        .route("/reminders/customers/{customer}", get(customer))
        .route("/reminders/stop", post(stop))
        .route("/reminders/unstop", post(unstop))
        .route("/reminders/hold", post(hold))
        .route("/reminders/release", post(release))
        .route("/reminders/stops", get(stops))
        .route("/reminders/holds", get(holds))
}

impl From<ReminderError> for ApiError {
    fn from(e: ReminderError) -> Self {
        match e {
            ReminderError::NotFound(m) => ApiError::not_found(m),
            ReminderError::Conflict(m) => ApiError::conflict(m),
            ReminderError::Invalid(m) => ApiError::bad_request(m),
            ReminderError::Store(e) => e.into(),
        }
    }
}

// ----- query parsing -----------------------------------------------------------

/// Query parameters of the list; all text so errors are ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    scenario: Option<String>,
    selected: Option<String>,
    as_of: Option<String>,
    connector: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    as_of: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    limit: Option<String>,
}

fn parse_as_of(s: Option<&str>) -> Result<NaiveDate, ApiError> {
    match s {
        None => Ok(reminders::today()),
        Some(s) => s.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "as_of: `{s}` is not a date; use YYYY-MM-DD, e.g. 2026-03-31"
            ))
        }),
    }
}

fn parse_limit(s: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match s {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit: `{s}` is not a number between 1 and {max}"
            ))),
        },
    }
}

fn parse_customer(s: &str, what: &str) -> Result<CustomerKey, ApiError> {
    let k = CustomerKey::parse(s).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
    if !valid_id(&k.connector) || !valid_id(&k.external_id) {
        return Err(ApiError::bad_request(format!(
            "{what}: `{}` contains a NUL character",
            s.escape_debug()
        )));
    }
    Ok(k)
}

/// `connector:invoice_id`.
fn parse_invoice(s: &str) -> Result<(String, String), ApiError> {
    match s.split_once(':') {
        Some((c, id)) if !c.is_empty() && !id.is_empty() && valid_id(c) && valid_id(id) => {
            Ok((c.to_string(), id.to_string()))
        }
        _ => Err(ApiError::bad_request(format!(
            "invoice: `{}` is not an invoice reference; expected CONNECTOR:INVOICE_ID, e.g. demo:INV000042",
            s.escape_debug()
        ))),
    }
}

/// The filter, date and cursor of a list request, checked against `cfg`.
fn list_params(
    cfg: &Config,
    q: &ListQuery,
) -> Result<(Filter, NaiveDate, Option<CustomerKey>), ApiError> {
    let selected = match q.selected.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "selected: `{other}` is not true or false"
            )))
        }
    };
    if let Some(c) = &q.connector {
        if cfg.connector(c).is_none() {
            return Err(ApiError::bad_request(format!(
                "connector: no connector `{c}` is configured"
            )));
        }
    }
    let filter = Filter {
        connector: q.connector.clone(),
        scenario: q.scenario.clone(),
        selected,
    };
    filter.validate(&cfg.reminders)?;
    let as_of = parse_as_of(q.as_of.as_deref())?;
    let after = match &q.cursor {
        None => None,
        Some(c) => {
            let k = parse_customer(c, "cursor")?;
            if q.connector
                .as_ref()
                .is_some_and(|conn| *conn != k.connector)
            {
                return Err(ApiError::bad_request(format!(
                    "cursor: `{c}` belongs to another connector than the one asked for"
                )));
            }
            Some(k)
        }
    };
    Ok((filter, as_of, after))
}

// ----- the list ------------------------------------------------------------------

/// One page of the candidate list.
#[derive(Debug, Serialize)]
pub struct CandidatePage {
    pub as_of: NaiveDate,
    pub count: usize,
    pub candidates: Vec<Candidate>,
    /// Pass as `cursor` for the next page; null at the end. A page may hold
    /// fewer than `limit` rows (even none) and still have a next page.
    pub next_cursor: Option<String>,
    /// Customers looked at for this page.
    pub scanned: u64,
}

async fn candidates(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<CandidatePage>, ApiError> {
    let cfg = app.config();
    let (filter, as_of, after) = list_params(&cfg, &q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    // Up to SCAN_BUDGET customers with their records.
    let s = blocking(move || {
        reminders::scan(
            &app.store,
            &cfg.reminders,
            &filter,
            as_of,
            after.as_ref(),
            limit,
            SCAN_BUDGET,
        )
    })
    .await??;
    Ok(Json(CandidatePage {
        as_of,
        count: s.items.len(),
        candidates: s.items,
        next_cursor: if s.done {
            None
        } else {
            s.last.map(|k| k.to_string())
        },
        scanned: s.scanned,
    }))
}

pub const CSV_HEADER: [&str; 11] = [
    "customer",
    "name",
    "email",
    "scenario",
    "selected",
    "reasons",
    "total_due",
    "overdue_invoices",
    "oldest_due_date",
    "held_invoices",
    "balance",
];

/// Writes rows (and the header first when asked) as CSV bytes. Text cells a
/// spreadsheet would run as a formula get a leading `'` ([`csv_safe`]);
/// numbers (the balance may be negative) stay numbers.
fn csv_chunk(rows: &[Candidate], header: bool) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record(CSV_HEADER)?;
    }
    for c in rows {
        let total = c
            .total_due
            .iter()
            .map(|(cur, a)| format!("{cur} {a}"))
            .collect::<Vec<_>>()
            .join("; ");
        let reasons = c
            .reasons
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(";");
        w.write_record([
            csv_safe(&c.customer).as_ref(),
            &csv_safe(&c.name),
            &csv_safe(c.email.as_deref().unwrap_or("")),
            &csv_safe(c.scenario.as_deref().unwrap_or("")),
            if c.selected { "true" } else { "false" },
            &reasons,
            // `EUR 12.50; USD 3`: text led by the ERP's currency code.
            &csv_safe(&total),
            &c.overdue_invoices.to_string(),
            &c.oldest_due_date.map(|d| d.to_string()).unwrap_or_default(),
            &c.held_invoices.to_string(),
            &c.balance.to_string(),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Where the CSV stream is.
struct CsvState {
    app: Arc<App>,
    /// The config at the start of the export: one export, one config.
    cfg: Arc<Config>,
    filter: Filter,
    as_of: NaiveDate,
    after: Option<CustomerKey>,
    started: bool,
    done: bool,
}

async fn candidates_csv(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    if q.limit.is_some() || q.cursor.is_some() {
        return Err(ApiError::bad_request(
            "the CSV export is the whole list: it takes no `limit` or `cursor`",
        ));
    }
    let cfg = app.config();
    let (filter, as_of, _) = list_params(&cfg, &q)?;
    let st = CsvState {
        app,
        cfg,
        filter,
        as_of,
        after: None,
        started: false,
        done: false,
    };
    // Each chunk looks at a bounded number of customers, so memory stays
    // flat however long the list is.
    let stream = futures::stream::unfold(st, |st| async move {
        if st.done {
            return None;
        }
        let chunk = blocking(move || {
            let chunk = reminders::scan(
                &st.app.store,
                &st.cfg.reminders,
                &st.filter,
                st.as_of,
                st.after.as_ref(),
                usize::MAX,
                CSV_CHUNK_CUSTOMERS,
            )
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let bytes = csv_chunk(&s.items, !st.started).map_err(|e| e.to_string())?;
                Ok((s, bytes))
            });
            (chunk, st)
        })
        .await;
        let (chunk, mut st) = match chunk {
            Ok(v) => v,
            Err(e) => {
                // The blocking task was cancelled (shutdown): end the body short.
                tracing::error!(error = %e.message, "reminder CSV export failed midway");
                return None;
            }
        };
        match chunk {
            Ok((s, bytes)) => {
                st.started = true;
                st.done = s.done;
                st.after = s.last.or(st.after);
                Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), st))
            }
            Err(e) => {
                // Headers are sent: all we can do is cut the body short.
                tracing::error!(error = %e, "reminder CSV export failed midway");
                st.done = true;
                Some((Err(std::io::Error::other(e)), st))
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"reminder-candidates-{as_of}.csv\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn customer(
    State(app): State<Arc<App>>,
    customer: Result<Path<String>, PathRejection>,
    Query(q): Query<AsOfQuery>,
) -> Result<Json<Explanation>, ApiError> {
    let Path(customer) = customer.map_err(bad_path)?;
    let key = parse_customer(&customer, "customer")?;
    let as_of = parse_as_of(q.as_of.as_deref())?;
    Ok(Json(reminders::explain(&app, &key, as_of)?))
}

/// Counts and money of the whole candidate list (what a page cannot say).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub as_of: NaiveDate,
    pub listed: u64,
    pub selected: u64,
    pub unchecked: u64,
    /// Unchecked rows per reason (a row with two reasons counts for both).
    pub unchecked_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// Money due of every listed row, per currency.
    pub total_due: std::collections::BTreeMap<String, rust_decimal::Decimal>,
    /// Money due of the selected rows, per currency.
    pub selected_due: std::collections::BTreeMap<String, rust_decimal::Decimal>,
}

impl Summary {
    fn add(&mut self, c: &Candidate) {
        self.listed += 1;
        if c.selected {
            self.selected += 1;
        } else {
            self.unchecked += 1;
        }
        for r in &c.reasons {
            *self
                .unchecked_by_reason
                .entry(Reason::as_str(*r))
                .or_default() += 1;
        }
        for (cur, amount) in &c.total_due {
            *self.total_due.entry(cur.clone()).or_default() += *amount;
            if c.selected {
                *self.selected_due.entry(cur.clone()).or_default() += *amount;
            }
        }
    }
}

/// Customers looked at per store pass of the summary.
const SUMMARY_CHUNK: u64 = 2000;

async fn summary(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Summary>, ApiError> {
    if q.limit.is_some() || q.cursor.is_some() {
        return Err(ApiError::bad_request(
            "the summary covers the whole list: it takes no `limit` or `cursor`",
        ));
    }
    let cfg = app.config();
    let (filter, as_of, _) = list_params(&cfg, &q)?;
    // Every customer with its records, one chunk at a time: memory stays flat.
    let out = blocking(move || {
        let mut out = Summary {
            as_of,
            ..Summary::default()
        };
        let mut after: Option<CustomerKey> = None;
        loop {
            let s = reminders::scan(
                &app.store,
                &cfg.reminders,
                &filter,
                as_of,
                after.as_ref(),
                usize::MAX,
                SUMMARY_CHUNK,
            )?;
            s.items.iter().for_each(|c| out.add(c));
            if s.done {
                return Ok::<_, ReminderError>(out);
            }
            after = s.last.or(after);
        }
    })
    .await??;
    Ok(Json(out))
}

// ----- flags ---------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    customer: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    actor: Option<String>,
    /// `stop` only: the last day of the STOP (`YYYY-MM-DD`).
    #[serde(default)]
    until: Option<String>,
    /// `stop` only: a note kept with the flag.
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    invoice: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    actor: Option<String>,
}

fn request<'a>(reason: &'a str, actor: &'a str) -> Request<'a> {
    Request {
        actor,
        reason,
        now: chrono::Utc::now(),
    }
}

async fn stop(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<StopBody>,
) -> Result<Json<FlagOutcome>, ApiError> {
    let key = parse_customer(&b.customer, "customer")?;
    let until = b
        .until
        .as_deref()
        .map(|u| {
            u.parse::<NaiveDate>().map_err(|_| {
                ApiError::bad_request(format!(
                    "until: `{}` is not a date; use YYYY-MM-DD, e.g. 2026-06-30",
                    u.escape_debug()
                ))
            })
        })
        .transpose()?;
    let terms = StopTerms {
        until,
        note: b.note.clone(),
    };
    let actor = principal.actor(b.actor.as_deref(), DEFAULT_ACTOR);
    Ok(Json(
        flags::stop_with(&app.store, &key, &request(&b.reason, &actor), &terms).await?,
    ))
}

async fn unstop(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<StopBody>,
) -> Result<Json<FlagOutcome>, ApiError> {
    if b.until.is_some() || b.note.is_some() {
        return Err(ApiError::bad_request(
            "`until` and `note` are terms of a STOP; unstop takes only `customer`, `reason` and `actor`",
        ));
    }
    let key = parse_customer(&b.customer, "customer")?;
    let actor = principal.actor(b.actor.as_deref(), DEFAULT_ACTOR);
    Ok(Json(
        flags::unstop(&app.store, &key, &request(&b.reason, &actor)).await?,
    ))
}

async fn hold(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<HoldBody>,
) -> Result<Json<FlagOutcome>, ApiError> {
    let (conn, inv) = parse_invoice(&b.invoice)?;
    let actor = principal.actor(b.actor.as_deref(), DEFAULT_ACTOR);
    Ok(Json(
        flags::hold(&app.store, &conn, &inv, &request(&b.reason, &actor)).await?,
    ))
}

async fn release(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<HoldBody>,
) -> Result<Json<FlagOutcome>, ApiError> {
    let (conn, inv) = parse_invoice(&b.invoice)?;
    let actor = principal.actor(b.actor.as_deref(), DEFAULT_ACTOR);
    Ok(Json(
        flags::release(&app.store, &conn, &inv, &request(&b.reason, &actor)).await?,
    ))
}

#[derive(Debug, Serialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    /// More exist than `limit`.
    pub truncated: bool,
}

async fn stops(
    State(app): State<Arc<App>>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Listing<StopEntry>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref(), MAX_LIMIT, 10 * MAX_LIMIT)?;
    let (items, truncated) = flags::stops(&app.store, limit)?;
    Ok(Json(Listing { items, truncated }))
}

async fn holds(
    State(app): State<Arc<App>>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Listing<HoldEntry>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref(), MAX_LIMIT, 10 * MAX_LIMIT)?;
    let (items, truncated) = flags::holds(&app.store, limit)?;
    Ok(Json(Listing { items, truncated }))
}
