//! The running stack every end-to-end test starts: the simulator (all three
//! providers), the webhook service (signatures verified) and N workers
//! sharing the Redis limiter, on a fresh database, queue prefix and Redis
//! prefix of the test's own, with fresh keys. Each test binary uses a part
//! of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const VONAGE_SECRET: &str = "e2e-vonage-secret";
pub const VONAGE_APP: &str = "e2e-app";
/// The Vonage account's API key and secret (the Applications API).
pub const VONAGE_API_KEY: &str = "e2e-key";
pub const VONAGE_API_SECRET: &str = "e2e-api-secret";
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "e2e-twilio-token";
pub const TELNYX_KEY: &str = "KEYe2e";
pub const TELNYX_CONNECTION: &str = "e2e-connection";
/// The second accounts (`Options::second_accounts`).
pub const TWILIO_SID_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub const TWILIO_TOKEN_B: &str = "e2e-twilio-token-b";
pub const TELNYX_KEY_B: &str = "KEYe2eb";

/// Keys and files every provider needs, made fresh per test.
pub struct Keys {
    pub dir: PathBuf,
    pub telnyx_public_key: String,
}

fn keys(prefix: &str) -> Keys {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let vonage = simulator::keygen::generate().unwrap();
    std::fs::write(dir.join("private.pem"), &vonage.private_pem).unwrap();
    std::fs::write(dir.join("public.pem"), &vonage.public_pem).unwrap();
    // A second Vonage key pair: the "wrong key" a misconfigured worker signs with.
    let other = simulator::keygen::generate().unwrap();
    std::fs::write(dir.join("other.pem"), &other.private_pem).unwrap();
    simulator::keygen::write_telnyx_keys(&dir).unwrap();
    let telnyx_public_key = std::fs::read_to_string(dir.join("telnyx_public_key")).unwrap();
    Keys { dir, telnyx_public_key }
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Worker credentials: the right ones, or deliberately wrong ones.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Credentials {
    Right,
    Wrong,
}

/// What differs between the tests' stacks.
#[derive(Clone, Debug)]
pub struct Options {
    pub credentials: Credentials,
    pub workers: usize,
    /// Calls per second: the simulator's limit for every provider, and the workers' limiter.
    pub rate: u32,
    /// The workers' limiter alone, when it should be below the provider's.
    pub worker_rate: Option<u32>,
    pub sim_extra: Vec<String>,
    pub worker_extra: Vec<String>,
    /// Extra webhook flags.
    pub hook_extra: Vec<String>,
    /// Two more accounts, from accounts files (the simulator's and ours):
    /// `twilio:b` (20 calls/s) and `telnyx:b` (capped at 2 calls at once).
    pub second_accounts: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            credentials: Credentials::Right,
            workers: 2,
            rate: 50,
            worker_rate: None,
            sim_extra: Vec::new(),
            worker_extra: Vec::new(),
            hook_extra: Vec::new(),
            second_accounts: false,
        }
    }
}

pub struct Stack {
    pub db: TestDb,
    pub amqp_url: String,
    pub prefix: String,
    pub keys: Keys,
    pub sim_addr: std::net::SocketAddr,
    pub hook_addr: std::net::SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

pub async fn start(options: Options) -> Stack {
    tocsin_core::telemetry::install_crypto_provider();
    let db = TestDb::create().await;
    let amqp_url = testing::amqp_url().await;
    let redis_url = testing::redis_url().await;
    let prefix = testing::unique_prefix("e2e");
    let keys = keys(&prefix);
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let rate = options.rate.to_string();
    // Telnyx counts dials over a rolling 5 s window.
    let telnyx_window = (options.rate * 5).to_string();

    let mut sim_args = vec![
        "simulator",
        "serve",
        "--vonage-public-key-path",
        path(&keys.dir.join("public.pem")),
        "--vonage-application-id",
        VONAGE_APP,
        "--vonage-signature-secret",
        VONAGE_SECRET,
        "--vonage-api-key",
        VONAGE_API_KEY,
        "--vonage-api-secret",
        VONAGE_API_SECRET,
        "--vonage-rate",
        &rate,
        "--twilio-account-sid",
        TWILIO_SID,
        "--twilio-auth-token",
        TWILIO_TOKEN,
        "--twilio-cps",
        &rate,
        "--telnyx-api-key",
        TELNYX_KEY,
        "--telnyx-connection-id",
        TELNYX_CONNECTION,
        "--telnyx-signing-seed-path",
        path(&keys.dir.join("telnyx_seed")),
        "--telnyx-dials-per-window",
        &telnyx_window,
        // Time compressed fifty-fold, so calls end quickly.
        "--time-scale",
        "0.02",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    sim_args.extend(options.sim_extra.iter().cloned());
    let sim_accounts = keys.dir.join("sim-accounts.toml");
    if options.second_accounts {
        std::fs::write(
            &sim_accounts,
            format!(
                "[twilio.b]\naccount_sid = \"{TWILIO_SID_B}\"\nauth_token = \"{TWILIO_TOKEN_B}\"\ncps = 20.0\n\n\
                 [telnyx.b]\napi_key = \"{TELNYX_KEY_B}\"\nconnection_id = \"conn-b\"\nsigning_seed_path = \"telnyx_seed\"\n\
                 dials_per_window = 100\nwindow = \"5s\"\nmax_concurrent = 2\n"
            ),
        )
        .unwrap();
        sim_args.extend(["--accounts-file".to_owned(), path(&sim_accounts).to_owned()]);
    }
    let simulator::config::Command::Serve(sim_config) =
        simulator::config::Cli::try_parse_from(sim_args).unwrap().command
    else {
        unreachable!()
    };
    let (sim_listener, sim_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    tasks.push(tokio::spawn(simulator::run(sim_config, sim_listener, stop.clone())));

    let (hook_listener, hook_addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let hook_url = format!("http://{hook_addr}");
    let sim_url = format!("http://{sim_addr}");
    // Ours: the same accounts, at the simulator, for the workers, the
    // webhook and the producer.
    let accounts_file = keys.dir.join("accounts.toml");
    let mut accounts_args: Vec<String> = Vec::new();
    if options.second_accounts {
        std::fs::write(
            &accounts_file,
            format!(
                "[twilio.b]\napi_url = \"{sim_url}\"\naccount_sid = \"{TWILIO_SID_B}\"\nauth_token = \"{TWILIO_TOKEN_B}\"\n\
                 rate = \"20/s\"\n\n[telnyx.b]\napi_url = \"{sim_url}\"\napi_key = \"{TELNYX_KEY_B}\"\n\
                 connection_id = \"conn-b\"\npublic_key = \"{}\"\nrate = \"100/5s\"\nmax_concurrent = 2\n",
                keys.telnyx_public_key.trim()
            ),
        )
        .unwrap();
        accounts_args = vec!["--accounts-file".to_owned(), path(&accounts_file).to_owned()];
    }
    let vonage_private = keys.dir.join("private.pem");
    let mut hook_args = vec![
        "webhook",
        "--database-url",
        db.url.expose_secret(),
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &prefix,
        "--public-url",
        &hook_url,
        "--vonage-signature-secret",
        VONAGE_SECRET,
        // The application's own key: unsigned events are confirmed with Vonage.
        "--vonage-api-url",
        &sim_url,
        "--vonage-application-id",
        VONAGE_APP,
        "--vonage-private-key-path",
        path(&vonage_private),
        // Time runs fifty times faster here, and so do the look-ups.
        "--vonage-confirm-rate",
        "500",
        "--twilio-account-sid",
        TWILIO_SID,
        "--twilio-auth-token",
        TWILIO_TOKEN,
        "--telnyx-api-url",
        &sim_url,
        "--telnyx-api-key",
        TELNYX_KEY,
        "--telnyx-connection-id",
        TELNYX_CONNECTION,
        "--telnyx-public-key",
        &keys.telnyx_public_key,
    ];
    // The workers' own limits, as the shared config map gives both on Kubernetes.
    let worker_rate = options.worker_rate.unwrap_or(options.rate).to_string();
    hook_args.extend(["--redis-url", &redis_url, "--redis-prefix", &prefix, "--rate-per-sec", &worker_rate]);
    hook_args.extend(options.hook_extra.iter().map(String::as_str));
    hook_args.extend(accounts_args.iter().map(String::as_str));
    let hook_config = webhook::config::WebhookConfig::try_parse_from(hook_args).unwrap();
    hook_config.validate().unwrap();
    tasks.push(tokio::spawn(webhook::run(hook_config, hook_listener, stop.clone())));

    let (vonage_key, twilio_token, telnyx_key) = match options.credentials {
        Credentials::Right => (keys.dir.join("private.pem"), TWILIO_TOKEN, TELNYX_KEY),
        Credentials::Wrong => (keys.dir.join("other.pem"), "not-the-token", "KEYwrong"),
    };
    for _ in 0..options.workers {
        let mut args = vec![
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
            &worker_rate,
            "--http-addr",
            "127.0.0.1:0",
            "--public-url",
            &hook_url,
            "--vonage-api-url",
            &sim_url,
            "--vonage-application-id",
            VONAGE_APP,
            "--vonage-private-key-path",
            path(&vonage_key),
            "--twilio-api-url",
            &sim_url,
            "--twilio-account-sid",
            TWILIO_SID,
            "--twilio-auth-token",
            twilio_token,
            "--telnyx-api-url",
            &sim_url,
            "--telnyx-api-key",
            telnyx_key,
            "--telnyx-connection-id",
            TELNYX_CONNECTION,
        ];
        args.extend(options.worker_extra.iter().map(String::as_str));
        args.extend(accounts_args.iter().map(String::as_str));
        let config = worker::config::WorkerConfig::try_parse_from(args).unwrap();
        tasks.push(tokio::spawn(worker::run(config, stop.clone())));
    }
    Stack { db, amqp_url, prefix, keys, sim_addr, hook_addr, stop, tasks }
}

impl Stack {
    /// The producer's `enqueue` arguments for `contacts` (a CSV written to
    /// the stack's folder) as campaign `name`, plus `extra` flags.
    pub fn enqueue_args(&self, name: &str, csv: &str, extra: &[&str]) -> producer::config::EnqueueArgs {
        let contacts = self.keys.dir.join(format!("{name}.csv"));
        std::fs::write(&contacts, csv).unwrap();
        let mut argv = vec![
            "producer",
            "--database-url",
            self.db.url.expose_secret(),
            "enqueue",
            "--amqp-url",
            &self.amqp_url,
            "--queue-prefix",
            &self.prefix,
            "--campaign",
            name,
            "--contacts",
            path(&contacts),
            "--from",
            "+14155550100",
            "--vonage-application-id",
            VONAGE_APP,
            "--twilio-account-sid",
            TWILIO_SID,
            "--telnyx-connection-id",
            TELNYX_CONNECTION,
        ];
        let accounts = self.keys.dir.join("accounts.toml");
        if accounts.exists() {
            argv.extend(["--accounts-file", path(&accounts)]);
        }
        argv.extend(extra);
        let cli = producer::config::Cli::try_parse_from(argv).unwrap();
        let producer::config::Command::Enqueue(args) = cli.command else { unreachable!() };
        *args
    }

    /// Waits until every call of `campaign` is terminal.
    pub async fn wait_terminal(&self, campaign: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
                 WHERE c.name = $1 AND call_state_rank(k.state) < 5",
            )
            .bind(campaign)
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            if open == 0 {
                return;
            }
            if Instant::now() >= deadline {
                // Say which calls, and what their events said.
                let stuck: Vec<(String, String, Option<String>, Vec<String>)> = sqlx::query_as(
                    "SELECT k.number, k.state, k.provider_call_id, \
                            ARRAY(SELECT e.status || ' ' || e.dedupe_key FROM call_events e \
                                  WHERE e.call_id = k.id ORDER BY e.id) \
                     FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
                     WHERE c.name = $1 AND call_state_rank(k.state) < 5",
                )
                .bind(campaign)
                .fetch_all(&self.db.pool)
                .await
                .unwrap_or_default();
                panic!("{campaign}: {open} calls still not terminal after 120 s: {stuck:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn sim_calls(&self) -> Vec<serde_json::Value> {
        reqwest::get(format!("http://{}/_sim/calls", self.sim_addr)).await.unwrap().json().await.unwrap()
    }

    pub async fn sim_stats(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/_sim/stats", self.sim_addr)).await.unwrap().json().await.unwrap()
    }

    /// Stops everything (each part must stop cleanly within 30 s) and
    /// removes the test's queues and files.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a service did not stop within 30 s of its shutdown")
                .unwrap()
                .unwrap();
        }
        let conn = tocsin_core::queue::connect(&self.amqp_url, "e2e-cleanup").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        Topology::new(&self.prefix).delete(&channel).await.unwrap();
        let _ = std::fs::remove_dir_all(&self.keys.dir);
    }
}
