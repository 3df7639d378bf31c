//! The change feed (outbox) and the read side's queries.
//!
//! **Writing.** [`Tx`](super::Tx) methods that change served data queue a
//! [`NewEvent`]; [`write_events`] stores the queue at the end of the same
//! transaction (multi-row inserts) with consecutive sequence numbers taken
//! from the `events` counter of `id_sequence`. The counter is read and
//! advanced by one statement inside the write transaction, which holds the
//! writer lock (SQLite's single writer; PostgreSQL's advisory lock *and* the
//! counter row's lock until commit), so sequence numbers are monotonic in
//! commit order: once a reader sees event `n`, every event below `n` is
//! committed too. That would stay true with concurrent writers on
//! PostgreSQL, because the counter row's lock orders them the same way.
//!
//! **What an event holds.** Its type, the entity's connector and id, when it
//! happened, and for `customer.purged` and `resync.finished` a small JSON
//! document (removed ids, job). Upsert events store no copy of the record:
//! a read joins the entity's *current* row ([`EventData`]), so the feed never
//! serves an old version of a record whose customer was excluded since (the
//! row is gone and the event reads as having no data; a later
//! `customer.purged` or deletion event says why).
//!
//! **Retention** drops a prefix of the feed ([`Store::expire_events`]) and
//! remembers the last dropped sequence (`events_expired`), so a reader
//! asking for events after an older position can be told it missed some.
//!
//! The list queries ([`Store::invoices_page`], [`Store::transactions_page`],
//! [`Store::included_customers_page`]) never return a record whose customer
//! is not stored and included, whatever the rest of the store says.

use chrono::NaiveDate;
use serde::Serialize;

use super::codec::{self, customer_from_row, record_from_row, CUSTOMER_COLS};
use super::sql::{params, Conn, Row, Value};
use super::{Result, Store, StoreError, StoredCustomer};
use crate::model::{InvoiceStatus, Record, Timestamp, TransactionKind};

/// Ids named by one `customer.purged` event at most; a larger purge is
/// several events.
pub const PURGE_IDS_PER_EVENT: usize = 1000;

/// The kinds of change events, as named in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EventType {
    #[serde(rename = "customer.upserted")]
    CustomerUpserted,
    #[serde(rename = "customer.excluded")]
    CustomerExcluded,
    #[serde(rename = "customer.included")]
    CustomerIncluded,
    #[serde(rename = "customer.purged")]
    CustomerPurged,
    #[serde(rename = "invoice.upserted")]
    InvoiceUpserted,
    #[serde(rename = "invoice.deleted")]
    InvoiceDeleted,
    #[serde(rename = "transaction.upserted")]
    TransactionUpserted,
    #[serde(rename = "transaction.deleted")]
    TransactionDeleted,
    #[serde(rename = "resync.finished")]
    ResyncFinished,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::CustomerUpserted,
        EventType::CustomerExcluded,
        EventType::CustomerIncluded,
        EventType::CustomerPurged,
        EventType::InvoiceUpserted,
        EventType::InvoiceDeleted,
        EventType::TransactionUpserted,
        EventType::TransactionDeleted,
        EventType::ResyncFinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CustomerUpserted => "customer.upserted",
            EventType::CustomerExcluded => "customer.excluded",
            EventType::CustomerIncluded => "customer.included",
            EventType::CustomerPurged => "customer.purged",
            EventType::InvoiceUpserted => "invoice.upserted",
            EventType::InvoiceDeleted => "invoice.deleted",
            EventType::TransactionUpserted => "transaction.upserted",
            EventType::TransactionDeleted => "transaction.deleted",
            EventType::ResyncFinished => "resync.finished",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event queued by a transaction, before it has a sequence number.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub kind: EventType,
    pub connector: String,
    pub entity_id: String,
    pub data: Option<String>,
}

#[derive(Serialize)]
struct PurgeData<'a> {
    invoices: &'a [String],
    transactions: &'a [String],
}

/// The JSON of one `customer.purged` event.
pub(crate) fn purge_data(invoices: &[String], transactions: &[String]) -> String {
    serde_json::to_string(&PurgeData {
        invoices,
        transactions,
    })
    .expect("ids serialise")
}

/// The JSON documents of the `customer.purged` events for a purge: the ids
/// in pieces of at most [`PURGE_IDS_PER_EVENT`], at least one event.
pub(crate) fn purge_chunks(invoices: Vec<String>, transactions: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut inv = invoices.as_slice();
    let mut txn = transactions.as_slice();
    loop {
        let a = inv.len().min(PURGE_IDS_PER_EVENT);
        let b = txn.len().min(PURGE_IDS_PER_EVENT - a);
        out.push(purge_data(&inv[..a], &txn[..b]));
        inv = &inv[a..];
        txn = &txn[b..];
        if inv.is_empty() && txn.is_empty() {
            return out;
        }
    }
}

const EVENT_COLS: usize = 6;

/// Stores queued events with the next sequence numbers; returns the last.
pub(crate) fn write_events(
    c: &mut dyn Conn,
    events: &[NewEvent],
    at: Timestamp,
) -> Result<Option<u64>> {
    if events.is_empty() {
        return Ok(None);
    }
    let n = events.len() as u64;
    let last = c
        .query_opt(
            "INSERT INTO id_sequence (name, value) VALUES ('events', ?) \
             ON CONFLICT (name) DO UPDATE SET value = id_sequence.value + excluded.value \
             RETURNING value",
            &params![n],
        )?
        .map(|r| r.u64(0))
        .transpose()?
        .ok_or_else(|| StoreError::Backend("event sequence returned nothing".into()))?;
    let mut seq = last + 1 - n;
    if c.arrays() {
        // PostgreSQL: the whole batch in one statement, one array per column.
        let rows: Vec<Vec<Value>> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                vec![
                    Value::from(seq + i as u64),
                    Value::Time(at),
                    Value::from(e.kind.as_str()),
                    Value::from(&e.connector),
                    Value::from(&e.entity_id),
                    e.data.clone().map(Value::Json).unwrap_or(Value::Null),
                ]
            })
            .collect();
        c.exec(
            "INSERT INTO events (seq, at, type, connector, entity_id, data) SELECT * FROM \
             unnest(?::bigint[], ?::timestamptz[], ?::text[], ?::text[], ?::text[], ?::jsonb[])",
            &super::sql::columns(rows),
        )?;
        return Ok(Some(last));
    }
    let mut rest = events;
    for size in [100usize, 10, 1] {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let mut p: Vec<Value> = Vec::with_capacity(size * EVENT_COLS);
            for e in chunk {
                p.extend([
                    Value::from(seq),
                    Value::Time(at),
                    Value::from(e.kind.as_str()),
                    Value::from(&e.connector),
                    Value::from(&e.entity_id),
                    e.data.clone().map(Value::Json).unwrap_or(Value::Null),
                ]);
                seq += 1;
            }
            let one = "(?, ?, ?, ?, ?, ?)";
            let rows = vec![one; size].join(", ");
            c.exec_dyn(
                &format!(
                    "INSERT INTO events (seq, at, type, connector, entity_id, data) VALUES {rows}"
                ),
                &p,
            )?;
        }
    }
    Ok(Some(last))
}

/// What an event carries when read.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// Nothing: a deletion or exclusion, or an upsert whose entity is no
    /// longer served (a later event removes it).
    None,
    /// The current customer (stored and included).
    Customer(Box<StoredCustomer>),
    /// The current invoice or transaction with when the store last changed it.
    Record(Box<Record>, Timestamp),
    /// The stored JSON document (`customer.purged`, `resync.finished`).
    Json(String),
}

/// One event of the feed as read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub seq: u64,
    pub at: Timestamp,
    pub kind: EventType,
    pub connector: String,
    pub entity_id: String,
    pub data: EventData,
}

/// Where the feed stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FeedBounds {
    /// The sequence number of the newest event (0: none yet).
    pub latest: u64,
    /// Events up to this one were dropped by retention (or predate the
    /// feed): a reader positioned before it missed events.
    pub expired_through: u64,
}

/// A webhook endpoint's durable delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookCursor {
    /// Every event up to this sequence number was delivered (acknowledged).
    pub after_seq: u64,
    pub updated_at: Timestamp,
    /// Deliveries have failed for longer than the endpoint's retry time
    /// since then.
    pub failing_since: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// The invoice status filter of the list API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Is(InvoiceStatus),
    /// Open and due before this date.
    OverdueOn(NaiveDate),
}

/// Filters and position of an invoice or transaction list page. Invoice-only
/// filters (`status`, `due_*`) and transaction-only ones (`kind`, `date_*`)
/// are ignored for the other entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordQuery {
    pub connector: Option<String>,
    /// A customer id of `connector` (which must be set).
    pub customer: Option<String>,
    pub status: Option<StatusFilter>,
    pub due_from: Option<NaiveDate>,
    pub due_to: Option<NaiveDate>,
    pub kind: Option<TransactionKind>,
    pub date_from: Option<NaiveDate>,
    pub date_to: Option<NaiveDate>,
    pub currency: Option<String>,
    /// Changed in the store at or after this instant.
    pub changed_since: Option<Timestamp>,
    /// Strictly after this (connector, id).
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// One listed invoice or transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRecord {
    pub connector: String,
    pub record: Record,
    /// When the store last changed it.
    pub changed_at: Timestamp,
    /// Its customer's name.
    pub customer_name: String,
}

fn date(d: NaiveDate) -> Value {
    Value::Date(d)
}

impl RecordQuery {
    /// The WHERE clause and parameters shared by both entities (`i` is the
    /// record table, `c` the customer).
    fn clause(&self, invoices: bool) -> (String, Vec<Value>) {
        let mut sql = String::from(
            "c.connector = i.connector AND c.id = i.customer_id AND c.excluded = FALSE",
        );
        let mut p = Vec::new();
        let mut add = |cond: &str, v: Value, sql: &mut String| {
            sql.push_str(" AND ");
            sql.push_str(cond);
            p.push(v);
        };
        if let Some(k) = &self.connector {
            add("i.connector = ?", Value::from(k), &mut sql);
        }
        if let Some(cu) = &self.customer {
            add("i.customer_id = ?", Value::from(cu), &mut sql);
        }
        if invoices {
            match self.status {
                Some(StatusFilter::Is(s)) => {
                    add("i.status = ?", Value::Text(codec::enum_text(&s)), &mut sql)
                }
                Some(StatusFilter::OverdueOn(d)) => {
                    add(
                        "i.status = ?",
                        Value::Text(codec::enum_text(&InvoiceStatus::Open)),
                        &mut sql,
                    );
                    add("i.due_date < ?", date(d), &mut sql);
                }
                None => {}
            }
            if let Some(d) = self.due_from {
                add("i.due_date >= ?", date(d), &mut sql);
            }
            if let Some(d) = self.due_to {
                add("i.due_date <= ?", date(d), &mut sql);
            }
        } else {
            if let Some(k) = self.kind {
                add("i.kind = ?", Value::Text(codec::enum_text(&k)), &mut sql);
            }
            if let Some(d) = self.date_from {
                add("i.date >= ?", date(d), &mut sql);
            }
            if let Some(d) = self.date_to {
                add("i.date <= ?", date(d), &mut sql);
            }
        }
        if let Some(cur) = &self.currency {
            add("i.currency = ?", Value::from(cur), &mut sql);
        }
        if let Some(t) = self.changed_since {
            add("i.changed_at >= ?", Value::Time(t), &mut sql);
        }
        if let Some((conn, id)) = &self.after {
            // With one connector, an id range on the index the other filters
            // use; across connectors, the primary key order.
            if self.connector.as_deref() == Some(conn.as_str()) {
                add("i.id > ?", Value::from(id), &mut sql);
            } else {
                sql.push_str(" AND (i.connector, i.id) > (?, ?)");
                p.push(Value::from(conn));
                p.push(Value::from(id));
            }
        }
        (sql, p)
    }
}

impl Store {
    /// Where the feed stands: the newest sequence number and the last one
    /// dropped by retention.
    pub fn feed_bounds(&self) -> Result<FeedBounds> {
        self.read(load_bounds)
    }

    /// Up to `limit` events after sequence number `after`, in order, each
    /// with its entity's current data. Callers that must not miss events
    /// compare `after` with [`FeedBounds::expired_through`] read *after* this
    /// call (retention only ever drops a prefix).
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let rows = c.query_dyn(&events_sql(), &params![after, limit])?;
            rows.iter().map(event_from_row).collect()
        })
    }

    /// One page of served invoices in (connector, id) order.
    pub fn invoices_page(&self, q: &RecordQuery) -> Result<Vec<ListedRecord>> {
        self.records_page(q, true)
    }

    /// One page of served transactions in (connector, id) order.
    pub fn transactions_page(&self, q: &RecordQuery) -> Result<Vec<ListedRecord>> {
        self.records_page(q, false)
    }

    fn records_page(&self, q: &RecordQuery, invoices: bool) -> Result<Vec<ListedRecord>> {
        let (sql, p) = records_sql(q, invoices, self.path().is_some());
        let n = if invoices { 11 } else { 7 };
        self.read(|c| {
            c.query_dyn(&sql, &p)?
                .iter()
                .map(|r| {
                    Ok(ListedRecord {
                        connector: r.text(0)?,
                        record: record_from_row(invoices, r, 1)?,
                        changed_at: r.time(1 + n)?,
                        customer_name: r.text(2 + n)?,
                    })
                })
                .collect()
        })
    }

    /// The query plan of a list page (SQLite `EXPLAIN QUERY PLAN` details or
    /// PostgreSQL `EXPLAIN` lines), to check which indexes a filter uses.
    pub fn explain_records_page(&self, q: &RecordQuery, invoices: bool) -> Result<Vec<String>> {
        let sqlite = self.path().is_some();
        let (sql, p) = records_sql(q, invoices, sqlite);
        self.read(|c| {
            if sqlite {
                c.query_dyn(&format!("EXPLAIN QUERY PLAN {sql}"), &p)?
                    .iter()
                    .map(|r| r.text(3))
                    .collect()
            } else {
                c.query_dyn(&format!("EXPLAIN {sql}"), &p)?
                    .iter()
                    .map(|r| r.text(0))
                    .collect()
            }
        })
    }

    /// Up to `limit` included customers after `after` in (connector, id)
    /// order, of one connector or all.
    pub fn included_customers_page(
        &self,
        connector: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> Result<Vec<StoredCustomer>> {
        let mut sql = format!("SELECT {CUSTOMER_COLS} FROM customers WHERE excluded = FALSE");
        let mut p = Vec::new();
        if let Some(k) = connector {
            sql += " AND connector = ?";
            p.push(Value::from(k));
        }
        if let Some((k, id)) = after {
            if connector == Some(k.as_str()) {
                sql += " AND id > ?";
                p.push(Value::from(id));
            } else {
                sql += " AND (connector, id) > (?, ?)";
                p.push(Value::from(k));
                p.push(Value::from(id));
            }
        }
        sql += " ORDER BY connector, id LIMIT ?";
        p.push(Value::from(limit as u64));
        self.read(|c| {
            c.query_dyn(&sql, &p)?
                .iter()
                .map(customer_from_row)
                .collect()
        })
    }

    /// Drops the oldest events: those older than `max_age` and those beyond
    /// the newest `max_events`, as a prefix of the feed, in transactions of
    /// at most 10,000 events. Returns how many were dropped.
    pub async fn expire_events(
        &self,
        max_age: chrono::Duration,
        max_events: u64,
        now: Timestamp,
    ) -> Result<u64> {
        const STEP: u64 = 10_000;
        let bounds = self.feed_bounds()?;
        let by_size = bounds.latest.saturating_sub(max_events);
        let cutoff = now - max_age;
        let by_age = self.read(|c| {
            Ok(c.query_opt(
                "SELECT seq FROM events WHERE at >= ? ORDER BY seq LIMIT 1",
                &params![cutoff],
            )?
            .map(|r| r.u64(0))
            .transpose()?
            .map(|s| s.saturating_sub(1))
            .unwrap_or(bounds.latest))
        })?;
        let target = by_size.max(by_age).min(bounds.latest);
        let mut dropped = 0;
        let mut through = bounds.expired_through;
        while through < target {
            let upto = (through + STEP).min(target);
            dropped += self.write(|tx| tx.expire_events_through(upto)).await?;
            through = upto;
        }
        Ok(dropped)
    }

    /// A webhook endpoint's delivery state (none before its first delivery).
    pub fn webhook_cursor(&self, endpoint: &str) -> Result<Option<WebhookCursor>> {
        self.read(|c| {
            c.query_opt(
                "SELECT after_seq, updated_at, failing_since, last_error FROM webhook_cursors \
                 WHERE endpoint = ?",
                &params![endpoint],
            )?
            .map(|r| {
                Ok(WebhookCursor {
                    after_seq: r.u64(0)?,
                    updated_at: r.time(1)?,
                    failing_since: if r.is_null(2) { None } else { Some(r.time(2)?) },
                    last_error: r.opt_text(3)?,
                })
            })
            .transpose()
        })
    }

    /// Stores a webhook endpoint's delivery state durably (its own
    /// transaction).
    pub async fn set_webhook_cursor(&self, endpoint: &str, cur: &WebhookCursor) -> Result<()> {
        self.write(|tx| tx.set_webhook_cursor(endpoint, cur)).await
    }

    /// A receiver of the sequence number of the newest committed event,
    /// updated by this process's writes (other processes' writes on a shared
    /// PostgreSQL database are seen by polling [`Store::feed_bounds`]).
    pub fn subscribe_feed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }
}

impl super::Tx<'_> {
    /// Drops every event up to `seq` and remembers it as expired.
    pub(super) fn expire_events_through(&mut self, seq: u64) -> Result<u64> {
        let n = self
            .conn_mut()
            .exec("DELETE FROM events WHERE seq <= ?", &params![seq])?;
        self.conn_mut().exec(
            "INSERT INTO id_sequence (name, value) VALUES ('events_expired', ?) \
             ON CONFLICT (name) DO UPDATE SET value = CASE WHEN id_sequence.value < excluded.value \
             THEN excluded.value ELSE id_sequence.value END",
            &params![seq],
        )?;
        Ok(n)
    }

    /// Writes a webhook endpoint's delivery state.
    pub fn set_webhook_cursor(&mut self, endpoint: &str, cur: &WebhookCursor) -> Result<()> {
        self.conn_mut().exec(
            "INSERT INTO webhook_cursors (endpoint, after_seq, updated_at, failing_since, last_error) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET \
             after_seq = excluded.after_seq, updated_at = excluded.updated_at, \
             failing_since = excluded.failing_since, last_error = excluded.last_error",
            &params![
                endpoint,
                cur.after_seq,
                cur.updated_at,
                cur.failing_since,
                cur.last_error.clone()
            ],
        )?;
        Ok(())
    }
}

/// The statement and parameters of a list page. On SQLite, with a
/// connector given, the index of the most selective equality filter is
/// named (`INDEXED BY`): without table statistics SQLite would walk the
/// primary key (it already has the order) and filter every record of the
/// connector. Customer first, then status, then currency, then the
/// `changed_at` range (meant for recent instants: incremental reads).
/// PostgreSQL plans with its statistics.
fn records_sql(q: &RecordQuery, invoices: bool, sqlite: bool) -> (String, Vec<Value>) {
    let (table, cols) = if invoices {
        ("invoices", codec::INVOICE_COLS)
    } else {
        ("transactions", codec::TRANSACTION_COLS)
    };
    let cols: Vec<String> = cols.split(',').map(|c| format!("i.{}", c.trim())).collect();
    let (cond, mut p) = q.clause(invoices);
    let index = if !sqlite || q.connector.is_none() {
        None
    } else if q.customer.is_some() {
        Some(if invoices {
            "invoices_customer"
        } else {
            "transactions_customer"
        })
    } else if invoices && q.status.is_some() {
        Some("invoices_status")
    } else if invoices && q.currency.is_some() {
        Some("invoices_currency")
    } else if q.changed_since.is_some() {
        Some(if invoices {
            "invoices_changed"
        } else {
            "transactions_changed"
        })
    } else {
        None
    };
    let hint = index
        .map(|i| format!(" INDEXED BY {i}"))
        .unwrap_or_default();
    // CROSS JOIN keeps SQLite's loop order (records outer); PostgreSQL
    // plans it like an inner join.
    let sql = format!(
        "SELECT i.connector, {}, i.changed_at, c.name FROM {table} i{hint} CROSS JOIN customers c \
         WHERE {cond} ORDER BY i.connector, i.id LIMIT ?",
        cols.join(", ")
    );
    p.push(Value::from(q.limit as u64));
    (sql, p)
}

fn load_bounds(c: &mut dyn Conn) -> Result<FeedBounds> {
    let mut b = FeedBounds::default();
    for r in c.query(
        "SELECT name, value FROM id_sequence WHERE name IN ('events', 'events_expired')",
        &[],
    )? {
        match r.text(0)?.as_str() {
            "events" => b.latest = r.u64(1)?,
            _ => b.expired_through = r.u64(1)?,
        }
    }
    Ok(b)
}

/// Column positions in [`events_sql`].
const INV_AT: usize = 6;
const INV_N: usize = 12;
const TXN_AT: usize = INV_AT + INV_N;
const TXN_N: usize = 8;
const CUS_AT: usize = TXN_AT + TXN_N;
const CUS_N: usize = 16;

fn events_sql() -> String {
    let pre = |alias: &str, cols: &str| -> String {
        cols.split(',')
            .map(|c| format!("{alias}.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT e.seq, e.at, e.type, e.connector, e.entity_id, e.data, \
         {}, i.changed_at, {}, t.changed_at, {} \
         FROM events e \
         LEFT JOIN invoices i ON e.type = 'invoice.upserted' AND i.connector = e.connector \
           AND i.id = e.entity_id AND EXISTS (SELECT 1 FROM customers ic \
           WHERE ic.connector = i.connector AND ic.id = i.customer_id AND ic.excluded = FALSE) \
         LEFT JOIN transactions t ON e.type = 'transaction.upserted' AND t.connector = e.connector \
           AND t.id = e.entity_id AND EXISTS (SELECT 1 FROM customers tc \
           WHERE tc.connector = t.connector AND tc.id = t.customer_id AND tc.excluded = FALSE) \
         LEFT JOIN customers c ON e.type IN ('customer.upserted', 'customer.included') \
           AND c.connector = e.connector AND c.id = e.entity_id AND c.excluded = FALSE \
         WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
        pre("i", codec::INVOICE_COLS),
        pre("t", codec::TRANSACTION_COLS),
        pre("c", CUSTOMER_COLS),
    )
}

fn event_from_row(r: &Row) -> Result<FeedEvent> {
    let kind_text = r.text(2)?;
    let kind = EventType::parse(&kind_text).ok_or_else(|| StoreError::Corrupt {
        key: format!("event {}", r.u64(0).unwrap_or(0)),
        message: format!("unknown event type `{kind_text}`"),
    })?;
    let data = match kind {
        EventType::InvoiceUpserted if !r.is_null(INV_AT) => EventData::Record(
            Box::new(record_from_row(true, r, INV_AT)?),
            r.time(INV_AT + INV_N - 1)?,
        ),
        EventType::TransactionUpserted if !r.is_null(TXN_AT) => EventData::Record(
            Box::new(record_from_row(false, r, TXN_AT)?),
            r.time(TXN_AT + TXN_N - 1)?,
        ),
        EventType::CustomerUpserted | EventType::CustomerIncluded if !r.is_null(CUS_AT) => {
            let sub = Row(r.0[CUS_AT..CUS_AT + CUS_N].to_vec());
            EventData::Customer(Box::new(customer_from_row(&sub)?))
        }
        _ => match r.opt_text(5)? {
            Some(j) => EventData::Json(j),
            None => EventData::None,
        },
    };
    Ok(FeedEvent {
        seq: r.u64(0)?,
        at: r.time(1)?,
        kind,
        connector: r.text(3)?,
        entity_id: r.text(4)?,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_are_split_in_events_of_bounded_size() {
        let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        assert_eq!(
            purge_chunks(vec![], vec![]),
            vec![r#"{"invoices":[],"transactions":[]}"#.to_string()]
        );
        let chunks = purge_chunks(ids("I", 1500), ids("T", 700));
        assert_eq!(chunks.len(), 3);
        let parsed: Vec<serde_json::Value> = chunks
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        let count = |v: &serde_json::Value, k: &str| v[k].as_array().unwrap().len();
        assert_eq!(
            parsed
                .iter()
                .map(|v| (count(v, "invoices"), count(v, "transactions")))
                .collect::<Vec<_>>(),
            vec![(1000, 0), (500, 500), (0, 200)]
        );
    }

    #[test]
    fn event_types_round_trip_their_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert_eq!(EventType::parse("invoice.created"), None);
    }
}
