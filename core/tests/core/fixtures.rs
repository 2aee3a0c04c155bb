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

#[test]
fn every_documented_telnyx_event_is_read_with_its_call_and_state() {
    use tocsin_core::CallState;
    use tocsin_core::telnyx::TelnyxWebhook;
    let fixtures = fixture("telnyx/events.json");
    let events = fixtures["events"].as_array().unwrap();
    assert!(events.len() >= 6, "call.initiated, answered, speak.started/ended, machine detection, hangup");
    for f in events {
        let name = f["name"].as_str().unwrap();
        let webhook: TelnyxWebhook =
            serde_json::from_value(f["body"].clone()).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        let event = webhook.data;
        assert_eq!(event.event_type, name);
        assert!(event.call_id().is_some(), "{name}: our call id from client_state");
        assert!(event.payload.call_control_id.is_some(), "{name}");
        assert!(event.occurred_at().is_some(), "{name}");
        let want = match name {
            "call.initiated" => Some(CallState::Placed),
            "call.answered" => Some(CallState::Answered),
            "call.hangup" => event.state(),
            _ => None,
        };
        assert_eq!(event.state(), want, "{name}");
        if name == "call.hangup" {
            assert!(event.state().is_some_and(CallState::is_terminal));
            // Talk time from the payload's start_time to data.occurred_at.
            assert!(event.duration_secs().is_some(), "{name}: talk time");
        }
        if name == "call.machine.detection.ended" {
            assert!(event.answered_by().is_some() || event.payload.result.as_deref() == Some("not_sure"));
        }
    }
}

#[test]
fn every_documented_twilio_callback_is_read_and_every_signature_vector_verifies() {
    use secrecy::SecretString;
    use tocsin_core::twilio::{self, TwilioStatus};
    let fixtures = fixture("twilio/status-callbacks.json");
    let callbacks = fixtures["callbacks"].as_array().unwrap();
    assert!(callbacks.len() >= 6);
    for f in callbacks {
        let name = f["name"].as_str().unwrap();
        let params: Vec<(String, String)> = f["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        let status = TwilioStatus::from_params(&params).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        let terminal = matches!(name, "completed" | "busy" | "no-answer" | "failed" | "canceled");
        assert_eq!(status.state().is_some_and(tocsin_core::CallState::is_terminal), terminal, "{name}");
        assert!(status.occurred_at().is_some(), "{name}: the RFC 2822 Timestamp");
    }

    let vectors = fixture("twilio/signatures.json");
    let vectors = vectors["vectors"].as_array().unwrap();
    assert!(!vectors.is_empty());
    for v in vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let Some(params) = v["params"].as_object() else { continue };
        // A repeated parameter is a list: each of its values, in order.
        let params: Vec<(String, String)> = params
            .iter()
            .flat_map(|(k, v)| match v {
                serde_json::Value::Array(values) => {
                    values.iter().map(|v| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                }
                v => vec![(k.clone(), v.as_str().unwrap_or_default().to_owned())],
            })
            .collect();
        let url = v["validated_url"].as_str().or(v["url"].as_str()).unwrap();
        let token = SecretString::from(v["token"].as_str().unwrap().to_owned());
        let result = twilio::verify_signature(v["signature"].as_str(), &token, url, &params);
        assert_eq!(result.is_ok(), v["valid"].as_bool().unwrap_or(true), "{name}: {result:?}");
    }
}
