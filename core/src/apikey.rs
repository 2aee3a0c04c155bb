//! Keys for the HTTP API (`/api/v1`): made by `producer apikey create`,
//! checked by the webhook service's API.
//!
//! A key reads `tocsin_<key id>_<secret>`: the 12-hex-digit key id names the
//! row, the 32-byte secret is random. Only the SHA-256 of the whole key is
//! stored; the webhook service looks the row up by key id and compares the
//! hashes in constant time (`verify`). The key is printed once, at creation.

use aws_lc_rs::rand::SecureRandom;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A bad name or a name already taken.
    #[error("{0}")]
    Refused(String),
    #[error("the system random source failed")]
    Random,
    #[error("storing the API key: {0}")]
    Database(#[from] sqlx::Error),
}

/// Every scope a key may hold.
pub const SCOPES: [&str; 4] = ["campaigns:write", "campaigns:read", "campaigns:control", "audit:read"];

/// A freshly generated key: `key` is shown once and never stored.
pub struct Generated {
    pub key_id: String,
    pub key: String,
    pub hash: [u8; 32],
}

/// Draws a new key from the operating system's random source.
pub fn generate() -> Result<Generated, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).map_err(|_| KeyError::Random)?;
    rng.fill(&mut secret).map_err(|_| KeyError::Random)?;
    let key_id = hex::encode(id);
    let key = format!("tocsin_{key_id}_{}", hex::encode(secret));
    let hash = hash(&key);
    Ok(Generated { key_id, key, hash })
}

/// SHA-256 of the whole key, as stored in `api_keys.hash`.
pub fn hash(key: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The key id of a well-formed key, `None` for anything else.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tocsin_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex(id, 12) && hex(secret, 64)).then_some(id)
}

/// Whether `presented` hashes to `stored`, in constant time.
pub fn verify(stored: &[u8], presented: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(stored, &hash(presented)).is_ok()
}

/// Parses a comma-separated scope list, refusing unknown scopes.
pub fn parse_scopes(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !SCOPES.contains(&s) {
            return Err(format!("unknown scope {s:?}; scopes are {}", SCOPES.join(", ")));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.is_empty() {
        return Err(format!("give at least one scope: {}", SCOPES.join(", ")));
    }
    Ok(out)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Listed {
    pub name: String,
    pub key_id: String,
    pub scopes: Vec<String>,
    pub campaign_prefixes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a key; returns it (the only time it exists in clear).
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[String],
    prefixes: &[String],
) -> Result<String, KeyError> {
    if name.is_empty() || name.len() > 200 {
        return Err(KeyError::Refused("--name must be 1 to 200 characters".into()));
    }
    // An empty prefix matches every campaign: a key meant to be restricted
    // would be unrestricted. No prefix at all is how to ask for that.
    if prefixes.iter().any(|p| p.trim().is_empty()) {
        return Err(KeyError::Refused(
            "--campaign-prefix must not be empty (an empty prefix matches every campaign; \
             leave the flag out for a key that may see all campaigns)"
                .into(),
        ));
    }
    let generated = generate()?;
    let inserted = sqlx::query(
        "INSERT INTO api_keys (key_id, name, hash, scopes, campaign_prefixes) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&generated.key_id)
    .bind(name)
    .bind(&generated.hash[..])
    .bind(scopes)
    .bind(prefixes)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(KeyError::Refused(format!(
            "an API key named {name:?} exists already (names stay taken after revoke); pick another name"
        )));
    }
    Ok(generated.key)
}

/// Every key, oldest first (never the keys themselves).
pub async fn list(pool: &PgPool) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, key_id, scopes, campaign_prefixes, created_at, last_used_at, revoked_at \
         FROM api_keys ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
}

/// Revokes the key named `name`; returns whether one was active.
pub async fn revoke(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_verify() {
        let g = generate().unwrap();
        assert_eq!(key_id(&g.key), Some(g.key_id.as_str()));
        assert!(verify(&g.hash, &g.key));
        // Change the last character (to one it is not) and the key no longer verifies.
        let last = if g.key.ends_with('0') { '1' } else { '0' };
        assert!(!verify(&g.hash, &format!("{}{last}", &g.key[..g.key.len() - 1])));
        assert_eq!(key_id("tocsin_zz"), None);
        assert_eq!(key_id("Bearer x"), None);
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(parse_scopes("campaigns:write, campaigns:read").unwrap().len(), 2);
        assert!(parse_scopes("campaigns:admin").is_err());
        assert!(parse_scopes("").is_err());
    }
}
