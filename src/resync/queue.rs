//! The durable resync queue: jobs and their member customers, in the store.
//!
//! A job is created by one action (a manual re-include, a rule reload, a
//! page of customers reactivated upstream). A customer is in at most one
//! pending job at a time: queueing it again is a no-op, and excluding it
//! removes it from its job.

use serde::{Deserialize, Serialize};

use crate::model::Timestamp;
use crate::store::keys::ns;
use crate::store::{Result, Store, Tx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
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
    pub records_fetched: u64,
    pub requests: u64,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Pending,
    Done,
}

/// Job ids as fixed-width hex so keys sort by id and never contain `\0`.
fn job_key(id: u64) -> Vec<u8> {
    format!("{id:016x}").into_bytes()
}

/// Queues a resync of `customers` of one connector. Customers already in a
/// pending job are skipped. Returns the new job's id, or `None` when every
/// customer was already queued.
pub fn enqueue(
    tx: &mut Tx<'_>,
    connector: &str,
    customers: &[String],
    reason: &str,
    now: Timestamp,
) -> Result<Option<u64>> {
    let mut fresh = Vec::new();
    for c in customers {
        let queued: Option<u64> = tx.get_value(
            ns::RESYNC_BY_CUSTOMER,
            &[connector.as_bytes(), c.as_bytes()],
        )?;
        if queued.is_none() && !fresh.contains(c) {
            fresh.push(c.clone());
        }
    }
    if fresh.is_empty() {
        return Ok(None);
    }
    let id = tx.next_id()?;
    for c in &fresh {
        tx.put_value(
            ns::RESYNC_BY_CUSTOMER,
            &[connector.as_bytes(), c.as_bytes()],
            &id,
        );
        tx.put_value(
            ns::RESYNC_MEMBER,
            &[&job_key(id), c.as_bytes()],
            &MemberState::Pending,
        );
    }
    tx.put_value(
        ns::RESYNC_JOB,
        &[&job_key(id)],
        &Job {
            id,
            connector: connector.to_string(),
            reason: reason.to_string(),
            created_at: now,
            state: JobState::Queued,
            total: fresh.len() as u64,
            done: 0,
            records_fetched: 0,
            requests: 0,
            started_at: None,
            finished_at: None,
            error: None,
        },
    );
    Ok(Some(id))
}

/// Removes a customer from its pending job (it was excluded again).
/// Returns whether it was queued.
pub fn remove_customer(tx: &mut Tx<'_>, connector: &str, customer: &str) -> Result<bool> {
    let Some(id): Option<u64> = tx.get_value(
        ns::RESYNC_BY_CUSTOMER,
        &[connector.as_bytes(), customer.as_bytes()],
    )?
    else {
        return Ok(false);
    };
    tx.delete_value(
        ns::RESYNC_BY_CUSTOMER,
        &[connector.as_bytes(), customer.as_bytes()],
    );
    let member: Option<MemberState> =
        tx.get_value(ns::RESYNC_MEMBER, &[&job_key(id), customer.as_bytes()])?;
    tx.delete_value(ns::RESYNC_MEMBER, &[&job_key(id), customer.as_bytes()]);
    if let Some(mut job) = tx.get_value::<Job>(ns::RESYNC_JOB, &[&job_key(id)])? {
        job.total = job.total.saturating_sub(1);
        if member == Some(MemberState::Done) {
            job.done = job.done.saturating_sub(1);
        }
        if job.done >= job.total && matches!(job.state, JobState::Queued | JobState::Running) {
            job.state = JobState::Done;
        }
        tx.put_value(ns::RESYNC_JOB, &[&job_key(id)], &job);
    }
    Ok(true)
}

/// Whether a customer waits in a resync job.
pub fn is_queued(store: &Store, connector: &str, customer: &str) -> Result<bool> {
    Ok(store
        .get_value::<u64>(
            ns::RESYNC_BY_CUSTOMER,
            &[connector.as_bytes(), customer.as_bytes()],
        )?
        .is_some())
}

/// All jobs, oldest first.
pub fn jobs(store: &Store) -> Result<Vec<Job>> {
    store
        .scan_values::<Job>(ns::RESYNC_JOB, &[])
        .map(|r| r.map(|(_, j)| j))
        .collect()
}

pub fn job(store: &Store, id: u64) -> Result<Option<Job>> {
    store.get_value(ns::RESYNC_JOB, &[&job_key(id)])
}

/// Pending customers of a job.
pub fn pending_members(store: &Store, id: u64) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in store.scan_values::<MemberState>(ns::RESYNC_MEMBER, &[&job_key(id)]) {
        let (k, state) = r?;
        if state == MemberState::Pending {
            out.push(crate::store::keys::part_str(&k, 1));
        }
    }
    Ok(out)
}
