//! Test support for the PostgreSQL backend, shared by the unit and the
//! integration suites: a throw-away database on the server named by
//! `ERPSYNC_TEST_PG` (`host:port` or a `postgres://` URL without a password;
//! default `127.0.0.1:5432`, user `postgres`), dropped again on drop.
//!
//! When no server answers, [`TestPg::create`] prints
//! `skipped: <test>: no PostgreSQL at <addr>` and returns `None`, so the
//! test passes without it — unless `ERPSYNC_REQUIRE_PG=1`, then it panics.
//! Never used by the daemon itself.

use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreLocation;

/// A database created for one test.
pub struct TestPg {
    admin_url: String,
    /// `postgres://` URL of the test database.
    pub url: String,
    name: String,
}

/// `(server part "postgres://user@host:port", admin database)`.
fn server() -> (String, String, String) {
    let raw = std::env::var("ERPSYNC_TEST_PG").unwrap_or_else(|_| "127.0.0.1:5432".into());
    let raw = raw.trim().to_string();
    if let Some(rest) = raw
        .strip_prefix("postgres://")
        .or_else(|| raw.strip_prefix("postgresql://"))
    {
        let (authority, db) = match rest.split_once('/') {
            Some((a, d)) => (a.to_string(), d.split('?').next().unwrap_or("").to_string()),
            None => (rest.to_string(), String::new()),
        };
        let authority = if authority.contains('@') {
            authority
        } else {
            format!("postgres@{authority}")
        };
        let db = if db.is_empty() { "postgres".into() } else { db };
        (format!("postgres://{authority}"), db, raw.clone())
    } else {
        (format!("postgres://postgres@{raw}"), "postgres".into(), raw)
    }
}

/// Whether PostgreSQL tests must run (`ERPSYNC_REQUIRE_PG=1`).
pub fn required() -> bool {
    std::env::var("ERPSYNC_REQUIRE_PG").is_ok_and(|v| v == "1")
}

impl TestPg {
    /// Creates a fresh database for `test`, or `None` (after printing the
    /// skip line) when no server answers and PostgreSQL is not required.
    pub fn create(test: &str) -> Option<TestPg> {
        static N: AtomicU64 = AtomicU64::new(0);
        let (base, admin_db, shown) = server();
        let admin_url = format!("{base}/{admin_db}");
        let name = format!(
            "erpsync_t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        match super::pg::admin_exec(
            &admin_url,
            &format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"),
        ) {
            Ok(()) => Some(TestPg {
                url: format!("{base}/{name}"),
                admin_url,
                name,
            }),
            Err(e) => {
                if required() {
                    panic!("{test}: no PostgreSQL at {shown} (ERPSYNC_REQUIRE_PG=1): {e}");
                }
                println!("skipped: {test}: no PostgreSQL at {shown}");
                eprintln!("skipped: {test}: no PostgreSQL at {shown}");
                None
            }
        }
    }

    /// Ends every connection to the test database (a server restart, as
    /// clients see it).
    pub fn terminate_connections(&self) {
        super::pg::admin_exec(
            &self.admin_url,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ),
        )
        .expect("terminate connections");
    }

    pub fn location(&self) -> StoreLocation {
        StoreLocation::Postgres {
            url: self.url.clone(),
            password: None,
        }
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Err(e) = super::pg::admin_exec(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// A store for one test of the store suites, on SQLite (a temporary
/// directory) or on a throw-away PostgreSQL database. Fields drop in order:
/// the store's connections close before its database is dropped.
#[cfg(test)]
pub(crate) struct Fixture {
    pub store: super::Store,
    _dir: Option<tempfile::TempDir>,
    pub pg: Option<TestPg>,
}

#[cfg(test)]
impl Fixture {
    pub fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            store: super::Store::open(dir.path()).unwrap(),
            _dir: Some(dir),
            pg: None,
        }
    }

    /// `None` (after printing why) when no PostgreSQL answers.
    pub fn postgres(test: &str) -> Option<Fixture> {
        let pg = TestPg::create(test)?;
        let store = super::Store::open_location(&pg.location(), super::DEFAULT_CACHE_MB).unwrap();
        Some(Fixture {
            store,
            _dir: None,
            pg: Some(pg),
        })
    }
}

/// `on_both_backends!("store::feed::"; a, b)`: each listed `async fn(&Store)`
/// runs on SQLite (on a multi-threaded runtime, so store work goes through
/// `block_in_place`) and on PostgreSQL (on a single-threaded runtime, the
/// other path); the prefix names the test when PostgreSQL is skipped.
#[cfg(test)]
macro_rules! on_both_backends {
    ($prefix:literal; $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let f = $crate::store::testing::Fixture::sqlite();
                super::$name(&f.store).await;
            }
            #[tokio::test]
            async fn postgres() {
                let Some(f) = $crate::store::testing::Fixture::postgres(
                    concat!($prefix, stringify!($name), "::postgres"),
                ) else {
                    return;
                };
                super::$name(&f.store).await;
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use on_both_backends;
