//! The per-connector request budget: rate limit, concurrency cap, retries.
//!
//! Every upstream request of a connector goes through [`Budget::call`]. The
//! budget is shared by regular polling ([`Lane::Poll`]) and the resync engine
//! ([`Lane::Resync`]); while polling has work, resync may use at most
//! `resync_share` of the rate and of the concurrency, and when polling is idle
//! it may use all of it. Retries back off exponentially with jitter and never
//! wait less than the ERP's `Retry-After`.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Limits from the connector's `rate_limit` config table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_concurrency: u32,
    /// Share of rate and concurrency resync may use while polling is busy.
    pub resync_share: f64,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First back-off delay; doubles per attempt up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_second: 10.0,
            burst: 10,
            max_concurrency: 4,
            resync_share: 0.5,
            max_attempts: 6,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
        }
    }
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
        BudgetStats {
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
            let result = {
                let _permits = self.acquire(lane).await;
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
                Err(e) if e.is_retryable() => {
                    if matches!(e, ConnectorError::RateLimited { .. }) {
                        self.rate_limited.fetch_add(1, Ordering::Relaxed);
                        *self.last_throttle.lock().expect("poisoned") = Some(chrono::Utc::now());
                    }
                    let Some(delay) = backoff.next() else {
                        return Err(e);
                    };
                    let delay = delay.max(e.retry_after().unwrap_or(Duration::ZERO));
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "retrying upstream request");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
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
