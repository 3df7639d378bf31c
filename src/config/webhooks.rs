//! `[[webhooks]]`: endpoints the change feed is delivered to — URL, signing
//! secret source, event types, batching, back-off and the private-network
//! guard. Checked here: unique ids, an `http(s)` URL without credentials,
//! a literal private address only with `allow_private_network`, known event
//! types, durations in range, the secret file present. The secret itself is
//! read (and its `whsec_` form checked) when the daemon starts.

use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;

use super::raw::RawWebhook;
use super::{duration, resolve, Problems};
use crate::secrets::SecretSource;
use crate::store::EventType;

/// Where a new endpoint starts in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookStart {
    /// The oldest event kept: the receiver can rebuild everything served.
    Beginning,
    /// Events written from the endpoint's first start on.
    Latest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub id: String,
    pub url: String,
    /// The signing secret (`whsec_<base64>`).
    pub secret: SecretSource,
    /// Event types delivered (`invoice.upserted`, `customer.*`, `*`); empty
    /// means every type.
    pub events: Vec<String>,
    /// Allow targets on loopback, private and link-local addresses.
    pub allow_private_network: bool,
    /// Events per request at most.
    pub batch_size: usize,
    /// Time limit of one request.
    pub timeout: Duration,
    /// First wait after a failed delivery; doubled (with jitter) per failure.
    pub retry_initial: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// Failing this long without a success marks the endpoint failing.
    pub max_retry_time: Duration,
    pub start: WebhookStart,
}

impl WebhookConfig {
    /// Whether events of `kind` go to this endpoint.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| pattern_matches(p, kind))
    }

    /// `scheme://host[:port]` of the URL, for status and logs (the path and
    /// query may carry a token and are never shown).
    pub fn target(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(u) => {
                let host = u.host_str().unwrap_or("");
                match u.port() {
                    Some(p) => format!("{}://{host}:{p}", u.scheme()),
                    None => format!("{}://{host}", u.scheme()),
                }
            }
            Err(_) => "(invalid url)".into(),
        }
    }
}

fn pattern_matches(p: &str, kind: EventType) -> bool {
    if p == "*" {
        return true;
    }
    match p.strip_suffix(".*") {
        Some(prefix) => kind
            .as_str()
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('.')),
        None => p == kind.as_str(),
    }
}

fn valid_pattern(p: &str) -> bool {
    p == "*" || EventType::ALL.iter().any(|t| pattern_matches(p, *t))
}

fn dur(
    v: &Option<Spanned<String>>,
    key: &str,
    default: Duration,
    min: Duration,
    max: Duration,
    p: &mut Problems<'_>,
) -> Duration {
    match v {
        Some(s) => duration::parse_within(s.get_ref(), min, max).unwrap_or_else(|e| {
            p.at(Some(s.span()), key, e);
            default
        }),
        None => default,
    }
}

pub(super) fn compile(
    raw: Vec<Spanned<RawWebhook>>,
    base: &Path,
    p: &mut Problems<'_>,
) -> Vec<WebhookConfig> {
    let mut out: Vec<WebhookConfig> = Vec::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let span = entry.span();
        let w = entry.into_inner();
        let k = |name: &str| format!("webhooks[{i}].{name}");
        let id = w.id.get_ref().clone();
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            p.at(
                Some(w.id.span()),
                &k("id"),
                format!("`{id}` is not a webhook id: 1 to 64 letters, digits, `-` or `_`"),
            );
        } else if out.iter().any(|o| o.id == id) {
            p.at(
                Some(w.id.span()),
                &k("id"),
                format!("webhook id `{id}` is used twice"),
            );
        }
        let allow_private = w.allow_private_network.unwrap_or(false);
        let url = w.url.get_ref().clone();
        match reqwest::Url::parse(&url) {
            Err(e) => p.at(
                Some(w.url.span()),
                &k("url"),
                format!("`{url}` is not a URL ({e}); write e.g. https://hooks.example.com/erpsync"),
            ),
            Ok(u) => {
                if u.scheme() != "https" && u.scheme() != "http" {
                    p.at(
                        Some(w.url.span()),
                        &k("url"),
                        format!(
                            "`{}` URLs are not supported; use https (or http)",
                            u.scheme()
                        ),
                    );
                } else if !u.username().is_empty() || u.password().is_some() {
                    p.at(
                        Some(w.url.span()),
                        &k("url"),
                        "must not contain a user name or password; the receiver verifies the signature instead",
                    );
                } else if u.host_str().is_none_or(str::is_empty) {
                    p.at(Some(w.url.span()), &k("url"), "has no host");
                } else if let Some(ip) = literal_ip(&u) {
                    if let (Some(why), false) = (crate::net::non_public(ip), allow_private) {
                        p.at(
                            Some(w.url.span()),
                            &k("url"),
                            format!("{ip} is a {why} address; set allow_private_network = true to deliver there"),
                        );
                    }
                }
            }
        }
        let secret = match SecretSource::from_pair(
            "secret",
            w.secret_file
                .as_ref()
                .map(|f| Path::new(f.get_ref().as_str())),
            w.secret_credential.as_ref().map(|c| c.get_ref().as_str()),
            base,
        ) {
            Ok(s) => {
                if let (SecretSource::File(path), Some(f)) = (&s, &w.secret_file) {
                    let path = resolve(base, path);
                    if !path.is_file() {
                        p.at(
                            Some(f.span()),
                            &k("secret_file"),
                            format!("secret file {} does not exist", path.display()),
                        );
                    }
                }
                s
            }
            Err(e) => {
                let at = w
                    .secret_credential
                    .as_ref()
                    .map(|c| c.span())
                    .unwrap_or(span.clone());
                p.at(Some(at), &k("secret_file"), e);
                SecretSource::Credential(String::new())
            }
        };
        let events = match &w.events {
            Some(v) => {
                for e in v.get_ref() {
                    if !valid_pattern(e) {
                        p.at(
                            Some(v.span()),
                            &k("events"),
                            format!(
                                "`{e}` is not an event type; known: {}, or a prefix such as `invoice.*`, or `*`",
                                EventType::ALL.map(|t| t.as_str()).join(", ")
                            ),
                        );
                    }
                }
                if v.get_ref().is_empty() {
                    p.at(
                        Some(v.span()),
                        &k("events"),
                        "is empty; leave it out to deliver every event type",
                    );
                }
                v.get_ref().clone()
            }
            None => Vec::new(),
        };
        let batch_size = match &w.batch_size {
            Some(v) if !(1..=1000).contains(v.get_ref()) => {
                p.at(
                    Some(v.span()),
                    &k("batch_size"),
                    format!("must be between 1 and 1000, got {}", v.get_ref()),
                );
                100
            }
            Some(v) => *v.get_ref() as usize,
            None => 100,
        };
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let timeout = dur(&w.timeout, &k("timeout"), s(10), ms(100), s(300), p);
        let retry_initial = dur(
            &w.retry_initial,
            &k("retry_initial"),
            s(1),
            ms(10),
            s(3600),
            p,
        );
        let retry_max = dur(&w.retry_max, &k("retry_max"), s(300), ms(10), s(86_400), p);
        if retry_max < retry_initial {
            if let Some(v) = &w.retry_max {
                p.at(
                    Some(v.span()),
                    &k("retry_max"),
                    format!(
                        "is shorter than retry_initial ({})",
                        duration::format(retry_initial)
                    ),
                );
            }
        }
        let max_retry_time = dur(
            &w.max_retry_time,
            &k("max_retry_time"),
            s(3600),
            ms(10),
            s(30 * 86_400),
            p,
        );
        let start = match w.start.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("beginning", _)) => WebhookStart::Beginning,
            Some(("latest", _)) => WebhookStart::Latest,
            Some((other, sp)) => {
                p.at(
                    Some(sp),
                    &k("start"),
                    format!("`{other}` is not a start; use \"beginning\" or \"latest\""),
                );
                WebhookStart::Beginning
            }
        };
        out.push(WebhookConfig {
            id,
            url,
            secret,
            events,
            allow_private_network: allow_private,
            batch_size,
            timeout,
            retry_initial,
            retry_max,
            max_retry_time,
            start,
        });
    }
    out
}

/// The host of `u` when it is an IP address literal.
pub fn literal_ip(u: &reqwest::Url) -> Option<std::net::IpAddr> {
    let h = u.host_str()?;
    h.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_patterns_match_types_and_prefixes() {
        assert!(pattern_matches("*", EventType::ResyncFinished));
        assert!(pattern_matches("invoice.*", EventType::InvoiceDeleted));
        assert!(!pattern_matches("invoice.*", EventType::TransactionDeleted));
        assert!(!pattern_matches("inv.*", EventType::InvoiceDeleted));
        assert!(pattern_matches(
            "customer.purged",
            EventType::CustomerPurged
        ));
        assert!(valid_pattern("transaction.*"));
        assert!(!valid_pattern("invoice.created"));
        assert!(!valid_pattern("payment.*"));
    }
}
