//! `sub -s GROUP`: a consumer-group member. The broker assigns and revokes partitions (told to the
//! reader as `Assigned`/`Revoked`); an ack commits, per partition, the lowest offset not yet acked (or
//! past the last delivered when all are), so acks may come in any order and an unacked message is
//! delivered again after a restart or a rebalance. Kafka keeps no per-message state to nack.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::consume::is_transient;
use super::{KafkaBroker, REQUEST_TIMEOUT, convert};
use crate::broker::{
    AckToken, BrokerDelivery, BrokerError, ChannelSource, DeliveryStream, StreamItem, SubscribeRequest,
};
use crate::model::{AckMode, Name, StartPosition};

/// Where one partition's acks stand.
#[derive(Debug, Default)]
struct Acks {
    /// Offsets delivered and not acked.
    outstanding: BTreeSet<i64>,
    /// One past the last offset delivered, once one was.
    next: Option<i64>,
    /// The offset last committed by this member.
    committed: i64,
}

impl Acks {
    /// The offset to commit: the lowest unacked one, else one past the last delivered.
    fn floor(&self) -> Option<i64> {
        self.outstanding.first().copied().or(self.next)
    }
}

/// The partitions a member holds and the acks of each, keyed by (topic, partition).
#[derive(Debug, Default)]
struct Held {
    parts: Mutex<HashMap<(String, i32), Acks>>,
    /// Floors that moved and are not committed yet: acks are committed together every
    /// [`COMMIT_EVERY`], not one request per message.
    dirty: Mutex<HashMap<(String, i32), i64>>,
}

impl Held {
    /// Records a delivery; `false` when the partition is not held (revoked meanwhile).
    fn delivered(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        match parts.get_mut(&(topic.to_string(), partition)) {
            Some(a) => {
                a.outstanding.insert(offset);
                a.next = Some(a.next.map_or(offset + 1, |n| n.max(offset + 1)));
                true
            }
            None => false,
        }
    }

    /// Marks `offset` acked; the offset to commit when the floor moved.
    fn acked(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<i64>, ()> {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let a = parts.get_mut(&(topic.to_string(), partition)).ok_or(())?;
        a.outstanding.remove(&offset);
        match a.floor() {
            Some(f) if f > a.committed => {
                a.committed = f;
                self.dirty
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((topic.to_string(), partition), f);
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }

    /// Takes the floors waiting to be committed, of the partitions `keep` accepts.
    fn take_dirty(&self, keep: impl Fn(&str, i32) -> bool) -> TopicPartitionList {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tpl = TopicPartitionList::new();
        dirty.retain(|(topic, partition), offset| {
            if !keep(topic, *partition) {
                return true;
            }
            if tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
                return true;
            }
            false
        });
        tpl
    }
}

/// How often a member commits the floors its acks moved. An ack is not a commit: a crash loses at most
/// this much of the commit, and what it loses is delivered again (at least once).
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// The context of a member's consumer: tells the reader of rebalances and forgets revoked partitions.
pub(super) struct GroupContext {
    base: convert::Context,
    held: Arc<Held>,
    changes: mpsc::UnboundedSender<StreamItem>,
    /// Where a partition the group has no offset for starts: its end (else its start).
    from_end: bool,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.base.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

fn numbers(tpl: &TopicPartitionList) -> Vec<u32> {
    let mut ps: Vec<u32> = tpl.elements().iter().map(|e| u32::try_from(e.partition()).unwrap_or(0)).collect();
    ps.sort_unstable();
    ps.dedup();
    ps
}

impl ConsumerContext for GroupContext {
    /// Takes over librdkafka's rebalance so that an assignment starts at explicit offsets: where the
    /// group has committed nothing, at the partition's end (or start) as it is now. Left to
    /// `auto.offset.reset`, the end would be looked up only when the first fetch goes out, after the
    /// reader was told "assigned", and what was published in between would never be delivered.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let pinned = self.pin(consumer, tpl);
                let assigned =
                    if cooperative { consumer.incremental_assign(&pinned) } else { consumer.assign(&pinned) };
                match assigned {
                    // Also an empty assignment: the reader learns it joined, holding nothing (more
                    // members than partitions).
                    Ok(()) => {
                        let _ = self.changes.send(StreamItem::Assigned { partitions: numbers(tpl) });
                    }
                    Err(e) => self.base.error(e, "taking the partitions the group assigned"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // What was acked is committed before the partitions go; what was not goes to the next
                // owner.
                let going = self.held.take_dirty(|t, p| tpl.find_partition(t, p).is_some());
                if going.count() > 0 {
                    let _ = consumer.commit(&going, CommitMode::Sync);
                }
                let mut parts = self.held.parts.lock().unwrap_or_else(PoisonError::into_inner);
                for e in tpl.elements() {
                    parts.remove(&(e.topic().to_string(), e.partition()));
                }
                drop(parts);
                let _ = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if tpl.count() > 0 {
                    let _ = self.changes.send(StreamItem::Revoked { partitions: numbers(tpl) });
                }
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                self.base.error(KafkaError::Rebalance(code), "the group's rebalance failed");
                let _ = consumer.unassign();
            }
        }
    }
}

impl GroupContext {
    /// The assignment `tpl` with each partition's start made explicit (its committed offset, else its
    /// end or start now), each recorded as held. A partition whose offsets cannot be read is left to
    /// `auto.offset.reset`.
    fn pin(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> TopicPartitionList {
        let committed = consumer.committed_offsets(tpl.clone(), REQUEST_TIMEOUT).ok();
        let mut pinned = TopicPartitionList::new();
        let mut parts = self.held.parts.lock().unwrap_or_else(PoisonError::into_inner);
        for e in tpl.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            let stored = committed.as_ref().and_then(|c| c.find_partition(topic, partition)).and_then(|c| {
                match c.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                }
            });
            let start = stored.or_else(|| {
                let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT).ok()?;
                Some(if self.from_end { high } else { low })
            });
            let offset = start.map_or(Offset::Invalid, Offset::Offset);
            if pinned.add_partition_offset(topic, partition, offset).is_err() {
                pinned.add_partition(topic, partition);
            }
            parts.insert(
                (topic.to_string(), partition),
                Acks { committed: stored.or(start).unwrap_or(0), ..Acks::default() },
            );
        }
        pinned
    }
}

/// One group member of this process, as settles find it.
pub(super) struct Member {
    consumer: Arc<StreamConsumer<GroupContext>>,
    held: Arc<Held>,
    shown: String,
}

impl Member {
    /// Acks one delivery: commits the partition's new floor when it moved.
    pub(super) fn ack(&self, token: &AckToken) -> Result<(), BrokerError> {
        let topic = token.reply.as_deref().and_then(|r| r.split_once('|')).map_or("", |(_, t)| t);
        let partition = i32::try_from(token.partition).unwrap_or(i32::MAX);
        let revoked = || BrokerError::Revoked {
            subscription: token.subscription.to_string(),
            partition: token.partition,
        };
        match self.held.acked(topic, partition, convert::offset_of(token.seq)) {
            Ok(_) => Ok(()),
            Err(()) => Err(revoked()),
        }
    }

    /// Commits the floors acks moved since the last time, of the partitions still held.
    fn commit(&self) -> Result<(), BrokerError> {
        let tpl = {
            let parts = self.held.parts.lock().unwrap_or_else(PoisonError::into_inner);
            self.held.take_dirty(|t, p| parts.contains_key(&(t.to_string(), p)))
        };
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Async).map_err(|e| convert::error(&self.shown, &e))
    }
}

/// Takes a member out of the registry when its stream ends, so its consumer closes (waiting for the
/// commits in flight) and leaves the group.
struct Registered {
    members: Arc<Mutex<HashMap<String, Arc<Member>>>>,
    key: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let member = self.members.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        // The last acks' floors go out before the consumer closes (closing waits for them).
        if let Some(member) = member {
            let _ = member.commit();
        }
    }
}

impl KafkaBroker {
    /// Joins consumer group `group` on the topics `req` names.
    pub(super) async fn join_group(
        &self,
        group: Name,
        req: SubscribeRequest,
    ) -> Result<DeliveryStream, BrokerError> {
        let topics = self.resolve_topics(&req).await?;
        if topics.is_empty() {
            return Err(BrokerError::Invalid("no Kafka topic matches the patterns given".into()));
        }
        let reset = match req.from {
            Some(StartPosition::All) => "earliest",
            None | Some(StartPosition::New) => "latest",
            Some(_) => {
                return Err(BrokerError::Invalid(
                    "a group starts at its committed offsets (or, when new, at start or end): move it to an offset or time with `pubsub seek GROUP TARGET` while no member runs".into(),
                ));
            }
        };
        let held = Arc::new(Held::default());
        let (changes_tx, mut changes_rx) = mpsc::unbounded_channel();
        let context = GroupContext {
            base: self.context.clone(),
            held: held.clone(),
            changes: changes_tx,
            from_end: reset == "latest",
        };
        let session = self.target.session_timeout.as_millis().to_string();
        let heartbeat = (self.target.session_timeout.as_millis() / 3).max(100).to_string();
        let mut c = self.target.config();
        c.set("group.id", group.as_str())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            .set("isolation.level", self.target.isolation)
            .set("session.timeout.ms", &session)
            .set("heartbeat.interval.ms", &heartbeat);
        if let Some(id) = &req.consumer {
            c.set("client.id", id);
        }
        let consumer: StreamConsumer<GroupContext> = c
            .create_with_context(context)
            .map_err(|e| BrokerError::Invalid(format!("Kafka consumer settings: {e}")))?;
        let names: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&names).map_err(|e| convert::error(&self.target.shown, &e))?;
        let consumer = Arc::new(consumer);
        let key = self.key();
        let member = Arc::new(Member {
            consumer: consumer.clone(),
            held: held.clone(),
            shown: self.target.shown.clone(),
        });
        self.members.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), member.clone());
        let registered = Registered { members: self.members.clone(), key: key.clone() };
        let acked = req.ack != AckMode::None;
        let prefetch = req.prefetch.map_or(1024, |p| usize::try_from(p).unwrap_or(1024)).clamp(1, 1024);
        let (tx, rx) = mpsc::channel(prefetch);
        let task = tokio::spawn(async move {
            let _registered = registered;
            let mut commits = tokio::time::interval(COMMIT_EVERY);
            commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let next = tokio::select! {
                    _ = commits.tick() => {
                        // A commit librdkafka will not take now (the member is leaving or rejoining)
                        // only holds the floor back: those messages are delivered again (at least once).
                        let _ = member.commit();
                        continue;
                    }
                    change = changes_rx.recv() => {
                        let Some(change) = change else { return };
                        if tx.send(Ok(change)).await.is_err() { return; }
                        continue;
                    }
                    next = consumer.recv() => next,
                    () = tx.closed() => return,
                };
                let m = match next {
                    Ok(m) => m,
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(BrokerError::Protocol(e.to_string()))).await;
                        return;
                    }
                };
                let (topic, partition, offset) = {
                    use rdkafka::message::Message as _;
                    (m.topic().to_string(), m.partition(), m.offset())
                };
                // A record of a partition taken away meanwhile goes to its new owner.
                if !held.delivered(&topic, partition, offset) {
                    continue;
                }
                let Some(message) = convert::to_message(&m) else { continue };
                drop(m);
                let token = AckToken {
                    subscription: group.clone(),
                    partition: u32::try_from(partition).unwrap_or(0),
                    seq: message.seq,
                    lease: u64::try_from(offset).unwrap_or(0),
                    reply: Some(format!("{key}|{topic}")),
                };
                let delivery = BrokerDelivery {
                    message,
                    attempt: None,
                    deadline: None,
                    token: acked.then(|| token.clone()),
                };
                if tx.send(Ok(StreamItem::Delivery(delivery))).await.is_err() {
                    return;
                }
                if !acked {
                    // A reader that does not ack: committed once handed on (at most once).
                    let _ = member.ack(&token);
                }
            }
        });
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_out_of_order_commit_only_the_contiguous_floor() {
        let held = Held::default();
        held.parts.lock().unwrap().insert(("t".into(), 0), Acks { committed: 10, ..Acks::default() });
        for o in 10..15 {
            assert!(held.delivered("t", 0, o));
        }
        assert!(!held.delivered("t", 1, 3), "partition 1 is not held");
        // 11 and 12 first: 10 is still out, nothing moves.
        assert_eq!(held.acked("t", 0, 11), Ok(None));
        assert_eq!(held.acked("t", 0, 12), Ok(None));
        // 10 acked: everything below 13 is done.
        assert_eq!(held.acked("t", 0, 10), Ok(Some(13)));
        assert_eq!(held.acked("t", 0, 14), Ok(None));
        // The last one: past the last delivered.
        assert_eq!(held.acked("t", 0, 13), Ok(Some(15)));
        assert_eq!(held.acked("t", 1, 0), Err(()));
    }

    #[test]
    fn moved_floors_wait_to_be_committed_together_and_only_the_newest_goes() {
        let held = Held::default();
        for p in [0, 1] {
            held.parts.lock().unwrap().insert(("t".into(), p), Acks::default());
            for o in 0..3 {
                held.delivered("t", p, o);
            }
        }
        for o in 0..3 {
            held.acked("t", 0, o).unwrap();
        }
        held.acked("t", 1, 0).unwrap();
        // Partition 1 only: partition 0 stays waiting.
        let one = held.take_dirty(|_, p| p == 1);
        assert_eq!(
            one.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>(),
            [(1, Offset::Offset(1))]
        );
        // Three acks of partition 0, one commit of its newest floor; then nothing is left.
        let rest = held.take_dirty(|_, _| true);
        assert_eq!(
            rest.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>(),
            [(0, Offset::Offset(3))]
        );
        assert_eq!(held.take_dirty(|_, _| true).count(), 0);
    }
}
