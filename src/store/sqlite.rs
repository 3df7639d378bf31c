//! The SQLite backend: one file (`store.db`) in WAL mode, one writer
//! connection, a small pool of read connections.
//!
//! `synchronous = FULL`: every commit syncs the write-ahead log before it
//! returns, so a page and its cursor survive a power loss, not only a crash
//! of the process (`NORMAL` would keep the file consistent but could lose the
//! last commits, and the cursor invariant promises the page is on disk when
//! the next one is requested). Writers are serialised by the store's writer
//! lock and `BEGIN IMMEDIATE`; readers see the last committed state. The
//! log is folded back into the database every 65,536 pages (256 MiB)
//! instead of SQLite's 1,000: a page of records dirties index pages all
//! over each index, and pages written by many consecutive commits are then
//! copied into the database once instead of once per few commits (on the
//! sync benchmark at 288k records: a sixth fewer bytes written, a quarter
//! less time than at 32 MiB). After a checkpoint the log file is cut back
//! to 64 MiB (`journal_size_limit`), so an idle store does not keep the
//! peak on disk. An
//! exclusive `flock` on `store.lock` keeps a second daemon off the same file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::schema::{self, Dialect};
use super::sql::{time_text, Conn, Row, Value};
use super::{Result, StoreError};

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 4;

pub(crate) struct Sqlite {
    path: PathBuf,
    cache_kib: i64,
    pub(crate) writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Holds the exclusive lock for the store's lifetime.
    _lock: File,
}

fn err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        // The file system, not the data: disk full, I/O error, read-only,
        // cannot open (the folder went away), out of memory.
        Some(C::DiskFull | C::SystemIoFailure | C::ReadOnly | C::CannotOpen | C::OutOfMemory) => {
            StoreError::Unavailable(format!("sqlite: {e}"))
        }
        _ => StoreError::Backend(format!("sqlite: {e}")),
    }
}

impl Sqlite {
    /// Opens (or creates) the database file and applies pending migrations.
    pub(crate) fn open(path: &Path, cache_mb: u64) -> Result<Sqlite> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        let lock = lock_file(path)?;
        if !path.exists() {
            // It will hold connector credentials: readable by the service
            // user only (the log and shared-memory files copy this mode).
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        let cache_kib = (cache_mb.max(1) * 1024) as i64;
        let mut writer = connect(path, cache_kib)?;
        migrate(&mut writer)?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            cache_kib,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read connection (taken from the pool or opened).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(&self.path, (self.cache_kib / 4).max(2048))?,
        };
        let out = f(&mut conn);
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

fn lock_file(db: &Path) -> Result<File> {
    use std::os::unix::io::AsRawFd;
    let lock_path = db.with_extension("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Open {
            path: lock_path.display().to_string(),
            message: e.to_string(),
        })?;
    // A lock that is about to go is waited for a moment: the holder may be
    // a process that is exiting, or (in a process that opened and closed
    // the store) a child between fork and exec that still shares the
    // descriptor. A running daemon holds it for good and is refused.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Locked {
                path: db.display().to_string(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How long opening the store waits for a lock held by someone else.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn connect(path: &Path, cache_kib: i64) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 10000;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 65536;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -{cache_kib};"
    ))
    .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(&schema::migrations_table(Dialect::Sqlite))
        .map_err(err)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if current > schema::SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found: current });
    }
    for (version, sql) in schema::MIGRATIONS {
        if *version <= current {
            continue;
        }
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(&schema::render(sql, Dialect::Sqlite))
            .map_err(err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![version, time_text(&chrono::Utc::now())],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version, "store schema migrated (sqlite)");
    }
    Ok(())
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(V::Null),
            Value::Int(v) => ToSqlOutput::Owned(V::Integer(*v)),
            Value::Text(s) | Value::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bool(b) => ToSqlOutput::Owned(V::Integer(*b as i64)),
            Value::Dec(d) => ToSqlOutput::Owned(V::Text(d.normalize().to_string())),
            Value::Time(t) => ToSqlOutput::Owned(V::Text(time_text(t))),
            Value::Date(d) => ToSqlOutput::Owned(V::Text(d.format("%Y-%m-%d").to_string())),
            Value::Array(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "array parameters are for PostgreSQL only".into(),
                ))
            }
        })
    }
}

fn read_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Text(v.to_string()),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        });
    }
    Ok(Row(out))
}

fn run_query(c: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut st = c.prepare_cached(sql).map_err(err)?;
    let n = st.column_count();
    let mut rows = st
        .query(rusqlite::params_from_iter(params.iter()))
        .map_err(err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        out.push(read_row(r, n).map_err(err)?);
    }
    Ok(out)
}

fn run_exec(c: &Connection, sql: &str, params: &[Value]) -> Result<u64> {
    let mut st = c.prepare_cached(sql).map_err(err)?;
    Ok(st
        .execute(rusqlite::params_from_iter(params.iter()))
        .map_err(err)? as u64)
}

impl Conn for Connection {
    fn exec(&mut self, sql: &'static str, params: &[Value]) -> Result<u64> {
        run_exec(self, sql, params)
    }
    fn query(&mut self, sql: &'static str, params: &[Value]) -> Result<Vec<Row>> {
        run_query(self, sql, params)
    }
    fn exec_dyn(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        run_exec(self, sql, params)
    }
    fn query_dyn(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        run_query(self, sql, params)
    }
}

/// Begins the write transaction on the writer connection (rolling back one
/// left open by a panicking writer).
pub(crate) fn begin(c: &mut Connection) -> Result<()> {
    if !c.is_autocommit() {
        c.execute_batch("ROLLBACK").map_err(err)?;
    }
    c.execute_batch("BEGIN IMMEDIATE").map_err(err)
}

pub(crate) fn commit(c: &mut Connection) -> Result<()> {
    c.execute_batch("COMMIT").map_err(err)
}

pub(crate) fn rollback(c: &mut Connection) {
    if !c.is_autocommit() {
        if let Err(e) = c.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
    }
}
