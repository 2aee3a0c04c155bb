//! `producer enqueue`: the streaming pipeline from contact list to queue.
//!
//! ```text
//! reader thread ──batches of rows──► write stage ──new rows──► publish stage ──confirmed──► mark stage
//! (parse, E.164,                    (DNC filter + multi-row   (pipelined confirms,        (INSERT INTO
//!  dedupe)                           INSERT … ON CONFLICT,      bounded window)              enqueue_batches:
//!                                    one batch id each,                                      a row per batch)
//!                                    two batches in flight)
//! ```
//!
//! The stages run at once over bounded channels, so parsing, database writes
//! and publishing overlap and memory stays flat. A run first publishes rows
//! an earlier, interrupted run wrote but never saw confirmed (queued calls
//! whose `enqueue_batch` is not in `enqueue_batches`), then streams the
//! list; rows already in the campaign are counted, never published again.
//! Call ids are derived from campaign and number, so every run names the
//! same call for the same contact. One run per campaign at a time (a
//! PostgreSQL advisory lock).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::queue::{self, Topology};
use tocsin_core::{CallId, CampaignId, PhoneNumber};
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Fatal;
use crate::campaign::{self, Prepared};
use crate::config::EnqueueArgs;
use crate::contacts::{Contact, ContactReader, Reason, Rejection, Row};
use crate::input::{Columns, ContactInput, Source};
use crate::publish::{self, Batch};

/// Rows parsed, written and published together.
const BATCH: usize = 1000;
/// Rejected lines printed on standard error; the rest go to `--rejects`.
const SHOWN_REJECTIONS: u64 = 20;

/// What an enqueue run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Report {
    pub campaign: String,
    /// Contact lines read (header and blank lines excluded).
    pub read: u64,
    /// Contacts new to the campaign, written this run (with `--dry-run`: that would be).
    pub new_contacts: u64,
    /// Jobs published and confirmed by the broker this run: the new
    /// contacts plus any left unconfirmed by an interrupted earlier run.
    pub published: u64,
    /// Of `published`, jobs for rows an interrupted earlier run left unconfirmed.
    pub resumed: u64,
    /// Contacts already in the campaign from an earlier run.
    pub already_enqueued: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub do_not_call: u64,
    /// Unreadable lines: wrong field count, bad UTF-8 or JSON, too long, bad time zone.
    pub malformed: u64,
    /// Publishes the broker refused once and that succeeded when retried.
    pub publish_retries: u64,
    /// Campaign settings this run changed.
    pub changes: Vec<String>,
    pub dry_run: bool,
    /// Stopped early by Ctrl-C / SIGTERM; re-running finishes the job.
    pub interrupted: bool,
    pub seconds: f64,
    pub rejects_file: Option<PathBuf>,
}

impl Report {
    pub fn rejected(&self) -> u64 {
        self.invalid + self.duplicate + self.do_not_call + self.malformed
    }

    fn count(&mut self, reason: &Reason) {
        match reason {
            Reason::Invalid(_) => self.invalid += 1,
            Reason::Duplicate { .. } => self.duplicate += 1,
            Reason::DoNotCall => self.do_not_call += 1,
            Reason::Malformed(_) | Reason::TooLong { .. } | Reason::BadTimezone(_) => self.malformed += 1,
        }
    }

    /// The human summary, on standard output.
    pub fn print(&self) {
        let rate = if self.seconds > 0.0 { self.read as f64 / self.seconds } else { 0.0 };
        let head = if self.dry_run { "dry run, nothing written" } else { "enqueue" };
        say!("{}: {head}: read {} contacts in {:.1}s ({rate:.0}/s)", self.campaign, self.read, self.seconds);
        let would = if self.dry_run { "would enqueue" } else { "enqueued" };
        say!("  {would:<17}{:>10}  new contacts", self.new_contacts);
        say!(
            "  {:<17}{:>10}  in the campaign from an earlier run",
            "already enqueued",
            self.already_enqueued
        );
        say!("  {:<17}{:>10}", "invalid", self.invalid);
        say!("  {:<17}{:>10}  within the list", "duplicate", self.duplicate);
        say!("  {:<17}{:>10}", "do-not-call", self.do_not_call);
        say!("  {:<17}{:>10}  unreadable lines", "malformed", self.malformed);
        if !self.dry_run {
            let resumed = if self.resumed > 0 {
                format!(" ({} left unconfirmed by an interrupted run)", self.resumed)
            } else {
                String::new()
            };
            say!("  {:<17}{:>10}  jobs confirmed by RabbitMQ{resumed}", "published", self.published);
        }
        if !self.changes.is_empty() {
            say!("  changed: {}", self.changes.join("; "));
        }
        if let Some(path) = &self.rejects_file {
            say!("  rejected lines: {}", path.display());
        }
        if self.interrupted {
            say!("  INTERRUPTED: run the same command again to finish (nothing is enqueued twice)");
        }
    }
}

/// Live counters the progress display reads.
#[derive(Default)]
struct Progress {
    bytes: Arc<AtomicU64>,
    read: AtomicU64,
    written: AtomicU64,
    rejected: AtomicU64,
    published: Arc<AtomicU64>,
}

/// Enqueues `args.contacts` (or the saved list `args.list`) into campaign
/// `args.campaign`, with no provider check beyond the arguments' own and no
/// interruption.
pub async fn enqueue(pool: &PgPool, args: &EnqueueArgs) -> anyhow::Result<Report> {
    enqueue_until(pool, args, CancellationToken::new()).await
}

/// Enqueues until done or `stop` is cancelled (then drains what is in
/// flight, and the report says `interrupted`).
pub async fn enqueue_until(
    pool: &PgPool,
    args: &EnqueueArgs,
    stop: CancellationToken,
) -> anyhow::Result<Report> {
    let configured = args.providers.configured();
    let (report, _) = match (&args.list, &args.contacts) {
        (Some(list), _) => {
            crate::lists::enqueue_list(pool, args.clone(), list, &configured, Rejections::Print, stop).await?
        }
        (None, Some(contacts)) => {
            enqueue_from(pool, args, Source::from_arg(contacts), &configured, Rejections::Print, stop).await?
        }
        (None, None) => {
            return Err(Fatal::Usage("give --contacts FILE or --list NAME".into()).into());
        }
    };
    Ok(report)
}

/// What becomes of rejected contacts besides `--rejects`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejections {
    /// The first few on standard error (the CLI).
    Print,
    /// Up to this many returned to the caller, nothing printed (the HTTP
    /// API: a server must not write phone numbers to its output).
    Collect(usize),
}

/// The pipeline behind `enqueue_until` for any `source` (the CLI's file or
/// standard input, the HTTP API's inline list): the same validation,
/// dedupe, do-not-call check and idempotency. `configured` is the providers
/// a campaign may use; `args.contacts` and `args.providers` are not read.
pub async fn enqueue_from(
    pool: &PgPool,
    args: &EnqueueArgs,
    source: Source,
    configured: &[tocsin_core::provider::Provider],
    rejections: Rejections,
    stop: CancellationToken,
) -> anyhow::Result<(Report, Vec<Rejection>)> {
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let timezone_column = args.timezone_column.clone().unwrap_or_else(|| "timezone".into());
    let columns = Columns {
        number: args.number_column.clone(),
        timezone: Some(timezone_column),
        timezone_required: args.timezone_column.is_some(),
    };
    let delimiter = args.delimiter.unwrap_or_else(|| {
        let tsv = matches!(&source, Source::File(p) if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv")));
        if tsv { b'\t' } else { b',' }
    });
    // Open (and read the header) before anything else: a bad file fails fast.
    let open_source = source.clone();
    let (format, bytes) = (args.format, progress.bytes.clone());
    let input = tokio::task::spawn_blocking(move || {
        ContactInput::open(&open_source, format, delimiter, &columns, bytes)
    })
    .await
    .context("opening the contact list")?
    .map_err(|e| Fatal::InputRejected(e.to_string()))?;

    let prepared = campaign::prepare(pool, args, configured, input.has_timezone_column()).await?;

    // One run per campaign at a time: a second one would publish the first
    // one's unconfirmed rows again. Held on a connection of its own; a killed
    // run's lock goes with its connection.
    let mut lock = pool.acquire().await.context("connecting to PostgreSQL")?.detach();
    let key = i64::from_be_bytes(prepared.id.0.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut lock)
        .await
        .context("taking the campaign's enqueue lock")?;
    if !locked {
        return Err(Fatal::Usage(format!(
            "another producer is enqueueing campaign {:?} right now; wait for it to finish (or stop it) and \
             run this again",
            prepared.name
        ))
        .into());
    }

    let mut report = Report {
        campaign: prepared.name.clone(),
        dry_run: args.dry_run,
        changes: prepared.changes.clone(),
        rejects_file: args.rejects.clone(),
        ..Report::default()
    };
    if !args.dry_run && prepared.exists {
        // An allowed update applies now, before any new contact is written.
        campaign::write(pool, &prepared).await?;
    }

    let bar = match rejections {
        Rejections::Print => progress_bar(source.size()),
        Rejections::Collect(_) => ProgressBar::hidden(),
    };
    let rejects = RejectSink::start(args.rejects.clone(), input.name().to_owned(), bar.clone(), rejections)?;
    let result = if args.dry_run {
        let reader = ContactReader::new(input, args.default_region.clone());
        dry_run(pool, &prepared, reader, &progress, &rejects, &stop, &mut report).await
    } else {
        let reader = ContactReader::new(input, args.default_region.clone());
        run_pipeline(pool, args, &source, &prepared, reader, &progress, &rejects, &stop, &mut report).await
    };
    let finished =
        tokio::task::spawn_blocking(move || rejects.finish()).await.context("writing rejected lines")?;
    bar.finish_and_clear();
    // Released explicitly: a dropped connection's lock lingers until the
    // server notices the closed socket, and a re-run started right after this
    // one would be refused as "another producer is enqueueing".
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut lock).await;
    let _ = sqlx::Connection::close(lock).await;
    result?;
    let (shown, collected) = finished?;
    let hidden = report.rejected().saturating_sub(shown);
    if hidden > 0 && rejections == Rejections::Print {
        let hint = match &args.rejects {
            Some(p) => format!("every rejected line is in {}", p.display()),
            None => "pass --rejects FILE for the full list".into(),
        };
        tell!("... and {hidden} more rejected lines ({hint})");
    }
    report.interrupted = stop.is_cancelled();
    report.seconds = started.elapsed().as_secs_f64();
    if prepared.status == tocsin_core::campaign::CampaignStatus::Paused
        && !args.dry_run
        && rejections == Rejections::Print
    {
        tell!(
            "note: campaign {:?} is paused; its calls wait until `producer resume {}`",
            prepared.name,
            prepared.name
        );
    }
    Ok((report, collected))
}

fn progress_bar(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {percent:>3}%  {msg}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}  {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        }
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Updates the bar on a terminal, or prints a plain line every few seconds
/// otherwise (logs, CI). Never returns.
async fn show_progress(progress: &Progress, bar: &ProgressBar, name: &str, total: Option<u64>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_line = Instant::now();
    loop {
        tick.tick().await;
        let read = progress.read.load(Ordering::Relaxed);
        let published = progress.published.load(Ordering::Relaxed);
        let rejected = progress.rejected.load(Ordering::Relaxed);
        let rate = published as f64 / started.elapsed().as_secs_f64().max(0.001);
        let msg = format!("read {read}  published {published}  rejected {rejected}  {rate:.0}/s");
        if bar.is_hidden() {
            if last_line.elapsed() >= Duration::from_secs(5) {
                let pct = total
                    .filter(|t| *t > 0)
                    .map(|t| {
                        format!(
                            " ({:.0}% of the file)",
                            100.0 * progress.bytes.load(Ordering::Relaxed) as f64 / t as f64
                        )
                    })
                    .unwrap_or_default();
                tell!("{name}: {msg}{pct}");
                last_line = Instant::now();
            }
        } else {
            bar.set_position(progress.bytes.load(Ordering::Relaxed));
            bar.set_message(msg);
        }
    }
}

/// Runs the reader on a blocking thread; rows arrive in batches on the
/// returned channel. The reader stops when `stop` is set or the receiver is gone.
fn spawn_reader(
    mut reader: ContactReader,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<Vec<Row>>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = mpsc::channel::<Vec<Row>>(4);
    let handle = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            let Some(row) = reader.next_row() else { break };
            batch.push(row?);
            if batch.len() == BATCH
                && tx.blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).is_err()
            {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok(())
    });
    (rx, handle)
}

/// Sets `flag` when `stop` is cancelled (the reader thread cannot await).
async fn relay_stop(stop: &CancellationToken, flag: &AtomicBool) {
    stop.cancelled().await;
    flag.store(true, Ordering::Relaxed);
}

/// The outcome of writing one batch.
struct Written {
    read: u64,
    new: Batch,
    already: u64,
    rejections: Vec<Rejection>,
}

#[allow(clippy::too_many_arguments)]
async fn run_pipeline(
    pool: &PgPool,
    args: &EnqueueArgs,
    source: &Source,
    prepared: &Prepared,
    reader: ContactReader,
    progress: &Arc<Progress>,
    rejects: &RejectSink,
    stop: &CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    let amqp = queue::connect(args.amqp.amqp_url.expose_secret(), "tocsin-producer")
        .await
        .map_err(|e| Fatal::Unreachable { service: "RabbitMQ (TOCSIN_AMQP_URL)", detail: e.to_string() })?;
    let topology = Topology::new(&args.amqp.queue_prefix);
    let setup = amqp.create_channel().await.context("opening a RabbitMQ channel")?;
    topology.declare(&setup).await.context("declaring the queue topology")?;
    let _ = tokio::time::timeout(Duration::from_secs(5), setup.close(200, "topology declared".into())).await;
    let channel = amqp.create_channel().await.context("opening the publish channel")?;
    channel.confirm_select(Default::default()).await.context("enabling publisher confirms")?;

    let (publish_tx, publish_rx) = mpsc::channel::<Batch>(8);
    let (mark_tx, mark_rx) = mpsc::channel::<Vec<i64>>(8);
    let counter = progress.published.clone();
    let stage = publish::Stage::new(
        channel,
        &topology,
        prepared.id,
        args.in_flight as usize,
        mark_tx,
        Box::new(move |n| {
            counter.fetch_add(n, Ordering::Relaxed);
        }),
    );
    let stop_flag = Arc::new(AtomicBool::new(false));
    let name = reader.input().name().to_owned();
    let total = source.size();
    let bar = rejects.bar.clone();

    let produce = async {
        let resumed = resume_unconfirmed(pool, prepared.id, &publish_tx, stop).await?;
        let (rows, reader_thread) = spawn_reader(reader, stop_flag.clone());
        let counts = write_stage(pool, prepared, rows, &publish_tx, progress, rejects).await;
        drop(publish_tx);
        let read_result = reader_thread.await.context("the contact reader stopped unexpectedly")?;
        let counts = counts?;
        read_result.with_context(|| format!("{name}: reading failed"))?;
        anyhow::Ok((resumed, counts))
    };
    let work =
        async { tokio::try_join!(produce, stage.run(publish_rx), mark_stage(pool, prepared.id, mark_rx)) };
    let ((resumed, counts), published, _marked) = tokio::select! {
        r = work => r?,
        () = async {
            tokio::join!(relay_stop(stop, &stop_flag), show_progress(progress, &bar, &name, total));
        } => unreachable!("progress never ends"),
    };
    queue::close(&amqp, "done").await;
    report.read = counts.read;
    report.new_contacts = counts.new;
    report.already_enqueued = counts.already;
    report.invalid = counts.report.invalid;
    report.duplicate = counts.report.duplicate;
    report.do_not_call = counts.report.do_not_call;
    report.malformed = counts.report.malformed;
    report.resumed = resumed;
    report.published = published.confirmed;
    report.publish_retries = published.retried;
    Ok(())
}

/// Publishes rows an earlier run wrote but never saw confirmed, one publish
/// batch per unconfirmed enqueue batch (so each is confirmed once all of its
/// waiting rows are). Rows a worker has taken already are not waiting.
async fn resume_unconfirmed(
    pool: &PgPool,
    campaign: CampaignId,
    publish: &mpsc::Sender<Batch>,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    let mut rows = sqlx::query_as::<_, (CallId, String, i64)>(
        "SELECT c.id, c.number, c.enqueue_batch FROM calls c \
         WHERE c.campaign_id = $1 AND c.state = 'queued' AND c.enqueue_batch IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM enqueue_batches b WHERE b.id = c.enqueue_batch) \
         ORDER BY c.enqueue_batch",
    )
    .bind(campaign)
    .fetch(pool);
    let mut batch = Batch::default();
    let mut count = 0;
    while let Some((id, number, enqueue_batch)) =
        rows.try_next().await.context("reading unconfirmed calls")?
    {
        if stop.is_cancelled() {
            // Only whole batches count as confirmed: the one being gathered is dropped.
            return Ok(count);
        }
        if batch.confirms.last() != Some(&enqueue_batch) {
            if batch.jobs.len() >= BATCH {
                count += batch.jobs.len() as u64;
                if publish.send(std::mem::take(&mut batch)).await.is_err() {
                    return Ok(count);
                }
            }
            batch.confirms.push(enqueue_batch);
        }
        if let Ok(n) = PhoneNumber::from_e164(&number) {
            batch.jobs.push((id, n));
        }
    }
    count += batch.jobs.len() as u64;
    if !batch.confirms.is_empty() {
        let _ = publish.send(batch).await;
    }
    if count > 0 {
        tracing::info!(count, "publishing rows an earlier run left unconfirmed");
    }
    Ok(count)
}

#[derive(Default)]
struct Counts {
    read: u64,
    new: u64,
    already: u64,
    report: Report,
}

impl Counts {
    fn add(&mut self, w: &Written, rejects: &RejectSink, progress: &Progress) {
        self.read += w.read;
        self.new += w.new.jobs.len() as u64;
        self.already += w.already;
        for r in &w.rejections {
            self.report.count(&r.reason);
        }
        progress.read.fetch_add(w.read, Ordering::Relaxed);
        progress.written.fetch_add(w.new.jobs.len() as u64, Ordering::Relaxed);
        progress.rejected.fetch_add(w.rejections.len() as u64, Ordering::Relaxed);
        rejects.send(&w.rejections);
    }
}

/// Writes batches (two in flight) and hands their new rows to the publisher.
async fn write_stage(
    pool: &PgPool,
    prepared: &Prepared,
    rows: mpsc::Receiver<Vec<Row>>,
    publish: &mpsc::Sender<Batch>,
    progress: &Progress,
    rejects: &RejectSink,
) -> anyhow::Result<Counts> {
    let created = OnceCell::new();
    let mut written = batches(rows).map(|batch| write_batch(pool, prepared, &created, batch)).buffered(2);
    let mut counts = Counts::default();
    while let Some(w) = written.next().await {
        let w = w?;
        counts.add(&w, rejects, progress);
        if !w.new.jobs.is_empty() && publish.send(w.new).await.is_err() {
            break;
        }
    }
    Ok(counts)
}

fn batches(mut rx: mpsc::Receiver<Vec<Row>>) -> impl futures::Stream<Item = Vec<Row>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn split(batch: Vec<Row>) -> (u64, Vec<Contact>, Vec<Rejection>) {
    let read = batch.len() as u64;
    let mut contacts = Vec::with_capacity(batch.len());
    let mut rejections = Vec::new();
    for row in batch {
        match row {
            Row::Contact(c) => contacts.push(c),
            Row::Rejected(r) => rejections.push(r),
        }
    }
    (read, contacts, rejections)
}

/// Inserts a batch's contacts that are not on the do-not-call list; one
/// statement, so the check and the insert see the same list.
async fn write_batch(
    pool: &PgPool,
    prepared: &Prepared,
    created: &OnceCell<()>,
    batch: Vec<Row>,
) -> anyhow::Result<Written> {
    let (read, contacts, mut rejections) = split(batch);
    if contacts.is_empty() {
        return Ok(Written { read, new: Batch::default(), already: 0, rejections });
    }
    if !prepared.exists {
        created.get_or_try_init(|| campaign::write(pool, prepared)).await?;
    }
    let enqueue_batch: i64 = sqlx::query_scalar("SELECT nextval('enqueue_batch_id')")
        .fetch_one(pool)
        .await
        .map_err(|e| db_error(e, "numbering a batch of calls"))?;
    let ids: Vec<uuid::Uuid> = contacts.iter().map(|c| CallId::derive(prepared.id, &c.number).0).collect();
    let numbers: Vec<&str> = contacts.iter().map(|c| c.number.as_str()).collect();
    let lines: Vec<i32> = contacts.iter().map(|c| i32::try_from(c.line).unwrap_or(i32::MAX)).collect();
    let attributes: Vec<&str> = contacts.iter().map(|c| c.attributes.as_str()).collect();
    let zones: Vec<Option<&str>> = contacts.iter().map(|c| c.timezone.map(|t| t.name())).collect();
    let outcome: Vec<(i32, bool)> = sqlx::query_as(
        "WITH input AS ( \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[]) \
                 AS t(id, number, line, attrs, tz) \
         ), blocked AS ( \
             SELECT i.line FROM input i JOIN do_not_call d ON d.number = i.number \
         ), inserted AS ( \
             INSERT INTO calls (id, campaign_id, number, source_line, attributes, timezone, enqueue_batch) \
             SELECT i.id, $6, i.number, i.line, i.attrs::jsonb, i.tz, $7 FROM input i \
             WHERE NOT EXISTS (SELECT 1 FROM do_not_call d WHERE d.number = i.number) \
             ON CONFLICT (campaign_id, number) DO NOTHING \
             RETURNING source_line \
         ) \
         SELECT line, true FROM blocked UNION ALL SELECT source_line, false FROM inserted",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&lines)
    .bind(&attributes)
    .bind(&zones)
    .bind(prepared.id)
    .bind(enqueue_batch)
    .fetch_all(pool)
    .await
    .map_err(|e| db_error(e, "writing calls"))?;
    let mut new_lines = Vec::with_capacity(outcome.len());
    for (line, blocked) in outcome {
        if blocked {
            if let Ok(i) = lines.binary_search(&line) {
                let c = &contacts[i];
                rejections.push(Rejection {
                    line: c.line,
                    value: c.number.as_str().to_owned(),
                    reason: Reason::DoNotCall,
                });
            }
        } else {
            new_lines.push(line);
        }
    }
    new_lines.sort_unstable();
    let blocked = rejections.iter().filter(|r| r.reason == Reason::DoNotCall).count();
    let already = (contacts.len() - new_lines.len() - blocked) as u64;
    let jobs: Vec<_> = contacts
        .into_iter()
        .zip(ids)
        .filter(|(c, _)| new_lines.binary_search(&i32::try_from(c.line).unwrap_or(i32::MAX)).is_ok())
        .map(|(c, id)| (CallId(id), c.number))
        .collect();
    // A batch that wrote no row has nothing to confirm.
    let confirms = if jobs.is_empty() { Vec::new() } else { vec![enqueue_batch] };
    let new = Batch { confirms, jobs };
    rejections.sort_by_key(|r| r.line);
    Ok(Written { read, new, already, rejections })
}

/// Records confirmed enqueue batches, as many as are waiting per statement.
/// It touches no `calls` row, so it never waits on (or deadlocks with) the
/// workers and the webhook updating calls of a campaign still being enqueued.
async fn mark_stage(
    pool: &PgPool,
    campaign: CampaignId,
    mut rx: mpsc::Receiver<Vec<i64>>,
) -> anyhow::Result<u64> {
    let mut marked = 0;
    while let Some(mut ids) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            ids.extend(more);
        }
        sqlx::query(
            "INSERT INTO enqueue_batches (id, campaign_id) SELECT unnest($1::int8[]), $2 ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(campaign)
        .execute(pool)
        .await
        .map_err(|e| db_error(e, "recording confirmed jobs"))?;
        marked += ids.len() as u64;
    }
    Ok(marked)
}

/// A lost database mid-run is "a service unreachable"; other errors keep their text.
fn db_error(e: sqlx::Error, doing: &str) -> anyhow::Error {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => Fatal::Unreachable {
            service: "PostgreSQL (TOCSIN_DATABASE_URL)",
            detail: format!("{doing}: {e}; re-running the same command finishes the job"),
        }
        .into(),
        other => anyhow::Error::new(other).context(doing.to_owned()),
    }
}

/// `--dry-run`: the same reading and checks, with read-only queries for the
/// do-not-call list and contacts already in the campaign.
async fn dry_run(
    pool: &PgPool,
    prepared: &Prepared,
    reader: ContactReader,
    progress: &Arc<Progress>,
    rejects: &RejectSink,
    stop: &CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stop_flag = Arc::new(AtomicBool::new(false));
    let (mut rows, reader_thread) = spawn_reader(reader, stop_flag.clone());
    let mut counts = Counts::default();
    let check = async {
        while let Some(batch) = rows.recv().await {
            let (read, contacts, mut rejections) = split(batch);
            let numbers: Vec<&str> = contacts.iter().map(|c| c.number.as_str()).collect();
            let found: Vec<(bool, bool)> = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM do_not_call d WHERE d.number = i.number), \
                        EXISTS (SELECT 1 FROM calls k WHERE k.campaign_id = $2 AND k.number = i.number) \
                 FROM unnest($1::text[]) WITH ORDINALITY AS i(number, ord) ORDER BY ord",
            )
            .bind(&numbers)
            .bind(prepared.id)
            .fetch_all(pool)
            .await
            .map_err(|e| db_error(e, "checking the do-not-call list"))?;
            let mut new = 0;
            let mut already = 0;
            for (c, (blocked, present)) in contacts.iter().zip(found) {
                if blocked {
                    rejections.push(Rejection {
                        line: c.line,
                        value: c.number.as_str().into(),
                        reason: Reason::DoNotCall,
                    });
                } else if present {
                    already += 1;
                } else {
                    new += 1;
                }
            }
            rejections.sort_by_key(|r| r.line);
            // `new` carries only a count here; nothing is published.
            let w = Written { read, new: Batch::default(), already, rejections };
            counts.add(&w, rejects, progress);
            counts.new += new;
        }
        anyhow::Ok(())
    };
    let bar = rejects.bar.clone();
    tokio::select! {
        r = check => r?,
        () = async { tokio::join!(relay_stop(stop, &stop_flag), show_progress(progress, &bar, "dry run", None)); } => {}
    }
    reader_thread.await.context("the contact reader stopped unexpectedly")??;
    report.read = counts.read;
    report.new_contacts = counts.new;
    report.already_enqueued = counts.already;
    report.invalid = counts.report.invalid;
    report.duplicate = counts.report.duplicate;
    report.do_not_call = counts.report.do_not_call;
    report.malformed = counts.report.malformed;
    Ok(())
}

/// Rejected lines: the first few on standard error, all of them in the
/// `--rejects` CSV file (line, reason, value, detail), written on a thread
/// of its own.
pub struct RejectSink {
    tx: std::sync::mpsc::Sender<Vec<Rejection>>,
    thread: std::thread::JoinHandle<anyhow::Result<(u64, Vec<Rejection>)>>,
    bar: ProgressBar,
}

impl RejectSink {
    pub(crate) fn start(
        path: Option<PathBuf>,
        source: String,
        bar: ProgressBar,
        mode: Rejections,
    ) -> anyhow::Result<Self> {
        let mut file = match &path {
            Some(p) => {
                let f = std::fs::File::create(p)
                    .map_err(|e| Fatal::Usage(format!("--rejects {}: cannot create: {e}", p.display())))?;
                let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
                w.write_record(["line", "reason", "value", "detail"])?;
                Some(w)
            }
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Rejection>>();
        let shown_bar = bar.clone();
        let thread = std::thread::spawn(move || {
            let mut shown = 0u64;
            let mut collected = Vec::new();
            for batch in rx {
                for r in batch {
                    if let Rejections::Collect(max) = mode {
                        if collected.len() < max {
                            collected.push(r.clone());
                        }
                    } else if shown < SHOWN_REJECTIONS {
                        shown += 1;
                        let value =
                            if r.value.is_empty() { String::new() } else { format!("{:?}: ", r.value) };
                        shown_bar.suspend(|| tell!("{source}:{}: {value}{}", r.line, r.reason));
                    }
                    if let Some(w) = file.as_mut() {
                        let line = r.line.to_string();
                        let detail = r.reason.to_string();
                        w.write_record([
                            line.as_str(),
                            r.reason.keyword(),
                            r.value.as_str(),
                            detail.as_str(),
                        ])?;
                    }
                }
            }
            if let Some(mut w) = file {
                w.flush()?;
            }
            Ok((shown, collected))
        });
        Ok(Self { tx, thread, bar })
    }

    pub(crate) fn send(&self, rejections: &[Rejection]) {
        if !rejections.is_empty() {
            let _ = self.tx.send(rejections.to_vec());
        }
    }

    /// Waits for the writer; returns how many rejections were shown, and
    /// those collected.
    pub(crate) fn finish(self) -> anyhow::Result<(u64, Vec<Rejection>)> {
        drop(self.tx);
        self.thread.join().map_err(|_| anyhow::anyhow!("the rejects writer panicked"))?
    }
}
