//! Resync: re-fetching the full history of customers that came back.
//!
//! [`queue`] keeps durable jobs in the store; the worker that drains them
//! lands with the resync engine.

pub mod queue;
