//! One broadcast end to end: the producer enqueues a contact list, two
//! workers place the calls through the simulator (Vonage API, real HTTP),
//! the simulator fetches the NCCO and posts signed events to the webhook
//! service, and PostgreSQL ends up with every call's outcome. Runs against
//! the real PostgreSQL, RabbitMQ and Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};
use tokio_util::sync::CancellationToken;

const MESSAGE: &str = "Test alert: the river is rising <fast> & \"now\".";
const SECRET: &str = "e2e-signature-secret";
const APP: &str = "e2e-app";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broadcast_reaches_every_contact_once_with_every_event_stored() {
    tocsin_core::telemetry::install_crypto_provider();
    let db = TestDb::create().await;
    let amqp_url = testing::amqp_url().await;
    let redis_url = testing::redis_url().await;
    let prefix = testing::unique_prefix("e2e");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = simulator::keygen::generate().unwrap();
    std::fs::write(dir.join("private.pem"), &keys.private_pem).unwrap();
    std::fs::write(dir.join("public.pem"), &keys.public_pem).unwrap();
    let stop = CancellationToken::new();

    // Simulator: Vonage at 50 calls/s, time compressed fifty-fold.
    let sim_config = match simulator::config::Cli::try_parse_from([
        "simulator",
        "serve",
        "--vonage-public-key-path",
        dir.join("public.pem").to_str().unwrap(),
        "--vonage-application-id",
        APP,
        "--vonage-signature-secret",
        SECRET,
        "--vonage-rate",
        "50",
        "--time-scale",
        "0.02",
    ])
    .unwrap()
    .command
    {
        simulator::config::Command::Serve(c) => c,
        simulator::config::Command::Keygen { .. } => unreachable!(),
    };
    let (sim_listener, sim_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let sim = tokio::spawn(simulator::run(sim_config, sim_listener, stop.clone()));

    // Webhook service, verifying signatures.
    let hook_config = webhook::config::WebhookConfig::try_parse_from([
        "webhook",
        "--database-url",
        db.url.expose_secret(),
        "--vonage-signature-secret",
        SECRET,
    ])
    .unwrap();
    let (hook_listener, hook_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let hook = tokio::spawn(webhook::run(hook_config, hook_listener, stop.clone()));

    // Two workers sharing the Redis limiter at 50/s.
    let mut workers = Vec::new();
    for _ in 0..2 {
        let config = worker::config::WorkerConfig::try_parse_from([
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
            "--rate-per-sec",
            "50",
            "--http-addr",
            "127.0.0.1:0",
            "--public-url",
            &format!("http://{hook_addr}"),
            "--vonage-api-url",
            &format!("http://{sim_addr}"),
            "--vonage-application-id",
            APP,
            "--vonage-private-key-path",
            dir.join("private.pem").to_str().unwrap(),
        ])
        .unwrap();
        workers.push(tokio::spawn(worker::run(config, stop.clone())));
    }

    // 50 valid contacts, plus an invalid line and a duplicate.
    let mut csv = String::from("name,number\n");
    let mut expected: HashMap<String, &str> = HashMap::new();
    for i in 0..50 {
        let number = format!("+1415555{:04}", 2600 + i);
        let state = match number.as_bytes()[number.len() - 1] {
            b'7' => "busy",
            b'8' => "no_answer",
            _ => "completed",
        };
        expected.insert(number.clone(), state);
        csv.push_str(&format!("Contact {i},{number}\n"));
    }
    csv.push_str("Broken,not-a-number\nAgain,+14155552600\n");
    let contacts = dir.join("contacts.csv");
    std::fs::write(&contacts, csv).unwrap();

    let cli = producer::config::Cli::try_parse_from([
        "producer",
        "--database-url",
        db.url.expose_secret(),
        "enqueue",
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &prefix,
        "--campaign",
        "e2e",
        "--contacts",
        contacts.to_str().unwrap(),
        "--message",
        MESSAGE,
        "--from",
        "+14155550100",
        "--vonage-application-id",
        APP,
    ])
    .unwrap();
    let producer::config::Command::Enqueue(args) = cli.command else { unreachable!() };
    let report = producer::enqueue(&db.pool, &args).await.unwrap();
    assert_eq!((report.read, report.new_contacts, report.published), (52, 50, 50));
    assert_eq!((report.invalid, report.duplicate), (1, 1));

    // A second run of the same command publishes nothing.
    let again = producer::enqueue(&db.pool, &args).await.unwrap();
    assert_eq!((again.new_contacts, again.published, again.already_enqueued), (0, 0, 50));

    // Wait until every call is terminal.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE call_state_rank(state) < 5")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} calls still not terminal after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last events land (each call's final event is what made it terminal,
    // but the simulator's stats count deliveries after the webhook answers).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rows: Vec<(String, String, i32, Option<String>, i64)> = sqlx::query_as(
        "SELECT k.number, k.state, k.attempt, k.provider_call_id, \
                (SELECT count(*) FROM call_events e WHERE e.call_id = k.id AND NOT e.unknown_call) \
         FROM calls k",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 50);
    for (number, state, attempt, provider_call_id, events) in &rows {
        assert_eq!(state, expected[number], "{number}");
        assert_eq!(*attempt, 1, "{number}");
        assert!(provider_call_id.is_some(), "{number} has no provider call id");
        // started, ringing, then answered + completed, or busy, or timeout.
        let want = if *state == "completed" { 4 } else { 3 };
        assert_eq!(*events, want, "{number}: events stored");
    }

    let stats: serde_json::Value =
        reqwest::get(format!("http://{sim_addr}/_sim/stats")).await.unwrap().json().await.unwrap();
    assert_eq!(stats["calls"], 50, "{stats}");
    assert_eq!(stats["distinct_numbers"], 50, "{stats}");
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    assert_eq!(stats["webhook_deliveries_failed"], 0, "{stats}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stats["webhook_deliveries_ok"].as_i64().unwrap(), stored, "every delivered event is stored");

    // Every answered call spoke the campaign's message, fetched from the NCCO.
    let calls: Vec<serde_json::Value> =
        reqwest::get(format!("http://{sim_addr}/_sim/calls")).await.unwrap().json().await.unwrap();
    let spoken: Vec<&serde_json::Value> = calls.iter().filter(|c| c["outcome"] == "answered").collect();
    assert!(!spoken.is_empty());
    for call in spoken {
        assert_eq!(call["spoken"], MESSAGE, "{call}");
    }

    stop.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }
    hook.await.unwrap().unwrap();
    sim.await.unwrap().unwrap();
    let conn = tocsin_core::queue::connect(&amqp_url, "e2e-cleanup").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    Topology::new(&prefix).delete(&channel).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
