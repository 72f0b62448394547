//! HTTP answers: a status line, a few headers and a body. An answer that ends its connection gets
//! `Connection: close` added ([`closing`]); the others leave the connection open for the next request.
//! Errors carry the WebSocket protocol's numbered code: `{"error": "…", "code": N}`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::broker::BrokerError;
use crate::protocol::ErrorCode;

/// A refused request: the HTTP status, the protocol's code and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    /// Extra headers (`Allow` on a 405, `WWW-Authenticate` on a 401).
    pub headers: Vec<(&'static str, String)>,
}

impl HttpError {
    /// An error with the status the code maps to.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError { status: status_of(code), code, message: message.into(), headers: Vec::new() }
    }

    /// An error with a status of its own (404 and 405 for paths and methods, 411).
    pub(crate) fn with_status(status: u16, code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError { status, code, message: message.into(), headers: Vec::new() }
    }

    /// A broker failure.
    pub(crate) fn of(e: &BrokerError) -> HttpError {
        HttpError::new(crate::server::handler::code_of(e), e.to_string())
    }

    /// Adds a header to the answer.
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> HttpError {
        self.headers.push((name, value.into()));
        self
    }

    /// The whole answer.
    pub(crate) fn response(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            code: u16,
        }
        let body = serde_json::to_vec(&Body { error: &self.message, code: self.code.number() })
            .unwrap_or_else(|_| b"{}".to_vec());
        response(self.status, &self.headers, "application/json", &body)
    }
}

/// The HTTP status for a protocol error code.
pub(crate) fn status_of(code: ErrorCode) -> u16 {
    use ErrorCode as C;
    match code {
        C::Unauthorized => 401,
        C::NoSuchTopic
        | C::NoSuchSubscription
        | C::NoSuchSnapshot
        | C::Unroutable
        | C::NoSuchPartition
        | C::Gone => 404,
        C::UnknownOp => 404,
        C::TopicExists
        | C::SubscriptionExists
        | C::SnapshotExists
        | C::SubjectOverlap
        | C::ConsumerExists => 409,
        C::FrameTooLarge | C::MessageTooLarge | C::TopicMessageTooLarge => 413,
        C::TopicFull | C::TooManyConnections | C::ShuttingDown => 503,
        C::Unsupported | C::NotSupported => 501,
        C::Internal | C::Storage => 500,
        C::BadFrame
        | C::BadField
        | C::UnsupportedVersion
        | C::HelloRequired
        | C::TooManySubscriptions
        | C::InFlightLimit
        | C::BinaryFrame
        | C::NoSuchStream
        | C::StaleLease
        | C::NotDelivered
        | C::InvalidName
        | C::InvalidConfig
        | C::WrongAckMode => 400,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A complete answer with a body.
pub(crate) fn response(
    status: u16,
    headers: &[(&'static str, String)],
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    let _ = write!(head, "Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    head.push_str("Cache-Control: no-store\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A 200 answer with a JSON body.
pub(crate) fn json<T: Serialize>(value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(body) => response(200, &[], "application/json", &body),
        Err(e) => HttpError::new(ErrorCode::Internal, format!("encoding the answer: {e}")).response(),
    }
}

/// The head of an event stream; its body runs until the connection closes.
pub(crate) fn event_stream_head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
      Connection: close\r\nX-Accel-Buffering: no\r\n\r\n"
        .to_vec()
}

/// Adds `Connection: close` to `answer` (a whole answer): the server closes the connection after it.
pub(crate) fn closing(answer: &mut Vec<u8>) {
    insert_after_status(answer, "Connection: close");
}

/// Marks `answer` as keeping the connection open, for an HTTP/1.0 client that asked
/// (`Connection: keep-alive`): without it such a client reads the end of the answer as the end of the
/// connection.
pub(crate) fn keeping(answer: &mut Vec<u8>) {
    insert_after_status(answer, "Connection: keep-alive");
}

/// Inserts header `line` right after the status line of `answer`.
fn insert_after_status(answer: &mut Vec<u8>, line: &str) {
    let Some(at) = answer.windows(2).position(|w| w == b"\r\n") else { return };
    answer.splice(at..at, format!("\r\n{line}").into_bytes());
}

/// Adds the CORS header that lets pages of `origin` read `answer` (a whole answer or a head).
pub(crate) fn allow_origin(answer: &mut Vec<u8>, origin: &str) {
    insert_after_status(answer, &format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin"));
}

/// The answer to a CORS preflight (`OPTIONS`) for a path that takes `method`.
pub(crate) fn preflight(method: &str) -> Vec<u8> {
    let headers = [
        ("Access-Control-Allow-Methods", method.to_string()),
        ("Access-Control-Allow-Headers", "*, Authorization".to_string()),
        ("Access-Control-Max-Age", "600".to_string()),
    ];
    response(204, &headers, "text/plain", b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_a_json_body_with_the_protocol_code_and_its_headers() {
        let e = HttpError::with_status(405, ErrorCode::UnknownOp, "use GET").header("Allow", "GET");
        let text = String::from_utf8(e.response()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{head}");
        assert!(head.contains("\r\nAllow: GET") && head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, r#"{"error":"use GET","code":1001}"#);
    }

    #[test]
    fn the_cors_header_goes_after_the_status_line() {
        let mut answer = response(200, &[], "application/json", b"{}");
        allow_origin(&mut answer, "*");
        let text = String::from_utf8(answer).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nVary: Origin\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
    }

    #[test]
    fn engine_refusals_map_to_the_statuses_a_script_expects() {
        assert_eq!(status_of(ErrorCode::NoSuchTopic), 404);
        assert_eq!(status_of(ErrorCode::InvalidName), 400);
        assert_eq!(status_of(ErrorCode::MessageTooLarge), 413);
        assert_eq!(status_of(ErrorCode::Unauthorized), 401);
        assert_eq!(status_of(ErrorCode::TooManyConnections), 503);
    }
}
