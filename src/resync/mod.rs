//! Resync: re-fetching the full history of invoices and transactions of
//! customers that came back (re-included by hand, by a rule change or
//! upstream), or whose data an admin doubts.
//!
//! - [`queue`]: durable jobs, their members and the worker's checkpoints, in
//!   the store; called from `exclusion::apply` and ingest inside their writes.
//! - [`worker`]: one task per connector that drains the queue in batches
//!   through the connector's shared budget.
//! - [`progress`]: per-job progress, rates and ETA for `/status`, the admin
//!   API and the CLI.
//! - [`estimate`]: what re-including customers would fetch, before anyone
//!   confirms it.
//!
//! Nothing here classifies customers or retries requests on its own.

pub mod estimate;
pub mod progress;
pub mod queue;
pub mod worker;

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::app::App;

/// Starts one resync worker per connector. Each wakes on
/// `app.resync_wakeup`, and also checks the queue every
/// [`worker::CHECK_INTERVAL`]; each stops on `app.shutdown`.
pub fn spawn_workers(app: &Arc<App>, tracker: &TaskTracker) {
    for h in &app.connectors {
        tracker.spawn(worker::run(Arc::clone(app), Arc::clone(h)));
    }
}
