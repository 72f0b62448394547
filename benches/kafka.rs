//! The Kafka backend beside the `rdkafka` client it is built on, in the same run against the same
//! broker: publishing 16-byte messages with acks=all, by a minimal rdkafka loop (hand a batch to the
//! producer, then await its delivery reports) and by `KafkaBroker::publish_batch` (what `pubsub pub` and
//! `pubsub bench` use), both in batches of 256 to a topic of one partition.
//! Run with `cargo bench --bench kafka` (`-- --quick` for a tenth of the work; `-- --url kafka://HOST:PORT`
//! for another broker than a Tansu started here from `target/test-brokers/tansu`, which
//! `scripts/fetch-tansu.sh` puts there).
//!
//! Target (Kafka backend issue): `pubsub bench` publishing within 1.5x of the minimal loop.

#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pubsub::broker::Broker;
use pubsub::broker::kafka::KafkaBroker;
use pubsub::model::{Name, PublishRequest, TopicConfig};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Messages per batch, as `pubsub bench` sends them by default.
const BATCH: usize = 256;

/// A Tansu broker this benchmark started; ended when dropped.
struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tansu() -> Option<(Tansu, String)> {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-brokers/tansu");
    if !bin.exists() {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let listener = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((Tansu(child), format!("127.0.0.1:{port}")))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let given = args.iter().position(|a| a == "--url").and_then(|i| args.get(i + 1).cloned());
    let total = if quick { 20_000 } else { 200_000 };
    let (_tansu, servers) = match given {
        Some(url) => (None, url.trim_start_matches("kafka://").to_string()),
        None => match start_tansu() {
            Some((t, s)) => (Some(t), s),
            None => {
                println!("no Tansu binary (run scripts/fetch-tansu.sh) and no --url; nothing measured");
                return;
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let broker = KafkaBroker::connect(&format!("kafka://{servers}")).await.expect("connect");
        for t in ["bench-raw", "bench-backend"] {
            let _ = broker.create_topic(TopicConfig::new(Name::new(t).expect("name"))).await;
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        // Both connected and warmed (metadata, producer id) before anything is timed.
        minimal_loop(&producer, 1).await;
        backend(&broker, 1).await;
        println!("Kafka publish with acks=all, {total} × 16 B, batches of {BATCH} (msgs/s, median of 5 alternating runs)");
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            raw.push(minimal_loop(&producer, total).await);
            ours.push(backend(&broker, total).await);
        }
        let (raw, ours) = (median(raw), median(ours));
        println!("rdkafka minimal loop (send_result {BATCH}, await their reports) | {raw:.0}");
        println!("KafkaBroker::publish_batch ({BATCH}/call, keys/headers path, receipts) | {ours:.0}");
        println!("ratio (minimal / backend) | {:.2}x (target ≤ 1.5x)", raw / ours);
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn minimal_loop(producer: &FutureProducer, total: usize) -> f64 {
    let payload = [7u8; 16];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let mut pending = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(total - sent) {
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to("bench-raw").payload(&payload[..]);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("send"));
        }
        sent += pending.len();
        for report in pending {
            report.await.expect("report").expect("delivered");
        }
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn backend(broker: &KafkaBroker, total: usize) -> f64 {
    let subject = Name::new("bench-backend").expect("name");
    let payload = Bytes::from_static(&[7u8; 16]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = BATCH.min(total - sent);
        let batch = (0..n).map(|_| PublishRequest::new(subject.clone(), payload.clone())).collect();
        broker.publish_batch(batch).await.expect("publish");
        sent += n;
    }
    total as f64 / started.elapsed().as_secs_f64()
}
