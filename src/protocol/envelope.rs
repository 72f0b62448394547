//! The message envelope: one JSON object per message, used on the wire and by `--json` output, such
//! that decoding an encoded envelope reproduces subject, key, headers and payload bytes exactly.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ProtocolError;
use crate::model::{Headers, Message, Name, PublishRequest, Timestamp};

/// How a payload or key is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// A JSON string holding the bytes as UTF-8 text.
    #[default]
    Utf8,
    /// A JSON string holding the bytes in standard base64.
    Base64,
    /// Any JSON value; the bytes are its compact serialization (input only: output never uses it, because
    /// re-serializing JSON need not reproduce the original bytes).
    Json,
}

/// One message as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The topic that stores it (on input: ignored; the subject decides).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    /// The address it was published to (on input: optional; the command's topic or the envelope's
    /// `topic` stands in for it).
    #[serde(default)]
    pub subject: String,
    /// Position in its partition (0 when not stored).
    #[serde(default)]
    pub seq: u64,
    /// Partition.
    #[serde(default)]
    pub partition: u32,
    /// Publish time, RFC 3339 with microseconds, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Ordering key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How `key` is written; absent means utf8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_encoding: Option<Encoding>,
    /// Publisher idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// Which delivery of this message this is, when it came through a subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The body, written as `payload_encoding` says.
    pub payload: serde_json::Value,
    /// How `payload` is written.
    #[serde(default)]
    pub payload_encoding: Encoding,
}

impl Envelope {
    /// The envelope of a message: text payloads and keys as UTF-8, anything else as base64.
    pub fn from_message(m: &Message, attempt: Option<u32>) -> Self {
        let (key, key_encoding) = match m.key() {
            None => (None, None),
            Some(k) => match std::str::from_utf8(k) {
                Ok(text) => (Some(text.to_string()), None),
                Err(_) => (Some(BASE64.encode(k)), Some(Encoding::Base64)),
            },
        };
        let (payload, payload_encoding) = encode_bytes(&m.payload);
        Envelope {
            topic: m.topic.to_string(),
            subject: m.subject().to_string(),
            seq: m.seq,
            partition: m.partition,
            timestamp: Some(format_time(m.publish_time)),
            key,
            key_encoding,
            msg_id: m.msg_id().map(str::to_string),
            headers: m.headers().clone(),
            attempt,
            payload: serde_json::Value::String(payload),
            payload_encoding,
        }
    }

    /// The payload bytes this envelope describes.
    pub fn payload_bytes(&self) -> Result<Bytes, ProtocolError> {
        decode_value(&self.payload, self.payload_encoding, "payload")
    }

    /// The key bytes, if any.
    pub fn key_bytes(&self) -> Result<Option<Bytes>, ProtocolError> {
        match &self.key {
            None => Ok(None),
            Some(k) => decode_value(
                &serde_json::Value::String(k.clone()),
                self.key_encoding.unwrap_or_default(),
                "key",
            )
            .map(Some),
        }
    }

    /// The publish request that re-publishes this message to its subject.
    pub fn to_request(&self) -> Result<PublishRequest, ProtocolError> {
        self.to_request_or(None)
    }

    /// [`Envelope::to_request`] for an envelope that may name no subject (one written by hand, with
    /// only `payload` required): it goes to `subject` when given, else to the envelope's own subject,
    /// else to its topic.
    pub fn to_request_or(&self, subject: Option<&Name>) -> Result<PublishRequest, ProtocolError> {
        let named = [&self.subject, &self.topic].into_iter().find(|s| !s.is_empty());
        let subject = match (subject, named) {
            (Some(subject), _) => subject.clone(),
            (None, Some(named)) => Name::new(named).map_err(|e| ProtocolError::Field(e.to_string()))?,
            (None, None) => {
                return Err(ProtocolError::Field(
                    "the envelope names no subject or topic; give one, or a TOPIC on the command line".into(),
                ));
            }
        };
        Ok(PublishRequest {
            subject,
            key: self.key_bytes()?,
            msg_id: self.msg_id.clone(),
            headers: self.headers.clone(),
            payload: self.payload_bytes()?,
            options: crate::model::PublishOptions::default(),
        })
    }

    /// The publish time, if the envelope carries one.
    pub fn time(&self) -> Result<Option<Timestamp>, ProtocolError> {
        self.timestamp.as_deref().map(parse_time).transpose()
    }

    /// Rebuilds the message this envelope describes (for backends that receive envelopes).
    pub fn to_message(&self) -> Result<Message, ProtocolError> {
        let name = |s: &str| Name::system(s).map_err(|e| ProtocolError::Field(e.to_string()));
        let subject = name(&self.subject)?;
        let topic = if self.topic.is_empty() { subject.clone() } else { name(&self.topic)? };
        let extra =
            crate::model::MessageExtra::pack(self.key_bytes()?, self.msg_id.clone(), self.headers.clone());
        Ok(Message::new(
            topic,
            self.partition,
            self.seq,
            self.time()?.unwrap_or_default(),
            subject,
            extra,
            self.payload_bytes()?,
        ))
    }
}

/// Bytes as a JSON string: UTF-8 text when they are text, base64 otherwise.
pub fn encode_bytes(bytes: &[u8]) -> (String, Encoding) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), Encoding::Utf8),
        Err(_) => (BASE64.encode(bytes), Encoding::Base64),
    }
}

fn decode_value(value: &serde_json::Value, encoding: Encoding, what: &str) -> Result<Bytes, ProtocolError> {
    match (encoding, value) {
        (Encoding::Utf8, serde_json::Value::String(s)) => Ok(Bytes::from(s.clone().into_bytes())),
        (Encoding::Base64, serde_json::Value::String(s)) => BASE64
            .decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ProtocolError::Field(format!("{what} is not valid base64: {e}"))),
        (Encoding::Json, v) => Ok(Bytes::from(v.to_string().into_bytes())),
        (_, _) => Err(ProtocolError::Field(format!(
            "{what} must be a string when its encoding is utf8 or base64 (use \"{what}_encoding\": \"json\" for JSON values)"
        ))),
    }
}

/// The last microsecond RFC 3339 can write (9999-12-31T23:59:59.999999Z).
const LAST_RFC3339_MICROS: i64 = 253_402_300_799_999_999;

/// A timestamp as RFC 3339 with microseconds, UTC. Times RFC 3339 (as written here) cannot hold, before
/// 1970 or after the year 9999, are written as the nearest end of that range: the formatter panics on
/// them, and a time decoded from a peer's frame may be anything.
pub fn format_time(t: Timestamp) -> String {
    let micros = t.as_micros().clamp(0, LAST_RFC3339_MICROS);
    let time = UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs());
    humantime::format_rfc3339_micros(time).to_string()
}

/// Parses RFC 3339 (any precision, `Z` or no offset) into a timestamp.
pub fn parse_time(text: &str) -> Result<Timestamp, ProtocolError> {
    Timestamp::parse_rfc3339(text).map_err(ProtocolError::Field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageExtra;

    fn message(payload: &[u8], key: Option<&[u8]>) -> Message {
        let mut headers = Headers::new();
        headers.insert("h".into(), "v".into());
        let extra = MessageExtra::pack(key.map(Bytes::copy_from_slice), Some("id-1".into()), headers);
        Message::new(
            Name::new("orders").unwrap(),
            0,
            7,
            Timestamp::from_micros(1_780_000_000_123_456),
            Name::new("orders.eu").unwrap(),
            extra,
            Bytes::copy_from_slice(payload),
        )
    }

    #[test]
    fn binary_payloads_and_keys_round_trip_through_json() {
        let m = message(&[0, 159, 146, 150, 255], Some(&[0xff, 0x00]));
        let env = Envelope::from_message(&m, Some(2));
        assert_eq!(env.payload_encoding, Encoding::Base64);
        assert_eq!(env.key_encoding, Some(Encoding::Base64));
        let text = serde_json::to_string(&env).unwrap();
        let back: Envelope = serde_json::from_str(&text).unwrap();
        let req = back.to_request().unwrap();
        assert_eq!(req.payload.as_ref(), &[0, 159, 146, 150, 255]);
        assert_eq!(req.key.as_deref(), Some(&[0xff, 0x00][..]));
        assert_eq!(req.headers.get("h").map(String::as_str), Some("v"));
        assert_eq!(req.msg_id.as_deref(), Some("id-1"));
        assert_eq!(back.to_message().unwrap(), m);
    }

    #[test]
    fn text_payloads_stay_readable() {
        let env = Envelope::from_message(&message(b"hello", Some(b"k")), None);
        let text = serde_json::to_string(&env).unwrap();
        assert!(text.contains("\"payload\":\"hello\""), "{text}");
        assert!(text.contains("\"timestamp\":\"2026-05-28T"), "{text}");
        assert!(!text.contains("key_encoding"), "{text}");
    }

    #[test]
    fn json_payload_input_becomes_its_compact_text() {
        let env: Envelope =
            serde_json::from_str(r#"{"subject":"a","payload":{"x": [1, 2]},"payload_encoding":"json"}"#)
                .unwrap();
        assert_eq!(env.payload_bytes().unwrap().as_ref(), br#"{"x":[1,2]}"#);
    }

    #[test]
    fn bad_base64_and_wrong_types_are_named() {
        let env: Envelope =
            serde_json::from_str(r#"{"subject":"a","payload":"%%%","payload_encoding":"base64"}"#).unwrap();
        assert!(env.payload_bytes().unwrap_err().to_string().contains("base64"));
        let env: Envelope = serde_json::from_str(r#"{"subject":"a","payload":5}"#).unwrap();
        assert!(env.payload_bytes().unwrap_err().to_string().contains("must be a string"));
    }

    #[test]
    fn times_round_trip_at_microsecond_precision() {
        let t = Timestamp::from_micros(1_780_000_000_123_456);
        assert_eq!(parse_time(&format_time(t)).unwrap(), t);
    }

    #[test]
    fn times_rfc3339_cannot_hold_are_written_as_the_nearest_it_can() {
        assert_eq!(format_time(Timestamp::from_micros(-5)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(Timestamp::from_micros(i64::MAX)), "9999-12-31T23:59:59.999999Z");
        let last = Timestamp::from_micros(LAST_RFC3339_MICROS);
        assert_eq!(parse_time(&format_time(last)).unwrap(), last);
    }
}
