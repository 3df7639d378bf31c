//! Explain: why one customer is or is not excluded.
//!
//! Gathers, for one customer, its native flags (enabled or not, applying or
//! not), every rule in force that matches it and whether a manual decision
//! overrides it, the manual decision with who/when/why, what the automatic
//! sources alone would say, and the customer's audit history. Read-only.
//!
//! [`Explanation`] is the extension point for other features: a feature that
//! has its own "why" about a customer (e.g. reminder eligibility) adds a
//! field to it and fills it in its own module; this module does not guess
//! at their logic.

use serde::Serialize;

use super::{ExclusionError, Policy};
use crate::classify::{self, NativeFlag};
use crate::model::{
    Classification, CustomerKey, ExclusionSource, ManualAction, ManualDecision, Timestamp,
};
use crate::store::{AuditEntry, Store};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    pub id: String,
    pub description: String,
    /// This rule decides the classification (first match, no manual decision).
    pub decisive: bool,
    /// A manual decision beats this rule.
    pub overridden: bool,
}

/// Why a customer is or is not excluded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub customer: String,
    pub connector: String,
    pub external_id: String,
    /// False for a customer known only by a manual decision waiting for it.
    pub synced: bool,
    pub name: Option<String>,
    pub excluded: bool,
    /// The stored classification (`None` while not synced).
    pub classification: Option<Classification>,
    pub classified_at: Option<Timestamp>,
    /// The answer in one sentence.
    pub summary: String,
    /// Every native exclusion the connector knows.
    pub native: Vec<NativeFlag>,
    /// Every rule in force that matches, in declaration order.
    pub rules: Vec<RuleMatch>,
    pub manual: Option<ManualDecision>,
    /// What rules and native exclusions alone say: the classification the
    /// customer gets if its manual decision is cleared.
    pub automatic: Option<Classification>,
    /// Classification changes and manual actions, newest first.
    pub history: Vec<AuditEntry>,
    // Extension point: features with their own "why" about a customer
    // (e.g. reminder eligibility) add their fields here.
}

fn day(t: &Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Explains one customer; `NotFound` when it was never synced and has no
/// manual decision.
pub fn explain(
    store: &Store,
    policy: &dyn Policy,
    key: &CustomerKey,
    history_limit: usize,
) -> Result<Explanation, ExclusionError> {
    let manual = store.manual_decision(key)?;
    let stored = store.customer(key)?;
    let history = store.audit(Some(key), history_limit)?;
    let base = Explanation {
        customer: key.to_string(),
        connector: key.connector.clone(),
        external_id: key.external_id.clone(),
        synced: stored.is_some(),
        name: None,
        excluded: false,
        classification: None,
        classified_at: None,
        summary: String::new(),
        native: Vec::new(),
        rules: Vec::new(),
        manual: manual.clone(),
        automatic: None,
        history,
    };
    let Some(sc) = stored else {
        let Some(d) = manual else {
            return Err(ExclusionError::NotFound(format!(
                "unknown customer {key}: never synced and no manual decision waits for it"
            )));
        };
        let summary = match d.action {
            ManualAction::Exclude => format!(
                "not synced yet: a manual exclusion by {} at {} ({}) waits for it, so its invoices and transactions will never be imported",
                d.actor, day(&d.at), d.reason
            ),
            ManualAction::Include => format!(
                "not synced yet: a manual re-include by {} at {} ({}) waits for it",
                d.actor, day(&d.at), d.reason
            ),
        };
        return Ok(Explanation {
            excluded: d.action == ManualAction::Exclude,
            summary,
            ..base
        });
    };

    let rules = policy.rules();
    let enabled = policy.native(&sc.connector);
    let auto = classify::automatic(&sc.customer, &rules, enabled);
    let now = classify::classify(&sc.customer, manual.as_ref(), &rules, enabled);
    let first = rules.first_match(&sc.customer).map(|r| r.id.clone());
    let matches: Vec<RuleMatch> = rules
        .matching(&sc.customer)
        .map(|r| RuleMatch {
            id: r.id.clone(),
            description: r.description.clone(),
            decisive: manual.is_none() && first.as_deref() == Some(r.id.as_str()),
            overridden: manual.is_some(),
        })
        .collect();
    let native = classify::native_flags(&sc.customer, policy.known_native(&sc.connector), enabled);
    let cl = &sc.classification;

    let mut summary = match &manual {
        Some(d) if d.action == ManualAction::Exclude => {
            let mut s = format!(
                "excluded by hand by {} at {}: {}",
                d.actor,
                day(&d.at),
                d.reason
            );
            if auto.excluded {
                s += &format!(" (the automatic sources also exclude it: {})", auto.reason);
            }
            s
        }
        Some(d) => {
            if auto.excluded {
                format!(
                    "included: a manual re-include by {} at {} ({}) overrides {}",
                    d.actor,
                    day(&d.at),
                    d.reason,
                    auto.reason
                )
            } else {
                format!(
                    "included, pinned by a manual re-include by {} at {} ({}); no rule or native exclusion applies",
                    d.actor,
                    day(&d.at),
                    d.reason
                )
            }
        }
        None if auto.excluded && auto.source == Some(ExclusionSource::Rule) => {
            let id = auto.reason.trim_start_matches("rule:");
            let desc = rules.get(id).map(|r| r.description.as_str()).unwrap_or("");
            let mut s = format!("excluded by rule `{id}`");
            if !desc.is_empty() {
                s += &format!(" ({desc})");
            }
            let others: Vec<&str> = matches
                .iter()
                .filter(|m| m.id != id)
                .map(|m| m.id.as_str())
                .collect();
            if !others.is_empty() {
                s += &format!("; also matches {}", others.join(", "));
            }
            s
        }
        None if auto.excluded => {
            let desc = super::search::describe_reason(policy, &sc.connector, &auto.reason);
            format!("excluded natively ({}): {desc}", auto.reason)
        }
        None => "included: no rule matches and no enabled native exclusion applies".into(),
    };
    if now != *cl {
        summary += &format!(
            "; note: the stored classification `{}` predates the rules in force, which give `{}`; the next sync or reload updates it",
            cl.reason, now.reason
        );
    }
    Ok(Explanation {
        name: Some(sc.customer.name.clone()),
        excluded: cl.excluded,
        classification: Some(cl.clone()),
        classified_at: Some(sc.classified_at),
        summary,
        native,
        rules: matches,
        automatic: Some(auto),
        ..base
    })
}
