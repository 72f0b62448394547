//! What NATS answers, in the model's terms: received messages (headers, key, msg_id), JetStream times,
//! streams as topic info, consumers as subscription info, advisories as sentences.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::{KEY_HEADER, MSG_ID_HEADER};
use crate::model::{
    AckMode, Clock, ConsumerInfo, Discard, Headers, Limits, Message, MessageExtra, Name, StartPosition,
    StorageKind, SubCounters, SubscriptionInfo, SystemClock, Timestamp, TopicInfo,
};

/// Headers, key, msg_id and JetStream metadata of a received NATS message.
pub(super) fn to_message(
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
pub(super) fn timestamp(t: async_nats::datetime::DateTime) -> Timestamp {
    Timestamp::from_micros(i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0))
}

pub(super) fn topic_info(info: &stream::Info) -> Option<TopicInfo> {
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
    t.retention = match c.retention {
        stream::RetentionPolicy::Interest => crate::model::RetentionPolicy::Interest,
        stream::RetentionPolicy::WorkQueue => crate::model::RetentionPolicy::WorkQueue,
        _ => crate::model::RetentionPolicy::Limits,
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
pub(super) fn sub_info(c: &jetstream::consumer::Info, stream: &stream::Info) -> Option<SubscriptionInfo> {
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
    info.consumers =
        (0..c.num_waiting).map(|i| ConsumerInfo::external(&format!("waiting-pull-{}", i + 1))).collect();
    info.counters = SubCounters { delivered: c.delivered.consumer_sequence, ..SubCounters::default() };
    info.created = Some(timestamp(c.created));
    Some(info.with_one_partition(None))
}

/// A JetStream advisory in a sentence.
pub(super) fn advisory_text(payload: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
