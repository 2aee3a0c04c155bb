//! Shared set-up for the producer's tests: a fresh database, a unique queue
//! prefix on the real RabbitMQ, and helpers to run the CLI in-process or as
//! a child process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use producer::config::{Cli, Command, EnqueueArgs};
use secrecy::ExposeSecret;
use tocsin_core::queue::Topology;
use tocsin_core::testing::{self, TestDb};

pub struct Env {
    pub db: TestDb,
    pub amqp_url: String,
    pub prefix: String,
    pub dir: PathBuf,
}

impl Env {
    pub async fn new(label: &str) -> Self {
        let db = TestDb::create().await;
        let amqp_url = testing::amqp_url().await;
        let prefix = testing::unique_prefix(label);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        Self { db, amqp_url, prefix, dir }
    }

    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Global flags plus `producer enqueue` with the services filled in.
    pub fn enqueue_argv(&self, campaign: &str, contacts: &Path, extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = [
            "producer",
            "--database-url",
            self.db.url.expose_secret(),
            "enqueue",
            "--amqp-url",
            &self.amqp_url,
            "--queue-prefix",
            &self.prefix,
            "--vonage-application-id",
            "test-app",
            "--campaign",
            campaign,
            "--contacts",
            contacts.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.iter().any(|a| *a == "--message" || *a == "--message-file") {
            argv.extend(["--message".into(), "Test alert.".into()]);
        }
        if !extra.contains(&"--from") {
            argv.extend(["--from".into(), "+14155550100".into()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    pub fn enqueue_args(&self, campaign: &str, contacts: &Path, extra: &[&str]) -> Box<EnqueueArgs> {
        let cli = Cli::try_parse_from(self.enqueue_argv(campaign, contacts, extra)).unwrap();
        let Command::Enqueue(args) = cli.command else { unreachable!() };
        args
    }

    pub async fn enqueue(
        &self,
        campaign: &str,
        contacts: &Path,
        extra: &[&str],
    ) -> anyhow::Result<producer::Report> {
        producer::enqueue(&self.db.pool, &self.enqueue_args(campaign, contacts, extra)).await
    }

    /// Runs the producer binary with `args` after the global flags.
    pub fn run_bin(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_producer"));
        cmd.env_remove("TOCSIN_VONAGE_APPLICATION_ID")
            .env_remove("TOCSIN_TWILIO_ACCOUNT_SID")
            .env_remove("TOCSIN_TELNYX_CONNECTION_ID")
            .env("TOCSIN_DATABASE_URL", self.db.url.expose_secret())
            .env("TOCSIN_AMQP_URL", &self.amqp_url)
            .env("TOCSIN_QUEUE_PREFIX", &self.prefix)
            .env("RUST_LOG", "warn")
            .args(args);
        cmd
    }

    /// Calls in the database, and those whose job the broker confirmed
    /// (their enqueue batch is recorded).
    pub async fn rows_and_confirmed(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT count(*), count(b.id) FROM calls c LEFT JOIN enqueue_batches b ON b.id = c.enqueue_batch",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    /// Messages waiting in the work queue.
    pub async fn queued(&self) -> u32 {
        let conn = tocsin_core::queue::connect(&self.amqp_url, "producer-test").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                Topology::new(&self.prefix).work_queue().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        tocsin_core::queue::close(&conn, "done").await;
        q.message_count()
    }

    /// Takes every job off the work queue: call id → copies.
    pub async fn drain(&self) -> HashMap<String, u32> {
        let expected = self.queued().await;
        let conn = tocsin_core::queue::connect(&self.amqp_url, "producer-test").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                Topology::new(&self.prefix).work_queue().into(),
                "drain".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut seen: HashMap<String, u32> = HashMap::new();
        for _ in 0..expected {
            let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.next())
                .await
                .expect("the queue stopped delivering")
                .unwrap()
                .unwrap();
            let job = tocsin_core::CallJob::decode(&delivery.data).unwrap();
            assert_eq!(job.attempt, 1);
            *seen.entry(job.call_id.to_string()).or_default() += 1;
        }
        tocsin_core::queue::close(&conn, "done").await;
        seen
    }

    pub async fn cleanup(self) {
        let conn = tocsin_core::queue::connect(&self.amqp_url, "producer-test-cleanup").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let topology = Topology::new(&self.prefix);
        // The topology exists only if some test step published.
        let declare = conn.create_channel().await.unwrap();
        topology.declare(&declare).await.unwrap();
        topology.delete(&channel).await.unwrap();
        tocsin_core::queue::close(&conn, "done").await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A CSV of `n` valid, distinct US numbers starting at `first`.
pub fn csv_of(n: usize, first: usize) -> String {
    let mut s = String::from("name,number\n");
    for i in first..first + n {
        s.push_str(&format!("Contact {i},{}\n", us_number(i)));
    }
    s
}

/// A valid US number, distinct for each `i` < 8,000,000.
pub fn us_number(i: usize) -> String {
    // NANP: area code and exchange must not start with 0 or 1.
    let area = 201 + (i / 10_000_000) % 700;
    let rest = i % 8_000_000;
    format!("+1{area}{}{:04}", 200 + rest / 10_000, rest % 10_000)
}
