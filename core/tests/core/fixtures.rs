//! The adapters read the providers' own documented payloads: fixtures in
//! `fixtures/` at the repository root, each naming its source (a
//! documentation page or an official SDK's file), never written from our
//! adapters' assumptions.

use serde_json::Value;
use tocsin_core::vonage::VonageEvent;

fn fixture(path: &str) -> Value {
    let full = format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"));
    assert!(value["source"].as_str().is_some_and(|s| !s.is_empty()), "{path} names no source");
    value
}

#[test]
fn every_documented_vonage_event_is_read_and_none_is_refused() {
    let fixtures = fixture("vonage/events.json");
    let events = fixtures["events"].as_array().unwrap();
    // Every event type of the reference: 11 statuses, human/machine, record, input, transfer, error.
    assert_eq!(events.len(), 15);
    for f in events {
        let name = f["name"].as_str().unwrap();
        let event: VonageEvent =
            serde_json::from_value(f["payload"].clone()).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        assert_eq!(event.kind(), name, "{name}");
        assert_eq!(event.state().map(|s| s.as_str()), f["state"].as_str(), "{name}");
        assert!(event.call_uuid().is_some() || event.conversation_uuid.is_some(), "{name}");
        if let Some(d) = f["duration_secs"].as_i64() {
            assert_eq!(event.duration_secs(), Some(d as i32), "{name}");
        }
        if let Some(p) = f["price"].as_f64() {
            assert_eq!(event.price(), Some(p), "{name}");
        }
        if let Some(d) = f["detail"].as_str() {
            assert_eq!(event.failure_detail().as_deref(), Some(d), "{name}");
        }
    }
}
