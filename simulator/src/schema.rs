//! A JSON Schema validator for the keywords the providers' published
//! schemas use: the NCCO schema (draft-04) and the OpenAPI 3 specs of
//! Vonage Voice and Twilio Calls (`specs/`). Covered: `$ref` (local),
//! `allOf`, `oneOf`, `type`, `nullable`, `enum`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `minItems`,
//! `minimum`/`maximum`, `minLength`/`maxLength` and `pattern`; `format`
//! and the rest are not checked. The simulator checks NCCOs with it, and
//! the tests check the adapters' requests and the simulator's answers.

use serde_json::Value;

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

/// Checks `value` against `schema` (inside `root`, for `$ref`s); the error
/// names the first violation by its path from `at`. `oneOf` means exactly
/// one, as JSON Schema says (the NCCO schema's actions never overlap).
pub fn check(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    walk(root, schema, value, at, true)
}

/// The same for the providers' OpenAPI specs, where `oneOf` branches overlap
/// and are told apart only in prose: Vonage's `to` endpoints (`phone`,
/// `sip`, `websocket`, `vbc`) each require little more than `type`, whose
/// allowed value only the description states. A value passes when it
/// matches at least one branch.
pub fn check_openapi(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    walk(root, schema, value, at, false)
}

fn walk(root: &Value, schema: &Value, value: &Value, at: &str, one_of_exact: bool) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if let Some(Value::String(reference)) = s.get("$ref") {
        return walk(root, resolve(root, reference)?, value, at, one_of_exact);
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            walk(root, sub, value, at, one_of_exact)?;
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let mut errors = Vec::new();
        let matched = one
            .iter()
            .filter(|sub| walk(root, sub, value, at, one_of_exact).map_err(|e| errors.push(e)).is_ok())
            .count();
        if matched == 0 || (one_of_exact && matched != 1) {
            let action = value.get("action").and_then(Value::as_str).unwrap_or("?");
            return Err(format!(
                "{at}: must match exactly one schema, matches {matched} (action {action:?}); e.g. {}",
                errors.into_iter().find(|e| !e.contains("must be one of")).unwrap_or_default()
            ));
        }
    }
    if value.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
        return Ok(());
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
                    walk(root, sub, v, &format!("{at}.{name}"), one_of_exact)?;
                }
            }
            if s.get("additionalProperties") == Some(&Value::Bool(false))
                && let Some(extra) = object.keys().find(|k| !properties.contains_key(*k))
            {
                return Err(format!("{at}: has no property {extra:?}"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        if s.get("minItems").and_then(Value::as_u64).is_some_and(|min| (items.len() as u64) < min) {
            return Err(format!("{at}: needs at least one action"));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                walk(root, item_schema, item, &format!("{at}[{i}]"), one_of_exact)?;
            }
        }
    }
    Ok(())
}
