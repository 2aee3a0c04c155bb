//! `producer status`: a campaign's calls by state, its dialing rate over the
//! last minute, answer rate, ETA and schedule; `--watch` refreshes live
//! until every call has finished.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use tocsin_core::campaign::{Campaign, CampaignStatus};
use tocsin_core::{CallState, StateCounts};
use tokio_util::sync::CancellationToken;

use crate::Fatal;
use crate::campaign;
use crate::config::StatusArgs;

#[derive(Debug, Serialize)]
pub struct Status {
    pub campaign: String,
    pub status: CampaignStatus,
    pub provider: String,
    pub total: i64,
    pub finished: i64,
    /// Calls in each state (every state listed, zeros included).
    pub states: BTreeMap<&'static str, i64>,
    pub answered: i64,
    /// Answered calls as a share of finished ones.
    pub answer_rate_pct: Option<f64>,
    /// Calls started in the last minute, per second.
    pub calls_per_sec: f64,
    /// Seconds until every call has finished at the current rate.
    pub eta_secs: Option<u64>,
    pub schedule: String,
    /// The deadline, if any: no call starts after it.
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// Jobs of this campaign in the dead-letter store (`producer requeue-dead`).
    pub dead_jobs: i64,
    /// Present when the campaign asks callees to press a key.
    pub confirmation: Option<Confirmations>,
    /// What a call does when a machine answers: ignore, drop, hangup.
    pub voicemail: String,
    /// The recording played instead of the message, if any.
    pub audio_url: Option<String>,
    /// The accounts its calls go through (`failover:vonage:default`).
    pub route: String,
}

/// A confirming campaign's settings and counts.
#[derive(Debug, Serialize)]
pub struct Confirmations {
    pub confirm_key: String,
    pub replay_key: Option<String>,
    pub opt_out_key: Option<String>,
    pub until_confirmed: bool,
    /// Contacts who pressed the confirm key (in any attempt).
    pub confirmed: i64,
    /// Of them, after the deadline.
    pub confirmed_late: i64,
    pub opted_out: i64,
    /// Confirmed as a share of all contacts.
    pub confirmed_pct: Option<f64>,
    /// Median seconds from a contact's first call to its confirmation.
    pub confirm_p50_secs: Option<f64>,
}

impl Status {
    fn done(&self) -> bool {
        self.finished >= self.total
    }

    fn pending(&self) -> i64 {
        self.total - self.finished
    }

    fn lines(&self) -> Vec<String> {
        let s = |k: CallState| self.states.get(k.as_str()).copied().unwrap_or(0);
        let pct = |n: i64| if self.total > 0 { 100.0 * n as f64 / self.total as f64 } else { 0.0 };
        let answer = self.answer_rate_pct.map_or("-".into(), |p| format!("{p:.1}%"));
        let eta = match (self.eta_secs, self.done()) {
            (_, true) => "done".to_owned(),
            (Some(secs), _) => human(secs),
            (None, _) if self.status == CampaignStatus::Paused => CampaignStatus::Paused.to_string(),
            (None, _) => "- (no calls in the last minute)".to_owned(),
        };
        let mut lines = vec![
            format!("{}: {} via {}, {} calls", self.campaign, self.status, self.provider, self.total),
            format!(
                "  finished  {:>9} ({:.1}%)  answered {}  voicemail {}  busy {}  no answer {}  failed {}  cancelled {}  skipped {}  unknown {}  expired {}",
                self.finished,
                pct(self.finished),
                s(CallState::Completed),
                s(CallState::Voicemail),
                s(CallState::Busy),
                s(CallState::NoAnswer),
                s(CallState::Failed) + s(CallState::Rejected),
                s(CallState::Cancelled),
                s(CallState::Skipped),
                s(CallState::Unknown),
                s(CallState::Expired)
            ),
            format!(
                "  pending   {:>9}  queued {}  waiting to redial {}  in progress {}",
                self.pending(),
                s(CallState::Queued),
                s(CallState::RetryWait),
                s(CallState::Dialing) + s(CallState::Placed) + s(CallState::Ringing) + s(CallState::Answered)
            ),
            format!(
                "  rate      {:.1} calls/s (last minute)  answer rate {answer}  ETA {eta}",
                self.calls_per_sec
            ),
            format!("  schedule  {}", self.schedule),
        ];
        lines.push(format!("  route     {}", self.route));
        if let Some(url) = &self.audio_url {
            lines.push(format!("  message   the recording {url}"));
        }
        if self.voicemail != "ignore" {
            lines.push(format!(
                "  machines  {} (voicemails left: {})",
                if self.voicemail == "drop" { "voicemail left after the greeting" } else { "hung up on" },
                self.states.get("voicemail").copied().unwrap_or(0)
            ));
        }
        if let Some(c) = &self.confirmation {
            let keys = [
                Some(format!("confirm {}", c.confirm_key)),
                c.replay_key.as_ref().map(|k| format!("replay {k}")),
                c.opt_out_key.as_ref().map(|k| format!("opt out {k}")),
            ];
            let keys: Vec<String> = keys.into_iter().flatten().collect();
            lines.push(format!(
                "  confirmed {:>9} ({})  late {}  opted out {}  median time to confirm {}  keys: {}{}",
                c.confirmed,
                c.confirmed_pct.map_or("-".into(), |p| format!("{p:.1}%")),
                c.confirmed_late,
                c.opted_out,
                c.confirm_p50_secs.map_or("-".into(), |s| human(s.round() as u64)),
                keys.join(", "),
                if c.until_confirmed { "; redialled until confirmed" } else { "" }
            ));
        }
        if self.dead_jobs > 0 {
            lines.push(format!(
                "  dead      {} jobs dead-lettered; after a fix: producer requeue-dead --campaign {}",
                self.dead_jobs, self.campaign
            ));
        }
        lines
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

pub async fn read(pool: &PgPool, c: &Campaign) -> anyhow::Result<Status> {
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM calls WHERE campaign_id = $1 GROUP BY state")
            .bind(c.id)
            .fetch_all(pool)
            .await
            .context("counting calls by state")?;
    let (recent, answered): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE dialing_at > now() - interval '60 seconds'), \
                count(*) FILTER (WHERE answered_at IS NOT NULL) \
         FROM calls WHERE campaign_id = $1",
    )
    .bind(c.id)
    .fetch_one(pool)
    .await
    .context("reading the calling rate")?;
    let StateCounts { by_state: states, total, finished } = StateCounts::tally(counts);
    let confirmation = match c.settings.confirmation() {
        Some(conf) => {
            let (confirmed, confirmed_late, opted_out, p50): (i64, i64, i64, Option<f64>) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE confirmed_at IS NOT NULL), count(*) FILTER (WHERE confirmed_late), \
                        count(*) FILTER (WHERE opted_out_at IS NOT NULL), \
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM confirmed_at - first_dialing_at)) \
                          FILTER (WHERE confirmed_at IS NOT NULL) \
                 FROM calls WHERE campaign_id = $1",
            )
            .bind(c.id)
            .fetch_one(pool)
            .await
            .context("counting confirmations")?;
            Some(Confirmations {
                confirm_key: conf.confirm_key.to_string(),
                replay_key: conf.replay_key.map(|k| k.to_string()),
                opt_out_key: conf.opt_out_key.map(|k| k.to_string()),
                until_confirmed: c.settings.until_confirmed,
                confirmed,
                confirmed_late,
                opted_out,
                confirmed_pct: (total > 0).then(|| 100.0 * confirmed as f64 / total as f64),
                confirm_p50_secs: p50,
            })
        }
        None => None,
    };
    let calls_per_sec = recent as f64 / 60.0;
    let pending = total - finished;
    let eta_secs = (calls_per_sec > 0.0 && pending > 0).then(|| (pending as f64 / calls_per_sec) as u64);
    Ok(Status {
        campaign: c.name.clone(),
        status: c.status,
        provider: c.settings.provider.to_string(),
        total,
        finished,
        states,
        answered,
        answer_rate_pct: (finished > 0).then(|| 100.0 * answered as f64 / finished as f64),
        calls_per_sec,
        eta_secs,
        schedule: c.schedule(Utc::now()),
        expires_at: c.settings.expires_at,
        dead_jobs: tocsin_core::dead::count_for(pool, c.id).await.context("counting dead-lettered jobs")?,
        confirmation,
        voicemail: c.settings.voicemail.to_string(),
        audio_url: c.settings.audio_url.clone(),
        route: c.settings.route().to_string(),
    })
}

pub async fn status(pool: &PgPool, args: &StatusArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let c = campaign::find(pool, &args.name).await?;
    let mut s = read(pool, &c).await?;
    if args.watch && !s.done() {
        s = watch(pool, args, s, &stop).await?;
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        for line in s.lines() {
            say!("{line}");
        }
    }
    Ok(())
}

async fn watch(
    pool: &PgPool,
    args: &StatusArgs,
    mut s: Status,
    stop: &CancellationToken,
) -> anyhow::Result<Status> {
    let tty = std::io::stderr().is_terminal();
    let bar = if tty { ProgressBar::new(s.total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} calls finished\n{msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut last_line: Option<Instant> = None;
    loop {
        if s.done() || stop.is_cancelled() {
            bar.finish_and_clear();
            return Ok(s);
        }
        if started.elapsed() > args.timeout {
            bar.abandon();
            return Err(Fatal::TimedOut(format!(
                "{}: {} of {} calls still not finished after {}",
                args.name,
                s.pending(),
                s.total,
                human(args.timeout.as_secs())
            ))
            .into());
        }
        if tty {
            bar.set_length(s.total as u64);
            bar.set_position(s.finished as u64);
            bar.set_message(s.lines()[1..].join("\n"));
        } else if last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            let eta = s.eta_secs.map_or("-".into(), human);
            tell!(
                "{}: {}/{} calls finished, {} pending, {:.1} calls/s, ETA {eta}",
                s.campaign,
                s.finished,
                s.total,
                s.pending(),
                s.calls_per_sec
            );
            last_line = Some(Instant::now());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => {}
        }
        let c = campaign::find(pool, &args.name).await.context("the campaign was deleted while watching")?;
        s = read(pool, &c).await?;
    }
}
