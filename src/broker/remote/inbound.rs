//! Frames from the server, routed: answers to the calls waiting for them, deliveries and lag to the
//! stream they belong to.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Inner, ItemBatch, Reply, guard};
use crate::broker::{AckToken, BrokerDelivery, BrokerError, StreamItem};
use crate::model::Name;
use crate::protocol::{self, Delivered, ServerFrame, StreamReply};

/// Routes one frame from the server.
pub(super) async fn on_frame(inner: &Arc<Inner>, text: &str) {
    let frame = match protocol::decode_server(text) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable frame from server");
            return;
        }
    };
    match frame {
        ServerFrame::Ok { id, result } => {
            let Some(pending) = guard(&inner.pending).remove(&id) else {
                return;
            };
            if let (Some(stream), Some(result)) = (pending.stream, &result)
                && let Ok(reply) = serde_json::from_value::<StreamReply>(result.clone())
            {
                guard(&inner.sids).insert(reply.sid, stream);
            }
            let _ = pending.answer.send(Ok(Reply::Json(result)));
        }
        ServerFrame::Error { id: Some(id), code, message, index } => {
            if let Some(pending) = guard(&inner.pending).remove(&id) {
                let remote = BrokerError::Remote { code, message };
                let error = match index {
                    Some(index) => BrokerError::Batch { index, source: Box::new(remote) },
                    None => remote,
                };
                let _ = pending.answer.send(Err(error));
            }
        }
        ServerFrame::Error { id: None, code, message, .. } => {
            tracing::warn!(code, %message, "server reported an error");
        }
        ServerFrame::Deliver { sid, subscription, messages } => {
            let Some(tx) = stream_sender(inner, sid, messages.len()) else {
                return;
            };
            let items = messages
                .into_iter()
                .map(|m| to_delivery(m, subscription.as_ref()).map(StreamItem::Delivery))
                .collect();
            let _ = tx.send(items);
        }
        ServerFrame::Lagged { sid, skipped } => {
            if let Some(tx) = stream_sender(inner, sid, 0) {
                let _ = tx.send(vec![Ok(StreamItem::Lagged { skipped })]);
            }
        }
        ServerFrame::Closed { sid, .. } => {
            if let Some(stream) = guard(&inner.sids).remove(&sid) {
                guard(&inner.streams).remove(&stream);
            }
        }
        ServerFrame::Welcome { .. } => {}
    }
}

/// Routes one binary frame from the server: publish receipts or deliveries.
pub(super) async fn on_binary(inner: &Arc<Inner>, bytes: bytes::Bytes) {
    use protocol::binary;
    match bytes.first() {
        Some(&binary::RECEIPTS) => match binary::decode_receipts(&bytes) {
            Ok((id, receipts)) => {
                if let Some(pending) = guard(&inner.pending).remove(&id) {
                    let _ = pending.answer.send(Ok(Reply::Receipts(receipts)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable receipts from server"),
        },
        Some(&binary::SETTLED) => match binary::decode_settled(&bytes) {
            Ok(outcomes) => {
                let mut pending = guard(&inner.pending);
                let mut runs = guard(&inner.ack_runs);
                for (id, outcome) in outcomes {
                    let outcome = outcome.map_err(|(code, message)| BrokerError::Remote { code, message });
                    if let Some(waiting) = pending.remove(&id) {
                        let _ = waiting.answer.send(outcome.map(|()| Reply::Settled));
                        continue;
                    }
                    // One of a run of acks: the run with the highest first id at or below this one.
                    let complete = runs
                        .range_mut(..=id)
                        .next_back()
                        .and_then(|(&first, run)| run.record(first, id, outcome).then_some(first));
                    if let Some(run) = complete.and_then(|first| runs.remove(&first)) {
                        let _ = run.answer.send(run.outcomes);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable settle outcomes from server"),
        },
        Some(&binary::DELIVER) => match binary::decode_deliver(&bytes) {
            Ok((sid, deliveries)) => {
                let Some(tx) = stream_sender(inner, sid, deliveries.len()) else { return };
                let _ = tx.send(deliveries.into_iter().map(|d| Ok(StreamItem::Delivery(d))).collect());
            }
            Err(e) => tracing::warn!(error = %e, "undecodable deliveries from server"),
        },
        other => tracing::warn!(kind = ?other, "unknown binary frame from server"),
    }
}

/// The sender of the stream `sid` is, counting `deliveries` as received by it.
fn stream_sender(inner: &Inner, sid: u64, deliveries: usize) -> Option<mpsc::UnboundedSender<ItemBatch>> {
    let stream = *guard(&inner.sids).get(&sid)?;
    guard(&inner.streams).get_mut(&stream).map(|s| {
        s.delivered += deliveries as u64;
        s.tx.clone()
    })
}

pub(super) fn to_delivery(d: Delivered, subscription: Option<&Name>) -> Result<BrokerDelivery, BrokerError> {
    let message = d.envelope.to_message().map_err(|e| BrokerError::Protocol(e.to_string()))?;
    let token = match (d.lease, subscription) {
        (Some(lease), Some(sub)) => Some(AckToken {
            subscription: sub.clone(),
            partition: message.partition,
            seq: message.seq,
            lease,
            reply: None,
        }),
        _ => None,
    };
    Ok(BrokerDelivery { attempt: d.envelope.attempt, deadline: d.deadline, token, message })
}
