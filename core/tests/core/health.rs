//! Provider accounts' health against the real Redis, as two workers see it
//! (two `Health` values on one prefix): failures of one open the account
//! for both; after the cool-down exactly one of them holds the probe; a
//! failed probe opens it again at once, a successful one closes it for
//! both; `peek` reads the state without taking the probe.

use std::time::Duration;

use tocsin_core::health::{Health, Rules, Standing};
use tocsin_core::testing;

#[tokio::test]
async fn two_workers_share_an_accounts_breaker_and_one_probe() {
    let url = testing::redis_url().await;
    let prefix = testing::unique_prefix("health");
    let rules = Rules {
        threshold: 3,
        window: Duration::from_secs(30),
        cool_down: Duration::from_millis(300),
        probe_lease: Duration::from_secs(10),
    };
    let conn = || async { tocsin_core::limiter::RedisLimiter::connect(&url).await.unwrap() };
    let a = Health::new(conn().await, &prefix, rules);
    let b = Health::new(conn().await, &prefix, rules);
    let account = "twilio:main";

    // Below the threshold, and a success forgives: still closed.
    assert!(!a.failed(account, "503").await);
    assert!(!b.failed(account, "503").await);
    assert_eq!(a.peek(account).await.unwrap(), (Standing::Closed, 2));
    a.succeeded(account).await;
    assert_eq!(b.peek(account).await.unwrap(), (Standing::Closed, 0));

    // Three failures, from either worker, open it for both.
    assert!(!a.failed(account, "503").await);
    assert!(!b.failed(account, "timeout").await);
    assert!(a.failed(account, "503").await, "the third failure opens it");
    assert_eq!(b.standing(account).await, Standing::Open);
    assert_eq!(a.standing(account).await, Standing::Open);
    // Another account is not affected.
    assert_eq!(b.standing("vonage:eu").await, Standing::Closed);

    // After the cool-down, one probe: the first to ask holds it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.peek(account).await.unwrap().0, Standing::Probing, "peek takes no probe");
    assert_eq!(b.standing(account).await, Standing::Probe);
    assert_eq!(a.standing(account).await, Standing::Probing);
    assert!(!a.standing(account).await.usable());
    // The probe fails: open again at once, without a run of failures.
    assert!(b.failed(account, "503").await);
    assert_eq!(a.standing(account).await, Standing::Open);

    // The next probe succeeds: closed for both.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.standing(account).await, Standing::Probe);
    a.succeeded(account).await;
    assert_eq!(b.standing(account).await, Standing::Closed);
    assert_eq!(a.peek(account).await.unwrap(), (Standing::Closed, 0));
}
