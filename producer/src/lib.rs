//! The producer: enqueues campaigns and reports on them.
//!
//! `enqueue` streams the contact list on a blocking thread, writes the
//! campaign and one `calls` row per new contact in batches, and publishes
//! one persistent job per new row with publisher confirms, marking each row
//! `enqueued_at` once confirmed. A re-run (or a run after a crash) publishes
//! only rows never confirmed, so nobody is enqueued twice.

pub mod config;
pub mod contacts;
pub mod status;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::queue::{self, Publisher, Topology};
use tocsin_core::{CallId, CallJob, CampaignId, PhoneNumber, db};

use crate::config::{Cli, Command, EnqueueArgs, ProviderArg};
use crate::contacts::{ContactReader, Row};

/// Rows written and published together.
const BATCH: usize = 500;

/// Errors with their own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(
        "{service} is unreachable: {detail} (is it running? deploy/local/up.sh starts the local services)"
    )]
    Unreachable { service: &'static str, detail: String },
    #[error("{0}")]
    InputRejected(String),
}

/// The documented exit code for an error: 3 input rejected, 4 a service
/// unreachable, 1 anything else (clap exits 2 on bad usage by itself).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Fatal>() {
        Some(Fatal::InputRejected(_)) => 3,
        Some(Fatal::Unreachable { .. }) => 4,
        None => 1,
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let pool = db::connect(&cli.database.database_url, 4).await.map_err(|e| Fatal::Unreachable {
        service: "PostgreSQL (TOCSIN_DATABASE_URL)",
        detail: e.to_string(),
    })?;
    db::migrate(&pool).await.context("applying database migrations")?;
    match cli.command {
        Command::Enqueue(args) => {
            let report = enqueue(&pool, &args).await?;
            report.print();
            if report.read > 0 && report.new_contacts + report.already_enqueued == 0 {
                return Err(Fatal::InputRejected(format!(
                    "{}: every line was rejected; nothing enqueued",
                    args.contacts.display()
                ))
                .into());
            }
            Ok(())
        }
        Command::Status(args) => status::status(&pool, &args).await,
        Command::Delete { name, yes } => delete(&pool, &name, yes).await,
        Command::Migrate => {
            println!("database schema is up to date");
            Ok(())
        }
    }
}

/// What an enqueue run did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Contact lines read (header and blank lines excluded).
    pub read: u64,
    /// Contacts new to the campaign, written this run.
    pub new_contacts: u64,
    /// Jobs published and confirmed this run (new contacts plus any left
    /// unpublished by an interrupted earlier run).
    pub published: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub malformed: u64,
    /// Contacts already in the campaign from an earlier run.
    pub already_enqueued: u64,
}

impl Report {
    pub fn print(&self) {
        println!(
            "read {}, new {}, published {}, invalid {}, duplicate {}, malformed {}, already enqueued {}",
            self.read,
            self.new_contacts,
            self.published,
            self.invalid,
            self.duplicate,
            self.malformed,
            self.already_enqueued
        );
    }
}

fn provider_name(p: ProviderArg) -> &'static str {
    match p {
        ProviderArg::Vonage => "vonage",
        ProviderArg::Twilio => "twilio",
        ProviderArg::Telnyx => "telnyx",
    }
}

fn valid_campaign_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Enqueues `args.contacts` into campaign `args.campaign`.
pub async fn enqueue(pool: &PgPool, args: &EnqueueArgs) -> anyhow::Result<Report> {
    if !valid_campaign_name(&args.campaign) {
        return Err(Fatal::InputRejected(format!(
            "campaign name {:?} must be 1-200 letters, digits, '-', '_' or '.'",
            args.campaign
        ))
        .into());
    }
    let message = args.message.trim();
    if message.is_empty() || message.chars().count() > 1500 {
        return Err(Fatal::InputRejected("--message must be 1 to 1500 characters".into()).into());
    }
    let from = PhoneNumber::parse(&args.from, None)
        .map_err(|e| Fatal::InputRejected(format!("--from {:?}: {e}", args.from)))?;
    let reader = ContactReader::open(&args.contacts, &args.number_column, args.default_region.clone())
        .map_err(|e| Fatal::InputRejected(e.to_string()))?;

    let amqp = queue::connect(args.amqp.amqp_url.expose_secret(), "tocsin-producer")
        .await
        .map_err(|e| Fatal::Unreachable { service: "RabbitMQ (TOCSIN_AMQP_URL)", detail: e.to_string() })?;
    let topology = Topology::new(&args.amqp.queue_prefix);
    let channel = amqp.create_channel().await.context("opening a RabbitMQ channel")?;
    topology.declare(&channel).await.context("declaring the queue topology")?;
    let publisher = Publisher::new(&amqp, topology).await.context("opening the publish channel")?;

    let campaign = upsert_campaign(pool, args, message, &from).await?;

    // Parse on a blocking thread; batches flow to this task over a bounded channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Row>>(4);
    let parser = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(BATCH);
        for row in reader {
            batch.push(row);
            if batch.len() == BATCH && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                return;
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
    });

    let progress = progress_bar();
    let name = args.contacts.display().to_string();
    let mut report = Report::default();
    while let Some(rows) = rx.recv().await {
        let mut contacts = Vec::with_capacity(rows.len());
        for row in rows {
            report.read += 1;
            match row {
                Row::Contact(c) => contacts.push(c),
                Row::Rejected(r) => {
                    match r.reason {
                        contacts::Reason::Invalid(_) => report.invalid += 1,
                        contacts::Reason::Duplicate { .. } => report.duplicate += 1,
                        contacts::Reason::Malformed(_) => report.malformed += 1,
                    }
                    progress.suspend(|| eprintln!("{name}:{}: {:?}: {}", r.line, r.value, r.reason));
                }
            }
        }
        let fresh = insert_calls(pool, campaign, &contacts).await?;
        report.new_contacts += fresh.len() as u64;
        report.already_enqueued += (contacts.len() - fresh.len()) as u64;
        report.published += publish(pool, &publisher, campaign, &fresh).await?;
        progress.set_position(report.read);
    }
    parser.await.context("the contact reader stopped unexpectedly")?;

    // Rows an interrupted earlier run wrote but never got confirmed.
    loop {
        let pending: Vec<(CallId, String)> = sqlx::query_as(
            "SELECT id, number FROM calls WHERE campaign_id = $1 AND enqueued_at IS NULL AND state = 'queued' \
             ORDER BY id LIMIT $2",
        )
        .bind(campaign)
        .bind(BATCH as i64)
        .fetch_all(pool)
        .await?;
        if pending.is_empty() {
            break;
        }
        let rows = pending
            .into_iter()
            .filter_map(|(id, n)| PhoneNumber::from_e164(&n).ok().map(|n| (id, n)))
            .collect::<Vec<_>>();
        report.published += publish(pool, &publisher, campaign, &rows).await?;
    }
    progress.finish_and_clear();
    let _ = amqp.close(200, "done".into()).await;
    Ok(report)
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} contacts read ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn upsert_campaign(
    pool: &PgPool,
    args: &EnqueueArgs,
    message: &str,
    from: &PhoneNumber,
) -> anyhow::Result<CampaignId> {
    let id = CampaignId::from_name(&args.campaign);
    let provider = provider_name(args.provider);
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, language, provider, from_number, repeat) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
    )
    .bind(id)
    .bind(&args.campaign)
    .bind(message)
    .bind(&args.language)
    .bind(provider)
    .bind(from.as_str())
    .bind(args.repeat)
    .execute(pool)
    .await
    .context("writing the campaign")?;
    let (existing_message, existing_provider): (String, String) =
        sqlx::query_as("SELECT message, provider FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .context("reading the campaign back")?;
    if existing_provider != provider {
        return Err(Fatal::InputRejected(format!(
            "campaign {:?} already exists with provider {existing_provider}",
            args.campaign
        ))
        .into());
    }
    if existing_message != message {
        if !args.update_message {
            return Err(Fatal::InputRejected(format!(
                "campaign {:?} already exists with a different message; pass --update-message to change it \
                 (calls not yet answered will speak the new one)",
                args.campaign
            ))
            .into());
        }
        sqlx::query("UPDATE campaigns SET message = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(message)
            .execute(pool)
            .await
            .context("updating the campaign's message")?;
    }
    Ok(id)
}

/// Inserts the batch; returns the rows that were new to the campaign.
async fn insert_calls(
    pool: &PgPool,
    campaign: CampaignId,
    contacts: &[contacts::Contact],
) -> anyhow::Result<Vec<(CallId, PhoneNumber)>> {
    if contacts.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<uuid::Uuid> = contacts.iter().map(|c| CallId::derive(campaign, &c.number).0).collect();
    let numbers: Vec<&str> = contacts.iter().map(|c| c.number.as_str()).collect();
    let lines: Vec<i32> = contacts.iter().map(|c| i32::try_from(c.line).unwrap_or(i32::MAX)).collect();
    let attributes: Vec<&serde_json::Value> = contacts.iter().map(|c| &c.attributes).collect();
    let inserted: Vec<(CallId, String)> = sqlx::query_as(
        "INSERT INTO calls (id, campaign_id, number, source_line, attributes) \
         SELECT id, $5, number, line, attrs \
         FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::jsonb[]) AS t(id, number, line, attrs) \
         ON CONFLICT (campaign_id, number) DO NOTHING \
         RETURNING id, number",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&lines)
    .bind(&attributes)
    .bind(campaign)
    .fetch_all(pool)
    .await
    .context("writing calls")?;
    Ok(inserted.into_iter().filter_map(|(id, n)| PhoneNumber::from_e164(&n).ok().map(|n| (id, n))).collect())
}

/// Publishes one job per row, waits for every confirm, then marks the rows.
async fn publish(
    pool: &PgPool,
    publisher: &Publisher,
    campaign: CampaignId,
    rows: &[(CallId, PhoneNumber)],
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<CallJob> = rows.iter().map(|(_, n)| CallJob::new(campaign, n.clone(), 1)).collect();
    publisher.publish_all(&jobs).await.context("publishing call jobs")?;
    let ids: Vec<uuid::Uuid> = rows.iter().map(|(id, _)| id.0).collect();
    sqlx::query("UPDATE calls SET enqueued_at = now() WHERE id = ANY($1) AND enqueued_at IS NULL")
        .bind(&ids)
        .execute(pool)
        .await
        .context("marking calls enqueued")?;
    Ok(jobs.len() as u64)
}

async fn delete(pool: &PgPool, name: &str, yes: bool) -> anyhow::Result<()> {
    if !yes {
        return Err(Fatal::InputRejected(format!(
            "deleting campaign {name:?} removes its calls and events; pass --yes to confirm"
        ))
        .into());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM call_events WHERE call_id IN (SELECT k.id FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1)")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM campaigns WHERE name = $1").bind(name).execute(&mut *tx).await?;
    tx.commit().await?;
    if deleted.rows_affected() == 0 {
        println!("no campaign named {name:?}");
    } else {
        println!("deleted campaign {name:?}");
    }
    Ok(())
}
