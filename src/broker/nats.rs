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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{HeaderMap, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::kit::{Forwarder, Offer};
use super::url::BrokerUrl;
use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, Capability, ChannelSource, ConnectionEvent,
    DeliveryStream, ItemSource, Settle, StreamItem, SubscribeRequest,
};
use crate::model::{
    AckMode, Backoff, BrowseFrom, Clock, ConsumerInfo, Discard, EngineError, Headers, Lifetime, Limits,
    Message, MessageExtra, Name, Pattern, PatternToken, PublishReceipt, PublishRequest, SeekTarget,
    StartPosition, StorageKind, SubCounters, SubscriptionConfig, SubscriptionInfo, SystemClock, Timestamp,
    TopicConfig, TopicInfo,
};

/// Header that carries a message's key (NATS has no keys of its own).
pub const KEY_HEADER: &str = "pubsub-key";
/// JetStream's de-duplication header.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// How long a subject's stream (or the lack of one) is remembered for publish routing.
const ROUTE_TTL: Duration = Duration::from_secs(3);

/// Which way publishes and subscriptions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// JetStream where a stream captures the subject, core elsewhere.
    Auto,
    /// Core NATS only, even where a stream captures the subject (it still stores what it captures).
    Core,
    /// JetStream only: publishing to a subject no stream captures is an error.
    JetStream,
}

/// The query part of a NATS URL.
#[derive(Debug, Clone, PartialEq)]
struct UrlOptions {
    mode: Mode,
    /// A `.creds` file (JWT + seed) for decentralized auth.
    creds: Option<PathBuf>,
    /// A PEM file of extra trusted certificates (a private CA).
    ca: Option<PathBuf>,
    tls: bool,
    /// How long a JetStream consumer created here waits for an ack before redelivering.
    ack_wait: Duration,
    /// Messages a live subscription may hold before newer ones are dropped (and counted).
    pending: usize,
    name: String,
}

impl UrlOptions {
    fn parse(url: &BrokerUrl) -> Result<UrlOptions, BrokerError> {
        let mut o = url.options();
        let options = UrlOptions {
            mode: match o.choice_among(
                "mode",
                &["auto", "core", "jetstream", "js"],
                &["auto", "core", "jetstream"],
            )? {
                Some("core") => Mode::Core,
                Some("jetstream" | "js") => Mode::JetStream,
                _ => Mode::Auto,
            },
            creds: o.text("creds").map(PathBuf::from),
            ca: o.text("ca").map(PathBuf::from),
            tls: o.flag("tls")?.unwrap_or(false),
            ack_wait: o.duration("ack_wait")?.unwrap_or(Duration::from_secs(30)),
            pending: o.number("pending")?.unwrap_or(65_536),
            name: o.text("name").unwrap_or_else(|| "pubsub".into()),
        };
        o.finish()?;
        Ok(options)
    }
}

/// Credentials written into the URL.
#[derive(Debug, Clone, PartialEq)]
enum UrlAuth {
    None,
    /// `nats://user:pass@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// Servers, credentials and options of a NATS URL.
#[derive(Debug)]
struct Target {
    servers: Vec<String>,
    auth: UrlAuth,
    options: UrlOptions,
    shown: String,
}

fn parse_url(url: &str) -> Result<Target, BrokerError> {
    let parsed = BrokerUrl::parse(url)?;
    let scheme_tls = match parsed.scheme.as_str() {
        "nats" => false,
        "tls" => true,
        other => return Err(parsed.invalid(format!("scheme {other}: use nats:// or tls://"))),
    };
    if !parsed.path.is_empty() {
        return Err(parsed.invalid("a NATS URL has no path; options go after `?`"));
    }
    let auth = match (&parsed.user, &parsed.password) {
        (Some(user), Some(pass)) => UrlAuth::UserPassword(user.clone(), pass.clone()),
        (Some(token), None) => UrlAuth::Token(token.clone()),
        _ => UrlAuth::None,
    };
    let mut options = UrlOptions::parse(&parsed)?;
    options.tls |= scheme_tls;
    let scheme = if options.tls { "tls" } else { "nats" };
    let servers =
        parsed.addresses(4222).into_iter().map(|(host, port)| format!("{scheme}://{host}:{port}")).collect();
    Ok(Target { servers, auth, options, shown: parsed.to_string() })
}

/// The NATS subjects a pattern subscribes to; an error says what to write instead.
pub fn nats_subjects(p: &Pattern) -> Result<Vec<String>, BrokerError> {
    let Pattern::Tokens(tokens) = p else {
        return Err(BrokerError::Invalid(format!(
            "\"{}\": NATS has no glob patterns; use * for one token and > for the rest",
            p.as_str()
        )));
    };
    let tokens = tokens.tokens();
    let mut parts = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let last = i + 1 == tokens.len();
        match token {
            PatternToken::Literal(t) => parts.push(t.to_string()),
            PatternToken::One => parts.push("*".into()),
            PatternToken::OneOrMore => parts.push(">".into()),
            // `#` matches zero or more tokens: alone it is every subject, last it is the prefix itself
            // plus everything below it.
            PatternToken::ZeroOrMore if last => {
                if parts.is_empty() {
                    return Ok(vec![">".into()]);
                }
                let prefix = parts.join(".");
                return Ok(vec![prefix.clone(), format!("{prefix}.>")]);
            }
            PatternToken::ZeroOrMore => {
                return Err(BrokerError::Invalid(format!(
                    "\"{}\": NATS has no zero-or-more wildcard in the middle of a subject; use * for one token or a final >",
                    p.as_str()
                )));
            }
            PatternToken::Levels(t) => {
                return Err(BrokerError::Invalid(format!(
                    "\"{t}\" is an MQTT filter; NATS subjects use `.` between tokens, * and >"
                )));
            }
        }
    }
    Ok(vec![parts.join(".")])
}

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

/// A refused JetStream publish, classified by its kind and JetStream's error code: a message over the
/// stream's or server's limit is the model's `MessageTooLarge`, as on every other backend.
fn publish_error(m: &PublishRequest, e: async_nats::jetstream::context::PublishError) -> BrokerError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let mut source = std::error::Error::source(&e);
    let mut over_limit = e.kind() == K::MaxPayloadExceeded;
    while let Some(err) = source {
        if let Some(js) = err.downcast_ref::<async_nats::jetstream::Error>() {
            over_limit |= js.error_code() == async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM;
        }
        source = err.source();
    }
    if over_limit {
        let size = m.payload.len() + m.key.as_ref().map_or(0, |k| k.len());
        return BrokerError::Engine(EngineError::MessageTooLarge { topic: m.subject.clone(), size, max: 0 });
    }
    js_error("publish", e)
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

    /// The stream that captures `subject`, asked of the server once per [`ROUTE_TTL`].
    async fn stream_for_subject(&self, subject: &str) -> Result<Option<String>, BrokerError> {
        if !self.has_jetstream() {
            return Ok(None);
        }
        if let Some((stream, at)) = self.routes.lock().unwrap_or_else(PoisonError::into_inner).get(subject)
            && at.elapsed() < ROUTE_TTL
        {
            return Ok(stream.clone());
        }
        let found = match self.js.stream_by_subject(subject).await {
            Ok(name) => Some(name),
            Err(e) => {
                use async_nats::jetstream::context::GetStreamByNameErrorKind as K;
                match e.kind() {
                    K::NotFound | K::InvalidSubject => None,
                    K::JetStream(js) if js.code() == 404 => None,
                    _ => return Err(js_error(&format!("looking up the stream of \"{subject}\""), e)),
                }
            }
        };
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(subject.to_string(), (found.clone(), Instant::now()));
        Ok(found)
    }

    /// The stream a topic name means and the subject filter within it: the stream of that name, else
    /// the stream that captures the name as a subject (filtered to it).
    async fn resolve(&self, topic: &Name) -> Result<(stream::Stream, Option<String>), BrokerError> {
        self.need_jetstream("a topic with history")?;
        let name = topic.as_str();
        if is_stream_name(name)
            && let Ok(stream) = self.js.get_stream(name).await
        {
            return Ok((stream, None));
        }
        match self.stream_for_subject(name).await? {
            Some(stream_name) => {
                let stream = self.js.get_stream(&stream_name).await.map_err(|e| js_error("stream", e))?;
                let whole = stream.cached_info().config.subjects.iter().any(|s| s == name);
                Ok((stream, (!whole).then(|| name.to_string())))
            }
            None => Err(BrokerError::Invalid(format!(
                "no JetStream stream is named \"{name}\" or captures it as a subject; create one with `pubsub topic create NAME --subject '{name}'`"
            ))),
        }
    }

    /// The stream that has a consumer of this name (consumers are per stream in NATS, subscriptions
    /// have one namespace here).
    async fn stream_of_consumer(&self, consumer: &Name) -> Result<stream::Stream, BrokerError> {
        self.need_jetstream("a subscription")?;
        let mut names = self.js.stream_names();
        let mut found: Vec<stream::Stream> = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| js_error("listing streams", e))?;
            let Ok(stream) = self.js.get_stream(&name).await else { continue };
            if stream.consumer_info(consumer.as_str()).await.is_ok() {
                found.push(stream);
            }
        }
        match found.len() {
            0 => {
                Err(BrokerError::Invalid(format!("no JetStream stream has a consumer named \"{consumer}\"")))
            }
            1 => found.pop().ok_or_else(|| BrokerError::Protocol("lost the consumer's stream".into())),
            // Subscription names are one namespace here; NATS scopes consumers by stream.
            _ => Err(BrokerError::Invalid(format!(
                "streams {} each have a consumer named \"{consumer}\"; manage them with a NATS tool, or give them different names",
                found.iter().map(|s| s.cached_info().config.name.clone()).collect::<Vec<_>>().join(" and ")
            ))),
        }
    }

    /// Core publishes. They return once the client has queued them: its connection task writes them
    /// out at once, and [`Broker::close`] flushes before a command exits. (Core NATS has no publish
    /// acknowledgement; a flush per call would only prove the bytes left this process, at about half
    /// the throughput.)
    async fn publish_core(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        // Consecutive messages to one subject share its encoded form instead of copying it each time.
        let mut last: Option<(&Name, async_nats::Subject)> = None;
        for (index, m) in msgs.iter().enumerate() {
            let subject = match &last {
                Some((name, subject)) if *name == &m.subject => subject.clone(),
                _ => {
                    let subject = async_nats::Subject::from(m.subject.as_str());
                    last = Some((&m.subject, subject.clone()));
                    subject
                }
            };
            let sent = match nats_headers(m) {
                Some(headers) => self.client.publish_with_headers(subject, headers, m.payload.clone()).await,
                None => self.client.publish(subject, m.payload.clone()).await,
            };
            sent.map_err(|e| batch_error(index, msgs.len(), BrokerError::Invalid(format!("publish: {e}"))))?;
        }
        Ok(msgs
            .iter()
            .map(|_| PublishReceipt {
                topic: None,
                partition: 0,
                seq: 0,
                taps: 0,
                duplicate: false,
                unrouted: false,
            })
            .collect())
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        self.client
            .flush()
            .await
            .map_err(|e| BrokerError::Disconnected { url: self.url.clone(), reason: format!("flush: {e}") })
    }

    /// JetStream publishes, sent back to back and then awaited, so a batch costs one round trip.
    async fn publish_jetstream(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut pending = Vec::with_capacity(msgs.len());
        for (index, m) in msgs.iter().enumerate() {
            let headers = nats_headers(m).unwrap_or_default();
            let ack = self
                .js
                .publish_with_headers(m.subject.to_string(), headers, m.payload.clone())
                .await
                .map_err(|e| batch_error(index, msgs.len(), js_error("publish", e)))?;
            pending.push(ack);
        }
        let mut receipts = Vec::with_capacity(pending.len());
        for (index, ack) in pending.into_iter().enumerate() {
            let ack = match ack.await {
                Ok(ack) => ack,
                Err(e) => {
                    let mut refused = publish_error(&msgs[index], e);
                    if let BrokerError::Engine(EngineError::MessageTooLarge { topic, max, .. }) = &mut refused
                    {
                        *max = self.max_message_size(topic).await.unwrap_or(0);
                    }
                    return Err(batch_error(index, msgs.len(), refused));
                }
            };
            receipts.push(PublishReceipt {
                topic: Name::new(&ack.stream).ok(),
                partition: 0,
                seq: ack.sequence,
                taps: 0,
                duplicate: ack.duplicate,
                unrouted: false,
            });
        }
        Ok(receipts)
    }

    /// The largest message the stream capturing `subject` takes, when it says.
    async fn max_message_size(&self, subject: &Name) -> Option<u32> {
        let stream = self.stream_for_subject(subject.as_str()).await.ok()??;
        let mut stream = self.js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        u32::try_from(info.config.max_message_size).ok().filter(|n| *n > 0)
    }

    /// A new ephemeral consumer that reads `stream` from `start` without acks.
    async fn reader(
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
    async fn consume(
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

    /// Core subscriptions (plain, or in the queue group `group`) merged into one stream.
    async fn listen(
        &self,
        patterns: &[Pattern],
        group: Option<&Name>,
    ) -> Result<DeliveryStream, BrokerError> {
        let mut subjects = Vec::new();
        for p in patterns {
            subjects.extend(nats_subjects(p)?);
        }
        // A wire tap (`>`) would also see the JetStream API and reply inboxes, this tool's own requests
        // among them; those show only when asked for by name.
        let hide_internal = !subjects.iter().any(|s| s.starts_with(['$', '_']));
        let mut subs = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let made = match group {
                Some(g) => self.client.queue_subscribe(subject.clone(), g.to_string()).await,
                None => self.client.subscribe(subject.clone()).await,
            };
            subs.push(made.map_err(|e| BrokerError::Invalid(format!("subscribe to \"{subject}\": {e}")))?);
        }
        // The SUBs reach the server before this returns, so a publish right after is seen.
        self.flush().await?;
        let (tx, rx) = mpsc::channel::<Result<StreamItem, BrokerError>>(self.pending);
        let captures = if self.has_jetstream() {
            let captures = SharedCaptures::default();
            tokio::spawn(refresh_captures(self.js.clone(), captures.clone(), tx.downgrade()));
            Some(captures)
        } else {
            None
        };
        let task = tokio::spawn(core_pump(subs, tx, self.dropped.clone(), hide_internal, captures));
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }

    /// Every consumer of a stream as subscriptions.
    async fn stream_subscriptions(
        &self,
        stream: &stream::Stream,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let info = stream.cached_info().clone();
        let mut out = Vec::new();
        let mut consumers = stream.consumers();
        while let Some(c) = consumers.next().await {
            let c = c.map_err(|e| js_error("listing consumers", e))?;
            out.extend(sub_info(&c, &info));
        }
        Ok(out)
    }
}

/// Copies a message's headers, key and msg_id into NATS headers; `None` when it has none.
fn nats_headers(m: &PublishRequest) -> Option<HeaderMap> {
    if m.headers.is_empty() && m.key.is_none() && m.msg_id.is_none() {
        return None;
    }
    let mut h = HeaderMap::new();
    for (k, v) in &m.headers {
        h.insert(k.as_str(), v.as_str());
    }
    if let Some(key) = &m.key {
        h.insert(KEY_HEADER, String::from_utf8_lossy(key).as_ref());
    }
    if let Some(id) = &m.msg_id {
        h.insert(MSG_ID_HEADER, id.as_str());
    }
    Some(h)
}

fn batch_error(index: usize, len: usize, e: BrokerError) -> BrokerError {
    if len == 1 { e } else { BrokerError::Batch { index, source: Box::new(e) } }
}

/// Stream names may not hold `.`, `*`, `>`, path separators or whitespace.
fn is_stream_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['.', '*', '>', '/', '\\']) && !name.contains(char::is_whitespace)
}

fn datetime_of(t: Timestamp) -> Result<async_nats::jetstream::consumer::DeliverPolicy, BrokerError> {
    let nanos = i128::from(t.as_micros()) * 1000;
    let start_time = async_nats::datetime::from_nanos(nanos)
        .map_err(|e| BrokerError::Invalid(format!("start time out of range: {e}")))?;
    Ok(jetstream::consumer::DeliverPolicy::ByStartTime { start_time })
}

fn deliver_policy(start: StartPosition) -> Result<jetstream::consumer::DeliverPolicy, BrokerError> {
    use jetstream::consumer::DeliverPolicy as D;
    Ok(match start {
        StartPosition::All => D::All,
        StartPosition::New => D::New,
        StartPosition::Last => D::Last,
        StartPosition::LastPerKey => D::LastPerSubject,
        StartPosition::Seq(s) => D::ByStartSequence { start_sequence: s.max(1) },
        StartPosition::Time(t) => return datetime_of(t),
    })
}

/// A JetStream consumer configuration for a subscription configuration; what JetStream cannot do is
/// refused with the reason.
fn consumer_config(c: &SubscriptionConfig, filter: Option<String>) -> Result<pull::Config, BrokerError> {
    if c.dead_letter.is_some() {
        return Err(BrokerError::Invalid(
            "JetStream has no dead-letter topics: a message that reaches max deliver stays in the stream and an advisory is published (subscribers here show it); drop --dead-letter".into(),
        ));
    }
    let filter = match c.filter.as_slice() {
        [] => filter.unwrap_or_default(),
        [one] => match nats_subjects(one)?.as_slice() {
            [subject] => subject.clone(),
            _ => {
                return Err(BrokerError::Invalid(format!(
                    "filter \"{}\" needs two NATS subjects; a consumer on this server takes one (use a final >)",
                    one.as_str()
                )));
            }
        },
        _ => {
            return Err(BrokerError::Invalid(
                "several filter subjects per consumer need nats-server 2.10 and are not sent by this build; give one filter (a final > covers a subtree)".into(),
            ));
        }
    };
    let (durable_name, inactive_threshold) = match c.lifetime {
        Lifetime::Durable => (Some(c.name.to_string()), Duration::ZERO),
        Lifetime::Ephemeral { inactive_ttl } => (None, inactive_ttl),
    };
    let ack_policy = match c.ack {
        AckMode::None => jetstream::consumer::AckPolicy::None,
        AckMode::Explicit => jetstream::consumer::AckPolicy::Explicit,
        AckMode::Cumulative => jetstream::consumer::AckPolicy::All,
    };
    let backoff = match &c.backoff {
        Backoff::List(list) if c.backoff_on_timeout => list.clone(),
        _ => Vec::new(),
    };
    Ok(pull::Config {
        name: durable_name.is_none().then(|| c.name.to_string()),
        durable_name,
        deliver_policy: deliver_policy(c.start)?,
        ack_policy,
        ack_wait: c.ack_deadline,
        max_deliver: if c.max_deliveries == 0 { -1 } else { i64::from(c.max_deliveries) },
        filter_subject: filter,
        max_ack_pending: if c.max_in_flight == 0 { -1 } else { i64::from(c.max_in_flight) },
        inactive_threshold,
        backoff,
        ..Default::default()
    })
}

/// Headers, key, msg_id and JetStream metadata of a received NATS message.
fn to_message(
    topic: Option<&Name>,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    seq: u64,
    published: Timestamp,
) -> Option<Message> {
    let mut out = Headers::new();
    let mut key = None;
    let mut msg_id = None;
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            let Some(value) = values.first() else { continue };
            let name = name.to_string();
            if name.eq_ignore_ascii_case(KEY_HEADER) {
                key = Some(Bytes::copy_from_slice(value.as_str().as_bytes()));
            } else if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                msg_id = Some(value.to_string());
            } else {
                out.insert(name, value.to_string());
            }
        }
    }
    // NATS subjects may hold characters names here cannot; such a message arrives as `$nats.subject`
    // with its real subject in a header.
    let subject_name = match Name::system(subject) {
        Ok(n) => n,
        Err(_) => {
            out.insert("nats-subject".into(), subject.to_string());
            Name::system("$nats.subject").ok()?
        }
    };
    let topic = topic.cloned().unwrap_or_else(|| subject_name.clone());
    Some(Message::new(topic, 0, seq, published, subject_name, MessageExtra::pack(key, msg_id, out), payload))
}

/// A JetStream time as a timestamp.
fn timestamp(t: async_nats::datetime::DateTime) -> Timestamp {
    Timestamp::from_micros(i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0))
}

/// Which streams capture which subjects, so that live messages name the stream that stores them (the
/// TUI's per-topic views follow topics); kept fresh while a live subscription runs.
#[derive(Default)]
struct Captures {
    generation: u64,
    streams: Vec<(Name, Vec<Pattern>)>,
}

type SharedCaptures = Arc<std::sync::RwLock<Captures>>;

/// Reloads the streams' subjects every few seconds until the subscriber or its pump is gone (a weak
/// sender, so that this task never keeps the stream open).
async fn refresh_captures(
    js: jetstream::Context,
    captures: SharedCaptures,
    tx: mpsc::WeakSender<Result<StreamItem, BrokerError>>,
) {
    loop {
        let mut streams = Vec::new();
        let mut list = js.streams();
        while let Some(Ok(info)) = list.next().await {
            let Ok(name) = Name::system(&info.config.name) else { continue };
            let patterns = info.config.subjects.iter().filter_map(|s| Pattern::parse(s).ok()).collect();
            streams.push((name, patterns));
        }
        {
            let mut c = captures.write().unwrap_or_else(PoisonError::into_inner);
            c.generation += 1;
            c.streams = streams;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        if tx.upgrade().is_none_or(|tx| tx.is_closed()) {
            return;
        }
    }
}

/// The stream that captures `subject`, from the latest captures (remembered per subject until they change).
fn captured_by(
    captures: &SharedCaptures,
    cache: &mut (u64, HashMap<String, Option<Name>>),
    subject: &str,
) -> Option<Name> {
    let c = captures.read().unwrap_or_else(PoisonError::into_inner);
    if cache.0 != c.generation {
        *cache = (c.generation, HashMap::new());
    }
    if let Some(found) = cache.1.get(subject) {
        return found.clone();
    }
    let found =
        c.streams.iter().find(|(_, ps)| ps.iter().any(|p| p.matches(subject))).map(|(n, _)| n.clone());
    cache.1.insert(subject.to_string(), found.clone());
    found
}

/// Forwards core messages without ever waiting for the reader: core NATS is at-most-once, and a
/// reader that falls behind loses the newest messages, counted and reported, never silently.
async fn core_pump(
    subs: Vec<Subscriber>,
    tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
    dropped: Arc<AtomicU64>,
    hide_internal: bool,
    captures: Option<SharedCaptures>,
) {
    let mut merged = futures_util::stream::select_all(subs);
    let mut cache = (0u64, HashMap::new());
    let mut forward = Forwarder::new(tx, None);
    loop {
        // While drops are unreported, the report goes out as soon as the reader makes room, even when
        // no further message comes.
        let next = tokio::select! {
            m = merged.next() => m,
            alive = forward.catch_up(), if forward.owes_report() => {
                if !alive {
                    return;
                }
                continue;
            }
        };
        let Some(m) = next else { return };
        if hide_internal && (m.subject.starts_with('$') || m.subject.starts_with("_INBOX.")) {
            continue;
        }
        let now = SystemClock.now();
        let stream = captures.as_ref().and_then(|c| captured_by(c, &mut cache, m.subject.as_str()));
        let Some(message) =
            to_message(stream.as_ref(), m.subject.as_str(), m.headers.as_ref(), m.payload, 0, now)
        else {
            continue;
        };
        match forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(message))) {
            Offer::Sent => {}
            Offer::Dropped => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Gone => return,
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
        loop {
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
            let pulled = consumer.batch().max_messages(self.batch).expires(PULL_EXPIRES).messages().await;
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

/// A JetStream advisory in a sentence.
fn advisory_text(payload: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let field = |k: &str| v.get(k).map(|x| x.to_string().trim_matches('"').to_string()).unwrap_or_default();
    let kind = field("type");
    if kind.ends_with("max_deliver") {
        format!(
            "NATS advisory: message {} of stream {} reached max deliver ({} deliveries) on consumer {}; it stays in the stream and is not delivered again",
            field("stream_seq"),
            field("stream"),
            field("deliveries"),
            field("consumer")
        )
    } else if kind.ends_with("terminated") {
        format!(
            "NATS advisory: message {} of stream {} was terminated on consumer {}{}",
            field("stream_seq"),
            field("stream"),
            field("consumer"),
            match field("reason").as_str() {
                "" => String::new(),
                r => format!(" ({r})"),
            }
        )
    } else {
        format!("NATS advisory: {}", String::from_utf8_lossy(payload))
    }
}

fn topic_info(info: &stream::Info) -> Option<TopicInfo> {
    let c = &info.config;
    let s = &info.state;
    let name = Name::new(&c.name).ok()?;
    let limit = |v: i64| u64::try_from(v).ok().filter(|n| *n > 0);
    let mut t = TopicInfo::external(name, s.messages, Some(s.bytes))
        .with_positions(s.first_sequence, s.last_sequence);
    t.subjects = c.subjects.clone();
    t.last_publish = (s.messages > 0).then(|| timestamp(s.last_timestamp));
    t.limits = Limits {
        max_msgs: limit(c.max_messages),
        max_bytes: limit(c.max_bytes),
        max_age: (!c.max_age.is_zero()).then_some(c.max_age),
        max_msgs_per_key: limit(c.max_messages_per_subject),
    };
    t.discard = match c.discard {
        stream::DiscardPolicy::New => Discard::New,
        _ => Discard::Old,
    };
    t.subscriptions = u32::try_from(s.consumer_count).unwrap_or(u32::MAX);
    t.created = Some(timestamp(info.created));
    t.storage = Some(match c.storage {
        stream::StorageType::Memory => StorageKind::Memory,
        stream::StorageType::File => StorageKind::File,
    });
    Some(t)
}

/// A consumer as a subscription; `None` for names that are not names here.
fn sub_info(c: &jetstream::consumer::Info, stream: &stream::Info) -> Option<SubscriptionInfo> {
    let topic = Name::system(&c.stream_name).ok()?;
    let name = Name::system(&c.name).ok()?;
    let cfg = &c.config;
    let start = match cfg.deliver_policy {
        jetstream::consumer::DeliverPolicy::All => StartPosition::All,
        jetstream::consumer::DeliverPolicy::Last => StartPosition::Last,
        jetstream::consumer::DeliverPolicy::New => StartPosition::New,
        jetstream::consumer::DeliverPolicy::LastPerSubject => StartPosition::LastPerKey,
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
            StartPosition::Seq(start_sequence)
        }
        jetstream::consumer::DeliverPolicy::ByStartTime { start_time } => {
            StartPosition::Time(timestamp(start_time))
        }
    };
    let ack = match cfg.ack_policy {
        jetstream::consumer::AckPolicy::None => AckMode::None,
        jetstream::consumer::AckPolicy::All => AckMode::Cumulative,
        _ => AckMode::Explicit,
    };
    let in_flight = c.num_ack_pending as u64;
    let now = SystemClock.now();
    let age = |t: Option<async_nats::datetime::DateTime>| t.map(|t| now.since(timestamp(t)));
    let mut info = SubscriptionInfo::external(name, topic);
    info.filter = if cfg.filter_subject.is_empty() { Vec::new() } else { vec![cfg.filter_subject.clone()] };
    info.ack = ack;
    info.start = start;
    info.ack_deadline = cfg.ack_wait;
    info.max_deliveries = u32::try_from(cfg.max_deliver).unwrap_or(0);
    info.max_in_flight = u32::try_from(cfg.max_ack_pending).unwrap_or(0);
    info.ephemeral = cfg.durable_name.is_none();
    info.head_seq = stream.state.last_sequence;
    info.first_seq = stream.state.first_sequence;
    info.delivered_seq = c.delivered.stream_sequence;
    info.ack_floor = c.ack_floor.stream_sequence;
    info.pending = c.num_pending;
    info.in_flight = in_flight;
    info.redelivered = c.num_redelivered as u64;
    info.backlog = c.num_pending + in_flight;
    info.offset_lag = c.num_pending + in_flight;
    info.oldest_unacked_age = if in_flight > 0 { age(c.ack_floor.last_active) } else { Some(Duration::ZERO) };
    // NATS reports how many pull requests wait, not who sent them.
    info.consumers = (0..c.num_waiting)
        .map(|i| ConsumerInfo {
            id: Arc::from(format!("waiting-pull-{}", i + 1)),
            push: false,
            prefetch: 0,
            in_flight: 0,
            attached_at: Timestamp::ZERO,
            idle: Duration::ZERO,
            delivered: 0,
            acked: 0,
        })
        .collect();
    info.counters = SubCounters { delivered: c.delivered.consumer_sequence, ..SubCounters::default() };
    info.created = Some(timestamp(c.created));
    Some(info.with_one_partition(None))
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
    Capability::DetachedSettle,
    Capability::Replay,
    Capability::Lag,
    Capability::Persistence,
    Capability::Seek,
    Capability::TopicAdmin,
];

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
        for msg in &msgs {
            self.check_options(msg)?;
        }
        if !self.has_jetstream() {
            return self.publish_core(&msgs).await;
        }
        // Runs of messages going the same way keep their order and share one flush or ack wait.
        // Each message's way is asked once; consecutive messages to one subject reuse the answer.
        let mut stored_by_msg = Vec::with_capacity(msgs.len());
        let mut last: Option<(&Name, bool)> = None;
        for m in &msgs {
            let stored = match last {
                Some((subject, stored)) if subject == &m.subject => stored,
                _ => self.stream_for_subject(m.subject.as_str()).await?.is_some(),
            };
            last = Some((&m.subject, stored));
            stored_by_msg.push(stored);
        }
        let mut receipts = Vec::with_capacity(msgs.len());
        let mut start = 0;
        while start < msgs.len() {
            let stored = stored_by_msg[start];
            let end = start + stored_by_msg[start..].iter().take_while(|s| **s == stored).count();
            let run = &msgs[start..end];
            let done = if stored {
                self.publish_jetstream(run).await
            } else if self.mode == Mode::JetStream {
                Err(BrokerError::Invalid(format!(
                    "no JetStream stream captures \"{}\" (mode=jetstream publishes only to streams)",
                    run[0].subject
                )))
            } else {
                self.publish_core(run).await
            };
            let done = done.map_err(|e| match e {
                BrokerError::Batch { index, source } if msgs.len() > 1 => {
                    BrokerError::Batch { index: start + index, source }
                }
                e if msgs.len() > 1 => BrokerError::Batch { index: start, source: Box::new(e) },
                e => e,
            })?;
            receipts.extend(done);
            start = end;
        }
        Ok(receipts)
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

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
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
            Settle::Nack(None) => Bytes::from_static(b"-NAK"),
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

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        if !self.has_jetstream() {
            return Err(self.unsupported(Capability::TopicAdmin));
        }
        let mut out = Vec::new();
        let mut streams = self.js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| js_error("listing streams", e))?;
            out.extend(topic_info(&info));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        let (stream, filter) = self.resolve(name).await?;
        let mut info = topic_info(stream.cached_info()).ok_or_else(|| {
            BrokerError::Protocol(format!("stream \"{name}\" has a name this tool cannot show"))
        })?;
        if let Some(subject) = filter {
            // A subject of a stream: its own count and newest message (what `--exit-at-end` waits for).
            let mut counts =
                stream.info_with_subjects(&subject).await.map_err(|e| js_error("stream info", e))?;
            let mut messages = 0u64;
            while let Some(entry) = counts.next().await {
                messages += entry.map_err(|e| js_error("stream info", e))?.1 as u64;
            }
            info.messages = messages;
            info.head_seq = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(last) => last.sequence,
                Err(_) => 0,
            };
            info.subjects = vec![subject];
        }
        Ok(info)
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        self.need_jetstream("creating a topic")?;
        let name = config.name.as_str();
        if !is_stream_name(name) {
            return Err(BrokerError::Invalid(format!(
                "\"{name}\" cannot name a JetStream stream (no `.`, `*`, `>` or spaces); name it e.g. {} and capture the subject with --subject {name}",
                name.replace(['.', '*', '>'], "_")
            )));
        }
        let mut subjects = Vec::new();
        for p in &config.subjects {
            subjects.extend(nats_subjects(p)?);
        }
        let limit = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let stream_config = stream::Config {
            name: name.to_string(),
            subjects,
            max_messages: limit(config.limits.max_msgs),
            max_bytes: limit(config.limits.max_bytes),
            max_age: config.limits.max_age.unwrap_or(Duration::ZERO),
            max_messages_per_subject: limit(config.limits.max_msgs_per_key),
            discard: match config.discard {
                Discard::New => stream::DiscardPolicy::New,
                Discard::Old => stream::DiscardPolicy::Old,
            },
            duplicate_window: config.dedup_window,
            max_message_size: i32::try_from(config.max_msg_bytes).unwrap_or(i32::MAX),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = self.js.create_stream(stream_config).await.map_err(|e| {
            use async_nats::jetstream::ErrorCode;
            use async_nats::jetstream::context::CreateStreamErrorKind as K;
            // Classified by JetStream's error codes, not by the wording of the answer.
            match e.kind() {
                K::JetStream(js) if js.error_code() == ErrorCode::STREAM_NAME_EXIST => BrokerError::Invalid(
                    format!("stream \"{name}\" already exists with another configuration"),
                ),
                K::JetStream(js) if js.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP => {
                    BrokerError::Invalid(format!("another stream already captures these subjects: {js}"))
                }
                K::JetStreamUnavailable => BrokerError::Invalid(
                    "creating the stream: JetStream is not available on this NATS server (start nats-server with -js)"
                        .into(),
                ),
                K::TimedOut => BrokerError::Timeout(Duration::from_secs(5)),
                _ => js_error("creating the stream", e),
            }
        })?;
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let info = stream.info().await.map_err(|e| js_error("stream info", e))?;
        topic_info(info).ok_or_else(|| BrokerError::Protocol("the new stream has no usable name".into()))
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        let (stream, filter) = self.resolve(name).await?;
        if filter.is_some() {
            return Err(BrokerError::Invalid(format!(
                "\"{name}\" is a subject of stream {}, not a stream; delete the stream by its name",
                stream.cached_info().config.name
            )));
        }
        self.js.delete_stream(name.as_str()).await.map_err(|e| js_error("deleting the stream", e))?;
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(())
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        let (stream, filter) = self.resolve(name).await?;
        let purge = match filter {
            Some(subject) => stream.purge().filter(subject).await,
            None => stream.purge().await,
        };
        purge.map(|p| p.purged).map_err(|e| js_error("purging", e))
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.need_jetstream("listing subscriptions")?;
        if let Some(t) = topic {
            let (stream, _) = self.resolve(t).await?;
            return self.stream_subscriptions(&stream).await;
        }
        let mut out = Vec::new();
        let mut names = self.js.stream_names();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| js_error("listing streams", e))?;
            let Ok(stream) = self.js.get_stream(&name).await else { continue };
            out.extend(self.stream_subscriptions(&stream).await?);
        }
        Ok(out)
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        let stream = self.stream_of_consumer(name).await?;
        let mut stream =
            self.js.get_stream(&stream.cached_info().config.name).await.map_err(|e| js_error("stream", e))?;
        let info = stream.info().await.map_err(|e| js_error("stream info", e))?.clone();
        let consumer = stream.consumer_info(name.as_str()).await.map_err(|e| js_error("consumer info", e))?;
        sub_info(&consumer, &info).ok_or_else(|| {
            BrokerError::Protocol(format!("consumer \"{name}\" has a name this tool cannot show"))
        })
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        if !self.has_jetstream() {
            // Queue groups need no creating; a durable subscription needs JetStream.
            return Err(self.unsupported(Capability::Ack));
        }
        let (stream, filter) = self.resolve(&config.topic).await?;
        if !is_stream_name(config.name.as_str()) {
            return Err(BrokerError::Invalid(format!(
                "\"{}\" cannot name a JetStream consumer (no `.`, `*`, `>` or spaces)",
                config.name
            )));
        }
        if stream.consumer_info(config.name.as_str()).await.is_ok() {
            return Err(BrokerError::Invalid(format!(
                "subscription \"{}\" already exists on stream {}",
                config.name,
                stream.cached_info().config.name
            )));
        }
        let pull = consumer_config(&config, filter)?;
        stream.create_consumer(pull).await.map_err(|e| js_error("creating the consumer", e))?;
        self.subscription_info(&config.name).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        let stream = self.stream_of_consumer(name).await?;
        stream.delete_consumer(name.as_str()).await.map_err(|e| js_error("deleting the consumer", e))?;
        Ok(())
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let (mut stream, filter) = self.resolve(topic).await?;
        let state = stream.info().await.map_err(|e| js_error("stream info", e))?.state.clone();
        if state.messages == 0 || max == 0 {
            return Ok(Vec::new());
        }
        let start = match from {
            BrowseFrom::Seq(s) => StartPosition::Seq(s.max(state.first_sequence)),
            BrowseFrom::Time(t) => StartPosition::Time(t),
            // With a subject filter the newest n are not a seq range; read them by the filter's count.
            BrowseFrom::Last(n) if filter.is_none() => StartPosition::Seq(
                state.last_sequence.saturating_sub(n.saturating_sub(1)).max(state.first_sequence),
            ),
            BrowseFrom::Last(_) => StartPosition::All,
        };
        let reader = self.reader(&stream, filter.clone(), start).await?;
        let stream_name = Name::system(&stream.cached_info().config.name)?;
        let mut out: Vec<Message> = Vec::new();
        let want = match from {
            BrowseFrom::Last(_) if filter.is_some() => usize::MAX,
            _ => max,
        };
        while out.len() < want {
            let pending = reader.cached_info().num_pending;
            if pending == 0 && out.is_empty() {
                break;
            }
            let mut batch = reader
                .fetch()
                .max_messages((want - out.len()).min(1000))
                .messages()
                .await
                .map_err(|e| js_error("reading the stream", e))?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| js_error("reading the stream", e))?;
                let Ok(info) = m.info() else { continue };
                let (seq, published) = (info.stream_sequence, timestamp(info.published));
                out.extend(to_message(
                    Some(&stream_name),
                    m.subject.as_str(),
                    m.headers.as_ref(),
                    m.payload.clone(),
                    seq,
                    published,
                ));
                if info.pending == 0 {
                    break;
                }
            }
            if out.len() == before || out.last().is_some_and(|m| m.seq >= state.last_sequence) {
                break;
            }
        }
        let _ = stream.delete_consumer(&reader.cached_info().name).await;
        if let BrowseFrom::Last(n) = from {
            let keep = usize::try_from(n).unwrap_or(usize::MAX).min(max);
            let skip = out.len().saturating_sub(keep);
            out.drain(..skip);
        }
        out.truncate(max);
        Ok(out)
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        // JetStream consumers cannot move; the consumer is made again with the same configuration
        // and a deliver policy that starts where the seek asks.
        let mut stream = self.stream_of_consumer(subscription).await?;
        let state = stream.info().await.map_err(|e| js_error("stream info", e))?.state.clone();
        let old =
            stream.consumer_info(subscription.as_str()).await.map_err(|e| js_error("consumer info", e))?;
        let (policy, next) = match target {
            SeekTarget::Start => (jetstream::consumer::DeliverPolicy::All, state.first_sequence.max(1)),
            SeekTarget::End => (jetstream::consumer::DeliverPolicy::New, state.last_sequence + 1),
            SeekTarget::Seq { seq, .. } => {
                // Clamped to what the stream holds, as the engine does: past the end means "only new ones".
                let seq = seq.clamp(state.first_sequence.max(1), state.last_sequence + 1);
                (jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: seq }, seq)
            }
            SeekTarget::Time(t) => {
                let first = self
                    .browse(&Name::system(&old.stream_name)?, BrowseFrom::Time(t), 1)
                    .await?
                    .first()
                    .map_or(state.last_sequence + 1, |m| m.seq);
                (datetime_of(t)?, first)
            }
        };
        let c = old.config;
        let config = pull::Config {
            durable_name: c.durable_name,
            name: c.name,
            description: c.description,
            deliver_policy: policy,
            ack_policy: c.ack_policy,
            ack_wait: c.ack_wait,
            max_deliver: c.max_deliver,
            filter_subject: c.filter_subject,
            max_ack_pending: c.max_ack_pending,
            max_waiting: c.max_waiting,
            inactive_threshold: c.inactive_threshold,
            backoff: c.backoff,
            ..Default::default()
        };
        stream.delete_consumer(subscription.as_str()).await.map_err(|e| js_error("seek (delete)", e))?;
        stream.create_consumer(config).await.map_err(|e| js_error("seek (create)", e))?;
        Ok(next)
    }

    async fn request(
        &self,
        subject: &Name,
        payload: Bytes,
        headers: Headers,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let mut h = HeaderMap::new();
        for (k, v) in &headers {
            h.insert(k.as_str(), v.as_str());
        }
        let request = async_nats::Request::new().payload(payload).headers(h).timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), request).await {
            // The reply is shown under the request's subject (it arrives on a private inbox).
            Ok(reply) => {
                let now = SystemClock.now();
                to_message(None, subject.as_str(), reply.headers.as_ref(), reply.payload, 0, now)
                    .ok_or_else(|| BrokerError::Protocol("the request subject is unusable".into()))
            }
            Err(e) => {
                use async_nats::RequestErrorKind as K;
                Err(match e.kind() {
                    K::NoResponders => BrokerError::NoResponders { subject: subject.to_string() },
                    K::TimedOut => BrokerError::Timeout(timeout),
                    _ => BrokerError::Protocol(format!("request: {e}")),
                })
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(p: &str) -> Result<Vec<String>, String> {
        let pattern = Pattern::parse(p).map_err(|e| e.to_string())?;
        nats_subjects(&pattern).map_err(|e| e.to_string())
    }

    #[test]
    fn token_patterns_map_to_nats_subjects_or_are_refused() {
        assert_eq!(subjects("orders.*.eu"), Ok(vec!["orders.*.eu".to_string()]));
        assert_eq!(subjects("orders.>"), Ok(vec!["orders.>".to_string()]));
        assert_eq!(subjects("#"), Ok(vec![">".to_string()]));
        assert_eq!(subjects("orders.#"), Ok(vec!["orders".to_string(), "orders.>".to_string()]));
        let mid = subjects("a.#.b").err().unwrap_or_default();
        assert!(mid.contains("use * for one token"), "{mid}");
        let glob = subjects("glob:a*").err().unwrap_or_default();
        assert!(glob.contains("no glob patterns"), "{glob}");
        let levels = subjects("a/+/b").err().unwrap_or_default();
        assert!(levels.contains("MQTT filter"), "{levels}");
    }

    #[test]
    fn urls_give_servers_credentials_and_options() {
        let t = parse_url("nats://alice:s%40cret@127.0.0.1:4223,host2?mode=core&ack_wait=2s").ok();
        let t = t.as_ref();
        assert_eq!(
            t.map(|t| t.servers.clone()),
            Some(vec!["nats://127.0.0.1:4223".to_string(), "nats://host2:4222".to_string()])
        );
        assert_eq!(t.map(|t| t.auth.clone()), Some(UrlAuth::UserPassword("alice".into(), "s@cret".into())));
        assert_eq!(t.map(|t| t.options.mode), Some(Mode::Core));
        assert_eq!(t.map(|t| t.options.ack_wait), Some(Duration::from_secs(2)));
        assert_eq!(
            t.map(|t| t.shown.as_str()),
            Some("nats://alice:***@127.0.0.1:4223,host2?mode=core&ack_wait=2s")
        );
        let token = parse_url("tls://t0ken@h").ok();
        assert_eq!(token.as_ref().map(|t| t.auth.clone()), Some(UrlAuth::Token("t0ken".into())));
        assert_eq!(token.map(|t| t.servers), Some(vec!["tls://h:4222".to_string()]));
        for (bad, why) in [
            ("nats://h?mode=fast", "mode \"fast\""),
            ("nats://h?color=red", "unknown option \"color\""),
            ("nats://h:port", "not a number"),
            ("nats://h/path", "no path"),
            ("nats://h?ack_wait=0s", "ack_wait"),
        ] {
            let err = parse_url(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn stream_names_refuse_what_nats_refuses() {
        assert!(is_stream_name("ORDERS"));
        assert!(is_stream_name("orders-eu_1"));
        for bad in ["orders.eu", "a*", "a>", "a b", "", "a/b"] {
            assert!(!is_stream_name(bad), "{bad}");
        }
    }

    #[test]
    fn advisories_read_as_sentences() {
        let max = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"S","consumer":"C","stream_seq":7,"deliveries":3}"#;
        let text = advisory_text(max);
        assert!(
            text.contains("message 7 of stream S reached max deliver (3 deliveries) on consumer C"),
            "{text}"
        );
        let term = br#"{"type":"io.nats.jetstream.advisory.v1.terminated","stream":"S","consumer":"C","stream_seq":2,"reason":"bad"}"#;
        assert!(advisory_text(term).contains("message 2 of stream S was terminated on consumer C (bad)"));
    }

    #[test]
    fn received_headers_give_back_key_msg_id_and_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(KEY_HEADER, "k1");
        h.insert(MSG_ID_HEADER, "id-9");
        h.insert("trace", "abc");
        let m = to_message(None, "orders.eu", Some(&h), Bytes::from_static(b"x"), 0, Timestamp::ZERO);
        let m = m.as_ref();
        assert_eq!(m.and_then(|m| m.key()).map(|k| k.as_ref()), Some(&b"k1"[..]));
        assert_eq!(m.and_then(|m| m.msg_id()), Some("id-9"));
        assert_eq!(m.map(|m| m.headers().get("trace").cloned()), Some(Some("abc".to_string())));
        assert_eq!(m.map(|m| m.headers().len()), Some(1));
        let odd = to_message(None, "a..b", None, Bytes::new(), 0, Timestamp::ZERO);
        assert_eq!(odd.as_ref().map(|m| m.subject().as_str()), Some("$nats.subject"));
        assert_eq!(odd.map(|m| m.headers().get("nats-subject").cloned()), Some(Some("a..b".to_string())));
    }
}
