//! `producer dnc`: the do-not-call list. `enqueue` never writes a call for
//! a listed number, and adding a number skips its calls still waiting in
//! any campaign (state `skipped`), so the list takes effect at once.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use futures::TryStreamExt;
use sqlx::PgPool;
use tocsin_core::PhoneNumber;

use crate::Fatal;
use crate::config::{DncCommand, DncImportArgs};
use tocsin_enqueue::contacts::{ContactReader, Row};
use tocsin_enqueue::input::{Columns, ContactInput, Source};

const BATCH: usize = 5000;

pub async fn run(pool: &PgPool, cmd: DncCommand) -> anyhow::Result<()> {
    match cmd {
        DncCommand::Add { numbers, reason, default_region } => {
            let numbers = parse_all(&numbers, default_region.as_deref())?;
            let (added, skipped) = add(pool, &numbers, reason.as_deref()).await?;
            say!(
                "do-not-call: {added} added, {} already listed; {skipped} waiting calls skipped",
                numbers.len() as u64 - added
            );
            Ok(())
        }
        DncCommand::Remove { numbers, default_region } => {
            let numbers = parse_all(&numbers, default_region.as_deref())?;
            let removed = sqlx::query("DELETE FROM do_not_call WHERE number = ANY($1)")
                .bind(&numbers)
                .execute(pool)
                .await
                .context("removing numbers from the do-not-call list")?
                .rows_affected();
            say!(
                "do-not-call: {removed} removed, {} were not listed (calls already skipped stay skipped)",
                numbers.len() as u64 - removed
            );
            Ok(())
        }
        DncCommand::Import(args) => import(pool, args).await,
        DncCommand::List { json } => list(pool, json).await,
    }
}

fn parse_all(raw: &[String], region: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let n = PhoneNumber::parse(r, region).map_err(|e| Fatal::Usage(format!("{r:?}: {e}")))?;
        out.push(n.as_str().to_owned());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Adds numbers (E.164); returns (newly added, waiting calls skipped).
pub async fn add(pool: &PgPool, numbers: &[String], reason: Option<&str>) -> anyhow::Result<(u64, u64)> {
    let mut tx = pool.begin().await?;
    let added = sqlx::query(
        "INSERT INTO do_not_call (number, reason) SELECT n, $2 FROM unnest($1::text[]) AS n \
         ON CONFLICT (number) DO NOTHING",
    )
    .bind(numbers)
    .bind(reason)
    .execute(&mut *tx)
    .await
    .context("adding numbers to the do-not-call list")?
    .rows_affected();
    // Calls not yet claimed by a worker never happen; one being dialed now finishes.
    let skipped = tocsin_core::calls::skip_do_not_call(&mut *tx, numbers)
        .await
        .context("skipping waiting calls to do-not-call numbers")?;
    tx.commit().await?;
    // A call claimed and waiting for its slot looks at the list once more,
    // `LAST_CHECK_LEAD` before it is sent. Wait that out (with room) so that
    // once this returns, no new call starts to these numbers.
    tokio::time::sleep(tocsin_core::calls::LAST_CHECK_LEAD * 3).await;
    Ok((added, skipped))
}

async fn import(pool: &PgPool, args: DncImportArgs) -> anyhow::Result<()> {
    let source = Source::from_arg(&args.file);
    let columns = Columns { number: args.number_column.clone(), timezone: None, timezone_required: false };
    let delimiter = args.delimiter.unwrap_or(b',');
    let format = args.format;
    let region = args.default_region.clone();
    let rejects_path = args.rejects.clone();
    let name = source.name();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<String>>(4);
    // Parse on a blocking thread; rejected lines are reported there.
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
        let input = ContactInput::open(&source, format, delimiter, &columns, Arc::new(AtomicU64::new(0)))
            .map_err(|e| Fatal::InputRejected(e.to_string()))?;
        let mut reader = ContactReader::new(input, region);
        let mut rejects = crate::enqueue::rejects_file(rejects_path.as_deref())?;
        let (mut read, mut rejected) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(row) = reader.next_row() {
            read += 1;
            match row.with_context(|| format!("{name}: reading failed"))? {
                Row::Contact(c) => batch.push(c.number.as_str().to_owned()),
                // A number twice in the list is listed once; not an error.
                Row::Rejected(r) if matches!(r.reason, tocsin_enqueue::Reason::Duplicate { .. }) => {}
                Row::Rejected(r) => {
                    rejected += 1;
                    if rejected <= 20 {
                        tell!("{name}:{}: {}", r.line, r.reason);
                    }
                    if let Some(w) = rejects.as_mut() {
                        crate::enqueue::write_rejection(w, &r)?;
                    }
                }
            }
            if batch.len() == BATCH && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                break;
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        if let Some(mut w) = rejects {
            w.flush()?;
        }
        Ok((read, rejected))
    });
    let (mut added, mut skipped, mut listed) = (0u64, 0u64, 0u64);
    while let Some(numbers) = rx.recv().await {
        let (a, s) = add(pool, &numbers, args.reason.as_deref()).await?;
        added += a;
        skipped += s;
        listed += numbers.len() as u64;
    }
    let (read, rejected) = reader.await.context("the list reader stopped unexpectedly")??;
    say!(
        "do-not-call import: read {read}, {added} added, {} already listed, {rejected} rejected; {skipped} waiting calls skipped",
        listed - added
    );
    if read > 0 && listed == 0 {
        return Err(Fatal::InputRejected(format!("{}: every line was rejected", args.file.display())).into());
    }
    Ok(())
}

async fn list(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let mut rows = sqlx::query_as::<_, (String, Option<String>, chrono::DateTime<chrono::Utc>)>(
        "SELECT number, reason, added_at FROM do_not_call ORDER BY number",
    )
    .fetch(pool);
    if !json {
        say!("number,reason,added_at");
    }
    while let Some((number, reason, added_at)) =
        rows.try_next().await.context("reading the do-not-call list")?
    {
        if json {
            say!("{}", serde_json::json!({ "number": number, "reason": reason, "added_at": added_at }));
        } else {
            let mut w =
                csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
            w.write_record([number.as_str(), reason.as_deref().unwrap_or(""), &added_at.to_rfc3339()])?;
            let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
            say_raw!("{}", String::from_utf8_lossy(&bytes));
        }
    }
    Ok(())
}
