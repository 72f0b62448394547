//! HTTP push, the Google Pub/Sub push contract: for every subscription configured with a push endpoint,
//! whichever process hosts the engine (the daemon, `serve`, or an in-process `mem://`) runs a pusher. A
//! pusher is an ordinary push consumer of its subscription (credit = the subscription's
//! `max_in_flight`, so that bounds how many POSTs are under way) that POSTs each delivery as a JSON
//! envelope and settles it by the answer: 2xx acks; any other status, a connection error or no answer
//! by the ack deadline nacks with the subscription's backoff. Failures in a row slow the whole
//! subscription down (a pause between pushes, 100 ms doubling to 60 s, gone at the first success).
//!
//! The body (documented in docs/PUSH.md):
//! `{"message": {"data": BASE64, "attributes": {...}, "messageId": "SEQ", "publishTime": RFC3339,
//! "orderingKey": KEY?, "subject": …, "topic": …, "seq": N, "partition": P}, "subscription": NAME,
//! "deliveryAttempt": N}`.

pub mod client;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::task::{AbortHandle, JoinSet};

use crate::engine::{AttachOptions, Engine, PushStatus};
use crate::model::{Delivery, Name, SubscriptionConfig};
use client::{Endpoint, Outcome};

/// How often the host looks for push subscriptions created, changed or deleted.
const WATCH: Duration = Duration::from_millis(200);

/// The first pause after a failure; it doubles with each failure in a row, up to [`MAX_SLOWDOWN`].
pub const MIN_SLOWDOWN: Duration = Duration::from_millis(100);
/// The longest pause between pushes.
pub const MAX_SLOWDOWN: Duration = Duration::from_secs(60);

static NEXT_PUSHER: AtomicU64 = AtomicU64::new(1);

/// Runs the pushers of an engine's push subscriptions until dropped.
#[derive(Debug)]
pub struct PushHost {
    task: tokio::task::JoinHandle<()>,
    /// Set on drop, under the lock a look at the engine holds: once the drop returns, the watch
    /// holds the engine no more (as the engine's ticker does).
    stopped: Arc<std::sync::Mutex<bool>>,
}

impl Drop for PushHost {
    fn drop(&mut self) {
        *self.stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        // Dropping the supervisor's task drops its JoinSet, which aborts every pusher.
        self.task.abort();
    }
}

impl PushHost {
    /// Starts watching `engine` for push subscriptions (inside a Tokio runtime).
    pub fn spawn(engine: Engine) -> PushHost {
        let stopped = Arc::new(std::sync::Mutex::new(false));
        PushHost { task: tokio::spawn(supervise(engine.downgrade(), stopped.clone())), stopped }
    }
}

/// The pause between pushes after `failures` failures in a row.
pub fn slowdown(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = failures.saturating_sub(1).min(20);
    MIN_SLOWDOWN.saturating_mul(1 << doublings).min(MAX_SLOWDOWN)
}

async fn supervise(weak: crate::engine::WeakEngine, stopped: Arc<std::sync::Mutex<bool>>) {
    let mut pushers: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<Name, (SubscriptionConfig, AbortHandle)> = HashMap::new();
    let mut watch = tokio::time::interval(WATCH);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        watch.tick().await;
        while pushers.try_join_next().is_some() {}
        // The engine is held only while looking (a running pusher holds it through its consumer).
        let stop = stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *stop {
            return;
        }
        let Some(engine) = weak.upgrade() else { return };
        let wanted = engine.push_subscriptions();
        running.retain(|name, (config, handle)| {
            let keep = !handle.is_finished() && wanted.iter().any(|w| &w.name == name && w == config);
            if !keep {
                handle.abort();
            }
            keep
        });
        for config in wanted {
            if !running.contains_key(&config.name) {
                let handle = pushers.spawn(run_pusher(engine.clone(), config.clone()));
                running.insert(config.name.clone(), (config, handle));
            }
        }
    }
}

/// One subscription's pusher: attaches, then POSTs each delivery on a task of its own.
async fn run_pusher(engine: Engine, config: SubscriptionConfig) {
    let Some(push) = &config.push else { return };
    let status = engine.push_status(&config.name);
    let endpoint = match Endpoint::new(push) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            tracing::warn!(subscription = %config.name, "push: {e}");
            status.started();
            status.failed(None, e);
            // Nothing to push to until the subscription changes; the host restarts a pusher whose
            // configuration changed.
            std::future::pending::<()>().await;
            return;
        }
    };
    let id = format!("http-push-{}", NEXT_PUSHER.fetch_add(1, Ordering::Relaxed));
    let opts = AttachOptions { consumer: Some(id), prefetch: None, limit: None };
    let mut consumer = match engine.attach(&config.name, opts) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(subscription = %config.name, "push: cannot attach: {e}");
            return;
        }
    };
    let name = config.name.clone();
    let mut requests: JoinSet<()> = JoinSet::new();
    while let Some(delivery) = consumer.recv().await {
        while requests.try_join_next().is_some() {}
        let pause = Duration::from_millis(status.slowdown_ms());
        if !pause.is_zero() {
            // The pause comes out of this delivery's lease, which is already running: it waits at most
            // half of what is left, so that a long slowdown slows the pushes without letting the
            // leases it holds run out (each would cost an attempt).
            let left = delivery.deadline.map_or(pause, |d| d.since(engine.now()));
            tokio::time::sleep(pause.min(left / 2)).await;
        }
        let job = Job {
            engine: engine.clone(),
            name: name.clone(),
            endpoint: endpoint.clone(),
            status: status.clone(),
            ack_deadline: config.ack_deadline,
        };
        requests.spawn(job.push(delivery));
    }
}

struct Job {
    engine: Engine,
    name: Name,
    endpoint: Arc<Endpoint>,
    status: Arc<PushStatus>,
    ack_deadline: Duration,
}

impl Job {
    async fn push(self, delivery: Delivery) {
        // The time left on the lease (a delivery may have waited out a slowdown in the channel).
        let left = match delivery.deadline {
            Some(deadline) => deadline.since(self.engine.now()),
            None => self.ack_deadline,
        };
        if left.is_zero() {
            // The lease ran out before the POST could start: the engine has already counted the
            // failure and will redeliver.
            return;
        }
        let body = body(&delivery, &self.name);
        self.status.started();
        let outcome = tokio::time::timeout(left, self.endpoint.post(body)).await;
        let failure = match outcome {
            Ok(Outcome::Status(code)) if (200..300).contains(&code) => {
                self.status.succeeded(code);
                if let Some(r) = delivery.lease {
                    match self.engine.ack_deferred(&self.name, r) {
                        Ok(pending) => {
                            let _ = pending.wait_async().await;
                        }
                        Err(e) => tracing::debug!(subscription = %self.name, "push: ack: {e}"),
                    }
                }
                return;
            }
            Ok(Outcome::Status(code)) => (Some(code), format!("HTTP {code}")),
            Ok(Outcome::Failed(e)) => (None, e),
            Err(_) => (None, format!("no answer within the ack deadline ({})", crate::human::duration(left))),
        };
        let failures = self.status.failed(failure.0, failure.1);
        self.status.set_slowdown(u64::try_from(slowdown(failures).as_millis()).unwrap_or(u64::MAX));
        if let Some(r) = delivery.lease {
            let engine = self.engine.clone();
            let name = self.name.clone();
            // A nack may wait for the journal's fdatasync.
            let nack = move || engine.nack(&name, r, None);
            let result =
                if crate::broker::can_block_in_place() { tokio::task::block_in_place(nack) } else { nack() };
            if let Err(e) = result {
                // Already expired (the deadline passed) or settled: the engine has dealt with it.
                tracing::debug!(subscription = %self.name, "push: nack: {e}");
            }
        }
    }
}

/// The JSON body of one push: Pub/Sub's push envelope, with this engine's position fields added.
pub fn body(delivery: &Delivery, subscription: &Name) -> Bytes {
    let m = &delivery.message;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut message = serde_json::Map::new();
    message.insert("data".into(), b64.encode(&m.payload).into());
    message.insert("attributes".into(), serde_json::to_value(m.headers()).unwrap_or_default());
    message.insert("messageId".into(), m.seq.to_string().into());
    message.insert("publishTime".into(), crate::protocol::envelope::format_time(m.publish_time).into());
    if let Some(key) = m.key() {
        match std::str::from_utf8(key) {
            Ok(text) => message.insert("orderingKey".into(), text.into()),
            Err(_) => message.insert("key_base64".into(), b64.encode(key).into()),
        };
    }
    if let Some(id) = m.msg_id() {
        message.insert("msg_id".into(), id.into());
    }
    message.insert("topic".into(), m.topic.as_str().into());
    message.insert("subject".into(), m.subject().as_str().into());
    message.insert("seq".into(), m.seq.into());
    message.insert("partition".into(), m.partition.into());
    let body = serde_json::json!({
        "message": message,
        "subscription": subscription.as_str(),
        "deliveryAttempt": delivery.attempt,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowdown_doubles_from_100ms_to_60s() {
        assert_eq!(slowdown(0), Duration::ZERO);
        assert_eq!(slowdown(1), Duration::from_millis(100));
        assert_eq!(slowdown(2), Duration::from_millis(200));
        assert_eq!(slowdown(4), Duration::from_millis(800));
        assert_eq!(slowdown(11), Duration::from_secs(60));
        assert_eq!(slowdown(u32::MAX), Duration::from_secs(60));
    }
}
