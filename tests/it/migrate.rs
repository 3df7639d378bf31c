//! Upgrading an install: a state directory written by erpsync 0.1 (sled
//! store, committed as a fixture together with what that daemon answered
//! on its API) is exported by `erpsync-sled-export` (its output is the
//! committed `dump.jsonl`; CI re-creates it from the fixture and compares)
//! and imported with `erpsync migrate-store`; the new daemon then answers
//! exactly as the old one did, on both backends.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{free_port, Backend, Daemon, TOKEN};
use erpsync::model::Entity;
use erpsync::store::testing::TestPg;
use erpsync::store::Store;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sled")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("expected_{name}.json"))).unwrap(),
    )
    .unwrap()
}

/// The fixture's state directory and config in a fresh directory; returns
/// (dir, config path, port).
fn unpack(pg: Option<&TestPg>) -> (tempfile::TempDir, PathBuf, u16) {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("xzf")
        .arg(fixture("state.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let mut cfg = std::fs::read_to_string(fixture("erpsync.toml"))
        .unwrap()
        .replace("127.0.0.1:18923", &format!("127.0.0.1:{port}"));
    if let Some(p) = pg {
        cfg = cfg.replace(
            "state_dir = \"state\"",
            &format!("state_dir = \"state\"\nstore = \"{}\"", p.url),
        );
    }
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, cfg).unwrap();
    (dir, path, port)
}

fn erpsync(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The parts of an answer that must survive the move (sequence numbers are
/// renumbered, timings are not data).
/// PostgreSQL keeps instants to the microsecond: with `micros`, every
/// instant in `v` is cut to that precision before comparing.
fn at_precision(v: &Value, micros: bool) -> Value {
    match v {
        Value::String(s) if micros => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Value::String(
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
            Err(_) => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| at_precision(x, micros)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), at_precision(x, micros)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn audit_entries(v: &Value, micros: bool) -> Vec<Value> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut e = at_precision(e, micros);
            e.as_object_mut().unwrap().remove("seq");
            e
        })
        .collect()
}

fn jobs(v: &Value, micros: bool) -> Vec<Value> {
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let mut j = at_precision(j, micros);
            j.as_object_mut().unwrap().remove("rate");
            j
        })
        .collect()
}

fn upgrade(backend: Backend) {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match TestPg::create("migrate::upgrade::postgres") {
            Some(p) => Some(p),
            None => return,
        },
    };
    let (dir, config, port) = unpack(pg.as_ref());
    let cfg = config.to_str().unwrap();

    // Without the import, the daemon refuses to start on an empty store
    // next to the old one (exit 78), and says what to do.
    let (code, _, err) = erpsync(&["run", "--config", cfg]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("holds the store of an earlier erpsync"),
        "{err}"
    );
    assert!(err.contains("erpsync migrate-store --from-dump"), "{err}");

    let dump = fixture("dump.jsonl");
    let (code, out, err) = erpsync(&[
        "migrate-store",
        "--from-dump",
        dump.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("40 customers, 394 records")
            && out
                .contains("13 audit entries, 3 manual decisions, 2 resync jobs, 2 reminder flags"),
        "{out}"
    );
    // A second import is refused and changes nothing.
    let (code, _, err) = erpsync(&[
        "migrate-store",
        "--from-dump",
        dump.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already holds data") && err.contains("nothing was imported"),
        "{err}"
    );

    // What /status showed, straight from the imported store.
    {
        let store = match &pg {
            Some(p) => Store::open_location(&p.location(), 8).unwrap(),
            None => Store::open(&dir.path().join("state")).unwrap(),
        };
        let counts =
            serde_json::to_value(store.classification_counts(Some("demo")).unwrap()).unwrap();
        assert_eq!(
            counts,
            expected("status")["customers"],
            "classification counts"
        );
        let counters = serde_json::to_value(store.counters("demo").unwrap()).unwrap();
        assert_eq!(
            counters,
            expected("status")["connectors"][0]["counters"],
            "counters carried"
        );
        for e in Entity::ALL {
            assert!(
                store.cursor("demo", e).unwrap().is_some(),
                "{e} cursor carried"
            );
        }
    }

    // The admin API answers as before. The demo ERP moves with the clock, so
    // its first page is held back (a minute of simulated latency) and the
    // answers show the data exactly as imported.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("trickle = 0", "trickle = 0\nlatency_ms = 60000"),
    )
    .unwrap();
    let d = Daemon::spawn(&config, format!("http://127.0.0.1:{port}"));
    let status = d.client.get("/status");
    assert_eq!(status["customers"], expected("status")["customers"]);
    assert_eq!(
        status["connectors"][0]["counters"],
        expected("status")["connectors"][0]["counters"]
    );
    let micros = backend == Backend::Postgres;
    let audit = d.client.get("/api/v1/audit?limit=1000");
    assert_eq!(
        audit_entries(&audit, micros),
        audit_entries(&expected("audit"), micros)
    );
    assert_eq!(
        jobs(&d.client.get("/api/v1/resyncs"), micros),
        jobs(&expected("resyncs"), micros)
    );
    for (path, name) in [
        ("/api/v1/reminders/stops", "stops"),
        ("/api/v1/reminders/holds", "holds"),
        ("/api/v1/excluded?connector=demo&limit=100", "excluded"),
    ] {
        let mut want = expected(name);
        if name == "stops" {
            // STOP flags gained an optional end date and note since 0.1;
            // imported flags have neither.
            for item in want["items"].as_array_mut().unwrap() {
                item["until"] = Value::Null;
                item["note"] = Value::Null;
            }
        }
        assert_eq!(
            at_precision(&d.client.get(path), micros),
            at_precision(&want, micros),
            "{path}"
        );
    }
    // (the decision waiting for the never-synced C99999 is in `pending`)
    assert_eq!(
        expected("excluded")["pending"][0]["customer"],
        "demo:C99999"
    );
    assert!(d.terminate().0.success());
    drop(dir);
}

#[test]
fn a_broken_dump_imports_nothing_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fixture("dump.jsonl")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated",
            lines[..lines.len() - 1].join("\n"),
            "no end marker: it is incomplete",
        ),
        (
            "bad line",
            format!(
                "{}\n{{\"kind\": \"customer\", \"value\": 3}}\n{}",
                lines[0],
                lines[1..].join("\n")
            ),
            ":2: value: invalid type",
        ),
        (
            "no header",
            lines[1..].join("\n"),
            ":1: the dump does not start with its header line",
        ),
    ];
    for (what, text, want) in cases {
        let dump = dir.path().join(format!("{what}.jsonl"));
        std::fs::write(&dump, text).unwrap();
        let db = dir.path().join(format!("{what}.db"));
        let (code, _, err) = erpsync(&[
            "migrate-store",
            "--from-dump",
            dump.to_str().unwrap(),
            "--to",
            db.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{what}");
        assert!(err.contains(want), "{what}: {err}");
        let store =
            erpsync::store::Store::open_location(&erpsync::store::StoreLocation::Sqlite(db), 1)
                .unwrap();
        assert!(store.is_empty().unwrap(), "{what}: something was imported");
    }
}

mod upgrade {
    use crate::support::Backend;
    #[test]
    fn sqlite() {
        super::upgrade(Backend::Sqlite);
    }
    #[test]
    fn postgres() {
        super::upgrade(Backend::Postgres);
    }
}
