//! The `producer` binary as an operator runs it: exit codes, messages that
//! name the file and line, campaign control, the do-not-call list, and a
//! producer killed mid-run and run again.

mod common;

use std::time::{Duration, Instant};

use common::{Env, csv_of, stderr, stdout, us_number};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_messages_for_bad_input_and_usage() {
    let env = Env::new("producer-exit").await;
    let enqueue = |contacts: &str, extra: &[&str]| {
        let mut args = vec![
            "enqueue",
            "--campaign",
            "exits",
            "--contacts",
            contacts,
            "--message",
            "hi",
            "--from",
            "+14155550100",
            "--vonage-application-id",
            "app",
        ];
        args.extend_from_slice(extra);
        env.run_bin(&args)
    };
    let code = |o: &std::process::Output| o.status.code().unwrap_or(-1);

    let missing = env.dir.join("missing.csv");
    let o = enqueue(missing.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.csv: cannot open"), "{}", stderr(&o));

    let empty = env.file("empty.csv", "");
    let o = enqueue(empty.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("empty.csv: the file is empty"), "{}", stderr(&o));

    let headerless = env.file("nohead.csv", "+14155552671\n+14155552672\n");
    let o = enqueue(headerless.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("nohead.csv:1:") && stderr(&o).contains("add a header row"),
        "{}",
        stderr(&o)
    );

    let binary = env.file("binary.csv", b"number\n\xff\xfe\x00\x01\n\xc3\x28\n");
    let o = enqueue(binary.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 3, "every line rejected: {}", stderr(&o));
    assert!(stderr(&o).contains("binary.csv:2:") && stderr(&o).contains("UTF-8"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    let header_only = env.file("header.csv", "name,number\n");
    let o = enqueue(header_only.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("no contacts"), "{}", stderr(&o));

    let good = env.file("good.csv", csv_of(2, 0));
    let o = env.run_bin(&["enqueue", "--campaign", "exits", "--contacts", good.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "no message: {}", stderr(&o));
    let o = enqueue(good.to_str().unwrap(), &["--start-at", "tomorrow"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
    let o = enqueue(good.to_str().unwrap(), &["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("RabbitMQ"), "{}", stderr(&o));
    let o =
        env.command(&["list"]).env("TOCSIN_DATABASE_URL", "postgres://127.0.0.1:1/nowhere").output().unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let o = env.run_bin(&["status", "no-such-campaign"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no campaign named"), "{}", stderr(&o));

    // Numbers past any sense, files without end, an unknown campaign to
    // delete and an empty key prefix: a clear error and the documented exit
    // code, never a panic (101), a hang or 0.
    let o = enqueue(good.to_str().unwrap(), &["--retry-delay", "99999999999999999999"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = enqueue(good.to_str().unwrap(), &["--retry-delay", "999999999999999"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = env.run_bin(&["status", "exits", "--watch", "--timeout", "999999999999999"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("366 days"), "{}", stderr(&o));
    let started = Instant::now();
    let o = env.run_bin(&[
        "enqueue",
        "--campaign",
        "exits",
        "--contacts",
        good.to_str().unwrap(),
        "--message-file",
        "/dev/zero",
        "--from",
        "+14155550100",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("larger than 32 KiB"), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(30));
    let o = env.run_bin(&["delete", "no-such-campaign", "--yes"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no campaign named"), "{}", stderr(&o));
    let o = env.run_bin(&[
        "apikey",
        "create",
        "--name",
        "ops",
        "--scope",
        "campaigns:read",
        "--campaign-prefix",
        "",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("must not be empty"), "{}", stderr(&o));

    let o = enqueue(good.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("enqueued"), "{}", stdout(&o));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_list_and_status() {
    let env = Env::new("producer-control").await;
    let list = env.file("a.csv", csv_of(5, 0));
    env.enqueue("ctl", &list, &[]).await.unwrap();
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM campaigns WHERE name = 'ctl'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap()
    };
    assert!(env.run_bin(&["pause", "ctl"]).status.success());
    assert_eq!(status().await, "paused");
    let o = env.run_bin(&["status", "ctl"]);
    assert!(stdout(&o).contains("ctl: paused via vonage, 5 calls"), "{}", stdout(&o));
    assert!(env.run_bin(&["resume", "ctl"]).status.success());
    assert_eq!(status().await, "active");

    let o = env.run_bin(&["cancel", "ctl"]);
    assert_eq!(o.status.code(), Some(2), "cancel needs --yes");
    assert_eq!(status().await, "active");
    let o = env.run_bin(&["cancel", "ctl", "--yes"]);
    assert!(stdout(&o).contains("5 waiting calls will not be made"), "{}", stdout(&o));
    let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE state = 'cancelled'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(cancelled, 5);
    assert_eq!(env.run_bin(&["resume", "ctl"]).status.code(), Some(2));
    let err = env.enqueue("ctl", &list, &[]).await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");

    let o = env.run_bin(&["status", "ctl", "--watch", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((s["total"].as_i64(), s["finished"].as_i64()), (Some(5), Some(5)));
    assert_eq!(s["states"]["cancelled"], 5);

    let o = env.run_bin(&["list"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("ctl") && l.contains("cancelled")), "{}", stdout(&o));
    let log = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM call_state_log")
            .fetch_one(&env.db.pool)
            .await
            .unwrap()
    };
    assert_eq!(log().await, 5, "the cancels are in the live stream's log");
    assert!(env.run_bin(&["delete", "ctl", "--yes"]).status.success());
    assert!(!stdout(&env.run_bin(&["list"])).contains("ctl"));
    assert_eq!(log().await, 0, "deleting a campaign deletes its state log");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_call_list_skips_numbers_and_waiting_calls() {
    let env = Env::new("producer-dnc").await;
    let list = env.file("a.csv", csv_of(6, 0));
    env.enqueue("dnc", &list, &[]).await.unwrap();

    // Adding a number skips its waiting call at once.
    let o = env.run_bin(&["dnc", "add", &us_number(1), "--reason", "asked by phone"]);
    assert!(
        stdout(&o).contains("1 added") && stdout(&o).contains("1 waiting calls skipped"),
        "{}",
        stdout(&o)
    );
    let state: String = sqlx::query_scalar("SELECT state FROM calls WHERE number = $1")
        .bind(us_number(1))
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "skipped");

    // Import a list (national format with a region; one bad line).
    let national = &us_number(2)[2..];
    let import = env.file("optout.csv", format!("number\n{national}\nnope\n{}\n", us_number(100)));
    let o = env.run_bin(&[
        "dnc",
        "import",
        import.to_str().unwrap(),
        "--default-region",
        "US",
        "--reason",
        "opt-out",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 added") && stdout(&o).contains("1 rejected"), "{}", stdout(&o));
    assert!(stderr(&o).contains("optout.csv:3:"), "{}", stderr(&o));

    let o = env.run_bin(&["dnc", "list"]);
    let listed = stdout(&o);
    assert!(listed.contains(&format!("{},asked by phone", us_number(1))), "{listed}");
    assert_eq!(listed.lines().count(), 4);

    // A new campaign never writes the listed numbers.
    let report = env.enqueue("dnc-2", &list, &[]).await.unwrap();
    assert_eq!((report.new_contacts, report.do_not_call), (4, 2));
    assert!(env.run_bin(&["dnc", "remove", &us_number(1)]).status.success());
    let report = env.enqueue("dnc-2", &list, &[]).await.unwrap();
    assert_eq!((report.new_contacts, report.do_not_call, report.already_enqueued), (1, 1, 4));
    env.cleanup().await;
}

/// SIGKILL a producer in the middle of a run, run it again: every contact
/// ends up with exactly one row, its batch confirmed, and at least one job in
/// the queue; the only second copies are jobs confirmed before their batch
/// was recorded as confirmed when the process died (the worker's claim makes
/// those a no-op).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_producer_finishes_on_rerun_with_every_contact_enqueued_once() {
    const N: usize = 40_000;
    const IN_FLIGHT: &str = "256";
    let env = Env::new("producer-kill").await;
    let list = env.file("big.csv", csv_of(N, 0));
    let mut argv = env.enqueue_argv("killed", &list, &["--in-flight", IN_FLIGHT]);
    argv.remove(0);
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut child = env
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Wait until some jobs are confirmed, then kill it without warning.
    let started = Instant::now();
    loop {
        let (_, marked) = env.rows_and_confirmed().await;
        if marked >= 3000 {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!("the producer finished before it could be killed: {:?} {}", out.status, stderr(&out));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the producer made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A statement the killed process had sent still runs to its end in its
    // backend; count only once nothing else is running in the database.
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rows, marked) = env.rows_and_confirmed().await;
    assert!((marked as usize) < N, "killed after it finished ({marked} marked)");

    let report = env.enqueue("killed", &list, &["--in-flight", IN_FLIGHT]).await.unwrap();
    assert_eq!(report.read, N as u64);
    assert_eq!(report.new_contacts + report.already_enqueued, N as u64);
    assert_eq!(report.already_enqueued, rows as u64, "rows written before the kill are not written again");
    assert_eq!(report.resumed, (rows - marked) as u64, "rows left unconfirmed are published again");
    assert_eq!(report.published, report.new_contacts + report.resumed);

    assert_eq!(env.rows_and_confirmed().await, (N as i64, N as i64));
    let jobs = env.drain().await;
    assert_eq!(jobs.len(), N, "every contact has a job");
    let copies: u32 = jobs.values().map(|n| n - 1).sum();
    // Second copies only for jobs confirmed whose batch was not yet recorded
    // at the kill: bounded by the confirm window plus the batches waiting.
    assert!(copies as usize <= 256 + 10 * 1000, "{copies} second copies");
    // And a run after that publishes nothing at all.
    let again = env.enqueue("killed", &list, &[]).await.unwrap();
    assert_eq!((again.published, again.already_enqueued), (0, N as u64));
    env.cleanup().await;
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let producer = env!("CARGO_BIN_EXE_producer");
    for args in [&["--help"][..], &["enqueue", "--help"], &["vonage", "signed-callbacks", "--help"]] {
        tocsin_core::testing::assert_help_hides_secrets(producer, args);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_every_contact_with_its_outcome_as_csv() {
    let env = Env::new("producer-export").await;
    let contacts = env.file("export.csv", "number,name\n+14155552671,\"Ann, the boss\"\n+14155552672,Bo\n");
    let o = env.run_bin(&[
        "enqueue",
        "--campaign",
        "exported",
        "--contacts",
        contacts.to_str().unwrap(),
        "--message",
        "hi",
        "--from",
        "+14155550100",
        "--vonage-application-id",
        "app",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.run_bin(&["export", "exported"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], tocsin_core::export::HEADER.trim_end());
    assert!(
        lines[1].starts_with("+14155552671,2,\"{\"\"name\"\": \"\"Ann, the boss\"\"}\",queued,0"),
        "{text}"
    );
    assert!(lines[2].starts_with("+14155552672,3,"), "{text}");
    assert_eq!(lines.len(), 3);
    // --output writes the file and says so; an unknown campaign is a usage error.
    let out = env.dir.join("out.csv");
    let o = env.run_bin(&["export", "exported", "--output", out.to_str().unwrap()]);
    assert!(stderr(&o).contains("2 calls written to"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    let o = env.run_bin(&["export", "nothing-here"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_action_is_in_the_audit_log_with_the_os_user_and_no_secret() {
    let env = Env::new("producer-audit").await;
    let contacts = env.file("audit.csv", "number\n+14155552671\n");
    let run = |args: &[&str]| {
        let o = env.run_bin(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    run(&[
        "enqueue",
        "--campaign",
        "audited",
        "--contacts",
        contacts.to_str().unwrap(),
        "--message",
        "hi",
        "--from",
        "+14155550100",
        "--vonage-application-id",
        "app",
    ]);
    run(&["pause", "audited"]);
    run(&["dnc", "add", "+14155552679", "--reason", "asked"]);
    let key = stdout(&run(&["apikey", "create", "--name", "ci", "--scope", "campaigns:read"]));
    run(&["cancel", "audited", "--yes"]);
    // A read changes nothing and is not recorded; a failed action neither.
    run(&["status", "audited"]);
    assert!(!env.run_bin(&["resume", "audited"]).status.success());

    let o = run(&["audit", "--json"]);
    let entries: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["campaign.cancel", "apikey.create", "dnc.add", "campaign.pause", "campaign.enqueue"]
    );
    assert!(entries.iter().all(|e| e["via"] == "cli" && !e["actor"].as_str().unwrap().is_empty()));
    assert_eq!(entries[2]["details"]["numbers"][0], "+14155552679");
    assert_eq!(entries[1]["details"]["name"], "ci");
    let secret = key.split_whitespace().find(|w| w.starts_with("tocsin_")).expect("the key is printed once");
    assert!(!stdout(&o).contains(secret), "the key must never be in the audit log");
    // Filters: one campaign, since a time.
    let o = run(&["audit", "--campaign", "audited", "--since", "1h"]);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    assert_eq!(env.run_bin(&["audit", "--since", "yesterday"]).status.code(), Some(2));

    // The other actions that change something, each recorded once done.
    let opt_outs = env.file("opt-outs.csv", "number\n+14155552678\n");
    let list = env.file("oncall.csv", "number\n+14155552601\n");
    run(&["dnc", "import", opt_outs.to_str().unwrap()]);
    run(&["dnc", "remove", "+14155552679"]);
    run(&["list", "import", "oncall", list.to_str().unwrap()]);
    run(&["list", "delete", "oncall", "--yes"]);
    run(&["apikey", "revoke", "ci"]);
    run(&["delete", "audited", "--yes"]);
    let o = run(&["audit", "--json", "--limit", "6"]);
    let actions: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["campaign.delete", "apikey.revoke", "list.delete", "list.import", "dnc.remove", "dnc.import"]
    );
}
