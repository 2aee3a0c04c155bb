//! The harness every webhook test shares: a fresh database, a unique queue
//! prefix, and the whole webhook app on them, driven with `Router::oneshot`.

use axum::Router;
use clap::Parser;
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};
use webhook::config::WebhookConfig;

pub struct App {
    pub db: TestDb,
    pub app: Router,
    pub prefix: String,
    pub amqp_url: String,
    /// The command line the app was built from.
    args: Vec<String>,
}

impl App {
    /// The app as `webhook` builds it, with its queues under a prefix made
    /// from `name` and the Vonage secret `{name}-test-secret`; `extra` are
    /// more command-line flags.
    pub async fn start(name: &str, extra: &[&str]) -> Self {
        let secret = format!("{name}-test-secret");
        let mut flags = vec!["--vonage-signature-secret", secret.as_str()];
        flags.extend_from_slice(extra);
        Self::start_with(name, &flags).await
    }

    /// The app with only these flags besides the database and the broker
    /// (no Vonage secret unless they name one).
    pub async fn start_with(name: &str, flags: &[&str]) -> Self {
        tocsin_core::telemetry::install_crypto_provider();
        // Install the metrics recorder before anything records.
        tocsin_core::telemetry::metrics_handle();
        let db = TestDb::create().await;
        let amqp_url = testing::amqp_url().await;
        let prefix = testing::unique_prefix(name);
        let args: Vec<String> = ["webhook", "--database-url", db.url.expose_secret()]
            .into_iter()
            .chain(["--amqp-url", &amqp_url, "--queue-prefix", &prefix])
            .chain(flags.iter().copied())
            .map(str::to_owned)
            .collect();
        let config = WebhookConfig::try_parse_from(&args).unwrap();
        let app = webhook::app(&config, db.pool.clone()).await.unwrap();
        Self { db, app, prefix, amqp_url, args }
    }

    /// The configuration the app was built from, again (e.g. for `webhook::run`).
    pub fn config(&self) -> WebhookConfig {
        WebhookConfig::try_parse_from(&self.args).unwrap()
    }

    /// A new API key with these scopes, limited to these campaign-name prefixes.
    pub async fn key(&self, name: &str, scopes: &[&str], prefixes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        tocsin_core::apikey::create(&self.db.pool, name, &scopes, &prefixes).await.unwrap()
    }

    /// Saves contact list `name` from a CSV text, as `producer list import` does.
    pub async fn save_list(&self, name: &str, csv: &str) -> tocsin_enqueue::lists::ImportReport {
        let contacts = tocsin_enqueue::Contacts::Text {
            source: tocsin_enqueue::Source::Memory {
                name: format!("{name}.csv"),
                data: csv.as_bytes().into(),
            },
            format: Some(tocsin_enqueue::Format::Csv),
            delimiter: None,
            columns: tocsin_enqueue::Columns {
                number: "number".into(),
                timezone: Some("timezone".into()),
                timezone_required: false,
            },
        };
        let stop = tokio_util::sync::CancellationToken::new();
        tocsin_enqueue::lists::import(&self.db.pool, name, contacts, None, &(), &stop).await.unwrap()
    }

    /// Deletes this test's queues and exchange.
    pub async fn cleanup(&self) {
        let conn = tocsin_core::queue::connect(&self.amqp_url, "cleanup").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        Topology::new(&self.prefix).delete(&channel).await.unwrap();
        tocsin_core::queue::close(&conn, "cleanup").await;
    }
}

/// The harness with a key that has `campaigns:write` and `campaigns:read`.
pub struct Keyed {
    pub base: App,
    pub key: String,
}

impl std::ops::Deref for Keyed {
    type Target = App;
    fn deref(&self) -> &App {
        &self.base
    }
}

impl Keyed {
    pub async fn start(name: &str) -> Self {
        let base = App::start(name, &[]).await;
        let key = base.key(name, &["campaigns:write", "campaigns:read"], &[]).await;
        Self { base, key }
    }
}
