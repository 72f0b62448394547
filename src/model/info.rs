//! What brokers report about topics, subscriptions and their messages: the figures SEMANTICS.md §9.7
//! defines. The engine fills every field; other brokers leave what they cannot know as `None`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::config::{AckMode, Assignment, Discard, Durability, Limits, Ordering, StartPosition, StorageKind};
use super::message::ConsumerId;
use super::name::Name;

/// The state of one message in one subscription, as `peek` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Deliverable now (attempt 0 = never delivered, i.e. pending).
    Available,
    /// Leased to a consumer.
    InFlight,
    /// Waiting for its backoff to pass.
    Delayed,
    /// Settled by an ack.
    Acked,
    /// Skipped because the subscription's filter does not match it.
    Filtered,
    /// Copied to the dead-letter topic.
    DeadLettered,
    /// Given up on without a dead-letter topic.
    Terminated,
    /// Removed by retention before it was settled.
    Expired,
}

impl DeliveryState {
    /// Whether the message is settled for this subscription.
    pub fn is_terminal(self) -> bool {
        !matches!(self, DeliveryState::Available | DeliveryState::InFlight | DeliveryState::Delayed)
    }
}

/// Running totals of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubCounters {
    /// Deliveries made, first ones and redeliveries.
    pub delivered: u64,
    /// Deliveries with attempt ≥ 2.
    pub redeliveries: u64,
    /// Messages acked (under ack mode none, every delivery).
    pub acked: u64,
    /// Nacks received.
    pub nacked: u64,
    /// Leases that ran out.
    pub deadline_expired: u64,
    /// Messages copied to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages given up on without a dead-letter topic.
    pub terminated: u64,
    /// Unsettled messages removed by retention.
    pub expired_unacked: u64,
    /// Messages skipped by the filter.
    pub filtered: u64,
}

/// Running totals of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicCounters {
    /// Messages appended.
    pub published: u64,
    /// Publishes answered with an earlier seq because of a repeated msg_id.
    pub duplicates: u64,
    /// Messages removed by retention.
    pub expired: u64,
    /// Messages deleted because every subscription had settled them (Interest and WorkQueue retention;
    /// with no subscription, at publish).
    #[serde(default)]
    pub deleted_settled: u64,
    /// Publishes refused by `discard = new`.
    pub rejected_full: u64,
    /// Reads of stored records that failed their CRC or could not be read (durable topics; the record is
    /// not served; `pubsub store verify` names the file and offset).
    #[serde(default)]
    pub unreadable: u64,
}

/// What limits a subscription's dispatch right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockedBy {
    /// `max_in_flight` or `max_in_flight_bytes` reached.
    InFlightLimit,
    /// Every consumer's prefetch is used up.
    Prefetch,
    /// Only delayed messages are left.
    Backoff,
    /// Work is waiting but no consumer is attached.
    NoConsumers,
    /// What is waiting waits for earlier messages of its key (PerKey) or partition (Strict).
    Ordering,
}

impl BlockedBy {
    /// The words people read, the same in the CLI and the TUI.
    pub fn label(self) -> &'static str {
        match self {
            BlockedBy::InFlightLimit => "in-flight limit",
            BlockedBy::Prefetch => "prefetch",
            BlockedBy::Backoff => "backoff",
            BlockedBy::NoConsumers => "no consumers",
            BlockedBy::Ordering => "ordering",
        }
    }
}

/// One topic as `topics` and `topic info` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Name.
    pub name: Name,
    /// Captured subjects.
    pub subjects: Vec<String>,
    /// Partition count.
    pub partitions: u32,
    /// Oldest retained seq (head + 1 when empty).
    pub first_seq: u64,
    /// Last appended seq.
    pub head_seq: u64,
    /// Retained messages.
    pub messages: u64,
    /// Retained bytes, when the broker says.
    pub bytes: Option<u64>,
    /// Publish time of the newest message.
    pub last_publish: Option<Timestamp>,
    /// Limits.
    pub limits: Limits,
    /// Discard policy.
    pub discard: Discard,
    /// Whether acks delete messages (absent from brokers and servers that do not say: limits).
    #[serde(default)]
    pub retention: crate::model::config::RetentionPolicy,
    /// Subscriptions on it.
    pub subscriptions: u32,
    /// Totals.
    pub counters: TopicCounters,
    /// Messages per second, last complete seconds, when the broker measures it.
    pub publish_rate: Option<f64>,
    /// Per-second publish counts of the last 15 s, oldest first.
    pub publish_series: Vec<u64>,
    /// When it was created, when the broker says.
    pub created: Option<Timestamp>,
    /// Each partition's positions; one entry for a topic with one partition.
    #[serde(default)]
    pub partition_info: Vec<PartitionInfo>,
    /// Memory or file; `None` for brokers that are not this engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageKind>,
    /// When a publish returns, for file storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
}

impl TopicInfo {
    /// A topic of a broker that is not this engine, with only what such a broker can say: its name and
    /// counts; no limits, rates or storage details.
    pub fn external(name: Name, messages: u64, bytes: Option<u64>) -> TopicInfo {
        TopicInfo {
            subjects: vec![name.to_string()],
            name,
            partitions: 1,
            first_seq: 0,
            head_seq: 0,
            messages,
            bytes,
            last_publish: None,
            limits: Limits { max_msgs: None, max_bytes: None, max_age: None, max_msgs_per_key: None },
            discard: Discard::Old,
            retention: crate::model::config::RetentionPolicy::Limits,
            subscriptions: 0,
            counters: TopicCounters::default(),
            publish_rate: None,
            publish_series: Vec::new(),
            created: None,
            partition_info: Vec::new(),
            storage: None,
            durability: None,
        }
    }

    /// The same topic with one partition spanning `first..=head` (what a single-log broker reports).
    #[must_use]
    pub fn with_positions(mut self, first: u64, head: u64) -> TopicInfo {
        self.first_seq = first;
        self.head_seq = head;
        self.partition_info.clear();
        self.partition_info = self.positions();
        self
    }
}

impl TopicInfo {
    /// Each partition's positions: `partition_info` where the topic has several, else the one partition
    /// spanning the whole topic (so a broker that lists no partitions reads as one).
    pub fn positions(&self) -> Vec<PartitionInfo> {
        if self.partition_info.len() > 1 {
            return self.partition_info.clone();
        }
        vec![PartitionInfo {
            partition: 0,
            first_seq: self.first_seq,
            head_seq: self.head_seq,
            messages: self.messages,
            bytes: self.bytes,
            leader: None,
        }]
    }
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Its number.
    pub partition: u32,
    /// Oldest retained position (head + 1 when empty).
    pub first_seq: u64,
    /// Newest position.
    pub head_seq: u64,
    /// Retained messages.
    pub messages: u64,
    /// Retained bytes, when the broker says.
    pub bytes: Option<u64>,
    /// The broker node that leads it, where there are several.
    pub leader: Option<String>,
}

/// Where one subscription stands in one partition, and who reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    /// Partition.
    pub partition: u32,
    /// Every position at or below it is settled (Kafka: the committed offset − 1).
    pub ack_floor: u64,
    /// Newest position in the partition.
    pub head_seq: u64,
    /// head − floor.
    pub lag: u64,
    /// The consumer the partition is assigned to, where the broker assigns partitions.
    pub owner: Option<String>,
}

impl ConsumerInfo {
    /// A consumer a broker names (or only counts) without its figures: a pull consumer holding nothing,
    /// every count zero, for the backend to fill what it knows.
    pub fn external(id: &str) -> ConsumerInfo {
        ConsumerInfo {
            id: ConsumerId::from(id),
            push: false,
            prefetch: 0,
            in_flight: 0,
            attached_at: Timestamp::ZERO,
            idle: Duration::ZERO,
            delivered: 0,
            acked: 0,
            standby: false,
        }
    }
}

/// One consumer of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    /// Id.
    pub id: ConsumerId,
    /// Whether the engine pushes to it.
    pub push: bool,
    /// Its credit.
    pub prefetch: u32,
    /// Messages it holds.
    pub in_flight: u32,
    /// When it joined.
    pub attached_at: Timestamp,
    /// Since it last fetched, received or acked.
    #[serde(with = "super::clock::millis")]
    pub idle: Duration,
    /// Deliveries it got.
    pub delivered: u64,
    /// Acks it sent.
    pub acked: u64,
    /// Attached but handed nothing under the subscription's assignment (a SingleActive consumer that
    /// is not the active one, a PartitionExclusive consumer that owns no partition).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// One subscription as `subs` and `sub-info` show it (SEMANTICS.md §9.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// Name.
    pub name: Name,
    /// Topic.
    pub topic: Name,
    /// Subject filter.
    pub filter: Vec<String>,
    /// Attribute filter expression (`subs create --where`), as typed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_filter: Option<String>,
    /// Ack mode.
    pub ack: AckMode,
    /// Start position it was created with.
    pub start: StartPosition,
    /// Lease length.
    #[serde(with = "super::clock::millis")]
    pub ack_deadline: Duration,
    /// Dead-letter topic.
    pub dead_letter: Option<Name>,
    /// `max_deliveries` (0 = unlimited).
    pub max_deliveries: u32,
    /// `max_in_flight`.
    pub max_in_flight: u32,
    /// Ordering (none where the broker has none to tell).
    #[serde(default)]
    pub ordering: Ordering,
    /// How consumers share it (shared where the broker has none to tell).
    #[serde(default)]
    pub assignment: Assignment,
    /// Unacked messages older than this expire in it (`message_retention`).
    #[serde(default, with = "super::clock::opt_millis", skip_serializing_if = "Option::is_none")]
    pub message_retention: Option<Duration>,
    /// Whether messages that expire unacked are dead-lettered (reason `expired`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_letter_on_expiry: bool,
    /// Whether its acks leave messages of an Interest/WorkQueue topic in place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_acked: bool,
    /// Whether it is deleted when idle.
    pub ephemeral: bool,
    /// Topic's last seq.
    pub head_seq: u64,
    /// Topic's oldest retained seq.
    pub first_seq: u64,
    /// Dispatch cursor.
    pub delivered_seq: u64,
    /// Every covered seq at or below it is settled.
    pub ack_floor: u64,
    /// Never delivered.
    pub pending: u64,
    /// Leased now.
    pub in_flight: u64,
    /// Waiting for backoff.
    pub delayed: u64,
    /// Available again after a failure.
    pub redeliverable: u64,
    /// Unsettled with attempt ≥ 2.
    pub redelivered: u64,
    /// pending + in_flight + delayed + redeliverable.
    pub backlog: u64,
    /// Bytes of the backlog, when the broker says.
    pub backlog_bytes: Option<u64>,
    /// head_seq − ack_floor.
    pub offset_lag: u64,
    /// Age of the oldest unsettled message, when the broker says.
    #[serde(with = "super::clock::opt_millis")]
    pub oldest_unacked_age: Option<Duration>,
    /// Age of the next never-delivered message, when the broker says.
    #[serde(with = "super::clock::opt_millis")]
    pub oldest_pending_age: Option<Duration>,
    /// Competing consumers.
    pub consumers: Vec<ConsumerInfo>,
    /// Totals.
    pub counters: SubCounters,
    /// Topic publish rate, when the broker measures it.
    pub publish_rate: Option<f64>,
    /// Deliveries per second, when the broker measures it.
    pub deliver_rate: Option<f64>,
    /// Acks per second, when the broker measures it.
    pub ack_rate: Option<f64>,
    /// Seconds until the backlog drains at current rates, when it is draining.
    #[serde(with = "super::clock::opt_millis")]
    pub eta: Option<Duration>,
    /// Why nothing is being dispatched, when something waits.
    pub blocked_by: Option<BlockedBy>,
    /// When it was created, when the broker says.
    pub created: Option<Timestamp>,
    /// Each partition's floor, head, lag and owner; one entry for a topic with one partition.
    #[serde(default)]
    pub partitions: Vec<PartitionLag>,
    /// HTTP push: the endpoint and what the pusher has done, for a push subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<super::push::PushInfo>,
}

impl SubscriptionInfo {
    /// A subscription of a broker that is not this engine, with nothing known yet: counts are zero
    /// until the backend fills them, and every figure the broker may not give is `None`.
    pub fn external(name: Name, topic: Name) -> SubscriptionInfo {
        SubscriptionInfo {
            name,
            topic,
            filter: Vec::new(),
            attribute_filter: None,
            ack: AckMode::Explicit,
            start: StartPosition::New,
            ack_deadline: Duration::ZERO,
            dead_letter: None,
            max_deliveries: 0,
            max_in_flight: 0,
            ordering: Ordering::None,
            assignment: Assignment::Shared,
            message_retention: None,
            dead_letter_on_expiry: false,
            retain_acked: false,
            ephemeral: false,
            head_seq: 0,
            first_seq: 0,
            delivered_seq: 0,
            ack_floor: 0,
            pending: 0,
            in_flight: 0,
            delayed: 0,
            redeliverable: 0,
            redelivered: 0,
            backlog: 0,
            backlog_bytes: None,
            offset_lag: 0,
            oldest_unacked_age: None,
            oldest_pending_age: None,
            consumers: Vec::new(),
            counters: SubCounters::default(),
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
            eta: None,
            blocked_by: None,
            created: None,
            partitions: Vec::new(),
            push: None,
        }
    }

    /// Fills the one-partition view from the single floor and head (what a single-log broker reports).
    #[must_use]
    pub fn with_one_partition(mut self, owner: Option<String>) -> SubscriptionInfo {
        self.partitions = vec![PartitionLag {
            partition: 0,
            ack_floor: self.ack_floor,
            head_seq: self.head_seq,
            lag: self.offset_lag,
            owner,
        }];
        self
    }
}

/// One message's ack state in one subscription (`peek`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAckState {
    /// Partition (0 on a topic of one).
    #[serde(default)]
    pub partition: u32,
    /// Seq.
    pub seq: u64,
    /// State.
    pub state: DeliveryState,
    /// Deliveries so far; 0 also for a message the subscription no longer tracks (acked above the ack
    /// floor, or filtered), whose attempts are not kept.
    pub attempt: u32,
    /// Lease holder.
    pub consumer: Option<ConsumerId>,
    /// Lease end, when in flight.
    pub deadline: Option<Timestamp>,
    /// Earliest redelivery, when delayed.
    pub not_before: Option<Timestamp>,
    /// First delivery time.
    pub first_delivered: Option<Timestamp>,
    /// Latest delivery time.
    pub last_delivered: Option<Timestamp>,
}

/// A subscription's per-message ack state from the floor up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeekReport {
    /// Subscription.
    pub subscription: Name,
    /// Ack floor.
    pub ack_floor: u64,
    /// Dispatch cursor.
    pub delivered_seq: u64,
    /// Topic's last seq.
    pub head_seq: u64,
    /// Messages above the floor, in seq order.
    pub messages: Vec<MessageAckState>,
    /// HTTP push: the endpoint and what the pusher has done, for a push subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<super::push::PushInfo>,
}

/// Engine-wide totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Topics.
    pub topics: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Taps listening.
    pub taps: u64,
    /// Publishes that matched no topic and no tap.
    pub unroutable: u64,
    /// Messages taps lost by falling behind.
    pub tap_lagged: u64,
}

/// A subscription's ack state as `snapshot create` captured it (SEMANTICS.md §9.9): per partition the
/// ack floor and the seqs acked above it. `seek --snapshot` gives it back to that subscription or to
/// another one of the same topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its name (one namespace, apart from topics and subscriptions).
    pub name: Name,
    /// The subscription it was taken from.
    pub subscription: Name,
    /// That subscription's topic; the snapshot applies only to subscriptions of this topic.
    pub topic: Name,
    /// When it was taken.
    pub created: Timestamp,
    /// When it expires: the engine's timer removes it then, and retention takes what only it held.
    /// `None`: never (`snapshot create --ttl never`). A record from before snapshots expired reads as
    /// `created` + [`SNAPSHOT_TTL`].
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// The ack state, per partition.
    pub partitions: Vec<SnapshotPartition>,
}

/// How long a snapshot lives unless `snapshot create --ttl` says otherwise (SEMANTICS.md §9.8: 7 days).
pub const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 60 * 60);

/// One partition of a [`SnapshotInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPartition {
    /// The partition.
    pub partition: u32,
    /// Every seq at or below it was settled.
    pub ack_floor: u64,
    /// Seqs above the floor that were settled, as inclusive `[first, last]` ranges in ascending order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked: Vec<[u64; 2]>,
}

impl SnapshotInfo {
    /// Partition `p`'s part, if the snapshot has one.
    pub fn partition(&self, p: u32) -> Option<&SnapshotPartition> {
        self.partitions.iter().find(|x| x.partition == p)
    }
}

impl SnapshotPartition {
    /// The highest seq the snapshot says anything about (the floor, or the end of the last acked range).
    pub fn top(&self) -> u64 {
        self.acked.last().map_or(self.ack_floor, |r| r[1].max(self.ack_floor))
    }

    /// Whether `seq` counts as settled in this snapshot.
    pub fn is_acked(&self, seq: u64) -> bool {
        seq <= self.ack_floor
            || self
                .acked
                .binary_search_by(|r| {
                    if r[1] < seq {
                        std::cmp::Ordering::Less
                    } else if r[0] > seq {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    }
}
