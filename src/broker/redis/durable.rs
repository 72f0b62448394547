//! Durable reads: consumer groups (XGROUP CREATE), where a read starts, reading a stream through a
//! group or from a position (`read.rs` does the reading), and settling (XACK) with retries.

use std::sync::atomic::Ordering;

use redis::Value;
use tokio::sync::mpsc;

use super::keys::{entries, id_of, seq_of};
use super::read::{self, GroupRead, ReadLink};
use super::{RedisBroker, error};
use crate::broker::kit::Backoff;
use crate::broker::{
    AckToken, Broker, BrokerError, Capability, ChannelSource, DeliveryStream, Settle, StreamItem,
    SubscribeRequest,
};
use crate::model::{Name, StartPosition};

/// XGROUP CREATE, making the stream if there is none (MKSTREAM).
pub(super) fn xgroup_create(key: &str, group: &str, start: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE").arg(key).arg(group).arg(start).arg("MKSTREAM");
    cmd
}

impl RedisBroker {
    /// XACK for an ack or term; nack and extend are refused (`check_settle` already said so).
    pub(super) async fn settle_entry(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        let Some(reply) = &token.reply else { return Err(self.unsupported(Capability::DetachedSettle)) };
        let (stream, id) = reply.split_once('\u{1f}').unwrap_or((reply.as_str(), ""));
        match how {
            Settle::Ack | Settle::Term(_) => {
                let mut xack = redis::cmd("XACK");
                xack.arg(stream).arg(token.subscription.as_str()).arg(id);
                let _: u64 = self.idempotent(&xack).await?;
                Ok(())
            }
            Settle::Nack(_) | Settle::Release => Err(self.unsupported(Capability::Nack)),
            Settle::Extend(_) => Err(self.unsupported(Capability::Extend)),
        }
    }

    /// Runs a command that may safely run twice (XACK) on the shared connection, waiting out a Redis
    /// restart: the connection manager reconnects by itself, but the command that finds the old socket
    /// dead fails with it (a `sub -s GROUP` used to exit 3 "broken pipe" on the first ack after a
    /// restart), and a restarted Redis answers LOADING until its data is back. Tries for about 6 s.
    async fn idempotent<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        // Six tries over about six seconds (the backoff's 100 ms … 3.2 s), enough for a Redis restart.
        let mut backoff = Backoff::new();
        for _ in 0..6 {
            match cmd.query_async(&mut self.conn.clone()).await {
                Err(e) if read::is_outage(&e) => backoff.wait().await,
                other => return other.map_err(|e| error(&self.url, e)),
            }
        }
        cmd.query_async(&mut self.conn.clone()).await.map_err(|e| error(&self.url, e))
    }

    /// Deletes the consumers this client named that hold no pending entry (one atomic script each, so
    /// an entry delivered meanwhile is never dropped with its consumer); the others stay, for their
    /// entries to be claimed after the ack deadline. Errors are ignored: the group may be gone.
    pub(super) async fn forget_consumers(&self) {
        const FORGET: &str = "if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then \
             return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end return -1";
        let made = std::mem::take(
            &mut *self.made_consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (key, group, consumer) in made {
            let forgot: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg(FORGET)
                .arg(1)
                .arg(&key)
                .arg(&group)
                .arg(&consumer)
                .query_async(&mut self.conn.clone())
                .await;
            if let Err(e) = forgot {
                tracing::debug!("consumer {consumer} of group {group} on {key} not deleted: {e}");
            }
        }
    }

    /// Deletes consumers of `group` that a `sub` of this program named (`pubsub-PID-N`) and left
    /// behind (killed before it could delete its own): those holding nothing pending and silent for
    /// longer than the ack deadline, after which their entries would have been claimed anyway. A live
    /// reader that finds its consumer gone is given a new one by its next read. Errors are ignored.
    async fn sweep_consumers(&self, key: &str, group: &str) {
        const SWEEP: &str = "local gone = 0 \
             for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do \
               local f = {} \
               for i = 1, #c, 2 do f[c[i]] = c[i + 1] end \
               if string.match(f['name'], '^pubsub%-%d+%-%d+$') and f['pending'] == 0 \
                  and f['idle'] > tonumber(ARGV[2]) then \
                 redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name']) \
                 gone = gone + 1 \
               end \
             end \
             return gone";
        let idle = u64::try_from(self.ack_deadline.as_millis()).unwrap_or(u64::MAX);
        let swept: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(SWEEP)
            .arg(1)
            .arg(key)
            .arg(group)
            .arg(idle)
            .query_async(&mut self.conn.clone())
            .await;
        match swept {
            Ok(n) if n > 0 => tracing::debug!("deleted {n} idle consumer(s) left in group {group} on {key}"),
            Ok(_) => {}
            Err(e) => tracing::debug!("idle consumers of group {group} on {key} not swept: {e}"),
        }
    }

    /// The id a read (XREAD, or a new consumer group) starts after, so that its first entry is the one
    /// `start` names.
    pub(super) async fn start_after(&self, key: &str, start: StartPosition) -> Result<String, BrokerError> {
        Ok(match start {
            StartPosition::All => "0".to_string(),
            StartPosition::New => "$".to_string(),
            StartPosition::Seq(s) => id_of(s.saturating_sub(1)),
            StartPosition::Time(t) => format!("{}-0", (t.as_micros().max(0) / 1000).saturating_sub(1)),
            StartPosition::Last | StartPosition::LastPerKey => {
                let newest: Value = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| error(&self.url, e))?;
                let topic = Name::new(key)?;
                match entries(&topic, &newest).first() {
                    Some((id, _)) => id_of(seq_of(id).saturating_sub(1)),
                    None => "$".to_string(),
                }
            }
        })
    }

    /// Reads a stream: through a consumer group (durable, acked) or plainly from a position, on a
    /// connection of the reader's own (`read.rs`).
    pub(super) async fn read_stream(
        &self,
        topic: Name,
        req: SubscribeRequest,
    ) -> Result<DeliveryStream, BrokerError> {
        let key = topic.to_string();
        let mut conn = read::connect(&self.client).await.map_err(|e| error(&self.url, e))?;
        let count = req.prefetch.unwrap_or(100).max(1);
        // A group reader reads only what this channel has room for, so its size is the prefetch.
        let size = if req.subscription.is_some() { count as usize } else { 1024 };
        let (tx, rx) = mpsc::channel::<Result<StreamItem, BrokerError>>(size);
        let start = self.start_after(&key, req.from.unwrap_or_default()).await?;
        let task = if let Some(group) = req.subscription.clone() {
            let created: redis::RedisResult<String> =
                xgroup_create(&key, group.as_str(), &start).query_async(&mut conn).await;
            if let Err(e) = created
                && e.code() != Some("BUSYGROUP")
            {
                return Err(error(&self.url, e));
            }
            self.sweep_consumers(&key, group.as_str()).await;
            let consumer = match req.consumer.clone() {
                Some(named) => named,
                None => {
                    let made = format!(
                        "pubsub-{}-{}",
                        std::process::id(),
                        self.next_id.fetch_add(1, Ordering::Relaxed)
                    );
                    self.made_consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((
                        key.clone(),
                        group.to_string(),
                        made.clone(),
                    ));
                    made
                }
            };
            let link = ReadLink::new(
                self.client.clone(),
                conn,
                Some(GroupRead::recreate(&key, &group)),
                self.events.clone(),
            );
            let group_read = GroupRead {
                url: self.url.clone(),
                key,
                group,
                consumer,
                acked: req.ack != crate::model::AckMode::None,
                limit: req.limit,
                topic,
                ack_deadline: self.ack_deadline,
            };
            tokio::spawn(group_read.run(link, tx))
        } else {
            let link = ReadLink::new(self.client.clone(), conn, None, self.events.clone());
            tokio::spawn(read::plain(link, self.url.clone(), topic, count, start, tx))
        };
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}
