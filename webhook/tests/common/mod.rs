//! The harness the API tests share: a fresh database, a unique queue
//! prefix, and the whole webhook app on them, driven with `Router::oneshot`.

use axum::Router;
use clap::Parser;
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};

pub struct App {
    pub db: TestDb,
    pub app: Router,
    pub prefix: String,
    pub amqp_url: String,
}

impl App {
    /// The app as `webhook` builds it, with its queues under a prefix made
    /// from `name` and the Vonage secret `{name}-test-secret`; `extra` are
    /// more command-line flags.
    pub async fn start(name: &str, extra: &[&str]) -> Self {
        tocsin_core::telemetry::install_crypto_provider();
        tocsin_core::telemetry::metrics_handle();
        let db = TestDb::create().await;
        let amqp_url = testing::amqp_url().await;
        let prefix = testing::unique_prefix(name);
        let secret = format!("{name}-test-secret");
        let mut args = vec![
            "webhook",
            "--database-url",
            db.url.expose_secret(),
            "--amqp-url",
            &amqp_url,
            "--queue-prefix",
            &prefix,
            "--vonage-signature-secret",
            &secret,
        ];
        args.extend_from_slice(extra);
        let config = webhook::config::WebhookConfig::try_parse_from(args).unwrap();
        let app = webhook::app(&config, db.pool.clone()).await.unwrap();
        Self { db, app, prefix, amqp_url }
    }

    /// A new API key with these scopes, limited to these campaign-name prefixes.
    pub async fn key(&self, name: &str, scopes: &[&str], prefixes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        producer::apikey::create(&self.db.pool, name, &scopes, &prefixes).await.unwrap()
    }

    /// Deletes this test's queues and exchange.
    pub async fn cleanup(&self) {
        let conn = tocsin_core::queue::connect(&self.amqp_url, "cleanup").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        Topology::new(&self.prefix).delete(&channel).await.unwrap();
        tocsin_core::queue::close(&conn, "cleanup").await;
    }
}
