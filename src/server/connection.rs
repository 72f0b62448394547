//! One client connection: the handshake, the read loop, one writer task that coalesces frames, and one
//! pump task per stream. Every queue is bounded; a client that stops reading is closed after the write
//! timeout, and closing drops its consumers, which hands their in-flight messages back (T7).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::auth::tokens_match;
use crate::broker::{DeliveryStream, StreamItem};
use crate::protocol::{self, Delivered, ErrorCode, Request, ServerFrame, VERSION};

/// A frame for the writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame.
    Text(String),
    /// A binary frame (publish receipts and deliveries, when the client asked for binary frames).
    Binary(Vec<u8>),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

/// Most messages in one `deliver` frame.
const BATCH: usize = 256;
/// A `deliver` frame takes no more messages once it holds this many bytes of them, so that large
/// messages make several frames rather than one too large for the client to read (tungstenite's
/// clients refuse messages over 16 MiB by default).
const BATCH_BYTES: usize = 1024 * 1024;

/// Serves one connection to the end. `over_limit` means the server is full: the client is told so and
/// the connection closes.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    over_limit: bool,
) {
    let limits = shared.config.limits;
    // tungstenite's own cap sits above ours so that an oversized frame up to twice the limit gets an
    // error frame; beyond that the socket is closed with 1009 (message too big).
    let hard_cap = limits.max_frame_bytes.saturating_mul(2).saturating_add(64 * 1024);
    let ws_config =
        WebSocketConfig::default().max_message_size(Some(hard_cap)).max_frame_size(Some(hard_cap));
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
    };
    let (sink, mut source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel(limits.queue_frames.max(4));
    let done = cancel.child_token();
    let writer = tokio::spawn(write_loop(sink, out_rx, shared.config.write_timeout, done.clone()));
    let mut conn = Connection {
        shared: shared.clone(),
        out: out_tx,
        streams: HashMap::new(),
        next_sid: 1,
        authed: false,
        binary: false,
        granted: 0,
        tasks: TaskTracker::new(),
        done: done.clone(),
    };
    if over_limit {
        conn.error(None, ErrorCode::TooManyConnections, "the server has reached its connection limit").await;
        conn.close(CloseCode::Again, "too many connections").await;
    } else {
        conn.read_loop(&mut source).await;
    }
    let reason = if shared.shutdown.is_cancelled() { "server shutting down" } else { "closing" };
    conn.finish(reason).await;
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

type Sink = SplitSink<WebSocketStream<TcpStream>, WsMessage>;

/// Writes queued frames, coalescing what has piled up into one flush; a flush that takes longer than
/// `timeout` means the client stopped reading, and the connection ends.
async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    timeout: Duration,
    done: CancellationToken,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let write = async {
            for item in batch {
                match item {
                    Outbound::Text(text) => sink.feed(WsMessage::Text(text.into())).await?,
                    Outbound::Binary(bytes) => sink.feed(WsMessage::Binary(bytes.into())).await?,
                    Outbound::Close(code, reason) => {
                        let frame = CloseFrame { code, reason: reason.into() };
                        sink.send(WsMessage::Close(Some(frame))).await?;
                        return Ok(false);
                    }
                }
            }
            sink.flush().await.map(|()| true)
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                break;
            }
            Err(_) => {
                tracing::info!("client stopped reading for {timeout:?}; closing the connection");
                break;
            }
        }
    }
    done.cancel();
    let _ = sink.close().await;
}

/// A stream started by `subscribe`.
struct StreamHandle {
    cancel: CancellationToken,
    prefetch: u32,
    /// Room the client has granted, for a stream opened with `credit: true`.
    credit: Option<Arc<Credit>>,
}

/// Deliveries a client has room for on one stream: `prefetch` to begin with, spent by the pump, given
/// back by `credit` frames.
#[derive(Debug)]
struct Credit {
    available: std::sync::atomic::AtomicU64,
    granted: tokio::sync::Notify,
}

impl Credit {
    fn new(initial: u32) -> Self {
        Credit { available: u64::from(initial).into(), granted: tokio::sync::Notify::new() }
    }

    fn grant(&self, n: u64) {
        self.available.fetch_add(n, Ordering::AcqRel);
        self.granted.notify_one();
    }

    /// Waits until there is room for at least one item; returns how much.
    async fn room(&self) -> u64 {
        loop {
            let granted = self.granted.notified();
            let available = self.available.load(Ordering::Acquire);
            if available > 0 {
                return available;
            }
            granted.await;
        }
    }

    fn spend(&self, n: u64) {
        // Only the pump spends, and never more than `room` said, so this cannot go below zero.
        self.available.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The state of one connection.
pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) out: mpsc::Sender<Outbound>,
    streams: HashMap<u64, StreamHandle>,
    next_sid: u64,
    authed: bool,
    /// Publish batches and deliveries travel as binary frames.
    pub(crate) binary: bool,
    /// Sum of the prefetch of open streams.
    granted: u32,
    /// Long-polling fetches and stream pumps.
    pub(crate) tasks: TaskTracker,
    pub(crate) done: CancellationToken,
}

impl Connection {
    async fn read_loop(
        &mut self,
        source: &mut futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
    ) {
        loop {
            let next = tokio::select! {
                () = self.done.cancelled() => return,
                next = source.next() => next,
            };
            match next {
                None | Some(Ok(WsMessage::Close(_))) => return,
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    if let Error::Capacity(c) = &e {
                        self.close(CloseCode::Size, &format!("frame too large: {c}")).await;
                    }
                    tracing::debug!(error = %e, "read failed");
                    return;
                }
                Some(Ok(WsMessage::Text(text))) => {
                    if !self.on_text(text.as_str()).await {
                        return;
                    }
                }
                Some(Ok(WsMessage::Binary(bytes))) if self.binary => self.on_binary(bytes).await,
                Some(Ok(WsMessage::Binary(_))) => {
                    let msg = "binary frames need \"binary\": true in hello; send JSON text frames";
                    self.error(None, ErrorCode::BinaryFrame, msg).await;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Handles one binary frame: a publish batch, answered with a binary receipts frame or a JSON error.
    async fn on_binary(&mut self, bytes: bytes::Bytes) {
        let max = self.shared.config.limits.max_frame_bytes;
        let id = protocol::binary::frame_id(&bytes);
        if bytes.len() > max {
            let msg =
                format!("frame of {} bytes is larger than the server's limit of {max} bytes", bytes.len());
            self.error(id, ErrorCode::FrameTooLarge, &msg).await;
            return;
        }
        match protocol::binary::decode_publish_batch(&bytes) {
            Ok((id, msgs)) => self.publish_binary(id, msgs).await,
            Err(e) => self.error(id, e.code(), &e.to_string()).await,
        }
    }

    /// Handles one text frame; `false` ends the connection.
    async fn on_text(&mut self, text: &str) -> bool {
        let max = self.shared.config.limits.max_frame_bytes;
        if text.len() > max {
            let msg =
                format!("frame of {} bytes is larger than the server's limit of {max} bytes", text.len());
            self.error(None, ErrorCode::FrameTooLarge, &msg).await;
            return true;
        }
        let frame = match protocol::decode_client(text) {
            Ok(frame) => frame,
            Err((id, e)) => {
                self.error(id, e.code(), &e.to_string()).await;
                return self.authed;
            }
        };
        if !self.authed {
            return self.handshake(frame.id, frame.request).await;
        }
        self.handle(frame.id, frame.request).await;
        true
    }

    async fn handshake(&mut self, id: Option<u64>, request: Request) -> bool {
        let Request::Hello { version, token, binary, .. } = request else {
            self.error(
                id,
                ErrorCode::HelloRequired,
                "the first frame must be {\"op\":\"hello\",\"version\":1}",
            )
            .await;
            self.close(CloseCode::Policy, "hello required").await;
            return false;
        };
        if version != VERSION {
            let msg = format!("protocol version {version} is not supported; this server speaks {VERSION}");
            self.error(id, ErrorCode::UnsupportedVersion, &msg).await;
            self.close(CloseCode::Protocol, "unsupported version").await;
            return false;
        }
        if let Some(expected) = &self.shared.config.token {
            let given = token.as_deref().unwrap_or("");
            if !tokens_match(expected, given) {
                let msg = if given.is_empty() { "this server needs a token" } else { "wrong token" };
                self.error(id, ErrorCode::Unauthorized, msg).await;
                self.close(CloseCode::Policy, "unauthorized").await;
                return false;
            }
        }
        self.authed = true;
        self.binary = binary;
        let welcome = ServerFrame::Welcome {
            id,
            version: VERSION,
            server: format!("pubsub {}", env!("CARGO_PKG_VERSION")),
            limits: self.shared.config.limits.announce(),
            binary,
        };
        self.send(&welcome).await;
        true
    }

    /// Queues a frame; waits when the queue is full (the client is slow), gives up when the connection ends.
    pub(crate) async fn send(&self, frame: &ServerFrame) {
        send_frame(&self.out, &self.done, frame).await;
    }

    /// Queues a binary frame.
    pub(crate) async fn send_binary(&self, bytes: Vec<u8>) {
        tokio::select! {
            () = self.done.cancelled() => {}
            _ = self.out.send(Outbound::Binary(bytes)) => {}
        }
    }

    pub(crate) async fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        let frame = ServerFrame::Error { id, code: code.number(), message: message.to_string(), index: None };
        self.send(&frame).await;
    }

    pub(crate) async fn ok(&self, id: Option<u64>, result: Option<serde_json::Value>) {
        if let Some(id) = id {
            self.send(&ServerFrame::Ok { id, result }).await;
        }
    }

    async fn close(&self, code: CloseCode, reason: &str) {
        let _ = self.out.send(Outbound::Close(code, reason.to_string())).await;
    }

    /// Registers a stream and starts pumping it to the client.
    pub(crate) async fn open_stream(
        &mut self,
        id: Option<u64>,
        stream: DeliveryStream,
        prefetch: u32,
        credit: bool,
    ) {
        let sid = self.next_sid;
        self.next_sid += 1;
        let cancel = self.done.child_token();
        let credit = credit.then(|| Arc::new(Credit::new(prefetch)));
        self.streams.insert(sid, StreamHandle { cancel: cancel.clone(), prefetch, credit: credit.clone() });
        self.granted = self.granted.saturating_add(prefetch);
        // The answer goes out before the pump starts, so the client learns the sid first.
        self.ok(id, serde_json::to_value(protocol::StreamReply { sid }).ok()).await;
        self.tasks.spawn(pump(stream, sid, self.out.clone(), cancel, self.binary, credit));
    }

    /// Gives a stream room for `n` more items.
    pub(crate) async fn grant(&mut self, id: Option<u64>, sid: u64, n: u64) {
        match self.streams.get(&sid) {
            Some(StreamHandle { credit: Some(credit), .. }) => {
                credit.grant(n);
                self.ok(id, None).await;
            }
            Some(_) => {
                let msg = format!("stream {sid} was not opened with \"credit\": true");
                self.error(id, ErrorCode::BadField, &msg).await;
            }
            // The stream may have ended a moment ago; only a request that waits for an answer hears of it.
            None if id.is_some() => {
                self.error(id, ErrorCode::NoSuchStream, &format!("no stream {sid} on this connection")).await
            }
            None => {}
        }
    }

    /// Whether another stream with this prefetch fits the limits; answers the error when not.
    pub(crate) async fn admit_stream(&self, id: Option<u64>, prefetch: u32) -> bool {
        let limits = self.shared.config.limits;
        if self.streams.len() >= limits.max_subscriptions {
            let msg = format!("this connection has {} streams, the server's limit", limits.max_subscriptions);
            self.error(id, ErrorCode::TooManySubscriptions, &msg).await;
            return false;
        }
        if self.granted.saturating_add(prefetch) > limits.max_in_flight {
            let msg = format!(
                "prefetch {prefetch} would bring this connection's in-flight credit to {}, over the limit of {}",
                self.granted.saturating_add(prefetch),
                limits.max_in_flight
            );
            self.error(id, ErrorCode::InFlightLimit, &msg).await;
            return false;
        }
        true
    }

    pub(crate) async fn close_stream(&mut self, id: Option<u64>, sid: u64) {
        match self.streams.remove(&sid) {
            Some(handle) => {
                handle.cancel.cancel();
                self.granted = self.granted.saturating_sub(handle.prefetch);
                self.ok(id, None).await;
            }
            None => {
                self.error(id, ErrorCode::NoSuchStream, &format!("no stream {sid} on this connection")).await
            }
        }
    }

    /// Ends every stream and task, then says goodbye.
    async fn finish(&mut self, reason: &str) {
        for (_, handle) in self.streams.drain() {
            handle.cancel.cancel();
        }
        self.done.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        let code = if self.shared.shutdown.is_cancelled() { CloseCode::Away } else { CloseCode::Normal };
        let _ = self.out.try_send(Outbound::Close(code, reason.to_string()));
    }
}

async fn send_frame(out: &mpsc::Sender<Outbound>, done: &CancellationToken, frame: &ServerFrame) {
    let text = protocol::encode_server(frame);
    tokio::select! {
        () = done.cancelled() => {}
        _ = out.send(Outbound::Text(text)) => {}
    }
}

/// Moves items from a stream to the client, batching what is ready into one `deliver` frame. When the
/// connection's queue is full, or the client has granted no room (`credit`), this waits, so the engine
/// stops dispatching and the backlog shows as lag.
async fn pump(
    mut stream: DeliveryStream,
    sid: u64,
    out: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
    binary: bool,
    credit: Option<Arc<Credit>>,
) {
    loop {
        let room = match &credit {
            None => BATCH,
            Some(credit) => tokio::select! {
                () = cancel.cancelled() => return,
                room = credit.room() => usize::try_from(room).unwrap_or(usize::MAX).min(BATCH),
            },
        };
        let first = tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(first) = first else {
            let frame = ServerFrame::Closed { sid, reason: "the subscription ended".into() };
            send_frame(&out, &cancel, &frame).await;
            return;
        };
        let mut batch = Batch {
            sid,
            subscription: None,
            binary,
            messages: Vec::new(),
            raw: Vec::new(),
            frames: Vec::new(),
            items: 0,
            bytes: 0,
        };
        batch.add(first);
        let mut taken = 1;
        while taken < room && batch.bytes < BATCH_BYTES {
            match stream.try_next() {
                Some(item) => batch.add(item),
                None => break,
            }
            taken += 1;
        }
        if let Some(credit) = &credit {
            credit.spend(batch.items);
        }
        for frame in batch.finish() {
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = out.send(frame) => {}
            }
        }
    }
}

/// Frames built from a run of stream items, in order: JSON `deliver` frames, or binary ones when the
/// client asked for binary frames.
struct Batch {
    sid: u64,
    subscription: Option<crate::engine::Name>,
    binary: bool,
    messages: Vec<Delivered>,
    raw: Vec<crate::broker::BrokerDelivery>,
    frames: Vec<Outbound>,
    /// Items the client will count against its credit: deliveries and `lagged` notes.
    items: u64,
    /// Bytes of the deliveries' messages (payload, key, headers).
    bytes: usize,
}

impl Batch {
    fn add(&mut self, item: Result<StreamItem, crate::broker::BrokerError>) {
        match item {
            Ok(StreamItem::Delivery(d)) => {
                self.items += 1;
                self.bytes += d.message.size();
                if self.subscription.is_none() {
                    self.subscription = d.token.as_ref().map(|t| t.subscription.clone());
                }
                if self.binary {
                    self.raw.push(d);
                } else {
                    self.messages.push(Delivered {
                        envelope: protocol::Envelope::from_message(&d.message, d.attempt),
                        lease: d.token.map(|t| t.lease),
                        deadline: d.deadline,
                    });
                }
            }
            Ok(StreamItem::Lagged { skipped }) => {
                self.items += 1;
                self.flush();
                self.push(&ServerFrame::Lagged { sid: self.sid, skipped });
            }
            Err(e) => {
                self.flush();
                self.push(&ServerFrame::Error {
                    id: None,
                    code: ErrorCode::Internal.number(),
                    message: e.to_string(),
                    index: None,
                });
            }
        }
    }

    fn push(&mut self, frame: &ServerFrame) {
        self.frames.push(Outbound::Text(protocol::encode_server(frame)));
    }

    fn flush(&mut self) {
        if !self.raw.is_empty() {
            let raw = std::mem::take(&mut self.raw);
            let bytes = protocol::binary::encode_deliver(self.sid, self.subscription.as_ref(), &raw);
            self.frames.push(Outbound::Binary(bytes));
        }
        if !self.messages.is_empty() {
            let messages = std::mem::take(&mut self.messages);
            let frame =
                ServerFrame::Deliver { sid: self.sid, subscription: self.subscription.clone(), messages };
            self.push(&frame);
        }
    }

    fn finish(mut self) -> Vec<Outbound> {
        self.flush();
        self.frames
    }
}
