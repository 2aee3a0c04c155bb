//! Configuration values the core's code takes, without the flags that
//! fill them: those are `tocsin-config`'s (clap argument groups every binary
//! flattens into its own config), so the core and the libraries on it (the
//! enqueue library) carry no command-line parser. `test_env` is where tests
//! read the same variables; this module and the binaries' `config.rs` are
//! the only places that read the environment.

use secrecy::SecretString;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?}: the log format is text or json")),
        }
    }
}

/// The Vonage settings a worker needs to place calls, once checked.
#[derive(Clone, Debug)]
pub struct VonageCredentials {
    pub api_url: String,
    pub application_id: String,
    pub private_key_pem: SecretString,
}

/// The Twilio settings a worker needs to place calls, once checked.
#[derive(Clone, Debug)]
pub struct TwilioCredentials {
    pub api_url: String,
    pub account_sid: String,
    pub auth_token: SecretString,
}

/// The Telnyx settings needed to place calls and send call commands.
#[derive(Clone, Debug)]
pub struct TelnyxCredentials {
    pub api_url: String,
    pub api_key: SecretString,
    pub connection_id: String,
}

/// One provider account's credentials.
#[derive(Clone, Debug)]
pub enum Credentials {
    Vonage(VonageCredentials),
    Twilio(TwilioCredentials),
    Telnyx(TelnyxCredentials),
}

/// The provider's own name of an account, from its non-secret id
/// (`vonage:APPLICATION_ID`, `twilio:ACCOUNT_SID`, `telnyx:CONNECTION_ID`):
/// the key of its shared rate limit and lines. `VoiceProvider::account` of
/// each client and `Credentials::account_key` both give this.
pub fn account_key(provider: crate::provider::Provider, id: &str) -> String {
    format!("{provider}:{id}")
}

impl Credentials {
    /// `account_key` of these credentials (the same as their client's).
    pub fn account_key(&self) -> String {
        use crate::provider::Provider;
        match self {
            Self::Vonage(c) => account_key(Provider::Vonage, &c.application_id),
            Self::Twilio(c) => account_key(Provider::Twilio, &c.account_sid),
            Self::Telnyx(c) => account_key(Provider::Telnyx, &c.connection_id),
        }
    }
}

/// One named provider account, as configured: its credentials, its
/// limits, and what verifies its webhooks (Vonage's signature secret,
/// Telnyx's public key; Twilio's is the auth token).
#[derive(Clone, Debug)]
pub struct AccountConfig {
    pub name: crate::route::AccountName,
    pub credentials: Credentials,
    pub limits: crate::account::Limits,
    pub webhook_key: Option<SecretString>,
}

/// Where tests find the local services: the same variables as the
/// binaries, with the same defaults.
pub mod test_env {
    fn var(name: &str, default: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| default.to_owned())
    }

    pub fn database_url() -> String {
        var("TOCSIN_DATABASE_URL", "postgres://localhost/tocsin")
    }

    pub fn amqp_url() -> String {
        var("TOCSIN_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    }

    pub fn redis_url() -> String {
        var("TOCSIN_REDIS_URL", "redis://127.0.0.1:6379")
    }
}
