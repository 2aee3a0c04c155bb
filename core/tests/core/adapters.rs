//! Every provider adapter against a `wiremock` server, one test per outcome
//! class: placed, rate limited (with the provider's wait headers),
//! transient (5xx, nothing listening), permanent (4xx with the provider's
//! code and detail) and ambiguous (no answer after the request was sent);
//! and each adapter's reading of one call's status (ended, live, gone, or
//! an error). The same lookups against the simulator are in
//! `simulator/tests/api.rs`.

use std::time::Duration;

use secrecy::SecretString;
use tocsin_core::config::{TelnyxCredentials, TwilioCredentials, VonageCredentials};
use tocsin_core::provider::{
    CallRequest, CallWindow, PlaceCallError, PlacedCall, RemoteStatus, VoiceProvider,
};
use tocsin_core::{CallId, CallState, PhoneNumber, telnyx, twilio, vonage};
use wiremock::matchers::{body_string_contains, header, header_exists, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap()
}

fn request() -> CallRequest {
    CallRequest {
        call_id: CallId(uuid::Uuid::from_u128(42)),
        attempt: 1,
        to: PhoneNumber::from_e164("+14155552671").unwrap(),
        from: PhoneNumber::from_e164("+14155550100").unwrap(),
        webhook_base: "https://hooks.example.com".into(),
        url_token: "tok3n".into(),
        ringing_timeout_secs: 45,
        machine_detection: tocsin_core::provider::MachineDetection::Detect,
        time_limit_secs: 300,
    }
}

fn rsa_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

enum Adapter {
    Vonage,
    Twilio,
    Telnyx,
}

fn client(adapter: &Adapter, api_url: &str) -> Box<dyn VoiceProvider> {
    match adapter {
        Adapter::Vonage => Box::new(
            vonage::Client::new(
                http(),
                &VonageCredentials {
                    api_url: api_url.into(),
                    application_id: "app".into(),
                    private_key_pem: SecretString::from(rsa_pem()),
                },
            )
            .unwrap(),
        ),
        Adapter::Twilio => Box::new(twilio::Client::new(
            http(),
            &TwilioCredentials {
                api_url: api_url.into(),
                account_sid: SID.into(),
                auth_token: SecretString::from("token"),
            },
        )),
        Adapter::Telnyx => Box::new(telnyx::Client::new(
            http(),
            &TelnyxCredentials {
                api_url: api_url.into(),
                api_key: SecretString::from("KEY123"),
                connection_id: "conn-1".into(),
            },
        )),
    }
}

fn create_path(adapter: &Adapter) -> String {
    match adapter {
        Adapter::Vonage => "/v1/calls".into(),
        Adapter::Twilio => format!("/2010-04-01/Accounts/{SID}/Calls.json"),
        Adapter::Telnyx => "/v2/calls".into(),
    }
}

const ALL: [Adapter; 3] = [Adapter::Vonage, Adapter::Twilio, Adapter::Telnyx];

async fn place_with(adapter: &Adapter, response: ResponseTemplate) -> Result<PlacedCall, PlaceCallError> {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(create_path(adapter))).respond_with(response).mount(&server).await;
    client(adapter, &server.uri()).place_call(&request()).await
}

#[tokio::test]
async fn vonage_places_a_call_with_a_jwt_and_our_urls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/calls"))
        .and(header_exists("authorization"))
        .and(body_string_contains(
            r#""answer_url":["https://hooks.example.com/vonage/answer?call_id=00000000-0000-0000-0000-00000000002a"#,
        ))
        .and(body_string_contains(r#""number":"14155552671""#))
        .and(body_string_contains(r#""machine_detection":"continue""#))
        .and(body_string_contains(r#""ringing_timer":45"#))
        .and(body_string_contains(r#""length_timer":300"#))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "status": "started",
            "direction": "outbound", "conversation_uuid": "CON-1"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let placed = client(&Adapter::Vonage, &server.uri()).place_call(&request()).await.unwrap();
    assert_eq!(placed.provider_call_id, "63f61863-4a51-4f6b-86e1-46edebcf9356");
}

#[tokio::test]
async fn twilio_places_a_call_with_basic_auth_and_a_form() {
    let server = MockServer::start().await;
    // Basic base64("AC…:token")
    let basic = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:token")))
    };
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{SID}/Calls.json")))
        .and(header("authorization", basic.as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("To=%2B14155552671"))
        .and(body_string_contains("From=%2B14155550100"))
        .and(body_string_contains(
            "Url=https%3A%2F%2Fhooks.example.com%2Ftwilio%2Ftwiml%3Fcall_id%3D00000000-0000-0000-0000-00000000002a",
        ))
        .and(body_string_contains("StatusCallback=https%3A%2F%2Fhooks.example.com%2Ftwilio%2Fstatus%3Fcall_id%3D"))
        .and(body_string_contains(
            "StatusCallbackEvent=initiated&StatusCallbackEvent=ringing&StatusCallbackEvent=answered&StatusCallbackEvent=completed",
        ))
        .and(body_string_contains("MachineDetection=Enable"))
        .and(body_string_contains("Timeout=45"))
        .and(body_string_contains("TimeLimit=300"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "sid": "CA0123456789abcdef0123456789abcdef", "status": "queued", "queue_time": "0"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let placed = client(&Adapter::Twilio, &server.uri()).place_call(&request()).await.unwrap();
    assert_eq!(placed.provider_call_id, "CA0123456789abcdef0123456789abcdef");
}

#[tokio::test]
async fn telnyx_dials_with_bearer_key_client_state_and_a_stable_command_id() {
    let server = MockServer::start().await;
    let call_id = request().call_id;
    Mock::given(method("POST"))
        .and(path("/v2/calls"))
        .and(header("authorization", "Bearer KEY123"))
        .and(body_string_contains(r#""connection_id":"conn-1""#))
        .and(body_string_contains(r#""to":"+14155552671""#))
        .and(body_string_contains(format!(r#""client_state":"{}""#, telnyx::client_state(call_id))))
        .and(body_string_contains(format!(r#""command_id":"{}""#, telnyx::dial_command_id(call_id, 1))))
        .and(body_string_contains(
            r#""webhook_url":"https://hooks.example.com/telnyx/events?call_id=00000000-0000-0000-0000-00000000002a"#,
        ))
        .and(body_string_contains(r#""answering_machine_detection":"detect""#))
        // Not Telnyx's 4-hour default: a call whose hang-up never comes ends.
        .and(body_string_contains(r#""time_limit_secs":300"#))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": {"call_control_id": "v3:abc", "call_leg_id": "l", "call_session_id": "s",
                     "is_alive": false, "record_type": "call"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let telnyx = client(&Adapter::Telnyx, &server.uri());
    assert_eq!(telnyx.place_call(&request()).await.unwrap().provider_call_id, "v3:abc");
    assert_eq!(telnyx.idempotency_window(), Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn rate_limits_are_decisions_with_the_providers_wait() {
    let vonage = place_with(
        &Adapter::Vonage,
        ResponseTemplate::new(429).set_body_json(serde_json::json!({
            "type": "https://developer.nexmo.com/api-errors#throttled", "title": "Rate Limit Hit",
            "detail": "Please wait, then retry your request"
        })),
    )
    .await;
    assert_eq!(vonage, Err(PlaceCallError::RateLimited { retry_after: None }));

    let twilio = place_with(
        &Adapter::Twilio,
        ResponseTemplate::new(429).insert_header("Retry-After", "2").set_body_json(serde_json::json!({
            "code": 20429, "message": "Too Many Requests", "status": 429
        })),
    )
    .await;
    assert_eq!(twilio, Err(PlaceCallError::RateLimited { retry_after: Some(Duration::from_secs(2)) }));

    let telnyx = place_with(
        &Adapter::Telnyx,
        ResponseTemplate::new(429)
            .insert_header("x-ratelimit-limit", "150")
            .insert_header("x-ratelimit-remaining", "0")
            .insert_header("x-ratelimit-reset", "3")
            .set_body_json(serde_json::json!({"errors": [{"code": "90103", "title": "Too many requests"}]})),
    )
    .await;
    assert_eq!(telnyx, Err(PlaceCallError::RateLimited { retry_after: Some(Duration::from_secs(3)) }));
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_transient() {
    for adapter in &ALL {
        let result = place_with(adapter, ResponseTemplate::new(503).set_body_string("busy")).await;
        assert!(matches!(result, Err(PlaceCallError::Transient(_))), "{result:?}");
        // Nothing listens on port 9 of loopback: the request never left.
        let result = client(adapter, "http://127.0.0.1:9").place_call(&request()).await;
        assert!(matches!(result, Err(PlaceCallError::Transient(_))), "{result:?}");
    }
}

#[tokio::test]
async fn client_errors_are_permanent_with_the_providers_code_and_detail() {
    let vonage = place_with(
        &Adapter::Vonage,
        ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "type": "https://developer.nexmo.com/api-errors#unauthorized", "title": "Unauthorized",
            "detail": "You did not provide correct credentials.", "instance": "x"
        })),
    )
    .await;
    assert_eq!(
        vonage,
        Err(PlaceCallError::Permanent {
            status: 401,
            code: "unauthorized".into(),
            detail: "You did not provide correct credentials.".into()
        })
    );
    let twilio = place_with(
        &Adapter::Twilio,
        ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401
        })),
    )
    .await;
    assert_eq!(
        twilio,
        Err(PlaceCallError::Permanent { status: 401, code: "20003".into(), detail: "Authenticate".into() })
    );
    let telnyx = place_with(
        &Adapter::Telnyx,
        ResponseTemplate::new(422).set_body_json(serde_json::json!({"errors": [{
            "code": "10015", "title": "Invalid connection", "detail": "connection_id is not valid",
            "source": {"pointer": "/connection_id"}
        }]})),
    )
    .await;
    assert_eq!(
        telnyx,
        Err(PlaceCallError::Permanent {
            status: 422,
            code: "10015".into(),
            detail: "connection_id is not valid".into()
        })
    );
}

#[tokio::test]
async fn no_answer_after_sending_is_ambiguous() {
    for adapter in &ALL {
        let slow = ResponseTemplate::new(201).set_delay(Duration::from_secs(3));
        let result = place_with(adapter, slow).await;
        assert!(matches!(result, Err(PlaceCallError::Ambiguous(_))), "{result:?}");
        // A 2xx we cannot read: the call may well exist.
        let garbled = ResponseTemplate::new(200).set_body_string("<html>");
        let result = place_with(adapter, garbled).await;
        assert!(matches!(result, Err(PlaceCallError::Ambiguous(_))), "{result:?}");
    }
}

#[tokio::test]
async fn twilio_lists_calls_to_a_number_across_pages() {
    let server = MockServer::start().await;
    let list_path = format!("/2010-04-01/Accounts/{SID}/Calls.json");
    Mock::given(method("GET"))
        .and(path(list_path.as_str()))
        .and(query_param("To", "+14155552671"))
        // A date, as the spec's parameter description says (YYYY-MM-DD, UTC).
        .and(query_param("StartTime>", "2026-01-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "calls": [{"sid": "CA1", "status": "completed", "to": "+14155552671",
                       "date_created": "Thu, 01 Jan 2026 00:00:05 +0000"}],
            "next_page_uri": format!("{list_path}?Page=1&PageToken=PA1"), "page": 0
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(list_path.as_str()))
        .and(query_param("PageToken", "PA1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "calls": [{"sid": "CA2", "status": "busy", "to": "+14155552671",
                       "date_created": "Thu, 01 Jan 2026 09:00:00 +0000"}], "next_page_uri": null
        })))
        .mount(&server)
        .await;
    let claimed = "2026-01-01T00:00:10Z".parse().unwrap();
    let window = CallWindow::of_attempt(claimed, std::time::Duration::from_secs(20));
    let calls = client(&Adapter::Twilio, &server.uri()).list_calls(&request().to, window).await.unwrap();
    let sids: Vec<&str> = calls.iter().map(|c| c.provider_call_id.as_str()).collect();
    assert_eq!(sids, ["CA1", "CA2"], "the whole day is listed");
    // Only the call created while this attempt could send fits it: CA2,
    // nine hours later, is another attempt's call to the same number.
    let fit: Vec<&str> =
        calls.iter().filter(|c| window.admits(c)).map(|c| c.provider_call_id.as_str()).collect();
    assert_eq!(fit, ["CA1"]);
}

#[tokio::test]
async fn vonage_lists_calls_by_paging_and_filters_by_number() {
    let server = MockServer::start().await;
    let call = |uuid: &str, number: &str| serde_json::json!({"uuid": uuid, "status": "completed", "to": {"type": "phone", "number": number}});
    Mock::given(method("GET"))
        .and(path("/v1/calls"))
        .and(query_param("record_index", "0"))
        .and(query_param("date_start", "2026-01-01T00:00:00Z"))
        .and(query_param("date_end", "2026-01-01T00:00:40Z"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "count": 3, "page_size": 2, "record_index": 0,
            "_embedded": {"calls": [call("u1", "14155552671"), call("u2", "14155550000")]}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/calls"))
        .and(query_param("record_index", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "count": 3, "page_size": 2, "record_index": 2,
            "_embedded": {"calls": [call("u3", "14155552671")]}
        })))
        .mount(&server)
        .await;
    let claimed = "2026-01-01T00:00:10Z".parse().unwrap();
    let window = CallWindow::of_attempt(claimed, std::time::Duration::from_secs(20));
    let calls = client(&Adapter::Vonage, &server.uri()).list_calls(&request().to, window).await.unwrap();
    let ids: Vec<&str> = calls.iter().map(|c| c.provider_call_id.as_str()).collect();
    assert_eq!(ids, ["u1", "u3"]);
}

#[tokio::test]
async fn telnyx_cannot_list_calls_and_says_so() {
    let window = CallWindow::of_attempt("2026-01-01T00:00:00Z".parse().unwrap(), std::time::Duration::ZERO);
    let result = client(&Adapter::Telnyx, "http://127.0.0.1:9").list_calls(&request().to, window).await;
    assert!(result.unwrap_err().0.contains("command_id"));
}

#[tokio::test]
async fn telnyx_commands_classify_transient_and_refused() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/calls/v3:ok/actions/speak"))
        .and(header("authorization", "Bearer KEY123"))
        .and(body_string_contains(r#""payload":"hello""#))
        // Repeats by Telnyx's `loop`, never by repeating the text.
        .and(body_string_contains(r#""loop":3"#))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": {"result": "ok"}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/calls/v3:gone/actions/hangup"))
        .respond_with(ResponseTemplate::new(422).set_body_json(serde_json::json!({"errors": [{
            "code": "90018", "title": "Call has already ended"
        }]})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/calls/v3:flaky/actions/hangup"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let client = telnyx::Client::new(
        http(),
        &TelnyxCredentials {
            api_url: server.uri(),
            api_key: SecretString::from("KEY123"),
            connection_id: "conn-1".into(),
        },
    );
    let speak = telnyx::Speak {
        payload: "hello".into(),
        voice: "female".into(),
        language: "en-US".into(),
        repeat: 3,
        command_id: telnyx::call_command_id("v3:ok", "speak"),
        client_state: None,
    };
    assert_eq!(client.speak("v3:ok", &speak).await, Ok(()));
    assert_eq!(
        client.hangup("v3:gone", "c1").await,
        Err(telnyx::CommandError::Refused {
            status: 422,
            code: "90018".into(),
            detail: "Call has already ended".into()
        })
    );
    assert!(matches!(client.hangup("v3:flaky", "c2").await, Err(telnyx::CommandError::Transient(_))));
}

/// Mounts `GET {path}` answering `response` on a fresh server and asks the
/// adapter for that call's status.
async fn status_with(
    adapter: &Adapter,
    call_path: &str,
    id: &str,
    response: ResponseTemplate,
) -> Result<RemoteStatus, String> {
    let server = MockServer::start().await;
    Mock::given(method("GET")).and(path(call_path)).respond_with(response).expect(1).mount(&server).await;
    client(adapter, &server.uri()).call_status(id).await.map_err(|e| e.to_string())
}

fn ended(state: Option<CallState>, detail: Option<&str>, duration_secs: Option<i32>) -> RemoteStatus {
    RemoteStatus::Ended { state, detail: detail.map(str::to_owned), duration_secs }
}

#[tokio::test]
async fn vonage_call_status_reads_the_calls_status_with_the_events_table() {
    let uuid = "63f61863-4a51-4f6b-86e1-46edebcf9356";
    let at = format!("/v1/calls/{uuid}");
    let answer = |body: serde_json::Value| ResponseTemplate::new(200).set_body_json(body);
    let call = |status: &str| serde_json::json!({"uuid": uuid, "status": status, "direction": "outbound"});
    let completed = serde_json::json!({"uuid": uuid, "status": "completed", "duration": "12",
        "price": "0.00450000", "start_time": "2020-01-01 12:00:00", "end_time": "2020-01-01 12:00:12"});
    let status = |response| status_with(&Adapter::Vonage, &at, uuid, response);
    assert_eq!(
        status(answer(completed)).await,
        Ok(ended(Some(CallState::Completed), Some("completed"), Some(12)))
    );
    // Several words, one state: the word is kept as the detail.
    assert_eq!(
        status(answer(call("timeout"))).await,
        Ok(ended(Some(CallState::NoAnswer), Some("timeout"), None))
    );
    assert_eq!(
        status(answer(call("rejected"))).await,
        Ok(ended(Some(CallState::Rejected), Some("rejected"), None))
    );
    for live in ["started", "ringing", "answered", "machine"] {
        assert_eq!(status(answer(call(live))).await, Ok(RemoteStatus::Live), "{live}");
    }
    let unknown = status(answer(call("teleported"))).await.unwrap_err();
    assert!(unknown.contains("teleported"), "{unknown}");
    let not_found = ResponseTemplate::new(404).set_body_json(serde_json::json!({
        "type": "https://developer.nexmo.com/api-errors#not-found", "title": "Not Found"
    }));
    assert_eq!(status(not_found).await, Ok(RemoteStatus::Gone));
    // Not a Vonage uuid: names no call, and is never sent.
    let no_server = client(&Adapter::Vonage, "http://127.0.0.1:9").call_status("../applications").await;
    assert_eq!(no_server.unwrap(), RemoteStatus::Gone);
}

#[tokio::test]
async fn twilio_call_status_reads_the_call_resource() {
    let sid = "CA0123456789abcdef0123456789abcdef";
    let at = format!("/2010-04-01/Accounts/{SID}/Calls/{sid}.json");
    let answer = |status: &str, duration: Option<&str>| {
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "sid": sid, "account_sid": SID, "status": status, "duration": duration,
            "direction": "outbound-api", "answered_by": null
        }))
    };
    let status = |response| status_with(&Adapter::Twilio, &at, sid, response);
    assert_eq!(
        status(answer("completed", Some("30"))).await,
        Ok(ended(Some(CallState::Completed), Some("completed"), Some(30)))
    );
    for (word, state) in [
        ("busy", CallState::Busy),
        ("no-answer", CallState::NoAnswer),
        ("failed", CallState::Failed),
        ("canceled", CallState::Cancelled),
    ] {
        assert_eq!(status(answer(word, None)).await, Ok(ended(Some(state), Some(word), None)), "{word}");
    }
    for live in ["queued", "ringing", "in-progress"] {
        assert_eq!(status(answer(live, None)).await, Ok(RemoteStatus::Live), "{live}");
    }
    let not_found = ResponseTemplate::new(404).set_body_json(serde_json::json!({
        "code": 20404, "message": "The requested resource was not found", "status": 404
    }));
    assert_eq!(status(not_found).await, Ok(RemoteStatus::Gone));
    let refused = ResponseTemplate::new(401).set_body_json(serde_json::json!({
        "code": 20003, "message": "Authenticate", "status": 401
    }));
    let error = status(refused).await.unwrap_err();
    assert!(error.contains("20003") && error.contains(sid), "{error}");
}

#[tokio::test]
async fn telnyx_call_status_is_alive_or_ended_without_a_state() {
    let id = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg";
    let at = format!("/v2/calls/{id}");
    let answer = |data: serde_json::Value| {
        ResponseTemplate::new(200).set_body_json(serde_json::json!({ "data": data }))
    };
    let ids = |alive: bool| {
        serde_json::json!({"call_control_id": id, "call_leg_id": "l", "call_session_id": "s",
        "is_alive": alive, "record_type": "call", "start_time": "2019-01-23T18:10:02.574Z"})
    };
    let status = |response| status_with(&Adapter::Telnyx, &at, id, response);
    let mut over = ids(false);
    over["end_time"] = "2019-01-23T18:11:52.574Z".into();
    over["call_duration"] = 50.into();
    // Telnyx does not say how the call ended: that is its `call.hangup`'s to tell.
    assert_eq!(status(answer(over)).await, Ok(ended(None, None, Some(50))));
    assert_eq!(status(answer(ids(true))).await, Ok(RemoteStatus::Live));
    // Not alive, no end: still dialing (the dial's own answer is not alive either).
    assert_eq!(status(answer(ids(false))).await, Ok(RemoteStatus::Live));
    // Kept 10 minutes after the end; then a 404, or the documented
    // 90015 "Invalid Call Control ID", for an id Telnyx itself gave.
    assert_eq!(status(ResponseTemplate::new(404)).await, Ok(RemoteStatus::Gone));
    let invalid = ResponseTemplate::new(422).set_body_json(serde_json::json!({"errors": [{
        "code": "90015", "title": "Invalid Call Control ID",
        "detail": "The call_control_id provided was not valid.", "source": {"pointer": "/call_control_id"}
    }]}));
    assert_eq!(status(invalid).await, Ok(RemoteStatus::Gone));
    let other = ResponseTemplate::new(422).set_body_json(serde_json::json!({"errors": [{
        "code": "10004", "title": "Missing required parameter"
    }]}));
    assert!(status(other).await.unwrap_err().contains("10004"));
    // The id is one path segment, whatever it holds.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/calls/v3:a%2F..%2Factions"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let odd = client(&Adapter::Telnyx, &server.uri()).call_status("v3:a/../actions").await;
    assert_eq!(odd.unwrap(), RemoteStatus::Gone);
}

#[tokio::test]
async fn call_status_failures_are_errors_never_gone() {
    let paths = [
        (
            Adapter::Vonage,
            "/v1/calls/63f61863-4a51-4f6b-86e1-46edebcf9356",
            "63f61863-4a51-4f6b-86e1-46edebcf9356",
        ),
        (
            Adapter::Twilio,
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Calls/CA0123456789abcdef0123456789abcdef.json",
            "CA0123456789abcdef0123456789abcdef",
        ),
        (Adapter::Telnyx, "/v2/calls/v3:abc", "v3:abc"),
    ];
    for (adapter, call_path, id) in &paths {
        for response in [
            ResponseTemplate::new(503).set_body_string("busy"),
            ResponseTemplate::new(429).insert_header("Retry-After", "1"),
            ResponseTemplate::new(200).set_body_string("<html>"),
            ResponseTemplate::new(200).set_delay(Duration::from_secs(3)),
        ] {
            let result = status_with(adapter, call_path, id, response).await;
            assert!(result.is_err(), "{call_path}: {result:?}");
        }
        let unreachable = client(adapter, "http://127.0.0.1:9").call_status(id).await;
        assert!(unreachable.is_err(), "{call_path}: {unreachable:?}");
    }
}
