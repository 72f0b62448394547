//! One topic under its lock: the log, the subscriptions reading it, retention and deduplication.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::log::{Log, Record};
use super::stats::RateMeter;
use super::subscription::{Ctx, Effects, SubState};
use crate::model::clock::Timestamp;
use crate::model::config::{Discard, Durability, Limits, RetentionPolicy, StorageKind, TopicConfig};
use crate::model::error::EngineError;
use crate::model::event::EngineEvent;
use crate::model::message::{Headers, MessageExtra, PublishRequest};
use crate::model::name::Name;
use crate::model::{PartitionInfo, TopicCounters, TopicInfo};
use crate::store::SyncGate;
use crate::store::journal::{pos_key, split_key};

/// Everything about one topic that changes; guarded by the topic's mutex.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub config: TopicConfig,
    /// One log per partition, by number.
    pub logs: Vec<Log>,
    pub subs: Vec<SubState>,
    pub counters: TopicCounters,
    pub publish_rate: RateMeter,
    pub created: Timestamp,
    /// msg_id → partition and seq (a key of `pos_key`) for the dedup window, with the ids in publish
    /// order for eviction.
    dedup: HashMap<String, u64>,
    dedup_order: VecDeque<(Timestamp, String)>,
    /// True while any subscription has a push consumer, so publishes skip push dispatch otherwise.
    pub has_push: bool,
    /// The partition the next message without a key (and without `--partition`) goes to.
    next_partition: u32,
    /// Per partition, each key's retained seqs, oldest first; kept only under `max_msgs_per_key`.
    keys: Vec<HashMap<Bytes, VecDeque<u64>>>,
    /// The extras of recent key-only messages, by a hash of the key (see [`TopicState::extra_for`]).
    key_extras: Vec<Option<Arc<MessageExtra>>>,
    /// Cache misses that pushed another key out since the cache last grew.
    key_evictions: usize,
    /// The snapshots of this topic, each with its floor per partition: retention deletes nothing above
    /// a snapshot's floor, which `seek --snapshot` could bring back (SEMANTICS.md §9.8).
    pins: Vec<(Name, Vec<(u32, u64)>)>,
    /// During a publish batch ([`TopicState::begin_batch`]), the partitions whose limits are enforced
    /// when it ends rather than after each append.
    trims_due: Vec<bool>,
    /// Whether a publish batch defers the limits now.
    batching: bool,
}

/// Slots in the cache of key-only extras when a topic first sees a keyed message, and at most (it
/// grows fourfold when keys keep evicting each other): 32 KiB of slots for a topic of many keys.
const KEY_EXTRA_SLOTS_FIRST: usize = 64;
const KEY_EXTRA_SLOTS_MAX: usize = 4096;
/// Slots per set of that cache.
const KEY_EXTRA_WAYS: usize = 4;

/// FNV-1a over a key's bytes, for its slot in the extras cache (a collision only replaces the slot).
fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The slot of `hash` among `slots` (a power of two).
fn slot_of(hash: u64, slots: usize) -> usize {
    usize::try_from(hash).unwrap_or(usize::MAX) & (slots - 1)
}

impl TopicState {
    pub fn new(config: TopicConfig, now: Timestamp) -> Self {
        let logs = (0..config.partitions.max(1)).map(|_| Log::new()).collect();
        TopicState::with_logs(config, logs, now)
    }

    /// A topic over existing logs, one per partition (durable ones reopened, or new ones on disk).
    pub fn with_logs(config: TopicConfig, logs: Vec<Log>, now: Timestamp) -> Self {
        TopicState {
            config,
            logs,
            subs: Vec::new(),
            counters: TopicCounters::default(),
            publish_rate: RateMeter::default(),
            created: now,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            has_push: false,
            next_partition: 0,
            keys: Vec::new(),
            key_extras: Vec::new(),
            key_evictions: 0,
            pins: Vec::new(),
            trims_due: Vec::new(),
            batching: false,
        }
    }

    /// Keeps what snapshot `snapshot` could seek back to from retention, until [`TopicState::unpin`].
    pub fn pin(&mut self, snapshot: &crate::model::SnapshotInfo) {
        let floors = snapshot.partitions.iter().map(|p| (p.partition, p.ack_floor)).collect();
        self.pins.retain(|(name, _)| *name != snapshot.name);
        self.pins.push((snapshot.name.clone(), floors));
    }

    /// Lets retention take again what snapshot `name` held, and takes it: the limits, Interest and
    /// WorkQueue trimming and `max_msgs_per_key` catch up at once.
    pub fn unpin(&mut self, name: &Name, now: Timestamp, effects: &mut Effects) {
        let before = self.pins.len();
        self.pins.retain(|(pinned, _)| pinned != name);
        if self.pins.len() == before {
            return;
        }
        let mut removed = 0;
        if let Some(max) = self.config.limits.max_msgs_per_key {
            for p in 0..self.partitions() {
                removed += self.trim_keys(p, max, effects);
            }
        }
        self.note_expired(removed, effects);
        self.enforce_limits(now, effects);
    }

    /// The highest seq of partition `p` retention may delete: at or below every snapshot's floor there
    /// (a partition a snapshot did not know, grown since, it could seek back to whole).
    fn pinned_through(&self, p: u32) -> u64 {
        self.pins
            .iter()
            .map(|(_, floors)| floors.iter().find(|(q, _)| *q == p).map_or(0, |&(_, floor)| floor))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// How many partitions the topic has.
    pub fn partitions(&self) -> u32 {
        u32::try_from(self.logs.len()).unwrap_or(u32::MAX)
    }

    /// Partition `p`'s log.
    pub fn log(&self, p: u32) -> Option<&Log> {
        self.logs.get(p as usize)
    }

    /// Each partition's head.
    pub fn heads(&self) -> Vec<u64> {
        self.logs.iter().map(Log::head_seq).collect()
    }

    /// Each partition's first retained seq.
    pub fn firsts(&self) -> Vec<u64> {
        self.logs.iter().map(Log::first_seq).collect()
    }

    /// Messages retained, over every partition.
    pub fn len(&self) -> u64 {
        self.logs.iter().map(Log::len).sum()
    }

    /// The partition a message goes to: the one asked for, else the key's (see
    /// [`TopicConfig::partition_of_key`]), else the next in turn (round robin).
    fn partition_for(&mut self, req: &PublishRequest) -> Result<u32, EngineError> {
        let n = self.partitions();
        if let Some(p) = req.options.partition {
            if p >= n {
                return Err(EngineError::NoSuchPartition { topic: self.config.name.clone(), partition: p });
            }
            return Ok(p);
        }
        if n == 1 {
            return Ok(0);
        }
        if let Some(key) = &req.key {
            return Ok(TopicConfig::partition_of_key(key, n));
        }
        let p = self.next_partition % n;
        self.next_partition = (p + 1) % n;
        Ok(p)
    }

    pub fn sub(&self, name: &Name) -> Option<&SubState> {
        self.subs.iter().find(|s| s.name() == name)
    }

    /// Appends one message; returns its partition, its seq and whether it was a duplicate of an
    /// earlier msg_id.
    pub fn append(
        &mut self,
        req: &PublishRequest,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Result<(u32, u64, bool), EngineError> {
        let size = req.size();
        if size > self.config.max_msg_bytes as usize {
            return Err(EngineError::MessageTooLarge {
                topic: self.config.name.clone(),
                size,
                max: self.config.max_msg_bytes,
            });
        }
        if let Some(id) = &req.msg_id
            && !self.config.dedup_window.is_zero()
        {
            self.evict_dedup(now);
            if let Some(&key) = self.dedup.get(id) {
                self.counters.duplicates += 1;
                let (p, seq) = split_key(key);
                return Ok((p, seq, true));
            }
        }
        let p = self.partition_for(req)?;
        if self.config.discard == Discard::New {
            // Age retention applies regardless of discard policy; make room it would make before judging.
            self.enforce_limits_in(p, now, effects);
        }
        if self.config.discard == Discard::New
            && let Some(limit) = self.full_for(p, size as u64)
        {
            self.counters.rejected_full += 1;
            effects.events.push(EngineEvent::DiscardNewRejected { topic: self.config.name.clone() });
            return Err(EngineError::TopicFull { topic: self.config.name.clone(), limit });
        }
        let extra = self.extra_for(req);
        let Some(log) = self.logs.get_mut(p as usize) else {
            return Err(EngineError::NoSuchPartition { topic: self.config.name.clone(), partition: p });
        };
        // Publish times never go backwards within a partition, even if the clock does.
        let time = log.last_time().map_or(now, |last| last.max(now));
        let subject = (req.subject != self.config.name).then(|| req.subject.clone());
        let seq = log.append(time, subject, extra, &req.payload)?;
        self.counters.published += 1;
        if let Some(id) = &req.msg_id
            && !self.config.dedup_window.is_zero()
        {
            self.dedup.insert(id.clone(), pos_key(p, seq));
            self.dedup_order.push_back((now, id.clone()));
        }
        match self.trims_due.get_mut(p as usize).filter(|_| self.batching) {
            Some(due) => *due = true,
            None => self.enforce_limits_in(p, now, effects),
        }
        if let (Some(max), Some(key)) = (self.config.limits.max_msgs_per_key, &req.key) {
            let removed = self.keep_newest_of_key(p, key, seq, max, false, effects);
            self.note_expired(removed, effects);
        }
        if let Some(log) = self.logs.get(p as usize) {
            for sub in &mut self.subs {
                // A message a caught-up filtered subscription does not cover is settled for it at once.
                if sub.parts.get(p as usize).is_some_and(|part| part.delivered_seq + 1 == seq) {
                    sub.skip_uncovered_in(p, &self.config.name, log);
                }
            }
        }
        // Interest with no subscription (or none that covers it): the message goes at once.
        self.trim_settled(p, effects);
        Ok((p, seq, false))
    }

    /// The key, msg_id and headers a record keeps. A message with a key and nothing else shares the
    /// extra of the last message with the same key, found in a small cache by a hash of the key: keys
    /// repeat, and a record whose extra is shared drops a reference on a hot cache line when retention
    /// deletes it, where an extra of its own would be a cold one. With several partitions the oldest
    /// records are scattered over memory, and those cold drops were most of what 8 partitions cost
    /// more than one (docs/BENCHMARKS.md, "Partitions and ordering").
    ///
    /// The cache is set-associative, [`KEY_EXTRA_WAYS`] slots a set, so two hot keys that hash to the
    /// same set both stay (a direct-mapped cache let about a fifth of 1,000 keys evict each other on
    /// every message).
    fn extra_for(&mut self, req: &PublishRequest) -> Option<Arc<MessageExtra>> {
        let (Some(key), None, true) = (&req.key, &req.msg_id, req.headers.is_empty()) else {
            return MessageExtra::pack(req.key.clone(), req.msg_id.clone(), req.headers.clone());
        };
        if self.key_extras.is_empty() {
            self.key_extras.resize(KEY_EXTRA_SLOTS_FIRST, None);
        }
        let hash = key_hash(key);
        let set = self.key_set(hash);
        let ways = &self.key_extras[set..set + KEY_EXTRA_WAYS];
        if let Some(extra) = ways.iter().flatten().find(|e| e.key.as_ref() == Some(key)) {
            return Some(Arc::clone(extra));
        }
        let mut way = ways.iter().position(Option::is_none);
        if way.is_none() {
            // Keys keep pushing each other out: more slots, up to a bound, so a topic of few keys
            // stays small and one of many keys finds them.
            self.key_evictions += 1;
            let slots = self.key_extras.len();
            if self.key_evictions > slots && slots < KEY_EXTRA_SLOTS_MAX {
                self.key_extras = vec![None; slots * 4];
                self.key_evictions = 0;
                way = Some(0);
            }
        }
        // A copy of the key: the request's may be a slice of a large frame that the cache would keep.
        let extra = MessageExtra::pack(Some(Bytes::copy_from_slice(key)), None, Headers::new());
        // With every way taken, the hash's high bits choose the one to replace.
        let way = way.unwrap_or(usize::try_from(hash >> 60).unwrap_or(0) % KEY_EXTRA_WAYS);
        let slot = self.key_set(hash) + way;
        self.key_extras[slot].clone_from(&extra);
        extra
    }

    /// The first slot of the cache set a key hash belongs to.
    fn key_set(&self, hash: u64) -> usize {
        slot_of(hash, self.key_extras.len() / KEY_EXTRA_WAYS) * KEY_EXTRA_WAYS
    }

    /// Rebuilds the msg_id table from the records published within the dedup window (recovery step 3).
    pub fn rebuild_dedup(&mut self, now: Timestamp) {
        if self.config.dedup_window.is_zero() {
            return;
        }
        // Only the records in memory (the active segment): reading sealed segments back would make
        // opening a directory cost time in proportion to what it holds.
        let mut found = Vec::new();
        for (p, log) in self.logs.iter().enumerate() {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            let from = log.seq_at_time(now.minus(self.config.dedup_window)).max(log.hot_first());
            for (seq, record) in log.iter_from(from) {
                if let Some(id) = record.extra.as_ref().and_then(|e| e.msg_id.clone()) {
                    found.push((record.publish_time, pos_key(p, seq), id));
                }
            }
        }
        // Oldest first over every partition, so that eviction goes in publish order.
        found.sort_by_key(|(time, key, _)| (*time, *key));
        for (time, key, id) in found {
            self.dedup.insert(id.clone(), key);
            self.dedup_order.push_back((time, id));
        }
    }

    fn evict_dedup(&mut self, now: Timestamp) {
        let cutoff = now.minus(self.config.dedup_window);
        while let Some((t, _)) = self.dedup_order.front() {
            if *t > cutoff {
                break;
            }
            if let Some((_, id)) = self.dedup_order.pop_front() {
                self.dedup.remove(&id);
            }
        }
    }

    /// Which limit one more message of `size` bytes in partition `p` would break, for `discard = new`.
    /// Limits hold for each partition on its own, as Kafka's retention does.
    fn full_for(&self, p: u32, size: u64) -> Option<String> {
        let limits = &self.config.limits;
        let log = self.log(p)?;
        if let Some(max) = limits.max_msgs
            && log.len() >= max
        {
            return Some(format!("max_msgs {max}"));
        }
        if let Some(max) = limits.max_bytes
            && log.bytes() + size > max
        {
            return Some(format!("max_bytes {max}"));
        }
        None
    }

    /// Deletes the oldest messages of each partition while any limit is exceeded there (age always;
    /// count and bytes under `discard = old`). Unsettled victims become EXPIRED in every subscription
    /// (T10).
    pub fn enforce_limits(&mut self, now: Timestamp, effects: &mut Effects) {
        let mut removed = 0u64;
        for p in 0..self.partitions() {
            removed += self.trim(p, now, effects);
        }
        self.note_expired(removed, effects);
        self.trim_all_settled(effects);
    }

    /// [`TopicState::enforce_limits`] for partition `p` alone: an append reaches one partition, so only
    /// its limits can have been crossed (the others' age limits are enforced by the timers).
    pub fn enforce_limits_in(&mut self, p: u32, now: Timestamp, effects: &mut Effects) {
        let removed = self.trim(p, now, effects);
        self.note_expired(removed, effects);
    }

    /// Starts a publish batch: until [`TopicState::end_batch`], a partition's count, byte and age limits
    /// are enforced once at the end instead of after every append. Deleting a partition's oldest
    /// messages in one run reads them in order; deleting one after each append hops between the
    /// partitions' fronts, and with several partitions each of those reads missed the cache
    /// (docs/BENCHMARKS.md, "Partitions and ordering"). Nothing can read the topic in between, so no
    /// reader sees the difference; a batch only holds up to its own size above a limit meanwhile.
    /// Only for `discard = old` under Limits retention: `discard = new` judges each append against
    /// the limits, and Interest/WorkQueue trim as subscriptions settle.
    pub fn begin_batch(&mut self) {
        self.batching = self.config.discard == Discard::Old && !self.config.retention.settles_delete();
        self.trims_due.resize(self.logs.len(), false);
    }

    /// Ends a publish batch: enforces the limits of every partition the batch appended to.
    pub fn end_batch(&mut self, now: Timestamp, effects: &mut Effects) {
        self.batching = false;
        for p in 0..self.trims_due.len() {
            if std::mem::take(&mut self.trims_due[p]) {
                self.enforce_limits_in(u32::try_from(p).unwrap_or(u32::MAX), now, effects);
            }
        }
    }

    /// Interest and WorkQueue: deletes what every subscription that holds it has settled, in every
    /// partition (see [`TopicState::settled_through`]).
    pub fn trim_all_settled(&mut self, effects: &mut Effects) {
        if !self.config.retention.settles_delete() {
            return;
        }
        for p in 0..self.partitions() {
            self.trim_settled(p, effects);
        }
    }

    /// The highest seq of partition `p` that Interest/WorkQueue retention may delete: the lowest hold
    /// over the subscriptions; with no subscription, everything. A `retain_acked` subscription holds
    /// everything (the limits remove it then), any other what is above its ack floor. Under Interest a
    /// message lives until every subscription that existed at its publish has settled it, so such a
    /// subscription holds nothing at or below the partition's head when it was created (its
    /// `created_heads`), even when it reads from the start or seeks back; WorkQueue keeps the floor
    /// alone (a second subscription that would read the same messages is refused there anyway).
    fn settled_through(&self, p: u32) -> u64 {
        let Some(log) = self.log(p) else {
            return 0;
        };
        let interest = self.config.retention == RetentionPolicy::Interest;
        self.subs
            .iter()
            .map(|s| {
                if s.config.retain_acked {
                    return 0;
                }
                let floor = s.parts.get(p as usize).map_or(0, |part| part.ack_floor);
                if interest {
                    floor.max(s.created_heads.get(p as usize).copied().unwrap_or(0))
                } else {
                    floor
                }
            })
            .min()
            .unwrap_or_else(|| log.head_seq())
    }

    /// Interest and WorkQueue: deletes the front of partition `p` up to [`TopicState::settled_through`].
    /// `first_seq` moves like under the limits, so reads below it are out of range the same way; the
    /// segment files go once all their records are gone.
    fn trim_settled(&mut self, p: u32, effects: &mut Effects) {
        if !self.config.retention.settles_delete() {
            return;
        }
        let through = self.settled_through(p).min(self.pinned_through(p));
        let mut removed = 0u64;
        while let Some(log) = self.logs.get_mut(p as usize)
            && log.first_seq() <= through
            && log.len() > 0
        {
            let Some((seq, record)) = log.pop_front(false) else {
                break;
            };
            // Every subscription has it settled already; this only keeps their floors in step.
            self.on_removed(p, seq, record.as_ref(), Some(effects));
            removed += 1;
        }
        self.counters.deleted_settled += removed;
    }

    /// `max_msgs_per_key`: `seq` (with `key`) was appended to partition `p`; the key's older messages
    /// beyond the newest `max` are deleted, out of order (they become gaps in the log). Returns how many.
    /// `again` is set when recovery makes the deletions again (see [`TopicState::rebuild_keys`]).
    fn keep_newest_of_key(
        &mut self,
        p: u32,
        key: &Bytes,
        seq: u64,
        max: u64,
        again: bool,
        effects: &mut Effects,
    ) -> u64 {
        let i = p as usize;
        if self.keys.len() < self.logs.len() {
            self.keys.resize_with(self.logs.len(), HashMap::new);
        }
        let first = self.log(p).map_or(0, Log::first_seq);
        let pinned = self.pinned_through(p);
        let Some(index) = self.keys.get_mut(i) else {
            return 0;
        };
        if index.len() > 1024 && index.len() as u64 > 2 * self.logs.get(i).map_or(0, Log::len) {
            // Keys whose every message the front trimming took: forget them now and then.
            index.retain(|_, seqs| seqs.back().is_some_and(|&s| s >= first));
        }
        let seqs = index.entry(key.clone()).or_default();
        seqs.push_back(seq);
        while seqs.front().is_some_and(|&s| s < first) {
            seqs.pop_front();
        }
        let victims = take_victims(seqs, max, pinned);
        self.remove_key_victims(p, victims, again.then_some(seq), effects)
    }

    /// `max_msgs_per_key` again over every key of partition `p` (a snapshot that held some of their
    /// messages is gone). Returns how many were deleted.
    fn trim_keys(&mut self, p: u32, max: u64, effects: &mut Effects) -> u64 {
        let pinned = self.pinned_through(p);
        let Some(index) = self.keys.get_mut(p as usize) else {
            return 0;
        };
        let mut victims = Vec::new();
        for seqs in index.values_mut() {
            victims.extend(take_victims(seqs, max, pinned));
        }
        victims.sort_unstable();
        self.remove_key_victims(p, victims, None, effects)
    }

    /// Deletes `victims` (seqs of partition `p`, ascending) for `max_msgs_per_key`; returns how many.
    /// `redone_for` is the seq whose append deleted them when recovery makes the deletion again: a
    /// subscription whose checkpoint was taken after that append has them counted already.
    fn remove_key_victims(
        &mut self,
        p: u32,
        victims: Vec<u64>,
        redone_for: Option<u64>,
        effects: &mut Effects,
    ) -> u64 {
        let i = p as usize;
        let mut removed = 0;
        for old in victims {
            let want = self.wants_removed_record(p, old);
            let front = self.log(p).is_some_and(|log| log.first_seq() == old);
            let Some(record) = self.logs.get_mut(i).and_then(|log| log.remove_at(old, want)) else {
                continue;
            };
            if front {
                // Taken from the front: cursors and floors move past it as under the limits (I4), and
                // past the gaps the front passed with it (counted when they were made).
                let name = &self.config.name;
                for sub in &mut self.subs {
                    let counted = redone_for.is_some_and(|by| by <= sub.counted_through(p));
                    sub.on_removed_front(p, name, old, record.as_ref(), counted, effects);
                }
                let first = self.log(p).map_or(0, Log::first_seq);
                for sub in &mut self.subs {
                    sub.pass_gaps_below(p, first);
                }
            } else {
                let name = &self.config.name;
                for sub in &mut self.subs {
                    let counted = redone_for.is_some_and(|by| by <= sub.counted_through(p));
                    sub.on_removed_at(p, name, old, record.as_ref(), counted, effects);
                }
            }
            removed += 1;
        }
        removed
    }

    /// Rebuilds the per-key index of a reopened topic under `max_msgs_per_key` and deletes again what
    /// the limit had deleted (the deletions are not recorded: they follow from the log itself). A
    /// subscription the cursor of which had not reached a victim counted it as expired when it went;
    /// where that count is in the checkpoint it was restored from (the append that deleted it is at
    /// or below the checkpoint's head), the victim is not counted, nor dead-lettered, again.
    pub fn rebuild_keys(&mut self, effects: &mut Effects) {
        let Some(max) = self.config.limits.max_msgs_per_key else {
            return;
        };
        let mut removed = 0;
        for p in 0..self.partitions() {
            let keyed: Vec<(u64, Bytes)> = self.log(p).map_or_else(Vec::new, |log| {
                log.iter_from(log.first_seq())
                    .filter_map(|(seq, r)| r.extra.as_ref().and_then(|e| e.key.clone()).map(|k| (seq, k)))
                    .collect()
            });
            for (seq, key) in keyed {
                removed += self.keep_newest_of_key(p, &key, seq, max, true, effects);
            }
        }
        self.note_expired(removed, effects);
    }

    fn note_expired(&mut self, removed: u64, effects: &mut Effects) {
        if removed > 0 {
            // A filtered subscription whose cursor the removal moved may now sit just below messages its
            // filter excludes: they are FILTERED, and the floor passes them (I3).
            for sub in &mut self.subs {
                sub.skip_uncovered(&self.config.name, &self.logs);
            }
            self.counters.expired += removed;
            effects
                .events
                .push(EngineEvent::TopicExpired { topic: self.config.name.clone(), count: removed });
        }
    }

    /// Deletes partition `p`'s oldest messages while a limit is exceeded there; returns how many.
    fn trim(&mut self, p: u32, now: Timestamp, effects: &mut Effects) -> u64 {
        let Limits { max_msgs, max_bytes, max_age, .. } = self.config.limits;
        let cutoff = max_age.map(|age| now.minus(age));
        let old = self.config.discard == Discard::Old;
        let pinned = self.pinned_through(p);
        let mut removed = 0u64;
        {
            let i = p as usize;
            while let Some(log) = self.logs.get(i)
                && log.len() > 0
                && log.first_seq() <= pinned
            {
                let too_old = cutoff.is_some_and(|c| log.front_time().is_some_and(|t| t < c));
                let too_many = old && max_msgs.is_some_and(|m| log.len() > m);
                let too_big = old && max_bytes.is_some_and(|m| log.bytes() > m);
                if !(too_old || too_many || too_big) {
                    break;
                }
                let want = self.wants_removed_record(p, log.first_seq());
                let Some((seq, record)) = self.logs.get_mut(i).and_then(|log| log.pop_front(want)) else {
                    break;
                };
                self.on_removed(p, seq, record.as_ref(), Some(effects));
                removed += 1;
            }
        }
        removed
    }

    /// Whether removing `seq` needs the record itself: only a filtered subscription that has not reached
    /// it asks (to count it as expired only when its filter covers it). Cold records are read only then.
    /// A subscription that dead-letters on expiry and has not settled it asks too (for the copy).
    fn wants_removed_record(&self, p: u32, seq: u64) -> bool {
        self.subs.iter().any(|s| {
            s.parts.get(p as usize).is_some_and(|part| {
                (part.delivered_seq < seq && s.filters())
                    || (part.ack_floor < seq && s.dead_letters_expired())
            })
        })
    }

    /// Retention removed `seq` of partition `p`: T10 in every subscription. `effects` is where
    /// dead-letter copies of unsettled victims go (`dead_letter_on_expiry`); `None` for a purge, which
    /// only expires.
    fn on_removed(&mut self, p: u32, seq: u64, record: Option<&Record>, mut effects: Option<&mut Effects>) {
        let name = &self.config.name;
        for sub in &mut self.subs {
            sub.on_removed(p, name, seq, record, effects.as_deref_mut());
        }
    }

    /// Deletes every retained message (`topic purge`); seqs keep counting from where they were.
    pub fn purge(&mut self, effects: &mut Effects) -> Result<u64, EngineError> {
        let mut removed = 0;
        for p in 0..self.partitions() {
            let i = p as usize;
            if let Some(log) = self.logs.get_mut(i)
                && log.is_durable()
            {
                // Whole segments go at once instead of reading every record back (and the active
                // segment's file must go too, or a restart would bring the records back).
                let head = log.head_seq();
                let first = log.first_seq();
                removed += log.purge_durable()?;
                for sub in &mut self.subs {
                    sub.on_purged(p, first, head);
                }
            }
            while let Some((seq, record)) = self.logs.get_mut(i).and_then(|log| log.pop_front(true)) {
                self.on_removed(p, seq, record.as_ref(), None);
                removed += 1;
            }
        }
        if removed > 0 {
            self.counters.expired += removed;
            effects
                .events
                .push(EngineEvent::TopicExpired { topic: self.config.name.clone(), count: removed });
        }
        Ok(removed)
    }

    /// Makes a run of appends durable as the topic's mode asks. On failure the run is taken back (the
    /// log, the dedup table, cursors that moved over it) so memory never holds what the disk refused.
    /// `heads_before` is each partition's head before the run ([`TopicState::heads`]).
    pub fn commit_appends(&mut self, heads_before: &[u64]) -> Result<Committed, EngineError> {
        let mut waits = Vec::new();
        let mut unconfirmed = None;
        let mut failed = None;
        for (log, &before) in self.logs.iter_mut().zip(heads_before) {
            if log.head_seq() == before || failed.is_some() {
                continue;
            }
            match log.commit() {
                Ok(sync) => {
                    if self.config.durability == Durability::Always
                        && let Some(disk) = log.disk()
                    {
                        // Written but not confirmed: the records stay (they are in the file and a
                        // restart would bring them back), and the publisher hears that the disk did not
                        // confirm.
                        if let Err(e) = disk.sync_log() {
                            unconfirmed.get_or_insert(e.into());
                        }
                        continue;
                    }
                    waits.extend(sync);
                }
                Err(e) => failed = Some(e),
            }
        }
        let Some(e) = failed else {
            return Ok(match (unconfirmed, waits.is_empty()) {
                (Some(e), _) => Committed::Unconfirmed(e),
                (None, true) => Committed::Durable,
                (None, false) => Committed::Wait(waits),
            });
        };
        // The whole run is taken back, in every partition it reached.
        for (p, (log, &before)) in self.logs.iter_mut().zip(heads_before).enumerate() {
            let taken_back = log.head_seq().saturating_sub(before);
            log.rollback(before);
            self.counters.published = self.counters.published.saturating_sub(taken_back);
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            self.dedup.retain(|_, key| {
                let (q, seq) = split_key(*key);
                q != p || seq <= before
            });
            for sub in &mut self.subs {
                if let Some(part) = sub.parts.get_mut(p as usize) {
                    part.delivered_seq = part.delivered_seq.min(before);
                    part.ack_floor = part.ack_floor.min(before);
                }
            }
        }
        Err(e.into())
    }

    /// Writes what subscriptions journaled under this lock; returns the acks that must reach the disk
    /// before their callers return.
    pub fn persist_subs(&mut self) -> Result<Vec<(Arc<SyncGate>, u64)>, EngineError> {
        let mut waits = Vec::new();
        let mut first_error = None;
        for sub in &mut self.subs {
            match sub.persist(&self.logs) {
                Ok(Some(wait)) => waits.push(wait),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(subscription = %sub.name(), "cannot write subscription state: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(waits),
        }
    }

    /// Runs every subscription's timers and pushes what became deliverable.
    pub fn run_timers(&mut self, now: Timestamp, effects: &mut Effects) {
        self.enforce_limits(now, effects);
        let ctx = Ctx { topic: &self.config.name, logs: &self.logs, now };
        for sub in &mut self.subs {
            if sub.next_timer().is_some_and(|t| t <= now) {
                sub.run_timers(&ctx, effects);
            }
            sub.expire_unacked(&ctx, effects);
        }
        if self.has_push {
            self.dispatch_push(now, effects);
        }
        self.trim_all_settled(effects);
    }

    /// Pushes to every subscription's push consumers.
    pub fn dispatch_push(&mut self, now: Timestamp, effects: &mut Effects) {
        let ctx = Ctx { topic: &self.config.name, logs: &self.logs, now };
        for sub in &mut self.subs {
            sub.dispatch_push(&ctx, effects);
        }
        // Pushes without acks settle as they go.
        self.trim_all_settled(effects);
    }

    /// WorkQueue: a subscription whose subject filter overlaps an existing one's is refused, so that
    /// every message has one subscription to settle it. An empty filter covers everything; attribute
    /// filters are not looked at (two subscriptions told apart only by `--where` still overlap).
    pub fn check_work_queue(&self, config: &crate::model::SubscriptionConfig) -> Result<(), EngineError> {
        if self.config.retention != RetentionPolicy::WorkQueue {
            return Ok(());
        }
        let overlaps = |a: &[crate::model::name::Pattern], b: &[crate::model::name::Pattern]| {
            a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
        };
        match self.subs.iter().find(|s| overlaps(&s.config.filter, &config.filter)) {
            Some(other) => Err(EngineError::InvalidConfig(format!(
                "subscription \"{}\": topic \"{}\" is a work queue and subscription \"{}\" already reads {}; a work queue has one subscription per subject (give each a --filter that does not overlap, or use --retention interest for fan-out)",
                config.name,
                self.config.name,
                other.name(),
                if other.config.filter.is_empty() {
                    "all of it".to_string()
                } else {
                    other.config.filter.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                },
            ))),
            None => Ok(()),
        }
    }

    /// Recomputes whether any push consumer is attached.
    pub fn refresh_push_flag(&mut self) {
        self.has_push = self.subs.iter().any(|s| s.consumers.iter().any(|c| c.push.is_some()));
    }

    pub fn info(&self, now: Timestamp) -> TopicInfo {
        TopicInfo {
            name: self.config.name.clone(),
            subjects: self.config.captured().iter().map(|p| p.as_str().to_string()).collect(),
            partitions: self.partitions(),
            // Sums over the partitions, so that head − first + 1 still counts what is retained.
            first_seq: self.logs.iter().map(Log::first_seq).sum::<u64>()
                - (self.logs.len() as u64).saturating_sub(1),
            head_seq: self.logs.iter().map(Log::head_seq).sum(),
            messages: self.len(),
            bytes: Some(self.logs.iter().map(Log::bytes).sum()),
            last_publish: self.logs.iter().filter_map(Log::last_time).max(),
            limits: self.config.limits.clone(),
            discard: self.config.discard,
            retention: self.config.retention,
            subscriptions: u32::try_from(self.subs.len()).unwrap_or(u32::MAX),
            counters: TopicCounters {
                unreadable: self.logs.iter().map(Log::unreadable).sum(),
                ..self.counters.clone()
            },
            publish_rate: Some(self.publish_rate.rate(now)),
            publish_series: self.publish_rate.series(now, 15),
            created: Some(self.created),
            partition_info: self
                .logs
                .iter()
                .enumerate()
                .map(|(p, log)| PartitionInfo {
                    partition: u32::try_from(p).unwrap_or(u32::MAX),
                    first_seq: log.first_seq(),
                    head_seq: log.head_seq(),
                    messages: log.len(),
                    bytes: Some(log.bytes()),
                    leader: None,
                })
                .collect(),
            storage: Some(self.config.storage),
            durability: (self.config.storage == StorageKind::File).then_some(self.config.durability),
        }
    }
}

/// What a run of appends still needs once the topic's lock is released.
#[derive(Debug)]
pub(crate) enum Committed {
    /// Nothing: memory only, a mode that does not wait, or already synced under the lock.
    Durable,
    /// fdatasyncs that cover these marks (one per partition file written).
    Wait(Vec<(Arc<SyncGate>, u64)>),
    /// Kept, but the disk did not confirm it.
    Unconfirmed(EngineError),
}

/// A topic's state with the mutex that guards it and the signal long-polling fetches wait on.
#[derive(Debug)]
pub(crate) struct TopicCell {
    pub name: Name,
    pub state: std::sync::Mutex<TopicState>,
    pub notify: tokio::sync::Notify,
    /// Fetches currently waiting; publishes only pay for a wake-up when someone waits.
    pub waiters: std::sync::atomic::AtomicUsize,
}

impl TopicCell {
    pub fn new(state: TopicState) -> Arc<Self> {
        Arc::new(TopicCell {
            name: state.config.name.clone(),
            state: std::sync::Mutex::new(state),
            notify: tokio::sync::Notify::new(),
            waiters: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

/// Takes from the front of a key's seqs (oldest first) the ones beyond the newest `max`, except those
/// above `pinned` (a snapshot could seek back to them), which stay in the key's list to be tried again.
fn take_victims(seqs: &mut VecDeque<u64>, max: u64, pinned: u64) -> Vec<u64> {
    let mut victims = Vec::new();
    let mut kept = Vec::new();
    while seqs.len() as u64 > max {
        let Some(old) = seqs.pop_front() else { break };
        if old > pinned { kept.push(old) } else { victims.push(old) }
    }
    for old in kept.into_iter().rev() {
        seqs.push_front(old);
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TopicState {
        let name = Name::new("t").unwrap_or_else(|e| panic!("{e}"));
        TopicState::new(TopicConfig::new(name), Timestamp::from_micros(0))
    }

    fn keyed(key: &str) -> PublishRequest {
        let name = Name::new("t").unwrap_or_else(|e| panic!("{e}"));
        PublishRequest::new(name, "x").with_key(key.to_owned())
    }

    #[test]
    fn key_only_messages_share_their_keys_extra_and_nothing_else_does() {
        let mut t = state();
        let a1 = t.extra_for(&keyed("a")).unwrap_or_else(|| panic!("a key makes an extra"));
        let a2 = t.extra_for(&keyed("a")).unwrap_or_else(|| panic!("a key makes an extra"));
        assert!(Arc::ptr_eq(&a1, &a2), "the same key shares one extra");
        let b = t.extra_for(&keyed("b")).unwrap_or_else(|| panic!("a key makes an extra"));
        assert_eq!(b.key.as_deref(), Some(&b"b"[..]));
        let with_header = keyed("a").with_header("h", "v");
        let own = t.extra_for(&with_header).unwrap_or_else(|| panic!("headers make an extra"));
        assert!(!Arc::ptr_eq(&own, &a1), "an extra with headers is the message's own");
        assert_eq!(own.headers.get("h").map(String::as_str), Some("v"));
        let name = Name::new("t").unwrap_or_else(|e| panic!("{e}"));
        assert!(t.extra_for(&PublishRequest::new(name, "x")).is_none(), "a plain message has no extra");
    }

    #[test]
    fn many_keys_grow_the_cache_to_its_bound_and_every_message_keeps_its_own_key() {
        let mut t = state();
        for round in 0..3 {
            for k in 0..10_000 {
                let key = format!("key-{k}");
                let extra = t.extra_for(&keyed(&key)).unwrap_or_else(|| panic!("a key makes an extra"));
                assert_eq!(extra.key.as_deref(), Some(key.as_bytes()), "round {round}");
            }
        }
        assert_eq!(t.key_extras.len(), KEY_EXTRA_SLOTS_MAX);
    }

    #[test]
    fn a_thousand_keys_in_turn_each_keep_one_shared_extra() {
        let mut t = state();
        let keys: Vec<String> = (0..1000).map(|k| format!("key-{k}")).collect();
        // The first rounds grow the cache; after that every key is found.
        for key in keys.iter().cycle().take(20_000) {
            t.extra_for(&keyed(key));
        }
        let first: Vec<_> = keys.iter().filter_map(|k| t.extra_for(&keyed(k))).collect();
        let again: Vec<_> = keys.iter().filter_map(|k| t.extra_for(&keyed(k))).collect();
        let shared = first.iter().zip(&again).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
        assert!(shared >= 990, "only {shared} of 1000 keys kept their extra");
    }
}
