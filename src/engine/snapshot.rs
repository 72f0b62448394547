//! Snapshots (SEMANTICS.md §9.9): a subscription's ack state — per partition the floor and the seqs
//! settled above it — captured under a name, and given back by `seek --snapshot` to that subscription or
//! to another one of the same topic. Snapshots live in the registry and, on a durable engine, in the
//! metadata journal, so they survive restarts.

use super::subscription::{Ctx, Effects, Entry, SubState};
use super::{Engine, EngineError, Name, lock};
use crate::model::{DeliveryState, SnapshotInfo, SnapshotPartition};
use crate::store::MetaOp;

impl SubState {
    /// This subscription's ack state in `partition`: the floor, and the settled seqs between it and the
    /// cursor as ranges (the gaps between unsettled entries).
    pub(super) fn capture(&self, partition: u32) -> SnapshotPartition {
        let mut acked = Vec::new();
        let mut from = self.ack_floor + 1;
        for (&seq, entry) in self.entries.range(from..=self.delivered_seq.max(from)) {
            if entry.state.is_terminal() {
                continue;
            }
            if seq > from {
                acked.push([from, seq - 1]);
            }
            from = seq + 1;
        }
        if from <= self.delivered_seq {
            acked.push([from, self.delivered_seq]);
        }
        SnapshotPartition { partition, ack_floor: self.ack_floor, acked }
    }

    /// Gives this subscription the ack state of `part` (T11 with a snapshot as the target): every lease
    /// is void, seqs the snapshot settled are settled, every other retained seq this subscription covers
    /// up to the snapshot's highest is AVAILABLE with attempt 0, and newer ones are pending. Returns the
    /// first seq that may be delivered again.
    pub(super) fn restore_snapshot(
        &mut self,
        part: &SnapshotPartition,
        ctx: &Ctx<'_>,
        effects: &mut Effects,
    ) -> u64 {
        let log = ctx.log;
        let head = log.head_seq();
        let floor = part.ack_floor.max(log.first_seq().saturating_sub(1)).min(head);
        let top = part.top().min(head).max(floor);
        self.seek(floor + 1, effects);
        let mut next = floor + 1;
        let mut unsettled = Vec::new();
        for range in &part.acked {
            unsettled.extend(next..range[0].min(top + 1));
            next = next.max(range[1].saturating_add(1));
        }
        unsettled.extend(next..=top);
        for seq in unsettled {
            let Some(record) = log.get(seq) else {
                continue;
            };
            if !self.covers_record(ctx.topic, &record) {
                continue;
            }
            let now = ctx.now;
            self.entries.insert(
                seq,
                Entry {
                    state: DeliveryState::Available,
                    attempt: 0,
                    consumer: None,
                    lease: 0,
                    deadline: now,
                    lease_start: now,
                    not_before: now,
                    first_delivered: now,
                    last_delivered: now,
                    bytes: record.size(),
                },
            );
            self.ready.insert(seq);
        }
        self.delivered_seq = top;
        self.advance_floor();
        floor + 1
    }
}

impl Engine {
    /// Captures a subscription's ack state under `name`.
    pub fn create_snapshot(&self, name: Name, subscription: &Name) -> Result<SnapshotInfo, EngineError> {
        let now = self.now();
        let cell = self.sub_cell(subscription)?;
        let mut reg = self.registry_mut();
        if reg.snapshots.contains_key(&name) {
            return Err(EngineError::SnapshotExists(name));
        }
        let (snapshot, durable) = {
            let state = lock(&cell.state);
            let sub = state
                .sub(subscription)
                .ok_or_else(|| EngineError::NoSuchSubscription(subscription.clone()))?;
            let snapshot = SnapshotInfo {
                name: name.clone(),
                subscription: subscription.clone(),
                topic: state.config.name.clone(),
                created: now,
                partitions: vec![sub.capture(0)],
            };
            (snapshot, state.log.is_durable())
        };
        if let Some(store) = &self.inner.store
            && durable
        {
            store.record(&MetaOp::CreateSnapshot { snapshot: snapshot.clone() })?;
        }
        reg.snapshots.insert(name, snapshot.clone());
        Ok(snapshot)
    }

    /// Every snapshot, by name.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.registry().snapshots.values().cloned().collect()
    }

    /// Removes a snapshot.
    pub fn delete_snapshot(&self, name: &Name) -> Result<(), EngineError> {
        let mut reg = self.registry_mut();
        if !reg.snapshots.contains_key(name) {
            return Err(EngineError::NoSuchSnapshot(name.clone()));
        }
        if let Some(store) = &self.inner.store {
            store.record(&MetaOp::DeleteSnapshot { name: name.clone() })?;
        }
        reg.snapshots.remove(name);
        Ok(())
    }

    /// Moves a subscription to a snapshot's ack state; returns the first seq it may deliver again. The
    /// subscription must read the snapshot's topic. On a durable engine the new state is checkpointed
    /// before this returns.
    pub fn seek_snapshot(&self, subscription: &Name, snapshot: &Name) -> Result<u64, EngineError> {
        let snap = self
            .registry()
            .snapshots
            .get(snapshot)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchSnapshot(snapshot.clone()))?;
        self.with_sub(subscription, |s, ctx, effects| {
            if *ctx.topic != snap.topic {
                return Err(EngineError::InvalidConfig(format!(
                    "snapshot \"{}\" was taken on topic \"{}\" and subscription \"{subscription}\" reads \"{}\"; a snapshot applies only to subscriptions of its own topic",
                    snap.name, snap.topic, ctx.topic
                )));
            }
            let empty = SnapshotPartition { partition: 0, ack_floor: 0, acked: Vec::new() };
            let part = snap.partition(0).unwrap_or(&empty);
            let next = s.restore_snapshot(part, ctx, effects);
            s.checkpoint()?;
            Ok(next)
        })
    }
}
