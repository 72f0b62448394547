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
                return;
            }
            // A settle frame the server refused whole (it carries its first ack's id): the run that ack
            // belongs to fails, every ack of it with the server's words.
            let mut runs = guard(&inner.ack_runs);
            let first = runs
                .range(..=id)
                .next_back()
                .filter(|(first, run)| id - **first < run.outcomes.len() as u64)
                .map(|(first, _)| *first);
            if let Some(run) = first.and_then(|first| runs.remove(&first)) {
                let refused = || Err(BrokerError::Remote { code, message: message.clone() });
                let _ = run.answer.send(run.outcomes.iter().map(|_| refused()).collect());
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
        // Not deliveries: they take no credit, so they are not counted as received either.
        ServerFrame::Assigned { sid, partitions } => {
            if let Some(tx) = stream_sender(inner, sid, 0) {
                let _ = tx.send(vec![Ok(StreamItem::Assigned { partitions })]);
            }
        }
        ServerFrame::Revoked { sid, partitions } => {
            if let Some(tx) = stream_sender(inner, sid, 0) {
                let _ = tx.send(vec![Ok(StreamItem::Revoked { partitions })]);
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::super::{AckRun, test_inner};
    use super::*;

    /// Registers a run of `n` acks from request id `first`.
    fn run(inner: &Inner, first: u64, n: usize) -> oneshot::Receiver<Vec<Result<(), BrokerError>>> {
        let (answer, rx) = oneshot::channel();
        let outcomes = (0..n).map(|_| Ok(())).collect();
        guard(&inner.ack_runs).insert(first, AckRun { outcomes, left: n, answer });
        rx
    }

    #[tokio::test]
    async fn a_run_of_acks_hears_each_outcome_and_a_refused_frame_fails_the_run() {
        let (out, _queued) = tokio::sync::mpsc::channel(4);
        let inner = test_inner(out);
        let (mut first, mut second) = (run(&inner, 10, 3), run(&inner, 13, 2));
        let settled = protocol::binary::encode_settled(&[
            (10, Ok(())),
            (11, Err((1200, "no such lease".into()))),
            (13, Ok(())),
            (12, Ok(())),
        ]);
        on_binary(&inner, bytes::Bytes::from(settled)).await;
        let outcomes = first.try_recv().unwrap_or_default();
        assert_eq!(outcomes.len(), 3, "the run is answered once all three are in");
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok());
        assert!(matches!(&outcomes[1], Err(BrokerError::Remote { code: 1200, .. })));
        assert!(second.try_recv().is_err(), "one of two outcomes is not an answer");
        // The server refuses a frame under its first ack's id: the run it belongs to fails whole.
        on_frame(&inner, r#"{"op":"error","id":14,"code":1000,"message":"bad frame"}"#).await;
        let outcomes = second.try_recv().unwrap_or_default();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| matches!(o, Err(BrokerError::Remote { code: 1000, .. }))));
        assert!(guard(&inner.ack_runs).is_empty());
    }
}
