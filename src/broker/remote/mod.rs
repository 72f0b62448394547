//! The `ws://` backend: another `pubsub serve`, reached over the wire protocol.
//!
//! One task owns the socket. Requests carry ids and wait for their answer on a oneshot; `deliver`
//! frames go to the stream they belong to through a bounded channel, so a slow reader slows the socket
//! (and the server then holds messages back as lag) instead of buffering without bound. When the link
//! drops, outstanding requests fail with `Disconnected`, the task reconnects with backoff, streams are
//! subscribed again (durable subscriptions resume from their ack floor on the server), and callers see
//! `Disconnected` / `Reconnected` events rather than an error storm.
//!
//! The rooms: this file holds the shared state and the `Broker` impl, which delegates; `connection`
//! opens the socket (hello/welcome), serves it and reconnects; `inbound` routes the server's frames to
//! waiting calls and streams; `calls` sends requests and waits for their answers; `streams` is the
//! client side of a subscription (credit, unsubscribe on drop).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, ConnectionEvent, DeliveryStream, Settle,
    StreamItem, SubscribeRequest,
};
use crate::model::{
    BrowseFrom, FetchOptions, Message, Name, PeekReport, PublishReceipt, PublishRequest, SeekTarget,
    SubscriptionConfig, SubscriptionInfo, TopicConfig, TopicInfo,
};
use crate::protocol::binary::{SettleItem, SettleOp};
use crate::protocol::{self, CountReply, Request, SubscribeSpec, SubscriptionSpec};

mod calls;
mod connection;
mod inbound;
mod streams;

use calls::{envelope, seek_spec, settle_request, topic_spec};
use connection::{install_queue, open, run, split_token};

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
    /// Done, by a binary `settled` frame.
    Settled,
}

/// A frame on its way to the server.
enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    /// One ack or nack: the writer sends the ones queued together, of one subscription, as one binary
    /// `settle` frame.
    Settle(SettleOp, Name, SettleItem),
    /// A run of acks, each with its subscription.
    Acks(Vec<(Name, SettleItem)>),
}

struct Pending {
    answer: oneshot::Sender<Result<Reply, BrokerError>>,
    /// For `subscribe`: the client-side stream the returned sid belongs to.
    stream: Option<u64>,
}

/// A run of acks waiting for their outcomes.
struct AckRun {
    outcomes: Vec<Result<(), BrokerError>>,
    /// Outcomes not in yet.
    left: usize,
    answer: oneshot::Sender<Vec<Result<(), BrokerError>>>,
}

impl AckRun {
    /// Records the outcome of request `id` when it belongs to the run starting at `first`; `true` once
    /// every outcome is in.
    fn record(&mut self, first: u64, id: u64, outcome: Result<(), BrokerError>) -> bool {
        let Some(slot) = id.checked_sub(first).and_then(|i| self.outcomes.get_mut(i as usize)) else {
            return false;
        };
        *slot = outcome;
        self.left = self.left.saturating_sub(1);
        self.left == 0
    }
}

struct StreamState {
    spec: SubscribeSpec,
    /// Unbounded, so that the socket reader never waits for one stream's reader (which may itself be
    /// waiting for an answer behind it on the socket); the server's credit bounds what it holds.
    tx: mpsc::UnboundedSender<ItemBatch>,
    /// Deliveries received so far: a stream with a total (`limit`) asks only for the rest when a
    /// reconnect subscribes it again.
    delivered: u64,
}

struct Inner {
    /// Where it is connected: the URL given, or for `--broker local` the daemon's current one.
    url: Mutex<String>,
    ws_url: String,
    token: Option<String>,
    /// For `--broker local`: the daemon's endpoint file, read again before each reconnect, so that a
    /// daemon restarted on a new port (with a new token) is found.
    endpoint_file: Option<std::path::PathBuf>,
    out: Mutex<Option<mpsc::Sender<Outgoing>>>,
    /// The server accepted binary frames on the current connection.
    binary: std::sync::atomic::AtomicBool,
    /// The server accepted binary `settle` and `credit` frames on the current connection.
    binary_settle: std::sync::atomic::AtomicBool,
    /// The current server's largest accepted frame, from its welcome.
    max_frame: std::sync::atomic::AtomicUsize,
    /// The server's largest message, as its welcome said: a larger one is refused here, with the same
    /// words at every size (one too large for a frame would otherwise cost the connection).
    max_message: std::sync::atomic::AtomicUsize,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Runs of acks sent by one [`Broker::ack_all`], by their first request id (the ids of a run follow
    /// each other).
    ack_runs: Mutex<std::collections::BTreeMap<u64, AckRun>>,
    streams: Mutex<HashMap<u64, StreamState>>,
    /// Server sid → client stream id, for the current connection.
    sids: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
    events: broadcast::Sender<ConnectionEvent>,
}

impl Inner {
    /// The URL of the server this client talks to now.
    fn url(&self) -> String {
        guard(&self.url).clone()
    }
}

/// A client's shared state without a socket, for tests of the parts around it: `out` is its send
/// queue, and server sid 5 is its stream 1.
#[cfg(test)]
fn test_inner(out: mpsc::Sender<Outgoing>) -> Arc<Inner> {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let (events, _) = broadcast::channel(4);
    Arc::new(Inner {
        url: Mutex::new("ws://test".into()),
        ws_url: "ws://test".into(),
        token: None,
        endpoint_file: None,
        out: Mutex::new(Some(out)),
        binary: AtomicBool::new(true),
        binary_settle: AtomicBool::new(true),
        max_frame: AtomicUsize::new(usize::MAX),
        max_message: AtomicUsize::new(usize::MAX),
        pending: Mutex::new(HashMap::new()),
        ack_runs: Mutex::new(std::collections::BTreeMap::new()),
        streams: Mutex::new(HashMap::new()),
        sids: Mutex::new(HashMap::from([(5, 1)])),
        next_id: AtomicU64::new(1),
        events,
    })
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
        f.debug_struct("RemoteBroker").field("url", &self.inner.url()).finish()
    }
}

impl RemoteBroker {
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
            url: Mutex::new(ws_url.clone()),
            ws_url,
            token: token.or(url_token),
            endpoint_file,
            out: Mutex::new(None),
            binary: std::sync::atomic::AtomicBool::new(false),
            binary_settle: std::sync::atomic::AtomicBool::new(false),
            max_frame: std::sync::atomic::AtomicUsize::new(usize::MAX),
            max_message: std::sync::atomic::AtomicUsize::new(usize::MAX),
            pending: Mutex::new(HashMap::new()),
            ack_runs: Mutex::new(std::collections::BTreeMap::new()),
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
}

#[async_trait]
impl Broker for RemoteBroker {
    fn kind(&self) -> &'static str {
        "ws"
    }

    fn url(&self) -> String {
        // For `--broker local` this follows the daemon to a new port after a restart (the TUI's header
        // shows it).
        self.inner.url()
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
        self.publish_all(msgs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        self.open_stream(req).await
    }

    async fn fetch(
        &self,
        subscription: &Name,
        consumer: &str,
        opts: FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        self.fetch_leased(subscription, consumer, opts).await
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        if self.inner.binary_settle.load(std::sync::atomic::Ordering::Relaxed) {
            match how {
                Settle::Ack => return self.settle_binary(token, SettleOp::Ack, None).await,
                Settle::Nack(delay) => return self.settle_binary(token, SettleOp::Nack, delay).await,
                _ => {}
            }
        }
        self.call(settle_request(token, how)).await.map(|_| ())
    }

    async fn ack_all(&self, tokens: &[AckToken]) -> Vec<Result<(), BrokerError>> {
        if self.inner.binary_settle.load(std::sync::atomic::Ordering::Relaxed) && !tokens.is_empty() {
            return self.ack_run(tokens).await;
        }
        futures_util::future::join_all(tokens.iter().map(|t| self.settle(t, Settle::Ack))).await
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.call_as(Request::Topics).await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        self.call_as(Request::TopicInfo { topic: name.clone() }).await
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        self.call_as(Request::CreateTopic { spec: topic_spec(&config) }).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.call(Request::DeleteTopic { topic: name.clone() }).await.map(|_| ())
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.call_as::<CountReply>(Request::PurgeTopic { topic: name.clone() }).await.map(|r| r.count)
    }

    fn publish_options(&self) -> &'static [crate::model::PublishOption] {
        &[crate::model::PublishOption::Partition]
    }

    async fn set_partitions(&self, name: &Name, partitions: u32) -> Result<TopicInfo, BrokerError> {
        self.call_as(Request::SetPartitions { topic: name.clone(), partitions }).await
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
        // A pubsub server keeps partitions: `At` goes as it is, and the server refuses one it lacks.
        self.browse_messages(topic, from, max).await
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        let target = seek_spec(target);
        self.call_as::<CountReply>(Request::Seek { subscription: subscription.clone(), target })
            .await
            .map(|r| r.count)
    }

    async fn create_snapshot(
        &self,
        name: &Name,
        subscription: &Name,
        ttl: Option<std::time::Duration>,
    ) -> Result<crate::model::SnapshotInfo, BrokerError> {
        // 0 is "never" on the wire; a zero ttl never gets here (the engine would refuse it).
        let ttl_ms = Some(ttl.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)));
        self.call_as(Request::CreateSnapshot {
            snapshot: name.clone(),
            subscription: subscription.clone(),
            ttl_ms,
        })
        .await
    }

    async fn snapshots(&self) -> Result<Vec<crate::model::SnapshotInfo>, BrokerError> {
        self.call_as(Request::Snapshots).await
    }

    async fn delete_snapshot(&self, name: &Name) -> Result<(), BrokerError> {
        self.call(Request::DeleteSnapshot { snapshot: name.clone() }).await.map(|_| ())
    }

    async fn seek_snapshot(&self, subscription: &Name, snapshot: &Name) -> Result<u64, BrokerError> {
        self.call_as::<CountReply>(Request::SeekSnapshot {
            subscription: subscription.clone(),
            snapshot: snapshot.clone(),
        })
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
