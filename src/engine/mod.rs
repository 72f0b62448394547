//! The local topic engine: topics as append-only logs, subscriptions with per-message delivery state,
//! taps, retention, seek and metrics, as SEMANTICS.md describes. It knows nothing of terminals, sockets
//! or the command line.
//!
//! [`Engine`] is a cheap clonable handle. Each topic sits behind its own mutex, which is never held
//! across an `.await`; work that reaches another topic or the taps (dead letters, events) is collected
//! while the lock is held and carried out after it is released, so locks never nest beyond
//! registry → topic.

mod blocks;
pub mod clock;
pub mod config;
mod consumer;
pub mod error;
pub mod event;
mod log;
pub mod message;
pub mod name;
pub mod stats;
mod subscription;
mod tap;
mod topic;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
pub use config::{
    AckDurability, AckMode, Assignment, Backoff, Discard, Durability, Lifetime, Limits,
    Ordering as OrderingMode, RetentionPolicy, StartPosition, StorageKind, SubscriptionConfig, TopicConfig,
};
pub use consumer::PushConsumer;
pub use error::EngineError;
pub use event::EngineEvent;
pub use message::{
    AckRef, ConsumerId, Delivery, Headers, Message, MessageExtra, PublishReceipt, PublishRequest,
};
pub use name::{Name, NameError, Pattern};
pub use stats::{
    BlockedBy, ConsumerInfo, EngineStats, MessageAckState, PeekReport, SubCounters, SubscriptionInfo,
    TopicCounters, TopicInfo,
};
pub use subscription::DeliveryState;
pub use tap::{TapItem, TapOptions, TapReceiver};

use subscription::{Ctx, Effects, SubState};
use tap::TapRegistry;
use topic::{TopicCell, TopicState};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Whether publishing to a subject no topic captures creates a topic of that name.
    pub auto_create: bool,
    /// Limits given to auto-created topics.
    pub default_limits: Limits,
    /// Default tap buffer, in messages.
    pub tap_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            auto_create: true,
            default_limits: Limits::default(),
            tap_buffer: 1024,
        }
    }
}

/// Where `seek` moves a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTarget {
    /// The oldest retained message.
    Start,
    /// After the newest message: only new ones follow.
    End,
    /// A seq in a partition.
    Seq {
        /// Partition.
        partition: u32,
        /// The first seq to deliver again.
        seq: u64,
    },
    /// The first message published at or after this time.
    Time(Timestamp),
}

/// Where `browse` starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowseFrom {
    /// From this seq (clamped to the oldest retained).
    Seq(u64),
    /// From the first message at or after this time.
    Time(Timestamp),
    /// The newest `n` messages.
    Last(u64),
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// At most this many messages.
    pub max_msgs: usize,
    /// At most this many bytes (one message is always allowed); `u64::MAX` for no limit.
    pub max_bytes: u64,
    /// How long to wait for the first message; `None` returns at once.
    pub wait: Option<Duration>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_msgs: 100,
            max_bytes: u64::MAX,
            wait: None,
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
}

impl Registry {
    fn route(&self, subject: &Name) -> Option<Arc<TopicCell>> {
        if let Some(cell) = self.exact.get(subject) {
            return Some(cell.clone());
        }
        self.wildcard
            .iter()
            .find(|(p, _)| p.matches(subject.as_str()))
            .map(|(_, c)| c.clone())
    }

    fn captures(&self) -> impl Iterator<Item = (Pattern, &Arc<TopicCell>)> {
        let exact = self
            .exact
            .iter()
            .filter_map(|(n, c)| Pattern::parse(n.as_str()).ok().map(|p| (p, c)));
        exact.chain(self.wildcard.iter().map(|(p, c)| (p.clone(), c)))
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
}

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
        Engine {
            inner: Arc::new(Inner {
                clock,
                config,
                registry: RwLock::new(Registry::default()),
                taps: Mutex::new(TapRegistry::default()),
                tap_count: AtomicUsize::new(0),
                unroutable: AtomicU64::new(0),
                tap_lagged: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
            }),
        }
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
        self.inner
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
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
        self.emit(vec![EngineEvent::TopicCreated {
            topic: info.name.clone(),
        }]);
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
            if let Some((other_pattern, cell)) = reg.captures().find(|(p, _)| p.overlaps(pattern)) {
                return Err(EngineError::SubjectOverlap {
                    topic: config.name.clone(),
                    pattern: pattern.as_str().to_string(),
                    other: cell.name.clone(),
                    other_pattern: other_pattern.as_str().to_string(),
                });
            }
        }
        let name = config.name.clone();
        let state = TopicState::new(config, now);
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

    /// Deletes a topic with its subscriptions and messages.
    pub fn delete_topic(&self, name: &Name) -> Result<(), EngineError> {
        let cell = {
            let mut reg = self.registry_mut();
            let cell = reg
                .topics
                .remove(name)
                .ok_or_else(|| EngineError::NoSuchTopic(name.clone()))?;
            reg.exact.retain(|_, c| !Arc::ptr_eq(c, &cell));
            reg.wildcard.retain(|(_, c)| !Arc::ptr_eq(c, &cell));
            reg.subs.retain(|_, c| !Arc::ptr_eq(c, &cell));
            cell
        };
        {
            // Dropping the subscriptions drops push senders, which ends their consumers' streams.
            let mut state = lock(&cell.state);
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
        Ok(removed)
    }

    fn topic_cell(&self, name: &Name) -> Result<Arc<TopicCell>, EngineError> {
        self.registry()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchTopic(name.clone()))
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

    /// Reads a topic's log without touching any subscription.
    pub fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, EngineError> {
        let cell = self.topic_cell(topic)?;
        let state = lock(&cell.state);
        let log = &state.log;
        let start = match from {
            BrowseFrom::Seq(s) => s.max(log.first_seq()),
            BrowseFrom::Time(t) => log.seq_at_time(t),
            BrowseFrom::Last(n) => log
                .head_seq()
                .saturating_sub(n)
                .saturating_add(1)
                .max(log.first_seq()),
        };
        Ok((start..=log.head_seq())
            .take(max)
            .filter_map(|s| log.message(topic, 0, s))
            .collect())
    }

    // ----- publishing ---------------------------------------------------------------------------

    /// Finds (or auto-creates) the topic that captures `subject`. Reserved `$` subjects have no topic.
    fn route(&self, subject: &Name) -> Result<Option<Arc<TopicCell>>, EngineError> {
        if subject.is_reserved() {
            return Ok(None);
        }
        if let Some(cell) = self.registry().route(subject) {
            return Ok(Some(cell));
        }
        if !self.inner.config.auto_create {
            return Ok(None);
        }
        let now = self.now();
        let created = {
            let mut reg = self.registry_mut();
            // Another publisher may have created it between the two locks.
            if let Some(cell) = reg.route(subject) {
                return Ok(Some(cell));
            }
            let mut config = TopicConfig::new(subject.clone());
            config.limits = self.inner.config.default_limits.clone();
            self.insert_topic(&mut reg, config, now)?;
            reg.route(subject)
        };
        self.emit(vec![EngineEvent::TopicCreated {
            topic: subject.clone(),
        }]);
        Ok(created)
    }

    /// Appends a message to the topic that captures its subject and offers it to matching taps.
    pub fn publish(&self, req: PublishRequest) -> Result<PublishReceipt, EngineError> {
        let mut receipts = self.publish_batch(vec![req])?;
        receipts
            .pop()
            .ok_or_else(|| EngineError::InvalidConfig("publish produced no receipt".into()))
    }

    /// Publishes several messages in order; consecutive messages to one subject share one lock
    /// acquisition. Stops at the first failure and returns it; messages before it stay published.
    pub fn publish_batch(&self, reqs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, EngineError> {
        let now = self.now();
        let taps_listening = self.inner.tap_count.load(Ordering::Acquire) > 0;
        let mut receipts = Vec::with_capacity(reqs.len());
        let mut iter = reqs.into_iter().peekable();
        while let Some(first) = iter.next() {
            let Some(cell) = self.route(&first.subject)? else {
                receipts.push(self.publish_unstored(first, now)?);
                continue;
            };
            let subject = first.subject.clone();
            let mut effects = Effects::default();
            let mut for_taps = Vec::new();
            let mut failure = None;
            let run_start = receipts.len();
            {
                let mut state = lock(&cell.state);
                let mut next = Some(first);
                while let Some(req) = next.take() {
                    match state.append(&req, now, &mut effects) {
                        Ok((seq, duplicate)) => {
                            if taps_listening && !duplicate {
                                let time = state.log.get(seq).map_or(now, |r| r.publish_time);
                                for_taps.push(stored_message(&cell.name, seq, time, req));
                            }
                            receipts.push(PublishReceipt {
                                topic: None,
                                partition: 0,
                                seq,
                                taps: 0,
                                duplicate,
                            });
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    next = iter.next_if(|r| r.subject == subject);
                }
                let appended = (receipts.len() - run_start) as u64;
                state.publish_rate.record(now, appended);
                if state.has_push {
                    state.dispatch_push(now, &mut effects);
                }
            }
            self.wake(&cell);
            self.apply(effects);
            let mut taps_reached = for_taps.iter().map(|m| self.offer_taps(|| m.clone()));
            for receipt in &mut receipts[run_start..] {
                receipt.topic = Some(cell.name.clone());
                if !receipt.duplicate {
                    receipt.taps = taps_reached.next().unwrap_or(0);
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(receipts)
    }

    /// A message no topic stores: it reaches taps only, or counts as unroutable.
    fn publish_unstored(&self, req: PublishRequest, now: Timestamp) -> Result<PublishReceipt, EngineError> {
        let subject = req.subject.clone();
        let taps = self.offer_taps(|| {
            let extra = MessageExtra::pack(req.key.clone(), req.msg_id.clone(), req.headers.clone());
            Message::new(
                req.subject.clone(),
                0,
                0,
                now,
                req.subject.clone(),
                extra,
                req.payload.clone(),
            )
        });
        if taps == 0 {
            self.inner.unroutable.fetch_add(1, Ordering::Relaxed);
            if !subject.is_reserved() {
                return Err(EngineError::Unroutable(subject));
            }
        }
        Ok(PublishReceipt {
            topic: None,
            partition: 0,
            seq: 0,
            taps,
            duplicate: false,
        })
    }

    fn offer_taps(&self, message: impl FnOnce() -> Message) -> u32 {
        if self.inner.tap_count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let message = message();
        lock(&self.inner.taps).deliver(&message)
    }

    fn wake(&self, cell: &TopicCell) {
        if cell.waiters.load(Ordering::SeqCst) > 0 {
            cell.notify.notify_waiters();
        }
    }

    /// Carries out what an operation under a topic lock left to do.
    fn apply(&self, effects: Effects) {
        let Effects {
            events,
            dead_letters,
            wake: _,
            closed,
        } = effects;
        for (_, copy) in dead_letters {
            let subject = copy.subject.clone();
            if let Err(e) = self.publish(copy) {
                tracing::warn!(dead_letter = %subject, error = %e, "dead-letter copy could not be appended");
            }
        }
        for (sub, consumer) in closed {
            self.detach(&sub, &consumer);
        }
        self.emit(events);
    }

    /// Publishes engine events to taps listening on `$sys.…`.
    fn emit(&self, events: Vec<EngineEvent>) {
        if events.is_empty() || self.inner.tap_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = self.now();
        let mut taps = lock(&self.inner.taps);
        for event in events {
            let Ok(subject) = Name::system(&event.subject()) else {
                continue;
            };
            let payload = Bytes::from(event.payload().to_string());
            let message = Message::new(subject.clone(), 0, 0, now, subject, None, payload);
            taps.deliver(&message);
        }
    }

    // ----- subscriptions ------------------------------------------------------------------------

    /// Creates a subscription; the topic is auto-created when allowed.
    pub fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, EngineError> {
        config.check()?;
        if config.dead_letter.as_ref() == Some(&config.topic) {
            return Err(EngineError::InvalidConfig(format!(
                "subscription \"{}\": the dead-letter topic must differ from the topic it reads",
                config.name
            )));
        }
        let now = self.now();
        let topic = config.topic.clone();
        let mut created_topic = false;
        let info = {
            let mut reg = self.registry_mut();
            if reg.subs.contains_key(&config.name) {
                return Err(EngineError::SubscriptionExists(config.name.clone()));
            }
            if !reg.topics.contains_key(&topic) {
                if !self.inner.config.auto_create {
                    return Err(EngineError::NoSuchTopic(topic));
                }
                let mut topic_config = TopicConfig::new(topic.clone());
                topic_config.limits = self.inner.config.default_limits.clone();
                self.insert_topic(&mut reg, topic_config, now)?;
                created_topic = true;
            }
            let cell = reg
                .topics
                .get(&topic)
                .cloned()
                .ok_or_else(|| EngineError::NoSuchTopic(topic.clone()))?;
            let mut state = lock(&cell.state);
            let log = &state.log;
            let start = match config.start {
                StartPosition::All | StartPosition::LastPerKey => log.first_seq(),
                StartPosition::New => log.head_seq() + 1,
                StartPosition::Last => log.head_seq().max(log.first_seq()),
                StartPosition::Seq(s) => s.clamp(log.first_seq(), log.head_seq() + 1),
                StartPosition::Time(t) => log.seq_at_time(t),
            };
            let name = config.name.clone();
            state.subs.push(SubState::new(config, start, now));
            let publish_rate = state.publish_rate.rate(now);
            let info = state
                .sub(&name)
                .map(|s| stats::subscription_info(s, &topic, &state.log, publish_rate, now))
                .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))?;
            drop(state);
            reg.subs.insert(name, cell);
            info
        };
        let mut events = Vec::new();
        if created_topic {
            events.push(EngineEvent::TopicCreated { topic: topic.clone() });
        }
        events.push(EngineEvent::SubscriptionCreated {
            subscription: info.name.clone(),
            topic,
        });
        self.emit(events);
        Ok(info)
    }

    /// Deletes a subscription; its push consumers' streams end.
    pub fn delete_subscription(&self, name: &Name) -> Result<(), EngineError> {
        let cell = self
            .registry_mut()
            .subs
            .remove(name)
            .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))?;
        {
            let mut state = lock(&cell.state);
            state.subs.retain(|s| s.name() != name);
            state.refresh_push_flag();
        }
        cell.notify.notify_waiters();
        self.emit(vec![EngineEvent::SubscriptionDeleted {
            subscription: name.clone(),
        }]);
        Ok(())
    }

    fn sub_cell(&self, name: &Name) -> Result<Arc<TopicCell>, EngineError> {
        self.registry()
            .subs
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))
    }

    /// Runs `f` on a subscription under its topic's lock, after its due timers, then carries out effects
    /// and pushes whatever the operation made deliverable.
    fn with_sub<R>(
        &self,
        name: &Name,
        f: impl FnOnce(&mut SubState, &Ctx<'_>, &mut Effects) -> Result<R, EngineError>,
    ) -> Result<R, EngineError> {
        let cell = self.sub_cell(name)?;
        let now = self.now();
        let mut effects = Effects::default();
        let result = {
            let mut guard = lock(&cell.state);
            let state = &mut *guard;
            let ctx = Ctx {
                topic: &state.config.name,
                log: &state.log,
                now,
            };
            let sub = state
                .subs
                .iter_mut()
                .find(|s| s.name() == name)
                .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))?;
            if sub.next_timer().is_some_and(|t| t <= now) {
                sub.run_timers(&ctx, &mut effects);
            }
            let result = f(sub, &ctx, &mut effects);
            sub.dispatch_push(&ctx, &mut effects);
            state.refresh_push_flag();
            result
        };
        if effects.wake {
            cell.notify.notify_waiters();
        }
        self.apply(effects);
        result
    }

    /// Every subscription, optionally only those of one topic.
    pub fn subscriptions(&self, topic: Option<&Name>) -> Vec<SubscriptionInfo> {
        let cells: Vec<_> = match topic {
            Some(t) => self.registry().topics.get(t).cloned().into_iter().collect(),
            None => self.registry().topics.values().cloned().collect(),
        };
        let now = self.now();
        let mut out = Vec::new();
        for cell in cells {
            let state = lock(&cell.state);
            let rate = state.publish_rate.rate(now);
            out.extend(
                state
                    .subs
                    .iter()
                    .map(|s| stats::subscription_info(s, &cell.name, &state.log, rate, now)),
            );
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One subscription's metrics.
    pub fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, EngineError> {
        let cell = self.sub_cell(name)?;
        let now = self.now();
        let state = lock(&cell.state);
        let rate = state.publish_rate.rate(now);
        state
            .sub(name)
            .map(|s| stats::subscription_info(s, &cell.name, &state.log, rate, now))
            .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))
    }

    /// Per-message ack state from the ack floor (or `from`) up, at most `limit` messages.
    pub fn peek(&self, name: &Name, from: u64, limit: usize) -> Result<PeekReport, EngineError> {
        let cell = self.sub_cell(name)?;
        let state = lock(&cell.state);
        state
            .sub(name)
            .map(|s| stats::peek(s, &cell.name, &state.log, from, limit))
            .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))
    }

    // ----- consuming ----------------------------------------------------------------------------

    /// Takes what is deliverable now for `consumer`, without waiting.
    pub fn try_fetch(
        &self,
        sub: &Name,
        consumer: &str,
        opts: &FetchOptions,
    ) -> Result<Vec<Delivery>, EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            let c = s.consumer_index(consumer, ctx.now, effects);
            let mut out = Vec::new();
            s.fill(c, ctx, opts.max_msgs, opts.max_bytes, &mut out);
            if let Some(consumer) = s.consumers.get_mut(c) {
                consumer.last_activity = ctx.now;
            }
            s.last_active = ctx.now;
            s.advance_floor();
            Ok(out)
        })
    }

    /// Pull: takes up to `max_msgs` deliverable messages for `consumer`, waiting up to `wait` for the
    /// first (long poll). Returns an empty batch when the wait ends with nothing.
    pub async fn fetch(
        &self,
        sub: &Name,
        consumer: &str,
        opts: FetchOptions,
    ) -> Result<Vec<Delivery>, EngineError> {
        let cell = self.sub_cell(sub)?;
        let deadline = match opts.wait {
            Some(w) => Some(
                tokio::time::Instant::now()
                    .checked_add(w)
                    .ok_or(EngineError::WaitTooLong(w))?,
            ),
            None => None,
        };
        loop {
            let notified = cell.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _waiting = WaiterGuard::new(&cell.waiters);
            let batch = self.try_fetch(sub, consumer, &opts)?;
            let Some(deadline) = deadline else {
                return Ok(batch);
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    /// Push: attaches a consumer that the engine hands messages to as credit allows.
    pub fn attach(&self, sub: &Name, opts: AttachOptions) -> Result<PushConsumer, EngineError> {
        let id: ConsumerId = match opts.consumer {
            Some(id) => Arc::from(id.as_str()),
            None => {
                Arc::from(format!("push-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed)).as_str())
            }
        };
        let starved = Arc::new(AtomicBool::new(false));
        let (tx, rx) = {
            let id = id.clone();
            let starved = starved.clone();
            let mut channel = None;
            self.with_sub(sub, |s, ctx, effects| {
                let prefetch = opts.prefetch.unwrap_or(s.config.max_in_flight).max(1);
                let (tx, rx) = mpsc::channel(usize::try_from(prefetch).unwrap_or(1024));
                s.attach_push(id, prefetch, tx.clone(), starved, ctx.now, effects);
                channel = Some((tx, rx));
                Ok(())
            })?;
            channel.ok_or_else(|| EngineError::NoSuchSubscription(sub.clone()))?
        };
        // The engine keeps its own sender inside the subscription; this one only existed to build it.
        drop(tx);
        // with_sub dispatched before the push flag was set for the topic; do it again now that it is.
        self.dispatch(sub);
        Ok(PushConsumer {
            engine: self.clone(),
            subscription: sub.clone(),
            id,
            rx,
            starved,
        })
    }

    /// Detaches a consumer; its in-flight messages become available to the others (T7).
    pub fn detach(&self, sub: &Name, consumer: &str) {
        let id: ConsumerId = Arc::from(consumer);
        // A subscription that is already gone has nothing left to requeue.
        let _ = self.with_sub(sub, |s, ctx, effects| Ok(s.detach(&id, ctx, effects)));
    }

    /// Runs push dispatch for a subscription (a push consumer made room).
    pub fn dispatch(&self, sub: &Name) {
        let _ = self.with_sub(sub, |_, _, _| Ok(()));
    }

    /// Acks one delivery (T3).
    pub fn ack(&self, sub: &Name, r: AckRef) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx.topic, r.partition)?;
            // Settling frees credit that a waiting fetch may be blocked on.
            effects.wake = true;
            s.ack(&r, ctx.now)
        })
    }

    /// Acks every in-flight message of `consumer` up to `seq` (T3c); returns how many.
    pub fn ack_cumulative(
        &self,
        sub: &Name,
        consumer: &str,
        partition: u32,
        seq: u64,
    ) -> Result<u64, EngineError> {
        let id: ConsumerId = Arc::from(consumer);
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx.topic, partition)?;
            effects.wake = true;
            s.ack_cumulative(&id, seq, ctx.now)
        })
    }

    /// Gives a delivery back, to be redelivered after `delay` or the backoff (T5).
    pub fn nack(&self, sub: &Name, r: AckRef, delay: Option<Duration>) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx.topic, r.partition)?;
            s.nack(&r, delay, ctx, effects)
        })
    }

    /// Extends a lease to now + `by`, capped by `max_lease` (T4); returns the deadline in force.
    pub fn extend(&self, sub: &Name, r: AckRef, by: Duration) -> Result<Timestamp, EngineError> {
        self.with_sub(sub, |s, ctx, _| {
            check_partition(ctx.topic, r.partition)?;
            s.extend(&r, by, ctx.now)
        })
    }

    /// Gives up on a delivery for good: dead-letter or terminate (T9).
    pub fn term(&self, sub: &Name, r: AckRef, reason: &str) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx.topic, r.partition)?;
            effects.wake = true;
            s.term(&r, reason, ctx, effects)
        })
    }

    /// Moves a subscription (T11); returns the next seq it will deliver.
    pub fn seek(&self, sub: &Name, target: SeekTarget) -> Result<u64, EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            let log = ctx.log;
            let next = match target {
                SeekTarget::Start => log.first_seq(),
                SeekTarget::End => log.head_seq() + 1,
                SeekTarget::Seq { partition, seq } => {
                    check_partition(ctx.topic, partition)?;
                    seq.clamp(log.first_seq(), log.head_seq() + 1)
                }
                SeekTarget::Time(t) => log.seq_at_time(t),
            };
            s.seek(next, effects);
            Ok(next)
        })
    }

    // ----- taps ---------------------------------------------------------------------------------

    /// Starts a live listener on subjects matching any of `patterns`.
    pub fn tap(&self, patterns: Vec<Pattern>, opts: TapOptions) -> Result<TapReceiver, EngineError> {
        if patterns.is_empty() {
            return Err(EngineError::InvalidConfig(
                "a tap needs at least one pattern".into(),
            ));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let buffer = if opts.buffer == 0 {
            self.inner.config.tap_buffer
        } else {
            opts.buffer
        };
        let rx = {
            let mut taps = lock(&self.inner.taps);
            let rx = taps.add(id, patterns, opts.group, buffer);
            self.inner.tap_count.store(taps.len(), Ordering::Release);
            rx
        };
        Ok(TapReceiver {
            engine: self.clone(),
            id,
            rx,
        })
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
        let cells: Vec<_> = self.registry().topics.values().cloned().collect();
        let mut idle = Vec::new();
        for cell in cells {
            let mut effects = Effects::default();
            {
                let mut state = lock(&cell.state);
                state.run_timers(now, &mut effects);
                for sub in &state.subs {
                    if let Lifetime::Ephemeral { inactive_ttl } = sub.config.lifetime
                        && sub.consumers.is_empty()
                        && now.since(sub.last_active) >= inactive_ttl
                    {
                        idle.push(sub.name().clone());
                    }
                }
            }
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

    /// Runs [`Engine::tick`] every `period` until `cancel` fires.
    pub fn spawn_ticker(&self, period: Duration, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = interval.tick() => engine.tick(),
                }
            }
        })
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

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

fn check_partition(topic: &Name, partition: u32) -> Result<(), EngineError> {
    if partition == 0 {
        Ok(())
    } else {
        Err(EngineError::NoSuchPartition {
            topic: topic.clone(),
            partition,
        })
    }
}

fn stored_message(topic: &Name, seq: u64, time: Timestamp, req: PublishRequest) -> Message {
    let extra = MessageExtra::pack(req.key, req.msg_id, req.headers);
    Message::new(topic.clone(), 0, seq, time, req.subject, extra, req.payload)
}

/// Counts a waiting fetch for as long as it waits, however the wait ends.
struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        WaiterGuard(counter)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
