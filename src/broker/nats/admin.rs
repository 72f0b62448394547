//! Administration: JetStream streams as topics (list, info, create, delete, purge, browse) and consumers
//! as subscriptions (list, info, create, delete, seek), with the mapping of configurations between them.

use std::sync::PoisonError;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;

use super::info::{sub_info, timestamp, to_message, topic_info};
use super::subjects::{is_stream_name, nats_subjects};
use super::{NatsBroker, js_error};
use crate::broker::{Broker, BrokerError, Capability};
use crate::model::{
    AckMode, Backoff, BrowseFrom, Discard, Lifetime, Message, Name, RetentionPolicy, SeekTarget,
    StartPosition, SubscriptionConfig, SubscriptionInfo, Timestamp, TopicConfig, TopicInfo,
};

impl NatsBroker {
    /// The body of [`Broker::topics`].
    pub(super) async fn list_streams(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        if !self.has_jetstream() {
            return Err(self.unsupported(Capability::TopicAdmin));
        }
        let mut out = Vec::new();
        let mut streams = self.js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| js_error("listing streams", e))?;
            out.extend(topic_info(&info));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The body of [`Broker::topic_info`].
    pub(super) async fn stream_topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        let (stream, filter) = self.resolve(name).await?;
        let mut info = topic_info(stream.cached_info()).ok_or_else(|| {
            BrokerError::Protocol(format!("stream \"{name}\" has a name this tool cannot show"))
        })?;
        if let Some(subject) = filter {
            // A subject of a stream: its own count and newest message (what `--exit-at-end` waits for).
            let mut counts =
                stream.info_with_subjects(&subject).await.map_err(|e| js_error("stream info", e))?;
            let mut messages = 0u64;
            while let Some(entry) = counts.next().await {
                messages += entry.map_err(|e| js_error("stream info", e))?.1 as u64;
            }
            info.messages = messages;
            info.head_seq = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(last) => last.sequence,
                Err(_) => 0,
            };
            info.subjects = vec![subject];
        }
        Ok(info)
    }

    /// The body of [`Broker::create_topic`].
    pub(super) async fn create_stream(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        self.need_jetstream("creating a topic")?;
        let name = config.name.as_str();
        if !is_stream_name(name) {
            return Err(BrokerError::Invalid(format!(
                "\"{name}\" cannot name a JetStream stream (no `.`, `*`, `>` or spaces); name it e.g. {} and capture the subject with --subject {name}",
                name.replace(['.', '*', '>'], "_")
            )));
        }
        let mut subjects = Vec::new();
        for p in &config.subjects {
            subjects.extend(nats_subjects(p)?);
        }
        let limit = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let stream_config = stream::Config {
            name: name.to_string(),
            subjects,
            max_messages: limit(config.limits.max_msgs),
            max_bytes: limit(config.limits.max_bytes),
            max_age: config.limits.max_age.unwrap_or(Duration::ZERO),
            max_messages_per_subject: limit(config.limits.max_msgs_per_key),
            retention: match config.retention {
                RetentionPolicy::Limits => stream::RetentionPolicy::Limits,
                RetentionPolicy::Interest => stream::RetentionPolicy::Interest,
                RetentionPolicy::WorkQueue => stream::RetentionPolicy::WorkQueue,
            },
            discard: match config.discard {
                Discard::New => stream::DiscardPolicy::New,
                Discard::Old => stream::DiscardPolicy::Old,
            },
            duplicate_window: config.dedup_window,
            max_message_size: i32::try_from(config.max_msg_bytes).unwrap_or(i32::MAX),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = self.js.create_stream(stream_config).await.map_err(|e| {
            use async_nats::jetstream::ErrorCode;
            use async_nats::jetstream::context::CreateStreamErrorKind as K;
            // Classified by JetStream's error codes, not by the wording of the answer.
            match e.kind() {
                K::JetStream(js) if js.error_code() == ErrorCode::STREAM_NAME_EXIST => BrokerError::Invalid(
                    format!("stream \"{name}\" already exists with another configuration"),
                ),
                K::JetStream(js) if js.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP => {
                    BrokerError::Invalid(format!("another stream already captures these subjects: {js}"))
                }
                K::JetStreamUnavailable => BrokerError::Invalid(
                    "creating the stream: JetStream is not available on this NATS server (start nats-server with -js)"
                        .into(),
                ),
                K::TimedOut => BrokerError::Timeout(Duration::from_secs(5)),
                _ => js_error("creating the stream", e),
            }
        })?;
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let info = stream.info().await.map_err(|e| js_error("stream info", e))?;
        topic_info(info).ok_or_else(|| BrokerError::Protocol("the new stream has no usable name".into()))
    }

    /// The body of [`Broker::delete_topic`].
    pub(super) async fn delete_stream(&self, name: &Name) -> Result<(), BrokerError> {
        let (stream, filter) = self.resolve(name).await?;
        if filter.is_some() {
            return Err(BrokerError::Invalid(format!(
                "\"{name}\" is a subject of stream {}, not a stream; delete the stream by its name",
                stream.cached_info().config.name
            )));
        }
        self.js.delete_stream(name.as_str()).await.map_err(|e| js_error("deleting the stream", e))?;
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(())
    }

    /// The body of [`Broker::purge_topic`].
    pub(super) async fn purge_stream(&self, name: &Name) -> Result<u64, BrokerError> {
        let (stream, filter) = self.resolve(name).await?;
        let purge = match filter {
            Some(subject) => stream.purge().filter(subject).await,
            None => stream.purge().await,
        };
        purge.map(|p| p.purged).map_err(|e| js_error("purging", e))
    }

    /// The body of [`Broker::subscriptions`].
    pub(super) async fn list_consumers(
        &self,
        topic: Option<&Name>,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.need_jetstream("listing subscriptions")?;
        if let Some(t) = topic {
            let (stream, _) = self.resolve(t).await?;
            return self.stream_subscriptions(&stream).await;
        }
        let mut out = Vec::new();
        let mut names = self.js.stream_names();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| js_error("listing streams", e))?;
            let Ok(stream) = self.js.get_stream(&name).await else { continue };
            out.extend(self.stream_subscriptions(&stream).await?);
        }
        Ok(out)
    }

    /// Every consumer of a stream as subscriptions.
    async fn stream_subscriptions(
        &self,
        stream: &stream::Stream,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let info = stream.cached_info().clone();
        let mut out = Vec::new();
        let mut consumers = stream.consumers();
        while let Some(c) = consumers.next().await {
            let c = c.map_err(|e| js_error("listing consumers", e))?;
            out.extend(sub_info(&c, &info));
        }
        Ok(out)
    }

    /// The body of [`Broker::subscription_info`].
    pub(super) async fn describe_consumer(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        let stream = self.stream_of_consumer(name).await?;
        let mut stream =
            self.js.get_stream(&stream.cached_info().config.name).await.map_err(|e| js_error("stream", e))?;
        let info = stream.info().await.map_err(|e| js_error("stream info", e))?.clone();
        let consumer = stream.consumer_info(name.as_str()).await.map_err(|e| js_error("consumer info", e))?;
        sub_info(&consumer, &info).ok_or_else(|| {
            BrokerError::Protocol(format!("consumer \"{name}\" has a name this tool cannot show"))
        })
    }

    /// The body of [`Broker::create_subscription`].
    pub(super) async fn add_consumer(
        &self,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo, BrokerError> {
        if !self.has_jetstream() {
            // Queue groups need no creating; a durable subscription needs JetStream.
            return Err(self.unsupported(Capability::Ack));
        }
        let (stream, filter) = self.resolve(&config.topic).await?;
        if !is_stream_name(config.name.as_str()) {
            return Err(BrokerError::Invalid(format!(
                "\"{}\" cannot name a JetStream consumer (no `.`, `*`, `>` or spaces)",
                config.name
            )));
        }
        if stream.consumer_info(config.name.as_str()).await.is_ok() {
            return Err(BrokerError::Invalid(format!(
                "subscription \"{}\" already exists on stream {}",
                config.name,
                stream.cached_info().config.name
            )));
        }
        let pull = consumer_config(&config, filter)?;
        stream.create_consumer(pull).await.map_err(|e| js_error("creating the consumer", e))?;
        self.subscription_info(&config.name).await
    }

    /// The body of [`Broker::delete_subscription`].
    pub(super) async fn remove_consumer(&self, name: &Name) -> Result<(), BrokerError> {
        let stream = self.stream_of_consumer(name).await?;
        stream.delete_consumer(name.as_str()).await.map_err(|e| js_error("deleting the consumer", e))?;
        Ok(())
    }

    /// The body of [`Broker::browse`].
    pub(super) async fn browse_stream(
        &self,
        topic: &Name,
        from: BrowseFrom,
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let (mut stream, filter) = self.resolve(topic).await?;
        let state = stream.info().await.map_err(|e| js_error("stream info", e))?.state.clone();
        if state.messages == 0 || max == 0 {
            return Ok(Vec::new());
        }
        let start = match from {
            BrowseFrom::Seq(s) | BrowseFrom::At { seq: s, .. } => {
                StartPosition::Seq(s.max(state.first_sequence))
            }
            BrowseFrom::Time(t) => StartPosition::Time(t),
            // With a subject filter the newest n are not a seq range; read them by the filter's count.
            BrowseFrom::Last(n) if filter.is_none() => StartPosition::Seq(
                state.last_sequence.saturating_sub(n.saturating_sub(1)).max(state.first_sequence),
            ),
            BrowseFrom::Last(_) => StartPosition::All,
        };
        let reader = self.reader(&stream, filter.clone(), start).await?;
        let stream_name = Name::system(&stream.cached_info().config.name)?;
        let mut out: Vec<Message> = Vec::new();
        let want = match from {
            BrowseFrom::Last(_) if filter.is_some() => usize::MAX,
            _ => max,
        };
        while out.len() < want {
            let pending = reader.cached_info().num_pending;
            if pending == 0 && out.is_empty() {
                break;
            }
            let mut batch = reader
                .fetch()
                .max_messages((want - out.len()).min(1000))
                .messages()
                .await
                .map_err(|e| js_error("reading the stream", e))?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| js_error("reading the stream", e))?;
                let Ok(info) = m.info() else { continue };
                let (seq, published) = (info.stream_sequence, timestamp(info.published));
                out.extend(to_message(
                    Some(&stream_name),
                    m.subject.as_str(),
                    m.headers.as_ref(),
                    m.payload.clone(),
                    seq,
                    published,
                ));
                if info.pending == 0 {
                    break;
                }
            }
            if out.len() == before || out.last().is_some_and(|m| m.seq >= state.last_sequence) {
                break;
            }
        }
        let _ = stream.delete_consumer(&reader.cached_info().name).await;
        if let BrowseFrom::Last(n) = from {
            let keep = usize::try_from(n).unwrap_or(usize::MAX).min(max);
            let skip = out.len().saturating_sub(keep);
            out.drain(..skip);
        }
        out.truncate(max);
        Ok(out)
    }

    /// The body of [`Broker::seek`].
    pub(super) async fn seek_consumer(
        &self,
        subscription: &Name,
        target: SeekTarget,
    ) -> Result<u64, BrokerError> {
        // JetStream consumers cannot move; the consumer is made again with the same configuration
        // and a deliver policy that starts where the seek asks.
        let mut stream = self.stream_of_consumer(subscription).await?;
        let state = stream.info().await.map_err(|e| js_error("stream info", e))?.state.clone();
        let old =
            stream.consumer_info(subscription.as_str()).await.map_err(|e| js_error("consumer info", e))?;
        let (policy, next) = match target {
            SeekTarget::Start => (jetstream::consumer::DeliverPolicy::All, state.first_sequence.max(1)),
            SeekTarget::End => (jetstream::consumer::DeliverPolicy::New, state.last_sequence + 1),
            SeekTarget::Seq { seq, .. } | SeekTarget::Each(seq) => {
                // Clamped to what the stream holds, as the engine does: past the end means "only new ones".
                let seq = seq.clamp(state.first_sequence.max(1), state.last_sequence + 1);
                (jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: seq }, seq)
            }
            SeekTarget::Time(t) => {
                let first = self
                    .browse(&Name::system(&old.stream_name)?, BrowseFrom::Time(t), 1)
                    .await?
                    .first()
                    .map_or(state.last_sequence + 1, |m| m.seq);
                (datetime_of(t)?, first)
            }
        };
        let c = old.config;
        let config = pull::Config {
            durable_name: c.durable_name,
            name: c.name,
            description: c.description,
            deliver_policy: policy,
            ack_policy: c.ack_policy,
            ack_wait: c.ack_wait,
            max_deliver: c.max_deliver,
            filter_subject: c.filter_subject,
            max_ack_pending: c.max_ack_pending,
            max_waiting: c.max_waiting,
            inactive_threshold: c.inactive_threshold,
            backoff: c.backoff,
            ..Default::default()
        };
        stream.delete_consumer(subscription.as_str()).await.map_err(|e| js_error("seek (delete)", e))?;
        stream.create_consumer(config).await.map_err(|e| js_error("seek (create)", e))?;
        Ok(next)
    }
}

/// A JetStream consumer configuration for a subscription configuration; what JetStream cannot do is
/// refused with the reason.
pub(super) fn consumer_config(
    c: &SubscriptionConfig,
    filter: Option<String>,
) -> Result<pull::Config, BrokerError> {
    if c.dead_letter.is_some() {
        return Err(BrokerError::Invalid(
            "JetStream has no dead-letter topics: a message that reaches max deliver stays in the stream and an advisory is published (subscribers here show it); drop --dead-letter".into(),
        ));
    }
    let filter = match c.filter.as_slice() {
        [] => filter.unwrap_or_default(),
        [one] => match nats_subjects(one)?.as_slice() {
            [subject] => subject.clone(),
            _ => {
                return Err(BrokerError::Invalid(format!(
                    "filter \"{}\" needs two NATS subjects; a consumer on this server takes one (use a final >)",
                    one.as_str()
                )));
            }
        },
        _ => {
            return Err(BrokerError::Invalid(
                "several filter subjects per consumer need nats-server 2.10 and are not sent by this build; give one filter (a final > covers a subtree)".into(),
            ));
        }
    };
    let (durable_name, inactive_threshold) = match c.lifetime {
        Lifetime::Durable => (Some(c.name.to_string()), Duration::ZERO),
        Lifetime::Ephemeral { inactive_ttl } => (None, inactive_ttl),
    };
    let ack_policy = match c.ack {
        AckMode::None => jetstream::consumer::AckPolicy::None,
        AckMode::Explicit => jetstream::consumer::AckPolicy::Explicit,
        AckMode::Cumulative => jetstream::consumer::AckPolicy::All,
    };
    let backoff = match &c.backoff {
        Backoff::List(list) if c.backoff_on_timeout => list.clone(),
        _ => Vec::new(),
    };
    // JetStream's last-per-subject needs a filter subject: every subject of the stream, when the
    // subscription has none of its own.
    let filter =
        if filter.is_empty() && c.start == StartPosition::LastPerKey { ">".to_string() } else { filter };
    Ok(pull::Config {
        name: durable_name.is_none().then(|| c.name.to_string()),
        durable_name,
        deliver_policy: deliver_policy(c.start)?,
        ack_policy,
        ack_wait: c.ack_deadline,
        max_deliver: if c.max_deliveries == 0 { -1 } else { i64::from(c.max_deliveries) },
        filter_subject: filter,
        max_ack_pending: if c.max_in_flight == 0 { -1 } else { i64::from(c.max_in_flight) },
        inactive_threshold,
        backoff,
        ..Default::default()
    })
}

pub(super) fn deliver_policy(
    start: StartPosition,
) -> Result<jetstream::consumer::DeliverPolicy, BrokerError> {
    use jetstream::consumer::DeliverPolicy as D;
    Ok(match start {
        StartPosition::All => D::All,
        StartPosition::New => D::New,
        StartPosition::Last => D::Last,
        StartPosition::LastPerKey => D::LastPerSubject,
        StartPosition::Seq(s) => D::ByStartSequence { start_sequence: s.max(1) },
        StartPosition::Time(t) => return datetime_of(t),
    })
}

fn datetime_of(t: Timestamp) -> Result<async_nats::jetstream::consumer::DeliverPolicy, BrokerError> {
    let nanos = i128::from(t.as_micros()) * 1000;
    let start_time = async_nats::datetime::from_nanos(nanos)
        .map_err(|e| BrokerError::Invalid(format!("start time out of range: {e}")))?;
    Ok(jetstream::consumer::DeliverPolicy::ByStartTime { start_time })
}
