//! The global create-call rate limit: GCRA in one Redis Lua script.
//!
//! Each caller *reserves* the next free slot of its provider account and is
//! told how long to sleep until it; it sleeps exactly that. The clock is
//! Redis's (`TIME`), never a worker's, so workers with skewed clocks still
//! share one timeline. One round trip per call, FIFO order, even spacing.
//! A provider 429 sets a shared cool-down key that pushes every later slot
//! past it.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// KEYS[1] = theoretical arrival time (µs), KEYS[2] = cool-down end (µs).
/// ARGV[1] = emission interval (µs), ARGV[2] = maximum wait (µs).
/// Returns {granted (1|0), wait µs}. Numbers are formatted with %.0f because
/// Lua's default number formatting would round microsecond timestamps.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
local slot = math.max(now, tat, cool)
local wait = slot - now
if wait > max_wait then
  return {0, wait}
end
local next_tat = slot + interval
local ttl_ms = math.ceil((next_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', string.format('%.0f', ttl_ms))
return {1, wait}
";

/// KEYS[1] = cool-down end (µs). ARGV[1] = cool-down length (µs).
/// Only ever extends the cool-down.
const COOL_DOWN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local till = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if till > cur then
  local ttl_ms = math.ceil((till - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', till), 'PX', string.format('%.0f', ttl_ms))
end
return 1
";

/// The answer to a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is ours: sleep this long, then send.
    Granted(Duration),
    /// The next free slot is further away than the maximum wait: nothing was
    /// reserved; put the job back on a delay queue.
    Refused(Duration),
}

/// A GCRA limiter shared by every worker through Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    interval: Duration,
    max_wait: Duration,
    reserve: Script,
    cool_down: Script,
}

impl RedisLimiter {
    /// `rate_per_sec` create-call requests per second per account; a caller
    /// waits at most `max_wait` for its slot.
    pub fn new(conn: ConnectionManager, prefix: &str, rate_per_sec: f64, max_wait: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            interval: Duration::from_secs_f64(1.0 / rate_per_sec),
            max_wait,
            reserve: Script::new(RESERVE),
            cool_down: Script::new(COOL_DOWN),
        }
    }

    pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
        let client = redis::Client::open(url)?;
        ConnectionManager::new(client).await
    }

    fn keys(&self, account: &str) -> (String, String) {
        // The hash tag keeps both keys of an account on one cluster slot.
        let base = format!("{}:rl:{{{account}}}", self.prefix);
        (base.clone(), format!("{base}:cooldown"))
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reserves the account's next free slot.
    pub async fn reserve(&self, account: &str) -> redis::RedisResult<Reservation> {
        let (tat, cool) = self.keys(account);
        let mut conn = self.conn.clone();
        let (granted, wait_us): (i64, i64) = self
            .reserve
            .key(tat)
            .key(cool)
            .arg(micros(self.interval))
            .arg(micros(self.max_wait))
            .invoke_async(&mut conn)
            .await?;
        let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        Ok(if granted == 1 { Reservation::Granted(wait) } else { Reservation::Refused(wait) })
    }

    /// Pushes every later slot of `account` at least `pause` into the future
    /// (after a provider 429).
    pub async fn cool_down(&self, account: &str, pause: Duration) -> redis::RedisResult<()> {
        let (_, cool) = self.keys(account);
        let mut conn = self.conn.clone();
        let _: i64 = self.cool_down.key(cool).arg(micros(pause)).invoke_async(&mut conn).await?;
        Ok(())
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
