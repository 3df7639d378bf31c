//! Xero connector (`kind = "xero"`): contacts and the receivables side of
//! the Accounting API — sales invoices, customer credit notes and customer
//! payments — for one organisation (tenant), over OAuth 2.0.
//!
//! Owns Xero's wire protocol: the request headers (`Authorization: Bearer`,
//! `xero-tenant-id`, `Accept: application/json`, `If-Modified-Since`), the
//! queries and cursors ([`query`]), the JSON envelopes, MS-JSON dates and
//! the mapping ([`wire`]), the options ([`options`]), the tenant list
//! (`GET /connections`), and the mapping of Xero's answers to
//! [`ConnectorError`]. Bills, supplier credit notes and supplier payments
//! are filtered out in the query and again in the mapping: they are never
//! returned to ingest.
//!
//! Every request goes through [`Budget::call`] and, inside it,
//! [`OAuthClient::authorized`]; this module never sleeps, retries, refreshes
//! tokens or writes to the store itself, and never logs a token or a header.
//!
//! # Limits
//!
//! Xero allows per organisation 60 requests a minute, 5 at once and 5,000 a
//! day (the kind's default limits; its 2026 plans differ, so all three are
//! configurable). Every answer's `X-DayLimit-Remaining`,
//! `X-MinLimit-Remaining` and `X-AppMinLimit-Remaining` feed
//! [`Budget::report_quota`]. A 429 says which limit in
//! `X-Rate-Limit-Problem`: `day` (or the older `Daily`) becomes
//! [`ConnectorError::DailyQuota`] with its `Retry-After`, so the budget
//! parks the connector until the reset; any other is
//! [`ConnectorError::RateLimited`], waited out.
//!
//! # Errors
//!
//! 401 (`TokenExpired`, ...) is [`ConnectorError::Unauthorized`]: the OAuth
//! client refreshes once and retries. 403 `AuthenticationUnsuccessful` means
//! the tenant is not connected to this token: an `Auth` error that lists the
//! organisations the token can see. Other 4xx are `Rejected` with Xero's
//! `Detail` or `Message`, 5xx `Server`, an unreadable or XML body `Protocol`.

pub mod options;
pub mod query;
#[cfg(test)]
mod tests;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, IF_MODIFIED_SINCE, RETRY_AFTER};

use crate::config::{duration, Limits, OptionsCheck};
use crate::connectors::oauth::OAuthClient;
use crate::connectors::{
    parse_retry_after, Budget, BuildContext, Connector, ConnectorError, ConnectorKind, Cursor,
    Lane, NativeExclusion, Page, QuotaReport, QuotaWindow,
};
use crate::model::{Customer, Entity, Record, Timestamp};

pub use options::XeroOptions;
use options::{is_guid, TOKEN_URL};
use query::{Endpoint, Position, ResyncCursor, TransactionsCursor, TxPhase, WHERE_CHUNK};
use wire::{Connection, Envelope, MappedPage};

/// The `xero` kind.
pub struct Xero;

fn contact_status(c: &Customer) -> Option<&str> {
    c.custom.get(wire::CUSTOM_STATUS).map(String::as_str)
}

/// Archived contacts (`ContactStatus == "ARCHIVED"`).
pub const NATIVE_ARCHIVED: NativeExclusion = NativeExclusion {
    name: "archived",
    description: "contact is ARCHIVED in Xero (archived contacts are only listed when asked for; the connector always asks)",
    applies: |c| contact_status(c) == Some("ARCHIVED"),
};

/// Contacts with a GDPR request (`ContactStatus == "GDPRREQUEST"`); their
/// personal fields are never stored, whether or not this exclusion is on.
pub const NATIVE_GDPR_REQUEST: NativeExclusion = NativeExclusion {
    name: "gdpr_request",
    description: "contact has a GDPR request in Xero (status GDPRREQUEST); its personal fields are never stored",
    applies: |c| contact_status(c) == Some("GDPRREQUEST"),
};

impl ConnectorKind for Xero {
    const NAME: &'static str = "xero";
    type Options = XeroOptions;
    const NATIVE_EXCLUSIONS: &'static [NativeExclusion] = &[NATIVE_ARCHIVED, NATIVE_GDPR_REQUEST];

    /// ContactIDs are GUIDs.
    fn check_customer_id(id: &str) -> Result<(), String> {
        if options::is_guid(id) {
            Ok(())
        } else {
            Err("Xero customer ids are ContactIDs, GUIDs such as 9b2c4a8e-1f3d-4c5e-8a7b-112233445566".into())
        }
    }

    /// Xero's documented limits per organisation: 60 a minute (one a
    /// second, no burst, so no 60-second window ever holds more than 60),
    /// 5 at once, 5,000 a day.
    fn default_limits() -> Limits {
        Limits {
            requests_per_second: 1.0,
            burst: 1,
            max_concurrency: 5,
            requests_per_day: Some(5000),
            ..Limits::default()
        }
    }

    fn check(options: &XeroOptions, check: &mut OptionsCheck<'_>) {
        options.check(check);
    }

    fn uses_oauth(_: &XeroOptions) -> bool {
        true
    }

    fn build(options: &XeroOptions, cx: BuildContext) -> Result<Arc<dyn Connector>, String> {
        let mut check = OptionsCheck::detached(&cx.base_dir);
        options.check(&mut check);
        if !check.is_empty() {
            return Err(format!(
                "invalid [connectors.xero] options: {}",
                check.messages().join("; ")
            ));
        }
        let oauth = options.oauth.client(Some(TOKEN_URL), &cx)?;
        Ok(Arc::new(XeroConnector::new(options, oauth, cx.budget)?))
    }
}

/// The start of an `Auth` message for a tenant Xero refused (403
/// `AuthenticationUnsuccessful`); such errors get the tenant list appended.
const TENANT_REFUSED: &str = "Xero refused the organisation";

pub struct XeroConnector {
    tenant_id: Option<String>,
    /// `<base>/api.xro/2.0/`.
    api: reqwest::Url,
    /// `<base>/connections`.
    connections_url: reqwest::Url,
    http: reqwest::Client,
    oauth: OAuthClient,
    budget: Arc<Budget>,
    page_size: u32,
    resync_batch_size: usize,
}

impl std::fmt::Debug for XeroConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XeroConnector")
            .field("tenant_id", &self.tenant_id)
            .field("api", &self.api.as_str())
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl XeroConnector {
    pub fn new(
        options: &XeroOptions,
        oauth: OAuthClient,
        budget: Arc<Budget>,
    ) -> Result<XeroConnector, String> {
        let base = options
            .effective_base_url()
            .map_err(|e| format!("base_url: {e}"))?;
        let api = base
            .join("/api.xro/2.0/")
            .map_err(|e| format!("base_url: {e}"))?;
        let connections_url = base
            .join("/connections")
            .map_err(|e| format!("base_url: {e}"))?;
        let timeout = duration::parse(&options.request_timeout)
            .map_err(|e| format!("request_timeout: {e}"))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("erpsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(XeroConnector {
            tenant_id: options.tenant_id.clone(),
            api,
            connections_url,
            http,
            oauth,
            budget,
            page_size: options.page_size,
            resync_batch_size: options.resync_batch_size,
        })
    }

    /// Feeds the remaining-quota headers of an answer to the budget.
    fn report_quota(&self, status: u16, headers: &HeaderMap, limit: Option<&Refusal>) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match limit {
            // The day is used up; Retry-After says when it is back.
            Some(Refusal::Day(retry_after)) => self.budget.report_quota(QuotaReport {
                window: QuotaWindow::Day,
                remaining: 0,
                resets_in: *retry_after,
            }),
            _ => {
                if let Some(d) = num("x-daylimit-remaining") {
                    self.budget.report_quota(QuotaReport {
                        window: QuotaWindow::Day,
                        remaining: d,
                        resets_in: None,
                    });
                }
            }
        }
        // On a 429 its Retry-After is the better word on the minute window.
        if status != 429 {
            let minute = match (num("x-minlimit-remaining"), num("x-appminlimit-remaining")) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(m) = minute {
                self.budget.report_quota(QuotaReport {
                    window: QuotaWindow::Minute,
                    remaining: m,
                    resets_in: None,
                });
            }
        }
    }

    /// One authorised GET (inside the budget and the OAuth client): the
    /// answer's body when it is a 2xx, else the mapped error.
    async fn get(
        &self,
        lane: Lane,
        url: &reqwest::Url,
        tenant: Option<&str>,
        since: Option<Timestamp>,
    ) -> Result<Answer, ConnectorError> {
        self.budget
            .call(lane, || {
                self.oauth.authorized(|token| async move {
                    let mut req = self
                        .http
                        .get(url.clone())
                        .bearer_auth(token.secret())
                        .header(ACCEPT, "application/json");
                    if let Some(t) = tenant {
                        req = req.header("xero-tenant-id", t);
                    }
                    if let Some(s) = since {
                        req = req.header(IF_MODIFIED_SINCE, query::if_modified_since(s));
                    }
                    let resp = req.send().await.map_err(ConnectorError::from_reqwest)?;
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let body = resp
                        .bytes()
                        .await
                        .map_err(ConnectorError::from_reqwest)?
                        .to_vec();
                    let refusal = (status == 429).then(|| Refusal::of(&headers));
                    self.report_quota(status, &headers, refusal.as_ref());
                    if (200..300).contains(&status) {
                        return Ok(Answer { headers, body });
                    }
                    super::redact::log_body("xero", status, &body);
                    Err(classify_failure(status, refusal, &body))
                })
            })
            .await
    }

    /// One page of a list endpoint.
    async fn list(
        &self,
        lane: Lane,
        ep: Endpoint,
        params: &[(&'static str, String)],
        since: Option<Timestamp>,
    ) -> Result<Envelope, ConnectorError> {
        let tenant = self.tenant().await?;
        let mut url = self
            .api
            .join(ep.name())
            .map_err(|e| ConnectorError::Config(format!("base_url: {e}")))?;
        url.query_pairs_mut()
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        tracing::debug!(endpoint = ep.name(), page = params.iter().find(|(k, _)| *k == "page").map(|(_, v)| v.as_str()), since = ?since, "xero list request");
        let answer = match self.get(lane, &url, Some(tenant), since).await {
            Ok(a) => a,
            Err(e) => return Err(self.with_tenant_help(e).await),
        };
        answer.check_json(ep.name())?;
        wire::parse_envelope(&answer.body, ep.name()).map_err(ConnectorError::Protocol)
    }

    /// The organisations this connection can see (`GET /connections`).
    pub async fn connections(&self) -> Result<Vec<Connection>, ConnectorError> {
        let answer = self
            .get(Lane::Poll, &self.connections_url, None, None)
            .await?;
        answer.check_json("connections")?;
        wire::parse_connections(&answer.body).map_err(ConnectorError::Protocol)
    }

    /// The organisations this connection can see, as a sentence for
    /// messages.
    async fn describe_connections(&self) -> Result<String, ConnectorError> {
        let list = self.connections().await?;
        if list.is_empty() {
            return Ok("this connection can see no organisation; reconnect with a user who grants access to one".into());
        }
        let names: Vec<String> = list
            .iter()
            .map(|c| {
                let name: String = c
                    .tenant_name
                    .as_deref()
                    .unwrap_or("(unnamed)")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect();
                let kind = c.tenant_type.as_deref().unwrap_or("ORGANISATION");
                format!("{name} ({kind}, tenant_id = \"{}\")", c.tenant_id)
            })
            .collect();
        Ok(format!("this connection can see: {}", names.join(", ")))
    }

    /// The tenant to send; without one configured, an error that lists
    /// the organisations the connection can see.
    async fn tenant(&self) -> Result<&str, ConnectorError> {
        if let Some(t) = &self.tenant_id {
            return Ok(t);
        }
        let seen = match self.describe_connections().await {
            Ok(s) => s,
            Err(e) if e.pauses_connector() => return Err(e),
            Err(e) => format!("listing them failed: {e}"),
        };
        Err(ConnectorError::Config(format!(
            "tenant_id is not set in [connectors.xero]; {seen}. Set tenant_id to the organisation to sync"
        )))
    }

    /// Appends the organisations the token can see to a tenant refusal.
    async fn with_tenant_help(&self, e: ConnectorError) -> ConnectorError {
        match e {
            ConnectorError::Auth(m) if m.starts_with(TENANT_REFUSED) => {
                let seen = match self.describe_connections().await {
                    Ok(s) => s,
                    Err(le) if le.pauses_connector() => return le,
                    Err(le) => format!("listing the organisations failed: {le}"),
                };
                ConnectorError::Auth(format!("{m}; {seen}"))
            }
            other => other,
        }
    }

    /// One page of an incremental stream, mapped.
    async fn incremental<T>(
        &self,
        ep: Endpoint,
        pos: &Position,
        map: impl Fn(&[Box<serde_json::value::RawValue>]) -> MappedPage<T>,
    ) -> Result<(MappedPage<T>, Position, bool), ConnectorError> {
        let env = self
            .list(
                Lane::Poll,
                ep,
                &query::incremental_params(ep, pos.page, self.page_size),
                pos.since,
            )
            .await?;
        let more = query::has_more(&env, self.page_size);
        let mapped = map(&env.records);
        if !mapped.in_order {
            tracing::warn!(
                endpoint = ep.name(),
                "Xero answered out of UpdatedDateUTC order; paging by page number"
            );
        }
        let next = query::advance(pos, mapped.max_updated, mapped.in_order, more);
        if mapped.skipped > 0 {
            tracing::debug!(
                endpoint = ep.name(),
                skipped = mapped.skipped,
                "left out records that are not receivables"
            );
        }
        Ok((mapped, next, more))
    }

    /// The contact ids of a resync batch that can be put in a query.
    fn resync_ids(&self, customer_ids: &[String]) -> Result<Vec<String>, ConnectorError> {
        if customer_ids.len() > self.resync_batch_size {
            return Err(ConnectorError::Config(format!(
                "{} customers in one resync batch; at most {} fit in one Xero query",
                customer_ids.len(),
                self.resync_batch_size
            )));
        }
        let mut ids: Vec<String> = Vec::with_capacity(customer_ids.len());
        for raw in customer_ids {
            let id = raw.trim().to_ascii_lowercase();
            if is_guid(&id) {
                ids.push(id);
            } else {
                tracing::warn!(customer = %raw, "skipping a customer id that is not a Xero ContactID in resync");
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// A 429 and which limit it names.
enum Refusal {
    Day(Option<Duration>),
    Other(Option<Duration>),
}

impl Refusal {
    fn of(headers: &HeaderMap) -> Refusal {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let problem = headers
            .get("x-rate-limit-problem")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // Observed: `minute`, `day`; the older documentation: `Minute`, `Daily`.
        if problem == "day" || problem == "daily" {
            Refusal::Day(retry_after)
        } else {
            Refusal::Other(retry_after)
        }
    }
}

/// The readable part of a Xero error body: `Detail` (problem details),
/// `Message` (API exceptions) with the first validation error, or the text.
fn error_text(body: &[u8]) -> String {
    let clean = super::redact::summary;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|x| !x.is_empty());
        let mut parts = Vec::new();
        if let Some(t) = s("Type").or(s("Title")) {
            parts.push(clean(t));
        }
        if let Some(m) = s("Detail").or(s("Message")) {
            parts.push(clean(m));
        }
        if let Some(first) = v
            .pointer("/Elements/0/ValidationErrors/0/Message")
            .and_then(|x| x.as_str())
        {
            parts.push(clean(first));
        }
        if !parts.is_empty() {
            return parts.join(": ");
        }
    }
    super::redact::body_summary(body)
}

/// Maps a non-2xx answer to the error the budget and the OAuth client act on.
fn classify_failure(status: u16, refusal: Option<Refusal>, body: &[u8]) -> ConnectorError {
    let text = error_text(body);
    match (status, refusal) {
        (429, Some(Refusal::Day(retry_after))) => ConnectorError::DailyQuota { retry_after },
        (429, Some(Refusal::Other(retry_after))) => ConnectorError::RateLimited { retry_after },
        (429, None) => ConnectorError::RateLimited { retry_after: None },
        (401, _) => ConnectorError::Unauthorized(text),
        (403, _) if text.contains("AuthenticationUnsuccessful") => ConnectorError::Auth(format!(
            "{TENANT_REFUSED} (HTTP 403 {text}): tenant_id is wrong or the organisation was disconnected from this app"
        )),
        (403, _) => ConnectorError::Auth(format!(
            "Xero refused the request (HTTP 403 {text}); check the scopes the connection was granted: accounting.contacts.read with accounting.invoices.read and accounting.payments.read (or accounting.transactions.read for apps created before March 2026)"
        )),
        (400..=499, _) => ConnectorError::Rejected {
            status,
            message: text,
        },
        (500..=599, _) => ConnectorError::Server {
            status,
            message: text,
        },
        _ => ConnectorError::Protocol(format!("unexpected HTTP {status}: {text}")),
    }
}

/// A 2xx answer's headers and body.
struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// Xero answers XML unless JSON is asked for; anything but JSON is a
    /// protocol error, never parsed.
    fn check_json(&self, what: &str) -> Result<(), ConnectorError> {
        let ct = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let looks_json = self
            .body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[');
        if ct.to_ascii_lowercase().contains("json") || (ct.is_empty() && looks_json) {
            return Ok(());
        }
        Err(ConnectorError::Protocol(format!(
            "the {what} answer is not JSON (Content-Type `{}`)",
            ct.chars().take(60).collect::<String>()
        )))
    }
}

fn page<T>(mapped: MappedPage<T>, next: Cursor, has_more: bool) -> Page<T> {
    Page {
        items: mapped.items,
        deleted: mapped.deleted,
        quarantined: mapped.quarantined,
        next,
        has_more,
    }
}

#[async_trait]
impl Connector for XeroConnector {
    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError> {
        let pos: Position = query::decode(cursor)?;
        let (mapped, next, more) = self
            .incremental(Endpoint::Contacts, &pos, |r| {
                wire::map_page::<wire::WireContact, _>(r, wire::map_contact)
            })
            .await?;
        Ok(page(mapped, query::encode(&next), more))
    }

    async fn fetch_records(
        &self,
        entity: Entity,
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        match entity {
            Entity::Customers => Err(ConnectorError::Config(
                "fetch_records reads invoices or transactions, not customers".into(),
            )),
            Entity::Invoices => {
                let pos: Position = query::decode(cursor)?;
                let (mapped, next, more) = self
                    .incremental(Endpoint::Invoices, &pos, |r| {
                        wire::map_page::<wire::WireInvoice, _>(r, wire::map_invoice)
                    })
                    .await?;
                Ok(page(mapped, query::encode(&next), more))
            }
            Entity::Transactions => {
                let mut c: TransactionsCursor = query::decode(cursor)?;
                let (mapped, next, more) = match c.phase {
                    TxPhase::CreditNotes => {
                        self.incremental(Endpoint::CreditNotes, &c.credit_notes, |r| {
                            wire::map_page::<wire::WireCreditNote, _>(r, wire::map_credit_note)
                        })
                        .await?
                    }
                    TxPhase::Payments => {
                        self.incremental(Endpoint::Payments, &c.payments, |r| {
                            wire::map_page::<wire::WirePayment, _>(r, wire::map_payment)
                        })
                        .await?
                    }
                };
                let has_more = match c.phase {
                    TxPhase::CreditNotes => {
                        c.credit_notes = next;
                        if !more {
                            c.phase = TxPhase::Payments;
                        }
                        // Payments follow in this pass either way.
                        true
                    }
                    TxPhase::Payments => {
                        c.payments = next;
                        if !more {
                            c.phase = TxPhase::CreditNotes;
                        }
                        more
                    }
                };
                Ok(page(mapped, query::encode(&c), has_more))
            }
        }
    }

    async fn fetch_records_for_customers(
        &self,
        entity: Entity,
        customer_ids: &[String],
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        let ids = self.resync_ids(customer_ids)?;
        let mut c: ResyncCursor = query::decode(cursor)?;
        if ids.is_empty() {
            return Ok(Page::empty(query::encode(&c)));
        }
        match entity {
            Entity::Customers => Err(ConnectorError::Config(
                "fetch_records_for_customers reads invoices or transactions, not customers".into(),
            )),
            Entity::Invoices => {
                let env = self
                    .list(
                        Lane::Resync,
                        Endpoint::Invoices,
                        &query::resync_params(Endpoint::Invoices, &ids, c.page, self.page_size),
                        None,
                    )
                    .await?;
                let more = query::has_more(&env, self.page_size);
                let mapped =
                    wire::map_page::<wire::WireInvoice, _>(&env.records, wire::map_invoice);
                c.page += 1;
                Ok(page(mapped, query::encode(&c), more))
            }
            Entity::Transactions => {
                let chunks: Vec<&[String]> = ids.chunks(WHERE_CHUNK).collect();
                let Some(chunk) = chunks.get(c.chunk) else {
                    return Ok(Page::empty(query::encode(&c)));
                };
                let ep = c.phase.endpoint();
                let env = self
                    .list(
                        Lane::Resync,
                        ep,
                        &query::resync_params(ep, chunk, c.page, self.page_size),
                        None,
                    )
                    .await?;
                let more = query::has_more(&env, self.page_size);
                let mapped = match c.phase {
                    TxPhase::CreditNotes => wire::map_page::<wire::WireCreditNote, _>(
                        &env.records,
                        wire::map_credit_note,
                    ),
                    TxPhase::Payments => {
                        wire::map_page::<wire::WirePayment, _>(&env.records, wire::map_payment)
                    }
                };
                let has_more = if more {
                    c.page += 1;
                    true
                } else if c.chunk + 1 < chunks.len() {
                    c.chunk += 1;
                    c.page = 1;
                    true
                } else if c.phase == TxPhase::CreditNotes {
                    c = ResyncCursor {
                        phase: TxPhase::Payments,
                        ..ResyncCursor::default()
                    };
                    true
                } else {
                    false
                };
                Ok(page(mapped, query::encode(&c), has_more))
            }
        }
    }

    fn resync_batch_size(&self) -> usize {
        self.resync_batch_size
    }

    fn page_size(&self) -> usize {
        self.page_size as usize
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        Some(&self.oauth)
    }
}
