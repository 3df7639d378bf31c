//! `[feed]`: how long the change feed keeps events (by age and by count).

use std::time::Duration;

use super::raw::RawFeed;
use super::{duration, Problems};

/// Retention of the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Events older than this are dropped.
    pub retention: Duration,
    /// At most this many events are kept (the oldest go first).
    pub max_events: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            retention: Duration::from_secs(30 * 86_400),
            max_events: 10_000_000,
        }
    }
}

pub(super) fn compile(f: RawFeed, p: &mut Problems<'_>) -> FeedConfig {
    let mut out = FeedConfig::default();
    if let Some(v) = &f.retention {
        match duration::parse_within(v.get_ref(), Duration::from_secs(3600), duration::MAX) {
            Ok(d) => out.retention = d,
            Err(e) => p.at(Some(v.span()), "feed.retention", e),
        }
    }
    if let Some(v) = &f.max_events {
        let n = *v.get_ref();
        if !(1_000..=1_000_000_000).contains(&n) {
            p.at(
                Some(v.span()),
                "feed.max_events",
                format!("must be between 1000 and 1000000000, got {n}"),
            );
        } else {
            out.max_events = n;
        }
    }
    out
}
