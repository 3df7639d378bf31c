//! Rows ↔ model types: the column lists the queries select and the
//! conversions both ways. Enums are stored as their snake_case names.

use serde::{de::DeserializeOwned, Serialize};

use super::sql::{json, Row, Value};
use super::{AuditEntry, QuarantineEntry, Result, StoreError, StoredCustomer};
use crate::model::{
    Classification, Customer, CustomerKey, Invoice, InvoiceStatus, ManualDecision, Quarantined,
    Record, Timestamp, Transaction, TransactionKind,
};

pub(crate) const CUSTOMER_COLS: &str =
    "connector, id, name, email, subsidiary, currency, balance, \
     inactive, intercompany, last_modified, custom, excluded, exclusion_source, exclusion_reason, \
     classified_at, first_seen";

pub(crate) const INVOICE_COLS: &str = "id, customer_id, number, issue_date, due_date, currency, \
     total, amount_due, status, on_hold, last_modified";

pub(crate) const TRANSACTION_COLS: &str =
    "id, customer_id, kind, date, amount, currency, last_modified";

pub(crate) const AUDIT_COLS: &str =
    "seq, at, connector, customer_id, action, actor, reason, from_class, to_class";

/// The snake_case name of a unit enum variant.
pub(crate) fn enum_text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => panic!("not a unit enum: {other:?}"),
    }
}

pub(crate) fn enum_parse<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| {
        StoreError::Corrupt {
            key: format!("`{s}`"),
            message: e.to_string(),
        }
    })
}

/// The stored name of an invoice status (as [`enum_text`] gives it,
/// without going through JSON: it runs for every record written).
fn status_text(s: InvoiceStatus) -> &'static str {
    match s {
        InvoiceStatus::Draft => "draft",
        InvoiceStatus::Open => "open",
        InvoiceStatus::Paid => "paid",
        InvoiceStatus::Voided => "voided",
    }
}

fn kind_text(k: TransactionKind) -> &'static str {
    match k {
        TransactionKind::Payment => "payment",
        TransactionKind::CreditNote => "credit_note",
    }
}

pub(crate) fn customer_values(sc: &StoredCustomer) -> Vec<Value> {
    let c = &sc.customer;
    let cl = &sc.classification;
    vec![
        Value::from(&sc.connector),
        Value::from(&c.external_id),
        Value::from(&c.name),
        Value::from(c.email.clone()),
        Value::from(c.subsidiary.clone()),
        Value::from(c.currency.clone()),
        Value::Dec(c.balance),
        Value::Bool(c.inactive),
        Value::Bool(c.intercompany),
        Value::Time(c.last_modified),
        json(&c.custom),
        Value::Bool(cl.excluded),
        Value::from(cl.source.map(|s| s.as_str().to_string())),
        Value::from(&cl.reason),
        Value::Time(sc.classified_at),
        Value::Time(sc.first_seen),
    ]
}

pub(crate) fn customer_from_row(r: &Row) -> Result<StoredCustomer> {
    Ok(StoredCustomer {
        connector: r.text(0)?,
        customer: Customer {
            external_id: r.text(1)?,
            name: r.text(2)?,
            email: r.opt_text(3)?,
            subsidiary: r.opt_text(4)?,
            currency: r.opt_text(5)?,
            balance: r.dec(6)?,
            inactive: r.bool(7)?,
            intercompany: r.bool(8)?,
            last_modified: r.time(9)?,
            custom: r.json(10)?,
        },
        classification: Classification {
            excluded: r.bool(11)?,
            source: r.opt_text(12)?.map(|s| enum_parse(&s)).transpose()?,
            reason: r.text(13)?,
        },
        classified_at: r.time(14)?,
        first_seen: r.time(15)?,
    })
}

/// The columns of an invoice row, `changed_at` (when the store last
/// changed it) last.
pub(crate) fn invoice_values(conn: &str, i: &Invoice, changed_at: Timestamp) -> Vec<Value> {
    vec![
        Value::from(conn),
        Value::from(&i.external_id),
        Value::from(&i.customer_id),
        Value::from(&i.number),
        Value::Date(i.issue_date),
        Value::Date(i.due_date),
        Value::from(&i.currency),
        Value::Dec(i.total),
        Value::Dec(i.amount_due),
        Value::from(status_text(i.status)),
        Value::Bool(i.on_hold),
        Value::Time(i.last_modified),
        Value::Time(changed_at),
    ]
}

/// The columns of a transaction row, `changed_at` last.
pub(crate) fn transaction_values(conn: &str, t: &Transaction, changed_at: Timestamp) -> Vec<Value> {
    vec![
        Value::from(conn),
        Value::from(&t.external_id),
        Value::from(&t.customer_id),
        Value::from(kind_text(t.kind)),
        Value::Date(t.date),
        Value::Dec(t.amount),
        Value::from(&t.currency),
        Value::Time(t.last_modified),
        Value::Time(changed_at),
    ]
}

/// A record from `INVOICE_COLS` / `TRANSACTION_COLS` starting at column `at`.
pub(crate) fn record_from_row(invoice: bool, r: &Row, at: usize) -> Result<Record> {
    let c = |i: usize| at + i;
    Ok(if invoice {
        Record::Invoice(Invoice {
            external_id: r.text(c(0))?,
            customer_id: r.text(c(1))?,
            number: r.text(c(2))?,
            issue_date: r.date(c(3))?,
            due_date: r.date(c(4))?,
            currency: r.text(c(5))?,
            total: r.dec(c(6))?,
            amount_due: r.dec(c(7))?,
            status: enum_parse(&r.text(c(8))?)?,
            on_hold: r.bool(c(9))?,
            last_modified: r.time(c(10))?,
        })
    } else {
        Record::Transaction(Transaction {
            external_id: r.text(c(0))?,
            customer_id: r.text(c(1))?,
            kind: enum_parse(&r.text(c(2))?)?,
            date: r.date(c(3))?,
            amount: r.dec(c(4))?,
            currency: r.text(c(5))?,
            last_modified: r.time(c(6))?,
        })
    })
}

/// `action, actor, reason, at` from column `at`.
pub(crate) fn decision_from_row(r: &Row, at: usize) -> Result<ManualDecision> {
    Ok(ManualDecision {
        action: enum_parse(&r.text(at)?)?,
        actor: r.text(at + 1)?,
        reason: r.text(at + 2)?,
        at: r.time(at + 3)?,
    })
}

pub(crate) fn audit_from_row(r: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.u64(0)?,
        at: r.time(1)?,
        customer: CustomerKey::new(r.text(2)?, r.text(3)?),
        action: r.text(4)?,
        actor: r.text(5)?,
        reason: r.text(6)?,
        from: r.opt_json(7)?,
        to: r.opt_json(8)?,
    })
}

pub(crate) fn quarantine_from_row(r: &Row) -> Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        connector: r.text(0)?,
        at: r.time(1)?,
        record: Quarantined {
            entity: enum_parse(&r.text(2)?)?,
            external_id: r.opt_text(3)?,
            reason: r.text(4)?,
            raw: r.text(5)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_enum_names_are_their_serde_names() {
        for s in [
            InvoiceStatus::Draft,
            InvoiceStatus::Open,
            InvoiceStatus::Paid,
            InvoiceStatus::Voided,
        ] {
            assert_eq!(status_text(s), enum_text(&s));
        }
        for k in [TransactionKind::Payment, TransactionKind::CreditNote] {
            assert_eq!(kind_text(k), enum_text(&k));
        }
    }
}
