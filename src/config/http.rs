//! `[http]`: listen address, admin, viewer and consumer token sources, body
//! limit.

use std::net::SocketAddr;
use std::path::Path;

use super::raw::RawHttp;
use super::{resolve, HttpConfig, Problems, DEFAULT_LISTEN};
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
    HttpConfig {
        listen,
        admin_token,
        viewer_token,
        consumer_token,
        max_body_bytes: h.max_body_bytes.unwrap_or(1 << 20),
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
            let path = resolve(base, Path::new(f.get_ref()));
            if !path.is_file() {
                p.at(
                    Some(f.span()),
                    &format!("http.{name}_token_file"),
                    format!("credential file {} does not exist", path.display()),
                );
            }
            Some(SecretSource::File(path))
        }
        (None, Some(c)) => Some(SecretSource::Credential(c.get_ref().clone())),
        (None, None) => None,
    }
}
