//! `GET /topics/NAME/events`: a topic's messages as Server-Sent Events. Each event's `id` is the
//! message's seq and its `data` the message's JSON envelope (one line). The stream reads through an
//! ephemeral subscription with no acks, made for the request and deleted when it ends, so a slow reader
//! leaves the backlog in the topic (bounded by the stream's byte budget in the server) rather than
//! losing messages. What is ready is written in one go: a backlog goes out in large writes, not one
//! per event.

use std::collections::BTreeMap;
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
use crate::model::{Message, PartitionInfo, StartPosition};
use crate::protocol::{Envelope, ErrorCode};

/// Most events gathered into one write.
const BATCH: usize = 4096;
/// A write takes no more events once it holds this many bytes.
const BATCH_BYTES: usize = 256 * 1024;

/// Where a stream asks to start: `from` (`?from=new|all|last|SEQ`, new when absent) for every partition,
/// except the partitions `Last-Event-ID` names, which resume after the seq it gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Start {
    /// Where partitions without a resume point start.
    pub from: StartPosition,
    /// Partition → the last seq the client received there (from `Last-Event-ID`).
    pub after: BTreeMap<u32, u64>,
}

impl Start {
    /// The first seq to send in `part`: after its resume point, else where `from` puts it.
    pub(crate) fn first_seq(&self, part: &PartitionInfo) -> u64 {
        if let Some(&seen) = self.after.get(&part.partition) {
            return seen.saturating_add(1);
        }
        match self.from {
            StartPosition::All => part.first_seq.max(1),
            StartPosition::Last => part.head_seq.max(1),
            StartPosition::Seq(seq) => seq,
            _ => part.head_seq.saturating_add(1),
        }
    }
}

/// Where a stream starts: `Last-Event-ID` (what a reconnecting `EventSource` sends back: a seq, or
/// `P:SEQ,P:SEQ,…` on a topic of several partitions; a plain seq is partition 0's) wins for the
/// partitions it names; the others start at `?from=` (`new`, `all`, `last` or a seq), else with the
/// messages published from now on.
pub(crate) fn start_of(head: &Head) -> Result<Start, HttpError> {
    let last_id = match head.header("last-event-id").map(std::str::from_utf8) {
        Some(Ok(id)) => id.trim(),
        Some(Err(_)) => return Err(HttpError::new(ErrorCode::BadField, "Last-Event-ID is not UTF-8")),
        None => "",
    };
    let after = event_id_positions(last_id).ok_or_else(|| {
        let msg = format!(
            "Last-Event-ID \"{last_id}\" is not a seq or a list of P:SEQ; send the id of the last event received"
        );
        HttpError::new(ErrorCode::BadField, msg)
    })?;
    let from = match head.param("from") {
        None | Some("new") => StartPosition::New,
        Some("all" | "start") => StartPosition::All,
        Some("last") => StartPosition::Last,
        Some(other) => other.parse::<u64>().map(StartPosition::Seq).map_err(|_| {
            let msg = format!("from=\"{other}\" is not new, all, last or a seq");
            HttpError::new(ErrorCode::BadField, msg)
        })?,
    };
    Ok(Start { from, after })
}

/// The positions an event id names: empty for an empty id, `{0: SEQ}` for a plain seq, one entry per
/// `P:SEQ` of a list; `None` when it is neither.
fn event_id_positions(id: &str) -> Option<BTreeMap<u32, u64>> {
    if id.is_empty() {
        return Some(BTreeMap::new());
    }
    if let Ok(seq) = id.parse::<u64>() {
        return Some(BTreeMap::from([(0, seq)]));
    }
    id.split(',')
        .map(|item| {
            let (p, seq) = item.trim().split_once(':')?;
            Some((p.parse().ok()?, seq.parse().ok()?))
        })
        .collect()
}

/// What an event's `id` says: the message's seq on a stream of one partition; on a stream over several,
/// every partition's last seq sent (`P:SEQ,…`), so that the id a reconnecting client sends back resumes
/// each partition exactly where it was.
pub(crate) enum EventIds {
    /// The message's seq.
    Seq,
    /// Partition → the last seq sent in it (or the one before where it started).
    Positions(BTreeMap<u32, u64>),
}

impl EventIds {
    /// Writes the id of `message`'s event, after noting that it is sent.
    fn write(&mut self, out: &mut Vec<u8>, message: &Message) {
        match self {
            EventIds::Seq => out.extend_from_slice(message.seq.to_string().as_bytes()),
            EventIds::Positions(positions) => {
                positions.insert(message.partition, message.seq);
                for (i, (p, seq)) in positions.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(format!("{p}:{seq}").as_bytes());
                }
            }
        }
    }
}

/// Appends one event for `message` to `out`.
pub(crate) fn push_event(out: &mut Vec<u8>, message: &Message, ids: &mut EventIds) {
    out.extend_from_slice(b"id: ");
    ids.write(out, message);
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
    mut ids: EventIds,
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
                    push_event(&mut buf, &d.message, &mut ids);
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

    fn part(partition: u32, first_seq: u64, head_seq: u64) -> PartitionInfo {
        PartitionInfo { partition, first_seq, head_seq, messages: 0, bytes: None, leader: None }
    }

    #[test]
    fn a_fresh_request_starts_with_new_messages_and_last_event_id_resumes_after_its_seq() {
        let p0 = part(0, 3, 50);
        let fresh = start_of(&head(b"GET /topics/t/events HTTP/1.1\r\n\r\n")).unwrap();
        assert_eq!((fresh.from, fresh.first_seq(&p0)), (StartPosition::New, 51));
        let resumed =
            start_of(&head(b"GET /topics/t/events?from=all HTTP/1.1\r\nLast-Event-ID: 41\r\n\r\n")).unwrap();
        assert_eq!(resumed.first_seq(&p0), 42, "Last-Event-ID wins over from=");
        let from = start_of(&head(b"GET /topics/t/events?from=7 HTTP/1.1\r\n\r\n")).unwrap();
        assert_eq!(from.first_seq(&p0), 7);
        let all =
            start_of(&head(b"GET /topics/t/events?from=all HTTP/1.1\r\nLast-Event-ID:\r\n\r\n")).unwrap();
        assert_eq!(all.first_seq(&p0), 3, "an empty id is none; all starts at the first retained seq");
        let last = start_of(&head(b"GET /topics/t/events?from=last HTTP/1.1\r\n\r\n")).unwrap();
        assert_eq!((last.first_seq(&p0), last.first_seq(&part(1, 0, 0))), (50, 1));
        let bad = head(b"GET /topics/t/events HTTP/1.1\r\nLast-Event-ID: x\r\n\r\n");
        assert_eq!(start_of(&bad).unwrap_err().status, 400);
        let bad = head(b"GET /topics/t/events HTTP/1.1\r\nLast-Event-ID: 0:4,1\r\n\r\n");
        assert_eq!(start_of(&bad).unwrap_err().status, 400);
        let bad = head(b"GET /topics/t/events?from=yesterday HTTP/1.1\r\n\r\n");
        assert_eq!(start_of(&bad).unwrap_err().status, 400);
    }

    #[test]
    fn an_id_of_several_partitions_resumes_each_one_and_leaves_the_rest_to_from() {
        let start =
            start_of(&head(b"GET /topics/t/events?from=all HTTP/1.1\r\nLast-Event-ID: 0:12, 2:7\r\n\r\n"))
                .unwrap();
        assert_eq!(start.after, BTreeMap::from([(0, 12), (2, 7)]));
        let firsts: Vec<u64> =
            [part(0, 1, 20), part(1, 5, 9), part(2, 1, 7)].iter().map(|p| start.first_seq(p)).collect();
        assert_eq!(firsts, [13, 5, 8], "partition 1 is not in the id: it starts where from=all puts it");
    }

    #[test]
    fn ids_over_several_partitions_name_every_partition_s_last_seq() {
        let engine = crate::engine::Engine::new();
        let topic = Name::new("t").unwrap();
        let mut config = crate::model::TopicConfig::new(topic.clone());
        config.partitions = 2;
        engine.create_topic(config).unwrap();
        let mut ids = EventIds::Positions(BTreeMap::from([(0, 4), (1, 0)]));
        let mut out = Vec::new();
        let mut receipts = Vec::new();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let mut req = PublishRequest::new(topic.clone(), format!("m{i}"));
            req.key = Some(bytes::Bytes::from(key.to_string()));
            let receipt = engine.publish(req).unwrap();
            let message = engine
                .browse(
                    &topic,
                    crate::model::BrowseFrom::At { partition: receipt.partition, seq: receipt.seq },
                    1,
                )
                .unwrap();
            push_event(&mut out, &message[0], &mut ids);
            receipts.push((receipt.partition, receipt.seq));
        }
        let text = String::from_utf8(out).unwrap();
        let last_id = text.lines().filter_map(|l| l.strip_prefix("id: ")).next_back().unwrap();
        let EventIds::Positions(positions) = &ids else { unreachable!() };
        let expected: Vec<String> = positions.iter().map(|(p, s)| format!("{p}:{s}")).collect();
        assert_eq!(last_id, expected.join(","));
        assert_eq!(event_id_positions(last_id).as_ref(), Some(positions), "an id reads back as what it says");
        let mut expected = BTreeMap::from([(0, 4), (1, 0)]);
        expected.extend(receipts);
        assert_eq!(positions, &expected, "each partition's last seq sent; one with none keeps its start");
    }

    #[test]
    fn an_event_carries_the_seq_as_its_id_and_the_envelope_on_one_data_line() {
        let engine = crate::engine::Engine::new();
        let mut req = PublishRequest::new(Name::new("t").unwrap(), "line one\nline two");
        req.headers.insert("k".into(), "v".into());
        engine.publish(req).unwrap();
        let message = engine.browse(&Name::new("t").unwrap(), crate::model::BrowseFrom::Seq(1), 1).unwrap();
        let mut out = Vec::new();
        push_event(&mut out, &message[0], &mut EventIds::Seq);
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
