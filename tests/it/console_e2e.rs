//! The web console in a real headless browser: Playwright (`playwright-core`
//! from `tests/e2e/`, installed with `npm ci`) driving Debian's Chromium
//! against the real server on the demo connector. The scenarios live in
//! `tests/e2e/console.mjs`; each saves screenshots under
//! `target/e2e-screenshots/`.
//!
//! Without node, the npm packages or Chromium these tests print
//! `skipped: <test name>: ...` and pass, unless `ERPSYNC_REQUIRE_BROWSER=1`
//! (CI sets it), which makes a missing piece a failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use erpsync::connectors::demo::DemoOptions;

use crate::reminders::demo_reminders;
use crate::support::{small_demo, InProcess, TOKEN, VIEWER_TOKEN};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";
/// How long one run of the spec may take before it is stopped (a hung
/// browser must not hang the suite); not a timing assertion.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

fn chromium() -> PathBuf {
    std::env::var_os("ERPSYNC_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing to run browser tests, if anything.
fn missing() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("node is not installed".into()),
    }
    if !e2e_dir()
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Some("playwright-core is not installed (run `npm ci` in tests/e2e)".into());
    }
    if !chromium().is_file() {
        return Some(format!(
            "no browser at {} (apt-get install chromium)",
            chromium().display()
        ));
    }
    None
}

/// True when the test should run; prints the skip line otherwise.
fn browser_available(test: &str) -> bool {
    let Some(why) = missing() else { return true };
    if std::env::var("ERPSYNC_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{test}: ERPSYNC_REQUIRE_BROWSER=1 but {why}");
    }
    println!("skipped: {test}: {why}");
    false
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("e2e-screenshots")
}

/// Runs the spec's `scenarios` against `d`; returns its output, failing the
/// test when a scenario failed.
async fn run_spec(d: &InProcess, scenarios: &str, hostile: &str) -> String {
    let mut cmd = Command::new("node");
    cmd.arg(e2e_dir().join("console.mjs"))
        .current_dir(e2e_dir())
        .env("ERPSYNC_BASE", &d.api.base)
        .env("ERPSYNC_ADMIN_TOKEN", TOKEN)
        .env("ERPSYNC_VIEWER_TOKEN", VIEWER_TOKEN)
        .env("ERPSYNC_HOSTILE", hostile)
        .env("ERPSYNC_SCREENSHOTS", screenshots())
        .env("ERPSYNC_SCENARIOS", scenarios)
        .env("ERPSYNC_CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("starting node");
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the browser scenarios failed:\n{text}"
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_end_to_end_in_a_real_browser() {
    if !browser_available("console_e2e::the_console_works_end_to_end_in_a_real_browser") {
        return;
    }
    let d = InProcess::start(&small_demo(), "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    // An ERP customer whose name is markup: the console must show it as text.
    let hostile = d.erp.customers()[7].external_id.clone();
    assert!(d.erp.update_customer(&hostile, |c| c.name = HOSTILE.into()));
    d.sync_now().await;
    let key = erpsync::model::CustomerKey::new("demo", &hostile);
    assert_eq!(
        d.app.store.customer(&key).unwrap().unwrap().customer.name,
        HOSTILE
    );
    let out = run_spec(&d, "main", &key.to_string()).await;
    assert!(out.contains("ok   a viewer sees everything"), "{out}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_load_times_with_20000_customers() {
    if !browser_available("console_e2e::console_page_load_times_with_20000_customers") {
        return;
    }
    let opts = DemoOptions {
        customers: 20_000,
        invoices: 40_000,
        transactions: 20_000,
        page_size: 1000,
        trickle: 0,
        ..DemoOptions::default()
    };
    let d = InProcess::start(&opts, "1h", &demo_reminders()).await;
    d.wait_passes(1).await;
    assert_eq!(
        d.app.store.classification_counts(None).unwrap().total,
        20_000
    );
    let out = run_spec(&d, "perf", "").await;
    assert!(
        out.contains("page load times with 20000 customers"),
        "{out}"
    );
    d.stop().await;
}
