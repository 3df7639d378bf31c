//! Configuration: the TOML file → a validated [`Config`].
//!
//! Two stages, as in ripgrep's low/high args: serde reads the text into
//! [`raw`] structs (unknown keys and wrong types are refused there, with the
//! file position), then one small compiler per section checks meaning and
//! collects **all** problems before reporting them, each as
//! `file:line: key `k`: what is wrong`:
//! [`daemon`], [`http`], [`exclusions`], [`connectors`] (the keys every
//! connector has), [`rules`], and `[reminders]` in its own module.
//!
//! This module names no connector kind. A connector's options table
//! (`[connectors.<kind>]`) is compiled by the kind itself, reached through
//! the [`ConnectorKinds`] catalog the caller passes in (the connectors
//! registry); the catalog also gives each kind's native exclusions and
//! default limits. One duration syntax serves the whole file ([`duration`]).
//! Relative paths resolve against the config file's folder. Nothing here
//! starts tasks or opens the store; the only I/O is reading the config and
//! checking that referenced files exist.

pub mod connectors;
mod daemon;
pub mod duration;
mod exclusions;
mod feed;
mod http;
mod raw;
mod rules;
#[cfg(test)]
mod tests;
mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize as _;

use crate::reminders::RemindersConfig;
use crate::rules::RuleSet;
use crate::secrets::SecretSource;

pub use connectors::{
    ConnectorConfig, ConnectorKinds, ConnectorOptions, KindSpec, Limits, OptionsCheck, OptionsTable,
};
pub use feed::FeedConfig;
pub use webhooks::{literal_ip, WebhookConfig, WebhookStart};

/// Exit code for configuration errors (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// Where the CLI and the service look for the config file by default.
pub const DEFAULT_FILE: &str = "/etc/erpsync/erpsync.toml";

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// The line of each key that checks after compiling report on (secret
    /// sources, state_dir, store, each connector's `id`), see [`Config::line_of`].
    pub key_lines: BTreeMap<String, usize>,
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub exclusions: ExclusionsConfig,
    pub connectors: Vec<ConnectorConfig>,
    pub rules: RuleSet,
    pub reminders: RemindersConfig,
    /// The change feed's retention (`[feed]`).
    pub feed: FeedConfig,
    /// Webhook endpoints the change feed is delivered to (`[[webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// `tracing` filter used when `RUST_LOG` is not set.
    pub log_level: String,
    /// How long shutdown waits for in-flight work before giving up.
    pub shutdown_timeout: Duration,
    /// SQLite's page cache of the writer connection in MiB (readers get a
    /// quarter each): the main knob for the daemon's memory. Refused with
    /// PostgreSQL, whose cache is the server's `shared_buffers`.
    pub store_cache_mb: u64,
    /// Where the store lives: `store.db` in `state_dir` unless `store` says
    /// otherwise.
    pub store: crate::store::StoreLocation,
    /// How long tombstones, audit entries and finished resync jobs are kept.
    pub retention: crate::store::Retention,
    /// How long the store may stay unwritable before the daemon stops
    /// feeding the systemd watchdog (which then restarts the service).
    pub store_failure_timeout: Duration,
    /// With PostgreSQL: how long a daemon's lease on a connector or webhook
    /// endpoint lasts without renewal (renewed every third of it); a peer
    /// takes over a dead daemon's work after this. See docs/scale-out.md.
    pub lease_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where the admin token comes from; `None` disables the admin API.
    pub admin_token: Option<SecretSource>,
    /// Where the read-only viewer token comes from; `None`: no viewer role.
    pub viewer_token: Option<SecretSource>,
    /// Where the consumer token comes from (reads the read-side API and the
    /// change feed, nothing of the admin API); `None`: no consumer role.
    pub consumer_token: Option<SecretSource>,
    pub max_body_bytes: usize,
    /// Open connections at most; past it new ones get 503 at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this (also ends kept-alive
    /// connections on which no next request comes).
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving and no handler running is closed
    /// after this.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ExclusionsConfig {
    /// A rule reload that would newly exclude more than this share of all
    /// customers is refused.
    pub max_new_exclusion_ratio: f64,
}

/// One problem found in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "invalid configuration in {} ({n} problem{}):",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            let loc = match p.line {
                Some(l) => format!("{}:{l}", self.file.display()),
                None => self.file.display().to_string(),
            };
            if p.key.is_empty() {
                writeln!(f, "  {loc}: {}", p.message)?;
            } else {
                writeln!(f, "  {loc}: key `{}`: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The problems of one file, collected by the section compilers. Spans are
/// byte offsets into the file's text and become line numbers here.
pub(crate) struct Problems<'t> {
    text: &'t str,
    list: Vec<Problem>,
    /// Where keys that later checks report on were written.
    lines: BTreeMap<String, usize>,
}

impl<'t> Problems<'t> {
    fn new(text: &'t str) -> Self {
        Problems {
            text,
            list: Vec::new(),
            lines: BTreeMap::new(),
        }
    }

    /// Remembers the line of `key` for checks made after compiling
    /// (`Config::line_of`).
    pub(crate) fn remember(&mut self, span: std::ops::Range<usize>, key: &str) {
        let line = line_of(self.text, span.start);
        self.lines.insert(key.to_string(), line);
    }

    /// The line of a span's start.
    pub(crate) fn line(&self, span: std::ops::Range<usize>) -> Option<usize> {
        Some(line_of(self.text, span.start))
    }

    /// A problem at a span (`None`: no place in the file).
    pub(crate) fn at(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        let line = span.and_then(|s| self.line(s));
        self.on_line(line, key, message);
    }

    pub(crate) fn on_line(&mut self, line: Option<usize>, key: &str, message: impl Into<String>) {
        self.list.push(Problem {
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.list.extend(problems);
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Reads and validates a config file; `kinds` is the connectors registry.
pub fn load(path: &Path, kinds: &dyn ConnectorKinds) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    parse(path, &text, kinds)
}

/// Validates config text as if read from `path` (relative paths resolve
/// against `path`'s folder).
pub fn parse(path: &Path, text: &str, kinds: &dyn ConnectorKinds) -> Result<Config, ConfigError> {
    let err = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let mut doc = toml::de::DeTable::parse(text).map_err(|e| err(vec![toml_problem(text, &e)]))?;
    // Connector option tables are compiled by their kinds: take them out
    // before serde reads the rest.
    let tables = connectors::take_option_tables(&mut doc, kinds);
    let raw = raw::RawConfig::deserialize(toml::de::Deserializer::from(doc))
        .map_err(|e| err(vec![toml_problem(text, &e)]))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    compile(raw, tables, kinds, path, &base, text).map_err(err)
}

fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let line = e.span().map(|s| line_of(text, s.start));
    let key = line
        .and_then(|l| text.lines().nth(l - 1))
        .and_then(|l| {
            l.split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
        })
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.contains(' '))
        .unwrap_or_default();
    let mut message = e.message().trim().to_string();
    // An unknown top-level key is a misspelt table: name it as a table.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, tail)) = rest.split_once('`') {
            if tail.contains("`daemon`, `http`") {
                let written = line
                    .and_then(|l| text.lines().nth(l - 1))
                    .map(str::trim)
                    .filter(|l| l.starts_with('['))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("[{name}]"));
                message = format!(
                    "unknown table `{written}`; the tables are [daemon], [http], [exclusions], [[connectors]] (with [connectors.<kind>] options), [[rules]] and [reminders]"
                );
            }
        }
    }
    Problem { line, key, message }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Parses a config duration (see [`duration`]); kept under this name for
/// callers outside the config.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn compile(
    raw: raw::RawConfig,
    tables: Vec<connectors::EntryTables<'_>>,
    kinds: &dyn ConnectorKinds,
    file: &Path,
    base: &Path,
    text: &str,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Problems::new(text);
    let daemon = daemon::compile(raw.daemon.unwrap_or_default(), base, &mut problems);
    let http = http::compile(raw.http.unwrap_or_default(), base, &mut problems);
    let exclusions = exclusions::compile(raw.exclusions.unwrap_or_default(), &mut problems);
    let connectors = connectors::compile(raw.connectors, tables, kinds, file, base, &mut problems);
    let rules = rules::compile(raw.rules, &mut problems);
    let feed = feed::compile(raw.feed.unwrap_or_default(), &mut problems);
    let webhooks = webhooks::compile(raw.webhooks, base, &mut problems);
    // [reminders]: read again with spans by its own module.
    let reminders = match raw.reminders {
        Some(_) => crate::reminders::config::compile(text).unwrap_or_else(|ps| {
            problems.extend(ps);
            RemindersConfig::default()
        }),
        None => RemindersConfig::default(),
    };
    if !problems.is_empty() {
        return Err(problems.list);
    }
    Ok(Config {
        file: file.to_path_buf(),
        key_lines: problems.lines,
        daemon,
        http,
        exclusions,
        connectors,
        rules,
        reminders,
        feed,
        webhooks,
    })
}

impl Config {
    /// The line `key` was written on, when it was.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.key_lines.get(key).copied()
    }

    /// A problem found after compiling, at `key`'s line, as a [`ConfigError`].
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            line: self.line_of(key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A short human summary, printed by `erpsync check-config`.
    pub fn summary(&self) -> String {
        let mut s = format!("config {} is valid\n", self.file.display());
        s += &format!("  state_dir: {}\n", self.daemon.state_dir.display());
        s += &format!(
            "  store: {}\n",
            match &self.daemon.store {
                crate::store::StoreLocation::Sqlite(p) => format!("sqlite {}", p.display()),
                crate::store::StoreLocation::Postgres { url, .. } => url.clone(),
            }
        );
        s += &format!(
            "  listen: {} (admin API {})\n",
            self.http.listen,
            if self.http.admin_token.is_some() {
                "enabled"
            } else {
                "disabled: no admin token configured"
            }
        );
        if self.http.viewer_token.is_some() {
            s += "  viewer token: configured (read-only API and console)\n";
        }
        if self.http.consumer_token.is_some() {
            s += "  consumer token: configured (read-side API and change feed only)\n";
        }
        s += &format!(
            "  change feed: events kept {} (at most {})\n",
            duration::format(self.feed.retention),
            self.feed.max_events
        );
        for w in &self.webhooks {
            s += &format!(
                "  webhook {}: {} ({}; back-off up to {}, failing after {})\n",
                w.id,
                w.target(),
                if w.events.is_empty() {
                    "every event".to_string()
                } else {
                    w.events.join(", ")
                },
                duration::format(w.retry_max),
                duration::format(w.max_retry_time)
            );
        }
        s += &format!("  connectors: {}\n", self.connectors.len());
        for c in &self.connectors {
            s += &format!(
                "    {} (kind {}, poll every {}, {} req/s, max {} concurrent{}, native exclusions: {})\n",
                c.id,
                c.kind,
                duration::format(c.poll_interval),
                c.limits.requests_per_second,
                c.limits.max_concurrency,
                match c.limits.requests_per_day {
                    Some(n) => format!(", {n} req/day"),
                    None => String::new(),
                },
                if c.native_exclusions.is_empty() {
                    "none".to_string()
                } else {
                    c.native_exclusions.join(", ")
                }
            );
        }
        s += &format!("  rules: {}\n", self.rules.rules().len());
        for r in self.rules.rules() {
            s += &format!("    {}: {}\n", r.id, r.description);
        }
        let rem = &self.reminders;
        s += &format!(
            "  reminder scenarios: {} (creditors {})\n",
            rem.scenarios.rules().len(),
            rem.creditors.as_str()
        );
        s
    }

    pub fn connector(&self, id: &str) -> Option<&ConnectorConfig> {
        self.connectors.iter().find(|c| c.id == id)
    }
}
