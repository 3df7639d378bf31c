//! `erpsync resyncs list|show|watch|retry` and `erpsync resync CONNECTOR:ID...`:
//! clients of the daemon's `/api/v1/resyncs` endpoints. They only print what
//! the daemon answers; progress and ETA are computed by the daemon.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::client::{cell, enc, print_table, ApiClient};
use super::{ConfigArg, OutputArgs};
use crate::model::CustomerKey;

#[derive(Debug, Subcommand)]
pub enum ResyncsCommand {
    /// List resync jobs with progress, rate and ETA.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
        /// Only jobs in this state: queued, running, done, failed or unfinished.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one job and its first pending customers.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
        id: u64,
    },
    /// Show live progress bars until every queued or running job finished.
    Watch {
        #[command(flatten)]
        config: ConfigArg,
        /// How often to ask the daemon, e.g. 500ms or 2s.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Put a failed job back in the queue.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
        id: u64,
    },
}

/// `erpsync resync CONNECTOR:ID...`
#[derive(Debug, clap::Args)]
pub struct ResyncArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Included customers whose full history to fetch again, e.g. demo:C00042.
    #[arg(required = true, value_parser = parse_customer)]
    pub customers: Vec<CustomerKey>,
    /// Why (kept with the job).
    #[arg(long)]
    pub reason: Option<String>,
    /// Then show progress until the jobs finish.
    #[arg(long)]
    pub watch: bool,
}

fn parse_customer(s: &str) -> Result<CustomerKey, String> {
    CustomerKey::parse(s)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("`{s}` is too short; use at least 100ms"));
    }
    Ok(d)
}

pub async fn run(cmd: ResyncsCommand) -> anyhow::Result<()> {
    match cmd {
        ResyncsCommand::List { config, out, state } => {
            let c = ApiClient::from_args(&config)?;
            let path = match &state {
                Some(s) => format!("/api/v1/resyncs?state={}", enc(s)),
                None => "/api/v1/resyncs".to_string(),
            };
            let v = c.get_json(&path).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_jobs(&v);
            }
            Ok(())
        }
        ResyncsCommand::Show { config, out, id } => {
            let c = ApiClient::from_args(&config)?;
            let v = c.get_json(&format!("/api/v1/resyncs/{id}")).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_job(&v);
            }
            Ok(())
        }
        ResyncsCommand::Watch { config, interval } => {
            let c = ApiClient::from_args(&config)?;
            watch(&c, interval, &[]).await
        }
        ResyncsCommand::Retry { config, out, id } => {
            let c = ApiClient::from_args(&config)?;
            let v = c
                .send_json(
                    reqwest::Method::POST,
                    &format!("/api/v1/resyncs/{id}/retry"),
                    &json!({}),
                )
                .await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "resync job {id} queued again: {}/{} customers done",
                    cell(v.get("customers_done")),
                    cell(v.get("customers_total"))
                );
            }
            Ok(())
        }
    }
}

pub async fn resync(a: ResyncArgs) -> anyhow::Result<()> {
    let c = ApiClient::from_args(&a.config)?;
    let customers: Vec<String> = a.customers.iter().map(|k| k.to_string()).collect();
    let mut body = json!({ "customers": customers });
    if let Some(r) = &a.reason {
        body["reason"] = json!(r);
    }
    let v = c
        .send_json(reqwest::Method::POST, "/api/v1/resyncs", &body)
        .await?;
    if a.out.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for j in v["jobs"].as_array().into_iter().flatten() {
            println!(
                "queued resync job {} ({}, {} customers)",
                cell(j.get("id")),
                cell(j.get("connector")),
                cell(j.get("customers"))
            );
        }
        for q in v["already_queued"].as_array().into_iter().flatten() {
            println!(
                "{} already waits in resync job {}",
                cell(q.get("customer")),
                cell(q.get("job"))
            );
        }
    }
    if a.watch {
        let created: Vec<u64> = v["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["id"].as_u64())
            .collect();
        watch(&c, Duration::from_secs(1), &created).await?;
    }
    Ok(())
}

/// `1h02m`, `3m05s`, `42s`.
pub fn human_seconds(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn eta_text(job: &Value) -> String {
    match job["eta"]["seconds"].as_u64() {
        Some(s) => human_seconds(s),
        None if matches!(job["state"].as_str(), Some("queued" | "running")) => "estimating".into(),
        None => "-".into(),
    }
}

fn progress_text(job: &Value) -> String {
    format!(
        "{}/{}",
        cell(job.get("customers_done")),
        cell(job.get("customers_total"))
    )
}

fn print_jobs(v: &Value) {
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no resync jobs");
        return;
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                cell(j.get("id")),
                cell(j.get("connector")),
                cell(j.get("state")),
                progress_text(j),
                cell(j.get("records_fetched")),
                cell(j.get("requests")),
                cell(j["rate"].get("customers_per_minute")),
                eta_text(j),
                match j.get("error") {
                    Some(Value::String(e)) => format!("error: {e}"),
                    _ => cell(j.get("reason")),
                },
            ]
        })
        .collect();
    print_table(
        &[
            "JOB",
            "CONNECTOR",
            "STATE",
            "CUSTOMERS",
            "RECORDS",
            "REQUESTS",
            "CUST/MIN",
            "ETA",
            "REASON",
        ],
        &rows,
    );
}

fn print_job(j: &Value) {
    println!(
        "resync job {} ({}) — {}",
        cell(j.get("id")),
        cell(j.get("connector")),
        cell(j.get("state"))
    );
    println!("reason:     {}", cell(j.get("reason")));
    println!(
        "customers:  {} done, {} records, {} requests",
        progress_text(j),
        cell(j.get("records_fetched")),
        cell(j.get("requests"))
    );
    println!(
        "created:    {}; started {}; finished {}",
        cell(j.get("created_at")),
        cell(j.get("started_at")),
        cell(j.get("finished_at"))
    );
    println!(
        "rate:       {} customers/min, {} requests/s (budget allows {}/s)",
        cell(j["rate"].get("customers_per_minute")),
        cell(j["rate"].get("requests_per_second")),
        cell(j["rate"].get("allowed_requests_per_second"))
    );
    println!("eta:        {}", eta_text(j));
    if let Some(Value::String(e)) = j.get("error") {
        println!("error:      {e}");
    }
    let pending = j["pending_customers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !pending.is_empty() {
        let more = if j["pending_truncated"] == Value::Bool(true) {
            ", ..."
        } else {
            ""
        };
        println!(
            "pending:    {}{more}",
            pending
                .iter()
                .map(|p| cell(Some(p)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Progress bars for every queued or running job (and the jobs in `follow`,
/// even if they already finished), until none is left. Fails when a watched
/// job failed.
async fn watch(c: &ApiClient, interval: Duration, follow: &[u64]) -> anyhow::Result<()> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:>10} [{bar:32}] {pos}/{len} customers  {msg}")
            .context("progress bar template")?
            .progress_chars("=> ");
    let mut bars: BTreeMap<u64, ProgressBar> = BTreeMap::new();
    let mut failed = Vec::new();
    loop {
        let v = c.get_json("/api/v1/resyncs").await?;
        let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
        let mut active = 0;
        for j in &jobs {
            let Some(id) = j["id"].as_u64() else { continue };
            let state = j["state"].as_str().unwrap_or("");
            let is_active = matches!(state, "queued" | "running");
            active += usize::from(is_active);
            if !is_active && !bars.contains_key(&id) && !follow.contains(&id) {
                continue;
            }
            let bar = bars.entry(id).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(format!("job {id}"));
                b
            });
            if bar.is_finished() {
                continue;
            }
            bar.set_length(j["customers_total"].as_u64().unwrap_or(0));
            bar.set_position(j["customers_done"].as_u64().unwrap_or(0));
            let summary = format!(
                "{} records, {} requests",
                cell(j.get("records_fetched")),
                cell(j.get("requests"))
            );
            match state {
                "done" => {
                    bar.finish_with_message(format!("done: {summary}"));
                    println!("resync job {id} done: {}, {summary}", progress_text(j));
                }
                "failed" => {
                    let err = cell(j.get("error"));
                    bar.abandon_with_message(format!("failed: {err}"));
                    println!("resync job {id} failed: {err}");
                    failed.push(format!("{id} ({err})"));
                }
                _ => bar.set_message(format!("{summary}, ETA {}", eta_text(j))),
            }
        }
        // A watched job pruned from the list has finished long ago.
        let listed: Vec<u64> = jobs.iter().filter_map(|j| j["id"].as_u64()).collect();
        for (id, bar) in &bars {
            if !listed.contains(id) && !bar.is_finished() {
                bar.finish_with_message("finished");
            }
        }
        if active == 0 {
            if bars.is_empty() {
                println!("no resync job is queued or running");
            }
            break;
        }
        tokio::time::sleep(interval).await;
    }
    if !failed.is_empty() {
        bail!("resync job(s) failed: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_seconds(0), "0s");
        assert_eq!(human_seconds(59), "59s");
        assert_eq!(human_seconds(185), "3m05s");
        assert_eq!(human_seconds(3720), "1h02m");
    }

    #[test]
    fn bad_customer_references_and_intervals_are_refused_with_a_reason() {
        assert!(parse_customer("nocolon")
            .unwrap_err()
            .contains("CONNECTOR:EXTERNAL_ID"));
        assert!(parse_interval("10ms")
            .unwrap_err()
            .contains("at least 100ms"));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
    }
}
