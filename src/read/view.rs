//! The JSON form of what downstream systems read: customers, invoices,
//! transactions and change events. Amounts are decimal strings, dates
//! `YYYY-MM-DD`, instants RFC 3339 in UTC. The same forms serve the list
//! endpoints, the change feed and the webhooks.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{InvoiceStatus, Record, Timestamp, TransactionKind};
use crate::store::{EventData, EventType, FeedEvent, ListedRecord, StoredCustomer};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerView {
    pub connector: String,
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub subsidiary: Option<String>,
    pub currency: Option<String>,
    pub balance: Decimal,
    /// Upstream last-modified time.
    pub last_modified: Timestamp,
    /// The ERP's pass-through fields.
    pub custom: BTreeMap<String, String>,
}

impl CustomerView {
    pub fn of(c: &StoredCustomer) -> CustomerView {
        let k = &c.customer;
        CustomerView {
            connector: c.connector.clone(),
            id: k.external_id.clone(),
            name: k.name.clone(),
            email: k.email.clone(),
            subsidiary: k.subsidiary.clone(),
            currency: k.currency.clone(),
            balance: k.balance,
            last_modified: k.last_modified,
            custom: k.custom.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceView {
    pub connector: String,
    pub id: String,
    pub customer_id: String,
    pub number: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub currency: String,
    pub total: Decimal,
    pub amount_due: Decimal,
    pub status: InvoiceStatus,
    /// Open and due before today (UTC) at the time of reading.
    pub overdue: bool,
    pub on_hold: bool,
    /// Upstream last-modified time (the record's version).
    pub last_modified: Timestamp,
    /// When erpsync last changed it (what `modified_since` compares).
    pub changed_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransactionView {
    pub connector: String,
    pub id: String,
    pub customer_id: String,
    pub kind: TransactionKind,
    pub date: NaiveDate,
    pub amount: Decimal,
    pub currency: String,
    pub last_modified: Timestamp,
    pub changed_at: Timestamp,
}

/// An invoice or a transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RecordView {
    Invoice(InvoiceView),
    Transaction(TransactionView),
}

impl RecordView {
    pub fn of(connector: &str, r: &Record, changed_at: Timestamp, today: NaiveDate) -> RecordView {
        match r {
            Record::Invoice(i) => RecordView::Invoice(InvoiceView {
                connector: connector.to_string(),
                id: i.external_id.clone(),
                customer_id: i.customer_id.clone(),
                number: i.number.clone(),
                issue_date: i.issue_date,
                due_date: i.due_date,
                currency: i.currency.clone(),
                total: i.total,
                amount_due: i.amount_due,
                status: i.status,
                overdue: i.status == InvoiceStatus::Open && i.due_date < today,
                on_hold: i.on_hold,
                last_modified: i.last_modified,
                changed_at,
            }),
            Record::Transaction(t) => RecordView::Transaction(TransactionView {
                connector: connector.to_string(),
                id: t.external_id.clone(),
                customer_id: t.customer_id.clone(),
                kind: t.kind,
                date: t.date,
                amount: t.amount,
                currency: t.currency.clone(),
                last_modified: t.last_modified,
                changed_at,
            }),
        }
    }

    pub fn listed(l: &ListedRecord, today: NaiveDate) -> RecordView {
        RecordView::of(&l.connector, &l.record, l.changed_at, today)
    }
}

/// What an event carries: the entity's current form, the stored document
/// (`customer.purged`, `resync.finished`), or nothing.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EventDataView {
    Customer(CustomerView),
    Record(RecordView),
    Json(Box<RawValue>),
    None(Option<()>),
}

/// One change event as served by `/api/v1/changes` and the webhooks.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// The event's position in the feed (monotonic).
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the change was committed.
    pub at: Timestamp,
    pub connector: String,
    /// The customer, invoice or transaction id (the job id for
    /// `resync.finished`).
    pub entity_id: String,
    /// The entity's current upstream version (last-modified time), when it
    /// is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Timestamp>,
    pub data: EventDataView,
}

impl EventView {
    pub fn of(e: FeedEvent, today: NaiveDate) -> EventView {
        let (version, data) = match &e.data {
            EventData::None => (None, EventDataView::None(None)),
            EventData::Customer(c) => (
                Some(c.customer.last_modified),
                EventDataView::Customer(CustomerView::of(c)),
            ),
            EventData::Record(r, changed) => (
                Some(r.last_modified()),
                EventDataView::Record(RecordView::of(&e.connector, r, *changed, today)),
            ),
            EventData::Json(j) => match RawValue::from_string(j.clone()) {
                Ok(raw) => (None, EventDataView::Json(raw)),
                Err(_) => (None, EventDataView::None(None)),
            },
        };
        EventView {
            seq: e.seq,
            kind: e.kind,
            at: e.at,
            connector: e.connector,
            entity_id: e.entity_id,
            version,
            data,
        }
    }
}

/// Today's date in UTC (what `overdue` is relative to).
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}
