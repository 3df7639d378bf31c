//! The read side for downstream systems: paged, filtered lists of invoices
//! and transactions ([`invoices`], [`transactions`]) and the CSV exports
//! ([`export`]), in the JSON forms of [`view`]. The change feed and its
//! webhooks are [`crate::feed`].
//!
//! This module turns request parameters into a checked store query (every
//! problem a [`ReadError::Invalid`] with a sentence naming the parameter;
//! nothing is read before the request is known to be good) and pages
//! through the store by key: the order is always (connector, id), the
//! `after` cursor is opaque (the last key, encoded), and without a
//! connector filter the configured connectors are walked in order, each
//! with its own index range. Only data of stored, included customers is
//! ever returned (the store's list queries join the customer). It never
//! writes.

pub mod export;
pub mod view;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{CustomerKey, InvoiceStatus, TransactionKind};
use crate::store::{valid_id, ListedRecord, RecordQuery, StatusFilter, Store, StoreError};
use view::RecordView;

/// A record's key: (connector, id).
pub type Key = (String, String);

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The request is wrong (a 400): the message names the parameter.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Query parameters of `GET /api/v1/invoices`. Unknown ones are refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceParams {
    pub connector: Option<String>,
    pub customer: Option<String>,
    pub status: Option<String>,
    pub due_from: Option<String>,
    pub due_to: Option<String>,
    pub currency: Option<String>,
    pub modified_since: Option<String>,
    pub after: Option<String>,
    pub limit: Option<String>,
}

/// Query parameters of `GET /api/v1/transactions`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionParams {
    pub connector: Option<String>,
    pub customer: Option<String>,
    pub kind: Option<String>,
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub currency: Option<String>,
    pub modified_since: Option<String>,
    pub after: Option<String>,
    pub limit: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize)]
pub struct ListPage {
    pub items: Vec<RecordView>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<String>,
    /// The change feed's newest sequence number when this page was read
    /// (read before the page): continuing `/changes` after it misses
    /// nothing this page did not show.
    pub feed_seq: u64,
}

fn invalid<T>(m: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Invalid(m.into()))
}

/// A parameter's value, refusing an empty one.
fn given<'a>(name: &str, v: &'a Option<String>) -> Result<Option<&'a str>, ReadError> {
    match v.as_deref().map(str::trim) {
        Some("") => invalid(format!("`{name}` is empty; leave it out or give a value")),
        other => Ok(other),
    }
}

fn date(name: &str, v: &Option<String>) -> Result<Option<NaiveDate>, ReadError> {
    given(name, v)?
        .map(|s| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
                ReadError::Invalid(format!(
                    "`{name}` must be a date like 2026-03-31, got `{s}`"
                ))
            })
        })
        .transpose()
}

fn range(
    from_name: &str,
    from: Option<NaiveDate>,
    to_name: &str,
    to: Option<NaiveDate>,
) -> Result<(), ReadError> {
    match (from, to) {
        (Some(a), Some(b)) if a > b => invalid(format!(
            "`{from_name}` ({a}) is after `{to_name}` ({b}): the range is empty"
        )),
        _ => Ok(()),
    }
}

/// The page size: 1 ..= [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn limit(v: &Option<String>) -> Result<usize, ReadError> {
    match given("limit", v)? {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n @ 1..=MAX_LIMIT) => Ok(n),
            _ => invalid(format!(
                "`limit` must be a whole number between 1 and {MAX_LIMIT}, got `{s}`"
            )),
        },
    }
}

/// The opaque list cursor for the key (connector, id).
pub fn encode_cursor(connector: &str, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("k1\0{connector}\0{id}"))
}

/// Decodes a list cursor made by [`encode_cursor`].
pub fn decode_cursor(s: &str) -> Result<(String, String), ReadError> {
    let bad = || {
        ReadError::Invalid(format!(
            "`after` is not a cursor of this list (`{}`): pass the `next` value of the previous page",
            s.chars().take(80).collect::<String>()
        ))
    };
    let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("k1"), Some(c), Some(id), None) if !c.is_empty() && valid_id(id) => {
            Ok((c.to_string(), id.to_string()))
        }
        _ => Err(bad()),
    }
}

/// The connector and customer filters: `customer` is `CONNECTOR:ID` and
/// must agree with `connector` when both are given; both must be
/// configured.
fn who(
    connector: &Option<String>,
    customer: &Option<String>,
    connectors: &[String],
) -> Result<(Option<String>, Option<String>), ReadError> {
    let known = |c: &str| -> Result<(), ReadError> {
        if connectors.iter().any(|k| k == c) {
            Ok(())
        } else {
            invalid(format!(
                "unknown connector `{c}`; configured connectors: {}",
                connectors.join(", ")
            ))
        }
    };
    let conn = given("connector", connector)?.map(str::to_string);
    if let Some(c) = &conn {
        known(c)?;
    }
    let Some(cu) = given("customer", customer)? else {
        return Ok((conn, None));
    };
    let key = CustomerKey::parse(cu).map_err(|e| ReadError::Invalid(format!("`customer`: {e}")))?;
    if !valid_id(&key.external_id) {
        return invalid("`customer`: the external id contains a NUL byte");
    }
    known(&key.connector)?;
    if let Some(c) = &conn {
        if *c != key.connector {
            return invalid(format!(
                "`customer` {cu} belongs to connector `{}`, but `connector` is `{c}`",
                key.connector
            ));
        }
    }
    Ok((Some(key.connector), Some(key.external_id)))
}

fn currency(v: &Option<String>) -> Result<Option<String>, ReadError> {
    match given("currency", v)? {
        None => Ok(None),
        Some(s) if s.len() <= 10 && s.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Ok(Some(s.to_string()))
        }
        Some(s) => invalid(format!(
            "`currency` must be a currency code like EUR, got `{s}`"
        )),
    }
}

fn since(v: &Option<String>) -> Result<Option<DateTime<Utc>>, ReadError> {
    given("modified_since", v)?
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ReadError::Invalid(format!(
                        "`modified_since` must be an RFC 3339 instant with its offset, like 2026-03-31T08:00:00Z, got `{s}`"
                    ))
                })
        })
        .transpose()
}

/// Checks the parameters of `/api/v1/invoices` (`today` decides `overdue`).
pub fn invoice_query(
    p: &InvoiceParams,
    connectors: &[String],
    today: NaiveDate,
) -> Result<RecordQuery, ReadError> {
    let (connector, customer) = who(&p.connector, &p.customer, connectors)?;
    let status = match given("status", &p.status)? {
        None => None,
        Some("open") => Some(StatusFilter::Is(InvoiceStatus::Open)),
        Some("overdue") => Some(StatusFilter::OverdueOn(today)),
        Some("paid") => Some(StatusFilter::Is(InvoiceStatus::Paid)),
        Some("voided") => Some(StatusFilter::Is(InvoiceStatus::Voided)),
        Some("draft") => Some(StatusFilter::Is(InvoiceStatus::Draft)),
        Some(s) => {
            return invalid(format!(
                "`status` must be one of open, overdue, paid, voided, draft; got `{s}`"
            ))
        }
    };
    let due_from = date("due_from", &p.due_from)?;
    let due_to = date("due_to", &p.due_to)?;
    range("due_from", due_from, "due_to", due_to)?;
    Ok(RecordQuery {
        connector,
        customer,
        status,
        due_from,
        due_to,
        currency: currency(&p.currency)?,
        changed_since: since(&p.modified_since)?,
        after: given("after", &p.after)?.map(decode_cursor).transpose()?,
        limit: limit(&p.limit)?,
        ..Default::default()
    })
}

/// Checks the parameters of `/api/v1/transactions`.
pub fn transaction_query(
    p: &TransactionParams,
    connectors: &[String],
) -> Result<RecordQuery, ReadError> {
    let (connector, customer) = who(&p.connector, &p.customer, connectors)?;
    let kind = match given("kind", &p.kind)? {
        None => None,
        Some("payment") => Some(TransactionKind::Payment),
        Some("credit_note") => Some(TransactionKind::CreditNote),
        Some(s) => return invalid(format!("`kind` must be payment or credit_note; got `{s}`")),
    };
    let date_from = date("date_from", &p.date_from)?;
    let date_to = date("date_to", &p.date_to)?;
    range("date_from", date_from, "date_to", date_to)?;
    Ok(RecordQuery {
        connector,
        customer,
        kind,
        date_from,
        date_to,
        currency: currency(&p.currency)?,
        changed_since: since(&p.modified_since)?,
        after: given("after", &p.after)?.map(decode_cursor).transpose()?,
        limit: limit(&p.limit)?,
        ..Default::default()
    })
}

/// Reads one page of `q` (invoices or transactions): one connector's index
/// range after another when no connector is given. `connectors` is the
/// configured list.
pub fn page(
    store: &Store,
    q: &RecordQuery,
    invoices: bool,
    connectors: &[String],
    today: NaiveDate,
) -> Result<ListPage, StoreError> {
    let feed_seq = store.feed_bounds()?.latest;
    let (rows, next) = listed(store, q, invoices, connectors)?;
    Ok(ListPage {
        items: rows.iter().map(|r| RecordView::listed(r, today)).collect(),
        next: next.map(|(c, id)| encode_cursor(&c, &id)),
        feed_seq,
    })
}

/// The records of one page of `q` and the key to continue after (`None`
/// at the end).
pub fn listed(
    store: &Store,
    q: &RecordQuery,
    invoices: bool,
    connectors: &[String],
) -> Result<(Vec<ListedRecord>, Option<Key>), StoreError> {
    let mut items: Vec<ListedRecord> = Vec::new();
    let walk: Vec<String> = match &q.connector {
        Some(c) => vec![c.clone()],
        None => {
            let mut all = connectors.to_vec();
            all.sort();
            all
        }
    };
    for conn in walk {
        let want = q.limit - items.len();
        if want == 0 {
            break;
        }
        // Skip connectors wholly before the cursor; start inside the
        // cursor's own connector.
        let after = match &q.after {
            Some((c, id)) if *c == conn => Some((c.clone(), id.clone())),
            Some((c, _)) if c.as_str() > conn.as_str() => continue,
            _ => None,
        };
        let sub = RecordQuery {
            connector: Some(conn),
            after,
            limit: want,
            ..q.clone()
        };
        items.extend(if invoices {
            store.invoices_page(&sub)?
        } else {
            store.transactions_page(&sub)?
        });
    }
    let next = if items.len() >= q.limit {
        items
            .last()
            .map(|r| (r.connector.clone(), r.record.external_id().to_string()))
    } else {
        None
    };
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns() -> Vec<String> {
        vec!["demo".into(), "ns".into()]
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn cursors_round_trip_and_foreign_text_is_refused() {
        let c = encode_cursor("demo", "INV:1/2");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            ("demo".into(), "INV:1/2".into())
        );
        for bad in [
            "",
            "abc",
            "!!!",
            &URL_SAFE_NO_PAD.encode("k2\0a\0b"),
            &URL_SAFE_NO_PAD.encode("k1\0a"),
        ] {
            let e = decode_cursor(bad).unwrap_err().to_string();
            assert!(e.contains("`after` is not a cursor"), "{bad}: {e}");
        }
    }

    #[test]
    fn invoice_parameters_are_checked_with_clear_messages() {
        let check = |f: &dyn Fn(&mut InvoiceParams), want: &str| {
            let mut p = InvoiceParams::default();
            f(&mut p);
            let e = invoice_query(&p, &conns(), day("2026-03-01"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        };
        check(
            &|p| p.status = Some("late".into()),
            "`status` must be one of",
        );
        check(&|p| p.status = Some("".into()), "`status` is empty");
        check(
            &|p| p.connector = Some("sap".into()),
            "unknown connector `sap`; configured connectors: demo, ns",
        );
        check(
            &|p| p.customer = Some("C1".into()),
            "`customer`: `C1` is not a customer reference",
        );
        check(
            &|p| p.customer = Some("sap:C1".into()),
            "unknown connector `sap`",
        );
        check(
            &|p| {
                p.connector = Some("ns".into());
                p.customer = Some("demo:C1".into());
            },
            "belongs to connector `demo`, but `connector` is `ns`",
        );
        check(
            &|p| p.due_from = Some("31/03/2026".into()),
            "`due_from` must be a date",
        );
        check(
            &|p| {
                p.due_from = Some("2026-03-02".into());
                p.due_to = Some("2026-03-01".into());
            },
            "`due_from` (2026-03-02) is after `due_to` (2026-03-01)",
        );
        check(
            &|p| p.modified_since = Some("2026-03-01".into()),
            "`modified_since` must be an RFC 3339 instant",
        );
        check(
            &|p| p.modified_since = Some("2026-03-01T10:00:00".into()),
            "with its offset",
        );
        check(
            &|p| p.limit = Some("0".into()),
            "`limit` must be a whole number between 1 and 1000",
        );
        check(
            &|p| p.limit = Some("1001".into()),
            "between 1 and 1000, got `1001`",
        );
        check(
            &|p| p.after = Some("nope".into()),
            "`after` is not a cursor",
        );
        check(
            &|p| p.currency = Some("E U R".into()),
            "`currency` must be a currency code",
        );
    }

    #[test]
    fn good_invoice_parameters_become_a_store_query() {
        let p = InvoiceParams {
            customer: Some("demo:C1".into()),
            status: Some("overdue".into()),
            due_from: Some("2026-01-01".into()),
            currency: Some("EUR".into()),
            modified_since: Some("2026-02-01T10:00:00+02:00".into()),
            after: Some(encode_cursor("demo", "I9")),
            limit: Some("5".into()),
            ..Default::default()
        };
        let q = invoice_query(&p, &conns(), day("2026-03-01")).unwrap();
        assert_eq!(q.connector.as_deref(), Some("demo"));
        assert_eq!(q.customer.as_deref(), Some("C1"));
        assert_eq!(q.status, Some(StatusFilter::OverdueOn(day("2026-03-01"))));
        assert_eq!(
            q.changed_since.unwrap().to_rfc3339(),
            "2026-02-01T08:00:00+00:00"
        );
        assert_eq!(q.after, Some(("demo".into(), "I9".into())));
        assert_eq!(q.limit, 5);
        let t = transaction_query(
            &TransactionParams {
                kind: Some("credit_note".into()),
                date_from: Some("2026-01-02".into()),
                date_to: Some("2026-01-01".into()),
                ..Default::default()
            },
            &conns(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            t.contains("`date_from` (2026-01-02) is after `date_to` (2026-01-01)"),
            "{t}"
        );
    }
}
