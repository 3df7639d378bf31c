//! Moving an existing install to the SQL store: imports the JSON-lines dump
//! that `erpsync-sled-export` (tools/sled-export, a separate program so the
//! old engine stays out of this build) writes from a state directory of
//! erpsync 0.1.
//!
//! Everything is carried: customers with their classification, records,
//! parked records, tombstones, cursors, manual decisions, the audit trail
//! (in its order), counters, quarantine, resync jobs with members and
//! queue, reminder STOP flags and holds, and the applied classification
//! policy. The import is one store transaction into an empty store: it
//! lands whole or not at all, and a store that already holds data is
//! refused. It only writes through store methods; it never classifies.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::model::{CustomerKey, Entity, ManualDecision, Record, Timestamp};
use crate::resync::queue::Job;
use crate::store::{AuditEntry, QuarantineEntry, Store, StoreError, StoredCustomer, Tx};

/// What an import did, by kind of item.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    pub items: u64,
    pub customers: u64,
    pub records: u64,
    pub parked: u64,
    pub tombstones: u64,
    pub audit: u64,
    pub decisions: u64,
    pub resync_jobs: u64,
    pub flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Bad {
        path: String,
        line: usize,
        message: String,
    },
    #[error("the target store already holds data; import only into a new, empty store")]
    NotEmpty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The meta key that records where the store's data came from.
pub const IMPORTED_FROM: &str = "imported_from";

#[derive(Deserialize)]
struct Tomb {
    at: Timestamp,
    deleted: bool,
}

fn entity(s: &str) -> Result<Entity, String> {
    match s {
        "customers" => Ok(Entity::Customers),
        "invoices" => Ok(Entity::Invoices),
        "transactions" => Ok(Entity::Transactions),
        other => Err(format!("unknown entity `{other}`")),
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("missing field `{name}`"))
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    field(v, name)?
        .as_str()
        .ok_or_else(|| format!("field `{name}` is not a string"))
}

fn u64_field(v: &Value, name: &str) -> Result<u64, String> {
    field(v, name)?
        .as_u64()
        .ok_or_else(|| format!("field `{name}` is not a number"))
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(field(v, "value")?.clone()).map_err(|e| format!("value: {e}"))
}

/// Applies one dump line. Returns `Ok(true)` at the end marker.
fn apply(tx: &mut Tx<'_>, v: &Value, n: &mut Imported, max_id: &mut u64) -> Result<bool, String> {
    let kind = str_field(v, "kind")?;
    let conn = || str_field(v, "connector");
    match kind {
        "header" => {
            if v.get("format").and_then(Value::as_str) != Some("erpsync-dump") {
                return Err("not an erpsync dump (header format)".into());
            }
            if v.get("version").and_then(Value::as_u64) != Some(1) {
                return Err("unsupported dump version; this erpsync reads version 1".into());
            }
            return Ok(false);
        }
        "end" => {
            let items = u64_field(v, "items")?;
            if items != n.items {
                return Err(format!(
                    "the dump announces {items} items but holds {}: it is incomplete",
                    n.items
                ));
            }
            return Ok(true);
        }
        "customer" => {
            let sc: StoredCustomer = typed(v)?;
            tx.put_customer(&sc).map_err(|e| e.to_string())?;
            n.customers += 1;
        }
        "record" | "parked" => {
            let r: Record = typed(v)?;
            let parked = kind == "parked";
            tx.upsert_record(conn()?, &r, parked)
                .map_err(|e| e.to_string())?;
            if parked {
                n.parked += 1;
            } else {
                n.records += 1;
            }
        }
        "tombstone" => {
            let t: Tomb = typed(v)?;
            let e = entity(str_field(v, "entity")?)?;
            tx.put_tombstone(conn()?, e, str_field(v, "id")?, t.at, t.deleted)
                .map_err(|e| e.to_string())?;
            n.tombstones += 1;
        }
        "cursor" => {
            let e = entity(str_field(v, "entity")?)?;
            tx.set_cursor(conn()?, e, str_field(v, "value")?)
                .map_err(|e| e.to_string())?;
        }
        "decision" => {
            let d: ManualDecision = typed(v)?;
            let key = CustomerKey::new(conn()?, str_field(v, "customer")?);
            tx.set_manual_decision(&key, Some(&d))
                .map_err(|e| e.to_string())?;
            n.decisions += 1;
        }
        "audit" => {
            let e: AuditEntry = typed(v)?;
            tx.audit(e).map_err(|e| e.to_string())?;
            n.audit += 1;
        }
        "counter" => {
            tx.add_counter(conn()?, str_field(v, "name")?, u64_field(v, "value")?)
                .map_err(|e| e.to_string())?;
        }
        "quarantine" => {
            let q: QuarantineEntry = typed(v)?;
            tx.quarantine(&q.connector, q.at, q.record)
                .map_err(|e| e.to_string())?;
        }
        "resync_job" => {
            let j: Job = typed(v)?;
            *max_id = (*max_id).max(j.id);
            for b in &j.batches {
                *max_id = (*max_id).max(b.id);
            }
            tx.put_resync_job(
                j.id,
                &j.connector,
                j.state.as_str(),
                j.created_at,
                j.finished_at,
                &j,
            )
            .map_err(|e| e.to_string())?;
            n.resync_jobs += 1;
        }
        "resync_member" => {
            let state: String = typed(v)?;
            let done = match state.as_str() {
                "pending" => false,
                "done" => true,
                other => return Err(format!("unknown member state `{other}`")),
            };
            tx.set_resync_member(u64_field(v, "job")?, str_field(v, "customer")?, done)
                .map_err(|e| e.to_string())?;
        }
        "resync_queued" => {
            let job: u64 = typed(v)?;
            tx.set_resync_queued(conn()?, str_field(v, "customer")?, Some(job))
                .map_err(|e| e.to_string())?;
        }
        "stop" => {
            let key = CustomerKey::new(conn()?, str_field(v, "customer")?);
            tx.put_stop_flag(&key, field(v, "value")?)
                .map_err(|e| e.to_string())?;
            n.flags += 1;
        }
        "hold" => {
            tx.put_hold_flag(conn()?, str_field(v, "invoice")?, field(v, "value")?)
                .map_err(|e| e.to_string())?;
            n.flags += 1;
        }
        "meta" => {
            let key = str_field(v, "key")?;
            if key == "schema_version" {
                if str_field(v, "value")? != "1" {
                    return Err(
                        "the exported store has a schema version this erpsync does not know".into(),
                    );
                }
            } else {
                tx.put_meta(key, field(v, "value")?)
                    .map_err(|e| e.to_string())?;
            }
        }
        other => return Err(format!("unknown item kind `{other}`")),
    }
    n.items += 1;
    Ok(false)
}

/// Imports the dump at `path` into `store` (which must be empty), in one
/// transaction.
pub async fn import_dump(store: &Store, path: &Path) -> Result<Imported, MigrateError> {
    if !store.is_empty()? {
        return Err(MigrateError::NotEmpty);
    }
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| MigrateError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let mut failure: Option<MigrateError> = None;
    let res = store
        .write(|tx| {
            let mut n = Imported::default();
            let mut max_id = 0;
            let mut ended = false;
            let mut started = false;
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let bad = |message: String| MigrateError::Bad {
                    path: shown.clone(),
                    line: i + 1,
                    message,
                };
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        failure = Some(MigrateError::Read {
                            path: shown.clone(),
                            message: e.to_string(),
                        });
                        return tx.reject("import failed");
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                let outcome = serde_json::from_str::<Value>(&line)
                    .map_err(|e| format!("not JSON: {e}"))
                    .and_then(|v| {
                        if !started && v.get("kind").and_then(Value::as_str) != Some("header") {
                            return Err("the dump does not start with its header line".into());
                        }
                        started = true;
                        if ended {
                            return Err("data after the end marker".into());
                        }
                        apply(tx, &v, &mut n, &mut max_id)
                    });
                match outcome {
                    Ok(end) => ended |= end,
                    Err(m) => {
                        failure = Some(bad(m));
                        return tx.reject("import failed");
                    }
                }
            }
            if !ended {
                failure = Some(MigrateError::Bad {
                    path: shown.clone(),
                    line: 0,
                    message: "the dump has no end marker: it is incomplete".into(),
                });
                return tx.reject("import failed");
            }
            tx.ensure_next_id_above(max_id)?;
            tx.put_meta(
                IMPORTED_FROM,
                &serde_json::json!({"source": "sled", "dump": shown, "items": n.items, "at": chrono::Utc::now()}),
            )?;
            Ok(n)
        })
        .await;
    match (res, failure) {
        (_, Some(f)) => Err(f),
        (Ok(n), None) => Ok(n),
        (Err(e), None) => Err(e.into()),
    }
}

/// Why a daemon must not start on a fresh SQL store next to an old one.
pub fn old_store_left_behind(
    state_dir: &Path,
    store: &Store,
) -> Result<Option<String>, StoreError> {
    let old = state_dir.join("store");
    if !old.join("conf").is_file() || !store.is_empty()? {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} holds the store of an earlier erpsync; move it to the new store first \
         (erpsync-sled-export {} dump.jsonl, then erpsync migrate-store --from-dump dump.jsonl; \
         see the README, \"Upgrading\"), or delete that directory to start from scratch",
        old.display(),
        state_dir.display()
    )))
}
