//! SIGTERM drain against the real services: the worker stops taking jobs,
//! finishes the calls in flight, records and acks them, and exits within the
//! grace period; jobs it never started stay in the queue.

use std::time::{Duration, Instant};

use clap::Parser;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use tocsin_core::queue::{Publisher, Topology};
use tocsin_core::testing::{self, TestDb};
use tocsin_core::{CallJob, CampaignId, PhoneNumber};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_calls_and_leaves_the_rest_queued() {
    tocsin_core::telemetry::install_crypto_provider();
    let db = TestDb::create().await;
    let amqp_url = testing::amqp_url().await;
    let redis_url = testing::redis_url().await;
    let prefix = testing::unique_prefix("drain");
    let mock = MockServer::start().await;
    // Every create-call takes 1.5 s to answer.
    Mock::given(method("POST"))
        .and(path("/v1/calls"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(serde_json::json!({"uuid": "u", "status": "started", "direction": "outbound", "conversation_uuid": "c"}))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&mock)
        .await;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.pem"), simulator::keygen::generate().unwrap().private_pem).unwrap();

    let campaign = CampaignId::from_name("drain");
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'drain', 'hi', '+14155550100')",
    )
    .bind(campaign)
    .execute(&db.pool)
    .await
    .unwrap();
    let conn = tocsin_core::queue::connect(&amqp_url, "drain-test").await.unwrap();
    let topology = Topology::new(&prefix);
    let channel = conn.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    let publisher = Publisher::new(&conn, topology.clone()).await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..6 {
        let to = PhoneNumber::from_e164(&format!("+1415555{:04}", 3000 + i)).unwrap();
        let job = CallJob::new(campaign, to.clone(), 1);
        sqlx::query("INSERT INTO calls (id, campaign_id, number) VALUES ($1, $2, $3)")
            .bind(job.call_id)
            .bind(campaign)
            .bind(to.as_str())
            .execute(&db.pool)
            .await
            .unwrap();
        jobs.push(job);
    }
    publisher.publish_all(&jobs).await.unwrap();

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
        "1000",
        "--prefetch",
        "4",
        "--shutdown-grace",
        "10s",
        "--http-addr",
        "127.0.0.1:0",
        "--vonage-api-url",
        &mock.uri(),
        "--vonage-application-id",
        "drain-app",
        "--vonage-private-key-path",
        dir.join("key.pem").to_str().unwrap(),
    ])
    .unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(worker::run(config, stop.clone()));

    // Wait until four create-call requests are at the provider, then "SIGTERM".
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.received_requests().await.unwrap_or_default().len() < 4 {
        assert!(Instant::now() < deadline, "calls never went in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    stop.cancel();
    worker.await.unwrap().unwrap();
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(5), "drain took {took:?}");

    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM calls GROUP BY state ORDER BY state")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(states, vec![("placed".into(), 4), ("queued".into(), 2)]);
    assert_eq!(mock.received_requests().await.unwrap().len(), 4);

    // The two jobs it never started are still in the work queue.
    let queue = channel
        .queue_declare(
            topology.work_queue().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 2);
    topology.delete(&channel).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    tocsin_core::testing::assert_help_hides_secrets(env!("CARGO_BIN_EXE_worker"), &["--help"]);
}
