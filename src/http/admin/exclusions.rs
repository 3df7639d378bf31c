//! Admin API routes for exclusions: search, customer detail, explain,
//! manual exclude / re-include / clear, mass exclusion, the excluded list and
//! its CSV export, the audit trail, rule preview and reload.
//!
//! Handlers are thin: they parse and validate the request, call
//! [`crate::exclusion`] or [`crate::reload`], and map errors to JSON
//! ([`ApiError`]). Request bodies and query strings refuse unknown keys, so
//! a typo is a 4xx and not a silently ignored field. Every refusal happens
//! before (or inside) the one store write, so an error changes nothing.
//! Scans over every customer and writes over many run on a blocking thread
//! ([`crate::http::blocking`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::exclusion::manual::{self, Actor, Selection};
use crate::exclusion::search::{self, Filter, State as CustomerState, MAX_LIMIT};
use crate::exclusion::{explain, impact, ExclusionError, Policy};
use crate::http::auth::Principal;
use crate::http::error::{ApiError, JsonBody, NoQuery, Query};
use crate::http::{blocking, blocking_async};
use crate::model::{CustomerKey, ExclusionSource, Record};
use crate::reload::{self, ReloadError};
use crate::rules::{parse_rule, Condition, ParseOptions, RuleSet};
use crate::store::valid_id;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/customers", get(search_customers))
        .route("/customers/{connector}/{id}", get(customer))
        .route("/customers/{connector}/{id}/explain", get(explain_customer))
        .route(
            "/customers/{connector}/{id}/decision",
            delete(clear_decision),
        )
        .route("/exclusions", post(exclude))
        .route("/exclusions/mass", post(mass_exclude))
        .route("/reinclusions", post(reinclude))
        .route("/reinclusions/estimate", post(estimate_reinclusion))
        .route("/excluded", get(excluded))
        .route("/excluded.csv", get(excluded_csv))
        .route("/audit", get(audit))
        .route("/rules", get(rules_in_force))
        .route("/rules/preview", post(preview_rules))
        .route("/reload", post(reload_rules))
}

impl From<ExclusionError> for ApiError {
    fn from(e: ExclusionError) -> Self {
        match e {
            ExclusionError::Invalid(m) => ApiError::bad_request(m),
            ExclusionError::NotFound(m) => ApiError::not_found(m),
            ExclusionError::Conflict(m) => ApiError::conflict(m),
            ExclusionError::Store(s) => s.into(),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn limit(given: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match given.unwrap_or(default) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

fn after(given: Option<&str>) -> Result<Option<CustomerKey>, ApiError> {
    given
        .map(|a| CustomerKey::parse(a).map_err(|e| ApiError::bad_request(format!("`after`: {e}"))))
        .transpose()
}

fn connector_filter(app: &App, c: Option<&str>) -> Result<(), ApiError> {
    match c {
        Some(c) => Ok(app.check_connector(c)?),
        None => Ok(()),
    }
}

/// The customer named by `/customers/{connector}/{id}`; an unknown
/// connector is a 404 like an unknown customer.
fn path_key(
    app: &App,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<CustomerKey, ApiError> {
    let Path((connector, id)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !valid_id(&id) {
        return Err(ApiError::bad_request(
            "the external id in the path is empty or contains a NUL byte",
        ));
    }
    app.check_connector(&connector)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(CustomerKey::new(connector, id))
}

// ----- search and detail ----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    q: Option<String>,
    connector: Option<String>,
    state: Option<CustomerState>,
    source: Option<ExclusionSource>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn search_customers(State(app): State<Arc<App>>, Query(p): Query<SearchParams>) -> ApiResult {
    connector_filter(&app, p.connector.as_deref())?;
    let filter = Filter::new(p.q.as_deref(), p.connector.as_deref(), p.state, p.source);
    let after = after(p.after.as_deref())?;
    let limit = limit(p.limit, 50)?;
    // A sparse filter may scan every customer.
    let (customers, next) = blocking(move || {
        let page = search::page(&app.store, &filter, after.as_ref(), limit)?;
        Ok::<_, ApiError>((page.summaries(), page.next))
    })
    .await??;
    Ok(Json(json!({
        "customers": customers,
        "next": next.map(|k| k.to_string()),
    }))
    .into_response())
}

async fn customer(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    Query(NoQuery {}): Query<NoQuery>,
) -> ApiResult {
    let key = path_key(&app, path)?;
    let Some(sc) = app.store.customer(&key)? else {
        let hint = if app.store.manual_decision(&key)?.is_some() {
            " (a manual decision waits for it; see its explain)"
        } else {
            ""
        };
        return Err(ApiError::not_found(format!(
            "unknown customer {key}: never synced{hint}"
        )));
    };
    let mut invoices = Vec::new();
    let mut transactions = Vec::new();
    for r in app.store.records_of(&key)? {
        match r {
            Record::Invoice(i) => invoices.push(i),
            Record::Transaction(t) => transactions.push(t),
        }
    }
    let mut v =
        serde_json::to_value(search::summary(&app.store, &sc)?).map_err(ApiError::internal)?;
    v["record"] = serde_json::to_value(&sc.customer).map_err(ApiError::internal)?;
    v["first_seen"] = json!(sc.first_seen);
    v["invoices"] = json!(invoices);
    v["transactions"] = json!(transactions);
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainParams {
    history: Option<usize>,
}

async fn explain_customer(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    Query(p): Query<ExplainParams>,
) -> ApiResult {
    let key = path_key(&app, path)?;
    let history = match p.history {
        Some(h) if h > MAX_LIMIT => {
            return Err(ApiError::bad_request(format!(
                "`history` must be at most {MAX_LIMIT}"
            )))
        }
        Some(h) => h,
        None => 100,
    };
    let e = explain::explain(&app.store, app.as_ref(), &key, history)?;
    let synced = e.synced;
    let mut v = serde_json::to_value(&e).map_err(ApiError::internal)?;
    // Reminder eligibility has its own "why"; it answers for synced customers.
    let reminder = if synced {
        let r = crate::reminders::explain(&app, &key, crate::reminders::today())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        serde_json::to_value(r).map_err(ApiError::internal)?
    } else {
        serde_json::Value::Null
    };
    v["reminder"] = reminder;
    Ok(Json(v).into_response())
}

// ----- manual decisions ----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExcludeBody {
    customers: Vec<String>,
    reason: String,
    actor: Option<String>,
}

async fn exclude(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<ExcludeBody>,
) -> ApiResult {
    let name = principal.actor(b.actor.as_deref(), "admin");
    let actor = Actor::new(Some(&name), Some(&b.reason), "", chrono::Utc::now())?;
    let keys = manual::parse_refs(&b.customers, app.as_ref())?;
    // Up to thousands of customers in one write: on a blocking thread.
    let (app2, actor2) = (Arc::clone(&app), actor.clone());
    let out = blocking_async(move || async move {
        manual::exclude(&app2.store, app2.as_ref(), &keys, &actor2).await
    })
    .await??;
    tracing::info!(actor = %actor.name, changed = out.changed, pending = out.pending, purged_invoices = out.purged_invoices, purged_transactions = out.purged_transactions, "manual exclusion");
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReincludeBody {
    customers: Vec<String>,
    reason: Option<String>,
    actor: Option<String>,
}

async fn reinclude(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<ReincludeBody>,
) -> ApiResult {
    let name = principal.actor(b.actor.as_deref(), "admin");
    let actor = Actor::new(
        Some(&name),
        b.reason.as_deref(),
        "re-included by an admin",
        chrono::Utc::now(),
    )?;
    let keys = manual::parse_refs(&b.customers, app.as_ref())?;
    let (app2, actor2) = (Arc::clone(&app), actor.clone());
    let out = blocking_async(move || async move {
        manual::include(&app2.store, app2.as_ref(), &keys, &actor2).await
    })
    .await??;
    if out.queued_for_resync > 0 {
        app.resync_wakeup.notify_waiters();
    }
    tracing::info!(actor = %actor.name, changed = out.changed, newly_included = out.newly_included, queued = out.queued_for_resync, "manual re-include");
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EstimateBody {
    customers: Vec<String>,
}

/// What re-including these customers would fetch, before confirming it.
/// Changes nothing.
async fn estimate_reinclusion(
    State(app): State<Arc<App>>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<EstimateBody>,
) -> ApiResult {
    let keys = manual::parse_refs(&b.customers, app.as_ref())?;
    let estimate = blocking(move || crate::resync::estimate::reinclusion(&app, &keys)).await??;
    Ok(Json(estimate).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearParams {
    actor: Option<String>,
    reason: Option<String>,
}

async fn clear_decision(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<(String, String)>, PathRejection>,
    Query(p): Query<ClearParams>,
) -> ApiResult {
    let key = path_key(&app, path)?;
    let name = principal.actor(p.actor.as_deref(), "admin");
    let actor = Actor::new(
        Some(&name),
        p.reason.as_deref(),
        "manual decision cleared",
        chrono::Utc::now(),
    )?;
    let out = manual::clear(&app.store, app.as_ref(), &key, &actor).await?;
    if out.resync_job.is_some() {
        app.resync_wakeup.notify_waiters();
    }
    tracing::info!(actor = %actor.name, customer = %key, "manual decision cleared");
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MassBody {
    q: Option<String>,
    condition: Option<Value>,
    connector: Option<String>,
    /// Narrow the search like `/customers` does (the console's filters).
    state: Option<CustomerState>,
    source: Option<ExclusionSource>,
    reason: String,
    actor: Option<String>,
    confirm: Option<u64>,
}

async fn mass_exclude(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<MassBody>,
) -> ApiResult {
    let name = principal.actor(b.actor.as_deref(), "admin");
    let actor = Actor::new(Some(&name), Some(&b.reason), "", chrono::Utc::now())?;
    connector_filter(&app, b.connector.as_deref())?;
    let condition = b
        .condition
        .as_ref()
        .map(|c| {
            Condition::parse(c, ParseOptions::default())
                .map_err(|e| ApiError::bad_request(format!("`condition` {e}")))
        })
        .transpose()?;
    let sel = Selection::new(
        Filter::new(b.q.as_deref(), b.connector.as_deref(), b.state, b.source),
        condition,
    )?;
    // Both scan every customer of the selection's connector.
    match b.confirm {
        None => {
            let app2 = Arc::clone(&app);
            let impact = blocking(move || manual::mass_impact(&app2.store, &sel)).await??;
            let message = format!(
                "would exclude {} customers ({} included today), deleting {} invoices and {} transactions; send again with \"confirm\": {} to apply",
                impact.customers, impact.newly_excluded, impact.invoices, impact.transactions, impact.customers
            );
            Ok(Json(json!({
                "applied": false,
                "message": message,
                "confirm_with": impact.customers,
                "impact": impact,
            }))
            .into_response())
        }
        Some(n) => {
            let (app2, actor2) = (Arc::clone(&app), actor.clone());
            let (impact, out) = blocking_async(move || async move {
                manual::mass_exclude(&app2.store, app2.as_ref(), &sel, &actor2, n).await
            })
            .await??;
            tracing::info!(actor = %actor.name, customers = out.changed, purged_invoices = out.purged_invoices, purged_transactions = out.purged_transactions, "mass exclusion applied");
            Ok(Json(json!({
                "applied": true,
                "impact": impact,
                "outcome": out,
            }))
            .into_response())
        }
    }
}

// ----- excluded list, export, audit -------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExcludedParams {
    q: Option<String>,
    connector: Option<String>,
    source: Option<ExclusionSource>,
    after: Option<String>,
    limit: Option<usize>,
}

/// The filter of `/excluded` and `/excluded.csv`, checked.
fn excluded_filter(app: &App, p: &ExcludedParams) -> Result<Filter, ApiError> {
    connector_filter(app, p.connector.as_deref())?;
    Ok(Filter::new(
        p.q.as_deref(),
        p.connector.as_deref(),
        Some(CustomerState::Excluded),
        p.source,
    ))
}

async fn excluded(State(app): State<Arc<App>>, Query(p): Query<ExcludedParams>) -> ApiResult {
    let filter = excluded_filter(&app, &p)?;
    let after = after(p.after.as_deref())?;
    let limit = limit(p.limit, 50)?;
    // A sparse filter may scan every customer.
    let (entries, next, pending) = blocking(move || {
        let (entries, next) =
            search::excluded_page(&app.store, app.as_ref(), &filter, after.as_ref(), limit)?;
        // Exclusions waiting for a first sync are listed with the first page.
        let pending = match after {
            None => search::pending_exclusions(&app.store, &filter)?,
            Some(_) => Vec::new(),
        };
        Ok::<_, ApiError>((entries, next, pending))
    })
    .await??;
    Ok(Json(json!({
        "excluded": entries,
        "next": next.map(|k| k.to_string()),
        "pending": pending,
    }))
    .into_response())
}

/// The excluded list as CSV: the filters of `/excluded`, no paging.
async fn excluded_csv(State(app): State<Arc<App>>, Query(p): Query<ExcludedParams>) -> ApiResult {
    if p.after.is_some() || p.limit.is_some() {
        return Err(ApiError::bad_request(
            "the CSV export is the whole list: it takes no `after` or `limit`",
        ));
    }
    let export = search::CsvExport::new(excluded_filter(&app, &p)?);
    // Each chunk may scan many customers: on a blocking thread.
    let stream = futures::stream::unfold((app, export), |(app, mut export)| async move {
        let chunk = blocking(move || {
            let chunk = export.next_chunk(&app.store, app.as_ref());
            (chunk, app, export)
        })
        .await;
        match chunk {
            Ok((Ok(Some(bytes)), app, export)) => {
                Some((Ok::<_, std::io::Error>(bytes), (app, export)))
            }
            Ok((Ok(None), _, _)) => None,
            Ok((Err(e), app, export)) => {
                tracing::error!(error = %e, "excluded CSV export failed part-way");
                Some((Err(std::io::Error::other(e.to_string())), (app, export)))
            }
            Err(e) => {
                // The blocking task was cancelled (shutdown): end the body short.
                tracing::error!(error = %e.message, "excluded CSV export failed part-way");
                None
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"excluded.csv\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    customer: Option<String>,
    limit: Option<usize>,
}

async fn audit(State(app): State<Arc<App>>, Query(p): Query<AuditParams>) -> ApiResult {
    let customer = p
        .customer
        .as_deref()
        .map(|c| {
            CustomerKey::parse(c).map_err(|e| ApiError::bad_request(format!("`customer`: {e}")))
        })
        .transpose()?;
    let entries = app.store.audit(customer.as_ref(), limit(p.limit, 100)?)?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

// ----- rules ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    rules: Option<Vec<Value>>,
    rule: Option<Value>,
}

fn parse_one_rule(v: &Value, place: &str) -> Result<crate::rules::Rule, ApiError> {
    parse_rule(v).map_err(|e| {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .map(|id| format!(" (`{id}`)"))
            .unwrap_or_default();
        ApiError::bad_request(format!("{place}{id} {e}"))
    })
}

async fn preview_rules(
    State(app): State<Arc<App>>,
    Query(NoQuery {}): Query<NoQuery>,
    JsonBody(b): JsonBody<PreviewBody>,
) -> ApiResult {
    let (mode, rules) = match (&b.rules, &b.rule) {
        (Some(list), None) => {
            let mut rules = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                rules.push(parse_one_rule(v, &format!("rules[{i}]"))?);
            }
            ("replace", rules)
        }
        (None, Some(v)) => {
            let new = parse_one_rule(v, "rule")?;
            let mut rules: Vec<_> = app
                .rules()
                .rules()
                .iter()
                .filter(|r| r.id != new.id)
                .cloned()
                .collect();
            rules.push(new);
            ("add", rules)
        }
        _ => {
            return Err(ApiError::bad_request(
                "send either `rules` (a whole rule set, replacing the rules in force) or `rule` (one rule added to them)",
            ))
        }
    };
    let set = RuleSet::new(rules).map_err(ApiError::bad_request)?;
    let ids: Vec<String> = set.rules().iter().map(|r| r.id.clone()).collect();
    let max_ratio = app.config().exclusions.max_new_exclusion_ratio;
    let app2 = Arc::clone(&app);
    let impact = blocking(move || impact::of_rules(&app2.store, app2.as_ref(), &set)).await??;
    Ok(Json(json!({
        "mode": mode,
        "rules": ids,
        "message": impact.describe(),
        "max_new_exclusion_ratio": max_ratio,
        "would_be_refused": !impact.within_ratio(max_ratio),
        "impact": impact,
    }))
    .into_response())
}

/// The rules in force, each with how many customers it matches now and how
/// many it excludes (its first match, no manual decision over it).
async fn rules_in_force(
    State(app): State<Arc<App>>,
    Query(NoQuery {}): Query<NoQuery>,
) -> ApiResult {
    let rules = app.rules();
    let max_ratio = app.config().exclusions.max_new_exclusion_ratio;
    let app2 = Arc::clone(&app);
    let set = Arc::clone(&rules);
    // Classifies every stored customer: on a blocking thread.
    let impact = blocking(move || impact::of_rules(&app2.store, app2.as_ref(), &set)).await??;
    let list: Vec<Value> = rules
        .rules()
        .iter()
        .map(|r| {
            let counts = impact.rules.iter().find(|i| i.id == r.id);
            let mut v = json!(r);
            v["matching"] = json!(counts.map_or(0, |c| c.matching));
            v["excluding"] = json!(counts.map_or(0, |c| c.excluding));
            v
        })
        .collect();
    Ok(Json(json!({
        "rules": list,
        "total_customers": impact.total_customers,
        "max_new_exclusion_ratio": max_ratio,
        "config_file": app.config().file.display().to_string(),
    }))
    .into_response())
}

async fn reload_rules(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Query(NoQuery {}): Query<NoQuery>,
) -> ApiResult {
    let actor = principal.actor(None, "api");
    // Computes the impact over every customer and re-classifies them all.
    let app2 = Arc::clone(&app);
    match blocking_async(move || async move { reload::reload(&app2).await }).await? {
        Ok(report) => {
            tracing::info!(actor = %actor, result = %report.message, "reload done (API)");
            Ok(Json(report).into_response())
        }
        Err(e) => {
            tracing::error!(actor = %actor, error = %e, "reload refused (API)");
            let status = match &e {
                ReloadError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ReloadError::TooManyExclusions { .. } | ReloadError::Reverted { .. } => {
                    StatusCode::CONFLICT
                }
                ReloadError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut body = json!({ "error": e.to_string() });
            if let ReloadError::TooManyExclusions { impact, max_ratio } = &e {
                body["impact"] = json!(impact);
                body["max_new_exclusion_ratio"] = json!(max_ratio);
            }
            Ok((status, Json(body)).into_response())
        }
    }
}
