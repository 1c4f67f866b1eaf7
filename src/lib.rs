//! segsync: copy customer profiles from Segment (Unify Profile API) into
//! Voucherify customers, as a staged pipeline of plain files.
//!
//! Stages (`extract`, `transform`, `load`, `status`) each own one module; the
//! API clients (`segment`, `voucherify`) share one HTTP layer (`http`); the
//! mapping is a pure function (`mapping`); the data directory's file names and
//! state formats belong to `state`, the exchanged formats to `records`, file
//! machinery to `files`, dates to `dates`. The emulator (`sandbox`) imports
//! none of the clients. docs/DESIGN.md is the design document.

pub mod cli;
pub mod config;
pub mod customers_csv;
pub mod dates;
pub mod diff;
pub mod edits;
pub mod error;
pub mod extract;
pub mod files;
pub mod http;
pub mod load;
pub mod mapping;
pub mod mapping_command;
pub mod metadata_schema;
pub mod records;
pub mod sandbox;
pub mod segment;
pub mod state;
pub mod status;
pub mod transform;
pub mod ui;
pub mod voucherify;
