//! JetStream consumers read: ephemeral readers and durable pull consumers as delivery streams (pulled on
//! demand, unread messages given back), one-off fetches, and acks, naks and terms.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::Subscriber;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::admin::{consumer_config, deliver_policy};
use super::info::{advisory_text, timestamp, to_message};
use super::{NatsBroker, js_error};
use crate::broker::{
    AckToken, BrokerDelivery, BrokerError, ConnectionEvent, DeliveryStream, ItemSource, Settle, StreamItem,
    SubscribeRequest,
};
use crate::model::{AckMode, Clock, FetchOptions, Name, StartPosition, SubscriptionConfig, SystemClock};

impl NatsBroker {
    /// A new ephemeral consumer that reads `stream` from `start` without acks.
    pub(super) async fn reader(
        &self,
        stream: &stream::Stream,
        filter: Option<String>,
        start: StartPosition,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BrokerError> {
        let config = pull::Config {
            deliver_policy: deliver_policy(start)?,
            ack_policy: jetstream::consumer::AckPolicy::None,
            filter_subject: filter.unwrap_or_default(),
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        };
        stream.create_consumer(config).await.map_err(|e| js_error("creating a reader", e))
    }

    /// A JetStream pull consumer as a delivery stream: the durable `name` (created when missing) or an
    /// ephemeral reader.
    pub(super) async fn consume(
        &self,
        topic: &Name,
        durable: Option<&Name>,
        req: &SubscribeRequest,
    ) -> Result<DeliveryStream, BrokerError> {
        let (stream, filter) = self.resolve(topic).await?;
        let stream_name = stream.cached_info().config.name.clone();
        let consumer = match durable {
            Some(name) => match stream.get_consumer::<pull::Config>(name.as_str()).await {
                Ok(c) => {
                    let has = &c.cached_info().config.filter_subject;
                    if let Some(wanted) = &filter
                        && has != wanted
                    {
                        return Err(BrokerError::Invalid(format!(
                            "subscription \"{name}\" reads {} of stream {stream_name}, not \"{wanted}\"; subscribe to that, or use another name",
                            if has.is_empty() { "everything".to_string() } else { format!("\"{has}\"") }
                        )));
                    }
                    c
                }
                Err(_) => {
                    let mut config = SubscriptionConfig::new(name.clone(), topic.clone());
                    config.start = req.from.unwrap_or_default();
                    config.ack = req.ack;
                    config.ack_deadline = self.ack_wait;
                    // The reader's prefetch sizes its pulls, not the consumer's lasting limits.
                    let pull = consumer_config(&config, filter.clone())?;
                    stream.create_consumer(pull).await.map_err(|e| js_error("creating the consumer", e))?
                }
            },
            None => self.reader(&stream, filter.clone(), req.from.unwrap_or_default()).await?,
        };
        let info = consumer.cached_info().clone();
        let ack_wait = info.config.ack_wait;
        // Tokens only where the consumer expects acks (an ack to an ack-none consumer gets no answer).
        let acked = durable.is_some()
            && req.ack != AckMode::None
            && info.config.ack_policy != jetstream::consumer::AckPolicy::None;
        let batch = req.prefetch.unwrap_or(100).clamp(1, 1000) as usize;
        let (tx, rx) = mpsc::channel::<Result<StreamItem, BrokerError>>(batch);
        // Messages that reach max deliver (or are terminated) stay in the stream; say so.
        let mut advisories = Vec::new();
        if let Some(name) = durable {
            for kind in ["MAX_DELIVERIES", "MSG_TERMINATED"] {
                let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream_name}.{name}");
                if let Ok(sub) = self.client.subscribe(subject).await {
                    advisories.push(sub);
                }
            }
        }
        let demand = Arc::new(tokio::sync::Notify::new());
        let pump = JetStreamPump {
            topic: Name::new(&stream_name).unwrap_or_else(|_| topic.clone()),
            subscription: durable.cloned(),
            acked,
            ack_wait,
            batch,
            limit: req.limit,
            events: self.events.clone(),
        };
        let task = tokio::spawn(pump.run(consumer, advisories, tx, demand.clone()));
        let source = PullSource {
            rx,
            task: task.abort_handle(),
            demand,
            client: self.client.clone(),
            cleanup: self.cleanup.clone(),
        };
        Ok(DeliveryStream::new(Box::new(source)))
    }

    /// The body of [`Broker::fetch`](crate::broker::Broker::fetch): one pull from the consumer, tokens
    /// where it expects acks.
    pub(super) async fn fetch_consumer(
        &self,
        subscription: &Name,
        opts: FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        let stream = self.stream_of_consumer(subscription).await?;
        let topic = Name::system(&stream.cached_info().config.name)?;
        let consumer: jetstream::consumer::Consumer<pull::Config> =
            stream.get_consumer(subscription.as_str()).await.map_err(|e| js_error("consumer", e))?;
        let ack_wait = consumer.cached_info().config.ack_wait;
        let acked = consumer.cached_info().config.ack_policy != jetstream::consumer::AckPolicy::None;
        let mut fetch = consumer.fetch().max_messages(opts.max_msgs.max(1));
        if let Some(wait) = opts.wait {
            fetch = fetch.expires(wait.max(Duration::from_millis(10)));
        }
        if opts.max_bytes != u64::MAX {
            fetch = fetch.max_bytes(usize::try_from(opts.max_bytes).unwrap_or(usize::MAX));
        }
        let mut batch = fetch.messages().await.map_err(|e| js_error("fetch", e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| js_error("fetch", e))?;
            let Ok(info) = m.info() else { continue };
            let (seq, attempt, lease) = (info.stream_sequence, info.delivered, info.consumer_sequence);
            let published = timestamp(info.published);
            let Some(message) = to_message(
                Some(&topic),
                m.subject.as_str(),
                m.headers.as_ref(),
                m.payload.clone(),
                seq,
                published,
            ) else {
                continue;
            };
            let token = acked.then(|| AckToken {
                subscription: subscription.clone(),
                partition: 0,
                seq,
                lease,
                reply: m.reply.as_ref().map(|r| r.to_string()),
            });
            out.push(BrokerDelivery {
                attempt: Some(u32::try_from(attempt).unwrap_or(1).max(1)),
                deadline: token.as_ref().map(|_| SystemClock.now().plus(ack_wait)),
                token,
                message,
            });
        }
        Ok(out)
    }

    /// The body of [`Broker::settle`](crate::broker::Broker::settle): an ack, nak, progress or term to
    /// the message's reply subject.
    pub(super) async fn settle_reply(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        let reply = match token.reply.clone() {
            Some(reply) => reply,
            // Settled from another process (`pubsub ack SUB SEQ LEASE`): the ack subject is made from the
            // stream, the consumer, the stream sequence and the consumer sequence (the lease printed by
            // `sub --ack manual`); the server reads nothing else from it.
            None => {
                let stream = self.stream_of_consumer(&token.subscription).await?;
                let name = &stream.cached_info().config.name;
                format!("$JS.ACK.{name}.{}.1.{}.{}.0.0", token.subscription, token.seq, token.lease)
            }
        };
        let payload = match &how {
            Settle::Ack => Bytes::from_static(b"+ACK"),
            // JetStream has already counted the delivery; a nak at least sends it again at once.
            Settle::Nack(None) | Settle::Release => Bytes::from_static(b"-NAK"),
            Settle::Nack(Some(delay)) => {
                Bytes::from(format!("-NAK {{\"delay\": {}}}", delay.as_nanos().min(i64::MAX as u128)))
            }
            Settle::Extend(_) => Bytes::from_static(b"+WPI"),
            Settle::Term(reason) if reason.is_empty() => Bytes::from_static(b"+TERM"),
            Settle::Term(reason) => Bytes::from(format!("+TERM {reason}")),
        };
        match how {
            // Acks and terms wait for the server's confirmation (a "double ack"), so a returned ack
            // means the message will not come back.
            Settle::Ack | Settle::Term(_) => {
                let asked = self.client.request(reply, payload);
                match tokio::time::timeout(Duration::from_secs(5), asked).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(BrokerError::Protocol(format!("ack: {e}"))),
                    Err(_) => Err(BrokerError::Timeout(Duration::from_secs(5))),
                }
            }
            _ => {
                self.client
                    .publish(reply, payload)
                    .await
                    .map_err(|e| BrokerError::Protocol(format!("settle: {e}")))?;
                self.flush().await
            }
        }
    }
}

/// Pulls a JetStream consumer's messages on demand and turns its advisories into events.
///
/// A batch is pulled only when the reader has taken everything pulled before (it asks through
/// `demand`), so a reader that stops after N messages leaves nothing more in flight than it asked for:
/// `sub -s NAME --count N` takes N.
struct JetStreamPump {
    topic: Name,
    subscription: Option<Name>,
    acked: bool,
    ack_wait: Duration,
    batch: usize,
    /// The most messages pulled in all (`sub --count N`); no cap when `None`.
    limit: Option<u64>,
    events: broadcast::Sender<ConnectionEvent>,
}

/// How long one pull request waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

impl JetStreamPump {
    async fn run(
        self,
        consumer: jetstream::consumer::Consumer<pull::Config>,
        advisories: Vec<Subscriber>,
        tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
        demand: Arc<tokio::sync::Notify>,
    ) {
        let mut advisories = futures_util::stream::select_all(advisories);
        let mut failing = false;
        let mut pull_now = false;
        let mut left = self.limit.unwrap_or(u64::MAX);
        loop {
            if left == 0 {
                // Everything asked for was pulled: the stream ends once the reader has it.
                return;
            }
            if !pull_now {
                tokio::select! {
                    () = demand.notified() => {}
                    () = tx.closed() => return,
                    Some(a) = advisories.next() => {
                        let _ = self.events.send(ConnectionEvent::Advisory { text: advisory_text(&a.payload) });
                        continue;
                    }
                }
            }
            let size = self.batch.min(usize::try_from(left).unwrap_or(usize::MAX));
            let pulled = consumer.batch().max_messages(size).expires(PULL_EXPIRES).messages().await;
            let mut messages = match pulled {
                Ok(m) => m,
                Err(e) => {
                    // The server is away (restarting, say): try again until it is back.
                    self.failing(&mut failing, &e.to_string());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    pull_now = true;
                    continue;
                }
            };
            let mut forwarded = 0usize;
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    Some(a) = advisories.next() => {
                        let _ = self.events.send(ConnectionEvent::Advisory { text: advisory_text(&a.payload) });
                        continue;
                    }
                };
                let m = match next {
                    None => break,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("deleted") {
                            let _ = tx
                                .send(Err(BrokerError::Invalid(format!("JetStream consumer: {text}"))))
                                .await;
                            return;
                        }
                        self.failing(&mut failing, &text);
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                if std::mem::take(&mut failing) {
                    let _ = self.events.send(ConnectionEvent::Reconnected);
                }
                let Some(d) = self.delivery(&m) else { continue };
                if tx.send(Ok(StreamItem::Delivery(d))).await.is_err() {
                    return;
                }
                forwarded += 1;
                left = left.saturating_sub(1);
            }
            // A pull that brought nothing leaves the reader still waiting: pull again without being asked.
            pull_now = forwarded == 0;
            if pull_now && failing {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    fn failing(&self, failing: &mut bool, reason: &str) {
        if !std::mem::replace(failing, true) {
            let _ = self
                .events
                .send(ConnectionEvent::Disconnected { reason: format!("JetStream pull: {reason}") });
        }
    }

    fn delivery(&self, m: &jetstream::Message) -> Option<BrokerDelivery> {
        let info = m.info().ok()?;
        let (seq, attempt, consumer_seq) = (info.stream_sequence, info.delivered, info.consumer_sequence);
        let published = timestamp(info.published);
        let message = to_message(
            Some(&self.topic),
            m.subject.as_str(),
            m.headers.as_ref(),
            m.payload.clone(),
            seq,
            published,
        )?;
        let token = match (&self.subscription, self.acked) {
            (Some(sub), true) => Some(AckToken {
                subscription: sub.clone(),
                partition: 0,
                seq,
                lease: consumer_seq,
                reply: m.reply.as_ref().map(|r| r.to_string()),
            }),
            _ => None,
        };
        Some(BrokerDelivery {
            attempt: Some(u32::try_from(attempt).unwrap_or(1).max(1)),
            deadline: token.as_ref().map(|_| SystemClock.now().plus(self.ack_wait)),
            token,
            message,
        })
    }
}

/// The reader's side of a [`JetStreamPump`]: asks for a pull when it has run dry, and gives back (naks)
/// what it was handed but never read when it is dropped.
struct PullSource {
    rx: mpsc::Receiver<Result<StreamItem, BrokerError>>,
    task: tokio::task::AbortHandle,
    demand: Arc<tokio::sync::Notify>,
    client: async_nats::Client,
    cleanup: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

#[async_trait]
impl ItemSource for PullSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        if let Ok(item) = self.rx.try_recv() {
            return Some(item);
        }
        self.demand.notify_one();
        self.rx.recv().await
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.try_recv().ok()
    }
}

impl Drop for PullSource {
    fn drop(&mut self) {
        self.task.abort();
        let mut unread = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(StreamItem::Delivery(BrokerDelivery {
                token: Some(AckToken { reply: Some(r), .. }),
                ..
            })) = item
            {
                unread.push(r);
            }
        }
        if unread.is_empty() {
            return;
        }
        // Naked so that they are delivered again at once rather than after the ack wait; `close` waits
        // for this before the process exits.
        let client = self.client.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let handle = runtime.spawn(async move {
            for reply in unread {
                let _ = client.publish(reply, Bytes::from_static(b"-NAK")).await;
            }
            let _ = client.flush().await;
        });
        self.cleanup.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
    }
}
