//! segsync: copy customer profiles from Segment (Unify Profile API) into
//! Voucherify customers, as a staged pipeline of plain files.
//!
//! Stages (`extract`, `transform`, `load`, `status`) each own one module; the
//! API clients (`segment`, `voucherify`) share one HTTP layer (`http`); the
//! mapping is a pure function (`mapping`); file formats live in `records` and
//! file machinery in `files`.

pub mod cli;
pub mod config;
pub mod error;
pub mod extract;
pub mod files;
pub mod http;
pub mod load;
pub mod mapping;
pub mod records;
pub mod sandbox;
pub mod segment;
pub mod status;
pub mod transform;
pub mod ui;
pub mod voucherify;
