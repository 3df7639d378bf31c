//! The embedded store. **The only module that imports sled**, so another
//! backend can be added without touching the rest.
//!
//! Everything lives in one sled tree with namespaced keys (see [`keys`]). All
//! writes go through [`Store::write`]: a closure builds one [`Tx`] (a sled
//! `Batch` plus a read-your-writes overlay) under a single writer lock, the
//! batch is applied atomically, and the call returns only after the data is
//! flushed to disk (sled otherwise fsyncs only every 500 ms in the
//! background). A page of records and the cursor that follows it are always
//! written in one `Tx`, so a crash leaves either both or neither.
//!
//! The store knows nothing about classification rules or connectors; it keeps
//! what ingest and the admin paths tell it to, and answers queries.

pub mod keys;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::model::{
    Classification, CustomerKey, Entity, ExclusionSource, ManualDecision, Record, Timestamp,
};
use keys::ns;
pub use tx::{Tx, Upsert};

pub const SCHEMA_VERSION: u32 = 1;

/// Default sled page cache size (`daemon.store_cache_mb`).
pub const DEFAULT_CACHE_MB: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path} is locked by another running erpsync (sled lock held)")]
    Locked { path: PathBuf },
    #[error("cannot open the store in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store schema version {found} is newer than this erpsync supports ({SCHEMA_VERSION}); upgrade erpsync")]
    SchemaTooNew { found: u32 },
    #[error("store I/O error: {0}")]
    Io(#[from] sled::Error),
    #[error("corrupt value under key {key}: {message}")]
    Corrupt { key: String, message: String },
    /// Raised by a write closure to abort without changing anything.
    #[error("{0}")]
    Rejected(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A customer as kept in the store: the upstream record plus its current
/// classification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCustomer {
    pub connector: String,
    pub customer: crate::model::Customer,
    pub classification: Classification,
    pub classified_at: Timestamp,
    pub first_seen: Timestamp,
}

impl AuditEntry {
    /// An admin action on a customer that does not change its classification
    /// (a manual decision, a STOP flag, a hold); `seq` is assigned by
    /// [`Tx::audit`].
    pub fn action(
        at: Timestamp,
        customer: CustomerKey,
        action: &str,
        actor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        AuditEntry {
            seq: 0,
            at,
            customer,
            action: action.to_string(),
            actor: actor.into(),
            reason: reason.into(),
            from: None,
            to: None,
        }
    }
}

impl StoredCustomer {
    pub fn key(&self) -> CustomerKey {
        CustomerKey::new(&self.connector, &self.customer.external_id)
    }
}

/// One entry of the audit trail: a classification change or a manual action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Timestamp,
    pub customer: CustomerKey,
    /// `classified`, `manual_exclude`, `manual_include`, `manual_cleared`,
    /// `stop`, `unstop`, `hold`, `release`, ...
    pub action: String,
    pub actor: String,
    pub reason: String,
    #[serde(default)]
    pub from: Option<Classification>,
    #[serde(default)]
    pub to: Option<Classification>,
}

/// A quarantined upstream record, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub connector: String,
    pub at: Timestamp,
    pub record: crate::model::Quarantined,
}

/// Counts of customers by classification, for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassificationCounts {
    pub total: u64,
    pub included: u64,
    pub excluded: u64,
    /// `source` → count
    pub excluded_by_source: std::collections::BTreeMap<String, u64>,
    /// full reason (`native:inactive`, `rule:x`, `manual`) → count
    pub excluded_by_reason: std::collections::BTreeMap<String, u64>,
    /// included by a manual decision although a rule or native flag matches
    pub manual_overrides: u64,
}

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writers. A std mutex because the critical section is
    /// synchronous (building and applying one batch) and never awaits.
    writer: Mutex<()>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store under `state_dir/store` with the default
    /// page cache.
    pub fn open(state_dir: &Path) -> Result<Store> {
        Self::open_with_cache(state_dir, DEFAULT_CACHE_MB)
    }

    /// Opens the store with a page cache of `cache_mb` MiB. The cache is
    /// what bounds the daemon's memory as data grows (sled's default, 1 GiB,
    /// fills up with the data).
    pub fn open_with_cache(state_dir: &Path, cache_mb: u64) -> Result<Store> {
        let path = state_dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_mb.max(1) * 1024 * 1024)
            .open()
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("could not acquire lock") || text.contains("WouldBlock") {
                    StoreError::Locked { path: path.clone() }
                } else {
                    StoreError::Open {
                        path: path.clone(),
                        source: e,
                    }
                }
            })?;
        let tree = db.open_tree("erpsync")?;
        let store = Store {
            db,
            tree,
            writer: Mutex::new(()),
            path,
        };
        store.check_schema()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<()> {
        let k = keys::key(ns::META, &[b"schema_version"]);
        match self.tree.get(&k)? {
            Some(v) => {
                let found: u32 = String::from_utf8_lossy(&v).parse().unwrap_or(0);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew { found });
                }
            }
            None => {
                self.tree.insert(k, SCHEMA_VERSION.to_string().as_bytes())?;
                self.db.flush()?;
            }
        }
        Ok(())
    }

    /// Runs `f` against a write transaction under the writer lock, applies
    /// its batch atomically, and flushes to disk before returning. If `f`
    /// returns an error nothing is written.
    pub async fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let out = {
            let _guard = self.writer.lock().expect("store writer lock poisoned");
            let mut tx = Tx::new(self);
            let out = f(&mut tx)?;
            let batch = tx.into_batch();
            self.tree.apply_batch(batch)?;
            out
        };
        self.db.flush_async().await?;
        Ok(out)
    }

    /// Flushes everything to disk (used at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub(crate) fn raw_get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    pub(crate) fn raw_scan(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        self.tree.scan_prefix(prefix).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        })
    }

    pub(crate) fn raw_range_from(
        &self,
        start: &[u8],
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        let prefix = prefix.to_vec();
        self.tree
            .range(start.to_vec()..)
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
    }

    pub(crate) fn generate_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    // ----- typed reads -------------------------------------------------

    /// Reads one JSON value of a feature namespace (resync jobs, flags, holds).
    pub fn get_value<T: DeserializeOwned>(&self, ns: u8, parts: &[&[u8]]) -> Result<Option<T>> {
        let k = keys::key(ns, parts);
        self.raw_get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Iterates the JSON values under a feature namespace prefix.
    pub fn scan_values<'a, T: DeserializeOwned + 'a>(
        &'a self,
        ns: u8,
        parts: &[&[u8]],
    ) -> impl Iterator<Item = Result<(Vec<u8>, T)>> + 'a {
        let p = if parts.is_empty() {
            vec![ns]
        } else {
            keys::prefix(ns, parts)
        };
        self.raw_scan(&p)
            .map(|r| r.and_then(|(k, v)| decode(&k, &v).map(|t| (k, t))))
    }

    pub fn customer(&self, key: &CustomerKey) -> Result<Option<StoredCustomer>> {
        let k = customer_key(&key.connector, &key.external_id);
        self.raw_get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Iterates all customers (of one connector, or of all), in key order,
    /// starting after `after` (exclusive) for cursor paging.
    pub fn customers<'a>(
        &'a self,
        connector: Option<&str>,
        after: Option<&CustomerKey>,
    ) -> impl Iterator<Item = Result<StoredCustomer>> + 'a {
        let prefix = match connector {
            Some(c) => keys::prefix(ns::CUSTOMER, &[c.as_bytes()]),
            None => vec![ns::CUSTOMER],
        };
        let start = match after {
            Some(a) => {
                // The smallest key strictly after `a`: its key plus a NUL
                // byte (ids never contain NUL). Appending 0xff instead would
                // skip every id that extends `a` ("C1" → "C10").
                let mut k = customer_key(&a.connector, &a.external_id);
                k.push(0x00);
                k
            }
            None => prefix.clone(),
        };
        self.raw_range_from(&start, &prefix)
            .map(|r| r.and_then(|(k, v)| decode(&k, &v)))
    }

    /// All invoices and transactions stored under one customer.
    pub fn records_of(&self, key: &CustomerKey) -> Result<Vec<Record>> {
        let p = keys::prefix(
            ns::RECORD,
            &[key.connector.as_bytes(), key.external_id.as_bytes()],
        );
        self.raw_scan(&p)
            .map(|r| r.and_then(|(k, v)| decode(&k, &v)))
            .collect()
    }

    /// Iterates every stored record of a connector (or all connectors).
    pub fn records<'a>(
        &'a self,
        connector: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, Record)>> + 'a {
        let prefix = match connector {
            Some(c) => keys::prefix(ns::RECORD, &[c.as_bytes()]),
            None => vec![ns::RECORD],
        };
        self.raw_scan(&prefix).map(|r| {
            r.and_then(|(k, v)| {
                let conn = keys::part_str(&k, 0);
                decode(&k, &v).map(|rec| (conn, rec))
            })
        })
    }

    /// Number of records parked while waiting for their customer.
    pub fn parked_count(&self, connector: &str) -> Result<u64> {
        let p = keys::prefix(ns::PARKED, &[connector.as_bytes()]);
        Ok(self.tree.scan_prefix(p).count() as u64)
    }

    pub fn cursor(&self, connector: &str, entity: Entity) -> Result<Option<String>> {
        let k = keys::key(
            ns::CURSOR,
            &[connector.as_bytes(), entity.as_str().as_bytes()],
        );
        Ok(self
            .raw_get(&k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// A connector's credential (an OAuth token set), by name.
    pub fn credential(&self, connector: &str, name: &str) -> Result<Option<String>> {
        let k = credential_key(connector, name);
        Ok(self
            .raw_get(&k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stores a connector's credential; durable when this returns.
    pub async fn put_credential(&self, connector: &str, name: &str, value: &str) -> Result<()> {
        self.write(|tx| {
            tx.put_credential(connector, name, value);
            Ok(())
        })
        .await
    }

    pub fn manual_decision(&self, key: &CustomerKey) -> Result<Option<ManualDecision>> {
        let k = manual_key(&key.connector, &key.external_id);
        self.raw_get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// All manual decisions (including those waiting for a customer that was
    /// never synced yet).
    pub fn manual_decisions(
        &self,
    ) -> impl Iterator<Item = Result<(CustomerKey, ManualDecision)>> + '_ {
        self.raw_scan(&[ns::MANUAL]).map(|r| {
            r.and_then(|(k, v)| {
                let key = CustomerKey::new(keys::part_str(&k, 0), keys::part_str(&k, 1));
                decode(&k, &v).map(|d| (key, d))
            })
        })
    }

    pub fn counter(&self, connector: &str, name: &str) -> Result<u64> {
        let k = counter_key(connector, name);
        Ok(self.raw_get(&k)?.map(|v| decode_u64(&v)).unwrap_or(0))
    }

    /// All counters of a connector, name → value.
    pub fn counters(&self, connector: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        let p = keys::prefix(ns::COUNTER, &[connector.as_bytes()]);
        self.raw_scan(&p)
            .map(|r| r.map(|(k, v)| (keys::part_str(&k, 1), decode_u64(&v))))
            .collect()
    }

    /// Audit entries newest first, optionally for one customer.
    pub fn audit(&self, customer: Option<&CustomerKey>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        match customer {
            None => {
                for r in self.tree.scan_prefix([ns::AUDIT]).rev() {
                    let (k, v) = r?;
                    out.push(decode(&k, &v)?);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Some(c) => {
                let p = keys::prefix(
                    ns::AUDIT_BY_CUSTOMER,
                    &[c.connector.as_bytes(), c.external_id.as_bytes()],
                );
                for r in self.tree.scan_prefix(p).rev() {
                    let (_, seq) = r?;
                    let k = audit_key(decode_u64(&seq));
                    if let Some(v) = self.raw_get(&k)? {
                        out.push(decode(&k, &v)?);
                    }
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn quarantine(&self, connector: &str, limit: usize) -> Result<Vec<QuarantineEntry>> {
        let p = keys::prefix(ns::QUARANTINE, &[connector.as_bytes()]);
        let mut out = Vec::new();
        for r in self.tree.scan_prefix(p).rev() {
            let (k, v) = r?;
            out.push(decode(&k, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Counts customers by classification (one scan over customers).
    pub fn classification_counts(&self, connector: Option<&str>) -> Result<ClassificationCounts> {
        let mut c = ClassificationCounts::default();
        for sc in self.customers(connector, None) {
            let sc = sc?;
            c.total += 1;
            let cl = &sc.classification;
            if cl.excluded {
                c.excluded += 1;
                let src = cl.source.map(ExclusionSource::as_str).unwrap_or("unknown");
                *c.excluded_by_source.entry(src.to_string()).or_default() += 1;
                *c.excluded_by_reason.entry(cl.reason.clone()).or_default() += 1;
            } else {
                c.included += 1;
                if cl.source == Some(ExclusionSource::Manual)
                    && cl.reason.starts_with("manual:overrides")
                {
                    c.manual_overrides += 1;
                }
            }
        }
        Ok(c)
    }
}

// ----- key helpers and codecs shared with tx.rs --------------------------

pub(crate) fn customer_key(conn: &str, cust: &str) -> Vec<u8> {
    keys::key(ns::CUSTOMER, &[conn.as_bytes(), cust.as_bytes()])
}
pub(crate) fn manual_key(conn: &str, cust: &str) -> Vec<u8> {
    keys::key(ns::MANUAL, &[conn.as_bytes(), cust.as_bytes()])
}
pub(crate) fn credential_key(conn: &str, name: &str) -> Vec<u8> {
    keys::key(ns::CREDENTIAL, &[conn.as_bytes(), name.as_bytes()])
}
pub(crate) fn counter_key(conn: &str, name: &str) -> Vec<u8> {
    keys::key(ns::COUNTER, &[conn.as_bytes(), name.as_bytes()])
}
pub(crate) fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = vec![ns::AUDIT, keys::SEP];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model types always serialise")
}

pub(crate) fn decode<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).replace('\0', "/"),
        message: e.to_string(),
    })
}

pub(crate) fn decode_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests;
