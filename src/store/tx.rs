//! One write transaction. Created only by [`Store::write`](super::Store::write);
//! every method runs its statements at once inside the open database
//! transaction, so later reads see earlier writes. Counter increments are
//! summed in memory and written by [`Tx::finish`] just before the commit.
//!
//! **The outbox invariant lives here**: every method that changes what the
//! read side serves (included customers, stored invoices and transactions)
//! queues its change event ([`super::feed`]), and [`Tx::finish`] writes the
//! queued events in the same transaction, so a change and its event commit
//! or vanish together. Parked records and excluded customers are not served
//! and emit nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{de::DeserializeOwned, Serialize};

use super::codec::{
    self, customer_from_row, customer_values, enum_text, invoice_values, record_from_row,
    transaction_values,
};
use super::feed::{self, EventType, NewEvent};
use super::sql::{json, params, Conn, Value};
use super::{AuditEntry, Compacted, Result, Retention, StoreError, StoredCustomer};
use crate::model::{
    Classification, CustomerKey, Entity, ManualDecision, Quarantined, Record, Timestamp,
};

/// Customers kept in a transaction's read cache at most (a mass
/// re-classification touches every customer in one transaction).
const CACHE_MAX: usize = 4096;

/// A record's identity within one connector.
type RecKey = (Entity, String);

pub struct Tx<'a> {
    pub(super) conn: &'a mut (dyn Conn + 'a),
    /// Customers read or written by this transaction (write-through).
    customers: HashMap<CustomerKey, Option<StoredCustomer>>,
    /// Whether customers are excluded (`None`: not stored), for ingest's
    /// per-record lookups (write-through).
    excluded: HashMap<CustomerKey, Option<bool>>,
    counters: BTreeMap<(String, String), i64>,
    /// Classification buckets changed by this transaction.
    classes: BTreeMap<(String, bool, String, String), i64>,
    /// When this transaction runs: the `changed_at` of the records it writes
    /// and the time of its events.
    now: Timestamp,
    /// Change events queued by this transaction, written by [`Tx::finish`].
    events: Vec<NewEvent>,
    /// Customers whose `customer.purged` event this transaction queued.
    purged: HashSet<CustomerKey>,
}

/// What [`Tx::upsert_record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Inserted,
    Updated,
    /// The stored version (or deletion) is newer; nothing written.
    Stale,
}

/// Where a record currently is.
struct Located {
    customer: String,
    parked: bool,
    last_modified: Timestamp,
}

fn class_bucket(conn: &str, c: &Classification) -> (String, bool, String, String) {
    (
        conn.to_string(),
        c.excluded,
        c.source.map(|s| s.as_str()).unwrap_or("").to_string(),
        c.reason.clone(),
    )
}

// ----- loaders shared with the store's reads -------------------------------

pub(super) fn load_customer(c: &mut dyn Conn, key: &CustomerKey) -> Result<Option<StoredCustomer>> {
    const SQL: &str = const_format_customer();
    c.query_opt(SQL, &params![&key.connector, &key.external_id])?
        .map(|r| customer_from_row(&r))
        .transpose()
}

const fn const_format_customer() -> &'static str {
    "SELECT connector, id, name, email, subsidiary, currency, balance, inactive, intercompany, \
     last_modified, custom, excluded, exclusion_source, exclusion_reason, classified_at, first_seen \
     FROM customers WHERE connector = ? AND id = ?"
}

pub(super) fn load_decision(c: &mut dyn Conn, key: &CustomerKey) -> Result<Option<ManualDecision>> {
    c.query_opt(
        "SELECT action, actor, reason, at FROM decisions WHERE connector = ? AND customer_id = ?",
        &params![&key.connector, &key.external_id],
    )?
    .map(|r| codec::decision_from_row(&r, 0))
    .transpose()
}

pub(super) fn load_records_of(c: &mut dyn Conn, key: &CustomerKey) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (invoice, sql) in [
        (
            true,
            "SELECT id, customer_id, number, issue_date, due_date, currency, total, amount_due, \
             status, on_hold, last_modified FROM invoices WHERE connector = ? AND customer_id = ? ORDER BY id",
        ),
        (
            false,
            "SELECT id, customer_id, kind, date, amount, currency, last_modified FROM transactions \
             WHERE connector = ? AND customer_id = ? ORDER BY id",
        ),
    ] {
        for r in c.query(sql, &params![&key.connector, &key.external_id])? {
            out.push(record_from_row(invoice, &r, 0)?);
        }
    }
    Ok(out)
}

pub(super) fn load_meta<T: DeserializeOwned>(c: &mut dyn Conn, key: &str) -> Result<Option<T>> {
    c.query_opt("SELECT value FROM meta WHERE key = ?", &params![key])?
        .map(|r| r.json(0))
        .transpose()
}

pub(super) fn load_stop<T: DeserializeOwned>(
    c: &mut dyn Conn,
    key: &CustomerKey,
) -> Result<Option<T>> {
    c.query_opt(
        "SELECT flag FROM reminder_stops WHERE connector = ? AND customer_id = ?",
        &params![&key.connector, &key.external_id],
    )?
    .map(|r| r.json(0))
    .transpose()
}

pub(super) fn load_hold<T: DeserializeOwned>(
    c: &mut dyn Conn,
    connector: &str,
    invoice: &str,
) -> Result<Option<T>> {
    c.query_opt(
        "SELECT flag FROM reminder_holds WHERE connector = ? AND invoice_id = ?",
        &params![connector, invoice],
    )?
    .map(|r| r.json(0))
    .transpose()
}

pub(super) fn load_job<T: DeserializeOwned>(c: &mut dyn Conn, id: u64) -> Result<Option<T>> {
    c.query_opt("SELECT job FROM resync_jobs WHERE id = ?", &params![id])?
        .map(|r| r.json(0))
        .transpose()
}

pub(super) fn load_jobs<T: DeserializeOwned>(c: &mut dyn Conn) -> Result<Vec<T>> {
    c.query("SELECT job FROM resync_jobs ORDER BY id", &[])?
        .iter()
        .map(|r| r.json(0))
        .collect()
}

pub(super) fn load_queued(
    c: &mut dyn Conn,
    connector: &str,
    customer: &str,
) -> Result<Option<u64>> {
    c.query_opt(
        "SELECT job FROM resync_queued WHERE connector = ? AND customer_id = ?",
        &params![connector, customer],
    )?
    .map(|r| r.u64(0))
    .transpose()
}

pub(super) fn load_members(c: &mut dyn Conn, job: u64) -> Result<Vec<(String, bool)>> {
    c.query(
        "SELECT customer_id, done FROM resync_members WHERE job = ? ORDER BY customer_id",
        &params![job],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.bool(1)?)))
    .collect()
}

pub(super) fn load_credential(
    c: &mut dyn Conn,
    connector: &str,
    name: &str,
) -> Result<Option<String>> {
    c.query_opt(
        "SELECT value FROM credentials WHERE connector = ? AND name = ?",
        &params![connector, name],
    )?
    .map(|r| r.text(0))
    .transpose()
}

const UPSERT_CUSTOMER: &str = "INSERT INTO customers (connector, id, name, email, subsidiary, currency, \
     balance, inactive, intercompany, last_modified, custom, excluded, exclusion_source, \
     exclusion_reason, classified_at, first_seen) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (connector, id) DO UPDATE SET name = excluded.name, email = excluded.email, \
     subsidiary = excluded.subsidiary, currency = excluded.currency, balance = excluded.balance, \
     inactive = excluded.inactive, intercompany = excluded.intercompany, \
     last_modified = excluded.last_modified, custom = excluded.custom, excluded = excluded.excluded, \
     exclusion_source = excluded.exclusion_source, exclusion_reason = excluded.exclusion_reason, \
     classified_at = excluded.classified_at, first_seen = excluded.first_seen";

macro_rules! invoice_head {
    () => {
        "INSERT INTO invoices (connector, id, customer_id, number, issue_date, due_date, currency, \
         total, amount_due, status, on_hold, last_modified, changed_at) VALUES "
    };
}
macro_rules! invoice_tail {
    () => {
        " ON CONFLICT (connector, id) DO UPDATE SET customer_id = excluded.customer_id, \
         number = excluded.number, issue_date = excluded.issue_date, due_date = excluded.due_date, \
         currency = excluded.currency, total = excluded.total, amount_due = excluded.amount_due, \
         status = excluded.status, on_hold = excluded.on_hold, last_modified = excluded.last_modified, \
         changed_at = excluded.changed_at"
    };
}
macro_rules! transaction_head {
    () => {
        "INSERT INTO transactions (connector, id, customer_id, kind, date, amount, currency, \
         last_modified, changed_at) VALUES "
    };
}
macro_rules! transaction_tail {
    () => {
        " ON CONFLICT (connector, id) DO UPDATE SET customer_id = excluded.customer_id, \
         kind = excluded.kind, date = excluded.date, amount = excluded.amount, \
         currency = excluded.currency, last_modified = excluded.last_modified, \
         changed_at = excluded.changed_at"
    };
}
const INVOICE_HEAD: &str = invoice_head!();
const INVOICE_TAIL: &str = invoice_tail!();
const UPSERT_INVOICE: &str = concat!(
    invoice_head!(),
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    invoice_tail!()
);
/// PostgreSQL: every invoice of a page in one statement, one array per column.
const UPSERT_INVOICES_UNNEST: &str = concat!(
    "INSERT INTO invoices (connector, id, customer_id, number, issue_date, due_date, currency, \
     total, amount_due, status, on_hold, last_modified, changed_at) SELECT * FROM unnest(\
     ?::text[], ?::text[], ?::text[], ?::text[], ?::date[], ?::date[], ?::text[], ?::numeric[], \
     ?::numeric[], ?::text[], ?::boolean[], ?::timestamptz[], ?::timestamptz[])",
    invoice_tail!()
);
const UPSERT_TRANSACTIONS_UNNEST: &str = concat!(
    "INSERT INTO transactions (connector, id, customer_id, kind, date, amount, currency, \
     last_modified, changed_at) SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], \
     ?::date[], ?::numeric[], ?::text[], ?::timestamptz[], ?::timestamptz[])",
    transaction_tail!()
);
const TRANSACTION_HEAD: &str = transaction_head!();
const TRANSACTION_TAIL: &str = transaction_tail!();
const UPSERT_TRANSACTION: &str = concat!(
    transaction_head!(),
    "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
    transaction_tail!()
);

/// Rows per multi-row insert and ids per `IN` list.
const CHUNK: usize = 128;

/// Splits `items` into pieces of 100, 10 and 1 rows, so the multi-row
/// statements come in three shapes per table and stay prepared.
fn shaped<T>(items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    for size in [100, 10, 1] {
        while rest.len() >= size {
            let (a, b) = rest.split_at(size);
            out.push(a);
            rest = b;
        }
    }
    out
}

/// Pads an `IN` list to a power of two (repeating its last id, which
/// changes nothing), so lookups come in a few shapes and stay prepared.
fn padded<'a>(ids: &[&'a str]) -> Vec<&'a str> {
    let mut v = ids.to_vec();
    if let Some(&last) = ids.last() {
        v.resize(
            ids.len().next_power_of_two().min(CHUNK.next_power_of_two()),
            last,
        );
    }
    v
}

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn value_rows(rows: usize, cols: usize) -> String {
    let one = format!("({})", marks(cols));
    vec![one; rows].join(", ")
}

const UPSERT_PARKED: &str = "INSERT INTO parked (connector, entity, id, customer_id, last_modified, record) \
     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connector, entity, id) DO UPDATE SET \
     customer_id = excluded.customer_id, last_modified = excluded.last_modified, record = excluded.record";

const UPSERT_TOMBSTONE: &str =
    "INSERT INTO tombstones (connector, entity, id, at, deleted, recorded_at) \
     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connector, entity, id) DO UPDATE SET \
     at = excluded.at, deleted = excluded.deleted, recorded_at = excluded.recorded_at";

impl<'a> Tx<'a> {
    pub(super) fn new(conn: &'a mut (dyn Conn + 'a)) -> Self {
        Tx {
            conn,
            customers: HashMap::new(),
            excluded: HashMap::new(),
            counters: BTreeMap::new(),
            classes: BTreeMap::new(),
            now: chrono::Utc::now(),
            events: Vec::new(),
            purged: HashSet::new(),
        }
    }

    /// The transaction's connection, for the store's other modules.
    pub(super) fn conn_mut(&mut self) -> &mut (dyn Conn + 'a) {
        &mut *self.conn
    }

    /// Queues a change event (written by [`Tx::finish`]).
    fn emit(&mut self, kind: EventType, connector: &str, id: &str, data: Option<String>) {
        self.events.push(NewEvent {
            kind,
            connector: connector.to_string(),
            entity_id: id.to_string(),
            data,
        });
    }

    fn emit_record(&mut self, conn: &str, e: Entity, id: &str, deleted: bool) {
        let kind = match (e, deleted) {
            (Entity::Invoices, false) => EventType::InvoiceUpserted,
            (Entity::Invoices, true) => EventType::InvoiceDeleted,
            (_, false) => EventType::TransactionUpserted,
            (_, true) => EventType::TransactionDeleted,
        };
        self.emit(kind, conn, id, None);
    }

    /// Records that a resync job finished (`resync.finished`); `data` is the
    /// event's JSON (job id, state, customers).
    pub fn resync_finished<T: Serialize>(&mut self, connector: &str, job: u64, data: &T) {
        let data = serde_json::to_string(data).expect("event data always serialises");
        self.emit(
            EventType::ResyncFinished,
            connector,
            &job.to_string(),
            Some(data),
        );
    }

    /// Writes the summed counter and classification changes and the queued
    /// events (called by the store right before the commit). Returns the
    /// sequence number of the last event written, if any.
    pub(super) fn finish(&mut self) -> Result<Option<u64>> {
        for ((conn, name), delta) in std::mem::take(&mut self.counters) {
            self.conn.exec(
                "INSERT INTO counters (connector, name, value) VALUES (?, ?, ?) \
                 ON CONFLICT (connector, name) DO UPDATE SET value = counters.value + excluded.value",
                &params![conn, name, delta],
            )?;
        }
        for ((conn, excluded, source, reason), delta) in std::mem::take(&mut self.classes) {
            if delta == 0 {
                continue;
            }
            self.conn.exec(
                "INSERT INTO classification_counts (connector, excluded, source, reason, customers) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (connector, excluded, source, reason) \
                 DO UPDATE SET customers = classification_counts.customers + excluded.customers",
                &params![&conn, excluded, &source, &reason, delta],
            )?;
            if delta < 0 {
                self.conn.exec(
                    "DELETE FROM classification_counts WHERE connector = ? AND excluded = ? \
                     AND source = ? AND reason = ? AND customers <= 0",
                    &params![conn, excluded, source, reason],
                )?;
            }
        }
        let events = std::mem::take(&mut self.events);
        feed::write_events(self.conn, &events, self.now)
    }

    /// Aborts the whole transaction with a message (nothing is written).
    pub fn reject<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(StoreError::Rejected(msg.into()))
    }

    fn remember(&mut self, key: CustomerKey, v: Option<StoredCustomer>) {
        if self.customers.len() >= CACHE_MAX {
            self.customers.clear();
        }
        if self.excluded.len() >= CACHE_MAX {
            self.excluded.clear();
        }
        self.excluded
            .insert(key.clone(), v.as_ref().map(|s| s.classification.excluded));
        self.customers.insert(key, v);
    }

    // ----- customers ----------------------------------------------------

    pub fn customer(&mut self, key: &CustomerKey) -> Result<Option<StoredCustomer>> {
        if let Some(v) = self.customers.get(key) {
            return Ok(v.clone());
        }
        let v = load_customer(self.conn, key)?;
        self.remember(key.clone(), v.clone());
        Ok(v)
    }

    /// The stored classification of a customer, if stored.
    fn stored_class(&mut self, key: &CustomerKey) -> Result<Option<Classification>> {
        if let Some(v) = self.customers.get(key) {
            return Ok(v.as_ref().map(|s| s.classification.clone()));
        }
        self.conn
            .query_opt(
                "SELECT excluded, exclusion_source, exclusion_reason FROM customers \
                 WHERE connector = ? AND id = ?",
                &params![&key.connector, &key.external_id],
            )?
            .map(|r| {
                Ok(Classification {
                    excluded: r.bool(0)?,
                    source: r.opt_text(1)?.map(|s| codec::enum_parse(&s)).transpose()?,
                    reason: r.text(2)?,
                })
            })
            .transpose()
    }

    fn count_class(&mut self, conn: &str, c: &Classification, delta: i64) {
        *self.classes.entry(class_bucket(conn, c)).or_default() += delta;
    }

    /// Stores a customer with its classification. Emits `customer.upserted`
    /// for an included customer, `customer.included` when it was excluded
    /// before, `customer.excluded` when it was included before; nothing while
    /// it stays excluded (not served).
    pub fn put_customer(&mut self, sc: &StoredCustomer) -> Result<()> {
        let key = sc.key();
        let old = self.stored_class(&key)?;
        if old.as_ref() != Some(&sc.classification) {
            if let Some(o) = &old {
                self.count_class(&sc.connector, o, -1);
            }
            self.count_class(&sc.connector, &sc.classification, 1);
        }
        let kind = match (old.as_ref().map(|c| c.excluded), sc.classification.excluded) {
            (Some(true), false) => Some(EventType::CustomerIncluded),
            (_, false) => Some(EventType::CustomerUpserted),
            (Some(false), true) => Some(EventType::CustomerExcluded),
            (_, true) => None,
        };
        if let Some(kind) = kind {
            self.emit(kind, &sc.connector, &sc.customer.external_id, None);
        }
        self.conn.exec(UPSERT_CUSTOMER, &customer_values(sc))?;
        self.remember(key, Some(sc.clone()));
        Ok(())
    }

    /// Removes a customer record (deleted upstream). Its manual decision, if
    /// any, stays so it applies again should the customer come back.
    /// Emits `customer.purged` (no records) for an included customer unless
    /// this transaction already purged it.
    pub fn delete_customer(&mut self, key: &CustomerKey) -> Result<()> {
        if let Some(o) = self.stored_class(key)? {
            self.count_class(&key.connector, &o, -1);
            if !o.excluded && !self.purged.contains(key) {
                self.purged.insert(key.clone());
                let data = feed::purge_data(&[], &[]);
                self.emit(
                    EventType::CustomerPurged,
                    &key.connector,
                    &key.external_id,
                    Some(data),
                );
            }
        }
        self.conn.exec(
            "DELETE FROM customers WHERE connector = ? AND id = ?",
            &params![&key.connector, &key.external_id],
        )?;
        self.remember(key.clone(), None);
        Ok(())
    }

    pub fn manual_decision(&mut self, key: &CustomerKey) -> Result<Option<ManualDecision>> {
        load_decision(self.conn, key)
    }

    pub fn set_manual_decision(
        &mut self,
        key: &CustomerKey,
        d: Option<&ManualDecision>,
    ) -> Result<()> {
        match d {
            Some(d) => self.conn.exec(
                "INSERT INTO decisions (connector, customer_id, action, actor, reason, at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connector, customer_id) DO UPDATE SET \
                 action = excluded.action, actor = excluded.actor, reason = excluded.reason, at = excluded.at",
                &params![
                    &key.connector,
                    &key.external_id,
                    enum_text(&d.action),
                    &d.actor,
                    &d.reason,
                    d.at
                ],
            )?,
            None => self.conn.exec(
                "DELETE FROM decisions WHERE connector = ? AND customer_id = ?",
                &params![&key.connector, &key.external_id],
            )?,
        };
        Ok(())
    }

    // ----- records ------------------------------------------------------

    fn tombstone(&mut self, conn: &str, e: Entity, id: &str) -> Result<Option<(Timestamp, bool)>> {
        self.conn
            .query_opt(
                "SELECT at, deleted FROM tombstones WHERE connector = ? AND entity = ? AND id = ?",
                &params![conn, e.as_str(), id],
            )?
            .map(|r| Ok((r.time(0)?, r.bool(1)?)))
            .transpose()
    }

    fn locate(&mut self, conn: &str, e: Entity, id: &str) -> Result<Option<Located>> {
        let sql = match e {
            Entity::Invoices => {
                "SELECT customer_id, last_modified FROM invoices WHERE connector = ? AND id = ?"
            }
            _ => {
                "SELECT customer_id, last_modified FROM transactions WHERE connector = ? AND id = ?"
            }
        };
        if let Some(r) = self.conn.query_opt(sql, &params![conn, id])? {
            return Ok(Some(Located {
                customer: r.text(0)?,
                parked: false,
                last_modified: r.time(1)?,
            }));
        }
        self.conn
            .query_opt(
                "SELECT customer_id, last_modified FROM parked WHERE connector = ? AND entity = ? AND id = ?",
                &params![conn, e.as_str(), id],
            )?
            .map(|r| {
                Ok(Located {
                    customer: r.text(0)?,
                    parked: true,
                    last_modified: r.time(1)?,
                })
            })
            .transpose()
    }

    fn delete_located(&mut self, conn: &str, e: Entity, id: &str, parked: bool) -> Result<()> {
        if parked {
            self.conn.exec(
                "DELETE FROM parked WHERE connector = ? AND entity = ? AND id = ?",
                &params![conn, e.as_str(), id],
            )?;
        } else {
            match e {
                Entity::Invoices => self.conn.exec(
                    "DELETE FROM invoices WHERE connector = ? AND id = ?",
                    &params![conn, id],
                )?,
                _ => self.conn.exec(
                    "DELETE FROM transactions WHERE connector = ? AND id = ?",
                    &params![conn, id],
                )?,
            };
        }
        Ok(())
    }

    fn write_record(&mut self, conn: &str, rec: &Record, parked: bool) -> Result<()> {
        if parked {
            self.conn.exec(
                UPSERT_PARKED,
                &[
                    Value::from(conn),
                    Value::from(rec.entity().as_str()),
                    Value::from(rec.external_id()),
                    Value::from(rec.customer_id()),
                    Value::Time(rec.last_modified()),
                    json(rec),
                ],
            )?;
        } else {
            match rec {
                Record::Invoice(i) => self
                    .conn
                    .exec(UPSERT_INVOICE, &invoice_values(conn, i, self.now))?,
                Record::Transaction(t) => self
                    .conn
                    .exec(UPSERT_TRANSACTION, &transaction_values(conn, t, self.now))?,
            };
        }
        Ok(())
    }

    /// Stores an invoice or transaction under its customer (or parks it when
    /// `parked`), keeping whichever upstream version is newer. A record that
    /// moved to another customer leaves the old one.
    pub fn upsert_record(&mut self, conn: &str, rec: &Record, parked: bool) -> Result<Upsert> {
        let e = rec.entity();
        let id = rec.external_id();
        let ts = rec.last_modified();
        if let Some((at, deleted)) = self.tombstone(conn, e, id)? {
            // Deleted upstream at `at`: versions at or before are refused.
            // Dropped for an excluded customer at version `at`: only strictly
            // older versions are refused, so that same version is accepted
            // when its customer is re-included and resynced.
            let refused = if deleted { at >= ts } else { at > ts };
            if refused {
                return Ok(Upsert::Stale);
            }
            self.conn.exec(
                "DELETE FROM tombstones WHERE connector = ? AND entity = ? AND id = ?",
                &params![conn, e.as_str(), id],
            )?;
        }
        let mut outcome = Upsert::Inserted;
        if let Some(old) = self.locate(conn, e, id)? {
            if old.last_modified > ts {
                return Ok(Upsert::Stale);
            }
            outcome = Upsert::Updated;
            if old.parked != parked {
                self.delete_located(conn, e, id, old.parked)?;
                if parked {
                    // Moved to a customer not seen yet: no longer served.
                    self.emit_record(conn, e, id, true);
                }
            }
        }
        self.write_record(conn, rec, parked)?;
        if !parked {
            self.emit_record(conn, e, id, false);
        }
        Ok(outcome)
    }

    /// The tombstones and current copies (stored or parked) of `recs`, in a
    /// few `IN` queries per chunk of ids.
    #[allow(clippy::type_complexity)]
    fn look_up(
        &mut self,
        conn: &str,
        recs: &[&Record],
    ) -> Result<(
        HashMap<RecKey, (Timestamp, bool)>,
        HashMap<RecKey, (bool, Timestamp)>,
    )> {
        let mut tombs: HashMap<RecKey, (Timestamp, bool)> = HashMap::new();
        // where each id is now: (parked, last_modified)
        let mut located: HashMap<RecKey, (bool, Timestamp)> = HashMap::new();
        for e in [Entity::Invoices, Entity::Transactions] {
            let mut ids: Vec<&str> = recs
                .iter()
                .filter(|r| r.entity() == e)
                .map(|r| r.external_id())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let table = if e == Entity::Invoices {
                "invoices"
            } else {
                "transactions"
            };
            for chunk in ids.chunks(CHUNK) {
                let chunk = padded(chunk);
                let m = marks(chunk.len());
                let mut p: Vec<Value> = vec![Value::from(conn), Value::from(e.as_str())];
                p.extend(chunk.iter().map(|id| Value::from(*id)));
                for r in self.conn.query_dyn(
                    &format!("SELECT id, at, deleted FROM tombstones WHERE connector = ? AND entity = ? AND id IN ({m})"),
                    &p,
                )? {
                    tombs.insert((e, r.text(0)?), (r.time(1)?, r.bool(2)?));
                }
                for r in self.conn.query_dyn(
                    &format!("SELECT id, last_modified FROM parked WHERE connector = ? AND entity = ? AND id IN ({m})"),
                    &p,
                )? {
                    located.insert((e, r.text(0)?), (true, r.time(1)?));
                }
                p.remove(1);
                for r in self.conn.query_dyn(
                    &format!(
                        "SELECT id, last_modified FROM {table} WHERE connector = ? AND id IN ({m})"
                    ),
                    &p,
                )? {
                    located.insert((e, r.text(0)?), (false, r.time(1)?));
                }
            }
        }
        Ok((tombs, located))
    }

    /// Deletes records by id from the stored tables or the parking.
    fn delete_many(&mut self, conn: &str, keys: &[(RecKey, bool)]) -> Result<()> {
        for e in [Entity::Invoices, Entity::Transactions] {
            for parked in [false, true] {
                let ids: Vec<&str> = keys
                    .iter()
                    .filter(|(k, p)| k.0 == e && *p == parked)
                    .map(|(k, _)| k.1.as_str())
                    .collect();
                for chunk in ids.chunks(CHUNK) {
                    let chunk = padded(chunk);
                    let mut p: Vec<Value> = vec![Value::from(conn)];
                    let sql = if parked {
                        p.push(Value::from(e.as_str()));
                        format!(
                            "DELETE FROM parked WHERE connector = ? AND entity = ? AND id IN ({})",
                            marks(chunk.len())
                        )
                    } else {
                        let table = if e == Entity::Invoices {
                            "invoices"
                        } else {
                            "transactions"
                        };
                        format!(
                            "DELETE FROM {table} WHERE connector = ? AND id IN ({})",
                            marks(chunk.len())
                        )
                    };
                    p.extend(chunk.iter().map(|id| Value::from(*id)));
                    self.conn.exec_dyn(&sql, &p)?;
                }
            }
        }
        Ok(())
    }

    /// [`Tx::drop_record`] for many records of one connector at once, with
    /// the same outcome as calling it for each in order.
    pub fn drop_records(&mut self, conn: &str, recs: &[&Record]) -> Result<Vec<bool>> {
        let (mut tombs, mut located) = self.look_up(conn, recs)?;
        let mut out = Vec::with_capacity(recs.len());
        let mut deletes: Vec<(RecKey, bool)> = Vec::new();
        let mut tomb_writes: HashMap<RecKey, Timestamp> = HashMap::new();
        for r in recs {
            let key = (r.entity(), r.external_id().to_string());
            let ts = r.last_modified();
            let mut removed = false;
            if let Some(&(parked, lm)) = located.get(&key) {
                if lm > ts {
                    out.push(false);
                    continue;
                }
                located.remove(&key);
                deletes.push((key.clone(), parked));
                removed = true;
            }
            let newer_known = tombs.get(&key).is_some_and(|&(at, _)| at >= ts);
            if !newer_known {
                tombs.insert(key.clone(), (ts, false));
                tomb_writes.insert(key, ts);
            }
            out.push(removed);
        }
        self.delete_many(conn, &deletes)?;
        for ((e, id), parked) in &deletes {
            if !parked {
                self.emit_record(conn, *e, id, true);
            }
        }
        let rows: Vec<(&RecKey, &Timestamp)> = tomb_writes.iter().collect();
        let now = chrono::Utc::now();
        for chunk in shaped(&rows) {
            let mut p: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
            for ((e, id), at) in chunk {
                p.extend(params![conn, e.as_str(), id.as_str(), **at, false, now]);
            }
            self.conn.exec_dyn(
                &format!(
                    "INSERT INTO tombstones (connector, entity, id, at, deleted, recorded_at) VALUES {} \
                     ON CONFLICT (connector, entity, id) DO UPDATE SET at = excluded.at, \
                     deleted = excluded.deleted, recorded_at = excluded.recorded_at",
                    value_rows(chunk.len(), 6)
                ),
                &p,
            )?;
        }
        Ok(out)
    }

    /// [`Tx::upsert_record`] for many records of one connector at once (not
    /// parked), with the same outcome as calling it for each in order, in a
    /// few statements per chunk: one lookup each of tombstones, stored and
    /// parked copies, then multi-row upserts.
    pub fn upsert_records(&mut self, conn: &str, recs: &[&Record]) -> Result<Vec<Upsert>> {
        let (mut tombs, mut located) = self.look_up(conn, recs)?;
        let mut out = Vec::with_capacity(recs.len());
        let mut drop_tombs: Vec<RecKey> = Vec::new();
        let mut unpark: Vec<RecKey> = Vec::new();
        let mut writes: HashMap<RecKey, &Record> = HashMap::new();
        let mut order: Vec<RecKey> = Vec::new();
        for r in recs {
            let key = (r.entity(), r.external_id().to_string());
            let ts = r.last_modified();
            if let Some(&(at, deleted)) = tombs.get(&key) {
                let refused = if deleted { at >= ts } else { at > ts };
                if refused {
                    out.push(Upsert::Stale);
                    continue;
                }
                tombs.remove(&key);
                drop_tombs.push(key.clone());
            }
            let mut outcome = Upsert::Inserted;
            if let Some(&(parked, lm)) = located.get(&key) {
                if lm > ts {
                    out.push(Upsert::Stale);
                    continue;
                }
                outcome = Upsert::Updated;
                if parked {
                    unpark.push(key.clone());
                }
            }
            located.insert(key.clone(), (false, ts));
            if writes.insert(key.clone(), r).is_none() {
                order.push(key);
            }
            out.push(outcome);
        }
        for (keys, sql) in [
            (
                &drop_tombs,
                "DELETE FROM tombstones WHERE connector = ? AND entity = ? AND id IN",
            ),
            (
                &unpark,
                "DELETE FROM parked WHERE connector = ? AND entity = ? AND id IN",
            ),
        ] {
            for e in [Entity::Invoices, Entity::Transactions] {
                let ids: Vec<&str> = keys
                    .iter()
                    .filter(|k| k.0 == e)
                    .map(|k| k.1.as_str())
                    .collect();
                for chunk in ids.chunks(CHUNK) {
                    let chunk = padded(chunk);
                    let mut p: Vec<Value> = vec![Value::from(conn), Value::from(e.as_str())];
                    p.extend(chunk.iter().map(|id| Value::from(*id)));
                    self.conn
                        .exec_dyn(&format!("{sql} ({})", marks(chunk.len())), &p)?;
                }
            }
        }
        for (e, id) in &order {
            self.emit_record(conn, *e, id, false);
        }
        for e in [Entity::Invoices, Entity::Transactions] {
            let rows: Vec<&Record> = order
                .iter()
                .filter(|k| k.0 == e)
                .map(|k| writes[k])
                .collect();
            let (head, tail, cols) = if e == Entity::Invoices {
                (INVOICE_HEAD, INVOICE_TAIL, 13)
            } else {
                (TRANSACTION_HEAD, TRANSACTION_TAIL, 9)
            };
            if self.conn.arrays() {
                if rows.is_empty() {
                    continue;
                }
                let values: Vec<Vec<Value>> = rows
                    .iter()
                    .map(|r| match r {
                        Record::Invoice(i) => invoice_values(conn, i, self.now),
                        Record::Transaction(t) => transaction_values(conn, t, self.now),
                    })
                    .collect();
                let sql = if e == Entity::Invoices {
                    UPSERT_INVOICES_UNNEST
                } else {
                    UPSERT_TRANSACTIONS_UNNEST
                };
                self.conn.exec(sql, &super::sql::columns(values))?;
                continue;
            }
            for chunk in shaped(&rows) {
                let mut p: Vec<Value> = Vec::with_capacity(chunk.len() * cols);
                for r in chunk {
                    match r {
                        Record::Invoice(i) => p.extend(invoice_values(conn, i, self.now)),
                        Record::Transaction(t) => p.extend(transaction_values(conn, t, self.now)),
                    }
                }
                self.conn.exec_dyn(
                    &format!("{head}{}{tail}", value_rows(chunk.len(), cols)),
                    &p,
                )?;
            }
        }
        Ok(out)
    }

    /// Loads whether the customers of `ids` (one connector) are stored and
    /// excluded into this transaction's cache in a few queries, so the
    /// per-record lookups of a page ([`Tx::customer_excluded`]) cost nothing.
    pub fn prefetch_customers(&mut self, conn: &str, ids: &[&str]) -> Result<()> {
        let mut want: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.excluded.contains_key(&CustomerKey::new(conn, *id)))
            .collect();
        want.sort_unstable();
        want.dedup();
        if self.excluded.len() + want.len() > CACHE_MAX {
            self.excluded.clear();
        }
        for chunk in want.chunks(CHUNK) {
            let chunk = padded(chunk);
            let mut p: Vec<Value> = vec![Value::from(conn)];
            p.extend(chunk.iter().map(|id| Value::from(*id)));
            let rows = self.conn.query_dyn(
                &format!(
                    "SELECT id, excluded FROM customers WHERE connector = ? AND id IN ({})",
                    marks(chunk.len())
                ),
                &p,
            )?;
            for id in &chunk {
                self.excluded.insert(CustomerKey::new(conn, *id), None);
            }
            for r in &rows {
                self.excluded
                    .insert(CustomerKey::new(conn, r.text(0)?), Some(r.bool(1)?));
            }
        }
        Ok(())
    }

    /// Whether a customer is stored and excluded: `None` when it is not
    /// stored. Served from the cache when possible.
    pub fn customer_excluded(&mut self, key: &CustomerKey) -> Result<Option<bool>> {
        if let Some(v) = self.excluded.get(key) {
            return Ok(*v);
        }
        let v = self.stored_class(key)?.map(|c| c.excluded);
        if self.excluded.len() >= CACHE_MAX {
            self.excluded.clear();
        }
        self.excluded.insert(key.clone(), v);
        Ok(v)
    }

    /// Removes a record wherever it is (stored or parked). With `tombstone`,
    /// remembers the deletion so an older copy arriving later is refused.
    /// Returns whether a record was removed.
    pub fn remove_record(
        &mut self,
        conn: &str,
        e: Entity,
        id: &str,
        tombstone: Option<Timestamp>,
    ) -> Result<bool> {
        let mut removed = match e {
            Entity::Invoices => self.conn.exec(
                "DELETE FROM invoices WHERE connector = ? AND id = ?",
                &params![conn, id],
            )?,
            _ => self.conn.exec(
                "DELETE FROM transactions WHERE connector = ? AND id = ?",
                &params![conn, id],
            )?,
        } > 0;
        if removed {
            self.emit_record(conn, e, id, true);
        }
        removed |= self.conn.exec(
            "DELETE FROM parked WHERE connector = ? AND entity = ? AND id = ?",
            &params![conn, e.as_str(), id],
        )? > 0;
        if let Some(at) = tombstone {
            self.conn.exec(
                UPSERT_TOMBSTONE,
                &params![conn, e.as_str(), id, at, true, chrono::Utc::now()],
            )?;
        }
        Ok(removed)
    }

    /// A version of a record that belongs to an excluded customer: it is not
    /// stored. A stored copy (under the customer it belonged to before) is
    /// removed unless it is newer, and the version is remembered so an older
    /// copy arriving later (a resync page fetched before the move) cannot
    /// bring the record back. Returns whether a stored copy was removed.
    pub fn drop_record(&mut self, conn: &str, rec: &Record) -> Result<bool> {
        let e = rec.entity();
        let id = rec.external_id();
        let ts = rec.last_modified();
        let mut removed = false;
        if let Some(old) = self.locate(conn, e, id)? {
            if old.last_modified > ts {
                // What we hold is newer: this version is stale.
                return Ok(false);
            }
            self.delete_located(conn, e, id, old.parked)?;
            if !old.parked {
                self.emit_record(conn, e, id, true);
            }
            removed = true;
        }
        let newer_known = self.tombstone(conn, e, id)?.is_some_and(|(at, _)| at >= ts);
        if !newer_known {
            self.conn.exec(
                UPSERT_TOMBSTONE,
                &params![conn, e.as_str(), id, ts, false, chrono::Utc::now()],
            )?;
        }
        Ok(removed)
    }

    /// The customer a stored (not parked) record currently belongs to.
    pub fn record_owner(&mut self, conn: &str, e: Entity, id: &str) -> Result<Option<String>> {
        Ok(self
            .locate(conn, e, id)?
            .filter(|l| !l.parked)
            .map(|l| l.customer))
    }

    /// Deletes every stored and parked invoice and transaction of a customer.
    /// Returns (invoices, transactions) removed. When the customer is served
    /// (stored and included) or served records went, emits
    /// `customer.purged` naming the removed invoice and transaction ids (in
    /// several events of at most [`feed::PURGE_IDS_PER_EVENT`] ids).
    pub fn purge_customer_records(&mut self, key: &CustomerKey) -> Result<(u64, u64)> {
        let p = params![&key.connector, &key.external_id];
        let invoices: Vec<String> = self
            .conn
            .query(
                "DELETE FROM invoices WHERE connector = ? AND customer_id = ? RETURNING id",
                &p,
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_>>()?;
        let transactions: Vec<String> = self
            .conn
            .query(
                "DELETE FROM transactions WHERE connector = ? AND customer_id = ? RETURNING id",
                &p,
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_>>()?;
        let mut inv = invoices.len() as u64;
        let mut txn = transactions.len() as u64;
        let served = self.stored_class(key)?.is_some_and(|c| !c.excluded);
        if served || inv + txn > 0 {
            self.purged.insert(key.clone());
            for data in feed::purge_chunks(invoices, transactions) {
                self.emit(
                    EventType::CustomerPurged,
                    &key.connector,
                    &key.external_id,
                    Some(data),
                );
            }
        }
        inv += self.conn.exec(
            "DELETE FROM parked WHERE connector = ? AND customer_id = ? AND entity = 'invoices'",
            &p,
        )?;
        txn += self.conn.exec(
            "DELETE FROM parked WHERE connector = ? AND customer_id = ? AND entity <> 'invoices'",
            &p,
        )?;
        Ok((inv, txn))
    }

    /// Removes and returns the records parked for a customer.
    pub fn take_parked(&mut self, key: &CustomerKey) -> Result<Vec<Record>> {
        let p = params![&key.connector, &key.external_id];
        let rows = self.conn.query(
            "SELECT record FROM parked WHERE connector = ? AND customer_id = ? ORDER BY entity, id",
            &p,
        )?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.conn.exec(
            "DELETE FROM parked WHERE connector = ? AND customer_id = ?",
            &p,
        )?;
        rows.iter().map(|r| r.json(0)).collect()
    }

    pub fn records_of(&mut self, key: &CustomerKey) -> Result<Vec<Record>> {
        load_records_of(self.conn, key)
    }

    // ----- cursors, counters, audit, quarantine ---------------------------

    pub fn set_cursor(&mut self, conn: &str, e: Entity, cursor: &str) -> Result<()> {
        self.conn.exec(
            "INSERT INTO cursors (connector, entity, cursor) VALUES (?, ?, ?) \
             ON CONFLICT (connector, entity) DO UPDATE SET cursor = excluded.cursor",
            &params![conn, e.as_str(), cursor],
        )?;
        Ok(())
    }

    /// Starts a partitioned first sync of `entity`: stores the stream's
    /// incremental cursor `then` (taken before any range is read, so the
    /// incremental reads that follow miss nothing changed meanwhile) and one
    /// range cursor per entry of `ranges`, all not done. Replaces a previous
    /// plan of the same stream.
    pub fn start_partitions(
        &mut self,
        conn: &str,
        e: Entity,
        then: &str,
        ranges: &[String],
    ) -> Result<()> {
        self.conn.exec(
            "DELETE FROM partitions WHERE connector = ? AND entity = ?",
            &params![conn, e.as_str()],
        )?;
        for (part, cursor) in ranges.iter().enumerate() {
            self.conn.exec(
                "INSERT INTO partitions (connector, entity, part, cursor, done) VALUES (?, ?, ?, ?, ?)",
                &params![conn, e.as_str(), part as u64, cursor, false],
            )?;
        }
        self.set_cursor(conn, e, then)
    }

    /// Stores where range `part` of `entity`'s partitioned first sync
    /// continues (in the write of the page it follows). When `done` and
    /// every other range is done too, the ranges are forgotten and `true`
    /// comes back: the stream goes on from its incremental cursor.
    pub fn set_partition_cursor(
        &mut self,
        conn: &str,
        e: Entity,
        part: u32,
        cursor: &str,
        done: bool,
    ) -> Result<bool> {
        let n = self.conn.exec(
            "UPDATE partitions SET cursor = ?, done = ? WHERE connector = ? AND entity = ? AND part = ?",
            &params![cursor, done, conn, e.as_str(), part as u64],
        )?;
        if n != 1 {
            return Err(StoreError::Rejected(format!(
                "no range {part} of a partitioned {e} sync of connector `{conn}`"
            )));
        }
        if !done {
            return Ok(false);
        }
        let open = self
            .conn
            .query_opt(
                "SELECT COUNT(*) FROM partitions WHERE connector = ? AND entity = ? AND NOT done",
                &params![conn, e.as_str()],
            )?
            .map(|r| r.u64(0))
            .transpose()?
            .unwrap_or(0);
        if open > 0 {
            return Ok(false);
        }
        self.conn.exec(
            "DELETE FROM partitions WHERE connector = ? AND entity = ?",
            &params![conn, e.as_str()],
        )?;
        Ok(true)
    }

    /// Adds to a counter (written at commit).
    pub fn add_counter(&mut self, conn: &str, name: &str, delta: u64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        *self
            .counters
            .entry((conn.to_string(), name.to_string()))
            .or_default() += i64::try_from(delta).unwrap_or(i64::MAX);
        Ok(())
    }

    /// Appends to the audit trail; returns the entry's sequence number.
    pub fn audit(&mut self, entry: AuditEntry) -> Result<u64> {
        let row = self.conn.query_opt(
            "INSERT INTO audit (at, connector, customer_id, action, actor, reason, from_class, to_class) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            &[
                Value::Time(entry.at),
                Value::from(&entry.customer.connector),
                Value::from(&entry.customer.external_id),
                Value::from(&entry.action),
                Value::from(&entry.actor),
                Value::from(&entry.reason),
                entry.from.as_ref().map(json).unwrap_or(Value::Null),
                entry.to.as_ref().map(json).unwrap_or(Value::Null),
            ],
        )?;
        row.map(|r| r.u64(0)).unwrap_or_else(|| {
            Err(StoreError::Backend(
                "audit insert returned no sequence".into(),
            ))
        })
    }

    pub fn quarantine(&mut self, conn: &str, at: Timestamp, record: Quarantined) -> Result<()> {
        self.conn.exec(
            "INSERT INTO quarantine (connector, at, entity, external_id, reason, raw) VALUES (?, ?, ?, ?, ?, ?)",
            &params![
                conn,
                at,
                record.entity.as_str(),
                record.external_id,
                record.reason,
                record.raw
            ],
        )?;
        Ok(())
    }

    /// Writes a tombstone as it is (imports of an earlier store).
    pub fn put_tombstone(
        &mut self,
        conn: &str,
        e: Entity,
        id: &str,
        at: Timestamp,
        deleted: bool,
    ) -> Result<()> {
        self.conn.exec(
            UPSERT_TOMBSTONE,
            &params![conn, e.as_str(), id, at, deleted, chrono::Utc::now()],
        )?;
        Ok(())
    }

    /// Makes [`Tx::next_id`] return more than `n` from now on (imports).
    pub fn ensure_next_id_above(&mut self, n: u64) -> Result<()> {
        self.conn.exec(
            "INSERT INTO id_sequence (name, value) VALUES ('ids', ?) \
             ON CONFLICT (name) DO UPDATE SET value = CASE WHEN id_sequence.value < excluded.value \
             THEN excluded.value ELSE id_sequence.value END",
            &params![n],
        )?;
        Ok(())
    }

    /// A fresh id, unique in this store (resync jobs and batches).
    pub fn next_id(&mut self) -> Result<u64> {
        let row = self.conn.query_opt(
            "INSERT INTO id_sequence (name, value) VALUES ('ids', 1) \
             ON CONFLICT (name) DO UPDATE SET value = id_sequence.value + 1 RETURNING value",
            &[],
        )?;
        row.map(|r| r.u64(0))
            .unwrap_or_else(|| Err(StoreError::Backend("id sequence returned nothing".into())))
    }

    // ----- feature state ----------------------------------------------------

    pub fn meta<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        load_meta(self.conn, key)
    }

    pub fn put_meta<T: Serialize>(&mut self, key: &str, v: &T) -> Result<()> {
        self.conn.exec(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[Value::from(key), json(v)],
        )?;
        Ok(())
    }

    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        self.conn
            .exec("DELETE FROM meta WHERE key = ?", &params![key])?;
        Ok(())
    }

    pub fn stop_flag<T: DeserializeOwned>(&mut self, key: &CustomerKey) -> Result<Option<T>> {
        load_stop(self.conn, key)
    }

    pub fn put_stop_flag<T: Serialize>(&mut self, key: &CustomerKey, flag: &T) -> Result<()> {
        self.conn.exec(
            "INSERT INTO reminder_stops (connector, customer_id, flag) VALUES (?, ?, ?) \
             ON CONFLICT (connector, customer_id) DO UPDATE SET flag = excluded.flag",
            &[
                Value::from(&key.connector),
                Value::from(&key.external_id),
                json(flag),
            ],
        )?;
        Ok(())
    }

    pub fn delete_stop_flag(&mut self, key: &CustomerKey) -> Result<()> {
        self.conn.exec(
            "DELETE FROM reminder_stops WHERE connector = ? AND customer_id = ?",
            &params![&key.connector, &key.external_id],
        )?;
        Ok(())
    }

    pub fn hold_flag<T: DeserializeOwned>(
        &mut self,
        connector: &str,
        invoice: &str,
    ) -> Result<Option<T>> {
        load_hold(self.conn, connector, invoice)
    }

    pub fn put_hold_flag<T: Serialize>(
        &mut self,
        connector: &str,
        invoice: &str,
        flag: &T,
    ) -> Result<()> {
        self.conn.exec(
            "INSERT INTO reminder_holds (connector, invoice_id, flag) VALUES (?, ?, ?) \
             ON CONFLICT (connector, invoice_id) DO UPDATE SET flag = excluded.flag",
            &[Value::from(connector), Value::from(invoice), json(flag)],
        )?;
        Ok(())
    }

    pub fn delete_hold_flag(&mut self, connector: &str, invoice: &str) -> Result<()> {
        self.conn.exec(
            "DELETE FROM reminder_holds WHERE connector = ? AND invoice_id = ?",
            &params![connector, invoice],
        )?;
        Ok(())
    }

    pub fn resync_job<T: DeserializeOwned>(&mut self, id: u64) -> Result<Option<T>> {
        load_job(self.conn, id)
    }

    pub fn resync_jobs<T: DeserializeOwned>(&mut self) -> Result<Vec<T>> {
        load_jobs(self.conn)
    }

    /// Writes a resync job: its JSON document plus the columns queries use.
    pub fn put_resync_job<T: Serialize>(
        &mut self,
        id: u64,
        connector: &str,
        state: &str,
        created_at: Timestamp,
        finished_at: Option<Timestamp>,
        job: &T,
    ) -> Result<()> {
        self.conn.exec(
            "INSERT INTO resync_jobs (id, connector, state, created_at, finished_at, job) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
             finished_at = excluded.finished_at, job = excluded.job",
            &[
                Value::from(id),
                Value::from(connector),
                Value::from(state),
                Value::Time(created_at),
                Value::from(finished_at),
                json(job),
            ],
        )?;
        Ok(())
    }

    /// Deletes a job with its member list.
    pub fn delete_resync_job(&mut self, id: u64) -> Result<()> {
        self.conn
            .exec("DELETE FROM resync_members WHERE job = ?", &params![id])?;
        self.conn
            .exec("DELETE FROM resync_jobs WHERE id = ?", &params![id])?;
        Ok(())
    }

    /// Whether a customer is a member of a job: `Some(done)`.
    pub fn resync_member(&mut self, job: u64, customer: &str) -> Result<Option<bool>> {
        self.conn
            .query_opt(
                "SELECT done FROM resync_members WHERE job = ? AND customer_id = ?",
                &params![job, customer],
            )?
            .map(|r| r.bool(0))
            .transpose()
    }

    /// Every member of a job with whether it is done, by customer id.
    pub fn resync_members(&mut self, job: u64) -> Result<Vec<(String, bool)>> {
        load_members(self.conn, job)
    }

    pub fn set_resync_member(&mut self, job: u64, customer: &str, done: bool) -> Result<()> {
        self.conn.exec(
            "INSERT INTO resync_members (job, customer_id, done) VALUES (?, ?, ?) \
             ON CONFLICT (job, customer_id) DO UPDATE SET done = excluded.done",
            &params![job, customer, done],
        )?;
        Ok(())
    }

    pub fn delete_resync_member(&mut self, job: u64, customer: &str) -> Result<()> {
        self.conn.exec(
            "DELETE FROM resync_members WHERE job = ? AND customer_id = ?",
            &params![job, customer],
        )?;
        Ok(())
    }

    /// The unfinished job a customer waits in.
    pub fn resync_queued(&mut self, connector: &str, customer: &str) -> Result<Option<u64>> {
        load_queued(self.conn, connector, customer)
    }

    /// Sets (or with `None` clears) the unfinished job a customer waits in.
    pub fn set_resync_queued(
        &mut self,
        connector: &str,
        customer: &str,
        job: Option<u64>,
    ) -> Result<()> {
        match job {
            Some(j) => self.conn.exec(
                "INSERT INTO resync_queued (connector, customer_id, job) VALUES (?, ?, ?) \
                 ON CONFLICT (connector, customer_id) DO UPDATE SET job = excluded.job",
                &params![connector, customer, j],
            )?,
            None => self.conn.exec(
                "DELETE FROM resync_queued WHERE connector = ? AND customer_id = ?",
                &params![connector, customer],
            )?,
        };
        Ok(())
    }

    /// Stores a connector credential (a secret: never logged).
    pub fn put_credential(&mut self, connector: &str, name: &str, value: &str) -> Result<()> {
        self.conn.exec(
            "INSERT INTO credentials (connector, name, value, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (connector, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            &params![connector, name, value, chrono::Utc::now()],
        )?;
        Ok(())
    }

    pub fn credential(&mut self, connector: &str, name: &str) -> Result<Option<String>> {
        load_credential(self.conn, connector, name)
    }

    // ----- growth bounds ------------------------------------------------------

    // ----- resync reconciliation -------------------------------------------

    /// Records that an entity stream of resync batch `batch` started at `at`
    /// (the first call for a stream wins: a resumed stream keeps its start).
    pub fn resync_stream_started(&mut self, batch: u64, e: Entity, at: Timestamp) -> Result<()> {
        self.conn.exec(
            "INSERT INTO resync_streams (batch, entity, started_at) VALUES (?, ?, ?) \
             ON CONFLICT (batch, entity) DO NOTHING",
            &params![batch, e.as_str(), at],
        )?;
        Ok(())
    }

    /// Records that the ERP returned `ids` in an entity stream of `batch`.
    pub fn resync_seen(&mut self, batch: u64, e: Entity, ids: &[&str]) -> Result<()> {
        for id in ids {
            self.conn.exec(
                "INSERT INTO resync_seen (batch, entity, id) VALUES (?, ?, ?) \
                 ON CONFLICT (batch, entity, id) DO NOTHING",
                &params![batch, e.as_str(), *id],
            )?;
        }
        Ok(())
    }

    /// At the end of an entity stream of `batch`: removes, with a tombstone
    /// at `now`, every stored record of that entity of `customers` that the
    /// stream did not return and that was last modified upstream before the
    /// stream started less `margin` (a record created meanwhile and stored
    /// by polling is not the stream's to judge), then forgets the stream.
    /// Returns how many records were removed.
    pub fn resync_reconcile(
        &mut self,
        conn: &str,
        batch: u64,
        e: Entity,
        customers: &[String],
        margin: chrono::Duration,
        now: Timestamp,
    ) -> Result<u64> {
        let started = self
            .conn
            .query_opt(
                "SELECT started_at FROM resync_streams WHERE batch = ? AND entity = ?",
                &params![batch, e.as_str()],
            )?
            .map(|r| r.time(0))
            .transpose()?;
        let mut removed = 0;
        if let Some(started) = started {
            let seen: std::collections::HashSet<String> = self
                .conn
                .query(
                    "SELECT id FROM resync_seen WHERE batch = ? AND entity = ?",
                    &params![batch, e.as_str()],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_>>()?;
            let before = started - margin;
            for c in customers {
                let stale: Vec<String> = load_records_of(self.conn, &CustomerKey::new(conn, c))?
                    .into_iter()
                    .filter(|r| r.entity() == e)
                    .filter(|r| r.last_modified() < before && !seen.contains(r.external_id()))
                    .map(|r| r.external_id().to_string())
                    .collect();
                for id in stale {
                    if self.remove_record(conn, e, &id, Some(now))? {
                        removed += 1;
                    }
                }
            }
        }
        self.forget_resync_stream(batch, e)?;
        Ok(removed)
    }

    fn forget_resync_stream(&mut self, batch: u64, e: Entity) -> Result<()> {
        let p = params![batch, e.as_str()];
        self.conn
            .exec("DELETE FROM resync_seen WHERE batch = ? AND entity = ?", &p)?;
        self.conn.exec(
            "DELETE FROM resync_streams WHERE batch = ? AND entity = ?",
            &p,
        )?;
        Ok(())
    }

    pub(super) fn compact(&mut self, r: &Retention, now: Timestamp) -> Result<Compacted> {
        let tombstones = self.conn.exec(
            "DELETE FROM tombstones WHERE recorded_at < ?",
            &params![now - r.tombstones],
        )?;
        let audit = self
            .conn
            .exec("DELETE FROM audit WHERE at < ?", &params![now - r.audit])?;
        let old: Vec<u64> = self
            .conn
            .query(
                "SELECT id FROM resync_jobs WHERE state = 'done' AND finished_at < ?",
                &params![now - r.finished_jobs],
            )?
            .iter()
            .map(|row| row.u64(0))
            .collect::<Result<_>>()?;
        for id in &old {
            self.delete_resync_job(*id)?;
        }
        // Streams of batches that never finished (split or failed jobs).
        let abandoned = self.conn.query(
            "SELECT batch, entity FROM resync_streams WHERE started_at < ?",
            &params![now - r.finished_jobs],
        )?;
        for row in &abandoned {
            let name = row.text(1)?;
            let Some(e) = Entity::ALL.into_iter().find(|e| e.as_str() == name) else {
                continue;
            };
            self.forget_resync_stream(row.u64(0)?, e)?;
        }
        Ok(Compacted {
            tombstones,
            audit,
            jobs: old.len() as u64,
        })
    }
}
