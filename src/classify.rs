//! Classification: decides whether one customer is excluded, and why.
//!
//! Precedence: a manual decision beats smart rules, which beat native
//! exclusions. Pure functions: no store, no I/O; callers pass the manual
//! decision, the rule set and the connector's enabled native exclusions.

use serde::Serialize;

use crate::connectors::NativeExclusion;
use crate::model::{Classification, Customer, ExclusionSource, ManualAction, ManualDecision};
use crate::rules::RuleSet;

/// What the automatic sources (rules, then native) say, ignoring any manual
/// decision.
pub fn automatic(
    customer: &Customer,
    rules: &RuleSet,
    native: &[NativeExclusion],
) -> Classification {
    if let Some(rule) = rules.first_match(customer) {
        return Classification {
            excluded: true,
            source: Some(ExclusionSource::Rule),
            reason: format!("rule:{}", rule.id),
        };
    }
    if let Some(n) = native.iter().find(|n| (n.applies)(customer)) {
        return Classification {
            excluded: true,
            source: Some(ExclusionSource::Native),
            reason: format!("native:{}", n.name),
        };
    }
    Classification::included()
}

/// The full classification: manual decision > rules > native.
///
/// A manual re-include that overrides an automatic exclusion is recorded as
/// `manual:overrides <reason>` so `/status` can count such conflicts and
/// explain can show them.
pub fn classify(
    customer: &Customer,
    manual: Option<&ManualDecision>,
    rules: &RuleSet,
    native: &[NativeExclusion],
) -> Classification {
    let auto = automatic(customer, rules, native);
    match manual.map(|m| m.action) {
        Some(ManualAction::Exclude) => Classification {
            excluded: true,
            source: Some(ExclusionSource::Manual),
            reason: "manual".into(),
        },
        Some(ManualAction::Include) => Classification {
            excluded: false,
            source: Some(ExclusionSource::Manual),
            reason: if auto.excluded {
                format!("manual:overrides {}", auto.reason)
            } else {
                "manual".into()
            },
        },
        None => auto,
    }
}

/// Every native exclusion of a connector with whether it is enabled and
/// whether it applies to this customer (for explain).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NativeFlag {
    pub name: &'static str,
    pub description: &'static str,
    pub enabled: bool,
    pub applies: bool,
}

pub fn native_flags(
    customer: &Customer,
    known: &[NativeExclusion],
    enabled: &[NativeExclusion],
) -> Vec<NativeFlag> {
    known
        .iter()
        .map(|n| NativeFlag {
            name: n.name,
            description: n.description,
            enabled: enabled.iter().any(|e| e.name == n.name),
            applies: (n.applies)(customer),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::{NATIVE_INACTIVE, NATIVE_INTERCOMPANY};
    use crate::rules::{Condition, ParseOptions, Rule};
    use chrono::Utc;

    fn customer(name: &str, inactive: bool) -> Customer {
        Customer {
            external_id: "C1".into(),
            name: name.into(),
            email: None,
            subsidiary: None,
            currency: None,
            balance: Default::default(),
            inactive,
            intercompany: false,
            last_modified: Utc::now(),
            custom: Default::default(),
        }
    }

    fn rules() -> RuleSet {
        let cond = Condition::parse(
            &serde_json::json!({"field": "name", "op": "contains", "value": "test"}),
            ParseOptions::default(),
        )
        .unwrap();
        RuleSet::new(vec![Rule {
            id: "tests".into(),
            description: "test accounts".into(),
            condition: cond,
        }])
        .unwrap()
    }

    fn manual(action: ManualAction) -> ManualDecision {
        ManualDecision {
            action,
            actor: "admin".into(),
            reason: "because".into(),
            at: Utc::now(),
        }
    }

    #[test]
    fn precedence_manual_over_rules_over_native() {
        let native = [NATIVE_INACTIVE, NATIVE_INTERCOMPANY];
        let check = |c: &Customer, m: Option<ManualAction>, excluded: bool, reason: &str| {
            let d = m.map(manual);
            let got = classify(c, d.as_ref(), &rules(), &native);
            assert_eq!(
                (got.excluded, got.reason.as_str()),
                (excluded, reason),
                "{c:?} {m:?}"
            );
        };
        check(&customer("Acme", false), None, false, "included");
        check(&customer("Acme", true), None, true, "native:inactive");
        check(&customer("Test Co", true), None, true, "rule:tests");
        check(
            &customer("Test Co", true),
            Some(ManualAction::Include),
            false,
            "manual:overrides rule:tests",
        );
        check(
            &customer("Acme", true),
            Some(ManualAction::Include),
            false,
            "manual:overrides native:inactive",
        );
        check(
            &customer("Acme", false),
            Some(ManualAction::Include),
            false,
            "manual",
        );
        check(
            &customer("Acme", false),
            Some(ManualAction::Exclude),
            true,
            "manual",
        );
    }

    #[test]
    fn disabled_native_exclusions_do_not_apply() {
        let got = classify(
            &customer("Acme", true),
            None,
            &RuleSet::default(),
            &[NATIVE_INTERCOMPANY],
        );
        assert!(!got.excluded);
        let flags = native_flags(
            &customer("Acme", true),
            &[NATIVE_INACTIVE, NATIVE_INTERCOMPANY],
            &[NATIVE_INTERCOMPANY],
        );
        assert_eq!(flags[0].name, "inactive");
        assert!(flags[0].applies && !flags[0].enabled);
    }
}
