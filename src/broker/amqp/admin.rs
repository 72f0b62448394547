//! Topics as stream queues, subscriptions as durable queues: declaring, inspecting, purging, deleting,
//! and reading a stream's history.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::url::{DEFAULT_EXCHANGE, ExchangeType, QueueType};
use super::{AmqpBroker, convert};
use crate::broker::BrokerError;
use crate::model::{
    BrowseFrom, Clock, EngineError, Limits, Message, Name, SubscriptionConfig, SubscriptionInfo, SystemClock,
    TopicConfig, TopicInfo,
};

/// How long a history read waits for one more message before taking what it has as all there is.
const HISTORY_IDLE: Duration = Duration::from_millis(400);
/// The longest a history read runs.
const HISTORY_MAX: Duration = Duration::from_secs(10);

/// How long a queue delete or purge may take before pubsub stops waiting (exit 4).
const ADMIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl AmqpBroker {
    /// Ready messages and consumers of queue `name`, or `None` when there is no such queue.
    pub(super) async fn queue_counts(&self, name: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        match channel.queue_declare(convert::short("queue", name)?, passive, FieldTable::default()).await {
            Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
            Err(e) => match convert::error(&self.target.shown, &e) {
                // A passive declare of a missing queue is a 404 that closes the channel; nothing else.
                BrokerError::Invalid(text) if text.contains("404") || text.contains("NOT_FOUND") => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Declares the exchange unless it is one of RabbitMQ's own.
    pub(super) async fn ensure_exchange(&self, channel: &Channel) -> Result<(), BrokerError> {
        if self.target.exchange.starts_with("amq.") || self.target.exchange == DEFAULT_EXCHANGE {
            return Ok(());
        }
        let kind = match self.target.exchange_type {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Headers => ExchangeKind::Headers,
        };
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(
                convert::short("exchange", &self.target.exchange)?,
                kind,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.refused("declaring the exchange", &e))
    }

    /// Binds queue `queue` to the exchange with `key`.
    async fn bind(&self, channel: &Channel, queue: &str, key: &str) -> Result<(), BrokerError> {
        channel
            .queue_bind(
                convert::short("queue", queue)?,
                convert::short("exchange", &self.target.exchange)?,
                convert::short("binding key", key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.refused("binding", &e))
    }

    /// `topic create`: a stream queue of the topic's name bound to its routing key, so what is published
    /// to the topic is kept and can be read again.
    pub(super) async fn create_stream(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        if !config.subjects.is_empty() {
            return Err(BrokerError::Invalid(
                "a RabbitMQ topic captures its own routing key only; bind other keys to a subscription"
                    .into(),
            ));
        }
        let defaults = TopicConfig::new(config.name.clone());
        if config.max_msg_bytes != defaults.max_msg_bytes {
            return Err(BrokerError::Invalid(
                "a stream queue has no per-message size limit (RabbitMQ's max_message_size is broker-wide)"
                    .into(),
            ));
        }
        // pubsub's default count limit is not a choice the user made; a stream keeps age and size only.
        let counted = config.limits.max_msgs.is_some() && config.limits.max_msgs != defaults.limits.max_msgs;
        if counted || config.limits.max_msgs_per_key.is_some() {
            return Err(BrokerError::Invalid(
                "a stream queue is limited by age (--max-age) or size (--max-bytes), not by a message count"
                    .into(),
            ));
        }
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("stream")));
        if let Some(age) = config.limits.max_age {
            let secs = age.as_secs().max(1);
            args.insert("x-max-age".into(), AMQPValue::LongString(LongString::from(format!("{secs}s"))));
        }
        if let Some(bytes) = config.limits.max_bytes {
            args.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX)),
            );
        }
        let channel = self.channel().await?;
        self.ensure_exchange(&channel).await?;
        if self.queue_counts(config.name.as_str()).await?.is_some() {
            return Err(BrokerError::Engine(EngineError::TopicExists(config.name.clone())));
        }
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel
            .queue_declare(convert::short("queue", config.name.as_str())?, durable, args)
            .await
            .map_err(|e| self.refused("declaring the stream queue", &e))?;
        self.bind(&channel, config.name.as_str(), config.name.as_str()).await?;
        self.stream_info(&config.name).await
    }

    /// A topic's stream queue: its message count (RabbitMQ says no more without the management API).
    pub(super) async fn stream_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        match self.queue_counts(name.as_str()).await? {
            Some((messages, consumers)) => {
                let mut info = TopicInfo::external(name.clone(), u64::from(messages), None);
                info.subscriptions = consumers;
                info.limits =
                    Limits { max_msgs: None, max_bytes: None, max_age: None, max_msgs_per_key: None };
                Ok(info)
            }
            None => Err(BrokerError::Invalid(format!(
                "no queue \"{name}\" in vhost \"{}\": a routing key keeps nothing until `topic create {name}` makes a stream queue for it",
                self.target.vhost
            ))),
        }
    }

    /// Deletes a queue; gives up after [`ADMIN_WAIT`] (a delete was once seen waiting forever on a
    /// broker under load, which left `subs delete` hanging).
    pub(super) async fn delete_queue(&self, name: &Name, what: &str) -> Result<(), BrokerError> {
        tokio::time::timeout(ADMIN_WAIT, self.delete_queue_now(name, what))
            .await
            .map_err(|_| BrokerError::Timeout(ADMIN_WAIT))?
    }

    async fn delete_queue_now(&self, name: &Name, what: &str) -> Result<(), BrokerError> {
        if self.queue_counts(name.as_str()).await?.is_none() {
            return Err(BrokerError::Invalid(format!(
                "no {what} \"{name}\": there is no queue of that name in vhost \"{}\"",
                self.target.vhost
            )));
        }
        let channel = self.channel().await?;
        channel
            .queue_delete(convert::short("queue", name.as_str())?, QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| self.refused("deleting the queue", &e))
    }

    pub(super) async fn purge_queue(&self, name: &Name) -> Result<u64, BrokerError> {
        tokio::time::timeout(ADMIN_WAIT, self.purge_queue_now(name))
            .await
            .map_err(|_| BrokerError::Timeout(ADMIN_WAIT))?
    }

    async fn purge_queue_now(&self, name: &Name) -> Result<u64, BrokerError> {
        let channel = self.channel().await?;
        channel
            .queue_purge(convert::short("queue", name.as_str())?, QueuePurgeOptions::default())
            .await
            .map(u64::from)
            .map_err(|e| match self.refused("purging", &e) {
                BrokerError::Invalid(text) if text.contains("stream") || text.contains("406") => {
                    BrokerError::Invalid(format!(
                        "a stream queue cannot be purged; its retention (--max-age, --max-bytes) removes old messages ({text})"
                    ))
                }
                other => other,
            })
    }

    /// `sub-info`: a durable queue's ready messages and consumers, with unacked counts, rates and its
    /// topic where the management API answers.
    pub(super) async fn queue_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        let Some((ready, consumers)) = self.queue_counts(name.as_str()).await? else {
            return Err(BrokerError::Engine(EngineError::NoSuchSubscription(name.clone())));
        };
        if let Some(details) = self.queue_details(name).await {
            let topic = self.bound_key(name).await;
            return Ok(self.sub_from(name.clone(), topic, &details));
        }
        // Without the management API the queue's bindings are not visible; the exchange stands in.
        let exchange = Name::new(&self.target.exchange).unwrap_or_else(|_| name.clone());
        let mut info = SubscriptionInfo::external(name.clone(), exchange);
        let ready = u64::from(ready);
        info.pending = ready;
        info.backlog = ready;
        info.offset_lag = ready;
        info.max_in_flight = u32::from(self.target.prefetch);
        info.consumers = super::listing::consumers(u64::from(consumers), u32::from(self.target.prefetch));
        Ok(info.with_one_partition(None))
    }

    /// The arguments of a durable subscription's queue.
    fn queue_args(&self, config: Option<&SubscriptionConfig>) -> FieldTable {
        let mut args = FieldTable::default();
        let max_deliveries = config.map_or(0, |c| c.max_deliveries);
        // A delivery limit is a quorum queue's; asking for one makes the queue a quorum queue.
        let kind = if max_deliveries > 0 && self.target.queue_type == QueueType::Classic {
            QueueType::Quorum
        } else {
            self.target.queue_type
        };
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(kind.as_str())));
        if max_deliveries > 0 {
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(max_deliveries)));
        }
        if let Some(dlt) = config.and_then(|c| c.dead_letter.as_ref()) {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(self.target.exchange.as_str())),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(dlt.as_str())),
            );
        }
        args
    }

    /// Declares the durable queue of a subscription (unless it exists) and binds its topic.
    pub(super) async fn create_queue(&self, config: &SubscriptionConfig) -> Result<(), BrokerError> {
        if config.sets_backoff() {
            return Err(BrokerError::Invalid(
                "RabbitMQ has no redelivery backoff: a nacked or returned message is requeued at once; create the subscription without --backoff".into(),
            ));
        }
        if config.sets_max_lease() {
            return Err(BrokerError::Invalid(
                "RabbitMQ has no lease to cap: a delivery is held until its consumer settles it or its channel closes; create the subscription without --max-lease".into(),
            ));
        }
        if self.queue_counts(config.name.as_str()).await?.is_some() {
            return Err(BrokerError::Engine(EngineError::SubscriptionExists(config.name.clone())));
        }
        self.declare_queue(&config.name, std::slice::from_ref(&config.topic.to_string()), Some(config)).await
    }

    /// Declares queue `name` with `keys` bound (used on first use by `sub -s` as well).
    pub(super) async fn declare_queue(
        &self,
        name: &Name,
        keys: &[String],
        config: Option<&SubscriptionConfig>,
    ) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        self.ensure_exchange(&channel).await?;
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel
            .queue_declare(convert::short("queue", name.as_str())?, durable, self.queue_args(config))
            .await
            .map_err(|e| self.refused("declaring the queue", &e))?;
        for key in keys {
            self.bind(&channel, name.as_str(), key).await?;
        }
        Ok(())
    }

    /// Reads up to `max` messages of a topic's stream queue from `from`, without consuming them.
    pub(super) async fn read_stream(
        &self,
        topic: &Name,
        from: BrowseFrom,
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        if self.queue_counts(topic.as_str()).await?.is_none() {
            return Err(BrokerError::Invalid(format!(
                "\"{topic}\" keeps no history: only stream queues do (`topic create {topic}` makes one)"
            )));
        }
        // A stream's message count is not in its declare-ok, so the newest N are found by reading from
        // the first and keeping the last N.
        let (offset, keep_last) = match from {
            BrowseFrom::Seq(seq) | BrowseFrom::At { seq, .. } => {
                (AMQPValue::LongLongInt(i64::try_from(seq.saturating_sub(1)).unwrap_or(i64::MAX)), false)
            }
            BrowseFrom::Time(t) => {
                (AMQPValue::Timestamp(u64::try_from(t.as_micros() / 1_000_000).unwrap_or(0)), false)
            }
            BrowseFrom::Last(_) => (AMQPValue::LongString(LongString::from("first")), true),
        };
        let want = match from {
            BrowseFrom::Last(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max),
            _ => max,
        };
        if want == 0 {
            return Ok(Vec::new());
        }
        let channel = self.channel().await?;
        let prefetch = u16::try_from(want).unwrap_or(u16::MAX).clamp(1, 1000);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.refused("reading the stream", &e))?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), offset);
        let mut consumer = channel
            .basic_consume(
                convert::short("queue", topic.as_str())?,
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| self.refused("reading the stream", &e))?;
        let mut out = std::collections::VecDeque::new();
        // A busy stream never pauses for HISTORY_IDLE: reading from the first for the newest N stops at
        // messages newer than the read, and after HISTORY_MAX whatever happens.
        let started = SystemClock.now();
        let give_up = tokio::time::Instant::now() + HISTORY_MAX;
        while keep_last || out.len() < want {
            let wait = HISTORY_IDLE.min(give_up.saturating_duration_since(tokio::time::Instant::now()));
            let Ok(Some(next)) = tokio::time::timeout(wait, consumer.next()).await else { break };
            let d = next.map_err(|e| convert::error(&self.target.shown, &e))?;
            // Only a stream queue numbers its messages: a classic or quorum queue of this name must not
            // be read (and acked) as history.
            let Some(offset) = convert::number(&d.properties, "x-stream-offset") else {
                let requeue = lapin::options::BasicNackOptions { requeue: true, multiple: true };
                let _ = channel.basic_nack(d.delivery_tag, requeue).await;
                let _ = channel.close(200, "OK".into()).await;
                return Err(super::consume::not_a_stream());
            };
            let seq = u64::try_from(offset).unwrap_or(0).saturating_add(1);
            let _ = d.acker.ack(lapin::options::BasicAckOptions::default()).await;
            if let Some(m) = convert::to_message(d.routing_key.as_str(), &d.properties, d.data, seq) {
                let newer = m.publish_time.as_micros() / 1_000_000 > started.as_micros() / 1_000_000;
                if keep_last && newer {
                    break;
                }
                out.push_back(m);
                if out.len() > want {
                    out.pop_front();
                }
            }
        }
        let _ = channel.close(200, "OK".into()).await;
        Ok(out.into())
    }
}
