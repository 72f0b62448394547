//! The NATS backend beside the `async-nats` client it is built on, in the same run against the same
//! server: core publish throughput of a minimal client loop (publish every message, flush once) and of
//! `NatsBroker::publish_batch` (what `pubsub pub` and `pubsub bench` use), 16-byte payloads.
//! Run with `cargo bench --bench nats` (`-- --quick` for a tenth of the work; `-- --url URL` for another
//! server than nats://127.0.0.1:4222).
//!
//! Target (NATS backend issue): the backend's core publish throughput within 1.5x of the minimal loop.

#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::time::Instant;

use bytes::Bytes;
use pubsub::broker::Broker;
use pubsub::broker::nats::NatsBroker;
use pubsub::engine::{Name, PublishRequest};

/// Messages per `publish_batch` call, as `pubsub bench` sends them by default.
const BATCH: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let url = args
        .iter()
        .position(|a| a == "--url")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let total = if quick { 200_000 } else { 2_000_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let server =
            url.split("://").nth(1).unwrap_or("127.0.0.1:4222").split('?').next().unwrap_or_default();
        if tokio::net::TcpStream::connect(server).await.is_err() {
            println!("no NATS server at {url}; nothing measured");
            return;
        }
        println!(
            "NATS core publish, {total} × 16 B to {url}, no subscriber (msgs/s, median of 5 alternating runs)"
        );
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            raw.push(minimal_loop(&url, total).await);
            ours.push(backend(&url, total).await);
        }
        let (raw, ours) = (median(raw), median(ours));
        println!("async-nats minimal loop (publish, flush at the end) | {raw:.0}");
        println!(
            "NatsBroker::publish_batch ({BATCH}/call as pubsub bench sends, flush at the end) | {ours:.0}"
        );
        println!("ratio (minimal / backend) | {:.2}x (target ≤ 1.5x)", raw / ours);
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn minimal_loop(url: &str, total: usize) -> f64 {
    let client = async_nats::connect(url.split('?').next().unwrap_or(url)).await.expect("connect");
    let payload = Bytes::from_static(&[7u8; 16]);
    let started = Instant::now();
    for _ in 0..total {
        client.publish("bench.raw", payload.clone()).await.expect("publish");
    }
    client.flush().await.expect("flush");
    total as f64 / started.elapsed().as_secs_f64()
}

async fn backend(url: &str, total: usize) -> f64 {
    let core = if url.contains('?') { format!("{url}&mode=core") } else { format!("{url}?mode=core") };
    let broker = NatsBroker::connect(&core).await.expect("connect");
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
    broker.close().await;
    total as f64 / started.elapsed().as_secs_f64()
}
