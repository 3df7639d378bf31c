//! The `[connectors.xero]` table: which organisation (tenant), where the
//! API and the token endpoint are, where the OAuth client id and secret come
//! from, and the page and batch sizes.
//!
//! Pure: `check` looks at the file system only to see that the client
//! credential files exist; it never reads a secret, never talks to Xero and
//! never puts a secret in a message.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{duration, OptionsCheck};
use crate::connectors::oauth::OAuthOptions;

/// Xero's API host; the accounting API lives under `/api.xro/2.0` and the
/// tenant list under `/connections`.
pub const API_BASE: &str = "https://api.xero.com";

/// Xero's token endpoint (`xero-identity.yaml`, securitySchemes).
pub const TOKEN_URL: &str = "https://identity.xero.com/connect/token";

/// Largest `pageSize` the connector asks for. Xero's specification gives no
/// maximum; integrators report 1,000.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Most contacts named in one resync request. A list of `ContactIDs` (36
/// characters and an encoded comma each) and the `where` clauses built from
/// them must stay below the ~2,000-character query limit Xero users run
/// into (XeroAPI/Xero-OpenAPI#534: at most 52 ids fit in `IDs`).
pub const MAX_RESYNC_BATCH: usize = 40;

/// `[connectors.xero]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XeroOptions {
    /// The organisation to sync: a tenant id from `GET /connections`. Left
    /// out, every pass fails with the list of organisations the connection
    /// can see (their names and tenant ids), so the first run tells what to
    /// write here.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Overrides `https://api.xero.com` (a proxy, a test server). The
    /// accounting API is `<base_url>/api.xro/2.0`, the tenant list
    /// `<base_url>/connections`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// `[connectors.xero.oauth]`: token endpoint (default Xero's), client id
    /// and secret from files or systemd credentials.
    pub oauth: OAuthOptions,
    /// Records per page (`pageSize`), 1..=1000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Contacts per resync request, 1..=40.
    #[serde(default = "default_resync_batch_size")]
    pub resync_batch_size: usize,
    /// Timeout of one API request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
}

fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}

fn default_resync_batch_size() -> usize {
    MAX_RESYNC_BATCH
}

fn default_request_timeout() -> String {
    "60s".into()
}

impl XeroOptions {
    /// Reports every problem, each at its key.
    pub fn check(&self, check: &mut OptionsCheck<'_>) {
        if let Some(t) = &self.tenant_id {
            if let Err(e) = check_tenant_id(t) {
                check.problem("tenant_id", e);
            }
        }
        if let Some(url) = &self.base_url {
            if let Err(e) = parse_base_url(url) {
                check.problem("base_url", e);
            }
        }
        self.oauth.check("oauth", Some(TOKEN_URL), check);
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            check.problem(
                "page_size",
                format!(
                    "{} is out of range; use 1..={MAX_PAGE_SIZE}",
                    self.page_size
                ),
            );
        }
        if self.resync_batch_size == 0 || self.resync_batch_size > MAX_RESYNC_BATCH {
            check.problem(
                "resync_batch_size",
                format!(
                    "{} is out of range; use 1..={MAX_RESYNC_BATCH} (Xero refuses longer query strings)",
                    self.resync_batch_size
                ),
            );
        }
        if let Err(e) = duration::parse_within(
            &self.request_timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        ) {
            check.problem("request_timeout", e);
        }
    }

    /// The API host in use.
    pub fn effective_base_url(&self) -> Result<reqwest::Url, String> {
        parse_base_url(self.base_url.as_deref().unwrap_or(API_BASE))
    }
}

/// Whether `s` has the shape of a GUID (`8-4-4-4-12` hexadecimal digits),
/// the form of every Xero id. Only such ids are ever put into a query.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn check_tenant_id(t: &str) -> Result<(), String> {
    if is_guid(t) {
        Ok(())
    } else {
        Err(format!(
            "`{t}` is not a Xero tenant id (a GUID such as fe79f7dd-b6d4-4a92-ba7b-538af6289c58); \
             leave tenant_id out and the connector lists the organisations it can see"
        ))
    }
}

/// Parses the API host: https, or http for a loopback test server; no path.
pub fn parse_base_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("`{url}` must be an https:// URL with a host"));
    }
    if u.scheme() == "http"
        && !matches!(
            u.host_str(),
            Some("127.0.0.1") | Some("localhost") | Some("[::1]")
        )
    {
        return Err(format!(
            "`{url}` must use https (plain http is accepted for loopback test servers only)"
        ));
    }
    if u.query().is_some() || !matches!(u.path(), "" | "/") {
        return Err(format!(
            "`{url}` must be the host only (e.g. https://api.xero.com); the paths are added by the connector"
        ));
    }
    Ok(u)
}
