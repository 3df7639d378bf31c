//! Scale-out throughput: total records/s of a first sync of 30 demo
//! connectors on one PostgreSQL database by 1, 2 and 3 daemons (the real
//! binary, each its own process), sharing the connectors through leases.
//!
//! The clock runs from the moment the daemons are spawned (together) until
//! every connector has finished its first pass on the daemon holding its
//! lease, so it includes start-up and the first lease rounds (a new daemon
//! gets its share within a second). On a machine with few cores the daemons
//! compete for the same CPUs as the database server: the figure then shows
//! the cost of scale-out (lease rounds, fenced writes, writes serialised
//! across daemons), not a speed-up.
//!
//! Run: `cargo bench --bench scaleout` (1, 2 and 3 daemons), or
//! `cargo bench --bench scaleout -- N` for N daemons. PostgreSQL is the
//! server of `ERPSYNC_TEST_PG`; without one the bench is skipped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erpsync::store::testing::TestPg;

const CONNECTORS: usize = 30;
const CUSTOMERS: usize = 200;
const INVOICES: usize = 2000;
const TRANSACTIONS: usize = 1000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, name: &str, url: &str) -> Node {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("token"), "bench-token\n").unwrap();
    let port = free_port();
    let mut cfg = format!(
        "[daemon]\nstate_dir = \"state\"\nlog_level = \"warn\"\nstore = \"{url}\"\nlease_timeout = \"10s\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin_token_file = \"token\"\n\n"
    );
    for i in 0..CONNECTORS {
        cfg += &format!(
            "[[connectors]]\nid = \"d{i:02}\"\nkind = \"demo\"\npoll_interval = \"1h\"\nrate_limit = {{ requests_per_second = 100000, burst = 100000, max_concurrency = 4 }}\n[connectors.demo]\nseed = {}\ncustomers = {CUSTOMERS}\ninvoices = {INVOICES}\ntransactions = {TRANSACTIONS}\npage_size = 500\ntrickle = 0\n\n",
            100 + i
        );
    }
    std::fs::write(d.join("erpsync.toml"), cfg).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(d.join("erpsync.toml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Node { child, port }
}

/// Connectors that finished a pass on the daemon holding their lease.
async fn synced(client: &reqwest::Client, nodes: &[Node]) -> usize {
    let mut n = 0;
    for node in nodes {
        let Ok(r) = client
            .get(format!("http://127.0.0.1:{}/status", node.port))
            .bearer_auth("bench-token")
            .send()
            .await
        else {
            continue;
        };
        let Ok(s) = r.json::<serde_json::Value>().await else {
            continue;
        };
        let Some(mine) = s["cluster"]["self"]["leases"].as_object() else {
            continue;
        };
        for c in s["connectors"].as_array().into_iter().flatten() {
            let res = format!("connector:{}", c["id"].as_str().unwrap_or(""));
            if mine.contains_key(&res) && c["state"] == "idle" && !c["last_success"].is_null() {
                n += 1;
            }
        }
    }
    n
}

async fn run(daemons: usize) {
    let Some(pg) = TestPg::create("bench scaleout") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let t = Instant::now();
    let nodes: Vec<Node> = (0..daemons)
        .map(|i| spawn(dir.path(), &format!("n{i}"), &pg.url))
        .collect();
    loop {
        if synced(&client, &nodes).await == CONNECTORS {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "not synced in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let records = CONNECTORS * (CUSTOMERS + INVOICES + TRANSACTIONS);
    println!(
        "scaleout: {daemons} daemon(s), {CONNECTORS} connectors, {records} records: {secs:.2} s, {:.0} records/s",
        records as f64 / secs
    );
    drop(nodes);
    drop(pg);
}

#[tokio::main]
async fn main() {
    let which: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let which = if which.is_empty() {
        vec![1, 2, 3]
    } else {
        which
    };
    for n in which {
        run(n).await;
    }
}
