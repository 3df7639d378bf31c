//! The `oauth` table of an OAuth 2.0 connector's options: where the token
//! endpoint is and where the client id and secret come from.
//!
//! A connector embeds it as a nested table (`[connectors.<kind>.oauth]`),
//! checks it with [`OAuthOptions::check`] and builds its client with
//! [`OAuthOptions::client`]. Pure until `client`, which reads the two
//! secrets; no message ever holds a secret's value.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ClientAuth, OAuthClient, OAuthSettings};
use crate::config::{duration, OptionsCheck};
use crate::connectors::BuildContext;
use crate::secrets::SecretSource;

/// `[connectors.<kind>.oauth]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthOptions {
    /// The token endpoint; the kind's documented endpoint when left out
    /// (set it for proxies and tests).
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub client_id_file: Option<PathBuf>,
    #[serde(default)]
    pub client_id_credential: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub client_secret_credential: Option<String>,
    /// How the client authenticates at the token endpoint: `basic` (HTTP
    /// Basic, RFC 6749 §2.3.1, what Intuit and Xero expect) or
    /// `request_body` (`client_id` and `client_secret` form fields).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Timeout of one token request.
    #[serde(default = "default_timeout")]
    pub request_timeout: String,
}

fn default_timeout() -> String {
    "30s".into()
}

impl OAuthOptions {
    /// The two secret sources, or what is wrong with their keys.
    fn sources(
        &self,
        base_dir: &std::path::Path,
    ) -> [(&'static str, Result<SecretSource, String>); 2] {
        [
            (
                "client_id",
                SecretSource::from_pair(
                    "client_id",
                    self.client_id_file.as_deref(),
                    self.client_id_credential.as_deref(),
                    base_dir,
                ),
            ),
            (
                "client_secret",
                SecretSource::from_pair(
                    "client_secret",
                    self.client_secret_file.as_deref(),
                    self.client_secret_credential.as_deref(),
                    base_dir,
                ),
            ),
        ]
    }

    /// Reports every problem, with keys under `prefix` (the table's key in
    /// the connector's options, usually `oauth`). `default_token_url` is the
    /// kind's documented endpoint (`None`: `token_url` is required).
    pub fn check(
        &self,
        prefix: &str,
        default_token_url: Option<&str>,
        check: &mut OptionsCheck<'_>,
    ) {
        let key = |k: &str| format!("{prefix}.{k}");
        match (&self.token_url, default_token_url) {
            (Some(url), _) => {
                if let Err(e) = parse_token_url(url) {
                    check.problem(&key("token_url"), e);
                }
            }
            (None, None) => check.problem(&key("token_url"), "missing; set the token endpoint URL"),
            (None, Some(_)) => {}
        }
        for (name, source) in self.sources(check.base_dir()) {
            match source.and_then(|s| s.check_exists()) {
                Ok(()) => {}
                Err(e) => {
                    let which = if self.credential_set(name) {
                        format!("{name}_credential")
                    } else {
                        format!("{name}_file")
                    };
                    check.problem(&key(&which), e)
                }
            }
        }
        if let Err(e) = duration::parse_within(
            &self.request_timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        ) {
            check.problem(&key("request_timeout"), e);
        }
    }

    fn credential_set(&self, name: &str) -> bool {
        match name {
            "client_id" => self.client_id_credential.is_some() && self.client_id_file.is_none(),
            _ => self.client_secret_credential.is_some() && self.client_secret_file.is_none(),
        }
    }

    /// Reads the client id and secret and builds the connector's OAuth
    /// client over its credential store.
    pub fn client(
        &self,
        default_token_url: Option<&str>,
        cx: &BuildContext,
    ) -> Result<OAuthClient, String> {
        let url = self
            .token_url
            .as_deref()
            .or(default_token_url)
            .ok_or("oauth.token_url: missing")?;
        let token_url = parse_token_url(url).map_err(|e| format!("oauth.token_url: {e}"))?;
        let [(_, id), (_, secret)] = self.sources(&cx.base_dir);
        let client_id = id
            .map_err(|e| format!("oauth.client_id: {e}"))?
            .load()
            .map_err(|e| format!("oauth.client_id: {e}"))?;
        let client_secret = secret
            .map_err(|e| format!("oauth.client_secret: {e}"))?
            .load()
            .map_err(|e| format!("oauth.client_secret: {e}"))?;
        let timeout = duration::parse(&self.request_timeout)
            .map_err(|e| format!("oauth.request_timeout: {e}"))?;
        OAuthClient::new(
            OAuthSettings {
                token_url,
                client_id,
                client_secret,
                client_auth: self.client_auth,
                timeout,
            },
            cx,
        )
    }
}

fn parse_token_url(url: &str) -> Result<reqwest::Url, String> {
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
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(extra: &str) -> OAuthOptions {
        toml::from_str(extra).unwrap()
    }

    #[test]
    fn check_names_every_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), "abc\n").unwrap();
        let o = opts(
            "client_id_file = \"id\"\nclient_secret_file = \"nope\"\nclient_secret_credential = \"x\"\ntoken_url = \"http://example.com/t\"\nrequest_timeout = \"30\"\n",
        );
        let mut check = OptionsCheck::detached(dir.path());
        o.check("oauth", None, &mut check);
        let all = check.messages().join("\n");
        assert!(
            all.contains("oauth.token_url: `http://example.com/t` must use https"),
            "{all}"
        );
        assert!(all.contains("oauth.client_secret_file: set either client_secret_file or client_secret_credential, not both"), "{all}");
        assert!(
            all.contains("oauth.request_timeout: `30` has no unit"),
            "{all}"
        );
        assert!(!all.contains("client_id"), "{all}");

        let o = opts("client_id_file = \"id\"\n");
        let mut check = OptionsCheck::detached(dir.path());
        o.check("oauth", Some("https://example.com/token"), &mut check);
        let all = check.messages().join("\n");
        assert!(
            all.contains("oauth.client_secret_file: missing; set client_secret_file"),
            "{all}"
        );
        assert!(!all.contains("token_url"), "{all}");
    }

    #[test]
    fn unknown_keys_and_bad_auth_are_refused() {
        assert!(toml::from_str::<OAuthOptions>("client_idd_file = \"x\"\n")
            .unwrap_err()
            .to_string()
            .contains("client_idd_file"));
        assert!(toml::from_str::<OAuthOptions>("client_auth = \"digest\"\n")
            .unwrap_err()
            .to_string()
            .contains("digest"));
        let o: OAuthOptions = toml::from_str("client_auth = \"request_body\"\n").unwrap();
        assert_eq!(o.client_auth, ClientAuth::RequestBody);
    }
}
