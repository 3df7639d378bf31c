//! Connector credentials in the store: the daemon's side of
//! [`CredentialStore`].
//!
//! [`StoreCredentials`] gives one connector read and write access to its own
//! credentials (the OAuth token set) and nothing else of the store; it is
//! what a connector gets in its build context. `erpsync connect` and the
//! connect endpoint use the same type to load a first refresh token.
//! Values are never logged.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use crate::connectors::CredentialStore;
use crate::store::Store;

/// The store, once it is open. Connectors are built (and their secrets
/// read) before the daemon opens the store, so a missing secret refuses the
/// start before any state is touched; their credential handles point here.
pub type StoreSlot = Arc<OnceLock<Arc<Store>>>;

/// One connector's credentials in the store.
pub struct StoreCredentials {
    store: StoreSlot,
    connector: String,
}

impl StoreCredentials {
    pub fn new(store: Arc<Store>, connector: impl Into<String>) -> Self {
        let slot = Arc::new(OnceLock::new());
        let _ = slot.set(store);
        Self::in_slot(slot, connector)
    }

    /// Credentials in the store that `slot` will hold.
    pub fn in_slot(slot: StoreSlot, connector: impl Into<String>) -> Self {
        StoreCredentials {
            store: slot,
            connector: connector.into(),
        }
    }

    fn store(&self) -> Result<&Store, String> {
        self.store
            .get()
            .map(|s| s.as_ref())
            .ok_or_else(|| "the store is not open yet".to_string())
    }
}

#[async_trait]
impl CredentialStore for StoreCredentials {
    fn load(&self, name: &str) -> Result<Option<String>, String> {
        self.store()?
            .credential(&self.connector, name)
            .map_err(|e| e.to_string())
    }

    async fn save(&self, name: &str, value: &str) -> Result<(), String> {
        self.store()?
            .put_credential(&self.connector, name, value)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_survive_a_reopen_and_stay_per_connector() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let a = StoreCredentials::new(Arc::clone(&store), "a");
            a.save("oauth2", "{\"x\":1}").await.unwrap();
            assert_eq!(a.load("oauth2").unwrap().as_deref(), Some("{\"x\":1}"));
            let b = StoreCredentials::new(store, "b");
            assert_eq!(b.load("oauth2").unwrap(), None);
        }
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let a = StoreCredentials::new(store, "a");
        assert_eq!(a.load("oauth2").unwrap().as_deref(), Some("{\"x\":1}"));
    }
}
