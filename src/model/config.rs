//! Topic and subscription settings, with the defaults SEMANTICS.md gives.
//!
//! Every knob of the model has a slot here from the start, so later features fill in behaviour without
//! reshaping the types. Settings the engine does not implement yet are refused by [`TopicConfig::check`]
//! and [`SubscriptionConfig::check`] with a message that says so, rather than silently ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::error::EngineError;
use super::filter::FilterExpr;
use super::name::{Name, Pattern};

/// Size and age limits of a topic; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Keep at most this many messages.
    pub max_msgs: Option<u64>,
    /// Keep at most this many bytes (payload + key + headers).
    pub max_bytes: Option<u64>,
    /// Keep messages at most this long after publish.
    #[serde(with = "super::clock::opt_millis")]
    pub max_age: Option<Duration>,
    /// Keep at most this many messages per key, the newest (a compacted topic with 1); unkeyed messages
    /// are not counted.
    pub max_msgs_per_key: Option<u64>,
}

impl Default for Limits {
    /// The defaults for an auto-created topic: 1,000,000 messages, 1 GiB or 7 days, whichever comes first.
    fn default() -> Self {
        Limits {
            max_msgs: Some(1_000_000),
            max_bytes: Some(1 << 30),
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_msgs_per_key: None,
        }
    }
}

/// What a full topic does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discard {
    /// Delete the oldest messages to make room.
    #[default]
    Old,
    /// Refuse the publish with `TopicFull`.
    New,
}

/// When messages leave a topic apart from its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionPolicy {
    /// Acks never delete; only limits do.
    #[default]
    Limits,
    /// Deleted once every subscription that existed when it was published has settled it (and at once
    /// when there is none).
    Interest,
    /// One subscription per subject (overlapping filters refused); deleted once settled.
    WorkQueue,
}

impl RetentionPolicy {
    /// The name the command line uses: `limits`, `interest`, `work-queue`.
    pub fn label(self) -> &'static str {
        match self {
            RetentionPolicy::Limits => "limits",
            RetentionPolicy::Interest => "interest",
            RetentionPolicy::WorkQueue => "work-queue",
        }
    }

    /// Whether settling a message may delete it (Interest and WorkQueue).
    pub fn settles_delete(self) -> bool {
        self != RetentionPolicy::Limits
    }
}

impl std::str::FromStr for RetentionPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "limits" => Ok(RetentionPolicy::Limits),
            "interest" => Ok(RetentionPolicy::Interest),
            "work-queue" | "work_queue" | "workqueue" => Ok(RetentionPolicy::WorkQueue),
            _ => Err(format!("retention \"{s}\": use limits, interest or work-queue")),
        }
    }
}

/// Where a topic's messages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// On disk under the data directory (once the durable store exists).
    File,
    /// In memory only.
    #[default]
    Memory,
}

/// When a publish to a file-backed topic returns (see SEMANTICS.md §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// After fdatasync of that record.
    Always,
    /// After a group commit that covers the record.
    Batch {
        /// The longest a publish waits for its group.
        max_delay: Duration,
        /// The most records one group holds.
        max_msgs: u32,
    },
    /// After write(); a background sync runs at this interval.
    Interval(Duration),
    /// After write(); never synced explicitly.
    Never,
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Batch { max_delay: Duration::from_millis(5), max_msgs: 1024 }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Batch { .. } => f.write_str("batch"),
            Durability::Interval(d) => write!(f, "interval:{}", humantime::format_duration(*d)),
            Durability::Never => f.write_str("never"),
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    /// `always`, `batch`, `interval:DURATION` (e.g. `interval:100ms`) or `never`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Durability::Always),
            "batch" => Ok(Durability::default()),
            "never" => Ok(Durability::Never),
            _ => match s.strip_prefix("interval:") {
                Some(d) => humantime::parse_duration(d)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .map(Durability::Interval)
                    .ok_or_else(|| format!("\"{d}\" is not a duration such as 100ms or 1s")),
                None => Err(format!("durability \"{s}\": use always, batch, interval:DURATION or never")),
            },
        }
    }
}

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// Kafka's murmur2 hash (the 32-bit MurmurHash2 with Kafka's seed), as its default partitioner uses it.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h: u32 = 0x9747_b28c ^ len;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Everything that defines a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// The topic's name.
    pub name: Name,
    /// Publish addresses this topic captures; empty means just its own name.
    pub subjects: Vec<Pattern>,
    /// Number of partitions, 1 ..= [`MAX_PARTITIONS`]; may grow, never shrink.
    pub partitions: u32,
    /// Size and age limits.
    pub limits: Limits,
    /// What happens when a limit is hit.
    pub discard: Discard,
    /// Whether acks delete messages.
    pub retention: RetentionPolicy,
    /// Window in which a repeated `msg_id` returns the original seq instead of appending; zero turns it off.
    pub dedup_window: Duration,
    /// Memory or file.
    pub storage: StorageKind,
    /// Publish durability for file storage.
    pub durability: Durability,
    /// Largest accepted message (payload + key + headers), bytes.
    pub max_msg_bytes: u32,
    /// Segment size for file storage, bytes.
    pub segment_bytes: u64,
}

impl TopicConfig {
    /// A topic with the defaults an auto-created topic gets.
    pub fn new(name: Name) -> Self {
        TopicConfig {
            name,
            subjects: Vec::new(),
            partitions: 1,
            limits: Limits::default(),
            discard: Discard::Old,
            retention: RetentionPolicy::Limits,
            dedup_window: Duration::from_secs(120),
            storage: StorageKind::Memory,
            durability: Durability::default(),
            max_msg_bytes: 1 << 20,
            segment_bytes: 64 << 20,
        }
    }

    /// The partition of a message with this key among `partitions`: Kafka's default partitioner,
    /// `(murmur2(key) & 0x7fffffff) % partitions`, so a key lands in the same partition here as in a
    /// Kafka topic of as many partitions, and in every run.
    pub fn partition_of_key(key: &[u8], partitions: u32) -> u32 {
        (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
    }

    /// The subjects this topic captures, defaulting to its own name.
    pub fn captured(&self) -> Vec<Pattern> {
        if self.subjects.is_empty() {
            Pattern::parse(self.name.as_str()).map(|p| vec![p]).unwrap_or_default()
        } else {
            self.subjects.clone()
        }
    }

    /// Refuses settings the engine cannot honour yet.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(EngineError::InvalidConfig(format!(
                "topic \"{}\": {} partitions; a topic has 1 to {MAX_PARTITIONS}",
                self.name, self.partitions
            )));
        }
        if self.limits.max_msgs_per_key == Some(0) {
            return Err(EngineError::InvalidConfig(format!(
                "topic \"{}\": max_msgs_per_key must be at least 1 (leave it unset for no limit)",
                self.name
            )));
        }
        if self.subjects.iter().any(Pattern::is_glob) {
            return Err(EngineError::InvalidConfig(format!(
                "topic \"{}\": glob: patterns can be tapped but not captured by a topic; use *, > or #",
                self.name
            )));
        }
        if self.max_msg_bytes == 0 {
            return Err(EngineError::InvalidConfig(format!(
                "topic \"{}\": max_msg_bytes must be at least 1",
                self.name
            )));
        }
        Ok(())
    }
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// The oldest retained message.
    All,
    /// Only messages published after the subscription exists.
    #[default]
    New,
    /// The newest retained message, then new ones.
    Last,
    /// The newest message of every key (unkeyed messages are skipped), then every new message.
    LastPerKey,
    /// A given seq (clamped to what is retained).
    Seq(u64),
    /// The first message published at or after this time.
    Time(Timestamp),
}

/// How deliveries are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Acked at dispatch; at-most-once.
    None,
    /// Each message acked on its own with its lease.
    #[default]
    Explicit,
    /// Acking seq s acks every earlier in-flight message of the same consumer too.
    Cumulative,
}

/// How long a failed delivery waits before it may be delivered again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// Redeliverable at once.
    Immediate,
    /// `min(max, min × factor^(n−1))`, spread by ±`jitter` (a fraction).
    Exponential {
        /// First delay.
        min: Duration,
        /// Largest delay.
        max: Duration,
        /// Growth per failure.
        factor: f64,
        /// Spread as a fraction of the delay, 0.0 for none.
        jitter: f64,
    },
    /// The n-th failure waits `list[min(n−1, len−1)]` (NATS BackOff).
    List(Vec<Duration>),
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            factor: 2.0,
            jitter: 0.1,
        }
    }
}

/// Per-key and total ordering options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Lowest seq first, redeliveries may overtake.
    #[default]
    None,
    /// A key's messages one at a time, in order, within its partition (I6); other keys go on.
    PerKey,
    /// One message in flight per partition.
    Strict,
}

impl Ordering {
    /// The name the command line uses: `none`, `per-key`, `strict`.
    pub fn label(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::PerKey => "per-key",
            Ordering::Strict => "strict",
        }
    }
}

impl std::str::FromStr for Ordering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Ordering::None),
            "per-key" | "per_key" | "perkey" => Ok(Ordering::PerKey),
            "strict" => Ok(Ordering::Strict),
            _ => Err(format!("ordering \"{s}\": use none, per-key or strict")),
        }
    }
}

/// How consumers of one subscription share its messages (SEMANTICS.md §9.5; the engine's rules are in
/// `engine/assign.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Any consumer gets any message.
    #[default]
    Shared,
    /// Each partition owned by one consumer, rebalanced as consumers come and go (Kafka groups).
    PartitionExclusive,
    /// One consumer gets everything, the others stand by and take over in attach order.
    SingleActive,
}

impl Assignment {
    /// The name the command line uses: `shared`, `partition-exclusive`, `single-active`.
    pub fn label(self) -> &'static str {
        match self {
            Assignment::Shared => "shared",
            Assignment::PartitionExclusive => "partition-exclusive",
            Assignment::SingleActive => "single-active",
        }
    }
}

impl std::str::FromStr for Assignment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(Assignment::Shared),
            "partition-exclusive" | "partition_exclusive" => Ok(Assignment::PartitionExclusive),
            "single-active" | "single_active" => Ok(Assignment::SingleActive),
            _ => Err(format!("assignment \"{s}\": use shared, partition-exclusive or single-active")),
        }
    }
}

/// When an ack call returns, for file-backed engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckDurability {
    /// After fsync.
    #[default]
    Sync,
    /// After write.
    Async,
}

/// How long a subscription lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// Until deleted.
    #[default]
    Durable,
    /// Deleted after it has had no consumer for `inactive_ttl`.
    Ephemeral {
        /// How long without a consumer before deletion.
        inactive_ttl: Duration,
    },
}

/// Everything that defines a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionConfig {
    /// The subscription's name (one namespace across topics).
    pub name: Name,
    /// The topic it reads.
    pub topic: Name,
    /// Only messages whose subject matches one of these; empty means all.
    pub filter: Vec<Pattern>,
    /// Attribute filter over headers, key and subject (`subs create --where`; grammar in
    /// [`super::filter`]). Kept as typed, parsed when the subscription is made or opened.
    pub attribute_filter: Option<String>,
    /// Where it starts.
    pub start: StartPosition,
    /// Ack mode.
    pub ack: AckMode,
    /// Lease length.
    pub ack_deadline: Duration,
    /// Cap on one lease including extensions.
    pub max_lease: Duration,
    /// Retry delay policy.
    pub backoff: Backoff,
    /// Whether a nack without an explicit delay uses the backoff.
    pub backoff_on_nack: bool,
    /// Whether an expired lease uses the backoff.
    pub backoff_on_timeout: bool,
    /// Failures after which a message is dead-lettered or terminated; 0 = unlimited.
    pub max_deliveries: u32,
    /// Topic that receives dead-lettered copies.
    pub dead_letter: Option<Name>,
    /// Most messages in flight across the subscription.
    pub max_in_flight: u32,
    /// Most payload bytes in flight across the subscription; 0 = unlimited.
    pub max_in_flight_bytes: u64,
    /// Ordering option.
    pub ordering: Ordering,
    /// Consumer assignment.
    pub assignment: Assignment,
    /// Whether acks with an outdated lease are refused.
    pub strict_leases: bool,
    /// Ack durability.
    pub ack_durability: AckDurability,
    /// Durable or ephemeral.
    pub lifetime: Lifetime,
    /// Expire unacked messages older than this (by publish time).
    pub message_retention: Option<Duration>,
    /// Dead-letter messages that expire unacked (reason `expired`) instead of dropping them.
    pub dead_letter_on_expiry: bool,
    /// On Interest and WorkQueue topics, this subscription's acks do not delete messages (the topic's
    /// limits do).
    pub retain_acked: bool,
    /// HTTP push: the engine's host POSTs each message to this endpoint (absent in records written
    /// before push existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<super::push::PushConfig>,
}

impl SubscriptionConfig {
    /// A subscription with the model's defaults: explicit ack, 30 s deadline, start at new messages.
    pub fn new(name: Name, topic: Name) -> Self {
        SubscriptionConfig {
            name,
            topic,
            filter: Vec::new(),
            attribute_filter: None,
            start: StartPosition::New,
            ack: AckMode::Explicit,
            ack_deadline: Duration::from_secs(30),
            max_lease: Duration::from_secs(3600),
            backoff: Backoff::default(),
            backoff_on_nack: true,
            backoff_on_timeout: true,
            max_deliveries: 0,
            dead_letter: None,
            max_in_flight: 1000,
            max_in_flight_bytes: 0,
            ordering: Ordering::None,
            assignment: Assignment::Shared,
            strict_leases: true,
            ack_durability: AckDurability::Sync,
            lifetime: Lifetime::Durable,
            message_retention: None,
            dead_letter_on_expiry: false,
            retain_acked: false,
            push: None,
        }
    }

    /// Whether a redelivery backoff other than the default was asked for (`subs create --backoff`):
    /// brokers that cannot wait before a redelivery refuse it rather than ignore it.
    pub fn sets_backoff(&self) -> bool {
        self.backoff != Backoff::default()
    }

    /// Whether a longest lease other than the default was asked for (`subs create --max-lease`).
    pub fn sets_max_lease(&self) -> bool {
        self.max_lease != SubscriptionConfig::new(self.name.clone(), self.topic.clone()).max_lease
    }

    /// Refuses settings that are out of range or contradict each other.
    pub fn check(&self) -> Result<(), EngineError> {
        let name = &self.name;
        if self.ack_deadline < Duration::from_millis(1) || self.ack_deadline > Duration::from_secs(12 * 3600)
        {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": ack deadline {:?} is outside 1 ms ..= 12 h",
                self.ack_deadline
            )));
        }
        if self.max_in_flight == 0 {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": max_in_flight must be at least 1"
            )));
        }
        if let Backoff::List(list) = &self.backoff
            && list.is_empty()
        {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": a backoff list needs at least one delay"
            )));
        }
        if let Backoff::Exponential { factor, jitter, .. } = &self.backoff
            && (!factor.is_finite() || *factor < 1.0 || !(0.0..=1.0).contains(jitter))
        {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": backoff factor must be ≥ 1 and jitter within 0..=1"
            )));
        }
        if self.ordering != Ordering::None && self.ack == AckMode::None {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": ordering {} needs acks (explicit or cumulative): with ack none every message is settled as it is handed out, so there is nothing to order",
                self.ordering.label()
            )));
        }
        if self.message_retention.is_some_and(|d| d.is_zero()) {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": message_retention must be longer than zero (leave it unset to keep unacked messages as long as the topic does)"
            )));
        }
        if self.dead_letter_on_expiry && self.dead_letter.is_none() {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": dead_letter_on_expiry needs a dead-letter topic (--dead-letter TOPIC)"
            )));
        }
        if let Some(problem) = self.push.as_ref().and_then(super::push::PushConfig::problem) {
            return Err(EngineError::InvalidConfig(format!("subscription \"{name}\": {problem}")));
        }
        if self.push.is_some() && self.ack != AckMode::Explicit {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": a push subscription acks each message by its endpoint's answer; use ack explicit"
            )));
        }
        if self.filter.iter().any(Pattern::is_glob) {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{name}\": glob: patterns are for taps; filter subscriptions with *, > or #"
            )));
        }
        self.parsed_filter()?;
        Ok(())
    }

    /// The attribute filter, parsed; `None` when there is none.
    pub fn parsed_filter(&self) -> Result<Option<FilterExpr>, EngineError> {
        self.attribute_filter
            .as_deref()
            .map(FilterExpr::parse)
            .transpose()
            .map_err(|e| EngineError::InvalidConfig(format!("subscription \"{}\": {e}", self.name)))
    }
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The values Kafka's own tests pin for `Utils.murmur2`, as signed 32-bit integers.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key) as i32, want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keys_spread_over_partitions_and_stay_put() {
        assert_eq!(TopicConfig::partition_of_key(b"anything", 1), 0);
        let parts: std::collections::BTreeSet<u32> =
            (0..100).map(|i| TopicConfig::partition_of_key(format!("k{i}").as_bytes(), 8)).collect();
        assert_eq!(parts.len(), 8);
        assert!(parts.iter().all(|&p| p < 8));
        assert_eq!(TopicConfig::partition_of_key(b"foobar", 8), TopicConfig::partition_of_key(b"foobar", 8));
        // (-790332482 & 0x7fffffff) % 8
        assert_eq!(
            TopicConfig::partition_of_key(b"foobar", 8),
            ((-790_332_482_i32 as u32) & 0x7fff_ffff) % 8
        );
    }

    #[test]
    fn assignments_are_accepted_and_read_as_the_command_line_writes_them() {
        let name = |s: &str| Name::new(s).unwrap();
        for a in [Assignment::Shared, Assignment::PartitionExclusive, Assignment::SingleActive] {
            assert_eq!(a.label().parse::<Assignment>(), Ok(a));
            let mut c = SubscriptionConfig::new(name("g"), name("t"));
            c.assignment = a;
            c.check().unwrap();
        }
        assert!("sticky".parse::<Assignment>().unwrap_err().contains("partition-exclusive"));
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn retention_settings_are_accepted_and_nonsense_refused() {
        let mut topic = TopicConfig::new(name("t"));
        topic.retention = "work-queue".parse().unwrap();
        topic.limits.max_msgs_per_key = Some(1);
        assert!(topic.check().is_ok());
        topic.limits.max_msgs_per_key = Some(0);
        assert!(topic.check().unwrap_err().to_string().contains("max_msgs_per_key must be at least 1"));
        assert!("queue".parse::<RetentionPolicy>().unwrap_err().contains("limits, interest or work-queue"));
        assert_eq!(RetentionPolicy::WorkQueue.label(), "work-queue");

        let mut sub = SubscriptionConfig::new(name("s"), name("t"));
        sub.start = StartPosition::LastPerKey;
        sub.retain_acked = true;
        sub.message_retention = Some(Duration::from_secs(1));
        assert!(sub.check().is_ok());
        sub.message_retention = Some(Duration::ZERO);
        assert!(sub.check().unwrap_err().to_string().contains("longer than zero"));
        sub.message_retention = None;
        sub.dead_letter_on_expiry = true;
        assert!(sub.check().unwrap_err().to_string().contains("needs a dead-letter topic"));
        sub.dead_letter = Some(name("t.dlq"));
        assert!(sub.check().is_ok());
    }
}
