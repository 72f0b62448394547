//! `pubsub bench`: publish-to-delivery throughput and latency against any broker URL.
//!
//! One publisher sends `--messages` payloads of `--size` bytes in batches; `--subscribers` durable
//! subscriptions (or live listeners where the broker has none) each receive every message. Latency is
//! measured from the publish time stamped into each payload to its arrival, into an HDR histogram.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::broker::{Capability, SharedBroker, StreamItem, SubscribeRequest};
use crate::cli::CliError;
use crate::cli::output::{Stdout, note};
use crate::engine::{AckMode, Name, Pattern, PublishRequest, StartPosition, SubscriptionConfig};

/// Options of `pubsub bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages to publish.
    #[arg(long, short = 'n', default_value_t = 200_000)]
    pub messages: u64,
    /// Payload size in bytes (at least 8: the send time is stamped into the first 8).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Subscriptions that each receive every message (fan-out); 0 measures publishing alone.
    #[arg(long, default_value_t = 1)]
    pub subscribers: u32,
    /// Concurrent publishers sharing the messages (each sends its share in batches).
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Messages per publish batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    published: u64,
    delivered: u64,
    lagged: u64,
    /// Until the last publish was answered.
    publishing: Duration,
    /// Until the last delivery arrived.
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// Runs the benchmark against `broker_url`.
pub async fn run(ctx: &crate::cli::Context, args: BenchArgs) -> Result<(), CliError> {
    if args.size < 8 {
        return Err(CliError::Usage(format!(
            "--size {} is too small: it must be at least 8 bytes",
            args.size
        )));
    }
    if args.batch == 0 || args.publishers == 0 {
        return Err(CliError::Usage("--batch and --publishers must be at least 1".into()));
    }
    let broker = ctx.connect().await?;
    let report = measure(broker.clone(), &args).await?;
    print_report(&broker, &args, &report)
}

async fn measure(broker: SharedBroker, args: &BenchArgs) -> Result<Report, CliError> {
    let topic =
        Name::new(&format!("bench-{}", std::process::id())).map_err(|e| CliError::Usage(e.to_string()))?;
    // Durable subscriptions where the broker has them (no loss by design); live listeners otherwise
    // (Redis PUB/SUB and the like), where loss is possible and is counted.
    // The run's topic keeps every message of the run, so a subscriber that falls behind is measured as
    // slow rather than losing messages to the default retention limit.
    let mut config = crate::engine::TopicConfig::new(topic.clone());
    config.limits.max_msgs = Some(args.messages.max(1).saturating_mul(2));
    config.limits.max_bytes = None;
    // Brokers without topic admin, or that keep no limits of their own (Redis streams), refuse; their
    // topics then keep what the run sends anyway.
    match broker.create_topic(config).await {
        Ok(_)
        | Err(crate::broker::BrokerError::Unsupported { .. } | crate::broker::BrokerError::Invalid(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut durable = broker.capabilities().has(Capability::CompetingConsumers);
    let mut streams = Vec::new();
    for i in 0..args.subscribers {
        let pattern = Pattern::parse(topic.as_str()).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut req = SubscribeRequest::live(vec![pattern]);
        if durable {
            let name = Name::new(&format!("{topic}-sub{i}")).map_err(|e| CliError::Usage(e.to_string()))?;
            let mut config = SubscriptionConfig::new(name.clone(), topic.clone());
            config.ack = AckMode::None;
            config.start = StartPosition::New;
            config.max_in_flight = 10_000;
            match broker.create_subscription(config).await {
                Ok(_) => {
                    req.subscription = Some(name);
                    req.prefetch = Some(4096);
                }
                Err(crate::broker::BrokerError::Unsupported { .. }) => durable = false,
                Err(e) => return Err(e.into()),
            }
        }
        streams.push(broker.subscribe(req).await?);
    }
    let expected = args.messages;
    let mut receivers = Vec::new();
    for mut stream in streams {
        let mut latency = new_histogram()?;
        receivers.push(tokio::spawn(async move {
            let (mut got, mut lagged) = (0u64, 0u64);
            while got + lagged < expected {
                match stream.next().await {
                    Some(Ok(StreamItem::Delivery(d))) => {
                        got += 1;
                        if let Some(sent) = stamp(&d.message.payload) {
                            let _ = latency.record(now_micros().saturating_sub(sent).max(1));
                        }
                    }
                    Some(Ok(StreamItem::Lagged { skipped })) => lagged += skipped,
                    Some(Err(_)) | None => break,
                }
            }
            (got, lagged, latency)
        }));
    }
    let started = Instant::now();
    let publishers = u64::from(args.publishers);
    let mut senders = Vec::new();
    for p in 0..publishers {
        // Publisher `p` sends an even share; the first ones take the remainder.
        let share = expected / publishers + u64::from(p < expected % publishers);
        let (broker, topic, size, batch) = (broker.clone(), topic.clone(), args.size, args.batch as u64);
        senders.push(tokio::spawn(async move { publish_share(broker, topic, share, size, batch).await }));
    }
    let mut published = 0u64;
    for sender in senders {
        published += sender.await.map_err(|e| CliError::Usage(format!("a publisher stopped: {e}")))??;
    }
    let publishing = started.elapsed();
    let mut report = Report {
        published,
        delivered: 0,
        lagged: 0,
        publishing,
        elapsed: Duration::ZERO,
        latency: new_histogram()?,
    };
    for receiver in receivers {
        let waited = tokio::time::timeout(Duration::from_secs(60), receiver).await;
        let Ok(Ok((got, lagged, latency))) = waited else {
            return Err(CliError::Broker(crate::broker::BrokerError::Timeout(Duration::from_secs(60))));
        };
        report.delivered += got;
        report.lagged += lagged;
        let _ = report.latency.add(latency);
    }
    report.elapsed = started.elapsed();
    if durable {
        let _ = broker.delete_topic(&topic).await;
    }
    Ok(report)
}

/// Publishes `count` stamped payloads of `size` bytes to `topic`, `batch` at a time.
async fn publish_share(
    broker: SharedBroker,
    topic: Name,
    count: u64,
    size: usize,
    batch: u64,
) -> Result<u64, CliError> {
    let body = vec![b'x'; size - 8];
    let mut published = 0u64;
    while published < count {
        let n = (count - published).min(batch);
        let requests: Vec<PublishRequest> = (0..n)
            .map(|_| {
                let mut payload = BytesMut::with_capacity(size);
                payload.put_u64(now_micros());
                payload.extend_from_slice(&body);
                PublishRequest::new(topic.clone(), payload.freeze())
            })
            .collect();
        broker.publish_batch(requests).await?;
        published += n;
        // Let receivers run between batches so that a single-threaded broker is not starved.
        tokio::task::yield_now().await;
    }
    Ok(published)
}

/// A histogram of 1 µs .. 60 s at 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| CliError::Usage(format!("cannot create the latency histogram: {e}")))
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn stamp(payload: &Bytes) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

fn print_report(broker: &SharedBroker, args: &BenchArgs, r: &Report) -> Result<(), CliError> {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let pub_rate = r.published as f64 / r.publishing.as_secs_f64().max(1e-9);
    let del_rate = r.delivered as f64 / secs;
    let p = |q: f64| r.latency.value_at_quantile(q);
    let mut out = Stdout::new();
    if args.json {
        let value = json!({
            "broker": broker.url(), "messages": r.published, "size": args.size,
            "subscribers": args.subscribers, "publishers": args.publishers, "batch": args.batch,
            "elapsed_s": secs, "published_per_s": pub_rate, "delivered": r.delivered,
            "delivered_per_s": del_rate, "lagged": r.lagged,
            "latency_us": { "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": r.latency.max() },
        });
        return out.line(&value.to_string());
    }
    if r.lagged > 0 {
        note(&format!("subscribers fell behind and missed {} messages", r.lagged));
    }
    out.line(&format!(
        "broker {}  messages {}  size {} B  publishers {}  subscribers {}  batch {}",
        broker.url(),
        r.published,
        args.size,
        args.publishers,
        args.subscribers,
        args.batch
    ))?;
    out.line(&format!(
        "published {:>12.0} msg/s   delivered {:>12.0} msg/s   ({} deliveries in {:.3} s)",
        pub_rate, del_rate, r.delivered, secs
    ))?;
    if args.subscribers == 0 {
        return out.line("latency     not measured: no subscribers");
    }
    out.line(&format!(
        "latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        r.latency.max()
    ))
}
