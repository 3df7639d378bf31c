//! The config file as serde reads it: every table refuses unknown keys, and
//! values whose place matters for error messages keep their span.
//!
//! A connector's own options table (`[connectors.<kind>]`) is not here: it
//! is taken out of the document before serde reads the rest (see
//! [`super::connectors`]) and compiled by the connector kind itself.

use serde::Deserialize;
use serde_spanned::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub daemon: Option<RawDaemon>,
    pub http: Option<RawHttp>,
    pub exclusions: Option<RawExclusions>,
    #[serde(default)]
    pub connectors: Vec<RawConnector>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub reminders: Option<Spanned<toml::Value>>,
    pub feed: Option<RawFeed>,
    #[serde(default)]
    pub webhooks: Vec<Spanned<RawWebhook>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub store_cache_mb: Option<Spanned<u64>>,
    pub store: Option<Spanned<String>>,
    pub store_password_file: Option<Spanned<String>>,
    pub store_password_credential: Option<Spanned<String>>,
    pub tombstone_retention_days: Option<Spanned<u64>>,
    pub audit_retention_days: Option<Spanned<u64>>,
    pub resync_job_retention_days: Option<Spanned<u64>>,
    pub store_failure_timeout: Option<Spanned<String>>,
    pub lease_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<Spanned<String>>,
    pub admin_token_file: Option<Spanned<String>>,
    pub admin_token_credential: Option<Spanned<String>>,
    pub viewer_token_file: Option<Spanned<String>>,
    pub viewer_token_credential: Option<Spanned<String>>,
    pub consumer_token_file: Option<Spanned<String>>,
    pub consumer_token_credential: Option<Spanned<String>>,
    pub max_body_bytes: Option<usize>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub retention: Option<Spanned<String>>,
    pub max_events: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub id: Spanned<String>,
    pub url: Spanned<String>,
    pub secret_file: Option<Spanned<String>>,
    pub secret_credential: Option<Spanned<String>>,
    pub events: Option<Spanned<Vec<String>>>,
    pub allow_private_network: Option<bool>,
    pub batch_size: Option<Spanned<u64>>,
    pub timeout: Option<Spanned<String>>,
    pub retry_initial: Option<Spanned<String>>,
    pub retry_max: Option<Spanned<String>>,
    pub max_retry_time: Option<Spanned<String>>,
    pub start: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExclusions {
    pub max_new_exclusion_ratio: Option<Spanned<f64>>,
}

/// The keys every connector has, whatever its kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnector {
    pub id: Spanned<String>,
    pub kind: Spanned<String>,
    pub poll_interval: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub resync_share: Option<Spanned<f64>>,
    pub native_exclusions: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: Option<f64>,
    // Integers as TOML has them: a value out of range is then reported
    // under its own key by the compiler, not as a type error of the table.
    pub burst: Option<i64>,
    pub max_concurrency: Option<i64>,
    pub max_attempts: Option<i64>,
    pub requests_per_day: Option<i64>,
    pub max_retry_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: Spanned<String>,
    pub description: Option<String>,
    pub case_sensitive: Option<bool>,
    pub when: Spanned<toml::Value>,
}
