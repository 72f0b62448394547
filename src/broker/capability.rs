//! What a broker can do, declared by each backend and shown to users instead of faked values.

use std::fmt;

use serde::Serialize;

/// One thing a broker may or may not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Per-message ack / nack / extend / term.
    Ack,
    /// Reading history and replaying it.
    Replay,
    /// Subscriber lag and backlog metrics.
    Lag,
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
    /// Moving a subscription's position.
    Seek,
    /// Per-message ack state.
    Peek,
    /// Dead-letter topics.
    DeadLetter,
    /// Creating, listing and deleting topics.
    TopicAdmin,
}

impl Capability {
    /// Every capability, in display order.
    pub const ALL: [Capability; 12] = [
        Capability::Ack,
        Capability::Replay,
        Capability::Lag,
        Capability::Patterns,
        Capability::Headers,
        Capability::Persistence,
        Capability::CompetingConsumers,
        Capability::Partitions,
        Capability::Seek,
        Capability::Peek,
        Capability::DeadLetter,
        Capability::TopicAdmin,
    ];

    /// The user-facing name.
    pub fn label(self) -> &'static str {
        match self {
            Capability::Ack => "acks",
            Capability::Replay => "replay",
            Capability::Lag => "lag",
            Capability::Patterns => "patterns",
            Capability::Headers => "headers",
            Capability::Persistence => "persistence",
            Capability::CompetingConsumers => "competing consumers",
            Capability::Partitions => "partitions",
            Capability::Seek => "seek",
            Capability::Peek => "ack-state inspection",
            Capability::DeadLetter => "dead-letter topics",
            Capability::TopicAdmin => "topic administration",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The set of capabilities a backend declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Capabilities(u16);

impl Capabilities {
    /// A set with these capabilities.
    pub fn of(caps: &[Capability]) -> Self {
        Capabilities(caps.iter().fold(0, |bits, c| bits | bit(*c)))
    }

    /// Every capability (the local engine).
    pub fn all() -> Self {
        Capabilities::of(&Capability::ALL)
    }

    /// Whether `cap` is supported.
    pub fn has(self, cap: Capability) -> bool {
        self.0 & bit(cap) != 0
    }

    /// The supported capabilities, in display order.
    pub fn list(self) -> Vec<Capability> {
        Capability::ALL.into_iter().filter(|c| self.has(*c)).collect()
    }
}

fn bit(cap: Capability) -> u16 {
    1 << (cap as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_answer_membership() {
        let caps = Capabilities::of(&[Capability::Ack, Capability::Lag]);
        assert!(caps.has(Capability::Ack));
        assert!(caps.has(Capability::Lag));
        assert!(!caps.has(Capability::Replay));
        assert_eq!(caps.list(), vec![Capability::Ack, Capability::Lag]);
        assert_eq!(Capabilities::all().list().len(), Capability::ALL.len());
    }
}
