//! erpsync: keeps a local copy of ERP customers, invoices and transactions,
//! and keeps out everything that belongs to excluded customers.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! - [`config`]: TOML → validated [`config::Config`]; pure, no I/O but reading files.
//! - [`model`]: canonical customer / invoice / transaction types.
//! - [`rules`]: the condition language shared by smart rules and reminder scenarios.
//! - [`classify`]: manual decision > smart rules > native exclusions.
//! - [`exclusion`]: the one transition point (purge / resync / audit) and the
//!   admin operations on it: manual decisions, rule impact, search, explain.
//! - [`reload`]: puts new rules in force (SIGHUP, API, start-up), with the
//!   new-exclusion ratio guard.
//! - [`store`]: the only module that knows the database engine (SQLite or
//!   PostgreSQL): schema, migrations, transactions.
//! - [`migrate`]: imports a dump of an earlier install's store.
//! - [`connectors`]: the registry of kinds, one folder per ERP, the shared
//!   request [`connectors::Budget`] and the OAuth 2.0 client.
//! - [`ingest`]: applies one upstream page to the store (polling and resync).
//! - [`sync`]: the per-connector poll scheduler.
//! - [`credentials`]: each connector's credentials in the store (OAuth tokens).
//! - [`resync`]: durable resync jobs, one worker per connector, progress and ETA.
//! - [`read`]: the read side's invoice and transaction lists and CSV exports.
//! - [`feed`]: the change feed (`/changes`), its retention and webhooks.
//! - [`http`]: health, status, metrics, the admin API and the web console.
//! - [`daemon`]: wires everything together and runs until shutdown.
//! - [`cli`]: the `erpsync` command line.

pub mod app;
pub mod classify;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod credentials;
pub mod daemon;
pub mod exclusion;
pub mod export;
pub mod feed;
pub mod hooks;
pub mod http;
pub mod ingest;
pub mod migrate;
pub mod model;
pub mod net;
pub mod preflight;
pub mod read;
pub mod reload;
pub mod reminders;
pub mod resync;
pub mod rules;
pub mod secrets;
pub mod store;
pub mod sync;
