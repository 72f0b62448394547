//! Stream readers: plain XREAD from a position and consumer groups (XREADGROUP, XAUTOCLAIM), each on a
//! connection of its own that rides out Redis restarts.
//!
//! A blocking read holds its connection for up to [`READ_BLOCK`], so readers never share the command
//! connection, and their connections wait [`READ_RESPONSE_TIMEOUT`] for a reply: the redis crate's
//! default (500 ms) is shorter than the block, which made every idle reader time out, reconnect and
//! say so about every 0.6 s.

use crate::broker::kit::Backoff;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult, ServerErrorKind, Value};
use tokio::sync::{broadcast, mpsc};

use super::durable::xgroup_create;
use super::keys::{entries, number, text};
use crate::broker::{AckToken, BrokerDelivery, BrokerError, ConnectionEvent, StreamItem};
use crate::model::Name;

/// How long one XREAD/XREADGROUP waits on the server for entries before it answers with nothing.
pub(super) const READ_BLOCK: Duration = Duration::from_millis(1000);

/// How long a reader's connection waits for any reply: well past the block, so an idle read is never a
/// timeout, yet a server that stopped answering is noticed within a few seconds.
pub(super) const READ_RESPONSE_TIMEOUT: Duration = Duration::from_millis(5000);

/// Where a reader task sends what it read.
pub(super) type ItemTx = mpsc::Sender<Result<StreamItem, BrokerError>>;

/// A connection for one reader, with the response timeout a blocking read needs.
pub(super) async fn connect(client: &redis::Client) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(READ_RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Whether waiting cures `e`: the connection broke or timed out, Redis refused connections (down or
/// restarting), or it is still loading its data set after a restart (LOADING).
pub(super) fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(ServerErrorKind::BusyLoading)
}

/// A reader's connection through outages: a command that fails for a reason waiting cures is retried on a
/// fresh connection with the toolkit's backoff (100 ms doubling to 5 s) until Redis answers it. The outage is reported
/// once as `Disconnected` when it starts and once as `Reconnected` when a command succeeds again.
pub(super) struct ReadLink {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    /// Run on each fresh connection after an outage (a group that a restart without persistence lost is
    /// made again); its own failure is ignored, the next command tells.
    on_reconnect: Option<redis::Cmd>,
    events: broadcast::Sender<ConnectionEvent>,
    /// Whether an outage has been reported and not yet ended.
    down: bool,
}

impl ReadLink {
    /// A link that starts on `conn`.
    pub(super) fn new(
        client: redis::Client,
        conn: MultiplexedConnection,
        on_reconnect: Option<redis::Cmd>,
        events: broadcast::Sender<ConnectionEvent>,
    ) -> ReadLink {
        ReadLink { client, conn: Some(conn), on_reconnect, events, down: false }
    }

    /// The current connection, if there is one (for side work whose failure the next `query` handles).
    pub(super) fn conn(&mut self) -> Option<&mut MultiplexedConnection> {
        self.conn.as_mut()
    }

    /// Runs `cmd` until Redis answers it. `Ok(None)` when the reader went away while Redis was out;
    /// `Err` for an error that waiting does not cure (a wrong type, a group deleted by someone).
    pub(super) async fn query(&mut self, cmd: &redis::Cmd, tx: &ItemTx) -> RedisResult<Option<Value>> {
        let mut backoff = Backoff::new();
        loop {
            if let Some(conn) = self.conn.as_mut() {
                match cmd.query_async::<Value>(conn).await {
                    Ok(value) => {
                        if self.down {
                            self.down = false;
                            let _ = self.events.send(ConnectionEvent::Reconnected);
                        }
                        return Ok(Some(value));
                    }
                    Err(e) if is_outage(&e) => {
                        self.outage(&e);
                        // A fresh connection each time: after LOADING the group may need making again.
                        self.conn = None;
                    }
                    Err(e) => return Err(e),
                }
            }
            if tx.is_closed() {
                return Ok(None);
            }
            backoff.wait().await;
            match connect(&self.client).await {
                Ok(mut conn) => {
                    if let Some(setup) = &self.on_reconnect {
                        let _: RedisResult<Value> = setup.query_async(&mut conn).await;
                    }
                    self.conn = Some(conn);
                }
                Err(e) => self.outage(&e),
            }
        }
    }

    /// Notes an outage, reporting it when it is a new one.
    fn outage(&mut self, e: &RedisError) {
        if !self.down {
            self.down = true;
            let _ = self.events.send(ConnectionEvent::Disconnected { reason: e.to_string() });
        }
    }
}

/// Reads `key` after the entry id `last` with XREAD, as a live stream of unacked deliveries.
pub(super) async fn plain(
    mut link: ReadLink,
    url: String,
    topic: Name,
    count: u32,
    mut last: String,
    tx: ItemTx,
) {
    let key = topic.to_string();
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count).arg("BLOCK").arg(block_ms()).arg("STREAMS").arg(&key).arg(&last);
        let value = match link.query(&cmd, &tx).await {
            Ok(Some(value)) => value,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(super::error(&url, e))).await;
                return;
            }
        };
        for (_, streams) in stream_replies(&value) {
            for (id, message) in entries(&topic, streams) {
                last = id;
                let d = BrokerDelivery::untracked(message);
                if tx.send(Ok(StreamItem::Delivery(d))).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn block_ms() -> u64 {
    u64::try_from(READ_BLOCK.as_millis()).unwrap_or(1000)
}

/// A consumer reading a stream through a consumer group.
pub(super) struct GroupRead {
    /// The broker's URL, for error messages.
    pub(super) url: String,
    pub(super) key: String,
    pub(super) group: Name,
    pub(super) consumer: String,
    /// Whether entries are acked (otherwise read with NOACK).
    pub(super) acked: bool,
    /// The most entries this consumer reads in all (`sub --count N`); no cap when `None`.
    pub(super) limit: Option<u64>,
    pub(super) topic: Name,
    /// How long an entry may stay pending before this consumer claims it.
    pub(super) ack_deadline: Duration,
}

impl GroupRead {
    /// The command that makes the group again (at the start of the stream) after a restart lost it.
    pub(super) fn recreate(key: &str, group: &Name) -> redis::Cmd {
        xgroup_create(key, group.as_str(), "0")
    }

    /// The XREADGROUP that reads up to `count` new entries.
    fn read_command(&self, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.group.as_str())
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms());
        if !self.acked {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS").arg(&self.key).arg(">");
        cmd
    }

    /// Reads until the receiving end goes away, Redis reports an error that waiting does not cure, or
    /// the consumer's total is read.
    ///
    /// Each read asks for no more than the receiving channel has room for (its size is the prefetch),
    /// so an entry becomes pending on this consumer only when there is a place to put it: a reader that
    /// stops leaves behind no pending entries it never saw (they would wait for the ack deadline and
    /// another consumer's claim).
    pub(super) async fn run(self, mut link: ReadLink, tx: ItemTx) {
        let mut last_claim = tokio::time::Instant::now();
        let mut left = self.limit.unwrap_or(u64::MAX);
        loop {
            if left == 0 {
                return;
            }
            // Wait for room, then take what there is room for.
            match tx.reserve().await {
                Ok(permit) => drop(permit),
                Err(_) => return,
            }
            let mut room = tx.capacity().min(usize::try_from(left).unwrap_or(usize::MAX)).max(1);
            // Claims are checked once a second, or sooner for deadlines under a second. A failed claim
            // is left to the read below, which waits out an outage.
            if self.acked && last_claim.elapsed() >= self.ack_deadline.min(Duration::from_secs(1)) {
                last_claim = tokio::time::Instant::now();
                if let Some(conn) = link.conn()
                    && let Ok(claimed) = self.claim(conn, room).await
                {
                    for d in claimed {
                        if tx.send(Ok(StreamItem::Delivery(d))).await.is_err() {
                            return;
                        }
                        left = left.saturating_sub(1);
                        room = room.saturating_sub(1);
                    }
                }
                if room == 0 {
                    continue;
                }
            }
            let cmd = self.read_command(room);
            let value = match link.query(&cmd, &tx).await {
                Ok(Some(value)) => value,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(super::error(&self.url, e))).await;
                    return;
                }
            };
            for (_, streams) in stream_replies(&value) {
                for (id, message) in entries(&self.topic, streams) {
                    let d = BrokerDelivery {
                        attempt: Some(1),
                        deadline: None,
                        token: self.token(&id, message.seq),
                        message,
                    };
                    if tx.send(Ok(StreamItem::Delivery(d))).await.is_err() {
                        return;
                    }
                    left = left.saturating_sub(1);
                }
            }
        }
    }

    fn token(&self, id: &str, seq: u64) -> Option<AckToken> {
        self.acked.then(|| AckToken {
            subscription: self.group.clone(),
            partition: 0,
            seq,
            lease: 0,
            reply: Some(format!("{}\u{1f}{id}", self.key)),
        })
    }

    /// Entries pending longer than the ack deadline with any consumer are claimed and redelivered here.
    async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        count: usize,
    ) -> RedisResult<Vec<BrokerDelivery>> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(self.group.as_str())
            .arg(&self.consumer)
            .arg(u64::try_from(self.ack_deadline.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(conn)
            .await?;
        let Value::Array(parts) = reply else { return Ok(Vec::new()) };
        let Some(claimed) = parts.get(1) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (id, message) in entries(&self.topic, claimed) {
            // XAUTOCLAIM counts the claim as a delivery; XPENDING tells how many there were.
            let detail: Value = redis::cmd("XPENDING")
                .arg(&self.key)
                .arg(self.group.as_str())
                .arg(&id)
                .arg(&id)
                .arg(1)
                .query_async(conn)
                .await?;
            let attempt = match &detail {
                Value::Array(rows) => rows.first().and_then(|r| match r {
                    Value::Array(f) => f.get(3).and_then(number),
                    _ => None,
                }),
                _ => None,
            };
            let attempt = attempt.and_then(|n| u32::try_from(n).ok()).or(Some(2));
            out.push(BrokerDelivery {
                attempt,
                deadline: None,
                token: self.token(&id, message.seq),
                message,
            });
        }
        Ok(out)
    }
}

/// `XREAD`/`XREADGROUP` replies: `[[stream, entries], …]` (RESP2) or a map (RESP3); nil when nothing arrived.
fn stream_replies(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(pair) => Some((text(pair.first()?), pair.get(1)?)),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    }
}
