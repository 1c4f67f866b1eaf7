//! `segsync mapping`: prints the effective mapping (the default plus the
//! mapping file) as a mapping file with comments, so a user starts from it
//! (`segsync mapping > segsync.toml`). `--check` compares the mapping's
//! metadata keys with the project's customer metadata schema.

use super::MappingArgs;
use crate::api::http::HttpSettings;
use crate::api::voucherify::VoucherifyClient;
use crate::config::VoucherifyArgs;
use crate::mapping::config::BaseType;
use crate::ui;
use anyhow::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Compare the mapping's metadata keys with the project's customer metadata schema (needs Voucherify credentials)
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub mapping: MappingArgs,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
}

/// Returns the exit status: 2 when the schema would reject mapped keys.
pub async fn run(args: &Args) -> Result<u8> {
    let m = args.mapping.resolve()?;
    if !args.check {
        crate::out!("{}", m.to_toml());
        return Ok(0);
    }
    let cfg = args.voucherify.resolve()?;
    let client = VoucherifyClient::new(cfg, HttpSettings::default())?;
    let schema = crate::mapping::metadata_schema::read(&client).await?;
    let strict = schema.allow_defined_only == Some(true);
    crate::outln!(
        "the project's customer metadata schema defines {} keys{}",
        schema.properties.len(),
        if strict {
            " and allows defined keys only"
        } else {
            ""
        }
    );
    let mut problems = 0;
    for k in &m.metadata {
        let def = schema
            .properties
            .get(&k.key)
            .filter(|d| d.deleted != Some(true));
        let mapped = k.ty.map(|t| t.name()).unwrap_or_else(|| "untyped".into());
        match def {
            None if strict => {
                problems += 1;
                crate::outln!("  {}: NOT DEFINED: the project allows defined keys only, so every customer carrying it is rejected; define it ({mapped}) or remove it from the mapping", k.key);
            }
            None => crate::outln!(
                "  {}: not defined in the project (accepted as it is; defining it as {mapped} lets Voucherify check it)",
                k.key
            ),
            Some(d) => {
                let want = d.ty.clone().unwrap_or_default();
                let want_name = format!("{want}{}", if d.array == Some(true) { "[]" } else { "" });
                let agrees = match k.ty {
                    None => true,
                    Some(t) => {
                        t.array == (d.array == Some(true))
                            && (want == t.base.name()
                                || (want == "image_url" && t.base == BaseType::String))
                    }
                };
                if agrees {
                    crate::outln!("  {}: defined as {want_name}; the mapping sends {mapped}", k.key);
                } else {
                    problems += 1;
                    crate::outln!("  {}: TYPE MISMATCH: defined as {want_name}, the mapping sends {mapped}; change the mapping's type", k.key);
                }
            }
        }
    }
    for (key, d) in &schema.properties {
        if d.optional == Some(false)
            && d.deleted != Some(true)
            && !m.metadata.iter().any(|k| &k.key == key)
        {
            crate::outln!("  {key}: required by the schema but not mapped (new customers without it in their `metadata` trait are rejected)");
        }
    }
    if problems > 0 {
        ui::warn(format!(
            "{problems} mapped metadata keys would be rejected by the project's schema"
        ));
        return Ok(2);
    }
    crate::outln!("every mapped metadata key fits the project's schema");
    Ok(0)
}
