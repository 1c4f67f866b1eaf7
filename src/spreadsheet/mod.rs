//! The customers file, as every stage after transform reads it: by header
//! name ([`customers_csv`], the one owner of that format's reading),
//! validated row by row ([`input`]), as request bodies in batches
//! ([`batch`]), and with a person's edits told from a spreadsheet's damage
//! ([`edits`]), and a person's edits kept as overrides every transform
//! applies ([`overrides`], `edits.csv`). Comparing an edited file with what
//! transform would write is `crate::diff` (`segsync diff`), above transform.

pub mod batch;
pub mod customers_csv;
pub mod edits;
pub mod input;
pub mod overrides;
