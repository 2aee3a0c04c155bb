//! The audit log, owned once: every operator action is recorded here with
//! who (an API key's name, or the CLI's OS user), when, what (the action,
//! its campaign and parameters — never a secret) and from where (the API
//! client's address). Append-only: nothing here updates or deletes.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// Where an action came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Cli,
    Api,
    Alertmanager,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Api => "api",
            Self::Alertmanager => "alertmanager",
        }
    }
}

/// Who acted.
#[derive(Clone, Debug)]
pub struct Actor {
    pub via: Via,
    /// The API key's name, or the OS user.
    pub name: String,
    /// The API client's address.
    pub client: Option<String>,
}

/// Records one action. `details` holds its parameters: callers never put a
/// secret there (no key, token or password; a key's name and scopes only).
pub async fn record(
    db: impl PgExecutor<'_>,
    actor: &Actor,
    action: &str,
    campaign: Option<&str>,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (via, actor, client, action, campaign, details) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(actor.via.as_str())
    .bind(&actor.name)
    .bind(&actor.client)
    .bind(action)
    .bind(campaign)
    .bind(details)
    .execute(db)
    .await?;
    Ok(())
}

/// One recorded action.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub via: String,
    pub actor: String,
    pub client: Option<String>,
    pub action: String,
    pub campaign: Option<String>,
    pub details: serde_json::Value,
}

/// Which entries to read, newest first.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub campaign: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Only campaigns starting with one of these (an API key's prefixes);
    /// empty: every entry.
    pub prefixes: Vec<String>,
    pub limit: i64,
}

/// The entries the filter selects, newest first. With `prefixes`, entries
/// without a campaign (do-not-call, keys) are left out.
pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, via, actor, client, action, campaign, details FROM audit_log \
         WHERE ($1::text IS NULL OR campaign = $1) AND ($2::timestamptz IS NULL OR at >= $2) \
           AND (cardinality($3::text[]) = 0 \
                OR EXISTS (SELECT 1 FROM unnest($3::text[]) p WHERE starts_with(campaign, p))) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(&f.campaign)
    .bind(f.since)
    .bind(&f.prefixes)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}
