//! The worker's decisions, one job at a time, against the real PostgreSQL
//! and Redis, with the provider played by `wiremock` (the only part that
//! cannot run here for real in these failure modes).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tocsin_core::account::{Limits, Rate};
use tocsin_core::calls;
use tocsin_core::config::VonageCredentials;
use tocsin_core::limiter::{Limiter, RedisLimiter};
use tocsin_core::provider::{Provider, VoiceProvider};
use tocsin_core::queue::DelayTier;
use tocsin_core::route::AccountName;
use tocsin_core::testing::{self, TestDb};
use tocsin_core::{CallJob, CallState, CampaignId, PhoneNumber, vonage};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};
use worker::process::{Account, Deps, Outcome, Settings, process};

struct Harness {
    db: TestDb,
    mock: MockServer,
    deps: Deps,
    campaign: CampaignId,
}

async fn harness(settings: Settings) -> Harness {
    tocsin_core::telemetry::install_crypto_provider();
    let db = TestDb::create().await;
    let redis_url = testing::redis_url().await;
    let mock = MockServer::start().await;
    let keys = simulator::keygen::generate().unwrap();
    let credentials = VonageCredentials {
        api_url: mock.uri(),
        application_id: format!("app-{}", uuid::Uuid::new_v4().simple()),
        private_key_pem: SecretString::from(keys.private_pem),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let client: Arc<dyn VoiceProvider> = Arc::new(vonage::Client::new(http.clone(), &credentials).unwrap());
    let telnyx_credentials = tocsin_core::config::TelnyxCredentials {
        api_url: mock.uri(),
        api_key: SecretString::from("KEY1".to_owned()),
        connection_id: "conn".into(),
    };
    let telnyx: Arc<dyn VoiceProvider> =
        Arc::new(tocsin_core::telnyx::Client::new(http, &telnyx_credentials));
    let limits = Limits { rate: Rate::per_second(1000.0), max_concurrent: None };
    let accounts = vec![
        Account { name: AccountName::default_of(Provider::Vonage), client, limits },
        Account { name: AccountName::default_of(Provider::Telnyx), client: telnyx, limits },
    ];
    let conn = RedisLimiter::connect(&redis_url).await.unwrap();
    let prefix = testing::unique_prefix("worker");
    let limiter = Limiter::new(
        RedisLimiter::new(conn, &prefix, 1000.0, Duration::from_secs(5)),
        1000.0,
        1,
        Duration::from_secs(5),
    );
    let deps = Deps::new(db.pool.clone(), limiter, accounts, settings, CancellationToken::new());
    let campaign = CampaignId::from_name("worker-test");
    sqlx::query("INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'worker-test', 'hello', '+14155550100')")
        .bind(campaign)
        .execute(&db.pool)
        .await
        .unwrap();
    Harness { db, mock, deps, campaign }
}

impl Harness {
    async fn job(&self, number: &str) -> CallJob {
        self.job_in_zone(number, None).await
    }

    /// A contact with its own time zone (as a list's time zone column gives).
    async fn job_in_zone(&self, number: &str, zone: Option<&str>) -> CallJob {
        let to = PhoneNumber::from_e164(number).unwrap();
        let job = CallJob::new(self.campaign, to, 1);
        sqlx::query("INSERT INTO calls (id, campaign_id, number, timezone) VALUES ($1, $2, $3, $4)")
            .bind(job.call_id)
            .bind(self.campaign)
            .bind(number)
            .bind(zone)
            .execute(&self.db.pool)
            .await
            .unwrap();
        job
    }

    async fn row(&self, job: &CallJob) -> (String, i32, Option<String>, Option<String>) {
        sqlx::query_as("SELECT state, attempt, provider_call_id, error_code FROM calls WHERE id = $1")
            .bind(job.call_id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn set_campaign(&self, sql_set: &'static str) {
        let sql = match sql_set {
            "paused" => "UPDATE campaigns SET status = 'paused' WHERE id = $1",
            "cancelled" => "UPDATE campaigns SET status = 'cancelled' WHERE id = $1",
            "closed-window" => {
                "UPDATE campaigns SET window_start = (now() AT TIME ZONE 'UTC')::time + interval '2 hours', \
                 window_end = (now() AT TIME ZONE 'UTC')::time + interval '3 hours' WHERE id = $1"
            }
            _ => unreachable!(),
        };
        sqlx::query(sql).bind(self.campaign).execute(&self.db.pool).await.unwrap();
    }

    async fn mock_create(&self, response: ResponseTemplate, times: u64) {
        Mock::given(method("POST"))
            .and(path("/v1/calls"))
            .respond_with(response)
            .expect(times)
            .mount(&self.mock)
            .await;
    }
}

fn created(uuid: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(serde_json::json!({
        "uuid": uuid, "status": "started", "direction": "outbound", "conversation_uuid": "CON-1"
    }))
}

fn problem(status: u16, title: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "type": "https://developer.nexmo.com/api-errors#x", "title": title, "detail": format!("{title} detail")
    }))
}

#[tokio::test]
async fn a_placed_call_is_recorded_and_a_duplicate_job_does_not_call_again() {
    let h = harness(Settings::default()).await;
    h.mock_create(created("uuid-1"), 1).await;
    let job = h.job("+14155550001").await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&job).await, ("placed".into(), 1, Some("uuid-1".into()), None));
    // The same job again (a redelivery or a duplicate publish): no second call.
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    h.mock.verify().await;
}

#[tokio::test]
async fn a_429_gives_the_claim_back_and_cools_every_worker_down() {
    let h = harness(Settings::default()).await;
    h.mock_create(problem(429, "Rate Limit Hit").insert_header("retry-after", "2"), 1).await;
    let job = h.job("+14155550002").await;
    let outcome = process(&h.deps, &job).await.unwrap();
    assert!(matches!(outcome, Outcome::Delay(t) if t.duration() >= Duration::from_secs(2)), "{outcome:?}");
    // Not an attempt: back to queued, attempt 0.
    assert_eq!(h.row(&job).await.0, "queued");
    assert_eq!(h.row(&job).await.1, 0);
    // The shared cool-down pushes the next slot of the account out by ~2 s.
    let account = h.deps.accounts[&AccountName::default_of(Provider::Vonage)].key();
    match h.deps.limiter.reserve(&account).await {
        tocsin_core::limiter::Reservation::Granted(wait) => {
            assert!(wait > Duration::from_millis(1500), "{wait:?}")
        }
        other => panic!("{other:?}"),
    }
    h.mock.verify().await;
}

#[tokio::test]
async fn transient_failures_retry_with_backoff_until_the_bound() {
    let settings = Settings { max_transient_retries: 1, ..Settings::default() };
    let h = harness(settings).await;
    h.mock_create(problem(503, "Service Unavailable"), 2).await;
    let job = h.job("+14155550003").await;
    assert!(matches!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(_)));
    assert_eq!(h.row(&job).await.0, "queued");
    // Second failure exceeds the bound: failed, not retried forever.
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    let (state, _, _, code) = h.row(&job).await;
    assert_eq!((state.as_str(), code.as_deref()), ("failed", Some("transient_exhausted")));
    h.mock.verify().await;
}

#[tokio::test]
async fn a_permanent_error_fails_the_call_with_the_providers_reason() {
    let h = harness(Settings::default()).await;
    h.mock_create(problem(400, "Bad Request"), 1).await;
    let job = h.job("+14155550004").await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    let (state, _, _, code) = h.row(&job).await;
    assert_eq!((state.as_str(), code.as_deref()), ("failed", Some("400 x")));
    h.mock.verify().await;
}

#[tokio::test]
async fn repeated_401s_pause_the_account_instead_of_burning_the_list() {
    let h = harness(Settings { auth_failures_before_pause: 2, ..Settings::default() }).await;
    h.mock_create(problem(401, "Unauthorized"), 2).await;
    for n in ["+14155550011", "+14155550012"] {
        let job = h.job(n).await;
        assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
        assert_eq!(h.row(&job).await.0, "failed");
    }
    // The account is paused: the next job waits, untouched, without a request.
    let job = h.job("+14155550013").await;
    assert!(matches!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(_)));
    assert_eq!(h.row(&job).await.0, "queued");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_lost_answer_is_reconciled_with_the_provider_before_any_redial() {
    let h = harness(Settings { dialing_lease: Duration::ZERO, ..Settings::default() }).await;
    // The provider creates the call but its answer never arrives in time.
    h.mock_create(created("uuid-late").set_delay(Duration::from_secs(2)), 1).await;
    let job = h.job("+14155550005").await;
    assert!(matches!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(_)));
    let (state, _, _, code) = h.row(&job).await;
    assert_eq!((state.as_str(), code.as_deref()), ("dialing", Some("ambiguous")));
    // When the job comes back, the worker asks the provider, which has the call.
    Mock::given(method("GET"))
        .and(path("/v1/calls"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "count": 1, "page_size": 100, "record_index": 0,
            "_embedded": { "calls": [
                { "uuid": "uuid-other", "status": "completed", "to": { "type": "phone", "number": "14155550999" } },
                { "uuid": "uuid-late", "status": "ringing", "to": { "type": "phone", "number": "14155550005" } }
            ] }
        })))
        .mount(&h.mock)
        .await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&job).await, ("placed".into(), 1, Some("uuid-late".into()), None));
}

#[tokio::test]
async fn an_interrupted_dial_is_redialled_only_when_the_provider_has_no_call() {
    let h = harness(Settings { dialing_lease: Duration::ZERO, ..Settings::default() }).await;
    let job = h.job("+14155550006").await;
    // A worker claimed the call and died before recording anything.
    calls::stage(&h.db.pool, &[job.call_id], CallState::Dialing).await.unwrap();
    Mock::given(method("GET"))
        .and(path("/v1/calls"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "count": 0, "page_size": 100, "record_index": 0, "_embedded": { "calls": [] }
        })))
        .mount(&h.mock)
        .await;
    // Confirmed absent: released for a fresh dial…
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(DelayTier::S1));
    assert_eq!(h.row(&job).await.0, "queued");
    // …which then happens once.
    h.mock_create(created("uuid-2"), 1).await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&job).await.2.as_deref(), Some("uuid-2"));
    h.mock.verify().await;
}

#[tokio::test]
async fn reconciliation_never_records_another_rows_call_and_says_unknown_when_it_cannot_tell() {
    let h = harness(Settings { dialing_lease: Duration::ZERO, ..Settings::default() }).await;
    // Another campaign calls the same number; its call is on its own row.
    let other = CampaignId::from_name("worker-test-other");
    sqlx::query("INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'worker-test-other', 'hi', '+14155550100')")
        .bind(other)
        .execute(&h.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO calls (id, campaign_id, number, state, attempt, provider, provider_call_id) \
         VALUES ($1, $2, '+14155550010', 'placed', 1, 'vonage', 'uuid-theirs')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(other)
    .execute(&h.db.pool)
    .await
    .unwrap();
    let job = h.job("+14155550010").await;
    calls::stage(&h.db.pool, &[job.call_id], CallState::Dialing).await.unwrap();
    let listed = |uuids: &[&str]| {
        let calls: Vec<serde_json::Value> = uuids
            .iter()
            .map(|u| serde_json::json!({ "uuid": u, "status": "started", "to": { "type": "phone", "number": "14155550010" } }))
            .collect();
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "count": calls.len(), "page_size": 100, "record_index": 0, "_embedded": { "calls": calls }
        }))
    };
    // The only call the provider lists is the other campaign's: not ours,
    // so this attempt's call does not exist and the call is dialled again.
    let only_theirs =
        Mock::given(method("GET")).and(path("/v1/calls")).respond_with(listed(&["uuid-theirs"]));
    let guard = h.mock.register_as_scoped(only_theirs).await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(DelayTier::S1));
    assert_eq!(h.row(&job).await, ("queued".into(), 0, None, None), "never recorded with another row's call");
    drop(guard);

    // Two unowned calls fit this attempt's window: it cannot tell which is
    // its own, so the call is unknown for the operator, never a guess.
    calls::stage(&h.db.pool, &[job.call_id], CallState::Dialing).await.unwrap();
    Mock::given(method("GET"))
        .and(path("/v1/calls"))
        .respond_with(listed(&["uuid-theirs", "uuid-a", "uuid-b"]))
        .mount(&h.mock)
        .await;
    h.mock_create(created("never"), 0).await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    let (state, _, pcid, _) = h.row(&job).await;
    assert_eq!((state.as_str(), pcid), ("unknown", None));
    h.mock.verify().await;
}

#[tokio::test]
async fn an_interrupted_dial_becomes_unknown_when_the_provider_cannot_be_asked() {
    let h = harness(Settings { dialing_lease: Duration::ZERO, ..Settings::default() }).await;
    let job = h.job("+14155550007").await;
    calls::stage(&h.db.pool, &[job.call_id], CallState::Dialing).await.unwrap();
    Mock::given(method("GET"))
        .and(path("/v1/calls"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&h.mock)
        .await;
    h.mock_create(created("never"), 0).await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&job).await.0, "unknown");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_call_dialing_elsewhere_within_its_lease_is_left_alone() {
    let h = harness(Settings::default()).await;
    let job = h.job("+14155550008").await;
    calls::stage(&h.db.pool, &[job.call_id], CallState::Dialing).await.unwrap();
    h.mock_create(created("never"), 0).await;
    assert!(matches!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(_)));
    assert_eq!(h.row(&job).await.0, "dialing");
    h.mock.verify().await;
}

#[tokio::test]
async fn paused_campaigns_wait_cancelled_ones_cancel_and_closed_windows_delay() {
    let h = harness(Settings { campaign_ttl: Duration::ZERO, ..Settings::default() }).await;
    h.mock_create(created("never"), 0).await;
    let job = h.job("+14155550009").await;

    h.set_campaign("closed-window").await;
    let outcome = process(&h.deps, &job).await.unwrap();
    assert!(matches!(outcome, Outcome::Delay(t) if t.duration() >= Duration::from_secs(3600)), "{outcome:?}");

    h.set_campaign("paused").await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(DelayTier::S5));
    assert_eq!(h.row(&job).await.0, "queued");

    h.set_campaign("cancelled").await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&job).await.0, "cancelled");
    h.mock.verify().await;
}

#[tokio::test]
async fn past_the_deadline_no_call_starts_and_waiting_calls_expire() {
    let h = harness(Settings { campaign_ttl: Duration::ZERO, ..Settings::default() }).await;
    h.mock_create(created("never"), 0).await;
    let waiting = h.job("+14155550019").await;
    let paused = h.job("+14155550029").await;
    sqlx::query("UPDATE campaigns SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(h.campaign)
        .execute(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(process(&h.deps, &waiting).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&waiting).await.0, "expired");
    // Paused or not: the deadline ends the wait.
    h.set_campaign("paused").await;
    assert_eq!(process(&h.deps, &paused).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&paused).await.0, "expired");
    // A redial that comes round after the deadline is dropped too.
    assert_eq!(process(&h.deps, &waiting).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&waiting).await.0, "expired");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_contacts_own_time_zone_decides_its_calling_window() {
    let h = harness(Settings { campaign_ttl: Duration::ZERO, ..Settings::default() }).await;
    h.mock_create(created("uuid-tz"), 1).await;
    // The window is open now in UTC (the campaign's zone)…
    sqlx::query(
        "UPDATE campaigns SET timezone = 'UTC', \
         window_start = (now() AT TIME ZONE 'UTC')::time - interval '1 hour', \
         window_end = (now() AT TIME ZONE 'UTC')::time + interval '1 hour' WHERE id = $1",
    )
    .bind(h.campaign)
    .execute(&h.db.pool)
    .await
    .unwrap();
    // …but closed for a contact twelve hours away.
    let far = h.job_in_zone("+14155550021", Some("Etc/GMT-12")).await;
    assert!(matches!(process(&h.deps, &far).await.unwrap(), Outcome::Delay(_)));
    assert_eq!(h.row(&far).await.0, "queued");
    let near = h.job("+14155550022").await;
    assert_eq!(process(&h.deps, &near).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&near).await.0, "placed");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_contact_whose_own_window_is_open_is_called_while_the_campaigns_is_closed() {
    let h = harness(Settings { campaign_ttl: Duration::ZERO, ..Settings::default() }).await;
    h.mock_create(created("uuid-own-window"), 1).await;
    // The window is closed now in UTC (the campaign's zone)…
    sqlx::query(
        "UPDATE campaigns SET timezone = 'UTC', \
         window_start = (now() AT TIME ZONE 'Etc/GMT-12')::time - interval '1 hour', \
         window_end = (now() AT TIME ZONE 'Etc/GMT-12')::time + interval '1 hour' WHERE id = $1",
    )
    .bind(h.campaign)
    .execute(&h.db.pool)
    .await
    .unwrap();
    // …but open for a contact twelve hours away: the last check before the
    // slot must use the contact's zone too, or the job loops forever.
    let far = h.job_in_zone("+14155550023", Some("Etc/GMT-12")).await;
    assert_eq!(process(&h.deps, &far).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&far).await.0, "placed");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_campaign_row_with_an_unknown_time_zone_fails_its_calls_naming_the_column() {
    let h = harness(Settings { campaign_ttl: Duration::ZERO, ..Settings::default() }).await;
    h.mock_create(created("never"), 0).await;
    // Written by hand, past the producer's checks: never read as UTC.
    sqlx::query("UPDATE campaigns SET timezone = 'Mars/Olympus_Mons' WHERE id = $1")
        .bind(h.campaign)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let job = h.job("+14155550041").await;
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    let (state, _, _, code) = h.row(&job).await;
    assert_eq!((state.as_str(), code.as_deref()), ("failed", Some("bad_campaign")));
    let detail: String = sqlx::query_scalar("SELECT error_detail FROM calls WHERE id = $1")
        .bind(job.call_id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert!(detail.contains("timezone") && detail.contains("Mars/Olympus_Mons"), "{detail}");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_pause_while_a_job_waits_for_its_slot_stops_the_dial() {
    let h = harness(Settings { campaign_ttl: Duration::ZERO, ..Settings::default() }).await;
    h.mock_create(created("never"), 0).await;
    let job = h.job("+14155550031").await;
    // The account's next slot is 1.5 s away.
    let account = h.deps.accounts[&AccountName::default_of(Provider::Vonage)].key();
    h.deps.limiter.cool_down(&account, Duration::from_millis(1500)).await;
    let pool = h.db.pool.clone();
    let campaign = h.campaign;
    let pause = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sqlx::query("UPDATE campaigns SET status = 'paused' WHERE id = $1")
            .bind(campaign)
            .execute(&pool)
            .await
            .unwrap();
    });
    let started = std::time::Instant::now();
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Delay(DelayTier::S5));
    pause.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // The claim was given back: the call is waiting, not dialled.
    assert_eq!(h.row(&job).await.0, "queued");
    h.mock.verify().await;
}

#[tokio::test]
async fn a_number_put_on_the_do_not_call_list_while_its_call_waits_for_the_slot_is_not_dialled() {
    let h = harness(Settings::default()).await;
    h.mock_create(created("never"), 0).await;
    let job = h.job("+14155550032").await;
    // The account's next slot is 1.5 s away: the call is claimed and waits.
    let account = h.deps.accounts[&AccountName::default_of(Provider::Vonage)].key();
    h.deps.limiter.cool_down(&account, Duration::from_millis(1500)).await;
    let pool = h.db.pool.clone();
    let dnc = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sqlx::query("INSERT INTO do_not_call (number, reason) VALUES ('+14155550032', 'asked')")
            .execute(&pool)
            .await
            .unwrap();
    });
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    dnc.await.unwrap();
    let (state, _, _, code) = h.row(&job).await;
    assert_eq!((state.as_str(), code.as_deref()), ("skipped", Some("do_not_call")));
    h.mock.verify().await;
}

#[tokio::test]
async fn a_telnyx_call_left_by_a_dead_worker_is_sent_again_with_the_same_command_id_within_the_window() {
    use wiremock::matchers::body_string_contains;
    let h = harness(Settings::default()).await;
    sqlx::query("UPDATE campaigns SET provider = 'telnyx' WHERE id = $1")
        .bind(h.campaign)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let job = h.job("+14155550040").await;
    // A worker claimed the call and died; its job came back at once (well
    // within the 60 s Telnyx ignores a repeated command_id, and the lease).
    assert!(calls::claim(&h.db.pool, job.call_id, 1, Provider::Telnyx, "tok-1").await.unwrap());
    Mock::given(method("POST"))
        .and(path("/v2/calls"))
        .and(body_string_contains(tocsin_core::telnyx::dial_command_id(job.call_id, 1)))
        .and(body_string_contains("token=tok-1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "data": { "call_control_id": "v3:resent" } })),
        )
        .expect(1)
        .mount(&h.mock)
        .await;
    // It used to wait out the lease and end `unknown` (Telnyx cannot list calls).
    assert_eq!(process(&h.deps, &job).await.unwrap(), Outcome::Ack);
    assert_eq!(h.row(&job).await, ("placed".into(), 1, Some("v3:resent".into()), None));
    h.mock.verify().await;
}

/// A Redis server of the test's own, on a free port, that the test can
/// stop and start again (the shared one must stay up for everyone else).
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        });
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect(
                "redis-server not found: this test runs a Redis of its own (deploy/local/up.sh installs it)",
            );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capped_account_holds_its_lines_in_redis_and_counts_in_postgresql_while_redis_is_down() {
    let Harness { db, mock, mut deps, campaign } = harness(Settings::default()).await;
    Mock::given(method("POST")).and(path("/v1/calls")).respond_with(created("uuid-l")).mount(&mock).await;
    let vonage = AccountName::default_of(Provider::Vonage);
    let old = deps.accounts[&vonage].clone();
    let limits = Limits { rate: Rate::per_second(1000.0), max_concurrent: Some(1) };
    deps.accounts
        .insert(vonage.clone(), Arc::new(Account { name: vonage, client: old.client.clone(), limits }));
    let mut redis = OwnRedis::start(None);
    let conn = RedisLimiter::connect(&format!("redis://127.0.0.1:{}", redis.port)).await.unwrap();
    let lines = tocsin_core::lines::Lines::new(conn, "lines-test");
    deps.lines = Some(lines.clone());
    let deps = Arc::new(deps);
    let key = old.key();

    let job = |n: u32| {
        let pool = db.pool.clone();
        async move {
            let number = format!("+1415555{n:04}");
            let job = CallJob::new(campaign, PhoneNumber::from_e164(&number).unwrap(), 1);
            sqlx::query("INSERT INTO calls (id, campaign_id, number) VALUES ($1, $2, $3)")
                .bind(job.call_id)
                .bind(campaign)
                .bind(&number)
                .execute(&pool)
                .await
                .unwrap();
            job
        }
    };
    let state = |job: CallJob| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM calls WHERE id = $1")
                .bind(job.call_id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let end = |job: CallJob| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE calls SET state = 'completed' WHERE id = $1")
                .bind(job.call_id)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let spawn = |job: CallJob| {
        let deps = deps.clone();
        tokio::spawn(async move { process(&deps, &job).await.unwrap() })
    };

    // One line: the first call takes it, in Redis.
    let first = job(1).await;
    assert_eq!(process(&deps, &first).await.unwrap(), Outcome::Ack);
    assert_eq!(state(first.clone()).await, "placed");
    assert_eq!(lines.holders(&key).await.unwrap(), vec![first.call_id]);
    // The second waits, held, until the first call ends; then its line is freed and taken.
    let second = job(2).await;
    let waiting = spawn(second.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(second.clone()).await, "queued", "no free line: it waits");
    end(first.clone()).await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), Outcome::Ack);
    assert_eq!(state(second.clone()).await, "placed");
    assert_eq!(lines.holders(&key).await.unwrap(), vec![second.call_id]);

    // Redis goes down: calls in progress are counted in PostgreSQL instead.
    redis.stop();
    let third = job(3).await;
    let waiting = spawn(third.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state(third.clone()).await, "queued", "the second call still holds the one line");
    end(second.clone()).await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), Outcome::Ack);
    assert_eq!(state(third.clone()).await, "placed");

    // Redis is back (empty): the call placed meanwhile is adopted before
    // any new one takes a line, so the cap still holds.
    let _redis = OwnRedis::start(Some(redis.port));
    let fourth = job(4).await;
    let waiting = spawn(fourth.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        state(fourth.clone()).await,
        "queued",
        "the third call, placed while Redis was down, holds the line"
    );
    assert_eq!(lines.holders(&key).await.unwrap(), vec![third.call_id], "adopted");
    end(third).await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), Outcome::Ack);
    assert_eq!(state(fourth).await, "placed");
}
