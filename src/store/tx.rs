//! One write transaction: a sled `Batch` plus an overlay so the code building
//! the batch reads its own writes. Created only by [`Store::write`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::{self, ns};
use super::{
    audit_key, counter_key, credential_key, customer_key, decode, decode_u64, encode, manual_key,
    AuditEntry, QuarantineEntry, Result, Store, StoredCustomer,
};
use crate::model::{CustomerKey, Entity, ManualDecision, Quarantined, Record, Timestamp};

pub struct Tx<'a> {
    store: &'a Store,
    batch: sled::Batch,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// What [`Tx::upsert_record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Inserted,
    Updated,
    /// The stored version (or deletion) is newer; nothing written.
    Stale,
}

/// What the store remembers of a record it does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tombstone {
    at: Timestamp,
    /// Deleted upstream at `at`: versions at or before `at` are refused.
    /// Otherwise the version of `at` belongs to an excluded customer and was
    /// dropped: only strictly older versions are refused, so that same
    /// version is accepted when its customer is re-included and resynced.
    deleted: bool,
}

/// Where the record index points: stored under a customer, or parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexEntry {
    customer: String,
    parked: bool,
}

impl<'a> Tx<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Tx {
            store,
            batch: sled::Batch::default(),
            overlay: BTreeMap::new(),
        }
    }

    pub(super) fn into_batch(self) -> sled::Batch {
        self.batch
    }

    // ----- raw ----------------------------------------------------------

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.overlay.get(k) {
            Some(v) => Ok(v.clone()),
            None => self.store.raw_get(k),
        }
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.batch.insert(k.clone(), v.clone());
        self.overlay.insert(k, Some(v));
    }

    fn del(&mut self, k: Vec<u8>) {
        self.batch.remove(k.clone());
        self.overlay.insert(k, None);
    }

    /// Prefix scan that sees this transaction's own writes.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for r in self.store.raw_scan(prefix) {
            let (k, v) = r?;
            map.insert(k, v);
        }
        for (k, v) in self.overlay.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        Ok(map.into_iter().collect())
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>> {
        self.get(k)?.map(|v| decode(k, &v)).transpose()
    }

    /// Aborts the whole transaction with a message (nothing is written).
    pub fn reject<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(super::StoreError::Rejected(msg.into()))
    }

    // ----- credentials --------------------------------------------------

    /// Stores a connector's credential (an OAuth token set) in this write.
    pub fn put_credential(&mut self, connector: &str, name: &str, value: &str) {
        self.put(credential_key(connector, name), value.as_bytes().to_vec());
    }

    // ----- customers ----------------------------------------------------

    pub fn customer(&self, key: &CustomerKey) -> Result<Option<StoredCustomer>> {
        self.get_json(&customer_key(&key.connector, &key.external_id))
    }

    pub fn put_customer(&mut self, sc: &StoredCustomer) {
        self.put(
            customer_key(&sc.connector, &sc.customer.external_id),
            encode(sc),
        );
    }

    /// Removes a customer record (deleted upstream). Its manual decision, if
    /// any, stays so it applies again should the customer come back.
    pub fn delete_customer(&mut self, key: &CustomerKey) {
        self.del(customer_key(&key.connector, &key.external_id));
    }

    pub fn manual_decision(&self, key: &CustomerKey) -> Result<Option<ManualDecision>> {
        self.get_json(&manual_key(&key.connector, &key.external_id))
    }

    pub fn set_manual_decision(&mut self, key: &CustomerKey, d: Option<&ManualDecision>) {
        let k = manual_key(&key.connector, &key.external_id);
        match d {
            Some(d) => self.put(k, encode(d)),
            None => self.del(k),
        }
    }

    // ----- records ------------------------------------------------------

    fn record_key(conn: &str, cust: &str, e: Entity, id: &str, parked: bool) -> Vec<u8> {
        keys::key(
            if parked { ns::PARKED } else { ns::RECORD },
            &[
                conn.as_bytes(),
                cust.as_bytes(),
                keys::kind_tag(e),
                id.as_bytes(),
            ],
        )
    }

    fn index_key(conn: &str, e: Entity, id: &str) -> Vec<u8> {
        keys::key(
            ns::RECORD_INDEX,
            &[conn.as_bytes(), keys::kind_tag(e), id.as_bytes()],
        )
    }

    fn tombstone_key(conn: &str, e: Entity, id: &str) -> Vec<u8> {
        keys::key(
            ns::TOMBSTONE,
            &[conn.as_bytes(), keys::kind_tag(e), id.as_bytes()],
        )
    }

    /// Stores an invoice or transaction under its customer (or parks it when
    /// `parked`), keeping whichever upstream version is newer. A record that
    /// moved to another customer is removed from the old one.
    pub fn upsert_record(&mut self, conn: &str, rec: &Record, parked: bool) -> Result<Upsert> {
        let e = rec.entity();
        let id = rec.external_id();
        let ts = rec.last_modified();
        let tk = Self::tombstone_key(conn, e, id);
        if let Some(t) = self.get_json::<Tombstone>(&tk)? {
            let refused = if t.deleted { t.at >= ts } else { t.at > ts };
            if refused {
                return Ok(Upsert::Stale);
            }
            self.del(tk);
        }
        let ik = Self::index_key(conn, e, id);
        let mut outcome = Upsert::Inserted;
        if let Some(old) = self.get_json::<IndexEntry>(&ik)? {
            let ok = Self::record_key(conn, &old.customer, e, id, old.parked);
            if let Some(old_rec) = self.get_json::<Record>(&ok)? {
                if old_rec.last_modified() > ts {
                    return Ok(Upsert::Stale);
                }
                outcome = Upsert::Updated;
            }
            if old.customer != rec.customer_id() || old.parked != parked {
                self.del(ok);
            }
        }
        self.put(
            Self::record_key(conn, rec.customer_id(), e, id, parked),
            encode(rec),
        );
        self.put(
            ik,
            encode(&IndexEntry {
                customer: rec.customer_id().to_string(),
                parked,
            }),
        );
        Ok(outcome)
    }

    /// Removes a record wherever it is (stored or parked). With `tombstone`,
    /// remembers the deletion so an older copy arriving later is refused.
    /// Returns whether a record was removed.
    pub fn remove_record(
        &mut self,
        conn: &str,
        e: Entity,
        id: &str,
        tombstone: Option<Timestamp>,
    ) -> Result<bool> {
        let ik = Self::index_key(conn, e, id);
        let mut removed = false;
        if let Some(old) = self.get_json::<IndexEntry>(&ik)? {
            self.del(Self::record_key(conn, &old.customer, e, id, old.parked));
            self.del(ik);
            removed = true;
        }
        if let Some(at) = tombstone {
            self.put(
                Self::tombstone_key(conn, e, id),
                encode(&Tombstone { at, deleted: true }),
            );
        }
        Ok(removed)
    }

    /// A version of a record that belongs to an excluded customer: it is not
    /// stored. A stored copy (under the customer it belonged to before) is
    /// removed unless it is newer, and the version is remembered so an older
    /// copy arriving later (a resync page fetched before the move) cannot
    /// bring the record back. Returns whether a stored copy was removed.
    pub fn drop_record(&mut self, conn: &str, rec: &Record) -> Result<bool> {
        let e = rec.entity();
        let id = rec.external_id();
        let ts = rec.last_modified();
        let ik = Self::index_key(conn, e, id);
        let mut removed = false;
        if let Some(old) = self.get_json::<IndexEntry>(&ik)? {
            let ok = Self::record_key(conn, &old.customer, e, id, old.parked);
            if let Some(old_rec) = self.get_json::<Record>(&ok)? {
                if old_rec.last_modified() > ts {
                    // What we hold is newer: this version is stale.
                    return Ok(false);
                }
            }
            self.del(ok);
            self.del(ik);
            removed = true;
        }
        let tk = Self::tombstone_key(conn, e, id);
        let newer_known = self.get_json::<Tombstone>(&tk)?.is_some_and(|t| t.at >= ts);
        if !newer_known {
            self.put(
                tk,
                encode(&Tombstone {
                    at: ts,
                    deleted: false,
                }),
            );
        }
        Ok(removed)
    }

    /// The customer a stored (not parked) record currently belongs to.
    pub fn record_owner(&self, conn: &str, e: Entity, id: &str) -> Result<Option<String>> {
        Ok(self
            .get_json::<IndexEntry>(&Self::index_key(conn, e, id))?
            .filter(|i| !i.parked)
            .map(|i| i.customer))
    }

    /// Deletes every stored and parked invoice and transaction of a customer.
    /// Returns (invoices, transactions) removed.
    pub fn purge_customer_records(&mut self, key: &CustomerKey) -> Result<(u64, u64)> {
        let (mut inv, mut txn) = (0, 0);
        for parked in [false, true] {
            let p = keys::prefix(
                if parked { ns::PARKED } else { ns::RECORD },
                &[key.connector.as_bytes(), key.external_id.as_bytes()],
            );
            for (k, v) in self.scan(&p)? {
                let rec: Record = decode(&k, &v)?;
                match rec.entity() {
                    Entity::Invoices => inv += 1,
                    _ => txn += 1,
                }
                self.del(k);
                self.del(Self::index_key(
                    &key.connector,
                    rec.entity(),
                    rec.external_id(),
                ));
            }
        }
        Ok((inv, txn))
    }

    /// Removes and returns the records parked for a customer.
    pub fn take_parked(&mut self, key: &CustomerKey) -> Result<Vec<Record>> {
        let p = keys::prefix(
            ns::PARKED,
            &[key.connector.as_bytes(), key.external_id.as_bytes()],
        );
        let mut out = Vec::new();
        for (k, v) in self.scan(&p)? {
            let rec: Record = decode(&k, &v)?;
            self.del(k);
            self.del(Self::index_key(
                &key.connector,
                rec.entity(),
                rec.external_id(),
            ));
            out.push(rec);
        }
        Ok(out)
    }

    pub fn records_of(&self, key: &CustomerKey) -> Result<Vec<Record>> {
        let p = keys::prefix(
            ns::RECORD,
            &[key.connector.as_bytes(), key.external_id.as_bytes()],
        );
        self.scan(&p)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    // ----- cursors, counters, audit, quarantine ---------------------------

    pub fn set_cursor(&mut self, conn: &str, e: Entity, cursor: &str) {
        self.put(
            keys::key(ns::CURSOR, &[conn.as_bytes(), e.as_str().as_bytes()]),
            cursor.as_bytes().to_vec(),
        );
    }

    pub fn add_counter(&mut self, conn: &str, name: &str, delta: u64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let k = counter_key(conn, name);
        let cur = self.get(&k)?.map(|v| decode_u64(&v)).unwrap_or(0);
        self.put(k, (cur + delta).to_be_bytes().to_vec());
        Ok(())
    }

    /// Appends to the audit trail; `entry.seq` is assigned here.
    pub fn audit(&mut self, mut entry: AuditEntry) -> Result<u64> {
        let seq = self.store.generate_id()?;
        entry.seq = seq;
        let ck = &entry.customer;
        self.put(
            keys::key(
                ns::AUDIT_BY_CUSTOMER,
                &[
                    ck.connector.as_bytes(),
                    ck.external_id.as_bytes(),
                    &seq.to_be_bytes(),
                ],
            ),
            seq.to_be_bytes().to_vec(),
        );
        self.put(audit_key(seq), encode(&entry));
        Ok(seq)
    }

    pub fn quarantine(&mut self, conn: &str, at: Timestamp, record: Quarantined) -> Result<()> {
        let seq = self.store.generate_id()?;
        self.put(
            keys::key(ns::QUARANTINE, &[conn.as_bytes(), &seq.to_be_bytes()]),
            encode(&QuarantineEntry {
                connector: conn.to_string(),
                at,
                record,
            }),
        );
        Ok(())
    }

    // ----- generic namespaced access for feature modules ------------------
    //
    // Resync jobs, reminder flags and holds keep small JSON values in their own
    // namespaces; these helpers keep sled out of those modules.

    pub fn get_value<T: serde::de::DeserializeOwned>(
        &self,
        ns: u8,
        parts: &[&[u8]],
    ) -> Result<Option<T>> {
        self.get_json(&keys::key(ns, parts))
    }

    pub fn put_value<T: Serialize>(&mut self, ns: u8, parts: &[&[u8]], v: &T) {
        self.put(keys::key(ns, parts), encode(v));
    }

    pub fn delete_value(&mut self, ns: u8, parts: &[&[u8]]) {
        self.del(keys::key(ns, parts));
    }

    pub fn scan_values<T: serde::de::DeserializeOwned>(
        &self,
        ns: u8,
        parts: &[&[u8]],
    ) -> Result<Vec<(Vec<u8>, T)>> {
        self.scan(&keys::prefix(ns, parts))?
            .into_iter()
            .map(|(k, v)| decode(&k, &v).map(|t| (k, t)))
            .collect()
    }

    pub fn next_id(&self) -> Result<u64> {
        self.store.generate_id()
    }
}
