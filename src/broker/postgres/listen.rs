//! Dedicated LISTEN connections and the live readers on them: channels (each NOTIFY is a message) and
//! table topics (a notification says a row is there; the reader reads the table from its cursor, so a
//! missed notification or an outage loses nothing, and a slow poll is the safety net).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_postgres::{AsyncMessage, Client, Notification, Row};

use super::PostgresBroker;
use super::publish::check_channel;
use super::url::{Target, error};
use crate::broker::kit::{Forwarder, reconnect};
use crate::broker::{
    Broker, BrokerDelivery, BrokerError, Capability, ChannelSource, ConnectionEvent, DeliveryStream,
    StreamItem, SubscribeRequest, history_topic,
};
use crate::model::{Clock, EngineError, Message, MessageExtra, Name, StartPosition, SystemClock, Timestamp};

/// The columns `message_of` reads, from `{s}.messages m`.
pub(super) const MESSAGE_COLUMNS: &str = "m.topic, m.seq, m.subject, m.key, m.headers::text, m.msg_id, m.payload, \
     (extract(epoch from m.published_at) * 1000000)::int8";

/// A message from a row of `MESSAGE_COLUMNS` starting at column `at`.
pub(super) fn message_of(row: &Row, at: usize) -> Option<Message> {
    let topic = Name::new(row.get::<_, &str>(at)).ok()?;
    let seq = u64::try_from(row.get::<_, i64>(at + 1)).ok()?;
    let subject = match row.get::<_, Option<&str>>(at + 2) {
        Some(s) => Name::new(s).ok()?,
        None => topic.clone(),
    };
    let key = row.get::<_, Option<Vec<u8>>>(at + 3).map(Bytes::from);
    let headers = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(row.get(at + 4))
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let msg_id = row.get::<_, Option<String>>(at + 5);
    let payload = Bytes::from(row.get::<_, Vec<u8>>(at + 6));
    let time = Timestamp::from_micros(row.get::<_, i64>(at + 7));
    Some(Message::new(topic, 0, seq, time, subject, MessageExtra::pack(key, msg_id, headers), payload))
}

/// `name` as a quoted SQL identifier.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A LISTEN connection: its client, and the task driving it, which ends with the reason it closed.
pub(super) struct Listening {
    pub(super) client: Client,
    pub(super) ended: tokio::task::JoinHandle<String>,
}

/// Opens a connection that LISTENs on `channels`, handing each notification to `on_note` (which says
/// whether anyone still wants them).
pub(super) async fn listen(
    target: &Target,
    channels: &[String],
    mut on_note: impl FnMut(&Notification) -> bool + Send + 'static,
) -> Result<Listening, BrokerError> {
    let (client, mut connection) = target.connect().await?;
    let ended = tokio::spawn(async move {
        loop {
            match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if !on_note(&n) {
                        return String::new();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("the LISTEN connection failed: {e}"),
                None => return "the LISTEN connection closed".into(),
            }
        }
    });
    for channel in channels {
        client
            .batch_execute(&format!("LISTEN {}", ident(channel)))
            .await
            .map_err(|e| error(&target.shown, &e))?;
    }
    Ok(Listening { client, ended })
}

/// The `SEQ TOPIC` of a table notification.
pub(super) fn table_note(n: &Notification) -> Option<(u64, &str)> {
    let (seq, topic) = n.payload().split_once(' ')?;
    Some((seq.parse().ok()?, topic))
}

/// One live (or history) reader of channels and table topics.
#[derive(Clone)]
struct Reader {
    target: Target,
    events: broadcast::Sender<ConnectionEvent>,
    channels: Vec<String>,
    /// Table topics with the last seq handed over.
    tables: Vec<(Name, u64)>,
    /// History reads wait for the reader; live reads drop and count.
    history: bool,
    wake: Arc<Notify>,
}

impl Reader {
    /// The channels to LISTEN on and what to do with each notification.
    async fn connect(
        &self,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
    ) -> Result<Listening, BrokerError> {
        let mut listened = self.channels.clone();
        let messages = self.target.messages_channel();
        if !self.tables.is_empty() {
            listened.push(messages.clone());
        }
        let ours: HashSet<String> = self.channels.iter().cloned().collect();
        let tables: HashSet<String> = self.tables.iter().map(|(t, _)| t.as_str().to_string()).collect();
        let wake = self.wake.clone();
        let mut forward = Forwarder::new(tx.clone(), Some(self.events.clone())).with_reporter();
        listen(&self.target, &listened, move |n| {
            if n.channel() == messages && table_note(n).is_some_and(|(_, t)| tables.contains(t)) {
                wake.notify_one();
            }
            if !ours.contains(n.channel()) {
                return !forward.is_closed();
            }
            let Ok(name) = Name::new(n.channel()) else { return true };
            let payload = Bytes::copy_from_slice(n.payload().as_bytes());
            let m = Message::new(name.clone(), 0, 0, SystemClock.now(), name, None, payload);
            forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(m))).open()
        })
        .await
    }

    async fn run(mut self, mut conn: Listening, tx: mpsc::Sender<Result<StreamItem, BrokerError>>) {
        let mut forward = Forwarder::new(tx.clone(), Some(self.events.clone()));
        loop {
            let Some(reason) = self.serve(&mut conn, &tx, &mut forward).await else { return };
            let me = self.clone();
            let again = reconnect(&self.events, reason, || tx.is_closed(), || me.connect(&tx)).await;
            match again {
                Some(c) => conn = c,
                None => return,
            }
        }
    }

    /// Reads and waits until the reader goes (`None`) or the connection drops (`Some(why)`).
    async fn serve(
        &mut self,
        conn: &mut Listening,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
        forward: &mut Forwarder,
    ) -> Option<String> {
        let poll = if self.tables.is_empty() { Duration::from_secs(3600) } else { self.target.poll };
        loop {
            let mut more = false;
            for i in 0..self.tables.len() {
                match self.read_table(&conn.client, i, tx, forward).await {
                    Ok(Some(full)) => more |= full,
                    Ok(None) => return None,
                    Err(e) => return Some(format!("reading {}: {e}", self.tables[i].0)),
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
                reason = &mut conn.ended => {
                    let reason = reason.unwrap_or_default();
                    return if reason.is_empty() { None } else { Some(reason) };
                }
                () = tx.closed() => return None,
                alive = forward.catch_up(), if forward.owes_report() => {
                    if !alive {
                        return None;
                    }
                }
            }
        }
    }

    /// Hands over the next rows of table `i`: `Some(true)` when there may be more, `None` when the
    /// reader has gone.
    async fn read_table(
        &mut self,
        client: &Client,
        i: usize,
        tx: &mpsc::Sender<Result<StreamItem, BrokerError>>,
        forward: &mut Forwarder,
    ) -> Result<Option<bool>, tokio_postgres::Error> {
        const BATCH: i64 = 256;
        let (topic, after) = &self.tables[i];
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM {}.messages m WHERE m.topic = $1 AND m.seq > $2 ORDER BY m.seq LIMIT {BATCH}",
            self.target.s()
        );
        let after = i64::try_from(*after).unwrap_or(i64::MAX);
        let rows = client.query(&sql, &[&topic.as_str(), &after]).await?;
        let full = rows.len() == usize::try_from(BATCH).unwrap_or(256);
        for row in &rows {
            let Some(m) = message_of(row, 0) else { continue };
            self.tables[i].1 = m.seq;
            let item = StreamItem::Delivery(BrokerDelivery::untracked(m));
            if self.history {
                if tx.send(Ok(item)).await.is_err() {
                    return Ok(None);
                }
            } else if !forward.offer(item).open() {
                return Ok(None);
            }
        }
        Ok(Some(full))
    }
}

impl PostgresBroker {
    /// The last seq before `start` on table topic `topic`.
    pub(super) async fn cursor_for(&self, topic: &Name, start: StartPosition) -> Result<u64, BrokerError> {
        let s = self.target.s();
        let client = self.client().await?;
        let sql = match start {
            StartPosition::All => format!("SELECT coalesce((SELECT min(seq) - 1 FROM {s}.messages WHERE topic = $1), 0)"),
            StartPosition::New => format!("SELECT last_seq FROM {s}.topics WHERE name = $1"),
            StartPosition::Last | StartPosition::LastPerKey => {
                format!("SELECT greatest(last_seq - 1, 0) FROM {s}.topics WHERE name = $1")
            }
            StartPosition::Seq(n) => format!("SELECT greatest({} - 1, 0)::int8 WHERE $1::text IS NOT NULL", i64::try_from(n).unwrap_or(i64::MAX)),
            StartPosition::Time(t) => format!(
                "SELECT coalesce((SELECT min(seq) - 1 FROM {s}.messages WHERE topic = $1
                   AND published_at >= to_timestamp({}::float8 / 1e6)), (SELECT last_seq FROM {s}.topics WHERE name = $1))",
                t.as_micros()
            ),
        };
        let row = client.query_opt(&sql, &[&topic.as_str()]).await.map_err(|e| self.fail(&e))?;
        let Some(row) = row else { return Err(EngineError::NoSuchTopic(topic.clone()).into()) };
        Ok(row.get::<_, Option<i64>>(0).and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    /// `sub CHANNEL…` (LISTEN), `sub TABLE-TOPIC` (live rows) and `sub TOPIC --from` (history, then live).
    pub(super) async fn subscribe_reader(
        &self,
        req: SubscribeRequest,
    ) -> Result<DeliveryStream, BrokerError> {
        let mut names = Vec::new();
        for p in &req.patterns {
            let Some(name) = p.literal() else { return Err(self.unsupported(Capability::Patterns)) };
            names.push(name.to_string());
        }
        let tables = self.table_limits(&names).await?;
        let mut reader = Reader {
            target: self.target.clone(),
            events: self.events.clone(),
            channels: Vec::new(),
            tables: Vec::new(),
            history: req.from.is_some(),
            wake: Arc::new(Notify::new()),
        };
        if let Some(start) = req.from {
            let topic = history_topic(&req)?;
            if !tables.contains_key(topic.as_str()) {
                return Err(self.unsupported(Capability::Replay));
            }
            let cursor = self.cursor_for(&topic, start).await?;
            reader.tables.push((topic, cursor));
        } else {
            for name in names {
                let topic = Name::new(&name)?;
                if tables.contains_key(&name) {
                    let cursor = self.cursor_for(&topic, StartPosition::New).await?;
                    reader.tables.push((topic, cursor));
                } else {
                    check_channel(&name)?;
                    reader.channels.push(name);
                }
            }
        }
        let prefetch = usize::try_from(req.prefetch.unwrap_or(1024)).unwrap_or(1024).max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let conn = reader.connect(&tx).await?;
        let task = tokio::spawn(reader.run(conn, tx));
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}
