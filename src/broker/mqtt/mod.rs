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

//!
//! The files: `url.rs` (URL, options, filters), `live.rs` (the shared connection's event loop and live
//! subscriptions), `session.rs` (persistent sessions), `wire.rs` (MQTT 3.1.1 and 5 clients); here the
//! broker, connecting, publishing and the `Broker` impl.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{broadcast, oneshot};

use super::{
    AckToken, Broker, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream, Settle,
    SubscribeRequest,
};
use crate::model::{
    Headers, Message, MessageExtra, Name, PublishOption, PublishOptions, PublishReceipt, PublishRequest,
    Timestamp,
};

mod live;
mod session;
mod url;
mod wire;

use live::{Shared, Waiter, lock, run_shared};
pub use url::filter_for;
use url::{Target, UrlOptions, parse_qos, parse_url};
pub use wire::{CONTENT_TYPE_HEADER, EXPIRY_HEADER};
use wire::{Client, Ev, LinkOptions, Loop, LoopError, Version};

/// Header on received messages that were retained by the broker.
pub const RETAINED_HEADER: &str = "mqtt-retained";

/// Largest packet accepted or sent; Mosquitto's own default limit is far above rumqttc's 10 KiB.
const MAX_PACKET: usize = 256 << 20;

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
            crate::broker::kit::tls::verified(options.ca.as_deref())
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
            Capability::Nack | Capability::NackDelay | Capability::Extend | Capability::AckDeadline => {
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
        Ok(PublishReceipt { topic: Some(topic), ..PublishReceipt::default() })
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
            receipts.push(PublishReceipt { topic: Some(topic), ..PublishReceipt::default() });
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
        self.subscribe_live(&req, filters).await
    }

    /// `subs delete NAME`: ends the persistent session NAME (what waits in it goes with it).
    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.end_session(name).await
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        // MQTT cannot give a message back or extend a lease: without its PUBACK the broker redelivers it
        // when the session reconnects. Only an ack (or term) takes the message out of `held`.
        self.check_settle(&how)?;
        self.ack_held(token).await
    }

    async fn close(&self) {
        // DISCONNECT on every connection this broker opened: what was queued before it (acks) leaves
        // first, and the broker does not publish the last will.
        self.client.try_disconnect();
        self.disconnect_sessions();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let all = futures_util::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }
}
