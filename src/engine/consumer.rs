//! Consumers attached to a subscription: their credit and totals, the push consumer's receiving end,
//! and the assignment changes (partitions given and taken) it is told about.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, mpsc};

use super::Engine;
use crate::model::clock::Timestamp;
use crate::model::message::{ConsumerId, Delivery};
use crate::model::name::Name;

/// Where the engine pushes deliveries for a push consumer.
#[derive(Debug, Clone)]
pub(crate) struct PushSink {
    pub tx: mpsc::Sender<Delivery>,
    /// Set by the dispatcher when work was waiting but the channel was full; the receiver then asks for
    /// another dispatch once it has made room.
    pub starved: Arc<AtomicBool>,
    /// Bytes the channel may hold, when the receiver set a cap.
    pub budget: Option<Arc<ByteBudget>>,
    /// Assignment changes for the receiver, placed among the deliveries.
    pub notes: Arc<NoteQueue>,
}

impl PushSink {
    /// Whether the channel can take another delivery: it has a free slot and its byte budget (with
    /// every budget above it) is under its cap.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0 && self.budget.as_ref().is_none_or(|b| b.has_room())
    }
}

/// A change in which partitions a consumer reads alone (`PartitionExclusive`, `SingleActive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChange {
    /// These partitions are now this consumer's.
    Assigned(Vec<u32>),
    /// These partitions are no longer this consumer's; what it held of them in flight went back.
    Revoked(Vec<u32>),
}

/// What a push consumer receives: a delivery, or a change in its assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushItem {
    /// A message.
    Delivery(Delivery),
    /// Partitions given or taken.
    Assignment(AssignmentChange),
}

/// Assignment changes waiting for a push consumer's reader. They live beside the delivery channel
/// rather than in it, because the channel's size is the consumer's credit and a change must never be
/// lost to a full channel; each change remembers how many deliveries had been sent before it, so the
/// reader sees it exactly where it happened among them. Changes come only from rebalances (a consumer
/// joining or leaving, partitions added), so the queue stays short; a change of the same kind as the
/// last one waiting, with no delivery between them, is merged into it.
#[derive(Debug, Default)]
pub(crate) struct NoteQueue {
    /// Changes, each with the number of deliveries sent before it.
    changes: Mutex<VecDeque<(u64, AssignmentChange)>>,
    /// Deliveries sent into the channel so far (only the engine sends, under the topic lock).
    sent: AtomicU64,
    /// Whether any change waits: checked without the lock on every receive.
    waiting: AtomicBool,
    ready: Notify,
}

impl NoteQueue {
    /// Counts one delivery sent into the channel.
    pub fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a change after the deliveries sent so far.
    pub fn push(&self, change: AssignmentChange) {
        let after = self.sent.load(Ordering::Relaxed);
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let merged = match (changes.back_mut(), &change) {
            (Some((at, AssignmentChange::Assigned(old))), AssignmentChange::Assigned(new))
            | (Some((at, AssignmentChange::Revoked(old))), AssignmentChange::Revoked(new))
                if *at == after =>
            {
                old.extend(new);
                old.sort_unstable();
                old.dedup();
                true
            }
            _ => false,
        };
        if !merged {
            changes.push_back((after, change));
        }
        self.waiting.store(true, Ordering::Release);
        drop(changes);
        self.ready.notify_one();
    }

    /// The first change, if the receiver has taken every delivery sent before it (`received`).
    fn pop_due(&self, received: u64) -> Option<AssignmentChange> {
        if !self.waiting.load(Ordering::Acquire) {
            return None;
        }
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let due = changes.front().is_some_and(|(after, _)| *after <= received);
        let change = if due { changes.pop_front().map(|(_, c)| c) } else { None };
        self.waiting.store(!changes.is_empty(), Ordering::Release);
        change
    }

    /// Forgets every waiting change (a receiver that reads deliveries only).
    fn clear(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            self.changes.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

/// Bytes held for a receiver, capped, with an optional parent that caps a group of them (a server
/// connection's streams). The engine counts each message it pushes to a consumer with a budget, and
/// the receiver gives the bytes back when it no longer holds the message (a server: once written to
/// the socket), so the count covers the message from the channel to wherever the receiver passes it
/// without a gap. The engine stops pushing to a consumer whose budget or any parent is at its cap, so a
/// consumer that does not read holds a bounded number of bytes whatever its prefetch. A budget under its
/// cap takes one more item whatever its size, so a message larger than the cap still flows: a budget
/// runs over its cap by at most one message per consumer.
#[derive(Debug)]
pub struct ByteBudget {
    max: u64,
    used: AtomicU64,
    parent: Option<Arc<ByteBudget>>,
    freed: Notify,
}

impl ByteBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(ByteBudget { max, used: AtomicU64::new(0), parent: None, freed: Notify::new() })
    }

    /// A budget of `max` bytes whose use also counts against `parent`.
    pub fn child(parent: &Arc<ByteBudget>, max: u64) -> Arc<Self> {
        Arc::new(ByteBudget {
            max,
            used: AtomicU64::new(0),
            parent: Some(parent.clone()),
            freed: Notify::new(),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether this budget and every one above it is under its cap.
    pub fn has_room(&self) -> bool {
        self.used() < self.max && self.parent.as_ref().is_none_or(|p| p.has_room())
    }

    /// Counts `n` more bytes held, here and above.
    pub fn hold(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.hold(n);
        }
    }

    /// Counts `n` bytes given back, here and above, waking whoever waits in [`ByteBudget::freed`] on a
    /// budget that drops under its cap.
    pub fn release(&self, n: u64) {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)))
            .unwrap_or_else(|u| u);
        if before >= self.max && before.saturating_sub(n) < self.max {
            self.freed.notify_waiters();
        }
        if let Some(parent) = &self.parent {
            parent.release(n);
        }
    }

    /// Completes once this budget drops under its cap after the call (a wait for room to free up).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}

/// One competing member of a subscription.
#[derive(Debug)]
pub(crate) struct ConsumerState {
    pub id: ConsumerId,
    pub prefetch: u32,
    pub in_flight: u32,
    pub attached_at: Timestamp,
    pub last_activity: Timestamp,
    pub delivered: u64,
    pub acked: u64,
    pub push: Option<PushSink>,
    /// Deliveries this consumer may still be handed in all, when it asked for a total (`sub --count N`):
    /// a reader that stops after N then never holds a message it will not hand out.
    pub limit: Option<u64>,
}

impl ConsumerState {
    pub fn new(id: ConsumerId, prefetch: u32, now: Timestamp, push: Option<PushSink>) -> Self {
        ConsumerState {
            id,
            prefetch: prefetch.max(1),
            in_flight: 0,
            attached_at: now,
            last_activity: now,
            delivered: 0,
            acked: 0,
            push,
            limit: None,
        }
    }

    /// Whether the consumer's total allows another delivery.
    pub fn may_take(&self) -> bool {
        self.limit != Some(0)
    }

    /// Counts `n` deliveries against the consumer's total.
    pub fn spend(&mut self, n: u64) {
        if let Some(left) = &mut self.limit {
            *left = left.saturating_sub(n);
        }
    }
}

/// The receiving end of a push consumer. Dropping it detaches the consumer, and whatever it held in
/// flight becomes available to the others (T7).
#[derive(Debug)]
pub struct PushConsumer {
    pub(crate) engine: Engine,
    pub(crate) subscription: Name,
    pub(crate) id: ConsumerId,
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) starved: Arc<AtomicBool>,
    /// The byte budget the engine counts each delivery in; the receiver gives the bytes back.
    pub(crate) budget: Option<Arc<ByteBudget>>,
    /// Assignment changes for this consumer.
    pub(crate) notes: Arc<NoteQueue>,
    /// Deliveries handed to the reader so far, to place the changes among them.
    pub(crate) received: u64,
    /// A delivery taken from the channel but not handed out yet, because a change may come first.
    pub(crate) stashed: Option<Delivery>,
}

impl PushConsumer {
    /// This consumer's id.
    pub fn id(&self) -> &ConsumerId {
        &self.id
    }

    /// The subscription it belongs to.
    pub fn subscription(&self) -> &Name {
        &self.subscription
    }

    /// The next delivery; `None` once the subscription is deleted. Assignment changes are passed over
    /// (see [`PushConsumer::recv_item`] for a reader that wants them).
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.notes.clear();
        let delivery = match self.stashed.take() {
            Some(d) => Some(d),
            None => self.next_delivery().await,
        };
        self.notes.clear();
        self.received += u64::from(delivery.is_some());
        delivery
    }

    /// A delivery if one is waiting, without blocking; assignment changes are passed over.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.notes.clear();
        let delivery = self.stashed.take().or_else(|| self.try_next_delivery());
        self.received += u64::from(delivery.is_some());
        delivery
    }

    /// The next delivery or assignment change, in the order the engine made them; `None` once the
    /// subscription is deleted.
    pub async fn recv_item(&mut self) -> Option<PushItem> {
        loop {
            if let Some(item) = self.ready_item() {
                return Some(item);
            }
            // A change that is not due yet has deliveries before it in the channel, so the channel
            // answers first; a change made while this waits wakes it.
            let notes = self.notes.clone();
            let noted = notes.ready.notified();
            tokio::select! {
                biased;
                delivery = self.next_delivery() => {
                    // Kept back one turn: a change made while this waited may come before it.
                    self.stashed = Some(delivery?);
                }
                () = noted => {}
            }
        }
    }

    /// A delivery or assignment change if one is waiting, without blocking.
    pub fn try_recv_item(&mut self) -> Option<PushItem> {
        if let Some(item) = self.ready_item() {
            return Some(item);
        }
        self.stashed = Some(self.try_next_delivery()?);
        self.ready_item()
    }

    /// A change that is due (every delivery sent before it was handed out), else the delivery kept
    /// back, if any.
    fn ready_item(&mut self) -> Option<PushItem> {
        if let Some(change) = self.notes.pop_due(self.received) {
            return Some(PushItem::Assignment(change));
        }
        let delivery = self.stashed.take()?;
        self.received += 1;
        Some(PushItem::Delivery(delivery))
    }

    async fn next_delivery(&mut self) -> Option<Delivery> {
        // Emptiness first: the flag must survive until the channel has room to refill.
        if self.rx.is_empty() && self.starved.swap(false, Ordering::AcqRel) {
            self.engine.dispatch(&self.subscription);
        }
        let delivery = self.rx.recv().await;
        if self.starved.swap(false, Ordering::AcqRel) {
            self.engine.dispatch(&self.subscription);
        }
        delivery
    }

    fn try_next_delivery(&mut self) -> Option<Delivery> {
        let delivery = self.rx.try_recv().ok();
        if self.starved.swap(false, Ordering::AcqRel) {
            self.engine.dispatch(&self.subscription);
        }
        delivery
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        // What is still queued never reached the receiver: it goes back unseen (no attempt spent, so a
        // `sub --count N` that leaves early costs the messages it did not print nothing), and its bytes
        // are given back. Closing first means nothing more arrives while the queue is emptied.
        self.rx.close();
        let mut unseen = Vec::new();
        let stashed = self.stashed.take();
        let rx = &mut self.rx;
        for d in stashed.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            if let Some(budget) = &self.budget {
                budget.release(d.message.size() as u64);
            }
            unseen.extend(d.lease);
        }
        self.engine.detach_returning(&self.subscription, &self.id, &unseen);
    }
}
