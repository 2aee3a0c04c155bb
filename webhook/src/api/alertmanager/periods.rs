//! An alert group's firing periods (`alert_periods`): which period a
//! notification belongs to, decided under the group's advisory lock, and
//! every notification recorded (`alert_notifications`) with what was done.
//!
//! A period is identified by its alerts (`fingerprint@startsAt`): a firing
//! notification whose alerts overlap the group's latest period belongs to
//! it; otherwise it starts a new one (closing the previous, whose resolved
//! notification never came). A resolved notification ends the period its
//! alerts fired in, not a later one.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::payload::Notification;
use crate::api::Result;
use crate::api::auth::Caller;
use crate::api::enqueue;

impl Notification {
    /// The campaign a period starting at `start` broadcasts as: readable
    /// (the alert's name), unique per group (a hash of the group key) and
    /// per period (its first `startsAt`).
    pub fn campaign_name(&self, prefix: &str, start: DateTime<Utc>) -> String {
        let slug: String = self
            .alertname()
            .unwrap_or("group")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
            .take(60)
            .collect();
        let group = hex::encode(&enqueue::sha256(&self.group_key)[..6]);
        format!("{prefix}{slug}-{group}-{}", start.format("%Y%m%dT%H%M%SZ"))
    }
}

/// One alert group's advisory lock, held on a connection of its own from
/// the claim until the enqueue (or the cancel) is done, so a second delivery
/// of the same group (an Alertmanager HA peer, a retry after a timeout)
/// waits and then finds the broadcast finished instead of racing it. The
/// connection is detached from the pool: if the request is dropped midway
/// (the client gave up), closing it releases the lock.
pub struct GroupLock {
    conn: PgConnection,
    key: String,
}

impl GroupLock {
    /// The lock of one group within one scope.
    async fn take(pool: &PgPool, scope: &str, group_key: &str) -> Result<Self> {
        let key = format!("{scope}\u{1f}{group_key}");
        let mut conn = pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 8))").bind(&key).execute(&mut conn).await?;
        Ok(Self { conn, key })
    }

    async fn begin(&mut self) -> Result<Transaction<'_, Postgres>> {
        Ok(sqlx::Connection::begin(&mut self.conn).await?)
    }

    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 8))")
            .bind(&self.key)
            .execute(&mut self.conn)
            .await;
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// The group's latest period, as the claim reads it.
#[derive(sqlx::FromRow)]
struct Period {
    id: i64,
    campaign: String,
    contact_list: String,
    instances: Vec<String>,
    enqueued_at: Option<DateTime<Utc>>,
    resolved_at: Option<DateTime<Utc>>,
}

/// What a firing notification's claim decided. The group's lock is still
/// held: the caller releases it once the broadcast is enqueued (or at once
/// when there is nothing to enqueue).
pub struct Claim {
    pub lock: GroupLock,
    pub period_id: i64,
    pub campaign: String,
    pub contact_list: String,
    /// `started` (a new period), `resumed` (its enqueue did not finish),
    /// `repeated` (already broadcast) or `late` (already resolved).
    pub action: &'static str,
}

impl Claim {
    /// Whether this delivery is the one that (still) has to enqueue.
    pub fn enqueues(&self) -> bool {
        matches!(self.action, "started" | "resumed")
    }
}

/// Claims the period these firing alerts (`instances`) belong to, or
/// starts one that broadcasts as `campaign` to `contact_list` (the pair),
/// and records
/// the notification. Periods are per `scope` (the route's campaign prefix,
/// which the caller is allowed) and group: another tenant's group of the
/// same key is never seen nor closed.
pub async fn claim_firing(
    pool: &PgPool,
    caller: &Caller,
    scope: &str,
    n: &Notification,
    instances: &[String],
    (campaign, contact_list): (&str, &str),
    payload: Value,
) -> Result<Claim> {
    let mut lock = GroupLock::take(pool, scope, &n.group_key).await?;
    let mut tx = lock.begin().await?;
    let latest: Option<Period> = sqlx::query_as(
        "SELECT id, campaign, contact_list, instances, enqueued_at, resolved_at FROM alert_periods \
         WHERE group_key = $1 AND (scope = $2 OR scope IS NULL) ORDER BY id DESC LIMIT 1",
    )
    .bind(&n.group_key)
    .bind(scope)
    .fetch_optional(&mut *tx)
    .await?;
    let same = latest.filter(|p| p.instances.iter().any(|i| instances.contains(i)));
    let (period_id, campaign, contact_list, action) = match same {
        Some(p) => {
            caller.check_campaign(&p.campaign)?;
            let action = if p.resolved_at.is_some() {
                // A late delivery of a period already resolved: nobody is called again.
                "late"
            } else if p.enqueued_at.is_some() {
                "repeated"
            } else {
                "resumed"
            };
            sqlx::query(
                "UPDATE alert_periods SET last_firing_at = now(), \
                 instances = ARRAY(SELECT DISTINCT unnest(instances || $2::text[])) WHERE id = $1",
            )
            .bind(p.id)
            .bind(instances)
            .execute(&mut *tx)
            .await?;
            (p.id, p.campaign, p.contact_list, action)
        }
        None => {
            // The group's previous period (if still open) ended without a resolved
            // notification reaching us: these alerts are a new firing.
            sqlx::query(
                "UPDATE alert_periods SET resolved_at = now() \
                 WHERE group_key = $1 AND (scope = $2 OR scope IS NULL) AND resolved_at IS NULL",
            )
            .bind(&n.group_key)
            .bind(scope)
            .execute(&mut *tx)
            .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO alert_periods (group_key, scope, campaign, contact_list, instances) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(&n.group_key)
            .bind(scope)
            .bind(campaign)
            .bind(contact_list)
            .bind(instances)
            .fetch_one(&mut *tx)
            .await?;
            (id, campaign.to_owned(), contact_list.to_owned(), "started")
        }
    };
    record(&mut tx, caller, n, Some(period_id), action, payload).await?;
    tx.commit().await?;
    Ok(Claim { lock, period_id, campaign, contact_list, action })
}

/// Notes that a period's broadcast is enqueued: later deliveries repeat it.
pub async fn mark_enqueued(pool: &PgPool, period_id: i64) -> Result<()> {
    sqlx::query("UPDATE alert_periods SET enqueued_at = now() WHERE id = $1")
        .bind(period_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A period a resolved notification ended.
pub struct Ended {
    pub id: i64,
    pub campaign: String,
}

/// Ends the period these alerts fired in (within `scope`) and records the
/// notification (`action`, or `no_period` when none is found). The caller
/// must be allowed the period's campaign, or nothing is ended nor named.
/// The group's lock is still held, for the cancel.
pub async fn resolve(
    pool: &PgPool,
    caller: &Caller,
    scope: &str,
    n: &Notification,
    action: &'static str,
    payload: Value,
) -> Result<(GroupLock, Option<Ended>)> {
    let instances: Vec<String> = n.alerts.iter().map(|a| a.instance()).collect();
    let mut lock = GroupLock::take(pool, scope, &n.group_key).await?;
    let mut tx = lock.begin().await?;
    // The period these alerts fired in; a late resolved notification of an
    // older period does not end the current one.
    let period: Option<Period> = sqlx::query_as(
        "SELECT id, campaign, contact_list, instances, enqueued_at, resolved_at FROM alert_periods \
         WHERE group_key = $1 AND (scope = $3 OR scope IS NULL) AND instances && $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(&n.group_key)
    .bind(&instances)
    .bind(scope)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(period) = period else {
        record(&mut tx, caller, n, None, "no_period", payload).await?;
        tx.commit().await?;
        return Ok((lock, None));
    };
    caller.check_campaign(&period.campaign)?;
    sqlx::query("UPDATE alert_periods SET resolved_at = coalesce(resolved_at, now()) WHERE id = $1")
        .bind(period.id)
        .execute(&mut *tx)
        .await?;
    record(&mut tx, caller, n, Some(period.id), action, payload).await?;
    tx.commit().await?;
    Ok((lock, Some(Ended { id: period.id, campaign: period.campaign })))
}

/// Notes how many waiting calls the cancel on resolve ended.
pub async fn record_cancelled(pool: &PgPool, period_id: i64, calls: u64) -> Result<()> {
    sqlx::query("UPDATE alert_periods SET cancelled_calls = $2 WHERE id = $1")
        .bind(period_id)
        .bind(calls as i64)
        .execute(pool)
        .await?;
    Ok(())
}

async fn record(
    tx: &mut PgConnection,
    caller: &Caller,
    n: &Notification,
    period: Option<i64>,
    action: &str,
    payload: Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO alert_notifications (key_id, group_key, status, receiver, period_id, action, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&caller.key_id)
    .bind(&n.group_key)
    .bind(n.status.as_str())
    .bind(&n.receiver)
    .bind(period)
    .bind(action)
    .bind(payload)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use crate::api::alertmanager::payload::sample as notification;
    use crate::api::enqueue;

    #[test]
    fn campaign_names_are_valid_and_differ_by_group_and_period() {
        let n = notification(&[], &[(&[], "firing")]);
        let t = DateTime::parse_from_rfc3339("2026-11-22T10:15:30Z").unwrap().to_utc();
        let name = n.campaign_name("alert-", t);
        assert!(enqueue::valid_name(&name), "{name}");
        assert!(name.starts_with("alert-Disk-Full--") && name.ends_with("-20261122T101530Z"), "{name}");
        assert_eq!(name, n.campaign_name("alert-", t));
        assert_ne!(name, n.campaign_name("alert-", t + chrono::Duration::seconds(1)));
        let mut other = notification(&[], &[(&[], "firing")]);
        other.group_key = "{}:{alertname=\"Other\"}".into();
        assert_ne!(name, other.campaign_name("alert-", t));
    }
}
