//! MQTT 3.1.1 and MQTT 5 behind one face. `rumqttc` has a client per protocol version with the same
//! shape but different types; the backend talks to these enums instead, and MQTT 5 properties become
//! headers on the way in and go back to properties on the way out.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5 as m5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{NetworkOptions, QoS, Transport};

use crate::model::Headers;

/// Header for an MQTT 5 message's content type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// Header for an MQTT 5 message's expiry interval, in seconds.
pub const EXPIRY_HEADER: &str = "mqtt-message-expiry";

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

/// How to open one connection.
pub struct LinkOptions {
    pub version: Version,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    /// Clean session (3.1.1) / clean start (5); off for persistent sessions.
    pub clean: bool,
    pub manual_acks: bool,
    pub credentials: Option<(String, String)>,
    pub tls: Option<rustls::ClientConfig>,
    pub will: Option<(String, String, QoS, bool)>,
    pub max_packet: usize,
}

/// The client half: requests to the event loop.
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(m5::AsyncClient),
}

/// The event-loop half.
pub enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<m5::EventLoop>),
}

/// A received publish as the broker sent it, kept to acknowledge it later.
#[derive(Debug, Clone)]
pub enum Held {
    V4(rumqttc::Publish),
    V5(p5::Publish),
}

/// A received publish in version-free terms.
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub dup: bool,
    pub headers: Headers,
    pub held: Held,
}

/// What the event loop reports.
pub enum Ev {
    Publish(Box<Received>),
    /// A publish left with this packet id (0 at QoS 0).
    Sent(u16),
    /// The broker acknowledged (PUBACK or PUBCOMP) this packet id.
    Acked(u16),
    /// CONNACK; whether the broker kept a session.
    ConnAck(bool),
    /// The broker refused a publish (MQTT 5 reason code) with this packet id.
    Rejected(u16, String),
    /// Our DISCONNECT left: the connection is closing cleanly.
    Closed,
    Other,
}

/// Why the event loop stopped for now.
pub enum LoopError {
    /// The broker refused the connection; `auth` when for credentials.
    Refused { auth: bool, code: String },
    /// The client side was dropped: stop polling.
    Done,
    /// Anything else (network, protocol); polling again reconnects.
    Other(String),
}

fn qos5(q: QoS) -> m5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => m5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => m5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn no_delay() -> NetworkOptions {
    // Small packets go out at once: with Nagle's algorithm a QoS 1 publish and its PUBACK wait for the
    // peer's delayed ACK, about 40 ms each.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network
}

/// Opens the two halves of a connection (nothing is sent until the loop is polled).
pub fn link(o: LinkOptions) -> (Client, Loop) {
    let transport = o.tls.map(|config| Transport::tls_with_config(config.into()));
    match o.version {
        Version::V311 => {
            let mut m = rumqttc::MqttOptions::new(o.client_id, o.host, o.port);
            m.set_keep_alive(o.keep_alive).set_clean_session(o.clean).set_manual_acks(o.manual_acks);
            m.set_max_packet_size(o.max_packet, o.max_packet);
            if let Some((user, pass)) = o.credentials {
                m.set_credentials(user, pass);
            }
            if let Some((topic, payload, qos, retain)) = o.will {
                m.set_last_will(rumqttc::LastWill::new(topic, payload, qos, retain));
            }
            if let Some(t) = transport {
                m.set_transport(t);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(m, 1024);
            eventloop.set_network_options(no_delay());
            (Client::V4(client), Loop::V4(Box::new(eventloop)))
        }
        Version::V5 => {
            let mut m = m5::MqttOptions::new(o.client_id, o.host, o.port);
            m.set_keep_alive(o.keep_alive).set_clean_start(o.clean).set_manual_acks(o.manual_acks);
            m.set_max_packet_size(Some(u32::try_from(o.max_packet).unwrap_or(u32::MAX)));
            if !o.clean {
                // MQTT 5 ends a session at disconnect unless it is given an expiry.
                m.set_session_expiry_interval(Some(u32::MAX));
            }
            if let Some((user, pass)) = o.credentials {
                m.set_credentials(user, pass);
            }
            if let Some((topic, payload, qos, retain)) = o.will {
                m.set_last_will(p5::LastWill::new(topic, payload.into_bytes(), qos5(qos), retain, None));
            }
            if let Some(t) = transport {
                m.set_transport(t);
            }
            m.set_network_options(no_delay());
            let (client, eventloop) = m5::AsyncClient::new(m, 1024);
            (Client::V5(client), Loop::V5(Box::new(eventloop)))
        }
    }
}

/// Headers → MQTT 5 properties: `content-type` and `mqtt-message-expiry` have their own fields, the rest
/// are user properties.
fn properties(headers: &Headers) -> Result<p5::PublishProperties, String> {
    let mut p = p5::PublishProperties::default();
    for (k, v) in headers {
        match k.as_str() {
            CONTENT_TYPE_HEADER => p.content_type = Some(v.clone()),
            EXPIRY_HEADER => {
                p.message_expiry_interval = Some(
                    v.parse().map_err(|_| format!("{EXPIRY_HEADER} \"{v}\" is not a number of seconds"))?,
                );
            }
            _ => p.user_properties.push((k.clone(), v.clone())),
        }
    }
    Ok(p)
}

fn headers_of(p: Option<&p5::PublishProperties>) -> Headers {
    let mut headers = Headers::new();
    let Some(p) = p else {
        return headers;
    };
    for (k, v) in &p.user_properties {
        headers.insert(k.clone(), v.clone());
    }
    if let Some(ct) = &p.content_type {
        headers.insert(CONTENT_TYPE_HEADER.into(), ct.clone());
    }
    if let Some(expiry) = p.message_expiry_interval {
        headers.insert(EXPIRY_HEADER.into(), expiry.to_string());
    }
    headers
}

impl Client {
    pub fn version(&self) -> Version {
        match self {
            Client::V4(_) => Version::V311,
            Client::V5(_) => Version::V5,
        }
    }

    /// Queues a publish; headers must be empty on 3.1.1 (the caller checks).
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        headers: &Headers,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c.publish_bytes(topic, qos, retain, payload).await.map_err(|e| e.to_string()),
            Client::V5(c) => {
                let props = properties(headers)?;
                c.publish_bytes_with_properties(topic, qos5(qos), retain, payload, props)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub async fn subscribe(&self, filter: String, qos: QoS) -> Result<(), String> {
        match self {
            Client::V4(c) => c.subscribe(filter, qos).await.map_err(|e| e.to_string()),
            Client::V5(c) => c.subscribe(filter, qos5(qos)).await.map_err(|e| e.to_string()),
        }
    }

    pub async fn ack(&self, held: &Held) -> Result<(), String> {
        match (self, held) {
            (Client::V4(c), Held::V4(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V5(c), Held::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            _ => Err("acknowledgement for another protocol version".into()),
        }
    }

    /// Acks without waiting (from the event-loop task, where awaiting the request channel could
    /// deadlock).
    pub fn try_ack(&self, held: &Held) {
        let _ = match (self, held) {
            (Client::V4(c), Held::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V5(c), Held::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Ok(()),
        };
    }

    pub fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl Loop {
    pub async fn poll(&mut self) -> Result<Ev, LoopError> {
        match self {
            Loop::V4(l) => match l.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    Ok(Ev::Publish(Box::new(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        retain: p.retain,
                        dup: p.dup,
                        headers: Headers::new(),
                        held: Held::V4(p),
                    })))
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(a))) => Ok(Ev::Acked(a.pkid)),
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubComp(c))) => Ok(Ev::Acked(c.pkid)),
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(c))) => {
                    Ok(Ev::ConnAck(c.session_present))
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Ok(Ev::Sent(pkid)),
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Ok(Ev::Closed),
                Ok(_) => Ok(Ev::Other),
                Err(rumqttc::ConnectionError::RequestsDone) => Err(LoopError::Done),
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Err(LoopError::Refused {
                    auth: matches!(
                        code,
                        rumqttc::ConnectReturnCode::BadUserNamePassword
                            | rumqttc::ConnectReturnCode::NotAuthorized
                    ),
                    code: format!("{code:?}"),
                }),
                Err(e) => Err(LoopError::Other(e.to_string())),
            },
            Loop::V5(l) => match l.poll().await {
                Ok(m5::Event::Incoming(p5::Packet::Publish(p))) => Ok(Ev::Publish(Box::new(Received {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.clone(),
                    retain: p.retain,
                    dup: p.dup,
                    headers: headers_of(p.properties.as_ref()),
                    held: Held::V5(p),
                }))),
                Ok(m5::Event::Incoming(p5::Packet::PubAck(a))) => Ok(match a.reason {
                    p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => Ev::Acked(a.pkid),
                    reason => Ev::Rejected(a.pkid, format!("{reason:?}")),
                }),
                Ok(m5::Event::Incoming(p5::Packet::PubRec(r))) => Ok(match r.reason {
                    p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers => Ev::Other,
                    reason => Ev::Rejected(r.pkid, format!("{reason:?}")),
                }),
                Ok(m5::Event::Incoming(p5::Packet::PubComp(c))) => Ok(Ev::Acked(c.pkid)),
                Ok(m5::Event::Incoming(p5::Packet::ConnAck(c))) => Ok(Ev::ConnAck(c.session_present)),
                Ok(m5::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Ok(Ev::Sent(pkid)),
                Ok(m5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Ok(Ev::Closed),
                Ok(_) => Ok(Ev::Other),
                Err(m5::ConnectionError::RequestsDone) => Err(LoopError::Done),
                Err(m5::ConnectionError::ConnectionRefused(code)) => Err(LoopError::Refused {
                    auth: matches!(
                        code,
                        p5::ConnectReturnCode::BadUserNamePassword | p5::ConnectReturnCode::NotAuthorized
                    ),
                    code: format!("{code:?}"),
                }),
                Err(e) => Err(LoopError::Other(e.to_string())),
            },
        }
    }
}
