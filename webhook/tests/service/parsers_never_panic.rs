//! Property tests: arbitrary bytes fed to every parser and verifier of
//! provider input never panic; they only ever accept or reject.

use proptest::prelude::*;
use secrecy::SecretString;
use tocsin_core::telnyx::{self, TelnyxWebhook};
use tocsin_core::twilio::{self, TwilioStatus};
use tocsin_core::vonage::{self, VonageEvent};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn vonage_event_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(event) = serde_json::from_slice::<VonageEvent>(&body) {
            // Every accessor on a parsed event is total.
            let _ = (event.state(), event.dedupe_key(), event.duration_secs(), event.price(), event.call_uuid());
        }
    }

    #[test]
    fn vonage_event_fields_of_any_json_type_never_panic(
        status in ".{0,20}", duration in prop_oneof![Just(serde_json::json!(null)), any::<f64>().prop_map(|f| serde_json::json!(f)), ".{0,12}".prop_map(|s| serde_json::json!(s))],
    ) {
        let body = serde_json::json!({ "uuid": "u", "status": status, "duration": duration, "price": duration }).to_string();
        if let Ok(event) = serde_json::from_str::<VonageEvent>(&body) {
            let _ = (event.duration_secs(), event.price(), event.state());
        }
    }

    #[test]
    fn vonage_signature_verification_never_panics(
        header in proptest::option::of(".{0,300}"),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let secret = SecretString::from("s");
        let _ = vonage::verify_webhook(header.as_deref(), &secret, &body);
    }

    #[test]
    fn vonage_signature_with_a_jwt_shaped_header_never_panics(
        a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,80}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let secret = SecretString::from("s");
        let header = format!("Bearer {a}.{b}.{c}");
        prop_assert!(vonage::verify_webhook(Some(&header), &secret, &body).is_err());
    }

    #[test]
    fn twilio_form_parsing_and_verification_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        header in proptest::option::of(".{0,60}"),
        url in ".{0,80}",
    ) {
        if let Ok(params) = twilio::parse_form(&body) {
            if let Ok(status) = TwilioStatus::from_params(&params) {
                let _ = (status.state(), status.dedupe_key(), status.occurred_at(), status.answered_by(), status.detail());
            }
            let _ = twilio::verify_signature(header.as_deref(), &SecretString::from("token"), &url, &params);
        }
    }

    #[test]
    fn telnyx_event_parsing_and_verification_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        signature in proptest::option::of(".{0,100}"),
        timestamp in proptest::option::of(".{0,20}"),
        key in ".{0,50}",
    ) {
        if let Ok(hook) = serde_json::from_slice::<TelnyxWebhook>(&body) {
            let e = &hook.data;
            let _ = (e.call_id(), e.dedupe_key(), e.occurred_at(), e.state(), e.duration_secs(), e.answered_by(), e.detail());
        }
        let _ = telnyx::call_id_from_client_state(&key);
        if let Ok(public) = telnyx::PublicKey::from_base64(&key) {
            let _ = telnyx::verify_webhook(signature.as_deref(), timestamp.as_deref(), &public, &body);
        }
        let zero = telnyx::PublicKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let _ = telnyx::verify_webhook(signature.as_deref(), timestamp.as_deref(), &zero, &body);
    }
}
