//! HTTP client commands: talk to the running daemon on its HTTP port, with
//! the address and admin token from the same config file.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::Command;
use crate::config;

/// A client of the daemon's HTTP port.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    /// Why no token could be read, told when the daemon asks for one.
    token_problem: Option<String>,
    http: reqwest::Client,
}

/// The config file was refused: the CLI exits 78 like `check-config`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadConfig(pub crate::config::ConfigError);

impl ApiClient {
    /// Builds a client from `--config` (address, token source) and
    /// `--token-file`. A token that cannot be read is not an error yet:
    /// `/status` needs none; an admin call that is refused says why.
    pub fn from_args(args: &super::ConfigArg) -> anyhow::Result<ApiClient> {
        let cfg = config::load(&args.config, &crate::connectors::REGISTRY).map_err(BadConfig)?;
        let mut addr = cfg.http.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let source = match &args.token_file {
            Some(p) => Some(crate::secrets::SecretSource::File(p.clone())),
            None => cfg.http.admin_token.clone(),
        };
        let (token, token_problem) = match source {
            Some(src) => match src.load() {
                Ok(t) => (Some(t.expose().to_string()), None),
                Err(e) => (None, Some(format!("cannot read the admin token: {e}; pass --token-file FILE (or ERPSYNC_TOKEN_FILE) with a copy readable by you"))),
            },
            None => (None, Some("no admin token configured (http.admin_token_file or admin_token_credential); pass --token-file FILE".to_string())),
        };
        Ok(ApiClient {
            base: format!("http://{addr}"),
            token,
            token_problem,
            // Never through a proxy: the daemon is local and the bearer
            // token must not leave this machine.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(120))
                .build()?,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = r.send().await.with_context(|| {
            format!(
                "cannot reach erpsync at {} (is the daemon running?)",
                self.base
            )
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            if status == reqwest::StatusCode::UNAUTHORIZED {
                if let Some(p) = &self.token_problem {
                    bail!("{status}: {msg} ({p})");
                }
            }
            bail!("{status}: {msg}");
        }
        Ok(resp)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(self.req(reqwest::Method::GET, path))
            .await?
            .json()
            .await?)
    }

    /// A successful GET's response, to read its body in chunks.
    pub async fn get_response(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self
            .send(self.req(reqwest::Method::GET, path))
            .await?
            .text()
            .await?)
    }

    /// Sends a request and returns the status and JSON body whatever the
    /// status; `None` when the daemon does not answer at all (not running).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<(reqwest::StatusCode, Value)>> {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = match r.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e.without_url())
                    .context(format!("cannot reach erpsync at {}", self.base)))
            }
        };
        let status = resp.status();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or_default();
            match &self.token_problem {
                Some(p) => bail!("{status}: {msg} ({p})"),
                None => bail!("{status}: {msg}"),
            }
        }
        Ok(Some((status, v)))
    }

    /// The address the client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let resp = self.send(self.req(method, path).json(body)).await?;
        let text = resp.text().await?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// Runs a client command on a small single-threaded runtime.
pub fn run(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("erpsync: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(BadConfig(c)) = e.downcast_ref::<BadConfig>() {
                eprint!("{c}");
                return ExitCode::from(crate::config::EX_CONFIG as u8);
            }
            eprintln!("erpsync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Status { config, out } => {
            let c = ApiClient::from_args(&config)?;
            let v = c.get_json("/status").await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        c @ (Command::Stop(_)
        | Command::Unstop(_)
        | Command::Hold(_)
        | Command::Release(_)
        | Command::Reminders(_)) => super::reminders::dispatch(c).await,
        Command::Exclusions(c) => super::exclusions::run(c).await,
        Command::Resyncs { command } => super::resyncs::run(command).await,
        Command::Resync(a) => super::resyncs::resync(a).await,
        Command::Sync(a) => super::connectors::sync(a).await,
        Command::Connect(a) => super::connectors::connect(a).await,
        Command::Export(c) => super::readside::export(c).await,
        Command::Webhooks(c) => super::readside::webhooks(c).await,
        Command::Run(_) | Command::CheckConfig(_) | Command::MigrateStore(_) => {
            unreachable!("handled in cli::main")
        }
    }
}

/// Escapes a value for a URL path segment or query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Prints rows as an aligned text table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ", w = widths[i]);
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// A JSON value as table text (strings without quotes, null as "-").
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn print_status(v: &Value) {
    println!(
        "erpsync {} — up {} s, ready: {}",
        cell(v.get("version")),
        cell(v.get("uptime_seconds")),
        cell(v.get("ready"))
    );
    let c = &v["customers"];
    println!(
        "customers: {} total, {} included, {} excluded ({})",
        cell(c.get("total")),
        cell(c.get("included")),
        cell(c.get("excluded")),
        c["excluded_by_reason"]
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = v["connectors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    vec![
                        cell(c.get("id")),
                        cell(c.get("kind")),
                        cell(c.get("state")),
                        cell(c.get("last_sync_end")),
                        cell(c["counters"].get("synced_invoices")),
                        cell(c["counters"].get("dropped_invoices")),
                        cell(c.get("last_error").and_then(|e| e.get("message"))),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    for w in v["webhooks"].as_array().into_iter().flatten() {
        println!(
            "webhook {} ({}): {}, {} events behind{}",
            cell(w.get("id")),
            cell(w.get("target")),
            cell(w.get("state")),
            cell(w.get("lag_events")),
            match w.get("last_error").and_then(|e| e.get("message")) {
                Some(m) if !w["failing_since"].is_null() || w["state"] == "retrying" =>
                    format!("; last error: {}", cell(Some(m))),
                _ => String::new(),
            }
        );
    }
    for c in v["connectors"].as_array().into_iter().flatten() {
        if let Some(at) = c.get("resumes_at").and_then(Value::as_str) {
            println!(
                "{}: daily request quota used up; requests resume at {at}",
                cell(c.get("id"))
            );
        }
        if let Some(r) = c.get("reconnect") {
            println!(
                "{}: needs reconnecting: {}\n  fix: {}",
                cell(c.get("id")),
                cell(r.get("reason")),
                cell(r.get("command"))
            );
        }
    }
    print_table(
        &[
            "CONNECTOR",
            "KIND",
            "STATE",
            "LAST SYNC",
            "INVOICES",
            "DROPPED",
            "LAST ERROR",
        ],
        &rows,
    );
}
