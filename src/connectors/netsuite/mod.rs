//! NetSuite connector (`kind = "netsuite"`): reads customers, invoices,
//! payments and credit memos over SuiteQL with token-based authentication.
//!
//! Owns the wire protocol: signing ([`auth`]), query text and row mapping
//! ([`suiteql`]), config ([`options`]), keyset paging, incremental passes with
//! an overlap window, deletions from `DeletedRecord`, and the mapping of
//! NetSuite's HTTP answers to [`ConnectorError`]. Every request goes through
//! [`Budget::call`]; this module never sleeps, retries or throttles on its
//! own, never writes to the store, and never logs a secret or a header.
//!
//! # Cursor
//!
//! `Cursor.0` is JSON ([`StreamCursor`]). An incremental stream runs in
//! passes. A pass reads `lastmodifieddate >= since - overlap AND id > after_id
//! ORDER BY id` one page at a time (`limit=page_size&offset=0`: the keyset
//! does the paging, so SuiteQL's 100,000-row offset cap never applies), then
//! `DeletedRecord` rows of the stream's record types deleted at or after
//! `since - overlap` (or `pass_start - overlap` on the first pass), paged by
//! record id. The pass then ends with `since = pass_start`, the local UTC
//! clock when its first page was requested. Records changed while a pass runs
//! are read again by the next one; the store keeps the newer version.
//! Clock skew between this host and NetSuite must stay below the overlap.
//!
//! # Errors
//!
//! 429 (and 400 with a concurrency error code) is
//! [`ConnectorError::RateLimited`] with `Retry-After` when sent. A 401 is
//! [`ConnectorError::Auth`] unless a request succeeded within the last ten
//! minutes: NetSuite answers `INVALID_LOGIN` when an account is over its
//! concurrency limit, so then it is `RateLimited` too. 403 is `Auth`, other
//! 4xx `Rejected`, 5xx `Server`, an unreadable 2xx body `Protocol`. Messages
//! carry NetSuite's `o:errorCode: detail` texts, never request headers.

pub mod auth;
pub mod options;
pub mod suiteql;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{duration, OptionsCheck};
use crate::connectors::{
    parse_retry_after, Budget, BuildContext, Connector, ConnectorError, ConnectorKind, Cursor,
    Lane, NativeExclusion, Page, Partitioning, NATIVE_INACTIVE, NATIVE_INTERCOMPANY,
};
use crate::model::{Customer, Entity, Record, Timestamp};

pub use options::NetsuiteOptions;
use suiteql::{QuerySettings, Row, Scope, SuiteqlResponse};

/// The `netsuite` kind.
pub struct Netsuite;

impl ConnectorKind for Netsuite {
    const NAME: &'static str = "netsuite";
    type Options = NetsuiteOptions;
    const NATIVE_EXCLUSIONS: &'static [NativeExclusion] = &[NATIVE_INACTIVE, NATIVE_INTERCOMPANY];

    fn check(options: &NetsuiteOptions, check: &mut OptionsCheck<'_>) {
        options.check(check);
    }

    /// Internal ids are digits.
    fn check_customer_id(id: &str) -> Result<(), String> {
        crate::connectors::registry::check_digits(id, "NetSuite")
    }

    fn build(options: &NetsuiteOptions, cx: BuildContext) -> Result<Arc<dyn Connector>, String> {
        Ok(Arc::new(NetsuiteConnector::new(
            options,
            &cx.base_dir,
            cx.budget,
        )?))
    }
}

/// Error codes NetSuite uses when a request is refused for concurrency
/// rather than for what it asks.
const CONCURRENCY_CODES: &[&str] = &[
    "SSS_REQUEST_LIMIT_EXCEEDED",
    "WS_REQUEST_BLOCKED",
    "CONCURRENCY_LIMIT_EXCEEDED",
    "WS_CONCUR_SESSION_DISALLWD",
];

/// Which part of a pass a cursor is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Records,
    Deleted,
}

/// The position in one stream (the JSON in `Cursor.0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCursor {
    /// Start of the last completed pass (UTC); `None` before the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// When the current pass began (UTC); set by its first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_start: Option<Timestamp>,
    #[serde(default)]
    pub phase: Phase,
    /// Keyset position among the records of this pass.
    #[serde(default)]
    pub after_id: u64,
    /// Keyset position among the deletions of this pass.
    #[serde(default)]
    pub deleted_after_id: u64,
    /// Set on a range of a partitioned first sync: the range is the ids
    /// after `after_id` up to this one, read once, without deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<u64>,
}

impl StreamCursor {
    pub fn decode(cursor: &Cursor) -> Result<Self, ConnectorError> {
        if cursor.is_start() {
            return Ok(StreamCursor::default());
        }
        serde_json::from_str(&cursor.0).map_err(|e| {
            ConnectorError::Config(format!(
                "stored NetSuite cursor is unreadable ({e}); reset the stream to sync from the start"
            ))
        })
    }

    pub fn encode(&self) -> Cursor {
        Cursor(serde_json::to_string(self).expect("cursor serialises"))
    }
}

pub struct NetsuiteConnector {
    settings: QuerySettings,
    /// The settings for an account without OneWorld: no subsidiary join,
    /// and no `representingsubsidiary` (a OneWorld-only column) when that
    /// is the intercompany column.
    single_settings: QuerySettings,
    /// The `oneworld` option (unset: detect).
    oneworld: Option<bool>,
    /// The account turned out to have no OneWorld (or `oneworld = false`).
    single: std::sync::atomic::AtomicBool,
    signer: auth::Signer,
    client: reqwest::Client,
    /// `<base>/services/rest/query/v1/suiteql?limit=N&offset=0`.
    endpoint: reqwest::Url,
    budget: Arc<Budget>,
    overlap: chrono::TimeDelta,
    page_size: u32,
    resync_batch_size: usize,
    /// When a request last succeeded. Shortly after a success, a 401
    /// INVALID_LOGIN is NetSuite's way of saying "over the concurrency
    /// limit"; before any success, or long after the last one, it means the
    /// credentials are wrong (or were revoked).
    last_success: Mutex<Option<Instant>>,
}

/// The customer column that marks intercompany customers in OneWorld
/// accounts; it does not exist without OneWorld.
const ONEWORLD_INTERCOMPANY_COLUMN: &str = "representingsubsidiary";

/// Whether a refused customer query says the account has no subsidiary
/// relationships (an account without OneWorld).
fn lacks_subsidiaries(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("customersubsidiaryrelationship") && m.contains("not found")
}

/// How long after the last successful request a 401 is still read as
/// concurrency pushback rather than as a credentials problem.
const INVALID_LOGIN_GRACE: Duration = Duration::from_secs(600);

impl std::fmt::Debug for NetsuiteConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetsuiteConnector")
            .field("endpoint", &self.endpoint.as_str())
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl NetsuiteConnector {
    /// Validates the options, reads the four secrets and builds the HTTP
    /// client. Errors name files and keys, never secret values.
    pub fn new(
        options: &NetsuiteOptions,
        base_dir: &Path,
        budget: Arc<Budget>,
    ) -> Result<NetsuiteConnector, String> {
        let problems = options.validate(base_dir);
        if !problems.is_empty() {
            return Err(format!(
                "invalid [connectors.netsuite] options: {}",
                problems.join("; ")
            ));
        }
        let sources = options.secret_sources(base_dir).map_err(|p| p.join("; "))?;
        let signer = auth::Signer::new(
            options::account_realm(&options.account_id),
            sources.consumer_key.load()?,
            sources.consumer_secret.load()?,
            sources.token_id.load()?,
            sources.token_secret.load()?,
        );
        let page_size = options.page_size;
        let mut endpoint = reqwest::Url::parse(&format!(
            "{}/services/rest/query/v1/suiteql",
            options.effective_base_url()?
        ))
        .map_err(|e| format!("base_url: {e}"))?;
        endpoint
            .query_pairs_mut()
            .append_pair("limit", &page_size.to_string())
            .append_pair("offset", "0");
        let timeout = duration::parse(&options.request_timeout)
            .map_err(|e| format!("request_timeout: {e}"))?;
        let overlap = duration::parse(&options.overlap).map_err(|e| format!("overlap: {e}"))?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("erpsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let settings = QuerySettings {
            custom_fields: options.custom_fields.clone(),
            display_fields: options.display_fields.clone(),
            oneworld: true,
            intercompany_column: Some(options.intercompany_column.clone())
                .filter(|c| !c.is_empty()),
            on_hold_column: options.on_hold_column.clone(),
            tz: options::parse_timezone(&options.timezone)?,
        };
        let single_settings = QuerySettings {
            oneworld: false,
            intercompany_column: settings
                .intercompany_column
                .clone()
                .filter(|c| c != ONEWORLD_INTERCOMPANY_COLUMN),
            ..settings.clone()
        };
        Ok(NetsuiteConnector {
            settings,
            single_settings,
            oneworld: options.oneworld,
            single: std::sync::atomic::AtomicBool::new(options.oneworld == Some(false)),
            signer,
            client,
            endpoint,
            budget,
            overlap: chrono::TimeDelta::from_std(overlap)
                .map_err(|_| "overlap: too long".to_string())?,
            page_size,
            resync_batch_size: options.resync_batch_size,
            last_success: Mutex::new(None),
        })
    }

    /// Runs one SuiteQL query (one page) under the budget.
    async fn query(&self, lane: Lane, sql: &str) -> Result<SuiteqlResponse, ConnectorError> {
        tracing::trace!(query = sql, "suiteql");
        let body = serde_json::json!({ "q": sql });
        self.budget
            .call(lane, || async {
                // Fresh nonce and timestamp on every attempt.
                let authorization = self.signer.authorize_now("POST", &self.endpoint);
                let response = self
                    .client
                    .post(self.endpoint.clone())
                    .header(reqwest::header::AUTHORIZATION, authorization)
                    .header("Prefer", "transient")
                    .json(&body)
                    .send()
                    .await
                    .map_err(ConnectorError::from_reqwest)?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let bytes = response
                    .bytes()
                    .await
                    .map_err(ConnectorError::from_reqwest)?;
                if (200..300).contains(&status) {
                    let parsed: SuiteqlResponse = serde_json::from_slice(&bytes).map_err(|e| {
                        ConnectorError::Protocol(format!("SuiteQL response is not readable: {e}"))
                    })?;
                    *self.last_success.lock().expect("poisoned") = Some(Instant::now());
                    return Ok(parsed);
                }
                let recent_success = self
                    .last_success
                    .lock()
                    .expect("poisoned")
                    .is_some_and(|t| t.elapsed() < INVALID_LOGIN_GRACE);
                Err(classify_failure(
                    status,
                    retry_after,
                    &bytes,
                    recent_success,
                ))
            })
            .await
    }

    /// One page of the customer stream, with or without subsidiaries.
    async fn customers_page(
        &self,
        cursor: &Cursor,
        single: bool,
    ) -> Result<Page<Customer>, ConnectorError> {
        let s = if single {
            &self.single_settings
        } else {
            &self.settings
        };
        self.incremental(
            Entity::Customers,
            cursor,
            |scope, after| suiteql::customers_query(s, scope, after),
            |row| suiteql::map_customer(row, s),
            |c| (c.external_id.parse().unwrap_or(0), c.last_modified),
        )
        .await
    }

    fn since_with_overlap(&self, t: Timestamp) -> Timestamp {
        t - self.overlap
    }

    /// One page of an incremental stream (customers or records).
    async fn incremental<T>(
        &self,
        entity: Entity,
        cursor: &Cursor,
        build: impl Fn(Scope<'_>, u64) -> String,
        map: impl Fn(&Row) -> Result<T, crate::model::Quarantined>,
        key: impl Fn(&T) -> (u64, Timestamp),
    ) -> Result<Page<T>, ConnectorError> {
        let mut c = StreamCursor::decode(cursor)?;
        if let Some(upto) = c.upto {
            // A range of a partitioned first sync.
            let resp = self
                .query(Lane::Poll, &build(Scope::UpTo(upto), c.after_id))
                .await?;
            let mapped = suiteql::map_page(&resp.items, map, key);
            match mapped.max_id.filter(|id| *id > c.after_id) {
                Some(id) => c.after_id = id,
                None if resp.has_more => {
                    return Err(ConnectorError::Protocol(format!(
                        "{entity} page has more rows but no id past {}",
                        c.after_id
                    )))
                }
                None => {}
            }
            return Ok(Page {
                items: mapped.items,
                deleted: Vec::new(),
                quarantined: mapped.quarantined,
                next: c.encode(),
                has_more: resp.has_more,
            });
        }
        let pass_start = *c.pass_start.get_or_insert_with(now_seconds);
        match c.phase {
            Phase::Records => {
                let since = c.since.map(|s| self.since_with_overlap(s));
                let sql = build(Scope::ModifiedSince(since), c.after_id);
                let resp = self.query(Lane::Poll, &sql).await?;
                let mapped = suiteql::map_page(&resp.items, map, key);
                if resp.has_more {
                    let next_id = mapped.max_id.filter(|id| *id > c.after_id).ok_or_else(|| {
                        ConnectorError::Protocol(format!(
                            "{entity} page has more rows but no id past {}",
                            c.after_id
                        ))
                    })?;
                    c.after_id = next_id;
                } else {
                    c.phase = Phase::Deleted;
                    c.deleted_after_id = 0;
                }
                Ok(Page {
                    items: mapped.items,
                    deleted: Vec::new(),
                    quarantined: mapped.quarantined,
                    next: c.encode(),
                    has_more: true,
                })
            }
            Phase::Deleted => {
                let from = self.since_with_overlap(c.since.unwrap_or(pass_start));
                let sql = suiteql::deleted_query(&self.settings, entity, from, c.deleted_after_id);
                let resp = self.query(Lane::Poll, &sql).await?;
                let ids: Vec<u64> = resp
                    .items
                    .iter()
                    .filter_map(|r| suiteql::row_id(r, "recordid"))
                    .collect();
                let max_id = ids.iter().copied().max();
                let mut deleted: Vec<String> = ids.iter().map(u64::to_string).collect();
                deleted.dedup();
                let has_more = if resp.has_more {
                    c.deleted_after_id =
                        max_id
                            .filter(|id| *id > c.deleted_after_id)
                            .ok_or_else(|| {
                                ConnectorError::Protocol(format!(
                            "{entity} deletions page has more rows but no record id past {}",
                            c.deleted_after_id
                        ))
                            })?;
                    true
                } else {
                    c = StreamCursor {
                        since: Some(pass_start),
                        ..StreamCursor::default()
                    };
                    false
                };
                Ok(Page {
                    items: Vec::new(),
                    deleted,
                    quarantined: Vec::new(),
                    next: c.encode(),
                    has_more,
                })
            }
        }
    }
}

/// Splits the ids `lo..=hi` (`rows` of them exist) into at most `max_parts`
/// equal-width ranges `(after, upto]`, no more than one per `page_size`
/// rows.
fn id_ranges(lo: u64, hi: u64, rows: u64, page_size: u64, max_parts: u64) -> Vec<(u64, u64)> {
    if hi < lo {
        return Vec::new();
    }
    let parts = rows.div_ceil(page_size.max(1)).min(max_parts).max(1);
    let span = hi - lo + 1;
    let width = span.div_ceil(parts);
    let first = lo.saturating_sub(1);
    let mut out = Vec::new();
    let mut after = first;
    while after < hi {
        let upto = after.saturating_add(width).min(hi);
        out.push((after, upto));
        after = upto;
    }
    out
}

/// Now, truncated to whole seconds (the precision of NetSuite datetimes).
fn now_seconds() -> Timestamp {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

fn record_key(r: &Record) -> (u64, Timestamp) {
    (r.external_id().parse().unwrap_or(0), r.last_modified())
}

/// Maps a non-2xx answer to the error the budget acts on. `recent_success`:
/// a request of this connector succeeded within [`INVALID_LOGIN_GRACE`].
fn classify_failure(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    recent_success: bool,
) -> ConnectorError {
    crate::connectors::redact::log_body("netsuite", status, body);
    let (codes, text) = suiteql::error_text(body);
    let has_code = |c: &[&str]| codes.iter().any(|x| c.contains(&x.as_str()));
    match status {
        429 => ConnectorError::RateLimited { retry_after },
        401 if recent_success => {
            // NetSuite answers INVALID_LOGIN when the account is over its
            // concurrency limit, right after successful calls: back off.
            tracing::warn!(detail = %text, "NetSuite 401 after successful calls; treating as concurrency limit");
            ConnectorError::RateLimited { retry_after }
        }
        401 | 403 => ConnectorError::Auth(format!(
            "NetSuite refused the token-based login (HTTP {status}) — {text}. \
             Check account_id, the consumer key/secret, the token id/secret and the token role's permissions"
        )),
        400..=499 if has_code(CONCURRENCY_CODES) => ConnectorError::RateLimited { retry_after },
        400..=499 => ConnectorError::Rejected {
            status,
            message: text,
        },
        500..=599 => ConnectorError::Server {
            status,
            message: text,
        },
        _ => ConnectorError::Protocol(format!("unexpected HTTP {status}: {text}")),
    }
}

#[async_trait]
impl Connector for NetsuiteConnector {
    /// Customers of an account with OneWorld (subsidiaries) or, once it
    /// is known to have none (detected, or `oneworld = false`), without.
    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError> {
        use std::sync::atomic::Ordering;
        let single = self.single.load(Ordering::SeqCst);
        match self.customers_page(cursor, single).await {
            Err(ConnectorError::Rejected { message, .. })
                if !single && lacks_subsidiaries(&message) =>
            {
                if self.oneworld == Some(true) {
                    return Err(ConnectorError::Config(format!(
                        "the account has no subsidiaries ({message}), so it is not a OneWorld account: \
                         set `oneworld = false` in [connectors.netsuite], or leave `oneworld` unset to detect it"
                    )));
                }
                if !self.single.swap(true, Ordering::SeqCst) {
                    tracing::warn!(detail = %message, "NetSuite account without OneWorld: reading customers without subsidiaries (set `oneworld = false` to skip this check)");
                }
                self.customers_page(cursor, true).await
            }
            r => r,
        }
    }

    async fn fetch_records(
        &self,
        entity: Entity,
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        if entity == Entity::Customers {
            return Err(ConnectorError::Config(
                "fetch_records reads invoices or transactions, not customers".into(),
            ));
        }
        let s = &self.settings;
        self.incremental(
            entity,
            cursor,
            |scope, after| suiteql::records_query(s, entity, scope, after),
            |row| suiteql::map_record(row, entity, s),
            record_key,
        )
        .await
    }

    async fn fetch_records_for_customers(
        &self,
        entity: Entity,
        customer_ids: &[String],
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        if entity == Entity::Customers {
            return Err(ConnectorError::Config(
                "fetch_records_for_customers reads invoices or transactions, not customers".into(),
            ));
        }
        if customer_ids.len() > self.resync_batch_size {
            return Err(ConnectorError::Config(format!(
                "{} customers in one resync batch; at most {} fit in one NetSuite query",
                customer_ids.len(),
                self.resync_batch_size
            )));
        }
        // Only numeric ids go into the query; anything else cannot be a
        // NetSuite internal id and is skipped, never interpolated.
        let mut ids: Vec<u64> = Vec::with_capacity(customer_ids.len());
        for raw in customer_ids {
            match raw.trim().parse::<u64>() {
                Ok(id) => ids.push(id),
                Err(_) => {
                    tracing::warn!(customer = %raw, "skipping non-numeric NetSuite customer id in resync")
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut c = StreamCursor::decode(cursor)?;
        if ids.is_empty() {
            return Ok(Page::empty(c.encode()));
        }
        let sql =
            suiteql::records_query(&self.settings, entity, Scope::Customers(&ids), c.after_id);
        let resp = self.query(Lane::Resync, &sql).await?;
        let s = &self.settings;
        let mapped = suiteql::map_page(
            &resp.items,
            |row| suiteql::map_record(row, entity, s),
            record_key,
        );
        let has_more = resp.has_more;
        if let Some(id) = mapped.max_id.filter(|id| *id > c.after_id) {
            c.after_id = id;
        } else if has_more {
            return Err(ConnectorError::Protocol(format!(
                "resync page has more rows but no id past {}",
                c.after_id
            )));
        }
        Ok(Page {
            items: mapped.items,
            deleted: Vec::new(),
            quarantined: mapped.quarantined,
            next: c.encode(),
            has_more,
        })
    }

    /// Equal-width id ranges between `MIN(id)` and `MAX(id)` (one query),
    /// at most one per page of rows. The incremental cursor that follows is
    /// taken before that query: every row it does not count was changed
    /// after it.
    async fn partition(
        &self,
        entity: Entity,
        max_parts: usize,
    ) -> Result<Option<Partitioning>, ConnectorError> {
        let then = StreamCursor {
            since: Some(now_seconds()),
            ..StreamCursor::default()
        }
        .encode();
        let resp = self
            .query(Lane::Poll, &suiteql::id_bounds_query(entity))
            .await?;
        let Some(row) = resp.items.first() else {
            return Ok(None);
        };
        let (Some(lo), Some(hi)) = (suiteql::row_id(row, "lo"), suiteql::row_id(row, "hi")) else {
            // No rows at all.
            return Ok(None);
        };
        let rows = suiteql::row_id(row, "n").unwrap_or(hi - lo + 1);
        let ranges = id_ranges(lo, hi, rows, self.page_size as u64, max_parts as u64);
        if ranges.len() < 2 {
            return Ok(None);
        }
        Ok(Some(Partitioning {
            then,
            ranges: ranges
                .into_iter()
                .map(|(after, upto)| {
                    StreamCursor {
                        after_id: after,
                        upto: Some(upto),
                        ..StreamCursor::default()
                    }
                    .encode()
                })
                .collect(),
        }))
    }

    fn resync_batch_size(&self) -> usize {
        self.resync_batch_size
    }

    fn page_size(&self) -> usize {
        self.page_size as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        assert_eq!(
            StreamCursor::decode(&Cursor::start()).unwrap(),
            StreamCursor::default()
        );
        let c = StreamCursor {
            since: Some(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
            pass_start: None,
            phase: Phase::Deleted,
            after_id: 12,
            deleted_after_id: 3,
            upto: None,
        };
        let enc = c.encode();
        assert_eq!(
            enc.0,
            r#"{"since":"2023-11-14T22:13:20Z","phase":"deleted","after_id":12,"deleted_after_id":3}"#
        );
        assert_eq!(StreamCursor::decode(&enc).unwrap(), c);
        assert!(matches!(
            StreamCursor::decode(&Cursor("nope".into())),
            Err(ConnectorError::Config(_))
        ));
    }

    #[test]
    fn id_ranges_cover_every_id_once() {
        // 10,000 rows over ids 1..=20,000, pages of 1,000, 4 parts.
        let r = id_ranges(1, 20_000, 10_000, 1000, 4);
        assert_eq!(
            r,
            vec![
                (0, 5000),
                (5000, 10_000),
                (10_000, 15_000),
                (15_000, 20_000)
            ]
        );
        // Fewer pages than parts: one range per page of rows.
        assert_eq!(
            id_ranges(5, 1004, 1500, 1000, 8),
            vec![(4, 504), (504, 1004)]
        );
        // An uneven span: the last range ends at hi.
        assert_eq!(
            id_ranges(1, 10, 3000, 1000, 3),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert_eq!(id_ranges(7, 7, 1, 1000, 4), vec![(6, 7)]);
        assert!(id_ranges(9, 3, 0, 1000, 4).is_empty());
    }

    #[test]
    fn failures_map_to_budget_decisions() {
        let env = |code: &str, detail: &str| {
            format!(
                r#"{{"title":"x","status":0,"o:errorDetails":[{{"detail":"{detail}","o:errorCode":"{code}"}}]}}"#
            )
        };
        let login = env("INVALID_LOGIN", "Invalid login attempt.");
        match classify_failure(401, None, login.as_bytes(), false) {
            ConnectorError::Auth(m) => {
                assert!(m.contains("INVALID_LOGIN: Invalid login attempt."), "{m}")
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            classify_failure(401, None, login.as_bytes(), true),
            ConnectorError::RateLimited { .. }
        ));
        assert!(matches!(
            classify_failure(429, Some(Duration::from_secs(3)), b"", false),
            ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)
        ));
        let limit = env("SSS_REQUEST_LIMIT_EXCEEDED", "Too many");
        assert!(matches!(
            classify_failure(400, None, limit.as_bytes(), true),
            ConnectorError::RateLimited { .. }
        ));
        let bad = env("INVALID_PARAMETER", "Field 'custentity_x' was not found.");
        match classify_failure(400, None, bad.as_bytes(), true) {
            ConnectorError::Rejected {
                status: 400,
                message,
            } => {
                assert_eq!(
                    message,
                    "INVALID_PARAMETER: Field 'custentity_x' was not found."
                )
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            classify_failure(503, None, b"down", true),
            ConnectorError::Server { status: 503, .. }
        ));
    }
}
