//! Test helpers (feature `testing`): each test gets its own PostgreSQL
//! database, queue prefix and Redis key prefix on the real local services.
//! A service that cannot be reached fails the test with a message saying
//! how to start it; nothing is ever skipped.

use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::test_env;

const HOW_TO_START: &str = "start the local services with deploy/local/up.sh";

/// A fresh, migrated database, named `tocsin_test_<unix time>_<random>`.
/// Databases of earlier runs older than two hours are dropped on creation.
pub struct TestDb {
    pub pool: PgPool,
    pub url: SecretString,
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let base = test_env::database_url();
        let mut admin = PgConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {base} (TOCSIN_DATABASE_URL): {e}; {HOW_TO_START}")
        });
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let stale: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'tocsin\\_test\\_%'")
                .fetch_all(&mut admin)
                .await
                .unwrap_or_default();
        for db in stale {
            let created: u64 = db.split('_').nth(2).and_then(|t| t.parse().ok()).unwrap_or(u64::MAX);
            let plain = db.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if plain && created.saturating_add(7200) < now {
                // Safe: the name is plain ASCII letters, digits and '_' (checked above).
                let sql = sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
                let _ = sqlx::query(sql).execute(&mut admin).await;
            }
        }
        let name = format!("tocsin_test_{now}_{}", uuid::Uuid::new_v4().simple());
        // Safe: the name is ours, plain ASCII letters, digits and '_'.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = replace_database(&base, &name);
        let secret = SecretString::from(url.clone());
        let pool = crate::db::connect(&secret, 5).await.expect("connecting to the test database");
        crate::db::migrate(&pool).await.expect("migrating the test database");
        Self { pool, url: secret, name }
    }
}

/// `base` with its database name replaced by `name`.
fn replace_database(base: &str, name: &str) -> String {
    let (without_query, query) = base.split_once('?').map_or((base, None), |(a, q)| (a, Some(q)));
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let path_start = without_query[scheme_end..].find('/').map(|i| i + scheme_end);
    let mut url = match path_start {
        Some(i) => format!("{}/{name}", &without_query[..i]),
        None => format!("{without_query}/{name}"),
    };
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// A unique prefix for queues and Redis keys.
pub fn unique_prefix(label: &str) -> String {
    format!("test-{label}-{}", uuid::Uuid::new_v4().simple())
}

/// The RabbitMQ URL, after checking the broker answers.
pub async fn amqp_url() -> String {
    let url = test_env::amqp_url();
    match crate::queue::connect(&url, "tocsin-test-probe").await {
        Ok(conn) => {
            crate::queue::close(&conn, "probe").await;
            url
        }
        Err(e) => {
            panic!("RabbitMQ is not reachable at {url} (TOCSIN_AMQP_URL): {e}; {HOW_TO_START}")
        }
    }
}

/// The Redis URL, after checking the server answers.
pub async fn redis_url() -> String {
    let url = test_env::redis_url();
    let reachable = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match reachable.await {
        Ok(_) => url,
        Err(e) => panic!("Redis is not reachable at {url} (TOCSIN_REDIS_URL): {e}; {HOW_TO_START}"),
    }
}

/// Every secret, and every URL that can carry a password, set to a value
/// holding the marker `0b1c-secret`, which no `--help` may print.
pub const SECRET_ENV: &[(&str, &str)] = &[
    ("TOCSIN_DATABASE_URL", "postgres://tocsin:0b1c-secret-db@db.internal/tocsin"),
    ("TOCSIN_AMQP_URL", "amqp://tocsin:0b1c-secret-mq@mq.internal/%2f"),
    ("TOCSIN_REDIS_URL", "redis://:0b1c-secret-redis@redis.internal:6379"),
    ("TOCSIN_VONAGE_API_URL", "https://user:0b1c-secret-vonage-url@api.nexmo.com"),
    ("TOCSIN_TWILIO_API_URL", "https://user:0b1c-secret-twilio-url@api.twilio.com"),
    ("TOCSIN_TELNYX_API_URL", "https://user:0b1c-secret-telnyx-url@api.telnyx.com"),
    ("TOCSIN_PUBLIC_URL", "https://user:0b1c-secret-public-url@hooks.example.com"),
    ("TOCSIN_TWILIO_AUTH_TOKEN", "0b1c-secret-twilio-token"),
    ("TOCSIN_TELNYX_API_KEY", "KEY0b1c-secret-telnyx"),
    ("TOCSIN_VONAGE_SIGNATURE_SECRET", "0b1c-secret-vonage-signature"),
    ("TOCSIN_VONAGE_API_KEY", "0b1c-secret-vonage-key"),
    ("TOCSIN_VONAGE_API_SECRET", "0b1c-secret-vonage-api"),
];

/// Runs `binary` with `args` (ending in `--help`) with every `SECRET_ENV`
/// variable set, as in a Kubernetes pod, and panics if the help prints one
/// of their values.
pub fn assert_help_hides_secrets(binary: &str, args: &[&str]) {
    let output = std::process::Command::new(binary)
        .args(args)
        .envs(SECRET_ENV.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {binary}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{binary} {args:?} failed: {text}");
    assert!(text.contains("TOCSIN_"), "{binary} {args:?}: the help names no variable");
    if let Some(line) = text.lines().find(|l| l.contains("0b1c-secret")) {
        panic!("{binary} {args:?} prints a secret: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(replace_database("postgres://localhost/tocsin", "t1"), "postgres://localhost/t1");
        assert_eq!(
            replace_database("postgres://u:p@h:5432/x?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://localhost", "t1"), "postgres://localhost/t1");
    }
}
