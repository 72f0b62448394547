//! Subscriptions: `subs` (list, create, delete), `sub-info`, `peek`, `seek`, `ack`, `nack`, `extend`, `term`.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::broker::{AckToken, Capability, Settle};
use crate::cli::output::{Stdout, note, table};
use crate::cli::parse::parse_duration;
use crate::cli::{CliError, Context};
use crate::human::{bytes, duration, or_dash};
use crate::model::Position;
use crate::model::{
    AckDurability, AckMode, Clock, Lifetime, Name, Pattern, PushConfig, SubscriptionConfig, SubscriptionInfo,
    SystemClock,
};

/// Options of `pubsub subs`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SubsArgs {
    /// Create or delete instead of listing.
    #[command(subcommand)]
    pub action: Option<SubsAction>,
    /// Only this topic's subscriptions.
    #[arg(long)]
    pub topic: Option<String>,
    /// One JSON object per subscription (NDJSON).
    #[arg(long)]
    pub json: bool,
}

/// `pubsub subs create|delete`.
#[derive(Debug, Subcommand)]
pub enum SubsAction {
    /// Create a durable subscription.
    Create(Box<CreateSubArgs>),
    /// Delete a subscription.
    Delete {
        /// Its name.
        name: String,
    },
}

/// Options of `pubsub subs create`.
#[derive(Debug, Args)]
pub struct CreateSubArgs {
    /// Its name.
    pub name: String,
    /// The topic it reads.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Only subjects matching this pattern (repeatable).
    #[arg(long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Only messages whose headers, key or subject pass this expression, e.g.
    /// 'attributes.region = "eu" AND NOT hasPrefix(key, "test")' (grammar in docs/FILTERS.md).
    #[arg(long = "where", value_name = "EXPR")]
    pub where_expr: Option<String>,
    /// Where it starts: start, end (default), a seq, an RFC 3339 time, -5m, or last-per-key (the newest
    /// message of every key, then everything new: a compacted topic read as a table).
    #[arg(long, value_name = "POSITION", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Ack mode: explicit (default), none, cumulative.
    #[arg(long, value_parser = ["explicit", "none", "cumulative"], default_value = "explicit")]
    pub ack: String,
    /// Lease length before redelivery, e.g. 30s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub ack_deadline: Option<Duration>,
    /// The longest a lease may be extended to in all (`pubsub extend`, `sub --exec` while a command
    /// runs), e.g. 1h (the default).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_lease: Option<Duration>,
    /// How long a nacked or expired message waits before it is delivered again: none, MIN..MAX
    /// (doubling; 1s..1m is the default), MIN..MAX*FACTOR, or a list such as 1s,5s,30s.
    #[arg(long, value_parser = crate::cli::parse::parse_backoff, value_name = "BACKOFF")]
    pub backoff: Option<crate::model::Backoff>,
    /// Deliveries before a message is dead-lettered or terminated (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub max_deliveries: Option<u32>,
    /// Topic that receives messages given up on.
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter: Option<String>,
    /// Most messages in flight at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Delete it after this long without consumers.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub ephemeral: Option<Duration>,
    /// On a durable engine: an ack returns after fsync (sync, survives power loss) or after the write
    /// (async, survives a process crash).
    #[arg(long, value_parser = ["sync", "async"], default_value = "sync")]
    pub ack_durability: String,
    /// per-key: a key's messages one at a time and in order (a nack holds back only its key); strict:
    /// one message in flight per partition; none (default): lowest seq first, redeliveries may overtake.
    #[arg(long, value_parser = ["none", "per-key", "strict"], default_value = "none")]
    pub ordering: String,
    /// How consumers share it: shared (default: any consumer gets any message), partition-exclusive
    /// (each partition owned by one consumer, rebalanced as consumers come and go) or single-active
    /// (one consumer gets everything, the others stand by and take over when it leaves).
    #[arg(long, value_parser = ["shared", "partition-exclusive", "single-active"], default_value = "shared")]
    pub assignment: String,
    /// HTTP push: POST each message to this http:// or https:// URL (2xx acks, anything else nacks;
    /// the pubsub engine only: mem://, local, ws://).
    #[arg(long, value_name = "URL")]
    pub push_endpoint: Option<String>,
    /// Unacked messages older than this (by publish time) expire in this subscription, e.g. 10m; the
    /// topic keeps them for the others.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub message_retention: Option<Duration>,
    /// Messages that expire unacked (--message-retention, or the topic's limits) go to the dead-letter
    /// topic with reason expired instead of being dropped (needs --dead-letter).
    #[arg(long, requires = "dead_letter")]
    pub dead_letter_on_expiry: bool,
    /// On an interest or work-queue topic, this subscription's acks do not delete messages (the topic's
    /// limits do), so it can seek back over what it acked.
    #[arg(long)]
    pub retain_acked: bool,
    /// A request header for every push, NAME=VALUE (repeatable; needs --push-endpoint).
    #[arg(long = "push-header", value_name = "NAME=VALUE", requires = "push_endpoint")]
    pub push_headers: Vec<String>,
}

/// The push configuration `--push-endpoint` and `--push-header` describe, checked.
fn push_config(endpoint: &str, headers: &[String]) -> Result<PushConfig, CliError> {
    let mut push = PushConfig::new(endpoint);
    for h in headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--push-header {h:?}: expected NAME=VALUE")))?;
        push.headers.insert(k.trim().to_string(), v.trim().to_string());
    }
    match push.problem() {
        None => Ok(push),
        Some(problem) => Err(CliError::Failed(problem)),
    }
}

fn name(s: &str) -> Result<Name, CliError> {
    Name::new(s).map_err(|e| CliError::Usage(e.to_string()))
}

/// Runs `pubsub subs`.
pub async fn run(ctx: &Context, args: SubsArgs) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    match args.action {
        Some(SubsAction::Create(a)) => {
            let mut c = SubscriptionConfig::new(name(&a.name)?, name(&a.topic)?);
            c.filter = a
                .filters
                .iter()
                .map(|f| Pattern::parse(f).map_err(|e| CliError::Usage(e.to_string())))
                .collect::<Result<_, _>>()?;
            if let Some(expr) = &a.where_expr {
                crate::model::FilterExpr::parse(expr)
                    .map_err(|e| CliError::Usage(format!("--where: {e}")))?;
                c.attribute_filter = Some(expr.clone());
            }
            if let Some(from) = &a.from {
                let position = match from.as_str() {
                    "last-per-key" | "last_per_key" => None,
                    _ => Some(Position::parse(from, SystemClock.now()).map_err(CliError::Usage)?),
                };
                // A subscription reads every partition of its topic: a start in one of them says
                // nothing of the others (partition 0 of a topic of one is just a seq).
                if position.and_then(Position::partition).is_some_and(|p| p > 0) {
                    return Err(CliError::Usage(format!(
                        "--from {from} names one partition, and a subscription reads them all: create it with --from start, end, a seq (in every partition) or a time, then `pubsub seek {} {from}` moves that partition alone",
                        a.name
                    )));
                }
                c.start = position.map_or(crate::model::StartPosition::LastPerKey, Position::start);
            }
            c.message_retention = a.message_retention;
            c.dead_letter_on_expiry = a.dead_letter_on_expiry;
            c.retain_acked = a.retain_acked;
            let retention_flag = [
                // JetStream has last-per-subject of its own.
                (
                    c.start == crate::model::StartPosition::LastPerKey && broker.kind() != "nats",
                    "--from last-per-key",
                ),
                (c.message_retention.is_some(), "--message-retention"),
                (c.dead_letter_on_expiry, "--dead-letter-on-expiry"),
                (c.retain_acked, "--retain-acked"),
            ]
            .into_iter()
            .find(|(set, _)| *set);
            if let Some((_, flag)) = retention_flag
                && !super::topics::is_pubsub_engine(&broker)
            {
                return Err(CliError::Usage(format!(
                    "{flag}: per-subscription retention is run by the pubsub engine (mem://, local, ws://); {} has no such setting here",
                    broker.kind()
                )));
            }
            c.ack = match a.ack.as_str() {
                "none" => AckMode::None,
                "cumulative" => AckMode::Cumulative,
                _ => AckMode::Explicit,
            };
            if let Some(d) = a.ack_deadline {
                c.ack_deadline = d;
            }
            if let Some(n) = a.max_deliveries {
                c.max_deliveries = n;
            }
            if let Some(d) = a.max_lease {
                c.max_lease = d;
            }
            if let Some(b) = a.backoff {
                c.backoff = b;
            }
            c.dead_letter = a.dead_letter.as_deref().map(name).transpose()?;
            if let Some(n) = a.max_in_flight {
                c.max_in_flight = n;
            }
            if let Some(ttl) = a.ephemeral {
                c.lifetime = Lifetime::Ephemeral { inactive_ttl: ttl };
            }
            if a.ack_durability == "async" {
                c.ack_durability = AckDurability::Async;
            }
            if let Some(endpoint) = &a.push_endpoint {
                if !super::topics::is_pubsub_engine(&broker) {
                    return Err(CliError::Usage(format!(
                        "--push-endpoint: HTTP push is run by the pubsub engine (mem://, local, ws://); {} has no push subscriptions",
                        broker.kind()
                    )));
                }
                c.push = Some(push_config(endpoint, &a.push_headers)?);
            }
            c.ordering = a.ordering.parse().map_err(CliError::Usage)?;
            c.assignment = a.assignment.parse().map_err(CliError::Usage)?;
            if c.assignment != crate::model::Assignment::Shared && !super::topics::is_pubsub_engine(&broker) {
                return Err(CliError::Usage(format!(
                    "--assignment {}: assignment modes are run by the pubsub engine (mem://, local, ws://); on {} use the broker's own (a Kafka consumer group already owns partitions one consumer each)",
                    a.assignment,
                    broker.kind()
                )));
            }
            let info = broker.create_subscription(c).await?;
            note(&format!("created subscription {} on {}", info.name, info.topic));
            Ok(())
        }
        Some(SubsAction::Delete { name: sub }) => {
            broker.delete_subscription(&name(&sub)?).await?;
            note(&format!("deleted subscription {sub}"));
            Ok(())
        }
        None => {
            let topic = args.topic.as_deref().map(name).transpose()?;
            let subs = broker.subscriptions(topic.as_ref()).await?;
            let mut out = Stdout::new();
            if args.json {
                for s in &subs {
                    out.line(&serde_json::to_string(s).unwrap_or_default())?;
                }
                return Ok(());
            }
            if subs.is_empty() {
                note(
                    "no subscriptions; `pubsub sub TOPIC --subscription NAME` or `pubsub subs create` makes one",
                );
                return Ok(());
            }
            let mut rows = vec![
                [
                    "SUBSCRIPTION",
                    "TOPIC",
                    "BACKLOG",
                    "PENDING",
                    "IN-FLIGHT",
                    "REDELIVERED",
                    "DEAD",
                    "ACK-FLOOR",
                    "OLDEST",
                    "CONSUMERS",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for s in &subs {
                rows.push(vec![
                    s.name.to_string(),
                    s.topic.to_string(),
                    s.backlog.to_string(),
                    s.pending.to_string(),
                    s.in_flight.to_string(),
                    s.redelivered.to_string(),
                    s.counters.dead_lettered.to_string(),
                    s.ack_floor.to_string(),
                    if s.backlog == 0 { "-".into() } else { or_dash(s.oldest_unacked_age, duration) },
                    if s.assignment == crate::model::Assignment::Shared {
                        s.consumers.len().to_string()
                    } else {
                        format!("{}, {}", s.consumers.len(), s.assignment.label())
                    },
                ]);
            }
            out.write(table(&rows).as_bytes())?;
            out.flush()
        }
    }
}

/// Options of `pubsub sub-info`.
#[derive(Debug, Args)]
pub struct SubInfoArgs {
    /// The subscription.
    pub name: String,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pubsub sub-info`.
pub async fn info(ctx: &Context, args: SubInfoArgs) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    let s = broker.subscription_info(&name(&args.name)?).await?;
    let mut out = Stdout::new();
    if args.json {
        return out.line(&serde_json::to_string(&s).unwrap_or_default());
    }
    out.write(describe(&s, super::topics::keeps_totals(&broker)).as_bytes())?;
    out.flush()
}

/// The `sub-info` table; rates and running totals only for brokers that keep them.
fn describe(s: &SubscriptionInfo, counted: bool) -> String {
    let c = &s.counters;
    let mut rows = vec![
        vec!["subscription".into(), format!("{} on {}", s.name, s.topic)],
        vec!["filter".into(), if s.filter.is_empty() { "all subjects".into() } else { s.filter.join(", ") }],
    ];
    if let Some(expr) = &s.attribute_filter {
        rows.push(vec!["where".into(), expr.clone()]);
    }
    rows.extend([
        vec![
            "ack".into(),
            format!(
                "{:?}, deadline {}, max deliveries {}{}",
                s.ack,
                duration(s.ack_deadline),
                if s.max_deliveries == 0 { "unlimited".into() } else { s.max_deliveries.to_string() },
                s.dead_letter.as_ref().map(|d| format!(", dead letters to {d}")).unwrap_or_default()
            )
            .to_lowercase(),
        ],
        vec![
            "positions".into(),
            if s.partitions.len() > 1 {
                // Seqs of different partitions do not add up to a position: the table below has each.
                format!("{} partitions (each below)", s.partitions.len())
            } else {
                format!(
                    "head {}, delivered {}, ack floor {}, first {}",
                    s.head_seq, s.delivered_seq, s.ack_floor, s.first_seq
                )
            },
        ],
        vec![
            "backlog".into(),
            format!(
                "{}{}: pending {}, in flight {}, delayed {}, redeliverable {}",
                s.backlog,
                s.backlog_bytes.map_or_else(String::new, |b| format!(" ({})", bytes(b))),
                s.pending,
                s.in_flight,
                s.delayed,
                s.redeliverable
            ),
        ],
        vec![
            "lag".into(),
            format!(
                "offset lag {}, oldest unacked {}",
                s.offset_lag,
                or_dash(s.oldest_unacked_age, duration)
            ),
        ],
    ]);
    if counted {
        let rates = format!(
            "publish {}/s, deliver {}/s, ack {}/s",
            or_dash(s.publish_rate, |r| format!("{r:.1}")),
            or_dash(s.deliver_rate, |r| format!("{r:.1}")),
            or_dash(s.ack_rate, |r| format!("{r:.1}"))
        );
        let totals = format!(
            "delivered {}, redelivered {}, acked {}, nacked {}, expired leases {}, dead-lettered {}, terminated {}, expired {}, filtered {}",
            c.delivered,
            c.redeliveries,
            c.acked,
            c.nacked,
            c.deadline_expired,
            c.dead_lettered,
            c.terminated,
            c.expired_unacked,
            c.filtered
        );
        rows.extend([vec!["rates".into(), rates], vec!["totals".into(), totals]]);
    }
    if s.assignment != crate::model::Assignment::Shared {
        rows.insert(3, vec!["assignment".into(), s.assignment.label().into()]);
    }
    if s.ordering != crate::model::OrderingMode::None {
        rows.insert(3, vec!["ordering".into(), s.ordering.label().into()]);
    }
    let mut retention = Vec::new();
    if let Some(d) = s.message_retention {
        retention.push(format!("unacked expire after {}", duration(d)));
    }
    if s.dead_letter_on_expiry {
        retention.push("expired ones dead-lettered".to_string());
    }
    if s.retain_acked {
        retention.push("acks keep messages (retain acked)".to_string());
    }
    if s.start == crate::model::StartPosition::LastPerKey {
        retention.push("started at the last message per key".to_string());
    }
    if !retention.is_empty() {
        rows.insert(3, vec!["retention".into(), retention.join(", ")]);
    }
    if let Some(eta) = s.eta {
        rows.push(vec!["drains in".into(), duration(eta)]);
    }
    if let Some(blocked) = s.blocked_by {
        rows.push(vec!["blocked by".into(), blocked.label().into()]);
    }
    if let Some(push) = &s.push {
        rows.push(vec!["push".into(), format!("POST {}", push.endpoint)]);
        rows.push(vec!["pushed".into(), crate::human::push_figures(push)]);
    }
    let mut text = table(&rows);
    if !s.consumers.is_empty() {
        let total: u64 = s.consumers.iter().map(|c| c.delivered).sum::<u64>().max(1);
        let mut crow = vec![
            ["CONSUMER", "MODE", "IN-FLIGHT", "PREFETCH", "DELIVERED", "SHARE", "ACKED", "IDLE"]
                .map(String::from)
                .to_vec(),
        ];
        for c in &s.consumers {
            crow.push(vec![
                c.id.to_string(),
                match (c.push, c.standby) {
                    (true, false) => "push".into(),
                    (false, false) => "pull".into(),
                    (true, true) => "push, standby".into(),
                    (false, true) => "pull, standby".into(),
                },
                c.in_flight.to_string(),
                c.prefetch.to_string(),
                c.delivered.to_string(),
                format!("{:.0}%", c.delivered as f64 * 100.0 / total as f64),
                c.acked.to_string(),
                duration(c.idle),
            ]);
        }
        text.push('\n');
        text.push_str(&table(&crow));
    }
    // Brokers that assign partitions (Kafka) say where the group stands in each and who reads it.
    if s.partitions.len() > 1 || s.partitions.iter().any(|p| p.owner.is_some()) {
        let mut prow = vec![["PARTITION", "ACK FLOOR", "HEAD", "LAG", "OWNER"].map(String::from).to_vec()];
        for p in &s.partitions {
            prow.push(vec![
                p.partition.to_string(),
                p.ack_floor.to_string(),
                p.head_seq.to_string(),
                p.lag.to_string(),
                p.owner.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text.push('\n');
        text.push_str(&table(&prow));
    }
    text
}

/// Options of `pubsub peek`.
#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The subscription.
    pub name: String,
    /// First seq to show (default: just above the ack floor).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Most messages to show.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pubsub peek`.
pub async fn peek(ctx: &Context, args: PeekArgs) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    let sub = name(&args.name)?;
    let report = broker.peek(&sub, args.from, args.limit).await?;
    let mut out = Stdout::new();
    if args.json {
        return out.line(&serde_json::to_string(&report).unwrap_or_default());
    }
    // On a topic of several partitions each position is PARTITION:SEQ, and the summary is per partition.
    let parts = match broker.subscription_info(&sub).await {
        Ok(info) if info.partitions.len() > 1 => info.partitions,
        _ => Vec::new(),
    };
    if parts.is_empty() {
        out.line(&format!(
            "{}: ack floor {}, delivered {}, head {}",
            report.subscription, report.ack_floor, report.delivered_seq, report.head_seq
        ))?;
    } else {
        let each: Vec<String> =
            parts.iter().map(|p| format!("{}:{} (head {})", p.partition, p.ack_floor, p.head_seq)).collect();
        out.line(&format!("{}: ack floors {}", report.subscription, each.join(", ")))?;
    }
    if let Some(push) = &report.push {
        out.line(&format!("push to {}: {}", push.endpoint, crate::human::push_figures(push)))?;
    }
    let now = SystemClock.now();
    let mut rows = vec![["SEQ", "STATE", "ATTEMPT", "CONSUMER", "DUE"].map(String::from).to_vec()];
    for m in &report.messages {
        let state = match (m.state, m.attempt) {
            (crate::model::DeliveryState::Available, 0) => "pending".to_string(),
            (s, _) => format!("{s:?}")
                .to_lowercase()
                .replace("inflight", "in-flight")
                .replace("deadlettered", "dead-lettered"),
        };
        let due = m
            .deadline
            .map(|d| format!("lease ends in {}", duration(d.since(now))))
            .or_else(|| m.not_before.map(|t| format!("retry in {}", duration(t.since(now)))))
            .unwrap_or_default();
        rows.push(vec![
            if parts.is_empty() { m.seq.to_string() } else { format!("{}:{}", m.partition, m.seq) },
            state,
            crate::human::attempts(m.state, m.attempt),
            m.consumer.as_deref().unwrap_or("").to_string(),
            due,
        ]);
    }
    out.write(table(&rows).as_bytes())?;
    out.flush()
}

/// Options of `pubsub seek`.
#[derive(Debug, Args)]
pub struct SeekArgs {
    /// The subscription.
    pub name: String,
    /// start, end, a seq (of every partition), PARTITION:SEQ (that partition only), an RFC 3339 time,
    /// or -5m.
    #[arg(allow_hyphen_values = true, required_unless_present = "snapshot")]
    pub target: Option<String>,
    /// Restore a snapshot's ack state instead (taken of this subscription or another one of its topic).
    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub snapshot: Option<String>,
}

/// Runs `pubsub seek`.
pub async fn seek(ctx: &Context, args: SeekArgs) -> Result<(), CliError> {
    if let Some(snapshot) = &args.snapshot {
        let broker = ctx.connect().await?;
        let next = broker.seek_snapshot(&name(&args.name)?, &name(snapshot)?).await?;
        note(&format!(
            "{} has the ack state of snapshot {snapshot}; it will deliver from seq {next}",
            args.name
        ));
        return Ok(());
    }
    let target = args.target.as_deref().unwrap_or_default();
    let target = Position::parse(target, SystemClock.now()).map_err(CliError::Usage)?;
    let broker = ctx.connect().await?;
    // A seek moves every partition of the subscription; P:SEQ names one, so only 0:SEQ on a broker of
    // one partition per topic means something. The pubsub engines move just that partition.
    let engine = super::topics::keeps_totals(&broker);
    let target = match target {
        Position::At { partition: 0, seq } if !broker.capabilities().has(Capability::Partitions) => {
            Position::Seq(seq)
        }
        Position::At { .. } if engine => target,
        Position::At { .. } => {
            return Err(CliError::Usage(
                "seek moves every partition of a subscription: give start, end, a seq (the same in each partition) or a time".into(),
            ));
        }
        other => other,
    };
    let next = broker.seek(&name(&args.name)?, target.seek()).await?;
    if target == Position::End {
        note(&format!("{} is at the end: it will deliver only what is published from now on", args.name));
    } else if let Position::At { partition, .. } = target {
        note(&format!("{} will deliver partition {partition} from seq {next}", args.name));
    } else {
        note(&format!("{} will deliver from seq {next}", args.name));
    }
    Ok(())
}

/// Options of `pubsub ack` and `pubsub nack`.
#[derive(Debug, Args)]
pub struct SettleArgs {
    /// The subscription.
    pub name: String,
    /// The message's seq.
    pub seq: u64,
    /// The lease printed with the delivery (`sub --ack manual`).
    pub lease: u64,
    /// For nack: redeliver after this long instead of the subscription's backoff.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay: Option<Duration>,
}

/// Runs `pubsub ack` (`nack` when `nack` is true).
pub async fn settle(ctx: &Context, args: SettleArgs, nack: bool) -> Result<(), CliError> {
    if !nack && args.delay.is_some() {
        return Err(CliError::Usage(
            "--delay is for nack (redeliver after that long); an ack settles the message for good".into(),
        ));
    }
    let broker = ctx.connect().await?;
    let token = AckToken {
        subscription: name(&args.name)?,
        partition: 0,
        seq: args.seq,
        lease: args.lease,
        reply: None,
    };
    let how = if nack { Settle::Nack(args.delay) } else { Settle::Ack };
    broker.settle(&token, how).await?;
    Ok(())
}

/// Options of `pubsub extend`.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The subscription.
    pub name: String,
    /// The message's seq.
    pub seq: u64,
    /// The lease printed with the delivery (`sub --ack manual`).
    pub lease: u64,
    /// The lease's new length from now (default: the subscription's ack deadline); in all a lease runs
    /// no longer than the subscription's max lease.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub by: Option<Duration>,
}

/// Runs `pubsub extend`: keeps a message leased longer, as a slow worker does.
pub async fn extend(ctx: &Context, args: ExtendArgs) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    let subscription = name(&args.name)?;
    let by = match args.by {
        Some(by) => by,
        None => match broker.subscription_info(&subscription).await {
            Ok(info) if !info.ack_deadline.is_zero() => info.ack_deadline,
            _ => {
                return Err(CliError::Usage(format!(
                    "this broker does not say how long {} leases last: give --by DURATION",
                    args.name
                )));
            }
        },
    };
    let token = AckToken { subscription, partition: 0, seq: args.seq, lease: args.lease, reply: None };
    broker.settle(&token, Settle::Extend(by)).await?;
    Ok(())
}

/// Options of `pubsub term`.
#[derive(Debug, Args)]
pub struct TermArgs {
    /// The subscription.
    pub name: String,
    /// The message's seq.
    pub seq: u64,
    /// The lease printed with the delivery (`sub --ack manual`).
    pub lease: u64,
    /// Why, recorded with the dead-letter copy (its `x-dead-letter-detail` header).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Runs `pubsub term`: gives up on a message for good (dead-lettered when the subscription has a
/// dead-letter topic, never redelivered either way).
pub async fn term(ctx: &Context, args: TermArgs) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    let token = AckToken {
        subscription: name(&args.name)?,
        partition: 0,
        seq: args.seq,
        lease: args.lease,
        reply: None,
    };
    broker.settle(&token, Settle::Term(args.reason)).await?;
    Ok(())
}
