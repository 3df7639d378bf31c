//! The admin API under `/api/v1`, one file per feature. Every route here is
//! behind the bearer-token check (see [`super::auth`]).

pub mod connectors;
pub mod exclusions;
pub mod reminders;
pub mod resyncs;

use std::sync::Arc;

use axum::Router;

use crate::app::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .merge(connectors::routes())
        .merge(exclusions::routes())
        .merge(resyncs::routes())
        .merge(reminders::routes())
}
