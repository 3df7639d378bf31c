//! A downstream consumer as the tests model it: it applies change events
//! (from `/api/v1/changes` or from webhook deliveries) to its own copy, and
//! that copy is compared with what the store holds. Also a webhook receiver
//! that verifies every signature with the reference Standard Webhooks
//! library (not erpsync's code) and can be told to fail.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use erpsync::model::Record;
use erpsync::store::Store;
use serde_json::Value;

use crate::support::Api;

type Key = (String, String);

/// The fields compared for an invoice or transaction.
pub type Row = Vec<String>;

/// What a consumer keeps, built only from events.
#[derive(Debug, Default)]
pub struct Mirror {
    pub customers: BTreeMap<Key, String>,
    pub invoices: BTreeMap<Key, Row>,
    pub transactions: BTreeMap<Key, Row>,
    /// The last event applied.
    pub after: u64,
    /// Events applied, by type.
    pub kinds: BTreeMap<String, u64>,
    /// Events seen again (at-least-once redelivery).
    pub duplicates: u64,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An invoice or transaction view as the compared row.
pub fn view_row(v: &Value) -> Row {
    let mut row = vec![
        s(&v["customer_id"]),
        s(&v["currency"]),
        s(&v["last_modified"]),
    ];
    if v.get("amount_due").is_some() {
        for f in [
            "number",
            "due_date",
            "total",
            "amount_due",
            "status",
            "on_hold",
        ] {
            row.push(s(&v[f]));
        }
    } else {
        for f in ["kind", "date", "amount"] {
            row.push(s(&v[f]));
        }
    }
    row
}

impl Mirror {
    /// Applies one event; an event at or before the position is a
    /// redelivery and skipped.
    pub fn apply(&mut self, e: &Value) {
        let seq = e["seq"].as_u64().expect("seq");
        if seq <= self.after {
            self.duplicates += 1;
            return;
        }
        self.after = seq;
        let kind = e["type"].as_str().expect("type").to_string();
        *self.kinds.entry(kind.clone()).or_default() += 1;
        let k = (s(&e["connector"]), s(&e["entity_id"]));
        let data = &e["data"];
        match kind.as_str() {
            "customer.upserted" | "customer.included" => {
                if !data.is_null() {
                    self.customers.insert(k, s(&data["name"]));
                }
            }
            "customer.excluded" => {
                self.customers.remove(&k);
            }
            "customer.purged" => {
                self.customers.remove(&k);
                for (field, map) in [
                    ("invoices", &mut self.invoices),
                    ("transactions", &mut self.transactions),
                ] {
                    for id in data[field].as_array().expect("purged ids") {
                        map.remove(&(k.0.clone(), s(id)));
                    }
                }
            }
            "invoice.upserted" => {
                if !data.is_null() {
                    self.invoices.insert(k, view_row(data));
                }
            }
            "transaction.upserted" => {
                if !data.is_null() {
                    self.transactions.insert(k, view_row(data));
                }
            }
            "invoice.deleted" => {
                self.invoices.remove(&k);
            }
            "transaction.deleted" => {
                self.transactions.remove(&k);
            }
            "resync.finished" => {}
            other => panic!("unknown event type {other}"),
        }
    }

    /// Reads `/api/v1/changes` after its position until the end.
    pub fn catch_up(&mut self, api: &Api) {
        loop {
            let (st, v) = api.call(
                "GET",
                &format!("/api/v1/changes?after={}&limit=500", self.after),
                None,
            );
            assert_eq!(st, 200, "{v}");
            let events = v["events"].as_array().unwrap();
            for e in events {
                self.apply(e);
            }
            if !v["has_more"].as_bool().unwrap() {
                return;
            }
        }
    }

    /// The same shape as [`Snapshot`], for comparison.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            customers: self.customers.clone(),
            invoices: self.invoices.clone(),
            transactions: self.transactions.clone(),
        }
    }
}

/// What is served: included customers (name) and every stored record.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    pub customers: BTreeMap<Key, String>,
    pub invoices: BTreeMap<Key, Row>,
    pub transactions: BTreeMap<Key, Row>,
}

impl Snapshot {
    /// Read from the store itself.
    pub fn of_store(store: &Store) -> Snapshot {
        let mut out = Snapshot::default();
        for c in store.customers(None, None) {
            let c = c.unwrap();
            if !c.classification.excluded {
                out.customers.insert(
                    (c.connector.clone(), c.customer.external_id.clone()),
                    c.customer.name,
                );
            }
        }
        for r in store.records(None) {
            let (conn, rec) = r.unwrap();
            let v = match &rec {
                Record::Invoice(i) => serde_json::to_value(i).unwrap(),
                Record::Transaction(t) => serde_json::to_value(t).unwrap(),
            };
            let key = (conn, rec.external_id().to_string());
            match rec {
                Record::Invoice(_) => out.invoices.insert(key, view_row(&v)),
                Record::Transaction(_) => out.transactions.insert(key, view_row(&v)),
            };
        }
        out
    }

    /// Read through the list endpoints (a full read, as after a 410).
    pub fn of_api(api: &Api) -> Snapshot {
        let mut out = Snapshot::default();
        for (path, field) in [
            ("/api/v1/invoices", "invoices"),
            ("/api/v1/transactions", "transactions"),
        ] {
            let mut after: Option<String> = None;
            loop {
                let url = match &after {
                    Some(a) => format!("{path}?limit=1000&after={a}"),
                    None => format!("{path}?limit=1000"),
                };
                let v = api.get(&url);
                for item in v[field].as_array().unwrap() {
                    let k = (s(&item["connector"]), s(&item["id"]));
                    let row = view_row(item);
                    if field == "invoices" {
                        out.invoices.insert(k, row);
                    } else {
                        out.transactions.insert(k, row);
                    }
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
        }
        let (st, csv) = api.call("GET", "/api/v1/exports/customers.csv", None);
        assert_eq!(st, 200, "{csv}");
        let text = csv.as_str().unwrap().to_string();
        let mut r = csv_reader(&text);
        for rec in r.records() {
            let rec = rec.unwrap();
            out.customers
                .insert((rec[0].to_string(), rec[1].to_string()), rec[2].to_string());
        }
        out
    }
}

pub fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    csv::Reader::from_reader(text.as_bytes())
}

/// Asserts two snapshots are equal, with a readable difference.
pub fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    for (name, a, b) in [
        ("invoices", &got.invoices, &want.invoices),
        ("transactions", &got.transactions, &want.transactions),
    ] {
        if a != b {
            let extra: Vec<_> = a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .take(5)
                .collect();
            let missing: Vec<_> = b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(v))
                .take(5)
                .collect();
            panic!(
                "{what}: {name} differ ({} vs {}); extra or different: {extra:?}; missing or different: {missing:?}",
                a.len(),
                b.len()
            );
        }
    }
    if got.customers != want.customers {
        let extra: Vec<_> = got
            .customers
            .keys()
            .filter(|k| !want.customers.contains_key(*k))
            .take(5)
            .collect();
        let missing: Vec<_> = want
            .customers
            .keys()
            .filter(|k| !got.customers.contains_key(*k))
            .take(5)
            .collect();
        panic!("{what}: customers differ; extra {extra:?}; missing {missing:?}");
    }
}

// ----- the webhook receiver ------------------------------------------------

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Fail(u16),
    Redirect,
}

struct Shared {
    verifier: standardwebhooks::Webhook,
    mode: Mutex<Mode>,
    mirror: Mutex<Mirror>,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    accepted: AtomicU64,
    pings: AtomicU64,
    expired: AtomicU64,
    /// Batches that did not continue right after the previous one.
    out_of_order: AtomicU64,
}

/// An HTTP receiver of erpsync's webhooks on 127.0.0.1, on its own thread.
pub struct Receiver {
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// A `whsec_` secret for tests.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn hook(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    sh.requests.fetch_add(1, Ordering::SeqCst);
    if sh.verifier.verify(&body, &headers).is_err() {
        sh.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let mode = *sh.mode.lock().unwrap();
    match mode {
        Mode::Fail(code) => return (StatusCode::from_u16(code).unwrap(), "down").into_response(),
        Mode::Redirect => {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, "http://127.0.0.1:1/elsewhere")],
            )
                .into_response()
        }
        Mode::Accept => {}
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    match v["type"].as_str().unwrap() {
        "webhook.ping" => {
            sh.pings.fetch_add(1, Ordering::SeqCst);
        }
        "changes.expired" => {
            sh.expired.fetch_add(1, Ordering::SeqCst);
        }
        "changes" => {
            let mut m = sh.mirror.lock().unwrap();
            let first = v["data"]["first_seq"].as_u64().unwrap();
            if first > m.after + 1 {
                sh.out_of_order.fetch_add(1, Ordering::SeqCst);
            }
            for e in v["data"]["events"].as_array().unwrap() {
                m.apply(e);
            }
        }
        other => panic!("unknown message type {other}"),
    }
    sh.accepted.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}

impl Receiver {
    pub fn start(mode: Mode) -> Receiver {
        let shared = Arc::new(Shared {
            verifier: standardwebhooks::Webhook::new(SECRET).unwrap(),
            mode: Mutex::new(mode),
            mirror: Mutex::new(Mirror::default()),
            requests: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let sh = Arc::clone(&shared);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/hook", axum::routing::post(hook))
                    .with_state(sh);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            addr,
            shared,
        }
    }

    pub fn set_mode(&self, m: Mode) {
        *self.shared.mode.lock().unwrap() = m;
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
    pub fn bad_signatures(&self) -> u64 {
        self.shared.bad_signatures.load(Ordering::SeqCst)
    }
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
    pub fn pings(&self) -> u64 {
        self.shared.pings.load(Ordering::SeqCst)
    }
    pub fn expired(&self) -> u64 {
        self.shared.expired.load(Ordering::SeqCst)
    }
    pub fn out_of_order(&self) -> u64 {
        self.shared.out_of_order.load(Ordering::SeqCst)
    }
    pub fn snapshot(&self) -> Snapshot {
        self.shared.mirror.lock().unwrap().snapshot()
    }
    pub fn after(&self) -> u64 {
        self.shared.mirror.lock().unwrap().after
    }
    pub fn kinds(&self) -> BTreeMap<String, u64> {
        self.shared.mirror.lock().unwrap().kinds.clone()
    }
    pub fn duplicates(&self) -> u64 {
        self.shared.mirror.lock().unwrap().duplicates
    }

    /// Waits until `f` holds, up to two minutes.
    pub fn wait(&self, what: &str, f: impl Fn(&Receiver) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "receiver: {what} did not happen within 120 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `[[webhooks]]` entry of a test config for `url`, with quick back-off.
pub fn webhook_toml(id: &str, url: &str, secret_file: &str, extra: &str) -> String {
    format!(
        "\n[[webhooks]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret_file = \"{secret_file}\"\nbatch_size = 50\nretry_initial = \"20ms\"\nretry_max = \"200ms\"\nmax_retry_time = \"300ms\"\n{extra}\n"
    )
}

/// Waits on `/status` until `f` holds for webhook `id`.
pub fn wait_webhook(api: &Api, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = api.get("/status");
        if let Some(w) = st["webhooks"]
            .as_array()
            .and_then(|a| a.iter().find(|w| w["id"] == id))
        {
            if f(w) {
                return w.clone();
            }
            assert!(
                Instant::now() < deadline,
                "webhook {id}: {what} not within 120 s: {w:#}"
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "no webhook {id} in /status: {st:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
