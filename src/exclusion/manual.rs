//! Manual decisions: exclude, re-include and clear, one customer or a list,
//! and mass exclusion of everything matching a search or a condition.
//!
//! A manual decision beats rules and native exclusions (see
//! [`classify`](crate::classify)). Each operation validates everything first
//! and then runs in **one** store write, so a request either changes all its
//! customers or none. Transitions go through [`super::apply`]: becoming
//! excluded purges the customer's invoices and transactions, becoming
//! included queues one durable resync job per connector. A customer may be
//! excluded by its external id before it was ever synced: the decision waits
//! in the store and ingest applies it when the customer arrives, so its data
//! is never imported. This module does not wake the resync worker (callers
//! with the running daemon do) and knows nothing about HTTP.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::search::{self, CustomerSummary, Filter};
use super::{apply, write_or_refuse, ExclusionError, Policy};
use crate::classify;
use crate::model::{Classification, CustomerKey, ManualAction, ManualDecision, Timestamp};
use crate::resync::queue;
use crate::rules::Condition;
use crate::store::valid_id;
use crate::store::{AuditEntry, Store, StoredCustomer, Tx};

type Result<T, E = ExclusionError> = std::result::Result<T, E>;

/// Longest accepted reason and actor, so the audit trail stays readable.
pub const MAX_REASON: usize = 2000;
pub const MAX_ACTOR: usize = 200;
/// How many customers a mass-exclusion impact lists as a sample.
pub const MASS_SAMPLE: usize = 20;
/// How many customers a mass exclusion's outcome lists.
pub const MASS_LISTED: usize = 100;
/// Most customers one request may name (exclude, re-include, resync); a
/// longer list is refused whole. Larger selections use mass exclusion.
pub const MAX_CUSTOMERS_PER_REQUEST: usize = 10_000;

/// Refuses a list of more than [`MAX_CUSTOMERS_PER_REQUEST`] customers.
pub fn check_list_len(n: usize) -> Result<()> {
    if n > MAX_CUSTOMERS_PER_REQUEST {
        return Err(ExclusionError::Invalid(format!(
            "`customers` names {n} customers; at most {MAX_CUSTOMERS_PER_REQUEST} are accepted per request: split the list"
        )));
    }
    Ok(())
}

/// Who decides and why.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub reason: String,
    pub at: Timestamp,
}

impl Actor {
    /// Validates the actor and reason; `reason_required` for exclusions.
    pub fn new(
        name: Option<&str>,
        reason: Option<&str>,
        default_reason: &str,
        at: Timestamp,
    ) -> Result<Actor> {
        let name = name.map(str::trim).unwrap_or("admin");
        if name.is_empty() || name.chars().count() > MAX_ACTOR {
            return Err(ExclusionError::Invalid(format!(
                "`actor` must be 1 to {MAX_ACTOR} characters"
            )));
        }
        let reason = reason.map(str::trim).unwrap_or(default_reason);
        if reason.is_empty() {
            return Err(ExclusionError::Invalid(
                "`reason` is required: say why, it is kept in the audit trail".into(),
            ));
        }
        if reason.chars().count() > MAX_REASON {
            return Err(ExclusionError::Invalid(format!(
                "`reason` is longer than {MAX_REASON} characters"
            )));
        }
        Ok(Actor {
            name: name.to_string(),
            reason: reason.to_string(),
            at,
        })
    }
}

/// Parses `connector:external_id` references, refusing unknown connectors,
/// ids the store cannot hold, an empty list and one longer than
/// [`MAX_CUSTOMERS_PER_REQUEST`]; duplicates are dropped (first one kept).
pub fn parse_refs(refs: &[String], policy: &dyn Policy) -> Result<Vec<CustomerKey>> {
    if refs.is_empty() {
        return Err(ExclusionError::Invalid(
            "`customers` is empty: name at least one CONNECTOR:EXTERNAL_ID".into(),
        ));
    }
    check_list_len(refs.len())?;
    let connectors = policy.connector_ids();
    let mut seen: HashSet<CustomerKey> = HashSet::with_capacity(refs.len());
    let mut out: Vec<CustomerKey> = Vec::with_capacity(refs.len());
    for r in refs {
        let key = parse_key(r)?;
        if !connectors.contains(&key.connector) {
            policy.check_connector(&key.connector)?;
        }
        if seen.insert(key.clone()) {
            out.push(key);
        }
    }
    Ok(out)
}

/// Parses one reference (see [`parse_refs`]).
pub fn parse_ref(r: &str, policy: &dyn Policy) -> Result<CustomerKey> {
    let key = parse_key(r)?;
    policy.check_connector(&key.connector)?;
    Ok(key)
}

/// A reference's syntax and id, without checking its connector.
fn parse_key(r: &str) -> Result<CustomerKey> {
    let key = CustomerKey::parse(r).map_err(ExclusionError::Invalid)?;
    if !valid_id(&key.external_id) {
        return Err(ExclusionError::Invalid(format!(
            "`{}` is not a valid external id (it contains a NUL byte)",
            key.external_id.replace('\0', "\\0")
        )));
    }
    Ok(key)
}

/// An id for a message: control and bidi characters escaped, at most 64
/// characters.
fn printable(id: &str) -> String {
    let mut out: String = id
        .chars()
        .take(64)
        .flat_map(|c| {
            if c.is_control() || ('\u{2000}'..='\u{206F}').contains(&c) || c == '\u{061C}' {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if id.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// What happened to one customer of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Became excluded now (its records were purged).
    Excluded,
    /// Was already excluded (by a rule or natively); the manual decision now
    /// makes it stick.
    ExclusionPinned,
    /// Already had a manual exclusion: nothing changed.
    AlreadyExcluded,
    /// Not synced yet: the exclusion waits for it.
    Pending,
    /// Became included now (queued for resync).
    Included,
    /// Was already included; the manual decision now makes it stick.
    InclusionPinned,
    /// Already had a manual re-include: nothing changed.
    AlreadyIncluded,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerEffect {
    pub customer: String,
    pub effect: Effect,
    /// The classification after the request (`None` while pending).
    pub classification: Option<Classification>,
}

/// What a manual request changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// Customers whose manual decision was set by this request.
    pub changed: u64,
    /// Customers that already had this decision.
    pub unchanged: u64,
    /// Exclusions waiting for a customer never synced.
    pub pending: u64,
    pub newly_excluded: u64,
    pub newly_included: u64,
    pub purged_invoices: u64,
    pub purged_transactions: u64,
    /// Re-included customers now waiting in a resync job.
    pub queued_for_resync: u64,
    pub resync_jobs: Vec<u64>,
    pub customers: Vec<CustomerEffect>,
}

/// Manually excludes customers (stored or not yet synced).
pub async fn exclude(
    store: &Store,
    policy: &dyn Policy,
    keys: &[CustomerKey],
    actor: &Actor,
) -> Result<Outcome> {
    write_or_refuse(store, |tx| {
        let mut out = Outcome::default();
        for key in keys {
            exclude_one(tx, policy, key, actor, &mut out)?;
        }
        Ok(out)
    })
    .await
}

fn decision(action: ManualAction, actor: &Actor) -> ManualDecision {
    ManualDecision {
        action,
        actor: actor.name.clone(),
        reason: actor.reason.clone(),
        at: actor.at,
    }
}

fn audit_decision(
    tx: &mut Tx<'_>,
    key: &CustomerKey,
    action: &str,
    actor: &Actor,
    reason: &str,
) -> crate::store::Result<()> {
    tx.audit(AuditEntry::action(
        actor.at,
        key.clone(),
        action,
        actor.name.clone(),
        reason,
    ))?;
    Ok(())
}

/// Re-classifies a stored customer (manual decision already written) and
/// applies the result.
fn reclassify(
    tx: &mut Tx<'_>,
    policy: &dyn Policy,
    sc: &mut StoredCustomer,
    actor: &Actor,
    queue_resync: bool,
) -> Result<super::Transition> {
    let key = sc.key();
    let manual = tx.manual_decision(&key)?;
    let rules = policy.rules();
    let class = classify::classify(
        &sc.customer,
        manual.as_ref(),
        &rules,
        policy.native(&sc.connector),
    );
    let was = sc.classification.clone();
    Ok(apply(
        tx,
        sc,
        Some(&was),
        class,
        &actor.name,
        &actor.reason,
        actor.at,
        queue_resync,
    )?)
}

fn exclude_one(
    tx: &mut Tx<'_>,
    policy: &dyn Policy,
    key: &CustomerKey,
    actor: &Actor,
    out: &mut Outcome,
) -> Result<()> {
    let prev = tx.manual_decision(key)?;
    let stored = tx.customer(key)?;
    if prev.as_ref().map(|d| d.action) == Some(ManualAction::Exclude) {
        out.unchanged += 1;
        out.customers.push(CustomerEffect {
            customer: key.to_string(),
            effect: if stored.is_some() {
                Effect::AlreadyExcluded
            } else {
                Effect::Pending
            },
            classification: stored.map(|s| s.classification),
        });
        return Ok(());
    }
    if stored.is_none() {
        // The id comes from a person, not the ERP: it must have the ERP's
        // form before a pending decision is kept for it.
        policy
            .check_new_id(&key.connector, &key.external_id)
            .map_err(|why| {
                ExclusionError::Invalid(format!(
                    "`{}` is not a customer of `{}` yet, and cannot be one: {why}",
                    printable(&key.external_id),
                    key.connector
                ))
            })?;
    }
    tx.set_manual_decision(key, Some(&decision(ManualAction::Exclude, actor)))?;
    audit_decision(tx, key, "manual_exclude", actor, &actor.reason)?;
    out.changed += 1;
    let effect = match stored {
        Some(mut sc) => {
            let t = reclassify(tx, policy, &mut sc, actor, false)?;
            out.purged_invoices += t.purged_invoices;
            out.purged_transactions += t.purged_transactions;
            let effect = if t.newly_excluded {
                out.newly_excluded += 1;
                Effect::Excluded
            } else {
                Effect::ExclusionPinned
            };
            out.customers.push(CustomerEffect {
                customer: key.to_string(),
                effect,
                classification: Some(sc.classification),
            });
            return Ok(());
        }
        None => {
            // Records parked while waiting for this customer are data of an
            // excluded customer now: take them out.
            let (i, t) = tx.purge_customer_records(key)?;
            out.purged_invoices += i;
            out.purged_transactions += t;
            out.pending += 1;
            Effect::Pending
        }
    };
    out.customers.push(CustomerEffect {
        customer: key.to_string(),
        effect,
        classification: None,
    });
    Ok(())
}

/// Manually re-includes stored customers. The decision sticks against rules
/// and native exclusions; those that become included are queued for resync.
pub async fn include(
    store: &Store,
    policy: &dyn Policy,
    keys: &[CustomerKey],
    actor: &Actor,
) -> Result<Outcome> {
    write_or_refuse(store, |tx| {
        let mut out = Outcome::default();
        let mut reincluded: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in keys {
            let Some(mut sc) = tx.customer(key)? else {
                let hint = match tx.manual_decision(key)? {
                    Some(_) => format!(
                        "; it has a manual decision waiting for its first sync, withdraw it with DELETE /api/v1/customers/{}/{}/decision",
                        key.connector, key.external_id
                    ),
                    None => String::new(),
                };
                return Err(ExclusionError::NotFound(format!(
                    "unknown customer {key}: it was never synced{hint}"
                )));
            };
            let prev = tx.manual_decision(key)?;
            if prev.map(|d| d.action) == Some(ManualAction::Include) {
                out.unchanged += 1;
                out.customers.push(CustomerEffect {
                    customer: key.to_string(),
                    effect: Effect::AlreadyIncluded,
                    classification: Some(sc.classification),
                });
                continue;
            }
            tx.set_manual_decision(key, Some(&decision(ManualAction::Include, actor)))?;
            audit_decision(tx, key, "manual_include", actor, &actor.reason)?;
            out.changed += 1;
            let t = reclassify(tx, policy, &mut sc, actor, false)?;
            let effect = if t.newly_included {
                out.newly_included += 1;
                reincluded
                    .entry(key.connector.clone())
                    .or_default()
                    .push(key.external_id.clone());
                Effect::Included
            } else {
                Effect::InclusionPinned
            };
            out.customers.push(CustomerEffect {
                customer: key.to_string(),
                effect,
                classification: Some(sc.classification),
            });
        }
        for (connector, ids) in &reincluded {
            let why = format!("manual re-include by {}: {}", actor.name, actor.reason);
            if let Some(job) = queue::enqueue(tx, connector, ids, &why, actor.at)? {
                out.resync_jobs.push(job);
            }
            out.queued_for_resync += ids.len() as u64;
        }
        Ok(out)
    })
    .await
}

/// What clearing a manual decision did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cleared {
    pub customer: String,
    pub previous: ManualDecision,
    /// The automatic classification now in force (`None`: never synced).
    pub classification: Option<Classification>,
    pub newly_excluded: bool,
    pub newly_included: bool,
    pub purged_invoices: u64,
    pub purged_transactions: u64,
    pub resync_job: Option<u64>,
}

/// Removes a customer's manual decision, handing it back to rules and native
/// exclusions.
pub async fn clear(
    store: &Store,
    policy: &dyn Policy,
    key: &CustomerKey,
    actor: &Actor,
) -> Result<Cleared> {
    write_or_refuse(store, |tx| {
        let Some(previous) = tx.manual_decision(key)? else {
            return Err(ExclusionError::NotFound(format!(
                "{key} has no manual decision to clear"
            )));
        };
        tx.set_manual_decision(key, None)?;
        let what = match previous.action {
            ManualAction::Exclude => "exclusion",
            ManualAction::Include => "re-include",
        };
        let why = format!(
            "{}; cleared manual {what} by {} ({})",
            actor.reason, previous.actor, previous.reason
        );
        audit_decision(tx, key, "manual_cleared", actor, &why)?;
        let mut out = Cleared {
            customer: key.to_string(),
            previous,
            classification: None,
            newly_excluded: false,
            newly_included: false,
            purged_invoices: 0,
            purged_transactions: 0,
            resync_job: None,
        };
        if let Some(mut sc) = tx.customer(key)? {
            let t = reclassify(tx, policy, &mut sc, actor, true)?;
            out.classification = Some(sc.classification);
            out.newly_excluded = t.newly_excluded;
            out.newly_included = t.newly_included;
            out.purged_invoices = t.purged_invoices;
            out.purged_transactions = t.purged_transactions;
            out.resync_job = t.resync_job;
        }
        Ok(out)
    })
    .await
}

/// Which customers a mass exclusion takes: stored customers matching the
/// search text and connector, and the condition when given.
#[derive(Debug, Clone)]
pub struct Selection {
    pub filter: Filter,
    pub condition: Option<Condition>,
}

impl Selection {
    /// Refuses a selection without any criterion: "everything" must be
    /// asked for explicitly, with the condition `{"all": []}`.
    pub fn new(filter: Filter, condition: Option<Condition>) -> Result<Selection> {
        if !filter.has_text() && condition.is_none() {
            return Err(ExclusionError::Invalid(
                "a mass exclusion needs `q` or `condition`; to select every customer say so with \"condition\": {\"all\": []}".into(),
            ));
        }
        Ok(Selection { filter, condition })
    }

    fn matches(&self, sc: &StoredCustomer) -> bool {
        self.filter.matches(sc)
            && self
                .condition
                .as_ref()
                .is_none_or(|c| c.matches(&sc.customer))
    }
}

/// What a mass exclusion would do.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MassImpact {
    /// Customers that would get a manual exclusion (those that already have
    /// one are not counted). Confirm with this number.
    pub customers: u64,
    /// Of those, customers included today (their data would be deleted).
    pub newly_excluded: u64,
    pub invoices: u64,
    pub transactions: u64,
    /// The first few selected customers.
    pub sample: Vec<CustomerSummary>,
}

/// Scans the selection: the keys it takes and the impact. Reads committed
/// data only, so inside a write it sees the state the write starts from.
fn scan_selection(store: &Store, sel: &Selection) -> Result<(Vec<CustomerKey>, MassImpact)> {
    let mut keys = Vec::new();
    let mut impact = MassImpact::default();
    // Customers come with their decisions, a page at a time; the records of
    // the included ones are counted per stretch, in a few grouped queries.
    let mut customers = store.customers_with_decisions(sel.filter.connector.as_deref(), None);
    loop {
        let chunk = customers
            .by_ref()
            .take(512)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if chunk.is_empty() {
            break;
        }
        let mut included: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (sc, d) in &chunk {
            if !sel.matches(sc) || d.as_ref().map(|d| d.action) == Some(ManualAction::Exclude) {
                continue;
            }
            impact.customers += 1;
            if !sc.classification.excluded {
                impact.newly_excluded += 1;
                included
                    .entry(sc.connector.as_str())
                    .or_default()
                    .push(sc.customer.external_id.as_str());
            }
            if impact.sample.len() < MASS_SAMPLE {
                impact.sample.push(search::summary_with(sc, d.clone()));
            }
            keys.push(sc.key());
        }
        for (conn, ids) in included {
            for (invoices, transactions) in store.record_counts(conn, &ids)?.into_values() {
                impact.invoices += invoices;
                impact.transactions += transactions;
            }
        }
    }
    Ok((keys, impact))
}

/// The impact of a mass exclusion, without changing anything.
pub fn mass_impact(store: &Store, sel: &Selection) -> Result<MassImpact> {
    Ok(scan_selection(store, sel)?.1)
}

/// Applies a mass exclusion if the selection still has exactly `confirm`
/// customers; otherwise refuses with the current count and changes nothing.
/// The outcome lists the first [`MASS_LISTED`] customers only; its counts
/// cover all of them.
pub async fn mass_exclude(
    store: &Store,
    policy: &dyn Policy,
    sel: &Selection,
    actor: &Actor,
    confirm: u64,
) -> Result<(MassImpact, Outcome)> {
    write_or_refuse(store, |tx| {
        // Under the writer lock: nothing else commits while we scan, so the
        // count we check is the set we change.
        let (keys, impact) = scan_selection(store, sel)?;
        if impact.customers != confirm {
            return Err(ExclusionError::Conflict(format!(
                "the selection now matches {} customers, not {confirm}: review the impact and confirm with {}",
                impact.customers, impact.customers
            )));
        }
        let mut out = Outcome::default();
        for key in &keys {
            exclude_one(tx, policy, key, actor, &mut out)?;
        }
        out.customers.truncate(MASS_LISTED);
        Ok((impact, out))
    })
    .await
}
