//! The call-state module against the real PostgreSQL: the forward-only rule
//! stated in Rust (`CallState::advance`, `rank`, `is_terminal`) and in SQL
//! (`call_state_advance`, `call_state_rank`, `call_state_terminal`) agree
//! for every pair of states, and a batch of events folded in Rust lands as
//! the SQL rule says.

use tocsin_core::calls::{self, redial};
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
    assert!(!redial::wanted(Some(CallState::Completed), None));
}
