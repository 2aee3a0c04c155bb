//! `GET /api/v1/accounts` (scope `read`): every provider account this
//! service knows, with what all workers share about it in Redis — its
//! health (closed, open, half-open, and failures in the window), its rate
//! in use against its limit, and its lines in use against its cap.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use tocsin_core::account::Limits;
use tocsin_core::health::{Health, Rules};
use tocsin_core::limiter::{REDIS_TIMEOUT, RedisLimiter};
use tocsin_core::lines::Lines;
use tocsin_core::route::AccountName;

use super::auth::{Auth, Read};
use super::{ApiState, Result};

/// One account as configured here: its name, its provider's own name for
/// it (the key of its shared limits) and its limits.
#[derive(Clone, Debug)]
pub struct KnownAccount {
    pub name: AccountName,
    pub key: String,
    pub limits: Limits,
}

/// Where the workers share the accounts' state.
pub struct Shared {
    client: redis::Client,
    prefix: String,
    rules: Rules,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

impl Shared {
    pub fn new(url: &str, prefix: &str, rules: Rules) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix: prefix.to_owned(),
            rules,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    /// Counts a failure of `account` in its breaker, as a worker would (a
    /// call the provider refused for the account, not for the callee).
    /// Best effort: without Redis it is logged and dropped.
    pub async fn account_failed(&self, account: &str, why: &str) {
        let Some(conn) = self.conn().await else {
            tracing::warn!(account, %why, "Redis unreachable: an account failure was not counted");
            return;
        };
        let health = Health::new(conn, &self.prefix, self.rules);
        let _ = tokio::time::timeout(REDIS_TIMEOUT, health.failed(account, why)).await;
    }

    /// The connection, made on first use (the webhook starts and stores
    /// events without Redis; only this view needs it).
    async fn conn(&self) -> Option<ConnectionManager> {
        let made = tokio::time::timeout(
            REDIS_TIMEOUT,
            self.conn.get_or_try_init(|| ConnectionManager::new(self.client.clone())),
        )
        .await;
        match made {
            Ok(Ok(conn)) => Some(conn.clone()),
            _ => None,
        }
    }
}

/// `GET /api/v1/accounts`.
pub async fn list(State(state): State<Arc<ApiState>>, _caller: Auth<Read>) -> Result<Json<Value>> {
    let conn = match &state.shared {
        Some(shared) => shared.conn().await.map(|c| (c, shared.prefix.clone())),
        None => None,
    };
    let mut out = Vec::new();
    for account in &state.known_accounts {
        let limits = account.limits;
        let mut view = json!({
            "account": account.name.to_string(),
            "provider": account.name.provider.as_str(),
            "label": account.name.label,
            "rate": limits.rate.to_string(),
            "rate_per_sec": limits.rate.calls_per_sec(),
            "max_concurrent": limits.max_concurrent,
            "state": "unknown",
        });
        if let Some((conn, prefix)) = &conn {
            let health = Health::new(conn.clone(), prefix, Rules::default());
            // (`peek` reads only; the rules matter to `failed`.)
            let lines = Lines::new(conn.clone(), prefix);
            let limiter = RedisLimiter::new(conn.clone(), prefix, 1.0, Duration::ZERO);
            let name = account.name.to_string();
            let read = async {
                let (standing, failures) = health.peek(&name).await?;
                let holders = lines.holders(&account.key).await?;
                let sent = limiter.sent_recently(&account.key, limits.rate).await?;
                Ok::<_, redis::RedisError>((standing, failures, holders, sent))
            };
            if let Ok(Ok((standing, failures, holders, sent))) =
                tokio::time::timeout(REDIS_TIMEOUT, read).await
            {
                // A line whose call has ended is free, though the workers
                // take it back only when they need it.
                let ended = tocsin_core::calls::ended_among(&state.pool, &holders).await?;
                view["state"] = json!(standing.as_str());
                view["failures_in_window"] = json!(failures);
                view["lines_in_use"] = json!(holders.len() - ended.len());
                view["sent_in_last_period"] = json!(sent);
                view["rate_in_use_per_sec"] = json!(f64::from(sent) / limits.rate.per.as_secs_f64());
            }
        }
        out.push(view);
    }
    Ok(Json(json!({ "accounts": out, "shared_state": conn.is_some() })))
}
