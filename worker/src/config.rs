//! The worker's configuration: every field a flag and an environment
//! variable (`worker --help` lists them).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tocsin_config::{AmqpArgs, DatabaseArgs, ProviderArgs, RedisArgs, TelemetryArgs, parse_duration};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "worker",
    version,
    about = "Consumes call jobs from RabbitMQ and places the calls through the campaign's voice provider, \
             never faster than the shared Redis rate limit allows.",
    after_help = "Example:\n  TOCSIN_VONAGE_APPLICATION_ID=app TOCSIN_VONAGE_PRIVATE_KEY_PATH=key.pem \\\n  TOCSIN_PUBLIC_URL=https://hooks.example.com worker"
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub limits: tocsin_config::accounts::LimitArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Base URL at which providers reach the webhook service (answer and event URLs).
    #[arg(
        long = "public-url",
        env = "TOCSIN_PUBLIC_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,

    /// Listen address of /healthz, /readyz and /metrics.
    #[arg(long = "http-addr", env = "TOCSIN_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,

    /// Create-call requests per second per provider account, shared by all workers.
    #[arg(long = "rate-per-sec", env = "TOCSIN_RATE_PER_SEC", default_value_t = 2.0)]
    pub rate_per_sec: f64,

    /// Room kept between the slots and the provider's limit: at most `rate` calls reach the
    /// provider in any 1 s + this, measured as each is sent, so a request that leaves late
    /// (a busy machine) never makes a rolling second hold `rate + 1`. Costs guard ÷ (1 s + guard)
    /// of the rate; with 0, sends are still admitted per rolling second, with no room for transit.
    #[arg(long = "rate-guard", env = "TOCSIN_RATE_GUARD", default_value = "15ms", value_parser = parse_duration)]
    pub rate_guard: Duration,

    /// Longest a job waits for its rate-limit slot; beyond it, the job goes back to a delay queue.
    #[arg(long = "limiter-max-wait", env = "TOCSIN_LIMITER_MAX_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub limiter_max_wait: Duration,

    /// `redis`: the shared limiter (always, in production). `none`: no limiter, only backing
    /// off on provider 429s — the classic approach, kept as the baseline of bench/rate.sh.
    #[arg(long = "limiter", env = "TOCSIN_LIMITER", value_enum, default_value_t = LimiterMode::Redis)]
    pub limiter: LimiterMode,

    /// How many workers share the provider accounts. When Redis is unreachable each worker
    /// falls back to a local limiter at rate / this number, so together they stay under the rate.
    #[arg(long = "expected-workers", env = "TOCSIN_EXPECTED_WORKERS", default_value_t = 1)]
    pub expected_workers: u32,

    /// PostgreSQL connections of this worker. Jobs hold one only for single short statements;
    /// raise it with the prefetch for high rates, keep replicas × this under the server's limit.
    #[arg(long = "db-pool", env = "TOCSIN_DB_POOL", default_value_t = 8)]
    pub db_pool: u32,

    /// Jobs held and processed at once (RabbitMQ prefetch and in-flight bound).
    #[arg(long = "prefetch", env = "TOCSIN_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,

    /// Timeout of one create-call request.
    #[arg(long = "provider-timeout", env = "TOCSIN_PROVIDER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub provider_timeout: Duration,

    /// Seconds the phone rings before the provider gives up.
    #[arg(long = "ringing-timeout", env = "TOCSIN_RINGING_TIMEOUT", default_value_t = 45)]
    pub ringing_timeout_secs: u32,

    /// A call left `dialing` longer than this was interrupted by a crash
    /// (younger ones may still be in flight on another worker).
    #[arg(long = "dialing-lease", env = "TOCSIN_DIALING_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub dialing_lease: Duration,

    /// How many transient failures (5xx, connection errors) a call survives.
    #[arg(long = "max-transient-retries", env = "TOCSIN_MAX_TRANSIENT_RETRIES", default_value_t = 5)]
    pub max_transient_retries: u32,

    #[command(flatten)]
    pub health: tocsin_config::accounts::HealthArgs,

    /// A create-call request to an account unanswered this long counts as one of its failures
    /// at once (the request itself still waits for its answer, up to --provider-timeout), when
    /// the call's route has another account: an account that stopped answering opens within a
    /// few seconds, and the route moves the next calls on.
    #[arg(long = "account-slow", env = "TOCSIN_ACCOUNT_SLOW", default_value = "3s", value_parser = parse_duration)]
    pub account_slow: Duration,

    /// How often the sweeper (one worker at a time) looks for calls that stopped moving.
    #[arg(long = "sweep-every", env = "TOCSIN_SWEEP_EVERY", default_value = "15s", value_parser = parse_duration)]
    pub sweep_every: Duration,

    /// How long past its due time a call may stand still before the sweeper moves it on:
    /// a waiting call's job is published again, a call left dialing is reconciled, a call
    /// in progress with no event for its ringing time plus this is looked up at its provider.
    #[arg(long = "stall-after", env = "TOCSIN_STALL_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub stall_after: Duration,

    /// How long SIGTERM waits for in-flight calls before exiting.
    #[arg(long = "shutdown-grace", env = "TOCSIN_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimiterMode {
    Redis,
    None,
}

impl WorkerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            anyhow::bail!("TOCSIN_RATE_PER_SEC must be a positive number, got {}", self.rate_per_sec);
        }
        if self.dialing_lease <= self.limiter_max_wait + self.provider_timeout {
            anyhow::bail!(
                "TOCSIN_DIALING_LEASE ({:?}) must be longer than TOCSIN_LIMITER_MAX_WAIT + TOCSIN_PROVIDER_TIMEOUT \
                 ({:?}): a call waits for its slot and its request while claimed",
                self.dialing_lease,
                self.limiter_max_wait + self.provider_timeout
            );
        }
        if self.rate_guard > Duration::from_millis(500) {
            anyhow::bail!(
                "TOCSIN_RATE_GUARD must be at most 500ms (it costs guard ÷ (1 s + guard) of the rate), got {:?}",
                self.rate_guard
            );
        }
        if self.health.account_failures == 0 {
            anyhow::bail!("TOCSIN_ACCOUNT_FAILURES must be at least 1");
        }
        if self.expected_workers == 0 {
            anyhow::bail!("TOCSIN_EXPECTED_WORKERS must be at least 1");
        }
        if self.sweep_every < Duration::from_secs(1) || self.stall_after < Duration::from_secs(1) {
            anyhow::bail!(
                "TOCSIN_SWEEP_EVERY and TOCSIN_STALL_AFTER must be at least 1s (got {:?} and {:?})",
                self.sweep_every,
                self.stall_after
            );
        }
        if self.prefetch == 0 {
            anyhow::bail!("TOCSIN_PREFETCH must be at least 1");
        }
        if !self.public_url.starts_with("http://") && !self.public_url.starts_with("https://") {
            anyhow::bail!("TOCSIN_PUBLIC_URL must be an http(s) URL, got {:?}", self.public_url);
        }
        Ok(())
    }

    pub fn sweep_settings(&self) -> crate::sweep::SweepSettings {
        crate::sweep::SweepSettings { every: self.sweep_every, stall_after: self.stall_after }
    }

    pub fn public_url(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_core::provider::Provider;
    use tocsin_core::route::AccountName;

    #[test]
    fn limits_name_accounts_and_a_rate_or_cap_for_an_unknown_account_is_refused() {
        let config = WorkerConfig::try_parse_from([
            "worker",
            "--twilio-account-sid",
            "AC0123456789abcdef0123456789abcdef",
            "--twilio-auth-token",
            "t",
            "--rates",
            "twilio=1/s",
            "--max-concurrent-calls",
            "twilio=50",
        ])
        .unwrap();
        let accounts =
            config.providers.accounts(tocsin_core::account::Rate::per_second(2.0), &config.limits).unwrap();
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].name, AccountName::default_of(Provider::Twilio));
        assert_eq!(accounts[0].limits.rate.to_string(), "1/s");
        assert_eq!(accounts[0].limits.max_concurrent, Some(50));

        let unknown =
            WorkerConfig::try_parse_from(["worker", "--max-concurrent-calls", "telnyx=10"]).unwrap();
        let err = unknown
            .providers
            .accounts(tocsin_core::account::Rate::per_second(2.0), &unknown.limits)
            .unwrap_err();
        assert!(err.to_string().contains("TOCSIN_MAX_CONCURRENT_CALLS names telnyx:default"), "{err}");
        let bad = WorkerConfig::try_parse_from(["worker", "--rates", "telnyx=fast"]).unwrap_err().to_string();
        assert!(bad.contains("telnyx=fast"), "{bad}");
    }
}
