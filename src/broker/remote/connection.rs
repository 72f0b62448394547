//! The socket: opening it (hello/welcome, the endpoint file of `--broker local` read again first),
//! serving it (one writer coalescing queued frames, one reader routing what arrives), and reconnecting
//! with backoff when it drops.

use crate::broker::kit::Backoff;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use super::calls::call;
use super::inbound::{on_binary, on_frame};
use super::{ConnectionEvent, Inner, Outgoing, REQUEST_TIMEOUT, guard};
use crate::broker::BrokerError;
use crate::model::Name;
use crate::protocol::binary::{SettleItem, SettleOp, encode_settle, settle_capacity};
use crate::protocol::{self, ClientFrame, ErrorCode, Request, ServerFrame, SubscribeSpec, VERSION};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Splits `?token=T` off a URL.
pub(super) fn split_token(url: &str) -> (String, Option<String>) {
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
pub(super) async fn open(inner: &Inner) -> Result<Socket, BrokerError> {
    let (ws_url, token) = match inner.endpoint_file.as_deref().and_then(crate::broker::daemon::Endpoint::read)
    {
        Some(now) => (split_token(&now.url).0, Some(now.token)),
        None => (inner.ws_url.clone(), inner.token.clone()),
    };
    let unreachable = |reason: String| BrokerError::Unreachable { url: ws_url.clone(), reason };
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
            binary_settle: true,
            assignments: true,
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
            Ok(ServerFrame::Welcome { binary, binary_settle, limits, .. }) => {
                // A server from before binary frames ignores the offer and answers without the flag.
                inner.binary.store(binary, Ordering::Relaxed);
                inner.binary_settle.store(binary && binary_settle, Ordering::Relaxed);
                inner.max_frame.store(limits.max_frame_bytes, Ordering::Relaxed);
                inner.max_message.store(limits.max_message_bytes, Ordering::Relaxed);
                // A daemon restarted on another port is now where this client is: say so from here on.
                *guard(&inner.url) = ws_url.clone();
                return Ok(socket);
            }
            Ok(ServerFrame::Error { code, message, .. }) if code == ErrorCode::Unauthorized.number() => {
                return Err(BrokerError::Auth { url: inner.url(), reason: message });
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
pub(super) fn install_queue(inner: &Inner) -> mpsc::Receiver<Outgoing> {
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(256);
    *guard(&inner.out) = Some(out_tx);
    out_rx
}

/// Owns the connection: serves it until it drops, then reconnects with backoff until cancelled.
pub(super) async fn run(
    inner: Arc<Inner>,
    socket: Socket,
    out_rx: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    connect_until_closed(&inner, socket, out_rx, &cancel).await;
    // The client is gone (its handle dropped): its streams end, rather than leave their readers waiting
    // for deliveries nobody will receive.
    guard(&inner.streams).clear();
}

/// Serves the connection, reconnecting after drops, until `cancel` fires.
async fn connect_until_closed(
    inner: &Arc<Inner>,
    mut socket: Socket,
    mut out_rx: mpsc::Receiver<Outgoing>,
    cancel: &CancellationToken,
) {
    // Only a reconnect resubscribes: on the first socket, streams subscribe themselves.
    let mut reconnected = false;
    loop {
        let reason = serve(inner, socket, out_rx, cancel, reconnected).await;
        reconnected = true;
        *guard(&inner.out) = None;
        guard(&inner.sids).clear();
        for (_, pending) in guard(&inner.pending).drain() {
            let lost = BrokerError::Disconnected { url: inner.url(), reason: reason.clone() };
            let _ = pending.answer.send(Err(lost));
        }
        for (_, run) in std::mem::take(&mut *guard(&inner.ack_runs)) {
            let lost = || BrokerError::Disconnected { url: inner.url(), reason: reason.clone() };
            let _ = run.answer.send(run.outcomes.iter().map(|_| Err(lost())).collect());
        }
        if cancel.is_cancelled() {
            return;
        }
        let _ = inner.events.send(ConnectionEvent::Disconnected { reason });
        // The toolkit's backoff; the events are sent here rather than by `kit::reconnect` because the
        // send queue must be in place before anyone hears `Reconnected` and publishes.
        let mut backoff = Backoff::new();
        socket = loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = backoff.wait() => {}
            }
            match open(inner).await {
                Ok(s) => break s,
                Err(e) => tracing::debug!(error = %e, "reconnect failed"),
            }
        };
        out_rx = install_queue(inner);
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
    let resubscribe: Vec<(u64, SubscribeSpec)> =
        if reconnected { resubscriptions(&guard(&inner.streams)) } else { Vec::new() };
    for (stream, spec) in resubscribe {
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = call(&inner, Request::Subscribe(spec), Some(stream), REQUEST_TIMEOUT).await {
                tracing::warn!(error = %e, "resubscribe failed");
            }
        });
    }
    let writer = async {
        let max_frame = inner.max_frame.load(Ordering::Relaxed);
        let mut settles = Settles::default();
        while let Some(first) = out_rx.recv().await {
            let mut next = Some(first);
            while let Some(o) = next {
                match o {
                    Outgoing::Settle(op, sub, item) => {
                        if let Some(full) = settles.add(op, sub, item, max_frame) {
                            sink.feed(WsMessage::Binary(full.into())).await?;
                        }
                    }
                    Outgoing::Acks(items) => {
                        for (sub, item) in items {
                            if let Some(full) = settles.add(SettleOp::Ack, sub, item, max_frame) {
                                sink.feed(WsMessage::Binary(full.into())).await?;
                            }
                        }
                    }
                    Outgoing::Text(text) => {
                        // Acks queued before this frame go before it.
                        if let Some(frame) = settles.take() {
                            sink.feed(WsMessage::Binary(frame.into())).await?;
                        }
                        sink.feed(WsMessage::Text(text.into())).await?;
                    }
                    Outgoing::Binary(bytes) => {
                        if let Some(frame) = settles.take() {
                            sink.feed(WsMessage::Binary(frame.into())).await?;
                        }
                        sink.feed(WsMessage::Binary(bytes.into())).await?;
                    }
                }
                next = out_rx.try_recv().ok();
            }
            if let Some(frame) = settles.take() {
                sink.feed(WsMessage::Binary(frame.into())).await?;
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

/// Acks and nacks queued together, gathered into binary `settle` frames: one per run of one op on one
/// subscription, each as large as the server's frame limit allows.
#[derive(Default)]
struct Settles {
    run: Option<(SettleOp, Name)>,
    items: Vec<SettleItem>,
}

impl Settles {
    /// Adds an item; gives the frame of the run before it when the item starts another run (another
    /// op or subscription, or the run fills a frame).
    fn add(&mut self, op: SettleOp, sub: Name, item: SettleItem, max_frame: usize) -> Option<Vec<u8>> {
        let same = matches!(&self.run, Some((o, s)) if *o == op && *s == sub);
        let done = if !same || self.items.len() >= settle_capacity(op, &sub, max_frame) {
            let done = self.take();
            self.run = Some((op, sub));
            done
        } else {
            None
        };
        self.items.push(item);
        done
    }

    /// The frame of the run gathered so far, if any.
    fn take(&mut self) -> Option<Vec<u8>> {
        let (op, sub) = self.run.take()?;
        let items = std::mem::take(&mut self.items);
        Some(encode_settle(op, &sub, &items))
    }
}

/// What a reconnect subscribes again: every open stream, a stream with a total asking only for what it
/// has not received yet (and one that received it all, nothing).
fn resubscriptions(
    streams: &std::collections::HashMap<u64, super::StreamState>,
) -> Vec<(u64, SubscribeSpec)> {
    streams
        .iter()
        .filter_map(|(id, s)| {
            let mut spec = s.spec.clone();
            spec.limit = match spec.limit {
                Some(total) if s.delivered >= total => return None,
                Some(total) => Some(total - s.delivered),
                None => None,
            };
            Some((*id, spec))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{resubscriptions, split_token};

    #[test]
    fn token_is_taken_out_of_the_url() {
        assert_eq!(split_token("ws://h:1?token=abc"), ("ws://h:1".to_string(), Some("abc".to_string())));
        assert_eq!(
            split_token("ws://h:1/?a=1&token=t&b=2"),
            ("ws://h:1/?a=1&b=2".to_string(), Some("t".into()))
        );
        assert_eq!(split_token("ws://h:1"), ("ws://h:1".to_string(), None));
    }

    #[test]
    fn a_reconnect_asks_a_stream_with_a_total_only_for_the_rest() {
        use crate::model::{AckMode, Pattern};
        let spec = |limit| crate::protocol::SubscribeSpec {
            patterns: vec![Pattern::parse("t").unwrap()],
            subscription: None,
            from: None,
            ack: AckMode::None,
            consumer: None,
            prefetch: Some(10),
            prefetch_bytes: None,
            credit: true,
            limit,
            partition: None,
        };
        let state = |limit, delivered| {
            let (tx, _) = tokio::sync::mpsc::unbounded_channel();
            super::super::StreamState { spec: spec(limit), tx, delivered }
        };
        let streams = std::collections::HashMap::from([
            (1, state(Some(10), 4)),
            (2, state(Some(3), 3)),
            (3, state(None, 50)),
        ]);
        let mut again: Vec<(u64, Option<u64>)> =
            resubscriptions(&streams).into_iter().map(|(id, s)| (id, s.limit)).collect();
        again.sort_unstable();
        assert_eq!(again, [(1, Some(6)), (3, None)], "stream 2 has all it asked for");
    }
}
