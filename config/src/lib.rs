//! The command-line and environment settings the binaries share, as clap
//! argument groups. Each binary composes them into its own typed config
//! (`#[command(flatten)]`); every field is both a CLI flag and an
//! environment variable, and this crate plus the binaries' `config.rs` are
//! the only places that read the environment. What they produce (the
//! providers' credentials, the log format) are `tocsin_core::config`'s
//! plain types, so the core carries no command-line parser.

pub mod accounts;

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use tocsin_core::config::{LogFormat, TelnyxCredentials, TwilioCredentials, VonageCredentials};
use tocsin_core::provider::Provider;

/// Clap value parser for secrets: the value goes straight into a `SecretString`.
pub fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long = "database-url",
        env = "TOCSIN_DATABASE_URL", hide_env_values = true,
        default_value = "postgres://localhost/tocsin",
        value_parser = secret,
        hide_default_value = false
    )]
    pub database_url: SecretString,
}

#[derive(clap::Args, Clone, Debug)]
pub struct AmqpArgs {
    /// RabbitMQ connection URL.
    #[arg(
        long = "amqp-url",
        env = "TOCSIN_AMQP_URL", hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = secret
    )]
    pub amqp_url: SecretString,

    /// Prefix of every exchange and queue name (lets tests and several
    /// installations share one broker).
    #[arg(long = "queue-prefix", env = "TOCSIN_QUEUE_PREFIX", default_value = "tocsin")]
    pub queue_prefix: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct RedisArgs {
    /// Redis URL of the shared rate limiter.
    #[arg(
        long = "redis-url",
        env = "TOCSIN_REDIS_URL", hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        value_parser = secret
    )]
    pub redis_url: SecretString,

    /// Prefix of every Redis key Tocsin writes.
    #[arg(long = "redis-prefix", env = "TOCSIN_REDIS_PREFIX", default_value = "tocsin")]
    pub redis_prefix: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log line format. The level is set with RUST_LOG (default `info,sqlx=warn`).
    #[arg(long = "log-format", env = "TOCSIN_LOG_FORMAT", default_value = "text", value_parser = clap::value_parser!(LogFormat), value_name = "text|json")]
    pub log_format: LogFormat,
}

/// Vonage credentials and endpoints. The provider counts as configured when
/// an application id is given; then the private key is required.
#[derive(clap::Args, Clone, Debug)]
pub struct VonageArgs {
    /// Base URL of the Vonage API (the simulator's in tests and the demo).
    #[arg(
        long = "vonage-api-url",
        env = "TOCSIN_VONAGE_API_URL",
        hide_env_values = true,
        default_value = "https://api.nexmo.com"
    )]
    pub vonage_api_url: String,

    /// Vonage application id (the `application_id` JWT claim).
    #[arg(long = "vonage-application-id", env = "TOCSIN_VONAGE_APPLICATION_ID")]
    pub vonage_application_id: Option<String>,

    /// PEM file with the application's RSA private key.
    #[arg(long = "vonage-private-key-path", env = "TOCSIN_VONAGE_PRIVATE_KEY_PATH")]
    pub vonage_private_key_path: Option<PathBuf>,
}

/// Twilio credentials and endpoints. Configured when an account SID is given.
#[derive(clap::Args, Clone, Debug)]
pub struct TwilioArgs {
    /// Base URL of the Twilio API.
    #[arg(
        long = "twilio-api-url",
        env = "TOCSIN_TWILIO_API_URL",
        hide_env_values = true,
        default_value = "https://api.twilio.com"
    )]
    pub twilio_api_url: String,

    /// Twilio account SID (`AC…`).
    #[arg(long = "twilio-account-sid", env = "TOCSIN_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token: API password and webhook signing key.
    #[arg(long = "twilio-auth-token", env = "TOCSIN_TWILIO_AUTH_TOKEN", hide_env_values = true, value_parser = secret)]
    pub twilio_auth_token: Option<SecretString>,
}

/// Telnyx credentials and endpoints. Configured when a connection id is given.
#[derive(clap::Args, Clone, Debug)]
pub struct TelnyxArgs {
    /// Base URL of the Telnyx API.
    #[arg(
        long = "telnyx-api-url",
        env = "TOCSIN_TELNYX_API_URL",
        hide_env_values = true,
        default_value = "https://api.telnyx.com"
    )]
    pub telnyx_api_url: String,

    /// Telnyx API key (Bearer).
    #[arg(long = "telnyx-api-key", env = "TOCSIN_TELNYX_API_KEY", hide_env_values = true, value_parser = secret)]
    pub telnyx_api_key: Option<SecretString>,

    /// Telnyx Call Control connection id.
    #[arg(long = "telnyx-connection-id", env = "TOCSIN_TELNYX_CONNECTION_ID")]
    pub telnyx_connection_id: Option<String>,

    /// Telnyx account public key (base64 Ed25519) that signs webhooks.
    #[arg(long = "telnyx-public-key", env = "TOCSIN_TELNYX_PUBLIC_KEY")]
    pub telnyx_public_key: Option<String>,
}

/// Every provider's settings, for binaries that talk to all of them.
#[derive(clap::Args, Clone, Debug)]
pub struct ProviderArgs {
    #[command(flatten)]
    pub vonage: VonageArgs,
    #[command(flatten)]
    pub twilio: TwilioArgs,
    #[command(flatten)]
    pub telnyx: TelnyxArgs,
    #[command(flatten)]
    pub accounts: accounts::AccountsArgs,
}

impl ProviderArgs {
    /// The providers whose identifying setting is present (application id,
    /// account SID, connection id). Whether their secrets are complete is
    /// checked when a client is built.
    pub fn configured(&self) -> Vec<Provider> {
        let mut out = Vec::new();
        if self.vonage.vonage_application_id.is_some() {
            out.push(Provider::Vonage);
        }
        if self.twilio.twilio_account_sid.is_some() {
            out.push(Provider::Twilio);
        }
        if self.telnyx.telnyx_connection_id.is_some() {
            out.push(Provider::Telnyx);
        }
        out
    }
}

impl VonageArgs {
    /// `Ok(None)` when Vonage is not configured at all; an error naming the
    /// missing or unreadable variable when it is half configured.
    pub fn credentials(&self) -> anyhow::Result<Option<VonageCredentials>> {
        let Some(application_id) = self.vonage_application_id.clone() else {
            return Ok(None);
        };
        let path = self.vonage_private_key_path.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "TOCSIN_VONAGE_APPLICATION_ID is set but TOCSIN_VONAGE_PRIVATE_KEY_PATH is not: \
                 Vonage needs the application's private key to sign its JWTs"
            )
        })?;
        let pem = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read TOCSIN_VONAGE_PRIVATE_KEY_PATH ({}): {e}", path.display())
        })?;
        Ok(Some(VonageCredentials {
            api_url: self.vonage_api_url.trim_end_matches('/').to_owned(),
            application_id,
            private_key_pem: SecretString::from(pem),
        }))
    }
}

impl TwilioArgs {
    /// `Ok(None)` when Twilio is not configured (no account SID); an error
    /// naming the missing variable when the auth token is absent.
    pub fn credentials(&self) -> anyhow::Result<Option<TwilioCredentials>> {
        let Some(account_sid) = self.twilio_account_sid.clone() else {
            return Ok(None);
        };
        let auth_token = self.twilio_auth_token.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "TOCSIN_TWILIO_ACCOUNT_SID is set but TOCSIN_TWILIO_AUTH_TOKEN is not: \
                 Twilio needs the auth token to authenticate API requests"
            )
        })?;
        if !twilio_sid_ok(&account_sid) {
            anyhow::bail!(
                "TOCSIN_TWILIO_ACCOUNT_SID is not a Twilio account SID (AC followed by 32 hexadecimal digits)"
            );
        }
        Ok(Some(TwilioCredentials {
            api_url: self.twilio_api_url.trim_end_matches('/').to_owned(),
            account_sid,
            auth_token,
        }))
    }
}

impl TelnyxArgs {
    /// `Ok(None)` when Telnyx is not configured (no connection id); an error
    /// naming the missing variable when the API key is absent.
    pub fn credentials(&self) -> anyhow::Result<Option<TelnyxCredentials>> {
        let Some(connection_id) = self.telnyx_connection_id.clone() else {
            return Ok(None);
        };
        let api_key = self.telnyx_api_key.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "TOCSIN_TELNYX_CONNECTION_ID is set but TOCSIN_TELNYX_API_KEY is not: \
                 Telnyx needs the API key to authenticate API requests"
            )
        })?;
        Ok(Some(TelnyxCredentials {
            api_url: self.telnyx_api_url.trim_end_matches('/').to_owned(),
            api_key,
            connection_id,
        }))
    }
}

/// `AC` and 32 hexadecimal digits, as every Twilio account SID.
pub(crate) fn twilio_sid_ok(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("AC") && sid[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// A duration in humantime's syntax (`500ms`, `25s`, `2m`, `1h30m`); a
/// bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let duration = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration ({e}); try 500ms, 25s, 2m or 1h"))?,
    };
    // Every duration Tocsin takes is far below a year; a bound keeps the
    // deadlines computed from it from overflowing.
    if duration > MAX_DURATION {
        return Err(format!("{s:?} is longer than the most accepted, 366 days"));
    }
    Ok(duration)
}

/// The longest duration any flag takes.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_twilio_account_sid_stops_at_start_naming_the_variable() {
        let args = |sid: &str| TwilioArgs {
            twilio_api_url: "https://api.twilio.com".into(),
            twilio_account_sid: Some(sid.into()),
            twilio_auth_token: Some(SecretString::from("t")),
        };
        let error = args("ACnot-a-sid").credentials().unwrap_err().to_string();
        assert!(error.contains("TOCSIN_TWILIO_ACCOUNT_SID"), "{error}");
        assert!(args("AC0123456789abcdef0123456789abcdef").credentials().unwrap().is_some());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("99999999999999999999").is_err(), "too large for u64");
        assert!(parse_duration("999999999999999").is_err(), "fits, but past a year");
        assert!(parse_duration("366d").is_ok() && parse_duration("367d").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn half_configured_vonage_names_the_missing_variable() {
        let args = VonageArgs {
            vonage_api_url: "http://127.0.0.1:1".into(),
            vonage_application_id: Some("app".into()),
            vonage_private_key_path: None,
        };
        let err = args.credentials().unwrap_err().to_string();
        assert!(err.contains("TOCSIN_VONAGE_PRIVATE_KEY_PATH"), "{err}");
        let none = VonageArgs { vonage_application_id: None, ..args };
        assert!(none.credentials().unwrap().is_none());
    }

    #[test]
    fn half_configured_twilio_and_telnyx_name_the_missing_variable() {
        let twilio = TwilioArgs {
            twilio_api_url: "http://127.0.0.1:1/".into(),
            twilio_account_sid: Some("AC0123456789abcdef0123456789abcdef".into()),
            twilio_auth_token: None,
        };
        let err = twilio.credentials().unwrap_err().to_string();
        assert!(err.contains("TOCSIN_TWILIO_AUTH_TOKEN"), "{err}");
        let ok = TwilioArgs { twilio_auth_token: Some(SecretString::from("t")), ..twilio.clone() };
        assert_eq!(ok.credentials().unwrap().unwrap().api_url, "http://127.0.0.1:1");
        assert!(TwilioArgs { twilio_account_sid: None, ..twilio }.credentials().unwrap().is_none());

        let telnyx = TelnyxArgs {
            telnyx_api_url: "http://127.0.0.1:1".into(),
            telnyx_api_key: None,
            telnyx_connection_id: Some("conn".into()),
            telnyx_public_key: None,
        };
        let err = telnyx.credentials().unwrap_err().to_string();
        assert!(err.contains("TOCSIN_TELNYX_API_KEY"), "{err}");
        assert!(TelnyxArgs { telnyx_connection_id: None, ..telnyx }.credentials().unwrap().is_none());
    }
}
