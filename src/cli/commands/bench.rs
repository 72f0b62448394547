//! `pubsub bench`: throughput, loss and latency against any broker URL, through the same `Broker`
//! interface every command uses, so one harness compares the engine, a `pubsub serve`, NATS, Redis and
//! MQTT.
//!
//! Scenarios: `pub` (publishers only), `1:1`, `fanout` (every subscriber gets every message), `fanin`
//! (several publishers, one subscriber) and `queue` (competing consumers of one subscription, acking).
//! A run is closed loop (publish as fast as the broker takes it: throughput) or, with `--rate`, open loop
//! (messages are due at fixed times and stamped with the time they were due, so a stalled publisher
//! shows up as latency instead of hiding it). Latency is from that stamp, carried in the first 8 bytes of
//! each payload, to arrival, into an HDR histogram. Loss is what should have arrived and did not:
//! published × subscribers − delivered (published − delivered for `queue`), counted, never hidden.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    BrokerError, Capability, DeliveryStream, Settle, SharedBroker, StreamItem, SubscribeRequest,
};
use crate::cli::CliError;
use crate::cli::output::{Stdout, note, table};
use crate::cli::parse::{parse_duration, parse_rate};
use crate::model::{AckMode, Name, Pattern, PublishRequest, StartPosition, SubscriptionConfig};

/// A benchmark shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Publishers only (`--pubs`).
    Pub,
    /// One publisher, one subscriber.
    #[value(name = "1:1")]
    OneToOne,
    /// One publisher, `--subs` subscribers (default 10) that each get every message.
    Fanout,
    /// `--pubs` publishers (default 10), one subscriber.
    Fanin,
    /// One publisher, `--subs` consumers (default 4) sharing one subscription and acking each message.
    Queue,
    /// Every scenario above, one after another.
    All,
}

/// Options of `pubsub bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenario to run; without it, `--pubs` publishers and `--subs` subscribers (default 1 and 1).
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Messages to publish per scenario (shared between publishers).
    #[arg(
        long = "msgs",
        short = 'n',
        visible_alias = "messages",
        default_value_t = 200_000,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub msgs: u64,
    /// Publish for this long instead of a count (e.g. 10s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "msgs")]
    pub duration: Option<Duration>,
    /// Payload size in bytes (at least 8: the send time is stamped into the first 8).
    #[arg(long, default_value_t = 16, value_name = "BYTES")]
    pub size: usize,
    /// Publishers.
    #[arg(long = "pubs", visible_alias = "publishers", value_name = "N")]
    pub pubs: Option<u32>,
    /// Subscribers (0 measures publishing alone).
    #[arg(long = "subs", visible_alias = "subscribers", value_name = "N")]
    pub subs: Option<u32>,
    /// Open loop: publish at this total rate (e.g. 10000/s) and measure latency.
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub rate: Option<f64>,
    /// Subscribers ack every message (explicit acks; `queue` always acks).
    #[arg(long)]
    pub ack: bool,
    /// Messages per publish call.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub batch: usize,
    /// Publish calls each publisher keeps in flight (1 waits for every answer before the next call).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub window: u32,
    /// Print one JSON object per scenario.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print a CSV header and one row per scenario.
    #[arg(long)]
    pub csv: bool,
}

/// One scenario as run.
#[derive(Debug, Clone)]
struct Plan {
    name: &'static str,
    pubs: u32,
    subs: u32,
    /// Consumers share one subscription (each message once in total).
    shared: bool,
    ack: bool,
}

/// What one scenario measured.
#[derive(Debug)]
struct Report {
    plan: Plan,
    published: u64,
    delivered: u64,
    /// Messages the broker or client said it dropped for a slow subscriber (part of `lost`).
    dropped: u64,
    /// Until the last publish was answered.
    publishing: Duration,
    /// Until the last delivery arrived (or publishing ended, without subscribers).
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Report {
    fn expected(&self) -> u64 {
        if self.plan.subs == 0 {
            0
        } else if self.plan.shared {
            self.published
        } else {
            self.published * u64::from(self.plan.subs)
        }
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.delivered)
    }
}

/// Runs `pubsub bench`.
pub async fn run(ctx: &crate::cli::Context, args: BenchArgs) -> Result<(), CliError> {
    if args.size < 8 {
        return Err(CliError::Usage(format!(
            "--size {} is too small: it must be at least 8 bytes",
            args.size
        )));
    }
    if args.batch == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    if args.pubs == Some(0) {
        return Err(CliError::Usage("--pubs must be at least 1: a run needs a publisher".into()));
    }
    if args.rate.is_some_and(|r| r <= 0.0) {
        return Err(CliError::Usage("--rate must be above zero".into()));
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(CliError::Usage("--duration must be above zero".into()));
    }
    check_shape(&args)?;
    let plans = plans(&args);
    let broker = ctx.connect().await?;
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_interrupts(stop.clone()));
    let outcome = run_plans(&broker, plans, &args, &stop).await;
    watcher.abort();
    outcome?;
    if stop.is_cancelled() {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

/// The first Ctrl-C stops publishing: the scenario under way reports what it measured and removes its
/// topic, and no further scenario starts. A second one quits at once.
async fn watch_interrupts(stop: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    note("interrupted: reporting what was measured and removing the run's topic (Ctrl-C again quits now)");
    stop.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

async fn run_plans(
    broker: &SharedBroker,
    plans: Vec<Plan>,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<(), CliError> {
    let mut out = Stdout::new();
    if args.csv {
        out.line(CSV_HEADER)?;
    }
    let mut rows = Vec::new();
    for plan in plans {
        if stop.is_cancelled() {
            break;
        }
        let report = measure(broker.clone(), &plan, args, stop).await?;
        if report.dropped > 0 {
            note(&format!(
                "{}: the broker or client dropped {} message(s) for slow subscribers (counted as lost)",
                plan.name, report.dropped
            ));
        }
        if args.json {
            out.line(&json_row(broker, args, &report).to_string())?;
        } else if args.csv {
            out.line(&csv_row(broker, args, &report))?;
        } else {
            rows.push(text_row(&report, args));
        }
    }
    if !rows.is_empty() {
        let loop_kind = match args.rate {
            Some(r) => format!("open loop at {r:.0} msgs/s"),
            None => "closed loop".into(),
        };
        out.line(&format!(
            "broker {}  size {} B  batch {}  {loop_kind}",
            broker.url(),
            args.size,
            args.batch
        ))?;
        let mut all = vec![TEXT_HEADER.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        all.extend(rows);
        out.write(table(&all).as_bytes())?;
    }
    out.flush()
}

/// Refuses `--pubs`/`--subs` a scenario would ignore or could not honour.
fn check_shape(args: &BenchArgs) -> Result<(), CliError> {
    let refuse = |what: &str| Err(CliError::Usage(what.to_string()));
    let (pubs, subs) = (args.pubs.filter(|&n| n != 1), args.subs);
    match args.scenario {
        Some(Scenario::OneToOne) if pubs.is_some() || subs.is_some_and(|n| n != 1) => refuse(
            "--scenario 1:1 has one publisher and one subscriber; for more use fanout (--subs), fanin (--pubs) or no --scenario",
        ),
        Some(Scenario::Pub) if subs.is_some_and(|n| n != 0) => {
            refuse("--scenario pub has no subscribers; drop --subs, or use fanout")
        }
        Some(Scenario::Fanout | Scenario::Queue) if pubs.is_some() => {
            refuse("fanout and queue have one publisher; drop --pubs, or run without --scenario")
        }
        Some(Scenario::Fanout | Scenario::Queue) if subs == Some(0) => {
            refuse("fanout and queue need at least one subscriber; --scenario pub measures publishing alone")
        }
        Some(Scenario::Fanin) if subs.is_some_and(|n| n != 1) => {
            refuse("--scenario fanin has one subscriber; drop --subs, or run without --scenario")
        }
        _ => Ok(()),
    }
}

fn plans(args: &BenchArgs) -> Vec<Plan> {
    let plan = |name, pubs, subs, shared| Plan { name, pubs, subs, shared, ack: args.ack || shared };
    let one = |s: Scenario| match s {
        Scenario::Pub => plan("pub", args.pubs.unwrap_or(1), 0, false),
        Scenario::OneToOne => plan("1:1", 1, 1, false),
        Scenario::Fanout => plan("fanout", 1, args.subs.filter(|&n| n > 0).unwrap_or(10), false),
        Scenario::Fanin => plan("fanin", args.pubs.unwrap_or(10), 1, false),
        Scenario::Queue => plan("queue", 1, args.subs.filter(|&n| n > 0).unwrap_or(4), true),
        Scenario::All => plan("custom", 1, 1, false),
    };
    match args.scenario {
        None => vec![plan("custom", args.pubs.unwrap_or(1), args.subs.unwrap_or(1), false)],
        Some(Scenario::All) => {
            [Scenario::Pub, Scenario::OneToOne, Scenario::Fanout, Scenario::Fanin, Scenario::Queue]
                .into_iter()
                .map(one)
                .collect()
        }
        Some(s) => vec![one(s)],
    }
}

/// Shared between publishers, receivers and the progress line.
#[derive(Default)]
struct Progress {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    publishing_done: AtomicBool,
}

/// Acks a receiver keeps in flight before it waits for one.
const ACKS_IN_FLIGHT: usize = 256;

/// How long receivers wait for stragglers after publishing ended, without any arriving.
const GRACE: Duration = Duration::from_secs(3);

/// Runs one scenario on a topic of its own, removed afterwards whatever happened (error or Ctrl-C).
async fn measure(
    broker: SharedBroker,
    plan: &Plan,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<Report, CliError> {
    let suffix = plan.name.replace(':', "to");
    let topic = Name::new(&format!("bench-{}-{suffix}", std::process::id()))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let durable = prepare_topic(&broker, &topic).await?;
    let outcome = measure_on(broker.clone(), &topic, durable, plan, args, stop).await;
    if durable {
        let _ = broker.delete_topic(&topic).await;
    }
    outcome
}

async fn measure_on(
    broker: SharedBroker,
    topic: &Name,
    durable: bool,
    plan: &Plan,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<Report, CliError> {
    let streams = open_streams(&broker, topic, plan, durable).await?;
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
    for p in 0..pubs {
        // Publisher `p` sends an even share; the first ones take the remainder.
        let share = args.msgs / pubs + u64::from(p < args.msgs % pubs);
        let job = PublishJob {
            broker: broker.clone(),
            topic: topic.clone(),
            count: if args.duration.is_some() { u64::MAX } else { share },
            until: args.duration.map(|d| started + d),
            size: args.size,
            batch: args.batch as u64,
            window: args.window as usize,
            rate: args.rate.map(|r| r / pubs as f64),
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

/// Creates the run's topic where the broker has topics, large enough to keep the whole run, so that a
/// subscriber that falls behind is measured as slow rather than losing messages to retention. Returns
/// whether the broker keeps durable subscriptions.
async fn prepare_topic(broker: &SharedBroker, topic: &Name) -> Result<bool, CliError> {
    let mut config = crate::model::TopicConfig::new(topic.clone());
    config.limits.max_msgs = None;
    config.limits.max_bytes = None;
    config.limits.max_age = Some(Duration::from_secs(3600));
    // Brokers without topic admin, or that keep no limits of their own (Redis streams), refuse; their
    // topics then keep what the run sends anyway.
    match broker.create_topic(config).await {
        Ok(_) | Err(BrokerError::Unsupported { .. } | BrokerError::Invalid(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(broker.capabilities().has(Capability::CompetingConsumers))
}

/// Subscribes: durable subscriptions where the broker has them (no loss by design), live listeners
/// otherwise (NATS core, Redis PUB/SUB, MQTT), where loss is possible and is counted.
async fn open_streams(
    broker: &SharedBroker,
    topic: &Name,
    plan: &Plan,
    mut durable: bool,
) -> Result<Vec<DeliveryStream>, CliError> {
    let pattern = Pattern::parse(topic.as_str()).map_err(|e| CliError::Usage(e.to_string()))?;
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
    Ok(streams)
}

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
                        // Acks are pipelined, as a consumer that processes while its acks travel would:
                        // a round trip per message would measure the network's latency, not the broker.
                        if acks.len() >= ACKS_IN_FLIGHT
                            && let Some(acked) = acks.next().await
                        {
                            acked?;
                        }
                        let broker = broker.clone();
                        acks.push(async move { broker.settle(&token, Settle::Ack).await });
                    }
                }
                Ok(StreamItem::Lagged { skipped }) => {
                    progress.dropped.fetch_add(skipped, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
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

/// One publisher's work.
struct PublishJob {
    broker: SharedBroker,
    topic: Name,
    count: u64,
    until: Option<Instant>,
    size: usize,
    batch: u64,
    /// Publish calls in flight at once.
    window: usize,
    /// Open loop: this publisher's rate in msgs/s.
    rate: Option<f64>,
    progress: Arc<Progress>,
    /// Ctrl-C: stop publishing, as if the count or duration were reached.
    stop: CancellationToken,
}

impl PublishJob {
    async fn run(self) -> Result<u64, CliError> {
        let body = vec![b'x'; self.size - 8];
        let started = Instant::now();
        let start_micros = now_micros();
        // Calls in flight, answered in order; a message counts as published once its call is answered.
        let mut in_flight = FuturesOrdered::new();
        let (mut sent, mut published) = (0u64, 0u64);
        while sent < self.count && self.until.is_none_or(|t| Instant::now() < t) && !self.stop.is_cancelled()
        {
            if in_flight.len() >= self.window {
                published += self.answered(in_flight.next().await)?;
            }
            let (n, due) = match self.rate {
                None => ((self.count - sent).min(self.batch), None),
                Some(rate) => {
                    // Everything due by now goes out (at most a batch); the next message's time is waited for.
                    let due_now = (started.elapsed().as_secs_f64() * rate) as u64;
                    if due_now <= sent {
                        let next = Duration::from_secs_f64((sent + 1) as f64 / rate);
                        let due = started + next;
                        let wait = due.saturating_duration_since(Instant::now());
                        if wait < PRECISE_BELOW && crate::broker::can_block_in_place() {
                            // The async timer ticks in whole milliseconds, which would stamp up to 1 ms of
                            // the harness's own lateness onto every message; short waits sleep the thread,
                            // with this worker's other tasks handed to another thread meanwhile.
                            tokio::task::block_in_place(|| std::thread::sleep(wait));
                            continue;
                        }
                        // Longer waits sleep on the timer to just short of the due time, and the rest
                        // as above.
                        let wake = due.checked_sub(PRECISE_BELOW / 2).unwrap_or(due);
                        tokio::select! {
                            () = tokio::time::sleep_until(wake.into()) => {}
                            () = self.stop.cancelled() => {}
                            Some(answer) = in_flight.next() => published += self.answered(Some(answer))?,
                        }
                        continue;
                    }
                    ((due_now - sent).min(self.batch).min(self.count - sent), Some(rate))
                }
            };
            let requests: Vec<PublishRequest> = (0..n)
                .map(|i| {
                    // Open loop stamps the time a message was due, closed loop the time it is sent.
                    let stamp = match due {
                        Some(rate) => start_micros + (((sent + i + 1) as f64 / rate) * 1e6) as u64,
                        None => now_micros(),
                    };
                    let mut payload = BytesMut::with_capacity(self.size);
                    payload.put_u64(stamp);
                    payload.extend_from_slice(&body);
                    PublishRequest::new(self.topic.clone(), payload.freeze())
                })
                .collect();
            let broker = self.broker.clone();
            in_flight.push_back(async move { broker.publish_batch(requests).await.map(|_| n) });
            sent += n;
            // Polled once now, a call starts at once (a remote broker's frame goes out); answers that
            // are already in are counted.
            while let Some(Some(answer)) = in_flight.next().now_or_never() {
                published += self.answered(Some(answer))?;
            }
            // Let receivers run between batches so that a single-threaded broker is not starved.
            tokio::task::yield_now().await;
        }
        while let Some(answer) = in_flight.next().await {
            published += self.answered(Some(answer))?;
        }
        Ok(published)
    }

    /// Counts an answered publish call.
    fn answered(&self, answer: Option<Result<u64, BrokerError>>) -> Result<u64, CliError> {
        let n = answer.unwrap_or(Ok(0))?;
        self.progress.published.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

/// Open-loop waits shorter than this sleep the thread rather than the async timer.
const PRECISE_BELOW: Duration = Duration::from_millis(2);

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

const TEXT_HEADER: [&str; 14] = [
    "SCENARIO",
    "PUBS",
    "SUBS",
    "PUBLISHED",
    "DELIVERED",
    "LOST",
    "PUB/S",
    "DEL/S",
    "MB/S",
    "P50µs",
    "P90µs",
    "P99µs",
    "P99.9µs",
    "MAXµs",
];

const CSV_HEADER: &str = "scenario,broker,pubs,subs,size,rate,published,delivered,lost,dropped,published_per_s,delivered_per_s,mb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,elapsed_s,ack";

/// The figures every output form prints.
struct Figures {
    published_per_s: f64,
    delivered_per_s: f64,
    mb_per_s: f64,
    percentiles: Option<[u64; 5]>,
}

fn figures(r: &Report, size: usize) -> Figures {
    let published_per_s = r.published as f64 / r.publishing.as_secs_f64().max(1e-9);
    let delivered_per_s = r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9);
    // Bytes moved: what was delivered, or what was published when nothing subscribes.
    let moved = if r.plan.subs == 0 { published_per_s } else { delivered_per_s };
    let p = |q: f64| r.latency.value_at_quantile(q);
    let percentiles = (!r.latency.is_empty()).then(|| [p(0.5), p(0.9), p(0.99), p(0.999), r.latency.max()]);
    Figures { published_per_s, delivered_per_s, mb_per_s: moved * size as f64 / 1e6, percentiles }
}

fn json_row(broker: &SharedBroker, args: &BenchArgs, r: &Report) -> serde_json::Value {
    let f = figures(r, args.size);
    let pct = |i: usize| f.percentiles.map(|p| p[i]);
    json!({
        "scenario": r.plan.name, "broker": broker.url(), "pubs": r.plan.pubs, "subs": r.plan.subs,
        "size": args.size, "rate": args.rate, "ack": r.plan.ack,
        "published": r.published, "delivered": r.delivered, "lost": r.lost(), "dropped": r.dropped,
        "published_per_s": f.published_per_s, "delivered_per_s": f.delivered_per_s, "mb_per_s": f.mb_per_s,
        "p50_us": pct(0), "p90_us": pct(1), "p99_us": pct(2), "p999_us": pct(3), "max_us": pct(4),
        "elapsed_s": r.elapsed.as_secs_f64(),
    })
}

fn csv_row(broker: &SharedBroker, args: &BenchArgs, r: &Report) -> String {
    let f = figures(r, args.size);
    let pct = |i: usize| f.percentiles.map_or(String::new(), |p| p[i].to_string());
    format!(
        "{},{},{},{},{},{},{},{},{},{},{:.0},{:.0},{:.3},{},{},{},{},{},{:.6},{}",
        r.plan.name,
        broker.url().replace(',', "%2C"),
        r.plan.pubs,
        r.plan.subs,
        args.size,
        args.rate.map_or(String::new(), |r| format!("{r:.0}")),
        r.published,
        r.delivered,
        r.lost(),
        r.dropped,
        f.published_per_s,
        f.delivered_per_s,
        f.mb_per_s,
        pct(0),
        pct(1),
        pct(2),
        pct(3),
        pct(4),
        r.elapsed.as_secs_f64(),
        r.plan.ack
    )
}

fn text_row(r: &Report, args: &BenchArgs) -> Vec<String> {
    let f = figures(r, args.size);
    let pct = |i: usize| f.percentiles.map_or("-".to_string(), |p| p[i].to_string());
    let delivered = if r.plan.subs == 0 { "-".to_string() } else { r.delivered.to_string() };
    vec![
        r.plan.name.to_string(),
        r.plan.pubs.to_string(),
        r.plan.subs.to_string(),
        r.published.to_string(),
        delivered,
        r.lost().to_string(),
        format!("{:.0}", f.published_per_s),
        if r.plan.subs == 0 { "-".into() } else { format!("{:.0}", f.delivered_per_s) },
        format!("{:.1}", f.mb_per_s),
        pct(0),
        pct(1),
        pct(2),
        pct(3),
        pct(4),
    ]
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
