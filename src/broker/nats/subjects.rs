//! Subjects and streams: patterns as NATS subjects, stream names, and which stream a subject, a topic
//! name or a consumer belongs to (asked of the server, remembered for a few seconds).

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use futures_util::StreamExt;

use super::{NatsBroker, js_error};
use crate::broker::BrokerError;
use crate::model::{Name, Pattern, PatternToken};

/// How long a subject's stream (or the lack of one) is remembered for publish routing.
const ROUTE_TTL: Duration = Duration::from_secs(3);

/// The NATS subjects a pattern subscribes to; an error says what to write instead.
pub fn nats_subjects(p: &Pattern) -> Result<Vec<String>, BrokerError> {
    let Pattern::Tokens(tokens) = p else {
        return Err(BrokerError::Pattern(format!(
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
                return Err(BrokerError::Pattern(format!(
                    "\"{}\": NATS has no zero-or-more wildcard in the middle of a subject; use * for one token or a final >",
                    p.as_str()
                )));
            }
            PatternToken::Levels(t) => {
                return Err(BrokerError::Pattern(format!(
                    "\"{t}\" is an MQTT filter; NATS subjects use `.` between tokens, * and >"
                )));
            }
        }
    }
    Ok(vec![parts.join(".")])
}

/// Stream names may not hold `.`, `*`, `>`, path separators or whitespace.
pub(super) fn is_stream_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['.', '*', '>', '/', '\\']) && !name.contains(char::is_whitespace)
}

impl NatsBroker {
    /// The stream that captures `subject`, asked of the server once per [`ROUTE_TTL`].
    pub(super) async fn stream_for_subject(&self, subject: &str) -> Result<Option<String>, BrokerError> {
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
    pub(super) async fn resolve(
        &self,
        topic: &Name,
    ) -> Result<(stream::Stream, Option<String>), BrokerError> {
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
    pub(super) async fn stream_of_consumer(&self, consumer: &Name) -> Result<stream::Stream, BrokerError> {
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
    fn stream_names_refuse_what_nats_refuses() {
        assert!(is_stream_name("ORDERS"));
        assert!(is_stream_name("orders-eu_1"));
        for bad in ["orders.eu", "a*", "a>", "a b", "", "a/b"] {
            assert!(!is_stream_name(bad), "{bad}");
        }
    }
}
