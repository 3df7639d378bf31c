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

use super::suiteql::AccountTz;

use crate::config::{duration, OptionsCheck};
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
    /// The account's time zone (Setup > Company > Preferences): an IANA
    /// name (`"America/Los_Angeles"`, daylight saving time followed) or a
    /// fixed UTC offset (`"UTC"`, `"+02:00"`, `"-0800"`).
    pub timezone: String,
    /// Extra customer columns passed through as `custom.<name>`.
    #[serde(default)]
    pub custom_fields: Vec<String>,
    /// Custom list or record fields of the customer passed through as
    /// `custom.<name>` with their display text (`BUILTIN.DF`, e.g.
    /// `"Enterprise"`) instead of the internal id.
    #[serde(default)]
    pub display_fields: Vec<String>,
    /// Whether the account is a OneWorld account (subsidiaries). Unset:
    /// detected from the first customer query (an account without
    /// OneWorld has no `customersubsidiaryrelationship`); `false`: never
    /// read subsidiaries; `true`: require them (a clear error otherwise).
    #[serde(default)]
    pub oneworld: Option<bool>,
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
    /// Every problem with these options as `key: message` lines, in words
    /// for the person editing the config. Empty means valid.
    pub fn validate(&self, base_dir: &Path) -> Vec<String> {
        let mut check = OptionsCheck::detached(base_dir);
        self.check(&mut check);
        check.messages()
    }

    /// Reports every problem with these options, each at its key.
    pub fn check(&self, check: &mut OptionsCheck<'_>) {
        if let Err(e) = validate_account_id(&self.account_id) {
            check.problem("account_id", e);
        }
        if let Some(url) = &self.base_url {
            if let Err(e) = parse_base_url(url) {
                check.problem("base_url", e);
            }
        }
        for (name, source) in self.each_secret_source(check.base_dir()) {
            let key = if self.credential_named(name) {
                format!("{name}_credential")
            } else {
                format!("{name}_file")
            };
            if let Err(e) = source.and_then(|s| s.check_exists()) {
                check.problem(&key, e);
            }
        }
        if let Err(e) = parse_timezone(&self.timezone) {
            check.problem("timezone", e);
        }
        let mut seen = std::collections::BTreeSet::new();
        let fields = self
            .custom_fields
            .iter()
            .map(|f| ("custom_fields", f))
            .chain(self.display_fields.iter().map(|f| ("display_fields", f)));
        for (key, name) in fields {
            if !is_identifier(name) {
                check.problem(key, format!(
                    "`{name}` is not a column name (use lower-case letters, digits and _, starting with a letter)"
                ));
            } else if RESERVED_COLUMNS.contains(&name.as_str()) {
                check.problem(
                    key,
                    format!("`{name}` is a standard customer column the connector already reads"),
                );
            } else if !seen.insert(name.as_str()) {
                check.problem(
                    key,
                    format!("`{name}` is listed twice (in custom_fields or display_fields)"),
                );
            }
        }
        if !self.intercompany_column.is_empty() && !is_identifier(&self.intercompany_column) {
            check.problem(
                "intercompany_column",
                format!(
                "`{}` is not a column name (lower-case letters, digits and _; empty to disable)",
                self.intercompany_column
            ),
            );
        }
        if let Some(col) = &self.on_hold_column {
            if !is_identifier(col) {
                check.problem(
                    "on_hold_column",
                    format!("`{col}` is not a column name (lower-case letters, digits and _)"),
                );
            }
        }
        if let Err(e) = duration::parse(&self.overlap) {
            check.problem("overlap", e);
        }
        if let Err(e) = duration::parse_within(
            &self.request_timeout,
            Duration::from_millis(1),
            duration::MAX,
        ) {
            check.problem("request_timeout", e);
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            check.problem(
                "page_size",
                format!(
                    "{} is out of range; SuiteQL pages hold 1 to {MAX_PAGE_SIZE} rows",
                    self.page_size
                ),
            );
        }
        if self.resync_batch_size == 0 || self.resync_batch_size > MAX_RESYNC_BATCH {
            check.problem(
                "resync_batch_size",
                format!(
                    "{} is out of range; use 1 to {MAX_RESYNC_BATCH} (Oracle's IN-list limit)",
                    self.resync_batch_size
                ),
            );
        }
    }

    fn credential_named(&self, name: &str) -> bool {
        let (file, cred) = match name {
            "consumer_key" => (&self.consumer_key_file, &self.consumer_key_credential),
            "consumer_secret" => (&self.consumer_secret_file, &self.consumer_secret_credential),
            "token_id" => (&self.token_id_file, &self.token_id_credential),
            _ => (&self.token_secret_file, &self.token_secret_credential),
        };
        file.is_none() && cred.is_some()
    }

    fn each_secret_source(
        &self,
        base_dir: &Path,
    ) -> [(&'static str, Result<SecretSource, String>); 4] {
        let pick = |name: &str, file: &Option<PathBuf>, cred: &Option<String>| {
            SecretSource::from_pair(name, file.as_deref(), cred.as_deref(), base_dir)
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
        for (name, source) in self.each_secret_source(base_dir) {
            match source {
                Ok(s) => ok.push(s),
                Err(e) => problems.push(format!("{name}: {e}")),
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
            "`{id}` is not a NetSuite account id (e.g. 1234567 or 1234567_SB1)"
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

/// Parses an IANA zone name (`America/Los_Angeles`) or `UTC`, `Z`,
/// `+02:00`, `-0800`, `+05` (a fixed offset).
pub fn parse_timezone(s: &str) -> Result<AccountTz, String> {
    let t = s.trim();
    if t.contains('/') {
        return t.parse::<chrono_tz::Tz>().map(AccountTz::Zone).map_err(|_| {
            format!(
                "`{s}` is not an IANA time zone name (like \"America/Los_Angeles\" or \"Europe/Paris\")"
            )
        });
    }
    parse_fixed_offset(t).map(AccountTz::Fixed).map_err(|_| {
        format!(
            "`{s}` is not supported; write an IANA zone name like \"America/Los_Angeles\", \
             UTC or a fixed offset like \"-08:00\""
        )
    })
}

/// Parses `UTC`, `Z`, `+02:00`, `-0800` or `+05` into a fixed offset.
pub fn parse_fixed_offset(s: &str) -> Result<FixedOffset, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "`{s}` is not supported; write UTC or a fixed offset like \"-08:00\" \
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
        o.timezone = "Europe/Pariss".into();
        o.custom_fields = vec!["custentity_ok".into(), "Bad-Name".into(), "email".into()];
        o.display_fields = vec!["custentity_ok".into(), "Tier!".into()];
        o.page_size = 5000;
        o.overlap = "5 parsecs".into();
        o.resync_batch_size = 0;
        o.base_url = Some("ftp://x".into());
        let p = o.validate(dir.path());
        let all = p.join("\n");
        for needle in [
            "account_id: `12 34`",
            "consumer_key_file: set either",
            "missing-secret does not exist",
            "timezone: `Europe/Pariss` is not an IANA time zone name",
            "`Bad-Name` is not a column name",
            "`email` is a standard customer column",
            "display_fields: `custentity_ok` is listed twice (in custom_fields or display_fields)",
            "display_fields: `Tier!` is not a column name",
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
    fn timezones_parse_as_fixed_offsets() {
        let secs = |s: &str| parse_fixed_offset(s).map(|o| o.local_minus_utc());
        assert_eq!(secs("UTC"), Ok(0));
        assert_eq!(secs("Z"), Ok(0));
        assert_eq!(secs("+02:00"), Ok(7200));
        assert_eq!(secs("-08:00"), Ok(-28_800));
        assert_eq!(secs("-0330"), Ok(-12_600));
        assert_eq!(secs("+05"), Ok(18_000));
        assert_eq!(
            parse_timezone("America/Los_Angeles"),
            Ok(AccountTz::Zone(chrono_tz::America::Los_Angeles))
        );
        assert_eq!(
            parse_timezone("+02:00"),
            Ok(AccountTz::Fixed(FixedOffset::east_opt(7200).unwrap()))
        );
        assert!(parse_timezone("Mars/Olympus_Mons")
            .unwrap_err()
            .contains("is not an IANA time zone name"));
        for bad in ["Pacific", "+2", "+25:00", "08:00", "+02:0", "+0:200"] {
            assert!(parse_fixed_offset(bad).is_err(), "{bad}");
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
