//! What a broker can do, declared by each backend for the broker and for each topic, and shown to users
//! as "not available on this broker (why)" instead of a faked value or a silent success.

use std::fmt;

use serde::Serialize;

use crate::model::Settle;

/// One thing a broker may or may not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Acknowledging a delivery so it is not delivered again.
    Ack,
    /// Giving a delivery back for redelivery now.
    Nack,
    /// Giving a delivery back to be redelivered after a delay.
    NackDelay,
    /// Keeping a lease longer.
    Extend,
    /// Giving up on a delivery for good (dead-lettering it where the topic has a dead-letter topic).
    Term,
    /// Redelivering what is not acked within a deadline, while its consumer is still there.
    AckDeadline,
    /// Acknowledging everything up to a position at once.
    CumulativeAck,
    /// Settling a delivery from another process (`pubsub ack SUB SEQ LEASE`).
    DetachedSettle,
    /// Request/reply with a reply subject.
    RequestReply,
    /// A retained last message per topic, given to each new subscriber.
    Retain,
    /// Reading history and replaying it.
    Replay,
    /// Moving a subscription's position.
    Seek,
    /// Subscriber lag and backlog metrics.
    Lag,
    /// Per-message ack state.
    Peek,
    /// Wildcard subscriptions.
    Patterns,
    /// Message headers.
    Headers,
    /// Messages survive a broker restart.
    Persistence,
    /// Several consumers sharing one subscription.
    CompetingConsumers,
    /// Partitioned topics.
    Partitions,
    /// Dead-letter topics.
    DeadLetter,
    /// Creating, listing and deleting topics.
    TopicAdmin,
}

impl Capability {
    /// Every capability, in display order.
    pub const ALL: [Capability; 21] = [
        Capability::Ack,
        Capability::Nack,
        Capability::NackDelay,
        Capability::Extend,
        Capability::Term,
        Capability::AckDeadline,
        Capability::CumulativeAck,
        Capability::DetachedSettle,
        Capability::RequestReply,
        Capability::Retain,
        Capability::Replay,
        Capability::Seek,
        Capability::Lag,
        Capability::Peek,
        Capability::Patterns,
        Capability::Headers,
        Capability::Persistence,
        Capability::CompetingConsumers,
        Capability::Partitions,
        Capability::DeadLetter,
        Capability::TopicAdmin,
    ];

    /// The user-facing name.
    pub fn label(self) -> &'static str {
        match self {
            Capability::Ack => "acks",
            Capability::Nack => "nack",
            Capability::NackDelay => "nack with delay",
            Capability::Extend => "lease extension",
            Capability::Term => "term",
            Capability::AckDeadline => "ack deadlines",
            Capability::CumulativeAck => "cumulative acks",
            Capability::DetachedSettle => "settling from another process",
            Capability::RequestReply => "request/reply",
            Capability::Retain => "retained messages",
            Capability::Replay => "history",
            Capability::Seek => "seek",
            Capability::Lag => "lag",
            Capability::Peek => "ack-state inspection",
            Capability::Patterns => "patterns",
            Capability::Headers => "headers",
            Capability::Persistence => "persistence",
            Capability::CompetingConsumers => "competing consumers",
            Capability::Partitions => "partitions",
            Capability::DeadLetter => "dead-letter topics",
            Capability::TopicAdmin => "topic administration",
        }
    }

    /// The capability a way of settling needs.
    pub fn of_settle(how: &Settle) -> Capability {
        match how {
            Settle::Ack => Capability::Ack,
            Settle::Nack(None) | Settle::Release => Capability::Nack,
            Settle::Nack(Some(_)) => Capability::NackDelay,
            Settle::Extend(_) => Capability::Extend,
            Settle::Term(_) => Capability::Term,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What the engine's model has no place for yet, or cannot promise through this handle: partitions
/// (one per topic until the engine turns them on), request/reply and retained messages (not in the
/// model), and persistence (a memory engine keeps nothing; a server does not say how it stores).
pub const ENGINE_LACKS: &[Capability] =
    &[Capability::Persistence, Capability::RequestReply, Capability::Retain];

/// A set of capabilities: a broker's, or one topic's on that broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Capabilities(u32);

impl Capabilities {
    /// A set with these capabilities.
    pub const fn of(caps: &[Capability]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < caps.len() {
            bits |= bit(caps[i]);
            i += 1;
        }
        Capabilities(bits)
    }

    /// Every capability.
    pub fn all() -> Self {
        Capabilities::of(&Capability::ALL)
    }

    /// This set and `caps`.
    #[must_use]
    pub const fn with(self, caps: &[Capability]) -> Self {
        Capabilities(self.0 | Capabilities::of(caps).0)
    }

    /// This set without `caps`.
    #[must_use]
    pub const fn without(self, caps: &[Capability]) -> Self {
        Capabilities(self.0 & !Capabilities::of(caps).0)
    }

    /// Whether `cap` is supported.
    pub const fn has(self, cap: Capability) -> bool {
        self.0 & bit(cap) != 0
    }

    /// The supported capabilities, in display order.
    pub fn list(self) -> Vec<Capability> {
        Capability::ALL.into_iter().filter(|c| self.has(*c)).collect()
    }
}

const fn bit(cap: Capability) -> u32 {
    1 << (cap as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn capability_sets_answer_membership() {
        let caps = Capabilities::of(&[Capability::Ack, Capability::Lag]);
        assert!(caps.has(Capability::Ack));
        assert!(caps.has(Capability::Lag));
        assert!(!caps.has(Capability::Replay));
        assert_eq!(caps.list(), vec![Capability::Ack, Capability::Lag]);
        assert_eq!(Capabilities::all().list().len(), Capability::ALL.len());
        let more = caps.with(&[Capability::Seek]).without(&[Capability::Ack]);
        assert_eq!(more.list(), vec![Capability::Seek, Capability::Lag]);
    }

    #[test]
    fn each_way_of_settling_names_its_own_capability() {
        assert_eq!(Capability::of_settle(&Settle::Ack), Capability::Ack);
        assert_eq!(Capability::of_settle(&Settle::Nack(None)), Capability::Nack);
        assert_eq!(Capability::of_settle(&Settle::Nack(Some(Duration::from_secs(1)))), Capability::NackDelay);
        assert_eq!(Capability::of_settle(&Settle::Extend(Duration::from_secs(1))), Capability::Extend);
        assert_eq!(Capability::of_settle(&Settle::Term(String::new())), Capability::Term);
    }
}
