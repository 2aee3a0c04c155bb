//! Twilio Programmable Voice: the create-call client (HTTP Basic auth, form
//! body), call listing for reconciliation and one call's fetch, the answer
//! document (TwiML), the status-callback payload and the
//! `X-Twilio-Signature` scheme. Request and response structs are private:
//! the rest of Tocsin sees `CallRequest`, `PlacedCall`, `PlaceCallError`,
//! `RemoteStatus` and `TwilioStatus`.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::campaign::Content;
use crate::config::TwilioCredentials;
use crate::provider::{
    BoxFuture, CallRequest, CallWindow, ListCallsError, MachineDetection, PlaceCallError, PlacedCall,
    Provider, RemoteCall, RemoteStatus, VoiceProvider, api_url, rate_limit_wait,
};
use crate::{CallState, PhoneNumber};

/// Twilio signs no timestamp header. Status callbacks carry a signed
/// `Timestamp` parameter (the event's time); one older than this is refused
/// as a replay. Twilio sends callbacks within seconds of the event.
pub const MAX_CALLBACK_AGE: Duration = Duration::from_secs(10 * 60);

/// The progress events we ask Twilio to report (it sends only `completed`
/// when none are named).
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

#[derive(Deserialize)]
struct CallResource {
    sid: String,
}

#[derive(Deserialize)]
struct ListedCall {
    sid: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    to: Option<String>,
    /// RFC 2822, e.g. `Tue, 31 Aug 2010 20:36:28 +0000`.
    #[serde(default)]
    date_created: Option<String>,
    #[serde(default)]
    start_time: Option<String>,
}

impl ListedCall {
    /// When Twilio took the request (`date_created`; `start_time` if that is missing).
    fn created_at(&self) -> Option<DateTime<Utc>> {
        [&self.date_created, &self.start_time]
            .into_iter()
            .flatten()
            .find_map(|t| DateTime::parse_from_rfc2822(t).ok())
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The Call resource as fetched (`GET …/Calls/{Sid}.json`, twilio-oai's
/// `FetchCall`): the fields a status lookup reads.
#[derive(Deserialize)]
struct FetchedCall {
    #[serde(default)]
    status: String,
    /// "The length of the call in seconds. This value is empty for busy,
    /// failed, unanswered, or ongoing calls." (a string, or null)
    #[serde(default)]
    duration: Option<String>,
}

#[derive(Deserialize)]
struct CallPage {
    #[serde(default)]
    calls: Vec<ListedCall>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// Twilio's error body: `{"code":20003,"message":"…","more_info":"…","status":401}`.
#[derive(Deserialize, Default)]
struct TwilioError {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: String,
}

/// Places calls through Twilio's 2010-04-01 REST API.
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    account_sid: String,
    auth_token: SecretString,
}

impl Client {
    pub fn new(http: reqwest::Client, credentials: &TwilioCredentials) -> Self {
        Self {
            http,
            api_url: credentials.api_url.clone(),
            account_sid: credentials.account_sid.clone(),
            auth_token: credentials.auth_token.clone(),
        }
    }

    fn calls_url(&self) -> String {
        format!("{}/2010-04-01/Accounts/{}/Calls.json", self.api_url, self.account_sid)
    }

    #[tracing::instrument(
        name = "twilio.place_call",
        skip_all,
        fields(call_id = %request.call_id, attempt = request.attempt),
        err(Display)
    )]
    async fn create(&self, request: &CallRequest) -> Result<PlacedCall, PlaceCallError> {
        let mut form: Vec<(&str, String)> = vec![
            ("To", request.to.as_str().to_owned()),
            ("From", request.from.as_str().to_owned()),
            ("Url", request.webhook_url("/twilio/twiml")),
            ("Method", "POST".into()),
            ("StatusCallback", request.webhook_url("/twilio/status")),
            ("StatusCallbackMethod", "POST".into()),
            ("Timeout", request.ringing_timeout_secs.clamp(1, 600).to_string()),
            // Default (and most) 14,400 s.
            ("TimeLimit", request.time_limit_secs.clamp(1, 14_400).to_string()),
        ];
        form.extend(STATUS_CALLBACK_EVENTS.iter().map(|e| ("StatusCallbackEvent", (*e).to_owned())));
        match request.machine_detection {
            MachineDetection::Off => {}
            MachineDetection::Detect | MachineDetection::HangUp => {
                form.push(("MachineDetection", "Enable".into()));
            }
            // The TwiML is fetched once the greeting has ended.
            MachineDetection::Beep => form.push(("MachineDetection", "DetectMessageEnd".into())),
        }
        let response = self
            .http
            .post(self.calls_url())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(|e| PlaceCallError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            let call: CallResource = response
                .json()
                .await
                .map_err(|e| PlaceCallError::Ambiguous(format!("unreadable 2xx answer: {e}")))?;
            return Ok(PlacedCall { provider_call_id: call.sid });
        }
        let wait = rate_limit_wait(response.headers());
        let error: TwilioError = response.json().await.unwrap_or_default();
        Err(classify(status.as_u16(), wait, error))
    }

    /// Calls to `to` from the window's first day on. The spec takes a date
    /// (`YYYY-MM-DD`, UTC) for `StartTime>`, so a day's earlier calls are
    /// listed too; each comes with its own `date_created` for the caller to
    /// match against the window.
    async fn list(&self, to: &PhoneNumber, window: CallWindow) -> Result<Vec<RemoteCall>, ListCallsError> {
        let day = window.from.format("%Y-%m-%d").to_string();
        let mut request = self.http.get(self.calls_url()).query(&[
            ("To", to.as_str()),
            ("StartTime>", day.as_str()),
            ("PageSize", "100"),
        ]);
        let mut found = Vec::new();
        // Follow `next_page_uri` (relative to the API's host) to the end.
        for _ in 0..100 {
            let response = request
                .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
                .send()
                .await
                .map_err(|e| ListCallsError(e.to_string()))?;
            if !response.status().is_success() {
                return Err(ListCallsError(format!("status {}", response.status())));
            }
            let page: CallPage = response.json().await.map_err(|e| ListCallsError(e.to_string()))?;
            found.extend(
                page.calls.into_iter().filter(|c| c.to.as_deref().is_none_or(|t| t == to.as_str())).map(
                    |c| RemoteCall { created_at: c.created_at(), provider_call_id: c.sid, status: c.status },
                ),
            );
            match page.next_page_uri.filter(|u| !u.is_empty()) {
                Some(next) => request = self.http.get(format!("{}{next}", self.api_url)),
                None => return Ok(found),
            }
        }
        Err(ListCallsError("more than 100 pages of calls; giving up".into()))
    }

    /// `GET …/Calls/{Sid}.json`: the call's `status` (the spec's
    /// `call_enum_status`) through the callbacks' table (`status_state`).
    async fn status(&self, sid: &str) -> Result<RemoteStatus, ListCallsError> {
        let resource = format!("{sid}.json");
        let url = api_url(&self.api_url, &["2010-04-01", "Accounts", &self.account_sid, "Calls", &resource])
            .map_err(ListCallsError)?;
        let response = self
            .http
            .get(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .send()
            .await
            .map_err(|e| ListCallsError(format!("Twilio could not be asked about call {sid}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(RemoteStatus::Gone);
        }
        if !status.is_success() {
            let error: TwilioError = response.json().await.unwrap_or_default();
            return Err(ListCallsError(format!(
                "Twilio answered {status} {} about call {sid}: {}",
                error.code(),
                error.message
            )));
        }
        let call: FetchedCall = response
            .json()
            .await
            .map_err(|e| ListCallsError(format!("unreadable Twilio answer about call {sid}: {e}")))?;
        let duration = call.duration.as_deref().and_then(|d| d.trim().parse().ok());
        RemoteStatus::of_status(&call.status, status_state(&call.status), duration).ok_or_else(|| {
            ListCallsError(format!(
                "Twilio reports call {sid} as {:?}, a status Tocsin does not know",
                call.status
            ))
        })
    }
}

impl VoiceProvider for Client {
    fn provider(&self) -> Provider {
        Provider::Twilio
    }

    fn account(&self) -> String {
        crate::config::account_key(Provider::Twilio, &self.account_sid)
    }

    fn place_call<'a>(
        &'a self,
        request: &'a CallRequest,
    ) -> BoxFuture<'a, Result<PlacedCall, PlaceCallError>> {
        Box::pin(self.create(request))
    }

    fn list_calls<'a>(
        &'a self,
        to: &'a PhoneNumber,
        window: CallWindow,
    ) -> BoxFuture<'a, Result<Vec<RemoteCall>, ListCallsError>> {
        Box::pin(self.list(to, window))
    }

    fn call_status<'a>(
        &'a self,
        provider_call_id: &'a str,
    ) -> BoxFuture<'a, Result<RemoteStatus, ListCallsError>> {
        Box::pin(self.status(provider_call_id))
    }
}

impl TwilioError {
    /// The error code, a number in Twilio's answers (a string tolerated).
    fn code(&self) -> String {
        match &self.code {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => String::new(),
        }
    }
}

fn classify(status: u16, wait: Option<Duration>, error: TwilioError) -> PlaceCallError {
    let code = error.code();
    match status {
        // 20429: too many concurrent requests; never processed, safe to retry.
        429 => PlaceCallError::RateLimited { retry_after: wait },
        500..=599 => PlaceCallError::Transient(format!("{status} {code} {}", error.message)),
        _ => PlaceCallError::Permanent { status, code, detail: error.message },
    }
}

/// What Twilio can say (`speech::check` asks): `<Say>` facts from Twilio's
/// TwiML `<Say>` reference and its error 13521 ("`<Say>` element character
/// limits exceeded").
pub mod speech {
    use crate::speech::{MessageLimit, Rules, Unit};

    /// Languages of the standard voices `man` and `woman` (Twilio's default).
    pub const BASIC_LANGUAGES: &[&str] = &["en-US", "en-GB", "es-ES", "fr-FR", "de-DE"];
    /// Languages of the voice `alice`.
    pub const ALICE_LANGUAGES: &[&str] = &[
        "da-DK", "de-DE", "en-AU", "en-CA", "en-GB", "en-IN", "en-US", "ca-ES", "es-ES", "es-MX", "fi-FI",
        "fr-CA", "fr-FR", "it-IT", "ja-JP", "ko-KR", "nb-NO", "nl-NL", "pl-PL", "pt-BR", "pt-PT", "ru-RU",
        "sv-SE", "zh-CN", "zh-HK", "zh-TW",
    ];

    const fn limit(max: usize, source: &'static str) -> MessageLimit {
        MessageLimit { max, unit: Unit::Bytes, source }
    }

    /// The voice's rules: basic voices 4096 bytes, Amazon Polly 3000,
    /// Google 5000 (error 13521); Polly and Google voices each speak their
    /// own language, so any well-formed code goes with them.
    pub fn rules(voice: Option<&str>) -> Result<Rules, String> {
        match voice.map(str::trim) {
            None | Some("man" | "woman") => Ok(Rules {
                limit: limit(4096, "Twilio <Say>, standard voices, error 13521"),
                languages: Some(BASIC_LANGUAGES),
            }),
            Some("alice") => Ok(Rules {
                limit: limit(4096, "Twilio <Say>, standard voices, error 13521"),
                languages: Some(ALICE_LANGUAGES),
            }),
            Some(v) if named(v, "Polly.") => Ok(Rules {
                limit: limit(3000, "Twilio <Say>, Amazon Polly voices, error 13521"),
                languages: None,
            }),
            Some(v) if named(v, "Google.") => {
                Ok(Rules { limit: limit(5000, "Twilio <Say>, Google voices, error 13521"), languages: None })
            }
            Some(v) => Err(format!(
                "Twilio has no voice {v:?}: use man, woman, alice, Polly.<Name> (e.g. Polly.Joanna-Neural) \
                 or Google.<name> (e.g. Google.en-US-Standard-C)"
            )),
        }
    }

    fn named(voice: &str, prefix: &str) -> bool {
        voice.strip_prefix(prefix).is_some_and(|name| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    }
}

/// The verb playing a campaign's message `times` times: `<Say>` for words,
/// `<Play>` (the URL as its text, `fixtures/twilio/play.json`) for a
/// recording. Everything user-supplied is XML-escaped.
fn message_verb(content: &Content, language: &str, times: u32, voice: Option<&str>) -> String {
    match content {
        Content::Text(text) => {
            let voice = voice.map(|v| format!(" voice=\"{}\"", xml_escape(v))).unwrap_or_default();
            format!(
                "<Say{voice} language=\"{}\" loop=\"{times}\">{}</Say>",
                xml_escape(language),
                xml_escape(text)
            )
        }
        Content::Audio(url) => format!("<Play loop=\"{times}\">{}</Play>", xml_escape(url)),
    }
}

/// The answer TwiML playing `content` `repeat` times (0 = until hang-up).
pub fn twiml(content: &Content, language: &str, repeat: u32, voice: Option<&str>) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{}</Response>",
        message_verb(content, language, repeat, voice)
    )
}

/// One step of the confirmation dialogue as TwiML. `Ask`: a `<Gather>` of
/// one key (`finishOnKey=""`, so `#` is a key like the others) with the
/// `<Say>`s nested — the message `repeat` times when the step asks for it,
/// then the prompt — posting to `action_url` even when no key came
/// (`actionOnEmptyResult`), whose answer is the next step's TwiML.
/// `Finish`: the closing words, then `<Hangup/>`.
pub fn dialogue_twiml(
    step: &crate::confirm::Step,
    confirmation: &crate::confirm::Confirmation,
    message: &Content,
    language: &str,
    repeat: u32,
    voice: Option<&str>,
    action_url: &str,
) -> String {
    use crate::confirm::Step;
    let say = |text: &str, times: u32| message_verb(&Content::Text(text.to_owned()), language, times, voice);
    let body = match step {
        Step::Ask { message: with_message, prompt, .. } => {
            let first =
                if *with_message { message_verb(message, language, repeat, voice) } else { String::new() };
            format!(
                "<Gather input=\"dtmf\" numDigits=\"1\" finishOnKey=\"\" timeout=\"{}\" action=\"{}\" \
                 method=\"POST\" actionOnEmptyResult=\"true\">{first}{}</Gather>",
                confirmation.key_timeout_secs,
                xml_escape(action_url),
                say(prompt, 1)
            )
        }
        Step::Finish { text } => format!("{}<Hangup/>", say(text, 1)),
    };
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{body}</Response>")
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses an `application/x-www-form-urlencoded` body into its pairs, in order.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
}

/// `X-Twilio-Signature`: base64 of HMAC-SHA1 (key: the auth token) over
/// the full URL followed by every POST parameter, sorted by name, as name
/// then value.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    BASE64.encode(hmac::sign(&key, &signed_data(url, params)).as_ref())
}

fn signed_data(url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut data = url.as_bytes().to_vec();
    for (name, value) in sorted {
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(value.as_bytes());
    }
    data
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Twilio-Signature header")]
    Missing,
    #[error("signature does not match the URL and parameters")]
    Invalid,
    #[error("status callback Timestamp is too old (a replay?)")]
    Stale,
}

/// The forms of `url` Twilio may have signed: as given, without its port,
/// and with the scheme's default port. Twilio drops an HTTPS URL's port
/// before signing, and its official validator accepts the URL with and
/// without the port (twilio-python `twilio/request_validator.py`:
/// `remove_port`, `add_port`), so a public URL with an explicit port, or a
/// proxy that adds or drops one, still verifies. Each also with its single
/// quotes escaped (`%27`) and unescaped, as twilio-node's validator tries
/// (`spec/unit/webhooks/webhooks.spec.js`, the quote cases).
fn signed_url_forms(url: &str) -> Vec<String> {
    let mut forms = port_forms(url);
    let quoted: Vec<String> = forms
        .iter()
        .flat_map(|f| [f.replace('\'', "%27"), f.replace("%27", "'")])
        .filter(|f| !forms.contains(f))
        .collect();
    forms.extend(quoted);
    forms.dedup();
    forms
}

fn port_forms(url: &str) -> Vec<String> {
    let mut forms = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else { return forms };
    let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let (userinfo, host_port) = authority.split_at(host_start);
    // A colon after an IPv6 literal's closing bracket starts the port.
    match host_port.rfind(':').filter(|&i| !host_port[i..].contains(']')) {
        Some(i) => forms.push(format!("{scheme}://{userinfo}{}{tail}", &host_port[..i])),
        None => {
            let port = match scheme {
                "https" => 443,
                "http" => 80,
                _ => return forms,
            };
            forms.push(format!("{scheme}://{userinfo}{host_port}:{port}{tail}"));
        }
    }
    forms
}

/// Verifies a request Twilio signed: `url` is the public URL it was sent to
/// (with its query), `params` the form body. A signed `Timestamp` parameter
/// (status callbacks) must be younger than `MAX_CALLBACK_AGE`.
pub fn verify_signature(
    header: Option<&str>,
    auth_token: &SecretString,
    url: &str,
    params: &[(String, String)],
) -> Result<(), SignatureError> {
    let given =
        BASE64.decode(header.ok_or(SignatureError::Missing)?.trim()).map_err(|_| SignatureError::Invalid)?;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.expose_secret().as_bytes());
    let signed = |u: &str| hmac::verify(&key, &signed_data(u, params), &given).is_ok();
    if !signed_url_forms(url).iter().any(|u| signed(u)) {
        return Err(SignatureError::Invalid);
    }
    let timestamp = params.iter().find(|(k, _)| k == "Timestamp").map(|(_, v)| v.as_str());
    if let Some(at) = timestamp.and_then(|t| DateTime::parse_from_rfc2822(t).ok()) {
        let age = Utc::now().signed_duration_since(at).num_seconds();
        if age > MAX_CALLBACK_AGE.as_secs() as i64 {
            return Err(SignatureError::Stale);
        }
    }
    Ok(())
}

/// A status callback, from its form parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioStatus {
    pub call_sid: String,
    pub call_status: String,
    pub sequence_number: Option<u32>,
    pub timestamp: Option<String>,
    pub call_duration: Option<i32>,
    pub answered_by: Option<String>,
    pub error_code: Option<String>,
    pub sip_response_code: Option<String>,
}

impl TwilioStatus {
    pub fn from_params(params: &[(String, String)]) -> Result<Self, String> {
        let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let call_sid = get("CallSid").ok_or("missing CallSid")?;
        let call_status = get("CallStatus").ok_or("missing CallStatus")?;
        let sequence_number = match get("SequenceNumber") {
            Some(n) => Some(n.trim().parse().map_err(|_| format!("bad SequenceNumber {n:?}"))?),
            None => None,
        };
        Ok(Self {
            call_sid,
            call_status,
            sequence_number,
            timestamp: get("Timestamp"),
            call_duration: get("CallDuration").and_then(|d| d.trim().parse().ok()),
            answered_by: get("AnsweredBy"),
            error_code: get("ErrorCode"),
            sip_response_code: get("SipResponseCode"),
        })
    }

    /// The call state this callback moves the call to.
    pub fn state(&self) -> Option<CallState> {
        status_state(&self.call_status)
    }

    /// Identity for deduplication: `CallSid` + `SequenceNumber` (which
    /// orders one call's callbacks), or the status when there is none.
    pub fn dedupe_key(&self) -> String {
        match self.sequence_number {
            Some(n) => format!("twilio:{}:{n}", self.call_sid),
            None => format!("twilio:{}:{}", self.call_sid, self.call_status),
        }
    }

    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        let t = self.timestamp.as_deref()?;
        DateTime::parse_from_rfc2822(t).ok().map(|t| t.with_timezone(&Utc))
    }

    /// `human` or `machine` from `AnsweredBy` (`machine_start`,
    /// `machine_end_beep`, `fax`, … count as machine; `unknown` as neither).
    pub fn answered_by(&self) -> Option<String> {
        let by = self.answered_by.as_deref()?;
        if by == "human" {
            Some("human".into())
        } else if by.starts_with("machine") || by == "fax" {
            Some("machine".into())
        } else {
            None
        }
    }

    /// What went wrong, for failed calls.
    pub fn detail(&self) -> Option<String> {
        match (&self.error_code, &self.sip_response_code) {
            (Some(code), _) => Some(format!("twilio error {code}")),
            (None, Some(sip)) if self.state() == Some(CallState::Failed) => Some(format!("SIP {sip}")),
            _ => None,
        }
    }
}

/// The call state a Twilio status word stands for: the one table of
/// Twilio's words, read for the status callbacks (`CallStatus`) and for a
/// call fetched (the Call resource's `status`, which has no `initiated`).
fn status_state(status: &str) -> Option<CallState> {
    Some(match status {
        "queued" | "initiated" => CallState::Placed,
        "ringing" => CallState::Ringing,
        "in-progress" => CallState::Answered,
        "completed" => CallState::Completed,
        "busy" => CallState::Busy,
        "no-answer" => CallState::NoAnswer,
        "failed" => CallState::Failed,
        "canceled" => CallState::Cancelled,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn twilio_public_signature_test_vector() {
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(signature("12345", url, &p), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        // Order of the parameters as sent does not matter.
        let mut reversed = p.clone();
        reversed.reverse();
        let token = SecretString::from("12345");
        assert_eq!(verify_signature(Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="), &token, url, &reversed), Ok(()));
    }

    /// Twilio's own vectors: twilio/twilio-python
    /// `tests/unit/test_request_validator.py` (token "12345"; the tests
    /// `test_validation`, `test_validation_removes_port_on_https`,
    /// `_removes_port_on_http`, `_adds_port_on_https`, `_adds_port_on_http`).
    #[test]
    fn the_url_verifies_with_and_without_its_port_as_twilios_validator_does() {
        let token = SecretString::from("12345");
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let uri = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let ok = |url: &str, sig: &str| verify_signature(Some(sig), &token, url, &params).is_ok();
        assert_eq!(signature("12345", uri, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(ok(uri, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(ok("https://mycompany.com:1234/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(ok("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="));
        assert!(ok(uri, "kvajT1Ptam85bY51eRf/AJRuM3w="));
        assert!(ok("http://mycompany.com/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="));
        assert!(!ok(uri, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="));
        assert_eq!(
            signed_url_forms("https://[::1]:8443/t?x=1"),
            ["https://[::1]:8443/t?x=1", "https://[::1]/t?x=1"]
        );
        assert_eq!(signed_url_forms("http://[::1]/t"), ["http://[::1]/t", "http://[::1]:80/t"]);
    }

    #[test]
    fn signatures_round_trip_and_reject_tampering_and_stale_callbacks() {
        let token = SecretString::from("tok");
        let url = "https://hooks.example.com/twilio/status?call_id=abc";
        let now = Utc::now().to_rfc2822();
        let p = params(&[("CallSid", "CA1"), ("CallStatus", "completed"), ("Timestamp", &now)]);
        let sig = signature("tok", url, &p);
        assert_eq!(verify_signature(Some(&sig), &token, url, &p), Ok(()));
        assert_eq!(verify_signature(None, &token, url, &p), Err(SignatureError::Missing));
        let tampered = params(&[("CallSid", "CA1"), ("CallStatus", "busy"), ("Timestamp", &now)]);
        assert_eq!(verify_signature(Some(&sig), &token, url, &tampered), Err(SignatureError::Invalid));
        let other_url = "https://hooks.example.com/twilio/status?call_id=abd";
        assert_eq!(verify_signature(Some(&sig), &token, other_url, &p), Err(SignatureError::Invalid));
        assert_eq!(
            verify_signature(Some(&sig), &SecretString::from("other"), url, &p),
            Err(SignatureError::Invalid)
        );
        assert_eq!(verify_signature(Some("!!not base64"), &token, url, &p), Err(SignatureError::Invalid));
        let old = (Utc::now() - chrono::Duration::hours(1)).to_rfc2822();
        let stale = params(&[("CallSid", "CA1"), ("CallStatus", "completed"), ("Timestamp", &old)]);
        let sig = signature("tok", url, &stale);
        assert_eq!(verify_signature(Some(&sig), &token, url, &stale), Err(SignatureError::Stale));
    }

    #[test]
    fn twiml_escapes_user_text() {
        let doc = twiml(&Content::Text("Rising <fast> & \"now\"".into()), "en-US", 2, Some("Polly.Joanna"));
        assert!(doc.contains(
            "<Say voice=\"Polly.Joanna\" language=\"en-US\" loop=\"2\">Rising &lt;fast&gt; &amp; &quot;now&quot;</Say>"
        ));
        assert!(doc.starts_with("<?xml") && doc.ends_with("</Response>"));
    }

    #[test]
    fn callbacks_map_to_states_and_dedupe_by_sequence() {
        let p = params(&[
            ("CallSid", "CA9"),
            ("CallStatus", "completed"),
            ("SequenceNumber", "3"),
            ("CallDuration", "12"),
            ("AnsweredBy", "machine_start"),
            ("Timestamp", "Fri, 18 Oct 2019 17:00:00 +0000"),
        ]);
        let s = TwilioStatus::from_params(&p).unwrap();
        assert_eq!(s.state(), Some(CallState::Completed));
        assert_eq!(s.dedupe_key(), "twilio:CA9:3");
        assert_eq!(s.call_duration, Some(12));
        assert_eq!(s.answered_by().as_deref(), Some("machine"));
        assert_eq!(s.occurred_at().unwrap().to_rfc3339(), "2019-10-18T17:00:00+00:00");
        for (status, state) in [
            ("initiated", CallState::Placed),
            ("ringing", CallState::Ringing),
            ("in-progress", CallState::Answered),
            ("busy", CallState::Busy),
            ("no-answer", CallState::NoAnswer),
            ("failed", CallState::Failed),
            ("canceled", CallState::Cancelled),
        ] {
            let s =
                TwilioStatus::from_params(&params(&[("CallSid", "CA1"), ("CallStatus", status)])).unwrap();
            assert_eq!(s.state(), Some(state), "{status}");
        }
        assert!(TwilioStatus::from_params(&params(&[("CallStatus", "ringing")])).is_err());
        assert!(
            TwilioStatus::from_params(&params(&[
                ("CallSid", "C"),
                ("CallStatus", "x"),
                ("SequenceNumber", "a")
            ]))
            .is_err()
        );
    }

    #[test]
    fn errors_classify_into_decisions() {
        let e = |code: i64, message: &str| TwilioError {
            code: Some(serde_json::json!(code)),
            message: message.into(),
        };
        assert_eq!(
            classify(429, Some(Duration::from_secs(2)), e(20429, "Too Many Requests")),
            PlaceCallError::RateLimited { retry_after: Some(Duration::from_secs(2)) }
        );
        assert!(matches!(classify(503, None, e(20500, "x")), PlaceCallError::Transient(_)));
        assert_eq!(
            classify(400, None, e(21211, "Invalid 'To' Phone Number")),
            PlaceCallError::Permanent {
                status: 400,
                code: "21211".into(),
                detail: "Invalid 'To' Phone Number".into()
            }
        );
    }
}
