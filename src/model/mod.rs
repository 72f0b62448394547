//! The vocabulary every part of `pubsub` speaks: names and patterns, the clock, messages and publish
//! requests, topic and subscription configs with the error that refuses them, positions, the figures
//! brokers report, and the deliveries subscribers settle. It imports nothing else of the crate, so the
//! store, the engine, the wire protocol, the brokers and the front ends may all import it.

pub mod clock;
pub mod config;
pub mod delivery;
pub mod error;
pub mod event;
pub mod filter;
pub mod info;
pub mod message;
pub mod name;
pub mod pace;
pub mod position;
pub mod push;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
pub use config::{
    AckDurability, AckMode, Assignment, Backoff, Discard, Durability, Lifetime, Limits,
    Ordering as OrderingMode, RetentionPolicy, StartPosition, StorageKind, SubscriptionConfig, TopicConfig,
};
pub use delivery::{AckToken, BrokerDelivery, Settle, StreamItem};
pub use error::EngineError;
pub use event::EngineEvent;
pub use filter::{FilterError, FilterExpr, FilterInput};
pub use info::{
    BlockedBy, ConsumerInfo, DeliveryState, EngineStats, MessageAckState, PartitionInfo, PartitionLag,
    PeekReport, SNAPSHOT_TTL, SnapshotInfo, SnapshotPartition, SubCounters, SubscriptionInfo, TopicCounters,
    TopicInfo,
};
pub use message::{
    AckRef, ConsumerId, Delivery, Headers, Message, MessageExtra, PublishOption, PublishOptions,
    PublishReceipt, PublishRequest,
};
pub use name::{Name, NameError, Pattern, PatternToken};
pub use pace::{Pacer, Schedule};
pub use position::{BrowseFrom, FetchOptions, Position, SeekTarget};
pub use push::{PushConfig, PushInfo};
