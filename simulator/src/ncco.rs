//! Validates answer NCCOs against Vonage's published NCCO JSON Schema
//! (`specs/vonage-ncco-schema.json`, draft-04, MIT-licensed by Vonage),
//! as the real API rejects an NCCO it cannot run. The validator covers the
//! draft-04 keywords that schema uses: `$ref` (local), `allOf`, `oneOf`,
//! `type`, `enum`, `required`, `properties`, `items`, `minItems`,
//! `minimum`/`maximum`, `minLength`/`maxLength` and `pattern`.

use std::sync::OnceLock;

use serde_json::Value;

const SCHEMA_TEXT: &str = include_str!("../specs/vonage-ncco-schema.json");

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| serde_json::from_str(SCHEMA_TEXT).unwrap_or(Value::Null))
}

/// Checks `ncco` against the schema; the error names the first violation.
pub fn validate(ncco: &Value) -> Result<(), String> {
    let root = schema();
    if root.is_null() {
        return Err("the embedded NCCO schema does not parse".into());
    }
    check(root, root, ncco, "$")
}

/// What the callee hears from a valid NCCO: each talk action's text as
/// often as its `loop` says (default 1; 0, "until the call ends", heard
/// here once), joined by a space.
pub fn spoken_text(ncco: &Value) -> Option<String> {
    let texts: Vec<&str> = ncco
        .as_array()?
        .iter()
        .filter(|a| a.get("action").and_then(Value::as_str) == Some("talk"))
        .filter_map(|a| {
            let times = a.get("loop").and_then(Value::as_u64).unwrap_or(1).clamp(1, 100);
            let text = a.get("text").and_then(Value::as_str)?;
            Some(std::iter::repeat_n(text, times as usize))
        })
        .flatten()
        .collect();
    (!texts.is_empty()).then(|| texts.join(" "))
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let pointer = reference.strip_prefix('#').ok_or_else(|| format!("unsupported $ref {reference}"))?;
    root.pointer(pointer).ok_or_else(|| format!("dangling $ref {reference}"))
}

fn type_matches(kind: &str, value: &Value) -> bool {
    match kind {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn check(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if let Some(Value::String(reference)) = s.get("$ref") {
        return check(root, resolve(root, reference)?, value, at);
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(root, sub, value, at)?;
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let mut errors = Vec::new();
        let matched =
            one.iter().filter(|sub| check(root, sub, value, at).map_err(|e| errors.push(e)).is_ok()).count();
        if matched != 1 {
            let action = value.get("action").and_then(Value::as_str).unwrap_or("?");
            return Err(format!(
                "{at}: must match exactly one schema, matches {matched} (action {action:?}); e.g. {}",
                errors.into_iter().find(|e| !e.contains("must be one of")).unwrap_or_default()
            ));
        }
    }
    match s.get("type") {
        Some(Value::String(kind)) if !type_matches(kind, value) => {
            return Err(format!("{at}: must be of type {kind}"));
        }
        Some(Value::Array(kinds))
            if !kinds.iter().filter_map(Value::as_str).any(|k| type_matches(k, value)) =>
        {
            return Err(format!("{at}: has the wrong type"));
        }
        _ => {}
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} must be one of {}", Value::Array(options.clone())));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{at}: {n} is below the minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{at}: {n} is above the maximum {max}"));
        }
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if s.get("minLength").and_then(Value::as_u64).is_some_and(|min| chars < min) {
            return Err(format!("{at}: shorter than its minLength"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            return Err(format!("{at}: {chars} characters, more than the {max} allowed"));
        }
        if let Some(Value::String(pattern)) = s.get("pattern") {
            let re = regex::Regex::new(pattern).map_err(|e| format!("bad pattern {pattern}: {e}"))?;
            if !re.is_match(text) {
                return Err(format!("{at}: {text:?} does not match {pattern}"));
            }
        }
    }
    if let Some(object) = value.as_object() {
        if let Some(Value::Array(required)) = s.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{at}: missing required property {name:?}"));
                }
            }
        }
        if let Some(Value::Object(properties)) = s.get("properties") {
            for (name, sub) in properties {
                if let Some(v) = object.get(name) {
                    check(root, sub, v, &format!("{at}.{name}"))?;
                }
            }
        }
    }
    if let Some(items) = value.as_array() {
        if s.get("minItems").and_then(Value::as_u64).is_some_and(|min| (items.len() as u64) < min) {
            return Err(format!("{at}: needs at least one action"));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(root, item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_ncco_tocsin_serves_is_valid() {
        let ncco = tocsin_core::vonage::ncco("Storm <warning> & \"now\"", "en-US", 0, 2);
        assert_eq!(validate(&ncco), Ok(()));
        // loop 2: heard twice.
        assert_eq!(
            spoken_text(&ncco).as_deref(),
            Some("Storm <warning> & \"now\" Storm <warning> & \"now\"")
        );
    }

    #[test]
    fn invalid_nccos_are_refused_with_a_reason() {
        let cases = [
            json!([]),
            json!({"action": "talk", "text": "not an array"}),
            json!([{"text": "no action"}]),
            json!([{"action": "talk"}]),
            json!([{"action": "talk", "text": "x", "language": "xx-XX"}]),
            json!([{"action": "talk", "text": "x", "loop": -1}]),
            json!([{"action": "talk", "text": "x".repeat(1501)}]),
            json!([{"action": "shout", "text": "x"}]),
            json!([{"action": "connect", "endpoint": [{"type": "phone", "number": "+1415"}]}]),
        ];
        for ncco in cases {
            assert!(validate(&ncco).is_err(), "{ncco} should be invalid");
        }
        let ok = json!([{"action": "connect", "endpoint": [{"type": "phone", "number": "14155550100"}]},
                         {"action": "talk", "text": "hi", "voiceName": "Amy", "bargeIn": true}]);
        assert_eq!(validate(&ok), Ok(()));
    }
}
