//! Picks the backend from a broker URL (DESIGN.md "Broker addressing").

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
        return Err(BrokerError::InvalidUrl { url: redact(url), reason: "it is empty".into() });
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
        return Err(BrokerError::InvalidUrl { url: redact(url), reason: reason.into() });
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
            return Err(BrokerError::UnknownScheme { url: redact(url), scheme: other.into() });
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return Err(BrokerError::InvalidUrl { url: redact(url), reason: "it names no host".into() });
    }
    if host.starts_with('[') && !host.contains(']') {
        return Err(BrokerError::InvalidUrl {
            url: redact(url),
            reason: "an IPv6 address needs its closing `]`, as in ws://[::1]:7077".into(),
        });
    }
    Ok(kind)
}

/// Decodes `%XX` escapes in a URL part (user names, passwords, file paths); anything else is kept.
pub(crate) fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// The bytes `%XX` escapes in a URL part stand for, whether or not they are UTF-8.
pub(crate) fn percent_decode_bytes(s: &str) -> Vec<u8> {
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
    out
}

/// A broker URL taken apart once, for every remote backend: `scheme://[user[:password]@]host[:port]
/// [,host[:port]…][/path][?key=value&…][#fragment]`. Its `Display` is the redacted form, so a password
/// or token can only be printed on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Lower-cased scheme.
    pub scheme: String,
    /// User name, decoded.
    pub user: Option<String>,
    /// Password, decoded; never shown.
    pub password: Option<String>,
    /// Hosts with their ports, when written.
    pub hosts: Vec<(String, Option<u16>)>,
    /// The path without its leading `/`, still encoded (`%2f` is a vhost `/` on AMQP).
    pub path: String,
    /// What follows `#`.
    pub fragment: Option<String>,
    /// Query options in order, values decoded.
    query: Vec<(String, String)>,
}

/// Query keys whose values are secrets, redacted like passwords.
const SECRET_KEYS: [&str; 4] = ["token", "password", "pass", "secret"];

impl BrokerUrl {
    /// Takes `url` apart; a URL without a host, or with a port that is not a number, is refused.
    pub fn parse(url: &str) -> Result<BrokerUrl, BrokerError> {
        let url = url.trim();
        let invalid = |reason: &str| BrokerError::InvalidUrl { url: redact(url), reason: reason.into() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("expected SCHEME://HOST[:PORT]"))?;
        let (rest, fragment) = rest.split_once('#').map_or((rest, None), |(r, f)| (r, Some(f.to_string())));
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        // Credentials end at the last '@' (a password may hold '/' or '@'); the path starts after it.
        let (userinfo, after) = rest.rsplit_once('@').map_or((None, rest), |(u, h)| (Some(u), h));
        let (hostlist, path) = after.split_once('/').unwrap_or((after, ""));
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (Some(percent_decode(name)), Some(percent_decode(pass))),
                None => (Some(percent_decode(u)), None),
            },
        };
        let mut hosts = Vec::new();
        for host in hostlist.split(',') {
            let (name, port) = match host.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(':') && !p.ends_with(']') => {
                    let port = p.parse::<u16>().map_err(|_| BrokerError::InvalidUrl {
                        url: redact(url),
                        reason: "the port is not a number".into(),
                    })?;
                    (h, Some(port))
                }
                _ => (host, None),
            };
            if name.is_empty() {
                return Err(invalid("it names no host"));
            }
            hosts.push((name.to_string(), port));
        }
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_string(), percent_decode(v))
            })
            .collect();
        Ok(BrokerUrl {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            hosts,
            path: path.trim_end_matches('/').to_string(),
            fragment,
            query,
        })
    }

    /// `host:port` of each host, with `default_port` where none is written.
    pub fn addresses(&self, default_port: u16) -> Vec<(String, u16)> {
        self.hosts.iter().map(|(h, p)| (h.clone(), p.unwrap_or(default_port))).collect()
    }

    /// The error for this URL.
    pub fn invalid(&self, reason: impl Into<String>) -> BrokerError {
        BrokerError::InvalidUrl { url: self.to_string(), reason: reason.into() }
    }

    /// The query options, to be read by name; [`QueryOptions::finish`] refuses any left unread.
    pub fn options(&self) -> QueryOptions<'_> {
        QueryOptions { url: self, known: Vec::new() }
    }

    /// Whether the URL has query options.
    pub fn has_query(&self) -> bool {
        !self.query.is_empty()
    }
}

impl fmt::Display for BrokerUrl {
    /// The URL with every password and secret option shown as `***`: the only form ever printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match (&self.user, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            // A lone user part is a token on NATS: secret too.
            (Some(_), None) => f.write_str("***@")?,
            _ => {}
        }
        let hosts: Vec<String> =
            self.hosts.iter().map(|(h, p)| p.map_or_else(|| h.clone(), |p| format!("{h}:{p}"))).collect();
        f.write_str(&hosts.join(","))?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            let v = if SECRET_KEYS.contains(&k.as_str()) {
                "***".to_string()
            } else if v.contains("://") {
                redact(v)
            } else {
                v.clone()
            };
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// `url` with its password and secret options hidden, also when it does not parse.
pub fn redact(url: &str) -> String {
    let Some(s) = url.find("://") else { return url.to_string() };
    // Credentials run to the last '@' before the query (a password may hold '/' or '@').
    let shown = match url[s + 3..].split(['?', '#']).next().and_then(|a| a.rfind('@')) {
        Some(at) => {
            let at = s + 3 + at;
            match url[s + 3..at].split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..s + 3], &url[at..]),
                None => format!("{}***{}", &url[..s + 3], &url[at..]),
            }
        }
        None => url.to_string(),
    };
    match shown.split_once('?') {
        None => shown,
        Some((base, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if SECRET_KEYS.contains(&k) => format!("{k}=***"),
                    // An option that is itself a URL (`?management=http://user:pw@host`).
                    Some((k, v)) if v.contains("://") => format!("{k}={}", redact(v)),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", pairs.join("&"))
        }
    }
}

/// A URL's query options, read by name and type; every backend's options parse and fail the same way.
pub struct QueryOptions<'a> {
    url: &'a BrokerUrl,
    known: Vec<&'static str>,
}

impl QueryOptions<'_> {
    fn value(&mut self, key: &'static str) -> Option<&str> {
        self.known.push(key);
        self.url.query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn bad(&self, key: &str, value: &str, expected: &str) -> BrokerError {
        self.url.invalid(format!("{key} \"{value}\": {expected}"))
    }

    /// A text option.
    pub fn text(&mut self, key: &'static str) -> Option<String> {
        self.value(key).filter(|v| !v.is_empty()).map(str::to_string)
    }

    /// A duration option: `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
    pub fn duration(&mut self, key: &'static str) -> Result<Option<Duration>, BrokerError> {
        let Some(v) = self.value(key).map(str::to_string) else { return Ok(None) };
        let parsed = match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => humantime::parse_duration(&v).ok(),
        };
        match parsed.filter(|d| !d.is_zero()) {
            Some(d) => Ok(Some(d)),
            None => Err(self.bad(key, &v, "use a duration such as 500ms, 30s, 2m or 1h")),
        }
    }

    /// A positive whole number.
    pub fn number<T: std::str::FromStr + PartialOrd + Default>(
        &mut self,
        key: &'static str,
    ) -> Result<Option<T>, BrokerError> {
        let Some(v) = self.value(key).map(str::to_string) else { return Ok(None) };
        match v.parse::<T>().ok().filter(|n| *n > T::default()) {
            Some(n) => Ok(Some(n)),
            None => Err(self.bad(key, &v, "use a positive whole number")),
        }
    }

    /// A yes/no option: `true`, `1`, `yes` or nothing after `=`; `false`, `0`, `no`.
    pub fn flag(&mut self, key: &'static str) -> Result<Option<bool>, BrokerError> {
        let Some(v) = self.value(key).map(str::to_string) else { return Ok(None) };
        match v.as_str() {
            "" | "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(self.bad(key, &v, "use true or false")),
        }
    }

    /// One of `choices`, compared without case.
    pub fn choice(
        &mut self,
        key: &'static str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, BrokerError> {
        self.choice_among(key, choices, choices)
    }

    /// One of `choices`, where the error offers only `shown` (the rest are accepted spellings).
    pub fn choice_among(
        &mut self,
        key: &'static str,
        choices: &[&'static str],
        shown: &[&'static str],
    ) -> Result<Option<&'static str>, BrokerError> {
        let Some(v) = self.value(key).map(str::to_string) else { return Ok(None) };
        match choices.iter().find(|c| c.eq_ignore_ascii_case(&v)) {
            Some(c) => Ok(Some(c)),
            None => Err(self.bad(key, &v, &format!("use {}", or_list(shown)))),
        }
    }

    /// Refuses options nobody read, naming the ones this backend knows.
    pub fn finish(self) -> Result<(), BrokerError> {
        match self.url.query.iter().find(|(k, _)| !self.known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => {
                let mut known = self.known.clone();
                known.dedup();
                Err(self.url.invalid(format!("unknown option \"{k}\"; known: {}", known.join(", "))))
            }
        }
    }
}

/// `a, b or c`.
fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
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
        BackendKind::Amqp => Ok(plain(Arc::new(super::amqp::AmqpBroker::connect(url.trim()).await?))),
        BackendKind::Postgres => {
            Ok(plain(Arc::new(super::postgres::PostgresBroker::connect(url.trim()).await?)))
        }
        BackendKind::Kafka => Ok(plain(Arc::new(super::kafka::KafkaBroker::connect(url.trim()).await?))),
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

    #[test]
    fn broker_urls_come_apart_and_print_without_secrets() {
        let u = BrokerUrl::parse("amqp://guest:s3cr%40t@h1:5672,h2/%2f?exchange=x&token=abc#frag").unwrap();
        assert_eq!(u.scheme, "amqp");
        assert_eq!(u.user.as_deref(), Some("guest"));
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!(u.addresses(5672), vec![("h1".to_string(), 5672), ("h2".to_string(), 5672)]);
        assert_eq!(u.path, "%2f");
        assert_eq!(u.fragment.as_deref(), Some("frag"));
        let shown = u.to_string();
        assert_eq!(shown, "amqp://guest:***@h1:5672,h2/%2f?exchange=x&token=***");
        assert!(!format!("{u:?}").contains("s3cr"));
        let token = BrokerUrl::parse("nats://t0ken@h").unwrap();
        assert_eq!(token.to_string(), "nats://***@h");
        assert_eq!(redact("redis://:pw@h:1/0?password=x"), "redis://:***@h:1/0?password=***");
        assert_eq!(redact("not a url"), "not a url");
        // A password holding '/' or '@', and a URL inside an option, stay hidden too.
        assert_eq!(redact("amqp://u:p/w@h:1/v"), "amqp://u:***@h:1/v");
        let slash = BrokerUrl::parse("amqp://u:p%2Fw@h/v?management=http://admin:pw@h:15672").unwrap();
        assert_eq!(slash.to_string(), "amqp://u:***@h/v?management=http://admin:***@h:15672");
        let raw = BrokerUrl::parse("amqp://u:p/w@h/v").unwrap();
        assert_eq!((raw.password.as_deref(), raw.path.as_str()), (Some("p/w"), "v"));
        let typo = backend_for("amqpp://u:secret@h").unwrap_err().to_string();
        assert!(!typo.contains("secret"), "{typo}");
        assert!(matches!(BrokerUrl::parse("mqtt://h:port"), Err(BrokerError::InvalidUrl { .. })));
        assert!(matches!(BrokerUrl::parse("mqtt://u:p@"), Err(BrokerError::InvalidUrl { .. })));
    }

    #[test]
    fn query_options_are_typed_and_fail_with_one_wording() {
        let u = BrokerUrl::parse("x://h?ack_deadline=1h&n=5&tls&mode=Streams&bad=1").unwrap();
        let mut o = u.options();
        assert_eq!(o.duration("ack_deadline").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(o.number::<u32>("n").unwrap(), Some(5));
        assert_eq!(o.flag("tls").unwrap(), Some(true));
        assert_eq!(o.choice("mode", &["streams", "pubsub"]).unwrap(), Some("streams"));
        assert_eq!(o.text("absent"), None);
        let err = o.finish().unwrap_err().to_string();
        assert!(err.contains("unknown option \"bad\"; known: ack_deadline, n, tls, mode, absent"), "{err}");
        let u = BrokerUrl::parse("x://h?ack_deadline=soon&n=0&mode=x").unwrap();
        let mut o = u.options();
        let e = o.duration("ack_deadline").unwrap_err().to_string();
        assert!(e.contains("ack_deadline \"soon\": use a duration such as 500ms"), "{e}");
        assert!(o.number::<u32>("n").unwrap_err().to_string().contains("use a positive whole number"));
        let e = o.choice("mode", &["a", "b", "c"]).unwrap_err().to_string();
        assert!(e.contains("use a, b or c"), "{e}");
        assert_eq!(
            BrokerUrl::parse("x://h?ack_deadline=30").unwrap().options().duration("ack_deadline").unwrap(),
            Some(Duration::from_secs(30))
        );
    }
}
