//! Delivers the change feed to the `[[webhooks]]` endpoints, one task per
//! endpoint, following the Standard Webhooks specification.
//!
//! Each endpoint has a durable cursor in the store (`webhook_cursors`): the
//! last event sequence number the receiver acknowledged. A delivery is a
//! batch of the next events after the cursor (at most `batch_size`, only
//! the configured types), POSTed as one JSON message signed with the
//! endpoint's secret ([`sign`]); a 2xx answer advances and stores the
//! cursor. So delivery is **at least once** (a crash or a lost answer
//! resends the same batch, under the same `webhook-id`) and **in feed
//! order** per endpoint (the next batch is only built after the previous
//! one was acknowledged). Each attempt reads the events again, so it
//! carries their current data: a customer excluded while its endpoint was
//! down is never delivered.
//!
//! A failed attempt (transport error, timeout, non-2xx, a redirect — which
//! is never followed) waits `retry_initial`, doubled per failure up to
//! `retry_max`, with jitter; after `max_retry_time` without a success the
//! endpoint is marked failing (in `/status`, `/metrics` and durably in the
//! store) and keeps being retried at `retry_max`; the first success clears
//! it. Targets are resolved by [`client`], which refuses private addresses
//! unless the endpoint allows them, at connection time (after DNS). The
//! secret and the URL's path and query are never logged.

pub mod client;
pub mod sign;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use super::{changes, gone_message, ChangesError};
use crate::app::App;
use crate::config::{Config, WebhookConfig, WebhookStart};
use crate::model::Timestamp;
use crate::read::view::EventView;
use crate::store::{FeedBounds, Store, WebhookCursor};
use sign::SigningKey;

/// How often an idle endpoint looks for events written by another process
/// (several daemons on one PostgreSQL database); events of this process
/// wake it at once.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// One configured endpoint with its key, HTTP client and live status.
pub struct Endpoint {
    pub config: WebhookConfig,
    key: SigningKey,
    http: reqwest::Client,
    status: Mutex<WebhookStatus>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    #[default]
    Starting,
    /// Everything is delivered; waiting for events.
    Idle,
    Delivering,
    /// The last attempt failed; retrying with back-off.
    Retrying,
    /// Failing for longer than `max_retry_time`; still retried.
    Failing,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub at: Timestamp,
    pub message: String,
}

/// What `/status` shows per endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookStatus {
    pub id: String,
    /// `scheme://host[:port]` (never the path or query).
    pub target: String,
    pub state: WebhookState,
    /// The last event the receiver acknowledged.
    pub after_seq: u64,
    /// Events written after it (filled in when the status is read).
    pub lag_events: u64,
    /// Events delivered since the daemon started.
    pub delivered_events: u64,
    pub deliveries: u64,
    pub failed_attempts: u64,
    pub consecutive_failures: u64,
    pub failing_since: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub last_error: Option<LastError>,
    pub next_attempt_at: Option<Timestamp>,
    /// Notices sent because the endpoint's position fell behind the
    /// feed's retention.
    pub expired_notices: u64,
}

impl Endpoint {
    /// Builds an endpoint from its config and its loaded secret.
    pub fn new(config: WebhookConfig, key: SigningKey) -> Result<Endpoint, String> {
        let http = client::build(&config)?;
        let status = WebhookStatus {
            id: config.id.clone(),
            target: config.target(),
            ..Default::default()
        };
        Ok(Endpoint {
            config,
            key,
            http,
            status: Mutex::new(status),
        })
    }

    /// The live status, with the lag against `latest`.
    pub fn status(&self, latest: u64) -> WebhookStatus {
        let mut s = self.status.lock().expect("webhook status lock").clone();
        s.lag_events = latest.saturating_sub(s.after_seq);
        s
    }

    fn update(&self, f: impl FnOnce(&mut WebhookStatus)) {
        f(&mut self.status.lock().expect("webhook status lock"))
    }
}

/// Reads every endpoint's secret and builds the endpoints (at start-up and
/// by `erpsync webhooks test`). The error names the endpoint, never the
/// secret.
pub fn endpoints(config: &Config) -> Result<Vec<Arc<Endpoint>>, String> {
    config
        .webhooks
        .iter()
        .map(|w| {
            let secret = w
                .secret
                .load()
                .map_err(|e| format!("webhook `{}`: secret: {e}", w.id))?;
            let key = SigningKey::parse(&secret)
                .map_err(|e| format!("webhook `{}`: secret: {e}", w.id))?;
            Endpoint::new(w.clone(), key)
                .map(Arc::new)
                .map_err(|e| format!("webhook `{}`: {e}", w.id))
        })
        .collect()
}

/// Starts one delivery task per endpoint of the app.
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker) {
    for ep in app.webhooks() {
        tracker.spawn(run(Arc::clone(app), ep));
    }
}

/// The envelope of every message (Standard Webhooks' `type`, `timestamp`,
/// `data`).
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: Timestamp,
    data: T,
}

#[derive(Serialize)]
struct Batch<'a> {
    endpoint: &'a str,
    /// The batch covers the feed positions `first_seq ..= last_seq` (events
    /// of other types in that range are not for this endpoint).
    first_seq: u64,
    last_seq: u64,
    events: &'a [EventView],
}

#[derive(Serialize)]
struct Expired<'a> {
    endpoint: &'a str,
    /// The endpoint's position.
    after: u64,
    /// Delivery goes on after this position.
    resume_after: u64,
    message: String,
}

#[derive(Serialize)]
struct Ping<'a> {
    endpoint: &'a str,
    message: &'a str,
}

/// What the next attempt sends.
enum Next {
    /// Nothing to send yet.
    Wait,
    /// Only events of other types: move the cursor without a request.
    Skip(u64),
    Send {
        msg_id: String,
        body: Vec<u8>,
        /// The cursor after a success.
        to: u64,
        events: u64,
        expired: bool,
    },
}

fn body<T: Serialize>(kind: &str, data: T) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        kind,
        timestamp: chrono::Utc::now(),
        data,
    })
    .expect("webhook messages serialise")
}

fn expired_message(ep: &Endpoint, after: u64, bounds: &FeedBounds) -> Next {
    let resume = bounds.expired_through.max(if after > bounds.latest {
        bounds.latest
    } else {
        0
    });
    Next::Send {
        msg_id: format!("{}-expired-{after}-{resume}", ep.config.id),
        body: body(
            "changes.expired",
            Expired {
                endpoint: &ep.config.id,
                after,
                resume_after: resume,
                message: gone_message(&after, bounds),
            },
        ),
        to: resume,
        events: 0,
        expired: true,
    }
}

/// Builds the next message after `after`.
fn next(store: &Store, ep: &Endpoint, after: u64) -> Result<Next, crate::store::StoreError> {
    match changes(store, after, ep.config.batch_size) {
        Ok(page) => {
            if page.events.is_empty() {
                return Ok(Next::Wait);
            }
            let first = page.events[0].seq;
            let last = page.next;
            let events: Vec<EventView> = page
                .events
                .into_iter()
                .filter(|e| ep.config.wants(e.kind))
                .collect();
            if events.is_empty() {
                return Ok(Next::Skip(last));
            }
            let n = events.len() as u64;
            Ok(Next::Send {
                msg_id: format!("{}-{first}-{last}", ep.config.id),
                body: body(
                    "changes",
                    Batch {
                        endpoint: &ep.config.id,
                        first_seq: first,
                        last_seq: last,
                        events: &events,
                    },
                ),
                to: last,
                events: n,
                expired: false,
            })
        }
        Err(ChangesError::Gone { after, bounds }) => Ok(expired_message(ep, after, &bounds)),
        // A position ahead of the feed: the store was replaced (restored
        // from a backup). The receiver must rebuild like after a gap.
        Err(ChangesError::Invalid(_)) => {
            let bounds = store.feed_bounds()?;
            Ok(expired_message(ep, after, &bounds))
        }
        Err(ChangesError::Store(e)) => Err(e),
    }
}

/// The wait before attempt `failures + 1`: `initial * 2^(failures-1)` up to
/// `max`, then a random point in its upper half (jitter).
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = initial
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)))
        .min(max);
    let half = exp / 2;
    half + exp.mul_f64(rand::rng().random_range(0.0..=0.5))
}

async fn persist(store: &Store, id: &str, cur: &WebhookCursor) {
    if let Err(e) = store.set_webhook_cursor(id, cur).await {
        tracing::error!(webhook = id, error = %e, "cannot store the webhook cursor");
    }
}

/// Delivers to one endpoint until shutdown.
/// Delivers to one endpoint until shutdown (started by [`spawn`], or by
/// the lease loop when several daemons share the store).
pub async fn run(app: Arc<App>, ep: Arc<Endpoint>) {
    let id = ep.config.id.clone();
    let store = Arc::clone(&app.store);
    let mut cur = loop {
        match store.webhook_cursor(&id) {
            Ok(Some(c)) => break c,
            Ok(None) => {
                let after = match ep.config.start {
                    WebhookStart::Beginning => 0,
                    WebhookStart::Latest => store.feed_bounds().map(|b| b.latest).unwrap_or(0),
                };
                let c = WebhookCursor {
                    after_seq: after,
                    updated_at: chrono::Utc::now(),
                    failing_since: None,
                    last_error: None,
                };
                persist(&store, &id, &c).await;
                break c;
            }
            Err(e) => {
                tracing::error!(webhook = %id, error = %e, "cannot read the webhook cursor; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = app.shutdown.cancelled() => return,
                }
            }
        }
    };
    ep.update(|s| {
        s.after_seq = cur.after_seq;
        s.failing_since = cur.failing_since;
        s.state = if cur.failing_since.is_some() {
            WebhookState::Failing
        } else {
            WebhookState::Idle
        };
    });
    let mut feed = store.subscribe_feed();
    let mut failures: u32 = 0;
    // When the current run of failures began (a durable failing mark
    // carries over a restart).
    let mut failing_from: Option<Timestamp> = cur.failing_since;
    tracing::info!(webhook = %id, target = %ep.config.target(), after = cur.after_seq, "webhook delivery started");
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let step = match next(&store, &ep, cur.after_seq) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(webhook = %id, error = %e, "cannot read the change feed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = app.shutdown.cancelled() => break,
                }
                continue;
            }
        };
        match step {
            Next::Wait => {
                if failures == 0 {
                    ep.update(|s| s.state = WebhookState::Idle);
                }
                feed.mark_unchanged();
                tokio::select! {
                    _ = feed.changed() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = app.shutdown.cancelled() => break,
                }
            }
            Next::Skip(to) => {
                cur.after_seq = to;
                cur.updated_at = chrono::Utc::now();
                persist(&store, &id, &cur).await;
                ep.update(|s| s.after_seq = to);
            }
            Next::Send {
                msg_id,
                body,
                to,
                events,
                expired,
            } => {
                ep.update(|s| {
                    if s.state != WebhookState::Failing {
                        s.state = WebhookState::Delivering;
                    }
                });
                let sent = tokio::select! {
                    r = client::post(&ep.http, &ep.config, &ep.key, &msg_id, body) => r,
                    _ = app.shutdown.cancelled() => break,
                };
                let now = chrono::Utc::now();
                match sent {
                    Ok(_) => {
                        let was_failing = cur.failing_since.is_some();
                        cur = WebhookCursor {
                            after_seq: to,
                            updated_at: now,
                            failing_since: None,
                            last_error: None,
                        };
                        persist(&store, &id, &cur).await;
                        if was_failing || failures > 0 {
                            tracing::info!(webhook = %id, after_failures = failures, "webhook endpoint delivers again");
                        }
                        if expired {
                            tracing::warn!(webhook = %id, resume_after = to, "webhook endpoint was behind the feed's retention; it was told to do a full read");
                        }
                        failures = 0;
                        failing_from = None;
                        ep.update(|s| {
                            s.after_seq = to;
                            s.delivered_events += events;
                            s.deliveries += 1;
                            s.consecutive_failures = 0;
                            s.failing_since = None;
                            s.last_success = Some(now);
                            s.next_attempt_at = None;
                            s.state = WebhookState::Delivering;
                            if expired {
                                s.expired_notices += 1;
                            }
                        });
                    }
                    Err(message) => {
                        failures = failures.saturating_add(1);
                        let since = *failing_from.get_or_insert(now);
                        let over = (now - since)
                            .to_std()
                            .is_ok_and(|d| d >= ep.config.max_retry_time);
                        if over && cur.failing_since.is_none() {
                            cur.failing_since = Some(since);
                            cur.last_error = Some(message.clone());
                            cur.updated_at = now;
                            persist(&store, &id, &cur).await;
                            tracing::error!(webhook = %id, target = %ep.config.target(), since = %since, error = %message, "webhook endpoint failing; deliveries go on being retried");
                        } else {
                            tracing::warn!(webhook = %id, target = %ep.config.target(), attempt = failures, error = %message, "webhook delivery failed");
                        }
                        let wait = backoff(ep.config.retry_initial, ep.config.retry_max, failures);
                        let failing = cur.failing_since;
                        ep.update(|s| {
                            s.failed_attempts += 1;
                            s.consecutive_failures = u64::from(failures);
                            s.failing_since = failing;
                            s.state = if failing.is_some() {
                                WebhookState::Failing
                            } else {
                                WebhookState::Retrying
                            };
                            s.last_error = Some(LastError {
                                at: now,
                                message: message.clone(),
                            });
                            s.next_attempt_at =
                                chrono::Duration::from_std(wait).ok().map(|w| now + w);
                        });
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = app.shutdown.cancelled() => break,
                        }
                    }
                }
            }
        }
    }
    ep.update(|s| s.state = WebhookState::Stopped);
}

/// Sends one signed `webhook.ping` message to an endpoint (`erpsync
/// webhooks test`). Returns the HTTP status of the answer.
pub async fn ping(ep: &Endpoint) -> Result<u16, String> {
    let msg_id = format!(
        "{}-ping-{}",
        ep.config.id,
        chrono::Utc::now().timestamp_millis()
    );
    let body = body(
        "webhook.ping",
        Ping {
            endpoint: &ep.config.id,
            message: "a test message from erpsync; verify its signature like any delivery",
        },
    );
    client::post(&ep.http, &ep.config, &ep.key, &msg_id, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for (n, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ] {
            for _ in 0..20 {
                let w = backoff(i, m, n).as_millis() as u64;
                assert!(w >= full / 2 && w <= full, "failure {n}: {w} ms");
            }
        }
    }
}
