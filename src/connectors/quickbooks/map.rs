//! Mapping of QuickBooks objects (Customer, Invoice, Payment, CreditMemo)
//! into the canonical model.
//!
//! Pure. A record that cannot be mapped becomes a [`Quarantined`] with its
//! reason and raw text; it never fails the page.

use std::collections::BTreeMap;

use chrono::{FixedOffset, NaiveDate};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::wire::{money, parse_time};
use crate::model::{
    Customer, Entity, Invoice, InvoiceStatus, Quarantined, Record, Timestamp, Transaction,
    TransactionKind,
};

/// Settings the mapping needs.
#[derive(Debug, Clone)]
pub struct MapSettings {
    pub offset: FixedOffset,
    pub home_currency: String,
}

#[derive(Deserialize)]
struct Ref {
    value: String,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "LastUpdatedTime")]
    last_updated: String,
}

#[derive(Deserialize)]
struct Email {
    #[serde(rename = "Address")]
    address: Option<String>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct QCustomer {
    Id: String,
    DisplayName: Option<String>,
    CompanyName: Option<String>,
    GivenName: Option<String>,
    FamilyName: Option<String>,
    FullyQualifiedName: Option<String>,
    PrimaryEmailAddr: Option<Email>,
    CurrencyRef: Option<Ref>,
    Balance: Option<Box<RawValue>>,
    BalanceWithJobs: Option<Box<RawValue>>,
    Active: Option<bool>,
    Job: Option<bool>,
    ParentRef: Option<Ref>,
    MetaData: Meta,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct QTxn {
    Id: String,
    DocNumber: Option<String>,
    TxnDate: Option<String>,
    DueDate: Option<String>,
    CustomerRef: Option<Ref>,
    CurrencyRef: Option<Ref>,
    TotalAmt: Option<Box<RawValue>>,
    Balance: Option<Box<RawValue>>,
    PrivateNote: Option<String>,
    MetaData: Meta,
}

/// The id and `LastUpdatedTime` of any object (for paging), or why not.
#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Head {
    Id: Option<String>,
    MetaData: Option<Meta>,
    status: Option<String>,
}

/// What paging needs from a raw object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectHead {
    pub id: String,
    pub updated: Timestamp,
    /// CDC marks deleted objects with `status: "Deleted"`.
    pub deleted: bool,
}

/// Reads the id and time of an object; `None` if even they are unreadable.
pub fn head(raw: &RawValue, offset: FixedOffset) -> Option<ObjectHead> {
    let h: Head = serde_json::from_str(raw.get()).ok()?;
    Some(ObjectHead {
        id: h.Id?,
        updated: parse_time(&h.MetaData?.last_updated, offset)?,
        deleted: h.status.is_some_and(|s| s.eq_ignore_ascii_case("deleted")),
    })
}

fn quarantine(entity: Entity, raw: &RawValue, reason: String) -> Quarantined {
    let id = serde_json::from_str::<Head>(raw.get())
        .ok()
        .and_then(|h| h.Id);
    let text = raw.get();
    let mut cut = text.len().min(4096);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Quarantined {
        entity,
        external_id: id,
        reason,
        raw: text[..cut].to_string(),
    }
}

fn date(field: &str, v: &Option<String>) -> Result<NaiveDate, String> {
    let s = v.as_deref().ok_or_else(|| format!("{field} is missing"))?;
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("{field} `{s}` is not a date"))
}

fn amount(field: &str, v: &Option<Box<RawValue>>) -> Result<Decimal, String> {
    match v {
        Some(raw) => money(raw).map_err(|e| format!("{field}: {e}")),
        None => Err(format!("{field} is missing")),
    }
}

fn updated(m: &Meta, s: &MapSettings) -> Result<Timestamp, String> {
    parse_time(&m.last_updated, s.offset).ok_or_else(|| {
        format!(
            "MetaData.LastUpdatedTime `{}` is not a time",
            m.last_updated
        )
    })
}

/// Maps a Customer. Sub-customers (jobs) keep their parent in
/// `custom.parent_id`; every customer gets `custom.job` and
/// `custom.fully_qualified_name` for rules.
pub fn customer(raw: &RawValue, s: &MapSettings) -> Result<Customer, Quarantined> {
    let q = |r: String| quarantine(Entity::Customers, raw, r);
    let c: QCustomer =
        serde_json::from_str(raw.get()).map_err(|e| q(format!("unreadable Customer: {e}")))?;
    let last_modified = updated(&c.MetaData, s).map_err(q)?;
    let balance = match &c.Balance {
        Some(b) => money(b).map_err(|e| q(format!("Balance: {e}")))?,
        None => Decimal::ZERO,
    };
    let name = c
        .DisplayName
        .clone()
        .or_else(|| c.CompanyName.clone())
        .or_else(|| match (&c.GivenName, &c.FamilyName) {
            (Some(g), Some(f)) => Some(format!("{g} {f}")),
            (Some(n), None) | (None, Some(n)) => Some(n.clone()),
            _ => None,
        })
        .ok_or_else(|| q("Customer has no DisplayName, CompanyName or person name".into()))?;
    let mut custom = BTreeMap::new();
    custom.insert("job".into(), c.Job.unwrap_or(false).to_string());
    if let Some(p) = &c.ParentRef {
        custom.insert("parent_id".into(), p.value.clone());
    }
    if let Some(fq) = c.FullyQualifiedName {
        custom.insert("fully_qualified_name".into(), fq);
    }
    if let Some(co) = c.CompanyName {
        custom.insert("company_name".into(), co);
    }
    if let Some(b) = &c.BalanceWithJobs {
        if let Ok(v) = money(b) {
            custom.insert("balance_with_jobs".into(), v.normalize().to_string());
        }
    }
    Ok(Customer {
        external_id: c.Id,
        name,
        email: c
            .PrimaryEmailAddr
            .and_then(|e| e.address)
            .filter(|a| !a.is_empty()),
        subsidiary: None,
        currency: Some(
            c.CurrencyRef
                .map(|r| r.value)
                .unwrap_or_else(|| s.home_currency.clone()),
        ),
        balance,
        // QuickBooks leaves `Active` out of sparse answers only; absent means active.
        inactive: !c.Active.unwrap_or(true),
        intercompany: false,
        last_modified,
        custom,
    })
}

/// Maps an Invoice, Payment or CreditMemo (`qbo_entity`) into a record.
pub fn record(raw: &RawValue, qbo_entity: &str, s: &MapSettings) -> Result<Record, Quarantined> {
    let entity = if qbo_entity == "Invoice" {
        Entity::Invoices
    } else {
        Entity::Transactions
    };
    let q = |r: String| quarantine(entity, raw, r);
    let t: QTxn =
        serde_json::from_str(raw.get()).map_err(|e| q(format!("unreadable {qbo_entity}: {e}")))?;
    let last_modified = updated(&t.MetaData, s).map_err(q)?;
    let customer_id = t
        .CustomerRef
        .as_ref()
        .map(|r| r.value.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| q(format!("{qbo_entity} has no CustomerRef")))?;
    let currency = t
        .CurrencyRef
        .as_ref()
        .map(|r| r.value.clone())
        .unwrap_or_else(|| s.home_currency.clone());
    let txn_date = date("TxnDate", &t.TxnDate).map_err(q)?;
    let total = amount("TotalAmt", &t.TotalAmt).map_err(q)?;
    Ok(match qbo_entity {
        "Invoice" => {
            let balance = amount("Balance", &t.Balance).map_err(q)?;
            let due_date = match &t.DueDate {
                Some(_) => date("DueDate", &t.DueDate).map_err(q)?,
                None => txn_date,
            };
            // QuickBooks voids an invoice by zeroing it and noting "Voided".
            let voided = total.is_zero()
                && balance.is_zero()
                && t.PrivateNote
                    .as_deref()
                    .is_some_and(|n| n.trim_start().to_ascii_lowercase().starts_with("voided"));
            let status = if voided {
                InvoiceStatus::Voided
            } else if balance > Decimal::ZERO {
                InvoiceStatus::Open
            } else {
                InvoiceStatus::Paid
            };
            Record::Invoice(Invoice {
                number: t.DocNumber.clone().unwrap_or_else(|| t.Id.clone()),
                external_id: t.Id,
                customer_id,
                issue_date: txn_date,
                due_date,
                currency,
                total,
                amount_due: balance,
                status,
                on_hold: false,
                last_modified,
            })
        }
        _ => Record::Transaction(Transaction {
            external_id: t.Id,
            kind: if qbo_entity == "Payment" {
                TransactionKind::Payment
            } else {
                TransactionKind::CreditNote
            },
            customer_id,
            date: txn_date,
            amount: total,
            currency,
            last_modified,
        }),
    })
}
