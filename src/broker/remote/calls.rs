//! Requests: sending one and waiting for its answer, publishing (JSON or binary batches within the
//! server's limits), and the translation of `Broker` calls into protocol requests.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::inbound::to_delivery;
use super::{AckRun, Answer, Inner, Outgoing, Pending, REQUEST_TIMEOUT, RemoteBroker, Reply, guard};
use crate::broker::{AckToken, Broker, BrokerDelivery, BrokerError, Settle};
use crate::model::{
    BrowseFrom, FetchOptions, Message, Name, PublishReceipt, PublishRequest, SeekTarget, TopicConfig,
};
use crate::protocol::binary::{SettleItem, SettleOp};
use crate::protocol::{
    self, BrowseSpec, ClientFrame, Delivered, Envelope, ErrorCode, LeaseRef, Request, SeekSpec, TopicSpec,
};

impl RemoteBroker {
    /// Publishes a batch whose messages all fit the server's limit: JSON, or binary frames of at most
    /// the server's frame size, in order; a failure names the index in the whole batch (everything before
    /// it was published).
    pub(super) async fn send_batch(
        &self,
        msgs: &[PublishRequest],
    ) -> Result<Vec<PublishReceipt>, BrokerError> {
        if !self.inner.binary.load(Ordering::Relaxed) {
            return self
                .call_as(Request::PublishBatch { messages: msgs.iter().map(envelope).collect() })
                .await;
        }
        let max_frame = self.inner.max_frame.load(Ordering::Relaxed);
        let mut receipts = Vec::with_capacity(msgs.len());
        for chunk in protocol::binary::publish_chunks(msgs, max_frame) {
            let offset = receipts.len();
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let frame = Outgoing::Binary(protocol::binary::encode_publish_batch(id, chunk));
            match send_and_wait(&self.inner, id, frame, None, REQUEST_TIMEOUT).await {
                Ok(Reply::Receipts(some)) => receipts.extend(some),
                Ok(Reply::Json(_) | Reply::Settled) => {
                    return Err(BrokerError::Protocol(
                        "not receipts: the answer to a binary publish batch".into(),
                    ));
                }
                Err(BrokerError::Batch { index, source }) => {
                    return Err(BrokerError::Batch { index: offset + index, source });
                }
                Err(e) if offset > 0 => {
                    return Err(BrokerError::Batch { index: offset, source: Box::new(e) });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(receipts)
    }

    /// An ack or nack as one item of a binary `settle` frame: the writer puts the ones queued together
    /// into one frame, and the server answers them together once they are on disk.
    pub(super) async fn settle_binary(
        &self,
        token: &AckToken,
        op: SettleOp,
        delay: Option<Duration>,
    ) -> Result<(), BrokerError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let item = SettleItem {
            id,
            partition: token.partition,
            seq: token.seq,
            lease: token.lease,
            delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1)),
        };
        let frame = Outgoing::Settle(op, token.subscription.clone(), item);
        match send_and_wait(&self.inner, id, frame, None, REQUEST_TIMEOUT).await? {
            Reply::Settled | Reply::Json(_) => Ok(()),
            Reply::Receipts(_) => Err(BrokerError::Protocol("publish receipts answered an ack".into())),
        }
    }

    /// Acks a run of deliveries with request ids that follow each other, sent as one message to the
    /// writer and answered together: one wait for the whole run instead of one per ack.
    pub(super) async fn ack_run(&self, tokens: &[AckToken]) -> Vec<Result<(), BrokerError>> {
        let inner = &self.inner;
        let fail_all = |e: &dyn Fn() -> BrokerError| tokens.iter().map(|_| Err(e())).collect();
        let first = inner.next_id.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        let items = tokens
            .iter()
            .zip(first..)
            .map(|(t, id)| {
                let item =
                    SettleItem { id, partition: t.partition, seq: t.seq, lease: t.lease, delay_ms: None };
                (t.subscription.clone(), item)
            })
            .collect();
        let Some(out) = guard(&inner.out).clone() else {
            return fail_all(&|| BrokerError::Disconnected {
                url: inner.url(),
                reason: "reconnecting".into(),
            });
        };
        let (answer, rx) = oneshot::channel();
        let outcomes = tokens.iter().map(|_| Ok(())).collect();
        guard(&inner.ack_runs).insert(first, AckRun { outcomes, left: tokens.len(), answer });
        let closed = || BrokerError::Disconnected { url: inner.url(), reason: "connection closed".into() };
        if out.send(Outgoing::Acks(items)).await.is_err() {
            guard(&inner.ack_runs).remove(&first);
            return fail_all(&closed);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(_)) => fail_all(&closed),
            Err(_) => {
                guard(&inner.ack_runs).remove(&first);
                fail_all(&|| BrokerError::Timeout(REQUEST_TIMEOUT))
            }
        }
    }

    /// Refuses a message over the server's announced size limit, in the server's own words.
    pub(super) fn check_size(&self, msg: &PublishRequest) -> Result<(), BrokerError> {
        let max = self.inner.max_message.load(Ordering::Relaxed);
        if msg.size() <= max {
            return Ok(());
        }
        Err(BrokerError::Remote {
            code: ErrorCode::MessageTooLarge.number(),
            message: format!(
                "message of {} bytes is larger than the server's limit of {max} bytes (`serve --max-message-bytes` raises it)",
                msg.size()
            ),
        })
    }

    pub(super) async fn call(&self, request: Request) -> Answer {
        call(&self.inner, request, None, REQUEST_TIMEOUT).await
    }

    pub(super) async fn call_as<T: DeserializeOwned>(&self, request: Request) -> Result<T, BrokerError> {
        let value = self.call(request).await?.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| BrokerError::Protocol(format!("unexpected answer: {e}")))
    }

    /// `publish_batch`: every message's options are checked, then the batch is sent up to the first
    /// message over the server's size limit, which is refused.
    pub(super) async fn publish_all(
        &self,
        msgs: Vec<PublishRequest>,
    ) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        let oversize = msgs.iter().enumerate().find_map(|(i, m)| self.check_size(m).err().map(|e| (i, e)));
        let Some((index, e)) = oversize else {
            return self.send_batch(&msgs).await;
        };
        // Everything before it goes first, as the server would have published it.
        if index > 0 {
            self.send_batch(&msgs[..index]).await?;
        }
        Err(BrokerError::Batch { index, source: Box::new(e) })
    }

    /// Fetches leased deliveries; the request waits for the fetch's own wait on top of the usual one.
    pub(super) async fn fetch_leased(
        &self,
        subscription: &Name,
        consumer: &str,
        opts: FetchOptions,
    ) -> Result<Vec<BrokerDelivery>, BrokerError> {
        let wait = opts.wait.unwrap_or_default();
        let request = Request::Fetch {
            subscription: subscription.clone(),
            consumer: consumer.to_string(),
            max_msgs: opts.max_msgs,
            max_bytes: (opts.max_bytes != u64::MAX).then_some(opts.max_bytes),
            wait_ms: opts.wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
        };
        let value = call(&self.inner, request, None, REQUEST_TIMEOUT + wait).await?;
        let delivered: Vec<Delivered> = serde_json::from_value(value.unwrap_or_default())
            .map_err(|e| BrokerError::Protocol(format!("unexpected answer: {e}")))?;
        delivered.into_iter().map(|d| to_delivery(d, Some(subscription))).collect()
    }

    /// Reads stored messages of `topic` without consuming them.
    pub(super) async fn browse_messages(
        &self,
        topic: &Name,
        from: BrowseFrom,
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let from = match from {
            BrowseFrom::Seq(s) => BrowseSpec::Seq(s),
            BrowseFrom::At { partition, seq } => BrowseSpec::At { partition, seq },
            BrowseFrom::Time(t) => BrowseSpec::Time(t),
            BrowseFrom::Last(n) => BrowseSpec::Last(n),
        };
        let envelopes: Vec<Envelope> =
            self.call_as(Request::Browse { topic: topic.clone(), from, max }).await?;
        envelopes
            .iter()
            .map(|e| e.to_message().map_err(|err| BrokerError::Protocol(err.to_string())))
            .collect()
    }
}

/// Sends a request and waits for its answer.
pub(super) async fn call(inner: &Inner, request: Request, stream: Option<u64>, timeout: Duration) -> Answer {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let text = protocol::encode_client(&ClientFrame { id: Some(id), request })
        .map_err(|e| BrokerError::Protocol(e.to_string()))?;
    match send_and_wait(inner, id, Outgoing::Text(text), stream, timeout).await? {
        Reply::Json(value) => Ok(value),
        Reply::Receipts(_) | Reply::Settled => {
            Err(BrokerError::Protocol("a binary answer to a JSON request".into()))
        }
    }
}

/// Queues a frame with request id `id` and waits for the answer to that id.
async fn send_and_wait(
    inner: &Inner,
    id: u64,
    frame: Outgoing,
    stream: Option<u64>,
    timeout: Duration,
) -> Result<Reply, BrokerError> {
    let text = frame;
    let (answer, rx) = oneshot::channel();
    let out = guard(&inner.out).clone();
    let Some(out) = out else {
        return Err(BrokerError::Disconnected { url: inner.url(), reason: "reconnecting".into() });
    };
    guard(&inner.pending).insert(id, Pending { answer, stream });
    if out.send(text).await.is_err() {
        guard(&inner.pending).remove(&id);
        return Err(BrokerError::Disconnected { url: inner.url(), reason: "connection closed".into() });
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(BrokerError::Disconnected { url: inner.url(), reason: "connection closed".into() }),
        Err(_) => {
            guard(&inner.pending).remove(&id);
            Err(BrokerError::Timeout(timeout))
        }
    }
}

/// The request that settles `token` the way `how` says.
pub(super) fn settle_request(token: &AckToken, how: Settle) -> Request {
    let lease = lease_ref(token);
    match how {
        Settle::Ack => Request::Ack(lease),
        Settle::Nack(delay) => {
            Request::Nack { lease, delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)) }
        }
        Settle::Extend(by) => {
            Request::Extend { lease, by_ms: u64::try_from(by.as_millis()).unwrap_or(u64::MAX) }
        }
        Settle::Term(reason) => Request::Term { lease, reason },
        Settle::Release => Request::Release { leases: vec![lease] },
    }
}

/// A topic's configuration as the protocol spells it (0 for no limit).
pub(super) fn topic_spec(config: &TopicConfig) -> TopicSpec {
    TopicSpec {
        name: Some(config.name.clone()),
        subjects: config.subjects.clone(),
        max_msgs: Some(config.limits.max_msgs.unwrap_or(0)),
        max_bytes: Some(config.limits.max_bytes.unwrap_or(0)),
        max_age_ms: Some(
            config.limits.max_age.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ),
        discard: Some(config.discard),
        max_msg_bytes: Some(config.max_msg_bytes),
        dedup_window_ms: Some(u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX)),
        durability: Some(config.durability.to_string()),
        segment_bytes: Some(config.segment_bytes),
        partitions: (config.partitions != 1).then_some(config.partitions),
        retention: config.retention.settles_delete().then_some(config.retention),
        max_msgs_per_key: config.limits.max_msgs_per_key,
    }
}

/// A seek target as the protocol spells it.
pub(super) fn seek_spec(target: SeekTarget) -> SeekSpec {
    match target {
        SeekTarget::Start => SeekSpec::Start,
        SeekTarget::End => SeekSpec::End,
        SeekTarget::Each(seq) => SeekSpec::Seq(seq),
        SeekTarget::Seq { partition, seq } => SeekSpec::At { partition, seq },
        SeekTarget::Time(t) => SeekSpec::Time(t),
    }
}

pub(super) fn lease_ref(token: &AckToken) -> LeaseRef {
    LeaseRef {
        subscription: token.subscription.clone(),
        partition: token.partition,
        seq: token.seq,
        lease: token.lease,
    }
}

pub(super) fn envelope(msg: &PublishRequest) -> Envelope {
    let (payload, payload_encoding) = protocol::envelope::encode_bytes(&msg.payload);
    let (key, key_encoding) = match &msg.key {
        Some(k) => {
            let (text, enc) = protocol::envelope::encode_bytes(k);
            (Some(text), (enc != protocol::Encoding::Utf8).then_some(enc))
        }
        None => (None, None),
    };
    Envelope {
        topic: String::new(),
        subject: msg.subject.to_string(),
        seq: 0,
        partition: 0,
        timestamp: None,
        key,
        key_encoding,
        msg_id: msg.msg_id.clone(),
        headers: msg.headers.clone(),
        attempt: None,
        payload: serde_json::Value::String(payload),
        payload_encoding,
    }
}
