//! A call's state, owned once: every write to `calls` after the producer
//! inserts the rows goes through this module — the worker's claim, release
//! and create-call results, the webhook's batches of provider events, the
//! redial policy, and the operator's cancel and do-not-call skips.
//!
//! The forward-only rule is `CallState::advance` in Rust and the SQL
//! function `call_state_advance` (migrations); every statement here that
//! moves a call on a report uses the SQL one, `fold` uses the Rust one, and
//! `core/tests/core/calls.rs` proves they agree for every pair of states. State
//! names appear as literals only here and in `state.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::job::JOB_VERSION;
use crate::provider::Provider;
use crate::queue::DelayTier;
use crate::route::AccountName;
use crate::{CallId, CallJob, CallState, CampaignId, PhoneNumber};

fn attempt_i32(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------
// The worker's side: claim, release, and the create-call result.
// ---------------------------------------------------------------------------

/// Claims the call for `attempt` through `account`: one conditional
/// UPDATE, so of all the workers holding a copy of the job exactly one
/// proceeds to dial. A call whose contact has confirmed is never claimed
/// again. Clears what an earlier attempt recorded, records the account
/// (provider and label), and sets the attempt's URL token (see
/// `new_url_token`), which its answer and event URLs must carry.
pub async fn claim(
    pool: &PgPool,
    call: CallId,
    attempt: u32,
    account: impl Into<AccountName>,
    url_token: &str,
) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    claim_in(&mut conn, call, attempt, &account.into(), url_token).await
}

async fn claim_in(
    conn: &mut PgConnection,
    call: CallId,
    attempt: u32,
    account: &AccountName,
    url_token: &str,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE calls SET state = 'dialing', attempt = $2, provider = $3, account = $5, dialing_at = now(), \
                first_dialing_at = coalesce(first_dialing_at, now()), updated_at = now(), provider_call_id = NULL, placed_at = NULL, answered_at = NULL, \
                ended_at = NULL, answered_by = NULL, duration_secs = NULL, error_code = NULL, \
                error_detail = NULL, url_token = $4, job_due_at = NULL, voicemail_at = NULL \
         WHERE id = $1 AND state IN ('queued', 'retry_wait') AND attempt < $2 AND confirmed_at IS NULL",
    )
    .bind(call)
    .bind(attempt_i32(attempt))
    .bind(account.provider.as_str())
    .bind(url_token)
    .bind(account.label.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// How a claim under a concurrent-call cap went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CappedClaim {
    /// The call is ours to dial.
    Claimed,
    /// The call is no longer waiting (handled, or in flight elsewhere).
    NotWaiting,
    /// `cap` calls of the account are in progress: nothing was claimed.
    Full,
}

/// The calls of account `$1`:`$2` in progress (`dialing` to `answered`),
/// through the partial index `calls_in_progress` (a NULL account is the
/// provider's `default`, as attempts placed before accounts had names).
macro_rules! in_progress_of {
    ($what:literal) => {
        concat!(
            "SELECT ",
            $what,
            " FROM calls WHERE provider = $1 AND coalesce(account, 'default') = $2 \
             AND state IN ('dialing', 'placed', 'ringing', 'answered')"
        )
    };
}

/// Calls of `account` in progress (`dialing` to `answered`): what its
/// concurrent-call cap counts.
pub async fn in_progress(pool: &PgPool, account: &AccountName) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(in_progress_of!("count(*)"))
        .bind(account.provider.as_str())
        .bind(account.label.as_str())
        .fetch_one(pool)
        .await
}

/// The ids of `account`'s calls in progress.
pub async fn in_progress_ids(pool: &PgPool, account: &AccountName) -> Result<Vec<CallId>, sqlx::Error> {
    sqlx::query_scalar(in_progress_of!("id"))
        .bind(account.provider.as_str())
        .bind(account.label.as_str())
        .fetch_all(pool)
        .await
}

/// Of `calls`, those no longer in progress (ended, or waiting for another
/// attempt, or gone): their concurrent-call lines are free.
pub async fn ended_among(pool: &PgPool, calls: &[CallId]) -> Result<Vec<CallId>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = calls.iter().map(|c| c.0).collect();
    let still: Vec<CallId> = sqlx::query_scalar(
        "SELECT id FROM calls WHERE id = ANY($1) AND state IN ('dialing', 'placed', 'ringing', 'answered')",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(calls.iter().filter(|c| !still.contains(c)).copied().collect())
}

/// `claim`, but only while fewer than `cap` calls of `account` are in
/// progress: the count and the claim happen under one advisory lock per
/// account, so two workers never both take its last free line. A line
/// comes back when its call ends (its final event, or the sweeper's look-up
/// when that event is lost). The workers' way when Redis is down (`lines`).
pub async fn claim_within_cap(
    pool: &PgPool,
    call: CallId,
    attempt: u32,
    account: &AccountName,
    url_token: &str,
    cap: u32,
) -> Result<CappedClaim, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("tocsin.cap:{account}"))
        .execute(&mut *tx)
        .await?;
    let busy: i64 = sqlx::query_scalar(in_progress_of!("count(*)"))
        .bind(account.provider.as_str())
        .bind(account.label.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if busy >= i64::from(cap) {
        return Ok(CappedClaim::Full);
    }
    let claimed = claim_in(&mut tx, call, attempt, account, url_token).await?;
    tx.commit().await?;
    Ok(if claimed { CappedClaim::Claimed } else { CappedClaim::NotWaiting })
}

/// A fresh URL token: 122 random bits (a v4 UUID's), as 32 hex digits.
pub fn new_url_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `given` is the URL token of the call's current attempt, compared
/// in constant time. A call claimed before tokens existed (none stored, no
/// longer waiting) is let through so an upgrade loses no call in flight.
pub async fn url_token_matches(
    pool: &PgPool,
    call: CallId,
    given: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let row: Option<(Option<String>, String)> =
        sqlx::query_as("SELECT url_token, state FROM calls WHERE id = $1")
            .bind(call)
            .fetch_optional(pool)
            .await?;
    Ok(row.is_some_and(|(stored, state)| url_token_ok(stored.as_deref(), &state, given)))
}

/// Whether `given` is the call's stored URL token (`url_token_matches`'s
/// rule, for callers that read the call already).
pub fn url_token_ok(stored: Option<&str>, state: &str, given: Option<&str>) -> bool {
    match stored {
        Some(stored) => given.is_some_and(|g| constant_time_eq(stored.as_bytes(), g.as_bytes())),
        None => !matches!(state, "queued" | "retry_wait"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Of the provider call ids a reconciliation found, those that cannot be
/// this attempt's call: recorded on another call's row (another campaign
/// calling the same number), or named by events of this call from an
/// earlier attempt (this attempt's own events would have moved the call
/// out of `dialing`).
pub async fn known_elsewhere(
    pool: &PgPool,
    call: CallId,
    provider: Provider,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT provider_call_id FROM calls          WHERE provider = $2 AND provider_call_id = ANY($3) AND id <> $1          UNION          SELECT provider_call_id FROM call_events          WHERE call_id = $1 AND provider = $2 AND provider_call_id = ANY($3)",
    )
    .bind(call)
    .bind(provider.as_str())
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The number a call dials (E.164) and whether it has ended, if the call exists.
pub async fn number_and_end(pool: &PgPool, call: CallId) -> Result<Option<(String, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT number, call_state_terminal(state) FROM calls WHERE id = $1")
        .bind(call)
        .fetch_optional(pool)
        .await
}

/// Where a call stands, as a worker whose claim failed needs to know.
#[derive(Debug, Clone)]
pub struct Standing {
    pub state: CallState,
    pub attempt: u32,
    pub dialing_at: Option<DateTime<Utc>>,
    /// The database's clock when read (the lease is measured on it).
    pub now: DateTime<Utc>,
    /// The claimed attempt's URL token (a resend must carry the same).
    pub url_token: Option<String>,
    /// The account the attempt was claimed for (with a route, not always
    /// the campaign's first): only it can say whether the call exists.
    pub account: Option<AccountName>,
}

impl Standing {
    /// How long the call has been `dialing` by the database's clock.
    pub fn dialing_for(&self) -> Duration {
        (self.now - self.dialing_at.unwrap_or(self.now)).to_std().unwrap_or_default()
    }
}

/// The call's state, attempt and dialing time; `None` when it no longer exists.
pub async fn standing(pool: &PgPool, call: CallId) -> Result<Option<Standing>, sqlx::Error> {
    type Row =
        (String, i32, Option<DateTime<Utc>>, DateTime<Utc>, Option<String>, Option<String>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, attempt, dialing_at, now(), url_token, provider, account FROM calls WHERE id = $1",
    )
    .bind(call)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(state, attempt, dialing_at, now, url_token, provider, label)| Standing {
        account: provider.and_then(|p| p.parse::<Provider>().ok()).map(|provider| AccountName {
            provider,
            label: label.unwrap_or_else(|| crate::route::DEFAULT_LABEL.to_owned()),
        }),
        // The column's CHECK lists exactly `CallState::ALL`.
        state: state.parse().unwrap_or(CallState::Unknown),
        attempt: u32::try_from(attempt).unwrap_or(0),
        dialing_at,
        now,
        url_token,
    }))
}

/// The contact's own IANA time zone, if its list gave one.
pub async fn contact_timezone(pool: &PgPool, call: CallId) -> Result<Option<String>, sqlx::Error> {
    let zone: Option<Option<String>> = sqlx::query_scalar("SELECT timezone FROM calls WHERE id = $1")
        .bind(call)
        .fetch_optional(pool)
        .await?;
    Ok(zone.flatten())
}

/// What a released claim counts.
#[derive(Debug, Clone, Copy)]
pub enum Count<'a> {
    /// The provider answered 429: not an attempt.
    RateLimited,
    /// A 5xx or connection error, with its detail.
    Transient(&'a str),
}

/// Gives a claimed call back (the attempt did not happen) and returns the
/// updated count of the given kind (0 when nothing is counted).
pub async fn release(pool: &PgPool, call: CallId, count: Option<Count<'_>>) -> Result<u32, sqlx::Error> {
    let (transient, rate_limited, detail) = match count {
        None => (0, 0, None),
        Some(Count::RateLimited) => (0, 1, None),
        Some(Count::Transient(d)) => (1, 0, Some(d)),
    };
    let counts: Option<(i32, i32)> = sqlx::query_as(
        "UPDATE calls SET state = CASE WHEN attempt <= 1 THEN 'queued' ELSE 'retry_wait' END, \
                attempt = attempt - 1, \
                transient_failures = transient_failures + $2, \
                rate_limited = rate_limited + $3, \
                error_detail = coalesce($4, error_detail), updated_at = now(), job_due_at = NULL \
         WHERE id = $1 AND state = 'dialing' \
         RETURNING transient_failures, rate_limited",
    )
    .bind(call)
    .bind(transient)
    .bind(rate_limited)
    .bind(detail)
    .fetch_optional(pool)
    .await?;
    let (t, r) = counts.unwrap_or((0, 0));
    let n = if rate_limited > 0 { r } else { t };
    Ok(u32::try_from(n).unwrap_or(0))
}

/// A worker put the job of a waiting call off until `due` from now (its
/// calling window is closed, its start is later, its account is paused):
/// the sweeper must not take the wait for a lost job.
pub async fn defer(pool: &PgPool, call: CallId, due: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET job_due_at = now() + make_interval(secs => $2) \
         WHERE id = $1 AND state IN ('queued', 'retry_wait')",
    )
    .bind(call)
    .bind(due.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// A machine answered attempt `attempt` and the voicemail is being left
/// (after its greeting): the call's `completed` will end it `voicemail`.
/// Returns whether the attempt is still the call's and not over.
pub async fn record_voicemail(pool: &PgPool, call: CallId, attempt: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE calls SET voicemail_at = coalesce(voicemail_at, now()), answered_by = 'machine', \
                updated_at = now() \
         WHERE id = $1 AND attempt = $2 AND NOT call_state_terminal(state)",
    )
    .bind(call)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a machine answered attempt `attempt` of the call, as its events
/// have said so far (`answered_by`).
pub async fn machine_answered(pool: &PgPool, call: CallId, attempt: i32) -> Result<bool, sqlx::Error> {
    let by: Option<Option<String>> =
        sqlx::query_scalar("SELECT answered_by FROM calls WHERE id = $1 AND attempt = $2")
            .bind(call)
            .bind(attempt)
            .fetch_optional(pool)
            .await?;
    Ok(by.flatten().as_deref() == Some("machine"))
}

/// The provider has the call (its create-call answer, or found when
/// reconciling): record its id and move to `placed` unless an event has
/// already moved the call further.
pub async fn record_placed(pool: &PgPool, call: CallId, provider_call_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET provider_call_id = coalesce(provider_call_id, $2), \
                placed_at = coalesce(placed_at, now()), updated_at = now(), \
                error_code = NULL, error_detail = NULL, \
                state = call_state_advance(state, answered_at IS NOT NULL, 'placed', false) \
         WHERE id = $1",
    )
    .bind(call)
    .bind(provider_call_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The create-call answer was lost: the call stays `dialing` (it may
/// exist) with the reason, until reconciliation after the lease.
pub async fn record_ambiguous(pool: &PgPool, call: CallId, detail: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET error_code = 'ambiguous', error_detail = $2, updated_at = now() \
         WHERE id = $1 AND state = 'dialing'",
    )
    .bind(call)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// Interrupted while dialing and the provider cannot say whether the call
/// exists: `unknown`, for the operator (never dialled again blind).
pub async fn record_unknown(
    pool: &PgPool,
    call: CallId,
    attempt: u32,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET state = 'unknown', error_code = 'interrupted', error_detail = $3, \
                ended_at = now(), updated_at = now() \
         WHERE id = $1 AND state = 'dialing' AND attempt = $2",
    )
    .bind(call)
    .bind(attempt_i32(attempt))
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// Which calls `record_failed` may fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failing {
    /// A call this worker claimed (any state not yet final).
    Claimed,
    /// A call not yet claimed, failed for a reason of configuration.
    Waiting,
}

/// Ends the call `failed` with the provider's (or our) code and detail.
pub async fn record_failed(
    pool: &PgPool,
    call: CallId,
    which: Failing,
    code: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let query = match which {
        Failing::Claimed => {
            "UPDATE calls SET state = 'failed', error_code = $2, error_detail = $3, ended_at = now(), \
                    updated_at = now() \
             WHERE id = $1 AND NOT call_state_terminal(state)"
        }
        Failing::Waiting => {
            "UPDATE calls SET state = 'failed', error_code = $2, error_detail = $3, ended_at = now(), \
                    updated_at = now() \
             WHERE id = $1 AND state IN ('queued', 'retry_wait')"
        }
    };
    sqlx::query(query).bind(call).bind(code).bind(detail).execute(pool).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The operator's side: cancel and do-not-call.
// ---------------------------------------------------------------------------

/// Cancels one waiting call (its campaign was cancelled); a call being
/// dialled or in progress is left to finish.
pub async fn cancel_waiting(pool: &PgPool, call: CallId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET state = 'cancelled', ended_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('queued', 'retry_wait')",
    )
    .bind(call)
    .execute(pool)
    .await?;
    Ok(())
}

/// Expires one waiting call: its campaign's deadline has passed, so it is
/// never dialled. A call being dialled or in progress is left to finish.
pub async fn expire_waiting(pool: &PgPool, call: CallId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE calls SET state = 'expired', ended_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('queued', 'retry_wait')",
    )
    .bind(call)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Cancels every waiting call of a campaign; returns how many.
pub async fn cancel_campaign_waiting(
    db: impl PgExecutor<'_>,
    campaign: CampaignId,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE calls SET state = 'cancelled', ended_at = now(), updated_at = now() \
         WHERE campaign_id = $1 AND state IN ('queued', 'retry_wait')",
    )
    .bind(campaign)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The longest a claimed call waits between the worker's last look at its
/// campaign and the do-not-call list and its create-call request (the look
/// is taken this long before the rate-limit slot).
pub const LAST_CHECK_LEAD: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `number` is on the do-not-call list (the worker's last check).
pub async fn on_do_not_call(pool: &PgPool, number: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM do_not_call WHERE number = $1)")
        .bind(number)
        .fetch_one(pool)
        .await
}

/// Skips a call a worker has claimed but not yet dialled, whose number was
/// put on the do-not-call list meanwhile.
pub async fn skip_claimed_do_not_call(pool: &PgPool, call: CallId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET state = 'skipped', error_code = 'do_not_call', \
         error_detail = 'on the do-not-call list', ended_at = now(), updated_at = now() \
         WHERE id = $1 AND state = 'dialing'",
    )
    .bind(call)
    .execute(pool)
    .await?;
    Ok(())
}

/// Skips every waiting call, in any campaign, to these numbers (they were
/// put on the do-not-call list); returns how many. Calls being dialled finish.
pub async fn skip_do_not_call(db: impl PgExecutor<'_>, numbers: &[String]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE calls SET state = 'skipped', error_code = 'do_not_call', \
         error_detail = 'on the do-not-call list', ended_at = now(), updated_at = now() \
         WHERE number = ANY($1) AND state IN ('queued', 'retry_wait')",
    )
    .bind(numbers)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The waiting calls of a campaign whose job an interrupted enqueue run
/// wrote but never saw confirmed (their `enqueue_batch` is not recorded in
/// `enqueue_batches`), by batch: `(call, number, enqueue batch)`. Calls a
/// worker has taken are no longer waiting.
pub fn unconfirmed(
    pool: &PgPool,
    campaign: CampaignId,
) -> futures::stream::BoxStream<'_, Result<(CallId, String, i64), sqlx::Error>> {
    sqlx::query_as(
        "SELECT c.id, c.number, c.enqueue_batch FROM calls c \
         WHERE c.campaign_id = $1 AND c.state = 'queued' AND c.enqueue_batch IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM enqueue_batches b WHERE b.id = c.enqueue_batch) \
         ORDER BY c.enqueue_batch",
    )
    .bind(campaign)
    .fetch(pool)
}

/// Sets calls to `state` without any rule: for tests and benchmarks that
/// stage calls in a given state. No service calls it.
pub async fn stage(db: impl PgExecutor<'_>, calls: &[CallId], state: CallState) -> Result<u64, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = calls.iter().map(|c| c.0).collect();
    let done = sqlx::query(
        "UPDATE calls SET state = $2, updated_at = now(), \
                dialing_at = CASE WHEN $2 = 'dialing' THEN now() ELSE dialing_at END, \
                attempt = CASE WHEN $2 = 'dialing' THEN greatest(attempt, 1) ELSE attempt END \
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(state.as_str())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

// ---------------------------------------------------------------------------
// The webhook's side: provider events, folded and applied per batch.
// ---------------------------------------------------------------------------

/// What one provider event says about its call, in every provider's terms.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub call_id: Option<CallId>,
    /// The attempt named in the event URL, when the provider echoes it.
    pub attempt: Option<i32>,
    /// The call state the provider's status maps to, if any.
    pub state: Option<CallState>,
    pub provider_call_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<i32>,
    pub price: Option<f64>,
    /// `human` or `machine`, from answering-machine detection.
    pub answered_by: Option<String>,
    pub detail: Option<String>,
}

/// Everything a batch of events does to one call.
#[derive(Debug)]
pub struct CallUpdate {
    pub call_id: CallId,
    pub attempt: Option<i32>,
    pub state: Option<CallState>,
    pub provider_call_id: Option<String>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<i32>,
    pub price: Option<f64>,
    pub answered_by: Option<String>,
    pub detail: Option<String>,
}

/// Folds a batch's events into one update per call, in event order, with
/// the forward-only rule (`CallState::advance`); the SQL applies the same
/// rule against the stored state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<CallUpdate> {
    let mut by_call: BTreeMap<uuid::Uuid, Vec<&Event>> = BTreeMap::new();
    for e in events {
        if let Some(id) = e.call_id {
            by_call.entry(id.0).or_default().push(e);
        }
    }
    let mut out = Vec::with_capacity(by_call.len());
    for (id, mut evs) in by_call {
        // Only the newest attempt in the batch counts.
        let attempt = evs.iter().filter_map(|e| e.attempt).max();
        evs.retain(|e| e.attempt.is_none() || e.attempt == attempt);
        evs.sort_by_key(|e| e.occurred_at);
        let mut u = CallUpdate {
            call_id: CallId(id),
            attempt,
            state: None,
            provider_call_id: None,
            answered_at: None,
            ended_at: None,
            duration_secs: None,
            price: None,
            answered_by: None,
            detail: None,
        };
        for e in evs {
            let now = e.occurred_at.unwrap_or_else(Utc::now);
            if let Some(s) = e.state {
                let answered = u.answered_at.is_some() || s == CallState::Answered;
                u.state = Some(u.state.map_or(s, |cur| cur.advance(s, answered)));
                if s == CallState::Answered && u.answered_at.is_none() {
                    u.answered_at = Some(now);
                }
                if s.is_terminal() && u.ended_at.is_none() {
                    u.ended_at = Some(now);
                }
            }
            u.provider_call_id = u.provider_call_id.take().or_else(|| e.provider_call_id.clone());
            u.duration_secs = e.duration_secs.or(u.duration_secs);
            u.price = e.price.or(u.price);
            u.answered_by = e.answered_by.clone().or(u.answered_by.take());
            u.detail = e.detail.clone().or(u.detail.take());
        }
        out.push(u);
    }
    out
}

/// Applies a batch's events to their calls inside the caller's transaction
/// and, when `schedule_redials`, moves the calls the redial policy picks to
/// `retry_wait` and returns their next jobs by delay tier (for the caller to
/// publish before it commits).
pub async fn apply_events(
    tx: &mut PgConnection,
    events: &[&Event],
    schedule_redials: bool,
) -> Result<Vec<(DelayTier, Vec<CallJob>)>, sqlx::Error> {
    let updates = fold(events.iter().copied());
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    apply(tx, &updates).await?;
    let candidates: Vec<uuid::Uuid> = updates
        .iter()
        .filter(|u| redial::wanted(u.state, u.detail.as_deref()))
        .map(|u| u.call_id.0)
        .collect();
    if !schedule_redials || candidates.is_empty() {
        return Ok(Vec::new());
    }
    redial::schedule(tx, &candidates).await
}

/// One UPDATE for the whole batch; rows are visited in call-id order, so
/// concurrent batches lock rows in the same order and cannot deadlock.
async fn apply(tx: &mut PgConnection, updates: &[CallUpdate]) -> Result<(), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = updates.iter().map(|u| u.call_id.0).collect();
    let attempts: Vec<Option<i32>> = updates.iter().map(|u| u.attempt).collect();
    let states: Vec<Option<&str>> = updates.iter().map(|u| u.state.map(CallState::as_str)).collect();
    let pcids: Vec<Option<&str>> = updates.iter().map(|u| u.provider_call_id.as_deref()).collect();
    let answered: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.answered_at).collect();
    let ended: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.ended_at).collect();
    let durations: Vec<Option<i32>> = updates.iter().map(|u| u.duration_secs).collect();
    let prices: Vec<Option<f64>> = updates.iter().map(|u| u.price).collect();
    let by: Vec<Option<&str>> = updates.iter().map(|u| u.answered_by.as_deref()).collect();
    let details: Vec<Option<&str>> = updates.iter().map(|u| u.detail.as_deref()).collect();
    sqlx::query(
        "UPDATE calls k SET \
            state = CASE WHEN u.state = 'completed' AND k.voicemail_at IS NOT NULL AND call_state_rank(k.state) < 5 \
                         THEN 'voicemail' \
                         ELSE call_state_advance(k.state, k.answered_at IS NOT NULL, u.state, u.answered_at IS NOT NULL) END, \
            provider_call_id = coalesce(k.provider_call_id, u.pcid), \
            answered_at = coalesce(k.answered_at, u.answered_at), \
            ended_at = CASE WHEN call_state_terminal(u.state) THEN coalesce(k.ended_at, u.ended_at) \
                            ELSE k.ended_at END, \
            duration_secs = coalesce(u.duration, k.duration_secs), \
            price = CASE WHEN u.price IS NULL THEN k.price ELSE coalesce(k.price, 0) + u.price::numeric END, \
            answered_by = coalesce(u.answered_by, k.answered_by), \
            error_detail = CASE WHEN u.state IN ('failed', 'rejected') THEN coalesce(u.detail, k.error_detail) \
                                ELSE k.error_detail END, \
            updated_at = now() \
         FROM (SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::timestamptz[], \
                                    $6::timestamptz[], $7::int4[], $8::float8[], $9::text[], $10::text[]) \
               AS t(id, attempt, state, pcid, answered_at, ended_at, duration, price, answered_by, detail) \
               ORDER BY id) AS u \
         WHERE k.id = u.id AND k.state <> 'retry_wait' AND (u.attempt IS NULL OR u.attempt = k.attempt)",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&states)
    .bind(&pcids)
    .bind(&answered)
    .bind(&ended)
    .bind(&durations)
    .bind(&prices)
    .bind(&by)
    .bind(&details)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The redial policy: which outcomes are dialled again, how many times and
/// after how long. The campaign decides the attempts and the delay; the
/// worker's create-call retries (429, 5xx) are not redials.
pub mod redial {
    use super::*;

    /// Failure details of a provider `failed` event that make a redial worthwhile.
    pub const TRANSIENT_FAILURES: [&str; 5] =
        ["internal_error", "carrier_timeout", "unavailable", "network_error", "timeout"];

    /// Whether a call that ended in `state` (with the provider's `detail`)
    /// may be worth another attempt, if its campaign allows one (a
    /// `completed` call only in a campaign calling until confirmed, and only
    /// while unconfirmed: `schedule` decides).
    pub fn wanted(state: Option<CallState>, detail: Option<&str>) -> bool {
        match state {
            Some(CallState::Busy | CallState::NoAnswer | CallState::Completed | CallState::Voicemail) => true,
            Some(CallState::Failed) => detail.is_some_and(|d| TRANSIENT_FAILURES.contains(&d)),
            _ => false,
        }
    }

    /// Moves the candidates whose campaign is active and allows another
    /// attempt to `retry_wait`, and returns their next jobs grouped by the
    /// delay tier nearest the campaign's retry delay.
    pub(super) async fn schedule(
        tx: &mut PgConnection,
        candidates: &[uuid::Uuid],
    ) -> Result<Vec<(DelayTier, Vec<CallJob>)>, sqlx::Error> {
        let rows: Vec<(CallId, CampaignId, String, i32, i32)> = sqlx::query_as(
            "UPDATE calls k SET state = 'retry_wait', updated_at = now() \
             FROM campaigns c \
             WHERE k.id = ANY($1) AND c.id = k.campaign_id AND c.status = 'active' \
               AND k.attempt < c.max_attempts \
               AND (c.expires_at IS NULL OR c.expires_at > now()) \
               AND k.confirmed_at IS NULL AND k.opted_out_at IS NULL \
               AND (k.state IN ('busy', 'no_answer') \
                    OR (k.state = 'failed' AND k.error_detail = ANY($2)) \
                    OR (k.state IN ('completed', 'voicemail') AND c.until_confirmed)) \
             RETURNING k.id, k.campaign_id, k.number, k.attempt, c.retry_delay_secs",
        )
        .bind(candidates)
        .bind(TRANSIENT_FAILURES.as_slice())
        .fetch_all(&mut *tx)
        .await?;
        let mut by_tier: HashMap<&'static str, (DelayTier, Vec<CallJob>)> = HashMap::new();
        let (mut ids, mut dues) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for (call_id, campaign_id, number, attempt, delay) in rows {
            let Ok(to) = PhoneNumber::from_e164(&number) else { continue };
            let next = u32::try_from(attempt).unwrap_or(0) + 1;
            let job = CallJob { v: JOB_VERSION, call_id, campaign_id, to, attempt: next };
            let tier = DelayTier::nearest(Duration::from_secs(u64::try_from(delay).unwrap_or(0)));
            ids.push(call_id.0);
            dues.push(tier.duration().as_secs_f64());
            by_tier.entry(tier.name()).or_insert_with(|| (tier, Vec::new())).1.push(job);
        }
        // When each job comes back: the tier's delay, not the campaign's (the
        // sweeper would take a job of a longer tier for lost).
        sqlx::query(
            "UPDATE calls k SET job_due_at = now() + make_interval(secs => u.due) \
             FROM unnest($1::uuid[], $2::float8[]) AS u(id, due) WHERE k.id = u.id",
        )
        .bind(&ids)
        .bind(&dues)
        .execute(&mut *tx)
        .await?;
        Ok(by_tier.into_values().collect())
    }
}

/// The dialogue's side: each round's answer (a key, or none) as the webhook
/// heard it from a provider, and what it does to the call — a
/// confirmation, or an opt-out that puts the number on the do-not-call
/// list. A round is stored once however often it is reported (a provider's
/// retry, Telnyx's `call.dtmf.received` and `call.gather.ended` for the same
/// key), and only its first report changes anything.
pub mod keypress {
    use super::*;
    use crate::confirm::{Heard, Reply, Turn};

    /// One round's answer.
    #[derive(Debug, Clone)]
    pub struct Keypress<'a> {
        pub call: CallId,
        pub attempt: i32,
        pub turn: Turn,
        pub heard: Heard,
        pub reply: Reply,
        pub provider: Provider,
        /// The provider's report, as received.
        pub payload: &'a serde_json::Value,
    }

    /// What recording a round did.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Recorded {
        /// First report of this round.
        New {
            /// For a confirmation: the first of the contact, and seconds
            /// from its first call (`None` if already confirmed before).
            confirmed_after_secs: Option<f64>,
            /// The confirmation came after the campaign's deadline.
            late: bool,
            /// For an opt-out: waiting calls to the number skipped (all campaigns).
            skipped: u64,
        },
        /// This round was already recorded.
        Duplicate,
        /// No such call.
        UnknownCall,
    }

    /// Records a round's answer with what it does, atomically: most rounds
    /// in one statement (a confirmation's keypress, call update and
    /// milestone are one statement of three parts), an opt-out in one
    /// transaction.
    pub async fn record(pool: &PgPool, k: &Keypress<'_>) -> Result<Recorded, sqlx::Error> {
        let round = i32::try_from(k.turn.round).unwrap_or(i32::MAX);
        let recorded = match k.reply {
            Reply::Confirmed => {
                // A call already waiting for its redial (its hang-up was
                // applied first) ends here: the redial's claim finds it done.
                // The live stream and the timeline read the milestone from
                // the state log.
                let row: (bool, Option<f64>, Option<bool>) = sqlx::query_as(
                    "WITH ins AS ( \
                        INSERT INTO keypresses (call_id, attempt, round, digit, reply, provider, payload) \
                        SELECT $1, $2, $3, $4, 'confirmed', $5, $6 WHERE EXISTS (SELECT 1 FROM calls WHERE id = $1) \
                        ON CONFLICT DO NOTHING RETURNING call_id), \
                     upd AS ( \
                        UPDATE calls k SET confirmed_at = now(), confirmed_attempt = $2, confirmed_key = $4, \
                               confirmed_late = (c.expires_at IS NOT NULL AND c.expires_at < now()), \
                               state = CASE WHEN k.state = 'retry_wait' THEN 'completed' ELSE k.state END, \
                               ended_at = CASE WHEN k.state = 'retry_wait' THEN coalesce(k.ended_at, now()) \
                                               ELSE k.ended_at END, \
                               updated_at = now() \
                        FROM campaigns c, ins \
                        WHERE k.id = ins.call_id AND c.id = k.campaign_id AND k.confirmed_at IS NULL \
                        RETURNING k.id, k.campaign_id, extract(epoch FROM now() - k.first_dialing_at)::float8 AS secs, \
                                  k.confirmed_late), \
                     log AS ( \
                        INSERT INTO call_state_log (campaign_id, call_id, state) \
                        SELECT campaign_id, id, 'confirmed' FROM upd) \
                     SELECT EXISTS (SELECT 1 FROM ins), upd.secs, upd.confirmed_late \
                     FROM (SELECT 1) AS one LEFT JOIN upd ON true",
                )
                .bind(k.call)
                .bind(k.attempt)
                .bind(round)
                .bind(k.heard.digit())
                .bind(k.provider.as_str())
                .bind(k.payload)
                .fetch_one(pool)
                .await?;
                match row {
                    (false, _, _) => None,
                    (true, secs, late) => Some(Recorded::New {
                        // Already confirmed in another round: nothing new.
                        confirmed_after_secs: late.map(|_| secs.unwrap_or(0.0)),
                        late: late.unwrap_or(false),
                        skipped: 0,
                    }),
                }
            }
            Reply::OptedOut => opt_out(pool, k, round).await?,
            Reply::Replay | Reply::Invalid | Reply::Silence | Reply::GaveUp => {
                let inserted: Option<i32> = sqlx::query_scalar(
                    "INSERT INTO keypresses (call_id, attempt, round, digit, reply, provider, payload) \
                     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM calls WHERE id = $1) \
                     ON CONFLICT DO NOTHING RETURNING 1",
                )
                .bind(k.call)
                .bind(k.attempt)
                .bind(round)
                .bind(k.heard.digit())
                .bind(k.reply.as_str())
                .bind(k.provider.as_str())
                .bind(k.payload)
                .fetch_optional(pool)
                .await?;
                inserted.map(|_| Recorded::New { confirmed_after_secs: None, late: false, skipped: 0 })
            }
        };
        match recorded {
            Some(r) => Ok(r),
            // Not inserted: the round was recorded before, or there is no such call.
            None => {
                let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM calls WHERE id = $1)")
                    .bind(k.call)
                    .fetch_one(pool)
                    .await?;
                Ok(if exists { Recorded::Duplicate } else { Recorded::UnknownCall })
            }
        }
    }

    /// An opt-out round: the keypress, the call's `opted_out_at`, the number
    /// on the do-not-call list and its waiting calls skipped in every
    /// campaign, and the milestone, in one transaction. `None`: not new.
    async fn opt_out(pool: &PgPool, k: &Keypress<'_>, round: i32) -> Result<Option<Recorded>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let inserted: Option<i32> = sqlx::query_scalar(
            "INSERT INTO keypresses (call_id, attempt, round, digit, reply, provider, payload) \
             SELECT $1, $2, $3, $4, 'opted_out', $5, $6 WHERE EXISTS (SELECT 1 FROM calls WHERE id = $1) \
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(k.call)
        .bind(k.attempt)
        .bind(round)
        .bind(k.heard.digit())
        .bind(k.provider.as_str())
        .bind(k.payload)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Ok(None);
        }
        let number: Option<String> = sqlx::query_scalar(
            "UPDATE calls SET opted_out_at = coalesce(opted_out_at, now()), updated_at = now() \
             WHERE id = $1 RETURNING number",
        )
        .bind(k.call)
        .fetch_optional(&mut *tx)
        .await?;
        let mut skipped = 0;
        if let Some(number) = number {
            sqlx::query(
                "INSERT INTO do_not_call (number, reason) VALUES ($1, 'opted out by keypress') \
                 ON CONFLICT (number) DO NOTHING",
            )
            .bind(&number)
            .execute(&mut *tx)
            .await?;
            skipped = skip_do_not_call(&mut *tx, &[number]).await?;
        }
        sqlx::query(
            "INSERT INTO call_state_log (campaign_id, call_id, state) \
             SELECT campaign_id, id, 'opted_out' FROM calls WHERE id = $1",
        )
        .bind(k.call)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Recorded::New { confirmed_after_secs: None, late: false, skipped }))
    }
}

/// The sweeper's side: calls that stopped moving. A job can be lost to
/// the broker (dead-lettered, or gone with a crashed node) and a final
/// event to the provider (it gave up redelivering); the worker's sweeper
/// (one at a time across workers) finds such calls here and moves them on.
/// Every function marks the calls it returns as looked at now, so each is
/// handled at most once per quiet period.
pub mod sweep {
    use super::*;

    /// Waiting calls (`queued`, `retry_wait`) of active campaigns whose job
    /// was due more than `quiet` ago, and whose campaign has not changed
    /// status for as long (a paused campaign's jobs circle without writing
    /// here, and need a moment after a resume): their jobs, to publish
    /// again within the caller's transaction.
    pub async fn overdue_waiting(
        tx: &mut PgConnection,
        quiet: Duration,
        limit: i64,
    ) -> Result<Vec<CallJob>, sqlx::Error> {
        let rows: Vec<(CallId, CampaignId, String, i32)> = sqlx::query_as(
            "UPDATE calls k SET job_due_at = now() \
             FROM (SELECT k.id FROM calls k JOIN campaigns c ON c.id = k.campaign_id \
                   WHERE k.state IN ('queued', 'retry_wait') AND c.status = 'active' \
                     AND c.updated_at < now() - make_interval(secs => $1) \
                     AND coalesce(k.job_due_at, k.updated_at) < now() - make_interval(secs => $1) \
                   ORDER BY k.id LIMIT $2 FOR UPDATE OF k SKIP LOCKED) AS due \
             WHERE k.id = due.id \
             RETURNING k.id, k.campaign_id, k.number, k.attempt + 1",
        )
        .bind(quiet.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(jobs(rows))
    }

    /// Every waiting call of a campaign whose deadline has passed becomes
    /// `expired` at once (not when its job next comes round); returns how many.
    pub async fn expire_past_deadlines(pool: &PgPool) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE calls k SET state = 'expired', ended_at = now(), updated_at = now() \
             FROM campaigns c \
             WHERE c.id = k.campaign_id AND c.expires_at <= now() AND k.state IN ('queued', 'retry_wait')",
        )
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Calls left `dialing` more than `quiet` (the dialing lease and more):
    /// the job of the claimed attempt, whose next worker reconciles it.
    /// (Reached through `campaigns`, so the `(campaign_id, state)` index
    /// finds the few such calls of each campaign without a scan of `calls`.)
    pub async fn abandoned_dialing(
        tx: &mut PgConnection,
        quiet: Duration,
        limit: i64,
    ) -> Result<Vec<CallJob>, sqlx::Error> {
        let rows: Vec<(CallId, CampaignId, String, i32)> = sqlx::query_as(
            "UPDATE calls k SET job_due_at = now() \
             FROM (SELECT k.id FROM campaigns c JOIN calls k ON k.campaign_id = c.id \
                   WHERE k.state = 'dialing' \
                     AND coalesce(k.job_due_at, k.updated_at) < now() - make_interval(secs => $1) \
                   ORDER BY k.id LIMIT $2 FOR UPDATE OF k SKIP LOCKED) AS due \
             WHERE k.id = due.id \
             RETURNING k.id, k.campaign_id, k.number, k.attempt",
        )
        .bind(quiet.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(jobs(rows))
    }

    fn jobs(rows: Vec<(CallId, CampaignId, String, i32)>) -> Vec<CallJob> {
        rows.into_iter()
            .filter_map(|(call_id, campaign_id, number, attempt)| {
                let to = PhoneNumber::from_e164(&number).ok()?;
                let attempt = u32::try_from(attempt).ok().filter(|a| *a >= 1)?;
                Some(CallJob { v: JOB_VERSION, call_id, campaign_id, to, attempt })
            })
            .collect()
    }

    /// A call in progress at the provider (`placed`, `ringing`, `answered`)
    /// from which no event has come for a while.
    #[derive(Debug, Clone)]
    pub struct Silent {
        pub call_id: CallId,
        pub attempt: i32,
        /// The account that placed it: only it knows the call.
        pub account: AccountName,
        pub provider_call_id: String,
        pub state: CallState,
    }

    /// Calls in progress with no event for more than `quiet` (longer than a
    /// call rings, plus the stall time), marked as looked at now.
    pub async fn silent_in_progress(
        pool: &PgPool,
        quiet: Duration,
        limit: i64,
    ) -> Result<Vec<Silent>, sqlx::Error> {
        let rows: Vec<(CallId, i32, String, Option<String>, String, String)> = sqlx::query_as(
            "UPDATE calls k SET job_due_at = now() \
             FROM (SELECT k.id FROM campaigns c JOIN calls k ON k.campaign_id = c.id \
                   WHERE k.state IN ('placed', 'ringing', 'answered') AND k.provider_call_id IS NOT NULL \
                     AND coalesce(k.job_due_at, k.updated_at) < now() - make_interval(secs => $1) \
                   ORDER BY k.id LIMIT $2 FOR UPDATE OF k SKIP LOCKED) AS due \
             WHERE k.id = due.id \
             RETURNING k.id, k.attempt, k.provider, k.account, k.provider_call_id, k.state",
        )
        .bind(quiet.as_secs_f64())
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(call_id, attempt, provider, label, provider_call_id, state)| {
                Some(Silent {
                    call_id,
                    attempt,
                    account: AccountName {
                        provider: provider.parse().ok()?,
                        label: label.unwrap_or_else(|| crate::route::DEFAULT_LABEL.to_owned()),
                    },
                    provider_call_id,
                    state: state.parse().ok()?,
                })
            })
            .collect())
    }

    /// The provider says the call ended and how: applied as its final event
    /// would have been (forward only), with any redial it earns returned
    /// for the caller to publish before it commits.
    pub async fn ended(
        tx: &mut PgConnection,
        call: &Silent,
        state: CallState,
        detail: Option<String>,
        duration_secs: Option<i32>,
    ) -> Result<Vec<(DelayTier, Vec<CallJob>)>, sqlx::Error> {
        let event = Event {
            call_id: Some(call.call_id),
            attempt: Some(call.attempt),
            state: Some(state),
            provider_call_id: Some(call.provider_call_id.clone()),
            occurred_at: Some(Utc::now()),
            duration_secs,
            detail,
            ..Event::default()
        };
        apply_events(tx, &[&event], true).await
    }

    /// The call ended at the provider (or the provider no longer knows it)
    /// and nothing says how: an answered call is `completed` (it was
    /// answered and is over), any other `unknown` for the operator.
    pub async fn ended_unseen(pool: &PgPool, call: &Silent, detail: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE calls SET \
                state = CASE WHEN voicemail_at IS NOT NULL THEN 'voicemail' \
                             WHEN answered_at IS NOT NULL THEN 'completed' ELSE 'unknown' END, \
                error_code = CASE WHEN answered_at IS NOT NULL THEN error_code ELSE 'final_event_lost' END, \
                error_detail = CASE WHEN answered_at IS NOT NULL THEN error_detail ELSE $3 END, \
                ended_at = now(), updated_at = now() \
             WHERE id = $1 AND attempt = $2 AND state IN ('placed', 'ringing', 'answered')",
        )
        .bind(call.call_id)
        .bind(call.attempt)
        .bind(detail)
        .execute(pool)
        .await?;
        Ok(())
    }
}
