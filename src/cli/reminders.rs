//! `erpsync stop|unstop|hold|release` and `erpsync reminders ...`: clients
//! of the daemon's reminder routes (see `http::admin::reminders`).
//!
//! They only format requests and answers; every decision is the daemon's.

use anyhow::bail;
use serde_json::{json, Value};

use super::client::{cell, enc, print_table, ApiClient};
use super::{Command, ConfigArg};

#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    /// The customer, as CONNECTOR:ID (e.g. demo:C00042).
    pub customer: String,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Who asks; defaults to cli:$USER.
    #[arg(long)]
    pub actor: Option<String>,
    /// `stop` only: the last day of the STOP (YYYY-MM-DD); from the day
    /// after, the customer is selectable again by itself.
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
    /// `stop` only: a note kept with the flag.
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// The invoice, as CONNECTOR:INVOICE_ID (e.g. demo:INV000042).
    pub invoice: String,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Who asks; defaults to cli:$USER.
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Subcommand)]
pub enum RemindersCommand {
    /// List the customers with money due: who is selected for reminding, and
    /// why the others are not.
    Candidates(CandidatesArgs),
    /// Say where one customer stands for reminders, and why.
    Show {
        /// The customer, as CONNECTOR:ID.
        customer: String,
        /// Judge as of this date (YYYY-MM-DD); default today (UTC).
        #[arg(long)]
        as_of: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the STOP flags.
    Stops(ConfigArg),
    /// List the invoice holds set by admins.
    Holds(ConfigArg),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CandidatesArgs {
    /// Only customers of this scenario.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Only selected (true) or only unchecked (false) customers.
    #[arg(long)]
    pub selected: Option<bool>,
    /// Judge as of this date (YYYY-MM-DD); default today (UTC).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Only customers of this connector.
    #[arg(long)]
    pub connector: Option<String>,
    /// Print the daemon's CSV export instead of a table.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

fn default_actor() -> String {
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(u) if !u.is_empty() => format!("cli:{u}"),
        _ => "cli".to_string(),
    }
}

/// Runs one of the reminder commands.
pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Stop(a) => {
            let mut body = json!({"customer": a.customer, "reason": a.reason, "actor": a.actor.unwrap_or_else(default_actor)});
            if let Some(u) = a.until {
                body["until"] = json!(u);
            }
            if let Some(n) = a.note {
                body["note"] = json!(n);
            }
            flag(&a.config, "stop", body).await
        }
        Command::Unstop(a) => {
            if a.until.is_some() || a.note.is_some() {
                bail!("--until and --note are terms of a STOP; `unstop` takes neither");
            }
            flag(&a.config, "unstop", json!({"customer": a.customer, "reason": a.reason, "actor": a.actor.unwrap_or_else(default_actor)})).await
        }
        Command::Hold(a) => flag(&a.config, "hold", json!({"invoice": a.invoice, "reason": a.reason, "actor": a.actor.unwrap_or_else(default_actor)})).await,
        Command::Release(a) => flag(&a.config, "release", json!({"invoice": a.invoice, "reason": a.reason, "actor": a.actor.unwrap_or_else(default_actor)})).await,
        Command::Reminders(RemindersCommand::Candidates(a)) => candidates(a).await,
        Command::Reminders(RemindersCommand::Show {
            customer,
            as_of,
            json,
            config,
        }) => {
            let c = ApiClient::from_args(&config)?;
            let mut path = format!("/api/v1/reminders/customers/{}", enc(&customer));
            if let Some(d) = as_of {
                path += &format!("?as_of={}", enc(&d));
            }
            let v = c.get_json(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_show(&v);
            }
            Ok(())
        }
        Command::Reminders(RemindersCommand::Stops(config)) => {
            let c = ApiClient::from_args(&config)?;
            let v = c.get_json("/api/v1/reminders/stops").await?;
            let rows = rows_of(&v, &["customer", "actor", "at", "reason", "until", "note"]);
            print_table(&["CUSTOMER", "BY", "AT", "REASON", "UNTIL", "NOTE"], &rows);
            note_truncated(&v);
            Ok(())
        }
        Command::Reminders(RemindersCommand::Holds(config)) => {
            let c = ApiClient::from_args(&config)?;
            let v = c.get_json("/api/v1/reminders/holds").await?;
            let rows = rows_of(&v, &["invoice", "customer", "actor", "at", "reason"]);
            print_table(&["INVOICE", "CUSTOMER", "BY", "AT", "REASON"], &rows);
            note_truncated(&v);
            Ok(())
        }
        other => bail!("not a reminders command: {other:?}"),
    }
}

async fn flag(config: &ConfigArg, action: &str, body: Value) -> anyhow::Result<()> {
    let c = ApiClient::from_args(config)?;
    let v = c
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/reminders/{action}"),
            &body,
        )
        .await?;
    println!("{}", cell(v.get("message")));
    Ok(())
}

fn rows_of(v: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| fields.iter().map(|f| cell(i.get(*f))).collect())
                .collect()
        })
        .unwrap_or_default()
}

fn note_truncated(v: &Value) {
    if v["truncated"] == Value::Bool(true) {
        println!(
            "(more exist; only the first {} are shown)",
            v["items"].as_array().map_or(0, Vec::len)
        );
    }
}

async fn candidates(a: CandidatesArgs) -> anyhow::Result<()> {
    let c = ApiClient::from_args(&a.config)?;
    let mut query: Vec<String> = Vec::new();
    if let Some(s) = &a.scenario {
        query.push(format!("scenario={}", enc(s)));
    }
    if let Some(s) = a.selected {
        query.push(format!("selected={s}"));
    }
    if let Some(d) = &a.as_of {
        query.push(format!("as_of={}", enc(d)));
    }
    if let Some(conn) = &a.connector {
        query.push(format!("connector={}", enc(conn)));
    }
    if a.csv {
        let path = format!("/api/v1/reminders/candidates.csv?{}", query.join("&"));
        print!("{}", c.get_text(&path).await?);
        return Ok(());
    }
    let mut rows: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let as_of = loop {
        let mut q = query.clone();
        q.push("limit=1000".into());
        if let Some(cur) = &cursor {
            q.push(format!("cursor={}", enc(cur)));
        }
        let page = c
            .get_json(&format!("/api/v1/reminders/candidates?{}", q.join("&")))
            .await?;
        if let Some(items) = page["candidates"].as_array() {
            rows.extend(items.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break cell(page.get("as_of")),
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_candidates(&rows, &as_of);
    Ok(())
}

/// `USD 120.00; EUR 5.00` from `{"USD": "120.00", "EUR": "5.00"}`.
fn totals(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(cur, a)| format!("{cur} {}", cell(Some(a))))
            .collect::<Vec<_>>()
            .join("; "),
        _ => "-".into(),
    }
}

fn reasons(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| cell(Some(r)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_candidates(rows: &[Value], as_of: &str) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r["selected"] == Value::Bool(true) {
                    "[x]".to_string()
                } else {
                    "[ ]".to_string()
                },
                cell(r.get("customer")),
                cell(r.get("name")),
                cell(r.get("scenario")),
                totals(&r["total_due"]),
                cell(r.get("overdue_invoices")),
                cell(r.get("oldest_due_date")),
                cell(r.get("balance")),
                reasons(&r["reasons"]),
            ]
        })
        .collect();
    print_table(
        &[
            "SEL",
            "CUSTOMER",
            "NAME",
            "SCENARIO",
            "TOTAL DUE",
            "OVERDUE",
            "OLDEST DUE",
            "BALANCE",
            "NOT SELECTED BECAUSE",
        ],
        &table,
    );
    let selected = rows
        .iter()
        .filter(|r| r["selected"] == Value::Bool(true))
        .count();
    println!(
        "{} listed as of {as_of}: {selected} selected [x], {} unchecked [ ]",
        rows.len(),
        rows.len() - selected
    );
}

fn print_show(v: &Value) {
    println!("{}: {}", cell(v.get("customer")), cell(v.get("summary")));
    if let Some(c) = v.get("candidate").filter(|c| !c.is_null()) {
        println!(
            "  scenario: {}, total due: {}, overdue invoices: {}, oldest due: {}, balance: {}",
            cell(c.get("scenario")),
            totals(&c["total_due"]),
            cell(c.get("overdue_invoices")),
            cell(c.get("oldest_due_date")),
            cell(c.get("balance"))
        );
    }
    if let Some(held) = v["held_invoices"].as_array() {
        for h in held {
            let by = match h.get("hold").filter(|h| !h.is_null()) {
                Some(f) => format!(
                    "held by {}: {}",
                    cell(f.get("actor")),
                    cell(f.get("reason"))
                ),
                None => "on hold in the ERP".into(),
            };
            println!(
                "  not counted: {} {} {} due {} ({by})",
                cell(h.get("invoice")),
                cell(h.get("currency")),
                cell(h.get("amount_due")),
                cell(h.get("due_date"))
            );
        }
    }
}
