//! `amqp[s]://user:pass@host[:port][/vhost][?options]`: where to connect, as whom, and pubsub's options.

use std::path::PathBuf;
use std::time::Duration;

use crate::broker::BrokerError;
use crate::broker::url::BrokerUrl;

/// The exchange topics are routing keys on, unless `?exchange=` names another.
pub(super) const DEFAULT_EXCHANGE: &str = "amq.topic";

/// The kind of an exchange pubsub declares (`?exchange_type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExchangeType {
    Topic,
    Fanout,
    Direct,
    Headers,
}

/// The kind of queue durable subscriptions get (`?queue_type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueType {
    Classic,
    Quorum,
    Stream,
}

impl QueueType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// A parsed AMQP URL.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The URI handed to the client library: credentials, host, vhost and heartbeat only.
    pub(super) uri: String,
    /// What messages show: the URL without its password.
    pub(super) shown: String,
    /// The vhost, decoded (for messages).
    pub(super) vhost: String,
    pub(super) tls: bool,
    pub(super) exchange: String,
    pub(super) exchange_type: ExchangeType,
    pub(super) queue_type: QueueType,
    pub(super) prefetch: u16,
    pub(super) confirm: bool,
    pub(super) ca: Option<PathBuf>,
    /// Where RabbitMQ's management HTTP API is (`?management=http://host:port`, default the broker's
    /// host on 15672); `None` with `?management=off`.
    pub(super) management: Option<(String, u16)>,
    /// `user:password` for the management API (the AMQP login; guest:guest when the URL has none).
    pub(super) login: String,
}

impl Target {
    /// Parses `url`; unknown options and malformed values are refused with the URL redacted.
    pub(super) fn parse(url: &str) -> Result<Target, BrokerError> {
        let parsed = BrokerUrl::parse(url)?;
        let tls = match parsed.scheme.as_str() {
            "amqp" => false,
            "amqps" => true,
            other => return Err(parsed.invalid(format!("scheme {other}: use amqp:// or amqps://"))),
        };
        let mut o = parsed.options();
        let exchange = o.text("exchange").unwrap_or_else(|| DEFAULT_EXCHANGE.to_string());
        let exchange_type = match o.choice("exchange_type", &["topic", "fanout", "direct", "headers"])? {
            Some("fanout") => ExchangeType::Fanout,
            Some("direct") => ExchangeType::Direct,
            Some("headers") => ExchangeType::Headers,
            _ => ExchangeType::Topic,
        };
        let queue_type = match o.choice("queue_type", &["classic", "quorum", "stream"])? {
            Some("quorum") => QueueType::Quorum,
            Some("stream") => QueueType::Stream,
            _ => QueueType::Classic,
        };
        let prefetch = o.number::<u16>("prefetch")?.unwrap_or(256);
        let confirm = o.flag("confirm")?.unwrap_or(true);
        let heartbeat = o.duration("heartbeat")?.unwrap_or(Duration::from_secs(30));
        let ca = o.text("ca").map(PathBuf::from);
        let management = o.text("management");
        o.finish()?;
        if exchange.len() > 255 {
            return Err(parsed.invalid("an exchange name is at most 255 bytes"));
        }
        let Some((host, port)) = parsed.addresses(if tls { 5671 } else { 5672 }).into_iter().next() else {
            return Err(parsed.invalid("it names no host"));
        };
        let management = match management.as_deref() {
            Some("off" | "false" | "no") => None,
            Some(url) => {
                let api = BrokerUrl::parse(url)?;
                if api.scheme != "http" {
                    return Err(parsed.invalid("management: use http://HOST:PORT (or off)"));
                }
                api.addresses(15672)
                    .into_iter()
                    .next()
                    .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p))
            }
            // The API is plain HTTP carrying the login: by default only where that stays on this machine
            // or the AMQP link is not encrypted either.
            None if !tls || is_loopback(&host) => Some((host.trim_matches(['[', ']']).to_string(), 15672)),
            None => None,
        };
        let login = format!(
            "{}:{}",
            parsed.user.as_deref().unwrap_or("guest"),
            parsed.password.as_deref().unwrap_or(if parsed.user.is_some() { "" } else { "guest" })
        );
        if parsed.hosts.len() > 1 {
            return Err(parsed.invalid("one host only: RabbitMQ clusters share queues through any node"));
        }
        let credentials = match (&parsed.user, &parsed.password) {
            (Some(user), pass) => {
                format!("{}:{}@", encode(user), encode(pass.as_deref().unwrap_or_default()))
            }
            (None, _) => String::new(),
        };
        // `amqp://host` is the vhost "/"; `amqp://host/%2f` too; `amqp://host/name` is "name".
        let vhost_part = if parsed.path.is_empty() { String::new() } else { format!("/{}", parsed.path) };
        let vhost = if parsed.path.is_empty() { "/".to_string() } else { percent_decode(&parsed.path) };
        let uri = format!(
            "{}://{credentials}{host}:{port}{vhost_part}?heartbeat={}",
            parsed.scheme,
            heartbeat.as_secs().clamp(1, u64::from(u16::MAX))
        );
        Ok(Target {
            uri,
            shown: parsed.to_string(),
            vhost,
            tls,
            exchange,
            exchange_type,
            queue_type,
            prefetch,
            confirm,
            ca,
            management,
            login,
        })
    }
}

/// Whether `host` is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_matches(['[', ']']);
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(s: &str) -> String {
    crate::broker::url::percent_decode(s)
}

/// Percent-encodes what may not appear raw in a URI's user or password.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_client_uri_and_our_options() {
        let t =
            Target::parse("amqp://guest:p%40ss@127.0.0.1/%2f?exchange=orders&prefetch=10&queue_type=quorum")
                .unwrap();
        assert_eq!(t.uri, "amqp://guest:p%40ss@127.0.0.1:5672/%2f?heartbeat=30");
        assert_eq!(t.shown, "amqp://guest:***@127.0.0.1/%2f?exchange=orders&prefetch=10&queue_type=quorum");
        assert_eq!((t.exchange.as_str(), t.prefetch, t.queue_type), ("orders", 10, QueueType::Quorum));
        assert_eq!(t.vhost, "/");
        let t = Target::parse("amqps://h/shop").unwrap();
        assert_eq!(
            (t.uri.as_str(), t.vhost.as_str(), t.tls),
            ("amqps://h:5671/shop?heartbeat=30", "shop", true)
        );
        assert_eq!(t.exchange, DEFAULT_EXCHANGE);
        assert!(t.confirm);
        for (bad, says) in [
            ("amqp://h?exchange_type=x", "use topic, fanout, direct or headers"),
            ("amqp://h?prefetch=0", "prefetch \"0\""),
            ("amqp://h?color=red", "unknown option \"color\""),
            ("amqp://a,b", "one host only"),
        ] {
            let err = Target::parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
