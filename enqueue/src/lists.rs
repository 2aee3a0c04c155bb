//! Saved contact lists: importing one (the same readers and checks as an
//! enqueue), finding and deleting one, and enqueueing a campaign from one.
//!
//! An import reads with the pipeline's reader and checks (`input`,
//! `contacts`: E.164, duplicates, unreadable lines, time zones), drops
//! do-not-call numbers in the statement that writes each batch, and hands
//! every rejected line to the observer. It replaces the list's contacts in
//! one transaction, so a campaign starting meanwhile reads the old list or
//! the new one, never a mix; an import that is interrupted or rejects every
//! line leaves the old list as it was.
//!
//! A campaign from a saved list goes through the pipeline like any other
//! contacts: the entries are streamed out of PostgreSQL as parsed records
//! (one repeatable-read snapshot, a page at a time, through a bounded
//! channel), so validation, the do-not-call check (numbers added since the
//! import are still never called), dedupe and idempotency are the
//! pipeline's own, and each contact keeps its line of the imported file
//! (`calls.source_line`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::contacts::{ContactReader, Reason, Rejection, Row};
use crate::input::{RawContact, Record};
use crate::pipeline::{Contacts, Counters, Observer, Report, read_in_batches};
use crate::{EnqueueError, Spec};

/// Contacts written per statement on import.
const IMPORT_BATCH: usize = 5000;
/// Entries read per query when a campaign streams a list.
const PAGE: i64 = 2000;

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
}

impl ImportReport {
    fn count(&mut self, reason: &Reason) {
        match reason {
            Reason::Invalid(_) | Reason::Template(_) | Reason::Speech(_) => self.invalid += 1,
            Reason::Duplicate { .. } => self.duplicate += 1,
            Reason::DoNotCall => self.do_not_call += 1,
            Reason::Malformed(_) | Reason::TooLong { .. } | Reason::BadTimezone(_) => self.malformed += 1,
        }
    }

    pub fn rejected(&self) -> u64 {
        self.invalid + self.duplicate + self.do_not_call + self.malformed
    }
}

/// Imports `contacts` as list `list`, replacing its contacts; every
/// rejected line goes to `observer`.
pub async fn import(
    pool: &PgPool,
    list: &str,
    contacts: Contacts,
    default_region: Option<String>,
    observer: &dyn Observer,
    stop: &CancellationToken,
) -> Result<ImportReport, EnqueueError> {
    let started = Instant::now();
    if tocsin_core::campaign::check_name("list", list).is_err() {
        return Err(EnqueueError::Refused(format!(
            "{list:?} is not a valid list name: use 1-200 letters, digits, '-', '_' or '.'"
        )));
    }
    let opened = contacts.open(Arc::new(AtomicU64::new(0))).await?;
    let name = opened.name.clone();
    let reader = ContactReader::new(opened.source, default_region);
    let mut report = ImportReport { list: list.to_owned(), source: name.clone(), ..ImportReport::default() };
    write_list(pool, list, &name, reader, observer, stop, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Streams the reader's rows into the list inside one transaction, which
/// commits only when the whole file was read and something was saved.
async fn write_list(
    pool: &PgPool,
    list: &str,
    source: &str,
    reader: ContactReader,
    observer: &dyn Observer,
    stop: &CancellationToken,
    report: &mut ImportReport,
) -> Result<(), EnqueueError> {
    // Parsing runs on a blocking thread while the previous batch is written.
    let (mut rows, reading) = read_in_batches(reader, IMPORT_BATCH, 2, Arc::new(AtomicBool::new(false)));
    let mut db = pool.begin().await.map_err(EnqueueError::db("connecting to PostgreSQL"))?;
    // Inserting first and then locking the row serialises two imports of one
    // name whether or not the list existed.
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO contact_lists (name, source) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(list)
    .bind(source)
    .fetch_optional(&mut *db)
    .await
    .map_err(EnqueueError::db("creating the list"))?;
    let (id, before): (i64, i64) =
        sqlx::query_as("SELECT id, contacts FROM contact_lists WHERE name = $1 FOR UPDATE")
            .bind(list)
            .fetch_one(&mut *db)
            .await
            .map_err(EnqueueError::db("locking the list"))?;
    let created_now = created.is_some();
    report.replaced = (!created_now).then_some(before as u64);
    sqlx::query("DELETE FROM contact_list_entries WHERE list_id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .map_err(EnqueueError::db("clearing the list's old contacts"))?;
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
        .map_err(EnqueueError::db("saving contacts"))?;
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
        if !rejected.is_empty() {
            observer.rejected(&rejected);
        }
    }
    drop(rows);
    reading
        .await
        .map_err(|e| EnqueueError::Failed { doing: "reading the contacts", detail: e.to_string() })?
        .map_err(|e| EnqueueError::InputRejected(format!("{source}: reading failed: {e}")))?;
    if stop.is_cancelled() {
        // Dropping the transaction rolls it back: the old list stays.
        return Err(EnqueueError::Interrupted);
    }
    if report.read == 0 {
        return Err(EnqueueError::InputRejected(format!(
            "{source}: no contacts in the list (only a header?)"
        )));
    }
    if report.saved == 0 {
        return Err(EnqueueError::InputRejected(format!(
            "{source}: every line was rejected ({} invalid, {} duplicate, {} do-not-call, {} malformed); \
             list {list:?} left as it was",
            report.invalid, report.duplicate, report.do_not_call, report.malformed
        )));
    }
    sqlx::query("UPDATE contact_lists SET contacts = $2, source = $3, imported_at = now() WHERE id = $1")
        .bind(id)
        .bind(report.saved as i64)
        .bind(source)
        .execute(&mut *db)
        .await
        .map_err(EnqueueError::db("recording the list's size"))?;
    db.commit().await.map_err(EnqueueError::db("saving the list"))?;
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

/// Every saved list, by name.
pub async fn all(pool: &PgPool) -> Result<Vec<ListInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, source, contacts, created_at, imported_at FROM contact_lists ORDER BY name",
    )
    .fetch_all(pool)
    .await
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

/// The error for a list that does not exist (the API answers it 400
/// naming its field).
pub fn unknown_list(name: &str) -> EnqueueError {
    EnqueueError::InputRejected(format!(
        "no saved contact list named {name:?} (`producer list show` names them; `producer list import` saves one)"
    ))
}

/// Deletes list `name`; `false` when there was none. Campaigns made from
/// it keep their calls.
pub async fn delete(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM contact_lists WHERE name = $1").bind(name).execute(pool).await?;
    Ok(deleted.rows_affected() > 0)
}

/// Runs `spec` on saved list `list`: the same checks, do-not-call filter
/// and idempotency as any other contacts. The spec's `default_region` is
/// not used (the list's numbers were stored in E.164).
pub async fn enqueue_list(
    pool: &PgPool,
    spec: &Spec,
    list: &str,
    counters: &Arc<Counters>,
    observer: &dyn Observer,
    stop: &CancellationToken,
) -> Result<Report, EnqueueError> {
    let info = find(pool, list)
        .await
        .map_err(EnqueueError::db("reading the contact list"))?
        .ok_or_else(|| unknown_list(list))?;
    let spec = Spec { default_region: None, ..spec.clone() };
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Record>>(PAGE as usize);
    let contacts = Contacts::Records {
        name: format!("list {list}"),
        has_timezone: true,
        // Read on the pipeline's blocking reader thread.
        records: Box::new(std::iter::from_fn(move || rx.blocking_recv())),
    };
    let (fed, enqueued) = tokio::join!(
        feed(pool, info.id, tx),
        crate::enqueue(pool, &spec, contacts, counters, observer, stop)
    );
    // A failed feed also fails the enqueue's reader; its own error says why.
    fed.map_err(EnqueueError::db("reading the saved list"))?;
    enqueued
}

/// Sends list `id`'s contacts, a page at a time, from one snapshot. A
/// failure is sent too, so the reader fails instead of seeing a short list.
async fn feed(pool: &PgPool, id: i64, tx: mpsc::Sender<std::io::Result<Record>>) -> Result<(), sqlx::Error> {
    let result = feed_pages(pool, id, &tx).await;
    if let Err(e) = &result {
        let _ = tx.send(Err(std::io::Error::other(format!("reading the saved list failed: {e}")))).await;
    }
    result
}

async fn feed_pages(
    pool: &PgPool,
    id: i64,
    tx: &mpsc::Sender<std::io::Result<Record>>,
) -> Result<(), sqlx::Error> {
    let mut db = pool.begin().await?;
    // One snapshot for every page: an import committing meanwhile is not seen.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *db).await?;
    let mut last = 0i64;
    loop {
        let page: Vec<(i64, String, Option<String>, String)> = sqlx::query_as(
            "SELECT line, number, timezone, attributes::text \
             FROM contact_list_entries WHERE list_id = $1 AND line > $2 ORDER BY line LIMIT $3",
        )
        .bind(id)
        .bind(last)
        .bind(PAGE)
        .fetch_all(&mut *db)
        .await?;
        let full = page.len() as i64 == PAGE;
        for (line, number, timezone, attributes) in page {
            last = line;
            let contact = RawContact { line: u64::try_from(line).unwrap_or(0), number, timezone, attributes };
            if tx.send(Ok(Record::Contact(contact))).await.is_err() {
                // The enqueue stopped reading (finished early, failed or interrupted).
                return Ok(());
            }
        }
        if !full {
            break;
        }
    }
    db.rollback().await?;
    Ok(())
}
