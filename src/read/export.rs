//! CSV exports for downstream systems: the open invoices (with their
//! customer's name and days overdue) and the list of included customers.
//! Produced chunk by chunk (keyset pages), so memory does not grow with the
//! data; every text cell is made spreadsheet-safe ([`csv_safe`]). Amounts
//! are plain decimals (a negative amount stays a number).

use chrono::NaiveDate;
use serde::Deserialize;

use super::{given, listed, ReadError};
use crate::export::csv_safe;
use crate::model::{InvoiceStatus, Record};
use crate::store::{RecordQuery, StatusFilter, Store, StoreError, StoredCustomer};

/// Rows per chunk.
pub const CHUNK: usize = 1000;

pub const OPEN_INVOICES_HEADER: [&str; 13] = [
    "connector",
    "customer_id",
    "customer_name",
    "invoice_id",
    "number",
    "issue_date",
    "due_date",
    "days_overdue",
    "currency",
    "total",
    "amount_due",
    "on_hold",
    "last_modified",
];

pub const CUSTOMERS_HEADER: [&str; 8] = [
    "connector",
    "customer_id",
    "name",
    "email",
    "subsidiary",
    "currency",
    "balance",
    "last_modified",
];

/// Filters of the open-invoices export.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenInvoicesParams {
    pub connector: Option<String>,
    pub customer: Option<String>,
    pub currency: Option<String>,
    pub due_from: Option<String>,
    pub due_to: Option<String>,
}

/// Filters of the customer export.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomersParams {
    pub connector: Option<String>,
}

fn writer() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::new())
}

fn finish(w: csv::Writer<Vec<u8>>) -> Vec<u8> {
    // Writing into a Vec cannot fail; csv only reports I/O errors.
    w.into_inner().expect("writing to a Vec")
}

/// The open invoices as CSV, chunk by chunk.
pub struct OpenInvoicesCsv {
    q: RecordQuery,
    connectors: Vec<String>,
    today: NaiveDate,
    header_done: bool,
    done: bool,
}

impl OpenInvoicesCsv {
    /// Checks the filters (nothing is read before they are good).
    pub fn new(
        p: &OpenInvoicesParams,
        connectors: &[String],
        today: NaiveDate,
    ) -> Result<OpenInvoicesCsv, ReadError> {
        let params = super::InvoiceParams {
            connector: p.connector.clone(),
            customer: p.customer.clone(),
            currency: p.currency.clone(),
            due_from: p.due_from.clone(),
            due_to: p.due_to.clone(),
            ..Default::default()
        };
        let mut q = super::invoice_query(&params, connectors, today)?;
        q.status = Some(StatusFilter::Is(InvoiceStatus::Open));
        q.limit = CHUNK;
        Ok(OpenInvoicesCsv {
            q,
            connectors: connectors.to_vec(),
            today,
            header_done: false,
            done: false,
        })
    }

    /// The next chunk of CSV bytes, or `None` at the end.
    pub fn next_chunk(&mut self, store: &Store) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.header_done {
            self.header_done = true;
            let mut w = writer();
            w.write_record(OPEN_INVOICES_HEADER)
                .expect("writing to a Vec");
            return Ok(Some(finish(w)));
        }
        if self.done {
            return Ok(None);
        }
        let (rows, next) = listed(store, &self.q, true, &self.connectors)?;
        self.done = next.is_none();
        self.q.after = next;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut w = writer();
        for r in &rows {
            let Record::Invoice(i) = &r.record else {
                continue;
            };
            let overdue = (self.today - i.due_date).num_days().max(0);
            w.write_record([
                csv_safe(&r.connector).as_ref(),
                &csv_safe(&i.customer_id),
                &csv_safe(&r.customer_name),
                &csv_safe(&i.external_id),
                &csv_safe(&i.number),
                &i.issue_date.to_string(),
                &i.due_date.to_string(),
                &overdue.to_string(),
                &csv_safe(&i.currency),
                &i.total.to_string(),
                &i.amount_due.to_string(),
                if i.on_hold { "true" } else { "false" },
                &i.last_modified.to_rfc3339(),
            ])
            .expect("writing to a Vec");
        }
        Ok(Some(finish(w)))
    }
}

/// The included customers as CSV, chunk by chunk.
pub struct CustomersCsv {
    connector: Option<String>,
    after: Option<(String, String)>,
    header_done: bool,
    done: bool,
}

impl CustomersCsv {
    pub fn new(p: &CustomersParams, connectors: &[String]) -> Result<CustomersCsv, ReadError> {
        let connector = given("connector", &p.connector)?.map(str::to_string);
        if let Some(c) = &connector {
            if !connectors.iter().any(|k| k == c) {
                return Err(ReadError::Invalid(format!(
                    "unknown connector `{c}`; configured connectors: {}",
                    connectors.join(", ")
                )));
            }
        }
        Ok(CustomersCsv {
            connector,
            after: None,
            header_done: false,
            done: false,
        })
    }

    pub fn next_chunk(&mut self, store: &Store) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.header_done {
            self.header_done = true;
            let mut w = writer();
            w.write_record(CUSTOMERS_HEADER).expect("writing to a Vec");
            return Ok(Some(finish(w)));
        }
        if self.done {
            return Ok(None);
        }
        let rows: Vec<StoredCustomer> =
            store.included_customers_page(self.connector.as_deref(), self.after.as_ref(), CHUNK)?;
        self.done = rows.len() < CHUNK;
        if let Some(l) = rows.last() {
            self.after = Some((l.connector.clone(), l.customer.external_id.clone()));
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let mut w = writer();
        for c in &rows {
            let k = &c.customer;
            w.write_record([
                csv_safe(&c.connector).as_ref(),
                &csv_safe(&k.external_id),
                &csv_safe(&k.name),
                &csv_safe(k.email.as_deref().unwrap_or("")),
                &csv_safe(k.subsidiary.as_deref().unwrap_or("")),
                &csv_safe(k.currency.as_deref().unwrap_or("")),
                &k.balance.to_string(),
                &k.last_modified.to_rfc3339(),
            ])
            .expect("writing to a Vec");
        }
        Ok(Some(finish(w)))
    }
}
