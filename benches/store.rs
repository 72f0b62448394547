//! Durable store benchmarks, each beside the physical limit of the same disk measured in the same run:
//! a plain loop of sequential `write` + `fdatasync` moving the same bytes with the same batching.
//! Run with `cargo bench --bench store` (`-- --quick` for a short run; `-- --recovery-10m` adds the
//! 10 M-message recovery measurement, which writes about 0.5 GB).
//!
//! Targets (durable store issue):
//! * Batch durability, 16 B and 1 KiB payloads: within 2x of the limit, and ≥ 1 M msgs/s at 16 B;
//! * Always durability: msgs/s and p99 publish latency;
//! * recovery time of 1 M vs 10 M retained messages, after a clean shutdown and after a kill: it must not
//!   grow with the number of messages when the index is intact.

#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use pubsub::engine::{
    Durability, Engine, EngineConfig, Limits, Name, PublishRequest, SystemClock, TopicConfig,
};

/// Messages per publish call in the batch scenarios (and records per fdatasync in the limit loop).
const BATCH: usize = 1000;
/// Bytes of a stored record around its payload (header 31 B; no key, headers or subject here).
const RECORD_OVERHEAD: usize = 31;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let ten_million = args.iter().any(|a| a == "--recovery-10m");
    let root = std::env::temp_dir().join(format!("pubsub-store-bench-{}", std::process::id()));
    fs::create_dir_all(&root).expect("temp dir");
    println!("durable store benchmarks in {} ({})", root.display(), if quick { "quick" } else { "full" });
    println!("scenario | store | physical limit (write + fdatasync, same bytes and batching) | ratio");

    let scale = if quick { 10 } else { 1 };
    // Store and limit runs alternate, three of each, and the medians are compared: the disk's speed
    // drifts on a shared machine, and alternating keeps both sides under the same drift.
    for (size, total) in [(16usize, 2_000_000 / scale), (1024, 500_000 / scale)] {
        let mut store = Vec::new();
        let mut limit = Vec::new();
        for round in 0..3 {
            store.push(batch_publish(&root.join(format!("batch-{size}-{round}")), size, total));
            limit.push(physical_limit(
                &root.join(format!("limit-{size}")),
                size + RECORD_OVERHEAD,
                BATCH,
                total,
            ));
        }
        let label = format!("batch durability, {size} B payloads, {BATCH}/publish (msgs/s, median of 3)");
        report(&label, median(store), median(limit));
    }

    let singles = 3000 / scale.min(3);
    let (rate, p50, p99) = always_publish(&root.join("always"), 16, singles);
    let limit = physical_limit(&root.join("limit-always"), 16 + RECORD_OVERHEAD, 1, singles);
    report("always durability, 16 B, one publish per msg (msgs/s)", rate, limit);
    println!("  always durability publish latency: p50 {p50} µs, p99 {p99} µs");

    // With the default 64 MiB segments, 1 M messages fill one active segment (the part read whole at
    // open): the worst case. With 8 MiB segments both sizes have a small active segment, so what the
    // comparison shows is the cost of everything else, which must not grow with the count.
    let mut runs = vec![(1_000_000 / scale, 64 << 20), (1_000_000 / scale, 8 << 20)];
    if ten_million {
        runs.push((10_000_000, 64 << 20));
        runs.push((10_000_000, 8 << 20));
    }
    for (n, segment) in runs {
        recovery(&root.join(format!("recovery-{n}-{segment}")), n, segment);
    }
    let _ = fs::remove_dir_all(&root);
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn report(label: &str, store: f64, limit: f64) {
    println!("{label}: {store:.0} | {limit:.0} | {:.2}x of the limit", store / limit);
}

fn open(dir: &Path) -> Engine {
    Engine::open(dir, Arc::new(SystemClock), EngineConfig::default()).expect("open").0
}

fn topic(name: &str, durability: Durability) -> TopicConfig {
    let mut config = TopicConfig::new(Name::new(name).unwrap());
    config.durability = durability;
    config.limits = Limits { max_msgs: None, max_bytes: None, max_age: None, ..Limits::default() };
    config
}

fn batch_publish(dir: &Path, size: usize, total: usize) -> f64 {
    let engine = open(dir);
    engine.create_topic(topic("bench", Durability::default())).unwrap();
    let subject = Name::new("bench").unwrap();
    let payload = Bytes::from(vec![b'x'; size]);
    let batches: Vec<Vec<PublishRequest>> = (0..total / BATCH)
        .map(|_| (0..BATCH).map(|_| PublishRequest::new(subject.clone(), payload.clone())).collect())
        .collect();
    let started = Instant::now();
    for batch in batches {
        engine.publish_batch(batch).unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    drop(engine);
    let _ = fs::remove_dir_all(dir);
    rate
}

fn always_publish(dir: &Path, size: usize, total: usize) -> (f64, u64, u64) {
    let engine = open(dir);
    engine.create_topic(topic("bench", Durability::Always)).unwrap();
    let subject = Name::new("bench").unwrap();
    let payload = Bytes::from(vec![b'x'; size]);
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for _ in 0..total {
        let t = Instant::now();
        engine.publish(PublishRequest::new(subject.clone(), payload.clone())).unwrap();
        latency.record(t.elapsed().as_micros() as u64).unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    drop(engine);
    let _ = fs::remove_dir_all(dir);
    (rate, latency.value_at_quantile(0.5), latency.value_at_quantile(0.99))
}

/// Sequential writes of `batch` records of `record` bytes, one fdatasync per batch: what the disk allows.
fn physical_limit(path: &Path, record: usize, batch: usize, total: usize) -> f64 {
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path).unwrap();
    let chunk = vec![b'y'; record * batch];
    let started = Instant::now();
    for _ in 0..total / batch {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = fs::remove_file(path);
    rate
}

/// Fills a directory with `n` messages and times opening it after a clean close and after a kill (no
/// close: subscription journals to replay, nothing compacted), with one subscription half-way through.
fn recovery(dir: &Path, n: usize, segment_bytes: u64) {
    {
        let engine = open(dir);
        let mut config = topic("bench", Durability::Never);
        config.segment_bytes = segment_bytes;
        engine.create_topic(config).unwrap();
        let subject = Name::new("bench").unwrap();
        let payload = Bytes::from(vec![b'x'; 16]);
        let mut sub = pubsub::engine::SubscriptionConfig::new(Name::new("reader").unwrap(), subject.clone());
        sub.start = pubsub::engine::StartPosition::All;
        sub.ack = pubsub::engine::AckMode::None;
        engine.create_subscription(sub).unwrap();
        for _ in 0..n / BATCH {
            let batch = (0..BATCH).map(|_| PublishRequest::new(subject.clone(), payload.clone())).collect();
            engine.publish_batch(batch).unwrap();
        }
        let opts = pubsub::engine::FetchOptions { max_msgs: n / 2, ..Default::default() };
        engine.try_fetch(&Name::new("reader").unwrap(), "c", &opts).unwrap();
        engine.close().unwrap();
    }
    let all = files(dir);
    let disk: u64 = all.iter().map(|p| fs::metadata(p).map_or(0, |m| m.len())).sum();
    let mut logs: Vec<&PathBuf> = all.iter().filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
    logs.sort();
    let active = logs.last().map_or(0, |p| fs::metadata(p).map_or(0, |m| m.len()));
    let segments = logs.iter().filter(|p| p.to_string_lossy().contains("/topics/")).count();
    let clean = time_open(dir);
    // A kill: the engine is dropped without close, after more work than the last checkpoint holds.
    {
        let engine = open(dir);
        let opts = pubsub::engine::FetchOptions { max_msgs: 1000, ..Default::default() };
        engine.try_fetch(&Name::new("reader").unwrap(), "c", &opts).unwrap();
    }
    let killed = time_open(dir);
    println!(
        "recovery of {n} messages ({:.0} MB on disk, {segments} segments of {} MiB, active {:.1} MB): clean shutdown {:.1} ms, after a kill {:.1} ms",
        disk as f64 / 1e6,
        segment_bytes >> 20,
        active as f64 / 1e6,
        clean.as_secs_f64() * 1e3,
        killed.as_secs_f64() * 1e3
    );
    let _ = fs::remove_dir_all(dir);
}

fn time_open(dir: &Path) -> Duration {
    // Drop the page cache's advantage as far as an unprivileged process can: nothing. The numbers are
    // warm-cache numbers; what matters is that they do not grow with the message count.
    let started = Instant::now();
    let (engine, _) = Engine::open(dir, Arc::new(SystemClock), EngineConfig::default()).expect("open");
    let elapsed = started.elapsed();
    drop(engine);
    elapsed
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
