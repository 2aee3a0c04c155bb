//! The producer's command line (`producer --help`, `producer enqueue --help`).
//! Every flag that names a service is also an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand};
use tocsin_config::{AmqpArgs, DatabaseArgs, ProviderArgs, TelemetryArgs, parse_duration};
use tocsin_core::confirm::{self, Key, Voicemail};
use tocsin_core::provider::Provider;

use tocsin_enqueue::Format;

#[derive(Parser, Debug)]
#[command(
    name = "producer",
    version,
    about = "Enqueues voice-broadcast campaigns for Tocsin's workers, controls them and reports on them.",
    after_help = concat!(
        "Examples:\n",
        "  producer enqueue --campaign storm-warning --contacts contacts.csv \\\n",
        "      --message 'Severe storm warning for your area tonight.' --from +14155550100\n",
        "  producer status storm-warning --watch\n",
        "  producer pause storm-warning      # stop dialing now; `resume` picks up where it stopped\n",
        "  producer dnc add +14155550123 --reason 'asked not to be called'\n\n",
        "Exit codes:\n  0  done\n  1  other errors (the message says what failed)\n",
        "  2  bad usage: a wrong flag, an unknown campaign, a missing confirmation\n",
        "  3  input rejected entirely: the contact list is unreadable or every line was rejected\n",
        "  4  a service is unreachable (PostgreSQL, RabbitMQ); re-run when it is back\n",
        "  5  status --watch gave up (--timeout) before every call finished\n",
        "  130 interrupted (Ctrl-C); re-running the same command finishes the job"
    )
)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create (or extend) a campaign from a contact list and enqueue one call per new contact.
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer enqueue --campaign storm-warning --contacts contacts.csv \\\n",
        "      --message 'Severe storm warning for your area tonight.' --from +14155550100\n",
        "  producer enqueue --campaign school-closed --contacts parents.jsonl --message-file msg.txt \\\n",
        "      --from +442079460000 --default-region GB --window 08:00-20:00 --timezone Europe/London\n",
        "  cat list.csv | producer enqueue --campaign outage --contacts - --message '...' --from +1... --dry-run\n",
        "  producer enqueue --campaign dc-outage --list oncall --message '...' --from +14155550100\n\n",
        "Contact lists: CSV with a header row (the number column is `number`, see --number-column;\n",
        "the other columns are kept with each contact) or JSON Lines (one object per line). The\n",
        "format comes from the extension (.csv .tsv .txt / .jsonl .ndjson) or --format. --list NAME\n",
        "calls a saved list instead (`producer list import`), re-checked against do-not-call.\n\n",
        "Safe to re-run: contacts already in the campaign are counted as 'already enqueued' and\n",
        "never enqueued twice; new contacts are added; a run that was killed is finished.\n",
        "An existing campaign's message changes only with --update-message, its other settings\n",
        "only with --update-settings."
    ))]
    Enqueue(Box<EnqueueArgs>),
    /// Show a campaign's progress: calls by state, rate, answer rate, ETA.
    #[command(
        after_help = "Examples:\n  producer status storm-warning\n  producer status storm-warning --watch --timeout 2h"
    )]
    Status(StatusArgs),
    /// List campaigns with their status and progress; `list import|show|delete` manage saved contact lists.
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer list                                  # campaigns\n",
        "  producer list import oncall oncall.csv         # save (or replace) a contact list\n",
        "  producer list show                             # saved contact lists\n",
        "  producer list show oncall --contacts           # one list's contacts, as JSON Lines\n",
        "  producer list delete oncall --yes\n\n",
        "A saved list is named by campaigns created through the HTTP API (`contact_list`)\n",
        "and by Alertmanager routes (label `tocsin_contact_list` or `?contact_list=`)."
    ))]
    List(ListArgs),
    /// Stop dialing a campaign (calls in progress finish); `resume` restarts it.
    #[command(after_help = "Example:\n  producer pause storm-warning")]
    Pause(NameArg),
    /// Resume dialing a paused campaign.
    #[command(after_help = "Example:\n  producer resume storm-warning")]
    Resume(NameArg),
    /// Change the provider accounts a campaign's calls go through, running or paused: every
    /// worker uses the new route for its next call within about a second.
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer route storm-warning failover:vonage,twilio   # Vonage; Twilio while Vonage is unhealthy\n",
        "  producer route storm-warning pool:vonage,twilio,telnyx  # all three at once\n",
        "  producer route storm-warning none                      # back to its --provider alone"
    ))]
    Route(Box<RouteArgs>),
    /// The audit log: who did what, when and from where (CLI and API), newest first.
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer audit                              # the last 100 actions\n",
        "  producer audit --campaign storm-warning --since 24h\n",
        "  producer audit --since 2026-11-22T00:00:00Z --json"
    ))]
    Audit(AuditArgs),
    /// Write a campaign's calls as CSV: number, list columns, outcome, attempts, times,
    /// confirmation, answered by, voicemail, error and cost.
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer export storm-warning > storm-warning.csv\n",
        "  producer export storm-warning --output out.csv\n\n",
        "The same as GET /api/v1/campaigns/{name}/calls.csv; rows come in the contact list's order."
    ))]
    Export(ExportArgs),
    /// Cancel a campaign for good: calls not yet dialed are never made.
    #[command(
        after_help = "Example:\n  producer cancel storm-warning --yes\n\nTo stop only for now, use `producer pause`."
    )]
    Cancel(ConfirmedNameArg),
    /// Delete a campaign with its calls and events.
    #[command(after_help = "Example:\n  producer delete demo --yes")]
    Delete(ConfirmedNameArg),
    /// The do-not-call list: numbers never called by any campaign.
    #[command(subcommand)]
    Dnc(DncCommand),
    /// Keys for the HTTP API (`/api/v1` on the webhook service).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Apply the database migrations and exit (every command also applies them first).
    Migrate,
    /// Put dead-lettered call jobs back in the work queue (after fixing what sent them there).
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer requeue-dead --campaign storm-warning\n",
        "  producer requeue-dead                          # every campaign's\n\n",
        "The workers' sweeper moves jobs from the dead-letter queue into the `dead_jobs` table,\n",
        "where `producer status` counts them per campaign. A job is dead-lettered only for a\n",
        "reason in the job itself (it cannot be decoded, or names a call that cannot exist);\n",
        "undecodable ones cannot be put back and stay listed (`SELECT * FROM dead_jobs`).\n",
        "Putting a job back is always safe: a job whose call has been handled is dropped."
    ))]
    RequeueDead(RequeueDeadArgs),
    /// Vonage application settings, through Vonage's Applications API.
    #[command(subcommand)]
    Vonage(VonageCommand),
}

#[derive(Subcommand, Debug)]
pub enum VonageCommand {
    /// Make Vonage sign the application's voice callbacks (signed_callbacks), or show whether it does.
    #[command(after_help = concat!(
        "Examples:\n",
        "  TOCSIN_VONAGE_API_KEY=... TOCSIN_VONAGE_API_SECRET=... producer vonage signed-callbacks\n",
        "  producer vonage signed-callbacks --check\n\n",
        "Vonage signs an application's voice callbacks only when the application's\n",
        "capabilities.voice.signed_callbacks is true, and editing the application in the\n",
        "Vonage Dashboard turns it off again: run this after every such edit. Without it the\n",
        "webhook service confirms each unsigned event with Vonage (one API request per\n",
        "event), or refuses them with --vonage-unsigned-events refuse."
    ))]
    SignedCallbacks(SignedCallbacksArgs),
}

#[derive(Args, Debug)]
pub struct SignedCallbacksArgs {
    /// The Vonage application (the one the workers call through).
    #[arg(long = "vonage-application-id", env = "TOCSIN_VONAGE_APPLICATION_ID")]
    pub application_id: String,
    /// Base URL of the Vonage API.
    #[arg(
        long = "vonage-api-url",
        env = "TOCSIN_VONAGE_API_URL",
        hide_env_values = true,
        default_value = "https://api.nexmo.com"
    )]
    pub api_url: String,
    /// The account's API key (the Applications API authenticates with key and secret).
    #[arg(long = "vonage-api-key", env = "TOCSIN_VONAGE_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// The account's API secret.
    #[arg(long = "vonage-api-secret", env = "TOCSIN_VONAGE_API_SECRET", hide_env_values = true, value_parser = tocsin_config::secret)]
    pub api_secret: secrecy::SecretString,
    /// Only show the current setting.
    #[arg(long)]
    pub check: bool,
    /// Turn signing off instead (not recommended).
    #[arg(long, conflicts_with = "check")]
    pub off: bool,
}

/// Parsers shared with the HTTP API; the rules live with the campaign type.
pub use tocsin_core::campaign::{CallingWindow as Window, parse_start_at, parse_timezone};

fn parse_key(s: &str) -> Result<Key, String> {
    s.parse()
}

/// A key, or `none` (clap reads `Option<Option<_>>` as an optional value).
#[derive(Clone, Copy, Debug)]
pub struct OptionalKey(pub Option<Key>);

fn parse_optional_key(s: &str) -> Result<OptionalKey, String> {
    confirm::parse_optional_key(s).map(OptionalKey)
}

pub fn parse_window(s: &str) -> Result<Window, String> {
    Window::parse(s)
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "tab" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!("{s:?}: the delimiter must be one ASCII character (or 'tab')")),
    }
}

#[derive(Args, Clone, Debug)]
pub struct EnqueueArgs {
    /// Campaign name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub campaign: String,

    /// Contact list: a CSV or JSON Lines file, or '-' for standard input.
    #[arg(long, required_unless_present = "list", conflicts_with = "list")]
    pub contacts: Option<PathBuf>,

    /// A saved contact list (`producer list import`) instead of a file.
    #[arg(long, value_name = "NAME")]
    pub list: Option<String>,

    /// Format of the contact list (default: from the extension, else detected).
    #[arg(long, value_parser = clap::value_parser!(Format), value_name = "csv|jsonl")]
    pub format: Option<Format>,

    /// The message to speak, at most what the provider says at once: Vonage 1500 characters,
    /// Telnyx 3000, Twilio 4096 bytes (3000 with a Polly voice, 5000 with a Google voice).
    /// With --audio-url: the recording's transcript, shown to operators, not spoken (optional).
    #[arg(long, required_unless_present_any = ["message_file", "audio_url"], conflicts_with = "message_file")]
    pub message: Option<String>,

    /// Play this recording instead of speaking the message: an http(s) URL of an MP3 or
    /// WAV file the provider fetches itself when the call is answered (Vonage stream,
    /// Twilio <Play>, Telnyx playback_start). "none" goes back to speaking the message.
    #[arg(long, value_name = "URL")]
    pub audio_url: Option<String>,

    /// Read the message from this UTF-8 text file.
    #[arg(long, value_name = "FILE")]
    pub message_file: Option<PathBuf>,

    /// Caller id in E.164 form, a number the provider lets you call from (required for a new campaign).
    #[arg(long)]
    pub from: Option<String>,

    /// Voice provider to place the calls through (default vonage); it must be configured
    /// with the same variables the workers read (e.g. TOCSIN_VONAGE_APPLICATION_ID).
    #[arg(long, value_parser = clap::value_parser!(Provider), value_name = "vonage|twilio|telnyx")]
    pub provider: Option<Provider>,

    /// The provider accounts the calls go through, instead of --provider: failover:A,B
    /// (the first healthy account with a free line) or pool:A,B,C (every healthy account, in
    /// proportion to its rate). An account is PROVIDER[:default]. Change it on a running
    /// campaign with `producer route`.
    #[arg(long, value_name = "failover|pool:ACCOUNT,…")]
    pub route: Option<tocsin_core::route::Route>,

    /// Language of the spoken message (default en-US), one the provider speaks; an
    /// equivalent code is mapped (Arabic: Vonage ar, Telnyx arb).
    #[arg(long)]
    pub language: Option<String>,

    /// Voice (default: the provider's): Vonage a style number (0, 1 …); Twilio man, woman,
    /// alice, Polly.<Name> or Google.<name>; Telnyx female, male or e.g. AWS.Polly.Joanna-Neural.
    #[arg(long)]
    pub voice: Option<String>,

    /// Times the message is spoken on each answered call (1-10, default 1).
    #[arg(long)]
    pub repeat: Option<i64>,

    /// Do not call before this time (RFC 3339, e.g. 2026-11-22T18:00:00Z).
    #[arg(long, value_parser = parse_start_at, value_name = "TIME")]
    pub start_at: Option<DateTime<Utc>>,

    /// Deadline (RFC 3339): no call starts after it; calls still waiting then end `expired`
    /// (calls in progress finish).
    #[arg(long, value_parser = parse_start_at, value_name = "TIME", conflicts_with = "expires_in")]
    pub expires_at: Option<DateTime<Utc>>,

    /// Deadline as a duration from now, e.g. 90m or 2h (instead of --expires-at); it sets a
    /// deadline the campaign has not got, and never moves one (re-running is safe).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub expires_in: Option<Duration>,

    /// Call only within this daily window, local time, e.g. 09:00-20:00 (needs --timezone
    /// or a per-contact time zone column).
    #[arg(long, value_parser = parse_window, value_name = "HH:MM-HH:MM")]
    pub window: Option<Window>,

    /// IANA time zone of the window, e.g. America/Chicago (default UTC); a contact's own
    /// time zone column overrides it.
    #[arg(long, value_parser = parse_timezone, value_name = "TZ")]
    pub timezone: Option<Tz>,

    /// Column (or JSON key) holding a contact's own IANA time zone; used when present
    /// [default: timezone].
    #[arg(long, value_name = "NAME")]
    pub timezone_column: Option<String>,

    /// Attempts per contact in all, redialing busy / no-answer outcomes (1-10, default 1).
    #[arg(long)]
    pub max_attempts: Option<i64>,

    /// Pause before a redial, e.g. 5m (default 5m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub retry_delay: Option<Duration>,

    /// Ask the provider to detect answering machines (`--machine-detection=false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub machine_detection: Option<bool>,

    /// After the message, ask the callee to press a key to confirm they heard it
    /// (`--confirm=false` turns it off). Confirmations show in status, the API and SQL.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Confirmation")]
    pub confirm: Option<bool>,

    /// The prompt heard after the message [default: "Press 1 to confirm you received this
    /// message. Press star to hear it again."]; say the keys you set.
    #[arg(long, value_name = "TEXT", help_heading = "Confirmation")]
    pub confirm_prompt: Option<String>,

    /// The key that confirms [default: 1].
    #[arg(long, value_parser = parse_key, value_name = "KEY", help_heading = "Confirmation")]
    pub confirm_key: Option<Key>,

    /// The key that plays the message and the prompt again, or none [default: *].
    #[arg(long, value_parser = parse_optional_key, value_name = "KEY|none", help_heading = "Confirmation")]
    pub replay_key: Option<OptionalKey>,

    /// A key that opts the number out: it is put on the do-not-call list ("opted out by
    /// keypress") and never called again by any campaign [default: none].
    #[arg(long, value_parser = parse_optional_key, value_name = "KEY|none", help_heading = "Confirmation")]
    pub opt_out_key: Option<OptionalKey>,

    /// Replays allowed per call (0-5) [default: 2].
    #[arg(long, value_name = "N", help_heading = "Confirmation")]
    pub max_replays: Option<i64>,

    /// Seconds to wait for a key after the prompt (3-10) [default: 8]; with no key the
    /// prompt repeats once, then the call ends unconfirmed.
    #[arg(long, value_name = "SECS", help_heading = "Confirmation")]
    pub key_timeout: Option<i64>,

    /// Redial until the contact confirms: answered-but-unconfirmed calls are redialled
    /// like busy and unanswered ones, within --max-attempts and before the deadline
    /// (needs --confirm).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Confirmation")]
    pub until_confirmed: Option<bool>,

    /// When an answering machine picks up: drop (wait for the beep, then leave the
    /// voicemail), hangup, or ignore (speak as to a person) [default: ignore]. drop and
    /// hangup turn machine detection on; a voicemail left is its own outcome (`voicemail`).
    #[arg(long, value_name = "drop|hangup|ignore", help_heading = "Confirmation")]
    pub voicemail: Option<Voicemail>,

    /// The voicemail left by --voicemail drop [default: the message, then "This message
    /// was left by <--from>. Please call that number back."].
    #[arg(long, value_name = "TEXT", help_heading = "Confirmation")]
    pub voicemail_message: Option<String>,

    /// Name of the column (or JSON key) holding the phone number.
    #[arg(long, default_value = "number", value_name = "NAME")]
    pub number_column: String,

    /// CSV field separator: one character, or 'tab' (default ',', tab for .tsv files).
    #[arg(long, value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,

    /// Region (ISO 3166, e.g. US, GB) for numbers written without a country code.
    #[arg(long, value_name = "CC")]
    pub default_region: Option<String>,

    /// Write every rejected line (line number, reason, value) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Validate and report (including do-not-call and already-enqueued contacts)
    /// without writing or publishing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the final report as JSON on standard output.
    #[arg(long)]
    pub json: bool,

    /// Allow changing the message of an existing campaign (calls not yet answered speak the new one).
    #[arg(long)]
    pub update_message: bool,

    /// Allow changing an existing campaign's other settings (provider, caller id, schedule...).
    #[arg(long)]
    pub update_settings: bool,

    /// Most jobs awaiting the broker's confirm at once.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65_535), value_name = "N")]
    pub in_flight: u32,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(
        flatten,
        next_help_heading = "Providers (the workers' variables; a campaign's provider must be configured)"
    )]
    pub providers: ProviderArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Campaign name.
    pub name: String,

    /// Refresh live until every call has finished (or --timeout).
    #[arg(long, visible_alias = "wait")]
    pub watch: bool,

    /// Give up watching after this long (exit code 5).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the status as JSON (with --watch: once, when finished).
    #[arg(long)]
    pub json: bool,
}

/// `producer list` alone lists campaigns (as it always has); its
/// subcommands manage saved contact lists.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ListArgs {
    /// Print the campaigns as JSON Lines.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<ListCommand>,
}

#[derive(Subcommand, Debug)]
pub enum ListCommand {
    /// Save a contact list under NAME (replacing its contacts if it exists), validated
    /// as `producer enqueue` validates: E.164, duplicates, do-not-call, unreadable lines.
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer list import oncall oncall.csv --rejects rejected.csv\n",
        "  producer list import parents parents.jsonl --default-region GB\n\n",
        "The same formats as `producer enqueue --contacts`. The list is replaced in one\n",
        "transaction: campaigns starting meanwhile read the old list or the new one, never\n",
        "a mix. When every line is rejected the old list is kept and the exit code is 3."
    ))]
    Import(ListImportArgs),
    /// Without NAME: every saved contact list. With NAME: that list (and its contacts with --contacts).
    Show {
        /// The list's name.
        name: Option<String>,
        /// Print the list's contacts as JSON Lines (number, timezone, other columns, line).
        #[arg(long, requires = "name")]
        contacts: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a saved contact list (campaigns made from it keep their calls).
    #[command(after_help = "Example:\n  producer list delete oncall --yes")]
    Delete {
        /// The list's name.
        name: String,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct ListImportArgs {
    /// Name of the list (letters, digits, '-', '_', '.').
    pub name: String,
    /// The contacts: CSV with a header row or JSON Lines, or '-' for standard input.
    pub file: PathBuf,
    /// Format of the file (default: from the extension, else detected).
    #[arg(long, value_parser = clap::value_parser!(Format), value_name = "csv|jsonl")]
    pub format: Option<Format>,
    /// Name of the column (or JSON key) holding the phone number.
    #[arg(long, default_value = "number", value_name = "NAME")]
    pub number_column: String,
    /// Column (or JSON key) holding a contact's own IANA time zone [default: timezone].
    #[arg(long, value_name = "NAME")]
    pub timezone_column: Option<String>,
    /// CSV field separator: one character, or 'tab' (default ',', tab for .tsv files).
    #[arg(long, value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// Region (ISO 3166, e.g. US, GB) for numbers written without a country code.
    #[arg(long, value_name = "CC")]
    pub default_region: Option<String>,
    /// Write every rejected line (line number, reason, value) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only actions on this campaign.
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only actions since then: a duration back from now (24h, 30m) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since, value_name = "DURATION|TIME")]
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
    /// Print JSON Lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: a span back from now, or a time.
fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    match parse_duration(s) {
        Ok(d) => chrono::Duration::from_std(d).map(|d| Utc::now() - d).map_err(|e| e.to_string()),
        Err(_) => parse_start_at(s)
            .map_err(|_| format!("{s:?} is neither a duration (24h, 30m) nor an RFC 3339 time")),
    }
}

/// The OS user running the CLI, as the audit log names it.
pub fn os_user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into())
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Campaign name.
    pub name: String,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// Campaign name.
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// Campaign name.
    pub name: String,
    /// failover:ACCOUNT,… or pool:ACCOUNT,…, or none.
    pub route: String,

    #[command(
        flatten,
        next_help_heading = "Providers (the workers' variables; every account of the route must be configured)"
    )]
    pub providers: tocsin_config::ProviderArgs,
}

#[derive(Args, Debug)]
pub struct RequeueDeadArgs {
    /// Only this campaign's dead-lettered jobs (default: every campaign's).
    #[arg(long)]
    pub campaign: Option<String>,
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

#[derive(Args, Debug)]
pub struct ConfirmedNameArg {
    /// Campaign name.
    pub name: String,
    /// Confirm: this cannot be undone.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum DncCommand {
    /// Add numbers; calls to them still waiting in any campaign are skipped.
    #[command(
        after_help = "Example:\n  producer dnc add +14155550123 '+44 20 7946 0958' --reason 'asked by phone'"
    )]
    Add {
        /// Numbers, international or (with --default-region) national.
        #[arg(required = true)]
        numbers: Vec<String>,
        /// Why (kept with the entry).
        #[arg(long)]
        reason: Option<String>,
        /// Region for numbers written without a country code.
        #[arg(long, value_name = "CC")]
        default_region: Option<String>,
    },
    /// Remove numbers (calls already skipped stay skipped).
    Remove {
        #[arg(required = true)]
        numbers: Vec<String>,
        #[arg(long, value_name = "CC")]
        default_region: Option<String>,
    },
    /// Add every number of a contact list (CSV or JSON Lines, '-' for stdin).
    #[command(after_help = "Example:\n  producer dnc import opt-outs.csv --reason 'opt-out list 2026-11'")]
    Import(DncImportArgs),
    /// Print the list (number, reason, added at) as CSV.
    List {
        /// Print JSON Lines instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApikeyCommand {
    /// Create a key and print it once (only its SHA-256 is stored).
    #[command(after_help = concat!(
        "Examples:\n",
        "  producer apikey create --name alertmanager --scope campaigns:write,campaigns:read\n",
        "  producer apikey create --name ops-dashboard --scope campaigns:read,campaigns:control \\\n",
        "      --campaign-prefix ops-"
    ))]
    Create {
        /// A name for the key (unique), e.g. who uses it.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: campaigns:write, campaigns:read, campaigns:control, audit:read.
        #[arg(long)]
        scope: String,
        /// Limit the key to campaigns whose name starts with this (repeatable; not empty:
        /// leave the flag out for a key that may see every campaign).
        #[arg(long, value_name = "PREFIX")]
        campaign_prefix: Vec<String>,
    },
    /// List keys (names, ids, scopes; never the keys themselves).
    List {
        /// Print JSON Lines instead.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: requests with it get 401 from then on.
    Revoke {
        /// The key's name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct DncImportArgs {
    /// The list: CSV with a header row or JSON Lines, or '-' for standard input.
    pub file: PathBuf,
    #[arg(long, value_parser = clap::value_parser!(Format), value_name = "csv|jsonl")]
    pub format: Option<Format>,
    #[arg(long, default_value = "number", value_name = "NAME")]
    pub number_column: String,
    #[arg(long, value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    #[arg(long, value_name = "CC")]
    pub default_region: Option<String>,
    /// Why (kept with every entry).
    #[arg(long)]
    pub reason: Option<String>,
    /// Write rejected lines to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn enqueue_needs_a_message_and_takes_the_documented_flags() {
        let base = ["producer", "enqueue", "--campaign", "c", "--contacts", "x.csv"];
        assert!(Cli::try_parse_from(base).is_err());
        let cli = Cli::try_parse_from(base.iter().copied().chain([
            "--message",
            "hi",
            "--window",
            "09:00-20:00",
            "--timezone",
            "Europe/London",
        ]))
        .unwrap();
        let Command::Enqueue(args) = cli.command else { panic!() };
        assert_eq!(args.timezone, Some(chrono_tz::Europe::London));
        assert!(
            Cli::try_parse_from(base.iter().copied().chain(["--message", "hi", "--timezone", "Mars/Base"]))
                .is_err()
        );
    }

    #[test]
    fn enqueue_takes_a_file_or_a_saved_list_not_both_nor_neither() {
        let base = ["producer", "enqueue", "--campaign", "c", "--message", "hi"];
        let with =
            |extra: &[&'static str]| Cli::try_parse_from(base.iter().copied().chain(extra.iter().copied()));
        let Command::Enqueue(args) = with(&["--list", "oncall"]).unwrap().command else { panic!() };
        assert_eq!((args.list.as_deref(), args.contacts), (Some("oncall"), None));
        assert!(with(&["--contacts", "a.csv"]).is_ok());
        assert!(with(&["--contacts", "a.csv", "--list", "oncall"]).is_err());
        assert!(with(&[]).is_err());
    }

    #[test]
    fn list_alone_lists_campaigns_and_its_subcommands_manage_contact_lists() {
        let Command::List(args) = Cli::try_parse_from(["producer", "list", "--json"]).unwrap().command else {
            panic!()
        };
        assert!(args.json && args.command.is_none());
        let cli = Cli::try_parse_from(["producer", "list", "import", "oncall", "a.csv"]).unwrap();
        let Command::List(ListArgs { command: Some(ListCommand::Import(import)), .. }) = cli.command else {
            panic!()
        };
        assert_eq!((import.name.as_str(), import.file.to_str()), ("oncall", Some("a.csv")));
        assert!(Cli::try_parse_from(["producer", "list", "show"]).is_ok());
        assert!(Cli::try_parse_from(["producer", "list", "show", "--contacts"]).is_err());
        assert!(Cli::try_parse_from(["producer", "list", "--json", "delete", "x"]).is_err());
    }
}
