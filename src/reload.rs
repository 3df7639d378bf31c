//! Reload (SIGHUP and `POST /api/v1/reload`): re-read the config file and
//! put its rules in force.
//!
//! Steps: read and validate the **whole** file (an invalid file changes
//! nothing); compute the new rules' impact on every stored customer without
//! writing; refuse when it would newly exclude more than
//! `[exclusions] max_new_exclusion_ratio` of all customers (the old rules stay
//! in force); otherwise set the new rules **before** re-classifying, so
//! ingest running meanwhile already uses them, re-classify every stored
//! customer in batches ([`impact::reclassify_all`]), and finally swap in the
//! new config so other sections (e.g. `[reminders]`) take effect too. The
//! ratio checked is the one in the new file: raising it is a deliberate edit.
//!
//! Changes to connectors, the listener, the admin and viewer tokens, the body limit, the
//! log level or the state directory need a restart: a reload logs a warning
//! and says so in its result. Every outcome is recorded in `app.last_reload`
//! for `/status`. This module does not log reload refusals: its callers do
//! (the SIGHUP handler and the HTTP handler), once.
//!
//! **At start-up** ([`reconcile_on_start`]) the same steps run when the
//! classification policy (rules plus each connector's enabled native
//! exclusions) differs from the one last applied to every stored customer,
//! which the store remembers: rules edited while the daemon was stopped, or a
//! native exclusion switched on or off (that needs a restart). A change over
//! the ratio is refused there too and the rules last applied stay in force.
//!
//! **Durability.** The store keeps two policies in `meta`: the one last
//! applied to every customer (*completed*) and, while a re-classification
//! runs, the one it is applying (*pending*). The pending record is written
//! before the first customer moves and removed in the same write that
//! records the completed one. A start that finds a pending record knows a
//! reload (or a start-up re-classification) was cut short, with some
//! customers classified by the new policy and some by the old: it completes
//! to the policy it was applying when the config still says so, applies the
//! config's policy when it changed since, and reverts to the completed
//! policy when the ratio guard refuses. The guard always measures against
//! the completed policy, never against a half-applied store. The outcome is
//! logged and shown in `/status.last_reload`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::app::{App, ReloadStatus};
use crate::classify;
use crate::config::{self, Config, ConfigError};
use crate::connectors::NativeExclusion;
use crate::exclusion::impact::{self, Impact, Reclassified, RECLASSIFY_BATCH};
use crate::model::{Classification, ManualDecision, Timestamp};
use crate::rules::{parse_rule, RuleSet};
use crate::store::{StoreError, StoredCustomer};

/// Why a reload changed nothing (or, for `Store`, stopped part-way).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reload refused, the old rules stay in force: {}", .0.to_string().trim_end())]
    Config(ConfigError),
    #[error("reload refused, the old rules stay in force: the new rules {} — more than max_new_exclusion_ratio {:.1}% of all customers", .impact.describe(), .max_ratio * 100.0)]
    TooManyExclusions { impact: Box<Impact>, max_ratio: f64 },
    #[error("reload stopped part-way, the new rules are in force but not every customer was re-classified (the next reload finishes it): {0}")]
    Store(#[from] StoreError),
    /// At start-up: a reload cut short (started `started_at`) and the rules
    /// in the config are refused by the guard, so the completed policy was
    /// put back on every customer.
    #[error("a reload interrupted at {started_at} (by a crash or stop) was reverted: the rules last completed are back in force on every customer, because the rules in the config {} — more than max_new_exclusion_ratio {:.1}% of all customers", .impact.describe(), .max_ratio * 100.0)]
    Reverted {
        impact: Box<Impact>,
        max_ratio: f64,
        started_at: Timestamp,
    },
}

/// What a successful reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub message: String,
    pub rules: usize,
    /// The impact computed before applying.
    pub impact: Impact,
    /// What re-classification changed (may differ slightly from `impact`
    /// when syncs ran in between).
    pub applied: Reclassified,
    /// Config sections that changed but need a restart.
    pub restart_needed: Vec<String>,
}

/// Serialises reloads (SIGHUP and API at the same time). Process-wide: a
/// process runs one daemon; in-process tests only serialise their reloads.
static RELOAD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Re-reads the config file and applies its rules; the result in words (for
/// the SIGHUP handler's log).
pub async fn reload_from_file(app: &App) -> Result<String, String> {
    reload(app)
        .await
        .map(|r| r.message)
        .map_err(|e| e.to_string())
}

/// Re-reads the config file and applies it; see the module docs.
pub async fn reload(app: &App) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = RELOAD_LOCK.lock().await;
    let result = reload_locked(app).await;
    let status = match &result {
        Ok(r) => ReloadStatus {
            at: chrono::Utc::now(),
            applied: true,
            message: r.message.clone(),
        },
        Err(e) => ReloadStatus {
            at: chrono::Utc::now(),
            applied: false,
            message: e.to_string(),
        },
    };
    *app.last_reload.lock().expect("last_reload lock poisoned") = Some(status);
    result
}

async fn reload_locked(app: &App) -> Result<ReloadReport, ReloadError> {
    let old = app.config();
    let new = config::load(&old.file, &crate::connectors::REGISTRY).map_err(ReloadError::Config)?;
    let restart_needed = needs_restart(&old, &new);
    for section in &restart_needed {
        tracing::warn!(
            section = %section,
            "config change needs a restart to take effect; a reload only applies rules and feature settings"
        );
    }

    let impact = guard_impact(app, &new.rules)?;
    let max_ratio = new.exclusions.max_new_exclusion_ratio;
    if !impact.within_ratio(max_ratio) {
        return Err(ReloadError::TooManyExclusions {
            impact: Box::new(impact),
            max_ratio,
        });
    }

    let rules = new.rules.rules().len();
    let target = applied_policy(app, &new.rules);
    // Durable before the first customer moves: a crash from here on is
    // found at the next start (see the module docs).
    begin_pending(app, &target, "reload").await?;
    app.set_rules(new.rules.clone());
    let applied = impact::reclassify_all(
        &app.store,
        app,
        "reload",
        "rules reloaded",
        RECLASSIFY_BATCH,
    )
    .await?;
    finish_pending(app, &target).await?;
    app.set_config(new);
    if applied.queued_for_resync > 0 {
        app.resync_wakeup.notify_waiters();
    }

    let mut message = format!(
        "rules reloaded ({rules} rule{}): {} newly excluded ({} invoices and {} transactions deleted), {} re-included and queued for resync, {} reasons changed",
        if rules == 1 { "" } else { "s" },
        applied.newly_excluded,
        applied.purged_invoices,
        applied.purged_transactions,
        applied.newly_included,
        applied.reason_changes,
    );
    if !restart_needed.is_empty() {
        message += &format!(
            "; changes to {} need a restart to take effect",
            restart_needed.join(", ")
        );
    }
    Ok(ReloadReport {
        message,
        rules,
        impact,
        applied,
        restart_needed,
    })
}

/// Where the store keeps the policy last applied to every customer.
const APPLIED_POLICY_KEY: &str = "classification_policy";

/// What a customer's classification depends on besides its own record and
/// manual decision. Stored once every customer has been classified with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// The rules, in their canonical JSON form.
    pub rules: Vec<serde_json::Value>,
    /// Connector id → enabled native exclusions.
    pub native: BTreeMap<String, Vec<String>>,
}

/// The policy in force with `rules` and the connectors' native exclusions.
fn applied_policy(app: &App, rules: &RuleSet) -> AppliedPolicy {
    AppliedPolicy {
        rules: rules
            .rules()
            .iter()
            .map(|r| serde_json::to_value(r).expect("rules serialise"))
            .collect(),
        native: app
            .connectors
            .iter()
            .map(|h| {
                (
                    h.id.clone(),
                    h.native.iter().map(|n| n.name.to_string()).collect(),
                )
            })
            .collect(),
    }
}

/// The hash of this daemon's classification policy (rules and native
/// exclusions), compared between daemons sharing a store.
pub fn policy_hash(app: &App) -> String {
    policy_hash_of(&applied_policy(app, &app.rules()))
}

fn policy_hash_of(p: &AppliedPolicy) -> String {
    use sha2::Digest;
    let text = serde_json::to_string(p).expect("policy serialises");
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `None` when this daemon's policy is the one in force in the store (the
/// one being applied while a re-classification runs, else the completed
/// one, else none recorded yet); otherwise why not. A daemon sharing the
/// store claims leases only while this is `None`.
pub fn policy_mismatch(app: &App) -> Result<Option<String>, StoreError> {
    let mine = applied_policy(app, &app.rules());
    if let Some(p) = app.store.meta::<PendingPolicy>(PENDING_POLICY_KEY)? {
        return Ok((p.policy != mine).then(|| format!(
            "another daemon is putting other rules in force (since {}); reload this daemon with the same rules",
            p.started_at
        )));
    }
    Ok(match app.store.meta::<AppliedPolicy>(APPLIED_POLICY_KEY)? {
        Some(p) if p != mine => Some(
            "the rules in force in the store differ from this daemon's config; reload it with the rules of the other daemons".into(),
        ),
        _ => None,
    })
}

/// Where the store keeps the policy being applied while a
/// re-classification runs.
const PENDING_POLICY_KEY: &str = "classification_policy_pending";

/// A re-classification under way: the policy it applies, since when, and
/// what started it (`reload` or `startup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingPolicy {
    pub policy: AppliedPolicy,
    pub started_at: Timestamp,
    pub trigger: String,
}

/// Records `target` as the policy being applied (the completed one stays).
async fn begin_pending(app: &App, target: &AppliedPolicy, trigger: &str) -> Result<(), StoreError> {
    let pending = PendingPolicy {
        policy: target.clone(),
        started_at: chrono::Utc::now(),
        trigger: trigger.to_string(),
    };
    let me = app.cluster().map(|c| c.me.id.clone());
    let hash = policy_hash_of(target);
    let revoked = app
        .store
        .write(|tx| {
            tx.put_meta(PENDING_POLICY_KEY, &pending)?;
            // Daemons sharing the store with other rules stop here: their
            // leases go in this write, so none of their pages commits after
            // it (fencing); they stand by until reloaded with these rules.
            tx.revoke_other_rules(me.as_deref(), &hash)
        })
        .await?;
    if revoked > 0 {
        tracing::warn!(
            leases = revoked,
            "leases of daemons with other rules revoked: they stand by until reloaded with these rules"
        );
    }
    Ok(())
}

/// Every customer is classified with `p`: it becomes the completed policy
/// and the pending record goes, in one write.
async fn finish_pending(app: &App, p: &AppliedPolicy) -> Result<(), StoreError> {
    app.store
        .write(|tx| {
            tx.put_meta(APPLIED_POLICY_KEY, p)?;
            tx.delete_meta(PENDING_POLICY_KEY)?;
            Ok(())
        })
        .await
}

/// A recorded policy made usable for classifying: its rules parsed and its
/// native exclusion names resolved against the connectors' kinds.
struct Recorded {
    rules: RuleSet,
    native: BTreeMap<String, Vec<NativeExclusion>>,
}

impl Recorded {
    fn of(app: &App, p: &AppliedPolicy) -> Option<Recorded> {
        let rules = old_rules(p)?;
        let native = p
            .native
            .iter()
            .map(|(id, names)| {
                let known = app.connector(id).map(|h| h.known_native).unwrap_or(&[]);
                let enabled = known
                    .iter()
                    .filter(|n| names.iter().any(|m| m == n.name))
                    .copied()
                    .collect();
                (id.clone(), enabled)
            })
            .collect();
        Some(Recorded { rules, native })
    }

    fn classify(&self, sc: &StoredCustomer, manual: Option<&ManualDecision>) -> Classification {
        let native = self
            .native
            .get(&sc.connector)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        classify::classify(&sc.customer, manual, &self.rules, native)
    }
}

/// The impact the ratio guard judges: against the stored classification
/// when the last re-classification completed, against the completed policy
/// when one was cut short (the store is half-way between two policies).
fn guard_impact(app: &App, rules: &RuleSet) -> Result<Impact, StoreError> {
    let pending: Option<PendingPolicy> = app.store.meta(PENDING_POLICY_KEY)?;
    let completed: Option<AppliedPolicy> = app.store.meta(APPLIED_POLICY_KEY)?;
    let recorded = match (pending, completed) {
        (Some(_), Some(c)) => Recorded::of(app, &c),
        _ => None,
    };
    match &recorded {
        Some(r) => {
            let baseline = |sc: &StoredCustomer, m: Option<&ManualDecision>| r.classify(sc, m);
            impact::of_rules_since(&app.store, app, Some(&baseline), rules)
        }
        None => impact::of_rules(&app.store, app, rules),
    }
}

/// The daemon must not start because of its configuration: a secret cannot
/// be read, or native exclusions changed while it was stopped in a way the
/// ratio guard refuses (they cannot be put back without a restart). The
/// message says what to do; the process exits with 78 (`EX_CONFIG`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupRefused(pub String);

/// Re-classifies every stored customer before the first sync when the
/// policy differs from the one last applied (see the module docs). Logs
/// and records the outcome in `app.last_reload`; never fails the start-up.
///
/// A refused change of rules keeps the old rules in force. A refused change
/// of native exclusions cannot be undone at run time (they are wired into
/// each connector at start-up), so the start itself is refused with
/// [`StartupRefused`] and nothing is changed.
pub async fn reconcile_on_start(app: &App) -> Result<(), StartupRefused> {
    let _one_at_a_time = RELOAD_LOCK.lock().await;
    let outcome = reconcile_locked(app).await;
    let status = match &outcome {
        Ok(None) => return Ok(()),
        Ok(Some(message)) => {
            tracing::info!(result = %message, "start-up re-classification applied");
            ReloadStatus {
                at: chrono::Utc::now(),
                applied: true,
                message: message.clone(),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "start-up re-classification refused");
            ReloadStatus {
                at: chrono::Utc::now(),
                applied: false,
                message: e.to_string(),
            }
        }
    };
    *app.last_reload.lock().expect("last_reload lock poisoned") = Some(status);
    match outcome {
        Err(ReloadError::TooManyExclusions { .. } | ReloadError::Reverted { .. })
            if native_changed(app)? =>
        {
            Err(StartupRefused(format!(
            "refusing to start: {}; the native_exclusions in the config differ from those last applied and cannot be kept apart at run time. Restore the previous native_exclusions, or raise exclusions.max_new_exclusion_ratio to accept the change, then start again",
            outcome.as_ref().err().map(ToString::to_string).unwrap_or_default()
        )))
        }
        _ => Ok(()),
    }
}

/// Whether the enabled native exclusions differ from the recorded policy.
fn native_changed(app: &App) -> Result<bool, StartupRefused> {
    let stored: Option<AppliedPolicy> = app
        .store
        .meta(APPLIED_POLICY_KEY)
        .map_err(|e| StartupRefused(format!("cannot read the applied policy: {e}")))?;
    let now = applied_policy(app, &app.rules());
    Ok(stored.is_some_and(|old| old.native != now.native))
}

async fn reconcile_locked(app: &App) -> Result<Option<String>, ReloadError> {
    let rules = app.rules();
    let now = applied_policy(app, &rules);
    let stored: Option<AppliedPolicy> = app.store.meta(APPLIED_POLICY_KEY)?;
    if let Some(pending) = app.store.meta::<PendingPolicy>(PENDING_POLICY_KEY)? {
        return interrupted(app, stored, pending, now).await.map(Some);
    }
    if stored.as_ref() == Some(&now) {
        return Ok(None);
    }
    let empty = app.store.customers(None, None).next().is_none();
    // With a policy on record, a change passes the ratio guard first. A
    // store without one (new, or from before this check existed) adopts the
    // policy in force: its customers were classified by the same config.
    if let Some(old) = &stored {
        let impact = impact::of_rules(&app.store, app, &rules)?;
        let max_ratio = app.config().exclusions.max_new_exclusion_ratio;
        if !impact.within_ratio(max_ratio) {
            match old_rules(old) {
                Some(r) => app.set_rules(r),
                None => tracing::error!(
                    "the rules last applied can no longer be read; the configured rules stay in force for new records"
                ),
            }
            return Err(ReloadError::TooManyExclusions {
                impact: Box::new(impact),
                max_ratio,
            });
        }
    }
    let applied = if empty {
        Reclassified::default()
    } else {
        begin_pending(app, &now, "startup").await?;
        impact::reclassify_all(
            &app.store,
            app,
            "startup",
            "rules or native exclusions changed while erpsync was stopped",
            RECLASSIFY_BATCH,
        )
        .await?
    };
    finish_pending(app, &now).await?;
    if applied.queued_for_resync > 0 {
        app.resync_wakeup.notify_waiters();
    }
    if stored.is_none() {
        return Ok(None);
    }
    Ok(Some(format!(
        "rules or native exclusions changed while erpsync was stopped; re-classified at start-up: {} newly excluded ({} invoices and {} transactions deleted), {} re-included and queued for resync, {} reasons changed",
        applied.newly_excluded,
        applied.purged_invoices,
        applied.purged_transactions,
        applied.newly_included,
        applied.reason_changes
    )))
}

/// A re-classification was cut short (`pending` is on record): complete it,
/// apply the config's policy instead when it changed since, or revert to
/// the completed policy when the guard refuses (see the module docs).
async fn interrupted(
    app: &App,
    completed: Option<AppliedPolicy>,
    pending: PendingPolicy,
    now: AppliedPolicy,
) -> Result<String, ReloadError> {
    let rules = app.rules();
    let recorded = completed.as_ref().and_then(|c| Recorded::of(app, c));
    let impact = match &recorded {
        Some(r) => {
            let baseline = |sc: &StoredCustomer, m: Option<&ManualDecision>| r.classify(sc, m);
            impact::of_rules_since(&app.store, app, Some(&baseline), &rules)?
        }
        // No completed policy to go back to: finish what was started.
        None => Impact::default(),
    };
    let max_ratio = app.config().exclusions.max_new_exclusion_ratio;
    let started = pending
        .started_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if let (false, Some(r), Some(c)) = (impact.within_ratio(max_ratio), recorded, completed) {
        tracing::warn!(
            started_at = %started,
            "a reload was interrupted and the rules in the config are refused by the ratio guard: putting the rules last completed back on every customer"
        );
        app.set_rules(r.rules);
        begin_pending(app, &c, "startup").await?;
        impact::reclassify_all(
            &app.store,
            app,
            "startup",
            "reverting a reload interrupted by a crash or stop",
            RECLASSIFY_BATCH,
        )
        .await?;
        finish_pending(app, &c).await?;
        app.resync_wakeup.notify_waiters();
        return Err(ReloadError::Reverted {
            impact: Box::new(impact),
            max_ratio,
            started_at: pending.started_at,
        });
    }
    let completing = pending.policy == now;
    tracing::warn!(
        started_at = %started,
        trigger = %pending.trigger,
        "a re-classification was interrupted by a crash or stop: {}",
        if completing {
            "completing it with the policy it was applying"
        } else {
            "the config changed since; applying the policy in the config"
        }
    );
    if !completing {
        begin_pending(app, &now, "startup").await?;
    }
    let applied = impact::reclassify_all(
        &app.store,
        app,
        "startup",
        "completing a re-classification interrupted by a crash or stop",
        RECLASSIFY_BATCH,
    )
    .await?;
    finish_pending(app, &now).await?;
    if applied.queued_for_resync > 0 {
        app.resync_wakeup.notify_waiters();
    }
    Ok(format!(
        "a {} interrupted at {started} (by a crash or stop) was {} at start-up: {} newly excluded ({} invoices and {} transactions deleted), {} re-included and queued for resync, {} reasons changed",
        if pending.trigger == "reload" { "reload" } else { "start-up re-classification" },
        if completing {
            "completed with the rules it was applying"
        } else {
            "superseded by the rules in the config (changed since) and those were applied"
        },
        applied.newly_excluded,
        applied.purged_invoices,
        applied.purged_transactions,
        applied.newly_included,
        applied.reason_changes
    ))
}

/// The rule set recorded in an applied policy.
fn old_rules(p: &AppliedPolicy) -> Option<RuleSet> {
    let rules = p
        .rules
        .iter()
        .map(|v| parse_rule(v).ok())
        .collect::<Option<Vec<_>>>()?;
    RuleSet::new(rules).ok()
}

/// Sections whose change a reload cannot apply: they are wired at start-up.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    check(
        "daemon.state_dir",
        old.daemon.state_dir != new.daemon.state_dir,
    );
    check(
        "daemon.log_level",
        old.daemon.log_level != new.daemon.log_level,
    );
    check(
        "daemon.store_cache_mb",
        old.daemon.store_cache_mb != new.daemon.store_cache_mb,
    );
    check("http.listen", old.http.listen != new.http.listen);
    check(
        "http.admin_token",
        old.http.admin_token != new.http.admin_token,
    );
    check(
        "http.viewer_token",
        old.http.viewer_token != new.http.viewer_token,
    );
    check(
        "http.consumer_token",
        old.http.consumer_token != new.http.consumer_token,
    );
    check("webhooks", old.webhooks != new.webhooks);
    check(
        "http.max_body_bytes",
        old.http.max_body_bytes != new.http.max_body_bytes,
    );
    // Connector configs hold options of every kind; their Debug form covers
    // every field, which is what "changed at all" needs.
    check(
        "connectors",
        format!("{:?}", old.connectors) != format!("{:?}", new.connectors),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        // Same path for every version, as a reload re-reads the same file.
        config::parse(
            std::path::Path::new("/etc/erpsync/erpsync.toml"),
            text,
            &crate::connectors::REGISTRY,
        )
        .unwrap()
    }

    const BASE: &str =
        "[daemon]\nstate_dir = \"s\"\n[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n";

    #[test]
    fn restart_needed_names_the_sections_a_reload_cannot_apply() {
        let old = parse(BASE);
        let same = parse(&format!(
            "{BASE}[[rules]]\nid = \"r\"\nwhen = {{ field = \"name\", op = \"is\", value = \"x\" }}\n"
        ));
        assert!(
            needs_restart(&old, &same).is_empty(),
            "rules are reloadable"
        );
        let moved = parse(
            &BASE
                .replace(
                    "state_dir = \"s\"",
                    "state_dir = \"t\"\nlog_level = \"debug\"",
                )
                .replace(
                    "kind = \"demo\"\n",
                    "kind = \"demo\"\npoll_interval = \"5m\"\n",
                ),
        );
        let mut with_listen = moved.clone();
        with_listen.http.listen = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(
            needs_restart(&old, &with_listen),
            vec![
                "daemon.state_dir",
                "daemon.log_level",
                "http.listen",
                "connectors"
            ]
        );
    }
}
