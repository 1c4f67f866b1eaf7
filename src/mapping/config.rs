//! The mapping file, `segsync.toml`: which external ids become `source_id`,
//! which traits fill which customer fields, and which traits become typed
//! metadata keys. Read and checked here, before anything runs; the effective
//! mapping (the default plus the file) is printed by `segsync mapping`.
//!
//! ```toml
//! [source_id]
//! types = ["user_id", "email"]
//!
//! [fields]
//! description = ["bio", "description"]
//! phone = "mobile"
//!
//! [metadata]
//! campaign = "Campaign Name"
//! big_spender = { trait = "big_spender", type = "boolean" }
//! ```

use crate::error::UsageError;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A customer field a mapping can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Name,
    Email,
    Phone,
    Birthdate,
    Description,
    Line1,
    Line2,
    City,
    State,
    PostalCode,
    Country,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Name,
        Field::Email,
        Field::Phone,
        Field::Birthdate,
        Field::Description,
        Field::Line1,
        Field::Line2,
        Field::City,
        Field::State,
        Field::PostalCode,
        Field::Country,
    ];

    /// The name in the mapping file.
    pub fn key(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Email => "email",
            Field::Phone => "phone",
            Field::Birthdate => "birthdate",
            Field::Description => "description",
            Field::Line1 => "address.line_1",
            Field::Line2 => "address.line_2",
            Field::City => "address.city",
            Field::State => "address.state",
            Field::PostalCode => "address.postal_code",
            Field::Country => "address.country",
        }
    }

    /// The traits the default mapping reads for this field, as the effective
    /// mapping prints them (`address.X` or `X` when `address` is not an object).
    pub fn default_sources(self) -> &'static str {
        match self {
            Field::Name => "name, else firstName/first_name + lastName/last_name",
            Field::Email => "email",
            Field::Phone => "phone",
            Field::Birthdate => "birthdate, else birthday (YYYY-MM-DD or an ISO date-time's date)",
            Field::Description => "description",
            Field::Line1 => "address.street, else address.line_1 (top level when address is not an object)",
            Field::Line2 => "address.line_2 (top level when address is not an object)",
            Field::City => "address.city (top level when address is not an object)",
            Field::State => "address.state (top level when address is not an object)",
            Field::PostalCode => "address.postalCode, else address.postal_code (top level when address is not an object)",
            Field::Country => "address.country (top level when address is not an object)",
        }
    }

    /// Top-level traits the default rule for this field reads.
    pub fn default_traits(self) -> &'static [&'static str] {
        match self {
            Field::Name => &["name", "firstName", "first_name", "lastName", "last_name"],
            Field::Email => &["email"],
            Field::Phone => &["phone"],
            Field::Birthdate => &["birthdate", "birthday"],
            Field::Description => &["description"],
            Field::Line1 => &["address", "street", "line_1"],
            Field::Line2 => &["address", "line_2"],
            Field::City => &["address", "city"],
            Field::State => &["address", "state"],
            Field::PostalCode => &["address", "postalCode", "postal_code"],
            Field::Country => &["address", "country"],
        }
    }

    fn from_key(k: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.key() == k)
    }
}

/// Voucherify's metadata types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseType {
    String,
    Number,
    Boolean,
    Date,
    Datetime,
    Object,
}

impl BaseType {
    pub const ALL: [(BaseType, &'static str); 6] = [
        (BaseType::String, "string"),
        (BaseType::Number, "number"),
        (BaseType::Boolean, "boolean"),
        (BaseType::Date, "date"),
        (BaseType::Datetime, "datetime"),
        (BaseType::Object, "object"),
    ];

    pub fn name(self) -> &'static str {
        BaseType::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

/// A metadata type: a base type, or an array of it (`type = "number[]"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaType {
    pub base: BaseType,
    pub array: bool,
}

impl MetaType {
    pub fn parse(s: &str) -> Option<MetaType> {
        let (name, array) = match s.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (s, false),
        };
        BaseType::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(base, _)| MetaType { base: *base, array })
    }

    pub fn name(self) -> String {
        format!("{}{}", self.base.name(), if self.array { "[]" } else { "" })
    }
}

/// A metadata key the mapping fills from a trait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataKey {
    pub key: String,
    /// A trait name, or a dotted path into an object trait.
    pub source: String,
    /// Convert to this type (losslessly) or leave the key out; None: as is.
    pub ty: Option<MetaType>,
}

/// The effective mapping: the default plus what a mapping file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub source_id_types: Vec<String>,
    /// Fields whose sources the file replaces: the traits, first non-empty wins.
    pub fields: Vec<(Field, Vec<String>)>,
    pub metadata: Vec<MetadataKey>,
    /// The file it was read from (None: the default mapping).
    pub file: Option<PathBuf>,
    /// How a birthdate written `17/05/1990` or `05/17/1990` is read
    /// (`[birthdate] order`); None: only ISO dates are read.
    pub birthdate_order: Option<DayMonth>,
}

/// The order of day and month in a birthdate written with `/`, `.` or `-`
/// and the year last (`17/05/1990`): the source's convention, which no
/// value can tell alone for days up to 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayMonth {
    DayFirst,
    MonthFirst,
}

impl DayMonth {
    fn parse(s: &str) -> Option<DayMonth> {
        match s {
            "day-month" => Some(DayMonth::DayFirst),
            "month-day" => Some(DayMonth::MonthFirst),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DayMonth::DayFirst => "day-month",
            DayMonth::MonthFirst => "month-day",
        }
    }

    /// `DD/MM/YYYY` (or `MM/DD/YYYY`, with `.` or `-` too) as an ISO date,
    /// when it is one and the date exists.
    pub fn read(self, s: &str) -> Option<String> {
        let parts: Vec<&str> = s.trim().split(['/', '.', '-']).collect();
        let [a, b, y] = parts.as_slice() else {
            return None;
        };
        let digits = |p: &str, n: std::ops::RangeInclusive<usize>| {
            n.contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit())
        };
        if !(digits(a, 1..=2) && digits(b, 1..=2) && digits(y, 4..=4)) {
            return None;
        }
        let (d, m) = match self {
            DayMonth::DayFirst => (a, b),
            DayMonth::MonthFirst => (b, a),
        };
        let date = format!("{y}-{:0>2}-{:0>2}", m, d);
        crate::dates::parse_date(&date).map(|_| date)
    }
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            source_id_types: vec!["user_id".into()],
            fields: Vec::new(),
            metadata: Vec::new(),
            file: None,
            birthdate_order: None,
        }
    }
}

fn err(file: &Path, msg: impl std::fmt::Display) -> UsageError {
    UsageError::new(format!("{}: {msg}", file.display()))
}

/// A trait list: one name or a non-empty list of names.
fn trait_list(file: &Path, at: &str, v: &toml::Value) -> Result<Vec<String>, UsageError> {
    let list = match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    err(file, format!("{at}: every trait must be a string, got {x}"))
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(err(
                file,
                format!("{at}: expected a trait name or a list of trait names, got {other}"),
            ))
        }
    };
    if list.is_empty() {
        return Err(err(
            file,
            format!("{at}: the trait list is empty; name at least one trait"),
        ));
    }
    if let Some(e) = list.iter().find(|s| s.is_empty()) {
        return Err(err(file, format!("{at}: a trait name is empty ({e:?})")));
    }
    Ok(list)
}

impl Mapping {
    /// The default mapping with these `source_id` types.
    pub fn with_types(types: Vec<String>) -> Mapping {
        Mapping {
            source_id_types: types,
            ..Mapping::default()
        }
    }

    /// Read and check a mapping file. Every problem is a usage error naming
    /// the file (and, for TOML syntax, the line and column).
    pub fn from_file(path: &Path) -> Result<Mapping, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, format!("cannot read the mapping file ({e})")))?;
        let mut m = Mapping::parse(&text, path)?;
        m.file = Some(path.to_path_buf());
        Ok(m)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Mapping, UsageError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(path, e.to_string().trim_end()))?;
        let mut m = Mapping::default();
        for (section, value) in &table {
            let t = value
                .as_table()
                .ok_or_else(|| err(path, format!("`{section}` must be a section ([{section}])")))?;
            match section.as_str() {
                "source_id" => {
                    for (k, v) in t {
                        if k != "types" {
                            return Err(err(path, format!("[source_id]: unknown key `{k}`; the section takes `types`")));
                        }
                        m.source_id_types = trait_list(path, "[source_id] types", v)?;
                    }
                }
                "fields" => {
                    m.fields = parse_fields(path, t)?;
                    m.fields.sort_by_key(|(f, _)| *f);
                    if let Some(w) = m.fields.windows(2).find(|w| w[0].0 == w[1].0) {
                        let key = w[0].0.key();
                        return Err(err(
                            path,
                            format!(
                                "line {}: [fields]: `{key}` is mapped twice (`\"{key}\"` and `{key}` name the same field); keep one",
                                key_line(text, "fields", key, 2)
                            ),
                        ));
                    }
                }
                "metadata" => {
                    m.metadata = parse_metadata(path, t)?;
                    if m.metadata.iter().any(|k| k.key.trim().is_empty()) {
                        return Err(err(
                            path,
                            format!(
                                "line {}: [metadata]: a metadata key is empty; name it",
                                key_line(text, "metadata", "", 1)
                            ),
                        ));
                    }
                }
                "birthdate" => {
                    for (k, v) in t {
                        let order = v.as_str().and_then(DayMonth::parse);
                        match (k.as_str(), order) {
                            ("order", Some(o)) => m.birthdate_order = Some(o),
                            ("order", None) => return Err(err(path, format!("[birthdate] order: {v} is not \"day-month\" (17/05/1990) or \"month-day\" (05/17/1990)"))),
                            _ => return Err(err(path, format!("[birthdate]: unknown key `{k}`; the section takes `order`"))),
                        }
                    }
                }
                other => {
                    return Err(err(
                        path,
                        format!("unknown section [{other}]; a mapping has [source_id], [fields], [metadata] and [birthdate]"),
                    ))
                }
            }
        }
        Ok(m)
    }

    /// The sources of `field` when the file replaces them.
    pub fn field(&self, field: Field) -> Option<&[String]> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, s)| s.as_slice())
    }

    /// Every top-level trait the mapping reads: what extract asks Segment for
    /// (`include=`) and what transform's parse keeps.
    pub fn traits_read(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        out.insert("metadata".into());
        for f in Field::ALL {
            match self.field(f) {
                Some(sources) => out.extend(sources.iter().map(|s| top_level(s))),
                None => out.extend(f.default_traits().iter().map(|s| s.to_string())),
            }
        }
        out.extend(self.metadata.iter().map(|k| top_level(&k.source)));
        out
    }

    /// The effective mapping as a mapping file, with comments: what a user
    /// starts from (`segsync mapping > segsync.toml`).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# The effective segsync mapping ({}).\n# Edit and save as segsync.toml, or pass it with --mapping FILE.\n",
            match &self.file {
                Some(f) => format!("the default plus {}", f.display()),
                None => "the default; no mapping file".into(),
            }
        );
        let _ = writeln!(
            s,
            "# The traits it reads (what extract asks Segment for): {}\n",
            self.traits_read()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "[source_id]\n# external-id types whose id becomes source_id, first present wins\ntypes = {}\n", toml_list(&self.source_id_types));
        let _ = writeln!(s, "[fields]\n# customer field = trait, or list of traits (first non-empty wins); a\n# dotted name reads inside an object trait (\"address.street\")");
        for f in Field::ALL {
            match self.field(f) {
                Some(sources) => {
                    let _ = writeln!(s, "{} = {}", toml_key(f.key()), toml_list(sources));
                }
                None => {
                    let _ = writeln!(
                        s,
                        "# {} = default: {}",
                        toml_key(f.key()),
                        f.default_sources()
                    );
                }
            }
        }
        let _ = match self.birthdate_order {
            Some(o) => writeln!(s, "\n[birthdate]\n# how a date written 17/05/1990 or 05/17/1990 is read\norder = \"{}\"", o.name()),
            None => writeln!(s, "\n[birthdate]\n# order = \"day-month\" reads 17/05/1990 (\"month-day\": 05/17/1990); without it only\n# ISO dates (1990-05-17) are read and others are dropped with a warning"),
        };
        let _ = writeln!(s, "\n[metadata]\n# metadata key = trait, or {{ trait = \"...\", type = \"...\" }}; types: string,\n# number, boolean, date, datetime, object, or an array of one (\"number[]\").\n# The `metadata` trait (an object) is always sent; a mapped key wins over it.");
        for k in &self.metadata {
            let _ = match k.ty {
                Some(t) => writeln!(
                    s,
                    "{} = {{ trait = {}, type = \"{}\" }}",
                    toml_key(&k.key),
                    toml_str(&k.source),
                    t.name()
                ),
                None => writeln!(s, "{} = {}", toml_key(&k.key), toml_str(&k.source)),
            };
        }
        s
    }

    /// A short fingerprint of the effective mapping, for the manifest.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut m = self.clone();
        m.file = None;
        crate::files::hex(&Sha256::digest(m.to_toml().as_bytes())[..8])
    }
}

fn top_level(source: &str) -> String {
    source.split('.').next().unwrap_or(source).to_string()
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

fn toml_list(items: &[String]) -> String {
    if items.len() == 1 {
        return toml_str(&items[0]);
    }
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| toml_str(i))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The line of the `nth` (from 1) key written as `key` in `[section]`,
/// quoted or dotted; "?" when the text does not show it plainly.
fn key_line(text: &str, section: &str, key: &str, nth: usize) -> String {
    let mut inside = false;
    let mut seen = 0;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            inside = l.trim_start_matches('[').trim_end_matches(']').trim() == section;
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let k: String = k
            .split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".");
        if inside && k == key {
            seen += 1;
            if seen == nth {
                return (i + 1).to_string();
            }
        }
    }
    "?".into()
}

fn parse_fields(path: &Path, t: &toml::Table) -> Result<Vec<(Field, Vec<String>)>, UsageError> {
    let mut out = Vec::new();
    let known = || {
        Field::ALL
            .iter()
            .map(|f| f.key())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (k, v) in t {
        // `address.city = "town"` is a dotted key in TOML: a nested table.
        if k == "address" {
            if let Some(inner) = v.as_table() {
                for (ik, iv) in inner {
                    let key = format!("address.{ik}");
                    let field = Field::from_key(&key).ok_or_else(|| {
                        err(
                            path,
                            format!("[fields]: unknown field `{key}`; fields are {}", known()),
                        )
                    })?;
                    out.push((field, trait_list(path, &format!("[fields] {key}"), iv)?));
                }
                continue;
            }
        }
        let field = Field::from_key(k).ok_or_else(|| {
            err(
                path,
                format!("[fields]: unknown field `{k}`; fields are {}", known()),
            )
        })?;
        out.push((field, trait_list(path, &format!("[fields] {k}"), v)?));
    }
    Ok(out)
}

fn parse_metadata(path: &Path, t: &toml::Table) -> Result<Vec<MetadataKey>, UsageError> {
    let mut out = Vec::new();
    for (key, v) in t {
        let at = format!("[metadata] {key}");
        let (source, ty) = match v {
            toml::Value::String(s) => (s.clone(), None),
            toml::Value::Table(spec) => {
                for k in spec.keys() {
                    if !matches!(k.as_str(), "trait" | "type") {
                        return Err(err(path, format!("{at}: unknown key `{k}`; a metadata key takes `trait` and `type`")));
                    }
                }
                let source = spec
                    .get("trait")
                    .and_then(toml::Value::as_str)
                    .ok_or_else(|| err(path, format!("{at}: `trait` (a trait name) is required")))?
                    .to_string();
                let ty = match spec.get("type") {
                    None => None,
                    Some(toml::Value::String(t)) => Some(MetaType::parse(t).ok_or_else(|| {
                        err(
                            path,
                            format!(
                                "{at}: unknown type {t:?}; types are {} (or an array of one, \"number[]\")",
                                BaseType::ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
                            ),
                        )
                    })?),
                    Some(other) => return Err(err(path, format!("{at}: `type` must be a string, got {other}"))),
                };
                (source, ty)
            }
            other => {
                return Err(err(
                    path,
                    format!("{at}: expected a trait name or {{ trait = \"...\", type = \"...\" }}, got {other}"),
                ))
            }
        };
        if source.is_empty() {
            return Err(err(path, format!("{at}: the trait name is empty")));
        }
        out.push(MetadataKey {
            key: key.clone(),
            source,
            ty,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[source_id]
types = ["user_id", "email"]        # external-id types, first present wins

[fields]                             # customer field = trait, or list of traits
description = ["bio", "description"]
phone = "mobile"

[metadata]                           # metadata key = trait, or { trait = "...", type = "..." }
campaign = "Campaign Name"
big_spender = { trait = "big_spender", type = "boolean" }
lifetime_value = { trait = "ltv", type = "number" }
"#;

    fn parse(text: &str) -> Result<Mapping, String> {
        Mapping::parse(text, Path::new("segsync.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_reads_exactly_as_written() {
        let m = parse(EXAMPLE).unwrap();
        assert_eq!(m.source_id_types, ["user_id", "email"]);
        assert_eq!(m.field(Field::Description).unwrap(), ["bio", "description"]);
        assert_eq!(m.field(Field::Phone).unwrap(), ["mobile"]);
        assert_eq!(m.field(Field::Name), None);
        assert_eq!(m.metadata.len(), 3);
        assert_eq!(m.metadata[0].source, "Campaign Name");
        assert_eq!(m.metadata[0].ty, None);
        assert_eq!(m.metadata[1].ty.unwrap().base, BaseType::Boolean);
        let read = m.traits_read();
        for t in [
            "bio",
            "description",
            "mobile",
            "Campaign Name",
            "big_spender",
            "ltv",
            "name",
            "metadata",
        ] {
            assert!(read.contains(t), "{t}");
        }
        assert!(
            !read.contains("phone"),
            "phone's default source is replaced"
        );
    }

    #[test]
    fn dotted_fields_and_paths() {
        let m =
            parse("[fields]\naddress.city = \"town\"\n\"address.country\" = [\"home.country\"]\n")
                .unwrap();
        assert_eq!(m.field(Field::City).unwrap(), ["town"]);
        assert_eq!(m.field(Field::Country).unwrap(), ["home.country"]);
        assert!(m.traits_read().contains("home"));
    }

    #[test]
    fn the_printed_mapping_reads_back_as_the_same_mapping() {
        let m = parse(EXAMPLE).unwrap();
        let again = parse(&m.to_toml()).unwrap();
        assert_eq!(again, m);
        assert_eq!(
            parse(&Mapping::default().to_toml()).unwrap(),
            Mapping::default()
        );
        // The default mapping reads exactly the traits the default parse keeps.
        let default: Vec<String> = Mapping::default().traits_read().into_iter().collect();
        let mut known: Vec<String> = crate::records::MAPPED_TRAITS
            .iter()
            .map(|s| s.to_string())
            .collect();
        known.sort();
        assert_eq!(default, known);
        assert_ne!(m.fingerprint(), Mapping::default().fingerprint());
    }

    #[test]
    fn every_mistake_is_named() {
        for (text, says) in [
            ("[field]\nname = \"n\"\n", "unknown section [field]"),
            ("[fields]\nnickname = \"n\"\n", "unknown field `nickname`"),
            (
                "[fields]\naddress.zip = \"z\"\n",
                "unknown field `address.zip`",
            ),
            ("[fields]\nname = []\n", "the trait list is empty"),
            ("[fields]\nname = 3\n", "expected a trait name"),
            (
                "[metadata]\nx = { trait = \"a\", type = \"money\" }\n",
                "unknown type \"money\"",
            ),
            (
                "[metadata]\nx = { type = \"number\" }\n",
                "`trait` (a trait name) is required",
            ),
            (
                "[metadata]\nx = { trait = \"a\", kind = \"number\" }\n",
                "unknown key `kind`",
            ),
            ("[source_id]\nkinds = [\"a\"]\n", "unknown key `kinds`"),
            ("[fields]\nname = \"a\"\nname = \"b\"\n", "line 3"),
            (
                "[fields]\n\"address.city\" = \"a\"\naddress.city = \"b\"\n",
                "line 3: [fields]: `address.city` is mapped twice",
            ),
            (
                "[metadata]\nplan = \"p\"\n\"\" = \"x\"\n",
                "line 3: [metadata]: a metadata key is empty",
            ),
            ("[fields\n", "line 1"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                e.contains(says) && e.contains("segsync.toml"),
                "{text:?}: {e}"
            );
        }
        assert!(MetaType::parse("number[]").unwrap().array);
    }
}
