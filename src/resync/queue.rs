//! The durable resync queue: jobs, their member customers and the worker's
//! checkpoints, in the store.
//!
//! A job is created by one action (a manual re-include, a rule reload, a page
//! of customers reactivated upstream, an on-demand request). A customer is in
//! at most one unfinished job at a time: queueing it again is a no-op, and
//! excluding it removes it from its job (the job shrinks).
//!
//! The worker fetches customers in *batches* that may mix members of several
//! jobs of one connector (so many small jobs still cost few requests). A
//! batch's position — its members, and per entity the cursor of the next
//! page — is the checkpoint: it lives in the batch's *lead* job (the job of
//! its first member) and is rewritten by [`commit_page`] in the same store
//! write as the page it covers. The write of a batch's last page marks its
//! members done and drops the checkpoint.
//!
//! Everything here is synchronous store work inside a [`Tx`] or a plain read;
//! it never talks to a connector and never decides what to fetch next beyond
//! picking pending members ([`next_batch`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::connectors::Cursor;
use crate::model::{Entity, Record, Timestamp};
use crate::store::{Result, Store, Tx};

/// The entities a resync re-fetches, one stream each per batch.
pub const RECORD_ENTITIES: [Entity; 2] = [Entity::Invoices, Entity::Transactions];

/// Finished jobs kept for history; older ones are pruned when a job finishes.
pub const KEEP_FINISHED: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
    ];

    /// Queued or running: the worker takes members from it.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub connector: String,
    pub reason: String,
    pub created_at: Timestamp,
    pub state: JobState,
    /// Customers in the job (shrinks when one is excluded again).
    pub total: u64,
    pub done: u64,
    /// Invoices and transactions received for the job's customers.
    pub records_fetched: u64,
    /// The part of `records_fetched` that belongs to finished batches (the
    /// ETA's records-per-customer is `records_done / done`).
    #[serde(default)]
    pub records_done: u64,
    /// Upstream pages fetched for batches this job leads.
    pub requests: u64,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub error: Option<String>,
    /// Checkpoints of the in-flight batches this job leads.
    #[serde(default)]
    pub batches: Vec<Batch>,
}

impl Job {
    fn finish(&mut self, now: Timestamp) {
        self.state = JobState::Done;
        self.finished_at = Some(now);
        self.error = None;
    }
}

/// The `resync.finished` event of the change feed.
#[derive(Debug, Serialize)]
struct Finished<'a> {
    job: u64,
    state: JobState,
    reason: &'a str,
    /// The customers whose history this job fetched (done members), by id.
    customers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Tells the change feed that a job finished (done or failed), in the same
/// write.
fn announce_finished(tx: &mut Tx<'_>, job: &Job) -> Result<()> {
    let customers = tx
        .resync_members(job.id)?
        .into_iter()
        .filter(|(_, done)| *done)
        .map(|(c, _)| c)
        .collect();
    tx.resync_finished(
        &job.connector,
        job.id,
        &Finished {
            job: job.id,
            state: job.state,
            reason: &job.reason,
            customers,
            error: job.error.as_deref(),
        },
    );
    Ok(())
}

/// A set of customers fetched together, with the position of each entity
/// stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: u64,
    /// Never empty; the first member's job is the lead.
    pub members: Vec<BatchMember>,
    pub streams: Vec<StreamPos>,
    /// Records received so far, by member job.
    #[serde(default)]
    pub records: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMember {
    pub job: u64,
    pub customer: String,
}

/// Where one entity stream of a batch stands: the cursor of the next page to
/// fetch, or done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPos {
    pub entity: Entity,
    pub cursor: Cursor,
    pub done: bool,
    pub pages: u64,
}

impl Batch {
    /// A batch that has fetched nothing yet.
    pub fn new(id: u64, members: Vec<BatchMember>) -> Batch {
        assert!(!members.is_empty(), "a resync batch needs members");
        Batch {
            id,
            members,
            streams: RECORD_ENTITIES
                .iter()
                .map(|&entity| StreamPos {
                    entity,
                    cursor: Cursor::start(),
                    done: false,
                    pages: 0,
                })
                .collect(),
            records: BTreeMap::new(),
        }
    }

    pub fn lead(&self) -> u64 {
        self.members[0].job
    }

    pub fn customer_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.customer.clone()).collect()
    }

    /// The distinct jobs with members in this batch, lead first.
    pub fn job_ids(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for m in &self.members {
            if !out.contains(&m.job) {
                out.push(m.job);
            }
        }
        out
    }

    pub fn is_complete(&self) -> bool {
        self.streams.iter().all(|s| s.done)
    }
}

fn load_job(tx: &mut Tx<'_>, id: u64) -> Result<Option<Job>> {
    tx.resync_job(id)
}

fn save_job(tx: &mut Tx<'_>, job: &Job) -> Result<()> {
    tx.put_resync_job(
        job.id,
        &job.connector,
        job.state.as_str(),
        job.created_at,
        job.finished_at,
        job,
    )
}

/// The unfinished job a customer waits in, if any.
pub fn queued_job(tx: &mut Tx<'_>, connector: &str, customer: &str) -> Result<Option<u64>> {
    tx.resync_queued(connector, customer)
}

/// Queues a resync of `customers` of one connector. Customers already in an
/// unfinished job are skipped. Returns the new job's id, or `None` when every
/// customer was already queued.
pub fn enqueue(
    tx: &mut Tx<'_>,
    connector: &str,
    customers: &[String],
    reason: &str,
    now: Timestamp,
) -> Result<Option<u64>> {
    let mut fresh = Vec::new();
    let mut seen = HashSet::new();
    for c in customers {
        if queued_job(tx, connector, c)?.is_none() && seen.insert(c.as_str()) {
            fresh.push(c.clone());
        }
    }
    if fresh.is_empty() {
        return Ok(None);
    }
    let id = tx.next_id()?;
    for c in &fresh {
        tx.set_resync_queued(connector, c, Some(id))?;
        tx.set_resync_member(id, c, false)?;
    }
    save_job(
        tx,
        &Job {
            id,
            connector: connector.to_string(),
            reason: reason.to_string(),
            created_at: now,
            state: JobState::Queued,
            total: fresh.len() as u64,
            done: 0,
            records_fetched: 0,
            records_done: 0,
            requests: 0,
            started_at: None,
            finished_at: None,
            error: None,
            batches: Vec::new(),
        },
    )?;
    Ok(Some(id))
}

/// Removes a customer from its unfinished job (it was excluded again, or
/// deleted upstream). The job shrinks, and finishes if nothing is left.
/// Returns whether it was queued.
pub fn remove_customer(tx: &mut Tx<'_>, connector: &str, customer: &str) -> Result<bool> {
    let Some(id) = queued_job(tx, connector, customer)? else {
        return Ok(false);
    };
    tx.set_resync_queued(connector, customer, None)?;
    let member = tx.resync_member(id, customer)?;
    tx.delete_resync_member(id, customer)?;
    if let Some(mut job) = load_job(tx, id)? {
        job.total = job.total.saturating_sub(1);
        if member == Some(true) {
            job.done = job.done.saturating_sub(1);
        }
        if job.done >= job.total && job.state != JobState::Done {
            job.finish(chrono::Utc::now());
            announce_finished(tx, &job)?;
        }
        save_job(tx, &job)?;
    }
    Ok(true)
}

/// Whether a customer waits in a resync job.
pub fn is_queued(store: &Store, connector: &str, customer: &str) -> Result<bool> {
    Ok(store.resync_queued(connector, customer)?.is_some())
}

/// All jobs, oldest first.
pub fn jobs(store: &Store) -> Result<Vec<Job>> {
    store.resync_jobs()
}

pub fn job(store: &Store, id: u64) -> Result<Option<Job>> {
    store.resync_job(id)
}

/// Pending customers of a job, by id.
pub fn pending_members(store: &Store, id: u64) -> Result<Vec<String>> {
    pending_iter(store, id).collect()
}

fn pending_iter(store: &Store, id: u64) -> impl Iterator<Item = Result<String>> + '_ {
    store.resync_pending(id)
}

/// The checkpoints of every in-flight batch of a connector (to resume after
/// a restart).
pub fn batches(store: &Store, connector: &str) -> Result<Vec<Batch>> {
    Ok(jobs(store)?
        .into_iter()
        .filter(|j| j.connector == connector)
        .flat_map(|j| j.batches)
        .collect())
}

/// Picks up to `size` pending members for a new batch of `connector`, oldest
/// job first, skipping customers already in flight (`busy`). A job in
/// `isolated` is batched alone: it neither leads a mixed batch nor joins one
/// (used after a mixed batch failed, so one job's failure does not fail the
/// others). Failed and finished jobs are not drawn from.
pub fn next_batch(
    store: &Store,
    connector: &str,
    busy: &HashSet<String>,
    isolated: &HashSet<u64>,
    size: usize,
) -> Result<Vec<BatchMember>> {
    let mut out: Vec<BatchMember> = Vec::new();
    let mut lead_isolated = false;
    for job in jobs(store)? {
        if out.len() >= size || (lead_isolated && !out.is_empty()) {
            break;
        }
        if job.connector != connector || !job.state.is_active() {
            continue;
        }
        let solo = isolated.contains(&job.id);
        if solo && !out.is_empty() {
            continue;
        }
        let before = out.len();
        for c in pending_iter(store, job.id) {
            let c = c?;
            if busy.contains(&c) {
                continue;
            }
            out.push(BatchMember {
                job: job.id,
                customer: c,
            });
            if out.len() >= size {
                break;
            }
        }
        if before == 0 && out.len() > before {
            lead_isolated = solo;
        }
    }
    Ok(out)
}

/// One fetched page of a batch, as [`commit_page`] records it.
pub struct PageCommit<'a> {
    pub connector: &'a str,
    pub batch: &'a Batch,
    pub entity: Entity,
    /// Where this entity's stream continues.
    pub next: &'a Cursor,
    /// This was the stream's last page.
    pub last: bool,
    pub records: &'a [Record],
    pub now: Timestamp,
}

/// What [`commit_page`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Every stream of the batch is done: its members were marked done.
    pub batch_complete: bool,
    /// Members marked done by this write.
    pub customers_done: u64,
    /// Jobs that finished with this write.
    pub jobs_finished: Vec<u64>,
}

/// Records one page of a batch in the same write as the page's records:
/// advances the batch's checkpoint in its lead job, charges the request to
/// the lead job, counts records per job, starts queued jobs, and when this
/// page completes the batch, marks its members done (those still in the job
/// that batched them) and finishes jobs with nothing left.
pub fn commit_page(tx: &mut Tx<'_>, c: &PageCommit<'_>) -> Result<Committed> {
    let mut out = Committed::default();
    let lead_id = c.batch.lead();
    let mut cache: BTreeMap<u64, Option<Job>> = BTreeMap::new();
    for id in c.batch.job_ids() {
        cache.insert(id, load_job(tx, id)?);
    }
    let owner: HashMap<&str, u64> = c
        .batch
        .members
        .iter()
        .map(|m| (m.customer.as_str(), m.job))
        .collect();
    let mut per_job: BTreeMap<u64, u64> = BTreeMap::new();
    for r in c.records {
        let j = owner.get(r.customer_id()).copied().unwrap_or(lead_id);
        *per_job.entry(j).or_default() += 1;
    }

    let mut completed: Option<Batch> = None;
    if let Some(Some(lead)) = cache.get_mut(&lead_id) {
        let at = match lead.batches.iter().position(|b| b.id == c.batch.id) {
            Some(i) => i,
            None => {
                lead.batches
                    .push(Batch::new(c.batch.id, c.batch.members.clone()));
                lead.batches.len() - 1
            }
        };
        let b = &mut lead.batches[at];
        match b.streams.iter_mut().find(|s| s.entity == c.entity) {
            Some(s) => {
                s.cursor = c.next.clone();
                s.done = c.last;
                s.pages += 1;
            }
            None => b.streams.push(StreamPos {
                entity: c.entity,
                cursor: c.next.clone(),
                done: c.last,
                pages: 1,
            }),
        }
        for (j, n) in &per_job {
            *b.records.entry(*j).or_default() += n;
        }
        lead.requests += 1;
        if b.is_complete() {
            completed = Some(lead.batches.remove(at));
        }
    } else {
        // The lead job is gone (it cannot be pruned while it holds a
        // checkpoint, so this is a store edited by hand): nothing to
        // checkpoint; the members stay pending and are batched again.
        tracing::warn!(
            job = lead_id,
            batch = c.batch.id,
            "resync batch lead job missing"
        );
    }

    for (j, n) in &per_job {
        if let Some(Some(job)) = cache.get_mut(j) {
            job.records_fetched += n;
        }
    }
    for job in cache.values_mut().flatten() {
        if job.state == JobState::Queued {
            job.state = JobState::Running;
        }
        if job.started_at.is_none() && job.state == JobState::Running {
            job.started_at = Some(c.now);
        }
    }

    if let Some(done) = &completed {
        out.batch_complete = true;
        for (j, n) in &done.records {
            if let Some(Some(job)) = cache.get_mut(j) {
                job.records_done += n;
            }
        }
        for m in &c.batch.members {
            if queued_job(tx, c.connector, &m.customer)? != Some(m.job) {
                continue; // excluded meanwhile, maybe queued again elsewhere
            }
            if tx.resync_member(m.job, &m.customer)? != Some(false) {
                continue;
            }
            tx.set_resync_member(m.job, &m.customer, true)?;
            tx.set_resync_queued(c.connector, &m.customer, None)?;
            if let Some(Some(job)) = cache.get_mut(&m.job) {
                job.done += 1;
                out.customers_done += 1;
            }
        }
        for job in cache.values_mut().flatten() {
            if job.done >= job.total && job.state != JobState::Done {
                job.finish(c.now);
                out.jobs_finished.push(job.id);
                announce_finished(tx, job)?;
            }
        }
    }
    for job in cache.values().flatten() {
        save_job(tx, job)?;
    }
    if !out.jobs_finished.is_empty() {
        prune(tx)?;
    }
    Ok(out)
}

/// Drops a batch that cannot go on (its fetch failed after the budget's
/// retries). With `fail_jobs`, every unfinished job with members in it is
/// marked failed with `error`; without, the jobs stay as they are and the
/// members are simply batched again (used to split a mixed batch). Records
/// already written stay. Returns the jobs marked failed.
pub fn drop_batch(
    tx: &mut Tx<'_>,
    batch: &Batch,
    fail_jobs: Option<&str>,
    now: Timestamp,
) -> Result<Vec<u64>> {
    let mut failed = Vec::new();
    for id in batch.job_ids() {
        let Some(mut job) = load_job(tx, id)? else {
            continue;
        };
        job.batches.retain(|b| b.id != batch.id);
        if let Some(error) = fail_jobs {
            if job.state != JobState::Done && job.done < job.total {
                let was_failed = job.state == JobState::Failed;
                job.state = JobState::Failed;
                job.error = Some(error.to_string());
                job.finished_at = Some(now);
                failed.push(id);
                if !was_failed {
                    announce_finished(tx, &job)?;
                }
            }
        }
        save_job(tx, &job)?;
    }
    Ok(failed)
}

/// Why a job could not be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    #[error("no resync job {0}")]
    NotFound(u64),
    #[error("resync job {id} is {}; only a failed job can be retried", state.as_str())]
    NotFailed { id: u64, state: JobState },
}

/// Puts a failed job back in the queue; its pending members are fetched
/// again, those already done are not.
pub fn retry(tx: &mut Tx<'_>, id: u64) -> Result<Result<Job, RetryError>> {
    let Some(mut job) = load_job(tx, id)? else {
        return Ok(Err(RetryError::NotFound(id)));
    };
    if job.state != JobState::Failed {
        return Ok(Err(RetryError::NotFailed {
            id,
            state: job.state,
        }));
    }
    job.state = if job.started_at.is_some() {
        JobState::Running
    } else {
        JobState::Queued
    };
    job.error = None;
    job.finished_at = None;
    save_job(tx, &job)?;
    Ok(Ok(job))
}

/// Deletes the oldest finished jobs (and their member lists) beyond
/// [`KEEP_FINISHED`].
fn prune(tx: &mut Tx<'_>) -> Result<()> {
    let finished: BTreeSet<u64> = tx
        .resync_jobs::<Job>()?
        .into_iter()
        .filter(|j| j.state == JobState::Done && j.batches.is_empty())
        .map(|j| j.id)
        .collect();
    let excess = finished.len().saturating_sub(KEEP_FINISHED);
    for id in finished.into_iter().take(excess) {
        tx.delete_resync_job(id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
