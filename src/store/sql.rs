//! The small SQL layer both backends implement: owned parameter and column
//! [`Value`]s, rows, and the [`Conn`] trait the store's queries run on.
//!
//! Every statement of the store is written once, with `?` placeholders, in
//! the SQL that SQLite and PostgreSQL share (`INSERT .. ON CONFLICT .. DO
//! UPDATE`, `RETURNING`, `TRUE`/`FALSE`). The PostgreSQL backend numbers the
//! placeholders (`$1`, `$2`, ...). Column types differ per backend (see
//! `schema.rs`); values are converted at the boundary: money is NUMERIC in
//! PostgreSQL and canonical decimal TEXT in SQLite, instants TIMESTAMPTZ or
//! fixed-width RFC 3339 TEXT, JSON JSONB or TEXT, booleans BOOLEAN or 0/1.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;

use super::{Result, StoreError};

/// One parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
    Dec(Decimal),
    Time(DateTime<Utc>),
    Date(NaiveDate),
    /// Serialised JSON text.
    Json(String),
    /// An array parameter (PostgreSQL only, see [`Conn::arrays`]): one
    /// column of many rows, e.g. for `unnest`.
    Array(Vec<Value>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Text(s.clone())
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<Decimal> for Value {
    fn from(v: Decimal) -> Self {
        Value::Dec(v)
    }
}
impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Self {
        Value::Time(v)
    }
}
impl From<NaiveDate> for Value {
    fn from(v: NaiveDate) -> Self {
        Value::Date(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

/// JSON text of a serialisable value.
pub(crate) fn json<T: serde::Serialize + ?Sized>(v: &T) -> Value {
    Value::Json(serde_json::to_string(v).expect("store values always serialise"))
}

/// Instants as SQLite keeps them: fixed width so text order is time order.
pub(crate) fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

macro_rules! params {
    ($($v:expr),* $(,)?) => { [$($crate::store::sql::Value::from($v)),*] };
}
pub(crate) use params;

/// A result row: its columns in select order.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }
    fn bad(&self, i: usize, want: &str) -> StoreError {
        StoreError::Corrupt {
            key: format!("column {i}"),
            message: format!("expected {want}, found {}", kind(self.at(i))),
        }
    }
    pub fn is_null(&self, i: usize) -> bool {
        matches!(self.at(i), Value::Null)
    }
    pub fn text(&self, i: usize) -> Result<String> {
        match self.at(i) {
            Value::Text(s) | Value::Json(s) => Ok(s.clone()),
            _ => Err(self.bad(i, "text")),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        if self.is_null(i) {
            Ok(None)
        } else {
            self.text(i).map(Some)
        }
    }
    pub fn int(&self, i: usize) -> Result<i64> {
        match self.at(i) {
            Value::Int(v) => Ok(*v),
            _ => Err(self.bad(i, "integer")),
        }
    }
    pub fn u64(&self, i: usize) -> Result<u64> {
        Ok(self.int(i)?.max(0) as u64)
    }
    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.at(i) {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            _ => Err(self.bad(i, "boolean")),
        }
    }
    pub fn dec(&self, i: usize) -> Result<Decimal> {
        match self.at(i) {
            Value::Dec(d) => Ok(*d),
            Value::Text(s) => s.parse().map_err(|_| self.bad(i, "decimal")),
            Value::Int(v) => Ok(Decimal::from(*v)),
            _ => Err(self.bad(i, "decimal")),
        }
    }
    pub fn time(&self, i: usize) -> Result<DateTime<Utc>> {
        match self.at(i) {
            Value::Time(t) => Ok(*t),
            Value::Text(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| self.bad(i, "timestamp")),
            _ => Err(self.bad(i, "timestamp")),
        }
    }
    pub fn date(&self, i: usize) -> Result<NaiveDate> {
        match self.at(i) {
            Value::Date(d) => Ok(*d),
            Value::Text(s) => s.parse().map_err(|_| self.bad(i, "date")),
            _ => Err(self.bad(i, "date")),
        }
    }
    /// A JSON column decoded into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        let text = match self.at(i) {
            Value::Json(s) | Value::Text(s) => s,
            _ => return Err(self.bad(i, "json")),
        };
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            key: format!("column {i}"),
            message: e.to_string(),
        })
    }
    pub fn opt_json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<Option<T>> {
        if self.is_null(i) {
            Ok(None)
        } else {
            self.json(i).map(Some)
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Int(_) => "integer",
        Value::Text(_) => "text",
        Value::Bool(_) => "boolean",
        Value::Dec(_) => "decimal",
        Value::Time(_) => "timestamp",
        Value::Date(_) => "date",
        Value::Json(_) => "json",
        Value::Array(_) => "array",
    }
}

/// A connection (or an open transaction on one) that runs the store's
/// statements. Implemented by the SQLite and the PostgreSQL backend.
pub(crate) trait Conn {
    /// Runs a statement; returns the number of rows it changed.
    fn exec(&mut self, sql: &'static str, params: &[Value]) -> Result<u64>;
    /// Runs a query and returns every row.
    fn query(&mut self, sql: &'static str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs a statement built at run time (multi-row inserts, `IN` lists).
    fn exec_dyn(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    fn query_dyn(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    fn query_opt(&mut self, sql: &'static str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Whether array parameters ([`Value::Array`]) and `unnest` work here
    /// (PostgreSQL): many rows then go in one statement with one parameter
    /// per column, planned once, instead of several multi-row statements.
    fn arrays(&self) -> bool {
        false
    }
}

/// The columns of `rows` (each a row's values, all of one width) as array
/// parameters, for `unnest`.
pub(crate) fn columns(rows: Vec<Vec<Value>>) -> Vec<Value> {
    let width = rows.first().map_or(0, Vec::len);
    let mut cols: Vec<Vec<Value>> = (0..width).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    cols.into_iter().map(Value::Array).collect()
}

/// Rewrites `?` placeholders as `$1`, `$2`, ... (PostgreSQL). The store's
/// statements never contain `?` inside string literals.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ? AND c IN (?, ?)"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"
        );
    }

    #[test]
    fn sqlite_instants_sort_as_text() {
        use chrono::TimeZone;
        let a = Utc.timestamp_opt(1_700_000_000, 5).unwrap();
        let b = Utc.timestamp_opt(1_700_000_001, 0).unwrap();
        assert!(time_text(&a) < time_text(&b));
        let row = Row(vec![Value::Text(time_text(&a))]);
        assert_eq!(row.time(0).unwrap(), a);
    }
}
