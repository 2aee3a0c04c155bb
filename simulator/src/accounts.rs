//! The simulated accounts: several per provider, each with its own
//! credentials, its own signing keys for its calls' events, its own rate
//! limit, concurrent-call cap and outage flag, and its own stats.
//!
//! An account is named `PROVIDER:LABEL` (the label: 1-40 lowercase letters,
//! digits, `-` or `_`); a bare provider name means `PROVIDER:default`. The
//! `--vonage-*`, `--twilio-*` and `--telnyx-*` flags define the three
//! `default` accounts; `--accounts-file` adds more, one TOML table each:
//!
//! ```toml
//! [vonage.eu]
//! application_id = "app-eu"                        # required: the JWT claim that selects it
//! public_key_path = "keys/vonage_eu_public.pem"    # required: its JWTs must verify against it
//! signature_secret = "secret-eu"                   # required: signs its events (HS256)
//! rate = 2.0                                       # create-calls per second (default: --vonage-rate)
//! max_concurrent = 0                               # calls in progress at once; 0 = no cap (default)
//!
//! [twilio.b]
//! account_sid = "AC0123456789abcdef0123456789abcdef" # required: the SID in the URL path and Basic user
//! auth_token = "…"                                 # required: Basic password; signs its callbacks
//! cps = 2.0                                        # default: --twilio-cps
//! max_concurrent = 10
//!
//! [telnyx.b]
//! api_key = "KEY…"                                 # required: the Bearer key that selects it
//! connection_id = "conn-b"                         # dials must name it (any, when absent)
//! signing_seed_path = "keys/telnyx_b_seed"         # base64 Ed25519 seed; random when absent
//! dials_per_window = 10                            # default: --telnyx-dials-per-window
//! window = "5s"                                    # default: --telnyx-window
//! max_concurrent = 10
//! ```
//!
//! Relative paths are taken from the accounts file's own directory. A
//! `default` label in the file, an unknown provider or field, or a selecting
//! credential (application id, account SID, API key) used by two accounts
//! is an error naming the file, the account and the field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use tracing::info;

use crate::config::SimConfig;
use crate::stats::AccountLimits;
use crate::{telnyx, twilio, vonage};

pub const PROVIDERS: [&str; 3] = ["vonage", "twilio", "telnyx"];

/// The label of the accounts the flags define.
pub const DEFAULT_LABEL: &str = "default";

/// The full name of the account `s` names (`vonage` is `vonage:default`).
pub fn parse_name(s: &str) -> Result<String, String> {
    let (provider, label) = s.split_once(':').unwrap_or((s, DEFAULT_LABEL));
    if !PROVIDERS.contains(&provider) {
        return Err(format!("{provider:?} is not a provider (vonage, twilio or telnyx)"));
    }
    valid_label(label)?;
    Ok(format!("{provider}:{label}"))
}

fn valid_label(label: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    if (1..=40).contains(&label.len()) && label.bytes().all(allowed) {
        Ok(())
    } else {
        Err(format!("{label:?} is not a label (1-40 lowercase letters, digits, '-' or '_')"))
    }
}

/// The provider of an account name (`twilio` of `twilio:b`).
pub fn provider_of(name: &str) -> &str {
    name.split_once(':').map_or(name, |(provider, _)| provider)
}

pub struct VonageAccount {
    pub name: String,
    /// The `application_id` its JWTs carry; `None` (the default account
    /// without `--vonage-application-id`): any the other accounts do not claim.
    pub application_id: Option<String>,
    /// PEM public key its JWTs must verify against; without one every
    /// request to it is refused.
    pub public_key: Option<Vec<u8>>,
    pub signature_secret: String,
    /// The application's `capabilities.voice.signed_callbacks`.
    pub signed_callbacks: AtomicBool,
    pub rate: f64,
    pub max_concurrent: usize,
    pub limiter: vonage::Limiter,
}

pub struct TwilioAccount {
    pub name: String,
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
    pub cps: f64,
    pub max_concurrent: usize,
    pub queue: twilio::StartQueue,
}

pub struct TelnyxAccount {
    pub name: String,
    pub api_key: Option<String>,
    /// The connection its dials must name (any, when `None`).
    pub connection_id: Option<String>,
    pub signing_key: aws_lc_rs::signature::Ed25519KeyPair,
    pub dials_per_window: u32,
    pub window: Duration,
    pub max_concurrent: usize,
    pub limiter: telnyx::Limiter,
}

// Only the name: the rest holds secrets.
macro_rules! debug_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).field("name", &self.name).finish_non_exhaustive()
            }
        }
    )*};
}
debug_by_name!(VonageAccount, TwilioAccount, TelnyxAccount);

/// Every configured account, in the order configured (defaults first).
pub struct Accounts {
    pub vonage: Vec<Arc<VonageAccount>>,
    pub twilio: Vec<Arc<TwilioAccount>>,
    pub telnyx: Vec<Arc<TelnyxAccount>>,
}

impl Accounts {
    /// The flags' default accounts, then the accounts file's.
    pub fn load(config: &SimConfig) -> anyhow::Result<Self> {
        let mut accounts = Self::from_flags(config)?;
        if let Some(path) = &config.accounts_file {
            accounts.add_file(path, config)?;
        }
        for account in &accounts.telnyx {
            info!(
                account = %account.name,
                telnyx_public_key = %tocsin_core::telnyx::public_key_base64(&account.signing_key),
                "Telnyx account"
            );
        }
        Ok(accounts)
    }

    fn from_flags(config: &SimConfig) -> anyhow::Result<Self> {
        let public_key = match &config.vonage_public_key_path {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
            None => None,
        };
        let seed = match &config.telnyx_signing_seed_path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                decode_seed(&text)
                    .with_context(|| format!("{} does not hold a base64 seed", path.display()))?
            }
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let default = |provider: &str| format!("{provider}:{DEFAULT_LABEL}");
        Ok(Self {
            vonage: vec![Arc::new(VonageAccount {
                name: default("vonage"),
                application_id: config.vonage_application_id.clone(),
                public_key,
                signature_secret: config.vonage_signature_secret.clone(),
                signed_callbacks: AtomicBool::new(!config.vonage_unsigned_callbacks),
                rate: config.vonage_rate,
                max_concurrent: config.vonage_max_concurrent,
                limiter: vonage::limiter(config.vonage_rate),
            })],
            twilio: vec![Arc::new(TwilioAccount {
                name: default("twilio"),
                account_sid: config.twilio_account_sid.clone(),
                auth_token: config.twilio_auth_token.clone(),
                cps: config.twilio_cps,
                max_concurrent: config.twilio_max_concurrent,
                queue: twilio::StartQueue::new(config.twilio_cps),
            })],
            telnyx: vec![Arc::new(TelnyxAccount {
                name: default("telnyx"),
                api_key: config.telnyx_api_key.clone(),
                connection_id: config.telnyx_connection_id.clone(),
                signing_key: tocsin_core::telnyx::signing_key(&seed).map_err(anyhow::Error::msg)?,
                dials_per_window: config.telnyx_dials_per_window,
                window: config.telnyx_window,
                max_concurrent: config.telnyx_max_concurrent,
                limiter: telnyx::limiter(config.telnyx_dials_per_window, config.telnyx_window),
            })],
        })
    }

    fn add_file(&mut self, path: &Path, config: &SimConfig) -> anyhow::Result<()> {
        let file = path.display();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the accounts file {file}"))?;
        let table: toml::Table =
            text.parse().map_err(|e| anyhow::anyhow!("accounts file {file}: not valid TOML: {e}"))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for (provider, accounts) in &table {
            if !PROVIDERS.contains(&provider.as_str()) {
                anyhow::bail!(
                    "accounts file {file}: [{provider}] is not a provider (vonage, twilio or telnyx)"
                );
            }
            let Some(accounts) = accounts.as_table() else {
                anyhow::bail!(
                    "accounts file {file}: {provider} must hold one table per account ([{provider}.LABEL])"
                );
            };
            for (label, fields) in accounts {
                let name = format!("{provider}:{label}");
                let Some(table) = fields.as_table() else {
                    anyhow::bail!(
                        "accounts file {file}: {provider}.{label} must be a table of fields ([{provider}.LABEL])"
                    );
                };
                let at = Fields { file: path, account: &name, table, base };
                valid_label(label).map_err(|e| at.error(None, e))?;
                if label == DEFAULT_LABEL {
                    return Err(at.error(
                        None,
                        format!(
                            "{name} is already configured by the --{provider}-* flags; give this account another label"
                        ),
                    ));
                }
                match provider.as_str() {
                    "vonage" => {
                        let account = at.vonage(config)?;
                        if let Some(other) =
                            self.vonage.iter().find(|a| a.application_id == account.application_id)
                        {
                            return Err(at.error(
                                Some("application_id"),
                                format!(
                                    "{:?} is already the application of {}",
                                    account.application_id, other.name
                                ),
                            ));
                        }
                        self.vonage.push(Arc::new(account));
                    }
                    "twilio" => {
                        let account = at.twilio(config)?;
                        if let Some(other) = self.twilio.iter().find(|a| a.account_sid == account.account_sid)
                        {
                            return Err(at.error(
                                Some("account_sid"),
                                format!("{:?} is already the SID of {}", account.account_sid, other.name),
                            ));
                        }
                        self.twilio.push(Arc::new(account));
                    }
                    _ => {
                        let account = at.telnyx(config)?;
                        if let Some(other) = self.telnyx.iter().find(|a| a.api_key == account.api_key) {
                            return Err(at.error(
                                Some("api_key"),
                                format!("the same key is already the API key of {}", other.name),
                            ));
                        }
                        self.telnyx.push(Arc::new(account));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every account's name, Vonage's first, then Twilio's, then Telnyx's.
    pub fn names(&self) -> Vec<String> {
        let vonage = self.vonage.iter().map(|a| a.name.clone());
        let twilio = self.twilio.iter().map(|a| a.name.clone());
        vonage.chain(twilio).chain(self.telnyx.iter().map(|a| a.name.clone())).collect()
    }

    /// The Vonage account of JWTs naming `application_id`: the one
    /// configured with it, else a default account configured with none.
    pub fn vonage_for(&self, application_id: &str) -> Option<&Arc<VonageAccount>> {
        let exact = self.vonage.iter().find(|a| a.application_id.as_deref() == Some(application_id));
        exact.or_else(|| self.vonage.iter().find(|a| a.application_id.is_none()))
    }

    /// The Twilio account whose SID is `sid`.
    pub fn twilio_for(&self, sid: &str) -> Option<&Arc<TwilioAccount>> {
        self.twilio.iter().find(|a| a.account_sid.as_deref() == Some(sid))
    }

    /// The Telnyx account whose API key is `key`.
    pub fn telnyx_for(&self, key: &str) -> Option<&Arc<TelnyxAccount>> {
        self.telnyx.iter().find(|a| a.api_key.as_deref() == Some(key))
    }

    /// Each account's configured limits, for the stats.
    pub fn limits(&self) -> Vec<(String, AccountLimits)> {
        let vonage = self.vonage.iter().map(|a| {
            let limits = AccountLimits { rate: a.rate, max_concurrent: a.max_concurrent, window_secs: 1.0 };
            (a.name.clone(), limits)
        });
        let twilio = self.twilio.iter().map(|a| {
            let limits = AccountLimits { rate: a.cps, max_concurrent: a.max_concurrent, window_secs: 1.0 };
            (a.name.clone(), limits)
        });
        let telnyx = self.telnyx.iter().map(|a| {
            let window_secs = a.window.as_secs_f64();
            let rate = f64::from(a.dials_per_window) / window_secs;
            (a.name.clone(), AccountLimits { rate, max_concurrent: a.max_concurrent, window_secs })
        });
        vonage.chain(twilio).chain(telnyx).collect()
    }
}

fn decode_seed(text: &str) -> anyhow::Result<Vec<u8>> {
    Ok(base64::engine::general_purpose::STANDARD.decode(text.trim())?)
}

/// One account's table in the accounts file, read field by field so that
/// every error names the file, the account and the field.
struct Fields<'a> {
    file: &'a Path,
    account: &'a str,
    table: &'a toml::Table,
    /// Where relative paths start: the file's directory.
    base: &'a Path,
}

impl Fields<'_> {
    fn error(&self, field: Option<&str>, problem: impl fmt::Display) -> anyhow::Error {
        let file = self.file.display();
        match field {
            Some(field) => {
                anyhow::anyhow!("accounts file {file}: account {}: field {field}: {problem}", self.account)
            }
            None => anyhow::anyhow!("accounts file {file}: account {}: {problem}", self.account),
        }
    }

    /// Refuses fields not in `known` (a misspelt field would silently take its default).
    fn only(&self, known: &[&str]) -> anyhow::Result<()> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(field) => {
                Err(self.error(Some(field), format!("unknown field (the fields are {})", known.join(", "))))
            }
            None => Ok(()),
        }
    }

    fn string(&self, field: &str) -> anyhow::Result<Option<String>> {
        match self.table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(self.error(Some(field), format!("expected a non-empty string, got {other}"))),
        }
    }

    fn required(&self, field: &str) -> anyhow::Result<String> {
        self.string(field)?.ok_or_else(|| self.error(Some(field), "missing (it is required)"))
    }

    /// A positive number (integer or float).
    fn positive(&self, field: &str, default: f64) -> anyhow::Result<f64> {
        let value = match self.table.get(field) {
            None => return Ok(default),
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(other) => return Err(self.error(Some(field), format!("expected a number, got {other}"))),
        };
        if value.is_finite() && value > 0.0 {
            Ok(value)
        } else {
            Err(self.error(Some(field), format!("must be positive, got {value}")))
        }
    }

    /// A whole number of at least `min`.
    fn count(&self, field: &str, min: u64, default: u64) -> anyhow::Result<u64> {
        match self.table.get(field) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) if u64::try_from(*i).is_ok_and(|n| n >= min) => Ok(*i as u64),
            Some(other) => {
                Err(self
                    .error(Some(field), format!("expected a whole number of at least {min}, got {other}")))
            }
        }
    }

    /// A file's contents, its path relative to the accounts file's directory.
    fn read(&self, field: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        let full: PathBuf = self.base.join(path);
        std::fs::read(&full).map_err(|e| self.error(Some(field), format!("reading {}: {e}", full.display())))
    }

    fn vonage(&self, config: &SimConfig) -> anyhow::Result<VonageAccount> {
        self.only(&["application_id", "public_key_path", "signature_secret", "rate", "max_concurrent"])?;
        let application_id = self.required("application_id")?;
        let public_key = self.read("public_key_path", &self.required("public_key_path")?)?;
        if !String::from_utf8_lossy(&public_key).contains("PUBLIC KEY-----") {
            return Err(self.error(Some("public_key_path"), "the file holds no PEM public key"));
        }
        let rate = self.positive("rate", config.vonage_rate)?;
        Ok(VonageAccount {
            name: self.account.to_owned(),
            application_id: Some(application_id),
            public_key: Some(public_key),
            signature_secret: self.required("signature_secret")?,
            signed_callbacks: AtomicBool::new(true),
            rate,
            max_concurrent: self.count("max_concurrent", 0, 0)? as usize,
            limiter: vonage::limiter(rate),
        })
    }

    fn twilio(&self, config: &SimConfig) -> anyhow::Result<TwilioAccount> {
        self.only(&["account_sid", "auth_token", "cps", "max_concurrent"])?;
        let sid = self.required("account_sid")?;
        if !(sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(
                self.error(Some("account_sid"), format!("must be AC followed by 32 hex digits, got {sid:?}"))
            );
        }
        let cps = self.positive("cps", config.twilio_cps)?;
        Ok(TwilioAccount {
            name: self.account.to_owned(),
            account_sid: Some(sid),
            auth_token: Some(self.required("auth_token")?),
            cps,
            max_concurrent: self.count("max_concurrent", 0, 0)? as usize,
            queue: twilio::StartQueue::new(cps),
        })
    }

    fn telnyx(&self, config: &SimConfig) -> anyhow::Result<TelnyxAccount> {
        self.only(&[
            "api_key",
            "connection_id",
            "signing_seed_path",
            "dials_per_window",
            "window",
            "max_concurrent",
        ])?;
        let seed = match self.string("signing_seed_path")? {
            Some(path) => {
                let text = self.read("signing_seed_path", &path)?;
                decode_seed(&String::from_utf8_lossy(&text))
                    .map_err(|e| self.error(Some("signing_seed_path"), format!("not a base64 seed: {e}")))?
            }
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let signing_key =
            tocsin_core::telnyx::signing_key(&seed).map_err(|e| self.error(Some("signing_seed_path"), e))?;
        let per_window = self.count("dials_per_window", 1, u64::from(config.telnyx_dials_per_window))?;
        let dials_per_window =
            u32::try_from(per_window).map_err(|_| self.error(Some("dials_per_window"), "too large"))?;
        let window = match self.table.get("window") {
            None => config.telnyx_window,
            Some(toml::Value::String(s)) => {
                tocsin_config::parse_duration(s).ok().filter(|w| !w.is_zero()).ok_or_else(|| {
                    self.error(Some("window"), format!("{s:?} is not a positive duration (e.g. \"5s\")"))
                })?
            }
            Some(other) => {
                return Err(
                    self.error(Some("window"), format!("expected a duration such as \"5s\", got {other}"))
                );
            }
        };
        Ok(TelnyxAccount {
            name: self.account.to_owned(),
            api_key: Some(self.required("api_key")?),
            connection_id: self.string("connection_id")?,
            signing_key,
            dials_per_window,
            window,
            max_concurrent: self.count("max_concurrent", 0, 0)? as usize,
            limiter: telnyx::limiter(dials_per_window, window),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_the_default_label_and_labels_are_checked() {
        assert_eq!(parse_name("vonage"), Ok("vonage:default".into()));
        assert_eq!(parse_name("twilio:b-2_x"), Ok("twilio:b-2_x".into()));
        assert!(parse_name("sinch:a").is_err());
        assert!(parse_name("telnyx:B").is_err());
        assert!(parse_name("telnyx:").is_err());
        assert!(parse_name(&format!("telnyx:{}", "a".repeat(41))).is_err());
        assert_eq!(provider_of("twilio:b"), "twilio");
    }
}
