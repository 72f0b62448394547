//! The WebSocket wire protocol of `pubsub serve`: JSON text frames, pure types with encode and decode,
//! no I/O. docs/PROTOCOL.md is the specification a client can be written from.

pub mod binary;
pub mod code;
pub mod envelope;
pub mod frame;

pub use code::ErrorCode;
pub use envelope::{Encoding, Envelope};
pub use frame::{
    BrowseSpec, ClientFrame, CountReply, Delivered, LeaseRef, Request, SeekSpec, ServerFrame, ServerLimits,
    ServerStats, StreamReply, SubscribeSpec, SubscriptionSpec, TopicSpec,
};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Prefetch of a stream whose `subscribe` names none.
pub const DEFAULT_PREFETCH: u32 = 1000;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or not the shape of any frame.
    #[error("malformed frame: {0}")]
    Frame(String),
    /// A known operation with a bad field.
    #[error("{0}")]
    Field(String),
    /// An operation this version does not know.
    #[error("unknown op \"{0}\"")]
    UnknownOp(String),
}

impl ProtocolError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Frame(_) => ErrorCode::BadFrame,
            ProtocolError::Field(_) => ErrorCode::BadField,
            ProtocolError::UnknownOp(_) => ErrorCode::UnknownOp,
        }
    }
}

const KNOWN_OPS: &[&str] = &[
    "hello",
    "ping",
    "publish",
    "publish_batch",
    "topics",
    "topic_info",
    "create_topic",
    "delete_topic",
    "purge_topic",
    "set_partitions",
    "subscriptions",
    "subscription_info",
    "create_subscription",
    "delete_subscription",
    "subscribe",
    "unsubscribe",
    "credit",
    "fetch",
    "ack",
    "nack",
    "extend",
    "term",
    "seek",
    "browse",
    "peek",
    "stats",
    "shutdown",
];

/// Decodes a client frame, telling apart bad JSON, unknown ops and bad fields, and recovering the
/// request id where possible so that the error can answer it.
pub fn decode_client(text: &str) -> Result<ClientFrame, (Option<u64>, ProtocolError)> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        Err(e) => Err(classify(text, e)),
    }
}

fn classify(text: &str, e: serde_json::Error) -> (Option<u64>, ProtocolError) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return (None, ProtocolError::Frame(format!("not JSON: {e}")));
    };
    let Some(object) = value.as_object() else {
        return (None, ProtocolError::Frame("a frame must be a JSON object".into()));
    };
    let id = object.get("id").and_then(serde_json::Value::as_u64);
    match object.get("op").and_then(serde_json::Value::as_str) {
        None => (id, ProtocolError::Field("missing \"op\" (a string naming the operation)".into())),
        Some(op) if !KNOWN_OPS.contains(&op) => (id, ProtocolError::UnknownOp(op.to_string())),
        Some(op) => (id, ProtocolError::Field(format!("bad \"{op}\" request: {e}"))),
    }
}

/// Encodes a server frame as JSON text.
pub fn encode_server(frame: &ServerFrame) -> String {
    // Serializing these types cannot fail: every map key is a string and no value is a non-finite float
    // except rates, which are finite by construction; an error still yields a valid error frame.
    serde_json::to_string(frame).unwrap_or_else(|e| {
        format!(
            r#"{{"op":"error","code":{},"message":"cannot encode reply: {e}"}}"#,
            ErrorCode::Internal.number()
        )
    })
}

/// Decodes a server frame (client side).
pub fn decode_server(text: &str) -> Result<ServerFrame, ProtocolError> {
    serde_json::from_str(text).map_err(|e| ProtocolError::Frame(e.to_string()))
}

/// Encodes a client frame as JSON text.
pub fn encode_client(frame: &ClientFrame) -> Result<String, ProtocolError> {
    serde_json::to_string(frame).map_err(|e| ProtocolError::Frame(e.to_string()))
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
