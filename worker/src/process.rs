//! One job, start to finish: campaign checks, rate-limit slot, claim, the
//! create-call request, and the outcome recorded in PostgreSQL. `process`
//! returns a decision; the consume loop acks, delays or dead-letters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::Rng;
use sqlx::PgPool;
use tocsin_core::account::{Limits, Rate};
use tocsin_core::calls::{self, CappedClaim, Count, Failing};
use tocsin_core::campaign::{Campaign, CampaignStatus};
use tocsin_core::db;
use tocsin_core::health::{self, Health};
use tocsin_core::limiter::{Admission, Limiter, REDIS_TIMEOUT, Reservation};
use tocsin_core::lines::Lines;
use tocsin_core::provider::{CallRequest, CallWindow, PlaceCallError, PlacedCall, VoiceProvider};
use tocsin_core::queue::DelayTier;
use tocsin_core::route::{AccountName, Mode};
use tocsin_core::{CallJob, CallState, CampaignId};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// What the consume loop does with the job once `process` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The outcome is in PostgreSQL (or there was nothing to do): ack.
    Ack,
    /// Try again later: publish to this delay tier, then ack.
    Delay(DelayTier),
    /// The job can never succeed: reject it to the dead-letter queue.
    DeadLetter(String),
}

/// How long a job may be held waiting for the limiter to have room before
/// it goes back to a delay queue.
const MAX_HOLD: Duration = Duration::from_secs(300);

/// Tunables of `process`, from the worker's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Base URL of the webhook service, without a trailing slash.
    pub public_url: String,
    pub ringing_timeout_secs: u32,
    /// A call `dialing` longer than this was interrupted by a crash.
    pub dialing_lease: Duration,
    pub max_transient_retries: u32,
    /// How long a campaign row is cached (bounds how fast a pause applies).
    pub campaign_ttl: Duration,
    /// Consecutive 401/403 answers after which an account is paused.
    pub auth_failures_before_pause: u32,
    /// How long an account stays paused after repeated 401/403s.
    pub auth_pause: Duration,
    /// A create-call unanswered this long counts as a failure of its
    /// account at once, when its route has another account.
    pub account_slow: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            ringing_timeout_secs: 45,
            dialing_lease: Duration::from_secs(60),
            max_transient_retries: 5,
            campaign_ttl: Duration::from_secs(1),
            auth_failures_before_pause: 3,
            auth_pause: Duration::from_secs(120),
            account_slow: Duration::from_secs(3),
        }
    }
}

/// One provider account this worker holds credentials for.
pub struct Account {
    pub name: AccountName,
    pub client: Arc<dyn VoiceProvider>,
    pub limits: Limits,
}

impl Account {
    /// The key of its shared rate limit and lines: the provider's own
    /// account (`vonage:APPID`), so two names for one account share them.
    pub fn key(&self) -> String {
        self.client.account()
    }
}

/// Everything `process` needs, built once per worker.
pub struct Deps {
    pub pool: PgPool,
    pub limiter: Limiter,
    /// The accounts' shared health (`None`: not tracked, e.g. no Redis limiter).
    pub health: Option<Health>,
    /// The concurrent-call caps' lines (`None`: counted in PostgreSQL).
    pub lines: Option<Lines>,
    /// The accounts this worker holds credentials for.
    pub accounts: HashMap<AccountName, Arc<Account>>,
    pub settings: Settings,
    /// Cancelled on SIGTERM: jobs still waiting for a slot give it up.
    pub shutdown: CancellationToken,
    campaigns: Mutex<HashMap<CampaignId, (Instant, Arc<Campaign>)>>,
    auth: Mutex<HashMap<String, AccountHealth>>,
    /// Set while Redis cannot be reached for the lines: calls placed then
    /// are adopted into them once it answers again.
    lines_down: std::sync::atomic::AtomicBool,
}

/// Consecutive authentication failures of one provider account.
#[derive(Default)]
struct AccountHealth {
    auth_failures: u32,
    paused_until: Option<Instant>,
}

impl Deps {
    pub fn new(
        pool: PgPool,
        limiter: Limiter,
        accounts: Vec<Account>,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pool,
            limiter,
            health: None,
            lines: None,
            accounts: accounts.into_iter().map(|a| (a.name.clone(), Arc::new(a))).collect(),
            settings,
            shutdown,
            campaigns: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
            lines_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The campaign, from a cache at most `campaign_ttl` old.
    async fn campaign(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, sqlx::Error> {
        {
            let cache = self.campaigns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, c)) = cache.get(&id)
                && at.elapsed() < self.settings.campaign_ttl
            {
                return Ok(Some(c.clone()));
            }
        }
        let Some(campaign) = db::campaign(&self.pool, id).await? else {
            return Ok(None);
        };
        let campaign = Arc::new(campaign);
        let mut cache = self.campaigns.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(id, (Instant::now(), campaign.clone()));
        Ok(Some(campaign))
    }

    fn account_paused(&self, account: &str) -> Option<Duration> {
        let accounts = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let until = accounts.get(account)?.paused_until?;
        until.checked_duration_since(Instant::now())
    }

    fn auth_failed(&self, account: &str) {
        let mut accounts = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let health = accounts.entry(account.to_owned()).or_default();
        health.auth_failures += 1;
        if health.auth_failures >= self.settings.auth_failures_before_pause {
            health.paused_until = Some(Instant::now() + self.settings.auth_pause);
            metrics::counter!("tocsin_account_paused_total").increment(1);
            error!(
                %account,
                failures = health.auth_failures,
                pause = ?self.settings.auth_pause,
                "provider keeps refusing our credentials: pausing dialing for this account (fix the credentials)"
            );
        }
    }

    fn auth_ok(&self, account: &str) {
        let mut accounts = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(health) = accounts.get_mut(account) {
            health.auth_failures = 0;
            health.paused_until = None;
        }
    }
}

/// Infrastructure failures (database): the job is retried as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[tracing::instrument(skip_all, fields(call_id = %job.call_id, attempt = job.attempt), err(Display))]
pub async fn process(deps: &Deps, job: &CallJob) -> Result<Outcome, ProcessError> {
    let campaign = match deps.campaign(job.campaign_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            warn!("campaign no longer exists, dropping job");
            return Ok(Outcome::Ack);
        }
        Err(sqlx::Error::ColumnDecode { index, source }) => {
            // A row that breaks the campaign's rules (written by hand, e.g. an
            // unknown time zone): its calls cannot be placed as meant. Fail
            // the call, naming the column, rather than retry it forever or
            // guess (a bad zone is not UTC).
            let detail = format!("the campaign's {index} is invalid: {source}");
            return fail_unclaimed(deps, job, "bad_campaign", &detail).await;
        }
        Err(e) => return Err(e.into()),
    };
    let contact_zone = contact_zone(deps, job, &campaign).await?;
    if let Some(outcome) = campaign_gate(deps, job, &campaign, contact_zone).await? {
        return Ok(outcome);
    }
    let held_since = Instant::now();
    let (chosen, probing) = match choose(deps, &campaign, held_since).await {
        Choice::Use(account, probe) => (account, probe),
        Choice::NotConfigured(detail) => {
            return fail_unclaimed(deps, job, "provider_not_configured", &detail).await;
        }
        Choice::Wait(left) => return Ok(defer(deps, job, DelayTier::at_least(left)).await?),
        Choice::ShuttingDown => return Ok(Outcome::Delay(DelayTier::S1)),
    };
    let (client, key) = (chosen.client.clone(), chosen.key());
    let rate = Some(chosen.limits.rate);
    let account = key.as_str();

    // Reserve a slot, claim the call, then send exactly on the slot: the
    // database work happens while we wait, so nothing but the request itself
    // stands between the slot and the provider (less jitter, no bunching).
    // A refusal means the account's timeline is booked beyond the maximum
    // wait (more jobs in flight than the rate serves in that time). Hold the
    // job and ask again when its turn is nearer, instead of bouncing it
    // through a delay queue: a bounced job comes back late and leaves the
    // slots it could have used empty.
    //
    // With a concurrent-call cap, the job first waits (held, like a refused
    // reservation) until the account has a free line, claims the call and
    // takes the line (`claim_with_line`), and only then reserves its slot: a
    // job that loses the line to another worker has booked no slot, so the
    // many jobs waiting for lines never push the account's timeline ahead of
    // the calls that can go.
    let cap = chosen.limits.max_concurrent;
    let lease = line_lease(deps, &campaign);
    let (slot, url_token) = loop {
        // Held as long as a job may be: back to a delay queue, and the
        // sweeper told it is waiting its turn, not lost.
        if let Some(cap) = cap
            && !wait_for_a_line(deps, &chosen, cap, held_since).await?
        {
            return Ok(defer(deps, job, DelayTier::S5).await?);
        }
        let url_token = calls::new_url_token();
        if let Some(cap) = cap {
            match claim_with_line(deps, job, &chosen, &url_token, cap, lease).await? {
                CappedClaim::Claimed => {}
                CappedClaim::NotWaiting => return decide_unclaimed(deps, job, &chosen, &campaign).await,
                CappedClaim::Full => continue,
            }
        }
        let at = tokio::time::Instant::now();
        match deps.limiter.reserve_at(account, rate).await {
            Reservation::Granted(wait) => {
                metrics::histogram!("tocsin_limiter_wait_seconds").record(wait.as_secs_f64());
                if cap.is_none()
                    && !calls::claim(&deps.pool, job.call_id, job.attempt, chosen.name.clone(), &url_token)
                        .await?
                {
                    return decide_unclaimed(deps, job, &chosen, &campaign).await;
                }
                break (at + wait, url_token);
            }
            Reservation::Refused(wait) => {
                metrics::counter!("tocsin_limiter_refused_total").increment(1);
                if cap.is_some() {
                    // Not held while waiting for a slot: the claim's lease
                    // covers only a granted wait.
                    give_back(deps, job, &chosen).await?;
                }
                if held_since.elapsed() >= MAX_HOLD {
                    return Ok(defer(deps, job, DelayTier::S5).await?);
                }
                let nap = (wait / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                if !sleep_or_shutdown(deps, tokio::time::Instant::now() + nap).await {
                    return Ok(Outcome::Delay(DelayTier::S1));
                }
            }
        }
    };
    // Look at the campaign once more just before the slot: a pause or a
    // cancel must stop dialing within a couple of seconds.
    let check_at = slot.checked_sub(calls::LAST_CHECK_LEAD).unwrap_or(slot).max(tokio::time::Instant::now());
    if !sleep_or_shutdown(deps, check_at).await {
        give_back(deps, job, &chosen).await?;
        return Ok(Outcome::Delay(DelayTier::S1));
    }
    let campaign = match deps.campaign(job.campaign_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            // Deleted meanwhile (its calls with it): nothing to dial.
            give_back(deps, job, &chosen).await?;
            warn!("campaign deleted while its call waited for a slot, dropping job");
            return Ok(Outcome::Ack);
        }
        Err(sqlx::Error::ColumnDecode { index, source }) => {
            // Broken by hand while the call waited: fail the claimed call.
            let detail = format!("the campaign's {index} is invalid: {source}");
            finish_failed(deps, job, "bad_campaign", &detail).await?;
            free_line(deps, job, &chosen).await;
            return Ok(Outcome::Ack);
        }
        Err(e) => {
            give_back(deps, job, &chosen).await?;
            return Err(e.into());
        }
    };
    // The route changed while the call waited (`producer route`): a call
    // whose account left the route goes back to choose again.
    if !campaign.settings.route().accounts.contains(&chosen.name) {
        give_back(deps, job, &chosen).await?;
        info!(account = %chosen.name, route = %campaign.settings.route(), "route changed while the call waited for its slot: choosing again");
        return Ok(Outcome::Delay(DelayTier::S1));
    }
    // The account's breaker opened while the call waited (the calls already
    // in flight when it opened): with another account on its route, the
    // call goes back to choose again instead of adding to the failures. A
    // call that is the account's probe goes.
    if !probing
        && campaign.settings.route().accounts.len() > 1
        && let Some(health) = &deps.health
        && !health.standing(&chosen.name.to_string()).await.usable()
    {
        give_back(deps, job, &chosen).await?;
        metrics::counter!("tocsin_retries_total", "reason" => "account_opened").increment(1);
        info!(account = %chosen.name, "the account became unhealthy while the call waited for its slot: choosing again");
        return Ok(Outcome::Delay(DelayTier::S1));
    }
    // A number put on the do-not-call list while its call waited for the
    // slot: `dnc add` returns only after this check's lead has passed, so
    // no call starts to it once that command has returned.
    match calls::on_do_not_call(&deps.pool, job.to.as_str()).await {
        Ok(true) => {
            calls::skip_claimed_do_not_call(&deps.pool, job.call_id).await?;
            free_line(deps, job, &chosen).await;
            info!("number put on the do-not-call list while its call waited: skipped");
            return Ok(Outcome::Ack);
        }
        Ok(false) => {}
        Err(e) => {
            give_back(deps, job, &chosen).await?;
            return Err(e.into());
        }
    }
    // The contact's own zone, as at the gate: with the campaign's zone here a
    // contact whose window is open while the campaign's is closed would loop.
    if campaign.status != CampaignStatus::Active
        || campaign.expired(Utc::now())
        || campaign.wait_before_calling(contact_zone, Utc::now()).is_some()
    {
        give_back(deps, job, &chosen).await?;
        let gate = campaign_gate(deps, job, &campaign, contact_zone).await?;
        return Ok(gate.unwrap_or(Outcome::Delay(DelayTier::S1)));
    }
    if !sleep_or_shutdown(deps, slot).await || !admitted(deps, account, rate).await {
        give_back(deps, job, &chosen).await?;
        return Ok(Outcome::Delay(DelayTier::S1));
    }
    let request = call_request(deps, job, &campaign, url_token);
    let multi = campaign.settings.route().accounts.len() > 1;
    let (mut result, slow) = place_watched(deps, &chosen, &request, multi).await;
    // A lost answer from an idempotent provider: the same request again is safe.
    if let (Err(PlaceCallError::Ambiguous(_)), Some(window)) = (&result, client.idempotency_window()) {
        let deadline = Instant::now() + window / 2;
        while matches!(result, Err(PlaceCallError::Ambiguous(_))) && Instant::now() < deadline {
            metrics::counter!("tocsin_retries_total", "reason" => "idempotent_resend").increment(1);
            if let Reservation::Granted(wait) = deps.limiter.reserve_at(account, rate).await {
                tokio::time::sleep(wait).await;
                if !admitted(deps, account, rate).await {
                    break;
                }
                result = place(client.as_ref(), &request).await;
            } else {
                break;
            }
        }
    }
    record(deps, job, &campaign, &chosen, result, slow).await
}

/// `place`, and when the route has another account to go to, a request
/// still unanswered after `account_slow` counts as a failure of the
/// account at once (without giving up on it): an account that stopped
/// answering opens within a few seconds rather than a request timeout,
/// and the route moves the next calls on. Returns whether that was
/// counted (the request's own failure then is not counted again).
async fn place_watched(
    deps: &Deps,
    account: &Account,
    request: &CallRequest,
    multi: bool,
) -> (Result<PlacedCall, PlaceCallError>, bool) {
    let sent = place(account.client.as_ref(), request);
    let Some(health) = deps.health.as_ref().filter(|_| multi) else {
        return (sent.await, false);
    };
    tokio::pin!(sent);
    tokio::select! {
        result = &mut sent => return (result, false),
        () = tokio::time::sleep(deps.settings.account_slow) => {}
    }
    let why = format!("no answer to a create-call within {:?}", deps.settings.account_slow);
    health.failed(&account.name.to_string(), &why).await;
    metrics::counter!("tocsin_account_slow_total", "account" => account.name.to_string()).increment(1);
    (sent.await, true)
}

/// Which account of its route a call goes through.
enum Choice {
    /// This account; `true` when this call is its probe (half-open).
    Use(Arc<Account>, bool),
    /// No account of the route is configured on this worker.
    NotConfigured(String),
    /// None is usable (unhealthy, paused) and the job has been held long
    /// enough: put it off this long.
    Wait(Duration),
    ShuttingDown,
}

/// How often a job whose route has no usable account looks again, and for
/// how long before it goes back to a delay queue.
const ROUTE_CHECK_EVERY: Duration = Duration::from_millis(500);
const ROUTE_HOLD: Duration = Duration::from_secs(30);

/// Picks the account for this call from the campaign's route: `failover`,
/// the first usable one in the route's order, preferring one with a free
/// line; `pool`, any usable one at random in proportion to its rate (each
/// is paced by its own limiter, so together they carry the sum of their
/// rates), preferring those with a free line. Usable: configured here,
/// healthy (`Health`: closed, or this worker holds its probe) and not
/// paused for refused credentials. While none is, the job is held
/// (`ROUTE_CHECK_EVERY`), then put off.
async fn choose(deps: &Deps, campaign: &Campaign, held_since: Instant) -> Choice {
    let route = campaign.settings.route();
    let configured: Vec<Arc<Account>> =
        route.accounts.iter().filter_map(|a| deps.accounts.get(a).cloned()).collect();
    if configured.is_empty() {
        let detail = format!("no account of the route {route} is configured on this worker");
        return Choice::NotConfigured(detail);
    }
    loop {
        let mut usable = Vec::new();
        for account in &configured {
            if deps.account_paused(&account.key()).is_some() {
                continue;
            }
            let standing = match &deps.health {
                Some(h) => h.standing(&account.name.to_string()).await,
                None => health::Standing::Closed,
            };
            metrics::gauge!("tocsin_account_usable", "account" => account.name.to_string())
                .set(if standing.usable() { 1.0 } else { 0.0 });
            if standing.usable() {
                // Only a choice between accounts needs their lines counted
                // here: alone, the account's job waits for its line below.
                let cap = account.limits.max_concurrent.filter(|_| configured.len() > 1);
                let free = match cap {
                    Some(cap) => lines_in_use(deps, account, cap).await.map_or(true, |n| n < cap),
                    None => true,
                };
                usable.push((account.clone(), free, standing == health::Standing::Probe));
            }
        }
        // A free line first; a saturated account waits for its line.
        let free: Vec<&Arc<Account>> = usable.iter().filter(|u| u.1).map(|u| &u.0).collect();
        let all: Vec<&Arc<Account>> = usable.iter().map(|u| &u.0).collect();
        let candidates = if free.is_empty() { all } else { free };
        let pick = match route.mode {
            Mode::Failover => candidates.first().copied(),
            Mode::Pool => least_booked(deps, &candidates).await,
        };
        if let Some(account) = pick {
            let probe = usable.iter().any(|u| Arc::ptr_eq(&u.0, account) && u.2);
            return Choice::Use(account.clone(), probe);
        }
        metrics::counter!("tocsin_route_waits_total").increment(1);
        if held_since.elapsed() >= ROUTE_HOLD {
            return Choice::Wait(Duration::from_secs(5));
        }
        if !sleep_or_shutdown(deps, tokio::time::Instant::now() + ROUTE_CHECK_EVERY).await {
            return Choice::ShuttingDown;
        }
    }
}

/// For a pool: the account whose next free slot is soonest (its limiter
/// the least booked), so every account's timeline stays full and the
/// calls go in proportion to the accounts' free capacity; at random in
/// proportion to their rates when the limiter cannot say (Redis down).
async fn least_booked<'a>(deps: &Deps, accounts: &[&'a Arc<Account>]) -> Option<&'a Arc<Account>> {
    if accounts.len() > 1 {
        let keys: Vec<String> = accounts.iter().map(|a| a.key()).collect();
        if let Some(backlog) = deps.limiter.backlog(&keys).await {
            // Ties (several free now) go at random, weighted by rate.
            let least = backlog.iter().min().copied().unwrap_or_default();
            let tied: Vec<&'a Arc<Account>> = accounts
                .iter()
                .zip(&backlog)
                .filter(|(_, b)| **b <= least + BACKLOG_TIE)
                .map(|(a, _)| *a)
                .collect();
            return by_rate(&tied);
        }
    }
    by_rate(accounts)
}

/// Backlogs this close count as equal.
const BACKLOG_TIE: Duration = Duration::from_millis(5);

/// One of `accounts` at random, each in proportion to its rate.
fn by_rate<'a>(accounts: &[&'a Arc<Account>]) -> Option<&'a Arc<Account>> {
    let total: f64 = accounts.iter().map(|a| a.limits.rate.calls_per_sec()).sum();
    let mut x = rand::rng().random_range(0.0..total.max(f64::MIN_POSITIVE));
    for account in accounts {
        x -= account.limits.rate.calls_per_sec();
        if x < 0.0 {
            return Some(account);
        }
    }
    accounts.last().copied()
}

/// How often a job held for a free line looks again.
const LINE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How long a line is leased: the longest its call can last (dialing, its
/// request, ringing, and the campaign's call time limit) and a minute. A
/// call's line normally comes back long before, when the call ends.
fn line_lease(deps: &Deps, campaign: &Campaign) -> Duration {
    let call = Duration::from_secs(u64::from(campaign.settings.call_time_limit_secs()));
    lease_for(deps, call + Duration::from_secs(60))
}

/// A line's lease for a call that may talk for `call`: dialing and ringing first.
fn lease_for(deps: &Deps, call: Duration) -> Duration {
    deps.settings.dialing_lease + Duration::from_secs(u64::from(deps.settings.ringing_timeout_secs)) + call
}

/// Waits until `account` has a free line; `false` on shutdown or once the
/// job has been held `MAX_HOLD`.
async fn wait_for_a_line(
    deps: &Deps,
    account: &Account,
    cap: u32,
    held_since: Instant,
) -> Result<bool, sqlx::Error> {
    loop {
        if lines_in_use(deps, account, cap).await? < cap {
            return Ok(true);
        }
        metrics::counter!("tocsin_concurrency_waits_total", "account" => account.name.to_string())
            .increment(1);
        if held_since.elapsed() >= MAX_HOLD
            || !sleep_or_shutdown(deps, tokio::time::Instant::now() + LINE_CHECK_EVERY).await
        {
            return Ok(false);
        }
    }
}

/// `account`'s lines in use: from Redis, where the lines of calls that
/// have ended are freed when the account is full (`lines`); counted in
/// PostgreSQL while Redis is down.
async fn lines_in_use(deps: &Deps, account: &Account, cap: u32) -> Result<u32, sqlx::Error> {
    if let Some(lines) = &deps.lines {
        let key = account.key();
        match tokio::time::timeout(REDIS_TIMEOUT, lines.in_use(&key, cap)).await {
            Ok(Ok(in_use)) => {
                lines_back(deps, lines, account).await?;
                metrics::gauge!("tocsin_account_lines_in_use", "account" => account.name.to_string())
                    .set(f64::from(in_use.used));
                if in_use.to_check.is_empty() {
                    return Ok(in_use.used);
                }
                let ended = calls::ended_among(&deps.pool, &in_use.to_check).await?;
                if ended.is_empty() {
                    return Ok(in_use.used);
                }
                match tokio::time::timeout(REDIS_TIMEOUT, lines.free(&key, &ended)).await {
                    Ok(Ok(())) => {
                        metrics::counter!("tocsin_account_lines_freed_total").increment(ended.len() as u64);
                        let freed = u32::try_from(ended.len()).unwrap_or(u32::MAX);
                        return Ok(in_use.used.saturating_sub(freed));
                    }
                    Ok(Err(e)) => lines_down(deps, &e.to_string()),
                    Err(_) => lines_down(deps, "no answer within 500 ms"),
                }
            }
            Ok(Err(e)) => lines_down(deps, &e.to_string()),
            Err(_) => lines_down(deps, "no answer within 500 ms"),
        }
    }
    let n = calls::in_progress(&deps.pool, &account.name).await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Redis cannot be reached for the lines: count them in PostgreSQL.
fn lines_down(deps: &Deps, why: &str) {
    if !deps.lines_down.swap(true, std::sync::atomic::Ordering::Relaxed) {
        metrics::gauge!("tocsin_lines_fallback_active").set(1.0);
        error!(error = %why, "Redis unreachable: counting concurrent calls in PostgreSQL until it is back");
    }
}

/// Redis answered: if it had not, the calls placed meanwhile take the
/// lines they hold before anyone takes a new one.
async fn lines_back(deps: &Deps, lines: &Lines, account: &Account) -> Result<(), sqlx::Error> {
    if !deps.lines_down.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let in_progress = calls::in_progress_ids(&deps.pool, &account.name).await?;
    let lease = lease_for(deps, MAX_ADOPTED_CALL);
    if let Ok(Ok(adopted)) =
        tokio::time::timeout(REDIS_TIMEOUT, lines.adopt(&account.key(), &in_progress, lease)).await
        && deps.lines_down.swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        metrics::gauge!("tocsin_lines_fallback_active").set(0.0);
        info!(account = %account.name, adopted, "Redis is back: concurrent calls counted there again");
    }
    Ok(())
}

/// The lease of a call adopted into the lines after a Redis outage (its
/// campaign is not at hand): the longest call time limit a campaign gets.
const MAX_ADOPTED_CALL: Duration = Duration::from_secs(3600);

/// Claims the call and takes a line of `account` for it: in Redis (the
/// claim first, so a line is never held by a call still waiting, which a
/// full account's check would free); when every line is taken the claim
/// is given back (`Full`). While Redis is down, the claim counts calls in
/// progress in PostgreSQL under the account's lock instead.
async fn claim_with_line(
    deps: &Deps,
    job: &CallJob,
    account: &Account,
    url_token: &str,
    cap: u32,
    lease: Duration,
) -> Result<CappedClaim, sqlx::Error> {
    if let Some(lines) = &deps.lines
        && !deps.lines_down.load(std::sync::atomic::Ordering::Relaxed)
    {
        if !calls::claim(&deps.pool, job.call_id, job.attempt, account.name.clone(), url_token).await? {
            return Ok(CappedClaim::NotWaiting);
        }
        match tokio::time::timeout(REDIS_TIMEOUT, lines.take(&account.key(), job.call_id, cap, lease)).await {
            Ok(Ok(true)) => return Ok(CappedClaim::Claimed),
            Ok(Ok(false)) => {
                calls::release(&deps.pool, job.call_id, None).await?;
                return Ok(CappedClaim::Full);
            }
            Ok(Err(e)) => lines_down(deps, &e.to_string()),
            Err(_) => lines_down(deps, "no answer within 500 ms"),
        }
        // Redis failed after the claim: give it back and count in PostgreSQL.
        calls::release(&deps.pool, job.call_id, None).await?;
    }
    calls::claim_within_cap(&deps.pool, job.call_id, job.attempt, &account.name, url_token, cap).await
}

/// Gives back the line `job`'s call holds at `account`, if it is capped
/// (its attempt ended or never started). Best effort: a line not given back
/// is freed when the account is full and its call is seen to have ended.
async fn free_line(deps: &Deps, job: &CallJob, account: &Account) {
    if account.limits.max_concurrent.is_none() {
        return;
    }
    if let Some(lines) = &deps.lines {
        let _ = tokio::time::timeout(REDIS_TIMEOUT, lines.free(&account.key(), &[job.call_id])).await;
    }
}

/// The create-call request of a claimed attempt.
fn call_request(deps: &Deps, job: &CallJob, campaign: &Campaign, url_token: String) -> CallRequest {
    CallRequest {
        call_id: job.call_id,
        attempt: job.attempt,
        to: job.to.clone(),
        from: campaign.settings.from.clone(),
        webhook_base: deps.settings.public_url.clone(),
        url_token,
        ringing_timeout_secs: deps.settings.ringing_timeout_secs,
        machine_detection: campaign.settings.machine_detection_mode(),
        time_limit_secs: campaign.settings.call_time_limit_secs(),
    }
}

/// The longest a send waits for the limiter's admission (normally a few
/// milliseconds, when it woke late for its slot).
const MAX_ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// Waits until the limiter admits a send of `account` (see
/// `tocsin_core::limiter`); `false` on shutdown or after
/// `MAX_ADMISSION_WAIT`, when the caller gives the attempt back.
async fn admitted(deps: &Deps, account: &str, rate: Option<Rate>) -> bool {
    let deadline = tokio::time::Instant::now() + MAX_ADMISSION_WAIT;
    loop {
        match deps.limiter.admit_at(account, rate).await {
            Admission::Go => return true,
            Admission::Wait(wait) => {
                metrics::counter!("tocsin_limiter_admission_waits_total").increment(1);
                let until = tokio::time::Instant::now() + wait;
                if until > deadline || !sleep_or_shutdown(deps, until).await {
                    return false;
                }
            }
        }
    }
}

/// Sleeps until `until`; `false` if shutdown began first.
async fn sleep_or_shutdown(deps: &Deps, until: tokio::time::Instant) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(until) => true,
        () = deps.shutdown.cancelled() => false,
    }
}

async fn place(client: &dyn VoiceProvider, request: &CallRequest) -> Result<PlacedCall, PlaceCallError> {
    let started = Instant::now();
    let result = client.place_call(request).await;
    metrics::histogram!("tocsin_provider_request_seconds", "provider" => client.provider().as_str())
        .record(started.elapsed().as_secs_f64());
    result
}

/// Paused, cancelled, not started yet, outside its window: the decision, or
/// `None` when the campaign may call now.
async fn campaign_gate(
    deps: &Deps,
    job: &CallJob,
    campaign: &Campaign,
    contact_zone: Option<Tz>,
) -> Result<Option<Outcome>, sqlx::Error> {
    match campaign.status {
        CampaignStatus::Cancelled => {
            calls::cancel_waiting(&deps.pool, job.call_id).await?;
            return Ok(Some(Outcome::Ack));
        }
        CampaignStatus::Paused | CampaignStatus::Active => {}
    }
    // Past the deadline no call starts, paused or not.
    if campaign.expired(Utc::now()) {
        if calls::expire_waiting(&deps.pool, job.call_id).await? {
            metrics::counter!("tocsin_calls_expired_total").increment(1);
            info!("campaign's deadline has passed: call expired");
        }
        return Ok(Some(Outcome::Ack));
    }
    if campaign.status == CampaignStatus::Paused {
        return Ok(Some(Outcome::Delay(DelayTier::S5)));
    }
    let Some(wait) = campaign.wait_before_calling(contact_zone, Utc::now()) else {
        return Ok(None);
    };
    Ok(Some(defer(deps, job, DelayTier::at_least(wait)).await?))
}

/// Puts a waiting call's job off by `tier`, telling the sweeper when it is
/// due (a long wait is not a lost job).
async fn defer(deps: &Deps, job: &CallJob, tier: DelayTier) -> Result<Outcome, sqlx::Error> {
    calls::defer(&deps.pool, job.call_id, tier.duration()).await?;
    Ok(Outcome::Delay(tier))
}

/// The contact's own time zone, when the list gave one (`None`: the
/// campaign's applies, read fresh at every check). Only windowed campaigns
/// need it (one more query).
async fn contact_zone(deps: &Deps, job: &CallJob, campaign: &Campaign) -> Result<Option<Tz>, sqlx::Error> {
    if campaign.settings.window.is_none() {
        return Ok(None);
    }
    // The producer checked the zone; one that does not parse falls back to
    // the campaign's, as a contact without a zone does.
    let zone = calls::contact_timezone(&deps.pool, job.call_id).await?;
    Ok(zone.and_then(|z| z.parse().ok()))
}

/// The claim failed: the call was handled already, is in flight elsewhere,
/// or a worker died while dialing it.
async fn decide_unclaimed(
    deps: &Deps,
    job: &CallJob,
    chosen: &Arc<Account>,
    campaign: &Campaign,
) -> Result<Outcome, ProcessError> {
    let Some(standing) = calls::standing(&deps.pool, job.call_id).await? else {
        warn!("call no longer exists, dropping job");
        return Ok(Outcome::Ack);
    };
    if standing.state != CallState::Dialing || standing.attempt != job.attempt {
        info!(state = %standing.state, "call already handled for this attempt, dropping duplicate job");
        return Ok(Outcome::Ack);
    }
    // Only the account the attempt was claimed for can say whether its call
    // exists (a route may have picked another one for this job): never
    // another provider, so no call is placed twice across providers.
    let account = match &standing.account {
        Some(name) => match deps.accounts.get(name) {
            Some(account) => account.clone(),
            None => {
                warn!(account = %name, "the attempt was claimed for an account not configured on this worker; leaving it to one that is");
                return Ok(Outcome::Delay(DelayTier::S5));
            }
        },
        None => chosen.clone(),
    };
    let client = account.client.as_ref();
    let dialing_for = standing.dialing_for();
    // A provider that ignores a repeated create-call of the same call and
    // attempt within a window (Telnyx's command_id, 60 s): while it is open,
    // sending the same request again is safe whether or not the worker that
    // claimed the call got its request out (it died, most likely, and its
    // job came back). Much better than waiting out the lease to find the
    // provider cannot be asked, and marking the call `unknown`.
    if let (Some(window), Some(token)) = (client.idempotency_window(), standing.url_token.clone())
        && dialing_for + IDEMPOTENT_MARGIN < window
    {
        return resend_within_window(deps, job, &account, campaign, token).await;
    }
    if dialing_for < deps.settings.dialing_lease {
        // Another worker may be dialing right now: look again later.
        return Ok(Outcome::Delay(DelayTier::at_most(deps.settings.dialing_lease - dialing_for)));
    }
    let dialing_at = standing.dialing_at.unwrap_or(standing.now);
    reconcile(deps, job, &account, dialing_at).await
}

/// How much of a provider's idempotency window a resend leaves unused: its
/// own wait for a slot and request, and clock differences.
const IDEMPOTENT_MARGIN: Duration = Duration::from_secs(15);

/// Sends the claimed attempt's request again, the same (same command id,
/// same URL token), within the provider's idempotency window.
async fn resend_within_window(
    deps: &Deps,
    job: &CallJob,
    account: &Arc<Account>,
    campaign: &Campaign,
    url_token: String,
) -> Result<Outcome, ProcessError> {
    metrics::counter!("tocsin_retries_total", "reason" => "idempotent_resend").increment(1);
    let (key, rate) = (account.key(), Some(account.limits.rate));
    match deps.limiter.reserve_at(&key, rate).await {
        Reservation::Granted(wait) if wait < IDEMPOTENT_MARGIN / 3 => tokio::time::sleep(wait).await,
        // No slot soon enough: try again shortly, still inside the window.
        _ => return Ok(Outcome::Delay(DelayTier::S1)),
    }
    if !admitted(deps, &key, rate).await {
        return Ok(Outcome::Delay(DelayTier::S1));
    }
    info!(
        "call claimed by a worker that did not finish: sending the same request again within the provider's window"
    );
    let request = call_request(deps, job, campaign, url_token);
    let result = place(account.client.as_ref(), &request).await;
    record(deps, job, campaign, account, result, false).await
}

/// A call stuck in `dialing`: a worker died mid-request, or the request's
/// answer was lost. Ask the provider whether the call exists; dial again
/// only when it confirms there is none.
async fn reconcile(
    deps: &Deps,
    job: &CallJob,
    account: &Account,
    dialing_at: DateTime<Utc>,
) -> Result<Outcome, ProcessError> {
    let client = account.client.as_ref();
    metrics::counter!("tocsin_reconciliations_total").increment(1);
    // Only this attempt's call may be recorded: one created while this
    // attempt could have been sending (claim to lease end, ± the allowed
    // clock skew), and not a call another row (another campaign calling the
    // same number) or an earlier attempt already owns.
    let window = CallWindow::of_attempt(dialing_at, deps.settings.dialing_lease);
    let listed = match client.list_calls(&job.to, window).await {
        Ok(listed) => listed,
        Err(e) => {
            warn!(error = %e, "cannot ask the provider about an interrupted call; marking unknown for the operator");
            let detail = format!("interrupted while dialing and the provider could not be asked: {e}");
            calls::record_unknown(&deps.pool, job.call_id, job.attempt, &detail).await?;
            metrics::counter!("tocsin_calls_unknown_total").increment(1);
            return Ok(Outcome::Ack);
        }
    };
    let mut candidates: Vec<String> =
        listed.iter().filter(|c| window.admits(c)).map(|c| c.provider_call_id.clone()).collect();
    candidates.dedup();
    let elsewhere = calls::known_elsewhere(&deps.pool, job.call_id, client.provider(), &candidates).await?;
    candidates.retain(|id| !elsewhere.contains(id));
    match candidates.as_slice() {
        [] => {
            info!(
                listed = listed.len(),
                "provider confirms no call of this attempt exists: releasing the call for a new dial"
            );
            give_back(deps, job, account).await?;
            metrics::counter!("tocsin_retries_total", "reason" => "reconciled_absent").increment(1);
            Ok(Outcome::Delay(DelayTier::S1))
        }
        [found] => {
            info!(provider_call_id = %found, "provider has this attempt's call: recording it");
            calls::record_placed(&deps.pool, job.call_id, found).await?;
            Ok(Outcome::Ack)
        }
        several => {
            // Two calls to this number in this attempt's window, neither
            // owned by another row: it cannot tell which is this one.
            warn!(candidates = ?several, "several provider calls fit this attempt; marking unknown for the operator");
            let detail = format!(
                "interrupted while dialing; {} provider calls to this number fit this attempt ({}), cannot tell which",
                several.len(),
                several.join(", ")
            );
            calls::record_unknown(&deps.pool, job.call_id, job.attempt, &detail).await?;
            metrics::counter!("tocsin_calls_unknown_total").increment(1);
            Ok(Outcome::Ack)
        }
    }
}

fn outcome_label(result: &Result<PlacedCall, PlaceCallError>) -> &'static str {
    match result {
        Ok(_) => "placed",
        Err(PlaceCallError::RateLimited { .. }) => "rate_limited",
        Err(PlaceCallError::Transient(_)) => "transient",
        Err(PlaceCallError::Permanent { .. }) => "permanent",
        Err(PlaceCallError::Ambiguous(_)) => "ambiguous",
    }
}

/// Records the create-call result; every branch writes before it returns.
async fn record(
    deps: &Deps,
    job: &CallJob,
    campaign: &Campaign,
    chosen: &Account,
    result: Result<PlacedCall, PlaceCallError>,
    counted_slow: bool,
) -> Result<Outcome, ProcessError> {
    let provider = chosen.name.provider;
    let key = chosen.key();
    let account = key.as_str();
    // A call that did not start gives its line back (an ambiguous one may
    // exist: it keeps it until it is reconciled or its lease ends).
    if matches!(result, Err(ref e) if !matches!(e, PlaceCallError::Ambiguous(_))) {
        free_line(deps, job, chosen).await;
    }
    metrics::counter!("tocsin_calls_total", "provider" => provider.as_str(), "outcome" => outcome_label(&result))
        .increment(1);
    // The account's health, shared by every worker: failures of the account
    // (not of the call) count, a success forgives.
    let name = chosen.name.to_string();
    if let Some(health) = &deps.health {
        match &result {
            Ok(_) => health.succeeded(&name).await,
            Err(PlaceCallError::Transient(why) | PlaceCallError::Ambiguous(why)) if !counted_slow => {
                health.failed(&name, why).await;
            }
            Err(PlaceCallError::Permanent { status: 401 | 403, code, detail }) => {
                health.failed(&name, &format!("{code} {detail}")).await;
            }
            Err(_) => {}
        }
    }
    // Refused credentials are the account's fault, not the call's: with
    // another account on its route the call is given back and goes that way.
    if let Err(PlaceCallError::Permanent { status: status @ (401 | 403), code, detail }) = &result
        && campaign.settings.route().accounts.len() > 1
    {
        deps.auth_failed(account);
        let why = format!("{name} refused our credentials ({status} {code}: {detail})");
        release(deps, job, Some(Count::Transient(&why))).await?;
        metrics::counter!("tocsin_retries_total", "reason" => "account_refused").increment(1);
        warn!(%why, "account refused the call's credentials; the call goes through the next account of its route");
        return Ok(Outcome::Delay(DelayTier::S1));
    }
    match result {
        Ok(placed) => {
            deps.auth_ok(account);
            // An event may already have moved the call further: it keeps the higher state.
            calls::record_placed(&deps.pool, job.call_id, &placed.provider_call_id).await?;
            info!(campaign = %campaign.name, provider_call_id = %placed.provider_call_id, "call placed");
            Ok(Outcome::Ack)
        }
        Err(PlaceCallError::RateLimited { retry_after }) => {
            // Not an attempt: give the claim back and slow every worker down.
            let pause = retry_after.unwrap_or(Duration::from_secs(1));
            deps.limiter.cool_down(account, pause).await;
            let count = release(deps, job, Some(Count::RateLimited)).await?;
            metrics::counter!("tocsin_retries_total", "reason" => "rate_limited").increment(1);
            // Capped: a long outage of the provider's patience should not park a contact for an hour.
            let backoff = jittered(Duration::from_secs(1), count).min(Duration::from_secs(30)).max(pause);
            warn!(?pause, ?backoff, "provider rate limited us; cooling down");
            Ok(Outcome::Delay(DelayTier::at_least(backoff)))
        }
        Err(PlaceCallError::Transient(detail)) => {
            let retries = release(deps, job, Some(Count::Transient(&detail))).await?;
            // With other accounts on its route the failure is most likely the
            // account's (its breaker opens and the call goes elsewhere, or is
            // one of its probes): each account gets the call's full budget,
            // and the retry comes at once.
            let accounts = u32::try_from(campaign.settings.route().accounts.len()).unwrap_or(1).max(1);
            if retries > deps.settings.max_transient_retries.saturating_mul(accounts) {
                finish_failed(deps, job, "transient_exhausted", &detail).await?;
                warn!(%detail, retries, "transient failures exhausted; call failed");
                return Ok(Outcome::Ack);
            }
            metrics::counter!("tocsin_retries_total", "reason" => "transient").increment(1);
            warn!(%detail, retries, "transient provider failure; will retry");
            let backoff = if accounts > 1 {
                Duration::from_secs(1)
            } else {
                jittered(Duration::from_secs(1), retries).min(Duration::from_secs(120))
            };
            Ok(Outcome::Delay(DelayTier::at_least(backoff)))
        }
        Err(PlaceCallError::Permanent { status, code, detail }) => {
            if matches!(status, 401 | 403) {
                deps.auth_failed(account);
            }
            finish_failed(deps, job, &format!("{status} {code}"), &detail).await?;
            warn!(status, %code, %detail, "provider refused the call");
            Ok(Outcome::Ack)
        }
        Err(PlaceCallError::Ambiguous(detail)) => {
            // The call may exist: never dial blind. Leave it `dialing`; once
            // the lease has passed (the job comes back no later, and waits
            // again if early), the provider is asked.
            calls::record_ambiguous(&deps.pool, job.call_id, &detail).await?;
            metrics::counter!("tocsin_retries_total", "reason" => "ambiguous").increment(1);
            warn!(%detail, "create-call answer lost; will ask the provider after the dialing lease");
            Ok(Outcome::Delay(DelayTier::at_most(deps.settings.dialing_lease)))
        }
    }
}

/// Exponential backoff with full jitter: uniform in [0, base · 2^n], at least `base`.
pub fn jittered(base: Duration, n: u32) -> Duration {
    let cap = base.saturating_mul(1 << n.min(12));
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(0..=millis)).max(base)
}

/// Gives a claimed call back; see `calls::release`.
async fn release(deps: &Deps, job: &CallJob, count: Option<Count<'_>>) -> Result<u32, sqlx::Error> {
    calls::release(&deps.pool, job.call_id, count).await
}

/// Gives a claimed call back, uncounted, with its line at `account`.
async fn give_back(deps: &Deps, job: &CallJob, account: &Account) -> Result<u32, sqlx::Error> {
    let n = release(deps, job, None).await?;
    free_line(deps, job, account).await;
    Ok(n)
}

async fn finish_failed(deps: &Deps, job: &CallJob, code: &str, detail: &str) -> Result<(), sqlx::Error> {
    calls::record_failed(&deps.pool, job.call_id, Failing::Claimed, code, detail).await
}

/// A call that cannot be placed for a reason of configuration: failed
/// without a claim or a dial.
async fn fail_unclaimed(
    deps: &Deps,
    job: &CallJob,
    code: &str,
    detail: &str,
) -> Result<Outcome, ProcessError> {
    warn!(%code, %detail, "call cannot be placed");
    calls::record_failed(&deps.pool, job.call_id, Failing::Waiting, code, detail).await?;
    Ok(Outcome::Ack)
}
