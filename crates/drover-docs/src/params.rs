//! Parameter values: typed, coerced from the strings a CLI passes, checked against the
//! document's declarations before anything runs.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::model::{Document, ParamType, Parameter};

/// A checked value: its JSON form has the declared type.
pub type ParamValue = Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {name:?}: {reason}")]
pub struct ParamError {
    pub name: String,
    pub reason: String,
}

/// Checks `provided` against the document: unknown names, missing required values, types,
/// allowed values, patterns and bounds. Returns every declared parameter's value.
pub fn validate_values(
    doc: &Document,
    provided: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, ParamValue>, ParamError> {
    validate_declared(&doc.parameters, provided)
}

/// [`validate_values`] against a map of declarations (a session document's, say).
pub fn validate_declared(
    parameters: &BTreeMap<String, Parameter>,
    provided: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, ParamValue>, ParamError> {
    for name in provided.keys() {
        if !parameters.contains_key(name) {
            let known: Vec<&str> = parameters.keys().map(String::as_str).collect();
            return Err(ParamError {
                name: name.clone(),
                reason: if known.is_empty() {
                    "the document takes no parameters".into()
                } else {
                    format!(
                        "not a parameter of this document (it takes {})",
                        known.join(", ")
                    )
                },
            });
        }
    }
    let mut out = BTreeMap::new();
    for (name, p) in parameters {
        let value = match provided.get(name).or(p.default.as_ref()) {
            Some(v) => v.clone(),
            None => {
                return Err(ParamError {
                    name: name.clone(),
                    reason: format!("required ({:?}) and not given", p.ty),
                })
            }
        };
        out.insert(name.clone(), check_one(name, p, value)?);
    }
    Ok(out)
}

/// Coerces one value to its declared type and checks its constraints.
pub(crate) fn check_one(name: &str, p: &Parameter, value: Value) -> Result<Value, ParamError> {
    let fail = |reason: String| ParamError {
        name: name.to_string(),
        reason,
    };
    let value = coerce(p.ty, value).map_err(&fail)?;
    let texts = texts(p.ty, &value);
    let strings: Vec<&str> = texts.iter().map(String::as_str).collect();
    if !p.allowed_values.is_empty() {
        for s in &strings {
            if !p.allowed_values.iter().any(|a| a == s) {
                return Err(fail(format!(
                    "{s:?} is not one of the allowed values: {}",
                    p.allowed_values.join(", ")
                )));
            }
        }
    }
    if let Some(pat) = &p.allowed_pattern {
        let re = Regex::new(pat).map_err(|e| fail(format!("invalid allowedPattern: {e}")))?;
        for s in &strings {
            if !re.is_match(s) {
                return Err(fail(format!("{s:?} does not match the pattern {pat}")));
            }
        }
    }
    for s in &strings {
        let n = s.chars().count();
        if let Some(min) = p.min_chars {
            if n < min {
                return Err(fail(format!("{s:?} is shorter than {min} characters")));
            }
        }
        if let Some(max) = p.max_chars {
            if n > max {
                return Err(fail(format!("{s:?} is longer than {max} characters")));
            }
        }
    }
    if let Value::Array(items) = &value {
        if let Some(min) = p.min_items {
            if items.len() < min {
                return Err(fail(format!(
                    "{} items; at least {min} needed",
                    items.len()
                )));
            }
        }
        if let Some(max) = p.max_items {
            if items.len() > max {
                return Err(fail(format!(
                    "{} items; at most {max} allowed",
                    items.len()
                )));
            }
        }
    }
    Ok(value)
}

/// Every text in a value that the checks apply to: the string, each string of a list, and the
/// keys and values of a map or of each map of a list (they reach scripts too, so none goes
/// unchecked).
fn texts(ty: ParamType, value: &Value) -> Vec<String> {
    fn of_map(m: &serde_json::Map<String, Value>, out: &mut Vec<String>) {
        for (k, v) in m {
            out.push(k.clone());
            out.push(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
    }
    let mut out = Vec::new();
    match (ty, value) {
        (_, Value::String(s)) => out.push(s.clone()),
        (ParamType::StringList, Value::Array(items)) => {
            out.extend(items.iter().filter_map(Value::as_str).map(str::to_string));
        }
        (ParamType::StringMap, Value::Object(m)) => of_map(m, &mut out),
        (ParamType::MapList, Value::Array(items)) => {
            for m in items.iter().filter_map(Value::as_object) {
                of_map(m, &mut out);
            }
        }
        _ => {}
    }
    out
}

/// Accepts the value in its own type, or as the string a command line gives.
fn coerce(ty: ParamType, v: Value) -> Result<Value, String> {
    let from_json = |s: &str, what: &str| -> Result<Value, String> {
        serde_json::from_str(s).map_err(|e| format!("expected {what} as JSON: {e}"))
    };
    match (ty, v) {
        (ParamType::String, Value::String(s)) => Ok(Value::String(s)),
        (ParamType::String, other) if other.is_number() || other.is_boolean() => {
            Ok(Value::String(other.to_string()))
        }
        (ParamType::StringList, Value::Array(items)) => {
            if items.iter().all(Value::is_string) {
                Ok(Value::Array(items))
            } else {
                Err("expected a list of strings".into())
            }
        }
        // One string given for a list: a one-item list (what a command line means).
        (ParamType::StringList, Value::String(s)) => Ok(Value::Array(vec![Value::String(s)])),
        (ParamType::Integer, Value::Number(n)) if n.is_i64() => Ok(Value::Number(n)),
        (ParamType::Integer, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .map_err(|_| format!("{s:?} is not an integer")),
        (ParamType::Boolean, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ParamType::Boolean, Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{s:?} is not true or false")),
        },
        (ParamType::StringMap, Value::Object(m)) if m.values().all(Value::is_string) => {
            Ok(Value::Object(m))
        }
        (ParamType::StringMap, Value::String(s)) => {
            coerce(ParamType::StringMap, from_json(&s, "a map of strings")?)
        }
        (ParamType::MapList, Value::Array(items)) if items.iter().all(Value::is_object) => {
            Ok(Value::Array(items))
        }
        (ParamType::MapList, Value::String(s)) => {
            coerce(ParamType::MapList, from_json(&s, "a list of maps")?)
        }
        (ty, v) => Err(format!("expected {ty:?}, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn doc() -> Document {
        crate::parse(
            r#"
schemaVersion: "2.2"
parameters:
  env:
    type: String
    allowedValues: [dev, prod]
  name:
    type: String
    allowedPattern: "^[a-z]+$"
    maxChars: 8
  count:
    type: Integer
    default: 1
  force:
    type: Boolean
    default: false
  hosts:
    type: StringList
    default: []
    maxItems: 2
  labels:
    type: StringMap
    default: {}
    allowedPattern: "^[a-z0-9=]+$"
  rows:
    type: MapList
    default: []
    maxChars: 10
mainSteps:
  - action: runShellScript
    name: s
    inputs:
      runCommand: ["echo {{ env }} {{ name }}"]
"#,
        )
        .unwrap()
    }

    fn check(given: &[(&str, Value)]) -> Result<BTreeMap<String, Value>, String> {
        let provided = given
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        validate_values(&doc(), &provided).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_coerced_and_defaulted() {
        let v = check(&[
            ("env", json!("dev")),
            ("name", json!("web")),
            ("count", json!("5")),
            ("force", json!("TRUE")),
            ("hosts", json!("a")),
            ("labels", json!("{\"k\":\"v\"}")),
        ])
        .unwrap();
        assert_eq!(v["count"], json!(5));
        assert_eq!(v["force"], json!(true));
        assert_eq!(v["hosts"], json!(["a"]));
        assert_eq!(v["labels"], json!({"k": "v"}));
    }

    #[test]
    fn bad_values_are_refused_naming_the_parameter() {
        let base = [("env", json!("dev")), ("name", json!("web"))];
        let with = |k: &str, v: Value| {
            let mut g: Vec<(&str, Value)> = base.iter().filter(|(n, _)| *n != k).cloned().collect();
            g.push((k, v));
            check(&g.iter().map(|(a, b)| (*a, b.clone())).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(with("env", json!("staging"))
            .contains("parameter \"env\": \"staging\" is not one of the allowed values"));
        assert!(with("name", json!("Web1")).contains("does not match the pattern"));
        assert!(with("name", json!("abcdefghij")).contains("longer than 8"));
        assert!(with("count", json!("many")).contains("not an integer"));
        assert!(with("force", json!("maybe")).contains("not true or false"));
        assert!(with("hosts", json!(["a", "b", "c"])).contains("at most 2"));
        assert!(with("labels", json!("[1]")).contains("parameter \"labels\""));
        // Map keys and values, and every map of a list, are checked like any string.
        assert!(with("labels", json!({"k": "$(reboot)"})).contains("does not match the pattern"));
        assert!(with("labels", json!({"$(id)": "v"})).contains("does not match the pattern"));
        assert!(
            with("rows", json!([{"a": "ok"}, {"b": "much too long"}])).contains("longer than 10")
        );
        assert!(with("nope", json!("x")).contains("not a parameter of this document"));
        assert!(check(&[("name", json!("web"))])
            .unwrap_err()
            .contains("parameter \"env\": required"));
    }
}
