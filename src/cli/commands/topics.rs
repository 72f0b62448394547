//! `pubsub topics` and `pubsub topic create|info|delete|purge`.

use clap::{Args, Subcommand};

use crate::cli::output::{Stdout, note, table};
use crate::cli::parse::parse_duration;
use crate::cli::{CliError, Context};
use crate::human::{bytes, or_dash, retention};
use crate::model::{
    Discard, Durability, Name, Pattern, RetentionPolicy, StorageKind, TopicConfig, TopicInfo,
};

/// Options of `pubsub topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// One JSON object per topic (NDJSON).
    #[arg(long)]
    pub json: bool,
}

/// `pubsub topic …`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic, optionally capturing several subjects (fan-in) and with limits.
    Create(CreateArgs),
    /// Show one topic.
    Info {
        /// The topic.
        name: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic with its subscriptions and messages (asks first on a terminal).
    Delete {
        /// The topic.
        name: String,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Change a topic: grow its partitions (never fewer than it has).
    Alter {
        /// The topic.
        name: String,
        /// The new number of partitions; messages already stored stay where they are, and keys hash
        /// over the new count from now on.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
    },
    /// Delete every message of a topic, seqs keep counting (asks first on a terminal).
    Purge {
        /// The topic.
        name: String,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Options of `pubsub topic create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The topic's name.
    pub name: String,
    /// A subject pattern it captures (repeatable; default: its own name).
    #[arg(long = "subject", value_name = "PATTERN")]
    pub subjects: Vec<String>,
    /// Keep at most N messages (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub max_msgs: Option<u64>,
    /// Keep at most this many bytes (0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    pub max_bytes: Option<u64>,
    /// Keep messages at most this long, e.g. 1h, 7d (0s = unlimited).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_age: Option<std::time::Duration>,
    /// What a full topic does: old (delete oldest) or new (refuse the publish).
    #[arg(long, value_parser = ["old", "new"])]
    pub discard: Option<String>,
    /// On a durable engine, when a publish returns: always (fsync each), batch (group commit, the
    /// default), interval:DURATION (fsync in the background), never (the OS decides).
    #[arg(long, value_name = "MODE", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// On a durable engine, the size at which a segment file is sealed and a new one started.
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// The largest message (payload + key + headers) the topic accepts (default 1 MiB; a served engine
    /// also has its own limit: `serve --max-message-bytes`).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_message_bytes: Option<u32>,
    /// The number of partitions (default 1). A keyed message goes to the partition its key hashes to
    /// (Kafka's murmur2 partitioner), others take turns; `pub --partition P` picks one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,
    /// When messages go apart from the limits: limits (default; acks delete nothing), interest
    /// (deleted once every subscription that existed at the publish has settled them; with none, at
    /// once) or work-queue (deleted
    /// once settled; one subscription per subject).
    #[arg(long, value_name = "POLICY", value_parser = parse_retention)]
    pub retention: Option<RetentionPolicy>,
    /// Keep only the newest N messages of each key (1 = a compacted topic: the last value per key;
    /// unkeyed messages are not counted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_msgs_per_key: Option<u64>,
}

fn parse_retention(s: &str) -> Result<RetentionPolicy, String> {
    s.parse()
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse()
}

/// Runs `pubsub topics`.
pub async fn list(ctx: &Context, args: TopicsArgs) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    let topics = broker.topics().await?;
    let counted = keeps_totals(&broker);
    let mut out = Stdout::new();
    if args.json {
        for t in &topics {
            out.line(&serde_json::to_string(t).unwrap_or_default())?;
        }
        return Ok(());
    }
    if topics.is_empty() {
        // What makes a topic differs by broker: only the engines create one on publish.
        note(match broker.kind() {
            "nats" => {
                "no streams yet; `pubsub topic create NAME --subject 'name.>'` makes one (a core publish to a subject no stream captures stores nothing)"
            }
            "redis" => {
                "no streams yet; `pubsub topic create NAME` makes one (a publish to a name that is not a stream is a PUBLISH to a channel, which stores nothing)"
            }
            "postgres" => {
                "no table topics yet; `pubsub topic create NAME` makes one (a publish to a name without a table is a NOTIFY on a channel, which stores nothing)"
            }
            _ => "no topics yet; `pubsub pub TOPIC MESSAGE` creates one",
        });
        return Ok(());
    }
    let mut rows = vec![
        ["TOPIC", "MESSAGES", "BYTES", "RATE/S", "SUBS", "SEQS", "RETENTION"].map(String::from).to_vec(),
    ];
    // Partitions get a column only where some topic has more than one (Kafka).
    let partitioned = topics.iter().any(|t| t.partitions > 1);
    if partitioned {
        rows[0].insert(1, "PARTITIONS".into());
    }
    for t in &topics {
        let mut row = vec![
            t.name.to_string(),
            t.messages.to_string(),
            or_dash(t.bytes, bytes),
            if counted { or_dash(t.publish_rate, |r| format!("{r:.1}")) } else { "-".into() },
            t.subscriptions.to_string(),
            seq_range(t, "-"),
            retention(&t.limits, t.discard, t.retention),
        ];
        if partitioned {
            row.insert(1, t.partitions.to_string());
        }
        rows.push(row);
    }
    out.write(table(&rows).as_bytes())?;
    out.flush()
}

/// Runs `pubsub topic …`.
pub async fn run(ctx: &Context, command: TopicCommand) -> Result<(), CliError> {
    let name = |s: &str| Name::new(s).map_err(|e| CliError::Usage(e.to_string()));
    let broker = ctx.connect().await?;
    match command {
        TopicCommand::Create(args) => {
            let mut config = TopicConfig::new(name(&args.name)?);
            config.subjects = args
                .subjects
                .iter()
                .map(|s| Pattern::parse(s).map_err(|e| CliError::Usage(e.to_string())))
                .collect::<Result<_, _>>()?;
            if let Some(n) = args.max_msgs {
                config.limits.max_msgs = (n > 0).then_some(n);
            }
            if let Some(b) = args.max_bytes {
                config.limits.max_bytes = (b > 0).then_some(b);
            }
            if let Some(age) = args.max_age {
                config.limits.max_age = (!age.is_zero()).then_some(age);
            }
            if args.discard.as_deref() == Some("new") {
                config.discard = Discard::New;
            }
            if let Some(d) = args.durability {
                config.durability = d;
            }
            if let Some(b) = args.segment_bytes {
                config.segment_bytes = b;
            }
            if let Some(b) = args.max_message_bytes {
                config.max_msg_bytes = b;
            }
            if let Some(n) = args.partitions {
                config.partitions = n;
            }
            if let Some(r) = args.retention {
                config.retention = r;
            }
            config.limits.max_msgs_per_key = args.max_msgs_per_key;
            if (args.retention.is_some_and(RetentionPolicy::settles_delete)
                || args.max_msgs_per_key.is_some())
                && !keeps_totals(&broker)
                && broker.kind() != "nats"
            {
                return Err(CliError::Usage(format!(
                    "--retention and --max-msgs-per-key are settings of the pubsub engine (mem://, local, ws://) and of NATS JetStream; {} is not set up through them",
                    broker.kind()
                )));
            }
            let info = broker.create_topic(config).await?;
            note(&format!("created topic {} capturing {}", info.name, info.subjects.join(", ")));
            Ok(())
        }
        TopicCommand::Info { name: topic, json } => {
            let info = broker.topic_info(&name(&topic)?).await?;
            show(&info, json, keeps_totals(&broker))
        }
        TopicCommand::Delete { name: topic, yes } => {
            let target = name(&topic)?;
            if !yes && !confirm_on_terminal(&broker, &target, "delete topic").await? {
                return Err(CliError::Failed(format!("topic {topic} was not deleted")));
            }
            // Its subscriptions go with it: say which, so that nobody wonders where they went.
            let subs = broker.subscriptions(Some(&target)).await.unwrap_or_default();
            broker.delete_topic(&target).await?;
            if subs.is_empty() {
                note(&format!("deleted topic {topic}"));
            } else {
                let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
                note(&format!(
                    "deleted topic {topic} and its {} subscription(s): {}",
                    subs.len(),
                    names.join(", ")
                ));
            }
            Ok(())
        }
        TopicCommand::Alter { name: topic, partitions } => {
            let info = broker.set_partitions(&name(&topic)?, partitions).await?;
            note(&format!("topic {} has {} partition(s)", info.name, info.partitions));
            Ok(())
        }
        TopicCommand::Purge { name: topic, yes } => {
            let target = name(&topic)?;
            if !yes && !confirm_on_terminal(&broker, &target, "purge every message of").await? {
                return Err(CliError::Failed(format!("topic {topic} was not purged")));
            }
            let removed = broker.purge_topic(&target).await?;
            note(&format!("purged {removed} message(s) from {topic}"));
            Ok(())
        }
    }
}

/// On a terminal, says what `action` would destroy and asks; elsewhere (scripts, pipes) goes ahead, as
/// `rm` does without `-i`.
async fn confirm_on_terminal(
    broker: &crate::broker::SharedBroker,
    topic: &Name,
    action: &str,
) -> Result<bool, CliError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(true);
    }
    let what = match broker.topic_info(topic).await {
        Ok(info) => format!("{} message(s), {} subscription(s)", info.messages, info.subscriptions),
        Err(_) => "contents unknown".to_string(),
    };
    let question = format!("{action} {topic} ({what})? [y/N] ");
    let answer = tokio::task::spawn_blocking(move || {
        ask(&question, &mut std::io::stdin().lock(), &mut std::io::stderr())
    })
    .await
    .unwrap_or(false);
    Ok(answer)
}

/// Writes `question` to `to` and reads one line from `from`: true only for y or yes.
fn ask(question: &str, from: &mut impl std::io::BufRead, to: &mut impl std::io::Write) -> bool {
    let _ = to.write_all(question.as_bytes());
    let _ = to.flush();
    let mut line = String::new();
    if from.read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Each partition's positions, leader and count, for a topic of several partitions (Kafka); empty
/// otherwise.
fn partition_table(t: &TopicInfo) -> String {
    if t.partition_info.len() < 2 {
        return String::new();
    }
    // A leader only where the broker has them (Kafka); our engine's partitions are all local.
    let leaders = t.partition_info.iter().any(|p| p.leader.is_some());
    let mut rows = vec![["PARTITION", "MESSAGES", "SEQS", "LEADER"].map(String::from).to_vec()];
    for p in &t.partition_info {
        rows.push(vec![
            p.partition.to_string(),
            p.messages.to_string(),
            if p.messages == 0 {
                format!("none (next is {})", p.head_seq + 1)
            } else {
                format!("{}..{}", p.first_seq, p.head_seq)
            },
            p.leader.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if !leaders {
        rows.iter_mut().for_each(|row| row.truncate(3));
    }
    format!("\n{}", table(&rows))
}

fn storage(t: &TopicInfo) -> String {
    match (t.storage, t.durability) {
        (Some(StorageKind::File), Some(d)) => format!("file, durability {d}"),
        (Some(StorageKind::File), None) => "file".into(),
        (Some(StorageKind::Memory), _) => "memory".into(),
        (None, _) => "the broker's own".into(),
    }
}

/// Whether the broker is a pubsub engine (in process, the local daemon or a `pubsub serve`), which runs
/// the engine's own settings (assignment, per-subscription retention) rather than a broker's.
pub(crate) fn is_pubsub_engine(broker: &crate::broker::SharedBroker) -> bool {
    matches!(broker.kind(), "mem" | "ws")
}

/// Whether the broker keeps rates and running totals: a pubsub engine does; other brokers report none,
/// and showing zeros for them would be a made-up figure.
pub(crate) fn keeps_totals(broker: &crate::broker::SharedBroker) -> bool {
    is_pubsub_engine(broker)
}

fn show(t: &TopicInfo, json: bool, counted: bool) -> Result<(), CliError> {
    let mut out = Stdout::new();
    if json {
        return out.line(&serde_json::to_string(t).unwrap_or_default());
    }
    let mut rows = vec![
        vec!["topic".into(), t.name.to_string()],
        vec!["subjects".into(), t.subjects.join(", ")],
        vec![
            "messages".into(),
            format!("{}{}", t.messages, t.bytes.map_or_else(String::new, |b| format!(" ({})", bytes(b)))),
        ],
        vec!["seqs".into(), seq_range(t, &format!("none (next is {})", t.head_seq + 1))],
        vec!["retention".into(), retention(&t.limits, t.discard, t.retention)],
        vec!["storage".into(), storage(t)],
        vec!["subscriptions".into(), t.subscriptions.to_string()],
    ];
    if !counted {
        out.write(table(&rows).as_bytes())?;
        out.write(partition_table(t).as_bytes())?;
        return out.flush();
    }
    rows.extend([
        vec!["publish rate".into(), or_dash(t.publish_rate, |r| format!("{r:.1}/s"))],
        vec![
            "totals".into(),
            format!(
                "published {}, expired {}, {}duplicates {}, refused full {}{}",
                t.counters.published,
                t.counters.expired,
                if t.retention.settles_delete() {
                    format!("deleted once settled {}, ", t.counters.deleted_settled)
                } else {
                    String::new()
                },
                t.counters.duplicates,
                t.counters.rejected_full,
                match t.counters.unreadable {
                    0 => String::new(),
                    n => format!(", UNREADABLE {n} (run `pubsub store verify`)"),
                }
            ),
        ],
    ]);
    out.write(table(&rows).as_bytes())?;
    out.write(partition_table(t).as_bytes())?;
    out.flush()
}

/// A topic's seq range for a listing: `empty` when it holds nothing (new, or purged: first = head + 1).
/// Seqs count within a partition, so a topic of several has a range per partition (its partition
/// table) and none of its own.
fn seq_range(t: &TopicInfo, empty: &str) -> String {
    if t.partition_info.len() > 1 {
        "per partition".into()
    } else if t.messages == 0 {
        empty.into()
    } else {
        format!("{}..{}", t.first_seq, t.head_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::ask;

    #[test]
    fn only_y_or_yes_confirms() {
        for (typed, confirmed) in [
            ("y\n", true),
            ("YES\n", true),
            (" yes \n", true),
            ("n\n", false),
            ("\n", false),
            ("", false),
            ("yep\n", false),
        ] {
            let mut shown = Vec::new();
            assert_eq!(ask("delete? [y/N] ", &mut typed.as_bytes(), &mut shown), confirmed, "{typed:?}");
            assert_eq!(shown, b"delete? [y/N] ");
        }
    }
}
