//! Campaign settings and control: what `enqueue` writes to `campaigns`, and
//! `list`, `pause`, `resume`, `cancel`, `delete`. Workers read the row for
//! every job, so a change here applies to jobs already queued.

use anyhow::Context;
use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::db::{self, Campaign};
use tocsin_core::provider::Provider;
use tocsin_core::{CampaignId, PhoneNumber};

use crate::Fatal;
use crate::config::EnqueueArgs;

/// Every setting of a campaign row that `enqueue` controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub message: String,
    pub language: String,
    pub voice: Option<String>,
    pub provider: String,
    pub from_number: String,
    pub repeat: i32,
    pub max_attempts: i32,
    pub retry_delay_secs: i32,
    pub machine_detection: bool,
    pub start_at: Option<DateTime<Utc>>,
    pub window_start: Option<NaiveTime>,
    pub window_end: Option<NaiveTime>,
    pub timezone: String,
}

impl Settings {
    fn of(c: &Campaign) -> Self {
        Self {
            message: c.message.clone(),
            language: c.language.clone(),
            voice: c.voice.clone(),
            provider: c.provider.clone(),
            from_number: c.from_number.clone(),
            repeat: c.repeat,
            max_attempts: c.max_attempts,
            retry_delay_secs: c.retry_delay_secs,
            machine_detection: c.machine_detection,
            start_at: c.start_at,
            window_start: c.window_start,
            window_end: c.window_end,
            timezone: c.timezone.clone(),
        }
    }

    /// Human-readable differences from `old`, message excluded.
    fn changes_from(&self, old: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} → {b}"));
            }
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(default)".into());
        let time = |t: Option<DateTime<Utc>>| t.map_or("(none)".into(), |t| t.to_rfc3339());
        let window = |s: &Settings| match (s.window_start, s.window_end) {
            (Some(a), Some(b)) => format!("{}-{}", a.format("%H:%M"), b.format("%H:%M")),
            _ => "(any time)".into(),
        };
        diff("provider", old.provider.clone(), self.provider.clone());
        diff("from", old.from_number.clone(), self.from_number.clone());
        diff("language", old.language.clone(), self.language.clone());
        diff("voice", opt(&old.voice), opt(&self.voice));
        diff("repeat", old.repeat.to_string(), self.repeat.to_string());
        diff("max attempts", old.max_attempts.to_string(), self.max_attempts.to_string());
        diff("retry delay", format!("{}s", old.retry_delay_secs), format!("{}s", self.retry_delay_secs));
        diff("machine detection", old.machine_detection.to_string(), self.machine_detection.to_string());
        diff("start at", time(old.start_at), time(self.start_at));
        diff("window", window(old), window(self));
        diff("time zone", old.timezone.clone(), self.timezone.clone());
        out
    }
}

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
    pub status: String,
    /// What this run changes, for the report.
    pub changes: Vec<String>,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn usage(msg: String) -> anyhow::Error {
    Fatal::Usage(msg).into()
}

/// Reads the message from `--message` or `--message-file`.
pub fn message(args: &EnqueueArgs) -> anyhow::Result<String> {
    let text = match (&args.message, &args.message_file) {
        (Some(m), _) => m.clone(),
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .map_err(|e| usage(format!("--message-file {}: cannot read: {e}", path.display())))?;
            String::from_utf8(bytes)
                .map_err(|_| usage(format!("--message-file {}: not valid UTF-8 text", path.display())))?
        }
        (None, None) => return Err(usage("give the message with --message or --message-file".into())),
    };
    let text = text.trim().to_owned();
    let chars = text.chars().count();
    if chars == 0 || chars > 1500 {
        return Err(usage(format!("the message must be 1 to 1500 characters (it is {chars})")));
    }
    Ok(text)
}

/// Works out the campaign's settings from the arguments and any existing
/// row, refusing accidental changes. Writes nothing.
pub async fn prepare(
    pool: &PgPool,
    args: &EnqueueArgs,
    configured: &[Provider],
    has_timezone_column: bool,
) -> anyhow::Result<Prepared> {
    if !valid_name(&args.campaign) {
        return Err(usage(format!(
            "campaign name {:?} must be 1-200 letters, digits, '-', '_' or '.'",
            args.campaign
        )));
    }
    let message = message(args)?;
    let from = match &args.from {
        Some(f) => Some(
            PhoneNumber::parse(f, None)
                .map_err(|e| usage(format!("--from {f:?}: {e} (write it as +CC..., e.g. +14155550100)")))?,
        ),
        None => None,
    };
    if let Some(region) = &args.default_region
        && let Err(e @ tocsin_core::phone::PhoneNumberError::UnknownRegion(_)) =
            PhoneNumber::parse("+14155552671", Some(region))
    {
        return Err(usage(format!("--default-region: {e}")));
    }
    let retry_delay_secs = match args.retry_delay {
        Some(d) => Some(i32::try_from(d.as_secs()).map_err(|_| usage("--retry-delay is too long".into()))?),
        None => None,
    };

    let id = CampaignId::from_name(&args.campaign);
    let existing = db::campaign(pool, id).await.context("reading the campaign")?;
    let base = match &existing {
        Some(c) => Settings::of(c),
        None => Settings {
            message: message.clone(),
            language: "en-US".into(),
            voice: None,
            provider: "vonage".into(),
            from_number: String::new(),
            repeat: 1,
            max_attempts: 1,
            retry_delay_secs: 300,
            machine_detection: false,
            start_at: None,
            window_start: None,
            window_end: None,
            timezone: "UTC".into(),
        },
    };
    let mut s = base.clone();
    s.message = message;
    if let Some(v) = &args.language {
        s.language = v.clone();
    }
    if let Some(v) = &args.voice {
        s.voice = Some(v.clone());
    }
    if let Some(v) = args.provider {
        s.provider = v.as_str().into();
    }
    if let Some(f) = &from {
        s.from_number = f.as_str().into();
    }
    if let Some(v) = args.repeat {
        s.repeat = v;
    }
    if let Some(v) = args.max_attempts {
        s.max_attempts = v;
    }
    if let Some(v) = retry_delay_secs {
        s.retry_delay_secs = v;
    }
    if let Some(v) = args.machine_detection {
        s.machine_detection = v;
    }
    if let Some(v) = args.start_at {
        s.start_at = Some(v.with_timezone(&Utc));
    }
    if let Some(w) = args.window {
        s.window_start = Some(w.start);
        s.window_end = Some(w.end);
    }
    if let Some(tz) = args.timezone {
        s.timezone = tz.name().into();
    }

    if s.from_number.is_empty() {
        return Err(usage(
            "--from is required for a new campaign: the caller id, in E.164 form (e.g. +14155550100)".into(),
        ));
    }
    if args.window.is_some() && args.timezone.is_none() && !has_timezone_column && s.timezone == "UTC" {
        return Err(usage(
            "--window is local time: give --timezone (e.g. --timezone America/New_York) or a time zone \
             column in the contact list, so nobody is called at night"
                .into(),
        ));
    }
    let provider: Provider = s.provider.parse().map_err(|e| usage(format!("{e}")))?;
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
            status: "active".into(),
            changes: Vec::new(),
        });
    };
    if existing.status == "cancelled" {
        return Err(usage(format!(
            "campaign {:?} was cancelled and takes no new contacts; pick another name, or delete it first \
             (producer delete {} --yes)",
            args.campaign, args.campaign
        )));
    }
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
    let other = s.changes_from(&base);
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
        .bind(&s.provider)
        .bind(&s.from_number)
        .bind(s.repeat)
        .bind(s.max_attempts)
        .bind(s.retry_delay_secs)
        .bind(s.machine_detection)
        .bind(s.start_at)
        .bind(s.window_start)
        .bind(s.window_end)
        .bind(&s.timezone)
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
    let (wanted, doing) = if paused { ("paused", "pause") } else { ("active", "resume") };
    if c.status == "cancelled" {
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
    if c.status == "cancelled" {
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
    if c.status == "cancelled" {
        return Ok(Control::Unchanged);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE campaigns SET status = 'cancelled', updated_at = now() WHERE id = $1")
        .bind(c.id)
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

async fn set_status(pool: &PgPool, c: &Campaign, status: &str) -> anyhow::Result<()> {
    // Never revive a campaign cancelled in the meantime.
    let done = sqlx::query(
        "UPDATE campaigns SET status = $2, updated_at = now() WHERE id = $1 AND status <> 'cancelled'",
    )
    .bind(c.id)
    .bind(status)
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
