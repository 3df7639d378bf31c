//! What re-including customers would cost, said before it is confirmed: how
//! many customers would come back and roughly how many records, requests and
//! seconds their resync takes.
//!
//! Only excluded customers come back (re-including an included one just
//! pins it, fetching nothing). Records per customer come from this
//! connector's past resyncs when there are any (the best guide: the same
//! kind of customers, fetched the same way); otherwise from a sample of its
//! included customers' stored records; otherwise nothing is known and the
//! estimate says so. Requests and seconds use the same arithmetic as a
//! running job's ETA ([`progress::estimated_requests`]). This module only
//! reads.

use std::collections::BTreeMap;

use serde::Serialize;

use super::progress::{self, eta_params};
use super::queue;
use crate::app::App;
use crate::exclusion::ExclusionError;
use crate::model::CustomerKey;

/// Included customers sampled when a connector has no resync history.
pub const SAMPLE: usize = 200;

/// The estimate for one connector's customers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectorEstimate {
    pub connector: String,
    /// Customers that would be resynced (excluded today).
    pub customers: u64,
    pub records_per_customer: f64,
    /// Where `records_per_customer` comes from, in words.
    pub basis: String,
    pub records: u64,
    pub requests: u64,
    /// At the request rate resync may use now; `None` with no rate.
    pub seconds: Option<u64>,
}

/// What re-including a list of customers would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Customers named (duplicates dropped).
    pub customers: u64,
    /// Excluded today: they come back and their history is fetched.
    pub newly_included: u64,
    /// Included today: the decision only pins them; nothing is fetched.
    pub already_included: u64,
    /// Rough totals over every connector.
    pub records: u64,
    pub requests: u64,
    pub seconds: Option<u64>,
    pub connectors: Vec<ConnectorEstimate>,
    /// One sentence for the confirmation dialog.
    pub message: String,
}

/// Records per customer of a connector and where the figure comes from.
fn records_per_customer(app: &App, connector: &str) -> Result<(f64, String), ExclusionError> {
    let (records, done) = queue::jobs(&app.store)?
        .iter()
        .filter(|j| j.connector == connector)
        .fold((0u64, 0u64), |(r, d), j| (r + j.records_done, d + j.done));
    if done > 0 {
        return Ok((
            records as f64 / done as f64,
            format!("{done} customers resynced before"),
        ));
    }
    let mut sample: Vec<String> = Vec::with_capacity(SAMPLE);
    for sc in app.store.customers(Some(connector), None) {
        let sc = sc?;
        if sc.classification.excluded {
            continue;
        }
        sample.push(sc.customer.external_id);
        if sample.len() >= SAMPLE {
            break;
        }
    }
    let n = sample.len() as u64;
    let ids: Vec<&str> = sample.iter().map(String::as_str).collect();
    let records: u64 = app
        .store
        .record_counts(connector, &ids)?
        .values()
        .map(|(i, t)| i + t)
        .sum();
    if n == 0 {
        return Ok((0.0, "nothing to estimate from yet".into()));
    }
    Ok((
        records as f64 / n as f64,
        format!("a sample of {n} included customers"),
    ))
}

/// Estimates the re-inclusion of `keys` (parsed and de-duplicated). An
/// unknown customer is refused like the re-inclusion itself would be.
pub fn reinclusion(app: &App, keys: &[CustomerKey]) -> Result<Estimate, ExclusionError> {
    let mut by_connector: BTreeMap<&str, u64> = BTreeMap::new();
    let mut already = 0u64;
    for k in keys {
        let Some(sc) = app.store.customer(k)? else {
            return Err(ExclusionError::NotFound(format!(
                "unknown customer {k}: it was never synced"
            )));
        };
        if sc.classification.excluded {
            *by_connector.entry(k.connector.as_str()).or_default() += 1;
        } else {
            already += 1;
        }
    }
    let mut out = Estimate {
        customers: keys.len() as u64,
        newly_included: by_connector.values().sum(),
        already_included: already,
        records: 0,
        requests: 0,
        seconds: Some(0),
        connectors: Vec::new(),
        message: String::new(),
    };
    for (connector, customers) in by_connector {
        let Some(h) = app.connector(connector) else {
            continue;
        };
        let (rpc, basis) = records_per_customer(app, connector)?;
        let p = eta_params(h);
        let records = (rpc * customers as f64).round() as u64;
        let requests = progress::estimated_requests(customers, records as f64, &p);
        let seconds = (p.allowed_requests_per_second > 0.0)
            .then(|| (requests as f64 / p.allowed_requests_per_second).ceil() as u64);
        out.records += records;
        out.requests += requests;
        out.seconds = out.seconds.zip(seconds).map(|(a, b)| a + b);
        out.connectors.push(ConnectorEstimate {
            connector: connector.to_string(),
            customers,
            records_per_customer: (rpc * 10.0).round() / 10.0,
            basis,
            records,
            requests,
            seconds,
        });
    }
    out.message = describe(&out);
    Ok(out)
}

fn describe(e: &Estimate) -> String {
    let mut s = if e.newly_included == 0 {
        format!(
            "re-includes {} customer(s) that are already included: nothing is resynced",
            e.customers
        )
    } else {
        format!(
            "re-includes {} customer(s) and resyncs their full history: roughly {} records in about {} requests",
            e.newly_included, e.records, e.requests
        )
    };
    if e.newly_included > 0 {
        if let Some(secs) = e.seconds {
            s += &format!(" (about {})", duration(secs));
        }
    }
    if e.newly_included > 0 && e.already_included > 0 {
        s += &format!(
            "; {} more are already included and only pinned",
            e.already_included
        );
    }
    s
}

/// `45 s`, `3 min`, `2 h 5 min`.
fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs.div_ceil(60)),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(61), "2 min");
        assert_eq!(duration(3600 * 2 + 300), "2 h 5 min");
    }
}
