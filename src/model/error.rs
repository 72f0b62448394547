//! The engine's error type: every refusal says what was wrong, quotes the value, and says what to do.

use std::time::Duration;

use super::name::{Name, NameError};

/// Why an engine operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The durable store failed; the text names the file and what went wrong.
    #[error("storage: {0}")]
    Storage(String),
    /// A name or pattern failed validation.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// No topic has this name.
    #[error("no topic named \"{0}\"; list topics with `pubsub topics`")]
    NoSuchTopic(Name),
    /// A topic with this name exists already.
    #[error("topic \"{0}\" already exists")]
    TopicExists(Name),
    /// Two topics would capture the same subject, so a message would have two homes.
    #[error(
        "topic \"{topic}\" would capture \"{pattern}\", which overlaps \"{other_pattern}\" of topic \"{other}\"; a subject may belong to one topic only"
    )]
    SubjectOverlap {
        /// The topic being created.
        topic: Name,
        /// Its pattern that overlaps.
        pattern: String,
        /// The existing topic.
        other: Name,
        /// The existing topic's pattern.
        other_pattern: String,
    },
    /// No subscription has this name.
    #[error("no subscription named \"{0}\"; list them with `pubsub subs`")]
    NoSuchSubscription(Name),
    /// A subscription with this name exists already.
    #[error("subscription \"{0}\" already exists")]
    SubscriptionExists(Name),
    /// Nothing captures this subject and auto-create is off.
    #[error("no topic captures subject \"{0}\" and auto-create is off; create a topic for it first")]
    Unroutable(Name),
    /// A `discard = new` topic is at a limit.
    #[error("topic \"{topic}\" is full ({limit}) and discards new messages")]
    TopicFull {
        /// The topic.
        topic: Name,
        /// Which limit, e.g. "max_msgs 5".
        limit: String,
    },
    /// The message is larger than the topic accepts.
    #[error("message of {size} bytes is larger than topic \"{topic}\" accepts ({max} bytes)")]
    MessageTooLarge {
        /// The topic.
        topic: Name,
        /// The message size (payload + key + headers).
        size: usize,
        /// The topic's limit.
        max: u32,
    },
    /// An ack, nack, extend or term named a lease that is no longer current.
    #[error(
        "stale lease for seq {seq} on subscription \"{subscription}\": the message was redelivered or its deadline passed"
    )]
    StaleLease {
        /// The subscription.
        subscription: Name,
        /// The message.
        seq: u64,
    },
    /// An ack, nack, extend or term named a lease that this subscription never handed out.
    #[error(
        "lease {lease} for seq {seq} was never handed out by subscription \"{subscription}\" (copy leases whole: a tool that reads JSON numbers as doubles rounds large ones)"
    )]
    UnknownLease {
        /// The subscription.
        subscription: Name,
        /// The message.
        seq: u64,
        /// The lease named.
        lease: u64,
    },
    /// The message was never delivered to this subscription, so there is nothing to settle.
    #[error("seq {seq} has not been delivered on subscription \"{subscription}\"")]
    NotDelivered {
        /// The subscription.
        subscription: Name,
        /// The message.
        seq: u64,
    },
    /// The partition does not exist.
    #[error("topic \"{topic}\" has no partition {partition}")]
    NoSuchPartition {
        /// The topic.
        topic: Name,
        /// The partition asked for.
        partition: u32,
    },
    /// The operation needs an ack mode the subscription does not use.
    #[error("subscription \"{subscription}\" uses ack mode {mode}; {what} needs {needs}")]
    WrongAckMode {
        /// The subscription.
        subscription: Name,
        /// Its ack mode.
        mode: String,
        /// What was attempted.
        what: &'static str,
        /// What mode it needs.
        needs: &'static str,
    },
    /// A push consumer with this id is already attached.
    #[error(
        "consumer \"{consumer}\" is already attached to subscription \"{subscription}\"; use another consumer id"
    )]
    ConsumerExists {
        /// The subscription.
        subscription: Name,
        /// The consumer id.
        consumer: super::message::ConsumerId,
    },
    /// A message of a batch failed; the ones before it were published.
    #[error(
        "message {index} of the batch (counting from 0) was refused: {source}; the {index} before it were published"
    )]
    Batch {
        /// Index of the message that failed.
        index: usize,
        /// Why.
        source: Box<EngineError>,
    },
    /// No snapshot of that name.
    #[error("no snapshot named \"{0}\"; `pubsub snapshot ls` lists them")]
    NoSuchSnapshot(Name),
    /// The snapshot expired (its `--ttl` ran out) and the engine removed it.
    #[error(
        "snapshot \"{name}\" expired at {at} and was removed; take a new one with `pubsub snapshot create NAME --subscription SUB` (`--ttl DUR` or `--ttl never` sets how long it lives; the default is 7 days)"
    )]
    SnapshotExpired {
        /// The snapshot.
        name: Name,
        /// When it expired (RFC 3339).
        at: String,
    },
    /// A snapshot of that name exists.
    #[error("snapshot \"{0}\" already exists; remove it first (`pubsub snapshot rm`) or choose another name")]
    SnapshotExists(Name),
    /// A setting is out of range or contradicts another.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A setting names something the engine does not implement yet.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A long-poll ended because the engine or subscription went away.
    #[error("subscription \"{0}\" was deleted while waiting")]
    Gone(Name),
    /// A wait was given a duration too large to represent.
    #[error("wait of {0:?} is too long")]
    WaitTooLong(Duration),
}

impl EngineError {
    /// The error of the one message a single publish sent, without the batch around it.
    pub fn unbatched(self) -> EngineError {
        match self {
            EngineError::Batch { source, .. } => *source,
            other => other,
        }
    }
}
