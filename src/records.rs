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

/// The columns of `customers.csv`, in order (DESIGN.md).
pub const COLUMNS: [&str; 14] = [
    "source_id",
    "name",
    "email",
    "phone",
    "birthdate",
    "description",
    "address_line_1",
    "address_line_2",
    "address_city",
    "address_state",
    "address_postal_code",
    "address_country",
    "metadata",
    "segment_id",
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
        let mut m = Map::new();
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
        if let Some(meta) = self.metadata.as_ref().filter(|v| !v.is_empty()) {
            match serde_json::from_str::<Value>(meta) {
                Ok(Value::Object(o)) => {
                    m.insert("metadata".into(), Value::Object(o));
                }
                _ => return Err("metadata is not a JSON object".into()),
            }
        }
        Ok(Value::Object(m))
    }
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
