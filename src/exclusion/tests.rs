//! Unit tests of the exclusion operations on a bare store, seeded through
//! real ingest so classifications are what the daemon would store.

use std::sync::{Arc, Mutex};

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use super::manual::{self, Actor, Effect, Selection};
use super::search::{self, Filter, State};
use super::{explain, impact, ExclusionError, Policy};
use crate::connectors::{Cursor, NativeExclusion, Page, NATIVE_INACTIVE, NATIVE_INTERCOMPANY};
use crate::ingest::{self, Ingest};
use crate::model::{
    Customer, CustomerKey, ExclusionSource, Invoice, InvoiceStatus, ManualAction, Record,
    Timestamp, Transaction, TransactionKind,
};
use crate::resync::queue;
use crate::rules::{parse_rule, RuleSet};
use crate::store::Store;

static NATIVE: [NativeExclusion; 2] = [NATIVE_INACTIVE, NATIVE_INTERCOMPANY];

struct TestPolicy {
    rules: Mutex<Arc<RuleSet>>,
}

impl Policy for TestPolicy {
    fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.rules.lock().unwrap())
    }
    fn native(&self, connector: &str) -> &[NativeExclusion] {
        match connector {
            "demo" => &NATIVE,
            // erp2 has only the inactive flag enabled
            "erp2" => &NATIVE[..1],
            _ => &[],
        }
    }
    fn known_native(&self, connector: &str) -> &[NativeExclusion] {
        match connector {
            "demo" | "erp2" => &NATIVE,
            _ => &[],
        }
    }
    fn connector_ids(&self) -> Vec<String> {
        vec!["demo".into(), "erp2".into()]
    }
}

fn rules(list: serde_json::Value) -> RuleSet {
    let rules = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| parse_rule(v).unwrap())
        .collect();
    RuleSet::new(rules).unwrap()
}

fn test_rule() -> RuleSet {
    rules(json!([{
        "id": "tests",
        "description": "test accounts",
        "when": {"field": "name", "op": "contains", "value": "test"}
    }]))
}

fn ts(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn cust(id: &str, name: &str, email: Option<&str>, inactive: bool) -> Customer {
    Customer {
        external_id: id.into(),
        name: name.into(),
        email: email.map(str::to_string),
        subsidiary: None,
        currency: Some("EUR".into()),
        balance: Decimal::ZERO,
        inactive,
        intercompany: false,
        last_modified: ts(0),
        custom: Default::default(),
    }
}

fn inv(id: &str, cust: &str) -> Record {
    Record::Invoice(Invoice {
        external_id: id.into(),
        number: format!("N-{id}"),
        customer_id: cust.into(),
        issue_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        due_date: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        currency: "EUR".into(),
        total: Decimal::new(10000, 2),
        amount_due: Decimal::new(10000, 2),
        status: InvoiceStatus::Open,
        on_hold: false,
        last_modified: ts(1),
    })
}

fn pmt(id: &str, cust: &str) -> Record {
    Record::Transaction(Transaction {
        external_id: id.into(),
        kind: TransactionKind::Payment,
        customer_id: cust.into(),
        date: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
        amount: Decimal::new(500, 2),
        currency: "EUR".into(),
        last_modified: ts(1),
    })
}

fn key(s: &str) -> CustomerKey {
    CustomerKey::parse(s).unwrap()
}

fn actor(reason: &str) -> Actor {
    Actor::new(Some("alice"), Some(reason), "", ts(100)).unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    policy: TestPolicy,
}

impl World {
    /// demo: C1 Acme (2 invoices, 1 payment), C2 "Test Customer" (rule),
    /// C3 Globex (inactive), C4 Initech (1 invoice), C5 "Umbrella Test
    /// Account" (rule); erp2: E1 Acme Europe (1 invoice).
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let w = World {
            store: Store::open(dir.path()).unwrap(),
            _dir: dir,
            policy: TestPolicy {
                rules: Mutex::new(Arc::new(test_rule())),
            },
        };
        w.customers(
            "demo",
            vec![
                cust("C1", "Acme Trading Ltd", Some("ap@acme.example"), false),
                cust("C2", "Test Customer 2", Some("qa@example.com"), false),
                cust("C3", "Globex Group", Some("billing@globex.example"), true),
                cust("C4", "Initech", None, false),
                cust(
                    "C5",
                    "Umbrella Test Account",
                    Some("x@umbrella.example"),
                    false,
                ),
            ],
        )
        .await;
        w.customers(
            "erp2",
            vec![cust("E1", "Acme Europe", Some("ap@acme.example"), false)],
        )
        .await;
        w.records(
            "demo",
            vec![
                inv("I1", "C1"),
                inv("I2", "C1"),
                pmt("P1", "C1"),
                inv("I4", "C4"),
                inv("I2X", "C2"),
            ],
        )
        .await;
        w.records("erp2", vec![inv("EI1", "E1")]).await;
        w
    }

    async fn customers(&self, connector: &str, items: Vec<Customer>) {
        let page = Page {
            items,
            ..Page::empty(Cursor::start())
        };
        self.store
            .write(|tx| {
                let rules = self.policy.rules();
                let ctx = Ingest {
                    connector,
                    rules: &rules,
                    native: self.policy.native(connector),
                    now: Utc::now(),
                };
                ingest::customers(tx, &ctx, &page)
            })
            .await
            .unwrap();
    }

    async fn records(&self, connector: &str, items: Vec<Record>) -> ingest::PageStats {
        let page = Page {
            items,
            ..Page::empty(Cursor::start())
        };
        self.store
            .write(|tx| {
                let rules = self.policy.rules();
                let ctx = Ingest {
                    connector,
                    rules: &rules,
                    native: self.policy.native(connector),
                    now: Utc::now(),
                };
                ingest::records(tx, &ctx, crate::model::Entity::Invoices, &page)
            })
            .await
            .unwrap()
    }

    fn reason(&self, k: &str) -> String {
        let sc = self.store.customer(&key(k)).unwrap().unwrap();
        sc.classification.reason
    }

    fn records_of(&self, k: &str) -> usize {
        self.store.records_of(&key(k)).unwrap().len()
    }

    /// Everything a refused operation must leave as it was.
    fn snapshot(&self) -> String {
        let customers: Vec<_> = self
            .store
            .customers(None, None)
            .map(|c| serde_json::to_string(&c.unwrap()).unwrap())
            .collect();
        let records: Vec<_> = self
            .store
            .records(None)
            .map(|r| format!("{:?}", r.unwrap()))
            .collect();
        let decisions: Vec<_> = self
            .store
            .manual_decisions()
            .map(|d| format!("{:?}", d.unwrap()))
            .collect();
        let audit = self.store.audit(None, 10_000).unwrap().len();
        let jobs = queue::jobs(&self.store).unwrap();
        format!("{customers:?}\n{records:?}\n{decisions:?}\naudit={audit}\njobs={jobs:?}")
    }
}

#[tokio::test]
async fn seeded_world_is_classified_as_expected() {
    let w = World::new().await;
    assert_eq!(w.reason("demo:C1"), "included");
    assert_eq!(w.reason("demo:C2"), "rule:tests");
    assert_eq!(w.reason("demo:C3"), "native:inactive");
    assert_eq!(w.records_of("demo:C1"), 3);
    assert_eq!(
        w.records_of("demo:C2"),
        0,
        "records of excluded are dropped"
    );
}

#[tokio::test]
async fn manual_exclusion_purges_records_keeps_the_customer_and_audits() {
    let w = World::new().await;
    let keys = manual::parse_refs(&["demo:C1".into(), "demo:C1".into()], &w.policy).unwrap();
    assert_eq!(keys.len(), 1, "duplicates are dropped");
    let out = manual::exclude(&w.store, &w.policy, &keys, &actor("bankrupt"))
        .await
        .unwrap();
    assert_eq!(
        (
            out.changed,
            out.newly_excluded,
            out.purged_invoices,
            out.purged_transactions
        ),
        (1, 1, 2, 1)
    );
    assert_eq!(out.customers[0].effect, Effect::Excluded);
    let sc = w.store.customer(&key("demo:C1")).unwrap().unwrap();
    assert!(sc.classification.excluded);
    assert_eq!(sc.classification.source, Some(ExclusionSource::Manual));
    assert_eq!(sc.customer.name, "Acme Trading Ltd", "record kept");
    assert_eq!(w.records_of("demo:C1"), 0);
    let d = w.store.manual_decision(&key("demo:C1")).unwrap().unwrap();
    assert_eq!(
        (d.action, d.actor.as_str()),
        (ManualAction::Exclude, "alice")
    );
    let audit = w.store.audit(Some(&key("demo:C1")), 10).unwrap();
    let actions: Vec<_> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["classified", "manual_exclude"], "newest first");
    assert_eq!(audit[0].reason, "bankrupt");

    // Records arriving later are dropped.
    let stats = w.records("demo", vec![inv("I9", "C1")]).await;
    assert_eq!(stats.dropped, 1);
    assert_eq!(w.records_of("demo:C1"), 0);

    // Excluding again changes nothing.
    let before = w.snapshot();
    let again = manual::exclude(&w.store, &w.policy, &keys, &actor("again"))
        .await
        .unwrap();
    assert_eq!((again.changed, again.unchanged), (0, 1));
    assert_eq!(again.customers[0].effect, Effect::AlreadyExcluded);
    assert_eq!(w.snapshot(), before);
}

#[tokio::test]
async fn excluding_a_rule_excluded_customer_pins_it() {
    let w = World::new().await;
    let out = manual::exclude(&w.store, &w.policy, &[key("demo:C2")], &actor("pin"))
        .await
        .unwrap();
    assert_eq!(out.customers[0].effect, Effect::ExclusionPinned);
    assert_eq!(out.newly_excluded, 0);
    assert_eq!(w.reason("demo:C2"), "manual");
}

#[tokio::test]
async fn exclusion_before_first_sync_waits_and_keeps_data_out() {
    let w = World::new().await;
    // Records of C9 arrive before C9 itself: parked.
    let parked = w.records("demo", vec![inv("I90", "C9")]).await;
    assert_eq!(parked.parked, 1);
    let out = manual::exclude(&w.store, &w.policy, &[key("demo:C9")], &actor("never"))
        .await
        .unwrap();
    assert_eq!((out.pending, out.purged_invoices), (1, 1));
    assert_eq!(out.customers[0].effect, Effect::Pending);
    assert_eq!(w.store.parked_count("demo").unwrap(), 0);
    let e = explain::explain(&w.store, &w.policy, &key("demo:C9"), 10).unwrap();
    assert!(!e.synced && e.excluded, "{e:?}");
    assert!(e.summary.contains("never be imported"), "{}", e.summary);
    let pending = search::pending_exclusions(&w.store, &Filter::default()).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].excluded_by.as_str(), pending[0].synced),
        ("alice", false)
    );

    w.customers("demo", vec![cust("C9", "Late Arrival", None, false)])
        .await;
    assert_eq!(w.reason("demo:C9"), "manual");
    let stats = w
        .records("demo", vec![inv("I91", "C9"), pmt("P91", "C9")])
        .await;
    assert_eq!(stats.dropped, 2);
    assert_eq!(w.records_of("demo:C9"), 0);
    assert!(search::pending_exclusions(&w.store, &Filter::default())
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn manual_include_overrides_a_rule_sticks_through_sync_and_queues_resync() {
    let w = World::new().await;
    let out = manual::include(
        &w.store,
        &w.policy,
        &[key("demo:C2"), key("demo:C1")],
        &actor("real customer"),
    )
    .await
    .unwrap();
    assert_eq!(
        (out.changed, out.newly_included, out.queued_for_resync),
        (2, 1, 1)
    );
    assert_eq!(out.customers[0].effect, Effect::Included);
    assert_eq!(out.customers[1].effect, Effect::InclusionPinned);
    assert_eq!(out.resync_jobs.len(), 1);
    let job = queue::job(&w.store, out.resync_jobs[0]).unwrap().unwrap();
    assert_eq!((job.connector.as_str(), job.total), ("demo", 1));
    assert!(job.reason.contains("alice"), "{}", job.reason);
    assert_eq!(
        queue::pending_members(&w.store, job.id).unwrap(),
        vec!["C2".to_string()]
    );
    assert_eq!(w.reason("demo:C2"), "manual:overrides rule:tests");

    // The next sync of C2 (still matching the rule) keeps it included.
    let mut c2 = cust(
        "C2",
        "Test Customer 2 renamed",
        Some("qa@example.com"),
        false,
    );
    c2.last_modified = ts(50);
    w.customers("demo", vec![c2]).await;
    assert_eq!(w.reason("demo:C2"), "manual:overrides rule:tests");
    let stats = w.records("demo", vec![inv("I22", "C2")]).await;
    assert_eq!(stats.written, 1);
    assert_eq!(
        w.store
            .classification_counts(None)
            .unwrap()
            .manual_overrides,
        1
    );

    let e = explain::explain(&w.store, &w.policy, &key("demo:C2"), 50).unwrap();
    assert_eq!(e.rules.len(), 1);
    assert!(e.rules[0].overridden && !e.rules[0].decisive, "{e:?}");
    assert_eq!(e.manual.as_ref().unwrap().actor, "alice");
    assert_eq!(e.automatic.as_ref().unwrap().reason, "rule:tests");
    assert!(e.summary.contains("overrides rule:tests"), "{}", e.summary);
    assert!(e.history.iter().any(|h| h.action == "manual_include"));
}

#[tokio::test]
async fn include_with_an_unknown_customer_changes_nothing() {
    let w = World::new().await;
    manual::exclude(&w.store, &w.policy, &[key("demo:C8")], &actor("pre"))
        .await
        .unwrap();
    let before = w.snapshot();
    for (k, needle) in [
        ("demo:C7", "unknown customer demo:C7: it was never synced"),
        ("demo:C8", "DELETE /api/v1/customers/demo/C8/decision"),
    ] {
        let err = manual::include(&w.store, &w.policy, &[key("demo:C2"), key(k)], &actor("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, ExclusionError::NotFound(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(w.snapshot(), before, "C2 must not be re-included");
    }
}

#[tokio::test]
async fn clearing_a_decision_hands_back_to_the_automatic_sources() {
    let w = World::new().await;
    manual::include(&w.store, &w.policy, &[key("demo:C2")], &actor("yes"))
        .await
        .unwrap();
    w.records("demo", vec![inv("I22", "C2")]).await;
    let out = manual::clear(&w.store, &w.policy, &key("demo:C2"), &actor("undo"))
        .await
        .unwrap();
    assert!(out.newly_excluded);
    assert_eq!(out.purged_invoices, 1);
    assert_eq!(out.previous.action, ManualAction::Include);
    assert_eq!(w.reason("demo:C2"), "rule:tests");
    assert!(w.store.manual_decision(&key("demo:C2")).unwrap().is_none());
    let audit = w.store.audit(Some(&key("demo:C2")), 1).unwrap();
    assert_eq!(audit[0].action, "classified");

    let before = w.snapshot();
    let err = manual::clear(&w.store, &w.policy, &key("demo:C2"), &actor("again"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "demo:C2 has no manual decision to clear");
    assert_eq!(w.snapshot(), before);

    // Clearing an exclusion of an included-by-default customer re-includes
    // it and queues its resync.
    manual::exclude(&w.store, &w.policy, &[key("demo:C4")], &actor("x"))
        .await
        .unwrap();
    let out = manual::clear(&w.store, &w.policy, &key("demo:C4"), &actor("back"))
        .await
        .unwrap();
    assert!(out.newly_included && out.resync_job.is_some());
    assert!(queue::is_queued(&w.store, "demo", "C4").unwrap());
}

#[test]
fn bad_references_and_reasons_are_refused_with_their_problem() {
    let p = TestPolicy {
        rules: Mutex::new(Arc::new(RuleSet::default())),
    };
    let cases: &[(&[&str], &str)] = &[
        (&[], "`customers` is empty"),
        (&["C1"], "`C1` is not a customer reference"),
        (
            &["demo:C1", "sap:C1"],
            "unknown connector `sap`; configured connectors: demo, erp2",
        ),
        (&["demo:C\u{0}1"], "contains a NUL byte"),
    ];
    for (refs, needle) in cases {
        let refs: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
        let err = manual::parse_refs(&refs, &p).unwrap_err();
        assert!(matches!(err, ExclusionError::Invalid(_)));
        assert!(err.to_string().contains(needle), "{refs:?}: {err}");
    }
    for (name, reason, needle) in [
        (Some("alice"), Some("  "), "`reason` is required"),
        (Some(""), Some("r"), "`actor` must be 1 to 200 characters"),
        (Some("alice"), Some(&*"x".repeat(2001)), "longer than 2000"),
    ] {
        let err = Actor::new(name, reason, "", ts(0)).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let a = Actor::new(None, None, "default why", ts(0)).unwrap();
    assert_eq!(
        (a.name.as_str(), a.reason.as_str()),
        ("admin", "default why")
    );
}

#[tokio::test]
async fn mass_exclusion_shows_its_impact_and_applies_only_with_the_right_count() {
    let w = World::new().await;
    let err = Selection::new(Filter::default(), None).unwrap_err();
    assert!(
        err.to_string().contains("needs `q` or `condition`"),
        "{err}"
    );

    // "acme" matches C1 (name) on demo and E1 on erp2; the connector narrows.
    let sel = Selection::new(Filter::new(Some("ACME"), None, None, None), None).unwrap();
    let imp = manual::mass_impact(&w.store, &sel).unwrap();
    assert_eq!(
        (
            imp.customers,
            imp.newly_excluded,
            imp.invoices,
            imp.transactions
        ),
        (2, 2, 3, 1)
    );
    assert_eq!(imp.sample.len(), 2);

    let before = w.snapshot();
    let err = manual::mass_exclude(&w.store, &w.policy, &sel, &actor("mass"), 3)
        .await
        .unwrap_err();
    assert!(matches!(err, ExclusionError::Conflict(_)));
    assert!(
        err.to_string()
            .contains("now matches 2 customers, not 3: review the impact and confirm with 2"),
        "{err}"
    );
    assert_eq!(w.snapshot(), before);

    let (_, out) = manual::mass_exclude(&w.store, &w.policy, &sel, &actor("mass"), 2)
        .await
        .unwrap();
    assert_eq!(
        (out.changed, out.purged_invoices, out.purged_transactions),
        (2, 3, 1)
    );
    assert_eq!(w.records_of("erp2:E1"), 0);
    // Already manually excluded customers are not selected again.
    assert_eq!(manual::mass_impact(&w.store, &sel).unwrap().customers, 0);

    // By condition: the rule-excluded test accounts get pinned by hand.
    let cond = crate::rules::Condition::parse(
        &json!({"field": "email", "op": "ends_with", "value": "@example.com"}),
        Default::default(),
    )
    .unwrap();
    let sel = Selection::new(Filter::default(), Some(cond)).unwrap();
    let imp = manual::mass_impact(&w.store, &sel).unwrap();
    assert_eq!((imp.customers, imp.newly_excluded, imp.invoices), (1, 0, 0));
}

#[tokio::test]
async fn rule_impact_matches_what_reclassification_applies() {
    let w = World::new().await;
    manual::include(&w.store, &w.policy, &[key("demo:C5")], &actor("keep"))
        .await
        .unwrap();
    // New rules: drop `tests`, exclude everything named Acme.
    let new = rules(json!([{
        "id": "acme",
        "description": "Acme entities",
        "when": {"field": "name", "op": "starts_with", "value": "acme"}
    }]));
    let before = w.snapshot();
    let imp = impact::of_rules(&w.store, &w.policy, &new).unwrap();
    assert_eq!(w.snapshot(), before, "impact only reads");
    assert_eq!(imp.total_customers, 6);
    // C1 and E1 newly excluded; C2 back in; C5 stays included but its reason
    // changes (manual:overrides rule:tests → manual).
    assert_eq!(
        (imp.would_exclude, imp.would_include, imp.reason_changes),
        (2, 1, 1)
    );
    assert_eq!((imp.invoices_to_purge, imp.transactions_to_purge), (3, 1));
    assert!((imp.new_exclusion_ratio - 2.0 / 6.0).abs() < 1e-9);
    assert!(!imp.within_ratio(0.2) && imp.within_ratio(0.5));
    assert_eq!(imp.rules[0].matching, 2);
    assert_eq!(imp.rules[0].excluding, 2);
    let excluded: Vec<_> = imp
        .newly_excluded
        .iter()
        .map(|c| c.customer.as_str())
        .collect();
    assert_eq!(excluded, ["demo:C1", "erp2:E1"]);
    assert_eq!(imp.newly_included[0].from, "rule:tests");

    *w.policy.rules.lock().unwrap() = Arc::new(new);
    // Batches of 2 customers exercise the paging between writes.
    let applied = impact::reclassify_all(&w.store, &w.policy, "reload", "rules reloaded", 2)
        .await
        .unwrap();
    assert_eq!(applied.examined, 6);
    assert_eq!(
        (
            applied.newly_excluded,
            applied.newly_included,
            applied.reason_changes
        ),
        (2, 1, 1)
    );
    assert_eq!(
        (applied.purged_invoices, applied.purged_transactions),
        (3, 1)
    );
    assert_eq!(applied.queued_for_resync, 1);
    assert!(queue::is_queued(&w.store, "demo", "C2").unwrap());
    assert_eq!(w.reason("demo:C1"), "rule:acme");
    assert_eq!(w.reason("demo:C5"), "manual");
    assert_eq!(w.records_of("demo:C1"), 0);
    let a = &w.store.audit(Some(&key("demo:C1")), 1).unwrap()[0];
    assert_eq!(
        (a.actor.as_str(), a.reason.as_str()),
        ("reload", "rules reloaded")
    );

    // Applying the same rules again changes nothing.
    let before = w.snapshot();
    let again = impact::reclassify_all(&w.store, &w.policy, "reload", "again", 2)
        .await
        .unwrap();
    assert_eq!(
        again.newly_excluded + again.newly_included + again.reason_changes,
        0
    );
    assert_eq!(w.snapshot(), before);
}

#[tokio::test]
async fn search_matches_name_email_and_id_ignoring_case_with_filters_and_paging() {
    let w = World::new().await;
    let ids = |f: &Filter, after: Option<&CustomerKey>, limit: usize| {
        let p = search::page(&w.store, f, after, limit).unwrap();
        let ids: Vec<String> = p.items.iter().map(|c| c.key().to_string()).collect();
        (ids, p.next.map(|k| k.to_string()))
    };
    let cases: &[(Filter, &[&str])] = &[
        (
            Filter::new(Some("acme"), None, None, None),
            &["demo:C1", "erp2:E1"],
        ),
        (
            Filter::new(Some("GLOBEX.EXAMPLE"), None, None, None),
            &["demo:C3"],
        ),
        (Filter::new(Some("c4"), None, None, None), &["demo:C4"]),
        (
            Filter::new(Some("acme"), Some("erp2"), None, None),
            &["erp2:E1"],
        ),
        (
            Filter::new(Some("test"), None, Some(State::Excluded), None),
            &["demo:C2", "demo:C5"],
        ),
        (
            Filter::new(
                None,
                None,
                Some(State::Excluded),
                Some(ExclusionSource::Native),
            ),
            &["demo:C3"],
        ),
        (
            Filter::new(Some("  "), Some("demo"), Some(State::Included), None),
            &["demo:C1", "demo:C4"],
        ),
        (Filter::new(Some("nobody"), None, None, None), &[]),
    ];
    for (f, want) in cases {
        assert_eq!(ids(f, None, 50).0, *want, "{f:?}");
    }
    let all = Filter::default();
    let (first, next) = ids(&all, None, 4);
    assert_eq!(first, ["demo:C1", "demo:C2", "demo:C3", "demo:C4"]);
    assert_eq!(next.as_deref(), Some("demo:C4"));
    let (rest, next) = ids(&all, Some(&key("demo:C4")), 4);
    assert_eq!(rest, ["demo:C5", "erp2:E1"]);
    assert_eq!(next, None, "last page");
}

#[tokio::test]
async fn excluded_list_and_csv_name_source_reason_and_who() {
    let w = World::new().await;
    manual::exclude(
        &w.store,
        &w.policy,
        &[key("demo:C4"), key("demo:C99")],
        &actor("fraud, \"confirmed\""),
    )
    .await
    .unwrap();
    let (entries, next) =
        search::excluded_page(&w.store, &w.policy, &Filter::default(), None, 50).unwrap();
    assert_eq!(next, None);
    let rows: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.customer.as_str(),
                e.source,
                e.reason_text(),
                e.excluded_by.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "demo:C2",
                ExclusionSource::Rule,
                "rule:tests: test accounts".to_string(),
                "sync"
            ),
            (
                "demo:C3",
                ExclusionSource::Native,
                "native:inactive: customer is marked inactive in the ERP".to_string(),
                "sync"
            ),
            (
                "demo:C4",
                ExclusionSource::Manual,
                "manual: fraud, \"confirmed\"".to_string(),
                "alice"
            ),
            (
                "demo:C5",
                ExclusionSource::Rule,
                "rule:tests: test accounts".to_string(),
                "sync"
            ),
        ]
    );

    let mut export = search::CsvExport::default();
    let mut bytes = Vec::new();
    while let Some(chunk) = export.next_chunk(&w.store, &w.policy).unwrap() {
        bytes.extend(chunk);
    }
    let mut r = csv::Reader::from_reader(bytes.as_slice());
    assert_eq!(r.headers().unwrap(), search::CSV_HEADER.as_slice());
    let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(recs.len(), 5, "4 synced + 1 pending");
    let c4 = recs.iter().find(|r| &r[1] == "C4").unwrap();
    assert_eq!(&c4[2], "Initech");
    assert_eq!(&c4[4], "manual");
    assert_eq!(&c4[5], "manual: fraud, \"confirmed\"", "quotes survive CSV");
    assert_eq!(&c4[6], "2023-11-14T22:15:00Z");
    assert_eq!(&c4[7], "alice");
    let pending = recs.iter().find(|r| &r[1] == "C99").unwrap();
    assert_eq!(
        (&pending[0], &pending[2], &pending[7]),
        ("demo", "", "alice")
    );
}

#[tokio::test]
async fn the_excluded_csv_defuses_formulas_and_takes_the_list_filters() {
    let w = World::new().await;
    // An ERP name and an admin's reason and name that a spreadsheet would run.
    w.customers(
        "erp2",
        vec![cust(
            "=E2",
            "=HYPERLINK(\"http://evil\")",
            Some("@x.example"),
            false,
        )],
    )
    .await;
    manual::exclude(
        &w.store,
        &w.policy,
        &[key("erp2:=E2"), key("demo:C4"), key("erp2:-P1")],
        &Actor::new(Some("+admin"), Some("-1+1 cmd|' /C calc'!A0"), "", ts(100)).unwrap(),
    )
    .await
    .unwrap();
    let export = |filter: Filter| {
        let mut export = search::CsvExport::new(filter);
        let mut bytes = Vec::new();
        while let Some(chunk) = export.next_chunk(&w.store, &w.policy).unwrap() {
            bytes.extend(chunk);
        }
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(r.headers().unwrap(), search::CSV_HEADER.as_slice());
        r.records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let rows = export(Filter::new(None, Some("erp2"), None, None));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0],
        [
            "erp2",
            "'=E2",
            "'=HYPERLINK(\"http://evil\")",
            "'@x.example",
            "manual",
            "manual: -1+1 cmd|' /C calc'!A0",
            "2023-11-14T22:15:00Z",
            "'+admin",
        ]
    );
    // Not synced yet: listed after the synced ones, its id guarded too.
    assert_eq!(
        (&rows[1][1], &rows[1][7]),
        (&"'-P1".to_string(), &"'+admin".to_string())
    );
    // The filters of the excluded list: text, connector, source.
    let ids = |rows: Vec<Vec<String>>| rows.into_iter().map(|r| r[1].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(export(Filter::new(Some("initech"), None, None, None))),
        ["C4"]
    );
    assert_eq!(
        ids(export(Filter::new(
            None,
            Some("demo"),
            None,
            Some(ExclusionSource::Rule)
        ))),
        ["C2", "C5"]
    );
    assert_eq!(
        ids(export(Filter::new(
            None,
            None,
            None,
            Some(ExclusionSource::Manual)
        ))),
        ["C4", "'=E2", "'-P1"]
    );
    assert_eq!(export(Filter::default()).len(), 6);
}

#[test]
fn parse_refs_drops_duplicates_and_refuses_too_long_lists() {
    let policy = TestPolicy {
        rules: Mutex::new(Arc::new(test_rule())),
    };
    let refs: Vec<String> = ["demo:C1", "erp2:E1", "demo:C1", "erp2:E1", "demo:C2"]
        .map(String::from)
        .to_vec();
    let keys = manual::parse_refs(&refs, &policy).unwrap();
    assert_eq!(keys, [key("demo:C1"), key("erp2:E1"), key("demo:C2")]);

    let max = manual::MAX_CUSTOMERS_PER_REQUEST;
    let many: Vec<String> = (0..max).map(|i| format!("demo:C{i}")).collect();
    assert_eq!(manual::parse_refs(&many, &policy).unwrap().len(), max);
    let too_many: Vec<String> = (0..=max).map(|i| format!("demo:C{i}")).collect();
    let err = manual::parse_refs(&too_many, &policy).unwrap_err();
    assert!(matches!(err, ExclusionError::Invalid(_)));
    assert_eq!(
        err.to_string(),
        "`customers` names 10001 customers; at most 10000 are accepted per request: split the list"
    );
    let err = manual::parse_refs(&["demo:C1".into(), "sap:C1".into()], &policy).unwrap_err();
    assert!(err.to_string().contains("unknown connector `sap`"), "{err}");
}

#[tokio::test]
async fn explain_shows_native_flags_every_matching_rule_and_history() {
    let w = World::new().await;
    *w.policy.rules.lock().unwrap() = Arc::new(rules(json!([
        {"id": "inactive-too", "description": "", "when": {"field": "inactive", "op": "is", "value": true}},
        {"id": "globex", "description": "Globex", "when": {"field": "name", "op": "contains", "value": "globex"}}
    ])));
    let e = explain::explain(&w.store, &w.policy, &key("demo:C3"), 10).unwrap();
    assert_eq!(e.native.len(), 2);
    assert!(e.native[0].applies && e.native[0].enabled, "{:?}", e.native);
    let rules: Vec<_> = e
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.decisive))
        .collect();
    assert_eq!(rules, [("inactive-too", true), ("globex", false)]);
    assert!(
        e.summary
            .starts_with("excluded by rule `inactive-too`; also matches globex"),
        "{}",
        e.summary
    );
    // The store still says native:inactive: explain says the rules moved on.
    assert!(
        e.summary.contains("predates the rules in force"),
        "{}",
        e.summary
    );
    assert_eq!(e.history.len(), 1);

    let e = explain::explain(&w.store, &w.policy, &key("erp2:E1"), 10).unwrap();
    assert!(!e.native[1].enabled, "intercompany is off for erp2");
    assert_eq!(
        e.summary,
        "included: no rule matches and no enabled native exclusion applies"
    );

    let err = explain::explain(&w.store, &w.policy, &key("demo:NOPE"), 10).unwrap_err();
    assert!(matches!(err, ExclusionError::NotFound(_)));
    assert!(err.to_string().contains("never synced"), "{err}");
}
