//! Live PUB/SUB: SUBSCRIBE and PSUBSCRIBE on a connection of the listener's own, forwarded without
//! waiting (drops reported as `Lagged`), listening again after Redis restarts.

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::keys::redis_glob;
use super::{RedisBroker, error};
use crate::broker::kit::{Forwarder, reconnect};
use crate::broker::{
    BrokerDelivery, BrokerError, ChannelSource, DeliveryStream, StreamItem, SubscribeRequest,
};
use crate::model::{Message, Name};

/// Opens a PUB/SUB connection listening on `targets` (glob?, channel or pattern).
async fn listen(
    client: &redis::Client,
    targets: &[(bool, String)],
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    for (glob, text) in targets {
        if *glob {
            pubsub.psubscribe(text).await?;
        } else {
            pubsub.subscribe(text).await?;
        }
    }
    Ok(pubsub)
}

impl RedisBroker {
    /// Live PUB/SUB messages.
    pub(super) async fn subscribe_live(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        // Every pattern is translated (or refused) before anything is subscribed.
        let mut targets = Vec::new();
        for p in &req.patterns {
            let (glob, text) = redis_glob(p)?;
            if glob && let Some(prefix) = p.as_str().strip_suffix(".#") {
                targets.push((false, prefix.to_string()));
            }
            targets.push((glob, text));
        }
        let first = listen(&self.client, &targets).await.map_err(|e| error(&self.url, e))?;
        let (tx, rx) = mpsc::channel(req.prefetch.unwrap_or(4096).max(16) as usize);
        let (client, events) = (self.client.clone(), self.events.clone());
        let task = tokio::spawn(async move {
            // Redis pushes to a listener as fast as it publishes; a reader that falls behind loses the
            // newest messages, counted and reported as `Lagged`, never silently and never by stalling.
            let mut forward = Forwarder::new(tx, Some(events.clone()));
            let mut pubsub = first;
            loop {
                let mut messages = pubsub.into_on_message();
                loop {
                    let next = tokio::select! {
                        m = messages.next() => m,
                        alive = forward.catch_up(), if forward.owes_report() => {
                            if !alive {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(msg) = next else { break };
                    let channel = msg.get_channel_name().to_string();
                    // Channel names that are not valid names here (spaces, say) still arrive, as `$redis`.
                    let Ok(name) = Name::new(&channel).or_else(|_| Name::system("$redis.channel")) else {
                        continue;
                    };
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    let now = crate::model::Clock::now(&crate::model::SystemClock);
                    let message = Message::new(name.clone(), 0, 0, now, name, None, payload);
                    if !forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(message))).open() {
                        return;
                    }
                }
                // The connection dropped. PUB/SUB keeps nothing for absent listeners, so what was
                // published meanwhile is gone (at-most-once); listen again once Redis is back.
                let reason = "Redis closed the PUB/SUB connection".to_string();
                let again =
                    reconnect(&events, reason, || forward.is_closed(), || listen(&client, &targets)).await;
                match again {
                    Some(p) => pubsub = p,
                    None => return,
                }
            }
        });
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}
