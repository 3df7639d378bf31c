//! The `erpsync` command line.
//!
//! `run` and `check-config` work on the config file directly; every other
//! command is a client of the running daemon's HTTP port ([`client`]), using
//! the listen address and admin token from the same config file.

pub mod client;
pub mod connectors;
pub mod exclusions;
pub mod readside;
pub mod reminders;
pub mod resyncs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, EX_CONFIG};

pub use crate::config::DEFAULT_FILE as DEFAULT_CONFIG;

#[derive(Debug, Parser)]
#[command(
    name = "erpsync",
    version,
    about = "Sync ERP customers, invoices and transactions; keep excluded customers out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Path to the config file.
    #[arg(long, short = 'c', default_value = DEFAULT_CONFIG, env = "ERPSYNC_CONFIG")]
    pub config: PathBuf,
    /// Read the admin token from this file instead of the config's
    /// `http.admin_token_*` (needed when the daemon gets it as a systemd
    /// credential, which only the service can read).
    #[arg(long, env = "ERPSYNC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Validate the config file and print a summary.
    CheckConfig(ConfigArg),
    /// Show the running daemon's status.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Set a STOP flag: the customer stays synced but is never selected for reminders.
    Stop(reminders::StopArgs),
    /// Clear a STOP flag.
    Unstop(reminders::StopArgs),
    /// Put an invoice on hold: it no longer counts toward the total due and is never reminded.
    Hold(reminders::HoldArgs),
    /// Release an invoice hold set with `hold`.
    Release(reminders::HoldArgs),
    /// Reminder candidates: who may be reminded, and why the others may not.
    #[command(subcommand)]
    Reminders(reminders::RemindersCommand),
    #[command(flatten)]
    Exclusions(exclusions::Command),
    /// Resync jobs: list, show, watch progress, retry.
    Resyncs {
        #[command(subcommand)]
        command: resyncs::ResyncsCommand,
    },
    /// Fetch the full history of included customers again (CONNECTOR:ID...).
    Resync(resyncs::ResyncArgs),
    /// Start a poll pass of a connector now (or say one is running).
    Sync(connectors::SyncArgs),
    /// Load the OAuth 2.0 refresh token of a connector (first set-up, or
    /// after it shows `needs_reconnect`); works with the daemon running or
    /// stopped.
    Connect(connectors::ConnectArgs),
    /// Export read-side data as CSV: the open invoices or the customer list.
    #[command(subcommand)]
    Export(readside::ExportCommand),
    /// Webhook endpoints of the change feed: send a signed test message.
    #[command(subcommand)]
    Webhooks(readside::WebhooksCommand),
    /// Imports the dump of an earlier install's store (written by
    /// erpsync-sled-export) into a new, empty store. Run it with the daemon
    /// stopped.
    MigrateStore(MigrateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The JSON-lines dump written by erpsync-sled-export.
    #[arg(long)]
    pub from_dump: PathBuf,
    /// The target store: a SQLite file path or a postgres:// URL (without
    /// password). Default: the `store` of the config file.
    #[arg(long)]
    pub to: Option<String>,
    /// A file holding the PostgreSQL password for `--to`.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    #[arg(long, short = 'c', default_value = DEFAULT_CONFIG, env = "ERPSYNC_CONFIG")]
    pub config: PathBuf,
}

/// Parses arguments, runs the command and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run_daemon(&a.config),
        Command::CheckConfig(a) => match config::load(&a.config, &crate::connectors::REGISTRY)
            .and_then(|c| crate::preflight::check(&c).map(|()| c))
        {
            Ok(c) => {
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EX_CONFIG as u8)
            }
        },
        Command::MigrateStore(a) => migrate_store(&a),
        other => {
            restore_sigpipe();
            client::run(other)
        }
    }
}

/// Client commands print tables meant for pipes (`| head`): let a closed
/// pipe end the process quietly, as other Unix tools do, instead of a panic.
/// The daemon keeps Rust's default (SIGPIPE ignored, errors returned).
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up before any thread is spawned; sets the
    // default disposition of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Under systemd, journald adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!under_systemd && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if under_systemd {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn migrate_store(a: &MigrateArgs) -> ExitCode {
    use crate::store::{Store, StoreLocation, DEFAULT_CACHE_MB};
    let (loc, cache_mb) = match &a.to {
        Some(to) => (
            StoreLocation::parse(
                to,
                a.password_file
                    .clone()
                    .map(crate::secrets::SecretSource::File),
            ),
            DEFAULT_CACHE_MB,
        ),
        None => match config::load(&a.config, &crate::connectors::REGISTRY) {
            Ok(c) => (c.daemon.store.clone(), c.daemon.store_cache_mb),
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(EX_CONFIG as u8);
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("erpsync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = match Store::open_location(&loc, cache_mb) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("erpsync migrate-store: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::migrate::import_dump(&store, &a.from_dump)) {
        Ok(n) => {
            println!(
                "imported {} items into {}: {} customers, {} records, {} parked, {} tombstones, {} audit entries, {} manual decisions, {} resync jobs, {} reminder flags",
                n.items,
                store.describe(),
                n.customers,
                n.records,
                n.parked,
                n.tombstones,
                n.audit,
                n.decisions,
                n.resync_jobs,
                n.flags
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("erpsync migrate-store: {e}; nothing was imported");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(path: &std::path::Path) -> ExitCode {
    // The same checks as `check-config`, before any state is touched.
    let cfg = match config::load(path, &crate::connectors::REGISTRY)
        .and_then(|c| crate::preflight::check(&c).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    init_logging(&cfg.daemon.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("erpsync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("erpsync: {e:#}");
            // A refused start is a configuration problem: systemd must not
            // restart in a loop (RestartPreventExitStatus=78).
            if e.downcast_ref::<crate::reload::StartupRefused>().is_some() {
                ExitCode::from(EX_CONFIG as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
