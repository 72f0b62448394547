//! `pubsub sub`: receive live (a tap), from history (a reader), or as a competing consumer of a durable
//! subscription; print, or run a command per message and ack by its exit status. The receive loop here
//! also serves `tail -f` and `record`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::{
    BrokerDelivery, BrokerError, Capability, ConnectionEvent, DeliveryStream, Settle, SharedBroker,
    StreamItem, SubscribeRequest,
};
use crate::cli::output::{Stdout, note};
use crate::cli::parse::{Delimiter, parse_delimiter, parse_duration};
use crate::cli::render::{Format, Renderer};
use crate::cli::{CliError, Context};
use crate::model::Position;
use crate::model::{AckMode, Clock, Name, Pattern, SystemClock};

/// How `sub` settles what it receives through a durable subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AckArg {
    /// Ack once the message is written (or `--exec` exits 0; nack otherwise).
    #[default]
    Auto,
    /// Leave messages in flight; settle them with `pubsub ack` / `pubsub nack` (leases are printed).
    Manual,
    /// The subscription does not ack at all (at-most-once).
    None,
}

/// Output options shared by the commands that print messages.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// text, json (one NDJSON envelope per message), raw (payload only), or a template like '{{subject}} {{payload}}'.
    #[arg(long, default_value = "text", value_parser = Format::parse, value_name = "FORMAT")]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, short = 'J')]
    pub json: bool,
    /// Written after each message instead of a newline (escapes \n \t \0 \xHH), e.g. -D '\0'.
    #[arg(long, short = 'D', value_parser = parse_delimiter, value_name = "DELIM", conflicts_with = "no_newline")]
    pub delimiter: Option<Delimiter>,
    /// Nothing after each message (byte-exact `--format raw` of one message, as mosquitto_sub -N).
    #[arg(long, short = 'N')]
    pub no_newline: bool,
}

impl OutputArgs {
    /// The format asked for.
    pub fn format(&self) -> Format {
        if self.json { Format::Json } else { self.format.clone() }
    }

    /// The renderer these options describe; `terminal` when stdout is one (control characters are then
    /// shown escaped in the text formats).
    pub fn renderer(&self, color: bool, terminal: bool) -> Renderer {
        let delimiter =
            if self.no_newline { Vec::new() } else { self.delimiter.clone().map_or(vec![b'\n'], |d| d.0) };
        Renderer::new(self.format(), color).to_terminal(terminal).with_delimiter(delimiter)
    }
}

/// When a receive loop ends.
#[derive(Debug, Clone, Args, Default)]
pub struct StopArgs {
    /// Stop after N messages (-c as kcat).
    #[arg(long, short = 'n', short_alias = 'c', value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long; exit 4 if nothing arrived (e.g. 5s, 1m; -W as mosquitto_sub).
    #[arg(long, short = 'W', value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Stop once no message has arrived for this long.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub until_idle: Option<Duration>,
    /// Stop after the last message that existed when reading started (history reads; -e as kcat).
    #[arg(long, short = 'e')]
    pub exit_at_end: bool,
}

/// Options of `pubsub sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Subjects or patterns (`orders.*`, `orders.>`, `#`, `glob:user:*`); one topic with --from or --subscription.
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Read history from: start, end, a seq, PARTITION:SEQ (that partition only), an RFC 3339 time, or
    /// -5m (-o as kcat's offset).
    #[arg(long, short = 'F', short_alias = 'o', value_name = "POSITION", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Join this durable subscription as a competing consumer (created when missing).
    #[arg(long, short = 's', value_name = "NAME")]
    pub subscription: Option<String>,
    /// How messages of a durable subscription are settled.
    #[arg(long, value_enum, default_value_t = AckArg::Auto)]
    pub ack: AckArg,
    /// Consumer id, the name others see in the topology (--name too). Default with -s on a ws:// server
    /// (a shared demo): user@host, with -2, -3… when that is taken; elsewhere made up.
    #[arg(long, visible_alias = "name", value_name = "NAME")]
    pub consumer: Option<String>,
    /// Most unacked messages held at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch: Option<u32>,
    /// Run a command per message (`sh -c`): payload on stdin, metadata in PUBSUB_* variables; exit 0 acks,
    /// anything else nacks.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// MQTT: skip the retained messages the broker sends on subscribe (the URL's `?retained=false`).
    #[arg(long)]
    pub no_retained: bool,
    /// Work on each message this long before it is acked (simulated processing; e.g. 200ms): one
    /// message held at a time unless --prefetch says otherwise, so competing consumers share fairly.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "exec")]
    pub process_time: Option<Duration>,
    /// Commands run at once with --exec.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub parallel: usize,
    /// When to stop.
    #[command(flatten)]
    pub stop: StopArgs,
    /// How messages are printed.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `pubsub sub`.
pub async fn run(ctx: &Context, args: SubArgs) -> Result<(), CliError> {
    let patterns = parse_patterns(&args.patterns)?;
    let now = SystemClock.now();
    let from = args.from.as_deref().map(|f| Position::parse(f, now)).transpose().map_err(CliError::Usage)?;
    let subscription = args
        .subscription
        .as_deref()
        .map(Name::new)
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let ack = match (subscription.is_some(), args.ack) {
        (true, AckArg::Auto | AckArg::Manual) => AckMode::Explicit,
        _ => AckMode::None,
    };
    let mut request = SubscribeRequest {
        patterns: patterns.clone(),
        subscription,
        from: from.map(Position::start),
        ack,
        consumer: args.consumer.clone(),
        // With --count, holding more than that many would only make the rest wait for a redelivery;
        // with --exec, holding more than --parallel commands can start would let their leases run out
        // while they wait.
        // With --process-time, one at a time: a message held while another is worked on is work this
        // consumer keeps from the others.
        prefetch: args.prefetch.or(args.process_time.map(|_| 1)).or_else(|| {
            let count = args.stop.count.map(|n| u32::try_from(n).unwrap_or(u32::MAX).clamp(1, 1000));
            let parallel =
                args.exec.as_ref().map(|_| u32::try_from(args.parallel).unwrap_or(u32::MAX).max(1));
            match (count, parallel) {
                (Some(c), Some(p)) => Some(c.min(p)),
                (c, p) => c.or(p),
            }
        }),
        // And never more than that many in all: a message leased after the Nth would only go back.
        limit: args.stop.count,
        partition: None,
        until_end: false,
    };
    let broker = if args.no_retained {
        let url = &ctx.broker;
        if !(url.starts_with("mqtt://") || url.starts_with("mqtts://")) {
            return Err(CliError::Usage(format!(
                "--no-retained is an MQTT setting; {url} is not an MQTT broker"
            )));
        }
        let joiner = if url.contains('?') { '&' } else { '?' };
        let ctx = Context { broker: format!("{url}{joiner}retained=false"), ..ctx.clone() };
        ctx.connect().await?
    } else {
        ctx.connect().await?
    };
    if let (Some(sub), Some(_)) = (&request.subscription, &from)
        && broker.subscription_info(sub).await.is_ok()
    {
        note(&format!(
            "subscription {sub} already exists and keeps its own position: --from applies only when sub creates it (`pubsub seek {sub} POSITION` moves it)"
        ));
    }
    let end = match reading(&broker, &mut request, from, args.stop.exit_at_end).await? {
        EndAt::NothingToRead => return Ok(()),
        EndAt::Heads(ends) => Some(ends),
        EndAt::Open => None,
    };
    let stream = subscribe_named(&broker, request, ctx, args.consumer.is_some()).await?;
    let sink = Sink::Stdout(Stdout::new());
    let settle = if args.ack == AckArg::Manual { SettleMode::Manual } else { SettleMode::Auto };
    let exec = args.exec.map(|command| Exec { command, parallel: args.parallel });
    let partitions = shows_partitions(&broker, &patterns_of(&args.patterns)).await;
    let renderer =
        args.output.renderer(ctx.color, std::io::stdout().is_terminal()).with_partitions(partitions);
    let work = Work { exec, process_time: args.process_time };
    receive(broker, stream, sink, renderer, settle, work, &args.stop, end).await
}

/// Subscribes; a consumer of a durable subscription on a `pubsub` server that was given no name joins
/// as `user@host` (what a workshop's topology shows), as `user@host-2` and so on when that is taken.
async fn subscribe_named(
    broker: &SharedBroker,
    mut request: SubscribeRequest,
    ctx: &Context,
    named: bool,
) -> Result<DeliveryStream, CliError> {
    let ours = ctx.broker.starts_with("ws://") || ctx.broker.starts_with("wss://");
    if named || request.subscription.is_none() || !ours {
        return Ok(broker.subscribe(request).await?);
    }
    let base = super::demo::user_at_host();
    for n in 1..=20 {
        request.consumer = Some(if n == 1 { base.clone() } else { format!("{base}-{n}") });
        match broker.subscribe(request.clone()).await {
            Err(BrokerError::Remote { code, .. })
                if code == crate::protocol::ErrorCode::ConsumerExists as u16 =>
            {
                continue;
            }
            other => return Ok(other?),
        }
    }
    // Twenty of the same name: let the server make one up.
    request.consumer = None;
    Ok(broker.subscribe(request).await?)
}

/// The topic names among command-line patterns (those that parse as names).
fn patterns_of(texts: &[String]) -> Vec<Name> {
    texts.iter().filter_map(|t| Name::new(t).ok()).collect()
}

/// Whether printed positions carry their partition (`#P:SEQ`): on a broker with partitions, except
/// that on the pubsub engines, whose topics mostly have one, only when a topic read has several.
pub async fn shows_partitions(broker: &SharedBroker, topics: &[Name]) -> bool {
    if !broker.capabilities().has(Capability::Partitions) {
        return false;
    }
    if !super::topics::keeps_totals(broker) {
        return true;
    }
    for topic in topics {
        if broker.topic_info(topic).await.is_ok_and(|t| t.partitions > 1) {
            return true;
        }
    }
    false
}

/// Parses command-line patterns with errors that quote them.
pub fn parse_patterns(texts: &[String]) -> Result<Vec<Pattern>, CliError> {
    texts.iter().map(|t| Pattern::parse(t).map_err(|e| CliError::Usage(e.to_string()))).collect()
}

/// Where `--exit-at-end` stops.
#[derive(Debug)]
pub enum EndAt {
    /// Nothing to read at all: the command ends at once.
    NothingToRead,
    /// At these heads.
    Heads(Ends),
    /// Where the stream ends (the backend stops at the ends itself), or never (no `--exit-at-end`).
    Open,
}

/// The head each partition had when reading started, for the partitions with something to read; done
/// when every one was reached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ends {
    /// Partition → head seq, of those not reached yet.
    left: BTreeMap<u32, u64>,
    /// Every partition's head, kept for an assignment that hands a partition back.
    all: BTreeMap<u32, u64>,
    /// The partitions this group member holds, once the broker said which (`None`: not a member).
    owned: Option<BTreeSet<u32>>,
}

impl Ends {
    fn new(heads: impl IntoIterator<Item = (u32, u64)>) -> Ends {
        let all: BTreeMap<u32, u64> = heads.into_iter().collect();
        Ends { left: all.clone(), all, owned: None }
    }

    /// Whether every partition was read to its head.
    pub fn done(&self) -> bool {
        self.left.is_empty()
    }

    fn reached(&mut self, m: &crate::model::Message) {
        if self.left.get(&m.partition).is_some_and(|head| m.seq >= *head) {
            self.left.remove(&m.partition);
            self.all.remove(&m.partition);
        }
    }

    /// A group member reads only what it was assigned: the other partitions are not waited for. An
    /// assignment adds to what the member holds (the local engine announces only what changed; Kafka's
    /// eager rebalance revokes everything before assigning the whole set, which comes to the same).
    fn assigned(&mut self, partitions: &[u32]) {
        let owned = self.owned.get_or_insert_with(BTreeSet::new);
        owned.extend(partitions.iter().copied());
        self.left = self.all.iter().filter(|(p, _)| owned.contains(p)).map(|(p, h)| (*p, *h)).collect();
    }

    fn revoked(&mut self, partitions: &[u32]) {
        if let Some(owned) = &mut self.owned {
            owned.retain(|p| !partitions.contains(p));
        }
        self.left.retain(|p, _| !partitions.contains(p));
    }
}

/// Fills in what `--from P:SEQ` and `--exit-at-end` ask of `request`, and says where the receive loop
/// stops.
pub async fn reading(
    broker: &SharedBroker,
    request: &mut SubscribeRequest,
    from: Option<Position>,
    exit_at_end: bool,
) -> Result<EndAt, CliError> {
    let partitioned = broker.capabilities().has(Capability::Partitions);
    // The pubsub engines read one partition from P:SEQ themselves, but leave `--exit-at-end` to the
    // receive loop (with the heads per partition below).
    let engine = super::topics::keeps_totals(broker);
    if let Some(p) = from.and_then(Position::partition) {
        if partitioned {
            request.partition = Some(p);
        } else if p != 0 {
            return Err(CliError::Usage(format!(
                "{} keeps one partition per topic: there is no partition {p} (a plain seq, or 0:SEQ, is the position)",
                broker.url()
            )));
        }
    }
    if !exit_at_end {
        return Ok(EndAt::Open);
    }
    if partitioned && !engine && request.subscription.is_none() {
        request.until_end = true;
        return Ok(EndAt::Open);
    }
    let ends = heads(broker, &request.patterns, from, request.subscription.as_ref()).await?;
    Ok(if ends.done() { EndAt::NothingToRead } else { EndAt::Heads(ends) })
}

/// The head of each partition of the one topic named that has something to read from `from` (or, for
/// an existing subscription without `from`, that has a backlog).
async fn heads(
    broker: &SharedBroker,
    patterns: &[Pattern],
    from: Option<Position>,
    subscription: Option<&Name>,
) -> Result<Ends, CliError> {
    let topic = match patterns {
        [p] => p.literal().and_then(|l| Name::new(l).ok()),
        _ => None,
    }
    .ok_or_else(|| CliError::Usage("--exit-at-end needs exactly one topic name".into()))?;
    let info = broker.topic_info(&topic).await?;
    // (partition, head, whether it holds anything)
    let parts: Vec<(u32, u64, bool)> =
        info.positions().iter().map(|p| (p.partition, p.head_seq, p.messages > 0)).collect();
    let heads = |keep: &dyn Fn(u32, u64) -> bool| {
        Ends::new(parts.iter().filter(|(p, h, any)| *any && keep(*p, *h)).map(|(p, h, _)| (*p, *h)))
    };
    Ok(match (subscription, from) {
        // An existing subscription may have work of its own from before.
        (Some(sub), None) => match broker.subscription_info(sub).await {
            Ok(s) if s.partitions.len() > 1 => {
                Ends::new(s.partitions.iter().filter(|p| p.lag > 0).map(|p| (p.partition, p.head_seq)))
            }
            Ok(s) => heads(&|_, _| s.backlog > 0),
            Err(_) => Ends::default(),
        },
        (_, None | Some(Position::End)) => Ends::default(),
        (_, Some(Position::Start)) => heads(&|_, _| true),
        (_, Some(Position::Seq(s))) => heads(&|_, h| s <= h),
        (_, Some(Position::At { partition, seq })) => heads(&|p, h| p == partition && seq <= h),
        (_, Some(Position::Time(t))) => {
            let any = !broker.browse(&topic, crate::model::BrowseFrom::Time(t), 1).await?.is_empty();
            heads(&|_, _| any)
        }
    })
}

/// Where messages go.
pub enum Sink {
    /// Standard output.
    Stdout(Stdout),
    /// A file.
    File(std::io::BufWriter<std::fs::File>),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        use std::io::Write;
        match self {
            Sink::Stdout(out) => out.write(bytes),
            Sink::File(f) => f.write_all(bytes).map_err(CliError::from),
        }
    }

    fn flush(&mut self) -> Result<(), CliError> {
        use std::io::Write;
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(f) => f.flush().map_err(CliError::from),
        }
    }

    /// A file sink, created (or truncated).
    pub fn file(path: &PathBuf) -> Result<Sink, CliError> {
        let file = std::fs::File::create(path)
            .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
        Ok(Sink::File(std::io::BufWriter::new(file)))
    }
}

/// Whether deliveries are acked by the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleMode {
    /// After output (or `--exec` success).
    Auto,
    /// Never: the user settles.
    Manual,
}

/// `--exec`.
#[derive(Debug, Clone)]
pub struct Exec {
    command: String,
    parallel: usize,
}

/// What is done with each message besides writing it: a command run per message (`--exec`), or
/// simulated work before the ack (`--process-time`).
#[derive(Debug, Clone, Default)]
pub struct Work {
    /// `--exec`.
    pub exec: Option<Exec>,
    /// `--process-time`.
    pub process_time: Option<Duration>,
}

/// The receive loop: writes (or executes) what arrives until a stop condition, Ctrl-C, or the stream ends.
#[expect(
    clippy::too_many_arguments,
    reason = "the loop's inputs are independent choices of the calling command"
)]
pub async fn receive(
    broker: SharedBroker,
    mut stream: DeliveryStream,
    mut sink: Sink,
    renderer: Renderer,
    settle: SettleMode,
    work: Work,
    stop: &StopArgs,
    mut end: Option<Ends>,
) -> Result<(), CliError> {
    let Work { exec, process_time } = work;
    if end.as_ref().is_some_and(Ends::done) {
        return Ok(());
    }
    let started = Instant::now();
    let deadline = stop.timeout.map(|t| started + t);
    let mut last_activity = started;
    let mut received = 0u64;
    let mut running: JoinSet<(BrokerDelivery, bool)> = JoinSet::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let interrupt = crate::cli::signal::interrupted();
    tokio::pin!(interrupt);
    let reader_gone = crate::cli::output::stdout_gone();
    tokio::pin!(reader_gone);
    // Drops, reconnects and broker advisories are told on stderr as they happen.
    let mut link = broker.connection_events();
    loop {
        if stop.count.is_some_and(|n| received >= n) {
            break;
        }
        let idle_at = stop.until_idle.map(|d| last_activity + d);
        let wake = match (deadline, idle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = tokio::select! {
            // Ctrl-C first: children die of the same signal, and their failure must not be recorded.
            biased;
            _ = &mut interrupt => {
                // Running commands are stopped (their children are killed with them) and what they
                // held is released when the stream drops, without counting as failures.
                running.shutdown().await;
                return Err(CliError::Interrupted);
            }
            // Nobody reads what this would print: end as a write to the closed pipe would.
            () = &mut reader_gone => {
                running.shutdown().await;
                return Err(CliError::BrokenPipe);
            }
            () = sleep_until(wake) => {
                if deadline.is_some_and(|d| Instant::now() >= d) && received == 0 {
                    return Err(CliError::Broker(BrokerError::Timeout(stop.timeout.unwrap_or_default())));
                }
                break;
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((delivery, ok)) = done {
                    settle_exec(&broker, &delivery, ok).await?;
                }
                continue;
            }
            Ok(event) = link.recv() => {
                link_note(&event);
                continue;
            }
            next = stream.next() => next,
        };
        let Some(first) = next else { break };
        let mut items = vec![first];
        // Simulated work takes one message at a time, each acked when its work is done.
        let batch = if process_time.is_some() { 1 } else { 256 };
        while items.len() < batch && stop.count.is_none_or(|n| received + (items.len() as u64) < n) {
            match stream.try_next() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        last_activity = Instant::now();
        let mut to_ack = Vec::new();
        let mut at_end = false;
        for item in items {
            let delivery = match item? {
                StreamItem::Delivery(d) => d,
                StreamItem::Lagged { skipped } => {
                    note(&format!(
                        "fell behind: {skipped} message(s) were dropped before reaching this listener"
                    ));
                    continue;
                }
                StreamItem::Assigned { partitions } => {
                    if let Some(end) = &mut end {
                        end.assigned(&partitions);
                        at_end = end.done();
                    }
                    if partitions.is_empty() {
                        note(
                            "joined the group holding no partition (it has more members than the topic has partitions)",
                        );
                    } else {
                        note(&format!("assigned partitions {}", partition_list(&partitions)));
                    }
                    continue;
                }
                StreamItem::Revoked { partitions } => {
                    if let Some(end) = &mut end {
                        end.revoked(&partitions);
                        at_end = end.done();
                    }
                    note(&format!(
                        "partitions {} were taken away (a rebalance): their unacked messages go to another member",
                        partition_list(&partitions)
                    ));
                    continue;
                }
            };
            received += 1;
            if let Some(end) = &mut end {
                end.reached(&delivery.message);
                at_end = end.done();
            }
            match &exec {
                Some(exec) => {
                    while running.len() >= exec.parallel {
                        if let Some(Ok((d, ok))) = running.join_next().await {
                            settle_exec(&broker, &d, ok).await?;
                        }
                    }
                    let command = exec.command.clone();
                    let keeper = lease_keeper(&broker, &delivery);
                    running.spawn(async move {
                        let ok = tokio::select! {
                            ok = run_command(&command, &delivery) => ok,
                            () = keeper => false,
                        };
                        (delivery, ok)
                    });
                }
                None => {
                    let lease = (settle == SettleMode::Manual)
                        .then(|| delivery.token.as_ref().map(|t| t.lease))
                        .flatten();
                    renderer.render(&delivery.message, delivery.attempt, lease, &mut buf);
                    if let Some(time) = process_time {
                        // Shown as it arrives, then worked on; the ack follows the work.
                        sink.write(&buf)?;
                        sink.flush()?;
                        buf.clear();
                        tokio::select! {
                            biased;
                            _ = &mut interrupt => return Err(CliError::Interrupted),
                            () = &mut reader_gone => return Err(CliError::BrokenPipe),
                            () = tokio::time::sleep(time) => {}
                        }
                    }
                    if settle == SettleMode::Auto
                        && let Some(token) = delivery.token
                    {
                        to_ack.push(token);
                    }
                }
            }
            if at_end || stop.count.is_some_and(|n| received >= n) {
                break;
            }
        }
        if !buf.is_empty() {
            sink.write(&buf)?;
            sink.flush()?;
            buf.clear();
        }
        // Acked only after the output is written: a crash in between redelivers rather than loses. The
        // acks of a batch go out together, so a broker that syncs acks to disk syncs them once.
        let acked = broker.ack_all(&to_ack).await;
        for outcome in acked {
            match outcome {
                Ok(()) => {}
                // A rebalance gave the partition to another member, which gets the message again: said,
                // and this member goes on with the partitions it still holds.
                Err(e @ crate::broker::BrokerError::Revoked { .. }) => note(&format!("not acked: {e}")),
                Err(e) => return Err(e.into()),
            }
        }
        if at_end {
            break;
        }
    }
    while let Some(done) = running.join_next().await {
        if let Ok((delivery, ok)) = done {
            settle_exec(&broker, &delivery, ok).await?;
        }
    }
    sink.flush()?;
    Ok(())
}

/// A connection event on stderr.
fn link_note(event: &ConnectionEvent) {
    match event {
        ConnectionEvent::Connected => {}
        ConnectionEvent::SlowConsumer { dropped } => {
            note(&format!("slow consumer: {dropped} message(s) were dropped before reaching this listener"))
        }
        ConnectionEvent::Disconnected { reason } => note(&format!("disconnected: {reason}")),
        ConnectionEvent::Reconnected => note("reconnected"),
        ConnectionEvent::Advisory { text } => note(text),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn settle_exec(broker: &SharedBroker, delivery: &BrokerDelivery, ok: bool) -> Result<(), CliError> {
    let seq = delivery.message.seq;
    if !ok {
        note(&format!("the command failed for {} #{seq}", delivery.message.subject()));
    }
    let Some(token) = &delivery.token else { return Ok(()) };
    // Without a nack (Kafka commits offsets, not per-message states) a failed message stays unacked,
    // which holds its partition's commit back: it comes again after a restart or a rebalance.
    if !ok && !broker.capabilities().has(crate::broker::Capability::Nack) {
        note(&format!(
            "#{seq} was left unacked ({} has no nack): it is delivered again after a restart or a rebalance",
            broker.kind()
        ));
        return Ok(());
    }
    let how = if ok { Settle::Ack } else { Settle::Nack(None) };
    match broker.settle(token, how).await {
        Ok(()) => Ok(()),
        // The lease ran out while the command ran (it took longer than the ack deadline): the message
        // was already handed out again, which is the broker doing its job, not a failure of this run.
        Err(e @ crate::broker::BrokerError::Revoked { .. }) => {
            note(&format!("#{seq} not settled: {e}"));
            Ok(())
        }
        Err(e) if e.to_string().contains("stale lease") => {
            note(&format!(
                "#{seq} took longer than its ack deadline and was redelivered; its result was not recorded"
            ));
            Ok(())
        }
        Err(e) => Err(CliError::from(e)),
    }
}

/// Keeps a delivery leased while its command runs: extends the lease by its length each third of it, until
/// the broker refuses (the subscription's max lease is reached, or the lease is gone). Never completes;
/// dropped when the command ends. Does nothing for deliveries without a lease or on brokers that cannot
/// extend one.
fn lease_keeper(broker: &SharedBroker, d: &BrokerDelivery) -> impl std::future::Future<Output = ()> + use<> {
    let now = SystemClock.now();
    let lease = d.deadline.map(|deadline| deadline.since(now)).filter(|l| !l.is_zero());
    let plan = match (&d.token, lease) {
        (Some(token), Some(lease)) if broker.capabilities().has(Capability::Extend) => {
            Some((broker.clone(), token.clone(), lease))
        }
        _ => None,
    };
    async move {
        if let Some((broker, token, lease)) = plan {
            let every = (lease / 3).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(every).await;
                if broker.settle(&token, Settle::Extend(lease)).await.is_err() {
                    // Past the max lease, or no longer this lease: it runs out as it stands.
                    break;
                }
            }
        }
        std::future::pending::<()>().await
    }
}

/// Runs `sh -c command` with the payload on stdin and the message's metadata in the environment.
async fn run_command(command: &str, d: &BrokerDelivery) -> bool {
    let m = &d.message;
    let mut cmd = tokio::process::Command::new("sh");
    // A command still running when sub stops (Ctrl-C) is killed rather than left behind.
    cmd.kill_on_drop(true);
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .env("PUBSUB_TOPIC", m.topic.as_str())
        .env("PUBSUB_SUBJECT", m.subject().as_str())
        .env("PUBSUB_SEQ", m.seq.to_string())
        .env("PUBSUB_PARTITION", m.partition.to_string())
        .env("PUBSUB_TIMESTAMP", crate::protocol::envelope::format_time(m.publish_time))
        .env("PUBSUB_ATTEMPT", d.attempt.unwrap_or(1).to_string());
    if let Some(key) = m.key() {
        cmd.env("PUBSUB_KEY", crate::protocol::envelope::encode_bytes(key).0);
    }
    if let Some(reply) = m.reply_to() {
        cmd.env("PUBSUB_REPLY", reply);
    }
    for (k, v) in m.headers() {
        let var: String =
            k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        cmd.env(format!("PUBSUB_HEADER_{var}"), v);
    }
    let Ok(mut child) = cmd.spawn() else {
        note(&format!("cannot run `{command}`"));
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is fine; a broken pipe here is not an error.
        let _ = stdin.write_all(&m.payload).await;
    }
    child.wait().await.is_ok_and(|s| s.success())
}
/// `0, 1, 2`.
fn partition_list(partitions: &[u32]) -> String {
    partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Message, Timestamp};

    fn at(partition: u32, seq: u64) -> Message {
        let t = Name::new("t").unwrap();
        Message::new(t.clone(), partition, seq, Timestamp::ZERO, t, None, bytes::Bytes::new())
    }

    #[test]
    fn ends_wait_for_every_partition_and_a_member_only_for_what_it_holds() {
        let mut ends = Ends::new([(0, 5), (2, 1)]);
        ends.reached(&at(0, 5));
        assert!(!ends.done(), "partition 2 is not read yet");
        ends.reached(&at(2, 1));
        assert!(ends.done());
        // A group member assigned partition 2 only waits for partition 2; a revoke lets it go.
        let mut member = Ends::new([(0, 5), (1, 3), (2, 1)]);
        member.assigned(&[2]);
        assert!(!member.done());
        member.revoked(&[2]);
        assert!(member.done());
        // Handed back, and read to its end.
        member.assigned(&[1, 2]);
        member.reached(&at(1, 3));
        member.reached(&at(2, 1));
        assert!(member.done());
        // The local engine announces only what a rebalance adds: a second assignment adds to the first.
        let mut member = Ends::new([(0, 5), (1, 3), (2, 1)]);
        member.assigned(&[0]);
        member.assigned(&[2]);
        member.reached(&at(0, 5));
        assert!(!member.done(), "partition 2 was added, not swapped in for 0");
        member.reached(&at(2, 1));
        assert!(member.done());
    }
}
