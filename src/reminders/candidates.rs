//! The reminder candidate list: for each included customer with money due,
//! its scenario, what it owes, and whether it is selected or why not.
//!
//! Definitions (see docs/reminders.md):
//! - **money due**: invoices that are `open`, have `amount_due > 0`, are
//!   overdue (`due_date` strictly before `as_of`) and are not held — neither
//!   by the ERP (`Invoice::on_hold`, a dispute) nor by an admin hold. Totals
//!   are kept per currency, never converted.
//! - **creditor**: the customer's ERP balance is negative (the business owes
//!   it money, e.g. unapplied credit). The ERP balance is the authority: it
//!   already nets unapplied payments and credit notes, which the synced
//!   documents alone do not say reliably. A creditor is listed even with
//!   nothing due (unchecked, reason `creditor`) unless `creditors = "hidden"`,
//!   which leaves every creditor out.
//! - **thresholds**: `below_minimum` when no currency's total reaches its
//!   minimum (a currency without a minimum always reaches it);
//!   `above_maximum` when any currency's total is above its maximum. Both
//!   are judged only when there is money due.
//!
//! The assessment of one customer ([`assess`]) is pure. The list streams over
//! customers in key order ([`scan`]), reading one customer's records at a
//! time, so memory stays flat whatever the store holds; a cursor (the last
//! customer key looked at) resumes it. Excluded customers are skipped
//! without reading anything else: they never appear.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use super::config::{CreditorPolicy, RemindersConfig};
use super::flags::{self, HoldFlag, StopFlag};
use super::ReminderError;
use crate::model::{Customer, CustomerKey, Invoice, InvoiceStatus, Record};
use crate::store::{Store, StoredCustomer};

/// Why a listed customer is not selected. Serialised in snake_case; a row
/// carries every reason that applies, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Stopped,
    NoScenario,
    BelowMinimum,
    AboveMaximum,
    Creditor,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Stopped => "stopped",
            Reason::NoScenario => "no_scenario",
            Reason::BelowMinimum => "below_minimum",
            Reason::AboveMaximum => "above_maximum",
            Reason::Creditor => "creditor",
        }
    }
}

/// One row of the candidate list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// `connector:external_id`.
    pub customer: String,
    pub name: String,
    pub email: Option<String>,
    /// The first matching scenario's id.
    pub scenario: Option<String>,
    /// Money due by currency (overdue, open, not held).
    pub total_due: BTreeMap<String, Decimal>,
    /// Invoices counted in `total_due`.
    pub overdue_invoices: u64,
    /// The earliest due date among them.
    pub oldest_due_date: Option<NaiveDate>,
    /// Overdue open invoices left out because they are on hold.
    pub held_invoices: u64,
    /// The ERP balance (negative: a creditor).
    pub balance: Decimal,
    pub selected: bool,
    /// Empty when selected.
    pub reasons: Vec<Reason>,
}

/// What the list makes of one customer.
#[derive(Debug, Clone, PartialEq)]
pub enum Assessment {
    /// Excluded customers never appear; the classification reason.
    Excluded { reason: String },
    /// Not a creditor and nothing due; `held_invoices` overdue invoices are on hold.
    NothingDue { held_invoices: u64 },
    /// A creditor left out because `creditors = "hidden"`.
    HiddenCreditor(Candidate),
    /// In the list, selected or not.
    Listed(Candidate),
}

/// An overdue open invoice with money due, and whether it is held.
#[derive(Debug, Clone)]
pub struct OverdueInvoice<'a> {
    pub invoice: &'a Invoice,
    /// Held by the ERP (`on_hold`) or by an admin hold.
    pub held: bool,
}

/// Whether an invoice is open, has money due and is overdue on `as_of`
/// (held or not).
pub fn is_overdue(inv: &Invoice, as_of: NaiveDate) -> bool {
    inv.status == InvoiceStatus::Open && inv.amount_due > Decimal::ZERO && inv.due_date < as_of
}

/// The facts about one customer that decide its row.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub key: &'a CustomerKey,
    pub customer: &'a Customer,
    /// The classification reason when the customer is excluded.
    pub excluded: Option<&'a str>,
    /// Its overdue open invoices (see [`is_overdue`]).
    pub overdue: &'a [OverdueInvoice<'a>],
    pub stopped: bool,
}

/// Decides one customer's row. Pure: everything comes in `facts` and `cfg`.
pub fn assess(cfg: &RemindersConfig, facts: &Facts<'_>) -> Assessment {
    if let Some(reason) = facts.excluded {
        return Assessment::Excluded {
            reason: reason.to_string(),
        };
    }
    let mut total_due: BTreeMap<String, Decimal> = BTreeMap::new();
    let (mut counted, mut held) = (0u64, 0u64);
    let mut oldest: Option<NaiveDate> = None;
    for o in facts.overdue {
        if o.held {
            held += 1;
            continue;
        }
        counted += 1;
        *total_due.entry(o.invoice.currency.clone()).or_default() += o.invoice.amount_due;
        oldest = Some(oldest.map_or(o.invoice.due_date, |d| d.min(o.invoice.due_date)));
    }
    let creditor = facts.customer.balance < Decimal::ZERO;
    if counted == 0 && !creditor {
        return Assessment::NothingDue {
            held_invoices: held,
        };
    }
    let scenario = cfg.scenario_for(facts.customer).map(|r| r.id.clone());
    let mut reasons = Vec::new();
    if facts.stopped {
        reasons.push(Reason::Stopped);
    }
    if scenario.is_none() {
        reasons.push(Reason::NoScenario);
    }
    if counted > 0 {
        let reaches_minimum = total_due.iter().any(|(cur, amount)| {
            cfg.minimum_total
                .for_currency(cur)
                .is_none_or(|min| *amount >= min)
        });
        if !reaches_minimum {
            reasons.push(Reason::BelowMinimum);
        }
        let above_maximum = total_due.iter().any(|(cur, amount)| {
            cfg.maximum_total
                .for_currency(cur)
                .is_some_and(|max| *amount > max)
        });
        if above_maximum {
            reasons.push(Reason::AboveMaximum);
        }
    }
    if creditor {
        reasons.push(Reason::Creditor);
    }
    let c = Candidate {
        customer: facts.key.to_string(),
        name: facts.customer.name.clone(),
        email: facts.customer.email.clone(),
        scenario,
        total_due,
        overdue_invoices: counted,
        oldest_due_date: oldest,
        held_invoices: held,
        balance: facts.customer.balance,
        selected: reasons.is_empty(),
        reasons,
    };
    if creditor && cfg.creditors == CreditorPolicy::Hidden {
        Assessment::HiddenCreditor(c)
    } else {
        Assessment::Listed(c)
    }
}

/// Everything the store knows about one customer's reminder state.
struct Gathered {
    key: CustomerKey,
    sc: StoredCustomer,
    /// Overdue open invoices with the admin hold on each, if any.
    overdue: Vec<(Invoice, Option<HoldFlag>)>,
    stop: Option<StopFlag>,
}

fn gather(store: &Store, sc: StoredCustomer, as_of: NaiveDate) -> Result<Gathered, ReminderError> {
    let key = sc.key();
    let mut overdue = Vec::new();
    let mut stop = None;
    // An excluded customer has no records, and its flags do not matter.
    if !sc.classification.excluded {
        for r in store.records_of(&key)? {
            if let Record::Invoice(inv) = r {
                if is_overdue(&inv, as_of) {
                    let hold = flags::hold_flag(store, &key.connector, &inv.external_id)?;
                    overdue.push((inv, hold));
                }
            }
        }
        // A STOP whose end date has passed no longer counts.
        stop = flags::stop_flag(store, &key)?.filter(|f| f.active_on(as_of));
    }
    Ok(Gathered {
        key,
        sc,
        overdue,
        stop,
    })
}

fn assess_gathered(cfg: &RemindersConfig, g: &Gathered) -> Assessment {
    let overdue: Vec<OverdueInvoice<'_>> = g
        .overdue
        .iter()
        .map(|(inv, hold)| OverdueInvoice {
            invoice: inv,
            held: inv.on_hold || hold.is_some(),
        })
        .collect();
    let cl = &g.sc.classification;
    assess(
        cfg,
        &Facts {
            key: &g.key,
            customer: &g.sc.customer,
            excluded: cl.excluded.then_some(cl.reason.as_str()),
            overdue: &overdue,
            stopped: g.stop.is_some(),
        },
    )
}

/// Which listed rows a caller wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only customers of this connector.
    pub connector: Option<String>,
    /// Only rows whose scenario is this id (it must be configured).
    pub scenario: Option<String>,
    /// Only selected (true) or only unselected (false) rows.
    pub selected: Option<bool>,
}

impl Filter {
    /// Refuses a scenario id the config does not know.
    pub fn validate(&self, cfg: &RemindersConfig) -> Result<(), ReminderError> {
        if let Some(s) = &self.scenario {
            if cfg.scenarios.get(s).is_none() {
                let known: Vec<&str> = cfg
                    .scenarios
                    .rules()
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect();
                return Err(ReminderError::Invalid(if known.is_empty() {
                    format!("unknown scenario `{s}`: no [[reminders.scenarios]] are configured")
                } else {
                    format!(
                        "unknown scenario `{s}`; configured scenarios: {}",
                        known.join(", ")
                    )
                }));
            }
        }
        Ok(())
    }

    fn accepts(&self, c: &Candidate) -> bool {
        self.scenario
            .as_ref()
            .is_none_or(|s| c.scenario.as_deref() == Some(s.as_str()))
            && self.selected.is_none_or(|sel| c.selected == sel)
    }
}

/// One stretch of the list.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub items: Vec<Candidate>,
    /// The last customer looked at: resume after it.
    pub last: Option<CustomerKey>,
    /// True when the end of the customers was reached.
    pub done: bool,
    /// Customers looked at.
    pub scanned: u64,
}

/// Walks customers after `after` in key order and collects the listed rows
/// that pass `filter`, stopping after `max_items` rows or `max_customers`
/// customers, whichever comes first. One customer's records are in memory
/// at a time.
pub fn scan(
    store: &Store,
    cfg: &RemindersConfig,
    filter: &Filter,
    as_of: NaiveDate,
    after: Option<&CustomerKey>,
    max_items: usize,
    max_customers: u64,
) -> Result<Scan, ReminderError> {
    let mut out = Scan::default();
    let mut customers = store.customers(filter.connector.as_deref(), after);
    loop {
        if out.items.len() >= max_items || out.scanned >= max_customers {
            return Ok(out);
        }
        let Some(sc) = customers.next() else {
            out.done = true;
            return Ok(out);
        };
        let sc = sc?;
        out.scanned += 1;
        out.last = Some(sc.key());
        if sc.classification.excluded {
            continue;
        }
        let g = gather(store, sc, as_of)?;
        if let Assessment::Listed(c) = assess_gathered(cfg, &g) {
            if filter.accepts(&c) {
                out.items.push(c);
            }
        }
    }
}

/// The row of one customer, whether listed or not (for the explain view).
pub fn assess_one(
    store: &Store,
    cfg: &RemindersConfig,
    key: &CustomerKey,
    as_of: NaiveDate,
) -> Result<Assessment, ReminderError> {
    let sc = store
        .customer(key)?
        .ok_or_else(|| ReminderError::NotFound(format!("no customer {key} in the store")))?;
    Ok(assess_gathered(cfg, &gather(store, sc, as_of)?))
}

// ----- explain -----------------------------------------------------------------

/// Where a customer stands for reminders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// In the list and selected.
    Selected,
    /// In the list, not selected (see `reasons`).
    Unchecked,
    /// Not in the list: excluded customers never appear.
    Excluded,
    /// Not in the list: nothing overdue (or all of it on hold), not a creditor.
    NothingDue,
    /// Not in the list: a creditor, and `creditors = "hidden"`.
    HiddenCreditor,
}

/// An overdue invoice left out of the total, and who holds it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldInvoice {
    pub invoice: String,
    pub currency: String,
    pub amount_due: Decimal,
    pub due_date: NaiveDate,
    /// The ERP marks it on hold or in dispute.
    pub erp_on_hold: bool,
    /// The admin hold, if any.
    pub hold: Option<HoldFlag>,
}

/// The reminders part of a customer's explain view.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub customer: String,
    pub as_of: NaiveDate,
    pub standing: Standing,
    /// Whether it appears in the candidate list.
    pub listed: bool,
    pub selected: bool,
    /// One sentence for a person.
    pub summary: String,
    /// Its row (also for a hidden creditor: what the row would say).
    pub candidate: Option<Candidate>,
    pub stop: Option<StopFlag>,
    pub held_invoices: Vec<HeldInvoice>,
}

fn money(total: &BTreeMap<String, Decimal>) -> String {
    if total.is_empty() {
        return "nothing".into();
    }
    total
        .iter()
        .map(|(c, a)| format!("{c} {a}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn limits(t: &super::config::Thresholds, total: &BTreeMap<String, Decimal>) -> String {
    total
        .keys()
        .filter_map(|c| t.for_currency(c).map(|a| format!("{c} {a}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Explains a customer against the reminder config in force. Unknown
/// customer: [`ReminderError::NotFound`].
pub fn explain_in(
    store: &Store,
    cfg: &RemindersConfig,
    key: &CustomerKey,
    as_of: NaiveDate,
) -> Result<Explanation, ReminderError> {
    let sc = store
        .customer(key)?
        .ok_or_else(|| ReminderError::NotFound(format!("no customer {key} in the store")))?;
    let g = gather(store, sc, as_of)?;
    let held_invoices: Vec<HeldInvoice> = g
        .overdue
        .iter()
        .filter(|(inv, hold)| inv.on_hold || hold.is_some())
        .map(|(inv, hold)| HeldInvoice {
            invoice: format!("{}:{}", key.connector, inv.external_id),
            currency: inv.currency.clone(),
            amount_due: inv.amount_due,
            due_date: inv.due_date,
            erp_on_hold: inv.on_hold,
            hold: hold.clone(),
        })
        .collect();
    let (standing, candidate, summary) = match assess_gathered(cfg, &g) {
        Assessment::Excluded { reason } => (
            Standing::Excluded,
            None,
            format!("not a reminder candidate: the customer is excluded ({reason}), and excluded customers never appear"),
        ),
        Assessment::NothingDue { held_invoices } => (
            Standing::NothingDue,
            None,
            if held_invoices > 0 {
                format!("not a reminder candidate: nothing is due as of {as_of}; its {held_invoices} overdue invoice(s) are on hold and do not count")
            } else {
                format!("not a reminder candidate: nothing is overdue as of {as_of}")
            },
        ),
        Assessment::HiddenCreditor(c) => (
            Standing::HiddenCreditor,
            Some(c.clone()),
            format!(
                "not listed: a creditor (balance {}) and reminders.creditors = \"hidden\"",
                c.balance
            ),
        ),
        Assessment::Listed(c) if c.selected => (
            Standing::Selected,
            Some(c.clone()),
            format!(
                "selected for reminding: scenario `{}`, {} due on {} overdue invoice(s), the oldest due {}",
                c.scenario.as_deref().unwrap_or_default(),
                money(&c.total_due),
                c.overdue_invoices,
                c.oldest_due_date.map(|d| d.to_string()).unwrap_or_default()
            ),
        ),
        Assessment::Listed(c) => {
            let why: Vec<String> = c
                .reasons
                .iter()
                .map(|r| match r {
                    Reason::Stopped => match &g.stop {
                        Some(f) => format!("stopped by {} at {}: {}", f.actor, super::when(f.at), f.reason),
                        None => "stopped".into(),
                    },
                    Reason::NoScenario => "no reminder scenario matches it".into(),
                    Reason::BelowMinimum => format!(
                        "its total due ({}) is below the minimum ({})",
                        money(&c.total_due),
                        limits(&cfg.minimum_total, &c.total_due)
                    ),
                    Reason::AboveMaximum => format!(
                        "its total due ({}) is above the maximum ({})",
                        money(&c.total_due),
                        limits(&cfg.maximum_total, &c.total_due)
                    ),
                    Reason::Creditor => format!(
                        "it is a creditor (balance {}): the business owes it money",
                        c.balance
                    ),
                })
                .collect();
            (
                Standing::Unchecked,
                Some(c.clone()),
                format!("listed but not selected: {}", why.join("; ")),
            )
        }
    };
    Ok(Explanation {
        customer: key.to_string(),
        as_of,
        standing,
        listed: matches!(standing, Standing::Selected | Standing::Unchecked),
        selected: standing == Standing::Selected,
        summary,
        candidate,
        stop: g.stop.clone(),
        held_invoices,
    })
}
