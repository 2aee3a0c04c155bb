//! The body of `POST /api/v1/campaigns`, and its check: one pass that
//! names every invalid field in one 400.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use tocsin_core::PhoneNumber;
use tocsin_core::campaign::limits;
use tocsin_core::confirm::{self, Key, Voicemail};
use tocsin_core::phone::PhoneNumberError;
use tocsin_core::provider::Provider;

use crate::api::body::{Errors, Field};
use crate::api::enqueue::{self, Contacts, Enqueue, Settings};

/// The body as sent: every field lenient (see `api::body`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateBody {
    name: Field<String>,
    message: Field<String>,
    /// A recording played instead of the message (which is then optional).
    audio_url: Field<String>,
    /// `failover:vonage,twilio` or `pool:…`: the accounts the calls go through.
    route: Field<String>,
    from: Field<String>,
    provider: Field<String>,
    language: Field<String>,
    voice: Field<String>,
    repeat: Field<i64>,
    max_attempts: Field<i64>,
    retry_delay_secs: Field<i64>,
    machine_detection: Field<bool>,
    start_at: Field<String>,
    expires_at: Field<String>,
    expires_in: Field<String>,
    window: Field<String>,
    timezone: Field<String>,
    default_region: Field<String>,
    confirm: Field<bool>,
    confirm_prompt: Field<String>,
    confirm_key: Field<String>,
    replay_key: Field<String>,
    opt_out_key: Field<String>,
    max_replays: Field<i64>,
    key_timeout_secs: Field<i64>,
    until_confirmed: Field<bool>,
    voicemail: Field<String>,
    voicemail_message: Field<String>,
    /// Check everything and say what would happen; write nothing.
    dry_run: Field<bool>,
    contacts: Field<Vec<Value>>,
    contact_list: Field<String>,
    /// Keys that are none of the above.
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// A checked create request.
pub struct CreateRequest {
    pub enqueue: Enqueue,
    /// How many contacts were given inline (`None`: a saved list).
    pub inline_count: Option<usize>,
}

impl CreateRequest {
    /// What the audit log keeps of a create: where the contacts came from
    /// and the settings asked for (no contact's number).
    pub fn audit_details(&self) -> Value {
        let s = &self.enqueue.settings;
        let contacts = match &self.enqueue.contacts {
            Contacts::Inline(c) => serde_json::json!({ "inline": c.len() }),
            Contacts::Saved(list) => serde_json::json!({ "list": list }),
        };
        serde_json::json!({
            "contacts": contacts,
            "provider": s.provider.map(|p| p.to_string()),
            "max_attempts": s.max_attempts,
            "confirm": s.confirm,
            "until_confirmed": s.until_confirmed,
            "voicemail": s.voicemail.map(|v| v.to_string()),
            "start_at": s.start_at,
            "dry_run": s.dry_run,
        })
    }

    /// The field naming where the contacts came from, for error messages.
    pub fn contacts_field(&self) -> &'static str {
        if self.inline_count.is_some() { "contacts" } else { "contact_list" }
    }
}

impl CreateBody {
    /// Checks every field; `providers` are those configured on this service.
    pub fn check(self, providers: &[Provider]) -> Result<CreateRequest, tocsin_core::http::ApiError> {
        let mut errors = Errors::default();
        for key in self.unknown.keys() {
            errors.add(key, "unknown field");
        }
        let name = self.name.required("name", "must be a string", &mut errors);
        if let Some(n) = &name
            && !enqueue::valid_name(n)
        {
            errors.add("name", "must be 1-200 letters, digits, '-', '_' or '.'");
        }
        let route = self
            .route
            .string("route", &mut errors)
            .and_then(|r| r.parse::<tocsin_core::route::Route>().map_err(|e| errors.add("route", &e)).ok());
        let audio_url = self.audio_url.string("audio_url", &mut errors);
        if let Some(u) = audio_url.as_deref().filter(|u| !matches!(u.trim(), "" | "none"))
            && let Err(e) = tocsin_core::campaign::check_audio_url(u)
        {
            errors.add("audio_url", &e.message);
        }
        let message = match &audio_url {
            // With a recording the message is its transcript: optional.
            Some(_) => self.message.string("message", &mut errors),
            None => self.message.required("message", "must be a string (or give an audio_url)", &mut errors),
        };
        if let Some(m) = message.as_deref().filter(|m| audio_url.is_none() || !m.trim().is_empty())
            && let Err(e) = enqueue::check_message(m)
        {
            errors.add("message", &e);
        }
        let from = self.from.string("from", &mut errors);
        if let Some(f) = &from
            && PhoneNumber::parse(f, None).is_err()
        {
            errors.add("from", "not a phone number in E.164 form (e.g. +14155550100)");
        }
        let provider = self.provider.string("provider", &mut errors).and_then(|p| {
            enqueue::parse_provider(&p, providers).map_err(|e| errors.add("provider", &e)).ok()
        });
        let language = self.language.string("language", &mut errors);
        let voice = self.voice.string("voice", &mut errors);
        // The ranges are the campaign type's.
        let repeat = self.repeat.int("repeat", limits::REPEAT, &mut errors);
        let max_attempts = self.max_attempts.int("max_attempts", limits::MAX_ATTEMPTS, &mut errors);
        let retry_delay =
            self.retry_delay_secs.int("retry_delay_secs", limits::RETRY_DELAY_SECS, &mut errors);
        let machine_detection =
            self.machine_detection.get("machine_detection", "must be true or false", &mut errors);
        let start_at = self
            .start_at
            .string("start_at", &mut errors)
            .and_then(|s| enqueue::parse_start_at(&s).map_err(|e| errors.add("start_at", &e)).ok());
        // The deadline: a time, or a duration from now; not both.
        let deadline_given = self.expires_at.is_given() && self.expires_in.is_given();
        let expires_at = self
            .expires_at
            .string("expires_at", &mut errors)
            .and_then(|s| enqueue::parse_expires_at(&s).map_err(|e| errors.add("expires_at", &e)).ok());
        let expires_in = self
            .expires_in
            .string("expires_in", &mut errors)
            .and_then(|s| enqueue::parse_expires_in(&s).map_err(|e| errors.add("expires_in", &e)).ok());
        if deadline_given {
            errors.add("expires_in", "give either expires_at or expires_in, not both");
        }
        let window = self
            .window
            .string("window", &mut errors)
            .and_then(|s| enqueue::parse_window(&s).map_err(|e| errors.add("window", &e)).ok());
        let timezone = self
            .timezone
            .string("timezone", &mut errors)
            .and_then(|s| enqueue::parse_timezone(&s).map_err(|e| errors.add("timezone", &e)).ok());
        let default_region = self.default_region.string("default_region", &mut errors);
        // Confirmation: the keys parse here, the rest is the campaign type's.
        let confirm = self.confirm.get("confirm", "must be true or false", &mut errors);
        let confirm_prompt = self.confirm_prompt.string("confirm_prompt", &mut errors);
        let confirm_key = self
            .confirm_key
            .string("confirm_key", &mut errors)
            .and_then(|k| k.parse::<Key>().map_err(|e| errors.add("confirm_key", &e)).ok());
        let replay_key = self
            .replay_key
            .string("replay_key", &mut errors)
            .and_then(|k| confirm::parse_optional_key(&k).map_err(|e| errors.add("replay_key", &e)).ok());
        let opt_out_key = self
            .opt_out_key
            .string("opt_out_key", &mut errors)
            .and_then(|k| confirm::parse_optional_key(&k).map_err(|e| errors.add("opt_out_key", &e)).ok());
        let max_replays = self.max_replays.int("max_replays", confirm::limits::MAX_REPLAYS, &mut errors);
        let key_timeout_secs =
            self.key_timeout_secs.int("key_timeout_secs", confirm::limits::KEY_TIMEOUT_SECS, &mut errors);
        let until_confirmed =
            self.until_confirmed.get("until_confirmed", "must be true or false", &mut errors);
        let voicemail = self
            .voicemail
            .string("voicemail", &mut errors)
            .and_then(|v| v.parse::<Voicemail>().map_err(|e| errors.add("voicemail", &e)).ok());
        let voicemail_message = self.voicemail_message.string("voicemail_message", &mut errors);
        let dry_run = self.dry_run.get("dry_run", "must be true or false", &mut errors).unwrap_or(false);
        if let Some(r) = &default_region
            && let Err(PhoneNumberError::UnknownRegion(_)) = PhoneNumber::parse("+14155552671", Some(r))
        {
            errors.add("default_region", "not an ISO 3166 region code (e.g. US, GB)");
        }

        let has_list = self.contact_list.is_given();
        let saved = self.contact_list.string("contact_list", &mut errors);
        if let Some(list) = &saved
            && !enqueue::valid_name(list)
        {
            errors.add("contact_list", "must be the name of a saved contact list (producer list import)");
        }
        // Each contact goes to the pipeline as it is: contacts[i] is its line i + 1.
        let mut inline = Vec::new();
        match self.contacts {
            c if has_list && c.is_present() => {
                errors.add("contacts", "give either contacts or contact_list, not both");
            }
            Field::Absent if has_list => {}
            Field::Valid(list) if !list.is_empty() => {
                for (i, c) in list.iter().enumerate() {
                    if !c.get("number").is_some_and(Value::is_string) {
                        errors.add(&format!("contacts[{i}]"), "must be an object with a string \"number\"");
                    }
                }
                inline = list;
            }
            Field::Valid(_) => errors.add("contacts", "must not be empty"),
            Field::Null | Field::Invalid => {
                errors.add("contacts", "must be an array of {\"number\": …} objects");
            }
            Field::Absent => {
                errors.add("contacts", "required (or contact_list, the name of a saved contact list)");
            }
        }
        errors.finish("fields", || {
            let settings = Settings {
                from,
                provider,
                language,
                voice,
                repeat,
                start_at,
                expires_at: expires_at.or(expires_in),
                window,
                timezone,
                max_attempts,
                retry_delay_secs: retry_delay,
                machine_detection,
                default_region,
                confirm,
                confirm_prompt,
                confirm_key,
                replay_key,
                opt_out_key,
                max_replays,
                key_timeout_secs,
                until_confirmed,
                voicemail,
                voicemail_message,
                audio_url,
                route,
                dry_run,
            };
            let (contacts, inline_count) = match saved {
                Some(list) => (Contacts::Saved(list), None),
                None => {
                    let count = inline.len();
                    (Contacts::Inline(inline), Some(count))
                }
            };
            CreateRequest {
                enqueue: Enqueue {
                    campaign: name.unwrap_or_default(),
                    message: message.unwrap_or_default(),
                    settings,
                    contacts,
                },
                inline_count,
            }
        })
    }
}
