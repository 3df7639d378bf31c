//! QuickBooks Online connector (`kind = "quickbooks"`): reads customers
//! (active and inactive, jobs with their parent), invoices, payments and
//! credit memos of one company (realm) through the Accounting API.
//!
//! Owns the wire protocol: query text ([`wire`]), object mapping ([`map`]),
//! config ([`options`]), keyset paging by `MetaData.LastUpdatedTime`,
//! deletions from change data capture, and the mapping of Intuit's answers
//! (including a `Fault` inside an HTTP 200) to [`ConnectorError`]. Every
//! request goes through [`Budget::call`] with a bearer token from the shared
//! [`OAuthClient`] (which stores and rotates tokens); this module never
//! sleeps, retries or refreshes tokens on its own, never writes to the store,
//! and never logs a token.
//!
//! # Paging
//!
//! QuickBooks filters `Id` only with `=` and `IN`, so there is no keyset on
//! ids. A stream is read in passes, each a window `[since, until)` of
//! `LastUpdatedTime`, where `until` is the server's clock (the `time` of the
//! pass's first answer) so this host's clock never matters. Each page asks
//! for `LastUpdatedTime >= at` (or `> at`) `ORDERBY LastUpdatedTime
//! STARTPOSITION 1`; the ids already delivered at `at` are skipped, so the
//! boundary record is never delivered twice and nothing is truncated at
//! 1,000 rows. A record edited during a pass moves past `until` and is read
//! by the next pass. When a full page shares one timestamp (a bulk import),
//! that second is swept with STARTPOSITION paging, bracketed by `count(*)`:
//! members can only leave that second, so a sweep that starts and ends with
//! the same count saw every member, and a sweep that did not is repeated.
//!
//! # Deletions
//!
//! Customers cannot be deleted in QuickBooks (only made inactive). For
//! invoices and transactions each pass ends with one CDC request per entity
//! for deletions since the previous pass. When CDC cannot vouch for every
//! deletion (an answer at the 1,000-object cap, or more than 29 days since
//! the last pass), the stream asks for a
//! reconciliation ([`Connector::verification`]): the sync engine hands every
//! stored id back in batches and [`Connector::deleted_among`] reports the
//! ones QuickBooks no longer has (`Id IN (...)` queries).

pub mod map;
pub mod options;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{FixedOffset, TimeDelta};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Limits, OptionsCheck};
use crate::connectors::oauth::{AccessToken, OAuthClient};
use crate::connectors::{
    parse_retry_after, Budget, BuildContext, Connector, ConnectorError, ConnectorKind, Cursor,
    Lane, NativeExclusion, Page, NATIVE_INACTIVE,
};
use crate::model::{Customer, Entity, Quarantined, Record, Timestamp};

pub use options::{QuickbooksOptions, TOKEN_URL};
use wire::{datetime, floor_second, quote};

/// The `quickbooks` kind, listed in the connector registry.
pub struct Quickbooks;

impl ConnectorKind for Quickbooks {
    const NAME: &'static str = "quickbooks";
    type Options = QuickbooksOptions;
    const NATIVE_EXCLUSIONS: &'static [NativeExclusion] = &[NATIVE_INACTIVE];

    /// QuickBooks `Customer.Id` values are digits.
    fn check_customer_id(id: &str) -> Result<(), String> {
        crate::connectors::registry::check_digits(id, "QuickBooks")
    }

    /// Intuit allows 500 requests per minute and 10 concurrent requests per
    /// app and company: 8/s with a burst of 8 is at most 488 in any minute.
    fn default_limits() -> Limits {
        Limits {
            requests_per_second: 8.0,
            burst: 8,
            max_concurrency: 5,
            max_backoff: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    fn check(options: &QuickbooksOptions, check: &mut OptionsCheck<'_>) {
        options.check(check);
    }

    fn uses_oauth(_: &QuickbooksOptions) -> bool {
        true
    }

    fn build(options: &QuickbooksOptions, cx: BuildContext) -> Result<Arc<dyn Connector>, String> {
        Ok(Arc::new(QuickbooksConnector::new(options, &cx)?))
    }
}

/// Objects one CDC answer holds at most.
pub const CDC_CAP: usize = 1000;

/// CDC looks back 30 days; a window older than this is not asked for.
const CDC_WINDOW: TimeDelta = TimeDelta::days(29);

/// One part of a stream's pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Query(&'static str),
    Cdc(&'static str),
}

fn poll_steps(entity: Entity) -> &'static [Step] {
    match entity {
        Entity::Customers => &[Step::Query("Customer")],
        Entity::Invoices => &[Step::Query("Invoice"), Step::Cdc("Invoice")],
        Entity::Transactions => &[
            Step::Query("Payment"),
            Step::Query("CreditMemo"),
            Step::Cdc("Payment"),
            Step::Cdc("CreditMemo"),
        ],
    }
}

fn record_entities(entity: Entity) -> &'static [&'static str] {
    match entity {
        Entity::Customers => &["Customer"],
        Entity::Invoices => &["Invoice"],
        Entity::Transactions => &["Payment", "CreditMemo"],
    }
}

/// A second in which more records changed than a page holds, being swept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tie {
    pub at: Timestamp,
    /// STARTPOSITION of the next page of the sweep.
    pub start: u64,
    /// `count(*)` of that second when the sweep began.
    pub count: u64,
}

/// The keyset position inside one entity's part of a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyset {
    /// `LastUpdatedTime` of the last delivered record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// Every record at `at` was delivered: continue with `> at`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Ids delivered whose `LastUpdatedTime` is `at`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie: Option<Tie>,
}

/// A pass in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pass {
    /// Server time of the pass's first answer: records changed at or after
    /// it belong to the next pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub pos: Keyset,
    /// CDC could not vouch for every deletion in this pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

/// The position in one polled stream (the JSON in `Cursor.0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCursor {
    /// Start (inclusive) of the next pass's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Deletions are known up to here: the next CDC window starts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<Pass>,
    /// Stored records must be checked against QuickBooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

fn decode<T: Default + serde::de::DeserializeOwned>(cursor: &Cursor) -> Result<T, ConnectorError> {
    if cursor.is_start() {
        return Ok(T::default());
    }
    serde_json::from_str(&cursor.0).map_err(|e| {
        ConnectorError::Config(format!(
            "stored QuickBooks cursor is unreadable ({e}); reset the stream to sync from the start"
        ))
    })
}

fn encode<T: Serialize>(c: &T) -> Cursor {
    Cursor(serde_json::to_string(c).expect("cursor serialises"))
}

/// The position in one resync stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub pos: Keyset,
}

/// Objects of one page, before mapping.
struct RawPage {
    objects: Vec<(&'static str, Box<RawValue>)>,
    deleted: Vec<String>,
    next: Cursor,
    has_more: bool,
}

pub struct QuickbooksConnector {
    client: reqwest::Client,
    /// `<base>/v3/company/<realm>`
    company: String,
    minor_version: u32,
    oauth: OAuthClient,
    budget: Arc<Budget>,
    settings: map::MapSettings,
    page_size: u32,
    resync_batch_size: usize,
}

impl std::fmt::Debug for QuickbooksConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickbooksConnector")
            .field("company", &self.company)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl QuickbooksConnector {
    /// Checks the options, reads the client credentials and builds the
    /// HTTP and OAuth clients. Errors name keys and files, never secret
    /// values.
    pub fn new(
        options: &QuickbooksOptions,
        cx: &BuildContext,
    ) -> Result<QuickbooksConnector, String> {
        let mut check = OptionsCheck::detached(&cx.base_dir);
        options.check(&mut check);
        if !check.is_empty() {
            return Err(format!(
                "invalid [connectors.quickbooks] options: {}",
                check.messages().join("; ")
            ));
        }
        let oauth = options.oauth.client(Some(TOKEN_URL), cx)?;
        let timeout = options
            .timeout()
            .map_err(|e| format!("request_timeout: {e}"))?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("erpsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(QuickbooksConnector {
            client,
            company: format!("{}/v3/company/{}", options.api_base()?, options.realm_id),
            minor_version: options.minor_version,
            oauth,
            budget: Arc::clone(&cx.budget),
            settings: map::MapSettings {
                offset: options.offset()?,
                home_currency: options.home_currency.clone(),
            },
            page_size: options.page_size,
            resync_batch_size: options.resync_batch_size,
        })
    }

    fn offset(&self) -> FixedOffset {
        self.settings.offset
    }

    /// One request under the budget with a bearer token; a 401 gets one
    /// fresh token and one more try (the OAuth client's `authorized`).
    async fn request<T>(
        &self,
        lane: Lane,
        build: impl Fn(&AccessToken) -> reqwest::RequestBuilder,
        parse: impl Fn(&[u8]) -> Result<T, ConnectorError>,
    ) -> Result<T, ConnectorError> {
        let (build, parse) = (&build, &parse);
        self.budget
            .call(lane, || {
                self.oauth.authorized(|token| async move {
                    let response = build(&token)
                        .header(reqwest::header::ACCEPT, "application/json")
                        .send()
                        .await
                        .map_err(ConnectorError::from_reqwest)?;
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    let bytes = response
                        .bytes()
                        .await
                        .map_err(ConnectorError::from_reqwest)?;
                    if status == 200 {
                        if !content_type.contains("json") {
                            return Err(ConnectorError::Protocol(format!(
                                "QuickBooks answered `{content_type}`, not JSON"
                            )));
                        }
                        return parse(&bytes);
                    }
                    if status == 401 {
                        // The gateway's fault names the problem; its detail
                        // (which may echo the token) is cut by parse_fault.
                        let detail = wire::parse_fault(&bytes)
                            .map(|f| f.text())
                            .unwrap_or_else(|| "HTTP 401".into());
                        return Err(ConnectorError::Unauthorized(detail));
                    }
                    Err(wire::classify_failure(status, retry_after, &bytes))
                })
            })
            .await
    }

    /// Runs one query (POST, `application/text`).
    async fn query(
        &self,
        lane: Lane,
        entity: &str,
        text: &str,
    ) -> Result<wire::QueryPage, ConnectorError> {
        tracing::trace!(query = text, "quickbooks query");
        let url = format!("{}/query?minorversion={}", self.company, self.minor_version);
        let offset = self.offset();
        self.request(
            lane,
            |token| {
                self.client
                    .post(&url)
                    .bearer_auth(token.secret())
                    .header(reqwest::header::CONTENT_TYPE, "application/text")
                    .body(text.to_string())
            },
            |body| wire::parse_query(body, entity, offset),
        )
        .await
    }

    async fn count(
        &self,
        lane: Lane,
        entity: &str,
        conds: &[String],
    ) -> Result<u64, ConnectorError> {
        let text = format!("SELECT count(*) FROM {entity}{}", where_clause(conds));
        let page = self.query(lane, entity, &text).await?;
        page.total_count.ok_or_else(|| {
            ConnectorError::Protocol(format!("count(*) of {entity} answered without totalCount"))
        })
    }

    async fn cdc(
        &self,
        entity: &'static str,
        since: Timestamp,
    ) -> Result<wire::CdcAnswer, ConnectorError> {
        let mut url = reqwest::Url::parse(&format!("{}/cdc", self.company))
            .map_err(|e| ConnectorError::Config(format!("api_base_url: {e}")))?;
        url.query_pairs_mut()
            .append_pair("entities", entity)
            .append_pair("changedSince", &datetime(since, self.offset()))
            .append_pair("minorversion", &self.minor_version.to_string());
        tracing::trace!(url = %url, "quickbooks cdc");
        let offset = self.offset();
        self.request(
            Lane::Poll,
            |token| self.client.get(url.clone()).bearer_auth(token.secret()),
            |body| wire::parse_cdc(body, &[entity], offset),
        )
        .await
    }

    /// Conditions every query of `entity` carries.
    fn base_conds(entity: &str) -> Vec<String> {
        if entity == "Customer" {
            // Inactive customers are hidden unless asked for.
            vec!["Active IN (true, false)".to_string()]
        } else {
            Vec::new()
        }
    }

    /// One keyset page of `entity` inside `[lower, until)`. Returns the new
    /// objects and whether this entity's part of the pass is done.
    async fn keyset_page(
        &self,
        lane: Lane,
        entity: &'static str,
        filter: &[String],
        lower: Option<Timestamp>,
        until: &mut Option<Timestamp>,
        pos: &mut Keyset,
    ) -> Result<(Vec<Box<RawValue>>, bool), ConnectorError> {
        let off = self.offset();
        let m = self.page_size as u64;
        let field = "Metadata.LastUpdatedTime";
        if let Some(mut tie) = pos.tie.clone() {
            let mut conds = filter.to_vec();
            conds.push(format!("{field} = {}", quote(&datetime(tie.at, off))));
            let text = format!(
                "SELECT * FROM {entity}{} ORDERBY {field} STARTPOSITION {} MAXRESULTS {m}",
                where_clause(&conds),
                tie.start
            );
            let page = self.query(lane, entity, &text).await?;
            let got = page.objects.len() as u64;
            let mut seen: HashSet<String> = pos.seen.iter().cloned().collect();
            let mut out = Vec::new();
            for o in page.objects {
                match map::head(&o, off) {
                    Some(h) if seen.contains(&h.id) => {}
                    Some(h) => {
                        seen.insert(h.id.clone());
                        pos.seen.push(h.id);
                        out.push(o);
                    }
                    None => out.push(o),
                }
            }
            if got == m {
                tie.start += m;
                pos.tie = Some(tie);
                return Ok((out, false));
            }
            let now = self.count(lane, entity, &conds).await?;
            if now == tie.count {
                *pos = Keyset {
                    at: Some(tie.at),
                    strict: true,
                    seen: Vec::new(),
                    tie: None,
                };
            } else {
                tracing::debug!(entity, at = %tie.at, before = tie.count, now, "records left a swept second; sweeping it again");
                pos.tie = Some(Tie {
                    at: tie.at,
                    start: 1,
                    count: now,
                });
            }
            return Ok((out, false));
        }
        let mut conds = filter.to_vec();
        match (pos.at, pos.strict, lower) {
            (Some(a), true, _) => conds.push(format!("{field} > {}", quote(&datetime(a, off)))),
            (Some(a), false, _) | (None, _, Some(a)) => {
                conds.push(format!("{field} >= {}", quote(&datetime(a, off))))
            }
            (None, _, None) => {}
        }
        if let Some(u) = *until {
            conds.push(format!("{field} < {}", quote(&datetime(u, off))));
        }
        let text = format!(
            "SELECT * FROM {entity}{} ORDERBY {field} STARTPOSITION 1 MAXRESULTS {m}",
            where_clause(&conds)
        );
        let page = self.query(lane, entity, &text).await?;
        let bound = match *until {
            Some(u) => u,
            None => {
                let u = floor_second(page.time.unwrap_or_else(chrono::Utc::now));
                *until = Some(u);
                u
            }
        };
        let full = page.objects.len() as u64 == m;
        let mut rows = Vec::with_capacity(page.objects.len());
        let mut beyond = false;
        for o in page.objects {
            let h = map::head(&o, off);
            if h.as_ref().is_some_and(|h| h.updated >= bound) {
                // Changed after the pass began: the next pass reads it.
                beyond = true;
                continue;
            }
            rows.push((h, o));
        }
        let done = !full || beyond;
        let times: Vec<Timestamp> = rows
            .iter()
            .filter_map(|(h, _)| h.as_ref().map(|h| h.updated))
            .collect();
        if full && !beyond && times.is_empty() {
            return Err(ConnectorError::Protocol(format!(
                "a full page of {entity} has no readable Id and LastUpdatedTime"
            )));
        }
        let one_second = !times.is_empty() && times.iter().all(|t| *t == times[0]);
        if full && !beyond && one_second && pos.at == Some(times[0]) && !pos.strict {
            // More records share this second than a page holds.
            let at = times[0];
            let mut tie_conds = filter.to_vec();
            tie_conds.push(format!("{field} = {}", quote(&datetime(at, off))));
            let count = self.count(lane, entity, &tie_conds).await?;
            tracing::debug!(entity, %at, count, "sweeping a second shared by more records than a page holds");
            pos.tie = Some(Tie {
                at,
                start: 1,
                count,
            });
        }
        let seen: HashSet<String> = pos.seen.iter().cloned().collect();
        let mut out = Vec::with_capacity(rows.len());
        for (h, o) in rows {
            match h {
                Some(h) => {
                    if !pos.strict && pos.at == Some(h.updated) && seen.contains(&h.id) {
                        continue;
                    }
                    if pos.at == Some(h.updated) && !pos.strict {
                        pos.seen.push(h.id);
                    } else {
                        pos.at = Some(h.updated);
                        pos.strict = false;
                        pos.seen = vec![h.id];
                    }
                    out.push(o);
                }
                None => out.push(o),
            }
        }
        Ok((out, done && pos.tie.is_none()))
    }

    /// One page of a polled stream.
    async fn poll(&self, entity: Entity, cursor: &Cursor) -> Result<RawPage, ConnectorError> {
        let mut c: StreamCursor = decode(cursor)?;
        let steps = poll_steps(entity);
        let mut pass = c.pass.take().unwrap_or_default();
        let mut objects = Vec::new();
        let mut deleted = Vec::new();
        while let Some(step) = steps.get(pass.step).copied() {
            match step {
                Step::Query(name) => {
                    let conds = Self::base_conds(name);
                    let (objs, done) = self
                        .keyset_page(
                            Lane::Poll,
                            name,
                            &conds,
                            c.since,
                            &mut pass.until,
                            &mut pass.pos,
                        )
                        .await?;
                    objects.extend(objs.into_iter().map(|o| (name, o)));
                    if done {
                        pass.step += 1;
                        pass.pos = Keyset::default();
                    }
                    if pass.step < steps.len() {
                        c.pass = Some(pass);
                        return Ok(RawPage {
                            objects,
                            deleted,
                            next: encode(&c),
                            has_more: true,
                        });
                    }
                }
                Step::Cdc(name) => {
                    let until = pass
                        .until
                        .unwrap_or_else(|| floor_second(chrono::Utc::now()));
                    pass.step += 1;
                    match c.cdc_since {
                        Some(s) if until - s <= CDC_WINDOW => {
                            // One second of overlap: an inclusive or
                            // exclusive changedSince both see the boundary.
                            let answer = self.cdc(name, s - TimeDelta::seconds(1)).await?;
                            if answer.total() >= CDC_CAP {
                                tracing::info!(
                                    entity = name,
                                    objects = answer.total(),
                                    "CDC answer at its object cap; stored records will be verified"
                                );
                                pass.verify = true;
                            }
                            for g in &answer.groups {
                                for o in &g.objects {
                                    if let Some(h) =
                                        map::head(o, self.offset()).filter(|h| h.deleted)
                                    {
                                        deleted.push(h.id);
                                    }
                                }
                            }
                            if pass.step < steps.len() {
                                c.pass = Some(pass);
                                return Ok(RawPage {
                                    objects,
                                    deleted,
                                    next: encode(&c),
                                    has_more: true,
                                });
                            }
                        }
                        Some(_) => {
                            tracing::info!(entity = name, "last pass is older than CDC's window; stored records will be verified");
                            pass.verify = true;
                        }
                        // First pass: everything it read existed after
                        // `until`, and later deletions are the next CDC's.
                        None => {}
                    }
                }
            }
        }
        // Pass complete.
        let until = pass
            .until
            .unwrap_or_else(|| floor_second(chrono::Utc::now()));
        c.since = Some(until);
        if steps.iter().any(|s| matches!(s, Step::Cdc(_))) {
            c.cdc_since = Some(until);
        }
        c.verify |= pass.verify;
        c.pass = None;
        deleted.sort();
        deleted.dedup();
        Ok(RawPage {
            objects,
            deleted,
            next: encode(&c),
            has_more: false,
        })
    }

    fn map_records(
        &self,
        objects: Vec<(&'static str, Box<RawValue>)>,
    ) -> (Vec<Record>, Vec<Quarantined>) {
        let mut items = Vec::with_capacity(objects.len());
        let mut quarantined = Vec::new();
        for (name, o) in objects {
            match map::record(&o, name, &self.settings) {
                Ok(r) => items.push(r),
                Err(q) => quarantined.push(q),
            }
        }
        (items, quarantined)
    }
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

#[async_trait]
impl Connector for QuickbooksConnector {
    fn oauth(&self) -> Option<&OAuthClient> {
        Some(&self.oauth)
    }

    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError> {
        let raw = self.poll(Entity::Customers, cursor).await?;
        let mut items = Vec::with_capacity(raw.objects.len());
        let mut quarantined = Vec::new();
        for (_, o) in raw.objects {
            match map::customer(&o, &self.settings) {
                Ok(c) => items.push(c),
                Err(q) => quarantined.push(q),
            }
        }
        Ok(Page {
            items,
            deleted: raw.deleted,
            quarantined,
            next: raw.next,
            has_more: raw.has_more,
        })
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
        let raw = self.poll(entity, cursor).await?;
        let (items, quarantined) = self.map_records(raw.objects);
        Ok(Page {
            items,
            deleted: raw.deleted,
            quarantined,
            next: raw.next,
            has_more: raw.has_more,
        })
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
                "{} customers in one resync batch; at most {} per QuickBooks query",
                customer_ids.len(),
                self.resync_batch_size
            )));
        }
        let mut c: ResyncCursor = decode(cursor)?;
        let mut ids: Vec<&str> = customer_ids
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let entities = record_entities(entity);
        if ids.is_empty() || c.step >= entities.len() {
            return Ok(Page::empty(encode(&c)));
        }
        let list: Vec<String> = ids.iter().map(|id| quote(id)).collect();
        let filter = vec![format!("CustomerRef IN ({})", list.join(", "))];
        let name = entities[c.step];
        let (objs, done) = self
            .keyset_page(Lane::Resync, name, &filter, None, &mut c.until, &mut c.pos)
            .await?;
        if done {
            c.step += 1;
            c.pos = Keyset::default();
        }
        let (items, quarantined) = self.map_records(objs.into_iter().map(|o| (name, o)).collect());
        Ok(Page {
            items,
            deleted: Vec::new(),
            quarantined,
            has_more: c.step < entities.len(),
            next: encode(&c),
        })
    }

    fn resync_batch_size(&self) -> usize {
        self.resync_batch_size
    }

    fn page_size(&self) -> usize {
        self.page_size as usize
    }

    fn verification(&self, _entity: Entity, cursor: &Cursor) -> Option<Cursor> {
        let mut c: StreamCursor = decode(cursor).ok()?;
        if !c.verify || c.pass.is_some() {
            return None;
        }
        c.verify = false;
        Some(encode(&c))
    }

    fn verify_batch_size(&self) -> usize {
        self.page_size as usize
    }

    async fn deleted_among(
        &self,
        entity: Entity,
        ids: &[String],
    ) -> Result<Vec<String>, ConnectorError> {
        if ids.is_empty() || entity == Entity::Customers {
            return Ok(Vec::new());
        }
        if ids.len() > self.page_size as usize {
            return Err(ConnectorError::Config(format!(
                "{} ids in one verification batch; at most {}",
                ids.len(),
                self.page_size
            )));
        }
        let list: Vec<String> = ids.iter().map(|id| quote(id)).collect();
        let mut present: HashSet<String> = HashSet::new();
        for name in record_entities(entity) {
            let text = format!(
                "SELECT * FROM {name} WHERE Id IN ({}) MAXRESULTS {}",
                list.join(", "),
                self.page_size
            );
            let page = self.query(Lane::Poll, name, &text).await?;
            for o in &page.objects {
                if let Some(h) = map::head(o, self.offset()) {
                    present.insert(h.id);
                }
            }
        }
        Ok(ids
            .iter()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect())
    }
}
