//! The change feed for downstream systems: `GET /api/v1/changes` pages
//! ([`changes`]), its retention ([`run_retention`]) and its delivery as
//! signed webhooks ([`webhooks`]).
//!
//! The events themselves are written by the store in the same transaction
//! as each change (the outbox, see `store::feed`); this module only reads
//! them, in sequence order, with each entity's current data, and decides
//! what a reader positioned before the retention cut is told (410 with the
//! way back: a full read, then the feed from the position it names). It
//! never changes synced data.

pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::read::view::{self, EventView};
use crate::read::MAX_LIMIT;
use crate::store::{FeedBounds, Store, StoreError};

/// Page size of `/changes` when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// One page of the feed.
#[derive(Debug, Clone, Serialize)]
pub struct Changes {
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page (the last event's `seq`, or the
    /// position asked for when the page is empty).
    pub next: u64,
    /// The newest event's sequence number when this page was read.
    pub latest: u64,
    /// More events follow right away.
    pub has_more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("{0}")]
    Invalid(String),
    /// Events after the position were dropped by retention (or predate the
    /// feed): the reader must do a full read.
    #[error("{}", gone_message(.after, .bounds))]
    Gone { after: u64, bounds: FeedBounds },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a reader positioned at `after` behind the retention cut must do.
pub fn gone_message(after: &u64, b: &FeedBounds) -> String {
    format!(
        "events after {after} are no longer kept (the feed now starts after event {}); \
         do a full read: read GET /api/v1/invoices, GET /api/v1/transactions and \
         GET /api/v1/exports/customers.csv from the start, then continue with \
         GET /api/v1/changes?after={} (resume_after)",
        b.expired_through, b.latest
    )
}

/// Parses `after` (a sequence number; absent: the beginning).
pub fn parse_after(v: Option<&str>) -> Result<u64, ChangesError> {
    match v.map(str::trim) {
        None => Ok(0),
        Some(s) => s.parse::<u64>().map_err(|_| {
            ChangesError::Invalid(format!(
                "`after` must be the `seq` of the last event you applied (a whole number, 0 for the beginning), got `{}`",
                s.chars().take(80).collect::<String>()
            ))
        }),
    }
}

/// Up to `limit` events after `after`. A position behind the retention cut
/// is [`ChangesError::Gone`]; one ahead of the newest event cannot come from
/// this feed and is refused.
pub fn changes(store: &Store, after: u64, limit: usize) -> Result<Changes, ChangesError> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ChangesError::Invalid(format!(
            "`limit` must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let events = store.events_after(after, limit)?;
    // Read after the events: retention only drops a prefix, so if `after`
    // is not behind the cut now, no event after it was missing above.
    let bounds = store.feed_bounds()?;
    if after < bounds.expired_through {
        return Err(ChangesError::Gone { after, bounds });
    }
    if after > bounds.latest {
        return Err(ChangesError::Invalid(format!(
            "`after` {after} is ahead of this feed (its newest event is {}): the position does not come from this store; do a full read and continue from the `feed_seq` it gives",
            bounds.latest
        )));
    }
    let today = view::today();
    let has_more = events.len() == limit;
    let next = events.last().map(|e| e.seq).unwrap_or(after);
    Ok(Changes {
        events: events
            .into_iter()
            .map(|e| EventView::of(e, today))
            .collect(),
        next,
        latest: bounds.latest,
        has_more,
    })
}

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Drops events past the configured age and count (`[feed]`): at start-up,
/// then every 10 minutes, until shutdown.
pub async fn run_retention(app: Arc<App>) {
    loop {
        let f = app.config().feed;
        let age = chrono::Duration::from_std(f.retention).unwrap_or(chrono::Duration::days(30));
        match app
            .store
            .expire_events(age, f.max_events, chrono::Utc::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "change feed: events past retention dropped"),
            Err(e) => tracing::warn!(error = %e, "change feed retention failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}
