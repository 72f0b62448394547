//! Engine events (advisories) published to reserved `$sys.…` subjects, the JetStream-advisory model.
//!
//! They reach taps only (never a topic), so watching them costs nothing when nobody listens.

use serde_json::json;

use super::message::ConsumerId;
use super::name::Name;

/// Something the engine did that a watcher may want to see.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A lease ran out before an ack.
    DeadlineExpired {
        /// Subscription.
        subscription: Name,
        /// Message.
        seq: u64,
        /// The attempt that expired.
        attempt: u32,
        /// Who held the lease.
        consumer: Option<ConsumerId>,
    },
    /// A message failed `max_deliveries` times.
    MaxDeliveries {
        /// Subscription.
        subscription: Name,
        /// Message.
        seq: u64,
        /// Attempts made.
        attempt: u32,
    },
    /// A message was terminated without a dead-letter topic.
    Terminated {
        /// Subscription.
        subscription: Name,
        /// Message.
        seq: u64,
        /// Attempts made.
        attempt: u32,
        /// `term` or `max_deliveries`.
        reason: &'static str,
    },
    /// A copy went to the dead-letter topic.
    DeadLettered {
        /// Subscription.
        subscription: Name,
        /// Message.
        seq: u64,
        /// Attempts made.
        attempt: u32,
        /// Where the copy went.
        dead_letter: Name,
        /// `term` or `max_deliveries`.
        reason: &'static str,
    },
    /// A subscription was moved to a new position.
    Seek {
        /// Subscription.
        subscription: Name,
        /// The first seq it will deliver next.
        next_seq: u64,
    },
    /// A consumer joined a subscription.
    ConsumerAttached {
        /// Subscription.
        subscription: Name,
        /// Consumer.
        consumer: ConsumerId,
    },
    /// A consumer left; its in-flight messages became available again.
    ConsumerDetached {
        /// Subscription.
        subscription: Name,
        /// Consumer.
        consumer: ConsumerId,
        /// How many in-flight messages went back.
        requeued: u32,
    },
    /// A subscription's `message_retention` expired unsettled messages there (the ones not
    /// dead-lettered: those have a `DeadLettered` event each).
    MessagesExpired {
        /// Subscription.
        subscription: Name,
        /// How many expired in this sweep.
        count: u64,
    },
    /// Retention removed messages.
    TopicExpired {
        /// Topic.
        topic: Name,
        /// How many were removed in this sweep.
        count: u64,
    },
    /// A `discard = new` topic refused a publish.
    DiscardNewRejected {
        /// Topic.
        topic: Name,
    },
    /// A tap fell behind and lost messages.
    TapLagged {
        /// Tap id.
        tap: u64,
        /// Messages lost.
        skipped: u64,
    },
    /// A topic was created (explicitly or by a first publish).
    TopicCreated {
        /// Topic.
        topic: Name,
    },
    /// A topic was deleted.
    TopicDeleted {
        /// Topic.
        topic: Name,
    },
    /// A subscription was created.
    SubscriptionCreated {
        /// Subscription.
        subscription: Name,
        /// Its topic.
        topic: Name,
    },
    /// A subscription was deleted.
    SubscriptionDeleted {
        /// Subscription.
        subscription: Name,
    },
}

impl EngineEvent {
    /// The reserved subject the event is published on.
    pub fn subject(&self) -> String {
        match self {
            EngineEvent::DeadlineExpired { subscription, .. } => sub(subscription, "deadline_expired"),
            EngineEvent::MaxDeliveries { subscription, .. } => sub(subscription, "max_deliveries"),
            EngineEvent::Terminated { subscription, .. } => sub(subscription, "terminated"),
            EngineEvent::DeadLettered { subscription, .. } => sub(subscription, "dead_lettered"),
            EngineEvent::Seek { subscription, .. } => sub(subscription, "seek"),
            EngineEvent::ConsumerAttached { subscription, .. } => sub(subscription, "consumer_attached"),
            EngineEvent::ConsumerDetached { subscription, .. } => sub(subscription, "consumer_detached"),
            EngineEvent::SubscriptionCreated { subscription, .. } => sub(subscription, "created"),
            EngineEvent::SubscriptionDeleted { subscription } => sub(subscription, "deleted"),
            EngineEvent::MessagesExpired { subscription, .. } => sub(subscription, "expired"),
            EngineEvent::TopicExpired { topic, .. } => format!("$sys.topic.{topic}.expired"),
            EngineEvent::DiscardNewRejected { topic } => format!("$sys.topic.{topic}.discard_new_rejected"),
            EngineEvent::TopicCreated { topic } => format!("$sys.topic.{topic}.created"),
            EngineEvent::TopicDeleted { topic } => format!("$sys.topic.{topic}.deleted"),
            EngineEvent::TapLagged { tap, .. } => format!("$sys.tap.{tap}.lagged"),
        }
    }

    /// A short subject for events whose full subject would exceed the name limits.
    pub fn fallback_subject(&self) -> &'static str {
        match self {
            EngineEvent::TopicExpired { .. }
            | EngineEvent::DiscardNewRejected { .. }
            | EngineEvent::TopicCreated { .. }
            | EngineEvent::TopicDeleted { .. } => "$sys.topic.long_name",
            EngineEvent::TapLagged { .. } => "$sys.tap.lagged",
            _ => "$sys.sub.long_name",
        }
    }

    /// The event as a JSON body.
    pub fn payload(&self) -> serde_json::Value {
        match self {
            EngineEvent::DeadlineExpired { subscription, seq, attempt, consumer } => json!({
                "subscription": subscription.as_str(), "seq": seq, "attempt": attempt,
                "consumer": consumer.as_deref(), "reason": "deadline_expired"
            }),
            EngineEvent::MaxDeliveries { subscription, seq, attempt } => json!({
                "subscription": subscription.as_str(), "seq": seq, "attempt": attempt,
                "reason": "max_deliveries"
            }),
            EngineEvent::Terminated { subscription, seq, attempt, reason } => json!({
                "subscription": subscription.as_str(), "seq": seq, "attempt": attempt, "reason": reason
            }),
            EngineEvent::DeadLettered { subscription, seq, attempt, dead_letter, reason } => json!({
                "subscription": subscription.as_str(), "seq": seq, "attempt": attempt,
                "dead_letter": dead_letter.as_str(), "reason": reason
            }),
            EngineEvent::Seek { subscription, next_seq } => {
                json!({ "subscription": subscription.as_str(), "next_seq": next_seq })
            }
            EngineEvent::ConsumerAttached { subscription, consumer } => {
                json!({ "subscription": subscription.as_str(), "consumer": &**consumer })
            }
            EngineEvent::ConsumerDetached { subscription, consumer, requeued } => json!({
                "subscription": subscription.as_str(), "consumer": &**consumer, "requeued": requeued
            }),
            EngineEvent::MessagesExpired { subscription, count } => json!({
                "subscription": subscription.as_str(), "count": count, "reason": "message_retention"
            }),
            EngineEvent::TopicExpired { topic, count } => json!({ "topic": topic.as_str(), "count": count }),
            EngineEvent::DiscardNewRejected { topic } | EngineEvent::TopicCreated { topic } => {
                json!({ "topic": topic.as_str() })
            }
            EngineEvent::TopicDeleted { topic } => json!({ "topic": topic.as_str() }),
            EngineEvent::TapLagged { tap, skipped } => json!({ "tap": tap, "skipped": skipped }),
            EngineEvent::SubscriptionCreated { subscription, topic } => {
                json!({ "subscription": subscription.as_str(), "topic": topic.as_str() })
            }
            EngineEvent::SubscriptionDeleted { subscription } => {
                json!({ "subscription": subscription.as_str() })
            }
        }
    }
}

fn sub(name: &Name, what: &str) -> String {
    format!("$sys.sub.{name}.{what}")
}
