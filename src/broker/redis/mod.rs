//! The Redis backend: PUB/SUB for live traffic (SUBSCRIBE, PSUBSCRIBE, PUBLISH) and Streams for
//! everything with history (XADD, XRANGE, consumer groups with XREADGROUP / XACK, lag from XINFO).
//!
//! How a name maps: a topic is a stream when a stream key of that name exists (or the URL says
//! `?mode=streams`), a PUB/SUB channel otherwise (or `?mode=pubsub`). A stream entry stores the payload
//! in the field `payload`, the key in `key`, and each header in `h:NAME`. An entry id `MS-N` becomes seq
//! `MS × 1000 + N` (ordered, not dense), and the id itself travels in the header `redis-id`.

//!
//! The files: `url.rs` (the URL's options), `keys.rs` (names, ids and replies), `publish.rs` (XADD and
//! PUBLISH), `live.rs` (PUB/SUB listeners), `durable.rs` (consumer groups, stream reads, settling),
//! `read.rs` (the stream readers' connections), `admin.rs` (topics, subscriptions, info, browse, seek).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::url::{BrokerUrl, redact};
use super::{
    AckToken, Broker, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream, Settle,
    SubscribeRequest,
};
use crate::model::{
    BrowseFrom, Message, Name, PublishReceipt, PublishRequest, SeekTarget, StartPosition, SubscriptionConfig,
    SubscriptionInfo, TopicConfig, TopicInfo,
};

mod admin;
mod durable;
mod keys;
mod live;
mod publish;
mod read;
mod url;

pub use keys::redis_glob;
use url::UrlOptions;

/// Which Redis structure topics map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A stream if the key is one, else a channel.
    Auto,
    /// Always channels.
    PubSub,
    /// Always streams.
    Streams,
}

/// A Redis server.
pub struct RedisBroker {
    url: String,
    client: redis::Client,
    /// Commands; reconnects by itself after Redis restarts.
    conn: redis::aio::ConnectionManager,
    mode: Mode,
    /// `?ack_deadline=`: how long an entry may stay pending before another consumer claims it.
    ack_deadline: Duration,
    /// `?maxlen=`: streams are trimmed to about this many entries on every XADD.
    maxlen: Option<u64>,
    events: broadcast::Sender<ConnectionEvent>,
    next_id: AtomicU64,
    /// Consumers this client named itself (`pubsub-PID-N`) as (stream, group, consumer): `close`
    /// deletes the ones left with nothing pending, so groups do not collect them forever.
    made_consumers: std::sync::Mutex<Vec<(String, String, String)>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("url", &self.url).finish()
    }
}

fn error(url: &str, e: redis::RedisError) -> BrokerError {
    // Classified by the client's error kinds and Redis's error codes, not by the wording.
    let text = e.to_string();
    let refused_login = e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() {
        BrokerError::Unreachable { url: url.to_string(), reason: text }
    } else if refused_login {
        BrokerError::Auth { url: url.to_string(), reason: text }
    } else {
        BrokerError::Protocol(text)
    }
}

impl RedisBroker {
    /// Connects to `redis://[user:pass@]host[:port][/db][?OPTIONS]`, or `rediss://…[#insecure]` over
    /// TLS (`#insecure` skips certificate checks, for self-signed test servers).
    pub async fn connect(url: &str) -> Result<RedisBroker, BrokerError> {
        // The fragment belongs to the redis crate's URL; the query holds our options.
        let (rest, fragment) = url.split_once('#').map_or((url, None), |(r, f)| (r, Some(f)));
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let options = UrlOptions::parse(&BrokerUrl::parse(url)?)?;
        let shown = redact(base);
        let target = match fragment {
            Some(f) => format!("{base}#{f}"),
            None => base.to_string(),
        };
        let client = redis::Client::open(target.as_str())
            .map_err(|e| BrokerError::InvalidUrl { url: shown.clone(), reason: e.to_string() })?;
        // A plain connection first: it reports refusals and bad credentials at once, where the
        // self-healing connection manager would keep retrying.
        let probe = client.get_multiplexed_async_connection();
        tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .map_err(|_| BrokerError::Unreachable {
                url: shown.clone(),
                reason: "no answer within 5 s".into(),
            })?
            .map_err(|e| match error(&shown, e) {
                // Something answered, but not in Redis's protocol (another service on that port).
                BrokerError::Protocol(reason) => BrokerError::Unreachable {
                    url: shown.clone(),
                    reason: format!(
                        "the server there does not speak Redis's protocol ({})",
                        reason.lines().next().unwrap_or_default().trim()
                    ),
                },
                other => other,
            })?;
        let managing = client.get_connection_manager();
        let conn = tokio::time::timeout(Duration::from_secs(5), managing)
            .await
            .map_err(|_| BrokerError::Unreachable {
                url: shown.clone(),
                reason: "no answer within 5 s".into(),
            })?
            .map_err(|e| error(&shown, e))?;
        let (events, _) = broadcast::channel(16);
        Ok(RedisBroker {
            // The options stay in the URL shown (reports tell `?mode=pubsub` from streams by it).
            url: if query.is_empty() { shown } else { format!("{shown}?{query}") },
            client,
            conn,
            mode: options.mode,
            ack_deadline: options.ack_deadline,
            maxlen: options.maxlen,
            events,
            next_id: AtomicU64::new(1),
            made_consumers: std::sync::Mutex::new(Vec::new()),
        })
    }

    async fn is_stream(&self, key: &str) -> Result<bool, BrokerError> {
        match self.mode {
            Mode::Streams => Ok(true),
            Mode::PubSub => Ok(false),
            Mode::Auto => Ok(self.key_type(key).await? == "stream"),
        }
    }

    /// What Redis holds at `key` (`TYPE`): "none", "stream", "string", …
    async fn key_type(&self, key: &str) -> Result<String, BrokerError> {
        redis::cmd("TYPE").arg(key).query_async(&mut self.conn.clone()).await.map_err(|e| error(&self.url, e))
    }
}

/// What a channel (PUB/SUB) offers: live messages on patterns, nothing kept.
const CHANNEL_CAPS: Capabilities = Capabilities::of(&[Capability::Patterns]);

/// What a stream offers.
const STREAM_CAPS: &[Capability] = &[
    Capability::Ack,
    Capability::Term,
    Capability::AckDeadline,
    Capability::DetachedSettle,
    Capability::Replay,
    Capability::Lag,
    Capability::Headers,
    Capability::Persistence,
    Capability::CompetingConsumers,
    Capability::Seek,
    Capability::TopicAdmin,
];

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // Streams give history, acks, lag, competing consumers and seek; PUB/SUB gives live patterns.
        // No dead-letter topics, no per-message ack-state inspection, no partitions.
        if self.mode == Mode::PubSub {
            return CHANNEL_CAPS;
        }
        CHANNEL_CAPS.with(STREAM_CAPS)
    }

    async fn topic_capabilities(&self, topic: &Name) -> Result<Capabilities, BrokerError> {
        if self.mode != Mode::PubSub && self.is_stream(topic.as_str()).await? {
            Ok(Capabilities::of(STREAM_CAPS))
        } else {
            Ok(CHANNEL_CAPS)
        }
    }

    fn why_not(&self, capability: Capability) -> &'static str {
        match capability {
            Capability::Nack | Capability::NackDelay | Capability::Extend => {
                "Redis Streams have no nack or lease extension: an unacked entry stays pending and is claimed again after the ack deadline"
            }
            Capability::CompetingConsumers | Capability::TopicAdmin if self.mode == Mode::PubSub => {
                "with mode=pubsub there are only channels, and consumer groups and topics need streams"
            }
            Capability::DeadLetter => "Redis Streams have no dead-letter streams",
            Capability::Peek => "Redis shows pending entries, not the state of every message",
            _ => "",
        }
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        let mut receipts = self.publish_batch(vec![msg]).await?;
        receipts.pop().ok_or_else(|| BrokerError::Protocol("Redis answered no reply to a publish".into()))
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        self.publish_retrying(&msgs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        if req.subscription.is_some() && self.mode == Mode::PubSub {
            // As for `create_subscription`: a group reads a stream, which `mode=pubsub` never writes.
            return Err(self.unsupported(Capability::CompetingConsumers));
        }
        if req.subscription.is_some() || req.from.is_some() {
            let topic = super::history_topic(&req)?;
            return self.read_stream(topic, req).await;
        }
        // A live read of one stream (what `?mode=streams` says every key is, or a key that is one) is
        // XREAD BLOCK from `$`: SUBSCRIBE would listen on a channel nobody publishes to.
        if let Ok(topic) = super::history_topic(&req)
            && self.is_stream(topic.as_str()).await?
        {
            let live = SubscribeRequest { from: Some(StartPosition::New), ..req };
            return self.read_stream(topic, live).await;
        }
        self.subscribe_live(req).await
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        self.check_settle(&how)?;
        self.settle_entry(token, how).await
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.list_topics().await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        self.stream_info(name).await
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        super::engine_only_topic_settings(&config, "Redis", super::Honours::default())?;
        self.create_stream(config).await
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.purge_stream(name).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.delete_key(name).await
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.list_groups(topic).await
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        self.group_info(name).await
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        super::no_attribute_filter(&config, "Redis")?;
        super::engine_only_subscription_settings(&config, "Redis", super::Honours::default())?;
        self.create_group(config).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.destroy_group(name).await
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let from = self.one_partition(topic, from)?;
        self.browse_stream(topic, from, max).await
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        self.seek_group(subscription, target).await
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    async fn close(&self) {
        self.forget_consumers().await;
    }
}
