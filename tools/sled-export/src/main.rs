//! `erpsync-sled-export STATE_DIR [OUT]`: dumps the sled store of an
//! erpsync 0.1 state directory (`STATE_DIR/store`) as JSON lines, one
//! object per stored item, for `erpsync migrate-store --from-dump`.
//!
//! It knows the old key layout (one tree `erpsync`, a one-byte namespace,
//! `\0` between key parts) and nothing else: values are passed through as
//! the JSON they were stored as; counters (8-byte big-endian) and cursors
//! (raw text) are decoded; derived indexes are skipped. The store is opened
//! read-only in spirit: nothing is written to it.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

const SEP: u8 = 0;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The parts of a key after its namespace byte.
fn parts(k: &[u8]) -> Vec<&[u8]> {
    if k.len() < 2 {
        return Vec::new();
    }
    k[2..].split(|b| *b == SEP).collect()
}

fn entity(tag: &[u8]) -> Result<&'static str, String> {
    match tag {
        b"i" => Ok("invoices"),
        b"t" => Ok("transactions"),
        b"c" => Ok("customers"),
        other => Err(format!("unknown record kind tag `{}`", text(other))),
    }
}

fn json_value(k: &[u8], v: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(v).map_err(|e| format!("key {:?}: value is not JSON: {e}", text(k)))
}

fn be_u64(k: &[u8], b: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| format!("key {:?}: expected 8 bytes", text(k)))
}

/// One dump line for one key/value, or `None` for derived indexes.
fn line(k: &[u8], v: &[u8]) -> Result<Option<Value>, String> {
    let Some(&ns) = k.first() else {
        return Err("empty key".into());
    };
    let p = parts(k);
    let want = |n: usize| -> Result<(), String> {
        if p.len() == n {
            Ok(())
        } else {
            Err(format!("key {:?}: expected {n} parts, found {}", text(k), p.len()))
        }
    };
    Ok(Some(match ns {
        b'C' => {
            want(2)?;
            json!({"kind": "customer", "connector": text(p[0]), "id": text(p[1]), "value": json_value(k, v)?})
        }
        b'R' | b'P' => {
            want(4)?;
            json!({
                "kind": if ns == b'R' { "record" } else { "parked" },
                "connector": text(p[0]), "customer": text(p[1]), "entity": entity(p[2])?,
                "id": text(p[3]), "value": json_value(k, v)?
            })
        }
        b'D' => {
            want(3)?;
            json!({"kind": "tombstone", "connector": text(p[0]), "entity": entity(p[1])?, "id": text(p[2]), "value": json_value(k, v)?})
        }
        b'K' => {
            want(2)?;
            json!({"kind": "cursor", "connector": text(p[0]), "entity": text(p[1]), "value": text(v)})
        }
        b'M' => {
            want(2)?;
            json!({"kind": "decision", "connector": text(p[0]), "customer": text(p[1]), "value": json_value(k, v)?})
        }
        // `A \0 seq` with an 8-byte sequence that may itself contain 0.
        b'A' => {
            let seq = be_u64(k, k.get(2..).unwrap_or_default())?;
            json!({"kind": "audit", "seq": seq, "value": json_value(k, v)?})
        }
        b'S' => {
            want(2)?;
            json!({"kind": "counter", "connector": text(p[0]), "name": text(p[1]), "value": be_u64(k, v)?})
        }
        // `Q \0 conn \0 seq` with an 8-byte sequence.
        b'Q' => {
            if k.len() < 2 + 1 + 8 {
                return Err(format!("key {:?}: too short", text(k)));
            }
            let (head, seq) = k.split_at(k.len() - 8);
            let conn = head.get(2..head.len() - 1).unwrap_or_default();
            json!({"kind": "quarantine", "connector": text(conn), "seq": be_u64(k, seq)?, "value": json_value(k, v)?})
        }
        b'J' => {
            want(1)?;
            let id = u64::from_str_radix(&text(p[0]), 16)
                .map_err(|_| format!("key {:?}: job id is not hex", text(k)))?;
            json!({"kind": "resync_job", "id": id, "value": json_value(k, v)?})
        }
        b'j' => {
            want(2)?;
            let id = u64::from_str_radix(&text(p[0]), 16)
                .map_err(|_| format!("key {:?}: job id is not hex", text(k)))?;
            json!({"kind": "resync_member", "job": id, "customer": text(p[1]), "value": json_value(k, v)?})
        }
        b'k' => {
            want(2)?;
            json!({"kind": "resync_queued", "connector": text(p[0]), "customer": text(p[1]), "value": json_value(k, v)?})
        }
        b'T' => {
            want(2)?;
            json!({"kind": "stop", "connector": text(p[0]), "customer": text(p[1]), "value": json_value(k, v)?})
        }
        b'H' => {
            want(2)?;
            json!({"kind": "hold", "connector": text(p[0]), "invoice": text(p[1]), "value": json_value(k, v)?})
        }
        b'V' => {
            want(1)?;
            let key = text(p[0]);
            let value = if key == "schema_version" {
                Value::String(text(v))
            } else {
                json_value(k, v)?
            };
            json!({"kind": "meta", "key": key, "value": value})
        }
        // derived: record index and audit-by-customer index
        b'X' | b'a' => return Ok(None),
        other => return Err(format!("unknown namespace byte {other:#04x} in key {:?}", text(k))),
    }))
}

fn export(state_dir: &Path, out: &mut dyn Write) -> Result<u64, String> {
    let path = state_dir.join("store");
    if !path.join("conf").is_file() {
        return Err(format!(
            "{} is not a sled store of erpsync (no `conf` file)",
            path.display()
        ));
    }
    let db = sled::Config::new()
        .path(&path)
        .open()
        .map_err(|e| format!("cannot open {}: {e} (is the daemon still running?)", path.display()))?;
    let tree = db
        .open_tree("erpsync")
        .map_err(|e| format!("cannot open the erpsync tree: {e}"))?;
    let mut n = 0;
    writeln!(
        out,
        "{}",
        json!({"kind": "header", "format": "erpsync-dump", "version": 1, "source": "sled"})
    )
    .map_err(|e| e.to_string())?;
    for item in tree.iter() {
        let (k, v) = item.map_err(|e| format!("read error: {e}"))?;
        if let Some(l) = line(&k, &v)? {
            writeln!(out, "{l}").map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    writeln!(out, "{}", json!({"kind": "end", "items": n})).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(n)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() > 2 || args[0] == "--help" || args[0] == "-h" {
        eprintln!("usage: erpsync-sled-export STATE_DIR [OUT.jsonl]   (stop erpsync first)");
        return ExitCode::from(64);
    }
    let result = match args.get(1) {
        Some(out) => std::fs::File::create(out)
            .map_err(|e| format!("cannot create {out}: {e}"))
            .and_then(|f| export(Path::new(&args[0]), &mut BufWriter::new(f))),
        None => export(Path::new(&args[0]), &mut BufWriter::new(std::io::stdout().lock())),
    };
    match result {
        Ok(n) => {
            eprintln!("exported {n} items");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("erpsync-sled-export: {e}");
            ExitCode::from(1)
        }
    }
}
