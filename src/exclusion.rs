//! Applying a classification to a stored customer, with its consequences.
//!
//! This is the one place where "becoming excluded" and "becoming included"
//! happen, so every path (ingest, rule reload, manual decisions) keeps the same
//! invariants inside the same atomic store write:
//! - becoming excluded deletes all stored (and parked) invoices and
//!   transactions of the customer and removes it from any pending resync;
//! - becoming included (from excluded) queues a durable resync job;
//! - every change of the excluded/included state or its reason is written to
//!   the audit trail.

use crate::model::{Classification, CustomerKey, Timestamp};
use crate::resync::queue;
use crate::store::{AuditEntry, Result, StoredCustomer, Tx};

/// What applying a classification did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    pub newly_excluded: bool,
    pub newly_included: bool,
    pub purged_invoices: u64,
    pub purged_transactions: u64,
    /// The resync job the customer was queued in (a new job or none when it
    /// was already queued).
    pub resync_job: Option<u64>,
}

/// Stores `sc` with classification `new`. `was` is the classification before
/// (None for a customer seen for the first time). Resync of a re-included
/// customer is queued only when `queue_resync` is set; callers that batch
/// many customers into one job pass false and call [`queue::enqueue`] once.
pub fn apply(
    tx: &mut Tx<'_>,
    sc: &mut StoredCustomer,
    was: Option<&Classification>,
    new: Classification,
    actor: &str,
    why: &str,
    now: Timestamp,
    queue_resync: bool,
) -> Result<Transition> {
    let key = CustomerKey::new(&sc.connector, &sc.customer.external_id);
    let mut t = Transition::default();
    let was_excluded = was.map(|c| c.excluded);
    if new.excluded && was_excluded != Some(true) {
        let (i, x) = tx.purge_customer_records(&key)?;
        t.purged_invoices = i;
        t.purged_transactions = x;
        t.newly_excluded = true;
        queue::remove_customer(tx, &key.connector, &key.external_id)?;
    }
    if !new.excluded && was_excluded == Some(true) {
        t.newly_included = true;
        if queue_resync {
            t.resync_job = queue::enqueue(
                tx,
                &key.connector,
                std::slice::from_ref(&key.external_id),
                &format!("re-included: {}", new.reason),
                now,
            )?;
        }
    }
    // A customer seen for the first time is audited only when it arrives
    // excluded; an ordinary new included customer is not a decision.
    let changed = match was {
        None => new.excluded,
        Some(w) => w != &new,
    };
    if changed {
        tx.audit(AuditEntry {
            seq: 0,
            at: now,
            customer: key,
            action: "classified".into(),
            actor: actor.to_string(),
            reason: why.to_string(),
            from: was.cloned(),
            to: Some(new.clone()),
        })?;
        sc.classified_at = now;
    }
    sc.classification = new;
    tx.put_customer(sc);
    Ok(t)
}
