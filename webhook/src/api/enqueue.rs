//! The API's seam with the enqueue library (`tocsin-enqueue`) and the
//! campaign's control (`tocsin_core::campaign`): every call the API makes
//! to enqueue and to pause, resume or cancel a campaign is in this file.
//! Handlers speak this module's types; the library's (`Spec`, `Report`,
//! `Rejection`, `EnqueueError`) do not leave it. (The body checks read the
//! campaign's ranges, `campaign::limits`, directly; campaign status reads
//! are plain queries.)

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tocsin_core::campaign::{self, CallingWindow, Changes, Control, Deadline, Handle};
use tocsin_core::confirm::{Key, Voicemail};
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tocsin_core::{PhoneNumber, apikey};
use tocsin_enqueue::input::MAX_LINE;
use tocsin_enqueue::{Counters, EnqueueError, Observer, Record, Rejection, Spec};
use tokio_util::sync::CancellationToken;

use super::{ApiState, conflict};

/// Whether `name` may name a campaign or a saved contact list.
pub fn valid_name(name: &str) -> bool {
    campaign::check_name("name", name).is_ok()
}

/// The message as spoken, or why it cannot be (the campaign's rule).
pub fn check_message(text: &str) -> Result<String, String> {
    campaign::check_message(text).map_err(|e| e.message)
}

/// SHA-256 of `text`, as API keys are hashed.
pub fn sha256(text: &str) -> [u8; 32] {
    apikey::hash(text)
}

/// A configured provider by name, for the `provider` field (or parameter).
pub fn parse_provider(p: &str, configured: &[Provider]) -> Result<Provider, String> {
    match p.parse::<Provider>() {
        Ok(p) if configured.contains(&p) => Ok(p),
        Ok(p) => Err(format!("{p} is not configured on this service")),
        Err(_) => Err("must be vonage, twilio or telnyx".into()),
    }
}

/// `start_at`: an RFC 3339 time; the error says what was wrong.
pub fn parse_start_at(s: &str) -> Result<DateTime<Utc>, String> {
    campaign::parse_start_at(s)
}

/// `expires_at`: the deadline, an RFC 3339 time.
pub fn parse_expires_at(s: &str) -> Result<Deadline, String> {
    campaign::parse_start_at(s).map(Deadline::At)
}

/// `expires_in`: a duration from now (`90m`, `2h`), the deadline's other
/// form (it sets a deadline the campaign does not have yet, never moves one).
pub fn parse_expires_in(s: &str) -> Result<Deadline, String> {
    tocsin_config::parse_duration(s).map(Deadline::In)
}

/// `window`: the daily calling window in local time, `HH:MM-HH:MM`.
pub fn parse_window(s: &str) -> Result<CallingWindow, String> {
    CallingWindow::parse(s)
}

/// `timezone`: the window's IANA time zone (a contact's own overrides it).
pub fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    campaign::parse_timezone(s)
}

/// A campaign's optional settings, checked; each `None` leaves the default
/// (for a new campaign) or the campaign's current value (an existing one).
/// Ranges are checked by the campaign type (`campaign::limits`).
#[derive(Debug, Default)]
pub struct Settings {
    pub from: Option<String>,
    pub provider: Option<Provider>,
    pub language: Option<String>,
    pub voice: Option<String>,
    pub repeat: Option<i64>,
    pub start_at: Option<DateTime<Utc>>,
    pub expires_at: Option<Deadline>,
    pub window: Option<CallingWindow>,
    pub timezone: Option<chrono_tz::Tz>,
    pub max_attempts: Option<i64>,
    pub retry_delay_secs: Option<i64>,
    pub machine_detection: Option<bool>,
    pub default_region: Option<String>,
    pub confirm: Option<bool>,
    pub confirm_prompt: Option<String>,
    pub confirm_key: Option<Key>,
    pub replay_key: Option<Option<Key>>,
    pub opt_out_key: Option<Option<Key>>,
    pub max_replays: Option<i64>,
    pub key_timeout_secs: Option<i64>,
    pub until_confirmed: Option<bool>,
    pub voicemail: Option<Voicemail>,
    pub voicemail_message: Option<String>,
    pub audio_url: Option<String>,
    pub route: Option<tocsin_core::route::Route>,
    /// Check and report only.
    pub dry_run: bool,
}

/// Where a campaign's contacts come from.
pub enum Contacts {
    /// Inline JSON objects (`contacts[i]` is line `i + 1` for the pipeline).
    Inline(Vec<Value>),
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
    /// A personalised message as the first contacts will hear it.
    pub samples: Vec<tocsin_enqueue::contacts::Sample>,
}

impl Outcome {
    /// The counts every enqueue answer carries (`contacts`: how many were
    /// given), for the campaigns and the Alertmanager answers alike.
    pub fn counts(&self, contacts: u64) -> serde_json::Map<String, Value> {
        [
            ("contacts", contacts),
            ("new_contacts", self.new_contacts),
            ("already_enqueued", self.already_enqueued),
            ("published", self.published),
            ("invalid", self.invalid),
            ("duplicate", self.duplicate),
            ("do_not_call", self.do_not_call),
            ("malformed", self.malformed),
        ]
        .into_iter()
        .map(|(key, n)| (key.to_owned(), Value::from(n)))
        .collect()
    }
}

/// A contact the pipeline rejected.
pub struct Rejected {
    /// The contact's line: `contacts[i]` is line `i + 1`; a saved list's
    /// contacts keep the line of the file it was imported from.
    pub line: u64,
    /// The number as written.
    pub number: String,
    pub reason: &'static str,
    pub detail: String,
}

/// Keeps the first `max` rejected contacts (a server prints no numbers).
struct Collect {
    max: usize,
    kept: Mutex<Vec<Rejection>>,
}

impl Collect {
    /// The rejected contacts kept, as the API lists them.
    fn listed(self) -> Vec<Rejected> {
        let kept = self.kept.into_inner().unwrap_or_else(|p| p.into_inner());
        kept.into_iter()
            .map(|r| Rejected {
                line: r.line,
                reason: r.reason.keyword(),
                detail: r.reason.to_string(),
                number: r.value,
            })
            .collect()
    }
}

impl Observer for Collect {
    fn rejected(&self, batch: &[Rejection]) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.max.saturating_sub(kept.len());
        kept.extend(batch.iter().take(room).cloned());
    }
}

/// Runs the enqueue pipeline (`producer enqueue`'s validation, dedupe,
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
    let from = match s.from {
        Some(f) => Some(PhoneNumber::parse(&f, None).map_err(|_| {
            ApiError::bad_request("from: not a phone number in E.164 form (e.g. +14155550100)")
        })?),
        None => None,
    };
    let changes = Changes {
        // With a recording, no message keeps the campaign's transcript.
        message: (s.audio_url.is_none() || !request.message.is_empty()).then_some(request.message),
        audio_url: s.audio_url,
        route: s.route.map(Some),
        language: s.language,
        voice: s.voice,
        provider: s.provider,
        from,
        repeat: s.repeat,
        max_attempts: s.max_attempts,
        retry_delay_secs: s.retry_delay_secs,
        machine_detection: s.machine_detection,
        start_at: s.start_at,
        expires_at: s.expires_at,
        window: s.window,
        timezone: s.timezone,
        confirm: s.confirm,
        confirm_prompt: s.confirm_prompt,
        confirm_key: s.confirm_key,
        replay_key: s.replay_key,
        opt_out_key: s.opt_out_key,
        max_replays: s.max_replays,
        key_timeout_secs: s.key_timeout_secs,
        until_confirmed: s.until_confirmed,
        voicemail: s.voicemail,
        voicemail_message: s.voicemail_message,
    };
    let mut spec =
        Spec::new(request.campaign, changes, state.amqp.amqp_url.clone(), state.amqp.queue_prefix.clone());
    spec.default_region = s.default_region;
    spec.accounts = state.accounts.clone();
    spec.dry_run = s.dry_run;
    let collect = Collect { max: listed, kept: Mutex::new(Vec::new()) };
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let result = match request.contacts {
        Contacts::Inline(values) => {
            let records = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    // The same bound as a line of a contact file.
                    let len = serde_json::to_string(&v).map_or(0, |t| t.len());
                    let line = i as u64 + 1;
                    if len > MAX_LINE {
                        Record::too_long(line, len as u64)
                    } else {
                        Record::from_json(line, v, "number", Some("timezone"))
                    }
                })
                .collect();
            let contacts = tocsin_enqueue::Contacts::records("contacts", records);
            tocsin_enqueue::enqueue(&state.pool, &spec, contacts, &counters, &collect, &stop).await
        }
        Contacts::Saved(list) => {
            tocsin_enqueue::lists::enqueue_list(&state.pool, &spec, &list, &counters, &collect, &stop).await
        }
    };
    let report = result.map_err(|e| enqueue_error(e, &name, field))?;
    let rejected = collect.listed();
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
        samples: report.samples,
        rejected,
    })
}

/// A saved contact list imported from an upload read as it arrives (a
/// blocking reader over the request body): the same checks as `producer
/// list import`, the list replaced in one transaction. Returns the report
/// and the first `listed` rejected lines.
pub async fn import_list(
    state: &ApiState,
    name: &str,
    upload: impl std::io::Read + Send + 'static,
    filename: &str,
    format: Option<tocsin_enqueue::Format>,
    default_region: Option<String>,
    listed: usize,
) -> Result<(tocsin_enqueue::lists::ImportReport, Vec<Rejected>), ApiError> {
    use tocsin_enqueue::input::{Columns, SharedReader, Source};
    let contacts = tocsin_enqueue::Contacts::Text {
        source: Source::Stream { name: filename.to_owned(), reader: SharedReader::new(upload) },
        format,
        delimiter: None,
        columns: Columns {
            number: "number".into(),
            timezone: Some("timezone".into()),
            timezone_required: false,
        },
    };
    let collect = Collect { max: listed, kept: Mutex::new(Vec::new()) };
    let stop = CancellationToken::new();
    let report = tocsin_enqueue::lists::import(&state.pool, name, contacts, default_region, &collect, &stop)
        .await
        .map_err(|e| enqueue_error(e, name, "body"))?;
    Ok((report, collect.listed()))
}

/// The saved contact lists.
pub async fn saved_lists(state: &ApiState) -> Result<Vec<tocsin_enqueue::lists::ListInfo>, sqlx::Error> {
    tocsin_enqueue::lists::all(&state.pool).await
}

/// The API's answer to a failed enqueue; `field` names where the contacts came from.
fn enqueue_error(e: EnqueueError, name: &str, field: &str) -> ApiError {
    match e {
        // The body's own checks answer 400 before this; what remains depends
        // on the campaign as stored (e.g. `from` for a new one): 409, as before.
        EnqueueError::Invalid(errors) => {
            conflict(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
        EnqueueError::Refused(m) => conflict(m),
        EnqueueError::InputRejected(m) => ApiError::bad_request(format!("{field}: {m}")),
        EnqueueError::Unreachable { service, .. } => {
            tracing::error!(error = %e, "enqueue through the API failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{service} is unreachable; retry later"),
            )
        }
        EnqueueError::Interrupted | EnqueueError::Failed { .. } => {
            tracing::error!(error = %e, campaign = %name, "enqueue through the API failed");
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
    Ok(tocsin_enqueue::lists::find(pool, name).await?.is_some())
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

/// The campaign named `name`, for a control action: its identity and
/// status only, so a row whose settings do not parse can still be stopped.
pub async fn handle(pool: &PgPool, name: &str) -> Result<Option<Handle>, sqlx::Error> {
    campaign::handle(pool, name).await
}

/// Runs `action` on campaign `c` as `producer pause|resume|cancel` does.
pub async fn control(pool: &PgPool, c: &Handle, action: Action) -> Result<Controlled, ControlError> {
    let done = match action {
        Action::Pause => campaign::set_paused(pool, c, true).await,
        Action::Resume => campaign::set_paused(pool, c, false).await,
        Action::Cancel => campaign::cancel(pool, c).await,
    };
    match done {
        Ok(Control::Changed { cancelled_calls }) => Ok(Controlled { changed: true, cancelled_calls }),
        Ok(Control::Unchanged) => Ok(Controlled { changed: false, cancelled_calls: 0 }),
        Err(campaign::ControlError::Refused(m)) => Err(ControlError::Conflict(m)),
        Err(campaign::ControlError::Database(e)) => Err(ControlError::Failed(e.into())),
    }
}
