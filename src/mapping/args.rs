//! The flags that choose the effective mapping (`--mapping`,
//! `--source-id-type`), shared by every command that maps.

use super::Mapping;
use crate::config::identifier_types;
use crate::error::UsageError;

/// The effective mapping: the mapping file (`--mapping`, `SEGSYNC_MAPPING`,
/// else `segsync.toml` in the working directory when it exists) and the
/// `source_id` shorthand. Shared by `extract` (which asks Segment only for
/// what the mapping reads), `transform`, `diff`, `load` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct MappingArgs {
    /// External-id type(s) used as source_id, a comma list as fallback order [default: the mapping file's [source_id] types, else user_id]
    #[arg(
        long = "source-id-type",
        env = "IDENTIFIER_SAVED_AS_SOURCE_ID",
        value_name = "TYPES"
    )]
    pub source_id_type: Option<String>,
    /// Mapping file [default: segsync.toml in the working directory, when it exists]
    #[arg(long = "mapping", env = "SEGSYNC_MAPPING", value_name = "FILE")]
    pub mapping: Option<std::path::PathBuf>,
}

/// The mapping file used when none is named.
pub const DEFAULT_MAPPING_FILE: &str = "segsync.toml";

impl MappingArgs {
    pub fn resolve(&self) -> Result<Mapping, UsageError> {
        let file = self.mapping.clone().or_else(|| {
            let p = std::path::PathBuf::from(DEFAULT_MAPPING_FILE);
            p.exists().then_some(p)
        });
        let mut m = match file {
            Some(f) => Mapping::from_file(&f)?,
            None => Mapping::default(),
        };
        if let Some(t) = &self.source_id_type {
            m.source_id_types = identifier_types(t)?;
        }
        Ok(m)
    }
}
