//! Parallel entity streams, one page of prefetch per stream and partitioned
//! first syncs, inside the connector's budget: against the NetSuite mock
//! (in-process engine and the real binary killed with SIGKILL) and the demo
//! ERP. The store must end up equal to upstream, the mock must never see
//! more requests in flight than `max_concurrency`, and records that arrive
//! before their customer must be parked and released.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use erpsync::app::{App, ConnectorHandle};
use erpsync::connectors::demo::{DemoConnector, DemoErp, DemoOptions};
use erpsync::connectors::{
    Budget, Connector, ConnectorError, Cursor, Page, Partitioning, REGISTRY,
};
use erpsync::model::{Customer, Entity, Record};
use erpsync::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use crate::daemon::assert_equals_erp;
use crate::fault_matrix::{assert_store_equals_mock, change_data, converge};
use crate::netsuite_mock::{MockConfig, MockNetsuite};
use crate::support::{free_port, small_demo, Daemon, Setup};

/// Writes a daemon config for the mock with `max_concurrency` and
/// `page_size`; returns its path.
fn netsuite_config(
    mock: &MockNetsuite,
    dir: &Path,
    port: u16,
    max_concurrency: u32,
    page_size: u32,
) -> std::path::PathBuf {
    let path = crate::netsuite_daemon::write_config(
        mock,
        dir,
        port,
        &mock.config().credentials.token_secret.clone(),
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "requests_per_second = 200, burst = 50, max_concurrency = 3",
            &format!(
                "requests_per_second = 10000, burst = 1000, max_concurrency = {max_concurrency}"
            ),
        )
        .replace("page_size = 250", &format!("page_size = {page_size}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The daemon's app for `config`, built in-process (no HTTP, no poller).
fn app_for(config: &Path) -> Arc<App> {
    let cfg = erpsync::config::load(config, &REGISTRY).unwrap();
    erpsync::daemon::build(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_ranges_never_exceed_max_concurrency_and_converge() {
    // 30 ms per answer makes requests overlap whenever the engine lets them.
    let mock = MockNetsuite::start(MockConfig {
        latency: Duration::from_millis(30),
        concurrency_limit: 50,
        ..MockConfig::default()
    })
    .await;
    for max_concurrency in [1u32, 3] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = netsuite_config(&mock, dir.path(), free_port(), max_concurrency, 100);
        let app = app_for(&cfg);
        let h = Arc::clone(&app.connectors[0]);
        mock.reset_stats();
        let stats = erpsync::sync::sync_pass(&app, &h).await.unwrap();
        let seen = mock.stats();
        assert_eq!(seen.rate_limited, 0);
        assert!(
            seen.max_in_flight <= max_concurrency as usize,
            "{} requests in flight with max_concurrency {max_concurrency}",
            seen.max_in_flight
        );
        assert_eq!(
            h.budget.stats().max_in_flight_seen,
            seen.max_in_flight,
            "the budget and the mock agree"
        );
        assert!(stats.received > 0);
        let queries = mock.recent_queries().join("\n");
        for entity in Entity::ALL {
            assert!(app.store.partitions("ns", entity).unwrap().is_empty());
            assert!(app.store.cursor("ns", entity).unwrap().is_some());
        }
        if max_concurrency == 1 {
            // One request at a time: nothing to gain from ranges.
            assert_eq!(seen.max_in_flight, 1);
            assert!(!queries.contains("MIN("), "{queries}");
        } else {
            // Three streams, split into ranges: the cap is reached.
            assert_eq!(seen.max_in_flight, max_concurrency as usize);
        }
        let store = Arc::clone(&app.store);
        drop(app);
        tokio::task::block_in_place(|| {
            assert_store_equals_mock(&store, &mock, &format!("max_concurrency {max_concurrency}"))
        });
        drop(store);
        // The next pass reads incrementally from the cursor taken before
        // the ranges: a change made now is picked up, nothing else.
        let invoices = mock.ids("transaction", Some("CustInvc"));
        mock.update("transaction", invoices[7], &[("foreigntotal", "123.45")]);
        mock.insert_invoice(mock.ids("customer", None)[3], "77.00");
        mock.delete("transaction", mock.ids("transaction", Some("CustPymt"))[2]);
        let app = app_for(&cfg);
        let h = Arc::clone(&app.connectors[0]);
        erpsync::sync::sync_pass(&app, &h).await.unwrap();
        let store = Arc::clone(&app.store);
        drop(app);
        tokio::task::block_in_place(|| {
            assert_store_equals_mock(&store, &mock, "incremental after a partitioned first sync")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_is_split_into_ranges_each_with_its_own_cursor() {
    let mock = MockNetsuite::start(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = netsuite_config(&mock, dir.path(), free_port(), 4, 100);
    let app = app_for(&cfg);
    let h = Arc::clone(&app.connectors[0]);
    let plan = h.connector.partition(Entity::Invoices, 4).await.unwrap();
    let plan = plan.expect("1,500 invoices in pages of 100 are split");
    assert_eq!(plan.ranges.len(), 4);
    let queries = mock.recent_queries();
    assert_eq!(
        queries.last().unwrap(),
        "SELECT MIN(t.id) AS lo, MAX(t.id) AS hi, COUNT(t.id) AS n FROM transaction t WHERE t.type IN ('CustInvc')"
    );
    // A range reads its ids only, by keyset, and ends without deletions.
    let first = h
        .connector
        .fetch_records(Entity::Invoices, &plan.ranges[0])
        .await
        .unwrap();
    let q = mock.recent_queries().last().unwrap().clone();
    assert!(q.contains("AND t.id <= "), "{q}");
    assert!(!q.contains("lastmodifieddate >="), "{q}");
    assert!(first.has_more);
    // Unknown ranges are refused without changing anything.
    let err = app
        .store
        .write(|tx| tx.set_partition_cursor("ns", Entity::Invoices, 9, "x", true))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no range 9 of a partitioned invoices sync of connector `ns`"
    );
    assert!(app
        .store
        .partitions("ns", Entity::Invoices)
        .unwrap()
        .is_empty());
    assert_eq!(app.store.cursor("ns", Entity::Invoices).unwrap(), None);

    // Stored ranges: done ones are skipped, the plan's cursor waits in
    // `cursors`, and the last range done forgets them all.
    let ranges: Vec<String> = plan.ranges.iter().map(|c| c.0.clone()).collect();
    app.store
        .write(|tx| tx.start_partitions("ns", Entity::Invoices, &plan.then.0, &ranges))
        .await
        .unwrap();
    let stored = app.store.partitions("ns", Entity::Invoices).unwrap();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|p| !p.done));
    assert_eq!(
        app.store.cursor("ns", Entity::Invoices).unwrap().as_deref(),
        Some(plan.then.0.as_str())
    );
    for part in 0..3 {
        let all_done = app
            .store
            .write(|tx| tx.set_partition_cursor("ns", Entity::Invoices, part, "end", true))
            .await
            .unwrap();
        assert!(!all_done);
    }
    assert_eq!(
        app.store
            .partitions("ns", Entity::Invoices)
            .unwrap()
            .iter()
            .filter(|p| p.done)
            .count(),
        3
    );
    let all_done = app
        .store
        .write(|tx| tx.set_partition_cursor("ns", Entity::Invoices, 3, "end", true))
        .await
        .unwrap();
    assert!(all_done);
    assert!(app
        .store
        .partitions("ns", Entity::Invoices)
        .unwrap()
        .is_empty());
}

/// The demo connector, with every customers page after the first (which
/// opens the pass) held back until every record stream has been read to
/// its end.
struct CustomersLast {
    inner: DemoConnector,
    records_done: [AtomicBool; 2],
    wake: Notify,
}

#[async_trait]
impl Connector for CustomersLast {
    async fn fetch_customers(&self, cursor: &Cursor) -> Result<Page<Customer>, ConnectorError> {
        while !cursor.is_start() && !self.records_done.iter().all(|d| d.load(Ordering::SeqCst)) {
            let woken = self.wake.notified();
            if self.records_done.iter().all(|d| d.load(Ordering::SeqCst)) {
                break;
            }
            woken.await;
        }
        self.inner.fetch_customers(cursor).await
    }

    async fn fetch_records(
        &self,
        entity: Entity,
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        let page = self.inner.fetch_records(entity, cursor).await?;
        if !page.has_more {
            let i = usize::from(entity == Entity::Transactions);
            self.records_done[i].store(true, Ordering::SeqCst);
            self.wake.notify_waiters();
        }
        Ok(page)
    }

    async fn fetch_records_for_customers(
        &self,
        entity: Entity,
        customer_ids: &[String],
        cursor: &Cursor,
    ) -> Result<Page<Record>, ConnectorError> {
        self.inner
            .fetch_records_for_customers(entity, customer_ids, cursor)
            .await
    }

    async fn partition(
        &self,
        _entity: Entity,
        _max_parts: usize,
    ) -> Result<Option<Partitioning>, ConnectorError> {
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_before_their_customers_are_parked_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_demo();
    let setup_text = format!(
        "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n{}",
        crate::support::demo_toml(&opts)
    );
    let path = dir.path().join("erpsync.toml");
    std::fs::write(&path, setup_text).unwrap();
    let cfg = erpsync::config::load(&path, &REGISTRY).unwrap();
    std::fs::create_dir_all(&cfg.daemon.state_dir).unwrap();
    let store = Arc::new(Store::open(&cfg.daemon.state_dir).unwrap());
    let cc = cfg.connectors[0].clone();
    let budget = Budget::new(cc.limits);
    let inner = DemoConnector::new(
        DemoErp::new(&opts),
        Arc::clone(&budget),
        opts.page_size,
        Duration::ZERO,
    );
    let conn = CustomersLast {
        inner,
        records_done: [AtomicBool::new(false), AtomicBool::new(false)],
        wake: Notify::new(),
    };
    let h = Arc::new(ConnectorHandle::new(cc, Arc::new(conn), budget));
    let app = App::new(cfg, Arc::clone(&store), vec![Arc::clone(&h)], None);
    let stats = erpsync::sync::sync_pass(&app, &h).await.unwrap();
    // The records of every customer after the first page arrived before
    // their customer: parked, then released or (for excluded customers)
    // dropped when the customer came.
    let erp = DemoErp::new(&opts);
    // The first page of the change stream: the oldest changes first.
    let mut in_stream_order = erp.customers();
    in_stream_order
        .sort_by(|a, b| (a.last_modified, &a.external_id).cmp(&(b.last_modified, &b.external_id)));
    let first_page: std::collections::BTreeSet<String> = in_stream_order
        .into_iter()
        .take(opts.page_size)
        .map(|c| c.external_id)
        .collect();
    let later = erp
        .invoices()
        .iter()
        .map(|i| &i.customer_id)
        .chain(erp.transactions().iter().map(|t| &t.customer_id))
        .filter(|c| !first_page.contains(*c))
        .count();
    assert!(later > 0);
    assert_eq!(stats.parked, later as u64, "{stats:?}");
    assert!(stats.unparked > 0, "{stats:?}");
    assert_eq!(store.parked_count("demo").unwrap(), 0);
    // Every record counted once: stored (on arrival or released from the
    // parked ones) or dropped for an excluded customer.
    let counted = |k: &str| store.counter("demo", k).unwrap();
    let synced = counted("synced_invoices") + counted("synced_transactions");
    let dropped = counted("dropped_invoices") + counted("dropped_transactions");
    assert_eq!(synced + dropped, (opts.invoices + opts.transactions) as u64);
    assert_eq!(dropped, stats.dropped);
    drop(app);
    tokio::task::block_in_place(|| assert_equals_erp(&store, &opts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_netsuite_first_sync_killed_at_random_points_converges() {
    let mock = Arc::new(
        MockNetsuite::start(MockConfig {
            latency: Duration::from_millis(5),
            concurrency_limit: 10,
            ..MockConfig::default()
        })
        .await,
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = netsuite_config(&mock, dir.path(), port, 4, 50);
    let base = format!("http://127.0.0.1:{port}");
    let state = dir.path().join("state");
    let seed: u64 = std::env::var("ERPSYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut kills, mut mid_ranges) = (0, 0);
    for round in 0..12 {
        if round % 3 == 2 {
            // Upstream changes while the first sync is under way.
            change_data(&mock, &mut rng);
        }
        tokio::task::block_in_place(|| {
            let d = Daemon::spawn_unready(&cfg, base.clone());
            let at = mock.stats().requests + rng.random_range(1..20);
            let deadline = Instant::now() + Duration::from_secs(60);
            while mock.stats().requests < at && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            d.kill9();
        });
        kills += 1;
        let store = Store::open(&state).unwrap();
        if Entity::ALL
            .iter()
            .any(|e| !store.partitions("ns", *e).unwrap().is_empty())
        {
            mid_ranges += 1;
        }
    }
    assert!(mid_ranges > 0, "no kill landed inside the ranges");
    tokio::task::block_in_place(|| {
        let d = Daemon::spawn(&cfg, base.clone());
        converge(&d, &mock);
        assert!(d.terminate().0.success());
        let store = Store::open(&state).unwrap();
        for e in Entity::ALL {
            assert!(store.partitions("ns", e).unwrap().is_empty());
        }
        assert_store_equals_mock(&store, &mock, "partitioned first sync after kills");
    });
    println!("partitioned NetSuite first sync: {kills} kills, {mid_ranges} inside the ranges; the store equals the mock");
}

#[test]
fn a_partitioned_demo_first_sync_killed_at_random_points_converges() {
    // Pages of 20 at 10 ms: a first sync of a few seconds in many ranges.
    let opts = DemoOptions {
        page_size: 20,
        latency_ms: 10,
        ..small_demo()
    };
    let setup = Setup::demo(&opts, "1h", "");
    let seed: u64 = std::env::var("ERPSYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201);
    let mut rng = StdRng::seed_from_u64(seed ^ 5);
    let mut mid_ranges = 0;
    for _ in 0..15 {
        let d = Daemon::spawn_unready(&setup.config_path(), setup.base());
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        d.kill9();
        let store = setup.open_store();
        if Entity::ALL
            .iter()
            .any(|e| !store.partitions("demo", *e).unwrap().is_empty())
        {
            mid_ranges += 1;
        }
    }
    assert!(mid_ranges > 0, "no kill landed inside the ranges");
    let d = setup.start();
    d.wait_passes(1);
    assert!(d.terminate().0.success());
    let store = setup.open_store();
    for e in Entity::ALL {
        assert!(store.partitions("demo", e).unwrap().is_empty());
    }
    assert_equals_erp(&store, &opts);
}

/// The engine writes from tasks of its own (the group-commit writer, the
/// streams): they run under the pass's lease, so a pass whose lease is gone
/// writes nothing at all, and one under a live lease writes and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_under_a_lost_lease_writes_nothing_from_any_of_its_tasks() {
    use erpsync::store::{Fence, Member};
    let dir = tempfile::tempdir().unwrap();
    let opts = small_demo();
    let path = dir.path().join("erpsync.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nstate_dir = \"state\"\n[[connectors]]\nid = \"demo\"\nkind = \"demo\"\n{}",
            crate::support::demo_toml(&opts)
        ),
    )
    .unwrap();
    let app = app_for(&path);
    let h = Arc::clone(&app.connectors[0]);
    let me = Member {
        id: "a".into(),
        host: "host".into(),
        pid: 1,
        started_at: chrono::Utc::now(),
    };
    let res = vec!["connector:demo".to_string()];
    let claim = |app: Arc<App>, me: Member, res: Vec<String>| async move {
        let r = app
            .store
            .lease_round(&me, "h", true, &res, Duration::from_secs(30))
            .await
            .unwrap();
        Fence {
            resource: res[0].clone(),
            owner: me.id.clone(),
            token: r.held[&res[0]],
        }
    };
    let stale = claim(Arc::clone(&app), me.clone(), res.clone()).await;
    // The lease goes (a peer would take it over): the old token is dead.
    app.store.leave("a").await.unwrap();
    let err = stale
        .scope(erpsync::sync::sync_pass(&app, &h))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lease lost"), "{err}");
    assert_eq!(app.store.classification_counts(None).unwrap().total, 0);
    for entity in Entity::ALL {
        assert_eq!(
            app.store.cursor("demo", entity).unwrap(),
            None,
            "{entity:?}"
        );
    }
    // Claimed again (a new token), the same pass goes through.
    let live = claim(Arc::clone(&app), me, res).await;
    assert!(live.token > 1, "{live:?}");
    live.scope(erpsync::sync::sync_pass(&app, &h))
        .await
        .unwrap();
    assert_eq!(
        app.store.classification_counts(None).unwrap().total,
        opts.customers as u64
    );
}
