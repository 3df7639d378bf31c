//! Customer search ("where is customer X?"), the excluded list and its CSV
//! export.
//!
//! Search covers excluded customers too: `q` matches name, email and external
//! id case-insensitively, and filters narrow by connector, state and
//! exclusion source. Pages are cursor-based (`after` = the last customer key
//! of the previous page), so a listing never holds more than one page. This
//! module only reads the store; it changes nothing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::Policy;
use crate::export::csv_safe;
use crate::model::{CustomerKey, ExclusionSource, ManualAction, ManualDecision, Timestamp};
use crate::store::{Result, Store, StoredCustomer};

/// The largest page a caller may ask for.
pub const MAX_LIMIT: usize = 1000;
/// Rows per chunk of the streamed CSV export.
const CSV_CHUNK: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Included,
    Excluded,
}

/// Which customers a search returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Lower-cased needle; `None` matches every customer.
    q: Option<String>,
    pub connector: Option<String>,
    pub state: Option<State>,
    pub source: Option<ExclusionSource>,
}

impl Filter {
    /// A blank `q` means no text filter.
    pub fn new(
        q: Option<&str>,
        connector: Option<&str>,
        state: Option<State>,
        source: Option<ExclusionSource>,
    ) -> Filter {
        Filter {
            q: q.map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_lowercase),
            connector: connector.map(str::to_string),
            state,
            source,
        }
    }

    pub fn has_text(&self) -> bool {
        self.q.is_some()
    }

    /// Whether `q` occurs in the customer's name, email or external id,
    /// ignoring case.
    pub fn text_matches(&self, external_id: &str, name: &str, email: Option<&str>) -> bool {
        let Some(q) = &self.q else { return true };
        [Some(external_id), Some(name), email]
            .into_iter()
            .flatten()
            .any(|field| field.to_lowercase().contains(q.as_str()))
    }

    pub fn matches(&self, sc: &StoredCustomer) -> bool {
        let cl = &sc.classification;
        if let Some(c) = &self.connector {
            if &sc.connector != c {
                return false;
            }
        }
        match self.state {
            Some(State::Excluded) if !cl.excluded => return false,
            Some(State::Included) if cl.excluded => return false,
            _ => {}
        }
        if self.source.is_some() && cl.source != self.source {
            return false;
        }
        let c = &sc.customer;
        self.text_matches(&c.external_id, &c.name, c.email.as_deref())
    }
}

/// One page of matching customers and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<StoredCustomer>,
    /// The manual decision of each item (same order), read with the page.
    pub decisions: Vec<Option<ManualDecision>>,
    /// `None` on the last page.
    pub next: Option<CustomerKey>,
}

impl Page {
    /// The items as search lists them.
    pub fn summaries(&self) -> Vec<CustomerSummary> {
        self.items
            .iter()
            .zip(&self.decisions)
            .map(|(sc, d)| summary_with(sc, d.clone()))
            .collect()
    }
}

/// Up to `limit` customers matching `filter`, in key order, after `after`.
pub fn page(
    store: &Store,
    filter: &Filter,
    after: Option<&CustomerKey>,
    limit: usize,
) -> Result<Page> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let mut items = Vec::with_capacity(limit.min(64));
    let mut decisions = Vec::with_capacity(limit.min(64));
    let mut more = false;
    // The page and one more row (is there a next page?) in the first query
    // when most customers match.
    for r in store.customers_with_decisions_from(filter.connector.as_deref(), after, limit + 1) {
        let (sc, d) = r?;
        if !filter.matches(&sc) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(sc);
        decisions.push(d);
    }
    let next = if more {
        items.last().map(StoredCustomer::key)
    } else {
        None
    };
    Ok(Page {
        items,
        decisions,
        next,
    })
}

/// A customer as listed by search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerSummary {
    /// `connector:external_id`, the reference the API and CLI take.
    pub customer: String,
    pub connector: String,
    pub external_id: String,
    pub name: String,
    pub email: Option<String>,
    pub excluded: bool,
    pub source: Option<ExclusionSource>,
    /// `included`, `manual`, `manual:overrides rule:x`, `rule:x`, `native:inactive`.
    pub reason: String,
    pub classified_at: Timestamp,
    /// The manual decision, when there is one.
    pub decision: Option<ManualDecision>,
}

pub fn summary(store: &Store, sc: &StoredCustomer) -> Result<CustomerSummary> {
    Ok(summary_with(sc, store.manual_decision(&sc.key())?))
}

/// [`summary`] with the decision already read.
pub fn summary_with(sc: &StoredCustomer, decision: Option<ManualDecision>) -> CustomerSummary {
    let key = sc.key();
    CustomerSummary {
        customer: key.to_string(),
        decision,
        connector: key.connector,
        external_id: key.external_id,
        name: sc.customer.name.clone(),
        email: sc.customer.email.clone(),
        excluded: sc.classification.excluded,
        source: sc.classification.source,
        reason: sc.classification.reason.clone(),
        classified_at: sc.classified_at,
    }
}

/// One line of the excluded list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExcludedEntry {
    pub customer: String,
    pub connector: String,
    pub external_id: String,
    /// `None` for a manual exclusion waiting for a customer never synced.
    pub name: Option<String>,
    pub email: Option<String>,
    pub source: ExclusionSource,
    /// The classification reason: `manual`, `rule:<id>`, `native:<flag>`.
    pub reason: String,
    /// In words: the admin's reason, the rule's description or what the
    /// native flag means.
    pub detail: String,
    pub excluded_at: Timestamp,
    /// The admin for a manual exclusion; otherwise who applied it (`sync`
    /// for an upstream change, `reload` for a rule change).
    pub excluded_by: String,
    /// False while a manual exclusion waits for its customer's first sync.
    pub synced: bool,
}

impl ExcludedEntry {
    /// The reason as one CSV cell: `manual: went bankrupt`,
    /// `rule:test-accounts: Test and sandbox accounts`, `native:inactive: ...`.
    pub fn reason_text(&self) -> String {
        if self.detail.is_empty() {
            self.reason.clone()
        } else {
            format!("{}: {}", self.reason, self.detail)
        }
    }
}

/// Audit entries of a customer looked at for who excluded it.
const ACTOR_WINDOW: u64 = 50;

/// The excluded-list entry of an excluded customer (`None` if included).
pub fn excluded_entry(
    store: &Store,
    policy: &dyn Policy,
    sc: &StoredCustomer,
) -> Result<Option<ExcludedEntry>> {
    let key = sc.key();
    let decision = store.manual_decision(&key)?;
    let actor = store
        .audit(Some(&key), ACTOR_WINDOW as usize)?
        .into_iter()
        .find(|e| e.action == "classified")
        .map(|e| e.actor);
    Ok(excluded_entry_with(policy, sc, decision, actor))
}

/// [`excluded_entry`] from its facts: the customer's manual decision and
/// the actor of its latest `classified` audit entry.
fn excluded_entry_with(
    policy: &dyn Policy,
    sc: &StoredCustomer,
    decision: Option<ManualDecision>,
    classified_by: Option<String>,
) -> Option<ExcludedEntry> {
    let cl = &sc.classification;
    if !cl.excluded {
        return None;
    }
    let key = sc.key();
    let source = cl.source.unwrap_or(ExclusionSource::Native);
    let decision = decision.filter(|d| d.action == ManualAction::Exclude);
    let (detail, excluded_by) = match (&decision, source) {
        (Some(d), ExclusionSource::Manual) => (d.reason.clone(), d.actor.clone()),
        _ => (
            describe_reason(policy, &sc.connector, &cl.reason),
            classified_by.unwrap_or_else(|| "sync".into()),
        ),
    };
    Some(ExcludedEntry {
        customer: key.to_string(),
        connector: key.connector,
        external_id: key.external_id,
        name: Some(sc.customer.name.clone()),
        email: sc.customer.email.clone(),
        source,
        reason: cl.reason.clone(),
        detail,
        excluded_at: sc.classified_at,
        excluded_by,
        synced: true,
    })
}

/// What a `rule:<id>` or `native:<flag>` reason means, in words.
pub fn describe_reason(policy: &dyn Policy, connector: &str, reason: &str) -> String {
    if let Some(id) = reason.strip_prefix("rule:") {
        return policy
            .rules()
            .get(id)
            .map(|r| r.description.clone())
            .unwrap_or_else(|| "rule no longer configured".into());
    }
    if let Some(flag) = reason.strip_prefix("native:") {
        return policy
            .known_native(connector)
            .iter()
            .find(|n| n.name == flag)
            .map(|n| n.description.to_string())
            .unwrap_or_default();
    }
    String::new()
}

/// One page of the excluded list (`filter.state` is forced to excluded).
pub fn excluded_page(
    store: &Store,
    policy: &dyn Policy,
    filter: &Filter,
    after: Option<&CustomerKey>,
    limit: usize,
) -> Result<(Vec<ExcludedEntry>, Option<CustomerKey>)> {
    let filter = Filter {
        state: Some(State::Excluded),
        ..filter.clone()
    };
    let p = page(store, &filter, after, limit)?;
    // Who classified each customer: one query per connector of the page.
    let mut actors: HashMap<CustomerKey, String> = HashMap::new();
    let mut by_connector: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for sc in &p.items {
        by_connector
            .entry(sc.connector.as_str())
            .or_default()
            .push(sc.customer.external_id.as_str());
    }
    for (conn, ids) in by_connector {
        for (id, actor) in store.latest_actors(conn, &ids, "classified", ACTOR_WINDOW)? {
            actors.insert(CustomerKey::new(conn, id), actor);
        }
    }
    let mut out = Vec::with_capacity(p.items.len());
    for (sc, d) in p.items.iter().zip(p.decisions) {
        let actor = actors.remove(&sc.key());
        out.extend(excluded_entry_with(policy, sc, d, actor));
    }
    Ok((out, p.next))
}

/// Manual exclusions waiting for customers never synced, matching the
/// filter's text (external id) and connector.
pub fn pending_exclusions(store: &Store, filter: &Filter) -> Result<Vec<ExcludedEntry>> {
    if matches!(filter.state, Some(State::Included))
        || filter.source.is_some_and(|s| s != ExclusionSource::Manual)
    {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut waiting: Vec<(CustomerKey, ManualDecision)> = Vec::new();
    let mut decisions = store.manual_decisions().peekable();
    while let Some(r) = decisions.next() {
        let (key, d) = r?;
        if d.action == ManualAction::Exclude
            && filter
                .connector
                .as_ref()
                .is_none_or(|c| c == &key.connector)
            && filter.text_matches(&key.external_id, "", None)
        {
            waiting.push((key, d));
        }
        // Which of them were synced: one look-up per stretch of decisions.
        if waiting.len() >= 256 || (decisions.peek().is_none() && !waiting.is_empty()) {
            let mut by_connector: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (k, _) in &waiting {
                by_connector
                    .entry(k.connector.as_str())
                    .or_default()
                    .push(k.external_id.as_str());
            }
            let mut synced = std::collections::HashSet::new();
            for (conn, ids) in by_connector {
                for id in store.stored_customers(conn, &ids)? {
                    synced.insert(CustomerKey::new(conn, id));
                }
            }
            for (key, d) in waiting.drain(..) {
                if synced.contains(&key) {
                    continue;
                }
                out.push(ExcludedEntry {
                    customer: key.to_string(),
                    connector: key.connector,
                    external_id: key.external_id,
                    name: None,
                    email: None,
                    source: ExclusionSource::Manual,
                    reason: "manual".into(),
                    detail: d.reason,
                    excluded_at: d.at,
                    excluded_by: d.actor,
                    synced: false,
                });
            }
        }
    }
    Ok(out)
}

pub const CSV_HEADER: [&str; 8] = [
    "connector",
    "external_id",
    "name",
    "email",
    "source",
    "reason",
    "excluded_at",
    "excluded_by",
];

/// Writes entries as CSV rows (with the header line first when asked). Text
/// cells that a spreadsheet would run as a formula are quoted with a leading
/// `'` ([`csv_safe`]).
pub fn csv_rows(entries: &[ExcludedEntry], header: bool) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing into a Vec cannot fail; csv only reports I/O errors.
    if header {
        w.write_record(CSV_HEADER).expect("writing to a Vec");
    }
    for e in entries {
        w.write_record([
            csv_safe(&e.connector).as_ref(),
            &csv_safe(&e.external_id),
            &csv_safe(e.name.as_deref().unwrap_or("")),
            &csv_safe(e.email.as_deref().unwrap_or("")),
            e.source.as_str(),
            &csv_safe(&e.reason_text()),
            &e.excluded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            &csv_safe(&e.excluded_by),
        ])
        .expect("writing to a Vec");
    }
    w.into_inner().expect("flushing a Vec")
}

/// The whole excluded list as CSV, produced chunk by chunk so memory stays
/// flat however many customers are excluded: the header, then synced
/// customers page by page, then manual exclusions still waiting for a sync.
/// `Default` exports everything; [`CsvExport::new`] what a filter selects
/// (the filters of the excluded list).
#[derive(Debug, Default)]
pub struct CsvExport {
    phase: Phase,
    after: Option<CustomerKey>,
    filter: Filter,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Header,
    Customers,
    Pending,
    Done,
}

impl CsvExport {
    /// The excluded customers `filter` selects (its state is ignored: only
    /// excluded customers are exported).
    pub fn new(filter: Filter) -> CsvExport {
        CsvExport {
            filter,
            ..CsvExport::default()
        }
    }

    /// The next chunk of CSV bytes, or `None` at the end. After an error the
    /// export is over.
    pub fn next_chunk(&mut self, store: &Store, policy: &dyn Policy) -> Result<Option<Vec<u8>>> {
        let out = match self.phase {
            Phase::Header => {
                self.phase = Phase::Customers;
                Ok(Some(csv_rows(&[], true)))
            }
            Phase::Customers => {
                let r = excluded_page(store, policy, &self.filter, self.after.as_ref(), CSV_CHUNK);
                match r {
                    Ok((rows, next)) => {
                        match next {
                            Some(n) => self.after = Some(n),
                            None => self.phase = Phase::Pending,
                        }
                        Ok(Some(csv_rows(&rows, false)))
                    }
                    Err(e) => Err(e),
                }
            }
            Phase::Pending => {
                self.phase = Phase::Done;
                let filter = Filter {
                    state: Some(State::Excluded),
                    ..self.filter.clone()
                };
                pending_exclusions(store, &filter).map(|p| Some(csv_rows(&p, false)))
            }
            Phase::Done => Ok(None),
        };
        if out.is_err() {
            self.phase = Phase::Done;
        }
        out
    }
}
