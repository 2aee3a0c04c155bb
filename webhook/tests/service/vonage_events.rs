//! The webhook service against the real PostgreSQL and RabbitMQ, driven
//! through its router: signatures, limits, duplicates, out-of-order events,
//! unknown calls, the 503 path, group commit and redials.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tocsin_core::calls;
use tocsin_core::provider::Provider;
use tocsin_core::queue::Topology;
use tocsin_core::{CallId, CallJob, CampaignId, PhoneNumber};
use tower::ServiceExt;

use crate::common;

const SECRET: &str = "webhook-test-secret";

/// The shared harness (Vonage secret `SECRET`, 4 KiB bodies) and a campaign.
struct Harness {
    base: common::App,
    campaign: CampaignId,
}

impl std::ops::Deref for Harness {
    type Target = common::App;
    fn deref(&self) -> &common::App {
        &self.base
    }
}

async fn harness_with(extra: &[&str]) -> Harness {
    let mut flags =
        if extra.contains(&"--max-body-bytes") { vec![] } else { vec!["--max-body-bytes", "4096"] };
    flags.extend_from_slice(extra);
    let base = common::App::start("webhook", &flags).await;
    let campaign = CampaignId::from_name("hook-test");
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number, max_attempts, retry_delay_secs) \
         VALUES ($1, 'hook-test', 'Flood <warning> & \"evacuate\"', '+14155550100', 2, 1)",
    )
    .bind(campaign)
    .execute(&base.db.pool)
    .await
    .unwrap();
    Harness { base, campaign }
}

async fn harness() -> Harness {
    harness_with(&[]).await
}

impl Harness {
    async fn call(&self, number: &str, state: &str, attempt: i32) -> CallId {
        let id = CallId::derive(self.campaign, &PhoneNumber::from_e164(number).unwrap());
        sqlx::query(
            "INSERT INTO calls (id, campaign_id, number, state, attempt) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(self.campaign)
        .bind(number)
        .bind(state)
        .bind(attempt)
        .execute(&self.db.pool)
        .await
        .unwrap();
        id
    }

    async fn state(&self, id: CallId) -> (String, Option<i32>, Option<String>) {
        sqlx::query_as("SELECT state, duration_secs, answered_by FROM calls WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// The next job in the work queue (within 10 s), acked.
    async fn next_job(&self) -> CallJob {
        let conn = tocsin_core::queue::connect(&self.amqp_url, "hook-test").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                Topology::new(&self.prefix).work_queue().into(),
                "hook-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let delivery =
            tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.unwrap().unwrap().unwrap();
        let job = CallJob::decode(&delivery.data).unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        job
    }

    async fn events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&self.db.pool).await.unwrap()
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Posts a signed event to the call's event URL, with its attempt's URL
    /// token when it has one (as the URL a worker gives Vonage does).
    async fn post(&self, id: CallId, attempt: i32, body: serde_json::Value) -> StatusCode {
        let bytes = body.to_string();
        let token = tocsin_core::vonage::sign_webhook(SECRET, "app", bytes.as_bytes());
        // (The database may be down on purpose: then no token.)
        let url_token: Option<String> = sqlx::query_scalar("SELECT url_token FROM calls WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await
            .ok()
            .flatten()
            .flatten();
        let mut request = event_request(id, attempt, bytes, Some(format!("Bearer {token}")));
        if let Some(t) = url_token {
            *request.uri_mut() = format!("{}&token={t}", request.uri()).parse().unwrap();
        }
        self.send(request).await.0
    }
}

fn event_request(id: CallId, attempt: i32, body: String, auth: Option<String>) -> Request<Body> {
    let mut builder = Request::post(format!("/vonage/events?call_id={id}&attempt={attempt}"))
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    builder.body(Body::from(body)).unwrap()
}

fn event(uuid: &str, status: &str, ts: &str) -> serde_json::Value {
    serde_json::json!({ "uuid": uuid, "conversation_uuid": "CON-1", "status": status, "direction": "outbound",
                        "timestamp": ts, "to": "14155550001", "from": "14155550100" })
}

#[tokio::test]
async fn the_answer_url_speaks_the_campaign_message_as_json_data() {
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    let (status, body) = h
        .send(Request::get(format!("/vonage/answer?call_id={id}&uuid=x")).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let ncco: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ncco[0]["action"], "talk");
    assert_eq!(ncco[0]["text"], "Flood <warning> & \"evacuate\"");
    let (status, _) = h
        .send(
            Request::get(format!("/vonage/answer?call_id={}", uuid::Uuid::new_v4()))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = h.send(Request::get("/vonage/answer").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("\"error\""), "{body}");
    h.cleanup().await;
}

#[tokio::test]
async fn unsigned_forged_tampered_and_stale_events_get_401_and_store_nothing() {
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    let body = event("u1", "ringing", "2026-11-22T10:00:00.000Z").to_string();
    let good = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
    let forged = tocsin_core::vonage::sign_webhook("not-the-secret", "app", body.as_bytes());
    let cases = [
        (None, body.clone()),
        (Some(format!("Bearer {forged}")), body.clone()),
        (Some(format!("Bearer {good}")), body.replace("ringing", "answered")),
        (Some("Bearer not-a-jwt".to_owned()), body.clone()),
    ];
    for (auth, payload) in cases {
        let (status, text) = h.send(event_request(id, 1, payload, auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("\"code\":\"unauthorized\""), "{text}");
    }
    assert_eq!(h.events().await, 0);
    assert_eq!(
        h.post(id, 1, event("u1", "ringing", "2026-11-22T10:00:00.000Z")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.state(id).await.0, "ringing");
    h.cleanup().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_malformed_ones_400() {
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    let big = format!("{{\"status\":\"ringing\",\"pad\":\"{}\"}}", "x".repeat(10_000));
    let token = tocsin_core::vonage::sign_webhook(SECRET, "app", big.as_bytes());
    let (status, _) = h.send(event_request(id, 1, big, Some(format!("Bearer {token}")))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let junk = "{not json".to_owned();
    let token = tocsin_core::vonage::sign_webhook(SECRET, "app", junk.as_bytes());
    let (status, body) = h.send(event_request(id, 1, junk, Some(format!("Bearer {token}")))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("malformed"), "{body}");
    // Well-signed JSON of a shape we do not know is stored, not refused.
    let no_status = serde_json::json!({"uuid": "u", "timestamp": 7});
    assert_eq!(h.post(id, 1, no_status).await, StatusCode::NO_CONTENT);
    assert_eq!(h.state(id).await.0, "placed");
    h.cleanup().await;
}

#[tokio::test]
async fn every_documented_vonage_event_is_stored_and_an_error_fails_the_answered_call() {
    // Vonage's webhook reference, every event type (fixtures/vonage/events.json
    // names its source): record, input, transfer and error carry no status
    // and were refused 400 (and lost) before.
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vonage/events.json");
    let fixtures: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let wanted =
        ["started", "ringing", "answered", "human", "completed", "record", "input", "transfer", "error"];
    for name in wanted {
        let f = fixtures["events"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap();
        assert_eq!(h.post(id, 1, f["payload"].clone()).await, StatusCode::NO_CONTENT, "{name}");
    }
    assert_eq!(h.events().await, wanted.len() as i64);
    // The NCCO was refused: the message was never spoken, whatever `completed` said first.
    let (state, detail): (String, Option<String>) =
        sqlx::query_as("SELECT state, error_detail FROM calls WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(state, "failed");
    assert_eq!(detail.as_deref(), Some("vonage error: Syntax error in NCCO. Invalid value type or action."));
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM call_events ORDER BY status")
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
    for kind in ["record", "input", "transfer", "error"] {
        assert!(statuses.iter().any(|s| s == kind), "{kind} stored: {statuses:?}");
    }
    h.cleanup().await;
}

#[tokio::test]
async fn duplicates_are_stored_once_and_late_events_never_move_a_call_back() {
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    let seq = [
        event("u1", "started", "2026-11-22T10:00:00.000Z"),
        event("u1", "answered", "2026-11-22T10:00:05.000Z"),
        serde_json::json!({ "uuid": "u1", "status": "completed", "timestamp": "2026-11-22T10:00:20.000Z",
                            "duration": "15", "price": "0.00450000" }),
        // Late and duplicated deliveries.
        event("u1", "ringing", "2026-11-22T10:00:02.000Z"),
        event("u1", "answered", "2026-11-22T10:00:05.000Z"),
        serde_json::json!({ "call_uuid": "u1", "status": "human", "timestamp": "2026-11-22T10:00:06.000Z" }),
    ];
    for e in seq {
        assert_eq!(h.post(id, 1, e).await, StatusCode::NO_CONTENT);
    }
    assert_eq!(h.state(id).await, ("completed".into(), Some(15), Some("human".into())));
    assert_eq!(h.events().await, 5, "the duplicate 'answered' is stored once");
    let timeline: Vec<String> =
        sqlx::query_scalar("SELECT provider_status FROM call_timeline WHERE call_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(timeline, ["started", "ringing", "answered", "human", "completed"]);
    h.cleanup().await;
}

#[tokio::test]
async fn a_busy_after_a_bare_completed_wins_and_unknown_calls_are_flagged() {
    let h = harness_with(&[]).await;
    sqlx::query("UPDATE campaigns SET max_attempts = 1").execute(&h.db.pool).await.unwrap();
    let id = h.call("+14155550001", "placed", 1).await;
    assert_eq!(
        h.post(id, 1, event("u1", "completed", "2026-11-22T10:00:10.000Z")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.post(id, 1, event("u1", "busy", "2026-11-22T10:00:09.000Z")).await, StatusCode::NO_CONTENT);
    assert_eq!(h.state(id).await.0, "busy");

    let stranger = CallId(uuid::Uuid::new_v4());
    assert_eq!(
        h.post(stranger, 1, event("u9", "ringing", "2026-11-22T10:00:00.000Z")).await,
        StatusCode::NO_CONTENT
    );
    let flagged: bool =
        sqlx::query_scalar("SELECT unknown_call FROM call_events WHERE dedupe_key LIKE 'vonage:u9:%'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(flagged);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nul_is_stored_cleaned_and_one_refused_event_never_fails_its_batch() {
    let h = harness_with(&["--batch-window", "50ms", "--max-body-bytes", "65536"]).await;
    // A NUL in a signed event's strings: PostgreSQL refuses it in JSONB, so
    // it used to answer 503 for ever. Stored, with U+FFFD in its place.
    let id = h.call("+14155554100", "placed", 1).await;
    let mut with_nul = event("u-nul", "ringing", "2026-11-22T10:00:00.000Z");
    with_nul["network"] = serde_json::json!("GB\u{0}FIXED");
    assert_eq!(h.post(id, 1, with_nul).await, StatusCode::NO_CONTENT);
    assert_eq!(h.state(id).await.0, "ringing");
    let stored: String = sqlx::query_scalar(
        "SELECT payload->>'network' FROM call_events WHERE dedupe_key LIKE 'vonage:u-nul:%'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, "GB\u{FFFD}FIXED");

    // One event the database refuses (a call uuid too long for the event
    // index) among 30 good ones in the same group commit: the good ones are
    // stored and answered 204; only it gets 503.
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(h.call(&format!("+1415555{:04}", 4200 + i), "placed", 1).await);
    }
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let app = h.app.clone();
        let body = event(&format!("g{i}"), "ringing", "2026-11-22T10:00:01.000Z").to_string();
        let token = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
        let request = event_request(*id, 1, body, Some(format!("Bearer {token}")));
        tasks.push(tokio::spawn(async move { app.oneshot(request).await.unwrap().status() }));
    }
    let bad = {
        let app = h.app.clone();
        // Random hex does not compress below PostgreSQL's ~2.7 KB B-tree limit.
        let long: String = (0..250).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
        let body = event(&long, "ringing", "2026-11-22T10:00:01.000Z").to_string();
        let token = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
        let request = event_request(ids[0], 1, body, Some(format!("Bearer {token}")));
        tokio::spawn(async move { app.oneshot(request).await.unwrap().status() })
    };
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::NO_CONTENT);
    }
    assert_eq!(bad.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    let ringing: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE state = 'ringing'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(ringing, 31);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_events_are_group_committed_and_all_stored() {
    let h = harness_with(&["--batch-window", "20ms"]).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(h.call(&format!("+1415555{:04}", 4000 + i), "placed", 1).await);
    }
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for (j, status) in ["ringing", "answered"].into_iter().enumerate() {
            let app = h.app.clone();
            let body = event(&format!("u{i}"), status, &format!("2026-11-22T10:00:0{j}.000Z")).to_string();
            let token = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
            let request = event_request(*id, 1, body, Some(format!("Bearer {token}")));
            tasks.push(tokio::spawn(async move { app.oneshot(request).await.unwrap().status() }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::NO_CONTENT);
    }
    assert_eq!(h.events().await, 80);
    let answered: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE state = 'answered'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(answered, 40);
    // Far fewer transactions than events. The recorder is shared by the tests
    // of this binary, which send a few dozen events one at a time.
    let metrics = tocsin_core::telemetry::metrics_handle().render();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing in {metrics}"))
    };
    let (batches, events) =
        (value("tocsin_webhook_batch_size_count"), value("tocsin_webhook_batch_size_sum"));
    assert!(events >= 80.0 && batches < 60.0, "{batches} batches for {events} events");
    h.cleanup().await;
}

#[tokio::test]
async fn without_the_database_events_get_503_so_the_provider_retries() {
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    // Terminate every connection and forbid new ones to the test database.
    let admin = sqlx::PgPool::connect(&tocsin_core::config::test_env::database_url()).await.unwrap();
    let name = h.db.name.clone();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false")))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    let started = Instant::now();
    let status = h.post(id, 1, event("u1", "ringing", "2026-11-22T10:00:00.000Z")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(10));
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true")))
        .execute(&admin)
        .await
        .unwrap();
    // Once the database is back, the provider's retry is stored.
    assert_eq!(
        h.post(id, 1, event("u1", "ringing", "2026-11-22T10:00:00.000Z")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.state(id).await.0, "ringing");
    h.cleanup().await;
}

#[tokio::test]
async fn busy_calls_are_redialled_after_the_retry_delay_and_late_events_stay_out() {
    let h = harness().await;
    let id = h.call("+14155550001", "placed", 1).await;
    assert_eq!(h.post(id, 1, event("u1", "busy", "2026-11-22T10:00:03.000Z")).await, StatusCode::NO_CONTENT);
    assert_eq!(h.state(id).await.0, "retry_wait");
    // A late event of attempt 1 does not disturb the wait.
    assert_eq!(
        h.post(id, 1, event("u1", "completed", "2026-11-22T10:00:04.000Z")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.state(id).await.0, "retry_wait");

    // The next attempt arrives in the work queue after the 1 s delay tier.
    let job = h.next_job().await;
    assert_eq!((job.call_id, job.attempt), (id, 2));

    // With max_attempts reached, a second busy is final.
    // A worker claims attempt 2 and places it.
    assert!(calls::claim(&h.db.pool, id, 2, Provider::Vonage, "t2").await.unwrap());
    calls::record_placed(&h.db.pool, id, "u2").await.unwrap();
    assert_eq!(h.post(id, 2, event("u2", "busy", "2026-11-22T10:01:00.000Z")).await, StatusCode::NO_CONTENT);
    assert_eq!(h.state(id).await.0, "busy");
    let attempts: (i32, String) =
        sqlx::query_as("SELECT attempts, final_state FROM call_attempts WHERE number = '+14155550001'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, (2, "busy".into()));
    h.cleanup().await;
}

#[tokio::test]
async fn vonage_events_are_refused_where_vonage_has_no_secret_and_a_service_needs_one_secret() {
    let none = webhook::config::WebhookConfig::try_parse_from(["webhook"]).unwrap();
    let error = none.validate().unwrap_err().to_string();
    assert!(error.contains("TOCSIN_VONAGE_SIGNATURE_SECRET") && error.contains("insecure"), "{error}");

    // A Twilio-only service: a Vonage event, however it is signed, gets 401.
    let twilio_only = common::App::start_with(
        "hook-twilio-only",
        &["--twilio-account-sid", "AC00000000000000000000000000000000", "--twilio-auth-token", "token"],
    )
    .await;
    twilio_only.config().validate().unwrap();
    let app = twilio_only.app.clone();
    let body = event("u1", "ringing", "2026-11-22T10:00:00.000Z").to_string();
    let token = tocsin_core::vonage::sign_webhook("anything", "app", body.as_bytes());
    let request = event_request(CallId(uuid::Uuid::new_v4()), 1, body, Some(format!("Bearer {token}")));
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    twilio_only.cleanup().await;
}

/// A Vonage application key in a file, for the look-ups of unsigned events.
fn vonage_key_file() -> std::path::PathBuf {
    let keys = simulator::keygen::generate().unwrap();
    let path = std::env::temp_dir().join(format!("tocsin-webhook-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, keys.private_pem).unwrap();
    path
}

fn unsigned_request(id: CallId, body: serde_json::Value) -> Request<Body> {
    event_request(id, 1, body.to_string(), None)
}

#[tokio::test]
async fn an_unsigned_event_is_confirmed_with_vonage_and_only_vonages_answer_applies() {
    use wiremock::matchers::{header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // An application without signed_callbacks: Vonage posts events with no
    // Authorization header. Only the uuid is taken from them.
    let vonage = MockServer::start().await;
    let key = vonage_key_file();
    let h = harness_with(&[
        "--vonage-application-id",
        "app-1",
        "--vonage-private-key-path",
        key.to_str().unwrap(),
        "--vonage-api-url",
        &vonage.uri(),
    ])
    .await;
    let id = h.call("+14155550001", "placed", 1).await;
    let ours = "63f61863-4a51-4f6b-86e1-46edebcf9356";
    let theirs = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab";
    let gone = "bbbbbbbb-bbbb-cccc-dddd-0123456789ab";
    let down = "cccccccc-bbbb-cccc-dddd-0123456789ab";
    let detail = |uuid: &str, status: &str, number: &str| {
        serde_json::json!({ "uuid": uuid, "conversation_uuid": "CON-1", "status": status, "direction": "outbound",
                            "to": { "type": "phone", "number": number }, "from": { "type": "phone", "number": "14155550100" } })
    };
    for (uuid, response) in [
        (ours, ResponseTemplate::new(200).set_body_json(detail(ours, "ringing", "14155550001"))),
        (theirs, ResponseTemplate::new(200).set_body_json(detail(theirs, "completed", "14155559999"))),
        (gone, ResponseTemplate::new(404)),
        (down, ResponseTemplate::new(503)),
    ] {
        Mock::given(method("GET"))
            .and(path(format!("/v1/calls/{uuid}")))
            .and(header_exists("authorization"))
            .respond_with(response)
            .mount(&vonage)
            .await;
    }
    // The body claims completed after 999 s; Vonage says ringing: ringing it is.
    let claim = |uuid: &str| serde_json::json!({ "uuid": uuid, "status": "completed", "duration": "999", "timestamp": "2026-11-22T10:00:00.000Z" });
    assert_eq!(h.send(unsigned_request(id, claim(ours))).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.state(id).await, ("ringing".into(), None, None));
    // Forged: a call Vonage does not have, a real call to another number,
    // no uuid at all. Nothing stored, nothing changed.
    for body in
        [claim(gone), claim(theirs), serde_json::json!({ "status": "completed" }), claim("not-a-uuid")]
    {
        let (status, text) = h.send(unsigned_request(id, body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body} {text}");
    }
    // Vonage cannot be asked: 503, so Vonage sends the event again.
    assert_eq!(h.send(unsigned_request(id, claim(down))).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.events().await, 1);
    assert_eq!(h.state(id).await.0, "ringing");
    h.cleanup().await;

    // Strict mode: every unsigned event is refused, Vonage never asked.
    let strict = harness_with(&[
        "--vonage-application-id",
        "app-1",
        "--vonage-private-key-path",
        key.to_str().unwrap(),
        "--vonage-api-url",
        &vonage.uri(),
        "--vonage-unsigned-events",
        "refuse",
    ])
    .await;
    let id = strict.call("+14155550001", "placed", 1).await;
    let asked = vonage.received_requests().await.unwrap().len();
    assert_eq!(strict.send(unsigned_request(id, claim(ours))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(vonage.received_requests().await.unwrap().len(), asked);
    assert_eq!(strict.events().await, 0);
    strict.cleanup().await;

    // Within Vonage's REST rate (15 requests/s per account, create-call
    // excluded): past this replica's share, 503 and Vonage asks again later.
    let slow = harness_with(&[
        "--vonage-application-id",
        "app-1",
        "--vonage-private-key-path",
        key.to_str().unwrap(),
        "--vonage-api-url",
        &vonage.uri(),
        "--vonage-confirm-rate",
        "1",
    ])
    .await;
    let a = slow.call("+14155550001", "placed", 1).await;
    let b = slow.call("+14155550002", "placed", 1).await;
    assert_eq!(slow.send(unsigned_request(a, claim(ours))).await.0, StatusCode::NO_CONTENT);
    assert_eq!(slow.send(unsigned_request(b, claim(ours))).await.0, StatusCode::SERVICE_UNAVAILABLE);
    slow.cleanup().await;
    let _ = std::fs::remove_file(key);
}

#[tokio::test]
async fn an_event_changes_only_the_call_whose_url_token_it_carries_and_the_answer_needs_it_too() {
    let h = harness().await;
    // A call still waiting (queued: never claimed, no token) and one a
    // worker claimed for attempt 1 with its token.
    let waiting = h.call("+14155550001", "queued", 0).await;
    let claimed = h.call("+14155550002", "queued", 0).await;
    assert!(calls::claim(&h.db.pool, claimed, 1, Provider::Vonage, "a1b2c3").await.unwrap());

    // A correctly signed `completed` of some call, replayed to the waiting
    // call's URL (its call id is UUID v5 of the campaign and the number):
    // stored, flagged, and the call is still waiting (it used to complete).
    let replay = event("u-other", "completed", "2026-11-22T10:00:00.000Z");
    let body = replay.to_string();
    let token = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
    let request = Request::post(format!("/vonage/events?call_id={waiting}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body))
        .unwrap();
    assert_eq!(h.send(request).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.state(waiting).await.0, "queued");
    let flagged: bool =
        sqlx::query_scalar("SELECT unknown_call FROM call_events WHERE dedupe_key LIKE 'vonage:u-other:%'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(flagged);

    // The claimed call: a wrong or missing token changes nothing, its own token does.
    let post = |token: Option<&str>, status: &str, ts: &str| {
        let body = event("u-2", status, ts).to_string();
        let signed = tocsin_core::vonage::sign_webhook(SECRET, "app", body.as_bytes());
        let query = token.map(|t| format!("&token={t}")).unwrap_or_default();
        Request::post(format!("/vonage/events?call_id={claimed}&attempt=1{query}"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {signed}"))
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        h.send(post(Some("wrong"), "ringing", "2026-11-22T10:00:01.000Z")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.send(post(None, "answered", "2026-11-22T10:00:02.000Z")).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.state(claimed).await.0, "dialing");
    assert_eq!(
        h.send(post(Some("a1b2c3"), "ringing", "2026-11-22T10:00:03.000Z")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.state(claimed).await.0, "ringing");

    // The answer document (the message) only with the attempt's token.
    let answer = |id: CallId, token: &str| {
        Request::get(format!("/vonage/answer?call_id={id}&token={token}")).body(Body::empty()).unwrap()
    };
    let (status, body) = h.send(answer(claimed, "wrong")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.contains("Flood"), "{body}");
    assert_eq!(
        h.send(Request::get(format!("/vonage/answer?call_id={claimed}")).body(Body::empty()).unwrap())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.send(answer(waiting, "")).await.0, StatusCode::NOT_FOUND);
    let (status, body) = h.send(answer(claimed, "a1b2c3")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Flood"), "{body}");
    h.cleanup().await;
}

#[tokio::test]
async fn with_rabbitmq_down_events_are_stored_and_their_redials_wait_in_the_outbox() {
    use std::sync::Arc;
    use webhook::store::{BatchConfig, CallProof, EventStore, RedialPublisher, Stored, StoredEvent};
    let h = harness().await;
    let busy = h.call("+14155550001", "placed", 1).await;
    let other = h.call("+14155550002", "placed", 1).await;
    // A broker nobody answers on: the redial cannot be published now.
    let down =
        Arc::new(RedialPublisher::new("amqp://guest:guest@127.0.0.1:1/%2f".into(), Topology::new(&h.prefix)));
    let store = EventStore::start(h.db.pool.clone(), Some(down), BatchConfig::default());
    let stored = |id: CallId, uuid: &str, status: &str| StoredEvent {
        proof: CallProof::Signed,
        provider: "vonage",
        dedupe_key: format!("vonage:{uuid}:{status}"),
        status: status.into(),
        payload: serde_json::json!({ "status": status }),
        call: calls::Event {
            call_id: Some(id),
            attempt: Some(1),
            provider_call_id: Some(uuid.into()),
            state: Some(status.parse().unwrap()),
            occurred_at: Some(chrono::Utc::now()),
            duration_secs: None,
            price: None,
            answered_by: None,
            detail: None,
        },
    };
    // The busy event (which calls for a redial) and an unrelated one: both
    // stored and answered; they used to fail together with 503.
    let (a, b) =
        tokio::join!(store.store(stored(busy, "u1", "busy")), store.store(stored(other, "u2", "ringing")));
    assert_eq!((a.unwrap(), b.unwrap()), (Stored::Applied, Stored::Applied));
    assert_eq!(h.state(busy).await.0, "retry_wait");
    assert_eq!(h.state(other).await.0, "ringing");
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM redial_outbox WHERE call_id = $1")
        .bind(busy)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(waiting, 1);

    // The broker is back (here: a publisher that reaches it): the outbox is
    // published and emptied, and the redial reaches the work queue.
    let up = RedialPublisher::new(h.amqp_url.clone(), Topology::new(&h.prefix));
    assert_eq!(up.publish_outbox(&h.db.pool).await.unwrap(), 1);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM redial_outbox").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(left, 0);
    let job = h.next_job().await;
    assert_eq!((job.call_id, job.attempt), (busy, 2));
    h.cleanup().await;
}
