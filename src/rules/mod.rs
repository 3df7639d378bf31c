//! The condition language: one parser and one evaluator shared by smart rules,
//! reminder scenarios and the admin API's exclude-by-condition.
//!
//! This module owns the condition tree (`all` / `any` / `not` over leaves
//! `{"field", "op", "value", "case_sensitive"}`), its validation with errors
//! written for the user (each one carries the path of the offending key, e.g.
//! `when.any[1].op`), its evaluation against a [`Customer`], and named
//! [`Rule`]s grouped in a [`RuleSet`]. It is pure: no I/O, no store, no
//! logging. Callers hand it JSON (the config turns TOML into
//! [`serde_json::Value`] first) and decide what a match means.
//!
//! Every leaf is type-checked and compiled once, at parse time: regexes are
//! built, decimals and timestamps parsed, case-insensitive operands folded.
//! Evaluating a condition therefore never fails and never allocates more than a
//! lowercase copy of the customer's field.
//!
//! Semantics worth knowing:
//! - `all: []` is true, `any: []` is false.
//! - A missing optional field (`email`, `subsidiary`, `currency`, an absent
//!   `custom.<name>`) reads as the empty string: `is_empty` is true, `contains`
//!   is false, `not_contains` and `is_not` are true.
//! - `matches` searches anywhere in the value; anchor with `^`/`$` to match it whole.
//! - `balance` compares as a decimal (`10.50` is `10.5`), `last_modified` as an
//!   instant; `gt`/`gte`/`lt`/`lte` on `custom.<name>` compare numerically and
//!   do not match when the customer's value is not a number.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat};
use regex::{Regex, RegexBuilder};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::model::{Customer, Timestamp};

#[cfg(test)]
mod tests;

/// Options that apply to a whole condition tree while it is parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Default for leaves without their own `case_sensitive` key.
    pub case_sensitive: bool,
}

/// Why a condition or rule was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at `{path}`: {message}")]
pub struct ConditionError {
    /// Where in the input, e.g. `any[1].op`; empty for the root. For a missing
    /// key it names where the key should be.
    pub path: String,
    pub message: String,
}

impl ConditionError {
    /// The error's place as a config key under `root` (e.g. `when.any[1].op`).
    pub fn key_under(&self, root: &str) -> String {
        if self.path.is_empty() {
            root.to_string()
        } else {
            format!("{root}.{}", self.path)
        }
    }
}

impl ConditionError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        ConditionError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// A parsed, type-checked condition tree.
#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Leaf(Leaf),
}

/// A customer field a leaf can test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    ExternalId,
    Name,
    Email,
    Subsidiary,
    Currency,
    Balance,
    Inactive,
    Intercompany,
    LastModified,
    /// A field the connector passes through, written `custom.<name>`.
    Custom(String),
}

/// How a field's value is typed, which decides the operators it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Custom,
    Decimal,
    Timestamp,
    Bool,
}

const FIELD_NAMES: &str = "external_id, name, email, subsidiary, currency, balance, inactive, \
                           intercompany, last_modified";

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "external_id" => Field::ExternalId,
            "name" => Field::Name,
            "email" => Field::Email,
            "subsidiary" => Field::Subsidiary,
            "currency" => Field::Currency,
            "balance" => Field::Balance,
            "inactive" => Field::Inactive,
            "intercompany" => Field::Intercompany,
            "last_modified" => Field::LastModified,
            _ => match s.strip_prefix("custom.") {
                Some(name) if !name.is_empty() => Field::Custom(name.to_string()),
                _ => return None,
            },
        })
    }

    /// The name as written in a condition (`name`, `custom.segment`).
    pub fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Field::ExternalId => "external_id",
            Field::Name => "name",
            Field::Email => "email",
            Field::Subsidiary => "subsidiary",
            Field::Currency => "currency",
            Field::Balance => "balance",
            Field::Inactive => "inactive",
            Field::Intercompany => "intercompany",
            Field::LastModified => "last_modified",
            Field::Custom(name) => return Cow::Owned(format!("custom.{name}")),
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Field::ExternalId
            | Field::Name
            | Field::Email
            | Field::Subsidiary
            | Field::Currency => Kind::Text,
            Field::Custom(_) => Kind::Custom,
            Field::Balance => Kind::Decimal,
            Field::LastModified => Kind::Timestamp,
            Field::Inactive | Field::Intercompany => Kind::Bool,
        }
    }

    /// The field's text; a missing optional field reads as "".
    fn text<'c>(&self, c: &'c Customer) -> &'c str {
        match self {
            Field::ExternalId => &c.external_id,
            Field::Name => &c.name,
            Field::Email => c.email.as_deref().unwrap_or(""),
            Field::Subsidiary => c.subsidiary.as_deref().unwrap_or(""),
            Field::Currency => c.currency.as_deref().unwrap_or(""),
            Field::Custom(name) => c.custom.get(name).map_or("", String::as_str),
            // Not text: the parser never pairs these with a text operand.
            Field::Balance | Field::Inactive | Field::Intercompany | Field::LastModified => "",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A leaf's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Is,
    IsNot,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    Matches,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Op {
    const ALL: [Op; 15] = [
        Op::Is,
        Op::IsNot,
        Op::Contains,
        Op::NotContains,
        Op::StartsWith,
        Op::EndsWith,
        Op::Matches,
        Op::In,
        Op::NotIn,
        Op::IsEmpty,
        Op::IsNotEmpty,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Is => "is",
            Op::IsNot => "is_not",
            Op::Contains => "contains",
            Op::NotContains => "not_contains",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::Matches => "matches",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::IsEmpty => "is_empty",
            Op::IsNotEmpty => "is_not_empty",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// The operators a kind of field accepts, in [`Op::ALL`] order.
    fn accepted_by(kind: Kind) -> &'static [Op] {
        use Op::*;
        match kind {
            Kind::Text => &[
                Is,
                IsNot,
                Contains,
                NotContains,
                StartsWith,
                EndsWith,
                Matches,
                In,
                NotIn,
                IsEmpty,
                IsNotEmpty,
            ],
            Kind::Custom => &Op::ALL,
            Kind::Decimal => &[Is, IsNot, In, NotIn, Gt, Gte, Lt, Lte],
            Kind::Timestamp => &[Is, IsNot, Gt, Gte, Lt, Lte],
            Kind::Bool => &[Is, IsNot],
        }
    }

    fn is_ordering(self) -> bool {
        matches!(self, Op::Gt | Op::Gte | Op::Lt | Op::Lte)
    }

    /// True for the negated twin of a positive operator; evaluation runs the
    /// positive one and flips it.
    fn is_negated(self) -> bool {
        matches!(
            self,
            Op::IsNot | Op::NotContains | Op::NotIn | Op::IsNotEmpty
        )
    }

    fn ordering_holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Gt => ord == Greater,
            Op::Gte => ord != Less,
            Op::Lt => ord == Less,
            Op::Lte => ord != Greater,
            _ => false,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn op_list(ops: &[Op]) -> String {
    ops.iter()
        .map(|op| op.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One test of one field, e.g. `name contains "test"`.
#[derive(Debug, Clone)]
pub struct Leaf {
    field: Field,
    op: Op,
    case_sensitive: bool,
    operand: Operand,
}

/// A leaf's value, typed and compiled for its field and operator.
#[derive(Debug, Clone)]
enum Operand {
    /// `is_empty` / `is_not_empty`.
    None,
    /// As written, and folded to lowercase unless the leaf is case-sensitive.
    Text {
        raw: String,
        cmp: String,
    },
    TextList {
        raw: Vec<String>,
        cmp: Vec<String>,
    },
    Regex(Regex),
    Decimal(Decimal),
    DecimalList(Vec<Decimal>),
    Timestamp(Timestamp),
    Bool(bool),
}

impl Leaf {
    pub fn field(&self) -> &Field {
        &self.field
    }

    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether text comparisons of this leaf respect case.
    pub fn case_sensitive(&self) -> bool {
        self.case_sensitive
    }

    /// Whether `case_sensitive` changes what this leaf matches.
    fn case_matters(&self) -> bool {
        matches!(
            self.operand,
            Operand::Text { .. } | Operand::TextList { .. } | Operand::Regex(_)
        )
    }

    fn matches(&self, c: &Customer) -> bool {
        let positive = match &self.operand {
            Operand::None => self.field.text(c).is_empty(),
            Operand::Text { cmp, .. } => {
                let value = fold(self.field.text(c), self.case_sensitive);
                match self.op {
                    Op::Is | Op::IsNot => *value == **cmp,
                    Op::Contains | Op::NotContains => value.contains(cmp.as_str()),
                    Op::StartsWith => value.starts_with(cmp.as_str()),
                    Op::EndsWith => value.ends_with(cmp.as_str()),
                    _ => false,
                }
            }
            Operand::TextList { cmp, .. } => {
                let value = fold(self.field.text(c), self.case_sensitive);
                cmp.iter().any(|candidate| *candidate == *value)
            }
            Operand::Regex(re) => re.is_match(self.field.text(c)),
            Operand::Decimal(operand) => {
                let value = match self.field {
                    Field::Balance => c.balance,
                    // custom.<name> with an ordering operator: numeric when it
                    // parses, otherwise no match.
                    _ => match parse_decimal(self.field.text(c)) {
                        Some(d) => d,
                        None => return false,
                    },
                };
                match self.op {
                    Op::Is | Op::IsNot => value == *operand,
                    op => op.ordering_holds(value.cmp(operand)),
                }
            }
            Operand::DecimalList(list) => list.contains(&c.balance),
            Operand::Timestamp(operand) => match self.op {
                Op::Is | Op::IsNot => c.last_modified == *operand,
                op => op.ordering_holds(c.last_modified.cmp(operand)),
            },
            Operand::Bool(operand) => {
                let value = match self.field {
                    Field::Inactive => c.inactive,
                    _ => c.intercompany,
                };
                value == *operand
            }
        };
        positive != self.op.is_negated()
    }

    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert(
            "field".into(),
            Value::String(self.field.name().into_owned()),
        );
        obj.insert("op".into(), Value::String(self.op.as_str().into()));
        let value = match &self.operand {
            Operand::None => None,
            Operand::Text { raw, .. } => Some(json!(raw)),
            Operand::TextList { raw, .. } => Some(json!(raw)),
            Operand::Regex(re) => Some(json!(re.as_str())),
            // Decimals as strings: exact, and they keep their scale.
            Operand::Decimal(d) => Some(json!(d.to_string())),
            Operand::DecimalList(list) => Some(json!(list
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>())),
            Operand::Timestamp(t) => Some(json!(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
            Operand::Bool(b) => Some(json!(b)),
        };
        if let Some(value) = value {
            obj.insert("value".into(), value);
        }
        if self.case_sensitive && self.case_matters() {
            obj.insert("case_sensitive".into(), Value::Bool(true));
        }
        Value::Object(obj)
    }
}

/// The form text is compared in: as is, or lowercased when case does not matter.
fn fold(value: &str, case_sensitive: bool) -> Cow<'_, str> {
    if case_sensitive {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(value.to_lowercase())
    }
}

/// Parses a decimal from a string the way users write them: `10.50`, `-3`,
/// ` 7 `, `1e3`.
fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    Decimal::from_str(s)
        .or_else(|_| Decimal::from_scientific(s))
        .ok()
}

fn json_decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Decimal::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(Decimal::from(u))
            } else {
                // serde_json prints floats in their shortest exact form
                // (10.5 → "10.5"), so this never goes through binary rounding.
                parse_decimal(&n.to_string())
            }
        }
        Value::String(s) => parse_decimal(s),
        _ => None,
    }
}

/// Renders an offending input value for a message, cut short if long.
fn show(v: &Value) -> String {
    const MAX: usize = 80;
    let s = v.to_string();
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// The location of the node being parsed, built lazily into `a[1].b`.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path {
        parent: None,
        seg: Seg::Root,
    };

    fn key(&'a self, key: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Key(key),
        }
    }

    fn index(&'a self, index: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Index(index),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(parent) = self.parent else {
            return Ok(()); // the root
        };
        parent.fmt(f)?;
        match self.seg {
            Seg::Root => Ok(()),
            Seg::Key(k) if matches!(parent.seg, Seg::Root) => f.write_str(k),
            Seg::Key(k) => write!(f, ".{k}"),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

const COMBINATORS: [&str; 3] = ["all", "any", "not"];
const LEAF_KEYS: [&str; 4] = ["field", "op", "value", "case_sensitive"];

impl Condition {
    /// Parses and type-checks a condition tree. `opts.case_sensitive` is the
    /// default for leaves that do not say.
    pub fn parse(v: &Value, opts: ParseOptions) -> Result<Condition, ConditionError> {
        parse_condition(v, &Path::ROOT, opts)
    }

    /// Whether the customer satisfies the condition. Never fails: every type
    /// question was settled by [`Condition::parse`].
    pub fn matches(&self, c: &Customer) -> bool {
        match self {
            Condition::All(list) => list.iter().all(|cond| cond.matches(c)),
            Condition::Any(list) => list.iter().any(|cond| cond.matches(c)),
            Condition::Not(cond) => !cond.matches(c),
            Condition::Leaf(leaf) => leaf.matches(c),
        }
    }

    /// The canonical JSON form. Leaves carry `"case_sensitive": true` only
    /// where it changes the match, so parsing this back with
    /// `ParseOptions::default()` gives an equivalent condition. Decimals are
    /// written as strings, timestamps in UTC.
    pub fn to_json(&self) -> Value {
        match self {
            Condition::All(list) => {
                json!({ "all": list.iter().map(Condition::to_json).collect::<Vec<_>>() })
            }
            Condition::Any(list) => {
                json!({ "any": list.iter().map(Condition::to_json).collect::<Vec<_>>() })
            }
            Condition::Not(cond) => json!({ "not": cond.to_json() }),
            Condition::Leaf(leaf) => leaf.to_json(),
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

fn parse_condition(
    v: &Value,
    path: &Path<'_>,
    opts: ParseOptions,
) -> Result<Condition, ConditionError> {
    let Value::Object(obj) = v else {
        return Err(ConditionError::new(
            path,
            format!("a condition must be an object, got {}", show(v)),
        ));
    };
    if let Some(key) = obj
        .keys()
        .find(|k| !COMBINATORS.contains(&k.as_str()) && !LEAF_KEYS.contains(&k.as_str()))
    {
        return Err(ConditionError::new(
            &path.key(key),
            format!("unknown key `{key}` in condition"),
        ));
    }
    let heads: Vec<&str> = ["all", "any", "not", "field"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let [head] = heads[..] else {
        return Err(ConditionError::new(
            path,
            "a condition needs exactly one of `all`, `any`, `not` or `field`",
        ));
    };
    if head == "field" {
        return parse_leaf(obj, path, opts).map(Condition::Leaf);
    }
    if let Some(key) = obj.keys().find(|k| k.as_str() != head) {
        return Err(ConditionError::new(
            &path.key(key),
            format!("`{key}` belongs next to `field`, not beside `{head}`"),
        ));
    }
    let inner = &obj[head];
    let inner_path = path.key(head);
    if head == "not" {
        return Ok(Condition::Not(Box::new(parse_condition(
            inner,
            &inner_path,
            opts,
        )?)));
    }
    let Value::Array(items) = inner else {
        return Err(ConditionError::new(
            &inner_path,
            format!("`{head}` needs an array of conditions, got {}", show(inner)),
        ));
    };
    let list = items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_condition(item, &inner_path.index(i), opts))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if head == "all" {
        Condition::All(list)
    } else {
        Condition::Any(list)
    })
}

fn parse_leaf(
    obj: &Map<String, Value>,
    path: &Path<'_>,
    opts: ParseOptions,
) -> Result<Leaf, ConditionError> {
    // The caller made sure `field` is there and no combinator is beside it.
    let field_path = path.key("field");
    let field = match &obj["field"] {
        Value::String(s) => Field::parse(s).ok_or_else(|| {
            ConditionError::new(
                &field_path,
                format!("unknown field `{s}`; expected one of {FIELD_NAMES} or custom.<name>"),
            )
        })?,
        other => {
            return Err(ConditionError::new(
                &field_path,
                format!("`field` must be a string, got {}", show(other)),
            ))
        }
    };

    let op_path = path.key("op");
    let op = match obj.get("op") {
        None => {
            return Err(ConditionError::new(
                &op_path,
                format!("missing `op`; expected one of {}", op_list(&Op::ALL)),
            ))
        }
        Some(Value::String(s)) => Op::parse(s).ok_or_else(|| {
            ConditionError::new(
                &op_path,
                format!(
                    "unknown operator `{s}`; expected one of {}",
                    op_list(&Op::ALL)
                ),
            )
        })?,
        Some(other) => {
            return Err(ConditionError::new(
                &op_path,
                format!("`op` must be a string, got {}", show(other)),
            ))
        }
    };
    let kind = field.kind();
    let accepted = Op::accepted_by(kind);
    if !accepted.contains(&op) {
        let hint = if op.is_ordering() && kind == Kind::Text {
            " (gt, gte, lt and lte work on balance, last_modified and custom.<name>)"
        } else {
            ""
        };
        return Err(ConditionError::new(
            &op_path,
            format!(
                "operator `{op}` does not apply to field `{field}`; expected one of {}{hint}",
                op_list(accepted)
            ),
        ));
    }

    let case_sensitive = case_sensitive_key(obj, path)?.unwrap_or(opts.case_sensitive);

    let value_path = path.key("value");
    let operand = match (op, obj.get("value")) {
        (Op::IsEmpty | Op::IsNotEmpty, None) => Operand::None,
        (Op::IsEmpty | Op::IsNotEmpty, Some(_)) => {
            return Err(ConditionError::new(
                &value_path,
                format!("`{op}` takes no `value`"),
            ))
        }
        (_, None) => {
            return Err(ConditionError::new(
                &value_path,
                format!("`{op}` needs a `value`"),
            ))
        }
        (_, Some(value)) => {
            let typed = TypedValue {
                field: &field,
                op,
                case_sensitive,
                path: &value_path,
            };
            typed.compile(kind, value)?
        }
    };

    Ok(Leaf {
        field,
        op,
        case_sensitive,
        operand,
    })
}

/// Reads the optional `case_sensitive` key of a leaf or a rule.
fn case_sensitive_key(
    obj: &Map<String, Value>,
    path: &Path<'_>,
) -> Result<Option<bool>, ConditionError> {
    match obj.get("case_sensitive") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ConditionError::new(
            &path.key("case_sensitive"),
            format!(
                "`case_sensitive` must be true or false, got {}",
                show(other)
            ),
        )),
    }
}

/// Compiles a leaf's `value` for its field and operator.
struct TypedValue<'a> {
    field: &'a Field,
    op: Op,
    case_sensitive: bool,
    path: &'a Path<'a>,
}

impl TypedValue<'_> {
    fn compile(&self, kind: Kind, value: &Value) -> Result<Operand, ConditionError> {
        let op = self.op;
        Ok(match kind {
            Kind::Decimal | Kind::Custom if op.is_ordering() => {
                Operand::Decimal(self.decimal(value, self.path)?)
            }
            Kind::Decimal if matches!(op, Op::In | Op::NotIn) => {
                let items = self.array(value, "numbers or decimal strings")?;
                let list = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.decimal(item, &self.path.index(i)))
                    .collect::<Result<_, _>>()?;
                Operand::DecimalList(list)
            }
            Kind::Decimal => Operand::Decimal(self.decimal(value, self.path)?),
            Kind::Timestamp => Operand::Timestamp(self.timestamp(value)?),
            Kind::Bool => match value {
                Value::Bool(b) => Operand::Bool(*b),
                other => return Err(self.wrong(self.path, "true or false", other)),
            },
            Kind::Text | Kind::Custom => match op {
                Op::In | Op::NotIn => {
                    let items = self.array(value, "strings")?;
                    let raw = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.string(item, &self.path.index(i)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let cmp = raw
                        .iter()
                        .map(|s| fold(s, self.case_sensitive).into_owned())
                        .collect();
                    Operand::TextList { raw, cmp }
                }
                Op::Matches => {
                    let pattern = self.string(value, self.path)?;
                    let re = RegexBuilder::new(&pattern)
                        .case_insensitive(!self.case_sensitive)
                        .build()
                        .map_err(|e| {
                            ConditionError::new(
                                self.path,
                                format!("invalid regex `{pattern}`: {}", regex_error(&e)),
                            )
                        })?;
                    Operand::Regex(re)
                }
                _ => {
                    let raw = self.string(value, self.path)?;
                    let cmp = fold(&raw, self.case_sensitive).into_owned();
                    Operand::Text { raw, cmp }
                }
            },
        })
    }

    fn wrong(&self, path: &Path<'_>, expected: &str, got: &Value) -> ConditionError {
        ConditionError::new(
            path,
            format!(
                "`{}` needs {expected} for field `{}`, got {}",
                self.op,
                self.field,
                show(got)
            ),
        )
    }

    fn string(&self, v: &Value, path: &Path<'_>) -> Result<String, ConditionError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.wrong(path, "a string", other)),
        }
    }

    fn decimal(&self, v: &Value, path: &Path<'_>) -> Result<Decimal, ConditionError> {
        json_decimal(v).ok_or_else(|| self.wrong(path, "a number or decimal string", v))
    }

    fn timestamp(&self, v: &Value) -> Result<Timestamp, ConditionError> {
        match v {
            Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
                .ok()
                .map(|t| t.to_utc()),
            _ => None,
        }
        .ok_or_else(|| {
            self.wrong(
                self.path,
                "an RFC 3339 timestamp such as \"2024-01-31T00:00:00Z\"",
                v,
            )
        })
    }

    fn array<'v>(&self, v: &'v Value, of: &str) -> Result<&'v [Value], ConditionError> {
        match v {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong(self.path, &format!("an array of {of}"), other)),
        }
    }
}

/// The regex crate's syntax errors draw the pattern with a caret over several
/// lines; keep the one line that says what is wrong.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or(text.trim())
        .to_string()
}

/// A named condition from the config's `[[rules]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub condition: Condition,
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json!({
            "id": self.id,
            "description": self.description,
            "when": self.condition.to_json(),
        })
        .serialize(serializer)
    }
}

const RULE_KEYS: [&str; 4] = ["id", "description", "case_sensitive", "when"];

/// Parses one rule object `{"id", "description", "case_sensitive"?, "when"}`.
/// Paths in errors start at the rule: `id`, `when.any[0].op`.
pub fn parse_rule(v: &Value) -> Result<Rule, ConditionError> {
    let root = Path::ROOT;
    let Value::Object(obj) = v else {
        return Err(ConditionError::new(
            &root,
            format!("a rule must be an object, got {}", show(v)),
        ));
    };
    if let Some(key) = obj.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
        return Err(ConditionError::new(
            &root.key(key),
            format!(
                "unknown key `{key}` in rule; expected {}",
                RULE_KEYS.join(", ")
            ),
        ));
    }
    let string = |key: &str| -> Result<String, ConditionError> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None => Err(ConditionError::new(
                &root.key(key),
                format!("missing `{key}`"),
            )),
            Some(other) => Err(ConditionError::new(
                &root.key(key),
                format!("`{key}` must be a string, got {}", show(other)),
            )),
        }
    };
    let id = string("id")?;
    if id.trim().is_empty() {
        return Err(ConditionError::new(
            &root.key("id"),
            "`id` must not be empty",
        ));
    }
    let description = string("description")?;
    let case_sensitive = case_sensitive_key(obj, &root)?.unwrap_or(false);
    let when_path = root.key("when");
    let Some(when) = obj.get("when") else {
        return Err(ConditionError::new(
            &when_path,
            "missing `when`, the rule's condition",
        ));
    };
    let condition = parse_condition(when, &when_path, ParseOptions { case_sensitive })?;
    Ok(Rule {
        id,
        description,
        condition,
    })
}

/// Rules in declaration order, with unique ids.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    by_id: HashMap<String, usize>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, String> {
        let mut by_id = HashMap::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            if rule.id.trim().is_empty() {
                return Err(format!("rule #{} has an empty id", i + 1));
            }
            if by_id.insert(rule.id.clone(), i).is_some() {
                return Err(format!("duplicate rule id `{}`", rule.id));
            }
        }
        Ok(RuleSet { rules, by_id })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every rule the customer matches, in declaration order.
    pub fn matching<'a>(&'a self, c: &'a Customer) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.condition.matches(c))
    }

    /// The first rule, in declaration order, that the customer matches.
    pub fn first_match(&self, c: &Customer) -> Option<&Rule> {
        self.rules.iter().find(|r| r.condition.matches(c))
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.by_id.get(id).map(|&i| &self.rules[i])
    }
}
