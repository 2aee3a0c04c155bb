//! Several accounts per provider: the `default` ones of the flags beside the
//! `b` ones of an accounts file. Each authenticates with its own
//! credentials and signs its calls' events with its own keys, has its own
//! rate limit, concurrent-call cap (answered past it as each provider
//! documents) and outage flag, and its own figures in `/_sim/stats`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;

const SID_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TOKEN_B: &str = "tok-b";
const SECRET_B: &str = "secret-b";
const KEY_B: &str = "KEYb";

/// Every request the simulator sent, with its headers, kept to check whose
/// keys signed it. Answers the answer URLs like the API tests' receiver.
struct Recorder {
    base: String,
    requests: std::sync::Mutex<Vec<(String, HeaderMap, Bytes)>>,
}

async fn record(
    State(r): State<Arc<Recorder>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str()).to_owned();
    r.requests.lock().unwrap().push((target, headers, body));
    if uri.path().ends_with("/vonage/answer") {
        let ncco = vonage::ncco(&Content::Text("hello".into()), "en-US", 0, 1).to_string();
        return (StatusCode::OK, [("content-type", "application/json")], ncco);
    }
    if uri.path().ends_with("/twilio/twiml") {
        let twiml = twilio::twiml(&Content::Text("hello".into()), "en-US", 1, None);
        return (StatusCode::OK, [("content-type", "application/xml")], twiml);
    }
    (StatusCode::OK, [("content-type", "text/plain")], String::new())
}

/// The simulator with its default accounts (the API tests' `setup`) and an
/// accounts file adding `vonage:b`, `twilio:b` and `telnyx:b`.
struct Multi {
    setup: Setup,
    recorder: Arc<Recorder>,
    /// Where account b's keys and the accounts file are.
    dir: PathBuf,
    telnyx_key_b: telnyx::PublicKey,
}

/// Writes account b's keys (under `keys/`, named relative to the file) and
/// the accounts file, each account's table ending in its `*_extra` lines.
fn write_accounts_file(dir: &Path, vonage_extra: &str, twilio_extra: &str, telnyx_extra: &str) -> PathBuf {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let pair = simulator::keygen::generate().unwrap();
    std::fs::write(keys.join("vonage_b_private.pem"), &pair.private_pem).unwrap();
    std::fs::write(keys.join("vonage_b_public.pem"), &pair.public_pem).unwrap();
    simulator::keygen::write_telnyx_keys(&keys).unwrap();
    let file = dir.join("accounts.toml");
    let text = format!(
        r#"
[vonage.b]
application_id = "app-b"
public_key_path = "keys/vonage_b_public.pem"
signature_secret = "{SECRET_B}"
{vonage_extra}

[twilio.b]
account_sid = "{SID_B}"
auth_token = "{TOKEN_B}"
{twilio_extra}

[telnyx.b]
api_key = "{KEY_B}"
connection_id = "conn-b"
signing_seed_path = "keys/telnyx_seed"
{telnyx_extra}
"#
    );
    std::fs::write(&file, text).unwrap();
    file
}

async fn start(extra: &[&str], vonage_b: &str, twilio_b: &str, telnyx_b: &str) -> Multi {
    let dir = std::env::temp_dir().join(format!("sim-accounts-{}", uuid::Uuid::new_v4().simple()));
    let file = write_accounts_file(&dir, vonage_b, twilio_b, telnyx_b);
    let mut args = extra.to_vec();
    args.extend(["--accounts-file", file.to_str().unwrap()]);
    let setup = setup(&args).await;
    let (listener, addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let recorder = Arc::new(Recorder { base: format!("http://{addr}"), requests: Default::default() });
    let app = axum::Router::new().fallback(any(record)).with_state(recorder.clone());
    tokio::spawn(tocsin_core::http::serve(listener, app, setup.stop.clone().cancelled_owned()));
    let public = std::fs::read_to_string(dir.join("keys/telnyx_public_key")).unwrap();
    Multi { setup, recorder, telnyx_key_b: telnyx::PublicKey::from_base64(&public).unwrap(), dir }
}

/// A call to a number ending in `n` (1: answers), its events sent under
/// `/{account}/` of the recorder.
fn call_of(m: &Multi, account: &str, n: u32) -> CallRequest {
    let mut r = request(&m.setup, n);
    r.webhook_base = format!("{}/{account}", m.recorder.base);
    r
}

fn vonage_as(m: &Multi, application_id: &str, private_pem: &str) -> vonage::Client {
    let credentials = VonageCredentials {
        api_url: m.setup.sim.clone(),
        application_id: application_id.into(),
        private_key_pem: SecretString::from(private_pem.to_owned()),
    };
    vonage::Client::new(http(), &credentials).unwrap()
}

fn default_private(m: &Multi) -> String {
    std::fs::read_to_string(m.setup.dir.join("private.pem")).unwrap()
}

fn b_private(m: &Multi) -> String {
    std::fs::read_to_string(m.dir.join("keys/vonage_b_private.pem")).unwrap()
}

fn twilio_as(m: &Multi, sid: &str, token: &str) -> twilio::Client {
    let credentials = TwilioCredentials {
        api_url: m.setup.sim.clone(),
        account_sid: sid.into(),
        auth_token: SecretString::from(token.to_owned()),
    };
    twilio::Client::new(http(), &credentials)
}

fn telnyx_as(m: &Multi, key: &str, connection_id: &str) -> telnyx::Client {
    let credentials = TelnyxCredentials {
        api_url: m.setup.sim.clone(),
        api_key: SecretString::from(key.to_owned()),
        connection_id: connection_id.into(),
    };
    telnyx::Client::new(http(), &credentials)
}

/// A raw Twilio create-call request, its callbacks under `/{account}/` of the recorder.
async fn twilio_raw(m: &Multi, account: &str, sid: &str, token: &str, to: &str) -> reqwest::Response {
    let base = format!("{}/{account}", m.recorder.base);
    let (twiml, status) = (format!("{base}/twilio/twiml"), format!("{base}/twilio/status"));
    let mut form = vec![("To", to), ("From", "+14155550100"), ("Url", twiml.as_str())];
    form.push(("StatusCallback", status.as_str()));
    for event in ["initiated", "ringing", "answered", "completed"] {
        form.push(("StatusCallbackEvent", event));
    }
    http()
        .post(format!("{}/2010-04-01/Accounts/{sid}/Calls.json", m.setup.sim))
        .basic_auth(sid, Some(token))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn stats_of(m: &Multi) -> Value {
    http().get(format!("{}/_sim/stats", m.setup.sim)).send().await.unwrap().json().await.unwrap()
}

async fn sim_calls(m: &Multi) -> Vec<Value> {
    http().get(format!("{}/_sim/calls", m.setup.sim)).send().await.unwrap().json().await.unwrap()
}

/// Waits until the call `id` has ended.
async fn ended(m: &Multi, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let calls = sim_calls(m).await;
        if let Some(call) = calls.iter().find(|c| c["provider_call_id"] == id && c["ended"] == true) {
            return call.clone();
        }
        assert!(std::time::Instant::now() < deadline, "call {id} did not end: {calls:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused(r: Result<tocsin_core::provider::PlacedCall, PlaceCallError>) -> (u16, String) {
    match r {
        Err(PlaceCallError::Permanent { status, code, .. }) => (status, code),
        other => panic!("expected a permanent refusal: {other:?}"),
    }
}

/// The form parameters of the status callbacks sent for the Twilio call `sid`.
fn twilio_callbacks(m: &Multi, sid: &str) -> Vec<Vec<(String, String)>> {
    let requests = m.recorder.requests.lock().unwrap();
    requests
        .iter()
        .filter(|(target, _, _)| target.contains("/twilio/status"))
        .map(|(_, _, body)| twilio::parse_form(body).unwrap())
        .filter(|form| form.iter().any(|(k, v)| k == "CallSid" && v == sid))
        .collect()
}

/// The Telnyx events sent for the call `id`.
fn telnyx_events(m: &Multi, id: &str) -> Vec<Value> {
    let requests = m.recorder.requests.lock().unwrap();
    requests
        .iter()
        .filter(|(target, _, _)| target.contains("/telnyx/events"))
        .map(|(_, _, body)| serde_json::from_slice::<Value>(body).unwrap())
        .filter(|e| e["data"]["payload"]["call_control_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_of_a_provider_authenticate_and_sign_separately_and_cross_credentials_get_401() {
    let m =
        start(&["--vonage-rate", "100", "--twilio-cps", "100", "--telnyx-command-wait", "300ms"], "", "", "")
            .await;
    let default_vonage = vonage_as(&m, "app", &default_private(&m));
    let b_vonage = vonage_as(&m, "app-b", &b_private(&m));
    let mut placed = Vec::new();
    placed.push((default_vonage.place_call(&call_of(&m, "default", 1)).await.unwrap(), "vonage:default"));
    placed.push((b_vonage.place_call(&call_of(&m, "b", 2)).await.unwrap(), "vonage:b"));
    let t = twilio_as(&m, SID, TOKEN).place_call(&call_of(&m, "default", 3)).await.unwrap();
    placed.push((t, "twilio:default"));
    placed.push((twilio_as(&m, SID_B, TOKEN_B).place_call(&call_of(&m, "b", 4)).await.unwrap(), "twilio:b"));
    let t = telnyx_as(&m, "KEY1", "conn").place_call(&call_of(&m, "default", 5)).await.unwrap();
    placed.push((t, "telnyx:default"));
    placed.push((telnyx_as(&m, KEY_B, "conn-b").place_call(&call_of(&m, "b", 6)).await.unwrap(), "telnyx:b"));

    // One account's name with the other's key: Vonage's documented 401 problem.
    let cross = vonage_as(&m, "app-b", &default_private(&m)).place_call(&call_of(&m, "b", 7)).await;
    assert_eq!(refused(cross), (401, "unauthorized".into()));
    let cross = vonage_as(&m, "app", &b_private(&m)).place_call(&call_of(&m, "default", 7)).await;
    assert_eq!(refused(cross), (401, "unauthorized".into()));
    // Twilio: a SID with the other account's token, and a SID of no account (20003).
    let cross = twilio_as(&m, SID_B, TOKEN).place_call(&call_of(&m, "b", 8)).await;
    assert_eq!(refused(cross), (401, "20003".into()));
    let cross = twilio_as(&m, SID, TOKEN_B).place_call(&call_of(&m, "default", 8)).await;
    assert_eq!(refused(cross), (401, "20003".into()));
    let unknown =
        twilio_as(&m, &format!("AC{}", "c".repeat(32)), TOKEN_B).place_call(&call_of(&m, "b", 8)).await;
    assert_eq!(refused(unknown), (401, "20003".into()));
    // Telnyx: a key of no account (10009); b's key dialling the default's connection (10015).
    let unknown = telnyx_as(&m, "KEYnone", "conn-b").place_call(&call_of(&m, "b", 9)).await;
    assert_eq!(refused(unknown), (401, "10009".into()));
    let cross = telnyx_as(&m, KEY_B, "conn").place_call(&call_of(&m, "b", 9)).await;
    assert_eq!(refused(cross), (422, "10015".into()));

    // Each account sees only its own calls.
    let (b_call, _) = &placed[5];
    let asked = telnyx_as(&m, "KEY1", "conn").call_status(&b_call.provider_call_id).await.unwrap();
    assert_eq!(asked, RemoteStatus::Gone, "the default key must not see telnyx:b's call");
    let (b_call, _) = &placed[3];
    let asked = twilio_as(&m, SID, TOKEN).call_status(&b_call.provider_call_id).await.unwrap();
    assert_eq!(asked, RemoteStatus::Gone, "twilio:default must not see twilio:b's call");

    for (call, _) in &placed {
        ended(&m, &call.provider_call_id).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = sim_calls(&m).await;
    for (call, account) in &placed {
        let listed = calls.iter().find(|c| c["provider_call_id"] == call.provider_call_id.as_str()).unwrap();
        assert_eq!(listed["account"], *account, "{listed}");
    }

    // Every event (and signed answer-document request) verifies with its own
    // account's keys, and never with the other account's.
    let telnyx_default = telnyx::PublicKey::from_base64(
        &std::fs::read_to_string(m.setup.dir.join("telnyx_public_key")).unwrap(),
    )
    .unwrap();
    let requests = m.recorder.requests.lock().unwrap();
    let mut checked = std::collections::BTreeMap::<String, u32>::new();
    for (target, headers, body) in requests.iter() {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let (account, rest) = target.trim_start_matches('/').split_once('/').unwrap();
        let own = account == "b";
        let verifies = |b: bool| -> bool {
            if rest.starts_with("vonage/answer") {
                return true;
            }
            if rest.starts_with("vonage") {
                let secret = SecretString::from(if b { SECRET_B } else { SECRET });
                vonage::verify_webhook(h("authorization"), &secret, body).is_ok()
            } else if rest.starts_with("twilio") {
                let url = format!("{}{target}", m.recorder.base);
                let params = twilio::parse_form(body).unwrap_or_default();
                let token = SecretString::from(if b { TOKEN_B } else { TOKEN });
                twilio::verify_signature(h("x-twilio-signature"), &token, &url, &params).is_ok()
            } else {
                let key = if b { &m.telnyx_key_b } else { &telnyx_default };
                telnyx::verify_webhook(h("telnyx-signature-ed25519"), h("telnyx-timestamp"), key, body)
                    .is_ok()
            }
        };
        if rest.starts_with("vonage/answer") {
            continue;
        }
        assert!(verifies(own), "{target} does not verify with its own account's keys");
        assert!(!verifies(!own), "{target} verifies with the other account's keys");
        let provider = rest.split('/').next().unwrap();
        *checked.entry(format!("{provider}:{account}")).or_default() += 1;
    }
    for account in ["vonage:default", "vonage:b", "twilio:default", "twilio:b", "telnyx:default", "telnyx:b"]
    {
        let (provider, label) = account.split_once(':').unwrap();
        assert!(
            checked.get(&format!("{provider}:{label}")).is_some_and(|n| *n >= 2),
            "{account}: {checked:?}"
        );
    }
    drop(requests);
    m.setup.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_accounts_rate_limit_is_its_own() {
    let m = start(
        &["--vonage-rate", "1", "--twilio-cps", "1", "--telnyx-dials-per-window", "2"],
        "rate = 1",
        "cps = 1",
        "dials_per_window = 1\nwindow = \"10s\"",
    )
    .await;
    // Vonage: the default account's second call in the second is refused;
    // vonage:b's bucket is untouched by it.
    let default_vonage = vonage_as(&m, "app", &default_private(&m));
    assert!(default_vonage.place_call(&call_of(&m, "default", 1)).await.is_ok());
    assert_eq!(
        default_vonage.place_call(&call_of(&m, "default", 2)).await,
        Err(PlaceCallError::RateLimited { retry_after: None })
    );
    let b_vonage = vonage_as(&m, "app-b", &b_private(&m));
    assert!(b_vonage.place_call(&call_of(&m, "b", 3)).await.is_ok());
    assert_eq!(
        b_vonage.place_call(&call_of(&m, "b", 4)).await,
        Err(PlaceCallError::RateLimited { retry_after: None })
    );

    // Twilio: each account queues by its own CPS; b's first call does not
    // wait behind the default account's queue.
    let mut queue_ms = Vec::new();
    for (account, sid, token, to) in [
        ("default", SID, TOKEN, "+14155552001"),
        ("default", SID, TOKEN, "+14155552002"),
        ("b", SID_B, TOKEN_B, "+14155552003"),
    ] {
        let r = twilio_raw(&m, account, sid, token, to).await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        queue_ms.push(body["queue_time"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert!(queue_ms[1] >= 800, "the default account's second call queues: {queue_ms:?}");
    assert!(queue_ms[2] <= 100, "twilio:b's first call starts at once: {queue_ms:?}");

    // Telnyx: b has one dial per 10 s, the default two per 5 s.
    let b_telnyx = telnyx_as(&m, KEY_B, "conn-b");
    assert!(b_telnyx.place_call(&call_of(&m, "b", 5)).await.is_ok());
    assert!(matches!(
        b_telnyx.place_call(&call_of(&m, "b", 6)).await,
        Err(PlaceCallError::RateLimited { .. })
    ));
    let default_telnyx = telnyx_as(&m, "KEY1", "conn");
    assert!(default_telnyx.place_call(&call_of(&m, "default", 7)).await.is_ok());
    assert!(default_telnyx.place_call(&call_of(&m, "default", 8)).await.is_ok());

    let stats = stats_of(&m).await;
    let accounts = &stats["accounts"];
    for (account, limited, calls) in [
        ("vonage:default", 1, 1),
        ("vonage:b", 1, 1),
        ("twilio:default", 0, 2),
        ("twilio:b", 0, 1),
        ("telnyx:default", 0, 2),
        ("telnyx:b", 1, 1),
    ] {
        assert_eq!(accounts[account]["rate_limited"], limited, "{account}: {stats}");
        assert_eq!(accounts[account]["calls"], calls, "{account}: {stats}");
    }
    assert_eq!(stats["rate_limited_429"], 3, "{stats}");
    assert_eq!(accounts["telnyx:b"]["rate"], 0.1, "{stats}");
    assert_eq!(accounts["twilio:b"]["rate"], 1.0, "{stats}");
    m.setup.stop.cancel();
}

/// Telnyx, "Concurrent Call Limits"
/// (developers.telnyx.com/docs/voice/sip-trunking/configuration/concurrent-limits):
/// "When the application attempts to establish a call that exceeds the
/// configured limit, Telnyx returns a SIP 403 error: 403 User channel limit
/// exceeded". The dial is answered as usual; the call hangs up with SIP 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_past_an_accounts_cap_the_call_fails_with_sip_403() {
    let m = start(&["--time-scale", "0.05"], "", "", "max_concurrent = 1").await;
    let b = telnyx_as(&m, KEY_B, "conn-b");
    // The first call is answered and waits for a speak command (10 s): it holds b's one line.
    let first = b.place_call(&call_of(&m, "b", 1)).await.unwrap().provider_call_id;
    let second = b.place_call(&call_of(&m, "b", 2)).await.unwrap().provider_call_id;
    let ended_second = ended(&m, &second).await;
    assert_eq!(ended_second["past_cap"], true, "{ended_second}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = telnyx_events(&m, &second);
    let kinds: Vec<&str> = events.iter().map(|e| e["data"]["event_type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["call.initiated", "call.hangup"], "{events:?}");
    let hangup = &events[1]["data"]["payload"];
    assert_eq!(
        (hangup["sip_hangup_cause"].as_str(), hangup["hangup_cause"].as_str()),
        (Some("403"), Some("call_rejected"))
    );
    // The default account has no cap and is not held back by b's.
    let default = telnyx_as(&m, "KEY1", "conn");
    default.place_call(&call_of(&m, "default", 3)).await.unwrap();
    default.place_call(&call_of(&m, "default", 4)).await.unwrap();

    // Once b's first call ends its line is free again.
    b.hangup(&first, "hangup-1").await.unwrap();
    ended(&m, &first).await;
    let third = b.place_call(&call_of(&m, "b", 5)).await.unwrap().provider_call_id;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = sim_calls(&m).await;
    let listed = calls.iter().find(|c| c["provider_call_id"] == third.as_str()).unwrap();
    assert_eq!(listed["past_cap"], false, "{listed}");

    let stats = stats_of(&m).await;
    let b_stats = &stats["accounts"]["telnyx:b"];
    assert_eq!(b_stats["rejected_past_cap"], 1, "{stats}");
    assert_eq!(b_stats["most_concurrent"], 1, "{stats}");
    assert_eq!(b_stats["max_concurrent"], 1, "{stats}");
    assert_eq!(b_stats["calls"], 3, "{stats}");
    assert_eq!(stats["accounts"]["telnyx:default"]["rejected_past_cap"], 0, "{stats}");
    assert_eq!(stats["accounts"]["telnyx:default"]["most_concurrent"], 2, "{stats}");
    assert_eq!(stats["concurrency_rejected"], 1, "{stats}");
    m.setup.stop.cancel();
}

/// Twilio error 10004, "Call concurrency limit exceeded"
/// (twilio.com/docs/api/errors/10004): "The call was rejected because you
/// reached the maximum limit of concurrent calls available for your
/// account." A call rejected, not a request refused: the create request is
/// accepted (201, `queued`) and the call fails without ringing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_past_an_accounts_cap_the_call_is_created_and_fails_as_error_10004() {
    let m =
        start(&["--twilio-cps", "100", "--time-scale", "0.2"], "", "cps = 100\nmax_concurrent = 1", "").await;
    let first = twilio_raw(&m, "b", SID_B, TOKEN_B, "+14155553001").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = twilio_raw(&m, "b", SID_B, TOKEN_B, "+14155553002").await;
    assert_eq!(second.status(), 201, "past the cap the request is still accepted");
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["status"], "queued");
    let sid = second["sid"].as_str().unwrap();
    let call = ended(&m, sid).await;
    assert_eq!((call["status"].as_str(), call["past_cap"].as_bool()), (Some("failed"), Some(true)), "{call}");
    assert!(call["started_at"].is_null(), "it never left the queue to ring: {call}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let callbacks = twilio_callbacks(&m, sid);
    let statuses: Vec<&str> = callbacks
        .iter()
        .flat_map(|form| form.iter().filter(|(k, _)| k == "CallStatus").map(|(_, v)| v.as_str()))
        .collect();
    assert_eq!(statuses, ["failed"], "no initiated or ringing before it fails: {callbacks:?}");
    // The API answers it as a failed call.
    let fetched: Value = http()
        .get(format!("{}/2010-04-01/Accounts/{SID_B}/Calls/{sid}.json", m.setup.sim))
        .basic_auth(SID_B, Some(TOKEN_B))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["status"], "failed", "{fetched}");
    // The default account (no cap) takes two at once.
    assert_eq!(twilio_raw(&m, "default", SID, TOKEN, "+14155553003").await.status(), 201);
    assert_eq!(twilio_raw(&m, "default", SID, TOKEN, "+14155553004").await.status(), 201);

    // When the first call ends, b has a line again.
    ended(&m, first["sid"].as_str().unwrap()).await;
    let third: Value = twilio_raw(&m, "b", SID_B, TOKEN_B, "+14155553005").await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = sim_calls(&m).await;
    let listed = calls.iter().find(|c| c["provider_call_id"] == third["sid"]).unwrap();
    assert_eq!(listed["past_cap"], false, "{listed}");

    let stats = stats_of(&m).await;
    let b_stats = &stats["accounts"]["twilio:b"];
    assert_eq!(b_stats["rejected_past_cap"], 1, "{stats}");
    assert_eq!(b_stats["most_concurrent"], 1, "{stats}");
    assert_eq!(b_stats["calls"], 3, "{stats}");
    assert_eq!(b_stats["rate_limited"], 0, "{stats}");
    assert_eq!(stats["accounts"]["twilio:default"]["most_concurrent"], 2, "{stats}");
    m.setup.stop.cancel();
}

/// Vonage documents no concurrent-call limit — "There is no limit to the
/// concurrent capacity of calls for your account, and the limitation is only
/// for calls per second" (Vonage API Support, "How many calls can I create
/// per second?") — and one capacity refusal, in the Voice API
/// troubleshooting guide's "Capacity" section
/// (developer.vonage.com/voice/voice-api/guides/troubleshooting): "If you
/// exceed these limits you will receive an HTTP 429 response". Past a cap
/// the simulator answers that 429, creating no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_past_an_accounts_cap_gets_the_documented_capacity_429() {
    let m = start(&["--vonage-rate", "100", "--time-scale", "0.2"], "rate = 100\nmax_concurrent = 1", "", "")
        .await;
    let b = vonage_as(&m, "app-b", &b_private(&m));
    let first = b.place_call(&call_of(&m, "b", 1)).await.unwrap().provider_call_id;
    assert_eq!(
        b.place_call(&call_of(&m, "b", 2)).await,
        Err(PlaceCallError::RateLimited { retry_after: None })
    );
    let raw = http()
        .post(format!("{}/v1/calls", m.setup.sim))
        .bearer_auth(
            tocsin_core::vonage::JwtSigner::new("app-b".into(), &SecretString::from(b_private(&m)))
                .unwrap()
                .token()
                .unwrap(),
        )
        .json(&json!({"to": [{"type": "phone", "number": "14155554003"}], "from": {"type": "phone", "number": "14155550100"},
                      "ncco": [{"action": "talk", "text": "hi"}], "event_url": [format!("{}/b/vonage/events", m.recorder.base)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert_eq!(raw.headers()["content-type"], "application/problem+json");
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["title"], "Rate Limit Hit", "{body}");
    // The default account has no cap.
    let default = vonage_as(&m, "app", &default_private(&m));
    default.place_call(&call_of(&m, "default", 3)).await.unwrap();
    default.place_call(&call_of(&m, "default", 4)).await.unwrap();

    ended(&m, &first).await;
    assert!(b.place_call(&call_of(&m, "b", 5)).await.is_ok(), "a line is free once the first call ended");

    let stats = stats_of(&m).await;
    let b_stats = &stats["accounts"]["vonage:b"];
    assert_eq!(b_stats["rejected_past_cap"], 2, "{stats}");
    assert_eq!(b_stats["rate_limited"], 0, "past-cap 429s are not rate limiting: {stats}");
    assert_eq!(b_stats["calls"], 2, "no call is created past the cap: {stats}");
    assert_eq!(b_stats["most_concurrent"], 1, "{stats}");
    assert_eq!(stats["accounts"]["vonage:default"]["most_concurrent"], 2, "{stats}");
    m.setup.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_takes_down_only_its_account_and_an_unknown_account_is_a_404_listing_them() {
    let m = start(&["--twilio-cps", "100"], "", "cps = 100", "").await;
    let outage = |account: &str, mode: &str| {
        http()
            .post(format!("{}/_sim/outage", m.setup.sim))
            .json(&json!({"account": account, "mode": mode}))
            .send()
    };
    assert_eq!(outage("twilio:b", "5xx").await.unwrap().status(), 204);
    assert_eq!(twilio_raw(&m, "b", SID_B, TOKEN_B, "+14155555001").await.status(), 503);
    assert_eq!(twilio_raw(&m, "default", SID, TOKEN, "+14155555002").await.status(), 201);
    // A bare provider name is its default account.
    assert_eq!(outage("twilio", "401").await.unwrap().status(), 204);
    assert_eq!(twilio_raw(&m, "default", SID, TOKEN, "+14155555003").await.status(), 401);
    assert_eq!(outage("twilio:b", "none").await.unwrap().status(), 204);
    assert_eq!(twilio_raw(&m, "b", SID_B, TOKEN_B, "+14155555004").await.status(), 201);
    assert_eq!(outage("twilio:default", "none").await.unwrap().status(), 204);
    assert_eq!(twilio_raw(&m, "default", SID, TOKEN, "+14155555005").await.status(), 201);

    for unknown in ["twilio:c", "sinch", "twilio:B"] {
        let r = outage(unknown, "5xx").await.unwrap();
        assert_eq!(r.status(), 404, "{unknown}");
        let body: Value = r.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        for name in ["vonage:default", "vonage:b", "twilio:default", "twilio:b", "telnyx:default", "telnyx:b"]
        {
            assert!(message.contains(name), "{unknown}: {message}");
        }
        assert!(message.contains(unknown), "{message}");
    }

    let stats = stats_of(&m).await;
    assert_eq!(stats["accounts"]["twilio:b"]["outage_refused"], 1, "{stats}");
    assert_eq!(stats["accounts"]["twilio:default"]["outage_refused"], 1, "{stats}");
    assert_eq!(stats["accounts"]["twilio:b"]["calls"], 1, "{stats}");
    assert_eq!(stats["accounts"]["twilio:default"]["calls"], 2, "{stats}");
    assert_eq!(stats["outage_refused"]["twilio"], 2, "per provider, as before: {stats}");
    m.setup.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_every_account_with_busiest_windows_over_arrival_times() {
    let m = start(
        &["--twilio-cps", "100", "--time-scale", "1"],
        "rate = 3\nmax_concurrent = 7",
        "cps = 100",
        "dials_per_window = 100\nwindow = \"10s\"",
    )
    .await;
    // twilio:b: four calls and one refused for its token, 100 ms apart (five
    // arrivals inside one second, whatever its phase against the whole
    // seconds), then two more after a pause; one with a SID of no account.
    for n in 0..5 {
        let token = if n == 2 { "wrong" } else { TOKEN_B };
        let expected = if n == 2 { 401 } else { 201 };
        let to = format!("+141555560{n:02}");
        assert_eq!(twilio_raw(&m, "b", SID_B, token, &to).await.status(), expected);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nobody = format!("AC{}", "d".repeat(32));
    assert_eq!(twilio_raw(&m, "b", &nobody, TOKEN_B, "+14155556009").await.status(), 401);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for n in 5..7 {
        assert_eq!(twilio_raw(&m, "b", SID_B, TOKEN_B, &format!("+141555560{n:02}")).await.status(), 201);
    }
    // telnyx:b: three dials, a pause longer than a second, two more: all in its 10 s window.
    let b = telnyx_as(&m, KEY_B, "conn-b");
    for n in 0..3 {
        b.place_call(&call_of(&m, "b", 20 + n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for n in 3..5 {
        b.place_call(&call_of(&m, "b", 20 + n)).await.unwrap();
    }

    let stats = stats_of(&m).await;
    let accounts = stats["accounts"].as_object().unwrap();
    let names: Vec<&str> = accounts.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["telnyx:b", "telnyx:default", "twilio:b", "twilio:default", "vonage:b", "vonage:default"]
    );
    let fields = [
        "busiest_1s",
        "busiest_window",
        "calls",
        "max_concurrent",
        "most_concurrent",
        "outage_refused",
        "rate",
        "rate_limited",
        "rejected_past_cap",
        "window_secs",
    ];
    for (name, account) in accounts {
        let mut keys: Vec<&str> = account.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, fields, "{name}");
    }
    let twilio_b = &accounts["twilio:b"];
    assert_eq!(twilio_b["busiest_1s"], 5, "arrivals counted before authentication: {stats}");
    assert_eq!(twilio_b["busiest_window"], 5, "{stats}");
    assert_eq!(twilio_b["window_secs"], 1.0, "{stats}");
    assert_eq!(twilio_b["calls"], 6, "{stats}");
    assert_eq!(twilio_b["most_concurrent"], 6, "{stats}");
    assert_eq!(twilio_b["rate"], 100.0, "{stats}");
    let telnyx_b = &accounts["telnyx:b"];
    assert_eq!(telnyx_b["busiest_1s"], 3, "{stats}");
    assert_eq!(telnyx_b["busiest_window"], 5, "{stats}");
    assert_eq!(telnyx_b["window_secs"], 10.0, "{stats}");
    assert_eq!(telnyx_b["rate"], 10.0, "{stats}");
    assert_eq!(accounts["vonage:b"]["rate"], 3.0, "{stats}");
    assert_eq!(accounts["vonage:b"]["max_concurrent"], 7, "{stats}");
    assert_eq!(accounts["vonage:default"]["calls"], 0, "{stats}");
    assert_eq!(accounts["vonage:default"]["rate"], 2.0, "the flag's default: {stats}");
    // The older figures are all still there.
    for field in [
        "calls",
        "max_calls_in_any_1s_window",
        "max_concurrent_calls_per_provider",
        "outage_refused",
        "concurrency_rejected",
        "rate_limited_429",
        "calls_per_provider",
    ] {
        assert!(stats.get(field).is_some(), "{field} missing: {stats}");
    }
    assert_eq!(stats["calls"], 11, "{stats}");
    m.setup.stop.cancel();
}

/// The error `simulator::run` gives for an accounts file holding `toml`
/// (account b's key files exist beside it).
async fn load_error(toml: &str) -> (String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sim-accounts-bad-{}", uuid::Uuid::new_v4().simple()));
    let file = write_accounts_file(&dir, "", "", "");
    std::fs::write(&file, toml).unwrap();
    let args = ["simulator", "serve", "--twilio-account-sid", SID, "--accounts-file", file.to_str().unwrap()];
    let simulator::config::Command::Serve(config) =
        simulator::config::Cli::try_parse_from(args).unwrap().command
    else {
        unreachable!()
    };
    let (listener, _) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let stop = CancellationToken::new();
    let result =
        tokio::time::timeout(Duration::from_secs(5), simulator::run(config, listener, stop.clone())).await;
    stop.cancel();
    match result {
        Ok(Err(e)) => (format!("{e:#}"), file),
        other => panic!("the accounts file was accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_accounts_file_is_refused_naming_the_file_the_account_and_the_field() {
    let vonage = "application_id = \"app-b\"\npublic_key_path = \"keys/vonage_b_public.pem\"\nsignature_secret = \"s\"\n";
    let cases = [
        ("[twilio.b]\naccount_sid = \"AC123\"\nauth_token = \"t\"\n".to_owned(), "twilio:b", "field account_sid"),
        ("[vonage.eu]\napplication_id = \"app-eu\"\npublic_key_path = \"keys/vonage_b_public.pem\"\n".to_owned(), "vonage:eu", "field signature_secret"),
        (format!("[vonage.eu]\n{vonage}rate = -1\n"), "vonage:eu", "field rate"),
        (format!("[vonage.eu]\n{vonage}rat = 2\n"), "vonage:eu", "field rat: unknown field"),
        ("[vonage.eu]\napplication_id = \"a\"\npublic_key_path = \"keys/missing.pem\"\nsignature_secret = \"s\"\n".to_owned(), "vonage:eu", "field public_key_path"),
        ("[telnyx.b]\napi_key = \"K\"\nwindow = \"soon\"\n".to_owned(), "telnyx:b", "field window"),
        ("[telnyx.b]\napi_key = \"K\"\nmax_concurrent = -2\n".to_owned(), "telnyx:b", "field max_concurrent"),
        (format!("[twilio.default]\naccount_sid = \"{SID_B}\"\nauth_token = \"t\"\n"), "twilio:default", "--twilio-* flags"),
        (format!("[twilio.c]\naccount_sid = \"{SID}\"\nauth_token = \"t\"\n"), "twilio:c", "twilio:default"),
        (format!("[vonage.Big]\n{vonage}"), "vonage:Big", "not a label"),
        ("[sinch.b]\nkey = 1\n".to_owned(), "[sinch]", "not a provider"),
        ("[twilio.b\n".to_owned(), "", "not valid TOML"),
    ];
    for (toml, account, field) in cases {
        let (error, file) = load_error(&toml).await;
        assert!(error.contains(&file.display().to_string()), "names no file: {error}");
        assert!(error.contains(account), "names no account {account}: {error}");
        assert!(error.contains(field), "names no {field}: {error}");
    }

    // The binary refuses to start with it, saying why.
    let (_, file) = load_error("[telnyx.b]\napi_key = \"K\"\nwindow = \"soon\"\n").await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_simulator"))
        .args(["serve", "--http-addr", "127.0.0.1:0", "--accounts-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("account telnyx:b: field window"), "{stderr}");
}
