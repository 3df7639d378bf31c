//! Admin API for resync jobs:
//!
//! - `GET  /api/v1/resyncs[?state=queued|running|done|failed|unfinished]`:
//!   every job with progress, rates and ETA, oldest first;
//! - `GET  /api/v1/resyncs/{id}`: one job, with (the first) pending customers;
//! - `POST /api/v1/resyncs` `{"customers": ["demo:C00042", ...], "reason": "..."}`:
//!   resyncs included customers on demand, leaving their exclusion state as
//!   it is (unknown customers: 404, excluded ones: 400; nothing is queued
//!   unless every customer is fine);
//! - `POST /api/v1/resyncs/{id}/retry`: puts a failed job back in the queue.
//!
//! A request names at most
//! [`MAX_CUSTOMERS_PER_REQUEST`](crate::exclusion::manual::MAX_CUSTOMERS_PER_REQUEST)
//! customers.
//!
//! Handlers only read the store and call [`crate::resync`]; they never talk
//! to an ERP.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::exclusion::manual::check_list_len;
use crate::http::auth::{Principal, Via};
use crate::http::error::{bad_path, ApiError, JsonBody, NoQuery, Query};
use crate::model::CustomerKey;
use crate::resync::progress::{self, Filter, JobView};
use crate::resync::queue::{self, JobState, RetryError};

/// Pending customers listed by `GET /resyncs/{id}`.
const PENDING_SHOWN: usize = 100;
/// Customers named in one error message before "and N more".
const NAMES_SHOWN: usize = 20;
const MAX_REASON_CHARS: usize = 500;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/resyncs", get(list).post(create))
        .route("/resyncs/{id}", get(show))
        .route("/resyncs/{id}/retry", post(retry))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
}

#[derive(Debug, Serialize)]
struct JobList {
    jobs: Vec<JobView>,
}

async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let filter = match q.state.as_deref() {
        None => Filter::All,
        Some("unfinished") => Filter::Unfinished,
        Some(s) => Filter::State(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown state `{s}`; expected one of queued, running, done, failed, unfinished"
            ))
        })?),
    };
    Ok(Json(JobList {
        jobs: progress::views(&app, filter)?,
    }))
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("`{s}` is not a resync job id (a number)")))
}

#[derive(Debug, Serialize)]
struct JobDetail {
    #[serde(flatten)]
    job: JobView,
    /// The first pending customers, as `connector:id`.
    pending_customers: Vec<String>,
    /// More are pending than listed.
    pending_truncated: bool,
}

async fn show(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Json<JobDetail>, ApiError> {
    let Path(id) = id.map_err(bad_path)?;
    let id = parse_id(&id)?;
    let job = progress::view_of(&app, id)?
        .ok_or_else(|| ApiError::not_found(format!("no resync job {id}")))?;
    let mut pending = queue::pending_members(&app.store, id)?;
    let truncated = pending.len() > PENDING_SHOWN;
    pending.truncate(PENDING_SHOWN);
    Ok(Json(JobDetail {
        pending_customers: pending
            .into_iter()
            .map(|c| CustomerKey::new(&job.connector, c).to_string())
            .collect(),
        pending_truncated: truncated,
        job,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    customers: Vec<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct CreatedJob {
    id: u64,
    connector: String,
    customers: usize,
}

#[derive(Debug, Serialize)]
struct AlreadyQueued {
    customer: String,
    job: u64,
}

#[derive(Debug, Serialize)]
struct Created {
    jobs: Vec<CreatedJob>,
    /// Customers newly queued.
    queued: usize,
    /// Customers that already wait in an unfinished job (not queued twice).
    already_queued: Vec<AlreadyQueued>,
}

/// `a, b, c and 4 more`.
fn names(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > NAMES_SHOWN {
        s += &format!(" and {} more", items.len() - NAMES_SHOWN);
    }
    s
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    if req.customers.is_empty() {
        return Err(ApiError::bad_request(
            "`customers` must name at least one customer as CONNECTOR:ID, e.g. demo:C00042",
        ));
    }
    check_list_len(req.customers.len()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // A console session names itself in the job's reason (scripts say
    // what they want in `reason`).
    let by = match principal.via {
        Via::Session => format!(" by {}", principal.actor(None, "")),
        Via::Bearer => String::new(),
    };
    let reason = match req.reason.as_deref().map(str::trim) {
        None | Some("") => format!("on demand{by}"),
        Some(r) if r.chars().count() > MAX_REASON_CHARS => {
            return Err(ApiError::bad_request(format!(
                "`reason` is longer than {MAX_REASON_CHARS} characters"
            )))
        }
        Some(r) => format!("on demand{by}: {r}"),
    };
    let mut bad = Vec::new();
    let mut by_connector: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen: HashSet<CustomerKey> = HashSet::with_capacity(req.customers.len());
    for s in &req.customers {
        match CustomerKey::parse(s) {
            Ok(k) => {
                if seen.insert(k.clone()) {
                    by_connector
                        .entry(k.connector)
                        .or_default()
                        .push(k.external_id);
                }
            }
            Err(_) => bad.push(format!("`{s}`")),
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!(
            "not customer references (expected CONNECTOR:EXTERNAL_ID, e.g. demo:C00042): {}",
            names(&bad)
        )));
    }
    let unknown_connectors: Vec<String> = by_connector
        .keys()
        .filter(|c| app.connector(c).is_none())
        .map(|c| format!("`{c}`"))
        .collect();
    if !unknown_connectors.is_empty() {
        let known: Vec<&str> = app.connectors.iter().map(|h| h.id.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "unknown connectors: {}; configured: {}",
            names(&unknown_connectors),
            known.join(", ")
        )));
    }
    let now = chrono::Utc::now();
    // Checked and queued in one write, so a customer excluded concurrently
    // is either refused here or removed from the job by its exclusion. Up to
    // thousands of customers: on a blocking thread.
    let app2 = Arc::clone(&app);
    let reason2 = reason.clone();
    let outcome = crate::http::blocking_async(move || async move {
        let reason = reason2;
        app2.store
        .write(|tx| {
            let mut unknown = Vec::new();
            let mut excluded = Vec::new();
            for (conn, ids) in &by_connector {
                for id in ids {
                    let key = CustomerKey::new(conn, id);
                    match tx.customer(&key)? {
                        None => unknown.push(key.to_string()),
                        Some(sc) if sc.classification.excluded => excluded.push(format!(
                            "{key} ({})",
                            sc.classification.reason
                        )),
                        Some(_) => {}
                    }
                }
            }
            if !unknown.is_empty() {
                return Ok(Err(ApiError::not_found(format!(
                    "unknown customers: {}",
                    names(&unknown)
                ))));
            }
            if !excluded.is_empty() {
                return Ok(Err(ApiError::bad_request(format!(
                    "excluded customers are not resynced (re-include them instead, which resyncs them): {}",
                    names(&excluded)
                ))));
            }
            let mut created = Created {
                jobs: Vec::new(),
                queued: 0,
                already_queued: Vec::new(),
            };
            for (conn, ids) in &by_connector {
                let mut fresh = Vec::new();
                for id in ids {
                    match queue::queued_job(tx, conn, id)? {
                        Some(job) => created.already_queued.push(AlreadyQueued {
                            customer: CustomerKey::new(conn, id).to_string(),
                            job,
                        }),
                        None => fresh.push(id.clone()),
                    }
                }
                if let Some(id) = queue::enqueue(tx, conn, &fresh, &reason, now)? {
                    created.queued += fresh.len();
                    created.jobs.push(CreatedJob {
                        id,
                        connector: conn.clone(),
                        customers: fresh.len(),
                    });
                }
            }
            Ok(Ok(created))
        })
        .await
    })
    .await???;
    if outcome.jobs.is_empty() {
        return Ok((StatusCode::OK, Json(outcome)).into_response());
    }
    for j in &outcome.jobs {
        tracing::info!(job = j.id, connector = %j.connector, customers = j.customers, reason = %reason, "resync queued on demand");
    }
    app.resync_wakeup.notify_waiters();
    Ok((StatusCode::ACCEPTED, Json(outcome)).into_response())
}

async fn retry(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    Query(NoQuery {}): Query<NoQuery>,
) -> Result<Json<JobView>, ApiError> {
    let Path(id) = id.map_err(bad_path)?;
    let id = parse_id(&id)?;
    app.store
        .write(|tx| queue::retry(tx, id))
        .await?
        .map_err(|e| match e {
            RetryError::NotFound(_) => ApiError::not_found(e.to_string()),
            RetryError::NotFailed { .. } => ApiError::conflict(e.to_string()),
        })?;
    tracing::info!(job = id, actor = %principal.actor(None, "api"), "resync job retried");
    app.resync_wakeup.notify_waiters();
    let view = progress::view_of(&app, id)?
        .ok_or_else(|| ApiError::not_found(format!("no resync job {id}")))?;
    Ok(Json(view))
}
