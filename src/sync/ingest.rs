//! Ingest: applies one upstream page to the store inside one write.
//!
//! Called from inside [`Store::write`](crate::store::Store::write) closures, so
//! everything here is synchronous and atomic with the cursor that follows the
//! page. Rules are passed in by the caller, who reads them under the store's
//! writer lock, so a concurrent rule reload never races a page.

use serde::Serialize;

use crate::classify;
use crate::connectors::{NativeExclusion, Page};
use crate::exclusion;
use crate::model::{Customer, CustomerKey, Entity, Quarantined, Record, Timestamp};
use crate::resync::queue;
use crate::rules::RuleSet;
use crate::store::{keys::valid_id, Result, StoredCustomer, Tx, Upsert};

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
        let parked = tx.take_parked(&key)?;
        if sc.classification.excluded {
            for r in &parked {
                count_dropped(tx, ctx.connector, r.entity())?;
            }
            stats.dropped += parked.len() as u64;
        } else {
            for r in &parked {
                if tx.upsert_record(ctx.connector, r, false)? != Upsert::Stale {
                    stats.unparked += 1;
                }
            }
        }
    }
    for id in &page.deleted {
        let key = CustomerKey::new(ctx.connector, id);
        if tx.customer(&key)?.is_some() {
            let (i, t) = tx.purge_customer_records(&key)?;
            queue::remove_customer(tx, ctx.connector, id)?;
            tx.delete_customer(&key);
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
        match tx.customer(&key)? {
            None => {
                tx.upsert_record(ctx.connector, r, true)?;
                stats.parked += 1;
            }
            Some(sc) if sc.classification.excluded => {
                // If it used to belong to an included customer, that copy is
                // now outdated: take it out.
                tx.remove_record(ctx.connector, r.entity(), r.external_id(), None)?;
                count_dropped(tx, ctx.connector, r.entity())?;
                stats.dropped += 1;
            }
            Some(_) => match tx.upsert_record(ctx.connector, r, false)? {
                Upsert::Stale => stats.stale += 1,
                _ => stats.written += 1,
            },
        }
    }
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
