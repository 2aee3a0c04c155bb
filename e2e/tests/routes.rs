//! Provider routes end to end (real PostgreSQL, RabbitMQ, Redis, the
//! simulator over HTTP): a `failover` route moves calls to its next account
//! while the first is in an outage (5xx, refused credentials, or no answer
//! at all) and back once a probe succeeds; a `pool` route spreads calls over
//! every account; nobody is called twice, no call is lost, and an attempt
//! whose answer was lost is only ever reconciled with the account that
//! placed it; a route naming an unconfigured account is refused at enqueue;
//! the route of a running campaign changes with `producer route`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Options, Stack};

async fn outage(stack: &Stack, account: &str, mode: &str) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/_sim/outage", stack.sim_addr))
        .json(&serde_json::json!({ "account": account, "mode": mode }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

fn contacts(base: u32, n: u32) -> String {
    std::iter::once("number".to_owned())
        .chain((0..n).map(|i| format!("+1415{base:03}{i:04}")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each number's final state and the provider of its (last) attempt.
async fn calls(stack: &Stack, campaign: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT k.number, k.state, k.provider FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = $1 ORDER BY k.number",
    )
    .bind(campaign)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

fn worker_extra() -> Vec<String> {
    // A short cool-down, so the recovery is seen within the test.
    [
        "--account-cool-down",
        "2s",
        "--provider-timeout",
        "2s",
        "--dialing-lease",
        "8s",
        "--limiter-max-wait",
        "5s",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_moves_calls_to_the_next_account_during_an_outage_and_back_after_it() {
    for mode in ["5xx", "401", "silent"] {
        let stack = common::start(Options {
            rate: 20,
            worker_extra: worker_extra(),
            sim_extra: vec!["--fault-timeout-after".into(), "3s".into()],
            ..Options::default()
        })
        .await;
        outage(&stack, "vonage", mode).await;
        let name = format!("failover-{mode}");
        let args = stack.enqueue_args(
            &name,
            &contacts(700, 30),
            &["--message", "Failover test.", "--route", "failover:vonage,twilio", "--max-attempts", "1"],
        );
        assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 30, "{mode}");
        stack.wait_terminal(&name).await;
        let rows = calls(&stack, &name).await;
        let mut by: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
        for (_, state, provider) in &rows {
            *by.entry((state.clone(), provider.clone())).or_default() += 1;
        }
        // Every contact reached, none lost: through Twilio, but for attempts
        // whose answer Vonage never gave (silent), which stay Vonage's
        // until Vonage is asked (unknown if it cannot say).
        // Busy and unanswered numbers (the simulator's last digits 7 and 8) were reached too.
        let completed = rows
            .iter()
            .filter(|r| {
                matches!(r.1.as_str(), "completed" | "busy" | "no_answer") && r.2.as_deref() == Some("twilio")
            })
            .count();
        let unknown_vonage =
            rows.iter().filter(|r| r.1 == "unknown" && r.2.as_deref() == Some("vonage")).count();
        assert_eq!(completed + unknown_vonage, 30, "{mode}: {by:?}");
        assert!(rows.iter().all(|r| r.2.as_deref() != Some("vonage") || r.1 == "unknown"), "{mode}: {by:?}");
        let stats = stack.sim_stats().await;
        assert_eq!(stats["called_more_than_once"], serde_json::json!([]), "{mode}: {stats}");
        assert!(stats["outage_refused"]["vonage"].as_u64().unwrap() >= 1, "{mode}: {stats}");
        if mode == "5xx" {
            // The outage ends; after the cool-down one probe call goes to
            // Vonage (the others meanwhile through Twilio), and once it went
            // through, traffic returns to Vonage.
            outage(&stack, "vonage", "none").await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            for (batch, base) in [("probed", 701), ("recovered", 705)] {
                let args = stack.enqueue_args(
                    batch,
                    &contacts(base, 10),
                    &["--message", "Back.", "--route", "failover:vonage,twilio", "--max-attempts", "1"],
                );
                producer::enqueue(&stack.db.pool, &args).await.unwrap();
                stack.wait_terminal(batch).await;
                let rows = calls(&stack, batch).await;
                let through_vonage = rows.iter().filter(|r| r.2.as_deref() == Some("vonage")).count();
                assert!(
                    rows.iter().all(|r| matches!(r.1.as_str(), "completed" | "busy" | "no_answer")),
                    "{rows:?}"
                );
                match batch {
                    "probed" => assert!(through_vonage >= 1, "{rows:?}"),
                    _ => assert_eq!(through_vonage, 10, "{rows:?}"),
                }
            }
        }
        stack.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_spreads_calls_over_every_account_and_a_route_changes_on_a_running_campaign() {
    let stack = common::start(Options { rate: 5, workers: 2, ..Options::default() }).await;
    let args = stack.enqueue_args(
        "pooled",
        &contacts(702, 60),
        &["--message", "Pool test.", "--route", "pool:vonage,twilio,telnyx", "--max-attempts", "1"],
    );
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 60);
    stack.wait_terminal("pooled").await;
    let rows = calls(&stack, "pooled").await;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (_, state, provider) in &rows {
        assert!(matches!(state.as_str(), "completed" | "busy" | "no_answer"), "{state}");
        *per.entry(provider.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "every account took calls: {per:?}");
    assert!(per.values().all(|n| *n >= 8), "{per:?}");
    let stats = stack.sim_stats().await;
    assert_eq!(stats["called_more_than_once"], serde_json::json!([]), "{stats}");
    assert_eq!(stats["rate_limited_429"], 0, "{stats}");

    // A running campaign's route changes: the next calls take the new one.
    let args = stack.enqueue_args(
        "rerouted",
        &contacts(703, 30),
        &["--message", "Reroute test.", "--provider", "vonage", "--max-attempts", "1"],
    );
    producer::enqueue(&stack.db.pool, &args).await.unwrap();
    let c = tocsin_core::db::campaign(&stack.db.pool, tocsin_core::CampaignId::from_name("rerouted"))
        .await
        .unwrap()
        .unwrap();
    let route: tocsin_core::route::Route = "failover:twilio".parse().unwrap();
    let providers: Vec<tocsin_core::route::AccountName> = [
        tocsin_core::provider::Provider::Vonage,
        tocsin_core::provider::Provider::Twilio,
        tocsin_core::provider::Provider::Telnyx,
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    tocsin_core::campaign::set_route(&stack.db.pool, &c, Some(route), &providers).await.unwrap();
    stack.wait_terminal("rerouted").await;
    let rows = calls(&stack, "rerouted").await;
    // Calls dialled before the change went through Vonage; the rest through Twilio.
    assert!(rows.iter().any(|r| r.2.as_deref() == Some("twilio")), "{rows:?}");
    assert!(rows.iter().all(|r| matches!(r.1.as_str(), "completed" | "busy" | "no_answer")), "{rows:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_naming_an_unconfigured_account_is_refused_at_enqueue_naming_it() {
    let stack = common::start(Options::default()).await;
    let mut args = stack.enqueue_args(
        "bad-route",
        &contacts(704, 2),
        &["--message", "x", "--route", "failover:vonage,twilio:eu"],
    );
    let err = producer::enqueue(&stack.db.pool, &args).await.unwrap_err().to_string();
    assert!(err.contains("twilio:eu") && err.contains("not configured"), "{err}");
    args.providers.telnyx.telnyx_connection_id = None;
    args.route = Some("pool:vonage,telnyx".parse().unwrap());
    let err = producer::enqueue(&stack.db.pool, &args).await.unwrap_err().to_string();
    assert!(err.contains("telnyx:default") && err.contains("TOCSIN_TELNYX_CONNECTION_ID"), "{err}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn named_accounts_of_one_provider_share_a_pool_and_a_capped_account_never_exceeds_its_lines() {
    let stack = common::start(Options { second_accounts: true, ..Options::default() }).await;
    // Two Twilio accounts in one pool: both carry calls, each paced and
    // signed as itself, every call recorded with its account.
    let args = stack.enqueue_args(
        "two-twilios",
        &contacts(720, 40),
        &["--message", "Two accounts.", "--route", "pool:twilio,twilio:b", "--max-attempts", "1"],
    );
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 40);
    // A Telnyx account capped at 2 lines: never more at once at the provider.
    let args = stack.enqueue_args(
        "capped",
        &contacts(730, 12),
        &["--message", "Two lines.", "--route", "failover:telnyx:b", "--max-attempts", "1"],
    );
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 12);
    stack.wait_terminal("two-twilios").await;
    stack.wait_terminal("capped").await;

    let by_account: Vec<(Option<String>, String, i64)> = sqlx::query_as(
        "SELECT k.account, k.state, count(*) FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = 'two-twilios' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let through =
        |label: &str| by_account.iter().filter(|r| r.0.as_deref() == Some(label)).map(|r| r.2).sum::<i64>();
    assert_eq!(through("default") + through("b"), 40, "{by_account:?}");
    assert!(through("default") >= 5 && through("b") >= 5, "both accounts carry calls: {by_account:?}");
    assert!(
        by_account.iter().all(|r| matches!(r.1.as_str(), "completed" | "busy" | "no_answer")),
        "{by_account:?}"
    );

    let stats = stack.sim_stats().await;
    assert_eq!(stats["called_more_than_once"], serde_json::json!([]), "{stats}");
    let accounts = &stats["accounts"];
    assert_eq!(
        accounts["twilio:default"]["calls"].as_u64().unwrap()
            + accounts["twilio:b"]["calls"].as_u64().unwrap(),
        40,
        "{accounts}"
    );
    let capped = &accounts["telnyx:b"];
    assert_eq!(capped["calls"].as_u64().unwrap(), 12, "{capped}");
    assert!(capped["most_concurrent"].as_u64().unwrap() <= 2, "{capped}");
    assert!(capped["most_concurrent"].as_u64().unwrap() >= 1, "{capped}");
    assert_eq!(capped["rejected_past_cap"].as_u64().unwrap(), 0, "{capped}");
    assert_eq!(accounts["telnyx:default"]["calls"].as_u64().unwrap(), 0, "{accounts}");
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT k.state, count(*) FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = 'capped' AND k.account = 'b' AND k.provider = 'telnyx' GROUP BY 1",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(states.iter().map(|s| s.1).sum::<i64>(), 12, "{states:?}");

    // The API shows each account: its limits, its health, its lines.
    let key = tocsin_core::apikey::create(&stack.db.pool, "reader", &["campaigns:read".to_owned()], &[])
        .await
        .unwrap();
    let view: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/accounts", stack.hook_addr))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["shared_state"], true, "{view}");
    let listed = view["accounts"].as_array().unwrap();
    let find = |name: &str| listed.iter().find(|a| a["account"] == name).cloned().unwrap_or_default();
    for name in ["vonage:default", "twilio:default", "telnyx:default", "twilio:b", "telnyx:b"] {
        assert_eq!(find(name)["state"], "closed", "{name}: {view}");
    }
    assert_eq!(find("twilio:b")["rate"], "20/s", "{view}");
    assert_eq!(find("telnyx:b")["rate"], "100/5s", "{view}");
    assert_eq!(find("telnyx:b")["max_concurrent"], 2, "{view}");
    assert_eq!(find("telnyx:b")["lines_in_use"], 0, "every call ended: {view}");
    let unauthenticated =
        reqwest::get(format!("http://{}/api/v1/accounts", stack.hook_addr)).await.unwrap().status();
    assert_eq!(unauthenticated, 401);

    // A route naming an account no file configures is refused at enqueue, naming it.
    let args =
        stack.enqueue_args("nowhere", &contacts(740, 2), &["--message", "x", "--route", "pool:twilio:c"]);
    let err = producer::enqueue(&stack.db.pool, &args).await.unwrap_err().to_string();
    assert!(err.contains("twilio:c") && err.contains("accounts file"), "{err}");
}
