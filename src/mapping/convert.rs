//! Typed metadata: a trait's JSON value converted to a Voucherify metadata
//! type only when nothing is lost; otherwise the key is left out and the
//! value reported (`transform.warnings.csv`).

use super::config::{BaseType, MetaType};
use serde_json::Value;

/// Convert `v` to `t`, or say why it cannot be done losslessly.
pub fn convert(v: &Value, t: MetaType) -> Result<Value, String> {
    if t.array {
        let Value::Array(items) = v else {
            return Err(format!(
                "expected an array of {}, got {}",
                t.base.name(),
                kind(v)
            ));
        };
        return items
            .iter()
            .map(|i| convert_one(i, t.base))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    convert_one(v, t.base)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn convert_one(v: &Value, t: BaseType) -> Result<Value, String> {
    let no = || format!("{} cannot become a {} without loss", shown(v), t.name());
    match (t, v) {
        (BaseType::String, Value::String(_)) => Ok(v.clone()),
        (BaseType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (BaseType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (BaseType::Number, Value::Number(_)) => Ok(v.clone()),
        // JSON's number grammar exactly: no sign, spaces or leading zeros that
        // the number would lose.
        (BaseType::Number, Value::String(s)) => (s.trim() == s)
            .then(|| serde_json::from_str::<serde_json::Number>(s).ok())
            .flatten()
            .filter(|n| n.as_f64().is_some_and(f64::is_finite))
            .map(Value::Number)
            .ok_or_else(no),
        (BaseType::Boolean, Value::Bool(_)) => Ok(v.clone()),
        (BaseType::Boolean, Value::String(s)) if s == "true" || s == "false" => {
            Ok(Value::Bool(s == "true"))
        }
        (BaseType::Date, Value::String(s)) => crate::dates::date_part(s)
            .map(|d| Value::String(d.to_string()))
            .ok_or_else(|| {
                format!(
                    "{} is not a date (YYYY-MM-DD, or an ISO date-time)",
                    shown(v)
                )
            }),
        (BaseType::Datetime, Value::String(s)) => crate::dates::parse_timestamp(s)
            .filter(|_| s.len() > 10)
            .map(|_| v.clone())
            .ok_or_else(|| format!("{} is not an ISO 8601 date-time", shown(v))),
        (BaseType::Object, Value::Object(_)) => Ok(v.clone()),
        _ => Err(no()),
    }
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(57).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> MetaType {
        MetaType::parse(s).unwrap()
    }

    #[test]
    fn lossless_conversions_happen() {
        assert_eq!(convert(&json!("42"), t("number")), Ok(json!(42)));
        assert_eq!(convert(&json!("-1.5"), t("number")), Ok(json!(-1.5)));
        assert_eq!(convert(&json!(7), t("number")), Ok(json!(7)));
        assert_eq!(convert(&json!("true"), t("boolean")), Ok(json!(true)));
        assert_eq!(convert(&json!("false"), t("boolean")), Ok(json!(false)));
        assert_eq!(convert(&json!(false), t("boolean")), Ok(json!(false)));
        assert_eq!(convert(&json!(42), t("string")), Ok(json!("42")));
        assert_eq!(convert(&json!(true), t("string")), Ok(json!("true")));
        assert_eq!(
            convert(&json!("1990-05-17T23:30:00+02:00"), t("date")),
            Ok(json!("1990-05-17"))
        );
        assert_eq!(
            convert(&json!("1990-05-17"), t("date")),
            Ok(json!("1990-05-17"))
        );
        assert_eq!(
            convert(&json!("2024-01-02T03:04:05Z"), t("datetime")),
            Ok(json!("2024-01-02T03:04:05Z"))
        );
        assert_eq!(convert(&json!({"a": 1}), t("object")), Ok(json!({"a": 1})));
        assert_eq!(convert(&json!(["1", 2]), t("number[]")), Ok(json!([1, 2])));
    }

    #[test]
    fn lossy_conversions_are_refused_with_the_value() {
        for (v, ty) in [
            (json!("042"), "number"),
            (json!(" 42"), "number"),
            (json!("+42"), "number"),
            (json!("n/a"), "number"),
            (json!(true), "number"),
            (json!("yes"), "boolean"),
            (json!("True"), "boolean"),
            (json!(1), "boolean"),
            (json!("17/05/1990"), "date"),
            (json!("1990-02-30"), "date"),
            (json!("1990-05-17"), "datetime"),
            (json!("soon"), "datetime"),
            (json!([1]), "object"),
            (json!({"a": 1}), "string"),
            (json!(null), "string"),
            (json!(1), "number[]"),
            (json!([1, "x"]), "number[]"),
        ] {
            let e = convert(&v, t(ty)).unwrap_err();
            assert!(!e.is_empty(), "{v} as {ty}");
        }
        assert!(convert(&json!("n/a"), t("number"))
            .unwrap_err()
            .contains("\"n/a\""));
    }
}
