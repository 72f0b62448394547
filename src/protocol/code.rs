//! Numbered error codes of the wire protocol. The numbers are the contract; messages may change.
//!
//! 1xxx: the frame or connection (bad input, limits, auth); 2xxx: the engine refused the request;
//! 3xxx: the server itself.

use crate::model::EngineError;

/// A protocol error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not valid JSON, or not an object.
    BadFrame = 1000,
    /// `op` names no operation.
    UnknownOp = 1001,
    /// A field is missing, has the wrong type, or an invalid value.
    BadField = 1002,
    /// The client's protocol version is not spoken here.
    UnsupportedVersion = 1003,
    /// The first frame was not `hello`.
    HelloRequired = 1004,
    /// The token is missing or wrong; the connection closes.
    Unauthorized = 1005,
    /// The frame is larger than `max_frame_bytes`.
    FrameTooLarge = 1006,
    /// A message is larger than `max_message_bytes`.
    MessageTooLarge = 1007,
    /// The server has `max_connections` connections; this one closes.
    TooManyConnections = 1008,
    /// The connection has `max_subscriptions` streams.
    TooManySubscriptions = 1009,
    /// Granting this prefetch would exceed the connection's `max_in_flight`.
    InFlightLimit = 1010,
    /// A binary frame arrived; the protocol uses text frames.
    BinaryFrame = 1011,
    /// `sid` names no stream of this connection.
    NoSuchStream = 1012,
    /// The operation is not available on this server.
    NotSupported = 1013,
    /// Topic missing.
    NoSuchTopic = 2001,
    /// Topic exists.
    TopicExists = 2002,
    /// Captured subjects overlap another topic's.
    SubjectOverlap = 2003,
    /// Subscription missing.
    NoSuchSubscription = 2004,
    /// Subscription exists.
    SubscriptionExists = 2005,
    /// No topic captures the subject and auto-create is off.
    Unroutable = 2006,
    /// A `discard = new` topic is full.
    TopicFull = 2007,
    /// The engine refused a message as too large for its topic.
    TopicMessageTooLarge = 2008,
    /// The lease is not current.
    StaleLease = 2009,
    /// The seq was never delivered on that subscription.
    NotDelivered = 2010,
    /// A name or pattern is invalid.
    InvalidName = 2011,
    /// A setting is out of range.
    InvalidConfig = 2012,
    /// A setting is not implemented.
    Unsupported = 2013,
    /// The subscription's ack mode does not allow this.
    WrongAckMode = 2014,
    /// The partition does not exist.
    NoSuchPartition = 2015,
    /// The subscription went away during a wait.
    Gone = 2016,
    /// A push consumer with that id is already attached.
    ConsumerExists = 2017,
    /// Snapshot missing.
    NoSuchSnapshot = 2018,
    /// Snapshot exists.
    SnapshotExists = 2019,
    /// Something failed inside the server.
    Internal = 3000,
    /// The durable store could not keep or read data (disk full, I/O error, damaged file).
    Storage = 3002,
    /// The server is shutting down.
    ShuttingDown = 3001,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The code for an engine refusal.
    pub fn of(e: &EngineError) -> ErrorCode {
        match e {
            EngineError::InvalidName(_) => ErrorCode::InvalidName,
            EngineError::NoSuchTopic(_) => ErrorCode::NoSuchTopic,
            EngineError::TopicExists(_) => ErrorCode::TopicExists,
            EngineError::SubjectOverlap { .. } => ErrorCode::SubjectOverlap,
            EngineError::NoSuchSubscription(_) => ErrorCode::NoSuchSubscription,
            EngineError::SubscriptionExists(_) => ErrorCode::SubscriptionExists,
            EngineError::ConsumerExists { .. } => ErrorCode::ConsumerExists,
            EngineError::NoSuchSnapshot(_) | EngineError::SnapshotExpired { .. } => ErrorCode::NoSuchSnapshot,
            EngineError::SnapshotExists(_) => ErrorCode::SnapshotExists,
            EngineError::Unroutable(_) => ErrorCode::Unroutable,
            EngineError::TopicFull { .. } => ErrorCode::TopicFull,
            EngineError::MessageTooLarge { .. } => ErrorCode::TopicMessageTooLarge,
            EngineError::StaleLease { .. } | EngineError::UnknownLease { .. } => ErrorCode::StaleLease,
            EngineError::NotDelivered { .. } => ErrorCode::NotDelivered,
            EngineError::NoSuchPartition { .. } => ErrorCode::NoSuchPartition,
            EngineError::WrongAckMode { .. } => ErrorCode::WrongAckMode,
            EngineError::InvalidConfig(_) | EngineError::WaitTooLong(_) => ErrorCode::InvalidConfig,
            EngineError::Unsupported(_) => ErrorCode::Unsupported,
            EngineError::Gone(_) => ErrorCode::Gone,
            EngineError::Storage(_) => ErrorCode::Storage,
            EngineError::Batch { source, .. } => ErrorCode::of(source),
        }
    }
}
