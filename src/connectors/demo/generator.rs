//! The synthetic ERP behind the demo connector: its data, its change stream
//! and the mutators tests use to play "someone edited this upstream".
//!
//! Generation is deterministic for a seed: ids, amounts, flags, names and the
//! order of last-modified times are the same on every run. Only absolute
//! times and dates depend on the wall clock at generation (everything is laid
//! out backwards from "now"). This module knows nothing about cursors, pages
//! on the wire or the request budget; the connector in `mod.rs` does.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{Days, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::DemoOptions;
use crate::model::{
    Customer, Entity, Invoice, InvoiceStatus, Record, Timestamp, Transaction, TransactionKind,
};

const DAY_MS: i64 = 86_400_000;
/// Generated last-modified times fall within this window before "now".
const HISTORY_DAYS: u32 = 365;
/// Generated invoices are issued within this many days before today.
const ISSUE_WINDOW_DAYS: u32 = 548;
const PAYMENT_TERMS_DAYS: u64 = 30;

#[rustfmt::skip]
const NAMES: [&str; 50] = [
    "Acme", "Northwind", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Soylent", "Tyrell",
    "Wonka", "Stark", "Wayne", "Cyberdyne", "Oscorp", "Pied Piper", "Dunder", "Sterling", "Bluth",
    "Gekko", "Massive", "Prestige", "Virtucon", "Aperture", "Blue Sun", "Monarch", "Gringotts",
    "Ollivander", "Duff", "Krusty", "Sirius", "Oceanic", "Nakatomi", "Weyland", "Zorg", "Kwik",
    "Lacuna", "Rekall", "Tessier", "Yoyodyne", "Zenith", "Alpine", "Harbor", "Granite", "Juniper",
    "Meridian", "Summit", "Riverside", "Beacon", "Cobalt", "Evergreen",
];

#[rustfmt::skip]
const TRADES: [&str; 30] = [
    "Logistics", "Engineering", "Foods", "Textiles", "Software", "Analytics", "Dental", "Builders",
    "Consulting", "Media", "Pharma", "Energy", "Robotics", "Trading", "Furniture", "Optics",
    "Motors", "Print", "Marine", "Studios", "Labs", "Retail", "Hospitality", "Freight", "Medical",
    "Packaging", "Security", "Farms", "Electrics", "Paper",
];

const MAILBOXES: [&str; 5] = ["billing", "accounts", "ap", "finance", "invoices"];

/// One subsidiary of the demo group and what goes with it.
struct Subsidiary {
    code: &'static str,
    currency: &'static str,
    country: &'static str,
    legal_forms: [&'static str; 3],
    tld: &'static str,
    regions: &'static [&'static str],
}

const SUBSIDIARIES: [Subsidiary; 3] = [
    Subsidiary {
        code: "US",
        currency: "USD",
        country: "Americas",
        legal_forms: ["Inc.", "LLC", "Corp."],
        tld: "com",
        regions: &["us-east", "us-central", "us-west"],
    },
    Subsidiary {
        code: "UK",
        currency: "GBP",
        country: "UK",
        legal_forms: ["Ltd", "PLC", "LLP"],
        tld: "co.uk",
        regions: &["uk-north", "uk-south"],
    },
    Subsidiary {
        code: "DE",
        currency: "EUR",
        country: "Deutschland",
        legal_forms: ["GmbH", "AG", "KG"],
        tld: "de",
        regions: &["de-north", "de-south"],
    },
];

/// Picks a subsidiary: half the customers are in the US, 30 % in the UK.
fn pick_subsidiary(rng: &mut StdRng) -> &'static Subsidiary {
    match rng.random_range(0..10) {
        0..=4 => &SUBSIDIARIES[0],
        5..=7 => &SUBSIDIARIES[1],
        _ => &SUBSIDIARIES[2],
    }
}

fn customer_id(seq: u64) -> String {
    format!("C{seq:05}")
}

fn invoice_id(seq: u64) -> String {
    format!("INV{seq:06}")
}

fn transaction_id(kind: TransactionKind, seq: u64) -> String {
    match kind {
        TransactionKind::Payment => format!("PMT{seq:06}"),
        TransactionKind::CreditNote => format!("CRN{seq:06}"),
    }
}

/// Whole currency units, in cents.
const fn units(n: i64) -> i64 {
    n * 100
}

fn money(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// Converts back to cents; every demo amount has at most two decimals.
fn cents(amount: Decimal) -> i64 {
    (amount * Decimal::ONE_HUNDRED)
        .trunc()
        .to_i64()
        .expect("demo amounts fit in i64 cents")
}

fn ts_millis(ms: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(ms).expect("demo timestamps are within chrono's range")
}

/// `pct` percent of `cents`, rounded down: integer arithmetic only.
fn percent(cents: i64, pct: i64) -> i64 {
    cents * pct / 100
}

/// An invoice total in cents: mostly hundreds to thousands, a few large ones.
fn invoice_total(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..100) {
        0..=39 => rng.random_range(units(50)..units(500)),
        40..=74 => rng.random_range(units(500)..units(5_000)),
        75..=94 => rng.random_range(units(5_000)..units(50_000)),
        _ => rng.random_range(units(50_000)..units(250_000)),
    }
}

/// An index in `0..n` skewed towards 0: the product of two uniform draws, so
/// a few indexes get many hits and many get few (density ~ -ln x).
fn skewed_index(rng: &mut StdRng, n: usize) -> usize {
    let a = rng.random_range(0..n) as u128;
    let b = rng.random_range(0..n) as u128;
    (a * b / n as u128) as usize
}

/// `round(n * ratio)`, clamped to `0..=n`.
fn share(n: usize, ratio: f64) -> usize {
    let ratio = if ratio.is_finite() {
        ratio.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((n as f64 * ratio).round() as usize).min(n)
}

fn sample_set(rng: &mut StdRng, n: usize, amount: usize) -> HashSet<usize> {
    rand::seq::index::sample(rng, n, amount.min(n))
        .into_iter()
        .collect()
}

/// What kind of customer to make.
#[derive(Default, Clone, Copy)]
struct Flavour {
    test: bool,
    example_email: bool,
    intercompany: bool,
    inactive: bool,
}

/// Makes one customer. Draws the same number of random values whatever the
/// flavour, so flags chosen elsewhere never shift the rest of the sequence.
fn make_customer(rng: &mut StdRng, seq: u64, f: Flavour, last_modified: Timestamp) -> Customer {
    let sub = pick_subsidiary(rng);
    let name = *NAMES.choose(rng).expect("non-empty");
    let trade = *TRADES.choose(rng).expect("non-empty");
    let form = *sub.legal_forms.choose(rng).expect("non-empty");
    let mailbox = *MAILBOXES.choose(rng).expect("non-empty");
    let region = *sub.regions.choose(rng).expect("non-empty");
    let test_style = rng.random_range(0..4);
    let has_email = rng.random_range(0..100) >= 5;
    let segment = match rng.random_range(0..100) {
        0..=69 => "smb",
        70..=91 => "mid",
        _ => "enterprise",
    };

    let company = if f.intercompany {
        format!("{name} Group {} {form}", sub.country)
    } else {
        format!("{name} {trade} {form}")
    };
    let display = if f.test {
        match test_style {
            0 => format!("Test Customer {seq}"),
            1 => format!("{company} (test)"),
            2 => format!("TEST - {company}"),
            _ => format!("{name} Test Account"),
        }
    } else {
        company
    };
    let business = if f.intercompany { "group" } else { trade };
    let slug: String = format!("{name}-{business}")
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let email = if f.example_email {
        Some(format!("{mailbox}+{seq}@example.com"))
    } else if has_email {
        Some(format!("{mailbox}@{slug}.{}", sub.tld))
    } else {
        None
    };
    let mut custom = BTreeMap::new();
    custom.insert("segment".to_owned(), segment.to_owned());
    custom.insert("region".to_owned(), region.to_owned());
    Customer {
        external_id: customer_id(seq),
        name: display,
        email,
        subsidiary: Some(sub.code.to_owned()),
        currency: Some(sub.currency.to_owned()),
        balance: Decimal::ZERO,
        inactive: f.inactive,
        intercompany: f.intercompany,
        last_modified,
        custom,
    }
}

/// Hands out distinct last-modified times laid out backwards from `now`.
struct Stamps {
    now_ms: i64,
    used: HashSet<i64>,
}

impl Stamps {
    /// A not-yet-used instant at most `max_age_days` (and at least one day's
    /// worth of range) before now. The random draw never depends on now.
    fn pick(&mut self, rng: &mut StdRng, max_age_days: u32) -> Timestamp {
        let range = i64::from(max_age_days.min(HISTORY_DAYS)) * DAY_MS + DAY_MS;
        loop {
            let offset = rng.random_range(0..range);
            if self.used.insert(offset) {
                return ts_millis(self.now_ms - offset);
            }
        }
    }
}

/// A row of one upstream table.
trait Row: Clone {
    fn id(&self) -> &str;
    fn modified(&self) -> Timestamp;
    /// The customer a record belongs to; `None` for customers themselves.
    fn owner(&self) -> Option<&str>;
}

impl Row for Customer {
    fn id(&self) -> &str {
        &self.external_id
    }
    fn modified(&self) -> Timestamp {
        self.last_modified
    }
    fn owner(&self) -> Option<&str> {
        None
    }
}

impl Row for Invoice {
    fn id(&self) -> &str {
        &self.external_id
    }
    fn modified(&self) -> Timestamp {
        self.last_modified
    }
    fn owner(&self) -> Option<&str> {
        Some(&self.customer_id)
    }
}

impl Row for Transaction {
    fn id(&self) -> &str {
        &self.external_id
    }
    fn modified(&self) -> Timestamp {
        self.last_modified
    }
    fn owner(&self) -> Option<&str> {
        Some(&self.customer_id)
    }
}

/// A position in a change stream: `(last_modified or deletion time, id)`.
pub(super) type StreamKey = (Timestamp, String);

/// One slice of a change stream, in stream order.
pub(super) struct Changes<T> {
    pub items: Vec<T>,
    pub deleted: Vec<String>,
    /// Key of the last entry returned, `None` when nothing was returned.
    pub last: Option<StreamKey>,
    pub has_more: bool,
}

/// One entity's upstream rows, indexed the way the connector reads them, so
/// that a page costs O(page_size · log n) rather than a scan.
struct Table<T> {
    rows: BTreeMap<String, T>,
    /// The change stream: every live row at its last-modified time and every
    /// tombstone at its deletion time, each id at most once. The value says
    /// whether the entry is a tombstone.
    stream: BTreeMap<StreamKey, bool>,
    tombstones: BTreeMap<String, Timestamp>,
    /// `(customer id, row id)` of every live row that has an owner.
    by_owner: BTreeSet<(String, String)>,
}

impl<T: Row> Table<T> {
    fn new() -> Self {
        Table {
            rows: BTreeMap::new(),
            stream: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            by_owner: BTreeSet::new(),
        }
    }

    fn unindex(&mut self, id: &str) -> Option<T> {
        let old = self.rows.remove(id)?;
        self.stream.remove(&(old.modified(), id.to_owned()));
        if let Some(owner) = old.owner() {
            self.by_owner.remove(&(owner.to_owned(), id.to_owned()));
        }
        Some(old)
    }

    /// Inserts or replaces a row (and resurrects a deleted id).
    fn upsert(&mut self, row: T) {
        let id = row.id().to_owned();
        self.unindex(&id);
        if let Some(at) = self.tombstones.remove(&id) {
            self.stream.remove(&(at, id.clone()));
        }
        self.stream.insert((row.modified(), id.clone()), false);
        if let Some(owner) = row.owner() {
            self.by_owner.insert((owner.to_owned(), id.clone()));
        }
        self.rows.insert(id, row);
    }

    fn delete(&mut self, id: &str, at: Timestamp) -> Option<T> {
        let old = self.unindex(id)?;
        self.tombstones.insert(id.to_owned(), at);
        self.stream.insert((at, id.to_owned()), true);
        Some(old)
    }

    /// Up to `limit` live rows with an id after `after` and at most `upto`,
    /// by id; the flag says whether more remain in that range.
    fn in_range(&self, after: Option<&str>, upto: &str, limit: usize) -> (Vec<T>, bool) {
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let mut rows = self
            .rows
            .range::<String, _>((lower, Bound::Included(upto.to_owned())));
        let out: Vec<T> = rows.by_ref().take(limit).map(|(_, r)| r.clone()).collect();
        (out, rows.next().is_some())
    }

    /// Ids splitting the live rows into at most `parts` ranges of about the
    /// same number of rows: the last id of each range, in order.
    fn split_ids(&self, parts: usize) -> Vec<String> {
        let n = self.rows.len();
        if n == 0 || parts == 0 {
            return Vec::new();
        }
        let per = n.div_ceil(parts);
        self.rows
            .keys()
            .enumerate()
            .filter(|(i, _)| (i + 1) % per == 0 || i + 1 == n)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The position of the newest entry of the change stream.
    fn stream_end(&self) -> Option<StreamKey> {
        self.stream.keys().next_back().cloned()
    }

    /// Up to `limit` stream entries strictly after `after`.
    fn changes_after(&self, after: Option<&StreamKey>, limit: usize) -> Changes<T> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut entries = self.stream.range::<StreamKey, _>((lower, Bound::Unbounded));
        let mut out = Changes {
            items: Vec::new(),
            deleted: Vec::new(),
            last: None,
            has_more: false,
        };
        for (key, &tombstone) in entries.by_ref().take(limit) {
            if tombstone {
                out.deleted.push(key.1.clone());
            } else {
                out.items.push(self.rows[&key.1].clone());
            }
            out.last = Some(key.clone());
        }
        out.has_more = entries.next().is_some();
        out
    }

    /// Up to `limit` live rows owned by any of `owners` with id > `after`, by
    /// id; the flag says whether more remain.
    fn owned_by(&self, owners: &[String], after: Option<&str>, limit: usize) -> (Vec<T>, bool) {
        let owners: BTreeSet<&String> = owners.iter().collect();
        let mut ids: Vec<&String> = Vec::new();
        for owner in owners {
            let lower = match after {
                Some(a) => Bound::Excluded((owner.clone(), a.to_owned())),
                None => Bound::Included((owner.clone(), String::new())),
            };
            ids.extend(
                self.by_owner
                    .range((lower, Bound::Unbounded))
                    .take_while(|(o, _)| o == owner)
                    .take(limit + 1)
                    .map(|(_, id)| id),
            );
        }
        ids.sort_unstable();
        let has_more = ids.len() > limit;
        let rows = ids
            .into_iter()
            .take(limit)
            .map(|id| self.rows[id].clone())
            .collect();
        (rows, has_more)
    }

    /// A row from a random point of the id space, walking forward (and
    /// wrapping once) to the first one `accept` takes, within `tries` rows.
    fn random_row(
        &self,
        rng: &mut StdRng,
        probe: String,
        tries: usize,
        accept: impl Fn(&T) -> bool,
    ) -> Option<&T> {
        self.rows
            .range(probe..)
            .chain(self.rows.iter())
            .take(tries)
            .map(|(_, row)| row)
            .find(|row| accept(row))
            .or_else(|| {
                // Few acceptable rows (or a tiny table): pick among all of them.
                let all: Vec<&T> = self.rows.values().filter(|r| accept(r)).collect();
                all.choose(rng).copied()
            })
    }
}

/// The mutable upstream state, behind [`DemoErp`]'s mutex.
struct State {
    customers: Table<Customer>,
    invoices: Table<Invoice>,
    transactions: Table<Transaction>,
    /// Next sequence numbers for new ids.
    next_customer: u64,
    next_invoice: u64,
    next_payment: u64,
    next_credit: u64,
    /// The last instant handed out; every change gets a later one.
    clock_ms: i64,
    trickle_passes: u64,
}

impl State {
    /// A new unique instant, never before the wall clock and strictly after
    /// every last-modified or deletion time the ERP has handed out.
    fn tick(&mut self) -> Timestamp {
        self.clock_ms = Utc::now().timestamp_millis().max(self.clock_ms + 1);
        ts_millis(self.clock_ms)
    }

    fn today(&self) -> NaiveDate {
        ts_millis(self.clock_ms).date_naive()
    }

    fn customer_exists(&self, id: &str) -> bool {
        self.customers.rows.contains_key(id)
    }

    /// Keeps sequence counters ahead of ids given from outside.
    fn note_id(next: &mut u64, prefix: &str, id: &str) {
        if let Some(n) = id.strip_prefix(prefix).and_then(|s| s.parse::<u64>().ok()) {
            *next = (*next).max(n + 1);
        }
    }

    fn update_customer(&mut self, id: &str, f: impl FnOnce(&mut Customer)) -> bool {
        let Some(mut c) = self.customers.rows.get(id).cloned() else {
            return false;
        };
        f(&mut c);
        c.external_id = id.to_owned();
        c.last_modified = self.tick();
        self.customers.upsert(c);
        true
    }

    fn add_invoice(&mut self, mut inv: Invoice) -> Invoice {
        assert!(
            self.customer_exists(&inv.customer_id),
            "demo ERP: invoice for unknown customer {}",
            inv.customer_id
        );
        if inv.external_id.is_empty() {
            inv.external_id = invoice_id(self.next_invoice);
        }
        Self::note_id(&mut self.next_invoice, "INV", &inv.external_id);
        inv.last_modified = self.tick();
        self.invoices.upsert(inv.clone());
        inv
    }

    fn update_invoice(&mut self, id: &str, f: impl FnOnce(&mut Invoice)) -> bool {
        let Some(mut inv) = self.invoices.rows.get(id).cloned() else {
            return false;
        };
        f(&mut inv);
        assert!(
            self.customer_exists(&inv.customer_id),
            "demo ERP: invoice {id} moved to unknown customer {}",
            inv.customer_id
        );
        inv.external_id = id.to_owned();
        inv.last_modified = self.tick();
        self.invoices.upsert(inv);
        true
    }

    fn add_transaction(&mut self, mut tx: Transaction) -> Transaction {
        assert!(
            self.customer_exists(&tx.customer_id),
            "demo ERP: transaction for unknown customer {}",
            tx.customer_id
        );
        let (next, prefix) = match tx.kind {
            TransactionKind::Payment => (&mut self.next_payment, "PMT"),
            TransactionKind::CreditNote => (&mut self.next_credit, "CRN"),
        };
        if tx.external_id.is_empty() {
            tx.external_id = transaction_id(tx.kind, *next);
        }
        Self::note_id(next, prefix, &tx.external_id);
        tx.last_modified = self.tick();
        self.transactions.upsert(tx.clone());
        tx
    }

    /// Moves a customer's balance the way the ERP does when its documents change.
    fn adjust_balance(&mut self, customer: &str, delta_cents: i64) {
        self.update_customer(customer, |c| c.balance += money(delta_cents));
    }

    fn random_customer(&self, rng: &mut StdRng) -> Option<String> {
        if self.next_customer <= 1 {
            return None;
        }
        let probe = customer_id(rng.random_range(1..self.next_customer));
        self.customers
            .random_row(rng, probe, 1, |_| true)
            .map(|c| c.external_id.clone())
    }

    fn random_invoice(&self, rng: &mut StdRng, open_only: bool) -> Option<Invoice> {
        if self.next_invoice <= 1 {
            return None;
        }
        let probe = invoice_id(rng.random_range(1..self.next_invoice));
        self.invoices
            .random_row(rng, probe, 200, |i| {
                !open_only || (i.status == InvoiceStatus::Open && i.amount_due > Decimal::ZERO)
            })
            .cloned()
    }

    /// Applies one trickle change; see [`DemoErp::trickle`].
    fn trickle_one(&mut self, rng: &mut StdRng) {
        let roll = rng.random_range(0..100);
        let done = match roll {
            0..=34 => false, // a new invoice, below
            35..=69 => self.trickle_settle(rng, TransactionKind::Payment),
            70..=81 => self.trickle_settle(rng, TransactionKind::CreditNote),
            82..=91 => self.trickle_dispute(rng),
            92..=96 => self.trickle_edit_customer(rng),
            97..=98 => self.trickle_toggle_inactive(rng),
            _ => {
                self.trickle_new_customer(rng);
                true
            }
        };
        if !done && !self.trickle_new_invoice(rng) {
            self.trickle_new_customer(rng);
        }
    }

    /// A new open invoice for a customer picked through a random existing
    /// invoice, so busy customers stay busy.
    fn trickle_new_invoice(&mut self, rng: &mut StdRng) -> bool {
        let customer = match self.random_invoice(rng, false) {
            Some(inv) => inv.customer_id,
            None => match self.random_customer(rng) {
                Some(c) => c,
                None => return false,
            },
        };
        let c = &self.customers.rows[&customer];
        let currency = c.currency.clone().unwrap_or_default();
        let subsidiary = c.subsidiary.clone().unwrap_or_default();
        let total = invoice_total(rng);
        let issue = self.today();
        let seq = self.next_invoice;
        self.add_invoice(Invoice {
            external_id: invoice_id(seq),
            number: format!("{subsidiary}-{seq:06}"),
            customer_id: customer.clone(),
            issue_date: issue,
            due_date: issue + Days::new(PAYMENT_TERMS_DAYS),
            currency,
            total: money(total),
            amount_due: money(total),
            status: InvoiceStatus::Open,
            on_hold: false,
            last_modified: Timestamp::UNIX_EPOCH, // set on insert
        });
        self.adjust_balance(&customer, total);
        true
    }

    /// A payment (in full 60 % of the time) or a credit note against an open invoice.
    fn trickle_settle(&mut self, rng: &mut StdRng, kind: TransactionKind) -> bool {
        let Some(inv) = self.random_invoice(rng, true) else {
            return false;
        };
        let due = cents(inv.amount_due);
        let amount = match kind {
            TransactionKind::Payment if rng.random_bool(0.6) => due,
            TransactionKind::Payment => percent(due, rng.random_range(10..=90)),
            TransactionKind::CreditNote => percent(due, rng.random_range(10..=50)),
        }
        .clamp(1, due);
        let date = self.today();
        self.add_transaction(Transaction {
            external_id: String::new(),
            kind,
            customer_id: inv.customer_id.clone(),
            date,
            amount: money(amount),
            currency: inv.currency.clone(),
            last_modified: Timestamp::UNIX_EPOCH, // set on insert
        });
        self.update_invoice(&inv.external_id, |i| {
            i.amount_due -= money(amount);
            if i.amount_due <= Decimal::ZERO {
                i.amount_due = Decimal::ZERO;
                i.status = InvoiceStatus::Paid;
            }
        });
        self.adjust_balance(&inv.customer_id, -amount);
        true
    }

    /// An open invoice goes on hold (disputed) or comes off hold.
    fn trickle_dispute(&mut self, rng: &mut StdRng) -> bool {
        let Some(inv) = self.random_invoice(rng, true) else {
            return false;
        };
        self.update_invoice(&inv.external_id, |i| i.on_hold = !i.on_hold)
    }

    fn trickle_edit_customer(&mut self, rng: &mut StdRng) -> bool {
        let Some(id) = self.random_customer(rng) else {
            return false;
        };
        let mailbox = *MAILBOXES.choose(rng).expect("non-empty");
        let segment = *["smb", "mid", "enterprise"].choose(rng).expect("non-empty");
        let change_email = rng.random_bool(0.5);
        self.update_customer(&id, |c| {
            if change_email {
                if let Some(email) = &mut c.email {
                    if let Some((_, domain)) = email.split_once('@') {
                        *email = format!("{mailbox}@{domain}");
                    }
                }
            } else {
                c.custom.insert("segment".to_owned(), segment.to_owned());
            }
        })
    }

    fn trickle_toggle_inactive(&mut self, rng: &mut StdRng) -> bool {
        let Some(id) = self.random_customer(rng) else {
            return false;
        };
        self.update_customer(&id, |c| c.inactive = !c.inactive)
    }

    fn trickle_new_customer(&mut self, rng: &mut StdRng) {
        let seq = self.next_customer;
        let intercompany = rng.random_bool(0.01);
        let flavour = Flavour {
            intercompany,
            ..Flavour::default()
        };
        let t = self.tick();
        let c = make_customer(rng, seq, flavour, t);
        self.next_customer += 1;
        self.customers.upsert(c);
    }
}

/// Mixes the seed and a pass number into the seed of that pass's changes.
fn pass_seed(seed: u64, pass: u64) -> u64 {
    // splitmix64 finaliser over both inputs.
    let mut z = seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Draft of a transaction before ids are assigned in date order.
struct TxDraft {
    age: u32,
    kind: TransactionKind,
    customer: usize,
    cents: i64,
}

fn generate(opts: &DemoOptions) -> State {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    // Anchor the generated history at the start of the current UTC day, so a
    // restart on the same day regenerates identical records (same
    // last-modified times) and a resumed sync has nothing to read again.
    let now_ms = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_millis();
    let today = ts_millis(now_ms).date_naive();
    let mut stamps = Stamps {
        now_ms,
        used: HashSet::new(),
    };
    let n = opts.customers;

    // Customers, with flags on exact shares picked at random.
    let inactive = sample_set(&mut rng, n, share(n, opts.inactive_ratio));
    let intercompany = sample_set(&mut rng, n, share(n, opts.intercompany_ratio));
    let tests = sample_set(&mut rng, n, share(n, 0.015));
    let example = sample_set(&mut rng, n, share(n, 0.01));
    let mut customers: Vec<Customer> = (0..n)
        .map(|i| {
            let flavour = Flavour {
                test: tests.contains(&i),
                example_email: example.contains(&i) || (tests.contains(&i) && i % 2 == 0),
                intercompany: intercompany.contains(&i),
                inactive: inactive.contains(&i),
            };
            let lm = stamps.pick(&mut rng, HISTORY_DAYS);
            make_customer(&mut rng, i as u64 + 1, flavour, lm)
        })
        .collect();

    // Invoices: ids follow issue dates; a random few customers hold many.
    let mut heavy_first: Vec<usize> = (0..n).collect();
    heavy_first.shuffle(&mut rng);
    let mut ages: Vec<u32> = (0..if n == 0 { 0 } else { opts.invoices })
        .map(|_| rng.random_range(0..ISSUE_WINDOW_DAYS))
        .collect();
    ages.sort_unstable_by(|a, b| b.cmp(a));
    let mut due_cents = vec![0i64; n];
    let mut invoices = Vec::with_capacity(ages.len());
    let mut invoice_owner = Vec::with_capacity(ages.len());
    for (k, &age) in ages.iter().enumerate() {
        let owner = heavy_first[skewed_index(&mut rng, n)];
        let total = invoice_total(&mut rng);
        let paid_chance = match age {
            121.. => 0.92,
            31..=120 => 0.7,
            _ => 0.25,
        };
        let paid = rng.random_bool(paid_chance);
        let partly_paid = rng.random_bool(0.2);
        let paid_pct = rng.random_range(10..=90);
        let amount_due = if paid {
            0
        } else if partly_paid {
            total - percent(total, paid_pct)
        } else {
            total
        };
        let on_hold = rng.random_bool(0.02);
        let last_modified = stamps.pick(&mut rng, age);
        let issue = today - Days::new(u64::from(age));
        let seq = k as u64 + 1;
        let c = &customers[owner];
        due_cents[owner] += amount_due;
        invoice_owner.push(owner);
        invoices.push(Invoice {
            external_id: invoice_id(seq),
            number: format!("{}-{seq:06}", c.subsidiary.as_deref().unwrap_or_default()),
            customer_id: c.external_id.clone(),
            issue_date: issue,
            due_date: issue + Days::new(PAYMENT_TERMS_DAYS),
            currency: c.currency.clone().unwrap_or_default(),
            total: money(total),
            amount_due: money(amount_due),
            status: if paid {
                InvoiceStatus::Paid
            } else {
                InvoiceStatus::Open
            },
            on_hold,
            last_modified,
        });
    }

    // Transactions: payments of what invoices show as paid, credit notes
    // against a share of an invoice, payments on account when there are no
    // invoices. Ids follow dates, per kind.
    let mut drafts: Vec<TxDraft> = (0..if n == 0 { 0 } else { opts.transactions })
        .map(|_| {
            let credit = rng.random_bool(0.12);
            let kind = if credit {
                TransactionKind::CreditNote
            } else {
                TransactionKind::Payment
            };
            let pct = rng.random_range(5..=50);
            if invoices.is_empty() {
                return TxDraft {
                    age: rng.random_range(0..ISSUE_WINDOW_DAYS),
                    kind,
                    customer: heavy_first[skewed_index(&mut rng, n)],
                    cents: invoice_total(&mut rng),
                };
            }
            let k = rng.random_range(0..invoices.len());
            let delay = rng.random_range(0..=45);
            let inv = &invoices[k];
            let total = cents(inv.total);
            let paid = total - cents(inv.amount_due);
            let amount = match kind {
                TransactionKind::CreditNote => percent(total, pct),
                TransactionKind::Payment if paid > 0 => paid,
                TransactionKind::Payment => percent(total, pct * 2),
            };
            TxDraft {
                age: ages[k].saturating_sub(delay),
                kind,
                customer: invoice_owner[k],
                cents: amount.max(1),
            }
        })
        .collect();
    drafts.sort_by_key(|d| std::cmp::Reverse(d.age));
    let (mut next_payment, mut next_credit) = (1u64, 1u64);
    let transactions: Vec<Transaction> = drafts
        .iter()
        .map(|d| {
            let next = match d.kind {
                TransactionKind::Payment => &mut next_payment,
                TransactionKind::CreditNote => &mut next_credit,
            };
            let seq = *next;
            *next += 1;
            let c = &customers[d.customer];
            Transaction {
                external_id: transaction_id(d.kind, seq),
                kind: d.kind,
                customer_id: c.external_id.clone(),
                date: today - Days::new(u64::from(d.age)),
                amount: money(d.cents),
                currency: c.currency.clone().unwrap_or_default(),
                last_modified: stamps.pick(&mut rng, d.age),
            }
        })
        .collect();

    // Balances: what is due, except a few creditors holding unapplied credit.
    let creditors = sample_set(&mut rng, n, n.div_ceil(100));
    for (i, c) in customers.iter_mut().enumerate() {
        let credit = rng.random_range(units(10)..units(2_000));
        c.balance = if creditors.contains(&i) {
            money(-credit)
        } else {
            money(due_cents[i])
        };
    }

    let mut state = State {
        customers: Table::new(),
        invoices: Table::new(),
        transactions: Table::new(),
        next_customer: n as u64 + 1,
        next_invoice: invoices.len() as u64 + 1,
        next_payment,
        next_credit,
        clock_ms: now_ms,
        trickle_passes: 0,
    };
    customers
        .into_iter()
        .for_each(|c| state.customers.upsert(c));
    invoices.into_iter().for_each(|i| state.invoices.upsert(i));
    transactions
        .into_iter()
        .for_each(|t| state.transactions.upsert(t));
    state
}

/// The synthetic upstream ERP. Shared as `Arc<DemoErp>` between the connector
/// (which reads it like an API) and tests (which read snapshots and mutate it
/// like a user of the ERP would). All methods lock one internal mutex; none
/// holds it across an await.
pub struct DemoErp {
    options: DemoOptions,
    /// A std mutex: every critical section is short and synchronous.
    state: Mutex<State>,
}

impl std::fmt::Debug for DemoErp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoErp")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl DemoErp {
    /// Generates the ERP from `options` (expected to have passed
    /// [`DemoOptions::validate`]; out-of-range ratios are clamped).
    pub fn new(options: &DemoOptions) -> Arc<DemoErp> {
        Arc::new(DemoErp {
            state: Mutex::new(generate(options)),
            options: options.clone(),
        })
    }

    pub fn options(&self) -> &DemoOptions {
        &self.options
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a test's closure) leaves the
        // state consistent: every mutation is applied by one final upsert.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// All live customers, by id.
    pub fn customers(&self) -> Vec<Customer> {
        self.state().customers.rows.values().cloned().collect()
    }

    /// All live invoices, by id.
    pub fn invoices(&self) -> Vec<Invoice> {
        self.state().invoices.rows.values().cloned().collect()
    }

    /// All live payments and credit notes, by id.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.state().transactions.rows.values().cloned().collect()
    }

    /// Marks a customer inactive or active again. False if there is no such customer.
    pub fn set_customer_inactive(&self, id: &str, inactive: bool) -> bool {
        self.state().update_customer(id, |c| c.inactive = inactive)
    }

    /// Edits a customer (its id and last-modified time are the ERP's and are
    /// restored). False if there is no such customer.
    pub fn update_customer(&self, id: &str, f: impl FnOnce(&mut Customer)) -> bool {
        self.state().update_customer(id, f)
    }

    /// Stores an invoice (replacing one with the same id) and returns it as
    /// stored: an empty `external_id` gets the next `INV…` id, and
    /// `last_modified` is set by the ERP. Unlike [`trickle`](Self::trickle),
    /// direct mutators change exactly the record named (no balance update).
    ///
    /// # Panics
    /// If the customer does not exist: the ERP never holds orphans.
    pub fn add_invoice(&self, invoice: Invoice) -> Invoice {
        self.state().add_invoice(invoice)
    }

    /// Edits an invoice (its id and last-modified time are restored). False
    /// if there is no such invoice.
    ///
    /// # Panics
    /// If the edit moves it to a customer that does not exist.
    pub fn update_invoice(&self, id: &str, f: impl FnOnce(&mut Invoice)) -> bool {
        self.state().update_invoice(id, f)
    }

    /// Deletes an invoice, leaving a tombstone in the change stream. False if
    /// there is no such invoice.
    pub fn delete_invoice(&self, id: &str) -> bool {
        let mut s = self.state();
        let at = s.tick();
        s.invoices.delete(id, at).is_some()
    }

    /// Removes an invoice or transaction without a trace in the change
    /// stream, as an ERP does once a deletion is older than its deletion
    /// log keeps: only a full read of the customer's records notices.
    /// False if there is no such record.
    pub fn forget_record(&self, id: &str) -> bool {
        let mut s = self.state();
        s.invoices.unindex(id).is_some() || s.transactions.unindex(id).is_some()
    }

    /// Stores a payment or credit note; like [`add_invoice`](Self::add_invoice),
    /// an empty id gets the next `PMT…` / `CRN…` id.
    ///
    /// # Panics
    /// If the customer does not exist.
    pub fn add_transaction(&self, transaction: Transaction) -> Transaction {
        self.state().add_transaction(transaction)
    }

    /// Deletes a transaction, leaving a tombstone. False if there is none.
    pub fn delete_transaction(&self, id: &str) -> bool {
        let mut s = self.state();
        let at = s.tick();
        s.transactions.delete(id, at).is_some()
    }

    /// Applies `n` changes as users of the ERP would make them: new invoices
    /// (for customers picked through existing invoices), payments and credit
    /// notes that reduce an open invoice's amount due (paying it off flips it
    /// to paid), invoices going on or off hold, customer edits, now and then
    /// a customer turning inactive or active, and rarely a new customer.
    /// Payments, credit notes and new invoices also move the customer's
    /// balance. The choices are seeded from `(seed, pass number)`, so the
    /// same sequence of calls on the same seed makes the same changes.
    /// `n == 0` changes nothing and does not count as a pass.
    pub fn trickle(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.state();
        s.trickle_passes += 1;
        let mut rng = StdRng::seed_from_u64(pass_seed(self.options.seed, s.trickle_passes));
        for _ in 0..n {
            s.trickle_one(&mut rng);
        }
    }

    /// How many trickle passes have been applied.
    pub fn trickle_passes(&self) -> u64 {
        self.state().trickle_passes
    }

    /// Customers changed after `after`, in change-stream order.
    pub(super) fn customer_changes(
        &self,
        after: Option<&StreamKey>,
        limit: usize,
    ) -> Changes<Customer> {
        self.state().customers.changes_after(after, limit)
    }

    /// Invoices or transactions changed or deleted after `after`, in
    /// change-stream order. `entity` must not be `Customers`.
    pub(super) fn record_changes(
        &self,
        entity: Entity,
        after: Option<&StreamKey>,
        limit: usize,
    ) -> Changes<Record> {
        fn map<T>(c: Changes<T>, f: fn(T) -> Record) -> Changes<Record> {
            Changes {
                items: c.items.into_iter().map(f).collect(),
                deleted: c.deleted,
                last: c.last,
                has_more: c.has_more,
            }
        }
        let s = self.state();
        match entity {
            Entity::Invoices => map(s.invoices.changes_after(after, limit), Record::Invoice),
            Entity::Transactions => map(
                s.transactions.changes_after(after, limit),
                Record::Transaction,
            ),
            Entity::Customers => unreachable!("the connector routes customers elsewhere"),
        }
    }

    /// A first sync of `entity` split into at most `parts` id ranges of
    /// about `rows / parts` live rows each: the change-stream position an
    /// incremental read continues from afterwards (taken under the same lock,
    /// so nothing falls between), and the last id of each range; `None` for
    /// an empty entity.
    pub(super) fn partition(
        &self,
        entity: Entity,
        parts: usize,
    ) -> (Option<StreamKey>, Vec<String>, usize) {
        let s = self.state();
        match entity {
            Entity::Customers => (
                s.customers.stream_end(),
                s.customers.split_ids(parts),
                s.customers.rows.len(),
            ),
            Entity::Invoices => (
                s.invoices.stream_end(),
                s.invoices.split_ids(parts),
                s.invoices.rows.len(),
            ),
            Entity::Transactions => (
                s.transactions.stream_end(),
                s.transactions.split_ids(parts),
                s.transactions.rows.len(),
            ),
        }
    }

    /// Live customers with an id after `after` and at most `upto`, by id.
    pub(super) fn customers_in_range(
        &self,
        after: Option<&str>,
        upto: &str,
        limit: usize,
    ) -> (Vec<Customer>, bool) {
        self.state().customers.in_range(after, upto, limit)
    }

    /// Live invoices or transactions with an id after `after` and at most
    /// `upto`, by id. `entity` must not be `Customers`.
    pub(super) fn records_in_range(
        &self,
        entity: Entity,
        after: Option<&str>,
        upto: &str,
        limit: usize,
    ) -> (Vec<Record>, bool) {
        let s = self.state();
        match entity {
            Entity::Invoices => {
                let (rows, more) = s.invoices.in_range(after, upto, limit);
                (rows.into_iter().map(Record::Invoice).collect(), more)
            }
            Entity::Transactions => {
                let (rows, more) = s.transactions.in_range(after, upto, limit);
                (rows.into_iter().map(Record::Transaction).collect(), more)
            }
            Entity::Customers => unreachable!("the connector routes customers elsewhere"),
        }
    }

    /// Live invoices or transactions of `customers` with id > `after`, by id.
    pub(super) fn records_of(
        &self,
        entity: Entity,
        customers: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Record>, bool) {
        let s = self.state();
        match entity {
            Entity::Invoices => {
                let (rows, more) = s.invoices.owned_by(customers, after, limit);
                (rows.into_iter().map(Record::Invoice).collect(), more)
            }
            Entity::Transactions => {
                let (rows, more) = s.transactions.owned_by(customers, after, limit);
                (rows.into_iter().map(Record::Transaction).collect(), more)
            }
            Entity::Customers => unreachable!("the connector routes customers elsewhere"),
        }
    }
}
