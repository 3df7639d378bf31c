//! The resync worker of one connector: drains the durable queue in batches.
//!
//! A batch names up to [`Connector::resync_batch_size`] customers (possibly
//! from several jobs) and is fetched as one stream per entity with
//! [`Connector::fetch_records_for_customers`], so re-including thousands of
//! customers costs about `records / page_size` requests, not one query per
//! customer. Up to `max_concurrency / 2` batches run at once (two streams
//! each); each stream overlaps the store write of one page with the fetch of
//! the next. Every request goes through the connector's
//! [`Budget`](crate::connectors::Budget) on [`Lane::Resync`](crate::connectors::Lane),
//! which keeps resync within its share while polling has work.
//!
//! Each page is applied by [`ingest::records`] (newer upstream version wins,
//! excluded customers' records are dropped) and checkpointed by
//! [`queue::commit_page`] in the same store write, so a crash at any instant
//! resumes at the page after the last durable one and never re-fetches
//! finished customers.
//!
//! A resync leaves exactly the ERP's records for its customers: each page's
//! ids are recorded with the page (`Tx::resync_seen`), and the write of an
//! entity stream's last page removes, with tombstones, the stored records
//! of the batch's customers the stream did not return
//! (`Tx::resync_reconcile`), such as records deleted upstream outside the
//! deletion feed's window. Records modified upstream shortly before the
//! stream started are left for the next resync (clock skew).
//!
//! The worker never retries a request itself (the budget does) and never
//! classifies customers; a batch whose fetch still fails fails its job, or
//! is first split per job when it mixes several.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::app::{App, ConnectorHandle};
use crate::connectors::{ConnectorError, Cursor, Page};
use crate::model::{Entity, Record};
use crate::store::StoreError;
// A batch fails the way a poll pass does: an upstream error for one
// entity stream, or a store error.
use crate::ingest::{self, SyncError as BatchError};

use super::queue::{self, Batch, PageCommit};

/// How often an idle worker looks at the queue even without a wake-up (a
/// job may be queued by a write that does not notify, e.g. a test or a
/// notification sent while the worker was busy).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long the worker waits before looking again while its connector
/// needs reconnecting.
const PAUSE_WHILE_DISCONNECTED: Duration = Duration::from_secs(30);

/// A stored record last modified upstream within this long before a
/// resync stream started is kept even when the stream did not return it:
/// it may have been created meanwhile (clocks of the ERP and this host
/// differ), and the next resync or the deletion feed settles it.
const RECONCILE_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// How long the worker waits after a store error before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(5);

/// Runs the resync worker of one connector until shutdown.
pub async fn run(app: Arc<App>, h: Arc<ConnectorHandle>) {
    loop {
        // Registered before looking at the queue, so a wake-up sent while we
        // look (or work) is not lost.
        let wake = app.resync_wakeup.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if app.shutdown.is_cancelled() {
            break;
        }
        let pause = match drain(&app, &h).await {
            Ok(None) => CHECK_INTERVAL,
            Ok(Some(paused)) => paused,
            Err(e) if e.is_lease_lost() => {
                tracing::warn!(connector = %h.id, error = %e, "resync worker stopped");
                return;
            }
            Err(e) => {
                tracing::error!(connector = %h.id, error = %e, "resync worker: store error; trying again shortly");
                ERROR_PAUSE
            }
        };
        tokio::select! {
            _ = &mut wake => {}
            _ = tokio::time::sleep(pause) => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
}

/// Resumes checkpointed batches and runs new ones until the connector has
/// no pending member left (or shutdown). `Some(pause)`: the connector cannot
/// work now (daily quota used up, needs reconnecting); its batches stay
/// checkpointed and resume after `pause`.
async fn drain(app: &App, h: &ConnectorHandle) -> Result<Option<Duration>, StoreError> {
    let batch_size = h.connector.resync_batch_size().max(1);
    let max_batches =
        (h.budget.limits().max_concurrency as usize / queue::RECORD_ENTITIES.len()).max(1);
    let mut busy: HashSet<String> = HashSet::new();
    let mut isolated: HashSet<u64> = HashSet::new();
    let mut running = FuturesUnordered::new();
    for b in queue::batches(&app.store, &h.id)? {
        tracing::info!(connector = %h.id, batch = b.id, customers = b.members.len(), "resuming resync batch");
        busy.extend(b.members.iter().map(|m| m.customer.clone()));
        running.push(run_batch(app, h, b));
    }
    loop {
        while running.len() < max_batches {
            let members = queue::next_batch(&app.store, &h.id, &busy, &isolated, batch_size)?;
            if members.is_empty() {
                break;
            }
            let b = Batch::new(app.store.next_id().await?, members);
            tracing::debug!(connector = %h.id, batch = b.id, customers = b.members.len(), jobs = ?b.job_ids(), "resync batch started");
            busy.extend(b.members.iter().map(|m| m.customer.clone()));
            running.push(run_batch(app, h, b));
        }
        if running.is_empty() {
            return Ok(None);
        }
        // A job queued while batches run may take a free slot: look again
        // on a wake-up or after a while even when no batch finished.
        let next = tokio::select! {
            r = running.next() => r,
            _ = app.resync_wakeup.notified(), if running.len() < max_batches => continue,
            _ = tokio::time::sleep(CHECK_INTERVAL), if running.len() < max_batches => continue,
            _ = app.shutdown.cancelled() => return Ok(None),
        };
        let Some((batch, result)) = next else {
            return Ok(None);
        };
        for m in &batch.members {
            busy.remove(&m.customer);
        }
        match result {
            Ok(()) => {}
            Err(BatchError::Store(e)) => return Err(e),
            Err(BatchError::Connector { source, .. }) if source.pauses_connector() => {
                // Not the batch's fault: keep it (and every other running
                // batch) checkpointed and come back later.
                let pause = match &source {
                    ConnectorError::QuotaExhausted { resumes_at } => (*resumes_at
                        - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .max(CHECK_INTERVAL),
                    _ => PAUSE_WHILE_DISCONNECTED,
                };
                tracing::warn!(connector = %h.id, error = %source, pause_s = pause.as_secs(), "resync paused");
                return Ok(Some(pause));
            }
            Err(BatchError::Connector { entity, source }) => {
                let jobs = batch.job_ids();
                let now = chrono::Utc::now();
                if jobs.len() > 1 {
                    tracing::warn!(connector = %h.id, batch = batch.id, ?jobs, %entity, error = %source, "resync batch failed; fetching each job's customers separately");
                    isolated.extend(jobs);
                    app.store
                        .write(|tx| queue::drop_batch(tx, &batch, None, now))
                        .await?;
                } else {
                    let message = format!("{entity}: {source}");
                    let failed = app
                        .store
                        .write(|tx| queue::drop_batch(tx, &batch, Some(&message), now))
                        .await?;
                    tracing::error!(connector = %h.id, jobs = ?failed, error = %message, "resync job failed");
                }
            }
        }
    }
}

/// Fetches every unfinished stream of a batch; returns the batch with the
/// outcome. One failing stream cancels the others (their pages written so
/// far stay).
async fn run_batch(
    app: &App,
    h: &ConnectorHandle,
    batch: Batch,
) -> (Batch, Result<(), BatchError>) {
    let ids = batch.customer_ids();
    let result = futures::future::try_join_all(
        batch
            .streams
            .iter()
            .filter(|s| !s.done)
            .map(|s| run_stream(app, h, &batch, &ids, s.entity, s.cursor.clone())),
    )
    .await
    .map(|_| ());
    (batch, result)
}

/// Reads one entity stream of a batch to its end from `cursor`, writing each
/// page with its checkpoint while the next page is being fetched.
async fn run_stream(
    app: &App,
    h: &ConnectorHandle,
    batch: &Batch,
    ids: &[String],
    entity: Entity,
    mut cursor: Cursor,
) -> Result<(), BatchError> {
    let fetch = |cursor: Cursor| async move {
        h.connector
            .fetch_records_for_customers(entity, ids, &cursor)
            .await
            .map_err(|source| BatchError::Connector { entity, source })
    };
    // Durable before the first request: a stream's end only judges records
    // last modified before it started (see `Tx::resync_reconcile`).
    let started = chrono::Utc::now();
    app.store
        .write(|tx| tx.resync_stream_started(batch.id, entity, started))
        .await?;
    let mut page = fetch(cursor.clone()).await?;
    loop {
        if !page.has_more {
            commit(app, h, batch, entity, &page).await?;
            return Ok(());
        }
        if page.next == cursor {
            return Err(BatchError::Connector {
                entity,
                source: ConnectorError::Protocol(format!(
                    "the page after cursor `{}` says more follow but does not advance",
                    cursor.0
                )),
            });
        }
        let next = page.next.clone();
        let (written, fetched) =
            tokio::join!(commit(app, h, batch, entity, &page), fetch(next.clone()));
        written?;
        page = fetched?;
        cursor = next;
    }
}

/// Applies one page and its checkpoint in one store write.
async fn commit(
    app: &App,
    h: &ConnectorHandle,
    batch: &Batch,
    entity: Entity,
    page: &Page<Record>,
) -> Result<(), StoreError> {
    let committed = app
        .write_ingesting(h, |tx, ctx| {
            ingest::records(tx, ctx, entity, page)?;
            // What the ERP has for these customers, quarantined rows
            // included (they exist upstream, they are only unreadable).
            let seen: Vec<&str> = page
                .items
                .iter()
                .map(Record::external_id)
                .chain(page.quarantined.iter().filter_map(|q| q.external_id.as_deref()))
                .collect();
            tx.resync_seen(batch.id, entity, &seen)?;
            if !page.has_more {
                let removed = tx.resync_reconcile(
                    &h.id,
                    batch.id,
                    entity,
                    &batch.customer_ids(),
                    RECONCILE_MARGIN,
                    ctx.now,
                )?;
                tx.add_counter(&h.id, &format!("deleted_{entity}"), removed)?;
                if removed > 0 {
                    tracing::info!(connector = %h.id, batch = batch.id, %entity, removed, "resync removed records the ERP no longer has");
                }
            }
            queue::commit_page(
                tx,
                &PageCommit {
                    connector: &h.id,
                    batch,
                    entity,
                    next: &page.next,
                    last: !page.has_more,
                    records: &page.items,
                    now: ctx.now,
                },
            )
        })
        .await?;
    if committed.batch_complete {
        tracing::debug!(connector = %h.id, batch = batch.id, customers_done = committed.customers_done, "resync batch complete");
    }
    for id in &committed.jobs_finished {
        if let Some(j) = queue::job(&app.store, *id)? {
            tracing::info!(connector = %h.id, job = j.id, customers = j.total, records = j.records_fetched, requests = j.requests, "resync job finished");
        }
    }
    Ok(())
}
