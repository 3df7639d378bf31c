//! The single integration-test binary: every module drives the real daemon
//! (the built `erpsync` binary, or the real server in-process) against real
//! or mock upstreams. Shared helpers live in `support`.

mod console;
mod console_e2e;
mod consumer;
mod daemon;
mod exclusion;
mod fault_matrix;
mod feed;
mod feed_daemon;
mod hardening;
mod kill9;
mod migrate;
mod netsuite;
mod netsuite_daemon;
mod netsuite_mock;
mod oauth;
mod oauth_mock;
mod parallel;
mod platform;
mod quickbooks;
mod quickbooks_daemon;
mod quickbooks_mock;
mod reliability;
mod reminders;
mod resync;
mod scaleout;
mod support;
mod xero;
mod xero_daemon;
mod xero_mock;
