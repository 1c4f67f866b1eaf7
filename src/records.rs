//! The file formats the stages exchange: a profile line of `profiles.ndjson`
//! and a customer row of `customers.csv`, with the spreadsheet formula guard.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One line of `profiles.ndjson`: everything the Profile API returned about a
/// profile. Fields the listing returns beyond `segment_id` and `metadata` are
/// kept in `extra`, so nothing is lost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileRecord {
    pub segment_id: String,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub traits: Map<String, Value>,
    #[serde(default)]
    pub external_ids: Vec<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ProfileRecord {
    pub fn updated_at(&self) -> Option<&str> {
        self.metadata.get("updated_at").and_then(Value::as_str)
    }
}

/// The columns of `customers.csv`, in order (docs/DESIGN.md): the source
/// id, the standard fields ([`crate::fields::STANDARD`]), `metadata` and
/// `segment_id`.
pub const COLUMNS: [&str; 14] = {
    let mut out = [""; 14];
    out[0] = crate::fields::SOURCE_ID;
    let mut i = 0;
    while i < crate::fields::STANDARD.len() {
        out[i + 1] = crate::fields::STANDARD[i].column;
        i += 1;
    }
    out[12] = "metadata";
    out[13] = "segment_id";
    out
};

/// Every trait the default mapping (`mapping::map_profile`) reads, top level
/// and inside `address`. It lives with the file format because the slim parse
/// below keeps exactly these; the mapping re-exports it.
pub const MAPPED_TRAITS: &[&str] = &[
    "name",
    "firstName",
    "first_name",
    "lastName",
    "last_name",
    "email",
    "phone",
    "description",
    "birthdate",
    "birthday",
    "address",
    "street",
    "line_1",
    "line_2",
    "city",
    "state",
    "postalCode",
    "postal_code",
    "country",
    "metadata",
];

pub const REJECTED_COLUMNS: [&str; 3] = ["segment_id", "reason", "detail"];

/// One Voucherify customer as a CSV row. `None` means "not provided": the
/// field is left out of the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerRow {
    pub source_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub birthdate: Option<String>,
    pub description: Option<String>,
    pub address_line_1: Option<String>,
    pub address_line_2: Option<String>,
    pub address_city: Option<String>,
    pub address_state: Option<String>,
    pub address_postal_code: Option<String>,
    pub address_country: Option<String>,
    /// Compact JSON object text.
    pub metadata: Option<String>,
    pub segment_id: Option<String>,
}

impl CustomerRow {
    /// Cells in `COLUMNS` order.
    pub fn cells(&self) -> [&Option<String>; 14] {
        [
            &self.source_id,
            &self.name,
            &self.email,
            &self.phone,
            &self.birthdate,
            &self.description,
            &self.address_line_1,
            &self.address_line_2,
            &self.address_city,
            &self.address_state,
            &self.address_postal_code,
            &self.address_country,
            &self.metadata,
            &self.segment_id,
        ]
    }

    /// Set the cell of `column` (`COLUMNS`).
    pub fn set(&mut self, column: usize, value: Option<String>) {
        let cell = match column {
            0 => &mut self.source_id,
            1 => &mut self.name,
            2 => &mut self.email,
            3 => &mut self.phone,
            4 => &mut self.birthdate,
            5 => &mut self.description,
            6 => &mut self.address_line_1,
            7 => &mut self.address_line_2,
            8 => &mut self.address_city,
            9 => &mut self.address_state,
            10 => &mut self.address_postal_code,
            11 => &mut self.address_country,
            12 => &mut self.metadata,
            _ => &mut self.segment_id,
        };
        *cell = value;
    }

    /// The cell of `column` (`COLUMNS`), when it has one.
    pub fn cell(&self, column: usize) -> Option<&str> {
        let cell = match column {
            0 => &self.source_id,
            1 => &self.name,
            2 => &self.email,
            3 => &self.phone,
            4 => &self.birthdate,
            5 => &self.description,
            6 => &self.address_line_1,
            7 => &self.address_line_2,
            8 => &self.address_city,
            9 => &self.address_state,
            10 => &self.address_postal_code,
            11 => &self.address_country,
            12 => &self.metadata,
            13 => &self.segment_id,
            _ => return None,
        };
        cell.as_deref()
    }

    pub fn cell_mut(&mut self, column: usize) -> Option<&mut Option<String>> {
        Some(match column {
            0 => &mut self.source_id,
            1 => &mut self.name,
            2 => &mut self.email,
            3 => &mut self.phone,
            4 => &mut self.birthdate,
            5 => &mut self.description,
            6 => &mut self.address_line_1,
            7 => &mut self.address_line_2,
            8 => &mut self.address_city,
            9 => &mut self.address_state,
            10 => &mut self.address_postal_code,
            11 => &mut self.address_country,
            12 => &mut self.metadata,
            13 => &mut self.segment_id,
            _ => return None,
        })
    }

    /// The request body for this customer: only the fields that have a value,
    /// in the shape of Voucherify's bulk schema. `segment_id` is never sent.
    pub fn to_request(&self) -> Result<Value, String> {
        let metadata = match self.metadata.as_ref().filter(|v| !v.is_empty()) {
            Some(meta) => match serde_json::from_str::<Value>(meta) {
                Ok(Value::Object(o)) => Some(o),
                _ => return Err("metadata is not a JSON object".into()),
            },
            None => None,
        };
        Ok(Value::Object(self.request_with(metadata)))
    }

    /// [`CustomerRow::to_request`] with the metadata cell already parsed
    /// (None when the cell is empty).
    pub fn request_with(&self, metadata: Option<Map<String, Value>>) -> Map<String, Value> {
        let mut m = Map::with_capacity(8);
        let put = |m: &mut Map<String, Value>, k: &str, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                m.insert(k.to_string(), Value::String(v.clone()));
            }
        };
        put(&mut m, "source_id", &self.source_id);
        put(&mut m, "name", &self.name);
        put(&mut m, "email", &self.email);
        put(&mut m, "phone", &self.phone);
        put(&mut m, "birthdate", &self.birthdate);
        put(&mut m, "description", &self.description);
        let mut address = Map::new();
        put(&mut address, "line_1", &self.address_line_1);
        put(&mut address, "line_2", &self.address_line_2);
        put(&mut address, "city", &self.address_city);
        put(&mut address, "state", &self.address_state);
        put(&mut address, "postal_code", &self.address_postal_code);
        put(&mut address, "country", &self.address_country);
        if !address.is_empty() {
            m.insert("address".into(), Value::Object(address));
        }
        if let Some(o) = metadata {
            m.insert("metadata".into(), Value::Object(o));
        }
        m
    }
}

/// The fields a request body gives, as the ledger and the plan name them:
/// `name`, `address.city`, `metadata.KEY` (`source_id` apart).
pub fn field_names(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in body.as_object().into_iter().flatten() {
        match (k.as_str(), v) {
            ("source_id", _) => {}
            ("address" | "metadata", Value::Object(inner)) => {
                out.extend(inner.keys().map(|ik| format!("{k}.{ik}")));
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

/// The fields a request body clears: those sent as `null` (`phone`,
/// `address.state`, `metadata.tier`).
pub fn null_fields(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in body.as_object().into_iter().flatten() {
        match (k.as_str(), v) {
            ("address" | "metadata", Value::Object(inner)) => out.extend(
                inner
                    .iter()
                    .filter(|(_, iv)| iv.is_null())
                    .map(|(ik, _)| format!("{k}.{ik}")),
            ),
            (_, Value::Null) => out.push(k.clone()),
            _ => {}
        }
    }
    out
}

/// Characters that make a spreadsheet treat a cell as a formula.
fn is_formula_trigger(c: char) -> bool {
    matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r')
}

/// Formula guard for cells written to a file people open in spreadsheets.
/// A value that starts with a formula trigger, after any run of apostrophes,
/// gets one more apostrophe in front: `=1+1` is written `'=1+1`, `'=x` is
/// written `''=x`. [`unguard_cell`] removes exactly that apostrophe, so every
/// value round-trips byte for byte, and a hand-typed `+48…` (no apostrophe)
/// is read as typed.
pub fn guard_cell(value: &str) -> std::borrow::Cow<'_, str> {
    let rest = value.trim_start_matches('\'');
    match rest.chars().next() {
        Some(c) if is_formula_trigger(c) => format!("'{value}").into(),
        _ => value.into(),
    }
}

/// Inverse of [`guard_cell`].
pub fn unguard_cell(cell: &str) -> &str {
    if let Some(after) = cell.strip_prefix('\'') {
        let rest = after.trim_start_matches('\'');
        if rest.chars().next().is_some_and(is_formula_trigger) {
            return after;
        }
    }
    cell
}

/// Parse a profile line keeping only what the mapping reads: the traits named
/// in `wanted` (`Mapping::traits_read`; [`MAPPED_TRAITS`] for the default) and
/// each external id's `type` and `id`. Everything else is checked for
/// well-formedness but skipped without being built, which is what makes
/// `transform` fast on profiles with hundreds of custom traits. The line must
/// be valid UTF-8 as a whole.
pub fn parse_for_mapping(
    line: &[u8],
    wanted: &std::collections::HashSet<String>,
) -> Result<ProfileRecord, String> {
    use serde::de::DeserializeSeed;
    let text = std::str::from_utf8(line).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let slim = slim::ProfileSeed(wanted)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(ProfileRecord {
        segment_id: slim.segment_id,
        metadata: slim.metadata,
        traits: slim.traits,
        external_ids: slim
            .external_ids
            .into_iter()
            .map(|e| {
                let mut m = Map::new();
                if let Some(t) = e.ty {
                    m.insert("type".into(), t);
                }
                if let Some(id) = e.id {
                    m.insert("id".into(), id);
                }
                // Segment's time of the id: which id is the source_id.
                if let Some(at) = e.created_at {
                    m.insert("created_at".into(), at);
                }
                Value::Object(m)
            })
            .collect(),
        extra: Map::new(),
    })
}

/// The traits the default mapping reads, as a set for [`parse_for_mapping`].
pub fn default_trait_set() -> std::collections::HashSet<String> {
    MAPPED_TRAITS.iter().map(|s| s.to_string()).collect()
}

mod slim {
    use serde::de::{DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, Visitor};
    use serde::Deserialize;
    use serde_json::{Map, Value};
    use std::borrow::Cow;
    use std::collections::HashSet;
    use std::fmt;

    pub struct Profile {
        pub segment_id: String,
        pub metadata: Value,
        pub traits: Map<String, Value>,
        pub external_ids: Vec<ExternalId>,
    }

    #[derive(Deserialize)]
    pub struct ExternalId {
        #[serde(rename = "type", default)]
        pub ty: Option<Value>,
        #[serde(default)]
        pub id: Option<Value>,
        #[serde(default)]
        pub created_at: Option<Value>,
    }

    /// A map key, borrowed from the input when it has no escapes.
    struct Key<'a>(Cow<'a, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string key")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_string())))
                }
            }
            d.deserialize_str(V)
        }
    }

    /// The profile object, keeping only the wanted traits.
    pub struct ProfileSeed<'w>(pub &'w HashSet<String>);

    impl<'de> DeserializeSeed<'de> for ProfileSeed<'_> {
        type Value = Profile;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Profile, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for ProfileSeed<'_> {
        type Value = Profile;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a profile object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Profile, A::Error> {
            let mut segment_id = None;
            let mut metadata = Value::Null;
            let mut traits = Map::new();
            let mut external_ids = Vec::new();
            while let Some(Key(k)) = m.next_key::<Key>()? {
                match k.as_ref() {
                    "segment_id" => segment_id = Some(m.next_value::<String>()?),
                    "metadata" => metadata = m.next_value()?,
                    "traits" => traits = m.next_value_seed(TraitsSeed(self.0))?,
                    "external_ids" => external_ids = m.next_value()?,
                    _ => {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(Profile {
                segment_id: segment_id.ok_or_else(|| A::Error::missing_field("segment_id"))?,
                metadata,
                traits,
                external_ids,
            })
        }
    }

    struct TraitsSeed<'w>(&'w HashSet<String>);

    impl<'de> DeserializeSeed<'de> for TraitsSeed<'_> {
        type Value = Map<String, Value>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for TraitsSeed<'_> {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a traits object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Map::new();
            while let Some(Key(k)) = m.next_key::<Key>()? {
                if self.0.contains(k.as_ref()) {
                    out.insert(k.into_owned(), m.next_value::<Value>()?);
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_guard_round_trips() {
        for v in [
            "=SUM(A1)", "+48 600", "-5", "@handle", "'=x", "''+y", "'plain", "plain", "", "\tx",
            "a=b", "'",
        ] {
            let g = guard_cell(v);
            assert_eq!(unguard_cell(&g), v, "value {v:?} written as {g:?}");
        }
        assert_eq!(guard_cell("=1+1"), "'=1+1");
        assert_eq!(guard_cell("'=x"), "''=x");
        assert_eq!(guard_cell("'plain"), "'plain");
        // a hand-typed value without the apostrophe is read as typed
        assert_eq!(unguard_cell("+48123"), "+48123");
        assert_eq!(unguard_cell("'abc"), "'abc");
    }

    #[test]
    fn request_omits_empty_fields_and_segment_id() {
        let row = CustomerRow {
            source_id: Some("u1".into()),
            email: Some(String::new()),
            address_city: Some("Kraków".into()),
            metadata: Some(r#"{"a":1}"#.into()),
            segment_id: Some("use_1".into()),
            ..Default::default()
        };
        let v = row.to_request().unwrap();
        assert_eq!(
            v,
            serde_json::json!({"source_id":"u1","address":{"city":"Kraków"},"metadata":{"a":1}})
        );
    }
}
