//! Concurrent-call caps, shared by every worker through Redis: an account's
//! *lines* are a sorted set of the calls holding one (member: the call id,
//! score: when its lease ends, on Redis's clock).
//!
//! A worker takes a line for a claimed call before its create-call request
//! and gives it back when the call fails to start. A call's line comes back
//! when the call ends: a worker waiting for a line of a full account asks
//! PostgreSQL which of the holders are no longer in progress (their final
//! event is stored) and frees theirs (`full`, at most every
//! `REAP_EVERY` per account across workers, so the check costs one small
//! query however many jobs wait). A line whose holder crashed, or whose
//! call's final event was lost, comes back when its lease ends: the lease
//! covers the longest a call can last (dialing, ringing, and the campaign's
//! call time limit), so it never ends while the call may still be up.
//!
//! When Redis is down the worker counts calls in progress in PostgreSQL
//! instead (`calls::claim_within_cap`); the calls placed meanwhile are put
//! into the set (`adopt`) once Redis answers again, so they still count.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::CallId;

/// KEYS[1] = the account's lines. ARGV[1] = cap. ARGV[2] = member. ARGV[3] = lease (µs).
/// Drops expired leases; takes (or renews) the member's line when it holds
/// one or one is free. Returns {1, in use} or {0, in use}.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local expiry = string.format('%.0f', now + tonumber(ARGV[3]))
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[2])
  return {1, redis.call('ZCARD', KEYS[1])}
end
local used = redis.call('ZCARD', KEYS[1])
if used < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(tonumber(ARGV[3]) / 1000) + 60000))
  return {1, used + 1}
end
return {0, used}
";

/// KEYS[1] = the account's lines, KEYS[2] = its reap marker. ARGV[1] = cap,
/// ARGV[2] = reap interval (ms). Drops expired leases. Returns {in use}, and
/// when the account is full and nobody checked its holders within the
/// interval, {in use, holder…}: the caller checks them.
const IN_USE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local used = redis.call('ZCARD', KEYS[1])
if used >= tonumber(ARGV[1]) and redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  local out = redis.call('ZRANGE', KEYS[1], 0, -1)
  table.insert(out, 1, used)
  return out
end
return {used}
";

/// KEYS[1] = the account's lines. ARGV[1] = lease (µs), ARGV[2..] = members.
/// Adds the members that hold no line (whatever the cap: they are calls in
/// progress). Returns how many were added.
const ADOPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = string.format('%.0f', now + tonumber(ARGV[1]))
local added = 0
for i = 2, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], 'NX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(tonumber(ARGV[1]) / 1000) + 60000))
return added
";

/// KEYS[1] = the account's lines. Returns the holders whose leases have not ended.
const HOLDERS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.0f', now), '+inf')
";

/// How often, at most, the holders of a full account's lines are checked
/// against PostgreSQL (across all workers).
pub const REAP_EVERY: Duration = Duration::from_millis(100);

/// How busy an account's lines are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    pub used: u32,
    /// Set when the account is full and this caller is to check which
    /// holders' calls have ended (`calls::ended_among`) and `free` them.
    pub to_check: Vec<CallId>,
}

/// The concurrent-call caps' lines in Redis.
#[derive(Clone)]
pub struct Lines {
    conn: ConnectionManager,
    prefix: String,
    take: Script,
    in_use: Script,
    adopt: Script,
}

impl Lines {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            take: Script::new(TAKE),
            in_use: Script::new(IN_USE),
            adopt: Script::new(ADOPT),
        }
    }

    fn key(&self, account: &str) -> String {
        // The hash tag keeps an account's keys on one cluster slot.
        format!("{}:lines:{{{account}}}", self.prefix)
    }

    /// Takes a line of `account` for `call` until `lease` from now (or
    /// renews the one it holds); `false` when all `cap` are taken.
    pub async fn take(
        &self,
        account: &str,
        call: CallId,
        cap: u32,
        lease: Duration,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let (taken, _used): (i64, i64) = self
            .take
            .key(self.key(account))
            .arg(cap)
            .arg(call.to_string())
            .arg(micros(lease))
            .invoke_async(&mut conn)
            .await?;
        Ok(taken == 1)
    }

    /// Gives back `call`'s line (no-op when it holds none).
    pub async fn free(&self, account: &str, calls: &[CallId]) -> redis::RedisResult<()> {
        if calls.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let members: Vec<String> = calls.iter().map(ToString::to_string).collect();
        let _: i64 = redis::cmd("ZREM").arg(self.key(account)).arg(members).query_async(&mut conn).await?;
        Ok(())
    }

    /// Lines of `account` in use; for a full account, now and then, the
    /// holders to check (see `InUse`).
    pub async fn in_use(&self, account: &str, cap: u32) -> redis::RedisResult<InUse> {
        let mut conn = self.conn.clone();
        let out: Vec<redis::Value> = self
            .in_use
            .key(self.key(account))
            .key(format!("{}:reaped", self.key(account)))
            .arg(cap)
            .arg(REAP_EVERY.as_millis().to_string())
            .invoke_async(&mut conn)
            .await?;
        let mut out = out.into_iter();
        let used: i64 = match out.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => 0,
        };
        let to_check = out
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .filter_map(|s| s.parse().ok())
            .collect();
        Ok(InUse { used: u32::try_from(used).unwrap_or(0), to_check })
    }

    /// The calls holding a line of `account` now, read only (expired
    /// leases left out). Some may have ended since (`calls::ended_among`).
    pub async fn holders(&self, account: &str) -> redis::RedisResult<Vec<CallId>> {
        let mut conn = self.conn.clone();
        let members: Vec<String> =
            redis::Script::new(HOLDERS).key(self.key(account)).invoke_async(&mut conn).await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }

    /// Counts `calls` (in progress, placed while Redis was down) as holding
    /// lines of `account` until `lease` from now; returns how many held none.
    pub async fn adopt(&self, account: &str, calls: &[CallId], lease: Duration) -> redis::RedisResult<u32> {
        if calls.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.adopt.key(self.key(account));
        invocation.arg(micros(lease));
        for call in calls {
            invocation.arg(call.to_string());
        }
        let added: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(u32::try_from(added).unwrap_or(0))
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
