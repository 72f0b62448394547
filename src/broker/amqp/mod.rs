//! RabbitMQ over AMQP 0-9-1, on `lapin`. A topic is a routing key on one exchange (`amq.topic` unless
//! `?exchange=`); `sub PATTERN` binds a server-named exclusive queue; `sub -s NAME` consumes a durable
//! queue with manual acks; a topic with history is a stream queue of the topic's name. README "On
//! RabbitMQ" has the whole mapping.

mod admin;
mod consume;
mod convert;
mod listing;
mod management;
mod url;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::broadcast;

use super::{
    AckToken, Broker, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream, Settle,
    SubscribeRequest,
};
use crate::model::{
    BrowseFrom, Message, Name, PublishOption, PublishReceipt, PublishRequest, SubscriptionConfig,
    SubscriptionInfo, TopicConfig, TopicInfo,
};
use convert::error;
use url::Target;

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What pubsub can do on RabbitMQ; history, seek and the rest depend on the topic (stream queues).
const CAPS: Capabilities = Capabilities::of(&[
    Capability::Ack,
    Capability::Nack,
    Capability::Term,
    Capability::Replay,
    Capability::Lag,
    Capability::Patterns,
    Capability::Headers,
    Capability::Persistence,
    Capability::CompetingConsumers,
    Capability::DeadLetter,
    Capability::TopicAdmin,
]);

/// A RabbitMQ broker.
pub struct AmqpBroker {
    target: Target,
    /// The connection publishes and administration share; opened again when it died.
    conn: tokio::sync::Mutex<Arc<Connection>>,
    /// The publishing channel (in confirm mode unless `?confirm=false`); made again after a channel error.
    publisher: tokio::sync::Mutex<Option<Channel>>,
    events: broadcast::Sender<ConnectionEvent>,
    /// The channels of this process's consumers by key, for settling their deliveries (a delivery tag
    /// means something only on the channel it came on).
    consumers: Arc<Mutex<HashMap<String, Channel>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker").field("url", &self.target.shown).finish()
    }
}

/// Opens a connection to `target`, classifying what goes wrong.
async fn open(target: &Target) -> Result<Connection, BrokerError> {
    // Named with the process id, so an operator (or a test) can tell this process's connections apart.
    let name = format!("pubsub {}", std::process::id());
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = async {
        match &target.ca {
            Some(ca) => {
                let pem = std::fs::read_to_string(ca)
                    .map_err(|e| BrokerError::Invalid(format!("ca file {}: {e}", ca.display())))?;
                let tls = lapin::tcp::OwnedTLSConfig { cert_chain: Some(pem), identity: None };
                let runtime = lapin::runtime::default_runtime()
                    .map_err(|e| convert::connect_error(&target.shown, &e))?;
                Connection::connect_with_config(&target.uri, props, tls, runtime)
                    .await
                    .map_err(|e| convert::connect_error(&target.shown, &e))
            }
            None => Connection::connect(&target.uri, props)
                .await
                .map_err(|e| convert::connect_error(&target.shown, &e)),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Unreachable {
            url: target.shown.clone(),
            reason: format!(
                "no AMQP answer within {}s: the server there does not speak AMQP 0-9-1, or is stuck ({}://… {} TLS)",
                CONNECT_TIMEOUT.as_secs(),
                if target.tls { "amqps" } else { "amqp" },
                if target.tls { "wants" } else { "has no" }
            ),
        }),
    }
}

impl AmqpBroker {
    /// Connects to `amqp[s]://user:pass@host[:port][/vhost][?options]`.
    pub async fn connect(url: &str) -> Result<AmqpBroker, BrokerError> {
        let target = Target::parse(url.trim())?;
        let conn = open(&target).await?;
        let (events, _) = broadcast::channel(64);
        Ok(AmqpBroker {
            target,
            conn: tokio::sync::Mutex::new(Arc::new(conn)),
            publisher: tokio::sync::Mutex::new(None),
            events,
            consumers: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
        })
    }

    /// A fresh channel on the shared connection, opening the connection again if it died.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut conn = self.conn.lock().await;
        if !conn.status().connected() {
            let _ = self
                .events
                .send(ConnectionEvent::Disconnected { reason: "the connection to RabbitMQ closed".into() });
            *conn = Arc::new(open(&self.target).await?);
            let _ = self.events.send(ConnectionEvent::Reconnected);
        }
        conn.create_channel().await.map_err(|e| error(&self.target.shown, &e))
    }

    /// An error that closed a channel, in words that name what was missing.
    fn refused(&self, what: &str, e: &lapin::Error) -> BrokerError {
        match error(&self.target.shown, e) {
            BrokerError::Invalid(text) if text.contains("NOT_FOUND") => {
                BrokerError::Invalid(format!("{what}: {text} (vhost \"{}\")", self.target.vhost))
            }
            other => other,
        }
    }

    /// A missing exchange, said in those words.
    fn name_missing_exchange(&self, e: BrokerError) -> BrokerError {
        match e {
            BrokerError::Invalid(text) if text.contains("no exchange") => BrokerError::Invalid(format!(
                "exchange \"{}\" does not exist in vhost \"{}\": create it, or choose one with ?exchange=",
                self.target.exchange, self.target.vhost
            )),
            other => other,
        }
    }

    async fn publish_all(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut slot = self.publisher.lock().await;
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(c) => c.clone(),
            None => {
                let c = self.channel().await?;
                if self.target.confirm {
                    c.confirm_select(ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| error(&self.target.shown, &e))?;
                }
                *slot = Some(c.clone());
                c
            }
        };
        let exchange = convert::short("exchange", &self.target.exchange)?;
        // Everything that can be refused here is, before anything is sent.
        let mut prepared = Vec::with_capacity(msgs.len());
        for (index, m) in msgs.iter().enumerate() {
            let made =
                convert::properties(m).and_then(|p| Ok((p, convert::short("topic", m.subject.as_str())?)));
            match made {
                Ok(ready) => prepared.push(ready),
                Err(e) if msgs.len() == 1 => return Err(e),
                Err(e) => return Err(BrokerError::Batch { index, source: Box::new(e) }),
            }
        }
        // Unroutable messages are reported through confirms; without confirms they would be returned and
        // held by the client with nobody to read them.
        let options =
            BasicPublishOptions { mandatory: self.target.confirm, ..BasicPublishOptions::default() };
        let mut pending = Vec::with_capacity(msgs.len());
        for (index, (m, (props, key))) in msgs.iter().zip(prepared).enumerate() {
            match channel.basic_publish(exchange.clone(), key, options, &m.payload, props).await {
                Ok(confirm) => pending.push(confirm),
                Err(e) => {
                    // The channel closed under the batch (a missing exchange closes it at the first
                    // message): the confirms sent so far hold the broker's reason.
                    let mut why = self.refused("publishing", &e);
                    for confirm in pending {
                        if let Err(e) = confirm.await {
                            why = self.refused("publishing", &e);
                            break;
                        }
                    }
                    *slot = None;
                    let why = self.name_missing_exchange(why);
                    return Err(if msgs.len() == 1 {
                        why
                    } else {
                        BrokerError::Batch { index, source: Box::new(why) }
                    });
                }
            }
        }
        let mut receipts = Vec::with_capacity(pending.len());
        for (index, confirm) in pending.into_iter().enumerate() {
            let unrouted = match confirm.await {
                Ok(Confirmation::Ack(returned)) => returned.is_some(),
                Ok(Confirmation::NotRequested) => false,
                Ok(Confirmation::Nack(_)) => {
                    return Err(BrokerError::Batch {
                        index,
                        source: Box::new(BrokerError::Protocol(
                            "RabbitMQ refused the message (a nack: the queue is full or the broker is short of resources)"
                                .into(),
                        )),
                    });
                }
                Err(e) => {
                    *slot = None;
                    let refused = self.name_missing_exchange(self.refused("publishing", &e));
                    return Err(if msgs.len() == 1 {
                        refused
                    } else {
                        BrokerError::Batch { index, source: Box::new(refused) }
                    });
                }
            };
            receipts.push(PublishReceipt { unrouted, ..PublishReceipt::default() });
        }
        Ok(receipts)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn url(&self) -> String {
        self.target.shown.clone()
    }

    fn capabilities(&self) -> Capabilities {
        CAPS
    }

    async fn topic_capabilities(&self, topic: &Name) -> Result<Capabilities, BrokerError> {
        // A topic with history is a stream queue of its name; other routing keys keep nothing.
        if self.queue_counts(topic.as_str()).await?.is_some() {
            Ok(CAPS)
        } else {
            Ok(CAPS.without(&[Capability::Replay]))
        }
    }

    fn why_not(&self, capability: Capability) -> &'static str {
        match capability {
            Capability::NackDelay => {
                "RabbitMQ requeues a nacked message at once; a delayed retry needs a TTL queue and a dead-letter exchange, which pubsub does not set up"
            }
            Capability::Extend | Capability::AckDeadline => {
                "RabbitMQ holds an unacked message until its consumer's channel closes; there is no lease or deadline"
            }
            Capability::DetachedSettle => {
                "a delivery tag means something only on the channel that received it"
            }
            Capability::CumulativeAck => "not offered yet (AMQP's multiple=true ack)",
            Capability::Seek => {
                "a queue has no cursor to move; read a stream queue from an offset or time with sub --from"
            }
            Capability::Peek => "RabbitMQ counts ready and unacked messages, not each message's state",
            Capability::RequestReply => {
                "not offered yet (reply-to and correlation-id are passed through as headers)"
            }
            Capability::Retain => "RabbitMQ keeps no last message per routing key",
            Capability::Partitions => "a queue is one ordered log; super streams are not supported",
            Capability::Replay => "only stream queues keep history: `topic create NAME` makes one",
            _ => "",
        }
    }

    fn publish_options(&self) -> &'static [PublishOption] {
        &[PublishOption::Priority, PublishOption::Ttl]
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        let mut receipts = self.publish_all(std::slice::from_ref(&msg)).await?;
        receipts.pop().ok_or_else(|| BrokerError::Protocol("RabbitMQ confirmed nothing".into()))
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        self.publish_all(&msgs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        self.subscribe_any(req).await
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        self.check_settle(&how)?;
        let Some(key) = &token.reply else { return Err(self.unsupported(Capability::DetachedSettle)) };
        let channel = self.consumers.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned();
        let Some(channel) = channel.filter(|c| c.status().connected()) else {
            return Err(BrokerError::Invalid(
                "the channel that received this message has closed; RabbitMQ delivers it again".into(),
            ));
        };
        let tag = token.lease;
        let done = match how {
            Settle::Ack => channel.basic_ack(tag, BasicAckOptions::default()).await,
            // RabbitMQ requeues either way; quorum queues count a requeue by nack as no failure.
            Settle::Nack(_) | Settle::Release => {
                channel
                    .basic_nack(tag, BasicNackOptions { requeue: true, ..BasicNackOptions::default() })
                    .await
            }
            Settle::Term(_) => channel.basic_reject(tag, BasicRejectOptions { requeue: false }).await,
            Settle::Extend(_) => return Err(self.unsupported(Capability::Extend)),
        };
        done.map_err(|e| error(&self.target.shown, &e))
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.list_streams().await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        self.stream_info(name).await
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        super::engine_only_topic_settings(&config, "RabbitMQ", super::Honours::default())?;
        self.create_stream(config).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.delete_queue(name, "topic").await
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.purge_queue(name).await
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.list_queues(topic).await
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        self.queue_info(name).await
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        super::no_attribute_filter(&config, "RabbitMQ")?;
        super::engine_only_subscription_settings(&config, "RabbitMQ", super::Honours::default())?;
        self.create_queue(&config).await?;
        self.queue_info(&config.name).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.delete_queue(name, "subscription").await
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let from = self.one_partition(topic, from)?;
        self.read_stream(topic, from, max).await
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    async fn close(&self) {
        let conn = self.conn.lock().await.clone();
        let _ = conn.close(200, "OK".into()).await;
    }
}
