//! The `[connectors.quickbooks]` config section: its serde shape, defaults
//! and validation, and the endpoints derived from it.
//!
//! Pure: validation only checks that credential files exist; it never reads a
//! secret, never puts one in a message, and never talks to Intuit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;

use crate::connectors::netsuite::options::{parse_duration, parse_timezone};
use crate::secrets::SecretSource;

/// Largest MAXRESULTS the query endpoint accepts.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Customers named in one `CustomerRef IN (...)` resync query. A query
/// goes in a POST body, so length is not the limit; a page still holds at
/// most 1,000 rows.
pub const MAX_RESYNC_BATCH: usize = 1000;

/// Minor versions below this are ignored by Intuit since 1 August 2025
/// (requests are answered as minor version 75).
pub const MIN_MINOR_VERSION: u32 = 75;

pub const PRODUCTION_API: &str = "https://quickbooks.api.intuit.com";
pub const SANDBOX_API: &str = "https://sandbox-quickbooks.api.intuit.com";
pub const TOKEN_ENDPOINT: &str = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Sandbox,
}

/// Options of one QuickBooks Online connector (`[connectors.quickbooks]`).
///
/// The client id and secret of the Intuit app each come from exactly one of
/// `<name>_file` (a path; relative to the config file's directory) or
/// `<name>_credential` (a systemd credential name). The refresh token is not
/// configured here: `erpsync connect` loads it into the store.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuickbooksOptions {
    /// The company id (`realmId`), digits only.
    pub realm_id: String,
    #[serde(default = "default_environment")]
    pub environment: Environment,
    /// Overrides the API host of the environment (proxies, test servers).
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// Overrides Intuit's token endpoint URL.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default = "default_minor_version")]
    pub minor_version: u32,
    #[serde(default)]
    pub client_id_file: Option<PathBuf>,
    #[serde(default)]
    pub client_id_credential: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub client_secret_credential: Option<String>,
    /// The company's UTC offset: times in queries are written in it (as
    /// QuickBooks writes `MetaData` times), and a time QuickBooks sends
    /// without an offset is read in it.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Currency of records without a `CurrencyRef` (companies without
    /// multicurrency).
    #[serde(default = "default_home_currency")]
    pub home_currency: String,
    /// MAXRESULTS of every query, 1 to 1000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Customers per `CustomerRef IN (...)` resync query.
    #[serde(default = "default_resync_batch_size")]
    pub resync_batch_size: usize,
    /// Intuit ends requests after 120 s.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
}

fn default_environment() -> Environment {
    Environment::Production
}
fn default_minor_version() -> u32 {
    MIN_MINOR_VERSION
}
fn default_timezone() -> String {
    "-08:00".into()
}
fn default_home_currency() -> String {
    "USD".into()
}
fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}
fn default_resync_batch_size() -> usize {
    200
}
fn default_request_timeout() -> String {
    "120s".into()
}

impl QuickbooksOptions {
    /// Every problem with these options, in words for the person editing
    /// the config. Empty means valid.
    pub fn validate(&self, base_dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = validate_realm(&self.realm_id) {
            problems.push(e);
        }
        for (key, url) in [
            ("api_base_url", &self.api_base_url),
            ("token_url", &self.token_url),
        ] {
            if let Some(u) = url {
                if let Err(e) = parse_url(key, u) {
                    problems.push(e);
                }
            }
        }
        for (name, source) in self.secret_sources_each(base_dir) {
            match source {
                Ok(SecretSource::File(path)) if !path.is_file() => problems.push(format!(
                    "{name}_file: {} does not exist or is not a file",
                    path.display()
                )),
                Ok(source @ SecretSource::Credential(_)) => {
                    if let Ok(path) = source.path() {
                        if !path.is_file() {
                            problems.push(format!(
                                "{name}_credential: systemd credential {} does not exist",
                                path.display()
                            ));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => problems.push(e),
            }
        }
        if self.minor_version < MIN_MINOR_VERSION {
            problems.push(format!(
                "minor_version: {} is ignored by QuickBooks since August 2025 (it answers as {MIN_MINOR_VERSION}); use {MIN_MINOR_VERSION} or later",
                self.minor_version
            ));
        }
        if let Err(e) = parse_timezone(&self.timezone) {
            problems.push(e);
        }
        if self.home_currency.len() != 3
            || !self.home_currency.chars().all(|c| c.is_ascii_uppercase())
        {
            problems.push(format!(
                "home_currency: `{}` is not an ISO 4217 code like USD",
                self.home_currency
            ));
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            problems.push(format!(
                "page_size: {} is out of range; QuickBooks pages hold 1 to {MAX_PAGE_SIZE} rows",
                self.page_size
            ));
        }
        if self.resync_batch_size == 0 || self.resync_batch_size > MAX_RESYNC_BATCH {
            problems.push(format!(
                "resync_batch_size: {} is out of range; use 1 to {MAX_RESYNC_BATCH}",
                self.resync_batch_size
            ));
        }
        match parse_duration(&self.request_timeout) {
            Ok(d) if d.is_zero() => problems.push("request_timeout: must be more than 0".into()),
            Ok(_) => {}
            Err(e) => problems.push(format!("request_timeout: {e}")),
        }
        problems
    }

    fn secret_sources_each(
        &self,
        base_dir: &Path,
    ) -> [(&'static str, Result<SecretSource, String>); 2] {
        let pick = |name: &str, file: &Option<PathBuf>, cred: &Option<String>| {
            match (file, cred) {
            (Some(f), None) => Ok(SecretSource::File(if f.is_relative() {
                base_dir.join(f)
            } else {
                f.clone()
            })),
            (None, Some(c)) if c.is_empty() || c.contains('/') || c == "." || c == ".." => Err(
                format!("{name}_credential: `{c}` is not a systemd credential name"),
            ),
            (None, Some(c)) => Ok(SecretSource::Credential(c.clone())),
            (Some(_), Some(_)) => Err(format!(
                "{name}: set either {name}_file or {name}_credential, not both"
            )),
            (None, None) => Err(format!(
                "{name}: missing; set {name}_file (a path) or {name}_credential (a systemd credential)"
            )),
        }
        };
        [
            (
                "client_id",
                pick(
                    "client_id",
                    &self.client_id_file,
                    &self.client_id_credential,
                ),
            ),
            (
                "client_secret",
                pick(
                    "client_secret",
                    &self.client_secret_file,
                    &self.client_secret_credential,
                ),
            ),
        ]
    }

    /// Where the client id and secret come from.
    pub fn secret_sources(&self, base_dir: &Path) -> Result<(SecretSource, SecretSource), String> {
        let [(_, id), (_, secret)] = self.secret_sources_each(base_dir);
        match (id, secret) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            (a, b) => Err([a.err(), b.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// The API base URL without a trailing slash.
    pub fn api_base(&self) -> Result<String, String> {
        match &self.api_base_url {
            Some(u) => {
                parse_url("api_base_url", u).map(|u| u.as_str().trim_end_matches('/').into())
            }
            None => Ok(match self.environment {
                Environment::Production => PRODUCTION_API.into(),
                Environment::Sandbox => SANDBOX_API.into(),
            }),
        }
    }

    /// The token endpoint (the same for production and sandbox).
    pub fn token_endpoint(&self) -> Result<reqwest::Url, String> {
        match &self.token_url {
            Some(u) => parse_url("token_url", u),
            None => Ok(reqwest::Url::parse(TOKEN_ENDPOINT).expect("constant URL")),
        }
    }

    pub fn offset(&self) -> Result<FixedOffset, String> {
        parse_timezone(&self.timezone)
    }

    pub fn timeout(&self) -> Result<Duration, String> {
        parse_duration(&self.request_timeout).map_err(|e| format!("request_timeout: {e}"))
    }
}

fn parse_url(key: &str, url: &str) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("{key}: `{url}` is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{key}: `{url}` must be an http:// or https:// URL with a host"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{key}: `{url}` must not have a query or fragment"));
    }
    Ok(parsed)
}

/// A realm id is the company id Intuit shows: digits only.
pub fn validate_realm(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "realm_id: `{id}` is not a QuickBooks company id (digits only, e.g. 9130347596312345)"
        ))
    }
}
