//! A crash storm against the real services: workers SIGKILLed while they
//! hold a job return it to the broker each time, past the work queue's
//! delivery limit. The job must still be called, never dead-lettered.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use tocsin_core::limiter::RedisLimiter;
use tocsin_core::queue::{DELIVERY_LIMIT, Publisher, Topology};
use tocsin_core::testing::{self, TestDb};
use tocsin_core::{CallJob, CampaignId, PhoneNumber};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const APP: &str = "storm-app";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_workers_that_keep_dying_is_still_called() {
    tocsin_core::telemetry::install_crypto_provider();
    let db = TestDb::create().await;
    let amqp_url = testing::amqp_url().await;
    let redis_url = testing::redis_url().await;
    let prefix = testing::unique_prefix("storm");
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/calls"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "status": "started",
            "direction": "outbound", "conversation_uuid": "CON-1"
        })))
        .mount(&mock)
        .await;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, simulator::keygen::generate().unwrap().private_pem).unwrap();

    let campaign = CampaignId::from_name("storm");
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'storm', 'hi', '+14155550100')",
    )
    .bind(campaign)
    .execute(&db.pool)
    .await
    .unwrap();
    let to = PhoneNumber::from_e164("+14155554000").unwrap();
    let job = CallJob::new(campaign, to.clone(), 1);
    sqlx::query("INSERT INTO calls (id, campaign_id, number) VALUES ($1, $2, $3)")
        .bind(job.call_id)
        .bind(campaign)
        .bind(to.as_str())
        .execute(&db.pool)
        .await
        .unwrap();
    let conn = tocsin_core::queue::connect(&amqp_url, "storm-test").await.unwrap();
    let topology = Topology::new(&prefix);
    let channel = conn.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    Publisher::new(&conn, topology.clone()).await.unwrap().publish(&job).await.unwrap();

    // The account's slots are booked far ahead (as the phantom reservations
    // of killed workers book them in a storm): a worker holds the job,
    // unclaimed, waiting for the limiter to have room.
    let redis = RedisLimiter::connect(&redis_url).await.unwrap();
    let account = format!("vonage:{APP}");
    let limiter = RedisLimiter::new(redis.clone(), &prefix, 1.0, Duration::from_secs(1));
    limiter.cool_down(&account, Duration::from_secs(600)).await.unwrap();

    // Messages ready in a queue (a passive declare).
    let messages = |queue: String| {
        let channel = &channel;
        async move {
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .unwrap()
                .message_count()
        }
    };
    let ready = || messages(topology.work_queue());
    let dead = || messages(topology.dead_queue());
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(["--database-url", db.url.expose_secret(), "--amqp-url", &amqp_url])
            .args(["--queue-prefix", &prefix, "--redis-url", &redis_url, "--redis-prefix", &prefix])
            .args(["--rate-per-sec", "1", "--limiter-max-wait", "1s", "--provider-timeout", "2s"])
            .args(["--dialing-lease", "10s", "--http-addr", "127.0.0.1:0", "--vonage-api-url", &mock.uri()])
            .args(["--vonage-application-id", APP, "--vonage-private-key-path", key.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the worker binary")
    };
    let wait_for = |what: &'static str, limit: Duration| {
        let deadline = Instant::now() + limit;
        move || {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    };

    // Twice the delivery limit's worth of workers, each SIGKILLed while it
    // holds the job.
    let kills = 2 * DELIVERY_LIMIT;
    for _ in 0..kills {
        let mut worker: Child = spawn();
        let check = wait_for("a worker to take the job", Duration::from_secs(30));
        while ready().await != 0 {
            check();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        worker.kill().unwrap();
        worker.wait().unwrap();
        let check = wait_for("the broker to return the job", Duration::from_secs(30));
        while ready().await == 0 && dead().await == 0 {
            check();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(dead().await, 0, "the job was dead-lettered because workers died holding it");
    }

    // The storm is over and the account has room again: the job is called.
    let (tat, cool) = (format!("{prefix}:rl:{{{account}}}"), format!("{prefix}:rl:{{{account}}}:cooldown"));
    let mut r = redis.clone();
    let _: i64 = redis::cmd("DEL").arg(&tat).arg(&cool).query_async(&mut r).await.unwrap();
    let mut worker = spawn();
    let check = wait_for("the call to be placed", Duration::from_secs(30));
    loop {
        let state: String = sqlx::query_scalar("SELECT state FROM calls WHERE id = $1")
            .bind(job.call_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if state == "placed" {
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(mock.received_requests().await.unwrap().len(), 1, "called exactly once");
    assert_eq!(dead().await, 0);
    topology.delete(&channel).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
