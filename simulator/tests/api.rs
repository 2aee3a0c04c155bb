//! The simulator's APIs through Tocsin's own adapters and raw HTTP: each
//! provider's rate semantics, auth errors, validation errors, listing,
//! one call's status through its life, and Telnyx's `command_id`
//! idempotency; and every event it sends verifies
//! with the provider's scheme (checked by a receiver using `tocsin-core`'s
//! verifiers). `fidelity`: the adapters' requests and the simulator's
//! answers and events against the providers' own specs and documented
//! payloads. `accounts`: several accounts per provider, each with its own
//! credentials, keys, limits, outage flag and figures.

#[path = "api/accounts.rs"]
mod accounts;
#[path = "api/fidelity.rs"]
mod fidelity;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use clap::Parser;
use secrecy::SecretString;
use tocsin_core::campaign::Content;
use tocsin_core::config::{TelnyxCredentials, TwilioCredentials, VonageCredentials};
use tocsin_core::provider::{CallRequest, PlaceCallError, RemoteStatus, VoiceProvider};
use tocsin_core::{CallId, CallState, PhoneNumber, telnyx, twilio, vonage};
use tokio_util::sync::CancellationToken;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "tok";
const SECRET: &str = "vonage-secret";

#[derive(Default)]
struct Received {
    ok: AtomicU64,
    bad: AtomicU64,
}

struct Receiver {
    counts: Received,
    /// Every request received: path and query, and body.
    requests: std::sync::Mutex<Vec<(String, Bytes)>>,
    base: String,
    telnyx_key: telnyx::PublicKey,
}

/// Accepts every event (and answers the answer URLs), counting signatures that verify.
async fn receive(
    State(r): State<Arc<Receiver>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let path = uri.path();
    let verified = if path.starts_with("/vonage/answer") {
        true
    } else if path.starts_with("/vonage") {
        vonage::verify_webhook(h("authorization"), &SecretString::from(SECRET), &body).is_ok()
    } else if path.starts_with("/twilio") {
        let url = format!("{}{}", r.base, uri.path_and_query().map_or(path, |p| p.as_str()));
        let params = twilio::parse_form(&body).unwrap_or_default();
        twilio::verify_signature(h("x-twilio-signature"), &SecretString::from(TOKEN), &url, &params).is_ok()
    } else {
        telnyx::verify_webhook(h("telnyx-signature-ed25519"), h("telnyx-timestamp"), &r.telnyx_key, &body)
            .is_ok()
    };
    let counter = if verified { &r.counts.ok } else { &r.counts.bad };
    counter.fetch_add(1, Ordering::Relaxed);
    let target = uri.path_and_query().map_or(path, |p| p.as_str()).to_owned();
    r.requests.lock().unwrap().push((target, body.clone()));
    if path.starts_with("/vonage/answer") {
        let ncco = vonage::ncco(&Content::Text("hello".into()), "en-US", 0, 1).to_string();
        return (StatusCode::OK, [("content-type", "application/json")], ncco);
    }
    if path.starts_with("/twilio/twiml") {
        return (
            StatusCode::OK,
            [("content-type", "application/xml")],
            twilio::twiml(&Content::Text("hello".into()), "en-US", 1, None),
        );
    }
    (StatusCode::NO_CONTENT, [("content-type", "text/plain")], String::new())
}

struct Setup {
    sim: String,
    receiver: Arc<Receiver>,
    stop: CancellationToken,
    dir: std::path::PathBuf,
}

async fn setup(extra: &[&str]) -> Setup {
    tocsin_core::telemetry::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("sim-api-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = simulator::keygen::generate().unwrap();
    std::fs::write(dir.join("private.pem"), &keys.private_pem).unwrap();
    std::fs::write(dir.join("public.pem"), &keys.public_pem).unwrap();
    std::fs::write(dir.join("other.pem"), simulator::keygen::generate().unwrap().private_pem).unwrap();
    simulator::keygen::write_telnyx_keys(&dir).unwrap();
    let public = std::fs::read_to_string(dir.join("telnyx_public_key")).unwrap();
    let stop = CancellationToken::new();

    let (listener, addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let receiver = Arc::new(Receiver {
        counts: Received::default(),
        requests: std::sync::Mutex::default(),
        base: format!("http://{addr}"),
        telnyx_key: telnyx::PublicKey::from_base64(&public).unwrap(),
    });
    let app = axum::Router::new().fallback(any(receive)).with_state(receiver.clone());
    tokio::spawn(tocsin_core::http::serve(listener, app, stop.clone().cancelled_owned()));

    let mut args: Vec<String> = [
        "simulator",
        "serve",
        "--vonage-public-key-path",
        dir.join("public.pem").to_str().unwrap(),
        "--vonage-signature-secret",
        SECRET,
        "--twilio-account-sid",
        SID,
        "--twilio-auth-token",
        TOKEN,
        "--telnyx-api-key",
        "KEY1",
        "--telnyx-connection-id",
        "conn",
        "--telnyx-signing-seed-path",
        dir.join("telnyx_seed").to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if !extra.contains(&"--time-scale") {
        args.extend(["--time-scale".to_owned(), "0.01".to_owned()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let simulator::config::Command::Serve(config) =
        simulator::config::Cli::try_parse_from(args).unwrap().command
    else {
        unreachable!()
    };
    let (sim_listener, sim_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    tokio::spawn(simulator::run(config, sim_listener, stop.clone()));
    Setup { sim: format!("http://{sim_addr}"), receiver, stop, dir }
}

fn request(setup: &Setup, n: u32) -> CallRequest {
    CallRequest {
        call_id: CallId(uuid::Uuid::from_u128(u128::from(n))),
        attempt: 1,
        to: PhoneNumber::from_e164(&format!("+1415555{:04}", 1000 + n)).unwrap(),
        from: PhoneNumber::from_e164("+14155550100").unwrap(),
        webhook_base: setup.receiver.base.clone(),
        url_token: "tok3n".into(),
        ringing_timeout_secs: 30,
        machine_detection: tocsin_core::provider::MachineDetection::Off,
        time_limit_secs: 300,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

fn vonage_client(setup: &Setup, key: &str) -> vonage::Client {
    let pem = std::fs::read_to_string(setup.dir.join(key)).unwrap();
    let credentials = VonageCredentials {
        api_url: setup.sim.clone(),
        application_id: "app".into(),
        private_key_pem: SecretString::from(pem),
    };
    vonage::Client::new(http(), &credentials).unwrap()
}

fn twilio_client(setup: &Setup, token: &str) -> twilio::Client {
    let credentials = TwilioCredentials {
        api_url: setup.sim.clone(),
        account_sid: SID.into(),
        auth_token: SecretString::from(token.to_owned()),
    };
    twilio::Client::new(http(), &credentials)
}

fn telnyx_client(setup: &Setup, key: &str) -> telnyx::Client {
    let credentials = TelnyxCredentials {
        api_url: setup.sim.clone(),
        api_key: SecretString::from(key.to_owned()),
        connection_id: "conn".into(),
    };
    telnyx::Client::new(http(), &credentials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_limits_the_rate_its_own_way() {
    let setup = setup(&["--vonage-rate", "1", "--twilio-cps", "1", "--telnyx-dials-per-window", "2"]).await;

    // Vonage: one per second; the second at once is refused with 429.
    let vonage = vonage_client(&setup, "private.pem");
    assert!(vonage.place_call(&request(&setup, 1)).await.is_ok());
    assert_eq!(
        vonage.place_call(&request(&setup, 2)).await,
        Err(PlaceCallError::RateLimited { retry_after: None })
    );

    // Twilio: all accepted, the excess queued one second apart.
    let url = format!("{}/2010-04-01/Accounts/{SID}/Calls.json", setup.sim);
    // Each call's start = when it was accepted + its queue time; the starts
    // must be one second apart whatever the requests' own latency.
    let first = std::time::Instant::now();
    let mut starts_ms = Vec::new();
    for n in 0..3 {
        let to = format!("+1415555{:04}", 2000 + n);
        let form = [("To", to.as_str()), ("From", "+14155550100"), ("Url", "http://127.0.0.1:9/twiml")];
        let r = http().post(&url).basic_auth(SID, Some(TOKEN)).form(&form).send().await.unwrap();
        let answered_ms = first.elapsed().as_millis() as i64;
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["status"], "queued");
        let queue_ms = body["queue_time"].as_str().unwrap().parse::<i64>().unwrap();
        starts_ms.push(answered_ms + queue_ms);
    }
    let gaps: Vec<i64> = starts_ms.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| (850..1150).contains(g)), "starts {starts_ms:?}, gaps {gaps:?}");

    // Telnyx: two per window, then 429 code 90103 with the reset header honoured.
    let telnyx = telnyx_client(&setup, "KEY1");
    assert!(telnyx.place_call(&request(&setup, 3)).await.is_ok());
    assert!(telnyx.place_call(&request(&setup, 4)).await.is_ok());
    match telnyx.place_call(&request(&setup, 5)).await {
        Err(PlaceCallError::RateLimited { retry_after: Some(wait) }) => {
            assert!(wait > Duration::ZERO && wait <= Duration::from_secs(5), "{wait:?}");
        }
        other => panic!("expected a 429 with a reset: {other:?}"),
    }
    let raw = http()
        .post(format!("{}/v2/calls", setup.sim))
        .bearer_auth("KEY1")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert_eq!(raw.headers()["x-ratelimit-limit"], "2");
    assert_eq!(raw.headers()["x-ratelimit-remaining"], "0");
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "90103");
    setup.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_bad_requests_get_each_providers_errors() {
    let setup = setup(&["--vonage-rate", "100", "--twilio-cps", "100"]).await;
    let refused = |r: Result<_, PlaceCallError>| match r {
        Err(PlaceCallError::Permanent { status, code, .. }) => (status, code),
        other => panic!("expected a permanent refusal: {other:?}"),
    };
    assert_eq!(
        refused(vonage_client(&setup, "other.pem").place_call(&request(&setup, 1)).await),
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(twilio_client(&setup, "wrong").place_call(&request(&setup, 2)).await),
        (401, "20003".into())
    );
    assert_eq!(
        refused(telnyx_client(&setup, "KEYwrong").place_call(&request(&setup, 3)).await),
        (401, "10009".into())
    );

    let telnyx = http()
        .post(format!("{}/v2/calls", setup.sim))
        .bearer_auth("KEY1")
        .json(&serde_json::json!({"connection_id": "conn", "to": "14155550101", "from": "+14155550100",
                                  "webhook_url": "http://127.0.0.1:9/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(telnyx.status(), 422);
    let body: serde_json::Value = telnyx.json().await.unwrap();
    assert_eq!(
        (body["errors"][0]["code"].as_str(), body["errors"][0]["source"]["pointer"].as_str()),
        (Some("10016"), Some("/to"))
    );
    let other_connection = http()
        .post(format!("{}/v2/calls", setup.sim))
        .bearer_auth("KEY1")
        .json(&serde_json::json!({"connection_id": "nope", "to": "+14155550101", "from": "+14155550100"}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = other_connection.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "10015");
    let twilio = http()
        .post(format!("{}/2010-04-01/Accounts/{SID}/Calls.json", setup.sim))
        .basic_auth(SID, Some(TOKEN))
        .form(&[("To", "555"), ("From", "+14155550100"), ("Url", "http://127.0.0.1:9/")])
        .send()
        .await
        .unwrap();
    assert_eq!(twilio.status(), 400);
    let body: serde_json::Value = twilio.json().await.unwrap();
    assert_eq!(body["code"], 21211);
    setup.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_listed_dials_are_idempotent_and_every_event_verifies() {
    let setup = setup(&["--vonage-rate", "100", "--twilio-cps", "100"]).await;
    let window = tocsin_core::provider::CallWindow::of_attempt(chrono::Utc::now(), Duration::from_secs(20));
    let vonage = vonage_client(&setup, "private.pem");
    let twilio = twilio_client(&setup, TOKEN);
    let telnyx = telnyx_client(&setup, "KEY1");
    let v = vonage.place_call(&request(&setup, 1)).await.unwrap();
    let t = twilio.place_call(&request(&setup, 2)).await.unwrap();
    let x = telnyx.place_call(&request(&setup, 3)).await.unwrap();
    // The same call and attempt again: Telnyx answers with the same call.
    assert_eq!(telnyx.place_call(&request(&setup, 3)).await.unwrap(), x);

    let listed = vonage.list_calls(&request(&setup, 1).to, window).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.provider_call_id.clone()).collect::<Vec<_>>(), [v.provider_call_id]);
    assert!(vonage.list_calls(&request(&setup, 9).to, window).await.unwrap().is_empty());
    let listed = twilio.list_calls(&request(&setup, 2).to, window).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.provider_call_id.clone()).collect::<Vec<_>>(), [t.provider_call_id]);

    // Let the calls run (time compressed a hundredfold; Telnyx waits for a speak command it never gets).
    let stats = loop {
        let stats: serde_json::Value =
            http().get(format!("{}/_sim/stats", setup.sim)).send().await.unwrap().json().await.unwrap();
        if stats["calls_ended"] == 2 {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats["calls"], 3, "{stats}");
    assert_eq!(stats["idempotent_replays"], 1, "{stats}");
    assert_eq!(setup.receiver.counts.bad.load(Ordering::Relaxed), 0, "every signature verifies");
    assert!(setup.receiver.counts.ok.load(Ordering::Relaxed) >= 8);
    let calls: Vec<serde_json::Value> =
        http().get(format!("{}/_sim/calls", setup.sim)).send().await.unwrap().json().await.unwrap();
    let spoken: Vec<&str> = calls.iter().filter_map(|c| c["spoken"].as_str()).collect();
    assert_eq!(spoken, ["hello", "hello"], "{calls:?}");
    setup.stop.cancel();
}

async fn calls_ended(setup: &Setup) -> u64 {
    let stats: serde_json::Value =
        http().get(format!("{}/_sim/stats", setup.sim)).send().await.unwrap().json().await.unwrap();
    stats["calls_ended"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_adapter_asks_the_status_of_one_call_through_its_life() {
    // Slow enough that a call just placed is still in progress when asked.
    let setup = setup(&["--vonage-rate", "100", "--twilio-cps", "100", "--time-scale", "0.2"]).await;
    let vonage = vonage_client(&setup, "private.pem");
    let twilio = twilio_client(&setup, TOKEN);
    let telnyx = telnyx_client(&setup, "KEY1");
    let clients: [&dyn VoiceProvider; 3] = [&vonage, &twilio, &telnyx];
    // Per provider an answered call, a busy one (numbers ending in 7) and
    // an unanswered one (8), each asked about as soon as it is placed.
    let mut placed = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        for last in [1, 7, 8] {
            let n = 10 * (i as u32 + 1) + last;
            let id = client.place_call(&request(&setup, n)).await.unwrap().provider_call_id;
            assert_eq!(
                client.call_status(&id).await.unwrap(),
                RemoteStatus::Live,
                "{} {n}",
                client.provider()
            );
            placed.push((*client, last, id));
        }
    }
    // Every call ends but Telnyx's answered one, which waits for a speak command.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while calls_ended(&setup).await < 8 {
        assert!(std::time::Instant::now() < deadline, "the calls did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = |state, word: &str| RemoteStatus::Ended {
        state: Some(state),
        detail: Some(word.to_owned()),
        duration_secs: None,
    };
    for (client, last, id) in &placed {
        let status = client.call_status(id).await.unwrap();
        let expected = match (client.provider().as_str(), *last) {
            ("vonage", 1) | ("twilio", 1) => {
                let RemoteStatus::Ended { duration_secs, .. } = &status else { panic!("{status:?}") };
                assert!(duration_secs.is_some_and(|d| d > 0), "{status:?}");
                RemoteStatus::Ended {
                    state: Some(CallState::Completed),
                    detail: Some("completed".into()),
                    duration_secs: *duration_secs,
                }
            }
            ("vonage", 7) | ("twilio", 7) => ended(CallState::Busy, "busy"),
            ("vonage", _) => ended(CallState::NoAnswer, "timeout"),
            ("twilio", _) => ended(CallState::NoAnswer, "no-answer"),
            ("telnyx", 1) => RemoteStatus::Live,
            // Telnyx does not say how a call ended, only that it did.
            _ => RemoteStatus::Ended { state: None, detail: None, duration_secs: Some(0) },
        };
        assert_eq!(status, expected, "{} call {id} (number ending in {last})", client.provider());
    }

    // Calls the provider does not have.
    assert_eq!(vonage.call_status(&uuid::Uuid::new_v4().to_string()).await.unwrap(), RemoteStatus::Gone);
    assert_eq!(twilio.call_status(&format!("CA{}", "0".repeat(32))).await.unwrap(), RemoteStatus::Gone);
    assert_eq!(telnyx.call_status("v3:unknown").await.unwrap(), RemoteStatus::Gone);
    // Refused credentials are an error, never a call that is gone.
    let (_, _, vonage_id) = &placed[0];
    assert!(vonage_client(&setup, "other.pem").call_status(vonage_id).await.is_err());
    let (_, _, twilio_id) = &placed[3];
    assert!(twilio_client(&setup, "wrong").call_status(twilio_id).await.is_err());
    let (_, _, telnyx_id) = &placed[6];
    assert!(telnyx_client(&setup, "KEYwrong").call_status(telnyx_id).await.is_err());
    setup.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_tells_a_calls_status_for_ten_minutes_after_it_ends() {
    // Ten simulated minutes are 0.6 s here.
    let setup = setup(&["--time-scale", "0.001"]).await;
    let telnyx = telnyx_client(&setup, "KEY1");
    let id = telnyx.place_call(&request(&setup, 7)).await.unwrap().provider_call_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ended_seen = None;
    let gone_after = loop {
        assert!(std::time::Instant::now() < deadline, "the status was never forgotten");
        match telnyx.call_status(&id).await.unwrap() {
            RemoteStatus::Live => assert!(ended_seen.is_none(), "alive again after its end"),
            RemoteStatus::Ended { .. } => {
                ended_seen.get_or_insert_with(std::time::Instant::now);
            }
            RemoteStatus::Gone => {
                break ended_seen.expect("forgotten before it was seen ended").elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(gone_after >= Duration::from_millis(400), "forgotten {gone_after:?} after the end");
    setup.stop.cancel();
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    tocsin_core::testing::assert_help_hides_secrets(env!("CARGO_BIN_EXE_simulator"), &["serve", "--help"]);
}
