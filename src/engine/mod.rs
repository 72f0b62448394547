//! The local topic engine: topics as append-only logs, subscriptions with per-message delivery state,
//! taps, retention, seek and metrics, as SEMANTICS.md describes. It knows nothing of terminals, sockets
//! or the command line.
//!
//! [`Engine`] is a cheap clonable handle. Each topic sits behind its own mutex, which is never held
//! across an `.await`; work that reaches another topic or the taps (dead letters, events) is collected
//! while the lock is held and carried out after it is released, so locks never nest beyond
//! registry → topic.

mod assign;
mod blocks;
mod consume;
mod consumer;
mod deadlines;
mod dispatch;
mod durable;
mod entries;
mod log;
mod ordering;
mod publish;
mod push;
mod settle;
mod snapshot;
pub mod stats;
mod subscription;
mod tap;
mod topic;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

pub use crate::model::{
    AckDurability, AckMode, AckRef, Assignment, Backoff, BlockedBy, BrowseFrom, Clock, ConsumerId,
    ConsumerInfo, Delivery, DeliveryState, Discard, Durability, EngineError, EngineEvent, EngineStats,
    FetchOptions, Headers, Lifetime, Limits, ManualClock, Message, MessageAckState, MessageExtra, Name,
    NameError, OrderingMode, Pattern, PatternToken, PeekReport, PublishReceipt, PublishRequest,
    RetentionPolicy, SNAPSHOT_TTL, SeekTarget, SharedClock, SnapshotInfo, SnapshotPartition, StartPosition,
    StorageKind, SubCounters, SubscriptionConfig, SubscriptionInfo, SystemClock, Timestamp, TopicConfig,
    TopicCounters, TopicInfo,
};
pub use consumer::{AssignmentChange, ByteBudget, PushConsumer, PushItem};
pub use publish::PendingPublish;
pub use push::{PushStatus, WeakEngine};
pub use tap::{TapItem, TapOptions, TapReceiver};

use crate::store::StoreError;
use crate::store::segment::{Partition, PartitionOptions};
use crate::store::{MetaOp, Store, SyncGate};
use subscription::Effects;
use tap::TapRegistry;
use topic::{TopicCell, TopicState};

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Storage(e.to_string())
    }
}

/// A pull consumer that holds nothing and has not fetched for this long is forgotten.
const PULL_CONSUMER_IDLE: Duration = Duration::from_secs(300);

/// How many expired snapshots' names the engine remembers for a clearer `seek --snapshot` error.
const EXPIRED_SNAPSHOTS_KEPT: usize = 1024;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Whether publishing to a subject no topic captures creates a topic of that name.
    pub auto_create: bool,
    /// Limits given to auto-created topics.
    pub default_limits: Limits,
    /// Default tap buffer, in messages.
    pub tap_buffer: usize,
    /// Publish durability of auto-created topics on a durable engine (and of created ones that keep the
    /// default).
    pub default_durability: Durability,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            auto_create: true,
            default_limits: Limits::default(),
            tap_buffer: 1024,
            default_durability: Durability::default(),
        }
    }
}

/// Options for a push consumer.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Its id; a fresh one is made when `None`.
    pub consumer: Option<String>,
    /// Its credit (and channel size); the subscription's `max_in_flight` when `None`.
    pub prefetch: Option<u32>,
    /// The most deliveries it is ever handed (a total credit: `sub --count N`); no cap when `None`.
    pub limit: Option<u64>,
}

#[derive(Debug, Default)]
struct Registry {
    topics: BTreeMap<Name, Arc<TopicCell>>,
    /// Subscription name → the topic that holds it.
    subs: HashMap<Name, Arc<TopicCell>>,
    /// Literal captured subjects → topic.
    exact: HashMap<Name, Arc<TopicCell>>,
    /// Wildcard captures, checked in order when no literal capture matches.
    wildcard: Vec<(Pattern, Arc<TopicCell>)>,
    /// Snapshots by name.
    snapshots: BTreeMap<Name, crate::model::SnapshotInfo>,
    /// Snapshots the timer removed when they expired, with when (so that `seek --snapshot` can say
    /// so); not kept across a restart, and at most [`EXPIRED_SNAPSHOTS_KEPT`] of them.
    expired_snapshots: BTreeMap<Name, Timestamp>,
}

impl Registry {
    fn route(&self, subject: &Name) -> Option<Arc<TopicCell>> {
        if let Some(cell) = self.exact.get(subject) {
            return Some(cell.clone());
        }
        self.wildcard.iter().find(|(p, _)| p.matches(subject.as_str())).map(|(_, c)| c.clone())
    }

    /// A topic's capture that overlaps `pattern`, as written, and the topic. A literal capture overlaps
    /// exactly the patterns that match it, so a literal `pattern` takes one lookup among them and a
    /// wildcard one a match per name; only wildcard captures need [`Pattern::overlaps`]. (Parsing every
    /// literal capture back into a pattern for it made creating N topics cost O(N²) parses: 30 s for
    /// 10,000 topics in memory.)
    fn overlap(&self, pattern: &Pattern) -> Option<(&str, &Arc<TopicCell>)> {
        let literal = match pattern.literal() {
            Some(text) => self.exact.get_key_value(text),
            None => self.exact.iter().find(|(name, _)| pattern.matches(name.as_str())),
        };
        literal.map(|(name, cell)| (name.as_str(), cell)).or_else(|| {
            self.wildcard.iter().find(|(p, _)| p.overlaps(pattern)).map(|(p, cell)| (p.as_str(), cell))
        })
    }
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    config: EngineConfig,
    registry: RwLock<Registry>,
    taps: Mutex<TapRegistry>,
    tap_count: AtomicUsize,
    unroutable: AtomicU64,
    tap_lagged: AtomicU64,
    next_id: AtomicU64,
    /// The durable store, when the engine was opened on a data directory.
    store: Option<Store>,
    /// What the pushers of push subscriptions report.
    push: push::PushBoard,
}

/// The engine's timer task, from [`Engine::spawn_ticker`]. Dropping it stops the task, first waiting for
/// a tick under way to end.
#[derive(Debug)]
pub struct Ticker {
    stopped: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        *lock(&self.stopped) = true;
        self.task.abort();
    }
}

/// The bits of an id that go into a lease base (see [`Engine::next_lease_base`]).
const LEASE_ID_MASK: u64 = (1 << 21) - 1;

/// The engine handle: clone it freely and use it from any task or thread.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a topic lock cannot leave the state half-updated in a way that is worse than
    // refusing service forever, so a poisoned lock is taken over rather than propagated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// An engine on the real clock with default settings.
    pub fn new() -> Self {
        Engine::with_clock(Arc::new(SystemClock), EngineConfig::default())
    }

    /// An engine on the given clock and settings.
    pub fn with_clock(clock: SharedClock, config: EngineConfig) -> Self {
        Engine::build(clock, config, None, 1)
    }

    fn build(clock: SharedClock, config: EngineConfig, store: Option<Store>, first_id: u64) -> Self {
        Engine {
            inner: Arc::new(Inner {
                clock,
                config,
                registry: RwLock::new(Registry::default()),
                taps: Mutex::new(TapRegistry::default()),
                tap_count: AtomicUsize::new(0),
                unroutable: AtomicU64::new(0),
                tap_lagged: AtomicU64::new(0),
                next_id: AtomicU64::new(first_id),
                store,
                push: push::PushBoard::default(),
            }),
        }
    }

    /// The configuration an auto-created topic gets: the engine's default limits and durability.
    fn auto_topic_config(&self, name: &Name) -> TopicConfig {
        let mut config = TopicConfig::new(name.clone());
        config.limits = self.inner.config.default_limits.clone();
        config.durability = self.inner.config.default_durability;
        config
    }

    /// A base for a new subscription's lease tokens, unique in this engine (and across restarts of a
    /// durable one).
    /// Lease tokens stay below 2^53 (21 bits of id above 32 of count), so that they survive tools that
    /// read JSON numbers as doubles (`jq`, JavaScript): a rounded lease would settle nothing.
    fn next_lease_base(&self) -> u64 {
        (self.inner.next_id.fetch_add(1, Ordering::Relaxed) & LEASE_ID_MASK).max(1) << 32
    }

    /// The clock every rule reads.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The time now, on the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.registry.write().unwrap_or_else(PoisonError::into_inner)
    }

    // ----- topics -------------------------------------------------------------------------------

    /// Creates a topic; refused when a captured subject overlaps another topic's.
    pub fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, EngineError> {
        config.check()?;
        let now = self.now();
        let info = {
            let mut reg = self.registry_mut();
            self.insert_topic(&mut reg, config, now)?
        };
        self.emit(vec![EngineEvent::TopicCreated { topic: info.name.clone() }]);
        Ok(info)
    }

    fn insert_topic(
        &self,
        reg: &mut Registry,
        config: TopicConfig,
        now: Timestamp,
    ) -> Result<TopicInfo, EngineError> {
        if reg.topics.contains_key(&config.name) {
            return Err(EngineError::TopicExists(config.name.clone()));
        }
        let captured = config.captured();
        for pattern in &captured {
            if let Some((other_pattern, cell)) = reg.overlap(pattern) {
                return Err(EngineError::SubjectOverlap {
                    topic: config.name.clone(),
                    pattern: pattern.as_str().to_string(),
                    other: cell.name.clone(),
                    other_pattern: other_pattern.to_string(),
                });
            }
        }
        let name = config.name.clone();
        let mut config = config;
        let state = match &self.inner.store {
            Some(store) => {
                config.storage = StorageKind::File;
                // Files left by a delete go; files with data that nothing names are never overwritten.
                store.make_way(&store.topic_dir(&name))?;
                // Recorded first: a stop before the files exist leaves a topic that recovery creates again,
                // never files that no metadata names.
                store.record(&MetaOp::CreateTopic { config: config.clone(), created: Some(now) })?;
                let made = (0..config.partitions.max(1))
                    .map(|p| self.create_partition(store, &config, p))
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|logs| {
                        crate::store::write_name_file(&store.topic_dir(&name), &name).map(|()| logs)
                    });
                let logs = match made {
                    Ok(logs) => logs,
                    Err(e) => {
                        undo_create(
                            store,
                            MetaOp::DeleteTopic { name: name.clone() },
                            store.topic_dir(&name),
                        );
                        return Err(e.into());
                    }
                };
                TopicState::with_logs(config, logs, now)
            }
            None => {
                config.storage = StorageKind::Memory;
                TopicState::new(config, now)
            }
        };
        let info = state.info(now);
        let cell = TopicCell::new(state);
        for pattern in captured {
            match pattern.literal().map(Name::new) {
                Some(Ok(literal)) => {
                    reg.exact.insert(literal, cell.clone());
                }
                _ => reg.wildcard.push((pattern, cell.clone())),
            }
        }
        reg.topics.insert(name, cell);
        Ok(info)
    }

    /// Makes the files of partition `p` of a new topic (or of one that grows) and its log.
    fn create_partition(&self, store: &Store, config: &TopicConfig, p: u32) -> Result<log::Log, StoreError> {
        let disk = Partition::create(&store.partition_dir(&config.name, p), 1, partition_options(config))?;
        if let Durability::Interval(every) = config.durability {
            store.sync_every(&disk.gate(), every);
        }
        Ok(log::Log::on_disk(disk, Vec::new()))
    }

    /// Grows a topic to `partitions` partitions (`topics alter --partitions`). Shrinking is refused:
    /// the messages of the partitions that would go, and every position in them, would be lost. The
    /// new partitions start empty; keys hash over the new count from then on, so a key's later
    /// messages may land in another partition than its earlier ones (as in Kafka).
    pub fn set_partitions(&self, name: &Name, partitions: u32) -> Result<TopicInfo, EngineError> {
        let cell = self.topic_cell(name)?;
        let now = self.now();
        // The registry's write lock keeps a close from running meanwhile.
        let reg = self.registry_mut();
        let mut state = lock(&cell.state);
        let current = state.partitions();
        if partitions < current {
            return Err(EngineError::InvalidConfig(format!(
                "topic \"{name}\" has {current} partitions; partitions can be added but never removed (asked for {partitions})"
            )));
        }
        let mut config = state.config.clone();
        config.partitions = partitions;
        config.check()?;
        if partitions == current {
            return Ok(state.info(now));
        }
        if let Some(store) = &self.inner.store {
            // Recorded first: recovery makes the files of a partition the metadata names but the disk
            // lacks, so a stop in between loses nothing.
            store.record(&MetaOp::CreateTopic { config: config.clone(), created: Some(state.created) })?;
            for p in current..partitions {
                let log = self.create_partition(store, &config, p)?;
                state.logs.push(log);
                for sub in &mut state.subs {
                    sub.parts.push(subscription::Part::default());
                }
            }
        } else {
            for _ in current..partitions {
                state.logs.push(log::Log::new());
                for sub in &mut state.subs {
                    sub.parts.push(subscription::Part::default());
                }
            }
        }
        state.config.partitions = partitions;
        let mut effects = subscription::Effects::default();
        for sub in &mut state.subs {
            // New partitions get owners under PartitionExclusive.
            sub.rebalance(now, &mut effects);
        }
        if state.has_push {
            state.dispatch_push(now, &mut effects);
        }
        let info = state.info(now);
        drop(state);
        drop(reg);
        if effects.wake {
            cell.notify.notify_waiters();
        }
        self.apply(effects);
        Ok(info)
    }

    /// Deletes a topic with its subscriptions and messages.
    pub fn delete_topic(&self, name: &Name) -> Result<(), EngineError> {
        let cell = {
            let mut reg = self.registry_mut();
            let cell = reg.topics.remove(name).ok_or_else(|| EngineError::NoSuchTopic(name.clone()))?;
            reg.exact.retain(|_, c| !Arc::ptr_eq(c, &cell));
            reg.wildcard.retain(|(_, c)| !Arc::ptr_eq(c, &cell));
            reg.subs.retain(|_, c| !Arc::ptr_eq(c, &cell));
            reg.snapshots.retain(|_, s| s.topic != *name);
            if let Some(store) = &self.inner.store {
                store.record(&MetaOp::DeleteTopic { name: name.clone() })?;
                store.mark_removable(store.topic_dir(name));
                for sub in &lock(&cell.state).subs {
                    store.mark_removable(store.subscription_dir(sub.name()));
                }
            }
            cell
        };
        {
            // Dropping the subscriptions drops push senders, which ends their consumers' streams.
            let mut state = lock(&cell.state);
            if let Some(store) = &self.inner.store {
                for sub in &state.subs {
                    if let Err(e) = store.remove_subscription_files(sub.name()) {
                        tracing::warn!("{e}");
                    }
                }
                if let Err(e) = store.remove_topic_files(name) {
                    tracing::warn!("{e}");
                }
            }
            state.subs.clear();
        }
        cell.notify.notify_waiters();
        self.emit(vec![EngineEvent::TopicDeleted { topic: name.clone() }]);
        Ok(())
    }

    /// Deletes every message of a topic; returns how many.
    pub fn purge_topic(&self, name: &Name) -> Result<u64, EngineError> {
        let cell = self.topic_cell(name)?;
        let mut effects = Effects::default();
        let removed = lock(&cell.state).purge(&mut effects);
        self.apply(effects);
        removed
    }

    fn topic_cell(&self, name: &Name) -> Result<Arc<TopicCell>, EngineError> {
        self.registry().topics.get(name).cloned().ok_or_else(|| EngineError::NoSuchTopic(name.clone()))
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let cells: Vec<_> = self.registry().topics.values().cloned().collect();
        let now = self.now();
        cells.iter().map(|c| lock(&c.state).info(now)).collect()
    }

    /// One topic.
    pub fn topic_info(&self, name: &Name) -> Result<TopicInfo, EngineError> {
        let cell = self.topic_cell(name)?;
        let now = self.now();
        let info = lock(&cell.state).info(now);
        Ok(info)
    }

    /// Reads a topic's log without touching any subscription. `At` reads one partition; the other
    /// starts read every partition, merged in publish-time order (`Seq(s)` from seq s of each, `Last(n)`
    /// the newest n of each).
    pub fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, EngineError> {
        let cell = self.topic_cell(topic)?;
        let state = lock(&cell.state);
        let read = |p: u32, log: &log::Log| -> Vec<Message> {
            let start = match from {
                BrowseFrom::Seq(s) | BrowseFrom::At { seq: s, .. } => s.max(log.first_seq()),
                BrowseFrom::Time(t) => log.seq_at_time(t),
                BrowseFrom::Last(n) => {
                    log.head_seq().saturating_sub(n).saturating_add(1).max(log.first_seq())
                }
            };
            (start..=log.head_seq()).take(max).filter_map(|s| log.message(topic, p, s)).collect()
        };
        if let BrowseFrom::At { partition, .. } = from {
            let log = state
                .log(partition)
                .ok_or_else(|| EngineError::NoSuchPartition { topic: topic.clone(), partition })?;
            return Ok(read(partition, log));
        }
        if state.logs.len() == 1 {
            return Ok(state.logs.first().map(|log| read(0, log)).unwrap_or_default());
        }
        let mut all: Vec<Message> = state
            .logs
            .iter()
            .enumerate()
            .flat_map(|(p, log)| read(u32::try_from(p).unwrap_or(u32::MAX), log))
            .collect();
        all.sort_by_key(|m| (m.publish_time, m.partition, m.seq));
        if let BrowseFrom::Last(n) = from {
            // The newest n over the topic, still oldest first.
            let keep = usize::try_from(n).unwrap_or(usize::MAX).min(max);
            let drop = all.len().saturating_sub(keep);
            all.drain(..drop);
        }
        all.truncate(max);
        Ok(all)
    }

    // ----- taps ---------------------------------------------------------------------------------

    /// Starts a live listener on subjects matching any of `patterns`.
    pub fn tap(&self, patterns: Vec<Pattern>, opts: TapOptions) -> Result<TapReceiver, EngineError> {
        if patterns.is_empty() {
            return Err(EngineError::InvalidConfig("a tap needs at least one pattern".into()));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let buffer = if opts.buffer == 0 { self.inner.config.tap_buffer } else { opts.buffer };
        let rx = {
            let mut taps = lock(&self.inner.taps);
            let rx = taps.add(id, patterns, opts.group, buffer);
            self.inner.tap_count.store(taps.len(), Ordering::Release);
            rx
        };
        Ok(TapReceiver { engine: self.clone(), id, rx })
    }

    pub(crate) fn remove_tap(&self, id: u64) {
        let mut taps = lock(&self.inner.taps);
        taps.remove(id);
        self.inner.tap_count.store(taps.len(), Ordering::Release);
    }

    pub(crate) fn note_tap_lagged(&self, id: u64, skipped: u64) {
        self.inner.tap_lagged.fetch_add(skipped, Ordering::Relaxed);
        self.emit(vec![EngineEvent::TapLagged { tap: id, skipped }]);
    }

    // ----- time ---------------------------------------------------------------------------------

    /// Runs every due timer: lease expiry, backoff release, age retention, idle ephemeral subscriptions.
    pub fn tick(&self) {
        let now = self.now();
        self.expire_snapshots(now);
        let cells: Vec<_> = self.registry().topics.values().cloned().collect();
        let mut idle = Vec::new();
        for cell in cells {
            let mut effects = Effects::default();
            let waits = {
                let mut state = lock(&cell.state);
                state.run_timers(now, &mut effects);
                for sub in &mut state.subs {
                    if let Lifetime::Ephemeral { inactive_ttl } = sub.config.lifetime
                        && sub.is_idle(now, inactive_ttl)
                    {
                        idle.push(sub.name().clone());
                    }
                    for consumer in sub.reap_idle_pull(now, PULL_CONSUMER_IDLE, &mut effects) {
                        let subscription = sub.name().clone();
                        effects.events.push(EngineEvent::ConsumerDetached {
                            subscription,
                            consumer,
                            requeued: 0,
                        });
                    }
                }
                if effects.wake && state.has_push {
                    // A rebalance may have handed partitions to push consumers.
                    state.dispatch_push(now, &mut effects);
                }
                state.persist_subs().unwrap_or_default()
            };
            // Timers settle nothing a caller waits for; the syncs only keep the journal current.
            let _ = wait_all(waits);
            if effects.wake {
                cell.notify.notify_waiters();
            }
            self.apply(effects);
        }
        for name in idle {
            // It may have been deleted meanwhile, which is the outcome wanted anyway.
            let _ = self.delete_subscription(&name);
        }
    }

    /// Runs [`Engine::tick`] every `period` until the returned [`Ticker`] is dropped. The task holds the
    /// engine only while a tick runs, and dropping the ticker waits for a tick under way, so once it is
    /// dropped nothing of the task keeps the engine (or its data directory) alive.
    pub fn spawn_ticker(&self, period: Duration) -> Ticker {
        let engine = Arc::downgrade(&self.inner);
        let stopped = Arc::new(Mutex::new(false));
        let stop = stopped.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                let stopped = lock(&stop);
                if *stopped {
                    break;
                }
                match engine.upgrade() {
                    Some(inner) => Engine { inner }.tick(),
                    None => break,
                }
            }
        });
        Ticker { stopped, task }
    }

    /// Engine-wide totals.
    pub fn stats(&self) -> EngineStats {
        let reg = self.registry();
        EngineStats {
            topics: reg.topics.len() as u64,
            subscriptions: reg.subs.len() as u64,
            taps: self.inner.tap_count.load(Ordering::Relaxed) as u64,
            unroutable: self.inner.unroutable.load(Ordering::Relaxed),
            tap_lagged: self.inner.tap_lagged.load(Ordering::Relaxed),
        }
    }
}

/// The settings of a topic's partition files.
/// Takes back a create whose files could not be made: the delete is recorded and what was made goes. If
/// the record fails too, recovery finds the topic or subscription without files and creates them.
fn undo_create(store: &Store, delete: MetaOp, dir: std::path::PathBuf) {
    match store.record(&delete) {
        Ok(()) => store.mark_removable(dir.clone()),
        Err(e) => tracing::warn!("cannot take back a create that failed: {e}"),
    }
    if let Err(e) = store.make_way(&dir) {
        tracing::warn!("{e}");
    }
}

fn partition_options(config: &TopicConfig) -> PartitionOptions {
    PartitionOptions {
        segment_bytes: config.segment_bytes,
        durability: config.durability,
        budget: crate::store::segment::FileBudget::global(),
    }
}

/// The fdatasyncs an operation that already happened still owes before it may be reported durable.
#[must_use = "an operation is durable only once its pending syncs were waited for"]
#[derive(Default)]
pub struct PendingSync(Vec<(Arc<SyncGate>, u64)>);

impl PendingSync {
    /// Whether nothing is owed (memory storage, or a durability that does not sync acks).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Blocks until everything owed is on disk (one fdatasync serves every waiter queued behind it).
    pub fn wait(self) -> Result<(), EngineError> {
        wait_all(self.0)
    }

    /// Adds what `other` owes: one mark per file, the highest.
    pub fn merge(&mut self, other: PendingSync) {
        for (gate, mark) in other.0 {
            match self.0.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &gate)) {
                Some((_, owed)) => *owed = (*owed).max(mark),
                None => self.0.push((gate, mark)),
            }
        }
    }

    /// [`PendingSync::wait`] on an async task: the fdatasync runs on the blocking pool once for all the
    /// tasks waiting on the same file, rather than a blocking thread each.
    pub async fn wait_async(self) -> Result<(), EngineError> {
        for (gate, mark) in self.0 {
            gate.wait_async(mark).await?;
        }
        Ok(())
    }
}

/// Waits for every sync an operation needs before it may return.
fn wait_all(waits: Vec<(Arc<SyncGate>, u64)>) -> Result<(), EngineError> {
    for (gate, mark) in waits {
        gate.wait(mark)?;
    }
    Ok(())
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}
