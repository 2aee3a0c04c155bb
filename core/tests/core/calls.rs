//! The call-state module against the real PostgreSQL: the forward-only rule
//! stated in Rust (`CallState::advance`, `rank`, `is_terminal`) and in SQL
//! (`call_state_advance`, `call_state_rank`, `call_state_terminal`) agree
//! for every pair of states, and a batch of events folded in Rust lands as
//! the SQL rule says.

use tocsin_core::calls::keypress::{self, Keypress};
use tocsin_core::calls::{self, redial};
use tocsin_core::confirm::{Heard, Reply, Turn};
use tocsin_core::provider::Provider;
use tocsin_core::testing::TestDb;
use tocsin_core::{CallId, CallState, CampaignId, PhoneNumber};

#[tokio::test]
async fn the_rust_and_sql_forward_only_rules_agree_for_every_pair_of_states() {
    let db = TestDb::create().await;
    for state in CallState::ALL {
        let (rank, terminal): (i32, bool) =
            sqlx::query_as("SELECT call_state_rank($1), call_state_terminal($1)")
                .bind(state.as_str())
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(rank, i32::from(state.rank()), "rank of {state}");
        assert_eq!(terminal, state.is_terminal(), "terminal {state}");
    }
    let mut cases = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for current in CallState::ALL {
        for next in CallState::ALL {
            for (a, b) in [(false, false), (true, false), (false, true), (true, true)] {
                cases.0.push(current.as_str());
                cases.1.push(a);
                cases.2.push(next.as_str());
                cases.3.push(b);
            }
        }
    }
    let sql: Vec<String> = sqlx::query_scalar(
        "SELECT call_state_advance(c, ca, n, na) \
         FROM unnest($1::text[], $2::bool[], $3::text[], $4::bool[]) WITH ORDINALITY AS u(c, ca, n, na, i) \
         ORDER BY i",
    )
    .bind(&cases.0)
    .bind(&cases.1)
    .bind(&cases.2)
    .bind(&cases.3)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(sql.len(), CallState::ALL.len() * CallState::ALL.len() * 4);
    for (i, got) in sql.iter().enumerate() {
        let current: CallState = cases.0[i].parse().unwrap();
        let next: CallState = cases.2[i].parse().unwrap();
        let rust = current.advance(next, cases.1[i] || cases.3[i]);
        assert_eq!(
            got,
            rust.as_str(),
            "{current} (answered {}) + {next} (answered {})",
            cases.1[i],
            cases.3[i]
        );
    }
    // And no report at all changes nothing.
    let same: String = sqlx::query_scalar("SELECT call_state_advance('ringing', false, NULL, false)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(same, "ringing");
}

#[tokio::test]
async fn a_folded_batch_moves_calls_forward_only_and_picks_redials_by_policy() {
    let db = TestDb::create().await;
    let campaign = CampaignId::from_name("calls-test");
    sqlx::query("INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, 'calls-test', 'hi', '+14155550100')")
        .bind(campaign)
        .execute(&db.pool)
        .await
        .unwrap();
    let call = |n: &str| CallId::derive(campaign, &PhoneNumber::from_e164(n).unwrap());
    let (late, refined) = (call("+14155550001"), call("+14155550002"));
    for (id, n) in [(late, "+14155550001"), (refined, "+14155550002")] {
        sqlx::query("INSERT INTO calls (id, campaign_id, number) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(campaign)
            .bind(n)
            .execute(&db.pool)
            .await
            .unwrap();
        // Attempt 1 of 1, dialled and completed without an answer.
        calls::stage(&db.pool, &[id], CallState::Dialing).await.unwrap();
        calls::stage(&db.pool, &[id], CallState::Completed).await.unwrap();
    }
    let at = |s: &str| Some(chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc());
    let events = [
        // A late `ringing` never overwrites `completed`.
        calls::Event {
            call_id: Some(late),
            state: Some(CallState::Ringing),
            occurred_at: at("2026-11-22T10:00:00Z"),
            ..Default::default()
        },
        // A `busy` refines an unanswered `completed`.
        calls::Event {
            call_id: Some(refined),
            state: Some(CallState::Busy),
            occurred_at: at("2026-11-22T10:00:01Z"),
            ..Default::default()
        },
    ];
    let refs: Vec<&calls::Event> = events.iter().collect();
    let mut tx = db.pool.begin().await.unwrap();
    // max_attempts is 1: the busy call is not redialled.
    let jobs = calls::apply_events(&mut tx, &refs, true).await.unwrap();
    tx.commit().await.unwrap();
    assert!(jobs.is_empty());
    let state = |id: CallId| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM calls WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(state(late).await, "completed");
    assert_eq!(state(refined).await, "busy");

    assert!(redial::wanted(Some(CallState::Busy), None));
    assert!(redial::wanted(Some(CallState::NoAnswer), None));
    assert!(redial::wanted(Some(CallState::Failed), Some("carrier_timeout")));
    assert!(!redial::wanted(Some(CallState::Failed), Some("invalid_number")));
    // A candidate only: its campaign decides (`until_confirmed`, unconfirmed).
    assert!(redial::wanted(Some(CallState::Completed), None));
    assert!(!redial::wanted(Some(CallState::Rejected), None));
}

async fn insert_campaign(db: &TestDb, name: &str, until_confirmed: bool) -> CampaignId {
    let id = CampaignId::from_name(name);
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number, max_attempts, retry_delay_secs, confirm, until_confirmed) \
         VALUES ($1, $2, 'hi', '+14155550100', 3, 0, $3, $3)",
    )
    .bind(id)
    .bind(name)
    .bind(until_confirmed)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

async fn insert_call(db: &TestDb, campaign: CampaignId, number: &str) -> CallId {
    let id = CallId::derive(campaign, &PhoneNumber::from_e164(number).unwrap());
    sqlx::query("INSERT INTO calls (id, campaign_id, number) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(campaign)
        .bind(number)
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

/// Answered and completed (attempt 1): the events a call that heard its
/// message sends. Returns the redial jobs scheduled.
async fn answered_and_completed(db: &TestDb, call: CallId) -> usize {
    assert!(calls::claim(&db.pool, call, 1, Provider::Vonage, "t").await.unwrap());
    let events: Vec<calls::Event> = [CallState::Answered, CallState::Completed]
        .into_iter()
        .map(|state| calls::Event {
            call_id: Some(call),
            attempt: Some(1),
            state: Some(state),
            occurred_at: Some(chrono::Utc::now()),
            ..Default::default()
        })
        .collect();
    let refs: Vec<&calls::Event> = events.iter().collect();
    let mut tx = db.pool.begin().await.unwrap();
    let jobs = calls::apply_events(&mut tx, &refs, true).await.unwrap();
    tx.commit().await.unwrap();
    jobs.iter().map(|(_, j)| j.len()).sum()
}

async fn row(db: &TestDb, call: CallId) -> (String, i32, Option<i32>, Option<String>, bool) {
    sqlx::query_as(
        "SELECT state, attempt, confirmed_attempt, confirmed_key, opted_out_at IS NOT NULL FROM calls WHERE id = $1",
    )
    .bind(call)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_confirmed_contact_is_never_called_again_and_a_key_counts_once() {
    let db = TestDb::create().await;
    let until = insert_campaign(&db, "until-confirmed", true).await;
    let plain = insert_campaign(&db, "plain", false).await;
    let payload = serde_json::json!({ "dtmf": { "digits": "1" } });
    let press = |call: CallId, round: u32, heard: Heard, reply: Reply| Keypress {
        call,
        attempt: 1,
        turn: Turn { round, replays: 0, silences: 0 },
        heard,
        reply,
        provider: Provider::Vonage,
        payload: &payload,
    };

    // The hang-up was applied before the key (out of order): the call waits
    // for its redial; the key ends it confirmed and the redial never claims it.
    let late_key = insert_call(&db, until, "+14155550011").await;
    assert_eq!(answered_and_completed(&db, late_key).await, 1, "unconfirmed: redialled");
    assert_eq!(row(&db, late_key).await.0, "retry_wait");
    let first =
        keypress::record(&db.pool, &press(late_key, 0, Heard::Key('1'), Reply::Confirmed)).await.unwrap();
    let keypress::Recorded::New { confirmed_after_secs: Some(_), late: false, .. } = first else {
        panic!("{first:?}")
    };
    // Reported again (a retry, or Telnyx's second event for the same key).
    let again =
        keypress::record(&db.pool, &press(late_key, 0, Heard::Key('1'), Reply::Confirmed)).await.unwrap();
    assert_eq!(again, keypress::Recorded::Duplicate);
    assert_eq!(row(&db, late_key).await, ("completed".into(), 1, Some(1), Some("1".into()), false));
    assert!(
        !calls::claim(&db.pool, late_key, 2, Provider::Vonage, "t").await.unwrap(),
        "never dialled again"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM keypresses WHERE call_id = $1")
        .bind(late_key)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // Confirmed during the call: its hang-up schedules no redial.
    let in_call = insert_call(&db, until, "+14155550012").await;
    assert!(calls::claim(&db.pool, in_call, 1, Provider::Vonage, "t").await.unwrap());
    keypress::record(&db.pool, &press(in_call, 1, Heard::Key('1'), Reply::Confirmed)).await.unwrap();
    let jobs = {
        let e = calls::Event {
            call_id: Some(in_call),
            attempt: Some(1),
            state: Some(CallState::Completed),
            occurred_at: Some(chrono::Utc::now()),
            ..Default::default()
        };
        let mut tx = db.pool.begin().await.unwrap();
        let jobs = calls::apply_events(&mut tx, &[&e], true).await.unwrap();
        tx.commit().await.unwrap();
        jobs
    };
    assert!(jobs.is_empty(), "a confirmed contact is not redialled");

    // Without until-confirmed, a completed call is not redialled.
    let heard_only = insert_call(&db, plain, "+14155550013").await;
    assert_eq!(answered_and_completed(&db, heard_only).await, 0);

    // An opt-out: on the do-not-call list, and waiting calls to the number
    // in any campaign are skipped.
    let opting = insert_call(&db, until, "+14155550014").await;
    let elsewhere = insert_call(&db, plain, "+14155550014").await;
    assert!(calls::claim(&db.pool, opting, 1, Provider::Vonage, "t").await.unwrap());
    let out = keypress::record(&db.pool, &press(opting, 0, Heard::Key('9'), Reply::OptedOut)).await.unwrap();
    assert_eq!(out, keypress::Recorded::New { confirmed_after_secs: None, late: false, skipped: 1 });
    assert!(row(&db, opting).await.4);
    assert_eq!(row(&db, elsewhere).await.0, "skipped");
    let reason: String = sqlx::query_scalar("SELECT reason FROM do_not_call WHERE number = '+14155550014'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(reason, "opted out by keypress");

    // A key for a call that does not exist changes nothing.
    let ghost = CallId::derive(until, &PhoneNumber::from_e164("+14155550099").unwrap());
    let none = keypress::record(&db.pool, &press(ghost, 0, Heard::Key('1'), Reply::Confirmed)).await.unwrap();
    assert_eq!(none, keypress::Recorded::UnknownCall);
}
