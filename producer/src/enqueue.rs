//! `producer enqueue`: the command line around the enqueue library
//! (`tocsin-enqueue`). It turns the flags into a `Spec` and the contacts
//! into `Contacts`, draws progress with indicatif (or a line every few
//! seconds when standard error is not a terminal), prints the first
//! rejected lines and writes all of them to `--rejects`, and maps the
//! library's errors to the documented exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::PhoneNumber;
use tocsin_core::campaign::{Changes, Deadline};
use tocsin_enqueue::input::Columns;
use tocsin_enqueue::{Contacts, Counters, EnqueueError, Observer, Rejection, Report, Source, Spec};
use tokio_util::sync::CancellationToken;

use crate::Fatal;
use crate::config::EnqueueArgs;

/// Rejected lines printed on standard error; the rest go to `--rejects`.
const SHOWN_REJECTIONS: u64 = 20;

/// The library's errors as the CLI's (each has its exit code).
pub fn fatal(e: EnqueueError) -> anyhow::Error {
    match e {
        EnqueueError::Invalid(errors) => {
            Fatal::Usage(errors.iter().map(|e| e.as_flag()).collect::<Vec<_>>().join("; ")).into()
        }
        EnqueueError::Refused(m) => Fatal::Usage(m).into(),
        EnqueueError::InputRejected(m) => Fatal::InputRejected(m).into(),
        EnqueueError::Unreachable { service, detail } => Fatal::Unreachable { service, detail }.into(),
        EnqueueError::Interrupted => Fatal::Interrupted.into(),
        other @ EnqueueError::Failed { .. } => anyhow::Error::new(other),
    }
}

/// The most `--message-file` reads: 5,000 characters of 4-byte UTF-8, and room.
const MAX_MESSAGE_FILE_BYTES: u64 = 32 * 1024;

/// Reads the message from `--message` or `--message-file`.
fn message(args: &EnqueueArgs) -> anyhow::Result<Option<String>> {
    let usage = |m: String| anyhow::Error::from(Fatal::Usage(m));
    match (&args.message, &args.message_file) {
        (Some(m), _) => Ok(Some(m.clone())),
        (None, Some(path)) => {
            // A bounded read: `/dev/zero` or a log file by mistake must end
            // in an error, not fill the memory.
            use std::io::Read;
            let limit = MAX_MESSAGE_FILE_BYTES;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
                .map_err(|e| usage(format!("--message-file {}: cannot read: {e}", path.display())))?;
            if bytes.len() as u64 > limit {
                return Err(usage(format!(
                    "--message-file {}: larger than {} KiB; a message is at most {} characters",
                    path.display(),
                    limit / 1024,
                    tocsin_core::campaign::limits::MESSAGE_CHARS.end()
                )));
            }
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| usage(format!("--message-file {}: not valid UTF-8 text", path.display())))
        }
        // A recording needs no message (it keeps the campaign's transcript).
        (None, None) if args.audio_url.is_some() => Ok(None),
        (None, None) => {
            Err(usage("give the message with --message or --message-file (or --audio-url)".into()))
        }
    }
}

/// The run the flags ask for.
pub fn spec(args: &EnqueueArgs) -> anyhow::Result<Spec> {
    let from = match &args.from {
        Some(f) => Some(PhoneNumber::parse(f, None).map_err(|e| {
            Fatal::Usage(format!("--from {f:?}: {e} (write it as +CC..., e.g. +14155550100)"))
        })?),
        None => None,
    };
    let changes = Changes {
        message: message(args)?,
        audio_url: args.audio_url.clone(),
        route: args.route.clone().map(Some),
        language: args.language.clone(),
        voice: args.voice.clone(),
        provider: args.provider,
        from,
        repeat: args.repeat,
        max_attempts: args.max_attempts,
        retry_delay_secs: args.retry_delay.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        machine_detection: args.machine_detection,
        start_at: args.start_at,
        expires_at: args.expires_at.map(Deadline::At).or(args.expires_in.map(Deadline::In)),
        window: args.window,
        timezone: args.timezone,
        confirm: args.confirm,
        confirm_prompt: args.confirm_prompt.clone(),
        confirm_key: args.confirm_key,
        replay_key: args.replay_key.map(|k| k.0),
        opt_out_key: args.opt_out_key.map(|k| k.0),
        max_replays: args.max_replays,
        key_timeout_secs: args.key_timeout,
        until_confirmed: args.until_confirmed,
        voicemail: args.voicemail,
        voicemail_message: args.voicemail_message.clone(),
    };
    let mut spec =
        Spec::new(&args.campaign, changes, args.amqp.amqp_url.clone(), args.amqp.queue_prefix.clone());
    spec.update_message = args.update_message;
    spec.update_settings = args.update_settings;
    spec.default_region = args.default_region.clone();
    spec.dry_run = args.dry_run;
    spec.in_flight = args.in_flight as usize;
    spec.accounts = args.providers.account_names().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(spec)
}

/// Enqueues `args.contacts` (or the saved list `args.list`) into campaign
/// `args.campaign`, until done.
pub async fn enqueue(pool: &PgPool, args: &EnqueueArgs) -> anyhow::Result<Report> {
    enqueue_until(pool, args, CancellationToken::new()).await
}

/// Enqueues until done or `stop` is cancelled (then drains what is in
/// flight, and the report says `interrupted`), with progress on standard
/// error and the first rejected lines printed.
pub async fn enqueue_until(
    pool: &PgPool,
    args: &EnqueueArgs,
    stop: CancellationToken,
) -> anyhow::Result<Report> {
    let spec = spec(args)?;
    let contacts = match (&args.list, &args.contacts) {
        (Some(_), _) => None,
        (None, Some(path)) => Some(Contacts::Text {
            source: Source::from_arg(path),
            format: args.format,
            delimiter: args.delimiter,
            columns: Columns {
                number: args.number_column.clone(),
                timezone: Some(args.timezone_column.clone().unwrap_or_else(|| "timezone".into())),
                timezone_required: args.timezone_column.is_some(),
            },
        }),
        (None, None) => return Err(Fatal::Usage("give --contacts FILE or --list NAME".into()).into()),
    };
    let (name, total) = match (&args.list, &contacts) {
        (Some(list), _) => (format!("list {list}"), None),
        (None, Some(Contacts::Text { source, .. })) => (source.name(), source.size()),
        _ => (String::new(), None),
    };
    let bar = progress_bar(total);
    let sink = RejectSink::start(args.rejects.clone(), name.clone(), bar.clone())?;
    let counters = Arc::new(Counters::default());
    let run = async {
        match (&args.list, contacts) {
            (Some(list), _) => {
                tocsin_enqueue::lists::enqueue_list(pool, &spec, list, &counters, &sink, &stop).await
            }
            (None, Some(contacts)) => {
                tocsin_enqueue::enqueue(pool, &spec, contacts, &counters, &sink, &stop).await
            }
            (None, None) => Err(EnqueueError::InputRejected("no contacts".into())),
        }
    };
    let label = if args.dry_run { "dry run".to_owned() } else { name };
    let result = tokio::select! {
        r = run => r,
        () = show_progress(&counters, &bar, &label, total) => unreachable!("progress never ends"),
    };
    bar.finish_and_clear();
    let shown = tokio::task::spawn_blocking(move || sink.finish()).await.context("writing rejected lines")?;
    let report = result.map_err(fatal)?;
    let shown = shown?;
    let hidden = report.rejected().saturating_sub(shown);
    if hidden > 0 {
        let hint = match &args.rejects {
            Some(p) => format!("every rejected line is in {}", p.display()),
            None => "pass --rejects FILE for the full list".into(),
        };
        tell!("... and {hidden} more rejected lines ({hint})");
    }
    if report.paused && !args.dry_run {
        tell!(
            "note: campaign {:?} is paused; its calls wait until `producer resume {}`",
            report.campaign,
            report.campaign
        );
    }
    Ok(report)
}

/// The report as `--json` prints it.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    #[serde(flatten)]
    pub report: &'a Report,
    pub rejects_file: Option<&'a Path>,
}

/// The human summary of a run, on standard output.
pub fn print_report(report: &Report, rejects_file: Option<&Path>) {
    let this = report;
    let rate = if this.seconds > 0.0 { this.read as f64 / this.seconds } else { 0.0 };
    let head = if this.dry_run { "dry run, nothing written" } else { "enqueue" };
    say!("{}: {head}: read {} contacts in {:.1}s ({rate:.0}/s)", this.campaign, this.read, this.seconds);
    let would = if this.dry_run { "would enqueue" } else { "enqueued" };
    say!("  {would:<17}{:>10}  new contacts", this.new_contacts);
    say!("  {:<17}{:>10}  in the campaign from an earlier run", "already enqueued", this.already_enqueued);
    say!("  {:<17}{:>10}", "invalid", this.invalid);
    say!("  {:<17}{:>10}  within the list", "duplicate", this.duplicate);
    say!("  {:<17}{:>10}", "do-not-call", this.do_not_call);
    say!("  {:<17}{:>10}  unreadable lines", "malformed", this.malformed);
    if !this.dry_run {
        let resumed = if this.resumed > 0 {
            format!(" ({} left unconfirmed by an interrupted run)", this.resumed)
        } else {
            String::new()
        };
        say!("  {:<17}{:>10}  jobs confirmed by RabbitMQ{resumed}", "published", this.published);
    }
    if !this.changes.is_empty() {
        say!("  changed: {}", this.changes.join("; "));
    }
    for sample in &this.samples {
        say!("  heard by line {} ({}): {}", sample.line, sample.number, sample.text);
    }
    if let Some(path) = rejects_file {
        say!("  rejected lines: {}", path.display());
    }
    if this.interrupted {
        say!("  INTERRUPTED: run the same command again to finish (nothing is enqueued twice)");
    }
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
async fn show_progress(progress: &Counters, bar: &ProgressBar, name: &str, total: Option<u64>) {
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

/// The `--rejects` CSV file (line, reason, value, detail), when asked for.
pub type RejectsFile = csv::Writer<std::io::BufWriter<std::fs::File>>;

/// Creates the `--rejects` file with its header.
pub fn rejects_file(path: Option<&Path>) -> anyhow::Result<Option<RejectsFile>> {
    let Some(p) = path else { return Ok(None) };
    let f = std::fs::File::create(p)
        .map_err(|e| Fatal::Usage(format!("--rejects {}: cannot create: {e}", p.display())))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
    w.write_record(["line", "reason", "value", "detail"])?;
    Ok(Some(w))
}

/// One rejected line in the `--rejects` file.
pub fn write_rejection(w: &mut RejectsFile, r: &Rejection) -> csv::Result<()> {
    let line = r.line.to_string();
    let detail = r.reason.to_string();
    w.write_record([line.as_str(), r.reason.keyword(), r.value.as_str(), detail.as_str()])
}

/// Rejected lines: the first few on standard error, all of them in the
/// `--rejects` CSV file (line, reason, value, detail), written on a thread
/// of its own.
pub struct RejectSink {
    tx: std::sync::mpsc::Sender<Vec<Rejection>>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl RejectSink {
    /// `bar` is suspended while a line is printed, so the two do not mix.
    pub fn start(path: Option<PathBuf>, source: String, bar: ProgressBar) -> anyhow::Result<Self> {
        let mut file = rejects_file(path.as_deref())?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Rejection>>();
        let shown_bar = bar.clone();
        let thread = std::thread::spawn(move || {
            let mut shown = 0u64;
            for batch in rx {
                for r in batch {
                    if shown < SHOWN_REJECTIONS {
                        shown += 1;
                        let value =
                            if r.value.is_empty() { String::new() } else { format!("{:?}: ", r.value) };
                        shown_bar.suspend(|| tell!("{source}:{}: {value}{}", r.line, r.reason));
                    }
                    if let Some(w) = file.as_mut() {
                        write_rejection(w, &r)?;
                    }
                }
            }
            if let Some(mut w) = file {
                w.flush()?;
            }
            Ok(shown)
        });
        Ok(Self { tx, thread })
    }

    /// Waits for the writer; returns how many rejections were shown.
    pub fn finish(self) -> anyhow::Result<u64> {
        drop(self.tx);
        self.thread.join().map_err(|_| anyhow::anyhow!("the rejects writer panicked"))?
    }
}

impl Observer for RejectSink {
    fn rejected(&self, batch: &[Rejection]) {
        let _ = self.tx.send(batch.to_vec());
    }
}
