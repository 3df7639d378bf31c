//! The PostgreSQL backend.
//!
//! The connections live on one dedicated thread that runs its own
//! single-threaded tokio runtime (never the daemon's): one writer
//! connection, whose requests run strictly in order, and a few reader
//! connections. The store's synchronous methods send a statement with owned
//! parameters to that thread and wait on a plain channel, which is legal in
//! any context (inside or outside a runtime, on any runtime flavour), unlike
//! the synchronous `postgres` client that panics inside a runtime.
//!
//! Write transactions: `BEGIN` (READ COMMITTED) and then
//! `pg_advisory_xact_lock` on a fixed key, so every write transaction of
//! every daemon on the same database runs strictly one after the other, as
//! on SQLite: each sees everything committed before it, read-modify-write
//! sequences (counters, jobs, "is the newer version stored?") cannot
//! interleave, and no serialisation failure can surface to a caller. Reads
//! outside a write see committed data, statement by statement.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::schema::{self, Dialect};
use super::sql::{numbered, Conn, Row, Value};
use super::{Result, StoreError};
use crate::secrets::Secret;

/// The key of the advisory lock every write transaction takes.
const WRITE_LOCK_KEY: i64 = 0x0065_7270_7379_6e63; // "erpsync"
const READERS: usize = 4;

/// How long the server keeps a transaction that sends nothing: far longer
/// than any write transaction waits between its statements, far shorter
/// than the shortest lease (`daemon.lease_timeout`, at least 5 s).
pub const IDLE_TX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Which connection a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Writer,
    Reader,
    /// Lease rounds (`store::lease`): their own connection and
    /// transactions, without the write lock, so renewals never wait behind
    /// page writes.
    Lease,
}

enum Req {
    Run {
        sql: String,
        params: Vec<Value>,
        reply: SyncSender<Result<Vec<Row>>>,
    },
    /// Several statements without parameters (simple query protocol).
    Batch {
        sql: String,
        reply: SyncSender<Result<()>>,
    },
}

pub(crate) struct Pg {
    /// Requests for the writer connection, served strictly in order.
    writer_tx: tokio::sync::mpsc::UnboundedSender<Req>,
    /// Requests for the reader connections.
    reader_tx: tokio::sync::mpsc::UnboundedSender<Req>,
    /// Requests for the lease connection, served strictly in order.
    lease_tx: tokio::sync::mpsc::UnboundedSender<Req>,
    label: String,
}

pub(crate) fn err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let text = format!("postgres: {}: {}", db.code().code(), db.message());
            // Classes 08 (connection), 53 (insufficient resources: disk
            // full, out of memory), 57P (server shutting down or starting),
            // 58 (system error: I/O).
            let code = db.code().code();
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("58")
            {
                StoreError::Unavailable(text)
            } else {
                StoreError::Backend(text)
            }
        }
        // No answer from the server: the connection is gone or cannot be made.
        None => {
            let mut s = e.to_string();
            if let Some(src) = e.source() {
                s = format!("{s}: {src}");
            }
            StoreError::Unavailable(format!("postgres: {s}"))
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("postgres: the store's connection thread has stopped".into())
}

/// A database URL without its password, for messages.
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Parses a `postgres://` URL; a password inside it is refused (it belongs
/// in a file or a systemd credential).
pub fn parse_url(url: &str) -> std::result::Result<tokio_postgres::Config, String> {
    let config = tokio_postgres::Config::from_str(url).map_err(|e| {
        format!("not a valid PostgreSQL URL ({e}); expected postgres://USER@HOST:PORT/DATABASE")
    })?;
    if config.get_password().is_some() {
        return Err(
            "the URL contains a password; put it in a file and name it with \
                    `store_password_file` (or `store_password_credential`)"
                .into(),
        );
    }
    if config.get_dbname().is_none() {
        return Err("the URL names no database (postgres://USER@HOST:PORT/DATABASE)".into());
    }
    Ok(config)
}

impl Pg {
    /// Connects, starts the connection thread and applies pending migrations.
    pub(crate) fn open(url: &str, password: Option<&Secret>) -> Result<Pg> {
        let mut config = parse_url(url).map_err(|m| StoreError::Open {
            path: "daemon.store".into(),
            message: m,
        })?;
        if let Some(p) = password {
            config.password(p.expose());
        }
        let label = describe(&config);
        let (writer_tx, wrx) = tokio::sync::mpsc::unbounded_channel();
        let (reader_tx, rrx) = tokio::sync::mpsc::unbounded_channel();
        let (lease_tx, lrx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name("erpsync-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Backend(format!(
                            "cannot start the store's connection thread: {e}"
                        ))));
                        return;
                    }
                };
                rt.block_on(actor(config, thread_label, wrx, rrx, lrx, ready_tx));
            })
            .map_err(|e| StoreError::Backend(format!("cannot start a thread: {e}")))?;
        ready_rx.recv().map_err(|_| closed())??;
        let pg = Pg {
            writer_tx,
            reader_tx,
            lease_tx,
            label,
        };
        pg.migrate()?;
        Ok(pg)
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn lane(&self, lane: Lane) -> &tokio::sync::mpsc::UnboundedSender<Req> {
        match lane {
            Lane::Writer => &self.writer_tx,
            Lane::Reader => &self.reader_tx,
            Lane::Lease => &self.lease_tx,
        }
    }

    fn run(&self, lane: Lane, sql: String, params: &[Value]) -> Result<Vec<Row>> {
        let (reply, rx) = sync_channel(1);
        self.lane(lane)
            .send(Req::Run {
                sql,
                params: params.to_vec(),
                reply,
            })
            .map_err(|_| closed())?;
        super::offload(|| rx.recv().map_err(|_| closed())?)
    }

    pub(crate) fn batch(&self, lane: Lane, sql: &str) -> Result<()> {
        let (reply, rx) = sync_channel(1);
        self.lane(lane)
            .send(Req::Batch {
                sql: sql.to_string(),
                reply,
            })
            .map_err(|_| closed())?;
        super::offload(|| rx.recv().map_err(|_| closed())?)
    }

    pub(crate) fn begin(&self) -> Result<()> {
        self.batch(
            Lane::Writer,
            &format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"),
        )
    }
    pub(crate) fn commit(&self) -> Result<()> {
        self.batch(Lane::Writer, "COMMIT")
    }
    pub(crate) fn rollback(&self) {
        if let Err(e) = self.batch(Lane::Writer, "ROLLBACK") {
            tracing::error!(error = %e, "postgres rollback failed");
        }
    }

    /// The writer connection, for statements inside a write transaction.
    pub(crate) fn writer(&self) -> PgConn<'_> {
        PgConn {
            pg: self,
            lane: Lane::Writer,
        }
    }
    /// The lease connection, inside a transaction begun with `BEGIN` on it
    /// (no write lock: lease rows are claimed with row locks).
    pub(crate) fn lease(&self) -> PgConn<'_> {
        PgConn {
            pg: self,
            lane: Lane::Lease,
        }
    }

    /// A reader connection, for statements outside any transaction.
    pub(crate) fn reader(&self) -> PgConn<'_> {
        PgConn {
            pg: self,
            lane: Lane::Reader,
        }
    }

    fn migrate(&self) -> Result<()> {
        self.batch(Lane::Writer, &schema::migrations_table(Dialect::Postgres))?;
        // Concurrent start-ups of several daemons migrate one at a time.
        self.begin()?;
        let res = (|| {
            let mut w = self.writer();
            let current = w
                .query_opt(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            if current > schema::SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew { found: current });
            }
            for (version, sql) in schema::MIGRATIONS {
                if *version <= current {
                    continue;
                }
                self.batch(Lane::Writer, &schema::render(sql, Dialect::Postgres))?;
                w.exec(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    &[Value::Int(*version), Value::Time(Utc::now())],
                )?;
                tracing::info!(version, "store schema migrated (postgres)");
            }
            Ok(())
        })();
        match res {
            Ok(()) => self.commit(),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }
}

/// One lane of the connection thread as a [`Conn`].
pub(crate) struct PgConn<'a> {
    pg: &'a Pg,
    lane: Lane,
}

impl Conn for PgConn<'_> {
    fn exec(&mut self, sql: &'static str, params: &[Value]) -> Result<u64> {
        self.exec_dyn(sql, params)
    }
    fn query(&mut self, sql: &'static str, params: &[Value]) -> Result<Vec<Row>> {
        self.query_dyn(sql, params)
    }
    fn exec_dyn(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        // Changed-row counts come back as one row holding the count.
        let rows = self.pg.run(self.lane, format!("\u{1}{sql}"), params)?;
        Ok(rows.first().map(|r| r.u64(0)).transpose()?.unwrap_or(0))
    }
    fn query_dyn(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.pg.run(self.lane, sql.to_string(), params)
    }
    fn arrays(&self) -> bool {
        true
    }
}

// ----- the connection thread ---------------------------------------------

struct Slot {
    config: tokio_postgres::Config,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// A transaction is open on this connection: if the connection is lost
    /// now, later statements must fail rather than run on a new connection
    /// outside the transaction.
    in_tx: bool,
}

impl Slot {
    async fn client(&mut self) -> Result<&Client> {
        let lost = self.client.as_ref().is_none_or(|c| c.is_closed());
        if lost && self.in_tx {
            return Err(StoreError::Unavailable(
                "postgres: the connection was lost inside a transaction; it is rolled back".into(),
            ));
        }
        if lost {
            self.statements.clear();
            let (client, connection) = self.config.connect(NoTls).await.map_err(err)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "store connection to postgres closed");
                }
            });
            // Plan each execution with the tables' current size: a plan
            // cached while a table was empty (the first sync) would scan it
            // whole once it is large.
            //
            // A transaction left idle (its process paused or cut off) is
            // ended by the server after IDLE_TX_TIMEOUT, so it cannot hold
            // the write lock of every daemon sharing the database for
            // longer than that (docs/scale-out.md).
            client
                .batch_execute(&format!(
                    "SET plan_cache_mode = force_custom_plan; SET idle_in_transaction_session_timeout = {}",
                    IDLE_TX_TIMEOUT.as_millis()
                ))
                .await
                .map_err(err)?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("just connected"))
    }

    async fn run(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let (count_only, sql) = match sql.strip_prefix('\u{1}') {
            Some(s) => (true, s),
            None => (false, sql),
        };
        let stmt = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let text = numbered(sql);
                let s = self.client().await?.prepare(&text).await.map_err(err)?;
                self.statements.insert(sql.to_string(), s.clone());
                s
            }
        };
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let client = self.client().await?;
        if count_only {
            let n = client.execute(&stmt, &refs).await.map_err(err)?;
            return Ok(vec![Row(vec![Value::Int(n as i64)])]);
        }
        let rows = client.query(&stmt, &refs).await.map_err(err)?;
        rows.iter().map(read_row).collect()
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        let ends = sql.starts_with("COMMIT") || sql.starts_with("ROLLBACK");
        if ends {
            let lost = self.client.as_ref().is_none_or(|c| c.is_closed());
            self.in_tx = false;
            if lost && sql.starts_with("ROLLBACK") {
                return Ok(()); // the server rolled it back with the connection
            }
            if lost {
                return Err(StoreError::Unavailable(
                    "postgres: the connection was lost before the commit; nothing was written"
                        .into(),
                ));
            }
        }
        let res = self.client().await?.batch_execute(sql).await.map_err(err);
        if sql.starts_with("BEGIN") && res.is_ok() {
            self.in_tx = true;
        }
        res
    }

    async fn serve(&mut self, req: Req) {
        match req {
            Req::Run {
                sql, params, reply, ..
            } => {
                let _ = reply.send(self.run(&sql, &params).await);
            }
            Req::Batch { sql, reply, .. } => {
                let _ = reply.send(self.batch(&sql).await);
            }
        }
    }
}

async fn actor(
    config: tokio_postgres::Config,
    label: String,
    mut wrx: tokio::sync::mpsc::UnboundedReceiver<Req>,
    mut rrx: tokio::sync::mpsc::UnboundedReceiver<Req>,
    mut lrx: tokio::sync::mpsc::UnboundedReceiver<Req>,
    ready: SyncSender<Result<()>>,
) {
    let new_slot = || Slot {
        config: config.clone(),
        client: None,
        statements: HashMap::new(),
        in_tx: false,
    };
    let mut writer = new_slot();
    if let Err(e) = writer.client().await {
        let _ = ready.send(Err(StoreError::Open {
            path: label,
            message: e.to_string(),
        }));
        return;
    }
    let _ = ready.send(Ok(()));
    // The writer's requests run in order on their own task.
    let writer_task = tokio::spawn(async move {
        while let Some(req) = wrx.recv().await {
            writer.serve(req).await;
        }
    });
    let mut lease = new_slot();
    let lease_task = tokio::spawn(async move {
        while let Some(req) = lrx.recv().await {
            lease.serve(req).await;
        }
    });
    let readers: Arc<Vec<tokio::sync::Mutex<Slot>>> = Arc::new(
        (0..READERS)
            .map(|_| tokio::sync::Mutex::new(new_slot()))
            .collect(),
    );
    let next = AtomicUsize::new(0);
    while let Some(req) = rrx.recv().await {
        let readers = Arc::clone(&readers);
        let i = next.fetch_add(1, Ordering::Relaxed) % READERS;
        tokio::spawn(async move {
            readers[i].lock().await.serve(req).await;
        });
    }
    let _ = writer_task.await;
    let _ = lease_task.await;
}

// ----- value conversions ----------------------------------------------------

type BoxErr = Box<dyn StdError + Sync + Send>;

fn json_to_sql(s: &str, ty: &Type, out: &mut BytesMut) {
    if *ty == Type::JSONB {
        out.put_u8(1);
    }
    out.put_slice(s.as_bytes());
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxErr> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::NUMERIC => Decimal::from(*v).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Text(s) | Value::Json(s) => match *ty {
                Type::JSON | Type::JSONB => {
                    json_to_sql(s, ty, out);
                    Ok(IsNull::No)
                }
                _ => s.as_str().to_sql(ty, out),
            },
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Dec(d) => match *ty {
                Type::NUMERIC => d.to_sql(ty, out),
                _ => d.to_string().as_str().to_sql(ty, out),
            },
            Value::Time(t) => t.to_sql(ty, out),
            Value::Date(d) => d.to_sql(ty, out),
            Value::Array(v) => v.to_sql(ty, out),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// JSON or JSONB read as its text.
struct JsonText(String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxErr> {
        let body = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(body)?.to_string()))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

fn read_row(r: &tokio_postgres::Row) -> Result<Row> {
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let v = match *c.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Value::Int(v.into()))),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Value::Int(v.into()))),
            Type::BOOL => r.try_get::<_, Option<bool>>(i).map(|v| v.map(Value::Bool)),
            Type::NUMERIC => r
                .try_get::<_, Option<Decimal>>(i)
                .map(|v| v.map(Value::Dec)),
            Type::TIMESTAMPTZ => r
                .try_get::<_, Option<DateTime<Utc>>>(i)
                .map(|v| v.map(Value::Time)),
            Type::DATE => r
                .try_get::<_, Option<NaiveDate>>(i)
                .map(|v| v.map(Value::Date)),
            Type::JSON | Type::JSONB => r
                .try_get::<_, Option<JsonText>>(i)
                .map(|v| v.map(|j| Value::Json(j.0))),
            _ => r
                .try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text)),
        }
        .map_err(err)?;
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

/// Runs one administrative statement on the server of `url` (creating or
/// dropping a database), outside the store. Used by the test suites.
pub fn admin_exec(url: &str, sql: &str) -> std::result::Result<(), String> {
    let config = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, conn) = config
                .connect(NoTls)
                .await
                .map_err(|e| err(e).to_string())?;
            let task = tokio::spawn(conn);
            let res = client
                .batch_execute(&sql)
                .await
                .map_err(|e| err(e).to_string());
            drop(client);
            let _ = task.await;
            res
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}
