//! Publishing: one pipelined round trip per batch, XADD to streams and PUBLISH to channels, with one
//! retry after the command connection finds its socket dead.

use std::time::Duration;

use redis::Value;

use super::keys::{seq_of, text};
use super::{RedisBroker, error};
use crate::broker::BrokerError;
use crate::model::{PublishReceipt, PublishRequest};

fn xadd(key: &str, maxlen: Option<u64>, msg: &PublishRequest) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key);
    if let Some(n) = maxlen {
        // `~` lets Redis trim whole nodes: cheap, and the stream keeps at least `n` entries.
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg("payload").arg(msg.payload.as_ref());
    if let Some(k) = &msg.key {
        cmd.arg("key").arg(k.as_ref());
    }
    for (k, v) in &msg.headers {
        cmd.arg(format!("h:{k}")).arg(v);
    }
    cmd
}

impl RedisBroker {
    /// A batch through [`Self::publish_pipeline`], tried again once if the connection was down.
    pub(super) async fn publish_retrying(
        &self,
        msgs: &[PublishRequest],
    ) -> Result<Vec<PublishReceipt>, BrokerError> {
        // The command connection heals itself after a Redis restart, but the first command on the dead
        // socket fails; one retry hides that. (If the first attempt reached Redis before the socket died,
        // the retry publishes again: at-least-once, as any client retry.)
        match self.publish_pipeline(msgs).await {
            Err(BrokerError::Unreachable { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.publish_pipeline(msgs).await
            }
            other => other,
        }
    }

    /// One round trip for a whole batch (pipelined), deciding stream or channel per subject once.
    async fn publish_pipeline(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        let mut kinds: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for m in msgs {
            let key = m.subject.to_string();
            if let std::collections::hash_map::Entry::Vacant(slot) = kinds.entry(key) {
                let stream = self.is_stream(slot.key()).await?;
                slot.insert(stream);
            }
        }
        // PUBLISH carries a payload and nothing else: refuse what it would silently drop.
        for m in msgs {
            let stream = kinds.get(m.subject.as_str()).copied().unwrap_or(false);
            let extras = [
                (m.key.is_some(), "--key"),
                (!m.headers.is_empty(), "--header"),
                (m.msg_id.is_some(), "--msg-id"),
            ];
            if let (false, Some((_, what))) = (stream, extras.iter().find(|(set, _)| *set)) {
                return Err(BrokerError::Invalid(format!(
                    "\"{}\" is a Redis channel, and PUBLISH carries only the payload, so {what} would be lost; publish to a stream to keep keys and headers (`pubsub topic create {}` makes one)",
                    m.subject, m.subject
                )));
            }
        }
        let mut pipe = redis::pipe();
        for m in msgs {
            let key = m.subject.to_string();
            if kinds.get(&key).copied().unwrap_or(false) {
                pipe.add_command(xadd(&key, self.maxlen, m));
            } else {
                pipe.cmd("PUBLISH").arg(&key).arg(m.payload.as_ref());
            }
        }
        let replies: Vec<Value> =
            pipe.query_async(&mut self.conn.clone()).await.map_err(|e| error(&self.url, e))?;
        Ok(msgs
            .iter()
            .zip(replies)
            .map(|(m, reply)| match reply {
                Value::Int(n) => {
                    PublishReceipt { taps: u32::try_from(n).unwrap_or(0), ..PublishReceipt::default() }
                }
                other => PublishReceipt {
                    topic: Some(m.subject.clone()),
                    partition: 0,
                    seq: seq_of(&text(&other)),
                    taps: 0,
                    duplicate: false,
                    unrouted: false,
                },
            })
            .collect())
    }
}
