//! The `ws://` backend: another `pubsub serve`, reached over the wire protocol.
//!
//! One task owns the socket. Requests carry ids and wait for their answer on a oneshot; `deliver`
//! frames go to the stream they belong to through a bounded channel, so a slow reader slows the socket
//! (and the server then holds messages back as lag) instead of buffering without bound. When the link
//! drops, outstanding requests fail with `Disconnected`, the task reconnects with backoff, streams are
//! subscribed again (durable subscriptions resume from their ack floor on the server), and callers see
//! `Disconnected` / `Reconnected` events rather than an error storm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, ConnectionEvent, DeliveryStream, ItemSource,
    Settle, StreamItem, SubscribeRequest,
};
use crate::model::{
    BrowseFrom, FetchOptions, Message, Name, PeekReport, PublishReceipt, PublishRequest, SeekTarget,
    SubscriptionConfig, SubscriptionInfo, TopicConfig, TopicInfo,
};
use crate::protocol::{
    self, BrowseSpec, ClientFrame, CountReply, Delivered, Envelope, ErrorCode, LeaseRef, Request, SeekSpec,
    ServerFrame, StreamReply, SubscribeSpec, SubscriptionSpec, TopicSpec, VERSION,
};

/// How long a request waits for its answer (a fetch adds its own wait).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one frame brought for a stream, handed over in one piece (one channel operation per frame,
/// not per message).
type ItemBatch = Vec<Result<StreamItem, BrokerError>>;

type Answer = Result<Option<serde_json::Value>, BrokerError>;

/// What a request was answered with.
enum Reply {
    /// A JSON `ok` frame's result.
    Json(Option<serde_json::Value>),
    /// A binary receipts frame.
    Receipts(Vec<PublishReceipt>),
}

/// A frame on its way to the server.
enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

struct Pending {
    answer: oneshot::Sender<Result<Reply, BrokerError>>,
    /// For `subscribe`: the client-side stream the returned sid belongs to.
    stream: Option<u64>,
}

struct StreamState {
    spec: SubscribeSpec,
    /// Unbounded, so that the socket reader never waits for one stream's reader (which may itself be
    /// waiting for an answer behind it on the socket); the server's credit bounds what it holds.
    tx: mpsc::UnboundedSender<ItemBatch>,
}

struct Inner {
    url: String,
    ws_url: String,
    token: Option<String>,
    /// For `--broker local`: the daemon's endpoint file, read again before each reconnect, so that a
    /// daemon restarted on a new port (with a new token) is found.
    endpoint_file: Option<std::path::PathBuf>,
    out: Mutex<Option<mpsc::Sender<Outgoing>>>,
    /// The server accepted binary frames on the current connection.
    binary: std::sync::atomic::AtomicBool,
    /// The current server's largest accepted frame, from its welcome.
    max_frame: std::sync::atomic::AtomicUsize,
    /// The server's largest message, as its welcome said: a larger one is refused here, with the same
    /// words at every size (one too large for a frame would otherwise cost the connection).
    max_message: std::sync::atomic::AtomicUsize,
    pending: Mutex<HashMap<u64, Pending>>,
    streams: Mutex<HashMap<u64, StreamState>>,
    /// Server sid → client stream id, for the current connection.
    sids: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
    events: broadcast::Sender<ConnectionEvent>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A broker on another `pubsub serve`.
pub struct RemoteBroker {
    inner: Arc<Inner>,
    _task: DropGuard,
}

impl std::fmt::Debug for RemoteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBroker").field("url", &self.inner.url).finish()
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl RemoteBroker {
    /// Publishes a batch whose messages all fit the server's limit: JSON, or binary frames of at most
    /// the server's frame size, in order; a failure names the index in the whole batch (everything before
    /// it was published).
    async fn send_batch(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        if !self.inner.binary.load(Ordering::Relaxed) {
            return self
                .call_as(Request::PublishBatch { messages: msgs.iter().map(envelope).collect() })
                .await;
        }
        let max_frame = self.inner.max_frame.load(Ordering::Relaxed);
        let mut receipts = Vec::with_capacity(msgs.len());
        for chunk in protocol::binary::publish_chunks(msgs, max_frame) {
            let offset = receipts.len();
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let frame = Outgoing::Binary(protocol::binary::encode_publish_batch(id, chunk));
            match send_and_wait(&self.inner, id, frame, None, REQUEST_TIMEOUT).await {
                Ok(Reply::Receipts(some)) => receipts.extend(some),
                Ok(Reply::Json(_)) => {
                    return Err(BrokerError::Protocol("a JSON answer to a binary publish batch".into()));
                }
                Err(BrokerError::Batch { index, source }) => {
                    return Err(BrokerError::Batch { index: offset + index, source });
                }
                Err(e) if offset > 0 => {
                    return Err(BrokerError::Batch { index: offset, source: Box::new(e) });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(receipts)
    }

    /// Refuses a message over the server's announced size limit, in the server's own words.
    fn check_size(&self, msg: &PublishRequest) -> Result<(), BrokerError> {
        let max = self.inner.max_message.load(Ordering::Relaxed);
        if msg.size() <= max {
            return Ok(());
        }
        Err(BrokerError::Remote {
            code: ErrorCode::MessageTooLarge.number(),
            message: format!(
                "message of {} bytes is larger than the server's limit of {max} bytes (`serve --max-message-bytes` raises it)",
                msg.size()
            ),
        })
    }

    /// Connects to `url` (`ws://host:port`, an optional `?token=T`); `token` overrides the URL's.
    /// Fails with `Unreachable` or `Auth` when the first connection cannot be made.
    pub async fn connect(url: &str, token: Option<String>) -> Result<Self, BrokerError> {
        Self::connect_following(url, token, None).await
    }

    /// Like [`RemoteBroker::connect`], and on every reconnect first reads `endpoint_file` (when given)
    /// for the current URL and token: the local daemon's way of saying where it is now.
    pub async fn connect_following(
        url: &str,
        token: Option<String>,
        endpoint_file: Option<std::path::PathBuf>,
    ) -> Result<Self, BrokerError> {
        let (ws_url, url_token) = split_token(url);
        if url.starts_with("wss://") {
            return Err(BrokerError::InvalidUrl {
                url: url.into(),
                reason: "TLS (wss://) is not built into this binary yet; use ws:// over a trusted network or an SSH tunnel".into(),
            });
        }
        let (events, _) = broadcast::channel(64);
        let inner = Arc::new(Inner {
            url: ws_url.clone(),
            ws_url,
            token: token.or(url_token),
            endpoint_file,
            out: Mutex::new(None),
            binary: std::sync::atomic::AtomicBool::new(false),
            max_frame: std::sync::atomic::AtomicUsize::new(usize::MAX),
            max_message: std::sync::atomic::AtomicUsize::new(usize::MAX),
            pending: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            sids: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            events,
        });
        let socket = open(&inner).await?;
        // The request queue exists before this returns, so the first call cannot find it missing.
        let out_rx = install_queue(&inner);
        let cancel = CancellationToken::new();
        tokio::spawn(run(inner.clone(), socket, out_rx, cancel.clone()));
        let _ = inner.events.send(ConnectionEvent::Connected);
        Ok(RemoteBroker { inner, _task: cancel.drop_guard() })
    }

    async fn call(&self, request: Request) -> Answer {
        call(&self.inner, request, None, REQUEST_TIMEOUT).await
    }

    async fn call_as<T: DeserializeOwned>(&self, request: Request) -> Result<T, BrokerError> {
        let value = self.call(request).await?.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| BrokerError::Protocol(format!("unexpected answer: {e}")))
    }
}

/// Splits `?token=T` off a URL.
fn split_token(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("token=") {
            Some(t) => {
                token = Some(t.to_string());
                false
            }
            None => true,
        })
        .collect();
    let base = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
    (base, token)
}

/// Opens a socket and completes the hello/welcome handshake.
async fn open(inner: &Inner) -> Result<Socket, BrokerError> {
    let unreachable = |reason: String| BrokerError::Unreachable { url: inner.url.clone(), reason };
    let (ws_url, token) = match inner.endpoint_file.as_deref().and_then(super::daemon::Endpoint::read) {
        Some(now) => (split_token(&now.url).0, Some(now.token)),
        None => (inner.ws_url.clone(), inner.token.clone()),
    };
    // Small frames (acks, credit) go out at once: with Nagle's algorithm they would wait for the
    // server's delayed ACK, up to 40 ms, whenever a publish is still unacknowledged on the wire.
    let connecting = tokio_tungstenite::connect_async_with_config(ws_url.as_str(), None, true);
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let hello = ClientFrame {
        id: Some(0),
        request: Request::Hello {
            version: VERSION,
            token,
            client: Some(format!("pubsub {}", env!("CARGO_PKG_VERSION"))),
            binary: true,
        },
    };
    let text = protocol::encode_client(&hello).map_err(|e| BrokerError::Protocol(e.to_string()))?;
    socket.send(WsMessage::Text(text.into())).await.map_err(|e| unreachable(e.to_string()))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .map_err(|_| unreachable("no welcome within 10 s".into()))?;
        let Some(Ok(WsMessage::Text(text))) = next else {
            match next {
                Some(Ok(_)) => continue,
                _ => return Err(unreachable("closed during the handshake".into())),
            }
        };
        match protocol::decode_server(text.as_str()) {
            Ok(ServerFrame::Welcome { binary, limits, .. }) => {
                // A server from before binary frames ignores the offer and answers without the flag.
                inner.binary.store(binary, Ordering::Relaxed);
                inner.max_frame.store(limits.max_frame_bytes, Ordering::Relaxed);
                inner.max_message.store(limits.max_message_bytes, Ordering::Relaxed);
                return Ok(socket);
            }
            Ok(ServerFrame::Error { code, message, .. }) if code == ErrorCode::Unauthorized.number() => {
                return Err(BrokerError::Auth { url: inner.url.clone(), reason: message });
            }
            Ok(ServerFrame::Error { code, message, .. }) => {
                return Err(BrokerError::Remote { code, message });
            }
            Ok(_) => continue,
            Err(e) => return Err(BrokerError::Protocol(e.to_string())),
        }
    }
}

/// Creates the queue of outgoing requests for a new socket.
fn install_queue(inner: &Inner) -> mpsc::Receiver<Outgoing> {
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(256);
    *guard(&inner.out) = Some(out_tx);
    out_rx
}

/// Owns the connection: serves it until it drops, then reconnects with backoff until cancelled.
async fn run(
    inner: Arc<Inner>,
    mut socket: Socket,
    mut out_rx: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    // Only a reconnect resubscribes: on the first socket, streams subscribe themselves.
    let mut reconnected = false;
    loop {
        let reason = serve(&inner, socket, out_rx, &cancel, reconnected).await;
        reconnected = true;
        *guard(&inner.out) = None;
        guard(&inner.sids).clear();
        for (_, pending) in guard(&inner.pending).drain() {
            let lost = BrokerError::Disconnected { url: inner.url.clone(), reason: reason.clone() };
            let _ = pending.answer.send(Err(lost));
        }
        if cancel.is_cancelled() {
            return;
        }
        let _ = inner.events.send(ConnectionEvent::Disconnected { reason });
        let mut delay = Duration::from_millis(100);
        socket = loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            match open(&inner).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "reconnect failed");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        out_rx = install_queue(&inner);
        let _ = inner.events.send(ConnectionEvent::Reconnected);
    }
}

/// Serves one live socket; returns why it ended.
async fn serve(
    inner: &Arc<Inner>,
    socket: Socket,
    mut out_rx: mpsc::Receiver<Outgoing>,
    cancel: &CancellationToken,
    reconnected: bool,
) -> String {
    let (mut sink, mut source) = socket.split();
    // Streams that were open before a reconnect are subscribed again on this socket. (On the first
    // socket a stream registered by a concurrent `subscribe` sends its own request; doing it here too
    // would open it twice and deliver everything twice.)
    let resubscribe: Vec<(u64, SubscribeSpec)> = if reconnected {
        guard(&inner.streams).iter().map(|(id, s)| (*id, s.spec.clone())).collect()
    } else {
        Vec::new()
    };
    for (stream, spec) in resubscribe {
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = call(&inner, Request::Subscribe(spec), Some(stream), REQUEST_TIMEOUT).await {
                tracing::warn!(error = %e, "resubscribe failed");
            }
        });
    }
    let writer = async {
        let frame = |o: Outgoing| match o {
            Outgoing::Text(text) => WsMessage::Text(text.into()),
            Outgoing::Binary(bytes) => WsMessage::Binary(bytes.into()),
        };
        while let Some(first) = out_rx.recv().await {
            sink.feed(frame(first)).await?;
            while let Ok(more) = out_rx.try_recv() {
                sink.feed(frame(more)).await?;
            }
            sink.flush().await?;
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    let reader = async {
        while let Some(next) = source.next().await {
            match next {
                Ok(WsMessage::Text(text)) => on_frame(inner, text.as_str()).await,
                Ok(WsMessage::Binary(bytes)) => on_binary(inner, bytes).await,
                Ok(WsMessage::Close(frame)) => {
                    return frame
                        .map_or_else(|| "closed by the server".to_string(), |f| f.reason.to_string());
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_string()
    };
    tokio::select! {
        () = cancel.cancelled() => "client closed".into(),
        r = writer => r.err().map_or_else(|| "client closed".into(), |e| e.to_string()),
        reason = reader => reason,
    }
}

/// Routes one frame from the server.
async fn on_frame(inner: &Arc<Inner>, text: &str) {
    let frame = match protocol::decode_server(text) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable frame from server");
            return;
        }
    };
    match frame {
        ServerFrame::Ok { id, result } => {
            let Some(pending) = guard(&inner.pending).remove(&id) else {
                return;
            };
            if let (Some(stream), Some(result)) = (pending.stream, &result)
                && let Ok(reply) = serde_json::from_value::<StreamReply>(result.clone())
            {
                guard(&inner.sids).insert(reply.sid, stream);
            }
            let _ = pending.answer.send(Ok(Reply::Json(result)));
        }
        ServerFrame::Error { id: Some(id), code, message, index } => {
            if let Some(pending) = guard(&inner.pending).remove(&id) {
                let remote = BrokerError::Remote { code, message };
                let error = match index {
                    Some(index) => BrokerError::Batch { index, source: Box::new(remote) },
                    None => remote,
                };
                let _ = pending.answer.send(Err(error));
            }
        }
        ServerFrame::Error { id: None, code, message, .. } => {
            tracing::warn!(code, %message, "server reported an error");
        }
        ServerFrame::Deliver { sid, subscription, messages } => {
            let Some(tx) = stream_sender(inner, sid) else {
                return;
            };
            let items = messages
                .into_iter()
                .map(|m| to_delivery(m, subscription.as_ref()).map(StreamItem::Delivery))
                .collect();
            let _ = tx.send(items);
        }
        ServerFrame::Lagged { sid, skipped } => {
            if let Some(tx) = stream_sender(inner, sid) {
                let _ = tx.send(vec![Ok(StreamItem::Lagged { skipped })]);
            }
        }
        ServerFrame::Closed { sid, .. } => {
            if let Some(stream) = guard(&inner.sids).remove(&sid) {
                guard(&inner.streams).remove(&stream);
            }
        }
        ServerFrame::Welcome { .. } => {}
    }
}

/// Routes one binary frame from the server: publish receipts or deliveries.
async fn on_binary(inner: &Arc<Inner>, bytes: bytes::Bytes) {
    use protocol::binary;
    match bytes.first() {
        Some(&binary::RECEIPTS) => match binary::decode_receipts(&bytes) {
            Ok((id, receipts)) => {
                if let Some(pending) = guard(&inner.pending).remove(&id) {
                    let _ = pending.answer.send(Ok(Reply::Receipts(receipts)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable receipts from server"),
        },
        Some(&binary::DELIVER) => match binary::decode_deliver(&bytes) {
            Ok((sid, deliveries)) => {
                let Some(tx) = stream_sender(inner, sid) else { return };
                let _ = tx.send(deliveries.into_iter().map(|d| Ok(StreamItem::Delivery(d))).collect());
            }
            Err(e) => tracing::warn!(error = %e, "undecodable deliveries from server"),
        },
        other => tracing::warn!(kind = ?other, "unknown binary frame from server"),
    }
}

fn stream_sender(inner: &Inner, sid: u64) -> Option<mpsc::UnboundedSender<ItemBatch>> {
    let stream = *guard(&inner.sids).get(&sid)?;
    guard(&inner.streams).get(&stream).map(|s| s.tx.clone())
}

fn to_delivery(d: Delivered, subscription: Option<&Name>) -> Result<BrokerDelivery, BrokerError> {
    let message = d.envelope.to_message().map_err(|e| BrokerError::Protocol(e.to_string()))?;
    let token = match (d.lease, subscription) {
        (Some(lease), Some(sub)) => Some(AckToken {
            subscription: sub.clone(),
            partition: message.partition,
            seq: message.seq,
            lease,
            reply: None,
        }),
        _ => None,
    };
    Ok(BrokerDelivery { attempt: d.envelope.attempt, deadline: d.deadline, token, message })
}

/// Sends a request and waits for its answer.
async fn call(inner: &Inner, request: Request, stream: Option<u64>, timeout: Duration) -> Answer {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let text = protocol::encode_client(&ClientFrame { id: Some(id), request })
        .map_err(|e| BrokerError::Protocol(e.to_string()))?;
    match send_and_wait(inner, id, Outgoing::Text(text), stream, timeout).await? {
        Reply::Json(value) => Ok(value),
        Reply::Receipts(_) => Err(BrokerError::Protocol("binary receipts answered a JSON request".into())),
    }
}

/// Queues a frame with request id `id` and waits for the answer to that id.
async fn send_and_wait(
    inner: &Inner,
    id: u64,
    frame: Outgoing,
    stream: Option<u64>,
    timeout: Duration,
) -> Result<Reply, BrokerError> {
    let text = frame;
    let (answer, rx) = oneshot::channel();
    let out = guard(&inner.out).clone();
    let Some(out) = out else {
        return Err(BrokerError::Disconnected { url: inner.url.clone(), reason: "reconnecting".into() });
    };
    guard(&inner.pending).insert(id, Pending { answer, stream });
    if out.send(text).await.is_err() {
        guard(&inner.pending).remove(&id);
        return Err(BrokerError::Disconnected { url: inner.url.clone(), reason: "connection closed".into() });
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => {
            Err(BrokerError::Disconnected { url: inner.url.clone(), reason: "connection closed".into() })
        }
        Err(_) => {
            guard(&inner.pending).remove(&id);
            Err(BrokerError::Timeout(timeout))
        }
    }
}

/// A stream of deliveries from the server; dropping it unsubscribes. It hands room back to the server
/// (`credit` frames) as its reader takes items, half a prefetch at a time.
struct RemoteSource {
    inner: Arc<Inner>,
    id: u64,
    rx: mpsc::UnboundedReceiver<ItemBatch>,
    /// The rest of the last batch received.
    buffered: std::collections::VecDeque<Result<StreamItem, BrokerError>>,
    /// Items taken since room was last handed back.
    taken: u64,
    grant_every: u64,
}

impl RemoteSource {
    fn take(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        let item = self.buffered.pop_front()?;
        self.taken += 1;
        Some(item)
    }

    /// The credit frame for what was taken, if it is time for one; `None` also when the stream has no
    /// server stream right now (reconnecting: the new one starts with full room).
    fn credit_frame(&mut self) -> Option<Outgoing> {
        if self.taken < self.grant_every {
            return None;
        }
        let n = std::mem::take(&mut self.taken);
        let sid = sid_of(&guard(&self.inner.sids), self.id)?;
        let frame = ClientFrame { id: None, request: Request::Credit { sid, n } };
        protocol::encode_client(&frame).ok().map(Outgoing::Text)
    }
}

#[async_trait]
impl ItemSource for RemoteSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        if let Some(frame) = self.credit_frame() {
            let out = guard(&self.inner.out).clone();
            if let Some(out) = out {
                // Waits for room in the send queue, which the writer task empties on its own.
                let _ = out.send(frame).await;
            }
        }
        while self.buffered.is_empty() {
            self.buffered.extend(self.rx.recv().await?);
        }
        self.take()
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        if self.buffered.is_empty()
            && let Ok(batch) = self.rx.try_recv()
        {
            self.buffered.extend(batch);
        }
        let item = self.take();
        if self.taken >= self.grant_every {
            let out = guard(&self.inner.out).clone();
            if let Some(out) = out
                && let Ok(permit) = out.try_reserve()
                && let Some(frame) = self.credit_frame()
            {
                permit.send(frame);
            }
            // Otherwise the next call hands the room back (`next` before it waits).
        }
        item
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        guard(&self.inner.streams).remove(&self.id);
        let sid = {
            let mut sids = guard(&self.inner.sids);
            let sid = sid_of(&sids, self.id);
            if let Some(sid) = sid {
                sids.remove(&sid);
            }
            sid
        };
        if let (Some(sid), Some(out)) = (sid, guard(&self.inner.out).clone()) {
            let frame = ClientFrame { id: None, request: Request::Unsubscribe { sid } };
            if let Ok(text) = protocol::encode_client(&frame) {
                // Best effort: if the queue is full the server will drop the stream with the connection.
                let _ = out.try_send(Outgoing::Text(text));
            }
        }
    }
}

/// The server's sid for client stream `id` on the current connection.
fn sid_of(sids: &HashMap<u64, u64>, id: u64) -> Option<u64> {
    sids.iter().find(|(_, stream)| **stream == id).map(|(sid, _)| *sid)
}

fn lease_ref(token: &AckToken) -> LeaseRef {
    LeaseRef {
        subscription: token.subscription.clone(),
        partition: token.partition,
        seq: token.seq,
        lease: token.lease,
    }
}

fn envelope(msg: &PublishRequest) -> Envelope {
    let (payload, payload_encoding) = protocol::envelope::encode_bytes(&msg.payload);
    let (key, key_encoding) = match &msg.key {
        Some(k) => {
            let (text, enc) = protocol::envelope::encode_bytes(k);
            (Some(text), (enc != protocol::Encoding::Utf8).then_some(enc))
        }
        None => (None, None),
    };
    Envelope {
        topic: String::new(),
        subject: msg.subject.to_string(),
        seq: 0,
        partition: 0,
        timestamp: None,
        key,
        key_encoding,
        msg_id: msg.msg_id.clone(),
        headers: msg.headers.clone(),
        attempt: None,
        payload: serde_json::Value::String(payload),
        payload_encoding,
    }
}

#[async_trait]
impl Broker for RemoteBroker {
    fn kind(&self) -> &'static str {
        "ws"
    }

    fn url(&self) -> String {
        self.inner.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // A pubsub server offers the engine's model; persistence follows once the durable store lands.
        Capabilities::all().without(super::capability::ENGINE_LACKS)
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        self.check_size(&msg)?;
        self.call_as(Request::Publish { message: envelope(&msg) }).await
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        let oversize = msgs.iter().enumerate().find_map(|(i, m)| self.check_size(m).err().map(|e| (i, e)));
        let Some((index, e)) = oversize else {
            return self.send_batch(&msgs).await;
        };
        // Everything before it goes first, as the server would have published it.
        if index > 0 {
            self.send_batch(&msgs[..index]).await?;
        }
        Err(BrokerError::Batch { index, source: Box::new(e) })
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        let prefetch = req.prefetch.unwrap_or(protocol::DEFAULT_PREFETCH).max(1);
        let spec = SubscribeSpec {
            patterns: req.patterns,
            subscription: req.subscription,
            from: req.from,
            ack: req.ack,
            consumer: req.consumer,
            prefetch: Some(prefetch),
            prefetch_bytes: None,
            credit: true,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        guard(&self.inner.streams).insert(id, StreamState { spec: spec.clone(), tx });
        if let Err(e) = call(&self.inner, Request::Subscribe(spec), Some(id), REQUEST_TIMEOUT).await {
            guard(&self.inner.streams).remove(&id);
            return Err(e);
        }
        let source = RemoteSource {
            inner: self.inner.clone(),
            id,
            rx,
            buffered: std::collections::VecDeque::new(),
            taken: 0,
            grant_every: u64::from(prefetch / 2).max(1),
        };
        Ok(DeliveryStream::new(Box::new(source)))
    }

    async fn fetch(
        &self,
        subscription: &Name,
        consumer: &str,
        opts: FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        let wait = opts.wait.unwrap_or_default();
        let request = Request::Fetch {
            subscription: subscription.clone(),
            consumer: consumer.to_string(),
            max_msgs: opts.max_msgs,
            max_bytes: (opts.max_bytes != u64::MAX).then_some(opts.max_bytes),
            wait_ms: opts.wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
        };
        let value = call(&self.inner, request, None, REQUEST_TIMEOUT + wait).await?;
        let delivered: Vec<Delivered> = serde_json::from_value(value.unwrap_or_default())
            .map_err(|e| BrokerError::Protocol(format!("unexpected answer: {e}")))?;
        delivered.into_iter().map(|d| to_delivery(d, Some(subscription))).collect()
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        let lease = lease_ref(token);
        let request = match how {
            Settle::Ack => Request::Ack(lease),
            Settle::Nack(delay) => Request::Nack {
                lease,
                delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            Settle::Extend(by) => {
                Request::Extend { lease, by_ms: u64::try_from(by.as_millis()).unwrap_or(u64::MAX) }
            }
            Settle::Term(reason) => Request::Term { lease, reason },
        };
        self.call(request).await.map(|_| ())
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.call_as(Request::Topics).await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        self.call_as(Request::TopicInfo { topic: name.clone() }).await
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        let spec = TopicSpec {
            name: Some(config.name.clone()),
            subjects: config.subjects.clone(),
            max_msgs: Some(config.limits.max_msgs.unwrap_or(0)),
            max_bytes: Some(config.limits.max_bytes.unwrap_or(0)),
            max_age_ms: Some(
                config.limits.max_age.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            discard: Some(config.discard),
            max_msg_bytes: Some(config.max_msg_bytes),
            dedup_window_ms: Some(u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX)),
            durability: Some(config.durability.to_string()),
            segment_bytes: Some(config.segment_bytes),
        };
        self.call_as(Request::CreateTopic { spec }).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.call(Request::DeleteTopic { topic: name.clone() }).await.map(|_| ())
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.call_as::<CountReply>(Request::PurgeTopic { topic: name.clone() }).await.map(|r| r.count)
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.call_as(Request::Subscriptions { topic: topic.cloned() }).await
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        self.call_as(Request::SubscriptionInfo { subscription: name.clone() }).await
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        self.call_as(Request::CreateSubscription { spec: SubscriptionSpec::from_config(&config) }).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.call(Request::DeleteSubscription { subscription: name.clone() }).await.map(|_| ())
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let from = match from {
            BrowseFrom::Seq(s) => BrowseSpec::Seq(s),
            BrowseFrom::Time(t) => BrowseSpec::Time(t),
            BrowseFrom::Last(n) => BrowseSpec::Last(n),
        };
        let envelopes: Vec<Envelope> =
            self.call_as(Request::Browse { topic: topic.clone(), from, max }).await?;
        envelopes
            .iter()
            .map(|e| e.to_message().map_err(|err| BrokerError::Protocol(err.to_string())))
            .collect()
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        let target = match target {
            SeekTarget::Start => SeekSpec::Start,
            SeekTarget::End => SeekSpec::End,
            SeekTarget::Seq { seq, .. } => SeekSpec::Seq(seq),
            SeekTarget::Time(t) => SeekSpec::Time(t),
        };
        self.call_as::<CountReply>(Request::Seek { subscription: subscription.clone(), target })
            .await
            .map(|r| r.count)
    }

    async fn peek(&self, subscription: &Name, from: u64, limit: usize) -> Result<PeekReport, BrokerError> {
        self.call_as(Request::Peek { subscription: subscription.clone(), from, limit }).await
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events.subscribe()
    }
}

impl RemoteBroker {
    /// The server's totals (`stats`).
    pub async fn stats(&self) -> Result<protocol::ServerStats, BrokerError> {
        self.call_as(Request::Stats).await
    }

    /// Asks the server to shut down.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.call(Request::Shutdown).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::split_token;

    #[test]
    fn token_is_taken_out_of_the_url() {
        assert_eq!(split_token("ws://h:1?token=abc"), ("ws://h:1".to_string(), Some("abc".to_string())));
        assert_eq!(
            split_token("ws://h:1/?a=1&token=t&b=2"),
            ("ws://h:1/?a=1&b=2".to_string(), Some("t".into()))
        );
        assert_eq!(split_token("ws://h:1"), ("ws://h:1".to_string(), None));
    }
}
