//! The query part of a Redis URL (`?mode=`, `?ack_deadline=`, `?maxlen=`) and its defaults.

use std::time::Duration;

use super::Mode;
use crate::broker::BrokerError;
use crate::broker::url::BrokerUrl;

/// The query part of a Redis URL: `mode`, `ack_deadline`, `maxlen`.
#[derive(Debug, PartialEq)]
pub(super) struct UrlOptions {
    pub(super) mode: Mode,
    pub(super) ack_deadline: Duration,
    pub(super) maxlen: Option<u64>,
}

impl UrlOptions {
    pub(super) fn parse(url: &BrokerUrl) -> Result<UrlOptions, BrokerError> {
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

/// How long an entry may stay pending before another consumer claims it (XAUTOCLAIM) unless the URL
/// says otherwise: Redis has no server-side ack deadline, so this client emulates one.
const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::url::redact;

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
