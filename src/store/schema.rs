//! The schema, as versioned migrations shared by both backends.
//!
//! Each migration is written once with type placeholders that each backend
//! fills in ([`render`]): `{DEC}` money (NUMERIC / canonical decimal TEXT,
//! never a float), `{TS}` UTC instants (TIMESTAMPTZ / RFC 3339 TEXT with
//! nanoseconds, so text order is time order), `{DATE}`, `{BOOL}`, `{JSON}`
//! (JSONB / TEXT), `{INT}` 64-bit integers, `{SEQ}` an auto-assigned 64-bit
//! key, `{WR}` (SQLite `WITHOUT ROWID` for tables keyed by text). Migrations
//! are applied in order at start-up, each in its own transaction with its
//! row in `schema_migrations`, so applying them again is a no-op. Never edit
//! a released migration: add the next one. docs/schema.md documents the
//! tables.

/// `(version, statements)`, in order.
pub(crate) const MIGRATIONS: &[(i64, &str)] =
    &[(1, V1), (2, V2), (3, V3), (4, V4), (5, V5), (6, V6)];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 6;

/// Cheaper record writes. On SQLite, `invoices` and `transactions` become
/// rowid tables: a new row is appended at the end of the table instead of
/// being placed by its text key (records arrive in modification order, not
/// id order, so every page of a sync touched pages all over the table);
/// the key `(connector, id)` stays unique through its index, and the
/// secondary indexes point at the 8-byte rowid instead of repeating the key.
/// On both backends `invoices_due` goes: no query names it or needs it (a
/// due-date filter runs inside the connector, customer, status or currency
/// range it is combined with), and each index is one more random insert per
/// invoice. Every other index keeps its name and columns.
const V4: &str = r#"
DROP INDEX invoices_due;
--sqlite-only
CREATE TABLE invoices_v4 (
    connector TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    number TEXT NOT NULL,
    issue_date {DATE} NOT NULL,
    due_date {DATE} NOT NULL,
    currency TEXT NOT NULL,
    total {DEC} NOT NULL,
    amount_due {DEC} NOT NULL,
    status TEXT NOT NULL,
    on_hold {BOOL} NOT NULL,
    last_modified {TS} NOT NULL,
    changed_at {TS},
    PRIMARY KEY (connector, id)
);
INSERT INTO invoices_v4 (connector, id, customer_id, number, issue_date, due_date, currency,
    total, amount_due, status, on_hold, last_modified, changed_at)
    SELECT connector, id, customer_id, number, issue_date, due_date, currency,
    total, amount_due, status, on_hold, last_modified, changed_at FROM invoices ORDER BY connector, id;
DROP TABLE invoices;
ALTER TABLE invoices_v4 RENAME TO invoices;
CREATE INDEX invoices_customer ON invoices (connector, customer_id, id);
CREATE INDEX invoices_status ON invoices (connector, status, id);
CREATE INDEX invoices_currency ON invoices (connector, currency, id);
CREATE INDEX invoices_changed ON invoices (connector, changed_at);

CREATE TABLE transactions_v4 (
    connector TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    date {DATE} NOT NULL,
    amount {DEC} NOT NULL,
    currency TEXT NOT NULL,
    last_modified {TS} NOT NULL,
    changed_at {TS},
    PRIMARY KEY (connector, id)
);
INSERT INTO transactions_v4 (connector, id, customer_id, kind, date, amount, currency,
    last_modified, changed_at)
    SELECT connector, id, customer_id, kind, date, amount, currency, last_modified, changed_at
    FROM transactions ORDER BY connector, id;
DROP TABLE transactions;
ALTER TABLE transactions_v4 RENAME TO transactions;
CREATE INDEX transactions_customer ON transactions (connector, customer_id, id);
CREATE INDEX transactions_changed ON transactions (connector, changed_at);
--end
"#;

/// Scale-out: the daemons sharing a PostgreSQL store, the lease each
/// connector's (and webhook endpoint's) work is done under, and the history
/// of those leases. Expiry is in the database's clock. Unused on SQLite (one
/// daemon owns the file).
const V6: &str = r#"
CREATE TABLE daemons (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid {INT} NOT NULL,
    started_at {TS} NOT NULL,
    heartbeat {TS} NOT NULL,
    rules_hash TEXT NOT NULL
) {WR};

CREATE TABLE leases (
    resource TEXT PRIMARY KEY,
    owner TEXT,
    token {INT} NOT NULL,
    acquired_at {TS} NOT NULL,
    expires_at {TS} NOT NULL,
    writes {INT} NOT NULL
) {WR};
CREATE INDEX leases_owner ON leases (owner);

CREATE TABLE lease_history (
    resource TEXT NOT NULL,
    token {INT} NOT NULL,
    owner TEXT NOT NULL,
    acquired_at {TS} NOT NULL,
    ended_at {TS} NOT NULL,
    took_over_from TEXT,
    end_reason TEXT,
    writes {INT} NOT NULL,
    PRIMARY KEY (resource, token)
) {WR};
CREATE INDEX lease_history_ended ON lease_history (ended_at);
"#;

/// Resync reconciliation: which records each entity stream of a resync
/// batch received, and when the stream started, so the stream's end can
/// remove the stored records of the batch's customers the ERP no longer
/// has (deleted outside its deletion feed's window).
const V3: &str = r#"
CREATE TABLE resync_streams (
    batch {INT} NOT NULL,
    entity TEXT NOT NULL,
    started_at {TS} NOT NULL,
    PRIMARY KEY (batch, entity)
) {WR};

CREATE TABLE resync_seen (
    batch {INT} NOT NULL,
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (batch, entity, id)
) {WR};
"#;

/// Partitioned first syncs: one durable cursor per id range of an entity
/// stream while its first sync reads the ranges in parallel. The rows of a
/// stream exist only until its last range is done; the stream's incremental
/// cursor (`cursors`) is written with them, before the first range is read.
const V5: &str = r#"
CREATE TABLE partitions (
    connector TEXT NOT NULL,
    entity TEXT NOT NULL,
    part {INT} NOT NULL,
    cursor TEXT NOT NULL,
    done {BOOL} NOT NULL,
    PRIMARY KEY (connector, entity, part)
) {WR};
"#;

const V1: &str = r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value {JSON} NOT NULL
) {WR};

CREATE TABLE customers (
    connector TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT,
    subsidiary TEXT,
    currency TEXT,
    balance {DEC} NOT NULL,
    inactive {BOOL} NOT NULL,
    intercompany {BOOL} NOT NULL,
    last_modified {TS} NOT NULL,
    custom {JSON} NOT NULL,
    excluded {BOOL} NOT NULL,
    exclusion_source TEXT,
    exclusion_reason TEXT NOT NULL,
    classified_at {TS} NOT NULL,
    first_seen {TS} NOT NULL,
    PRIMARY KEY (connector, id)
) {WR};
CREATE INDEX customers_excluded ON customers (connector, excluded, id);

CREATE TABLE decisions (
    connector TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at {TS} NOT NULL,
    PRIMARY KEY (connector, customer_id)
) {WR};

CREATE TABLE invoices (
    connector TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    number TEXT NOT NULL,
    issue_date {DATE} NOT NULL,
    due_date {DATE} NOT NULL,
    currency TEXT NOT NULL,
    total {DEC} NOT NULL,
    amount_due {DEC} NOT NULL,
    status TEXT NOT NULL,
    on_hold {BOOL} NOT NULL,
    last_modified {TS} NOT NULL,
    PRIMARY KEY (connector, id)
) {WR};
CREATE INDEX invoices_customer ON invoices (connector, customer_id, id);
CREATE INDEX invoices_status_due ON invoices (connector, status, due_date);
CREATE INDEX invoices_due ON invoices (connector, due_date);
CREATE INDEX invoices_currency ON invoices (connector, currency);
CREATE INDEX invoices_modified ON invoices (connector, last_modified);

CREATE TABLE transactions (
    connector TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    date {DATE} NOT NULL,
    amount {DEC} NOT NULL,
    currency TEXT NOT NULL,
    last_modified {TS} NOT NULL,
    PRIMARY KEY (connector, id)
) {WR};
CREATE INDEX transactions_customer ON transactions (connector, customer_id, id);
CREATE INDEX transactions_modified ON transactions (connector, last_modified);

CREATE TABLE parked (
    connector TEXT NOT NULL,
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    last_modified {TS} NOT NULL,
    record {JSON} NOT NULL,
    PRIMARY KEY (connector, entity, id)
) {WR};
CREATE INDEX parked_customer ON parked (connector, customer_id);

CREATE TABLE tombstones (
    connector TEXT NOT NULL,
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    at {TS} NOT NULL,
    deleted {BOOL} NOT NULL,
    recorded_at {TS} NOT NULL,
    PRIMARY KEY (connector, entity, id)
) {WR};
CREATE INDEX tombstones_recorded ON tombstones (recorded_at);

CREATE TABLE cursors (
    connector TEXT NOT NULL,
    entity TEXT NOT NULL,
    cursor TEXT NOT NULL,
    PRIMARY KEY (connector, entity)
) {WR};

CREATE TABLE counters (
    connector TEXT NOT NULL,
    name TEXT NOT NULL,
    value {INT} NOT NULL,
    PRIMARY KEY (connector, name)
) {WR};

CREATE TABLE classification_counts (
    connector TEXT NOT NULL,
    excluded {BOOL} NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    customers {INT} NOT NULL,
    PRIMARY KEY (connector, excluded, source, reason)
) {WR};

CREATE TABLE audit (
    seq {SEQ},
    at {TS} NOT NULL,
    connector TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    from_class {JSON},
    to_class {JSON}
);
CREATE INDEX audit_customer ON audit (connector, customer_id, seq);
CREATE INDEX audit_at ON audit (at);

CREATE TABLE quarantine (
    seq {SEQ},
    connector TEXT NOT NULL,
    at {TS} NOT NULL,
    entity TEXT NOT NULL,
    external_id TEXT,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL
);
CREATE INDEX quarantine_connector ON quarantine (connector, seq);

CREATE TABLE id_sequence (
    name TEXT PRIMARY KEY,
    value {INT} NOT NULL
) {WR};

CREATE TABLE resync_jobs (
    id {INT} PRIMARY KEY,
    connector TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at {TS} NOT NULL,
    finished_at {TS},
    job {JSON} NOT NULL
);
CREATE INDEX resync_jobs_state ON resync_jobs (state, finished_at);

CREATE TABLE resync_members (
    job {INT} NOT NULL,
    customer_id TEXT NOT NULL,
    done {BOOL} NOT NULL,
    PRIMARY KEY (job, customer_id)
) {WR};

CREATE TABLE resync_queued (
    connector TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    job {INT} NOT NULL,
    PRIMARY KEY (connector, customer_id)
) {WR};

CREATE TABLE reminder_stops (
    connector TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    flag {JSON} NOT NULL,
    PRIMARY KEY (connector, customer_id)
) {WR};

CREATE TABLE reminder_holds (
    connector TEXT NOT NULL,
    invoice_id TEXT NOT NULL,
    flag {JSON} NOT NULL,
    PRIMARY KEY (connector, invoice_id)
) {WR};

CREATE TABLE credentials (
    connector TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at {TS} NOT NULL,
    PRIMARY KEY (connector, name)
) {WR};
"#;

/// The read side: the change feed (outbox), webhook delivery cursors, and
/// when each record last changed in the store (`modified_since`). The
/// read-side indexes end with the record id so a filtered list pages by key
/// without sorting; they replace V1 indexes nothing read yet (same number of
/// indexes per table, so ingest writes no more index entries).
///
/// A store that already holds data when this runs gets a feed that starts
/// after that data: `events` is set to 1 and `events_expired` to 1, so a
/// consumer starting from the beginning is told to do a full read first
/// (410), exactly as after a retention cut.
const V2: &str = r#"
CREATE TABLE events (
    seq {INT} PRIMARY KEY,
    at {TS} NOT NULL,
    type TEXT NOT NULL,
    connector TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    data {JSON}
);

CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    after_seq {INT} NOT NULL,
    updated_at {TS} NOT NULL,
    failing_since {TS},
    last_error TEXT
) {WR};

ALTER TABLE invoices ADD COLUMN changed_at {TS};
UPDATE invoices SET changed_at = last_modified;
ALTER TABLE transactions ADD COLUMN changed_at {TS};
UPDATE transactions SET changed_at = last_modified;

DROP INDEX invoices_status_due;
CREATE INDEX invoices_status ON invoices (connector, status, id);
DROP INDEX invoices_currency;
CREATE INDEX invoices_currency ON invoices (connector, currency, id);
DROP INDEX invoices_modified;
CREATE INDEX invoices_changed ON invoices (connector, changed_at);
DROP INDEX transactions_modified;
CREATE INDEX transactions_changed ON transactions (connector, changed_at);

INSERT INTO id_sequence (name, value) SELECT 'events', 1 WHERE EXISTS (SELECT 1 FROM customers);
INSERT INTO id_sequence (name, value) SELECT 'events_expired', 1 WHERE EXISTS (SELECT 1 FROM customers);
"#;

/// Which backend a migration is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The migration text with the backend's column types. Statements between
/// a `--sqlite-only` line and an `--end` line run on SQLite only (storage
/// layout that PostgreSQL does not have, such as rowid tables).
pub(crate) fn render(sql: &str, d: Dialect) -> String {
    let mut kept = String::with_capacity(sql.len());
    let mut sqlite_only = false;
    for line in sql.lines() {
        match line.trim() {
            "--sqlite-only" => sqlite_only = true,
            "--end" => sqlite_only = false,
            _ if sqlite_only && d != Dialect::Sqlite => {}
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    let sql = kept.as_str();
    let map: &[(&str, &str)] = match d {
        Dialect::Sqlite => &[
            ("{DEC}", "TEXT"),
            ("{TS}", "TEXT"),
            ("{DATE}", "TEXT"),
            ("{BOOL}", "INTEGER"),
            ("{JSON}", "TEXT"),
            ("{INT}", "INTEGER"),
            ("{SEQ}", "INTEGER PRIMARY KEY"),
            ("{WR}", "WITHOUT ROWID"),
        ],
        Dialect::Postgres => &[
            ("{DEC}", "NUMERIC"),
            ("{TS}", "TIMESTAMPTZ"),
            ("{DATE}", "DATE"),
            ("{BOOL}", "BOOLEAN"),
            ("{JSON}", "JSONB"),
            ("{INT}", "BIGINT"),
            (
                "{SEQ}",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            ),
            ("{WR}", ""),
        ],
    };
    let mut s = sql.to_string();
    for (from, to) in map {
        s = s.replace(from, to);
    }
    s
}

/// The bookkeeping table, created before any migration runs.
pub(crate) fn migrations_table(d: Dialect) -> String {
    render(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version {INT} PRIMARY KEY, applied_at {TS} NOT NULL)",
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_rendered_and_versions_ascend() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            for (_, m) in MIGRATIONS {
                assert!(!render(m, d).contains('{'), "{d:?}");
            }
        }
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(MIGRATIONS.last().unwrap().0, SCHEMA_VERSION);
    }
}
