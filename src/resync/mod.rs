//! Resync: re-fetching the full history of customers that came back.
//!
//! [`queue`] keeps durable jobs in the store; the worker that drains them
//! lands with the resync engine.

pub mod queue;

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::app::App;

/// Starts one resync worker per connector.
pub fn spawn_workers(_app: &Arc<App>, _tracker: &TaskTracker) {}
