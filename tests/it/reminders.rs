//! Reminder eligibility on the demo connector, through the real server: the
//! candidate list against an independent computation from the demo ERP's
//! data, every reason on a real customer, holds and STOP flags through the
//! admin API (audited, refused cleanly), config reload, the explain hook and
//! the CLI against the real binary.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use chrono::NaiveDate;
use erpsync::connectors::demo::DemoErp;
use erpsync::model::{CustomerKey, InvoiceStatus};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::{small_demo, InProcess, Setup};

/// The `[reminders]` section of config/demo.toml, so the tests run on the
/// scenarios and thresholds the demo ships with.
pub(crate) fn demo_reminders() -> String {
    let text = include_str!("../../config/demo.toml");
    let start = text
        .find("\n[reminders]")
        .expect("demo.toml has [reminders]");
    let section = &text[start..];
    for line in section.lines().filter(|l| l.starts_with('[')) {
        assert!(
            line == "[reminders]" || line == "[[reminders.scenarios]]",
            "the [reminders] section of demo.toml must come last; found {line}"
        );
    }
    section.to_string()
}

fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

/// A row reduced to what the oracle computes.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    scenario: Option<String>,
    total: BTreeMap<String, Decimal>,
    overdue: u64,
    oldest: Option<NaiveDate>,
    held: u64,
    balance: Decimal,
    selected: bool,
    reasons: Vec<String>,
}

fn row_of(v: &Value) -> Row {
    Row {
        scenario: v["scenario"].as_str().map(str::to_string),
        total: v["total_due"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, a)| (k.clone(), dec(a)))
            .collect(),
        overdue: v["overdue_invoices"].as_u64().unwrap(),
        oldest: v["oldest_due_date"].as_str().map(|d| d.parse().unwrap()),
        held: v["held_invoices"].as_u64().unwrap(),
        balance: dec(&v["balance"]),
        selected: v["selected"].as_bool().unwrap(),
        reasons: v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect(),
    }
}

/// What the list must say, computed from the demo ERP's own data, the
/// store's classification, the config in force and the flags the test set.
fn expected(
    ip: &InProcess,
    as_of: NaiveDate,
    stopped: &BTreeSet<String>,
    held_here: &BTreeSet<String>,
) -> BTreeMap<String, Row> {
    let cfg = ip.app.config();
    let r = &cfg.reminders;
    let mut per: BTreeMap<String, Vec<erpsync::model::Invoice>> = BTreeMap::new();
    for inv in ip.erp.invoices() {
        if inv.status == InvoiceStatus::Open
            && inv.amount_due > Decimal::ZERO
            && inv.due_date < as_of
        {
            per.entry(inv.customer_id.clone()).or_default().push(inv);
        }
    }
    let mut out = BTreeMap::new();
    for c in ip.erp.customers() {
        let key = CustomerKey::new("demo", &c.external_id);
        let sc = ip.app.store.customer(&key).unwrap().expect("synced");
        if sc.classification.excluded {
            continue;
        }
        let mut total: BTreeMap<String, Decimal> = BTreeMap::new();
        let (mut overdue, mut held) = (0, 0);
        let mut oldest: Option<NaiveDate> = None;
        for inv in per.get(&c.external_id).into_iter().flatten() {
            if inv.on_hold || held_here.contains(&inv.external_id) {
                held += 1;
                continue;
            }
            overdue += 1;
            *total.entry(inv.currency.clone()).or_default() += inv.amount_due;
            oldest = Some(oldest.map_or(inv.due_date, |o| o.min(inv.due_date)));
        }
        let creditor = c.balance < Decimal::ZERO;
        if overdue == 0 && !creditor {
            continue;
        }
        if creditor && r.creditors == erpsync::reminders::CreditorPolicy::Hidden {
            continue;
        }
        let scenario = r.scenario_for(&c).map(|s| s.id.clone());
        let mut reasons = Vec::new();
        if stopped.contains(&c.external_id) {
            reasons.push("stopped");
        }
        if scenario.is_none() {
            reasons.push("no_scenario");
        }
        if overdue > 0 {
            if total
                .iter()
                .all(|(cur, a)| r.minimum_total.for_currency(cur).is_some_and(|m| *a < m))
            {
                reasons.push("below_minimum");
            }
            if total
                .iter()
                .any(|(cur, a)| r.maximum_total.for_currency(cur).is_some_and(|m| *a > m))
            {
                reasons.push("above_maximum");
            }
        }
        if creditor {
            reasons.push("creditor");
        }
        out.insert(
            key.to_string(),
            Row {
                scenario,
                total,
                overdue,
                oldest,
                held,
                balance: c.balance,
                selected: reasons.is_empty(),
                reasons: reasons.into_iter().map(str::to_string).collect(),
            },
        );
    }
    out
}

/// Every row of the list, read in pages of `page` through the cursor.
async fn all_rows(ip: &InProcess, query: &str, page: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/reminders/candidates?limit={page}&{query}");
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let (st, v) = ip.call("GET", &path, None).await;
        assert_eq!(st, 200, "{path}: {v}");
        let items = v["candidates"].as_array().unwrap();
        assert!(items.len() <= page);
        assert_eq!(v["count"].as_u64().unwrap() as usize, items.len());
        rows.extend(items.iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return rows,
        }
    }
}

async fn listed(ip: &InProcess, as_of: NaiveDate) -> BTreeMap<String, Row> {
    all_rows(ip, &format!("as_of={as_of}"), 1000)
        .await
        .iter()
        .map(|v| (v["customer"].as_str().unwrap().to_string(), row_of(v)))
        .collect()
}

async fn start() -> InProcess {
    let ip = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    ip.wait_passes(1).await;
    ip
}

/// A listed customer with the given reasons exactly.
fn find<'a>(rows: &'a BTreeMap<String, Row>, reasons: &[&str]) -> Option<(&'a String, &'a Row)> {
    rows.iter().find(|(_, r)| r.reasons == reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_matches_the_demo_data_with_every_reason_on_a_real_customer() {
    let as_of = today();
    let ip = start().await;
    let none = BTreeSet::new();

    // Small pages through the cursor give exactly the one-page list.
    let paged: Vec<String> = all_rows(&ip, &format!("as_of={as_of}"), 7)
        .await
        .iter()
        .map(|v| v["customer"].as_str().unwrap().to_string())
        .collect();
    let rows = listed(&ip, as_of).await;
    assert_eq!(paged, rows.keys().cloned().collect::<Vec<_>>(), "paging");
    assert_eq!(rows, expected(&ip, as_of, &none, &none));

    // Each reason (but `stopped`, set below) occurs on a real demo customer.
    for reason in ["no_scenario", "below_minimum", "above_maximum", "creditor"] {
        assert!(
            rows.values().any(|r| r.reasons.iter().any(|x| x == reason)),
            "no demo customer with reason {reason}"
        );
    }
    assert!(find(&rows, &[]).is_some(), "nobody selected");
    assert!(
        rows.values()
            .any(|r| r.reasons == ["creditor"] && r.overdue == 0),
        "a creditor with nothing due is listed"
    );
    for scenario in ["key-accounts", "smb-standard"] {
        assert!(
            rows.values()
                .any(|r| r.selected && r.scenario.as_deref() == Some(scenario)),
            "nobody selected in {scenario}"
        );
    }
    assert!(rows.values().any(|r| r.held > 0), "no ERP-held invoices");

    // Excluded customers never appear, although some have overdue invoices upstream.
    let mut excluded_with_due = 0;
    for sc in ip.app.store.customers(Some("demo"), None) {
        let sc = sc.unwrap();
        if sc.classification.excluded {
            assert!(
                !rows.contains_key(&sc.key().to_string()),
                "{} listed",
                sc.key()
            );
            excluded_with_due += ip
                .erp
                .invoices()
                .iter()
                .filter(|i| {
                    i.customer_id == sc.customer.external_id
                        && i.status == InvoiceStatus::Open
                        && i.due_date < as_of
                })
                .count();
        }
    }
    assert!(
        excluded_with_due > 0,
        "the test needs excluded customers with overdue invoices"
    );

    // A STOP flag on a selected customer: the fifth reason.
    let (sel, _) = find(&rows, &[]).unwrap();
    let (st, v) = ip
        .call(
            "POST",
            "/api/v1/reminders/stop",
            Some(json!({"customer": sel, "reason": "asked for a payment plan", "actor": "alice"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let stopped: BTreeSet<String> = [sel.trim_start_matches("demo:").to_string()].into();
    let after = listed(&ip, as_of).await;
    assert_eq!(after[sel].reasons, ["stopped"]);
    assert_eq!(after, expected(&ip, as_of, &stopped, &none));

    // Filters.
    let sel_only = all_rows(&ip, &format!("as_of={as_of}&selected=true"), 1000).await;
    assert_eq!(
        sel_only.len(),
        after.values().filter(|r| r.selected).count()
    );
    assert!(sel_only.iter().all(|v| v["selected"] == true));
    let key_acc = all_rows(&ip, &format!("as_of={as_of}&scenario=key-accounts"), 1000).await;
    assert_eq!(
        key_acc.len(),
        after
            .values()
            .filter(|r| r.scenario.as_deref() == Some("key-accounts"))
            .count()
    );

    // The CSV export: the same customers, one row each, with the header.
    let (st, csv) = ip
        .call(
            "GET",
            &format!("/api/v1/reminders/candidates.csv?as_of={as_of}"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let csv = csv.as_str().unwrap().to_string();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "customer,name,email,scenario,selected,reasons,total_due,overdue_invoices,oldest_due_date,held_invoices,balance"
    );
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let recs: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(
        recs.iter().map(|r| r[0].to_string()).collect::<Vec<_>>(),
        after.keys().cloned().collect::<Vec<_>>()
    );
    let stopped_rec = recs.iter().find(|r| &r[0] == sel.as_str()).unwrap();
    assert_eq!(&stopped_rec[4], "false");
    assert_eq!(&stopped_rec[5], "stopped");
    let r = &after[sel];
    let (cur, amount) = r.total.iter().next().unwrap();
    assert_eq!(&stopped_rec[6], format!("{cur} {amount}"));

    // A customer that turns inactive upstream leaves the list at the next sync.
    let (gone, _) = find(&after, &[]).unwrap();
    assert!(ip
        .erp
        .set_customer_inactive(gone.trim_start_matches("demo:"), true));
    ip.sync_now().await;
    let now = listed(&ip, as_of).await;
    assert!(!now.contains_key(gone), "{gone} is excluded but listed");
    assert_eq!(now, expected(&ip, as_of, &stopped, &none));
    ip.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_change_the_totals_and_survive_upstream_updates() {
    let as_of = today();
    let ip = start().await;
    let none = BTreeSet::new();
    let rows = listed(&ip, as_of).await;
    // A selected customer with at least three overdue invoices (two get held).
    let (cust, row) = rows
        .iter()
        .find(|(_, r)| r.selected && r.overdue >= 3)
        .expect("a selected customer with three overdue invoices");
    let cust_id = cust.trim_start_matches("demo:").to_string();
    let inv = ip
        .erp
        .invoices()
        .into_iter()
        .find(|i| {
            i.customer_id == cust_id
                && i.status == InvoiceStatus::Open
                && !i.on_hold
                && i.amount_due > Decimal::ZERO
                && i.due_date < as_of
        })
        .unwrap();
    let (st, v) = ip
        .call(
            "POST",
            "/api/v1/reminders/hold",
            Some(json!({"invoice": format!("demo:{}", inv.external_id), "reason": "customer disputes the delivery", "actor": "bob"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["customer"], cust.as_str());
    assert_eq!(v["changed"], true);
    let held: BTreeSet<String> = [inv.external_id.clone()].into();
    let now = listed(&ip, as_of).await;
    assert_eq!(
        now[cust].total[&inv.currency],
        row.total[&inv.currency] - inv.amount_due
    );
    assert_eq!(now[cust].overdue, row.overdue - 1);
    assert_eq!(now[cust].held, row.held + 1);
    assert_eq!(now, expected(&ip, as_of, &none, &held));
    let audit = ip
        .app
        .store
        .audit(Some(&CustomerKey::new("demo", &cust_id)), 5)
        .unwrap();
    assert_eq!(audit[0].action, "hold");
    assert_eq!(audit[0].actor, "bob");
    assert_eq!(
        audit[0].reason,
        format!(
            "invoice {}: customer disputes the delivery",
            inv.external_id
        )
    );

    // The ERP edits the held invoice (a partial payment): polling brings the
    // new version, the hold stays.
    assert!(ip.erp.update_invoice(&inv.external_id, |i| {
        i.amount_due -= Decimal::ONE;
        i.number = format!("{}-R", i.number);
    }));
    ip.sync_now().await;
    let now = listed(&ip, as_of).await;
    assert_eq!(now[cust].held, row.held + 1, "the hold survived the update");
    assert_eq!(now, expected(&ip, as_of, &none, &held));

    // The ERP itself puts another invoice on hold (a dispute upstream).
    let other = ip
        .erp
        .invoices()
        .into_iter()
        .find(|i| {
            i.customer_id == cust_id
                && i.external_id != inv.external_id
                && i.status == InvoiceStatus::Open
                && !i.on_hold
                && i.amount_due > Decimal::ZERO
                && i.due_date < as_of
        })
        .unwrap();
    assert!(ip
        .erp
        .update_invoice(&other.external_id, |i| i.on_hold = true));
    ip.sync_now().await;
    let now = listed(&ip, as_of).await;
    assert_eq!(now[cust].held, row.held + 2);
    assert_eq!(now[cust].overdue, row.overdue - 2);
    assert_eq!(now, expected(&ip, as_of, &none, &held));

    // The explain view lists both held invoices and who holds them.
    let e =
        erpsync::reminders::explain(&ip.app, &CustomerKey::new("demo", &cust_id), as_of).unwrap();
    let ours = e
        .held_invoices
        .iter()
        .find(|h| h.invoice == format!("demo:{}", inv.external_id))
        .unwrap();
    assert_eq!(ours.hold.as_ref().unwrap().actor, "bob");
    assert!(e
        .held_invoices
        .iter()
        .any(|h| h.invoice == format!("demo:{}", other.external_id)
            && h.erp_on_hold
            && h.hold.is_none()));

    // Released: it counts again.
    let (st, v) = ip
        .call(
            "POST",
            "/api/v1/reminders/release",
            Some(json!({"invoice": format!("demo:{}", inv.external_id), "reason": "settled"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let now = listed(&ip, as_of).await;
    assert_eq!(now, expected(&ip, as_of, &none, &none));
    let audit = ip
        .app
        .store
        .audit(Some(&CustomerKey::new("demo", &cust_id)), 5)
        .unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].actor.as_str()),
        ("release", "api")
    );

    // The holds listing is empty again; an invoice held after a restart is
    // still held (holds are durable).
    let (_, v) = ip.call("GET", "/api/v1/reminders/holds", None).await;
    assert_eq!(v["items"], json!([]));
    let (st, _) = ip
        .call(
            "POST",
            "/api/v1/reminders/hold",
            Some(json!({"invoice": format!("demo:{}", inv.external_id), "reason": "again"})),
        )
        .await;
    assert_eq!(st, 200);
    let erp = std::sync::Arc::clone(&ip.erp);
    let dir = ip.stop().await;
    let ip = InProcess::start_with(erp, &small_demo(), "1h", &demo_reminders(), dir).await;
    ip.wait_passes(1).await;
    let (_, v) = ip.call("GET", "/api/v1/reminders/holds", None).await;
    assert_eq!(
        v["items"][0]["invoice"],
        format!("demo:{}", inv.external_id)
    );
    assert_eq!(listed(&ip, as_of).await, expected(&ip, as_of, &none, &held));
    ip.stop().await;
}

/// Bad requests: a 4xx JSON error naming the problem, and nothing changed
/// (no flag, no audit entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let as_of = today();
    let ip = start().await;
    let excluded = ip
        .app
        .store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .find(|c| c.classification.excluded)
        .unwrap();
    let excluded_key = excluded.key().to_string();
    let excluded_invoice = ip
        .erp
        .invoices()
        .into_iter()
        .find(|i| i.customer_id == excluded.customer.external_id)
        .expect("an invoice of an excluded customer upstream");
    let some_customer = listed(&ip, as_of).await.keys().next().unwrap().clone();
    let audit_before = ip.app.store.audit(None, 10_000).unwrap().len();

    let cases: Vec<(&str, String, Option<Value>, u16, String)> = vec![
        (
            "POST",
            "/api/v1/reminders/stop".into(),
            Some(json!({"customer": "demo:C99999", "reason": "x"})),
            404,
            "no customer demo:C99999 in the store".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/stop".into(),
            Some(json!({"customer": excluded_key, "reason": "x"})),
            409,
            format!("customer {excluded_key} is excluded"),
        ),
        (
            "POST",
            "/api/v1/reminders/stop".into(),
            Some(json!({"customer": "C00001", "reason": "x"})),
            400,
            "expected CONNECTOR:EXTERNAL_ID".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/stop".into(),
            Some(json!({"customer": some_customer})),
            400,
            "a reason is required".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/stop".into(),
            Some(json!({"customer": some_customer, "reason": "x", "color": "red"})),
            422,
            "unknown field `color`".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/unstop".into(),
            Some(json!({"customer": "demo:C99999", "reason": "x"})),
            404,
            "no customer demo:C99999".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/hold".into(),
            Some(json!({"invoice": "demo:INV999999", "reason": "x"})),
            404,
            "no invoice demo:INV999999 in the store".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/hold".into(),
            Some(
                json!({"invoice": format!("demo:{}", excluded_invoice.external_id), "reason": "x"}),
            ),
            404,
            "belongs to an excluded customer".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/hold".into(),
            Some(json!({"invoice": "INV000001", "reason": "x"})),
            400,
            "expected CONNECTOR:INVOICE_ID".into(),
        ),
        (
            "POST",
            "/api/v1/reminders/release".into(),
            Some(json!({"invoice": "demo:INV999999", "reason": "x"})),
            404,
            "no hold on it".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?selected=maybe".into(),
            None,
            400,
            "selected: `maybe` is not true or false".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?as_of=yesterday".into(),
            None,
            400,
            "as_of: `yesterday` is not a date".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?scenario=vip".into(),
            None,
            400,
            "unknown scenario `vip`; configured scenarios: key-accounts, smb-standard".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?limit=0".into(),
            None,
            400,
            "limit: `0` is not a number between 1 and 1000".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?cursor=nope".into(),
            None,
            400,
            "cursor: `nope` is not a customer reference".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?connector=sap".into(),
            None,
            400,
            "no connector `sap` is configured".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates?scenarios=x".into(),
            None,
            400,
            "unknown field `scenarios`".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/candidates.csv?limit=5".into(),
            None,
            400,
            "takes no `limit` or `cursor`".into(),
        ),
        (
            "GET",
            "/api/v1/reminders/customers/demo:C99999".into(),
            None,
            404,
            "no customer demo:C99999".into(),
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let (st, v) = ip.call(method, &path, body.clone()).await;
        assert_eq!(st, status, "{method} {path} {body:?}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error: {v}"));
        assert!(msg.contains(&needle), "{path}: `{needle}` not in `{msg}`");
    }
    assert_eq!(
        ip.app.store.audit(None, 10_000).unwrap().len(),
        audit_before
    );
    let (_, stops) = ip.call("GET", "/api/v1/reminders/stops", None).await;
    assert_eq!(stops["items"], json!([]));
    let (_, holds) = ip.call("GET", "/api/v1/reminders/holds", None).await;
    assert_eq!(holds["items"], json!([]));
    // Without the token: 401, like every admin route.
    let (st, _) = tokio::task::spawn_blocking({
        let api = ip.api.without_token();
        move || api.call("GET", "/api/v1/reminders/candidates", None)
    })
    .await
    .unwrap();
    assert_eq!(st, 401);

    // Stop, stop again (no-op), audited once with actor and reason; a
    // customer stopped then excluded upstream can still be unstopped.
    let body = json!({"customer": some_customer, "reason": "bankruptcy filed", "actor": "carol"});
    let (st, v) = ip
        .call("POST", "/api/v1/reminders/stop", Some(body.clone()))
        .await;
    assert_eq!((st, v["changed"].clone()), (200, json!(true)), "{v}");
    let (st, v) = ip.call("POST", "/api/v1/reminders/stop", Some(body)).await;
    assert_eq!((st, v["changed"].clone()), (200, json!(false)), "{v}");
    assert_eq!(
        ip.app.store.audit(None, 10_000).unwrap().len(),
        audit_before + 1
    );
    let key = CustomerKey::parse(&some_customer).unwrap();
    let a = &ip.app.store.audit(Some(&key), 1).unwrap()[0];
    assert_eq!(
        (a.action.as_str(), a.actor.as_str(), a.reason.as_str()),
        ("stop", "carol", "bankruptcy filed")
    );
    let (_, stops) = ip.call("GET", "/api/v1/reminders/stops", None).await;
    assert_eq!(stops["items"][0]["customer"], some_customer.as_str());
    assert_eq!(stops["items"][0]["actor"], "carol");
    assert!(ip.erp.set_customer_inactive(&key.external_id, true));
    ip.sync_now().await;
    assert!(!listed(&ip, as_of).await.contains_key(&some_customer));
    let (st, v) = ip
        .call(
            "POST",
            "/api/v1/reminders/unstop",
            Some(json!({"customer": some_customer, "reason": "cleanup"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["changed"], true);
    ip.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_and_scenarios_come_from_config_and_apply_after_reload() {
    let as_of = today();
    let ip = start().await;
    let none = BTreeSet::new();
    let before = listed(&ip, as_of).await;
    assert!(before
        .values()
        .any(|r| r.reasons.iter().any(|x| x == "no_scenario")));
    assert!(before.values().any(|r| r.selected));

    // New thresholds, one catch-all scenario and hidden creditors.
    let path = ip.dir.path().join("erpsync.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("[reminders]").unwrap();
    let edited = format!(
        "{}[reminders]\nminimum_total = \"5000\"\nmaximum_total = {{ USD = \"20000\" }}\ncreditors = \"hidden\"\n\n[[reminders.scenarios]]\nid = \"everyone\"\ndescription = \"all customers\"\nwhen = {{ all = [] }}\n",
        &text[..start]
    );
    std::fs::write(&path, edited).unwrap();
    // The daemon's own reload (what SIGHUP does) puts the new section in force.
    let (st, body) = ip.call("POST", "/api/v1/reload", None).await;
    assert_eq!(st, 200, "{body}");

    let after = listed(&ip, as_of).await;
    assert_eq!(after, expected(&ip, as_of, &none, &none));
    assert!(after
        .values()
        .all(|r| r.scenario.as_deref() == Some("everyone")));
    assert!(after.values().any(|r| r.selected));
    let total = |r: &Row| r.total.values().copied().sum::<Decimal>();
    // Selected before with 100 to 5000 due: now below the new minimum.
    let (k, _) = before
        .iter()
        .find(|(_, r)| {
            r.selected && total(r) >= Decimal::from(100) && total(r) < Decimal::from(5000)
        })
        .unwrap();
    assert_eq!(after[k].reasons, ["below_minimum"]);
    // Selected before with more than USD 20000 due: now above the new maximum.
    let (k, _) = before
        .iter()
        .find(|(_, r)| {
            r.selected
                && r.total
                    .get("USD")
                    .is_some_and(|a| *a > Decimal::from(20_000))
        })
        .unwrap();
    assert_eq!(after[k].reasons, ["above_maximum"]);
    // Without a scenario before, within the new limits: now selected.
    let (k, _) = before
        .iter()
        .find(|(_, r)| {
            r.reasons == ["no_scenario"]
                && total(r) >= Decimal::from(5000)
                && !r.total.contains_key("USD")
        })
        .unwrap();
    assert!(after[k].selected, "{k}: {:?}", after[k]);
    // Creditors are hidden now.
    let creditors: Vec<&String> = before
        .iter()
        .filter(|(_, r)| r.reasons.iter().any(|x| x == "creditor"))
        .map(|(k, _)| k)
        .collect();
    assert!(!creditors.is_empty());
    assert!(creditors.iter().all(|k| !after.contains_key(*k)));
    assert!(after.values().all(|r| !r
        .reasons
        .iter()
        .any(|x| x == "no_scenario" || x == "creditor")));
    // The scenario filter follows the new config too.
    let (st, v) = ip
        .call(
            "GET",
            "/api/v1/reminders/candidates?scenario=key-accounts",
            None,
        )
        .await;
    assert_eq!(st, 400);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("configured scenarios: everyone"));
    // A bad edit does not load, and the config in force stays.
    std::fs::write(
        &path,
        format!("{}[reminders]\nminimum_total = \"lots\"\n", &text[..start]),
    )
    .unwrap();
    let err = erpsync::config::load(&path, &erpsync::connectors::REGISTRY)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `reminders.minimum_total`: `lots` is not a decimal amount"),
        "{err}"
    );
    assert_eq!(listed(&ip, as_of).await, after);
    ip.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explain_hook_says_whether_and_why_a_customer_is_a_candidate() {
    let as_of = today();
    let ip = start().await;
    let rows = listed(&ip, as_of).await;
    let explain = |id: &str| {
        erpsync::reminders::explain(&ip.app, &CustomerKey::parse(id).unwrap(), as_of).unwrap()
    };
    let (sel, _) = find(&rows, &[]).unwrap();
    let e = explain(sel);
    assert!(e.listed && e.selected);
    assert!(
        e.summary.starts_with("selected for reminding: scenario `"),
        "{}",
        e.summary
    );

    let (below, r) = rows
        .iter()
        .find(|(_, r)| r.reasons == ["below_minimum"])
        .unwrap();
    let e = explain(below);
    assert!(e.listed && !e.selected);
    let (cur, amount) = r.total.iter().next().unwrap();
    assert!(
        e.summary.contains(&format!(
            "its total due ({cur} {amount}) is below the minimum ({cur} "
        )),
        "{}",
        e.summary
    );
    let (cred, _) = rows
        .iter()
        .find(|(_, r)| r.reasons.contains(&"creditor".to_string()))
        .unwrap();
    assert!(explain(cred)
        .summary
        .contains("it is a creditor (balance -"));

    let excluded = ip
        .app
        .store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .find(|c| c.classification.excluded)
        .unwrap();
    let e = explain(&excluded.key().to_string());
    assert!(!e.listed);
    assert!(e.summary.contains("excluded"), "{}", e.summary);

    let nothing = ip
        .app
        .store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .find(|c| !c.classification.excluded && !rows.contains_key(&c.key().to_string()))
        .unwrap();
    let e = explain(&nothing.key().to_string());
    assert!(!e.listed);
    assert!(
        e.summary.starts_with("not a reminder candidate: nothing"),
        "{}",
        e.summary
    );

    // The same over HTTP.
    let (st, v) = ip
        .call(
            "GET",
            &format!("/api/v1/reminders/customers/{sel}?as_of={as_of}"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["standing"], "selected");
    assert_eq!(v["candidate"]["customer"], sel.as_str());
    ip.stop().await;
}

fn cli(setup: &Setup, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(args)
        .arg("--config")
        .arg(setup.config_path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A selected candidate other than `not`.
fn page2_selected(d: &crate::support::Daemon, not: &str) -> String {
    let page = d
        .client
        .get("/api/v1/reminders/candidates?selected=true&limit=5");
    page["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer"].as_str().unwrap().to_string())
        .find(|c| c != not)
        .expect("a second selected candidate")
}

#[test]
fn the_cli_stops_holds_and_lists_candidates_from_the_running_daemon() {
    let setup = Setup::demo(&small_demo(), "1h", &demo_reminders());
    let d = setup.start();
    d.wait_passes(1);
    let page = d
        .client
        .get("/api/v1/reminders/candidates?selected=true&limit=1");
    let sel = page["candidates"][0]["customer"]
        .as_str()
        .unwrap()
        .to_string();

    let (ok, out, err) = cli(
        &setup,
        &[
            "stop",
            &sel,
            "--reason",
            "payment plan agreed",
            "--actor",
            "dave",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{sel} is stopped")), "{out}");

    // A STOP with an end date and a note; unstop refuses those terms.
    let other = page2_selected(&d, &sel);
    let until = (chrono::Utc::now().date_naive() + chrono::Duration::days(10)).to_string();
    let (ok, out, err) = cli(
        &setup,
        &[
            "stop",
            &other,
            "--reason",
            "plan",
            "--until",
            &until,
            "--note",
            "3 instalments",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{other} is stopped until {until}")),
        "{out}"
    );
    let (ok, out, _) = cli(&setup, &["reminders", "stops"]);
    assert!(ok);
    let line = out.lines().find(|l| l.contains(&other)).unwrap();
    assert!(
        line.contains(&until) && line.contains("3 instalments"),
        "{line}"
    );
    let (ok, _, err) = cli(
        &setup,
        &["unstop", &other, "--reason", "x", "--until", &until],
    );
    assert!(!ok);
    assert!(
        err.contains("--until and --note are terms of a STOP"),
        "{err}"
    );

    let (ok, out, err) = cli(&setup, &["reminders", "candidates"]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("SEL  CUSTOMER"), "{header}");
    let line = out
        .lines()
        .find(|l| l.contains(&sel))
        .unwrap_or_else(|| panic!("{sel} not in\n{out}"));
    assert!(
        line.starts_with("[ ]") && line.trim_end().ends_with("stopped"),
        "{line}"
    );
    assert!(out.lines().any(|l| l.starts_with("[x]")), "no selected row");
    assert!(out.lines().any(|l| l.contains("below_minimum")), "{out}");
    let listed_n = out.lines().filter(|l| l.starts_with('[')).count();
    assert!(out
        .lines()
        .last()
        .unwrap()
        .starts_with(&format!("{listed_n} listed as of ")));

    let (ok, out, err) = cli(
        &setup,
        &[
            "reminders",
            "candidates",
            "--scenario",
            "smb-standard",
            "--csv",
        ],
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("customer,name,email,scenario,selected"));
    assert!(lines.all(|l| l.contains(",smb-standard,")), "{out}");

    let (ok, out, _) = cli(&setup, &["reminders", "show", &sel]);
    assert!(ok);
    assert!(
        out.contains("listed but not selected: stopped by dave at"),
        "{out}"
    );

    // Hold one of its invoices, list the holds, release it.
    let inv = DemoErp::new(&small_demo())
        .invoices()
        .into_iter()
        .find(|i| format!("demo:{}", i.customer_id) == sel)
        .unwrap();
    let inv_ref = format!("demo:{}", inv.external_id);
    let (ok, out, err) = cli(&setup, &["hold", &inv_ref, "--reason", "wrong address"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{inv_ref} is on hold")), "{out}");
    let (ok, out, _) = cli(&setup, &["reminders", "holds"]);
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with(&inv_ref))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&sel) && line.ends_with("wrong address"),
        "{line}"
    );
    let (ok, out, err) = cli(&setup, &["release", &inv_ref, "--reason", "fixed"]);
    assert!(ok, "{err}");
    assert!(out.contains("released"), "{out}");
    assert_eq!(d.client.get("/api/v1/reminders/holds")["items"], json!([]));

    let (ok, out, _) = cli(&setup, &["reminders", "stops"]);
    assert!(ok);
    assert!(
        out.contains(&sel) && out.contains("payment plan agreed"),
        "{out}"
    );

    let (ok, out, err) = cli(&setup, &["unstop", &sel, "--reason", "plan cancelled"]);
    assert!(ok, "{err}");
    assert!(out.contains("no longer stopped"), "{out}");

    // Errors: non-zero exit and the daemon's message.
    let (ok, _, err) = cli(&setup, &["stop", "demo:C99999", "--reason", "x"]);
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no customer demo:C99999"),
        "{err}"
    );
    let (ok, _, err) = cli(&setup, &["hold", "demo:INV999999", "--reason", "x"]);
    assert!(!ok);
    assert!(err.contains("no invoice demo:INV999999"), "{err}");
    let (ok, _, err) = cli(&setup, &["reminders", "candidates", "--scenario", "vip"]);
    assert!(!ok);
    assert!(err.contains("unknown scenario `vip`"), "{err}");

    assert!(d.terminate().0.success());
}
