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
//! customers in key order ([`scan`]), reading the overdue invoices, holds
//! and STOP flags of a stretch of customers in a few queries (never one per
//! customer), so memory stays flat whatever the store holds; a cursor (the
//! last customer key looked at) resumes it. Excluded customers are skipped
//! without reading anything else: they never appear.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use super::config::{CreditorPolicy, RemindersConfig};
use super::flags::{HoldFlag, StopFlag};
use super::ReminderError;
use crate::model::{Customer, CustomerKey, Invoice, InvoiceStatus};
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

/// Customers whose reminder facts are read together (a few queries per
/// stretch); bounds the records held in memory at once.
const GATHER_BATCH: usize = 500;

/// Reads the reminder facts of `customers` (in key order) in a few
/// set-based queries per connector: their overdue open invoices with the
/// admin hold on each, and their STOP flags. Excluded customers get nothing
/// (they have no records, and their flags do not matter), even should the
/// store hold something for them.
fn gather_many(
    store: &Store,
    customers: Vec<StoredCustomer>,
    as_of: NaiveDate,
) -> Result<Vec<Gathered>, ReminderError> {
    let mut out: Vec<Gathered> = customers
        .into_iter()
        .map(|sc| Gathered {
            key: sc.key(),
            sc,
            overdue: Vec::new(),
            stop: None,
        })
        .collect();
    // Runs of included customers of one connector: (connector, first, last)
    // in key order, so each run is one id range.
    let mut at: HashMap<CustomerKey, usize> = HashMap::new();
    let mut runs: Vec<(String, String, String)> = Vec::new();
    for (i, g) in out.iter().enumerate() {
        if g.sc.classification.excluded {
            continue;
        }
        at.insert(g.key.clone(), i);
        match runs.last_mut() {
            Some((conn, _, last)) if *conn == g.key.connector => {
                last.clone_from(&g.key.external_id);
            }
            _ => runs.push((
                g.key.connector.clone(),
                g.key.external_id.clone(),
                g.key.external_id.clone(),
            )),
        }
    }
    for (conn, first, last) in &runs {
        for (inv, hold) in store.open_invoices_due_before::<HoldFlag>(conn, first, last, as_of)? {
            // Only the stretch's own included customers; `is_overdue` also
            // wants money due.
            let Some(&i) = at.get(&CustomerKey::new(conn, &inv.customer_id)) else {
                continue;
            };
            if is_overdue(&inv, as_of) {
                out[i].overdue.push((inv, hold));
            }
        }
        for (id, flag) in store.stop_flags_between::<StopFlag>(conn, first, last)? {
            if let Some(&i) = at.get(&CustomerKey::new(conn, &id)) {
                // A STOP whose end date has passed no longer counts.
                out[i].stop = Some(flag).filter(|f| f.active_on(as_of));
            }
        }
    }
    Ok(out)
}

fn gather(store: &Store, sc: StoredCustomer, as_of: NaiveDate) -> Result<Gathered, ReminderError> {
    Ok(gather_many(store, vec![sc], as_of)?
        .pop()
        .expect("one customer in, one out"))
}

/// The reference for [`gather_many`]: one customer's facts read one record
/// and one flag at a time.
#[cfg(test)]
fn gather_one_by_one(
    store: &Store,
    sc: StoredCustomer,
    as_of: NaiveDate,
) -> Result<Gathered, ReminderError> {
    let key = sc.key();
    let mut overdue = Vec::new();
    let mut stop = None;
    if !sc.classification.excluded {
        for r in store.records_of(&key)? {
            if let crate::model::Record::Invoice(inv) = r {
                if is_overdue(&inv, as_of) {
                    let hold = super::flags::hold_flag(store, &key.connector, &inv.external_id)?;
                    overdue.push((inv, hold));
                }
            }
        }
        stop = super::flags::stop_flag(store, &key)?.filter(|f| f.active_on(as_of));
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
/// customers, whichever comes first. Customers are read in stretches of
/// [`GATHER_BATCH`] with their facts in a few queries per stretch, so memory
/// stays bounded and the store is not asked once per customer.
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
    let mut exhausted = false;
    loop {
        if out.items.len() >= max_items || out.scanned >= max_customers {
            return Ok(out);
        }
        if exhausted {
            out.done = true;
            return Ok(out);
        }
        let want = usize::try_from(max_customers - out.scanned)
            .unwrap_or(usize::MAX)
            .min(GATHER_BATCH);
        let mut batch = Vec::with_capacity(want);
        while batch.len() < want {
            match customers.next() {
                Some(sc) => batch.push(sc?),
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
        for g in gather_many(store, batch, as_of)? {
            if out.items.len() >= max_items {
                return Ok(out);
            }
            out.scanned += 1;
            out.last = Some(g.key.clone());
            if g.sc.classification.excluded {
                continue;
            }
            if let Assessment::Listed(c) = assess_gathered(cfg, &g) {
                if filter.accepts(&c) {
                    out.items.push(c);
                }
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

#[cfg(test)]
mod set_reads {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::model::{Classification, ExclusionSource, InvoiceStatus, Record};

    /// The list read a stretch at a time equals the list read one customer,
    /// one record and one flag at a time: over several stretches and two
    /// connectors, with excluded customers (never listed, even with an
    /// invoice the store holds for them), held, paid and not yet due
    /// invoices, and STOP flags active and lapsed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scan_in_stretches_matches_one_customer_at_a_time() {
        let cfg = crate::config::parse(
            std::path::Path::new("/etc/erpsync/erpsync.toml"),
            "[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n[reminders]\nminimum_total = \"50\"\nmaximum_total = \"900\"\n\
             [[reminders.scenarios]]\nid = \"all\"\ndescription = \"everyone but smb\"\n\
             when = { field = \"custom.segment\", op = \"is_not\", value = \"smb\" }\n",
            &crate::connectors::REGISTRY,
        )
        .unwrap()
        .reminders;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 2, 1 + d % 28).unwrap();
        let as_of = NaiveDate::from_ymd_opt(2026, 2, 20).unwrap();
        store
            .write(|tx| {
                for conn in ["demo", "erp2"] {
                    for n in 0..1300u32 {
                        let id = format!("C{n:04}");
                        let excluded = n % 11 == 4;
                        let mut custom = BTreeMap::new();
                        custom.insert(
                            "segment".to_string(),
                            if n % 5 == 0 { "smb" } else { "mid" }.to_string(),
                        );
                        tx.put_customer(&StoredCustomer {
                            connector: conn.into(),
                            customer: Customer {
                                external_id: id.clone(),
                                name: format!("Customer {id}"),
                                email: None,
                                subsidiary: None,
                                currency: Some("USD".into()),
                                balance: Decimal::new(i64::from(n % 7) * 1000 - 1500, 2),
                                inactive: false,
                                intercompany: false,
                                last_modified: t,
                                custom: custom.into_iter().collect(),
                            },
                            classification: if excluded {
                                Classification {
                                    excluded: true,
                                    source: Some(ExclusionSource::Native),
                                    reason: "native:inactive".into(),
                                }
                            } else {
                                Classification::included()
                            },
                            classified_at: t,
                            first_seen: t,
                        })?;
                        for j in 0..(n % 5) {
                            let inv_id = format!("{id}-I{j}");
                            tx.upsert_record(
                                conn,
                                &Record::Invoice(Invoice {
                                    external_id: inv_id.clone(),
                                    number: inv_id.clone(),
                                    customer_id: id.clone(),
                                    issue_date: day(0),
                                    due_date: day(n + j * 7),
                                    currency: if j == 3 { "EUR" } else { "USD" }.into(),
                                    total: Decimal::new(50_000, 2),
                                    amount_due: Decimal::new(i64::from((n + j) % 4) * 20_000, 2),
                                    status: if j == 1 && n % 3 == 0 {
                                        InvoiceStatus::Paid
                                    } else {
                                        InvoiceStatus::Open
                                    },
                                    on_hold: (n + j) % 13 == 0,
                                    last_modified: t,
                                }),
                                false,
                            )?;
                            if (n + j) % 9 == 0 {
                                tx.put_hold_flag(
                                    conn,
                                    &inv_id,
                                    &HoldFlag {
                                        customer_id: id.clone(),
                                        actor: "alice".into(),
                                        reason: "dispute".into(),
                                        at: t,
                                    },
                                )?;
                            }
                        }
                        if n % 8 == 1 {
                            tx.put_stop_flag(
                                &CustomerKey::new(conn, &id),
                                &StopFlag {
                                    actor: "bob".into(),
                                    reason: "payment plan".into(),
                                    at: t,
                                    until: (n % 16 == 1)
                                        .then(|| NaiveDate::from_ymd_opt(2026, 2, 10).unwrap()),
                                    note: None,
                                },
                            )?;
                        }
                    }
                }
                Ok(())
            })
            .await
            .unwrap();

        let mut expected = Vec::new();
        for sc in store.customers(None, None) {
            let sc = sc.unwrap();
            if sc.classification.excluded {
                continue;
            }
            let g = gather_one_by_one(&store, sc, as_of).unwrap();
            if let Assessment::Listed(c) = assess_gathered(&cfg, &g) {
                expected.push(c);
            }
        }
        assert!(expected.iter().any(|c| c.selected));
        assert!(expected
            .iter()
            .any(|c| c.reasons.contains(&Reason::Stopped)));
        assert!(expected.iter().any(|c| c.held_invoices > 0));

        // Whole, and in stretches of various sizes resumed by cursor.
        for (max_items, max_customers) in [(usize::MAX, u64::MAX), (7, 2000), (usize::MAX, 333)] {
            let mut got = Vec::new();
            let mut after: Option<CustomerKey> = None;
            loop {
                let s = scan(
                    &store,
                    &cfg,
                    &Filter::default(),
                    as_of,
                    after.as_ref(),
                    max_items,
                    max_customers,
                )
                .unwrap();
                got.extend(s.items);
                if s.done {
                    break;
                }
                after = s.last.or(after);
            }
            assert_eq!(got, expected, "{max_items} {max_customers}");
        }
        // One customer: explain reads the same facts.
        for c in &expected[..20] {
            let key = CustomerKey::parse(&c.customer).unwrap();
            let sc = store.customer(&key).unwrap().unwrap();
            let one = gather_one_by_one(&store, sc.clone(), as_of).unwrap();
            let set = gather(&store, sc, as_of).unwrap();
            assert_eq!(set.overdue.len(), one.overdue.len());
            assert_eq!(set.stop, one.stop);
        }
        // An invoice the store holds for an excluded customer stays out.
        store
            .write(|tx| {
                tx.upsert_record(
                    "demo",
                    &Record::Invoice(Invoice {
                        external_id: "stray".into(),
                        number: "stray".into(),
                        customer_id: "C0004".into(),
                        issue_date: day(0),
                        due_date: day(0),
                        currency: "USD".into(),
                        total: Decimal::new(50_000, 2),
                        amount_due: Decimal::new(50_000, 2),
                        status: InvoiceStatus::Open,
                        on_hold: false,
                        last_modified: t,
                    }),
                    false,
                )
            })
            .await
            .unwrap();
        let all = scan(
            &store,
            &cfg,
            &Filter::default(),
            as_of,
            None,
            usize::MAX,
            u64::MAX,
        )
        .unwrap();
        assert!(all.items.iter().all(|c| c.customer != "demo:C0004"));
        assert_eq!(all.items, expected);
    }
}
