//! Helpers shared by the CSV exports (excluded list, reminder candidates).
//! Pure text handling; no I/O.

use std::borrow::Cow;

/// A CSV cell that a spreadsheet will not run as a formula: a cell starting
/// with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'`
/// (OWASP "CSV injection"). For text cells only: a negative amount must stay
/// a number.
pub fn csv_safe(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}
