//! Messages as readers see them, what a publisher hands in, and deliveries with their leases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::clock::Timestamp;
use super::name::Name;

/// Message attributes; ordered so that output is stable.
pub type Headers = BTreeMap<String, String>;

/// The optional parts of a message, kept behind one pointer so that the common message without key,
/// id or headers costs nothing for them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageExtra {
    /// Ordering and partition key.
    pub key: Option<Bytes>,
    /// Publisher idempotency key.
    pub msg_id: Option<String>,
    /// Attributes.
    pub headers: Headers,
}

impl MessageExtra {
    /// `None` when nothing is set, so that plain messages carry no allocation.
    pub fn pack(key: Option<Bytes>, msg_id: Option<String>, headers: Headers) -> Option<Arc<Self>> {
        if key.is_none() && msg_id.is_none() && headers.is_empty() {
            None
        } else {
            Some(Arc::new(MessageExtra { key, msg_id, headers }))
        }
    }

    /// Bytes this part adds to a message's size for limits.
    pub(crate) fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// One message of a topic as a reader sees it. Cloning shares the payload and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic that stores it; for tap-only traffic ($sys events, unroutable subjects) the subject.
    pub topic: Name,
    /// The partition within the topic.
    pub partition: u32,
    /// Position in the partition, 1-based, gap-free at append; 0 for messages never stored.
    pub seq: u64,
    /// Engine time of the publish.
    pub publish_time: Timestamp,
    /// The address it was published to, when it differs from the topic name (see [`Message::subject`]).
    pub(crate) subject: Option<Name>,
    /// Key, msg_id and headers, when any is set.
    pub extra: Option<Arc<MessageExtra>>,
    /// The body.
    pub payload: Bytes,
}

static NO_HEADERS: Headers = BTreeMap::new();

/// The header that names where a reply to a message goes.
pub const REPLY_TO: &str = "reply-to";

impl Message {
    /// A message; the subject is stored only when it differs from the topic name.
    pub fn new(
        topic: Name,
        partition: u32,
        seq: u64,
        publish_time: Timestamp,
        subject: Name,
        extra: Option<Arc<MessageExtra>>,
        payload: Bytes,
    ) -> Self {
        let subject = (subject != topic).then_some(subject);
        Message { topic, partition, seq, publish_time, subject, extra, payload }
    }

    /// The address it was published to.
    pub fn subject(&self) -> &Name {
        self.subject.as_ref().unwrap_or(&self.topic)
    }

    /// The ordering key, if any.
    pub fn key(&self) -> Option<&Bytes> {
        self.extra.as_ref().and_then(|e| e.key.as_ref())
    }

    /// The publisher's idempotency key, if any.
    pub fn msg_id(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.msg_id.as_deref())
    }

    /// The attributes (empty when none).
    pub fn headers(&self) -> &Headers {
        self.extra.as_ref().map_or(&NO_HEADERS, |e| &e.headers)
    }

    /// The same message with one more header (a broker's own detail, such as where to reply).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let mut extra = self.extra.as_deref().cloned().unwrap_or_default();
        extra.headers.insert(name.into(), value.into());
        self.extra = Some(Arc::new(extra));
        self
    }

    /// Where an answer to this message goes (the `reply-to` header: a NATS request's reply subject,
    /// an AMQP message's reply-to property), when it asks for one.
    pub fn reply_to(&self) -> Option<&str> {
        self.headers().get(REPLY_TO).map(String::as_str)
    }

    /// Size counted against limits: payload + key + headers.
    pub fn size(&self) -> usize {
        self.payload.len() + self.extra.as_ref().map_or(0, |e| e.size())
    }
}

/// What a publisher asks the engine to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Where to publish; routed to the topic that captures it.
    pub subject: Name,
    /// Ordering and partition key.
    pub key: Option<Bytes>,
    /// Idempotency key: a repeat within the topic's dedup window returns the original seq.
    pub msg_id: Option<String>,
    /// Attributes.
    pub headers: Headers,
    /// The body.
    pub payload: Bytes,
    /// How the broker should publish it, beyond the message itself; not part of the message.
    pub options: PublishOptions,
}

/// Publish settings some brokers honour. A backend refuses a setting it cannot honour rather than
/// dropping it, so none of them travels as a disguised header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Delivery guarantee (MQTT QoS 0, 1 or 2); the connection's default when `None`.
    pub qos: Option<u8>,
    /// Keep it as the topic's retained message (MQTT).
    pub retain: bool,
    /// Publish to this partition instead of the one the key picks (Kafka).
    pub partition: Option<u32>,
    /// Priority 0–255 (AMQP).
    pub priority: Option<u8>,
    /// Expire it if not delivered within this long (AMQP expiration, MQTT 5 message expiry).
    pub ttl: Option<Duration>,
}

/// One publish setting, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOption {
    /// `--qos`.
    Qos,
    /// `--retain`.
    Retain,
    /// `--partition`.
    Partition,
    /// `--priority`.
    Priority,
    /// `--ttl`.
    Ttl,
}

impl PublishOption {
    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            PublishOption::Qos => "--qos",
            PublishOption::Retain => "--retain",
            PublishOption::Partition => "--partition",
            PublishOption::Priority => "--priority",
            PublishOption::Ttl => "--ttl",
        }
    }
}

impl PublishOptions {
    /// The settings that are set, in flag order.
    pub fn set(&self) -> Vec<PublishOption> {
        let mut set = Vec::new();
        if self.qos.is_some() {
            set.push(PublishOption::Qos);
        }
        if self.retain {
            set.push(PublishOption::Retain);
        }
        if self.partition.is_some() {
            set.push(PublishOption::Partition);
        }
        if self.priority.is_some() {
            set.push(PublishOption::Priority);
        }
        if self.ttl.is_some() {
            set.push(PublishOption::Ttl);
        }
        set
    }

    /// The first setting that is set but not among `honoured`.
    pub fn first_unhonoured(&self, honoured: &[PublishOption]) -> Option<PublishOption> {
        self.set().into_iter().find(|o| !honoured.contains(o))
    }
}

impl PublishRequest {
    /// A message with only a subject and a payload.
    pub fn new(subject: Name, payload: impl Into<Bytes>) -> Self {
        PublishRequest {
            subject,
            key: None,
            msg_id: None,
            headers: Headers::new(),
            payload: payload.into(),
            options: PublishOptions::default(),
        }
    }

    /// The same message with a key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same message with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The same message with an idempotency key.
    pub fn with_msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// Size counted against limits.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// What a publish did. The default is a publish the broker took without storing or numbering it (live
/// subscribers only), which is what brokers without a log answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishReceipt {
    /// The topic that stored it, or `None` when only taps received it.
    pub topic: Option<Name>,
    /// The partition it went to.
    pub partition: u32,
    /// Its seq; 0 when it was not stored.
    pub seq: u64,
    /// How many taps it reached (Redis PUBLISH's reply).
    pub taps: u32,
    /// True when a repeated `msg_id` returned the original seq instead of appending.
    pub duplicate: bool,
    /// True when the broker said nothing took it (AMQP: a mandatory publish returned as unroutable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unrouted: bool,
}

/// Identifies one consumer of a subscription.
pub type ConsumerId = Arc<str>;

/// Enough to ack, nack, extend or term one delivery: where it is and which lease it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckRef {
    /// The partition.
    pub partition: u32,
    /// The message.
    pub seq: u64,
    /// The lease token handed out with this delivery; a later delivery of the same message gets another.
    pub lease: u64,
}

/// A message handed to a consumer of a subscription. The subscription is the one fetched from or
/// attached to; it is not repeated in every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Which delivery of this message this is, from 1.
    pub attempt: u32,
    /// The lease to settle it with; `None` under ack mode none.
    pub lease: Option<AckRef>,
    /// When the lease runs out; `None` under ack mode none.
    pub deadline: Option<Timestamp>,
}

impl Delivery {
    /// Whether this message was delivered before (AMQP's redelivered flag).
    pub fn redelivered(&self) -> bool {
        self.attempt > 1
    }
}
