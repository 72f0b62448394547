//! Publishing: routing a subject to its topic (auto-creating it), appending under the topic lock, and
//! carrying out what the append left to do (taps, events, dead letters) after the lock is released.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::subscription::Effects;
use super::topic::{Committed, TopicCell};
use super::{
    Engine, EngineError, EngineEvent, Message, MessageExtra, Name, PublishReceipt, PublishRequest, Timestamp,
    TopicInfo, lock,
};
use crate::store::SyncGate;
use crate::store::journal::{SubOp, split_key};

impl Engine {
    /// Finds (or auto-creates) the topic that captures `subject`, saying whether this call created it.
    /// Reserved `$` subjects have no topic.
    pub(super) fn route(&self, subject: &Name) -> Result<Option<(Arc<TopicCell>, bool)>, EngineError> {
        if subject.is_reserved() {
            return Ok(None);
        }
        if let Some(cell) = self.registry().route(subject) {
            return Ok(Some((cell, false)));
        }
        if !self.inner.config.auto_create {
            return Ok(None);
        }
        let now = self.now();
        let created = {
            let mut reg = self.registry_mut();
            // Another publisher may have created it between the two locks.
            if let Some(cell) = reg.route(subject) {
                return Ok(Some((cell, false)));
            }
            let config = self.auto_topic_config(subject);
            self.insert_topic(&mut reg, config, now)?;
            reg.route(subject)
        };
        self.emit(vec![EngineEvent::TopicCreated { topic: subject.clone() }]);
        Ok(created.map(|cell| (cell, true)))
    }

    /// The topic named `name`, for a reader that names it (an HTTP event stream): when there is none, no
    /// topic captures the name and auto-create is on, the topic a publish to `name` would make is made
    /// now, as `sub --from` does, so a reader may start before the first publish. A name inside
    /// another topic's subjects stays `NoSuchTopic`: it is a subject of that topic, not a topic.
    pub fn topic_info_or_create(&self, name: &Name) -> Result<TopicInfo, EngineError> {
        match self.topic_info(name) {
            Err(EngineError::NoSuchTopic(_)) if self.registry().route(name).is_none() => {
                match self.route(name)? {
                    Some((cell, _)) if cell.name == *name => self.topic_info(name),
                    _ => Err(EngineError::NoSuchTopic(name.clone())),
                }
            }
            other => other,
        }
    }

    /// Appends a message to the topic that captures its subject and offers it to matching taps.
    pub fn publish(&self, req: PublishRequest) -> Result<PublishReceipt, EngineError> {
        let mut receipts = self.publish_batch_deferred(vec![req]).wait().map_err(EngineError::unbatched)?;
        receipts.pop().ok_or_else(|| EngineError::InvalidConfig("publish produced no receipt".into()))
    }

    /// Publishes several messages in order; consecutive messages to one subject share one lock
    /// acquisition. Stops at the first failure and returns it; messages before it stay published.
    /// A failure is `EngineError::Batch` naming the index of the message that failed.
    pub fn publish_batch(&self, reqs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, EngineError> {
        self.publish_batch_deferred(reqs).wait()
    }

    /// [`Engine::publish_batch`] that returns before the disk confirmed the messages: they are appended,
    /// written and visible now, in the caller's order, and the publish may be reported once
    /// [`PendingPublish::wait`] (or `wait_async`) returned. A server applies a connection's batches
    /// one after another this way and answers each when its sync is done, so batches in flight together
    /// share one fdatasync instead of each waiting for its own before the next is read.
    pub fn publish_batch_deferred(&self, reqs: Vec<PublishRequest>) -> PendingPublish {
        let mut runs = Vec::new();
        let outcome = self.publish_run(reqs, &mut runs);
        PendingPublish { outcome, runs }
    }

    /// Publishes in order, leaving each run's syncs in `runs`; a failure carries the index of the
    /// message that failed.
    fn publish_run(
        &self,
        reqs: Vec<PublishRequest>,
        runs: &mut Vec<RunSync>,
    ) -> Result<Vec<PublishReceipt>, (usize, EngineError)> {
        let now = self.now();
        let taps_listening = self.inner.tap_count.load(Ordering::Acquire) > 0;
        let mut receipts = Vec::with_capacity(reqs.len());
        let mut iter = reqs.into_iter().peekable();
        while let Some(first) = iter.next() {
            let index = receipts.len();
            let Some((cell, created)) = self.route(&first.subject).map_err(|e| (index, e))? else {
                receipts.push(self.publish_unstored(first, now).map_err(|e| (index, e))?);
                continue;
            };
            let subject = first.subject.clone();
            let mut effects = Effects::default();
            let mut for_taps = Vec::new();
            let mut failure = None;
            let run_start = receipts.len();
            let waits = {
                let mut state = lock(&cell.state);
                let heads_before = state.heads();
                state.begin_batch();
                let mut next = Some(first);
                while let Some(req) = next.take() {
                    match state.append(&req, now, &mut effects) {
                        Ok((partition, seq, duplicate)) => {
                            if taps_listening && !duplicate {
                                let time = state
                                    .log(partition)
                                    .and_then(|log| log.get(seq))
                                    .map_or(now, |r| r.publish_time);
                                for_taps.push(stored_message(&cell.name, partition, seq, time, req));
                            }
                            receipts.push(PublishReceipt {
                                topic: None,
                                partition,
                                seq,
                                taps: 0,
                                duplicate,
                                unrouted: false,
                            });
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    next = iter.next_if(|r| r.subject == subject);
                }
                state.end_batch(now, &mut effects);
                let mut waits = Vec::new();
                match state.commit_appends(&heads_before) {
                    Ok(Committed::Durable) => {}
                    Ok(Committed::Wait(syncs)) => waits.extend(syncs),
                    Ok(Committed::Unconfirmed(e)) => failure = Some(e),
                    Err(e) => {
                        // Nothing of this run was kept: report the first message of it as failed.
                        receipts.truncate(run_start);
                        for_taps.clear();
                        failure = Some(e);
                    }
                }
                let appended = (receipts.len() - run_start) as u64;
                state.publish_rate.record(now, appended);
                if state.has_push {
                    state.dispatch_push(now, &mut effects);
                }
                if let Ok(subs) = state.persist_subs() {
                    waits.extend(subs);
                }
                waits
            };
            if !waits.is_empty() {
                runs.push(RunSync { start: run_start, waits });
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
                if created && receipts.len() == run_start {
                    // The topic was made for this publish and nothing reached it: do not leave it behind.
                    if let Err(undo) = self.delete_topic(&cell.name) {
                        tracing::warn!("topic {} auto-created for a failed publish stays: {undo}", cell.name);
                    }
                }
                return Err((receipts.len(), e));
            }
        }
        Ok(receipts)
    }

    /// A message no topic stores: it reaches taps only, or counts as unroutable.
    pub(super) fn publish_unstored(
        &self,
        req: PublishRequest,
        now: Timestamp,
    ) -> Result<PublishReceipt, EngineError> {
        let subject = req.subject.clone();
        let taps = self.offer_taps(|| {
            let extra = MessageExtra::pack(req.key.clone(), req.msg_id.clone(), req.headers.clone());
            Message::new(req.subject.clone(), 0, 0, now, req.subject.clone(), extra, req.payload.clone())
        });
        if taps == 0 {
            self.inner.unroutable.fetch_add(1, Ordering::Relaxed);
            if !subject.is_reserved() {
                return Err(EngineError::Unroutable(subject));
            }
        }
        Ok(PublishReceipt { taps, ..PublishReceipt::default() })
    }

    pub(super) fn offer_taps(&self, message: impl FnOnce() -> Message) -> u32 {
        if self.inner.tap_count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let message = message();
        lock(&self.inner.taps).deliver(&message)
    }

    pub(super) fn wake(&self, cell: &TopicCell) {
        if cell.waiters.load(Ordering::SeqCst) > 0 {
            cell.notify.notify_waiters();
        }
    }

    /// Carries out what an operation under a topic lock left to do.
    pub(super) fn apply(&self, effects: Effects) {
        let Effects { events, dead_letters, wake: _, closed } = effects;
        for dead in dead_letters {
            match self.append_to(&dead.topic, dead.copy) {
                Ok(()) => {
                    // The copy is kept: now the source may count as settled on disk too.
                    let seq = dead.seq;
                    let _ = self.with_sub(&dead.subscription, |s, _, _| {
                        s.note(SubOp::Settle { seq });
                        Ok(())
                    });
                }
                Err(e) => {
                    self.dead_letter_failed(&dead.subscription, dead.seq, dead.attempt, &dead.topic, &e)
                }
            }
        }
        for (sub, consumer) in closed {
            self.detach(&sub, &consumer);
        }
        self.emit(events);
    }

    /// Appends straight to the topic named `topic` (created when missing and auto-create is on), without
    /// routing by subject.
    fn append_to(&self, topic: &Name, req: PublishRequest) -> Result<(), EngineError> {
        let now = self.now();
        let existing = self.registry().topics.get(topic).cloned();
        let cell = match existing {
            Some(cell) => cell,
            None if self.inner.config.auto_create => {
                let config = self.auto_topic_config(topic);
                match self.create_topic(config) {
                    Ok(_) | Err(EngineError::TopicExists(_)) => {}
                    Err(e) => return Err(e),
                }
                self.registry()
                    .topics
                    .get(topic)
                    .cloned()
                    .ok_or_else(|| EngineError::NoSuchTopic(topic.clone()))?
            }
            None => return Err(EngineError::NoSuchTopic(topic.clone())),
        };
        let mut effects = Effects::default();
        let (appended, waits) = {
            let mut state = lock(&cell.state);
            let heads_before = state.heads();
            let appended = state.append(&req, now, &mut effects).and_then(|a| {
                let sync = match state.commit_appends(&heads_before)? {
                    Committed::Durable => Vec::new(),
                    Committed::Wait(syncs) => syncs,
                    Committed::Unconfirmed(e) => return Err(e),
                };
                Ok((a, sync))
            });
            if state.has_push {
                state.dispatch_push(now, &mut effects);
            }
            let mut waits: Vec<_> = state.persist_subs().unwrap_or_default();
            let appended = appended.map(|((p, seq, dup), sync)| {
                waits.extend(sync);
                let time = state.log(p).and_then(|log| log.get(seq)).map_or(now, |r| r.publish_time);
                (p, seq, dup, time)
            });
            (appended, waits)
        };
        super::wait_all(waits)?;
        self.wake(&cell);
        self.apply(effects);
        let (p, seq, duplicate, time) = appended?;
        if !duplicate {
            self.offer_taps(|| stored_message(&cell.name, p, seq, time, req));
        }
        Ok(())
    }

    /// The dead-letter copy could not be kept: the message stays settled (it is not redelivered), and is
    /// counted and announced as terminated instead, with the reason, rather than lost silently.
    fn dead_letter_failed(&self, sub: &Name, seq: u64, attempt: u32, topic: &Name, error: &EngineError) {
        tracing::warn!(subscription = %sub, seq, dead_letter = %topic, %error, "dead-letter copy could not be appended");
        let _ = self.with_sub(sub, |s, _, effects| {
            s.counters.dead_lettered = s.counters.dead_lettered.saturating_sub(1);
            s.counters.terminated += 1;
            if let Some(entry) = s.entries.get_mut(&seq) {
                entry.state = super::DeliveryState::Terminated;
            }
            s.note(SubOp::Settle { seq });
            effects.events.push(EngineEvent::Terminated {
                subscription: sub.clone(),
                seq: split_key(seq).1,
                attempt,
                reason: "dead_letter_failed",
            });
            Ok(())
        });
    }

    /// Publishes engine events to taps listening on `$sys.…`.
    pub(super) fn emit(&self, events: Vec<EngineEvent>) {
        if events.is_empty() || self.inner.tap_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = self.now();
        let mut taps = lock(&self.inner.taps);
        for event in events {
            // A very long subscription or topic name can make the event subject too long; such events
            // go to a shorter subject and keep the full name in the body.
            let Ok(subject) =
                Name::system(&event.subject()).or_else(|_| Name::system(event.fallback_subject()))
            else {
                continue;
            };
            let payload = Bytes::from(event.payload().to_string());
            let message = Message::new(subject.clone(), 0, 0, now, subject, None, payload);
            taps.deliver(&message);
        }
    }
}

fn stored_message(topic: &Name, partition: u32, seq: u64, time: Timestamp, req: PublishRequest) -> Message {
    let extra = MessageExtra::pack(req.key, req.msg_id, req.headers);
    Message::new(topic.clone(), partition, seq, time, req.subject, extra, req.payload)
}

/// The syncs one run of a batch (consecutive messages to one topic) still owes.
struct RunSync {
    /// Index in the batch of the run's first message.
    start: usize,
    waits: Vec<(Arc<SyncGate>, u64)>,
}

/// A batch that is appended and visible but not yet confirmed by the disk
/// ([`Engine::publish_batch_deferred`]).
#[must_use = "a deferred publish is reported only once its sync is waited for"]
pub struct PendingPublish {
    outcome: Result<Vec<PublishReceipt>, (usize, EngineError)>,
    runs: Vec<RunSync>,
}

impl PendingPublish {
    /// Whether the outcome is final already (memory storage, a durability that does not sync on
    /// publish, or nothing appended).
    pub fn is_settled(&self) -> bool {
        self.runs.is_empty()
    }

    /// Blocks until every run is on disk, then gives the receipts, or the first failure as
    /// `EngineError::Batch`: a run the disk did not confirm fails at its first message (the messages
    /// before it were published; the ones from it on are written and visible, but unconfirmed).
    pub fn wait(self) -> Result<Vec<PublishReceipt>, EngineError> {
        let mut unconfirmed = None;
        for run in self.runs {
            if let Err(e) = super::wait_all(run.waits) {
                unconfirmed = Some((run.start, e));
                break;
            }
        }
        Self::outcome(self.outcome, unconfirmed)
    }

    /// [`PendingPublish::wait`] on an async task: the fdatasync runs on the blocking pool once for all
    /// the tasks waiting on the same file. The syncs of different files (the partitions and topics a
    /// batch wrote) all start at once, so a batch waits for the slowest of them rather than their sum.
    pub async fn wait_async(self) -> Result<Vec<PublishReceipt>, EngineError> {
        let syncs = self.runs.iter().map(|run| {
            futures_util::future::join_all(
                run.waits.iter().map(|(gate, mark)| gate.clone().wait_async(*mark)),
            )
        });
        let outcomes = futures_util::future::join_all(syncs).await;
        let unconfirmed = self.runs.iter().zip(outcomes).find_map(|(run, results)| {
            results.into_iter().find_map(Result::err).map(|e| (run.start, e.into()))
        });
        Self::outcome(self.outcome, unconfirmed)
    }

    fn outcome(
        outcome: Result<Vec<PublishReceipt>, (usize, EngineError)>,
        unconfirmed: Option<(usize, EngineError)>,
    ) -> Result<Vec<PublishReceipt>, EngineError> {
        let failure = match (outcome, unconfirmed) {
            (Ok(receipts), None) => return Ok(receipts),
            // The earlier failure is the one to report: everything before it was published.
            (Err((index, e)), Some((start, sync))) => {
                if start < index {
                    (start, sync)
                } else {
                    (index, e)
                }
            }
            (Err(failure), None) | (Ok(_), Some(failure)) => failure,
        };
        let (index, source) = failure;
        Err(EngineError::Batch { index, source: Box::new(source) })
    }
}
