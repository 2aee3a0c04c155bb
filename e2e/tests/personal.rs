//! Personalised messages end to end, through each provider: `{{column}}`
//! placeholders are filled from each contact's own columns when the call is
//! answered, escaped by each provider's format (NCCO JSON, TwiML XML,
//! Telnyx JSON) and heard exactly as written at the simulator; a contact
//! that cannot fill a placeholder without a default is rejected at enqueue
//! with the reason; the dry run shows the rendered text. A recording
//! (`--audio-url`) is played instead of the words: fetched by the simulated
//! provider from its URL as each provider does, before the prompt in a
//! dialogue and as the voicemail.

mod common;

use common::Options;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placeholders_are_filled_escaped_and_heard_through_every_provider() {
    let stack = common::start(Options::default()).await;
    let message = "Hello {{name|there}}, go to {{site}}.";
    for (provider, base) in [("vonage", 601), ("twilio", 602), ("telnyx", 603)] {
        let csv = format!(
            "number,name,site\n+1415559{base:03}1,\"Zoë <&> \"\"Ø\"\" 李\",Gym & Hall\n+1415559{base:03}2,,Hall\n\
             +1415559{base:03}3,Bo,\n"
        );
        // The dry run says what the first contacts will hear.
        let dry =
            stack.enqueue_args(provider, &csv, &["--message", message, "--provider", provider, "--dry-run"]);
        let report = producer::enqueue(&stack.db.pool, &dry).await.unwrap();
        assert_eq!(report.samples[0].text, "Hello Zoë <&> \"Ø\" 李, go to Gym & Hall.");
        assert_eq!(report.samples[1].text, "Hello there, go to Hall.");
        let args = stack.enqueue_args(provider, &csv, &["--message", message, "--provider", provider]);
        let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
        // The third has no site and {{site}} no default: rejected, named.
        assert_eq!((report.published, report.invalid), (2, 1), "{provider}");
    }
    for provider in ["vonage", "twilio", "telnyx"] {
        stack.wait_terminal(provider).await;
    }
    let calls = stack.sim_calls().await;
    for (provider, base) in [("vonage", 601), ("twilio", 602), ("telnyx", 603)] {
        let heard = |n: u32| {
            let to = format!("+1415559{base:03}{n}");
            let call =
                calls.iter().find(|c| c["to"] == to.as_str()).unwrap_or_else(|| panic!("{to} not called"));
            call["spoken"].as_str().unwrap().to_owned()
        };
        assert_eq!(heard(1), "Hello Zoë <&> \"Ø\" 李, go to Gym & Hall.", "{provider}");
        assert_eq!(heard(2), "Hello there, go to Hall.", "{provider}");
        assert!(calls.iter().all(|c| c["to"] != format!("+1415559{base:03}3").as_str()), "{provider}");
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["answer_documents_invalid"], 0, "{stats}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contacts_own_language_is_checked_against_the_provider_when_enqueued() {
    let stack = common::start(Options::default()).await;
    let csv = "number,language,voice\n+14155596011,es-ES,\n+14155596012,xx-XX,\n+14155596013,,woman\n";
    let args = stack.enqueue_args("speech", csv, &["--message", "Alert.", "--provider", "twilio"]);
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    // xx-XX is no language Twilio speaks: that contact alone is rejected.
    assert_eq!((report.published, report.invalid), (2, 1));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_is_fetched_and_played_before_the_prompt_and_as_the_voicemail_through_every_provider() {
    let stack = common::start(Options {
        sim_extra: vec!["--pin".into(), "1=answered,2=machine".into()],
        ..Options::default()
    })
    .await;
    let audio = format!("http://{}/_sim/audio/alert.wav", stack.sim_addr);
    let campaigns = [("vonage", 701), ("twilio", 702), ("telnyx", 703)];
    for (provider, base) in campaigns {
        // Without a message: the recording is all there is.
        let plain = format!("number\n+1415558{base:03}1\n");
        let args = stack.enqueue_args(
            &format!("{provider}-plain"),
            &plain,
            &["--audio-url", &audio, "--provider", provider, "--repeat", "2"],
        );
        assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 1, "{provider}");
        // With the dialogue and voicemail drop: a person hears the recording,
        // then the prompt; a machine gets the recording after its beep.
        let csv = format!("number\n+1415558{:03}1\n+1415558{:03}2\n", base + 10, base + 10);
        let args = stack.enqueue_args(
            &format!("{provider}-confirm"),
            &csv,
            &[
                "--audio-url",
                &audio,
                "--message",
                "Transcript: gas leak, leave now.",
                "--provider",
                provider,
                "--confirm",
                "--voicemail",
                "drop",
            ],
        );
        assert_eq!(producer::enqueue(&stack.db.pool, &args).await.unwrap().published, 2, "{provider}");
    }
    for (provider, _) in campaigns {
        stack.wait_terminal(&format!("{provider}-plain")).await;
        stack.wait_terminal(&format!("{provider}-confirm")).await;
    }
    let calls = stack.sim_calls().await;
    let call = |number: &str| calls.iter().find(|c| c["to"] == number).unwrap_or_else(|| panic!("{number}"));
    let played = |c: &serde_json::Value| -> Vec<(String, u64, bool)> {
        c["played"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (p["url"].as_str().unwrap().to_owned(), p["times"].as_u64().unwrap(), p["error"].is_null())
            })
            .collect()
    };
    let heard = |c: &serde_json::Value| -> Vec<String> {
        c["heard"].as_array().unwrap().iter().map(|h| h["text"].as_str().unwrap().to_owned()).collect()
    };
    for (provider, base) in campaigns {
        let plain = call(&format!("+1415558{base:03}1"));
        assert_eq!(played(plain), vec![(audio.clone(), 2, true)], "{provider}: {plain}");
        assert!(heard(plain).iter().all(String::is_empty), "{provider}: nothing spoken: {plain}");
        let person = call(&format!("+1415558{:03}1", base + 10));
        assert_eq!(played(person), vec![(audio.clone(), 1, true)], "{provider}: {person}");
        let words = heard(person);
        assert!(words.iter().any(|w| w.starts_with("Press 1")), "{provider}: {words:?}");
        assert!(
            words.iter().all(|w| !w.contains("Transcript")),
            "{provider}: the transcript is not spoken: {words:?}"
        );
        assert_eq!(person["keys"], "1", "{provider}");
        let machine = call(&format!("+1415558{:03}2", base + 10));
        assert_eq!(played(machine), vec![(audio.clone(), 1, true)], "{provider}: {machine}");
        let states: Vec<(String, Option<i32>)> = sqlx::query_as(
            "SELECT k.state, k.confirmed_attempt FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
             WHERE c.name = $1 ORDER BY k.number",
        )
        .bind(format!("{provider}-confirm"))
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
        assert_eq!(
            states,
            vec![("completed".to_owned(), Some(1)), ("voicemail".to_owned(), None)],
            "{provider}"
        );
    }
    let stats = stack.sim_stats().await;
    assert_eq!(stats["recordings_played"], 9, "{stats}");
    assert_eq!(stats["recordings_failed"], 0, "{stats}");
    assert_eq!(stats["answer_documents_invalid"], 0, "{stats}");
    stack.stop().await;
}
