//! The ceiling for `bench/producer.sh`: a bare loop that publishes `--count`
//! job-sized persistent messages, with pipelined publisher confirms (the
//! same window as `producer enqueue`), to a quorum queue on the same broker,
//! and prints messages per second. No parsing, no database: every contact
//! costs at least one such message, so the producer cannot beat this.
//!
//! `--cleanup PREFIX` instead deletes the queue topology under PREFIX (the
//! benchmark's producer queues).
//!
//! cargo run --release -p producer --example publish_baseline -- --count 980000

use std::collections::VecDeque;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use tocsin_core::queue::Topology;
use tocsin_core::{CallJob, CampaignId, PhoneNumber};

struct Args {
    amqp_url: String,
    count: u64,
    window: usize,
    cleanup: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        amqp_url: tocsin_core::config::test_env::amqp_url(),
        count: 1_000_000,
        window: 2048,
        cleanup: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--amqp-url" => out.amqp_url = value()?,
            "--count" => out.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--in-flight" => out.window = value()?.parse().map_err(|e| format!("--in-flight: {e}"))?,
            "--cleanup" => out.cleanup = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args().map_err(anyhow::Error::msg)?;
    let conn = tocsin_core::queue::connect(&args.amqp_url, "tocsin-publish-baseline").await?;
    let channel = conn.create_channel().await?;

    if let Some(prefix) = args.cleanup {
        let topology = Topology::new(prefix);
        topology.declare(&channel).await?;
        topology.delete(&channel).await?;
        println!("deleted the queues under {:?}", topology.exchange());
        return Ok(());
    }

    let queue = format!("bench-baseline-{}", uuid::Uuid::new_v4().simple());
    let mut queue_args = FieldTable::default();
    queue_args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            queue_args,
        )
        .await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;

    let campaign = CampaignId::from_name("bench-baseline");
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(args.window);
    let mut nacked = 0u64;
    for i in 0..args.count {
        if in_flight.len() >= args.window
            && let Some(confirm) = in_flight.pop_front()
        {
            let confirm: lapin::PublisherConfirm = confirm;
            if matches!(confirm.await?, Confirmation::Nack(_)) {
                nacked += 1;
            }
        }
        // A real job's bytes and properties, as the producer publishes them.
        let number = PhoneNumber::from_e164(&format!("+1201{:07}", 2_000_000 + i % 8_000_000))?;
        let job = CallJob::new(campaign, number, 1);
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(format!("{}:{}", job.call_id, job.attempt)));
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &job.to_bytes(),
                props,
            )
            .await?;
        in_flight.push_back(confirm);
    }
    for confirm in in_flight {
        if matches!(confirm.await?, Confirmation::Nack(_)) {
            nacked += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    tocsin_core::queue::close(&conn, "done").await;
    println!(
        "{{\"messages\":{},\"seconds\":{secs:.3},\"per_sec\":{:.0},\"nacked\":{nacked}}}",
        args.count,
        args.count as f64 / secs
    );
    Ok(())
}
