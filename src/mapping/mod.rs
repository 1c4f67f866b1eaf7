//! The mapping from a Segment profile to a Voucherify customer (docs/DESIGN.md,
//! "Mapping"). A pure function over plain data: no I/O, no clock. The
//! default rules are below; a mapping file ([`config`]) replaces a field's
//! sources and adds typed metadata keys ([`convert`]).

pub mod args;
pub mod command;
pub mod config;
pub mod convert;
pub mod metadata_schema;

pub use args::{MappingArgs, DEFAULT_MAPPING_FILE};

pub use crate::records::MAPPED_TRAITS;
use crate::records::{CustomerRow, ProfileRecord};
pub use config::{Field, Mapping};
use serde_json::{Map, Value};

/// Why a profile produced no customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

/// A value dropped from an otherwise loaded customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub field: String,
    pub value: String,
    pub reason: String,
}

// One value per profile, consumed at once: boxing the row would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    Customer {
        row: CustomerRow,
        warnings: Vec<Warning>,
    },
    Rejected(Rejection),
}

/// Map one profile with the effective mapping `m`.
pub fn map_profile(profile: &ProfileRecord, m: &Mapping) -> Mapped {
    let id_types = &m.source_id_types;
    let Some(source_id) = source_id(&profile.external_ids, id_types) else {
        return Mapped::Rejected(Rejection {
            reason: "no_source_id",
            detail: format!("no external id of type {}", id_types.join(" or ")),
        });
    };
    // Voucherify would hold `" u1"` and `"u1"` as two customers, and the
    // load refuses such a row (segsync never trims): the profile is set
    // aside by name instead of stopping every load.
    if source_id.trim() != source_id || source_id.trim().is_empty() {
        return Mapped::Rejected(Rejection {
            reason: "source_id_white_space",
            detail: format!(
                "source_id {source_id:?} is empty or has white space at its start or end; fix the id in Segment (segsync never trims)"
            ),
        });
    }
    let t = &profile.traits;
    let mut warnings = Vec::new();

    let name = match m.field(Field::Name) {
        Some(sources) => first_path(t, sources).map(|(_, v)| v),
        None => text(t, "name").or_else(|| {
            let first = text(t, "firstName").or_else(|| text(t, "first_name"));
            let last = text(t, "lastName").or_else(|| text(t, "last_name"));
            match (first, last) {
                (Some(f), Some(l)) => Some(format!("{f} {l}")),
                (f, l) => f.or(l),
            }
        }),
    };

    let birth_source = match m.field(Field::Birthdate) {
        Some(sources) => first_path(t, sources),
        None => first_text(t, &["birthdate", "birthday"]).map(|(k, v)| (k.to_string(), v)),
    };
    let birthdate = match birth_source {
        None => None,
        Some((key, raw)) => {
            let by_order = || m.birthdate_order.and_then(|o| o.read(&raw));
            match crate::dates::date_part(&raw)
                .map(str::to_string)
                .or_else(by_order)
            {
                Some(d) => Some(d),
                None => {
                    let hint = match m.birthdate_order {
                        Some(_) => "nor a date in the order [birthdate] names",
                        None => "(a date like 17/05/1990 is read with `[birthdate] order = \"day-month\"` in the mapping file)",
                    };
                    warnings.push(Warning {
                        field: "birthdate".into(),
                        value: raw.clone(),
                        reason: format!("trait {key} is not a valid YYYY-MM-DD date or ISO-8601 date-time {hint}; dropped"),
                    });
                    None
                }
            }
        }
    };

    // Address: inside the `address` object when it is one, else top-level traits.
    let addr: &Map<String, Value> = match t.get("address") {
        Some(Value::Object(o)) => o,
        _ => t,
    };

    let metadata = metadata(t, m, &mut warnings);
    // A field the file maps reads its traits; the others keep the default rule.
    let field = |f: Field, default: &dyn Fn() -> Option<String>| match m.field(f) {
        Some(sources) => first_path(t, sources).map(|(_, v)| v),
        None => default(),
    };

    let email = field(Field::Email, &|| text(t, "email")).and_then(|e| {
        if crate::email::plausible(&e) {
            return Some(e);
        }
        warnings.push(Warning {
            field: "email".into(),
            value: e,
            reason: "does not look like an email address (the load refuses such a row); dropped"
                .into(),
        });
        None
    });
    Mapped::Customer {
        row: CustomerRow {
            source_id: Some(source_id),
            name,
            email,
            phone: field(Field::Phone, &|| text(t, "phone")),
            birthdate,
            description: field(Field::Description, &|| text(t, "description")),
            address_line_1: field(Field::Line1, &|| {
                first_text(addr, &["street", "line_1"]).map(|(_, v)| v)
            }),
            address_line_2: field(Field::Line2, &|| text(addr, "line_2")),
            address_city: field(Field::City, &|| text(addr, "city")),
            address_state: field(Field::State, &|| text(addr, "state")),
            address_postal_code: field(Field::PostalCode, &|| {
                first_text(addr, &["postalCode", "postal_code"]).map(|(_, v)| v)
            }),
            address_country: field(Field::Country, &|| text(addr, "country")),
            metadata,
            segment_id: Some(profile.segment_id.clone()),
        },
        warnings,
    }
}

/// The `metadata` trait (an object) plus the mapped keys, a mapped key
/// winning; a value that cannot be converted losslessly is left out and
/// reported.
fn metadata(t: &Map<String, Value>, m: &Mapping, warnings: &mut Vec<Warning>) -> Option<String> {
    let mut out = match t.get("metadata") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    for k in &m.metadata {
        let Some(v) = path(t, &k.source).filter(|v| !v.is_null() && *v != "") else {
            continue;
        };
        match k.ty {
            None => {
                out.insert(k.key.clone(), v.clone());
            }
            Some(ty) => match convert::convert(v, ty) {
                Ok(c) => {
                    out.insert(k.key.clone(), c);
                }
                Err(why) => warnings.push(Warning {
                    field: format!("metadata.{}", k.key),
                    value: v.to_string(),
                    reason: format!("trait {:?} as {}: {why}; key left out", k.source, ty.name()),
                }),
            },
        }
    }
    (!out.is_empty())
        .then(|| serde_json::to_string(&out).ok())
        .flatten()
}

/// A trait by name, or by a dotted path into object traits
/// (`address.street`); a trait literally named with the dots comes first.
fn path<'a>(t: &'a Map<String, Value>, p: &str) -> Option<&'a Value> {
    if let Some(v) = t.get(p) {
        return Some(v);
    }
    let mut parts = p.split('.');
    let mut v = t.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

/// The first of `sources` with a non-empty value, with its name.
fn first_path(t: &Map<String, Value>, sources: &[String]) -> Option<(String, String)> {
    sources
        .iter()
        .find_map(|s| path(t, s).and_then(scalar_text).map(|v| (s.clone(), v)))
}

/// The `source_id`: of the first configured type that has an id, the
/// earliest id by Segment's own time, ties broken by the id's text. The API
/// path's ids carry `created_at` (Segment's time of the id); a Profiles Sync
/// line's do not, and are written in `seq` order (ties by the id's text),
/// so the first of them is the earliest there. One rule on both paths, so a
/// profile with two ids of the type maps to one customer whichever path
/// extracted it (the API's own order is documented nowhere).
pub fn source_id(external_ids: &[Value], id_types: &[String]) -> Option<String> {
    id_types.iter().find_map(|ty| {
        let of_type = external_ids
            .iter()
            .filter(|e| e.get("type").and_then(Value::as_str) == Some(ty.as_str()))
            .filter_map(|e| Some((e, scalar_text(e.get("id")?)?)));
        let mut best: Option<(Option<i64>, String)> = None;
        let mut timed = true;
        for (e, id) in of_type {
            let at = e
                .get("created_at")
                .and_then(Value::as_str)
                .and_then(crate::dates::parse_timestamp)
                .map(|t| t.as_millisecond());
            timed &= at.is_some();
            best = match best {
                None => Some((at, id)),
                // Without every time, the order of the ids decides.
                Some(b) if !timed => Some(b),
                Some((Some(b_at), b_id)) if (at, &id) < (Some(b_at), &b_id) => Some((at, id)),
                Some(b) => Some(b),
            };
        }
        best.map(|(_, id)| id)
    })
}

/// A trait's value as text when present and non-empty. Strings pass through
/// unchanged; numbers keep their JSON spelling; anything else is absent.
fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    scalar_text(map.get(key)?)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn first_text(map: &Map<String, Value>, keys: &[&'static str]) -> Option<(&'static str, String)> {
    keys.iter().find_map(|k| text(map, k).map(|v| (*k, v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(traits: Value, ids: Value) -> ProfileRecord {
        ProfileRecord {
            segment_id: "use_1".into(),
            metadata: json!({"created_at":"2024-01-01T00:00:00Z","updated_at":"2024-01-02T00:00:00Z"}),
            traits: traits.as_object().unwrap().clone(),
            external_ids: ids.as_array().unwrap().clone(),
            extra: Map::new(),
        }
    }

    fn uid() -> Value {
        json!([{"type":"anonymous_id","id":"anon"},{"type":"user_id","id":"u-1"}])
    }

    fn row(traits: Value) -> (CustomerRow, Vec<Warning>) {
        match map_profile(&profile(traits, uid()), &Mapping::default()) {
            Mapped::Customer { row, warnings } => (row, warnings),
            other => panic!("expected a customer, got {other:?}"),
        }
    }

    fn types(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn source_id_is_the_earliest_by_segments_time_ties_by_text() {
        let ids = json!([
            {"type":"user_id","id":"b-later","created_at":"2024-01-02T00:00:00Z"},
            {"type":"user_id","id":"z-first","created_at":"2024-01-01T00:00:00.000Z"},
            {"type":"user_id","id":"a-first","created_at":"2024-01-01T00:00:00Z"},
            {"type":"email","id":"e@x.co","created_at":"2023-01-01T00:00:00Z"}
        ]);
        assert_eq!(
            source_id(ids.as_array().unwrap(), &types(&["user_id", "email"])),
            Some("a-first".into())
        );
        assert_eq!(
            source_id(ids.as_array().unwrap(), &types(&["email", "user_id"])),
            Some("e@x.co".into())
        );
    }

    #[test]
    fn source_id_is_first_of_configured_type_in_line_order_without_times() {
        let ids = json!([{"type":"user_id","id":"first"},{"type":"user_id","id":"second"}]);
        assert_eq!(
            source_id(ids.as_array().unwrap(), &types(&["user_id"])),
            Some("first".into())
        );
    }

    #[test]
    fn source_id_fallback_list_takes_first_type_that_has_one() {
        let ids = json!([{"type":"email","id":"a@b.c"},{"type":"anonymous_id","id":"x"}]);
        let ids = ids.as_array().unwrap();
        assert_eq!(
            source_id(ids, &types(&["user_id", "email"])),
            Some("a@b.c".into())
        );
        assert_eq!(
            source_id(ids, &types(&["anonymous_id", "email"])),
            Some("x".into())
        );
        assert_eq!(source_id(ids, &types(&["user_id"])), None);
    }

    #[test]
    fn empty_identifier_counts_as_missing() {
        let ids = json!([{"type":"user_id","id":""},{"type":"user_id","id":"real"}]);
        assert_eq!(
            source_id(ids.as_array().unwrap(), &types(&["user_id"])),
            Some("real".into())
        );
    }

    #[test]
    fn profile_without_identifier_is_rejected_with_reason() {
        let p = profile(
            json!({"email":"a@b.c"}),
            json!([{"type":"anonymous_id","id":"a"}]),
        );
        match map_profile(&p, &Mapping::with_types(types(&["user_id"]))) {
            Mapped::Rejected(r) => {
                assert_eq!(r.reason, "no_source_id");
                assert!(r.detail.contains("user_id"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn name_prefers_name_trait() {
        assert_eq!(
            row(json!({"name":"Ann Lee","firstName":"X","lastName":"Y"}))
                .0
                .name
                .as_deref(),
            Some("Ann Lee")
        );
    }

    #[test]
    fn name_from_camel_and_snake_parts() {
        assert_eq!(
            row(json!({"firstName":"Ann","lastName":"Lee"}))
                .0
                .name
                .as_deref(),
            Some("Ann Lee")
        );
        assert_eq!(
            row(json!({"first_name":"Ann","last_name":"Lee"}))
                .0
                .name
                .as_deref(),
            Some("Ann Lee")
        );
        assert_eq!(
            row(json!({"firstName":"Ann","last_name":"Lee"}))
                .0
                .name
                .as_deref(),
            Some("Ann Lee")
        );
        assert_eq!(
            row(json!({"first_name":"Ann"})).0.name.as_deref(),
            Some("Ann")
        );
        assert_eq!(
            row(json!({"lastName":"Lee"})).0.name.as_deref(),
            Some("Lee")
        );
        assert_eq!(
            row(json!({"name":"","firstName":"Ann"})).0.name.as_deref(),
            Some("Ann")
        );
        assert_eq!(row(json!({})).0.name, None);
    }

    #[test]
    fn strings_pass_through_unchanged() {
        let (r, w) = row(json!({"name":"  Zoë \"Z\", Ångström\n李 ","email":"MiXeD@Example.COM"}));
        assert_eq!(r.name.as_deref(), Some("  Zoë \"Z\", Ångström\n李 "));
        assert_eq!(r.email.as_deref(), Some("MiXeD@Example.COM"));
        assert!(w.is_empty());
    }

    /// An email the load would refuse (white space, two addresses, no
    /// domain) is dropped with a warning, as an invalid birthdate is: one
    /// bad trait in Segment never stops a whole load.
    #[test]
    fn an_email_the_load_refuses_is_dropped_with_a_warning() {
        for bad in [" a@b.co ", "a@b.co, c@d.co", "nobody", "a@@b.co"] {
            let (r, w) = row(json!({"email": bad, "name": "Ann"}));
            assert_eq!(r.email, None, "{bad}");
            assert_eq!(r.name.as_deref(), Some("Ann"), "customer still loaded");
            assert_eq!(w.len(), 1, "{bad}");
            assert_eq!(w[0].field, "email");
            assert_eq!(w[0].value, bad);
        }
    }

    #[test]
    fn a_source_id_with_white_space_is_rejected_by_name() {
        let p = ProfileRecord {
            segment_id: "s1".into(),
            metadata: Value::Null,
            traits: Map::new(),
            external_ids: vec![json!({"type": "user_id", "id": " u1"})],
            extra: Map::new(),
        };
        match map_profile(&p, &Mapping::default()) {
            Mapped::Rejected(r) => assert_eq!(r.reason, "source_id_white_space"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn email_phone_description_copy_same_trait() {
        let (r, _) = row(json!({"email":"a@b.c","phone":"+48 600","description":"VIP"}));
        assert_eq!(
            (
                r.email.as_deref(),
                r.phone.as_deref(),
                r.description.as_deref()
            ),
            (Some("a@b.c"), Some("+48 600"), Some("VIP"))
        );
    }

    #[test]
    fn a_birthdate_in_the_order_the_mapping_names() {
        let with = |order: &str| {
            let text = format!("[birthdate]\norder = \"{order}\"\n");
            Mapping::parse(&text, std::path::Path::new("m.toml")).unwrap()
        };
        let p = profile(json!({"birthdate": "17/05/1990"}), uid());
        let get = |m: &Mapping| match map_profile(&p, m) {
            Mapped::Customer { row, warnings } => (row.birthdate, warnings.len()),
            other => panic!("{other:?}"),
        };
        assert_eq!(get(&with("day-month")), (Some("1990-05-17".into()), 0));
        // 17 is no month: dropped, said.
        assert_eq!(get(&with("month-day")), (None, 1));
        assert_eq!(get(&Mapping::default()), (None, 1));
        let p = profile(json!({"birthdate": "05.06.1990"}), uid());
        let get = |m: &Mapping| match map_profile(&p, m) {
            Mapped::Customer { row, .. } => row.birthdate,
            other => panic!("{other:?}"),
        };
        assert_eq!(get(&with("day-month")).as_deref(), Some("1990-06-05"));
        assert_eq!(get(&with("month-day")).as_deref(), Some("1990-05-06"));
        assert!(Mapping::parse(
            "[birthdate]\norder = \"dmy\"\n",
            std::path::Path::new("m.toml")
        )
        .is_err());
        // The order changes what transform writes: another fingerprint.
        assert_ne!(
            with("day-month").fingerprint(),
            Mapping::default().fingerprint()
        );
    }

    #[test]
    fn birthdate_forms() {
        assert_eq!(
            row(json!({"birthdate":"1990-05-06"}))
                .0
                .birthdate
                .as_deref(),
            Some("1990-05-06")
        );
        assert_eq!(
            row(json!({"birthday":"1990-05-06"})).0.birthdate.as_deref(),
            Some("1990-05-06")
        );
        assert_eq!(
            row(json!({"birthday":"1990-05-06T23:30:00Z"}))
                .0
                .birthdate
                .as_deref(),
            Some("1990-05-06")
        );
        assert_eq!(
            row(json!({"birthday":"1990-05-06T23:30:00.123+02:00"}))
                .0
                .birthdate
                .as_deref(),
            Some("1990-05-06")
        );
        assert_eq!(
            row(json!({"birthday":"2000-02-29T00:00"}))
                .0
                .birthdate
                .as_deref(),
            Some("2000-02-29")
        );
        assert_eq!(
            row(json!({"birthdate":"1991-01-01","birthday":"1990-05-06"}))
                .0
                .birthdate
                .as_deref(),
            Some("1991-01-01")
        );
    }

    #[test]
    fn invalid_birthdates_are_dropped_with_a_warning() {
        for bad in [
            "1990-02-30",
            "1900-02-29",
            "2023-13-01",
            "2023-00-10",
            "06/05/1990",
            "1990-5-6",
            "1990-05-06T25:00:00Z",
            "1990-05-06 garbage",
            "0000-01-01",
            "yesterday",
        ] {
            let (r, w) = row(json!({ "birthdate": bad, "email": "a@b.c" }));
            assert_eq!(r.birthdate, None, "{bad}");
            assert_eq!(r.email.as_deref(), Some("a@b.c"), "customer still loaded");
            assert_eq!(w.len(), 1, "{bad}");
            assert_eq!(w[0].value, bad);
        }
    }

    #[test]
    fn nested_address() {
        let (r, _) = row(
            json!({"address":{"street":"1 Main","line_2":"Apt 2","city":"Oslo","state":"OS","postalCode":"0150","country":"NO"},"city":"ignored"}),
        );
        assert_eq!(r.address_line_1.as_deref(), Some("1 Main"));
        assert_eq!(r.address_line_2.as_deref(), Some("Apt 2"));
        assert_eq!(r.address_city.as_deref(), Some("Oslo"));
        assert_eq!(r.address_state.as_deref(), Some("OS"));
        assert_eq!(r.address_postal_code.as_deref(), Some("0150"));
        assert_eq!(r.address_country.as_deref(), Some("NO"));
        let (r, _) = row(json!({"address":{"line_1":"2 High","postal_code":"E1"}}));
        assert_eq!(
            (
                r.address_line_1.as_deref(),
                r.address_postal_code.as_deref()
            ),
            (Some("2 High"), Some("E1"))
        );
    }

    #[test]
    fn flat_address_when_address_is_not_an_object() {
        let (r, _) = row(
            json!({"address":"somewhere","street":"3 Low","city":"Rome","postal_code":"00100"}),
        );
        assert_eq!(r.address_line_1.as_deref(), Some("3 Low"));
        assert_eq!(r.address_city.as_deref(), Some("Rome"));
        assert_eq!(r.address_postal_code.as_deref(), Some("00100"));
        let (r, _) = row(json!({"line_1":"4 Side","postalCode":"123","country":"PL"}));
        assert_eq!(
            (
                r.address_line_1.as_deref(),
                r.address_postal_code.as_deref(),
                r.address_country.as_deref()
            ),
            (Some("4 Side"), Some("123"), Some("PL"))
        );
    }

    #[test]
    fn metadata_only_when_an_object() {
        assert_eq!(
            row(json!({"metadata":{"tier":"gold","n":1}}))
                .0
                .metadata
                .as_deref(),
            Some(r#"{"tier":"gold","n":1}"#)
        );
        assert_eq!(row(json!({"metadata":"gold"})).0.metadata, None);
        assert_eq!(row(json!({"metadata":[1]})).0.metadata, None);
        assert_eq!(row(json!({})).0.metadata, None);
    }

    #[test]
    #[cfg(feature = "sandbox")]
    fn the_slim_parse_maps_exactly_like_the_full_one() {
        let ds = crate::sandbox::data::Dataset::new(5, 400);
        for i in 0..ds.n {
            let line = serde_json::to_vec(&ds.profile(i, 0).record()).unwrap();
            let full: ProfileRecord = serde_json::from_slice(&line).unwrap();
            let slim =
                crate::records::parse_for_mapping(&line, &crate::records::default_trait_set())
                    .unwrap();
            for types in [
                vec!["user_id".to_string()],
                vec!["user_id".to_string(), "email".to_string()],
            ] {
                assert_eq!(
                    map_profile(&slim, &Mapping::with_types(types.clone())),
                    map_profile(&full, &Mapping::with_types(types.clone())),
                    "profile {i}"
                );
            }
        }
        assert!(crate::records::parse_for_mapping(
            b"{\"segment_id\":\"a\",\"traits\":{\"x\":\"\xff\"}}",
            &crate::records::default_trait_set()
        )
        .is_err());
        assert!(crate::records::parse_for_mapping(
            b"{\"segment_id\":\"a\",\"traits\":[1]}",
            &crate::records::default_trait_set()
        )
        .is_err());
    }

    #[test]
    fn segment_id_is_recorded() {
        assert_eq!(row(json!({})).0.segment_id.as_deref(), Some("use_1"));
    }

    #[test]
    fn street_wins_over_line_1_and_postal_code_spellings_keep_their_order() {
        let (r, _) = row(
            json!({"address":{"street":"1 Main","line_1":"ignored","postalCode":"0150","postal_code":"9999"}}),
        );
        assert_eq!(r.address_line_1.as_deref(), Some("1 Main"));
        assert_eq!(r.address_postal_code.as_deref(), Some("0150"));
        let (r, _) =
            row(json!({"street":"","line_1":"2 Side","postalCode":"","postal_code":"00100"}));
        assert_eq!(
            r.address_line_1.as_deref(),
            Some("2 Side"),
            "an empty street falls through"
        );
        assert_eq!(r.address_postal_code.as_deref(), Some("00100"));
    }

    #[test]
    fn a_flat_state_is_read_when_address_is_not_an_object() {
        let (r, _) = row(json!({"address":"12 Rue X","state":"IDF","city":"Paris"}));
        assert_eq!(r.address_state.as_deref(), Some("IDF"));
        assert_eq!(r.address_city.as_deref(), Some("Paris"));
        assert_eq!(r.address_line_1, None, "a text address is not an object");
        // With an address object, flat keys are not read.
        let (r, _) = row(json!({"address":{"city":"Oslo"},"state":"IDF"}));
        assert_eq!(r.address_state, None);
    }

    #[test]
    fn an_invalid_birthdate_is_dropped_even_beside_a_valid_birthday() {
        // `birthdate` is present, so it is the value taken (first present
        // wins); being invalid, it is dropped with a warning, and `birthday`
        // is not consulted.
        let (r, w) = row(json!({"birthdate":"1990-02-30","birthday":"1990-05-06"}));
        assert_eq!(r.birthdate, None);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].value, "1990-02-30");
        assert!(w[0].reason.contains("birthdate"), "{}", w[0].reason);
    }
}
