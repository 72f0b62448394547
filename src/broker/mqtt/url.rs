//! An MQTT URL: where to connect and as whom ([`Target`]), its query options ([`UrlOptions`]), and
//! patterns as MQTT topic filters ([`filter_for`]).

use std::time::Duration;

use rumqttc::QoS;

use super::wire::Version;
use crate::broker::BrokerError;
use crate::broker::url::BrokerUrl;
use crate::model::{Pattern, PatternToken};

/// The query part of an MQTT URL.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UrlOptions {
    pub(super) qos: QoS,
    pub(super) keep_alive: Duration,
    pub(super) client_id: Option<String>,
    /// Skip retained messages when subscribing.
    pub(super) no_retained: bool,
    /// The last will: published by the broker for us if the connection dies without a DISCONNECT.
    pub(super) will: Option<(String, String, bool)>,
    pub(super) version: Version,
    /// A PEM file of extra trusted certificates for `mqtts://` (a private CA).
    pub(super) ca: Option<std::path::PathBuf>,
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

pub(super) fn parse_qos(value: &str) -> Result<QoS, String> {
    match value {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        "2" => Ok(QoS::ExactlyOnce),
        _ => Err(format!("qos \"{value}\": use 0, 1 or 2")),
    }
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: bool,
    pub(super) credentials: Option<(String, String)>,
    pub(super) shown: String,
}

pub(super) fn parse_url(url: &str) -> Result<(Target, UrlOptions), BrokerError> {
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

/// The MQTT filter for a pattern, or why there is none.
pub fn filter_for(pattern: &Pattern) -> Result<String, BrokerError> {
    let refuse = |why: &str| {
        BrokerError::Pattern(format!(
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
