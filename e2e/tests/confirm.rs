//! Heard and confirmed, end to end through each provider (real PostgreSQL,
//! RabbitMQ, Redis, the simulator over HTTP playing the callees): the
//! message, the prompt and the callee's key go through Vonage's NCCO
//! `input`, Twilio's `<Gather>` and Telnyx's `gather_using_speak`, signed;
//! confirmations, replays, wrong keys, silences and opt-outs land on the
//! call; until-confirmed redials exactly those who did not confirm; every
//! key is stored once even when the simulator sends it twice.

mod common;

use std::collections::BTreeMap;

use common::{Options, Stack};

/// The callee behind each last digit.
const PINS: &str =
    "1=answered,2=no_key,3=wrong_key,4=replay,5=opt_out,6=busy_then_confirm,7=busy,8=no_answer,9=machine";

/// What each number's contact ends as: (state, attempts, confirmed in
/// attempt, the keys the simulator's callee pressed over all attempts).
fn expected(last: char) -> (&'static str, i32, Option<i32>, &'static str) {
    match last {
        '1' => ("completed", 1, Some(1), "1"),
        // No key: the prompt once more, then goodbye; redialled until the attempts run out.
        '2' => ("completed", 3, None, "------"),
        '3' => ("completed", 1, Some(1), "51"),
        '4' => ("completed", 1, Some(1), "*1"),
        '5' => ("completed", 1, None, "9"),
        '6' => ("completed", 2, Some(2), "1"),
        '7' => ("busy", 3, None, ""),
        '8' => ("no_answer", 3, None, ""),
        '9' => ("completed", 3, None, "------"),
        _ => unreachable!(),
    }
}

fn numbers(base: u32) -> Vec<String> {
    (1..=9).map(|d| format!("+1415556{:03}{d}", base)).collect()
}

async fn run(stack: &Stack, provider: &str, base: u32) {
    let numbers = numbers(base);
    let mut csv = String::from("number\n");
    for n in &numbers {
        csv.push_str(&format!("{n}\n"));
    }
    let args = stack.enqueue_args(
        provider,
        &csv,
        &[
            "--message",
            "Flood warning for Riverside. Move to higher ground.",
            "--provider",
            provider,
            "--confirm",
            "--opt-out-key",
            "9",
            "--until-confirmed",
            "--max-attempts",
            "3",
            "--retry-delay",
            "0s",
            "--key-timeout",
            "3",
        ],
    );
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!(report.published, 9);
    stack.wait_terminal(provider).await;

    type Row = (String, String, i32, Option<i32>, Option<String>, bool);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT k.number, k.state, k.attempt, k.confirmed_attempt, k.confirmed_key, k.opted_out_at IS NOT NULL \
         FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1 ORDER BY k.number",
    )
    .bind(provider)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let sim: BTreeMap<String, String> =
        stack.sim_calls().await.into_iter().filter(|c| c["provider"] == provider).fold(
            BTreeMap::new(),
            |mut keys, c| {
                keys.entry(c["to"].as_str().unwrap().to_owned())
                    .or_default()
                    .push_str(c["keys"].as_str().unwrap_or_default());
                keys
            },
        );
    for (number, state, attempt, confirmed_in, key, opted_out) in rows {
        let last = number.chars().last().unwrap();
        let (want_state, want_attempts, want_confirmed, want_keys) = expected(last);
        assert_eq!(
            (state.as_str(), attempt, confirmed_in),
            (want_state, want_attempts, want_confirmed),
            "{provider} {number}"
        );
        assert_eq!(key.is_some(), want_confirmed.is_some(), "{provider} {number}");
        if want_confirmed.is_some() {
            assert_eq!(key.as_deref(), Some("1"), "{provider} {number}");
        }
        assert_eq!(opted_out, last == '5', "{provider} {number}");
        assert_eq!(
            sim.get(&number).map_or("", String::as_str),
            want_keys,
            "{provider} {number}: keys pressed"
        );
    }

    // One row per round answered, whatever was sent twice.
    let replies: Vec<(String, String)> = sqlx::query_as(
        "SELECT k.number, string_agg(p.reply, ',' ORDER BY p.attempt, p.round) \
         FROM keypresses p JOIN calls k ON k.id = p.call_id JOIN campaigns c ON c.id = k.campaign_id \
         WHERE c.name = $1 GROUP BY k.number ORDER BY k.number",
    )
    .bind(provider)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let replies: BTreeMap<char, String> =
        replies.into_iter().map(|(n, r)| (n.chars().last().unwrap(), r)).collect();
    assert_eq!(replies[&'1'], "confirmed", "{provider}");
    assert_eq!(replies[&'2'], "silence,gave_up,silence,gave_up,silence,gave_up", "{provider}");
    assert_eq!(replies[&'3'], "invalid,confirmed", "{provider}");
    assert_eq!(replies[&'4'], "replay,confirmed", "{provider}");
    assert_eq!(replies[&'5'], "opted_out", "{provider}");
    assert_eq!(replies[&'6'], "confirmed", "{provider}");

    // What the callees heard: the message and the prompt, again after a
    // replay (message first), the prompt alone after a wrong key.
    let calls = stack.sim_calls().await;
    let heard = |last: char| -> Vec<String> {
        let call = calls
            .iter()
            .find(|c| c["provider"] == provider && c["to"].as_str().unwrap().ends_with(last))
            .unwrap();
        call["heard"].as_array().unwrap().iter().map(|h| h["text"].as_str().unwrap().to_owned()).collect()
    };
    let replay = heard('4');
    assert_eq!(replay.len(), 3, "{provider}: {replay:?}");
    assert!(replay[0].contains("Flood warning") && replay[0].contains("Press 1"), "{provider}: {replay:?}");
    assert!(replay[1].contains("Flood warning"), "{provider}: {replay:?}");
    assert!(replay[2].contains("Thank you"), "{provider}: {replay:?}");
    let wrong = heard('3');
    assert!(
        wrong[1].starts_with("That key is not an option") && !wrong[1].contains("Flood"),
        "{provider}: {wrong:?}"
    );
    let opted = heard('5');
    assert!(opted.last().unwrap().contains("not be called again"), "{provider}: {opted:?}");

    // The opted-out number is on the do-not-call list for every campaign.
    let opted_out = &numbers[4];
    let reason: String = sqlx::query_scalar("SELECT reason FROM do_not_call WHERE number = $1")
        .bind(opted_out)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(reason, "opted out by keypress");

    // The summary view and the status command agree with the rows.
    let (confirmed, opted, total): (i64, i64, i64) =
        sqlx::query_as("SELECT confirmed, opted_out, total FROM campaign_summary WHERE campaign = $1")
            .bind(provider)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!((confirmed, opted, total), (4, 1, 9), "{provider}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callees_confirm_replay_opt_out_and_are_redialled_until_confirmed_through_every_provider() {
    let stack = common::start(Options {
        // Every event and every key is sent twice by a third of deliveries.
        sim_extra: vec!["--pin".into(), PINS.into(), "--fault-duplicate-rate".into(), "0.3".into()],
        ..Options::default()
    })
    .await;
    let (vonage, twilio, telnyx) =
        tokio::join!(run(&stack, "vonage", 101), run(&stack, "twilio", 202), run(&stack, "telnyx", 303));
    let _ = (vonage, twilio, telnyx);

    // No contact who confirmed was called after confirming.
    let after: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls WHERE confirmed_attempt IS NOT NULL AND attempt > confirmed_attempt",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(after, 0);
    let stats = stack.sim_stats().await;
    assert_eq!(stats["key_requests_invalid"], 0, "{stats}");
    assert_eq!(stats["answer_documents_invalid"], 0, "{stats}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_opted_out_number_is_refused_by_the_next_campaign() {
    let stack =
        common::start(Options { sim_extra: vec!["--pin".into(), "5=opt_out".into()], ..Options::default() })
            .await;
    let csv = "number\n+14155569995\n";
    let args = stack.enqueue_args(
        "first",
        csv,
        &["--message", "Opt-out test.", "--confirm", "--opt-out-key", "9", "--provider", "twilio"],
    );
    assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 1);
    stack.wait_terminal("first").await;
    let args = stack.enqueue_args("second", csv, &["--message", "Another alert.", "--provider", "twilio"]);
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!((report.published, report.do_not_call), (0, 1));
    assert_eq!(stack.sim_stats().await["calls"], 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machines_get_the_voicemail_after_their_greeting_or_a_hang_up_through_every_provider() {
    let stack = common::start(Options {
        sim_extra: vec!["--pin".into(), "1=answered,2=machine,3=machine_no_beep".into()],
        ..Options::default()
    })
    .await;
    let campaigns = [("vonage", 401), ("twilio", 402), ("telnyx", 403)];
    for (provider, base) in campaigns {
        for (mode, offset) in [("drop", 0), ("hangup", 5)] {
            let csv: String = std::iter::once("number".to_owned())
                .chain((1..=3).map(|d| format!("+1415557{:03}{d}", base + offset)))
                .collect::<Vec<_>>()
                .join("\n");
            let name = format!("{provider}-{mode}");
            let args = stack.enqueue_args(
                &name,
                &csv,
                &[
                    "--message",
                    "Boil water notice for Eastside.",
                    "--provider",
                    provider,
                    "--confirm",
                    "--voicemail",
                    mode,
                ],
            );
            assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 3);
        }
    }
    for (provider, _) in campaigns {
        for mode in ["drop", "hangup"] {
            stack.wait_terminal(&format!("{provider}-{mode}")).await;
        }
    }
    let calls = stack.sim_calls().await;
    for (provider, _) in campaigns {
        for mode in ["drop", "hangup"] {
            let name = format!("{provider}-{mode}");
            let rows: Vec<(String, String, Option<String>, Option<i32>)> = sqlx::query_as(
                "SELECT k.number, k.state, k.answered_by, k.confirmed_attempt FROM calls k \
                 JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1 ORDER BY k.number",
            )
            .bind(&name)
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
            for (number, state, by, confirmed) in rows {
                let heard: Vec<(String, Option<bool>)> = calls
                    .iter()
                    .find(|c| c["to"] == number.as_str())
                    .map(|c| {
                        c["heard"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|h| (h["text"].as_str().unwrap().to_owned(), h["after_beep"].as_bool()))
                            .collect()
                    })
                    .unwrap();
                match (number.chars().last().unwrap(), mode) {
                    // A person: the dialogue, whatever the voicemail mode.
                    ('1', _) => {
                        assert_eq!((state.as_str(), confirmed), ("completed", Some(1)), "{name} {number}");
                        assert_eq!(by.as_deref(), Some("human"), "{name} {number}");
                    }
                    (last, "drop") => {
                        assert_eq!(
                            (state.as_str(), by.as_deref()),
                            ("voicemail", Some("machine")),
                            "{name} {number}"
                        );
                        assert_eq!(heard.len(), 1, "{name} {number}: {heard:?}");
                        let (text, after_beep) = &heard[0];
                        assert!(
                            text.starts_with(
                                "Boil water notice for Eastside. This message was left by 1 4 1 5"
                            ),
                            "{name} {number}: {text}"
                        );
                        // After the beep; a machine without one after its greeting ended.
                        assert_eq!(*after_beep, Some(last == '2'), "{name} {number}");
                    }
                    (_, _) => {
                        assert_eq!(
                            (state.as_str(), by.as_deref()),
                            ("completed", Some("machine")),
                            "{name} {number}"
                        );
                        assert!(heard.is_empty(), "{name} {number}: hung up on, heard {heard:?}");
                    }
                }
            }
        }
        let (voicemails,): (i64,) =
            sqlx::query_as("SELECT voicemail FROM campaign_summary WHERE campaign = $1")
                .bind(format!("{provider}-drop"))
                .fetch_one(&stack.db.pool)
                .await
                .unwrap();
        assert_eq!(voicemails, 2, "{provider}");
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["answer_documents_invalid"], 0, "{stats}");
    assert_eq!(stats["key_requests_invalid"], 0, "{stats}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_deadline_no_redial_starts_and_the_unconfirmed_expire_through_every_provider() {
    let stack = common::start(Options {
        sim_extra: vec!["--pin".into(), "1=answered,2=no_key".into()],
        ..Options::default()
    })
    .await;
    for (provider, base) in [("vonage", 501), ("twilio", 502), ("telnyx", 503)] {
        let csv = format!("number\n+1415558{base:03}1\n+1415558{base:03}2\n");
        // Redials come 5 s after each attempt; the deadline is 3 s away.
        let args = stack.enqueue_args(
            provider,
            &csv,
            &[
                "--message",
                "Deadline test.",
                "--provider",
                provider,
                "--confirm",
                "--until-confirmed",
                "--max-attempts",
                "3",
                "--retry-delay",
                "5s",
                "--expires-in",
                "3s",
            ],
        );
        assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 2);
    }
    for provider in ["vonage", "twilio", "telnyx"] {
        stack.wait_terminal(provider).await;
        let rows: Vec<(String, String, i32, Option<i32>)> = sqlx::query_as(
            "SELECT k.number, k.state, k.attempt, k.confirmed_attempt FROM calls k \
             JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1 ORDER BY k.number",
        )
        .bind(provider)
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
        assert_eq!(rows[0].1, "completed", "{provider}: {rows:?}");
        assert_eq!(rows[0].3, Some(1), "{provider}: {rows:?}");
        // Heard without a key in attempt 1; its redial came after the deadline.
        assert_eq!((rows[1].1.as_str(), rows[1].2), ("expired", 1), "{provider}: {rows:?}");
    }
    // Each number was called once: no call started after the deadline.
    let stats = stack.sim_stats().await;
    assert_eq!(stats["calls"], 6, "{stats}");
    assert!(stats["called_more_than_once"].as_array().unwrap().is_empty(), "{stats}");
    stack.stop().await;
}
