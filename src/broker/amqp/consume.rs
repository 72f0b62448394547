//! Receiving: live bindings, durable queues with manual acks, and stream queues read from an offset.
//! Each subscription has a connection of its own, so one consumer's channel error or outage touches no
//! other; after an outage it is set up again (a durable queue resumes where it was, and what was
//! unacked comes back as redeliveries).

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::{broadcast, mpsc};

use super::url::Target;
use super::{AmqpBroker, convert, open};
use crate::broker::kit::{Forwarder, reconnect};
use crate::broker::{
    AckToken, BrokerDelivery, BrokerError, ChannelSource, ConnectionEvent, DeliveryStream, StreamItem,
    SubscribeRequest, history_topic,
};
use crate::model::{AckMode, Name, StartPosition};

/// What a subscription consumes.
#[derive(Debug, Clone)]
enum Source {
    /// A server-named exclusive queue bound with the patterns' keys; no acks, at most once.
    Live(Vec<String>),
    /// A durable named queue: manual acks, or none when the subscriber does not ack (at most once).
    Durable(Name, bool),
    /// A topic's stream queue from a position; acked by pubsub as it reads (acks are credit there).
    Stream(Name, StartPosition),
}

/// The channel and consumer of one setup of a subscription.
struct Setup {
    channel: Channel,
    consumer: Consumer,
}

async fn setup(
    target: &Target,
    conn: &Connection,
    source: &Source,
    prefetch: u16,
) -> Result<Setup, BrokerError> {
    let fail = |e: lapin::Error| convert::error(&target.shown, &e);
    let channel = conn.create_channel().await.map_err(fail)?;
    let consumer = match source {
        Source::Live(keys) => {
            let exclusive =
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
            let queue =
                channel.queue_declare("".into(), exclusive, FieldTable::default()).await.map_err(fail)?;
            let exchange = convert::short("exchange", &target.exchange)?;
            for key in keys {
                channel
                    .queue_bind(
                        queue.name().clone(),
                        exchange.clone(),
                        convert::short("binding key", key)?,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| match fail(e) {
                        BrokerError::Invalid(text) if text.contains("NOT_FOUND") => {
                            BrokerError::Invalid(format!(
                                "exchange \"{}\" does not exist in vhost \"{}\" ({text})",
                                target.exchange, target.vhost
                            ))
                        }
                        other => other,
                    })?;
            }
            let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
            channel
                .basic_consume(queue.name().clone(), "".into(), no_ack, FieldTable::default())
                .await
                .map_err(fail)?
        }
        Source::Durable(name, _) => {
            // Manual acks also for a subscriber that does not ack (pubsub acks once it handed a message
            // on): with no_ack RabbitMQ would ignore the prefetch and push the whole backlog at once.
            channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(fail)?;
            let queue = convert::short("queue", name.as_str())?;
            channel
                .basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(fail)?
        }
        Source::Stream(topic, start) => {
            channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(fail)?;
            let offset = match start {
                StartPosition::All => AMQPValue::LongString(LongString::from("first")),
                StartPosition::Last | StartPosition::LastPerKey => {
                    AMQPValue::LongString(LongString::from("last"))
                }
                StartPosition::New => AMQPValue::LongString(LongString::from("next")),
                StartPosition::Seq(seq) => {
                    AMQPValue::LongLongInt(i64::try_from(seq.saturating_sub(1)).unwrap_or(i64::MAX))
                }
                StartPosition::Time(t) => {
                    AMQPValue::Timestamp(u64::try_from(t.as_micros() / 1_000_000).unwrap_or(0))
                }
            };
            let mut args = FieldTable::default();
            args.insert("x-stream-offset".into(), offset);
            let queue = convert::short("queue", topic.as_str())?;
            channel
                .basic_consume(queue, "".into(), BasicConsumeOptions::default(), args)
                .await
                .map_err(fail)?
        }
    };
    Ok(Setup { channel, consumer })
}

impl AmqpBroker {
    pub(super) async fn subscribe_any(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        let keys = req.patterns.iter().map(convert::binding_key).collect::<Result<Vec<_>, _>>()?;
        let source = match (&req.subscription, req.from) {
            (Some(_), Some(_)) => {
                return Err(BrokerError::Invalid(
                    "a RabbitMQ queue is read where it stands; --from reads a topic's stream queue (without -s)".into(),
                ));
            }
            (Some(name), None) => {
                // A durable subscription is made and bound on first use.
                if self.queue_counts(name.as_str()).await?.is_none() {
                    self.declare_queue(name, &keys, None).await?;
                }
                Source::Durable(name.clone(), req.ack != AckMode::None)
            }
            (None, Some(start)) => {
                let topic = history_topic(&req)?;
                if self.queue_counts(topic.as_str()).await?.is_none() {
                    return Err(BrokerError::Invalid(format!(
                        "\"{topic}\" keeps no history: only stream queues do (`topic create {topic}` makes one)"
                    )));
                }
                Source::Stream(topic, start)
            }
            (None, None) => Source::Live(keys),
        };
        let mut prefetch =
            req.prefetch.map_or(self.target.prefetch, |p| u16::try_from(p).unwrap_or(u16::MAX)).max(1);
        if let Some(limit) = req.limit {
            // RabbitMQ sends up to the prefetch at once: never more than the total.
            prefetch = prefetch.min(u16::try_from(limit).unwrap_or(u16::MAX).max(1));
        }
        let conn = open(&self.target).await?;
        let first = setup(&self.target, &conn, &source, prefetch).await?;
        let (tx, rx) = mpsc::channel(usize::from(prefetch).max(16));
        let pump = Pump {
            target: self.target.clone(),
            source,
            prefetch,
            events: self.events.clone(),
            consumers: self.consumers.clone(),
            key: format!("amqp-{}", self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            subscription: req.subscription.clone(),
            limit: req.limit,
        };
        let task = tokio::spawn(pump.run(conn, first, tx));
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}

/// A consumer's channel in the registry settles use, under a key that changes with every setup (a
/// delivery tag means something only on the channel that delivered it: a token from before an outage must
/// not ack whatever the new channel numbered the same). Leaves the registry when the task ends, however.
struct Registration {
    consumers: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
    base: String,
    setups: u64,
    key: String,
}

impl Registration {
    /// Registers `channel` under a fresh key, dropping the previous one; returns the key.
    fn switch(&mut self, channel: &Channel) -> String {
        self.setups += 1;
        let key = format!("{}#{}", self.base, self.setups);
        let mut all = self.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.remove(&self.key);
        all.insert(key.clone(), channel.clone());
        self.key = key.clone();
        key
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

/// One subscription's task: forwards deliveries, and sets the subscription up again after an outage.
struct Pump {
    target: Target,
    source: Source,
    prefetch: u16,
    events: broadcast::Sender<ConnectionEvent>,
    consumers: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
    /// This subscription's key in `consumers`, before the setup number.
    key: String,
    subscription: Option<Name>,
    /// The most messages of a durable queue this subscriber takes in all (`sub --count N`).
    limit: Option<u64>,
}

impl Pump {
    async fn run(
        mut self,
        mut conn: Connection,
        mut current: Setup,
        tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
    ) {
        // Also when the reader drops the stream and the task is aborted mid-await: the channel leaves the
        // registry, so nothing holds it open and RabbitMQ requeues what it had unacked.
        let mut registered = Registration {
            consumers: self.consumers.clone(),
            base: self.key.clone(),
            setups: 0,
            key: String::new(),
        };
        let mut forward = Forwarder::new(tx.clone(), Some(self.events.clone()));
        // The last stream offset handed on (+1), so a stream subscription resumes after it.
        let mut next_seq = None;
        let mut left = self.limit;
        loop {
            let key = registered.switch(&current.channel);
            let mut at = Progress { next_seq: &mut next_seq, left: &mut left };
            let reason =
                self.serve(&mut current.consumer, &current.channel, &key, &tx, &mut forward, &mut at).await;
            let Some(reason) = reason else { break };
            if let (Source::Stream(topic, _), Some(seq)) = (&self.source, next_seq) {
                self.source = Source::Stream(topic.clone(), StartPosition::Seq(seq));
            }
            // The link went (a broker restart, a closed channel): set the subscription up again.
            let again = reconnect(
                &self.events,
                reason,
                || tx.is_closed(),
                || async {
                    let conn = open(&self.target).await?;
                    let s = setup(&self.target, &conn, &self.source, self.prefetch).await?;
                    Ok::<_, BrokerError>((conn, s))
                },
            )
            .await;
            match again {
                Some((c, s)) => {
                    conn = c;
                    current = s;
                }
                None => break,
            }
        }
        let _ = conn.close(200, "OK".into()).await;
    }

    /// Forwards until the reader goes (`None`) or the consumer ends (`Some(why)`).
    async fn serve(
        &self,
        consumer: &mut Consumer,
        channel: &Channel,
        key: &str,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
        forward: &mut Forwarder,
        at: &mut Progress<'_>,
    ) -> Option<String> {
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                alive = forward.catch_up(), if forward.owes_report() => {
                    if !alive {
                        return None;
                    }
                    continue;
                }
                () = tx.closed() => return None,
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Some(format!("the RabbitMQ consumer stopped: {e}")),
                // This subscriber cancelled its consumer, having taken all it wanted.
                None if *at.left == Some(0) => {
                    tx.closed().await;
                    return None;
                }
                None if channel.status().connected() => {
                    // Cancelled by the broker: the queue was deleted.
                    let gone = BrokerError::Invalid("the queue was deleted".into());
                    let _ = forward.fail(gone).await;
                    return None;
                }
                None => return Some("the RabbitMQ channel closed".into()),
            };
            let tag = d.delivery_tag;
            match &self.source {
                Source::Live(_) => {
                    let Some(m) = convert::to_message(d.routing_key.as_str(), &d.properties, d.data, 0)
                    else {
                        continue;
                    };
                    if !forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(m))).open() {
                        return None;
                    }
                }
                Source::Stream(..) => {
                    // Only a stream queue numbers its messages; anything else must not be read (and
                    // acked) as history.
                    let Some(offset) = convert::number(&d.properties, "x-stream-offset") else {
                        let _ =
                            channel.basic_nack(tag, BasicNackOptions { requeue: true, multiple: true }).await;
                        let _ = forward.fail(not_a_stream()).await;
                        return None;
                    };
                    let seq = u64::try_from(offset).unwrap_or(0).saturating_add(1);
                    let Some(m) = convert::to_message(d.routing_key.as_str(), &d.properties, d.data, seq)
                    else {
                        continue;
                    };
                    // Stream reads are not lost to a slow reader: the credit waits for it.
                    if tx.send(Ok(StreamItem::Delivery(BrokerDelivery::untracked(m)))).await.is_err() {
                        return None;
                    }
                    *at.next_seq = Some(seq.saturating_add(1));
                    let _ = channel.basic_ack(tag, BasicAckOptions::default()).await;
                }
                Source::Durable(name, acked) => {
                    if *at.left == Some(0) {
                        // Sent before the cancel arrived: straight back to the queue, never seen.
                        let options = BasicNackOptions { requeue: true, multiple: false };
                        let _ = channel.basic_nack(tag, options).await;
                        continue;
                    }
                    // Quorum queues count deliveries; elsewhere RabbitMQ only says "redelivered".
                    let attempt = match convert::number(&d.properties, "x-delivery-count") {
                        Some(n) => u32::try_from(n.saturating_add(1)).unwrap_or(u32::MAX),
                        None if d.redelivered => 2,
                        None => 1,
                    };
                    let Some(m) = convert::to_message(d.routing_key.as_str(), &d.properties, d.data, 0)
                    else {
                        let _ = channel
                            .basic_reject(tag, lapin::options::BasicRejectOptions { requeue: false })
                            .await;
                        continue;
                    };
                    let token = acked.then(|| AckToken {
                        subscription: self.subscription.clone().unwrap_or_else(|| name.clone()),
                        partition: 0,
                        seq: m.seq,
                        lease: tag,
                        reply: Some(key.to_string()),
                    });
                    let delivery =
                        BrokerDelivery { message: m, attempt: Some(attempt), deadline: None, token };
                    if let Some(left) = at.left.as_mut() {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            // The total is reached: RabbitMQ sends this consumer nothing more. Cancelled
                            // before the last is handed on, so its ack cannot make room for another.
                            let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                        }
                    }
                    // Unacked messages are bounded by the prefetch; the reader is waited for.
                    if tx.send(Ok(StreamItem::Delivery(delivery))).await.is_err() {
                        return None;
                    }
                    if !acked {
                        // A subscriber that does not ack: acked here once handed on (at most once), so
                        // the prefetch still bounds what waits in this process.
                        let _ = channel.basic_ack(tag, BasicAckOptions::default()).await;
                    }
                }
            }
        }
    }
}

/// Where a subscription stands across setups: the next stream offset to resume at, and what is left of
/// its total.
struct Progress<'a> {
    next_seq: &'a mut Option<u64>,
    left: &'a mut Option<u64>,
}

/// The error for reading a queue that is not a stream as history.
pub(super) fn not_a_stream() -> BrokerError {
    BrokerError::Invalid(
        "that queue is not a stream queue, so it keeps no history to read (its messages were left in place)"
            .into(),
    )
}
