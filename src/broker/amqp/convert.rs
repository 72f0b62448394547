//! Messages to AMQP properties and back, patterns to binding keys, and lapin's errors to ours.

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::broker::BrokerError;
use crate::model::{
    Clock, Headers, Message, MessageExtra, Name, Pattern, PatternToken, PublishRequest, SystemClock,
    Timestamp,
};

/// Header that carries a message's key (AMQP has no key of its own).
pub(super) const KEY_HEADER: &str = "pubsub-key";

/// Headers that are AMQP properties of their own rather than entries of the headers table.
const PROPERTY_HEADERS: [&str; 5] = ["content-type", "correlation-id", "reply-to", "expiration", "priority"];

/// A short string from text users gave; AMQP caps them at 255 bytes.
pub(super) fn short(what: &str, text: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(text)
        .map_err(|_| BrokerError::Invalid(format!("{what} \"{text}\" is longer than AMQP's 255 bytes")))
}

/// The properties a publish carries: message id, timestamp, the property headers, the rest as a table.
pub(super) fn properties(m: &PublishRequest) -> Result<BasicProperties, BrokerError> {
    let now = SystemClock.now();
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(now.as_micros() / 1_000_000).unwrap_or(0));
    if let Some(id) = &m.msg_id {
        p = p.with_message_id(short("message id", id)?);
    }
    let h = &m.headers;
    if let Some(v) = h.get("content-type") {
        p = p.with_content_type(short("content-type", v)?);
    }
    if let Some(v) = h.get("correlation-id") {
        p = p.with_correlation_id(short("correlation-id", v)?);
    }
    if let Some(v) = h.get("reply-to") {
        p = p.with_reply_to(short("reply-to", v)?);
    }
    let ttl = m.options.ttl.map(|d| d.as_millis().to_string()).or_else(|| h.get("expiration").cloned());
    if let Some(ms) = ttl {
        if ms.parse::<u64>().is_err() {
            return Err(BrokerError::Invalid(format!("expiration \"{ms}\": AMQP wants milliseconds")));
        }
        p = p.with_expiration(short("expiration", &ms)?);
    }
    let priority =
        match (m.options.priority, h.get("priority")) {
            (Some(p), _) => Some(p),
            (None, Some(v)) => Some(v.parse::<u8>().map_err(|_| {
                BrokerError::Invalid(format!("priority \"{v}\": AMQP priorities are 0 to 255"))
            })?),
            (None, None) => None,
        };
    if let Some(priority) = priority {
        p = p.with_priority(priority);
    }
    let mut table = FieldTable::default();
    for (k, v) in h.iter().filter(|(k, _)| !PROPERTY_HEADERS.contains(&k.as_str())) {
        table
            .insert(short("header name", k)?, AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())));
    }
    if let Some(key) = &m.key {
        table
            .insert(short("header name", KEY_HEADER)?, AMQPValue::LongString(LongString::from(key.to_vec())));
    }
    if !table.inner().is_empty() {
        p = p.with_headers(table);
    }
    Ok(p)
}

/// Text of a header table value; numbers and booleans written out, nested tables skipped.
fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        _ => return None,
    })
}

/// A whole-number header value (RabbitMQ's `x-delivery-count`, a stream's `x-stream-offset`).
pub(super) fn number(props: &BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// A received delivery as a message of its routing key, with seq `seq` (a stream's offset + 1, else 0).
/// A routing key no name can hold (spaces, say) arrives as `$amqp.unnamed`.
pub(super) fn to_message(
    routing_key: &str,
    props: &BasicProperties,
    data: Vec<u8>,
    seq: u64,
) -> Option<Message> {
    let subject = Name::new(routing_key).or_else(|_| Name::system("$amqp.unnamed")).ok()?;
    let mut headers = Headers::new();
    let mut key = None;
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            if k.as_str() == KEY_HEADER {
                if let AMQPValue::LongString(s) = v {
                    key = Some(Bytes::copy_from_slice(s.as_bytes()));
                }
                continue;
            }
            if let Some(text) = value_text(v) {
                headers.insert(k.as_str().to_string(), text);
            }
        }
    }
    if let Some(v) = props.content_type() {
        headers.insert("content-type".into(), v.as_str().to_string());
    }
    if let Some(v) = props.correlation_id() {
        headers.insert("correlation-id".into(), v.as_str().to_string());
    }
    if let Some(v) = props.reply_to() {
        headers.insert("reply-to".into(), v.as_str().to_string());
    }
    if let Some(v) = props.expiration() {
        headers.insert("expiration".into(), v.as_str().to_string());
    }
    if let Some(v) = props.priority() {
        headers.insert("priority".into(), v.to_string());
    }
    let msg_id = props.message_id().as_ref().map(|s| s.as_str().to_string());
    let time = match props.timestamp() {
        Some(secs) => Timestamp::from_micros(i64::try_from(*secs).unwrap_or(0).saturating_mul(1_000_000)),
        None => SystemClock.now(),
    };
    let extra = MessageExtra::pack(key, msg_id, headers);
    Some(Message::new(subject.clone(), 0, seq, time, subject, extra, Bytes::from(data)))
}

/// The binding key a pattern subscribes with: AMQP topic keys use `*` for one word and `#` for any, as
/// our patterns do (`>` is written `#`).
pub(super) fn binding_key(p: &Pattern) -> Result<String, BrokerError> {
    if let Some(literal) = p.literal() {
        return Ok(literal.to_string());
    }
    let Pattern::Tokens(tokens) = p else {
        return Err(BrokerError::Pattern(format!(
            "\"{}\": RabbitMQ binding keys have no globs; use * for one word and # for any number",
            p.as_str()
        )));
    };
    let mut words = Vec::new();
    for t in tokens.tokens() {
        words.push(match t {
            PatternToken::Literal(w) => w.to_string(),
            PatternToken::One => "*".to_string(),
            PatternToken::ZeroOrMore | PatternToken::OneOrMore => "#".to_string(),
            PatternToken::Levels(_) => {
                return Err(BrokerError::Pattern(format!(
                    "\"{}\": RabbitMQ topics are '.'-separated words; write orders.* or orders.#",
                    p.as_str()
                )));
            }
        });
    }
    Ok(words.join("."))
}

/// Our error for a failed connect: a refused login is exit 5, the rest as [`error`].
pub(super) fn connect_error(shown: &str, e: &lapin::Error) -> BrokerError {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) if a.get_id() == 403 => BrokerError::Auth {
            url: shown.to_string(),
            reason: format!("{} ({})", a.get_message().as_str(), a.get_id()),
        },
        _ => error(shown, e),
    }
}

/// Our error for a lapin error while talking to `shown`.
pub(super) fn error(shown: &str, e: &lapin::Error) -> BrokerError {
    use lapin::ErrorKind as K;
    let url = shown.to_string();
    match e.kind() {
        K::ProtocolError(a) => {
            let text = format!("{} ({})", a.get_message().as_str(), a.get_id());
            match a.get_id() {
                // At login this is the wrong password (see `connect_error`); later, a missing permission.
                403 => BrokerError::Invalid(format!("access refused: {text}")),
                530 => BrokerError::Invalid(format!(
                    "the vhost is not there or this user may not use it: {text}"
                )),
                404..=406 => BrokerError::Invalid(text),
                311 => BrokerError::Invalid(format!("the message is larger than RabbitMQ takes: {text}")),
                _ => BrokerError::Protocol(text),
            }
        }
        K::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            BrokerError::Unreachable { url, reason: "nothing listens there (connection refused)".into() }
        }
        K::IOError(io) => BrokerError::Unreachable { url, reason: io.to_string() },
        K::ParsingError(_) | K::InvalidProtocolVersion(_) => {
            BrokerError::Unreachable { url, reason: "the server there does not speak AMQP 0-9-1".into() }
        }
        K::InvalidChannelState(..) | K::InvalidConnectionState(_) => {
            BrokerError::Disconnected { url, reason: e.to_string() }
        }
        _ => BrokerError::Protocol(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_binding_keys_or_are_refused() {
        let key = |s: &str| binding_key(&Pattern::parse(s).unwrap());
        assert_eq!(key("orders.eu").unwrap(), "orders.eu");
        assert_eq!(key("orders.*").unwrap(), "orders.*");
        assert_eq!(key("orders.>").unwrap(), "orders.#");
        assert_eq!(key("orders.#").unwrap(), "orders.#");
        assert!(key("glob:orders*").unwrap_err().to_string().contains("no globs"));
    }

    #[test]
    fn headers_keys_and_properties_round_trip() {
        let mut req = PublishRequest::new(Name::new("orders.eu").unwrap(), &b"\x00\xff"[..])
            .with_key(&b"\xffk"[..])
            .with_header("content-type", "application/json")
            .with_header("correlation-id", "c-1")
            .with_header("trace", "t-9");
        req.msg_id = Some("m-1".into());
        let props = properties(&req).unwrap();
        assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        let m = to_message("orders.eu", &props, b"\x00\xff".to_vec(), 0).unwrap();
        assert_eq!(m.key().map(|k| k.to_vec()), Some(b"\xffk".to_vec()));
        assert_eq!(m.headers().get("trace").map(String::as_str), Some("t-9"));
        assert_eq!(m.headers().get("correlation-id").map(String::as_str), Some("c-1"));
        assert_eq!(m.msg_id(), Some("m-1"));
        assert_eq!(&m.payload[..], b"\x00\xff");
    }

    #[test]
    fn names_over_amqps_limit_are_refused_not_a_panic() {
        let long = "x".repeat(256);
        let err = short("topic", &long).unwrap_err().to_string();
        assert!(err.contains("longer than AMQP's 255 bytes"), "{err}");
        assert!(short("topic", &"x".repeat(255)).is_ok());
    }
}
