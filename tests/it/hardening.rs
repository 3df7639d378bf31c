//! The HTTP port under hostile or sloppy requests: lists over the per-request
//! cap, unknown query parameters, wrong methods, undecodable path
//! parameters, spreadsheet formulas in CSV exports and the bearer scheme's
//! case. Every refusal is a JSON error naming the problem and changes
//! nothing in the store.

use std::time::Duration;

use erpsync::model::CustomerKey;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::exclusion::{
    config_path, error_of, get_text, included_with_records, rule_toml, snapshot,
};
use crate::reminders::demo_reminders;
use crate::support::{admin_endpoints, small_demo, InProcess, TOKEN};

/// A request with a raw `Authorization` header (or none); the status, the
/// content type and the body as JSON (or a JSON string).
async fn with_auth(
    d: &InProcess,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (u16, String, Value) {
    let mut r = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", d.api.base),
        )
        .timeout(Duration::from_secs(60));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        st,
        ctype,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn refs(n: usize, f: impl Fn(usize) -> String) -> Value {
    json!((0..n).map(f).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_lists_are_capped_per_request_and_duplicates_cost_nothing() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = included_with_records(store, 1).remove(0).key();
    let k = key.to_string();
    let before = snapshot(store);
    // 65,000 references used to burn a minute of CPU de-duplicating.
    let cases = [
        ("/api/v1/exclusions", 65_000, json!({"reason": "x"})),
        ("/api/v1/exclusions", 10_001, json!({"reason": "x"})),
        ("/api/v1/reinclusions", 10_001, json!({})),
        ("/api/v1/resyncs", 10_001, json!({})),
    ];
    for (path, n, mut body) in cases {
        body["customers"] = refs(n, |i| format!("demo:X{i}"));
        let (st, v) = d.call("POST", path, Some(body)).await;
        assert_eq!(st, 400, "{path} {n}: {v}");
        assert_eq!(
            error_of(&v),
            format!("`customers` names {n} customers; at most 10000 are accepted per request: split the list"),
            "{path}"
        );
        assert_eq!(snapshot(store), before, "{path} changed the store");
    }

    // At the cap, duplicates collapse to one customer.
    let same = refs(10_000, |_| k.clone());
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/resyncs",
            Some(json!({"customers": same, "reason": "dup"})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        (v["queued"].clone(), v["jobs"][0]["customers"].clone()),
        (json!(1), json!(1))
    );
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": same, "reason": "dup"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["changed"].clone(),
            v["customers"].as_array().unwrap().len()
        ),
        (json!(1), 1)
    );
    assert!(
        store
            .customer(&key)
            .unwrap()
            .unwrap()
            .classification
            .excluded
    );

    // 10,000 distinct customers never synced: all wait for their first sync.
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(
                json!({"customers": refs(10_000, |i| format!("demo:C9{i:05}")), "reason": "bulk"}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["pending"], 10_000);
    assert_eq!(store.manual_decisions().count(), 10_001);
    d.stop().await;
}

/// Every endpoint, with what it needs to do something.
fn endpoints(k: &str, id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let mut all = vec![
        ("GET", "/healthz".into(), None),
        ("GET", "/readyz".into(), None),
        ("GET", "/status".into(), None),
        ("GET", "/metrics".into(), None),
    ];
    all.extend(admin_endpoints(k, id));
    all.extend(crate::support::read_endpoints());
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_refused_everywhere_and_change_nothing() {
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = included_with_records(store, 1).remove(0).key();
    // Give a reload something to do, should `?dry_run=true` wrongly run it.
    let cfg = std::fs::read_to_string(config_path(&d)).unwrap();
    let rule = rule_toml("r", std::slice::from_ref(&key.external_id));
    // Rules go before [reminders], which ends the file.
    let at = cfg.find("\n[reminders]").unwrap();
    std::fs::write(
        config_path(&d),
        format!("{}{rule}{}", &cfg[..at], &cfg[at..]),
    )
    .unwrap();
    let before = snapshot(store);
    let (st, v) = d.call("POST", "/api/v1/reload?dry_run=true", None).await;
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("unknown field `dry_run`"), "{v}");
    assert!(d.app.last_reload.lock().unwrap().is_none(), "no reload ran");
    assert_eq!(snapshot(store), before);

    for (method, path, body) in endpoints(&key.to_string(), &key.external_id) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}bogus=1");
        let (st, v) = d.call(method, &path, body.clone()).await;
        assert_eq!(st, 400, "{method} {path}: {v}");
        assert!(
            error_of(&v).contains("unknown field `bogus`"),
            "{method} {path}: {v}"
        );
        assert_eq!(snapshot(store), before, "{method} {path} changed the store");
    }
    assert!(d.app.last_reload.lock().unwrap().is_none(), "no reload ran");
    let (_, stops) = d.call("GET", "/api/v1/reminders/stops", None).await;
    assert_eq!(stops["items"], json!([]));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_excluded_csv_takes_the_filters_of_the_excluded_list() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let picked = included_with_records(store, 2);
    let manual: Vec<String> = picked.iter().map(|c| c.key().to_string()).collect();
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": manual, "reason": "filters"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let before = snapshot(store);
    for (query, status, needle) in [
        (
            "connector=nope",
            400,
            "unknown connector `nope`; configured connectors: demo",
        ),
        (
            "connector=nope&source=bogus",
            400,
            "unknown variant `bogus`",
        ),
        ("source=bogus", 400, "unknown variant `bogus`"),
        (
            "limit=5",
            400,
            "the CSV export is the whole list: it takes no `after` or `limit`",
        ),
        ("after=demo:C1", 400, "takes no `after` or `limit`"),
    ] {
        // The CSV refuses what the JSON list refuses, the same way.
        for path in ["/api/v1/excluded.csv", "/api/v1/excluded"] {
            if path == "/api/v1/excluded"
                && (query.starts_with("limit") || query.starts_with("after"))
            {
                continue;
            }
            let (st, v) = d.call("GET", &format!("{path}?{query}"), None).await;
            assert_eq!(st, status, "{path}?{query}: {v}");
            assert!(error_of(&v).contains(needle), "{path}?{query}: {v}");
        }
    }
    assert_eq!(snapshot(store), before);

    let csv_ids = |text: String| -> Vec<String> {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        r.records()
            .map(|r| {
                let r = r.unwrap();
                format!("{}:{}", &r[0], &r[1])
            })
            .collect()
    };
    let json_ids = |v: Value| -> Vec<String> {
        v["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["customer"].as_str().unwrap().to_string())
            .collect()
    };
    let all = csv_ids(get_text(&d, "/api/v1/excluded.csv").await);
    for query in [
        "connector=demo&source=manual".to_string(),
        "source=native".to_string(),
        format!("q={}", picked[0].customer.external_id),
    ] {
        let csv = csv_ids(get_text(&d, &format!("/api/v1/excluded.csv?{query}")).await);
        let (st, v) = d
            .call("GET", &format!("/api/v1/excluded?limit=1000&{query}"), None)
            .await;
        assert_eq!(st, 200, "{v}");
        let list = json_ids(v);
        assert_eq!(csv, list, "{query}");
        assert!(csv.len() < all.len(), "{query} filters");
    }
    let manual_csv = csv_ids(get_text(&d, "/api/v1/excluded.csv?source=manual").await);
    assert_eq!(manual_csv, manual);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_undecodable_path_parameters_get_json_errors() {
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let before = snapshot(store);
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, allowed) in [
        ("PUT", "/api/v1/exclusions", "POST"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/api/v1/resyncs", "GET, POST"),
        ("GET", "/api/v1/reload", "POST"),
    ] {
        let (st, ctype, v) = with_auth(&d, method, path, Some(&bearer)).await;
        assert_eq!(st, 405, "{method} {path}: {v}");
        assert_eq!(ctype, "application/json", "{method} {path}");
        assert_eq!(
            error_of(&v),
            format!("method {method} is not allowed on {path}; allowed: {allowed}")
        );
    }
    // The token is checked first.
    let (st, _, v) = with_auth(&d, "PUT", "/api/v1/exclusions", None).await;
    assert_eq!(st, 401, "{v}");

    for (method, path, param) in [
        ("GET", "/api/v1/resyncs/%FF", "id"),
        ("POST", "/api/v1/resyncs/%FF/retry", "id"),
        ("GET", "/api/v1/reminders/customers/%FF", "customer"),
        ("GET", "/api/v1/customers/demo/%FF", "id"),
    ] {
        let (st, ctype, v) = with_auth(&d, method, path, Some(&bearer)).await;
        assert_eq!(st, 400, "{method} {path}: {v}");
        assert_eq!(ctype, "application/json", "{method} {path}");
        assert_eq!(
            error_of(&v),
            format!("Invalid URL: Invalid UTF-8 in `{param}`"),
            "{method} {path}"
        );
    }
    assert_eq!(snapshot(store), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_still_checked() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    for (auth, status, needle) in [
        (format!("bearer {TOKEN}"), 200, ""),
        (format!("BEARER {TOKEN}"), 200, ""),
        (format!("Bearer {TOKEN}"), 200, ""),
        (
            "bearer not-the-token".to_string(),
            401,
            "wrong bearer token",
        ),
        (format!("Basic {TOKEN}"), 401, "missing bearer token"),
        (format!("bearer{TOKEN}"), 401, "missing bearer token"),
    ] {
        let (st, _, v) = with_auth(&d, "GET", "/api/v1/status", Some(&auth)).await;
        assert_eq!(st, status, "{auth}: {v}");
        assert!(error_of(&v).contains(needle), "{auth}: {v}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_exports_defuse_spreadsheet_formulas_but_keep_negative_amounts_numeric() {
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let today = chrono::Utc::now().date_naive();
    let (st, v) = d
        .call(
            "GET",
            &format!("/api/v1/reminders/candidates?as_of={today}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let rows = v["candidates"].as_array().unwrap().clone();
    let listed: Vec<CustomerKey> = rows
        .iter()
        .map(|r| CustomerKey::parse(r["customer"].as_str().unwrap()).unwrap())
        .collect();
    let (reminded, excluded) = (&listed[0], &listed[1]);
    assert!(d.erp.update_customer(&reminded.external_id, |c| {
        c.name = "-2+3+cmd|' /C calc'!A0".into();
        c.email = Some("=1+1@evil.example".into());
        c.balance = Decimal::new(-1234, 2);
    }));
    assert!(d.erp.update_customer(&excluded.external_id, |c| {
        c.name = "=HYPERLINK(\"http://evil.example\",\"x\")".into();
        c.email = Some("@evil.example".into());
    }));
    d.sync_now().await;
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": [excluded.to_string()], "reason": "+1 fraud", "actor": "-mallory"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    let text = get_text(
        &d,
        &format!("/api/v1/excluded.csv?q={}", excluded.external_id),
    )
    .await;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(recs.len(), 1, "{text}");
    assert_eq!(&recs[0][2], "'=HYPERLINK(\"http://evil.example\",\"x\")");
    assert_eq!(&recs[0][3], "'@evil.example");
    assert_eq!(&recs[0][5], "manual: +1 fraud");
    assert_eq!(&recs[0][7], "'-mallory");

    let text = get_text(
        &d,
        &format!("/api/v1/reminders/candidates.csv?as_of={today}"),
    )
    .await;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let rec = r
        .records()
        .map(Result::unwrap)
        .find(|r| r[0] == *reminded.to_string())
        .unwrap_or_else(|| panic!("{reminded} not in {text}"));
    assert_eq!(&rec[1], "'-2+3+cmd|' /C calc'!A0");
    assert_eq!(&rec[2], "'=1+1@evil.example");
    assert_eq!(&rec[10], "-12.34", "a negative balance stays a number");
    assert!(rec[5].contains("creditor"), "{rec:?}");
    assert!(store.customer(reminded).unwrap().is_some());
    d.stop().await;
}
