//! `sub -s GROUP`: a consumer-group member. The broker assigns and revokes partitions (told to the
//! reader as `Assigned`/`Revoked`); an ack commits, per partition, the lowest offset not yet acked (or
//! past the last delivered when all are), so acks may come in any order and an unacked message is
//! delivered again after a restart or a rebalance. Kafka keeps no per-message state to nack.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::consume::is_transient;
use super::{KafkaBroker, convert};
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
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }
}

/// The context of a member's consumer: tells the reader of rebalances and forgets revoked partitions.
pub(super) struct GroupContext {
    base: convert::Context,
    held: Arc<Held>,
    changes: mpsc::UnboundedSender<StreamItem>,
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
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commits made by acks are already on their way; what was not acked goes to the next owner.
            let mut parts = self.held.parts.lock().unwrap_or_else(PoisonError::into_inner);
            for e in tpl.elements() {
                parts.remove(&(e.topic().to_string(), e.partition()));
            }
            drop(parts);
            if tpl.count() > 0 {
                let _ = self.changes.send(StreamItem::Revoked { partitions: numbers(tpl) });
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let committed =
                consumer.committed_offsets((*tpl).clone(), std::time::Duration::from_secs(5)).ok();
            let mut parts = self.held.parts.lock().unwrap_or_else(PoisonError::into_inner);
            for e in tpl.elements() {
                let from = committed
                    .as_ref()
                    .and_then(|c| c.find_partition(e.topic(), e.partition()))
                    .and_then(|c| match c.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .unwrap_or(0);
                parts.insert(
                    (e.topic().to_string(), e.partition()),
                    Acks { committed: from, ..Acks::default() },
                );
            }
            drop(parts);
            // Also an empty assignment: the reader learns it joined, holding nothing (more members than
            // partitions).
            let _ = self.changes.send(StreamItem::Assigned { partitions: numbers(tpl) });
        }
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
        let Ok(commit) = self.held.acked(topic, partition, convert::offset_of(token.seq)) else {
            return Err(revoked());
        };
        if let Some(offset) = commit {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|e| convert::error(&self.shown, &e))?;
            self.consumer.commit(&tpl, CommitMode::Async).map_err(|e| convert::error(&self.shown, &e))?;
        }
        Ok(())
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
        self.members.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
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
        let context = GroupContext { base: self.context.clone(), held: held.clone(), changes: changes_tx };
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
            loop {
                let next = tokio::select! {
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
}
