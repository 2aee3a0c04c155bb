//! Named provider accounts: the ones the `TOCSIN_<PROVIDER>_*` variables
//! configure (each provider's `default`), and any number more from a TOML
//! file (`TOCSIN_ACCOUNTS_FILE`, e.g. mounted from a Kubernetes Secret):
//!
//! ```toml
//! [vonage.eu]                     # the account vonage:eu
//! api_url = "https://api-eu.vonage.com"
//! application_id = "aaaaaaaa-…"
//! private_key_path = "/etc/tocsin/accounts/vonage-eu.pem"
//! signature_secret = "…"          # verifies its webhooks
//! rate = "3/s"                    # in the provider's own terms
//! max_concurrent = 50
//!
//! [twilio.main]
//! account_sid = "AC…"
//! auth_token = "…"
//! rate = "1/s"
//!
//! [telnyx.main]
//! api_key = "KEY…"
//! connection_id = "…"
//! public_key = "…"                # base64 Ed25519; verifies its webhooks
//! rate = "30/5s"
//! max_concurrent = 10
//! ```
//!
//! Limits of any account may also be given by `TOCSIN_RATES`
//! (`telnyx=10/5s,vonage:eu=3/s`) and `TOCSIN_MAX_CONCURRENT_CALLS`
//! (`telnyx=10`); an account without a rate has `TOCSIN_RATE_PER_SEC`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use tocsin_core::account::{Cap, Limits, Rate, parse_per_account};
use tocsin_core::config::{
    AccountConfig, Credentials, TelnyxCredentials, TwilioCredentials, VonageCredentials,
};
use tocsin_core::provider::Provider;
use tocsin_core::route::AccountName;

use crate::ProviderArgs;

/// Where the accounts beyond each provider's own variables are configured.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AccountsArgs {
    /// TOML file of named provider accounts (`[vonage.eu]`, `[telnyx.main]`, …: credentials,
    /// `rate`, `max_concurrent`), beside the `default` account each provider's own variables
    /// configure. See the README's "Provider accounts".
    #[arg(long = "accounts-file", env = "TOCSIN_ACCOUNTS_FILE")]
    pub accounts_file: Option<PathBuf>,
}

/// The accounts' limits given by variables (for the workers, which keep
/// them, and the webhook, which shows them).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LimitArgs {
    /// Create-call rates per account, in the provider's own terms: e.g. `telnyx=10/5s`
    /// (Telnyx counts dials over a rolling 5 s) or `vonage=2/s,vonage:eu=3/s`. An account
    /// named nowhere has TOCSIN_RATE_PER_SEC.
    #[arg(long = "rates", env = "TOCSIN_RATES", default_value = "", value_parser = parse_per_account::<Rate>)]
    pub rates: HashMap<AccountName, Rate>,

    /// Concurrent-call caps per account: e.g. `telnyx=10` (Telnyx allows 2 at sign-up, 10
    /// after verification) or `telnyx=10,twilio:main=50`. A call holds a line from just before
    /// its create-call request to its end; a job waits (held) while every line is taken.
    /// Shared by all workers (in Redis). Empty: no cap.
    #[arg(long = "max-concurrent-calls", env = "TOCSIN_MAX_CONCURRENT_CALLS", default_value = "", value_parser = parse_per_account::<Cap>)]
    pub max_concurrent_calls: HashMap<AccountName, Cap>,
}

/// The accounts' circuit breaker (`tocsin_core::health`): the workers
/// report each create-call's result to it, the webhook the calls an
/// account refused past its channel limit; both must count alike.
#[derive(clap::Args, Clone, Debug)]
pub struct HealthArgs {
    /// Failures of a provider account (5xx, connection errors, timeouts, 401/403, calls refused
    /// past its channel limit) within --account-window after which it counts as unhealthy: no
    /// worker sends to it, and routes move calls to their next account, until a probe call
    /// succeeds after --account-cool-down.
    #[arg(long = "account-failures", env = "TOCSIN_ACCOUNT_FAILURES", default_value_t = 5)]
    pub account_failures: u32,

    /// The window in which --account-failures count.
    #[arg(long = "account-window", env = "TOCSIN_ACCOUNT_WINDOW", default_value = "30s", value_parser = crate::parse_duration)]
    pub account_window: std::time::Duration,

    /// How long an unhealthy account gets no calls before one probe call is sent to it.
    #[arg(long = "account-cool-down", env = "TOCSIN_ACCOUNT_COOL_DOWN", default_value = "15s", value_parser = crate::parse_duration)]
    pub account_cool_down: std::time::Duration,
}

impl HealthArgs {
    /// The breaker's rules; a probe may be out `probe_lease` before another goes.
    pub fn rules(&self, probe_lease: std::time::Duration) -> tocsin_core::health::Rules {
        tocsin_core::health::Rules {
            threshold: self.account_failures.max(1),
            window: self.account_window,
            cool_down: self.account_cool_down,
            probe_lease,
        }
    }
}

/// One `[provider.label]` table of the accounts file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    api_url: Option<String>,
    // Vonage
    application_id: Option<String>,
    private_key_path: Option<PathBuf>,
    signature_secret: Option<String>,
    // Twilio
    account_sid: Option<String>,
    auth_token: Option<String>,
    // Telnyx
    api_key: Option<String>,
    connection_id: Option<String>,
    public_key: Option<String>,
    // Limits
    rate: Option<String>,
    max_concurrent: Option<u32>,
}

/// The real API of each provider, for an account that names none.
fn real_api_url(provider: Provider) -> &'static str {
    match provider {
        Provider::Vonage => "https://api.nexmo.com",
        Provider::Twilio => "https://api.twilio.com",
        Provider::Telnyx => "https://api.telnyx.com",
    }
}

/// Reads the accounts file: every account it names, checked; the error
/// names the file, the account and the field.
pub fn read_accounts_file(path: &Path, default_rate: Rate) -> anyhow::Result<Vec<AccountConfig>> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the accounts file {file} (TOCSIN_ACCOUNTS_FILE): {e}"))?;
    let tables: BTreeMap<String, BTreeMap<String, FileAccount>> =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("the accounts file {file} is not valid: {e}"))?;
    let mut out = Vec::new();
    for (provider, accounts) in tables {
        for (label, account) in accounts {
            let name: AccountName = format!("{provider}:{label}")
                .parse()
                .map_err(|e| anyhow::anyhow!("the accounts file {file}: [{provider}.{label}]: {e}"))?;
            let config = file_account(name.clone(), account, default_rate)
                .map_err(|e| anyhow::anyhow!("the accounts file {file}: [{provider}.{label}]: {e}"))?;
            out.push(config);
        }
    }
    Ok(out)
}

fn file_account(name: AccountName, a: FileAccount, default_rate: Rate) -> Result<AccountConfig, String> {
    let need = |field: &str, value: Option<String>| value.ok_or_else(|| format!("`{field}` is missing"));
    let api_url = a.api_url.unwrap_or_else(|| real_api_url(name.provider).to_owned());
    let api_url = api_url.trim_end_matches('/').to_owned();
    let foreign: &[(&str, bool)] = &[
        ("application_id", a.application_id.is_some()),
        ("private_key_path", a.private_key_path.is_some()),
        ("signature_secret", a.signature_secret.is_some()),
        ("account_sid", a.account_sid.is_some()),
        ("auth_token", a.auth_token.is_some()),
        ("api_key", a.api_key.is_some()),
        ("connection_id", a.connection_id.is_some()),
        ("public_key", a.public_key.is_some()),
    ];
    let own: &[&str] = match name.provider {
        Provider::Vonage => &["application_id", "private_key_path", "signature_secret"],
        Provider::Twilio => &["account_sid", "auth_token"],
        Provider::Telnyx => &["api_key", "connection_id", "public_key"],
    };
    if let Some((field, _)) = foreign.iter().find(|(f, set)| *set && !own.contains(f)) {
        return Err(format!("`{field}` is not a {} setting (its are {})", name.provider, own.join(", ")));
    }
    let (credentials, webhook_key) = match name.provider {
        Provider::Vonage => {
            let path = a.private_key_path.ok_or("`private_key_path` is missing")?;
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `private_key_path` {}: {e}", path.display()))?;
            let credentials = VonageCredentials {
                api_url,
                application_id: need("application_id", a.application_id)?,
                private_key_pem: SecretString::from(pem),
            };
            (Credentials::Vonage(credentials), a.signature_secret)
        }
        Provider::Twilio => {
            let account_sid = need("account_sid", a.account_sid)?;
            if !crate::twilio_sid_ok(&account_sid) {
                return Err(
                    "`account_sid` is not a Twilio account SID (AC followed by 32 hexadecimal digits)".into(),
                );
            }
            let auth_token = need("auth_token", a.auth_token)?;
            let credentials = TwilioCredentials {
                api_url,
                account_sid,
                auth_token: SecretString::from(auth_token.clone()),
            };
            (Credentials::Twilio(credentials), Some(auth_token))
        }
        Provider::Telnyx => {
            let credentials = TelnyxCredentials {
                api_url,
                api_key: SecretString::from(need("api_key", a.api_key)?),
                connection_id: need("connection_id", a.connection_id)?,
            };
            (Credentials::Telnyx(credentials), a.public_key)
        }
    };
    let rate = match a.rate {
        Some(r) => r.parse().map_err(|e| format!("`rate`: {e}"))?,
        None => default_rate,
    };
    let max_concurrent = match a.max_concurrent {
        Some(0) => return Err("`max_concurrent` must be at least 1 (leave it out for no cap)".into()),
        other => other,
    };
    Ok(AccountConfig {
        name,
        credentials,
        limits: Limits { rate, max_concurrent },
        webhook_key: webhook_key.map(SecretString::from),
    })
}

impl ProviderArgs {
    /// Every configured account: each provider's `default` (from its own
    /// variables) and the accounts file's, with `TOCSIN_RATES` and
    /// `TOCSIN_MAX_CONCURRENT_CALLS` applied. An error names what is wrong:
    /// a half-configured provider, a bad file, an account configured twice,
    /// a rate or cap for an account that does not exist.
    pub fn accounts(&self, default_rate: Rate, given: &LimitArgs) -> anyhow::Result<Vec<AccountConfig>> {
        let mut out = Vec::new();
        let limits = Limits { rate: default_rate, max_concurrent: None };
        if let Some(c) = self.vonage.credentials()? {
            out.push(AccountConfig {
                name: AccountName::default_of(Provider::Vonage),
                credentials: Credentials::Vonage(c),
                limits,
                webhook_key: None,
            });
        }
        if let Some(c) = self.twilio.credentials()? {
            out.push(AccountConfig {
                name: AccountName::default_of(Provider::Twilio),
                webhook_key: Some(c.auth_token.clone()),
                credentials: Credentials::Twilio(c),
                limits,
            });
        }
        if let Some(c) = self.telnyx.credentials()? {
            out.push(AccountConfig {
                name: AccountName::default_of(Provider::Telnyx),
                webhook_key: self.telnyx.telnyx_public_key.clone().map(SecretString::from),
                credentials: Credentials::Telnyx(c),
                limits,
            });
        }
        if let Some(path) = &self.accounts.accounts_file {
            for account in read_accounts_file(path, default_rate)? {
                if out.iter().any(|a| a.name == account.name) {
                    anyhow::bail!(
                        "account {} is configured twice: by the TOCSIN_{}_* variables and in the accounts file {}",
                        account.name,
                        account.name.provider.as_str().to_uppercase(),
                        path.display()
                    );
                }
                out.push(account);
            }
        }
        let names =
            |out: &[AccountConfig]| out.iter().map(|a| a.name.to_string()).collect::<Vec<_>>().join(", ");
        for (name, rate) in &given.rates {
            let Some(account) = out.iter_mut().find(|a| &a.name == name) else {
                anyhow::bail!(
                    "TOCSIN_RATES names {name}, which is not configured (configured: {})",
                    names(&out)
                );
            };
            account.limits.rate = *rate;
        }
        for (name, cap) in &given.max_concurrent_calls {
            let Some(account) = out.iter_mut().find(|a| &a.name == name) else {
                anyhow::bail!(
                    "TOCSIN_MAX_CONCURRENT_CALLS names {name}, which is not configured (configured: {})",
                    names(&out)
                );
            };
            account.limits.max_concurrent = Some(cap.0);
        }
        Ok(out)
    }

    /// The names of the configured accounts (what a route may name), without
    /// reading any secret beyond the accounts file's table names.
    pub fn account_names(&self) -> anyhow::Result<Vec<AccountName>> {
        let mut names: Vec<AccountName> =
            self.configured().into_iter().map(AccountName::default_of).collect();
        if let Some(path) = &self.accounts.accounts_file {
            let file = path.display();
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the accounts file {file} (TOCSIN_ACCOUNTS_FILE): {e}")
            })?;
            let tables: BTreeMap<String, BTreeMap<String, toml::Value>> = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("the accounts file {file} is not valid: {e}"))?;
            for (provider, accounts) in tables {
                for label in accounts.keys() {
                    let name: AccountName = format!("{provider}:{label}").parse().map_err(|e| {
                        anyhow::anyhow!("the accounts file {file}: [{provider}.{label}]: {e}")
                    })?;
                    names.push(name);
                }
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::Temp {
        tempfile_path::Temp::new(text)
    }

    /// A file that removes itself.
    mod tempfile_path {
        pub struct Temp(pub std::path::PathBuf);
        impl Temp {
            pub fn new(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!("tocsin-accounts-{}.toml", uuid()));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }
        impl Drop for Temp {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        fn uuid() -> String {
            format!("{}-{:?}", std::process::id(), std::time::SystemTime::now())
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        }
    }

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn an_accounts_file_gives_each_account_its_credentials_and_limits() {
        let f = write(&format!(
            "[twilio.main]\naccount_sid = \"{SID}\"\nauth_token = \"t\"\nrate = \"1/s\"\n\
             [telnyx.b]\napi_key = \"KEY\"\nconnection_id = \"c\"\npublic_key = \"pk\"\nrate = \"10/5s\"\nmax_concurrent = 10\n"
        ));
        let accounts = read_accounts_file(&f.0, Rate::per_second(2.0)).unwrap();
        assert_eq!(accounts.len(), 2);
        let telnyx = accounts.iter().find(|a| a.name.to_string() == "telnyx:b").unwrap();
        assert_eq!(telnyx.limits, Limits { rate: "10/5s".parse().unwrap(), max_concurrent: Some(10) });
        let Credentials::Telnyx(c) = &telnyx.credentials else { panic!() };
        assert_eq!(c.api_url, "https://api.telnyx.com");
        assert!(telnyx.webhook_key.is_some());
    }

    #[test]
    fn a_bad_accounts_file_names_the_file_the_account_and_the_field() {
        for (text, why) in [
            ("[twilio.main]\nauth_token = \"t\"\n", "[twilio.main]: `account_sid` is missing"),
            ("[twilio.main]\naccount_sid = \"AC1\"\nauth_token = \"t\"\n", "not a Twilio account SID"),
            (
                &format!("[twilio.main]\naccount_sid = \"{SID}\"\nauth_token = \"t\"\napi_key = \"k\"\n"),
                "`api_key` is not a twilio setting",
            ),
            (
                &format!("[twilio.main]\naccount_sid = \"{SID}\"\nauth_token = \"t\"\nrate = \"fast\"\n"),
                "`rate`",
            ),
            ("[pigeon.main]\n", "PROVIDER"),
            ("[vonage.Main]\n", "lowercase"),
            ("[vonage.eu]\napplication_id = \"a\"\nprivate_key_path = \"/nonexistent.pem\"\n", "cannot read"),
            ("[telnyx.b]\nspeed = 3\n", "unknown field"),
        ] {
            let f = write(text);
            let err = read_accounts_file(&f.0, Rate::per_second(2.0)).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&f.0.display().to_string()), "{err}");
        }
    }
}
