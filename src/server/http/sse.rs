//! `GET /topics/NAME/events`: a topic's messages as Server-Sent Events. Each event's `id` is the
//! message's seq and its `data` the message's JSON envelope (one line). The stream reads through an
//! ephemeral subscription with no acks, made for the request and deleted when it ends, so a slow reader
//! leaves the backlog in the topic (bounded by the stream's byte budget in the server) rather than
//! losing messages. What is ready is written in one go: a backlog goes out in large writes, not one
//! per event.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::head::Head;
use super::response::{HttpError, event_stream_head};
use crate::broker::{BrokerError, DeliveryStream, StreamItem};
use crate::engine::ByteBudget;
use crate::model::{Message, StartPosition};
use crate::protocol::{Envelope, ErrorCode};

/// Most events gathered into one write.
const BATCH: usize = 4096;
/// A write takes no more events once it holds this many bytes.
const BATCH_BYTES: usize = 256 * 1024;

/// Where a stream starts: after the seq in `Last-Event-ID` (what a reconnecting `EventSource` sends),
/// else at `?from=` (`new`, `all`, `last` or a seq), else with the messages published from now on.
pub(crate) fn start_of(head: &Head) -> Result<StartPosition, HttpError> {
    let last_id = match head.header("last-event-id").map(std::str::from_utf8) {
        Some(Ok(id)) => Some(id.trim()),
        Some(Err(_)) => return Err(HttpError::new(ErrorCode::BadField, "Last-Event-ID is not UTF-8")),
        None => None,
    };
    if let Some(id) = last_id.filter(|id| !id.is_empty()) {
        let Ok(seq) = id.parse::<u64>() else {
            let msg = format!("Last-Event-ID \"{id}\" is not a seq; send the id of the last event received");
            return Err(HttpError::new(ErrorCode::BadField, msg));
        };
        return Ok(StartPosition::Seq(seq.saturating_add(1)));
    }
    match head.param("from") {
        None | Some("new") => Ok(StartPosition::New),
        Some("all" | "start") => Ok(StartPosition::All),
        Some("last") => Ok(StartPosition::Last),
        Some(other) => other.parse::<u64>().map(StartPosition::Seq).map_err(|_| {
            let msg = format!("from=\"{other}\" is not new, all, last or a seq");
            HttpError::new(ErrorCode::BadField, msg)
        }),
    }
}

/// Appends one event for `message` to `out`.
pub(crate) fn push_event(out: &mut Vec<u8>, message: &Message) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(message.seq.to_string().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // An envelope's JSON is one line: serde_json escapes every control character in strings.
    if serde_json::to_writer(&mut *out, &Envelope::from_message(message, None)).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// Appends an `error` event, the last of a stream that failed.
fn push_error(out: &mut Vec<u8>, e: &BrokerError) {
    let body =
        serde_json::json!({"error": e.to_string(), "code": crate::server::handler::code_of(e).number()});
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(body.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// How a stream is kept.
pub(crate) struct StreamConfig {
    /// A comment is sent after this long without an event, so proxies and clients see a live stream
    /// (and a client that has gone is noticed).
    pub keep_alive: Duration,
    /// A write that takes longer means the client stopped reading: the stream ends.
    pub write_timeout: Duration,
    /// The CORS origin to allow, if any.
    pub allow_origin: Option<String>,
}

/// Streams `stream` to `socket` as events until the client goes, the stream ends or `cancel` fires.
/// The messages' bytes count in `budget` from the engine's push until they are written.
pub(crate) async fn run(
    socket: TcpStream,
    mut stream: DeliveryStream,
    budget: Arc<ByteBudget>,
    config: StreamConfig,
    cancel: CancellationToken,
) {
    let (mut reader, mut writer) = socket.into_split();
    let timeout = config.write_timeout;
    let mut head = event_stream_head();
    if let Some(origin) = &config.allow_origin {
        super::response::allow_origin(&mut head, origin);
    }
    if !write(&mut writer, &head, timeout).await {
        return;
    }
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let mut idle_until = Instant::now() + config.keep_alive;
    let mut ignored = [0u8; 1024];
    loop {
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            // Nothing is expected from the client; its end (or a reset) ends the stream.
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            () = tokio::time::sleep_until(idle_until) => {
                if !write(&mut writer, b": keep-alive\n\n", timeout).await {
                    break;
                }
                idle_until = Instant::now() + config.keep_alive;
                continue;
            }
            item = stream.next() => item,
        };
        let Some(first) = first else { break };
        let mut held = 0u64;
        let mut failed = false;
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            taken += 1;
            match item {
                Ok(StreamItem::Delivery(d)) => {
                    held += d.message.size() as u64;
                    push_event(&mut buf, &d.message);
                }
                Ok(_) => {}
                Err(e) => {
                    push_error(&mut buf, &e);
                    failed = true;
                    break;
                }
            }
            if taken < BATCH && buf.len() < BATCH_BYTES {
                next = stream.try_next();
            }
        }
        let sent = write(&mut writer, &buf, timeout).await;
        buf.clear();
        budget.release(held);
        if !sent || failed {
            break;
        }
        idle_until = Instant::now() + config.keep_alive;
    }
    let _ = writer.shutdown().await;
}

/// Writes all of `bytes` within `timeout`; `false` when the client is gone or stopped reading.
async fn write(writer: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8], timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, writer.write_all(bytes)).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Name, PublishRequest};
    use crate::server::http::head::parse;

    fn head(raw: &[u8]) -> Head {
        parse(raw).unwrap().unwrap().0
    }

    #[test]
    fn a_fresh_request_starts_with_new_messages_and_last_event_id_resumes_after_its_seq() {
        let fresh = head(b"GET /topics/t/events HTTP/1.1\r\n\r\n");
        assert_eq!(start_of(&fresh).unwrap(), StartPosition::New);
        let resumed = head(b"GET /topics/t/events?from=all HTTP/1.1\r\nLast-Event-ID: 41\r\n\r\n");
        assert_eq!(start_of(&resumed).unwrap(), StartPosition::Seq(42), "Last-Event-ID wins over from=");
        let from = head(b"GET /topics/t/events?from=7 HTTP/1.1\r\n\r\n");
        assert_eq!(start_of(&from).unwrap(), StartPosition::Seq(7));
        let all = head(b"GET /topics/t/events?from=all HTTP/1.1\r\nLast-Event-ID:\r\n\r\n");
        assert_eq!(start_of(&all).unwrap(), StartPosition::All, "an empty id is none");
        let bad = head(b"GET /topics/t/events HTTP/1.1\r\nLast-Event-ID: x\r\n\r\n");
        assert_eq!(start_of(&bad).unwrap_err().status, 400);
        let bad = head(b"GET /topics/t/events?from=yesterday HTTP/1.1\r\n\r\n");
        assert_eq!(start_of(&bad).unwrap_err().status, 400);
    }

    #[test]
    fn an_event_carries_the_seq_as_its_id_and_the_envelope_on_one_data_line() {
        let engine = crate::engine::Engine::new();
        let mut req = PublishRequest::new(Name::new("t").unwrap(), "line one\nline two");
        req.headers.insert("k".into(), "v".into());
        engine.publish(req).unwrap();
        let message = engine.browse(&Name::new("t").unwrap(), crate::model::BrowseFrom::Seq(1), 1).unwrap();
        let mut out = Vec::new();
        push_event(&mut out, &message[0]);
        let text = String::from_utf8(out).unwrap();
        let (id, rest) = text.split_once('\n').unwrap();
        assert_eq!(id, "id: 1");
        let data = rest.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap();
        assert!(!data.contains('\n'));
        let envelope: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(envelope["payload"], "line one\nline two");
        assert_eq!(envelope["headers"]["k"], "v");
    }
}
