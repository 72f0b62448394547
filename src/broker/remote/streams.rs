//! The client side of a subscription: a stream fed by the socket's reader, handing room back to the
//! server as it is read, unsubscribing when dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::calls::{call, lease_ref};
use super::{Inner, ItemBatch, Outgoing, REQUEST_TIMEOUT, RemoteBroker, StreamState, guard};
use crate::broker::{BrokerError, DeliveryStream, ItemSource, StreamItem, SubscribeRequest};
use crate::protocol::{self, ClientFrame, LeaseRef, Request, SubscribeSpec};

impl RemoteBroker {
    /// Subscribes on the server and registers the stream, so that a reconnect subscribes it again.
    pub(super) async fn open_stream(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        let prefetch = req.prefetch.unwrap_or(protocol::DEFAULT_PREFETCH).max(1);
        let spec = SubscribeSpec {
            patterns: req.patterns,
            subscription: req.subscription,
            from: req.from,
            ack: req.ack,
            consumer: req.consumer,
            prefetch: Some(prefetch),
            prefetch_bytes: None,
            credit: true,
            limit: req.limit,
            partition: req.partition,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        guard(&self.inner.streams).insert(id, StreamState { spec: spec.clone(), tx, delivered: 0 });
        if let Err(e) = call(&self.inner, Request::Subscribe(spec), Some(id), REQUEST_TIMEOUT).await {
            guard(&self.inner.streams).remove(&id);
            return Err(e);
        }
        let source = RemoteSource {
            inner: self.inner.clone(),
            id,
            rx,
            buffered: std::collections::VecDeque::new(),
            taken: 0,
            grant_every: u64::from(prefetch / 2).max(1),
        };
        Ok(DeliveryStream::new(Box::new(source)))
    }
}

/// A stream of deliveries from the server; dropping it unsubscribes. It hands room back to the server
/// (`credit` frames) as its reader takes items, half a prefetch at a time.
struct RemoteSource {
    inner: Arc<Inner>,
    id: u64,
    rx: mpsc::UnboundedReceiver<ItemBatch>,
    /// The rest of the last batch received.
    buffered: std::collections::VecDeque<Result<StreamItem, BrokerError>>,
    /// Items taken since room was last handed back.
    taken: u64,
    grant_every: u64,
}

impl RemoteSource {
    fn take(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        let item = self.buffered.pop_front()?;
        // The server counts deliveries and `lagged` notes against the stream's credit; assignment
        // changes are outside it, so handing room back for them would give the server room the
        // client does not have.
        if !matches!(item, Ok(StreamItem::Assigned { .. } | StreamItem::Revoked { .. })) {
            self.taken += 1;
        }
        Some(item)
    }

    /// The credit frame for what was taken, if it is time for one; `None` also when the stream has no
    /// server stream right now (reconnecting: the new one starts with full room).
    fn credit_frame(&mut self) -> Option<Outgoing> {
        if self.taken < self.grant_every {
            return None;
        }
        let n = std::mem::take(&mut self.taken);
        let sid = sid_of(&guard(&self.inner.sids), self.id)?;
        if self.inner.binary_settle.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(Outgoing::Binary(protocol::binary::encode_credit(sid, n)));
        }
        let frame = ClientFrame { id: None, request: Request::Credit { sid, n } };
        protocol::encode_client(&frame).ok().map(Outgoing::Text)
    }
}

#[async_trait]
impl ItemSource for RemoteSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        if self.taken >= self.grant_every {
            let out = guard(&self.inner.out).clone();
            // Room in the send queue first (the writer task empties it on its own), then the count:
            // a caller that drops this future while it waits (a `select!`) loses no credit, which
            // would leave the server holding this stream's deliveries back for good.
            if let Some(out) = out
                && let Ok(permit) = out.reserve().await
                && let Some(frame) = self.credit_frame()
            {
                permit.send(frame);
            }
        }
        while self.buffered.is_empty() {
            self.buffered.extend(self.rx.recv().await?);
        }
        self.take()
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        if self.buffered.is_empty()
            && let Ok(batch) = self.rx.try_recv()
        {
            self.buffered.extend(batch);
        }
        let item = self.take();
        if self.taken >= self.grant_every {
            let out = guard(&self.inner.out).clone();
            if let Some(out) = out
                && let Ok(permit) = out.try_reserve()
                && let Some(frame) = self.credit_frame()
            {
                permit.send(frame);
            }
            // Otherwise the next call hands the room back (`next` before it waits).
        }
        item
    }
}

impl RemoteSource {
    /// The leases of deliveries that arrived but were never taken by the reader.
    fn unread(&mut self) -> Vec<LeaseRef> {
        let mut items: Vec<_> = self.buffered.drain(..).collect();
        while let Ok(batch) = self.rx.try_recv() {
            items.extend(batch);
        }
        items
            .iter()
            .filter_map(|item| match item {
                Ok(StreamItem::Delivery(d)) => d.token.as_ref().map(lease_ref),
                _ => None,
            })
            .collect()
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        guard(&self.inner.streams).remove(&self.id);
        let unread = self.unread();
        let sid = {
            let mut sids = guard(&self.inner.sids);
            let sid = sid_of(&sids, self.id);
            if let Some(sid) = sid {
                sids.remove(&sid);
            }
            sid
        };
        if let (Some(sid), Some(out)) = (sid, guard(&self.inner.out).clone()) {
            // What the reader never saw goes back unseen first (the server handles a connection's
            // frames in order), so that leaving does not count it as a failed attempt.
            if !unread.is_empty() {
                let frame = ClientFrame { id: None, request: Request::Release { leases: unread } };
                if let Ok(text) = protocol::encode_client(&frame) {
                    let _ = out.try_send(Outgoing::Text(text));
                }
            }
            let frame = ClientFrame { id: None, request: Request::Unsubscribe { sid } };
            if let Ok(text) = protocol::encode_client(&frame) {
                // Best effort: if the queue is full the server will drop the stream with the connection.
                let _ = out.try_send(Outgoing::Text(text));
            }
        }
    }
}

/// The server's sid for client stream `id` on the current connection.
fn sid_of(sids: &HashMap<u64, u64>, id: u64) -> Option<u64> {
    sids.iter().find(|(_, stream)| **stream == id).map(|(sid, _)| *sid)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_read_given_up_while_the_send_queue_is_full_loses_no_credit() {
        let (out, mut queued) = mpsc::channel(1);
        let inner = super::super::test_inner(out.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let mut source =
            RemoteSource { inner, id: 1, rx, buffered: VecDeque::new(), taken: 8, grant_every: 8 };
        // The queue is full: the read waits for room and is given up, as a `select!` would.
        out.send(Outgoing::Text("busy".into())).await.unwrap_or_else(|_| unreachable!());
        let given_up = tokio::time::timeout(Duration::from_millis(20), source.next()).await;
        assert!(given_up.is_err(), "the read was still waiting for room");
        assert!(matches!(queued.recv().await, Some(Outgoing::Text(_))));
        // The next read hands all eight back.
        tx.send(vec![Ok(StreamItem::Lagged { skipped: 1 })]).unwrap_or_else(|_| unreachable!());
        assert!(matches!(source.next().await, Some(Ok(StreamItem::Lagged { skipped: 1 }))));
        match queued.try_recv() {
            Ok(Outgoing::Binary(frame)) => {
                let frame = bytes::Bytes::from(frame);
                let credit = protocol::binary::decode_credit(&frame).ok();
                assert_eq!(credit, Some((None, 5, 8)), "the credit of the given-up read is not lost");
            }
            _ => panic!("expected a binary credit frame"),
        }
    }
}
