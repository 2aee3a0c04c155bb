//! `producer list import|show|delete`: saved contact lists from the command
//! line. Importing and reading lists is the enqueue library's
//! (`tocsin_enqueue::lists`); this module reads the flags and prints.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use futures::TryStreamExt;
use indicatif::ProgressBar;
use sqlx::PgPool;
use tocsin_enqueue::input::Columns;
use tocsin_enqueue::lists::{self, ImportReport, ListInfo};
use tocsin_enqueue::{Contacts, Source};
use tokio_util::sync::CancellationToken;

use crate::Fatal;
use crate::config::{ListCommand, ListImportArgs};
use crate::enqueue::{RejectSink, fatal};

/// `producer list import|show|delete`.
pub async fn run(pool: &PgPool, cmd: ListCommand, stop: CancellationToken) -> anyhow::Result<()> {
    match cmd {
        ListCommand::Import(args) => {
            let report = import(pool, &args, stop).await?;
            if args.json {
                let json = JsonImportReport { report: &report, rejects_file: args.rejects.as_deref() };
                say!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print(&report, args.rejects.as_deref());
            }
            Ok(())
        }
        ListCommand::Show { name: None, json, .. } => show_all(pool, json).await,
        ListCommand::Show { name: Some(name), contacts, json } => show(pool, &name, contacts, json).await,
        ListCommand::Delete { name, yes } => delete(pool, &name, yes).await,
    }
}

/// The report as `--json` prints it.
#[derive(serde::Serialize)]
struct JsonImportReport<'a> {
    #[serde(flatten)]
    report: &'a ImportReport,
    rejects_file: Option<&'a Path>,
}

/// Imports `args.file` as list `args.name`, replacing its contacts; the
/// first rejected lines are printed, all of them written to `args.rejects`.
pub async fn import(
    pool: &PgPool,
    args: &ListImportArgs,
    stop: CancellationToken,
) -> anyhow::Result<ImportReport> {
    let started = Instant::now();
    let source = Source::from_arg(&args.file);
    let contacts = Contacts::Text {
        source: source.clone(),
        format: args.format,
        delimiter: args.delimiter.or_else(|| is_tsv(&args.file).then_some(b'\t')),
        columns: Columns {
            number: args.number_column.clone(),
            timezone: Some(args.timezone_column.clone().unwrap_or_else(|| "timezone".into())),
            timezone_required: args.timezone_column.is_some(),
        },
    };
    let sink = RejectSink::start(args.rejects.clone(), source.name(), ProgressBar::hidden())?;
    let imported = lists::import(pool, &args.name, contacts, args.default_region.clone(), &sink, &stop).await;
    let shown = tokio::task::spawn_blocking(move || sink.finish()).await.context("writing rejected lines")?;
    let mut report = imported.map_err(fatal)?;
    let hidden = report.rejected().saturating_sub(shown?);
    if hidden > 0 {
        let hint = match &args.rejects {
            Some(p) => format!("every rejected line is in {}", p.display()),
            None => "pass --rejects FILE for the full list".into(),
        };
        tell!("... and {hidden} more rejected lines ({hint})");
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn is_tsv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
}

/// The human summary of an import, on standard output.
fn print(report: &ImportReport, rejects_file: Option<&Path>) {
    let replaced = match report.replaced {
        Some(n) => format!(" (replacing {n})"),
        None => String::new(),
    };
    say!(
        "list {}: saved {} contacts{replaced} from {} in {:.1}s",
        report.list,
        report.saved,
        report.source,
        report.seconds
    );
    say!("  {:<12}{:>10}  contact lines", "read", report.read);
    say!("  {:<12}{:>10}", "invalid", report.invalid);
    say!("  {:<12}{:>10}  within the list", "duplicate", report.duplicate);
    say!("  {:<12}{:>10}", "do-not-call", report.do_not_call);
    say!("  {:<12}{:>10}  unreadable lines", "malformed", report.malformed);
    if let Some(path) = rejects_file {
        say!("  rejected lines: {}", path.display());
    }
}

async fn show_all(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let all: Vec<ListInfo> = sqlx::query_as(
        "SELECT id, name, source, contacts, created_at, imported_at FROM contact_lists ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .context("reading the saved contact lists")?;
    if json {
        for l in &all {
            say!("{}", serde_json::to_string(l)?);
        }
        return Ok(());
    }
    if all.is_empty() {
        say!("no saved contact lists yet (producer list import NAME FILE saves one)");
        return Ok(());
    }
    let width = all.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    say!("{:<width$}  {:>9}  {:<20}  source", "list", "contacts", "imported");
    for l in all {
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
    let info = lists::find(pool, name)
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
    let deleted = lists::delete(pool, name).await.context("deleting the list")?;
    if !deleted {
        return Err(Fatal::Usage(format!("no saved contact list named {name:?}")).into());
    }
    say!("list {name}: deleted");
    Ok(())
}
