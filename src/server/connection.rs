//! One client connection: the request head (a plain HTTP request goes to [`super::http`]), the
//! WebSocket handshake, the read loop, one writer task that coalesces frames, and one pump task per
//! stream. Every queue is bounded; a client that stops reading is closed after the write
//! timeout, and closing drops its consumers, which hands their in-flight messages back (T7).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Allowance, Metered, PendingSlot, is_too_much_before_hello, lift};
use super::auth::tokens_match;
pub(crate) use super::pump::Outbound;
use super::pump::{self, BATCH_BYTES, Credit, Pump};
use super::{Served, Shared, http};
use crate::broker::DeliveryStream;
use crate::engine::ByteBudget;
use crate::protocol::{self, ErrorCode, Request, ServerFrame, VERSION};

/// Most frames the writer coalesces into one flush, and the bytes after which it stops adding more.
const WRITE_FRAMES: usize = 64;
const WRITE_BYTES: usize = 4 * BATCH_BYTES;

type Socket = WebSocketStream<http::Socket>;

/// Serves one connection to the end: the handshake and `hello` within their deadlines (or until a
/// newer connection needs the pending `slot`), then requests until either side closes.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    slot: PendingSlot,
) {
    let limits = shared.config.limits;
    // tungstenite's own cap sits above ours so that an oversized frame up to twice the limit gets an
    // error frame; beyond that the socket is closed with 1009 (message too big).
    let hard_cap = limits.max_frame_bytes.saturating_mul(2).saturating_add(64 * 1024);
    let ws_config =
        WebSocketConfig::default().max_message_size(Some(hard_cap)).max_frame_size(Some(hard_cap));
    // Until `hello` is accepted (or an HTTP request's token), the socket may deliver only
    // `max_hello_bytes`, request head included.
    let (metered, allowance) = Metered::new(stream, limits.max_hello_bytes as u64);
    // The head and the WebSocket handshake share one deadline.
    let deadline = Instant::now() + limits.handshake_timeout;
    let read_head = http::head::read(metered, limits.max_hello_bytes);
    let (head, mut socket) = tokio::select! {
        () = cancel.cancelled() => return,
        () = slot.evicted.cancelled() => {
            tracing::debug!(%peer, "closed before its request to make room for a newer connection");
            return;
        }
        read = tokio::time::timeout_at(deadline, read_head) => match read {
            Ok(read) => read,
            Err(_) => {
                tracing::debug!(%peer, "no request within {:?}", limits.handshake_timeout);
                return;
            }
        },
    };
    let (head, head_len) = match head {
        Ok(head) => head,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "no request head");
            http::refuse_head(&mut socket, &e, shared.config.write_timeout).await;
            return;
        }
    };
    if !head.is_websocket() {
        let request = http::Request { socket, head, head_len, allowance, slot, peer };
        return http::serve(request, shared, cancel).await;
    }
    let handshake = tokio_tungstenite::accept_async_with_config(socket, Some(ws_config));
    let ws = tokio::select! {
        () = cancel.cancelled() => return,
        () = slot.evicted.cancelled() => {
            tracing::debug!(%peer, "closed during its handshake to make room for a newer connection");
            return;
        }
        handshake = tokio::time::timeout_at(deadline, handshake) => match handshake {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "websocket handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no websocket handshake within {:?}", limits.handshake_timeout);
                return;
            }
        },
    };
    let (sink, mut source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel(limits.queue_frames.max(4));
    let done = cancel.child_token();
    let writer = tokio::spawn(write_loop(sink, out_rx, shared.config.write_timeout, done.clone()));
    let budget = shared.connection_budget();
    let mut conn = Connection {
        shared: shared.clone(),
        out: out_tx,
        streams: HashMap::new(),
        next_sid: 1,
        authed: false,
        binary: false,
        binary_settle: false,
        assignments: false,
        granted: 0,
        tasks: TaskTracker::new(),
        done: done.clone(),
        budget,
        allowance,
        hello_by: Instant::now() + limits.hello_timeout,
        evicted: slot.evicted.clone(),
        slot: Some(slot),
        served: None,
    };
    conn.read_loop(&mut source).await;
    let reason = if shared.shutdown.is_cancelled() { "server shutting down" } else { "closing" };
    conn.finish(reason).await;
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

type Sink = SplitSink<Socket, WsMessage>;

/// Writes queued frames, coalescing what has piled up into one flush; a flush that takes longer than
/// `timeout` means the client stopped reading, and the connection ends. A frame's bytes count against
/// its budget until its flush is done (tungstenite holds a copy until then).
async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    timeout: Duration,
    done: CancellationToken,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = 0;
        while batch.len() < WRITE_FRAMES && bytes < WRITE_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += match &next {
                        Outbound::Text(text, _) => text.len(),
                        Outbound::Binary(b, _) => b.len(),
                        Outbound::Close(..) => 0,
                    };
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let mut held = Vec::with_capacity(batch.len());
        let write = async {
            for item in batch {
                match item {
                    Outbound::Text(text, h) => {
                        held.push(h);
                        sink.feed(WsMessage::Text(text.into())).await?;
                    }
                    Outbound::Binary(bytes, h) => {
                        held.push(h);
                        sink.feed(WsMessage::Binary(bytes.into())).await?;
                    }
                    Outbound::Close(code, reason) => {
                        let frame = CloseFrame { code, reason: reason.into() };
                        sink.send(WsMessage::Close(Some(frame))).await?;
                        return Ok(false);
                    }
                }
            }
            sink.flush().await.map(|()| true)
        };
        let written = tokio::time::timeout(timeout, write).await;
        drop(held);
        match written {
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
    // Frames still queued are dropped with the receiver, giving their bytes back.
    drop(rx);
    let _ = sink.close().await;
}

/// A stream started by `subscribe`.
struct StreamHandle {
    cancel: CancellationToken,
    prefetch: u32,
    /// Room the client has granted, for a stream opened with `credit: true`.
    credit: Option<Arc<Credit>>,
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
    /// Acks, nacks and credit may come as binary frames too.
    binary_settle: bool,
    /// The client reads `assigned` and `revoked` frames.
    assignments: bool,
    /// Sum of the prefetch of open streams.
    granted: u32,
    /// Long-polling fetches and stream pumps.
    pub(crate) tasks: TaskTracker,
    pub(crate) done: CancellationToken,
    /// Bytes held for this connection: its streams' and its answers' (the parent of each stream's).
    pub(crate) budget: Arc<ByteBudget>,
    /// What the socket may still deliver before `hello`; lifted by `hello`.
    allowance: Allowance,
    /// `hello` must be in by then.
    hello_by: Instant,
    /// Fired when a newer connection takes this one's pending slot before its `hello`.
    evicted: CancellationToken,
    /// The pending slot, until `hello`.
    slot: Option<PendingSlot>,
    /// The place among `max_connections`, from `hello` on.
    served: Option<Served>,
}

impl Connection {
    async fn read_loop(&mut self, source: &mut SplitStream<Socket>) {
        loop {
            let waiting = !self.authed;
            let next = tokio::select! {
                () = self.done.cancelled() => return,
                () = self.evicted.cancelled(), if waiting => {
                    self.close(CloseCode::Again, "too many connections waiting for hello; try again").await;
                    return;
                }
                () = tokio::time::sleep_until(self.hello_by), if waiting => {
                    let after = self.shared.config.limits.hello_timeout;
                    let msg = format!("no hello within {after:?} of connecting");
                    self.error(None, ErrorCode::HelloRequired, &msg).await;
                    self.close(CloseCode::Policy, "hello required").await;
                    return;
                }
                next = source.next() => next,
            };
            match next {
                None | Some(Ok(WsMessage::Close(_))) => return,
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    match &e {
                        Error::Capacity(c) => {
                            self.close(CloseCode::Size, &format!("frame too large: {c}")).await;
                        }
                        Error::Io(io) if is_too_much_before_hello(io) => {
                            let max = self.shared.config.limits.max_hello_bytes;
                            let msg = format!("more than {max} bytes before hello; send hello first");
                            self.error(None, ErrorCode::FrameTooLarge, &msg).await;
                            self.close(CloseCode::Size, "too much before hello").await;
                        }
                        _ => {}
                    }
                    tracing::debug!(error = %e, "read failed");
                    return;
                }
                Some(Ok(WsMessage::Text(text))) => {
                    if !self.on_text(text.as_str()).await {
                        return;
                    }
                }
                Some(Ok(WsMessage::Binary(_))) if !self.authed => {
                    self.refuse_before_hello(None).await;
                    return;
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

    /// Handles one binary frame: a publish batch (answered with a binary receipts frame), a settle frame
    /// (answered with a settled frame) or credit; a frame that cannot be decoded gets a JSON error.
    async fn on_binary(&mut self, bytes: bytes::Bytes) {
        let max = self.shared.config.limits.max_frame_bytes;
        let id = protocol::binary::frame_id(&bytes);
        if bytes.len() > max {
            let msg =
                format!("frame of {} bytes is larger than the server's limit of {max} bytes", bytes.len());
            self.error(id, ErrorCode::FrameTooLarge, &msg).await;
            return;
        }
        use protocol::binary;
        let refused = match bytes.first() {
            Some(&binary::SETTLE) if self.binary_settle => match binary::decode_settle(&bytes) {
                Ok((op, sub, items)) => return self.settle_binary(op, sub, items).await,
                Err(e) => e,
            },
            Some(&binary::CREDIT) if self.binary_settle => match binary::decode_credit(&bytes) {
                Ok((id, sid, n)) => return self.grant(id, sid, n).await,
                Err(e) => e,
            },
            Some(&(binary::SETTLE | binary::CREDIT)) => {
                let msg = "binary settle and credit frames need \"binary_settle\": true in hello";
                return self.error(id, ErrorCode::BadFrame, msg).await;
            }
            _ => match binary::decode_publish_batch(&bytes) {
                Ok((id, msgs)) => return self.publish_binary(id, msgs).await,
                Err(e) => e,
            },
        };
        self.error(id, refused.code(), &refused.to_string()).await;
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

    /// Answers a first frame that is not `hello` with error 1004, and closes.
    async fn refuse_before_hello(&mut self, id: Option<u64>) {
        let msg = "the first frame must be {\"op\":\"hello\",\"version\":1}";
        self.error(id, ErrorCode::HelloRequired, msg).await;
        self.close(CloseCode::Policy, "hello required").await;
    }

    async fn handshake(&mut self, id: Option<u64>, request: Request) -> bool {
        let Request::Hello { version, token, binary, binary_settle, assignments, .. } = request else {
            self.refuse_before_hello(id).await;
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
        let Some(served) = Served::take(&self.shared) else {
            self.error(id, ErrorCode::TooManyConnections, "the server has reached its connection limit")
                .await;
            self.close(CloseCode::Again, "too many connections").await;
            return false;
        };
        self.served = Some(served);
        self.slot = None;
        lift(&self.allowance);
        self.authed = true;
        self.binary = binary;
        self.binary_settle = binary && binary_settle;
        self.assignments = assignments;
        let welcome = ServerFrame::Welcome {
            id,
            version: VERSION,
            server: format!("pubsub {}", env!("CARGO_PKG_VERSION")),
            limits: self.shared.config.limits.announce(),
            binary,
            binary_settle: self.binary_settle,
            assignments,
        };
        self.send(&welcome).await;
        true
    }

    /// Queues a frame; waits when the queue is full (the client is slow), gives up when the connection ends.
    pub(crate) async fn send(&self, frame: &ServerFrame) {
        self.queue(Outbound::text(protocol::encode_server(frame), &self.budget)).await;
    }

    /// Queues a binary frame.
    pub(crate) async fn send_binary(&self, bytes: Vec<u8>) {
        self.queue(Outbound::binary(bytes, &self.budget)).await;
    }

    async fn queue(&self, frame: Outbound) {
        tokio::select! {
            () = self.done.cancelled() => {}
            _ = self.out.send(frame) => {}
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
        budget: Arc<ByteBudget>,
    ) {
        let sid = self.next_sid;
        self.next_sid += 1;
        let cancel = self.done.child_token();
        let credit = credit.then(|| Arc::new(Credit::new(prefetch)));
        self.streams.insert(sid, StreamHandle { cancel: cancel.clone(), prefetch, credit: credit.clone() });
        self.granted = self.granted.saturating_add(prefetch);
        // The answer goes out before the pump starts, so the client learns the sid first.
        self.ok(id, serde_json::to_value(protocol::StreamReply { sid }).ok()).await;
        let p = Pump {
            sid,
            out: self.out.clone(),
            cancel,
            binary: self.binary,
            assignments: self.assignments,
            credit,
            budget,
            connection: self.budget.clone(),
        };
        self.tasks.spawn(pump::pump(stream, p));
    }

    /// A new stream's byte budget: the server's cap, or less when the client asks for less.
    pub(crate) fn stream_budget(&self, asked: Option<u64>) -> Arc<ByteBudget> {
        let cap = self.shared.config.limits.max_stream_bytes as u64;
        ByteBudget::child(&self.budget, asked.map_or(cap, |n| n.clamp(1, cap)))
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
