//! The API's seam with the `producer` crate: every call the API makes into
//! the producer to check, enqueue and control a campaign is in this file
//! (key verification, in `auth`, uses `producer::apikey` too). Handlers
//! speak this module's types; the producer's (`EnqueueArgs`, `Report`,
//! `Rejection`, `Fatal`, `Control`) do not leave it, so a change of the
//! producer's interface is a change here.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, FixedOffset};
use producer::campaign::{self, Control};
use producer::config::EnqueueArgs;
pub use producer::config::ProviderArg;
use producer::input::{Format, Source};
use producer::{Fatal, Rejections};
use sqlx::PgPool;
use tocsin_core::config::{ProviderArgs, TelnyxArgs, TwilioArgs, VonageArgs};
use tocsin_core::db::Campaign;
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tokio_util::sync::CancellationToken;

use super::{ApiState, conflict};

/// Whether `name` may name a campaign or a saved contact list.
pub fn valid_name(name: &str) -> bool {
    campaign::valid_name(name)
}

/// SHA-256 of `text`, as the producer hashes API keys.
pub fn sha256(text: &str) -> [u8; 32] {
    producer::apikey::hash(text)
}

/// A configured provider by name, for the `provider` field (or parameter).
pub fn parse_provider(p: &str, configured: &[Provider]) -> Result<ProviderArg, String> {
    match p.parse::<Provider>() {
        Ok(p) if configured.contains(&p) => Ok(match p {
            Provider::Vonage => ProviderArg::Vonage,
            Provider::Twilio => ProviderArg::Twilio,
            Provider::Telnyx => ProviderArg::Telnyx,
        }),
        Ok(p) => Err(format!("{p} is not configured on this service")),
        Err(_) => Err("must be vonage, twilio or telnyx".into()),
    }
}

/// `start_at`: an RFC 3339 time; the error says what was wrong.
pub fn parse_start_at(s: &str) -> Result<DateTime<FixedOffset>, String> {
    producer::config::parse_start_at(s)
}

/// `window`: the daily calling window in local time, `HH:MM-HH:MM`.
pub fn parse_window(s: &str) -> Result<producer::config::Window, String> {
    producer::config::parse_window(s)
}

/// `timezone`: the window's IANA time zone (a contact's own overrides it).
pub fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    producer::config::parse_timezone(s)
}

/// A campaign's optional settings, checked, in the producer's types; each
/// `None` leaves the producer's default (for a new campaign) or the
/// campaign's current value (for an existing one).
#[derive(Debug, Default)]
pub struct Settings {
    pub from: Option<String>,
    pub provider: Option<ProviderArg>,
    pub language: Option<String>,
    pub voice: Option<String>,
    pub repeat: Option<i32>,
    pub start_at: Option<DateTime<FixedOffset>>,
    pub window: Option<producer::config::Window>,
    pub timezone: Option<chrono_tz::Tz>,
    pub max_attempts: Option<i32>,
    pub retry_delay: Option<Duration>,
    pub machine_detection: Option<bool>,
    pub default_region: Option<String>,
}

/// Where a campaign's contacts come from.
pub enum Contacts {
    /// Inline, as JSON Lines for the producer's reader (line N is `contacts[N-1]`).
    Inline { jsonl: Vec<u8> },
    /// A saved contact list (`producer list import`), by name.
    Saved(String),
}

/// A campaign to create (or extend) and its contacts.
pub struct Enqueue {
    pub campaign: String,
    pub message: String,
    pub settings: Settings,
    pub contacts: Contacts,
}

/// What an enqueue did.
pub struct Outcome {
    pub read: u64,
    pub new_contacts: u64,
    pub already_enqueued: u64,
    pub published: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub do_not_call: u64,
    pub malformed: u64,
    /// Campaign settings this run changed.
    pub changes: Vec<String>,
    /// The first rejected contacts (as many as asked for).
    pub rejected: Vec<Rejected>,
}

/// A contact the producer rejected.
pub struct Rejected {
    /// The line of the JSON Lines input (inline contacts) or of the saved
    /// list's imported file, from 1.
    pub line: u64,
    /// The number as written.
    pub number: String,
    pub reason: &'static str,
    pub detail: String,
}

/// Runs the producer's pipeline (`producer enqueue`'s validation, dedupe,
/// do-not-call check and idempotency) on the request's contacts, keeping
/// up to `listed` rejected contacts. `field` names where the contacts came
/// from, for error messages.
pub async fn enqueue(
    state: &ApiState,
    request: Enqueue,
    field: &str,
    listed: usize,
) -> Result<Outcome, ApiError> {
    let name = request.campaign.clone();
    let s = request.settings;
    let mut args = api_args(state, request.campaign, request.message);
    args.from = s.from;
    args.provider = s.provider;
    args.language = s.language;
    args.voice = s.voice;
    args.repeat = s.repeat;
    args.start_at = s.start_at;
    args.window = s.window;
    args.timezone = s.timezone;
    args.max_attempts = s.max_attempts;
    args.retry_delay = s.retry_delay;
    args.machine_detection = s.machine_detection;
    args.default_region = s.default_region;
    let rejections = Rejections::Collect(listed);
    let result = match request.contacts {
        Contacts::Inline { jsonl } => {
            let source = Source::Memory { name: "contacts".into(), data: jsonl.into() };
            producer::enqueue_from(
                &state.pool,
                &args,
                source,
                &state.providers,
                rejections,
                CancellationToken::new(),
            )
            .await
        }
        Contacts::Saved(list) => {
            producer::lists::enqueue_list(
                &state.pool,
                args,
                &list,
                &state.providers,
                rejections,
                CancellationToken::new(),
            )
            .await
        }
    };
    let (report, rejected) = result.map_err(|e| enqueue_error(&e, &name, field))?;
    Ok(Outcome {
        read: report.read,
        new_contacts: report.new_contacts,
        already_enqueued: report.already_enqueued,
        published: report.published,
        invalid: report.invalid,
        duplicate: report.duplicate,
        do_not_call: report.do_not_call,
        malformed: report.malformed,
        changes: report.changes,
        rejected: rejected
            .into_iter()
            .map(|r| Rejected {
                line: r.line,
                reason: r.reason.keyword(),
                detail: r.reason.to_string(),
                number: r.value,
            })
            .collect(),
    })
}

/// The producer's arguments for a campaign created through the API, with
/// every optional setting at its default (the producer's, for a new
/// campaign; unchanged, for an existing one).
fn api_args(state: &ApiState, campaign: String, message: String) -> EnqueueArgs {
    EnqueueArgs {
        campaign,
        contacts: Some("-".into()),
        list: None,
        format: Some(Format::Jsonl),
        message: Some(message),
        message_file: None,
        from: None,
        provider: None,
        language: None,
        voice: None,
        repeat: None,
        start_at: None,
        window: None,
        timezone: None,
        timezone_column: None,
        max_attempts: None,
        retry_delay: None,
        machine_detection: None,
        number_column: "number".into(),
        delimiter: None,
        default_region: None,
        rejects: None,
        dry_run: false,
        json: false,
        update_message: false,
        update_settings: false,
        in_flight: 2048,
        amqp: state.amqp.clone(),
        // Not read by `enqueue_from`: the API passes its own provider list.
        providers: ProviderArgs {
            vonage: VonageArgs {
                vonage_api_url: String::new(),
                vonage_application_id: None,
                vonage_private_key_path: None,
                vonage_signature_secret: None,
            },
            twilio: TwilioArgs {
                twilio_api_url: String::new(),
                twilio_account_sid: None,
                twilio_auth_token: None,
            },
            telnyx: TelnyxArgs {
                telnyx_api_url: String::new(),
                telnyx_api_key: None,
                telnyx_connection_id: None,
                telnyx_public_key: None,
            },
        },
    }
}

/// The API's answer to a failed enqueue; `field` names where the contacts came from.
fn enqueue_error(e: &anyhow::Error, name: &str, field: &str) -> ApiError {
    match e.downcast_ref::<Fatal>() {
        Some(Fatal::Usage(m)) => conflict(m.clone()),
        Some(Fatal::InputRejected(m)) => ApiError::bad_request(format!("{field}: {m}")),
        Some(Fatal::Unreachable { service, .. }) => {
            tracing::error!(error = %e, "enqueue through the API failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{service} is unreachable; retry later"),
            )
        }
        _ => {
            tracing::error!(error = %format!("{e:#}"), campaign = %name, "enqueue through the API failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "enqueueing failed; see the service log",
            )
        }
    }
}

/// Whether a saved contact list of this name exists.
pub async fn list_exists(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    Ok(producer::lists::find(pool, name).await?.is_some())
}

/// A control action on a campaign.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

/// What a control action did: whether the status changed, and (for a
/// cancel) how many waiting calls ended.
pub struct Controlled {
    pub changed: bool,
    pub cancelled_calls: u64,
}

/// Why a control action failed.
pub enum ControlError {
    /// The campaign's state forbids it (e.g. resuming a cancelled campaign).
    Conflict(String),
    /// Anything else (the database): logged by the caller.
    Failed(anyhow::Error),
}

/// Runs `action` on campaign `c` as `producer pause|resume|cancel` does.
pub async fn control(pool: &PgPool, c: &Campaign, action: Action) -> Result<Controlled, ControlError> {
    let done = match action {
        Action::Pause => campaign::set_paused(pool, c, true).await,
        Action::Resume => campaign::set_paused(pool, c, false).await,
        Action::Cancel => campaign::cancel_now(pool, c).await,
    };
    match done {
        Ok(Control::Changed { cancelled_calls }) => Ok(Controlled { changed: true, cancelled_calls }),
        Ok(Control::Unchanged) => Ok(Controlled { changed: false, cancelled_calls: 0 }),
        Err(e) => match e.downcast_ref::<Fatal>() {
            Some(Fatal::Usage(m)) => Err(ControlError::Conflict(m.clone())),
            _ => Err(ControlError::Failed(e)),
        },
    }
}
