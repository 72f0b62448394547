//! Stream pumps: moving a stream's items to the connection's writer in `deliver` frames, within the
//! client's credit and the server's byte budgets. Every byte a stream holds in the server (in its
//! engine channel, in a batch being built, in the send queue, in the writer) is counted in the stream's
//! [`ByteBudget`], whose parent is the connection's; the engine stops pushing to a stream while either
//! is at its cap, so a client that does not read holds bounded memory whatever its prefetch. A
//! message's bytes are counted once, from the engine's push until its frame is written: the batch
//! takes them over from the engine ([`Held`]), the frame from the batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::broker::{BrokerDelivery, BrokerError, DeliveryStream, ItemSource, StreamItem};
use crate::engine::ByteBudget;
use crate::protocol::{self, Delivered, ErrorCode, ServerFrame};

/// Most messages in one `deliver` frame.
const BATCH: usize = 256;
/// A `deliver` frame takes no more messages once it holds this many bytes of them, so that large
/// messages make several frames rather than one too large for the client to read (tungstenite's
/// clients refuse messages over 16 MiB by default).
pub(crate) const BATCH_BYTES: usize = 1024 * 1024;

/// Bytes the server holds for something on its way to the client, counted in a budget until dropped
/// (once written to the socket, or discarded).
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<ByteBudget>,
    n: u64,
}

impl Held {
    pub(crate) fn new(budget: &Arc<ByteBudget>, n: usize) -> Held {
        let mut held = Held { budget: budget.clone(), n: 0 };
        held.grow(n);
        held
    }

    fn grow(&mut self, n: usize) {
        let n = n as u64;
        self.budget.hold(n);
        self.n += n;
    }

    /// Takes over `n` bytes already counted in the budget (by the engine, or by a drained tap), to give
    /// them back when dropped.
    fn adopt(&mut self, n: usize) {
        self.n += n as u64;
    }

    /// Stops holding `n` bytes without giving them back: whoever took the message took them over.
    fn hand_off(&mut self, n: usize) {
        self.n = self.n.saturating_sub(n as u64);
    }

    /// Gives back `n` of the bytes held.
    fn shrink(&mut self, n: usize) {
        let n = (n as u64).min(self.n);
        self.budget.release(n);
        self.n -= n;
    }

    /// What is held so far, counted from now on as `n` bytes (the frame the held messages became),
    /// leaving nothing held here: a transfer, so that the bytes are never counted twice.
    fn hand_over(&mut self, n: usize) -> Held {
        let mut held = Held { budget: self.budget.clone(), n: std::mem::take(&mut self.n) };
        let n = n as u64;
        if n > held.n {
            held.budget.hold(n - held.n);
        } else {
            held.budget.release(held.n - n);
        }
        held.n = n;
        held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.n);
    }
}

/// A frame for the writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame, and the bytes it holds.
    Text(String, Held),
    /// A binary frame (publish receipts and deliveries, when the client asked for binary frames).
    Binary(Vec<u8>, Held),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

impl Outbound {
    /// A text frame counted in `budget`.
    pub(crate) fn text(text: String, budget: &Arc<ByteBudget>) -> Outbound {
        let held = Held::new(budget, text.len());
        Outbound::Text(text, held)
    }

    /// A binary frame counted in `budget`.
    pub(crate) fn binary(bytes: Vec<u8>, budget: &Arc<ByteBudget>) -> Outbound {
        let held = Held::new(budget, bytes.len());
        Outbound::Binary(bytes, held)
    }
}

/// Deliveries a client has room for on one stream: `prefetch` to begin with, spent by the pump, given
/// back by `credit` frames.
#[derive(Debug)]
pub(crate) struct Credit {
    available: AtomicU64,
    granted: Notify,
}

impl Credit {
    pub(crate) fn new(initial: u32) -> Self {
        Credit { available: u64::from(initial).into(), granted: Notify::new() }
    }

    pub(crate) fn grant(&self, n: u64) {
        self.available.fetch_add(n, Ordering::AcqRel);
        self.granted.notify_one();
    }

    /// Waits until there is room for at least one item; returns how much.
    async fn room(&self) -> u64 {
        loop {
            let granted = self.granted.notified();
            let available = self.available.load(Ordering::Acquire);
            if available > 0 {
                return available;
            }
            granted.await;
        }
    }

    fn spend(&self, n: u64) {
        // Only the pump spends, and never more than `room` said, so this cannot go below zero.
        self.available.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What a pump needs besides its stream.
pub(crate) struct Pump {
    pub sid: u64,
    pub out: mpsc::Sender<Outbound>,
    pub cancel: CancellationToken,
    pub binary: bool,
    /// The client asked for `assigned` and `revoked` frames in `hello`.
    pub assignments: bool,
    pub credit: Option<Arc<Credit>>,
    /// The stream's byte budget (its parent is the connection's).
    pub budget: Arc<ByteBudget>,
    /// The connection's byte budget.
    pub connection: Arc<ByteBudget>,
}

/// Moves items from a stream to the client, batching what is ready into one `deliver` frame. When the
/// connection's queue is full, the client has granted no room (`credit`), or a byte budget is spent,
/// this waits, so the engine stops dispatching and the backlog shows as lag.
pub(crate) async fn pump(mut stream: DeliveryStream, p: Pump) {
    loop {
        let room = match &p.credit {
            None => BATCH,
            Some(credit) => tokio::select! {
                () = p.cancel.cancelled() => return,
                room = credit.room() => usize::try_from(room).unwrap_or(usize::MAX).min(BATCH),
            },
        };
        // The engine pushes to a stream again only when the stream asks (on `next`) after a budget
        // stopped it, so room freed in either budget wakes the wait to ask anew.
        let first = loop {
            let freed = p.budget.freed();
            let connection_freed = p.connection.freed();
            tokio::select! {
                () = p.cancel.cancelled() => return,
                item = stream.next() => break item,
                () = freed => {}
                () = connection_freed => {}
            }
        };
        let Some(first) = first else {
            let frame = ServerFrame::Closed { sid: p.sid, reason: "the subscription ended".into() };
            let text = Outbound::text(protocol::encode_server(&frame), &p.budget);
            send(&p.out, &p.cancel, text).await;
            return;
        };
        let mut batch = Batch {
            sid: p.sid,
            subscription: None,
            binary: p.binary,
            assignments: p.assignments,
            messages: Vec::new(),
            raw: Vec::new(),
            frames: Vec::new(),
            items: 0,
            bytes: 0,
            held: Held::new(&p.budget, 0),
        };
        batch.add(first);
        let mut taken = 1;
        while taken < room && batch.bytes < BATCH_BYTES {
            match stream.try_next() {
                Some(item) => batch.add(item),
                None => break,
            }
            taken += 1;
        }
        if let Some(credit) = &p.credit {
            credit.spend(batch.items);
        }
        for frame in batch.finish() {
            send(&p.out, &p.cancel, frame).await;
        }
    }
}

async fn send(out: &mpsc::Sender<Outbound>, cancel: &CancellationToken, frame: Outbound) {
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = out.send(frame) => {}
    }
}

/// Frames built from a run of stream items, in order: JSON `deliver` frames, or binary ones when the
/// client asked for binary frames.
struct Batch {
    sid: u64,
    subscription: Option<crate::model::Name>,
    binary: bool,
    assignments: bool,
    messages: Vec<Delivered>,
    raw: Vec<BrokerDelivery>,
    frames: Vec<Outbound>,
    /// Items the client will count against its credit: deliveries and `lagged` notes.
    items: u64,
    /// Bytes of the deliveries' messages (payload, key, headers).
    bytes: usize,
    /// The bytes of the deliveries not yet in a frame, counted in the stream's budget.
    held: Held,
}

impl Batch {
    fn add(&mut self, item: Result<StreamItem, BrokerError>) {
        match item {
            Ok(StreamItem::Delivery(d)) => {
                self.items += 1;
                self.bytes += d.message.size();
                // Counted since the engine pushed it (or the tap's drain took it in).
                self.held.adopt(d.message.size());
                if self.subscription.is_none() {
                    self.subscription = d.token.as_ref().map(|t| t.subscription.clone());
                }
                if self.binary {
                    self.raw.push(d);
                } else {
                    self.messages.push(Delivered {
                        envelope: protocol::Envelope::from_message(&d.message, d.attempt),
                        lease: d.token.map(|t| t.lease),
                        deadline: d.deadline,
                    });
                }
            }
            // Outside the credit (the client does not count them), and only for a client that asked:
            // an older one would not know the op. In order with the deliveries around them.
            Ok(StreamItem::Assigned { partitions }) if self.assignments => {
                self.flush();
                self.push(&ServerFrame::Assigned { sid: self.sid, partitions });
            }
            Ok(StreamItem::Revoked { partitions }) if self.assignments => {
                self.flush();
                self.push(&ServerFrame::Revoked { sid: self.sid, partitions });
            }
            Ok(StreamItem::Assigned { .. } | StreamItem::Revoked { .. }) => {}
            Ok(StreamItem::Lagged { skipped }) => {
                self.items += 1;
                self.flush();
                self.push(&ServerFrame::Lagged { sid: self.sid, skipped });
            }
            Err(e) => {
                self.flush();
                self.push(&ServerFrame::Error {
                    id: None,
                    code: ErrorCode::Internal.number(),
                    message: e.to_string(),
                    index: None,
                });
            }
        }
    }

    fn push(&mut self, frame: &ServerFrame) {
        let text = protocol::encode_server(frame);
        self.frames.push(Outbound::text(text, &self.held.budget));
    }

    /// Encodes the deliveries gathered so far into a frame, which counts its own bytes from then on.
    fn flush(&mut self) {
        // Only one of the two is ever in use: the connection has binary frames or it has not.
        if !self.raw.is_empty() {
            let raw = std::mem::take(&mut self.raw);
            let bytes = protocol::binary::encode_deliver(self.sid, self.subscription.as_ref(), &raw);
            let held = self.held.hand_over(bytes.len());
            self.frames.push(Outbound::Binary(bytes, held));
        }
        if !self.messages.is_empty() {
            let messages = std::mem::take(&mut self.messages);
            let frame =
                ServerFrame::Deliver { sid: self.sid, subscription: self.subscription.clone(), messages };
            let text = protocol::encode_server(&frame);
            let held = self.held.hand_over(text.len());
            self.frames.push(Outbound::Text(text, held));
        }
    }

    /// The frames, each counting its own bytes.
    fn finish(mut self) -> Vec<Outbound> {
        self.flush();
        std::mem::take(&mut self.frames)
    }
}

/// Most tap items taken in under one lock.
const DRAIN_BATCH: usize = 256;

/// A tap's items taken into the server as they come, so that the tap's ring never fills behind a slow
/// client, and kept within the stream's byte budget by dropping the oldest: a tap cannot wait, and what
/// it drops is reported in the next `lagged`, as the ring's own drops are.
pub(crate) fn drained(
    mut tap: DeliveryStream,
    budget: Arc<ByteBudget>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> DeliveryStream {
    let shared = Arc::new(Drain {
        state: Mutex::new(DrainState {
            items: VecDeque::new(),
            held: Held::new(&budget, 0),
            skipped: 0,
            ended: false,
        }),
        ready: Notify::new(),
    });
    let stop = cancel.child_token();
    let task = {
        let shared = shared.clone();
        let stop = stop.clone();
        async move {
            loop {
                let first = tokio::select! {
                    () = stop.cancelled() => return,
                    item = tap.next() => item,
                };
                let mut items = vec![first];
                if items[0].is_some() {
                    while items.len() < DRAIN_BATCH {
                        match tap.try_next() {
                            Some(item) => items.push(Some(item)),
                            None => break,
                        }
                    }
                }
                shared.take_in(items);
                shared.ready.notify_one();
            }
        }
    };
    tasks.spawn(task);
    DeliveryStream::new(Box::new(DrainSource { shared, _stop: stop.drop_guard() }))
}

#[derive(Debug)]
struct Drain {
    state: Mutex<DrainState>,
    ready: Notify,
}

#[derive(Debug)]
struct DrainState {
    /// Items waiting for the pump, with their sizes.
    items: VecDeque<(Result<StreamItem, BrokerError>, usize)>,
    /// Their bytes, counted in the stream's budget.
    held: Held,
    /// Dropped before the first item waiting.
    skipped: u64,
    ended: bool,
}

impl Drain {
    fn take_in(&self, items: Vec<Option<Result<StreamItem, BrokerError>>>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for item in items {
            let Some(item) = item else {
                state.ended = true;
                continue;
            };
            let size = match &item {
                Ok(StreamItem::Delivery(d)) => d.message.size(),
                _ => 0,
            };
            // Room first, one item at a time, so the budget is never over by more than this item.
            while !state.held.budget.has_room() {
                let Some((old, old_size)) = state.items.pop_front() else {
                    break;
                };
                state.held.shrink(old_size);
                state.skipped += skipped(&old);
            }
            if state.held.budget.has_room() {
                state.held.grow(size);
                state.items.push_back((item, size));
            } else {
                // Nothing of this tap is waiting and the budget is still full (frames on their way to a
                // client that does not read): the new item is the one to go.
                state.skipped += skipped(&item);
            }
        }
    }

    fn take_out(&self) -> Option<Option<Result<StreamItem, BrokerError>>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.skipped > 0 {
            let skipped = std::mem::take(&mut state.skipped);
            return Some(Some(Ok(StreamItem::Lagged { skipped })));
        }
        match state.items.pop_front() {
            // The pump's batch takes the bytes over.
            Some((item, size)) => {
                state.held.hand_off(size);
                Some(Some(item))
            }
            None if state.ended => Some(None),
            None => None,
        }
    }
}

/// How many messages dropping this item drops (a `lagged` note stands for the ones it reports).
fn skipped(item: &Result<StreamItem, BrokerError>) -> u64 {
    match item {
        Ok(StreamItem::Delivery(_)) => 1,
        Ok(StreamItem::Lagged { skipped }) => *skipped,
        Ok(StreamItem::Assigned { .. } | StreamItem::Revoked { .. }) | Err(_) => 0,
    }
}

/// The pump's end of a drained tap.
struct DrainSource {
    shared: Arc<Drain>,
    _stop: DropGuard,
}

#[async_trait]
impl ItemSource for DrainSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let ready = self.shared.ready.notified();
            if let Some(item) = self.shared.take_out() {
                return item;
            }
            ready.await;
        }
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.shared.take_out().flatten()
    }
}
