//! NetSuite token-based authentication: OAuth 1.0a request signing with
//! HMAC-SHA256 (RFC 5849 §3.4), as SuiteTalk REST expects it.
//!
//! This module owns the signature base string, the signing key, the
//! `Authorization` header format and fresh nonces. It is pure apart from the
//! random nonce and the clock used by [`Signer::authorize_now`]; it never sends
//! a request and never logs or formats a secret into anything but the
//! signature it computes.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::distr::{Alphanumeric, SampleString};
use sha2::Sha256;

use crate::secrets::Secret;

/// The only method NetSuite accepts since 2023.1.
pub const SIGNATURE_METHOD: &str = "HMAC-SHA256";

/// RFC 3986 unreserved characters stay as they are; everything else is
/// `%XX`-encoded with upper-case hex (RFC 5849 §3.6).
const OAUTH_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// RFC 5849 §3.6 percent-encoding.
pub fn pct(s: &str) -> String {
    utf8_percent_encode(s, OAUTH_ENCODE).to_string()
}

/// A keyed MAC: `(key, message) -> digest`. HMAC-SHA256 in production; the
/// tests plug in HMAC-SHA1 to check against the RFC's published vectors.
pub type MacFn = fn(&[u8], &[u8]) -> Vec<u8>;

pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The signature base string (RFC 5849 §3.4.1): method, base string URI
/// (no query, default port dropped) and the normalised parameters — every
/// query parameter of `url` plus the `oauth_*` protocol parameters (without
/// `realm` and `oauth_signature`). A request body is never part of it.
pub fn base_string(method: &str, url: &reqwest::Url, oauth: &[(&str, &str)]) -> String {
    let mut base_uri = format!(
        "{}://{}",
        url.scheme().to_ascii_lowercase(),
        url.host_str().unwrap_or_default().to_ascii_lowercase()
    );
    if let Some(port) = url.port() {
        base_uri.push_str(&format!(":{port}"));
    }
    base_uri.push_str(if url.path().is_empty() {
        "/"
    } else {
        url.path()
    });

    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (pct(&k), pct(&v)))
        .chain(oauth.iter().map(|(k, v)| (pct(k), pct(v))))
        .collect();
    pairs.sort();
    let normalized = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        pct(&base_uri),
        pct(&normalized)
    )
}

/// Base64 of the MAC of `base` under `pct(consumer_secret)&pct(token_secret)`.
pub fn sign(base: &str, consumer_secret: &str, token_secret: &str, mac: MacFn) -> String {
    let key = format!("{}&{}", pct(consumer_secret), pct(token_secret));
    base64::engine::general_purpose::STANDARD.encode(mac(key.as_bytes(), base.as_bytes()))
}

/// `OAuth realm="…", oauth_…="…"` with every value percent-encoded.
pub fn header_value(realm: &str, params: &[(&str, &str)]) -> String {
    let mut out = format!("OAuth realm=\"{}\"", pct(realm));
    for (k, v) in params {
        out.push_str(&format!(", {}=\"{}\"", pct(k), pct(v)));
    }
    out
}

/// A random 20-character alphanumeric nonce, fresh for every request.
pub fn fresh_nonce() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 20)
}

/// Signs requests for one account and one token. Debug-prints no secret.
#[derive(Debug, Clone)]
pub struct Signer {
    realm: String,
    consumer_key: Secret,
    consumer_secret: Secret,
    token_id: Secret,
    token_secret: Secret,
}

impl Signer {
    pub fn new(
        realm: impl Into<String>,
        consumer_key: Secret,
        consumer_secret: Secret,
        token_id: Secret,
        token_secret: Secret,
    ) -> Self {
        Signer {
            realm: realm.into(),
            consumer_key,
            consumer_secret,
            token_id,
            token_secret,
        }
    }

    /// The `Authorization` header value for `method url` with this nonce and
    /// timestamp (seconds since the epoch).
    pub fn authorize(
        &self,
        method: &str,
        url: &reqwest::Url,
        nonce: &str,
        timestamp: i64,
    ) -> String {
        self.authorize_with(method, url, nonce, timestamp, SIGNATURE_METHOD, hmac_sha256)
    }

    /// Like [`authorize`](Signer::authorize) with a fresh nonce and the
    /// current time: call it once per attempt.
    pub fn authorize_now(&self, method: &str, url: &reqwest::Url) -> String {
        self.authorize(method, url, &fresh_nonce(), chrono::Utc::now().timestamp())
    }

    fn authorize_with(
        &self,
        method: &str,
        url: &reqwest::Url,
        nonce: &str,
        timestamp: i64,
        signature_method: &str,
        mac: MacFn,
    ) -> String {
        let ts = timestamp.to_string();
        let mut params = vec![
            ("oauth_consumer_key", self.consumer_key.expose()),
            ("oauth_token", self.token_id.expose()),
            ("oauth_signature_method", signature_method),
            ("oauth_timestamp", ts.as_str()),
            ("oauth_nonce", nonce),
            ("oauth_version", "1.0"),
        ];
        let base = base_string(method, url, &params);
        let signature = sign(
            &base,
            self.consumer_secret.expose(),
            self.token_secret.expose(),
            mac,
        );
        params.push(("oauth_signature", &signature));
        header_value(&self.realm, &params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain SHA-1 (FIPS 180-4), only to check the base string and key
    /// handling against the published HMAC-SHA1 vectors.
    fn sha1(data: &[u8]) -> [u8; 20] {
        let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
        let mut msg = data.to_vec();
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
        for chunk in msg.chunks(64) {
            let mut w = [0u32; 80];
            for i in 0..16 {
                w[i] = u32::from_be_bytes(chunk[i * 4..i * 4 + 4].try_into().unwrap());
            }
            for i in 16..80 {
                w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
            }
            let [mut a, mut b, mut c, mut d, mut e] = h;
            for (i, wi) in w.iter().enumerate() {
                let (f, k) = match i {
                    0..=19 => ((b & c) | (!b & d), 0x5A827999),
                    20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                    40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                    _ => (b ^ c ^ d, 0xCA62C1D6),
                };
                let t = a
                    .rotate_left(5)
                    .wrapping_add(f)
                    .wrapping_add(e)
                    .wrapping_add(k)
                    .wrapping_add(*wi);
                e = d;
                d = c;
                c = b.rotate_left(30);
                b = a;
                a = t;
            }
            for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
                *x = x.wrapping_add(y);
            }
        }
        let mut out = [0u8; 20];
        for (i, x) in h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
        }
        out
    }

    fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..20].copy_from_slice(&sha1(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        inner.extend_from_slice(message);
        let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        outer.extend_from_slice(&sha1(&inner));
        sha1(&outer).to_vec()
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    const PHOTOS: &str = "http://photos.example.net/photos?file=vacation.jpg&size=original";

    /// RFC 5849 §1.2 (no oauth_version) with the given method/hash.
    fn rfc_params(method: &str) -> Vec<(&str, &str)> {
        vec![
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_token", "nnch734d00sl2jdk"),
            ("oauth_signature_method", method),
            ("oauth_timestamp", "137131202"),
            ("oauth_nonce", "chapoH"),
        ]
    }

    #[test]
    fn sha1_helper_is_sha1() {
        let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn rfc5849_section_1_2_hmac_sha1_vector() {
        let base = base_string("GET", &url(PHOTOS), &rfc_params("HMAC-SHA1"));
        let sig = sign(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00", hmac_sha1);
        assert_eq!(sig, "MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    }

    #[test]
    fn oauth_core_a5_hmac_sha1_vector() {
        let params = [
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_token", "nnch734d00sl2jdk"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "1191242096"),
            ("oauth_nonce", "kllo9940pd9333jh"),
            ("oauth_version", "1.0"),
        ];
        let base = base_string("GET", &url(PHOTOS), &params);
        let sig = sign(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00", hmac_sha1);
        assert_eq!(sig, "tR3+Ty81lMeYAr/Fid0kMTYa/WM=");
    }

    #[test]
    fn rfc_inputs_with_hmac_sha256() {
        let base = base_string("GET", &url(PHOTOS), &rfc_params("HMAC-SHA256"));
        assert_eq!(
            base,
            "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH%26oauth_signature_method%3DHMAC-SHA256%26oauth_timestamp%3D137131202%26oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal"
        );
        let sig = sign(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00", hmac_sha256);
        assert_eq!(sig, "HtMwoX2zenlFjgGg/SNEoKEQmL7CzxYFEKzs7er044Y=");
    }

    #[test]
    fn netsuite_shaped_suiteql_vector_and_header() {
        let signer = Signer::new(
            "123456_SB1",
            Secret::new("dpf43f3p2l4k3l03"),
            Secret::new("kd94hf93k423kf44"),
            Secret::new("nnch734d00sl2jdk"),
            Secret::new("pfkkdhi9sl3r4s00"),
        );
        let u = url("https://123456-sb1.suitetalk.api.netsuite.com/services/rest/query/v1/suiteql?limit=2&offset=0");
        let header = signer.authorize("POST", &u, "chapoH", 137131202);
        assert_eq!(
            header,
            "OAuth realm=\"123456_SB1\", oauth_consumer_key=\"dpf43f3p2l4k3l03\", \
             oauth_token=\"nnch734d00sl2jdk\", oauth_signature_method=\"HMAC-SHA256\", \
             oauth_timestamp=\"137131202\", oauth_nonce=\"chapoH\", oauth_version=\"1.0\", \
             oauth_signature=\"LHAfVKpl1NKoP%2B%2BNabnILT%2BbpuIQnC6wz8fDdGVeY8M%3D\""
        );
    }

    #[test]
    fn base_string_normalises_uri_and_parameters() {
        // Default port dropped, other ports kept, host lower-cased, query
        // values re-encoded per RFC 3986, parameters sorted by name then value.
        let base = base_string(
            "post",
            &url("HTTPS://Example.COM:443/a%20b?b=2&a=x+y&a=%7E&c"),
            &[("oauth_nonce", "n")],
        );
        assert_eq!(
            base,
            "POST&https%3A%2F%2Fexample.com%2Fa%2520b&a%3Dx%2520y%26a%3D~%26b%3D2%26c%3D%26oauth_nonce%3Dn"
        );
        let base = base_string("GET", &url("http://127.0.0.1:8080/p"), &[]);
        assert_eq!(base, "GET&http%3A%2F%2F127.0.0.1%3A8080%2Fp&");
    }

    #[test]
    fn nonces_are_fresh() {
        let a = fresh_nonce();
        assert_eq!(a.len(), 20);
        assert_ne!(a, fresh_nonce());
    }

    #[test]
    fn signer_debug_hides_secrets() {
        let s = Signer::new(
            "1",
            Secret::new("ck-value"),
            Secret::new("cs-value"),
            Secret::new("ti-value"),
            Secret::new("ts-value"),
        );
        let d = format!("{s:?}");
        assert!(!d.contains("-value"), "{d}");
    }
}
