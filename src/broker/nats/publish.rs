//! Publishing, through core NATS or JetStream as the subject's stream decides, and request/reply.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::info::to_message;
use super::url::Mode;
use super::{KEY_HEADER, MSG_ID_HEADER, NatsBroker, js_error};
use crate::broker::{Broker, BrokerError};
use crate::model::{Clock, EngineError, Headers, Message, Name, PublishReceipt, PublishRequest, SystemClock};

impl NatsBroker {
    /// The body of [`Broker::publish_batch`]: each run of messages goes the way its subjects go.
    pub(super) async fn publish_routed(
        &self,
        msgs: Vec<PublishRequest>,
    ) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        if !self.has_jetstream() {
            return self.publish_core(&msgs).await;
        }
        // Runs of messages going the same way keep their order and share one flush or ack wait.
        // Each message's way is asked once; consecutive messages to one subject reuse the answer.
        let mut stored_by_msg = Vec::with_capacity(msgs.len());
        let mut last: Option<(&Name, bool)> = None;
        for m in &msgs {
            let stored = match last {
                Some((subject, stored)) if subject == &m.subject => stored,
                _ => self.stream_for_subject(m.subject.as_str()).await?.is_some(),
            };
            last = Some((&m.subject, stored));
            stored_by_msg.push(stored);
        }
        let mut receipts = Vec::with_capacity(msgs.len());
        let mut start = 0;
        while start < msgs.len() {
            let stored = stored_by_msg[start];
            let end = start + stored_by_msg[start..].iter().take_while(|s| **s == stored).count();
            let run = &msgs[start..end];
            let done = if stored {
                self.publish_jetstream(run).await
            } else if self.mode == Mode::JetStream {
                Err(BrokerError::Invalid(format!(
                    "no JetStream stream captures \"{}\" (mode=jetstream publishes only to streams)",
                    run[0].subject
                )))
            } else {
                self.publish_core(run).await
            };
            let done = done.map_err(|e| match e {
                BrokerError::Batch { index, source } if msgs.len() > 1 => {
                    BrokerError::Batch { index: start + index, source }
                }
                e if msgs.len() > 1 => BrokerError::Batch { index: start, source: Box::new(e) },
                e => e,
            })?;
            receipts.extend(done);
            start = end;
        }
        Ok(receipts)
    }

    /// Core publishes. They return once the client has queued them: its connection task writes them
    /// out at once, and [`Broker::close`] flushes before a command exits. (Core NATS has no publish
    /// acknowledgement; a flush per call would only prove the bytes left this process, at about half
    /// the throughput.)
    async fn publish_core(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        // Consecutive messages to one subject share its encoded form instead of copying it each time.
        let mut last: Option<(&Name, async_nats::Subject)> = None;
        for (index, m) in msgs.iter().enumerate() {
            let subject = match &last {
                Some((name, subject)) if *name == &m.subject => subject.clone(),
                _ => {
                    let subject = async_nats::Subject::from(m.subject.as_str());
                    last = Some((&m.subject, subject.clone()));
                    subject
                }
            };
            let sent = match nats_headers(m) {
                Some(headers) => self.client.publish_with_headers(subject, headers, m.payload.clone()).await,
                None => self.client.publish(subject, m.payload.clone()).await,
            };
            sent.map_err(|e| batch_error(index, msgs.len(), BrokerError::Invalid(format!("publish: {e}"))))?;
        }
        Ok(msgs.iter().map(|_| PublishReceipt::default()).collect())
    }

    /// JetStream publishes, sent back to back and then awaited, so a batch costs one round trip.
    async fn publish_jetstream(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut pending = Vec::with_capacity(msgs.len());
        for (index, m) in msgs.iter().enumerate() {
            let headers = nats_headers(m).unwrap_or_default();
            let ack = self
                .js
                .publish_with_headers(m.subject.to_string(), headers, m.payload.clone())
                .await
                .map_err(|e| batch_error(index, msgs.len(), js_error("publish", e)))?;
            pending.push(ack);
        }
        let mut receipts = Vec::with_capacity(pending.len());
        for (index, ack) in pending.into_iter().enumerate() {
            let ack = match ack.await {
                Ok(ack) => ack,
                Err(e) => {
                    let mut refused = publish_error(&msgs[index], e);
                    if let BrokerError::Engine(EngineError::MessageTooLarge { topic, max, .. }) = &mut refused
                    {
                        *max = self.max_message_size(topic).await.unwrap_or(0);
                    }
                    return Err(batch_error(index, msgs.len(), refused));
                }
            };
            receipts.push(PublishReceipt {
                topic: Name::new(&ack.stream).ok(),
                partition: 0,
                seq: ack.sequence,
                taps: 0,
                duplicate: ack.duplicate,
                unrouted: false,
            });
        }
        Ok(receipts)
    }

    /// The largest message the stream capturing `subject` takes, when it says.
    async fn max_message_size(&self, subject: &Name) -> Option<u32> {
        let stream = self.stream_for_subject(subject.as_str()).await.ok()??;
        let mut stream = self.js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        u32::try_from(info.config.max_message_size).ok().filter(|n| *n > 0)
    }

    /// The body of [`Broker::request`]: a core NATS request, its reply as a message.
    pub(super) async fn request_reply(
        &self,
        subject: &Name,
        payload: Bytes,
        headers: Headers,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let mut h = HeaderMap::new();
        for (k, v) in &headers {
            h.insert(k.as_str(), v.as_str());
        }
        let request = async_nats::Request::new().payload(payload).headers(h).timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), request).await {
            // The reply is shown under the request's subject (it arrives on a private inbox).
            Ok(reply) => {
                let now = SystemClock.now();
                to_message(None, subject.as_str(), reply.headers.as_ref(), reply.payload, 0, now)
                    .ok_or_else(|| BrokerError::Protocol("the request subject is unusable".into()))
            }
            Err(e) => {
                use async_nats::RequestErrorKind as K;
                Err(match e.kind() {
                    K::NoResponders => BrokerError::NoResponders { subject: subject.to_string() },
                    K::TimedOut => BrokerError::Timeout(timeout),
                    _ => BrokerError::Protocol(format!("request: {e}")),
                })
            }
        }
    }
}

/// Copies a message's headers, key and msg_id into NATS headers; `None` when it has none.
fn nats_headers(m: &PublishRequest) -> Option<HeaderMap> {
    if m.headers.is_empty() && m.key.is_none() && m.msg_id.is_none() {
        return None;
    }
    let mut h = HeaderMap::new();
    for (k, v) in &m.headers {
        h.insert(k.as_str(), v.as_str());
    }
    if let Some(key) = &m.key {
        h.insert(KEY_HEADER, String::from_utf8_lossy(key).as_ref());
    }
    if let Some(id) = &m.msg_id {
        h.insert(MSG_ID_HEADER, id.as_str());
    }
    Some(h)
}

fn batch_error(index: usize, len: usize, e: BrokerError) -> BrokerError {
    if len == 1 { e } else { BrokerError::Batch { index, source: Box::new(e) } }
}

/// A refused JetStream publish, classified by its kind and JetStream's error code: a message over the
/// stream's or server's limit is the model's `MessageTooLarge`, as on every other backend.
fn publish_error(m: &PublishRequest, e: async_nats::jetstream::context::PublishError) -> BrokerError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let mut source = std::error::Error::source(&e);
    let mut over_limit = e.kind() == K::MaxPayloadExceeded;
    while let Some(err) = source {
        if let Some(js) = err.downcast_ref::<async_nats::jetstream::Error>() {
            over_limit |= js.error_code() == async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM;
        }
        source = err.source();
    }
    if over_limit {
        let size = m.payload.len() + m.key.as_ref().map_or(0, |k| k.len());
        return BrokerError::Engine(EngineError::MessageTooLarge { topic: m.subject.clone(), size, max: 0 });
    }
    js_error("publish", e)
}
