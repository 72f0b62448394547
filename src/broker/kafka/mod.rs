//! Kafka, on `rdkafka` (librdkafka built from its bundled sources). Topics are Kafka topics with their
//! partitions; seqs are offsets + 1; `sub TOPIC` reads every partition from its end without a group;
//! `sub -s GROUP` is a consumer-group member whose acks commit the contiguous floor of each partition.
//! README "On Kafka" has the whole mapping.

mod admin;
mod consume;
mod convert;
mod group;
mod produce;
mod url;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use tokio::sync::broadcast;

use super::{
    AckToken, Broker, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream, Settle,
    SubscribeRequest,
};
use crate::model::{
    BrowseFrom, Message, Name, PublishOption, PublishReceipt, PublishRequest, SeekTarget, SubscriptionInfo,
    TopicConfig, TopicInfo,
};
use convert::Context;
use url::Target;

/// How long one metadata, watermark or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(6);

/// What pubsub can do on Kafka.
pub const CAPS: Capabilities = Capabilities::of(&[
    Capability::Ack,
    Capability::CumulativeAck,
    Capability::Replay,
    Capability::Seek,
    Capability::Lag,
    Capability::Patterns,
    Capability::Headers,
    Capability::Persistence,
    Capability::CompetingConsumers,
    Capability::Partitions,
    Capability::TopicAdmin,
]);

/// A Kafka cluster.
pub struct KafkaBroker {
    target: Target,
    context: Context,
    /// A client for metadata, watermarks, offsets by time and group listings (it never subscribes).
    meta: Arc<BaseConsumer<Context>>,
    producer: rdkafka::producer::FutureProducer<Context>,
    admin: tokio::sync::OnceCell<rdkafka::admin::AdminClient<Context>>,
    events: broadcast::Sender<ConnectionEvent>,
    /// Group members of this process by key, for settling their deliveries.
    members: Arc<Mutex<HashMap<String, Arc<group::Member>>>>,
    /// Partition counts and `max.message.bytes` of topics published to, asked once per topic.
    partitions: Mutex<HashMap<String, (u32, Option<u32>)>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker").field("url", &self.target.shown).finish()
    }
}

/// Runs a blocking librdkafka call off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::Protocol(format!("a Kafka request was cut short: {e}")))
}

impl KafkaBroker {
    /// Connects to `kafka://host:port[,host:port…][?options]`: asks for the cluster's metadata, so an
    /// address where nothing answers (exit 3) or a refused login (exit 5) shows at once.
    pub async fn connect(url: &str) -> Result<KafkaBroker, BrokerError> {
        let target = Target::parse(url.trim())?;
        let context = Context::default();
        let meta: BaseConsumer<Context> = target
            .config()
            .set("group.id", "pubsub-meta")
            .set("enable.auto.commit", "false")
            .create_with_context(context.clone())
            .map_err(|e| BrokerError::Invalid(format!("Kafka client settings: {e}")))?;
        let meta = Arc::new(meta);
        // The producer's own thread serves librdkafka's events, so its context hears at once when every
        // broker is down or a login was refused, and the answer need not wait for the timeout
        // (librdkafka itself retries forever).
        let producer = produce::make(&target, &context)?;
        let probe = producer.clone();
        // On a thread of its own rather than the runtime's blocking pool: a command that gives up early
        // must not wait at exit for a request librdkafka keeps trying.
        let (done_tx, mut fetching) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let r =
                rdkafka::producer::Producer::client(&probe).fetch_metadata(None, CONNECT_TIMEOUT).map(|_| ());
            let _ = done_tx.send(r);
        });
        // librdkafka retries forever; the context hears at once when every broker is down or a login
        // was refused, so the answer need not wait for the timeout.
        let outcome = loop {
            tokio::select! {
                done = &mut fetching => break done.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if context.auth_failed().is_some() {
                        break Err(String::new());
                    }
                    if let Some((Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown), _)) = context.last_error() {
                        break Err(String::new());
                    }
                }
            }
        };
        if let Err(e) = outcome {
            if let Some(why) = context.auth_failed() {
                return Err(BrokerError::Auth { url: target.shown.clone(), reason: why });
            }
            let reason = match (context.transport_error(), context.last_error()) {
                (Some(why), _) => why,
                (None, Some((_, why))) if !why.is_empty() => why,
                _ => format!("no Kafka answer within {}s ({e})", CONNECT_TIMEOUT.as_secs()),
            };
            return Err(BrokerError::Unreachable { url: target.shown.clone(), reason });
        }
        let (events, _) = broadcast::channel(64);
        Ok(KafkaBroker {
            target,
            context,
            meta,
            producer,
            admin: tokio::sync::OnceCell::new(),
            events,
            members: Arc::new(Mutex::new(HashMap::new())),
            partitions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The cluster's metadata, of one topic or all.
    pub(super) async fn metadata(&self, topic: Option<&str>) -> Result<Metadata, BrokerError> {
        let meta = self.meta.clone();
        let topic = topic.map(str::to_string);
        let shown = self.target.shown.clone();
        blocking(move || meta.fetch_metadata(topic.as_deref(), REQUEST_TIMEOUT))
            .await?
            .map_err(|e| convert::error(&shown, &e))
    }

    /// How many partitions `topic` has; `None` when the broker does not have it.
    pub(super) async fn partition_count(&self, topic: &Name) -> Result<Option<u32>, BrokerError> {
        let md = self.metadata(Some(topic.as_str())).await?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic.as_str()) else { return Ok(None) };
        if t.error().is_some() || t.partitions().is_empty() {
            return Ok(None);
        }
        Ok(Some(u32::try_from(t.partitions().len()).unwrap_or(u32::MAX)))
    }

    /// Low and high watermark of one partition.
    pub(super) async fn watermarks(&self, topic: &Name, partition: u32) -> Result<(i64, i64), BrokerError> {
        let meta = self.meta.clone();
        let t = topic.to_string();
        let shown = self.target.shown.clone();
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        blocking(move || meta.fetch_watermarks(&t, p, REQUEST_TIMEOUT))
            .await?
            .map_err(|e| convert::error(&shown, &e))
    }

    fn key(&self) -> String {
        format!("kafka-{}", self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn url(&self) -> String {
        self.target.shown.clone()
    }

    fn capabilities(&self) -> Capabilities {
        CAPS
    }

    fn why_not(&self, capability: Capability) -> &'static str {
        match capability {
            Capability::Nack | Capability::NackDelay | Capability::Term => {
                "Kafka keeps one committed offset per partition, not a state per message: an unacked message holds the commit back, so it is delivered again after a restart or a rebalance"
            }
            Capability::Extend | Capability::AckDeadline => {
                "a partition belongs to its group member until a rebalance; there is no per-message lease"
            }
            Capability::DetachedSettle => {
                "an offset is committed by the group member that holds the partition, so only the sub that received a message can ack it"
            }
            Capability::Peek => "Kafka keeps a committed offset per partition, not each message's state",
            Capability::RequestReply => "Kafka has no reply subjects",
            Capability::Retain => "Kafka keeps a log; a compacted topic keeps the last record per key",
            Capability::DeadLetter => "Kafka has no dead-letter topics of its own",
            _ => "",
        }
    }

    fn publish_options(&self) -> &'static [PublishOption] {
        &[PublishOption::Partition]
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        let mut receipts = self.produce(std::slice::from_ref(&msg)).await?;
        receipts.pop().ok_or_else(|| BrokerError::Protocol("Kafka confirmed nothing".into()))
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        self.produce(&msgs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        let group = req.subscription.clone().or_else(|| {
            self.target.group.as_deref().and_then(|g| Name::new(g).ok()).filter(|_| req.from.is_none())
        });
        match group {
            Some(g) => self.join_group(g, req).await,
            None => self.read_partitions(req).await,
        }
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        self.check_settle(&how)?;
        let member =
            token.reply.as_ref().and_then(|r| r.split_once('|')).and_then(|(k, _)| {
                self.members.lock().unwrap_or_else(PoisonError::into_inner).get(k).cloned()
            });
        let Some(member) = member else { return Err(self.unsupported(Capability::DetachedSettle)) };
        member.ack(token)
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.list_topics().await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        self.describe_topic(name).await
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        super::engine_only_topic_settings(&config, "Kafka", super::Honours::default())?;
        self.make_topic(&config).await?;
        self.describe_topic(&config.name).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.remove_topic(name).await
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.purge(name).await
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.list_groups(topic).await
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        self.describe_group(name).await
    }

    async fn create_subscription(
        &self,
        config: crate::model::SubscriptionConfig,
    ) -> Result<SubscriptionInfo, BrokerError> {
        super::no_attribute_filter(&config, "Kafka")?;
        super::engine_only_subscription_settings(&config, "Kafka", super::Honours::default())?;
        self.make_group(&config).await?;
        self.describe_group(&config.name).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.remove_group(name).await
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        self.read_history(topic, from, max).await
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        self.reset_group(subscription, target).await
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    async fn close(&self) {
        let p = self.producer.clone();
        let _ = blocking(move || rdkafka::producer::Producer::flush(&p, Duration::from_secs(10))).await;
    }
}
