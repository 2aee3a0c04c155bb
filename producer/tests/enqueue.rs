//! `producer enqueue` against the real PostgreSQL and RabbitMQ: each input
//! format, each rejection reason, dedupe, do-not-call, re-runs, dry runs and
//! campaign settings.

mod common;

use common::{Env, csv_of, us_number};
use tocsin_core::{CallId, CampaignId, PhoneNumber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_with_every_rejection_reason_is_reported_by_line() {
    let env = Env::new("producer-csv").await;
    sqlx::query("INSERT INTO do_not_call (number, reason) VALUES ('+14155550111', 'asked')")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let mut csv = b"name,number,timezone\n".to_vec();
    csv.extend_from_slice(b"Ada,+1 (415) 555-2671,America/New_York\n"); // 2 ok
    csv.extend_from_slice(b"Bob,not a number,\n"); // 3 invalid
    csv.extend_from_slice(b"Cy,+14155552671,\n"); // 4 duplicate of 2
    csv.extend_from_slice(b"Dee,+14155550111,\n"); // 5 do-not-call
    csv.extend_from_slice(b"Eve,+14155552672\n"); // 6 malformed: 2 fields
    csv.extend_from_slice(b"Fay,+14155552673,Mars/Base\n"); // 7 bad time zone
    csv.extend_from_slice(b"Gu\xff,+14155552674,\n"); // 8 not UTF-8
    csv.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024)); // 9 a 10 MB line
    csv.extend_from_slice(b"\n\n\"Hal, Jr\",020 7946 0958,Europe/London\n"); // 11 ok with the region
    let contacts = env.file("list.csv", &csv);
    let rejects = env.dir.join("rejects.csv");

    let report = env
        .enqueue("storm", &contacts, &["--default-region", "GB", "--rejects", rejects.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(report.read, 9);
    assert_eq!((report.new_contacts, report.published, report.already_enqueued), (2, 2, 0));
    assert_eq!((report.invalid, report.duplicate, report.do_not_call, report.malformed), (1, 1, 1, 4));

    let rejected = std::fs::read_to_string(&rejects).unwrap();
    let lines: Vec<&str> = rejected.lines().collect();
    assert_eq!(lines[0], "line,reason,value,detail");
    let keys: Vec<(&str, &str)> =
        lines[1..].iter().map(|l| l.split(',').take(2).collect::<Vec<_>>()).map(|v| (v[0], v[1])).collect();
    assert_eq!(
        keys,
        [
            ("3", "invalid"),
            ("4", "duplicate"),
            ("5", "do_not_call"),
            ("6", "malformed"),
            ("7", "bad_timezone"),
            ("8", "malformed"),
            ("9", "too_long")
        ]
    );
    assert!(rejected.contains("duplicate of line 2"), "{rejected}");

    let rows: Vec<(String, i32, serde_json::Value, Option<String>, bool)> = sqlx::query_as(
        "SELECT number, source_line, attributes, timezone, \
                EXISTS (SELECT 1 FROM enqueue_batches b WHERE b.id = c.enqueue_batch) \
         FROM calls c ORDER BY source_line",
    )
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, "+14155552671");
    assert_eq!(rows[0].1, 2);
    assert_eq!(rows[0].2, serde_json::json!({"name": "Ada"}));
    assert_eq!(rows[0].3.as_deref(), Some("America/New_York"));
    assert_eq!((rows[1].0.as_str(), rows[1].1), ("+442079460958", 11));
    assert_eq!(rows[1].2, serde_json::json!({"name": "Hal, Jr"}));
    assert!(rows.iter().all(|r| r.4), "every published row's batch is confirmed");

    // One job per new contact, naming the deterministic call id.
    let jobs = env.drain().await;
    let campaign = CampaignId::from_name("storm");
    for number in ["+14155552671", "+442079460958"] {
        let id = CallId::derive(campaign, &PhoneNumber::from_e164(number).unwrap());
        assert_eq!(jobs.get(&id.to_string()), Some(&1), "{number}");
    }
    assert_eq!(jobs.len(), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_one_line_rejects_that_line_and_loses_nothing_around_it() {
    // PostgreSQL refuses NUL in text and JSONB: one such line used to stop
    // the run after the batches before it (and the re-run the same way).
    let env = Env::new("producer-nul").await;
    let mut csv = csv_of(2_500, 0).into_bytes();
    let at = csv.windows(12).position(|w| w == b"Contact 1200").unwrap();
    csv[at + 3] = 0;
    let list = env.file("nul.csv", &csv);
    let report = env.enqueue("nul-csv", &list, &[]).await.unwrap();
    assert_eq!((report.new_contacts, report.malformed), (2_499, 1));
    let jsonl = env.file(
        "nul.jsonl",
        "{\"number\":\"+14155552671\",\"name\":\"A\\u0000da\"}\n{\"number\":\"+14155552672\",\"name\":\"Bo\"}\n",
    );
    let report = env.enqueue("nul-jsonl", &jsonl, &[]).await.unwrap();
    assert_eq!((report.new_contacts, report.malformed), (1, 1));
    let message = env.file("message.txt", "Evacuate\0 now");
    let err =
        env.enqueue("nul-message", &jsonl, &["--message-file", message.to_str().unwrap()]).await.unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err:#}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_from_a_file_and_from_stdin() {
    let env = Env::new("producer-jsonl").await;
    let jsonl = env.file(
        "list.jsonl",
        "{\"number\":\"+14155552671\",\"name\":\"Ada\",\"floor\":3}\n\n{\"number\":\"bad\"}\n{\"name\":\"no number\"}\n{not json\n{\"number\":\"+14155552672\",\"timezone\":\"Europe/Paris\"}\n",
    );
    let report = env.enqueue("jsonl", &jsonl, &[]).await.unwrap();
    assert_eq!((report.read, report.new_contacts, report.invalid, report.malformed), (5, 2, 1, 2));
    let attrs: serde_json::Value =
        sqlx::query_scalar("SELECT attributes FROM calls WHERE number = '+14155552671'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(attrs, serde_json::json!({"name": "Ada", "floor": 3}));
    let tz: Option<String> = sqlx::query_scalar("SELECT timezone FROM calls WHERE number = '+14155552672'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(tz.as_deref(), Some("Europe/Paris"));

    // The same format on standard input, detected without an extension.
    use std::io::Write;
    let mut child = env
        .command(&[
            "enqueue",
            "--campaign",
            "jsonl-stdin",
            "--contacts",
            "-",
            "--message",
            "hi",
            "--from",
            "+14155550100",
            "--vonage-application-id",
            "app",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"number\":\"+14155552673\"}\n{\"number\":\"+14155552674\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["new_contacts"], 2);
    assert_eq!(report["published"], 2);
    assert_eq!(env.queued().await, 4);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_publishes_nothing_and_a_longer_list_adds_only_new_contacts() {
    let env = Env::new("producer-rerun").await;
    let first = env.file("a.csv", csv_of(2500, 0));
    let report = env.enqueue("rerun", &first, &[]).await.unwrap();
    assert_eq!((report.new_contacts, report.published), (2500, 2500));

    let again = env.enqueue("rerun", &first, &[]).await.unwrap();
    assert_eq!((again.read, again.new_contacts, again.published, again.already_enqueued), (2500, 0, 0, 2500));
    assert_eq!(env.queued().await, 2500);

    let longer = env.file("b.csv", csv_of(3000, 0));
    let more = env.enqueue("rerun", &longer, &[]).await.unwrap();
    assert_eq!((more.new_contacts, more.published, more.already_enqueued), (500, 500, 2500));

    let jobs = env.drain().await;
    assert_eq!(jobs.len(), 3000);
    assert!(jobs.values().all(|n| *n == 1), "no contact was published twice");
    assert_eq!(env.rows_and_confirmed().await, (3000, 3000), "every row's job is confirmed");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_like_a_real_run_and_writes_nothing() {
    let env = Env::new("producer-dry").await;
    let list = env.file("a.csv", format!("{}Dup,{}\nBad,123\n", csv_of(10, 0), us_number(3)));
    env.enqueue("dry", &env.file("first.csv", csv_of(4, 0)), &[]).await.unwrap();
    sqlx::query("INSERT INTO do_not_call (number) VALUES ($1)")
        .bind(us_number(9))
        .execute(&env.db.pool)
        .await
        .unwrap();
    let report = env.enqueue("dry", &list, &["--dry-run"]).await.unwrap();
    assert!(report.dry_run);
    assert_eq!(report.read, 12);
    assert_eq!((report.new_contacts, report.already_enqueued, report.do_not_call), (5, 4, 1));
    assert_eq!((report.duplicate, report.invalid, report.published), (1, 1, 0));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM calls").fetch_one(&env.db.pool).await.unwrap();
    assert_eq!(rows, 4);
    assert_eq!(env.queued().await, 4);

    // A dry run of a new campaign does not create it.
    env.enqueue("dry-new", &list, &["--dry-run"]).await.unwrap();
    let campaigns: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaigns").fetch_one(&env.db.pool).await.unwrap();
    assert_eq!(campaigns, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_settings_are_written_and_changed_only_on_purpose() {
    let env = Env::new("producer-settings").await;
    let list = env.file("a.csv", csv_of(3, 0));
    env.enqueue(
        "sched",
        &list,
        &[
            "--start-at",
            "2030-01-02T09:00:00+01:00",
            "--window",
            "09:00-20:00",
            "--timezone",
            "Europe/Berlin",
            "--max-attempts",
            "3",
            "--retry-delay",
            "2m",
            "--machine-detection",
            // Vonage picks a voice by language and style number.
            "--voice",
            "2",
            "--language",
            "de-DE",
            "--repeat",
            "2",
            "--expires-at",
            "2030-01-02T20:00:00Z",
        ],
    )
    .await
    .unwrap();
    let c = tocsin_core::db::campaign(&env.db.pool, CampaignId::from_name("sched")).await.unwrap().unwrap();
    let s = &c.settings;
    assert_eq!(s.start_at.unwrap().to_rfc3339(), "2030-01-02T08:00:00+00:00");
    assert_eq!(s.expires_at.unwrap().to_rfc3339(), "2030-01-02T20:00:00+00:00");
    assert_eq!(s.window.unwrap().to_string(), "09:00-20:00");
    assert_eq!((s.timezone, s.max_attempts, s.retry_delay_secs), (chrono_tz::Europe::Berlin, 3, 120));
    assert!(s.machine_detection);
    assert_eq!((s.voice.as_deref(), s.language.as_str(), s.repeat), (Some("2"), "de-DE", 2));

    // The same list again with the same options: nothing changes, nothing published.
    let again = env.enqueue("sched", &list, &["--max-attempts", "3"]).await.unwrap();
    assert_eq!(again.published, 0);

    // A different message or setting needs its flag.
    let err = env.enqueue("sched", &list, &["--message", "Other text"]).await.unwrap_err();
    assert!(err.to_string().contains("--update-message"), "{err}");
    assert_eq!(producer::exit_code(&err), 2);
    let err = env.enqueue("sched", &list, &["--max-attempts", "1"]).await.unwrap_err();
    assert!(
        err.to_string().contains("max attempts: 3 → 1") && err.to_string().contains("--update-settings"),
        "{err}"
    );
    let changed =
        env.enqueue("sched", &list, &["--message", "Other text", "--update-message"]).await.unwrap();
    assert_eq!(changed.changes, ["message"]);
    let message: String = sqlx::query_scalar("SELECT message FROM campaigns WHERE name = 'sched'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(message, "Other text");

    // A window needs a time zone; a provider needs its configuration.
    let err = env.enqueue("other", &list, &["--window", "09:00-17:00"]).await.unwrap_err();
    assert!(err.to_string().contains("--timezone"), "{err}");
    let err = env.enqueue("other", &list, &["--provider", "twilio"]).await.unwrap_err();
    assert!(err.to_string().contains("TOCSIN_TWILIO_ACCOUNT_SID"), "{err}");
    env.cleanup().await;
}
