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
//! recorded in the connector's status and tried again at the next interval.

pub mod ingest;

use std::sync::Arc;
use std::time::Instant;

use crate::app::{App, ConnectorHandle, LastError, WorkerState};
use crate::connectors::{ConnectorError, Cursor, Page};
use crate::model::Entity;
use crate::store::{StoreError, Tx};
use ingest::{Ingest, PageStats};

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

/// Runs the poller of one connector until shutdown.
pub async fn run_poller(app: Arc<App>, h: Arc<ConnectorHandle>) {
    let interval = h.config.poll_interval;
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let start_ts = chrono::Utc::now();
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
        let Some(result) = result else { break };
        let end = chrono::Utc::now();
        let ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(stats) => {
                tracing::info!(connector = %h.id, duration_ms = ms, written = stats.written, dropped = stats.dropped, deleted = stats.deleted, "sync pass finished");
            }
            Err(e) => {
                tracing::error!(connector = %h.id, error = %e, "sync pass failed");
            }
        }
        h.update_status(|s| {
            s.passes += 1;
            s.last_sync_end = Some(end);
            s.last_sync_duration_ms = Some(ms);
            match &result {
                Ok(_) => {
                    s.state = WorkerState::Idle;
                    s.last_success = Some(end);
                    s.consecutive_errors = 0;
                }
                Err(e) => {
                    s.state = WorkerState::Failing;
                    s.consecutive_errors += 1;
                    s.last_error = Some(LastError {
                        at: end,
                        message: e.to_string(),
                    });
                }
            }
        });
        // Resync jobs may have been queued by this pass.
        app.resync_wakeup.notify_waiters();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = h.poll_now.notified() => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    h.update_status(|s| s.state = WorkerState::Stopped);
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
    }
    Ok(total)
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
