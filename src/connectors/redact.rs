//! What of an ERP's error answer may be kept: a bounded, redacted summary.
//!
//! Error bodies are written by someone else: some ERPs (or proxies in front
//! of them) echo the request's headers, query or form back, and with them
//! the `Authorization` header, OAuth 1.0a `oauth_*` parameters, bearer
//! tokens and client secrets. Every connector passes the text it keeps of
//! an error (the ERP's error code and message, or an excerpt of a body it
//! could not parse) through [`summary`] before it goes into a
//! [`ConnectorError`](super::ConnectorError), and so into `last_error`,
//! `/status` and the logs; [`log_body`] is the only place a whole error
//! body is logged, at debug level and redacted too.
//!
//! Redaction is by shape, not by knowing the secrets: the values after
//! credential-like names, the whole rest of an `Authorization` line, bearer
//! and basic credentials, and any long opaque token (a run of 32 or more
//! letters, digits and `+/=_-` with both letters and digits, UUIDs
//! excepted, as Xero's ids are UUIDs) become `[redacted]`.

use std::sync::LazyLock;

use regex::Regex;

/// The longest summary kept, in characters.
pub const MAX_SUMMARY_CHARS: usize = 300;
/// The longest body logged at debug level, in bytes.
const MAX_LOGGED_BODY: usize = 16 * 1024;

const REDACTED: &str = "[redacted]";

static AUTH_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(proxy-authorization|authorization|x-api-key|cookie)(\\?[\x22']?\s*[:=]\s*)[^\r\n]*",
    )
    .expect("valid regex")
});
static OAUTH_PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b(oauth_[a-z_]+)(\\?"?\s*[:=]\s*\\?"?)[^"\\&,;\s]*"#).expect("valid regex")
});
static SCHEME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}").expect("valid regex")
});
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b(client_secret|client_id|consumer_secret|consumer_key|token_secret|token_id|refresh_token|access_token|id_token|api_key|apikey|password|passwd|secret|signature|token)(\\?"?\s*[:=]\s*\\?"?)[^"\\&,;\s]+"#,
    )
    .expect("valid regex")
});
static OPAQUE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/=_-]{32,}").expect("valid regex"));
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
        .expect("valid regex")
});

/// `text` with every credential-like value replaced by `[redacted]` (see
/// the module docs). Not bounded: see [`summary`].
pub fn redact(text: &str) -> String {
    let t = AUTH_HEADER.replace_all(text, format!("${{1}}${{2}}{REDACTED}"));
    let t = OAUTH_PARAM.replace_all(&t, format!("${{1}}${{2}}{REDACTED}"));
    let t = SCHEME.replace_all(&t, format!("${{1}} {REDACTED}"));
    let t = NAMED.replace_all(&t, format!("${{1}}${{2}}{REDACTED}"));
    OPAQUE
        .replace_all(&t, |c: &regex::Captures<'_>| {
            let s = &c[0];
            let letters = s.chars().any(|c| c.is_ascii_alphabetic());
            let digits = s.chars().any(|c| c.is_ascii_digit());
            if letters && digits && !UUID.is_match(s) {
                REDACTED.to_string()
            } else {
                s.to_string()
            }
        })
        .into_owned()
}

/// The text an error keeps of an ERP's answer: redacted, control
/// characters and runs of white space made one space, at most
/// [`MAX_SUMMARY_CHARS`] characters (cut ones end in `…`).
pub fn summary(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    let red = redact(&clean);
    if red.chars().count() <= MAX_SUMMARY_CHARS {
        return red;
    }
    let mut out: String = red.chars().take(MAX_SUMMARY_CHARS - 1).collect();
    out.push('…');
    out
}

/// An excerpt of a body the connector could not read as the ERP's error
/// format, as a [`summary`].
pub fn body_summary(body: &[u8]) -> String {
    let head = &body[..body.len().min(4 * MAX_SUMMARY_CHARS)];
    let s = summary(&String::from_utf8_lossy(head));
    if s.is_empty() {
        "(no body)".into()
    } else {
        s
    }
}

/// Logs a whole error body at debug level, redacted and bounded (16 KiB).
pub fn log_body(connector: &str, status: u16, body: &[u8]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let head = &body[..body.len().min(MAX_LOGGED_BODY)];
        let text = redact(&String::from_utf8_lossy(head));
        tracing::debug!(connector, status, body = %text, "ERP error body (redacted)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, kept: &[&str], gone: &[&str]) {
        let out = summary(input);
        for k in kept {
            assert!(out.contains(k), "`{k}` should stay in `{out}`");
        }
        for g in gone {
            assert!(!out.contains(g), "`{g}` leaked into `{out}`");
        }
    }

    #[test]
    fn credentials_in_echoed_headers_and_forms_are_removed() {
        check(
            r#"INVALID_LOGIN: bad request. Headers: Authorization: OAuth realm="123456_SB1",oauth_consumer_key="ck-3f1e2d",oauth_token="tk-77aa",oauth_signature="abc%3D"
Content-Type: application/json"#,
            &["INVALID_LOGIN: bad request", "Authorization: [redacted]"],
            &["ck-3f1e2d", "tk-77aa", "abc%3D"],
        );
        check(
            r#"{"headers":{"authorization":"Bearer eyJhbGciOi.xyz123","x":"1"},"form":"grant_type=refresh_token&refresh_token=rt-secret-1&client_secret=s3cr3t"}"#,
            &["[redacted]"],
            &["eyJhbGciOi", "rt-secret-1", "s3cr3t"],
        );
        check(
            "oauth_consumer_key=ck-9&oauth_token=tk-1 failed",
            &["failed"],
            &["ck-9", "tk-1"],
        );
        check(
            "key 0123456789abcdef0123456789abcdef01234567 refused",
            &["key", "refused"],
            &["0123456789abcdef0123456789abcdef"],
        );
        check(
            "Basic dXNlcjpwYXNz rejected",
            &["rejected"],
            &["dXNlcjpwYXNz"],
        );
        check(r#"client_secret: "abc""#, &["client_secret"], &["abc"]);
    }

    #[test]
    fn ordinary_error_text_and_ids_stay() {
        let ok = "INVALID_PARAMETER: Invalid search query. Field 'custentity_nope' for record 'customer' was not found (contact 9b2c4a8e-1f3d-4c5e-8a7b-112233445566, invoice 104523)";
        assert_eq!(summary(ok), ok);
    }

    #[test]
    fn summaries_are_bounded_and_on_one_line() {
        let long = format!("line one\nline two\r\n\t{}", "é".repeat(1000));
        let s = summary(&long);
        assert!(s.starts_with("line one line two "), "{s}");
        assert_eq!(s.chars().count(), MAX_SUMMARY_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(body_summary(b""), "(no body)");
    }
}
