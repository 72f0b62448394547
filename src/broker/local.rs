//! The in-process backend: a [`Broker`] over an [`Engine`] in this process (`mem://`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, ConnectionEvent, DeliveryStream, ItemSource,
    Settle, StreamItem, SubscribeRequest, history_topic,
};
use crate::engine::{
    AssignmentChange, AttachOptions, ByteBudget, Engine, PendingPublish, PushConsumer, PushItem, TapItem,
    TapOptions, TapReceiver,
};
use crate::model::{
    AckMode, AckRef, BrowseFrom, Delivery, FetchOptions, Lifetime, Message, Name, PeekReport, PublishOption,
    PublishReceipt, PublishRequest, SeekTarget, StartPosition, SubscriptionConfig, SubscriptionInfo,
    TopicConfig, TopicInfo,
};

/// How often the engine's timers run when it lives inside a broker handle.
const TICK: Duration = Duration::from_millis(50);

/// A broker backed by an engine in this process.
#[derive(Debug)]
pub struct LocalBroker {
    engine: Engine,
    url: String,
    events: broadcast::Sender<ConnectionEvent>,
    next_id: AtomicU64,
    /// Stops the timer task when the broker is dropped.
    _ticker: Option<crate::engine::Ticker>,
    /// The pushers of the engine's HTTP push subscriptions, stopped when the broker is dropped.
    _pushers: Option<crate::broker::push::PushHost>,
}

impl LocalBroker {
    /// Runs an engine call that may wait for an fdatasync (a durable engine's publish or settle) so that
    /// it does not stall the other tasks of a multi-threaded runtime's worker meanwhile.
    fn may_sync<R>(&self, call: impl FnOnce() -> R) -> R {
        if super::can_block_in_place() && self.engine.data_dir().is_some() {
            tokio::task::block_in_place(call)
        } else {
            call()
        }
    }

    /// Wraps an engine. Inside a Tokio runtime this also starts the engine's timer task (deadlines,
    /// backoff, age retention) and the pushers of its HTTP push subscriptions, which stop when the
    /// broker is dropped.
    pub fn new(engine: Engine, url: impl Into<String>) -> Self {
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        let ticker = in_runtime.then(|| engine.spawn_ticker(TICK));
        let pushers = in_runtime.then(|| crate::broker::push::PushHost::spawn(engine.clone()));
        let (events, _) = broadcast::channel(16);
        LocalBroker {
            engine,
            url: url.into(),
            events,
            next_id: AtomicU64::new(1),
            _ticker: ticker,
            _pushers: pushers,
        }
    }

    /// Applies an ack now and returns the fdatasync it still owes (see [`Engine::ack_deferred`]): the
    /// server answers the ack once that is done while it goes on reading the connection's next requests,
    /// so the acks of one connection share syncs instead of each waiting for its own.
    pub fn ack_deferred(&self, token: &AckToken) -> Result<crate::engine::PendingSync, BrokerError> {
        let r = AckRef { partition: token.partition, seq: token.seq, lease: token.lease };
        // No block_in_place: the ack is written, not synced, here (a checkpoint every 50,000 journal
        // records does sync inline, on the worker).
        Ok(self.engine.ack_deferred(&token.subscription, r)?)
    }

    /// Publishes now, in order, and returns the fdatasync the batch still owes (see
    /// [`Engine::publish_batch_deferred`]): the server answers the batch once that is done while it goes
    /// on with the connection's next frames, so pipelined batches share syncs. An `Always` topic still
    /// syncs each record before this returns.
    pub fn publish_deferred(&self, msgs: Vec<PublishRequest>) -> Result<PendingPublish, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        Ok(self.engine.publish_batch_deferred(msgs))
    }

    /// [`LocalBroker::ack_deferred`] for a run of acks of one subscription, under one lock: each ack's
    /// outcome, and the sync they owe together.
    pub fn ack_batch_deferred(
        &self,
        subscription: &Name,
        refs: &[AckRef],
    ) -> Result<(Vec<Result<(), BrokerError>>, crate::engine::PendingSync), BrokerError> {
        let (outcomes, pending) = self.engine.ack_batch_deferred(subscription, refs)?;
        Ok((outcomes.into_iter().map(|r| r.map_err(BrokerError::Engine)).collect(), pending))
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// [`Broker::subscribe`] whose push channel (for a subscription or a history read) is filled only
    /// while `budget` is under its cap; a tap has a ring of its own and ignores it. Each delivery counts
    /// in the budget from the moment it is pushed until the caller releases its size
    /// ([`ByteBudget::release`]). The server gives each stream a budget so that a client that does not
    /// read holds bounded memory.
    pub fn subscribe_within(
        &self,
        req: SubscribeRequest,
        budget: Option<Arc<ByteBudget>>,
    ) -> Result<DeliveryStream, BrokerError> {
        let attach = |sub: &Name| {
            let opts =
                AttachOptions { consumer: req.consumer.clone(), prefetch: req.prefetch, limit: req.limit };
            self.engine.attach_within(sub, opts, budget.clone())
        };
        if let Some(name) = &req.subscription {
            let topic = history_topic(&req)?;
            if let Ok(existing) = self.engine.subscription_info(name)
                && existing.topic != topic
            {
                return Err(BrokerError::Invalid(format!(
                    "subscription \"{name}\" reads topic \"{}\", not \"{topic}\"; name its topic, or pick another subscription name",
                    existing.topic
                )));
            }
            if self.engine.subscription_info(name).is_err() {
                let mut config = SubscriptionConfig::new(name.clone(), topic);
                config.start = req.from.unwrap_or_default();
                config.ack = req.ack;
                match self.engine.create_subscription(config) {
                    // Another consumer created it first: join it.
                    Ok(_) | Err(crate::model::EngineError::SubscriptionExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let consumer = attach(name)?;
            return Ok(DeliveryStream::new(Box::new(PushSource { consumer, ephemeral: None, only: None })));
        }
        if let Some(start) = req.from {
            let topic = history_topic(&req)?;
            // One partition from a seq (`--from P:SEQ`): the reader starts at the end of every
            // partition, then that one partition moves back to the seq, and only its messages are
            // handed on.
            let Some(partition) = req.partition else {
                return self.reader(topic, start, &[], req.ack, attach, None);
            };
            let seq = match start {
                StartPosition::Seq(seq) => seq,
                _ => 1,
            };
            return self.reader(
                topic,
                StartPosition::New,
                &[(partition, seq)],
                req.ack,
                attach,
                Some(partition),
            );
        }
        let tap = self.engine.tap(req.patterns.clone(), TapOptions::default())?;
        Ok(DeliveryStream::new(Box::new(TapSource(tap))))
    }

    /// A reader of `topic` with no acks that starts each partition of `starts` at its own seq (the resume
    /// point of an HTTP event stream over several partitions); partitions not named start with new
    /// messages. With `only`, just that partition's messages are handed on. Its messages count in `budget` as [`LocalBroker::subscribe_within`]'s do.
    pub fn read_from_positions(
        &self,
        topic: Name,
        starts: &[(u32, u64)],
        consumer: String,
        prefetch: u32,
        only: Option<u32>,
        budget: Option<Arc<ByteBudget>>,
    ) -> Result<DeliveryStream, BrokerError> {
        let attach = |sub: &Name| {
            let opts =
                AttachOptions { consumer: Some(consumer.clone()), prefetch: Some(prefetch), limit: None };
            self.engine.attach_within(sub, opts, budget.clone())
        };
        self.reader(topic, StartPosition::New, starts, AckMode::None, attach, only)
    }

    /// A history reader: an ephemeral subscription of `topic` from `start`, then each partition of
    /// `moves` sought to its seq, attached with `attach`; deleted when the stream is dropped. With
    /// `only`, messages of other partitions are passed over.
    fn reader(
        &self,
        topic: Name,
        start: StartPosition,
        moves: &[(u32, u64)],
        ack: AckMode,
        attach: impl Fn(&Name) -> Result<PushConsumer, crate::model::EngineError>,
        only: Option<u32>,
    ) -> Result<DeliveryStream, BrokerError> {
        let name = Name::new(&self.fresh_id("_reader"))?;
        let mut config = SubscriptionConfig::new(name.clone(), topic);
        config.start = start;
        config.ack = ack;
        config.lifetime = Lifetime::Ephemeral { inactive_ttl: Duration::from_secs(5) };
        self.engine.create_subscription(config)?;
        for &(partition, seq) in moves {
            if let Err(e) = self.engine.seek(&name, SeekTarget::Seq { partition, seq }) {
                let _ = self.engine.delete_subscription(&name);
                return Err(e.into());
            }
        }
        let consumer = match attach(&name) {
            Ok(consumer) => consumer,
            Err(e) => {
                let _ = self.engine.delete_subscription(&name);
                return Err(e.into());
            }
        };
        let ephemeral = Some((self.engine.clone(), name));
        Ok(DeliveryStream::new(Box::new(PushSource { consumer, ephemeral, only })))
    }

    fn fresh_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", std::process::id(), self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

fn to_broker(subscription: &Name, d: Delivery) -> BrokerDelivery {
    let token = d.lease.map(|lease| AckToken {
        subscription: subscription.clone(),
        partition: lease.partition,
        seq: lease.seq,
        lease: lease.lease,
        reply: None,
    });
    BrokerDelivery { attempt: Some(d.attempt), deadline: d.deadline, token, message: d.message }
}

/// Deliveries pushed by a subscription; an ephemeral subscription made for this stream is deleted
/// when the stream is dropped.
struct PushSource {
    consumer: PushConsumer,
    ephemeral: Option<(Engine, Name)>,
    /// Only this partition's messages are handed on (a history read from `P:SEQ`).
    only: Option<u32>,
}

impl PushSource {
    /// Whether a delivery is one to hand on; one of another partition is settled and dropped.
    fn wanted(&self, d: &Delivery) -> bool {
        match self.only {
            Some(p) if d.message.partition != p => {
                if let (Some(r), Some((engine, name))) = (d.lease, &self.ephemeral) {
                    let _ = engine.ack(name, r);
                }
                false
            }
            _ => true,
        }
    }
}

impl PushSource {
    /// The stream item for what the consumer received, `None` for a delivery passed over.
    fn item(&self, item: PushItem) -> Option<StreamItem> {
        match item {
            PushItem::Delivery(d) => {
                self.wanted(&d).then(|| StreamItem::Delivery(to_broker(self.consumer.subscription(), d)))
            }
            PushItem::Assignment(AssignmentChange::Assigned(partitions)) => {
                Some(StreamItem::Assigned { partitions })
            }
            PushItem::Assignment(AssignmentChange::Revoked(partitions)) => {
                Some(StreamItem::Revoked { partitions })
            }
        }
    }
}

#[async_trait]
impl ItemSource for PushSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let received = self.consumer.recv_item().await?;
            if let Some(item) = self.item(received) {
                return Some(Ok(item));
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let received = self.consumer.try_recv_item()?;
            if let Some(item) = self.item(received) {
                return Some(Ok(item));
            }
        }
    }
}

impl Drop for PushSource {
    fn drop(&mut self) {
        if let Some((engine, name)) = self.ephemeral.take() {
            // Already gone is fine: the subscription existed only for this stream.
            let _ = engine.delete_subscription(&name);
        }
    }
}

/// Live messages from a tap.
struct TapSource(TapReceiver);

fn tap_item(item: TapItem) -> StreamItem {
    match item {
        TapItem::Message(message) => StreamItem::Delivery(BrokerDelivery::untracked(message)),
        TapItem::Lagged { skipped } => StreamItem::Lagged { skipped },
    }
}

#[async_trait]
impl ItemSource for TapSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        Some(Ok(match self.0.recv().await? {
            TapItem::Message(message) => StreamItem::Delivery(BrokerDelivery::untracked(message)),
            TapItem::Lagged { skipped } => StreamItem::Lagged { skipped },
        }))
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        Some(Ok(tap_item(self.0.try_recv()?)))
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn kind(&self) -> &'static str {
        "mem"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // Everything the model has, except persistence until the durable store lands.
        Capabilities::all().without(super::capability::ENGINE_LACKS)
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        Ok(self.may_sync(|| self.engine.publish(msg))?)
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        self.may_sync(|| self.engine.publish_batch(msgs)).map_err(batch_error)
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        self.subscribe_within(req, None)
    }

    async fn fetch(
        &self,
        subscription: &Name,
        consumer: &str,
        opts: FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        let batch = self.engine.fetch(subscription, consumer, opts).await?;
        Ok(batch.into_iter().map(|d| to_broker(subscription, d)).collect())
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        let r = AckRef { partition: token.partition, seq: token.seq, lease: token.lease };
        let sub = &token.subscription;
        self.may_sync(|| match how {
            Settle::Ack => self.engine.ack(sub, r),
            Settle::Nack(delay) => self.engine.nack(sub, r, delay),
            Settle::Extend(by) => self.engine.extend(sub, r, by).map(|_| ()),
            Settle::Term(reason) => self.engine.term(sub, r, &reason),
            Settle::Release => self.engine.release(sub, r),
        })?;
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        Ok(self.engine.topics())
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        Ok(self.engine.topic_info(name)?)
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        Ok(self.may_sync(|| self.engine.create_topic(config))?)
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        Ok(self.may_sync(|| self.engine.delete_topic(name))?)
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        Ok(self.may_sync(|| self.engine.purge_topic(name))?)
    }

    fn publish_options(&self) -> &'static [PublishOption] {
        &[PublishOption::Partition]
    }

    async fn set_partitions(&self, name: &Name, partitions: u32) -> Result<TopicInfo, BrokerError> {
        Ok(self.may_sync(|| self.engine.set_partitions(name, partitions))?)
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        Ok(self.engine.subscriptions(topic))
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        Ok(self.engine.subscription_info(name)?)
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        Ok(self.may_sync(|| self.engine.create_subscription(config))?)
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        Ok(self.may_sync(|| self.engine.delete_subscription(name))?)
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        Ok(self.engine.browse(topic, from, max)?)
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        Ok(self.may_sync(|| self.engine.seek(subscription, target))?)
    }

    async fn peek(&self, subscription: &Name, from: u64, limit: usize) -> Result<PeekReport, BrokerError> {
        Ok(self.engine.peek(subscription, from, limit)?)
    }

    async fn create_snapshot(
        &self,
        name: &Name,
        subscription: &Name,
        ttl: Option<std::time::Duration>,
    ) -> Result<crate::model::SnapshotInfo, BrokerError> {
        Ok(self.may_sync(|| self.engine.create_snapshot_for(name.clone(), subscription, ttl))?)
    }

    async fn snapshots(&self) -> Result<Vec<crate::model::SnapshotInfo>, BrokerError> {
        Ok(self.engine.snapshots())
    }

    async fn delete_snapshot(&self, name: &Name) -> Result<(), BrokerError> {
        Ok(self.may_sync(|| self.engine.delete_snapshot(name))?)
    }

    async fn seek_snapshot(&self, subscription: &Name, snapshot: &Name) -> Result<u64, BrokerError> {
        Ok(self.may_sync(|| self.engine.seek_snapshot(subscription, snapshot))?)
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }
}

/// A batch publish's failure, naming the message that failed.
pub fn batch_error(e: crate::model::EngineError) -> BrokerError {
    match e {
        crate::model::EngineError::Batch { index, source } => {
            BrokerError::Batch { index, source: Box::new(BrokerError::Engine(*source)) }
        }
        other => BrokerError::Engine(other),
    }
}

/// Shares one engine between several broker handles (tests, demos).
pub fn shared(engine: Engine) -> Arc<LocalBroker> {
    Arc::new(LocalBroker::new(engine, "mem://"))
}
