//! The MQTT backend (3.1.1, and 5 with `?version=5`, on `rumqttc`): publish with a QoS and the retain
//! flag, live subscriptions on MQTT topic filters, durable subscriptions as persistent sessions, and on
//! MQTT 5 user properties as headers (plus `content-type` and `mqtt-message-expiry`).
//!
//! How names map: an MQTT topic is a name as it is (`sensors/kitchen/temp` is one token with `/` in
//! it), so topics read naturally. Filters: `sensors/+/temp` and `sensors/#` are MQTT level filters,
//! `*` alone is `+` and `#` or `>` alone is `#`; `.`-token wildcards and `glob:` have no MQTT meaning
//! and are refused with that advice.
//!
//! A durable subscription is a persistent session: its own connection with the subscription's name as
//! client id and clean session off, subscribed at QoS 1, acking each message only when the caller
//! settles it, so what arrives while it is away waits in the broker. MQTT has no history beyond
//! retained messages, no lag figures and no seek; the capabilities say so.
//!
//! The task that polls a connection's event loop never publishes or subscribes through the client
//! (a full request channel would deadlock it, a known `rumqttc` trap); it only forwards what arrives.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::kit::{Backoff, Forwarder};
use super::url::BrokerUrl;
use super::{
    AckToken, Broker, BrokerDelivery, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream,
    ItemSource, Settle, StreamItem, SubscribeRequest,
};
use crate::model::{
    Headers, Message, MessageExtra, Name, Pattern, PatternToken, PublishOption, PublishOptions,
    PublishReceipt, PublishRequest, Timestamp,
};

mod wire;

pub use wire::{CONTENT_TYPE_HEADER, EXPIRY_HEADER};
use wire::{Client, Ev, Held, LinkOptions, Loop, LoopError, Version};

/// Header on received messages that were retained by the broker.
pub const RETAINED_HEADER: &str = "mqtt-retained";

/// Largest packet accepted or sent; Mosquitto's own default limit is far above rumqttc's 10 KiB.
const MAX_PACKET: usize = 256 << 20;

/// The query part of an MQTT URL.
#[derive(Debug, Clone, PartialEq)]
struct UrlOptions {
    qos: QoS,
    keep_alive: Duration,
    client_id: Option<String>,
    /// Skip retained messages when subscribing.
    no_retained: bool,
    /// The last will: published by the broker for us if the connection dies without a DISCONNECT.
    will: Option<(String, String, bool)>,
    version: Version,
    /// A PEM file of extra trusted certificates for `mqtts://` (a private CA).
    ca: Option<std::path::PathBuf>,
}

impl UrlOptions {
    fn parse(url: &BrokerUrl) -> Result<UrlOptions, BrokerError> {
        let mut o = url.options();
        let qos = match o.choice("qos", &["0", "1", "2"])? {
            Some(q) => parse_qos(q).map_err(|e| url.invalid(e))?,
            None => QoS::AtMostOnce,
        };
        let keep_alive = o.duration("keep_alive")?.unwrap_or(Duration::from_secs(30));
        let client_id = o.text("client_id");
        let no_retained = o.flag("retained")? == Some(false);
        let will_topic = o.text("will_topic");
        let will_payload = o.text("will_payload").unwrap_or_default();
        let will_retain = o.flag("will_retain")?.unwrap_or(false);
        let ca = o.text("ca").map(std::path::PathBuf::from);
        let version = match o.choice_among("version", &["3.1.1", "4", "311", "5", "5.0"], &["3.1.1", "5"])? {
            Some("5" | "5.0") => Version::V5,
            _ => Version::V311,
        };
        o.finish()?;
        let will = match will_topic {
            Some(topic) => Some((topic, will_payload, will_retain)),
            None if !will_payload.is_empty() || will_retain => {
                return Err(url.invalid("will_payload and will_retain need a will_topic"));
            }
            None => None,
        };
        Ok(UrlOptions { qos, keep_alive, client_id, no_retained, will, version, ca })
    }
}

fn parse_qos(value: &str) -> Result<QoS, String> {
    match value {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        "2" => Ok(QoS::ExactlyOnce),
        _ => Err(format!("qos \"{value}\": use 0, 1 or 2")),
    }
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    tls: bool,
    credentials: Option<(String, String)>,
    shown: String,
}

fn parse_url(url: &str) -> Result<(Target, UrlOptions), BrokerError> {
    let parsed = BrokerUrl::parse(url)?;
    let tls = match parsed.scheme.as_str() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(parsed.invalid(format!("scheme {other}: use mqtt:// or mqtts://"))),
    };
    if parsed.fragment.is_some() {
        return Err(parsed.invalid("no #fragment options on MQTT URLs (TLS is always verified)"));
    }
    let Some((host, port)) = parsed.addresses(if tls { 8883 } else { 1883 }).into_iter().next() else {
        return Err(parsed.invalid("it names no host"));
    };
    let credentials = parsed.user.clone().map(|user| (user, parsed.password.clone().unwrap_or_default()));
    let options = UrlOptions::parse(&parsed)?;
    Ok((Target { host, port, tls, credentials, shown: parsed.to_string() }, options))
}

/// MQTT filter matching of a raw topic (a literal filter is an exact topic).
fn topic_matches(filter: &str, topic: &str) -> bool {
    if filter.contains(['+', '#']) {
        crate::model::name::levels_match(filter, topic)
    } else {
        filter == topic
    }
}

/// The MQTT filter for a pattern, or why there is none.
pub fn filter_for(pattern: &Pattern) -> Result<String, BrokerError> {
    let refuse = |why: &str| {
        BrokerError::Invalid(format!(
            "pattern \"{}\" {why}; MQTT filters use '/' levels: sensors/+/temp, sensors/#",
            pattern.as_str()
        ))
    };
    if pattern.is_glob() {
        return Err(refuse("is a glob"));
    }
    if let Some(literal) = pattern.literal() {
        // A broker drops the connection of a client that sends a wildcard inside a level.
        if literal.split('/').any(|l| l != "+" && l != "#" && (l.contains('+') || l.contains('#'))) {
            return Err(refuse(
                "puts + or # inside a level (they are wildcards and must fill a whole level)",
            ));
        }
        return Ok(literal.to_string());
    }
    let Pattern::Tokens(tokens) = pattern else {
        return Err(refuse("has no MQTT form"));
    };
    match tokens.tokens() {
        [PatternToken::One] => Ok("+".into()),
        [PatternToken::ZeroOrMore] | [PatternToken::OneOrMore] => Ok("#".into()),
        [PatternToken::Levels(filter)] => Ok(filter.to_string()),
        _ => Err(refuse("uses '.'-token wildcards")),
    }
}

/// A publish waiting for the broker (QoS 1/2) or the socket (QoS 0) to take it.
struct Waiter {
    qos: QoS,
    done: oneshot::Sender<Result<(), String>>,
}

/// What the event loop task and the broker handle share.
#[derive(Default)]
struct Shared {
    /// Live subscriptions: filter → senders.
    routes: Vec<(String, Pattern, Forwarder)>,
    /// Publishes handed to the client, in order, until the event loop sends them.
    unsent: VecDeque<Waiter>,
    /// Sent QoS 1/2 publishes by packet id, until acked.
    unacked: HashMap<u16, oneshot::Sender<Result<(), String>>>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An MQTT broker.
pub struct MqttBroker {
    target: Target,
    options: UrlOptions,
    client: Client,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<ConnectionEvent>,
    next_id: AtomicU64,
    /// The connections' event-loop tasks, awaited by `close` until their DISCONNECT has left.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Persistent sessions this broker opened (their clients are in `sessions()`).
    session_names: Mutex<Vec<String>>,
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBroker").field("url", &self.target.shown).finish()
    }
}

fn link_options(
    target: &Target,
    options: &UrlOptions,
    client_id: &str,
    clean: bool,
    manual_acks: bool,
) -> Result<LinkOptions, BrokerError> {
    // The last will belongs to the command's own connection; a persistent session's connection
    // closing is not the command dying.
    let with_will = clean;
    let tls = match target.tls {
        true => Some(
            tls_config(options.ca.as_deref())
                .map_err(|reason| BrokerError::Unreachable { url: target.shown.clone(), reason })?,
        ),
        false => None,
    };
    Ok(LinkOptions {
        version: options.version,
        client_id: client_id.to_string(),
        host: target.host.clone(),
        port: target.port,
        keep_alive: options.keep_alive.max(Duration::from_secs(5)),
        clean,
        manual_acks,
        credentials: target.credentials.clone(),
        tls,
        will: options
            .will
            .clone()
            .filter(|_| with_will)
            .map(|(topic, payload, retain)| (topic, payload, options.qos, retain)),
        max_packet: MAX_PACKET,
    })
}

/// TLS checked against the system's roots (the same ones `rediss://` uses), plus the certificates in
/// `?ca=FILE` for a broker with a private CA.
fn tls_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("ca {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("ca {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Turns a connection failure into the error a user can act on (exit 3 unreachable, 5 refused).
fn connect_error(shown: &str, e: LoopError) -> BrokerError {
    match e {
        LoopError::Refused { auth: true, code } => BrokerError::Auth {
            url: shown.to_string(),
            reason: format!("the broker refused the login ({code})"),
        },
        LoopError::Refused { auth: false, code } => {
            BrokerError::Unreachable { url: shown.to_string(), reason: format!("connection refused: {code}") }
        }
        LoopError::Done => {
            BrokerError::Unreachable { url: shown.to_string(), reason: "client closed".into() }
        }
        LoopError::Other(reason) => BrokerError::Unreachable { url: shown.to_string(), reason },
    }
}

/// Polls until the broker answers CONNECT, so refusals and bad credentials surface at once.
async fn handshake(eventloop: &mut Loop, shown: &str) -> Result<bool, BrokerError> {
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Ev::ConnAck(session_present)) => return Ok(session_present),
                Ok(_) => {}
                Err(e) => return Err(connect_error(shown, e)),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait).await.map_err(|_| BrokerError::Unreachable {
        url: shown.to_string(),
        reason: "no answer within 5 s".into(),
    })?
}

fn client_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::fill(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{}-{suffix}", std::process::id())
}

impl MqttBroker {
    /// Connects and waits for the broker's CONNACK.
    pub async fn connect(url: &str) -> Result<MqttBroker, BrokerError> {
        let (target, options) = parse_url(url.trim())?;
        let id = options.client_id.clone().unwrap_or_else(|| client_id("pubsub"));
        let (client, mut eventloop) = wire::link(link_options(&target, &options, &id, true, false)?);
        handshake(&mut eventloop, &target.shown).await?;
        let (events, _) = broadcast::channel(16);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task =
            tokio::spawn(run_shared(eventloop, shared.clone(), events.clone(), client.clone(), options.qos));
        Ok(MqttBroker {
            target,
            options,
            client,
            shared,
            events,
            next_id: AtomicU64::new(1),
            tasks: Mutex::new(vec![task]),
            session_names: Mutex::new(Vec::new()),
        })
    }

    fn qos_of(&self, options: &PublishOptions) -> Result<QoS, BrokerError> {
        match options.qos {
            Some(v) => parse_qos(&v.to_string()).map_err(BrokerError::Invalid),
            None => Ok(self.options.qos),
        }
    }

    async fn send(&self, msg: PublishRequest) -> Result<oneshot::Receiver<Result<(), String>>, BrokerError> {
        self.check_options(&msg)?;
        let qos = self.qos_of(&msg.options)?;
        let retain = msg.options.retain;
        if msg.subject.as_str().contains(['+', '#']) {
            // A broker drops the connection of a client that publishes to one.
            return Err(BrokerError::Invalid(format!(
                "\"{}\": MQTT topic names cannot contain + or # (they are filter wildcards)",
                msg.subject
            )));
        }
        if msg.key.is_some() {
            return Err(BrokerError::Invalid(
                "MQTT has no message keys; put the key in the topic or payload".into(),
            ));
        }
        if !msg.headers.is_empty() && self.client.version() == Version::V311 {
            return Err(BrokerError::Invalid(
                "MQTT 3.1.1 has no headers; connect with ?version=5 to send them as user properties".into(),
            ));
        }
        let (done, wait) = oneshot::channel();
        // The waiter goes in before the request so the event loop finds it when the packet leaves.
        lock(&self.shared).unsent.push_back(Waiter { qos, done });
        let topic = msg.subject.as_str().to_string();
        if let Err(reason) = self.client.publish(topic, qos, retain, msg.payload, &msg.headers).await {
            lock(&self.shared).unsent.pop_back();
            return Err(BrokerError::Disconnected { url: self.target.shown.clone(), reason });
        }
        Ok(wait)
    }

    async fn settled(&self, wait: oneshot::Receiver<Result<(), String>>) -> Result<(), BrokerError> {
        let limit = Duration::from_secs(30);
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(BrokerError::Disconnected { url: self.target.shown.clone(), reason }),
            Ok(Err(_)) => Err(BrokerError::Disconnected {
                url: self.target.shown.clone(),
                reason: "the connection closed before the broker took the message".into(),
            }),
            Err(_) => Err(BrokerError::Timeout(limit)),
        }
    }
}

/// The shared connection's event loop: forwards publishes to live subscriptions, completes publish
/// waiters, reports drops and recoveries, and asks for the subscriptions again after a reconnect.
async fn run_shared(
    mut eventloop: Loop,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<ConnectionEvent>,
    client: Client,
    qos: QoS,
) {
    let mut down = false;
    let mut backoff = Backoff::new();
    loop {
        // Each route's forwarder reports its drops from a task of its own as soon as its reader has room.
        match eventloop.poll().await {
            Ok(Ev::Publish(p)) => {
                let topic = p.topic.clone();
                let message = to_message(&p.topic, p.retain, p.payload, p.headers);
                let mut routes = std::mem::take(&mut lock(&shared).routes);
                routes.retain_mut(|(filter, _, forward)| {
                    // Routed by MQTT's own matching on the raw topic, so `.` in a topic is just a character.
                    if !topic_matches(filter, &topic) {
                        return !forward.is_closed();
                    }
                    let Some(message) = &message else {
                        // A topic no name can hold (e.g. with spaces): said, not dropped silently.
                        return forward.offer(StreamItem::Lagged { skipped: 1 }).open();
                    };
                    forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(message.clone()))).open()
                });
                let mut guard = lock(&shared);
                routes.append(&mut guard.routes);
                guard.routes = routes;
            }
            Ok(Ev::Sent(pkid)) => {
                let mut guard = lock(&shared);
                if let Some(waiter) = guard.unsent.pop_front() {
                    if waiter.qos == QoS::AtMostOnce {
                        let _ = waiter.done.send(Ok(()));
                    } else {
                        guard.unacked.insert(pkid, waiter.done);
                    }
                }
            }
            Ok(Ev::Acked(pkid)) => {
                if let Some(done) = lock(&shared).unacked.remove(&pkid) {
                    let _ = done.send(Ok(()));
                }
            }
            Ok(Ev::Rejected(pkid, reason)) => {
                if let Some(done) = lock(&shared).unacked.remove(&pkid) {
                    let _ = done.send(Err(format!("the broker refused the message: {reason}")));
                }
            }
            Ok(Ev::Closed) => return,
            Ok(Ev::ConnAck(_)) if down => {
                down = false;
                backoff.reset();
                let filters: Vec<String> = lock(&shared).routes.iter().map(|(f, _, _)| f.clone()).collect();
                let client = client.clone();
                // Resubscribing goes through the request channel, so it runs on its own task.
                tokio::spawn(async move {
                    for filter in filters {
                        let _ = client.subscribe(filter, qos).await;
                    }
                });
                let _ = events.send(ConnectionEvent::Reconnected);
            }
            Ok(_) => {}
            Err(LoopError::Done) => return,
            Err(e) => {
                let reason = match e {
                    LoopError::Refused { code, .. } => format!("connection refused: {code}"),
                    LoopError::Other(reason) => reason,
                    LoopError::Done => String::new(),
                };
                if !down {
                    down = true;
                    let _ = events.send(ConnectionEvent::Disconnected { reason: reason.clone() });
                }
                // Publishes in flight on the lost connection are failed rather than left hanging;
                // QoS 1/2 ones are resent by rumqttc on reconnect but their waiters are gone.
                {
                    let mut guard = lock(&shared);
                    // MQTT 3.1.1 has no way to say "too large": a broker just closes the connection.
                    let why = format!(
                        "the connection closed before the broker took the message ({reason}); a broker also \
                         does this to a message over its maximum packet size"
                    );
                    // Every waiting publish fails: the request that broke the connection (one over the
                    // broker's size limit) is gone, and sent-but-unacked ones went with the clean session.
                    // A publish that rumqttc still sends after a reconnect is then reported as failed
                    // although it arrived (at-least-once: a retry may duplicate it).
                    for waiter in guard.unsent.drain(..) {
                        let _ = waiter.done.send(Err(why.clone()));
                    }
                    for (_, done) in guard.unacked.drain() {
                        let _ = done.send(Err(why.clone()));
                    }
                }
                backoff.wait().await;
            }
        }
    }
}

/// A message from an MQTT publish; `None` for a topic that is not a valid name (never expected from a
/// conforming broker, and dropped rather than passed on malformed).
fn to_message(topic: &str, retained: bool, payload: Bytes, mut headers: Headers) -> Option<Message> {
    let name = Name::new(topic).or_else(|_| Name::system(topic)).ok()?;
    if retained {
        headers.insert(RETAINED_HEADER.into(), "true".into());
    }
    let extra = MessageExtra::pack(None, None, headers);
    let now = Timestamp::from_micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
    );
    Some(Message::new(name.clone(), 0, 0, now, name, extra, payload))
}

/// A live subscription on the shared connection.
struct LiveSource {
    rx: mpsc::Receiver<Result<StreamItem, BrokerError>>,
    skip_retained: bool,
}

#[async_trait]
impl ItemSource for LiveSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let item = self.rx.recv().await?;
            if self.skip_retained && is_retained(&item) {
                continue;
            }
            return Some(item);
        }
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let item = self.rx.try_recv().ok()?;
            if self.skip_retained && is_retained(&item) {
                continue;
            }
            return Some(item);
        }
    }
}

fn is_retained(item: &Result<StreamItem, BrokerError>) -> bool {
    matches!(item, Ok(StreamItem::Delivery(d)) if d.message.headers().contains_key(RETAINED_HEADER))
}

/// A persistent session: its own connection, QoS 1, acks only when the caller settles.
struct SessionSource {
    rx: mpsc::Receiver<Result<StreamItem, BrokerError>>,
}

#[async_trait]
impl ItemSource for SessionSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.recv().await
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.try_recv().ok()
    }
}

/// Sessions by subscription name, so a settle finds the client that must send the PUBACK.
/// Open persistent sessions by client id: the connection, what it holds unacked, and which opening of
/// the session it is (a task that outlives its session must not touch the one that replaced it).
type Sessions = Arc<Mutex<HashMap<String, (Client, HashMap<u64, Held>, u64)>>>;

/// Numbers the openings of sessions.
static SESSION_OPENINGS: AtomicU64 = AtomicU64::new(1);

fn sessions() -> &'static Sessions {
    static SESSIONS: std::sync::OnceLock<Sessions> = std::sync::OnceLock::new();
    SESSIONS.get_or_init(Sessions::default)
}

#[async_trait]
impl Broker for MqttBroker {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn url(&self) -> String {
        self.target.shown.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // A persistent session's messages wait for it (QoS 1/2); a PUBACK settles one; the broker keeps
        // one retained message per topic. No history, lag, nack or topic listing.
        let caps = Capabilities::of(&[
            Capability::Ack,
            Capability::Term,
            Capability::Retain,
            Capability::Patterns,
            Capability::Persistence,
        ]);
        if self.options.version == Version::V5 { caps.with(&[Capability::Headers]) } else { caps }
    }

    fn publish_options(&self) -> &'static [PublishOption] {
        &[PublishOption::Qos, PublishOption::Retain]
    }

    fn why_not(&self, capability: Capability) -> &'static str {
        match capability {
            Capability::Nack | Capability::NackDelay | Capability::Extend => {
                "MQTT cannot give a message back or hold it longer: one not acked is sent again only when the session reconnects"
            }
            Capability::Headers => "MQTT 3.1.1 has no user properties; use ?version=5",
            Capability::Replay | Capability::Seek => {
                "MQTT keeps no history, only one retained message per topic"
            }
            Capability::Lag | Capability::Peek => "MQTT brokers report no per-subscriber backlog",
            Capability::TopicAdmin => {
                "MQTT topics exist while someone publishes; they cannot be listed or made"
            }
            Capability::CompetingConsumers => "shared subscriptions ($share/GROUP/…) are not supported yet",
            _ => "",
        }
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        let topic = msg.subject.clone();
        let wait = self.send(msg).await?;
        self.settled(wait).await?;
        Ok(PublishReceipt { topic: Some(topic), partition: 0, seq: 0, taps: 0, duplicate: false })
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut waits = Vec::with_capacity(msgs.len());
        for (index, msg) in msgs.into_iter().enumerate() {
            let topic = msg.subject.clone();
            let wait = self.send(msg).await.map_err(|e| BrokerError::Batch { index, source: Box::new(e) })?;
            waits.push((topic, wait));
        }
        let mut receipts = Vec::with_capacity(waits.len());
        for (index, (topic, wait)) in waits.into_iter().enumerate() {
            self.settled(wait).await.map_err(|e| BrokerError::Batch { index, source: Box::new(e) })?;
            receipts.push(PublishReceipt {
                topic: Some(topic),
                partition: 0,
                seq: 0,
                taps: 0,
                duplicate: false,
            });
        }
        Ok(receipts)
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        if req.from.is_some() {
            return Err(BrokerError::Invalid(
                "MQTT keeps no history: only the retained message of each topic arrives on subscribe".into(),
            ));
        }
        let filters = req.patterns.iter().map(filter_for).collect::<Result<Vec<_>, _>>()?;
        if let Some(name) = &req.subscription {
            return self.subscribe_session(name, &req, filters).await;
        }
        let (tx, rx) = mpsc::channel(req.prefetch.unwrap_or(4096).max(16) as usize);
        {
            let mut guard = lock(&self.shared);
            for (filter, pattern) in filters.iter().zip(&req.patterns) {
                guard.routes.push((
                    filter.clone(),
                    pattern.clone(),
                    Forwarder::new(tx.clone(), Some(self.events.clone())).with_reporter(),
                ));
            }
        }
        for filter in filters {
            self.client.subscribe(filter, self.options.qos).await.map_err(|e| BrokerError::Disconnected {
                url: self.target.shown.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(DeliveryStream::new(Box::new(LiveSource { rx, skip_retained: self.options.no_retained })))
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        // MQTT cannot give a message back or extend a lease: without its PUBACK the broker redelivers it
        // when the session reconnects. Only an ack (or term) takes the message out of `held`.
        self.check_settle(&how)?;
        let (client, publish) = {
            let mut all = sessions().lock().unwrap_or_else(PoisonError::into_inner);
            let Some((client, held, _)) = all.get_mut(token.subscription.as_str()) else {
                return Err(BrokerError::Invalid(format!("no open session {}", token.subscription)));
            };
            (client.clone(), held.remove(&token.lease))
        };
        let Some(publish) = publish else {
            return Ok(()); // settled already
        };
        client
            .ack(&publish)
            .await
            .map_err(|reason| BrokerError::Disconnected { url: self.target.shown.clone(), reason })
    }

    async fn close(&self) {
        // DISCONNECT on every connection this broker opened: what was queued before it (acks) leaves
        // first, and the broker does not publish the last will.
        self.client.try_disconnect();
        let names = std::mem::take(&mut *self.session_names.lock().unwrap_or_else(PoisonError::into_inner));
        for name in names {
            let client = sessions()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .map(|(c, _, _)| c.clone());
            if let Some(client) = client {
                client.try_disconnect();
            }
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let all = futures_util::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }
}

impl MqttBroker {
    /// Opens the persistent session named after the subscription and subscribes it at QoS 1.
    async fn subscribe_session(
        &self,
        name: &Name,
        req: &SubscribeRequest,
        filters: Vec<String>,
    ) -> Result<DeliveryStream, BrokerError> {
        let (client, mut eventloop) =
            wire::link(link_options(&self.target, &self.options, name.as_str(), false, true)?);
        handshake(&mut eventloop, &self.target.shown).await?;
        for filter in filters {
            // Queued before the event loop runs again, so nothing is published from its task.
            client.subscribe(filter, QoS::AtLeastOnce).await.map_err(|e| BrokerError::Disconnected {
                url: self.target.shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let opening = SESSION_OPENINGS.fetch_add(1, Ordering::Relaxed);
        sessions()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.as_str().to_string(), (client.clone(), HashMap::new(), opening));
        let (tx, rx) = mpsc::channel(req.prefetch.unwrap_or(256).max(1) as usize);
        let subscription = name.clone();
        let events = self.events.clone();
        let skip_retained = self.options.no_retained;
        let counter = Arc::new(AtomicU64::new(self.next_id.fetch_add(1_000_000, Ordering::Relaxed)));
        self.session_names.lock().unwrap_or_else(PoisonError::into_inner).push(name.as_str().to_string());
        let resubscribe: Vec<String> = req.patterns.iter().filter_map(|p| filter_for(p).ok()).collect();
        let task = tokio::spawn(async move {
            let mut down = false;
            let mut backoff = Backoff::new();
            loop {
                match eventloop.poll().await {
                    Ok(Ev::Publish(p)) => {
                        let p = *p;
                        if skip_retained && p.retain {
                            client.try_ack(&p.held);
                            continue;
                        }
                        let Some(message) = to_message(&p.topic, p.retain, p.payload.clone(), p.headers)
                        else {
                            // A topic no name can hold: acked so it does not come back forever, and said.
                            client.try_ack(&p.held);
                            let _ = tx.send(Ok(StreamItem::Lagged { skipped: 1 })).await;
                            continue;
                        };
                        let lease = counter.fetch_add(1, Ordering::Relaxed);
                        let attempt = if p.dup { 2 } else { 1 };
                        if let Some((_, held, _)) = sessions()
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_mut(subscription.as_str())
                            .filter(|(_, _, o)| *o == opening)
                        {
                            held.insert(lease, p.held);
                        }
                        let token = AckToken {
                            subscription: subscription.clone(),
                            partition: 0,
                            seq: 0,
                            lease,
                            reply: None,
                        };
                        let delivery = BrokerDelivery {
                            message,
                            attempt: Some(attempt),
                            deadline: None,
                            token: Some(token),
                        };
                        if tx.send(Ok(StreamItem::Delivery(delivery))).await.is_err() {
                            break;
                        }
                    }
                    Ok(Ev::ConnAck(session_present)) if down => {
                        down = false;
                        backoff.reset();
                        if !session_present {
                            // The broker lost the session (restarted without persistence, or it expired):
                            // subscribe again, from another task since this one polls the event loop.
                            let (client, filters) = (client.clone(), resubscribe.clone());
                            tokio::spawn(async move {
                                for filter in filters {
                                    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                                }
                            });
                        }
                        let _ = events.send(ConnectionEvent::Reconnected);
                    }
                    Ok(Ev::Closed) => break,
                    Ok(_) => {}
                    Err(LoopError::Done) => break,
                    Err(e) => {
                        if !down {
                            down = true;
                            let reason = match e {
                                LoopError::Refused { code, .. } => format!("connection refused: {code}"),
                                LoopError::Other(reason) => reason,
                                LoopError::Done => String::new(),
                            };
                            let _ = events.send(ConnectionEvent::Disconnected { reason });
                        }
                        if tx.is_closed() {
                            break;
                        }
                        backoff.wait().await;
                    }
                }
            }
            // The consumer went away: close the session's connection, leaving the session on the broker.
            client.try_disconnect();
            let mut all = sessions().lock().unwrap_or_else(PoisonError::into_inner);
            if all.get(subscription.as_str()).is_some_and(|(_, _, o)| *o == opening) {
                all.remove(subscription.as_str());
            }
        });
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
        Ok(DeliveryStream::new(Box::new(SessionSource { rx })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_credentials_and_options() {
        let (t, o) = parse_url("mqtt://alice:s%40cret@broker.lan:1884/?qos=1&keep_alive=10s").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("broker.lan", 1884, false));
        assert_eq!(t.credentials, Some(("alice".into(), "s@cret".into())));
        assert_eq!(t.shown, "mqtt://alice:***@broker.lan:1884?qos=1&keep_alive=10s");
        assert_eq!((o.qos, o.keep_alive), (QoS::AtLeastOnce, Duration::from_secs(10)));
        let (t, _) = parse_url("mqtts://host").unwrap();
        assert_eq!((t.port, t.tls), (8883, true));
        assert!(parse_url("mqtt://host?qos=3").is_err());
        assert_eq!(parse_url("mqtt://host?version=5").unwrap().1.version, Version::V5);
        assert!(parse_url("mqtt://host?version=6").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
    }

    #[test]
    fn patterns_map_to_mqtt_filters_or_are_refused() {
        let f = |p: &str| filter_for(&Pattern::parse(p).unwrap());
        assert_eq!(f("sensors/kitchen/temp").unwrap(), "sensors/kitchen/temp");
        assert_eq!(f("sensors/+/temp").unwrap(), "sensors/+/temp");
        assert_eq!(f("sensors/#").unwrap(), "sensors/#");
        assert_eq!(f("*").unwrap(), "+");
        assert_eq!(f("#").unwrap(), "#");
        assert_eq!(f(">").unwrap(), "#");
        // The wildcards of '.' patterns, written in '/' levels, mean MQTT's own.
        assert_eq!(f("sensors/kitchen/*").unwrap(), "sensors/kitchen/+");
        assert_eq!(f("sensors/*/temp").unwrap(), "sensors/+/temp");
        assert_eq!(f("sensors/>").unwrap(), "sensors/#");
        assert!(Pattern::parse("sensors/>/temp").is_err());
        assert!(f("orders.*").unwrap_err().to_string().contains("'/' levels"));
        assert!(f("glob:a*").is_err());
    }
}
