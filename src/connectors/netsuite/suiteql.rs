//! SuiteQL text the connector sends and the mapping of SuiteQL rows into the
//! canonical model.
//!
//! Owns: the exact queries (columns, joins, keyset conditions, time zone of
//! date literals), the response envelope, and row → [`Customer`] / [`Record`]
//! mapping with quarantine reasons for rows that cannot be mapped. Pure: no
//! I/O, no clock. It must only interpolate values it has validated itself
//! (numeric ids, formatted timestamps, identifiers checked by the options),
//! never text taken from a caller or from upstream.

use crate::connectors::redact;
use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{FixedOffset, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{
    Customer, Entity, Invoice, InvoiceStatus, Quarantined, Record, Timestamp, Transaction,
    TransactionKind,
};

/// One SuiteQL result row: lower-case column names → values (strings; a
/// NULL column is simply absent).
pub type Row = Map<String, Value>;

/// The SuiteQL collection envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct SuiteqlResponse {
    pub items: Vec<Row>,
    #[serde(rename = "hasMore", default)]
    pub has_more: bool,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(rename = "totalResults", default)]
    pub total_results: Option<u64>,
}

/// NetSuite's REST error envelope (`o:errorDetails`).
#[derive(Debug, Clone, Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    title: Option<String>,
    #[serde(rename = "o:errorDetails", default)]
    details: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    detail: Option<String>,
    #[serde(rename = "o:errorCode", default)]
    code: Option<String>,
}

/// The error codes and `detail` texts of an error body, e.g.
/// `(["INVALID_LOGIN"], "INVALID_LOGIN: Invalid login attempt.")`; for a body
/// that is not an envelope, a short excerpt of it.
pub fn error_text(body: &[u8]) -> (Vec<String>, String) {
    if let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body) {
        let codes: Vec<String> = env.details.iter().filter_map(|d| d.code.clone()).collect();
        let parts: Vec<String> = env
            .details
            .iter()
            .map(|d| match (&d.code, &d.detail) {
                (Some(c), Some(t)) => format!("{c}: {t}"),
                (Some(c), None) => c.clone(),
                (None, Some(t)) => t.clone(),
                (None, None) => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return (codes, redact::summary(&parts.join("; ")));
        }
        if let Some(t) = env.title {
            return (codes, redact::summary(&t));
        }
    }
    (Vec::new(), redact::body_summary(body))
}

/// What the queries need to know about the account's configuration.
#[derive(Debug, Clone)]
pub struct QuerySettings {
    /// Already validated as simple identifiers.
    pub custom_fields: Vec<String>,
    /// Custom fields read as their display text (`BUILTIN.DF`); validated
    /// like `custom_fields`.
    pub display_fields: Vec<String>,
    /// Whether the account has subsidiaries (OneWorld): without, the
    /// customer query neither joins `customersubsidiaryrelationship` nor
    /// reads a subsidiary.
    pub oneworld: bool,
    pub intercompany_column: Option<String>,
    pub on_hold_column: Option<String>,
    /// The account's time zone: datetimes in SuiteQL are local to it.
    pub tz: AccountTz,
}

/// The account's time zone: a fixed offset, or an IANA zone whose offset
/// changes (daylight saving time). SuiteQL reads and compares datetimes as
/// local wall-clock times in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountTz {
    Fixed(FixedOffset),
    Zone(chrono_tz::Tz),
}

impl AccountTz {
    /// The UTC offset in force at `t`.
    fn offset_at(&self, t: Timestamp) -> FixedOffset {
        match self {
            AccountTz::Fixed(o) => *o,
            AccountTz::Zone(z) => z.offset_from_utc_datetime(&t.naive_utc()).fix(),
        }
    }

    /// The local wall-clock time of `t`.
    pub fn local(&self, t: Timestamp) -> NaiveDateTime {
        t.naive_utc() + TimeDelta::seconds(self.offset_at(t).local_minus_utc() as i64)
    }

    /// The latest local time no instant at or after `t` shows a smaller
    /// wall clock than: `local(t)`, less the hour repeated when the clocks
    /// go back within the next hours. A `>=` on it misses nothing changed
    /// at or after `t`, also across the end of daylight saving time.
    pub fn local_lower_bound(&self, t: Timestamp) -> NaiveDateTime {
        let AccountTz::Zone(_) = self else {
            return self.local(t);
        };
        // Offsets change at most a few hours' worth at once and then hold
        // for months: the smallest offset over the next 26 hours (sampled
        // every 15 minutes, the finest step any zone uses) bounds every
        // wall clock from `t` on.
        let min = (0..=26 * 4)
            .map(|k| {
                self.offset_at(t + TimeDelta::minutes(15 * k))
                    .local_minus_utc()
            })
            .min()
            .unwrap_or(0);
        t.naive_utc() + TimeDelta::seconds(min as i64)
    }

    /// The instant of a local wall-clock time. A time shown twice (the hour
    /// repeated when the clocks go back) is the earlier instant; a time
    /// never shown (skipped when they go forward) is read with the offset
    /// from before the jump. Never fails for a zone.
    pub fn instant(&self, local: &NaiveDateTime) -> Option<Timestamp> {
        match self {
            AccountTz::Fixed(o) => o.from_local_datetime(local).single().map(|t| t.to_utc()),
            AccountTz::Zone(z) => match z.from_local_datetime(local) {
                LocalResult::Single(t) => Some(t.to_utc()),
                LocalResult::Ambiguous(a, b) => Some(a.to_utc().min(b.to_utc())),
                LocalResult::None => {
                    // In a gap: the offset in force just before it.
                    let before = z
                        .from_local_datetime(&(*local - TimeDelta::hours(3)))
                        .earliest()?
                        .offset()
                        .fix();
                    Some((*local - TimeDelta::seconds(before.local_minus_utc() as i64)).and_utc())
                }
            },
        }
    }
}

const DATETIME_FMT: &str = "%Y-%m-%d %H:%M:%S";
const SQL_DATETIME_FMT: &str = "'YYYY-MM-DD HH24:MI:SS'";

/// The transaction `type` codes of an entity.
pub fn transaction_types(entity: Entity) -> &'static [&'static str] {
    match entity {
        Entity::Customers => &[],
        Entity::Invoices => &["CustInvc"],
        Entity::Transactions => &["CustPymt", "CustCred"],
    }
}

/// `DeletedRecord.type` values (record type ids, compared in lower case) of
/// an entity. Public sources do not show these values for SuiteQL; they are
/// the record type ids NetSuite uses elsewhere (`getDeleted`, SuiteScript).
pub fn deleted_types(entity: Entity) -> &'static [&'static str] {
    match entity {
        Entity::Customers => &["customer"],
        Entity::Invoices => &["invoice"],
        Entity::Transactions => &["customerpayment", "creditmemo"],
    }
}

/// How a query narrows its rows; all of them page by `id > after_id`.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Rows modified at or after this instant (`None`: all rows).
    ModifiedSince(Option<Timestamp>),
    /// Rows of these customers (numeric ids, validated by the caller's type).
    Customers(&'a [u64]),
    /// Rows with an id at most this one (a range of a partitioned first
    /// sync; the keyset bound is its lower end).
    UpTo(u64),
}

/// The literal for "at or after `ts`" in the account's wall-clock time.
fn datetime_literal(ts: Timestamp, tz: &AccountTz) -> String {
    format!(
        "TO_DATE('{}', {SQL_DATETIME_FMT})",
        tz.local_lower_bound(ts).format(DATETIME_FMT)
    )
}

fn quoted_list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn where_clause(
    alias: &str,
    scope: Scope<'_>,
    after_id: u64,
    tz: &AccountTz,
    mut conds: Vec<String>,
) -> String {
    match scope {
        Scope::ModifiedSince(Some(since)) => conds.push(format!(
            "{alias}.lastmodifieddate >= {}",
            datetime_literal(since, tz)
        )),
        Scope::ModifiedSince(None) => {}
        Scope::UpTo(last) => conds.push(format!("{alias}.id <= {last}")),
        Scope::Customers(ids) => conds.push(format!(
            "{alias}.entity IN ({})",
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    conds.push(format!("{alias}.id > {after_id}"));
    format!("WHERE {} ORDER BY {alias}.id", conds.join(" AND "))
}

/// The customer page query.
pub fn customers_query(s: &QuerySettings, scope: Scope<'_>, after_id: u64) -> String {
    let mut cols = vec![
        "c.id".to_string(),
        "c.entityid".into(),
        "c.companyname".into(),
        "c.firstname".into(),
        "c.lastname".into(),
        "c.isperson".into(),
        "c.email".into(),
        "cur.symbol AS currency".into(),
        "c.balancesearch".into(),
        "c.isinactive".into(),
    ];
    if let Some(col) = &s.intercompany_column {
        cols.push(format!("c.{col} AS intercompany"));
    }
    if s.oneworld {
        cols.push("BUILTIN.DF(r.subsidiary) AS subsidiary".into());
    }
    cols.push(format!(
        "TO_CHAR(c.lastmodifieddate, {SQL_DATETIME_FMT}) AS lastmodified"
    ));
    cols.extend(s.custom_fields.iter().map(|f| format!("c.{f}")));
    cols.extend(
        s.display_fields
            .iter()
            .map(|f| format!("BUILTIN.DF(c.{f}) AS {f}")),
    );
    let subsidiary_join = if s.oneworld {
        "LEFT JOIN customersubsidiaryrelationship r ON r.entity = c.id AND r.isprimarysub = 'T' "
    } else {
        ""
    };
    format!(
        "SELECT {} FROM customer c \
         {subsidiary_join}LEFT JOIN currency cur ON cur.id = c.currency {}",
        cols.join(", "),
        where_clause("c", scope, after_id, &s.tz, Vec::new())
    )
}

/// The invoice or transaction page query (`entity` is Invoices or Transactions).
pub fn records_query(s: &QuerySettings, entity: Entity, scope: Scope<'_>, after_id: u64) -> String {
    let mut cols: Vec<String> = vec![
        "t.id".into(),
        "t.type".into(),
        "t.tranid".into(),
        "t.entity".into(),
        "TO_CHAR(t.trandate, 'YYYY-MM-DD') AS trandate".into(),
    ];
    if entity == Entity::Invoices {
        cols.push("TO_CHAR(t.duedate, 'YYYY-MM-DD') AS duedate".into());
    }
    cols.push("cur.symbol AS currency".into());
    cols.push("t.foreigntotal".into());
    if entity == Entity::Invoices {
        cols.push("t.foreignamountunpaid".into());
        cols.push("t.status".into());
        cols.push("t.voided".into());
        if let Some(col) = &s.on_hold_column {
            cols.push(format!("t.{col} AS onhold"));
        }
    }
    cols.push(format!(
        "TO_CHAR(t.lastmodifieddate, {SQL_DATETIME_FMT}) AS lastmodified"
    ));
    let types = transaction_types(entity);
    let type_cond = if types.len() == 1 {
        format!("t.type = '{}'", types[0])
    } else {
        format!("t.type IN ({})", quoted_list(types))
    };
    format!(
        "SELECT {} FROM transaction t LEFT JOIN currency cur ON cur.id = t.currency {}",
        cols.join(", "),
        where_clause("t", scope, after_id, &s.tz, vec![type_cond])
    )
}

/// The smallest and largest id of `entity` and how many rows it has
/// (columns `lo`, `hi`, `n`; one row), to split a first sync into id ranges.
pub fn id_bounds_query(entity: Entity) -> String {
    match entity {
        Entity::Customers => {
            "SELECT MIN(c.id) AS lo, MAX(c.id) AS hi, COUNT(c.id) AS n FROM customer c".to_string()
        }
        _ => {
            let types = transaction_types(entity);
            format!(
                "SELECT MIN(t.id) AS lo, MAX(t.id) AS hi, COUNT(t.id) AS n FROM transaction t WHERE t.type IN ({})",
                quoted_list(types)
            )
        }
    }
}

/// Deletions of `entity`'s record types at or after `since`, paged by record id.
pub fn deleted_query(s: &QuerySettings, entity: Entity, since: Timestamp, after_id: u64) -> String {
    format!(
        "SELECT d.recordid, LOWER(d.type) AS type, TO_CHAR(d.deleteddate, {SQL_DATETIME_FMT}) AS deleteddate \
         FROM deletedrecord d WHERE LOWER(d.type) IN ({}) AND d.deleteddate >= {} AND d.recordid > {after_id} \
         ORDER BY d.recordid",
        quoted_list(deleted_types(entity)),
        datetime_literal(since, &s.tz)
    )
}

// ----------------------------------------------------------------------------
// Row mapping
// ----------------------------------------------------------------------------

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A column's text; NULL, absent and empty are all `None`.
pub fn text(row: &Row, key: &str) -> Option<String> {
    match row.get(key)? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "T" } else { "F" }.to_string()),
        _ => None,
    }
}

fn flag(row: &Row, key: &str) -> bool {
    matches!(text(row, key).as_deref(), Some("T" | "t" | "true"))
}

/// A row's numeric internal id.
pub fn row_id(row: &Row, key: &str) -> Option<u64> {
    text(row, key)?.trim().parse().ok()
}

/// Parses a SuiteQL number; Oracle writes `0.5` as `.5`.
pub fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    let fixed = if let Some(rest) = t.strip_prefix("-.") {
        format!("-0.{rest}")
    } else if let Some(rest) = t.strip_prefix('.') {
        format!("0.{rest}")
    } else {
        t.to_string()
    };
    Decimal::from_str(&fixed)
        .or_else(|_| Decimal::from_scientific(&fixed))
        .map_err(|_| format!("`{s}` is not a decimal number"))
}

/// `YYYY-MM-DD HH24:MI:SS` in the account's time zone → UTC.
pub fn parse_local_datetime(s: &str, tz: &AccountTz) -> Result<Timestamp, String> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), DATETIME_FMT)
        .map_err(|_| format!("`{s}` is not a YYYY-MM-DD HH24:MI:SS datetime"))?;
    tz.instant(&naive)
        .ok_or_else(|| format!("`{s}` does not exist in the account time zone"))
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a YYYY-MM-DD date"))
}

fn required(row: &Row, key: &str) -> Result<String, String> {
    text(row, key).ok_or_else(|| format!("missing {key}"))
}

fn money(row: &Row, key: &str) -> Result<Option<Decimal>, String> {
    text(row, key)
        .map(|v| parse_decimal(&v).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

fn last_modified(row: &Row, tz: &AccountTz) -> Result<Timestamp, String> {
    parse_local_datetime(&required(row, "lastmodified")?, tz)
        .map_err(|e| format!("lastmodified: {e}"))
}

fn quarantine(entity: Entity, row: &Row, id_key: &str, reason: String) -> Quarantined {
    let raw = serde_json::to_string(row).unwrap_or_default();
    Quarantined {
        entity,
        external_id: text(row, id_key),
        reason,
        raw: truncate(&raw, 4096).to_string(),
    }
}

/// Maps a customer row.
pub fn map_customer(row: &Row, s: &QuerySettings) -> Result<Customer, Quarantined> {
    let q = |reason: String| quarantine(Entity::Customers, row, "id", reason);
    let id = row_id(row, "id").ok_or_else(|| q("missing or non-numeric id".into()))?;
    let name = text(row, "companyname")
        .or_else(|| {
            let person: Vec<String> = ["firstname", "lastname"]
                .iter()
                .filter_map(|k| text(row, k))
                .collect();
            (!person.is_empty()).then(|| person.join(" "))
        })
        .or_else(|| text(row, "entityid"))
        .unwrap_or_else(|| id.to_string());
    let balance = money(row, "balancesearch").map_err(q)?.unwrap_or_default();
    let last_modified = last_modified(row, &s.tz).map_err(q)?;
    let custom: BTreeMap<String, String> = s
        .custom_fields
        .iter()
        .chain(&s.display_fields)
        .filter_map(|f| text(row, f).map(|v| (f.clone(), v)))
        .collect();
    Ok(Customer {
        external_id: id.to_string(),
        name,
        email: text(row, "email"),
        subsidiary: text(row, "subsidiary"),
        currency: text(row, "currency"),
        balance,
        inactive: flag(row, "isinactive"),
        intercompany: s.intercompany_column.is_some() && text(row, "intercompany").is_some(),
        last_modified,
        custom,
    })
}

/// Invoice status from the SuiteQL status letter (`A`, or `CustInvc:A`).
pub fn invoice_status(status: &str, voided: bool) -> Result<InvoiceStatus, String> {
    if voided {
        return Ok(InvoiceStatus::Voided);
    }
    let letter = status.rsplit(':').next().unwrap_or_default().trim();
    match letter {
        "A" => Ok(InvoiceStatus::Open),
        "B" => Ok(InvoiceStatus::Paid),
        // Pending approval: not yet a receivable.
        "D" => Ok(InvoiceStatus::Draft),
        // Rejected or voided: nothing to collect.
        "E" | "V" => Ok(InvoiceStatus::Voided),
        _ => Err(format!("unknown invoice status `{status}`")),
    }
}

/// Maps an invoice (`CustInvc`) or payment / credit memo row.
pub fn map_record(row: &Row, entity: Entity, s: &QuerySettings) -> Result<Record, Quarantined> {
    let q = |reason: String| quarantine(entity, row, "id", reason);
    let id = row_id(row, "id").ok_or_else(|| q("missing or non-numeric id".into()))?;
    let ty = required(row, "type").map_err(q)?;
    let customer_id = required(row, "entity").map_err(q)?;
    let date = parse_date(&required(row, "trandate").map_err(q)?)
        .map_err(|e| q(format!("trandate: {e}")))?;
    let currency = required(row, "currency").map_err(q)?;
    let total = money(row, "foreigntotal")
        .map_err(q)?
        .ok_or_else(|| q("missing foreigntotal".into()))?;
    let last_modified = last_modified(row, &s.tz).map_err(q)?;
    match (entity, ty.as_str()) {
        (Entity::Invoices, "CustInvc") => {
            let due_date = match text(row, "duedate") {
                Some(d) => parse_date(&d).map_err(|e| q(format!("duedate: {e}")))?,
                None => date,
            };
            let status = invoice_status(&required(row, "status").map_err(q)?, flag(row, "voided"))
                .map_err(q)?;
            let amount_due = money(row, "foreignamountunpaid")
                .map_err(q)?
                .unwrap_or_default();
            Ok(Record::Invoice(Invoice {
                external_id: id.to_string(),
                number: text(row, "tranid").unwrap_or_else(|| id.to_string()),
                customer_id,
                issue_date: date,
                due_date,
                currency,
                total,
                amount_due,
                status,
                on_hold: s.on_hold_column.is_some() && flag(row, "onhold"),
                last_modified,
            }))
        }
        (Entity::Transactions, "CustPymt" | "CustCred") => Ok(Record::Transaction(Transaction {
            external_id: id.to_string(),
            kind: if ty == "CustPymt" {
                TransactionKind::Payment
            } else {
                TransactionKind::CreditNote
            },
            customer_id,
            date,
            // Credit memos carry negative totals in SuiteQL.
            amount: total.abs(),
            currency,
            last_modified,
        })),
        _ => Err(q(format!(
            "unexpected transaction type `{ty}` for {entity}"
        ))),
    }
}

/// A mapped page: items in id order, one per id (the newest version wins if
/// a join repeated a row), the quarantined rows, and the highest id seen in
/// the raw rows (the keyset position, malformed rows included).
pub struct MappedPage<T> {
    pub items: Vec<T>,
    pub quarantined: Vec<Quarantined>,
    pub max_id: Option<u64>,
}

pub fn map_page<T>(
    rows: &[Row],
    map: impl Fn(&Row) -> Result<T, Quarantined>,
    key: impl Fn(&T) -> (u64, Timestamp),
) -> MappedPage<T> {
    let mut by_id: BTreeMap<u64, T> = BTreeMap::new();
    let mut quarantined = Vec::new();
    let mut max_id = None;
    for row in rows {
        if let Some(id) = row_id(row, "id") {
            max_id = max_id.max(Some(id));
        }
        match map(row) {
            Ok(item) => {
                let (id, lm) = key(&item);
                match by_id.get(&id) {
                    Some(old) if key(old).1 >= lm => {}
                    _ => {
                        by_id.insert(id, item);
                    }
                }
            }
            Err(q) => quarantined.push(q),
        }
    }
    MappedPage {
        items: by_id.into_values().collect(),
        quarantined,
        max_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn settings() -> QuerySettings {
        QuerySettings {
            custom_fields: vec!["custentity_region".into()],
            display_fields: Vec::new(),
            oneworld: true,
            intercompany_column: Some("representingsubsidiary".into()),
            on_hold_column: None,
            tz: AccountTz::Fixed(FixedOffset::west_opt(8 * 3600).unwrap()),
        }
    }

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn customer_query_selects_model_columns_in_account_time() {
        let since = Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap();
        let q = customers_query(&settings(), Scope::ModifiedSince(Some(since)), 41);
        assert_eq!(
            q,
            "SELECT c.id, c.entityid, c.companyname, c.firstname, c.lastname, c.isperson, c.email, \
             cur.symbol AS currency, c.balancesearch, c.isinactive, c.representingsubsidiary AS intercompany, \
             BUILTIN.DF(r.subsidiary) AS subsidiary, \
             TO_CHAR(c.lastmodifieddate, 'YYYY-MM-DD HH24:MI:SS') AS lastmodified, c.custentity_region \
             FROM customer c LEFT JOIN customersubsidiaryrelationship r ON r.entity = c.id AND r.isprimarysub = 'T' \
             LEFT JOIN currency cur ON cur.id = c.currency \
             WHERE c.lastmodifieddate >= TO_DATE('2024-03-01 04:00:00', 'YYYY-MM-DD HH24:MI:SS') \
             AND c.id > 41 ORDER BY c.id"
        );
        let mut s = settings();
        s.intercompany_column = None;
        let q = customers_query(&s, Scope::ModifiedSince(None), 0);
        assert!(!q.contains("intercompany"));
        assert!(q.ends_with("WHERE c.id > 0 ORDER BY c.id"), "{q}");
    }

    #[test]
    fn record_queries_filter_by_type_and_customer_set() {
        let q = records_query(&settings(), Entity::Invoices, Scope::ModifiedSince(None), 0);
        assert!(
            q.contains("t.foreignamountunpaid, t.status, t.voided"),
            "{q}"
        );
        assert!(
            q.ends_with("WHERE t.type = 'CustInvc' AND t.id > 0 ORDER BY t.id"),
            "{q}"
        );
        let q = records_query(
            &settings(),
            Entity::Transactions,
            Scope::Customers(&[3, 17]),
            900,
        );
        assert!(!q.contains("duedate"), "{q}");
        assert!(
            q.ends_with(
                "WHERE t.type IN ('CustPymt', 'CustCred') AND t.entity IN (3, 17) AND t.id > 900 ORDER BY t.id"
            ),
            "{q}"
        );
        let mut s = settings();
        s.on_hold_column = Some("custbody_dispute".into());
        let q = records_query(&s, Entity::Invoices, Scope::ModifiedSince(None), 0);
        assert!(q.contains("t.custbody_dispute AS onhold"), "{q}");
    }

    #[test]
    fn deleted_query_names_record_types() {
        let since = Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap();
        let q = deleted_query(&settings(), Entity::Transactions, since, 5);
        assert_eq!(
            q,
            "SELECT d.recordid, LOWER(d.type) AS type, TO_CHAR(d.deleteddate, 'YYYY-MM-DD HH24:MI:SS') AS deleteddate \
             FROM deletedrecord d WHERE LOWER(d.type) IN ('customerpayment', 'creditmemo') \
             AND d.deleteddate >= TO_DATE('2024-02-29 16:00:00', 'YYYY-MM-DD HH24:MI:SS') AND d.recordid > 5 \
             ORDER BY d.recordid"
        );
    }

    #[test]
    fn customer_rows_map_with_time_zone_and_custom_fields() {
        let r = row(json!({
            "links": [], "id": "107", "entityid": "CUST-107", "companyname": "Acme GmbH",
            "email": "ap@acme.example", "currency": "EUR", "balancesearch": "-.5",
            "isinactive": "T", "intercompany": "3", "subsidiary": "Acme EU",
            "lastmodified": "2024-03-10 23:30:05", "custentity_region": "EMEA"
        }));
        let c = map_customer(&r, &settings()).unwrap();
        assert_eq!(c.external_id, "107");
        assert_eq!(c.name, "Acme GmbH");
        assert_eq!(c.balance, Decimal::from_str("-0.5").unwrap());
        assert!(c.inactive && c.intercompany);
        assert_eq!(c.subsidiary.as_deref(), Some("Acme EU"));
        // 23:30 at UTC-8 is 07:30 the next day in UTC.
        assert_eq!(
            c.last_modified,
            Utc.with_ymd_and_hms(2024, 3, 11, 7, 30, 5).unwrap()
        );
        assert_eq!(
            c.custom.get("custentity_region").map(String::as_str),
            Some("EMEA")
        );

        let person = row(
            json!({"id": "9", "entityid": "P9", "firstname": "Ada", "lastname": "Lovelace",
            "isperson": "T", "isinactive": "F", "lastmodified": "2024-01-01 00:00:00"}),
        );
        let c = map_customer(&person, &settings()).unwrap();
        assert_eq!(c.name, "Ada Lovelace");
        assert!(!c.inactive && !c.intercompany);
        assert_eq!(c.balance, Decimal::ZERO);
        assert!(c.custom.is_empty());
        let only_entityid =
            row(json!({"id": "10", "entityid": "E10", "lastmodified": "2024-01-01 00:00:00"}));
        assert_eq!(
            map_customer(&only_entityid, &settings()).unwrap().name,
            "E10"
        );
    }

    #[test]
    fn malformed_rows_are_quarantined_with_reasons() {
        let s = settings();
        let check = |v: Value, entity: Entity, needle: &str| {
            let r = row(v);
            let q = match entity {
                Entity::Customers => map_customer(&r, &s).map(|_| ()).unwrap_err(),
                e => map_record(&r, e, &s).map(|_| ()).unwrap_err(),
            };
            assert!(
                q.reason.contains(needle),
                "{} does not mention {needle}",
                q.reason
            );
            assert_eq!(q.entity, entity);
            assert!(q.raw.starts_with('{'));
        };
        check(
            json!({"companyname": "x", "lastmodified": "2024-01-01 00:00:00"}),
            Entity::Customers,
            "id",
        );
        check(
            json!({"id": "1", "balancesearch": "12,5", "lastmodified": "2024-01-01 00:00:00"}),
            Entity::Customers,
            "balancesearch",
        );
        check(
            json!({"id": "1", "lastmodified": "1/1/2024"}),
            Entity::Customers,
            "lastmodified",
        );
        let inv = json!({"id": "5", "type": "CustInvc", "entity": "7", "trandate": "2024-01-02",
            "duedate": "2024-02-01", "currency": "USD", "foreigntotal": "100.00",
            "foreignamountunpaid": "40.00", "status": "A", "lastmodified": "2024-01-02 10:00:00"});
        let mut bad = inv.clone();
        bad["foreigntotal"] = json!("abc");
        check(bad, Entity::Invoices, "foreigntotal");
        let mut bad = inv.clone();
        bad["status"] = json!("Z");
        check(bad, Entity::Invoices, "status");
        let mut bad = inv.clone();
        bad["trandate"] = json!("2024-13-01");
        check(bad, Entity::Invoices, "trandate");
        let mut bad = inv.clone();
        bad["type"] = json!("CustPymt");
        check(bad, Entity::Invoices, "unexpected transaction type");
        let q = map_record(&row(json!({"id": "x1"})), Entity::Invoices, &s).unwrap_err();
        assert_eq!(q.external_id.as_deref(), Some("x1"));
    }

    #[test]
    fn invoice_and_transaction_rows_map() {
        let s = settings();
        let inv = row(
            json!({"id": "5", "type": "CustInvc", "tranid": "INV-5", "entity": "7",
            "trandate": "2024-01-02", "currency": "USD", "foreigntotal": "100.00",
            "foreignamountunpaid": "40.00", "status": "A", "voided": "F",
            "lastmodified": "2024-01-02 10:00:00"}),
        );
        let Record::Invoice(i) = map_record(&inv, Entity::Invoices, &s).unwrap() else {
            panic!("not an invoice")
        };
        assert_eq!((i.number.as_str(), i.customer_id.as_str()), ("INV-5", "7"));
        assert_eq!(
            i.due_date, i.issue_date,
            "no due date falls back to the invoice date"
        );
        assert_eq!(i.status, InvoiceStatus::Open);
        assert_eq!(i.amount_due, Decimal::from_str("40.00").unwrap());
        assert_eq!(
            i.last_modified,
            Utc.with_ymd_and_hms(2024, 1, 2, 18, 0, 0).unwrap()
        );
        assert!(!i.on_hold);

        let cm = row(
            json!({"id": "6", "type": "CustCred", "entity": "7", "trandate": "2024-01-03",
            "currency": "USD", "foreigntotal": "-25.10", "lastmodified": "2024-01-03 10:00:00"}),
        );
        let Record::Transaction(t) = map_record(&cm, Entity::Transactions, &s).unwrap() else {
            panic!("not a transaction")
        };
        assert_eq!(t.kind, TransactionKind::CreditNote);
        assert_eq!(t.amount, Decimal::from_str("25.10").unwrap());
    }

    #[test]
    fn statuses_map() {
        assert_eq!(invoice_status("A", false), Ok(InvoiceStatus::Open));
        assert_eq!(invoice_status("CustInvc:B", false), Ok(InvoiceStatus::Paid));
        assert_eq!(invoice_status("A", true), Ok(InvoiceStatus::Voided));
        assert_eq!(invoice_status("V", false), Ok(InvoiceStatus::Voided));
        assert_eq!(invoice_status("D", false), Ok(InvoiceStatus::Draft));
        assert!(invoice_status("", false).is_err());
    }

    #[test]
    fn pages_dedupe_by_id_and_track_the_keyset_position() {
        let s = settings();
        let rows: Vec<Row> = [
            json!({"id": "3", "lastmodified": "2024-01-01 00:00:00", "companyname": "old"}),
            json!({"id": "3", "lastmodified": "2024-01-02 00:00:00", "companyname": "new"}),
            json!({"id": "2", "lastmodified": "2024-01-01 00:00:00"}),
            json!({"id": "9", "lastmodified": "garbage"}),
        ]
        .into_iter()
        .map(row)
        .collect();
        let page = map_page(
            &rows,
            |r| map_customer(r, &s),
            |c| (c.external_id.parse().unwrap(), c.last_modified),
        );
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[0].external_id, "2");
        assert_eq!(page.items[1].name, "new");
        assert_eq!(page.quarantined.len(), 1);
        assert_eq!(page.max_id, Some(9));
    }

    #[test]
    fn decimals_and_datetimes_parse() {
        assert_eq!(
            parse_decimal(".5").unwrap(),
            Decimal::from_str("0.5").unwrap()
        );
        assert_eq!(
            parse_decimal("-.25").unwrap(),
            Decimal::from_str("-0.25").unwrap()
        );
        assert_eq!(
            parse_decimal("1234.5600").unwrap(),
            Decimal::from_str("1234.56").unwrap()
        );
        assert!(parse_decimal("1,234.56").is_err());
        assert!(parse_decimal("").is_err());
        let tz = AccountTz::Fixed(FixedOffset::east_opt(2 * 3600).unwrap());
        assert_eq!(
            parse_local_datetime("2024-06-30 01:15:00", &tz).unwrap(),
            Utc.with_ymd_and_hms(2024, 6, 29, 23, 15, 0).unwrap()
        );
        assert!(parse_local_datetime("2024-06-30", &tz).is_err());
    }

    #[test]
    fn error_envelopes_read_as_code_and_detail() {
        let body = br#"{"type":"https://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html","title":"Unauthorized","status":401,"o:errorDetails":[{"detail":"Invalid login attempt.","o:errorCode":"INVALID_LOGIN"}]}"#;
        let (codes, text) = error_text(body);
        assert_eq!(codes, vec!["INVALID_LOGIN"]);
        assert_eq!(text, "INVALID_LOGIN: Invalid login attempt.");
        let (codes, text) = error_text(b"<html>Bad gateway</html>");
        assert!(codes.is_empty());
        assert_eq!(text, "<html>Bad gateway</html>");
    }

    fn la() -> AccountTz {
        AccountTz::Zone(chrono_tz::America::Los_Angeles)
    }

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, DATETIME_FMT).unwrap()
    }

    #[test]
    fn zone_times_follow_daylight_saving_across_both_switches() {
        let tz = la();
        // Standard time (UTC-8) and daylight time (UTC-7).
        let winter = Utc.with_ymd_and_hms(2024, 1, 15, 20, 0, 0).unwrap();
        assert_eq!(tz.local(winter), naive("2024-01-15 12:00:00"));
        let summer = Utc.with_ymd_and_hms(2024, 7, 15, 19, 0, 0).unwrap();
        assert_eq!(tz.local(summer), naive("2024-07-15 12:00:00"));
        assert_eq!(
            parse_local_datetime("2024-07-15 12:00:00", &tz).unwrap(),
            summer
        );
        // Spring forward (10 March 2024, 02:00 → 03:00): 02:30 never
        // happens; read with the offset from before the jump.
        assert_eq!(
            parse_local_datetime("2024-03-10 02:30:00", &tz).unwrap(),
            Utc.with_ymd_and_hms(2024, 3, 10, 10, 30, 0).unwrap()
        );
        assert_eq!(
            parse_local_datetime("2024-03-10 03:00:00", &tz).unwrap(),
            Utc.with_ymd_and_hms(2024, 3, 10, 10, 0, 0).unwrap()
        );
        // Fall back (3 November 2024, 02:00 → 01:00): 01:30 happens twice;
        // the earlier instant.
        assert_eq!(
            parse_local_datetime("2024-11-03 01:30:00", &tz).unwrap(),
            Utc.with_ymd_and_hms(2024, 11, 3, 8, 30, 0).unwrap()
        );
    }

    #[test]
    fn a_cursor_literal_misses_no_instant_after_it_across_both_switches() {
        let tz = la();
        // Every minute from a day before each switch to a day after: no
        // instant at or after the cursor shows a wall clock below its
        // literal, so `lastmodifieddate >= literal` keeps every change.
        for (from, to) in [
            (
                Utc.with_ymd_and_hms(2024, 3, 9, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2024, 3, 11, 12, 0, 0).unwrap(),
            ),
            (
                Utc.with_ymd_and_hms(2024, 11, 2, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2024, 11, 4, 12, 0, 0).unwrap(),
            ),
        ] {
            let mut since = from;
            while since < to {
                let bound = tz.local_lower_bound(since);
                assert!(bound <= tz.local(since), "{since}");
                for m in 0..6 * 60 {
                    let later = since + TimeDelta::minutes(m);
                    assert!(
                        tz.local(later) >= bound,
                        "{later} is before the literal of {since}"
                    );
                }
                // Never more than the repeated hour before the wall clock.
                assert!(tz.local(since) - bound <= TimeDelta::hours(1), "{since}");
                since += TimeDelta::minutes(7);
            }
        }
        // Just before the clocks go back the literal reaches back an hour;
        // far from a switch it is the wall clock itself.
        let before_fall = Utc.with_ymd_and_hms(2024, 11, 3, 8, 45, 0).unwrap();
        assert_eq!(tz.local(before_fall), naive("2024-11-03 01:45:00"));
        assert_eq!(
            tz.local_lower_bound(before_fall),
            naive("2024-11-03 00:45:00")
        );
        let calm = Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(tz.local_lower_bound(calm), tz.local(calm));
        let s = QuerySettings { tz, ..settings() };
        assert!(deleted_query(&s, Entity::Invoices, before_fall, 0)
            .contains("TO_DATE('2024-11-03 00:45:00'"),);
    }
}
