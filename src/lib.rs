//! segsync: copy customer profiles from Segment (Unify Profile API) into
//! Voucherify customers, as a staged pipeline of plain files.
//!
//! Stages (`extract`, `transform`, `plan`, `load`, `status`) each own one module; the
//! API clients share one folder (`api`: the HTTP layer, the Segment and
//! Voucherify clients, adaptive concurrency); the mapping is a pure function
//! (`mapping`, with its file, its command and the project's metadata schema);
//! the spreadsheet round trip (`spreadsheet`: reading customers CSVs, edits
//! and damage, `diff`) lives together; the data directory's file names and
//! state formats belong to `state`, the exchanged formats to `records`, file
//! machinery to `files`, the ordered worker pool to `pool`, dates to `dates`.
//! The emulator (`sandbox`) imports none of the clients. docs/DESIGN.md is
//! the design document.

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dates;
pub mod diff;
pub mod email;
pub mod error;
pub mod export;
pub mod extract;
pub mod fields;
pub mod files;
pub mod keys;
pub mod load;
pub mod mapping;
pub mod pipeline;
pub mod plan;
pub mod pool;
pub mod records;
pub mod report;
#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "sandbox")]
pub mod sandbox_command;
pub mod spreadsheet;
pub mod state;
pub mod status;
pub mod transform;
pub mod ui;
pub mod undo;
