//! The built-in `demo` connector: a seeded synthetic ERP ([`DemoErp`]) read
//! through the same [`Connector`] contract as a real one, so a new user can run
//! the daemon with no credentials and tests can compare the store against the
//! ERP's exact data.
//!
//! It behaves like a real ERP: paged reads, upstream last-modified times,
//! incremental reads by cursor, tombstones for deletions, native inactive and
//! intercompany flags, and a trickle of new and changed records on every poll
//! pass. Every fetch is exactly one simulated request through the shared
//! [`Budget`]. Like every connector it never writes to the store, classifies
//! or retries on its own.
//!
//! # Cursors
//! Incremental streams (`fetch_customers`, `fetch_records`) are keyset-paged by
//! `(last_modified, external_id)`: a page holds the entries strictly after the
//! cursor's position in that order, at most `page_size`, and `next` is the
//! position of the last entry returned (the cursor unchanged when there was
//! none). Deletions sit in the same ordered stream at their deletion time and
//! come back in `Page::deleted`. A record changed after being read gets a later
//! last-modified time, so it is read again. The cursor is a small JSON object,
//! `{"at":"<RFC 3339>","id":"<external id>"}`.
//!
//! Customer-set reads (`fetch_records_for_customers`) return the full history
//! of the named customers keyset-paged by external id; their cursor is
//! `{"after":"<external id>"}`.
//!
//! # Quota and OAuth
//! With `daily_quota`, the simulated ERP allows that many requests per
//! `quota_window` and behaves like Xero's daily limit: each answer reports
//! what is left to the budget, and a request over it is refused with
//! [`ConnectorError::DailyQuota`] and a `Retry-After`. With an `oauth`
//! table, every request first gets an access token through the shared
//! [`OAuthClient`], so the OAuth set-up, `erpsync connect` and
//! `needs_reconnect` can be tried without an ERP account.
//!
//! # Trickle
//! A stream's pass opens with an incremental read made while that stream is
//! caught up (its first read, or any read after a page with `has_more ==
//! false`; a failed read leaves it open, so retrying it does not trickle
//! twice). A poll pass starts when the first of its streams opens: when a
//! stream opens that already opened since the last trickle, the connector
//! first applies [`DemoErp::trickle`]`(options.trickle)`, under a lock the
//! other streams' openings wait for, so every stream of the pass reads the
//! changes. `trickle = 0` freezes the data. Range reads of a partitioned
//! first sync never trickle.

mod generator;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::oauth::{OAuthClient, OAuthOptions};
use super::{
    Budget, BuildContext, Connector, ConnectorError, ConnectorKind, Cursor, Lane, NativeExclusion,
    Page, Partitioning, NATIVE_INACTIVE, NATIVE_INTERCOMPANY,
};
use super::{QuotaReport, QuotaWindow};
use crate::config::{duration, OptionsCheck};
use crate::model::{Customer, Entity, Record, Timestamp};

pub use generator::DemoErp;
use generator::{Changes, StreamKey};

/// Largest page the demo ERP serves, like a real API's cap.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The `[connectors.<name>]` options of a `kind = "demo"` connector.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DemoOptions {
    /// Seeds the generator: the same seed gives the same ids, amounts and flags.
    pub seed: u64,
    pub customers: usize,
    pub invoices: usize,
    pub transactions: usize,
    /// Share of customers marked inactive upstream.
    pub inactive_ratio: f64,
    /// Share of customers that are other entities of the same group.
    pub intercompany_ratio: f64,
    /// Records per page.
    pub page_size: usize,
    /// Records changed or added at the start of each poll pass; 0 disables.
    pub trickle: usize,
    /// Simulated latency of every request, in milliseconds.
    pub latency_ms: u64,
    /// Requests the simulated ERP allows per `quota_window` (0: no limit).
    /// Like Xero's daily limit: each answer says what is left (fed to the
    /// budget), and a request over it is refused with a `Retry-After` until
    /// the oldest request leaves the window.
    pub daily_quota: u64,
    /// The window of `daily_quota` (a day for a real ERP; shorter to try
    /// parking and resuming).
    pub quota_window: String,
    /// With `[connectors.<id>.oauth]`, every simulated request first gets an
    /// access token through the shared OAuth 2.0 client (refresh, rotation,
    /// `needs_reconnect`, `erpsync connect`), so the OAuth set-up can be
    /// tried without a real ERP account.
    pub oauth: Option<OAuthOptions>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seed: 42,
            customers: 2000,
            invoices: 40_000,
            transactions: 30_000,
            inactive_ratio: 0.03,
            intercompany_ratio: 0.01,
            page_size: 500,
            trickle: 20,
            latency_ms: 0,
            daily_quota: 0,
            quota_window: "24h".into(),
            oauth: None,
        }
    }
}

impl DemoOptions {
    /// Every problem with these options, in words for the person editing the
    /// config; empty when they are usable.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            problems.push((
                "page_size",
                format!(
                    "must be between 1 and {MAX_PAGE_SIZE} (got {})",
                    self.page_size
                ),
            ));
        }
        for (key, value) in [
            ("inactive_ratio", self.inactive_ratio),
            ("intercompany_ratio", self.intercompany_ratio),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problems.push((key, format!("must be between 0 and 1 (got {value})")));
            }
        }
        if self.customers == 0 {
            for (key, value) in [
                ("invoices", self.invoices),
                ("transactions", self.transactions),
            ] {
                if value > 0 {
                    problems.push((
                        key,
                        format!("{key} need customers to belong to: set customers above 0 or {key} to 0 (got {key} = {value})"),
                    ));
                }
            }
        }
        for (key, value, max) in [
            ("customers", self.customers, 1_000_000),
            ("invoices", self.invoices, 10_000_000),
            ("transactions", self.transactions, 10_000_000),
        ] {
            if value > max {
                problems.push((key, format!("must be at most {max} (got {value})")));
            }
        }
        if let Err(e) =
            duration::parse_within(&self.quota_window, Duration::from_secs(1), duration::MAX)
        {
            problems.push(("quota_window", e));
        }
        if self.latency_ms > 60_000 {
            problems.push((
                "latency_ms",
                format!("must be at most 60000 (got {})", self.latency_ms),
            ));
        }
        problems
    }
}

/// The `demo` kind: a synthetic ERP, no credentials, every option optional.
pub struct Demo;

impl ConnectorKind for Demo {
    const NAME: &'static str = "demo";
    type Options = DemoOptions;
    const NATIVE_EXCLUSIONS: &'static [NativeExclusion] = &[NATIVE_INACTIVE, NATIVE_INTERCOMPANY];

    /// `C` and digits, like `C00042`.
    fn check_customer_id(id: &str) -> Result<(), String> {
        match id.strip_prefix('C') {
            Some(d) if !d.is_empty() && d.len() <= 18 && d.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(())
            }
            _ => Err("demo customer ids are C and digits, such as C00042".into()),
        }
    }

    fn check(options: &DemoOptions, check: &mut OptionsCheck<'_>) {
        for (key, message) in options.validate() {
            check.problem(key, message);
        }
        if let Some(o) = &options.oauth {
            o.check("oauth", None, check);
        }
    }

    fn uses_oauth(options: &DemoOptions) -> bool {
        options.oauth.is_some()
    }

    fn build(options: &DemoOptions, cx: BuildContext) -> Result<Arc<dyn Connector>, String> {
        let oauth = match &options.oauth {
            Some(o) => Some(o.client(None, &cx)?),
            None => None,
        };
        let mut c = build(options, cx.budget);
        c.oauth = oauth;
        if options.daily_quota > 0 {
            let window =
                duration::parse(&options.quota_window).map_err(|e| format!("quota_window: {e}"))?;
            c.quota = Some(Mutex::new(SimulatedQuota {
                limit: options.daily_quota,
                window,
                sent: VecDeque::new(),
                refused: 0,
            }));
        }
        Ok(Arc::new(c))
    }
}

/// Builds a connector over a freshly generated ERP.
pub fn build(options: &DemoOptions, budget: Arc<Budget>) -> DemoConnector {
    DemoConnector::new(
        DemoErp::new(options),
        budget,
        options.page_size,
        Duration::from_millis(options.latency_ms),
    )
}

/// Reads a [`DemoErp`] the way a connector reads a real ERP's API.
pub struct DemoConnector {
    erp: Arc<DemoErp>,
    budget: Arc<Budget>,
    page_size: usize,
    latency: Duration,
    /// Which streams are in a pass, and at which trickle (see the module
    /// docs).
    passes: Mutex<PassClock>,
    oauth: Option<OAuthClient>,
    quota: Option<Mutex<SimulatedQuota>>,
}

/// The simulated ERP's request quota (see [`DemoOptions::daily_quota`]).
struct SimulatedQuota {
    limit: u64,
    window: Duration,
    /// When each request in the window was answered, oldest first.
    sent: VecDeque<tokio::time::Instant>,
    refused: u64,
}

impl DemoConnector {
    pub fn new(
        erp: Arc<DemoErp>,
        budget: Arc<Budget>,
        page_size: usize,
        latency: Duration,
    ) -> Self {
        DemoConnector {
            erp,
            budget,
            page_size: page_size.clamp(1, MAX_PAGE_SIZE),
            latency,
            passes: Mutex::new(PassClock::default()),
            oauth: None,
            quota: None,
        }
    }

    /// Requests the simulated quota refused so far.
    pub fn quota_refusals(&self) -> u64 {
        self.quota
            .as_ref()
            .map(|q| q.lock().expect("poisoned").refused)
            .unwrap_or(0)
    }

    /// The simulated ERP's quota check for one request: what is left, fed
    /// to the budget as Xero's `X-DayLimit-Remaining` would be.
    fn take_quota(&self) -> Result<(), ConnectorError> {
        let Some(q) = &self.quota else {
            return Ok(());
        };
        let mut q = q.lock().expect("poisoned");
        let now = tokio::time::Instant::now();
        let window = q.window;
        while q
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            q.sent.pop_front();
        }
        if q.sent.len() as u64 >= q.limit {
            q.refused += 1;
            let oldest = *q.sent.front().expect("limit is at least 1");
            // Retry-After has whole seconds: round up.
            let wait = (oldest + window).duration_since(now);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ConnectorError::DailyQuota {
                retry_after: Some(Duration::from_secs(secs)),
            });
        }
        q.sent.push_back(now);
        let remaining = q.limit - q.sent.len() as u64;
        drop(q);
        self.budget.report_quota(QuotaReport {
            window: QuotaWindow::Day,
            remaining,
            resets_in: None,
        });
        Ok(())
    }

    pub fn erp(&self) -> &Arc<DemoErp> {
        &self.erp
    }

    /// One simulated request: waits `latency`, then answers from the ERP.
    async fn request<T>(
        &self,
        lane: Lane,
        answer: impl Fn() -> T + Sync,
    ) -> Result<T, ConnectorError> {
        self.budget
            .call(lane, || async {
                if let Some(oauth) = &self.oauth {
                    oauth.access_token().await?;
                }
                if !self.latency.is_zero() {
                    tokio::time::sleep(self.latency).await;
                }
                self.take_quota()?;
                Ok(answer())
            })
            .await
    }
}

/// Trickle bookkeeping: per stream (in `Entity::ALL` order) whether it is in
/// a pass and the trickle count when it last opened one.
#[derive(Debug, Default)]
struct PassClock {
    trickles: u64,
    streams: [(bool, u64); 3],
}

impl DemoConnector {
    /// Opens `entity`'s pass if it is caught up, trickling first when this
    /// stream already opened one since the last trickle. Opening before the
    /// request means a failed first request does not trickle again when the
    /// caller retries it.
    fn open_pass(&self, entity: Entity) {
        let i = Entity::ALL.iter().position(|e| *e == entity).unwrap_or(0);
        let mut p = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        let (open, at) = p.streams[i];
        if open {
            return;
        }
        if at == p.trickles {
            self.erp.trickle(self.erp.options().trickle);
            p.trickles += 1;
        }
        p.streams[i] = (true, p.trickles);
    }

    /// Records whether `entity`'s pass goes on after a page.
    fn close_pass(&self, entity: Entity, has_more: bool) {
        let i = Entity::ALL.iter().position(|e| *e == entity).unwrap_or(0);
        let mut p = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        p.streams[i].0 = has_more;
    }
}

/// Position in an incremental stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamCursor {
    at: Timestamp,
    id: String,
}

/// Position in one id range of a partitioned first sync: the ids after
/// `after` (from the range's start when absent) up to `upto`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    upto: String,
}

/// The range a cursor of a partitioned first sync is in; `None` for any
/// other cursor.
fn range_position(cursor: &Cursor) -> Option<RangeCursor> {
    if cursor.is_start() {
        return None;
    }
    serde_json::from_str(&cursor.0).ok()
}

/// The page of a range read and the range cursor after it.
fn range_page<T>(
    items: Vec<T>,
    has_more: bool,
    range: RangeCursor,
    id: impl Fn(&T) -> &str,
) -> Page<T> {
    let next = RangeCursor {
        after: items.last().map(|r| id(r).to_owned()).or(range.after),
        upto: range.upto,
    };
    Page {
        items,
        deleted: Vec::new(),
        quarantined: Vec::new(),
        next: encode(&next),
        has_more,
    }
}

/// Position in a customer-set read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResyncCursor {
    after: String,
}

fn bad_cursor(cursor: &Cursor, e: serde_json::Error) -> ConnectorError {
    ConnectorError::Rejected {
        status: 400,
        message: format!("invalid demo cursor `{}`: {e}", cursor.0),
    }
}

fn encode<T: Serialize>(position: &T) -> Cursor {
    Cursor(serde_json::to_string(position).expect("cursor structs serialise"))
}

fn stream_position(cursor: &Cursor) -> Result<Option<StreamKey>, ConnectorError> {
    if cursor.is_start() {
        return Ok(None);
    }
    let c: StreamCursor = serde_json::from_str(&cursor.0).map_err(|e| bad_cursor(cursor, e))?;
    Ok(Some((c.at, c.id)))
}

fn stream_page<T>(changes: Changes<T>, cursor: &Cursor) -> Page<T> {
    let next = match changes.last {
        Some((at, id)) => encode(&StreamCursor { at, id }),
        None => cursor.clone(),
    };
    Page {
        items: changes.items,
        deleted: changes.deleted,
        quarantined: Vec::new(),
        next,
        has_more: changes.has_more,
    }
}

fn record_entity(entity: Entity) -> Result<Entity, ConnectorError> {
    match entity {
        Entity::Invoices | Entity::Transactions => Ok(entity),
        Entity::Customers => Err(ConnectorError::Config(
            "customers are read with fetch_customers, not as records".into(),
        )),
    }
}

#[async_trait]
impl Connector for DemoConnector {
    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError> {
        if let Some(range) = range_position(cursor) {
            let (items, more) = self
                .request(Lane::Poll, || {
                    self.erp
                        .customers_in_range(range.after.as_deref(), &range.upto, self.page_size)
                })
                .await?;
            return Ok(range_page(items, more, range, |c| &c.external_id));
        }
        let after = stream_position(cursor)?;
        self.open_pass(Entity::Customers);
        let changes = self
            .request(Lane::Poll, || {
                self.erp.customer_changes(after.as_ref(), self.page_size)
            })
            .await?;
        self.close_pass(Entity::Customers, changes.has_more);
        Ok(stream_page(changes, cursor))
    }

    async fn fetch_records(
        &self,
        entity: Entity,
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        let entity = record_entity(entity)?;
        if let Some(range) = range_position(cursor) {
            let (items, more) = self
                .request(Lane::Poll, || {
                    self.erp.records_in_range(
                        entity,
                        range.after.as_deref(),
                        &range.upto,
                        self.page_size,
                    )
                })
                .await?;
            return Ok(range_page(items, more, range, |r| r.external_id()));
        }
        let after = stream_position(cursor)?;
        self.open_pass(entity);
        let changes = self
            .request(Lane::Poll, || {
                self.erp
                    .record_changes(entity, after.as_ref(), self.page_size)
            })
            .await?;
        self.close_pass(entity, changes.has_more);
        Ok(stream_page(changes, cursor))
    }

    async fn fetch_records_for_customers(
        &self,
        entity: Entity,
        customer_ids: &[String],
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        let entity = record_entity(entity)?;
        if customer_ids.len() > self.resync_batch_size() {
            return Err(ConnectorError::Rejected {
                status: 400,
                message: format!(
                    "a customer-set query may name at most {} customers (got {})",
                    self.resync_batch_size(),
                    customer_ids.len()
                ),
            });
        }
        let after = if cursor.is_start() {
            None
        } else {
            let c: ResyncCursor =
                serde_json::from_str(&cursor.0).map_err(|e| bad_cursor(cursor, e))?;
            Some(c.after)
        };
        let (items, has_more) = self
            .request(Lane::Resync, || {
                self.erp
                    .records_of(entity, customer_ids, after.as_deref(), self.page_size)
            })
            .await?;
        let next = match items.last() {
            Some(last) => encode(&ResyncCursor {
                after: last.external_id().to_owned(),
            }),
            None => cursor.clone(),
        };
        Ok(Page {
            items,
            deleted: Vec::new(),
            quarantined: Vec::new(),
            next,
            has_more,
        })
    }

    /// Ranges of about the same number of live rows, at most one per page;
    /// one simulated request (like a real ERP's count or min/max query).
    async fn partition(
        &self,
        entity: Entity,
        max_parts: usize,
    ) -> Result<Option<Partitioning>, ConnectorError> {
        let (end, splits, rows) = self
            .request(Lane::Poll, || {
                let (_, _, rows) = self.erp.partition(entity, 0);
                let parts = rows.div_ceil(self.page_size.max(1)).min(max_parts);
                self.erp.partition(entity, parts)
            })
            .await?;
        if splits.len() < 2 || rows == 0 {
            return Ok(None);
        }
        let then = match end {
            Some((at, id)) => encode(&StreamCursor { at, id }),
            None => Cursor::start(),
        };
        let mut after = None;
        let mut ranges = Vec::with_capacity(splits.len());
        for upto in splits {
            ranges.push(encode(&RangeCursor {
                after: after.replace(upto.clone()),
                upto,
            }));
        }
        Ok(Some(Partitioning { then, ranges }))
    }

    fn resync_batch_size(&self) -> usize {
        100
    }

    fn page_size(&self) -> usize {
        self.page_size
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }
}
