//! The sync scheduler: one poller task per connector.
//!
//! A pass reads customers, invoices and transactions as independent streams
//! side by side, each from its stored cursor, page by page: records whose
//! customer has not arrived yet are parked by [`ingest`] and released (or
//! dropped) when it does, so the order between streams does not matter. Each
//! page is applied by [`ingest`] and written together with the cursor that
//! follows it in one atomic, flushed store write; while it is written, the
//! next page of the same stream is already requested (one page of prefetch
//! per stream). One writer task per pass stores the pages that are waiting
//! from several streams in one transaction (group commit), each with its
//! own cursor, so parallel streams do not queue for one fsync each. A pass's
//! first request (the customer stream's) goes alone: the other streams
//! start when it is answered, so a refused login, a token to reconnect or a
//! used-up quota costs one request, not one per stream. So a crash at any instant loses nothing (the page is re-read)
//! and duplicates nothing (ingest upserts by id, newer version wins).
//!
//! **Partitioned first syncs.** When an entity has no cursor yet and the
//! connector can split it ([`Connector::partition`](crate::connectors::Connector::partition)),
//! its first sync is read as id ranges in parallel, each with its own durable
//! cursor (`Store::partitions`); the stream's incremental cursor is taken
//! and stored before the first range is read, and the stream continues from
//! it once the last range is done. A crash resumes every range where it
//! stopped.
//!
//! **Budget.** The engine opens as many streams as there are, but every
//! request goes through the connector's [`Budget`](crate::connectors::Budget):
//! never more than `max_concurrency` in flight, never above the rate,
//! `Retry-After` honoured by every stream, resync's share kept while polling
//! is busy.
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
use crate::model::{Customer, Entity, Record};
use crate::store::{StoreError, Tx};
use tokio::sync::{mpsc, oneshot, watch};

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

/// One full pass over all entities of a connector: customers, invoices and
/// transactions as independent streams, side by side (records whose customer
/// has not arrived yet are parked by ingest and released when it does). Every
/// stream finishes what it can; the first error (in entity order) is the
/// pass's result.
pub async fn sync_pass(app: &Arc<App>, h: &Arc<ConnectorHandle>) -> Result<PageStats, SyncError> {
    let (writes, queue) = mpsc::channel(64);
    let _writer = AbortOnDrop::spawn(writer(Arc::clone(app), Arc::clone(h), queue));
    let (opener, opened) = watch::channel(None);
    let mut opener = Some(Arc::new(Opener(opener)));
    let mut tasks = Tasks::default();
    for entity in Entity::ALL {
        let (app, h, writes) = (Arc::clone(app), Arc::clone(h), writes.clone());
        // Customers go first; the other streams wait for its first answer.
        let start = match entity {
            Entity::Customers => Start::Opens(opener.take().expect("customers come once")),
            _ => Start::After(opened.clone()),
        };
        tasks.spawn(async move { entity_pass(app, h, writes, entity, start).await });
    }
    drop(writes);
    let mut total = PageStats::default();
    for r in tasks.join_all().await {
        total.add(&r?);
    }
    Ok(total)
}

/// How a stream starts in a pass. The first request of a pass goes alone
/// (the customer stream's): when upstream refuses it (wrong credentials, a
/// token to reconnect, a used-up quota), the other streams send nothing;
/// once it is answered, they all run.
enum Start {
    Opens(Arc<Opener>),
    After(watch::Receiver<Option<bool>>),
}

/// Says whether the first request of the pass was answered; the first word
/// counts. Dropped without a word: not answered.
struct Opener(watch::Sender<Option<bool>>);

impl Opener {
    fn settle(&self, answered: bool) {
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(answered);
                true
            } else {
                false
            }
        });
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// Pages written together in one transaction at most (group commit).
const MAX_GROUP: usize = 8;

/// One page waiting to be written with the cursor that follows it.
struct WriteJob {
    entity: Entity,
    part: Option<u32>,
    page: Fetched,
    done: oneshot::Sender<Result<PageStats, StoreError>>,
}

/// Writes the pages the streams hand in. Pages that are waiting together
/// (up to [`MAX_GROUP`]) go into one store transaction, each with its own
/// cursor, so parallel streams share one durable commit instead of queueing
/// for one each. A failed group is written again page by page, so each
/// stream gets the outcome of its own page.
async fn writer(app: Arc<App>, h: Arc<ConnectorHandle>, mut queue: mpsc::Receiver<WriteJob>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let grouped = app
            .write_ingesting(&h, |tx, ctx| {
                jobs.iter()
                    .map(|j| apply_job(tx, ctx, &h, j))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await;
        match grouped {
            Ok(stats) => {
                for (j, s) in jobs.into_iter().zip(stats) {
                    let _ = j.done.send(Ok(s));
                }
            }
            Err(e) if jobs.len() == 1 => {
                let j = jobs.pop().expect("one job");
                let _ = j.done.send(Err(e));
            }
            Err(_) => {
                for j in jobs {
                    let r = app
                        .write_ingesting(&h, |tx, ctx| apply_job(tx, ctx, &h, &j))
                        .await;
                    let _ = j.done.send(r);
                }
            }
        }
    }
}

/// Applies one page and stores the cursor that follows it (the stream's,
/// or range `part`'s) inside the caller's write.
fn apply_job(
    tx: &mut Tx<'_>,
    ctx: &Ingest<'_>,
    h: &ConnectorHandle,
    j: &WriteJob,
) -> Result<PageStats, StoreError> {
    let (stats, next, has_more) = match &j.page {
        Fetched::Customers(p) => (ingest::customers(tx, ctx, p)?, &p.next, p.has_more),
        Fetched::Records(p) => (ingest::records(tx, ctx, j.entity, p)?, &p.next, p.has_more),
    };
    match j.part {
        None => tx.set_cursor(&h.id, j.entity, &next.0)?,
        Some(part) => {
            if tx.set_partition_cursor(&h.id, j.entity, part, &next.0, !has_more)? {
                tracing::info!(connector = %h.id, entity = %j.entity, "every range of the first sync is read; continuing incrementally");
            }
        }
    }
    Ok(stats)
}

/// One entity's part of a pass: its partitioned first sync if one is due or
/// in progress, then its incremental stream, then verification if the
/// connector asks for it.
async fn entity_pass(
    app: Arc<App>,
    h: Arc<ConnectorHandle>,
    writes: mpsc::Sender<WriteJob>,
    entity: Entity,
    start: Start,
) -> Result<PageStats, SyncError> {
    let mut total = PageStats::default();
    let opener = match start {
        Start::Opens(o) => Some(o),
        Start::After(mut opened) => {
            let answered = opened
                .wait_for(|v| v.is_some())
                .await
                .map(|v| *v == Some(true))
                .unwrap_or(false);
            if !answered {
                // The pass's first request failed: its error is the pass's.
                return Ok(total);
            }
            None
        }
    };
    let mut ranges = app.store.partitions(&h.id, entity)?;
    if ranges.is_empty() && app.store.cursor(&h.id, entity)?.is_none() {
        // A first sync: split it when the connector can and the budget
        // allows more than one request at a time.
        let parts = h.budget.limits().max_concurrency as usize;
        if parts > 1 {
            let plan = h.connector.partition(entity, parts).await;
            // `None` may come without a request: the first page decides.
            match (&opener, &plan) {
                (Some(o), Err(_)) => o.settle(false),
                (Some(o), Ok(Some(_))) => o.settle(true),
                _ => {}
            }
            let plan = plan.map_err(|source| SyncError::Connector { entity, source })?;
            if let Some(plan) = plan.filter(|p| !p.ranges.is_empty()) {
                let starts: Vec<String> = plan.ranges.iter().map(|c| c.0.clone()).collect();
                app.store
                    .write(|tx| tx.start_partitions(&h.id, entity, &plan.then.0, &starts))
                    .await?;
                tracing::info!(connector = %h.id, %entity, ranges = starts.len(), "first sync split into id ranges");
                ranges = app.store.partitions(&h.id, entity)?;
            }
        }
    }
    let open: Vec<_> = ranges.into_iter().filter(|r| !r.done).collect();
    if !open.is_empty() {
        let mut tasks = Tasks::default();
        for r in open {
            let (h, writes, opener) = (Arc::clone(&h), writes.clone(), opener.clone());
            let start = Cursor(r.cursor);
            tasks
                .spawn(async move { stream(h, writes, entity, Some(r.part), start, opener).await });
        }
        for r in tasks.join_all().await {
            total.add(&r?.0);
        }
    }
    let cursor = Cursor(app.store.cursor(&h.id, entity)?.unwrap_or_default());
    let (stats, cursor) = stream(Arc::clone(&h), writes, entity, None, cursor, opener).await?;
    total.add(&stats);
    if let Some(after) = h.connector.verification(entity, &cursor) {
        total.add(&verify_stored(&app, &h, entity, after).await?);
    }
    Ok(total)
}

/// Spawned tasks that are aborted when the set is dropped (a pass cut short
/// by shutdown or by an error leaves nothing running behind it).
struct Tasks<T: Send + 'static> {
    handles: Vec<AbortOnDrop<T>>,
}

impl<T: Send + 'static> Default for Tasks<T> {
    fn default() -> Self {
        Tasks {
            handles: Vec::new(),
        }
    }
}

impl<T: Send + 'static> Tasks<T> {
    fn spawn(&mut self, f: impl std::future::Future<Output = T> + Send + 'static) {
        self.handles.push(AbortOnDrop::spawn(f));
    }

    /// Every task's output, in spawn order.
    async fn join_all(self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            out.push(h.join().await);
        }
        out
    }
}

/// A spawned task aborted when its handle is dropped; a panic inside it is
/// resumed in the task that joins it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    /// Spawns `f` under the spawning task's lease, if it works under one
    /// (the fence is task-local: without this the writes of the group
    /// commit writer and the streams would not be fenced).
    fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        match crate::store::Fence::current() {
            Some(fence) => AbortOnDrop(tokio::spawn(fence.scope(f))),
            None => AbortOnDrop(tokio::spawn(f)),
        }
    }

    async fn join(mut self) -> T {
        match (&mut self.0).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only this handle aborts the task, and it is still held.
            Err(e) => unreachable!("sync task cancelled while joined: {e}"),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fetched page of either kind.
enum Fetched {
    Customers(Page<Customer>),
    Records(Page<Record>),
}

impl Fetched {
    fn next(&self) -> &Cursor {
        match self {
            Fetched::Customers(p) => &p.next,
            Fetched::Records(p) => &p.next,
        }
    }
    fn has_more(&self) -> bool {
        match self {
            Fetched::Customers(p) => p.has_more,
            Fetched::Records(p) => p.has_more,
        }
    }
}

/// Requests the page of `entity` after `cursor` in a task of its own, so it
/// is on its way while the caller writes the page before it.
fn prefetch(
    h: &ConnectorHandle,
    entity: Entity,
    cursor: Cursor,
) -> AbortOnDrop<Result<Fetched, SyncError>> {
    let connector = Arc::clone(&h.connector);
    AbortOnDrop::spawn(async move {
        let r = match entity {
            Entity::Customers => connector
                .fetch_customers(&cursor)
                .await
                .map(Fetched::Customers),
            Entity::Invoices | Entity::Transactions => connector
                .fetch_records(entity, &cursor)
                .await
                .map(Fetched::Records),
        };
        r.map_err(|source| SyncError::Connector { entity, source })
    })
}

/// Reads one stream page by page from `start` until it is caught up (or, for
/// range `part` of a partitioned first sync, read to its end). One page of
/// prefetch: while a page is written, the next one is requested; its cursor
/// is stored only in the write of the page it follows. Returns the stats and
/// the stream's cursor at its end.
async fn stream(
    h: Arc<ConnectorHandle>,
    writes: mpsc::Sender<WriteJob>,
    entity: Entity,
    part: Option<u32>,
    start: Cursor,
    opener: Option<Arc<Opener>>,
) -> Result<(PageStats, Cursor), SyncError> {
    let mut total = PageStats::default();
    let mut pending = prefetch(&h, entity, start);
    loop {
        let page = pending.join().await;
        if let Some(o) = &opener {
            o.settle(page.is_ok());
        }
        let page = page?;
        let more = page.has_more();
        let next = page.next().clone();
        // Dropped (and so aborted) if the write below fails.
        let following = more.then(|| prefetch(&h, entity, next.clone()));
        let (done, outcome) = oneshot::channel();
        let job = WriteJob {
            entity,
            part,
            page,
            done,
        };
        let stats = match writes.send(job).await {
            Ok(()) => outcome.await.unwrap_or_else(|_| Err(writer_gone())),
            Err(_) => Err(writer_gone()),
        }?;
        if stats.newly_excluded > 0 || stats.newly_included > 0 {
            tracing::info!(connector = %h.id, newly_excluded = stats.newly_excluded, newly_included = stats.newly_included, purged = stats.purged, "upstream changes moved customers");
        }
        h.update_status(|s| s.session.entry(entity).or_default().add(&stats));
        total.add(&stats);
        match following {
            Some(f) => pending = f,
            None => return Ok((total, next)),
        }
    }
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

/// The pass's writer stopped before answering (the pass is being torn
/// down).
fn writer_gone() -> StoreError {
    StoreError::Rejected("the sync pass's writer stopped".into())
}
