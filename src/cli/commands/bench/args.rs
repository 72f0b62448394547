//! The options of `pubsub bench` and its scenario names.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cli::parse::{parse_duration, parse_rate};

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
    /// Spread the messages over N topics of the run, message by message in turn (one publisher's
    /// batches then carry every topic). Subscribers listen live on a pattern covering them all, where a
    /// broker may drop for a slow listener (counted as lost); `queue` is not offered.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub topics: u32,
    /// Create the run's topic with N partitions (brokers with partitions: the pubsub engines, Kafka);
    /// keyed messages are placed by their key's hash, unkeyed ones in turn.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
    /// Give every message one of N keys (`key-0` … `key-{N-1}`, in turn), as keyed traffic would have;
    /// 0 publishes without keys.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keys: u64,
    /// Publish into this topic and leave it and its messages in place afterwards (to fill a backlog, say);
    /// created without limits when missing. Without it, each scenario's topics are the run's own and are
    /// removed at its end.
    #[arg(long, value_name = "NAME", conflicts_with = "topics")]
    pub topic: Option<String>,
    /// Print one JSON object per scenario.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print a CSV header and one row per scenario.
    #[arg(long)]
    pub csv: bool,
}
