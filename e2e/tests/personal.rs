//! Personalised messages end to end, through each provider: `{{column}}`
//! placeholders are filled from each contact's own columns when the call is
//! answered, escaped by each provider's format (NCCO JSON, TwiML XML,
//! Telnyx JSON) and heard exactly as written at the simulator; a contact
//! that cannot fill a placeholder without a default is rejected at enqueue
//! with the reason; the dry run shows the rendered text.

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
