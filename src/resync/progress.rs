//! Progress and ETA of resync jobs, as `/status`, the admin API and the CLI
//! show them.
//!
//! The ETA is an estimate from the rate budget, not from the past: the
//! remaining customers times the records per customer seen so far give the
//! records still to fetch; with the connector's page size and batch size
//! that is a number of requests, divided by the request rate the budget lets
//! resync use right now (`resync_share` of it while a poll pass runs, all of
//! it otherwise). Jobs of a connector are worked oldest first, so a job's ETA
//! includes the work of the jobs queued before it. This module only reads.

use chrono::Duration as ChronoDuration;
use serde::Serialize;

use super::queue::{self, Job, JobState, RECORD_ENTITIES};
use crate::app::App;
use crate::model::Timestamp;
use crate::store::StoreError;

/// One job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    pub id: u64,
    pub connector: String,
    pub reason: String,
    pub state: JobState,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub customers_total: u64,
    pub customers_done: u64,
    pub records_fetched: u64,
    /// Upstream pages fetched for batches this job led.
    pub requests: u64,
    /// Batches in flight that this job leads.
    pub batches_in_flight: usize,
    pub rate: Rate,
    /// `None` when the job is not being worked (done, failed) or nothing is
    /// known yet to estimate from (no customer of this connector finished).
    pub eta: Option<Eta>,
    pub error: Option<String>,
}

/// Observed throughput since the job started, and the budget's allowance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    pub customers_per_minute: Option<f64>,
    pub records_per_second: Option<f64>,
    pub requests_per_second: Option<f64>,
    /// The request rate resync may use on this connector right now.
    pub allowed_requests_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eta {
    pub seconds: u64,
    pub at: Timestamp,
    /// Requests this job still needs (not counting jobs before it).
    pub estimated_requests: u64,
    pub records_per_customer: f64,
}

/// What the estimate needs to know about a connector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaParams {
    pub page_size: usize,
    pub batch_size: usize,
    pub allowed_requests_per_second: f64,
}

/// The estimate's parameters of one connector right now: resync may use
/// `resync_share` of the request rate while a poll pass runs, all of it
/// otherwise.
pub fn eta_params(h: &crate::app::ConnectorHandle) -> EtaParams {
    let limits = h.budget.limits();
    let share = if h.budget.poll_is_active() {
        limits.resync_share.clamp(0.01, 1.0)
    } else {
        1.0
    };
    EtaParams {
        page_size: h.connector.page_size(),
        batch_size: h.connector.resync_batch_size(),
        allowed_requests_per_second: limits.requests_per_second * share,
    }
}

/// Requests needed to fetch `records` more records of `customers` more
/// customers: per batch, its share of the records in full pages, plus on
/// average half a page for the last, partial page of each entity stream,
/// and never less than one request per stream.
pub fn estimated_requests(customers: u64, records: f64, p: &EtaParams) -> u64 {
    if customers == 0 {
        return 0;
    }
    let streams = RECORD_ENTITIES.len() as f64;
    let per_customer = records.max(0.0) / customers as f64;
    let per_batch = |n: u64| -> u64 {
        let pages = n as f64 * per_customer / p.page_size.max(1) as f64;
        (pages + streams / 2.0).ceil().max(streams) as u64
    };
    let size = p.batch_size.max(1) as u64;
    let rest = customers % size;
    (customers / size) * per_batch(size) + if rest > 0 { per_batch(rest) } else { 0 }
}

/// ETAs of one connector's jobs (in id order), cumulative over the active
/// ones. Returns one entry per job. Records per customer come from the
/// job's finished batches, or else from all the connector's jobs; records
/// already fetched for batches in flight are not counted again.
pub fn estimate(jobs: &[&Job], p: &EtaParams, now: Timestamp) -> Vec<Option<Eta>> {
    let (records, done) = jobs
        .iter()
        .fold((0u64, 0u64), |(r, d), j| (r + j.records_done, d + j.done));
    let fallback = (done > 0).then(|| records as f64 / done as f64);
    let mut ahead = 0u64;
    let mut unknown = false;
    jobs.iter()
        .map(|j| {
            if !j.state.is_active() {
                return None;
            }
            let rpc = if j.done > 0 {
                Some(j.records_done as f64 / j.done as f64)
            } else {
                fallback
            };
            let Some(rpc) = rpc else {
                unknown = true;
                return None;
            };
            if unknown || p.allowed_requests_per_second <= 0.0 {
                return None;
            }
            let remaining = j.total.saturating_sub(j.done);
            let in_flight = j.records_fetched.saturating_sub(j.records_done) as f64;
            let records = (remaining as f64 * rpc - in_flight).max(0.0);
            let own = estimated_requests(remaining, records, p);
            ahead += own;
            let seconds = (ahead as f64 / p.allowed_requests_per_second).ceil() as u64;
            Some(Eta {
                seconds,
                at: now + ChronoDuration::seconds(seconds as i64),
                estimated_requests: own,
                records_per_customer: (rpc * 10.0).round() / 10.0,
            })
        })
        .collect()
}

fn per(n: u64, secs: f64, scale: f64) -> Option<f64> {
    (secs >= 1.0).then(|| ((n as f64 / secs) * scale * 100.0).round() / 100.0)
}

/// Which jobs to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Queued, running and failed: what needs attention.
    Unfinished,
    State(JobState),
}

/// Views of the jobs matching `filter`, oldest first.
pub fn views(app: &App, filter: Filter) -> Result<Vec<JobView>, StoreError> {
    let all = queue::jobs(&app.store)?;
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for h in &app.connectors {
        let jobs: Vec<&Job> = all.iter().filter(|j| j.connector == h.id).collect();
        let p = eta_params(h);
        let etas = estimate(&jobs, &p, now);
        for (j, eta) in jobs.into_iter().zip(etas) {
            out.push(view(j, eta, p.allowed_requests_per_second, now));
        }
    }
    // Jobs of connectors no longer configured: shown without an estimate.
    for j in all.iter().filter(|j| app.connector(&j.connector).is_none()) {
        out.push(view(j, None, 0.0, now));
    }
    out.retain(|v| match filter {
        Filter::All => true,
        Filter::Unfinished => v.state != JobState::Done,
        Filter::State(s) => v.state == s,
    });
    out.sort_by_key(|v| v.id);
    Ok(out)
}

/// One job's view (its ETA counts the jobs queued before it).
pub fn view_of(app: &App, id: u64) -> Result<Option<JobView>, StoreError> {
    Ok(views(app, Filter::All)?.into_iter().find(|v| v.id == id))
}

fn view(j: &Job, eta: Option<Eta>, allowed: f64, now: Timestamp) -> JobView {
    let secs = j
        .started_at
        .map(|s| (j.finished_at.unwrap_or(now) - s).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    JobView {
        id: j.id,
        connector: j.connector.clone(),
        reason: j.reason.clone(),
        state: j.state,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        customers_total: j.total,
        customers_done: j.done,
        records_fetched: j.records_fetched,
        requests: j.requests,
        batches_in_flight: j.batches.len(),
        rate: Rate {
            customers_per_minute: per(j.done, secs, 60.0),
            records_per_second: per(j.records_fetched, secs, 1.0),
            requests_per_second: per(j.requests, secs, 1.0),
            allowed_requests_per_second: allowed,
        },
        eta,
        error: j.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job whose finished customers had `records_done` records, with
    /// `in_flight` more fetched for customers not finished yet.
    fn job(
        id: u64,
        state: JobState,
        total: u64,
        done: u64,
        records_done: u64,
        in_flight: u64,
    ) -> Job {
        Job {
            id,
            connector: "demo".into(),
            reason: "test".into(),
            created_at: chrono::Utc::now(),
            state,
            total,
            done,
            records_fetched: records_done + in_flight,
            records_done,
            requests: 0,
            started_at: None,
            finished_at: None,
            error: None,
            batches: Vec::new(),
        }
    }

    const P: EtaParams = EtaParams {
        page_size: 500,
        batch_size: 100,
        allowed_requests_per_second: 10.0,
    };

    #[test]
    fn requests_are_full_pages_plus_half_a_page_per_stream_and_batch() {
        // 1000 customers × 70 records: 10 batches of 7000 records = 14 full
        // pages, plus 2 streams × ½ partial page.
        assert_eq!(estimated_requests(1000, 70_000.0, &P), 150);
        // 250 customers: two full batches and one of 50 (3500 records).
        assert_eq!(estimated_requests(250, 17_500.0, &P), 15 + 15 + 8);
        // One customer with nothing: still one request per stream.
        assert_eq!(estimated_requests(1, 0.0, &P), 2);
        assert_eq!(estimated_requests(0, 70.0, &P), 0);
    }

    #[test]
    fn eta_accumulates_over_the_queue_and_skips_finished_jobs() {
        let now = chrono::Utc::now();
        // 100 customers done with 7000 records; 3500 more already fetched
        // for customers in flight.
        let a = job(1, JobState::Running, 1000, 100, 7000, 3500);
        let done = job(2, JobState::Done, 10, 10, 700, 0);
        let failed = job(3, JobState::Failed, 10, 0, 0, 0);
        let b = job(4, JobState::Queued, 200, 0, 0, 0);
        let etas = estimate(&[&a, &done, &failed, &b], &P, now);
        let ea = etas[0].as_ref().unwrap();
        assert_eq!(ea.records_per_customer, 70.0);
        // 900 × 70 − 3500 = 59500 records over 9 batches: 6611 each =
        // 13.2 pages + 1 → 15 requests per batch.
        assert_eq!(ea.estimated_requests, 135);
        assert_eq!(ea.seconds, 14);
        assert_eq!(ea.at, now + ChronoDuration::seconds(14));
        assert!(etas[1].is_none() && etas[2].is_none());
        // b has no history of its own: it borrows the connector's 7700/110.
        let eb = etas[3].as_ref().unwrap();
        assert_eq!(eb.records_per_customer, 70.0);
        assert_eq!(eb.estimated_requests, 28 + 2);
        // (135 + 30) requests at 10/s, rounded up.
        assert_eq!(eb.seconds, 17);
    }

    #[test]
    fn eta_is_unknown_until_a_customer_finished() {
        let a = job(1, JobState::Running, 50, 0, 0, 300);
        let b = job(2, JobState::Queued, 5, 0, 0, 0);
        assert_eq!(
            estimate(&[&a, &b], &P, chrono::Utc::now()),
            vec![None, None]
        );
    }
}
