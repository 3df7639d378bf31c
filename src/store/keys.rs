//! Key layout of the single sled tree.
//!
//! Every key starts with a one-byte namespace and uses `\0` between parts, so
//! everything of one customer is one prefix scan (`R\0conn\0cust\0`). Ids that
//! contain `\0` are refused at ingest (see [`valid_id`]).

use crate::model::Entity;

pub const SEP: u8 = 0;

/// Namespaces. One byte each; never reuse a retired one.
pub mod ns {
    /// customer record + classification: `C conn cust`
    pub const CUSTOMER: u8 = b'C';
    /// invoices and transactions under their customer: `R conn cust kind rec`
    pub const RECORD: u8 = b'R';
    /// record id → customer id: `X conn kind rec`
    pub const RECORD_INDEX: u8 = b'X';
    /// records waiting for a customer not seen yet: `P conn cust kind rec`
    pub const PARKED: u8 = b'P';
    /// upstream deletion tombstones: `D conn kind rec` → deleted-at
    pub const TOMBSTONE: u8 = b'D';
    /// stream cursors: `K conn entity`
    pub const CURSOR: u8 = b'K';
    /// manual decisions: `M conn cust`
    pub const MANUAL: u8 = b'M';
    /// audit trail: `A seq` and per-customer index `a conn cust seq`
    pub const AUDIT: u8 = b'A';
    pub const AUDIT_BY_CUSTOMER: u8 = b'a';
    /// counters: `S conn name`
    pub const COUNTER: u8 = b'S';
    /// quarantined upstream records: `Q conn seq`
    pub const QUARANTINE: u8 = b'Q';
    /// resync jobs `J job`, members `j job cust`, customer → job `k conn cust`
    pub const RESYNC_JOB: u8 = b'J';
    pub const RESYNC_MEMBER: u8 = b'j';
    pub const RESYNC_BY_CUSTOMER: u8 = b'k';
    /// reminder STOP flags `T conn cust`, invoice holds `H conn invoice`
    pub const STOP: u8 = b'T';
    pub const HOLD: u8 = b'H';
    /// schema version
    pub const META: u8 = b'V';
    /// connector credentials (OAuth token sets): `O conn name`
    pub const CREDENTIAL: u8 = b'O';
}

pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && !s.as_bytes().contains(&SEP)
}

pub fn key(ns: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(ns);
    for p in parts {
        k.push(SEP);
        k.extend_from_slice(p);
    }
    k
}

/// A prefix that matches every key with these leading parts.
pub fn prefix(ns: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(ns, parts);
    k.push(SEP);
    k
}

pub fn kind_tag(e: Entity) -> &'static [u8] {
    match e {
        Entity::Customers => b"c",
        Entity::Invoices => b"i",
        Entity::Transactions => b"t",
    }
}

/// Splits a key into its parts after the namespace byte.
pub fn parts(k: &[u8]) -> Vec<&[u8]> {
    if k.len() < 2 {
        return Vec::new();
    }
    k[2..].split(|b| *b == SEP).collect()
}

pub fn part_str(k: &[u8], i: usize) -> String {
    parts(k)
        .get(i)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_into_parts() {
        let k = key(ns::RECORD, &[b"demo", b"C1", b"i", b"INV1"]);
        assert_eq!(parts(&k), vec![&b"demo"[..], b"C1", b"i", b"INV1"]);
        assert!(k.starts_with(&prefix(ns::RECORD, &[b"demo", b"C1"])));
        assert!(!key(ns::RECORD, &[b"demo", b"C10", b"i", b"X"])
            .starts_with(&prefix(ns::RECORD, &[b"demo", b"C1"])));
        assert_eq!(part_str(&k, 3), "INV1");
    }
}
