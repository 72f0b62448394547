//! One scenario on a topic of its own: the topic and the subscriptions, the receivers that count and
//! time what arrives, the publishers, the progress line, and the latency stamp in each payload.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::publish::PublishJob;
use super::report::Report;
use super::{BenchArgs, Plan};
use crate::broker::{BrokerError, Capability, DeliveryStream, SharedBroker, StreamItem, SubscribeRequest};
use crate::cli::CliError;
use crate::model::{AckMode, Name, Pattern, StartPosition, SubscriptionConfig};

/// Shared between publishers, receivers and the progress line.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) published: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) publishing_done: AtomicBool,
}

/// Ack calls (each for the run of messages that arrived together) a receiver keeps in flight before it
/// waits for one.
const ACK_RUNS_IN_FLIGHT: usize = 16;

/// The first failure of a run of acks.
fn first_error(outcomes: Vec<Result<(), BrokerError>>) -> Result<(), BrokerError> {
    outcomes.into_iter().collect()
}

/// How long receivers wait for stragglers after publishing ended, without any arriving.
const GRACE: Duration = Duration::from_secs(3);

/// The topics a scenario publishes to, and whether they are the run's own (removed afterwards).
pub(super) struct RunTopics {
    /// One topic, or with `--topics N` the N topics the publishers take in turn.
    pub(super) names: Vec<Name>,
    /// The pattern subscribers listen on: the topic's name, or one covering every topic of `--topics`.
    pattern: Pattern,
    /// `--topic NAME`: the topic stays, with what was published into it.
    kept: bool,
}

impl RunTopics {
    /// `bench-PID-SCENARIO`, or with `--topics N` its N children `bench-PID-SCENARIO.0` .. `.N-1`, or
    /// the topic `--topic` names.
    pub(super) fn for_plan(plan: &Plan, args: &BenchArgs) -> Result<RunTopics, CliError> {
        let usage = |e: crate::model::NameError| CliError::Usage(e.to_string());
        if let Some(name) = &args.topic {
            let name = Name::new(name).map_err(usage)?;
            let pattern = Pattern::parse(name.as_str()).map_err(usage)?;
            return Ok(RunTopics { names: vec![name], pattern, kept: true });
        }
        let base = format!("bench-{}-{}", std::process::id(), plan.name.replace(':', "to"));
        if args.topics == 1 {
            let name = Name::new(&base).map_err(usage)?;
            let pattern = Pattern::parse(name.as_str()).map_err(usage)?;
            return Ok(RunTopics { names: vec![name], pattern, kept: false });
        }
        let names =
            (0..args.topics).map(|i| Name::new(&format!("{base}.{i}"))).collect::<Result<Vec<_>, _>>();
        let pattern = Pattern::parse(&format!("{base}.*")).map_err(usage)?;
        Ok(RunTopics { names: names.map_err(usage)?, pattern, kept: false })
    }

    /// Several topics are read through a live pattern, never a durable subscription.
    fn spread(&self) -> bool {
        self.names.len() > 1
    }
}

/// Runs one scenario on topics of its own, removed afterwards whatever happened (error or Ctrl-C),
/// or on the `--topic` that stays.
pub(super) async fn measure(
    broker: SharedBroker,
    plan: &Plan,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<Report, CliError> {
    let topics = RunTopics::for_plan(plan, args)?;
    let mut durable = false;
    for topic in &topics.names {
        durable = prepare_topic(&broker, topic, topics.kept, args.partitions).await?;
    }
    let durable = durable && !topics.spread();
    let outcome = measure_on(broker.clone(), &topics, durable, plan, args, stop).await;
    if durable {
        // Subscriptions first: on brokers where they outlive their topic (RabbitMQ queues) they would
        // otherwise stay behind.
        let topic = &topics.names[0];
        let names = if plan.shared {
            vec![format!("{topic}-q")]
        } else {
            (0..plan.subs).map(|i| format!("{topic}-s{i}")).collect()
        };
        for name in names.iter().filter_map(|n| Name::new(n).ok()) {
            let _ = broker.delete_subscription(&name).await;
        }
    }
    if !topics.kept {
        for topic in &topics.names {
            let _ = broker.delete_topic(topic).await;
        }
    }
    outcome
}

async fn measure_on(
    broker: SharedBroker,
    topics: &RunTopics,
    durable: bool,
    plan: &Plan,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<Report, CliError> {
    let streams = open_streams(&broker, topics, plan, durable).await?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut receivers = Vec::new();
    for stream in streams {
        receivers.push(tokio::spawn(receive(
            broker.clone(),
            stream,
            plan.clone(),
            progress.clone(),
            started,
        )));
    }
    let ticker = show_progress(plan.name, progress.clone(), args);
    let mut senders = Vec::new();
    let pubs = u64::from(plan.pubs);
    let names: Arc<[Name]> = topics.names.clone().into();
    let keys: Arc<[bytes::Bytes]> = (0..args.keys).map(|k| bytes::Bytes::from(format!("key-{k}"))).collect();
    for p in 0..pubs {
        // Publisher `p` sends an even share; the first ones take the remainder.
        let share = args.msgs / pubs + u64::from(p < args.msgs % pubs);
        let job = PublishJob {
            broker: broker.clone(),
            topics: names.clone(),
            count: if args.duration.is_some() { u64::MAX } else { share },
            until: args.duration.map(|d| started + d),
            size: args.size,
            batch: args.batch as u64,
            window: args.window as usize,
            rate: args.rate.map(|r| r / pubs as f64),
            keys: keys.clone(),
            progress: progress.clone(),
            stop: stop.clone(),
        };
        senders.push(tokio::spawn(job.run()));
    }
    let mut published = 0u64;
    let mut failure = None;
    for sender in senders {
        match sender.await {
            Ok(Ok(n)) => published += n,
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(CliError::Failed(format!("a publisher stopped: {e}"))),
        }
    }
    let publishing = started.elapsed();
    progress.publishing_done.store(true, Ordering::Relaxed);
    let mut report = Report {
        plan: plan.clone(),
        published,
        delivered: 0,
        dropped: 0,
        publishing,
        elapsed: publishing,
        latency: new_histogram()?,
    };
    for receiver in receivers {
        let Ok(result) = receiver.await else { continue };
        let (got, last, latency) = result?;
        report.delivered += got;
        report.elapsed = report.elapsed.max(last);
        let _ = report.latency.add(latency);
    }
    report.dropped = progress.dropped.load(Ordering::Relaxed);
    if let Some(t) = ticker {
        t.abort();
        eprint_progress_clear();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Creates a topic of the run where the broker has topics, large enough to keep the whole run, so that
/// a subscriber that falls behind is measured as slow rather than losing messages to retention; a kept
/// topic (`--topic`) that exists already is used as it is, and one that does not keeps messages for
/// ever; `partitions` of them (`--partitions`, refused on brokers without). Returns whether the broker
/// keeps durable subscriptions.
async fn prepare_topic(
    broker: &SharedBroker,
    topic: &Name,
    kept: bool,
    partitions: u32,
) -> Result<bool, CliError> {
    let durable = broker.capabilities().has(Capability::CompetingConsumers);
    if partitions > 1 && !broker.capabilities().has(Capability::Partitions) {
        return Err(CliError::Usage(format!(
            "--partitions {partitions}: {} has no partitions; leave it out there",
            broker.url()
        )));
    }
    if kept && broker.topic_info(topic).await.is_ok() {
        return Ok(durable);
    }
    let mut config = crate::model::TopicConfig::new(topic.clone());
    config.partitions = partitions;
    config.limits.max_msgs = None;
    config.limits.max_bytes = None;
    config.limits.max_age = if kept { None } else { Some(Duration::from_secs(3600)) };
    // Brokers without topic admin, or that keep no limits of their own (Redis streams), refuse; their
    // topics then keep what the run sends anyway.
    match broker.create_topic(config).await {
        Ok(_) | Err(BrokerError::Unsupported { .. } | BrokerError::Invalid(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(durable)
}

/// Subscribes: durable subscriptions where the broker has them (no loss by design), live listeners
/// otherwise (NATS core, Redis PUB/SUB, MQTT), where loss is possible and is counted.
async fn open_streams(
    broker: &SharedBroker,
    topics: &RunTopics,
    plan: &Plan,
    mut durable: bool,
) -> Result<Vec<DeliveryStream>, CliError> {
    let (topic, pattern) = (&topics.names[0], &topics.pattern);
    let ack = if plan.ack { AckMode::Explicit } else { AckMode::None };
    let mut streams = Vec::new();
    for i in 0..plan.subs {
        let mut req = SubscribeRequest::live(vec![pattern.clone()]);
        let name = if plan.shared { format!("{topic}-q") } else { format!("{topic}-s{i}") };
        let name = Name::new(&name).map_err(|e| CliError::Usage(e.to_string()))?;
        if durable && (!plan.shared || i == 0) {
            let mut config = SubscriptionConfig::new(name.clone(), topic.clone());
            config.ack = ack;
            config.start = StartPosition::New;
            config.max_in_flight = 10_000;
            match broker.create_subscription(config).await {
                Ok(_) => {}
                Err(BrokerError::Unsupported { .. }) => durable = false,
                Err(e) => return Err(e.into()),
            }
        }
        if durable || plan.shared {
            // Without durable subscriptions a shared name is the broker's own kind of group (a NATS
            // queue group, an MQTT session), where it has one.
            req.subscription = Some(name);
            req.ack = ack;
            req.prefetch = Some(4096);
        }
        streams.push(broker.subscribe(req).await?);
    }
    // Where a group assigns partitions (Kafka), a member reads nothing until the broker gave it its
    // share: the run starts once every member was told, so the join is not measured as latency.
    // The pubsub engines have partitions but share them among a subscription's consumers: no assignment.
    let assigns = !crate::cli::commands::topics::keeps_totals(broker);
    if durable && assigns && broker.capabilities().has(Capability::Partitions) {
        for stream in &mut streams {
            let told = tokio::time::timeout(JOIN_WAIT, async {
                while let Some(item) = stream.next().await {
                    if matches!(item?, StreamItem::Assigned { .. }) {
                        return Ok(());
                    }
                }
                Err(BrokerError::Protocol("the stream ended before the group assigned partitions".into()))
            })
            .await;
            match told {
                Ok(result) => result?,
                Err(_) => {
                    return Err(CliError::Failed(format!(
                        "the broker assigned no partitions within {}s",
                        JOIN_WAIT.as_secs()
                    )));
                }
            }
        }
    }
    Ok(streams)
}

/// How long members may wait for the group to assign partitions.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// One receiver: counts, acks when asked, and records latency until everything expected arrived or
/// nothing more came for [`GRACE`] after publishing ended.
async fn receive(
    broker: SharedBroker,
    mut stream: DeliveryStream,
    plan: Plan,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<(u64, Duration, Histogram<u64>), CliError> {
    let mut latency = new_histogram()?;
    let (mut got, mut last) = (0u64, Duration::ZERO);
    let mut acks = FuturesUnordered::new();
    let mut quiet_since = Instant::now();
    loop {
        let done = progress.publishing_done.load(Ordering::Relaxed);
        if done {
            let published = progress.published.load(Ordering::Relaxed);
            let complete = if plan.shared {
                progress.delivered.load(Ordering::Relaxed) >= published
            } else {
                got >= published
            };
            if complete || quiet_since.elapsed() >= GRACE {
                break;
            }
        }
        let next = tokio::select! {
            next = tokio::time::timeout(Duration::from_millis(100), stream.next()) => next,
            Some(acked) = acks.next(), if !acks.is_empty() => {
                acked?;
                continue;
            }
        };
        let first = match next {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(item)) => item,
        };
        // What has arrived together is taken together, with one clock reading: the harness's own cost
        // per message stays small next to the broker's.
        quiet_since = Instant::now();
        last = started.elapsed();
        let arrived = now_micros();
        let mut items = vec![first];
        while items.len() < 1024 {
            match stream.try_next() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        let mut delivered = 0u64;
        let mut to_ack = Vec::new();
        for item in items {
            match item {
                Ok(StreamItem::Assigned { .. } | StreamItem::Revoked { .. }) => {}
                Ok(StreamItem::Delivery(d)) => {
                    delivered += 1;
                    if let Some(sent) = stamp(&d.message.payload) {
                        let _ = latency.record(arrived.saturating_sub(sent).max(1));
                    }
                    if plan.ack
                        && let Some(token) = d.token
                    {
                        to_ack.push(token);
                    }
                }
                Ok(StreamItem::Lagged { skipped }) => {
                    progress.dropped.fetch_add(skipped, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !to_ack.is_empty() {
            // The acks of what arrived together go together, and are pipelined, as a consumer that
            // processes while its acks travel would: a round trip per message would measure the
            // network's latency, not the broker.
            if acks.len() >= ACK_RUNS_IN_FLIGHT
                && let Some(acked) = acks.next().await
            {
                acked?;
            }
            let broker = broker.clone();
            acks.push(async move { first_error(broker.ack_all(&to_ack).await) });
        }
        got += delivered;
        progress.delivered.fetch_add(delivered, Ordering::Relaxed);
        // Started now (a remote broker's ack frame goes out on the first poll); finished ones counted.
        while let Some(Some(acked)) = acks.next().now_or_never() {
            acked?;
        }
    }
    while let Some(acked) = acks.next().await {
        acked?;
    }
    Ok((got, last, latency))
}

/// A progress line on stderr while a scenario runs, when stderr is a terminal and output is a table.
fn show_progress(
    name: &'static str,
    progress: Arc<Progress>,
    args: &BenchArgs,
) -> Option<tokio::task::JoinHandle<()>> {
    if args.json || args.csv || !std::io::stderr().is_terminal() {
        return None;
    }
    let total = args.msgs;
    let timed = args.duration;
    Some(tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let published = progress.published.load(Ordering::Relaxed);
            let delivered = progress.delivered.load(Ordering::Relaxed);
            let done = match timed {
                Some(d) => started.elapsed().as_secs_f64() / d.as_secs_f64().max(1e-9),
                None => published as f64 / total.max(1) as f64,
            }
            .min(1.0);
            let filled = (done * 30.0) as usize;
            let bar: String = "#".repeat(filled) + &"-".repeat(30 - filled);
            let line = format!("\r{name:<7} [{bar}] published {published}  delivered {delivered}   ");
            use std::io::Write;
            let mut err = std::io::stderr();
            let _ = err.write_all(line.as_bytes());
            let _ = err.flush();
        }
    }))
}

fn eprint_progress_clear() {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = err.write_all(format!("\r{}\r", " ".repeat(79)).as_bytes());
    let _ = err.flush();
}

/// A histogram of 1 µs .. 60 s at 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| CliError::Usage(format!("cannot create the latency histogram: {e}")))
}

pub(super) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn stamp(payload: &Bytes) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::super::publish::topic_of;
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn run_topics(args: &[&str]) -> RunTopics {
        let cli = Cli::parse_from(std::iter::once("bench").chain(args.iter().copied()));
        let plan = Plan { name: "1:1", pubs: 1, subs: 1, shared: false, ack: false };
        RunTopics::for_plan(&plan, &cli.bench).unwrap()
    }

    #[test]
    fn spread_topics_are_children_of_the_run_that_one_pattern_covers_and_publishers_take_in_turn() {
        let spread = run_topics(&["--topics", "3"]);
        let names: Vec<String> = spread.names.iter().map(ToString::to_string).collect();
        let base = format!("bench-{}-1to1", std::process::id());
        assert_eq!(names, [format!("{base}.0"), format!("{base}.1"), format!("{base}.2")]);
        assert!(spread.names.iter().all(|n| spread.pattern.matches(n.as_str())), "{:?}", spread.pattern);
        assert!(!spread.pattern.matches(&base), "the pattern covers the run's topics only");
        assert!(spread.spread() && !spread.kept);
        let order: Vec<&Name> = (0..7).map(|n| topic_of(&spread.names, n)).collect();
        let [a, b, c] = [&spread.names[0], &spread.names[1], &spread.names[2]];
        assert_eq!(order, [a, b, c, a, b, c, a]);

        let one = run_topics(&[]);
        assert_eq!(one.names.len(), 1);
        assert_eq!(one.names[0].as_str(), base);
        assert!(!one.spread() && !one.kept);
        assert_eq!(topic_of(&one.names, 41), &one.names[0]);
    }

    #[test]
    fn a_named_topic_is_used_as_given_and_kept() {
        let kept = run_topics(&["--topic", "backlog"]);
        assert_eq!(kept.names.len(), 1);
        assert_eq!(kept.names[0].as_str(), "backlog");
        assert!(kept.kept && !kept.spread());
        assert!(kept.pattern.matches("backlog"));
    }
}
