//! Picks the backend from a broker URL (DESIGN.md "Broker addressing").

use std::sync::Arc;

use super::daemon::{LocalOptions, connect_local};
use super::local::LocalBroker;
use super::remote::RemoteBroker;
use super::{BrokerError, SharedBroker};
use crate::engine::Engine;

/// The backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A private in-process engine.
    Memory,
    /// The user's local engine daemon.
    Local,
    /// Another `pubsub serve`.
    Remote,
    /// Redis.
    Redis,
    /// NATS / JetStream.
    Nats,
    /// MQTT.
    Mqtt,
    /// RabbitMQ over AMQP 0-9-1.
    Amqp,
    /// PostgreSQL LISTEN/NOTIFY.
    Postgres,
    /// Kafka.
    Kafka,
}

impl BackendKind {
    /// The name used in messages.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Memory => "mem://",
            BackendKind::Local => "local daemon",
            BackendKind::Remote => "pubsub server (ws://)",
            BackendKind::Redis => "Redis",
            BackendKind::Nats => "NATS",
            BackendKind::Mqtt => "MQTT",
            BackendKind::Amqp => "AMQP",
            BackendKind::Postgres => "PostgreSQL",
            BackendKind::Kafka => "Kafka",
        }
    }
}

/// Which backend `url` names; a clear error for anything else.
pub fn backend_for(url: &str) -> Result<BackendKind, BrokerError> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(BrokerError::InvalidUrl { url: url.into(), reason: "it is empty".into() });
    }
    if trimmed == "local" {
        return Ok(BackendKind::Local);
    }
    if trimmed == "mem" || trimmed == "mem://" || trimmed.starts_with("mem://") {
        return Ok(BackendKind::Memory);
    }
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        // A bare word is most likely a profile name that the config file does not have.
        let word = trimmed.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c));
        let reason = if word {
            "no profile of that name in the config file (`pubsub config show` lists them), and not a URL: expected SCHEME://HOST[:PORT], `local` or `mem://`"
        } else {
            "expected SCHEME://HOST[:PORT], `local` or `mem://`"
        };
        return Err(BrokerError::InvalidUrl { url: url.into(), reason: reason.into() });
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "wss" => BackendKind::Remote,
        "redis" | "rediss" => BackendKind::Redis,
        "nats" | "tls" => BackendKind::Nats,
        "mqtt" | "mqtts" => BackendKind::Mqtt,
        "amqp" | "amqps" => BackendKind::Amqp,
        "postgres" | "postgresql" => BackendKind::Postgres,
        "kafka" => BackendKind::Kafka,
        other => {
            return Err(BrokerError::UnknownScheme { url: url.into(), scheme: other.into() });
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return Err(BrokerError::InvalidUrl { url: url.into(), reason: "it names no host".into() });
    }
    if host.starts_with('[') && !host.contains(']') {
        return Err(BrokerError::InvalidUrl {
            url: url.into(),
            reason: "an IPv6 address needs its closing `]`, as in ws://[::1]:7077".into(),
        });
    }
    Ok(kind)
}

/// Decodes `%XX` escapes in a URL part (user names, passwords, file paths); anything else is kept.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to open a broker.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// For `local`: start a daemon when none runs.
    pub autostart: bool,
    /// For `ws://`: the token, unless the URL carries `?token=`.
    pub token: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { autostart: true, token: None }
    }
}

/// An open broker, with anything the user should be told about opening it.
pub struct Connected {
    /// The broker.
    pub broker: SharedBroker,
    /// E.g. "started a local engine daemon …".
    pub notice: Option<String>,
}

/// Opens the broker `url` names with default options.
pub async fn connect(url: &str) -> Result<SharedBroker, BrokerError> {
    connect_with(url, &ConnectOptions::default()).await.map(|c| c.broker)
}

/// Opens the broker `url` names.
pub async fn connect_with(url: &str, opts: &ConnectOptions) -> Result<Connected, BrokerError> {
    let plain = |broker: SharedBroker| Connected { broker, notice: None };
    match backend_for(url)? {
        BackendKind::Memory => Ok(plain(Arc::new(LocalBroker::new(Engine::new(), "mem://")))),
        BackendKind::Remote => {
            Ok(plain(Arc::new(RemoteBroker::connect(url.trim(), opts.token.clone()).await?)))
        }
        BackendKind::Local => {
            let local = LocalOptions { autostart: opts.autostart, exe: None };
            let (broker, notice) = connect_local(&local).await?;
            Ok(Connected { broker: Arc::new(broker), notice })
        }
        BackendKind::Redis => Ok(plain(Arc::new(super::redis::RedisBroker::connect(url.trim()).await?))),
        BackendKind::Nats => Ok(plain(Arc::new(super::nats::NatsBroker::connect(url.trim()).await?))),
        BackendKind::Mqtt => Ok(plain(Arc::new(super::mqtt::MqttBroker::connect(url.trim()).await?))),
        other => Err(BrokerError::NotBuilt { backend: other.label() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_their_backend() {
        assert_eq!(backend_for("mem://").ok(), Some(BackendKind::Memory));
        assert_eq!(backend_for("local").ok(), Some(BackendKind::Local));
        assert_eq!(backend_for("redis://127.0.0.1:6379").ok(), Some(BackendKind::Redis));
        assert_eq!(backend_for("NATS://127.0.0.1").ok(), Some(BackendKind::Nats));
        assert_eq!(backend_for("kafka://a:9092,b:9092").ok(), Some(BackendKind::Kafka));
    }

    #[test]
    fn unknown_scheme_is_named_in_the_error() {
        let err = backend_for("ftp://example").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown broker scheme \"ftp\""), "{err}");
        assert!(err.contains("redis://"), "{err}");
    }

    #[test]
    fn url_without_scheme_or_host_is_refused() {
        assert!(matches!(backend_for("127.0.0.1:6379"), Err(BrokerError::InvalidUrl { .. })));
        assert!(matches!(backend_for("redis://"), Err(BrokerError::InvalidUrl { .. })));
        assert!(matches!(backend_for("  "), Err(BrokerError::InvalidUrl { .. })));
        assert!(matches!(backend_for("ws://[::1"), Err(BrokerError::InvalidUrl { .. })));
        assert!(matches!(backend_for("redis://user:pw@/0"), Err(BrokerError::InvalidUrl { .. })));
        assert!(matches!(backend_for("ws://[::1]:7077"), Ok(BackendKind::Remote)));
        assert!(matches!(backend_for("rediss://:pw@host:6380/#insecure"), Ok(BackendKind::Redis)));
    }
}
