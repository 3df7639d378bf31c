//! Test helpers: run the real `erpsync` binary on a temporary config, or the
//! real server in-process with a shared demo ERP the test can change.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use erpsync::app::{App, ConnectorHandle};
use erpsync::connectors::demo::{DemoConnector, DemoErp, DemoOptions};
use erpsync::connectors::Budget;
use erpsync::store::testing::TestPg;
use erpsync::store::{Store, DEFAULT_CACHE_MB};
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token";
/// The read-only viewer token of in-process daemons.
pub const VIEWER_TOKEN: &str = "test-viewer-token";
/// The consumer token (read side only) of in-process daemons.
pub const CONSUMER_TOKEN: &str = "test-consumer-token";

/// Ports the tests reserve: a socket bound to 127.0.0.1:port but not
/// listening (connections are refused, as with no daemon, and no other
/// process can bind the port). A daemon spawned on a reserved port is
/// handed the socket, made listening (socket activation, `LISTEN_FDS`), so
/// the answer on that port always comes from that daemon; when it exits the
/// port is reserved again.
static HELD: std::sync::Mutex<BTreeMap<u16, std::os::fd::OwnedFd>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A bound, not listening, close-on-exec socket on 127.0.0.1:`port`.
fn reserve(port: u16) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(owned)
    }
}

/// A port on 127.0.0.1 reserved by this test process (see [`HELD`]).
pub fn free_port() -> u16 {
    use std::os::fd::AsRawFd;
    let fd = reserve(0).unwrap();
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut addr as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    let port = u16::from_be(addr.sin_port);
    HELD.lock().unwrap().insert(port, fd);
    port
}

/// Gives up the reservation of `port`.
pub fn release_port(port: u16) {
    HELD.lock().unwrap().remove(&port);
}

/// The port of a base URL.
fn port_of(base: &str) -> Option<u16> {
    base.rsplit(':').next()?.parse().ok()
}

/// Takes the reserved socket of `base`'s port, listening, for a child.
fn take_socket(base: &str) -> Option<(u16, std::os::fd::OwnedFd)> {
    use std::os::fd::AsRawFd;
    let port = port_of(base)?;
    let fd = HELD.lock().unwrap().remove(&port)?;
    // SAFETY: listen on a socket this process owns.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 1024) }, 0);
    Some((port, fd))
}

/// Reserves `port` again once the daemon that listened on it is gone (if
/// another process took it meanwhile, later spawns bind it themselves).
fn re_reserve(port: u16) {
    if let Ok(fd) = reserve(port) {
        HELD.lock().unwrap().insert(port, fd);
    }
}

/// A small demo ERP that syncs in well under a second.
pub fn small_demo() -> DemoOptions {
    DemoOptions {
        customers: 300,
        invoices: 3000,
        transactions: 2000,
        page_size: 200,
        trickle: 0,
        ..DemoOptions::default()
    }
}

pub fn demo_toml(o: &DemoOptions) -> String {
    format!(
        "[connectors.demo]\nseed = {}\ncustomers = {}\ninvoices = {}\ntransactions = {}\npage_size = {}\ntrickle = {}\nlatency_ms = {}\n",
        o.seed, o.customers, o.invoices, o.transactions, o.page_size, o.trickle, o.latency_ms
    )
}

/// Which store backend a daemon under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A temporary directory with a config file for the demo connector.
pub struct Setup {
    pub port: u16,
    /// The PostgreSQL test database, when the daemon runs on PostgreSQL
    /// (dropped with the setup).
    pub pg: Option<TestPg>,
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `extra` is appended to the config (rules, reminders, ...).
    pub fn demo(opts: &DemoOptions, poll_interval: &str, extra: &str) -> Setup {
        Self::build(None, opts, poll_interval, extra)
    }

    /// Like [`Setup::demo`] on the given backend; `None` (the test is
    /// skipped) when PostgreSQL is wanted but not there.
    pub fn demo_on(
        backend: Backend,
        test: &str,
        opts: &DemoOptions,
        poll_interval: &str,
        extra: &str,
    ) -> Option<Setup> {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestPg::create(test)?),
        };
        Some(Self::build(pg, opts, poll_interval, extra))
    }

    fn build(pg: Option<TestPg>, opts: &DemoOptions, poll_interval: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let store_line = match &pg {
            Some(p) => format!("store = \"{}\"", p.url),
            None => String::new(),
        };
        let cfg = format!(
            r#"[daemon]
state_dir = "state"
log_level = "info,erpsync=debug"
shutdown_timeout = "8s"
{store_line}

[http]
listen = "127.0.0.1:{port}"
admin_token_file = "token"

[[connectors]]
id = "demo"
kind = "demo"
poll_interval = "{poll_interval}"
rate_limit = {{ requests_per_second = 1000, burst = 1000, max_concurrency = 4 }}
{demo}
{extra}
"#,
            demo = demo_toml(opts)
        );
        std::fs::write(dir.path().join("erpsync.toml"), cfg).unwrap();
        Setup { dir, port, pg }
    }

    /// Opens the daemon's store (the daemon must not be running on SQLite).
    pub fn open_store(&self) -> Store {
        match &self.pg {
            Some(p) => Store::open_location(&p.location(), DEFAULT_CACHE_MB).unwrap(),
            None => Store::open(&self.dir.path().join("state")).unwrap(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("erpsync.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&self) -> Daemon {
        Daemon::spawn(&self.config_path(), self.base())
    }
}

/// The real binary, running.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub client: Api,
    log: PathBuf,
    /// The reserved port handed to the daemon: reserved again when it exits.
    reserved: Option<u16>,
}

impl Daemon {
    pub fn spawn(config: &Path, base: String) -> Daemon {
        Self::spawn_with_env(config, base, &[])
    }

    /// Starts the binary without waiting for it to be ready (to kill it at
    /// any instant of its start-up).
    pub fn spawn_unready(config: &Path, base: String) -> Daemon {
        Self::launch(config, base, &[])
    }

    pub fn spawn_with_env(config: &Path, base: String, env: &[(&str, &str)]) -> Daemon {
        let d = Self::launch(config, base, env);
        d.wait_ready();
        d
    }

    fn launch(config: &Path, base: String, env: &[(&str, &str)]) -> Daemon {
        let log = config.with_file_name(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos() ^ rand_u32()
        ));
        let socket = take_socket(&base);
        let mut cmd = match &socket {
            // Socket activation as systemd does it: the socket on fd 3,
            // LISTEN_FDS=1 and LISTEN_PID set to the daemon's own pid
            // (the shell's, which `exec` keeps).
            Some((_, fd)) => {
                use std::os::fd::AsRawFd;
                use std::os::unix::process::CommandExt;
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@""#)
                    .arg(env!("CARGO_BIN_EXE_erpsync"));
                let raw = fd.as_raw_fd();
                // SAFETY: dup2 is async-signal-safe; `socket` outlives
                // the spawn (it is dropped after it).
                unsafe {
                    c.pre_exec(move || {
                        // dup2 onto itself keeps close-on-exec: clear it.
                        let rc = if raw == 3 {
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(raw, 3)
                        };
                        if rc < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_erpsync")),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let reserved = socket.map(|(port, _)| port);
        Daemon {
            child,
            client: Api::new(&base),
            base,
            log,
            reserved,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = ureq_get(&format!("{}/readyz", self.base)) {
                if r.0 == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon not ready within 60 s; log:\n{}", self.log());
    }

    /// Waits until the connector finished at least `n` passes in this process.
    pub fn wait_passes(&self, n: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.client.get("/status");
            let c = &s["connectors"][0];
            if c["passes"].as_u64().unwrap_or(0) >= n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no pass {n} within 120 s: {s:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit; returns the status and how long it took.
    pub fn terminate(mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                if let Some(p) = self.reserved.take() {
                    re_reserve(p);
                }
                return (st, t.elapsed());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        if let Some(p) = self.reserved.take() {
            re_reserve(p);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = self.reserved.take() {
            re_reserve(p);
        }
    }
}

fn rand_u32() -> u128 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    (std::process::id() as u128) << 32 | N.fetch_add(1, Ordering::SeqCst) as u128
}

/// Minimal blocking HTTP for tests, on a private runtime.
fn ureq_get(url: &str) -> Result<(u16, String), reqwest::Error> {
    Api::rt().block_on(async {
        let r = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let st = r.status().as_u16();
        Ok((st, r.text().await?))
    })
}

/// A blocking JSON client of the admin API, with the test token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            token: Some(TOKEN.to_string()),
        }
    }

    pub fn without_token(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    pub fn with_token(&self, t: &str) -> Api {
        Api {
            token: Some(t.to_string()),
            ..self.clone()
        }
    }

    fn rt() -> &'static tokio::runtime::Runtime {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        })
    }

    /// Any request; returns (status, body as JSON or as a string value).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let token = self.token.clone();
        let body = body.cloned();
        Self::rt().block_on(async move {
            let mut r = reqwest::Client::new()
                .request(method, url)
                .timeout(Duration::from_secs(180));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r.send().await.expect("request failed");
            let st = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (st, v)
        })
    }

    /// A GET that returns `None` when the daemon does not answer (not
    /// started yet, or killed).
    pub fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let token = self.token.clone();
        Self::rt().block_on(async move {
            let mut r = reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_secs(10));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.ok()?;
            let st = resp.status().as_u16();
            let text = resp.text().await.ok()?;
            Some((
                st,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        })
    }

    pub fn get(&self, path: &str) -> Value {
        let (st, v) = self.call("GET", path, None);
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let (st, v) = self.call("POST", path, Some(body));
        assert!((200..300).contains(&st), "POST {path}: {st} {v}");
        v
    }
}

/// The real server in-process, with a demo ERP the test holds and can change.
pub struct InProcess {
    pub app: Arc<App>,
    pub erp: Arc<DemoErp>,
    pub api: Api,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Starts the daemon with `extra` config appended (rules, reminders...).
    pub async fn start(opts: &DemoOptions, poll_interval: &str, extra: &str) -> InProcess {
        let erp = DemoErp::new(opts);
        Self::start_with(
            erp,
            opts,
            poll_interval,
            extra,
            tempfile::tempdir().unwrap(),
        )
        .await
    }

    /// Starts (or restarts, with the same `dir`) against an existing ERP.
    pub async fn start_with(
        erp: Arc<DemoErp>,
        opts: &DemoOptions,
        poll_interval: &str,
        extra: &str,
        dir: tempfile::TempDir,
    ) -> InProcess {
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("viewer-token"), format!("{VIEWER_TOKEN}\n")).unwrap();
        std::fs::write(
            dir.path().join("consumer-token"),
            format!("{CONSUMER_TOKEN}\n"),
        )
        .unwrap();
        let cfg_text = format!(
            r#"[daemon]
state_dir = "state"
[http]
listen = "127.0.0.1:0"
admin_token_file = "token"
viewer_token_file = "viewer-token"
consumer_token_file = "consumer-token"
[[connectors]]
id = "demo"
kind = "demo"
poll_interval = "{poll_interval}"
rate_limit = {{ requests_per_second = 5000, burst = 5000, max_concurrency = 4 }}
{demo}
{extra}
"#,
            demo = demo_toml(opts)
        );
        let path = dir.path().join("erpsync.toml");
        std::fs::write(&path, &cfg_text).unwrap();
        let config = erpsync::config::load(&path, &erpsync::connectors::REGISTRY)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&config.daemon.state_dir).unwrap();
        let store = Arc::new(Store::open(&config.daemon.state_dir).unwrap());
        let cc = config.connectors[0].clone();
        let budget = Budget::new(cc.limits);
        let conn = DemoConnector::new(
            Arc::clone(&erp),
            Arc::clone(&budget),
            opts.page_size,
            Duration::from_millis(opts.latency_ms),
        );
        let handle = Arc::new(ConnectorHandle::new(cc, Arc::new(conn), budget));
        let token = config.http.admin_token.as_ref().map(|s| s.load().unwrap());
        let viewer = config.http.viewer_token.as_ref().map(|s| s.load().unwrap());
        let consumer = config
            .http
            .consumer_token
            .as_ref()
            .map(|s| s.load().unwrap());
        let webhooks = erpsync::feed::webhooks::endpoints(&config).unwrap();
        let app = App::new(
            config,
            store,
            vec![handle],
            erpsync::http::auth::Tokens::new(token, viewer).with_consumer(consumer),
        );
        app.set_webhooks(webhooks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app2 = Arc::clone(&app);
        let task = tokio::spawn(async move {
            erpsync::daemon::run_with(app2, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        InProcess {
            app,
            erp,
            api: Api::new(&base),
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until the poller has finished `n` passes.
    pub async fn wait_passes(&self, n: u64) {
        let h = &self.app.connectors[0];
        let deadline = Instant::now() + Duration::from_secs(120);
        while h.status().passes < n {
            assert!(
                Instant::now() < deadline,
                "no pass {n} within 120 s: {:?}",
                h.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers a pass now and waits for it to finish.
    pub async fn sync_now(&self) {
        let n = self.app.connectors[0].status().passes;
        self.app.connectors[0].poll_now.notify_one();
        self.wait_passes(n + 1).await;
    }

    /// Stops the server and returns the state directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let InProcess { app, dir, .. } = self;
        drop(app);
        dir
    }

    /// The blocking API client must not run on the test's runtime thread.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let api = self.api.clone();
        let method = method.to_string();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || api.call(&method, &path, body.as_ref()))
            .await
            .unwrap()
    }
}

/// The read-side endpoints (all `GET`), readable with the consumer token.
pub fn read_endpoints() -> Vec<(&'static str, String, Option<Value>)> {
    [
        "/api/v1/invoices",
        "/api/v1/transactions",
        "/api/v1/changes",
        "/api/v1/exports/open-invoices.csv",
        "/api/v1/exports/customers.csv",
    ]
    .into_iter()
    .map(|p| ("GET", p.to_string(), None))
    .collect()
}

/// Every `/api/v1` endpoint, with what it needs to do something: for tests
/// that must cover the whole admin API (token refusal, query checks).
pub fn admin_endpoints(k: &str, id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let c = "/api/v1/customers";
    let r = "/api/v1/reminders";
    vec![
        ("GET", "/api/v1/status".into(), None),
        ("GET", format!("{c}?q={id}"), None),
        ("GET", format!("{c}/demo/{id}"), None),
        ("GET", format!("{c}/demo/{id}/explain"), None),
        ("DELETE", format!("{c}/demo/{id}/decision"), None),
        (
            "POST",
            "/api/v1/exclusions".into(),
            Some(json!({"customers": [k], "reason": "x"})),
        ),
        (
            "POST",
            "/api/v1/exclusions/mass".into(),
            Some(json!({"q": id, "reason": "x", "confirm": 1})),
        ),
        (
            "POST",
            "/api/v1/reinclusions".into(),
            Some(json!({"customers": [k]})),
        ),
        (
            "POST",
            "/api/v1/reinclusions/estimate".into(),
            Some(json!({"customers": [k]})),
        ),
        ("GET", "/api/v1/excluded".into(), None),
        ("GET", "/api/v1/excluded.csv".into(), None),
        ("GET", "/api/v1/audit".into(), None),
        ("GET", "/api/v1/rules".into(), None),
        (
            "POST",
            "/api/v1/rules/preview".into(),
            Some(json!({"rules": []})),
        ),
        ("POST", "/api/v1/reload".into(), None),
        ("GET", "/api/v1/resyncs".into(), None),
        (
            "POST",
            "/api/v1/resyncs".into(),
            Some(json!({"customers": [k]})),
        ),
        ("GET", "/api/v1/resyncs/1".into(), None),
        ("POST", "/api/v1/resyncs/1/retry".into(), None),
        ("GET", format!("{r}/candidates"), None),
        ("GET", format!("{r}/candidates.csv"), None),
        ("GET", format!("{r}/summary"), None),
        ("GET", format!("{r}/customers/{k}"), None),
        (
            "POST",
            format!("{r}/stop"),
            Some(json!({"customer": k, "reason": "x"})),
        ),
        (
            "POST",
            format!("{r}/unstop"),
            Some(json!({"customer": k, "reason": "x"})),
        ),
        (
            "POST",
            format!("{r}/hold"),
            Some(json!({"invoice": "demo:INV000001", "reason": "x"})),
        ),
        (
            "POST",
            format!("{r}/release"),
            Some(json!({"invoice": "demo:INV000001", "reason": "x"})),
        ),
        ("GET", format!("{r}/stops"), None),
        ("GET", format!("{r}/holds"), None),
        ("POST", "/api/v1/connectors/demo/sync".into(), None),
        (
            "POST",
            "/api/v1/connectors/demo/connect".into(),
            Some(json!({"refresh_token": "rt-x"})),
        ),
    ]
}

/// Each listed `fn(Backend)` becomes two tests, `<name>::sqlite` and
/// `<name>::postgres` (the daemon-level scenarios on both store backends).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::Backend;
            #[test]
            fn sqlite() {
                super::$name(Backend::Sqlite);
            }
            #[test]
            fn postgres() {
                super::$name(Backend::Postgres);
            }
        }
    )*};
}
pub(crate) use on_both_backends;
