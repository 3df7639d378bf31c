//! Xero's JSON: the response envelope, the four record types the connector
//! reads (`Contact`, `Invoice`, `CreditNote`, `Payment`), MS-JSON dates,
//! money, and the mapping of the **receivables side** into the canonical
//! model. Pure: no I/O.
//!
//! Wire facts (`xero_accounting.yaml`, XeroAPI/Xero-OpenAPI):
//! - A list answer is `{"Id", "Status": "OK", "ProviderName", "DateTimeUTC",
//!   "pagination": {"page", "pageSize", "pageCount", "itemCount"},
//!   "<Records>": [...]}`.
//! - Dates and times are MS-JSON: `/Date(1573755038314)/` or
//!   `/Date(1546128000000+0000)/`. The number is milliseconds since the
//!   Unix epoch, in UTC; the optional `±hhmm` says which local offset the
//!   value was written in. An instant (`UpdatedDateUTC`) is the number
//!   itself; a calendar date (`Date`, `DueDate`) is the day of that instant
//!   at the given offset.
//! - Money is a JSON number (`760.00`); it is read from its text, never
//!   through a float.
//!
//! What is kept:
//! - Sales invoices (`Type == "ACCREC"`); `DELETED` and `VOIDED` ones are
//!   reported as deleted. Bills (`ACCPAY`) are skipped.
//! - Customer credit notes (`ACCRECCREDIT`) once `AUTHORISED` or `PAID`;
//!   `DELETED` / `VOIDED` are deleted, drafts skipped. Supplier credit notes
//!   are skipped.
//! - Customer payments (`ACCRECPAYMENT` on an `ACCREC` invoice); `DELETED`
//!   ones are deleted. Every other payment type is skipped.
//! - Every contact, with its status as `custom.contact_status`. A contact
//!   with status `GDPRREQUEST` keeps its id, status and times and **none of
//!   its personal fields** (name, e-mail, numbers, addresses, phones; the
//!   connector never reads addresses or phones for anyone).

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{FixedOffset, NaiveDate, TimeZone};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{
    Customer, Entity, Invoice, InvoiceStatus, Quarantined, Timestamp, Transaction, TransactionKind,
};

/// What the name of a contact with a GDPR request is stored as.
pub const GDPR_NAME: &str = "(personal data withheld: GDPR request)";

/// `custom.<name>` keys the connector fills.
pub const CUSTOM_STATUS: &str = "contact_status";

/// The most of a raw record kept with a quarantined one.
const RAW_LIMIT: usize = 4096;

/// The paging block of a list answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Pagination {
    pub page: u32,
    #[serde(rename = "pageSize")]
    pub page_size: u32,
    #[serde(rename = "pageCount")]
    pub page_count: u32,
    #[serde(rename = "itemCount")]
    pub item_count: u64,
}

/// One list answer: its records (unparsed, so one malformed record is
/// quarantined instead of failing the page) and its paging block.
#[derive(Debug)]
pub struct Envelope {
    pub pagination: Option<Pagination>,
    pub records: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "Status", default)]
    status: Option<String>,
    #[serde(default)]
    pagination: Option<Pagination>,
    #[serde(rename = "Contacts", default)]
    contacts: Option<Vec<Box<RawValue>>>,
    #[serde(rename = "Invoices", default)]
    invoices: Option<Vec<Box<RawValue>>>,
    #[serde(rename = "CreditNotes", default)]
    credit_notes: Option<Vec<Box<RawValue>>>,
    #[serde(rename = "Payments", default)]
    payments: Option<Vec<Box<RawValue>>>,
}

/// Reads a list answer whose records are under `key` (`Contacts`,
/// `Invoices`, `CreditNotes` or `Payments`).
pub fn parse_envelope(body: &[u8], key: &str) -> Result<Envelope, String> {
    let raw: RawEnvelope = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the {key} answer is not Xero's JSON envelope ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if let Some(s) = &raw.status {
        if s != "OK" {
            return Err(format!("the {key} answer has Status `{}`", clip(s, 40)));
        }
    }
    let records = match key {
        "Contacts" => raw.contacts,
        "Invoices" => raw.invoices,
        "CreditNotes" => raw.credit_notes,
        "Payments" => raw.payments,
        _ => None,
    }
    .ok_or_else(|| format!("the answer has no `{key}` list"))?;
    Ok(Envelope {
        pagination: raw.pagination,
        records,
    })
}

/// One tenant a connection can see (`GET /connections`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Connection {
    #[serde(rename = "tenantId")]
    pub tenant_id: String,
    #[serde(rename = "tenantName", default)]
    pub tenant_name: Option<String>,
    #[serde(rename = "tenantType", default)]
    pub tenant_type: Option<String>,
}

pub fn parse_connections(body: &[u8]) -> Result<Vec<Connection>, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "the /connections answer is not a list of connections ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })
}

// ---------------------------------------------------------------------------
// MS-JSON dates and money

/// Splits `/Date(<ms>[±hhmm])/` into milliseconds and offset.
fn parse_ms_json(s: &str) -> Result<(i64, FixedOffset), String> {
    let bad = || format!("`{}` is not an MS-JSON date (/Date(ms±hhmm)/)", clip(s, 60));
    let inner = s
        .strip_prefix("/Date(")
        .and_then(|r| r.strip_suffix(")/"))
        .ok_or_else(bad)?;
    // The number may be negative; an offset sign comes after its digits.
    let digits_from = usize::from(inner.starts_with('-'));
    let split = inner[digits_from..]
        .find(['+', '-'])
        .map(|i| i + digits_from)
        .unwrap_or(inner.len());
    let (num, off) = inner.split_at(split);
    if num.len() == digits_from || !num[digits_from..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms: i64 = num.parse().map_err(|_| bad())?;
    let offset = if off.is_empty() {
        FixedOffset::east_opt(0).expect("zero offset")
    } else {
        let (sign, hhmm) = off.split_at(1);
        if hhmm.len() != 4 || !hhmm.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let h: i32 = hhmm[..2].parse().map_err(|_| bad())?;
        let m: i32 = hhmm[2..].parse().map_err(|_| bad())?;
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let secs = (h * 3600 + m * 60) * if sign == "-" { -1 } else { 1 };
        FixedOffset::east_opt(secs).ok_or_else(bad)?
    };
    Ok((ms, offset))
}

/// An MS-JSON instant (`UpdatedDateUTC`), exactly, in UTC.
pub fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    let (ms, _) = parse_ms_json(s)?;
    chrono::DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| format!("`{}` is out of range", clip(s, 60)))
}

/// An MS-JSON calendar date (`Date`, `DueDate`): the day of the instant at
/// the offset it was written with.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let (ms, offset) = parse_ms_json(s)?;
    let utc = chrono::DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| format!("`{}` is out of range", clip(s, 60)))?;
    Ok(offset.from_utc_datetime(&utc.naive_utc()).date_naive())
}

/// Money from its JSON text: a number (`760.00`, `1.5E+3`) or a string
/// holding one (`"50.00"`, as some Xero fields are written). `null` is
/// `None`.
fn parse_money(raw: &RawValue) -> Result<Option<Decimal>, String> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    let owned;
    let number = if text.starts_with('"') {
        owned =
            serde_json::from_str::<String>(text).map_err(|_| "unreadable string".to_string())?;
        owned.trim()
    } else {
        text
    };
    Decimal::from_str(number)
        .or_else(|_| Decimal::from_scientific(number))
        .map(Some)
        .map_err(|_| format!("`{}` is not a decimal number", clip(number, 40)))
}

fn money(field: &str, v: &Option<Box<RawValue>>) -> Result<Option<Decimal>, String> {
    match v {
        None => Ok(None),
        Some(raw) => parse_money(raw).map_err(|e| format!("{field}: {e}")),
    }
}

fn required_money(field: &str, v: &Option<Box<RawValue>>) -> Result<Decimal, String> {
    money(field, v)?.ok_or_else(|| format!("{field} missing"))
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

// ---------------------------------------------------------------------------
// Records

/// A reference to a contact inside a document.
#[derive(Debug, Clone, Deserialize)]
pub struct ContactRef {
    #[serde(rename = "ContactID", default)]
    pub contact_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireContact {
    #[serde(rename = "ContactID", default)]
    pub contact_id: Option<String>,
    #[serde(rename = "ContactStatus", default)]
    pub status: Option<String>,
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    #[serde(rename = "EmailAddress", default)]
    pub email: Option<String>,
    #[serde(rename = "AccountNumber", default)]
    pub account_number: Option<String>,
    #[serde(rename = "ContactNumber", default)]
    pub contact_number: Option<String>,
    #[serde(rename = "DefaultCurrency", default)]
    pub default_currency: Option<String>,
    #[serde(rename = "IsCustomer", default)]
    pub is_customer: Option<bool>,
    #[serde(rename = "IsSupplier", default)]
    pub is_supplier: Option<bool>,
    #[serde(rename = "Balances", default)]
    pub balances: Option<Balances>,
    #[serde(rename = "UpdatedDateUTC", default)]
    pub updated: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Balances {
    #[serde(rename = "AccountsReceivable", default)]
    pub accounts_receivable: Option<Balance>,
}

#[derive(Debug, Deserialize)]
pub struct Balance {
    #[serde(rename = "Outstanding", default)]
    pub outstanding: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
pub struct WireInvoice {
    #[serde(rename = "Type", default)]
    pub kind: Option<String>,
    #[serde(rename = "InvoiceID", default)]
    pub invoice_id: Option<String>,
    #[serde(rename = "InvoiceNumber", default)]
    pub number: Option<String>,
    #[serde(rename = "Contact", default)]
    pub contact: Option<ContactRef>,
    #[serde(rename = "Date", default)]
    pub date: Option<String>,
    #[serde(rename = "DueDate", default)]
    pub due_date: Option<String>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "CurrencyCode", default)]
    pub currency: Option<String>,
    #[serde(rename = "Total", default)]
    pub total: Option<Box<RawValue>>,
    #[serde(rename = "AmountDue", default)]
    pub amount_due: Option<Box<RawValue>>,
    #[serde(rename = "UpdatedDateUTC", default)]
    pub updated: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireCreditNote {
    #[serde(rename = "Type", default)]
    pub kind: Option<String>,
    #[serde(rename = "CreditNoteID", default)]
    pub credit_note_id: Option<String>,
    #[serde(rename = "Contact", default)]
    pub contact: Option<ContactRef>,
    #[serde(rename = "Date", default)]
    pub date: Option<String>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "CurrencyCode", default)]
    pub currency: Option<String>,
    #[serde(rename = "Total", default)]
    pub total: Option<Box<RawValue>>,
    #[serde(rename = "UpdatedDateUTC", default)]
    pub updated: Option<String>,
}

/// The invoice a payment pays, as a payment carries it.
#[derive(Debug, Deserialize)]
pub struct PaidInvoice {
    #[serde(rename = "Type", default)]
    pub kind: Option<String>,
    #[serde(rename = "Contact", default)]
    pub contact: Option<ContactRef>,
    #[serde(rename = "CurrencyCode", default)]
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WirePayment {
    #[serde(rename = "PaymentID", default)]
    pub payment_id: Option<String>,
    #[serde(rename = "PaymentType", default)]
    pub payment_type: Option<String>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "Date", default)]
    pub date: Option<String>,
    #[serde(rename = "Amount", default)]
    pub amount: Option<Box<RawValue>>,
    #[serde(rename = "Invoice", default)]
    pub invoice: Option<PaidInvoice>,
    #[serde(rename = "UpdatedDateUTC", default)]
    pub updated: Option<String>,
}

/// What the page mapper needs of every record type.
pub trait WireRecord: DeserializeOwned {
    const ENTITY: Entity;
    /// Quarantined raw text is reduced to the id, status and time (contacts:
    /// never keep personal fields, whatever went wrong).
    const REDACT_RAW: bool = false;
    fn id(&self) -> Option<&str>;
    fn updated(&self) -> Option<&str>;
}

impl WireRecord for WireContact {
    const ENTITY: Entity = Entity::Customers;
    const REDACT_RAW: bool = true;
    fn id(&self) -> Option<&str> {
        self.contact_id.as_deref()
    }
    fn updated(&self) -> Option<&str> {
        self.updated.as_deref()
    }
}

impl WireRecord for WireInvoice {
    const ENTITY: Entity = Entity::Invoices;
    fn id(&self) -> Option<&str> {
        self.invoice_id.as_deref()
    }
    fn updated(&self) -> Option<&str> {
        self.updated.as_deref()
    }
}

impl WireRecord for WireCreditNote {
    const ENTITY: Entity = Entity::Transactions;
    fn id(&self) -> Option<&str> {
        self.credit_note_id.as_deref()
    }
    fn updated(&self) -> Option<&str> {
        self.updated.as_deref()
    }
}

impl WireRecord for WirePayment {
    const ENTITY: Entity = Entity::Transactions;
    fn id(&self) -> Option<&str> {
        self.payment_id.as_deref()
    }
    fn updated(&self) -> Option<&str> {
        self.updated.as_deref()
    }
}

/// What one record becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped<T> {
    Item(T),
    /// Deleted or voided upstream: removed locally.
    Deleted(String),
    /// Not receivables (a bill, a supplier credit note or payment) or not
    /// yet effective (a draft credit note): never stored.
    Skipped,
}

fn required_id(id: Option<&str>, what: &str) -> Result<String, String> {
    match id.map(str::trim) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(format!("{what} missing")),
    }
}

fn contact_of(c: &Option<ContactRef>, what: &str) -> Result<String, String> {
    required_id(
        c.as_ref().and_then(|c| c.contact_id.as_deref()),
        &format!("{what} Contact.ContactID"),
    )
}

fn updated_of(s: &Option<String>) -> Result<Timestamp, String> {
    let s = s.as_deref().ok_or("UpdatedDateUTC missing")?;
    parse_timestamp(s).map_err(|e| format!("UpdatedDateUTC: {e}"))
}

fn date_of(field: &str, s: &Option<String>) -> Result<Option<NaiveDate>, String> {
    s.as_deref()
        .map(|s| parse_date(s).map_err(|e| format!("{field}: {e}")))
        .transpose()
}

fn currency_of(s: &Option<String>, field: &str) -> Result<String, String> {
    match s.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => Ok(c.to_string()),
        _ => Err(format!("{field} missing")),
    }
}

/// A contact → a customer. GDPR-requested contacts lose every personal field.
pub fn map_contact(c: WireContact) -> Result<Mapped<Customer>, String> {
    let id = required_id(c.contact_id.as_deref(), "ContactID")?;
    let status = c.status.as_deref().ok_or("ContactStatus missing")?;
    if !matches!(status, "ACTIVE" | "ARCHIVED" | "GDPRREQUEST") {
        return Err(format!("unknown ContactStatus `{}`", clip(status, 30)));
    }
    let last_modified = updated_of(&c.updated)?;
    let mut custom = BTreeMap::new();
    custom.insert(CUSTOM_STATUS.to_string(), status.to_string());
    if let Some(b) = c.is_customer {
        custom.insert("is_customer".into(), b.to_string());
    }
    if let Some(b) = c.is_supplier {
        custom.insert("is_supplier".into(), b.to_string());
    }
    if status == "GDPRREQUEST" {
        return Ok(Mapped::Item(Customer {
            external_id: id,
            name: GDPR_NAME.into(),
            email: None,
            subsidiary: None,
            currency: None,
            balance: Decimal::ZERO,
            inactive: false,
            intercompany: false,
            last_modified,
            custom,
        }));
    }
    let balance = match c
        .balances
        .as_ref()
        .and_then(|b| b.accounts_receivable.as_ref())
    {
        Some(ar) => money("Balances.AccountsReceivable.Outstanding", &ar.outstanding)?
            .unwrap_or(Decimal::ZERO),
        None => Decimal::ZERO,
    };
    let nonempty = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if let Some(n) = nonempty(c.account_number) {
        custom.insert("account_number".into(), n);
    }
    if let Some(n) = nonempty(c.contact_number) {
        custom.insert("contact_number".into(), n);
    }
    Ok(Mapped::Item(Customer {
        external_id: id,
        name: c.name.unwrap_or_default().trim().to_string(),
        email: nonempty(c.email),
        subsidiary: None,
        currency: nonempty(c.default_currency),
        balance,
        inactive: status == "ARCHIVED",
        intercompany: false,
        last_modified,
        custom,
    }))
}

/// A sales invoice → an invoice; bills are skipped.
pub fn map_invoice(i: WireInvoice) -> Result<Mapped<crate::model::Record>, String> {
    if i.kind.as_deref() != Some("ACCREC") {
        if i.kind.is_none() {
            return Err("Type missing".into());
        }
        return Ok(Mapped::Skipped);
    }
    let id = required_id(i.invoice_id.as_deref(), "InvoiceID")?;
    let status = match i.status.as_deref() {
        Some("DELETED" | "VOIDED") => return Ok(Mapped::Deleted(id)),
        Some("DRAFT" | "SUBMITTED") => InvoiceStatus::Draft,
        Some("AUTHORISED") => InvoiceStatus::Open,
        Some("PAID") => InvoiceStatus::Paid,
        Some(other) => return Err(format!("unknown Status `{}`", clip(other, 30))),
        None => return Err("Status missing".into()),
    };
    let customer_id = contact_of(&i.contact, "invoice")?;
    let last_modified = updated_of(&i.updated)?;
    // Drafts may have no date yet; every approved invoice has one.
    let issue_date = match (date_of("Date", &i.date)?, status) {
        (Some(d), _) => d,
        (None, InvoiceStatus::Draft) => last_modified.date_naive(),
        (None, _) => return Err("Date missing".into()),
    };
    let due_date = date_of("DueDate", &i.due_date)?.unwrap_or(issue_date);
    Ok(Mapped::Item(crate::model::Record::Invoice(Invoice {
        external_id: id,
        number: i.number.unwrap_or_default(),
        customer_id,
        issue_date,
        due_date,
        currency: currency_of(&i.currency, "CurrencyCode")?,
        total: required_money("Total", &i.total)?,
        amount_due: required_money("AmountDue", &i.amount_due)?,
        status,
        on_hold: false,
        last_modified,
    })))
}

/// A customer credit note → a credit-note transaction.
pub fn map_credit_note(c: WireCreditNote) -> Result<Mapped<crate::model::Record>, String> {
    if c.kind.as_deref() != Some("ACCRECCREDIT") {
        if c.kind.is_none() {
            return Err("Type missing".into());
        }
        return Ok(Mapped::Skipped);
    }
    let id = required_id(c.credit_note_id.as_deref(), "CreditNoteID")?;
    match c.status.as_deref() {
        Some("DELETED" | "VOIDED") => return Ok(Mapped::Deleted(id)),
        Some("DRAFT" | "SUBMITTED") => return Ok(Mapped::Skipped),
        Some("AUTHORISED" | "PAID") => {}
        Some(other) => return Err(format!("unknown Status `{}`", clip(other, 30))),
        None => return Err("Status missing".into()),
    }
    Ok(Mapped::Item(crate::model::Record::Transaction(
        Transaction {
            external_id: id,
            kind: TransactionKind::CreditNote,
            customer_id: contact_of(&c.contact, "credit note")?,
            date: date_of("Date", &c.date)?.ok_or("Date missing")?,
            amount: required_money("Total", &c.total)?,
            currency: currency_of(&c.currency, "CurrencyCode")?,
            last_modified: updated_of(&c.updated)?,
        },
    )))
}

/// A customer payment (on a sales invoice) → a payment transaction.
pub fn map_payment(p: WirePayment) -> Result<Mapped<crate::model::Record>, String> {
    match p.payment_type.as_deref() {
        Some("ACCRECPAYMENT") => {}
        Some(_) => return Ok(Mapped::Skipped),
        None => return Err("PaymentType missing".into()),
    }
    let invoice = p.invoice.as_ref().ok_or("Invoice missing")?;
    match invoice.kind.as_deref() {
        Some("ACCREC") | None => {}
        Some(_) => return Ok(Mapped::Skipped),
    }
    let id = required_id(p.payment_id.as_deref(), "PaymentID")?;
    match p.status.as_deref() {
        Some("DELETED") => return Ok(Mapped::Deleted(id)),
        Some("AUTHORISED") => {}
        Some(other) => return Err(format!("unknown Status `{}`", clip(other, 30))),
        None => return Err("Status missing".into()),
    }
    Ok(Mapped::Item(crate::model::Record::Transaction(
        Transaction {
            external_id: id,
            kind: TransactionKind::Payment,
            customer_id: contact_of(&invoice.contact, "payment's Invoice")?,
            date: date_of("Date", &p.date)?.ok_or("Date missing")?,
            amount: required_money("Amount", &p.amount)?,
            currency: currency_of(&invoice.currency, "Invoice.CurrencyCode")?,
            last_modified: updated_of(&p.updated)?,
        },
    )))
}

/// A page of records, mapped.
#[derive(Debug)]
pub struct MappedPage<T> {
    pub items: Vec<T>,
    pub deleted: Vec<String>,
    pub quarantined: Vec<Quarantined>,
    /// Records that are not receivables (or not yet effective) and were left out.
    pub skipped: usize,
    /// The latest `UpdatedDateUTC` among all records read, whatever became
    /// of them: where the next incremental read starts.
    pub max_updated: Option<Timestamp>,
    /// Whether the records came in `UpdatedDateUTC` order, as asked.
    pub in_order: bool,
}

impl<T> Default for MappedPage<T> {
    fn default() -> Self {
        MappedPage {
            items: Vec::new(),
            deleted: Vec::new(),
            quarantined: Vec::new(),
            skipped: 0,
            max_updated: None,
            in_order: true,
        }
    }
}

/// What can be read of a record that does not parse.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "UpdatedDateUTC", default)]
    updated: Option<serde_json::Value>,
    #[serde(rename = "ContactStatus", default)]
    status: Option<serde_json::Value>,
    #[serde(rename = "ContactID", default)]
    contact_id: Option<serde_json::Value>,
    #[serde(rename = "InvoiceID", default)]
    invoice_id: Option<serde_json::Value>,
    #[serde(rename = "CreditNoteID", default)]
    credit_note_id: Option<serde_json::Value>,
    #[serde(rename = "PaymentID", default)]
    payment_id: Option<serde_json::Value>,
}

impl Probe {
    fn id(&self) -> Option<String> {
        [
            &self.contact_id,
            &self.invoice_id,
            &self.credit_note_id,
            &self.payment_id,
        ]
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().map(str::to_string))
    }
    fn updated(&self) -> Option<&str> {
        self.updated.as_ref().and_then(|v| v.as_str())
    }
}

/// The raw text kept with a quarantined record.
fn raw_text<W: WireRecord>(raw: &RawValue) -> String {
    if !W::REDACT_RAW {
        let t = raw.get();
        let mut end = t.len().min(RAW_LIMIT);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        return t[..end].to_string();
    }
    // Only the identifying fields of a contact, never its personal ones.
    match serde_json::from_str::<Probe>(raw.get()) {
        Ok(p) => {
            let mut o = serde_json::Map::new();
            for (k, v) in [
                ("ContactID", p.contact_id),
                ("ContactStatus", p.status),
                ("UpdatedDateUTC", p.updated),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            serde_json::Value::Object(o).to_string()
        }
        Err(_) => "(withheld: a contact record may hold personal data)".into(),
    }
}

/// Maps every record of a page; a record that cannot be read or mapped is
/// quarantined with its reason and the rest go on.
pub fn map_page<W: WireRecord, T>(
    records: &[Box<RawValue>],
    map: impl Fn(W) -> Result<Mapped<T>, String>,
) -> MappedPage<T> {
    let mut out = MappedPage::default();
    let mut note = |t: Option<Timestamp>| {
        if let Some(t) = t {
            if out.max_updated.is_some_and(|m| t < m) {
                out.in_order = false;
            }
            out.max_updated = Some(out.max_updated.map_or(t, |m| m.max(t)));
        }
    };
    let mut results = Vec::with_capacity(records.len());
    for raw in records {
        match serde_json::from_str::<W>(raw.get()) {
            Ok(w) => {
                note(w.updated().and_then(|u| parse_timestamp(u).ok()));
                let id = w.id().map(str::to_string);
                results.push((map(w), id, raw));
            }
            Err(e) => {
                let probe = serde_json::from_str::<Probe>(raw.get()).ok();
                note(
                    probe
                        .as_ref()
                        .and_then(|p| p.updated())
                        .and_then(|u| parse_timestamp(u).ok()),
                );
                // serde may quote a value; a contact's could be personal.
                let reason = if W::REDACT_RAW {
                    format!(
                        "unreadable record ({:?} error at column {})",
                        e.classify(),
                        e.column()
                    )
                } else {
                    format!("unreadable record: {e}")
                };
                results.push((Err(reason), probe.and_then(|p| p.id()), raw));
            }
        }
    }
    for (result, id, raw) in results {
        match result {
            Ok(Mapped::Item(t)) => out.items.push(t),
            Ok(Mapped::Deleted(id)) => out.deleted.push(id),
            Ok(Mapped::Skipped) => out.skipped += 1,
            Err(reason) => out.quarantined.push(Quarantined {
                entity: W::ENTITY,
                external_id: id,
                reason,
                raw: raw_text::<W>(raw),
            }),
        }
    }
    out
}
