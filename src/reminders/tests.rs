use std::collections::BTreeMap;
use std::path::Path;

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

use super::candidates::OverdueInvoice;
use super::flags::{self, Request};
use super::*;
use crate::model::{
    Classification, Customer, ExclusionSource, Invoice, InvoiceStatus, Record, Timestamp,
};
use crate::store::{Store, StoredCustomer};

// ----- helpers -------------------------------------------------------------------

const MIN: &str = "[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n";

fn parse_cfg(reminders: &str) -> Result<RemindersConfig, String> {
    crate::config::parse(
        Path::new("/etc/erpsync/erpsync.toml"),
        &format!("{MIN}{reminders}"),
        &crate::connectors::REGISTRY,
    )
    .map(|c| c.reminders)
    .map_err(|e| e.to_string())
}

fn cfg(reminders: &str) -> RemindersConfig {
    parse_cfg(reminders).unwrap_or_else(|e| panic!("{e}"))
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn ts(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn customer(id: &str, segment: &str, balance: &str) -> Customer {
    Customer {
        external_id: id.into(),
        name: format!("Customer {id}"),
        email: Some(format!("ap@{id}.example.org")),
        subsidiary: Some("US".into()),
        currency: Some("USD".into()),
        balance: d(balance),
        inactive: false,
        intercompany: false,
        last_modified: ts(0),
        custom: [("segment".to_string(), segment.to_string())].into(),
    }
}

fn invoice(id: &str, cust: &str, currency: &str, due: &str, due_date: &str) -> Invoice {
    Invoice {
        external_id: id.into(),
        number: format!("N-{id}"),
        customer_id: cust.into(),
        issue_date: date("2026-01-01"),
        due_date: date(due_date),
        currency: currency.into(),
        total: d(due),
        amount_due: d(due),
        status: InvoiceStatus::Open,
        on_hold: false,
        last_modified: ts(1),
    }
}

const AS_OF: &str = "2026-03-01";

/// Two scenarios by segment; smb has none. Minimum USD 50 / 40 for the rest,
/// maximum 1000 everywhere.
const STD: &str = r#"
[reminders]
minimum_total = { USD = "50", "EUR" = 40 }
maximum_total = "1000"
[[reminders.scenarios]]
id = "key"
description = "key accounts"
when = { field = "custom.segment", op = "in", value = ["mid", "enterprise"] }
[[reminders.scenarios]]
id = "ent"
description = "never reached: key matches enterprise first"
when = { field = "custom.segment", op = "is", value = "enterprise" }
"#;

/// Assesses one customer given (invoice, held) pairs.
fn run(cfg: &RemindersConfig, c: &Customer, invs: &[(Invoice, bool)], stopped: bool) -> Assessment {
    let as_of = date(AS_OF);
    let overdue: Vec<OverdueInvoice<'_>> = invs
        .iter()
        .filter(|(i, _)| candidates::is_overdue(i, as_of))
        .map(|(i, held)| OverdueInvoice {
            invoice: i,
            held: *held || i.on_hold,
        })
        .collect();
    let key = CustomerKey::new("demo", &c.external_id);
    assess(
        cfg,
        &candidates::Facts {
            key: &key,
            customer: c,
            excluded: None,
            overdue: &overdue,
            stopped,
        },
    )
}

fn listed(a: Assessment) -> Candidate {
    match a {
        Assessment::Listed(c) => c,
        other => panic!("expected a listed row, got {other:?}"),
    }
}

// ----- config --------------------------------------------------------------------

#[test]
fn no_reminders_table_gives_the_defaults() {
    let c = cfg("");
    assert!(c.minimum_total.is_empty() && c.maximum_total.is_empty());
    assert_eq!(c.creditors, CreditorPolicy::Unchecked);
    assert!(c.scenarios.rules().is_empty());
}

#[test]
fn thresholds_read_one_value_or_a_table_from_strings_and_numbers() {
    let c = cfg(STD);
    assert_eq!(c.minimum_total.for_currency("USD"), Some(d("50")));
    assert_eq!(c.minimum_total.for_currency("EUR"), Some(d("40")));
    assert_eq!(c.minimum_total.for_currency("GBP"), None);
    assert_eq!(c.maximum_total.for_currency("GBP"), Some(d("1000")));
    let c = cfg("[reminders]\nminimum_total = 10.10\nmaximum_total = 99\ncreditors = \"hidden\"\n");
    assert_eq!(c.minimum_total.all, Some(d("10.10")));
    assert_eq!(c.minimum_total.all.unwrap().to_string(), "10.1");
    assert_eq!(c.maximum_total.all, Some(d("99")));
    assert_eq!(c.creditors, CreditorPolicy::Hidden);
    // A named currency beats the value for all.
    let t = Thresholds {
        all: Some(d("5")),
        by_currency: [("USD".to_string(), d("7.25"))].into(),
    };
    assert_eq!(t.for_currency("USD"), Some(d("7.25")));
    assert_eq!(t.for_currency("CHF"), Some(d("5")));
    // Exact decimal, not a float: 0.1 + 0.2 style values stay exact.
    let c = cfg("[reminders]\nminimum_total = \"0.30\"\n");
    assert_eq!(c.minimum_total.all, Some(d("0.1") + d("0.2")));
}

#[test]
fn scenarios_compile_in_order_and_the_first_match_wins() {
    let c = cfg(STD);
    let ids: Vec<&str> = c.scenarios.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["key", "ent"]);
    assert_eq!(c.scenarios.rules()[0].description, "key accounts");
    let ent = customer("C1", "enterprise", "0");
    assert_eq!(c.scenario_for(&ent).unwrap().id, "key");
    assert!(c.scenario_for(&customer("C2", "smb", "0")).is_none());
}

/// Each bad `[reminders]` table: the message names the line, the key and
/// what is wrong.
#[test]
fn bad_reminders_tables_are_refused_with_line_and_key() {
    // MIN is 3 lines, so the reminders text starts on line 4.
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad decimal",
            "[reminders]\nminimum_total = \"ten\"\n",
            &[":5:", "key `reminders.minimum_total`", "`ten` is not a decimal amount"],
        ),
        (
            "negative",
            "[reminders]\nmaximum_total = -5\n",
            &[":5:", "key `reminders.maximum_total`", "-5 is negative"],
        ),
        (
            "bad currency in table",
            "[reminders]\nminimum_total = { usd = \"1\", EUR = \"x\" }\n",
            &[
                "key `reminders.minimum_total.usd`",
                "`usd` is not a currency code",
                "key `reminders.minimum_total.EUR`",
                "`x` is not a decimal amount",
            ],
        ),
        (
            "wrong type",
            "[reminders]\nminimum_total = true\n",
            &["key `reminders.minimum_total`", "got the boolean true"],
        ),
        (
            "minimum above maximum",
            "[reminders]\nminimum_total = { USD = \"500\" }\nmaximum_total = \"100\"\n",
            &["key `reminders.minimum_total`", "the minimum 500 is above the maximum 100 for USD"],
        ),
        (
            "bad creditor policy",
            "[reminders]\ncreditors = \"ignore\"\n",
            &[":5:", "key `reminders.creditors`", "`ignore` is not a creditor policy"],
        ),
        (
            "unknown key",
            "[reminders]\nminimum = 1\n",
            &[":5:", "unknown field `minimum`"],
        ),
        (
            "bad operator",
            "[reminders]\n[[reminders.scenarios]]\nid = \"late\"\ndescription = \"x\"\nwhen = { field = \"name\", op = \"resembles\", value = \"x\" }\n",
            &[":8:", "key `reminders.scenarios[0].when.op`", "scenario `late`: when.op: unknown operator `resembles`"],
        ),
        (
            "nested bad field",
            "[reminders]\n[[reminders.scenarios]]\nid = \"a\"\nwhen = { any = [ { field = \"nope\", op = \"is\", value = \"x\" } ] }\n",
            &["key `reminders.scenarios[0].when.any[0].field`", "scenario `a`: when.any[0].field"],
        ),
        (
            "duplicate id",
            "[reminders]\n[[reminders.scenarios]]\nid = \"a\"\nwhen = { all = [] }\n[[reminders.scenarios]]\nid = \"a\"\nwhen = { all = [] }\n",
            &[":9:", "key `reminders.scenarios[1].id`", "duplicate scenario id `a` (first defined on line 6)"],
        ),
        (
            "missing when",
            "[reminders]\n[[reminders.scenarios]]\nid = \"a\"\n",
            &["missing field `when`"],
        ),
        (
            "empty id",
            "[reminders]\n[[reminders.scenarios]]\nid = \" \"\nwhen = { all = [] }\n",
            &["key `reminders.scenarios[0].id`", "non-empty id"],
        ),
    ];
    for (name, text, needles) in cases {
        let err = parse_cfg(text).expect_err(name);
        for n in *needles {
            assert!(err.contains(n), "{name}: `{n}` not in:\n{err}");
        }
    }
}

#[test]
fn every_reminders_problem_is_reported_at_once() {
    let err = parse_cfg(
        "[reminders]\nminimum_total = \"x\"\ncreditors = \"y\"\n[[reminders.scenarios]]\nid = \"s\"\nwhen = { field = \"name\", op = \"nope\" }\n",
    )
    .unwrap_err();
    assert!(err.contains("3 problems"), "{err}");
}

// ----- assessment ------------------------------------------------------------------

#[test]
fn a_customer_in_a_scenario_within_thresholds_is_selected() {
    let c = cfg(STD);
    let cust = customer("C1", "mid", "300");
    let row = listed(run(
        &c,
        &cust,
        &[
            (invoice("I1", "C1", "USD", "100.00", "2026-01-15"), false),
            (invoice("I2", "C1", "USD", "200.00", "2026-02-10"), false),
            // Due on as_of: not overdue yet.
            (invoice("I3", "C1", "USD", "999.00", AS_OF), false),
        ],
        false,
    ));
    assert!(row.selected, "{row:?}");
    assert!(row.reasons.is_empty());
    assert_eq!(row.scenario.as_deref(), Some("key"));
    assert_eq!(row.total_due, BTreeMap::from([("USD".into(), d("300.00"))]));
    assert_eq!(row.overdue_invoices, 2);
    assert_eq!(row.oldest_due_date, Some(date("2026-01-15")));
    assert_eq!(row.customer, "demo:C1");
}

#[test]
fn held_invoices_do_not_count_and_are_counted_apart() {
    let c = cfg(STD);
    let cust = customer("C1", "mid", "300");
    let mut erp_held = invoice("I2", "C1", "USD", "900.00", "2026-01-01");
    erp_held.on_hold = true;
    let row = listed(run(
        &c,
        &cust,
        &[
            (invoice("I1", "C1", "USD", "100.00", "2026-01-15"), false),
            (erp_held, false),
            (invoice("I3", "C1", "USD", "500.00", "2026-01-02"), true),
        ],
        false,
    ));
    assert_eq!(row.total_due["USD"], d("100.00"));
    assert_eq!(row.overdue_invoices, 1);
    assert_eq!(row.held_invoices, 2);
    assert_eq!(row.oldest_due_date, Some(date("2026-01-15")));
    assert!(row.selected);
    // All held: nothing due, not listed.
    let a = run(
        &c,
        &cust,
        &[(invoice("I3", "C1", "USD", "500.00", "2026-01-02"), true)],
        false,
    );
    assert_eq!(a, Assessment::NothingDue { held_invoices: 1 });
}

#[test]
fn paid_draft_voided_and_zero_invoices_are_not_due() {
    let c = cfg(STD);
    let cust = customer("C1", "mid", "0");
    let mut invs = Vec::new();
    for (i, st) in [
        InvoiceStatus::Paid,
        InvoiceStatus::Draft,
        InvoiceStatus::Voided,
    ]
    .into_iter()
    .enumerate()
    {
        let mut inv = invoice(&format!("I{i}"), "C1", "USD", "100", "2026-01-01");
        inv.status = st;
        invs.push((inv, false));
    }
    invs.push((invoice("Z", "C1", "USD", "0", "2026-01-01"), false));
    assert_eq!(
        run(&c, &cust, &invs, false),
        Assessment::NothingDue { held_invoices: 0 }
    );
}

/// Each reason on its own, then all of them that can go together.
#[test]
fn every_reason_is_given_when_it_applies() {
    let c = cfg(STD);
    let usd = |amount: &str| vec![(invoice("I1", "C", "USD", amount, "2026-01-01"), false)];
    let check = |cust: Customer, invs: Vec<(Invoice, bool)>, stopped: bool, want: &[Reason]| {
        let row = listed(run(&c, &cust, &invs, stopped));
        assert_eq!(row.reasons, want, "{row:?}");
        assert_eq!(row.selected, want.is_empty());
    };
    check(
        customer("C", "mid", "1"),
        usd("100"),
        true,
        &[Reason::Stopped],
    );
    check(
        customer("C", "smb", "1"),
        usd("100"),
        false,
        &[Reason::NoScenario],
    );
    check(
        customer("C", "mid", "1"),
        usd("49.99"),
        false,
        &[Reason::BelowMinimum],
    );
    check(customer("C", "mid", "1"), usd("50"), false, &[]);
    check(customer("C", "mid", "1"), usd("1000"), false, &[]);
    check(
        customer("C", "mid", "1"),
        usd("1000.01"),
        false,
        &[Reason::AboveMaximum],
    );
    check(
        customer("C", "mid", "-5"),
        usd("100"),
        false,
        &[Reason::Creditor],
    );
    check(
        customer("C", "smb", "-5"),
        usd("1"),
        true,
        &[
            Reason::Stopped,
            Reason::NoScenario,
            Reason::BelowMinimum,
            Reason::Creditor,
        ],
    );
}

#[test]
fn a_creditor_with_nothing_due_is_listed_unchecked_or_hidden() {
    let c = cfg(STD);
    let row = listed(run(&c, &customer("C", "mid", "-12.50"), &[], false));
    assert_eq!(row.reasons, [Reason::Creditor]);
    assert!(row.total_due.is_empty());
    assert_eq!(row.overdue_invoices, 0);
    assert_eq!(row.oldest_due_date, None);
    assert_eq!(row.balance, d("-12.50"));

    let hidden = cfg(&format!("{STD}\n").replace(
        "maximum_total = \"1000\"",
        "maximum_total = \"1000\"\ncreditors = \"hidden\"",
    ));
    assert_eq!(hidden.creditors, CreditorPolicy::Hidden);
    match run(&hidden, &customer("C", "mid", "-12.50"), &[], false) {
        Assessment::HiddenCreditor(c) => assert_eq!(c.reasons, [Reason::Creditor]),
        other => panic!("{other:?}"),
    }
    // A zero balance is not a creditor.
    assert_eq!(
        run(&c, &customer("C", "mid", "0"), &[], false),
        Assessment::NothingDue { held_invoices: 0 }
    );
}

#[test]
fn thresholds_apply_per_currency() {
    let c = cfg(STD); // min USD 50, EUR 40, none for GBP; max 1000 for all
    let cust = customer("C", "mid", "1");
    let inv =
        |id: &str, cur: &str, amount: &str| (invoice(id, "C", cur, amount, "2026-01-01"), false);
    // Below in both currencies → below.
    let row = listed(run(
        &c,
        &cust,
        &[inv("1", "USD", "10"), inv("2", "EUR", "39.99")],
        false,
    ));
    assert_eq!(row.reasons, [Reason::BelowMinimum]);
    assert_eq!(row.total_due.len(), 2);
    // One currency reaches its minimum → worth a reminder.
    let row = listed(run(
        &c,
        &cust,
        &[inv("1", "USD", "10"), inv("2", "EUR", "40")],
        false,
    ));
    assert!(row.selected, "{row:?}");
    // A currency without a minimum always reaches it.
    let row = listed(run(&c, &cust, &[inv("1", "GBP", "0.01")], false));
    assert!(row.selected, "{row:?}");
    // Any currency above its maximum → above.
    let row = listed(run(
        &c,
        &cust,
        &[inv("1", "USD", "100"), inv("2", "GBP", "1000.01")],
        false,
    ));
    assert_eq!(row.reasons, [Reason::AboveMaximum]);
    // Totals add up per currency before comparing.
    let row = listed(run(
        &c,
        &cust,
        &[inv("1", "USD", "600"), inv("2", "USD", "400.01")],
        false,
    ));
    assert_eq!(row.total_due["USD"], d("1000.01"));
    assert_eq!(row.reasons, [Reason::AboveMaximum]);
}

#[test]
fn an_excluded_customer_is_never_listed() {
    let c = cfg(STD);
    let cust = customer("C", "mid", "-5");
    let inv = invoice("I", "C", "USD", "100", "2026-01-01");
    let overdue = [OverdueInvoice {
        invoice: &inv,
        held: false,
    }];
    let key = CustomerKey::new("demo", "C");
    let a = assess(
        &c,
        &candidates::Facts {
            key: &key,
            customer: &cust,
            excluded: Some("native:inactive"),
            overdue: &overdue,
            stopped: false,
        },
    );
    assert_eq!(
        a,
        Assessment::Excluded {
            reason: "native:inactive".into()
        }
    );
}

// ----- store: flags, scan, explain -------------------------------------------------

fn stored(c: Customer, excluded: bool) -> StoredCustomer {
    StoredCustomer {
        connector: "demo".into(),
        customer: c,
        classification: if excluded {
            Classification {
                excluded: true,
                source: Some(ExclusionSource::Native),
                reason: "native:inactive".into(),
            }
        } else {
            Classification::included()
        },
        classified_at: ts(0),
        first_seen: ts(0),
    }
}

/// C1 mid 300 due (selected), C2 smb (no scenario), C3 excluded, C4 nothing
/// due, C5 mid creditor with nothing due, C6 mid with one invoice of 60.
async fn sample_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(|tx| {
            for (id, seg, bal, excl) in [
                ("C1", "mid", "300", false),
                ("C2", "smb", "80", false),
                ("C3", "mid", "80", true),
                ("C4", "mid", "0", false),
                ("C5", "mid", "-20", false),
                ("C6", "mid", "60", false),
            ] {
                tx.put_customer(&stored(customer(id, seg, bal), excl))?;
            }
            for (id, cust, amount, due) in [
                ("I1", "C1", "100", "2026-01-10"),
                ("I2", "C1", "200", "2026-02-10"),
                ("I3", "C2", "80", "2026-01-10"),
                ("I4", "C4", "70", "2026-03-10"), // not yet due
                ("I6", "C6", "60", "2026-02-01"),
            ] {
                tx.upsert_record(
                    "demo",
                    &Record::Invoice(invoice(id, cust, "USD", amount, due)),
                    false,
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    (dir, store)
}

fn req(reason: &str) -> Request<'_> {
    Request {
        actor: "alice",
        reason,
        now: ts(100),
    }
}

fn rows(store: &Store, c: &RemindersConfig, f: &Filter) -> Vec<Candidate> {
    scan(store, c, f, date(AS_OF), None, usize::MAX, u64::MAX)
        .unwrap()
        .items
}

#[tokio::test]
async fn scan_lists_included_customers_with_money_due_or_credit() {
    let (_dir, store) = sample_store().await;
    let c = cfg(STD);
    let all = rows(&store, &c, &Filter::default());
    let ids: Vec<&str> = all.iter().map(|r| r.customer.as_str()).collect();
    assert_eq!(ids, ["demo:C1", "demo:C2", "demo:C5", "demo:C6"]);
    assert!(all[0].selected);
    assert_eq!(all[1].reasons, [Reason::NoScenario]);
    assert_eq!(all[2].reasons, [Reason::Creditor]);
    assert!(all[3].selected);

    let sel = rows(
        &store,
        &c,
        &Filter {
            selected: Some(false),
            ..Filter::default()
        },
    );
    assert_eq!(sel.len(), 2);
    let key = rows(
        &store,
        &c,
        &Filter {
            scenario: Some("key".into()),
            ..Filter::default()
        },
    );
    assert_eq!(key.len(), 3, "C2 has no scenario");
    let err = Filter {
        scenario: Some("nope".into()),
        ..Filter::default()
    }
    .validate(&c)
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown scenario `nope`; configured scenarios: key, ent"
    );
}

#[tokio::test]
async fn scan_pages_resume_after_the_cursor_without_gaps_or_repeats() {
    let (_dir, store) = sample_store().await;
    let c = cfg(STD);
    let mut seen = Vec::new();
    let mut after: Option<CustomerKey> = None;
    let mut pages = 0;
    loop {
        // One row per page, or at most two customers looked at.
        let s = scan(
            &store,
            &c,
            &Filter::default(),
            date(AS_OF),
            after.as_ref(),
            1,
            2,
        )
        .unwrap();
        pages += 1;
        assert!(s.items.len() <= 1 && s.scanned <= 2);
        seen.extend(s.items.into_iter().map(|r| r.customer));
        if s.done {
            break;
        }
        after = s.last;
    }
    assert_eq!(seen, ["demo:C1", "demo:C2", "demo:C5", "demo:C6"]);
    assert!(pages >= 4);
}

#[tokio::test]
async fn stop_and_unstop_are_audited_and_change_the_selection() {
    let (_dir, store) = sample_store().await;
    let c = cfg(STD);
    let k1 = CustomerKey::new("demo", "C1");
    let out = flags::stop(&store, &k1, &req("asked us to stop"))
        .await
        .unwrap();
    assert!(out.changed && out.active);
    let row = &rows(&store, &c, &Filter::default())[0];
    assert_eq!(row.reasons, [Reason::Stopped]);
    // Setting it again changes nothing and writes no audit entry.
    let again = flags::stop(&store, &k1, &req("again")).await.unwrap();
    assert!(!again.changed && again.active, "{again:?}");
    assert!(
        again.message.contains("already stopped by alice"),
        "{}",
        again.message
    );
    let audit = store.audit(Some(&k1), 10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].actor.as_str(),
            audit[0].reason.as_str()
        ),
        ("stop", "alice", "asked us to stop")
    );
    let out = flags::unstop(&store, &k1, &req("paid a deposit"))
        .await
        .unwrap();
    assert!(out.changed && !out.active);
    assert!(rows(&store, &c, &Filter::default())[0].selected);
    let audit = store.audit(Some(&k1), 10).unwrap();
    assert_eq!(audit[0].action, "unstop");
    assert_eq!(audit[0].reason, "paid a deposit");
    let noop = flags::unstop(&store, &k1, &req("x")).await.unwrap();
    assert!(!noop.changed);
    assert_eq!(store.audit(Some(&k1), 10).unwrap().len(), 2);
}

#[tokio::test]
async fn refused_flag_changes_say_why_and_write_nothing() {
    let (_dir, store) = sample_store().await;
    let before = store.audit(None, 100).unwrap().len();
    let cases: Vec<(Result<flags::FlagOutcome, ReminderError>, &str)> = vec![
        (
            flags::stop(&store, &CustomerKey::new("demo", "C404"), &req("x")).await,
            "no customer demo:C404 in the store",
        ),
        (
            flags::stop(&store, &CustomerKey::new("demo", "C3"), &req("x")).await,
            "customer demo:C3 is excluded (native:inactive)",
        ),
        (
            flags::stop(&store, &CustomerKey::new("demo", "C1"), &req("  ")).await,
            "a reason is required",
        ),
        (
            flags::stop(
                &store,
                &CustomerKey::new("demo", "C1"),
                &Request {
                    actor: "",
                    ..req("x")
                },
            )
            .await,
            "`actor` must not be empty",
        ),
        (
            flags::unstop(&store, &CustomerKey::new("demo", "C404"), &req("x")).await,
            "no customer demo:C404",
        ),
        (
            flags::hold(&store, "demo", "I404", &req("x")).await,
            "no invoice demo:I404 in the store",
        ),
        (
            flags::hold(&store, "demo", "I1", &req(&"x".repeat(1001))).await,
            "longer than 1000 characters",
        ),
        (
            flags::release(&store, "demo", "I404", &req("x")).await,
            "no invoice demo:I404 in the store and no hold on it",
        ),
    ];
    for (res, needle) in cases {
        let err = res.expect_err(needle).to_string();
        assert!(err.contains(needle), "`{needle}` not in `{err}`");
    }
    assert_eq!(store.audit(None, 100).unwrap().len(), before);
    assert!(flags::stops(&store, 10).unwrap().0.is_empty());
    assert!(flags::holds(&store, 10).unwrap().0.is_empty());
    assert!(matches!(
        flags::stop(&store, &CustomerKey::new("demo", "C3"), &req("x")).await,
        Err(ReminderError::Conflict(_))
    ));
    assert!(matches!(
        flags::hold(&store, "demo", "I404", &req("x")).await,
        Err(ReminderError::NotFound(_))
    ));
}

#[tokio::test]
async fn holds_change_totals_survive_record_updates_and_release() {
    let (_dir, store) = sample_store().await;
    let c = cfg(STD);
    let out = flags::hold(&store, "demo", "I2", &req("disputed"))
        .await
        .unwrap();
    assert_eq!(out.customer, "demo:C1");
    assert_eq!(out.invoice.as_deref(), Some("demo:I2"));
    let row = &rows(&store, &c, &Filter::default())[0];
    assert_eq!(row.total_due["USD"], d("100"));
    assert_eq!(row.held_invoices, 1);

    // The ERP updates the invoice (a newer version arrives): the hold stays.
    store
        .write(|tx| {
            let mut inv = invoice("I2", "C1", "USD", "150", "2026-02-10");
            inv.last_modified = ts(50);
            tx.upsert_record("demo", &Record::Invoice(inv), false)
        })
        .await
        .unwrap();
    let row = &rows(&store, &c, &Filter::default())[0];
    assert_eq!(row.total_due["USD"], d("100"));
    let (holds, more) = flags::holds(&store, 10).unwrap();
    assert!(!more);
    assert_eq!(holds.len(), 1);
    assert_eq!(
        (holds[0].invoice.as_str(), holds[0].customer.as_str()),
        ("demo:I2", "demo:C1")
    );

    let audit = store
        .audit(Some(&CustomerKey::new("demo", "C1")), 10)
        .unwrap();
    assert_eq!(audit[0].action, "hold");
    assert_eq!(audit[0].reason, "invoice I2: disputed");

    flags::release(&store, "demo", "I2", &req("resolved"))
        .await
        .unwrap();
    let row = &rows(&store, &c, &Filter::default())[0];
    assert_eq!(row.total_due["USD"], d("250"));
    let noop = flags::release(&store, "demo", "I2", &req("again"))
        .await
        .unwrap();
    assert!(!noop.changed);
    assert!(noop.message.contains("was not on hold here"));
}

#[tokio::test]
async fn explain_says_where_a_customer_stands_and_why() {
    let (_dir, store) = sample_store().await;
    let c = cfg(STD);
    let as_of = date(AS_OF);
    let ex = |id: &str| explain_in(&store, &c, &CustomerKey::new("demo", id), as_of).unwrap();

    let e = ex("C1");
    assert_eq!(e.standing, Standing::Selected);
    assert!(e.listed && e.selected);
    assert_eq!(
        e.summary,
        "selected for reminding: scenario `key`, USD 300 due on 2 overdue invoice(s), the oldest due 2026-01-10"
    );
    let e = ex("C2");
    assert_eq!(e.standing, Standing::Unchecked);
    assert!(e.listed && !e.selected);
    assert_eq!(
        e.summary,
        "listed but not selected: no reminder scenario matches it"
    );
    let e = ex("C3");
    assert_eq!(e.standing, Standing::Excluded);
    assert!(!e.listed && e.candidate.is_none());
    assert!(
        e.summary.contains("excluded (native:inactive)"),
        "{}",
        e.summary
    );
    let e = ex("C4");
    assert_eq!(e.standing, Standing::NothingDue);
    assert!(
        e.summary.contains("nothing is overdue as of 2026-03-01"),
        "{}",
        e.summary
    );
    let e = ex("C5");
    assert!(
        e.summary.contains("creditor (balance -20)"),
        "{}",
        e.summary
    );

    flags::hold(&store, "demo", "I6", &req("in dispute"))
        .await
        .unwrap();
    let e = ex("C6");
    assert_eq!(e.standing, Standing::NothingDue);
    assert!(
        e.summary.contains("1 overdue invoice(s) are on hold"),
        "{}",
        e.summary
    );
    assert_eq!(e.held_invoices.len(), 1);
    assert_eq!(
        e.held_invoices[0].hold.as_ref().unwrap().reason,
        "in dispute"
    );

    flags::stop(&store, &CustomerKey::new("demo", "C1"), &req("lawyer"))
        .await
        .unwrap();
    let e = ex("C1");
    assert!(e.summary.contains("stopped by alice at"), "{}", e.summary);
    assert!(e.summary.ends_with(": lawyer"), "{}", e.summary);
    assert_eq!(e.stop.unwrap().reason, "lawyer");

    let err = explain_in(&store, &c, &CustomerKey::new("demo", "C9"), as_of).unwrap_err();
    assert!(matches!(err, ReminderError::NotFound(_)));
}

#[tokio::test]
async fn a_stop_with_an_end_date_lapses_by_itself_and_keeps_its_note() {
    let (_dir, store) = sample_store().await;
    let c = cfg(STD);
    let k1 = CustomerKey::new("demo", "C1");
    let terms = flags::StopTerms {
        until: Some(date(AS_OF)),
        note: Some("  plan: 3 instalments  ".into()),
    };
    let out = flags::stop_with(&store, &k1, &req("payment plan"), &terms)
        .await
        .unwrap();
    assert!(out.changed && out.active);
    assert!(out.message.contains("until 2026-03-01"), "{}", out.message);
    let flag = flags::stop_flag(&store, &k1).unwrap().unwrap();
    assert_eq!(flag.note.as_deref(), Some("plan: 3 instalments"));
    assert_eq!(flag.until, Some(date(AS_OF)));
    let audit = &store.audit(Some(&k1), 1).unwrap()[0];
    assert_eq!(
        audit.reason,
        "payment plan; until 2026-03-01; note: plan: 3 instalments"
    );
    // The last day of the STOP still counts; the day after, it is selected.
    let on = |day: &str| {
        scan(
            &store,
            &c,
            &Filter::default(),
            date(day),
            None,
            usize::MAX,
            u64::MAX,
        )
        .unwrap()
        .items
        .into_iter()
        .find(|r| r.customer == "demo:C1")
        .unwrap()
    };
    assert_eq!(on(AS_OF).reasons, [Reason::Stopped]);
    let next = on("2026-03-02");
    assert!(next.selected, "{next:?}");
    let e = explain_in(&store, &c, &k1, date("2026-03-02")).unwrap();
    assert!(e.stop.is_none() && e.selected, "{e:?}");

    // A flag still in force is not replaced; one that lapsed is.
    let later = Request {
        now: Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
        ..req("again")
    };
    let same = flags::stop(&store, &k1, &later).await.unwrap();
    assert!(!same.changed, "{same:?}");
    assert!(same.message.contains("already stopped until 2026-03-01"));
    let after = Request {
        now: Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(),
        ..req("stopped again")
    };
    let again = flags::stop(&store, &k1, &after).await.unwrap();
    assert!(again.changed, "{again:?}");
    assert_eq!(flags::stop_flag(&store, &k1).unwrap().unwrap().until, None);
}

#[tokio::test]
async fn a_stop_ending_in_the_past_or_with_a_huge_note_is_refused_and_writes_nothing() {
    let (_dir, store) = sample_store().await;
    let k1 = CustomerKey::new("demo", "C1");
    let before = store.audit(None, 100).unwrap().len();
    let now = Request {
        now: Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
        ..req("x")
    };
    let past = flags::StopTerms {
        until: Some(date("2026-02-28")),
        note: None,
    };
    let err = flags::stop_with(&store, &k1, &now, &past)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`until` 2026-02-28 is in the past; a STOP ends today (2026-03-01) or later"
    );
    let long = flags::StopTerms {
        until: None,
        note: Some("n".repeat(flags::MAX_REASON_CHARS + 1)),
    };
    let err = flags::stop_with(&store, &k1, &now, &long)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("note is longer than"), "{err}");
    assert!(flags::stop_flag(&store, &k1).unwrap().is_none());
    assert_eq!(store.audit(None, 100).unwrap().len(), before);
}
