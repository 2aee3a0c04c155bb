//! One job, start to finish: campaign checks, claim, rate-limit slot, the
//! create-call request, and the outcome recorded in PostgreSQL. `process`
//! returns a decision; the consume loop acks, delays or dead-letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::PgPool;
use tocsin_core::db::{self, Campaign};
use tocsin_core::limiter::{RedisLimiter, Reservation};
use tocsin_core::provider::{CallRequest, PlaceCallError, Provider, VoiceProvider};
use tocsin_core::queue::DelayTier;
use tocsin_core::{CallJob, PhoneNumber};
use tracing::{info, warn};

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

/// Everything `process` needs, built once per worker.
pub struct Deps {
    pub pool: PgPool,
    pub limiter: RedisLimiter,
    /// The providers this worker holds credentials for.
    pub providers: HashMap<Provider, Arc<dyn VoiceProvider>>,
    pub public_url: String,
    pub ringing_timeout_secs: u32,
    pub dialing_lease: Duration,
    pub max_transient_retries: u32,
}

/// Infrastructure failures (database, Redis): the job is retried as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("rate limiter (Redis): {0}")]
    Limiter(#[from] redis::RedisError),
}

#[tracing::instrument(skip_all, fields(call_id = %job.call_id, attempt = job.attempt), err(Display))]
pub async fn process(deps: &Deps, job: &CallJob) -> Result<Outcome, ProcessError> {
    let Some(campaign) = db::campaign(&deps.pool, job.campaign_id).await? else {
        warn!("campaign no longer exists, dropping job");
        return Ok(Outcome::Ack);
    };
    match campaign.status.as_str() {
        "cancelled" => {
            sqlx::query(
                "UPDATE calls SET state = 'cancelled', ended_at = now(), updated_at = now() \
                 WHERE id = $1 AND state IN ('queued', 'retry_wait')",
            )
            .bind(job.call_id)
            .execute(&deps.pool)
            .await?;
            return Ok(Outcome::Ack);
        }
        "paused" => return Ok(Outcome::Delay(DelayTier::S5)),
        _ => {}
    }
    let provider: Provider = match campaign.provider.parse() {
        Ok(p) => p,
        Err(e) => return fail_unclaimed(deps, job, "provider", &e.to_string()).await,
    };
    let client = match deps.providers.get(&provider) {
        Some(client) => client.as_ref(),
        None => {
            let detail = format!("provider {provider} is not configured on this worker");
            return fail_unclaimed(deps, job, "provider_not_configured", &detail).await;
        }
    };
    let from = match PhoneNumber::from_e164(&campaign.from_number) {
        Ok(n) => n,
        Err(e) => return fail_unclaimed(deps, job, "bad_from_number", &e.to_string()).await,
    };

    // Reserve a slot before claiming, so the claim is fresh when the request leaves.
    let account = client.account();
    let reservation = deps.limiter.reserve(&account).await?;
    let wait = match reservation {
        Reservation::Granted(wait) => wait,
        Reservation::Refused(wait) => {
            metrics::counter!("tocsin_limiter_refused_total").increment(1);
            return Ok(Outcome::Delay(DelayTier::at_least(wait)));
        }
    };
    metrics::histogram!("tocsin_limiter_wait_seconds").record(wait.as_secs_f64());
    tokio::time::sleep(wait).await;

    if !claim(deps, job, provider).await? {
        return decide_unclaimed(deps, job).await;
    }

    let request = CallRequest {
        call_id: job.call_id,
        attempt: job.attempt,
        to: job.to.clone(),
        from,
        webhook_base: deps.public_url.clone(),
        ringing_timeout_secs: deps.ringing_timeout_secs,
        machine_detection: campaign.machine_detection,
    };
    let started = Instant::now();
    let result = client.place_call(&request).await;
    metrics::histogram!("tocsin_provider_request_seconds", "provider" => provider.as_str())
        .record(started.elapsed().as_secs_f64());
    record(deps, job, &campaign, &account, provider, result).await
}

/// Claims the call for this attempt: one conditional UPDATE, so of all the
/// workers holding a copy of the job exactly one proceeds to dial.
async fn claim(deps: &Deps, job: &CallJob, provider: Provider) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE calls SET state = 'dialing', attempt = $2, provider = $3, dialing_at = now(), \
                updated_at = now() \
         WHERE id = $1 AND state IN ('queued', 'retry_wait') AND attempt < $2",
    )
    .bind(job.call_id)
    .bind(i32::try_from(job.attempt).unwrap_or(i32::MAX))
    .bind(provider.as_str())
    .execute(&deps.pool)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// The claim failed: the call was handled already, is in flight elsewhere,
/// or a worker died while dialing it.
async fn decide_unclaimed(deps: &Deps, job: &CallJob) -> Result<Outcome, ProcessError> {
    let row: Option<(String, i32, Option<f64>)> = sqlx::query_as(
        "SELECT state, attempt, extract(epoch FROM now() - dialing_at)::float8 FROM calls WHERE id = $1",
    )
    .bind(job.call_id)
    .fetch_optional(&deps.pool)
    .await?;
    let Some((state, attempt, dialing_for)) = row else {
        warn!("call no longer exists, dropping job");
        return Ok(Outcome::Ack);
    };
    let same_attempt = i64::from(attempt) == i64::from(job.attempt);
    if state != "dialing" || !same_attempt {
        info!(%state, "call already handled for this attempt, dropping duplicate job");
        return Ok(Outcome::Ack);
    }
    let dialing_for = Duration::from_secs_f64(dialing_for.unwrap_or(0.0).max(0.0));
    if dialing_for < deps.dialing_lease {
        // Another worker may be dialing right now: look again later.
        return Ok(Outcome::Delay(DelayTier::at_least(deps.dialing_lease - dialing_for)));
    }
    // A worker died between claim and outcome. The provider may or may not
    // have the call; without its confirmation we must not dial again.
    warn!("call was interrupted mid-dial; marking unknown for the operator");
    sqlx::query(
        "UPDATE calls SET state = 'unknown', error_code = 'interrupted', \
                error_detail = 'worker stopped while dialing; the provider was not asked whether the call exists', \
                ended_at = now(), updated_at = now() \
         WHERE id = $1 AND state = 'dialing' AND attempt = $2",
    )
    .bind(job.call_id)
    .bind(attempt)
    .execute(&deps.pool)
    .await?;
    metrics::counter!("tocsin_calls_unknown_total").increment(1);
    Ok(Outcome::Ack)
}

/// Records the create-call result; every branch writes before it returns.
async fn record(
    deps: &Deps,
    job: &CallJob,
    campaign: &Campaign,
    account: &str,
    provider: Provider,
    result: Result<tocsin_core::provider::PlacedCall, PlaceCallError>,
) -> Result<Outcome, ProcessError> {
    let outcome_label = match &result {
        Ok(_) => "placed",
        Err(PlaceCallError::RateLimited { .. }) => "rate_limited",
        Err(PlaceCallError::Transient(_)) => "transient",
        Err(PlaceCallError::Permanent { .. }) => "permanent",
        Err(PlaceCallError::Ambiguous(_)) => "ambiguous",
    };
    metrics::counter!("tocsin_calls_total", "provider" => provider.as_str(), "outcome" => outcome_label)
        .increment(1);
    match result {
        Ok(placed) => {
            // An event may already have moved the call further: keep the higher state.
            sqlx::query(
                "UPDATE calls SET provider_call_id = $2, placed_at = now(), updated_at = now(), \
                        error_code = NULL, error_detail = NULL, \
                        state = CASE WHEN call_state_rank(state) < call_state_rank('placed') \
                                     THEN 'placed' ELSE state END \
                 WHERE id = $1",
            )
            .bind(job.call_id)
            .bind(&placed.provider_call_id)
            .execute(&deps.pool)
            .await?;
            info!(campaign = %campaign.name, provider_call_id = %placed.provider_call_id, "call placed");
            Ok(Outcome::Ack)
        }
        Err(PlaceCallError::RateLimited { retry_after }) => {
            // Not an attempt: give the claim back and slow every worker down.
            let pause = retry_after.unwrap_or(Duration::from_secs(1));
            deps.limiter.cool_down(account, pause).await?;
            release(deps, job, None).await?;
            warn!(?pause, "provider rate limited us; cooling down");
            Ok(Outcome::Delay(DelayTier::at_least(jittered(pause, 0))))
        }
        Err(PlaceCallError::Transient(detail)) => {
            let retries = release(deps, job, Some(&detail)).await?;
            if retries > deps.max_transient_retries {
                finish_failed(deps, job, "transient_exhausted", &detail).await?;
                return Ok(Outcome::Ack);
            }
            warn!(%detail, retries, "transient provider failure; will retry");
            Ok(Outcome::Delay(DelayTier::at_least(jittered(Duration::from_secs(1), retries))))
        }
        Err(PlaceCallError::Permanent { status, code, detail }) => {
            finish_failed(deps, job, &format!("{status} {code}"), &detail).await?;
            warn!(status, %code, %detail, "provider refused the call");
            Ok(Outcome::Ack)
        }
        Err(PlaceCallError::Ambiguous(detail)) => {
            // The call may exist: never dial blind. The operator decides.
            sqlx::query(
                "UPDATE calls SET state = 'unknown', error_code = 'ambiguous', error_detail = $2, \
                        ended_at = now(), updated_at = now() \
                 WHERE id = $1 AND state = 'dialing'",
            )
            .bind(job.call_id)
            .bind(&detail)
            .execute(&deps.pool)
            .await?;
            warn!(%detail, "create-call outcome unknown; marked unknown");
            Ok(Outcome::Ack)
        }
    }
}

/// Exponential backoff with full jitter: uniform in [0, base · 2^n].
fn jittered(base: Duration, n: u32) -> Duration {
    let cap = base.saturating_mul(1 << n.min(12));
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(0..=millis)).max(base)
}

/// Gives a claimed call back (the attempt did not happen). With `detail`,
/// counts a transient failure and returns the count.
async fn release(deps: &Deps, job: &CallJob, detail: Option<&str>) -> Result<u32, sqlx::Error> {
    let retries: Option<i32> = sqlx::query_scalar(
        "UPDATE calls SET state = CASE WHEN attempt <= 1 THEN 'queued' ELSE 'retry_wait' END, \
                attempt = attempt - 1, \
                transient_failures = transient_failures + CASE WHEN $2::text IS NULL THEN 0 ELSE 1 END, \
                error_detail = coalesce($2, error_detail), updated_at = now() \
         WHERE id = $1 AND state = 'dialing' \
         RETURNING transient_failures",
    )
    .bind(job.call_id)
    .bind(detail)
    .fetch_optional(&deps.pool)
    .await?;
    Ok(u32::try_from(retries.unwrap_or(0)).unwrap_or(0))
}

async fn finish_failed(deps: &Deps, job: &CallJob, code: &str, detail: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET state = 'failed', error_code = $2, error_detail = $3, ended_at = now(), \
                updated_at = now() \
         WHERE id = $1 AND call_state_rank(state) < 5",
    )
    .bind(job.call_id)
    .bind(code)
    .bind(detail)
    .execute(&deps.pool)
    .await?;
    Ok(())
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
    sqlx::query(
        "UPDATE calls SET state = 'failed', error_code = $2, error_detail = $3, ended_at = now(), \
                updated_at = now() \
         WHERE id = $1 AND state IN ('queued', 'retry_wait')",
    )
    .bind(job.call_id)
    .bind(code)
    .bind(detail)
    .execute(&deps.pool)
    .await?;
    Ok(Outcome::Ack)
}
