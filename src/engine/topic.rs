//! One topic under its lock: the log, the subscriptions reading it, retention and deduplication.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::log::{Log, Record};
use super::stats::RateMeter;
use super::subscription::{Ctx, Effects, SubState};
use crate::model::clock::Timestamp;
use crate::model::config::{Discard, Durability, Limits, StorageKind, TopicConfig};
use crate::model::error::EngineError;
use crate::model::event::EngineEvent;
use crate::model::message::{MessageExtra, PublishRequest};
use crate::model::name::Name;
use crate::model::{PartitionInfo, TopicCounters, TopicInfo};
use crate::store::SyncGate;

/// Everything about one topic that changes; guarded by the topic's mutex.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub config: TopicConfig,
    pub log: Log,
    pub subs: Vec<SubState>,
    pub counters: TopicCounters,
    pub publish_rate: RateMeter,
    pub created: Timestamp,
    /// msg_id → seq for the dedup window, with the ids in publish order for eviction.
    dedup: HashMap<String, u64>,
    dedup_order: VecDeque<(Timestamp, String)>,
    /// True while any subscription has a push consumer, so publishes skip push dispatch otherwise.
    pub has_push: bool,
}

impl TopicState {
    pub fn new(config: TopicConfig, now: Timestamp) -> Self {
        TopicState::with_log(config, Log::new(), now)
    }

    /// A topic over an existing log (a durable one reopened, or a new one on disk).
    pub fn with_log(config: TopicConfig, log: Log, now: Timestamp) -> Self {
        TopicState {
            config,
            log,
            subs: Vec::new(),
            counters: TopicCounters::default(),
            publish_rate: RateMeter::default(),
            created: now,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            has_push: false,
        }
    }

    pub fn sub(&self, name: &Name) -> Option<&SubState> {
        self.subs.iter().find(|s| s.name() == name)
    }

    /// Appends one message; returns its seq and whether it was a duplicate of an earlier msg_id.
    pub fn append(
        &mut self,
        req: &PublishRequest,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Result<(u64, bool), EngineError> {
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
            if let Some(&seq) = self.dedup.get(id) {
                self.counters.duplicates += 1;
                return Ok((seq, true));
            }
        }
        if self.config.discard == Discard::New {
            // Age retention applies regardless of discard policy; make room it would make before judging.
            self.enforce_limits(now, effects);
        }
        if self.config.discard == Discard::New
            && let Some(limit) = self.full_for(size as u64)
        {
            self.counters.rejected_full += 1;
            effects.events.push(EngineEvent::DiscardNewRejected { topic: self.config.name.clone() });
            return Err(EngineError::TopicFull { topic: self.config.name.clone(), limit });
        }
        // Publish times never go backwards within a partition, even if the clock does.
        let time = self.log.last_time().map_or(now, |last| last.max(now));
        let subject = (req.subject != self.config.name).then(|| req.subject.clone());
        let extra = MessageExtra::pack(req.key.clone(), req.msg_id.clone(), req.headers.clone());
        let seq = self.log.append(time, subject, extra, &req.payload)?;
        self.counters.published += 1;
        if let Some(id) = &req.msg_id
            && !self.config.dedup_window.is_zero()
        {
            self.dedup.insert(id.clone(), seq);
            self.dedup_order.push_back((now, id.clone()));
        }
        self.enforce_limits(now, effects);
        for sub in &mut self.subs {
            // A message a caught-up filtered subscription does not cover is settled for it at once.
            if sub.delivered_seq + 1 == seq {
                sub.skip_uncovered(&self.config.name, &self.log);
            }
        }
        Ok((seq, false))
    }

    /// Rebuilds the msg_id table from the records published within the dedup window (recovery step 3).
    pub fn rebuild_dedup(&mut self, now: Timestamp) {
        if self.config.dedup_window.is_zero() {
            return;
        }
        // Only the records in memory (the active segment): reading sealed segments back would make
        // opening a directory cost time in proportion to what it holds.
        let from = self.log.seq_at_time(now.minus(self.config.dedup_window)).max(self.log.hot_first());
        for (seq, record) in self.log.iter_from(from) {
            if let Some(id) = record.extra.as_ref().and_then(|e| e.msg_id.clone()) {
                self.dedup.insert(id.clone(), seq);
                self.dedup_order.push_back((record.publish_time, id));
            }
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

    /// Which limit one more message of `size` bytes would break, for `discard = new`.
    fn full_for(&self, size: u64) -> Option<String> {
        let limits = &self.config.limits;
        if let Some(max) = limits.max_msgs
            && self.log.len() >= max
        {
            return Some(format!("max_msgs {max}"));
        }
        if let Some(max) = limits.max_bytes
            && self.log.bytes() + size > max
        {
            return Some(format!("max_bytes {max}"));
        }
        None
    }

    /// Deletes the oldest messages while any limit is exceeded (age always; count and bytes under
    /// `discard = old`). Unsettled victims become EXPIRED in every subscription (T10).
    pub fn enforce_limits(&mut self, now: Timestamp, effects: &mut Effects) {
        let Limits { max_msgs, max_bytes, max_age, .. } = self.config.limits;
        let cutoff = max_age.map(|age| now.minus(age));
        let old = self.config.discard == Discard::Old;
        let mut removed = 0u64;
        while self.log.len() > 0 {
            let too_old = cutoff.is_some_and(|c| self.log.front_time().is_some_and(|t| t < c));
            let too_many = old && max_msgs.is_some_and(|m| self.log.len() > m);
            let too_big = old && max_bytes.is_some_and(|m| self.log.bytes() > m);
            if !(too_old || too_many || too_big) {
                break;
            }
            let want = self.wants_removed_record(self.log.first_seq());
            let Some((seq, record)) = self.log.pop_front(want) else {
                break;
            };
            self.on_removed(seq, record.as_ref());
            removed += 1;
        }
        if removed > 0 {
            // A filtered subscription whose cursor the removal moved may now sit just below messages its
            // filter excludes: they are FILTERED, and the floor passes them (I3).
            for sub in &mut self.subs {
                sub.skip_uncovered(&self.config.name, &self.log);
            }
            self.counters.expired += removed;
            effects
                .events
                .push(EngineEvent::TopicExpired { topic: self.config.name.clone(), count: removed });
        }
    }

    /// Whether removing `seq` needs the record itself: only a filtered subscription that has not reached
    /// it asks (to count it as expired only when its filter covers it). Cold records are read only then.
    fn wants_removed_record(&self, seq: u64) -> bool {
        self.subs.iter().any(|s| s.delivered_seq < seq && s.filters())
    }

    fn on_removed(&mut self, seq: u64, record: Option<&Record>) {
        let name = &self.config.name;
        for sub in &mut self.subs {
            sub.on_removed(name, seq, record);
        }
    }

    /// Deletes every retained message (`topic purge`); seqs keep counting from where they were.
    pub fn purge(&mut self, effects: &mut Effects) -> Result<u64, EngineError> {
        let mut removed = 0;
        if self.log.is_durable() {
            // Whole segments go at once instead of reading every record back (and the active segment's
            // file must go too, or a restart would bring the records back).
            let head = self.log.head_seq();
            let first = self.log.first_seq();
            removed = self.log.purge_durable()?;
            for sub in &mut self.subs {
                sub.on_purged(first, head);
            }
        }
        while let Some((seq, record)) = self.log.pop_front(true) {
            self.on_removed(seq, record.as_ref());
            removed += 1;
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
    pub fn commit_appends(&mut self, head_before: u64) -> Result<Committed, EngineError> {
        match self.log.commit() {
            Ok(sync) => {
                if self.config.durability == Durability::Always
                    && let Some(disk) = self.log.disk()
                {
                    // Written but not confirmed: the records stay (they are in the file and a restart
                    // would bring them back), and the publisher hears that the disk did not confirm.
                    return Ok(match disk.sync_log() {
                        Ok(()) => Committed::Durable,
                        Err(e) => Committed::Unconfirmed(e.into()),
                    });
                }
                Ok(sync.map_or(Committed::Durable, |(gate, mark)| Committed::Wait(gate, mark)))
            }
            Err(e) => {
                let taken_back = self.log.head_seq().saturating_sub(head_before);
                self.log.rollback(head_before);
                self.counters.published = self.counters.published.saturating_sub(taken_back);
                self.dedup.retain(|_, seq| *seq <= head_before);
                for sub in &mut self.subs {
                    sub.delivered_seq = sub.delivered_seq.min(head_before);
                    sub.ack_floor = sub.ack_floor.min(head_before);
                }
                Err(e.into())
            }
        }
    }

    /// Writes what subscriptions journaled under this lock; returns the acks that must reach the disk
    /// before their callers return.
    pub fn persist_subs(&mut self) -> Result<Vec<(Arc<SyncGate>, u64)>, EngineError> {
        let mut waits = Vec::new();
        let mut first_error = None;
        for sub in &mut self.subs {
            match sub.persist() {
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
        let ctx = Ctx { topic: &self.config.name, log: &self.log, now };
        for sub in &mut self.subs {
            if sub.next_timer().is_some_and(|t| t <= now) {
                sub.run_timers(&ctx, effects);
            }
        }
        if self.has_push {
            self.dispatch_push(now, effects);
        }
    }

    /// Pushes to every subscription's push consumers.
    pub fn dispatch_push(&mut self, now: Timestamp, effects: &mut Effects) {
        let ctx = Ctx { topic: &self.config.name, log: &self.log, now };
        for sub in &mut self.subs {
            sub.dispatch_push(&ctx, effects);
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
            partitions: self.config.partitions,
            first_seq: self.log.first_seq(),
            head_seq: self.log.head_seq(),
            messages: self.log.len(),
            bytes: Some(self.log.bytes()),
            last_publish: self.log.last_time(),
            limits: self.config.limits.clone(),
            discard: self.config.discard,
            subscriptions: u32::try_from(self.subs.len()).unwrap_or(u32::MAX),
            counters: TopicCounters { unreadable: self.log.unreadable(), ..self.counters.clone() },
            publish_rate: Some(self.publish_rate.rate(now)),
            publish_series: self.publish_rate.series(now, 15),
            created: Some(self.created),
            partition_info: vec![PartitionInfo {
                partition: 0,
                first_seq: self.log.first_seq(),
                head_seq: self.log.head_seq(),
                messages: self.log.len(),
                bytes: Some(self.log.bytes()),
                leader: None,
            }],
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
    /// An fdatasync that covers this mark.
    Wait(Arc<SyncGate>, u64),
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
