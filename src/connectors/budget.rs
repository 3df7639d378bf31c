//! The per-connector request budget: rate limit, concurrency cap, daily
//! quota, retries.
//!
//! Every upstream request of a connector goes through [`Budget::call`]. The
//! budget is shared by regular polling ([`Lane::Poll`]) and the resync engine
//! ([`Lane::Resync`]); while polling has work, resync may use at most
//! `resync_share` of the rate and of the concurrency, and when polling is idle
//! it may use all of it. Retries back off exponentially with jitter and never
//! wait less than the ERP's `Retry-After` (waited out in place up to
//! `max_retry_wait`).
//!
//! **Daily quota.** With `requests_per_day`, the budget counts its requests
//! in a rolling 24 hours (one-minute buckets) and parks the connector when
//! they are used up: every call then fails at once with
//! [`ConnectorError::QuotaExhausted`] (and `resumes_at`) until the oldest
//! requests leave the window. A daily-quota refusal from the ERP
//! ([`ConnectorError::DailyQuota`]) whose `Retry-After` is longer than
//! `max_retry_wait` parks it likewise until the reset the ERP named, instead
//! of retrying early. What an ERP says is left ([`Budget::report_quota`],
//! from headers such as Xero's `X-DayLimit-Remaining`) caps the budget too,
//! and when little is left requests are spread over the time until the
//! quota comes back, so the budget slows down before it is refused.
//!
//! Connectors never sleep or retry: this module does.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::ConnectorError;

/// Who is asking: regular polling or the resync engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Poll,
    Resync,
}

pub use crate::config::Limits;

/// The window a quota report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWindow {
    Minute,
    Day,
}

/// What an ERP says is left of one of its quotas (from response headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReport {
    pub window: QuotaWindow,
    pub remaining: u64,
    /// When the window's quota is back in full, when the ERP says so.
    pub resets_in: Option<Duration>,
}

/// Counters exposed in `/status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BudgetStats {
    pub poll_requests: u64,
    pub resync_requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub in_flight: usize,
    pub max_in_flight_seen: usize,
    /// Requests in the last 24 hours (counted when a daily quota is set).
    pub requests_last_24h: u64,
    pub requests_per_day: Option<u32>,
    /// What the ERP last said is left of its daily quota.
    pub erp_daily_remaining: Option<u64>,
    /// Requests are parked until then (daily quota used up).
    pub parked_until: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct Budget {
    limits: Limits,
    rate: DefaultDirectRateLimiter,
    resync_rate: DefaultDirectRateLimiter,
    concurrency: Semaphore,
    resync_concurrency: Semaphore,
    /// Number of poll passes currently running (see [`Budget::poll_activity`]).
    poll_active: AtomicUsize,
    poll_requests: AtomicU64,
    resync_requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Last time the ERP asked us to slow down, for `/status`.
    last_throttle: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    quota: Mutex<QuotaState>,
}

/// Requests per minute over the last 24 hours, oldest first.
#[derive(Debug, Default)]
struct DayLog {
    /// (minute number since `origin`, requests in that minute)
    minutes: VecDeque<(u64, u32)>,
    total: u64,
}

const DAY: Duration = Duration::from_secs(86_400);

impl DayLog {
    fn minute(origin: Instant, t: Instant) -> u64 {
        t.saturating_duration_since(origin).as_secs() / 60
    }

    /// Forgets minutes that ended 24 hours ago or more.
    fn expire(&mut self, origin: Instant, now: Instant) {
        // A request of minute m is counted until 24 hours after the end of
        // that minute (never too early, at most a minute too long).
        let current = Self::minute(origin, now);
        while self
            .minutes
            .front()
            .is_some_and(|&(m, _)| m + 1441 <= current)
        {
            let (_, n) = self.minutes.pop_front().expect("checked");
            self.total -= n as u64;
        }
    }

    fn record(&mut self, origin: Instant, now: Instant) {
        let m = Self::minute(origin, now);
        match self.minutes.back_mut() {
            Some((last, n)) if *last == m => *n += 1,
            _ => self.minutes.push_back((m, 1)),
        }
        self.total += 1;
    }

    /// When the oldest counted requests leave the window.
    fn frees_at(&self, origin: Instant) -> Option<Instant> {
        self.minutes
            .front()
            .map(|&(m, _)| origin + Duration::from_secs((m + 1441) * 60))
    }
}

/// What the ERP said is left in one window, counted down locally.
#[derive(Debug, Clone, Copy)]
struct Remaining {
    remaining: u64,
    /// When the quota is back: the ERP's reset, or a guess.
    until: Instant,
    /// Whether `until` is the ERP's word (not a guess).
    known_reset: bool,
}

#[derive(Debug)]
struct QuotaState {
    origin: Instant,
    day: DayLog,
    erp_day: Option<Remaining>,
    erp_minute: Option<Remaining>,
    parked: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
    /// When the last paced request was let through.
    last_paced: Option<Instant>,
    /// The ERP's last `Retry-After`: no request of any stream is sent
    /// before then (not only the retry of the refused one).
    hold_until: Option<Instant>,
}

/// What the quota gate decided for the next request.
enum Gate {
    Go,
    Wait(Duration),
    Park(Instant),
}

fn quota(rps: f64, burst: u32) -> Quota {
    let rps = if rps.is_finite() && rps > 0.0 {
        rps
    } else {
        1.0
    };
    // Config bounds the rate; clamp anyway so no value can panic here.
    let period = Duration::try_from_secs_f64(1.0 / rps)
        .unwrap_or(Duration::from_secs(86_400))
        .clamp(Duration::from_nanos(1), Duration::from_secs(86_400));
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
    Quota::with_period(period)
        .expect("period is non-zero")
        .allow_burst(burst)
}

impl Budget {
    pub fn new(limits: Limits) -> Arc<Self> {
        let share = limits.resync_share.clamp(0.01, 1.0);
        let resync_conc = ((limits.max_concurrency as f64) * share).ceil().max(1.0) as usize;
        let resync_burst = ((limits.burst as f64) * share).ceil().max(1.0) as u32;
        Arc::new(Budget {
            rate: RateLimiter::direct(quota(limits.requests_per_second, limits.burst)),
            resync_rate: RateLimiter::direct(quota(
                limits.requests_per_second * share,
                resync_burst,
            )),
            concurrency: Semaphore::new(limits.max_concurrency.max(1) as usize),
            resync_concurrency: Semaphore::new(resync_conc),
            limits,
            poll_active: AtomicUsize::new(0),
            poll_requests: AtomicU64::new(0),
            resync_requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            last_throttle: Mutex::new(None),
            quota: Mutex::new(QuotaState {
                origin: Instant::now(),
                day: DayLog::default(),
                erp_day: None,
                erp_minute: None,
                parked: None,
                last_paced: None,
                hold_until: None,
            }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Marks polling as busy until the guard is dropped, which confines
    /// resync to its share of the budget meanwhile.
    pub fn poll_activity(self: &Arc<Self>) -> PollActivity {
        self.poll_active.fetch_add(1, Ordering::SeqCst);
        PollActivity {
            budget: Arc::clone(self),
        }
    }

    pub fn poll_is_active(&self) -> bool {
        self.poll_active.load(Ordering::SeqCst) > 0
    }

    pub fn stats(&self) -> BudgetStats {
        let (last_24h, erp_daily_remaining, parked_until) = {
            let mut q = self.quota.lock().expect("poisoned");
            let now = Instant::now();
            let origin = q.origin;
            q.day.expire(origin, now);
            let parked = q.parked.filter(|(until, _)| *until > now).map(|(_, at)| at);
            (
                q.day.total,
                q.erp_day.filter(|r| r.until > now).map(|r| r.remaining),
                parked,
            )
        };
        BudgetStats {
            requests_last_24h: last_24h,
            requests_per_day: self.limits.requests_per_day,
            erp_daily_remaining,
            parked_until,
            poll_requests: self.poll_requests.load(Ordering::Relaxed),
            resync_requests: self.resync_requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight_seen: self.max_in_flight.load(Ordering::Relaxed),
        }
    }

    pub fn last_throttle(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self.last_throttle.lock().expect("poisoned")
    }

    /// Until when requests are parked (the daily quota is used up).
    pub fn parked_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let q = self.quota.lock().expect("poisoned");
        let now = Instant::now();
        q.parked.filter(|(until, _)| *until > now).map(|(_, at)| at)
    }

    /// Feeds what the ERP says is left of a quota (response headers).
    /// Connectors call it on every response that carries such headers.
    pub fn report_quota(&self, r: QuotaReport) {
        let now = Instant::now();
        let (window, guess) = match r.window {
            QuotaWindow::Minute => (Duration::from_secs(60), Duration::from_secs(60)),
            QuotaWindow::Day => (DAY, DAY),
        };
        let rem = Remaining {
            remaining: r.remaining,
            until: now + r.resets_in.map(|d| d.min(window)).unwrap_or(guess),
            known_reset: r.resets_in.is_some(),
        };
        let mut q = self.quota.lock().expect("poisoned");
        match r.window {
            QuotaWindow::Minute => q.erp_minute = Some(rem),
            QuotaWindow::Day => q.erp_day = Some(rem),
        }
    }

    /// Parks every request until `until` (an instant of the budget's clock).
    fn park(&self, until: Instant, why: &str) -> ConnectorError {
        let resumes_at = chrono::Utc::now()
            + chrono::TimeDelta::from_std(until.saturating_duration_since(Instant::now()))
                .unwrap_or(chrono::TimeDelta::zero());
        let mut q = self.quota.lock().expect("poisoned");
        let already = q.parked.is_some_and(|(u, _)| u >= until);
        if !already {
            q.parked = Some((until, resumes_at));
            tracing::warn!(resumes_at = %resumes_at, reason = why, "daily request quota used up: requests parked");
        }
        let at = q.parked.map(|(_, at)| at).unwrap_or(resumes_at);
        ConnectorError::QuotaExhausted { resumes_at: at }
    }

    /// Decides whether a request may go now, given the quotas.
    fn gate(&self) -> Gate {
        let now = Instant::now();
        let mut q = self.quota.lock().expect("poisoned");
        if let Some((until, _)) = q.parked {
            if until > now {
                return Gate::Park(until);
            }
            q.parked = None;
        }
        match q.hold_until {
            Some(until) if until > now => return Gate::Wait(until - now),
            Some(_) => q.hold_until = None,
            None => {}
        }
        let origin = q.origin;
        q.day.expire(origin, now);
        if q.erp_day.is_some_and(|r| r.until <= now) {
            q.erp_day = None;
        }
        if q.erp_minute.is_some_and(|r| r.until <= now) {
            q.erp_minute = None;
        }
        // The ERP's minute window: wait for it, never park.
        if let Some(m) = q.erp_minute {
            if m.remaining == 0 {
                return Gate::Wait(m.until - now);
            }
        }
        let local_left = self
            .limits
            .requests_per_day
            .map(|n| (n as u64).saturating_sub(q.day.total));
        if local_left == Some(0) {
            let until = q.day.frees_at(origin).unwrap_or(now + DAY);
            return Gate::Park(until);
        }
        if let Some(d) = q.erp_day {
            if d.remaining == 0 && d.known_reset {
                return Gate::Park(d.until);
            }
        }
        // Little left of the day: spread what is left over the time until
        // the quota comes back.
        let erp_left = q.erp_day.map(|d| d.remaining);
        let left = match (local_left, erp_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(left) = left.filter(|l| *l > 0) {
            // The last 5% of a configured quota (or the last 10 requests
            // the ERP says are left) are spread out.
            let low_water = match self.limits.requests_per_day {
                Some(n) => u64::from(n) / 20,
                None => 10,
            };
            // When the quota comes back: the ERP's reset, or when our own
            // oldest requests leave the window. Unknown: no pacing (the
            // ERP's refusal will say when).
            let back = q
                .erp_day
                .filter(|d| d.known_reset)
                .map(|d| d.until)
                .or_else(|| q.day.frees_at(origin));
            if let Some(back) = back.filter(|_| left <= low_water) {
                let spacing =
                    back.saturating_duration_since(now) / (left + 1).min(u32::MAX as u64) as u32;
                if let Some(last) = q.last_paced {
                    let next = last + spacing;
                    if next > now {
                        return Gate::Wait(next - now);
                    }
                }
                q.last_paced = Some(now);
            }
        }
        Gate::Go
    }

    /// Counts one request sent against the quotas.
    fn count_request(&self) {
        let now = Instant::now();
        let mut q = self.quota.lock().expect("poisoned");
        let origin = q.origin;
        if self.limits.requests_per_day.is_some() {
            q.day.record(origin, now);
        }
        let q = &mut *q;
        for r in [&mut q.erp_day, &mut q.erp_minute].into_iter().flatten() {
            r.remaining = r.remaining.saturating_sub(1);
        }
    }

    /// Waits until the quotas let a request go, or fails when parked.
    async fn pass_gate(&self) -> Result<(), ConnectorError> {
        loop {
            match self.gate() {
                Gate::Go => return Ok(()),
                Gate::Wait(d) => tokio::time::sleep(d).await,
                Gate::Park(until) => return Err(self.park(until, "quota")),
            }
        }
    }

    /// Runs one upstream request under the budget, retrying retryable errors
    /// with exponential back-off and jitter (never shorter than `Retry-After`).
    /// `op` is called once per attempt and must build a fresh request each
    /// time (new nonce, new timestamp).
    pub async fn call<T, F, Fut>(&self, lane: Lane, mut op: F) -> Result<T, ConnectorError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.limits.min_backoff)
            .with_max_delay(self.limits.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.limits.max_attempts.saturating_sub(1) as usize)
            .build();
        loop {
            self.pass_gate().await?;
            let result = {
                let _permits = self.acquire(lane).await;
                self.count_request();
                match lane {
                    Lane::Poll => self.poll_requests.fetch_add(1, Ordering::Relaxed),
                    Lane::Resync => self.resync_requests.fetch_add(1, Ordering::Relaxed),
                };
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let r = op().await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                r
            };
            match result {
                Ok(v) => return Ok(v),
                Err(ConnectorError::DailyQuota { retry_after }) => {
                    self.note_throttle();
                    let wait = retry_after.filter(|d| *d <= self.limits.max_retry_wait);
                    match (wait, backoff.next()) {
                        (Some(d), Some(b)) => {
                            self.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                delay_ms = d.max(b).as_millis() as u64,
                                "daily quota refusal; waiting for the reset"
                            );
                            tokio::time::sleep(d.max(b)).await;
                        }
                        _ => {
                            let now = Instant::now();
                            let until = match retry_after {
                                Some(d) => now + d,
                                None => {
                                    let q = self.quota.lock().expect("poisoned");
                                    q.day
                                        .frees_at(q.origin)
                                        .filter(|t| *t > now)
                                        .unwrap_or(now + self.limits.max_retry_wait)
                                }
                            };
                            return Err(self.park(until, "the ERP refused: daily quota"));
                        }
                    }
                }
                Err(e) if e.is_retryable() => {
                    if matches!(e, ConnectorError::RateLimited { .. }) {
                        self.note_throttle();
                    }
                    let Some(delay) = backoff.next() else {
                        return Err(e);
                    };
                    let wait = e
                        .retry_after()
                        .unwrap_or(Duration::ZERO)
                        .min(self.limits.max_retry_wait);
                    let delay = delay.max(wait);
                    if !wait.is_zero() {
                        self.hold(wait);
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "retrying upstream request");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Holds every request of this budget for `wait` (an ERP's
    /// `Retry-After` applies to the account, not to one request).
    fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut q = self.quota.lock().expect("poisoned");
        if q.hold_until.is_none_or(|t| t < until) {
            q.hold_until = Some(until);
        }
    }

    fn note_throttle(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        *self.last_throttle.lock().expect("poisoned") = Some(chrono::Utc::now());
    }

    async fn acquire(&self, lane: Lane) -> Permits<'_> {
        let jitter = Jitter::up_to(Duration::from_millis(5));
        loop {
            // Resync permits are always taken before the main one, so a
            // resync waiting for its share never holds a main permit.
            let mut resync_permit = None;
            if lane == Lane::Resync && self.poll_is_active() {
                resync_permit = Some(
                    self.resync_concurrency
                        .acquire()
                        .await
                        .expect("semaphore never closed"),
                );
                self.resync_rate.until_ready_with_jitter(jitter).await;
            }
            let permit = self
                .concurrency
                .acquire()
                .await
                .expect("semaphore never closed");
            // Polling may have started while this resync request waited: it
            // must then go through the resync share like the others.
            if lane == Lane::Resync && resync_permit.is_none() && self.poll_is_active() {
                drop(permit);
                continue;
            }
            self.rate.until_ready_with_jitter(jitter).await;
            return Permits {
                _main: permit,
                _resync: resync_permit,
            };
        }
    }
}

struct Permits<'a> {
    _main: tokio::sync::SemaphorePermit<'a>,
    _resync: Option<tokio::sync::SemaphorePermit<'a>>,
}

/// See [`Budget::poll_activity`].
pub struct PollActivity {
    budget: Arc<Budget>,
}

impl Drop for PollActivity {
    fn drop(&mut self) {
        self.budget.poll_active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn fast() -> Limits {
        Limits {
            requests_per_second: 1000.0,
            burst: 100,
            max_concurrency: 2,
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_attempts: 3,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn retries_retryable_errors_then_gives_up() {
        let b = Budget::new(fast());
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = b
            .call(Lane::Poll, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ConnectorError::Server {
                    status: 503,
                    message: "down".into(),
                })
            })
            .await;
        assert!(matches!(r, Err(ConnectorError::Server { status: 503, .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(b.stats().retries, 2);
        assert_eq!(b.stats().poll_requests, 3);
    }

    #[tokio::test]
    async fn does_not_retry_auth_errors() {
        let b = Budget::new(fast());
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = b
            .call(Lane::Resync, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ConnectorError::Auth("bad secret".into()))
            })
            .await;
        assert!(matches!(r, Err(ConnectorError::Auth(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(b.stats().resync_requests, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let b = Budget::new(fast());
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r = b
            .call(Lane::Poll, || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(ConnectorError::RateLimited {
                        retry_after: Some(Duration::from_secs(30)),
                    })
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(b.stats().rate_limited, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_holds_every_stream_not_only_the_refused_request() {
        let b = Budget::new(fast());
        let start = tokio::time::Instant::now();
        let refused = AtomicU32::new(0);
        let first = b.call(Lane::Poll, || async {
            if refused.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(ConnectorError::RateLimited {
                    retry_after: Some(Duration::from_secs(20)),
                })
            } else {
                Ok(tokio::time::Instant::now())
            }
        });
        // A second stream asks a moment after the refusal.
        let second = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            b.call(Lane::Poll, || async { Ok(tokio::time::Instant::now()) })
                .await
        };
        let (a, c) = tokio::join!(first, second);
        assert!(a.unwrap() - start >= Duration::from_secs(20));
        let sent = c.unwrap() - start;
        assert!(sent >= Duration::from_secs(20), "sent after {sent:?}");
        assert_eq!(b.stats().rate_limited, 1);
    }

    fn daily(n: u32) -> Limits {
        Limits {
            requests_per_day: Some(n),
            ..fast()
        }
    }

    async fn ok_call(b: &Budget, calls: &AtomicU32) -> Result<(), ConnectorError> {
        b.call(Lane::Poll, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_up_daily_quota_parks_until_the_oldest_requests_leave_the_day() {
        let b = Budget::new(daily(3));
        let calls = AtomicU32::new(0);
        for _ in 0..3 {
            ok_call(&b, &calls).await.unwrap();
        }
        let before = chrono::Utc::now();
        let e = ok_call(&b, &calls).await.unwrap_err();
        let ConnectorError::QuotaExhausted { resumes_at } = e else {
            panic!("{e:?}")
        };
        assert_eq!(calls.load(Ordering::SeqCst), 3, "nothing sent while parked");
        let ahead = resumes_at - before;
        assert!(
            ahead >= chrono::TimeDelta::hours(24)
                && ahead <= chrono::TimeDelta::minutes(24 * 60 + 2),
            "{ahead}"
        );
        assert_eq!(b.parked_until(), Some(resumes_at));
        assert_eq!(b.stats().requests_last_24h, 3);
        // Parked calls fail at once, again and again, without a request.
        tokio::time::advance(Duration::from_secs(23 * 3600)).await;
        assert!(matches!(
            ok_call(&b, &calls).await,
            Err(ConnectorError::QuotaExhausted { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // A day later the quota is back.
        tokio::time::advance(Duration::from_secs(3600 + 120)).await;
        ok_call(&b, &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(b.parked_until(), None);
        assert_eq!(b.stats().requests_last_24h, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_daily_refusal_longer_than_max_retry_wait_parks_until_the_reset() {
        let b = Budget::new(fast());
        let calls = AtomicU32::new(0);
        let r = b
            .call(Lane::Poll, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(ConnectorError::DailyQuota {
                    retry_after: Some(Duration::from_secs(2 * 3600)),
                })
            })
            .await;
        assert!(
            matches!(r, Err(ConnectorError::QuotaExhausted { .. })),
            "{r:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried early");
        assert_eq!(b.stats().rate_limited, 1);
        assert!(b.stats().parked_until.is_some());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(ok_call(&b, &calls).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(3600)).await;
        ok_call(&b, &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_daily_refusal_is_waited_out_in_place() {
        let b = Budget::new(fast());
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r = b
            .call(Lane::Poll, || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(ConnectorError::DailyQuota {
                        retry_after: Some(Duration::from_secs(120)),
                    })
                } else {
                    Ok(5)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 5);
        assert!(start.elapsed() >= Duration::from_secs(120));
        assert_eq!(b.parked_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn erp_reported_quotas_slow_down_before_a_refusal() {
        // Nothing left of the day, reset known: park without asking.
        let b = Budget::new(fast());
        let calls = AtomicU32::new(0);
        b.report_quota(QuotaReport {
            window: QuotaWindow::Day,
            remaining: 0,
            resets_in: Some(Duration::from_secs(600)),
        });
        assert!(matches!(
            ok_call(&b, &calls).await,
            Err(ConnectorError::QuotaExhausted { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(601)).await;
        ok_call(&b, &calls).await.unwrap();

        // The minute window is used up: wait for it, never park.
        b.report_quota(QuotaReport {
            window: QuotaWindow::Minute,
            remaining: 0,
            resets_in: Some(Duration::from_secs(20)),
        });
        let start = tokio::time::Instant::now();
        ok_call(&b, &calls).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(20));
        assert_eq!(b.parked_until(), None);

        // Little left with a known reset: the rest is spread until then.
        b.report_quota(QuotaReport {
            window: QuotaWindow::Day,
            remaining: 4,
            resets_in: Some(Duration::from_secs(400)),
        });
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            ok_call(&b, &calls).await.unwrap();
        }
        assert!(
            start.elapsed() >= Duration::from_secs(200),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(b.stats().erp_daily_remaining, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_of_a_local_daily_quota_is_spread_over_the_window() {
        let b = Budget::new(daily(200));
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        for _ in 0..190 {
            ok_call(&b, &calls).await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no pacing above the low water"
        );
        // 10 left (5%): spread over the day until the first requests leave
        // the window, about 24 h / 11 apart.
        for _ in 0..3 {
            ok_call(&b, &calls).await.unwrap();
        }
        assert!(
            start.elapsed() >= Duration::from_secs(2 * 2 * 3600),
            "{:?}",
            start.elapsed()
        );
        assert!(b.parked_until().is_none());
    }

    #[tokio::test]
    async fn never_exceeds_max_concurrency() {
        let b = Budget::new(fast());
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    b.call(Lane::Poll, || async {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok::<_, ConnectorError>(())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(b.stats().max_in_flight_seen, 2);
    }

    #[tokio::test]
    async fn resync_keeps_to_its_share_while_polling_is_busy() {
        let b = Budget::new(Limits {
            max_concurrency: 4,
            resync_share: 0.5,
            ..fast()
        });
        let in_flight = Arc::new(AtomicU32::new(0));
        let max_seen = Arc::new(AtomicU32::new(0));
        let run = |b: Arc<Budget>| {
            let (in_flight, max_seen) = (Arc::clone(&in_flight), Arc::clone(&max_seen));
            tokio::spawn(async move {
                b.call(Lane::Resync, || async {
                    let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ConnectorError>(())
                })
                .await
            })
        };
        // Polling busy: at most half of the 4 slots for resync.
        let busy = b.poll_activity();
        let tasks: Vec<_> = (0..8).map(|_| run(Arc::clone(&b))).collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 2);
        // Polling idle: resync may use all 4.
        drop(busy);
        max_seen.store(0, Ordering::SeqCst);
        let tasks: Vec<_> = (0..8).map(|_| run(Arc::clone(&b))).collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 4);
    }
}
