//! Reading without a group: `sub TOPIC` (every partition from its end, or from `--from`) on a consumer
//! that is assigned partitions and never commits, and history reads for `tail`, `browse` and
//! `--exit-at-end` that stop at the high watermarks they found.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{KafkaBroker, REQUEST_TIMEOUT, blocking, convert};
use crate::broker::kit::Forwarder;
use crate::broker::{
    BrokerDelivery, BrokerError, ChannelSource, DeliveryStream, StreamItem, SubscribeRequest,
};
use crate::model::{BrowseFrom, Message, Name, StartPosition, Timestamp};

/// The longest a history read runs.
const HISTORY_MAX: Duration = Duration::from_secs(15);

impl KafkaBroker {
    /// The topics `req`'s patterns name: a topic name must exist; a pattern matches the topics there are
    /// now (Kafka's internal `__` topics only when named).
    pub(super) async fn resolve_topics(
        &self,
        req: &SubscribeRequest,
    ) -> Result<Vec<(Name, u32)>, BrokerError> {
        let md = self.metadata(None).await?;
        let mut found = Vec::new();
        for pattern in &req.patterns {
            if let Some(literal) = pattern.literal() {
                convert::kafka_topic(literal)?;
                let name = Name::new(literal)?;
                match md.topics().iter().find(|t| t.name() == literal && t.error().is_none()) {
                    Some(t) => found.push((name, u32::try_from(t.partitions().len()).unwrap_or(0))),
                    None => return Err(convert::no_topic(&name)),
                }
                continue;
            }
            for t in md.topics() {
                if t.name().starts_with("__") || t.error().is_some() || !pattern.matches(t.name()) {
                    continue;
                }
                if let Ok(name) = Name::new(t.name()) {
                    found.push((name, u32::try_from(t.partitions().len()).unwrap_or(0)));
                }
            }
        }
        found.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        found.dedup_by(|a, b| a.0 == b.0);
        Ok(found)
    }

    /// Where each partition of `topics` starts for `from`.
    pub(super) async fn start_offsets(
        &self,
        topics: &[(Name, u32)],
        only: Option<u32>,
        from: Option<StartPosition>,
    ) -> Result<TopicPartitionList, BrokerError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, count) in topics {
            for p in (0..*count).filter(|p| only.is_none_or(|o| o == *p)) {
                let p = i32::try_from(p).unwrap_or(i32::MAX);
                let offset = match from {
                    None | Some(StartPosition::New) => Offset::End,
                    Some(StartPosition::All) => Offset::Beginning,
                    Some(StartPosition::Last | StartPosition::LastPerKey) => Offset::OffsetTail(1),
                    Some(StartPosition::Seq(seq)) => Offset::Offset(convert::offset_of(seq)),
                    Some(StartPosition::Time(t)) => Offset::Offset(millis(t)),
                };
                tpl.add_partition_offset(topic.as_str(), p, offset)
                    .map_err(|e| convert::error(&self.target.shown, &e))?;
            }
        }
        if let Some(StartPosition::Time(_)) = from {
            tpl = self.offsets_for_times(tpl).await?;
        }
        Ok(tpl)
    }

    /// Offsets of the first records at or after the times in `tpl` (the end where there is none).
    pub(super) async fn offsets_for_times(
        &self,
        tpl: TopicPartitionList,
    ) -> Result<TopicPartitionList, BrokerError> {
        let meta = self.meta.clone();
        let shown = self.target.shown.clone();
        let found = blocking(move || meta.offsets_for_times(tpl, REQUEST_TIMEOUT))
            .await?
            .map_err(|e| convert::error(&shown, &e))?;
        let mut out = TopicPartitionList::new();
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                _ => Offset::End,
            };
            out.add_partition_offset(e.topic(), e.partition(), offset)
                .map_err(|e| convert::error(&shown, &e))?;
        }
        Ok(out)
    }

    /// A consumer that is assigned partitions and never joins a group or commits.
    pub(super) fn reader<C: rdkafka::config::FromClientConfigAndContext<convert::Context>>(
        &self,
    ) -> Result<C, BrokerError> {
        let mut c = self.target.config();
        c.set("group.id", format!("pubsub-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", self.target.isolation)
            .set("auto.offset.reset", "earliest");
        C::from_config_and_context(&c, self.context.clone())
            .map_err(|e| BrokerError::Invalid(format!("Kafka consumer settings: {e}")))
    }

    /// `sub` without a group: every partition of the topics named, from the end (live: a slow reader
    /// loses the newest and is told how many) or from `--from` (history: the reader is waited for).
    pub(super) async fn read_partitions(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        let topics = self.resolve_topics(&req).await?;
        if topics.is_empty() {
            return Err(BrokerError::Invalid(format!(
                "no Kafka topic matches {}; a pattern covers the topics that exist when sub starts",
                req.patterns.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ")
            )));
        }
        let topics = match req.partition {
            None => topics,
            Some(p) => match topics.as_slice() {
                [(topic, count)] if p < *count => vec![(topic.clone(), *count)],
                [(topic, _)] => return Err(convert::no_partition(topic, p)),
                _ => {
                    return Err(BrokerError::Invalid(
                        "a partition (--from P:SEQ) needs exactly one topic".into(),
                    ));
                }
            },
        };
        let tpl = self.start_offsets(&topics, req.partition, req.from).await?;
        // With --exit-at-end: where each partition ends now; one that starts there has nothing to read.
        let mut ends = Vec::new();
        if req.until_end {
            let starts: Vec<(String, i32, Offset)> =
                tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect();
            for (topic, p, offset) in starts {
                let Ok(name) = Name::new(&topic) else { continue };
                let (low, high) = self.watermarks(&name, u32::try_from(p).unwrap_or(0)).await?;
                let start = match offset {
                    Offset::Offset(o) => o,
                    Offset::Beginning => low,
                    Offset::OffsetTail(n) => high - n,
                    _ => high,
                };
                if start.max(low) < high {
                    ends.push((topic, p, high));
                }
            }
            if ends.is_empty() {
                let (_, rx) = mpsc::channel(1);
                let task = tokio::spawn(async {});
                return Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })));
            }
        }
        let until_end = req.until_end;
        let consumer: StreamConsumer<convert::Context> = self.reader()?;
        consumer.assign(&tpl).map_err(|e| convert::error(&self.target.shown, &e))?;
        let (tx, rx) =
            mpsc::channel(req.prefetch.map_or(1024, |p| usize::try_from(p).unwrap_or(1024)).clamp(1, 1024));
        let live = req.from.is_none();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            let mut forward = Forwarder::new(tx.clone(), Some(events));
            loop {
                let next = tokio::select! {
                    next = consumer.recv() => next,
                    alive = forward.catch_up(), if forward.owes_report() => {
                        if !alive { return; }
                        continue;
                    }
                    () = tx.closed() => return,
                };
                let m = match next {
                    Ok(m) => {
                        if until_end {
                            use rdkafka::message::Message as _;
                            let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                            ends.retain(|(t, p, end)| !(t == topic && *p == partition && offset + 1 >= *end));
                        }
                        convert::to_message(&m)
                    }
                    Err(e) => {
                        // Transport trouble is retried by librdkafka itself; anything else ends the stream.
                        if is_transient(&e) {
                            continue;
                        }
                        let _ = forward.fail(BrokerError::Protocol(e.to_string())).await;
                        return;
                    }
                };
                let Some(m) = m else { continue };
                let item = StreamItem::Delivery(BrokerDelivery::untracked(m));
                if live {
                    if !forward.offer(item).open() {
                        return;
                    }
                } else if tx.send(Ok(item)).await.is_err() {
                    return;
                }
                if until_end && ends.is_empty() {
                    return;
                }
            }
        });
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }

    /// Reads a topic's history without a group: from a position up to `max` messages, or the newest
    /// `n` across partitions merged by time, stopping at the high watermarks found first.
    pub(super) async fn read_history(
        &self,
        topic: &Name,
        from: BrowseFrom,
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let Some(count) = self.partition_count(topic).await? else { return Err(convert::no_topic(topic)) };
        let mut ends = Vec::new();
        let mut tpl = TopicPartitionList::new();
        let add = |tpl: &mut TopicPartitionList, p: u32, o: Offset| {
            tpl.add_partition_offset(topic.as_str(), i32::try_from(p).unwrap_or(i32::MAX), o)
                .map_err(|e| convert::error(&self.target.shown, &e))
        };
        let partitions: Vec<u32> = match from {
            BrowseFrom::At { partition, .. } if partition >= count => {
                return Err(convert::no_partition(topic, partition));
            }
            BrowseFrom::At { partition, .. } => vec![partition],
            BrowseFrom::Seq(_) if count > 1 => vec![0],
            _ => (0..count).collect(),
        };
        for &p in &partitions {
            let (low, high) = self.watermarks(topic, p).await?;
            if high <= low {
                continue;
            }
            let start = match from {
                BrowseFrom::Seq(seq) | BrowseFrom::At { seq, .. } => convert::offset_of(seq).max(low),
                BrowseFrom::Last(n) => high.saturating_sub(i64::try_from(n).unwrap_or(i64::MAX)).max(low),
                BrowseFrom::Time(t) => millis(t),
            };
            if start >= high {
                continue;
            }
            ends.push((p, high));
            add(&mut tpl, p, Offset::Offset(start))?;
        }
        if let BrowseFrom::Time(_) = from {
            tpl = self.offsets_for_times(tpl).await?;
            // A partition with nothing at or after the time ends where it is.
            let mut kept = TopicPartitionList::new();
            for e in tpl.elements() {
                if let Offset::Offset(_) = e.offset() {
                    add(&mut kept, u32::try_from(e.partition()).unwrap_or(0), e.offset())?;
                } else {
                    ends.retain(|(p, _)| i64::from(*p) != i64::from(e.partition()));
                }
            }
            tpl = kept;
        }
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let consumer: BaseConsumer<convert::Context> = self.reader()?;
        consumer.assign(&tpl).map_err(|e| convert::error(&self.target.shown, &e))?;
        let last = matches!(from, BrowseFrom::Last(_));
        let cap = if last { usize::MAX } else { max };
        let shown = self.target.shown.clone();
        let mut got = blocking(move || drain(&consumer, ends, cap, &shown)).await??;
        got.sort_by_key(|m| (m.publish_time, m.partition, m.seq));
        if last {
            let skip = got.len().saturating_sub(max);
            got.drain(..skip);
        } else {
            got.truncate(max);
        }
        Ok(got)
    }
}

/// Polls `consumer` until every partition reached its end offset, `cap` messages came, or time is up.
fn drain(
    consumer: &BaseConsumer<convert::Context>,
    mut ends: Vec<(u32, i64)>,
    cap: usize,
    shown: &str,
) -> Result<Vec<Message>, BrokerError> {
    let started = Instant::now();
    let mut got = Vec::new();
    while !ends.is_empty() && got.len() < cap && started.elapsed() < HISTORY_MAX {
        let Some(next) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = match next {
            Ok(m) => m,
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(convert::error(shown, &e)),
        };
        let p = u32::try_from(rdkafka::message::Message::partition(&m)).unwrap_or(0);
        let offset = rdkafka::message::Message::offset(&m);
        if let Some(msg) = convert::to_message(&m) {
            got.push(msg);
        }
        if ends.iter().any(|(q, end)| *q == p && offset + 1 >= *end) {
            ends.retain(|(q, _)| *q != p);
        }
    }
    Ok(got)
}

/// Whether librdkafka will get past this by itself (a broker restarting, a partition end).
pub(super) fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::PartitionEOF
                | Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::NetworkException
        )
    ) || matches!(e, rdkafka::error::KafkaError::PartitionEOF(_))
}

/// A time as Kafka's milliseconds.
pub(super) fn millis(t: Timestamp) -> i64 {
    t.as_micros() / 1000
}
