//! The single integration-test binary: every module drives the real daemon
//! (the built `erpsync` binary, or the real server in-process) against real
//! or mock upstreams. Shared helpers live in `support`.

mod daemon;
mod exclusion;
mod hardening;
mod kill9;
mod migrate;
mod netsuite;
mod netsuite_daemon;
mod netsuite_mock;
mod reminders;
mod resync;
mod support;
