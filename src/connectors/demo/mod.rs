//! Built-in demo ERP (being written).
