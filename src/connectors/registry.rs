//! The connector registry: how a connector kind declares itself, and how
//! the daemon builds a connector from its config.
//!
//! A kind is a unit struct in the connector's own folder implementing
//! [`ConnectorKind`]: its name (the `kind` in config and the name of its
//! options table), its options type (deserialized and checked by the kind),
//! its native exclusions (declared once, here), its default limits, and how
//! it builds from a [`BuildContext`] — vector's `SourceConfig::build(&self,
//! cx)` is the model. `connectors/mod.rs` lists the registered kinds in
//! [`REGISTRY`](super::REGISTRY); nothing else names a kind.
//!
//! The registry implements [`ConnectorKinds`] for the config compiler, so
//! the config module never imports this one.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::credentials::CredentialStore;
use super::{Budget, Connector, NativeExclusion};
use crate::config::{
    ConnectorKinds, ConnectorOptions, KindSpec, Limits, OptionsCheck, OptionsTable,
};

/// What one connector kind declares. Implemented by a unit struct in the
/// connector's folder and listed once in [`REGISTRY`](super::REGISTRY).
pub trait ConnectorKind: Send + Sync + 'static {
    /// The `kind` in config, e.g. `netsuite`; also the name of the options
    /// table, `[connectors.<NAME>]`.
    const NAME: &'static str;
    /// The options table. Use `#[serde(deny_unknown_fields)]` so a wrong
    /// key is refused at its line; give every key a default when the table
    /// may be left out.
    type Options: DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
    /// Every native exclusion the kind can apply; all are on by default and
    /// `native_exclusions = [...]` in config picks among them.
    const NATIVE_EXCLUSIONS: &'static [NativeExclusion];

    /// Limits for every `rate_limit` key the config leaves out: the ERP's
    /// documented limits.
    fn default_limits() -> Limits {
        Limits::default()
    }

    /// Checks meaning (ranges, formats, files that must exist) and reports
    /// every problem with its key through `check`. Pure: reads no secret.
    fn check(options: &Self::Options, check: &mut OptionsCheck<'_>) {
        let _ = (options, check);
    }

    /// Whether connectors with these options authenticate with OAuth 2.0
    /// (then `erpsync connect` loads their first refresh token).
    fn uses_oauth(options: &Self::Options) -> bool {
        let _ = options;
        false
    }

    /// Whether `id` has the form of a customer id of this ERP, for manual
    /// decisions about customers not synced yet (the one place an id comes
    /// from a person rather than the ERP). `Err` says what the form is.
    /// Control and bidi characters, surrounding spaces and over-long ids
    /// are refused for every kind before this is asked.
    fn check_customer_id(id: &str) -> Result<(), String> {
        let _ = id;
        Ok(())
    }

    /// Builds the running connector (reads secrets, builds clients). Called
    /// once per configured connector at start-up, after a clean check; an
    /// error refuses the start (exit 78) and must name keys or files, never
    /// secret values.
    fn build(options: &Self::Options, cx: BuildContext) -> Result<Arc<dyn Connector>, String>;
}

/// Everything a connector may use, handed over at build time. Connectors
/// never reach for globals and never see the store: their only persistent
/// state is their credentials, behind [`CredentialStore`].
pub struct BuildContext {
    /// The connector's id in config.
    pub id: String,
    /// The config file's folder: relative paths in options resolve here.
    pub base_dir: PathBuf,
    /// The config file, for commands shown to the user
    /// (`erpsync connect ... --config <file>`).
    pub config_file: PathBuf,
    /// The connector's request budget: every upstream request goes through
    /// [`Budget::call`].
    pub budget: Arc<Budget>,
    /// This connector's credentials in the store (OAuth token sets).
    pub credentials: Arc<dyn CredentialStore>,
}

impl BuildContext {
    /// `path` resolved against the config file's folder.
    pub fn resolve(&self, path: &std::path::Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// A registered kind, object-safe (see [`ConnectorKind`] for the meaning).
pub trait RegisteredKind: KindSpec + Send + Sync {
    fn native_exclusions(&self) -> &'static [NativeExclusion];
    /// [`check_id`] with this kind's own form.
    fn check_customer_id(&self, id: &str) -> Result<(), String>;
    fn uses_oauth(&self, options: &ConnectorOptions) -> bool;
    /// Builds from options compiled by this kind.
    fn build(
        &self,
        options: &ConnectorOptions,
        cx: BuildContext,
    ) -> Result<Arc<dyn Connector>, String>;
    fn spec(&self) -> &dyn KindSpec;
}

impl<K: ConnectorKind> KindSpec for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn native_exclusion_names(&self) -> Vec<&'static str> {
        K::NATIVE_EXCLUSIONS.iter().map(|n| n.name).collect()
    }

    fn default_limits(&self) -> Limits {
        K::default_limits()
    }

    fn compile_options(
        &self,
        table: &OptionsTable<'_>,
        check: &mut OptionsCheck<'_>,
    ) -> Option<ConnectorOptions> {
        match table.deserialize::<K::Options>() {
            Ok(options) => {
                K::check(&options, check);
                Some(ConnectorOptions::new(options))
            }
            Err(problem) => {
                check.push(problem);
                None
            }
        }
    }
}

impl<K: ConnectorKind> RegisteredKind for K {
    fn native_exclusions(&self) -> &'static [NativeExclusion] {
        K::NATIVE_EXCLUSIONS
    }

    fn check_customer_id(&self, id: &str) -> Result<(), String> {
        check_id(id)?;
        K::check_customer_id(id)
    }

    fn uses_oauth(&self, options: &ConnectorOptions) -> bool {
        options.get::<K::Options>().is_some_and(K::uses_oauth)
    }

    fn build(
        &self,
        options: &ConnectorOptions,
        cx: BuildContext,
    ) -> Result<Arc<dyn Connector>, String> {
        let options = options
            .get::<K::Options>()
            .ok_or_else(|| format!("the options given are not those of kind `{}`", K::NAME))?;
        K::build(options, cx)
    }

    fn spec(&self) -> &dyn KindSpec {
        self
    }
}

/// The longest customer id a person may name before the customer is synced.
pub const MAX_ID_CHARS: usize = 128;

/// What every kind refuses in an id given by hand: empty, longer than
/// [`MAX_ID_CHARS`], surrounding white space, control characters
/// (newlines, tabs, NUL, ...) and bidirectional-text controls (which make
/// an id display as another one). The message says which.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    let n = id.chars().count();
    if n > MAX_ID_CHARS {
        return Err(format!(
            "the id is {n} characters long; at most {MAX_ID_CHARS}"
        ));
    }
    if id.trim() != id {
        return Err("the id starts or ends with white space".into());
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the id contains the control character U+{:04X}",
            c as u32
        ));
    }
    const BIDI: &[char] = &[
        '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
        '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ];
    if let Some(c) = id.chars().find(|c| BIDI.contains(c)) {
        return Err(format!(
            "the id contains the bidirectional-text control U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// Whether `id` is 1 to 20 ASCII digits (NetSuite internal ids, QuickBooks
/// ids).
pub fn check_digits(id: &str, erp: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "{erp} customer ids are numbers (internal ids such as 1234)"
        ))
    }
}

/// The list of registered kinds.
pub struct Registry {
    kinds: &'static [&'static dyn RegisteredKind],
}

impl Registry {
    pub const fn new(kinds: &'static [&'static dyn RegisteredKind]) -> Self {
        Registry { kinds }
    }

    pub fn get(&self, name: &str) -> Option<&'static dyn RegisteredKind> {
        self.kinds.iter().copied().find(|k| k.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }
}

impl ConnectorKinds for Registry {
    fn kinds(&self) -> Vec<&dyn KindSpec> {
        self.kinds.iter().map(|k| k.spec()).collect()
    }
}
