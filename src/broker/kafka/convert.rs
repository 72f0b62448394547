//! Kafka records ↔ pubsub messages, and librdkafka's errors in the model's terms (with exit codes).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::types::RDKafkaErrorCode as Code;

use crate::broker::BrokerError;
use crate::model::{EngineError, Headers as PubsubHeaders, Message, MessageExtra, Name, Timestamp};

/// Seqs are Kafka offsets + 1, so that seq 0 keeps meaning "not stored" and a committed offset is an
/// ack floor as it is (everything below it is done).
pub(super) fn seq_of(offset: i64) -> u64 {
    // A logical offset (negative: "end", "invalid") is no position: seq 0.
    u64::try_from(offset).map_or(0, |o| o.saturating_add(1))
}

/// The offset of a seq (the inverse of [`seq_of`]).
pub(super) fn offset_of(seq: u64) -> i64 {
    i64::try_from(seq.saturating_sub(1)).unwrap_or(i64::MAX)
}

/// A consumed record as a message; `None` for a topic name pubsub cannot use.
pub(super) fn to_message(m: &impl rdkafka::message::Message) -> Option<Message> {
    let topic = Name::new(m.topic()).ok()?;
    let key = m.key().map(Bytes::copy_from_slice);
    let mut headers = PubsubHeaders::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            // A null value has no text; an empty one is kept as empty.
            if let Some(v) = h.value {
                headers.insert(h.key.to_string(), String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    let time = m
        .timestamp()
        .to_millis()
        .map_or(Timestamp::ZERO, |ms| Timestamp::from_micros(ms.saturating_mul(1000)));
    let payload = m.payload().map(Bytes::copy_from_slice).unwrap_or_default();
    let partition = u32::try_from(m.partition()).unwrap_or(0);
    Some(Message::new(
        topic.clone(),
        partition,
        seq_of(m.offset()),
        time,
        topic,
        MessageExtra::pack(key, None, headers),
        payload,
    ))
}

/// An error librdkafka reported: its code, when it has one, and its words.
pub(super) type Heard = (Option<Code>, String);

/// What a client's context heard from librdkafka outside any call: the last error, so that a connect
/// that times out can say it was refused a login rather than that nothing answered.
#[derive(Clone, Default)]
pub(super) struct Context {
    last: Arc<Mutex<Option<Heard>>>,
    /// The last word on a connection that failed (which address, and why), said better than "all
    /// brokers are down".
    transport: Arc<Mutex<Option<String>>>,
    /// A refused login, kept: librdkafka reports "all brokers are down" right after it, which must not
    /// hide it.
    refused: Arc<Mutex<Option<String>>>,
}

impl Context {
    /// The last error librdkafka reported, if any.
    pub(super) fn last_error(&self) -> Option<Heard> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Why the last connection failed, when one did.
    pub(super) fn transport_error(&self) -> Option<String> {
        self.transport.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Why a login was refused, when one was.
    pub(super) fn auth_failed(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ClientContext for Context {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(Code::BrokerTransportFailure | Code::Resolve)) {
            *self.transport.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_string());
        }
        if error.rdkafka_error_code().is_some_and(is_auth) {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_string());
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((error.rdkafka_error_code(), reason.to_string()));
    }
}

impl rdkafka::consumer::ConsumerContext for Context {}

fn is_auth(code: Code) -> bool {
    matches!(
        code,
        Code::Authentication
            | Code::SaslAuthenticationFailed
            | Code::TopicAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::ClusterAuthorizationFailed
    )
}

/// A librdkafka error from talking to `shown`, in the model's terms.
pub(super) fn error(shown: &str, e: &KafkaError) -> BrokerError {
    let Some(code) = e.rdkafka_error_code() else {
        return BrokerError::Protocol(e.to_string());
    };
    error_code(shown, code, &e.to_string())
}

/// An error code from talking to `shown`; `text` is librdkafka's wording.
pub(super) fn error_code(shown: &str, code: RDKafkaErrorCode, text: &str) -> BrokerError {
    match code {
        c if is_auth(c) => BrokerError::Auth { url: shown.to_string(), reason: text.to_string() },
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::NetworkException
        | Code::BrokerNotAvailable => {
            BrokerError::Unreachable { url: shown.to_string(), reason: text.to_string() }
        }
        Code::MessageSizeTooLarge => BrokerError::Invalid(format!(
            "the message is larger than the broker or topic allows (message.max.bytes / max.message.bytes): {text}"
        )),
        Code::PolicyViolation | Code::InvalidConfig | Code::InvalidRequest => {
            BrokerError::Invalid(format!("the broker refused: {text}"))
        }
        _ => BrokerError::Invalid(text.to_string()),
    }
}

/// Refuses a name Kafka cannot hold as a topic: at most 249 characters of letters, digits, `.`, `_`
/// and `-`.
pub(super) fn kafka_topic(name: &str) -> Result<(), BrokerError> {
    let ok = name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!(
            "\"{name}\" cannot be a Kafka topic: use at most 249 letters, digits, '.', '_' and '-'"
        )))
    }
}

/// The error for a topic the broker does not have.
pub(super) fn no_topic(topic: &Name) -> BrokerError {
    BrokerError::Engine(EngineError::NoSuchTopic(topic.clone()))
}

/// The error for a partition the topic does not have.
pub(super) fn no_partition(topic: &Name, partition: u32) -> BrokerError {
    BrokerError::Engine(EngineError::NoSuchPartition { topic: topic.clone(), partition })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_offsets_plus_one() {
        assert_eq!(seq_of(0), 1);
        assert_eq!(seq_of(41), 42);
        assert_eq!(offset_of(42), 41);
        assert_eq!(offset_of(1), 0);
        assert_eq!(seq_of(-1001), 0);
    }

    #[test]
    fn kafka_topic_names_are_checked_before_sending() {
        assert!(kafka_topic("orders.eu-1_x").is_ok());
        for bad in ["a+b", "a b", "..", "sensors/kitchen", &"x".repeat(250)] {
            assert!(kafka_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_get_their_exit_codes() {
        assert_eq!(error_code("k", Code::SaslAuthenticationFailed, "bad").exit_code(), 5);
        assert_eq!(error_code("k", Code::AllBrokersDown, "down").exit_code(), 3);
        assert_eq!(error_code("k", Code::UnknownTopicOrPartition, "x").exit_code(), 1);
    }
}
