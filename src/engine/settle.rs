//! Settling deliveries: ack (T3), cumulative ack (T3c), nack (T5), extend (T4), term (T9), and the
//! `failure()` rule that retries with backoff or gives up into a dead-letter topic.

use std::time::Duration;

use super::subscription::{Ctx, DeadLetter, Effects, Failure, SubState};
use crate::model::DeliveryState;
use crate::model::clock::Timestamp;
use crate::model::config::{AckMode, Backoff};
use crate::model::error::EngineError;
use crate::model::event::EngineEvent;
use crate::model::message::{AckRef, ConsumerId};
use crate::store::journal::{SubOp, pos_key, split_key};

impl SubState {
    /// Finds the in-flight entry an `AckRef` names. `Ok(None)` means "already settled, nothing to do".
    /// `lenient` applies the non-strict rule, which SEMANTICS.md allows for acks only (T3s): nack, extend
    /// and term always need the current lease, so a stale holder cannot disturb the current one.
    /// The entry's key (partition and seq, see `pos_key`) is returned.
    pub(super) fn leased(&mut self, r: &AckRef, lenient: bool) -> Result<Option<u64>, EngineError> {
        let seq = r.seq;
        let key = pos_key(r.partition, seq);
        if r.lease >= self.next_lease || r.lease == 0 {
            return Err(EngineError::UnknownLease {
                subscription: self.config.name.clone(),
                seq,
                lease: r.lease,
            });
        }
        if r.lease < self.lease_floor {
            // Handed out before the last seek: every such lease is void (T11).
            return Err(EngineError::StaleLease { subscription: self.config.name.clone(), seq });
        }
        if self.parts.get(r.partition as usize).is_none_or(|part| seq > part.delivered_seq) {
            return Err(EngineError::NotDelivered { subscription: self.config.name.clone(), seq });
        }
        match self.entries.get(&key) {
            None => Ok(None),
            Some(e) if e.state.is_terminal() => Ok(None),
            Some(e) if e.state == DeliveryState::InFlight && e.lease == r.lease => Ok(Some(key)),
            Some(_) if self.config.strict_leases || !lenient => {
                Err(EngineError::StaleLease { subscription: self.config.name.clone(), seq })
            }
            // Lenient leases (NATS behaviour): an outdated lease still settles the message.
            Some(_) => Ok(Some(key)),
        }
    }

    /// Takes an entry out of the in-flight accounting (it stays in `entries`).
    pub(super) fn release(&mut self, seq: u64) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        match entry.state {
            DeliveryState::InFlight => {
                self.deadlines.remove(entry.deadline, entry.lease);
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
        let Some(seq) = self.leased(r, true)? else {
            return Ok(());
        };
        self.settle_acked(seq, now);
        self.advance_floor_in(r.partition);
        Ok(())
    }

    pub(super) fn settle_acked(&mut self, seq: u64, now: Timestamp) {
        let consumer = self.entries.get(&seq).and_then(|e| e.consumer.clone());
        self.release(seq);
        self.entries.remove(&seq);
        self.unblock(seq);
        self.note(SubOp::Settle { seq });
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

    /// T3c: ack every in-flight message of `consumer` in partition `p` with seq ≤ `through`.
    pub fn ack_cumulative(
        &mut self,
        consumer: &ConsumerId,
        p: u32,
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
            .range(pos_key(p, 0)..=pos_key(p, through))
            .filter(|(_, e)| e.state == DeliveryState::InFlight && e.consumer.as_ref() == Some(consumer))
            .map(|(s, _)| *s)
            .collect();
        for &seq in &seqs {
            self.settle_acked(seq, now);
        }
        self.advance_floor_in(p);
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
        let Some(seq) = self.leased(r, false)? else {
            return Ok(());
        };
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
        let Some(seq) = self.leased(r, false)? else {
            return Err(EngineError::StaleLease { subscription: self.config.name.clone(), seq: r.seq });
        };
        let cap = self.config.max_lease;
        let stale = || EngineError::StaleLease { subscription: self.config.name.clone(), seq: r.seq };
        let Some(entry) = self.entries.get_mut(&seq) else {
            return Err(stale());
        };
        if entry.state != DeliveryState::InFlight {
            return Err(stale());
        }
        let wanted = now.plus(by);
        let limit = entry.lease_start.plus(cap);
        let deadline = wanted.min(limit).max(entry.deadline);
        self.deadlines.remove(entry.deadline, entry.lease);
        entry.deadline = deadline;
        self.deadlines.insert(deadline, entry.lease, seq);
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
        let Some(seq) = self.leased(r, false)? else {
            return Ok(());
        };
        self.release(seq);
        self.give_up(seq, "term", Some(reason), ctx, effects);
        self.advance_floor();
        Ok(())
    }

    /// `failure()` of SEMANTICS.md: dead-letter or terminate at `max_deliveries`, else schedule a retry.
    pub(super) fn failure(&mut self, seq: u64, why: Failure, ctx: &Ctx<'_>, effects: &mut Effects) {
        let Some(entry) = self.entries.get(&seq) else {
            return;
        };
        let attempt = entry.attempt;
        let max = self.config.max_deliveries;
        if max > 0 && attempt >= max {
            effects.events.push(EngineEvent::MaxDeliveries {
                subscription: self.config.name.clone(),
                seq: split_key(seq).1,
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
                self.note(SubOp::Delay { seq, not_before });
            } else {
                entry.state = DeliveryState::Available;
                self.ready.insert(seq);
                effects.wake = true;
            }
        }
    }

    /// Moves a message to DEAD_LETTERED (with a copy queued for the dead-letter topic) or TERMINATED.
    pub(super) fn give_up(
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
        let key = seq;
        let (partition, seq) = split_key(key);
        match (&self.config.dead_letter, ctx.record(key)) {
            (Some(dlt), Some(record)) => {
                let record = &*record;
                entry.state = DeliveryState::DeadLettered;
                self.counters.dead_lettered += 1;
                let mut copy = super::subscription::dead_letter_copy(
                    dlt, ctx.topic, &name, partition, seq, record, attempt, reason,
                );
                let h = &mut copy.headers;
                if let Some(detail) = detail.filter(|d| !d.is_empty()) {
                    h.insert("x-dead-letter-detail".into(), detail.into());
                }
                effects.dead_letters.push(DeadLetter {
                    topic: dlt.clone(),
                    copy,
                    subscription: name.clone(),
                    seq: key,
                    attempt,
                });
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
                effects.events.push(EngineEvent::Terminated { subscription: name, seq, attempt, reason });
            }
        }
        let dead_lettered = entry.state == DeliveryState::DeadLettered;
        entry.consumer = None;
        // A dead letter or a term unblocks the message's key (SEMANTICS.md §9.6).
        self.unblock(key);
        // A dead-lettered message is journaled as settled only once its copy is in the dead-letter topic
        // (`Engine::apply`), so a crash in between dead-letters it again instead of losing the copy.
        if !dead_lettered {
            self.note(SubOp::Settle { seq: key });
        }
    }

    /// Backoff after the `attempt`-th delivery failed, with deterministic jitter.
    pub(super) fn backoff(&self, seq: u64, attempt: u32) -> Duration {
        let n = attempt.max(1);
        match &self.config.backoff {
            Backoff::Immediate => Duration::ZERO,
            Backoff::List(list) => {
                let i = usize::try_from(n - 1).unwrap_or(usize::MAX).min(list.len().saturating_sub(1));
                list.get(i).copied().unwrap_or_default()
            }
            Backoff::Exponential { min, max, factor, jitter } => {
                let exp = i32::try_from(n - 1).unwrap_or(i32::MAX);
                let base = (min.as_secs_f64() * factor.powi(exp)).min(max.as_secs_f64());
                let spread =
                    if *jitter > 0.0 { base * jitter * unit_noise(self.jitter_seed, seq, n) } else { 0.0 };
                Duration::try_from_secs_f64((base + spread).max(0.0)).unwrap_or(*max)
            }
        }
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
