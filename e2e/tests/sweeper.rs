//! The workers' sweeper end to end (real PostgreSQL, RabbitMQ, Redis, the
//! simulator over HTTP): calls whose final events never came are settled
//! with their provider; a call whose job was lost is called; dead-lettered
//! jobs are counted per campaign and put back by `producer requeue-dead`.

mod common;

use std::time::Duration;

use common::{Options, Stack};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tocsin_core::queue::Topology;
use tocsin_core::{CallJob, CampaignId, PhoneNumber};

/// Quick sweeps: a call is swept 2 s after it was due (and, in progress,
/// 3 s of ringing later).
fn sweeping() -> Vec<String> {
    ["--sweep-every", "1s", "--stall-after", "2s", "--ringing-timeout", "3"].map(str::to_owned).to_vec()
}

async fn enqueue(stack: &Stack, name: &str, provider: &str, numbers: &[String]) {
    enqueue_with(stack, name, provider, numbers, &[]).await;
}

async fn enqueue_with(stack: &Stack, name: &str, provider: &str, numbers: &[String], extra: &[&str]) {
    let mut csv = String::from("number\n");
    for n in numbers {
        csv.push_str(&format!("{n}\n"));
    }
    let mut flags = vec!["--message", "Sweeper test.", "--provider", provider];
    flags.extend_from_slice(extra);
    let args = stack.enqueue_args(name, &csv, &flags);
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!(report.published, numbers.len() as u64);
}

async fn states(stack: &Stack, campaign: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT k.number, k.state, k.error_code FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = $1 ORDER BY k.number",
    )
    .bind(campaign)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_whose_final_events_never_came_are_settled_with_their_provider() {
    // The simulator never delivers an event (as a provider that gave up
    // redelivering them): every call would stay `placed` for good.
    let stack = common::start(Options {
        sim_extra: vec!["--fault-drop-event-rate".into(), "1".into()],
        worker_extra: sweeping(),
        ..Options::default()
    })
    .await;
    for (i, provider) in ["vonage", "twilio", "telnyx"].into_iter().enumerate() {
        // Ends in 7: busy; in 8: no answer; the others answer.
        let numbers: Vec<String> = (0..4).map(|n| format!("+1415555{:04}", 4100 + 10 * i + 5 + n)).collect();
        enqueue(&stack, provider, provider, &numbers).await;
    }
    // A busy number with a redial allowed: the busy the sweeper learns
    // schedules the redial as the event would have.
    let busy = vec!["+14155554197".to_owned()];
    enqueue_with(&stack, "redial", "vonage", &busy, &["--max-attempts", "2", "--retry-delay", "1s"]).await;
    for provider in ["vonage", "twilio", "telnyx", "redial"] {
        stack.wait_terminal(provider).await;
    }
    let redialled: (String, i32) = sqlx::query_as("SELECT state, attempt FROM calls WHERE number = $1")
        .bind(&busy[0])
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(redialled, ("busy".into(), 2), "dialled twice, busy both times");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&stack.db.pool).await.unwrap();
    assert_eq!(stored, 0, "no event was delivered: the sweeper settled every call");

    // Vonage and Twilio say how each call ended.
    for provider in ["vonage", "twilio"] {
        let got: Vec<String> = states(&stack, provider).await.into_iter().map(|(_, s, _)| s).collect();
        assert_eq!(got, ["completed", "completed", "busy", "no_answer"], "{provider}");
    }
    // Telnyx's call status says only that the call is no longer alive:
    // without the answered event, nothing says it was heard.
    for (number, state, code) in states(&stack, "telnyx").await {
        assert_eq!((state.as_str(), code.as_deref()), ("unknown", Some("final_event_lost")), "{number}");
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["calls"], 14, "{stats}");
    // Only the redialled number was called twice, once per attempt.
    let twice = stats["called_more_than_once"].as_array().unwrap();
    assert_eq!(twice.len(), 1, "{stats}");
    assert_eq!(twice[0]["count"], 2, "{stats}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_deadline_waiting_calls_expire_at_once_and_none_starts() {
    let stack = common::start(Options { worker_extra: sweeping(), ..Options::default() }).await;
    // The calling window opens in two hours; the deadline is in three seconds.
    let now = chrono::Utc::now();
    let window = format!(
        "{}-{}",
        (now + chrono::Duration::hours(2)).format("%H:%M"),
        (now + chrono::Duration::hours(3)).format("%H:%M")
    );
    let numbers: Vec<String> = (0..5).map(|n| format!("+1415555{:04}", 4300 + n)).collect();
    let mut csv = String::from("number\n");
    for n in &numbers {
        csv.push_str(&format!("{n}\n"));
    }
    let args = stack.enqueue_args(
        "deadline",
        &csv,
        &["--message", "Deadline test.", "--window", &window, "--timezone", "UTC", "--expires-in", "3s"],
    );
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 5);
    // Re-running the same command keeps the deadline (a span never moves one).
    let deadline: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM campaigns WHERE name = 'deadline'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    producer::enqueue(&stack.db.pool, &args).await.unwrap();
    let again: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM campaigns WHERE name = 'deadline'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(again, deadline);

    // The jobs wait an hour in a delay queue; the sweeper expires the calls
    // at the deadline, not when the jobs come back.
    stack.wait_terminal("deadline").await;
    let ended: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT state, ended_at FROM calls").fetch_all(&stack.db.pool).await.unwrap();
    assert_eq!(ended.len(), 5);
    for (state, at) in ended {
        assert_eq!(state, "expired");
        assert!(at >= deadline, "expired at {at}, before the deadline {deadline}");
    }
    let summary: (i64, i64) =
        sqlx::query_as("SELECT expired, terminal FROM campaign_summary WHERE campaign = 'deadline'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(summary, (5, 5));
    assert_eq!(stack.sim_stats().await["calls"], 0, "no call started");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_and_dead_lettered_jobs_are_found_counted_and_put_back() {
    let stack = common::start(Options { worker_extra: sweeping(), ..Options::default() }).await;
    let numbers: Vec<String> = (0..3).map(|n| format!("+1415555{:04}", 4200 + n)).collect();
    enqueue(&stack, "sweep", "vonage", &numbers).await;
    stack.wait_terminal("sweep").await;

    // A contact whose job never reached the queue (lost with a broker node),
    // and one whose job was dead-lettered by the broker.
    let campaign = CampaignId::from_name("sweep");
    let lost = CallJob::new(campaign, PhoneNumber::from_e164("+14155554210").unwrap(), 1);
    let dead = CallJob::new(campaign, PhoneNumber::from_e164("+14155554211").unwrap(), 1);
    for job in [&lost, &dead] {
        sqlx::query("INSERT INTO calls (id, campaign_id, number) VALUES ($1, $2, $3)")
            .bind(job.call_id)
            .bind(campaign)
            .bind(job.to.as_str())
            .execute(&stack.db.pool)
            .await
            .unwrap();
    }
    let conn = tocsin_core::queue::connect(&stack.amqp_url, "sweeper-test").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let topology = Topology::new(&stack.prefix);
    let raw = |route: &'static str, body: Vec<u8>| {
        let channel = channel.clone();
        let exchange = topology.exchange().to_owned();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    route.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    raw("dead", dead.to_bytes()).await;
    // A message no worker can read: dead-lettered with its reason.
    raw("call", b"{not a job".to_vec()).await;

    // The sweeper re-publishes the lost one's job: called once.
    stack.wait_terminal("sweep").await;
    let row: (String, i32) = sqlx::query_as("SELECT state, attempt FROM calls WHERE id = $1")
        .bind(lost.call_id)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(row, ("completed".into(), 1));

    // The dead-lettered ones are drained into dead_jobs: counted per
    // campaign by `producer status` and the API, the undecodable one kept
    // with the worker's reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dead_jobs").fetch_one(&stack.db.pool).await.unwrap();
        if n == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "dead-lettered jobs never drained ({n} of 2)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_jobs WHERE campaign_id IS NULL")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert!(reason.contains("not valid JSON"), "{reason}");
    let handle = tocsin_core::db::campaign(&stack.db.pool, campaign).await.unwrap().unwrap();
    assert_eq!(producer::status::read(&stack.db.pool, &handle).await.unwrap().dead_jobs, 1);
    let api = webhook::api::campaigns::campaign_status(&stack.db.pool, "sweep").await.unwrap().unwrap();
    assert_eq!(api["dead_jobs"], 1, "{api}");

    // `producer requeue-dead --campaign sweep` puts it back; its call was
    // already made (the sweeper found it waiting), so it is not made again.
    let cli = <producer::config::Cli as clap::Parser>::try_parse_from([
        "producer",
        "--database-url",
        secrecy::ExposeSecret::expose_secret(&stack.db.url),
        "requeue-dead",
        "--campaign",
        "sweep",
        "--amqp-url",
        &stack.amqp_url,
        "--queue-prefix",
        &stack.prefix,
    ])
    .unwrap();
    producer::run(cli, tokio_util::sync::CancellationToken::new()).await.unwrap();
    assert_eq!(producer::status::read(&stack.db.pool, &handle).await.unwrap().dead_jobs, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.wait_terminal("sweep").await;
    let stats = stack.sim_stats().await;
    assert_eq!(stats["calls"], 5, "{stats}");
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    stack.stop().await;
}
