//! Connectors: one module per ERP, each speaking only that ERP's wire
//! protocol, registered once in [`REGISTRY`] (see [`registry`] and
//! docs/connectors.md).
//!
//! A connector turns "give me the next page after this cursor" into requests to
//! its ERP and maps the answer into the canonical [`model`](crate::model). It
//! knows auth, paging, incremental cursors, deletions, and how its ERP marks
//! inactive / intercompany / archived customers.
//!
//! A connector must **not** write to the store, classify customers, decide what
//! to retry, or sleep on its own: every upstream request goes through
//! [`Budget::call`], which applies the shared rate limit, concurrency cap,
//! retry policy and `Retry-After` handling.

pub mod budget;
pub mod credentials;
pub mod demo;
pub mod netsuite;
pub mod oauth;
pub mod quickbooks;
pub mod redact;
pub mod registry;
pub mod xero;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{Customer, Entity, Quarantined, Record, Timestamp};

pub use budget::{Budget, Lane, QuotaReport, QuotaWindow};
pub use credentials::CredentialStore;
pub use registry::{BuildContext, ConnectorKind, Registry};

/// Every connector kind this build knows. Adding an ERP is its folder plus
/// one line here.
pub static REGISTRY: Registry = Registry::new(&[
    &demo::Demo,
    &netsuite::Netsuite,
    &quickbooks::Quickbooks,
    &xero::Xero,
]);

/// A connector's position in one upstream stream. Opaque to everything but the
/// connector that made it; the store persists it next to the data it covers.
/// The empty cursor means "from the beginning".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

impl Cursor {
    pub fn start() -> Self {
        Cursor(String::new())
    }
    pub fn is_start(&self) -> bool {
        self.0.is_empty()
    }
}

/// One page of an upstream stream.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// External ids deleted upstream (of the entity this page is about).
    pub deleted: Vec<String>,
    /// Records that could not be mapped; kept with their reason.
    pub quarantined: Vec<Quarantined>,
    /// Where to continue. Stored only once this page is durable.
    pub next: Cursor,
    /// More pages are ready now; when false the stream is caught up and the
    /// next poll continues from `next`.
    pub has_more: bool,
}

impl<T> Page<T> {
    pub fn empty(next: Cursor) -> Self {
        Page {
            items: Vec::new(),
            deleted: Vec::new(),
            quarantined: Vec::new(),
            next,
            has_more: false,
        }
    }
}

/// How a connector splits the first sync of one entity into id ranges read
/// in parallel ([`Connector::partition`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    /// The stream's incremental cursor, taken before any range is read: once
    /// every range is read to its end, the stream continues from here and so
    /// reads again whatever changed (or was deleted) while the ranges ran.
    pub then: Cursor,
    /// One start cursor per range, passed to
    /// [`fetch_customers`](Connector::fetch_customers) /
    /// [`fetch_records`](Connector::fetch_records) like any cursor; a range
    /// ends with its page whose `has_more` is false. Ranges must not
    /// overlap, and together they must cover every record that exists when
    /// `then` was taken.
    pub ranges: Vec<Cursor>,
}

/// A native exclusion a connector knows: a name used in config and in reasons
/// (`native:<name>`) and the test on a mapped customer.
#[derive(Clone, Copy)]
pub struct NativeExclusion {
    pub name: &'static str,
    pub description: &'static str,
    pub applies: fn(&Customer) -> bool,
}

impl std::fmt::Debug for NativeExclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

pub const NATIVE_INACTIVE: NativeExclusion = NativeExclusion {
    name: "inactive",
    description: "customer is marked inactive in the ERP",
    applies: |c| c.inactive,
};

pub const NATIVE_INTERCOMPANY: NativeExclusion = NativeExclusion {
    name: "intercompany",
    description: "customer represents a subsidiary of the same group",
    applies: |c| c.intercompany,
};

/// What every ERP connector implements (its kind, options and native
/// exclusions are declared by its [`ConnectorKind`]). Methods take `&self`
/// and may be called concurrently (polling and resync run side by side).
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Next page of customers changed since `cursor`.
    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError>;

    /// Next page of invoices (`Entity::Invoices`) or payments and credit notes
    /// (`Entity::Transactions`) changed since `cursor`.
    async fn fetch_records(
        &self,
        entity: Entity,
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError>;

    /// Full history of invoices or transactions of a set of customers (at most
    /// [`resync_batch_size`](Connector::resync_batch_size) of them), paged.
    /// Used by the resync engine; requests go through the `Lane::Resync` lane.
    async fn fetch_records_for_customers(
        &self,
        entity: Entity,
        customer_ids: &[String],
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError>;

    /// Splits the first sync of `entity` into at most `max_parts` id ranges
    /// (the engine reads them in parallel, each with its own durable
    /// cursor), or `None` to read it as one stream: the default, and the
    /// answer when the entity is too small to be worth it. May send
    /// requests (a `MIN`/`MAX` query), through the budget like any other.
    async fn partition(
        &self,
        _entity: Entity,
        _max_parts: usize,
    ) -> Result<Option<Partitioning>, ConnectorError> {
        Ok(None)
    }

    /// How many customers one `fetch_records_for_customers` call may name,
    /// bounded by the ERP's query length limits.
    fn resync_batch_size(&self) -> usize {
        100
    }

    /// Records per full page, used to estimate request counts for ETAs.
    fn page_size(&self) -> usize {
        1000
    }

    /// Called with a stream's cursor when a pass ended (`has_more` false).
    /// `Some(next)` means the connector could not see every upstream
    /// deletion since the last pass (a change feed that overflowed or
    /// expired): the sync engine then checks every stored record of `entity`
    /// with [`deleted_among`](Connector::deleted_among), removes the ones
    /// that are gone, and stores `next` in the same write as the last batch.
    fn verification(&self, _entity: Entity, _cursor: &Cursor) -> Option<Cursor> {
        None
    }

    /// How many ids one [`deleted_among`](Connector::deleted_among) call may name.
    fn verify_batch_size(&self) -> usize {
        100
    }

    /// Of these stored ids of `entity`, the ones that no longer exist upstream.
    async fn deleted_among(
        &self,
        _entity: Entity,
        _ids: &[String],
    ) -> Result<Vec<String>, ConnectorError> {
        Ok(Vec::new())
    }

    /// The connector's OAuth 2.0 client, if it uses one (its state shows
    /// in `/status`, never its tokens).
    fn oauth(&self) -> Option<&oauth::OAuthClient> {
        None
    }
}

/// Why an upstream call failed. [`is_retryable`](ConnectorError::is_retryable)
/// decides whether [`Budget::call`] tries again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    /// The ERP said "too many requests" (or its equivalent).
    #[error("rate limited by the ERP{}", retry_after_text(*.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx from the ERP.
    #[error("ERP server error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// Connection refused, reset, timed out.
    #[error("network error: {0}")]
    Transport(String),
    /// The body could not be read as the ERP's format (e.g. truncated).
    #[error("unreadable response: {0}")]
    Protocol(String),
    /// Credentials were refused. Not retried: retrying cannot fix a wrong secret.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Any other 4xx: the request itself is wrong.
    #[error("request rejected by the ERP (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// Local misconfiguration detected at request time.
    #[error("{0}")]
    Config(String),
    /// The ERP refused the access token of an OAuth 2.0 request (HTTP
    /// 401). Returned by a connector's request closure inside
    /// [`OAuthClient::authorized`](oauth::OAuthClient::authorized), which
    /// refreshes the token once and retries; never retried by the budget.
    #[error("access token refused (HTTP 401): {0}")]
    Unauthorized(String),
    /// The ERP refused the stored refresh token (`invalid_grant`), or none
    /// was ever stored: only a person can fix it, with `command`. Not
    /// retried; the connector shows `state: "needs_reconnect"`.
    #[error("needs reconnecting: {reason}; run `{command}`")]
    NeedsReconnect { reason: String, command: String },
    /// The ERP's daily request quota is used up (for example a 429 with
    /// `X-Rate-Limit-Problem: day`). A `retry_after` up to the budget's
    /// `max_retry_wait` is waited out; a longer one parks the connector.
    #[error("daily request quota of the ERP used up{}", retry_after_text(*.retry_after))]
    DailyQuota { retry_after: Option<Duration> },
    /// Returned by the budget, never by a connector: requests are parked
    /// until `resumes_at` because the daily quota is used up. Not retried.
    #[error("daily request quota used up; requests resume at {resumes_at}")]
    QuotaExhausted { resumes_at: Timestamp },
}

fn retry_after_text(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (retry after {} s)", d.as_secs_f64()),
        None => String::new(),
    }
}

impl ConnectorError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. }
                | ConnectorError::Server { .. }
                | ConnectorError::Transport(_)
                | ConnectorError::Protocol(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::RateLimited { retry_after }
            | ConnectorError::DailyQuota { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The connector cannot work until something outside it changes (a
    /// person reconnects it, the daily quota resets): workers pause instead
    /// of failing their jobs.
    pub fn pauses_connector(&self) -> bool {
        matches!(
            self,
            ConnectorError::NeedsReconnect { .. } | ConnectorError::QuotaExhausted { .. }
        )
    }

    /// Maps a reqwest failure to the matching variant.
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_decode() || e.is_body() {
            ConnectorError::Protocol(e.to_string())
        } else {
            ConnectorError::Transport(e.without_url().to_string())
        }
    }
}

/// The longest `Retry-After` read from a header: a broken or hostile value
/// must not park a connector for days. The budget waits out at most
/// `rate_limit.max_retry_wait` (1 h by default) in place; only a daily-quota
/// refusal may ask for longer, and parks the connector.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Parses an HTTP `Retry-After` header value (seconds form; the HTTP-date form
/// is accepted too), at most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(
                Duration::try_from_secs_f64(secs)
                    .unwrap_or(MAX_RETRY_AFTER)
                    .min(MAX_RETRY_AFTER),
            );
        }
    }
    chrono::DateTime::parse_from_rfc2822(v).ok().map(|t| {
        let delta = t.with_timezone(&chrono::Utc) - chrono::Utc::now();
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("1e300"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("99999999"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(ConnectorError::RateLimited { retry_after: None }.is_retryable());
        assert!(ConnectorError::Server {
            status: 503,
            message: String::new()
        }
        .is_retryable());
        assert!(!ConnectorError::Auth("x".into()).is_retryable());
        assert!(!ConnectorError::Rejected {
            status: 400,
            message: String::new()
        }
        .is_retryable());
    }
}
