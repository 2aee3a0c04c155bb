//! The producer: the operator's CLI, a thin layer on the enqueue library
//! (`tocsin-enqueue`) and the core. It enqueues campaigns from contact
//! lists (`enqueue`), reports on them (`status`, `list`), controls them
//! (`pause`, `resume`, `cancel`, `delete`), keeps saved contact lists
//! (`list import|show|delete`, module `lists`), the do-not-call list
//! (`dnc`) and API keys (`apikey`).

/// `println!` that never panics: output to a closed pipe (`producer list | head`) is dropped.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `print!` that never panics.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `eprintln!` that never panics.
macro_rules! tell {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

pub mod apikey;
pub mod campaign;
pub mod config;
pub mod dnc;
pub mod enqueue;
pub mod lists;
pub mod status;

use anyhow::Context;
use secrecy::ExposeSecret;
use tocsin_core::{db, queue};
use tokio_util::sync::CancellationToken;

use crate::config::{
    ApikeyCommand, Cli, Command, DncCommand, ListArgs, ListCommand, RequeueDeadArgs, SignedCallbacksArgs,
    VonageCommand,
};
pub use crate::enqueue::{enqueue, enqueue_until};
use sqlx::PgPool;
pub use tocsin_enqueue::Report;

/// Errors with their own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    InputRejected(String),
    #[error(
        "{service} is unreachable: {detail} (is it running? deploy/local/up.sh starts the local services)"
    )]
    Unreachable { service: &'static str, detail: String },
    #[error("{0}")]
    TimedOut(String),
    #[error("interrupted; run the same command again to finish (nothing is enqueued twice)")]
    Interrupted,
}

/// The documented exit code for an error (see `producer --help`).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Fatal>() {
        Some(Fatal::Usage(_)) => 2,
        Some(Fatal::InputRejected(_)) => 3,
        Some(Fatal::Unreachable { .. }) => 4,
        Some(Fatal::TimedOut(_)) => 5,
        Some(Fatal::Interrupted) => 130,
        None => {
            // A connection lost mid-command is still "unreachable".
            match e.root_cause().downcast_ref::<sqlx::Error>() {
                Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => 4,
                _ => 1,
            }
        }
    }
}

/// Runs one command. `stop` (Ctrl-C, SIGTERM) makes `enqueue` and
/// `status --watch` finish early and cleanly.
pub async fn run(cli: Cli, stop: CancellationToken) -> anyhow::Result<()> {
    // The one command that needs no database: Vonage's own API.
    if let Command::Vonage(VonageCommand::SignedCallbacks(args)) = &cli.command {
        return vonage_signed_callbacks(args).await;
    }
    let pool = db::connect(&cli.database.database_url, 8).await.map_err(|e| Fatal::Unreachable {
        service: "PostgreSQL (TOCSIN_DATABASE_URL)",
        detail: e.to_string(),
    })?;
    db::migrate(&pool).await.context("applying database migrations")?;
    let audited = audit_entry(&cli.command);
    let result = execute(&pool, cli.command, stop).await;
    if let (Ok(()), Some((action, campaign, details))) = (&result, audited) {
        let actor = tocsin_core::audit::Actor {
            via: tocsin_core::audit::Via::Cli,
            name: config::os_user(),
            client: None,
        };
        // The action is done: a failure to record it is reported, not fatal.
        if let Err(e) = tocsin_core::audit::record(&pool, &actor, action, campaign.as_deref(), details).await
        {
            tell!("warning: the action was done but not written to the audit log: {e}");
        }
    }
    result
}

/// What the audit log records of a command that changes something: its
/// action, campaign and parameters (never a secret: an API key's name and
/// scopes, not the key).
fn audit_entry(command: &Command) -> Option<(&'static str, Option<String>, serde_json::Value)> {
    use serde_json::json;
    Some(match command {
        Command::Enqueue(a) if !a.dry_run => (
            "campaign.enqueue",
            Some(a.campaign.clone()),
            json!({
                "contacts": a.contacts.as_ref().map(|p| p.display().to_string()),
                "list": a.list, "provider": a.provider.map(|p| p.to_string()),
                "route": a.route.as_ref().map(ToString::to_string),
                "confirm": a.confirm, "until_confirmed": a.until_confirmed, "max_attempts": a.max_attempts,
                "expires_at": a.expires_at, "expires_in": a.expires_in.map(|d| d.as_secs()),
                "update_message": a.update_message, "update_settings": a.update_settings,
            }),
        ),
        Command::Pause(a) => ("campaign.pause", Some(a.name.clone()), json!({})),
        Command::Resume(a) => ("campaign.resume", Some(a.name.clone()), json!({})),
        Command::Route(a) => ("campaign.route", Some(a.name.clone()), json!({ "route": a.route })),
        Command::Cancel(a) => ("campaign.cancel", Some(a.name.clone()), json!({})),
        Command::Delete(a) => ("campaign.delete", Some(a.name.clone()), json!({})),
        Command::Dnc(DncCommand::Add { numbers, reason, .. }) => {
            ("dnc.add", None, json!({ "numbers": numbers, "reason": reason }))
        }
        Command::Dnc(DncCommand::Remove { numbers, .. }) => {
            ("dnc.remove", None, json!({ "numbers": numbers }))
        }
        Command::Dnc(DncCommand::Import(a)) => {
            ("dnc.import", None, json!({ "file": a.file.display().to_string(), "reason": a.reason }))
        }
        Command::List(ListArgs { command: Some(ListCommand::Import(a)), .. }) => {
            ("list.import", None, json!({ "list": a.name, "file": a.file.display().to_string() }))
        }
        Command::List(ListArgs { command: Some(ListCommand::Delete { name, .. }), .. }) => {
            ("list.delete", None, json!({ "list": name }))
        }
        Command::Apikey(ApikeyCommand::Create { name, scope, campaign_prefix }) => (
            "apikey.create",
            None,
            json!({ "name": name, "scopes": scope, "campaign_prefixes": campaign_prefix }),
        ),
        Command::Apikey(ApikeyCommand::Revoke { name }) => ("apikey.revoke", None, json!({ "name": name })),
        Command::RequeueDead(a) => ("dead.requeue", a.campaign.clone(), json!({})),
        _ => return None,
    })
}

async fn execute(pool: &PgPool, command: Command, stop: CancellationToken) -> anyhow::Result<()> {
    let pool = pool.clone();
    match command {
        Command::Enqueue(args) => {
            let report = enqueue_until(&pool, &args, stop).await?;
            if args.json {
                let json = enqueue::JsonReport { report: &report, rejects_file: args.rejects.as_deref() };
                say!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                enqueue::print_report(&report, args.rejects.as_deref());
            }
            let input = match (&args.list, &args.contacts) {
                (Some(list), _) => format!("list {list}"),
                (None, contacts) => {
                    contacts.as_deref().unwrap_or(std::path::Path::new("-")).display().to_string()
                }
            };
            check_report(&report, &input)
        }
        Command::Status(args) => status::status(&pool, &args, stop).await,
        Command::List(args) => match args.command {
            None => campaign::list(&pool, args.json).await,
            Some(cmd) => lists::run(&pool, cmd, stop).await,
        },
        Command::Export(a) => campaign::export(&pool, &a).await,
        Command::Audit(a) => campaign::audit(&pool, &a).await,
        Command::Pause(a) => campaign::pause(&pool, &a.name).await,
        Command::Resume(a) => campaign::resume(&pool, &a.name).await,
        Command::Route(a) => campaign::route(&pool, &a, &a.providers.account_names()?).await,
        Command::Cancel(a) => campaign::cancel(&pool, &a.name, a.yes).await,
        Command::Delete(a) => campaign::delete(&pool, &a.name, a.yes).await,
        Command::Dnc(cmd) => dnc::run(&pool, cmd).await,
        Command::Apikey(cmd) => apikey::run(&pool, cmd).await,
        Command::Migrate => {
            say!("database schema is up to date");
            Ok(())
        }
        Command::RequeueDead(args) => requeue_dead(&pool, &args).await,
        Command::Vonage(_) => Ok(()),
    }
}

/// `producer requeue-dead`: publishes dead-lettered jobs (of one campaign
/// or all) to the work queue again, a batch per transaction: a batch leaves
/// `dead_jobs` only once the broker has confirmed it.
async fn requeue_dead(pool: &sqlx::PgPool, args: &RequeueDeadArgs) -> anyhow::Result<()> {
    let campaign = match &args.campaign {
        Some(name) => Some(campaign::find(pool, name).await?.id),
        None => None,
    };
    let amqp = queue::connect(args.amqp.amqp_url.expose_secret(), "tocsin-producer")
        .await
        .map_err(|e| Fatal::Unreachable { service: "RabbitMQ (TOCSIN_AMQP_URL)", detail: e.to_string() })?;
    let topology = queue::Topology::new(&args.amqp.queue_prefix);
    let channel = amqp.create_channel().await?;
    topology.declare(&channel).await.context("declaring the queue topology")?;
    let publisher = queue::Publisher::new(&amqp, topology).await?;
    let mut requeued = 0usize;
    loop {
        let mut tx = pool.begin().await?;
        let jobs = tocsin_core::dead::take(&mut tx, campaign, 1000).await?;
        if jobs.is_empty() {
            break;
        }
        publisher.publish_all(&jobs).await.context("publishing the jobs back to the work queue")?;
        tx.commit().await?;
        requeued += jobs.len();
    }
    queue::close(&amqp, "requeue-dead done").await;
    let scope = args.campaign.as_deref().map_or("all campaigns".to_owned(), |c| format!("campaign {c}"));
    say!("put {requeued} dead-lettered jobs back in the work queue ({scope})");
    let undecodable = tocsin_core::dead::undecodable(pool).await?;
    if undecodable > 0 {
        say!(
            "{undecodable} dead-lettered messages cannot be decoded and were left in dead_jobs \
             (SELECT id, reason, dead_at, convert_from(body, 'UTF8') FROM dead_jobs WHERE campaign_id IS NULL)"
        );
    }
    Ok(())
}

/// `producer vonage signed-callbacks`: reads, and unless `--check` sets,
/// the application's `capabilities.voice.signed_callbacks`.
async fn vonage_signed_callbacks(args: &SignedCallbacksArgs) -> anyhow::Result<()> {
    use tocsin_core::vonage::applications;
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(15)).build()?;
    let api = args.api_url.trim_end_matches('/');
    let unreachable = |e: anyhow::Error| Fatal::Unreachable {
        service: "Vonage (TOCSIN_VONAGE_API_URL)",
        detail: format!("{e:#}"),
    };
    let app = &args.application_id;
    if args.check {
        let on = applications::signed_callbacks(&http, api, app, &args.api_key, &args.api_secret)
            .await
            .map_err(unreachable)?;
        say!("application {app}: signed callbacks are {}", if on { "ON" } else { "OFF" });
        return Ok(());
    }
    let on = !args.off;
    let changed = applications::set_signed_callbacks(&http, api, app, &args.api_key, &args.api_secret, on)
        .await
        .map_err(unreachable)?;
    let word = if on { "ON" } else { "OFF" };
    if changed {
        say!("application {app}: signed callbacks are now {word}");
    } else {
        say!("application {app}: signed callbacks were already {word}; nothing changed");
    }
    Ok(())
}

/// Turns a finished report into the exit status: interrupted (130), or
/// input rejected entirely (3) when nothing in the list could be enqueued.
fn check_report(report: &Report, name: &str) -> anyhow::Result<()> {
    if report.interrupted {
        return Err(Fatal::Interrupted.into());
    }
    if report.read == 0 {
        return Err(Fatal::InputRejected(format!("{name}: no contacts in the list (only a header?)")).into());
    }
    if report.nothing_enqueued() {
        return Err(Fatal::InputRejected(format!(
            "{name}: every line was rejected ({} invalid, {} duplicate, {} do-not-call, {} malformed); nothing enqueued",
            report.invalid, report.duplicate, report.do_not_call, report.malformed
        ))
        .into());
    }
    Ok(())
}
