//! Ingest: applies one upstream page to the store inside one write. Shared
//! by the poller ([`crate::sync`]) and the resync worker ([`crate::resync`]).
//!
//! Called from inside [`Store::write`](crate::store::Store::write) closures, so
//! everything here is synchronous and atomic with the cursor that follows the
//! page. Rules are passed in by the caller, who reads them under the store's
//! writer lock, so a concurrent rule reload never races a page.

use std::collections::HashSet;

use serde::Serialize;

use crate::classify;
use crate::connectors::{ConnectorError, NativeExclusion, Page};
use crate::exclusion;
use crate::model::{Customer, CustomerKey, Entity, ManualAction, Quarantined, Record, Timestamp};
use crate::resync::queue;
use crate::rules::RuleSet;
use crate::store::{valid_id, Result, StoreError, StoredCustomer, Tx, Upsert};

/// Why fetching and applying a stream of pages stopped (a poll pass or a
/// resync batch): an upstream error for one entity stream, or a store error.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{entity}: {source}")]
    Connector {
        entity: Entity,
        source: ConnectorError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything ingest needs besides the page.
pub struct Ingest<'a> {
    pub connector: &'a str,
    pub rules: &'a RuleSet,
    pub native: &'a [NativeExclusion],
    pub now: Timestamp,
}

/// What one page did, for counters and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PageStats {
    pub received: u64,
    pub written: u64,
    pub stale: u64,
    pub dropped: u64,
    pub parked: u64,
    pub unparked: u64,
    pub deleted: u64,
    pub quarantined: u64,
    pub newly_excluded: u64,
    pub newly_included: u64,
    pub purged: u64,
}

impl PageStats {
    pub fn add(&mut self, o: &PageStats) {
        self.received += o.received;
        self.written += o.written;
        self.stale += o.stale;
        self.dropped += o.dropped;
        self.parked += o.parked;
        self.unparked += o.unparked;
        self.deleted += o.deleted;
        self.quarantined += o.quarantined;
        self.newly_excluded += o.newly_excluded;
        self.newly_included += o.newly_included;
        self.purged += o.purged;
    }
}

fn quarantine(
    tx: &mut Tx<'_>,
    ctx: &Ingest<'_>,
    q: Quarantined,
    stats: &mut PageStats,
) -> Result<()> {
    tracing::warn!(connector = ctx.connector, entity = %q.entity, id = ?q.external_id, reason = %q.reason, "quarantined upstream record");
    tx.quarantine(ctx.connector, ctx.now, q)?;
    stats.quarantined += 1;
    Ok(())
}

fn bad_id(entity: Entity, id: &str, what: &str) -> Quarantined {
    Quarantined {
        entity,
        external_id: Some(id.replace('\0', "\\0")),
        reason: format!(
            "{what} `{}` is empty or contains a NUL byte",
            id.replace('\0', "\\0")
        ),
        raw: String::new(),
    }
}

/// Applies a page of customers: classify each, purge or queue resync on
/// transitions, and release records parked for it.
pub fn customers(tx: &mut Tx<'_>, ctx: &Ingest<'_>, page: &Page<Customer>) -> Result<PageStats> {
    let mut stats = PageStats {
        received: page.items.len() as u64,
        ..Default::default()
    };
    let mut reincluded = Vec::new();
    for c in &page.items {
        if !valid_id(&c.external_id) {
            quarantine(
                tx,
                ctx,
                bad_id(Entity::Customers, &c.external_id, "customer id"),
                &mut stats,
            )?;
            continue;
        }
        let key = CustomerKey::new(ctx.connector, &c.external_id);
        let existing = tx.customer(&key)?;
        if let Some(e) = &existing {
            if e.customer.last_modified > c.last_modified {
                stats.stale += 1;
                continue;
            }
        }
        let manual = tx.manual_decision(&key)?;
        let class = classify::classify(c, manual.as_ref(), ctx.rules, ctx.native);
        let was = existing.as_ref().map(|e| e.classification.clone());
        let mut sc = match existing {
            Some(mut e) => {
                e.customer = c.clone();
                e
            }
            None => StoredCustomer {
                connector: ctx.connector.to_string(),
                customer: c.clone(),
                classification: class.clone(),
                classified_at: ctx.now,
                first_seen: ctx.now,
            },
        };
        // Take parked records first: if the customer arrives excluded they
        // count as dropped, not as purged.
        let parked = tx.take_parked(&key)?;
        let t = exclusion::apply(
            tx,
            &mut sc,
            was.as_ref(),
            class,
            "sync",
            "upstream record changed",
            ctx.now,
            false,
        )?;
        stats.written += 1;
        if t.newly_excluded && was.is_some() {
            stats.newly_excluded += 1;
        }
        stats.purged += t.purged_invoices + t.purged_transactions;
        if t.newly_included {
            stats.newly_included += 1;
            reincluded.push(c.external_id.clone());
        }
        if sc.classification.excluded {
            for r in &parked {
                count_dropped(tx, ctx.connector, r.entity())?;
            }
            stats.dropped += parked.len() as u64;
        } else {
            for r in &parked {
                if tx.upsert_record(ctx.connector, r, false)? != Upsert::Stale {
                    stats.unparked += 1;
                    // Stored now: counted like a record stored on arrival.
                    tx.add_counter(ctx.connector, &format!("synced_{}", r.entity()), 1)?;
                }
            }
        }
    }
    for id in &page.deleted {
        let key = CustomerKey::new(ctx.connector, id);
        if tx.customer(&key)?.is_some() {
            let (i, t) = tx.purge_customer_records(&key)?;
            queue::remove_customer(tx, ctx.connector, id)?;
            tx.delete_customer(&key)?;
            stats.deleted += 1;
            stats.purged += i + t;
        }
    }
    if !reincluded.is_empty() {
        queue::enqueue(
            tx,
            ctx.connector,
            &reincluded,
            "included again upstream",
            ctx.now,
        )?;
    }
    for q in &page.quarantined {
        quarantine(tx, ctx, q.clone(), &mut stats)?;
    }
    tx.add_counter(ctx.connector, "synced_customers", stats.written)?;
    tx.add_counter(ctx.connector, "deleted_customers", stats.deleted)?;
    tx.add_counter(ctx.connector, "quarantined", stats.quarantined)?;
    Ok(stats)
}

/// Stores the records waiting in `pending` (all of included customers).
fn store_pending(
    tx: &mut Tx<'_>,
    ctx: &Ingest<'_>,
    pending: &mut Vec<&Record>,
    stats: &mut PageStats,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    for outcome in tx.upsert_records(ctx.connector, pending)? {
        match outcome {
            Upsert::Stale => stats.stale += 1,
            _ => stats.written += 1,
        }
    }
    pending.clear();
    Ok(())
}

/// Drops the records waiting in `dropping` (all of excluded customers).
fn drop_pending(
    tx: &mut Tx<'_>,
    ctx: &Ingest<'_>,
    dropping: &mut Vec<&Record>,
    stats: &mut PageStats,
) -> Result<()> {
    if dropping.is_empty() {
        return Ok(());
    }
    tx.drop_records(ctx.connector, dropping)?;
    for r in dropping.iter() {
        count_dropped(tx, ctx.connector, r.entity())?;
    }
    stats.dropped += dropping.len() as u64;
    dropping.clear();
    Ok(())
}

fn count_dropped(tx: &mut Tx<'_>, conn: &str, e: Entity) -> Result<()> {
    tx.add_counter(conn, &format!("dropped_{e}"), 1)
}

/// Applies a page of invoices or transactions (from polling or a resync):
/// stored when the customer is included, dropped and counted when excluded,
/// parked when the customer has not arrived yet.
pub fn records(
    tx: &mut Tx<'_>,
    ctx: &Ingest<'_>,
    entity: Entity,
    page: &Page<Record>,
) -> Result<PageStats> {
    let mut stats = PageStats {
        received: page.items.len() as u64,
        ..Default::default()
    };
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|r| r.customer_id())
        .filter(|id| valid_id(id))
        .collect();
    tx.prefetch_customers(ctx.connector, &ids)?;
    // Records of included customers are stored together, those of excluded
    // customers dropped together, at the end; records of customers not seen
    // yet are handled as they come. Records with different ids commute; a
    // repeated id first writes what is pending, so the outcome is the same
    // as one by one.
    let mut pending: Vec<&Record> = Vec::new();
    let mut dropping: Vec<&Record> = Vec::new();
    let mut pending_ids: HashSet<(Entity, &str)> = HashSet::new();
    for r in &page.items {
        if !valid_id(r.external_id()) {
            quarantine(
                tx,
                ctx,
                bad_id(r.entity(), r.external_id(), "record id"),
                &mut stats,
            )?;
            continue;
        }
        if !valid_id(r.customer_id()) {
            quarantine(
                tx,
                ctx,
                bad_id(r.entity(), r.customer_id(), "customer reference"),
                &mut stats,
            )?;
            continue;
        }
        let key = CustomerKey::new(ctx.connector, r.customer_id());
        let excluded = tx.customer_excluded(&key)?;
        if !pending_ids.insert((r.entity(), r.external_id())) {
            // The same record again: what is pending goes first.
            store_pending(tx, ctx, &mut pending, &mut stats)?;
            drop_pending(tx, ctx, &mut dropping, &mut stats)?;
            pending_ids.clear();
            pending_ids.insert((r.entity(), r.external_id()));
        }
        match excluded {
            Some(false) => pending.push(r),
            // Not stored; a copy held under the customer it belonged to
            // before goes too, unless that copy is newer.
            Some(true) => dropping.push(r),
            None => {
                // A customer excluded by hand before its first sync never has
                // data stored, not even parked.
                let excluded_by_hand = tx
                    .manual_decision(&key)?
                    .is_some_and(|m| m.action == ManualAction::Exclude);
                if excluded_by_hand {
                    tx.drop_record(ctx.connector, r)?;
                    count_dropped(tx, ctx.connector, r.entity())?;
                    stats.dropped += 1;
                } else {
                    tx.upsert_record(ctx.connector, r, true)?;
                    stats.parked += 1;
                }
            }
        }
    }
    store_pending(tx, ctx, &mut pending, &mut stats)?;
    drop_pending(tx, ctx, &mut dropping, &mut stats)?;
    for id in &page.deleted {
        if tx.remove_record(ctx.connector, entity, id, Some(ctx.now))? {
            stats.deleted += 1;
        }
    }
    for q in &page.quarantined {
        quarantine(tx, ctx, q.clone(), &mut stats)?;
    }
    tx.add_counter(ctx.connector, &format!("synced_{entity}"), stats.written)?;
    tx.add_counter(ctx.connector, &format!("deleted_{entity}"), stats.deleted)?;
    tx.add_counter(ctx.connector, "quarantined", stats.quarantined)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::{Cursor, NATIVE_INACTIVE};
    use crate::model::{Invoice, InvoiceStatus};
    use crate::store::Store;
    use chrono::{NaiveDate, TimeZone, Utc};
    use rust_decimal::Decimal;

    fn ts(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_750_000_000 + s, 0).unwrap()
    }

    fn cust(id: &str, inactive: bool, at: i64) -> Customer {
        Customer {
            external_id: id.into(),
            name: format!("Customer {id}"),
            email: None,
            subsidiary: None,
            currency: Some("EUR".into()),
            balance: Decimal::ZERO,
            inactive,
            intercompany: false,
            last_modified: ts(at),
            custom: Default::default(),
        }
    }

    fn inv(id: &str, c: &str, at: i64) -> Record {
        Record::Invoice(Invoice {
            external_id: id.into(),
            number: id.into(),
            customer_id: c.into(),
            issue_date: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            due_date: NaiveDate::from_ymd_opt(2026, 4, 1).unwrap(),
            currency: "EUR".into(),
            total: Decimal::new(1234, 2),
            amount_due: Decimal::new(1234, 2),
            status: InvoiceStatus::Open,
            on_hold: false,
            last_modified: ts(at),
        })
    }

    fn page<T>(items: Vec<T>, deleted: Vec<&str>) -> Page<T> {
        Page {
            items,
            deleted: deleted.into_iter().map(String::from).collect(),
            quarantined: Vec::new(),
            next: Cursor::start(),
            has_more: false,
        }
    }

    async fn apply_customers(store: &Store, items: Vec<Customer>) -> PageStats {
        let rules = RuleSet::default();
        store
            .write(|tx| {
                let ctx = Ingest {
                    connector: "d",
                    rules: &rules,
                    native: &[NATIVE_INACTIVE],
                    now: ts(1000),
                };
                customers(tx, &ctx, &page(items, vec![]))
            })
            .await
            .unwrap()
    }

    async fn apply_records(store: &Store, items: Vec<Record>, deleted: Vec<&str>) -> PageStats {
        let rules = RuleSet::default();
        store
            .write(|tx| {
                let ctx = Ingest {
                    connector: "d",
                    rules: &rules,
                    native: &[NATIVE_INACTIVE],
                    now: ts(1000),
                };
                records(tx, &ctx, Entity::Invoices, &page(items, deleted))
            })
            .await
            .unwrap()
    }

    fn key(id: &str) -> CustomerKey {
        CustomerKey::new("d", id)
    }

    #[tokio::test]
    async fn one_record_twice_in_a_page_ends_as_if_applied_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", false, 0), cust("X", true, 0)]).await;
        // stored for A, then a newer version under the excluded X: dropped,
        // and the copy under A goes too
        let s = apply_records(
            &store,
            vec![inv("I1", "A", 10), inv("I2", "A", 10), inv("I1", "X", 20)],
            vec![],
        )
        .await;
        assert_eq!((s.written, s.dropped), (2, 1));
        assert_eq!(
            store.records_of(&key("A")).unwrap(),
            vec![inv("I2", "A", 10)]
        );
        // dropped for X, then an older copy for A is refused, a newer one kept
        let s = apply_records(
            &store,
            vec![inv("I3", "X", 20), inv("I3", "A", 15), inv("I3", "A", 25)],
            vec![],
        )
        .await;
        assert_eq!((s.dropped, s.stale, s.written), (1, 1, 1));
        assert_eq!(
            store.records_of(&key("A")).unwrap(),
            vec![inv("I2", "A", 10), inv("I3", "A", 25)]
        );
    }

    #[tokio::test]
    async fn records_wait_for_their_customer_and_are_released_when_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = apply_records(&store, vec![inv("I1", "A", 1), inv("I2", "B", 1)], vec![]).await;
        assert_eq!(s.parked, 2);
        assert_eq!(store.parked_count("d").unwrap(), 2);
        assert!(store.records_of(&key("A")).unwrap().is_empty());

        // A arrives included: its record is released. B arrives excluded:
        // its record is dropped and counted.
        let s = apply_customers(&store, vec![cust("A", false, 1), cust("B", true, 1)]).await;
        assert_eq!((s.unparked, s.dropped), (1, 1));
        assert_eq!(
            store.records_of(&key("A")).unwrap(),
            vec![inv("I1", "A", 1)]
        );
        assert!(store.records_of(&key("B")).unwrap().is_empty());
        assert_eq!(store.parked_count("d").unwrap(), 0);
        assert_eq!(store.counter("d", "dropped_invoices").unwrap(), 1);
    }

    #[tokio::test]
    async fn records_of_excluded_customers_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", false, 1), cust("X", true, 1)]).await;
        let s = apply_records(
            &store,
            vec![inv("I1", "A", 1), inv("I2", "X", 1), inv("I3", "X", 1)],
            vec![],
        )
        .await;
        assert_eq!((s.written, s.dropped), (1, 2));
        assert_eq!(store.counter("d", "dropped_invoices").unwrap(), 2);
        assert_eq!(store.counter("d", "synced_invoices").unwrap(), 1);
        assert!(store.records_of(&key("X")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn turning_inactive_upstream_purges_and_turning_active_queues_resync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", false, 1)]).await;
        apply_records(&store, vec![inv("I1", "A", 1), inv("I2", "A", 1)], vec![]).await;
        let s = apply_customers(&store, vec![cust("A", true, 2)]).await;
        assert_eq!((s.newly_excluded, s.purged), (1, 2));
        assert!(store.records_of(&key("A")).unwrap().is_empty());
        let sc = store.customer(&key("A")).unwrap().unwrap();
        assert_eq!(sc.classification.reason, "native:inactive");

        let s = apply_customers(&store, vec![cust("A", false, 3)]).await;
        assert_eq!(s.newly_included, 1);
        assert!(crate::resync::queue::is_queued(&store, "d", "A").unwrap());
        let audit = store.audit(Some(&key("A")), 10).unwrap();
        assert_eq!(audit.len(), 2, "{audit:?}");
        assert_eq!(audit[0].to.as_ref().unwrap().reason, "included");
        assert_eq!(audit[1].to.as_ref().unwrap().reason, "native:inactive");
    }

    #[tokio::test]
    async fn an_older_customer_version_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", true, 5)]).await;
        let s = apply_customers(&store, vec![cust("A", false, 4)]).await;
        assert_eq!(s.stale, 1);
        assert!(
            store
                .customer(&key("A"))
                .unwrap()
                .unwrap()
                .classification
                .excluded
        );
    }

    #[tokio::test]
    async fn deletions_remove_records_and_bad_ids_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", false, 1)]).await;
        apply_records(&store, vec![inv("I1", "A", 1)], vec![]).await;
        let s = apply_records(&store, vec![inv("bad\0id", "A", 1)], vec!["I1", "unknown"]).await;
        assert_eq!((s.deleted, s.quarantined), (1, 1));
        assert!(store.records_of(&key("A")).unwrap().is_empty());
        let q = store.quarantine("d", 10).unwrap();
        assert!(q[0].record.reason.contains("NUL byte"), "{q:?}");
        // A copy older than the deletion arriving later stays out.
        let s = apply_records(&store, vec![inv("I1", "A", 2)], vec![]).await;
        assert_eq!(s.stale, 1);
    }

    #[tokio::test]
    async fn an_older_copy_for_an_excluded_customer_does_not_remove_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", false, 1), cust("X", true, 1)]).await;
        apply_records(&store, vec![inv("I1", "A", 10)], vec![]).await;
        // A stale page (say a resync of X fetched long ago) says I1 was X's.
        let s = apply_records(&store, vec![inv("I1", "X", 5)], vec![]).await;
        assert_eq!(s.dropped, 1);
        assert_eq!(
            store.records_of(&key("A")).unwrap(),
            vec![inv("I1", "A", 10)]
        );
    }

    #[tokio::test]
    async fn a_record_moved_to_an_excluded_customer_cannot_come_back_from_an_old_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply_customers(&store, vec![cust("A", false, 1), cust("X", true, 1)]).await;
        apply_records(&store, vec![inv("I1", "A", 10)], vec![]).await;
        // Upstream moves I1 to excluded X: the copy under A goes.
        apply_records(&store, vec![inv("I1", "X", 20)], vec![]).await;
        assert!(store.records_of(&key("A")).unwrap().is_empty());
        // An old page (fetched before the move) must not bring it back.
        let s = apply_records(&store, vec![inv("I1", "A", 10)], vec![]).await;
        assert_eq!(s.stale, 1);
        assert!(store.records_of(&key("A")).unwrap().is_empty());
        // When X is re-included, its resync brings that same version back.
        apply_customers(&store, vec![cust("X", false, 2)]).await;
        let s = apply_records(&store, vec![inv("I1", "X", 20)], vec![]).await;
        assert_eq!(s.written, 1);
        assert_eq!(
            store.records_of(&key("X")).unwrap(),
            vec![inv("I1", "X", 20)]
        );
    }

    #[tokio::test]
    async fn records_of_a_customer_excluded_by_hand_before_its_first_sync_are_not_parked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write(|tx| {
                tx.set_manual_decision(
                    &key("Z"),
                    Some(&crate::model::ManualDecision {
                        action: ManualAction::Exclude,
                        actor: "admin".into(),
                        reason: "test account".into(),
                        at: ts(0),
                    }),
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let s = apply_records(&store, vec![inv("I9", "Z", 1)], vec![]).await;
        assert_eq!((s.parked, s.dropped), (0, 1));
        assert_eq!(store.parked_count("d").unwrap(), 0);
        assert_eq!(store.counter("d", "dropped_invoices").unwrap(), 1);
    }
}
