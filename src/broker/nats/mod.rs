//! The NATS backend (on `async-nats`): core subjects for live traffic and queue groups, JetStream for
//! everything with history (streams are topics, consumers are subscriptions).
//!
//! How names map:
//! - A publish goes through JetStream when a stream captures its subject (so the receipt carries the
//!   stream and its sequence), through core NATS otherwise; `?mode=core` or `?mode=jetstream` in the URL
//!   forces one way. Which stream captures a subject is asked once and remembered for a few seconds.
//! - A live subscription is a core subscription; `*` and `>` are NATS's own wildcards, `#` alone means
//!   every subject (`>`), `a.#` means `a` and `a.>`; other `#` uses, MQTT level filters and `glob:` are
//!   refused with the NATS form to use.
//! - `sub -s NAME SUBJECT` joins the JetStream durable consumer NAME when a stream captures SUBJECT
//!   (created when missing, acked explicitly), and the core queue group NAME otherwise (at-most-once).
//! - A topic name is a stream name; where a name is not a stream's, the stream that captures it as a
//!   subject is used with that subject as the filter.
//! - Headers are NATS headers both ways; a message key travels in the header `pubsub-key`, a msg_id in
//!   `Nats-Msg-Id` (JetStream's own de-duplication).
//!
//! JetStream has no dead-letter topics (a message that reaches max deliver stays in the stream and an
//! advisory is published, which subscribers here report) and no per-message ack state to inspect.
//!
//! Rooms: this file holds the broker, its connection and the `Broker` impl, whose longer methods are
//! bodies in `publish` (core and JetStream publishing, request/reply), `live` (core subscriptions),
//! `durable` (pull consumers, fetch, settle) and `admin` (streams as topics, consumers as
//! subscriptions, browse, seek); `url` parses the URL, `subjects` maps patterns and finds streams,
//! `info` turns NATS answers into the model's messages and infos.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream,
    Settle, SubscribeRequest,
};
use crate::model::{
    BrowseFrom, Headers, Message, Name, PublishReceipt, PublishRequest, SeekTarget, SubscriptionConfig,
    SubscriptionInfo, TopicConfig, TopicInfo,
};

mod admin;
mod durable;
mod info;
mod live;
mod publish;
mod subjects;
mod url;

pub use subjects::nats_subjects;
use url::{Mode, UrlAuth, parse_url};

/// Header that carries a message's key (NATS has no keys of its own).
pub const KEY_HEADER: &str = "pubsub-key";

/// JetStream's de-duplication header.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// A NATS server, with JetStream where the server has it.
pub struct NatsBroker {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    mode: Mode,
    ack_wait: Duration,
    pending: usize,
    /// Whether the server answers JetStream requests; `false` turns every JetStream feature off.
    jetstream: AtomicBool,
    /// Subject → capturing stream (or none), with when it was asked.
    routes: Mutex<HashMap<String, (Option<String>, Instant)>>,
    events: broadcast::Sender<ConnectionEvent>,
    /// Messages dropped for slow subscribers, by the client library or by a stream here.
    dropped: Arc<AtomicU64>,
    /// Naks of messages a dropped stream held unread; `close` waits for them.
    cleanup: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker").field("url", &self.url).finish()
    }
}

fn connect_error(url: &str, e: &async_nats::ConnectError) -> BrokerError {
    use async_nats::ConnectErrorKind as K;
    let reason = e.to_string();
    match e.kind() {
        K::Authentication | K::AuthorizationViolation => BrokerError::Auth { url: url.into(), reason },
        K::ServerParse => BrokerError::InvalidUrl { url: url.into(), reason },
        _ => BrokerError::Unreachable { url: url.into(), reason },
    }
}

/// Any JetStream API error, with "not found" answers made plain.
fn js_error(what: &str, e: impl std::fmt::Display) -> BrokerError {
    let text = e.to_string();
    if text.contains("not enabled") || text.contains("no responders") {
        BrokerError::Invalid(format!(
            "{what}: JetStream is not available on this NATS server (start nats-server with -js)"
        ))
    } else if text.contains("not found") {
        BrokerError::Invalid(format!("{what}: {text}"))
    } else if text.contains("timed out") {
        BrokerError::Timeout(Duration::from_secs(5))
    } else {
        BrokerError::Protocol(format!("{what}: {text}"))
    }
}

impl NatsBroker {
    /// Connects to `nats://[user:pass@|token@]host[:port][,host:port…][?OPTIONS]` or `tls://…`.
    ///
    /// Options: `mode=auto|core|jetstream`, `creds=FILE`, `ca=FILE`, `tls=true`, `ack_wait=30s`,
    /// `pending=65536`, `name=pubsub`.
    pub async fn connect(url: &str) -> Result<NatsBroker, BrokerError> {
        let target = parse_url(url)?;
        let shown = target.shown.clone();
        let o = &target.options;
        let mut opts = match &o.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await.map_err(|e| {
                BrokerError::InvalidUrl {
                    url: shown.clone(),
                    reason: format!("cannot read the creds file {}: {e}", path.display()),
                }
            })?,
            None => async_nats::ConnectOptions::new(),
        };
        opts = match &target.auth {
            UrlAuth::None => opts,
            UrlAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
            UrlAuth::Token(t) => opts.token(t.clone()),
        };
        if let Some(ca) = &o.ca {
            if !ca.is_file() {
                return Err(BrokerError::InvalidUrl {
                    url: shown,
                    reason: format!("ca file {} does not exist", ca.display()),
                });
            }
            opts = opts.add_root_certificates(ca.clone());
        }
        if o.tls {
            opts = opts.require_tls(true);
        }
        let (events, _) = broadcast::channel(64);
        let dropped = Arc::new(AtomicU64::new(0));
        let callback_events = events.clone();
        let callback_dropped = dropped.clone();
        let seen_connect = Arc::new(AtomicBool::new(false));
        opts = opts
            .name(&o.name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            // Live subscribers here drain the client's queue at once into their own, which counts what
            // it drops; the client's queue only needs to absorb bursts.
            .subscription_capacity(o.pending.max(1024))
            .event_callback(move |event| {
                let events = callback_events.clone();
                let dropped = callback_dropped.clone();
                let seen = seen_connect.clone();
                async move {
                    let mapped = match event {
                        async_nats::Event::Connected => Some(if seen.swap(true, Ordering::Relaxed) {
                            ConnectionEvent::Reconnected
                        } else {
                            ConnectionEvent::Connected
                        }),
                        async_nats::Event::Disconnected => Some(ConnectionEvent::Disconnected {
                            reason: "the connection to the NATS server dropped; reconnecting".into(),
                        }),
                        async_nats::Event::SlowConsumer(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            Some(ConnectionEvent::SlowConsumer { dropped: 1 })
                        }
                        async_nats::Event::LameDuckMode => Some(ConnectionEvent::Advisory {
                            text: "the NATS server is shutting down (lame duck mode)".into(),
                        }),
                        async_nats::Event::ServerError(e) => {
                            Some(ConnectionEvent::Advisory { text: format!("NATS server error: {e}") })
                        }
                        async_nats::Event::ClientError(e) => {
                            Some(ConnectionEvent::Advisory { text: format!("NATS client error: {e}") })
                        }
                        async_nats::Event::Draining | async_nats::Event::Closed => None,
                    };
                    if let Some(event) = mapped {
                        let _ = events.send(event);
                    }
                }
            });
        let client = opts.connect(target.servers.clone()).await.map_err(|e| connect_error(&shown, &e))?;
        let js = jetstream::new(client.clone());
        let broker = NatsBroker {
            url: shown,
            client,
            js,
            mode: o.mode,
            ack_wait: o.ack_wait,
            pending: o.pending,
            jetstream: AtomicBool::new(true),
            routes: Mutex::new(HashMap::new()),
            events,
            dropped,
            cleanup: Arc::default(),
        };
        // One cheap request tells whether JetStream is there; everything JetStream is off if not. (The
        // raw reply is read here: the client's typed account info does not parse older servers' replies.)
        if !broker.probe_jetstream().await {
            broker.jetstream.store(false, Ordering::Relaxed);
            if broker.mode == Mode::JetStream {
                return Err(BrokerError::Invalid(format!(
                    "{} has no JetStream (start nats-server with -js), but the URL asks for mode=jetstream",
                    broker.url
                )));
            }
        }
        Ok(broker)
    }

    /// Whether the server answers the JetStream API with something other than an error.
    async fn probe_jetstream(&self) -> bool {
        let asked = self.client.request("$JS.API.INFO", Bytes::new());
        match tokio::time::timeout(Duration::from_secs(2), asked).await {
            Ok(Ok(reply)) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .is_ok_and(|v| v.get("error").is_none()),
            _ => false,
        }
    }

    /// The underlying client, for benchmarks that compare against it.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// How many messages were dropped for slow subscribers since connecting.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether JetStream features are on: the server has JetStream and the URL does not say mode=core.
    fn has_jetstream(&self) -> bool {
        self.mode != Mode::Core && self.jetstream.load(Ordering::Relaxed)
    }

    fn need_jetstream(&self, what: &str) -> Result<(), BrokerError> {
        if self.has_jetstream() {
            Ok(())
        } else {
            Err(BrokerError::Invalid(format!(
                "{what} needs JetStream, which {} does not have (start nats-server with -js)",
                self.url
            )))
        }
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        self.client
            .flush()
            .await
            .map_err(|e| BrokerError::Disconnected { url: self.url.clone(), reason: format!("flush: {e}") })
    }
}

/// What core NATS offers on every subject.
const CORE_CAPS: Capabilities = Capabilities::of(&[
    Capability::Patterns,
    Capability::Headers,
    Capability::CompetingConsumers,
    Capability::RequestReply,
]);

/// What a JetStream stream adds for the subjects it captures.
const JETSTREAM_CAPS: &[Capability] = &[
    Capability::Ack,
    Capability::Nack,
    Capability::NackDelay,
    Capability::Extend,
    Capability::Term,
    Capability::AckDeadline,
    Capability::DetachedSettle,
    Capability::Replay,
    Capability::Lag,
    Capability::Persistence,
    Capability::Seek,
    Capability::TopicAdmin,
];

/// JetStream has interest and work-queue retention, messages per subject and last per subject of its
/// own; the engine's other retention settings it cannot honour.
const HONOURS: super::Honours = super::Honours { retention: true, per_key: true, last_per_key: true };

// Methods longer than a few lines delegate to `pub(super)` methods in the rooms named above.

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // Core NATS: wildcards, headers, queue groups. JetStream adds history, acks, lag, seek and
        // stream administration. No dead-letter topics, no per-message ack state, no partitions.
        if self.has_jetstream() { CORE_CAPS.with(JETSTREAM_CAPS) } else { CORE_CAPS }
    }

    async fn topic_capabilities(&self, topic: &Name) -> Result<Capabilities, BrokerError> {
        if self.has_jetstream() && self.stream_for_subject(topic.as_str()).await?.is_some() {
            Ok(CORE_CAPS.with(JETSTREAM_CAPS))
        } else {
            Ok(CORE_CAPS)
        }
    }

    fn why_not(&self, capability: Capability) -> &'static str {
        match capability {
            Capability::Ack
            | Capability::Nack
            | Capability::NackDelay
            | Capability::Extend
            | Capability::Term
            | Capability::DetachedSettle
            | Capability::Replay
            | Capability::Lag
            | Capability::Seek
            | Capability::Persistence
            | Capability::TopicAdmin => {
                "core NATS keeps nothing; these need JetStream (a stream capturing the subject)"
            }
            Capability::DeadLetter => "JetStream has no dead-letter streams, only max-delivery advisories",
            Capability::Peek => "JetStream shows a consumer's pending counts, not each message's state",
            Capability::Retain => "NATS keeps no last message per subject outside a stream",
            _ => "",
        }
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        let mut receipts = self.publish_batch(vec![msg]).await?;
        receipts.pop().ok_or_else(|| BrokerError::Protocol("no receipt for a publish".into()))
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        self.publish_routed(msgs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        if req.from.is_some() {
            let topic = super::history_topic(&req)?;
            return self.consume(&topic, req.subscription.as_ref(), &req).await;
        }
        if let Some(group) = &req.subscription {
            // A durable subscription is a JetStream consumer where a stream captures the subject, a
            // core queue group otherwise.
            if self.has_jetstream()
                && let Ok(topic) = super::history_topic(&req)
                && (self.js.get_stream(topic.as_str()).await.is_ok()
                    || self.stream_for_subject(topic.as_str()).await?.is_some())
            {
                return self.consume(&topic, Some(group), &req).await;
            }
            return self.listen(&req.patterns, Some(group)).await;
        }
        self.listen(&req.patterns, None).await
    }

    async fn fetch(
        &self,
        subscription: &Name,
        _consumer: &str,
        opts: crate::model::FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        self.fetch_consumer(subscription, opts).await
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        self.check_settle(&how)?;
        self.settle_reply(token, how).await
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.list_streams().await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        self.stream_topic_info(name).await
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        super::engine_only_topic_settings(&config, "NATS", HONOURS)?;
        self.create_stream(config).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.delete_stream(name).await
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.purge_stream(name).await
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.list_consumers(topic).await
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        self.describe_consumer(name).await
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        super::no_attribute_filter(&config, "NATS")?;
        super::engine_only_subscription_settings(&config, "NATS", HONOURS)?;
        self.add_consumer(config).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.remove_consumer(name).await
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let from = self.one_partition(topic, from)?;
        self.browse_stream(topic, from, max).await
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        self.seek_consumer(subscription, target).await
    }

    async fn request(
        &self,
        subject: &Name,
        payload: Bytes,
        headers: Headers,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        self.request_reply(subject, payload, headers, timeout).await
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    async fn close(&self) {
        // Unread messages are given back and everything published is on the wire before the process goes.
        let pending = std::mem::take(&mut *self.cleanup.lock().unwrap_or_else(PoisonError::into_inner));
        for handle in pending {
            let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
        }
        let _ = self.client.flush().await;
    }
}
