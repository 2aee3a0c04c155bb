//! Vonage Voice API: the create-call client (RS256 application JWT), call
//! listing and one call's lookup, the answer document (NCCO), the event
//! webhook payload and its HS256 signature. Request and response structs are
//! private: the rest of Tocsin sees `CallRequest`, `PlacedCall`,
//! `PlaceCallError`, `RemoteStatus`, `CallDetail` and `VonageEvent`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::campaign::Content;
use crate::config::VonageCredentials;
use crate::provider::{
    BoxFuture, CallRequest, CallWindow, ListCallsError, MachineDetection, PlaceCallError, PlacedCall,
    Provider, RemoteCall, RemoteStatus, VoiceProvider, retry_after,
};
use crate::{CallState, PhoneNumber};

/// Lifetime of the application JWTs we sign; a token is reused until it is
/// within `JWT_REFRESH_MARGIN` of expiry.
const JWT_LIFETIME: Duration = Duration::from_secs(15 * 60);
const JWT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How far a webhook's `iat` may be from our clock.
pub const WEBHOOK_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Claims of the application JWT that authorises API requests.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppClaims {
    pub application_id: String,
    pub iat: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Signs application JWTs with the RSA private key, caching one token.
pub struct JwtSigner {
    application_id: String,
    key: EncodingKey,
    cached: Mutex<Option<(String, u64)>>,
}

impl JwtSigner {
    pub fn new(application_id: String, private_key_pem: &SecretString) -> anyhow::Result<Self> {
        let key = EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "TOCSIN_VONAGE_PRIVATE_KEY_PATH does not hold an RSA private key in PEM form: {e}"
            )
        })?;
        let signer = Self { application_id, key, cached: Mutex::new(None) };
        // A key that parses may still not sign (the application's *public*
        // key given by mistake): sign one token now, so the binary stops at
        // start naming the variable instead of failing every call later.
        signer.token().map_err(|e| {
            anyhow::anyhow!(
                "TOCSIN_VONAGE_PRIVATE_KEY_PATH does not hold a key that can sign (is it the public key?): {e}"
            )
        })?;
        Ok(signer)
    }

    /// A valid token: the cached one, or a fresh one when it nears expiry.
    pub fn token(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, exp)) = cached.as_ref()
            && now + JWT_REFRESH_MARGIN.as_secs() < *exp
        {
            return Ok(token.clone());
        }
        let exp = now + JWT_LIFETIME.as_secs();
        let claims = AppClaims {
            application_id: self.application_id.clone(),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            exp: Some(exp),
            nbf: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)?;
        *cached = Some((token.clone(), exp));
        Ok(token)
    }
}

/// Verifies an application JWT against the application's public key (what
/// the Vonage API does, and so what the simulator does).
pub fn verify_app_jwt(token: &str, public_key_pem: &[u8]) -> Result<AppClaims, String> {
    let key = DecodingKey::from_rsa_pem(public_key_pem).map_err(|e| format!("bad public key: {e}"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    let data = jsonwebtoken::decode::<AppClaims>(token, &key, &validation).map_err(|e| e.to_string())?;
    let claims = data.claims;
    let now = unix_now();
    if claims.exp.is_none() && claims.iat + JWT_LIFETIME.as_secs() < now {
        return Err("token without exp is older than 15 minutes".into());
    }
    if claims.exp.is_some_and(|exp| exp > claims.iat + 24 * 3600) {
        return Err("token lifetime exceeds 24 hours".into());
    }
    Ok(claims)
}

#[derive(Serialize)]
struct Endpoint<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    number: &'a str,
}

#[derive(Serialize)]
struct CreateCall<'a> {
    to: [Endpoint<'a>; 1],
    from: Endpoint<'a>,
    answer_url: [&'a str; 1],
    answer_method: &'static str,
    event_url: [&'a str; 1],
    event_method: &'static str,
    ringing_timer: u32,
    length_timer: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_detection: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advanced_machine_detection: Option<AdvancedMachineDetection>,
}

/// Vonage's advanced (beep-detecting) machine detection: the NCCO starts
/// once the greeting has ended, and the `machine` event says `beep_start`
/// (or `beep_timeout`).
#[derive(Serialize)]
struct AdvancedMachineDetection {
    behavior: &'static str,
    mode: &'static str,
    beep_timeout: u32,
}

/// An endpoint in Vonage's call listings: `{"type":"phone","number":"…"}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ListedEndpoint {
    #[serde(default)]
    pub number: String,
}

#[derive(Deserialize)]
struct ListedCall {
    uuid: String,
    #[serde(default)]
    status: String,
    to: Option<ListedEndpoint>,
}

#[derive(Deserialize, Default)]
struct ListedCalls {
    #[serde(default)]
    calls: Vec<ListedCall>,
}

#[derive(Deserialize)]
struct ListCallsResponse {
    #[serde(default)]
    count: u64,
    #[serde(default, rename = "_embedded")]
    embedded: ListedCalls,
}

#[derive(Deserialize)]
struct CreateCallResponse {
    uuid: String,
}

/// `application/problem+json` error body.
#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

/// Places calls through the Vonage Voice API.
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    application_id: String,
    signer: JwtSigner,
}

impl Client {
    pub fn new(http: reqwest::Client, credentials: &VonageCredentials) -> anyhow::Result<Self> {
        Ok(Self {
            http,
            api_url: credentials.api_url.clone(),
            application_id: credentials.application_id.clone(),
            signer: JwtSigner::new(credentials.application_id.clone(), &credentials.private_key_pem)?,
        })
    }

    #[tracing::instrument(
        name = "vonage.place_call",
        skip_all,
        fields(call_id = %request.call_id, attempt = request.attempt),
        err(Display)
    )]
    async fn create(&self, request: &CallRequest) -> Result<PlacedCall, PlaceCallError> {
        let token = self.signer.token().map_err(|e| PlaceCallError::Permanent {
            status: 0,
            code: "jwt".into(),
            detail: e.to_string(),
        })?;
        let answer_url = request.webhook_url("/vonage/answer");
        let event_url = request.webhook_url("/vonage/events");
        let body = CreateCall {
            to: [Endpoint { kind: "phone", number: request.to.digits() }],
            from: Endpoint { kind: "phone", number: request.from.digits() },
            answer_url: [&answer_url],
            answer_method: "GET",
            event_url: [&event_url],
            event_method: "POST",
            ringing_timer: request.ringing_timeout_secs.clamp(1, 120),
            // The spec's range: 1-7200 s.
            length_timer: request.time_limit_secs.clamp(1, 7200),
            machine_detection: match request.machine_detection {
                MachineDetection::Detect => Some("continue"),
                MachineDetection::HangUp => Some("hangup"),
                MachineDetection::Off | MachineDetection::Beep => None,
            },
            advanced_machine_detection: (request.machine_detection == MachineDetection::Beep).then_some(
                AdvancedMachineDetection { behavior: "continue", mode: "detect_beep", beep_timeout: 45 },
            ),
        };
        let response = self
            .http
            .post(format!("{}/v1/calls", self.api_url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| PlaceCallError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            let created: CreateCallResponse = response
                .json()
                .await
                .map_err(|e| PlaceCallError::Ambiguous(format!("unreadable 2xx answer: {e}")))?;
            return Ok(PlacedCall { provider_call_id: created.uuid });
        }
        let retry = retry_after(response.headers());
        let problem: Problem = response.json().await.unwrap_or_default();
        Err(classify(status.as_u16(), retry, problem))
    }
}

/// A call as Vonage reports it (`GET /v1/calls/{uuid}`, the spec's
/// `GetCallResponse`): what an unsigned event is checked against.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct CallDetail {
    pub uuid: String,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub status: Option<String>,
    #[serde(default)]
    pub to: Option<ListedEndpoint>,
    #[serde(default)]
    pub duration: Option<serde_json::Value>,
    #[serde(default)]
    pub price: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub start_time: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub end_time: Option<String>,
}

/// Why a call could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum FetchCallError {
    /// Worth asking again later (5xx, 429, transport, our JWT).
    #[error("Vonage could not be asked: {0}")]
    Unavailable(String),
    /// Vonage refused the question for good (4xx other than 404 and 429).
    #[error("Vonage refused the lookup: {0}")]
    Refused(String),
}

impl CallDetail {
    /// What this answer says of the call: ended in the state its `status`
    /// maps to (the events' table, `status_state`), or still going. The
    /// detector's verdicts (`machine`, in Vonage's java SDK `CallStatus`;
    /// `human`) have no state of their own and come while the answered call
    /// goes on. Any other word is an error, never a guess.
    fn remote_status(&self) -> Result<RemoteStatus, ListCallsError> {
        let status = self.status.as_deref().unwrap_or_default();
        let duration = self.duration.as_ref().and_then(number).map(|d| d as i32);
        match RemoteStatus::of_status(status, status_state(status), duration) {
            Some(remote) => Ok(remote),
            None if matches!(status, "machine" | "human") => Ok(RemoteStatus::Live),
            None => Err(ListCallsError(format!(
                "Vonage reports call {} as {status:?}, a status Tocsin does not know",
                self.uuid
            ))),
        }
    }
}

impl Client {
    /// `GET /v1/calls/{uuid}`: the call as Vonage has it; `None` when Vonage
    /// has no such call (404).
    pub async fn fetch_call(&self, uuid: &str) -> Result<Option<CallDetail>, FetchCallError> {
        // Vonage call uuids are UUIDs: anything else names no call, and is
        // not sent on (nor allowed to shape the request path).
        let Ok(uuid) = uuid::Uuid::parse_str(uuid) else {
            return Ok(None);
        };
        let token = self.signer.token().map_err(|e| FetchCallError::Unavailable(e.to_string()))?;
        let response = self
            .http
            .get(format!("{}/v1/calls/{uuid}", self.api_url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| FetchCallError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_success() {
            return response.json().await.map(Some).map_err(|e| FetchCallError::Unavailable(e.to_string()));
        }
        let problem: Problem = response.json().await.unwrap_or_default();
        let text = format!("{status} {} {}", problem.title, problem.detail);
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(FetchCallError::Unavailable(text))
        } else {
            Err(FetchCallError::Refused(text))
        }
    }
}

/// The Applications API (`/v2/applications`, HTTP Basic with the account's
/// API key and secret): Vonage signs an application's voice callbacks only
/// when its `capabilities.voice.signed_callbacks` is true (a setting the
/// Dashboard drops when the application is edited there).
pub mod applications {
    use secrecy::{ExposeSecret, SecretString};

    /// Whether the application's voice callbacks are signed now.
    pub async fn signed_callbacks(
        http: &reqwest::Client,
        api_url: &str,
        application_id: &str,
        api_key: &str,
        api_secret: &SecretString,
    ) -> anyhow::Result<bool> {
        let app = fetch(http, api_url, application_id, api_key, api_secret).await?;
        Ok(app.pointer("/capabilities/voice/signed_callbacks").and_then(serde_json::Value::as_bool)
            == Some(true))
    }

    /// Sets `capabilities.voice.signed_callbacks` to `on`, keeping every
    /// other setting of the application (it is read, changed and written
    /// back whole, as the API's update replaces the application). Returns
    /// whether anything changed.
    pub async fn set_signed_callbacks(
        http: &reqwest::Client,
        api_url: &str,
        application_id: &str,
        api_key: &str,
        api_secret: &SecretString,
        on: bool,
    ) -> anyhow::Result<bool> {
        let mut app = fetch(http, api_url, application_id, api_key, api_secret).await?;
        let voice = app
            .pointer_mut("/capabilities/voice")
            .and_then(serde_json::Value::as_object_mut)
            .ok_or_else(|| anyhow::anyhow!("application {application_id} has no voice capability"))?;
        if voice.get("signed_callbacks").and_then(serde_json::Value::as_bool) == Some(on) {
            return Ok(false);
        }
        voice.insert("signed_callbacks".into(), serde_json::Value::Bool(on));
        // Read-only parts of the answer are not sent back.
        if let Some(object) = app.as_object_mut() {
            object.remove("_links");
            object.remove("id");
        }
        let response = http
            .put(url(api_url, application_id))
            .basic_auth(api_key, Some(api_secret.expose_secret()))
            .json(&app)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "updating application {application_id} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(true)
    }

    fn url(api_url: &str, application_id: &str) -> String {
        format!("{}/v2/applications/{application_id}", api_url.trim_end_matches('/'))
    }

    async fn fetch(
        http: &reqwest::Client,
        api_url: &str,
        application_id: &str,
        api_key: &str,
        api_secret: &SecretString,
    ) -> anyhow::Result<serde_json::Value> {
        let response = http
            .get(url(api_url, application_id))
            .basic_auth(api_key, Some(api_secret.expose_secret()))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "reading application {application_id} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json().await?)
    }
}

impl Client {
    async fn list(&self, to: &PhoneNumber, window: CallWindow) -> Result<Vec<RemoteCall>, ListCallsError> {
        let token = self.signer.token().map_err(|e| ListCallsError(e.to_string()))?;
        let date_start = window.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let date_end = window.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut found = Vec::new();
        let mut index = 0u64;
        // Page through the window; Vonage has no filter by number.
        loop {
            let response = self
                .http
                .get(format!("{}/v1/calls", self.api_url))
                .bearer_auth(&token)
                .query(&[
                    ("date_start", date_start.as_str()),
                    ("date_end", date_end.as_str()),
                    ("page_size", "100"),
                    ("record_index", &index.to_string()),
                    ("order", "asc"),
                ])
                .send()
                .await
                .map_err(|e| ListCallsError(e.to_string()))?;
            if !response.status().is_success() {
                return Err(ListCallsError(format!("status {}", response.status())));
            }
            let page: ListCallsResponse = response.json().await.map_err(|e| ListCallsError(e.to_string()))?;
            let n = page.embedded.calls.len() as u64;
            found.extend(
                page.embedded
                    .calls
                    .into_iter()
                    .filter(|c| {
                        c.to.as_ref().is_some_and(|t| t.number.trim_start_matches('+') == to.digits())
                    })
                    .map(|c| RemoteCall { provider_call_id: c.uuid, status: c.status, created_at: None }),
            );
            index += n;
            if n == 0 || index >= page.count {
                return Ok(found);
            }
        }
    }
}

impl VoiceProvider for Client {
    fn provider(&self) -> Provider {
        Provider::Vonage
    }

    fn account(&self) -> String {
        crate::config::account_key(Provider::Vonage, &self.application_id)
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
        Box::pin(async move {
            match self.fetch_call(provider_call_id).await {
                Ok(Some(detail)) => detail.remote_status(),
                Ok(None) => Ok(RemoteStatus::Gone),
                Err(e) => Err(ListCallsError(e.to_string())),
            }
        })
    }
}

fn classify(status: u16, retry: Option<Duration>, problem: Problem) -> PlaceCallError {
    match status {
        429 => PlaceCallError::RateLimited { retry_after: retry },
        500..=599 => PlaceCallError::Transient(format!("{status} {}", problem.title)),
        _ => {
            let code = problem.kind.rsplit(['#', '/']).next().unwrap_or_default().to_owned();
            let detail = if problem.detail.is_empty() { problem.title } else { problem.detail };
            PlaceCallError::Permanent { status, code, detail }
        }
    }
}

/// What Vonage can say (`speech::check` asks): NCCO `talk` facts from
/// Vonage's NCCO JSON Schema (`specs/vonage-ncco-schema.json`).
pub mod speech {
    use crate::speech::{MessageLimit, Rules, Unit};

    /// `talk.text`: `maxLength` 1500.
    pub const LIMIT: MessageLimit =
        MessageLimit { max: 1500, unit: Unit::Characters, source: "NCCO talk text, Vonage's NCCO schema" };

    /// `definitions.languages` of the NCCO schema.
    pub const LANGUAGES: &[&str] = &[
        "ar",
        "bn-IN",
        "ca-ES",
        "cmn-CN",
        "cmn-TW",
        "cs-CZ",
        "cy-GB",
        "da-DK",
        "de-DE",
        "el-GR",
        "en-AU",
        "en-GB",
        "en-GB-WLS",
        "en-IN",
        "en-US",
        "en-ZA",
        "es-ES",
        "es-MX",
        "es-US",
        "eu-ES",
        "fi-FI",
        "fil-PH",
        "fr-CA",
        "fr-FR",
        "he-IL",
        "hi-IN",
        "hu-HU",
        "id-ID",
        "is-IS",
        "it-IT",
        "ja-JP",
        "ko-KR",
        "ml-IN",
        "nb-NO",
        "nl-NL",
        "pl-PL",
        "pt-BR",
        "pt-PT",
        "ro-RO",
        "ru-RU",
        "sk-SK",
        "sv-SE",
        "ta-IN",
        "te-IN",
        "th-TH",
        "tr-TR",
        "uk-UA",
        "vi-VN",
        "yue-CN",
    ];

    /// Vonage picks the voice by language and `style` (a number per
    /// language); the named `voiceName` is deprecated. A campaign's voice
    /// for Vonage is therefore a style number.
    pub fn style(voice: Option<&str>) -> Result<u32, String> {
        match voice {
            None => Ok(0),
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                format!(
                    "Vonage chooses its voice by language and style: give a style number such as 0 or 1 \
                     (Vonage's text-to-speech language list), not {v:?}"
                )
            }),
        }
    }

    pub fn rules(voice: Option<&str>) -> Result<Rules, String> {
        style(voice)?;
        Ok(Rules { limit: LIMIT, languages: Some(LANGUAGES) })
    }
}

/// One `talk` action of an NCCO: what Vonage says when the call is answered.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TalkAction {
    pub action: String,
    pub text: String,
    pub language: String,
    #[serde(default)]
    pub style: u32,
    #[serde(rename = "loop", default = "one")]
    pub repeat: u32,
    #[serde(rename = "bargeIn", default)]
    pub barge_in: bool,
}

fn one() -> u32 {
    1
}

/// One `stream` action (the Java SDK's `StreamAction`,
/// `fixtures/vonage/stream.json`): a recording Vonage fetches and plays.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamAction {
    pub action: String,
    #[serde(rename = "streamUrl")]
    pub stream_url: Vec<String>,
    #[serde(rename = "loop", default = "one")]
    pub repeat: u32,
    #[serde(rename = "bargeIn", default)]
    pub barge_in: bool,
}

/// The action playing a campaign's message: `talk` for words, `stream`
/// for a recording. Vonage takes NCCO text as data, not markup, so JSON
/// encoding is all the escaping it needs.
fn message_action(
    content: &Content,
    language: &str,
    style: u32,
    repeat: u32,
    barge_in: bool,
) -> serde_json::Value {
    let action = match content {
        Content::Text(text) => serde_json::to_value(TalkAction {
            action: "talk".into(),
            text: text.clone(),
            language: language.into(),
            style,
            repeat,
            barge_in,
        }),
        // A stream with bargeIn needs an input as the next non-stream
        // action (Vonage's NCCO reference): in a dialogue the prompt's talk
        // comes first, so the recording plays whole.
        Content::Audio(url) => serde_json::to_value(StreamAction {
            action: "stream".into(),
            stream_url: vec![url.clone()],
            repeat,
            barge_in: false,
        }),
    };
    action.unwrap_or_default()
}

/// The answer NCCO playing `content` `repeat` times.
pub fn ncco(content: &Content, language: &str, style: u32, repeat: u32) -> serde_json::Value {
    serde_json::Value::Array(vec![message_action(content, language, style, repeat, false)])
}

/// One step of the confirmation dialogue as an NCCO. `Ask`: `talk`
/// actions with `bargeIn` (a key stops the speech) — the message `repeat`
/// times when the step asks for it, then the prompt — and an `input` in
/// Vonage's current form (`type: ["dtmf"]`, a `dtmf` settings object) that
/// posts the key to `input_url`, whose answer is the next step's NCCO.
/// `Finish`: the closing words; the call ends after the last action.
pub fn dialogue_ncco(
    step: &crate::confirm::Step,
    confirmation: &crate::confirm::Confirmation,
    message: &Content,
    language: &str,
    style: u32,
    repeat: u32,
    input_url: &str,
) -> serde_json::Value {
    use crate::confirm::Step;
    let talk = |text: &str, repeat: u32, barge_in: bool| {
        serde_json::to_value(TalkAction {
            action: "talk".into(),
            text: text.into(),
            language: language.into(),
            style,
            repeat,
            barge_in,
        })
        .unwrap_or_default()
    };
    match step {
        Step::Ask { message: with_message, prompt, .. } => {
            let mut actions = Vec::with_capacity(3);
            if *with_message {
                actions.push(message_action(message, language, style, repeat, true));
            }
            actions.push(talk(prompt, 1, true));
            actions.push(serde_json::json!({
                "action": "input",
                "type": ["dtmf"],
                "dtmf": {
                    "maxDigits": 1,
                    "timeOut": confirmation.key_timeout_secs,
                    "submitOnHash": false,
                },
                "eventUrl": [input_url],
                "eventMethod": "POST",
            }));
            serde_json::Value::Array(actions)
        }
        Step::Finish { text } => serde_json::json!([talk(text, 1, false)]),
    }
}

/// The input webhook's body (Vonage's .NET SDK `MultiInput`): the keys
/// pressed, or that none came before the timeout.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InputEvent {
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub uuid: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub conversation_uuid: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub timestamp: Option<String>,
    pub dtmf: Option<DtmfResult>,
}

/// `dtmf` of an input webhook (`DtmfResult`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DtmfResult {
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub digits: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
}

impl InputEvent {
    /// What the callee did: the first key, or nothing.
    pub fn heard(&self) -> crate::confirm::Heard {
        let dtmf = self.dtmf.as_ref();
        if dtmf.is_none_or(|d| d.timed_out && d.digits.as_deref().unwrap_or("").is_empty()) {
            return crate::confirm::Heard::Nothing;
        }
        crate::confirm::Heard::from_digits(dtmf.and_then(|d| d.digits.as_deref()))
    }
}

/// A Vonage call event as posted to the event URL. Fields vary by status;
/// numbers may arrive as strings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct VonageEvent {
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub uuid: Option<String>,
    /// `human` / `machine` events carry `call_uuid` instead of `uuid`.
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub call_uuid: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub conversation_uuid: Option<String>,
    /// The call's status; absent from `record`, `input`, `transfer` and
    /// error events (Vonage's webhook reference).
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub timestamp: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub direction: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub to: Option<String>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub from: Option<String>,
    #[serde(default)]
    pub duration: Option<serde_json::Value>,
    #[serde(default)]
    pub price: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub detail: Option<String>,
    /// Error events: "Syntax error in NCCO. Invalid value type or action."
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub reason: Option<String>,
    /// Record events.
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub recording_url: Option<String>,
    /// Input events (DTMF: an object in the current format, digits in the older one).
    #[serde(default)]
    pub dtmf: Option<serde_json::Value>,
    /// Transfer events.
    #[serde(default, deserialize_with = "crate::provider::lenient")]
    pub conversation_uuid_from: Option<String>,
}

impl VonageEvent {
    pub fn call_uuid(&self) -> Option<&str> {
        self.uuid.as_deref().or(self.call_uuid.as_deref())
    }

    /// What the event reports: its `status`, or for the events without one
    /// `record`, `input`, `transfer` or `error` (by their fields), else `event`.
    pub fn kind(&self) -> &str {
        if let Some(status) = self.status.as_deref() {
            return status;
        }
        if self.reason.is_some() {
            "error"
        } else if self.recording_url.is_some() {
            "record"
        } else if self.dtmf.is_some() {
            "input"
        } else if self.conversation_uuid_from.is_some() {
            "transfer"
        } else {
            "event"
        }
    }

    /// The call state this event moves the call to, if any. An `error`
    /// (an NCCO Vonage refused: the message was never spoken) fails the call.
    pub fn state(&self) -> Option<CallState> {
        status_state(self.kind())
    }

    /// Why the call failed: the failure's `detail`, or an error's `reason`.
    pub fn failure_detail(&self) -> Option<String> {
        match self.kind() {
            "error" => self.reason.as_ref().map(|r| format!("vonage error: {r}")),
            _ => self.detail.clone(),
        }
    }

    /// Identity of the event for deduplication: uuid + status + timestamp.
    pub fn dedupe_key(&self) -> String {
        format!(
            "vonage:{}:{}:{}",
            self.call_uuid().or(self.conversation_uuid.as_deref()).unwrap_or("-"),
            self.kind(),
            self.timestamp.as_deref().unwrap_or("-")
        )
    }

    /// `duration` in seconds, whether sent as a number or a string.
    pub fn duration_secs(&self) -> Option<i32> {
        number(self.duration.as_ref()?).map(|d| d as i32)
    }

    pub fn price(&self) -> Option<f64> {
        number(self.price.as_ref()?)
    }
}

/// The call state a Vonage status word stands for: the one table of
/// Vonage's words, read for the events (their `status`, or `error`) and for
/// a call looked up (`CallDetail::status`).
fn status_state(status: &str) -> Option<CallState> {
    Some(match status {
        "started" => CallState::Placed,
        "ringing" => CallState::Ringing,
        "answered" => CallState::Answered,
        "completed" => CallState::Completed,
        "busy" => CallState::Busy,
        "timeout" | "unanswered" | "cancelled" => CallState::NoAnswer,
        "rejected" => CallState::Rejected,
        "failed" | "error" => CallState::Failed,
        _ => return None,
    })
}

fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Claims of the JWT Vonage signs its webhooks with.
#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookClaims {
    pub iat: u64,
    pub jti: String,
    pub iss: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default)]
    pub application_id: String,
    pub payload_hash: String,
}

fn sha256_hex(body: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body))
}

/// Signs a webhook body as Vonage does (used by the simulator).
pub fn sign_webhook(secret: &str, application_id: &str, body: &[u8]) -> String {
    sign_webhook_issued_at(secret, application_id, body, unix_now())
}

/// `sign_webhook` with the token's `iat` given (tests of stale tokens).
pub fn sign_webhook_issued_at(secret: &str, application_id: &str, body: &[u8], iat: u64) -> String {
    let claims = WebhookClaims {
        iat,
        jti: uuid::Uuid::new_v4().to_string(),
        iss: "Vonage".into(),
        api_key: "sim".into(),
        application_id: application_id.into(),
        payload_hash: sha256_hex(body),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing Authorization bearer token")]
    Missing,
    #[error("bad signature: {0}")]
    Invalid(String),
    #[error("payload_hash does not match the body")]
    Tampered,
    #[error("token issued too far from now")]
    Stale,
}

/// Verifies a Vonage webhook: HS256 signature with the signature secret,
/// `payload_hash` equal to the body's SHA-256, `iat` within five minutes.
pub fn verify_webhook(
    authorization: Option<&str>,
    secret: &SecretString,
    body: &[u8],
) -> Result<WebhookClaims, SignatureError> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .ok_or(SignatureError::Missing)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
    let claims = jsonwebtoken::decode::<WebhookClaims>(token.trim(), &key, &validation)
        .map_err(|e| SignatureError::Invalid(e.to_string()))?
        .claims;
    if !claims.payload_hash.eq_ignore_ascii_case(&sha256_hex(body)) {
        return Err(SignatureError::Tampered);
    }
    if unix_now().abs_diff(claims.iat) > WEBHOOK_MAX_SKEW.as_secs() {
        return Err(SignatureError::Stale);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signature_round_trips_and_rejects_tampering() {
        let secret = SecretString::from("s3cret");
        let body = br#"{"status":"ringing"}"#;
        let token = sign_webhook("s3cret", "app", body);
        let header = format!("Bearer {token}");
        assert!(verify_webhook(Some(&header), &secret, body).is_ok());
        assert_eq!(
            verify_webhook(Some(&header), &secret, br#"{"status":"answered"}"#).unwrap_err(),
            SignatureError::Tampered
        );
        assert!(matches!(
            verify_webhook(Some(&header), &SecretString::from("other"), body),
            Err(SignatureError::Invalid(_))
        ));
        assert_eq!(verify_webhook(None, &secret, body).unwrap_err(), SignatureError::Missing);
    }

    #[test]
    fn stale_webhook_tokens_are_rejected() {
        let body = b"{}";
        let claims = WebhookClaims {
            iat: unix_now() - 3600,
            jti: "x".into(),
            iss: "Vonage".into(),
            api_key: String::new(),
            application_id: String::new(),
            payload_hash: sha256_hex(body),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k"))
                .unwrap();
        let result = verify_webhook(Some(&format!("Bearer {token}")), &SecretString::from("k"), body);
        assert_eq!(result.unwrap_err(), SignatureError::Stale);
    }

    #[test]
    fn events_map_to_states_and_numbers_parse_from_strings() {
        let e: VonageEvent = serde_json::from_str(
            r#"{"uuid":"u1","status":"completed","timestamp":"2026-01-01T00:00:00.000Z","duration":"12","price":"0.00450000"}"#,
        )
        .unwrap();
        assert_eq!(e.state(), Some(CallState::Completed));
        assert_eq!(e.duration_secs(), Some(12));
        assert_eq!(e.price(), Some(0.0045));
        assert_eq!(e.dedupe_key(), "vonage:u1:completed:2026-01-01T00:00:00.000Z");
        let m: VonageEvent = serde_json::from_str(r#"{"call_uuid":"u2","status":"machine"}"#).unwrap();
        assert_eq!(m.call_uuid(), Some("u2"));
        assert_eq!(m.state(), None);
    }

    #[test]
    fn errors_classify_into_decisions() {
        let p = || Problem {
            kind: "https://developer.nexmo.com/api-errors#unauthorized".into(),
            title: "Unauthorized".into(),
            detail: "bad token".into(),
        };
        assert_eq!(
            classify(429, Some(Duration::from_secs(1)), p()),
            PlaceCallError::RateLimited { retry_after: Some(Duration::from_secs(1)) }
        );
        assert!(matches!(classify(503, None, p()), PlaceCallError::Transient(_)));
        assert_eq!(
            classify(401, None, p()),
            PlaceCallError::Permanent {
                status: 401,
                code: "unauthorized".into(),
                detail: "bad token".into()
            }
        );
    }
}
