//! The `[connectors.netsuite]` config section: its serde shape, its defaults
//! and its validation, plus the small parsers (durations, UTC offsets, account
//! ids) the connector derives its runtime settings from.
//!
//! This module is pure: validation only looks at the file system to check that
//! credential files exist; it never reads a secret and never puts one in a
//! message. It must not build clients or talk to NetSuite.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;

use crate::secrets::SecretSource;

/// Largest `limit` SuiteQL accepts per page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Oracle refuses an `IN (...)` list of more than 1,000 expressions
/// (ORA-01795); this also keeps a resync query around 12 KiB at most, far
/// below any query length limit.
pub const MAX_RESYNC_BATCH: usize = 1000;

/// Options of one NetSuite connector (`[connectors.netsuite]`).
///
/// Each of the four TBA secrets comes from exactly one of `<name>_file` (a
/// path, relative paths are resolved against the config file's directory) or
/// `<name>_credential` (a systemd credential name, read from
/// `$CREDENTIALS_DIRECTORY`).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetsuiteOptions {
    /// Account id as NetSuite shows it, e.g. `1234567` or `1234567_SB1`.
    pub account_id: String,
    /// Overrides `https://<account>.suitetalk.api.netsuite.com` (proxies, tests).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub consumer_key_file: Option<PathBuf>,
    #[serde(default)]
    pub consumer_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub token_id_file: Option<PathBuf>,
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub consumer_key_credential: Option<String>,
    #[serde(default)]
    pub consumer_secret_credential: Option<String>,
    #[serde(default)]
    pub token_id_credential: Option<String>,
    #[serde(default)]
    pub token_secret_credential: Option<String>,
    /// The account's time zone as a fixed UTC offset (`"UTC"`, `"+02:00"`,
    /// `"-0800"`). IANA names are not supported: for a zone with daylight
    /// saving time give its standard (smaller) offset, which can only make
    /// incremental reads overlap more, never miss a change.
    pub timezone: String,
    /// Extra customer columns passed through as `custom.<name>`.
    #[serde(default)]
    pub custom_fields: Vec<String>,
    /// Customer column that marks a customer representing a subsidiary
    /// (intercompany). Empty disables the column (non-OneWorld accounts).
    #[serde(default = "default_intercompany_column")]
    pub intercompany_column: String,
    /// Transaction column (`'T'`/`'F'`) that marks an invoice on hold or in
    /// dispute; none by default (then no invoice is on hold).
    #[serde(default)]
    pub on_hold_column: Option<String>,
    /// How far each incremental pass reaches back before the previous pass
    /// started (clock skew, slow commits).
    #[serde(default = "default_overlap")]
    pub overlap: String,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_resync_batch_size")]
    pub resync_batch_size: usize,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
}

fn default_intercompany_column() -> String {
    "representingsubsidiary".into()
}
fn default_overlap() -> String {
    "5m".into()
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

/// Column names of the customer query; a custom field must not shadow them.
pub(crate) const RESERVED_COLUMNS: &[&str] = &[
    "id",
    "entityid",
    "companyname",
    "firstname",
    "lastname",
    "isperson",
    "email",
    "currency",
    "balancesearch",
    "isinactive",
    "intercompany",
    "lastmodified",
    "lastmodifieddate",
    "subsidiary",
    "links",
];

/// The four TBA secrets, each named for messages.
pub(crate) struct SecretSources {
    pub consumer_key: SecretSource,
    pub consumer_secret: SecretSource,
    pub token_id: SecretSource,
    pub token_secret: SecretSource,
}

impl NetsuiteOptions {
    /// Every problem with these options, in words for the person editing the
    /// config. Empty means valid.
    pub fn validate(&self, base_dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = validate_account_id(&self.account_id) {
            problems.push(e);
        }
        if let Some(url) = &self.base_url {
            if let Err(e) = parse_base_url(url) {
                problems.push(e);
            }
        }
        for (name, source) in self.each_secret_source(base_dir) {
            match source {
                Ok(SecretSource::File(path)) => {
                    if !path.is_file() {
                        problems.push(format!(
                            "{name}_file: {} does not exist or is not a file",
                            path.display()
                        ));
                    }
                }
                Ok(source @ SecretSource::Credential(_)) => {
                    // Only checkable when running under systemd; otherwise the
                    // connector reports a missing credential when it starts.
                    if let Ok(path) = source.path() {
                        if !path.is_file() {
                            problems.push(format!(
                                "{name}_credential: systemd credential {} does not exist",
                                path.display()
                            ));
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if let Err(e) = parse_timezone(&self.timezone) {
            problems.push(e);
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.custom_fields {
            if !is_identifier(name) {
                problems.push(format!(
                    "custom_fields: `{name}` is not a column name (use lower-case letters, digits and _, starting with a letter)"
                ));
            } else if RESERVED_COLUMNS.contains(&name.as_str()) {
                problems.push(format!(
                    "custom_fields: `{name}` is a standard customer column the connector already reads"
                ));
            } else if !seen.insert(name.as_str()) {
                problems.push(format!("custom_fields: `{name}` is listed twice"));
            }
        }
        if !self.intercompany_column.is_empty() && !is_identifier(&self.intercompany_column) {
            problems.push(format!(
                "intercompany_column: `{}` is not a column name (lower-case letters, digits and _; empty to disable)",
                self.intercompany_column
            ));
        }
        if let Some(col) = &self.on_hold_column {
            if !is_identifier(col) {
                problems.push(format!(
                    "on_hold_column: `{col}` is not a column name (lower-case letters, digits and _)"
                ));
            }
        }
        if let Err(e) = parse_duration(&self.overlap) {
            problems.push(format!("overlap: {e}"));
        }
        match parse_duration(&self.request_timeout) {
            Ok(d) if d.is_zero() => problems.push("request_timeout: must be more than 0".into()),
            Ok(_) => {}
            Err(e) => problems.push(format!("request_timeout: {e}")),
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            problems.push(format!(
                "page_size: {} is out of range; SuiteQL pages hold 1 to {MAX_PAGE_SIZE} rows",
                self.page_size
            ));
        }
        if self.resync_batch_size == 0 || self.resync_batch_size > MAX_RESYNC_BATCH {
            problems.push(format!(
                "resync_batch_size: {} is out of range; use 1 to {MAX_RESYNC_BATCH} (Oracle's IN-list limit)",
                self.resync_batch_size
            ));
        }
        problems
    }

    fn each_secret_source(
        &self,
        base_dir: &Path,
    ) -> [(&'static str, Result<SecretSource, String>); 4] {
        let pick = |name: &str, file: &Option<PathBuf>, cred: &Option<String>| {
            match (file, cred)
        {
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
                "consumer_key",
                pick(
                    "consumer_key",
                    &self.consumer_key_file,
                    &self.consumer_key_credential,
                ),
            ),
            (
                "consumer_secret",
                pick(
                    "consumer_secret",
                    &self.consumer_secret_file,
                    &self.consumer_secret_credential,
                ),
            ),
            (
                "token_id",
                pick("token_id", &self.token_id_file, &self.token_id_credential),
            ),
            (
                "token_secret",
                pick(
                    "token_secret",
                    &self.token_secret_file,
                    &self.token_secret_credential,
                ),
            ),
        ]
    }

    /// Where each secret comes from, or what is wrong with the settings.
    pub(crate) fn secret_sources(&self, base_dir: &Path) -> Result<SecretSources, Vec<String>> {
        let mut problems = Vec::new();
        let mut ok = Vec::new();
        for (_, source) in self.each_secret_source(base_dir) {
            match source {
                Ok(s) => ok.push(s),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut it = ok.into_iter();
        let mut next = || it.next().expect("four sources");
        Ok(SecretSources {
            consumer_key: next(),
            consumer_secret: next(),
            token_id: next(),
            token_secret: next(),
        })
    }

    /// `https://<host>` for this account, or the configured `base_url`
    /// (without a trailing slash).
    pub fn effective_base_url(&self) -> Result<String, String> {
        match &self.base_url {
            Some(url) => parse_base_url(url).map(|u| u.as_str().trim_end_matches('/').to_string()),
            None => {
                validate_account_id(&self.account_id)?;
                Ok(format!(
                    "https://{}.suitetalk.api.netsuite.com",
                    account_host_label(&self.account_id)
                ))
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn parse_base_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("base_url: `{url}` is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "base_url: `{url}` must be an http:// or https:// URL with a host"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "base_url: `{url}` must not have a query or fragment"
        ));
    }
    Ok(parsed)
}

/// Checks the shape of an account id (`123456`, `123456_SB1`, `TSTDRV12`).
pub fn validate_account_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account_id: `{id}` is not a NetSuite account id (e.g. 1234567 or 1234567_SB1)"
        ))
    }
}

/// The OAuth realm: upper case with underscores (`123456_SB1`).
pub fn account_realm(id: &str) -> String {
    id.trim().to_ascii_uppercase().replace('-', "_")
}

/// The first label of the account's host: lower case with dashes (`123456-sb1`).
pub fn account_host_label(id: &str) -> String {
    id.trim().to_ascii_lowercase().replace('_', "-")
}

/// Parses `500ms`, `30s`, `5m`, `1h` or `1d` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; write e.g. 500ms, 30s, 5m, 1h"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 30s, 5m, 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}`; use ms, s, m, h or d"
            ))
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses `UTC`, `Z`, `+02:00`, `-0800` or `+05` into a fixed offset.
pub fn parse_timezone(s: &str) -> Result<FixedOffset, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "timezone: `{s}` is not supported; write UTC or a fixed offset like \"-08:00\" \
             (for a zone with daylight saving time use its standard, smaller offset)"
        )
    };
    if t.eq_ignore_ascii_case("utc") || t.eq_ignore_ascii_case("gmt") || t == "Z" {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    }
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit())
        || !(digits.len() == 2 || digits.len() == 4)
        || (rest.contains(':') && (rest.len() != 5 || rest.as_bytes()[2] != b':'))
    {
        return Err(bad());
    }
    let hours: i32 = digits[..2].parse().map_err(|_| bad())?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().map_err(|_| bad())?
    } else {
        0
    };
    if hours > 14 || minutes > 59 {
        return Err(bad());
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(dir: &Path) -> NetsuiteOptions {
        for f in ["ck", "cs", "ti", "ts"] {
            std::fs::write(dir.join(f), "x\n").unwrap();
        }
        toml::from_str(
            r#"
            account_id = "123456_SB1"
            timezone = "-08:00"
            consumer_key_file = "ck"
            consumer_secret_file = "cs"
            token_id_file = "ti"
            token_secret_file = "ts"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_apply_and_minimal_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let o = minimal(dir.path());
        assert_eq!(o.page_size, 1000);
        assert_eq!(o.resync_batch_size, 200);
        assert_eq!(o.overlap, "5m");
        assert_eq!(o.request_timeout, "120s");
        assert_eq!(o.intercompany_column, "representingsubsidiary");
        assert!(o.custom_fields.is_empty());
        assert_eq!(o.validate(dir.path()), Vec::<String>::new());
        assert_eq!(
            o.effective_base_url().unwrap(),
            "https://123456-sb1.suitetalk.api.netsuite.com"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<NetsuiteOptions, _> =
            toml::from_str("account_id = \"1\"\ntimezone = \"UTC\"\npage_sise = 10\n");
        assert!(r.unwrap_err().to_string().contains("page_sise"));
    }

    #[test]
    fn validation_collects_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = minimal(dir.path());
        o.account_id = "12 34".into();
        o.token_secret_file = Some("missing-secret".into());
        o.consumer_key_credential = Some("ck".into());
        o.timezone = "Europe/Paris".into();
        o.custom_fields = vec!["custentity_ok".into(), "Bad-Name".into(), "email".into()];
        o.page_size = 5000;
        o.overlap = "5 minutes".into();
        o.resync_batch_size = 0;
        o.base_url = Some("ftp://x".into());
        let p = o.validate(dir.path());
        let all = p.join("\n");
        for needle in [
            "account_id: `12 34`",
            "consumer_key: set either",
            "missing-secret does not exist",
            "timezone: `Europe/Paris`",
            "`Bad-Name` is not a column name",
            "`email` is a standard customer column",
            "page_size: 5000",
            "overlap:",
            "resync_batch_size: 0",
            "base_url:",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // The missing file is named with its resolved path.
        assert!(all.contains(&dir.path().join("missing-secret").display().to_string()));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        for bad in ["", "5", "m", "5 m", "1.5s", "-1s", "5y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timezones_parse_as_fixed_offsets() {
        let secs = |s: &str| parse_timezone(s).map(|o| o.local_minus_utc());
        assert_eq!(secs("UTC"), Ok(0));
        assert_eq!(secs("Z"), Ok(0));
        assert_eq!(secs("+02:00"), Ok(7200));
        assert_eq!(secs("-08:00"), Ok(-28_800));
        assert_eq!(secs("-0330"), Ok(-12_600));
        assert_eq!(secs("+05"), Ok(18_000));
        for bad in [
            "America/Los_Angeles",
            "+2",
            "+25:00",
            "08:00",
            "+02:0",
            "+0:200",
        ] {
            assert!(parse_timezone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_and_realm_derive_from_account_id() {
        assert_eq!(account_host_label("123456_SB1"), "123456-sb1");
        assert_eq!(account_realm("123456_SB1"), "123456_SB1");
        assert_eq!(account_realm("123456-sb1"), "123456_SB1");
        assert_eq!(account_host_label("TSTDRV99"), "tstdrv99");
        assert!(validate_account_id("123456_SB1").is_ok());
        assert!(validate_account_id("_1").is_err());
        assert!(validate_account_id("1;drop").is_err());
    }
}
