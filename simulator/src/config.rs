//! The simulator's configuration (`simulator --help` lists it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tocsin_config::{TelemetryArgs, parse_duration};

use crate::Outcome;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "simulator",
    version,
    about = "A local stand-in for the voice providers' APIs (Vonage, Twilio, Telnyx): same endpoints, \
             auth and rate limits, simulated call outcomes, signed event webhooks and injectable faults.",
    after_help = "Examples:\n  simulator keygen --out .tocsin\n  simulator serve --vonage-public-key-path .tocsin/vonage_public.pem --vonage-signature-secret dev \\\n    --twilio-account-sid AC… --twilio-auth-token … --telnyx-api-key KEY… --telnyx-connection-id conn \\\n    --telnyx-signing-seed-path .tocsin/telnyx_seed"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start; boxing `SimConfig` would only complicate callers.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Serve the simulated provider APIs.
    Serve(SimConfig),
    /// Write fresh keys for the simulated accounts: a Vonage RSA key pair
    /// (vonage_private.pem, vonage_public.pem) and a Telnyx Ed25519 signing
    /// seed (telnyx_seed) with its public key (telnyx_public_key).
    Keygen {
        /// Directory for the key files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(clap::Args, Clone, Debug)]
pub struct SimConfig {
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Listen address.
    #[arg(long = "http-addr", env = "TOCSIN_HTTP_ADDR", default_value = "127.0.0.1:8090")]
    pub http_addr: SocketAddr,

    /// A TOML file declaring more accounts per provider, one table each
    /// (`[vonage.eu]`, `[twilio.b]`, `[telnyx.b]`), beside the `PROVIDER:default`
    /// accounts the flags below define. Its format is in `accounts.rs`.
    #[arg(long = "accounts-file", env = "TOCSIN_SIM_ACCOUNTS_FILE")]
    pub accounts_file: Option<PathBuf>,

    // --- Vonage (the account `vonage:default`)
    /// PEM public key of the Vonage application; application JWTs must verify
    /// against it (without it every Vonage request is refused with 401).
    #[arg(long = "vonage-public-key-path", env = "TOCSIN_SIM_VONAGE_PUBLIC_KEY_PATH")]
    pub vonage_public_key_path: Option<PathBuf>,

    /// The Vonage application id JWTs must name (any, when unset).
    #[arg(long = "vonage-application-id", env = "TOCSIN_VONAGE_APPLICATION_ID")]
    pub vonage_application_id: Option<String>,

    /// Secret the simulated Vonage signs event webhooks with (HS256).
    #[arg(
        long = "vonage-signature-secret",
        env = "TOCSIN_VONAGE_SIGNATURE_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub vonage_signature_secret: String,

    /// Start the simulated Vonage application with `signed_callbacks` off, as
    /// a new application (or one edited in the Dashboard) is: events are sent
    /// unsigned until the Applications API turns the setting on.
    #[arg(long = "vonage-unsigned-callbacks", env = "TOCSIN_SIM_VONAGE_UNSIGNED_CALLBACKS")]
    pub vonage_unsigned_callbacks: bool,

    /// The Vonage account's API key and secret (HTTP Basic of the
    /// Applications API, `/v2/applications/{id}`).
    #[arg(long = "vonage-api-key", env = "TOCSIN_VONAGE_API_KEY", hide_env_values = true)]
    pub vonage_api_key: Option<String>,
    #[arg(long = "vonage-api-secret", env = "TOCSIN_VONAGE_API_SECRET", hide_env_values = true)]
    pub vonage_api_secret: Option<String>,

    /// Vonage create-call requests accepted per second per application; more get 429.
    #[arg(long = "vonage-rate", env = "TOCSIN_SIM_VONAGE_RATE", default_value_t = 2.0)]
    pub vonage_rate: f64,

    /// Calls the Vonage application may have in progress at once; past it
    /// create-call requests get 429 (see `vonage.rs`). 0: no cap.
    #[arg(long = "vonage-max-concurrent", env = "TOCSIN_SIM_VONAGE_MAX_CONCURRENT", default_value_t = 0)]
    pub vonage_max_concurrent: usize,

    // --- Twilio (the account `twilio:default`)
    /// The Twilio account SID (`AC` + 32 hex digits) requests must name.
    #[arg(long = "twilio-account-sid", env = "TOCSIN_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// The Twilio auth token: Basic-auth password and the key callbacks are signed with.
    #[arg(long = "twilio-auth-token", env = "TOCSIN_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,

    /// Calls per second Twilio starts per account. Calls above it are accepted
    /// and queued (`queue_time`), never refused, as Twilio does.
    #[arg(long = "twilio-cps", env = "TOCSIN_SIM_TWILIO_CPS", default_value_t = 1.0)]
    pub twilio_cps: f64,

    /// Longest queue Twilio accepts; a call that would wait longer gets 429 (code 20429).
    #[arg(long = "twilio-max-queue", env = "TOCSIN_SIM_TWILIO_MAX_QUEUE", default_value = "24h", value_parser = parse_duration)]
    pub twilio_max_queue: Duration,

    /// Calls the Twilio account may have in progress at once; past it the
    /// call is created and fails (error 10004, see `twilio.rs`). 0: no cap.
    #[arg(long = "twilio-max-concurrent", env = "TOCSIN_SIM_TWILIO_MAX_CONCURRENT", default_value_t = 0)]
    pub twilio_max_concurrent: usize,

    // --- Telnyx (the account `telnyx:default`)
    /// The Telnyx API key requests must carry (Bearer).
    #[arg(long = "telnyx-api-key", env = "TOCSIN_TELNYX_API_KEY", hide_env_values = true)]
    pub telnyx_api_key: Option<String>,

    /// The Call Control connection id dials must name (any, when unset).
    #[arg(long = "telnyx-connection-id", env = "TOCSIN_TELNYX_CONNECTION_ID")]
    pub telnyx_connection_id: Option<String>,

    /// File holding the base64 Ed25519 seed (32 bytes) the simulated Telnyx
    /// signs webhooks with (`simulator keygen` writes one). A random key when unset.
    #[arg(long = "telnyx-signing-seed-path", env = "TOCSIN_SIM_TELNYX_SEED_PATH")]
    pub telnyx_signing_seed_path: Option<PathBuf>,

    /// Dials Telnyx accepts per API key within one rolling window; more get 429 (code 90103).
    #[arg(
        long = "telnyx-dials-per-window",
        env = "TOCSIN_SIM_TELNYX_DIALS_PER_WINDOW",
        default_value_t = 150
    )]
    pub telnyx_dials_per_window: u32,

    /// Calls a Telnyx account may have in progress at once (2 at sign-up, 10 after
    /// verification); past it the call fails (SIP 403 "User channel limit exceeded"). 0: no cap.
    #[arg(long = "telnyx-max-concurrent", env = "TOCSIN_SIM_TELNYX_MAX_CONCURRENT", default_value_t = 0)]
    pub telnyx_max_concurrent: usize,

    /// The Telnyx rate window.
    #[arg(long = "telnyx-window", env = "TOCSIN_SIM_TELNYX_WINDOW", default_value = "5s", value_parser = parse_duration)]
    pub telnyx_window: Duration,

    // --- Call lifecycle
    /// Multiplies every simulated duration (ringing, talking): 0.1 runs ten times faster.
    #[arg(long = "time-scale", env = "TOCSIN_SIM_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,

    /// Seed of every random choice (outcomes, durations, faults).
    #[arg(long, env = "TOCSIN_SIM_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Pins numbers ending in DIGIT to a callee behaviour, so tests are
    /// deterministic. Repeatable. Behaviours: answered (confirms when asked
    /// for a key), no_key (listens, presses nothing), wrong_key (a useless
    /// key, then confirms), replay (asks for a replay, then confirms),
    /// opt_out, busy_then_confirm (busy the first time, confirms on the next
    /// call), busy, no_answer, failed, machine (a greeting, then the beep),
    /// machine_no_beep.
    #[arg(
        long = "pin",
        value_name = "DIGIT=OUTCOME",
        value_parser = parse_pin,
        default_values = ["7=busy", "8=no_answer"],
        env = "TOCSIN_SIM_PIN",
        value_delimiter = ','
    )]
    pub pins: Vec<(u8, Outcome)>,

    /// Outcome proportions of numbers no pin applies to, e.g.
    /// `answered=0.8,busy=0.1,no_answer=0.05,failed=0.03,machine=0.02`.
    /// Drawn from the seed and the number, so a run is reproducible.
    #[arg(long = "outcome-mix", env = "TOCSIN_SIM_OUTCOME_MIX", default_value = "answered=1", value_parser = parse_mix)]
    pub outcome_mix: OutcomeMix,

    /// How long an answered Telnyx call waits for the speak (and then the
    /// hang-up) command before the callee hangs up; not time-scaled.
    #[arg(long = "telnyx-command-wait", env = "TOCSIN_SIM_TELNYX_COMMAND_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub telnyx_command_wait: Duration,

    /// Delivery attempts per event webhook (non-2xx answers are retried with backoff).
    #[arg(long = "webhook-attempts", env = "TOCSIN_SIM_WEBHOOK_ATTEMPTS", default_value_t = 5)]
    pub webhook_attempts: u32,

    /// Draw a number's outcome once for every call to it (`per-number`: a
    /// callee who never presses a key never does), or afresh for each call
    /// (`per-call`: a busy number may answer next time).
    #[arg(long = "callee-draw", env = "TOCSIN_SIM_CALLEE_DRAW", default_value = "per-call", value_parser = ["per-call", "per-number"])]
    pub callee_draw: String,

    #[command(flatten)]
    pub keys: CalleeKeys,

    #[command(flatten)]
    pub faults: FaultArgs,
}

/// The keys simulated callees press when a call asks for one.
#[derive(clap::Args, Clone, Debug)]
pub struct CalleeKeys {
    /// The key callees press to confirm.
    #[arg(long = "callee-confirm-key", env = "TOCSIN_SIM_CALLEE_CONFIRM_KEY", default_value_t = '1')]
    pub confirm: char,
    /// The key `replay` callees press first.
    #[arg(long = "callee-replay-key", env = "TOCSIN_SIM_CALLEE_REPLAY_KEY", default_value_t = '*')]
    pub replay: char,
    /// The key `opt_out` callees press.
    #[arg(long = "callee-opt-out-key", env = "TOCSIN_SIM_CALLEE_OPT_OUT_KEY", default_value_t = '9')]
    pub opt_out: char,
    /// The key `wrong_key` callees press first.
    #[arg(long = "callee-wrong-key", env = "TOCSIN_SIM_CALLEE_WRONG_KEY", default_value_t = '5')]
    pub wrong: char,
}

impl Default for CalleeKeys {
    fn default() -> Self {
        Self { confirm: '1', replay: '*', opt_out: '9', wrong: '5' }
    }
}

/// Injected faults. Rates are probabilities per request or per event.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FaultArgs {
    /// Share of create-call requests answered 500/503 without creating a call.
    #[arg(long = "fault-5xx-rate", env = "TOCSIN_SIM_FAULT_5XX_RATE", default_value_t = 0.0)]
    pub error_5xx_rate: f64,

    /// Latency added to every create-call request.
    #[arg(long = "fault-latency", env = "TOCSIN_SIM_FAULT_LATENCY", default_value = "0s", value_parser = parse_duration)]
    pub latency: Duration,

    /// Share of create-call requests that hang (no call created) for
    /// `--fault-timeout-after`, then answer 504.
    #[arg(long = "fault-timeout-rate", env = "TOCSIN_SIM_FAULT_TIMEOUT_RATE", default_value_t = 0.0)]
    pub timeout_rate: f64,

    /// How long a timed-out or lost response hangs.
    #[arg(long = "fault-timeout-after", env = "TOCSIN_SIM_FAULT_TIMEOUT_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub timeout_after: Duration,

    /// Share of create-call requests whose call IS created but whose response
    /// never arrives (hangs for `--fault-timeout-after`): the ambiguous case.
    #[arg(
        long = "fault-lost-response-rate",
        env = "TOCSIN_SIM_FAULT_LOST_RESPONSE_RATE",
        default_value_t = 0.0
    )]
    pub lost_response_rate: f64,

    /// Start a 429 storm this often (every create-call request gets 429 during it).
    #[arg(long = "fault-429-storm-every", env = "TOCSIN_SIM_FAULT_429_STORM_EVERY", value_parser = parse_duration)]
    pub storm_every: Option<Duration>,

    /// How long each 429 storm lasts.
    #[arg(long = "fault-429-storm-for", env = "TOCSIN_SIM_FAULT_429_STORM_FOR", default_value = "2s", value_parser = parse_duration)]
    pub storm_for: Duration,

    /// Share of events delivered twice.
    #[arg(long = "fault-duplicate-rate", env = "TOCSIN_SIM_FAULT_DUPLICATE_RATE", default_value_t = 0.0)]
    pub duplicate_rate: f64,

    /// Share of events held back and delivered after the call's next event.
    #[arg(long = "fault-reorder-rate", env = "TOCSIN_SIM_FAULT_REORDER_RATE", default_value_t = 0.0)]
    pub reorder_rate: f64,

    /// Share of events never delivered, as when a provider gives up redelivering them
    /// (answer documents are still fetched): the call's record stays at the provider.
    #[arg(long = "fault-drop-event-rate", env = "TOCSIN_SIM_FAULT_DROP_EVENT_RATE", default_value_t = 0.0)]
    pub drop_event_rate: f64,
}

/// Weights of the outcomes drawn for unpinned numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeMix(pub Vec<(Outcome, f64)>);

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    match s.trim() {
        "answered" | "confirms" => Ok(Outcome::Answered),
        "no_key" => Ok(Outcome::NoKey),
        "wrong_key" => Ok(Outcome::WrongKey),
        "replay" => Ok(Outcome::Replay),
        "opt_out" => Ok(Outcome::OptOut),
        "busy_then_confirm" => Ok(Outcome::BusyThenConfirm),
        "busy" => Ok(Outcome::Busy),
        "no_answer" | "unanswered" => Ok(Outcome::Unanswered),
        "failed" => Ok(Outcome::Failed),
        "machine" => Ok(Outcome::Machine),
        "machine_no_beep" => Ok(Outcome::MachineNoBeep),
        other => Err(format!(
            "unknown outcome {other:?} (answered, no_key, wrong_key, replay, opt_out, busy_then_confirm, \
             busy, no_answer, failed, machine, machine_no_beep)"
        )),
    }
}

fn parse_pin(s: &str) -> Result<(u8, Outcome), String> {
    let (digit, outcome) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected DIGIT=OUTCOME"))?;
    let digit = match digit.trim().as_bytes() {
        [d @ b'0'..=b'9'] => *d,
        _ => return Err(format!("{digit:?} is not a single digit")),
    };
    Ok((digit, parse_outcome(outcome)?))
}

fn parse_mix(s: &str) -> Result<OutcomeMix, String> {
    let mut mix = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) =
            part.split_once('=').ok_or_else(|| format!("{part:?}: expected OUTCOME=WEIGHT"))?;
        let weight: f64 = weight.trim().parse().map_err(|_| format!("{weight:?} is not a number"))?;
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(format!("weight of {name} must be zero or positive"));
        }
        mix.push((parse_outcome(name)?, weight));
    }
    if mix.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
        return Err("the outcome weights must add up to more than zero".into());
    }
    Ok(OutcomeMix(mix))
}

impl SimConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.vonage_rate) {
            anyhow::bail!("--vonage-rate must be positive");
        }
        if !positive(self.twilio_cps) {
            anyhow::bail!("--twilio-cps must be positive");
        }
        if self.telnyx_dials_per_window == 0 || self.telnyx_window.is_zero() {
            anyhow::bail!("--telnyx-dials-per-window and --telnyx-window must be positive");
        }
        if !(self.time_scale.is_finite() && self.time_scale >= 0.0) {
            anyhow::bail!("--time-scale must be zero or positive");
        }
        if let Some(sid) = &self.twilio_account_sid
            && !(sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            anyhow::bail!("--twilio-account-sid must be AC followed by 32 hex digits, got {sid:?}");
        }
        let f = &self.faults;
        for (name, rate) in [
            ("--fault-5xx-rate", f.error_5xx_rate),
            ("--fault-timeout-rate", f.timeout_rate),
            ("--fault-lost-response-rate", f.lost_response_rate),
            ("--fault-duplicate-rate", f.duplicate_rate),
            ("--fault-reorder-rate", f.reorder_rate),
            ("--fault-drop-event-rate", f.drop_event_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{name} must be between 0 and 1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_mixes_parse() {
        assert_eq!(parse_pin("9=failed"), Ok((b'9', Outcome::Failed)));
        assert!(parse_pin("10=busy").is_err());
        assert!(parse_pin("1=maybe").is_err());
        let mix = parse_mix("answered=0.8,busy=0.2").unwrap();
        assert_eq!(mix.0, vec![(Outcome::Answered, 0.8), (Outcome::Busy, 0.2)]);
        assert!(parse_mix("answered=0").is_err());
        let cli = Cli::try_parse_from(["simulator", "serve"]).unwrap();
        let Command::Serve(config) = cli.command else { panic!() };
        assert_eq!(config.pins, vec![(b'7', Outcome::Busy), (b'8', Outcome::Unanswered)]);
        config.validate().unwrap();
    }
}
