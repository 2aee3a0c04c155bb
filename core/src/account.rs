//! Provider accounts' limits: how fast an account may start calls (in its
//! provider's own terms: Vonage and Twilio per second, Telnyx per rolling
//! 5 s) and how many calls it may have in progress at once. The credentials
//! are `config`'s; the names (`vonage:eu`) are `route::AccountName`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::route::AccountName;

/// A create-call rate: at most `calls` in any `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub calls: u32,
    pub per: Duration,
}

impl Rate {
    /// `rate` calls a second: `2` is 2 per 1 s; `0.5` is 1 per 2 s;
    /// `2.5` is 2 per 0.8 s (whole calls per window, the same average).
    pub fn per_second(rate: f64) -> Self {
        let calls = rate.floor().max(1.0);
        Self { calls: calls as u32, per: Duration::from_secs_f64(calls / rate) }
    }

    /// Calls a second on average.
    pub fn calls_per_sec(&self) -> f64 {
        f64::from(self.calls) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per == Duration::from_secs(1) {
            write!(f, "{}/s", self.calls)
        } else {
            write!(f, "{}/{}", self.calls, humantime::format_duration(self.per))
        }
    }
}

impl FromStr for Rate {
    type Err = String;
    /// `2/s`, `10/5s`, `30/5s`, `1/2s`; a bare number is calls a second.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let usage = "a rate is CALLS/PERIOD (e.g. 2/s, 10/5s) or calls a second (e.g. 2)";
        let rate = match s.split_once('/') {
            None => {
                let r: f64 = s.parse().map_err(|_| format!("{s:?}: {usage}"))?;
                if !(r.is_finite() && r > 0.0 && r <= 100_000.0) {
                    return Err(format!("{s:?}: the rate must be above 0 and at most 100000 a second"));
                }
                Self::per_second(r)
            }
            Some((calls, per)) => {
                let calls: u32 = calls.trim().parse().map_err(|_| format!("{s:?}: {usage}"))?;
                let per = per.trim();
                let per = if per == "s" { "1s" } else { per };
                let per = humantime::parse_duration(per).map_err(|_| format!("{s:?}: {usage}"))?;
                if calls == 0 || per.is_zero() || per > Duration::from_secs(3600) {
                    return Err(format!("{s:?}: at least one call, in a period above 0 and at most 1h"));
                }
                Self { calls, per }
            }
        };
        Ok(rate)
    }
}

/// One account's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub rate: Rate,
    /// Concurrent-call cap (`None`: none).
    pub max_concurrent: Option<u32>,
}

/// Per-account overrides, written `ACCOUNT=VALUE,…` (`telnyx=10/5s,vonage:eu=3/s`
/// or `telnyx=10`); an account is `PROVIDER[:LABEL]`, each named once.
pub fn parse_per_account<T: FromStr<Err = String>>(s: &str) -> Result<HashMap<AccountName, T>, String> {
    let mut out = HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) =
            part.split_once('=').ok_or_else(|| format!("{part:?} is not ACCOUNT=VALUE (e.g. telnyx=10)"))?;
        let name: AccountName = name.parse()?;
        let value: T = value.parse().map_err(|e| format!("{part:?}: {e}"))?;
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("{name} is named twice"));
        }
    }
    Ok(out)
}

/// A concurrent-call cap: a whole number of calls, at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u32);

impl FromStr for Cap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .map(Cap)
            .ok_or_else(|| "the cap must be a whole number of calls, at least 1".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Provider;

    #[test]
    fn rates_read_in_the_providers_terms() {
        assert_eq!("2/s".parse::<Rate>().unwrap(), Rate { calls: 2, per: Duration::from_secs(1) });
        assert_eq!("10/5s".parse::<Rate>().unwrap(), Rate { calls: 10, per: Duration::from_secs(5) });
        assert_eq!("2".parse::<Rate>().unwrap(), Rate::per_second(2.0));
        assert_eq!(Rate::per_second(0.5), Rate { calls: 1, per: Duration::from_secs(2) });
        assert!((Rate::per_second(2.5).calls_per_sec() - 2.5).abs() < 1e-9);
        assert!(("10/5s".parse::<Rate>().unwrap().calls_per_sec() - 2.0).abs() < 1e-9);
        assert_eq!("10/5s".parse::<Rate>().unwrap().to_string(), "10/5s");
        assert_eq!("3/s".parse::<Rate>().unwrap().to_string(), "3/s");
        for bad in ["", "0/s", "x/s", "2/fortnight", "-1", "0", "5/0s", "1/2h"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn per_account_values_name_their_account() {
        let rates = parse_per_account::<Rate>("telnyx=10/5s, vonage:eu=3/s").unwrap();
        assert_eq!(rates[&AccountName::default_of(Provider::Telnyx)].calls, 10);
        assert_eq!(rates[&"vonage:eu".parse().unwrap()].calls, 3);
        let caps = parse_per_account::<Cap>("telnyx=10").unwrap();
        assert_eq!(caps[&AccountName::default_of(Provider::Telnyx)], Cap(10));
        for (bad, why) in [
            ("telnyx", "ACCOUNT=VALUE"),
            ("pigeon=2", "PROVIDER"),
            ("telnyx=0", "at least 1"),
            ("telnyx=2,telnyx:default=3", "twice"),
        ] {
            let err = parse_per_account::<Cap>(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
