//! The fault matrix: the real binary against the NetSuite mock through every
//! fault the mock can inject — 429 with and without `Retry-After`, 5xx, a
//! connection reset mid-body, a stalled answer (longer than the request
//! timeout), a truncated JSON body, a malformed row, the token revoked
//! mid-sync and the data changed between pages — each placed at a seeded
//! random request of a sync, with the daemon killed with SIGKILL at a
//! seeded random point of every other scenario. Before each scenario the
//! ERP's data changes (edits, new invoices, deletions, customers turning
//! inactive and active again); after each, the store must hold exactly the
//! mock's data: every customer with the classification its native flags
//! give, every transaction of included customers once at its latest
//! version, nothing of excluded ones.
//!
//! `ERPSYNC_FAULT_SEED` varies the seed; the closing line says how many
//! faults and kills were survived.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use erpsync::model::CustomerKey;
use erpsync::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::netsuite_mock::{Fault, Hook, MockConfig, MockNetsuite};
use crate::support::{free_port, Daemon};

/// Scenarios per fault kind.
const ROUNDS: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Kind {
    TooManyWithRetryAfter,
    TooManyWithout,
    ServerError,
    ResetMidBody,
    Stalled,
    Truncated,
    MalformedRow,
    TokenRevoked,
    DataChanged,
}

const KINDS: [Kind; 9] = [
    Kind::TooManyWithRetryAfter,
    Kind::TooManyWithout,
    Kind::ServerError,
    Kind::ResetMidBody,
    Kind::Stalled,
    Kind::Truncated,
    Kind::MalformedRow,
    Kind::TokenRevoked,
    Kind::DataChanged,
];

fn seed() -> u64 {
    std::env::var("ERPSYNC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201)
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What the ERP changes between scenarios, seeded: edits of transactions,
/// new invoices, deletions (with their DeletedRecord rows) and a customer
/// turning inactive or active again.
pub(crate) fn change_data(mock: &MockNetsuite, rng: &mut StdRng) {
    let txns = mock.ids("transaction", Some("CustInvc"));
    for _ in 0..4 {
        let id = txns[rng.random_range(0..txns.len())];
        let total = format!(
            "{}.{:02}",
            rng.random_range(10..5000),
            rng.random_range(0..100)
        );
        mock.update("transaction", id, &[("foreigntotal", &total)]);
    }
    let customers = mock.ids("customer", None);
    for _ in 0..2 {
        let c = customers[rng.random_range(0..customers.len())];
        mock.insert_invoice(c, &format!("{}.00", rng.random_range(10..900)));
    }
    let pays = mock.ids("transaction", Some("CustPymt"));
    if let Some(id) = pays.get(rng.random_range(0..pays.len().max(1))) {
        mock.delete("transaction", *id);
    }
    let c = customers[rng.random_range(0..customers.len())];
    let inactive = mock.column("customer", None, "isinactive");
    let now = if inactive[&c].as_deref() == Some("T") {
        "F"
    } else {
        "T"
    };
    mock.update("customer", c, &[("isinactive", now)]);
}

/// The faults of one scenario, after `skip` normal answers.
fn faults(kind: Kind, skip: usize, mock: &Arc<MockNetsuite>, rng: &mut StdRng) -> Vec<Fault> {
    let mut out: Vec<Fault> = (0..skip).map(|_| Fault::Pass).collect();
    match kind {
        Kind::TooManyWithRetryAfter => out.push(Fault::TooManyRequests {
            retry_after: Some(1),
        }),
        Kind::TooManyWithout => out.push(Fault::TooManyRequests { retry_after: None }),
        Kind::ServerError => out.push(Fault::ServerError([500, 502, 503][rng.random_range(0..3)])),
        Kind::ResetMidBody => out.push(Fault::ResetMidBody),
        Kind::Stalled => out.push(Fault::Slow(Duration::from_secs(3))),
        Kind::Truncated => out.push(Fault::TruncatedBody),
        Kind::MalformedRow => out.push(Fault::MalformedRow),
        Kind::TokenRevoked => {
            let m = Arc::clone(mock);
            out.push(Fault::Before(Hook(Arc::new(move || m.set_revoked(true)))));
        }
        Kind::DataChanged => {
            let m = Arc::clone(mock);
            let seed: u64 = rng.random();
            let hook = move || change_data(&m, &mut StdRng::seed_from_u64(seed));
            out.push(Fault::Before(Hook(Arc::new(hook))));
        }
    }
    out
}

/// The mock's `YYYY-MM-DD HH:MM:SS` account-local time as a UTC instant.
fn mock_utc(mock: &MockNetsuite, local: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
    (naive - chrono::Duration::minutes(mock.config().utc_offset_minutes as i64)).and_utc()
}

/// Asserts the store holds exactly the mock's data (see the module docs).
pub(crate) fn assert_store_equals_mock(store: &Store, mock: &MockNetsuite, what: &str) {
    let inactive = mock.column("customer", None, "isinactive");
    let ic = mock.column("customer", None, &mock.config().intercompany_column.clone());
    let excluded: BTreeMap<String, bool> = inactive
        .iter()
        .map(|(id, v)| {
            let ex = v.as_deref() == Some("T") || ic.get(id).cloned().flatten().is_some();
            (id.to_string(), ex)
        })
        .collect();
    let stored: BTreeMap<String, bool> = store
        .customers(Some("ns"), None)
        .map(|c| {
            let c = c.unwrap();
            (c.customer.external_id.clone(), c.classification.excluded)
        })
        .collect();
    assert_eq!(
        stored, excluded,
        "{what}: customers and their classification"
    );

    let entity = mock.column("transaction", None, "entity");
    let ty = mock.column("transaction", None, "type");
    let modified = mock.column("transaction", None, "lastmodifieddate");
    let expected: BTreeSet<(String, String, DateTime<Utc>)> = entity
        .iter()
        .filter(|(id, _)| {
            matches!(
                ty[*id].as_deref(),
                Some("CustInvc" | "CustPymt" | "CustCred")
            )
        })
        .filter_map(|(id, c)| {
            let c = c.clone().unwrap();
            (!excluded[&c]).then(|| {
                let m = mock_utc(mock, modified[id].as_deref().unwrap());
                (id.to_string(), c, m)
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut got = BTreeSet::new();
    for r in store.records(Some("ns")) {
        let (_, r) = r.unwrap();
        assert!(
            seen.insert(r.external_id().to_string()),
            "{what}: {} twice",
            r.external_id()
        );
        got.insert((
            r.external_id().to_string(),
            r.customer_id().to_string(),
            r.last_modified(),
        ));
    }
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: store differs from the mock: missing {missing:?}, extra or stale {extra:?} ({} expected, {} stored)",
        expected.len(),
        got.len()
    );
    for (id, ex) in &excluded {
        if *ex {
            assert!(
                store
                    .records_of(&CustomerKey::new("ns", id))
                    .unwrap()
                    .is_empty(),
                "{what}: excluded customer {id} has records"
            );
        }
    }
}

/// Passes finished, and whether the last one failed, from `/status`.
fn pass_state(d: &Daemon) -> (u64, bool) {
    let s = d.client.get("/status");
    let c = &s["connectors"][0];
    let failed = c["consecutive_errors"].as_u64().unwrap_or(0) > 0;
    (c["passes"].as_u64().unwrap_or(0), failed)
}

/// Runs passes until one that started after every change of the data
/// succeeds and no resync is left, undoing what only a person can fix when
/// a pass fails (a revoked token issued again) and retrying failed resync
/// jobs. A change made while a pass ran (between its pages) is the next
/// pass's to read.
pub(crate) fn converge(d: &Daemon, mock: &MockNetsuite) {
    settle(d, mock, 0);
    let n = pass_state(d).0;
    d.client.call("POST", "/api/v1/connectors/ns/sync", None);
    settle(d, mock, n);
}

/// Waits for a successful pass after the first `after` of this process
/// and for every resync to finish (see [`converge`]).
fn settle(d: &Daemon, mock: &MockNetsuite, after: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut handled = after;
    loop {
        let (passes, failed) = pass_state(d);
        if passes > after && !failed {
            let failed_jobs = d.client.get("/api/v1/resyncs?state=failed");
            for j in failed_jobs["jobs"].as_array().into_iter().flatten() {
                mock.set_revoked(false);
                let id = j["id"].as_u64().unwrap();
                d.client
                    .call("POST", &format!("/api/v1/resyncs/{id}/retry"), None);
            }
            let v = d.client.get("/api/v1/resyncs?state=unfinished");
            if v["jobs"].as_array().is_some_and(|j| j.is_empty()) {
                return;
            }
        }
        if failed && passes > handled {
            handled = passes;
            mock.set_revoked(false);
            d.client.call("POST", "/api/v1/connectors/ns/sync", None);
        }
        assert!(Instant::now() < deadline, "no successful pass: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fixes upstream every record the store quarantined and does not hold
/// (a person correcting it in the ERP: its last-modified time moves).
fn fix_quarantined(store: &Store, mock: &MockNetsuite) -> usize {
    use erpsync::model::Entity;
    let stored: BTreeSet<String> = store
        .records(Some("ns"))
        .map(|r| r.unwrap().1.external_id().to_string())
        .collect();
    let customers: BTreeSet<String> = store
        .customers(Some("ns"), None)
        .map(|c| c.unwrap().customer.external_id)
        .collect();
    let live_txns: BTreeSet<u64> = mock.ids("transaction", None).into_iter().collect();
    let live_customers: BTreeSet<u64> = mock.ids("customer", None).into_iter().collect();
    let mut fixed = BTreeSet::new();
    for q in store.quarantine("ns", 10_000).unwrap() {
        let Some(id) = q.record.external_id.as_deref() else {
            continue;
        };
        let Ok(n) = id.parse::<u64>() else { continue };
        let (table, live, held) = match q.record.entity {
            Entity::Customers => (
                "customer",
                live_customers.contains(&n),
                customers.contains(id),
            ),
            _ => ("transaction", live_txns.contains(&n), stored.contains(id)),
        };
        if live && !held && fixed.insert((table, n)) {
            mock.update(table, n, &[]);
        }
    }
    fixed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_equals_the_erp_after_every_fault_and_kill() {
    let mock = Arc::new(
        MockNetsuite::start(MockConfig {
            customers: 120,
            invoices: 500,
            payments: 200,
            credit_memos: 40,
            concurrency_limit: 10,
            ..MockConfig::default()
        })
        .await,
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = crate::netsuite_daemon::write_config(
        &mock,
        dir.path(),
        port,
        &mock.config().credentials.token_secret.clone(),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            "max_concurrency = 3 }",
            "max_concurrency = 3, max_attempts = 4 }",
        )
        .replace(
            "page_size = 250",
            "page_size = 50\nrequest_timeout = \"2s\"",
        );
    std::fs::write(&cfg, text).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let state = dir.path().join("state");
    let mut rng = StdRng::seed_from_u64(seed());
    let (mut faults_survived, mut kills) = (0usize, 0usize);
    let mut reached_by_kind: BTreeMap<String, usize> = BTreeMap::new();

    // The first sync, killed at random points, then completed.
    for _ in 0..3 {
        let d = blocking(|| Daemon::spawn_unready(&cfg, base.clone()));
        let at = mock.stats().requests + rng.random_range(1..12);
        blocking(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while mock.stats().requests < at && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            d.kill9();
        });
        kills += 1;
    }
    blocking(|| {
        let d = Daemon::spawn(&cfg, base.clone());
        converge(&d, &mock);
        assert!(d.terminate().0.success());
    });
    blocking(|| assert_store_equals_mock(&Store::open(&state).unwrap(), &mock, "first sync"));

    let started = Instant::now();
    for kind in KINDS {
        for round in 0..ROUNDS {
            let what = format!("{kind:?} round {round}");
            change_data(&mock, &mut rng);
            let skip = rng.random_range(0..4);
            mock.push_faults(faults(kind, skip, &mock, &mut rng));
            let kill = round % 2 == 1;
            blocking(|| {
                let d = Daemon::spawn(&cfg, base.clone());
                if kill {
                    // SIGKILL at a random request of this pass (or after it).
                    let at = mock.stats().requests + rng.random_range(1..8);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while mock.stats().requests < at
                        && pass_state(&d).0 == 0
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    d.kill9();
                    kills += 1;
                    let d = Daemon::spawn(&cfg, base.clone());
                    converge(&d, &mock);
                    assert!(d.terminate().0.success());
                } else {
                    converge(&d, &mock);
                    assert!(d.terminate().0.success());
                }
            });
            // A fault left unapplied (the kill came first) must not leak
            // into the next scenario; only those reached are counted.
            let reached = mock.pending_faults() == 0;
            mock.clear_faults();
            mock.set_revoked(false);
            let store = blocking(|| Store::open(&state).unwrap());
            let fixed = fix_quarantined(&store, &mock);
            drop(store);
            if fixed > 0 {
                blocking(|| {
                    let d = Daemon::spawn(&cfg, base.clone());
                    converge(&d, &mock);
                    assert!(d.terminate().0.success());
                });
            }
            blocking(|| assert_store_equals_mock(&Store::open(&state).unwrap(), &mock, &what));
            if reached {
                faults_survived += 1;
                *reached_by_kind.entry(format!("{kind:?}")).or_insert(0) += 1;
            }
        }
    }
    println!(
        "fault matrix (seed {}): {faults_survived} faults of {} kinds reached and {kills} kills survived in {} scenarios; the store equalled the mock after each ({:.0} s); by kind: {reached_by_kind:?}",
        seed(),
        KINDS.len(),
        KINDS.len() * ROUNDS,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        reached_by_kind.len(),
        KINDS.len(),
        "every kind of fault was reached at least once: {reached_by_kind:?}"
    );
}
