//! Live subscriptions on the shared connection: the event loop that routes publishes to them and
//! completes publish waiters ([`run_shared`]), the routes, and [`LiveSource`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rumqttc::QoS;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::wire::{Client, Ev, Loop, LoopError};
use super::{MqttBroker, RETAINED_HEADER, to_message};
use crate::broker::kit::{Backoff, Forwarder};
use crate::broker::{
    BrokerDelivery, BrokerError, ConnectionEvent, DeliveryStream, ItemSource, StreamItem, SubscribeRequest,
};
use crate::model::Pattern;

/// MQTT filter matching of a raw topic (a literal filter is an exact topic).
fn topic_matches(filter: &str, topic: &str) -> bool {
    if filter.contains(['+', '#']) {
        crate::model::name::levels_match(filter, topic)
    } else {
        filter == topic
    }
}

/// A publish waiting for the broker (QoS 1/2) or the socket (QoS 0) to take it.
pub(super) struct Waiter {
    pub(super) qos: QoS,
    pub(super) done: oneshot::Sender<Result<(), String>>,
}

/// What the event loop task and the broker handle share.
#[derive(Default)]
pub(super) struct Shared {
    /// Live subscriptions: filter → senders.
    routes: Vec<(String, Pattern, Forwarder)>,
    /// Publishes handed to the client, in order, until the event loop sends them.
    pub(super) unsent: VecDeque<Waiter>,
    /// Sent QoS 1/2 publishes by packet id, until acked.
    unacked: HashMap<u16, oneshot::Sender<Result<(), String>>>,
}

pub(super) fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MqttBroker {
    /// Routes `filters` (one per pattern of `req`) from the shared connection to a new stream, and
    /// subscribes them.
    pub(super) async fn subscribe_live(
        &self,
        req: &SubscribeRequest,
        filters: Vec<String>,
    ) -> Result<DeliveryStream, BrokerError> {
        let (tx, rx) = mpsc::channel(req.prefetch.unwrap_or(4096).max(16) as usize);
        {
            let mut guard = lock(&self.shared);
            for (filter, pattern) in filters.iter().zip(&req.patterns) {
                guard.routes.push((
                    filter.clone(),
                    pattern.clone(),
                    Forwarder::new(tx.clone(), Some(self.events.clone())).with_reporter(),
                ));
            }
        }
        for filter in filters {
            self.client.subscribe(filter, self.options.qos).await.map_err(|e| BrokerError::Disconnected {
                url: self.target.shown.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(DeliveryStream::new(Box::new(LiveSource { rx, skip_retained: self.options.no_retained })))
    }
}

/// The shared connection's event loop: forwards publishes to live subscriptions, completes publish
/// waiters, reports drops and recoveries, and asks for the subscriptions again after a reconnect.
pub(super) async fn run_shared(
    mut eventloop: Loop,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<ConnectionEvent>,
    client: Client,
    qos: QoS,
) {
    let mut down = false;
    let mut backoff = Backoff::new();
    loop {
        // Each route's forwarder reports its drops from a task of its own as soon as its reader has room.
        match eventloop.poll().await {
            Ok(Ev::Publish(p)) => {
                let topic = p.topic.clone();
                let message = to_message(&p.topic, p.retain, p.payload, p.headers);
                let mut routes = std::mem::take(&mut lock(&shared).routes);
                routes.retain_mut(|(filter, _, forward)| {
                    // Routed by MQTT's own matching on the raw topic, so `.` in a topic is just a character.
                    if !topic_matches(filter, &topic) {
                        return !forward.is_closed();
                    }
                    let Some(message) = &message else {
                        // A topic no name can hold (e.g. with spaces): said, not dropped silently.
                        return forward.offer(StreamItem::Lagged { skipped: 1 }).open();
                    };
                    forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(message.clone()))).open()
                });
                let mut guard = lock(&shared);
                routes.append(&mut guard.routes);
                guard.routes = routes;
            }
            Ok(Ev::Sent(pkid)) => {
                let mut guard = lock(&shared);
                if let Some(waiter) = guard.unsent.pop_front() {
                    if waiter.qos == QoS::AtMostOnce {
                        let _ = waiter.done.send(Ok(()));
                    } else {
                        guard.unacked.insert(pkid, waiter.done);
                    }
                }
            }
            Ok(Ev::Acked(pkid)) => {
                if let Some(done) = lock(&shared).unacked.remove(&pkid) {
                    let _ = done.send(Ok(()));
                }
            }
            Ok(Ev::Rejected(pkid, reason)) => {
                if let Some(done) = lock(&shared).unacked.remove(&pkid) {
                    let _ = done.send(Err(format!("the broker refused the message: {reason}")));
                }
            }
            Ok(Ev::Closed) => return,
            Ok(Ev::ConnAck(_)) if down => {
                down = false;
                backoff.reset();
                let filters: Vec<String> = lock(&shared).routes.iter().map(|(f, _, _)| f.clone()).collect();
                let client = client.clone();
                // Resubscribing goes through the request channel, so it runs on its own task.
                tokio::spawn(async move {
                    for filter in filters {
                        let _ = client.subscribe(filter, qos).await;
                    }
                });
                let _ = events.send(ConnectionEvent::Reconnected);
            }
            Ok(_) => {}
            Err(LoopError::Done) => return,
            Err(e) => {
                let reason = match e {
                    LoopError::Refused { code, .. } => format!("connection refused: {code}"),
                    LoopError::Other(reason) => reason,
                    LoopError::Done => String::new(),
                };
                if !down {
                    down = true;
                    let _ = events.send(ConnectionEvent::Disconnected { reason: reason.clone() });
                }
                // Publishes in flight on the lost connection are failed rather than left hanging;
                // QoS 1/2 ones are resent by rumqttc on reconnect but their waiters are gone.
                {
                    let mut guard = lock(&shared);
                    // MQTT 3.1.1 has no way to say "too large": a broker just closes the connection.
                    let why = format!(
                        "the connection closed before the broker took the message ({reason}); a broker also \
                         does this to a message over its maximum packet size"
                    );
                    // Every waiting publish fails: the request that broke the connection (one over the
                    // broker's size limit) is gone, and sent-but-unacked ones went with the clean session.
                    // A publish that rumqttc still sends after a reconnect is then reported as failed
                    // although it arrived (at-least-once: a retry may duplicate it).
                    for waiter in guard.unsent.drain(..) {
                        let _ = waiter.done.send(Err(why.clone()));
                    }
                    for (_, done) in guard.unacked.drain() {
                        let _ = done.send(Err(why.clone()));
                    }
                }
                backoff.wait().await;
            }
        }
    }
}

/// A live subscription on the shared connection.
struct LiveSource {
    rx: mpsc::Receiver<Result<StreamItem, BrokerError>>,
    skip_retained: bool,
}

#[async_trait]
impl ItemSource for LiveSource {
    async fn next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let item = self.rx.recv().await?;
            if self.skip_retained && is_retained(&item) {
                continue;
            }
            return Some(item);
        }
    }

    fn try_next(&mut self) -> Option<Result<StreamItem, BrokerError>> {
        loop {
            let item = self.rx.try_recv().ok()?;
            if self.skip_retained && is_retained(&item) {
                continue;
            }
            return Some(item);
        }
    }
}

fn is_retained(item: &Result<StreamItem, BrokerError>) -> bool {
    matches!(item, Ok(StreamItem::Delivery(d)) if d.message.headers().contains_key(RETAINED_HEADER))
}
