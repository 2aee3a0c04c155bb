//! The streaming pipeline from contacts to queue.
//!
//! The stages run at once over bounded channels, so parsing, database writes
//! and publishing overlap and memory stays flat. A run first publishes rows
//! an earlier, interrupted run wrote but never saw confirmed (queued calls
//! whose `enqueue_batch` is not in `enqueue_batches`), then streams the
//! contacts; rows already in the campaign are counted, never published
//! again. Call ids are derived from campaign and number, so every run names
//! the same call for the same contact. One run per campaign at a time (a
//! PostgreSQL advisory lock).
//!
//! One concern at some length: the stages share the run's counters and
//! stop flag, and splitting them would pass both through every signature.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::queue::{self, Topology};
use tocsin_core::{CallId, CampaignId, PhoneNumber, calls};
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use crate::EnqueueError;
use crate::contacts::{Contact, ContactReader, Reason, RecordSource, Rejection, Row};
use crate::input::{Columns, ContactInput, Format, Record, Source};
use crate::publish::{self, Batch};
use crate::spec::{self, Prepared, Spec};

/// Rows parsed, written and published together.
const BATCH: usize = 1000;

/// What an enqueue run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Report {
    pub campaign: String,
    /// Contact lines read (header and blank lines excluded).
    pub read: u64,
    /// Contacts new to the campaign, written this run (with `dry_run`: that would be).
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
    /// The campaign is paused: its calls wait until it is resumed.
    pub paused: bool,
    /// Stopped early (the stop token); re-running finishes the job.
    pub interrupted: bool,
    pub seconds: f64,
    /// A personalised message as the first contacts will hear it.
    pub samples: Vec<crate::contacts::Sample>,
}

impl Report {
    pub fn rejected(&self) -> u64 {
        self.invalid + self.duplicate + self.do_not_call + self.malformed
    }

    /// Nothing in the contacts could be enqueued (every line rejected, or none).
    pub fn nothing_enqueued(&self) -> bool {
        self.new_contacts + self.already_enqueued == 0
    }

    fn count(&mut self, reason: &Reason) {
        match reason {
            Reason::Invalid(_) | Reason::Template(_) | Reason::Speech(_) => self.invalid += 1,
            Reason::Duplicate { .. } => self.duplicate += 1,
            Reason::DoNotCall => self.do_not_call += 1,
            Reason::Malformed(_) | Reason::TooLong { .. } | Reason::BadTimezone(_) => self.malformed += 1,
        }
    }
}

/// Live counters of a run, for a progress display to read while it runs.
#[derive(Default, Debug)]
pub struct Counters {
    /// Bytes of a text list read so far.
    pub bytes: Arc<AtomicU64>,
    pub read: AtomicU64,
    pub written: AtomicU64,
    pub rejected: AtomicU64,
    pub published: Arc<AtomicU64>,
}

/// Told of every rejected line as the run finds it (the CLI prints the
/// first few and writes them all to a file; the API collects them).
pub trait Observer: Send + Sync {
    /// A batch of rejected lines, in line order.
    fn rejected(&self, batch: &[Rejection]);
}

/// Nobody is told.
impl Observer for () {
    fn rejected(&self, _: &[Rejection]) {}
}

/// The contacts of a run.
pub enum Contacts {
    /// A CSV or JSON Lines list (a file, standard input, memory), read by `input`.
    Text {
        source: Source,
        /// Default: from the file name, else detected.
        format: Option<Format>,
        /// Default: ',' (tab for `.tsv` files).
        delimiter: Option<u8>,
        columns: Columns,
    },
    /// Contacts already parsed (the API's JSON body, a saved list): one
    /// record per line, numbered as the caller numbers them.
    Records {
        /// How the contacts are named in rejections.
        name: String,
        /// Whether the records may carry their own time zone.
        has_timezone: bool,
        records: Box<dyn Iterator<Item = std::io::Result<Record>> + Send>,
    },
}

impl Contacts {
    /// Parsed contacts held in memory. Each may carry its own time zone, so
    /// a calling window without a campaign zone is allowed (as for a list
    /// with a time zone column).
    pub fn records(name: impl Into<String>, records: Vec<Record>) -> Self {
        Self::Records {
            name: name.into(),
            has_timezone: true,
            records: Box::new(records.into_iter().map(Ok)),
        }
    }

    /// Opens the contacts (a text list's header is read here: a bad file
    /// fails before anything is written).
    pub(crate) async fn open(self, bytes: Arc<AtomicU64>) -> Result<Opened, EnqueueError> {
        match self {
            Self::Text { source, format, delimiter, columns } => {
                let delimiter = delimiter.unwrap_or_else(|| {
                    let tsv = matches!(&source, Source::File(p) if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv")));
                    if tsv { b'\t' } else { b',' }
                });
                let input = tokio::task::spawn_blocking(move || {
                    ContactInput::open(&source, format, delimiter, &columns, bytes)
                })
                .await
                .map_err(|e| EnqueueError::Failed {
                    doing: "opening the contact list",
                    detail: e.to_string(),
                })?
                .map_err(|e| EnqueueError::InputRejected(e.to_string()))?;
                Ok(Opened {
                    name: input.name().to_owned(),
                    has_timezone: input.has_timezone_column(),
                    source: Box::new(input),
                })
            }
            Self::Records { name, has_timezone, records } => {
                Ok(Opened { name, has_timezone, source: Box::new(IterSource(records)) })
            }
        }
    }
}

pub(crate) struct Opened {
    pub(crate) name: String,
    pub(crate) has_timezone: bool,
    pub(crate) source: Box<dyn RecordSource>,
}

/// Records from an iterator.
struct IterSource(Box<dyn Iterator<Item = std::io::Result<Record>> + Send>);

impl RecordSource for IterSource {
    fn next_record(&mut self) -> Option<std::io::Result<Record>> {
        self.0.next()
    }
}

/// Runs `spec` on `contacts` until done or `stop` is cancelled (then drains
/// what is in flight, and the report says `interrupted`). `counters` are
/// updated as it goes; `observer` is told of every rejected line.
pub async fn enqueue(
    pool: &PgPool,
    spec: &Spec,
    contacts: Contacts,
    counters: &Arc<Counters>,
    observer: &dyn Observer,
    stop: &CancellationToken,
) -> Result<Report, EnqueueError> {
    let started = Instant::now();
    let opened = contacts.open(counters.bytes.clone()).await?;
    let prepared = spec::prepare(pool, spec, opened.has_timezone).await?;

    // One run per campaign at a time: a second one would publish the first
    // one's unconfirmed rows again. Held on a connection of its own; a killed
    // run's lock goes with its connection.
    let mut lock = pool.acquire().await.map_err(EnqueueError::db("connecting to PostgreSQL"))?.detach();
    let key = i64::from_be_bytes(prepared.id.0.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut lock)
        .await
        .map_err(EnqueueError::db("taking the campaign's enqueue lock"))?;
    if !locked {
        return Err(EnqueueError::Refused(format!(
            "another producer is enqueueing campaign {:?} right now; wait for it to finish (or stop it) and \
             run this again",
            prepared.name
        )));
    }

    let mut report = Report {
        campaign: prepared.name.clone(),
        dry_run: spec.dry_run,
        changes: prepared.changes.clone(),
        paused: prepared.status == tocsin_core::campaign::CampaignStatus::Paused,
        ..Report::default()
    };
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let result = async {
        if !spec.dry_run && prepared.exists {
            // An allowed update applies now, before any new contact is written.
            spec::write(pool, &prepared).await?;
        }
        let voicemail = prepared.settings.voicemail_message.clone().unwrap_or_default();
        let reader = ContactReader::new(opened.source, spec.default_region.clone())
            // (A recording's transcript is not spoken: its placeholders reject no one.)
            .with_templates(&[prepared.settings.spoken_message(), &voicemail], samples.clone())
            .with_speech(prepared.settings.clone());
        if spec.dry_run {
            dry_run(pool, &prepared, reader, counters, observer, stop, &mut report).await
        } else {
            run_pipeline(pool, spec, &prepared, reader, &opened.name, counters, observer, stop, &mut report)
                .await
        }
    }
    .await;
    // A campaign this run created but put no call in (every contact
    // rejected, e.g. all on the do-not-call list) is removed again: a run
    // that enqueues nothing creates nothing.
    let created_empty = !prepared.exists && !spec.dry_run && report.nothing_enqueued();
    let result = match result {
        Ok(()) if created_empty => sqlx::query(
            "DELETE FROM campaigns c WHERE c.id = $1 \
             AND NOT EXISTS (SELECT 1 FROM calls k WHERE k.campaign_id = c.id)",
        )
        .bind(prepared.id)
        .execute(pool)
        .await
        .map(drop)
        .map_err(EnqueueError::db("removing the empty campaign")),
        other => other,
    };
    // Released explicitly: a dropped connection's lock lingers until the
    // server notices the closed socket, and a re-run started right after this
    // one would be refused as "another producer is enqueueing".
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut lock).await;
    let _ = sqlx::Connection::close(lock).await;
    result?;
    report.interrupted = stop.is_cancelled();
    report.seconds = started.elapsed().as_secs_f64();
    report.samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(report)
}

/// Runs the reader on a blocking thread; rows arrive in batches on the
/// returned channel. The reader stops when `stop` is set or the receiver is gone.
fn spawn_reader(
    reader: ContactReader,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<Vec<Row>>, tokio::task::JoinHandle<std::io::Result<()>>) {
    read_in_batches(reader, BATCH, 4, stop)
}

/// The reader on a blocking thread, `size` rows a batch, at most `ahead`
/// batches waiting; it stops when `stop` is set or the receiver is gone.
pub(crate) fn read_in_batches(
    mut reader: ContactReader,
    size: usize,
    ahead: usize,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<Vec<Row>>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = mpsc::channel::<Vec<Row>>(ahead);
    let handle = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(size);
        while !stop.load(Ordering::Relaxed) {
            let Some(row) = reader.next_row() else { break };
            batch.push(row?);
            if batch.len() == size
                && tx.blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(size))).is_err()
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
    std::future::pending::<()>().await;
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
    spec: &Spec,
    prepared: &Prepared,
    reader: ContactReader,
    name: &str,
    counters: &Arc<Counters>,
    observer: &dyn Observer,
    stop: &CancellationToken,
    report: &mut Report,
) -> Result<(), EnqueueError> {
    let amqp = queue::connect(spec.amqp_url.expose_secret(), "tocsin-producer")
        .await
        .map_err(EnqueueError::broker("connecting"))?;
    let topology = Topology::new(&spec.queue_prefix);
    // Connected, a refusal is the broker's answer (e.g. a queue declared
    // with other arguments), not an outage: retrying will not fix it.
    let refused =
        |doing: &'static str| move |e: lapin::Error| EnqueueError::Failed { doing, detail: e.to_string() };
    let setup = amqp.create_channel().await.map_err(refused("opening a RabbitMQ channel"))?;
    topology.declare(&setup).await.map_err(refused("declaring the queue topology"))?;
    let _ = tokio::time::timeout(Duration::from_secs(5), setup.close(200, "topology declared".into())).await;
    let channel = amqp.create_channel().await.map_err(refused("opening the publish channel"))?;
    channel.confirm_select(Default::default()).await.map_err(refused("enabling publisher confirms"))?;

    let (publish_tx, publish_rx) = mpsc::channel::<Batch>(8);
    let (mark_tx, mark_rx) = mpsc::channel::<Vec<i64>>(8);
    let counter = counters.published.clone();
    let stage = publish::Stage::new(
        channel,
        &topology,
        prepared.id,
        spec.in_flight,
        mark_tx,
        Box::new(move |n| {
            counter.fetch_add(n, Ordering::Relaxed);
        }),
    );
    let stop_flag = Arc::new(AtomicBool::new(false));

    let produce = async {
        let resumed = resume_unconfirmed(pool, prepared.id, &publish_tx, stop).await?;
        let (rows, reader_thread) = spawn_reader(reader, stop_flag.clone());
        let counts = write_stage(pool, prepared, rows, &publish_tx, counters, observer).await;
        drop(publish_tx);
        let read_result = reader_thread.await.map_err(|e| EnqueueError::Failed {
            doing: "reading the contacts",
            detail: format!("the reader stopped unexpectedly: {e}"),
        })?;
        let counts = counts?;
        read_result.map_err(|e| EnqueueError::InputRejected(format!("{name}: reading failed: {e}")))?;
        Ok::<_, EnqueueError>((resumed, counts))
    };
    let work =
        async { tokio::try_join!(produce, stage.run(publish_rx), mark_stage(pool, prepared.id, mark_rx)) };
    let ((resumed, counts), published, _marked) = tokio::select! {
        r = work => r?,
        () = relay_stop(stop, &stop_flag) => unreachable!("relay_stop never ends"),
    };
    queue::close(&amqp, "done").await;
    counts.fill(report);
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
) -> Result<u64, EnqueueError> {
    let mut rows = calls::unconfirmed(pool, campaign);
    let mut batch = Batch::default();
    let mut count = 0;
    while let Some((id, number, enqueue_batch)) =
        rows.try_next().await.map_err(EnqueueError::db("reading unconfirmed calls"))?
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
    /// The report's counts of contacts.
    fn fill(&self, report: &mut Report) {
        report.read = self.read;
        report.new_contacts = self.new;
        report.already_enqueued = self.already;
        report.invalid = self.report.invalid;
        report.duplicate = self.report.duplicate;
        report.do_not_call = self.report.do_not_call;
        report.malformed = self.report.malformed;
    }

    fn add(&mut self, w: &Written, observer: &dyn Observer, counters: &Counters) {
        self.read += w.read;
        self.new += w.new.jobs.len() as u64;
        self.already += w.already;
        for r in &w.rejections {
            self.report.count(&r.reason);
        }
        counters.read.fetch_add(w.read, Ordering::Relaxed);
        counters.written.fetch_add(w.new.jobs.len() as u64, Ordering::Relaxed);
        counters.rejected.fetch_add(w.rejections.len() as u64, Ordering::Relaxed);
        if !w.rejections.is_empty() {
            observer.rejected(&w.rejections);
        }
    }
}

/// Writes batches (two in flight) and hands their new rows to the publisher.
async fn write_stage(
    pool: &PgPool,
    prepared: &Prepared,
    rows: mpsc::Receiver<Vec<Row>>,
    publish: &mpsc::Sender<Batch>,
    counters: &Counters,
    observer: &dyn Observer,
) -> Result<Counts, EnqueueError> {
    let created = OnceCell::new();
    let mut written = batches(rows).map(|batch| write_batch(pool, prepared, &created, batch)).buffered(2);
    let mut counts = Counts::default();
    while let Some(w) = written.next().await {
        let w = w?;
        counts.add(&w, observer, counters);
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
) -> Result<Written, EnqueueError> {
    let (read, contacts, mut rejections) = split(batch);
    if contacts.is_empty() {
        return Ok(Written { read, new: Batch::default(), already: 0, rejections });
    }
    if !prepared.exists {
        created.get_or_try_init(|| spec::write(pool, prepared)).await?;
    }
    let enqueue_batch: i64 = sqlx::query_scalar("SELECT nextval('enqueue_batch_id')")
        .fetch_one(pool)
        .await
        .map_err(EnqueueError::db("numbering a batch of calls"))?;
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
    .map_err(EnqueueError::db("writing calls"))?;
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
) -> Result<u64, EnqueueError> {
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
        .map_err(EnqueueError::db("recording confirmed jobs"))?;
        marked += ids.len() as u64;
    }
    Ok(marked)
}

/// `--dry-run`: the same reading and checks, with read-only queries for the
/// do-not-call list and contacts already in the campaign.
async fn dry_run(
    pool: &PgPool,
    prepared: &Prepared,
    reader: ContactReader,
    counters: &Arc<Counters>,
    observer: &dyn Observer,
    stop: &CancellationToken,
    report: &mut Report,
) -> Result<(), EnqueueError> {
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
            .map_err(EnqueueError::db("checking the do-not-call list"))?;
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
            counts.add(&w, observer, counters);
            counts.new += new;
        }
        Ok::<_, EnqueueError>(())
    };
    tokio::select! {
        r = check => r?,
        () = relay_stop(stop, &stop_flag) => {}
    }
    reader_thread
        .await
        .map_err(|e| EnqueueError::Failed { doing: "reading the contacts", detail: e.to_string() })?
        .map_err(|e| EnqueueError::InputRejected(format!("reading failed: {e}")))?;
    counts.fill(report);
    Ok(())
}
