//! Each provider account's health, shared by every worker through Redis: a
//! circuit breaker. An account *opens* after `threshold` failures (5xx,
//! connection errors, timeouts, 401/403s) within `window`; while open no
//! worker sends to it and routes move calls to their next account. After
//! `cool_down` it is *half-open*: one worker at a time may send a probe
//! (a real call); its success closes the account, its failure opens it
//! again at once. A success at any time clears the failure count.
//!
//! Keys (the hash tag keeps an account's keys on one cluster slot):
//! `{prefix}:health:{account}:fails` (failures in the window),
//! `…:open` (present while open), `…:half` (present from the opening until
//! a success: after the cool-down, only probes go), `…:probe` (held by the
//! prober).
//! When Redis cannot be reached every account counts as closed: the
//! providers' own answers still stop a bad call.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// KEYS[1] = failures, KEYS[2] = open, KEYS[3] = half-open. ARGV[1] =
/// window (ms), ARGV[2] = threshold, ARGV[3] = cool-down (ms). Returns 1
/// when this failure opened the account (it was not open already), else 0.
/// A failure while half-open (the probe's) opens it again at once.
const FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[3]) == 1 then
  local opened = redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'NX')
  redis.call('SET', KEYS[3], '1', 'PX', 3600000)
  redis.call('DEL', KEYS[1])
  if opened then return 1 end
end
return 0
";

/// KEYS[1] = open, KEYS[2] = half-open, KEYS[3] = probe. ARGV[1] = probe
/// lease (ms). Returns 0 closed, 1 open, 2 half-open and this caller holds
/// the probe, 3 half-open with the probe taken by another.
const CHECK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('SET', KEYS[3], '1', 'PX', ARGV[1], 'NX') then return 2 end
return 3
";

/// KEYS[1] = failures, KEYS[2] = probe, KEYS[3] = half-open. Clears them
/// in one round trip (every placed call runs it); returns 1 when the
/// account was half-open (this success closed it).
const SUCCEEDED: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
return redis.call('DEL', KEYS[3])
";

/// Where an account stands for one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Send.
    Closed,
    /// Do not send: failing, cooling down.
    Open,
    /// Cooled down: this caller may send one probe.
    Probe,
    /// Cooled down, another worker's probe is out: do not send yet.
    Probing,
}

impl Standing {
    /// Whether a call may go to the account now.
    pub fn usable(self) -> bool {
        matches!(self, Self::Closed | Self::Probe)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::Probe | Self::Probing => "half_open",
        }
    }
}

/// The rules of the breaker.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub threshold: u32,
    pub window: Duration,
    pub cool_down: Duration,
    /// How long a probe may be out before another worker may send one.
    pub probe_lease: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            threshold: 5,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(15),
            probe_lease: Duration::from_secs(15),
        }
    }
}

/// The accounts' shared health.
#[derive(Clone)]
pub struct Health {
    conn: ConnectionManager,
    prefix: String,
    rules: Rules,
    failed: Script,
    check: Script,
    succeeded: Script,
}

impl Health {
    pub fn new(conn: ConnectionManager, prefix: &str, rules: Rules) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            rules,
            failed: Script::new(FAILED),
            check: Script::new(CHECK),
            succeeded: Script::new(SUCCEEDED),
        }
    }

    fn key(&self, account: &str, what: &str) -> String {
        format!("{}:health:{{{account}}}:{what}", self.prefix)
    }

    /// Whether `account` may take a call now (a probe is taken when due).
    pub async fn standing(&self, account: &str) -> Standing {
        let mut conn = self.conn.clone();
        let answer: redis::RedisResult<i64> = self
            .check
            .key(self.key(account, "open"))
            .key(self.key(account, "half"))
            .key(self.key(account, "probe"))
            .arg(millis(self.rules.probe_lease))
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok(1) => Standing::Open,
            Ok(2) => Standing::Probe,
            Ok(3) => Standing::Probing,
            Ok(_) => Standing::Closed,
            Err(e) => {
                tracing::debug!(error = %e, account, "account health unreadable (Redis): taken as closed");
                Standing::Closed
            }
        }
    }

    /// Where `account` stands, read only (no probe is taken): `closed`,
    /// `open` or `half_open`, and its failures in the current window.
    pub async fn peek(&self, account: &str) -> redis::RedisResult<(Standing, u32)> {
        let mut conn = self.conn.clone();
        let (open, half, fails): (bool, bool, Option<u32>) = redis::pipe()
            .exists(self.key(account, "open"))
            .exists(self.key(account, "half"))
            .get(self.key(account, "fails"))
            .query_async(&mut conn)
            .await?;
        let standing = match (open, half) {
            (true, _) => Standing::Open,
            (false, true) => Standing::Probing,
            _ => Standing::Closed,
        };
        Ok((standing, fails.unwrap_or(0)))
    }

    /// A send to `account` failed for a reason of the account (not of the
    /// call): 5xx, no connection, a timeout, 401/403. Returns whether this
    /// failure opened it.
    pub async fn failed(&self, account: &str, why: &str) -> bool {
        let mut conn = self.conn.clone();
        let opened: redis::RedisResult<i64> = self
            .failed
            .key(self.key(account, "fails"))
            .key(self.key(account, "open"))
            .key(self.key(account, "half"))
            .arg(millis(self.rules.window))
            .arg(self.rules.threshold)
            .arg(millis(self.rules.cool_down))
            .invoke_async(&mut conn)
            .await;
        let _: redis::RedisResult<i64> =
            redis::cmd("DEL").arg(self.key(account, "probe")).query_async(&mut conn).await;
        let opened = matches!(opened, Ok(1));
        if opened {
            metrics::counter!("tocsin_account_opened_total", "account" => account.to_owned()).increment(1);
            tracing::error!(
                account,
                %why,
                cool_down = ?self.rules.cool_down,
                "provider account unhealthy: no calls go to it until a probe succeeds after the cool-down; \
                 routes move calls to their next account"
            );
        }
        opened
    }

    /// A send to `account` succeeded: its failures are forgiven (a probe's
    /// success closes it).
    pub async fn succeeded(&self, account: &str) {
        let mut conn = self.conn.clone();
        let closed: redis::RedisResult<i64> = self
            .succeeded
            .key(self.key(account, "fails"))
            .key(self.key(account, "probe"))
            .key(self.key(account, "half"))
            .invoke_async(&mut conn)
            .await;
        if matches!(closed, Ok(1)) {
            metrics::counter!("tocsin_account_closed_total", "account" => account.to_owned()).increment(1);
            tracing::info!(account, "provider account healthy again: its probe call went through");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
