//! Exclusion end to end: manual exclude / re-include, rules added and removed
//! by reload, the ratio guard, manual re-includes that stick through sync,
//! mass exclusion with confirm, exclusion before a first sync, the token
//! check on every admin endpoint, bad requests, and the CLI with SIGHUP on the
//! real binary. Every test asserts on the stored data, not only on answers.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use erpsync::model::{
    CustomerKey, Invoice, InvoiceStatus, ManualAction, Record, Transaction, TransactionKind,
};
use erpsync::resync::queue;
use erpsync::store::{Store, StoredCustomer};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::{admin_endpoints, small_demo, InProcess, Setup, TOKEN};

const TEST_ACCOUNTS_RULE: &str = r#"
[[rules]]
id = "test-accounts"
description = "Test and sandbox accounts"
when = { any = [
  { field = "name", op = "contains", value = "test" },
  { field = "email", op = "ends_with", value = "@example.com" },
] }
"#;

/// Everything a refused request must leave as it was: customers with their
/// classification, records, parked records, manual decisions, the audit
/// trail and resync jobs.
pub(crate) fn snapshot(store: &Store) -> String {
    let customers: Vec<String> = store
        .customers(None, None)
        .map(|c| serde_json::to_string(&c.unwrap()).unwrap())
        .collect();
    let records: Vec<String> = store
        .records(None)
        .map(|r| format!("{:?}", r.unwrap()))
        .collect();
    let decisions: Vec<String> = store
        .manual_decisions()
        .map(|d| format!("{:?}", d.unwrap()))
        .collect();
    let audit = store.audit(None, 1_000_000).unwrap().len();
    let jobs = queue::jobs(store).unwrap();
    let parked = store.parked_count("demo").unwrap();
    format!(
        "{} customers {customers:?}\n{} records {records:?}\n{decisions:?}\naudit={audit}\nparked={parked}\njobs={jobs:?}",
        customers.len(),
        records.len()
    )
}

fn counts(store: &Store, key: &CustomerKey) -> (u64, u64) {
    let (mut i, mut t) = (0, 0);
    for r in store.records_of(key).unwrap() {
        match r {
            Record::Invoice(_) => i += 1,
            Record::Transaction(_) => t += 1,
        }
    }
    (i, t)
}

/// Included customers with at least one invoice and one transaction.
pub(crate) fn included_with_records(store: &Store, n: usize) -> Vec<StoredCustomer> {
    let out: Vec<StoredCustomer> = store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .filter(|c| {
            let (i, t) = counts(store, &c.key());
            !c.classification.excluded && i > 0 && t > 0
        })
        .take(n)
        .collect();
    assert_eq!(out.len(), n, "the demo has enough customers with records");
    out
}

fn stored(store: &Store, key: &CustomerKey) -> StoredCustomer {
    store.customer(key).unwrap().expect("customer stored")
}

fn invoice_for(customer: &str) -> Invoice {
    let day = chrono::Utc::now().date_naive();
    Invoice {
        external_id: String::new(),
        number: "LATE-1".into(),
        customer_id: customer.into(),
        issue_date: day,
        due_date: day + chrono::Days::new(30),
        currency: "EUR".into(),
        total: Decimal::new(12345, 2),
        amount_due: Decimal::new(12345, 2),
        status: InvoiceStatus::Open,
        on_hold: false,
        last_modified: chrono::Utc::now(),
    }
}

fn payment_for(customer: &str) -> Transaction {
    Transaction {
        external_id: String::new(),
        kind: TransactionKind::Payment,
        customer_id: customer.into(),
        date: chrono::Utc::now().date_naive(),
        amount: Decimal::new(1000, 2),
        currency: "EUR".into(),
        last_modified: chrono::Utc::now(),
    }
}

pub(crate) fn config_path(d: &InProcess) -> std::path::PathBuf {
    d.dir.path().join("erpsync.toml")
}

pub(crate) fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_exclusion_keeps_the_record_purges_its_data_and_drops_later_records() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let sc = included_with_records(store, 1).remove(0);
    let key = sc.key();
    let (inv, txn) = counts(store, &key);

    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": [key.to_string()], "reason": "in liquidation", "actor": "alice"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["changed"], 1);
    assert_eq!(v["purged_invoices"], inv);
    assert_eq!(v["purged_transactions"], txn);
    assert_eq!(v["customers"][0]["effect"], "excluded");

    // Stored: the record stays, classified manual, with no data.
    let now = stored(store, &key);
    assert_eq!(now.customer, sc.customer, "the customer record is kept");
    assert!(now.classification.excluded);
    assert_eq!(now.classification.reason, "manual");
    assert_eq!(counts(store, &key), (0, 0));
    let dec = store.manual_decision(&key).unwrap().unwrap();
    assert_eq!(
        (dec.action, dec.actor.as_str(), dec.reason.as_str()),
        (ManualAction::Exclude, "alice", "in liquidation")
    );

    // Search finds it by name (any case) and by id, marked excluded.
    let needle = sc.customer.name.to_uppercase();
    for q in [needle.as_str(), key.external_id.as_str()] {
        let (st, v) = d
            .call(
                "GET",
                &format!("/api/v1/customers?q={}&limit=1000", urlencode(q)),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let hit = v["customers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["customer"] == key.to_string())
            .unwrap_or_else(|| panic!("{q} not found: {v}"));
        assert_eq!(hit["excluded"], true);
        assert_eq!(hit["decision"]["actor"], "alice");
    }
    let (_, v) = d.call("GET", "/api/v1/excluded?source=manual", None).await;
    assert_eq!(v["excluded"][0]["customer"], key.to_string(), "{v}");
    assert_eq!(v["excluded"][0]["excluded_by"], "alice");

    // The CSV export has its row.
    let csv_text = get_text(&d, "/api/v1/excluded.csv").await;
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        r.headers().unwrap(),
        vec![
            "connector",
            "external_id",
            "name",
            "email",
            "source",
            "reason",
            "excluded_at",
            "excluded_by"
        ]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let excluded_total = store.classification_counts(None).unwrap().excluded;
    assert_eq!(
        rows.len() as u64,
        excluded_total,
        "one row per excluded customer"
    );
    let row = rows.iter().find(|r| r[1] == key.external_id).unwrap();
    assert_eq!(&row[0], "demo");
    assert_eq!(&row[2], sc.customer.name);
    assert_eq!(&row[4], "manual");
    assert_eq!(&row[5], "manual: in liquidation");
    assert_eq!(&row[7], "alice");

    // Later records upstream are dropped at ingest, and counted.
    let dropped_i = store.counter("demo", "dropped_invoices").unwrap();
    let dropped_t = store.counter("demo", "dropped_transactions").unwrap();
    d.erp.add_invoice(invoice_for(&key.external_id));
    d.erp.add_transaction(payment_for(&key.external_id));
    d.sync_now().await;
    assert_eq!(counts(store, &key), (0, 0));
    assert_eq!(
        store.counter("demo", "dropped_invoices").unwrap(),
        dropped_i + 1
    );
    assert_eq!(
        store.counter("demo", "dropped_transactions").unwrap(),
        dropped_t + 1
    );

    // The audit trail has the decision and the transition, newest first.
    let (_, v) = d
        .call("GET", &format!("/api/v1/audit?customer={key}"), None)
        .await;
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["classified", "manual_exclude"], "{v}");
    assert_eq!(v["entries"][0]["to"]["reason"], "manual");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinclusion_records_the_decision_and_queues_a_resync() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = included_with_records(store, 1).remove(0).key();
    let body = json!({"customers": [key.to_string()], "reason": "mistake"});
    let (st, _) = d.call("POST", "/api/v1/exclusions", Some(body)).await;
    assert_eq!(st, 200);
    assert!(!queue::is_queued(store, "demo", &key.external_id).unwrap());

    let (st, v) = d
        .call(
            "POST",
            "/api/v1/reinclusions",
            Some(json!({"customers": [key.to_string()], "reason": "excluded by mistake", "actor": "bob"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["changed"].as_u64(), v["newly_included"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["queued_for_resync"], 1);
    let job_id = v["resync_jobs"][0].as_u64().expect("a resync job");

    let sc = stored(store, &key);
    assert!(!sc.classification.excluded);
    assert_eq!(sc.classification.reason, "manual");
    let dec = store.manual_decision(&key).unwrap().unwrap();
    assert_eq!(
        (dec.action, dec.actor.as_str(), dec.reason.as_str()),
        (ManualAction::Include, "bob", "excluded by mistake")
    );
    let job = queue::job(store, job_id).unwrap().expect("job stored");
    assert_eq!((job.connector.as_str(), job.total), ("demo", 1));
    assert!(job.reason.contains("bob"), "{}", job.reason);
    let s = d.api.clone();
    let status = tokio::task::spawn_blocking(move || s.get("/status"))
        .await
        .unwrap();
    let r = &status["resync"];
    let jobs: u64 = ["jobs_queued", "jobs_running", "jobs_done", "jobs_failed"]
        .iter()
        .map(|k| r[k].as_u64().unwrap())
        .sum();
    assert!(jobs >= 1, "{status:#}");
    let audit = store.audit(Some(&key), 1).unwrap();
    assert_eq!(audit[0].action, "classified");
    assert_eq!(audit[0].actor, "bob");

    // Clearing the decision hands it back to the automatic sources: nothing
    // excludes it, so it stays included.
    let (st, v) = d
        .call(
            "DELETE",
            &format!(
                "/api/v1/customers/demo/{}/decision?actor=carol",
                key.external_id
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["previous"]["action"], "include");
    assert!(store.manual_decision(&key).unwrap().is_none());
    assert_eq!(stored(store, &key).classification.reason, "included");
    d.stop().await;
}

pub(crate) fn rule_toml(id: &str, ids: &[String]) -> String {
    let list: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "\n[[rules]]\nid = \"{id}\"\ndescription = \"Customers on the stop list\"\nwhen = {{ field = \"external_id\", op = \"in\", value = [{}] }}\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_added_by_reload_purges_matching_customers_and_removing_it_reincludes_them() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let picked = included_with_records(store, 5);
    let ids: Vec<String> = picked
        .iter()
        .map(|c| c.customer.external_id.clone())
        .collect();
    let records: BTreeMap<String, (u64, u64)> = picked
        .iter()
        .map(|c| (c.customer.external_id.clone(), counts(store, &c.key())))
        .collect();
    let (inv, txn) = records
        .values()
        .fold((0, 0), |(a, b), (i, t)| (a + i, b + t));
    let original = std::fs::read_to_string(config_path(&d)).unwrap();

    // Preview first: the impact, and nothing changes.
    let before = snapshot(store);
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/rules/preview",
            Some(
                json!({"rule": {"id": "stop-list", "description": "Customers on the stop list",
                "when": {"field": "external_id", "op": "in", "value": ids}}}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["impact"]["would_exclude"], 5);
    assert_eq!(v["impact"]["invoices_to_purge"], inv);
    assert_eq!(v["impact"]["transactions_to_purge"], txn);
    assert_eq!(v["would_be_refused"], false);
    let listed: Vec<&str> = v["impact"]["newly_excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer"].as_str().unwrap().trim_start_matches("demo:"))
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(snapshot(store), before, "preview changes nothing");

    // Reload with the rule: the five are excluded and purged.
    std::fs::write(
        config_path(&d),
        format!("{original}{}", rule_toml("stop-list", &ids)),
    )
    .unwrap();
    let (st, v) = d.call("POST", "/api/v1/reload", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["applied"]["newly_excluded"], 5, "{v}");
    assert_eq!(v["applied"]["purged_invoices"], inv);
    assert_eq!(v["applied"]["purged_transactions"], txn);
    assert_eq!(d.app.rules().rules().len(), 1);
    for c in &picked {
        let now = stored(store, &c.key());
        assert_eq!(now.classification.reason, "rule:stop-list");
        assert_eq!(counts(store, &c.key()), (0, 0));
        let a = &store.audit(Some(&c.key()), 1).unwrap()[0];
        assert_eq!(
            (a.actor.as_str(), a.action.as_str()),
            ("reload", "classified")
        );
    }
    let s = d.api.clone();
    let status = tokio::task::spawn_blocking(move || s.get("/status"))
        .await
        .unwrap();
    assert_eq!(status["last_reload"]["applied"], true, "{status:#}");
    assert_eq!(status["rules"], 1);
    assert_eq!(
        status["customers"]["excluded_by_reason"]["rule:stop-list"],
        5
    );

    // Explain names the rule.
    let (_, e) = d
        .call(
            "GET",
            &format!("/api/v1/customers/demo/{}/explain", ids[0]),
            None,
        )
        .await;
    assert_eq!(e["rules"][0]["id"], "stop-list");
    assert_eq!(e["rules"][0]["decisive"], true);
    assert!(
        e["summary"]
            .as_str()
            .unwrap()
            .starts_with("excluded by rule `stop-list`"),
        "{e}"
    );

    // Removing the rule re-includes them and queues their resync.
    std::fs::write(config_path(&d), &original).unwrap();
    let (st, v) = d.call("POST", "/api/v1/reload", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["applied"]["newly_included"], 5, "{v}");
    assert_eq!(v["applied"]["queued_for_resync"], 5);
    let jobs: Vec<u64> = v["applied"]["resync_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_u64().unwrap())
        .collect();
    let queued: u64 = jobs
        .iter()
        .map(|id| queue::job(store, *id).unwrap().unwrap().total)
        .sum();
    assert_eq!(queued, 5, "every re-included customer is in a resync job");
    for c in &picked {
        let now = stored(store, &c.key());
        assert_eq!(now.classification.reason, "included");
        let a = &store.audit(Some(&c.key()), 1).unwrap()[0];
        assert_eq!(a.to.as_ref().unwrap().reason, "included");
    }
    assert_eq!(d.app.rules().rules().len(), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_exclude_too_many_or_is_invalid_is_refused_and_changes_nothing() {
    let d = InProcess::start(&small_demo(), "1h", TEST_ACCOUNTS_RULE).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let original = std::fs::read_to_string(config_path(&d)).unwrap();
    let before = snapshot(store);

    let broad = format!(
        "{original}\n[[rules]]\nid = \"everyone\"\ndescription = \"oops\"\nwhen = {{ field = \"name\", op = \"is_not_empty\" }}\n"
    );
    std::fs::write(config_path(&d), broad).unwrap();
    let (st, v) = d.call("POST", "/api/v1/reload", None).await;
    assert_eq!(st, 409, "{}", v["message"]);
    let err = error_of(&v);
    assert!(
        err.contains("reload refused, the old rules stay in force"),
        "{err}"
    );
    assert!(
        err.contains("more than max_new_exclusion_ratio 20.0%"),
        "{err}"
    );
    assert!(v["impact"]["would_exclude"].as_u64().unwrap() > 60, "{v}");
    assert_eq!(snapshot(store), before);
    let rules: Vec<String> = d.app.rules().rules().iter().map(|r| r.id.clone()).collect();
    assert_eq!(rules, ["test-accounts"], "old rules stay");
    let s = d.api.clone();
    let status = tokio::task::spawn_blocking(move || s.get("/status"))
        .await
        .unwrap();
    assert_eq!(status["last_reload"]["applied"], false);
    assert!(
        status["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains("max_new_exclusion_ratio"),
        "{status:#}"
    );

    // The same preview says it would be refused.
    let (_, p) = d
        .call(
            "POST",
            "/api/v1/rules/preview",
            Some(json!({"rule": {"id": "everyone", "description": "", "when": {"field": "name", "op": "is_not_empty"}}})),
        )
        .await;
    assert_eq!(p["would_be_refused"], true, "{p}");

    // An invalid rule: 422 naming the file, line, rule and problem.
    let bad = format!(
        "{original}\n[[rules]]\nid = \"bad\"\nwhen = {{ field = \"name\", op = \"resembles\", value = \"x\" }}\n"
    );
    let line = bad.lines().count();
    std::fs::write(config_path(&d), bad).unwrap();
    let (st, v) = d.call("POST", "/api/v1/reload", None).await;
    assert_eq!(st, 422, "{v}");
    let err = error_of(&v);
    for needle in [
        format!("erpsync.toml:{line}"),
        "rule `bad`".to_string(),
        "unknown operator `resembles`".to_string(),
    ] {
        assert!(err.contains(&needle), "`{needle}` not in {err}");
    }
    assert_eq!(snapshot(store), before);
    assert_eq!(d.app.rules().rules().len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_changed_while_stopped_apply_at_the_next_start_unless_too_broad() {
    let opts = small_demo();
    let d = InProcess::start(&opts, "1h", "").await;
    d.wait_passes(1).await;
    let picked = included_with_records(&d.app.store, 4);
    let ids: Vec<String> = picked
        .iter()
        .map(|c| c.customer.external_id.clone())
        .collect();
    let erp = std::sync::Arc::clone(&d.erp);
    let dir = d.stop().await;

    // Restarted with a new rule: applied to stored customers before syncing.
    let rule = rule_toml("stop-list", &ids);
    let d = InProcess::start_with(std::sync::Arc::clone(&erp), &opts, "1h", &rule, dir).await;
    d.wait_passes(1).await;
    let last = d
        .app
        .last_reload
        .lock()
        .unwrap()
        .clone()
        .expect("start-up reload");
    assert!(last.applied, "{last:?}");
    assert!(
        last.message.contains("changed while erpsync was stopped"),
        "{last:?}"
    );
    assert!(last.message.contains("4 newly excluded"), "{last:?}");
    for c in &picked {
        let now = stored(&d.app.store, &c.key());
        assert_eq!(now.classification.reason, "rule:stop-list");
        assert_eq!(counts(&d.app.store, &c.key()), (0, 0));
        let a = &d.app.store.audit(Some(&c.key()), 1).unwrap()[0];
        assert_eq!(a.actor, "startup");
    }
    let before = snapshot(&d.app.store);
    let dir = d.stop().await;

    // Restarted with a rule that excludes everyone: refused, the rules last
    // applied stay in force and nothing changes.
    let broad = format!(
        "{rule}\n[[rules]]\nid = \"everyone\"\ndescription = \"\"\nwhen = {{ field = \"name\", op = \"is_not_empty\" }}\n"
    );
    let d = InProcess::start_with(erp, &opts, "1h", &broad, dir).await;
    d.wait_passes(1).await;
    let last = d
        .app
        .last_reload
        .lock()
        .unwrap()
        .clone()
        .expect("start-up reload");
    assert!(!last.applied, "{last:?}");
    assert!(last.message.contains("max_new_exclusion_ratio"), "{last:?}");
    let rules: Vec<String> = d.app.rules().rules().iter().map(|r| r.id.clone()).collect();
    assert_eq!(rules, ["stop-list"]);
    assert_eq!(snapshot(&d.app.store), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_reinclusion_survives_the_next_sync_although_a_rule_matches() {
    let d = InProcess::start(&small_demo(), "1h", TEST_ACCOUNTS_RULE).await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let sc = store
        .customers(Some("demo"), None)
        .map(Result::unwrap)
        .find(|c| {
            c.classification.reason == "rule:test-accounts"
                && !c.customer.inactive
                && !c.customer.intercompany
        })
        .expect("a test account");
    let key = sc.key();
    let (st, v) = d
        .call(
            "POST",
            "/api/v1/reinclusions",
            Some(json!({"customers": [key.to_string()], "reason": "real customer despite the name", "actor": "dana"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["newly_included"], 1);

    // Upstream edits it (still matching the rule) and bills it: the next
    // sync keeps it included and stores the invoice.
    d.erp
        .update_customer(&key.external_id, |c| c.name.push_str(" (renamed)"));
    let invoice = d.erp.add_invoice(invoice_for(&key.external_id));
    d.sync_now().await;
    let now = stored(store, &key);
    assert!(
        now.customer.name.ends_with("(renamed)"),
        "the sync saw the edit"
    );
    assert!(!now.classification.excluded);
    assert_eq!(
        now.classification.reason,
        "manual:overrides rule:test-accounts"
    );
    assert!(store
        .records_of(&key)
        .unwrap()
        .iter()
        .any(|r| r.external_id() == invoice.external_id));
    let s = d.api.clone();
    let status = tokio::task::spawn_blocking(move || s.get("/status"))
        .await
        .unwrap();
    assert_eq!(status["customers"]["manual_overrides"], 1, "{status:#}");

    // Explain shows both: the rule, overridden, and the manual decision.
    let (st, e) = d
        .call(
            "GET",
            &format!("/api/v1/customers/demo/{}/explain", key.external_id),
            None,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["rules"][0]["id"], "test-accounts");
    assert_eq!(e["rules"][0]["overridden"], true);
    assert_eq!(e["rules"][0]["decisive"], false);
    assert_eq!(e["manual"]["action"], "include");
    assert_eq!(e["manual"]["actor"], "dana");
    assert_eq!(e["automatic"]["reason"], "rule:test-accounts");
    // It also says whether the customer is a reminder candidate, and why.
    assert!(e["reminder"]["listed"].is_boolean(), "{e}");
    assert!(e["reminder"]["selected"].is_boolean(), "{e}");
    assert!(
        !e["reminder"]["summary"].as_str().unwrap().is_empty(),
        "{e}"
    );
    assert!(
        e["summary"]
            .as_str()
            .unwrap()
            .contains("overrides rule:test-accounts"),
        "{e}"
    );
    let actions: Vec<&str> = e["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["classified", "manual_include", "classified"],
        "{e}"
    );

    // The customer detail has its invoices again.
    let (_, c) = d
        .call(
            "GET",
            &format!("/api/v1/customers/demo/{}", key.external_id),
            None,
        )
        .await;
    assert!(c["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["external_id"] == invoice.external_id.as_str()));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_exclusion_answers_with_its_impact_first_and_applies_only_when_confirmed() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    // What "test" selects, computed here from the store.
    let selected: Vec<StoredCustomer> = store
        .customers(None, None)
        .map(Result::unwrap)
        .filter(|c| {
            let c2 = &c.customer;
            [Some(&c2.name), c2.email.as_ref(), Some(&c2.external_id)]
                .into_iter()
                .flatten()
                .any(|f| f.to_lowercase().contains("test"))
        })
        .collect();
    assert!(selected.len() >= 3, "the demo has test accounts");
    let (mut inv, mut txn) = (0, 0);
    for c in selected.iter().filter(|c| !c.classification.excluded) {
        let (i, t) = counts(store, &c.key());
        inv += i;
        txn += t;
    }

    let before = snapshot(store);
    let ask = json!({"q": "TeSt", "reason": "sandbox accounts", "actor": "erin"});
    let (st, v) = d
        .call("POST", "/api/v1/exclusions/mass", Some(ask.clone()))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["applied"], false);
    assert_eq!(v["impact"]["customers"], selected.len());
    assert_eq!(v["impact"]["invoices"], inv);
    assert_eq!(v["impact"]["transactions"], txn);
    assert_eq!(v["confirm_with"], selected.len());
    assert_eq!(snapshot(store), before, "the impact answer changes nothing");

    let mut wrong = ask.clone();
    wrong["confirm"] = json!(selected.len() + 1);
    let (st, v) = d.call("POST", "/api/v1/exclusions/mass", Some(wrong)).await;
    assert_eq!(st, 409, "{v}");
    assert!(
        error_of(&v).contains(&format!("now matches {} customers", selected.len())),
        "{v}"
    );
    assert_eq!(snapshot(store), before);

    let mut confirm = ask.clone();
    confirm["confirm"] = json!(selected.len());
    let (st, v) = d
        .call("POST", "/api/v1/exclusions/mass", Some(confirm))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["applied"], true);
    assert_eq!(v["outcome"]["changed"], selected.len());
    assert_eq!(v["outcome"]["purged_invoices"], inv);
    assert_eq!(v["outcome"]["purged_transactions"], txn);
    for c in &selected {
        let now = stored(store, &c.key());
        assert_eq!(now.classification.reason, "manual");
        assert_eq!(counts(store, &c.key()), (0, 0));
        let dec = store.manual_decision(&c.key()).unwrap().unwrap();
        assert_eq!(
            (dec.actor.as_str(), dec.reason.as_str()),
            ("erin", "sandbox accounts")
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_excluded_before_its_first_sync_never_has_data_stored() {
    let opts = small_demo();
    let d = InProcess::start(&opts, "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    // A new customer appears upstream (the demo adds some as it trickles).
    let known: std::collections::BTreeSet<String> = d
        .erp
        .customers()
        .into_iter()
        .map(|c| c.external_id)
        .collect();
    let mut fresh = None;
    for _ in 0..200 {
        d.erp.trickle(5);
        fresh = d
            .erp
            .customers()
            .into_iter()
            .find(|c| !known.contains(&c.external_id) && !c.inactive && !c.intercompany);
        if fresh.is_some() {
            break;
        }
    }
    let fresh = fresh.expect("the demo ERP added a customer");
    let key = CustomerKey::new("demo", &fresh.external_id);
    d.erp.add_invoice(invoice_for(&fresh.external_id));
    d.erp.add_transaction(payment_for(&fresh.external_id));
    assert!(store.customer(&key).unwrap().is_none(), "not synced yet");

    let (st, v) = d
        .call(
            "POST",
            "/api/v1/exclusions",
            Some(json!({"customers": [key.to_string()], "reason": "known fraudster"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["pending"], 1);
    assert_eq!(v["customers"][0]["effect"], "pending");
    let (_, v) = d.call("GET", "/api/v1/excluded", None).await;
    assert_eq!(v["pending"][0]["customer"], key.to_string(), "{v}");
    assert_eq!(v["pending"][0]["excluded_by"], "admin");
    let (st, e) = d
        .call(
            "GET",
            &format!("/api/v1/customers/demo/{}/explain", fresh.external_id),
            None,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["synced"], false);

    let dropped = store.counter("demo", "dropped_invoices").unwrap()
        + store.counter("demo", "dropped_transactions").unwrap();
    d.sync_now().await;
    let sc = stored(store, &key);
    assert_eq!(sc.classification.reason, "manual");
    assert_eq!(sc.customer.name, fresh.name);
    assert_eq!(counts(store, &key), (0, 0));
    let upstream = d
        .erp
        .invoices()
        .iter()
        .filter(|i| i.customer_id == fresh.external_id)
        .count()
        + d.erp
            .transactions()
            .iter()
            .filter(|t| t.customer_id == fresh.external_id)
            .count();
    assert!(upstream >= 2);
    let dropped_now = store.counter("demo", "dropped_invoices").unwrap()
        + store.counter("demo", "dropped_transactions").unwrap();
    assert!(
        dropped_now >= dropped + upstream as u64,
        "{dropped} -> {dropped_now}"
    );
    assert!(store
        .records(Some("demo"))
        .map(Result::unwrap)
        .all(|(_, r)| r.customer_id() != fresh.external_id));
    assert_eq!(store.parked_count("demo").unwrap(), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_refuses_a_missing_or_wrong_token() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = included_with_records(store, 1).remove(0).key();
    // Give the reload something to do, should it wrongly run.
    let cfg = std::fs::read_to_string(config_path(&d)).unwrap();
    std::fs::write(
        config_path(&d),
        format!(
            "{cfg}{}",
            rule_toml("r", std::slice::from_ref(&key.external_id))
        ),
    )
    .unwrap();
    let before = snapshot(store);
    for (method, path, body) in admin_endpoints(&key.to_string(), &key.external_id) {
        for (api, needle) in [
            (d.api.without_token(), "missing bearer token"),
            (d.api.with_token("not-the-token"), "wrong bearer token"),
        ] {
            let (m, p, b) = (method.to_string(), path.clone(), body.clone());
            let (st, v) = tokio::task::spawn_blocking(move || api.call(&m, &p, b.as_ref()))
                .await
                .unwrap();
            assert_eq!(st, 401, "{method} {path}: {v}");
            assert!(error_of(&v).contains(needle), "{method} {path}: {v}");
        }
    }
    assert_eq!(snapshot(store), before);
    assert!(d.app.last_reload.lock().unwrap().is_none(), "no reload ran");
    // With the token the same customer endpoint answers.
    let (st, _) = d
        .call(
            "GET",
            &format!("/api/v1/customers/demo/{}", key.external_id),
            None,
        )
        .await;
    assert_eq!(st, 200);
    d.stop().await;
}

/// Sends a raw body with the right token.
async fn raw(d: &InProcess, method: &str, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", d.api.base),
        )
        .bearer_auth(TOKEN)
        .header("content-type", ctype)
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn get_text(d: &InProcess, path: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", d.api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    resp.text().await.unwrap()
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_naming_the_problem_and_change_nothing() {
    let d = InProcess::start(&small_demo(), "1h", "").await;
    d.wait_passes(1).await;
    let store = &d.app.store;
    let key = included_with_records(store, 1).remove(0).key();
    let (k, id) = (key.to_string(), key.external_id.clone());
    let json_cases: Vec<(&str, String, Value, u16, String)> = vec![
        (
            "POST",
            "/api/v1/exclusions".into(),
            json!({"customers": [k]}),
            422,
            "missing field `reason`".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions".into(),
            json!({"customers": [k], "reason": "x", "reasn": 1}),
            422,
            "unknown field `reasn`".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions".into(),
            json!({"customers": [], "reason": "x"}),
            400,
            "`customers` is empty".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions".into(),
            json!({"customers": [k, id], "reason": "x"}),
            400,
            format!("`{id}` is not a customer reference"),
        ),
        (
            "POST",
            "/api/v1/exclusions".into(),
            json!({"customers": [k, "sap:C1"], "reason": "x"}),
            400,
            "unknown connector `sap`; configured connectors: demo".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions".into(),
            json!({"customers": [k], "reason": "   "}),
            400,
            "`reason` is required".into(),
        ),
        (
            "POST",
            "/api/v1/reinclusions".into(),
            json!({"customers": [k, "demo:NOPE"]}),
            404,
            "unknown customer demo:NOPE".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions/mass".into(),
            json!({"reason": "x"}),
            400,
            "needs `q` or `condition`".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions/mass".into(),
            json!({"condition": {"field": "name", "op": "resembles", "value": "x"}, "reason": "x"}),
            400,
            "`condition` at `op`: unknown operator `resembles`".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions/mass".into(),
            json!({"q": id, "connector": "sap", "reason": "x", "confirm": 1}),
            400,
            "unknown connector `sap`".into(),
        ),
        (
            "POST",
            "/api/v1/exclusions/mass".into(),
            json!({"q": id, "reason": "x", "confirm": 7}),
            409,
            "now matches 1 customers, not 7".into(),
        ),
        (
            "POST",
            "/api/v1/rules/preview".into(),
            json!({"rules": [{"id": "r1", "description": "", "when": {"field": "nme", "op": "is", "value": "x"}}]}),
            400,
            "rules[0] (`r1`) at `when.field`: unknown field `nme`".into(),
        ),
        (
            "POST",
            "/api/v1/rules/preview".into(),
            json!({}),
            400,
            "send either `rules`".into(),
        ),
        (
            "POST",
            "/api/v1/rules/preview".into(),
            json!({"rules": [{"id": "a", "description": "", "when": {"all": []}}, {"id": "a", "description": "", "when": {"all": []}}]}),
            400,
            "duplicate rule id `a`".into(),
        ),
        (
            "DELETE",
            format!("/api/v1/customers/demo/{id}/decision"),
            Value::Null,
            404,
            format!("demo:{id} has no manual decision to clear"),
        ),
        (
            "GET",
            "/api/v1/customers/demo/NOPE/explain".into(),
            Value::Null,
            404,
            "unknown customer demo:NOPE".into(),
        ),
        (
            "GET",
            "/api/v1/customers/demo/NOPE".into(),
            Value::Null,
            404,
            "unknown customer demo:NOPE".into(),
        ),
        (
            "GET",
            format!("/api/v1/customers/sap/{id}"),
            Value::Null,
            404,
            "unknown connector `sap`".into(),
        ),
        (
            "GET",
            "/api/v1/customers?state=gone".into(),
            Value::Null,
            400,
            "unknown variant `gone`".into(),
        ),
        (
            "GET",
            "/api/v1/customers?limit=0".into(),
            Value::Null,
            400,
            "`limit` must be between 1 and 1000".into(),
        ),
        (
            "GET",
            "/api/v1/customers?after=nocolon".into(),
            Value::Null,
            400,
            "`after`: `nocolon` is not a customer reference".into(),
        ),
        (
            "GET",
            "/api/v1/customers?bogus=1".into(),
            Value::Null,
            400,
            "unknown field `bogus`".into(),
        ),
        (
            "GET",
            "/api/v1/audit?customer=bad".into(),
            Value::Null,
            400,
            "`customer`: `bad` is not a customer reference".into(),
        ),
        (
            "GET",
            "/api/v1/excluded?connector=sap".into(),
            Value::Null,
            400,
            "unknown connector `sap`".into(),
        ),
    ];
    let before = snapshot(store);
    for (method, path, body, status, needle) in json_cases {
        let body = (!body.is_null()).then_some(body);
        let (st, v) = d.call(method, &path, body.clone()).await;
        assert_eq!(st, status, "{method} {path} {body:?}: {v}");
        assert!(
            error_of(&v).contains(&needle),
            "{method} {path}: `{needle}` not in {v}"
        );
        assert_eq!(snapshot(store), before, "{method} {path} changed the store");
    }
    let big = format!(
        "{{\"customers\": [\"{k}\"], \"reason\": \"{}\"}}",
        "x".repeat(1_100_000)
    );
    let raw_cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/api/v1/exclusions",
            "application/json",
            b"{\"customers\": [".to_vec(),
            400,
            "Failed to parse the request body as JSON",
        ),
        (
            "/api/v1/exclusions",
            "application/json",
            big.into_bytes(),
            413,
            "length limit exceeded",
        ),
        (
            "/api/v1/exclusions",
            "text/plain",
            format!("{{\"customers\": [\"{k}\"], \"reason\": \"x\"}}").into_bytes(),
            415,
            "Content-Type: application/json",
        ),
        (
            "/api/v1/reinclusions",
            "application/json",
            b"[1, 2]".to_vec(),
            422,
            "invalid type",
        ),
    ];
    for (path, ctype, body, status, needle) in raw_cases {
        let (st, v) = raw(&d, "POST", path, ctype, body).await;
        assert_eq!(st, status, "{path} {ctype}: {v}");
        assert!(
            error_of(&v).contains(needle),
            "{path}: `{needle}` not in {v}"
        );
        assert_eq!(snapshot(store), before, "{path} changed the store");
    }
    d.stop().await;
}

fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("USER", "tester")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `/status` reports a reload newer than `seen`.
fn wait_reload(d: &crate::support::Daemon, seen: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.client.get("/status");
        if !s["last_reload"].is_null() && s["last_reload"] != *seen {
            return s["last_reload"].clone();
        }
        assert!(Instant::now() < deadline, "no reload reported: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cli_and_sighup_drive_the_real_daemon() {
    let opts = small_demo();
    let setup = Setup::demo(&opts, "1h", TEST_ACCOUNTS_RULE);
    let cfg = setup.config_path();
    let d = setup.start();
    d.wait_passes(1);
    // An included customer with invoices, found through the API.
    let list = d.client.get("/api/v1/customers?state=included&limit=200");
    let target = list["customers"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| {
            let id = c["external_id"].as_str().unwrap();
            let detail = d.client.get(&format!("/api/v1/customers/demo/{id}"));
            (!detail["invoices"].as_array().unwrap().is_empty())
                .then(|| (id.to_string(), c["name"].as_str().unwrap().to_string()))
        })
        .expect("an included customer with invoices");
    let (id, name) = target;
    let key = format!("demo:{id}");

    let (ok, out, err) = cli(&cfg, &["exclude", &key, "--reason", "cli test"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("excluded 1 customer(s)"), "{out}");
    assert!(out.contains(&key) && out.contains("excluded"), "{out}");

    let (ok, out, err) = cli(
        &cfg,
        &[
            "customers",
            "search",
            &name.to_lowercase(),
            "--limit",
            "1000",
        ],
    );
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("excluded") && line.contains("manual"),
        "{line}"
    );
    let (ok, out, _) = cli(&cfg, &["customers", "search", &id, "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["customers"][0]["decision"]["actor"], "tester");

    let (ok, out, err) = cli(&cfg, &["customers", "explain", &key]);
    assert!(ok, "{err}");
    assert!(out.contains("excluded by hand by tester"), "{out}");
    assert!(out.contains("manual_exclude"), "{out}");

    let export = setup.dir.path().join("excluded.csv");
    let (ok, _, err) = cli(
        &cfg,
        &["excluded", "export", "-o", export.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(err.contains("excluded customers to"), "{err}");
    let text = std::fs::read_to_string(&export).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("demo,{id},")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains(",manual,manual: cli test,") && row.ends_with(",tester"),
        "{row}"
    );

    let (ok, out, err) = cli(&cfg, &["reinclude", &key]);
    assert!(ok, "{err}");
    assert!(out.contains("1 queued for resync"), "{out}");

    let (ok, _, err) = cli(&cfg, &["exclude", "nocolon", "--reason", "x"]);
    assert!(!ok);
    assert!(
        err.contains("400 Bad Request: `nocolon` is not a customer reference"),
        "{err}"
    );

    // rules preview reads the rules from an edited copy of the file.
    let base_text = std::fs::read_to_string(&cfg).unwrap();
    let edited = setup.dir.path().join("edited.toml");
    let without_rule = base_text.replace(TEST_ACCOUNTS_RULE, "");
    assert_ne!(without_rule, base_text);
    std::fs::write(&edited, &without_rule).unwrap();
    let (ok, out, err) = cli(&edited, &["rules", "preview"]);
    assert!(ok, "{err}");
    assert!(out.contains("would exclude 0 and re-include"), "{out}");
    assert!(out.contains("would re-include:"), "{out}");
    let (ok, out, _) = cli(&edited, &["rules", "preview", "--json"]);
    assert!(ok);
    let preview: Value = serde_json::from_str(&out).unwrap();
    let would_include = preview["impact"]["would_include"].as_u64().unwrap();
    assert!(would_include > 0, "{preview}");

    // SIGHUP with a rule that excludes everyone: refused, nothing changes.
    let before = d.client.get("/status");
    let seen = before["last_reload"].clone();
    std::fs::write(
        &cfg,
        format!(
            "{base_text}\n[[rules]]\nid = \"everyone\"\ndescription = \"\"\nwhen = {{ field = \"name\", op = \"is_not_empty\" }}\n"
        ),
    )
    .unwrap();
    let hup = |d: &crate::support::Daemon| {
        assert!(Command::new("kill")
            .args(["-HUP", &d.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    hup(&d);
    let r = wait_reload(&d, &seen);
    assert_eq!(r["applied"], false, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("max_new_exclusion_ratio"),
        "{r}"
    );
    let after = d.client.get("/status");
    assert_eq!(after["rules"], 1);
    assert_eq!(after["customers"], before["customers"]);

    // SIGHUP without the test-accounts rule: applied, they come back.
    std::fs::write(&cfg, &without_rule).unwrap();
    hup(&d);
    let r2 = wait_reload(&d, &r);
    assert_eq!(r2["applied"], true, "{r2}");
    let status = d.client.get("/status");
    assert_eq!(status["rules"], 0);
    assert!(d.log().contains("reload done"), "SIGHUP outcome is logged");
    assert!(d.log().contains("reload refused"), "the refusal is logged");
    assert!(d.terminate().0.success());

    // The stored data: the CLI's decisions and the reloads are there.
    let store = Store::open(&setup.dir.path().join("state")).unwrap();
    let k = CustomerKey::new("demo", &id);
    let dec = store.manual_decision(&k).unwrap().unwrap();
    assert_eq!(
        (dec.action, dec.actor.as_str()),
        (ManualAction::Include, "tester")
    );
    assert!(!store.customer(&k).unwrap().unwrap().classification.excluded);
    let counts = store.classification_counts(None).unwrap();
    assert_eq!(counts.excluded_by_source.get("rule"), None, "no rule left");
    let reincluded_by_reload = store
        .audit(None, 100_000)
        .unwrap()
        .into_iter()
        .filter(|a| a.actor == "reload" && a.to.as_ref().is_some_and(|t| !t.excluded))
        .count();
    assert_eq!(reincluded_by_reload as u64, would_include, "as previewed");
    let queued: u64 = queue::jobs(&store).unwrap().iter().map(|j| j.total).sum();
    assert_eq!(
        queued,
        1 + would_include,
        "the CLI's re-include and the reload's"
    );
}

/// Native exclusions switched on while stopped, too broad for the ratio
/// guard: they cannot be kept apart at run time, so the start is refused
/// (exit 78) and the store is left as it was.
#[test]
fn a_too_broad_native_exclusion_change_while_stopped_refuses_the_start() {
    let opts = small_demo();
    let setup = Setup::demo(
        &opts,
        "1h",
        "[exclusions]\nmax_new_exclusion_ratio = 0.01\n",
    );
    let text = std::fs::read_to_string(setup.config_path()).unwrap();
    setup.write_config(&text.replace(
        "kind = \"demo\"\n",
        "kind = \"demo\"\nnative_exclusions = []\n",
    ));
    let d = setup.start();
    let s = d.wait_passes(1);
    assert_eq!(s["customers"]["excluded"], 0, "{s:#}");
    assert!(d.terminate().0.success());
    let state = setup.dir.path().join("state");
    let before = snapshot(&Store::open(&state).unwrap());

    // Back to the defaults (inactive and intercompany on): ~4% would go.
    setup.write_config(&text);
    let out = Command::new(env!("CARGO_BIN_EXE_erpsync"))
        .args(["run", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("native_exclusions"), "{err}");
    assert_eq!(
        snapshot(&Store::open(&state).unwrap()),
        before,
        "the store changed"
    );
}
