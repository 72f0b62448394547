//! Workers of durable subscriptions: each claims the next available deliveries of its subscription with
//! `FOR UPDATE SKIP LOCKED` (never two workers on one message), holding them until the ack deadline; a
//! notification of a new row, a settle by this process, a due retry or lease, or the slow poll wakes it.
//! Settling updates the delivery's row; deliveries past `max_deliveries` become `dead`, copied to the
//! dead-letter topic with the reason and attempts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc};
use tokio_postgres::Client;

use super::PostgresBroker;
use super::listen::{Listening, MESSAGE_COLUMNS, listen, message_of, table_note};
use super::url::Target;
use crate::broker::kit::reconnect;
use crate::broker::{
    AckToken, BrokerDelivery, BrokerError, ChannelSource, ConnectionEvent, DeliveryStream, Settle,
    StreamItem, SubscribeRequest, history_topic,
};
use crate::model::{AckMode, EngineError, Name, StartPosition, SubscriptionConfig, Timestamp};

/// Moves deliveries that used up `max_deliveries` (a nacked one, or an expired lease) to `dead`, and
/// copies them to the dead-letter topic. `$1` is the subscription; `{cond}` picks the rows of `d`.
fn dead_letter_sql(s: &str, cond: &str, reason: &str) -> String {
    format!(
        "WITH dead AS (
            UPDATE {s}.deliveries d SET state = 'dead', last_error = {reason}, deadline = NULL, updated_at = now()
            FROM {s}.subscriptions sub
            WHERE sub.name = d.subscription AND d.subscription = $1 AND {cond}
            RETURNING d.seq, d.attempts, d.last_error, d.topic, sub.dead_letter)
         INSERT INTO {s}.messages (topic, subject, key, headers, msg_id, payload)
         SELECT dead.dead_letter, coalesce(m.subject, m.topic), m.key,
                m.headers || jsonb_build_object('x-dead-letter-reason', dead.last_error,
                    'x-dead-letter-attempts', dead.attempts::text, 'x-dead-letter-subscription', $1::text,
                    'x-dead-letter-topic', m.topic, 'x-dead-letter-seq', dead.seq::text),
                m.msg_id, m.payload
         FROM dead JOIN {s}.messages m ON m.topic = dead.topic AND m.seq = dead.seq
         WHERE dead.dead_letter IS NOT NULL"
    )
}

/// Dead-letters what used up its deliveries in subscription `sub`.
async fn sweep(client: &Client, target: &Target, sub: &str) -> Result<(), tokio_postgres::Error> {
    let sql = dead_letter_sql(
        &target.s(),
        "sub.max_deliveries > 0 AND d.attempts >= sub.max_deliveries
         AND (d.state = 'failed' OR (d.state = 'in_flight' AND d.deadline <= now()))",
        "CASE WHEN d.state = 'in_flight' THEN 'ack deadline passed on attempt ' || d.attempts
              ELSE coalesce(d.last_error, 'nacked') END",
    );
    client.execute(&sql, &[&sub]).await.map(|_| ())
}

/// One worker of a subscription.
#[derive(Clone)]
struct Worker {
    target: Target,
    events: broadcast::Sender<ConnectionEvent>,
    subscription: Name,
    topic: Name,
    id: String,
    prefetch: i64,
    /// What this worker may still claim in all (`sub --count N`); no cap when `None`.
    left: Option<Arc<std::sync::atomic::AtomicI64>>,
    acked: bool,
    wake: Arc<Notify>,
}

/// Takes a worker out of the registry when its task ends, however it ends.
struct Registration {
    workers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

impl Worker {
    async fn connect(&self) -> Result<Listening, BrokerError> {
        let (wake, topic) = (self.wake.clone(), self.topic.as_str().to_string());
        let channel = self.target.messages_channel();
        listen(&self.target, &[channel], move |n| {
            if table_note(n).is_some_and(|(_, t)| t == topic) {
                wake.notify_one();
            }
            true
        })
        .await
    }

    async fn run(
        self,
        mut conn: Listening,
        tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
        _reg: Registration,
    ) {
        loop {
            let Some(reason) = self.serve(&mut conn, &tx).await else { return };
            let again = reconnect(&self.events, reason, || tx.is_closed(), || self.connect()).await;
            match again {
                Some(c) => conn = c,
                None => return,
            }
        }
    }

    async fn serve(
        &self,
        conn: &mut Listening,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
    ) -> Option<String> {
        loop {
            let wait = match self.claim_and_send(&conn.client, tx).await {
                Ok(Some(wait)) => wait,
                Ok(None) => return None,
                Err(e) => return Some(format!("claiming from {}: {e}", self.subscription)),
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                reason = &mut conn.ended => return Some(reason.unwrap_or_default()),
                () = tx.closed() => return None,
            }
        }
    }

    /// Claims what there is room for and hands it over; how long to wait before trying again (zero:
    /// at once), or `None` when the reader has gone.
    async fn claim_and_send(
        &self,
        client: &Client,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
    ) -> Result<Option<Duration>, tokio_postgres::Error> {
        let s = self.target.s();
        let sub = self.subscription.as_str();
        sweep(client, &self.target, sub).await?;
        let left = self.left.as_ref().map(|l| l.load(Ordering::Acquire));
        if left == Some(0) {
            // Everything it was asked for is claimed: the reader ends when it has read it.
            return Ok(None);
        }
        let room = left.map_or(self.prefetch, |l| l.min(self.prefetch));
        let sql = format!(
            "WITH sub AS (SELECT * FROM {s}.subscriptions WHERE name = $1),
             room AS (SELECT greatest(0, $3 - count(*)) AS n FROM {s}.deliveries
                      WHERE subscription = $1 AND state = 'in_flight' AND worker = $2 AND deadline > now()),
             pick AS (SELECT d.seq FROM {s}.deliveries d, sub
                      WHERE d.subscription = $1
                        AND ((d.state IN ('available', 'failed') AND d.available_at <= now())
                             OR (d.state = 'in_flight' AND d.deadline <= now()))
                        AND (sub.max_deliveries = 0 OR d.attempts < sub.max_deliveries)
                      ORDER BY d.seq LIMIT (SELECT n FROM room) FOR UPDATE OF d SKIP LOCKED),
             claimed AS (UPDATE {s}.deliveries d
                         SET state = 'in_flight', attempts = d.attempts + 1, worker = $2,
                             deadline = now() + sub.ack_deadline_ms * interval '1 millisecond',
                             first_delivered = coalesce(d.first_delivered, now()), updated_at = now()
                         FROM pick, sub WHERE d.subscription = $1 AND d.seq = pick.seq
                         RETURNING d.topic, d.seq, d.attempts, d.deadline)
             SELECT c.attempts, (extract(epoch from c.deadline) * 1000000)::int8, {MESSAGE_COLUMNS},
                    (SELECT n FROM room)
             FROM claimed c JOIN {s}.messages m ON m.topic = c.topic AND m.seq = c.seq ORDER BY c.seq"
        );
        let rows = client.query(&sql, &[&sub, &self.id, &room]).await?;
        if let Some(l) = &self.left {
            l.fetch_sub(i64::try_from(rows.len()).unwrap_or(0), Ordering::AcqRel);
        }
        let room = rows.first().map_or(0, |r| r.get::<_, i64>(10));
        for row in &rows {
            let Some(message) = message_of(row, 2) else { continue };
            let attempt = u32::try_from(row.get::<_, i32>(0)).unwrap_or(u32::MAX);
            let token = AckToken {
                subscription: self.subscription.clone(),
                partition: 0,
                seq: message.seq,
                lease: u64::from(attempt),
                reply: Some(self.id.clone()),
            };
            if !self.acked {
                let done = format!(
                    "UPDATE {s}.deliveries SET state = 'done', deadline = NULL, updated_at = now()
                     WHERE subscription = $1 AND seq = $2"
                );
                client.execute(&done, &[&sub, &i64::try_from(message.seq).unwrap_or(0)]).await?;
            }
            let delivery = BrokerDelivery {
                message,
                attempt: Some(attempt),
                deadline: Some(Timestamp::from_micros(row.get::<_, i64>(1))),
                token: self.acked.then_some(token),
            };
            if tx.send(Ok(StreamItem::Delivery(delivery))).await.is_err() {
                return Ok(None);
            }
        }
        if !rows.is_empty() && i64::try_from(rows.len()).unwrap_or(0) >= room {
            // A full claim: there may be more, and there may be room once these are settled.
            if self.acked {
                return Ok(Some(self.target.poll.min(Duration::from_millis(1000))));
            }
            return Ok(Some(Duration::ZERO));
        }
        if !rows.is_empty() {
            return Ok(Some(Duration::ZERO));
        }
        // Nothing to claim: wait until the next retry or lease falls due, at most the poll.
        let next = format!(
            "SELECT extract(epoch from min(CASE WHEN state = 'in_flight' THEN deadline ELSE available_at END) - now())::float8
             FROM {s}.deliveries WHERE subscription = $1 AND state IN ('available', 'failed', 'in_flight')"
        );
        let due = client.query_one(&next, &[&sub]).await?.get::<_, Option<f64>>(0);
        let wait = match due {
            Some(secs) if secs > 0.0 => Duration::from_secs_f64(secs).min(self.target.poll),
            Some(_) => Duration::from_millis(20),
            None => self.target.poll,
        };
        Ok(Some(wait.max(Duration::from_millis(5))))
    }
}

impl PostgresBroker {
    /// `sub TOPIC -s NAME`: a worker of the subscription (made on the topic when missing).
    pub(super) async fn subscribe_worker(
        &self,
        req: SubscribeRequest,
    ) -> Result<DeliveryStream, BrokerError> {
        let Some(name) = req.subscription.clone() else {
            return Err(BrokerError::Invalid("a worker needs a subscription name".into()));
        };
        let topic = history_topic(&req)?;
        if !self.table_exists(&topic).await? {
            return Err(BrokerError::Invalid(format!(
                "\"{topic}\" is a channel, which keeps nothing to share between workers: `pubsub topic create {topic}` makes a table topic for jobs"
            )));
        }
        let existing = {
            let client = self.client().await?;
            let sql = format!("SELECT topic FROM {}.subscriptions WHERE name = $1", self.target.s());
            client
                .query_opt(&sql, &[&name.as_str()])
                .await
                .map_err(|e| self.fail(&e))?
                .map(|r| r.get::<_, String>(0))
        };
        match existing {
            Some(t) if t != topic.as_str() => {
                return Err(BrokerError::Invalid(format!(
                    "subscription \"{name}\" belongs to topic \"{t}\", not \"{topic}\""
                )));
            }
            Some(_) => {}
            None => {
                let mut config = SubscriptionConfig::new(name.clone(), topic.clone());
                config.start = req.from.unwrap_or(StartPosition::New);
                config.ack_deadline = self.target.ack_deadline;
                match self.make_subscription(&config).await {
                    Ok(()) | Err(BrokerError::Engine(EngineError::SubscriptionExists(_))) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = req.consumer.clone().unwrap_or_else(|| format!("pubsub-{}-{n}", std::process::id()));
        let prefetch = req.prefetch.unwrap_or(32).max(1);
        let worker = Worker {
            target: self.target.clone(),
            events: self.events.clone(),
            subscription: name,
            topic,
            id: id.clone(),
            prefetch: i64::from(prefetch),
            left: req
                .limit
                .map(|n| Arc::new(std::sync::atomic::AtomicI64::new(i64::try_from(n).unwrap_or(i64::MAX)))),
            acked: req.ack != AckMode::None,
            wake: Arc::new(Notify::new()),
        };
        self.workers.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), worker.wake.clone());
        let reg = Registration { workers: self.workers.clone(), id };
        let conn = worker.connect().await?;
        let (tx, rx) = mpsc::channel(usize::try_from(prefetch).unwrap_or(32).max(1));
        let task = tokio::spawn(worker.run(conn, tx, reg));
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }

    /// Settles one delivery by its row: the lease (attempt) must still be the current one.
    pub(super) async fn settle_row(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        let s = self.target.s();
        let sub = token.subscription.as_str();
        let seq = i64::try_from(token.seq).unwrap_or(i64::MAX);
        let lease = i32::try_from(token.lease).unwrap_or(i32::MAX);
        let current = "d.subscription = $1 AND d.seq = $2 AND d.state = 'in_flight' AND d.attempts = $3";
        let client = self.client().await?;
        let changed = match &how {
            Settle::Ack => {
                let sql = format!(
                    "UPDATE {s}.deliveries d SET state = 'done', deadline = NULL, updated_at = now() WHERE {current}"
                );
                client.execute(&sql, &[&sub, &seq, &lease]).await
            }
            Settle::Nack(delay) => {
                let ms = i64::try_from(delay.unwrap_or_default().as_millis()).unwrap_or(i64::MAX);
                let sql = format!(
                    "UPDATE {s}.deliveries d SET state = 'failed', deadline = NULL, last_error = 'nacked',
                         available_at = now() + $4::int8 * interval '1 millisecond', updated_at = now() WHERE {current}"
                );
                let n = client.execute(&sql, &[&sub, &seq, &lease, &ms]).await;
                if matches!(n, Ok(1)) {
                    sweep(&client, &self.target, sub).await.map_err(|e| self.fail(&e))?;
                }
                n
            }
            // Back to available as if never claimed: the attempt it was claimed under is taken back.
            Settle::Release => {
                let sql = format!(
                    "UPDATE {s}.deliveries d SET state = 'available', attempts = greatest(0, d.attempts - 1),
                         worker = NULL, deadline = NULL, available_at = now(), updated_at = now() WHERE {current}"
                );
                client.execute(&sql, &[&sub, &seq, &lease]).await
            }
            Settle::Extend(by) => {
                let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
                let sql = format!(
                    "UPDATE {s}.deliveries d SET deadline = now() + $4::int8 * interval '1 millisecond', updated_at = now()
                     WHERE {current}"
                );
                client.execute(&sql, &[&sub, &seq, &lease, &ms]).await
            }
            Settle::Term(reason) => {
                let sql = dead_letter_sql(&s, "d.seq = $2 AND d.state = 'in_flight' AND d.attempts = $3", "$4::text");
                let reason = if reason.is_empty() { "terminated" } else { reason.as_str() };
                let done = client.execute(&sql, &[&sub, &seq, &lease, &reason]).await;
                // The INSERT counts copies, not settles: tell by the row's state.
                match done {
                    Ok(_) => {
                        let check = format!("SELECT 1 FROM {s}.deliveries WHERE subscription = $1 AND seq = $2 AND state = 'dead'");
                        client.query_opt(&check, &[&sub, &seq]).await.map(|r| u64::from(r.is_some()))
                    }
                    Err(e) => Err(e),
                }
            }
        }
        .map_err(|e| self.fail(&e))?;
        if changed > 0 {
            return Ok(());
        }
        let sql = format!("SELECT state, attempts FROM {s}.deliveries WHERE subscription = $1 AND seq = $2");
        let row = client.query_opt(&sql, &[&sub, &seq]).await.map_err(|e| self.fail(&e))?;
        match row {
            Some(r) if r.get::<_, &str>(0) == "done" && matches!(how, Settle::Ack) => Ok(()),
            Some(_) => {
                Err(EngineError::StaleLease { subscription: token.subscription.clone(), seq: token.seq }
                    .into())
            }
            None => Err(BrokerError::Invalid(format!(
                "subscription \"{sub}\" has no message {} (deleted, purged or never delivered)",
                token.seq
            ))),
        }
    }
}
