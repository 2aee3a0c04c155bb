//! Every provider adapter end to end against the simulator, over real HTTP:
//! a campaign per provider through producer, workers, simulator and webhook
//! (signatures verified: the simulator signs each provider's way, the
//! webhook checks), with every call's outcome, every delivered event stored
//! and the spoken message checked; bad credentials fail calls permanently
//! (one request each, no retry loop) and missing secrets stop a binary at
//! start with the variable named. Runs against the real PostgreSQL,
//! RabbitMQ and Redis.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use common::{
    Credentials, Options, Stack, TELNYX_CONNECTION, TELNYX_KEY, TWILIO_SID, VONAGE_API_KEY,
    VONAGE_API_SECRET, VONAGE_APP,
};
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};
use tokio_util::sync::CancellationToken;

const MESSAGE: &str = "Provider test: the dam <gate> & \"spillway\" are open.";

/// The stack with the simulator's outcomes pinned by last digit.
async fn start(credentials: Credentials, sim_extra: &[&str], worker_extra: &[&str]) -> Stack {
    let mut sim = vec!["--pin", "7=busy,8=no_answer,9=failed,6=machine"];
    sim.extend(sim_extra);
    common::start(Options {
        credentials,
        sim_extra: sim.into_iter().map(str::to_owned).collect(),
        worker_extra: worker_extra.iter().map(|s| (*s).to_owned()).collect(),
        ..Options::default()
    })
    .await
}

/// Enqueues `numbers` as campaign `name` through `provider`.
async fn enqueue(stack: &Stack, name: &str, provider: &str, numbers: &[String]) {
    let mut csv = String::from("number\n");
    for n in numbers {
        csv.push_str(n);
        csv.push('\n');
    }
    let extra = ["--message", MESSAGE, "--provider", provider, "--machine-detection"];
    let args = stack.enqueue_args(name, &csv, &extra);
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!(report.published, numbers.len() as u64, "{name}");
}

/// Numbers ending in every digit (twice), distinct per campaign.
fn numbers(base: u32) -> Vec<String> {
    (0..20).map(|i| format!("+1415555{:04}", base + i)).collect()
}

/// number, state, attempt, provider call id, answered by, events stored.
type CallRow = (String, String, i32, Option<String>, Option<String>, i64);

fn expected_state(number: &str) -> &'static str {
    match number.as_bytes()[number.len() - 1] {
        b'7' => "busy",
        b'8' => "no_answer",
        b'9' => "failed",
        _ => "completed",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_completes_a_campaign_with_every_event_stored() {
    let stack = start(Credentials::Right, &[], &[]).await;
    for (i, provider) in ["vonage", "twilio", "telnyx"].into_iter().enumerate() {
        let numbers = numbers(3000 + 100 * i as u32);
        enqueue(&stack, provider, provider, &numbers).await;
        stack.wait_terminal(provider).await;
    }
    // The last events of each call land just after its terminal state.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let sim_calls = stack.sim_calls().await;
    let by_id: HashMap<&str, &serde_json::Value> =
        sim_calls.iter().map(|c| (c["provider_call_id"].as_str().unwrap(), c)).collect();
    for (i, provider) in ["vonage", "twilio", "telnyx"].into_iter().enumerate() {
        let rows: Vec<CallRow> = sqlx::query_as(
            "SELECT k.number, k.state, k.attempt, k.provider_call_id, k.answered_by, \
                    (SELECT count(*) FROM call_events e WHERE e.call_id = k.id AND NOT e.unknown_call) \
             FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1",
        )
        .bind(provider)
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 20, "{provider}");
        for (number, state, attempt, provider_call_id, answered_by, events) in &rows {
            assert!(numbers(3000 + 100 * i as u32).contains(number));
            assert_eq!(state, expected_state(number), "{provider} {number}");
            assert_eq!(*attempt, 1, "{provider} {number}");
            let id = provider_call_id.as_deref().unwrap_or_else(|| panic!("{provider} {number}: no call id"));
            let sim =
                by_id.get(id).unwrap_or_else(|| panic!("{provider} {number}: unknown to the simulator"));
            assert_eq!(sim["provider"], provider);
            assert_eq!(sim["to"], number.as_str());
            assert_eq!(sim["ended"], true, "{sim}");
            // Every event the simulator delivered (2xx) is stored, once, on its call.
            assert_eq!(*events, sim["events_sent"].as_i64().unwrap(), "{provider} {number}: {sim}");
            assert!(*events >= 2, "{provider} {number}: {events} events");
            if state == "completed" {
                assert_eq!(sim["spoken"], MESSAGE, "{provider} {number}: {sim}");
                assert_eq!(sim["answer_error"], serde_json::Value::Null, "{sim}");
                let want = if number.ends_with('6') { "machine" } else { "human" };
                assert_eq!(answered_by.as_deref(), Some(want), "{provider} {number}");
            }
        }
    }

    let stats = stack.sim_stats().await;
    for provider in ["vonage", "twilio", "telnyx"] {
        assert_eq!(stats["calls_per_provider"][provider], 20, "{stats}");
    }
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    assert_eq!(stats["webhook_deliveries_failed"], 0, "{stats}");
    assert_eq!(stats["rejected_4xx"], 0, "{stats}");
    assert_eq!(stats["answer_documents_invalid"], 0, "{stats}");
    // Telnyx: one speak per answered call and one hang-up after it.
    assert_eq!(stats["telnyx_commands"], 2 * 14, "{stats}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&stack.db.pool).await.unwrap();
    assert_eq!(stats["webhook_deliveries_ok"].as_i64().unwrap(), stored, "every delivered event is stored");

    // Forged or unsigned events are refused with 401, whatever the provider.
    let http = reqwest::Client::new();
    let hook = stack.hook_addr;
    let twilio = http
        .post(format!("http://{hook}/twilio/status?call_id=00000000-0000-0000-0000-000000000001"))
        .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
        .form(&[("CallSid", "CA1"), ("CallStatus", "completed")])
        .send()
        .await
        .unwrap();
    assert_eq!(twilio.status(), 401);
    let telnyx = http
        .post(format!("http://{hook}/telnyx/events"))
        .header(
            "telnyx-timestamp",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string(),
        )
        .header("telnyx-signature-ed25519", "AAAA")
        .body(r#"{"data":{"event_type":"call.hangup","id":"x","payload":{}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(telnyx.status(), 401);
    let vonage = http.post(format!("http://{hook}/vonage/events")).body("{}").send().await.unwrap();
    assert_eq!(vonage.status(), 401);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_credentials_fail_each_call_once_without_a_retry_loop() {
    let stack = start(Credentials::Wrong, &[], &[]).await;
    for (i, provider) in ["vonage", "twilio", "telnyx"].into_iter().enumerate() {
        // Two calls: fewer than the worker's consecutive-401 pause threshold.
        let numbers: Vec<String> = (0..2).map(|n| format!("+1415555{:04}", 4000 + 100 * i + n)).collect();
        enqueue(&stack, provider, provider, &numbers).await;
        stack.wait_terminal(provider).await;
        let rows: Vec<(String, i32, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT k.state, k.attempt, k.error_code, k.error_detail \
             FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1",
        )
        .bind(provider)
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 2);
        for (state, attempt, code, detail) in rows {
            assert_eq!(state, "failed", "{provider}: {code:?} {detail:?}");
            assert_eq!(attempt, 1, "{provider}");
            assert!(code.as_deref().is_some_and(|c| c.starts_with("401")), "{provider}: {code:?} {detail:?}");
        }
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["calls"], 0, "no call was created: {stats}");
    // One refused request per call: nothing was retried.
    assert_eq!(stats["rejected_4xx"], 6, "{stats}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secrets_stop_the_binaries_at_start_naming_the_variable() {
    let db = TestDb::create().await;
    let amqp_url = testing::amqp_url().await;
    let redis_url = testing::redis_url().await;
    let prefix = testing::unique_prefix("prov-cfg");
    // The Vonage application's public key given where its private key belongs.
    let public_pem = std::env::temp_dir().join(format!("{prefix}-public.pem"));
    std::fs::write(&public_pem, simulator::keygen::generate().unwrap().public_pem).unwrap();
    let public_pem = public_pem.to_str().unwrap().to_owned();
    for (flags, variable) in [
        (vec!["--twilio-account-sid", TWILIO_SID], "TOCSIN_TWILIO_AUTH_TOKEN"),
        (vec!["--telnyx-connection-id", TELNYX_CONNECTION], "TOCSIN_TELNYX_API_KEY"),
        (vec!["--vonage-application-id", VONAGE_APP], "TOCSIN_VONAGE_PRIVATE_KEY_PATH"),
        (
            vec!["--vonage-application-id", VONAGE_APP, "--vonage-private-key-path", &public_pem],
            "TOCSIN_VONAGE_PRIVATE_KEY_PATH",
        ),
    ] {
        let mut args = vec![
            "worker",
            "--database-url",
            db.url.expose_secret(),
            "--amqp-url",
            &amqp_url,
            "--queue-prefix",
            &prefix,
            "--redis-url",
            &redis_url,
            "--redis-prefix",
            &prefix,
            "--http-addr",
            "127.0.0.1:0",
        ];
        args.extend(flags);
        let config = worker::config::WorkerConfig::try_parse_from(args).unwrap();
        let result =
            tokio::time::timeout(Duration::from_secs(30), worker::run(config, CancellationToken::new()))
                .await;
        let error = format!("{:#}", result.expect("the worker should stop at once").unwrap_err());
        assert!(error.contains(variable), "{variable} not named in: {error}");
    }
    // The webhook service: Telnyx without its public key cannot verify events.
    let hook = webhook::config::WebhookConfig::try_parse_from([
        "webhook",
        "--vonage-signature-secret",
        "s",
        "--telnyx-connection-id",
        TELNYX_CONNECTION,
        "--telnyx-api-key",
        TELNYX_KEY,
    ])
    .unwrap();
    let error = hook.validate().unwrap_err().to_string();
    assert!(error.contains("TOCSIN_TELNYX_PUBLIC_KEY"), "{error}");
    let hook = webhook::config::WebhookConfig::try_parse_from([
        "webhook",
        "--vonage-signature-secret",
        "s",
        "--twilio-account-sid",
        TWILIO_SID,
    ])
    .unwrap();
    let error = hook.validate().unwrap_err().to_string();
    assert!(error.contains("TOCSIN_TWILIO_AUTH_TOKEN"), "{error}");
    let conn = tocsin_core::queue::connect(&amqp_url, "e2e-cleanup").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let _ = Topology::new(&prefix).delete(&channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_never_call_anyone_twice_and_every_call_still_ends_right() {
    // Lost responses (the call exists, the answer never comes), 5xx answers,
    // duplicated and reordered events. Workers give up on an answer after
    // 1 s and reconcile after a 2 s dialing lease: Vonage and Twilio by
    // listing calls, Telnyx by resending the same command_id.
    let stack = start(
        Credentials::Right,
        &[
            "--fault-lost-response-rate",
            "0.25",
            "--fault-timeout-after",
            "3s",
            "--fault-5xx-rate",
            "0.15",
            "--fault-duplicate-rate",
            "0.3",
            "--fault-reorder-rate",
            "0.3",
            "--seed",
            "7",
        ],
        &["--provider-timeout", "1s", "--dialing-lease", "2s"],
    )
    .await;
    for (i, provider) in ["vonage", "twilio", "telnyx"].into_iter().enumerate() {
        enqueue(&stack, provider, provider, &numbers(5000 + 100 * i as u32)).await;
    }
    for provider in ["vonage", "twilio", "telnyx"] {
        stack.wait_terminal(provider).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = stack.sim_stats().await;
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    assert_eq!(stats["calls"], 60, "{stats}");
    for counter in ["lost_responses", "server_errors_5xx", "duplicated_deliveries", "reordered_deliveries"] {
        assert!(stats[counter].as_u64().unwrap() > 0, "{counter}: {stats}");
    }
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT k.number, k.state, \
                (SELECT count(*) FROM call_events e WHERE e.call_id = k.id AND NOT e.unknown_call) \
         FROM calls k",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 60);
    for (number, state, events) in &rows {
        assert_eq!(state, expected_state(number), "{number}");
        assert!(*events >= 2, "{number}: {events} events");
    }
    // Duplicates were delivered, and stored once.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&stack.db.pool).await.unwrap();
    assert!(stats["webhook_deliveries_ok"].as_i64().unwrap() > stored, "{stats} vs {stored} stored");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telnyx_speaks_a_long_message_with_loop_and_a_refused_speak_fails_the_call() {
    let stack = start(Credentials::Right, &[], &[]).await;
    // 2,000 characters said three times: 6,000 in one speak would be over
    // Telnyx's 3,000-character payload limit; `loop` says it in full.
    let long = "Evacuate the valley now. ".repeat(80);
    let long = long.trim();
    assert_eq!(long.chars().count(), 1_999);
    let csv = "number\n+14155557100\n+14155557101\n";
    let args = stack.enqueue_args("long", csv, &["--message", long, "--provider", "telnyx", "--repeat", "3"]);
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 2);
    stack.wait_terminal("long").await;
    let heard = [long; 3].join(" ");
    let sim_calls = stack.sim_calls().await;
    let states: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT k.state, k.provider_call_id FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = 'long'",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    for (state, id) in &states {
        assert_eq!(state, "completed");
        let sim = sim_calls.iter().find(|c| c["provider_call_id"].as_str() == id.as_deref()).unwrap();
        assert_eq!(sim["spoken"], heard.as_str(), "heard in full, three times");
    }

    // A speak Telnyx refuses (here: a language it does not speak, as a row
    // saved before the check would hold) must not leave the callee in
    // silence and the call `completed`: hung up, recorded failed with
    // Telnyx's reason.
    let start_at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let args = stack.enqueue_args(
        "refused",
        "number\n+14155557200\n+14155557201\n",
        &["--message", MESSAGE, "--provider", "telnyx", "--start-at", &start_at],
    );
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 2);
    sqlx::query("UPDATE campaigns SET language = 'xx-XX' WHERE name = 'refused'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    stack.wait_terminal("refused").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT k.state, k.error_detail FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = 'refused'",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (state, reason) in &rows {
        assert_eq!(state, "failed");
        let reason = reason.as_deref().unwrap_or_default();
        assert!(reason.contains("speak refused") && reason.contains("10004"), "{reason}");
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_vonage_events_are_confirmed_with_vonage_and_the_command_turns_signing_on() {
    // An application as Vonage creates it: signed_callbacks off, every event
    // unsigned. The webhook confirms each with Vonage (GET /v1/calls/{uuid})
    // and applies only Vonage's answer; before, each got 401 and was lost.
    let stack = start(Credentials::Right, &["--vonage-unsigned-callbacks"], &[]).await;
    let first = numbers(7000);
    enqueue(&stack, "unsigned", "vonage", &first).await;
    stack.wait_terminal("unsigned").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT k.number, k.state, \
                (SELECT count(*) FROM call_events e WHERE e.call_id = k.id), \
                (SELECT count(*) FROM call_events e WHERE e.call_id = k.id AND e.dedupe_key LIKE '%:confirmed') \
         FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = 'unsigned'",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 20);
    for (number, state, events, confirmed) in &rows {
        assert_eq!(state, expected_state(number), "{number}");
        assert!(*events >= 1 && events == confirmed, "{number}: {events} events, {confirmed} confirmed");
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["webhook_deliveries_failed"], 0, "every unsigned event was taken: {stats}");

    // `producer vonage signed-callbacks` turns signing on through the Applications API.
    let sim = format!("http://{}", stack.sim_addr);
    let cli = producer::config::Cli::try_parse_from([
        "producer",
        "--database-url",
        "postgres://unused.invalid/none",
        "vonage",
        "signed-callbacks",
        "--vonage-api-url",
        &sim,
        "--vonage-application-id",
        VONAGE_APP,
        "--vonage-api-key",
        VONAGE_API_KEY,
        "--vonage-api-secret",
        VONAGE_API_SECRET,
    ])
    .unwrap();
    producer::run(cli, CancellationToken::new()).await.unwrap();
    let app: serde_json::Value = reqwest::Client::new()
        .get(format!("{sim}/v2/applications/{VONAGE_APP}"))
        .basic_auth(VONAGE_API_KEY, Some(VONAGE_API_SECRET))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app["capabilities"]["voice"]["signed_callbacks"], true, "{app}");
    enqueue(&stack, "signed", "vonage", &numbers(7100)).await;
    stack.wait_terminal("signed").await;
    let (events, confirmed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE e.dedupe_key LIKE '%:confirmed') \
         FROM call_events e JOIN calls k ON k.id = e.call_id JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = 'signed'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert!(
        events >= 40 && confirmed == 0,
        "signed events are verified, not looked up: {events} {confirmed}"
    );
    stack.stop().await;
}

/// A Telnyx account with 2 lines (Telnyx's cap at sign-up): the workers
/// never have more than 2 calls in progress, so the simulator, enforcing
/// the cap as Telnyx does, refuses none; every contact is reached. (Without
/// the workers' cap, 10 of these 12 calls fail at the simulator.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_call_cap_is_never_exceeded() {
    let stack =
        start(Credentials::Right, &["--telnyx-max-concurrent", "2"], &["--max-concurrent-calls", "telnyx=2"])
            .await;
    // Answered calls only, so each holds its line while the message plays.
    let numbers: Vec<String> = (0..12).map(|i| format!("+1415555{:04}", 3500 + 10 * i)).collect();
    enqueue(&stack, "capped", "telnyx", &numbers).await;
    stack.wait_terminal("capped").await;
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM calls ORDER BY number")
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(states, vec!["completed"; 12]);
    let stats = stack.sim_stats().await;
    assert_eq!(stats["concurrency_rejected"], 0, "{stats}");
    let most = stats["max_concurrent_calls_per_provider"]["telnyx"].as_u64().unwrap();
    assert!((1..=2).contains(&most), "{most} calls at once: {stats}");
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    stack.stop().await;
}
