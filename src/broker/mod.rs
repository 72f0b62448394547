//! The one client-side interface every command and the TUI use, whatever the broker.
//!
//! A backend implements [`Broker`]; [`url::connect`] picks the backend from a URL. Each backend declares
//! its [`Capabilities`] so that callers can say "not available on this broker" instead of failing
//! obscurely or faking a value; operations a backend lacks answer [`BrokerError::Unsupported`].
//!
//! The message, topic and subscription types are the engine's own: the local engine implements the full
//! model, and every other broker maps onto a subset of it (SEMANTICS.md §10).

pub mod amqp;
pub mod capability;
pub mod daemon;
pub mod error;
pub mod kafka;
pub mod kit;
pub mod local;
pub mod mqtt;
pub mod nats;
pub mod postgres;
pub mod push;
pub mod redis;
pub mod remote;
pub mod url;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use crate::model::{AckToken, BrokerDelivery, Settle, StreamItem};
pub use capability::{Capabilities, Capability};
pub use error::BrokerError;

use crate::model::{
    AckMode, BrowseFrom, EngineError, FetchOptions, Message, Name, Pattern, PeekReport, PublishOption,
    PublishReceipt, PublishRequest, SeekTarget, SnapshotInfo, StartPosition, SubscriptionConfig,
    SubscriptionInfo, TopicConfig, TopicInfo,
};

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    /// Subjects to receive (token patterns or `glob:`).
    pub patterns: Vec<Pattern>,
    /// Join this durable subscription as a competing consumer (created on the topic when missing).
    pub subscription: Option<Name>,
    /// Read history from here instead of live only; needs a single topic.
    pub from: Option<StartPosition>,
    /// Ack mode for a subscription created by this request.
    pub ack: AckMode,
    /// Consumer id; one is made up when `None`.
    pub consumer: Option<String>,
    /// Credit; the broker's default when `None`.
    pub prefetch: Option<u32>,
    /// The most deliveries this consumer takes in all (`sub --count N`): a backend that can stops
    /// leasing, claiming or pulling once it has handed out this many, so nothing is held that the
    /// reader will not read. No cap when `None`.
    pub limit: Option<u64>,
    /// Only this partition (`--from P:SEQ`), on a broker with partitions; every partition when `None`.
    pub partition: Option<u32>,
    /// End the stream once every partition read reached the end it had when reading started
    /// (`--exit-at-end`), on a backend that tracks ends per partition itself (Kafka without a group);
    /// others leave stopping to the caller.
    pub until_end: bool,
}

impl SubscribeRequest {
    /// Live messages on these patterns, no acks: the `sub PATTERN` default.
    pub fn live(patterns: Vec<Pattern>) -> Self {
        SubscribeRequest {
            patterns,
            subscription: None,
            from: None,
            ack: AckMode::None,
            consumer: None,
            prefetch: None,
            limit: None,
            partition: None,
            until_end: false,
        }
    }
}

/// A source of stream items for one subscription.
#[async_trait]
pub trait ItemSource: Send {
    /// The next item; `None` when the stream has ended (subscription deleted, broker closed).
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>>;

    /// An item if one is ready now, without waiting; lets callers batch what has piled up.
    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        None
    }
}

/// Whether the current task may block its thread with `tokio::task::block_in_place` (it needs a
/// multi-threaded Tokio runtime; elsewhere blocking code just runs).
pub(crate) fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Stream items a background task fills (a backend's reader of its broker); dropping it stops the task.
pub(crate) struct ChannelSource {
    /// What the task sends.
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<StreamItem, BrokerError>>,
    /// The task.
    pub(crate) task: tokio::task::AbortHandle,
}

#[async_trait]
impl ItemSource for ChannelSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.recv().await
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.try_recv().ok()
    }
}

impl Drop for ChannelSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscriber's stream of deliveries.
pub struct DeliveryStream {
    source: Box<dyn ItemSource>,
}

impl DeliveryStream {
    /// Wraps a backend's source.
    pub fn new(source: Box<dyn ItemSource>) -> Self {
        DeliveryStream { source }
    }

    /// The next item; `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.source.next().await
    }

    /// An item if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.source.try_next()
    }
}

impl fmt::Debug for DeliveryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeliveryStream")
    }
}

/// The state of the link to a broker, for status lines and the TUI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Connected.
    Connected,
    /// The link dropped.
    Disconnected {
        /// Why, as the broker client put it.
        reason: String,
    },
    /// Back after a drop; subscriptions were restored.
    Reconnected,
    /// The broker or client dropped messages for a slow subscriber.
    SlowConsumer {
        /// How many.
        dropped: u64,
    },
    /// Something the broker said that the user should see (a JetStream advisory, a server error).
    Advisory {
        /// The broker's news, in a sentence.
        text: String,
    },
}

/// One broker, as every command and the TUI see it.
///
/// Optional operations have default bodies that answer [`BrokerError::Unsupported`]; a backend
/// overrides what it can do and says so in [`Broker::capabilities`].
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug {
    /// Short backend name: `mem`, `local`, `ws`, `redis`, `nats`, …
    fn kind(&self) -> &'static str;

    /// The URL it was opened with, with any password removed.
    fn url(&self) -> String;

    /// What this broker can do.
    fn capabilities(&self) -> Capabilities;

    /// Publishes one message.
    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError>;

    /// Publishes several messages in order; backends with a batch path override this.
    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut receipts = Vec::with_capacity(msgs.len());
        for msg in msgs {
            receipts.push(self.publish(msg).await?);
        }
        Ok(receipts)
    }

    /// Starts receiving: live on patterns, from history, or as a member of a durable subscription.
    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError>;

    /// Pulls up to `opts.max_msgs` from a durable subscription, long-polling up to `opts.wait`.
    async fn fetch(
        &self,
        _subscription: &Name,
        _consumer: &str,
        _opts: FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        Err(self.unsupported(Capability::Ack))
    }

    /// Acks, nacks, extends or terminates a delivery.
    async fn settle(&self, _token: &AckToken, _how: Settle) -> Result<(), BrokerError> {
        Err(self.unsupported(Capability::Ack))
    }

    /// Acks a run of deliveries; each one's outcome, in order. By default they are acked concurrently
    /// (a broker that syncs acks to disk syncs them once); the `ws://` client sends them in one frame and
    /// waits for one answer.
    async fn ack_all(&self, tokens: &[AckToken]) -> Vec<Result<(), BrokerError>> {
        futures_util::future::join_all(tokens.iter().map(|t| self.settle(t, Settle::Ack))).await
    }

    /// Every topic the broker can list.
    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        Err(self.unsupported(Capability::TopicAdmin))
    }

    /// One topic.
    async fn topic_info(&self, _name: &Name) -> Result<TopicInfo, BrokerError> {
        Err(self.unsupported(Capability::TopicAdmin))
    }

    /// Creates a topic.
    async fn create_topic(&self, _config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        Err(self.unsupported(Capability::TopicAdmin))
    }

    /// Deletes a topic.
    async fn delete_topic(&self, _name: &Name) -> Result<(), BrokerError> {
        Err(self.unsupported(Capability::TopicAdmin))
    }

    /// Deletes a topic's messages; returns how many.
    async fn purge_topic(&self, _name: &Name) -> Result<u64, BrokerError> {
        Err(self.unsupported(Capability::TopicAdmin))
    }

    /// Grows a topic to `partitions` partitions (never fewer than it has); returns its info.
    async fn set_partitions(&self, _name: &Name, _partitions: u32) -> Result<TopicInfo, BrokerError> {
        Err(self.unsupported(Capability::Partitions))
    }

    /// Subscriptions, optionally of one topic.
    async fn subscriptions(&self, _topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        Err(self.unsupported(Capability::Lag))
    }

    /// One subscription's lag and ack state.
    async fn subscription_info(&self, _name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        Err(self.unsupported(Capability::Lag))
    }

    /// Creates a durable subscription.
    async fn create_subscription(
        &self,
        _config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo, BrokerError> {
        Err(self.unsupported(Capability::CompetingConsumers))
    }

    /// Deletes a subscription.
    async fn delete_subscription(&self, _name: &Name) -> Result<(), BrokerError> {
        Err(self.unsupported(Capability::CompetingConsumers))
    }

    /// Reads a topic's history without consuming it.
    async fn browse(
        &self,
        _topic: &Name,
        _from: BrowseFrom,
        _max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        Err(self.unsupported(Capability::Replay))
    }

    /// Moves a subscription; returns the next seq it delivers.
    async fn seek(&self, _subscription: &Name, _target: SeekTarget) -> Result<u64, BrokerError> {
        Err(self.unsupported(Capability::Seek))
    }

    /// Captures a subscription's ack state under a name (`snapshot create`), to expire `ttl` from now
    /// (`None`: never; [`crate::model::SNAPSHOT_TTL`] is the default lifetime).
    async fn create_snapshot(
        &self,
        _name: &Name,
        _subscription: &Name,
        _ttl: Option<std::time::Duration>,
    ) -> Result<SnapshotInfo, BrokerError> {
        Err(self.unsupported(Capability::Seek))
    }

    /// Every snapshot.
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, BrokerError> {
        Err(self.unsupported(Capability::Seek))
    }

    /// Removes a snapshot.
    async fn delete_snapshot(&self, _name: &Name) -> Result<(), BrokerError> {
        Err(self.unsupported(Capability::Seek))
    }

    /// Moves a subscription to a snapshot's ack state; returns the first seq it delivers again.
    async fn seek_snapshot(&self, _subscription: &Name, _snapshot: &Name) -> Result<u64, BrokerError> {
        Err(self.unsupported(Capability::Seek))
    }

    /// Per-message ack state of a subscription.
    async fn peek(&self, _subscription: &Name, _from: u64, _limit: usize) -> Result<PeekReport, BrokerError> {
        Err(self.unsupported(Capability::Peek))
    }

    /// Sends a request and waits up to `timeout` for the first reply.
    async fn request(
        &self,
        _subject: &Name,
        _payload: bytes::Bytes,
        _headers: crate::model::Headers,
        _timeout: Duration,
    ) -> Result<Message, BrokerError> {
        Err(self.unsupported(Capability::RequestReply))
    }

    /// Connection state changes.
    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent>;

    /// Ends the connection cleanly before the program exits (MQTT sends DISCONNECT, so acks queued
    /// before it are flushed and the last will is not published). Most backends need nothing.
    async fn close(&self) {}

    /// What one topic on this broker can do; topics of one broker can differ (a Redis stream and a
    /// channel, a subject a JetStream stream captures and one it does not). The broker's set when the
    /// backend does not tell topics apart.
    async fn topic_capabilities(&self, _topic: &Name) -> Result<Capabilities, BrokerError> {
        Ok(self.capabilities())
    }

    /// Why this broker lacks `capability`, in its own terms; empty when there is nothing to add.
    fn why_not(&self, _capability: Capability) -> &'static str {
        ""
    }

    /// The error for an operation this broker cannot do.
    fn unsupported(&self, capability: Capability) -> BrokerError {
        BrokerError::Unsupported { broker: self.kind(), capability, why: self.why_not(capability) }
    }

    /// The publish settings this broker honours; a publish with any other refuses.
    fn publish_options(&self) -> &'static [PublishOption] {
        &[]
    }

    /// Refuses a publish whose settings this broker cannot honour, naming the first one.
    fn check_options(&self, msg: &PublishRequest) -> Result<(), BrokerError> {
        match msg.options.first_unhonoured(self.publish_options()) {
            None => Ok(()),
            Some(option) => Err(BrokerError::Invalid(format!(
                "{} is not available on this broker ({})",
                option.flag(),
                self.kind()
            ))),
        }
    }

    /// `from` for a topic of one partition: `At` partition 0 becomes `Seq`, another partition is refused.
    fn one_partition(&self, topic: &Name, from: BrowseFrom) -> Result<BrowseFrom, BrokerError> {
        from.in_one_partition().map_err(|partition| {
            BrokerError::Engine(EngineError::NoSuchPartition { topic: topic.clone(), partition })
        })
    }

    /// Refuses a way of settling this broker cannot do, before anything is sent.
    fn check_settle(&self, how: &Settle) -> Result<(), BrokerError> {
        let needed = Capability::of_settle(how);
        if self.capabilities().has(needed) { Ok(()) } else { Err(self.unsupported(needed)) }
    }
}

/// A broker shared between tasks.
pub type SharedBroker = Arc<dyn Broker>;

/// Subscribing with these options needs a single topic to read history from.
pub(crate) fn history_topic(req: &SubscribeRequest) -> Result<Name, BrokerError> {
    match req.patterns.as_slice() {
        [p] => match p.literal().map(Name::new) {
            Some(Ok(name)) => Ok(name),
            _ => Err(BrokerError::Invalid(format!(
                "reading history needs one topic name, not the pattern \"{}\"",
                p.as_str()
            ))),
        },
        _ => Err(BrokerError::Invalid("reading history needs exactly one topic".into())),
    }
}

/// Refuses an attribute filter (`subs create --where`) on a backend that cannot evaluate one, rather
/// than creating a subscription that would receive everything.
pub(crate) fn no_attribute_filter(
    config: &crate::model::SubscriptionConfig,
    broker: &str,
) -> Result<(), BrokerError> {
    match config.attribute_filter {
        Some(_) => Err(BrokerError::Invalid(format!(
            "{broker} cannot filter a subscription by headers, key or subject expression; create it without --where (the local engine, mem:// and ws://, can)"
        ))),
        None => Ok(()),
    }
}

/// Which of the engine's retention settings a backend carries out itself (SEMANTICS.md §9.8); every
/// other one it refuses ([`engine_only_topic_settings`], [`engine_only_subscription_settings`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Honours {
    /// `retention = interest | work-queue` (JetStream's own retention policies).
    pub retention: bool,
    /// `max_msgs_per_key` (JetStream's messages per subject).
    pub per_key: bool,
    /// `start = last-per-key` (JetStream's last per subject).
    pub last_per_key: bool,
}

/// Where the settings a backend refuses are run instead.
const BY_THE_ENGINE: &str = "it is run by the pubsub engine (mem://, local, ws://)";

/// Refuses the topic settings of the engine that `broker` cannot carry out (a topic taken without
/// them would keep or delete messages otherwise than asked): Interest and WorkQueue retention and
/// `max_msgs_per_key`, except what `honours` says it does.
pub(crate) fn engine_only_topic_settings(
    config: &TopicConfig,
    broker: &str,
    honours: Honours,
) -> Result<(), BrokerError> {
    let refused = if config.retention.settles_delete() && !honours.retention {
        Some(format!("retention {}", config.retention.label()))
    } else if config.limits.max_msgs_per_key.is_some() && !honours.per_key {
        Some("max_msgs_per_key".to_string())
    } else {
        None
    };
    match refused {
        Some(setting) => Err(BrokerError::Invalid(format!(
            "{broker} cannot honour the topic setting {setting}: {BY_THE_ENGINE}; create topic \"{}\" without it",
            config.name
        ))),
        None => Ok(()),
    }
}

/// Refuses the subscription settings of the engine that `broker` cannot carry out: an assignment other
/// than shared, `start = last-per-key`, `message_retention`, `dead_letter_on_expiry` and
/// `retain_acked`, except what `honours` says it does.
pub(crate) fn engine_only_subscription_settings(
    config: &SubscriptionConfig,
    broker: &str,
    honours: Honours,
) -> Result<(), BrokerError> {
    let assignment = format!("assignment {}", config.assignment.label());
    let refused = [
        (config.assignment != crate::model::Assignment::Shared, assignment.as_str()),
        (config.start == StartPosition::LastPerKey && !honours.last_per_key, "start last-per-key"),
        (config.message_retention.is_some(), "message_retention"),
        (config.dead_letter_on_expiry, "dead_letter_on_expiry"),
        (config.retain_acked, "retain_acked"),
    ]
    .into_iter()
    .find_map(|(set, setting)| set.then_some(setting));
    match refused {
        Some(setting) => Err(BrokerError::Invalid(format!(
            "{broker} cannot honour the subscription setting {setting}: {BY_THE_ENGINE}; create subscription \"{}\" without it",
            config.name
        ))),
        None => Ok(()),
    }
}
