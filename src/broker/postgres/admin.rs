//! Table topics and subscriptions: create, delete, purge, list with counts and sizes, history reads,
//! seek, and per-message state from the deliveries table (what `peek`, `sub-info` and `subs` show).

use std::time::Duration;

use super::PostgresBroker;
use super::listen::{MESSAGE_COLUMNS, message_of};
use crate::broker::{Broker, BrokerError};
use crate::model::{
    AckMode, BrowseFrom, DeliveryState, EngineError, Limits, Message, MessageAckState, Name, PeekReport,
    SeekTarget, StartPosition, SubscriptionConfig, SubscriptionInfo, Timestamp, TopicConfig, TopicInfo,
};

fn micros_of(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_micros)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// SQL for `to_timestamp` of a model time.
fn at(t: Timestamp) -> String {
    format!("to_timestamp({}::float8 / 1e6)", t.as_micros())
}

impl PostgresBroker {
    pub(super) async fn create_table_topic(&self, config: &TopicConfig) -> Result<(), BrokerError> {
        let name = config.name.as_str();
        if config.partitions > 1 {
            return Err(self.unsupported(crate::broker::Capability::Partitions));
        }
        if config.subjects.iter().any(|p| p.as_str() != name) {
            return Err(BrokerError::Invalid(
                "a PostgreSQL table topic takes messages published to its own name only (no subject patterns)".into(),
            ));
        }
        let Limits { max_msgs, max_bytes, max_age, max_msgs_per_key } = config.limits.clone();
        if max_msgs_per_key.is_some() {
            return Err(BrokerError::Invalid(
                "PostgreSQL table topics enforce --max-msgs, --max-bytes and --max-age; per-key limits are not available".into(),
            ));
        }
        let max_bytes = max_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let max_msgs = max_msgs.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let max_age = max_age.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let max_msg_bytes = i64::from(config.max_msg_bytes);
        let sql = format!(
            "INSERT INTO {}.topics (name, max_msgs, max_age_ms, max_msg_bytes, max_bytes) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING",
            self.target.s()
        );
        let client = self.client().await?;
        let n = client
            .execute(&sql, &[&name, &max_msgs, &max_age, &max_msg_bytes, &max_bytes])
            .await
            .map_err(|e| self.fail(&e))?;
        if n == 0 {
            return Err(EngineError::TopicExists(config.name.clone()).into());
        }
        Ok(())
    }

    pub(super) async fn drop_topic(&self, name: &Name) -> Result<(), BrokerError> {
        let client = self.client().await?;
        let sql = format!("DELETE FROM {}.topics WHERE name = $1", self.target.s());
        match client.execute(&sql, &[&name.as_str()]).await.map_err(|e| self.fail(&e))? {
            0 => Err(EngineError::NoSuchTopic(name.clone()).into()),
            _ => Ok(()),
        }
    }

    pub(super) async fn purge(&self, name: &Name) -> Result<u64, BrokerError> {
        if !self.table_exists(name).await? {
            return Err(EngineError::NoSuchTopic(name.clone()).into());
        }
        let client = self.client().await?;
        let sql = format!("DELETE FROM {}.messages WHERE topic = $1", self.target.s());
        client.execute(&sql, &[&name.as_str()]).await.map_err(|e| self.fail(&e))
    }

    /// Table topics (one, or all) with counts, sizes and limits.
    pub(super) async fn list_topics(&self, one: Option<&Name>) -> Result<Vec<TopicInfo>, BrokerError> {
        let s = self.target.s();
        let sql = format!(
            "SELECT t.name, t.last_seq, t.max_msgs, t.max_age_ms, t.max_msg_bytes,
                    (extract(epoch from t.created_at) * 1000000)::int8,
                    m.n, m.first, 0::int8, (extract(epoch from m.last) * 1000000)::int8,
                    (SELECT count(*) FROM {s}.subscriptions WHERE topic = t.name), t.max_bytes, t.bytes
             FROM {s}.topics t
             LEFT JOIN LATERAL (SELECT count(*) AS n, min(seq) AS first,
                    max(published_at) AS last FROM {s}.messages WHERE topic = t.name) m ON true
             WHERE $1::text IS NULL OR t.name = $1 ORDER BY t.name"
        );
        let client = self.client().await?;
        let rows = client.query(&sql, &[&one.map(Name::as_str)]).await.map_err(|e| self.fail(&e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(name) = Name::new(r.get::<_, &str>(0)) else { continue };
            let head = count(r.get(1));
            let messages = count(r.get(6));
            let first = r.get::<_, Option<i64>>(7).map_or(head + 1, count);
            let mut info =
                TopicInfo::external(name, messages, Some(count(r.get(12)))).with_positions(first, head);
            info.limits.max_msgs = r.get::<_, Option<i64>>(2).map(count);
            info.limits.max_bytes = r.get::<_, Option<i64>>(11).map(count);
            info.limits.max_age = r.get::<_, Option<i64>>(3).map(|ms| Duration::from_millis(count(ms)));
            info.created = micros_of(r.get(5));
            info.last_publish = micros_of(r.get(9));
            info.subscriptions = u32::try_from(r.get::<_, i64>(10)).unwrap_or(u32::MAX);
            info.counters.published = head;
            out.push(info);
        }
        Ok(out)
    }

    pub(super) async fn make_subscription(&self, config: &SubscriptionConfig) -> Result<(), BrokerError> {
        let s = self.target.s();
        if !self.table_exists(&config.topic).await? {
            return Err(BrokerError::Invalid(format!(
                "\"{}\" is not a table topic (a channel keeps nothing for a subscription): `pubsub topic create {}` makes one",
                config.topic, config.topic
            )));
        }
        if !config.filter.is_empty() {
            return Err(BrokerError::Invalid("subscription filters are not available on PostgreSQL".into()));
        }
        if config.sets_backoff() {
            return Err(BrokerError::Invalid(
                "PostgreSQL subscriptions have no redelivery backoff: a nacked job is available again at once, or after the delay the nack gives (`pubsub nack --delay`); create the subscription without --backoff".into(),
            ));
        }
        if config.sets_max_lease() {
            return Err(BrokerError::Invalid(
                "PostgreSQL subscriptions keep no longest lease: a claim lasts the URL's ack deadline and `pubsub extend` moves it by what it asks; create the subscription without --max-lease".into(),
            ));
        }
        if let Some(dl) = &config.dead_letter
            && !self.table_exists(dl).await?
        {
            match self.create_table_topic(&TopicConfig::new(dl.clone())).await {
                Ok(()) | Err(BrokerError::Engine(EngineError::TopicExists(_))) => {}
                Err(e) => return Err(e),
            }
        }
        let start = match config.start {
            StartPosition::All => "TRUE".to_string(),
            StartPosition::New => "FALSE".to_string(),
            StartPosition::Last | StartPosition::LastPerKey => {
                format!("seq = (SELECT last_seq FROM {s}.topics WHERE name = $2)")
            }
            StartPosition::Seq(n) => format!("seq >= {}", i64::try_from(n).unwrap_or(i64::MAX)),
            StartPosition::Time(t) => format!("published_at >= {}", at(t)),
        };
        let deadline = i64::try_from(config.ack_deadline.as_millis()).unwrap_or(i64::MAX).max(1);
        let max_deliveries = i32::try_from(config.max_deliveries).unwrap_or(i32::MAX);
        let dead_letter = config.dead_letter.as_ref().map(Name::as_str);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(&e))?;
        let sql = format!(
            "INSERT INTO {s}.subscriptions (name, topic, ack_deadline_ms, max_deliveries, dead_letter)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING"
        );
        let n = tx
            .execute(
                &sql,
                &[&config.name.as_str(), &config.topic.as_str(), &deadline, &max_deliveries, &dead_letter],
            )
            .await
            .map_err(|e| self.fail(&e))?;
        if n == 0 {
            return Err(EngineError::SubscriptionExists(config.name.clone()).into());
        }
        // Existing messages from the start position; new ones arrive by the fan-out trigger. The topic's
        // row is locked first so that no publish slips between the two.
        let sql = format!(
            "WITH lock AS (SELECT 1 FROM {s}.topics WHERE name = $2 FOR UPDATE)
             INSERT INTO {s}.deliveries (subscription, topic, seq)
             SELECT $1, topic, seq FROM {s}.messages, lock WHERE topic = $2 AND ({start})"
        );
        tx.execute(&sql, &[&config.name.as_str(), &config.topic.as_str()])
            .await
            .map_err(|e| self.fail(&e))?;
        tx.commit().await.map_err(|e| self.fail(&e))
    }

    pub(super) async fn drop_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        let client = self.client().await?;
        let sql = format!("DELETE FROM {}.subscriptions WHERE name = $1", self.target.s());
        match client.execute(&sql, &[&name.as_str()]).await.map_err(|e| self.fail(&e))? {
            0 => Err(EngineError::NoSuchSubscription(name.clone()).into()),
            _ => Ok(()),
        }
    }

    /// Subscriptions (of a topic, one by name, or all) with their figures from the deliveries table.
    pub(super) async fn list_subscriptions(
        &self,
        topic: Option<&Name>,
        one: Option<&Name>,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let s = self.target.s();
        let sql = format!(
            "SELECT s.name, s.topic, s.ack_deadline_ms, s.max_deliveries, s.dead_letter,
                    (extract(epoch from s.created_at) * 1000000)::int8, t.last_seq,
                    d.available, d.in_flight, d.delayed, d.done, d.dead, d.redelivered, d.backlog_bytes,
                    (extract(epoch from now() - d.oldest_unacked) * 1000)::int8,
                    (extract(epoch from now() - d.oldest_pending) * 1000)::int8,
                    d.floor, d.delivered, d.workers
             FROM {s}.subscriptions s JOIN {s}.topics t ON t.name = s.topic
             LEFT JOIN LATERAL (
                SELECT count(*) FILTER (WHERE x.state IN ('available', 'failed') AND x.available_at <= now()
                                         OR x.state = 'in_flight' AND x.deadline <= now()) AS available,
                       count(*) FILTER (WHERE x.state = 'in_flight' AND x.deadline > now()) AS in_flight,
                       count(*) FILTER (WHERE x.state = 'failed' AND x.available_at > now()) AS delayed,
                       count(*) FILTER (WHERE x.state = 'done') AS done,
                       count(*) FILTER (WHERE x.state = 'dead') AS dead,
                       count(*) FILTER (WHERE x.attempts > 1) AS redelivered,
                       sum(octet_length(m.payload)) FILTER (WHERE x.state NOT IN ('done', 'dead'))::int8 AS backlog_bytes,
                       min(m.published_at) FILTER (WHERE x.state NOT IN ('done', 'dead')) AS oldest_unacked,
                       min(m.published_at) FILTER (WHERE x.attempts = 0) AS oldest_pending,
                       min(x.seq) FILTER (WHERE x.state NOT IN ('done', 'dead')) AS floor,
                       max(x.seq) FILTER (WHERE x.attempts > 0) AS delivered,
                       string_agg(DISTINCT x.worker, ',') FILTER (WHERE x.state = 'in_flight' AND x.deadline > now()) AS workers
                FROM {s}.deliveries x JOIN {s}.messages m ON m.topic = x.topic AND m.seq = x.seq
                WHERE x.subscription = s.name) d ON true
             WHERE ($1::text IS NULL OR s.topic = $1) AND ($2::text IS NULL OR s.name = $2) ORDER BY s.name"
        );
        let client = self.client().await?;
        let rows = client
            .query(&sql, &[&topic.map(Name::as_str), &one.map(Name::as_str)])
            .await
            .map_err(|e| self.fail(&e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (Ok(name), Ok(topic)) = (Name::new(r.get::<_, &str>(0)), Name::new(r.get::<_, &str>(1)))
            else {
                continue;
            };
            let mut info = SubscriptionInfo::external(name, topic);
            info.ack = AckMode::Explicit;
            info.ack_deadline = Duration::from_millis(count(r.get(2)));
            info.max_deliveries = u32::try_from(r.get::<_, i32>(3)).unwrap_or(0);
            info.dead_letter = r.get::<_, Option<&str>>(4).and_then(|n| Name::new(n).ok());
            info.created = micros_of(r.get(5));
            info.head_seq = count(r.get(6));
            let available = count(r.get(7));
            info.in_flight = count(r.get(8));
            info.delayed = count(r.get(9));
            info.counters.acked = count(r.get(10));
            info.counters.dead_lettered = count(r.get(11));
            info.redelivered = count(r.get(12));
            info.pending = available;
            info.backlog = available + info.in_flight + info.delayed;
            info.backlog_bytes = r.get::<_, Option<i64>>(13).map(count).or(Some(0));
            info.oldest_unacked_age = r.get::<_, Option<i64>>(14).map(|ms| Duration::from_millis(count(ms)));
            info.oldest_pending_age = r.get::<_, Option<i64>>(15).map(|ms| Duration::from_millis(count(ms)));
            info.ack_floor =
                r.get::<_, Option<i64>>(16).map_or(info.head_seq, |f| count(f).saturating_sub(1));
            info.delivered_seq = r.get::<_, Option<i64>>(17).map_or(info.ack_floor, count);
            info.offset_lag = info.head_seq.saturating_sub(info.ack_floor);
            let owner = r.get::<_, Option<String>>(18);
            out.push(info.with_one_partition(owner));
        }
        Ok(out)
    }

    /// History of a table topic, without consuming it.
    pub(super) async fn read_table(
        &self,
        topic: &Name,
        from: BrowseFrom,
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        if !self.table_exists(topic).await? {
            return Err(self.unsupported(crate::broker::Capability::Replay));
        }
        let s = self.target.s();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let (cond, order) = match from {
            BrowseFrom::Seq(n) | BrowseFrom::At { seq: n, .. } => {
                (format!("m.seq >= {}", i64::try_from(n).unwrap_or(i64::MAX)), "ASC")
            }
            BrowseFrom::Time(t) => (format!("m.published_at >= {}", at(t)), "ASC"),
            BrowseFrom::Last(n) => (
                format!(
                    "m.seq > (SELECT last_seq FROM {s}.topics WHERE name = $1) - {}",
                    i64::try_from(n).unwrap_or(i64::MAX)
                ),
                "ASC",
            ),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM {s}.messages m WHERE m.topic = $1 AND {cond} ORDER BY m.seq {order} LIMIT $2"
        );
        let client = self.client().await?;
        let rows = client.query(&sql, &[&topic.as_str(), &limit]).await.map_err(|e| self.fail(&e))?;
        Ok(rows.iter().filter_map(|r| message_of(r, 0)).collect())
    }

    /// Moves a subscription: what is before the target counts as done, what is at or after it is
    /// available again (rows made for messages it never had). Returns the first seq it delivers next.
    pub(super) async fn seek_subscription(&self, sub: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        let s = self.target.s();
        let topic = {
            let client = self.client().await?;
            let sql = format!("SELECT topic FROM {s}.subscriptions WHERE name = $1");
            match client.query_opt(&sql, &[&sub.as_str()]).await.map_err(|e| self.fail(&e))? {
                Some(r) => Name::new(r.get::<_, &str>(0))?,
                None => return Err(EngineError::NoSuchSubscription(sub.clone()).into()),
            }
        };
        let start = match target {
            SeekTarget::Start => StartPosition::All,
            SeekTarget::End => StartPosition::New,
            SeekTarget::Seq { seq, .. } | SeekTarget::Each(seq) => StartPosition::Seq(seq),
            SeekTarget::Time(t) => StartPosition::Time(t),
        };
        let first =
            i64::try_from(self.cursor_for(&topic, start).await?.saturating_add(1)).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(&e))?;
        for sql in [
            format!(
                "UPDATE {s}.deliveries SET state = 'done', deadline = NULL, updated_at = now()
                 WHERE subscription = $1 AND seq < $2 AND state NOT IN ('done', 'dead')"
            ),
            format!(
                "UPDATE {s}.deliveries SET state = 'available', worker = NULL, deadline = NULL, available_at = now(),
                        updated_at = now() WHERE subscription = $1 AND seq >= $2"
            ),
            format!(
                "INSERT INTO {s}.deliveries (subscription, topic, seq)
                 SELECT $1, topic, seq FROM {s}.messages WHERE topic = $3 AND seq >= $2 ON CONFLICT DO NOTHING"
            ),
        ] {
            let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
                if sql.contains("$3") { &[&sub.as_str(), &first, &topic.as_str()] } else { &[&sub.as_str(), &first] };
            tx.execute(&sql, params).await.map_err(|e| self.fail(&e))?;
        }
        tx.commit().await.map_err(|e| self.fail(&e))?;
        Ok(u64::try_from(first).unwrap_or(0))
    }

    /// Per-message state of a subscription from `from` up.
    pub(super) async fn peek_states(
        &self,
        sub: &Name,
        from: u64,
        limit: usize,
    ) -> Result<PeekReport, BrokerError> {
        let info = self.list_subscriptions(None, Some(sub)).await?;
        let Some(info) = info.first() else {
            return Err(EngineError::NoSuchSubscription(sub.clone()).into());
        };
        let s = self.target.s();
        let sql = format!(
            "SELECT seq, state, attempts, worker, (extract(epoch from deadline) * 1000000)::int8,
                    (extract(epoch from available_at) * 1000000)::int8, available_at > now(), deadline <= now(),
                    (extract(epoch from first_delivered) * 1000000)::int8,
                    (extract(epoch from updated_at) * 1000000)::int8
             FROM {s}.deliveries WHERE subscription = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
        );
        let client = self.client().await?;
        let from = i64::try_from(from.max(1)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&sql, &[&sub.as_str(), &from, &limit]).await.map_err(|e| self.fail(&e))?;
        let dead =
            if info.dead_letter.is_some() { DeliveryState::DeadLettered } else { DeliveryState::Terminated };
        let messages = rows
            .iter()
            .map(|r| {
                let later = r.get::<_, Option<bool>>(6).unwrap_or(false);
                let expired = r.get::<_, Option<bool>>(7).unwrap_or(false);
                let state = match r.get::<_, &str>(1) {
                    "in_flight" if !expired => DeliveryState::InFlight,
                    "failed" if later => DeliveryState::Delayed,
                    "done" => DeliveryState::Acked,
                    "dead" => dead,
                    _ => DeliveryState::Available,
                };
                let in_flight = state == DeliveryState::InFlight;
                MessageAckState {
                    partition: 0,
                    seq: count(r.get(0)),
                    state,
                    attempt: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                    consumer: r.get::<_, Option<&str>>(3).filter(|_| in_flight).map(Into::into),
                    deadline: micros_of(r.get(4)).filter(|_| in_flight),
                    not_before: micros_of(r.get(5)).filter(|_| state == DeliveryState::Delayed),
                    first_delivered: micros_of(r.get(8)),
                    last_delivered: micros_of(r.get(9)).filter(|_| r.get::<_, i32>(2) > 0),
                }
            })
            .collect();
        Ok(PeekReport {
            subscription: sub.clone(),
            ack_floor: info.ack_floor,
            delivered_seq: info.delivered_seq,
            head_seq: info.head_seq,
            messages,
        })
    }
}
