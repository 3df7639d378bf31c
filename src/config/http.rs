//! `[http]`: listen address, admin, viewer and consumer token sources, body
//! limit.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::RawHttp;
use super::{duration, resolve, HttpConfig, Problems, DEFAULT_LISTEN};

/// Open connections of the HTTP port by default: far more than a console
/// and a few API clients need, far fewer than the unit's `LimitNOFILE=`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The most `http.max_connections` may be (the unit's descriptor limit is
/// 16384, and the store and upstream clients need some).
pub const MAX_CONNECTIONS: usize = 12_000;
use crate::secrets::SecretSource;
use serde_spanned::Spanned;

pub(super) fn compile(h: RawHttp, base: &Path, p: &mut Problems<'_>) -> HttpConfig {
    let default_listen = || DEFAULT_LISTEN.parse().expect("default parses");
    let listen = match &h.listen {
        Some(s) => s.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
            p.at(
                Some(s.span()),
                "http.listen",
                format!(
                    "`{}` is not an address:port like 127.0.0.1:8089",
                    s.get_ref()
                ),
            );
            default_listen()
        }),
        None => default_listen(),
    };
    let admin_token = token_source(
        "admin",
        &h.admin_token_file,
        &h.admin_token_credential,
        base,
        p,
    );
    let viewer_token = token_source(
        "viewer",
        &h.viewer_token_file,
        &h.viewer_token_credential,
        base,
        p,
    );
    let consumer_token = token_source(
        "consumer",
        &h.consumer_token_file,
        &h.consumer_token_credential,
        base,
        p,
    );
    let max_connections = match &h.max_connections {
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => n,
            _ => {
                p.at(
                    Some(v.span()),
                    "http.max_connections",
                    format!("{} is outside 1 ..= {MAX_CONNECTIONS}", v.get_ref()),
                );
                DEFAULT_MAX_CONNECTIONS
            }
        },
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let mut timeout = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
        Some(s) => duration::parse_within(
            s.get_ref(),
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )
        .unwrap_or_else(|e| {
            p.at(Some(s.span()), key, e);
            default
        }),
        None => default,
    };
    let header_read_timeout = timeout(
        &h.header_read_timeout,
        "http.header_read_timeout",
        Duration::from_secs(10),
    );
    let idle_timeout = timeout(
        &h.idle_timeout,
        "http.idle_timeout",
        Duration::from_secs(60),
    );
    HttpConfig {
        listen,
        admin_token,
        viewer_token,
        consumer_token,
        max_body_bytes: h.max_body_bytes.unwrap_or(1 << 20),
        max_connections,
        header_read_timeout,
        idle_timeout,
    }
}

/// Where a role's token comes from: `<name>_token_file` or
/// `<name>_token_credential` (one of the two), or `None` for no such role.
fn token_source(
    name: &str,
    file: &Option<Spanned<String>>,
    credential: &Option<Spanned<String>>,
    base: &Path,
    p: &mut Problems<'_>,
) -> Option<SecretSource> {
    match (file, credential) {
        (Some(_), Some(c)) => {
            p.at(
                Some(c.span()),
                &format!("http.{name}_token_credential"),
                format!("set either {name}_token_file or {name}_token_credential, not both"),
            );
            None
        }
        (Some(f), None) => {
            let key = format!("http.{name}_token_file");
            p.remember(f.span(), &key);
            let path = resolve(base, Path::new(f.get_ref()));
            if let Err(e) = crate::secrets::check_file(&path) {
                p.at(Some(f.span()), &key, e);
            }
            Some(SecretSource::File(path))
        }
        (None, Some(c)) => {
            p.remember(c.span(), &format!("http.{name}_token_credential"));
            Some(SecretSource::Credential(c.get_ref().clone()))
        }
        (None, None) => None,
    }
}
