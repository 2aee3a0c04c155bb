//! The dashboard in a real browser: the simulator, the webhook service and
//! a worker run here against the real PostgreSQL, RabbitMQ and Redis while
//! `e2e/browser/dashboard.mjs` drives `/ui` in Debian's headless Chromium
//! (playwright-core): the key is entered once, progress advances without a
//! reload, pause stops dialling (checked on the page and in the database),
//! resume starts it again, a call's timeline shows, cancel ends the
//! campaign. Screenshots go to `target/ui-e2e/`.
//!
//! Needs `/usr/bin/chromium` and `e2e/browser/node_modules`
//! (`deploy/local/browser-deps.sh`, which `deploy/local/up.sh` runs); fails
//! with that advice when either is missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "ui-e2e-signature-secret";
const APP: &str = "ui-e2e-app";
const CAMPAIGN: &str = "ui-e2e";
const CONTACTS: usize = 400;
const HOW_TO_INSTALL: &str = "install the browser test's dependencies with deploy/local/browser-deps.sh \
     (Debian chromium at /usr/bin/chromium, and npm ci in e2e/browser)";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browser_dashboard_shows_live_progress_and_pause_stops_dialling() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser_dir = root.join("e2e/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: {HOW_TO_INSTALL}"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "e2e/browser/node_modules/playwright-core is missing: {HOW_TO_INSTALL}"
    );

    tocsin_core::telemetry::install_crypto_provider();
    let db = TestDb::create().await;
    let amqp_url = testing::amqp_url().await;
    let redis_url = testing::redis_url().await;
    let prefix = testing::unique_prefix("uie2e");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = simulator::keygen::generate().unwrap();
    std::fs::write(dir.join("private.pem"), &keys.private_pem).unwrap();
    std::fs::write(dir.join("public.pem"), &keys.public_pem).unwrap();
    let stop = CancellationToken::new();

    // Simulator: Vonage, time compressed fifty-fold so calls end quickly.
    let sim_config = match simulator::config::Cli::try_parse_from([
        "simulator",
        "serve",
        "--vonage-public-key-path",
        dir.join("public.pem").to_str().unwrap(),
        "--vonage-application-id",
        APP,
        "--vonage-signature-secret",
        SECRET,
        "--vonage-rate",
        "20",
        "--time-scale",
        "0.02",
    ])
    .unwrap()
    .command
    {
        simulator::config::Command::Serve(c) => c,
        simulator::config::Command::Keygen { .. } => unreachable!(),
    };
    let (sim_listener, sim_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let sim = tokio::spawn(simulator::run(sim_config, sim_listener, stop.clone()));

    let hook_config = webhook::config::WebhookConfig::try_parse_from([
        "webhook",
        "--database-url",
        db.url.expose_secret(),
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &prefix,
        "--vonage-signature-secret",
        SECRET,
    ])
    .unwrap();
    let (hook_listener, hook_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let hook_stop = CancellationToken::new();
    let hook = tokio::spawn(webhook::run(hook_config, hook_listener, hook_stop.clone()));

    // One worker at 10 calls/s: 400 contacts take 40 s, longer than the test needs.
    let worker_config = worker::config::WorkerConfig::try_parse_from([
        "worker",
        "--database-url",
        db.url.expose_secret(),
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &prefix,
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        &prefix,
        "--rate-per-sec",
        "10",
        "--http-addr",
        "127.0.0.1:0",
        "--public-url",
        &format!("http://{hook_addr}"),
        "--vonage-api-url",
        &format!("http://{sim_addr}"),
        "--vonage-application-id",
        APP,
        "--vonage-private-key-path",
        dir.join("private.pem").to_str().unwrap(),
    ])
    .unwrap();
    let worker = tokio::spawn(worker::run(worker_config, stop.clone()));

    let mut csv = String::from("number\n");
    for i in 0..CONTACTS {
        csv.push_str(&format!("+1415556{:04}\n", 1000 + i));
    }
    let contacts = dir.join("contacts.csv");
    std::fs::write(&contacts, csv).unwrap();
    let cli = producer::config::Cli::try_parse_from([
        "producer",
        "--database-url",
        db.url.expose_secret(),
        "enqueue",
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &prefix,
        "--campaign",
        CAMPAIGN,
        "--contacts",
        contacts.to_str().unwrap(),
        "--message",
        "Browser test.",
        "--from",
        "+14155550100",
        "--vonage-application-id",
        APP,
    ])
    .unwrap();
    let producer::config::Command::Enqueue(args) = cli.command else { unreachable!() };
    let report = producer::enqueue(&db.pool, &args).await.unwrap();
    assert_eq!(report.published as usize, CONTACTS);
    let scopes = ["campaigns:read".to_owned(), "campaigns:control".to_owned()];
    let key = producer::apikey::create(&db.pool, "browser", &scopes, &[]).await.unwrap();

    let shots = root.join("target/ui-e2e");
    let run = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(&browser_dir)
        .env("TOCSIN_UI_URL", format!("http://{hook_addr}"))
        .env("TOCSIN_UI_KEY", &key)
        .env("TOCSIN_UI_CAMPAIGN", CAMPAIGN)
        .env("TOCSIN_UI_SCREENSHOT_DIR", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the browser script did not finish within 150 s")
        .unwrap_or_else(|e| panic!("could not start node ({e}): {HOW_TO_INSTALL}"));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser script failed (screenshot in {}):\n{log}", shots.display());
    eprintln!("{log}");
    let timings: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the script's JSON timings");
    // Epoch milliseconds, on this machine's clock (the database's too).
    let at = |k: &str| -> i64 { timings[k].as_i64().unwrap_or_else(|| panic!("no {k} in {timings}")) };

    // What the page showed, checked in the database: no call was placed in
    // the paused window, calls were placed again after resume, and the
    // campaign ended cancelled.
    let placed = |from: i64, to: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM calls \
                 WHERE placed_at >= to_timestamp($1::float8 / 1000) AND placed_at < to_timestamp($2::float8 / 1000)",
            )
                .bind(from)
                .bind(to)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        placed(at("window_from"), at("window_to")).await,
        0,
        "calls were placed while paused: {timings}"
    );
    assert!(placed(at("resumed_at"), at("cancelled_at")).await > 0, "no call placed after resume: {timings}");
    let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE name = $1")
        .bind(CAMPAIGN)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    assert!(shots.join("dashboard.png").is_file() && shots.join("campaigns.png").is_file());

    // The browser is gone, so no stream holds the webhook's graceful shutdown.
    hook_stop.cancel();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let _ = worker.await;
        let _ = hook.await;
        let _ = sim.await;
    })
    .await;
    let conn = tocsin_core::queue::connect(&amqp_url, "cleanup").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    Topology::new(&prefix).delete(&channel).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
