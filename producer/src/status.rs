//! `producer status`: a campaign's calls by state, optionally live until
//! every call is terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::config::StatusArgs;

#[derive(sqlx::FromRow, Debug)]
struct Summary {
    total: i64,
    terminal: i64,
    queued: i64,
    in_progress: i64,
    completed: i64,
    busy: i64,
    no_answer: i64,
    failed: i64,
    unknown: i64,
}

async fn summary(pool: &PgPool, name: &str) -> anyhow::Result<Option<Summary>> {
    sqlx::query_as(
        "SELECT total, terminal, queued, in_progress, completed, busy, no_answer, failed + rejected AS failed, unknown \
         FROM campaign_summary WHERE campaign = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .context("reading campaign_summary")
}

pub async fn status(pool: &PgPool, args: &StatusArgs) -> anyhow::Result<()> {
    let Some(mut s) = summary(pool, &args.name).await? else {
        anyhow::bail!("no campaign named {:?}", args.name);
    };
    if args.wait {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty { ProgressBar::new(s.total as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} calls finished  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let mut last_line = Instant::now() - Duration::from_secs(60);
        while s.terminal < s.total {
            if started.elapsed() > args.timeout {
                bar.abandon();
                anyhow::bail!(
                    "{}: {} of {} calls still not finished after {:?}",
                    args.name,
                    s.total - s.terminal,
                    s.total,
                    args.timeout
                );
            }
            let msg = format!("queued {} in progress {} answered {}", s.queued, s.in_progress, s.completed);
            bar.set_length(s.total as u64);
            bar.set_position(s.terminal as u64);
            bar.set_message(msg.clone());
            if !tty && last_line.elapsed() >= Duration::from_secs(2) {
                eprintln!("{}: {}/{} calls finished, {msg}", args.name, s.terminal, s.total);
                last_line = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            s = summary(pool, &args.name).await?.context("the campaign was deleted while waiting")?;
        }
        bar.finish_and_clear();
    }
    println!(
        "{}: {} calls, {} finished ({} answered, {} busy, {} no answer, {} failed, {} unknown), {} queued, {} in progress",
        args.name,
        s.total,
        s.terminal,
        s.completed,
        s.busy,
        s.no_answer,
        s.failed,
        s.unknown,
        s.queued,
        s.in_progress
    );
    Ok(())
}
