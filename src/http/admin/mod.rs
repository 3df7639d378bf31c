//! The admin API under `/api/v1`, one file per feature. Every route here is
//! behind the authentication and role check of [`super::auth`] (bearer token
//! or console session; a viewer's changes are refused there). Handlers that
//! record an actor take it from the request's
//! [`Principal`](super::auth::Principal).

pub mod connectors;
pub mod exclusions;
pub mod read;
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
        .merge(read::routes())
}
