//! What a subscriber receives from a broker and hands back to settle it: the client side of the delivery
//! state machine, shared by every backend, the wire protocol and the commands.

use std::time::Duration;

use super::clock::Timestamp;
use super::message::Message;
use super::name::Name;

/// What a caller hands back to settle a delivery; backend-specific parts travel in `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckToken {
    /// The subscription it was delivered through.
    pub subscription: Name,
    /// Partition.
    pub partition: u32,
    /// Position.
    pub seq: u64,
    /// Lease token (local engine) or delivery tag (AMQP).
    pub lease: u64,
    /// Reply subject or entry id where the broker settles by name (NATS, Redis Streams).
    pub reply: Option<String>,
}

/// How to settle a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done with it.
    Ack,
    /// Give it back, optionally after a delay.
    Nack(Option<Duration>),
    /// Keep the lease longer.
    Extend(Duration),
    /// Give up on it for good, with a reason.
    Term(String),
    /// Give it back unseen: the reader never looked at it (it was still buffered when the reader
    /// stopped), so it is available again at once without counting as an attempt. Brokers that cannot
    /// tell this from a nack redeliver it as after a nack.
    Release,
}

/// A message received from a broker, with what is needed to settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDelivery {
    /// The message.
    pub message: Message,
    /// Which delivery of it this is, when the broker counts.
    pub attempt: Option<u32>,
    /// When the lease ends, when the broker has leases.
    pub deadline: Option<Timestamp>,
    /// How to settle it; `None` when the broker has no acks or the subscription does not ack.
    pub token: Option<AckToken>,
}

impl BrokerDelivery {
    /// A message from a broker that neither counts attempts nor leases: nothing to settle.
    pub fn untracked(message: Message) -> Self {
        BrokerDelivery { message, attempt: None, deadline: None, token: None }
    }
}

/// What a subscriber receives: deliveries, or notice of what it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A message.
    Delivery(BrokerDelivery),
    /// The subscriber fell behind and this many messages were dropped before reaching it.
    Lagged {
        /// How many.
        skipped: u64,
    },
    /// The broker gave this consumer these partitions (a consumer-group rebalance).
    Assigned {
        /// Partition numbers.
        partitions: Vec<u32>,
    },
    /// The broker took these partitions away; their unsettled deliveries go to another member.
    Revoked {
        /// Partition numbers.
        partitions: Vec<u32>,
    },
}
