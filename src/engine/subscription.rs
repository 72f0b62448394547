//! One subscription's delivery state: the cursor, the ack floor and a sparse map of the messages between
//! them that are not simply acked. This is the state machine of SEMANTICS.md §9.4.
//!
//! Messages above `delivered_seq` have no entry (they are pending: AVAILABLE with attempt 0). Seqs in
//! `(ack_floor, delivered_seq]` without an entry are terminal (acked, filtered, expired). So the memory a
//! subscription holds is proportional to what is unsettled, never to the length of the topic.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::consumer::ConsumerState;
use super::deadlines::DeadlineQueue;
use super::entries::EntryMap;
use super::log::{Log, Record, RecordRef};
use super::ordering::{LineKey, OrderGate};
use super::stats::RateMeter;
use crate::model::clock::Timestamp;
use crate::model::config::{AckMode, Ordering, SubscriptionConfig};
use crate::model::event::EngineEvent;
use crate::model::filter::{FilterExpr, FilterInput};
use crate::model::message::Headers;
use crate::model::message::{ConsumerId, PublishRequest};
use crate::model::name::Name;
use crate::model::{DeliveryState, SubCounters};
use crate::store::journal::{Pending, SubJournal, SubOp, SubSnapshot, partition_keys, pos_key, split_key};
use crate::store::{StoreError, SyncGate};

/// The headers of a message that has none, for filters.
static NO_HEADERS: Headers = Headers::new();

/// Per-message state kept between the ack floor and the cursor.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub state: DeliveryState,
    pub attempt: u32,
    pub consumer: Option<ConsumerId>,
    pub lease: u64,
    pub deadline: Timestamp,
    pub lease_start: Timestamp,
    pub not_before: Timestamp,
    pub first_delivered: Timestamp,
    pub last_delivered: Timestamp,
    pub bytes: u64,
}

impl Entry {
    /// A message not handed to anyone yet: AVAILABLE with attempt 0, every time stamp `now`.
    pub fn unleased(now: Timestamp, bytes: u64) -> Entry {
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
            bytes,
        }
    }
}

/// Why a delivery failed (the events that call `failure()` in SEMANTICS.md).
#[derive(Debug, Clone, Copy)]
pub(super) enum Failure {
    Nack(Option<Duration>),
    Timeout,
    Detach,
}

/// Side effects an operation under the topic lock leaves for the engine to carry out after unlocking:
/// publishing to other topics (dead letters) and to taps (events) must not happen under this lock.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub events: Vec<EngineEvent>,
    pub dead_letters: Vec<DeadLetter>,
    /// Something became deliverable: wake long-polling fetches.
    pub wake: bool,
    /// Consumers whose push channel closed; detached by the engine afterwards.
    pub closed: Vec<(Name, ConsumerId)>,
}

/// A copy bound for a dead-letter topic, and where it came from.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    /// The dead-letter topic, by name (not routed: the copy must land there even if the topic's
    /// captured subjects do not include its own name).
    pub topic: Name,
    pub copy: PublishRequest,
    pub subscription: Name,
    pub seq: u64,
    pub attempt: u32,
}

/// What an operation needs to know about the topic it runs in.
pub(crate) struct Ctx<'a> {
    pub topic: &'a Name,
    /// The topic's partitions, by number.
    pub logs: &'a [Log],
    pub now: Timestamp,
}

impl<'a> Ctx<'a> {
    /// Partition `p`'s log.
    pub fn log(&self, p: u32) -> Option<&'a Log> {
        self.logs.get(p as usize)
    }

    /// The record a key of [`pos_key`] names.
    pub fn record(&self, key: u64) -> Option<RecordRef<'a>> {
        let (p, seq) = split_key(key);
        self.log(p)?.get(seq)
    }
}

/// One partition's cursor and ack floor in a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Part {
    pub delivered_seq: u64,
    pub ack_floor: u64,
}

/// A subscription and all its delivery state.
#[derive(Debug)]
pub(crate) struct SubState {
    pub config: SubscriptionConfig,
    /// The attribute filter, parsed once from `config.attribute_filter`.
    pub(super) attr_filter: Option<FilterExpr>,
    pub created: Timestamp,
    /// Cursor and floor of each partition of the topic.
    pub parts: Vec<Part>,
    /// Each partition's head seq when the subscription was created. Under Interest retention it holds
    /// only messages published after it existed (seqs above these), so a later subscription that reads
    /// from the start does not keep older messages alive; a partition added since (or a store record
    /// from before this was kept) reads as 0: everything there was published after it.
    pub created_heads: Vec<u64>,
    /// Per partition, the head through which the `max_msgs_per_key` deletions are already in
    /// `counters` (the heads of the checkpoint it was restored from): recovery makes those deletions
    /// again and must not count them twice. Empty for a new subscription and for an older checkpoint.
    pub(super) counted_heads: Vec<u64>,
    /// `max_msgs_per_key` victims whose expiry the replayed journal counted (`SubOp::Expired`);
    /// recovery does not count them again either. Emptied once the open is done.
    pub(super) counted_victims: BTreeSet<u64>,
    /// Keyed by [`pos_key`] (partition and seq), so one partition's entries are a contiguous range.
    pub entries: EntryMap,
    /// AVAILABLE messages with attempt ≥ 1, redelivered before new ones.
    pub ready: BTreeSet<u64>,
    /// DELAYED messages by `not_before`.
    pub delayed: BTreeSet<(Timestamp, u64)>,
    /// IN_FLIGHT messages by deadline.
    pub deadlines: DeadlineQueue,
    pub consumers: Vec<ConsumerState>,
    pub in_flight: u32,
    pub in_flight_bytes: u64,
    pub counters: SubCounters,
    pub deliver_rate: RateMeter,
    pub ack_rate: RateMeter,
    /// Last time a consumer did anything; ephemeral subscriptions expire from here.
    pub last_active: Timestamp,
    pub(super) next_lease: u64,
    /// Leases below this were issued before the last seek and are void.
    pub(super) lease_floor: u64,
    pub(super) round_robin: usize,
    /// The partition the next new message is looked for in first, so partitions take turns.
    pub(super) next_part: usize,
    pub(super) jitter_seed: u64,
    /// The durable journal of a durable subscription on a file-backed topic.
    pub(super) journal: Option<SubJournal>,
    /// The ordering lines (PerKey, Strict); empty without ordering.
    pub(super) order: OrderGate,
    /// Each partition's owner as the last rebalance left it (runtime state, see `assign.rs`): under
    /// PartitionExclusive its owner, under SingleActive the active consumer; empty under Shared.
    pub(super) owners: Vec<Option<ConsumerId>>,
}

impl SubState {
    /// A subscription whose first delivery in partition `p` will be `starts[p]`.
    /// `lease_base` makes lease tokens unique across subscriptions, including a deleted and re-created
    /// one of the same name, so an old token can never settle a message of the new one.
    pub fn new(config: SubscriptionConfig, starts: &[u64], now: Timestamp, lease_base: u64) -> Self {
        let parts = starts
            .iter()
            .map(|s| Part { delivered_seq: s.saturating_sub(1), ack_floor: s.saturating_sub(1) })
            .collect();
        let jitter_seed = config
            .name
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        // The config was checked when it was made; a filter that no longer parses lets everything in.
        let attr_filter = config.parsed_filter().ok().flatten();
        SubState {
            config,
            attr_filter,
            created: now,
            parts,
            created_heads: Vec::new(),
            counted_heads: Vec::new(),
            counted_victims: BTreeSet::new(),
            entries: EntryMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            deadlines: DeadlineQueue::new(),
            consumers: Vec::new(),
            in_flight: 0,
            in_flight_bytes: 0,
            counters: SubCounters::default(),
            deliver_rate: RateMeter::default(),
            ack_rate: RateMeter::default(),
            last_active: now,
            next_lease: lease_base.max(1),
            lease_floor: lease_base.max(1),
            round_robin: 0,
            next_part: 0,
            jitter_seed,
            journal: None,
            order: OrderGate::default(),
            owners: Vec::new(),
        }
    }

    /// Whether deliveries pass an ordering gate: an ordering is set and messages are acked (without
    /// acks every message is settled as it is handed out, so nothing can overtake anything).
    pub(super) fn ordered(&self) -> bool {
        self.config.ordering != Ordering::None && self.config.ack != AckMode::None
    }

    /// The ordering line of a message of partition `p`: its key's under PerKey (none without a key),
    /// the partition's under Strict.
    pub(super) fn line_of(&self, p: u32, record: &Record) -> Option<LineKey> {
        match self.config.ordering {
            Ordering::None => None,
            Ordering::Strict => Some((p, bytes::Bytes::new())),
            Ordering::PerKey => record.extra.as_ref().and_then(|e| e.key.clone()).map(|k| (p, k)),
        }
    }

    /// An entry became terminal or went away: its line releases the next message, which becomes ready.
    pub(super) fn unblock(&mut self, key: u64) {
        if let Some(next) = self.order.settled(key)
            && let Some(entry) = self.entries.get_mut(&next)
            && entry.state == DeliveryState::Available
        {
            self.ready.insert(next);
        }
    }

    /// Puts restored entries back in their lines (after a restart every unsettled message came back
    /// ready): the first unsettled message of each line stays, the later ones wait behind it.
    pub fn rebuild_order(&mut self, ctx: &Ctx<'_>) {
        if !self.ordered() {
            return;
        }
        let keys: Vec<u64> =
            self.entries.iter().filter(|(_, e)| !e.state.is_terminal()).map(|(k, _)| *k).collect();
        for key in keys {
            let (p, _) = split_key(key);
            let Some(line) = ctx.record(key).and_then(|r| self.line_of(p, &r)) else {
                continue;
            };
            if !self.order.is_busy(&line) {
                self.order.activate(line, key);
                continue;
            }
            self.release(key);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.state = DeliveryState::Available;
                entry.consumer = None;
            }
            self.order.hold(line, key);
        }
    }

    /// Records a fact in the journal, when the subscription has one.
    pub(super) fn note(&mut self, op: SubOp) {
        if let Some(journal) = &mut self.journal {
            journal.stage(op);
        }
    }

    /// Writes the facts noted under this lock, with the cursor last (see `store::journal`), and takes a
    /// checkpoint when the journal has grown long. `logs` are the topic's partitions (their heads go into
    /// a checkpoint, see [`SubState::snapshot`]). Returns the sync an ack must wait for, if any.
    pub fn persist(&mut self, logs: &[Log]) -> Result<Option<(Arc<SyncGate>, u64)>, StoreError> {
        let Some(journal) = &mut self.journal else {
            return Ok(None);
        };
        for (p, part) in self.parts.iter().enumerate() {
            if journal.recorded_cursors.get(p).copied().unwrap_or(0) != part.delivered_seq {
                let p = u32::try_from(p).unwrap_or(u32::MAX);
                journal.stage(SubOp::Cursor { seq: pos_key(p, part.delivered_seq) });
            }
        }
        let wait = journal.commit()?;
        if journal.wants_checkpoint() {
            let heads: Vec<u64> = logs.iter().map(Log::head_seq).collect();
            let snapshot = self.snapshot(&heads);
            if let Some(journal) = &mut self.journal {
                journal.checkpoint(&snapshot)?;
            }
        }
        Ok(wait)
    }

    /// The durable part of the state: cursor, floor, and attempts and not-befores of what is unsettled,
    /// the counters, and the topic's partition `heads` now (every `max_msgs_per_key` deletion that
    /// appends up to them made is in the counters).
    pub fn snapshot(&self, heads: &[u64]) -> SubSnapshot {
        let pending = self
            .entries
            .iter()
            .filter(|(_, e)| !e.state.is_terminal())
            .map(|(&seq, e)| {
                let not_before = (e.state == DeliveryState::Delayed).then_some(e.not_before);
                (seq, Pending { attempt: e.attempt, not_before })
            })
            .collect();
        let first = self.parts.first().copied().unwrap_or_default();
        SubSnapshot {
            cursor: first.delivered_seq,
            floor: first.ack_floor,
            parts: self.parts.iter().skip(1).map(|p| (p.delivered_seq, p.ack_floor)).collect(),
            pending,
            counters: Some(self.counters.clone()),
            heads: heads.to_vec(),
            expired: std::collections::BTreeSet::new(),
        }
    }

    /// Takes a checkpoint now (clean shutdown), so the next open replays nothing; `heads` as for
    /// [`SubState::snapshot`].
    pub fn checkpoint(&mut self, heads: &[u64]) -> Result<(), StoreError> {
        let snapshot = self.snapshot(heads);
        match &mut self.journal {
            Some(journal) => journal.checkpoint(&snapshot),
            None => Ok(()),
        }
    }

    /// Checkpoints, then refuses every later journal write: the engine is releasing its directory.
    pub fn close_journal(&mut self, heads: &[u64]) -> Result<(), StoreError> {
        let checkpointed = self.checkpoint(heads);
        if let Some(journal) = &mut self.journal {
            journal.close();
        }
        checkpointed
    }

    /// Rebuilds the state a durable subscription had before a restart: seqs up to the cursor without an
    /// entry are settled, an in-flight message becomes available again with its attempt count (its lease
    /// did not survive), a delayed one keeps its wall-clock not-before.
    /// `heads[p]` is partition `p`'s head; a partition the snapshot does not know (added while the
    /// engine was down) starts at its beginning.
    pub fn restore(&mut self, snapshot: &SubSnapshot, heads: &[u64], now: Timestamp) {
        if let Some(counters) = &snapshot.counters {
            self.counters = counters.clone();
        }
        self.counted_heads.clone_from(&snapshot.heads);
        self.counted_victims.clone_from(&snapshot.expired);
        self.parts = heads
            .iter()
            .enumerate()
            .map(|(p, &head)| {
                let (cursor, floor) = snapshot.at(u32::try_from(p).unwrap_or(u32::MAX));
                let delivered_seq = cursor.min(head);
                Part { delivered_seq, ack_floor: floor.min(delivered_seq) }
            })
            .collect();
        self.entries.clear();
        self.ready.clear();
        self.delayed.clear();
        for (&seq, pending) in &snapshot.pending {
            let (p, s) = split_key(seq);
            if self.parts.get(p as usize).is_none_or(|part| s > part.delivered_seq) {
                continue;
            }
            let delayed = pending.not_before.filter(|&t| t > now);
            let state = if delayed.is_some() { DeliveryState::Delayed } else { DeliveryState::Available };
            self.entries.insert(
                seq,
                Entry {
                    state,
                    attempt: pending.attempt,
                    not_before: delayed.unwrap_or(now),
                    ..Entry::unleased(now, 0)
                },
            );
            match delayed {
                Some(t) => {
                    self.delayed.insert((t, seq));
                }
                None => {
                    self.ready.insert(seq);
                }
            }
        }
        self.advance_floor();
    }

    /// Applies the max-deliveries rule (T7) to restored messages whose attempts are used up.
    pub fn settle_exhausted(&mut self, ctx: &Ctx<'_>, effects: &mut Effects) {
        let max = self.config.max_deliveries;
        if max == 0 {
            return;
        }
        let spent: Vec<u64> = self
            .ready
            .iter()
            .copied()
            .filter(|s| self.entries.get(s).is_some_and(|e| e.attempt >= max))
            .collect();
        for seq in spent {
            self.release(seq);
            self.failure(seq, Failure::Detach, ctx, effects);
        }
        self.advance_floor();
    }

    pub fn name(&self) -> &Name {
        &self.config.name
    }

    /// Whether the subject filter lets a message with this subject in.
    pub fn covers(&self, subject: &str) -> bool {
        self.config.filter.is_empty() || self.config.filter.iter().any(|p| p.matches(subject))
    }

    /// Whether this subscription filters at all (by subject or by attributes).
    pub(crate) fn filters(&self) -> bool {
        !self.config.filter.is_empty() || self.attr_filter.is_some()
    }

    /// Whether both filters let this message in (T1 rather than T1f).
    pub(super) fn covers_record(&self, topic: &Name, record: &Record) -> bool {
        if !self.filters() {
            return true;
        }
        let subject = record.subject_or(topic).as_str();
        if !self.covers(subject) {
            return false;
        }
        self.attr_filter.as_ref().is_none_or(|f| {
            let extra = record.extra.as_deref();
            f.matches(&FilterInput {
                subject,
                key: extra.and_then(|e| e.key.as_deref()),
                headers: extra.map_or(&NO_HEADERS, |e| &e.headers),
            })
        })
    }

    /// Whether anything could be dispatched right now, credit permitting.
    pub fn has_deliverable(&self, logs: &[Log]) -> bool {
        !self.ready.is_empty()
            || self.parts.iter().zip(logs).any(|(part, log)| part.delivered_seq < log.head_seq())
    }

    /// The consumer's index, registering it (as a pull consumer) on first sight.
    pub fn consumer_index(&mut self, id: &str, now: Timestamp, effects: &mut Effects) -> usize {
        if let Some(i) = self.consumers.iter().position(|c| &*c.id == id) {
            return i;
        }
        let prefetch = self.config.max_in_flight;
        let id: ConsumerId = id.into();
        self.consumers.push(ConsumerState::new(id.clone(), prefetch, now, None));
        effects
            .events
            .push(EngineEvent::ConsumerAttached { subscription: self.config.name.clone(), consumer: id });
        self.rebalance(now, effects);
        self.consumers.len() - 1
    }

    /// [`SubState::skip_uncovered_in`] for every partition.
    pub fn skip_uncovered(&mut self, topic: &Name, logs: &[Log]) {
        if !self.filters() {
            return;
        }
        for (p, log) in logs.iter().enumerate() {
            self.skip_uncovered_in(u32::try_from(p).unwrap_or(u32::MAX), topic, log);
        }
    }

    /// Passes partition `p`'s cursor over messages the filter does not cover that sit directly above
    /// it, so they count as FILTERED (T1f) as soon as they exist, and the floor can move past them (I3).
    pub fn skip_uncovered_in(&mut self, p: u32, topic: &Name, log: &Log) {
        if !self.filters() {
            return;
        }
        let mut moved = false;
        let Some(mut delivered) = self.parts.get(p as usize).map(|x| x.delivered_seq) else {
            return;
        };
        while delivered < log.head_seq() {
            let next = delivered + 1;
            match log.get(next) {
                Some(record) if self.covers_record(topic, &record) => break,
                Some(_) => self.counters.filtered += 1,
                None => {}
            }
            delivered = next;
            moved = true;
        }
        if moved {
            if let Some(part) = self.parts.get_mut(p as usize) {
                part.delivered_seq = delivered;
            }
            self.advance_floor_in(p);
        }
    }

    /// Moves every partition's ack floor over the settled messages directly above it (I3).
    pub fn advance_floor(&mut self) {
        for p in 0..self.parts.len() {
            self.advance_floor_in(u32::try_from(p).unwrap_or(u32::MAX));
        }
    }

    /// Moves partition `p`'s ack floor over every settled message directly above it (I3).
    pub fn advance_floor_in(&mut self, p: u32) {
        let mut floor = None;
        while let Some((key, entry)) = self.entries.first_in(p) {
            if entry.state.is_terminal() {
                self.entries.remove(&key);
            } else {
                floor = Some(split_key(key).1 - 1);
                break;
            }
        }
        if let Some(part) = self.parts.get_mut(p as usize) {
            part.ack_floor = floor.unwrap_or(part.delivered_seq);
        }
    }

    /// T6 and T8: expire leases and release backoffs that are due.
    pub fn run_timers(&mut self, ctx: &Ctx<'_>, effects: &mut Effects) {
        while let Some((deadline, seq)) = self.deadlines.first() {
            if deadline > ctx.now {
                break;
            }
            let consumer = self.entries.get(&seq).and_then(|e| e.consumer.clone());
            let attempt = self.entries.get(&seq).map_or(0, |e| e.attempt);
            self.release(seq);
            self.counters.deadline_expired += 1;
            effects.events.push(EngineEvent::DeadlineExpired {
                subscription: self.config.name.clone(),
                seq: split_key(seq).1,
                attempt,
                consumer,
            });
            self.failure(seq, Failure::Timeout, ctx, effects);
        }
        while let Some(&(not_before, seq)) = self.delayed.first() {
            if not_before > ctx.now {
                break;
            }
            self.delayed.remove(&(not_before, seq));
            if let Some(entry) = self.entries.get_mut(&seq) {
                entry.state = DeliveryState::Available;
                self.ready.insert(seq);
                effects.wake = true;
            }
        }
        self.advance_floor();
    }

    /// The earliest time a timer of this subscription is due.
    pub fn next_timer(&self) -> Option<Timestamp> {
        let d = self.deadlines.first().map(|(t, _)| t);
        let b = self.delayed.first().map(|(t, _)| *t);
        match (d, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// T7: a consumer left; its in-flight messages become available again. Returns how many.
    /// Takes back a delivery that never reached its consumer's reader (still queued for it when it
    /// left): available again at once, and it does not count as an attempt, since nobody saw it. A lease
    /// that is no longer current is left alone.
    pub fn return_unseen(&mut self, seq: u64, lease: u64, effects: &mut Effects) {
        let current =
            self.entries.get(&seq).is_some_and(|e| e.state == DeliveryState::InFlight && e.lease == lease);
        if !current {
            return;
        }
        self.release(seq);
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.attempt = entry.attempt.saturating_sub(1);
            entry.consumer = None;
            entry.state = DeliveryState::Available;
            let attempt = entry.attempt;
            self.ready.insert(seq);
            self.note(SubOp::Attempt { seq, attempt });
            self.counters.delivered = self.counters.delivered.saturating_sub(1);
            if attempt > 0 {
                self.counters.redeliveries = self.counters.redeliveries.saturating_sub(1);
            }
        }
        effects.wake = true;
    }

    pub fn detach(&mut self, id: &ConsumerId, ctx: &Ctx<'_>, effects: &mut Effects) -> u32 {
        let Some(index) = self.consumers.iter().position(|c| c.id == *id) else {
            return 0;
        };
        let seqs: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == DeliveryState::InFlight && e.consumer.as_ref() == Some(id))
            .map(|(s, _)| *s)
            .collect();
        for &seq in &seqs {
            self.release(seq);
            self.failure(seq, Failure::Detach, ctx, effects);
        }
        self.consumers.remove(index);
        self.last_active = ctx.now;
        self.rebalance(ctx.now, effects);
        self.advance_floor();
        let requeued = u32::try_from(seqs.len()).unwrap_or(u32::MAX);
        effects.events.push(EngineEvent::ConsumerDetached {
            subscription: self.config.name.clone(),
            consumer: id.clone(),
            requeued,
        });
        effects.wake = true;
        requeued
    }

    /// Forgets pull consumers that hold nothing and have been idle for `idle` (rebalancing when any
    /// went); returns their ids.
    pub fn reap_idle_pull(
        &mut self,
        now: Timestamp,
        idle: std::time::Duration,
        effects: &mut Effects,
    ) -> Vec<ConsumerId> {
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.consumers)
            .into_iter()
            .partition(|c| c.push.is_none() && c.in_flight == 0 && now.since(c.last_activity) >= idle);
        self.consumers = keep;
        if !gone.is_empty() {
            self.rebalance(now, effects);
        }
        gone.into_iter().map(|c| c.id).collect()
    }

    /// Whether an ephemeral subscription has been without consumers for its idle time. Pull consumers
    /// count as present while they fetch; the idle time runs from the last activity (NATS behaviour).
    pub fn is_idle(&self, now: Timestamp, ttl: std::time::Duration) -> bool {
        let pushing = self.consumers.iter().any(|c| c.push.is_some());
        let holding = self.consumers.iter().any(|c| c.in_flight > 0);
        let last = self
            .consumers
            .iter()
            .map(|c| c.last_activity)
            .max()
            .unwrap_or(self.last_active)
            .max(self.last_active);
        !pushing && !holding && now.since(last) >= ttl
    }

    /// T11: each `(partition, next)` of `targets` moves: its leases are dropped, its seq < `next`
    /// counts as acked, its retained seq ≥ `next` is pending again. When every partition moves, every
    /// lease handed out so far is void.
    pub fn seek(&mut self, targets: &[(u32, u64)], effects: &mut Effects) {
        for &(p, next) in targets {
            let keys: Vec<u64> = self.entries.range(partition_keys(p)).map(|(k, _)| *k).collect();
            for key in keys {
                self.release(key);
                self.entries.remove(&key);
            }
            self.order.clear_partition(p);
            if let Some(part) = self.parts.get_mut(p as usize) {
                part.delivered_seq = next.saturating_sub(1);
                part.ack_floor = part.delivered_seq;
            }
            self.note(SubOp::Seek { next: pos_key(p, next) });
            effects.events.push(EngineEvent::Seek { subscription: self.config.name.clone(), next_seq: next });
        }
        if targets.len() >= self.parts.len() {
            self.lease_floor = self.next_lease;
        }
        effects.wake = true;
    }

    /// `topic purge` removed every seq in `first..=head` of partition `p` at once.
    pub fn on_purged(&mut self, p: u32, first: u64, head: u64) {
        let unsettled: Vec<u64> = self
            .entries
            .range(pos_key(p, 0)..=pos_key(p, head))
            .filter(|(_, e)| !e.state.is_terminal())
            .map(|(s, _)| *s)
            .collect();
        for key in unsettled {
            self.release(key);
            self.counters.expired_unacked += 1;
        }
        let gone: Vec<u64> = self.entries.range(pos_key(p, 0)..=pos_key(p, head)).map(|(k, _)| *k).collect();
        for key in gone {
            self.entries.remove(&key);
        }
        self.order.clear_partition(p);
        let Some(part) = self.parts.get_mut(p as usize) else {
            return;
        };
        if part.delivered_seq < head {
            // Filtered subscriptions count every purged message here: the records are not read back.
            self.counters.expired_unacked += head - part.delivered_seq.max(first.saturating_sub(1));
            part.delivered_seq = head;
        }
        part.ack_floor = part.ack_floor.max(head);
        self.advance_floor_in(p);
    }

    /// Whether unsettled messages this subscription loses to retention are dead-lettered (reason
    /// `expired`) rather than only counted.
    pub fn dead_letters_expired(&self) -> bool {
        self.config.dead_letter_on_expiry && self.config.dead_letter.is_some()
    }

    /// An unsettled message of this subscription expired (T10, or `message_retention`): EXPIRED, or
    /// DEAD_LETTERED with reason `expired` when `dead_letter_on_expiry` is set and `record` is at hand
    /// (`effects` takes the copy). `attempt` is how often it was delivered.
    fn expire(
        &mut self,
        key: u64,
        topic: &Name,
        record: Option<&Record>,
        attempt: u32,
        effects: Option<&mut Effects>,
    ) {
        match (self.dead_letters_expired(), record, effects, self.config.dead_letter.clone()) {
            (true, Some(record), Some(effects), Some(dlt)) => {
                let (partition, seq) = split_key(key);
                let copy =
                    dead_letter_copy(&dlt, topic, self.name(), partition, seq, record, attempt, "expired");
                self.counters.dead_lettered += 1;
                effects.dead_letters.push(DeadLetter {
                    topic: dlt.clone(),
                    copy,
                    subscription: self.name().clone(),
                    seq: key,
                    attempt,
                });
                effects.events.push(EngineEvent::DeadLettered {
                    subscription: self.name().clone(),
                    seq,
                    attempt,
                    dead_letter: dlt,
                    reason: "expired",
                });
            }
            _ => self.counters.expired_unacked += 1,
        }
    }

    /// T10: retention removed `seq` of partition `p`; an unsettled copy here becomes EXPIRED (or is
    /// dead-lettered, see [`SubState::expire`]). Without the record (a cold one not read back) a filtered
    /// subscription counts it as covered.
    pub fn on_removed(
        &mut self,
        p: u32,
        topic: &Name,
        seq: u64,
        record: Option<&Record>,
        effects: Option<&mut Effects>,
    ) {
        let Some(part) = self.parts.get(p as usize).copied() else {
            return;
        };
        if seq <= part.ack_floor {
            return;
        }
        let key = pos_key(p, seq);
        let mut delivered = part.delivered_seq;
        if seq <= part.delivered_seq {
            if let Some(attempt) =
                self.entries.get(&key).filter(|e| !e.state.is_terminal()).map(|e| e.attempt)
            {
                self.release(key);
                self.expire(key, topic, record, attempt, effects);
            }
            self.entries.remove(&key);
            self.unblock(key);
        } else {
            if record.is_none_or(|r| self.covers_record(topic, r)) {
                self.expire(key, topic, record, 0, effects);
            }
            delivered = seq;
        }
        if let Some(part) = self.parts.get_mut(p as usize) {
            part.delivered_seq = delivered;
            // Everything at or below `seq` is gone, so the floor is at least `seq` (I4).
            part.ack_floor = part.ack_floor.max(seq);
        }
        self.advance_floor_in(p);
    }
}

impl SubState {
    /// `max_msgs_per_key` deleted `seq` of partition `p` out of order: an unsettled copy here expires
    /// (T10), and one the cursor has not reached yet counts as expired now (the cursor passes the gap
    /// when it gets there without counting it again) unless `counted` says recovery is making again a
    /// deletion the restored counters hold already. Cursor and floor stay where they are.
    pub fn on_removed_at(
        &mut self,
        p: u32,
        topic: &Name,
        seq: u64,
        record: Option<&Record>,
        counted: bool,
        effects: &mut Effects,
    ) {
        let Some(part) = self.parts.get(p as usize).copied() else {
            return;
        };
        if seq <= part.ack_floor {
            return;
        }
        let key = pos_key(p, seq);
        if seq <= part.delivered_seq {
            if let Some(attempt) =
                self.entries.get(&key).filter(|e| !e.state.is_terminal()).map(|e| e.attempt)
            {
                self.release(key);
                self.expire(key, topic, record, attempt, Some(effects));
                self.note(SubOp::Settle { seq: key });
            }
            self.entries.remove(&key);
            self.unblock(key);
            self.advance_floor_in(p);
        } else if !counted
            && !self.counted_victims.contains(&key)
            && record.is_none_or(|r| self.covers_record(topic, r))
        {
            let before = self.counters.expired_unacked;
            self.expire(key, topic, record, 0, Some(effects));
            if self.counters.expired_unacked > before {
                self.note(SubOp::Expired { seq: key });
            }
        }
    }

    /// `max_msgs_per_key` deleted `seq`, the front of partition `p`: as [`SubState::on_removed`], and
    /// the count of a victim the cursor had not reached is journaled (`SubOp::Expired`); `counted` as
    /// for [`SubState::on_removed_at`].
    pub fn on_removed_front(
        &mut self,
        p: u32,
        topic: &Name,
        seq: u64,
        record: Option<&Record>,
        counted: bool,
        effects: &mut Effects,
    ) {
        let key = pos_key(p, seq);
        let reached = self.parts.get(p as usize).is_none_or(|part| seq <= part.delivered_seq);
        if !reached && (counted || self.counted_victims.contains(&key)) {
            // Counted before the restart: only the cursor and floor move past it (I4).
            if let Some(part) = self.parts.get_mut(p as usize) {
                part.delivered_seq = seq;
                part.ack_floor = part.ack_floor.max(seq);
            }
            self.advance_floor_in(p);
            return;
        }
        let before = self.counters.expired_unacked;
        self.on_removed(p, topic, seq, record, Some(effects));
        if !reached && self.counters.expired_unacked > before {
            self.note(SubOp::Expired { seq: key });
        }
    }

    /// Forgets what recovery needed to make deletions again without counting them twice.
    pub(super) fn forget_counted(&mut self) {
        self.counted_heads = Vec::new();
        self.counted_victims = BTreeSet::new();
    }

    /// The head of partition `p` through which `max_msgs_per_key` deletions are in the restored
    /// counters (0 when unknown).
    pub(super) fn counted_through(&self, p: u32) -> u64 {
        self.counted_heads.get(p as usize).copied().unwrap_or(0)
    }

    /// The front of partition `p` moved to `first` over gaps this subscription has already counted:
    /// cursor and floor move to `first − 1` if they were below (I4).
    pub fn pass_gaps_below(&mut self, p: u32, first: u64) {
        let Some(part) = self.parts.get_mut(p as usize) else {
            return;
        };
        let below = first.saturating_sub(1);
        if part.delivered_seq < below {
            part.delivered_seq = below;
        }
        if part.ack_floor < below {
            part.ack_floor = below;
            self.advance_floor_in(p);
        }
    }

    /// `message_retention`: every unsettled message of this subscription published longer ago than the
    /// retention expires here (EXPIRED, or dead-lettered with reason `expired`), whether delivered or
    /// not; the message stays in the topic for the other subscriptions. Runs with the timers.
    pub fn expire_unacked(&mut self, ctx: &Ctx<'_>, effects: &mut Effects) {
        let Some(keep) = self.config.message_retention else {
            return;
        };
        let cutoff = ctx.now.minus(keep);
        let counted = self.counters.expired_unacked;
        for p in 0..self.parts.len() {
            let partition = u32::try_from(p).unwrap_or(u32::MAX);
            let (Some(log), Some(part)) = (ctx.log(partition), self.parts.get(p).copied()) else {
                continue;
            };
            // Delivered and unsettled: the entries, in seq order, so in publish-time order.
            let mut old = Vec::new();
            for (&key, entry) in
                self.entries.range(pos_key(partition, 0)..=pos_key(partition, part.delivered_seq))
            {
                if entry.state.is_terminal() {
                    continue;
                }
                match log.get(split_key(key).1) {
                    Some(r) if r.publish_time < cutoff => old.push((key, entry.attempt)),
                    Some(_) => break,
                    None => {}
                }
            }
            let expired_any = !old.is_empty();
            for (key, attempt) in old {
                self.release(key);
                let record = ctx.record(key);
                self.expire(key, ctx.topic, record.as_deref(), attempt, Some(effects));
                if self.dead_letters_expired() {
                    // Settled on disk once the copy is kept (`Engine::apply`), like any dead letter.
                    if let Some(entry) = self.entries.get_mut(&key) {
                        entry.state = DeliveryState::DeadLettered;
                        entry.consumer = None;
                    }
                } else {
                    self.entries.remove(&key);
                    self.note(SubOp::Settle { seq: key });
                }
                self.unblock(key);
            }
            // Never delivered: the cursor passes them.
            let mut delivered = part.delivered_seq;
            let mut moved = false;
            for (seq, record) in log.iter_from(part.delivered_seq + 1) {
                if record.publish_time >= cutoff {
                    break;
                }
                let key = pos_key(partition, seq);
                if !self.covers_record(ctx.topic, &record) {
                    self.counters.filtered += 1;
                } else if self.dead_letters_expired() {
                    // Journaled as pending until the copy is kept, so a crash before cannot lose it.
                    self.entries.insert(
                        key,
                        Entry {
                            state: DeliveryState::DeadLettered,
                            ..Entry::unleased(ctx.now, record.size())
                        },
                    );
                    self.note(SubOp::Attempt { seq: key, attempt: 0 });
                    self.expire(key, ctx.topic, Some(&record), 0, Some(effects));
                } else {
                    self.expire(key, ctx.topic, Some(&record), 0, Some(effects));
                }
                delivered = seq;
                moved = true;
            }
            if moved && let Some(part) = self.parts.get_mut(p) {
                part.delivered_seq = delivered;
            }
            if moved || expired_any {
                self.advance_floor_in(partition);
                effects.wake = true;
            }
        }
        // Those only counted (the dead-lettered ones have an event each already).
        let count = self.counters.expired_unacked - counted;
        if count > 0 {
            let subscription = self.config.name.clone();
            effects.events.push(EngineEvent::MessagesExpired { subscription, count });
        }
    }
}

/// The copy of a message bound for a dead-letter topic: the original payload, key and headers plus
/// the `x-dead-letter-*` headers of SEMANTICS.md §9.4.
#[allow(clippy::too_many_arguments)]
pub(super) fn dead_letter_copy(
    dlt: &Name,
    topic: &Name,
    subscription: &Name,
    partition: u32,
    seq: u64,
    record: &Record,
    attempt: u32,
    reason: &str,
) -> PublishRequest {
    let message = super::log::to_message(topic, partition, seq, record);
    let mut copy = PublishRequest {
        subject: dlt.clone(),
        key: message.key().cloned(),
        msg_id: None,
        headers: message.headers().clone(),
        payload: message.payload.clone(),
        options: Default::default(),
    };
    let h = &mut copy.headers;
    h.insert("x-dead-letter-source-topic".into(), topic.to_string());
    h.insert("x-dead-letter-source-subject".into(), message.subject().to_string());
    h.insert("x-dead-letter-subscription".into(), subscription.to_string());
    h.insert("x-dead-letter-partition".into(), partition.to_string());
    h.insert("x-dead-letter-seq".into(), seq.to_string());
    h.insert("x-dead-letter-delivery-count".into(), attempt.to_string());
    h.insert("x-dead-letter-reason".into(), reason.into());
    h.insert("x-dead-letter-first-publish-time".into(), record.publish_time.as_micros().to_string());
    copy
}

impl SubState {
    /// `start = LastPerKey`: in each partition, only the newest retained message of every key is
    /// pending (AVAILABLE, attempt 0); older messages of a key, and unkeyed messages, count as settled.
    /// New messages are all delivered. So a compacted topic reads as a table: one row per key.
    pub fn start_last_per_key(&mut self, ctx: &Ctx<'_>) {
        for (p, log) in ctx.logs.iter().enumerate() {
            let partition = u32::try_from(p).unwrap_or(u32::MAX);
            let mut newest: std::collections::HashMap<bytes::Bytes, (u64, u64)> =
                std::collections::HashMap::new();
            for (seq, record) in log.iter_from(log.first_seq()) {
                if !self.covers_record(ctx.topic, &record) {
                    continue;
                }
                if let Some(key) = record.extra.as_ref().and_then(|e| e.key.clone()) {
                    newest.insert(key, (seq, record.size()));
                }
            }
            let head = log.head_seq();
            // In seq order: the journal's replay takes pending messages as the cursor met them.
            let mut rows: Vec<(u64, u64)> = newest.into_values().collect();
            rows.sort_unstable();
            for (seq, bytes) in rows {
                let key = pos_key(partition, seq);
                self.entries.insert(key, Entry::unleased(ctx.now, bytes));
                self.ready.insert(key);
                self.note(SubOp::Attempt { seq: key, attempt: 0 });
            }
            if let Some(part) = self.parts.get_mut(p) {
                part.delivered_seq = head;
            }
            self.advance_floor_in(partition);
        }
    }
}
