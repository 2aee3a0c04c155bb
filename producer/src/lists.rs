//! Saved contact lists: `producer list import|show|delete`, and campaigns
//! made from a saved list (`enqueue_list`, used by the HTTP API and the
//! Alertmanager receiver).
//!
//! An import reads the file with the same reader and checks as `producer
//! enqueue` (`input`, `contacts`: E.164, duplicates, unreadable lines, time
//! zones), drops do-not-call numbers in the statement that writes each batch,
//! and reports every rejected line the same way (`RejectSink`). It replaces
//! the list's contacts in one transaction, so a campaign starting meanwhile
//! reads the old list or the new one, never a mix; an import that is
//! interrupted or rejects every line leaves the old list as it was.
//!
//! A campaign from a saved list goes through `enqueue_from` like any other
//! list: the entries are streamed out of PostgreSQL as JSON Lines (one
//! repeatable-read snapshot, a page at a time, through a bounded channel),
//! so validation, the do-not-call check (numbers added since the import are
//! still never called), dedupe and idempotency are the pipeline's own. Blank
//! lines keep every contact on its line of the imported file, so
//! `calls.source_line` still points at the operator's file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use indicatif::ProgressBar;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::config::{EnqueueArgs, ListCommand, ListImportArgs};
use crate::contacts::{ContactReader, Reason, Rejection, Row};
use crate::enqueue::{RejectSink, Rejections, Report};
use crate::input::{Columns, ContactInput, Format, SharedReader, Source};
use crate::{Fatal, campaign};

/// Contacts written per statement on import.
const IMPORT_BATCH: usize = 5000;
/// Entries read per query when a campaign streams a list.
const PAGE: i64 = 2000;
/// Keys a streamed list puts its number and time zone under: names no
/// column of an operator's file plausibly has, so the other columns
/// (attributes) pass through untouched whatever they are called.
const NUMBER_KEY: &str = "tocsin:number";
const TIMEZONE_KEY: &str = "tocsin:timezone";

/// `producer list import|show|delete`.
pub async fn run(pool: &PgPool, cmd: ListCommand, stop: CancellationToken) -> anyhow::Result<()> {
    match cmd {
        ListCommand::Import(args) => {
            let (report, _) = import(pool, &args, Rejections::Print, stop).await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print();
            }
            Ok(())
        }
        ListCommand::Show { name: None, json, .. } => show_all(pool, json).await,
        ListCommand::Show { name: Some(name), contacts, json } => show(pool, &name, contacts, json).await,
        ListCommand::Delete { name, yes } => delete(pool, &name, yes).await,
    }
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct ImportReport {
    pub list: String,
    pub source: String,
    /// Contact lines read (header and blank lines excluded).
    pub read: u64,
    /// Contacts now in the list.
    pub saved: u64,
    /// Contacts the list held before (its contacts are replaced), if it existed.
    pub replaced: Option<u64>,
    pub invalid: u64,
    pub duplicate: u64,
    pub do_not_call: u64,
    /// Unreadable lines: wrong field count, bad UTF-8 or JSON, too long, bad time zone.
    pub malformed: u64,
    pub seconds: f64,
    pub rejects_file: Option<std::path::PathBuf>,
}

impl ImportReport {
    fn count(&mut self, reason: &Reason) {
        match reason {
            Reason::Invalid(_) => self.invalid += 1,
            Reason::Duplicate { .. } => self.duplicate += 1,
            Reason::DoNotCall => self.do_not_call += 1,
            Reason::Malformed(_) | Reason::TooLong { .. } | Reason::BadTimezone(_) => self.malformed += 1,
        }
    }

    pub fn rejected(&self) -> u64 {
        self.invalid + self.duplicate + self.do_not_call + self.malformed
    }

    /// The human summary, on standard output.
    pub fn print(&self) {
        let replaced = match self.replaced {
            Some(n) => format!(" (replacing {n})"),
            None => String::new(),
        };
        say!(
            "list {}: saved {} contacts{replaced} from {} in {:.1}s",
            self.list,
            self.saved,
            self.source,
            self.seconds
        );
        say!("  {:<12}{:>10}  contact lines", "read", self.read);
        say!("  {:<12}{:>10}", "invalid", self.invalid);
        say!("  {:<12}{:>10}  within the list", "duplicate", self.duplicate);
        say!("  {:<12}{:>10}", "do-not-call", self.do_not_call);
        say!("  {:<12}{:>10}  unreadable lines", "malformed", self.malformed);
        if let Some(path) = &self.rejects_file {
            say!("  rejected lines: {}", path.display());
        }
    }
}

/// Imports `args.file` as list `args.name`, replacing its contacts.
/// Rejected lines are printed or collected as `rejections` says, and always
/// written to `args.rejects` when given.
pub async fn import(
    pool: &PgPool,
    args: &ListImportArgs,
    rejections: Rejections,
    stop: CancellationToken,
) -> anyhow::Result<(ImportReport, Vec<Rejection>)> {
    let started = Instant::now();
    if !campaign::valid_name(&args.name) {
        return Err(Fatal::Usage(format!(
            "{:?} is not a valid list name: use 1-200 letters, digits, '-', '_' or '.'",
            args.name
        ))
        .into());
    }
    let source = Source::from_arg(&args.file);
    let columns = Columns {
        number: args.number_column.clone(),
        timezone: Some(args.timezone_column.clone().unwrap_or_else(|| "timezone".into())),
        timezone_required: args.timezone_column.is_some(),
    };
    let delimiter = args.delimiter.unwrap_or_else(|| if is_tsv(&args.file) { b'\t' } else { b',' });
    let (open_source, format) = (source.clone(), args.format);
    let input = tokio::task::spawn_blocking(move || {
        ContactInput::open(&open_source, format, delimiter, &columns, Arc::new(AtomicU64::new(0)))
    })
    .await
    .context("opening the contact list")?
    .map_err(|e| Fatal::InputRejected(e.to_string()))?;
    let name = input.name().to_owned();
    let sink = RejectSink::start(args.rejects.clone(), name.clone(), ProgressBar::hidden(), rejections)?;
    let reader = ContactReader::new(input, args.default_region.clone());
    let mut report = ImportReport {
        list: args.name.clone(),
        source: name.clone(),
        rejects_file: args.rejects.clone(),
        ..ImportReport::default()
    };
    let written = write_list(pool, &args.name, &name, reader, &sink, &stop, &mut report).await;
    let finished =
        tokio::task::spawn_blocking(move || sink.finish()).await.context("writing rejected lines")?;
    written?;
    let (shown, collected) = finished?;
    let hidden = report.rejected().saturating_sub(shown);
    if hidden > 0 && rejections == Rejections::Print {
        let hint = match &args.rejects {
            Some(p) => format!("every rejected line is in {}", p.display()),
            None => "pass --rejects FILE for the full list".into(),
        };
        tell!("... and {hidden} more rejected lines ({hint})");
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok((report, collected))
}

fn is_tsv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
}

/// Streams the reader's rows into the list inside one transaction, which
/// commits only when the whole file was read and something was saved.
async fn write_list(
    pool: &PgPool,
    list: &str,
    source: &str,
    mut reader: ContactReader,
    sink: &RejectSink,
    stop: &CancellationToken,
    report: &mut ImportReport,
) -> anyhow::Result<()> {
    // Parsing runs on a blocking thread while the previous batch is written.
    let (tx, mut rows) = mpsc::channel::<Vec<Row>>(2);
    let reading = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        while let Some(row) = reader.next_row() {
            batch.push(row?);
            if batch.len() == IMPORT_BATCH
                && tx.blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH))).is_err()
            {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok(())
    });
    let mut db = pool.begin().await.context("connecting to PostgreSQL")?;
    // Inserting first and then locking the row serialises two imports of one
    // name whether or not the list existed.
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO contact_lists (name, source) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(list)
    .bind(source)
    .fetch_optional(&mut *db)
    .await
    .context("creating the list")?;
    let (id, before): (i64, i64) =
        sqlx::query_as("SELECT id, contacts FROM contact_lists WHERE name = $1 FOR UPDATE")
            .bind(list)
            .fetch_one(&mut *db)
            .await
            .context("locking the list")?;
    let created_now = created.is_some();
    report.replaced = (!created_now).then_some(before as u64);
    sqlx::query("DELETE FROM contact_list_entries WHERE list_id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .context("clearing the list's old contacts")?;
    while let Some(batch) = rows.recv().await {
        if stop.is_cancelled() {
            break;
        }
        report.read += batch.len() as u64;
        let mut rejected = Vec::new();
        let mut contacts = Vec::with_capacity(batch.len());
        for row in batch {
            match row {
                Row::Contact(c) => contacts.push(c),
                Row::Rejected(r) => rejected.push(r),
            }
        }
        let lines: Vec<i64> = contacts.iter().map(|c| c.line as i64).collect();
        let numbers: Vec<&str> = contacts.iter().map(|c| c.number.as_str()).collect();
        let zones: Vec<Option<&str>> = contacts.iter().map(|c| c.timezone.map(|t| t.name())).collect();
        let attributes: Vec<&str> = contacts.iter().map(|c| c.attributes.as_str()).collect();
        // The do-not-call check and the insert in one statement, as enqueue does.
        let blocked: Vec<i64> = sqlx::query_scalar(
            "WITH input AS ( \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]) AS t(line, number, tz, attrs) \
             ), saved AS ( \
                 INSERT INTO contact_list_entries (list_id, line, number, timezone, attributes) \
                 SELECT $5, i.line, i.number, i.tz, i.attrs::jsonb FROM input i \
                 WHERE NOT EXISTS (SELECT 1 FROM do_not_call d WHERE d.number = i.number) \
             ) \
             SELECT i.line FROM input i JOIN do_not_call d ON d.number = i.number",
        )
        .bind(&lines)
        .bind(&numbers)
        .bind(&zones)
        .bind(&attributes)
        .bind(id)
        .fetch_all(&mut *db)
        .await
        .context("saving contacts")?;
        for line in &blocked {
            if let Ok(i) = lines.binary_search(line) {
                rejected.push(Rejection {
                    line: contacts[i].line,
                    value: contacts[i].number.as_str().to_owned(),
                    reason: Reason::DoNotCall,
                });
            }
        }
        report.saved += (contacts.len() - blocked.len()) as u64;
        rejected.sort_by_key(|r| r.line);
        for r in &rejected {
            report.count(&r.reason);
        }
        sink.send(&rejected);
    }
    drop(rows);
    reading
        .await
        .context("the contact reader stopped unexpectedly")?
        .with_context(|| format!("{source}: reading failed"))?;
    if stop.is_cancelled() {
        // Dropping the transaction rolls it back: the old list stays.
        return Err(Fatal::Interrupted.into());
    }
    if report.read == 0 {
        return Err(
            Fatal::InputRejected(format!("{source}: no contacts in the list (only a header?)")).into()
        );
    }
    if report.saved == 0 {
        return Err(Fatal::InputRejected(format!(
            "{source}: every line was rejected ({} invalid, {} duplicate, {} do-not-call, {} malformed); \
             list {list:?} left as it was",
            report.invalid, report.duplicate, report.do_not_call, report.malformed
        ))
        .into());
    }
    sqlx::query("UPDATE contact_lists SET contacts = $2, source = $3, imported_at = now() WHERE id = $1")
        .bind(id)
        .bind(report.saved as i64)
        .bind(source)
        .execute(&mut *db)
        .await
        .context("recording the list's size")?;
    db.commit().await.context("saving the list")?;
    Ok(())
}

/// A saved list, without its contacts.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ListInfo {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub source: String,
    pub contacts: i64,
    pub created_at: DateTime<Utc>,
    pub imported_at: DateTime<Utc>,
}

/// The list named `name`, if there is one.
pub async fn find(pool: &PgPool, name: &str) -> Result<Option<ListInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, source, contacts, created_at, imported_at FROM contact_lists WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// The error for a list that does not exist (`Fatal::InputRejected`: the
/// API answers it 400 naming its field).
pub fn unknown_list(name: &str) -> anyhow::Error {
    Fatal::InputRejected(format!(
        "no saved contact list named {name:?} (`producer list show` names them; `producer list import` saves one)"
    ))
    .into()
}

/// Enqueues saved list `list` into campaign `args.campaign` through
/// `enqueue_from`: the same checks, do-not-call filter and idempotency as a
/// file. The list-reading fields of `args` (`format`, columns, delimiter,
/// region) are set here; the list's numbers are already E.164.
pub async fn enqueue_list(
    pool: &PgPool,
    mut args: EnqueueArgs,
    list: &str,
    configured: &[tocsin_core::provider::Provider],
    rejections: Rejections,
    stop: CancellationToken,
) -> anyhow::Result<(Report, Vec<Rejection>)> {
    let info =
        find(pool, list).await.context("reading the contact list")?.ok_or_else(|| unknown_list(list))?;
    args.format = Some(Format::Jsonl);
    args.number_column = NUMBER_KEY.into();
    args.timezone_column = Some(TIMEZONE_KEY.into());
    args.delimiter = None;
    args.default_region = None;
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    let source = Source::Stream {
        name: format!("list {list}"),
        // The pipeline's blocking reader thread reads the channel through
        // tokio-util's bridge from async to `std::io::Read`.
        reader: SharedReader::new(SyncIoBridge::new(StreamReader::new(futures::stream::poll_fn(
            move |cx| rx.poll_recv(cx),
        )))),
    };
    let (fed, enqueued) = tokio::join!(
        feed(pool, info.id, tx),
        crate::enqueue_from(pool, &args, source, configured, rejections, stop)
    );
    // A failed feed also fails the enqueue's reader; its own error says why.
    fed?;
    enqueued
}

type Chunk = std::io::Result<Bytes>;

/// Sends list `id` as JSON Lines, a page at a time, from one snapshot. A
/// failure is sent too, so the reader fails instead of seeing a short list.
async fn feed(pool: &PgPool, id: i64, tx: mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    let result = feed_pages(pool, id, &tx).await;
    if let Err(e) = &result {
        let _ = tx.send(Err(std::io::Error::other(format!("reading the saved list failed: {e:#}")))).await;
    }
    result
}

async fn feed_pages(pool: &PgPool, id: i64, tx: &mpsc::Sender<Chunk>) -> anyhow::Result<()> {
    let mut db = pool.begin().await.context("connecting to PostgreSQL")?;
    // One snapshot for every page: an import committing meanwhile is not seen.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *db)
        .await
        .context("starting a snapshot of the list")?;
    let mut last = 0i64;
    loop {
        let page: Vec<(i64, String)> = sqlx::query_as(
            "SELECT line, ((attributes - $3 - $4) || jsonb_build_object($3, number, $4, timezone))::text \
             FROM contact_list_entries WHERE list_id = $1 AND line > $2 ORDER BY line LIMIT $5",
        )
        .bind(id)
        .bind(last)
        .bind(NUMBER_KEY)
        .bind(TIMEZONE_KEY)
        .bind(PAGE)
        .fetch_all(&mut *db)
        .await
        .context("reading the list's contacts")?;
        let full = page.len() as i64 == PAGE;
        let mut chunk = Vec::with_capacity(page.len() * 80);
        for (line, json) in page {
            // Blank lines (skipped by the reader) keep the contact on its line.
            let gap = usize::try_from(line - last - 1).unwrap_or(0);
            chunk.resize(chunk.len() + gap, b'\n');
            chunk.extend_from_slice(json.as_bytes());
            chunk.push(b'\n');
            last = line;
        }
        if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
            // The enqueue stopped reading (finished early, failed or interrupted).
            break;
        }
        if !full {
            break;
        }
    }
    db.rollback().await.context("ending the snapshot")?;
    Ok(())
}

async fn show_all(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let lists: Vec<ListInfo> = sqlx::query_as(
        "SELECT id, name, source, contacts, created_at, imported_at FROM contact_lists ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .context("reading the saved contact lists")?;
    if json {
        for l in &lists {
            say!("{}", serde_json::to_string(l)?);
        }
        return Ok(());
    }
    if lists.is_empty() {
        say!("no saved contact lists yet (producer list import NAME FILE saves one)");
        return Ok(());
    }
    let width = lists.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    say!("{:<width$}  {:>9}  {:<20}  source", "list", "contacts", "imported");
    for l in lists {
        say!(
            "{:<width$}  {:>9}  {:<20}  {}",
            l.name,
            l.contacts,
            l.imported_at.format("%Y-%m-%d %H:%M UTC"),
            l.source
        );
    }
    Ok(())
}

async fn show(pool: &PgPool, name: &str, contacts: bool, json: bool) -> anyhow::Result<()> {
    let info = find(pool, name)
        .await
        .context("reading the contact list")?
        .ok_or_else(|| Fatal::Usage(format!("no saved contact list named {name:?}")))?;
    if !contacts {
        if json {
            say!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            say!("list:      {}", info.name);
            say!("contacts:  {}", info.contacts);
            say!("source:    {}", info.source);
            say!("imported:  {}", info.imported_at.format("%Y-%m-%d %H:%M:%S UTC"));
            say!("created:   {}", info.created_at.format("%Y-%m-%d %H:%M:%S UTC"));
        }
        return Ok(());
    }
    // JSON Lines either way: attributes are arbitrary objects, which CSV cannot hold.
    let mut rows = sqlx::query_scalar::<_, String>(
        "SELECT (attributes || jsonb_build_object('number', number, 'timezone', timezone, 'line', line))::text \
         FROM contact_list_entries WHERE list_id = $1 ORDER BY line",
    )
    .bind(info.id)
    .fetch(pool);
    while let Some(line) = rows.try_next().await.context("reading the list's contacts")? {
        say!("{line}");
    }
    Ok(())
}

async fn delete(pool: &PgPool, name: &str, yes: bool) -> anyhow::Result<()> {
    if !yes {
        return Err(Fatal::Usage(format!(
            "deleting list {name:?} cannot be undone; add --yes to confirm (campaigns made from it keep their calls)"
        ))
        .into());
    }
    let deleted = sqlx::query("DELETE FROM contact_lists WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .context("deleting the list")?
        .rows_affected();
    if deleted == 0 {
        return Err(Fatal::Usage(format!("no saved contact list named {name:?}")).into());
    }
    say!("list {name}: deleted");
    Ok(())
}
