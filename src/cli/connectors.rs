//! `erpsync sync CONNECTOR` and `erpsync connect CONNECTOR
//! --refresh-token-file FILE`.
//!
//! `sync` asks the running daemon for a poll pass. `connect` loads an OAuth
//! 2.0 refresh token: through the daemon's API when it runs (the connector
//! then refreshes with it at once), or straight into the store when it is
//! stopped (the store's lock tells which). The token is read from a file,
//! never from the command line (it would show in `ps` and shell history),
//! and never printed.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use super::client::{enc, ApiClient, BadConfig};
use super::ConfigArg;
use crate::config;
use crate::connectors::{oauth, REGISTRY};
use crate::credentials::StoreCredentials;
use crate::secrets::SecretSource;
use crate::store::{Store, StoreError};

/// `erpsync sync CONNECTOR`
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The connector id, as in the config.
    pub connector: String,
}

/// `erpsync connect CONNECTOR --refresh-token-file FILE`
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The connector id, as in the config.
    pub connector: String,
    /// A file holding the refresh token (from the ERP's consent flow or its
    /// OAuth playground). Only its first line counts; it is never printed.
    #[arg(long)]
    pub refresh_token_file: PathBuf,
}

pub async fn sync(a: SyncArgs) -> anyhow::Result<()> {
    let c = ApiClient::from_args(&a.config)?;
    let path = format!("/api/v1/connectors/{}/sync", enc(&a.connector));
    let Some((status, v)) = c.call(reqwest::Method::POST, &path, None).await? else {
        bail!(
            "cannot reach erpsync at {} (is the daemon running?)",
            c.base()
        );
    };
    let msg = v.get("error").and_then(Value::as_str).unwrap_or_default();
    match status.as_u16() {
        202 => {
            println!("sync pass of {} started", a.connector);
            Ok(())
        }
        409 if v.get("running") == Some(&Value::Bool(true)) => {
            match v.get("since").and_then(Value::as_str) {
                Some(since) => println!(
                    "a sync pass of {} is already running (since {since})",
                    a.connector
                ),
                None => println!("a sync pass of {} is already running", a.connector),
            }
            Ok(())
        }
        _ => bail!("{status}: {msg}"),
    }
}

pub async fn connect(a: ConnectArgs) -> anyhow::Result<()> {
    let token = SecretSource::File(a.refresh_token_file.clone())
        .load()
        .map_err(|e| anyhow!("{e}"))?;
    let cfg = config::load(&a.config.config, &REGISTRY).map_err(BadConfig)?;
    let cc = cfg.connector(&a.connector).ok_or_else(|| {
        anyhow!(
            "unknown connector `{}`; configured connectors: {}",
            a.connector,
            cfg.connectors
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let uses = REGISTRY
        .get(&cc.kind)
        .is_some_and(|k| k.uses_oauth(&cc.options));
    if !uses {
        bail!(
            "connector `{}` (kind {}) does not use OAuth 2.0; there is no refresh token to load",
            cc.id,
            cc.kind
        );
    }
    let c = ApiClient::from_args(&a.config)?;
    let path = format!("/api/v1/connectors/{}/connect", enc(&a.connector));
    let body = json!({ "refresh_token": token.expose() });
    match c.call(reqwest::Method::POST, &path, Some(&body)).await? {
        Some((status, _)) if status.is_success() => {
            println!(
                "refresh token of {} loaded into the running daemon; it refreshes with it now",
                a.connector
            );
            Ok(())
        }
        Some((status, v)) => {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or_default();
            bail!("{status}: {msg}")
        }
        None => {
            // The daemon is not running: write the store directly. Its lock
            // refuses this if a daemon holds it after all.
            let dir = &cfg.daemon.state_dir;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create state_dir {}", dir.display()))?;
            let store = match Store::open_with_cache(dir, 8) {
                Ok(s) => Arc::new(s),
                Err(StoreError::Locked { .. }) => bail!(
                    "the store in {} is in use by a running erpsync, but its HTTP port {} does not answer; try again when it does",
                    dir.display(),
                    c.base()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open the store in {}", dir.display()))
                }
            };
            let creds = StoreCredentials::new(Arc::clone(&store), &a.connector);
            oauth::connect(&creds, &token)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            store.flush()?;
            println!(
                "refresh token of {} stored in {} (the daemon is not running); it is used when the daemon starts",
                a.connector,
                dir.display()
            );
            Ok(())
        }
    }
}
