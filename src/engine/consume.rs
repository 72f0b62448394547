//! Subscriptions and consumers: create and delete, metrics, fetch (pull), attach (push), and settling
//! deliveries. Every operation runs under the topic's lock via `with_sub`, after the subscription's due
//! timers, and pushes whatever it made deliverable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::consumer::{ByteBudget, NoteQueue, PushSink};
use super::stats;
use super::subscription::{Ctx, Effects, SubState};
use super::topic::TopicCell;
use super::{
    AckRef, AttachOptions, ConsumerId, Delivery, Engine, EngineError, EngineEvent, FetchOptions, Lifetime,
    Name, PeekReport, PendingSync, PushConsumer, SeekTarget, StartPosition, SubscriptionConfig,
    SubscriptionInfo, Timestamp, lock,
};
use crate::store::MetaOp;
use crate::store::journal::{SubJournal, pos_key};

impl Engine {
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
                let topic_config = self.auto_topic_config(&topic);
                self.insert_topic(&mut reg, topic_config, now)?;
                created_topic = true;
            }
            let cell =
                reg.topics.get(&topic).cloned().ok_or_else(|| EngineError::NoSuchTopic(topic.clone()))?;
            if let Some(dlt) = &config.dead_letter
                && !reg.topics.contains_key(dlt)
                && reg.route(dlt).is_some_and(|c| Arc::ptr_eq(&c, &cell))
            {
                // The copy could not get a topic of its own (its name lies inside this topic's subjects)
                // and would loop back into the topic it came from.
                return Err(EngineError::InvalidConfig(format!(
                    "subscription \"{}\": dead-letter topic \"{dlt}\" would be captured by topic \"{topic}\" itself; choose a name outside its subjects, e.g. \"dlq.{topic}\"",
                    config.name
                )));
            }
            let mut state = lock(&cell.state);
            state.check_work_queue(&config)?;
            // Where it starts in each partition. `Seq(s)` is seq s of every partition, `Last` the newest
            // message of every partition.
            let starts: Vec<u64> = state
                .logs
                .iter()
                .map(|log| match config.start {
                    StartPosition::All | StartPosition::LastPerKey => log.first_seq(),
                    StartPosition::New => log.head_seq() + 1,
                    StartPosition::Last => log.head_seq().max(log.first_seq()),
                    StartPosition::Seq(s) => s.clamp(log.first_seq(), log.head_seq() + 1),
                    StartPosition::Time(t) => log.seq_at_time(t),
                })
                .collect();
            let name = config.name.clone();
            let lease_base = self.next_lease_base();
            // What was published before it existed is not its to hold under Interest retention.
            let created_heads = state.heads();
            let journal = match &self.inner.store {
                Some(store)
                    if config.lifetime == Lifetime::Durable && state.logs.iter().all(|l| l.is_durable()) =>
                {
                    let dir = store.subscription_dir(&name);
                    store.make_way(&dir)?;
                    store.record(&MetaOp::CreateSubscription {
                        config: config.clone(),
                        created: Some(now),
                        created_heads: Some(created_heads.clone()),
                    })?;
                    let made = SubJournal::create(&dir, &starts, &created_heads, config.ack_durability)
                        .and_then(|journal| crate::store::write_name_file(&dir, &name).map(|()| journal));
                    match made {
                        Ok(journal) => Some(journal),
                        Err(e) => {
                            super::undo_create(store, MetaOp::DeleteSubscription { name: name.clone() }, dir);
                            return Err(e.into());
                        }
                    }
                }
                _ => None,
            };
            let mut sub = SubState::new(config, &starts, now, lease_base);
            sub.journal = journal;
            sub.created_heads = created_heads;
            if sub.config.start == StartPosition::LastPerKey {
                let ctx = Ctx { topic: &state.config.name, logs: &state.logs, now };
                sub.start_last_per_key(&ctx);
                if let Err(e) = sub.persist(&state.logs) {
                    tracing::warn!(subscription = %name, "cannot write its starting state: {e}");
                }
            }
            state.subs.push(sub);
            let publish_rate = state.publish_rate.rate(now);
            let info = state
                .sub(&name)
                .map(|s| stats::subscription_info(s, &topic, &state.logs, publish_rate, now))
                .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))?;
            drop(state);
            reg.subs.insert(name, cell);
            info
        };
        let mut events = Vec::new();
        if created_topic {
            events.push(EngineEvent::TopicCreated { topic: topic.clone() });
        }
        events.push(EngineEvent::SubscriptionCreated { subscription: info.name.clone(), topic });
        self.emit(events);
        Ok(info)
    }

    /// Deletes a subscription; its push consumers' streams end.
    pub fn delete_subscription(&self, name: &Name) -> Result<(), EngineError> {
        let cell = {
            let mut reg = self.registry_mut();
            let cell = reg.subs.remove(name).ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))?;
            let durable = lock(&cell.state).sub(name).is_some_and(|s| s.journal.is_some());
            if let Some(store) = &self.inner.store
                && durable
            {
                if let Err(e) = store.record(&MetaOp::DeleteSubscription { name: name.clone() }) {
                    reg.subs.insert(name.clone(), cell);
                    return Err(e.into());
                }
                store.mark_removable(store.subscription_dir(name));
            }
            cell
        };
        {
            let mut state = lock(&cell.state);
            if let Some(store) = &self.inner.store
                && let Err(e) = store.remove_subscription_files(name)
            {
                tracing::warn!("{e}");
            }
            state.subs.retain(|s| s.name() != name);
            state.refresh_push_flag();
            // Interest: what only it still held goes now.
            let mut effects = Effects::default();
            state.trim_all_settled(&mut effects);
            drop(state);
            self.apply(effects);
        }
        cell.notify.notify_waiters();
        self.forget_push(name);
        self.emit(vec![EngineEvent::SubscriptionDeleted { subscription: name.clone() }]);
        Ok(())
    }

    pub(super) fn sub_cell(&self, name: &Name) -> Result<Arc<TopicCell>, EngineError> {
        self.registry().subs.get(name).cloned().ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))
    }

    /// Runs `f` on a subscription under its topic's lock, after its due timers, then carries out effects
    /// and pushes whatever the operation made deliverable.
    pub(super) fn with_sub<R>(
        &self,
        name: &Name,
        f: impl FnOnce(&mut SubState, &Ctx<'_>, &mut Effects) -> Result<R, EngineError>,
    ) -> Result<R, EngineError> {
        let (result, pending) = self.with_sub_deferred(name, f)?;
        pending.wait()?;
        Ok(result)
    }

    /// [`Engine::with_sub`] that returns the syncs the change still owes instead of waiting for them:
    /// the change is applied (and written) now, in the caller's order; the caller reports it durable
    /// once [`PendingSync::wait`] returned. Many callers waiting at once share one fdatasync.
    pub(super) fn with_sub_deferred<R>(
        &self,
        name: &Name,
        f: impl FnOnce(&mut SubState, &Ctx<'_>, &mut Effects) -> Result<R, EngineError>,
    ) -> Result<(R, PendingSync), EngineError> {
        let cell = self.sub_cell(name)?;
        let now = self.now();
        let mut effects = Effects::default();
        let result = {
            let mut guard = lock(&cell.state);
            let state = &mut *guard;
            let ctx = Ctx { topic: &state.config.name, logs: &state.logs, now };
            let sub = state
                .subs
                .iter_mut()
                .find(|s| s.name() == name)
                .ok_or_else(|| EngineError::NoSuchSubscription(name.clone()))?;
            if sub.next_timer().is_some_and(|t| t <= now) {
                sub.run_timers(&ctx, &mut effects);
            }
            sub.expire_unacked(&ctx, &mut effects);
            let result = f(sub, &ctx, &mut effects);
            sub.skip_uncovered(ctx.topic, ctx.logs);
            sub.dispatch_push(&ctx, &mut effects);
            state.refresh_push_flag();
            state.trim_all_settled(&mut effects);
            let persisted = state.persist_subs();
            result.and_then(|r| persisted.map(|waits| (r, waits)))
        };
        if effects.wake {
            cell.notify.notify_waiters();
        }
        self.apply(effects);
        let (result, waits) = result?;
        Ok((result, PendingSync(waits)))
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
            let mut effects = Effects::default();
            let mut state = lock(&cell.state);
            // Metrics reflect due timers (expired leases, released backoffs) even between ticks.
            state.run_timers(now, &mut effects);
            let _ = state.persist_subs();
            let rate = state.publish_rate.rate(now);
            out.extend(
                state.subs.iter().map(|s| stats::subscription_info(s, &cell.name, &state.logs, rate, now)),
            );
            drop(state);
            self.apply(effects);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        for info in &mut out {
            self.fill_push(&info.name, info.push.as_mut());
        }
        out
    }

    /// One subscription's metrics.
    pub fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, EngineError> {
        let cell = self.sub_cell(name)?;
        let rate = lock(&cell.state).publish_rate.rate(self.now());
        let mut info = self.with_sub(name, |s, ctx, _| {
            Ok(stats::subscription_info(s, ctx.topic, ctx.logs, rate, ctx.now))
        })?;
        self.fill_push(name, info.push.as_mut());
        Ok(info)
    }

    /// Per-message ack state from the ack floor (or `from`) up, at most `limit` messages (in each
    /// partition).
    pub fn peek(&self, name: &Name, from: u64, limit: usize) -> Result<PeekReport, EngineError> {
        let mut report =
            self.with_sub(name, |s, ctx, _| Ok(stats::peek(s, ctx.topic, ctx.logs, from, limit)))?;
        self.fill_push(name, report.push.as_mut());
        Ok(report)
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
            if let (Some(prefetch), Some(state)) = (opts.prefetch, s.consumers.get_mut(c)) {
                state.prefetch = prefetch.max(1);
            }
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
            Some(w) => Some(tokio::time::Instant::now().checked_add(w).ok_or(EngineError::WaitTooLong(w))?),
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
        self.attach_within(sub, opts, None)
    }

    /// [`Engine::attach`] that also stops pushing while `budget` is at its cap (a server's cap on what
    /// one stream of a connection that does not read may keep in memory). Each delivery's size is
    /// counted in the budget when it is pushed; whoever receives it gives the bytes back with
    /// [`ByteBudget::release`] once it no longer holds the message.
    pub fn attach_within(
        &self,
        sub: &Name,
        opts: AttachOptions,
        budget: Option<Arc<ByteBudget>>,
    ) -> Result<PushConsumer, EngineError> {
        let id: ConsumerId = match opts.consumer {
            Some(id) => Arc::from(id.as_str()),
            None => {
                Arc::from(format!("push-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed)).as_str())
            }
        };
        let starved = Arc::new(AtomicBool::new(false));
        let notes = Arc::new(NoteQueue::default());
        let (tx, rx) = {
            let id = id.clone();
            let starved = starved.clone();
            let budget = budget.clone();
            let notes = notes.clone();
            let mut channel = None;
            self.with_sub(sub, |s, ctx, effects| {
                let mut prefetch = opts.prefetch.unwrap_or(s.config.max_in_flight).max(1);
                // Credit beyond the total would never be used.
                if let Some(limit) = opts.limit {
                    prefetch = prefetch.min(u32::try_from(limit.max(1)).unwrap_or(u32::MAX));
                }
                let (tx, rx) = mpsc::channel(usize::try_from(prefetch).unwrap_or(1024));
                let sink = PushSink { tx: tx.clone(), starved, budget, notes };
                s.attach_push(id, prefetch, opts.limit, sink, ctx.now, effects)?;
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
            budget,
            notes,
            received: 0,
            stashed: None,
        })
    }

    /// Detaches a consumer; its in-flight messages become available to the others (T7).
    pub fn detach(&self, sub: &Name, consumer: &str) {
        self.detach_returning(sub, consumer, &[]);
    }

    /// Detaches a consumer whose reader never saw `unseen` (deliveries still queued for it): those come
    /// back without counting as an attempt; what it did see and did not settle fails as a detach.
    pub fn detach_returning(&self, sub: &Name, consumer: &str, unseen: &[AckRef]) {
        let id: ConsumerId = Arc::from(consumer);
        // A subscription that is already gone has nothing left to requeue.
        let _ = self.with_sub(sub, |s, ctx, effects| {
            for r in unseen {
                s.return_unseen(pos_key(r.partition, r.seq), r.lease, effects);
            }
            Ok(s.detach(&id, ctx, effects))
        });
    }

    /// Gives a delivery back unseen (T7 without a failure): its reader never looked at it, so it is
    /// available again at once and the attempt it was leased under is not counted. A lease that is no
    /// longer current is left alone (it was settled, expired or re-leased meanwhile).
    pub fn release(&self, sub: &Name, r: AckRef) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx, r.partition)?;
            s.return_unseen(pos_key(r.partition, r.seq), r.lease, effects);
            Ok(())
        })
    }

    /// Runs push dispatch for a subscription (a push consumer made room).
    pub fn dispatch(&self, sub: &Name) {
        let _ = self.with_sub(sub, |_, _, _| Ok(()));
    }

    /// Acks one delivery (T3).
    pub fn ack(&self, sub: &Name, r: AckRef) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx, r.partition)?;
            // Settling frees credit that a waiting fetch may be blocked on.
            effects.wake = true;
            s.ack(&r, ctx.now)
        })
    }

    /// [`Engine::ack`] that returns before the ack is on disk, with what to wait for before saying it
    /// is (a server answers the ack once that returned, while it goes on with the next request).
    pub fn ack_deferred(&self, sub: &Name, r: AckRef) -> Result<PendingSync, EngineError> {
        self.with_sub_deferred(sub, |s, ctx, effects| {
            check_partition(ctx, r.partition)?;
            effects.wake = true;
            s.ack(&r, ctx.now)
        })
        .map(|((), pending)| pending)
    }

    /// [`Engine::ack_deferred`] for a run of acks of one subscription, applied in order under one lock
    /// (one dispatch of what they free, one journal write): each ack's own outcome, and the sync they
    /// owe together. An ack that is refused (a stale lease) does not stop the others.
    pub fn ack_batch_deferred(
        &self,
        sub: &Name,
        refs: &[AckRef],
    ) -> Result<(Vec<Result<(), EngineError>>, PendingSync), EngineError> {
        self.with_sub_deferred(sub, |s, ctx, effects| {
            effects.wake = true;
            Ok(refs
                .iter()
                .map(|r| {
                    check_partition(ctx, r.partition)?;
                    s.ack(r, ctx.now)
                })
                .collect())
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
            check_partition(ctx, partition)?;
            effects.wake = true;
            s.ack_cumulative(&id, partition, seq, ctx.now)
        })
    }

    /// Gives a delivery back, to be redelivered after `delay` or the backoff (T5).
    pub fn nack(&self, sub: &Name, r: AckRef, delay: Option<Duration>) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx, r.partition)?;
            s.nack(&r, delay, ctx, effects)
        })
    }

    /// Extends a lease to now + `by`, capped by `max_lease` (T4); returns the deadline in force.
    pub fn extend(&self, sub: &Name, r: AckRef, by: Duration) -> Result<Timestamp, EngineError> {
        self.with_sub(sub, |s, ctx, _| {
            check_partition(ctx, r.partition)?;
            s.extend(&r, by, ctx.now)
        })
    }

    /// Gives up on a delivery for good: dead-letter or terminate (T9).
    pub fn term(&self, sub: &Name, r: AckRef, reason: &str) -> Result<(), EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            check_partition(ctx, r.partition)?;
            effects.wake = true;
            s.term(&r, reason, ctx, effects)
        })
    }

    /// Moves a subscription (T11); returns the next seq it will deliver (in partition 0, or in the
    /// partition a `Seq` target names). `Start`, `End` and `Time` move every partition; `Seq` moves
    /// only its own partition, as a Kafka seek does.
    pub fn seek(&self, sub: &Name, target: SeekTarget) -> Result<u64, EngineError> {
        Ok(self.seek_partitions(sub, target)?.first().map_or(0, |(_, next)| *next))
    }

    /// [`Engine::seek`] that returns where each partition it moved goes next: `(partition, seq)`.
    pub fn seek_partitions(&self, sub: &Name, target: SeekTarget) -> Result<Vec<(u32, u64)>, EngineError> {
        self.with_sub(sub, |s, ctx, effects| {
            let all = |f: &dyn Fn(&super::log::Log) -> u64| -> Vec<(u32, u64)> {
                ctx.logs
                    .iter()
                    .enumerate()
                    .map(|(p, log)| (u32::try_from(p).unwrap_or(u32::MAX), f(log)))
                    .collect()
            };
            let targets = match target {
                SeekTarget::Start => all(&|log| log.first_seq()),
                SeekTarget::End => all(&|log| log.head_seq() + 1),
                SeekTarget::Seq { partition, seq } => {
                    check_partition(ctx, partition)?;
                    let log = ctx.log(partition).ok_or_else(|| EngineError::NoSuchPartition {
                        topic: ctx.topic.clone(),
                        partition,
                    })?;
                    vec![(partition, seq.clamp(log.first_seq(), log.head_seq() + 1))]
                }
                SeekTarget::Each(seq) => all(&|log| seq.clamp(log.first_seq(), log.head_seq() + 1)),
                SeekTarget::Time(t) => all(&|log| log.seq_at_time(t)),
            };
            s.seek(&targets, effects);
            Ok(targets)
        })
    }
}

fn check_partition(ctx: &Ctx<'_>, partition: u32) -> Result<(), EngineError> {
    if (partition as usize) < ctx.logs.len() {
        Ok(())
    } else {
        Err(EngineError::NoSuchPartition { topic: ctx.topic.clone(), partition })
    }
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
