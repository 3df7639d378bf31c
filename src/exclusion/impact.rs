//! What a rule set would change, and re-classifying every stored customer
//! when the rules in force change.
//!
//! [`of_rules`] is shared by `POST /api/v1/rules/preview` and by reload's
//! ratio check: it classifies every stored customer with the candidate rules
//! (manual decisions and native exclusions included) and compares with the
//! classification stored today. It only reads. [`reclassify_all`] is what a
//! reload applies once the new rules are in force: batches of a few hundred
//! customers per store write, each customer's transition through
//! [`super::apply`], re-included customers of a batch queued in one resync
//! job per connector.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{apply, Policy};
use crate::classify;
use crate::model::{Classification, CustomerKey, ManualDecision};
use crate::resync::queue;
use crate::rules::RuleSet;
use crate::store::{Result, Store, StoredCustomer};

/// How many customers each list of an impact shows at most.
pub const LIST_LIMIT: usize = 1000;

/// Customers whose records are counted together.
const COUNT_BATCH: usize = 512;
/// Customers re-classified per store write during a reload.
pub const RECLASSIFY_BATCH: usize = 256;

/// One customer whose classification would change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub customer: String,
    pub name: String,
    /// Classification reason today and with the candidate rules.
    pub from: String,
    pub to: String,
    /// Stored records that would be purged (newly excluded customers only).
    pub invoices: u64,
    pub transactions: u64,
}

/// How many customers one rule of the candidate set matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleImpact {
    pub id: String,
    pub description: String,
    /// Customers the rule matches.
    pub matching: u64,
    /// Customers this rule would exclude: it is their first matching rule
    /// and no manual decision overrides it.
    pub excluding: u64,
}

/// The impact of a candidate rule set on the stored customers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Impact {
    pub total_customers: u64,
    /// Included today, excluded with the candidate rules.
    pub would_exclude: u64,
    /// Excluded today, included with the candidate rules.
    pub would_include: u64,
    /// Same state but another reason (e.g. `native:inactive` → `rule:x`).
    pub reason_changes: u64,
    pub invoices_to_purge: u64,
    pub transactions_to_purge: u64,
    /// `would_exclude / total_customers` (0 with no customers).
    pub new_exclusion_ratio: f64,
    pub rules: Vec<RuleImpact>,
    /// The first [`LIST_LIMIT`] customers of each kind of change.
    pub newly_excluded: Vec<Change>,
    pub newly_included: Vec<Change>,
    /// Whether a list was cut at [`LIST_LIMIT`].
    pub truncated: bool,
}

impl Impact {
    /// Whether applying these rules stays within `max_ratio` of new exclusions.
    pub fn within_ratio(&self, max_ratio: f64) -> bool {
        self.new_exclusion_ratio <= max_ratio
    }

    /// One line for logs and reload results.
    pub fn describe(&self) -> String {
        format!(
            "would exclude {} and re-include {} of {} customers ({:.1}% newly excluded), deleting {} invoices and {} transactions",
            self.would_exclude,
            self.would_include,
            self.total_customers,
            self.new_exclusion_ratio * 100.0,
            self.invoices_to_purge,
            self.transactions_to_purge
        )
    }
}

fn change(sc: &StoredCustomer, to: &Classification) -> Change {
    Change {
        customer: sc.key().to_string(),
        name: sc.customer.name.clone(),
        from: sc.classification.reason.clone(),
        to: to.reason.clone(),
        invoices: 0,
        transactions: 0,
    }
}

/// Classifies every stored customer with `rules` and compares with today.
/// Changes nothing.
pub fn of_rules(store: &Store, policy: &dyn Policy, rules: &RuleSet) -> Result<Impact> {
    of_rules_since(store, policy, None, rules)
}

/// How a customer was classified under some earlier policy: its stored
/// customer and manual decision in, its classification then out.
pub type Baseline<'a> = &'a dyn Fn(&StoredCustomer, Option<&ManualDecision>) -> Classification;

/// Like [`of_rules`], but compares with the classification `baseline`
/// gives each customer instead of the stored one: a reload cut short left
/// some customers classified with rules that never completed, and the ratio
/// guard must measure a change against the last policy that did.
pub fn of_rules_since(
    store: &Store,
    policy: &dyn Policy,
    baseline: Option<Baseline<'_>>,
    rules: &RuleSet,
) -> Result<Impact> {
    let mut imp = Impact {
        rules: rules
            .rules()
            .iter()
            .map(|r| RuleImpact {
                id: r.id.clone(),
                description: r.description.clone(),
                matching: 0,
                excluding: 0,
            })
            .collect(),
        ..Default::default()
    };
    // Customers come with their decisions, a page at a time; the records
    // of those that would be excluded are counted per stretch, in a few
    // grouped queries.
    let mut customers = store.customers_with_decisions(None, None);
    loop {
        let chunk = customers
            .by_ref()
            .take(COUNT_BATCH)
            .collect::<Result<Vec<_>>>()?;
        if chunk.is_empty() {
            break;
        }
        // Customers that would lose their data, with their place in the list.
        let mut to_count: Vec<(CustomerKey, Option<usize>)> = Vec::new();
        for (sc, manual) in &chunk {
            imp.total_customers += 1;
            for (i, r) in rules.rules().iter().enumerate() {
                if r.condition.matches(&sc.customer) {
                    imp.rules[i].matching += 1;
                }
            }
            let new = classify::classify(
                &sc.customer,
                manual.as_ref(),
                rules,
                policy.native(&sc.connector),
            );
            if let Some(id) = new.reason.strip_prefix("rule:") {
                if let Some(ri) = imp.rules.iter_mut().find(|r| r.id == id) {
                    ri.excluding += 1;
                }
            }
            let then = baseline.map(|b| b(sc, manual.as_ref()));
            let old = then.as_ref().unwrap_or(&sc.classification);
            if new == *old {
                continue;
            }
            if new.excluded && !old.excluded {
                imp.would_exclude += 1;
                let mut c = change(sc, &new);
                c.from.clone_from(&old.reason);
                let listed = if imp.newly_excluded.len() < LIST_LIMIT {
                    imp.newly_excluded.push(c);
                    Some(imp.newly_excluded.len() - 1)
                } else {
                    imp.truncated = true;
                    None
                };
                to_count.push((sc.key(), listed));
            } else if !new.excluded && old.excluded {
                imp.would_include += 1;
                if imp.newly_included.len() < LIST_LIMIT {
                    let mut c = change(sc, &new);
                    c.from.clone_from(&old.reason);
                    imp.newly_included.push(c);
                } else {
                    imp.truncated = true;
                }
            } else {
                imp.reason_changes += 1;
            }
        }
        let mut by_connector: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, _) in &to_count {
            by_connector
                .entry(k.connector.as_str())
                .or_default()
                .push(k.external_id.as_str());
        }
        let mut counts = std::collections::HashMap::new();
        for (conn, ids) in by_connector {
            for (id, n) in store.record_counts(conn, &ids)? {
                counts.insert(CustomerKey::new(conn, id), n);
            }
        }
        for (k, listed) in &to_count {
            let (invoices, transactions) = counts.get(k).copied().unwrap_or_default();
            imp.invoices_to_purge += invoices;
            imp.transactions_to_purge += transactions;
            if let Some(i) = listed {
                imp.newly_excluded[*i].invoices = invoices;
                imp.newly_excluded[*i].transactions = transactions;
            }
        }
    }
    if imp.total_customers > 0 {
        imp.new_exclusion_ratio = imp.would_exclude as f64 / imp.total_customers as f64;
    }
    Ok(imp)
}

/// What re-classifying every customer did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reclassified {
    pub examined: u64,
    pub newly_excluded: u64,
    pub newly_included: u64,
    pub reason_changes: u64,
    pub purged_invoices: u64,
    pub purged_transactions: u64,
    pub queued_for_resync: u64,
    pub resync_jobs: Vec<u64>,
}

impl Reclassified {
    fn add(&mut self, o: Reclassified) {
        self.examined += o.examined;
        self.newly_excluded += o.newly_excluded;
        self.newly_included += o.newly_included;
        self.reason_changes += o.reason_changes;
        self.purged_invoices += o.purged_invoices;
        self.purged_transactions += o.purged_transactions;
        self.queued_for_resync += o.queued_for_resync;
        self.resync_jobs.extend(o.resync_jobs);
    }
}

/// Re-classifies every stored customer with the rules in force
/// (`policy.rules()`, read inside each write so ingest and this agree), in
/// batches of `batch` customers per store write. `actor` and `why` go to the
/// audit trail of each customer that changes.
pub async fn reclassify_all(
    store: &Store,
    policy: &dyn Policy,
    actor: &str,
    why: &str,
    batch: usize,
) -> Result<Reclassified> {
    let batch = batch.max(1);
    let mut total = Reclassified::default();
    let mut after: Option<CustomerKey> = None;
    loop {
        let keys: Vec<CustomerKey> = store
            .customers(None, after.as_ref())
            .take(batch)
            .map(|r| r.map(|sc| sc.key()))
            .collect::<Result<_>>()?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        let part = store
            .write(|tx| {
                let rules = policy.rules();
                let now = chrono::Utc::now();
                let mut part = Reclassified::default();
                let mut reincluded: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for key in &keys {
                    // Deleted upstream since we listed it.
                    let Some(mut sc) = tx.customer(key)? else {
                        continue;
                    };
                    part.examined += 1;
                    let manual = tx.manual_decision(key)?;
                    let new = classify::classify(
                        &sc.customer,
                        manual.as_ref(),
                        &rules,
                        policy.native(&sc.connector),
                    );
                    if new == sc.classification {
                        continue;
                    }
                    let was = sc.classification.clone();
                    let t = apply(tx, &mut sc, Some(&was), new, actor, why, now, false)?;
                    part.purged_invoices += t.purged_invoices;
                    part.purged_transactions += t.purged_transactions;
                    if t.newly_excluded {
                        part.newly_excluded += 1;
                    } else if t.newly_included {
                        part.newly_included += 1;
                        reincluded
                            .entry(key.connector.clone())
                            .or_default()
                            .push(key.external_id.clone());
                    } else {
                        part.reason_changes += 1;
                    }
                }
                for (connector, ids) in &reincluded {
                    let reason = format!("re-included: {why}");
                    if let Some(job) = queue::enqueue(tx, connector, ids, &reason, now)? {
                        part.resync_jobs.push(job);
                    }
                    part.queued_for_resync += ids.len() as u64;
                }
                Ok(part)
            })
            .await?;
        total.add(part);
        crate::hooks::pause_point("reclassify.batch");
        if keys.len() < batch {
            break;
        }
        after = Some(last);
    }
    Ok(total)
}
