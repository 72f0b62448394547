//! Engine micro-benchmarks, each beside a `tokio::sync::broadcast` baseline doing the same delivery work
//! in the same run, so that ratios hold on a noisy machine. Run with `cargo bench --bench engine`; after
//! `--`, a word keeps only the lines whose label holds it, `--rounds N` alternates the two sides N times
//! and prints medians, `--engine-only` or `--reference-only` runs one side (to profile it), `--quick` divides the counts by 10.
//!
//! Scenarios (targets from the foundation issue):
//! * publish → 1 subscription, ack none, 16-byte payloads (≥ 5 M msgs/s)
//! * fan-out to 100 subscriptions (≥ 20 M deliveries/s)
//! * explicit ack: fetch + ack (≥ 1 M msgs/s)
//! * memory per retained 16-byte message (≤ 128 bytes of overhead), from the process's resident size
//! * issue 24: 8 partitions with keys within 1.2× of one partition; PerKey with 1,000 keys ≥ 1 M msgs/s

#![expect(
    clippy::print_stdout,
    clippy::panic,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;

use pubsub::engine::{
    AckMode, Engine, FetchOptions, Limits, Name, OrderingMode, PublishRequest, StartPosition,
    SubscriptionConfig, TopicConfig,
};

const BATCH: usize = 1000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    // A word that is not an option keeps only the lines whose label contains it (`cargo bench --bench
    // engine -- PerKey`), as `cargo bench` filters do.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args
        .iter()
        .enumerate()
        .find(|&(i, a)| !a.starts_with('-') && (i == 0 || args[i - 1] != "--rounds"))
        .map(|(_, a)| a.clone());
    println!(
        "engine benchmarks ({} mode); each line: engine | broadcast baseline | ratio",
        if quick { "quick" } else { "full" }
    );
    // First, while the heap holds no memory freed by other scenarios.
    if only.is_none() {
        memory_per_message(1_000_000 / scale);
    }
    report(
        &only,
        "publish -> 1 sub, ack none, 16 B (msgs/s)",
        || publish_one_sub(2_000_000 / scale),
        || baseline_one(2_000_000 / scale),
    );
    report(
        &only,
        "publish -> 1 sub, ack none, 16 B, one publish() per msg",
        || publish_one_sub_single(2_000_000 / scale),
        || baseline_one(2_000_000 / scale),
    );
    report(
        &only,
        "fan-out 1 -> 100 subs (deliveries/s)",
        || fan_out(100, 100_000 / scale),
        || baseline_fan_out(100, 100_000 / scale),
    );
    report(
        &only,
        "fan-out 1 -> 10 subs (deliveries/s)",
        || fan_out(10, 500_000 / scale),
        || baseline_fan_out(10, 500_000 / scale),
    );
    report(
        &only,
        "explicit ack: fetch + ack (msgs/s)",
        || explicit_ack(1_000_000 / scale),
        || baseline_one(1_000_000 / scale),
    );
    // Issue 24: partitions and ordering, each against the same work on one partition (the ratio is
    // 8 partitions / 1 partition, and PerKey / no ordering).
    let n = 2_000_000 / scale;
    report(
        &only,
        "keyed, ack none: 8 partitions | 1 partition (msgs/s)",
        || keyed_ack_none(8, n),
        || keyed_ack_none(1, n),
    );
    let n = 1_000_000 / scale;
    report(
        &only,
        "keyed, fetch + ack: 8 partitions | 1 partition (msgs/s)",
        || keyed_explicit(8, OrderingMode::None, n),
        || keyed_explicit(1, OrderingMode::None, n),
    );
    report(
        &only,
        "PerKey, 1000 keys, fetch + ack | no ordering (msgs/s)",
        || keyed_explicit(1, OrderingMode::PerKey, n),
        || keyed_explicit(1, OrderingMode::None, n),
    );
    report(
        &only,
        "PerKey, 1000 keys, 8 partitions | no ordering (msgs/s)",
        || keyed_explicit(8, OrderingMode::PerKey, n),
        || keyed_explicit(8, OrderingMode::None, n),
    );
}

/// A topic of `partitions` partitions and one subscription, fed batches of 16-byte messages with
/// 1,000 keys in turn.
fn keyed_engine(partitions: u32, ack: AckMode, ordering: OrderingMode) -> (Engine, Vec<PublishRequest>) {
    let engine = Engine::new();
    let mut topic = TopicConfig::new(name("bench"));
    topic.partitions = partitions;
    // Limits hold per partition, so each partition keeps its share of the same 100,000 messages: the
    // runs compare the same work, not 8 times the retained memory.
    let retained = std::env::var("PUBSUB_BENCH_RETAINED").ok().and_then(|v| v.parse::<u64>().ok());
    let max_msgs = retained.unwrap_or(100_000) / u64::from(partitions);
    topic.limits =
        Limits { max_msgs: Some(max_msgs), max_bytes: None, max_age: None, max_msgs_per_key: None };
    engine.create_topic(topic).unwrap_or_else(|e| panic!("{e}"));
    let mut config = SubscriptionConfig::new(name("s"), name("bench"));
    config.ack = ack;
    config.ordering = ordering;
    config.max_in_flight = BATCH as u32;
    engine.create_subscription(config).unwrap_or_else(|e| panic!("{e}"));
    let payload = Bytes::from_static(b"0123456789abcdef");
    let keys: Vec<Bytes> = (0..1000).map(|k| Bytes::from(format!("key-{k}"))).collect();
    let template = (0..BATCH)
        .map(|i| PublishRequest::new(name("bench"), payload.clone()).with_key(keys[i % keys.len()].clone()))
        .collect();
    (engine, template)
}

fn keyed_ack_none(partitions: u32, n: u64) -> f64 {
    let (engine, template) = keyed_engine(partitions, AckMode::None, OrderingMode::None);
    let sub = name("s");
    let start = Instant::now();
    let mut received = 0u64;
    while received < n {
        engine.publish_batch(template.clone()).unwrap_or_else(|e| panic!("{e}"));
        received += drain(&engine, &sub) as u64;
    }
    rate(received, start.elapsed())
}

fn keyed_explicit(partitions: u32, ordering: OrderingMode, n: u64) -> f64 {
    let (engine, template) = keyed_engine(partitions, AckMode::Explicit, ordering);
    publish_fetch_ack(&engine, &template, n)
}

/// Runs and prints one line, unless `only` names other lines. With `--rounds N` the two sides run
/// alternately N times and the line gives their medians and the median of the per-round ratios, which
/// holds better than one round on a shared machine. `--engine-only` or `--reference-only` runs one side (for a
/// profile of one side alone).
fn report(only: &Option<String>, label: &str, engine: impl Fn() -> f64, baseline: impl Fn() -> f64) {
    if only.as_ref().is_some_and(|o| !label.contains(o.as_str())) {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    if args.iter().any(|a| a == "--engine-only") {
        let runs: Vec<f64> = (0..rounds).map(|_| engine()).collect();
        println!("{label:<58} {:>14.0} | {:>14} |", median(runs), "-");
        return;
    }
    if args.iter().any(|a| a == "--reference-only") {
        let runs: Vec<f64> = (0..rounds).map(|_| baseline()).collect();
        println!("{label:<58} {:>14} | {:>14.0} |", "-", median(runs));
        return;
    }
    let (mut engines, mut baselines, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (e, b) = (engine(), baseline());
        engines.push(e);
        baselines.push(b);
        ratios.push(e / b);
    }
    let ratio = median(ratios);
    let (engine, baseline) = (median(engines), median(baselines));
    println!("{label:<58} {:>14.0} | {:>14.0} | {:.2}x", engine, baseline, ratio);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn engine_with_subs(subs: usize) -> Engine {
    let engine = Engine::new();
    let mut topic = TopicConfig::new(name("bench"));
    topic.limits = Limits { max_msgs: Some(100_000), max_bytes: None, max_age: None, max_msgs_per_key: None };
    engine.create_topic(topic).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..subs {
        let mut config = SubscriptionConfig::new(name(&format!("s{i}")), name("bench"));
        config.ack = AckMode::None;
        config.start = StartPosition::New;
        engine.create_subscription(config).unwrap_or_else(|e| panic!("{e}"));
    }
    engine
}

fn batch() -> Vec<PublishRequest> {
    let payload = Bytes::from_static(b"0123456789abcdef");
    (0..BATCH).map(|_| PublishRequest::new(name("bench"), payload.clone())).collect()
}

fn drain(engine: &Engine, sub: &Name) -> usize {
    let opts = FetchOptions { max_msgs: BATCH, ..FetchOptions::default() };
    let got = engine.try_fetch(sub, "c", &opts).unwrap_or_else(|e| panic!("{e}"));
    black_box(&got);
    got.len()
}

fn publish_one_sub(n: u64) -> f64 {
    let engine = engine_with_subs(1);
    let sub = name("s0");
    let template = batch();
    let start = Instant::now();
    let mut received = 0u64;
    while received < n {
        engine.publish_batch(template.clone()).unwrap_or_else(|e| panic!("{e}"));
        received += drain(&engine, &sub) as u64;
    }
    rate(received, start.elapsed())
}

fn publish_one_sub_single(n: u64) -> f64 {
    let engine = engine_with_subs(1);
    let sub = name("s0");
    let template = batch();
    let start = Instant::now();
    let mut received = 0u64;
    while received < n {
        for req in template.iter().cloned() {
            engine.publish(req).unwrap_or_else(|e| panic!("{e}"));
        }
        received += drain(&engine, &sub) as u64;
    }
    rate(received, start.elapsed())
}

fn fan_out(subs: usize, messages: u64) -> f64 {
    let engine = engine_with_subs(subs);
    let names: Vec<Name> = (0..subs).map(|i| name(&format!("s{i}"))).collect();
    let template = batch();
    let start = Instant::now();
    let mut delivered = 0u64;
    let mut published = 0u64;
    while published < messages {
        engine.publish_batch(template.clone()).unwrap_or_else(|e| panic!("{e}"));
        published += BATCH as u64;
        for sub in &names {
            delivered += drain(&engine, sub) as u64;
        }
    }
    rate(delivered, start.elapsed())
}

fn explicit_ack(n: u64) -> f64 {
    let engine = Engine::new();
    let mut config = SubscriptionConfig::new(name("s"), name("bench"));
    config.ack = AckMode::Explicit;
    config.max_in_flight = BATCH as u32;
    engine.create_subscription(config).unwrap_or_else(|e| panic!("{e}"));
    publish_fetch_ack(&engine, &batch(), n)
}

/// Publishes `template` and fetches and acks it through subscription `s`, a batch at a time, until `n`
/// are acked; the acks per second.
fn publish_fetch_ack(engine: &Engine, template: &[PublishRequest], n: u64) -> f64 {
    let sub = name("s");
    let opts = FetchOptions { max_msgs: BATCH, ..FetchOptions::default() };
    let start = Instant::now();
    let mut acked = 0u64;
    while acked < n {
        engine.publish_batch(template.to_vec()).unwrap_or_else(|e| panic!("{e}"));
        let got = engine.try_fetch(&sub, "c", &opts).unwrap_or_else(|e| panic!("{e}"));
        for d in got {
            if let Some(lease) = d.lease {
                engine.ack(&sub, lease).unwrap_or_else(|e| panic!("{e}"));
                acked += 1;
            }
        }
    }
    rate(acked, start.elapsed())
}

/// The same delivery work on a broadcast channel: send a batch, each receiver drains it.
fn baseline_fan_out(receivers: usize, messages: u64) -> f64 {
    let (tx, _) = broadcast::channel::<Bytes>(BATCH.next_power_of_two());
    let mut rxs: Vec<_> = (0..receivers).map(|_| tx.subscribe()).collect();
    let payload = Bytes::from_static(b"0123456789abcdef");
    let start = Instant::now();
    let mut delivered = 0u64;
    let mut published = 0u64;
    while published < messages {
        for _ in 0..BATCH {
            let _ = tx.send(payload.clone());
        }
        published += BATCH as u64;
        for rx in &mut rxs {
            while let Ok(m) = rx.try_recv() {
                black_box(&m);
                delivered += 1;
            }
        }
    }
    rate(delivered, start.elapsed())
}

fn baseline_one(n: u64) -> f64 {
    baseline_fan_out(1, n)
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_per_message(n: u64) {
    let engine = Engine::new();
    let mut topic = TopicConfig::new(name("mem"));
    topic.limits = Limits { max_msgs: None, max_bytes: None, max_age: None, max_msgs_per_key: None };
    engine.create_topic(topic).unwrap_or_else(|e| panic!("{e}"));
    // Requests are built batch by batch inside the measured window, so the allocator reuses the same
    // few hundred kilobytes for them; building all of them first and freeing them during the run would
    // hand the engine recycled memory and understate its growth.
    let before = rss();
    let mut text = String::new();
    for start in (0..n).step_by(BATCH) {
        let chunk: Vec<PublishRequest> = (start..(start + BATCH as u64).min(n))
            .map(|i| {
                text.clear();
                let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{i:016}"));
                PublishRequest::new(name("mem"), Bytes::copy_from_slice(text.as_bytes()))
            })
            .collect();
        engine.publish_batch(chunk).unwrap_or_else(|e| panic!("{e}"));
    }
    let after = rss();
    let retained = engine.topic_info(&name("mem")).map(|t| t.messages).unwrap_or(0);
    match (before, after) {
        (Some(b), Some(a)) if retained > 0 => {
            let per = a.saturating_sub(b) as f64 / retained as f64;
            println!(
                "{:<58} {:>14.1} bytes/msg total, {:.1} bytes overhead beyond the 16-byte payload ({} retained)",
                "memory per retained 16 B message",
                per,
                per - 16.0,
                retained
            );
        }
        _ => println!("memory per retained message: not measurable here (no /proc/self/statm)"),
    }
}
