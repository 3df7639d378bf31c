//! Scale-out: several daemons on one PostgreSQL store share the work.
//!
//! Each connector (its poller and its resync worker) and each webhook
//! endpoint is a *resource* worked by exactly one daemon at a time, the
//! holder of its lease in the store (`store::lease`). A lease lasts
//! `daemon.lease_timeout` in the database's clock; the lease loop renews it
//! every [`Cluster::interval`]. In each round a daemon aims at
//! ⌈resources / live daemons⌉ leases: it gives back its excess (so a new
//! daemon gets its share) and claims free or expired ones (so the work of a
//! daemon that died is taken over after the timeout). A clean stop
//! (SIGTERM) releases every lease at once.
//!
//! The lease loop starts a resource's tasks when its lease is won and stops
//! them when it is released or lost. The tasks run inside
//! [`Fence::scope`], so every store write they make checks the lease in its
//! own transaction: a daemon that was paused past its lease writes nothing.
//!
//! **Rules.** Each daemon reads its rules from its own config file. A
//! daemon claims leases only while its classification policy (rules and
//! native exclusions, hashed) is the one the store says is in force; a
//! start is refused while a live peer with other rules holds leases; a
//! reload on one daemon revokes, in the write that starts its
//! re-classification, the leases of daemons with other rules, which then
//! stand by until they are reloaded with the same rules (docs/scale-out.md).
//!
//! With SQLite (one daemon owns the file) there is no cluster: `daemon`
//! starts every task directly, unfenced.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, WorkerState};
use crate::model::Timestamp;
use crate::store::{Fence, Member, StoreError};

/// The lease resource of a connector.
pub fn connector_resource(id: &str) -> String {
    format!("connector:{id}")
}

/// The lease resource of a webhook endpoint.
pub fn webhook_resource(id: &str) -> String {
    format!("webhook:{id}")
}

/// This daemon's membership: its identity, the leases it holds, counters.
pub struct Cluster {
    pub me: Member,
    pub timeout: Duration,
    held: Mutex<BTreeMap<String, HeldLease>>,
    /// Leases claimed from a peer whose lease had expired.
    pub takeovers: AtomicU64,
    /// Leases this daemon lost: found expired at renewal, or already
    /// taken over by a peer (it was paused or cut off too long).
    pub lost: AtomicU64,
    /// Why this daemon claims nothing (its rules differ), if so.
    standby: Mutex<Option<String>>,
    /// Held while the daemon runs (see [`Cluster::new`]).
    _lock: std::fs::File,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldLease {
    pub token: u64,
    pub since: Timestamp,
}

/// This daemon's side of `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct LocalView {
    pub id: String,
    pub leases: BTreeMap<String, HeldLease>,
    pub takeovers: u64,
    pub lost: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
}

/// Why a daemon refuses to join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("refusing to start: {0}")]
    ForeignRules(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The file in `state_dir` that names this daemon in the store.
pub const ID_FILE: &str = "daemon-id";
/// The file in `state_dir` locked while the daemon runs.
const LOCK_FILE: &str = "daemon.lock";

impl Cluster {
    /// This daemon's membership. Its id is kept in `state_dir` (created at
    /// the first start), so a daemon restarted after a crash is the same
    /// member and takes its leases back at once instead of waiting for them
    /// to expire; an exclusive lock on `state_dir` keeps a second process
    /// from running under the same id.
    pub fn new(state_dir: &std::path::Path, timeout: Duration) -> Result<Cluster, String> {
        use std::os::fd::AsRawFd;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK_FILE))
            .map_err(|e| format!("cannot open {}: {e}", state_dir.join(LOCK_FILE).display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "another erpsync runs with state_dir {}: every daemon sharing the store needs its own state_dir",
                state_dir.display()
            ));
        }
        let host = hostname();
        let pid = std::process::id();
        let started_at = chrono::Utc::now();
        let path = state_dir.join(ID_FILE);
        let id = match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            Ok(_) | Err(_) => {
                let id = format!("{host}-{:08x}", rand::random::<u32>());
                std::fs::write(&path, format!("{id}\n"))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                id
            }
        };
        Ok(Cluster {
            _lock: lock,
            me: Member {
                id,
                host,
                pid,
                started_at,
            },
            timeout,
            held: Mutex::new(BTreeMap::new()),
            takeovers: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            standby: Mutex::new(None),
        })
    }

    /// How often leases are renewed (and free ones looked for): a third
    /// of the timeout, at most one second.
    pub fn interval(&self) -> Duration {
        (self.timeout / 3).min(Duration::from_secs(1))
    }

    /// Whether this daemon works `resource` now.
    pub fn holds(&self, resource: &str) -> bool {
        self.held
            .lock()
            .expect("held lock poisoned")
            .contains_key(resource)
    }

    pub fn leases_held(&self) -> usize {
        self.held.lock().expect("held lock poisoned").len()
    }

    pub fn local_view(&self) -> LocalView {
        LocalView {
            id: self.me.id.clone(),
            leases: self.held.lock().expect("held lock poisoned").clone(),
            takeovers: self.takeovers.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            standby: self.standby.lock().expect("standby lock poisoned").clone(),
        }
    }

    /// Joining, before anything is re-classified: refused while a live peer
    /// holds leases under other rules; the leases of this daemon's previous
    /// run (a crash: nobody else can hold its id) are released, so the first
    /// round claims them back with new tokens.
    pub async fn join(&self, app: &App) -> Result<(), JoinError> {
        self.check_peers(app)?;
        let n = app.store.leave(&self.me.id).await?;
        if n > 0 {
            tracing::info!(leases = n, "leases of this daemon's previous run released");
        }
        Ok(())
    }

    fn check_peers(&self, app: &App) -> Result<(), JoinError> {
        let hash = crate::reload::policy_hash(app);
        let foreign = app.store.foreign_peers(&self.me.id, &hash, self.timeout)?;
        if let Some(p) = foreign.into_iter().find(|p| p.id != self.me.id) {
            return Err(JoinError::ForeignRules(format!(
                "daemon {} on {} holds {} lease(s) with other rules (rule set {}, this config's is {}); every daemon sharing the store must run the same [[rules]], [exclusions] and native_exclusions: copy that daemon's rules into this config (or reload every daemon with the new ones), then start again",
                p.id,
                p.host,
                p.leases,
                short(&p.rules_hash),
                short(&hash)
            )));
        }
        Ok(())
    }

    /// The lease loop: rounds every [`Cluster::interval`] until shutdown,
    /// starting and stopping each resource's tasks in `tracker`.
    pub async fn run(self: Arc<Self>, app: Arc<App>, tracker: TaskTracker) {
        let resources = resources(&app);
        let names: Vec<String> = resources.keys().cloned().collect();
        let mut running: HashMap<String, Running> = HashMap::new();
        loop {
            self.round(&app, &tracker, &resources, &names, &mut running)
                .await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval()) => {}
                _ = app.shutdown.cancelled() => break,
            }
        }
    }

    async fn round(
        &self,
        app: &Arc<App>,
        tracker: &TaskTracker,
        resources: &BTreeMap<String, Resource>,
        names: &[String],
        running: &mut HashMap<String, Running>,
    ) {
        let hash = crate::reload::policy_hash(app);
        let mismatch = match crate::reload::policy_mismatch(app) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "lease round: cannot read the rules in force");
                return;
            }
        };
        {
            let mut s = self.standby.lock().expect("standby lock poisoned");
            if *s != mismatch {
                match &mismatch {
                    Some(why) => {
                        tracing::warn!(reason = %why, "standing by: this daemon claims no lease until its rules are the ones in force")
                    }
                    None if s.is_some() => {
                        tracing::info!("rules in force match this daemon's again: claiming leases")
                    }
                    None => {}
                }
                *s = mismatch.clone();
            }
        }
        let round = match app
            .store
            .lease_round(&self.me, &hash, mismatch.is_none(), names, self.timeout)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // Cannot renew: the leases run out on their own and every
                // write of their tasks is refused after that (fencing).
                tracing::warn!(error = %e, "lease round failed; retrying");
                return;
            }
        };
        for r in &round.expired {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(resource = %r, "lease expired before renewal (paused or cut off?): stopping its work");
        }
        for r in &round.released {
            tracing::info!(resource = %r, peers = round.peers, target = round.target, "lease released");
        }
        for a in &round.acquired {
            match &a.took_over_from {
                Some(from) => {
                    self.takeovers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(resource = %a.resource, token = a.token, from = %from, "lease taken over from a daemon whose lease expired");
                }
                None => {
                    tracing::info!(resource = %a.resource, token = a.token, "lease acquired")
                }
            }
        }
        // Stop what is no longer ours (or runs under an old token).
        running.retain(|resource, r| {
            let keep = round.held.get(resource) == Some(&r.token);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        let now = round.now.unwrap_or_else(chrono::Utc::now);
        let mut held = self.held.lock().expect("held lock poisoned");
        let before = std::mem::take(&mut *held);
        // Held at the last round, neither renewed, released nor found
        // expired: a peer claimed it after it expired (this daemon was
        // paused or cut off longer than the timeout).
        for resource in before.keys() {
            if !round.held.contains_key(resource)
                && !round.released.contains(resource)
                && !round.expired.contains(resource)
            {
                self.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(resource = %resource, "lease lost: another daemon took it over after it expired (this one was paused or cut off), or a reload with other rules revoked it; its work stops here");
            }
        }
        for (resource, token) in &round.held {
            let since = match before.get(resource) {
                Some(h) if h.token == *token => h.since,
                _ => now,
            };
            held.insert(
                resource.clone(),
                HeldLease {
                    token: *token,
                    since,
                },
            );
            let alive = running
                .get(resource)
                .is_some_and(|r| r.tasks.iter().any(|t| !t.is_finished()));
            if alive {
                continue;
            }
            let Some(res) = resources.get(resource) else {
                continue;
            };
            let fence = Fence {
                resource: resource.clone(),
                owner: self.me.id.clone(),
                token: *token,
            };
            running.insert(resource.clone(), start(app, tracker, res, fence));
        }
    }

    /// A clean stop: every lease released at once, the daemon's row gone.
    pub async fn leave(&self, app: &App) {
        match app.store.leave(&self.me.id).await {
            Ok(n) => tracing::info!(leases = n, "leases released for the peers"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the leases; peers take them over when they expire")
            }
        }
        self.held.lock().expect("held lock poisoned").clear();
    }
}

/// A resource's tasks running under one lease.
struct Running {
    token: u64,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
enum Resource {
    Connector(Arc<crate::app::ConnectorHandle>),
    Webhook(Arc<crate::feed::webhooks::Endpoint>),
}

fn resources(app: &App) -> BTreeMap<String, Resource> {
    let mut out = BTreeMap::new();
    for h in &app.connectors {
        out.insert(
            connector_resource(&h.id),
            Resource::Connector(Arc::clone(h)),
        );
    }
    for ep in app.webhooks() {
        out.insert(
            webhook_resource(&ep.config.id),
            Resource::Webhook(Arc::clone(&ep)),
        );
    }
    out
}

/// Starts the tasks of `res` under `fence`; they stop on shutdown, on
/// `stop`, or by themselves when a write finds the lease lost.
fn start(app: &Arc<App>, tracker: &TaskTracker, res: &Resource, fence: Fence) -> Running {
    let stop = app.shutdown.child_token();
    let token = fence.token;
    let mut tasks = Vec::new();
    match res {
        Resource::Connector(h) => {
            let poller = crate::sync::run_poller(Arc::clone(app), Arc::clone(h));
            let worker = crate::resync::worker::run(Arc::clone(app), Arc::clone(h));
            let (s1, s2, h1) = (stop.clone(), stop.clone(), Arc::clone(h));
            let shutdown = app.shutdown.clone();
            tasks.push(tracker.spawn(fence.clone().scope(async move {
                tokio::select! {
                    _ = poller => {}
                    _ = s1.cancelled() => {}
                }
                h1.set_pass_running(false);
                let state = if shutdown.is_cancelled() {
                    WorkerState::Stopped
                } else {
                    WorkerState::Standby
                };
                h1.update_status(|s| s.state = state);
            })));
            tasks.push(tracker.spawn(fence.scope(async move {
                tokio::select! {
                    _ = worker => {}
                    _ = s2.cancelled() => {}
                }
            })));
        }
        Resource::Webhook(ep) => {
            let task = crate::feed::webhooks::run(Arc::clone(app), Arc::clone(ep));
            let s = stop.clone();
            tasks.push(tracker.spawn(fence.scope(async move {
                tokio::select! {
                    _ = task => {}
                    _ = s.cancelled() => {}
                }
            })));
        }
    }
    Running { token, stop, tasks }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
