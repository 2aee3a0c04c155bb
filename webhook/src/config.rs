//! The webhook service's configuration (`webhook --help` lists it).

use std::net::SocketAddr;

use clap::Parser;
use secrecy::SecretString;
use tocsin_config::{AmqpArgs, DatabaseArgs, TelemetryArgs, parse_duration, secret};
use tocsin_core::config::TelnyxCredentials;
use tocsin_core::telnyx::PublicKey;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "webhook",
    version,
    about = "Serves the answer documents providers fetch and stores every call event they post, \
             verified, in PostgreSQL.",
    after_help = "Example:\n  TOCSIN_VONAGE_SIGNATURE_SECRET=... webhook --http-addr 0.0.0.0:8080"
)]
pub struct WebhookConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Twilio: the auth token verifies `X-Twilio-Signature`.
    #[command(flatten)]
    pub twilio: tocsin_config::TwilioArgs,
    /// Telnyx: the public key verifies events; the API key sends speak and hang-up commands.
    #[command(flatten)]
    pub telnyx: tocsin_config::TelnyxArgs,

    /// Base URL at which providers reach this service (Twilio signs the URLs it is given).
    #[arg(
        long = "public-url",
        env = "TOCSIN_PUBLIC_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    /// RabbitMQ, for publishing redials of busy / unanswered calls.
    #[command(flatten)]
    pub amqp: AmqpArgs,

    /// Listen address of the webhook routes, /healthz, /readyz and /metrics.
    #[arg(long = "http-addr", env = "TOCSIN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Secret Vonage signs its event webhooks with (HS256). Required unless
    /// signature checks are disabled.
    #[arg(long = "vonage-signature-secret", env = "TOCSIN_VONAGE_SIGNATURE_SECRET", hide_env_values = true, value_parser = secret)]
    pub vonage_signature_secret: Option<SecretString>,

    /// Vonage: the application's id and key, to confirm an unsigned event
    /// with Vonage (`GET /v1/calls/{uuid}`) instead of refusing it.
    #[command(flatten)]
    pub vonage: tocsin_config::VonageArgs,

    /// An unsigned Vonage event (an application without signed_callbacks, or
    /// Vonage after an internal error): `confirm` asks Vonage for the call's
    /// state and applies only that (needs TOCSIN_VONAGE_APPLICATION_ID and
    /// TOCSIN_VONAGE_PRIVATE_KEY_PATH); `refuse` answers 401 (strict mode).
    #[arg(long = "vonage-unsigned-events", env = "TOCSIN_VONAGE_UNSIGNED_EVENTS", default_value = "confirm", value_parser = ["confirm", "refuse"])]
    pub vonage_unsigned_events: String,

    /// Most Vonage look-ups per second for unsigned events, across this
    /// replica (above it: 503, and Vonage sends the event again).
    #[arg(long = "vonage-confirm-rate", env = "TOCSIN_VONAGE_CONFIRM_RATE", default_value_t = 10)]
    pub vonage_confirm_rate: u32,

    /// DEVELOPMENT ONLY: accept unsigned and forged webhooks.
    #[arg(long = "insecure-skip-signature-check", env = "TOCSIN_INSECURE_SKIP_SIGNATURE_CHECK")]
    pub insecure_skip_signature_check: bool,

    /// Group commit: how long an event waits for others to share its transaction.
    #[arg(long = "batch-window", env = "TOCSIN_WEBHOOK_BATCH_WINDOW", default_value = "2ms", value_parser = parse_duration)]
    pub batch_window: std::time::Duration,

    /// Group commit: the most events in one transaction.
    #[arg(long = "batch-max", env = "TOCSIN_WEBHOOK_BATCH_MAX", default_value_t = 500)]
    pub batch_max: usize,

    /// Group commit: transactions written at once.
    #[arg(long = "batch-writers", env = "TOCSIN_WEBHOOK_BATCH_WRITERS", default_value_t = 4)]
    pub batch_writers: usize,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long = "max-body-bytes", env = "TOCSIN_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// The workers' calls-per-second limit (the same TOCSIN_RATE_PER_SEC), drawn as the
    /// limit line of the dashboard's rate chart; unset, the chart has no line.
    #[arg(long = "rate-per-sec", env = "TOCSIN_RATE_PER_SEC")]
    pub rate_per_sec: Option<f64>,

    /// Largest request body the HTTP API (`/api/v1`) accepts, in bytes
    /// (larger ones get 413); bounds a campaign's inline contact list.
    #[arg(long = "api-max-body-bytes", env = "TOCSIN_API_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub api_max_body_bytes: usize,

    /// Redis, where the workers share each account's health, rate and lines (read by
    /// `GET /api/v1/accounts`; events are stored without it).
    #[command(flatten)]
    pub redis: tocsin_config::RedisArgs,

    /// Named provider accounts beyond each provider's own variables (the same file as the
    /// workers'): their webhooks verify with their own keys, Telnyx's commands go through the
    /// account that placed the call.
    #[command(flatten)]
    pub accounts: tocsin_config::accounts::AccountsArgs,

    /// The workers' per-account limits (the same TOCSIN_RATES and TOCSIN_MAX_CONCURRENT_CALLS),
    /// shown by `GET /api/v1/accounts`.
    #[command(flatten)]
    pub limits: tocsin_config::accounts::LimitArgs,

    /// The accounts' breaker, as the workers count (the same TOCSIN_ACCOUNT_* variables): a
    /// call refused past its account's channel limit counts as one of its failures.
    #[command(flatten)]
    pub health: tocsin_config::accounts::HealthArgs,

    /// Proxies in front of this service (comma-separated addresses or CIDR
    /// blocks, e.g. an ingress controller's pod network). A request from one
    /// of them is attributed to the address it names in `X-Forwarded-For`
    /// (the right-most one that is not itself a trusted proxy); from any
    /// other peer the header is ignored. The audit log's "from where".
    #[arg(long = "trusted-proxies", env = "TOCSIN_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// One `--trusted-proxies` entry: a CIDR block, or one address.
fn parse_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"))
}

impl WebhookConfig {
    /// The accounts file's accounts (none without a file), checked: each
    /// must carry what verifies its webhooks unless checks are off.
    pub fn file_accounts(&self) -> anyhow::Result<Vec<tocsin_core::config::AccountConfig>> {
        let Some(path) = &self.accounts.accounts_file else {
            return Ok(Vec::new());
        };
        let rate = tocsin_core::account::Rate::per_second(self.rate_per_sec.unwrap_or(2.0));
        let accounts = tocsin_config::accounts::read_accounts_file(path, rate)?;
        for account in &accounts {
            if account.webhook_key.is_none() && !self.insecure_skip_signature_check {
                let field = match account.name.provider {
                    tocsin_core::provider::Provider::Vonage => "signature_secret",
                    tocsin_core::provider::Provider::Twilio => "auth_token",
                    tocsin_core::provider::Provider::Telnyx => "public_key",
                };
                anyhow::bail!(
                    "the accounts file {}: [{}.{}] has no `{field}`: its webhooks could not be verified",
                    path.display(),
                    account.name.provider,
                    account.name.label
                );
            }
        }
        Ok(accounts)
    }

    /// Every account configured here with its limits and its provider's
    /// own name for it: each provider's `default` (from its variables; one
    /// whose API credentials this service lacks is left out) and the
    /// accounts file's.
    pub fn known_accounts(&self) -> Vec<crate::api::accounts::KnownAccount> {
        let providers = tocsin_config::ProviderArgs {
            vonage: self.vonage.clone(),
            twilio: self.twilio.clone(),
            telnyx: self.telnyx.clone(),
            accounts: self.accounts.clone(),
        };
        let rate = tocsin_core::account::Rate::per_second(self.rate_per_sec.unwrap_or(2.0));
        match providers.accounts(rate, &self.limits) {
            Ok(accounts) => accounts
                .into_iter()
                .map(|a| crate::api::accounts::KnownAccount {
                    key: a.credentials.account_key(),
                    name: a.name,
                    limits: a.limits,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "the accounts' view (/api/v1/accounts) lists none");
                Vec::new()
            }
        }
    }

    /// Accounts a campaign created through the API may route through:
    /// each verifiable provider's `default` and the accounts file's.
    /// (`file`: `file_accounts`, read once at start.)
    pub fn api_accounts(
        &self,
        file: &[tocsin_core::config::AccountConfig],
    ) -> Vec<tocsin_core::route::AccountName> {
        let mut out: Vec<_> =
            self.api_providers().into_iter().map(tocsin_core::route::AccountName::default_of).collect();
        out.extend(file.iter().map(|a| a.name.clone()));
        out
    }

    /// Providers a campaign created through the API may use: those whose
    /// events this service can verify (all of them when checks are off).
    pub fn api_providers(&self) -> Vec<tocsin_core::provider::Provider> {
        use tocsin_core::provider::Provider;
        let skip = self.insecure_skip_signature_check;
        let mut out = Vec::new();
        if skip || self.vonage_signature_secret.is_some() {
            out.push(Provider::Vonage);
        }
        if skip || self.twilio.twilio_auth_token.is_some() {
            out.push(Provider::Twilio);
        }
        if skip || self.telnyx.telnyx_public_key.is_some() {
            out.push(Provider::Telnyx);
        }
        out
    }

    /// Start-up check of the provider settings; the error names the
    /// variable to set. `webhook` calls it before anything else.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.check_twilio()?;
        self.telnyx_settings()?;
        if !self.file_accounts()?.is_empty() {
            return Ok(());
        }
        let any_secret = self.vonage_signature_secret.is_some()
            || self.twilio.twilio_auth_token.is_some()
            || self.telnyx.telnyx_public_key.is_some();
        if !any_secret && !self.insecure_skip_signature_check {
            anyhow::bail!(
                "no provider's webhook secret is set, so no event could be verified: set \
                 TOCSIN_VONAGE_SIGNATURE_SECRET, TOCSIN_TWILIO_AUTH_TOKEN or TOCSIN_TELNYX_PUBLIC_KEY \
                 (or pass --insecure-skip-signature-check for local development only)"
            );
        }
        Ok(())
    }

    /// An account SID without its auth token cannot verify anything Twilio sends.
    fn check_twilio(&self) -> anyhow::Result<()> {
        let twilio = &self.twilio;
        if twilio.twilio_account_sid.is_some()
            && twilio.twilio_auth_token.is_none()
            && !self.insecure_skip_signature_check
        {
            anyhow::bail!(
                "TOCSIN_TWILIO_ACCOUNT_SID is set but TOCSIN_TWILIO_AUTH_TOKEN is not: \
                 Twilio's webhooks cannot be verified without it"
            );
        }
        Ok(())
    }

    /// Whether unsigned Vonage events are confirmed with Vonage: `Ok(None)`
    /// in strict mode, with checks off, or without Vonage credentials here.
    pub fn vonage_confirm(&self) -> anyhow::Result<Option<tocsin_core::config::VonageCredentials>> {
        if self.insecure_skip_signature_check || self.vonage_unsigned_events == "refuse" {
            return Ok(None);
        }
        self.vonage.credentials()
    }

    /// The Vonage signature secret the event handler checks; `None` when
    /// checks are off (or Vonage is not configured, which refuses every event).
    pub fn vonage_secret(&self) -> Option<SecretString> {
        if self.insecure_skip_signature_check { None } else { self.vonage_signature_secret.clone() }
    }

    /// Telnyx's settings, checked: `None` when no Telnyx setting is given;
    /// an error naming the variable when one is missing or malformed.
    pub fn telnyx_settings(&self) -> anyhow::Result<Option<TelnyxSettings>> {
        let t = &self.telnyx;
        let any =
            t.telnyx_connection_id.is_some() || t.telnyx_api_key.is_some() || t.telnyx_public_key.is_some();
        if !any {
            return Ok(None);
        }
        let public_key =
            match &t.telnyx_public_key {
                Some(key) => Some(PublicKey::from_base64(key).map_err(|e| {
                    anyhow::anyhow!("TOCSIN_TELNYX_PUBLIC_KEY is not a Telnyx public key: {e}")
                })?),
                None if self.insecure_skip_signature_check => None,
                None => anyhow::bail!(
                    "Telnyx is configured but TOCSIN_TELNYX_PUBLIC_KEY is not set: \
                 Telnyx's webhooks cannot be verified without it"
                ),
            };
        let Some(api_key) = t.telnyx_api_key.clone() else {
            anyhow::bail!(
                "Telnyx is configured but TOCSIN_TELNYX_API_KEY is not set: the webhook service \
                 needs it to send the speak and hang-up commands"
            );
        };
        let credentials = TelnyxCredentials {
            api_url: t.telnyx_api_url.trim_end_matches('/').to_owned(),
            api_key,
            connection_id: t.telnyx_connection_id.clone().unwrap_or_default(),
        };
        Ok(Some(TelnyxSettings { public_key, credentials }))
    }
}

/// Telnyx's checked settings: the key that verifies its events and the
/// credentials of the command client.
pub struct TelnyxSettings {
    /// `None` only with `--insecure-skip-signature-check`.
    pub public_key: Option<PublicKey>,
    pub credentials: TelnyxCredentials,
}
