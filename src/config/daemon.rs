//! `[daemon]`: state directory, log filter, shutdown timeout, the store
//! (SQLite file or PostgreSQL URL, password source, cache, retention).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawDaemon;
use super::{duration, resolve, DaemonConfig, Problems};
use crate::secrets::SecretSource;

pub(super) fn compile(d: RawDaemon, base: &Path, p: &mut Problems<'_>) -> DaemonConfig {
    let state_dir = match &d.state_dir {
        Some(s) => {
            p.remember(s.span(), "daemon.state_dir");
            resolve(base, Path::new(s.get_ref()))
        }
        None => PathBuf::from("/var/lib/erpsync"),
    };
    let shutdown_timeout = match &d.shutdown_timeout {
        Some(s) => duration::parse(s.get_ref()).unwrap_or_else(|e| {
            p.at(Some(s.span()), "daemon.shutdown_timeout", e);
            Duration::from_secs(8)
        }),
        None => Duration::from_secs(8),
    };
    let store_failure_timeout = match &d.store_failure_timeout {
        Some(s) => duration::parse_within(
            s.get_ref(),
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )
        .unwrap_or_else(|e| {
            p.at(Some(s.span()), "daemon.store_failure_timeout", e);
            Duration::from_secs(300)
        }),
        None => Duration::from_secs(300),
    };
    let lease_timeout = match &d.lease_timeout {
        Some(s) => duration::parse_within(
            s.get_ref(),
            Duration::from_secs(5),
            Duration::from_secs(3600),
        )
        .unwrap_or_else(|e| {
            p.at(Some(s.span()), "daemon.lease_timeout", e);
            DEFAULT_LEASE_TIMEOUT
        }),
        None => DEFAULT_LEASE_TIMEOUT,
    };
    let store_cache_mb = match &d.store_cache_mb {
        Some(v) => {
            if !(1..=1 << 20).contains(v.get_ref()) {
                p.at(
                    Some(v.span()),
                    "daemon.store_cache_mb",
                    format!("must be between 1 and 1048576 (MiB), got {}", v.get_ref()),
                );
            }
            *v.get_ref()
        }
        None => crate::store::DEFAULT_CACHE_MB,
    };
    let password = match (&d.store_password_file, &d.store_password_credential) {
        (Some(_), Some(c)) => {
            p.at(
                Some(c.span()),
                "daemon.store_password_credential",
                "set either store_password_file or store_password_credential, not both",
            );
            None
        }
        (Some(f), None) => {
            p.remember(f.span(), "daemon.store_password_file");
            let path = resolve(base, Path::new(f.get_ref()));
            if let Err(e) = crate::secrets::check_file(&path) {
                p.at(Some(f.span()), "daemon.store_password_file", e);
            }
            Some((f.span(), SecretSource::File(path)))
        }
        (None, Some(c)) => {
            p.remember(c.span(), "daemon.store_password_credential");
            Some((c.span(), SecretSource::Credential(c.get_ref().clone())))
        }
        (None, None) => None,
    };
    if let Some(v) = &d.store {
        p.remember(v.span(), "daemon.store");
    }
    let store = match &d.store {
        Some(v)
            if v.get_ref().starts_with("postgres://")
                || v.get_ref().starts_with("postgresql://") =>
        {
            if let Err(e) = crate::store::pg::parse_url(v.get_ref()) {
                p.at(Some(v.span()), "daemon.store", e);
            }
            if let Some(c) = &d.store_cache_mb {
                p.at(
                    Some(c.span()),
                    "daemon.store_cache_mb",
                    "has no effect with a PostgreSQL store (its cache is the server's shared_buffers); remove it"
                );
            }
            crate::store::StoreLocation::Postgres {
                url: v.get_ref().clone(),
                password: password.map(|(_, s)| s),
            }
        }
        other => {
            if let Some((span, _)) = &password {
                p.at(
                    Some(span.clone()),
                    "daemon.store_password_file",
                    "a store password only applies to a PostgreSQL store (store = \"postgres://...\")"
                );
            }
            match other {
                Some(v) if v.get_ref().trim().is_empty() => {
                    p.at(
                        Some(v.span()),
                        "daemon.store",
                        "must not be empty; omit it for store.db in state_dir",
                    );
                    crate::store::StoreLocation::in_state_dir(&state_dir)
                }
                Some(v) if v.get_ref().contains("://") && !v.get_ref().starts_with("sqlite://") => {
                    p.at(
                        Some(v.span()),
                        "daemon.store",
                        format!(
                            "`{}` is neither a postgres:// URL nor a SQLite file path",
                            v.get_ref()
                        ),
                    );
                    crate::store::StoreLocation::in_state_dir(&state_dir)
                }
                Some(v) => {
                    let path = v.get_ref().strip_prefix("sqlite://").unwrap_or(v.get_ref());
                    crate::store::StoreLocation::Sqlite(resolve(base, Path::new(path)))
                }
                None => crate::store::StoreLocation::in_state_dir(&state_dir),
            }
        }
    };
    let mut retention = crate::store::Retention::default();
    for (v, key, slot) in [
        (
            &d.tombstone_retention_days,
            "daemon.tombstone_retention_days",
            &mut retention.tombstones,
        ),
        (
            &d.audit_retention_days,
            "daemon.audit_retention_days",
            &mut retention.audit,
        ),
        (
            &d.resync_job_retention_days,
            "daemon.resync_job_retention_days",
            &mut retention.finished_jobs,
        ),
    ] {
        if let Some(v) = v {
            let days = *v.get_ref();
            if !(1..=36_500).contains(&days) {
                p.at(
                    Some(v.span()),
                    key,
                    format!("must be between 1 and 36500 (days), got {days}"),
                );
            } else {
                *slot = chrono::Duration::days(days as i64);
            }
        }
    }
    let log_level = match &d.log_level {
        Some(v) => {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(v.get_ref()) {
                p.at(
                    Some(v.span()),
                    "daemon.log_level",
                    format!("`{}` is not a log filter: {e}", v.get_ref()),
                );
            }
            v.get_ref().clone()
        }
        None => "info".to_string(),
    };
    DaemonConfig {
        state_dir,
        log_level,
        shutdown_timeout,
        store_cache_mb,
        store,
        retention,
        store_failure_timeout,
        lease_timeout,
    }
}

/// How long a connector's lease lasts without renewal when several daemons
/// share a PostgreSQL store (`daemon.lease_timeout`).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
