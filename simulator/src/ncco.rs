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

/// A valid NCCO's `stream` actions (`fixtures/vonage/stream.json`): each
/// one URL (`streamUrl` holds "a single URL") and its `loop` (default 1;
/// 0, "until the call ends", played here once).
pub fn streams(ncco: &Value) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    for action in ncco.as_array().into_iter().flatten() {
        if action.get("action").and_then(Value::as_str) != Some("stream") {
            continue;
        }
        let url = match action.get("streamUrl").and_then(Value::as_array).map(Vec::as_slice) {
            Some([Value::String(u)]) => u.clone(),
            _ => return Err("stream streamUrl must hold a single URL".into()),
        };
        let times = action.get("loop").and_then(Value::as_u64).unwrap_or(1).clamp(1, 100) as u32;
        out.push((url, times));
    }
    Ok(out)
}

/// Whether a valid NCCO makes the call say or play anything.
pub fn plays_something(ncco: &Value) -> bool {
    ncco.as_array().is_some_and(|a| {
        a.iter().any(|a| matches!(a.get("action").and_then(Value::as_str), Some("talk" | "stream")))
    })
}

/// An NCCO's `input` action, as the call runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub event_url: String,
    pub post: bool,
    /// Seconds to wait for a key (Vonage's default 3).
    pub time_out: f64,
}

/// The `input` action of a valid NCCO, checked in Vonage's current form,
/// which the 2021 schema does not check (`fixtures/vonage/input.json`, from
/// the Java SDK's `InputAction` and `DtmfSettings`): `type` an array of
/// `dtmf` / `speech` (required), a `dtmf` object of `timeOut` (0-10 s),
/// `maxDigits` (0-20) and `submitOnHash`, `eventUrl` one URL. The old flat
/// form (`maxDigits` at the top level, no `type`) is refused: Vonage's
/// current API runs an input by its `type`. `None` when there is no input.
pub fn input_action(ncco: &Value) -> Result<Option<Input>, String> {
    let inputs: Vec<&Value> = ncco
        .as_array()
        .map(|a| a.iter().filter(|a| a.get("action").and_then(Value::as_str) == Some("input")).collect())
        .unwrap_or_default();
    let input = match inputs.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => return Err("more than one input action".into()),
    };
    const FIELDS: [&str; 7] = ["action", "type", "dtmf", "eventUrl", "eventMethod", "speech", "mode"];
    let Some(fields) = input.as_object() else { return Err("input is not an object".into()) };
    if let Some(other) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "input has no field {other:?} (the current form nests dtmf settings in \"dtmf\")"
        ));
    }
    let types = input.get("type").and_then(Value::as_array).ok_or("input needs a type array")?;
    if types.is_empty() || !types.iter().all(|t| matches!(t.as_str(), Some("dtmf" | "speech"))) {
        return Err("input type must hold dtmf and/or speech".into());
    }
    if !types.iter().any(|t| t.as_str() == Some("dtmf")) {
        return Err("input type has no dtmf: no key can be pressed".into());
    }
    let mut time_out = 3.0;
    if let Some(dtmf) = input.get("dtmf") {
        let Some(dtmf) = dtmf.as_object() else { return Err("input dtmf must be an object".into()) };
        for (k, v) in dtmf {
            match (k.as_str(), v.as_u64()) {
                ("timeOut", Some(t @ 0..=10)) => time_out = t as f64,
                ("maxDigits", Some(0..=20)) => {}
                ("submitOnHash", _) if v.is_boolean() => {}
                _ => return Err(format!("input dtmf {k}={v} is not valid (timeOut 0-10, maxDigits 0-20)")),
            }
        }
    }
    let urls = input.get("eventUrl").and_then(Value::as_array).ok_or("input needs an eventUrl array")?;
    let event_url = match urls.as_slice() {
        [Value::String(u)] if u.starts_with("http://") || u.starts_with("https://") => u.clone(),
        _ => return Err("input eventUrl must hold one URL".into()),
    };
    let post = match input.get("eventMethod").and_then(Value::as_str) {
        None | Some("POST") => true,
        Some("GET") => false,
        Some(other) => return Err(format!("input eventMethod {other:?} is not GET or POST")),
    };
    Ok(Some(Input { event_url, post, time_out }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_ncco_tocsin_serves_is_valid() {
        let ncco = tocsin_core::vonage::ncco(
            &tocsin_core::campaign::Content::Text("Storm <warning> & \"now\"".into()),
            "en-US",
            0,
            2,
        );
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
