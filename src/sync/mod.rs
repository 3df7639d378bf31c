//! The sync scheduler: one poller task per connector.
//!
//! A pass reads customers first, then invoices, then transactions, each from
//! its stored cursor, page by page. Each page is applied by [`ingest`] and
//! written together with the cursor that follows it in one atomic, flushed
//! store write, before the next page is requested. So a crash at any instant
//! loses nothing (the page is re-read) and duplicates nothing (ingest upserts
//! by id, newer version wins).
//!
//! The scheduler does not retry by itself: the connector's
//! [`Budget`](crate::connectors::Budget) does. A pass that still fails is
//! recorded in the connector's status and tried again at the next interval,
//! or when asked (`POST /api/v1/connectors/{id}/sync`). A pass stopped by a
//! used-up daily quota shows `quota_exhausted` with `resumes_at` and the
//! next one starts at that time; one stopped by a refused refresh token
//! shows `needs_reconnect` with the reason and the command that fixes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::{App, ConnectorHandle, ConnectorStatus, LastError, Reconnect, WorkerState};
use crate::connectors::{ConnectorError, Cursor, Page};
use crate::ingest::{self, Ingest, PageStats};
use crate::model::Entity;
use crate::store::{StoreError, Tx};

pub use crate::ingest::SyncError;

/// Runs the poller of one connector until shutdown.
pub async fn run_poller(app: Arc<App>, h: Arc<ConnectorHandle>) {
    let interval = h.config.poll_interval;
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let start_ts = chrono::Utc::now();
        h.set_pass_running(true);
        h.update_status(|s| {
            s.state = WorkerState::Syncing;
            s.last_sync_start = Some(start_ts);
        });
        let result = {
            let _busy = h.budget.poll_activity();
            tokio::select! {
                r = sync_pass(&app, &h) => Some(r),
                _ = app.shutdown.cancelled() => None,
            }
        };
        h.set_pass_running(false);
        let Some(result) = result else { break };
        if let Err(SyncError::Store(e)) = &result {
            if e.is_lease_lost() {
                // Another daemon works this connector now: stop at once.
                tracing::warn!(connector = %h.id, error = %e, "poller stopped");
                h.update_status(|s| s.state = WorkerState::Standby);
                return;
            }
        }
        let end = chrono::Utc::now();
        let ms = started.elapsed().as_millis() as u64;
        let mut resumes_at = None;
        match &result {
            Ok(stats) => {
                tracing::info!(connector = %h.id, duration_ms = ms, written = stats.written, dropped = stats.dropped, deleted = stats.deleted, "sync pass finished");
            }
            Err(SyncError::Connector {
                source: ConnectorError::QuotaExhausted { resumes_at: at },
                ..
            }) => {
                resumes_at = Some(*at);
                tracing::warn!(connector = %h.id, resumes_at = %at, "sync pass parked: daily request quota used up");
            }
            Err(e) => {
                tracing::error!(connector = %h.id, error = %e, "sync pass failed");
            }
        }
        h.update_status(|s| record_outcome(s, &result, end, ms));
        // Resync jobs may have been queued by this pass.
        app.resync_wakeup.notify_waiters();
        // Parked: nothing is sent before the quota resets, whatever the
        // interval (a sync-now request is refused meanwhile).
        let wait = match resumes_at {
            Some(at) => (at - chrono::Utc::now()).to_std().unwrap_or_default(),
            // The store could not be written: try again soon, backing off
            // (2 s doubling, at most the interval), not a whole interval later.
            None if matches!(&result, Err(SyncError::Store(e)) if e.is_unavailable()) => {
                let n = h.status().consecutive_errors.min(5) as u32;
                (Duration::from_secs(2) * 2u32.pow(n.saturating_sub(1))).min(interval)
            }
            None => interval,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = h.poll_now.notified() => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    h.update_status(|s| s.state = WorkerState::Stopped);
}

/// Records the outcome of one pass in the connector's status.
fn record_outcome(
    s: &mut ConnectorStatus,
    result: &Result<PageStats, SyncError>,
    end: crate::model::Timestamp,
    ms: u64,
) {
    s.passes += 1;
    s.last_sync_end = Some(end);
    s.last_sync_duration_ms = Some(ms);
    s.resumes_at = None;
    match result {
        Ok(_) => {
            s.state = WorkerState::Idle;
            s.last_success = Some(end);
            s.consecutive_errors = 0;
            s.reconnect = None;
        }
        Err(e) => {
            s.consecutive_errors += 1;
            s.last_error = Some(LastError {
                at: end,
                message: crate::connectors::redact::redact(&e.to_string()),
            });
            match e {
                SyncError::Connector {
                    source: ConnectorError::QuotaExhausted { resumes_at },
                    ..
                } => {
                    s.state = WorkerState::QuotaExhausted;
                    s.resumes_at = Some(*resumes_at);
                }
                SyncError::Connector {
                    source: ConnectorError::NeedsReconnect { reason, command },
                    ..
                } => {
                    s.state = WorkerState::NeedsReconnect;
                    let since = match &s.reconnect {
                        Some(r) if &r.reason == reason => r.since,
                        _ => end,
                    };
                    s.reconnect = Some(Reconnect {
                        since,
                        reason: reason.clone(),
                        command: command.clone(),
                    });
                }
                _ => s.state = WorkerState::Failing,
            }
        }
    }
}

/// One full pass over all entities of a connector.
pub async fn sync_pass(app: &App, h: &ConnectorHandle) -> Result<PageStats, SyncError> {
    let mut total = PageStats::default();
    for entity in Entity::ALL {
        let mut cursor = Cursor(app.store.cursor(&h.id, entity)?.unwrap_or_default());
        loop {
            let (stats, next, more) = match entity {
                Entity::Customers => {
                    let page = h
                        .connector
                        .fetch_customers(&cursor)
                        .await
                        .map_err(|source| SyncError::Connector { entity, source })?;
                    let stats = commit_page(app, h, entity, &page, ingest::customers).await?;
                    (stats, page.next, page.has_more)
                }
                Entity::Invoices | Entity::Transactions => {
                    let page = h
                        .connector
                        .fetch_records(entity, &cursor)
                        .await
                        .map_err(|source| SyncError::Connector { entity, source })?;
                    let stats = commit_page(app, h, entity, &page, |tx, ctx, p| {
                        ingest::records(tx, ctx, entity, p)
                    })
                    .await?;
                    (stats, page.next, page.has_more)
                }
            };
            if stats.newly_excluded > 0 || stats.newly_included > 0 {
                tracing::info!(connector = %h.id, newly_excluded = stats.newly_excluded, newly_included = stats.newly_included, purged = stats.purged, "upstream changes moved customers");
            }
            h.update_status(|s| s.session.entry(entity).or_default().add(&stats));
            total.add(&stats);
            cursor = next;
            if !more {
                break;
            }
        }
        if let Some(after) = h.connector.verification(entity, &cursor) {
            total.add(&verify_stored(app, h, entity, after).await?);
        }
    }
    Ok(total)
}

/// Checks every stored record of `entity` against upstream in batches of
/// [`Connector::verify_batch_size`](crate::connectors::Connector::verify_batch_size)
/// and removes (with a tombstone) the ones deleted there; `after` is stored
/// with the last batch. Used when a connector's change feed could not vouch
/// for every deletion. A crash midway leaves the old cursor, so the next
/// pass verifies again: removals are idempotent.
async fn verify_stored(
    app: &App,
    h: &ConnectorHandle,
    entity: Entity,
    after: Cursor,
) -> Result<PageStats, SyncError> {
    let mut ids: Vec<String> = Vec::new();
    for r in app.store.records(Some(&h.id)) {
        let (_, rec) = r?;
        if rec.entity() == entity {
            ids.push(rec.external_id().to_string());
        }
    }
    let checked = ids.len();
    let batch = h.connector.verify_batch_size().max(1);
    let mut chunks: Vec<&[String]> = ids.chunks(batch).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    let mut stats = PageStats::default();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let gone = if chunk.is_empty() {
            Vec::new()
        } else {
            h.connector
                .deleted_among(entity, chunk)
                .await
                .map_err(|source| SyncError::Connector { entity, source })?
        };
        let removed = app
            .store
            .write(|tx| {
                let now = chrono::Utc::now();
                let mut n = 0;
                for id in &gone {
                    if tx.remove_record(&h.id, entity, id, Some(now))? {
                        n += 1;
                    }
                }
                tx.add_counter(&h.id, &format!("deleted_{entity}"), n)?;
                tx.add_counter(&h.id, &format!("verified_{entity}"), chunk.len() as u64)?;
                if i == last {
                    tx.set_cursor(&h.id, entity, &after.0)?;
                }
                Ok(n)
            })
            .await?;
        stats.deleted += removed;
    }
    tracing::info!(connector = %h.id, %entity, checked, deleted = stats.deleted, "verified stored records against upstream");
    Ok(stats)
}

/// Applies one page with `apply` and stores the cursor that follows it, in
/// one atomic, flushed write. Rules are read inside the write (under the
/// store's writer lock) so a concurrent reload never races the page.
async fn commit_page<T>(
    app: &App,
    h: &ConnectorHandle,
    entity: Entity,
    page: &Page<T>,
    apply: impl FnOnce(&mut Tx<'_>, &Ingest<'_>, &Page<T>) -> Result<PageStats, StoreError>,
) -> Result<PageStats, StoreError> {
    app.store
        .write(|tx| {
            let rules = app.rules();
            let ctx = Ingest {
                connector: &h.id,
                rules: &rules,
                native: &h.native,
                now: chrono::Utc::now(),
            };
            let stats = apply(tx, &ctx, page)?;
            tx.set_cursor(&h.id, entity, &page.next.0)?;
            Ok(stats)
        })
        .await
}
