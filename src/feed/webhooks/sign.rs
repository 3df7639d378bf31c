//! Standard Webhooks signatures: the secret is `whsec_` followed by the
//! base64 of 24 to 64 random bytes; a message is signed as
//! `v1,<base64 of HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`
//! (standardwebhooks.com, "Verifying webhook authenticity").

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secrets::Secret;

const PREFIX: &str = "whsec_";

/// The decoded signing key. Never printed.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Reads a `whsec_<base64>` secret. The error never contains the secret.
    pub fn parse(secret: &Secret) -> Result<SigningKey, String> {
        let s = secret.expose().trim();
        let Some(b64) = s.strip_prefix(PREFIX) else {
            return Err(format!(
                "the secret must have the form {PREFIX}<base64> (Standard Webhooks); generate one with: echo {PREFIX}$(head -c 32 /dev/urandom | base64)"
            ));
        };
        let key = STANDARD
            .decode(b64)
            .map_err(|_| format!("the part after `{PREFIX}` is not valid base64"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the secret holds {} bytes; Standard Webhooks secrets are 24 to 64 random bytes",
                key.len()
            ));
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // The reference libraries' own test vector.
        let key =
            SigningKey::parse(&Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")).unwrap();
        assert_eq!(
            key.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for (s, want) in [
            (
                "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "must have the form whsec_",
            ),
            ("whsec_%%%notbase64", "not valid base64"),
            ("whsec_c2hvcnQ=", "holds 5 bytes"),
        ] {
            let e = SigningKey::parse(&Secret::new(s)).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains(s.trim_start_matches("whsec_")), "{e}");
        }
        let k =
            SigningKey::parse(&Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n")).unwrap();
        assert_eq!(format!("{k:?}"), "SigningKey([redacted])");
    }
}
