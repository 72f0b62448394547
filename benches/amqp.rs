//! The RabbitMQ backend beside the `lapin` client it is built on, in the same run against the same
//! broker: publishing 16-byte messages with publisher confirms, by a minimal lapin loop (publish a batch,
//! then await its confirms) and by `AmqpBroker::publish_batch` (what `pubsub pub` and `pubsub bench`
//! use), both in batches of 256 to a routing key no queue is bound to.
//! Run with `cargo bench --bench amqp` (`-- --quick` for a tenth of the work; `-- --url URL` for another
//! broker than amqp://guest:guest@127.0.0.1:5672/%2f).
//!
//! Target (RabbitMQ backend issue): publishing with confirms within 1.5x of the minimal loop.

#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::time::Instant;

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use pubsub::broker::Broker;
use pubsub::broker::amqp::AmqpBroker;
use pubsub::model::{Name, PublishRequest};

/// Messages per batch, as `pubsub bench` sends them by default.
const BATCH: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let url = args
        .iter()
        .position(|a| a == "--url")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let total = if quick { 20_000 } else { 200_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        if tokio::net::TcpStream::connect("127.0.0.1:5672").await.is_err() && url.contains("127.0.0.1:5672") {
            println!("no RabbitMQ at {url}; nothing measured");
            return;
        }
        println!("AMQP publish with confirms, {total} × 16 B, batches of {BATCH} (msgs/s, median of 5 alternating runs)");
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            raw.push(minimal_loop(&url, total).await);
            ours.push(backend(&url, total).await);
        }
        let (raw, ours) = (median(raw), median(ours));
        println!("lapin minimal loop (publish {BATCH}, await their confirms) | {raw:.0}");
        println!("AmqpBroker::publish_batch ({BATCH}/call, mandatory, properties) | {ours:.0}");
        println!("ratio (minimal / backend) | {:.2}x (target ≤ 1.5x)", raw / ours);
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn minimal_loop(url: &str, total: usize) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let payload = [7u8; 16];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let mut pending = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(total - sent) {
            let confirm = channel
                .basic_publish(
                    "amq.topic".into(),
                    "bench.raw".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            pending.push(confirm);
        }
        sent += pending.len();
        for confirm in pending {
            confirm.await.expect("confirm");
        }
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "OK".into()).await;
    rate
}

async fn backend(url: &str, total: usize) -> f64 {
    let broker = AmqpBroker::connect(url).await.expect("connect");
    let subject = Name::new("bench.backend").expect("name");
    let payload = Bytes::from_static(&[7u8; 16]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = BATCH.min(total - sent);
        let batch = (0..n).map(|_| PublishRequest::new(subject.clone(), payload.clone())).collect();
        broker.publish_batch(batch).await.expect("publish");
        sent += n;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    broker.close().await;
    rate
}
