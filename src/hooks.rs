//! Named pause points for crash tests: the only way a test can stop the
//! real binary at an exact instant (say, half-way through a reload) and
//! kill it there. Owns nothing else and changes no behaviour unless
//! `ERPSYNC_TEST_PAUSE_AT` names the point.
//!
//! With `ERPSYNC_TEST_PAUSE_AT=<point>` set, the first time the process
//! reaches that point it writes the point's name to
//! `ERPSYNC_TEST_PAUSE_FILE` (when set) and blocks that thread for good;
//! the test sees the file and sends SIGKILL. Operators never set these.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Blocks forever when `ERPSYNC_TEST_PAUSE_AT` names `point` (see the
/// module docs); returns at once otherwise.
pub fn pause_point(point: &str) {
    static PAUSED: AtomicBool = AtomicBool::new(false);
    if std::env::var("ERPSYNC_TEST_PAUSE_AT").ok().as_deref() != Some(point)
        || PAUSED.swap(true, Ordering::SeqCst)
    {
        return;
    }
    tracing::warn!(point, "paused for a crash test (ERPSYNC_TEST_PAUSE_AT)");
    if let Some(file) = std::env::var_os("ERPSYNC_TEST_PAUSE_FILE") {
        let _ = std::fs::write(file, point);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
