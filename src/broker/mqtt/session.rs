//! Persistent sessions (durable subscriptions): a connection of their own per subscription, QoS 1,
//! a PUBACK only when the caller settles; the registry of open sessions that settles find them in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rumqttc::QoS;
use tokio::sync::mpsc;

use super::url::filter_for;
use super::wire::{self, Client, Ev, Held, LoopError};
use super::{MqttBroker, handshake, link_options, to_message};
use crate::broker::kit::Backoff;
use crate::broker::{
    AckToken, BrokerDelivery, BrokerError, ConnectionEvent, DeliveryStream, ItemSource, StreamItem,
    SubscribeRequest,
};
use crate::model::Name;

/// A persistent session: its own connection, QoS 1, acks only when the caller settles.
struct SessionSource {
    rx: mpsc::Receiver<Result<StreamItem, BrokerError>>,
}

#[async_trait]
impl ItemSource for SessionSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.recv().await
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        self.rx.try_recv().ok()
    }
}

/// Sessions by subscription name, so a settle finds the client that must send the PUBACK.
/// Open persistent sessions by client id: the connection, what it holds unacked, and which opening of
/// the session it is (a task that outlives its session must not touch the one that replaced it).
type Sessions = Arc<Mutex<HashMap<String, (Client, HashMap<u64, Held>, u64)>>>;

/// Numbers the openings of sessions.
static SESSION_OPENINGS: AtomicU64 = AtomicU64::new(1);

fn sessions() -> &'static Sessions {
    static SESSIONS: std::sync::OnceLock<Sessions> = std::sync::OnceLock::new();
    SESSIONS.get_or_init(Sessions::default)
}

impl MqttBroker {
    /// Opens the persistent session named after the subscription and subscribes it at QoS 1.
    pub(super) async fn subscribe_session(
        &self,
        name: &Name,
        req: &SubscribeRequest,
        filters: Vec<String>,
    ) -> Result<DeliveryStream, BrokerError> {
        let (client, mut eventloop) =
            wire::link(link_options(&self.target, &self.options, name.as_str(), false, true)?);
        handshake(&mut eventloop, &self.target.shown).await?;
        for filter in filters {
            // Queued before the event loop runs again, so nothing is published from its task.
            client.subscribe(filter, QoS::AtLeastOnce).await.map_err(|e| BrokerError::Disconnected {
                url: self.target.shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let opening = SESSION_OPENINGS.fetch_add(1, Ordering::Relaxed);
        sessions()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.as_str().to_string(), (client.clone(), HashMap::new(), opening));
        let (tx, rx) = mpsc::channel(req.prefetch.unwrap_or(256).max(1) as usize);
        let subscription = name.clone();
        let events = self.events.clone();
        let skip_retained = self.options.no_retained;
        let counter = Arc::new(AtomicU64::new(self.next_id.fetch_add(1_000_000, Ordering::Relaxed)));
        self.session_names.lock().unwrap_or_else(PoisonError::into_inner).push(name.as_str().to_string());
        let resubscribe: Vec<String> = req.patterns.iter().filter_map(|p| filter_for(p).ok()).collect();
        let task = tokio::spawn(async move {
            let mut down = false;
            let mut backoff = Backoff::new();
            loop {
                match eventloop.poll().await {
                    Ok(Ev::Publish(p)) => {
                        let p = *p;
                        if skip_retained && p.retain {
                            client.try_ack(&p.held);
                            continue;
                        }
                        let Some(message) = to_message(&p.topic, p.retain, p.payload.clone(), p.headers)
                        else {
                            // A topic no name can hold: acked so it does not come back forever, and said.
                            client.try_ack(&p.held);
                            let _ = tx.send(Ok(StreamItem::Lagged { skipped: 1 })).await;
                            continue;
                        };
                        let lease = counter.fetch_add(1, Ordering::Relaxed);
                        let attempt = if p.dup { 2 } else { 1 };
                        if let Some((_, held, _)) = sessions()
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_mut(subscription.as_str())
                            .filter(|(_, _, o)| *o == opening)
                        {
                            held.insert(lease, p.held);
                        }
                        let token = AckToken {
                            subscription: subscription.clone(),
                            partition: 0,
                            seq: 0,
                            lease,
                            reply: None,
                        };
                        let delivery = BrokerDelivery {
                            message,
                            attempt: Some(attempt),
                            deadline: None,
                            token: Some(token),
                        };
                        if tx.send(Ok(StreamItem::Delivery(delivery))).await.is_err() {
                            break;
                        }
                    }
                    Ok(Ev::ConnAck(session_present)) if down => {
                        down = false;
                        backoff.reset();
                        if !session_present {
                            // The broker lost the session (restarted without persistence, or it expired):
                            // subscribe again, from another task since this one polls the event loop.
                            let (client, filters) = (client.clone(), resubscribe.clone());
                            tokio::spawn(async move {
                                for filter in filters {
                                    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                                }
                            });
                        }
                        let _ = events.send(ConnectionEvent::Reconnected);
                    }
                    Ok(Ev::Closed) => break,
                    Ok(_) => {}
                    Err(LoopError::Done) => break,
                    Err(e) => {
                        if !down {
                            down = true;
                            let reason = match e {
                                LoopError::Refused { code, .. } => format!("connection refused: {code}"),
                                LoopError::Other(reason) => reason,
                                LoopError::Done => String::new(),
                            };
                            let _ = events.send(ConnectionEvent::Disconnected { reason });
                        }
                        if tx.is_closed() {
                            break;
                        }
                        backoff.wait().await;
                    }
                }
            }
            // The consumer went away: close the session's connection, leaving the session on the broker.
            client.try_disconnect();
            let mut all = sessions().lock().unwrap_or_else(PoisonError::into_inner);
            if all.get(subscription.as_str()).is_some_and(|(_, _, o)| *o == opening) {
                all.remove(subscription.as_str());
            }
        });
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
        Ok(DeliveryStream::new(Box::new(SessionSource { rx })))
    }

    /// Ends the persistent session `name` on the broker, with what waits in it: a clean connection with
    /// its client id discards the session, and the DISCONNECT that follows leaves nothing behind. An
    /// open session of this process with that name is closed first.
    pub(super) async fn end_session(&self, name: &Name) -> Result<(), BrokerError> {
        let open =
            sessions().lock().unwrap_or_else(PoisonError::into_inner).remove(name.as_str()).map(|(c, ..)| c);
        if let Some(client) = open {
            client.try_disconnect();
        }
        let (client, mut eventloop) =
            wire::link(link_options(&self.target, &self.options, name.as_str(), true, false)?);
        handshake(&mut eventloop, &self.target.shown).await?;
        client.try_disconnect();
        // Until the DISCONNECT has left (bounded: a broker that went away meanwhile ends it too).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match eventloop.poll().await {
                    Ok(Ev::Closed) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        Ok(())
    }

    /// Sends the PUBACK for the message `token` names, if its session still holds it.
    pub(super) async fn ack_held(&self, token: &AckToken) -> Result<(), BrokerError> {
        let (client, publish) = {
            let mut all = sessions().lock().unwrap_or_else(PoisonError::into_inner);
            let Some((client, held, _)) = all.get_mut(token.subscription.as_str()) else {
                return Err(BrokerError::Invalid(format!("no open session {}", token.subscription)));
            };
            (client.clone(), held.remove(&token.lease))
        };
        let Some(publish) = publish else {
            return Ok(()); // settled already
        };
        client
            .ack(&publish)
            .await
            .map_err(|reason| BrokerError::Disconnected { url: self.target.shown.clone(), reason })
    }

    /// DISCONNECT on every persistent session this broker opened.
    pub(super) fn disconnect_sessions(&self) {
        let names = std::mem::take(&mut *self.session_names.lock().unwrap_or_else(PoisonError::into_inner));
        for name in names {
            let client = sessions()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .map(|(c, _, _)| c.clone());
            if let Some(client) = client {
                client.try_disconnect();
            }
        }
    }
}
