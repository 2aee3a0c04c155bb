//! Publishing call jobs with pipelined publisher confirms.
//!
//! Up to `window` jobs are in flight at once; each batch's enqueue-batch ids
//! go on to be recorded as confirmed (`enqueue_batches`) as soon as every job
//! of the batch is confirmed. A job the broker refuses (nack) is published
//! again after a short pause, a few times, and then fails the run: its batch
//! stays unconfirmed, so the next run publishes it. Nothing is dropped
//! silently.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tocsin_core::queue::{ROUTE_CALL, Topology};
use tocsin_core::{CallId, CallJob, CampaignId, PhoneNumber};
use tokio::sync::mpsc;

use crate::EnqueueError;

/// How often a refused job is published again before the run gives up.
const MAX_TRIES: u32 = 4;

/// Jobs to publish, and the enqueue batches (`calls.enqueue_batch`) they
/// complete: the new rows of one database batch, or the rows an interrupted
/// run left unconfirmed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Recorded as confirmed once every job below is.
    pub confirms: Vec<i64>,
    pub jobs: Vec<(CallId, PhoneNumber)>,
}

type InFlight = Pin<Box<dyn Future<Output = (u64, usize, u32, lapin::Result<Confirmation>)> + Send>>;

struct Pending {
    confirms: Vec<i64>,
    jobs: Vec<CallJob>,
    remaining: usize,
}

/// What the publish stage did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    pub confirmed: u64,
    /// Publishes the broker refused and that were retried.
    pub retried: u64,
}

pub struct Stage {
    channel: Channel,
    exchange: ShortString,
    route: ShortString,
    campaign: CampaignId,
    window: usize,
    in_flight: FuturesUnordered<InFlight>,
    pending: HashMap<u64, Pending>,
    next_seq: u64,
    marks: mpsc::Sender<Vec<i64>>,
    done: Published,
    on_confirm: Box<dyn Fn(u64) + Send>,
}

/// Publishes one job; resolves once the frames are handed to the connection.
async fn send(
    channel: &Channel,
    exchange: &ShortString,
    route: &ShortString,
    job: &CallJob,
) -> lapin::Result<lapin::PublisherConfirm> {
    // The same properties as tocsin_core::queue::Publisher: persistent JSON,
    // message id `call:attempt` so a consumer can spot a second copy.
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(format!("{}:{}", job.call_id, job.attempt)));
    channel
        .basic_publish(
            exchange.clone(),
            route.clone(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &job.to_bytes(),
            props,
        )
        .await
}

fn broker_lost(e: lapin::Error) -> EnqueueError {
    EnqueueError::broker("publishing")(e)
}

impl Stage {
    pub fn new(
        channel: Channel,
        topology: &Topology,
        campaign: CampaignId,
        window: usize,
        marks: mpsc::Sender<Vec<i64>>,
        on_confirm: Box<dyn Fn(u64) + Send>,
    ) -> Self {
        Self {
            channel,
            exchange: ShortString::from(topology.exchange()),
            route: ShortString::from(ROUTE_CALL),
            campaign,
            window: window.max(1),
            in_flight: FuturesUnordered::new(),
            pending: HashMap::new(),
            next_seq: 0,
            marks,
            done: Published::default(),
            on_confirm,
        }
    }

    /// Publishes every batch from `rx`, then waits for the last confirms.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> Result<Published, EnqueueError> {
        let mut open = true;
        while open || !self.in_flight.is_empty() {
            tokio::select! {
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => self.confirmed(done).await?,
                batch = rx.recv(), if open => match batch {
                    Some(batch) => self.publish(batch).await?,
                    None => open = false,
                },
            }
        }
        // Closed here, every confirm in: a channel left to its drop is still
        // closing when the connection closes, and lapin logs that as an error.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.channel.close(200, "done".into())).await;
        Ok(self.done)
    }

    async fn publish(&mut self, batch: Batch) -> Result<(), EnqueueError> {
        if batch.jobs.is_empty() {
            // Nothing to wait for (every row was already there or blocked).
            if !batch.confirms.is_empty() {
                let _ = self.marks.send(batch.confirms).await;
            }
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let jobs: Vec<CallJob> =
            batch.jobs.into_iter().map(|(_, n)| CallJob::new(self.campaign, n, 1)).collect();
        let count = jobs.len();
        // Registered before the first publish: confirms may arrive while the
        // rest of the batch is still being sent.
        self.pending.insert(seq, Pending { confirms: batch.confirms, remaining: count, jobs });
        for idx in 0..count {
            while self.in_flight.len() >= self.window {
                if let Some(done) = self.in_flight.next().await {
                    self.confirmed(done).await?;
                }
            }
            let confirm = match self.pending.get(&seq) {
                Some(p) => send(&self.channel, &self.exchange, &self.route, &p.jobs[idx]).await,
                None => continue,
            }
            .map_err(broker_lost)?;
            self.in_flight.push(Box::pin(async move { (seq, idx, 1, confirm.await) }));
        }
        Ok(())
    }

    async fn confirmed(
        &mut self,
        (seq, idx, tries, result): (u64, usize, u32, lapin::Result<Confirmation>),
    ) -> Result<(), EnqueueError> {
        let confirmation = result.map_err(broker_lost)?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) => {
                return Err(EnqueueError::Failed {
                    doing: "publishing",
                    detail: format!(
                        "RabbitMQ could not route a job to the work queue (exchange {:?}, route {:?}): is the queue \
                     missing or the prefix wrong? Nothing was lost: re-run the same command once it is fixed",
                        self.exchange.as_str(),
                        self.route.as_str()
                    ),
                });
            }
            Confirmation::Nack(_) => {
                let Some(pending) = self.pending.get(&seq) else { return Ok(()) };
                let job = pending.jobs[idx].clone();
                if tries >= MAX_TRIES {
                    return Err(EnqueueError::Failed {
                        doing: "publishing",
                        detail: format!(
                            "RabbitMQ refused the job for call {} {tries} times (is the broker short of memory or \
                         disk?); the run stops here. Contacts whose jobs were not confirmed stay unconfirmed and \
                         re-running the same command publishes them",
                            job.call_id
                        ),
                    });
                }
                self.done.retried += 1;
                tracing::warn!(call_id = %job.call_id, tries, "the broker refused a job; publishing it again");
                let (channel, exchange, route) =
                    (self.channel.clone(), self.exchange.clone(), self.route.clone());
                let pause = Duration::from_millis(200 * 4u64.pow(tries - 1));
                self.in_flight.push(Box::pin(async move {
                    tokio::time::sleep(pause).await;
                    let result = match send(&channel, &exchange, &route, &job).await {
                        Ok(confirm) => confirm.await,
                        Err(e) => Err(e),
                    };
                    (seq, idx, tries + 1, result)
                }));
                return Ok(());
            }
        }
        self.done.confirmed += 1;
        (self.on_confirm)(1);
        let finished = match self.pending.get_mut(&seq) {
            Some(p) => {
                p.remaining -= 1;
                p.remaining == 0
            }
            None => false,
        };
        if finished && let Some(p) = self.pending.remove(&seq) {
            // The mark stage stopping means the run is failing; its error wins.
            let _ = self.marks.send(p.confirms).await;
        }
        Ok(())
    }
}
