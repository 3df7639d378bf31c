//! Set-based reads for the features that walk many customers (the reminder
//! list and its summary, customer search, the impact of a rule change or a
//! mass exclusion, re-inclusion estimates): one query per page or stretch of
//! customers, never one per customer. Each answers exactly what the
//! per-customer reads (`Store::records_of`, `Store::manual_decision`,
//! `Store::stop_flag`, `Store::hold_flag`) would, which the store tests
//! check on both backends.

use std::collections::HashMap;

use chrono::NaiveDate;
use serde::de::DeserializeOwned;

use super::codec::{self, customer_from_row, record_from_row, CUSTOMER_COLS};
use super::sql::{params, Value};
use super::{Result, Store, StoredCustomer, PAGE};
use crate::model::{CustomerKey, Invoice, ManualDecision, Record};

/// Ids per `IN` list.
const IN_CHUNK: usize = 256;

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `c.connector, c.id, ...`: the customer columns of a join.
fn customer_cols(alias: &str) -> String {
    CUSTOMER_COLS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Like [`Store::customers`], each customer with its manual decision
    /// (one join per page of customers).
    pub fn customers_with_decisions<'a>(
        &'a self,
        connector: Option<&str>,
        after: Option<&CustomerKey>,
    ) -> impl Iterator<Item = Result<(StoredCustomer, Option<ManualDecision>)>> + 'a {
        self.customers_with_decisions_from(connector, after, PAGE as usize)
    }

    /// [`Store::customers_with_decisions`] for a caller that may want only
    /// a few: the first page holds `first_page` rows (at least 1), each
    /// next one twice as many, up to the usual page size.
    pub fn customers_with_decisions_from<'a>(
        &'a self,
        connector: Option<&str>,
        after: Option<&CustomerKey>,
        first_page: usize,
    ) -> impl Iterator<Item = Result<(StoredCustomer, Option<ManualDecision>)>> + 'a {
        let mut size = (first_page.max(1) as i64).min(PAGE);
        let connector = connector.map(str::to_string);
        let mut last: Option<(String, String)> = after
            .map(|a| (a.connector.clone(), a.external_id.clone()))
            .filter(|(c, _)| connector.as_ref().is_none_or(|k| k == c));
        // A starting key of another connector: begin at the connector's start
        // when it sorts after, nothing when before.
        let skip_all =
            matches!((&connector, after), (Some(k), Some(a)) if a.connector.as_str() > k.as_str());
        let head = format!(
            "SELECT {}, d.action, d.actor, d.reason, d.at FROM customers c \
             LEFT JOIN decisions d ON d.connector = c.connector AND d.customer_id = c.id",
            customer_cols("c")
        );
        let mut buf: std::collections::VecDeque<(StoredCustomer, Option<ManualDecision>)> =
            Default::default();
        let mut done = skip_all;
        let mut fetch = move |c: &mut dyn super::Conn, size: i64| -> Result<Vec<_>> {
            let rows = match (&connector, &last) {
                (Some(k), Some((_, id))) => c.query_dyn(
                    &format!("{head} WHERE c.connector = ? AND c.id > ? ORDER BY c.id LIMIT ?"),
                    &params![k, id, size],
                )?,
                (Some(k), None) => c.query_dyn(
                    &format!("{head} WHERE c.connector = ? ORDER BY c.id LIMIT ?"),
                    &params![k, size],
                )?,
                (None, Some((k, id))) => c.query_dyn(
                    &format!(
                        "{head} WHERE (c.connector, c.id) > (?, ?) ORDER BY c.connector, c.id LIMIT ?"
                    ),
                    &params![k, id, size],
                )?,
                (None, None) => c.query_dyn(
                    &format!("{head} ORDER BY c.connector, c.id LIMIT ?"),
                    &params![size],
                )?,
            };
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let sc = customer_from_row(r)?;
                let d = if r.is_null(16) {
                    None
                } else {
                    Some(codec::decision_from_row(r, 16)?)
                };
                out.push((sc, d));
            }
            if let Some((l, _)) = out.last() {
                last = Some((l.connector.clone(), l.customer.external_id.clone()));
            }
            Ok(out)
        };
        std::iter::from_fn(move || loop {
            if let Some(v) = buf.pop_front() {
                return Some(Ok(v));
            }
            if done {
                return None;
            }
            match self.read(|c| fetch(c, size)) {
                Ok(page) => {
                    done = (page.len() as i64) < size;
                    size = (size * 2).min(PAGE);
                    buf.extend(page);
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        })
    }

    /// The open invoices due before `before` of the included customers of
    /// `connector` whose ids lie in `first..=last` (key order), each with
    /// the admin hold on it (`reminder_holds`), by customer and id. One
    /// query for a stretch of customers: the reminder list's read.
    pub fn open_invoices_due_before<T: DeserializeOwned>(
        &self,
        connector: &str,
        first: &str,
        last: &str,
        before: NaiveDate,
    ) -> Result<Vec<(Invoice, Option<T>)>> {
        let cols: Vec<String> = codec::INVOICE_COLS
            .split(',')
            .map(|c| format!("i.{}", c.trim()))
            .collect();
        // SQLite without table statistics would rather walk the status
        // index (two equalities) through every open invoice of the connector.
        let hint = if self.path().is_some() {
            " INDEXED BY invoices_customer"
        } else {
            ""
        };
        // CROSS JOIN keeps SQLite's loop order (invoices outer); PostgreSQL
        // plans it like an inner join. Invoices of an excluded customer are
        // never returned, should the store hold any.
        let sql = format!(
            "SELECT {}, h.flag FROM invoices i{hint} CROSS JOIN customers c \
             LEFT JOIN reminder_holds h ON h.connector = i.connector AND h.invoice_id = i.id \
             WHERE i.connector = ? AND i.customer_id >= ? AND i.customer_id <= ? \
             AND i.status = 'open' AND i.due_date < ? \
             AND c.connector = i.connector AND c.id = i.customer_id AND c.excluded = FALSE \
             ORDER BY i.customer_id, i.id",
            cols.join(", ")
        );
        self.read(|c| {
            c.query_dyn(
                &sql,
                &[
                    Value::from(connector),
                    Value::from(first),
                    Value::from(last),
                    Value::Date(before),
                ],
            )?
            .iter()
            .map(|r| {
                let Record::Invoice(inv) = record_from_row(true, r, 0)? else {
                    unreachable!("an invoice row")
                };
                Ok((inv, r.opt_json(11)?))
            })
            .collect()
        })
    }

    /// The STOP flags of the customers of `connector` whose ids lie in
    /// `first..=last`, by customer id.
    pub fn stop_flags_between<T: DeserializeOwned>(
        &self,
        connector: &str,
        first: &str,
        last: &str,
    ) -> Result<Vec<(String, T)>> {
        self.read(|c| {
            c.query(
                "SELECT customer_id, flag FROM reminder_stops \
                 WHERE connector = ? AND customer_id >= ? AND customer_id <= ? ORDER BY customer_id",
                &params![connector, first, last],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.json(1)?)))
            .collect()
        })
    }

    /// How many invoices and transactions are stored under each of `ids`
    /// (customers of `connector`): customer id → (invoices, transactions).
    /// Customers with neither are left out. A few grouped queries per 256 ids.
    pub fn record_counts(
        &self,
        connector: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, (u64, u64)>> {
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.read(|c| {
            for chunk in ids.chunks(IN_CHUNK) {
                let mut p: Vec<Value> = vec![Value::from(connector)];
                p.extend(chunk.iter().map(|id| Value::from(*id)));
                for (table, invoices) in [("invoices", true), ("transactions", false)] {
                    let rows = c.query_dyn(
                        &format!(
                            "SELECT customer_id, COUNT(*) FROM {table} \
                             WHERE connector = ? AND customer_id IN ({}) GROUP BY customer_id",
                            marks(chunk.len())
                        ),
                        &p,
                    )?;
                    for r in &rows {
                        let e = out.entry(r.text(0)?).or_default();
                        if invoices {
                            e.0 = r.u64(1)?;
                        } else {
                            e.1 = r.u64(1)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// For each of `ids` (customers of `connector`): the actor of the newest
    /// audit entry with `action` among its newest `window` entries, as
    /// [`Store::audit`] with that limit would find it. Customers without one
    /// are left out. One query per 256 ids.
    pub fn latest_actors(
        &self,
        connector: &str,
        ids: &[&str],
        action: &str,
        window: u64,
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.read(|c| {
            for chunk in ids.chunks(IN_CHUNK) {
                let mut p: Vec<Value> = vec![Value::from(connector)];
                p.extend(chunk.iter().map(|id| Value::from(*id)));
                p.push(Value::from(window));
                p.push(Value::from(action));
                let rows = c.query_dyn(
                    &format!(
                        "SELECT customer_id, actor FROM (SELECT customer_id, action, actor, \
                         ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY seq DESC) AS n \
                         FROM audit WHERE connector = ? AND customer_id IN ({})) t \
                         WHERE n <= ? AND action = ? ORDER BY customer_id, n",
                        marks(chunk.len())
                    ),
                    &p,
                )?;
                for r in &rows {
                    out.entry(r.text(0)?).or_insert(r.text(1)?);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Which of `ids` (customers of `connector`) are stored. One query per
    /// 256 ids.
    pub fn stored_customers(&self, connector: &str, ids: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.read(|c| {
            for chunk in ids.chunks(IN_CHUNK) {
                let mut p: Vec<Value> = vec![Value::from(connector)];
                p.extend(chunk.iter().map(|id| Value::from(*id)));
                for r in c.query_dyn(
                    &format!(
                        "SELECT id FROM customers WHERE connector = ? AND id IN ({})",
                        marks(chunk.len())
                    ),
                    &p,
                )? {
                    out.push(r.text(0)?);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
}
