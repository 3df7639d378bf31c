//! Scale-out on a real PostgreSQL: three daemons (the real binary) share
//! thirty demo connectors through leases. Every connector is worked by one
//! daemon at a time (checked on the lease history, whose fenced-write counts
//! are kept in the same transactions as the pages); a daemon killed with
//! SIGKILL mid-sync has its connectors finished by the others after the
//! lease timeout; a daemon paused past its lease (SIGSTOP) writes nothing
//! after SIGCONT; SIGTERM hands the leases over at once; a daemon with other
//! rules is refused while the others hold leases. The store ends equal to
//! the upstream data of every connector. Skipped without PostgreSQL unless
//! `ERPSYNC_REQUIRE_PG=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use erpsync::connectors::demo::DemoOptions;
use erpsync::rules::RuleSet;
use erpsync::store::{HistoryEntry, Store, DEFAULT_CACHE_MB};
use serde_json::Value;

use crate::daemon::assert_connector_equals_erp;
use crate::support::{demo_toml, free_port, Daemon, TOKEN};

const CONNECTORS: usize = 30;
/// Short, so takeovers happen quickly; renewals run every second.
const LEASE_TIMEOUT_S: u64 = 5;

fn opts(i: usize) -> DemoOptions {
    // ~30 pages of 10 records at 40 ms: a pass of a second or more, so the
    // kill lands mid-sync.
    DemoOptions {
        seed: 1000 + i as u64,
        customers: 30,
        invoices: 150,
        transactions: 100,
        page_size: 10,
        trickle: 0,
        latency_ms: 40,
        ..DemoOptions::default()
    }
}

fn id(i: usize) -> String {
    format!("d{i:02}")
}

/// One daemon's directory and config on the shared database.
struct Node {
    dir: PathBuf,
    port: u16,
}

impl Node {
    fn new(root: &std::path::Path, name: &str, url: &str, extra: &str) -> Node {
        Self::with(root, name, url, extra, CONNECTORS)
    }

    fn with(root: &std::path::Path, name: &str, url: &str, extra: &str, n: usize) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "[daemon]\nstate_dir = \"state\"\nlog_level = \"info,erpsync=debug\"\nshutdown_timeout = \"8s\"\nstore = \"{url}\"\nlease_timeout = \"{LEASE_TIMEOUT_S}s\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin_token_file = \"token\"\n\n"
        );
        for i in 0..n {
            cfg += &format!(
                "[[connectors]]\nid = \"{}\"\nkind = \"demo\"\npoll_interval = \"1h\"\nrate_limit = {{ requests_per_second = 1000, burst = 1000, max_concurrency = 2 }}\n{}\n",
                id(i),
                demo_toml(&opts(i))
            );
        }
        cfg += extra;
        std::fs::write(dir.join("erpsync.toml"), cfg).unwrap();
        Node { dir, port }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("erpsync.toml")
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&self) -> Daemon {
        Daemon::spawn(&self.config(), self.base())
    }
}

fn signal(d: &Daemon, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &d.child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Daemon id → resources it holds, as the store says (any daemon answers).
fn leases(d: &Daemon) -> BTreeMap<String, Vec<String>> {
    let s = d.client.get("/status");
    s["cluster"]["daemons"]
        .as_array()
        .unwrap_or_else(|| panic!("no cluster section: {s:#}"))
        .iter()
        .filter(|d| d["live"] == true)
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["leases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["resource"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn self_id(d: &Daemon) -> String {
    d.client.get("/status")["cluster"]["self"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `ok` holds for the lease map seen by `d`; returns how long.
fn wait_leases(
    d: &Daemon,
    what: &str,
    ok: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let l = leases(d);
        if ok(&l) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what}: not reached within 60 s: {l:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sizes(l: &BTreeMap<String, Vec<String>>) -> Vec<usize> {
    let mut v: Vec<usize> = l.values().map(Vec::len).collect();
    v.sort();
    v
}

/// Waits until every connector finished a pass on the daemon holding its
/// lease.
fn wait_all_synced(daemons: &[&Daemon]) {
    wait_all_synced_n(daemons, CONNECTORS)
}

fn wait_all_synced_n(daemons: &[&Daemon], n: usize) {
    let t = Instant::now();
    loop {
        let mut done = std::collections::BTreeSet::new();
        for d in daemons {
            let s = d.client.get("/status");
            let mine: Vec<String> = s["cluster"]["self"]["leases"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            for c in s["connectors"].as_array().unwrap() {
                let res = format!("connector:{}", c["id"].as_str().unwrap());
                if mine.contains(&res) && c["state"] == "idle" && c["last_success"] != Value::Null {
                    done.insert(res);
                }
            }
        }
        if done.len() == n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "only {} connectors synced within 120 s",
            done.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per resource, the leases follow each other: each begins (database
/// time) no earlier than the previous one ended, with a larger token.
fn assert_one_at_a_time(history: &[HistoryEntry]) {
    let mut by: BTreeMap<&str, Vec<&HistoryEntry>> = BTreeMap::new();
    for h in history {
        by.entry(h.resource.as_str()).or_default().push(h);
    }
    assert_eq!(by.len(), CONNECTORS, "every connector was leased");
    for (res, hs) in by {
        for w in hs.windows(2) {
            assert!(w[0].token < w[1].token, "{res}: {w:?}");
            assert!(
                w[0].end_reason.is_some(),
                "{res}: lease {} still running when {} began",
                w[0].token,
                w[1].token
            );
            assert!(
                w[0].ended_at <= w[1].acquired_at,
                "{res}: leases overlap: {w:#?}"
            );
        }
    }
}

#[test]
fn three_daemons_share_thirty_connectors() {
    let Some(pg) = erpsync::store::testing::TestPg::create("scaleout::three_daemons") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let url = pg.url.clone();
    let (na, nb, nc) = (
        Node::new(root.path(), "a", &url, ""),
        Node::new(root.path(), "b", &url, ""),
        Node::new(root.path(), "c", &url, ""),
    );
    let a = na.start();
    let b = nb.start();
    let c = nc.start();
    // Even spread: ⌈30/3⌉ each, whatever the start order.
    wait_leases(&a, "10 leases each", |l| {
        l.len() == 3 && sizes(l) == [10, 10, 10]
    });
    let (ida, idb, idc) = (self_id(&a), self_id(&b), self_id(&c));

    // Sync-now through a daemon that does not hold the connector names the
    // one that does, and starts nothing.
    let of_c = leases(&b)[&idc][0].clone();
    let conn = of_c.strip_prefix("connector:").unwrap();
    let (st, v) = b
        .client
        .call("POST", &format!("/api/v1/connectors/{conn}/sync"), None);
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["owner"], idc.as_str(), "{v}");
    assert_eq!(
        v["error"],
        format!(
            "connector `{conn}` is synced by daemon {idc} (it holds the lease): ask that daemon"
        )
    );
    let on_b = b.client.get("/status")["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == conn)
        .unwrap()
        .clone();
    assert_eq!(
        (on_b["state"].clone(), on_b["passes"].clone()),
        (Value::from("standby"), Value::from(0))
    );

    // kill -9 one daemon mid-sync: its connectors go to the others after
    // the lease timeout.
    let killed: Vec<String> = leases(&b)[&ida].clone();
    let syncing = a.client.get("/status")["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "syncing")
        .count();
    assert!(syncing > 0, "a is in the middle of its passes");
    a.kill9();
    let took = wait_leases(&b, "a's connectors taken over", |l| {
        !l.contains_key(&ida) && sizes(l) == [15, 15]
    });
    assert!(
        took < Duration::from_secs(3 * LEASE_TIMEOUT_S),
        "takeover took {took:?}"
    );
    wait_all_synced(&[&b, &c]);
    // Every daemon serves the whole API: the same customers from either.
    let total = |d: &Daemon| {
        d.client.get("/status")["customers"]["total"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(total(&b), (CONNECTORS * 30) as u64);
    assert_eq!(total(&c), total(&b));
    // A daemon with other rules is refused while the others hold leases,
    // before it re-classifies anything.
    let nd = Node::new(
        root.path(),
        "d",
        &url,
        "\n[exclusions]\nmax_new_exclusion_ratio = 1.0\n\n[[rules]]\nid = \"all\"\ndescription = \"everyone\"\nwhen = { field = \"name\", op = \"is_not_empty\" }\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(nd.config())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("refusing to start: daemon ")
            && stderr.contains("lease(s) with other rules"),
        "{stderr}"
    );
    let counts = b.client.get("/status")["customers"].clone();
    assert!(
        counts["excluded_by_reason"].get("rule:all").is_none(),
        "nothing re-classified by the refused daemon: {counts:#}"
    );

    let store = Store::open_location(&pg.location(), DEFAULT_CACHE_MB).unwrap();
    let history = store.lease_history(None).unwrap();
    for res in &killed {
        let hs: Vec<_> = history.iter().filter(|h| &h.resource == res).collect();
        let last_a = hs.iter().rev().find(|h| h.owner == ida).unwrap();
        assert_eq!(
            last_a.end_reason.as_deref(),
            Some("expired"),
            "{res}: {hs:#?}"
        );
        let next = hs.iter().find(|h| h.token == last_a.token + 1).unwrap();
        assert_eq!(next.took_over_from.as_deref(), Some(ida.as_str()));
    }
    let status_b = b.client.get("/status");
    let m = b.client.call("GET", "/metrics", None).1;
    let m = m.as_str().unwrap();
    assert!(m.contains("erpsync_leases_held 15"), "{m}");
    assert!(m.contains("erpsync_lease_takeovers_total"), "{m}");
    let dead = status_b["cluster"]["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == ida.as_str())
        .expect("the killed daemon stays listed for a while");
    assert_eq!(
        (dead["live"].clone(), dead["leases"].clone()),
        (Value::Bool(false), serde_json::json!([]))
    );
    let live_leases = status_b["cluster"]["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == idb.as_str())
        .unwrap()["leases"]
        .clone();
    assert!(
        live_leases[0]["age_s"].is_number() && live_leases[0]["token"].as_u64() >= Some(1),
        "{live_leases:#}"
    );

    // SIGSTOP past the lease (in the middle of passes asked for), then
    // SIGCONT: the paused daemon writes nothing after losing its leases.
    let b_res: Vec<String> = leases(&c)[&idb].clone();
    for r in &b_res {
        let conn = r.strip_prefix("connector:").unwrap();
        let (st, v) = b
            .client
            .call("POST", &format!("/api/v1/connectors/{conn}/sync"), None);
        assert!(st < 300, "{st} {v}");
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&b, "-STOP");
    wait_leases(&c, "b's connectors taken over by c", |l| {
        l.get(&idc).is_some_and(|v| v.len() == CONNECTORS)
    });
    // Every lease b held has ended (expired) and moved to c.
    let before: BTreeMap<(String, u64), u64> = store
        .lease_history(None)
        .unwrap()
        .into_iter()
        .filter(|h| h.owner == idb)
        .map(|h| {
            assert_eq!(h.end_reason.as_deref(), Some("expired"), "{h:?}");
            ((h.resource, h.token), h.writes)
        })
        .collect();
    assert!(before.len() >= b_res.len());
    signal(&b, "-CONT");
    // b wakes up mid-pass: its rounds see the leases gone and stop the
    // work; a page write racing that is refused by its fencing token.
    wait_leases(&c, "b back with its share", |l| sizes(l) == [15, 15]);
    std::thread::sleep(Duration::from_secs(1));
    let log_b = b.log();
    assert!(
        log_b.contains("lease lost"),
        "b noticed the lost leases: {log_b}"
    );
    println!(
        "scaleout: takeover after kill -9 in {took:?}; after SIGCONT b had {} write(s) refused by fencing",
        log_b.matches("nothing was written").count()
    );
    let lost = b.client.call("GET", "/metrics", None).1;
    assert!(
        !lost
            .as_str()
            .unwrap()
            .contains("erpsync_leases_lost_total 0"),
        "{lost}"
    );
    // Nothing was written under b's old leases after SIGCONT: each
    // committed page write is counted on its lease in its own transaction.
    let after: BTreeMap<(String, u64), u64> = store
        .lease_history(None)
        .unwrap()
        .into_iter()
        .filter(|h| before.contains_key(&(h.resource.clone(), h.token)))
        .map(|h| ((h.resource, h.token), h.writes))
        .collect();
    assert_eq!(after, before);
    assert!(
        log_b.matches("fencing token").count() == log_b.matches("nothing was written").count(),
        "every refused write says it wrote nothing"
    );
    wait_all_synced(&[&b, &c]);

    // SIGTERM hands the leases over at once: released, not expired; the
    // other daemon claims them without a takeover.
    let c_res: Vec<String> = leases(&b)[&idc].clone();
    assert!(c.terminate().0.success());
    wait_leases(&b, "c's leases handed over", |l| {
        l.len() == 1 && l.get(&idb).is_some_and(|v| v.len() == CONNECTORS)
    });
    let history = store.lease_history(None).unwrap();
    for res in &c_res {
        let last_c = history
            .iter()
            .rfind(|h| &h.resource == res && h.owner == idc)
            .unwrap();
        assert_eq!(last_c.end_reason.as_deref(), Some("released"), "{res}");
        let next = history
            .iter()
            .find(|h| &h.resource == res && h.token == last_c.token + 1)
            .unwrap();
        assert_eq!(
            (next.owner.as_str(), next.took_over_from.as_deref()),
            (idb.as_str(), None)
        );
    }
    wait_all_synced(&[&b]);
    assert!(b.terminate().0.success());

    let history = store.lease_history(None).unwrap();
    assert_one_at_a_time(&history);
    let owners: std::collections::BTreeSet<_> = history
        .iter()
        .filter(|h| h.writes > 0)
        .map(|h| h.owner.as_str())
        .collect();
    assert_eq!(
        owners.len(),
        3,
        "every daemon synced some connectors: {owners:?}"
    );
    let mut dropped = 0;
    for i in 0..CONNECTORS {
        dropped += assert_connector_equals_erp(&store, &id(i), &opts(i), &RuleSet::default());
    }
    assert!(dropped > 0, "some records belong to excluded customers");
    drop(store);
}

const RULE: &str = "\n[exclusions]\nmax_new_exclusion_ratio = 1.0\n\n[[rules]]\nid = \"big\"\ndescription = \"Large balances are handled elsewhere\"\nwhen = { field = \"balance\", op = \"gt\", value = 1000 }\n";

/// A reload on one daemon puts its rules in force everywhere: the leases of
/// the daemon with the old rules are revoked in the reload's first write,
/// it stands by (and says why) until it is reloaded with the same rules,
/// then it gets its share back.
#[test]
fn a_reload_on_one_daemon_stands_the_others_by_until_they_follow() {
    const N: usize = 6;
    let Some(pg) = erpsync::store::testing::TestPg::create("scaleout::reload") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (na, nb) = (
        Node::with(root.path(), "a", &pg.url, "", N),
        Node::with(root.path(), "b", &pg.url, "", N),
    );
    let a = na.start();
    let b = nb.start();
    wait_leases(&a, "3 leases each", |l| l.len() == 2 && sizes(l) == [3, 3]);
    let (ida, idb) = (self_id(&a), self_id(&b));

    // New rules on a only, reloaded there.
    let plain = std::fs::read_to_string(na.config()).unwrap();
    std::fs::write(na.config(), format!("{plain}{RULE}")).unwrap();
    let (st, v) = a.client.call("POST", "/api/v1/reload", None);
    assert_eq!(st, 200, "{v}");
    wait_leases(&a, "a holds everything", |l| {
        l.get(&ida).is_some_and(|v| v.len() == N) && l.get(&idb).is_none_or(Vec::is_empty)
    });
    let store = Store::open_location(&pg.location(), DEFAULT_CACHE_MB).unwrap();
    let revoked: Vec<_> = store
        .lease_history(None)
        .unwrap()
        .into_iter()
        .filter(|h| h.owner == idb && h.end_reason.as_deref() == Some("revoked"))
        .collect();
    assert_eq!(revoked.len(), 3, "b's leases were revoked by the reload");
    // b notices at its next round.
    let t = Instant::now();
    let sb = loop {
        let sb = b.client.get("/status");
        if sb["cluster"]["self"]["standby"].is_string()
            && sb["cluster"]["self"]["leases"]
                .as_object()
                .is_some_and(|l| l.is_empty())
        {
            break sb;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "b never stood by: {sb:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let standby = sb["cluster"]["self"]["standby"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // While a's re-classification runs b says so; once done, that the
    // rules in force differ.
    assert!(
        standby.contains("the rules in force in the store differ from this daemon's config")
            || standby.contains("another daemon is putting other rules in force"),
        "{sb:#}"
    );
    assert!(
        sb["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "standby"),
        "{sb:#}"
    );
    // b's API still answers, from the shared store.
    assert_eq!(
        sb["customers"]["total"],
        a.client.get("/status")["customers"]["total"]
    );

    // b follows: reloaded with the same file it takes its share again.
    let plain_b = std::fs::read_to_string(nb.config()).unwrap();
    std::fs::write(nb.config(), format!("{plain_b}{RULE}")).unwrap();
    let (st, v) = b.client.call("POST", "/api/v1/reload", None);
    assert_eq!(st, 200, "{v}");
    wait_leases(&a, "3 leases each again", |l| sizes(l) == [3, 3]);
    assert!(b.client.get("/status")["cluster"]["self"]["standby"].is_null());
    wait_all_synced_n(&[&a, &b], N);
    assert!(a.terminate().0.success());
    assert!(b.terminate().0.success());
    let rules = crate::daemon::rules_of(RULE);
    for i in 0..N {
        assert_connector_equals_erp(&store, &id(i), &opts(i), &rules);
    }
}

/// Webhook delivery is leased too: with two daemons one delivers each
/// endpoint, so the receiver gets every event once, in feed order.
#[test]
fn one_daemon_delivers_each_webhook_endpoint() {
    use crate::consumer::{assert_same, webhook_toml, Mode, Receiver, Snapshot, SECRET};
    const N: usize = 4;
    let Some(pg) = erpsync::store::testing::TestPg::create("scaleout::webhooks") else {
        return;
    };
    let receiver = Receiver::start(Mode::Accept);
    let root = tempfile::tempdir().unwrap();
    let extra = webhook_toml(
        "warehouse",
        &receiver.url,
        "wh-secret",
        "allow_private_network = true",
    );
    let nodes = [
        Node::with(root.path(), "a", &pg.url, &extra, N),
        Node::with(root.path(), "b", &pg.url, &extra, N),
    ];
    for n in &nodes {
        std::fs::write(n.dir.join("wh-secret"), format!("{SECRET}\n")).unwrap();
    }
    let a = nodes[0].start();
    let b = nodes[1].start();
    // 4 connectors + 1 endpoint over 2 daemons: 3 and 2.
    wait_leases(&a, "3 and 2 leases", |l| l.len() == 2 && sizes(l) == [2, 3]);
    wait_all_synced_n(&[&a, &b], N);
    let owners: Vec<String> = leases(&a)
        .into_iter()
        .filter(|(_, r)| r.iter().any(|x| x == "webhook:warehouse"))
        .map(|(d, _)| d)
        .collect();
    assert_eq!(owners.len(), 1, "one daemon delivers the endpoint");
    let latest = a.client.get("/status")["feed"]["latest"].as_u64().unwrap();
    assert!(latest > 0);
    receiver.wait("every event delivered", |r| r.after() >= latest);
    // The endpoint may have moved once while the second daemon took its
    // share: the batch in flight then is sent again by the new owner (the
    // same events; consumers skip them by sequence number). From then on
    // one daemon delivers: new changes, made through either daemon, arrive
    // once.
    let settled = receiver.duplicates();
    let picked: Vec<String> = Snapshot::of_api(&a.client)
        .customers
        .keys()
        .take(4)
        .map(|k| format!("{}:{}", k.0, k.1))
        .collect();
    for (d, c) in [(&a, &picked[..2]), (&b, &picked[2..])] {
        d.client.post(
            "/api/v1/exclusions",
            &serde_json::json!({"customers": c, "reason": "handled elsewhere"}),
        );
    }
    let later = b.client.get("/status")["feed"]["latest"].as_u64().unwrap();
    assert!(later > latest);
    receiver.wait("the new changes delivered", |r| r.after() >= later);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receiver.duplicates(),
        settled,
        "no event delivered twice once settled"
    );
    assert_eq!(receiver.out_of_order(), 0, "batches in feed order");
    assert_eq!(receiver.bad_signatures(), 0);
    assert!(
        receiver
            .kinds()
            .get("customer.excluded")
            .copied()
            .unwrap_or(0)
            >= 4
    );
    assert_same(
        &receiver.snapshot(),
        &Snapshot::of_api(&b.client),
        "receiver vs the API",
    );
    assert!(a.terminate().0.success());
    assert!(b.terminate().0.success());
}
