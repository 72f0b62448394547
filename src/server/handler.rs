//! Requests of an authenticated connection, each answered with `ok` (and its result) or `error`.
//! The engine is reached through the same `Broker` interface every command uses.

use std::process;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::connection::{Connection, Outbound};
use super::pump::drained;
use crate::broker::local::batch_error;
use crate::broker::{AckToken, Broker, BrokerError, Settle, SubscribeRequest};
use crate::engine::{EngineError, PendingSync};
use crate::model::{AckRef, BrowseFrom, FetchOptions, Name, PublishReceipt, PublishRequest, SeekTarget};
use crate::protocol::binary::{SettleItem, SettleOp, SettleOutcome, SettleResult};
use crate::protocol::{
    BrowseSpec, CountReply, Delivered, Envelope, ErrorCode, LeaseRef, Request, SeekSpec, ServerStats,
};

impl Connection {
    /// Answers one request.
    pub(crate) async fn handle(&mut self, id: Option<u64>, request: Request) {
        let broker = self.shared.broker.clone();
        let outcome: Result<Option<serde_json::Value>, BrokerError> = match request {
            Request::Hello { .. } => {
                self.error(id, ErrorCode::BadField, "already greeted: send hello once").await;
                return;
            }
            Request::Ping => Ok(None),
            Request::Publish { message } => match self.to_request(&message) {
                Ok(req) => {
                    // One message: its receipt, and its error without the batch around it.
                    self.publish_later(id, vec![req], |outcome| {
                        let receipt = outcome.map_err(|e| BrokerError::Engine(e.unbatched()))?.pop();
                        Ok(Later::Json(value(receipt)))
                    });
                    return;
                }
                Err((code, msg)) => return self.error(id, code, &msg).await,
            },
            Request::PublishBatch { messages } => {
                let mut reqs = Vec::with_capacity(messages.len());
                for (i, m) in messages.iter().enumerate() {
                    match self.to_request(m) {
                        Ok(req) => reqs.push(req),
                        Err((code, msg)) => {
                            return self.error(id, code, &format!("message {i}: {msg}")).await;
                        }
                    }
                }
                self.publish_later(id, reqs, |outcome| Ok(Later::Json(value(outcome.map_err(batch_error)?))));
                return;
            }
            Request::Topics => broker.topics().await.map(value),
            Request::TopicInfo { topic } => broker.topic_info(&topic).await.map(value),
            Request::CreateTopic { spec } => match spec.to_config() {
                Ok(config) => broker.create_topic(config).await.map(value),
                Err(msg) => return self.error(id, ErrorCode::BadField, &msg).await,
            },
            Request::DeleteTopic { topic } => broker.delete_topic(&topic).await.map(|()| None),
            Request::PurgeTopic { topic } => {
                broker.purge_topic(&topic).await.map(|count| value(CountReply { count }))
            }
            Request::SetPartitions { topic, partitions } => {
                broker.set_partitions(&topic, partitions).await.map(value)
            }
            Request::Subscriptions { topic } => broker.subscriptions(topic.as_ref()).await.map(value),
            Request::SubscriptionInfo { subscription } => {
                broker.subscription_info(&subscription).await.map(value)
            }
            Request::CreateSubscription { spec } => {
                broker.create_subscription(spec.to_config()).await.map(value)
            }
            Request::DeleteSubscription { subscription } => {
                broker.delete_subscription(&subscription).await.map(|()| None)
            }
            Request::Subscribe(spec) => {
                let prefetch = spec.prefetch.unwrap_or(crate::protocol::DEFAULT_PREFETCH).max(1);
                if !self.admit_stream(id, prefetch).await {
                    return;
                }
                let tap = spec.subscription.is_none() && spec.from.is_none();
                let req = SubscribeRequest {
                    patterns: spec.patterns,
                    subscription: spec.subscription,
                    from: spec.from,
                    ack: spec.ack,
                    consumer: spec.consumer,
                    prefetch: Some(prefetch),
                    limit: spec.limit,
                    partition: spec.partition,
                    until_end: false,
                };
                let budget = self.stream_budget(spec.prefetch_bytes);
                match broker.subscribe_within(req, Some(budget.clone())) {
                    Ok(stream) => {
                        // A tap's ring cannot wait for the budget; its items are taken in as they come
                        // and the oldest dropped instead.
                        let stream = if tap {
                            drained(stream, budget.clone(), &self.tasks, &self.done)
                        } else {
                            stream
                        };
                        return self.open_stream(id, stream, prefetch, spec.credit, budget).await;
                    }
                    Err(e) => Err(e),
                }
            }
            Request::Unsubscribe { sid } => return self.close_stream(id, sid).await,
            Request::Credit { sid, n } => return self.grant(id, sid, n).await,
            Request::Fetch { subscription, consumer, max_msgs, max_bytes, wait_ms } => {
                let opts = FetchOptions {
                    max_msgs,
                    max_bytes: max_bytes.unwrap_or(u64::MAX),
                    wait: wait_ms.map(Duration::from_millis),
                    prefetch: None,
                };
                // A long poll must not hold up the connection's other requests.
                let done = self.done.clone();
                self.answer_later(id, async move {
                    let outcome = tokio::select! {
                        () = done.cancelled() => return None,
                        r = broker.fetch(&subscription, &consumer, opts) => r,
                    };
                    Some(outcome.map(|batch| {
                        let delivered: Vec<Delivered> = batch
                            .into_iter()
                            .map(|d| Delivered {
                                envelope: Envelope::from_message(&d.message, d.attempt),
                                lease: d.token.map(|t| t.lease),
                                deadline: d.deadline,
                            })
                            .collect();
                        Some(value_of(&delivered))
                    }))
                });
                return;
            }
            Request::Ack(lease) => match broker.ack_deferred(&token(lease)) {
                Ok(pending) if pending.is_empty() => Ok(None),
                // Applied now, in order; answered once on disk, while the next requests go on: acks
                // in flight together share one fdatasync.
                Ok(pending) => {
                    self.answer_later(id, async move {
                        Some(pending.wait_async().await.map(|()| None).map_err(BrokerError::Engine))
                    });
                    return;
                }
                Err(e) => Err(e),
            },
            Request::Nack { lease, delay_ms } => broker
                .settle(&token(lease), Settle::Nack(delay_ms.map(Duration::from_millis)))
                .await
                .map(|()| None),
            Request::Extend { lease, by_ms } => broker
                .settle(&token(lease), Settle::Extend(Duration::from_millis(by_ms)))
                .await
                .map(|()| None),
            Request::Term { lease, reason } => {
                broker.settle(&token(lease), Settle::Term(reason)).await.map(|()| None)
            }
            Request::Release { leases } => {
                let mut outcome = Ok(None);
                for lease in leases {
                    if let Err(e) = broker.settle(&token(lease), Settle::Release).await {
                        outcome = Err(e);
                        break;
                    }
                }
                outcome
            }
            Request::Seek { subscription, target } => {
                let target = match target {
                    SeekSpec::Start => SeekTarget::Start,
                    SeekSpec::End => SeekTarget::End,
                    SeekSpec::Seq(seq) => SeekTarget::Each(seq),
                    SeekSpec::At { partition, seq } => SeekTarget::Seq { partition, seq },
                    SeekSpec::Time(t) => SeekTarget::Time(t),
                };
                broker.seek(&subscription, target).await.map(|count| value(CountReply { count }))
            }
            Request::CreateSnapshot { snapshot, subscription, ttl_ms } => {
                let ttl = match ttl_ms {
                    None => Some(crate::model::SNAPSHOT_TTL),
                    Some(0) => None,
                    Some(ms) => Some(std::time::Duration::from_millis(ms)),
                };
                broker.create_snapshot(&snapshot, &subscription, ttl).await.map(value)
            }
            Request::Snapshots => broker.snapshots().await.map(value),
            Request::DeleteSnapshot { snapshot } => broker.delete_snapshot(&snapshot).await.map(|()| None),
            Request::SeekSnapshot { subscription, snapshot } => {
                broker.seek_snapshot(&subscription, &snapshot).await.map(|count| value(CountReply { count }))
            }
            Request::Browse { topic, from, max } => {
                let from = match from {
                    BrowseSpec::Seq(s) => BrowseFrom::Seq(s),
                    BrowseSpec::Time(t) => BrowseFrom::Time(t),
                    BrowseSpec::Last(n) => BrowseFrom::Last(n),
                    BrowseSpec::At { partition, seq } => BrowseFrom::At { partition, seq },
                };
                broker.browse(&topic, from, max).await.map(|messages| {
                    let envelopes: Vec<Envelope> =
                        messages.iter().map(|m| Envelope::from_message(m, None)).collect();
                    value(envelopes)
                })
            }
            Request::Peek { subscription, from, limit } => {
                broker.peek(&subscription, from, limit).await.map(value)
            }
            Request::Stats => Ok(value(ServerStats {
                engine: broker.engine().stats(),
                connections: self.shared.connections.load(Ordering::Relaxed),
                pending_connections: self.shared.pending.count() as u64,
                held_bytes: self.shared.held_bytes(),
                uptime_s: self.shared.started.elapsed().as_secs(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: process::id(),
            })),
            Request::Shutdown => {
                self.ok(id, None).await;
                tracing::info!("shutdown requested by a client");
                self.shared.shutdown.cancel();
                return;
            }
        };
        match outcome {
            Ok(result) => self.ok(id, result).await,
            Err(e) => self.send(&error_frame(id, &e)).await,
        }
    }

    /// Answers request `id` from a task of its own once `answer` is ready, while the connection goes on
    /// with its next requests: the result as an `ok` frame, or the error frame; nothing when `answer`
    /// gives `None` (the connection is closing).
    fn answer_later(
        &self,
        id: Option<u64>,
        answer: impl Future<Output = Option<Result<Option<serde_json::Value>, BrokerError>>> + Send + 'static,
    ) {
        self.reply_later(id, async move { answer.await.map(|r| r.map(Later::Json)) });
    }

    /// [`Connection::answer_later`] whose answer may be a binary frame.
    fn reply_later(
        &self,
        id: Option<u64>,
        answer: impl Future<Output = Option<Result<Later, BrokerError>>> + Send + 'static,
    ) {
        let out = self.out.clone();
        let budget = self.budget.clone();
        self.tasks.spawn(async move {
            let frame = match answer.await {
                None => return,
                Some(Ok(Later::Binary(bytes))) => Outbound::binary(bytes, &budget),
                Some(Ok(Later::Json(result))) => match id {
                    Some(id) => {
                        let ok = crate::protocol::ServerFrame::Ok { id, result };
                        Outbound::text(crate::protocol::encode_server(&ok), &budget)
                    }
                    None => return,
                },
                Some(Err(e)) => Outbound::text(crate::protocol::encode_server(&error_frame(id, &e)), &budget),
            };
            let _ = out.send(frame).await;
        });
    }

    /// Publishes now, in order, and answers once the disk confirmed the batch: `answer` turns its
    /// outcome (the receipts, or the engine's batch error) into the reply.
    fn publish_later(
        &self,
        id: Option<u64>,
        msgs: Vec<PublishRequest>,
        answer: impl FnOnce(Result<Vec<PublishReceipt>, EngineError>) -> Result<Later, BrokerError>
        + Send
        + 'static,
    ) {
        let pending = match self.shared.broker.publish_deferred(msgs) {
            Ok(pending) => pending,
            Err(e) => return self.reply_later(id, async move { Some(Err(e)) }),
        };
        self.reply_later(id, async move { Some(answer(pending.wait_async().await)) });
    }

    /// A binary `settle` frame: each lease acked (or nacked) in order, and one `settled` frame answering
    /// every request id once the acks are on disk; the acks of a frame, and of frames in flight together,
    /// share one fdatasync.
    pub(crate) async fn settle_binary(&self, op: SettleOp, subscription: Name, items: Vec<SettleItem>) {
        let broker = &self.shared.broker;
        let error = |e: &BrokerError| (code_of(e).number(), e.to_string());
        let (outcomes, owed): (Vec<SettleResult>, PendingSync) = match op {
            SettleOp::Ack => {
                let refs: Vec<AckRef> = items
                    .iter()
                    .map(|i| AckRef { partition: i.partition, seq: i.seq, lease: i.lease })
                    .collect();
                match broker.ack_batch_deferred(&subscription, &refs) {
                    Ok((outcomes, owed)) => {
                        (outcomes.into_iter().map(|o| o.map_err(|e| error(&e))).collect(), owed)
                    }
                    // The subscription itself is missing: every ack fails the same way.
                    Err(e) => (items.iter().map(|_| Err(error(&e))).collect(), PendingSync::default()),
                }
            }
            SettleOp::Nack => {
                let mut outcomes = Vec::with_capacity(items.len());
                for item in &items {
                    let token = AckToken {
                        subscription: subscription.clone(),
                        partition: item.partition,
                        seq: item.seq,
                        lease: item.lease,
                        reply: None,
                    };
                    let delay = item.delay_ms.map(Duration::from_millis);
                    outcomes.push(broker.settle(&token, Settle::Nack(delay)).await.map_err(|e| error(&e)));
                }
                (outcomes, PendingSync::default())
            }
        };
        let mut outcomes: Vec<SettleOutcome> =
            items.iter().zip(outcomes).map(|(item, outcome)| (item.id, outcome)).collect();
        if owed.is_empty() {
            return self.send_binary(crate::protocol::binary::encode_settled(&outcomes)).await;
        }
        self.reply_later(None, async move {
            if let Err(e) = owed.wait_async().await {
                // Applied but not confirmed by the disk: every ack that was applied hears so.
                let e = error(&BrokerError::Engine(e));
                for (_, outcome) in outcomes.iter_mut().filter(|(_, o)| o.is_ok()) {
                    *outcome = Err(e.clone());
                }
            }
            Some(Ok(Later::Binary(crate::protocol::binary::encode_settled(&outcomes))))
        });
    }

    /// A binary publish batch: answered with a binary receipts frame, or a JSON error naming the
    /// message that failed.
    pub(crate) async fn publish_binary(&self, id: u64, msgs: Vec<PublishRequest>) {
        let max = self.shared.config.limits.max_message_bytes;
        if let Some((i, m)) = msgs.iter().enumerate().find(|(_, m)| m.size() > max) {
            let msg = format!(
                "message {i}: message of {} bytes is larger than the server's limit of {max} bytes",
                m.size()
            );
            return self.error(Some(id), ErrorCode::MessageTooLarge, &msg).await;
        }
        self.publish_later(Some(id), msgs, move |outcome| {
            Ok(Later::Binary(crate::protocol::binary::encode_receipts(id, &outcome.map_err(batch_error)?)))
        });
    }

    /// The publish request of an envelope, refusing messages over the server's size limit.
    fn to_request(&self, envelope: &Envelope) -> Result<PublishRequest, (ErrorCode, String)> {
        let req = envelope.to_request().map_err(|e| (e.code(), e.to_string()))?;
        let max = self.shared.config.limits.max_message_bytes;
        if req.size() > max {
            let msg =
                format!("message of {} bytes is larger than the server's limit of {max} bytes", req.size());
            return Err((ErrorCode::MessageTooLarge, msg));
        }
        Ok(req)
    }
}

/// A reply sent once its request is done.
enum Later {
    /// The result of an `ok` frame.
    Json(Option<serde_json::Value>),
    /// A binary frame.
    Binary(Vec<u8>),
}

fn token(lease: LeaseRef) -> AckToken {
    AckToken {
        subscription: lease.subscription,
        partition: lease.partition,
        seq: lease.seq,
        lease: lease.lease,
        reply: None,
    }
}

fn value<T: Serialize>(v: T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

fn value_of<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The error frame for a broker failure.
fn error_frame(id: Option<u64>, e: &BrokerError) -> crate::protocol::ServerFrame {
    let index = match e {
        BrokerError::Batch { index, .. } => Some(*index),
        _ => None,
    };
    crate::protocol::ServerFrame::Error { id, code: code_of(e).number(), message: e.to_string(), index }
}

/// The protocol's code for a broker failure (a batch's is its failing message's).
pub(crate) fn code_of(e: &BrokerError) -> ErrorCode {
    match e {
        BrokerError::Engine(engine) => ErrorCode::of(engine),
        BrokerError::Unsupported { .. } => ErrorCode::NotSupported,
        BrokerError::Invalid(_) => ErrorCode::BadField,
        BrokerError::Batch { source, .. } => match source.as_ref() {
            BrokerError::Engine(engine) => ErrorCode::of(engine),
            _ => ErrorCode::Internal,
        },
        _ => ErrorCode::Internal,
    }
}
