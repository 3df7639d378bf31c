//! Leases: which daemon does a connector's (or a webhook endpoint's) work
//! when several daemons share one PostgreSQL store.
//!
//! A lease row names its resource, its owner, a fencing token that grows by
//! one at every claim, and an expiry in the **database's** clock
//! (`clock_timestamp()`), so the hosts' clocks never decide who owns what.
//! Claims, renewals and releases are conditional `UPDATE`s in their own
//! transaction, on PostgreSQL on a connection of their own and without the
//! store's write lock, so a renewal never waits behind page writes. A page
//! write's fencing check updates its lease row, taking the row's lock: a
//! claim of that row and the write are ordered by the database either way.
//!
//! **Fencing.** Work done under a lease runs inside [`Fence::scope`]. Every
//! [`Store::write`](super::Store::write) made from such a task first checks,
//! in the same transaction, that the lease still names this owner and token
//! and has not expired; otherwise the write fails with
//! [`StoreError::LeaseLost`] and changes nothing. A daemon that was paused or
//! cut off past its lease can therefore never write after a peer took over.
//!
//! The history of leases (`lease_history`: owner, token, when it began and
//! ended, how many fenced writes it carried) is kept for a day, for
//! `/status` and for audits of who synced what.

use std::collections::BTreeMap;
use std::time::Duration;

use super::sql::{params, Conn};
use super::{Result, StoreError, Tx};
use crate::model::Timestamp;

/// The lease a task works under (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub resource: String,
    pub owner: String,
    pub token: u64,
}

tokio::task_local! {
    static FENCE: Fence;
}

impl Fence {
    /// Runs `f` under this lease: every store write it makes (in this task;
    /// not in tasks it spawns) is fenced.
    pub fn scope<F: std::future::Future>(
        self,
        f: F,
    ) -> impl std::future::Future<Output = F::Output> {
        FENCE.scope(self, f)
    }

    /// The lease of the running task, if it works under one.
    pub fn current() -> Option<Fence> {
        FENCE.try_with(Fence::clone).ok()
    }
}

/// The fencing check of a write, on PostgreSQL: counts the write on the
/// lease when it is still this owner's, unexpired, with this token.
pub(super) fn check_pg(conn: &mut dyn Conn, f: &Fence) -> Result<()> {
    let n = conn.exec(
        "UPDATE leases SET writes = writes + 1 WHERE resource = ? AND owner = ? AND token = ? \
         AND expires_at > clock_timestamp()",
        &params![&f.resource, &f.owner, f.token],
    )?;
    if n == 1 {
        Ok(())
    } else {
        Err(lost(f))
    }
}

/// The same check with the host's clock (SQLite: one daemon, one host).
pub(super) fn check_local(conn: &mut dyn Conn, f: &Fence) -> Result<()> {
    let n = conn.exec(
        "UPDATE leases SET writes = writes + 1 WHERE resource = ? AND owner = ? AND token = ? \
         AND expires_at > ?",
        &params![&f.resource, &f.owner, f.token, chrono::Utc::now()],
    )?;
    if n == 1 {
        Ok(())
    } else {
        Err(lost(f))
    }
}

fn lost(f: &Fence) -> StoreError {
    StoreError::LeaseLost {
        resource: f.resource.clone(),
        token: f.token,
    }
}

/// One daemon of the installation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: Timestamp,
}

/// A lease claimed in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub resource: String,
    pub token: u64,
    /// The daemon whose lease had expired (a takeover), if any.
    pub took_over_from: Option<String>,
}

/// What one lease round did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// The database's time of the round.
    pub now: Option<Timestamp>,
    /// Resource → fencing token of every lease held after the round.
    pub held: BTreeMap<String, u64>,
    pub acquired: Vec<Acquired>,
    /// Given up to even out the spread (or no longer configured).
    pub released: Vec<String>,
    /// Found expired at renewal (this daemon was too late).
    pub expired: Vec<String>,
    /// Live daemons with this daemon's rules, this one included.
    pub peers: usize,
    /// The number of leases this daemon aims at: ⌈resources / peers⌉.
    pub target: usize,
}

/// A live peer that holds leases under other rules.
#[derive(Debug, Clone)]
pub struct ForeignPeer {
    pub id: String,
    pub host: String,
    pub rules_hash: String,
    pub leases: u64,
}

/// A daemon row with its leases, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DaemonView {
    #[serde(flatten)]
    pub member: Member,
    pub rules_hash: String,
    pub heartbeat: Timestamp,
    pub heartbeat_age_s: f64,
    /// Heartbeat within the lease timeout.
    pub live: bool,
    pub leases: Vec<LeaseView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseView {
    pub resource: String,
    pub token: u64,
    pub acquired_at: Timestamp,
    /// Since the lease was claimed (it is renewed, not re-claimed).
    pub age_s: f64,
    pub expires_in_s: f64,
    /// Fenced writes made under this lease.
    pub writes: u64,
}

/// One row of `lease_history`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub resource: String,
    pub token: u64,
    pub owner: String,
    pub acquired_at: Timestamp,
    /// The expiry while the lease runs; when it ended otherwise.
    pub ended_at: Timestamp,
    pub took_over_from: Option<String>,
    /// `released`, `expired`, `revoked`, or none while it runs.
    pub end_reason: Option<String>,
    pub writes: u64,
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// History rows are kept this long after their lease ended.
const HISTORY_KEPT: chrono::Duration = chrono::Duration::hours(24);

impl Tx<'_> {
    /// One lease round of `me` at `now` (the database's time): heartbeat,
    /// renewal of its leases, release of the excess over its fair share
    /// (⌈resources / live peers with the same rules⌉) and claims of free
    /// or expired leases up to it. `eligible == false` (this daemon's rules
    /// are not the ones in force) releases everything and claims nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lease_round(
        &mut self,
        now: Timestamp,
        me: &Member,
        rules_hash: &str,
        eligible: bool,
        resources: &[String],
        timeout: Duration,
        pg: bool,
    ) -> Result<Round> {
        let c = &mut *self.conn;
        let expiry = plus(now, timeout);
        let mut round = Round {
            now: Some(now),
            ..Round::default()
        };
        c.exec(
            "INSERT INTO daemons (id, host, pid, started_at, heartbeat, rules_hash) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat, rules_hash = excluded.rules_hash",
            &params![&me.id, &me.host, me.pid as u64, me.started_at, now, rules_hash],
        )?;
        // Dead daemons stay visible in /status for ten lease timeouts.
        let forget = now - chrono::Duration::from_std(timeout * 10).unwrap_or_default();
        c.exec("DELETE FROM daemons WHERE heartbeat < ?", &params![forget])?;
        c.exec(
            "DELETE FROM lease_history WHERE end_reason IS NOT NULL AND ended_at < ?",
            &params![now - HISTORY_KEPT],
        )?;
        let known: std::collections::HashSet<String> = c
            .query("SELECT resource FROM leases", &[])?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_>>()?;
        for r in resources.iter().filter(|r| !known.contains(*r)) {
            c.exec(
                "INSERT INTO leases (resource, owner, token, acquired_at, expires_at, writes) \
                 VALUES (?, NULL, 0, ?, ?, 0) ON CONFLICT (resource) DO NOTHING",
                &params![r, now, now],
            )?;
        }
        // Renew what is still ours; what expired is lost.
        let mine = c.query(
            "SELECT resource, token, expires_at FROM leases WHERE owner = ? ORDER BY resource",
            &params![&me.id],
        )?;
        for row in &mine {
            let (resource, token, expires) = (row.text(0)?, row.u64(1)?, row.time(2)?);
            let configured = resources.contains(&resource);
            if expires <= now {
                end(c, &resource, token, "expired", expires)?;
                round.expired.push(resource);
            } else if !configured || !eligible {
                end(c, &resource, token, "released", now)?;
                round.released.push(resource);
            } else {
                round.held.insert(resource, token);
            }
        }
        c.exec(
            "UPDATE leases SET expires_at = ? WHERE owner = ? AND expires_at > ?",
            &params![expiry, &me.id, now],
        )?;
        c.exec(
            "UPDATE lease_history SET ended_at = ? WHERE owner = ? AND end_reason IS NULL",
            &params![expiry, &me.id],
        )?;
        let live = now - chrono::Duration::from_std(timeout).unwrap_or_default();
        round.peers = c
            .query_opt(
                "SELECT COUNT(*) FROM daemons WHERE heartbeat > ? AND rules_hash = ?",
                &params![live, rules_hash],
            )?
            .map(|r| r.u64(0))
            .transpose()?
            .unwrap_or(1)
            .max(1) as usize;
        round.target = if eligible {
            resources.len().div_ceil(round.peers)
        } else {
            0
        };
        // Give back the excess: the last ones in resource order.
        while round.held.len() > round.target {
            let (resource, token) = round.held.pop_last().expect("non-empty");
            end(c, &resource, token, "released", now)?;
            round.released.push(resource);
        }
        if round.held.len() < round.target {
            // Rows another round is claiming right now are skipped.
            let free = if pg {
                c.query(
                    "SELECT resource, owner, token, writes FROM leases WHERE owner IS NULL OR expires_at <= ? \
                     ORDER BY resource FOR UPDATE SKIP LOCKED",
                    &params![now],
                )?
            } else {
                c.query(
                    "SELECT resource, owner, token, writes FROM leases WHERE owner IS NULL OR expires_at <= ? \
                     ORDER BY resource",
                    &params![now],
                )?
            };
            for row in free {
                if round.held.len() >= round.target {
                    break;
                }
                let resource = row.text(0)?;
                if !resources.contains(&resource) || round.held.contains_key(&resource) {
                    continue;
                }
                let (owner, token, writes) = (row.opt_text(1)?, row.u64(2)?, row.u64(3)?);
                if owner.is_some() {
                    // Expired under its owner: a takeover. Close its history.
                    c.exec(
                        "UPDATE lease_history SET end_reason = 'expired', writes = ? \
                         WHERE resource = ? AND token = ? AND end_reason IS NULL",
                        &params![writes, &resource, token],
                    )?;
                }
                let next = token + 1;
                let n = c.exec(
                    "UPDATE leases SET owner = ?, token = ?, acquired_at = ?, expires_at = ?, writes = 0 \
                     WHERE resource = ? AND token = ?",
                    &params![&me.id, next, now, expiry, &resource, token],
                )?;
                if n != 1 {
                    continue;
                }
                let took_over_from = owner.filter(|o| o != &me.id);
                c.exec(
                    "INSERT INTO lease_history (resource, token, owner, acquired_at, ended_at, took_over_from, end_reason, writes) \
                     VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
                    &params![&resource, next, &me.id, now, expiry, took_over_from.clone()],
                )?;
                round.held.insert(resource.clone(), next);
                round.acquired.push(Acquired {
                    resource,
                    token: next,
                    took_over_from,
                });
            }
        }
        Ok(round)
    }

    /// Gives up every lease of `daemon` at `now` and removes its row (a
    /// clean stop): peers claim them at their next round.
    pub(super) fn leave(&mut self, now: Timestamp, daemon: &str) -> Result<usize> {
        let c = &mut *self.conn;
        let mine = c.query(
            "SELECT resource, token FROM leases WHERE owner = ?",
            &params![daemon],
        )?;
        for row in &mine {
            end(c, &row.text(0)?, row.u64(1)?, "released", now)?;
        }
        c.exec("DELETE FROM daemons WHERE id = ?", &params![daemon])?;
        Ok(mine.len())
    }

    /// A new classification policy (hash `rules_hash`) is being put in
    /// force by daemon `me`: every lease of a daemon with other rules is
    /// revoked in this transaction, so no page classified by the old rules
    /// commits after it; `me`'s row takes the new hash. Returns how many
    /// leases were revoked. Nothing to do without other daemons (SQLite).
    pub fn revoke_other_rules(&mut self, me: Option<&str>, rules_hash: &str) -> Result<usize> {
        let c = &mut *self.conn;
        if let Some(me) = me {
            c.exec(
                "UPDATE daemons SET rules_hash = ? WHERE id = ?",
                &params![rules_hash, me],
            )?;
        }
        let rows = c.query(
            "SELECT l.resource, l.token FROM leases l JOIN daemons d ON d.id = l.owner \
             WHERE d.rules_hash <> ?",
            &params![rules_hash],
        )?;
        let now = chrono::Utc::now();
        for row in &rows {
            end(c, &row.text(0)?, row.u64(1)?, "revoked", now)?;
        }
        Ok(rows.len())
    }
}

/// Ends the lease `resource`/`token`: frees the row (its final write count
/// read in the same statement) and closes its history.
fn end(c: &mut dyn Conn, resource: &str, token: u64, reason: &str, at: Timestamp) -> Result<()> {
    let Some(row) = c.query_opt(
        "UPDATE leases SET owner = NULL, expires_at = ? WHERE resource = ? AND token = ? \
         AND owner IS NOT NULL RETURNING writes",
        &params![at, resource, token],
    )?
    else {
        return Ok(());
    };
    c.exec(
        "UPDATE lease_history SET end_reason = ?, ended_at = ?, writes = ? \
         WHERE resource = ? AND token = ? AND end_reason IS NULL",
        &params![reason, at, row.u64(0)?, resource, token],
    )?;
    Ok(())
}

/// Reads for `/status`, the start-up check and tests.
pub(super) fn foreign_peers(
    c: &mut dyn Conn,
    now: Timestamp,
    me: &str,
    rules_hash: &str,
    timeout: Duration,
) -> Result<Vec<ForeignPeer>> {
    let live = now - chrono::Duration::from_std(timeout).unwrap_or_default();
    c.query(
        "SELECT d.id, d.host, d.rules_hash, COUNT(*) FROM daemons d JOIN leases l ON l.owner = d.id \
         WHERE d.heartbeat > ? AND d.id <> ? AND d.rules_hash <> ? AND l.expires_at > ? \
         GROUP BY d.id, d.host, d.rules_hash ORDER BY d.id",
        &params![live, me, rules_hash, now],
    )?
    .iter()
    .map(|r| {
        Ok(ForeignPeer {
            id: r.text(0)?,
            host: r.text(1)?,
            rules_hash: r.text(2)?,
            leases: r.u64(3)?,
        })
    })
    .collect()
}

pub(super) fn view(c: &mut dyn Conn, now: Timestamp, timeout: Duration) -> Result<Vec<DaemonView>> {
    let mut daemons: Vec<DaemonView> = c
        .query(
            "SELECT id, host, pid, started_at, heartbeat, rules_hash FROM daemons ORDER BY started_at, id",
            &[],
        )?
        .iter()
        .map(|r| {
            let heartbeat = r.time(4)?;
            let age = now - heartbeat;
            Ok(DaemonView {
                member: Member {
                    id: r.text(0)?,
                    host: r.text(1)?,
                    pid: r.u64(2)? as u32,
                    started_at: r.time(3)?,
                },
                rules_hash: r.text(5)?,
                heartbeat,
                heartbeat_age_s: secs(age),
                live: age.to_std().unwrap_or_default() < timeout,
                leases: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    for r in c.query(
        "SELECT owner, resource, token, acquired_at, expires_at, writes FROM leases \
         WHERE owner IS NOT NULL AND expires_at > ? ORDER BY resource",
        &params![now],
    )? {
        let owner = r.text(0)?;
        let acquired_at = r.time(3)?;
        let lease = LeaseView {
            resource: r.text(1)?,
            token: r.u64(2)?,
            acquired_at,
            age_s: secs(now - acquired_at),
            expires_in_s: secs(r.time(4)? - now),
            writes: r.u64(5)?,
        };
        if let Some(d) = daemons.iter_mut().find(|d| d.member.id == owner) {
            d.leases.push(lease);
        }
    }
    Ok(daemons)
}

pub(super) fn history(c: &mut dyn Conn, resource: Option<&str>) -> Result<Vec<HistoryEntry>> {
    let rows = match resource {
        Some(r) => c.query(
            "SELECT h.resource, h.token, h.owner, h.acquired_at, h.ended_at, h.took_over_from, h.end_reason, \
             CASE WHEN h.end_reason IS NULL THEN COALESCE(l.writes, h.writes) ELSE h.writes END \
             FROM lease_history h LEFT JOIN leases l ON l.resource = h.resource AND l.token = h.token \
             WHERE h.resource = ? ORDER BY h.resource, h.token",
            &params![r],
        )?,
        None => c.query(
            "SELECT h.resource, h.token, h.owner, h.acquired_at, h.ended_at, h.took_over_from, h.end_reason, \
             CASE WHEN h.end_reason IS NULL THEN COALESCE(l.writes, h.writes) ELSE h.writes END \
             FROM lease_history h LEFT JOIN leases l ON l.resource = h.resource AND l.token = h.token \
             ORDER BY h.resource, h.token",
            &[],
        )?,
    };
    rows.iter()
        .map(|r| {
            Ok(HistoryEntry {
                resource: r.text(0)?,
                token: r.u64(1)?,
                owner: r.text(2)?,
                acquired_at: r.time(3)?,
                ended_at: r.time(4)?,
                took_over_from: r.opt_text(5)?,
                end_reason: r.opt_text(6)?,
                writes: r.u64(7)?,
            })
        })
        .collect()
}

impl super::Store {
    /// Whether several daemons can share this store (PostgreSQL): then
    /// connectors and webhook endpoints are worked under leases.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, super::Backend::Postgres(_))
    }

    fn db_now(&self, c: &mut dyn Conn) -> Result<Timestamp> {
        match self.backend {
            super::Backend::Postgres(_) => c
                .query_opt("SELECT clock_timestamp()", &[])?
                .ok_or_else(|| StoreError::Backend("no time from the database".into()))?
                .time(0),
            super::Backend::Sqlite(_) => Ok(chrono::Utc::now()),
        }
    }

    /// Runs lease work in its own transaction. On PostgreSQL it runs on the
    /// lease connection without the store's write lock, so a renewal never
    /// waits behind page writes (of this or another daemon): lease rows are
    /// claimed with row locks, and a page write's fencing check takes the
    /// same row's lock, so a claim and a fenced write are ordered by the
    /// database either way. On SQLite it is an ordinary write.
    fn lease_write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let super::Backend::Postgres(p) = &self.backend else {
            return self.write_blocking(f);
        };
        super::offload(|| {
            let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            p.batch(
                super::pg::Lane::Lease,
                "BEGIN ISOLATION LEVEL READ COMMITTED",
            )?;
            let res = catch_unwind(AssertUnwindSafe(|| {
                let mut conn = p.lease();
                let mut tx = Tx::new(&mut conn);
                f(&mut tx)
            }));
            match res {
                Ok(Ok(v)) => {
                    p.batch(super::pg::Lane::Lease, "COMMIT")?;
                    Ok(v)
                }
                Ok(Err(e)) => {
                    if let Err(r) = p.batch(super::pg::Lane::Lease, "ROLLBACK") {
                        tracing::warn!(error = %r, "lease transaction rollback failed");
                    }
                    Err(e)
                }
                Err(panic) => {
                    let _ = p.batch(super::pg::Lane::Lease, "ROLLBACK");
                    resume_unwind(panic)
                }
            }
        })
    }

    /// One lease round (see [`Tx::lease_round`]), in one transaction, at
    /// the database's time.
    pub async fn lease_round(
        &self,
        me: &Member,
        rules_hash: &str,
        eligible: bool,
        resources: &[String],
        timeout: Duration,
    ) -> Result<Round> {
        let pg = self.is_shared();
        self.lease_write(|tx| {
            let now = self.db_now(tx.conn)?;
            tx.lease_round(now, me, rules_hash, eligible, resources, timeout, pg)
        })
    }

    /// Releases every lease of `daemon` and removes its row; returns how
    /// many leases it held.
    pub async fn leave(&self, daemon: &str) -> Result<usize> {
        self.lease_write(|tx| {
            let now = self.db_now(tx.conn)?;
            tx.leave(now, daemon)
        })
    }

    /// Live peers other than `me` holding leases under rules other than
    /// `rules_hash`.
    pub fn foreign_peers(
        &self,
        me: &str,
        rules_hash: &str,
        timeout: Duration,
    ) -> Result<Vec<ForeignPeer>> {
        self.read(|c| {
            let now = self.db_now(c)?;
            foreign_peers(c, now, me, rules_hash, timeout)
        })
    }

    /// Every known daemon with its live leases, at the database's time.
    pub fn cluster_view(&self, timeout: Duration) -> Result<Vec<DaemonView>> {
        self.read(|c| {
            let now = self.db_now(c)?;
            view(c, now, timeout)
        })
    }

    /// The lease history (the last day), of one resource or all.
    pub fn lease_history(&self, resource: Option<&str>) -> Result<Vec<HistoryEntry>> {
        self.read(|c| history(c, resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_both_backends;
    use crate::store::Store;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            host: "host".into(),
            pid: 1,
            started_at: chrono::Utc::now(),
        }
    }

    fn resources(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("connector:c{i}")).collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// A round at `now` (the tests move time themselves).
    async fn round(s: &Store, now: Timestamp, me: &Member, hash: &str, res: &[String]) -> Round {
        let pg = s.is_shared();
        s.write(|tx| tx.lease_round(now, me, hash, true, res, TIMEOUT, pg))
            .await
            .unwrap()
    }

    async fn spread_evenly_and_hand_over(s: &Store) {
        let res = resources(5);
        let (a, b, c) = (member("a"), member("b"), member("c"));
        let t0 = chrono::Utc::now();
        let r = round(s, t0, &a, "h", &res).await;
        assert_eq!((r.held.len(), r.peers, r.target), (5, 1, 5));
        assert!(r.held.values().all(|t| *t == 1), "{:?}", r.held);
        // A second daemon: it finds nothing free; the first gives back its
        // excess over ⌈5/2⌉ at its next round, the second takes it.
        let r = round(s, t0, &b, "h", &res).await;
        assert_eq!((r.held.len(), r.peers, r.target), (0, 2, 3));
        let r = round(s, t0, &a, "h", &res).await;
        assert_eq!(r.held.len(), 3);
        assert_eq!(r.released, vec!["connector:c4", "connector:c3"]);
        let r = round(s, t0, &b, "h", &res).await;
        assert_eq!(r.held.len(), 2);
        assert_eq!(
            r.held
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            vec![("connector:c3", 2), ("connector:c4", 2)],
            "a new claim takes the next fencing token"
        );
        assert!(r.acquired.iter().all(|a| a.took_over_from.is_none()));
        // A daemon with other rules is not counted as a peer.
        let r = round(s, t0, &c, "other", &res).await;
        assert_eq!((r.peers, r.held.len()), (1, 0));
        // A clean stop hands everything over at once.
        assert_eq!(s.leave("a").await.unwrap(), 3);
        let r = round(s, t0, &b, "h", &res).await;
        assert_eq!(r.held.len(), 5, "{r:?}");
        let hist = s.lease_history(Some("connector:c0")).unwrap();
        assert_eq!(
            hist.iter()
                .map(|h| (h.owner.as_str(), h.token, h.end_reason.as_deref()))
                .collect::<Vec<_>>(),
            vec![("a", 1, Some("released")), ("b", 2, None)]
        );
        let view = s.cluster_view(TIMEOUT).unwrap();
        assert_eq!(
            view.iter()
                .map(|d| d.member.id.as_str())
                .collect::<Vec<_>>(),
            vec!["b", "c"],
            "the leaving daemon's row is gone"
        );
        assert_eq!(view[0].leases.len(), 5);
    }

    async fn expired_leases_are_taken_over_and_fenced(s: &Store) {
        let res = resources(2);
        let (a, b) = (member("a"), member("b"));
        let t0 = chrono::Utc::now();
        let r = round(s, t0, &a, "h", &res).await;
        assert_eq!(r.held.len(), 2);
        let fence = Fence {
            resource: "connector:c0".into(),
            owner: "a".into(),
            token: 1,
        };
        // A fenced write under a valid lease goes through and is counted.
        fence
            .clone()
            .scope(s.write(|tx| tx.put_meta("probe", &1)))
            .await
            .unwrap();
        // `a` stops renewing; past the timeout `b` (alone alive) takes over.
        let later = t0 + chrono::Duration::seconds(31);
        let r = round(s, later, &b, "h", &res).await;
        assert_eq!(r.held.len(), 2, "{r:?}");
        assert!(r
            .acquired
            .iter()
            .all(|x| x.took_over_from.as_deref() == Some("a") && x.token == 2));
        // `a`'s write under the superseded token changes nothing.
        let err = fence
            .clone()
            .scope(s.write(|tx| tx.put_meta("probe", &2)))
            .await
            .unwrap_err();
        assert!(err.is_lease_lost(), "{err}");
        assert_eq!(
            err.to_string(),
            "lease lost: `connector:c0` (fencing token 1) expired or was taken over by another daemon; nothing was written"
        );
        assert_eq!(s.meta::<i64>("probe").unwrap(), Some(1));
        // When `a` comes back its renewal finds the leases expired.
        let r = round(s, later, &a, "h", &res).await;
        assert_eq!(
            r.expired.len(),
            0,
            "already taken over: nothing of a's left"
        );
        assert!(r.held.is_empty());
        let hist = s.lease_history(Some("connector:c0")).unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(
            (
                hist[0].owner.as_str(),
                hist[0].end_reason.as_deref(),
                hist[0].writes
            ),
            ("a", Some("expired"), 1)
        );
        assert_eq!(
            (hist[1].owner.as_str(), hist[1].took_over_from.as_deref()),
            ("b", Some("a"))
        );
        // Unfenced work (admin writes) is not affected by leases.
        s.write(|tx| tx.put_meta("probe", &3)).await.unwrap();
    }

    async fn a_reload_revokes_leases_of_other_rules(s: &Store) {
        let res = resources(4);
        let (a, b) = (member("a"), member("b"));
        let t0 = chrono::Utc::now();
        round(s, t0, &a, "old", &res).await;
        round(s, t0, &b, "old", &res).await;
        round(s, t0, &a, "old", &res).await;
        let r = round(s, t0, &b, "old", &res).await;
        assert_eq!(r.held.len(), 2);
        // `a` starts putting new rules in force: `b`'s leases go with it.
        let revoked = s
            .write(|tx| tx.revoke_other_rules(Some("a"), "new"))
            .await
            .unwrap();
        assert_eq!(revoked, 2);
        let fence = Fence {
            resource: "connector:c2".into(),
            owner: "b".into(),
            token: 2,
        };
        let err = fence
            .scope(s.write(|tx| tx.put_meta("x", &1)))
            .await
            .unwrap_err();
        assert!(err.is_lease_lost(), "{err}");
        assert_eq!(s.meta::<i64>("x").unwrap(), None);
        let peers = s.foreign_peers("b", "old", TIMEOUT).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            (peers[0].id.as_str(), peers[0].rules_hash.as_str()),
            ("a", "new")
        );
        assert!(s.foreign_peers("c", "new", TIMEOUT).unwrap().is_empty());
    }

    on_both_backends!(
        "store::lease::";
        spread_evenly_and_hand_over,
        expired_leases_are_taken_over_and_fenced,
        a_reload_revokes_leases_of_other_rules,
    );
}
