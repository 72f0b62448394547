//! Consumers attached to a subscription: their credit and totals, and the push consumer's receiving end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::Engine;
use super::clock::Timestamp;
use super::message::{ConsumerId, Delivery};
use super::name::Name;

/// Where the engine pushes deliveries for a push consumer.
#[derive(Debug, Clone)]
pub(crate) struct PushSink {
    pub tx: mpsc::Sender<Delivery>,
    /// Set by the dispatcher when work was waiting but the channel was full; the receiver then asks for
    /// another dispatch once it has made room.
    pub starved: Arc<AtomicBool>,
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

    /// The next delivery; `None` once the subscription is deleted.
    pub async fn recv(&mut self) -> Option<Delivery> {
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

    /// A delivery if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.try_recv().ok();
        if self.starved.swap(false, Ordering::AcqRel) {
            self.engine.dispatch(&self.subscription);
        }
        delivery
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.engine.detach(&self.subscription, &self.id);
    }
}
