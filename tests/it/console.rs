//! The web console's server side, through the real server: login and
//! sessions, CSRF, the read-only viewer, failed-login limits, the embedded
//! assets and their headers, and the API the console added (mass exclusion
//! filters, re-inclusion estimate, rules in force, reminder summary, STOP
//! terms). Browser scenarios are in `console_e2e`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::exclusion::snapshot;
use crate::reminders::demo_reminders;
use crate::support::{admin_endpoints, small_demo, InProcess, TOKEN, VIEWER_TOKEN};

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

/// A raw answer: status, headers, body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut r = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        )
        .timeout(Duration::from_secs(60));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// A logged-in console session.
struct Web {
    base: String,
    cookie: String,
    csrf: String,
}

impl Web {
    async fn login(d: &InProcess, token: &str) -> Web {
        let a = send(
            &d.api.base,
            "POST",
            "/api/v1/session",
            &[],
            Some(json!({ "token": token })),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let set = a.header("set-cookie");
        let cookie = set.split(';').next().unwrap().to_string();
        Web {
            base: d.api.base.clone(),
            cookie,
            csrf: a.body["csrf_token"].as_str().unwrap().to_string(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>, csrf: bool) -> Answer {
        let mut h = vec![("cookie", self.cookie.as_str())];
        if csrf {
            h.push(("x-csrf-token", self.csrf.as_str()));
        }
        send(&self.base, method, path, &h, body).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_gives_a_strict_session_cookie_that_authenticates_the_api_with_csrf_on_changes() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = store.customers(None, None).next().unwrap().unwrap().key();

    let a = send(
        &d.api.base,
        "POST",
        "/api/v1/session",
        &[],
        Some(json!({ "token": TOKEN })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let set = a.header("set-cookie");
    assert!(set.starts_with("erpsync_session="), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert_eq!(a.body["role"], "admin");
    assert_eq!(a.body["actor"], "web:admin");
    assert_eq!(a.header("cache-control"), "no-store");
    assert!(
        !a.body.to_string().contains(TOKEN),
        "the token is not echoed"
    );
    // Behind a TLS-terminating proxy the cookie is Secure.
    let tls = send(
        &d.api.base,
        "POST",
        "/api/v1/session",
        &[("x-forwarded-proto", "https")],
        Some(json!({ "token": TOKEN })),
    )
    .await;
    assert!(tls.header("set-cookie").ends_with("; Secure"));

    let web = Web::login(&d, TOKEN).await;
    let me = web.call("GET", "/api/v1/session", None, false).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["csrf_token"], web.csrf.as_str());
    assert_eq!(
        web.call("GET", "/api/v1/status", None, false).await.status,
        200
    );

    // A change without (or with a wrong) CSRF token is refused and changes nothing.
    let before = snapshot(store);
    let body = json!({"customers": [key.to_string()], "reason": "web test", "actor": "mallory"});
    let no = web
        .call("POST", "/api/v1/exclusions", Some(body.clone()), false)
        .await;
    assert_eq!(no.status, 403, "{}", no.body);
    assert!(error_of(&no.body).contains("missing or wrong CSRF token"));
    let wrong = send(
        &web.base,
        "POST",
        "/api/v1/exclusions",
        &[("cookie", &web.cookie), ("x-csrf-token", "forged")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(snapshot(store), before);

    // With it, the change is audited as the console's actor, whatever the body says.
    let ok = web
        .call("POST", "/api/v1/exclusions", Some(body), true)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let audit = store.audit(Some(&key), 10).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "manual_exclude" && e.actor == "web:admin"));
    assert!(audit.iter().all(|e| e.actor != "mallory"));

    // Logout needs the CSRF token too, then the cookie is dead.
    let out = web.call("DELETE", "/api/v1/session", None, false).await;
    assert_eq!(out.status, 403);
    let out = web.call("DELETE", "/api/v1/session", None, true).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    let after = web.call("GET", "/api/v1/status", None, false).await;
    assert_eq!(after.status, 401);
    assert!(error_of(&after.body).contains("log in again"));
    assert_eq!(
        web.call("GET", "/api/v1/session", None, false).await.status,
        401
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_reads_everything_and_every_change_is_refused_before_it_runs() {
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = store.customers(None, None).next().unwrap().unwrap().key();
    let web = Web::login(&d, VIEWER_TOKEN).await;
    let bearer = format!("Bearer {VIEWER_TOKEN}");
    let before = snapshot(store);
    for (method, path, body) in admin_endpoints(&key.to_string(), &key.external_id) {
        let read = method == "GET"
            || path.ends_with("/rules/preview")
            || path.ends_with("/reinclusions/estimate");
        let by_bearer = send(
            &d.api.base,
            method,
            &path,
            &[("authorization", &bearer)],
            body.clone(),
        )
        .await;
        let by_session = web.call(method, &path, body.clone(), true).await;
        for a in [by_bearer, by_session] {
            if read {
                assert_ne!(a.status, 403, "{method} {path}: {}", a.body);
                assert_ne!(a.status, 401, "{method} {path}: {}", a.body);
            } else {
                assert_eq!(a.status, 403, "{method} {path}: {}", a.body);
                assert!(
                    error_of(&a.body).starts_with("the viewer role is read-only"),
                    "{method} {path}: {}",
                    a.body
                );
            }
        }
    }
    assert_eq!(snapshot(store), before);
    assert!(d.app.last_reload.lock().unwrap().is_none(), "no reload ran");
    let me = web.call("GET", "/api/v1/session", None, false).await;
    assert_eq!(me.body["role"], "viewer");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_address_and_bad_login_requests_say_why() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    let base = d.api.base.clone();
    for (body, status, needle) in [
        (json!({}), 422, "missing field `token`"),
        (json!({"token": TOKEN, "x": 1}), 422, "unknown field `x`"),
        (json!({"token": 5}), 422, "invalid type"),
    ] {
        let a = send(&base, "POST", "/api/v1/session", &[], Some(body.clone())).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert!(error_of(&a.body).contains(needle), "{body}: {}", a.body);
        assert!(a.header("set-cookie").is_empty());
    }
    let a = send(
        &base,
        "POST",
        "/api/v1/session?x=1",
        &[],
        Some(json!({"token": TOKEN})),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.header("set-cookie").is_empty());
    // Malformed requests did not count as failures; five wrong tokens do.
    for i in 0..5 {
        let a = send(
            &base,
            "POST",
            "/api/v1/session",
            &[],
            Some(json!({"token": format!("guess-{i}")})),
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(error_of(&a.body).starts_with("wrong token"));
    }
    for token in ["guess-6", TOKEN] {
        let a = send(
            &base,
            "POST",
            "/api/v1/session",
            &[],
            Some(json!({ "token": token })),
        )
        .await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(error_of(&a.body).contains("too many failed logins"));
        let wait: u64 = a.header("retry-after").parse().unwrap();
        assert!(wait > 0 && wait <= 900, "{wait}");
        assert!(a.header("set-cookie").is_empty());
    }
    // Bearer tokens keep working for scripts meanwhile.
    assert_eq!(d.call("GET", "/api/v1/status", None).await.0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_versioned_immutable_assets_and_a_strict_csp() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    let base = d.api.base.clone();
    let page = send(&base, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("cache-control"), "no-cache");
    let csp = page.header("content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let html = page.body.as_str().unwrap().to_string();
    let v = erpsync::http::console::version();
    assert!(html.contains(&format!("/assets/{v}/app.js")));
    for (file, ctype) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let a = send(&base, "GET", &format!("/assets/{v}/{file}"), &[], None).await;
        assert_eq!(a.status, 200, "{file}");
        assert_eq!(a.header("content-type"), ctype);
        assert_eq!(
            a.header("cache-control"),
            "public, max-age=31536000, immutable"
        );
    }
    let old = send(&base, "GET", "/assets/0000/app.js", &[], None).await;
    assert_eq!(old.status, 404);
    assert!(error_of(&old.body).contains("reload the page"));
    let none = send(&base, "GET", &format!("/assets/{v}/nope.js"), &[], None).await;
    assert_eq!(none.status, 404);
    // API answers carry the same headers.
    let api = send(&base, "GET", "/healthz", &[], None).await;
    assert_eq!(api.header("content-security-policy"), csp);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_exclusion_narrows_by_state_and_source_like_the_search() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    // Natively excluded customers matching "" are pinned by hand only when
    // asked for by source.
    let natives: Vec<_> = store
        .customers(None, None)
        .map(Result::unwrap)
        .filter(|c| c.classification.reason.starts_with("native:"))
        .collect();
    assert!(!natives.is_empty());
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions/mass",
            Some(json!({"condition": {"all": []}, "state": "excluded", "source": "native", "reason": "pin"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["impact"]["customers"], natives.len());
    assert_eq!(v["impact"]["newly_excluded"], 0);
    let before = snapshot(store);
    for (body, needle) in [
        (
            json!({"q": "a", "state": "gone", "reason": "x"}),
            "unknown variant `gone`",
        ),
        (
            json!({"q": "a", "source": "robot", "reason": "x"}),
            "unknown variant `robot`",
        ),
        (
            json!({"state": "included", "reason": "x"}),
            "needs `q` or `condition`",
        ),
    ] {
        let (st, v) = d
            .call("POST", "/api/v1/exclusions/mass", Some(body.clone()))
            .await;
        assert!((400..500).contains(&st), "{body}: {st} {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions/mass",
            Some(json!({"condition": {"all": []}, "state": "excluded", "source": "native", "reason": "pin", "confirm": natives.len()})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_ne!(snapshot(store), before);
    for c in &natives {
        let now = store.customer(&c.key()).unwrap().unwrap();
        assert_eq!(now.classification.reason, "manual", "{}", c.key());
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reinclusion_estimate_counts_customers_and_records_and_changes_nothing() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let included: Vec<_> = store
        .customers(None, None)
        .map(Result::unwrap)
        .filter(|c| !c.classification.excluded && !store.records_of(&c.key()).unwrap().is_empty())
        .take(3)
        .collect();
    let refs: Vec<String> = included.iter().map(|c| c.key().to_string()).collect();
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": refs[..2], "reason": "x"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let before = snapshot(store);
    let (st, e) = d
        .call(
            "POST",
            "/api/v1/reinclusions/estimate",
            Some(json!({"customers": refs})),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["customers"], 3);
    assert_eq!(e["newly_included"], 2);
    assert_eq!(e["already_included"], 1);
    let c = &e["connectors"][0];
    assert_eq!(c["connector"], "demo");
    assert!(
        c["basis"].as_str().unwrap().starts_with("a sample of"),
        "{e}"
    );
    assert!(e["records"].as_u64().unwrap() > 0, "{e}");
    assert!(e["requests"].as_u64().unwrap() >= 2, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.starts_with("re-includes 2 customer(s) and resyncs their full history: roughly"),
        "{msg}"
    );
    assert!(
        msg.ends_with("1 more are already included and only pinned"),
        "{msg}"
    );
    assert_eq!(snapshot(store), before, "an estimate changes nothing");

    for (body, status, needle) in [
        (json!({"customers": []}), 400, "`customers` is empty"),
        (
            json!({"customers": ["nocolon"]}),
            400,
            "CONNECTOR:EXTERNAL_ID",
        ),
        (
            json!({"customers": ["demo:NOPE"]}),
            404,
            "unknown customer demo:NOPE",
        ),
        (
            json!({"customers": ["erp:C1"]}),
            400,
            "unknown connector `erp`",
        ),
        (
            json!({"customers": ["demo:C1"], "reason": "x"}),
            422,
            "unknown field `reason`",
        ),
    ] {
        let (st, v) = d
            .call("POST", "/api/v1/reinclusions/estimate", Some(body.clone()))
            .await;
        assert_eq!(st, status, "{body}: {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    assert_eq!(snapshot(store), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_in_force_say_what_each_matches_now() {
    let rule = "[[rules]]\nid = \"big\"\ndescription = \"Names with Group\"\nwhen = { field = \"name\", op = \"contains\", value = \"group\" }\n";
    let d = InProcess::start(&small_demo(), "1h", rule).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let matching = store
        .customers(None, None)
        .map(Result::unwrap)
        .filter(|c| c.customer.name.to_lowercase().contains("group"))
        .count();
    let v = d.api.clone();
    let r = tokio::task::spawn_blocking(move || v.get("/api/v1/rules"))
        .await
        .unwrap();
    assert_eq!(r["rules"][0]["id"], "big");
    assert_eq!(r["rules"][0]["description"], "Names with Group");
    assert_eq!(r["rules"][0]["when"]["op"], "contains");
    assert_eq!(r["rules"][0]["matching"], matching);
    assert!(r["rules"][0]["excluding"].as_u64().unwrap() <= matching as u64);
    assert_eq!(r["total_customers"], 300);
    assert!(r["config_file"].as_str().unwrap().ends_with("erpsync.toml"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reminder_summary_adds_up_the_whole_list() {
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    let (st, s) = d.call("GET", "/api/v1/reminders/summary", None).await;
    assert_eq!(st, 200, "{s}");
    // The same list read page by page.
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/reminders/candidates?limit=37&cursor={c}"),
            None => "/api/v1/reminders/candidates?limit=37".into(),
        };
        let (_, p) = d.call("GET", &path, None).await;
        rows.extend(p["candidates"].as_array().unwrap().clone());
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let selected = rows.iter().filter(|r| r["selected"] == true).count();
    assert_eq!(s["listed"], rows.len());
    assert_eq!(s["selected"], selected);
    assert_eq!(s["unchecked"], rows.len() - selected);
    let mut usd = rust_decimal::Decimal::ZERO;
    for r in rows.iter().filter(|r| r["selected"] == true) {
        if let Some(a) = r["total_due"]["USD"].as_str() {
            usd += a.parse::<rust_decimal::Decimal>().unwrap();
        }
    }
    assert_eq!(s["selected_due"]["USD"].as_str().unwrap(), usd.to_string());
    let (st, f) = d
        .call("GET", "/api/v1/reminders/summary?selected=false", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(f["selected"], 0);
    assert_eq!(f["listed"], s["unchecked"]);
    for (q, needle) in [
        ("?cursor=demo:C1", "takes no `limit` or `cursor`"),
        ("?limit=5", "takes no `limit` or `cursor`"),
        ("?selected=maybe", "selected: `maybe` is not true or false"),
        ("?as_of=yesterday", "as_of: `yesterday` is not a date"),
    ] {
        let (st, v) = d
            .call("GET", &format!("/api/v1/reminders/summary{q}"), None)
            .await;
        assert_eq!(st, 400, "{q}: {v}");
        assert!(error_of(&v).contains(needle), "{q}: {v}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_takes_an_end_date_and_a_note_and_bad_terms_change_nothing() {
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = store
        .customers(None, None)
        .map(Result::unwrap)
        .find(|c| !c.classification.excluded)
        .unwrap()
        .key()
        .to_string();
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap();
    let before = snapshot(store);
    for (path, body, needle) in [
        (
            "stop",
            json!({"customer": key, "reason": "x", "until": "soon"}),
            "until: `soon` is not a date; use YYYY-MM-DD",
        ),
        (
            "stop",
            json!({"customer": key, "reason": "x", "until": yesterday.to_string()}),
            "is in the past",
        ),
        (
            "stop",
            json!({"customer": key, "reason": "x", "note": "n".repeat(1001)}),
            "note is longer than 1000",
        ),
        (
            "unstop",
            json!({"customer": key, "reason": "x", "until": today.to_string()}),
            "`until` and `note` are terms of a STOP",
        ),
    ] {
        let (st, v) = d
            .call(
                "POST",
                &format!("/api/v1/reminders/{path}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    assert_eq!(snapshot(store), before);
    let until = today + chrono::Duration::days(30);
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/reminders/stop",
            Some(json!({"customer": key, "reason": "payment plan", "until": until.to_string(), "note": "3 instalments"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains(&format!("until {until}")));
    let (_, stops) = d.call("GET", "/api/v1/reminders/stops", None).await;
    let s = &stops["items"][0];
    assert_eq!(s["customer"], key.as_str());
    assert_eq!(s["until"], until.to_string());
    assert_eq!(s["note"], "3 instalments");
    d.stop().await;
}
