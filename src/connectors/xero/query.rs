//! What the connector asks Xero, and where it is in each stream: the query
//! parameters of every list request and the cursors. Pure.
//!
//! # Incremental reads
//!
//! Every stream is read in `UpdatedDateUTC` order with `If-Modified-Since`
//! (second precision: Xero drops milliseconds and returns the records
//! modified after that second) and `page`/`pageSize`. The position
//! ([`Position`]) is `since` (whole seconds) and `page`. After a page whose
//! latest record was modified at `M`:
//!
//! - more pages follow and `floor(M) - 1 s` is past `since`: the next
//!   request starts again at page 1 with `since = floor(M) - 1 s`. Records
//!   modified meanwhile move to the end of the order and are read again;
//!   none is skipped, because nothing before the new `since` is left
//!   unread. The records of the last second repeat (ingest is idempotent).
//! - more pages follow but the whole page lies within the second after
//!   `since` (a bulk change): the next page number is read instead.
//! - the page is not in `UpdatedDateUTC` order (the order was not
//!   honoured): the next page number, so nothing earlier is skipped.
//! - no more pages: the stream is caught up; the next pass starts at
//!   `floor(M) - 1 s`, so a record written in the same second as `M` but
//!   after this read is still found (and the boundary records repeat).
//!
//! The cursor never depends on this host's clock, only on Xero's times.
//!
//! # Resync
//!
//! The full history of a set of contacts, ordered by id (stable while
//! records change) and paged by page number: invoices with `ContactIDs`;
//! credit notes with `where=Type=="ACCRECCREDIT" AND (Contact.ContactID==Guid(...) OR ...)`;
//! payments with `where=PaymentType=="ACCRECPAYMENT" AND (Invoice.Contact.ContactID==Guid(...) OR ...)`,
//! the contacts split in chunks of [`WHERE_CHUNK`] so every query string
//! stays short.

use serde::{Deserialize, Serialize};

use super::wire::Envelope;
use crate::connectors::{ConnectorError, Cursor};
use crate::model::Timestamp;

/// The four list endpoints the connector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Contacts,
    Invoices,
    CreditNotes,
    Payments,
}

impl Endpoint {
    /// The path segment under `/api.xro/2.0/` and the envelope's list key.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Contacts => "Contacts",
            Endpoint::Invoices => "Invoices",
            Endpoint::CreditNotes => "CreditNotes",
            Endpoint::Payments => "Payments",
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Endpoint::Contacts => "ContactID",
            Endpoint::Invoices => "InvoiceID",
            Endpoint::CreditNotes => "CreditNoteID",
            Endpoint::Payments => "PaymentID",
        }
    }
}

/// Every invoice status, asked for explicitly so deleted and voided invoices
/// come back (and are removed locally) whatever Xero's default listing is.
pub const ALL_INVOICE_STATUSES: &str = "DRAFT,SUBMITTED,AUTHORISED,PAID,VOIDED,DELETED";

/// Contacts per `where` clause in a resync request (a clause is about 75
/// characters once URL-encoded; 20 keep a query string near 1,700).
pub const WHERE_CHUNK: usize = 20;

/// The `where` filter of each stream: the receivables side only.
fn receivables_filter(ep: Endpoint) -> Option<&'static str> {
    match ep {
        Endpoint::Contacts => None,
        Endpoint::Invoices => Some(r#"Type=="ACCREC""#),
        Endpoint::CreditNotes => Some(r#"Type=="ACCRECCREDIT""#),
        Endpoint::Payments => Some(r#"PaymentType=="ACCRECPAYMENT""#),
    }
}

/// Query parameters of one incremental page.
pub fn incremental_params(ep: Endpoint, page: u32, page_size: u32) -> Vec<(&'static str, String)> {
    let mut p = Vec::with_capacity(6);
    match ep {
        // Archived contacts are listed only when asked for.
        Endpoint::Contacts => p.push(("includeArchived", "true".to_string())),
        Endpoint::Invoices => p.push(("Statuses", ALL_INVOICE_STATUSES.to_string())),
        Endpoint::CreditNotes | Endpoint::Payments => {}
    }
    if let Some(w) = receivables_filter(ep) {
        p.push(("where", w.to_string()));
    }
    p.push(("order", "UpdatedDateUTC ASC".to_string()));
    p.push(("page", page.to_string()));
    p.push(("pageSize", page_size.to_string()));
    p
}

/// Query parameters of one resync page: the history of `contacts` (GUIDs,
/// at most [`WHERE_CHUNK`] for credit notes and payments).
pub fn resync_params(
    ep: Endpoint,
    contacts: &[String],
    page: u32,
    page_size: u32,
) -> Vec<(&'static str, String)> {
    let mut p = Vec::with_capacity(6);
    let filter = receivables_filter(ep).unwrap_or_default();
    match ep {
        Endpoint::Invoices => {
            p.push(("ContactIDs", contacts.join(",")));
            p.push(("Statuses", ALL_INVOICE_STATUSES.to_string()));
            p.push(("where", filter.to_string()));
        }
        Endpoint::CreditNotes | Endpoint::Payments => {
            let field = if ep == Endpoint::Payments {
                "Invoice.Contact.ContactID"
            } else {
                "Contact.ContactID"
            };
            let any = contacts
                .iter()
                .map(|id| format!(r#"{field}==Guid("{id}")"#))
                .collect::<Vec<_>>()
                .join(" OR ");
            p.push(("where", format!("{filter} AND ({any})")));
        }
        Endpoint::Contacts => p.push(("IDs", contacts.join(","))),
    }
    p.push(("order", format!("{} ASC", ep.id_field())));
    p.push(("page", page.to_string()));
    p.push(("pageSize", page_size.to_string()));
    p
}

/// The `If-Modified-Since` value: UTC, whole seconds, the
/// `yyyy-mm-ddThh:mm:ss` form Xero documents.
pub fn if_modified_since(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Whether more pages follow this one: Xero's `pagination` block when it
/// is there, else a full page. An empty page always ends the stream.
pub fn has_more(env: &Envelope, page_size: u32) -> bool {
    if env.records.is_empty() {
        return false;
    }
    match env.pagination {
        Some(p) => p.page < p.page_count,
        None => env.records.len() as u64 >= u64::from(page_size),
    }
}

fn one() -> u32 {
    1
}

/// Where one incremental stream is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// `If-Modified-Since` (whole seconds); `None` reads from the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    #[serde(default = "one")]
    pub page: u32,
}

impl Default for Position {
    fn default() -> Self {
        Position {
            since: None,
            page: 1,
        }
    }
}

/// The second before `t`'s second: the next `since`.
fn boundary(t: Timestamp) -> Timestamp {
    let secs = t.timestamp() - 1;
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or(t)
}

/// The position after reading `pos`, whose records' latest modification was
/// `max_updated`, whether they came in `UpdatedDateUTC` order, and whether
/// more pages follow (see the module docs). Out of order, an earlier record
/// could still be on a later page: the next page number is read instead,
/// never a later `since`.
pub fn advance(
    pos: &Position,
    max_updated: Option<Timestamp>,
    in_order: bool,
    more: bool,
) -> Position {
    let candidate = max_updated.map(boundary);
    if more {
        match candidate {
            Some(c) if in_order && pos.since.is_none_or(|s| c > s) => Position {
                since: Some(c),
                page: 1,
            },
            _ => Position {
                since: pos.since,
                page: pos.page.saturating_add(1),
            },
        }
    } else {
        let since = match (candidate, pos.since) {
            (Some(c), Some(s)) => Some(c.max(s)),
            (c, s) => c.or(s),
        };
        Position { since, page: 1 }
    }
}

/// Which document stream of transactions a cursor is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxPhase {
    #[default]
    CreditNotes,
    Payments,
}

impl TxPhase {
    pub fn endpoint(self) -> Endpoint {
        match self {
            TxPhase::CreditNotes => Endpoint::CreditNotes,
            TxPhase::Payments => Endpoint::Payments,
        }
    }
}

/// The cursor of the transactions stream: credit notes, then payments, each
/// with its own position. A pass reads both to the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionsCursor {
    #[serde(default)]
    pub phase: TxPhase,
    #[serde(default)]
    pub credit_notes: Position,
    #[serde(default)]
    pub payments: Position,
}

/// The cursor of a resync stream: for transactions the phase, the chunk of
/// contacts, and the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncCursor {
    #[serde(default)]
    pub phase: TxPhase,
    #[serde(default)]
    pub chunk: usize,
    #[serde(default = "one")]
    pub page: u32,
}

impl Default for ResyncCursor {
    fn default() -> Self {
        ResyncCursor {
            phase: TxPhase::default(),
            chunk: 0,
            page: 1,
        }
    }
}

/// Reads a cursor of type `T`; the empty cursor is `T::default()`.
pub fn decode<T: Default + for<'de> Deserialize<'de>>(
    cursor: &Cursor,
) -> Result<T, ConnectorError> {
    if cursor.is_start() {
        return Ok(T::default());
    }
    serde_json::from_str(&cursor.0).map_err(|e| {
        ConnectorError::Config(format!(
            "stored Xero cursor is unreadable ({e}); reset the stream to sync from the start"
        ))
    })
}

pub fn encode<T: Serialize>(v: &T) -> Cursor {
    Cursor(serde_json::to_string(v).expect("cursors serialise"))
}
