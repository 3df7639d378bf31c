//! QuickBooks Online's wire format: query text (quoting and escaping),
//! timestamps, the `QueryResponse` / `CDCResponse` envelopes, `Fault`
//! envelopes (Intuit's `Fault` and the API gateway's lower-case `fault`), and
//! the mapping of an HTTP answer to [`ConnectorError`].
//!
//! Pure: no I/O. Objects inside an envelope are kept as raw JSON text so
//! money is read from its digits (never through a float) and one unreadable
//! object can be quarantined without losing the page.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::connectors::ConnectorError;
use crate::model::Timestamp;

/// A string literal for a query: quoted, with `'` and `\` escaped by `\`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A timestamp as QuickBooks writes them (`2015-12-23T12:55:50-08:00`), in
/// the company's offset; always with an explicit offset, so it means the
/// same instant whatever zone the server assumes.
pub fn datetime(t: Timestamp, offset: FixedOffset) -> String {
    t.with_timezone(&offset)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// Reads a QuickBooks time: RFC 3339 with an offset, or (defensively)
/// without one in the company's offset. Fractions are kept.
pub fn parse_time(s: &str, offset: FixedOffset) -> Option<Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s.trim(), f) {
            return offset
                .from_local_datetime(&n)
                .single()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    None
}

/// Truncates to whole seconds (the precision of `MetaData` times).
pub fn floor_second(t: Timestamp) -> Timestamp {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// A `QueryResponse`: the objects of one entity plus the paging fields.
#[derive(Debug, Default)]
pub struct QueryPage {
    pub objects: Vec<Box<RawValue>>,
    pub start_position: Option<u64>,
    pub max_results: Option<u64>,
    pub total_count: Option<u64>,
    /// The server's clock when it answered.
    pub time: Option<Timestamp>,
}

#[derive(Deserialize)]
struct QueryEnvelope {
    #[serde(rename = "QueryResponse")]
    query_response: Option<BTreeMap<String, Box<RawValue>>>,
    time: Option<String>,
}

#[derive(Deserialize)]
struct CdcEnvelope {
    #[serde(rename = "CDCResponse")]
    cdc_response: Vec<CdcItem>,
    time: Option<String>,
}

#[derive(Deserialize)]
struct CdcItem {
    #[serde(rename = "QueryResponse", default)]
    query_response: Vec<BTreeMap<String, Box<RawValue>>>,
}

/// The objects of one group of a `QueryResponse` map, with its
/// `startPosition`, `maxResults` and `totalCount`.
fn group(map: BTreeMap<String, Box<RawValue>>, entity: &str) -> Result<QueryPage, ConnectorError> {
    let mut objects = Vec::new();
    let (mut start, mut max, mut total) = (None, None, None);
    for (k, v) in map {
        let number = || serde_json::from_str::<u64>(v.get()).ok();
        match k.as_str() {
            "startPosition" => start = number(),
            "maxResults" => max = number(),
            "totalCount" => total = number(),
            _ if k == entity => {
                objects = serde_json::from_str(v.get()).map_err(|e| {
                    ConnectorError::Protocol(format!("`{entity}` is not a list of objects: {e}"))
                })?;
            }
            // Another entity's key in an answer about `entity` would be a
            // protocol error, but Intuit adds fields over time: ignore.
            _ => {}
        }
    }
    Ok(QueryPage {
        objects,
        start_position: start,
        max_results: max,
        total_count: total,
        time: None,
    })
}

/// Parses the body of a 200 answer to a query about `entity`.
pub fn parse_query(
    body: &[u8],
    entity: &str,
    offset: FixedOffset,
) -> Result<QueryPage, ConnectorError> {
    if let Some(f) = parse_fault(body) {
        return Err(f.into_error(200));
    }
    let env: QueryEnvelope = serde_json::from_slice(body).map_err(|e| {
        ConnectorError::Protocol(format!("QuickBooks query answer is not readable JSON: {e}"))
    })?;
    let map = env
        .query_response
        .ok_or_else(|| ConnectorError::Protocol("QuickBooks answer has no QueryResponse".into()))?;
    let mut page = group(map, entity)?;
    page.time = env.time.as_deref().and_then(|t| parse_time(t, offset));
    Ok(page)
}

/// One entity's part of a CDC answer.
#[derive(Debug, Default)]
pub struct CdcGroup {
    pub entity: String,
    pub objects: Vec<Box<RawValue>>,
}

#[derive(Debug, Default)]
pub struct CdcAnswer {
    pub groups: Vec<CdcGroup>,
    pub time: Option<Timestamp>,
}

impl CdcAnswer {
    pub fn total(&self) -> usize {
        self.groups.iter().map(|g| g.objects.len()).sum()
    }
}

/// Parses the body of a 200 answer to a CDC request for `entities`.
pub fn parse_cdc(
    body: &[u8],
    entities: &[&str],
    offset: FixedOffset,
) -> Result<CdcAnswer, ConnectorError> {
    if let Some(f) = parse_fault(body) {
        return Err(f.into_error(200));
    }
    let env: CdcEnvelope = serde_json::from_slice(body).map_err(|e| {
        ConnectorError::Protocol(format!("QuickBooks CDC answer is not readable JSON: {e}"))
    })?;
    let mut groups = Vec::new();
    for item in env.cdc_response {
        for map in item.query_response {
            let name = entities.iter().find(|e| map.contains_key(**e));
            if let Some(name) = name {
                groups.push(CdcGroup {
                    entity: name.to_string(),
                    objects: group(map, name)?.objects,
                });
            }
        }
    }
    Ok(CdcAnswer {
        groups,
        time: env.time.as_deref().and_then(|t| parse_time(t, offset)),
    })
}

/// A `Fault` (or the gateway's `fault`) from any answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: String,
    /// `code: Message: Detail` of each error.
    pub errors: Vec<(String, String)>,
}

impl Fault {
    pub fn text(&self) -> String {
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(code, text)| {
                if code.is_empty() {
                    text.clone()
                } else {
                    format!("{code}: {text}")
                }
            })
            .collect();
        format!("{} ({})", parts.join("; "), self.kind)
    }

    fn has_code(&self, codes: &[&str]) -> bool {
        self.errors.iter().any(|(c, _)| codes.contains(&c.as_str()))
    }

    /// The error a `Fault` in an answer with `status` means.
    pub fn into_error(self, status: u16) -> ConnectorError {
        let text = crate::connectors::redact::summary(&self.text());
        let kind = self.kind.to_ascii_lowercase();
        if self.has_code(&["3001", "003001"]) || kind.contains("throttle") {
            return ConnectorError::RateLimited { retry_after: None };
        }
        if kind.contains("authentication")
            || kind.contains("authorization")
            || self.has_code(&["3200", "3100"])
        {
            return ConnectorError::Auth(format!("QuickBooks refused the access token — {text}"));
        }
        if kind.contains("system") || status >= 500 {
            return ConnectorError::Server {
                status,
                message: text,
            };
        }
        ConnectorError::Rejected {
            status,
            message: text,
        }
    }
}

#[derive(Deserialize)]
struct FaultEnvelope {
    #[serde(rename = "Fault", alias = "fault")]
    fault: FaultBody,
}

#[derive(Deserialize)]
struct FaultBody {
    #[serde(rename = "Error", alias = "error", default)]
    error: Vec<FaultError>,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct FaultError {
    #[serde(rename = "Message", alias = "message", default)]
    message: String,
    #[serde(rename = "Detail", alias = "detail", default)]
    detail: String,
    #[serde(default)]
    code: String,
}

/// The fault in a body, if it is one. Secrets never appear in faults, but
/// the gateway's detail may echo part of a token: it is cut at the first `:`.
pub fn parse_fault(body: &[u8]) -> Option<Fault> {
    // Cheap test first: most answers are not faults.
    let head = &body[..body.len().min(64)];
    let head = String::from_utf8_lossy(head);
    if !head.contains("\"Fault\"") && !head.contains("\"fault\"") {
        return None;
    }
    let env: FaultEnvelope = serde_json::from_slice(body).ok()?;
    let errors = env
        .fault
        .error
        .into_iter()
        .map(|e| {
            let detail = if e.detail.to_ascii_lowercase().starts_with("token") {
                e.detail.split(':').next().unwrap_or_default().to_string()
            } else {
                e.detail
            };
            let text = match (e.message.is_empty(), detail.is_empty()) {
                (false, false) => format!("{}: {}", e.message, detail),
                (false, true) => e.message,
                _ => detail,
            };
            (e.code, text)
        })
        .collect();
    Some(Fault {
        kind: env.fault.kind,
        errors,
    })
}

/// Maps a non-200 answer to the error the budget acts on. 401 is handled by
/// the caller first (one token refresh, then this).
pub fn classify_failure(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ConnectorError {
    let fault = parse_fault(body);
    crate::connectors::redact::log_body("quickbooks", status, body);
    let text = fault
        .as_ref()
        .map(|f| crate::connectors::redact::summary(&f.text()))
        .unwrap_or_else(|| crate::connectors::redact::body_summary(body));
    match status {
        // Intuit sends no Retry-After; the budget backs off with jitter.
        429 => ConnectorError::RateLimited { retry_after },
        401 | 403 => ConnectorError::Auth(format!(
            "QuickBooks refused the request (HTTP {status}) — {text}. \
             Check realm_id and that the app is still connected to this company"
        )),
        500..=599 => ConnectorError::Server {
            status,
            message: text,
        },
        400..=499 => match fault {
            Some(f) => f.into_error(status),
            None => ConnectorError::Rejected {
                status,
                message: text,
            },
        },
        _ => ConnectorError::Protocol(format!("unexpected HTTP {status}: {text}")),
    }
}

/// A money value as QuickBooks sends it (a JSON number, read from its
/// digits; a quoted number is accepted too).
pub fn money(raw: &RawValue) -> Result<rust_decimal::Decimal, String> {
    let text = raw.get().trim();
    let text = text.trim_matches('"');
    text.parse::<rust_decimal::Decimal>()
        .or_else(|_| rust_decimal::Decimal::from_scientific(text))
        .map_err(|_| format!("`{text}` is not an amount"))
}
