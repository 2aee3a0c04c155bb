//! Campaign settings and control: what `enqueue` writes to `campaigns`, and
//! `list`, `pause`, `resume`, `cancel`, `delete`. Workers read the row for
//! every job, so a change here applies to jobs already queued.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::campaign::{Campaign, CampaignStatus, Changes, FieldError, Settings, check_name};
use tocsin_core::db;
use tocsin_core::provider::Provider;
use tocsin_core::{CampaignId, PhoneNumber};

use crate::Fatal;
use crate::config::EnqueueArgs;

/// The campaign an enqueue run writes to, checked against any existing row.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub id: CampaignId,
    pub name: String,
    pub settings: Settings,
    /// The row already exists (possibly updated by this run).
    pub exists: bool,
    /// The existing row's settings differ and the user allowed the change.
    pub update: bool,
    pub status: CampaignStatus,
    /// What this run changes, for the report.
    pub changes: Vec<String>,
}

/// Whether `name` can name a campaign or a saved list (the rule is the
/// campaign type's).
pub fn valid_name(name: &str) -> bool {
    check_name("name", name).is_ok()
}

fn usage(msg: String) -> anyhow::Error {
    Fatal::Usage(msg).into()
}

/// Every bad setting at once, each named by its flag.
fn bad_flags(errors: Vec<FieldError>) -> anyhow::Error {
    usage(errors.iter().map(FieldError::as_flag).collect::<Vec<_>>().join("; "))
}

/// Reads the message from `--message` or `--message-file` (checked with
/// the other settings).
pub fn message(args: &EnqueueArgs) -> anyhow::Result<String> {
    match (&args.message, &args.message_file) {
        (Some(m), _) => Ok(m.clone()),
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .map_err(|e| usage(format!("--message-file {}: cannot read: {e}", path.display())))?;
            String::from_utf8(bytes)
                .map_err(|_| usage(format!("--message-file {}: not valid UTF-8 text", path.display())))
        }
        (None, None) => Err(usage("give the message with --message or --message-file".into())),
    }
}

/// The settings the arguments ask for; `None` fields keep what is there.
fn requested(args: &EnqueueArgs) -> anyhow::Result<Changes> {
    let from = match &args.from {
        Some(f) => Some(
            PhoneNumber::parse(f, None)
                .map_err(|e| usage(format!("--from {f:?}: {e} (write it as +CC..., e.g. +14155550100)")))?,
        ),
        None => None,
    };
    Ok(Changes {
        message: Some(message(args)?),
        language: args.language.clone(),
        voice: args.voice.clone(),
        provider: args.provider,
        from,
        repeat: args.repeat,
        max_attempts: args.max_attempts,
        retry_delay_secs: args.retry_delay.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        machine_detection: args.machine_detection,
        start_at: args.start_at,
        window: args.window,
        timezone: args.timezone,
    })
}

/// Works out the campaign's settings from the arguments and any existing
/// row, refusing accidental changes. Writes nothing.
pub async fn prepare(
    pool: &PgPool,
    args: &EnqueueArgs,
    configured: &[Provider],
    has_timezone_column: bool,
) -> anyhow::Result<Prepared> {
    check_name("name", &args.campaign)
        .map_err(|e| usage(format!("campaign name {:?} {}", args.campaign, e.message)))?;
    let requested = requested(args)?;
    if let Some(region) = &args.default_region
        && let Err(e @ tocsin_core::phone::PhoneNumberError::UnknownRegion(_)) =
            PhoneNumber::parse("+14155552671", Some(region))
    {
        return Err(usage(format!("--default-region: {e}")));
    }

    let id = CampaignId::from_name(&args.campaign);
    let existing = db::campaign(pool, id).await.context("reading the campaign")?;
    let s = match &existing {
        Some(c) => c.settings.apply(requested).map_err(bad_flags)?,
        None => Settings::new(requested).map_err(bad_flags)?,
    };
    if args.window.is_some()
        && args.timezone.is_none()
        && !has_timezone_column
        && s.timezone == chrono_tz::UTC
    {
        return Err(usage(
            "--window is local time: give --timezone (e.g. --timezone America/New_York) or a time zone \
             column in the contact list, so nobody is called at night"
                .into(),
        ));
    }
    let provider = s.provider;
    if !configured.contains(&provider) {
        let variable = match provider {
            Provider::Vonage => "TOCSIN_VONAGE_APPLICATION_ID",
            Provider::Twilio => "TOCSIN_TWILIO_ACCOUNT_SID",
            Provider::Telnyx => "TOCSIN_TELNYX_CONNECTION_ID",
        };
        let others = if configured.is_empty() {
            "no provider is configured here".to_owned()
        } else {
            format!("configured: {}", configured.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "))
        };
        return Err(usage(format!(
            "provider {provider} is not configured: set {variable} (the same variable the workers read) \
             or choose another --provider ({others})"
        )));
    }

    let Some(existing) = existing else {
        return Ok(Prepared {
            id,
            name: args.campaign.clone(),
            settings: s,
            exists: false,
            update: false,
            status: CampaignStatus::Active,
            changes: Vec::new(),
        });
    };
    if existing.status == CampaignStatus::Cancelled {
        return Err(usage(format!(
            "campaign {:?} was cancelled and takes no new contacts; pick another name, or delete it first \
             (producer delete {} --yes)",
            args.campaign, args.campaign
        )));
    }
    let base = &existing.settings;
    let mut changes = Vec::new();
    if s.message != base.message {
        if !args.update_message {
            return Err(usage(format!(
                "campaign {:?} already exists with a different message; pass --update-message to change it \
                 (calls not yet answered will speak the new one), or use another campaign name",
                args.campaign
            )));
        }
        changes.push("message".to_owned());
    }
    let other = s.changes_from(base);
    if !other.is_empty() && !args.update_settings {
        return Err(usage(format!(
            "campaign {:?} already exists with other settings ({}); pass --update-settings to change them",
            args.campaign,
            other.join("; ")
        )));
    }
    changes.extend(other);
    Ok(Prepared {
        id,
        name: args.campaign.clone(),
        update: !changes.is_empty(),
        settings: s,
        exists: true,
        status: existing.status,
        changes,
    })
}

/// Writes the campaign row: inserts a new one, or applies an allowed update.
pub async fn write(pool: &PgPool, p: &Prepared) -> anyhow::Result<()> {
    let s = &p.settings;
    let query = if p.exists {
        if !p.update {
            return Ok(());
        }
        "UPDATE campaigns SET message = $3, language = $4, voice = $5, provider = $6, from_number = $7, \
         repeat = $8, max_attempts = $9, retry_delay_secs = $10, machine_detection = $11, start_at = $12, \
         window_start = $13, window_end = $14, timezone = $15, updated_at = now() WHERE id = $1 AND name = $2"
    } else {
        "INSERT INTO campaigns (id, name, message, language, voice, provider, from_number, repeat, max_attempts, \
         retry_delay_secs, machine_detection, start_at, window_start, window_end, timezone) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (name) DO NOTHING"
    };
    sqlx::query(query)
        .bind(p.id)
        .bind(&p.name)
        .bind(&s.message)
        .bind(&s.language)
        .bind(&s.voice)
        .bind(s.provider.as_str())
        .bind(s.from.as_str())
        .bind(s.repeat)
        .bind(s.max_attempts)
        .bind(s.retry_delay_secs)
        .bind(s.machine_detection)
        .bind(s.start_at)
        .bind(s.window.map(|w| w.open))
        .bind(s.window.map(|w| w.close))
        .bind(s.timezone.name())
        .execute(pool)
        .await
        .context("writing the campaign")?;
    Ok(())
}

/// Looks a campaign up by name; an unknown name is a usage error.
pub async fn find(pool: &PgPool, name: &str) -> anyhow::Result<Campaign> {
    let found = db::campaign(pool, CampaignId::from_name(name)).await.context("reading the campaign")?;
    found.ok_or_else(|| usage(format!("no campaign named {name:?} (producer list shows them)")))
}

/// What a control command did to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The status changed (for `cancel`: with this many waiting calls cancelled).
    Changed { cancelled_calls: u64 },
    /// It already had the status asked for.
    Unchanged,
}

/// Pauses (`paused = true`) or resumes campaign `c`; shared by the CLI and
/// the HTTP API. A cancelled campaign can do neither (a usage error).
pub async fn set_paused(pool: &PgPool, c: &Campaign, paused: bool) -> anyhow::Result<Control> {
    let name = &c.name;
    let (wanted, doing) =
        if paused { (CampaignStatus::Paused, "pause") } else { (CampaignStatus::Active, "resume") };
    if c.status == CampaignStatus::Cancelled {
        return Err(usage(format!("campaign {name:?} is cancelled; it cannot {doing}")));
    }
    if c.status == wanted {
        return Ok(Control::Unchanged);
    }
    set_status(pool, c, wanted).await?;
    Ok(Control::Changed { cancelled_calls: 0 })
}

pub async fn pause(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let c = find(pool, name).await?;
    match set_paused(pool, &c, true).await? {
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
    let c = find(pool, name).await?;
    match set_paused(pool, &c, false).await? {
        Control::Unchanged => say!("campaign {name:?} is already active"),
        Control::Changed { .. } => say!("resumed campaign {name:?}"),
    }
    Ok(())
}

pub async fn cancel(pool: &PgPool, name: &str, yes: bool) -> anyhow::Result<()> {
    let c = find(pool, name).await?;
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
    if let Control::Changed { cancelled_calls } = cancel_now(pool, &c).await? {
        say!(
            "cancelled campaign {name:?}: {cancelled_calls} waiting calls will not be made (calls in progress finish)"
        );
    }
    Ok(())
}

/// Cancels campaign `c` for good and ends its waiting calls; shared by the
/// CLI (after its confirmation) and the HTTP API.
pub async fn cancel_now(pool: &PgPool, c: &Campaign) -> anyhow::Result<Control> {
    if c.status == CampaignStatus::Cancelled {
        return Ok(Control::Unchanged);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE campaigns SET status = $2, updated_at = now() WHERE id = $1")
        .bind(c.id)
        .bind(CampaignStatus::Cancelled.as_str())
        .execute(&mut *tx)
        .await
        .context("cancelling the campaign")?;
    // Calls not yet claimed by a worker end now, so status shows it at once;
    // workers would otherwise do the same as each job arrives.
    let cancelled = tocsin_core::calls::cancel_campaign_waiting(&mut *tx, c.id)
        .await
        .context("cancelling the campaign's waiting calls")?;
    tx.commit().await?;
    Ok(Control::Changed { cancelled_calls: cancelled })
}

async fn set_status(pool: &PgPool, c: &Campaign, status: CampaignStatus) -> anyhow::Result<()> {
    // Never revive a campaign cancelled in the meantime.
    let done =
        sqlx::query("UPDATE campaigns SET status = $2, updated_at = now() WHERE id = $1 AND status <> $3")
            .bind(c.id)
            .bind(status.as_str())
            .bind(CampaignStatus::Cancelled.as_str())
            .execute(pool)
            .await
            .context("updating the campaign's status")?;
    if done.rows_affected() == 0 {
        return Err(usage(format!("campaign {:?} was cancelled meanwhile", c.name)));
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
        say!("no campaign named {name:?}");
    } else {
        say!("deleted campaign {name:?}");
    }
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
