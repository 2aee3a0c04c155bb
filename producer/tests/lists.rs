//! Saved contact lists (`producer list import|show|delete`) and campaigns
//! made from them, against the real PostgreSQL and RabbitMQ: every
//! rejection reason reported by line, replacement in one transaction, the
//! do-not-call list checked again when a campaign reads the list, and
//! `producer list` still listing campaigns.

mod common;

use clap::Parser;
use common::{Env, csv_of, stderr, stdout, us_number};
use producer::config::{Cli, Command, ListArgs, ListCommand, ListImportArgs};
use secrecy::ExposeSecret;
use tocsin_core::{CallId, CampaignId, PhoneNumber};
use tokio_util::sync::CancellationToken;

fn import_args(env: &Env, name: &str, file: &std::path::Path, extra: &[&str]) -> ListImportArgs {
    let mut argv = vec![
        "producer",
        "--database-url",
        env.db.url.expose_secret(),
        "list",
        "import",
        name,
        file.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).unwrap();
    let Command::List(ListArgs { command: Some(ListCommand::Import(args)), .. }) = cli.command else {
        unreachable!()
    };
    args
}

async fn import(
    env: &Env,
    name: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<tocsin_enqueue::lists::ImportReport> {
    let args = import_args(env, name, file, extra);
    producer::lists::import(&env.db.pool, &args, CancellationToken::new()).await
}

async fn entries(env: &Env, list: &str) -> Vec<(i64, String, Option<String>, serde_json::Value)> {
    sqlx::query_as(
        "SELECT e.line, e.number, e.timezone, e.attributes FROM contact_list_entries e \
         JOIN contact_lists l ON l.id = e.list_id WHERE l.name = $1 ORDER BY e.line",
    )
    .bind(list)
    .fetch_all(&env.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_every_rejected_line_and_saves_the_rest() {
    let env = Env::new("lists-import").await;
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
    csv.extend_from_slice(b"\n\"Hal, Jr\",020 7946 0958,Europe/London\n"); // 9 ok with the region
    let file = env.file("oncall.csv", &csv);
    let rejects = env.dir.join("rejects.csv");

    let report =
        import(&env, "oncall", &file, &["--default-region", "GB", "--rejects", rejects.to_str().unwrap()])
            .await
            .unwrap();
    assert_eq!((report.read, report.saved, report.replaced), (7, 2, None));
    assert_eq!((report.invalid, report.duplicate, report.do_not_call, report.malformed), (1, 1, 1, 2));
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    let keys: Vec<String> =
        rejected.lines().skip(1).map(|l| l.split(',').take(2).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(keys, ["3 invalid", "4 duplicate", "5 do_not_call", "6 malformed", "7 bad_timezone"]);

    let saved = entries(&env, "oncall").await;
    assert_eq!(saved.len(), 2);
    assert_eq!(
        (saved[0].0, saved[0].1.as_str(), saved[0].2.as_deref()),
        (2, "+14155552671", Some("America/New_York"))
    );
    assert_eq!(saved[0].3, serde_json::json!({"name": "Ada"}));
    assert_eq!((saved[1].0, saved[1].1.as_str()), (9, "+442079460958"));
    let info = tocsin_enqueue::lists::find(&env.db.pool, "oncall").await.unwrap().unwrap();
    assert_eq!(info.contacts, 2);
    assert!(info.source.ends_with("oncall.csv"), "{}", info.source);

    // A new import replaces the contacts; one rejecting every line keeps them.
    let other = env.file("other.csv", csv_of(3, 100));
    let report = import(&env, "oncall", &other, &[]).await.unwrap();
    assert_eq!((report.saved, report.replaced), (3, Some(2)));
    let numbers: Vec<String> = entries(&env, "oncall").await.into_iter().map(|e| e.1).collect();
    assert_eq!(numbers, [us_number(100), us_number(101), us_number(102)]);
    let bad = env.file("bad.csv", "number\nnope\n+1\n");
    let err = import(&env, "oncall", &bad, &[]).await.unwrap_err();
    assert_eq!(producer::exit_code(&err), 3, "{err:#}");
    assert_eq!(entries(&env, "oncall").await.len(), 3, "the old list is kept");
    let err = import(&env, "bad name!", &other, &[]).await.unwrap_err();
    assert_eq!(producer::exit_code(&err), 2, "{err:#}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_from_a_saved_list_goes_through_the_enqueue_pipeline() {
    let env = Env::new("lists-campaign").await;
    // Big enough for several pages of the list stream and batches of the pipeline.
    let mut csv = String::from("name,number,floor\n");
    for i in 0..4500 {
        csv.push_str(&format!("C{i},{},{}\n", us_number(i), i % 7));
        if i % 1000 == 0 {
            csv.push_str("Bad,xyz,1\n");
        }
    }
    let file = env.file("big.csv", &csv);
    let report = import(&env, "big", &file, &[]).await.unwrap();
    assert_eq!((report.saved, report.invalid), (4500, 5));

    // A number put on the do-not-call list after the import is still never called.
    let late_dnc = us_number(7);
    sqlx::query("INSERT INTO do_not_call (number) VALUES ($1)")
        .bind(&late_dnc)
        .execute(&env.db.pool)
        .await
        .unwrap();
    let args = env.enqueue_args("from-list", std::path::Path::new("unused.csv"), &[]);
    let spec = producer::enqueue::spec(&args).unwrap();
    let counters = std::sync::Arc::new(tocsin_enqueue::Counters::default());
    let stop = CancellationToken::new();
    let report =
        tocsin_enqueue::lists::enqueue_list(&env.db.pool, &spec, "big", &counters, &(), &stop).await.unwrap();
    assert_eq!((report.read, report.new_contacts, report.published), (4500, 4499, 4499));
    assert_eq!((report.do_not_call, report.invalid, report.malformed), (1, 0, 0));

    // Calls keep the line of the imported file and the other columns.
    let (line, attrs): (i32, serde_json::Value) =
        sqlx::query_as("SELECT source_line, attributes FROM calls WHERE number = $1")
            .bind(us_number(1000))
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    // Header, then contact i on line i + 2, plus one bad line after contacts 0 and 1000.
    assert_eq!(line, 1000 + 2 + 1);
    assert_eq!(attrs, serde_json::json!({"name": "C1000", "floor": "6"}));
    let jobs = env.drain().await;
    assert_eq!(jobs.len(), 4499);
    let campaign = CampaignId::from_name("from-list");
    let id = CallId::derive(campaign, &PhoneNumber::from_e164(&us_number(4499)).unwrap());
    assert_eq!(jobs.get(&id.to_string()), Some(&1));

    // Re-running publishes nothing again.
    let again =
        tocsin_enqueue::lists::enqueue_list(&env.db.pool, &spec, "big", &counters, &(), &stop).await.unwrap();
    assert_eq!((again.new_contacts, again.already_enqueued, again.published), (0, 4499, 0));
    assert_eq!(env.queued().await, 0);

    let err = tocsin_enqueue::lists::enqueue_list(&env.db.pool, &spec, "no-such-list", &counters, &(), &stop)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no saved contact list named \"no-such-list\""), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_from_the_binary() {
    let env = Env::new("lists-cli").await;
    let file = env.file("team.csv", csv_of(3, 0));
    env.enqueue("a-campaign", &file, &[]).await.unwrap();

    let o = env.run_bin(&["list", "import", "team", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("list team: saved 3 contacts"), "{}", stdout(&o));
    // `producer list` alone still lists campaigns, not contact lists.
    let o = env.run_bin(&["list"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("a-campaign")), "{}", stdout(&o));
    assert!(!stdout(&o).contains("team"), "{}", stdout(&o));
    let o = env.run_bin(&["list", "show"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("team") && l.contains(" 3 ")), "{}", stdout(&o));
    let o = env.run_bin(&["list", "show", "team", "--contacts"]);
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["number"], us_number(0));
    assert_eq!(lines[0]["line"], 2);
    // `enqueue --list` calls a saved list: every contact once, a re-run nobody.
    let enqueue_list = |campaign: &str, list: &str| {
        let mut argv: Vec<String> = env.enqueue_argv(campaign, &file, &["--json"]);
        let at = argv.iter().position(|a| a == "--contacts").unwrap();
        argv.splice(at..at + 2, ["--list".to_owned(), list.to_owned()]);
        env.run_bin(&argv[1..].iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = enqueue_list("from-list", "team");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((report["new_contacts"].as_u64(), report["published"].as_u64()), (Some(3), Some(3)));
    let o = enqueue_list("from-list", "team");
    assert!(o.status.success(), "a re-run right after: {}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((report["already_enqueued"].as_u64(), report["published"].as_u64()), (Some(3), Some(0)));
    let o = enqueue_list("from-nothing", "nope");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no saved contact list"), "{}", stderr(&o));
    let mut argv = env.enqueue_argv("y", &file, &[]);
    argv.extend(["--list".to_owned(), "team".to_owned()]);
    let o = env.run_bin(&argv[1..].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2), "--contacts and --list together is bad usage");

    let o = env.run_bin(&["list", "delete", "team"]);
    assert_eq!(o.status.code(), Some(2), "delete needs --yes");
    assert!(env.run_bin(&["list", "delete", "team", "--yes"]).status.success());
    let o = env.run_bin(&["list", "show", "team"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no saved contact list"), "{}", stderr(&o));
    env.cleanup().await;
}
