//! `[[connectors]]`: the keys every connector has (id, kind, poll interval,
//! rate limits, resync share, native exclusions), and the hand-off of each
//! connector's own options table to its kind.
//!
//! Config names no connector kind. What it needs to know of them comes
//! through [`ConnectorKinds`], implemented by the connectors registry and
//! passed in by the caller (vector's loader works the same way): the kinds'
//! names, their native exclusion names, their default limits, and a compiler
//! for each kind's `[connectors.<kind>]` table. That table is taken out of
//! the document before serde reads the common keys, handed to its kind as an
//! [`OptionsTable`] (which deserializes it with every key's position intact)
//! and checked through an [`OptionsCheck`], so a problem deep inside a
//! connector's options is still reported as `file:line: key`.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::RawConnector;
use super::{duration, line_of, Problem, Problems};

/// Bounds of `rate_limit.requests_per_second`.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;

/// Request limits of one connector: the kind's defaults, overridden key by
/// key by its `rate_limit` table. Enforced by the connector's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_concurrency: u32,
    /// Share of rate and concurrency resync may use while polling is busy.
    pub resync_share: f64,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First back-off delay; doubles per attempt up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests allowed in any 24 hours (the ERP's daily quota); `None`:
    /// no daily quota.
    pub requests_per_day: Option<u32>,
    /// The longest `Retry-After` waited out in place. A daily-quota refusal
    /// asking for longer parks the connector until the quota resets.
    pub max_retry_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_second: 10.0,
            burst: 10,
            max_concurrency: 4,
            resync_share: 0.5,
            max_attempts: 6,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            requests_per_day: None,
            max_retry_wait: Duration::from_secs(3600),
        }
    }
}

/// One configured connector.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub id: String,
    pub kind: String,
    pub poll_interval: Duration,
    pub limits: Limits,
    /// Enabled native exclusions, by name.
    pub native_exclusions: Vec<String>,
    /// The kind's compiled options; only the kind reads them.
    pub options: ConnectorOptions,
}

/// A kind's compiled options table, opaque to everything but that kind.
#[derive(Clone)]
pub struct ConnectorOptions(Arc<dyn AnyOptions>);

trait AnyOptions: std::fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: std::fmt::Debug + Send + Sync + 'static> AnyOptions for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl ConnectorOptions {
    pub fn new<T: std::fmt::Debug + Send + Sync + 'static>(options: T) -> Self {
        ConnectorOptions(Arc::new(options))
    }

    /// The options as the kind's own type (`None`: another kind's options).
    pub fn get<T: 'static>(&self) -> Option<&T> {
        // Through the trait object: `Arc<dyn AnyOptions>` is itself `Any`.
        (*self.0).as_any().downcast_ref()
    }
}

impl std::fmt::Debug for ConnectorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What config needs to know of one connector kind.
pub trait KindSpec: Sync {
    /// The `kind` in config; also the name of its options table.
    fn name(&self) -> &'static str;
    /// Names of every native exclusion the kind knows (all on by default).
    fn native_exclusion_names(&self) -> Vec<&'static str>;
    /// Limits used for every `rate_limit` key the config leaves out.
    fn default_limits(&self) -> Limits;
    /// Reads and checks the kind's options table; `None` when a problem was
    /// reported to `check`.
    fn compile_options(
        &self,
        table: &OptionsTable<'_>,
        check: &mut OptionsCheck<'_>,
    ) -> Option<ConnectorOptions>;
}

/// The catalog of connector kinds (the connectors registry).
pub trait ConnectorKinds: Sync {
    /// Every kind, in registry order.
    fn kinds(&self) -> Vec<&dyn KindSpec>;

    fn find(&self, name: &str) -> Option<&dyn KindSpec> {
        self.kinds().into_iter().find(|k| k.name() == name)
    }
}

/// A connector's `[connectors.<kind>]` table with the positions of its keys.
pub struct OptionsTable<'a> {
    text: &'a str,
    kind: &'static str,
    /// `connectors[i].<kind>`.
    key: String,
    /// Absent table: an empty one placed at the connector's `id`.
    value: Spanned<DeValue<'a>>,
    present: bool,
}

impl<'a> OptionsTable<'a> {
    /// Deserializes the table into the kind's options type. Unknown keys
    /// and wrong types are reported at their own line with their full key.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        let de = toml::de::ValueDeserializer::from(self.value.clone());
        T::deserialize(de).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            let path = offset
                .map(|o| key_path_at(self.value.get_ref(), o))
                .unwrap_or_default();
            let mut key = self.key.clone();
            for p in &path {
                key.push('.');
                key.push_str(p);
            }
            let message = e.message().trim().to_string();
            Problem {
                line: offset
                    .map(|o| line_of(self.text, o))
                    .or_else(|| Some(line_of(self.text, self.value.span().start))),
                key,
                message: if self.present {
                    message
                } else {
                    format!(
                        "kind `{}` needs a [connectors.{}] table: {message}",
                        self.kind, self.kind
                    )
                },
            }
        })
    }

    /// The line of a dotted key inside the table (`oauth.client_id_file`),
    /// or of the table itself when the key is not written.
    fn line_of_key(&self, dotted: &str) -> usize {
        let mut v = &self.value;
        let mut line = line_of(self.text, v.span().start);
        for part in dotted.split('.') {
            let Some(t) = v.get_ref().as_table() else {
                break;
            };
            match t.iter().find(|(k, _)| k.get_ref().as_ref() == part) {
                Some((k, val)) => {
                    line = line_of(self.text, k.span().start);
                    v = val;
                }
                None => break,
            }
        }
        line
    }
}

/// The keys leading to the innermost key or value at `offset`.
fn key_path_at(v: &DeValue<'_>, offset: usize) -> Vec<String> {
    let Some(t) = v.as_table() else {
        return Vec::new();
    };
    // A `[a.b]` header table's span is its header, not its keys: look
    // inside every nested table, and inside a value whose span holds it.
    for (k, val) in t.iter() {
        if k.span().contains(&offset) {
            return vec![k.get_ref().to_string()];
        }
        let inner = key_path_at(val.get_ref(), offset);
        if !inner.is_empty() || val.span().contains(&offset) {
            let mut path = vec![k.get_ref().to_string()];
            path.extend(inner);
            return path;
        }
    }
    Vec::new()
}

/// Collects the problems a kind finds in its options, each placed at the
/// line of the key it names.
pub struct OptionsCheck<'a> {
    table: Option<&'a OptionsTable<'a>>,
    base_dir: &'a Path,
    problems: Vec<Problem>,
}

impl<'a> OptionsCheck<'a> {
    /// A check outside a config file (a connector's unit tests): problems
    /// carry no line, keys are relative to the table.
    pub fn detached(base_dir: &'a Path) -> Self {
        OptionsCheck {
            table: None,
            base_dir,
            problems: Vec::new(),
        }
    }

    /// The config file's folder: relative paths in options resolve here.
    pub fn base_dir(&self) -> &Path {
        self.base_dir
    }

    /// `path` resolved against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        super::resolve(self.base_dir, path)
    }

    /// Reports a problem with the option `key` (dotted for nested tables).
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let (line, full) = match self.table {
            Some(t) => (Some(t.line_of_key(key)), format!("{}.{key}", t.key)),
            None => (None, key.to_string()),
        };
        self.problems.push(Problem {
            line,
            key: full,
            message: message.into(),
        });
    }

    /// Reports a problem found by [`OptionsTable::deserialize`].
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems as `key: message` lines (for unit tests and for
    /// errors at build time).
    pub fn messages(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }
}

/// The kind-named tables of one `[[connectors]]` entry, taken out of the
/// document before serde reads it.
pub(crate) struct EntryTables<'a> {
    tables: Vec<(String, Spanned<DeValue<'a>>)>,
}

/// Removes every table named after a known kind from each
/// `[[connectors]]` entry of `doc`.
pub(crate) fn take_option_tables<'a>(
    doc: &mut Spanned<DeTable<'a>>,
    kinds: &dyn ConnectorKinds,
) -> Vec<EntryTables<'a>> {
    let names: Vec<&'static str> = kinds.kinds().iter().map(|k| k.name()).collect();
    let mut out = Vec::new();
    let Some(entries) = doc.get_mut().get_mut("connectors") else {
        return out;
    };
    let DeValue::Array(entries) = entries.get_mut() else {
        return out;
    };
    for entry in entries.iter_mut() {
        let mut tables = Vec::new();
        if let DeValue::Table(t) = entry.get_mut() {
            for name in &names {
                if let Some(v) = t.remove(*name) {
                    tables.push((name.to_string(), v));
                }
            }
        }
        out.push(EntryTables { tables });
    }
    out
}

fn valid_connector_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

pub(super) fn compile(
    raw: Vec<RawConnector>,
    mut tables: Vec<EntryTables<'_>>,
    kinds: &dyn ConnectorKinds,
    _file: &Path,
    base: &Path,
    p: &mut Problems<'_>,
) -> Vec<ConnectorConfig> {
    let mut connectors = Vec::new();
    let mut seen = HashMap::new();
    if raw.is_empty() {
        p.on_line(
            None,
            "connectors",
            "no [[connectors]] configured; add at least one (kind = \"demo\" needs no credentials)",
        );
    }
    tables.resize_with(raw.len(), || EntryTables { tables: Vec::new() });
    for (i, (c, entry)) in raw.into_iter().zip(tables).enumerate() {
        let id = c.id.get_ref().clone();
        let line = p.line(c.id.span());
        p.remember(c.id.span(), &format!("connectors.{id}"));
        let k = |name: &str| format!("connectors[{i}].{name}");
        if !valid_connector_id(&id) {
            p.on_line(line, &k("id"), format!("`{id}` is not a valid connector id (use a-z, 0-9, - and _, at most 64 characters)"));
        }
        if let Some(prev) = seen.insert(id.clone(), line) {
            p.on_line(
                line,
                &k("id"),
                format!(
                    "duplicate connector id `{id}` (first defined on line {})",
                    prev.unwrap_or(0)
                ),
            );
        }
        let kind_name = c.kind.get_ref().clone();
        let kind = kinds.find(&kind_name);
        if kind.is_none() {
            p.at(
                Some(c.kind.span()),
                &k("kind"),
                format!(
                    "unknown connector kind `{kind_name}`; known kinds: {}",
                    kinds
                        .kinds()
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let poll_interval = match &c.poll_interval {
            Some(s) => duration::parse_within(s.get_ref(), Duration::from_secs(1), duration::MAX)
                .unwrap_or_else(|e| {
                    p.at(Some(s.span()), &k("poll_interval"), e);
                    Duration::from_secs(60)
                }),
            None => Duration::from_secs(60),
        };
        let defaults = kind.map(|k| k.default_limits()).unwrap_or_default();
        let limits = compile_limits(&c, defaults, line, &k, p);
        let known = kind.map(|k| k.native_exclusion_names());
        let native_exclusions = match (&c.native_exclusions, &known) {
            (Some(list), Some(known)) => {
                for n in list.get_ref() {
                    if !known.iter().any(|k| k == n) {
                        p.at(
                            Some(list.span()),
                            &k("native_exclusions"),
                            format!(
                                "`{n}` is not a native exclusion of kind `{kind_name}`; it knows: {}",
                                if known.is_empty() { "none".to_string() } else { known.join(", ") }
                            ),
                        );
                    }
                }
                list.get_ref().clone()
            }
            (None, Some(known)) => known.iter().map(|k| k.to_string()).collect(),
            (_, None) => Vec::new(),
        };
        // The kind's own table; a table of another kind does not apply.
        let mut own = None;
        for (name, value) in entry.tables {
            if name == kind_name {
                own = Some(value);
            } else {
                p.on_line(
                    p.line(value.span()),
                    &k(&name),
                    format!("a [connectors.{name}] table does not apply to kind `{kind_name}`"),
                );
            }
        }
        let Some(kind) = kind else { continue };
        let present = own.is_some();
        let table = OptionsTable {
            text: p.text,
            kind: kind.name(),
            key: k(kind.name()),
            value: own.unwrap_or_else(|| Spanned::new(c.id.span(), DeValue::Table(DeTable::new()))),
            present,
        };
        let mut check = OptionsCheck {
            table: Some(&table),
            base_dir: base,
            problems: Vec::new(),
        };
        let options = kind.compile_options(&table, &mut check);
        let found = check.problems;
        let clean = found.is_empty();
        p.extend(found);
        if let (Some(options), true) = (options, clean) {
            connectors.push(ConnectorConfig {
                id,
                kind: kind_name,
                poll_interval,
                limits,
                native_exclusions,
                options,
            });
        }
    }
    connectors
}

fn compile_limits(
    c: &RawConnector,
    defaults: Limits,
    line: Option<usize>,
    k: &dyn Fn(&str) -> String,
    p: &mut Problems<'_>,
) -> Limits {
    let rl_line = c
        .rate_limit
        .as_ref()
        .and_then(|r| p.line(r.span()))
        .or(line);
    let rl = c
        .rate_limit
        .as_ref()
        .map(|r| r.get_ref())
        .cloned()
        .unwrap_or_default();
    let mut limits = defaults;
    if let Some(r) = rl.requests_per_second {
        if !(r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r)) {
            p.on_line(
                rl_line,
                &k("rate_limit.requests_per_second"),
                format!("must be between {MIN_RATE} and {MAX_RATE}, got {r}"),
            );
        } else {
            limits.requests_per_second = r;
            // A new rate without its own burst allows one second's worth.
            limits.burst = r.ceil().max(1.0) as u32;
        }
    }
    if let Some(b) = rl.burst {
        if !(1..=1_000_000).contains(&b) {
            p.on_line(
                rl_line,
                &k("rate_limit.burst"),
                format!("must be between 1 and 1000000, got {b}"),
            );
        }
        limits.burst = b.clamp(1, 1_000_000) as u32;
    }
    if let Some(m) = rl.max_concurrency {
        if !(1..=1000).contains(&m) {
            p.on_line(
                rl_line,
                &k("rate_limit.max_concurrency"),
                format!("must be between 1 and 1000, got {m}"),
            );
        }
        limits.max_concurrency = m.clamp(1, 1000) as u32;
    }
    if let Some(s) = &c.resync_share {
        let v = *s.get_ref();
        if !(v > 0.0 && v <= 1.0) {
            p.at(
                Some(s.span()),
                &k("resync_share"),
                format!("must be within (0, 1], got {v}"),
            );
        } else {
            limits.resync_share = v;
        }
    }
    if let Some(n) = rl.max_attempts {
        if !(1..=100).contains(&n) {
            p.on_line(
                rl_line,
                &k("rate_limit.max_attempts"),
                format!("must be between 1 and 100, got {n}"),
            );
        }
        limits.max_attempts = n.clamp(1, 100) as u32;
    }
    if let Some(n) = rl.requests_per_day {
        if n < 1 {
            p.on_line(
                rl_line,
                &k("rate_limit.requests_per_day"),
                "must be at least 1 (leave it out for no daily quota)",
            );
        } else if n > i64::from(u32::MAX) {
            p.on_line(
                rl_line,
                &k("rate_limit.requests_per_day"),
                format!("must be at most {}, got {n}", u32::MAX),
            );
        } else {
            limits.requests_per_day = Some(n as u32);
        }
    }
    if let Some(s) = &rl.max_retry_wait {
        match duration::parse_within(s, Duration::from_secs(1), Duration::from_secs(86_400)) {
            Ok(d) => limits.max_retry_wait = d,
            Err(e) => p.on_line(rl_line, &k("rate_limit.max_retry_wait"), e),
        }
    }
    limits
}
