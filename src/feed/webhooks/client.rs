//! The HTTP client of one webhook endpoint: no redirects, no proxy, a
//! request time limit, and a DNS resolver that refuses private addresses
//! (loopback, RFC 1918, link-local, unique local, ...) unless the endpoint
//! sets `allow_private_network`. The check runs on the addresses the
//! connection is actually made to — after DNS, at every connection — so a
//! name that later resolves elsewhere (DNS rebinding) is caught too; if
//! any address of a name is private, the name is refused. A URL whose host
//! is an address literal is checked before each request. Errors never
//! contain the URL (its path or query may carry a token).

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::sign::SigningKey;
use crate::config::WebhookConfig;

struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            if !allow {
                for a in &addrs {
                    if let Some(why) = crate::net::non_public(a.ip()) {
                        return Err(format!(
                            "{host} resolves to {}, a {why} address: refused (set allow_private_network = true for this webhook to allow it)",
                            a.ip()
                        )
                        .into());
                    }
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The endpoint's client.
pub fn build(cfg: &WebhookConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: cfg.allow_private_network,
        }))
        .user_agent(concat!("erpsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A reqwest error as one line without the URL, with its causes.
fn describe(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    let mut msg = parts.join(": ");
    if timeout {
        msg = format!("timed out: {msg}");
    }
    msg
}

/// POSTs one signed message; `Ok(status)` for a 2xx answer, otherwise why
/// not (a redirect is a failure: it is not followed).
pub async fn post(
    http: &reqwest::Client,
    cfg: &WebhookConfig,
    key: &SigningKey,
    msg_id: &str,
    body: Vec<u8>,
) -> Result<u16, String> {
    if !cfg.allow_private_network {
        if let Some(ip) = reqwest::Url::parse(&cfg.url)
            .ok()
            .as_ref()
            .and_then(crate::config::literal_ip)
        {
            if let Some(why) = crate::net::non_public(ip) {
                return Err(format!(
                    "{ip} is a {why} address: refused (set allow_private_network = true for this webhook to allow it)"
                ));
            }
        }
    }
    let ts = chrono::Utc::now().timestamp();
    let signature = key.sign(msg_id, ts, &body);
    let resp = http
        .post(&cfg.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(describe)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    if status.is_redirection() {
        return Err(format!(
            "answered HTTP {} (a redirect): redirects are not followed; configure the final URL",
            status.as_u16()
        ));
    }
    Err(format!("answered HTTP {}", status.as_u16()))
}
