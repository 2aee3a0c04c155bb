//! RabbitMQ topology and publishing. Every binary declares the topology at
//! start (declarations are idempotent), so start-up order does not matter.
//!
//! ```text
//! exchange {p} (direct)
//!   "call"        -> {p}.calls            quorum, x-delivery-limit, DLX -> "dead"
//!   "dead"        -> {p}.calls.dead       quorum
//!   "delay.<tier>"-> {p}.calls.delay.<t>  quorum, x-message-ttl = tier, DLX -> "call"
//! ```
//!
//! One delay queue per tier with a queue-level TTL: per-message TTLs in a
//! shared queue only expire at the head, so a long delay would hold up a
//! short one behind it.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::CallJob;

/// How many times RabbitMQ redelivers a job (worker crashes, nacks) before
/// dead-lettering it. A queue argument, fixed when the queue was first
/// declared; the worker never lets a job get near it (`RECYCLE_AFTER`), so
/// it only guards against a worker that could not run its own check.
pub const DELIVERY_LIMIT: i64 = 5;

/// A job the broker has redelivered this many times (each return is a
/// worker that died, or gave the job back, while holding it) is published
/// again as a fresh message and the old one acked, before the delivery
/// limit can dead-letter it: dying workers are no fault of the job's.
pub const RECYCLE_AFTER: i64 = 2;

/// Header naming why the worker dead-lettered a job.
pub const DEAD_REASON_HEADER: &str = "x-tocsin-dead-reason";

/// How many times the broker has delivered this message before (a quorum
/// queue's `x-delivery-count`; 0 on the first delivery).
pub fn delivery_count(properties: &BasicProperties) -> i64 {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(amqp_int)
        .unwrap_or(0)
}

/// Why a message is in the dead-letter queue: the worker's reason header,
/// else the broker's (`x-death`'s first `reason`, e.g. `delivery_limit`).
pub fn dead_reason(properties: &BasicProperties) -> String {
    let headers = properties.headers().as_ref().map(FieldTable::inner);
    let ours = headers.and_then(|h| h.get(DEAD_REASON_HEADER)).and_then(amqp_text);
    let broker = || {
        let AMQPValue::FieldArray(deaths) = headers?.get("x-death")? else { return None };
        let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
        amqp_text(first.inner().get("reason")?).map(|r| format!("broker: {r}"))
    };
    ours.or_else(broker).unwrap_or_else(|| "unknown".into())
}

fn amqp_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn amqp_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub const ROUTE_CALL: &str = "call";
pub const ROUTE_DEAD: &str = "dead";

/// The delay tiers of the redial and retry queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayTier {
    S1,
    S5,
    S30,
    M2,
    M10,
    H1,
}

impl DelayTier {
    pub const ALL: [DelayTier; 6] = [Self::S1, Self::S5, Self::S30, Self::M2, Self::M10, Self::H1];

    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::S1 => 1,
            Self::S5 => 5,
            Self::S30 => 30,
            Self::M2 => 120,
            Self::M10 => 600,
            Self::H1 => 3600,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::S1 => "1s",
            Self::S5 => "5s",
            Self::S30 => "30s",
            Self::M2 => "2m",
            Self::M10 => "10m",
            Self::H1 => "1h",
        }
    }

    /// The tier of a `name` (`1s`, `5s` …).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The tier nearest to `wanted` (on a log scale), so a 4-minute retry
    /// delay waits 2 minutes rather than 10.
    pub fn nearest(wanted: Duration) -> Self {
        let w = wanted.as_secs_f64().max(0.001).ln();
        Self::ALL
            .into_iter()
            .min_by(|a, b| {
                let da = (a.duration().as_secs_f64().ln() - w).abs();
                let db = (b.duration().as_secs_f64().ln() - w).abs();
                da.total_cmp(&db)
            })
            .unwrap_or(Self::S1)
    }

    /// The longest tier at most as long as `wanted` (the shortest if none):
    /// for a job that must look again no later than `wanted`.
    pub fn at_most(wanted: Duration) -> Self {
        Self::ALL.into_iter().rev().find(|t| t.duration() <= wanted).unwrap_or(Self::S1)
    }

    /// The shortest tier at least as long as `wanted` (the longest if none).
    pub fn at_least(wanted: Duration) -> Self {
        Self::ALL.into_iter().find(|t| t.duration() >= wanted).unwrap_or(Self::H1)
    }
}

/// Names of the exchange and queues under one prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn exchange(&self) -> &str {
        &self.prefix
    }

    pub fn work_queue(&self) -> String {
        format!("{}.calls", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.calls.dead", self.prefix)
    }

    pub fn delay_queue(&self, tier: DelayTier) -> String {
        format!("{}.calls.delay.{}", self.prefix, tier.name())
    }

    pub fn delay_route(tier: DelayTier) -> String {
        format!("delay.{}", tier.name())
    }

    /// Declares the exchange, the work, dead-letter and delay queues and
    /// their bindings. Idempotent.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(self.exchange().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await?;

        let mut work = quorum_args();
        work.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
        work.insert("x-dead-letter-exchange".into(), long(self.exchange()));
        work.insert("x-dead-letter-routing-key".into(), long(ROUTE_DEAD));
        self.declare_bound(channel, &self.work_queue(), ROUTE_CALL, work).await?;
        self.declare_bound(channel, &self.dead_queue(), ROUTE_DEAD, quorum_args()).await?;

        for tier in DelayTier::ALL {
            let mut delay = quorum_args();
            let ttl = i64::try_from(tier.duration().as_millis()).unwrap_or(i64::MAX);
            delay.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            delay.insert("x-dead-letter-exchange".into(), long(self.exchange()));
            delay.insert("x-dead-letter-routing-key".into(), long(ROUTE_CALL));
            // Expired messages move back to the work queue at least once,
            // never lost in between (needs reject-publish overflow).
            delay.insert("x-dead-letter-strategy".into(), long("at-least-once"));
            delay.insert("x-overflow".into(), long("reject-publish"));
            self.declare_bound(channel, &self.delay_queue(tier), &Self::delay_route(tier), delay).await?;
        }
        Ok(())
    }

    async fn declare_bound(
        &self,
        channel: &Channel,
        queue: &str,
        route: &str,
        args: FieldTable,
    ) -> lapin::Result<()> {
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.into(), options, args).await?;
        channel
            .queue_bind(
                queue.into(),
                self.exchange().into(),
                route.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Deletes every queue and the exchange (tests clean up with this).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let mut queues = vec![self.work_queue(), self.dead_queue()];
        queues.extend(DelayTier::ALL.map(|t| self.delay_queue(t)));
        for queue in queues {
            channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
        }
        channel.exchange_delete(self.exchange().into(), Default::default()).await
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    args
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Connects to RabbitMQ, naming this process in the broker's management view.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await
}

/// How long a polite close may take before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `conn` with the AMQP handshake, giving up after `CLOSE_TIMEOUT`.
/// lapin 4's close can wait forever for a close-ok once the socket is gone
/// (seen in CI: a producer run that had finished its work hung here, and
/// the broker logged "client unexpectedly closed TCP connection"); the work
/// is done by then, so dropping the connection is the right fallback.
pub async fn close(conn: &Connection, reason: &str) {
    if tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await.is_err() {
        tracing::warn!(reason, "closing the RabbitMQ connection timed out; dropping it");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error while publishing: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the job (nack)")]
    Nacked,
    #[error("the job could not be routed to a queue (is the topology declared?)")]
    Unroutable,
}

/// A channel in confirm mode that publishes call jobs as persistent JSON.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    pub async fn new(connection: &Connection, topology: Topology) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel, topology })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes `jobs` to the work queue, all in flight at once, and returns
    /// when the broker has confirmed every one of them.
    pub async fn publish_all(&self, jobs: &[CallJob]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            confirms.push(self.send(job, ROUTE_CALL).await?);
        }
        for confirm in confirms {
            check(confirm.await?)?;
        }
        Ok(())
    }

    /// Publishes one job to the work queue and waits for its confirm.
    pub async fn publish(&self, job: &CallJob) -> Result<(), PublishError> {
        check(self.send(job, ROUTE_CALL).await?.await?)
    }

    /// Publishes `job` to a delay queue; it reaches the work queue again when
    /// the tier's TTL expires.
    pub async fn publish_delayed(&self, job: &CallJob, tier: DelayTier) -> Result<(), PublishError> {
        check(self.send(job, &Topology::delay_route(tier)).await?.await?)
    }

    /// Publishes a message the worker gives up on (`body` as received, which
    /// may not decode) to the dead-letter queue with its reason, and waits
    /// for the confirm.
    pub async fn publish_dead(&self, body: &[u8], reason: &str) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        headers.insert(DEAD_REASON_HEADER.into(), long(reason));
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.topology.exchange().into(),
                ROUTE_DEAD.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                props,
            )
            .await?;
        check(confirm.await?)
    }

    async fn send(&self, job: &CallJob, route: &str) -> lapin::Result<lapin::PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(format!("{}:{}", job.call_id, job.attempt)));
        self.channel
            .basic_publish(
                self.topology.exchange().into(),
                route.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &job.to_bytes(),
                props,
            )
            .await
    }
}

fn check(confirmation: lapin::Confirmation) -> Result<(), PublishError> {
    match confirmation {
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        lapin::Confirmation::Nack(_) => Err(PublishError::Nacked),
        lapin::Confirmation::NotRequested => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_pick_the_nearest_and_at_least() {
        assert_eq!(DelayTier::nearest(Duration::from_secs(4)), DelayTier::S5);
        assert_eq!(DelayTier::nearest(Duration::from_secs(240)), DelayTier::M2);
        assert_eq!(DelayTier::nearest(Duration::from_secs(300)), DelayTier::M10);
        assert_eq!(DelayTier::nearest(Duration::ZERO), DelayTier::S1);
        assert_eq!(DelayTier::nearest(Duration::from_secs(86_400)), DelayTier::H1);
        assert_eq!(DelayTier::at_least(Duration::from_millis(1500)), DelayTier::S5);
        assert_eq!(DelayTier::at_least(Duration::from_secs(7200)), DelayTier::H1);
        assert_eq!(DelayTier::at_most(Duration::from_secs(60)), DelayTier::S30);
        assert_eq!(DelayTier::at_most(Duration::from_secs(29)), DelayTier::S5);
        assert_eq!(DelayTier::at_most(Duration::from_millis(300)), DelayTier::S1);
    }

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("tocsin");
        assert_eq!(t.work_queue(), "tocsin.calls");
        assert_eq!(t.dead_queue(), "tocsin.calls.dead");
        assert_eq!(t.delay_queue(DelayTier::M2), "tocsin.calls.delay.2m");
    }
}
