//! The store: SQL behind a backend-neutral API. **The only module that knows
//! the database engine**: no engine type, SQL, key layout or engine error
//! type leaves it; features express what they need as [`Store`] and [`Tx`]
//! methods.
//!
//! Two backends share one schema (`schema.rs`, documented in
//! docs/schema.md) and every statement (`sql.rs`): SQLite (bundled, the
//! embedded default: `store.db` in the state directory) and PostgreSQL
//! (`[daemon] store = "postgres://..."`).
//!
//! All writes go through [`Store::write`]: the closure runs synchronously on
//! a [`Tx`] inside one database transaction, under the store's writer lock;
//! reads inside the closure see the transaction's own writes. If the closure
//! returns an error (or panics) the transaction is rolled back and nothing
//! is written; otherwise it is committed, durably (SQLite `synchronous =
//! FULL`; PostgreSQL's commit), before `write` returns. A page of records
//! and the cursor that follows it are always written in one `Tx`, so a crash
//! leaves either both or neither.
//!
//! Blocking work stays off the async runtime: `write` and every read run
//! their database work through [`offload`], which on a multi-threaded tokio
//! runtime uses `block_in_place` (the worker hands its other tasks to another
//! thread first) and elsewhere (plain threads, `spawn_blocking`,
//! single-threaded test runtimes) simply runs. PostgreSQL connections live on
//! their own thread with their own runtime (`pg.rs`); callers wait on a plain
//! channel, which works in every context.
//!
//! The store knows nothing about classification rules or connectors; it keeps
//! what ingest and the admin paths tell it to, and answers queries.

mod codec;
mod feed;
mod lease;
pub mod pg;
mod schema;
mod sets;
mod sql;
mod sqlite;
pub mod testing;
mod tx;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::model::{Classification, CustomerKey, Entity, ManualDecision, Record, Timestamp};
use crate::secrets::{Secret, SecretSource};
use codec::{customer_from_row, record_from_row, AUDIT_COLS, CUSTOMER_COLS};
pub use feed::{
    EventData, EventType, FeedBounds, FeedEvent, ListedRecord, RecordQuery, StatusFilter,
    WebhookCursor, PURGE_IDS_PER_EVENT,
};
pub use lease::{Acquired, DaemonView, Fence, ForeignPeer, HistoryEntry, LeaseView, Member, Round};
pub use schema::SCHEMA_VERSION;
use sql::{params, Conn, Value};
pub use tx::{Tx, Upsert};

/// Default SQLite page cache of the writer connection (`daemon.store_cache_mb`).
pub const DEFAULT_CACHE_MB: u64 = 32;

/// The SQLite file inside the state directory.
pub const SQLITE_FILE: &str = "store.db";

/// Rows fetched per query by the streaming iterators (keyset pages).
const PAGE: i64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {path} is locked by another running erpsync")]
    Locked { path: String },
    #[error("cannot open the store {path}: {message}")]
    Open { path: String, message: String },
    #[error("store schema version {found} is newer than this erpsync supports ({SCHEMA_VERSION}); upgrade erpsync")]
    SchemaTooNew { found: i64 },
    #[error("store error: {0}")]
    Backend(String),
    #[error("corrupt value in the store ({key}): {message}")]
    Corrupt { key: String, message: String },
    /// Raised by a write closure to abort without changing anything.
    #[error("{0}")]
    Rejected(String),
    /// The store cannot be written or reached for a reason outside the
    /// daemon (disk full, I/O error, read-only file system, database server
    /// gone): retried with back-off, and it heals when the cause goes.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write made under a lease ([`Fence`]) found the lease expired or
    /// claimed by another daemon: nothing was written.
    #[error("lease lost: `{resource}` (fencing token {token}) expired or was taken over by another daemon; nothing was written")]
    LeaseLost { resource: String, token: u64 },
}

impl StoreError {
    /// Whether this is a failure of the storage itself (see
    /// [`StoreError::Unavailable`]), not of the data or the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether a fenced write found its lease gone (see [`Fence`]).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, StoreError::LeaseLost { .. })
    }
}

/// Whether the store could last be written, for `/readyz`, `/status` and
/// the watchdog.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreHealth {
    /// False from the first write that failed with
    /// [`StoreError::Unavailable`] until one succeeds.
    pub writable: bool,
    /// Since when writes fail.
    pub failing_since: Option<Timestamp>,
    /// Why (the last such error).
    pub error: Option<String>,
    /// Writes failed in a row.
    pub consecutive_failures: u64,
    /// When a write last failed (a probe's success only clears the state
    /// once no write failed for [`PROBE_QUIET`]).
    #[serde(skip)]
    last_failure: Option<std::time::Instant>,
}

/// A probe's success says little while other writes keep failing (a full
/// disk can still take a tiny write into space the log already holds): it
/// clears the unwritable state only after this long without a failure.
pub const PROBE_QUIET: std::time::Duration = std::time::Duration::from_secs(10);

impl StoreHealth {
    fn ok() -> StoreHealth {
        StoreHealth {
            writable: true,
            ..StoreHealth::default()
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Ids are stored as text and may not contain a NUL byte (refused at ingest
/// and by the admin API).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && !s.as_bytes().contains(&0)
}

/// Where the store lives (`[daemon] store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database; the password (if any) comes from a file or a
    /// systemd credential, never from the URL.
    Postgres {
        url: String,
        password: Option<SecretSource>,
    },
}

impl StoreLocation {
    /// The default: `store.db` in the state directory.
    pub fn in_state_dir(state_dir: &Path) -> StoreLocation {
        StoreLocation::Sqlite(state_dir.join(SQLITE_FILE))
    }

    /// Parses a `--to`/`store` value: a `postgres://` (or `postgresql://`)
    /// URL, or a SQLite file path.
    pub fn parse(s: &str, password: Option<SecretSource>) -> StoreLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres {
                url: s.to_string(),
                password,
            }
        } else {
            StoreLocation::Sqlite(PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s)))
        }
    }
}

/// One id range of a partitioned first sync: where it continues and whether
/// it is read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCursor {
    pub part: u32,
    pub cursor: String,
    pub done: bool,
}

/// A customer as kept in the store: the upstream record plus its current
/// classification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCustomer {
    pub connector: String,
    pub customer: crate::model::Customer,
    pub classification: Classification,
    pub classified_at: Timestamp,
    pub first_seen: Timestamp,
}

impl StoredCustomer {
    pub fn key(&self) -> CustomerKey {
        CustomerKey::new(&self.connector, &self.customer.external_id)
    }
}

/// One entry of the audit trail: a classification change or a manual action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Timestamp,
    pub customer: CustomerKey,
    /// `classified`, `manual_exclude`, `manual_include`, `manual_cleared`,
    /// `stop`, `unstop`, `hold`, `release`, ...
    pub action: String,
    pub actor: String,
    pub reason: String,
    #[serde(default)]
    pub from: Option<Classification>,
    #[serde(default)]
    pub to: Option<Classification>,
}

impl AuditEntry {
    /// An admin action on a customer that does not change its classification
    /// (a manual decision, a STOP flag, a hold); `seq` is assigned by
    /// [`Tx::audit`].
    pub fn action(
        at: Timestamp,
        customer: CustomerKey,
        action: &str,
        actor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        AuditEntry {
            seq: 0,
            at,
            customer,
            action: action.to_string(),
            actor: actor.into(),
            reason: reason.into(),
            from: None,
            to: None,
        }
    }
}

/// A quarantined upstream record, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub connector: String,
    pub at: Timestamp,
    pub record: crate::model::Quarantined,
}

/// Counts of customers by classification, for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassificationCounts {
    pub total: u64,
    pub included: u64,
    pub excluded: u64,
    /// `source` → count
    pub excluded_by_source: BTreeMap<String, u64>,
    /// full reason (`native:inactive`, `rule:x`, `manual`) → count
    pub excluded_by_reason: BTreeMap<String, u64>,
    /// included by a manual decision although a rule or native flag matches
    pub manual_overrides: u64,
}

/// How long history is kept ([`Store::compact`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Tombstones older than this are dropped (the deletion feed's window
    /// plus a margin: no older copy can arrive after it).
    pub tombstones: chrono::Duration,
    /// Audit entries older than this are dropped.
    pub audit: chrono::Duration,
    /// Finished resync jobs (and their member lists) older than this are dropped.
    pub finished_jobs: chrono::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            tombstones: chrono::Duration::days(90),
            audit: chrono::Duration::days(365 * 7),
            finished_jobs: chrono::Duration::days(30),
        }
    }
}

/// What [`Store::compact`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compacted {
    pub tombstones: u64,
    pub audit: u64,
    pub jobs: u64,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(pg::Pg),
}

pub struct Store {
    backend: Backend,
    /// Serialises writers of this process. A std mutex because the critical
    /// section is synchronous and never awaits.
    writer: Mutex<()>,
    /// The sequence number of the newest event this process committed
    /// (webhook deliveries wait on it).
    feed: tokio::sync::watch::Sender<u64>,
    /// Whether writes currently succeed (see [`StoreHealth`]).
    health: Mutex<StoreHealth>,
}

/// Runs blocking database work without stalling the async runtime's
/// workers: `block_in_place` on a multi-threaded runtime, inline elsewhere.
pub(crate) fn offload<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Store {
    /// Opens (or creates) the SQLite store in `state_dir` with the default
    /// page cache.
    pub fn open(state_dir: &Path) -> Result<Store> {
        Self::open_with_cache(state_dir, DEFAULT_CACHE_MB)
    }

    /// Opens the SQLite store in `state_dir` with a writer page cache of
    /// `cache_mb` MiB (readers get a quarter each).
    pub fn open_with_cache(state_dir: &Path, cache_mb: u64) -> Result<Store> {
        Self::open_location(&StoreLocation::in_state_dir(state_dir), cache_mb)
    }

    /// Opens the store at `loc`, creating the schema or applying pending
    /// migrations.
    pub fn open_location(loc: &StoreLocation, cache_mb: u64) -> Result<Store> {
        let backend = match loc {
            StoreLocation::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::open(path, cache_mb)?),
            StoreLocation::Postgres { url, password } => {
                let secret: Option<Secret> = match password {
                    Some(src) => Some(src.load().map_err(|m| StoreError::Open {
                        path: "postgres password".into(),
                        message: m,
                    })?),
                    None => None,
                };
                Backend::Postgres(offload(|| pg::Pg::open(url, secret.as_ref()))?)
            }
        };
        Ok(Store {
            backend,
            writer: Mutex::new(()),
            feed: tokio::sync::watch::Sender::new(0),
            health: Mutex::new(StoreHealth::ok()),
        })
    }

    /// Where the store lives, for logs (never includes a password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => format!("sqlite:{}", s.path().display()),
            Backend::Postgres(p) => p.label().to_string(),
        }
    }

    /// The SQLite file, when the store is SQLite.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Runs `f` against a write transaction under the writer lock and commits
    /// it durably before returning. If `f` returns an error (or panics)
    /// nothing is written.
    pub async fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        offload(|| self.write_blocking(f))
    }

    /// Whether writes currently succeed.
    pub fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A small write (the time of the probe in `meta`): whether the store
    /// can be written now. Updates [`Store::health`] like any write.
    pub async fn probe(&self) -> Result<()> {
        let now = chrono::Utc::now();
        let out = offload(|| self.write_inner(|tx| tx.put_meta("store_probe", &now)));
        self.note(out.as_ref().map(|_| ()), true);
        out
    }

    fn note(&self, outcome: std::result::Result<(), &StoreError>, probe: bool) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                let quiet = h.last_failure.is_none_or(|t| t.elapsed() >= PROBE_QUIET);
                if !h.writable && (!probe || quiet) {
                    tracing::info!(failures = h.consecutive_failures, "store writable again");
                    *h = StoreHealth::ok();
                }
            }
            Err(e) if e.is_unavailable() => {
                if h.writable {
                    tracing::error!(error = %e, "store cannot be written; retrying with back-off");
                    h.writable = false;
                    h.failing_since = Some(chrono::Utc::now());
                }
                h.consecutive_failures += 1;
                h.error = Some(e.to_string());
                h.last_failure = Some(std::time::Instant::now());
            }
            Err(_) => {}
        }
    }

    /// [`Store::write`] for synchronous callers (tools, `spawn_blocking`).
    pub fn write_blocking<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let out = self.write_inner(f);
        self.note(out.as_ref().map(|_| ()), false);
        out
    }

    fn write_inner<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
        // Work done under a lease: the write first checks the lease, in
        // its own transaction (see `lease`).
        let fence = Fence::current();
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match &self.backend {
            Backend::Sqlite(s) => {
                let mut c = s.writer.lock().unwrap_or_else(|e| e.into_inner());
                sqlite::begin(&mut c)?;
                let res = catch_unwind(AssertUnwindSafe(|| {
                    if let Some(f) = &fence {
                        lease::check_local(&mut *c, f)?;
                    }
                    let mut tx = Tx::new(&mut *c);
                    let out = f(&mut tx)?;
                    let seq = tx.finish()?;
                    Ok((out, seq))
                }));
                match res {
                    Ok(Ok((v, seq))) => {
                        sqlite::commit(&mut c)?;
                        self.published(seq);
                        Ok(v)
                    }
                    Ok(Err(e)) => {
                        sqlite::rollback(&mut c);
                        Err(e)
                    }
                    Err(panic) => {
                        sqlite::rollback(&mut c);
                        resume_unwind(panic)
                    }
                }
            }
            Backend::Postgres(p) => {
                p.begin()?;
                let res = catch_unwind(AssertUnwindSafe(|| {
                    let mut w = p.writer();
                    if let Some(f) = &fence {
                        lease::check_pg(&mut w, f)?;
                    }
                    let mut tx = Tx::new(&mut w);
                    let out = f(&mut tx)?;
                    let seq = tx.finish()?;
                    Ok((out, seq))
                }));
                match res {
                    Ok(Ok((v, seq))) => {
                        p.commit()?;
                        self.published(seq);
                        Ok(v)
                    }
                    Ok(Err(e)) => {
                        p.rollback();
                        Err(e)
                    }
                    Err(panic) => {
                        p.rollback();
                        resume_unwind(panic)
                    }
                }
            }
        }
    }

    /// Tells feed subscribers about events just committed.
    fn published(&self, seq: Option<u64>) {
        if let Some(s) = seq {
            self.feed.send_replace(s);
        }
    }

    /// Runs read-only work on a read connection.
    fn read<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<T>) -> Result<T> {
        offload(|| match &self.backend {
            Backend::Sqlite(s) => s.read(|c| f(c)),
            Backend::Postgres(p) => f(&mut p.reader()),
        })
    }

    /// Makes sure everything committed is in the main database file (SQLite
    /// checkpoints its write-ahead log; PostgreSQL has nothing to do). Commits
    /// are durable without it; used at shutdown.
    pub fn flush(&self) -> Result<()> {
        if let Backend::Sqlite(s) = &self.backend {
            let c = s.writer.lock().unwrap_or_else(|e| e.into_inner());
            c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
                .map_err(|e| StoreError::Backend(format!("sqlite: {e}")))?;
        }
        Ok(())
    }

    /// A lazily paged iterator: `fetch` is called with the connection for
    /// each page of up to [`PAGE`] rows until it returns a short page.
    fn paged<'a, T: 'a>(
        &'a self,
        mut fetch: impl FnMut(&mut dyn Conn) -> Result<Vec<T>> + 'a,
    ) -> impl Iterator<Item = Result<T>> + 'a {
        let mut buf: VecDeque<T> = VecDeque::new();
        let mut done = false;
        std::iter::from_fn(move || loop {
            if let Some(v) = buf.pop_front() {
                return Some(Ok(v));
            }
            if done {
                return None;
            }
            match self.read(&mut fetch) {
                Ok(page) => {
                    done = (page.len() as i64) < PAGE;
                    buf.extend(page);
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        })
    }

    /// Whether the store holds no synced or admin data yet (no customer,
    /// decision, audit entry, resync job or cursor).
    pub fn is_empty(&self) -> Result<bool> {
        self.read(|c| {
            for sql in [
                "SELECT 1 FROM customers LIMIT 1",
                "SELECT 1 FROM decisions LIMIT 1",
                "SELECT 1 FROM audit LIMIT 1",
                "SELECT 1 FROM resync_jobs LIMIT 1",
                "SELECT 1 FROM cursors LIMIT 1",
            ] {
                if c.query_opt(sql, &[])?.is_some() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    // ----- customers, decisions, records --------------------------------

    pub fn customer(&self, key: &CustomerKey) -> Result<Option<StoredCustomer>> {
        self.read(|c| tx::load_customer(c, key))
    }

    /// Iterates all customers (of one connector, or of all), in key order,
    /// starting after `after` (exclusive) for cursor paging. Streams in
    /// keyset pages: memory does not grow with the number of customers.
    pub fn customers<'a>(
        &'a self,
        connector: Option<&str>,
        after: Option<&CustomerKey>,
    ) -> impl Iterator<Item = Result<StoredCustomer>> + 'a {
        let connector = connector.map(str::to_string);
        let mut last: Option<(String, String)> = after
            .map(|a| (a.connector.clone(), a.external_id.clone()))
            .filter(|(c, _)| connector.as_ref().is_none_or(|k| k == c));
        // A starting key of another connector: begin at the connector's start
        // when it sorts after, nothing when before.
        let mut skip_all = false;
        if let (Some(k), Some(a)) = (&connector, after) {
            if a.connector.as_str() > k.as_str() {
                skip_all = true;
            }
        }
        self.paged(move |c| {
            if skip_all {
                return Ok(Vec::new());
            }
            let rows = match (&connector, &last) {
                (Some(k), Some((_, id))) => c.query_dyn(
                    &format!("SELECT {CUSTOMER_COLS} FROM customers WHERE connector = ? AND id > ? ORDER BY id LIMIT ?"),
                    &params![k, id, PAGE],
                )?,
                (Some(k), None) => c.query_dyn(
                    &format!("SELECT {CUSTOMER_COLS} FROM customers WHERE connector = ? ORDER BY id LIMIT ?"),
                    &params![k, PAGE],
                )?,
                (None, Some((k, id))) => c.query_dyn(
                    &format!("SELECT {CUSTOMER_COLS} FROM customers WHERE (connector, id) > (?, ?) ORDER BY connector, id LIMIT ?"),
                    &params![k, id, PAGE],
                )?,
                (None, None) => c.query_dyn(
                    &format!("SELECT {CUSTOMER_COLS} FROM customers ORDER BY connector, id LIMIT ?"),
                    &params![PAGE],
                )?,
            };
            let out: Vec<StoredCustomer> =
                rows.iter().map(customer_from_row).collect::<Result<_>>()?;
            if let Some(l) = out.last() {
                last = Some((l.connector.clone(), l.customer.external_id.clone()));
            }
            Ok(out)
        })
    }

    /// All invoices and transactions stored under one customer (invoices
    /// first, each by id).
    pub fn records_of(&self, key: &CustomerKey) -> Result<Vec<Record>> {
        self.read(|c| tx::load_records_of(c, key))
    }

    /// Iterates every stored record of a connector (or all connectors):
    /// invoices, then transactions, each in (connector, id) order, in pages.
    pub fn records<'a>(
        &'a self,
        connector: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, Record)>> + 'a {
        let connector = connector.map(str::to_string);
        let mut entity = 0usize;
        let mut last: Option<(String, String)> = None;
        self.paged(move |c| {
            let mut out = Vec::new();
            fill(c, &connector, &mut entity, &mut last, &mut out)?;
            Ok(out)
        })
    }

    /// Number of records parked while waiting for their customer.
    pub fn parked_count(&self, connector: &str) -> Result<u64> {
        self.read(|c| {
            c.query_opt(
                "SELECT COUNT(*) FROM parked WHERE connector = ?",
                &params![connector],
            )?
            .map(|r| r.u64(0))
            .unwrap_or(Ok(0))
        })
    }

    pub fn cursor(&self, connector: &str, entity: Entity) -> Result<Option<String>> {
        self.read(|c| {
            c.query_opt(
                "SELECT cursor FROM cursors WHERE connector = ? AND entity = ?",
                &params![connector, entity.as_str()],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    /// The id ranges of `entity`'s partitioned first sync, by part number;
    /// empty when none is in progress (never started, or every range done).
    pub fn partitions(&self, connector: &str, entity: Entity) -> Result<Vec<PartitionCursor>> {
        self.read(|c| {
            c.query(
                "SELECT part, cursor, done FROM partitions WHERE connector = ? AND entity = ? ORDER BY part",
                &params![connector, entity.as_str()],
            )?
            .iter()
            .map(|r| {
                Ok(PartitionCursor {
                    part: r.u64(0)? as u32,
                    cursor: r.text(1)?,
                    done: r.bool(2)?,
                })
            })
            .collect()
        })
    }

    pub fn manual_decision(&self, key: &CustomerKey) -> Result<Option<ManualDecision>> {
        self.read(|c| tx::load_decision(c, key))
    }

    /// All manual decisions (including those waiting for a customer that was
    /// never synced yet), in key order.
    pub fn manual_decisions(
        &self,
    ) -> impl Iterator<Item = Result<(CustomerKey, ManualDecision)>> + '_ {
        let mut last: Option<(String, String)> = None;
        self.paged(move |c| {
            let rows = match &last {
                Some((k, id)) => c.query(
                    "SELECT connector, customer_id, action, actor, reason, at FROM decisions \
                     WHERE (connector, customer_id) > (?, ?) \
                     ORDER BY connector, customer_id LIMIT ?",
                    &params![k, id, PAGE],
                )?,
                None => c.query(
                    "SELECT connector, customer_id, action, actor, reason, at FROM decisions \
                     ORDER BY connector, customer_id LIMIT ?",
                    &params![PAGE],
                )?,
            };
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let key = CustomerKey::new(r.text(0)?, r.text(1)?);
                let d = codec::decision_from_row(r, 2)?;
                last = Some((key.connector.clone(), key.external_id.clone()));
                out.push((key, d));
            }
            Ok(out)
        })
    }

    // ----- counters, audit, quarantine -----------------------------------

    pub fn counter(&self, connector: &str, name: &str) -> Result<u64> {
        self.read(|c| {
            c.query_opt(
                "SELECT value FROM counters WHERE connector = ? AND name = ?",
                &params![connector, name],
            )?
            .map(|r| r.u64(0))
            .unwrap_or(Ok(0))
        })
    }

    /// All counters of a connector, name → value.
    pub fn counters(&self, connector: &str) -> Result<BTreeMap<String, u64>> {
        self.read(|c| {
            c.query(
                "SELECT name, value FROM counters WHERE connector = ? ORDER BY name",
                &params![connector],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.u64(1)?)))
            .collect()
        })
    }

    /// Audit entries newest first, optionally for one customer.
    pub fn audit(&self, customer: Option<&CustomerKey>, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let rows = match customer {
                None => c.query_dyn(
                    &format!("SELECT {AUDIT_COLS} FROM audit ORDER BY seq DESC LIMIT ?"),
                    &params![limit],
                )?,
                Some(k) => c.query_dyn(
                    &format!(
                        "SELECT {AUDIT_COLS} FROM audit WHERE connector = ? AND customer_id = ? \
                         ORDER BY seq DESC LIMIT ?"
                    ),
                    &params![&k.connector, &k.external_id, limit],
                )?,
            };
            rows.iter().map(codec::audit_from_row).collect()
        })
    }

    /// Quarantined records of a connector, newest first.
    pub fn quarantine(&self, connector: &str, limit: usize) -> Result<Vec<QuarantineEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.query(
                "SELECT connector, at, entity, external_id, reason, raw FROM quarantine \
                 WHERE connector = ? ORDER BY seq DESC LIMIT ?",
                &params![connector, limit],
            )?
            .iter()
            .map(codec::quarantine_from_row)
            .collect()
        })
    }

    /// Counts customers by classification, from counts maintained in the
    /// same transaction as every customer change (no scan).
    pub fn classification_counts(&self, connector: Option<&str>) -> Result<ClassificationCounts> {
        let rows = self.read(|c| match connector {
            Some(k) => c.query(
                "SELECT excluded, source, reason, customers FROM classification_counts WHERE connector = ?",
                &params![k],
            ),
            None => c.query(
                "SELECT excluded, source, reason, customers FROM classification_counts",
                &[],
            ),
        })?;
        let mut out = ClassificationCounts::default();
        for r in &rows {
            let (excluded, source, reason, n) = (r.bool(0)?, r.text(1)?, r.text(2)?, r.u64(3)?);
            out.total += n;
            if excluded {
                out.excluded += n;
                let src = if source.is_empty() {
                    "unknown".to_string()
                } else {
                    source
                };
                *out.excluded_by_source.entry(src).or_default() += n;
                *out.excluded_by_reason.entry(reason).or_default() += n;
            } else {
                out.included += n;
                if source == "manual" && reason.starts_with("manual:overrides") {
                    out.manual_overrides += n;
                }
            }
        }
        Ok(out)
    }

    // ----- feature state: meta, flags, resync queue, credentials ----------

    /// A small JSON value the daemon keeps about itself (the applied
    /// classification policy, ...).
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.read(|c| tx::load_meta(c, key))
    }

    /// The reminder STOP flag of a customer, if set.
    pub fn stop_flag<T: DeserializeOwned>(&self, key: &CustomerKey) -> Result<Option<T>> {
        self.read(|c| tx::load_stop(c, key))
    }

    /// Up to `limit` STOP flags after `after`, in key order.
    pub fn stop_flags<T: DeserializeOwned>(
        &self,
        after: Option<&CustomerKey>,
        limit: usize,
    ) -> Result<Vec<(CustomerKey, T)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let rows = match after {
                Some(a) => c.query(
                    "SELECT connector, customer_id, flag FROM reminder_stops \
                     WHERE (connector, customer_id) > (?, ?) \
                     ORDER BY connector, customer_id LIMIT ?",
                    &params![&a.connector, &a.external_id, limit],
                )?,
                None => c.query(
                    "SELECT connector, customer_id, flag FROM reminder_stops \
                     ORDER BY connector, customer_id LIMIT ?",
                    &params![limit],
                )?,
            };
            rows.iter()
                .map(|r| Ok((CustomerKey::new(r.text(0)?, r.text(1)?), r.json(2)?)))
                .collect()
        })
    }

    /// The admin hold on an invoice, if set.
    pub fn hold_flag<T: DeserializeOwned>(
        &self,
        connector: &str,
        invoice: &str,
    ) -> Result<Option<T>> {
        self.read(|c| tx::load_hold(c, connector, invoice))
    }

    /// Up to `limit` invoice holds after `(connector, invoice)`, in key
    /// order: `(connector, invoice, flag)`.
    pub fn hold_flags<T: DeserializeOwned>(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, T)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let rows = match after {
                Some((k, id)) => c.query(
                    "SELECT connector, invoice_id, flag FROM reminder_holds \
                     WHERE (connector, invoice_id) > (?, ?) \
                     ORDER BY connector, invoice_id LIMIT ?",
                    &params![k, id, limit],
                )?,
                None => c.query(
                    "SELECT connector, invoice_id, flag FROM reminder_holds \
                     ORDER BY connector, invoice_id LIMIT ?",
                    &params![limit],
                )?,
            };
            rows.iter()
                .map(|r| Ok((r.text(0)?, r.text(1)?, r.json(2)?)))
                .collect()
        })
    }

    /// A resync job's JSON document.
    pub fn resync_job<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>> {
        self.read(|c| tx::load_job(c, id))
    }

    /// Every resync job, oldest (smallest id) first.
    pub fn resync_jobs<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.read(tx::load_jobs)
    }

    /// The unfinished job a customer waits in.
    pub fn resync_queued(&self, connector: &str, customer: &str) -> Result<Option<u64>> {
        self.read(|c| tx::load_queued(c, connector, customer))
    }

    /// Pending (not done) members of a job, by customer id, streamed.
    pub fn resync_pending<'a>(&'a self, job: u64) -> impl Iterator<Item = Result<String>> + 'a {
        let mut last: Option<String> = None;
        self.paged(move |c| {
            let rows = match &last {
                Some(id) => c.query(
                    "SELECT customer_id FROM resync_members WHERE job = ? AND done = FALSE \
                     AND customer_id > ? ORDER BY customer_id LIMIT ?",
                    &params![job, id, PAGE],
                )?,
                None => c.query(
                    "SELECT customer_id FROM resync_members WHERE job = ? AND done = FALSE \
                     ORDER BY customer_id LIMIT ?",
                    &params![job, PAGE],
                )?,
            };
            let out: Vec<String> = rows.iter().map(|r| r.text(0)).collect::<Result<_>>()?;
            last = out.last().cloned().or(last.take());
            Ok(out)
        })
    }

    /// Every member of a job with whether it is done.
    pub fn resync_members(&self, job: u64) -> Result<Vec<(String, bool)>> {
        self.read(|c| tx::load_members(c, job))
    }

    /// A stored connector credential (an OAuth token, ...). The value is a
    /// secret: callers must not log it.
    pub fn credential(&self, connector: &str, name: &str) -> Result<Option<String>> {
        self.read(|c| tx::load_credential(c, connector, name))
    }

    /// Stores a connector credential durably (its own transaction).
    pub async fn put_credential(&self, connector: &str, name: &str, value: &str) -> Result<()> {
        self.write(|tx| tx.put_credential(connector, name, value))
            .await
    }

    /// A fresh id, unique in this store (its own durable transaction).
    pub async fn next_id(&self) -> Result<u64> {
        self.write(|tx| tx.next_id()).await
    }

    // ----- growth bounds ---------------------------------------------------

    /// Drops history older than the retention: tombstones, audit entries and
    /// finished resync jobs (with their members). One transaction.
    pub async fn compact(&self, retention: &Retention, now: Timestamp) -> Result<Compacted> {
        self.write(|tx| tx.compact(retention, now)).await
    }
}

/// Tops up a short page of `records` from the next table so the pager only
/// sees a short page at the real end.
fn fill(
    c: &mut dyn Conn,
    connector: &Option<String>,
    entity: &mut usize,
    last: &mut Option<(String, String)>,
    out: &mut Vec<(String, Record)>,
) -> Result<()> {
    while *entity < 2 && (out.len() as i64) < PAGE {
        let (table, cols) = if *entity == 0 {
            ("invoices", codec::INVOICE_COLS)
        } else {
            ("transactions", codec::TRANSACTION_COLS)
        };
        let mut sql = format!("SELECT connector, {cols} FROM {table} WHERE TRUE");
        let mut p = Vec::new();
        if let Some(k) = connector {
            sql += " AND connector = ?";
            p.push(Value::from(k));
        }
        if let Some((lc, lid)) = last.as_ref() {
            sql += " AND (connector, id) > (?, ?)";
            p.extend(params![lc, lid]);
        }
        let want = PAGE - out.len() as i64;
        sql += " ORDER BY connector, id LIMIT ?";
        p.push(Value::Int(want));
        let rows = c.query_dyn(&sql, &p)?;
        for r in &rows {
            let conn = r.text(0)?;
            let rec = record_from_row(*entity == 0, r, 1)?;
            *last = Some((conn.clone(), rec.external_id().to_string()));
            out.push((conn, rec));
        }
        if (rows.len() as i64) < want {
            *entity += 1;
            *last = None;
        }
    }
    Ok(())
}

#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod tests;
