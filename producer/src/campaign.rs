//! `producer list`, `pause`, `resume`, `cancel`, `delete`: the commands on
//! campaigns as a whole. The rules are the campaign type's
//! (`tocsin_core::campaign`); workers read the row for every job, so a
//! change applies to jobs already queued.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::CampaignId;
use tocsin_core::campaign::{self, Campaign, CampaignStatus, Control, ControlError, Handle};
use tocsin_core::db;

use crate::Fatal;

fn usage(msg: String) -> anyhow::Error {
    Fatal::Usage(msg).into()
}

/// A refused control command is a usage error (exit code 2).
fn control_error(e: ControlError) -> anyhow::Error {
    match e {
        ControlError::Refused(m) => usage(m),
        ControlError::Database(e) => anyhow::Error::new(e).context("updating the campaign's status"),
    }
}

/// Looks a campaign up by name; an unknown name is a usage error.
pub async fn find(pool: &PgPool, name: &str) -> anyhow::Result<Campaign> {
    let found = db::campaign(pool, CampaignId::from_name(name)).await.context("reading the campaign")?;
    found.ok_or_else(|| unknown(name))
}

/// `producer export`: the campaign's calls as CSV (`tocsin_core::export`),
/// streamed to standard output or a file.
pub async fn export(pool: &PgPool, args: &crate::config::ExportArgs) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let c = find(pool, &args.name).await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut lines = std::pin::pin!(tocsin_core::export::csv(pool, c.id));
    let mut rows = 0u64;
    while let Some(line) = lines.next().await {
        out.write_all(line.context("reading the campaign's calls")?.as_bytes())
            .context("writing the export")?;
        rows += 1;
    }
    out.flush().context("writing the export")?;
    if let Some(path) = &args.output {
        tell!("{}: {} calls written to {}", args.name, rows.saturating_sub(1), path.display());
    }
    Ok(())
}

/// `producer audit`: the audit log, newest first, as text or JSON Lines.
pub async fn audit(pool: &PgPool, args: &crate::config::AuditArgs) -> anyhow::Result<()> {
    let filter = tocsin_core::audit::Filter {
        campaign: args.campaign.clone(),
        since: args.since,
        prefixes: Vec::new(),
        limit: args.limit,
    };
    let entries = tocsin_core::audit::list(pool, &filter).await.context("reading the audit log")?;
    if entries.is_empty() {
        tell!(
            "no actions recorded{}",
            args.campaign.as_ref().map(|c| format!(" for {c}")).unwrap_or_default()
        );
    }
    for e in entries {
        if args.json {
            say!("{}", serde_json::to_string(&e)?);
        } else {
            say!(
                "{}  {:<13} {:<5} {}{}  {}{}",
                e.at.format("%Y-%m-%d %H:%M:%S%.3fZ"),
                e.action,
                e.via,
                e.actor,
                e.client.map(|c| format!(" from {c}")).unwrap_or_default(),
                e.campaign.map(|c| format!("{c} ")).unwrap_or_default(),
                e.details
            );
        }
    }
    Ok(())
}

/// A campaign's identity and status, for a control command: read without
/// its settings, so it works even on a row whose settings do not parse.
async fn find_handle(pool: &PgPool, name: &str) -> anyhow::Result<Handle> {
    let found = campaign::handle(pool, name).await.context("reading the campaign")?;
    found.ok_or_else(|| unknown(name))
}

fn unknown(name: &str) -> anyhow::Error {
    usage(format!("no campaign named {name:?} (producer list shows them)"))
}

pub async fn pause(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let c = find_handle(pool, name).await?;
    match campaign::set_paused(pool, &c, true).await.map_err(control_error)? {
        Control::Unchanged => {
            say!("campaign {name:?} is already paused (producer resume {name} restarts it)");
        }
        Control::Changed { .. } => say!(
            "paused campaign {name:?}: workers dial no new calls from it (calls already ringing finish); \
             producer resume {name} restarts it"
        ),
    }
    Ok(())
}

pub async fn resume(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let c = find_handle(pool, name).await?;
    match campaign::set_paused(pool, &c, false).await.map_err(control_error)? {
        Control::Unchanged => say!("campaign {name:?} is already active"),
        Control::Changed { .. } => say!("resumed campaign {name:?}"),
    }
    Ok(())
}

pub async fn route(
    pool: &PgPool,
    args: &crate::config::RouteArgs,
    configured: &[tocsin_core::route::AccountName],
) -> anyhow::Result<()> {
    let name = &args.name;
    let route = match args.route.trim() {
        "none" => None,
        text => Some(text.parse::<tocsin_core::route::Route>().map_err(|e| usage(format!("route: {e}")))?),
    };
    let c = find(pool, name).await?;
    match campaign::set_route(pool, &c, route, configured).await.map_err(control_error)? {
        Control::Unchanged => say!("campaign {name:?} already takes the route {}", c.settings.route()),
        Control::Changed { .. } => {
            let now = tocsin_core::db::campaign(pool, c.id).await?.map(|c| c.settings.route().to_string());
            say!(
                "campaign {name:?} now calls through {} (every worker's next call; calls in progress finish where they are)",
                now.unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub async fn cancel(pool: &PgPool, name: &str, yes: bool) -> anyhow::Result<()> {
    let c = find_handle(pool, name).await?;
    if c.status == CampaignStatus::Cancelled {
        say!("campaign {name:?} is already cancelled");
        return Ok(());
    }
    if !yes {
        return Err(usage(format!(
            "cancelling {name:?} is final: its calls not yet dialed will never be made. Pass --yes to confirm, \
             or use `producer pause {name}` to stop for now"
        )));
    }
    if let Control::Changed { cancelled_calls } = campaign::cancel(pool, &c).await.map_err(control_error)? {
        say!(
            "cancelled campaign {name:?}: {cancelled_calls} waiting calls will not be made (calls in progress finish)"
        );
    }
    Ok(())
}

pub async fn delete(pool: &PgPool, name: &str, yes: bool) -> anyhow::Result<()> {
    if !yes {
        return Err(usage(format!(
            "deleting campaign {name:?} removes its calls and events; pass --yes to confirm"
        )));
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM call_events WHERE call_id IN \
         (SELECT k.id FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1)",
    )
    .bind(name)
    .execute(&mut *tx)
    .await
    .context("deleting the campaign's events")?;
    // The live stream's log has no foreign key (it is written by a trigger on
    // every state change and must stay cheap); without this, a campaign
    // created again under the same name (the same id) would replay the old
    // one's changes to a stream resumed from the start.
    sqlx::query("DELETE FROM call_state_log WHERE campaign_id = (SELECT id FROM campaigns WHERE name = $1)")
        .bind(name)
        .execute(&mut *tx)
        .await
        .context("deleting the campaign's state log")?;
    let deleted = sqlx::query("DELETE FROM campaigns WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .context("deleting the campaign")?;
    tx.commit().await?;
    if deleted.rows_affected() == 0 {
        // The documented exit code for an unknown campaign (2), as `status` has.
        return Err(usage(format!("no campaign named {name:?}")));
    }
    say!("deleted campaign {name:?}");
    Ok(())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Listed {
    pub campaign: String,
    pub status: String,
    pub provider: String,
    pub total: i64,
    pub terminal: i64,
    pub answered_pct: Option<f64>,
    pub created_at: DateTime<Utc>,
}

pub async fn list(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let rows: Vec<Listed> = sqlx::query_as(
        "SELECT s.campaign, s.status, s.provider, s.total, s.terminal, s.answered_pct::float8 AS answered_pct, \
                c.created_at \
         FROM campaign_summary s JOIN campaigns c ON c.name = s.campaign ORDER BY c.created_at DESC",
    )
    .fetch_all(pool)
    .await
    .context("reading campaign_summary")?;
    if json {
        for r in &rows {
            say!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if rows.is_empty() {
        say!("no campaigns yet (producer enqueue --help shows how to start one)");
        return Ok(());
    }
    let width = rows.iter().map(|r| r.campaign.len()).max().unwrap_or(8).max(8);
    say!(
        "{:<width$}  {:<9}  {:<8}  {:>9}  {:>9}  {:>8}  created",
        "campaign",
        "status",
        "provider",
        "calls",
        "finished",
        "answered"
    );
    for r in rows {
        let answered = r.answered_pct.map_or("-".into(), |p| format!("{p:.1}%"));
        say!(
            "{:<width$}  {:<9}  {:<8}  {:>9}  {:>9}  {:>8}  {}",
            r.campaign,
            r.status,
            r.provider,
            r.total,
            r.terminal,
            answered,
            r.created_at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    Ok(())
}
