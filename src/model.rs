//! The canonical data model every connector maps its ERP's records into.
//!
//! These types are plain data: no I/O, no store knowledge. Money is always
//! [`Decimal`], timestamps are always UTC ([`Timestamp`]) and dates are calendar
//! dates without a zone. Connectors fill these in; ingest, rules, the store and
//! the HTTP port read them.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A UTC instant. Serialised as RFC 3339 with an explicit `Z` offset.
pub type Timestamp = DateTime<Utc>;

/// Which kind of record a page, a cursor or a counter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Customers,
    Invoices,
    Transactions,
}

impl Entity {
    pub const ALL: [Entity; 3] = [Entity::Customers, Entity::Invoices, Entity::Transactions];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Customers => "customers",
            Entity::Invoices => "invoices",
            Entity::Transactions => "transactions",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies a customer across the whole daemon: the connector it comes from
/// and its id in that ERP. Written `connector:external_id` in the CLI and API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CustomerKey {
    pub connector: String,
    pub external_id: String,
}

impl CustomerKey {
    pub fn new(connector: impl Into<String>, external_id: impl Into<String>) -> Self {
        Self {
            connector: connector.into(),
            external_id: external_id.into(),
        }
    }

    /// Parses `connector:external_id` (the external id may itself contain `:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((c, id)) if !c.is_empty() && !id.is_empty() => Ok(Self::new(c, id)),
            _ => Err(format!(
                "`{s}` is not a customer reference; expected CONNECTOR:EXTERNAL_ID, e.g. demo:C00042"
            )),
        }
    }
}

impl fmt::Display for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.connector, self.external_id)
    }
}

/// A customer as the ERP describes it. The connector id is not part of the
/// record; the store keys it by `(connector, external_id)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub external_id: String,
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub subsidiary: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    /// Accounts-receivable balance as the ERP reports it (negative: the
    /// business owes the customer).
    #[serde(default)]
    pub balance: Decimal,
    /// The ERP marks the customer inactive / archived.
    #[serde(default)]
    pub inactive: bool,
    /// The customer represents another entity of the same group.
    #[serde(default)]
    pub intercompany: bool,
    pub last_modified: Timestamp,
    /// ERP fields passed through untouched, available to rules as `custom.<name>`.
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Voided,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    /// The ERP's internal id (stable; the document number may change).
    pub external_id: String,
    pub number: String,
    pub customer_id: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub currency: String,
    pub total: Decimal,
    pub amount_due: Decimal,
    pub status: InvoiceStatus,
    /// On hold or in dispute in the ERP: never counted toward a total due.
    #[serde(default)]
    pub on_hold: bool,
    pub last_modified: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionKind {
    Payment,
    CreditNote,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub external_id: String,
    pub kind: TransactionKind,
    pub customer_id: String,
    pub date: NaiveDate,
    pub amount: Decimal,
    pub currency: String,
    pub last_modified: Timestamp,
}

/// An invoice or a transaction: what the store keeps under a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Invoice(Invoice),
    Transaction(Transaction),
}

impl Record {
    pub fn entity(&self) -> Entity {
        match self {
            Record::Invoice(_) => Entity::Invoices,
            Record::Transaction(_) => Entity::Transactions,
        }
    }
    pub fn external_id(&self) -> &str {
        match self {
            Record::Invoice(i) => &i.external_id,
            Record::Transaction(t) => &t.external_id,
        }
    }
    pub fn customer_id(&self) -> &str {
        match self {
            Record::Invoice(i) => &i.customer_id,
            Record::Transaction(t) => &t.customer_id,
        }
    }
    pub fn last_modified(&self) -> Timestamp {
        match self {
            Record::Invoice(i) => i.last_modified,
            Record::Transaction(t) => t.last_modified,
        }
    }
}

/// An upstream record the connector could not map, kept with its reason so
/// an operator can see it; the sync goes on without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub entity: Entity,
    /// The record's id when it could be read at all.
    pub external_id: Option<String>,
    pub reason: String,
    /// The raw upstream text, truncated to a few KiB.
    pub raw: String,
}

/// Where an exclusion comes from. Order matters: later variants win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionSource {
    Native,
    Rule,
    Manual,
}

impl ExclusionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ExclusionSource::Native => "native",
            ExclusionSource::Rule => "rule",
            ExclusionSource::Manual => "manual",
        }
    }
}

/// The outcome of classifying one customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub excluded: bool,
    /// Set when excluded, and for an inclusion that a manual decision forced.
    pub source: Option<ExclusionSource>,
    /// `native:inactive`, `rule:<id>`, `manual`, or `included`.
    pub reason: String,
}

impl Classification {
    pub fn included() -> Self {
        Self {
            excluded: false,
            source: None,
            reason: "included".into(),
        }
    }
}

/// An admin's decision about one customer; it beats every automatic source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualDecision {
    pub action: ManualAction,
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualAction {
    Exclude,
    Include,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_key_parses_and_prints() {
        let k = CustomerKey::parse("netsuite:123:4").unwrap();
        assert_eq!(k.connector, "netsuite");
        assert_eq!(k.external_id, "123:4");
        assert_eq!(k.to_string(), "netsuite:123:4");
        let err = CustomerKey::parse("nocolon").unwrap_err();
        assert!(err.contains("CONNECTOR:EXTERNAL_ID"), "{err}");
        assert!(CustomerKey::parse(":x").is_err());
        assert!(CustomerKey::parse("x:").is_err());
    }

    #[test]
    fn exclusion_sources_order_by_precedence() {
        assert!(ExclusionSource::Manual > ExclusionSource::Rule);
        assert!(ExclusionSource::Rule > ExclusionSource::Native);
    }
}
