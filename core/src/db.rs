//! PostgreSQL: the pool, the embedded migrations and the queries more than
//! one binary runs. Every query is parameterised.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::campaign::Campaign;
use crate::{CallId, CampaignId};

/// The schema, from `migrations/`, compiled into every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. `acquire_timeout` bounds how long a caller waits when the
/// database is down, so services answer 503 instead of hanging.
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.expose_secret().parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Give idle connections back soon: many processes share one server.
        .idle_timeout(Duration::from_secs(30))
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Applies pending migrations (idempotent; concurrent callers serialise on
/// sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// `SELECT <every Campaign column> FROM campaigns c <rest>`, as a static
/// string: the column list is written once, and queries stay literals.
#[macro_export]
macro_rules! select_campaign {
    (with $extra:literal, $rest:literal) => {
        concat!(
            "SELECT c.id, c.name, c.message, c.language, c.provider, c.from_number, c.status, ",
            "c.repeat, c.max_attempts, c.retry_delay_secs, c.voice, c.machine_detection, c.start_at, ",
            "c.expires_at, c.window_start, c.window_end, c.timezone, c.confirm, c.confirm_prompt, c.confirm_key, ",
            "c.replay_key, c.opt_out_key, c.max_replays, c.key_timeout_secs, c.until_confirmed, c.voicemail, ",
            "c.voicemail_message, c.audio_url, c.route, ",
            $extra,
            " FROM campaigns c ",
            $rest
        )
    };
    ($rest:literal) => {
        concat!(
            "SELECT c.id, c.name, c.message, c.language, c.provider, c.from_number, c.status, ",
            "c.repeat, c.max_attempts, c.retry_delay_secs, c.voice, c.machine_detection, c.start_at, ",
            "c.expires_at, c.window_start, c.window_end, c.timezone, c.confirm, c.confirm_prompt, c.confirm_key, ",
            "c.replay_key, c.opt_out_key, c.max_replays, c.key_timeout_secs, c.until_confirmed, c.voicemail, ",
            "c.voicemail_message, c.audio_url, c.route FROM campaigns c ",
            $rest
        )
    };
}

pub async fn campaign(pool: &PgPool, id: CampaignId) -> Result<Option<Campaign>, sqlx::Error> {
    sqlx::query_as(select_campaign!("WHERE c.id = $1")).bind(id).fetch_optional(pool).await
}

/// A call's campaign, its words already filled in for the call's contact
/// (`Campaign::personalise`), and what proves a request is about this call.
pub struct CallCampaign {
    pub campaign: Campaign,
    pub url_token: Option<String>,
    pub call_state: String,
}

/// The campaign a call belongs to, personalised for its contact, with the
/// call's URL token and state (one read for a request that must prove the
/// call's token: `calls::url_token_ok`).
pub async fn campaign_of_call_with_token(
    pool: &PgPool,
    call: CallId,
) -> Result<Option<CallCampaign>, sqlx::Error> {
    use sqlx::{FromRow, Row};
    let row = sqlx::query(select_campaign!(
        with "k.url_token, k.state AS call_state, k.attributes::text AS call_attributes",
        "JOIN calls k ON k.campaign_id = c.id WHERE k.id = $1"
    ))
    .bind(call)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let mut campaign = Campaign::from_row(&r)?;
        campaign.personalise(&r.try_get::<String, _>("call_attributes")?);
        Ok(CallCampaign {
            campaign,
            url_token: r.try_get("url_token")?,
            call_state: r.try_get("call_state")?,
        })
    })
    .transpose()
}

/// The campaign a call belongs to.
pub async fn campaign_of_call(pool: &PgPool, call: CallId) -> Result<Option<Campaign>, sqlx::Error> {
    sqlx::query_as(select_campaign!("JOIN calls k ON k.campaign_id = c.id WHERE k.id = $1"))
        .bind(call)
        .fetch_optional(pool)
        .await
}
