//! One subscription's delivery state: the cursor, the ack floor and a sparse map of the messages between
//! them that are not simply acked. This is the state machine of SEMANTICS.md §9.4.
//!
//! Messages above `delivered_seq` have no entry (they are pending: AVAILABLE with attempt 0). Seqs in
//! `(ack_floor, delivered_seq]` without an entry are terminal (acked, filtered, expired). So the memory a
//! subscription holds is proportional to what is unsettled, never to the length of the topic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::clock::Timestamp;
use super::config::{AckMode, Backoff, SubscriptionConfig};
use super::consumer::{ConsumerState, PushSink};
use super::error::EngineError;
use super::event::EngineEvent;
use super::log::{Log, Record, to_message};
use super::message::{AckRef, ConsumerId, Delivery, PublishRequest};
use super::name::Name;
use super::stats::{RateMeter, SubCounters};

/// The state of one message in one subscription, as `peek` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Deliverable now (attempt 0 = never delivered, i.e. pending).
    Available,
    /// Leased to a consumer.
    InFlight,
    /// Waiting for its backoff to pass.
    Delayed,
    /// Settled by an ack.
    Acked,
    /// Skipped because the subscription's filter does not match it.
    Filtered,
    /// Copied to the dead-letter topic.
    DeadLettered,
    /// Given up on without a dead-letter topic.
    Terminated,
    /// Removed by retention before it was settled.
    Expired,
}

impl DeliveryState {
    /// Whether the message is settled for this subscription.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            DeliveryState::Available | DeliveryState::InFlight | DeliveryState::Delayed
        )
    }
}

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

/// Why a delivery failed (the events that call `failure()` in SEMANTICS.md).
#[derive(Debug, Clone, Copy)]
enum Failure {
    Nack(Option<Duration>),
    Timeout,
    Detach,
}

/// Side effects an operation under the topic lock leaves for the engine to carry out after unlocking:
/// publishing to other topics (dead letters) and to taps (events) must not happen under this lock.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub events: Vec<EngineEvent>,
    pub dead_letters: Vec<(Name, PublishRequest)>,
    /// Something became deliverable: wake long-polling fetches.
    pub wake: bool,
    /// Consumers whose push channel closed; detached by the engine afterwards.
    pub closed: Vec<(Name, ConsumerId)>,
}

/// What an operation needs to know about the topic it runs in.
pub(crate) struct Ctx<'a> {
    pub topic: &'a Name,
    pub log: &'a Log,
    pub now: Timestamp,
}

/// A subscription and all its delivery state.
#[derive(Debug)]
pub(crate) struct SubState {
    pub config: SubscriptionConfig,
    pub created: Timestamp,
    pub delivered_seq: u64,
    pub ack_floor: u64,
    pub entries: BTreeMap<u64, Entry>,
    /// AVAILABLE messages with attempt ≥ 1, redelivered before new ones.
    pub ready: BTreeSet<u64>,
    /// DELAYED messages by `not_before`.
    pub delayed: BTreeSet<(Timestamp, u64)>,
    /// IN_FLIGHT messages by deadline.
    pub deadlines: BTreeSet<(Timestamp, u64)>,
    pub consumers: Vec<ConsumerState>,
    pub in_flight: u32,
    pub in_flight_bytes: u64,
    pub counters: SubCounters,
    pub deliver_rate: RateMeter,
    pub ack_rate: RateMeter,
    /// Last time a consumer did anything; ephemeral subscriptions expire from here.
    pub last_active: Timestamp,
    next_lease: u64,
    round_robin: usize,
    jitter_seed: u64,
}

impl SubState {
    /// A subscription whose first delivery will be `start_seq`.
    pub fn new(config: SubscriptionConfig, start_seq: u64, now: Timestamp) -> Self {
        let floor = start_seq.saturating_sub(1);
        let jitter_seed = config
            .name
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        SubState {
            config,
            created: now,
            delivered_seq: floor,
            ack_floor: floor,
            entries: BTreeMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            consumers: Vec::new(),
            in_flight: 0,
            in_flight_bytes: 0,
            counters: SubCounters::default(),
            deliver_rate: RateMeter::default(),
            ack_rate: RateMeter::default(),
            last_active: now,
            next_lease: 1,
            round_robin: 0,
            jitter_seed,
        }
    }

    pub fn name(&self) -> &Name {
        &self.config.name
    }

    /// Whether the filter lets a message with this subject in.
    pub fn covers(&self, subject: &str) -> bool {
        self.config.filter.is_empty() || self.config.filter.iter().any(|p| p.matches(subject))
    }

    fn covers_record(&self, topic: &Name, record: &Record) -> bool {
        self.config.filter.is_empty() || self.covers(record.subject_or(topic).as_str())
    }

    /// Whether anything could be dispatched right now, credit permitting.
    pub fn has_deliverable(&self, log: &Log) -> bool {
        !self.ready.is_empty() || self.delivered_seq < log.head_seq()
    }

    /// The consumer's index, registering it (as a pull consumer) on first sight.
    pub fn consumer_index(&mut self, id: &str, now: Timestamp, effects: &mut Effects) -> usize {
        if let Some(i) = self.consumers.iter().position(|c| &*c.id == id) {
            return i;
        }
        let prefetch = self.config.max_in_flight;
        let id: ConsumerId = id.into();
        self.consumers
            .push(ConsumerState::new(id.clone(), prefetch, now, None));
        effects.events.push(EngineEvent::ConsumerAttached {
            subscription: self.config.name.clone(),
            consumer: id,
        });
        self.consumers.len() - 1
    }

    /// Appends deliveries for consumer `c` to `out` until `max_msgs` are there, credit runs out or the
    /// byte budget is spent (the first message is always allowed).
    pub fn fill(
        &mut self,
        c: usize,
        ctx: &Ctx<'_>,
        max_msgs: usize,
        max_bytes: u64,
        out: &mut Vec<Delivery>,
    ) {
        let simple =
            self.config.ack == AckMode::None && self.ready.is_empty() && self.config.filter.is_empty();
        if simple && max_bytes == u64::MAX {
            // The common firehose case: no leases, no filter, no redeliveries — copy a run of the log.
            let from = self.delivered_seq.max(ctx.log.first_seq().saturating_sub(1)) + 1;
            let room = max_msgs.saturating_sub(out.len());
            out.reserve(room.min(4096));
            let before = out.len();
            for (seq, record) in ctx.log.iter_from(from).take(room) {
                out.push(Delivery {
                    message: to_message(ctx.topic, 0, seq, record),
                    attempt: 1,
                    lease: None,
                    deadline: None,
                });
                self.delivered_seq = seq;
            }
            let n = (out.len() - before) as u64;
            if n > 0 {
                self.counters.delivered += n;
                self.counters.acked += n;
                self.deliver_rate.record(ctx.now, n);
                if let Some(consumer) = self.consumers.get_mut(c) {
                    consumer.delivered += n;
                }
            }
            return;
        }
        let mut budget = max_bytes;
        while out.len() < max_msgs {
            let Some(d) = self.next_delivery(c, ctx, if out.is_empty() { u64::MAX } else { budget }) else {
                break;
            };
            budget = budget.saturating_sub(d.message.size() as u64);
            out.push(d);
        }
    }

    /// The next message for consumer `c`, if credit and the byte budget allow. Redeliveries go first.
    pub fn next_delivery(&mut self, c: usize, ctx: &Ctx<'_>, byte_budget: u64) -> Option<Delivery> {
        let explicit = self.config.ack != AckMode::None;
        if explicit {
            if self.in_flight >= self.config.max_in_flight {
                return None;
            }
            let consumer = self.consumers.get(c)?;
            if consumer.in_flight >= consumer.prefetch {
                return None;
            }
        }
        if let Some(&seq) = self.ready.first() {
            let record = ctx.log.get(seq)?;
            if !self.fits(record, byte_budget) {
                return None;
            }
            self.ready.remove(&seq);
            return Some(self.lease(c, seq, record, ctx));
        }
        let head = ctx.log.head_seq();
        while self.delivered_seq < head {
            let seq = self.delivered_seq + 1;
            let Some(record) = ctx.log.get(seq) else {
                // Below first_seq: retention removed it; the cursor jumps (counted when it was removed).
                self.delivered_seq = ctx.log.first_seq().saturating_sub(1).max(seq);
                continue;
            };
            if !self.covers_record(ctx.topic, record) {
                self.delivered_seq = seq;
                self.counters.filtered += 1;
                continue;
            }
            if !self.fits(record, byte_budget) {
                return None;
            }
            self.delivered_seq = seq;
            if explicit {
                return Some(self.lease(c, seq, record, ctx));
            }
            self.counters.delivered += 1;
            self.counters.acked += 1;
            self.deliver_rate.record(ctx.now, 1);
            if let Some(consumer) = self.consumers.get_mut(c) {
                consumer.delivered += 1;
                consumer.last_activity = ctx.now;
            }
            return Some(Delivery {
                message: to_message(ctx.topic, 0, seq, record),
                attempt: 1,
                lease: None,
                deadline: None,
            });
        }
        None
    }

    fn fits(&self, record: &Record, byte_budget: u64) -> bool {
        let size = record.size();
        let sub_limit = self.config.max_in_flight_bytes;
        let over_sub = sub_limit > 0 && self.in_flight > 0 && self.in_flight_bytes + size > sub_limit;
        // One message is always allowed so that an oversized message cannot wedge the subscription.
        !over_sub && (size <= byte_budget || byte_budget == u64::MAX)
    }

    /// T2: AVAILABLE → IN_FLIGHT for consumer `c`.
    fn lease(&mut self, c: usize, seq: u64, record: &Record, ctx: &Ctx<'_>) -> Delivery {
        let now = ctx.now;
        let lease = self.next_lease;
        self.next_lease += 1;
        let deadline = now.plus(self.config.ack_deadline);
        let consumer_id = self.consumers.get(c).map(|x| x.id.clone());
        let bytes = record.size();
        let entry = self.entries.entry(seq).or_insert_with(|| Entry {
            state: DeliveryState::Available,
            attempt: 0,
            consumer: None,
            lease: 0,
            deadline,
            lease_start: now,
            not_before: now,
            first_delivered: now,
            last_delivered: now,
            bytes,
        });
        entry.state = DeliveryState::InFlight;
        entry.attempt += 1;
        entry.consumer = consumer_id;
        entry.lease = lease;
        entry.deadline = deadline;
        entry.lease_start = now;
        entry.last_delivered = now;
        let attempt = entry.attempt;
        self.deadlines.insert((deadline, seq));
        self.in_flight += 1;
        self.in_flight_bytes += bytes;
        self.counters.delivered += 1;
        if attempt > 1 {
            self.counters.redeliveries += 1;
        }
        self.deliver_rate.record(now, 1);
        if let Some(consumer) = self.consumers.get_mut(c) {
            consumer.in_flight += 1;
            consumer.delivered += 1;
            consumer.last_activity = now;
        }
        Delivery {
            message: to_message(ctx.topic, 0, seq, record),
            attempt,
            lease: Some(AckRef {
                partition: 0,
                seq,
                lease,
            }),
            deadline: Some(deadline),
        }
    }

    /// Finds the in-flight entry an `AckRef` names. `Ok(None)` means "already settled, nothing to do".
    fn leased(&mut self, r: &AckRef) -> Result<Option<u64>, EngineError> {
        let seq = r.seq;
        if seq > self.delivered_seq {
            return Err(EngineError::NotDelivered {
                subscription: self.config.name.clone(),
                seq,
            });
        }
        match self.entries.get(&seq) {
            None => Ok(None),
            Some(e) if e.state.is_terminal() => Ok(None),
            Some(e) if e.state == DeliveryState::InFlight && e.lease == r.lease => Ok(Some(seq)),
            Some(_) if self.config.strict_leases => Err(EngineError::StaleLease {
                subscription: self.config.name.clone(),
                seq,
            }),
            // Lenient leases (NATS behaviour): an outdated lease still settles the message.
            Some(_) => Ok(Some(seq)),
        }
    }

    /// Takes an entry out of the in-flight accounting (it stays in `entries`).
    fn release(&mut self, seq: u64) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        match entry.state {
            DeliveryState::InFlight => {
                self.deadlines.remove(&(entry.deadline, seq));
                self.in_flight = self.in_flight.saturating_sub(1);
                self.in_flight_bytes = self.in_flight_bytes.saturating_sub(entry.bytes);
                if let Some(id) = &entry.consumer
                    && let Some(c) = self.consumers.iter_mut().find(|c| c.id == *id)
                {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
            }
            DeliveryState::Delayed => {
                self.delayed.remove(&(entry.not_before, seq));
            }
            DeliveryState::Available => {
                self.ready.remove(&seq);
            }
            _ => {}
        }
    }

    /// T3: ack one delivery.
    pub fn ack(&mut self, r: &AckRef, now: Timestamp) -> Result<(), EngineError> {
        let Some(seq) = self.leased(r)? else { return Ok(()) };
        self.settle_acked(seq, now);
        self.advance_floor();
        Ok(())
    }

    fn settle_acked(&mut self, seq: u64, now: Timestamp) {
        let consumer = self.entries.get(&seq).and_then(|e| e.consumer.clone());
        self.release(seq);
        self.entries.remove(&seq);
        self.counters.acked += 1;
        self.ack_rate.record(now, 1);
        self.last_active = now;
        if let Some(id) = consumer
            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == id)
        {
            c.acked += 1;
            c.last_activity = now;
        }
    }

    /// T3c: ack every in-flight message of `consumer` with seq ≤ `through`.
    pub fn ack_cumulative(
        &mut self,
        consumer: &ConsumerId,
        through: u64,
        now: Timestamp,
    ) -> Result<u64, EngineError> {
        if self.config.ack != AckMode::Cumulative {
            return Err(EngineError::WrongAckMode {
                subscription: self.config.name.clone(),
                mode: format!("{:?}", self.config.ack).to_lowercase(),
                what: "a cumulative ack",
                needs: "cumulative",
            });
        }
        let seqs: Vec<u64> = self
            .entries
            .range(..=through)
            .filter(|(_, e)| e.state == DeliveryState::InFlight && e.consumer.as_ref() == Some(consumer))
            .map(|(s, _)| *s)
            .collect();
        for &seq in &seqs {
            self.settle_acked(seq, now);
        }
        self.advance_floor();
        Ok(seqs.len() as u64)
    }

    /// T5: a consumer gives a message back, optionally asking for a delay.
    pub fn nack(
        &mut self,
        r: &AckRef,
        delay: Option<Duration>,
        ctx: &Ctx<'_>,
        effects: &mut Effects,
    ) -> Result<(), EngineError> {
        let Some(seq) = self.leased(r)? else { return Ok(()) };
        self.counters.nacked += 1;
        self.release(seq);
        self.failure(seq, Failure::Nack(delay), ctx, effects);
        self.advance_floor();
        effects.wake = true;
        Ok(())
    }

    /// T4: push the deadline of an in-flight message out to `now + by`, capped by `max_lease`.
    /// Returns the deadline now in force.
    pub fn extend(&mut self, r: &AckRef, by: Duration, now: Timestamp) -> Result<Timestamp, EngineError> {
        let Some(seq) = self.leased(r)? else {
            return Err(EngineError::StaleLease {
                subscription: self.config.name.clone(),
                seq: r.seq,
            });
        };
        let cap = self.config.max_lease;
        let Some(entry) = self.entries.get_mut(&seq) else {
            return Err(EngineError::StaleLease {
                subscription: self.config.name.clone(),
                seq,
            });
        };
        if entry.state != DeliveryState::InFlight {
            return Err(EngineError::StaleLease {
                subscription: self.config.name.clone(),
                seq,
            });
        }
        let wanted = now.plus(by);
        let limit = entry.lease_start.plus(cap);
        let deadline = wanted.min(limit).max(entry.deadline);
        self.deadlines.remove(&(entry.deadline, seq));
        entry.deadline = deadline;
        self.deadlines.insert((deadline, seq));
        Ok(deadline)
    }

    /// T9: the consumer gives up on a message for good.
    pub fn term(
        &mut self,
        r: &AckRef,
        reason: &str,
        ctx: &Ctx<'_>,
        effects: &mut Effects,
    ) -> Result<(), EngineError> {
        let Some(seq) = self.leased(r)? else { return Ok(()) };
        self.release(seq);
        self.give_up(seq, "term", Some(reason), ctx, effects);
        self.advance_floor();
        Ok(())
    }

    /// `failure()` of SEMANTICS.md: dead-letter or terminate at `max_deliveries`, else schedule a retry.
    fn failure(&mut self, seq: u64, why: Failure, ctx: &Ctx<'_>, effects: &mut Effects) {
        let Some(entry) = self.entries.get(&seq) else {
            return;
        };
        let attempt = entry.attempt;
        let max = self.config.max_deliveries;
        if max > 0 && attempt >= max {
            effects.events.push(EngineEvent::MaxDeliveries {
                subscription: self.config.name.clone(),
                seq,
                attempt,
            });
            self.give_up(seq, "max_deliveries", None, ctx, effects);
            return;
        }
        let delay = match why {
            Failure::Nack(Some(d)) => d,
            Failure::Nack(None) if self.config.backoff_on_nack => self.backoff(seq, attempt),
            Failure::Timeout if self.config.backoff_on_timeout => self.backoff(seq, attempt),
            Failure::Nack(None) | Failure::Timeout | Failure::Detach => Duration::ZERO,
        };
        let not_before = ctx.now.plus(delay);
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.not_before = not_before;
            entry.consumer = None;
            if not_before > ctx.now {
                entry.state = DeliveryState::Delayed;
                self.delayed.insert((not_before, seq));
            } else {
                entry.state = DeliveryState::Available;
                self.ready.insert(seq);
                effects.wake = true;
            }
        }
    }

    /// Moves a message to DEAD_LETTERED (with a copy queued for the dead-letter topic) or TERMINATED.
    fn give_up(
        &mut self,
        seq: u64,
        reason: &'static str,
        detail: Option<&str>,
        ctx: &Ctx<'_>,
        effects: &mut Effects,
    ) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        let attempt = entry.attempt;
        let name = self.config.name.clone();
        match (&self.config.dead_letter, ctx.log.get(seq)) {
            (Some(dlt), Some(record)) => {
                entry.state = DeliveryState::DeadLettered;
                self.counters.dead_lettered += 1;
                let message = to_message(ctx.topic, 0, seq, record);
                let mut copy = PublishRequest {
                    subject: dlt.clone(),
                    key: message.key().cloned(),
                    msg_id: None,
                    headers: message.headers().clone(),
                    payload: message.payload.clone(),
                };
                let h = &mut copy.headers;
                h.insert("x-dead-letter-source-topic".into(), ctx.topic.to_string());
                h.insert(
                    "x-dead-letter-source-subject".into(),
                    message.subject().to_string(),
                );
                h.insert("x-dead-letter-subscription".into(), name.to_string());
                h.insert("x-dead-letter-partition".into(), "0".into());
                h.insert("x-dead-letter-seq".into(), seq.to_string());
                h.insert("x-dead-letter-delivery-count".into(), attempt.to_string());
                h.insert("x-dead-letter-reason".into(), reason.into());
                h.insert(
                    "x-dead-letter-first-publish-time".into(),
                    record.publish_time.as_micros().to_string(),
                );
                if let Some(detail) = detail.filter(|d| !d.is_empty()) {
                    h.insert("x-dead-letter-detail".into(), detail.into());
                }
                effects.dead_letters.push((dlt.clone(), copy));
                effects.events.push(EngineEvent::DeadLettered {
                    subscription: name,
                    seq,
                    attempt,
                    dead_letter: dlt.clone(),
                    reason,
                });
            }
            _ => {
                entry.state = DeliveryState::Terminated;
                self.counters.terminated += 1;
                effects.events.push(EngineEvent::Terminated {
                    subscription: name,
                    seq,
                    attempt,
                    reason,
                });
            }
        }
        entry.consumer = None;
    }

    /// Backoff after the `attempt`-th delivery failed, with deterministic jitter.
    fn backoff(&self, seq: u64, attempt: u32) -> Duration {
        let n = attempt.max(1);
        match &self.config.backoff {
            Backoff::Immediate => Duration::ZERO,
            Backoff::List(list) => {
                let i = usize::try_from(n - 1)
                    .unwrap_or(usize::MAX)
                    .min(list.len().saturating_sub(1));
                list.get(i).copied().unwrap_or_default()
            }
            Backoff::Exponential {
                min,
                max,
                factor,
                jitter,
            } => {
                let exp = i32::try_from(n - 1).unwrap_or(i32::MAX);
                let base = (min.as_secs_f64() * factor.powi(exp)).min(max.as_secs_f64());
                let spread = if *jitter > 0.0 {
                    base * jitter * unit_noise(self.jitter_seed, seq, n)
                } else {
                    0.0
                };
                Duration::try_from_secs_f64((base + spread).max(0.0)).unwrap_or(*max)
            }
        }
    }

    /// Moves the ack floor over every settled message directly above it (I3).
    pub fn advance_floor(&mut self) {
        while let Some((&seq, entry)) = self.entries.first_key_value() {
            if entry.state.is_terminal() {
                self.entries.remove(&seq);
            } else {
                self.ack_floor = seq - 1;
                return;
            }
        }
        self.ack_floor = self.delivered_seq;
    }

    /// T6 and T8: expire leases and release backoffs that are due.
    pub fn run_timers(&mut self, ctx: &Ctx<'_>, effects: &mut Effects) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > ctx.now {
                break;
            }
            let consumer = self.entries.get(&seq).and_then(|e| e.consumer.clone());
            let attempt = self.entries.get(&seq).map_or(0, |e| e.attempt);
            self.release(seq);
            self.counters.deadline_expired += 1;
            effects.events.push(EngineEvent::DeadlineExpired {
                subscription: self.config.name.clone(),
                seq,
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
        let d = self.deadlines.first().map(|(t, _)| *t);
        let b = self.delayed.first().map(|(t, _)| *t);
        match (d, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// T7: a consumer left; its in-flight messages become available again. Returns how many.
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

    /// T11: every lease is dropped; seq < `next` counts as acked, retained seq ≥ `next` is pending again.
    pub fn seek(&mut self, next: u64, effects: &mut Effects) {
        self.entries.clear();
        self.ready.clear();
        self.delayed.clear();
        self.deadlines.clear();
        self.in_flight = 0;
        self.in_flight_bytes = 0;
        for c in &mut self.consumers {
            c.in_flight = 0;
        }
        self.delivered_seq = next.saturating_sub(1);
        self.ack_floor = self.delivered_seq;
        effects.events.push(EngineEvent::Seek {
            subscription: self.config.name.clone(),
            next_seq: next,
        });
        effects.wake = true;
    }

    /// T10: retention removed `seq`; an unsettled copy here becomes EXPIRED.
    pub fn on_removed(&mut self, topic: &Name, seq: u64, record: &Record) {
        if seq <= self.ack_floor {
            return;
        }
        if seq <= self.delivered_seq {
            if self.entries.get(&seq).is_some_and(|e| !e.state.is_terminal()) {
                self.release(seq);
                self.counters.expired_unacked += 1;
            }
            self.entries.remove(&seq);
        } else {
            if self.covers_record(topic, record) {
                self.counters.expired_unacked += 1;
            }
            self.delivered_seq = seq;
        }
        // Everything at or below `seq` is gone, so the floor is at least `seq` (I4).
        self.ack_floor = self.ack_floor.max(seq);
        self.advance_floor();
    }

    /// Hands messages to push consumers with free credit, round-robin, and flags consumers that could not
    /// take more while work was waiting so that they ask again once they have room.
    pub fn dispatch_push(&mut self, ctx: &Ctx<'_>, effects: &mut Effects) {
        let n = self.consumers.len();
        if n == 0 || !self.consumers.iter().any(|c| c.push.is_some()) {
            return;
        }
        loop {
            let mut progressed = false;
            for k in 0..n {
                let i = (self.round_robin + k) % n;
                let Some(push) = self.consumers.get(i).and_then(|c| c.push.clone()) else {
                    continue;
                };
                if push.tx.capacity() == 0 {
                    continue;
                }
                let Some(delivery) = self.next_delivery(i, ctx, u64::MAX) else {
                    continue;
                };
                let consumer = self.consumers.get(i).map(|c| c.id.clone());
                match push.tx.try_send(delivery) {
                    Ok(()) => progressed = true,
                    Err(mpsc::error::TrySendError::Closed(_) | mpsc::error::TrySendError::Full(_)) => {
                        // Only the engine sends, under the topic lock, after checking capacity, so this
                        // is a receiver that went away: detach it, which requeues what it held.
                        if let Some(id) = consumer {
                            effects.closed.push((self.config.name.clone(), id));
                        }
                    }
                }
            }
            self.round_robin = (self.round_robin + 1) % n.max(1);
            if !progressed {
                break;
            }
        }
        if self.has_deliverable(ctx.log) {
            for c in &self.consumers {
                if let Some(push) = &c.push
                    && push.tx.capacity() == 0
                {
                    push.starved.store(true, AtomicOrdering::Release);
                }
            }
        }
    }

    /// Registers a push consumer with its channel.
    pub fn attach_push(
        &mut self,
        id: ConsumerId,
        prefetch: u32,
        tx: mpsc::Sender<Delivery>,
        starved: Arc<AtomicBool>,
        now: Timestamp,
        effects: &mut Effects,
    ) {
        let sink = PushSink { tx, starved };
        match self.consumers.iter_mut().find(|c| c.id == id) {
            // Re-attaching under a known id keeps the in-flight accounting of what it already holds.
            Some(existing) => {
                existing.push = Some(sink);
                existing.prefetch = prefetch;
                existing.last_activity = now;
            }
            None => self
                .consumers
                .push(ConsumerState::new(id.clone(), prefetch, now, Some(sink))),
        }
        self.last_active = now;
        effects.events.push(EngineEvent::ConsumerAttached {
            subscription: self.config.name.clone(),
            consumer: id,
        });
    }
}

/// A repeatable number in [-1, 1] from (seed, seq, attempt), so jitter is deterministic in tests.
fn unit_noise(seed: u64, seq: u64, attempt: u32) -> f64 {
    let mut x = seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(attempt).rotate_left(32);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}
