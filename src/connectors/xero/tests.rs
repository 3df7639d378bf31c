//! Unit tests of the Xero connector's pure parts: options, MS-JSON dates,
//! money, mapping, queries, cursors and error mapping.
