//! The `[connectors.quickbooks]` config section: its serde shape, defaults
//! and validation, and the endpoints derived from it.
//!
//! Pure: checking only looks for the credential files; it never reads a
//! secret, never puts one in a message, and never talks to Intuit.

use std::time::Duration;

use chrono::FixedOffset;

use crate::config::{duration, OptionsCheck};
use crate::connectors::netsuite::options::parse_fixed_offset as parse_timezone;
use crate::connectors::oauth::OAuthOptions;

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
/// Intuit's OAuth 2.0 token endpoint (production and sandbox alike).
pub const TOKEN_URL: &str = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Sandbox,
}

/// Options of one QuickBooks Online connector (`[connectors.quickbooks]`).
///
/// The app's client id and secret and the token endpoint are in the nested
/// `[connectors.quickbooks.oauth]` table. The refresh token is not
/// configured: `erpsync connect` loads it into the store.
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
    #[serde(default = "default_minor_version")]
    pub minor_version: u32,
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
    /// Token endpoint and client credentials.
    pub oauth: OAuthOptions,
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
    /// Reports every problem with its key. Pure.
    pub fn check(&self, check: &mut OptionsCheck<'_>) {
        if let Err(e) = validate_realm(&self.realm_id) {
            check.problem("realm_id", e);
        }
        if let Some(u) = &self.api_base_url {
            if let Err(e) = parse_url(u) {
                check.problem("api_base_url", e);
            }
        }
        self.oauth.check("oauth", Some(TOKEN_URL), check);
        if self.minor_version < MIN_MINOR_VERSION {
            check.problem("minor_version", format!(
                "{} is ignored by QuickBooks since August 2025 (it answers as {MIN_MINOR_VERSION}); use {MIN_MINOR_VERSION} or later",
                self.minor_version
            ));
        }
        if let Err(e) = parse_timezone(&self.timezone) {
            check.problem("timezone", e.trim_start_matches("timezone: ").to_string());
        }
        if self.home_currency.len() != 3
            || !self.home_currency.chars().all(|c| c.is_ascii_uppercase())
        {
            check.problem(
                "home_currency",
                format!("`{}` is not an ISO 4217 code like USD", self.home_currency),
            );
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            check.problem(
                "page_size",
                format!(
                    "{} is out of range; QuickBooks pages hold 1 to {MAX_PAGE_SIZE} rows",
                    self.page_size
                ),
            );
        }
        if self.resync_batch_size == 0 || self.resync_batch_size > MAX_RESYNC_BATCH {
            check.problem(
                "resync_batch_size",
                format!(
                    "{} is out of range; use 1 to {MAX_RESYNC_BATCH}",
                    self.resync_batch_size
                ),
            );
        }
        if let Err(e) = self.timeout() {
            check.problem("request_timeout", e);
        }
    }

    /// The API base URL without a trailing slash.
    pub fn api_base(&self) -> Result<String, String> {
        match &self.api_base_url {
            Some(u) => parse_url(u)
                .map(|u| u.as_str().trim_end_matches('/').into())
                .map_err(|e| format!("api_base_url: {e}")),
            None => Ok(match self.environment {
                Environment::Production => PRODUCTION_API.into(),
                Environment::Sandbox => SANDBOX_API.into(),
            }),
        }
    }

    pub fn offset(&self) -> Result<FixedOffset, String> {
        parse_timezone(&self.timezone)
    }

    pub fn timeout(&self) -> Result<Duration, String> {
        duration::parse_within(
            &self.request_timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "`{url}` must be an http:// or https:// URL with a host"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    Ok(parsed)
}

/// A realm id is the company id Intuit shows: digits only.
pub fn validate_realm(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a QuickBooks company id (digits only, e.g. 9130347596312345)"
        ))
    }
}
