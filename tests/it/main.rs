//! The single integration-test binary: one module per area, mocks next to
//! the tests that use them.

mod netsuite;
mod netsuite_mock;
