//! Routes: which provider accounts a campaign's calls go through, and how
//! they are chosen. Written `MODE:ACCOUNT,ACCOUNT,…` — `failover:vonage,twilio`
//! (the first healthy account with a free line; the next when it is
//! unhealthy or saturated) or `pool:vonage,twilio,telnyx` (every healthy
//! account, in proportion to its rate). An account is named
//! `PROVIDER[:LABEL]`: each provider's own variables configure its
//! `default` account (`vonage` is `vonage:default`), the accounts file any
//! number more (`vonage:eu`). A campaign without a route calls through its
//! provider's `default` account alone.
//!
//! The route is stored with the campaign (`campaigns.route`, in this
//! written form) and read by every worker with the campaign (at most a
//! second old), so a change applies to the next call everywhere.

use std::fmt;
use std::str::FromStr;

use crate::provider::Provider;

/// How a route picks among its accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The first usable account in the route's order.
    Failover,
    /// Any usable account, in proportion to its rate.
    Pool,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failover => "failover",
            Self::Pool => "pool",
        }
    }
}

/// One provider account: its provider and its label (`default`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AccountName {
    pub provider: Provider,
    pub label: String,
}

/// The label of each provider's account configured by its `TOCSIN_<PROVIDER>_*` variables.
pub const DEFAULT_LABEL: &str = "default";

impl AccountName {
    /// The account configured by a provider's own variables.
    pub fn default_of(provider: Provider) -> Self {
        Self { provider, label: DEFAULT_LABEL.into() }
    }
}

impl From<Provider> for AccountName {
    fn from(provider: Provider) -> Self {
        Self::default_of(provider)
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.label)
    }
}

impl FromStr for AccountName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (provider, label) = s.split_once(':').unwrap_or((s, DEFAULT_LABEL));
        let provider: Provider = provider.parse().map_err(|_| {
            format!("{s:?}: an account is PROVIDER[:LABEL], PROVIDER one of vonage, twilio, telnyx")
        })?;
        let ok = (1..=40).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !ok {
            return Err(format!("{s:?}: an account label is 1-40 lowercase letters, digits, '-' or '_'"));
        }
        Ok(Self { provider, label: label.to_owned() })
    }
}

/// An ordered list of accounts and how to choose among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub mode: Mode,
    pub accounts: Vec<AccountName>,
}

/// At most this many accounts in one route.
pub const MAX_ACCOUNTS: usize = 10;

impl Route {
    /// The route of a campaign that names none: its provider's account.
    pub fn single(provider: Provider) -> Self {
        Self { mode: Mode::Failover, accounts: vec![AccountName::default_of(provider)] }
    }

    /// The providers the route calls through, in its order, each once.
    pub fn providers(&self) -> Vec<Provider> {
        let mut out = Vec::new();
        for a in &self.accounts {
            if !out.contains(&a.provider) {
                out.push(a.provider);
            }
        }
        out
    }

    /// The accounts not in `configured`: the route cannot use them.
    pub fn unknown_accounts(&self, configured: &[AccountName]) -> Vec<&AccountName> {
        self.accounts.iter().filter(|a| !configured.contains(a)).collect()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accounts: Vec<String> = self.accounts.iter().map(ToString::to_string).collect();
        write!(f, "{}:{}", self.mode.as_str(), accounts.join(","))
    }
}

impl FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let usage =
            "a route is failover:ACCOUNT,ACCOUNT… or pool:ACCOUNT,ACCOUNT… (e.g. failover:vonage,twilio)";
        let (mode, rest) = s.split_once(':').ok_or_else(|| format!("{s:?}: {usage}"))?;
        let mode = match mode.trim() {
            "failover" => Mode::Failover,
            "pool" => Mode::Pool,
            other => return Err(format!("{other:?} is not a route mode: {usage}")),
        };
        let mut accounts = Vec::new();
        for part in rest.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("{s:?}: an empty account name ({usage})"));
            }
            let account: AccountName = part.parse()?;
            if accounts.contains(&account) {
                return Err(format!("{s:?}: {account} is named twice"));
            }
            accounts.push(account);
        }
        if accounts.len() > MAX_ACCOUNTS {
            return Err(format!("{s:?}: at most {MAX_ACCOUNTS} accounts in a route"));
        }
        Ok(Self { mode, accounts })
    }
}

/// Whether every account `settings`' calls may go through is configured
/// (`configured`: the accounts configured here, the same the workers read);
/// `Err` names the first that is not and what to do.
pub fn check_configured(
    settings: &crate::campaign::Settings,
    configured: &[AccountName],
) -> Result<(), String> {
    let route = settings.route();
    let Some(account) = route.unknown_accounts(configured).first().copied() else {
        return Ok(());
    };
    let provider = account.provider;
    let variable = match provider {
        Provider::Vonage => "TOCSIN_VONAGE_APPLICATION_ID",
        Provider::Twilio => "TOCSIN_TWILIO_ACCOUNT_SID",
        Provider::Telnyx => "TOCSIN_TELNYX_CONNECTION_ID",
    };
    let others = if configured.is_empty() {
        "no provider account is configured here".to_owned()
    } else {
        let names: Vec<String> = configured.iter().map(ToString::to_string).collect();
        format!("configured: {}", names.join(", "))
    };
    Err(if account.label != DEFAULT_LABEL {
        format!(
            "the route {route} names account {account}, which is not configured: add [{provider}.{label}] to \
             the accounts file (TOCSIN_ACCOUNTS_FILE, the same the workers read) or leave it out of the route \
             ({others})",
            label = account.label
        )
    } else if settings.route.is_some() {
        format!(
            "the route {route} names {account}, which is not configured: set {variable} (the same variable \
             the workers read) or leave it out of the route ({others})"
        )
    } else {
        format!(
            "provider {provider} is not configured: set {variable} (the same variable the workers read) or \
             choose another --provider ({others})"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_and_write_the_same_form() {
        let r: Route = "failover:vonage, twilio:default".parse().unwrap();
        assert_eq!(r.mode, Mode::Failover);
        assert_eq!(r.to_string(), "failover:vonage:default,twilio:default");
        assert_eq!(r.to_string().parse::<Route>().unwrap(), r);
        assert_eq!(r.providers(), [Provider::Vonage, Provider::Twilio]);
        let p: Route = "pool:telnyx,vonage:eu-1".parse().unwrap();
        assert_eq!((p.mode, p.accounts[1].label.as_str()), (Mode::Pool, "eu-1"));
        assert_eq!(Route::single(Provider::Telnyx).to_string(), "failover:telnyx:default");
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        for (bad, why) in [
            ("vonage,twilio", "a route is"),
            ("failover", "a route is"),
            ("spread:vonage", "not a route mode"),
            ("pool:vonage,,twilio", "empty account"),
            ("pool:pigeon", "PROVIDER[:LABEL]"),
            ("pool:vonage:Main Account", "lowercase"),
            ("failover:vonage,vonage:default", "named twice"),
        ] {
            let err = bad.parse::<Route>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let r: Route = "failover:vonage,twilio".parse().unwrap();
        let configured = [AccountName::default_of(Provider::Vonage)];
        assert_eq!(r.unknown_accounts(&configured), [&AccountName::default_of(Provider::Twilio)]);
    }
}
