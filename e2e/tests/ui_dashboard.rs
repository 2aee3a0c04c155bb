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

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::Options;

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

    // One worker at 10 calls/s (the simulator allows 20): 400 contacts take
    // 40 s, longer than the test needs.
    let stack =
        common::start(Options { workers: 1, rate: 20, worker_rate: Some(10), ..Options::default() }).await;
    let hook_addr = stack.hook_addr;

    let mut csv = String::from("number\n");
    for i in 0..CONTACTS {
        csv.push_str(&format!("+1415556{:04}\n", 1000 + i));
    }
    let args = stack.enqueue_args(CAMPAIGN, &csv, &["--message", "Browser test."]);
    let report = producer::enqueue(&stack.db.pool, &args).await.unwrap();
    assert_eq!(report.published as usize, CONTACTS);
    let scopes = ["campaigns:read", "campaigns:control", "campaigns:write", "audit:read"].map(str::to_owned);
    let key = tocsin_core::apikey::create(&stack.db.pool, "browser", &scopes, &[]).await.unwrap();

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
        let pool = stack.db.pool.clone();
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
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    assert!(shots.join("dashboard.png").is_file() && shots.join("campaigns.png").is_file());

    // The browser is gone, so no stream holds the webhook's graceful shutdown.
    stack.stop().await;
}
