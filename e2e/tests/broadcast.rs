//! One broadcast end to end: the producer enqueues a contact list, two
//! workers place the calls through the simulator (Vonage API, real HTTP),
//! the simulator fetches the NCCO and posts signed events to the webhook
//! service, and PostgreSQL ends up with every call's outcome. Runs against
//! the real PostgreSQL, RabbitMQ and Redis.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Options;

const MESSAGE: &str = "Test alert: the river is rising <fast> & \"now\".";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broadcast_reaches_every_contact_once_with_every_event_stored() {
    // Two workers sharing the Redis limiter at 50/s, Vonage at 50/s.
    let stack = common::start(Options::default()).await;

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
    let args = stack.enqueue_args("e2e", &csv, &["--message", MESSAGE]);
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!((report.read, report.new_contacts, report.published), (52, 50, 50));
    assert_eq!((report.invalid, report.duplicate), (1, 1));

    // A second run of the same command publishes nothing.
    let again = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!((again.new_contacts, again.published, again.already_enqueued), (0, 0, 50));

    stack.wait_terminal("e2e").await;
    // Let the last events land (each call's final event is what made it terminal,
    // but the simulator's stats count deliveries after the webhook answers).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rows: Vec<(String, String, i32, Option<String>, i64)> = sqlx::query_as(
        "SELECT k.number, k.state, k.attempt, k.provider_call_id, \
                (SELECT count(*) FROM call_events e WHERE e.call_id = k.id AND NOT e.unknown_call) \
         FROM calls k",
    )
    .fetch_all(&stack.db.pool)
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

    let stats = stack.sim_stats().await;
    assert_eq!(stats["calls"], 50, "{stats}");
    assert_eq!(stats["distinct_numbers"], 50, "{stats}");
    assert_eq!(stats["called_more_than_once"].as_array().unwrap().len(), 0, "{stats}");
    assert_eq!(stats["webhook_deliveries_failed"], 0, "{stats}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&stack.db.pool).await.unwrap();
    assert_eq!(stats["webhook_deliveries_ok"].as_i64().unwrap(), stored, "every delivered event is stored");

    // Every answered call spoke the campaign's message, fetched from the NCCO.
    let calls = stack.sim_calls().await;
    let spoken: Vec<&serde_json::Value> = calls.iter().filter(|c| c["outcome"] == "answered").collect();
    assert!(!spoken.is_empty());
    for call in spoken {
        assert_eq!(call["spoken"], MESSAGE, "{call}");
    }

    stack.stop().await;
}
