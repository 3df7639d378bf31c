//! Exclusion: applying a classification to a stored customer, with its
//! consequences, and the admin-facing operations built on it.
//!
//! [`apply`] is the one place where "becoming excluded" and "becoming
//! included" happen, so every path (ingest, rule reload, manual decisions)
//! keeps the same invariants inside the same atomic store write:
//! - becoming excluded deletes all stored (and parked) invoices and
//!   transactions of the customer and removes it from any pending resync;
//! - becoming included (from excluded) queues a durable resync job;
//! - every change of the excluded/included state or its reason is written to
//!   the audit trail.
//!
//! The submodules are library code for the admin API and the CLI; they never
//! talk HTTP and never re-implement a transition, they call [`apply`]:
//! - [`manual`]: manual exclude / re-include / clear, by list or by id before
//!   the customer was ever synced, and mass exclusion with impact + confirm;
//! - [`impact`]: what a rule set would change (preview, reload's ratio check)
//!   and re-classifying every stored customer after a reload;
//! - [`search`]: customer search with cursor paging, the excluded list and
//!   its CSV form;
//! - [`explain`]: why a customer is or is not excluded.
//!
//! They reach the running daemon only through [`Policy`] (rules in force,
//! native exclusions per connector), so unit tests run them on a bare store.

pub mod explain;
pub mod impact;
pub mod manual;
pub mod search;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::connectors::NativeExclusion;
use crate::model::{Classification, CustomerKey, Timestamp};
use crate::resync::queue;
use crate::rules::RuleSet;
use crate::store::{AuditEntry, Result, StoredCustomer, Tx};
use crate::store::{Store, StoreError};

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
#[allow(clippy::too_many_arguments)] // the transition's whole context, named at each call
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
    tx.put_customer(sc)?;
    Ok(t)
}

/// What the exclusion operations need to know about the running daemon.
pub trait Policy: Send + Sync {
    /// The rules in force. Read inside store writes, so a reload (which sets
    /// its rules before re-classifying) never races a manual decision.
    fn rules(&self) -> Arc<RuleSet>;
    /// The native exclusions enabled for a connector (none for an unknown one).
    fn native(&self, connector: &str) -> &[NativeExclusion];
    /// Every native exclusion the connector's kind knows, enabled or not.
    fn known_native(&self, connector: &str) -> &[NativeExclusion];
    /// Ids of the configured connectors.
    fn connector_ids(&self) -> Vec<String>;

    /// Whether a person may name `external_id` for `connector` before the
    /// customer is synced: the form the connector's ERP gives its ids.
    /// `Err` says why not.
    fn check_new_id(&self, connector: &str, external_id: &str) -> Result<(), String> {
        let _ = connector;
        crate::connectors::registry::check_id(external_id)
    }

    /// Refuses a connector that is not configured, naming those that are.
    fn check_connector(&self, connector: &str) -> Result<(), ExclusionError> {
        let ids = self.connector_ids();
        if ids.iter().any(|c| c == connector) {
            Ok(())
        } else {
            Err(ExclusionError::Invalid(format!(
                "unknown connector `{connector}`; configured connectors: {}",
                ids.join(", ")
            )))
        }
    }
}

/// Why an exclusion operation was refused. Every refusal leaves the store
/// unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ExclusionError {
    /// The request itself is wrong (bad reference, empty list, bad condition).
    #[error("{0}")]
    Invalid(String),
    /// A named customer or decision does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The state moved since the caller looked (mass exclusion confirm).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs one store write whose closure may refuse with an [`ExclusionError`];
/// a refusal writes nothing and comes back as the typed error.
pub(crate) async fn write_or_refuse<T>(
    store: &Store,
    f: impl FnOnce(&mut Tx<'_>) -> std::result::Result<T, ExclusionError>,
) -> std::result::Result<T, ExclusionError> {
    let mut refused = None;
    let out = store
        .write(|tx| match f(tx) {
            Ok(v) => Ok(v),
            Err(ExclusionError::Store(e)) => Err(e),
            Err(other) => {
                let msg = other.to_string();
                refused = Some(other);
                Err(StoreError::Rejected(msg))
            }
        })
        .await;
    match out {
        Ok(v) => Ok(v),
        Err(e) => Err(refused.unwrap_or(ExclusionError::Store(e))),
    }
}
