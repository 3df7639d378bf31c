//! The running daemon's shared handles, passed to every task and handler.
//!
//! Like vector's `SourceContext`, this is the one object that carries the
//! store, the connectors with their budgets and status, the current rules and
//! the shutdown signal. Components never reach for globals.
//!
//! It is also where the running daemon meets the exclusion library: `App`
//! implements [`Policy`] here, so `exclusion` never depends on this module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConnectorConfig};
use crate::connectors::{Budget, Connector, NativeExclusion, REGISTRY};
use crate::exclusion::Policy;
use crate::feed::webhooks::Endpoint;
use crate::http::auth::Tokens;
use crate::http::session::Sessions;
use crate::ingest::{Ingest, PageStats};
use crate::model::{Entity, Timestamp};
use crate::rules::RuleSet;
use crate::store::{Store, StoreError, Tx};

pub struct App {
    config: RwLock<Arc<Config>>,
    rules: RwLock<Arc<RuleSet>>,
    pub store: Arc<Store>,
    pub connectors: Vec<Arc<ConnectorHandle>>,
    pub started: Instant,
    pub started_at: Timestamp,
    ready: AtomicBool,
    pub shutdown: CancellationToken,
    /// The API tokens with their roles; none configured: the API answers 403.
    pub tokens: Tokens,
    /// Console sessions and failed-login bookkeeping.
    pub sessions: Sessions,
    /// Wakes resync workers when a job is queued.
    pub resync_wakeup: Notify,
    /// The outcome of the last rule reload, shown in `/status`.
    pub last_reload: Mutex<Option<ReloadStatus>>,
    /// The webhook endpoints the change feed is delivered to.
    webhooks: RwLock<Vec<Arc<Endpoint>>>,
    /// With a shared (PostgreSQL) store: this daemon's leases.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub at: Timestamp,
    pub applied: bool,
    pub message: String,
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        connectors: Vec<Arc<ConnectorHandle>>,
        tokens: impl Into<Tokens>,
    ) -> Arc<App> {
        let rules = Arc::new(config.rules.clone());
        Arc::new(App {
            config: RwLock::new(Arc::new(config)),
            rules: RwLock::new(rules),
            store,
            connectors,
            started: Instant::now(),
            started_at: chrono::Utc::now(),
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tokens: tokens.into(),
            sessions: Sessions::default(),
            resync_wakeup: Notify::new(),
            last_reload: Mutex::new(None),
            webhooks: RwLock::new(Vec::new()),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// The webhook endpoints (set once at start-up by the daemon).
    pub fn webhooks(&self) -> Vec<Arc<Endpoint>> {
        self.webhooks
            .read()
            .expect("webhooks lock poisoned")
            .clone()
    }

    pub fn set_webhooks(&self, endpoints: Vec<Arc<Endpoint>>) {
        *self.webhooks.write().expect("webhooks lock poisoned") = endpoints;
    }

    /// This daemon's membership when several daemons share the store.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Makes this daemon work under leases (set once, by the daemon, with
    /// a shared store).
    pub fn set_cluster(&self, c: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(c);
    }

    /// Ids of the configured connectors, for the read side's filters.
    pub fn connector_ids(&self) -> Vec<String> {
        self.connectors.iter().map(|h| h.id.clone()).collect()
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().expect("config lock poisoned"))
    }

    pub fn set_config(&self, c: Config) {
        *self.config.write().expect("config lock poisoned") = Arc::new(c);
    }

    /// The rules in force. Ingest reads them inside its store write so a
    /// reload never races a page.
    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.rules.read().expect("rules lock poisoned"))
    }

    /// One store write that ingests for connector `h`, with the rules in
    /// force when the write runs (sync pages and resync pages alike).
    pub async fn write_ingesting<T>(
        &self,
        h: &ConnectorHandle,
        f: impl FnOnce(&mut Tx<'_>, &Ingest<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.store
            .write(|tx| {
                let rules = self.rules();
                let ctx = Ingest {
                    connector: &h.id,
                    rules: &rules,
                    native: &h.native,
                    now: chrono::Utc::now(),
                };
                f(tx, &ctx)
            })
            .await
    }

    pub fn set_rules(&self, r: RuleSet) {
        *self.rules.write().expect("rules lock poisoned") = Arc::new(r);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::SeqCst)
    }

    pub fn connector(&self, id: &str) -> Option<&Arc<ConnectorHandle>> {
        self.connectors.iter().find(|c| c.id == id)
    }
}

/// One configured connector with its budget and live status.
pub struct ConnectorHandle {
    pub id: String,
    pub config: ConnectorConfig,
    pub connector: Arc<dyn Connector>,
    pub budget: Arc<Budget>,
    /// The native exclusions enabled in config.
    pub native: Vec<NativeExclusion>,
    /// Every native exclusion the connector's kind knows.
    pub known_native: &'static [NativeExclusion],
    pub status: Mutex<ConnectorStatus>,
    /// Wakes the poller before its interval is over.
    pub poll_now: Notify,
    /// Whether a poll pass is running or requested (sync now).
    pass: Mutex<PassState>,
}

#[derive(Debug, Default)]
struct PassState {
    running: bool,
    requested: bool,
}

/// Why a pass cannot be started now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassRefused {
    /// A pass is running, or one was already requested.
    Running { since: Option<Timestamp> },
    /// Requests are parked until the daily quota resets.
    Parked { resumes_at: Timestamp },
}

impl ConnectorHandle {
    pub fn new(
        config: ConnectorConfig,
        connector: Arc<dyn Connector>,
        budget: Arc<Budget>,
    ) -> Self {
        let known_native = REGISTRY
            .get(&config.kind)
            .map(|k| k.native_exclusions())
            .unwrap_or(&[]);
        let native = known_native
            .iter()
            .filter(|n| config.native_exclusions.iter().any(|e| e == n.name))
            .copied()
            .collect();
        ConnectorHandle {
            id: config.id.clone(),
            config,
            connector,
            budget,
            native,
            known_native,
            status: Mutex::new(ConnectorStatus::default()),
            poll_now: Notify::new(),
            pass: Mutex::new(PassState::default()),
        }
    }

    /// Asks the poller for a pass now (`POST .../sync`, `erpsync sync`).
    pub fn request_pass(&self) -> Result<(), PassRefused> {
        if let Some(resumes_at) = self.budget.parked_until() {
            return Err(PassRefused::Parked { resumes_at });
        }
        let mut p = self.pass.lock().expect("pass lock poisoned");
        if p.running || p.requested {
            return Err(PassRefused::Running {
                since: self.status().last_sync_start.filter(|_| p.running),
            });
        }
        p.requested = true;
        drop(p);
        self.poll_now.notify_one();
        Ok(())
    }

    /// Called by the poller when a pass starts and ends.
    pub fn set_pass_running(&self, running: bool) {
        let mut p = self.pass.lock().expect("pass lock poisoned");
        p.running = running;
        if running {
            p.requested = false;
        }
    }

    pub fn status(&self) -> ConnectorStatus {
        self.status.lock().expect("status lock poisoned").clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut ConnectorStatus)) {
        f(&mut self.status.lock().expect("status lock poisoned"))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    #[default]
    Starting,
    Syncing,
    Idle,
    Failing,
    /// The ERP refused the refresh token: a person must run
    /// `erpsync connect` (see `reconnect`).
    NeedsReconnect,
    /// The daily request quota is used up; requests resume at `resumes_at`.
    QuotaExhausted,
    /// Several daemons share the store and another one holds this
    /// connector's lease (see `/status.cluster`).
    Standby,
    Stopped,
}

/// What a connector in `needs_reconnect` needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconnect {
    pub since: Timestamp,
    pub reason: String,
    /// The command that fixes it.
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub at: Timestamp,
    pub message: String,
}

/// Live state of one connector's poller (like garage's worker status).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectorStatus {
    pub state: WorkerState,
    pub passes: u64,
    pub last_sync_start: Option<Timestamp>,
    pub last_sync_end: Option<Timestamp>,
    pub last_sync_duration_ms: Option<u64>,
    pub last_success: Option<Timestamp>,
    pub consecutive_errors: u64,
    pub last_error: Option<LastError>,
    /// Since this process started, per entity.
    pub session: std::collections::BTreeMap<Entity, PageStats>,
    /// With `state: "quota_exhausted"`: when requests resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes_at: Option<Timestamp>,
    /// With `state: "needs_reconnect"`: why, and the command that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<Reconnect>,
}

impl Policy for App {
    fn rules(&self) -> Arc<RuleSet> {
        App::rules(self)
    }
    fn native(&self, connector: &str) -> &[NativeExclusion] {
        self.connector(connector)
            .map(|h| h.native.as_slice())
            .unwrap_or(&[])
    }
    fn known_native(&self, connector: &str) -> &[NativeExclusion] {
        self.connector(connector)
            .map(|h| h.known_native)
            .unwrap_or(&[])
    }
    fn connector_ids(&self) -> Vec<String> {
        self.connectors.iter().map(|h| h.id.clone()).collect()
    }
    fn check_new_id(&self, connector: &str, external_id: &str) -> Result<(), String> {
        match self
            .connector(connector)
            .and_then(|h| REGISTRY.get(&h.config.kind))
        {
            Some(kind) => kind.check_customer_id(external_id),
            None => crate::connectors::registry::check_id(external_id),
        }
    }
}
