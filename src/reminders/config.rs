//! The `[reminders]` table: thresholds, the creditor policy and the
//! scenarios, validated into a [`RemindersConfig`].
//!
//! Like the rest of the config it is read in two stages: serde reads the
//! table with spans (unknown keys and wrong types refused at their line), then
//! [`compile`] checks meaning (decimal amounts, currency codes, minimum not
//! above maximum, scenario conditions, unique ids) and reports **every**
//! problem, each with its line and key. Scenario conditions are compiled by
//! the rule engine ([`crate::rules::Condition`]); there is no second condition
//! language here. Nothing in this file does I/O.
//!
//! Amounts are [`Decimal`]s. They may be written as strings (`"10.50"`,
//! preferred) or as TOML numbers; a TOML float is converted through its
//! shortest round-trip text (`10.5` → `10.5`), never through float arithmetic.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::config::{line_of, Problem};
use crate::rules::{Condition, ParseOptions, Rule, RuleSet};

/// What the candidate list does with creditors (customers whose ERP balance
/// is negative: the business owes them money).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditorPolicy {
    /// Listed, never selected, with reason `creditor`.
    #[default]
    Unchecked,
    /// Left out of the list altogether.
    Hidden,
}

impl CreditorPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditorPolicy::Unchecked => "unchecked",
            CreditorPolicy::Hidden => "hidden",
        }
    }
}

/// A per-currency amount limit: one value for every currency, and/or values
/// for named currencies (a named currency's value wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// Applies to every currency without its own value.
    pub all: Option<Decimal>,
    /// ISO 4217 code → amount.
    pub by_currency: BTreeMap<String, Decimal>,
}

impl Thresholds {
    /// One value for every currency.
    pub fn all(amount: Decimal) -> Self {
        Thresholds {
            all: Some(amount),
            by_currency: BTreeMap::new(),
        }
    }

    /// The limit for `currency`, if any.
    pub fn for_currency(&self, currency: &str) -> Option<Decimal> {
        self.by_currency.get(currency).copied().or(self.all)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.by_currency.is_empty()
    }
}

/// The validated `[reminders]` table. The default (no table) lists every
/// included customer with money due, selects none of them (no scenario
/// applies) and lists creditors unchecked.
#[derive(Debug, Clone, Default)]
pub struct RemindersConfig {
    pub minimum_total: Thresholds,
    pub maximum_total: Thresholds,
    pub creditors: CreditorPolicy,
    /// In declaration order; a customer's scenario is the first that matches.
    pub scenarios: RuleSet,
}

impl RemindersConfig {
    /// The scenario of a customer: the first that matches.
    pub fn scenario_for(&self, c: &crate::model::Customer) -> Option<&Rule> {
        self.scenarios.first_match(c)
    }
}

// ----- raw form --------------------------------------------------------------

/// The config document, reading only `[reminders]` (every other table was
/// already checked by `config::raw`).
#[derive(Debug, Deserialize)]
struct Doc {
    reminders: Option<RawReminders>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReminders {
    minimum_total: Option<Spanned<toml::Value>>,
    maximum_total: Option<Spanned<toml::Value>>,
    creditors: Option<Spanned<String>>,
    #[serde(default)]
    scenarios: Vec<RawScenario>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    id: Spanned<String>,
    description: Option<String>,
    case_sensitive: Option<bool>,
    when: Spanned<toml::Value>,
}

// ----- compile ---------------------------------------------------------------

/// Reads and validates the `[reminders]` table of a config file's `text`.
/// Every problem carries its line and a key under `reminders.`.
pub fn compile(text: &str) -> Result<RemindersConfig, Vec<Problem>> {
    let doc: Doc = toml::from_str(text).map_err(|e| {
        vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            key: "reminders".into(),
            message: e.message().trim().to_string(),
        }]
    })?;
    let Some(raw) = doc.reminders else {
        return Ok(RemindersConfig::default());
    };
    let mut problems = Vec::new();
    let mut push = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
        problems.push(Problem {
            line: span.map(|s| line_of(text, s.start)),
            key,
            message,
        })
    };

    let mut thresholds = |name: &str, v: &Option<Spanned<toml::Value>>| -> Thresholds {
        let Some(v) = v else {
            return Thresholds::default();
        };
        match parse_thresholds(v.get_ref()) {
            Ok(t) => t,
            Err(errs) => {
                for (sub, msg) in errs {
                    push(Some(v.span()), format!("reminders.{name}{sub}"), msg);
                }
                Thresholds::default()
            }
        }
    };
    let minimum_total = thresholds("minimum_total", &raw.minimum_total);
    let maximum_total = thresholds("maximum_total", &raw.maximum_total);
    for (currency, min, max) in conflicts(&minimum_total, &maximum_total) {
        push(
            raw.minimum_total.as_ref().map(Spanned::span),
            "reminders.minimum_total".into(),
            format!(
                "the minimum {min} is above the maximum {max} for {currency}; no customer could be selected"
            ),
        );
    }

    let creditors = match &raw.creditors {
        None => CreditorPolicy::default(),
        Some(s) => match s.get_ref().as_str() {
            "unchecked" => CreditorPolicy::Unchecked,
            "hidden" => CreditorPolicy::Hidden,
            other => {
                push(
                    Some(s.span()),
                    "reminders.creditors".into(),
                    format!("`{other}` is not a creditor policy; use \"unchecked\" (listed, not selected) or \"hidden\" (not listed)"),
                );
                CreditorPolicy::default()
            }
        },
    };

    let mut scenarios = Vec::new();
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    for (i, s) in raw.scenarios.iter().enumerate() {
        let id = s.id.get_ref().trim().to_string();
        let key = |sub: &str| format!("reminders.scenarios[{i}].{sub}");
        let line = line_of(text, s.id.span().start);
        if id.is_empty() {
            push(
                Some(s.id.span()),
                key("id"),
                "a scenario needs a non-empty id".into(),
            );
            continue;
        }
        if let Some(first) = first_line.insert(id.clone(), line) {
            push(
                Some(s.id.span()),
                key("id"),
                format!("duplicate scenario id `{id}` (first defined on line {first})"),
            );
            continue;
        }
        let json = match serde_json::to_value(s.when.get_ref()) {
            Ok(j) => j,
            Err(e) => {
                push(
                    Some(s.when.span()),
                    key("when"),
                    format!("scenario `{id}`: when: {e}"),
                );
                continue;
            }
        };
        let opts = ParseOptions {
            case_sensitive: s.case_sensitive.unwrap_or(false),
        };
        match Condition::parse(&json, opts) {
            Ok(condition) => scenarios.push(Rule {
                id,
                description: s.description.clone().unwrap_or_default(),
                condition,
            }),
            Err(e) => {
                let path = e.key_under("when");
                push(
                    Some(s.when.span()),
                    key(&path),
                    format!("scenario `{id}`: {path}: {}", e.message),
                );
            }
        }
    }
    // Ids were checked above, so this cannot fail; keep the error anyway
    // rather than panic should the two checks ever drift apart.
    let scenarios = RuleSet::new(scenarios).unwrap_or_else(|e| {
        problems.push(Problem {
            line: None,
            key: "reminders.scenarios".into(),
            message: e,
        });
        RuleSet::default()
    });

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(RemindersConfig {
        minimum_total,
        maximum_total,
        creditors,
        scenarios,
    })
}

/// `"10.00"`, `10`, `10.5`, or a table `{ USD = "10", EUR = "8" }`. Errors are
/// (key suffix, message) pairs, all of them.
fn parse_thresholds(v: &toml::Value) -> Result<Thresholds, Vec<(String, String)>> {
    match v {
        toml::Value::Table(t) => {
            let mut out = Thresholds::default();
            let mut errs = Vec::new();
            for (currency, amount) in t {
                let sub = format!(".{currency}");
                if !is_currency_code(currency) {
                    errs.push((
                        sub,
                        format!("`{currency}` is not a currency code; use ISO 4217 codes in upper case, like USD or EUR"),
                    ));
                    continue;
                }
                match parse_amount(amount) {
                    Ok(d) => {
                        out.by_currency.insert(currency.clone(), d);
                    }
                    Err(m) => errs.push((sub, m)),
                }
            }
            if errs.is_empty() {
                Ok(out)
            } else {
                Err(errs)
            }
        }
        other => parse_amount(other)
            .map(Thresholds::all)
            .map_err(|m| vec![(String::new(), m)]),
    }
}

fn is_currency_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// A non-negative decimal amount from a TOML string, integer or float.
pub(crate) fn parse_amount(v: &toml::Value) -> Result<Decimal, String> {
    let d = match v {
        toml::Value::String(s) => Decimal::from_str(s)
            .map_err(|_| format!("`{s}` is not a decimal amount; write it like \"10.50\""))?,
        toml::Value::Integer(i) => Decimal::from(*i),
        toml::Value::Float(f) if f.is_finite() => Decimal::from_str(&f.to_string())
            .map_err(|_| format!("{f} is out of range for an amount; write it as a string"))?,
        other => {
            return Err(format!(
                "expected an amount like \"10.50\" or a table of amounts by currency, got {}",
                describe(other)
            ))
        }
    };
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!("{d} is negative; amounts must be 0 or more"));
    }
    Ok(d)
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) => format!("the float {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
        toml::Value::String(s) => format!("the string \"{s}\""),
        toml::Value::Integer(i) => format!("the integer {i}"),
    }
}

/// Currencies (or `all currencies`) whose minimum is above their maximum.
fn conflicts(min: &Thresholds, max: &Thresholds) -> Vec<(String, Decimal, Decimal)> {
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (min.all, max.all) {
        if a > b {
            out.push(("all currencies".to_string(), a, b));
        }
    }
    let named: std::collections::BTreeSet<&String> = min
        .by_currency
        .keys()
        .chain(max.by_currency.keys())
        .collect();
    for c in named {
        if let (Some(a), Some(b)) = (min.for_currency(c), max.for_currency(c)) {
            if a > b {
                out.push((c.clone(), a, b));
            }
        }
    }
    out
}
