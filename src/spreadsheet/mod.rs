//! The spreadsheet round trip: reading a customers CSV by header name
//! ([`customers_csv`], the one owner of that format's reading), telling a
//! person's edits from a spreadsheet's damage ([`edits`]), and comparing an
//! edited file with what transform would write ([`diff`], `segsync diff`).

pub mod customers_csv;
pub mod diff;
pub mod edits;
