//! Every start-up check that reads the world outside the config file, run
//! by `erpsync run` before it touches any state and by
//! `erpsync check-config`, so the two agree.
//!
//! It reads the admin and viewer tokens and the store password (empty,
//! unreadable, a directory, a systemd credential without systemd), checks
//! that `state_dir` (and a SQLite store's folder) is a directory that exists
//! or can be created and is writable, and builds every connector (which
//! reads its credentials). Each failure is a [`Problem`] at the line of the
//! key it is about, so the message is `file:line: key: why` and the process
//! exits 78 (`EX_CONFIG`, which the unit does not restart on). It creates,
//! writes and connects to nothing: the store is not opened here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, Problem};
use crate::connectors::{self, BuildContext, REGISTRY};
use crate::credentials::{StoreCredentials, StoreSlot};
use crate::secrets::SecretSource;
use crate::store::StoreLocation;

/// Runs every check; `Err` lists every problem found.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut tokens = Vec::new();
    for (role, src) in [
        ("admin", &config.http.admin_token),
        ("viewer", &config.http.viewer_token),
    ] {
        let Some(src) = src else { continue };
        let key = source_key(&format!("http.{role}_token"), src);
        match src.load() {
            Ok(s) => tokens.push((key, s)),
            Err(e) => problems.push(config.problem(&key, e)),
        }
    }
    if let [(_, admin), (viewer_key, viewer)] = tokens.as_slice() {
        if admin == viewer {
            problems.push(config.problem(
                viewer_key,
                "the viewer token is the same as the admin token: give the read-only viewer its own token",
            ));
        }
    }
    match &config.daemon.store {
        StoreLocation::Postgres {
            password: Some(src),
            ..
        } => {
            if let Err(e) = src.load() {
                problems.push(config.problem(&source_key("daemon.store_password", src), e));
            }
        }
        StoreLocation::Postgres { .. } => {}
        StoreLocation::Sqlite(file) => {
            if let Some(dir) = file.parent().filter(|d| *d != config.daemon.state_dir) {
                if let Err(e) = usable_dir(dir) {
                    problems.push(config.problem("daemon.store", e));
                }
            }
            if file.is_dir() {
                problems.push(config.problem(
                    "daemon.store",
                    format!("{} is a directory; name the SQLite file", file.display()),
                ));
            }
        }
    }
    if let Err(e) = usable_dir(&config.daemon.state_dir) {
        problems.push(config.problem("daemon.state_dir", e));
    }
    let base = config
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let slot = StoreSlot::default();
    for c in &config.connectors {
        let key = format!("connectors.{}", c.id);
        let Some(kind) = REGISTRY.get(&c.kind) else {
            problems.push(config.problem(&key, format!("unknown kind `{}`", c.kind)));
            continue;
        };
        let cx = BuildContext {
            id: c.id.clone(),
            base_dir: base.clone(),
            config_file: config.file.clone(),
            budget: connectors::Budget::new(c.limits),
            credentials: Arc::new(StoreCredentials::in_slot(Arc::clone(&slot), &c.id)),
        };
        if let Err(e) = kind.build(&c.options, cx) {
            problems.push(config.problem(&key, format!("connector `{}`: {e}", c.id)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: config.file.clone(),
            problems,
        })
    }
}

/// `<prefix>_file` or `<prefix>_credential`, whichever `src` came from.
fn source_key(prefix: &str, src: &SecretSource) -> String {
    match src {
        SecretSource::File(_) => format!("{prefix}_file"),
        SecretSource::Credential(_) => format!("{prefix}_credential"),
    }
}

/// Whether `dir` is a writable directory, or can be created as one (its
/// nearest existing ancestor is a writable directory). Creates nothing.
pub fn usable_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => writable(dir),
        Ok(_) => Err(format!("{} exists and is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut up: PathBuf = dir.to_path_buf();
            loop {
                if !up.pop() || up.as_os_str().is_empty() {
                    up = PathBuf::from(".");
                }
                match std::fs::metadata(&up) {
                    Ok(m) if m.is_dir() => {
                        return writable(&up).map_err(|e| {
                            format!(
                                "{} does not exist and cannot be created: {e}",
                                dir.display()
                            )
                        })
                    }
                    Ok(_) => {
                        return Err(format!(
                            "{} cannot be created: {} is not a directory",
                            dir.display(),
                            up.display()
                        ))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(format!("{} cannot be created: {e}", dir.display())),
                }
            }
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn writable(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: access() only reads the NUL-terminated path.
    let ok = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not writable by this user ({})",
            dir.display(),
            std::io::Error::last_os_error()
        ))
    }
}
