//! Forwarding live messages to a reader: never waiting for it (a live broker does not wait either),
//! counting what a slow reader misses, and telling it how many with `Lagged { skipped }` as soon as
//! there is room — so every backend reports drops the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{broadcast, mpsc};

use crate::broker::{BrokerError, ConnectionEvent, StreamItem};

/// What became of an offered item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Handed to the reader.
    Sent,
    /// No room: dropped and counted.
    Dropped,
    /// The reader is gone.
    Gone,
}

impl Offer {
    /// Whether the reader is still there.
    pub fn open(self) -> bool {
        self != Offer::Gone
    }
}

/// The sending half of a live subscription's channel, with its count of unreported drops.
#[derive(Debug)]
pub struct Forwarder {
    tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
    /// Drops not yet reported; shared with a reporter task when there is one.
    skipped: Arc<AtomicU64>,
    events: Option<broadcast::Sender<ConnectionEvent>>,
    /// Whether a gap starts a task that reports it as soon as the reader makes room.
    reporter: bool,
    /// Whether such a task runs now (one at a time, so two never hold the reader's last free slot).
    reporting: Arc<AtomicBool>,
}

impl Forwarder {
    /// Forwards into `tx`; drops are also announced as `SlowConsumer` on `events` when given.
    pub fn new(
        tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
        events: Option<broadcast::Sender<ConnectionEvent>>,
    ) -> Self {
        Forwarder {
            tx,
            skipped: Arc::new(AtomicU64::new(0)),
            events,
            reporter: false,
            reporting: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same forwarder, reporting each gap from a task of its own as soon as the reader makes room:
    /// for a loop that serves many readers and cannot wait on one (an MQTT connection's event loop).
    #[must_use]
    pub fn with_reporter(mut self) -> Self {
        self.reporter = true;
        self
    }

    /// Offers one item: delivered if there is room, otherwise dropped and counted. Unreported drops are
    /// reported first, so the reader learns of the gap before the next message.
    pub fn offer(&mut self, item: StreamItem) -> Offer {
        if self.owes_report() && !self.report() {
            return Offer::Gone;
        }
        if self.owes_report() {
            // Still no room for the report: this one is lost too.
            self.drop_one();
            return Offer::Dropped;
        }
        match self.tx.try_send(Ok(item)) {
            Ok(()) => Offer::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_one();
                Offer::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
    }

    /// Passes an error on, waiting for room (errors are rare and must not be lost). `false` once the
    /// reader is gone.
    pub async fn fail(&mut self, error: BrokerError) -> bool {
        self.tx.send(Err(error)).await.is_ok()
    }

    /// Whether drops wait to be reported.
    pub fn owes_report(&self) -> bool {
        self.skipped.load(Ordering::Acquire) > 0
    }

    /// Waits until the reader makes room, then reports the drops. Meant for a `select!` arm guarded by
    /// [`Forwarder::owes_report`], so a gap is reported even when no further message comes. `false`
    /// once the reader is gone.
    pub async fn catch_up(&mut self) -> bool {
        catch_up(&self.tx, &self.skipped).await
    }

    /// Whether the reader is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Reports the drops if there is room now; `false` once the reader is gone.
    pub fn report(&mut self) -> bool {
        let n = self.skipped.swap(0, Ordering::AcqRel);
        if n == 0 {
            return !self.tx.is_closed();
        }
        match self.tx.try_send(Ok(StreamItem::Lagged { skipped: n })) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Put back, and make sure a reporter will tell it.
                self.skipped.fetch_add(n, Ordering::AcqRel);
                self.start_reporter();
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn drop_one(&mut self) {
        let before = self.skipped.fetch_add(1, Ordering::AcqRel);
        if let Some(events) = &self.events {
            let _ = events.send(ConnectionEvent::SlowConsumer { dropped: 1 });
        }
        if before == 0 {
            self.start_reporter();
        }
    }

    /// Starts the reporter task, unless this forwarder has none or one runs already.
    fn start_reporter(&self) {
        if !self.reporter || self.reporting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, skipped, reporting) = (self.tx.clone(), self.skipped.clone(), self.reporting.clone());
        tokio::spawn(async move {
            loop {
                let alive = catch_up(&tx, &skipped).await;
                reporting.store(false, Ordering::Release);
                // Drops that came while it reported, with nobody else to tell them: go round again.
                if !alive || skipped.load(Ordering::Acquire) == 0 || reporting.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

/// Waits for room in `tx`, then reports what `skipped` holds (nothing if the forwarder reported it
/// meanwhile); `false` once the reader is gone.
async fn catch_up(tx: &mpsc::Sender<Result<StreamItem, BrokerError>>, skipped: &AtomicU64) -> bool {
    match tx.reserve().await {
        Ok(permit) => {
            let n = skipped.swap(0, Ordering::AcqRel);
            if n > 0 {
                permit.send(Ok(StreamItem::Lagged { skipped: n }));
            }
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BrokerDelivery, Message, Name, Timestamp};

    fn item(n: u64) -> StreamItem {
        let name = Name::new("t").unwrap();
        let message = Message::new(name.clone(), 0, n, Timestamp::ZERO, name, None, bytes::Bytes::new());
        StreamItem::Delivery(BrokerDelivery::untracked(message))
    }

    fn seq(item: Option<Result<StreamItem, BrokerError>>) -> String {
        match item {
            Some(Ok(StreamItem::Delivery(d))) => format!("#{}", d.message.seq),
            Some(Ok(StreamItem::Lagged { skipped })) => format!("lagged {skipped}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_reader_is_told_how_many_it_missed_before_the_next_message() {
        let (tx, mut rx) = mpsc::channel(2);
        let (events, mut ev) = broadcast::channel(16);
        let mut f = Forwarder::new(tx, Some(events));
        let offers: Vec<Offer> = (1..=5).map(|n| f.offer(item(n))).collect();
        assert_eq!(offers, [Offer::Sent, Offer::Sent, Offer::Dropped, Offer::Dropped, Offer::Dropped]);
        // 1 and 2 fit; 3, 4 and 5 are dropped and counted.
        assert_eq!(seq(rx.try_recv().ok()), "#1");
        assert_eq!(seq(rx.try_recv().ok()), "#2");
        assert!(f.owes_report());
        assert_eq!(f.offer(item(6)), Offer::Sent);
        assert_eq!(seq(rx.try_recv().ok()), "lagged 3");
        assert_eq!(seq(rx.try_recv().ok()), "#6");
        let slow = std::iter::from_fn(|| ev.try_recv().ok()).count();
        assert_eq!(slow, 3);
    }

    #[tokio::test]
    async fn catch_up_reports_a_gap_when_no_further_message_comes() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut f = Forwarder::new(tx, None);
        assert_eq!(f.offer(item(1)), Offer::Sent);
        assert_eq!(f.offer(item(2)), Offer::Dropped);
        assert_eq!(seq(rx.recv().await), "#1");
        assert!(f.catch_up().await);
        assert_eq!(seq(rx.recv().await), "lagged 1");
        assert!(!f.owes_report());
    }

    #[test]
    fn a_gone_reader_stops_the_forwarder() {
        let (tx, rx) = mpsc::channel(1);
        let mut f = Forwarder::new(tx, None);
        drop(rx);
        assert_eq!(f.offer(item(1)), Offer::Gone);
        assert!(f.is_closed());
    }

    #[tokio::test]
    async fn a_reporter_tells_of_a_gap_without_further_offers() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut f = Forwarder::new(tx, None).with_reporter();
        assert_eq!(f.offer(item(1)), Offer::Sent);
        assert_eq!(f.offer(item(2)), Offer::Dropped);
        assert_eq!(f.offer(item(3)), Offer::Dropped);
        assert_eq!(seq(rx.recv().await), "#1");
        assert_eq!(seq(rx.recv().await), "lagged 2");
        assert!(!f.owes_report());
        assert_eq!(f.offer(item(4)), Offer::Sent);
        assert_eq!(seq(rx.recv().await), "#4");
    }
}
