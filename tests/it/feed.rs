//! The read side in-process: a consumer of `/api/v1/changes` rebuilds
//! exactly what the store serves through exclusions (purge events),
//! re-inclusions (resync events) and upstream deletions; the list filters
//! and exports; every bad request is a 400 that changes nothing; a position
//! behind retention is a 410 whose recipe rebuilds the same state; the
//! consumer token reads the read side and nothing else; webhook targets on
//! private networks and redirects are refused.

use std::time::{Duration, Instant};

use erpsync::connectors::demo::DemoOptions;
use serde_json::{json, Value};

use crate::consumer::{
    assert_same, csv_reader, webhook_toml, Mirror, Mode, Receiver, Snapshot, SECRET,
};
use crate::support::{small_demo, Api, InProcess, CONSUMER_TOKEN, VIEWER_TOKEN};

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn catch_up(mut m: Mirror, api: Api) -> Mirror {
    blocking(move || {
        m.catch_up(&api);
        m
    })
    .await
}

async fn wait_resyncs_done(p: &InProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = p
            .call("GET", "/api/v1/resyncs?state=unfinished", None)
            .await;
        if v["jobs"].as_array().is_some_and(|j| j.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "resyncs did not finish: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Customers that have both invoices and transactions stored.
fn busy_customers(p: &InProcess, n: usize) -> Vec<String> {
    let snap = Snapshot::of_store(&p.app.store);
    let mut out = Vec::new();
    for k in snap.customers.keys() {
        let has_inv = snap.invoices.values().any(|r| r[0] == k.1);
        let has_txn = snap.transactions.values().any(|r| r[0] == k.1);
        if has_inv && has_txn {
            out.push(k.1.clone());
        }
        if out.len() == n {
            break;
        }
    }
    assert_eq!(out.len(), n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_changes_rebuilds_what_is_served_through_exclusions_reinclusions_and_deletions(
) {
    let opts = DemoOptions {
        trickle: 0,
        ..small_demo()
    };
    let p = InProcess::start(&opts, "1h", "").await;
    p.wait_passes(1).await;
    let api = p.api.with_token(CONSUMER_TOKEN);
    let m = catch_up(Mirror::default(), api.clone()).await;
    assert_same(
        &m.snapshot(),
        &Snapshot::of_store(&p.app.store),
        "after the first sync",
    );
    assert!(m.invoices.len() > 1000, "{}", m.invoices.len());

    // Exclusions: two by hand, one turning inactive upstream. Upstream
    // deletions and a change of an included customer's records.
    let picked = busy_customers(&p, 4);
    let (x1, x2, x3, keep) = (&picked[0], &picked[1], &picked[2], &picked[3]);
    let (st, v) = p
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": [format!("demo:{x1}"), format!("demo:{x2}")], "reason": "test"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    p.erp.set_customer_inactive(x3, true);
    let snap = Snapshot::of_store(&p.app.store);
    let inv_of_keep = snap
        .invoices
        .iter()
        .filter(|(_, r)| r[0] == *keep)
        .map(|(k, _)| k.1.clone())
        .collect::<Vec<_>>();
    let txn_of_keep = snap
        .transactions
        .iter()
        .find(|(_, r)| r[0] == *keep)
        .map(|(k, _)| k.1.clone())
        .unwrap();
    assert!(p.erp.delete_invoice(&inv_of_keep[0]));
    assert!(p.erp.delete_transaction(&txn_of_keep));
    if let Some(second) = inv_of_keep.get(1) {
        assert!(p
            .erp
            .update_invoice(second, |i| i.number = "CHANGED-1".into()));
    }
    p.sync_now().await;
    let m = catch_up(m, api.clone()).await;
    let store_now = Snapshot::of_store(&p.app.store);
    assert_same(&m.snapshot(), &store_now, "after exclusions and deletions");
    for x in [x1, x2, x3] {
        assert!(!store_now.invoices.values().any(|r| r[0] == **x));
        assert!(!m.customers.contains_key(&("demo".to_string(), x.clone())));
    }
    for kind in [
        "customer.purged",
        "customer.excluded",
        "invoice.deleted",
        "transaction.deleted",
    ] {
        assert!(
            m.kinds.get(kind).copied().unwrap_or(0) > 0,
            "{kind}: {:?}",
            m.kinds
        );
    }

    // Re-inclusions: by hand and upstream; both resync the history.
    let (st, v) = p
        .call(
            "POST",
            "/api/v1/reinclusions",
            Some(json!({"customers": [format!("demo:{x1}"), format!("demo:{x2}")]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    p.erp.set_customer_inactive(x3, false);
    p.sync_now().await;
    wait_resyncs_done(&p).await;
    let m = catch_up(m, api.clone()).await;
    let store_now = Snapshot::of_store(&p.app.store);
    assert_same(&m.snapshot(), &store_now, "after re-inclusions and resyncs");
    for x in [x1, x2, x3] {
        assert!(
            store_now.invoices.values().any(|r| r[0] == **x),
            "{x} resynced"
        );
    }
    assert!(
        m.kinds.get("customer.included").copied().unwrap_or(0) >= 3,
        "{:?}",
        m.kinds
    );
    assert!(
        m.kinds.get("resync.finished").copied().unwrap_or(0) >= 1,
        "{:?}",
        m.kinds
    );
    // A full read through the list endpoints and the customer export gives
    // the same.
    let full = blocking({
        let api = api.clone();
        move || Snapshot::of_api(&api)
    })
    .await;
    assert_same(&full, &store_now, "full read through the API");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_paging_and_exports() {
    let opts = DemoOptions {
        trickle: 0,
        ..small_demo()
    };
    let p = InProcess::start(&opts, "1h", "").await;
    p.wait_passes(1).await;
    let api = p.api.with_token(CONSUMER_TOKEN);
    let today = chrono::Utc::now().date_naive();
    let erp_invoices = p.erp.invoices();
    blocking(move || {
        // Paging with a small limit sees every invoice once, in key order.
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let v = api.get(&format!("/api/v1/invoices?limit=137{after}"));
            assert!(v["feed_seq"].as_u64().unwrap() > 0);
            for i in v["invoices"].as_array().unwrap() {
                seen.push(i["id"].as_str().unwrap().to_string());
                assert!(i["total"].is_string(), "amounts are decimal strings: {i}");
            }
            match v["next"].as_str() {
                Some(n) => after = format!("&after={n}"),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted);
        let included: usize = Snapshot::of_api(&api).invoices.len();
        assert_eq!(seen.len(), included);

        // Filters agree with the ERP's own data (excluded customers' records
        // are not served, so compare within what is served).
        let served: std::collections::BTreeSet<String> = seen.into_iter().collect();
        let count = |q: &str| -> usize {
            let mut n = 0;
            let mut after = String::new();
            loop {
                let v = api.get(&format!("/api/v1/invoices?limit=1000&{q}{after}"));
                n += v["invoices"].as_array().unwrap().len();
                match v["next"].as_str() {
                    Some(c) => after = format!("&after={c}"),
                    None => return n,
                }
            }
        };
        let erp = |f: &dyn Fn(&erpsync::model::Invoice) -> bool| {
            erp_invoices
                .iter()
                .filter(|i| served.contains(&i.external_id) && f(i))
                .count()
        };
        use erpsync::model::InvoiceStatus as S;
        assert_eq!(count("status=open"), erp(&|i| i.status == S::Open));
        assert_eq!(
            count("status=overdue"),
            erp(&|i| i.status == S::Open && i.due_date < today)
        );
        assert_eq!(count("status=paid"), erp(&|i| i.status == S::Paid));
        let (from, to) = (today - chrono::Days::new(60), today - chrono::Days::new(10));
        assert_eq!(
            count(&format!("due_from={from}&due_to={to}&connector=demo")),
            erp(&|i| i.due_date >= from && i.due_date <= to)
        );
        let cur = erp_invoices[0].currency.clone();
        assert_eq!(
            count(&format!("currency={cur}")),
            erp(&|i| i.currency == cur)
        );
        let cust = erp_invoices
            .iter()
            .find(|i| served.contains(&i.external_id))
            .unwrap()
            .customer_id
            .clone();
        assert_eq!(
            count(&format!("customer=demo:{cust}")),
            erp(&|i| i.customer_id == cust)
        );
        let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        assert_eq!(
            count(&format!("modified_since={}", future.replace('+', "%2B"))),
            0
        );
        assert_eq!(count("modified_since=2000-01-01T00:00:00Z"), served.len());

        // Transactions.
        let v = api.get("/api/v1/transactions?kind=credit_note&limit=5");
        for t in v["transactions"].as_array().unwrap() {
            assert_eq!(t["kind"], "credit_note");
            assert!(t["amount"].is_string());
        }

        // The open-invoices export: one row per open invoice, text cells
        // spreadsheet-safe.
        let (st, csv) = api.call("GET", "/api/v1/exports/open-invoices.csv", None);
        assert_eq!(st, 200);
        let text = csv.as_str().unwrap().to_string();
        let mut r = csv_reader(&text);
        assert_eq!(
            r.headers().unwrap().iter().collect::<Vec<_>>(),
            erpsync::read::export::OPEN_INVOICES_HEADER.to_vec()
        );
        assert_eq!(r.records().count(), count("status=open"));
        let (st, _) = api.call("GET", "/api/v1/exports/customers.csv?connector=demo", None);
        assert_eq!(st, 200);
    })
    .await;
    p.stop().await;
}

/// The feed position and a list page, to check that nothing changed.
fn state(api: &Api) -> (u64, Value) {
    let v = api.get("/api/v1/changes?after=0&limit=1");
    (
        v["latest"].as_u64().unwrap(),
        api.get("/api/v1/invoices?limit=3"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400s_that_change_nothing_and_a_position_past_retention_is_a_410() {
    let opts = DemoOptions {
        trickle: 0,
        ..small_demo()
    };
    let p = InProcess::start(&opts, "1h", "").await;
    p.wait_passes(1).await;
    let api = p.api.with_token(CONSUMER_TOKEN);
    let store = std::sync::Arc::clone(&p.app.store);
    blocking(move || {
        let before = state(&api);
        let cases: &[(&str, &str)] = &[
            ("/api/v1/invoices?colour=red", "unknown field `colour`"),
            (
                "/api/v1/invoices?status=late",
                "`status` must be one of open, overdue, paid, voided, draft",
            ),
            (
                "/api/v1/invoices?after=bm90IGEgY3Vyc29y",
                "`after` is not a cursor of this list",
            ),
            ("/api/v1/invoices?after=%%%", "`after` is not a cursor"),
            (
                "/api/v1/invoices?due_from=2026-03-02&due_to=2026-03-01",
                "`due_from` (2026-03-02) is after `due_to` (2026-03-01)",
            ),
            (
                "/api/v1/invoices?due_from=tomorrow",
                "`due_from` must be a date like 2026-03-31",
            ),
            (
                "/api/v1/invoices?modified_since=yesterday",
                "`modified_since` must be an RFC 3339 instant",
            ),
            (
                "/api/v1/invoices?limit=5000",
                "`limit` must be a whole number between 1 and 1000",
            ),
            (
                "/api/v1/invoices?connector=sap",
                "unknown connector `sap`; configured connectors: demo",
            ),
            (
                "/api/v1/invoices?customer=C1",
                "`customer`: `C1` is not a customer reference",
            ),
            ("/api/v1/invoices?kind=payment", "unknown field `kind`"),
            ("/api/v1/transactions?status=open", "unknown field `status`"),
            (
                "/api/v1/transactions?date_from=2026-02-01&date_to=2026-01-01",
                "`date_from` (2026-02-01) is after `date_to` (2026-01-01)",
            ),
            (
                "/api/v1/transactions?kind=refund",
                "`kind` must be payment or credit_note",
            ),
            (
                "/api/v1/changes?after=abc",
                "`after` must be the `seq` of the last event you applied",
            ),
            ("/api/v1/changes?after=-1", "`after` must be the `seq`"),
            (
                "/api/v1/changes?after=999999999",
                "`after` 999999999 is ahead of this feed",
            ),
            (
                "/api/v1/changes?limit=0",
                "`limit` must be between 1 and 1000",
            ),
            ("/api/v1/changes?since=1", "unknown field `since`"),
            (
                "/api/v1/exports/open-invoices.csv?status=paid",
                "unknown field `status`",
            ),
            (
                "/api/v1/exports/customers.csv?connector=nope",
                "unknown connector `nope`",
            ),
        ];
        for (path, want) in cases {
            let (st, v) = api.call("GET", path, None);
            assert_eq!(st, 400, "{path}: {v}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains(want), "{path}: {msg}");
        }
        assert_eq!(state(&api), before, "bad requests changed nothing");
    })
    .await;

    // Retention drops the oldest events: a reader from the beginning gets a
    // 410 with the way back, and following it rebuilds the same state.
    let latest = store.feed_bounds().unwrap().latest;
    let dropped = store
        .expire_events(chrono::Duration::days(30), latest / 2, chrono::Utc::now())
        .await
        .unwrap();
    assert!(dropped > 0);
    let api = p.api.with_token(CONSUMER_TOKEN);
    let s2 = std::sync::Arc::clone(&store);
    blocking(move || {
        let (st, v) = api.call("GET", "/api/v1/changes", None);
        assert_eq!(st, 410, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("do a full read"), "{msg}");
        assert_eq!(v["after"], 0);
        let resume = v["resume_after"].as_u64().unwrap();
        assert_eq!(resume, latest);
        // The recipe: a full read, then the feed after `resume_after`.
        let full = Snapshot::of_api(&api);
        let mut m = Mirror {
            customers: full.customers,
            invoices: full.invoices,
            transactions: full.transactions,
            after: resume,
            ..Default::default()
        };
        m.catch_up(&api);
        assert_same(
            &m.snapshot(),
            &Snapshot::of_store(&s2),
            "rebuilt after a 410",
        );
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_token_reads_the_read_side_and_nothing_else() {
    let p = InProcess::start(&small_demo(), "1h", "").await;
    p.wait_passes(1).await;
    let consumer = p.api.with_token(CONSUMER_TOKEN);
    let viewer = p.api.with_token(VIEWER_TOKEN);
    blocking(move || {
        for path in [
            "/api/v1/invoices",
            "/api/v1/transactions",
            "/api/v1/changes",
            "/api/v1/exports/open-invoices.csv",
            "/api/v1/exports/customers.csv",
        ] {
            assert_eq!(consumer.call("GET", path, None).0, 200, "{path}");
            assert_eq!(viewer.call("GET", path, None).0, 200, "{path}");
        }
        for (method, path, body) in crate::support::admin_endpoints("demo:C00001", "C00001") {
            let (st, v) = consumer.call(method, &path, body.as_ref());
            assert_eq!(st, 403, "{method} {path}: {v}");
            let msg = v["error"].as_str().unwrap();
            assert!(
                msg.contains("the consumer token reads only the read side"),
                "{method} {path}: {msg}"
            );
        }
        // It cannot open a console session.
        let (st, v) = consumer.without_token().call(
            "POST",
            "/api/v1/session",
            Some(&json!({"token": CONSUMER_TOKEN})),
        );
        assert_eq!(st, 403, "{v}");
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("log in to the console with the admin or the viewer token"));
    })
    .await;
    p.stop().await;
}

fn secret_file(dir: &std::path::Path) {
    std::fs::write(dir.join("wh-secret"), format!("{SECRET}\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_refuse_private_targets_after_dns_and_do_not_follow_redirects() {
    let refused = Receiver::start(Mode::Accept);
    let redirecting = Receiver::start(Mode::Redirect);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path());
    // `localhost` is a name: it passes the config check and is refused when
    // it resolves to a loopback address.
    let extra = format!(
        "{}{}",
        webhook_toml(
            "guarded",
            &format!("http://localhost:{}/hook", refused.addr.port()),
            "wh-secret",
            ""
        ),
        webhook_toml(
            "redirected",
            &redirecting.url,
            "wh-secret",
            "allow_private_network = true"
        ),
    );
    let erp = erpsync::connectors::demo::DemoErp::new(&small_demo());
    let p = InProcess::start_with(erp, &small_demo(), "1h", &extra, dir).await;
    p.wait_passes(1).await;
    let api = p.api.clone();
    blocking(move || {
        let w = crate::consumer::wait_webhook(&api, "guarded", "refused", |w| {
            w["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("a loopback address: refused"))
        });
        assert!(w["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_private_network"));
        assert_eq!(
            w["target"],
            format!("http://localhost:{}", refused.addr.port())
        );
        assert_eq!(refused.requests(), 0, "nothing reached the private target");
        let w = crate::consumer::wait_webhook(&api, "redirected", "failing", |w| {
            w["state"] == "failing"
        });
        let msg = w["last_error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("HTTP 307 (a redirect): redirects are not followed"),
            "{msg}"
        );
        assert!(redirecting.requests() > 0);
        assert_eq!(redirecting.bad_signatures(), 0);
        let metrics = match api.call("GET", "/metrics", None).1 {
            Value::String(s) => s,
            other => panic!("{other}"),
        };
        assert!(
            metrics.contains("erpsync_webhook_failing{endpoint=\"redirected\"} 1"),
            "{metrics}"
        );
        assert!(!metrics.contains("/hook"), "the URL path is never shown");
    })
    .await;
    p.stop().await;
}

#[test]
fn webhook_config_problems_are_named_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path());
    let text = r#"
[daemon]
state_dir = "state"

[[webhooks]]
id = "a"
url = "http://127.0.0.1:9/x"
secret_file = "wh-secret"

[[webhooks]]
id = "a"
url = "ftp://example.com/x"
secret_file = "missing"
events = ["invoice.upserted", "invoice.created"]

[[webhooks]]
id = "bad id"
url = "https://user:pw@example.com/x"
secret_file = "wh-secret"
retry_initial = "10m"
retry_max = "1m"
batch_size = 0

[feed]
retention = "5m"
"#;
    let path = dir.path().join("erpsync.toml");
    let err = erpsync::config::parse(&path, text, &erpsync::connectors::REGISTRY)
        .unwrap_err()
        .to_string();
    for want in [
        ":7: key `webhooks[0].url`: 127.0.0.1 is a loopback address; set allow_private_network = true",
        ":11: key `webhooks[1].id`: webhook id `a` is used twice",
        ":12: key `webhooks[1].url`: `ftp` URLs are not supported",
        ":13: key `webhooks[1].secret_file`: secret file",
        ":14: key `webhooks[1].events`: `invoice.created` is not an event type",
        ":17: key `webhooks[2].id`: `bad id` is not a webhook id",
        ":18: key `webhooks[2].url`: must not contain a user name or password",
        ":21: key `webhooks[2].retry_max`: is shorter than retry_initial",
        ":22: key `webhooks[2].batch_size`: must be between 1 and 1000",
        ":25: key `feed.retention`: `5m` is too short",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("pw@"), "{err}");
}
