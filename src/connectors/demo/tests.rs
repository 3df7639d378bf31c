use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use rust_decimal::Decimal;

use super::*;
use crate::connectors::budget::Limits;
use crate::model::{Customer, Invoice, InvoiceStatus, Transaction, TransactionKind};

fn small() -> DemoOptions {
    DemoOptions {
        customers: 200,
        invoices: 3000,
        transactions: 2000,
        page_size: 50,
        trickle: 0,
        ..DemoOptions::default()
    }
}

fn budget() -> Arc<Budget> {
    Budget::new(Limits {
        requests_per_second: 1e6,
        burst: 100_000,
        max_concurrency: 8,
        ..Limits::default()
    })
}

fn connector(options: &DemoOptions) -> DemoConnector {
    build(options, budget())
}

/// Reads a customers stream until caught up; returns items, deletions, the
/// final cursor and the number of pages.
async fn drain_customers(c: &DemoConnector, cursor: &Cursor) -> (Vec<Customer>, Cursor, usize) {
    let (mut items, mut cursor, mut pages) = (Vec::new(), cursor.clone(), 0);
    loop {
        let page = c.fetch_customers(&cursor).await.unwrap();
        assert!(page.items.len() <= c.page_size());
        assert!(page.deleted.is_empty());
        pages += 1;
        items.extend(page.items);
        cursor = page.next;
        if !page.has_more {
            return (items, cursor, pages);
        }
    }
}

async fn drain_records(
    c: &DemoConnector,
    entity: Entity,
    cursor: &Cursor,
) -> (Vec<Record>, Vec<String>, Cursor) {
    let (mut items, mut deleted, mut cursor) = (Vec::new(), Vec::new(), cursor.clone());
    loop {
        let page = c.fetch_records(entity, &cursor).await.unwrap();
        assert!(page.items.len() + page.deleted.len() <= c.page_size());
        items.extend(page.items);
        deleted.extend(page.deleted);
        cursor = page.next;
        if !page.has_more {
            return (items, deleted, cursor);
        }
    }
}

async fn drain_customer_set(c: &DemoConnector, entity: Entity, ids: &[String]) -> Vec<Record> {
    let (mut items, mut cursor) = (Vec::new(), Cursor::start());
    loop {
        let page = c
            .fetch_records_for_customers(entity, ids, &cursor)
            .await
            .unwrap();
        assert!(page.items.len() <= c.page_size());
        items.extend(page.items);
        cursor = page.next;
        if !page.has_more {
            return items;
        }
    }
}

fn ids<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    items.into_iter().map(str::to_owned).collect()
}

// Snapshots with the clock-dependent parts (timestamps, dates) blanked.
fn stripped_customers(erp: &DemoErp) -> Vec<Customer> {
    let epoch = chrono::DateTime::UNIX_EPOCH;
    erp.customers()
        .into_iter()
        .map(|c| Customer {
            last_modified: epoch,
            ..c
        })
        .collect()
}

fn stripped_invoices(erp: &DemoErp) -> Vec<Invoice> {
    erp.invoices()
        .into_iter()
        .map(|i| Invoice {
            last_modified: chrono::DateTime::UNIX_EPOCH,
            issue_date: NaiveDate::MIN,
            due_date: NaiveDate::MIN,
            ..i
        })
        .collect()
}

fn stripped_transactions(erp: &DemoErp) -> Vec<Transaction> {
    erp.transactions()
        .into_iter()
        .map(|t| Transaction {
            last_modified: chrono::DateTime::UNIX_EPOCH,
            date: NaiveDate::MIN,
            ..t
        })
        .collect()
}

/// Ids of all records in last-modified order: the stream order.
fn modification_order(erp: &DemoErp) -> Vec<String> {
    let mut all: Vec<(chrono::DateTime<Utc>, String)> = Vec::new();
    all.extend(
        erp.customers()
            .into_iter()
            .map(|c| (c.last_modified, c.external_id)),
    );
    all.extend(
        erp.invoices()
            .into_iter()
            .map(|i| (i.last_modified, i.external_id)),
    );
    all.extend(
        erp.transactions()
            .into_iter()
            .map(|t| (t.last_modified, t.external_id)),
    );
    all.sort();
    all.into_iter().map(|(_, id)| id).collect()
}

fn assert_same_data(a: &DemoErp, b: &DemoErp) {
    assert_eq!(stripped_customers(a), stripped_customers(b));
    assert_eq!(stripped_invoices(a), stripped_invoices(b));
    assert_eq!(stripped_transactions(a), stripped_transactions(b));
    assert_eq!(modification_order(a), modification_order(b));
}

#[test]
fn same_seed_generates_the_same_erp() {
    let a = DemoErp::new(&small());
    let b = DemoErp::new(&small());
    assert_same_data(&a, &b);

    let other = DemoErp::new(&DemoOptions { seed: 7, ..small() });
    assert_ne!(stripped_invoices(&a), stripped_invoices(&other));
}

#[test]
fn default_erp_looks_like_a_real_ledger() {
    let erp = DemoErp::new(&DemoOptions::default());
    let now = Utc::now();
    let today = now.date_naive();
    let customers = erp.customers();
    let invoices = erp.invoices();
    let transactions = erp.transactions();
    assert_eq!(
        (customers.len(), invoices.len(), transactions.len()),
        (2000, 40_000, 30_000)
    );
    assert_eq!(customers[0].external_id, "C00001");
    assert_eq!(customers[1999].external_id, "C02000");
    assert_eq!(invoices[0].external_id, "INV000001");

    // Flags on exact shares of the customers.
    assert_eq!(customers.iter().filter(|c| c.inactive).count(), 60);
    assert_eq!(customers.iter().filter(|c| c.intercompany).count(), 20);

    let currency_of = BTreeMap::from([("US", "USD"), ("UK", "GBP"), ("DE", "EUR")]);
    let mut subsidiaries = BTreeSet::new();
    for c in &customers {
        let sub = c.subsidiary.as_deref().unwrap();
        assert_eq!(c.currency.as_deref(), Some(currency_of[sub]), "{c:?}");
        subsidiaries.insert(sub);
        assert!(["smb", "mid", "enterprise"].contains(&c.custom["segment"].as_str()));
        assert!(c.custom.contains_key("region"));
        assert!(c.balance.scale() <= 2);
    }
    assert_eq!(subsidiaries.len(), 3);
    let tests = customers
        .iter()
        .filter(|c| c.name.to_lowercase().contains("test"))
        .count();
    assert!((10..100).contains(&tests), "{tests} test customers");
    let example = customers
        .iter()
        .filter(|c| {
            c.email
                .as_deref()
                .is_some_and(|e| e.ends_with("@example.com"))
        })
        .count();
    assert!(
        (10..100).contains(&example),
        "{example} @example.com emails"
    );
    let creditors = customers
        .iter()
        .filter(|c| c.balance < Decimal::ZERO)
        .count();
    assert!((1..=40).contains(&creditors), "{creditors} creditors");

    let by_id: BTreeMap<&str, &Customer> = customers
        .iter()
        .map(|c| (c.external_id.as_str(), c))
        .collect();
    let mut per_customer: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut on_hold, mut past_due) = (0, 0);
    for i in &invoices {
        let c = by_id[i.customer_id.as_str()];
        *per_customer.entry(&i.customer_id).or_default() += 1;
        assert_eq!(Some(&i.currency), c.currency.as_ref());
        assert_eq!(i.due_date, i.issue_date + Days::new(30));
        assert!(i.issue_date <= today && i.issue_date >= today - Days::new(548));
        assert!(i.total > Decimal::ZERO && i.total.scale() == 2);
        match i.status {
            InvoiceStatus::Paid => assert_eq!(i.amount_due, Decimal::ZERO),
            InvoiceStatus::Open => assert!(i.amount_due > Decimal::ZERO && i.amount_due <= i.total),
            other => panic!("unexpected status {other:?}"),
        }
        on_hold += usize::from(i.on_hold);
        past_due += usize::from(i.status == InvoiceStatus::Open && i.due_date < today);
    }
    assert!((400..1200).contains(&on_hold), "{on_hold} on hold");
    assert!(past_due > 100, "{past_due} past due");
    let busiest = per_customer.values().max().copied().unwrap();
    assert!(
        busiest > 5 * 40_000 / 2000,
        "busiest customer has {busiest}"
    );

    let mut kinds = BTreeSet::new();
    for t in &transactions {
        assert!(by_id.contains_key(t.customer_id.as_str()));
        let prefix = match t.kind {
            TransactionKind::Payment => "PMT",
            TransactionKind::CreditNote => "CRN",
        };
        assert!(t.external_id.starts_with(prefix), "{t:?}");
        assert!(t.amount > Decimal::ZERO);
        kinds.insert(prefix);
    }
    assert_eq!(kinds.len(), 2);

    // Distinct last-modified times within the past year (and a day).
    let stamps: Vec<_> = customers
        .iter()
        .map(|c| c.last_modified)
        .chain(invoices.iter().map(|i| i.last_modified))
        .chain(transactions.iter().map(|t| t.last_modified))
        .collect();
    assert_eq!(stamps.iter().collect::<HashSet<_>>().len(), stamps.len());
    let oldest = now - chrono::Duration::days(367);
    assert!(stamps.iter().all(|t| *t <= now && *t > oldest));
}

#[tokio::test]
async fn paging_returns_every_customer_exactly_once_in_stream_order() {
    let c = connector(&DemoOptions {
        page_size: 37,
        ..small()
    });
    let (items, cursor, pages) = drain_customers(&c, &Cursor::start()).await;
    assert_eq!(pages, 200usize.div_ceil(37));
    let keys: Vec<_> = items
        .iter()
        .map(|c| (c.last_modified, c.external_id.clone()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "not in stream order");
    let mut read: Vec<Customer> = items;
    read.sort_by(|a, b| a.external_id.cmp(&b.external_id));
    assert_eq!(read, c.erp().customers());

    // Caught up: nothing more, cursor unchanged.
    let page = c.fetch_customers(&cursor).await.unwrap();
    assert!(page.items.is_empty() && page.deleted.is_empty() && !page.has_more);
    assert_eq!(page.next, cursor);
}

#[tokio::test]
async fn incremental_reads_return_only_changes_and_deletions() {
    let c = connector(&small());
    let erp = Arc::clone(c.erp());
    let (_, customers_at, _) = drain_customers(&c, &Cursor::start()).await;
    let (all_invoices, _, invoices_at) =
        drain_records(&c, Entity::Invoices, &Cursor::start()).await;
    assert_eq!(all_invoices.len(), 3000);
    let (_, _, transactions_at) = drain_records(&c, Entity::Transactions, &Cursor::start()).await;

    assert!(erp.set_customer_inactive("C00003", true));
    assert!(erp.update_invoice("INV000010", |i| i.on_hold = !i.on_hold));
    let template = erp.invoices()[0].clone();
    let added = erp.add_invoice(Invoice {
        external_id: String::new(),
        customer_id: "C00005".into(),
        ..template
    });
    assert_eq!(added.external_id, "INV003001");
    assert!(erp.delete_invoice("INV000020"));
    assert!(!erp.delete_invoice("INV999999"));
    let gone_tx = erp.transactions()[0].external_id.clone();
    assert!(erp.delete_transaction(&gone_tx));
    let tx = erp.add_transaction(Transaction {
        external_id: String::new(),
        kind: TransactionKind::CreditNote,
        customer_id: "C00005".into(),
        date: Utc::now().date_naive(),
        amount: Decimal::new(1234, 2),
        currency: "USD".into(),
        last_modified: Utc::now(),
    });
    assert!(tx.external_id.starts_with("CRN"));

    let (changed, customers_at2, _) = drain_customers(&c, &customers_at).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].external_id, "C00003");
    assert!(changed[0].inactive);

    let (items, deleted, invoices_at2) = drain_records(&c, Entity::Invoices, &invoices_at).await;
    let item_ids: Vec<&str> = items.iter().map(Record::external_id).collect();
    assert_eq!(item_ids, ["INV000010", "INV003001"]);
    assert_eq!(deleted, ["INV000020"]);
    let upstream: BTreeMap<String, Invoice> = erp
        .invoices()
        .into_iter()
        .map(|i| (i.external_id.clone(), i))
        .collect();
    for r in &items {
        let Record::Invoice(i) = r else {
            panic!("not an invoice: {r:?}")
        };
        assert_eq!(i, &upstream[&i.external_id]);
    }

    let (items, deleted, transactions_at2) =
        drain_records(&c, Entity::Transactions, &transactions_at).await;
    assert_eq!(items, [Record::Transaction(tx)]);
    assert_eq!(deleted, [gone_tx]);

    // Nothing changed since: every stream is caught up.
    assert!(drain_customers(&c, &customers_at2).await.0.is_empty());
    let (i, d, _) = drain_records(&c, Entity::Invoices, &invoices_at2).await;
    assert!(i.is_empty() && d.is_empty());
    let (i, d, _) = drain_records(&c, Entity::Transactions, &transactions_at2).await;
    assert!(i.is_empty() && d.is_empty());
}

#[tokio::test]
async fn deletions_share_the_ordered_stream_across_pages() {
    let c = connector(&DemoOptions {
        page_size: 1,
        ..small()
    });
    let erp = Arc::clone(c.erp());
    let (_, _, cursor) = drain_records(&c, Entity::Invoices, &Cursor::start()).await;
    erp.update_invoice("INV000001", |i| i.on_hold = true);
    erp.delete_invoice("INV000002");
    erp.update_invoice("INV000003", |i| i.on_hold = true);
    // Re-deleting is a no-op; deleting after an update moves the id to the tombstone.
    assert!(!erp.delete_invoice("INV000002"));
    erp.delete_invoice("INV000003");

    let mut seen = Vec::new();
    let mut cursor = cursor;
    loop {
        let page = c.fetch_records(Entity::Invoices, &cursor).await.unwrap();
        assert_eq!(page.items.len() + page.deleted.len(), 1);
        seen.extend(page.items.iter().map(|r| format!("+{}", r.external_id())));
        seen.extend(page.deleted.iter().map(|id| format!("-{id}")));
        cursor = page.next;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, ["+INV000001", "-INV000002", "-INV000003"]);
}

#[tokio::test]
async fn customer_set_reads_return_exactly_those_customers_records() {
    let c = connector(&DemoOptions {
        page_size: 7,
        ..small()
    });
    let erp = Arc::clone(c.erp());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in erp.invoices() {
        *counts.entry(i.customer_id).or_default() += 1;
    }
    let busiest = counts.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    let set = ids([busiest.as_str(), "C00002", "C00050", "C00123", "C00200"]);
    let victim = erp
        .invoices()
        .into_iter()
        .find(|i| i.customer_id == busiest)
        .unwrap()
        .external_id;
    erp.delete_invoice(&victim);

    let got = drain_customer_set(&c, Entity::Invoices, &set).await;
    let want: Vec<Record> = erp
        .invoices()
        .into_iter()
        .filter(|i| set.contains(&i.customer_id))
        .map(Record::Invoice)
        .collect();
    assert!(want.len() > 7, "needs several pages");
    assert_eq!(got, want, "all of them, by id, once");
    assert!(got.iter().all(|r| r.external_id() != victim));

    let got = drain_customer_set(&c, Entity::Transactions, &set).await;
    let want: Vec<Record> = erp
        .transactions()
        .into_iter()
        .filter(|t| set.contains(&t.customer_id))
        .map(Record::Transaction)
        .collect();
    assert_eq!(got, want);

    let too_many: Vec<String> = (1..=101).map(|n| format!("C{n:05}")).collect();
    let err = c
        .fetch_records_for_customers(Entity::Invoices, &too_many, &Cursor::start())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Rejected { status: 400, .. }),
        "{err}"
    );
    let err = c
        .fetch_records_for_customers(Entity::Customers, &set, &Cursor::start())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config(_)), "{err}");
}

#[tokio::test]
async fn every_fetch_is_one_budgeted_request_on_its_lane() {
    let budget = budget();
    let c = build(&small(), Arc::clone(&budget));
    let stats = || {
        let s = budget.stats();
        (s.poll_requests, s.resync_requests)
    };
    c.fetch_customers(&Cursor::start()).await.unwrap();
    assert_eq!(stats(), (1, 0));
    let page = c
        .fetch_records(Entity::Invoices, &Cursor::start())
        .await
        .unwrap();
    c.fetch_records(Entity::Invoices, &page.next).await.unwrap();
    c.fetch_records(Entity::Transactions, &Cursor::start())
        .await
        .unwrap();
    assert_eq!(stats(), (4, 0));
    c.fetch_records_for_customers(
        Entity::Invoices,
        &ids(["C00001", "C00002"]),
        &Cursor::start(),
    )
    .await
    .unwrap();
    assert_eq!(stats(), (4, 1));

    // A cursor the ERP cannot read is refused before any request is made.
    let err = c
        .fetch_records(Entity::Invoices, &Cursor("garbage".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(stats(), (4, 1));
}

#[test]
fn trickle_is_deterministic_and_keeps_the_ledger_consistent() {
    let a = DemoErp::new(&small());
    let b = DemoErp::new(&small());
    let before = stripped_invoices(&a);
    for _ in 0..3 {
        a.trickle(50);
        b.trickle(50);
    }
    assert_eq!(a.trickle_passes(), 3);
    assert_same_data(&a, &b);
    assert_ne!(stripped_invoices(&a), before);
    assert!(a.invoices().len() > 3000, "new invoices arrived");

    let customers: HashSet<String> = a.customers().into_iter().map(|c| c.external_id).collect();
    for i in a.invoices() {
        assert!(customers.contains(&i.customer_id));
        assert!(i.amount_due >= Decimal::ZERO && i.amount_due <= i.total);
        assert_eq!(
            i.status == InvoiceStatus::Paid,
            i.amount_due.is_zero(),
            "{i:?}"
        );
    }
    assert!(a
        .transactions()
        .iter()
        .all(|t| customers.contains(&t.customer_id)));

    a.trickle(0);
    assert_eq!(a.trickle_passes(), 3, "trickle 0 is not a pass");

    // An empty ERP grows customers rather than failing.
    let empty = DemoErp::new(&DemoOptions {
        customers: 0,
        invoices: 0,
        transactions: 0,
        ..small()
    });
    empty.trickle(5);
    assert!(!empty.customers().is_empty());
}

#[tokio::test]
async fn connector_trickles_once_at_the_start_of_each_pass() {
    let c = connector(&DemoOptions {
        trickle: 10,
        ..small()
    });
    let erp = Arc::clone(c.erp());
    assert_eq!(erp.trickle_passes(), 0);
    let first = c.fetch_customers(&Cursor::start()).await.unwrap();
    assert!(first.has_more);
    assert_eq!(erp.trickle_passes(), 1);
    let (_, customers_at, _) = drain_customers(&c, &first.next).await;
    assert_eq!(
        erp.trickle_passes(),
        1,
        "no trickle in the middle of a pass"
    );
    let (_, _, invoices_at) = drain_records(&c, Entity::Invoices, &Cursor::start()).await;

    // The next pass starts with a trickle, whose changes the pass then reads.
    c.fetch_customers(&customers_at).await.unwrap();
    assert_eq!(erp.trickle_passes(), 2);
    let (items, _, _) = drain_records(&c, Entity::Invoices, &invoices_at).await;
    assert!(!items.is_empty());

    // With trickle = 0 the data never changes.
    let frozen = connector(&small());
    let (_, at, _) = drain_customers(&frozen, &Cursor::start()).await;
    let (_, _, inv_at) = drain_records(&frozen, Entity::Invoices, &Cursor::start()).await;
    assert!(drain_customers(&frozen, &at).await.0.is_empty());
    assert!(drain_records(&frozen, Entity::Invoices, &inv_at)
        .await
        .0
        .is_empty());
    assert_eq!(frozen.erp().trickle_passes(), 0);
}

#[tokio::test]
async fn requests_take_the_configured_latency() {
    let c = connector(&DemoOptions {
        latency_ms: 20,
        customers: 3,
        invoices: 0,
        transactions: 0,
        ..small()
    });
    let start = Instant::now();
    c.fetch_customers(&Cursor::start()).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(20));
}

#[test]
fn options_validation_names_every_problem() {
    let msgs = |o: &DemoOptions| -> Vec<String> {
        o.validate()
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect()
    };
    assert_eq!(msgs(&DemoOptions::default()), Vec::<String>::new());
    let bad = DemoOptions {
        page_size: 0,
        inactive_ratio: 1.5,
        intercompany_ratio: f64::NAN,
        customers: 0,
        invoices: 10,
        transactions: 0,
        ..DemoOptions::default()
    };
    assert_eq!(
        msgs(&bad),
        [
            "page_size: must be between 1 and 1000 (got 0)",
            "inactive_ratio: must be between 0 and 1 (got 1.5)",
            "intercompany_ratio: must be between 0 and 1 (got NaN)",
            "invoices: invoices need customers to belong to: set customers above 0 or invoices to 0 (got invoices = 10)",
        ]
    );
    let big = DemoOptions {
        page_size: 1001,
        latency_ms: 60_001,
        ..DemoOptions::default()
    };
    assert_eq!(
        msgs(&big),
        [
            "page_size: must be between 1 and 1000 (got 1001)",
            "latency_ms: must be at most 60000 (got 60001)",
        ]
    );

    let parsed: DemoOptions = toml::from_str("seed = 7\ntrickle = 0").unwrap();
    assert_eq!(
        parsed,
        DemoOptions {
            seed: 7,
            trickle: 0,
            ..DemoOptions::default()
        }
    );
    let err = toml::from_str::<DemoOptions>("pagesize = 3").unwrap_err();
    assert!(err.to_string().contains("pagesize"), "{err}");
}

#[tokio::test]
async fn a_partitioned_first_sync_reads_every_row_once_and_then_what_changed() {
    let c = connector(&DemoOptions {
        page_size: 50,
        ..small()
    });
    let erp = Arc::clone(c.erp());
    let plan = c.partition(Entity::Invoices, 4).await.unwrap().unwrap();
    assert_eq!(plan.ranges.len(), 4);
    // Changes made after the plan: a deletion and a new invoice.
    let all: Vec<String> = erp.invoices().into_iter().map(|i| i.external_id).collect();
    assert!(erp.delete_invoice(&all[3]));
    let owner = erp.customers()[0].external_id.clone();
    let template = erp.invoices()[0].clone();
    let added = erp.add_invoice(Invoice {
        external_id: String::new(),
        customer_id: owner,
        ..template
    });
    let mut seen = Vec::new();
    for r in &plan.ranges {
        let mut cur = r.clone();
        loop {
            let p = c.fetch_records(Entity::Invoices, &cur).await.unwrap();
            assert!(p.items.len() <= 50);
            seen.extend(p.items.iter().map(|r| r.external_id().to_string()));
            cur = p.next;
            if !p.has_more {
                break;
            }
        }
    }
    // Every invoice that existed at the plan and is still live, once, in id
    // order (the ranges are in order and do not overlap); the one added
    // after the plan is past the last range.
    let expected: Vec<String> = erp
        .invoices()
        .into_iter()
        .map(|i| i.external_id)
        .filter(|id| *id != added.external_id)
        .collect();
    assert!(
        seen == expected,
        "{} read, {} expected",
        seen.len(),
        expected.len()
    );
    // The incremental stream from `then` brings the deletion and the new one.
    let p = c.fetch_records(Entity::Invoices, &plan.then).await.unwrap();
    assert_eq!(p.deleted, vec![all[3].clone()]);
    let ids: Vec<&str> = p.items.iter().map(|r| r.external_id()).collect();
    assert_eq!(ids, vec![added.external_id.as_str()]);
    // An entity of one page is not split, and range reads never trickle.
    let tiny = connector(&DemoOptions {
        customers: 3,
        invoices: 10,
        transactions: 0,
        trickle: 5,
        ..small()
    });
    assert_eq!(tiny.partition(Entity::Invoices, 4).await.unwrap(), None);
    let big = connector(&DemoOptions {
        page_size: 10,
        trickle: 5,
        ..small()
    });
    let plan = big.partition(Entity::Customers, 3).await.unwrap().unwrap();
    assert_eq!(plan.ranges.len(), 3);
    big.fetch_customers(&plan.ranges[1]).await.unwrap();
    assert_eq!(big.erp().trickle_passes(), 0);
}
