//! Validates answer NCCOs against Vonage's published NCCO JSON Schema
//! (`specs/vonage-ncco-schema.json`, draft-04, MIT-licensed by Vonage),
//! as the real API rejects an NCCO it cannot run (the validator is
//! `schema::check`).

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
    crate::schema::check(root, root, ncco, "$")
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
