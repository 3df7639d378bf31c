//! A connector's credentials in the store, as the connector sees them.
//!
//! The one kind of state a connector keeps itself: OAuth token sets that
//! the ERP rotates. A connector gets a [`CredentialStore`] scoped to its own
//! id through its [`BuildContext`](super::BuildContext) and can read and
//! write only its own credentials there; everything else in the store is
//! written by ingest and the admin paths, never by a connector.
//!
//! The daemon's implementation writes through the store (durable before
//! `save` returns); [`MemoryCredentials`] keeps them in memory for unit
//! tests and benchmarks.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

/// One connector's credentials, by name. Values are secrets: implementations
/// never log them and never put them in an error message.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The stored value of credential `name`, if any.
    fn load(&self, name: &str) -> Result<Option<String>, String>;
    /// Stores `value` as credential `name`; durable when this returns.
    async fn save(&self, name: &str, value: &str) -> Result<(), String>;
}

/// Credentials kept in memory only.
#[derive(Default)]
pub struct MemoryCredentials {
    values: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl CredentialStore for MemoryCredentials {
    fn load(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.values.lock().expect("poisoned").get(name).cloned())
    }

    async fn save(&self, name: &str, value: &str) -> Result<(), String> {
        self.values
            .lock()
            .expect("poisoned")
            .insert(name.to_string(), value.to_string());
        Ok(())
    }
}
