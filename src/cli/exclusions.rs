//! CLI commands for exclusions: `customers search|explain`, `exclude`,
//! `reinclude`, `excluded export` and `rules preview`.
//!
//! Each is a client of the running daemon's admin API (address and token
//! from `--config`, see [`ApiClient`]); none opens the store. Output is a
//! human table or, with `--json`, the API's JSON. The actor recorded for
//! manual decisions is `$USER`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{cell, enc, print_table, ApiClient};
use super::{ConfigArg, OutputArgs};
use crate::config;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find customers (excluded ones too) and explain their classification.
    Customers {
        #[command(subcommand)]
        cmd: CustomersCmd,
    },
    /// Exclude customers by hand.
    ///
    /// Their invoices and transactions are deleted and never synced again.
    /// Works before a customer's first sync too.
    Exclude {
        /// Customers as CONNECTOR:EXTERNAL_ID, e.g. demo:C00042.
        #[arg(required = true, value_name = "CONNECTOR:ID")]
        customers: Vec<String>,
        /// Why (kept in the audit trail).
        #[arg(long, short = 'r')]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Re-include customers by hand and queue the resync of their history.
    ///
    /// The decision sticks against rules and native exclusions.
    Reinclude {
        #[arg(required = true, value_name = "CONNECTOR:ID")]
        customers: Vec<String>,
        #[arg(long, short = 'r')]
        reason: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The list of excluded customers.
    Excluded {
        #[command(subcommand)]
        cmd: ExcludedCmd,
    },
    /// Smart rules.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustomersCmd {
    /// Search by name, email or external id (case-insensitive).
    Search {
        /// Text to look for; empty lists everyone.
        #[arg(default_value = "")]
        q: String,
        #[arg(long)]
        connector: Option<String>,
        /// included or excluded
        #[arg(long)]
        state: Option<String>,
        /// native, rule or manual
        #[arg(long)]
        source: Option<String>,
        /// Continue after this CONNECTOR:ID (printed at the end of a page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Why a customer is or is not excluded.
    Explain {
        #[arg(value_name = "CONNECTOR:ID")]
        customer: String,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExcludedCmd {
    /// Export the excluded list as CSV.
    Export {
        /// Write to FILE instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// Show what the rules in --config would change, without applying them.
    ///
    /// --config may be an edited copy of the daemon's file; the daemon is
    /// reached with the address and token of that same file.
    Preview {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
    },
}

fn actor() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "cli".into())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Customers {
            cmd:
                CustomersCmd::Search {
                    q,
                    connector,
                    state,
                    source,
                    after,
                    limit,
                    config,
                    out,
                },
        } => {
            let c = ApiClient::from_args(&config)?;
            let mut path = format!("/api/v1/customers?q={}&limit={limit}", enc(&q));
            for (k, v) in [
                ("connector", connector),
                ("state", state),
                ("source", source),
                ("after", after),
            ] {
                if let Some(v) = v {
                    path += &format!("&{k}={}", enc(&v));
                }
            }
            let v = c.get_json(&path).await?;
            if out.json {
                return print_json(&v);
            }
            print_customers(&v);
            Ok(())
        }
        Command::Customers {
            cmd:
                CustomersCmd::Explain {
                    customer,
                    config,
                    out,
                },
        } => {
            let key = crate::model::CustomerKey::parse(&customer).map_err(|e| anyhow!(e))?;
            let c = ApiClient::from_args(&config)?;
            let v = c
                .get_json(&format!(
                    "/api/v1/customers/{}/{}/explain",
                    enc(&key.connector),
                    enc(&key.external_id)
                ))
                .await?;
            if out.json {
                return print_json(&v);
            }
            print_explain(&v);
            Ok(())
        }
        Command::Exclude {
            customers,
            reason,
            config,
            out,
        } => {
            let c = ApiClient::from_args(&config)?;
            let body = json!({"customers": customers, "reason": reason, "actor": actor()});
            let v = c
                .send_json(reqwest::Method::POST, "/api/v1/exclusions", &body)
                .await?;
            if out.json {
                return print_json(&v);
            }
            println!(
                "excluded {} customer(s) ({} waiting for their first sync, {} already excluded by hand); deleted {} invoices and {} transactions",
                cell(v.get("changed")),
                cell(v.get("pending")),
                cell(v.get("unchanged")),
                cell(v.get("purged_invoices")),
                cell(v.get("purged_transactions")),
            );
            print_effects(&v);
            Ok(())
        }
        Command::Reinclude {
            customers,
            reason,
            config,
            out,
        } => {
            let c = ApiClient::from_args(&config)?;
            let mut body = json!({"customers": customers, "actor": actor()});
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            let v = c
                .send_json(reqwest::Method::POST, "/api/v1/reinclusions", &body)
                .await?;
            if out.json {
                return print_json(&v);
            }
            println!(
                "re-included {} customer(s) ({} already re-included by hand); {} queued for resync",
                cell(v.get("changed")),
                cell(v.get("unchanged")),
                cell(v.get("queued_for_resync")),
            );
            print_effects(&v);
            Ok(())
        }
        Command::Excluded {
            cmd: ExcludedCmd::Export { output, config },
        } => {
            let c = ApiClient::from_args(&config)?;
            let text = c.get_text("/api/v1/excluded.csv").await?;
            let rows = text.lines().count().saturating_sub(1);
            match output {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {rows} excluded customers to {}", path.display());
                }
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(())
        }
        Command::Rules {
            cmd: RulesCmd::Preview { config, out },
        } => {
            let cfg = config::load(&config.config, &crate::connectors::REGISTRY)
                .map_err(|e| anyhow!("{e}"))?;
            let rules = serde_json::to_value(cfg.rules.rules())?;
            let c = ApiClient::from_args(&config)?;
            let v = c
                .send_json(
                    reqwest::Method::POST,
                    "/api/v1/rules/preview",
                    &json!({ "rules": rules }),
                )
                .await?;
            if out.json {
                return print_json(&v);
            }
            print_preview(&v, &config.config);
            Ok(())
        }
    }
}

fn state_of(c: &Value) -> String {
    if c["excluded"].as_bool() == Some(true) {
        "excluded".into()
    } else {
        "included".into()
    }
}

fn print_customers(v: &Value) {
    let rows: Vec<Vec<String>> = v["customers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    vec![
                        cell(c.get("customer")),
                        cell(c.get("name")),
                        cell(c.get("email")),
                        state_of(c),
                        cell(c.get("reason")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no customer matches");
        return;
    }
    print_table(&["CUSTOMER", "NAME", "EMAIL", "STATE", "REASON"], &rows);
    if let Some(next) = v["next"].as_str() {
        println!("more: add --after {next}");
    }
}

fn print_effects(v: &Value) {
    let rows: Vec<Vec<String>> = v["customers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    vec![
                        cell(c.get("customer")),
                        cell(c.get("effect")),
                        cell(c["classification"].get("reason")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&["CUSTOMER", "EFFECT", "CLASSIFICATION"], &rows);
}

fn print_explain(v: &Value) {
    println!("{}  {}", cell(v.get("customer")), cell(v.get("name")));
    let state = if v["synced"].as_bool() == Some(false) {
        format!("not synced yet ({})", state_of(v))
    } else {
        format!(
            "{} ({}) since {}",
            state_of(v),
            cell(v["classification"].get("reason")),
            cell(v.get("classified_at"))
        )
    };
    println!("state:   {state}");
    println!("why:     {}", cell(v.get("summary")));
    if let Some(r) = v.get("reminder").filter(|r| !r.is_null()) {
        println!("reminder: {}", cell(r.get("summary")));
    }
    let manual = match v.get("manual").filter(|m| !m.is_null()) {
        Some(m) => format!(
            "{} by {} at {}: {}",
            cell(m.get("action")),
            cell(m.get("actor")),
            cell(m.get("at")),
            cell(m.get("reason"))
        ),
        None => "none".into(),
    };
    println!("manual:  {manual}");
    let native: Vec<String> = v["native"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    format!(
                        "{} ({}, {})",
                        cell(n.get("name")),
                        if n["enabled"].as_bool() == Some(true) {
                            "enabled"
                        } else {
                            "disabled"
                        },
                        if n["applies"].as_bool() == Some(true) {
                            "applies"
                        } else {
                            "does not apply"
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if !native.is_empty() {
        println!("native:  {}", native.join(", "));
    }
    let rules: Vec<String> = v["rules"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let how = if r["overridden"].as_bool() == Some(true) {
                        "overridden by the manual decision"
                    } else if r["decisive"].as_bool() == Some(true) {
                        "decides"
                    } else {
                        "also matches"
                    };
                    format!("{} ({how})", cell(r.get("id")))
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "rules:   {}",
        if rules.is_empty() {
            "none match".into()
        } else {
            rules.join(", ")
        }
    );
    let history: Vec<Vec<String>> = v["history"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    let change = match (h["from"].get("reason"), h["to"].get("reason")) {
                        (None, None) => String::new(),
                        (from, to) => format!("{} -> {}", cell(from), cell(to)),
                    };
                    vec![
                        cell(h.get("at")),
                        cell(h.get("action")),
                        cell(h.get("actor")),
                        cell(h.get("reason")),
                        change,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !history.is_empty() {
        println!("history:");
        print_table(&["AT", "ACTION", "ACTOR", "REASON", "CHANGE"], &history);
    }
}

fn print_preview(v: &Value, file: &std::path::Path) {
    let imp = &v["impact"];
    println!("rules in {}: {}", file.display(), cell(v.get("message")));
    if v["would_be_refused"].as_bool() == Some(true) {
        println!(
            "WARNING: a reload with these rules would be refused (more than max_new_exclusion_ratio {} of customers newly excluded)",
            cell(v.get("max_new_exclusion_ratio"))
        );
    }
    let rules: Vec<Vec<String>> = imp["rules"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    vec![
                        cell(r.get("id")),
                        cell(r.get("matching")),
                        cell(r.get("excluding")),
                        cell(r.get("description")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !rules.is_empty() {
        print_table(&["RULE", "MATCHING", "EXCLUDING", "DESCRIPTION"], &rules);
    }
    for (title, list) in [
        ("would exclude", &imp["newly_excluded"]),
        ("would re-include", &imp["newly_included"]),
    ] {
        let rows: Vec<Vec<String>> = list
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        vec![
                            cell(c.get("customer")),
                            cell(c.get("name")),
                            cell(c.get("from")),
                            cell(c.get("to")),
                            cell(c.get("invoices")),
                            cell(c.get("transactions")),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        if rows.is_empty() {
            continue;
        }
        println!("\n{title}:");
        print_table(
            &["CUSTOMER", "NAME", "FROM", "TO", "INVOICES", "TRANSACTIONS"],
            &rows,
        );
    }
    if imp["truncated"].as_bool() == Some(true) {
        println!("(lists cut at 1000 customers; use --json for the counts)");
    }
}
