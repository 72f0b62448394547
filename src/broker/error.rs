//! Errors a broker operation can end in, each mapped to one of the documented exit codes.

use std::time::Duration;

use super::capability::Capability;
use crate::model::{EngineError, NameError};

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot do this at all.
    #[error("{capability} not available on this broker ({broker}{})", reason(why))]
    Unsupported {
        /// Backend name.
        broker: &'static str,
        /// What is missing.
        capability: Capability,
        /// Why, in the broker's terms; empty when there is nothing more to say.
        why: &'static str,
    },
    /// The local engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A settle for a partition the broker has since given to another consumer.
    #[error(
        "partition {partition} of {subscription} was revoked from this consumer (a rebalance gave it to another member, which gets its unsettled messages again)"
    )]
    Revoked {
        /// Subscription (consumer group).
        subscription: String,
        /// Partition.
        partition: u32,
    },
    /// The URL could not be understood.
    #[error("invalid broker URL \"{url}\": {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The scheme names no backend.
    #[error(
        "unknown broker scheme \"{scheme}\" in \"{url}\"; use one of: mem://, local, ws://, wss://, redis://, rediss://, nats://, mqtt://, mqtts://, amqp://, amqps://, postgres://, kafka://"
    )]
    UnknownScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The broker could not be reached.
    #[error("cannot reach broker at {url}: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The broker refused the credentials.
    #[error("broker at {url} refused authentication: {reason}")]
    Auth {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// A request found nobody listening on its subject.
    #[error("no responders: nothing is listening for requests on \"{subject}\"")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// A wait ended with nothing.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A request the broker would refuse; caught before sending.
    #[error("{0}")]
    Invalid(String),
    /// A pattern this broker has no way to express (exit 2, like any other bad argument): the message
    /// says what to write instead.
    #[error("{0}")]
    Pattern(String),
    /// A `pubsub` server refused the request with a numbered protocol error.
    #[error("{message} (error {code})")]
    Remote {
        /// Protocol error code (docs/PROTOCOL.md).
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The link to the broker dropped while a request was outstanding.
    #[error("connection to {url} lost: {reason}")]
    Disconnected {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// A message of a batch failed; the ones before it were published.
    #[error("message {index} of the batch (counting from 0) failed: {source}")]
    Batch {
        /// Index of the failed message.
        index: usize,
        /// Why it failed.
        source: Box<BrokerError>,
    },
    /// The broker answered something this client does not understand, or closed mid-request.
    #[error("broker protocol error: {0}")]
    Protocol(String),
}

impl BrokerError {
    /// The process exit code for this error (README "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            BrokerError::Unreachable { .. } | BrokerError::Disconnected { .. } => 3,
            BrokerError::Timeout(_) => 4,
            BrokerError::Auth { .. } => 5,
            BrokerError::NoResponders { .. } => 6,
            BrokerError::InvalidUrl { .. } | BrokerError::UnknownScheme { .. } | BrokerError::Pattern(_) => 2,
            BrokerError::Batch { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

impl From<NameError> for BrokerError {
    fn from(e: NameError) -> Self {
        BrokerError::Engine(EngineError::from(e))
    }
}
/// ": why" after the backend's name, when there is a why.
fn reason(why: &str) -> String {
    if why.is_empty() { String::new() } else { format!(": {why}") }
}

#[cfg(test)]
mod tests {
    use super::BrokerError;

    #[test]
    fn a_pattern_the_broker_cannot_express_is_a_usage_error() {
        // Issue 19: refused patterns exited 1 (bad input) where a bad argument is 2.
        assert_eq!(BrokerError::Pattern("no".into()).exit_code(), 2);
        let redis = crate::broker::redis::redis_glob(&crate::model::Pattern::parse("a.*.b").unwrap());
        assert_eq!(redis.map(|_| ()).unwrap_err().exit_code(), 2);
        let mqtt = crate::broker::mqtt::filter_for(&crate::model::Pattern::parse("glob:a*").unwrap());
        assert_eq!(mqtt.map(|_| ()).unwrap_err().exit_code(), 2);
        let nats = crate::broker::nats::nats_subjects(&crate::model::Pattern::parse("glob:a*").unwrap());
        assert_eq!(nats.map(|_| ()).unwrap_err().exit_code(), 2);
    }
}
