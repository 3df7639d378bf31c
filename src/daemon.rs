//! Wires the daemon together and runs it until a signal stops it.
//!
//! Start-up: config (already validated) → logging → store (locked, schema
//! checked) → connectors with their budgets → HTTP listener → pollers and
//! resync workers → `READY=1`. Shutdown (SIGTERM/SIGINT): `STOPPING=1`, cancel
//! every task, wait for them up to `daemon.shutdown_timeout`, flush the store,
//! exit 0. SIGHUP reloads the rules from the config file.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::task::TaskTracker;

use crate::app::{App, ConnectorHandle};
use crate::config::Config;
use crate::connectors::{self, BuildContext, REGISTRY};
use crate::credentials::{StoreCredentials, StoreSlot};
use crate::reload::StartupRefused;
use crate::store::Store;

/// Runs the daemon; returns when it has shut down cleanly.
pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let app = build(config)?;
    let listener = match activated_listener()? {
        Some(l) => {
            tracing::info!(listen = %l.local_addr()?, "HTTP port handed over by the service manager (socket activation); http.listen is not used");
            l
        }
        None => tokio::net::TcpListener::bind(app.config().http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", app.config().http.listen))?,
    };
    tracing::info!(listen = %listener.local_addr()?, "HTTP port open");
    run_with(app, listener, shutdown_signal()).await
}

/// Builds every connector and reads every secret, then opens the store.
/// Secrets and connectors come first: a missing credential is a
/// configuration problem (exit 78) found before any state is touched.
pub fn build(config: Config) -> anyhow::Result<Arc<App>> {
    let base = config
        .file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let slot = StoreSlot::default();
    let mut handles = Vec::new();
    for c in &config.connectors {
        let budget = connectors::Budget::new(c.limits);
        let kind = REGISTRY.get(&c.kind).ok_or_else(|| {
            StartupRefused(format!("connector `{}`: unknown kind `{}`", c.id, c.kind))
        })?;
        let cx = BuildContext {
            id: c.id.clone(),
            base_dir: base.clone(),
            config_file: config.file.clone(),
            budget: Arc::clone(&budget),
            credentials: Arc::new(StoreCredentials::in_slot(Arc::clone(&slot), &c.id)),
        };
        let conn = kind
            .build(&c.options, cx)
            .map_err(|e| StartupRefused(format!("connector `{}`: {e}", c.id)))?;
        handles.push(Arc::new(ConnectorHandle::new(c.clone(), conn, budget)));
    }
    let admin_token = match &config.http.admin_token {
        Some(src) => Some(
            src.load()
                .map_err(|e| StartupRefused(format!("admin token: {e}")))?,
        ),
        None => {
            tracing::warn!("no admin token configured: the admin API answers 403");
            None
        }
    };
    let viewer_token = match &config.http.viewer_token {
        Some(src) => Some(
            src.load()
                .map_err(|e| StartupRefused(format!("viewer token: {e}")))?,
        ),
        None => None,
    };
    if admin_token.is_some() && admin_token == viewer_token {
        return Err(StartupRefused(
            "the viewer token is the same as the admin token: give the read-only viewer its own token".into(),
        )
        .into());
    }
    let consumer_token = match &config.http.consumer_token {
        Some(src) => Some(
            src.load()
                .map_err(|e| StartupRefused(format!("consumer token: {e}")))?,
        ),
        None => None,
    };
    if consumer_token.is_some() && (consumer_token == admin_token || consumer_token == viewer_token)
    {
        return Err(StartupRefused(
            "the consumer token is the same as the admin or the viewer token: give downstream consumers their own token".into(),
        )
        .into());
    }
    let webhooks = crate::feed::webhooks::endpoints(&config).map_err(StartupRefused)?;
    std::fs::create_dir_all(&config.daemon.state_dir).with_context(|| {
        format!(
            "cannot create state_dir {}",
            config.daemon.state_dir.display()
        )
    })?;
    let store = Arc::new(Store::open_location(
        &config.daemon.store,
        config.daemon.store_cache_mb,
    )?);
    tracing::info!(store = %store.describe(), "store open");
    if let Some(why) = crate::migrate::old_store_left_behind(&config.daemon.state_dir, &store)? {
        return Err(StartupRefused(why).into());
    }
    let _ = slot.set(Arc::clone(&store));
    let app = App::new(
        config,
        store,
        handles,
        crate::http::auth::Tokens::new(admin_token, viewer_token).with_consumer(consumer_token),
    );
    app.set_webhooks(webhooks);
    if app.store.is_shared() {
        // Several daemons may share this store: work under leases.
        let c = Arc::new(
            crate::cluster::Cluster::new(
                &app.config().daemon.state_dir,
                app.config().daemon.lease_timeout,
            )
            .map_err(StartupRefused)?,
        );
        tracing::info!(daemon = %c.me.id, lease_timeout_s = c.timeout.as_secs_f64(), "shared store: connectors and webhook endpoints are worked under leases");
        for h in &app.connectors {
            h.update_status(|s| s.state = crate::app::WorkerState::Standby);
        }
        app.set_cluster(c);
    }
    Ok(app)
}

/// Runs an already built daemon on `listener` until `shutdown` resolves.
/// Tests pass their own shutdown future.
pub async fn run_with(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let token = app.shutdown.clone();
    tracker.spawn(crate::http::serve(listener, Arc::clone(&app), {
        let t = token.clone();
        async move { t.cancelled().await }
    }));
    // A peer holding leases under other rules: refuse before re-classifying
    // anything with ours.
    let joined = match app.cluster() {
        Some(c) => c.join(&app).await,
        None => Ok(()),
    };
    if let Err(e) = joined {
        tracing::error!("{e}");
        token.cancel();
        tracker.close();
        tracker.wait().await;
        return Err(match e {
            crate::cluster::JoinError::ForeignRules(_) => StartupRefused(e.to_string()).into(),
            crate::cluster::JoinError::Store(e) => e.into(),
        });
    }
    // Rules or native exclusions changed while stopped (or a reload was cut
    // short): re-classify stored customers before the first sync.
    if let Err(refused) = crate::reload::reconcile_on_start(&app).await {
        tracing::error!("{refused}");
        token.cancel();
        tracker.close();
        tracker.wait().await;
        app.store.flush()?;
        return Err(refused.into());
    }
    match app.cluster() {
        // Shared store: the lease loop starts each connector's poller and
        // resync worker, and each webhook delivery, while it holds the lease.
        Some(c) => {
            tracker.spawn(Arc::clone(c).run(Arc::clone(&app), tracker.clone()));
        }
        None => {
            for h in &app.connectors {
                tracker.spawn(crate::sync::run_poller(Arc::clone(&app), Arc::clone(h)));
            }
            crate::resync::spawn_workers(&app, &tracker);
            crate::feed::webhooks::spawn(&app, &tracker);
        }
    }
    tracker.spawn(hangup_reloads(Arc::clone(&app)));
    tracker.spawn(watchdog(Arc::clone(&app)));
    tracker.spawn(watch_store(Arc::clone(&app)));
    tracker.spawn(compact_store(Arc::clone(&app)));
    tracker.spawn(crate::feed::run_retention(Arc::clone(&app)));
    app.set_ready(true);
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(connectors = app.connectors.len(), "erpsync ready");

    tokio::select! {
        _ = shutdown => {}
        _ = token.cancelled() => {}
    }
    tracing::info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    app.set_ready(false);
    token.cancel();
    tracker.close();
    let timeout = app.config().daemon.shutdown_timeout;
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        tracing::warn!(
            timeout_s = timeout.as_secs_f64(),
            "tasks did not stop in time; exiting anyway"
        );
    }
    // Hand the leases over at once (the tasks under them have stopped).
    if let Some(c) = app.cluster() {
        c.leave(&app).await;
    }
    // A checkpoint only: commits are durable without it, so a store that
    // cannot be written (disk full) does not make the exit unclean.
    if let Err(e) = app.store.flush() {
        tracing::warn!(error = %e, "store checkpoint at shutdown failed; committed data is safe");
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The listening socket passed by the service manager (systemd socket
/// activation, `sd_listen_fds`): `LISTEN_PID` names this process and
/// `LISTEN_FDS` is 1, the socket being file descriptor 3. `None` otherwise.
fn activated_listener() -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours {
        return Ok(None);
    }
    let n: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    match n {
        0 => Ok(None),
        1 => {
            let mut listening: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `listening`.
            let rc = unsafe {
                libc::getsockopt(
                    3,
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    &mut listening as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if rc != 0 || listening != 1 {
                return Err(crate::reload::StartupRefused(
                    "LISTEN_FDS=1 but file descriptor 3 is not a listening socket".into(),
                )
                .into());
            }
            // SAFETY: the service manager passes fd 3 to this process only
            // (LISTEN_PID checked), and it is a listening socket; nothing
            // else in the process owns it.
            let std = unsafe { std::net::TcpListener::from_raw_fd(3) };
            std.set_nonblocking(true)
                .context("the socket passed by the service manager")?;
            Ok(Some(tokio::net::TcpListener::from_std(std).context(
                "the socket passed by the service manager is not a TCP listener",
            )?))
        }
        n => Err(crate::reload::StartupRefused(format!(
            "the service manager passed {n} sockets (LISTEN_FDS); erpsync listens on one"
        ))
        .into()),
    }
}

/// Raises the soft limit on open files to the hard one (`LimitNOFILE=` in
/// the unit sets both; a shell often leaves the soft one at 1024), so
/// `http.max_connections` slow clients cannot starve the store and the
/// ERP clients of descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = lim.rlim_cur, "cannot raise the open-file limit");
            }
        }
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// How often history past its retention is dropped from the store.
const COMPACT_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Drops tombstones, audit entries and finished resync jobs past their
/// retention (`[daemon] *_retention_days`): at start-up, then every 6 hours.
async fn compact_store(app: Arc<App>) {
    loop {
        let retention = app.config().daemon.retention;
        match app.store.compact(&retention, chrono::Utc::now()).await {
            Ok(c) if c != crate::store::Compacted::default() => {
                tracing::info!(
                    tombstones = c.tombstones,
                    audit = c.audit,
                    resync_jobs = c.jobs,
                    "store compacted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "store compaction failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(COMPACT_EVERY) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

/// Sends `WATCHDOG=1` at half the interval systemd asks for, unless the
/// store has been unwritable for longer than `daemon.store_failure_timeout`:
/// then it stops, so systemd restarts the service (a restart reopens the
/// store; nothing is lost, every write is transactional). It feeds again
/// as soon as the store heals.
async fn watchdog(app: Arc<App>) {
    let Some(usec) = watchdog_usec() else {
        return;
    };
    let period = Duration::from_micros(usec / 2);
    let mut starving = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = app.shutdown.cancelled() => return,
        }
        let limit = app.config().daemon.store_failure_timeout;
        let health = app.store.health();
        let stuck = health.failing_since.is_some_and(|since| {
            (chrono::Utc::now() - since).to_std().unwrap_or_default() >= limit
        });
        if stuck {
            if !starving {
                tracing::error!(
                    failing_since = ?health.failing_since,
                    error = ?health.error,
                    timeout_s = limit.as_secs(),
                    "the store has been unwritable longer than daemon.store_failure_timeout: no longer feeding the systemd watchdog, so the service is restarted"
                );
                starving = true;
            }
            continue;
        }
        if starving {
            tracing::info!("store writable again: feeding the systemd watchdog");
            starving = false;
        }
        notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

/// While the store cannot be written, probes it with a small write, with
/// back-off (1 s doubling to 30 s), so `/readyz` turns ready again as soon
/// as the cause goes even when nothing else writes; while it can, probes
/// once a minute (a database server can go away while the daemon is idle).
async fn watch_store(app: Arc<App>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = if app.store.health().writable {
            backoff = Duration::from_secs(1);
            Duration::from_secs(60)
        } else {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            w
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.cancelled() => return,
        }
        if let Err(e) = app.store.probe().await {
            tracing::debug!(error = %e, "store probe failed");
        }
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or names this process.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then_some(usec),
    }
}

/// SIGHUP → reload rules from the config file.
async fn hangup_reloads(app: Arc<App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading rules");
                    notify(&[sd_notify::NotifyState::Reloading]);
                    // In its own task: whatever happens in a reload, this
                    // loop keeps answering SIGHUP and systemd gets READY=1.
                    let a = Arc::clone(&app);
                    let outcome = tokio::spawn(async move { crate::reload::reload_from_file(&a).await }).await;
                    match &outcome {
                        Ok(Ok(m)) => tracing::info!(result = %m, "reload done"),
                        Ok(Err(e)) => tracing::error!(error = %e, "reload refused"),
                        Err(e) => tracing::error!(error = %e, "reload failed unexpectedly; the daemon goes on"),
                    }
                    notify(&[sd_notify::NotifyState::Ready]);
                }
                _ = app.shutdown.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    app.shutdown.cancelled().await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
