//! The Redis backend: PUB/SUB for live traffic (SUBSCRIBE, PSUBSCRIBE, PUBLISH) and Streams for
//! everything with history (XADD, XRANGE, consumer groups with XREADGROUP / XACK, lag from XINFO).
//!
//! How a name maps: a topic is a stream when a stream key of that name exists (or the URL says
//! `?mode=streams`), a PUB/SUB channel otherwise (or `?mode=pubsub`). A stream entry stores the payload
//! in the field `payload`, the key in `key`, and each header in `h:NAME`. An entry id `MS-N` becomes seq
//! `MS × 1000 + N` (ordered, not dense), and the id itself travels in the header `redis-id`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{AsyncCommands, Value};
use tokio::sync::{broadcast, mpsc};

use super::kit::{Backoff, Forwarder, reconnect};
use super::url::{BrokerUrl, redact};
use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, Capability, ChannelSource, ConnectionEvent,
    DeliveryStream, Settle, StreamItem, SubscribeRequest,
};
use crate::model::{
    BrowseFrom, Headers, Message, MessageExtra, Name, Pattern, PublishReceipt, PublishRequest, SeekTarget,
    StartPosition, SubscriptionConfig, SubscriptionInfo, Timestamp, TopicConfig, TopicInfo,
};

mod read;

use read::{GroupRead, ReadLink};

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
}

/// The query part of a Redis URL: `mode`, `ack_deadline`, `maxlen`.
#[derive(Debug, PartialEq)]
struct UrlOptions {
    mode: Mode,
    ack_deadline: Duration,
    maxlen: Option<u64>,
}

impl UrlOptions {
    fn parse(url: &BrokerUrl) -> Result<UrlOptions, BrokerError> {
        let mut o = url.options();
        let mode = match o.choice("mode", &["streams", "pubsub"])? {
            Some("streams") => Mode::Streams,
            Some(_) => Mode::PubSub,
            None => Mode::Auto,
        };
        let options = UrlOptions {
            mode,
            ack_deadline: o.duration("ack_deadline")?.unwrap_or(DEFAULT_ACK_DEADLINE),
            maxlen: o.number("maxlen")?,
        };
        o.finish()?;
        Ok(options)
    }
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

/// seq for an entry id `MS-N`.
fn seq_of(id: &str) -> u64 {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    ms.parse::<u64>().unwrap_or(0).saturating_mul(1000).saturating_add(n.parse::<u64>().unwrap_or(0).min(999))
}

/// Entry id for a seq.
fn id_of(seq: u64) -> String {
    format!("{}-{}", seq / 1000, seq % 1000)
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

    async fn stream_keys(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("TYPE")
                .arg("stream")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| error(&self.url, e))?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The stream a consumer group belongs to (groups are per stream in Redis; names here are global).
    async fn stream_of_group(&self, group: &Name) -> Result<String, BrokerError> {
        for key in self.stream_keys().await? {
            if self.groups(&key).await?.iter().any(|g| g.name == group.as_str()) {
                return Ok(key);
            }
        }
        Err(BrokerError::Invalid(format!("no Redis stream has a consumer group named \"{group}\"")))
    }

    async fn groups(&self, key: &str) -> Result<Vec<GroupInfo>, BrokerError> {
        let value: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(parse_groups(&value))
    }
}

/// One `XINFO GROUPS` entry.
#[derive(Debug, Default)]
struct GroupInfo {
    name: String,
    consumers: u64,
    pending: u64,
    last_delivered: String,
    lag: Option<u64>,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(_) | Value::SimpleString(_) => text(v).parse().ok(),
        _ => None,
    }
}

/// Field pairs of a RESP2 array or RESP3 map.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(items) => items.chunks(2).filter_map(|c| Some((text(c.first()?), c.get(1)?))).collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// `XINFO CONSUMERS`: each consumer's name, pending count and idle time. Redis keeps no delivery or
/// ack counts per consumer, so those stay 0.
fn parse_consumers(value: &Value) -> Vec<crate::model::ConsumerInfo> {
    let Value::Array(rows) = value else { return Vec::new() };
    rows.iter()
        .map(|row| {
            let mut c = crate::model::ConsumerInfo {
                id: std::sync::Arc::from(""),
                push: false,
                prefetch: 0,
                in_flight: 0,
                attached_at: Timestamp::ZERO,
                idle: Duration::ZERO,
                delivered: 0,
                acked: 0,
            };
            for (k, v) in pairs(row) {
                match k.as_str() {
                    "name" => c.id = std::sync::Arc::from(text(v).as_str()),
                    "pending" => c.in_flight = number(v).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                    "idle" => c.idle = Duration::from_millis(number(v).unwrap_or(0)),
                    _ => {}
                }
            }
            c
        })
        .collect()
}

fn parse_groups(value: &Value) -> Vec<GroupInfo> {
    let Value::Array(groups) = value else { return Vec::new() };
    groups
        .iter()
        .map(|g| {
            let mut info = GroupInfo::default();
            for (k, v) in pairs(g) {
                match k.as_str() {
                    "name" => info.name = text(v),
                    "consumers" => info.consumers = number(v).unwrap_or(0),
                    "pending" => info.pending = number(v).unwrap_or(0),
                    "last-delivered-id" => info.last_delivered = text(v),
                    "lag" => info.lag = number(v),
                    _ => {}
                }
            }
            info
        })
        .collect()
}

/// Stream entries `[[id, [field, value, …]], …]` as messages.
fn entries(topic: &Name, value: &Value) -> Vec<(String, Message)> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let id = text(parts.first()?);
            let mut payload = Bytes::new();
            let mut key = None;
            let mut headers = Headers::new();
            for (field, v) in pairs(parts.get(1)?) {
                let bytes = match v {
                    Value::BulkString(b) => Bytes::copy_from_slice(b),
                    other => Bytes::from(text(other)),
                };
                match field.as_str() {
                    "payload" => payload = bytes,
                    "key" => key = Some(bytes),
                    f => {
                        let name = f.strip_prefix("h:").unwrap_or(f).to_string();
                        headers.insert(name, String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
            }
            headers.insert("redis-id".into(), id.clone());
            let ms: i64 = id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            let extra = MessageExtra::pack(key, None, headers);
            let message = Message::new(
                topic.clone(),
                0,
                seq_of(&id),
                Timestamp::from_micros(ms * 1000),
                topic.clone(),
                extra,
                payload,
            );
            Some((id, message))
        })
        .collect()
}

/// Translates our patterns for PSUBSCRIBE: `glob:` passes through; token patterns become globs where the
/// meaning is kept, and are refused where a Redis glob would match more than the pattern means.
pub fn redis_glob(p: &Pattern) -> Result<(bool, String), BrokerError> {
    let text = p.as_str();
    if let Some(glob) = text.strip_prefix("glob:") {
        return Ok((true, glob.to_string()));
    }
    if p.is_literal() {
        return Ok((false, text.to_string()));
    }
    if text == "#" || text == ">" {
        return Ok((true, "*".into()));
    }
    if let Some(prefix) = text.strip_suffix(".>").filter(|pre| !pre.contains(['*', '>', '#'])) {
        return Ok((true, format!("{prefix}.?*")));
    }
    if let Some(prefix) = text.strip_suffix(".#").filter(|pre| !pre.contains(['*', '>', '#'])) {
        // Zero or more tokens: the prefix itself is subscribed separately by the caller.
        return Ok((true, format!("{prefix}*")));
    }
    Err(BrokerError::Invalid(format!(
        "pattern \"{text}\" cannot be expressed in Redis: a Redis glob `*` also matches across `.`; use a trailing `.>`, or a glob: pattern such as glob:{}",
        text.replace(['>', '#'], "*")
    )))
}

/// Opens a PUB/SUB connection listening on `targets` (glob?, channel or pattern).
async fn listen(
    client: &redis::Client,
    targets: &[(bool, String)],
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    for (glob, text) in targets {
        if *glob {
            pubsub.psubscribe(text).await?;
        } else {
            pubsub.subscribe(text).await?;
        }
    }
    Ok(pubsub)
}

/// Live PUB/SUB messages.
fn xgroup_create(key: &str, group: &str, start: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE").arg(key).arg(group).arg(start).arg("MKSTREAM");
    cmd
}

fn xadd(key: &str, maxlen: Option<u64>, msg: &PublishRequest) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key);
    if let Some(n) = maxlen {
        // `~` lets Redis trim whole nodes: cheap, and the stream keeps at least `n` entries.
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg("payload").arg(msg.payload.as_ref());
    if let Some(k) = &msg.key {
        cmd.arg("key").arg(k.as_ref());
    }
    for (k, v) in &msg.headers {
        cmd.arg(format!("h:{k}")).arg(v);
    }
    cmd
}

/// What a channel (PUB/SUB) offers: live messages on patterns, nothing kept.
const CHANNEL_CAPS: Capabilities = Capabilities::of(&[Capability::Patterns]);

/// What a stream offers.
const STREAM_CAPS: &[Capability] = &[
    Capability::Ack,
    Capability::Term,
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
        // The command connection heals itself after a Redis restart, but the first command on the dead
        // socket fails; one retry hides that. (If the first attempt reached Redis before the socket died,
        // the retry publishes again: at-least-once, as any client retry.)
        match self.publish_pipeline(&msgs).await {
            Err(BrokerError::Unreachable { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.publish_pipeline(&msgs).await
            }
            other => other,
        }
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
        // Every pattern is translated (or refused) before anything is subscribed.
        let mut targets = Vec::new();
        for p in &req.patterns {
            let (glob, text) = redis_glob(p)?;
            if glob && let Some(prefix) = p.as_str().strip_suffix(".#") {
                targets.push((false, prefix.to_string()));
            }
            targets.push((glob, text));
        }
        let first = listen(&self.client, &targets).await.map_err(|e| error(&self.url, e))?;
        let (tx, rx) = mpsc::channel(req.prefetch.unwrap_or(4096).max(16) as usize);
        let (client, events) = (self.client.clone(), self.events.clone());
        let task = tokio::spawn(async move {
            // Redis pushes to a listener as fast as it publishes; a reader that falls behind loses the
            // newest messages, counted and reported as `Lagged`, never silently and never by stalling.
            let mut forward = Forwarder::new(tx, Some(events.clone()));
            let mut pubsub = first;
            loop {
                let mut messages = pubsub.into_on_message();
                loop {
                    let next = tokio::select! {
                        m = messages.next() => m,
                        alive = forward.catch_up(), if forward.owes_report() => {
                            if !alive {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(msg) = next else { break };
                    let channel = msg.get_channel_name().to_string();
                    // Channel names that are not valid names here (spaces, say) still arrive, as `$redis`.
                    let Ok(name) = Name::new(&channel).or_else(|_| Name::system("$redis.channel")) else {
                        continue;
                    };
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    let now = crate::model::Clock::now(&crate::model::SystemClock);
                    let message = Message::new(name.clone(), 0, 0, now, name, None, payload);
                    if !forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(message))).open() {
                        return;
                    }
                }
                // The connection dropped. PUB/SUB keeps nothing for absent listeners, so what was
                // published meanwhile is gone (at-most-once); listen again once Redis is back.
                let reason = "Redis closed the PUB/SUB connection".to_string();
                let again =
                    reconnect(&events, reason, || forward.is_closed(), || listen(&client, &targets)).await;
                match again {
                    Some(p) => pubsub = p,
                    None => return,
                }
            }
        });
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        self.check_settle(&how)?;
        let Some(reply) = &token.reply else { return Err(self.unsupported(Capability::DetachedSettle)) };
        let (stream, id) = reply.split_once('\u{1f}').unwrap_or((reply.as_str(), ""));
        match how {
            Settle::Ack | Settle::Term(_) => {
                let mut xack = redis::cmd("XACK");
                xack.arg(stream).arg(token.subscription.as_str()).arg(id);
                let _: u64 = self.idempotent(&xack).await?;
                Ok(())
            }
            Settle::Nack(_) => Err(self.unsupported(Capability::Nack)),
            Settle::Extend(_) => Err(self.unsupported(Capability::Extend)),
        }
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        let mut conn = self.conn.clone();
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .map_err(|e| error(&self.url, e))?;
        let mut out = Vec::new();
        for key in self.stream_keys().await? {
            let Ok(name) = Name::new(&key) else { continue };
            out.push(self.topic_info(&name).await?);
        }
        // PUBSUB NUMSUB answers channel, count, channel, count… for the active channels in one trip.
        let counts: Vec<Value> = if channels.is_empty() {
            Vec::new()
        } else {
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channels)
                .query_async(&mut conn)
                .await
                .map_err(|e| error(&self.url, e))?
        };
        for (channel, listeners) in
            channels.iter().zip(counts.iter().skip(1).step_by(2).map(Some).chain(std::iter::repeat(None)))
        {
            let Ok(name) = Name::new(channel) else { continue };
            let mut info = info_for(name, 0, 0, 0);
            // A channel's "subscriptions" are its live listeners: Redis keeps no other kind.
            info.subscriptions = listeners.and_then(number).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            out.push(info);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        let mut conn = self.conn.clone();
        // One round trip: the length and the oldest and newest entries.
        let key = name.as_str();
        let (len, first, last): (u64, Value, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(key)
            .cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| error(&self.url, e))?;
        let seq = |v: &Value| entries(name, v).first().map_or(0, |(_, m)| m.seq);
        let groups = if len > 0 { self.groups(name.as_str()).await.unwrap_or_default().len() } else { 0 };
        let mut info = info_for(name.clone(), len, seq(&first), seq(&last));
        info.subscriptions = u32::try_from(groups).unwrap_or(u32::MAX);
        Ok(info)
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        if self.mode == Mode::PubSub {
            // A channel exists while someone listens; there is nothing to create.
            return Err(self.unsupported(Capability::TopicAdmin));
        }
        if !config.subjects.is_empty() {
            return Err(BrokerError::Invalid(
                "a Redis stream captures no other subjects; create it without subjects".into(),
            ));
        }
        if config.max_msg_bytes != TopicConfig::new(config.name.clone()).max_msg_bytes {
            return Err(BrokerError::Invalid(
                "a Redis stream has no per-message size limit (Redis takes entries up to its proto-max-bulk-len)".into(),
            ));
        }
        if config.limits != crate::model::Limits::default() {
            return Err(BrokerError::Invalid(
                "a Redis stream keeps no limits of its own; trim with `?maxlen=N` in the broker URL".into(),
            ));
        }
        let key = config.name.as_str();
        match self.key_type(key).await?.as_str() {
            "none" => {}
            "stream" => return Err(BrokerError::Invalid(format!("stream \"{key}\" already exists"))),
            other => {
                return Err(BrokerError::Invalid(format!(
                    "key \"{key}\" already holds a Redis {other}, not a stream"
                )));
            }
        }
        // An empty stream: a throwaway group with MKSTREAM makes the key, then goes.
        let made: redis::RedisResult<()> = redis::pipe()
            .add_command(xgroup_create(key, "pubsub-create", "$"))
            .ignore()
            .cmd("XGROUP")
            .arg("DESTROY")
            .arg(key)
            .arg("pubsub-create")
            .ignore()
            .query_async(&mut self.conn.clone())
            .await;
        made.map_err(|e| error(&self.url, e))?;
        self.topic_info(&config.name).await
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        // XTRIM to nothing keeps the key and its consumer groups.
        redis::cmd("XTRIM")
            .arg(name.as_str())
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        let _: u64 = self.conn.clone().del(name.as_str()).await.map_err(|e| error(&self.url, e))?;
        Ok(())
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let keys = match topic {
            Some(t) => vec![t.to_string()],
            None => self.stream_keys().await?,
        };
        let mut out = Vec::new();
        for key in keys {
            let Ok(topic) = Name::new(&key) else { continue };
            for g in self.groups(&key).await? {
                let mut info = sub_info(&topic, &g);
                info.consumers = self.consumers(&key, &g.name).await?;
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        let key = self.stream_of_group(name).await?;
        let topic = Name::new(&key)?;
        let g = self.groups(&key).await?.into_iter().find(|g| g.name == name.as_str()).unwrap_or_default();
        let mut info = sub_info(&topic, &g);
        info.consumers = self.consumers(&key, name.as_str()).await?;
        Ok(info)
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        if self.mode == Mode::PubSub {
            // A consumer group needs a stream; with `mode=pubsub` publishes would never reach it.
            return Err(self.unsupported(Capability::CompetingConsumers));
        }
        let refused = if !config.filter.is_empty() {
            Some("subject filters")
        } else if config.dead_letter.is_some() || config.max_deliveries > 0 {
            Some("dead-letter topics or delivery limits")
        } else {
            None
        };
        if let Some(what) = refused {
            return Err(BrokerError::Invalid(format!(
                "Redis consumer groups have no {what}; create the subscription without them"
            )));
        }
        let key = config.topic.to_string();
        let start = self.start_after(&key, config.start).await?;
        let created: redis::RedisResult<String> =
            xgroup_create(&key, config.name.as_str(), &start).query_async(&mut self.conn.clone()).await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {
                return Err(BrokerError::Invalid(format!(
                    "subscription \"{}\" already exists on stream \"{key}\"",
                    config.name
                )));
            }
            Err(e) => return Err(error(&self.url, e)),
        }
        self.subscription_info(&config.name).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        let key = self.stream_of_group(name).await?;
        let _: u64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&key)
            .arg(name.as_str())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(())
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let mut conn = self.conn.clone();
        let value: Value = match from {
            BrowseFrom::Last(n) => {
                let v: Value = redis::cmd("XREVRANGE")
                    .arg(topic.as_str())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(n.min(max as u64))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| error(&self.url, e))?;
                let mut list = entries(topic, &v);
                list.reverse();
                return Ok(list.into_iter().map(|(_, m)| m).collect());
            }
            BrowseFrom::Seq(_) | BrowseFrom::Time(_) => {
                let start = match from {
                    BrowseFrom::Seq(s) if s > 1 => id_of(s),
                    BrowseFrom::Time(t) => format!("{}", t.as_micros().max(0) / 1000),
                    _ => "-".to_string(),
                };
                redis::cmd("XRANGE")
                    .arg(topic.as_str())
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| error(&self.url, e))?
            }
        };
        Ok(entries(topic, &value).into_iter().map(|(_, m)| m).collect())
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        let key = self.stream_of_group(subscription).await?;
        let id = match target {
            SeekTarget::Start => "0".to_string(),
            SeekTarget::End => "$".to_string(),
            SeekTarget::Seq { seq, .. } => id_of(seq.saturating_sub(1)),
            SeekTarget::Time(t) => format!("{}-0", (t.as_micros().max(0) / 1000).saturating_sub(1)),
        };
        let _: String = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&key)
            .arg(subscription.as_str())
            .arg(&id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(if id == "0" { 1 } else { seq_of(&id) + 1 })
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }
}

impl RedisBroker {
    /// Runs a command that may safely run twice (XACK) on the shared connection, waiting out a Redis
    /// restart: the connection manager reconnects by itself, but the command that finds the old socket
    /// dead fails with it (a `sub -s GROUP` used to exit 3 "broken pipe" on the first ack after a
    /// restart), and a restarted Redis answers LOADING until its data is back. Tries for about 6 s.
    async fn idempotent<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        // Six tries over about six seconds (the backoff's 100 ms … 3.2 s), enough for a Redis restart.
        let mut backoff = Backoff::new();
        for _ in 0..6 {
            match cmd.query_async(&mut self.conn.clone()).await {
                Err(e) if read::is_outage(&e) => backoff.wait().await,
                other => return other.map_err(|e| error(&self.url, e)),
            }
        }
        cmd.query_async(&mut self.conn.clone()).await.map_err(|e| error(&self.url, e))
    }

    /// One round trip for a whole batch (pipelined), deciding stream or channel per subject once.
    async fn publish_pipeline(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut kinds: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for m in msgs {
            let key = m.subject.to_string();
            if let std::collections::hash_map::Entry::Vacant(slot) = kinds.entry(key) {
                let stream = self.is_stream(slot.key()).await?;
                slot.insert(stream);
            }
        }
        // PUBLISH carries a payload and nothing else: refuse what it would silently drop.
        for m in msgs {
            let stream = kinds.get(m.subject.as_str()).copied().unwrap_or(false);
            let extras = [
                (m.key.is_some(), "--key"),
                (!m.headers.is_empty(), "--header"),
                (m.msg_id.is_some(), "--msg-id"),
            ];
            if let (false, Some((_, what))) = (stream, extras.iter().find(|(set, _)| *set)) {
                return Err(BrokerError::Invalid(format!(
                    "\"{}\" is a Redis channel, and PUBLISH carries only the payload, so {what} would be lost; publish to a stream to keep keys and headers (`pubsub topic create {}` makes one)",
                    m.subject, m.subject
                )));
            }
        }
        let mut pipe = redis::pipe();
        for m in msgs {
            let key = m.subject.to_string();
            if kinds.get(&key).copied().unwrap_or(false) {
                pipe.add_command(xadd(&key, self.maxlen, m));
            } else {
                pipe.cmd("PUBLISH").arg(&key).arg(m.payload.as_ref());
            }
        }
        let replies: Vec<Value> =
            pipe.query_async(&mut self.conn.clone()).await.map_err(|e| error(&self.url, e))?;
        Ok(msgs
            .iter()
            .zip(replies)
            .map(|(m, reply)| match reply {
                Value::Int(n) => PublishReceipt {
                    topic: None,
                    partition: 0,
                    seq: 0,
                    taps: u32::try_from(n).unwrap_or(0),
                    duplicate: false,
                },
                other => PublishReceipt {
                    topic: Some(m.subject.clone()),
                    partition: 0,
                    seq: seq_of(&text(&other)),
                    taps: 0,
                    duplicate: false,
                },
            })
            .collect())
    }

    /// A consumer group's consumers (XINFO CONSUMERS).
    async fn consumers(
        &self,
        key: &str,
        group: &str,
    ) -> Result<Vec<crate::model::ConsumerInfo>, BrokerError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(key)
            .arg(group)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(parse_consumers(&reply))
    }

    /// The id a read (XREAD, or a new consumer group) starts after, so that its first entry is the one
    /// `start` names.
    async fn start_after(&self, key: &str, start: StartPosition) -> Result<String, BrokerError> {
        Ok(match start {
            StartPosition::All => "0".to_string(),
            StartPosition::New => "$".to_string(),
            StartPosition::Seq(s) => id_of(s.saturating_sub(1)),
            StartPosition::Time(t) => format!("{}-0", (t.as_micros().max(0) / 1000).saturating_sub(1)),
            StartPosition::Last | StartPosition::LastPerKey => {
                let newest: Value = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| error(&self.url, e))?;
                let topic = Name::new(key)?;
                match entries(&topic, &newest).first() {
                    Some((id, _)) => id_of(seq_of(id).saturating_sub(1)),
                    None => "$".to_string(),
                }
            }
        })
    }

    /// Reads a stream: through a consumer group (durable, acked) or plainly from a position, on a
    /// connection of the reader's own (`read.rs`).
    async fn read_stream(&self, topic: Name, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        let key = topic.to_string();
        let mut conn = read::connect(&self.client).await.map_err(|e| error(&self.url, e))?;
        let (tx, rx) = mpsc::channel::<Result<StreamItem, BrokerError>>(1024);
        let count = req.prefetch.unwrap_or(100).max(1);
        let start = self.start_after(&key, req.from.unwrap_or_default()).await?;
        let task = if let Some(group) = req.subscription.clone() {
            let created: redis::RedisResult<String> =
                xgroup_create(&key, group.as_str(), &start).query_async(&mut conn).await;
            if let Err(e) = created
                && e.code() != Some("BUSYGROUP")
            {
                return Err(error(&self.url, e));
            }
            let consumer = req.consumer.clone().unwrap_or_else(|| {
                format!("pubsub-{}-{}", std::process::id(), self.next_id.fetch_add(1, Ordering::Relaxed))
            });
            let link = ReadLink::new(
                self.client.clone(),
                conn,
                Some(GroupRead::recreate(&key, &group)),
                self.events.clone(),
            );
            let group_read = GroupRead {
                url: self.url.clone(),
                key,
                group,
                consumer,
                acked: req.ack != crate::model::AckMode::None,
                count,
                topic,
                ack_deadline: self.ack_deadline,
            };
            tokio::spawn(group_read.run(link, tx))
        } else {
            let link = ReadLink::new(self.client.clone(), conn, None, self.events.clone());
            tokio::spawn(read::plain(link, self.url.clone(), topic, count, start, tx))
        };
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}

/// How long an entry may stay pending before another consumer claims it (XAUTOCLAIM) unless the URL
/// says otherwise: Redis has no server-side ack deadline, so this client emulates one.
const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);

fn info_for(name: Name, messages: u64, first: u64, head: u64) -> TopicInfo {
    TopicInfo::external(name, messages, None).with_positions(first, head)
}

fn sub_info(topic: &Name, g: &GroupInfo) -> SubscriptionInfo {
    let name = Name::new(&g.name).unwrap_or_else(|_| topic.clone());
    let lag = g.lag.unwrap_or(0);
    let mut info = SubscriptionInfo::external(name, topic.clone());
    info.delivered_seq = seq_of(&g.last_delivered);
    info.pending = lag;
    info.in_flight = g.pending;
    info.backlog = lag + g.pending;
    info.offset_lag = lag + g.pending;
    info.with_one_partition(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_map_to_ordered_seqs_and_back() {
        assert_eq!(seq_of("1700000000123-4"), 1_700_000_000_123_004);
        assert_eq!(id_of(1_700_000_000_123_004), "1700000000123-4");
        assert!(seq_of("5-0") < seq_of("5-1") && seq_of("5-999") < seq_of("6-0"));
    }

    #[test]
    fn token_patterns_translate_to_globs_or_are_refused() {
        let glob = |t: &str| redis_glob(&Pattern::parse(t).unwrap());
        assert_eq!(glob("orders").unwrap(), (false, "orders".into()));
        assert_eq!(glob("orders.>").unwrap(), (true, "orders.?*".into()));
        assert_eq!(glob("#").unwrap(), (true, "*".into()));
        assert_eq!(glob("glob:user:*").unwrap(), (true, "user:*".into()));
        let err = glob("orders.*.eu").unwrap_err().to_string();
        assert!(err.contains("glob:orders.*.eu"), "{err}");
    }

    #[test]
    fn url_options_parse_or_say_what_is_wrong() {
        let parse = |query: &str| {
            BrokerUrl::parse(&format!("redis://h?{query}"))
                .and_then(|u| UrlOptions::parse(&u))
                .map_err(|e| e.to_string())
        };
        let expected =
            UrlOptions { mode: Mode::Streams, ack_deadline: Duration::from_millis(500), maxlen: Some(1000) };
        assert_eq!(parse("mode=streams&ack_deadline=500ms&maxlen=1000"), Ok(expected));
        assert_eq!(parse("").map(|o| (o.mode, o.ack_deadline)), Ok((Mode::Auto, DEFAULT_ACK_DEADLINE)));
        assert_eq!(parse("ack_deadline=1h").map(|o| o.ack_deadline), Ok(Duration::from_secs(3600)));
        for (query, says) in [
            ("mode=list", "use streams or pubsub"),
            ("ack_deadline=0s", "ack_deadline \"0s\""),
            ("ack_deadline=soon", "ack_deadline \"soon\""),
            ("maxlen=-1", "maxlen \"-1\""),
            ("maxlen=0", "maxlen \"0\""),
            ("db=2", "unknown option \"db\""),
        ] {
            let err = parse(query).err().unwrap_or_default();
            assert!(err.contains(says), "{query}: {err}");
        }
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact("redis://host"), "redis://host");
    }
}
