//! The frames: what a client sends ([`ClientFrame`]) and what a server sends ([`ServerFrame`]).
//! Plain serde types; encoding and decoding are in `mod.rs`. docs/PROTOCOL.md describes each one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::envelope::Envelope;
use crate::model::{
    AckMode, Discard, EngineStats, Lifetime, Limits, Name, Pattern, StartPosition, SubscriptionConfig,
    Timestamp, TopicConfig,
};

/// A request with its id. The id is echoed in the answer; requests without one get no `ok` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Request id chosen by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// Everything a client can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First frame of every connection: protocol version and, when the server wants one, the token.
    Hello {
        /// Protocol version the client speaks.
        version: u32,
        /// Access token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Free-form client name, shown in server logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// The client can send and receive binary frames for publish batches and deliveries.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
        /// The client can also send acks, nacks and credit as binary frames (`settle`, `credit`) and
        /// read `settled` answers; needs `binary`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary_settle: bool,
        /// The client reads `assigned` and `revoked` frames (a stream's partitions given and taken).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        assignments: bool,
    },
    /// Liveness check.
    Ping,
    /// Publish one message.
    Publish {
        /// The message.
        message: Envelope,
    },
    /// Publish several messages in order.
    PublishBatch {
        /// The messages.
        messages: Vec<Envelope>,
    },
    /// List topics.
    Topics,
    /// One topic.
    TopicInfo {
        /// Its name.
        topic: Name,
    },
    /// Create a topic.
    CreateTopic {
        /// What to create.
        spec: TopicSpec,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Its name.
        topic: Name,
    },
    /// Delete a topic's messages.
    PurgeTopic {
        /// Its name.
        topic: Name,
    },
    /// Grow a topic to this many partitions (never fewer than it has); answers the topic's info.
    SetPartitions {
        /// Its name.
        topic: Name,
        /// The new count.
        partitions: u32,
    },
    /// List subscriptions, optionally of one topic.
    Subscriptions {
        /// Only this topic's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<Name>,
    },
    /// One subscription.
    SubscriptionInfo {
        /// Its name.
        subscription: Name,
    },
    /// Create a subscription.
    CreateSubscription {
        /// What to create.
        spec: SubscriptionSpec,
    },
    /// Delete a subscription.
    DeleteSubscription {
        /// Its name.
        subscription: Name,
    },
    /// Start receiving: the answer's `sid` tags the `deliver` frames that follow.
    Subscribe(SubscribeSpec),
    /// Stop a stream started by `subscribe`.
    Unsubscribe {
        /// The stream.
        sid: u64,
    },
    /// Give a stream opened with `credit: true` room for `n` more deliveries: the client has taken
    /// that many from its buffer.
    Credit {
        /// The stream.
        sid: u64,
        /// Items (deliveries and `lagged` notes) taken.
        n: u64,
    },
    /// Pull messages from a subscription.
    Fetch {
        /// Subscription.
        subscription: Name,
        /// Consumer id.
        consumer: String,
        /// Most messages.
        max_msgs: usize,
        /// Most bytes (one message always allowed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
        /// Long-poll wait in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Ack a delivery.
    Ack(LeaseRef),
    /// Nack a delivery, optionally with a redelivery delay.
    Nack {
        /// The delivery.
        #[serde(flatten)]
        lease: LeaseRef,
        /// Delay in milliseconds; absent means the subscription's backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
    /// Extend a lease.
    Extend {
        /// The delivery.
        #[serde(flatten)]
        lease: LeaseRef,
        /// New lease length from now, milliseconds.
        by_ms: u64,
    },
    /// Give up on a delivery (dead-letter or terminate).
    Term {
        /// The delivery.
        #[serde(flatten)]
        lease: LeaseRef,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Give deliveries back unseen: the client never handed them to its reader (they were still
    /// buffered when the stream stopped), so they are available again at once and their attempt is not
    /// counted. Leases that are no longer current are skipped. Send it before `unsubscribe`.
    Release {
        /// The deliveries.
        leases: Vec<LeaseRef>,
    },
    /// Move a subscription.
    Seek {
        /// Subscription.
        subscription: Name,
        /// Where to.
        target: SeekSpec,
    },
    /// Capture a subscription's ack state under a name; answers the snapshot.
    CreateSnapshot {
        /// The snapshot's name.
        snapshot: Name,
        /// The subscription.
        subscription: Name,
        /// How long it lives, in milliseconds: absent = the default (7 days), 0 = never expires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// List snapshots; answers an array.
    Snapshots,
    /// Remove a snapshot.
    DeleteSnapshot {
        /// Its name.
        snapshot: Name,
    },
    /// Move a subscription to a snapshot's ack state; answers `{"count": next seq}` like `seek`.
    SeekSnapshot {
        /// Subscription (of the snapshot's topic).
        subscription: Name,
        /// Snapshot.
        snapshot: Name,
    },
    /// Read a topic's log.
    Browse {
        /// Topic.
        topic: Name,
        /// From where.
        from: BrowseSpec,
        /// Most messages.
        max: usize,
    },
    /// Per-message ack state.
    Peek {
        /// Subscription.
        subscription: Name,
        /// First seq to show (the ack floor + 1 when lower).
        #[serde(default)]
        from: u64,
        /// Most messages.
        limit: usize,
    },
    /// Engine-wide totals and server state.
    Stats,
    /// Ask the server to shut down (needs the token when the server has one).
    Shutdown,
}

/// Which delivery a settle names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    /// Subscription.
    pub subscription: Name,
    /// Partition.
    #[serde(default)]
    pub partition: u32,
    /// Seq.
    pub seq: u64,
    /// Lease token from the delivery.
    pub lease: u64,
}

/// What `subscribe` asks for (the same choices as `Broker::subscribe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeSpec {
    /// Subjects (live taps) or the one topic (history, durable subscriptions).
    pub patterns: Vec<Pattern>,
    /// Join this durable subscription (created when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Name>,
    /// Read history from here (needs one topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<StartPosition>,
    /// Ack mode for a subscription this creates.
    #[serde(default = "ack_none")]
    pub ack: AckMode,
    /// Consumer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Credit: most unacked deliveries outstanding at the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u32>,
    /// Most bytes of messages the server holds for this stream at once (capped by the server's
    /// `max_stream_bytes`, which is also the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch_bytes: Option<u64>,
    /// The client grants room back with `credit` frames as it takes deliveries: the server sends at
    /// most `prefetch` items the client has not granted back, so the client never has to stop reading
    /// its socket to hold a slow stream back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub credit: bool,
    /// The most deliveries the stream is ever sent (a total credit): the server leases no more than
    /// this many for it, so a client that stops after N holds nothing it will not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Only this partition (a history read from `P:SEQ`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

fn ack_none() -> AckMode {
    AckMode::None
}

/// Where `seek` moves a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeekSpec {
    /// Oldest retained.
    Start,
    /// After the newest.
    End,
    /// A seq (of every partition).
    Seq(u64),
    /// A publish time.
    Time(Timestamp),
    /// A seq of one partition; only that partition moves.
    At {
        /// Partition.
        partition: u32,
        /// Seq.
        seq: u64,
    },
}

/// Where `browse` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrowseSpec {
    /// From a seq.
    Seq(u64),
    /// From a publish time.
    Time(Timestamp),
    /// The newest n.
    Last(u64),
    /// From a seq of one partition (only that partition is read).
    At {
        /// Partition.
        partition: u32,
        /// Seq.
        seq: u64,
    },
}

/// A topic to create; absent fields take the engine defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TopicSpec {
    /// Name.
    pub name: Option<Name>,
    /// Captured subjects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Pattern>,
    /// Most messages kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msgs: Option<u64>,
    /// Most bytes kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Longest a message is kept, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// What a full topic does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<Discard>,
    /// Largest message accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_bytes: Option<u32>,
    /// msg_id dedup window, milliseconds (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window_ms: Option<u64>,
    /// When a publish returns on a durable server: `always`, `batch`, `interval:DURATION`, `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    /// Segment file size on a durable server, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// Number of partitions (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Retention policy: `limits` (default), `interest` or `work_queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::model::RetentionPolicy>,
    /// Most messages kept per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msgs_per_key: Option<u64>,
}

impl TopicSpec {
    /// The engine configuration this spec describes.
    pub fn to_config(&self) -> Result<TopicConfig, String> {
        let name = self.name.clone().ok_or("a topic spec needs a name")?;
        let mut config = TopicConfig::new(name);
        config.subjects = self.subjects.clone();
        let mut limits = Limits::default();
        if self.max_msgs.is_some() {
            limits.max_msgs = self.max_msgs.filter(|&n| n > 0);
        }
        if self.max_bytes.is_some() {
            limits.max_bytes = self.max_bytes.filter(|&n| n > 0);
        }
        if let Some(ms) = self.max_age_ms {
            limits.max_age = (ms > 0).then(|| Duration::from_millis(ms));
        }
        config.limits = limits;
        if let Some(d) = self.discard {
            config.discard = d;
        }
        if let Some(m) = self.max_msg_bytes {
            config.max_msg_bytes = m;
        }
        if let Some(ms) = self.dedup_window_ms {
            config.dedup_window = Duration::from_millis(ms);
        }
        if let Some(d) = &self.durability {
            config.durability = d.parse()?;
        }
        if let Some(b) = self.segment_bytes {
            config.segment_bytes = b;
        }
        if let Some(n) = self.partitions {
            config.partitions = n;
        }
        if let Some(r) = self.retention {
            config.retention = r;
        }
        config.limits.max_msgs_per_key = self.max_msgs_per_key;
        Ok(config)
    }
}

/// A subscription to create; absent fields take the engine defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    /// Name.
    pub name: Name,
    /// Topic.
    pub topic: Name,
    /// Subject filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Pattern>,
    /// Attribute filter expression (docs/FILTERS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_filter: Option<String>,
    /// Start position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartPosition>,
    /// Ack mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckMode>,
    /// Lease length, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_deadline_ms: Option<u64>,
    /// Failures before dead-lettering (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<Name>,
    /// Most in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Ephemeral: deleted after this long without consumers, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_ttl_ms: Option<u64>,
    /// When an ack returns on a durable server: `sync` (after fsync) or `async`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_durability: Option<crate::model::AckDurability>,
    /// How long a failed delivery waits before it is delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<crate::model::Backoff>,
    /// The longest a lease may be extended to in all, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lease_ms: Option<u64>,
    /// HTTP push: `{"endpoint": URL, "headers": {NAME: VALUE}}`; the server POSTs each message there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::model::PushConfig>,
    /// Ordering: `none`, `per_key` or `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<crate::model::OrderingMode>,
    /// Assignment: `shared` (default), `partition_exclusive` or `single_active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<crate::model::Assignment>,
    /// Unacked messages older than this expire in it, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_retention_ms: Option<u64>,
    /// Dead-letter messages that expire unacked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_letter_on_expiry: bool,
    /// Acks do not delete messages of an Interest/WorkQueue topic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_acked: bool,
}

impl SubscriptionSpec {
    /// The engine configuration this spec describes.
    pub fn to_config(&self) -> SubscriptionConfig {
        let mut c = SubscriptionConfig::new(self.name.clone(), self.topic.clone());
        c.filter = self.filter.clone();
        c.attribute_filter = self.attribute_filter.clone();
        if let Some(s) = self.start {
            c.start = s;
        }
        if let Some(a) = self.ack {
            c.ack = a;
        }
        if let Some(ms) = self.ack_deadline_ms {
            c.ack_deadline = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_deliveries {
            c.max_deliveries = n;
        }
        c.dead_letter = self.dead_letter.clone();
        if let Some(n) = self.max_in_flight {
            c.max_in_flight = n;
        }
        if let Some(ms) = self.inactive_ttl_ms {
            c.lifetime = Lifetime::Ephemeral { inactive_ttl: Duration::from_millis(ms) };
        }
        if let Some(d) = self.ack_durability {
            c.ack_durability = d;
        }
        if let Some(b) = &self.backoff {
            c.backoff = b.clone();
        }
        if let Some(ms) = self.max_lease_ms {
            c.max_lease = Duration::from_millis(ms);
        }
        c.push = self.push.clone();
        if let Some(o) = self.ordering {
            c.ordering = o;
        }
        if let Some(a) = self.assignment {
            c.assignment = a;
        }
        c.message_retention = self.message_retention_ms.map(Duration::from_millis);
        c.dead_letter_on_expiry = self.dead_letter_on_expiry;
        c.retain_acked = self.retain_acked;
        c
    }

    /// The spec of an engine configuration (the fields a spec can carry).
    pub fn from_config(c: &SubscriptionConfig) -> Self {
        SubscriptionSpec {
            name: c.name.clone(),
            topic: c.topic.clone(),
            filter: c.filter.clone(),
            attribute_filter: c.attribute_filter.clone(),
            start: Some(c.start),
            ack: Some(c.ack),
            ack_deadline_ms: Some(u64::try_from(c.ack_deadline.as_millis()).unwrap_or(u64::MAX)),
            max_deliveries: Some(c.max_deliveries),
            dead_letter: c.dead_letter.clone(),
            max_in_flight: Some(c.max_in_flight),
            inactive_ttl_ms: match c.lifetime {
                Lifetime::Ephemeral { inactive_ttl } => {
                    Some(u64::try_from(inactive_ttl.as_millis()).unwrap_or(u64::MAX))
                }
                Lifetime::Durable => None,
            },
            ack_durability: Some(c.ack_durability),
            backoff: Some(c.backoff.clone()),
            max_lease_ms: Some(u64::try_from(c.max_lease.as_millis()).unwrap_or(u64::MAX)),
            push: c.push.clone(),
            ordering: (c.ordering != crate::model::OrderingMode::None).then_some(c.ordering),
            assignment: (c.assignment != crate::model::Assignment::Shared).then_some(c.assignment),
            message_retention_ms: c
                .message_retention
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            dead_letter_on_expiry: c.dead_letter_on_expiry,
            retain_acked: c.retain_acked,
        }
    }
}

/// Everything a server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        /// The hello's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Protocol version spoken.
        version: u32,
        /// Server name and version.
        server: String,
        /// The limits this server enforces.
        limits: ServerLimits,
        /// Binary frames are on for this connection (the client offered them).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
        /// Binary `settle` and `credit` frames are on for this connection (the client offered them).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary_settle: bool,
        /// `assigned` and `revoked` frames are on for this connection (the client asked for them).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        assignments: bool,
    },
    /// A request succeeded.
    Ok {
        /// The request's id.
        id: u64,
        /// What it returned, when anything; its shape depends on the request (docs/PROTOCOL.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
    },
    /// A request (or the connection) failed.
    Error {
        /// The request's id, when the failure belongs to one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Numbered code (docs/PROTOCOL.md lists them).
        code: u16,
        /// What went wrong, for people.
        message: String,
        /// For `publish_batch`: the index of the message that failed (the ones before it were published).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
    },
    /// Messages for a stream started by `subscribe`.
    Deliver {
        /// The stream.
        sid: u64,
        /// The subscription they came through, when they carry leases.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscription: Option<Name>,
        /// The messages, in order.
        messages: Vec<Delivered>,
    },
    /// The stream fell behind and this many messages were dropped before reaching it (taps).
    Lagged {
        /// The stream.
        sid: u64,
        /// How many.
        skipped: u64,
    },
    /// The stream's consumer now reads these partitions alone (`partition_exclusive`: a rebalance gave
    /// them; `single_active`: it is the active consumer). Sent only to clients that asked in `hello`.
    Assigned {
        /// The stream.
        sid: u64,
        /// Partition numbers, ascending; empty for a group member left without one.
        partitions: Vec<u32>,
    },
    /// A rebalance took these partitions from the stream's consumer; its unsettled deliveries of them
    /// go to their new owner. Sent only to clients that asked in `hello`.
    Revoked {
        /// The stream.
        sid: u64,
        /// Partition numbers, ascending.
        partitions: Vec<u32>,
    },
    /// The server ended a stream (its subscription was deleted, or the server is stopping).
    Closed {
        /// The stream.
        sid: u64,
        /// Why.
        reason: String,
    },
}

/// One delivered message: the envelope plus its lease, when it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// The message.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// Lease token to settle it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// When the lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

/// The `result` of `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReply {
    /// Stream id for the `deliver` frames.
    pub sid: u64,
}

/// The `result` of `seek` (the next seq) and `purge_topic` (messages removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReply {
    /// The number.
    pub count: u64,
}

/// Limits a server announces in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// Largest frame accepted, bytes.
    pub max_frame_bytes: usize,
    /// Largest message (payload + key + headers) accepted, bytes.
    pub max_message_bytes: usize,
    /// Most streams (`subscribe`) per connection.
    pub max_subscriptions: usize,
    /// Most unacked deliveries per connection (sum of prefetch).
    pub max_in_flight: u32,
    /// Most bytes of messages the server holds for one stream (0 from servers that do not say).
    #[serde(default)]
    pub max_stream_bytes: u64,
    /// Most bytes the server holds for one connection, all its streams and answers together.
    #[serde(default)]
    pub max_connection_bytes: u64,
}

/// `stats`: the engine's totals plus the server's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Engine totals.
    pub engine: EngineStats,
    /// Open connections past `hello`.
    pub connections: u64,
    /// Connections in their handshake or before `hello`.
    #[serde(default)]
    pub pending_connections: u64,
    /// Bytes the server holds for its connections: messages pushed to their streams and frames not yet
    /// written to their sockets.
    #[serde(default)]
    pub held_bytes: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Server version.
    pub version: String,
    /// Process id.
    pub pid: u32,
}
