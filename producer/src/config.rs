//! The producer's command line (`producer --help`, `producer enqueue --help`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tocsin_core::config::{AmqpArgs, DatabaseArgs, TelemetryArgs, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "producer",
    version,
    about = "Enqueues voice-broadcast campaigns for Tocsin's workers and reports on them.",
    after_help = "Examples:\n  producer enqueue --campaign storm-warning --contacts contacts.csv \\\n      --message 'Severe storm warning for your area tonight.' --from +14155550100\n  producer status storm-warning --wait\n\nExit codes: 0 ok, 2 bad usage, 3 input rejected entirely, 4 a service unreachable, 1 other errors."
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
    #[command(
        after_help = "Example:\n  producer enqueue --campaign demo --contacts examples/contacts.csv \\\n      --message 'This is a test of the alert system.' --from +14155550100\n\nRe-running the same command enqueues nothing twice: contacts already in the\ncampaign are counted as 'already enqueued'; new contacts are added."
    )]
    Enqueue(EnqueueArgs),
    /// Show a campaign's calls by state.
    #[command(after_help = "Example:\n  producer status demo --wait --timeout 10m")]
    Status(StatusArgs),
    /// Apply the database migrations and exit (every command also applies them first).
    Migrate,
    /// Delete a campaign with its calls and events.
    Delete {
        /// Campaign name.
        name: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderArg {
    Vonage,
    Twilio,
    Telnyx,
}

#[derive(clap::Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,

    /// Campaign name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub campaign: String,

    /// Contact list: CSV with a header row.
    #[arg(long)]
    pub contacts: PathBuf,

    /// The message to speak (at most 1500 characters).
    #[arg(long)]
    pub message: String,

    /// Caller id, in E.164 form.
    #[arg(long, default_value = "+14155550100")]
    pub from: String,

    /// Voice provider to place the calls through.
    #[arg(long, value_enum, default_value = "vonage")]
    pub provider: ProviderArg,

    /// Language of the spoken message (BCP-47).
    #[arg(long, default_value = "en-US")]
    pub language: String,

    /// Times the message is spoken on each answered call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10))]
    pub repeat: i32,

    /// Name of the CSV column holding the phone number.
    #[arg(long, default_value = "number")]
    pub number_column: String,

    /// Region (ISO 3166, e.g. US, GB) for numbers written without a country code.
    #[arg(long)]
    pub default_region: Option<String>,

    /// Allow changing the message of an existing campaign (applies to calls not yet answered).
    #[arg(long)]
    pub update_message: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Campaign name.
    pub name: String,

    /// Show live progress until every call is in a terminal state.
    #[arg(long)]
    pub wait: bool,

    /// Give up waiting after this long (exit code 1).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
}
