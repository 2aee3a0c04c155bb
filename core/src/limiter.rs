//! The global create-call rate limit: GCRA in one Redis Lua script.
//!
//! Each caller *reserves* the next free slot of its provider account and is
//! told how long to sleep until it; it sleeps exactly that. The clock is
//! Redis's (`TIME`), never a worker's, so workers with skewed clocks still
//! share one timeline. One round trip per call, FIFO order, even spacing.
//! A provider 429 sets a shared cool-down key that pushes every later slot
//! past it.
//!
//! A slot is an instant; a send is an arrival at the provider, which can be
//! late (a worker that wakes late on a busy machine, then the HTTP request),
//! and a late send lands right behind the next slot's: a provider counting
//! over a rolling second sees `limit + 1`. So the limiter keeps a *guard*:
//! slots are `(1 s + guard) / limit` apart, and just before sending each
//! worker is *admitted* by a second script that lets at most `limit` sends
//! into any `1 s + guard` window, on Redis's clock at the moment of sending
//! (a worker that woke late waits for the window to have room). Arrivals
//! then stay within the limit in every rolling second as long as their
//! transit varies by less than the guard, at a cost of `guard / (1 s +
//! guard)` of the rate (about 1.5 % for the default 15 ms).

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

pub use crate::account::Rate;

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

/// KEYS[1] = the account's recent sends (a sorted set scored by µs).
/// ARGV[1] = window (µs), ARGV[2] = sends allowed in it, ARGV[3] = a unique
/// member. Returns {admitted (1|0), wait µs}: admitted (and recorded) when
/// fewer than ARGV[2] sends lie in the trailing window; else how long until
/// the oldest of them leaves it.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(window / 1000) + 1000))
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
";

/// KEYS = the accounts' theoretical arrival times. Returns for each how far
/// (µs) its next free slot is from now (0 when free now).
const BACKLOG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  out[i] = math.max(0, tat - now)
end
return out
";

/// KEYS[1] = the account's recent sends. ARGV[1] = period (µs). Returns
/// how many were sent within the period.
const SENT_RECENTLY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], string.format('%.0f', now - tonumber(ARGV[1])), '+inf')
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

/// The answer to an admission, just before a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send now.
    Go,
    /// The trailing window is full: ask again after this long.
    Wait(Duration),
}

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
    /// The rate of an account whose own is not given (`reserve`, `admit`).
    rate: Rate,
    guard: Duration,
    max_wait: Duration,
    reserve: Script,
    admit: Script,
    cool_down: Script,
}

/// How a rate is kept: slots `interval` apart, and at most `per_window`
/// sends admitted in any `window` (the rate's own period + the guard).
struct Pacing {
    interval: Duration,
    per_window: u32,
    window: Duration,
}

impl Pacing {
    fn of(rate: Rate, guard: Duration) -> Self {
        let window = rate.per + guard;
        let per_window = rate.calls.max(1);
        Self { interval: window / per_window, per_window, window }
    }
}

impl RedisLimiter {
    /// `rate_per_sec` create-call requests per second per account; a caller
    /// waits at most `max_wait` for its slot.
    pub fn new(conn: ConnectionManager, prefix: &str, rate_per_sec: f64, max_wait: Duration) -> Self {
        Self::with_guard(conn, prefix, rate_per_sec, max_wait, Duration::ZERO)
    }

    /// As `new`, keeping `guard` between the slots and the limit (see the
    /// module's documentation): at most `limit` sends in any `1 s + guard`.
    pub fn with_guard(
        conn: ConnectionManager,
        prefix: &str,
        rate_per_sec: f64,
        max_wait: Duration,
        guard: Duration,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            rate: Rate::per_second(rate_per_sec),
            guard,
            max_wait,
            reserve: Script::new(RESERVE),
            admit: Script::new(ADMIT),
            cool_down: Script::new(COOL_DOWN),
        }
    }

    pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
        let client = redis::Client::open(url)?;
        ConnectionManager::new(client).await
    }

    fn keys(&self, account: &str) -> (String, String) {
        // The hash tag keeps an account's keys on one cluster slot.
        let base = format!("{}:rl:{{{account}}}", self.prefix);
        (base.clone(), format!("{base}:cooldown"))
    }

    /// Admits one send of `account` now, or says how long until the
    /// trailing window has room.
    pub async fn admit(&self, account: &str) -> redis::RedisResult<Admission> {
        self.admit_at(account, self.rate).await
    }

    /// `admit`, for an account limited to `rate`.
    pub async fn admit_at(&self, account: &str, rate: Rate) -> redis::RedisResult<Admission> {
        let pacing = Pacing::of(rate, self.guard);
        let sent = format!("{}:rl:{{{account}}}:sent", self.prefix);
        let mut conn = self.conn.clone();
        let (admitted, wait_us): (i64, i64) = self
            .admit
            .key(sent)
            .arg(micros(pacing.window))
            .arg(pacing.per_window)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(if admitted == 1 {
            Admission::Go
        } else {
            Admission::Wait(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0).max(1)))
        })
    }

    /// Create-call requests sent through `account` within the last
    /// `rate.per` (what its rate in use is), read only.
    pub async fn sent_recently(&self, account: &str, rate: Rate) -> redis::RedisResult<u32> {
        let sent = format!("{}:rl:{{{account}}}:sent", self.prefix);
        let mut conn = self.conn.clone();
        let n: i64 =
            Script::new(SENT_RECENTLY).key(sent).arg(micros(rate.per)).invoke_async(&mut conn).await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// How far ahead each of `accounts` has its slots booked (zero when its
    /// next slot is free now), in one round trip; read only.
    pub async fn backlog(&self, accounts: &[String]) -> redis::RedisResult<Vec<Duration>> {
        let script = Script::new(BACKLOG);
        let mut invocation = script.prepare_invoke();
        for account in accounts {
            invocation.key(self.keys(account).0);
        }
        let mut conn = self.conn.clone();
        let waits: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        Ok(waits.into_iter().map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))).collect())
    }

    /// The slots' spacing at the default rate.
    pub fn interval(&self) -> Duration {
        Pacing::of(self.rate, self.guard).interval
    }

    /// Reserves the account's next free slot.
    pub async fn reserve(&self, account: &str) -> redis::RedisResult<Reservation> {
        self.reserve_at(account, self.rate).await
    }

    /// `reserve`, for an account limited to `rate`.
    pub async fn reserve_at(&self, account: &str, rate: Rate) -> redis::RedisResult<Reservation> {
        let (tat, cool) = self.keys(account);
        let mut conn = self.conn.clone();
        let (granted, wait_us): (i64, i64) = self
            .reserve
            .key(tat)
            .key(cool)
            .arg(micros(Pacing::of(rate, self.guard).interval))
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

/// The worker's limiter: the shared Redis GCRA, and when Redis cannot be
/// reached, a local `governor` limiter at the account rate divided by the
/// number of workers expected to share it. Redis is tried again after a
/// short cool-off; the first success returns to it.
pub struct Limiter {
    /// `None`: no shared limit at all (benchmark baseline only).
    redis: Option<RedisLimiter>,
    /// The account rate all workers share.
    rate: f64,
    /// How many workers configuration says share it.
    expected_workers: u32,
    /// How many are consuming the work queue now (`set_workers_running`).
    running_workers: std::sync::atomic::AtomicU32,
    max_wait: Duration,
    state: std::sync::Mutex<FallbackState>,
}

#[derive(Default)]
struct FallbackState {
    /// While set and in the future, skip Redis.
    retry_redis_at: Option<tokio::time::Instant>,
    active: bool,
    local: std::collections::HashMap<String, std::sync::Arc<governor::DefaultDirectRateLimiter>>,
}

/// How long to stay on the local limiter before trying Redis again.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(2);
/// A Redis round trip slower than this counts as Redis being down.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

impl Limiter {
    /// `expected_workers`: how many workers share the account when Redis is
    /// down (each then allows `rate / expected_workers`).
    pub fn new(redis: RedisLimiter, rate_per_sec: f64, expected_workers: u32, max_wait: Duration) -> Self {
        metrics::gauge!("tocsin_limiter_fallback_active").set(0.0);
        Self {
            redis: Some(redis),
            rate: rate_per_sec,
            expected_workers: expected_workers.max(1),
            running_workers: std::sync::atomic::AtomicU32::new(0),
            max_wait,
            state: std::sync::Mutex::new(FallbackState::default()),
        }
    }

    /// Tells the limiter how many workers consume the work queue now (the
    /// broker's consumer count). When Redis is down each worker allows the
    /// rate divided by the larger of this and `expected_workers`, so the sum
    /// stays under the rate even when more workers run than configured.
    pub fn set_workers_running(&self, n: u32) {
        let old = self.running_workers.swap(n, std::sync::atomic::Ordering::Relaxed);
        if old != n {
            // Buckets made for another share are made again at the new one.
            self.lock().local.clear();
        }
    }

    /// This worker's share of the default rate while Redis is down.
    pub fn local_rate(&self) -> f64 {
        self.rate / self.workers_sharing()
    }

    /// How many workers share an account's rate while Redis is down.
    fn workers_sharing(&self) -> f64 {
        let running = self.running_workers.load(std::sync::atomic::Ordering::Relaxed);
        f64::from(self.expected_workers.max(running).max(1))
    }

    /// No limiter: every request goes out at once and only a provider 429
    /// slows a worker down (by the job's own backoff). This is the classic
    /// approach, kept as the baseline of `bench/rate.sh`; never for production.
    pub fn disabled() -> Self {
        Self {
            redis: None,
            rate: f64::INFINITY,
            expected_workers: 1,
            running_workers: std::sync::atomic::AtomicU32::new(0),
            max_wait: Duration::ZERO,
            state: std::sync::Mutex::new(FallbackState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FallbackState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the local fallback is in use.
    pub fn fallback_active(&self) -> bool {
        self.lock().active
    }

    /// Reserves a slot: `Granted(wait)` means sleep `wait`, then send.
    pub async fn reserve(&self, account: &str) -> Reservation {
        self.reserve_at(account, None).await
    }

    /// `reserve`, for an account limited to `rate` (`None`: the default rate).
    pub async fn reserve_at(&self, account: &str, rate: Option<Rate>) -> Reservation {
        let Some(redis) = &self.redis else {
            return Reservation::Granted(Duration::ZERO);
        };
        let rate = rate.unwrap_or(Rate::per_second(self.rate));
        let skip_redis = self.lock().retry_redis_at.is_some_and(|t| tokio::time::Instant::now() < t);
        if !skip_redis {
            match tokio::time::timeout(REDIS_TIMEOUT, redis.reserve_at(account, rate)).await {
                Ok(Ok(reservation)) => {
                    let mut state = self.lock();
                    if state.active {
                        state.active = false;
                        state.retry_redis_at = None;
                        metrics::gauge!("tocsin_limiter_fallback_active").set(0.0);
                        tracing::info!("Redis is back: using the shared rate limiter again");
                    }
                    return reservation;
                }
                Ok(Err(e)) => self.enter_fallback(&e.to_string()),
                Err(_) => self.enter_fallback("no answer within 500 ms"),
            }
        }
        self.reserve_locally(account, rate).await
    }

    fn enter_fallback(&self, why: &str) {
        let mut state = self.lock();
        state.retry_redis_at = Some(tokio::time::Instant::now() + REDIS_RETRY_AFTER);
        if !state.active {
            state.active = true;
            metrics::gauge!("tocsin_limiter_fallback_active").set(1.0);
            tracing::error!(
                error = %why,
                local_rate = self.local_rate(),
                "Redis unreachable: falling back to a local rate limiter (rate / workers running)"
            );
        }
    }

    async fn reserve_locally(&self, account: &str, rate: Rate) -> Reservation {
        let limiter = {
            let rate = rate.calls_per_sec() / self.workers_sharing();
            let mut state = self.lock();
            state
                .local
                .entry(account.to_owned())
                .or_insert_with(|| {
                    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
                    let quota = governor::Quota::with_period(period)
                        .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN));
                    std::sync::Arc::new(governor::RateLimiter::direct(quota))
                })
                .clone()
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.max_wait, limiter.until_ready()).await {
            // The wait already happened here.
            Ok(()) => Reservation::Granted(Duration::ZERO),
            Err(_) => Reservation::Refused(started.elapsed()),
        }
    }

    /// Admits one send of `account` now (see the module's documentation), or
    /// says how long to wait. Without Redis there is nothing to ask: the
    /// local limiter's spacing is all there is.
    pub async fn admit(&self, account: &str) -> Admission {
        self.admit_at(account, None).await
    }

    /// `admit`, for an account limited to `rate` (`None`: the default rate).
    pub async fn admit_at(&self, account: &str, rate: Option<Rate>) -> Admission {
        let Some(redis) = &self.redis else { return Admission::Go };
        if self.lock().active {
            return Admission::Go;
        }
        let rate = rate.unwrap_or(Rate::per_second(self.rate));
        match tokio::time::timeout(REDIS_TIMEOUT, redis.admit_at(account, rate)).await {
            Ok(Ok(admission)) => admission,
            Ok(Err(e)) => {
                self.enter_fallback(&e.to_string());
                Admission::Go
            }
            Err(_) => {
                self.enter_fallback("no answer within 500 ms");
                Admission::Go
            }
        }
    }

    /// How far ahead each account's slots are booked (`RedisLimiter::backlog`);
    /// `None` without the shared limiter or when Redis does not answer.
    pub async fn backlog(&self, accounts: &[String]) -> Option<Vec<Duration>> {
        let redis = self.redis.as_ref()?;
        if self.lock().active {
            return None;
        }
        tokio::time::timeout(REDIS_TIMEOUT, redis.backlog(accounts)).await.ok()?.ok()
    }

    /// Pushes the account's slots back after a provider 429 (shared through
    /// Redis; locally there is nothing to share).
    pub async fn cool_down(&self, account: &str, pause: Duration) {
        let Some(redis) = &self.redis else { return };
        match tokio::time::timeout(REDIS_TIMEOUT, redis.cool_down(account, pause)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not share the provider cool-down through Redis"),
            Err(_) => tracing::warn!("could not share the provider cool-down: Redis did not answer"),
        }
    }
}
