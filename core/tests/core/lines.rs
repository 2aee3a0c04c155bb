//! The concurrent-call caps' lines against the real Redis and PostgreSQL:
//! a line per call up to the cap, given back, taken again by its own call
//! (renewed, not a second line), back after its lease; a full account's
//! holders checked against the calls' states, at most once per interval
//! across callers; calls in progress adopted after a Redis outage.

use std::time::Duration;

use tocsin_core::CallId;
use tocsin_core::lines::{Lines, REAP_EVERY};
use tocsin_core::provider::Provider;
use tocsin_core::route::AccountName;
use tocsin_core::testing::{self, TestDb};

async fn lines() -> Lines {
    let url = testing::redis_url().await;
    let conn = tocsin_core::limiter::RedisLimiter::connect(&url).await.unwrap();
    Lines::new(conn, &testing::unique_prefix("lines"))
}

fn call() -> CallId {
    CallId(uuid::Uuid::new_v4())
}

#[tokio::test]
async fn a_line_per_call_up_to_the_cap_given_back_and_renewed_by_its_own_call() {
    let lines = lines().await;
    let lease = Duration::from_secs(60);
    let (a, b, c) = (call(), call(), call());
    assert!(lines.take("telnyx:KEY", a, 2, lease).await.unwrap());
    assert!(lines.take("telnyx:KEY", b, 2, lease).await.unwrap());
    assert!(!lines.take("telnyx:KEY", c, 2, lease).await.unwrap(), "the cap is 2");
    // Its own call renews its line; it takes no second one.
    assert!(lines.take("telnyx:KEY", a, 2, lease).await.unwrap());
    assert_eq!(lines.in_use("telnyx:KEY", 3).await.unwrap().used, 2);
    // Another account has its own lines.
    assert!(lines.take("telnyx:OTHER", c, 2, lease).await.unwrap());
    lines.free("telnyx:KEY", &[a]).await.unwrap();
    assert!(lines.take("telnyx:KEY", c, 2, lease).await.unwrap(), "a's line was given back");
}

#[tokio::test]
async fn a_line_comes_back_when_its_lease_ends() {
    let lines = lines().await;
    let (a, b) = (call(), call());
    assert!(lines.take("vonage:APP", a, 1, Duration::from_millis(300)).await.unwrap());
    assert!(!lines.take("vonage:APP", b, 1, Duration::from_secs(60)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(lines.take("vonage:APP", b, 1, Duration::from_secs(60)).await.unwrap(), "a's lease ended");
}

#[tokio::test]
async fn a_full_account_has_its_holders_checked_once_per_interval_and_ended_calls_freed() {
    let db = TestDb::create().await;
    let lines = lines().await;
    let campaign = tocsin_core::CampaignId::from_name("lines-test");
    sqlx::query("INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'lines-test', 'hello', '+14155550100')")
        .bind(campaign)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (i, state) in ["answered", "completed"].iter().enumerate() {
        let id = call();
        sqlx::query("INSERT INTO calls (id, campaign_id, number, state, attempt, provider, account) VALUES ($1, $2, $3, $4, 1, 'telnyx', 'b')")
            .bind(id)
            .bind(campaign)
            .bind(format!("+1415555000{i}"))
            .bind(state)
            .execute(&db.pool)
            .await
            .unwrap();
        assert!(lines.take("telnyx:B", id, 2, Duration::from_secs(60)).await.unwrap());
        ids.push(id);
    }
    let first = lines.in_use("telnyx:B", 2).await.unwrap();
    assert_eq!(first.used, 2);
    let mut to_check = first.to_check.clone();
    to_check.sort_by_key(|c| c.0);
    let mut expected = ids.clone();
    expected.sort_by_key(|c| c.0);
    assert_eq!(to_check, expected, "full: the holders are handed out to check");
    assert!(lines.in_use("telnyx:B", 2).await.unwrap().to_check.is_empty(), "once per interval");
    let ended = tocsin_core::calls::ended_among(&db.pool, &first.to_check).await.unwrap();
    assert_eq!(ended, vec![ids[1]], "the completed call's line is free, the answered one's is not");
    lines.free("telnyx:B", &ended).await.unwrap();
    assert_eq!(lines.in_use("telnyx:B", 2).await.unwrap().used, 1);
    tokio::time::sleep(REAP_EVERY).await;

    // Calls placed while Redis was down are adopted: they count again.
    let account = AccountName { provider: Provider::Telnyx, label: "b".into() };
    let in_progress = tocsin_core::calls::in_progress_ids(&db.pool, &account).await.unwrap();
    assert_eq!(in_progress, vec![ids[0]]);
    let other = call();
    assert_eq!(lines.adopt("telnyx:B", &[ids[0], other], Duration::from_secs(60)).await.unwrap(), 1);
    assert_eq!(lines.in_use("telnyx:B", 5).await.unwrap().used, 2);
    assert_eq!(tocsin_core::calls::in_progress(&db.pool, &account).await.unwrap(), 1);
}
