//! Snapshots (SEMANTICS.md §9.9): a subscription's ack state — per partition the floor and the seqs
//! settled above it — captured under a name, and given back by `seek --snapshot` to that subscription or
//! to another one of the same topic. Snapshots live in the registry and, on a durable engine, in the
//! metadata journal, so they survive restarts. Each one expires (7 days after it was taken unless
//! `--ttl` says otherwise, or never): the timer removes it then, and retention takes what it held.

use std::time::{Duration, UNIX_EPOCH};

use super::subscription::{Ctx, Effects, Entry, SubState};
use super::{EXPIRED_SNAPSHOTS_KEPT, Engine, EngineError, Name, Timestamp, lock};
use crate::model::config::Ordering;
use crate::model::{SNAPSHOT_TTL, SnapshotInfo, SnapshotPartition};
use crate::store::MetaOp;
use crate::store::journal::{pos_key, split_key};

impl SubState {
    /// This subscription's ack state in `partition`: the floor, and the settled seqs between it and the
    /// cursor as ranges (the gaps between unsettled entries).
    pub(super) fn capture(&self, partition: u32) -> SnapshotPartition {
        let part = self.parts.get(partition as usize).copied().unwrap_or_default();
        let mut acked = Vec::new();
        let mut from = part.ack_floor + 1;
        let range = pos_key(partition, from)..=pos_key(partition, part.delivered_seq.max(from));
        for (&key, entry) in self.entries.range(range) {
            if entry.state.is_terminal() {
                continue;
            }
            let seq = split_key(key).1;
            if seq > from {
                acked.push([from, seq - 1]);
            }
            from = seq + 1;
        }
        if from <= part.delivered_seq {
            acked.push([from, part.delivered_seq]);
        }
        SnapshotPartition { partition, ack_floor: part.ack_floor, acked }
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
        let p = part.partition;
        let Some(log) = ctx.log(p) else {
            return 0;
        };
        let head = log.head_seq();
        let floor = part.ack_floor.max(log.first_seq().saturating_sub(1)).min(head);
        let top = part.top().min(head).max(floor);
        self.seek(&[(p, floor + 1)], effects);
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
            self.entries.insert(pos_key(p, seq), Entry::unleased(ctx.now, record.size()));
            self.ready.insert(pos_key(p, seq));
        }
        if let Some(cursor) = self.parts.get_mut(p as usize) {
            cursor.delivered_seq = top;
        }
        self.advance_floor_in(p);
        floor + 1
    }
}

/// `t` as RFC 3339 to the second, for messages.
fn rfc3339(t: Timestamp) -> String {
    let micros = u64::try_from(t.as_micros()).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

impl Engine {
    /// Captures a subscription's ack state under `name`; it expires after the default lifetime
    /// ([`SNAPSHOT_TTL`], 7 days).
    pub fn create_snapshot(&self, name: Name, subscription: &Name) -> Result<SnapshotInfo, EngineError> {
        self.create_snapshot_for(name, subscription, Some(SNAPSHOT_TTL))
    }

    /// Captures a subscription's ack state under `name`, to expire `ttl` from now (`None`: never; it
    /// then stays until `snapshot rm`). A `ttl` of zero is refused: the snapshot would be gone at once.
    pub fn create_snapshot_for(
        &self,
        name: Name,
        subscription: &Name,
        ttl: Option<Duration>,
    ) -> Result<SnapshotInfo, EngineError> {
        if ttl.is_some_and(|d| d.is_zero()) {
            return Err(EngineError::InvalidConfig(format!(
                "snapshot \"{name}\": a ttl of 0 would expire it at once; give a duration such as 1h or 30d, or never"
            )));
        }
        let now = self.now();
        let cell = self.sub_cell(subscription)?;
        let mut reg = self.registry_mut();
        if reg.snapshots.contains_key(&name) {
            return Err(EngineError::SnapshotExists(name));
        }
        let (snapshot, durable) = {
            let mut state = lock(&cell.state);
            let sub = state
                .sub(subscription)
                .ok_or_else(|| EngineError::NoSuchSubscription(subscription.clone()))?;
            let snapshot = SnapshotInfo {
                name: name.clone(),
                subscription: subscription.clone(),
                topic: state.config.name.clone(),
                created: now,
                expires: ttl.map(|d| now.plus(d)),
                partitions: (0..sub.parts.len()).map(|p| sub.capture(p as u32)).collect(),
            };
            // Pinned at once, under the topic's lock: no retention may take what it could seek back to.
            state.pin(&snapshot);
            (snapshot, state.log(0).is_some_and(|log| log.is_durable()))
        };
        if let Some(store) = &self.inner.store
            && durable
            && let Err(e) = store.record(&MetaOp::CreateSnapshot {
                snapshot: snapshot.clone(),
                never_expires: snapshot.expires.is_none(),
            })
        {
            drop(reg);
            lock(&cell.state).unpin(&name, now, &mut Effects::default());
            return Err(e.into());
        }
        reg.expired_snapshots.remove(&name);
        reg.snapshots.insert(name, snapshot.clone());
        Ok(snapshot)
    }

    /// Every snapshot, by name.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.registry().snapshots.values().cloned().collect()
    }

    /// Removes a snapshot; retention takes at once what only it was keeping.
    pub fn delete_snapshot(&self, name: &Name) -> Result<(), EngineError> {
        self.remove_snapshot(name, None)
    }

    /// Removes every snapshot whose time is up (the timer calls it), releasing what it pinned.
    pub(super) fn expire_snapshots(&self, now: Timestamp) {
        let due: Vec<Name> = self
            .registry()
            .snapshots
            .values()
            .filter(|s| s.expires.is_some_and(|at| at <= now))
            .map(|s| s.name.clone())
            .collect();
        for name in due {
            if let Err(e) = self.remove_snapshot(&name, Some(now)) {
                tracing::warn!(snapshot = %name, "cannot remove the expired snapshot: {e}");
            }
        }
    }

    /// Removes snapshot `name`: `expired_at` is set when its time ran out, which is then remembered.
    fn remove_snapshot(&self, name: &Name, expired_at: Option<Timestamp>) -> Result<(), EngineError> {
        let mut reg = self.registry_mut();
        let Some(topic) = reg.snapshots.get(name).map(|s| s.topic.clone()) else {
            return Err(EngineError::NoSuchSnapshot(name.clone()));
        };
        if let Some(store) = &self.inner.store {
            store.record(&MetaOp::DeleteSnapshot { name: name.clone() })?;
        }
        reg.snapshots.remove(name);
        if let Some(at) = expired_at {
            if reg.expired_snapshots.len() >= EXPIRED_SNAPSHOTS_KEPT {
                reg.expired_snapshots.pop_first();
            }
            reg.expired_snapshots.insert(name.clone(), at);
        }
        let cell = reg.topics.get(&topic).cloned();
        drop(reg);
        if let Some(cell) = cell {
            let mut effects = Effects::default();
            lock(&cell.state).unpin(name, self.now(), &mut effects);
            self.apply(effects);
        }
        Ok(())
    }

    /// Moves a subscription to a snapshot's ack state; returns the first seq it may deliver again. The
    /// subscription must read the snapshot's topic. On a durable engine the new state is checkpointed
    /// before this returns.
    /// A snapshot that expired fails with [`EngineError::SnapshotExpired`], whether or not the timer
    /// has removed it yet (then it is removed here).
    pub fn seek_snapshot(&self, subscription: &Name, snapshot: &Name) -> Result<u64, EngineError> {
        let found = self.registry().snapshots.get(snapshot).cloned();
        let snap = match found {
            Some(snap) => snap,
            None => {
                return Err(match self.registry().expired_snapshots.get(snapshot) {
                    Some(&at) => EngineError::SnapshotExpired { name: snapshot.clone(), at: rfc3339(at) },
                    None => EngineError::NoSuchSnapshot(snapshot.clone()),
                });
            }
        };
        if let Some(at) = snap.expires.filter(|&at| at <= self.now()) {
            self.remove_snapshot(snapshot, Some(at))?;
            return Err(EngineError::SnapshotExpired { name: snapshot.clone(), at: rfc3339(at) });
        }
        self.with_sub(subscription, |s, ctx, effects| {
            if *ctx.topic != snap.topic {
                return Err(EngineError::InvalidConfig(format!(
                    "snapshot \"{}\" was taken on topic \"{}\" and subscription \"{subscription}\" reads \"{}\"; a snapshot applies only to subscriptions of its own topic",
                    snap.name, snap.topic, ctx.topic
                )));
            }
            if s.config.ordering != Ordering::None {
                return Err(EngineError::Unsupported(format!(
                    "subscription \"{subscription}\" keeps an ordering; seeking an ordered subscription to a snapshot is not supported yet"
                )));
            }
            // Every partition moves: one the snapshot did not know (the topic grew since) starts over at
            // its beginning, as a subscription that had read none of it.
            let mut next = 0;
            for p in 0..s.parts.len() as u32 {
                let empty = SnapshotPartition { partition: p, ack_floor: 0, acked: Vec::new() };
                let part = snap.partition(p).unwrap_or(&empty);
                let first = s.restore_snapshot(part, ctx, effects);
                if p == 0 {
                    next = first;
                }
            }
            let heads: Vec<u64> = ctx.logs.iter().map(super::log::Log::head_seq).collect();
            s.checkpoint(&heads)?;
            Ok(next)
        })
    }
}
