//! STOP flags (do not remind this customer) and invoice holds (do not count
//! or remind this invoice), set and cleared by admins.
//!
//! Both live in their own store tables (STOP flags keyed by customer, holds
//! keyed by connector and invoice id, each flag a JSON document), apart from the synced
//! records, so a resync or a polling update of the customer or invoice never
//! touches them; a hold is also independent of the ERP's own `on_hold` flag.
//! Every change is written together with its audit entry in one store write;
//! a refused request writes nothing. Setting a flag that is already set (or
//! clearing one that is not) is a no-op answered with `changed: false`, so
//! scripts can repeat themselves safely.
//!
//! This module never reads config and never classifies: a STOP flag does not
//! exclude a customer (it stays synced and included); it only keeps it out of
//! the reminder selection.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::ReminderError;
use crate::model::{CustomerKey, Entity, Timestamp};
use crate::store::{AuditEntry, Store};

/// Longest accepted reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

/// A STOP (do-not-contact for reminders) flag on one customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopFlag {
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
    /// The last day the STOP holds; from the day after, the customer is
    /// selectable again by itself. `None`: until cleared.
    #[serde(default)]
    pub until: Option<NaiveDate>,
    /// A free note for colleagues (e.g. the agreed payment plan).
    #[serde(default)]
    pub note: Option<String>,
}

impl StopFlag {
    /// Whether the STOP holds on `day` (an expired flag is ignored).
    pub fn active_on(&self, day: NaiveDate) -> bool {
        self.until.is_none_or(|u| day <= u)
    }
}

/// The optional terms of a STOP: an end date and a note.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopTerms {
    pub until: Option<NaiveDate>,
    pub note: Option<String>,
}

impl StopTerms {
    /// Refuses an end date before today and an over-long note; a blank note
    /// is no note.
    fn validate(&self, today: NaiveDate) -> Result<StopTerms, ReminderError> {
        if let Some(u) = self.until {
            if u < today {
                return Err(ReminderError::Invalid(format!(
                    "`until` {u} is in the past; a STOP ends today ({today}) or later"
                )));
            }
        }
        let note = self
            .note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if note.is_some_and(|n| n.chars().count() > MAX_REASON_CHARS) {
            return Err(ReminderError::Invalid(format!(
                "the note is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        Ok(StopTerms {
            until: self.until,
            note: note.map(str::to_string),
        })
    }

    /// The terms as audit text: `; until 2026-06-30; note: ...`.
    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(u) = self.until {
            s += &format!("; until {u}");
        }
        if let Some(n) = &self.note {
            s += &format!("; note: {n}");
        }
        s
    }
}

/// An admin's hold on one invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldFlag {
    /// The invoice's customer when the hold was set (for the audit trail of
    /// a release after the invoice is gone).
    pub customer_id: String,
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
}

/// Who asks for a change, and why.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub actor: &'a str,
    pub reason: &'a str,
    pub now: Timestamp,
}

impl Request<'_> {
    fn validate(&self) -> Result<(String, String), ReminderError> {
        let actor = self.actor.trim();
        let reason = self.reason.trim();
        if actor.is_empty() {
            return Err(ReminderError::Invalid("`actor` must not be empty".into()));
        }
        if reason.is_empty() {
            return Err(ReminderError::Invalid(
                "a reason is required (it is kept in the audit trail)".into(),
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ReminderError::Invalid(format!(
                "the reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        Ok((actor.to_string(), reason.to_string()))
    }
}

/// What a set or clear did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagOutcome {
    /// `connector:external_id` of the customer.
    pub customer: String,
    /// `connector:external_id` of the invoice, for holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// Whether the flag is set after the call.
    pub active: bool,
    /// False when the flag already was in the requested state.
    pub changed: bool,
    pub message: String,
}

/// The STOP flag of a customer, if set.
pub fn stop_flag(store: &Store, key: &CustomerKey) -> Result<Option<StopFlag>, ReminderError> {
    Ok(store.stop_flag(key)?)
}

/// The admin hold on an invoice, if set.
pub fn hold_flag(
    store: &Store,
    connector: &str,
    invoice: &str,
) -> Result<Option<HoldFlag>, ReminderError> {
    Ok(store.hold_flag(connector, invoice)?)
}

/// Sets the STOP flag on an included customer, with no end date.
pub async fn stop(
    store: &Store,
    key: &CustomerKey,
    req: &Request<'_>,
) -> Result<FlagOutcome, ReminderError> {
    stop_with(store, key, req, &StopTerms::default()).await
}

/// Sets the STOP flag on an included customer, with optional terms. A flag
/// whose end date has passed counts as absent and is replaced.
pub async fn stop_with(
    store: &Store,
    key: &CustomerKey,
    req: &Request<'_>,
    terms: &StopTerms,
) -> Result<FlagOutcome, ReminderError> {
    let (actor, reason) = req.validate()?;
    let today = req.now.date_naive();
    let terms = terms.validate(today)?;
    let outcome = store
        .write(|tx| {
            let Some(sc) = tx.customer(key)? else {
                return Ok(Err(ReminderError::NotFound(format!(
                    "no customer {key} in the store"
                ))));
            };
            if sc.classification.excluded {
                return Ok(Err(ReminderError::Conflict(format!(
                    "customer {key} is excluded ({}); excluded customers are never reminded, so a STOP flag does not apply",
                    sc.classification.reason
                ))));
            }
            if let Some(f) = tx
                .stop_flag::<StopFlag>(key)?
                .filter(|f| f.active_on(today))
            {
                let until = f.until.map(|u| format!(" until {u}")).unwrap_or_default();
                return Ok(Ok(FlagOutcome {
                    customer: key.to_string(),
                    invoice: None,
                    active: true,
                    changed: false,
                    message: format!(
                        "{key} was already stopped{until} by {} at {}: {}; nothing changed (clear it first to set other terms)",
                        f.actor, super::when(f.at), f.reason
                    ),
                }));
            }
            let flag = StopFlag {
                actor: actor.clone(),
                reason: reason.clone(),
                at: req.now,
                until: terms.until,
                note: terms.note.clone(),
            };
            tx.put_stop_flag(key, &flag)?;
            let why = format!("{reason}{}", terms.describe());
            tx.audit(AuditEntry::action(req.now, key.clone(), "stop", actor, why))?;
            let message = match terms.until {
                Some(u) => format!("{key} is stopped until {u}: it stays synced but is not selected for reminders before {}", u.succ_opt().unwrap_or(u)),
                None => format!("{key} is stopped: it stays synced but is never selected for reminders"),
            };
            Ok(Ok(FlagOutcome {
                customer: key.to_string(),
                invoice: None,
                active: true,
                changed: true,
                message,
            }))
        })
        .await??;
    Ok(outcome)
}

/// Clears the STOP flag. Allowed whatever the customer's state, so a flag
/// left on a customer that was excluded or deleted since can be cleaned up.
pub async fn unstop(
    store: &Store,
    key: &CustomerKey,
    req: &Request<'_>,
) -> Result<FlagOutcome, ReminderError> {
    let (actor, reason) = req.validate()?;
    let outcome = store
        .write(|tx| {
            let flag = tx.stop_flag::<StopFlag>(key)?;
            if flag.is_none() {
                if tx.customer(key)?.is_none() {
                    return Ok(Err(ReminderError::NotFound(format!(
                        "no customer {key} in the store"
                    ))));
                }
                return Ok(Ok(FlagOutcome {
                    customer: key.to_string(),
                    invoice: None,
                    active: false,
                    changed: false,
                    message: format!("{key} was not stopped; nothing changed"),
                }));
            }
            tx.delete_stop_flag(key)?;
            tx.audit(AuditEntry::action(
                req.now,
                key.clone(),
                "unstop",
                actor,
                reason,
            ))?;
            Ok(Ok(FlagOutcome {
                customer: key.to_string(),
                invoice: None,
                active: false,
                changed: true,
                message: format!("{key} is no longer stopped"),
            }))
        })
        .await??;
    Ok(outcome)
}

/// Puts a stored invoice on hold. The invoice must be in the store, which
/// also means its customer is included (an excluded customer's invoices are
/// never stored).
pub async fn hold(
    store: &Store,
    connector: &str,
    invoice: &str,
    req: &Request<'_>,
) -> Result<FlagOutcome, ReminderError> {
    let (actor, reason) = req.validate()?;
    let invoice_ref = format!("{connector}:{invoice}");
    let outcome = store
        .write(|tx| {
            let Some(customer_id) = tx.record_owner(connector, Entity::Invoices, invoice)? else {
                return Ok(Err(ReminderError::NotFound(format!(
                    "no invoice {invoice_ref} in the store (unknown, deleted upstream, or it belongs to an excluded customer and is not synced)"
                ))));
            };
            let customer = CustomerKey::new(connector, &customer_id);
            if let Some(f) = tx.hold_flag::<HoldFlag>(connector, invoice)? {
                return Ok(Ok(FlagOutcome {
                    customer: customer.to_string(),
                    invoice: Some(invoice_ref.clone()),
                    active: true,
                    changed: false,
                    message: format!(
                        "{invoice_ref} was already on hold by {} at {}: {}; nothing changed",
                        f.actor, super::when(f.at), f.reason
                    ),
                }));
            }
            tx.put_hold_flag(
                connector,
                invoice,
                &HoldFlag {
                    customer_id,
                    actor: actor.clone(),
                    reason: reason.clone(),
                    at: req.now,
                },
            )?;
            tx.audit(AuditEntry::action(req.now, customer.clone(), "hold", actor, format!("invoice {invoice}: {reason}")))?;
            Ok(Ok(FlagOutcome {
                customer: customer.to_string(),
                invoice: Some(invoice_ref.clone()),
                active: true,
                changed: true,
                message: format!(
                    "{invoice_ref} is on hold: it no longer counts toward {customer}'s total due and is never reminded"
                ),
            }))
        })
        .await??;
    Ok(outcome)
}

/// Releases an admin hold. Works for holds on invoices no longer stored.
/// The ERP's own `on_hold` flag is not affected.
pub async fn release(
    store: &Store,
    connector: &str,
    invoice: &str,
    req: &Request<'_>,
) -> Result<FlagOutcome, ReminderError> {
    let (actor, reason) = req.validate()?;
    let invoice_ref = format!("{connector}:{invoice}");
    let outcome = store
        .write(|tx| {
            let Some(flag) = tx.hold_flag::<HoldFlag>(connector, invoice)? else {
                return Ok(match tx.record_owner(connector, Entity::Invoices, invoice)? {
                    None => Err(ReminderError::NotFound(format!(
                        "no invoice {invoice_ref} in the store and no hold on it"
                    ))),
                    Some(owner) => Ok(FlagOutcome {
                        customer: CustomerKey::new(connector, owner).to_string(),
                        invoice: Some(invoice_ref.clone()),
                        active: false,
                        changed: false,
                        message: format!("{invoice_ref} was not on hold here; nothing changed (a hold set in the ERP is released in the ERP)"),
                    }),
                });
            };
            let customer = CustomerKey::new(connector, &flag.customer_id);
            tx.delete_hold_flag(connector, invoice)?;
            tx.audit(AuditEntry::action(req.now, customer.clone(), "release", actor, format!("invoice {invoice}: {reason}")))?;
            Ok(Ok(FlagOutcome {
                customer: customer.to_string(),
                invoice: Some(invoice_ref.clone()),
                active: false,
                changed: true,
                message: format!("{invoice_ref} is released from hold"),
            }))
        })
        .await??;
    Ok(outcome)
}

/// A STOP flag with its customer, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct StopEntry {
    pub customer: String,
    #[serde(flatten)]
    pub flag: StopFlag,
}

/// A hold with its invoice, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct HoldEntry {
    pub invoice: String,
    pub customer: String,
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
}

/// Up to `limit` STOP flags in key order; the flag says whether more exist.
pub fn stops(store: &Store, limit: usize) -> Result<(Vec<StopEntry>, bool), ReminderError> {
    let mut rows = store.stop_flags::<StopFlag>(None, limit.saturating_add(1))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let out = rows
        .into_iter()
        .map(|(key, flag)| StopEntry {
            customer: key.to_string(),
            flag,
        })
        .collect();
    Ok((out, more))
}

/// Up to `limit` holds in key order; the flag says whether more exist.
pub fn holds(store: &Store, limit: usize) -> Result<(Vec<HoldEntry>, bool), ReminderError> {
    let mut rows = store.hold_flags::<HoldFlag>(None, limit.saturating_add(1))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let out = rows
        .into_iter()
        .map(|(connector, invoice, flag)| HoldEntry {
            invoice: format!("{connector}:{invoice}"),
            customer: CustomerKey::new(&connector, &flag.customer_id).to_string(),
            actor: flag.actor,
            reason: flag.reason,
            at: flag.at,
        })
        .collect();
    Ok((out, more))
}
