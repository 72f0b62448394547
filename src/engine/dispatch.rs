//! Dispatch: choosing the next message for a consumer (redeliveries first, then new ones past the
//! cursor), leasing it (T2), and pushing to push consumers with free credit.

use std::sync::atomic::Ordering as AtomicOrdering;

use tokio::sync::mpsc;

use super::consumer::{ConsumerState, PushSink};
use super::log::{Record, to_message};
use super::ordering::MAX_HELD;
use super::subscription::{Ctx, Effects, Entry, SubState};
use crate::model::DeliveryState;
use crate::model::clock::Timestamp;
use crate::model::config::{AckMode, Assignment, Ordering};
use crate::model::error::EngineError;
use crate::model::event::EngineEvent;
use crate::model::message::{AckRef, ConsumerId, Delivery};
use crate::store::journal::{SubOp, partition_keys, pos_key, split_key};

impl SubState {
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
        let simple = self.config.ack == AckMode::None && self.ready.is_empty() && !self.filters();
        if simple && max_bytes == u64::MAX {
            // The common firehose case: no leases, no filter, no redeliveries — copy a run of each
            // partition's log, the partitions taking turns at going first.
            let mut room = max_msgs.saturating_sub(out.len());
            if let Some(left) = self.consumers.get(c).and_then(|x| x.limit) {
                room = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            out.reserve(room.min(4096));
            let before = out.len();
            let n_parts = self.parts.len().min(ctx.logs.len());
            for k in 0..n_parts {
                let p = (self.next_part + k) % n_parts;
                if !self.may_receive(c, p) {
                    continue;
                }
                let (Some(log), Some(part)) = (ctx.logs.get(p), self.parts.get_mut(p)) else {
                    continue;
                };
                let taken = out.len() - before;
                if taken >= room {
                    break;
                }
                let from = part.delivered_seq.max(log.first_seq().saturating_sub(1)) + 1;
                let partition = u32::try_from(p).unwrap_or(u32::MAX);
                for (seq, record) in log.iter_from(from).take(room - taken) {
                    out.push(Delivery {
                        message: to_message(ctx.topic, partition, seq, &record),
                        attempt: 1,
                        lease: None,
                        deadline: None,
                    });
                    part.delivered_seq = seq;
                }
            }
            if n_parts > 0 {
                self.next_part = (self.next_part + 1) % n_parts;
            }
            let n = (out.len() - before) as u64;
            if n > 0 {
                self.counters.delivered += n;
                self.counters.acked += n;
                self.deliver_rate.record(ctx.now, n);
                if let Some(consumer) = self.consumers.get_mut(c) {
                    consumer.delivered += n;
                    consumer.spend(n);
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
        if self.consumers.get(c).is_some_and(|x| !x.may_take()) || !self.may_receive_any(c) {
            return None;
        }
        if explicit {
            if self.in_flight >= self.config.max_in_flight {
                return None;
            }
            let consumer = self.consumers.get(c)?;
            if consumer.in_flight >= consumer.prefetch {
                return None;
            }
        }
        if let Some(key) = self.first_ready_for(c) {
            let record = ctx.record(key)?;
            if !self.fits(&record, byte_budget) {
                return None;
            }
            self.ready.remove(&key);
            return Some(self.lease(c, key, &record, ctx));
        }
        // New messages: the partitions take turns, one message at a time, so that no partition waits
        // behind another's backlog.
        let n_parts = self.parts.len().min(ctx.logs.len());
        for k in 0..n_parts {
            let p = (self.next_part + k) % n_parts;
            if !self.may_receive(c, p) {
                continue;
            }
            let partition = u32::try_from(p).unwrap_or(u32::MAX);
            let Some(log) = ctx.logs.get(p) else {
                continue;
            };
            let head = log.head_seq();
            while let Some(delivered) = self.parts.get(p).map(|x| x.delivered_seq).filter(|&d| d < head) {
                let seq = delivered + 1;
                let Some(record) = log.get(seq) else {
                    // Below first_seq: retention removed it; the cursor jumps (counted when it was removed).
                    self.set_delivered(p, log.first_seq().saturating_sub(1).max(seq));
                    continue;
                };
                if !self.covers_record(ctx.topic, &record) {
                    self.set_delivered(p, seq);
                    self.counters.filtered += 1;
                    continue;
                }
                if !self.fits(&record, byte_budget) {
                    return None;
                }
                if explicit
                    && let Some(line) = self.ordered().then(|| self.line_of(partition, &record)).flatten()
                {
                    let key = pos_key(partition, seq);
                    if self.order.is_busy(&line) {
                        // Strict: the partition waits. PerKey: the message waits in its key's line and
                        // the cursor goes on to other keys, up to a bound on what waits.
                        if self.config.ordering == Ordering::Strict || self.order.held() >= MAX_HELD {
                            break;
                        }
                        self.set_delivered(p, seq);
                        self.hold(key, &record, ctx);
                        self.order.hold(line, key);
                        continue;
                    }
                    self.order.activate(line, key);
                }
                self.set_delivered(p, seq);
                self.next_part = (p + 1) % n_parts;
                return Some(self.deliver_new(c, partition, seq, &record, ctx, explicit));
            }
        }
        None
    }

    /// The first redelivery consumer `c` may be handed: the lowest ready key, or under
    /// PartitionExclusive the lowest in a partition it owns.
    fn first_ready_for(&self, c: usize) -> Option<u64> {
        if self.config.assignment != Assignment::PartitionExclusive {
            return self.ready.first().copied();
        }
        (0..self.parts.len())
            .filter(|&p| self.may_receive(c, p))
            .find_map(|p| self.ready.range(partition_keys(u32::try_from(p).unwrap_or(u32::MAX))).next())
            .copied()
    }

    /// A message the cursor passes that must wait for its line: AVAILABLE with attempt 0, journaled so
    /// that a restart does not count it settled.
    fn hold(&mut self, key: u64, record: &Record, ctx: &Ctx<'_>) {
        self.entries.insert(key, Entry::unleased(ctx.now, record.size()));
        self.note(SubOp::Attempt { seq: key, attempt: 0 });
    }

    fn set_delivered(&mut self, p: usize, seq: u64) {
        if let Some(part) = self.parts.get_mut(p) {
            part.delivered_seq = seq;
        }
    }

    /// Hands out a message never delivered before: leased, or acked at once without acks.
    fn deliver_new(
        &mut self,
        c: usize,
        partition: u32,
        seq: u64,
        record: &Record,
        ctx: &Ctx<'_>,
        explicit: bool,
    ) -> Delivery {
        {
            if explicit {
                return self.lease(c, pos_key(partition, seq), record, ctx);
            }
            self.counters.delivered += 1;
            self.counters.acked += 1;
            self.deliver_rate.record(ctx.now, 1);
            if let Some(consumer) = self.consumers.get_mut(c) {
                consumer.delivered += 1;
                consumer.spend(1);
                consumer.last_activity = ctx.now;
            }
            Delivery {
                message: to_message(ctx.topic, partition, seq, record),
                attempt: 1,
                lease: None,
                deadline: None,
            }
        }
    }

    pub(super) fn fits(&self, record: &Record, byte_budget: u64) -> bool {
        let size = record.size();
        let sub_limit = self.config.max_in_flight_bytes;
        let over_sub = sub_limit > 0 && self.in_flight > 0 && self.in_flight_bytes + size > sub_limit;
        // One message is always allowed so that an oversized message cannot wedge the subscription.
        !over_sub && (size <= byte_budget || byte_budget == u64::MAX)
    }

    /// T2: AVAILABLE → IN_FLIGHT for consumer `c`; `seq` is the entry's key (partition and seq).
    pub(super) fn lease(&mut self, c: usize, seq: u64, record: &Record, ctx: &Ctx<'_>) -> Delivery {
        let now = ctx.now;
        let lease = self.next_lease;
        self.next_lease += 1;
        let deadline = now.plus(self.config.ack_deadline);
        let consumer_id = self.consumers.get(c).map(|x| x.id.clone());
        let bytes = record.size();
        let entry = self.entries.get_or_insert_with(seq, || Entry::unleased(now, bytes));
        entry.state = DeliveryState::InFlight;
        // A restored entry does not know its size until it is leased again.
        entry.bytes = bytes;
        entry.attempt += 1;
        entry.consumer = consumer_id;
        entry.lease = lease;
        entry.deadline = deadline;
        entry.lease_start = now;
        entry.last_delivered = now;
        let attempt = entry.attempt;
        self.note(SubOp::Attempt { seq, attempt });
        self.deadlines.insert(deadline, lease, seq);
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
            consumer.spend(1);
            consumer.last_activity = now;
        }
        let (partition, seq) = split_key(seq);
        Delivery {
            message: to_message(ctx.topic, partition, seq, record),
            attempt,
            lease: Some(AckRef { partition, seq, lease }),
            deadline: Some(deadline),
        }
    }

    /// Hands messages to push consumers with free credit, round-robin, and flags consumers that could not
    /// take more while work was waiting so that they ask again once they have room.
    pub fn dispatch_push(&mut self, ctx: &Ctx<'_>, effects: &mut Effects) {
        let n = self.consumers.len();
        // Nothing to hand out is the common case of a settle on a subscription that keeps up: answered
        // before looking at any consumer, so an ack costs the same with 256 consumers as with one (a pass
        // over every consumer per ack made the queue scenario's cost per message grow with them). The
        // turn moves with deliveries only, so skipping those empty passes leaves the order fair.
        if n == 0 || !self.has_deliverable(ctx.logs) || !self.consumers.iter().any(|c| c.push.is_some()) {
            return;
        }
        let mut next_turn = self.round_robin;
        loop {
            let mut progressed = false;
            for k in 0..n {
                let i = (self.round_robin + k) % n;
                let Some(push) = self.consumers.get(i).and_then(|c| c.push.clone()) else {
                    continue;
                };
                if !push.has_room() {
                    // Marked now, not after the loop: the receiver may take from the channel meanwhile,
                    // and a later look at the capacity would then miss that it was full and leave the
                    // rest undispatched until the next publish.
                    push.starved.store(true, AtomicOrdering::Release);
                    continue;
                }
                let Some(delivery) = self.next_delivery(i, ctx, u64::MAX) else {
                    continue;
                };
                let consumer = self.consumers.get(i).map(|c| c.id.clone());
                // Counted before sending: the receiver gives it back as soon as it takes it.
                let size = delivery.message.size() as u64;
                if let Some(budget) = &push.budget {
                    budget.hold(size);
                }
                match push.tx.try_send(delivery) {
                    Ok(()) => {
                        push.notes.sent_one();
                        progressed = true;
                        // The next turn starts after the last consumer served, so that messages that
                        // arrive one at a time still go round the consumers.
                        next_turn = (i + 1) % n;
                    }
                    Err(mpsc::error::TrySendError::Closed(d) | mpsc::error::TrySendError::Full(d)) => {
                        if let Some(budget) = &push.budget {
                            budget.release(size);
                        }
                        // It never reached the receiver: back unseen, without spending an attempt.
                        if let Some(r) = d.lease {
                            self.return_unseen(pos_key(r.partition, r.seq), r.lease, effects);
                        }
                        // Only the engine sends, under the topic lock, after checking capacity, so this
                        // is a receiver that went away: detach it, which requeues what it held.
                        if let Some(id) = consumer {
                            effects.closed.push((self.config.name.clone(), id));
                        }
                    }
                }
            }
            self.round_robin = next_turn;
            if !progressed {
                break;
            }
        }
        if self.has_deliverable(ctx.logs) {
            for c in &self.consumers {
                if let Some(push) = &c.push
                    && !push.has_room()
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
        limit: Option<u64>,
        sink: PushSink,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Result<(), EngineError> {
        match self.consumers.iter_mut().find(|c| c.id == id) {
            // Two live push consumers under one id could not be told apart when one of them leaves.
            Some(existing) if existing.push.as_ref().is_some_and(|p| !p.tx.is_closed()) => {
                return Err(EngineError::ConsumerExists {
                    subscription: self.config.name.clone(),
                    consumer: id,
                });
            }
            // A pull consumer (or a departed push one) of that id becomes this push consumer, keeping the
            // in-flight accounting of what it already holds.
            Some(existing) => {
                existing.push = Some(sink);
                existing.prefetch = prefetch;
                existing.limit = limit;
                existing.last_activity = now;
            }
            None => {
                let mut consumer = ConsumerState::new(id.clone(), prefetch, now, Some(sink));
                consumer.limit = limit;
                self.consumers.push(consumer);
            }
        }
        self.last_active = now;
        // Told what it reads from the start, even when the rebalance changes nothing (a pull consumer
        // of that id already owned partitions).
        self.rebalance_announcing(now, effects, Some(&id));
        effects
            .events
            .push(EngineEvent::ConsumerAttached { subscription: self.config.name.clone(), consumer: id });
        Ok(())
    }
}
