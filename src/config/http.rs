//! `[http]`: listen address, admin token source, body limit.

use std::net::SocketAddr;
use std::path::Path;

use super::raw::RawHttp;
use super::{resolve, HttpConfig, Problems, DEFAULT_LISTEN};
use crate::secrets::SecretSource;

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
    let admin_token = match (&h.admin_token_file, &h.admin_token_credential) {
        (Some(_), Some(c)) => {
            p.at(
                Some(c.span()),
                "http.admin_token_credential",
                "set either admin_token_file or admin_token_credential, not both",
            );
            None
        }
        (Some(f), None) => {
            let path = resolve(base, Path::new(f.get_ref()));
            if !path.is_file() {
                p.at(
                    Some(f.span()),
                    "http.admin_token_file",
                    format!("credential file {} does not exist", path.display()),
                );
            }
            Some(SecretSource::File(path))
        }
        (None, Some(c)) => Some(SecretSource::Credential(c.get_ref().clone())),
        (None, None) => None,
    };
    HttpConfig {
        listen,
        admin_token,
        max_body_bytes: h.max_body_bytes.unwrap_or(1 << 20),
    }
}
