//! The single integration-test binary: every module drives the real daemon
//! (the built `erpsync` binary, or the real server in-process) against real
//! or mock upstreams. Shared helpers live in `support`.

mod daemon;
mod resync;
mod support;
