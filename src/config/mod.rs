//! Configuration: the TOML file → a validated [`Config`].
//!
//! Two stages, as in ripgrep's low/high args: serde reads the text into
//! [`raw`] structs (unknown keys and wrong types are refused there, with the
//! file position), then [`compile`] checks meaning (duplicate ids, rule trees,
//! credential files, ranges) and collects **all** problems before reporting
//! them, each as `file:line: key `k`: what is wrong`. Relative paths resolve
//! against the config file's folder. Nothing here starts tasks or opens the
//! store; the only I/O is reading the config and checking referenced files.

mod raw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::connectors::budget::Limits;
use crate::connectors::demo::DemoOptions;
use crate::connectors::netsuite::NetsuiteOptions;
use crate::reminders::RemindersConfig;
use crate::rules::{Condition, ParseOptions, Rule, RuleSet};
use crate::secrets::SecretSource;

/// Exit code for configuration errors (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub daemon: DaemonConfig,
    pub http: HttpConfig,
    pub exclusions: ExclusionsConfig,
    pub connectors: Vec<ConnectorConfig>,
    pub rules: RuleSet,
    pub reminders: RemindersConfig,
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
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where the admin token comes from; `None` disables the admin API.
    pub admin_token: Option<SecretSource>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ExclusionsConfig {
    /// A rule reload that would newly exclude more than this share of all
    /// customers is refused.
    pub max_new_exclusion_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub id: String,
    pub kind: String,
    pub poll_interval: Duration,
    pub limits: Limits,
    /// Enabled native exclusions, by name.
    pub native_exclusions: Vec<String>,
    pub options: ConnectorOptions,
}

#[derive(Debug, Clone)]
pub enum ConnectorOptions {
    Demo(DemoOptions),
    Netsuite(Box<NetsuiteOptions>),
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

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Validates config text as if read from `path` (relative paths resolve
/// against `path`'s folder).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let err = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| err(vec![toml_problem(text, &e)]))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    compile(raw, path, &base, text).map_err(err)
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
    Problem {
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The longest duration accepted anywhere in the config: a year.
const MAX_DURATION_SECS: f64 = 365.0 * 86_400.0;

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d` (at most a year).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; use e.g. 500ms, 30s, 5m, 2h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in duration `{s}`; use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    if secs > MAX_DURATION_SECS {
        return Err(format!("`{s}` is too long; at most 365d"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is not a valid duration"))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Rule ids appear in reasons (`rule:<id>`), metrics labels and CSV.
fn valid_rule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Bounds of `rate_limit.requests_per_second`.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;

fn valid_connector_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Compiles a rule's `when` tree given as TOML into a [`Condition`].
fn compile_condition(
    when: &toml::Value,
    case_sensitive: bool,
) -> Result<Condition, crate::rules::ConditionError> {
    let json = serde_json::to_value(when).map_err(|e| crate::rules::ConditionError {
        path: String::new(),
        message: e.to_string(),
    })?;
    Condition::parse(&json, ParseOptions { case_sensitive })
}

fn compile(
    raw: raw::RawConfig,
    file: &Path,
    base: &Path,
    text: &str,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let at = |span: std::ops::Range<usize>| Some(line_of(text, span.start));
    let mut push = |line: Option<usize>, key: &str, message: String| {
        problems.push(Problem {
            line,
            key: key.to_string(),
            message,
        })
    };

    // [daemon]
    let d = raw.daemon.unwrap_or_default();
    let state_dir = match &d.state_dir {
        Some(s) => resolve(base, Path::new(s.get_ref())),
        None => PathBuf::from("/var/lib/erpsync"),
    };
    let shutdown_timeout = match &d.shutdown_timeout {
        Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
            push(at(s.span()), "daemon.shutdown_timeout", e);
            Duration::from_secs(8)
        }),
        None => Duration::from_secs(8),
    };
    let store_cache_mb = match &d.store_cache_mb {
        Some(v) => {
            if !(1..=1 << 20).contains(v.get_ref()) {
                push(
                    at(v.span()),
                    "daemon.store_cache_mb",
                    format!("must be between 1 and 1048576 (MiB), got {}", v.get_ref()),
                );
            }
            *v.get_ref()
        }
        None => crate::store::DEFAULT_CACHE_MB,
    };
    let password = match (&d.store_password_file, &d.store_password_credential) {
        (Some(_), Some(c)) => {
            push(
                at(c.span()),
                "daemon.store_password_credential",
                "set either store_password_file or store_password_credential, not both".into(),
            );
            None
        }
        (Some(f), None) => {
            let p = resolve(base, Path::new(f.get_ref()));
            if !p.is_file() {
                push(
                    at(f.span()),
                    "daemon.store_password_file",
                    format!("password file {} does not exist", p.display()),
                );
            }
            Some((f.span(), SecretSource::File(p)))
        }
        (None, Some(c)) => Some((c.span(), SecretSource::Credential(c.get_ref().clone()))),
        (None, None) => None,
    };
    let store = match &d.store {
        Some(v)
            if v.get_ref().starts_with("postgres://")
                || v.get_ref().starts_with("postgresql://") =>
        {
            if let Err(e) = crate::store::pg::parse_url(v.get_ref()) {
                push(at(v.span()), "daemon.store", e);
            }
            if let Some(c) = &d.store_cache_mb {
                push(
                    at(c.span()),
                    "daemon.store_cache_mb",
                    "has no effect with a PostgreSQL store (its cache is the server's shared_buffers); remove it".into(),
                );
            }
            crate::store::StoreLocation::Postgres {
                url: v.get_ref().clone(),
                password: password.map(|(_, s)| s),
            }
        }
        other => {
            if let Some((span, _)) = &password {
                push(
                    at(span.clone()),
                    "daemon.store_password_file",
                    "a store password only applies to a PostgreSQL store (store = \"postgres://...\")".into(),
                );
            }
            match other {
                Some(v) if v.get_ref().trim().is_empty() => {
                    push(
                        at(v.span()),
                        "daemon.store",
                        "must not be empty; omit it for store.db in state_dir".into(),
                    );
                    crate::store::StoreLocation::in_state_dir(&state_dir)
                }
                Some(v) if v.get_ref().contains("://") && !v.get_ref().starts_with("sqlite://") => {
                    push(
                        at(v.span()),
                        "daemon.store",
                        format!(
                            "`{}` is neither a postgres:// URL nor a SQLite file path",
                            v.get_ref()
                        ),
                    );
                    crate::store::StoreLocation::in_state_dir(&state_dir)
                }
                Some(v) => {
                    let path = v.get_ref().strip_prefix("sqlite://").unwrap_or(v.get_ref());
                    crate::store::StoreLocation::Sqlite(resolve(base, Path::new(path)))
                }
                None => crate::store::StoreLocation::in_state_dir(&state_dir),
            }
        }
    };
    let mut retention = crate::store::Retention::default();
    for (v, key, slot) in [
        (
            &d.tombstone_retention_days,
            "daemon.tombstone_retention_days",
            &mut retention.tombstones,
        ),
        (
            &d.audit_retention_days,
            "daemon.audit_retention_days",
            &mut retention.audit,
        ),
        (
            &d.resync_job_retention_days,
            "daemon.resync_job_retention_days",
            &mut retention.finished_jobs,
        ),
    ] {
        if let Some(v) = v {
            let days = *v.get_ref();
            if !(1..=36_500).contains(&days) {
                push(
                    at(v.span()),
                    key,
                    format!("must be between 1 and 36500 (days), got {days}"),
                );
            } else {
                *slot = chrono::Duration::days(days as i64);
            }
        }
    }
    let log_level = match &d.log_level {
        Some(v) => {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(v.get_ref()) {
                push(
                    at(v.span()),
                    "daemon.log_level",
                    format!("`{}` is not a log filter: {e}", v.get_ref()),
                );
            }
            v.get_ref().clone()
        }
        None => "info".to_string(),
    };

    // [http]
    let h = raw.http.unwrap_or_default();
    let listen = match &h.listen {
        Some(s) => s.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
            push(
                at(s.span()),
                "http.listen",
                format!(
                    "`{}` is not an address:port like 127.0.0.1:8089",
                    s.get_ref()
                ),
            );
            DEFAULT_LISTEN.parse().expect("default parses")
        }),
        None => DEFAULT_LISTEN.parse().expect("default parses"),
    };
    let admin_token = match (&h.admin_token_file, &h.admin_token_credential) {
        (Some(_), Some(c)) => {
            push(
                at(c.span()),
                "http.admin_token_credential",
                "set either admin_token_file or admin_token_credential, not both".into(),
            );
            None
        }
        (Some(f), None) => {
            let p = resolve(base, Path::new(f.get_ref()));
            if !p.is_file() {
                push(
                    at(f.span()),
                    "http.admin_token_file",
                    format!("credential file {} does not exist", p.display()),
                );
            }
            Some(SecretSource::File(p))
        }
        (None, Some(c)) => Some(SecretSource::Credential(c.get_ref().clone())),
        (None, None) => None,
    };
    let max_body_bytes = h.max_body_bytes.unwrap_or(1 << 20);

    // [exclusions]
    let ex = raw.exclusions.unwrap_or_default();
    let ratio = match &ex.max_new_exclusion_ratio {
        Some(v) => {
            let r = *v.get_ref();
            if !(0.0..=1.0).contains(&r) {
                push(
                    at(v.span()),
                    "exclusions.max_new_exclusion_ratio",
                    format!("{r} is outside 0.0 ..= 1.0"),
                );
            }
            r
        }
        None => 0.2,
    };

    // [[connectors]]
    let mut connectors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    if raw.connectors.is_empty() {
        push(
            None,
            "connectors",
            "no [[connectors]] configured; add at least one (kind = \"demo\" needs no credentials)"
                .into(),
        );
    }
    for (i, c) in raw.connectors.into_iter().enumerate() {
        let id = c.id.get_ref().clone();
        let line = at(c.id.span());
        let k = |name: &str| format!("connectors[{i}].{name}");
        if !valid_connector_id(&id) {
            push(line, &k("id"), format!("`{id}` is not a valid connector id (use a-z, 0-9, - and _, at most 64 characters)"));
        }
        if let Some(prev) = seen.insert(id.clone(), line) {
            push(
                line,
                &k("id"),
                format!(
                    "duplicate connector id `{id}` (first defined on line {})",
                    prev.unwrap_or(0)
                ),
            );
        }
        let kind = c.kind.get_ref().clone();
        let known = crate::connectors::native_exclusions_for(&kind);
        if known.is_none() {
            push(
                at(c.kind.span()),
                &k("kind"),
                format!(
                    "unknown connector kind `{kind}`; known kinds: {}",
                    crate::connectors::KINDS.join(", ")
                ),
            );
        }
        let poll_interval = match &c.poll_interval {
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if d >= Duration::from_secs(1) => d,
                Ok(_) => {
                    push(
                        at(s.span()),
                        &k("poll_interval"),
                        "must be at least 1s".into(),
                    );
                    Duration::from_secs(60)
                }
                Err(e) => {
                    push(at(s.span()), &k("poll_interval"), e);
                    Duration::from_secs(60)
                }
            },
            None => Duration::from_secs(60),
        };
        let rl_line = c.rate_limit.as_ref().and_then(|r| at(r.span())).or(line);
        let rl = c.rate_limit.map(|r| r.into_inner()).unwrap_or_default();
        let mut limits = Limits::default();
        if let Some(r) = rl.requests_per_second {
            if !(r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r)) {
                push(
                    rl_line,
                    &k("rate_limit.requests_per_second"),
                    format!("must be between {MIN_RATE} and {MAX_RATE}, got {r}"),
                );
            } else {
                limits.requests_per_second = r;
            }
        }
        limits.burst = rl
            .burst
            .unwrap_or(limits.requests_per_second.ceil().max(1.0) as u32);
        if let Some(m) = rl.max_concurrency {
            if !(1..=1000).contains(&m) {
                push(
                    rl_line,
                    &k("rate_limit.max_concurrency"),
                    format!("must be between 1 and 1000, got {m}"),
                );
            }
            limits.max_concurrency = m.clamp(1, 1000);
        }
        if let Some(s) = &c.resync_share {
            let v = *s.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                push(
                    at(s.span()),
                    &k("resync_share"),
                    format!("must be within (0, 1], got {v}"),
                );
            } else {
                limits.resync_share = v;
            }
        }
        if let Some(n) = rl.max_attempts {
            if !(1..=100).contains(&n) {
                push(
                    rl_line,
                    &k("rate_limit.max_attempts"),
                    format!("must be between 1 and 100, got {n}"),
                );
            }
            limits.max_attempts = n.clamp(1, 100);
        }
        let native_exclusions = match (&c.native_exclusions, known) {
            (Some(list), Some(known)) => {
                for n in list.get_ref() {
                    if !known.iter().any(|k| k.name == n) {
                        push(
                            at(list.span()),
                            &k("native_exclusions"),
                            format!(
                                "`{n}` is not a native exclusion of kind `{kind}`; it knows: {}",
                                known.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
                list.get_ref().clone()
            }
            (None, Some(known)) => known.iter().map(|k| k.name.to_string()).collect(),
            (_, None) => Vec::new(),
        };
        let options = match kind.as_str() {
            "demo" => {
                let opts = c
                    .demo
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default();
                for p in opts.validate() {
                    push(c.demo.as_ref().and_then(|v| at(v.span())), &k("demo"), p);
                }
                Some(ConnectorOptions::Demo(opts))
            }
            "netsuite" => match &c.netsuite {
                Some(v) => {
                    for p in v.get_ref().validate(base) {
                        push(at(v.span()), &k("netsuite"), p);
                    }
                    Some(ConnectorOptions::Netsuite(Box::new(v.get_ref().clone())))
                }
                None => {
                    push(line, &k("netsuite"), "kind `netsuite` needs a [connectors.netsuite] table (account_id and credentials)".into());
                    None
                }
            },
            _ => None,
        };
        for (present, name) in [
            (c.demo.is_some(), "demo"),
            (c.netsuite.is_some(), "netsuite"),
        ] {
            if present && name != kind {
                push(
                    line,
                    &k(name),
                    format!("a [connectors.{name}] table does not apply to kind `{kind}`"),
                );
            }
        }
        if let Some(options) = options {
            connectors.push(ConnectorConfig {
                id,
                kind,
                poll_interval,
                limits,
                native_exclusions,
                options,
            });
        }
    }

    // [[rules]]
    let mut rules = Vec::new();
    let mut rule_lines: std::collections::HashMap<String, Option<usize>> =
        std::collections::HashMap::new();
    for (i, r) in raw.rules.into_iter().enumerate() {
        let id = r.id.get_ref().clone();
        let k = format!("rules[{i}]");
        let id_line = at(r.id.span());
        if !valid_rule_id(&id) {
            push(
                id_line,
                &format!("{k}.id"),
                format!("`{id}` is not a valid rule id (use letters, digits, -, _ and ., at most 64 characters)"),
            );
            continue;
        }
        if let Some(first) = rule_lines.insert(id.clone(), id_line) {
            push(
                id_line,
                &format!("{k}.id"),
                format!(
                    "duplicate rule id `{id}` (first defined on line {})",
                    first.unwrap_or(0)
                ),
            );
            continue;
        }
        match compile_condition(r.when.get_ref(), r.case_sensitive.unwrap_or(false)) {
            Ok(condition) => rules.push(Rule {
                id,
                description: r.description.unwrap_or_default(),
                condition,
            }),
            Err(e) => {
                let path = e.key_under("when");
                push(
                    at(r.when.span()),
                    &format!("{k}.{path}"),
                    format!("rule `{id}`: {}", e.message),
                );
            }
        }
    }
    let rules = match RuleSet::new(rules) {
        Ok(r) => r,
        Err(e) => {
            push(None, "rules", e);
            RuleSet::default()
        }
    };

    // [reminders]: read again with spans by its own module.
    let reminders = match raw.reminders {
        Some(_) => crate::reminders::config::compile(text).unwrap_or_else(|ps| {
            problems.extend(ps);
            RemindersConfig::default()
        }),
        None => RemindersConfig::default(),
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        file: file.to_path_buf(),
        daemon: DaemonConfig {
            state_dir,
            log_level,
            shutdown_timeout,
            store_cache_mb,
            store,
            retention,
        },
        http: HttpConfig {
            listen,
            admin_token,
            max_body_bytes,
        },
        exclusions: ExclusionsConfig {
            max_new_exclusion_ratio: ratio,
        },
        connectors,
        rules,
        reminders,
    })
}

impl Config {
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
        s += &format!("  connectors: {}\n", self.connectors.len());
        for c in &self.connectors {
            s += &format!(
                "    {} (kind {}, poll every {}s, {} req/s, max {} concurrent, native exclusions: {})\n",
                c.id,
                c.kind,
                c.poll_interval.as_secs_f64(),
                c.limits.requests_per_second,
                c.limits.max_concurrency,
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
