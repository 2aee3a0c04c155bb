//! What a run is asked to do (`Spec`), and the campaign it writes to,
//! checked against any existing row (`prepare`) before anything is written.
//! The settings' rules are the campaign type's (`tocsin_core::campaign`).

use secrecy::SecretString;
use sqlx::PgPool;
use tocsin_core::campaign::{CampaignStatus, Changes, FieldError, Settings, check_name};
use tocsin_core::{CampaignId, PhoneNumber, db};

use crate::EnqueueError;

/// An enqueue run: which campaign, with which settings, published where.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The campaign's name (it names its id, so every run finds the same one).
    pub campaign: String,
    /// The settings asked for; `None` fields keep an existing campaign's
    /// values (or the defaults for a new one). A new campaign needs the
    /// message and the caller id.
    pub changes: Changes,
    /// Allow changing an existing campaign's message.
    pub update_message: bool,
    /// Allow changing an existing campaign's other settings.
    pub update_settings: bool,
    /// Region (ISO 3166) for numbers written without a country code.
    pub default_region: Option<String>,
    /// Check and count everything, write and publish nothing.
    pub dry_run: bool,
    /// Most jobs awaiting the broker's confirm at once.
    pub in_flight: usize,
    pub amqp_url: SecretString,
    pub queue_prefix: String,
    /// The provider accounts configured where this runs (a campaign's
    /// calls must go through them).
    pub accounts: Vec<tocsin_core::route::AccountName>,
}

impl Spec {
    /// A run on `campaign` with `changes`, publishing to `amqp_url` under
    /// `queue_prefix`, every option at its default.
    pub fn new(
        campaign: impl Into<String>,
        changes: Changes,
        amqp_url: SecretString,
        queue_prefix: String,
    ) -> Self {
        Self {
            campaign: campaign.into(),
            changes,
            update_message: false,
            update_settings: false,
            default_region: None,
            dry_run: false,
            in_flight: 2048,
            amqp_url,
            queue_prefix,
            accounts: Vec::new(),
        }
    }
}

/// The campaign a run writes to, checked against any existing row.
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

/// Works out the campaign's settings from the spec and any existing row,
/// refusing accidental changes. Writes nothing.
pub async fn prepare(
    pool: &PgPool,
    spec: &Spec,
    has_timezone_column: bool,
) -> Result<Prepared, EnqueueError> {
    check_name("campaign", &spec.campaign).map_err(|e| {
        EnqueueError::Invalid(vec![FieldError::new("campaign", format!("{:?} {}", spec.campaign, e.message))])
    })?;
    if let Some(region) = &spec.default_region
        && let Err(e @ tocsin_core::phone::PhoneNumberError::UnknownRegion(_)) =
            PhoneNumber::parse("+14155552671", Some(region))
    {
        return Err(EnqueueError::Invalid(vec![FieldError::new("default_region", e.to_string())]));
    }
    let id = CampaignId::from_name(&spec.campaign);
    let existing = db::campaign(pool, id).await.map_err(EnqueueError::db("reading the campaign"))?;
    let requested = spec.changes.clone();
    let s = match &existing {
        Some(c) => c.settings.apply(requested).map_err(EnqueueError::Invalid)?,
        None => Settings::new(requested).map_err(EnqueueError::Invalid)?,
    };
    if spec.changes.window.is_some()
        && spec.changes.timezone.is_none()
        && !has_timezone_column
        && s.timezone == chrono_tz::UTC
    {
        return Err(EnqueueError::Refused(
            "--window is local time: give --timezone (e.g. --timezone America/New_York) or a time zone \
             column in the contact list, so nobody is called at night"
                .into(),
        ));
    }
    // Every account the calls may go through must be configured here (the
    // workers read the same variables): named at enqueue, not found by a call.
    if let Err(why) = tocsin_core::route::check_configured(&s, &spec.accounts) {
        return Err(EnqueueError::Refused(why));
    }

    let name = spec.campaign.clone();
    let Some(existing) = existing else {
        return Ok(Prepared {
            id,
            name,
            settings: s,
            exists: false,
            update: false,
            status: CampaignStatus::Active,
            changes: Vec::new(),
        });
    };
    if existing.status == CampaignStatus::Cancelled {
        return Err(EnqueueError::Refused(format!(
            "campaign {name:?} was cancelled and takes no new contacts; pick another name, or delete it first \
             (producer delete {name} --yes)"
        )));
    }
    let base = &existing.settings;
    let mut changes = Vec::new();
    if s.message != base.message {
        if !spec.update_message {
            return Err(EnqueueError::Refused(format!(
                "campaign {name:?} already exists with a different message; pass --update-message to change it \
                 (calls not yet answered will speak the new one), or use another campaign name"
            )));
        }
        changes.push("message".to_owned());
    }
    let other = s.changes_from(base);
    if !other.is_empty() && !spec.update_settings {
        return Err(EnqueueError::Refused(format!(
            "campaign {name:?} already exists with other settings ({}); pass --update-settings to change them",
            other.join("; ")
        )));
    }
    changes.extend(other);
    Ok(Prepared {
        id,
        name,
        update: !changes.is_empty(),
        settings: s,
        exists: true,
        status: existing.status,
        changes,
    })
}

/// Writes the campaign row: inserts a new one, or applies an allowed update.
pub async fn write(pool: &PgPool, p: &Prepared) -> Result<(), EnqueueError> {
    let s = &p.settings;
    let query = if p.exists {
        if !p.update {
            return Ok(());
        }
        "UPDATE campaigns SET message = $3, language = $4, voice = $5, provider = $6, from_number = $7, \
         repeat = $8, max_attempts = $9, retry_delay_secs = $10, machine_detection = $11, start_at = $12, \
         window_start = $13, window_end = $14, timezone = $15, expires_at = $16, confirm = $17, \
         confirm_prompt = $18, confirm_key = $19, replay_key = $20, opt_out_key = $21, max_replays = $22, \
         key_timeout_secs = $23, until_confirmed = $24, voicemail = $25, voicemail_message = $26, \
         audio_url = $27, route = $28, updated_at = now() \
         WHERE id = $1 AND name = $2"
    } else {
        "INSERT INTO campaigns (id, name, message, language, voice, provider, from_number, repeat, max_attempts, \
         retry_delay_secs, machine_detection, start_at, window_start, window_end, timezone, expires_at, confirm, \
         confirm_prompt, confirm_key, replay_key, opt_out_key, max_replays, key_timeout_secs, until_confirmed, \
         voicemail, voicemail_message, audio_url, route) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                 $21, $22, $23, $24, $25, $26, $27, $28) \
         ON CONFLICT (name) DO NOTHING"
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
        .bind(s.expires_at)
        .bind(s.confirm)
        .bind(&s.confirmation.prompt)
        .bind(s.confirmation.confirm_key.to_string())
        .bind(s.confirmation.replay_key.map(|k| k.to_string()))
        .bind(s.confirmation.opt_out_key.map(|k| k.to_string()))
        .bind(i32::try_from(s.confirmation.max_replays).unwrap_or(0))
        .bind(i32::try_from(s.confirmation.key_timeout_secs).unwrap_or(8))
        .bind(s.until_confirmed)
        .bind(s.voicemail.as_str())
        .bind(&s.voicemail_message)
        .bind(&s.audio_url)
        .bind(s.route.as_ref().map(ToString::to_string))
        .execute(pool)
        .await
        .map_err(EnqueueError::db("writing the campaign"))?;
    Ok(())
}
