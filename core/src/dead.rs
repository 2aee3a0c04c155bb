//! Dead-lettered jobs, owned once. The dead-letter queue is drained into
//! the `dead_jobs` table by the worker's sweeper, so that they can be
//! counted per campaign (`producer status`, the API, the `tocsin_dead_jobs`
//! gauge and its alert) and put back after a fix (`producer requeue-dead`).
//!
//! A job is dead-lettered only for a reason in the job itself: it cannot
//! be decoded, or names a call that cannot exist. Workers dying while they
//! hold a job never send it here (the worker re-publishes a job the broker
//! has redelivered often, before the queue's delivery limit is reached).

use sqlx::{PgConnection, PgPool};

use crate::{CallJob, CampaignId};

/// Stores one dead-lettered message; `false` when it was stored already (a
/// drain interrupted between its insert and its ack).
pub async fn record(pool: &PgPool, body: &[u8], reason: &str) -> Result<bool, sqlx::Error> {
    let job = CallJob::decode(body).ok();
    let done = sqlx::query(
        "INSERT INTO dead_jobs (body, campaign_id, call_id, attempt, reason) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (body_md5) DO NOTHING",
    )
    .bind(body)
    .bind(job.as_ref().map(|j| j.campaign_id))
    .bind(job.as_ref().map(|j| j.call_id))
    .bind(job.as_ref().map(|j| i32::try_from(j.attempt).unwrap_or(i32::MAX)))
    .bind(reason.replace('\0', ""))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Dead-lettered jobs of one campaign.
pub async fn count_for(pool: &PgPool, campaign: CampaignId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_jobs WHERE campaign_id = $1")
        .bind(campaign)
        .fetch_one(pool)
        .await
}

/// Dead-lettered jobs in all (undecodable ones included).
pub async fn total(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_jobs").fetch_one(pool).await
}

/// Dead-lettered jobs whose body cannot be decoded (no campaign to requeue them to).
pub async fn undecodable(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_jobs WHERE campaign_id IS NULL").fetch_one(pool).await
}

/// Takes up to `limit` decodable dead jobs (of one campaign, or all) out of
/// the table inside the caller's transaction: the caller publishes them and
/// commits, or rolls back and they stay.
pub async fn take(
    tx: &mut PgConnection,
    campaign: Option<CampaignId>,
    limit: i64,
) -> Result<Vec<CallJob>, sqlx::Error> {
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM dead_jobs WHERE id IN ( \
             SELECT id FROM dead_jobs WHERE campaign_id IS NOT NULL \
               AND ($1::uuid IS NULL OR campaign_id = $1) \
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING body",
    )
    .bind(campaign)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(bodies.iter().filter_map(|b| CallJob::decode(b).ok()).collect())
}
