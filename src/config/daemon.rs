//! `[daemon]`: state directory, log filter, shutdown timeout, store cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawDaemon;
use super::{duration, resolve, DaemonConfig, Problems};

pub(super) fn compile(d: RawDaemon, base: &Path, p: &mut Problems<'_>) -> DaemonConfig {
    let state_dir = match &d.state_dir {
        Some(s) => resolve(base, Path::new(s.get_ref())),
        None => PathBuf::from("/var/lib/erpsync"),
    };
    let shutdown_timeout = match &d.shutdown_timeout {
        Some(s) => duration::parse(s.get_ref()).unwrap_or_else(|e| {
            p.at(Some(s.span()), "daemon.shutdown_timeout", e);
            Duration::from_secs(8)
        }),
        None => Duration::from_secs(8),
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
    }
}
