//! `[[rules]]`: smart exclusion rules, compiled by the rule engine.

use std::collections::HashMap;

use super::raw::RawRule;
use super::Problems;
use crate::rules::{Condition, ConditionError, ParseOptions, Rule, RuleSet};

/// Rule ids appear in reasons (`rule:<id>`), metrics labels and CSV.
fn valid_rule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Compiles a rule's `when` tree given as TOML into a [`Condition`].
fn compile_condition(
    when: &toml::Value,
    case_sensitive: bool,
) -> Result<Condition, ConditionError> {
    let json = serde_json::to_value(when).map_err(|e| ConditionError {
        path: String::new(),
        message: e.to_string(),
    })?;
    Condition::parse(&json, ParseOptions { case_sensitive })
}

pub(super) fn compile(raw: Vec<RawRule>, p: &mut Problems<'_>) -> RuleSet {
    let mut rules = Vec::new();
    let mut rule_lines: HashMap<String, Option<usize>> = HashMap::new();
    for (i, r) in raw.into_iter().enumerate() {
        let id = r.id.get_ref().clone();
        let k = format!("rules[{i}]");
        let id_line = p.line(r.id.span());
        if !valid_rule_id(&id) {
            p.on_line(
                id_line,
                &format!("{k}.id"),
                format!("`{id}` is not a valid rule id (use letters, digits, -, _ and ., at most 64 characters)"),
            );
            continue;
        }
        if let Some(first) = rule_lines.insert(id.clone(), id_line) {
            p.on_line(
                id_line,
                &format!("{k}.id"),
                format!(
                    "duplicate rule id `{id}` (first defined on line {})",
                    first.unwrap_or(0)
                ),
            );
            continue;
        }
        match compile_condition(r.when.get_ref(), r.case_sensitive.unwrap_or(false)) {
            Ok(condition) => rules.push(Rule {
                id,
                description: r.description.unwrap_or_default(),
                condition,
            }),
            Err(e) => {
                let path = e.key_under("when");
                p.at(
                    Some(r.when.span()),
                    &format!("{k}.{path}"),
                    format!("rule `{id}`: {}", e.message),
                );
            }
        }
    }
    match RuleSet::new(rules) {
        Ok(r) => r,
        Err(e) => {
            p.on_line(None, "rules", e);
            RuleSet::default()
        }
    }
}
