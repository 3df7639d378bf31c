//! `/healthz`, `/readyz`, `/status` and `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::error::{ApiError, NoQuery, Query};
use crate::app::{App, ConnectorStatus, ReloadStatus};
use crate::connectors::budget::BudgetStats;
use crate::resync::queue::{self, JobState};
use crate::store::ClassificationCounts;

pub async fn healthz(Query(NoQuery {}): Query<NoQuery>) -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(app): State<Arc<App>>, Query(NoQuery {}): Query<NoQuery>) -> Response {
    let store = app.store.health();
    if app.is_ready() && store.writable {
        Json(json!({"status": "ready"})).into_response()
    } else if !store.writable {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": "the store cannot be written", "store": store})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_at: crate::model::Timestamp,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub customers: ClassificationCounts,
    pub connectors: Vec<ConnectorReport>,
    pub resync: ResyncSummary,
    pub rules: usize,
    pub last_reload: Option<ReloadStatus>,
    /// Where the change feed stands.
    pub feed: crate::store::FeedBounds,
    /// Webhook endpoints: state, position, lag, failures.
    pub webhooks: Vec<crate::feed::webhooks::WebhookStatus>,
    /// Whether the store can be written, and if not since when and why.
    pub store: crate::store::StoreHealth,
    /// With a shared (PostgreSQL) store: this daemon, every daemon of the
    /// installation and the leases each holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// This daemon: its id, the leases it works under, takeovers.
    #[serde(rename = "self")]
    pub this: crate::cluster::LocalView,
    pub lease_timeout_seconds: f64,
    /// Every daemon seen in the last ten lease timeouts, with its live
    /// leases and their age (the database's clock).
    pub daemons: Vec<crate::store::DaemonView>,
}

#[derive(Debug, Serialize)]
pub struct ConnectorReport {
    pub id: String,
    pub kind: String,
    /// How often the poller runs: a last success much older than this is stale.
    pub poll_interval_seconds: u64,
    #[serde(flatten)]
    pub worker: ConnectorStatus,
    /// Persistent counters (since the store was created): synced_*, dropped_*,
    /// deleted_*, quarantined.
    pub counters: BTreeMap<String, u64>,
    pub parked_records: u64,
    pub customers: ClassificationCounts,
    pub requests: BudgetStats,
    /// OAuth 2.0 state of connectors that use it (never a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::connectors::oauth::AuthStatus>,
}

#[derive(Debug, Default, Serialize)]
pub struct ResyncSummary {
    pub jobs_queued: u64,
    pub jobs_running: u64,
    pub jobs_failed: u64,
    pub jobs_done: u64,
    pub customers_pending: u64,
    /// Queued, running and failed jobs with progress, rates and ETA.
    pub jobs: Vec<crate::resync::progress::JobView>,
}

/// Builds the status report (also used by `/metrics`).
pub fn build_status(app: &App) -> Result<Status, crate::store::StoreError> {
    let mut total = ClassificationCounts::default();
    let mut connectors = Vec::new();
    for h in &app.connectors {
        let counts = app.store.classification_counts(Some(&h.id))?;
        total.total += counts.total;
        total.included += counts.included;
        total.excluded += counts.excluded;
        total.manual_overrides += counts.manual_overrides;
        for (k, v) in &counts.excluded_by_source {
            *total.excluded_by_source.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &counts.excluded_by_reason {
            *total.excluded_by_reason.entry(k.clone()).or_default() += v;
        }
        connectors.push(ConnectorReport {
            id: h.id.clone(),
            kind: h.config.kind.clone(),
            poll_interval_seconds: h.config.poll_interval.as_secs(),
            worker: h.status(),
            counters: app.store.counters(&h.id)?,
            parked_records: app.store.parked_count(&h.id)?,
            customers: counts,
            requests: h.budget.stats(),
            auth: h.connector.oauth().map(|o| o.status()),
        });
    }
    let mut resync = ResyncSummary::default();
    for j in queue::jobs(&app.store)? {
        match j.state {
            JobState::Queued => resync.jobs_queued += 1,
            JobState::Running => resync.jobs_running += 1,
            JobState::Failed => resync.jobs_failed += 1,
            JobState::Done => resync.jobs_done += 1,
        }
        if matches!(
            j.state,
            JobState::Queued | JobState::Running | JobState::Failed
        ) {
            resync.customers_pending += j.total.saturating_sub(j.done);
        }
    }
    resync.jobs = crate::resync::progress::views(app, crate::resync::progress::Filter::Unfinished)?;
    let feed = app.store.feed_bounds()?;
    let webhooks = app
        .webhooks()
        .iter()
        .map(|w| w.status(feed.latest))
        .collect();
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        started_at: app.started_at,
        uptime_seconds: app.started.elapsed().as_secs(),
        ready: app.is_ready(),
        customers: total,
        connectors,
        resync,
        rules: app.rules().rules().len(),
        last_reload: app.last_reload.lock().expect("poisoned").clone(),
        feed,
        webhooks,
        store: app.store.health(),
        cluster: match app.cluster() {
            Some(c) => Some(ClusterStatus {
                this: c.local_view(),
                lease_timeout_seconds: c.timeout.as_secs_f64(),
                daemons: app.store.cluster_view(c.timeout)?,
            }),
            None => None,
        },
    })
}

/// Builds the status report on a blocking thread: it counts every stored
/// customer.
async fn status_of(app: Arc<App>) -> Result<Status, ApiError> {
    Ok(super::blocking(move || build_status(&app)).await??)
}

pub async fn status(
    State(app): State<Arc<App>>,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Response, ApiError> {
    match status_of(Arc::clone(&app)).await {
        Ok(s) => Ok(Json(s).into_response()),
        // The store cannot be read either (a database server gone): say
        // what is known without it.
        Err(e) if !app.store.health().writable => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": e.message,
                "ready": false,
                "store": app.store.health(),
                "last_reload": app.last_reload.lock().expect("poisoned").clone(),
            })),
        )
            .into_response()),
        Err(e) => Err(e),
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped
/// (text exposition format).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition. Names follow
/// `erpsync_<name>_<unit>[_total]`.
pub async fn metrics(
    State(app): State<Arc<App>>,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Response, ApiError> {
    let s = status_of(app).await?;
    let mut text = String::new();
    let fam =
        |text: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(text, "{name}{labels} {v}");
            }
        };
    fam(
        &mut text,
        "erpsync_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        vec![(String::new(), s.uptime_seconds as f64)],
    );
    let lbl = |c: &str, extra: &[(&str, &str)]| {
        let mut s = format!("{{connector=\"{}\"", label_value(c));
        for (k, v) in extra {
            let _ = write!(s, ",{k}=\"{}\"", label_value(v));
        }
        s.push('}');
        s
    };
    let mut customers = Vec::new();
    let mut excluded = Vec::new();
    let mut synced = Vec::new();
    let mut dropped = Vec::new();
    let mut deleted = Vec::new();
    let mut quarantined = Vec::new();
    let mut requests = Vec::new();
    let mut retries = Vec::new();
    let mut throttled = Vec::new();
    let mut errors = Vec::new();
    let mut last_success = Vec::new();
    let mut parked = Vec::new();
    let mut overrides = Vec::new();
    let mut last_24h = Vec::new();
    let mut parked_gauge = Vec::new();
    let mut reconnect = Vec::new();
    for c in &s.connectors {
        last_24h.push((lbl(&c.id, &[]), c.requests.requests_last_24h as f64));
        parked_gauge.push((
            lbl(&c.id, &[]),
            f64::from(u8::from(c.requests.parked_until.is_some())),
        ));
        reconnect.push((
            lbl(&c.id, &[]),
            f64::from(u8::from(
                c.worker.state == crate::app::WorkerState::NeedsReconnect,
            )),
        ));
        customers.push((
            lbl(&c.id, &[("state", "included")]),
            c.customers.included as f64,
        ));
        customers.push((
            lbl(&c.id, &[("state", "excluded")]),
            c.customers.excluded as f64,
        ));
        for (reason, v) in &c.customers.excluded_by_reason {
            excluded.push((lbl(&c.id, &[("reason", reason)]), *v as f64));
        }
        overrides.push((lbl(&c.id, &[]), c.customers.manual_overrides as f64));
        for e in ["customers", "invoices", "transactions"] {
            let get = |k: String| c.counters.get(&k).copied().unwrap_or(0) as f64;
            synced.push((lbl(&c.id, &[("entity", e)]), get(format!("synced_{e}"))));
            deleted.push((lbl(&c.id, &[("entity", e)]), get(format!("deleted_{e}"))));
            if e != "customers" {
                dropped.push((lbl(&c.id, &[("entity", e)]), get(format!("dropped_{e}"))));
            }
        }
        quarantined.push((
            lbl(&c.id, &[]),
            c.counters.get("quarantined").copied().unwrap_or(0) as f64,
        ));
        requests.push((
            lbl(&c.id, &[("lane", "poll")]),
            c.requests.poll_requests as f64,
        ));
        requests.push((
            lbl(&c.id, &[("lane", "resync")]),
            c.requests.resync_requests as f64,
        ));
        retries.push((lbl(&c.id, &[]), c.requests.retries as f64));
        throttled.push((lbl(&c.id, &[]), c.requests.rate_limited as f64));
        errors.push((lbl(&c.id, &[]), c.worker.consecutive_errors as f64));
        parked.push((lbl(&c.id, &[]), c.parked_records as f64));
        if let Some(t) = c.worker.last_success {
            last_success.push((lbl(&c.id, &[]), t.timestamp() as f64));
        }
    }
    fam(
        &mut text,
        "erpsync_customers",
        "gauge",
        "Stored customers by state.",
        customers,
    );
    fam(
        &mut text,
        "erpsync_customers_excluded",
        "gauge",
        "Excluded customers by reason.",
        excluded,
    );
    fam(
        &mut text,
        "erpsync_customers_manual_overrides",
        "gauge",
        "Customers re-included by hand although a rule or native flag matches.",
        overrides,
    );
    fam(
        &mut text,
        "erpsync_records_synced_total",
        "counter",
        "Records written by sync.",
        synced,
    );
    fam(
        &mut text,
        "erpsync_records_dropped_total",
        "counter",
        "Records of excluded customers dropped at ingest.",
        dropped,
    );
    fam(
        &mut text,
        "erpsync_records_deleted_total",
        "counter",
        "Records deleted because upstream deleted them.",
        deleted,
    );
    fam(
        &mut text,
        "erpsync_records_quarantined_total",
        "counter",
        "Malformed upstream records quarantined.",
        quarantined,
    );
    fam(
        &mut text,
        "erpsync_records_parked",
        "gauge",
        "Records waiting for their customer to arrive.",
        parked,
    );
    fam(
        &mut text,
        "erpsync_upstream_requests_total",
        "counter",
        "Requests sent to the ERP, by lane.",
        requests,
    );
    fam(
        &mut text,
        "erpsync_upstream_retries_total",
        "counter",
        "Upstream requests retried.",
        retries,
    );
    fam(
        &mut text,
        "erpsync_upstream_rate_limited_total",
        "counter",
        "Upstream answers asking to slow down.",
        throttled,
    );
    fam(
        &mut text,
        "erpsync_upstream_requests_last_24h",
        "gauge",
        "Requests sent in the last 24 hours (counted when a daily quota is set).",
        last_24h,
    );
    fam(
        &mut text,
        "erpsync_connector_quota_parked",
        "gauge",
        "1 while the connector's requests are parked until its daily quota resets.",
        parked_gauge,
    );
    fam(
        &mut text,
        "erpsync_connector_needs_reconnect",
        "gauge",
        "1 while the connector's refresh token was refused and `erpsync connect` is needed.",
        reconnect,
    );
    fam(
        &mut text,
        "erpsync_sync_consecutive_errors",
        "gauge",
        "Failed sync passes in a row.",
        errors,
    );
    fam(
        &mut text,
        "erpsync_sync_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful pass.",
        last_success,
    );
    fam(
        &mut text,
        "erpsync_resync_customers_pending",
        "gauge",
        "Customers waiting for a resync.",
        vec![(String::new(), s.resync.customers_pending as f64)],
    );
    fam(
        &mut text,
        "erpsync_resync_jobs_failed",
        "gauge",
        "Resync jobs that failed.",
        vec![(String::new(), s.resync.jobs_failed as f64)],
    );
    fam(
        &mut text,
        "erpsync_feed_latest_sequence",
        "gauge",
        "Sequence number of the newest change-feed event.",
        vec![(String::new(), s.feed.latest as f64)],
    );
    fam(
        &mut text,
        "erpsync_feed_expired_sequence",
        "gauge",
        "Change-feed events up to this sequence number were dropped by retention.",
        vec![(String::new(), s.feed.expired_through as f64)],
    );
    if let Some(c) = &s.cluster {
        fam(
            &mut text,
            "erpsync_leases_held",
            "gauge",
            "Leases (connectors and webhook endpoints) this daemon works under.",
            vec![(String::new(), c.this.leases.len() as f64)],
        );
        fam(
            &mut text,
            "erpsync_lease_takeovers_total",
            "counter",
            "Leases this daemon took over from a peer whose lease had expired.",
            vec![(String::new(), c.this.takeovers as f64)],
        );
        fam(
            &mut text,
            "erpsync_leases_lost_total",
            "counter",
            "Leases this daemon lost: expired before it renewed them, or taken over by a peer meanwhile.",
            vec![(String::new(), c.this.lost as f64)],
        );
        fam(
            &mut text,
            "erpsync_cluster_daemons",
            "gauge",
            "Daemons sharing the store with a heartbeat within the lease timeout.",
            vec![(
                String::new(),
                c.daemons.iter().filter(|d| d.live).count() as f64,
            )],
        );
    }
    let wl = |id: &str| format!("{{endpoint=\"{}\"}}", label_value(id));
    let per = |f: &dyn Fn(&crate::feed::webhooks::WebhookStatus) -> f64| {
        s.webhooks
            .iter()
            .map(|w| (wl(&w.id), f(w)))
            .collect::<Vec<_>>()
    };
    fam(
        &mut text,
        "erpsync_webhook_failing",
        "gauge",
        "1 while the webhook endpoint has failed for longer than its max_retry_time.",
        per(&|w| f64::from(u8::from(w.failing_since.is_some()))),
    );
    fam(
        &mut text,
        "erpsync_webhook_lag_events",
        "gauge",
        "Change-feed events not yet acknowledged by the endpoint.",
        per(&|w| w.lag_events as f64),
    );
    fam(
        &mut text,
        "erpsync_webhook_delivered_events_total",
        "counter",
        "Events delivered to the endpoint since the daemon started.",
        per(&|w| w.delivered_events as f64),
    );
    fam(
        &mut text,
        "erpsync_webhook_failed_attempts_total",
        "counter",
        "Failed delivery attempts since the daemon started.",
        per(&|w| w.failed_attempts as f64),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::label_value;

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        assert_eq!(label_value("rule:plain"), "rule:plain");
        assert_eq!(label_value("a\\b \"q\"\nnext"), "a\\\\b \\\"q\\\"\\nnext");
        // One sample stays on one line.
        assert!(!label_value("x\ny\n").contains('\n'));
    }
}
