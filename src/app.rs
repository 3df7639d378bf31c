//! The running daemon's shared handles, passed to every task and handler.
//!
//! Like vector's `SourceContext`, this is the one object that carries the
//! store, the connectors with their budgets and status, the current rules and
//! the shutdown signal. Components never reach for globals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConnectorConfig};
use crate::connectors::{Budget, Connector, NativeExclusion};
use crate::http::auth::Tokens;
use crate::http::session::Sessions;
use crate::model::{Entity, Timestamp};
use crate::rules::RuleSet;
use crate::store::Store;
use crate::sync::ingest::PageStats;

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
        })
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
    pub status: Mutex<ConnectorStatus>,
    /// Wakes the poller before its interval is over.
    pub poll_now: Notify,
}

impl ConnectorHandle {
    pub fn new(
        config: ConnectorConfig,
        connector: Arc<dyn Connector>,
        budget: Arc<Budget>,
    ) -> Self {
        let native = connector
            .native_exclusions()
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
            status: Mutex::new(ConnectorStatus::default()),
            poll_now: Notify::new(),
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
    Stopped,
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
}
