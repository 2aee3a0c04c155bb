//! The keypress routes against the real PostgreSQL, driven through the
//! router: Vonage's input webhook, Twilio's `<Gather>` action and Telnyx's
//! keypress events are verified like every other provider request — a
//! forged, tampered, stale or token-less keypress is refused and changes
//! nothing — and a verified key is recorded once and answered with the
//! dialogue's next step in the provider's own format.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tocsin_core::{CallId, CampaignId, PhoneNumber};
use tower::ServiceExt;

use crate::common;

const SECRET: &str = "keypress-test-secret";
const PUBLIC: &str = "https://hooks.example";
const TWILIO_SID: &str = "AC00000000000000000000000000000000";
const TWILIO_TOKEN: &str = "twilio-token";

const TELNYX_SEED: [u8; 32] = [7; 32];

struct Harness {
    app: common::App,
    campaign: CampaignId,
}

/// Signs a Telnyx event with `seed`'s key at `timestamp`.
fn telnyx_sign(seed: &[u8], body: &str, timestamp: i64) -> String {
    let key = tocsin_core::telnyx::signing_key(seed).unwrap();
    tocsin_core::telnyx::sign_webhook(&key, timestamp, body.as_bytes())
}

async fn harness() -> Harness {
    let public =
        tocsin_core::telnyx::public_key_base64(&tocsin_core::telnyx::signing_key(&TELNYX_SEED).unwrap());
    let app = common::App::start(
        "keypress",
        &[
            "--public-url",
            PUBLIC,
            "--twilio-account-sid",
            TWILIO_SID,
            "--twilio-auth-token",
            TWILIO_TOKEN,
            "--telnyx-api-key",
            "KEYtest",
            "--telnyx-connection-id",
            "conn",
            "--telnyx-public-key",
            &public,
        ],
    )
    .await;
    let campaign = CampaignId::from_name("keys");
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number, confirm, opt_out_key) \
         VALUES ($1, 'keys', 'Storm <warning> & \"shelter\"', '+14155550100', true, '9')",
    )
    .bind(campaign)
    .execute(&app.db.pool)
    .await
    .unwrap();
    Harness { app, campaign }
}

impl Harness {
    /// A call answered in attempt 1 with URL token `tok-{number}`.
    async fn call(&self, number: &str) -> CallId {
        let id = CallId::derive(self.campaign, &PhoneNumber::from_e164(number).unwrap());
        sqlx::query(
            "INSERT INTO calls (id, campaign_id, number, state, attempt, url_token, first_dialing_at) \
             VALUES ($1, $2, $3, 'answered', 1, $4, now())",
        )
        .bind(id)
        .bind(self.campaign)
        .bind(number)
        .bind(format!("tok{}", &number[1..]))
        .execute(&self.app.db.pool)
        .await
        .unwrap();
        id
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self.app.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn keypresses(&self) -> Vec<(String, i32, Option<String>, String)> {
        sqlx::query_as("SELECT provider, round, digit, reply FROM keypresses ORDER BY provider, round")
            .fetch_all(&self.app.db.pool)
            .await
            .unwrap()
    }

    async fn confirmed(&self, id: CallId) -> (Option<i32>, Option<String>) {
        sqlx::query_as("SELECT confirmed_attempt, confirmed_key FROM calls WHERE id = $1")
            .bind(id)
            .fetch_one(&self.app.db.pool)
            .await
            .unwrap()
    }
}

fn vonage_input(digits: &str, timed_out: bool) -> String {
    serde_json::json!({
        "from": "14155550100", "to": "14155550001", "uuid": "u-1", "conversation_uuid": "CON-1",
        "dtmf": { "digits": digits, "timed_out": timed_out },
        "speech": { "error": "Speech was not enabled" },
        "timestamp": "2026-12-02T10:00:00.000Z",
    })
    .to_string()
}

fn vonage_request(path_query: &str, body: String, auth: Option<String>) -> Request<Body> {
    let mut builder = Request::post(path_query).header("content-type", "application/json");
    if let Some(a) = auth {
        builder = builder.header("authorization", a);
    }
    builder.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn vonage_input_is_verified_recorded_once_and_answered_with_the_next_ncco() {
    let h = harness().await;
    let id = h.call("+14155550001").await;
    // The answer NCCO asks for the key after the message and the prompt.
    let (status, body) = h
        .send(
            Request::get(format!("/vonage/answer?call_id={id}&attempt=1&token=tok14155550001"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ncco: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ncco[0]["text"], "Storm <warning> & \"shelter\"");
    assert_eq!(ncco[0]["bargeIn"], true);
    assert_eq!(ncco[2]["action"], "input");
    assert_eq!(ncco[2]["type"], serde_json::json!(["dtmf"]));
    assert_eq!(ncco[2]["dtmf"]["maxDigits"], 1);
    let url = ncco[2]["eventUrl"][0].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{PUBLIC}/vonage/input?call_id={id}&attempt=1&token=tok14155550001&turn=0.0.0"
        )),
        "{url}"
    );
    let path = url.strip_prefix(PUBLIC).unwrap().to_owned();

    let body = vonage_input("1", false);
    let good = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
    let forged = tocsin_core::vonage::sign_webhook("not-the-secret", "app", body.as_bytes());
    let stale_at = u64::try_from(chrono::Utc::now().timestamp()).unwrap() - 3600;
    let stale = tocsin_core::vonage::sign_webhook_issued_at(SECRET, "app", body.as_bytes(), stale_at);
    let no_token = path.replace("&token=tok14155550001", "");
    let wrong_token = path.replace("tok14155550001", "tok00000000000");
    let refused = [
        (path.clone(), body.clone(), None),
        (path.clone(), body.clone(), Some(format!("Bearer {forged}"))),
        (path.clone(), body.replace("\"1\"", "\"9\""), Some(format!("Bearer {good}"))),
        (path.clone(), body.clone(), Some(format!("Bearer {stale}"))),
        (no_token, body.clone(), Some(format!("Bearer {good}"))),
        (wrong_token, body.clone(), Some(format!("Bearer {good}"))),
    ];
    for (uri, payload, auth) in refused {
        let (status, text) = h.send(vonage_request(&uri, payload, auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {text}");
    }
    assert!(h.keypresses().await.is_empty(), "a refused keypress changes nothing");
    assert_eq!(h.confirmed(id).await, (None, None));

    // Verified: recorded, answered with the thanks; sent again: recorded once.
    for _ in 0..2 {
        let auth = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
        let (status, text) =
            h.send(vonage_request(&path, body.clone(), Some(format!("Bearer {auth}")))).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let next: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(next.as_array().unwrap().len(), 1, "{next}");
        assert!(next[0]["text"].as_str().unwrap().starts_with("Thank you"), "{next}");
    }
    assert_eq!(h.keypresses().await, [("vonage".into(), 0, Some("1".into()), "confirmed".into())]);
    assert_eq!(h.confirmed(id).await, (Some(1), Some("1".into())));
    // A missing or malformed turn is a bad request.
    let bad_turn = path.replace("turn=0.0.0", "turn=x");
    let auth = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
    assert_eq!(
        h.send(vonage_request(&bad_turn, body, Some(format!("Bearer {auth}")))).await.0,
        StatusCode::BAD_REQUEST
    );
    h.app.cleanup().await;
}

fn twilio_request(url: &str, params: &[(&str, &str)], token: &str) -> Request<Body> {
    let owned: Vec<(String, String)> =
        params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let signature = tocsin_core::twilio::signature(token, url, &owned);
    // (The values here need no percent-encoding but `*`, which forms keep.)
    let form: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Request::post(url.strip_prefix(PUBLIC).unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(Body::from(form.join("&")))
        .unwrap()
}

#[tokio::test]
async fn a_twilio_gather_action_is_verified_over_its_url_and_answered_with_the_next_twiml() {
    let h = harness().await;
    let id = h.call("+14155550002").await;
    let url = format!("{PUBLIC}/twilio/gather?call_id={id}&attempt=1&token=tok14155550002&turn=0.0.0");
    let params =
        [("CallSid", "CA1"), ("AccountSid", TWILIO_SID), ("Digits", "*"), ("CallStatus", "in-progress")];
    // Forged (wrong token), tampered (another key than signed), another URL.
    let forged = twilio_request(&url, &params, "not-the-token");
    let mut tampered = twilio_request(&url, &params, TWILIO_TOKEN);
    *tampered.body_mut() = Body::from(
        "CallSid=CA1&AccountSid=AC00000000000000000000000000000000&Digits=9&CallStatus=in-progress",
    );
    let elsewhere = {
        let mut r = twilio_request(&url, &params, TWILIO_TOKEN);
        *r.uri_mut() = r.uri().to_string().replace("turn=0.0.0", "turn=1.0.0").parse().unwrap();
        r
    };
    for request in [forged, tampered, elsewhere] {
        assert_eq!(h.send(request).await.0, StatusCode::UNAUTHORIZED);
    }
    assert!(h.keypresses().await.is_empty());

    // The replay key: the message and the prompt again, in a new <Gather>.
    let (status, twiml) = h.send(twilio_request(&url, &params, TWILIO_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert!(twiml.contains("<Gather input=\"dtmf\" numDigits=\"1\""), "{twiml}");
    assert!(twiml.contains("turn=1.1.0"), "{twiml}");
    assert!(twiml.contains("Storm &lt;warning&gt; &amp; &quot;shelter&quot;"), "{twiml}");
    // The opt-out key: the notice, then the hang-up.
    let next = format!("{PUBLIC}/twilio/gather?call_id={id}&attempt=1&token=tok14155550002&turn=1.1.0");
    let (status, twiml) =
        h.send(twilio_request(&next, &[("CallSid", "CA1"), ("Digits", "9")], TWILIO_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(twiml.contains("not be called again") && twiml.ends_with("<Hangup/></Response>"), "{twiml}");
    assert_eq!(
        h.keypresses().await,
        [
            ("twilio".into(), 0, Some("*".into()), "replay".into()),
            ("twilio".into(), 1, Some("9".into()), "opted_out".into())
        ]
    );
    let on_list: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM do_not_call WHERE number = '+14155550002')")
            .fetch_one(&h.app.db.pool)
            .await
            .unwrap();
    assert!(on_list);
    h.app.cleanup().await;
}

fn telnyx_event(call: CallId, event_type: &str, payload: serde_json::Value) -> String {
    let state = tocsin_core::telnyx::dialogue_state(
        call,
        tocsin_core::telnyx::Dialogue::Asking(tocsin_core::confirm::Turn::default()),
    );
    let mut p = serde_json::json!({
        "call_control_id": "v3:leg", "call_leg_id": "leg", "call_session_id": "session",
        "connection_id": "conn", "client_state": state, "from": "+14155550100", "to": "+14155550003",
    });
    p.as_object_mut().unwrap().extend(payload.as_object().unwrap().clone());
    serde_json::json!({ "data": {
        "record_type": "event", "event_type": event_type, "id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": "2026-12-02T10:00:00.000000Z", "payload": p,
    }})
    .to_string()
}

fn telnyx_request(body: &str, signature: String, timestamp: i64) -> Request<Body> {
    Request::post("/telnyx/events?attempt=1")
        .header("content-type", "application/json")
        .header("telnyx-signature-ed25519", signature)
        .header("telnyx-timestamp", timestamp.to_string())
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_telnyx_keypress_is_verified_and_counts_once_across_its_two_events() {
    let h = harness().await;
    let id = h.call("+14155550003").await;
    let dtmf = telnyx_event(id, "call.dtmf.received", serde_json::json!({ "digit": "1" }));
    let now = chrono::Utc::now().timestamp();
    let sign = |body: &str, at: i64| telnyx_sign(&TELNYX_SEED, body, at);
    let refused = [
        telnyx_request(&dtmf, telnyx_sign(&[9; 32], &dtmf, now), now),
        telnyx_request(&dtmf.replace("\"digit\":\"1\"", "\"digit\":\"9\""), sign(&dtmf, now), now),
        telnyx_request(&dtmf, sign(&dtmf, now - 3600), now - 3600),
        telnyx_request(&dtmf, "A".repeat(88), now),
    ];
    for request in refused {
        assert_eq!(h.send(request).await.0, StatusCode::UNAUTHORIZED);
    }
    assert!(h.keypresses().await.is_empty());
    assert_eq!(h.confirmed(id).await, (None, None));

    // The key's own event confirms (no command follows it: that is the gather's end's).
    let (status, text) = h.send(telnyx_request(&dtmf, sign(&dtmf, now), now)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(h.confirmed(id).await, (Some(1), Some("1".into())));
    // The same key reported by `call.gather.ended` (whose next command this
    // test's Telnyx cannot take: 503, and Telnyx would send it again) is
    // stored as an event but counts no second time.
    let ended =
        telnyx_event(id, "call.gather.ended", serde_json::json!({ "digits": "1", "status": "valid" }));
    let _ = h.send(telnyx_request(&ended, sign(&ended, now), now)).await;
    assert_eq!(h.keypresses().await, [("telnyx".into(), 0, Some("1".into()), "confirmed".into())]);
    h.app.cleanup().await;
}

#[tokio::test]
async fn an_answer_document_speaks_in_the_contacts_own_language_and_fills_its_placeholders() {
    let h = harness().await;
    sqlx::query("UPDATE campaigns SET message = 'Hola {{name|amigo}}.', confirm = false WHERE name = 'keys'")
        .execute(&h.app.db.pool)
        .await
        .unwrap();
    let id = h.call("+14155550004").await;
    sqlx::query(
        "UPDATE calls SET attributes = '{\"name\": \"Zoë & <Ana>\", \"language\": \"es-ES\"}' WHERE id = $1",
    )
    .bind(id)
    .execute(&h.app.db.pool)
    .await
    .unwrap();
    let (status, body) = h
        .send(
            Request::get(format!("/vonage/answer?call_id={id}&attempt=1&token=tok14155550004"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ncco: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ncco[0]["text"], "Hola Zoë & <Ana>.", "{ncco}");
    assert_eq!(ncco[0]["language"], "es-ES", "{ncco}");
    h.app.cleanup().await;
}

#[tokio::test]
async fn telnyx_calls_refused_past_the_channel_limit_count_against_their_account() {
    let prefix = tocsin_core::testing::unique_prefix("limit");
    let public =
        tocsin_core::telnyx::public_key_base64(&tocsin_core::telnyx::signing_key(&TELNYX_SEED).unwrap());
    let app = common::App::start(
        "limit",
        &[
            "--telnyx-api-key",
            "KEYtest",
            "--telnyx-connection-id",
            "conn",
            "--telnyx-public-key",
            &public,
            "--redis-prefix",
            &prefix,
            "--account-failures",
            "3",
        ],
    )
    .await;
    let h = Harness { app, campaign: CampaignId::from_name("limit") };
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'limit', 'x', '+14155550100')",
    )
    .bind(h.campaign)
    .execute(&h.app.db.pool)
    .await
    .unwrap();
    let conn =
        tocsin_core::limiter::RedisLimiter::connect(&tocsin_core::testing::redis_url().await).await.unwrap();
    let health = tocsin_core::health::Health::new(conn, &prefix, tocsin_core::health::Rules::default());
    let now = chrono::Utc::now().timestamp();
    for (i, sip) in ["403", "486", "403", "403"].iter().enumerate() {
        let number = format!("+1415555091{i}");
        let id = h.call(&number).await;
        sqlx::query("UPDATE calls SET provider = 'telnyx', account = 'b' WHERE id = $1")
            .bind(id)
            .execute(&h.app.db.pool)
            .await
            .unwrap();
        let hangup = telnyx_event(
            id,
            "call.hangup",
            serde_json::json!({ "hangup_cause": "call_rejected", "sip_hangup_cause": sip, "state": "hangup" }),
        );
        let (status, _) = h.send(telnyx_request(&hangup, telnyx_sign(&TELNYX_SEED, &hangup, now), now)).await;
        assert_eq!(status, StatusCode::OK);
        // Counted off the answer's path: wait for it.
        let expected = ["403", "486", "403", "403"][..=i].iter().filter(|s| **s == "403").count() as u32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (standing, failures) = health.peek("telnyx:b").await.unwrap();
            // The third refusal opens the account (its failures are then reset).
            if (expected < 3 && failures == expected)
                || (expected == 3 && standing == tocsin_core::health::Standing::Open)
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "after {i}: {standing:?} {failures}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // A busy callee (SIP 486) is the callee's, not the account's: it did not count.
    assert_eq!(health.peek("telnyx:default").await.unwrap(), (tocsin_core::health::Standing::Closed, 0));
}
