//! Reminder eligibility: "whom may we remind today, and why is each other
//! customer left out?"
//!
//! - [`config`]: the `[reminders]` table (thresholds, creditor policy,
//!   scenarios written in the rule engine's condition language).
//! - [`flags`]: STOP flags on customers and holds on invoices, set and
//!   cleared by admins, audited in the same store write.
//! - [`candidates`]: the candidate list (pure per-customer assessment,
//!   streamed over the store with a cursor) and the explain view.
//!
//! This module only reads synced data; it never classifies, never excludes,
//! never talks to an ERP and never touches synced records. Callers pass the
//! config in force at request time (`app.config().reminders`), so a reload
//! takes effect on the next request.

pub mod candidates;
pub mod config;
pub mod flags;
#[cfg(test)]
mod tests;

use chrono::NaiveDate;

pub use candidates::{
    assess, explain_in, scan, Assessment, Candidate, Explanation, Filter, Reason, Scan, Standing,
};
pub use config::{CreditorPolicy, RemindersConfig, Thresholds};

use crate::app::App;
use crate::model::CustomerKey;

/// Errors of the reminders module, mapped to HTTP statuses by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ReminderError {
    /// Unknown customer or invoice (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the customer's state, e.g. it is excluded (409).
    #[error("{0}")]
    Conflict(String),
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The explain hook: whether `key` is a reminder candidate on `as_of`,
/// selected or not and why, or why it is not listed at all (excluded,
/// nothing due, hidden creditor). Uses the config in force.
pub fn explain(
    app: &App,
    key: &CustomerKey,
    as_of: NaiveDate,
) -> Result<Explanation, ReminderError> {
    explain_in(&app.store, &app.config().reminders, key, as_of)
}

/// Today in UTC: the default `as_of`.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

/// An instant as people read it in messages: RFC 3339, whole seconds, `Z`.
pub(crate) fn when(t: crate::model::Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
