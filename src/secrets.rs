//! Secrets (tokens, keys): read from files or systemd credentials, never logged.
//!
//! [`Secret`] prints as `[redacted]` in `Debug` and has no `Display`, so a
//! secret cannot end up in a log line or an error message by accident.

use std::path::{Path, PathBuf};

/// A secret string. Read it with [`Secret::expose`] at the single place that
/// needs the value (signing a request, comparing a token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from: a file, or a systemd credential (`LoadCredential=`)
/// looked up in `$CREDENTIALS_DIRECTORY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Credential(String),
}

impl SecretSource {
    /// The path the secret is read from right now.
    pub fn path(&self) -> Result<PathBuf, String> {
        match self {
            SecretSource::File(p) => Ok(p.clone()),
            SecretSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => Ok(Path::new(&dir).join(name)),
                None => Err(format!(
                    "systemd credential `{name}` requested but CREDENTIALS_DIRECTORY is not set \
                     (add LoadCredential={name}:... to the unit)"
                )),
            },
        }
    }

    /// The source named by a `<name>_file` / `<name>_credential` pair of
    /// options (exactly one must be set); a relative file resolves against
    /// `base_dir`. The error is a sentence naming the keys.
    pub fn from_pair(
        name: &str,
        file: Option<&Path>,
        credential: Option<&str>,
        base_dir: &Path,
    ) -> Result<SecretSource, String> {
        match (file, credential) {
            (Some(f), None) => Ok(SecretSource::File(if f.is_relative() {
                base_dir.join(f)
            } else {
                f.to_path_buf()
            })),
            (None, Some(c)) if c.is_empty() || c.contains('/') || c == "." || c == ".." => {
                Err(format!("`{c}` is not a systemd credential name"))
            }
            (None, Some(c)) => Ok(SecretSource::Credential(c.to_string())),
            (Some(_), Some(_)) => Err(format!(
                "set either {name}_file or {name}_credential, not both"
            )),
            (None, None) => Err(format!(
                "missing; set {name}_file (a path) or {name}_credential (a systemd credential)"
            )),
        }
    }

    /// Checks, without reading it, that the secret will be there: the file
    /// exists, or (under systemd) the credential does. Outside systemd a
    /// credential cannot be checked and passes; reading it at start-up
    /// then reports it.
    pub fn check_exists(&self) -> Result<(), String> {
        match self {
            SecretSource::File(path) => check_file(path),
            SecretSource::Credential(_) => match self.path() {
                Ok(path) if !path.is_file() => Err(format!(
                    "systemd credential {} does not exist",
                    path.display()
                )),
                _ => Ok(()),
            },
        }
    }

    /// Reads the secret; surrounding whitespace (a trailing newline) is trimmed.
    /// The error names the file but never its content.
    pub fn load(&self) -> Result<Secret, String> {
        let path = self.path()?;
        check_file(&path)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(format!("secret file {} is empty", path.display()));
        }
        Ok(Secret(value.to_string()))
    }
}

/// Whether `path` can hold a secret: it exists and is a regular file (a
/// directory, a missing file and a dangling link each say so). Reads
/// nothing.
pub fn check_file(path: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(format!(
            "{} is a directory; name the file that holds the secret",
            path.display()
        )),
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", path.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("credential file {} does not exist", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn loads_and_trims_file_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(
            SecretSource::File(p.clone()).load().unwrap().expose(),
            "abc"
        );
        std::fs::write(&p, "  \n").unwrap();
        assert!(SecretSource::File(p.clone())
            .load()
            .unwrap_err()
            .contains("is empty"));
        let missing = dir.path().join("nope");
        let err = SecretSource::File(missing).load().unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
