//! `erpsync export open-invoices|customers` (CSV from the daemon's read
//! side, streamed to a file or standard output) and `erpsync webhooks test
//! <id>` (a signed ping sent straight from this command, with the
//! endpoint's secret and network guard from the config file: it works
//! whether the daemon runs or not).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::Subcommand;

use super::client::{enc, ApiClient, BadConfig};
use super::ConfigArg;
use crate::config;

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Open invoices (with customer name and days overdue) as CSV.
    OpenInvoices {
        /// Only this connector.
        #[arg(long)]
        connector: Option<String>,
        /// Only this customer (CONNECTOR:ID).
        #[arg(long, value_name = "CONNECTOR:ID")]
        customer: Option<String>,
        /// Only this currency.
        #[arg(long)]
        currency: Option<String>,
        /// Due on or after this date (YYYY-MM-DD).
        #[arg(long)]
        due_from: Option<String>,
        /// Due on or before this date (YYYY-MM-DD).
        #[arg(long)]
        due_to: Option<String>,
        /// Write to FILE instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The included customers as CSV (excluded customers never appear).
    Customers {
        #[arg(long)]
        connector: Option<String>,
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Send a signed `webhook.ping` message to an endpoint of the config.
    Test {
        /// The `id` of the `[[webhooks]]` entry.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Streams a CSV download to `output` (or stdout); returns the row count.
async fn download(c: &ApiClient, path: &str, output: Option<&PathBuf>) -> anyhow::Result<u64> {
    let mut resp = c.get_response(path).await?;
    let mut out: Box<dyn std::io::Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut lines = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the export was cut short; the file is incomplete")?
    {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(lines.saturating_sub(1))
}

pub async fn export(cmd: ExportCommand) -> anyhow::Result<()> {
    let (path, output, config, what) = match cmd {
        ExportCommand::OpenInvoices {
            connector,
            customer,
            currency,
            due_from,
            due_to,
            output,
            config,
        } => (
            format!(
                "/api/v1/exports/open-invoices.csv{}",
                query(&[
                    ("connector", &connector),
                    ("customer", &customer),
                    ("currency", &currency),
                    ("due_from", &due_from),
                    ("due_to", &due_to),
                ])
            ),
            output,
            config,
            "open invoices",
        ),
        ExportCommand::Customers {
            connector,
            output,
            config,
        } => (
            format!(
                "/api/v1/exports/customers.csv{}",
                query(&[("connector", &connector)])
            ),
            output,
            config,
            "customers",
        ),
    };
    let c = ApiClient::from_args(&config)?;
    let rows = download(&c, &path, output.as_ref()).await?;
    if let Some(p) = &output {
        eprintln!("wrote {rows} {what} to {}", p.display());
    }
    Ok(())
}

pub async fn webhooks(cmd: WebhooksCommand) -> anyhow::Result<()> {
    let WebhooksCommand::Test { id, config } = cmd;
    let cfg = config::load(&config.config, &crate::connectors::REGISTRY).map_err(BadConfig)?;
    let Some(w) = cfg.webhooks.iter().find(|w| w.id == id) else {
        let known: Vec<&str> = cfg.webhooks.iter().map(|w| w.id.as_str()).collect();
        return Err(anyhow!(
            "no webhook `{id}` in {}; configured: {}",
            config.config.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let secret = w
        .secret
        .load()
        .map_err(|e| anyhow!("webhook `{id}`: secret: {e}"))?;
    let key = crate::feed::webhooks::sign::SigningKey::parse(&secret)
        .map_err(|e| anyhow!("webhook `{id}`: secret: {e}"))?;
    let ep = crate::feed::webhooks::Endpoint::new(w.clone(), key)
        .map_err(|e| anyhow!("webhook `{id}`: {e}"))?;
    match crate::feed::webhooks::ping(&ep).await {
        Ok(status) => {
            println!(
                "webhook `{id}`: {} accepted a signed webhook.ping (HTTP {status})",
                w.target()
            );
            Ok(())
        }
        Err(e) => Err(anyhow!("webhook `{id}`: {}: {e}", w.target())),
    }
}
