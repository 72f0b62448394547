//! Workers of durable subscriptions: each claims the next available deliveries of its subscription with
//! `FOR UPDATE SKIP LOCKED` (never two workers on one message), holding them until the ack deadline; a
//! notification of a new row, a settle by this process, a due retry or lease, or the slow poll wakes it.
//! Settling updates the delivery's row; deliveries past `max_deliveries` become `dead`, copied to the
//! dead-letter topic with the reason and attempts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
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
         AND d.state IN ('available', 'failed', 'in_flight')
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
    /// Whether the subscription has `max_deliveries` (then each claim first dead-letters what used
    /// up its deliveries).
    dead_letters: bool,
    /// New rows in the topic (notifications).
    rows: Arc<Notify>,
    /// Settles by this process.
    refill: Arc<Refill>,
}

/// Settles of one worker's deliveries by this process, counted so that a full worker claims again once
/// half its prefetch is free, not after every single ack (which would claim one row per statement).
pub(super) struct Refill {
    wake: Notify,
    settled: AtomicU32,
    half: u32,
}

impl Refill {
    fn new(prefetch: u32) -> Refill {
        Refill { wake: Notify::new(), settled: AtomicU32::new(0), half: (prefetch / 2).max(1) }
    }

    /// One of the worker's deliveries was settled.
    pub(super) fn settled(&self) {
        if self.settled.fetch_add(1, Ordering::Relaxed) + 1 >= self.half {
            self.wake.notify_one();
        }
    }

    /// Returns once half the prefetch was settled since the last claim (a wake-up left over from an
    /// earlier round does not count).
    async fn refilled(&self) {
        loop {
            self.wake.notified().await;
            if self.settled.load(Ordering::Relaxed) >= self.half {
                return;
            }
        }
    }
}

/// A worker's statements, prepared on its connection.
struct Prepared {
    held: tokio_postgres::Statement,
    claim: tokio_postgres::Statement,
    next: tokio_postgres::Statement,
}

/// What a worker does after a claim.
enum Next {
    /// Claim again at once.
    Now,
    /// Every delivery it may hold is out: wait for settles (or this long, for leases that lapse).
    Full(Duration),
    /// Nothing to claim: wait for new rows, settles, or this long (the next retry or lease due).
    Idle(Duration),
    /// The reader has gone.
    Gone,
}

/// Takes a worker out of the registry when its task ends, however it ends.
struct Registration {
    workers: Arc<Mutex<HashMap<String, Arc<Refill>>>>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

impl Worker {
    /// The worker's own connection: it LISTENs for new rows and claims. Its commits do not wait for
    /// the WAL flush (`synchronous_commit = off`): a claim lost in a server crash leaves its row
    /// available, which is what a lapsed lease does anyway, so durability buys nothing there. Acks,
    /// which must survive, go through the command connection with the server's own setting. Bitmap
    /// scans are off on it: with many unsettled rows the planner preferred gathering all of them and
    /// sorting (45 ms a claim at 50,000 pending) to walking the pending index in seq order and stopping
    /// after the room (11 ms); every statement of this connection wants the walk.
    async fn connect(&self) -> Result<Listening, BrokerError> {
        let (wake, topic) = (self.rows.clone(), self.topic.as_str().to_string());
        let channel = self.target.messages_channel();
        let conn = listen(&self.target, &[channel], move |n| {
            if table_note(n).is_some_and(|(_, t)| t == topic) {
                wake.notify_one();
            }
            true
        })
        .await?;
        conn.client
            .batch_execute(
                "SET synchronous_commit = off; SET plan_cache_mode = force_custom_plan; SET enable_bitmapscan = off",
            )
            .await
            .map_err(|e| super::url::error(&self.target.shown, &e))?;
        Ok(conn)
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
        let prepared = match self.prepare(&conn.client).await {
            Ok(p) => p,
            Err(e) => return Some(format!("preparing the claims of {}: {e}", self.subscription)),
        };
        loop {
            let (wait, rows) = match self.claim_and_send(&conn.client, &prepared, tx).await {
                Ok(Next::Now) => continue,
                Ok(Next::Full(wait)) => (wait, false),
                Ok(Next::Idle(wait)) => (wait, true),
                Ok(Next::Gone) => return None,
                Err(e) => return Some(format!("claiming from {}: {e}", self.subscription)),
            };
            tokio::select! {
                () = self.rows.notified(), if rows => {}
                () = self.refill.refilled() => {}
                () = tokio::time::sleep(wait) => {}
                reason = &mut conn.ended => return Some(reason.unwrap_or_default()),
                () = tx.closed() => return None,
            }
        }
    }

    /// Claims what there is room for and hands it over; how long to wait before trying again (zero:
    /// at once), or `None` when the reader has gone. A worker that does not ack claims straight to
    /// `done` in the same statement (at most once, as its subscription asked).
    /// The worker's statements, prepared once per connection (planning them took as long as running).
    async fn prepare(&self, client: &Client) -> Result<Prepared, tokio_postgres::Error> {
        let s = self.target.s();
        let claim = format!(
            "WITH sub AS (SELECT * FROM {s}.subscriptions WHERE name = $1),
             pick AS (SELECT d.seq FROM {s}.deliveries d, sub
                      WHERE d.subscription = $1 AND d.state IN ('available', 'failed', 'in_flight')
                        AND CASE WHEN d.state = 'in_flight' THEN d.deadline ELSE d.available_at END <= now()
                        AND (sub.max_deliveries = 0 OR d.attempts < sub.max_deliveries)
                      ORDER BY d.seq LIMIT $3 FOR UPDATE OF d SKIP LOCKED),
             claimed AS (UPDATE {s}.deliveries d
                         SET state = CASE WHEN $4 THEN 'in_flight' ELSE 'done' END,
                             attempts = d.attempts + 1, worker = $2,
                             deadline = CASE WHEN $4
                                 THEN now() + sub.ack_deadline_ms * interval '1 millisecond' END,
                             first_delivered = coalesce(d.first_delivered, now()), updated_at = now()
                         FROM pick, sub WHERE d.subscription = $1 AND d.seq = pick.seq
                         RETURNING d.topic, d.seq, d.attempts, d.deadline)
             SELECT c.attempts, coalesce((extract(epoch from c.deadline) * 1000000)::int8, 0), {MESSAGE_COLUMNS}
             FROM claimed c JOIN {s}.messages m ON m.topic = c.topic AND m.seq = c.seq ORDER BY c.seq"
        );
        let next = format!(
            "SELECT extract(epoch from min(CASE WHEN state = 'in_flight' THEN deadline ELSE available_at END) - now())::float8,
                    count(*) FILTER (WHERE state = 'in_flight' AND worker = $2 AND deadline > now())
             FROM {s}.deliveries WHERE subscription = $1 AND state IN ('available', 'failed', 'in_flight')"
        );
        // The room is counted first and given to the claim as a number: with the count inside the
        // claim, the planner could not tell how many rows it would take and joined them by scanning
        // the whole deliveries and messages tables (100 ms a claim at 150,000 rows).
        let held = format!(
            "SELECT count(*) FROM {s}.deliveries
             WHERE subscription = $1 AND state = 'in_flight' AND worker = $2 AND deadline > now()"
        );
        Ok(Prepared {
            held: client.prepare(&held).await?,
            claim: client.prepare(&claim).await?,
            next: client.prepare(&next).await?,
        })
    }

    async fn claim_and_send(
        &self,
        client: &Client,
        prepared: &Prepared,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
    ) -> Result<Next, tokio_postgres::Error> {
        let sub = self.subscription.as_str();
        // Settles from here on count towards the next claim.
        self.refill.settled.store(0, Ordering::Relaxed);
        if self.dead_letters {
            sweep(client, &self.target, sub).await?;
        }
        let left = self.left.as_ref().map(|l| l.load(Ordering::Acquire));
        if left == Some(0) {
            // Everything it was asked for is claimed: the reader ends when it has read it.
            return Ok(Next::Gone);
        }
        let held: i64 = client.query_one(&prepared.held, &[&sub, &self.id]).await?.get(0);
        let room = (self.prefetch - held).max(0);
        if room == 0 {
            return Ok(Next::Full(self.target.poll.min(Duration::from_millis(1000))));
        }
        let room = left.map_or(room, |l| l.min(room));
        let rows = client.query(&prepared.claim, &[&sub, &self.id, &room, &self.acked]).await?;
        if let Some(l) = &self.left {
            l.fetch_sub(i64::try_from(rows.len()).unwrap_or(0), Ordering::AcqRel);
        }
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
            let delivery = BrokerDelivery {
                message,
                attempt: Some(attempt),
                deadline: self.acked.then(|| Timestamp::from_micros(row.get::<_, i64>(1))),
                token: self.acked.then_some(token),
            };
            if tx.send(Ok(StreamItem::Delivery(delivery))).await.is_err() {
                return Ok(Next::Gone);
            }
        }
        if !rows.is_empty() && i64::try_from(rows.len()).unwrap_or(0) >= room {
            // Full: there may be more, and there will be room once these are settled.
            if self.acked {
                return Ok(Next::Full(self.target.poll.min(Duration::from_millis(1000))));
            }
            return Ok(Next::Now);
        }
        if !rows.is_empty() {
            return Ok(Next::Now);
        }
        // Nothing claimed: full (woken by rows it has no room for), or nothing to claim until the next
        // retry or lease falls due (at most the poll).
        let row = client.query_one(&prepared.next, &[&sub, &self.id]).await?;
        let (due, held) = (row.get::<_, Option<f64>>(0), row.get::<_, i64>(1));
        let wait = match due {
            Some(secs) if secs > 0.0 => Duration::from_secs_f64(secs).min(self.target.poll),
            Some(_) => Duration::from_millis(20),
            None => self.target.poll,
        };
        let wait = wait.max(Duration::from_millis(5));
        if self.acked && held >= self.prefetch {
            return Ok(Next::Full(wait.min(Duration::from_millis(1000))));
        }
        Ok(Next::Idle(wait))
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
            let sql = format!(
                "SELECT topic, max_deliveries FROM {}.subscriptions WHERE name = $1",
                self.target.s()
            );
            client
                .query_opt(&sql, &[&name.as_str()])
                .await
                .map_err(|e| self.fail(&e))?
                .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
        };
        let dead_letters = match existing {
            Some((t, _)) if t != topic.as_str() => {
                return Err(BrokerError::Invalid(format!(
                    "subscription \"{name}\" belongs to topic \"{t}\", not \"{topic}\""
                )));
            }
            Some((_, max_deliveries)) => max_deliveries > 0,
            None => {
                let mut config = SubscriptionConfig::new(name.clone(), topic.clone());
                config.start = req.from.unwrap_or(StartPosition::New);
                config.ack_deadline = self.target.ack_deadline;
                match self.make_subscription(&config).await {
                    // Made by another worker at the same moment: its limits are unknown here, so
                    // sweep for dead letters to be safe.
                    Err(BrokerError::Engine(EngineError::SubscriptionExists(_))) => true,
                    Ok(()) => config.max_deliveries > 0,
                    Err(e) => return Err(e),
                }
            }
        };
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
            dead_letters,
            rows: Arc::new(Notify::new()),
            refill: Arc::new(Refill::new(prefetch)),
        };
        self.workers.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), worker.refill.clone());
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
