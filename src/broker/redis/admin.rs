//! Administration: streams and channels as topics, consumer groups as subscriptions, their info
//! (XINFO), creating and deleting them, browsing (XRANGE) and seeking (XGROUP SETID).

use redis::{AsyncCommands, Value};

use super::durable::xgroup_create;
use super::keys::{GroupInfo, entries, id_of, number, parse_consumers, parse_groups, seq_of, text};
use super::{Mode, RedisBroker, error};
use crate::broker::{Broker, BrokerError, Capability};
use crate::model::{
    BrowseFrom, Message, Name, SeekTarget, SubscriptionConfig, SubscriptionInfo, TopicConfig, TopicInfo,
};

impl RedisBroker {
    async fn stream_keys(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("TYPE")
                .arg("stream")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| error(&self.url, e))?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The stream a consumer group belongs to (groups are per stream in Redis; names here are global).
    async fn stream_of_group(&self, group: &Name) -> Result<String, BrokerError> {
        for key in self.stream_keys().await? {
            if self.groups(&key).await?.iter().any(|g| g.name == group.as_str()) {
                return Ok(key);
            }
        }
        Err(BrokerError::Invalid(format!("no Redis stream has a consumer group named \"{group}\"")))
    }

    async fn groups(&self, key: &str) -> Result<Vec<GroupInfo>, BrokerError> {
        let value: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(parse_groups(&value))
    }

    /// A consumer group's consumers (XINFO CONSUMERS).
    async fn consumers(
        &self,
        key: &str,
        group: &str,
    ) -> Result<Vec<crate::model::ConsumerInfo>, BrokerError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(key)
            .arg(group)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(parse_consumers(&reply))
    }

    pub(super) async fn list_topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        let mut conn = self.conn.clone();
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .map_err(|e| error(&self.url, e))?;
        let mut out = Vec::new();
        for key in self.stream_keys().await? {
            let Ok(name) = Name::new(&key) else { continue };
            out.push(self.topic_info(&name).await?);
        }
        // PUBSUB NUMSUB answers channel, count, channel, count… for the active channels in one trip.
        let counts: Vec<Value> = if channels.is_empty() {
            Vec::new()
        } else {
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channels)
                .query_async(&mut conn)
                .await
                .map_err(|e| error(&self.url, e))?
        };
        for (channel, listeners) in
            channels.iter().zip(counts.iter().skip(1).step_by(2).map(Some).chain(std::iter::repeat(None)))
        {
            let Ok(name) = Name::new(channel) else { continue };
            let mut info = info_for(name, 0, 0, 0);
            // A channel's "subscriptions" are its live listeners: Redis keeps no other kind.
            info.subscriptions = listeners.and_then(number).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            out.push(info);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(super) async fn stream_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        let mut conn = self.conn.clone();
        // One round trip: the length and the oldest and newest entries.
        let key = name.as_str();
        let (len, first, last): (u64, Value, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(key)
            .cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| error(&self.url, e))?;
        let seq = |v: &Value| entries(name, v).first().map_or(0, |(_, m)| m.seq);
        let groups = if len > 0 { self.groups(name.as_str()).await.unwrap_or_default().len() } else { 0 };
        let mut info = info_for(name.clone(), len, seq(&first), seq(&last));
        info.subscriptions = u32::try_from(groups).unwrap_or(u32::MAX);
        Ok(info)
    }

    pub(super) async fn create_stream(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        if self.mode == Mode::PubSub {
            // A channel exists while someone listens; there is nothing to create.
            return Err(self.unsupported(Capability::TopicAdmin));
        }
        if !config.subjects.is_empty() {
            return Err(BrokerError::Invalid(
                "a Redis stream captures no other subjects; create it without subjects".into(),
            ));
        }
        if config.max_msg_bytes != TopicConfig::new(config.name.clone()).max_msg_bytes {
            return Err(BrokerError::Invalid(
                "a Redis stream has no per-message size limit (Redis takes entries up to its proto-max-bulk-len)".into(),
            ));
        }
        if config.limits != crate::model::Limits::default() {
            return Err(BrokerError::Invalid(
                "a Redis stream keeps no limits of its own; trim with `?maxlen=N` in the broker URL".into(),
            ));
        }
        let key = config.name.as_str();
        match self.key_type(key).await?.as_str() {
            "none" => {}
            "stream" => return Err(BrokerError::Invalid(format!("stream \"{key}\" already exists"))),
            other => {
                return Err(BrokerError::Invalid(format!(
                    "key \"{key}\" already holds a Redis {other}, not a stream"
                )));
            }
        }
        // An empty stream: a throwaway group with MKSTREAM makes the key, then goes.
        let made: redis::RedisResult<()> = redis::pipe()
            .add_command(xgroup_create(key, "pubsub-create", "$"))
            .ignore()
            .cmd("XGROUP")
            .arg("DESTROY")
            .arg(key)
            .arg("pubsub-create")
            .ignore()
            .query_async(&mut self.conn.clone())
            .await;
        made.map_err(|e| error(&self.url, e))?;
        self.topic_info(&config.name).await
    }

    pub(super) async fn purge_stream(&self, name: &Name) -> Result<u64, BrokerError> {
        // XTRIM to nothing keeps the key and its consumer groups.
        redis::cmd("XTRIM")
            .arg(name.as_str())
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))
    }

    /// Deletes a stream. A missing key is no topic (it said "deleted" before), and a key of another
    /// type is someone else's data: neither is touched.
    pub(super) async fn delete_key(&self, name: &Name) -> Result<(), BrokerError> {
        match self.key_type(name.as_str()).await?.as_str() {
            "stream" => {}
            "none" => return Err(BrokerError::Engine(crate::model::EngineError::NoSuchTopic(name.clone()))),
            other => {
                return Err(BrokerError::Invalid(format!(
                    "key \"{name}\" holds a Redis {other}, not a stream; pubsub deletes only streams (a channel has nothing to delete)"
                )));
            }
        }
        let _: u64 = self.conn.clone().del(name.as_str()).await.map_err(|e| error(&self.url, e))?;
        Ok(())
    }

    pub(super) async fn list_groups(
        &self,
        topic: Option<&Name>,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let keys = match topic {
            Some(t) => vec![t.to_string()],
            None => self.stream_keys().await?,
        };
        let mut out = Vec::new();
        for key in keys {
            let Ok(topic) = Name::new(&key) else { continue };
            let groups = self.groups(&key).await?;
            if groups.is_empty() {
                continue;
            }
            let stream = self.stream_info(&topic).await?;
            for g in groups {
                out.push(self.describe_group(&topic, &stream, &g).await?);
            }
        }
        Ok(out)
    }

    pub(super) async fn group_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        let key = self.stream_of_group(name).await?;
        let topic = Name::new(&key)?;
        let g = self.groups(&key).await?.into_iter().find(|g| g.name == name.as_str()).unwrap_or_default();
        let stream = self.stream_info(&topic).await?;
        self.describe_group(&topic, &stream, &g).await
    }

    /// A group as a subscription: its counts, the stream's positions, its ack floor (just below the
    /// oldest pending entry, or the last delivered one when nothing is pending), the deadline after
    /// which this client claims an entry (`?ack_deadline=`; Redis keeps none) and its consumers.
    async fn describe_group(
        &self,
        topic: &Name,
        stream: &TopicInfo,
        g: &GroupInfo,
    ) -> Result<SubscriptionInfo, BrokerError> {
        let mut info = sub_info(topic, g);
        info.ack_deadline = self.ack_deadline;
        info.first_seq = stream.first_seq;
        info.head_seq = stream.head_seq;
        let summary: Value = redis::cmd("XPENDING")
            .arg(topic.as_str())
            .arg(&g.name)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        info.ack_floor = match &summary {
            Value::Array(parts) if parts.first().and_then(number).unwrap_or(0) > 0 => {
                parts.get(1).map_or(info.delivered_seq, |id| seq_of(&text(id)).saturating_sub(1))
            }
            _ => info.delivered_seq,
        };
        info.consumers = self.consumers(topic.as_str(), &g.name).await?;
        Ok(info.with_one_partition(None))
    }

    pub(super) async fn create_group(
        &self,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo, BrokerError> {
        if self.mode == Mode::PubSub {
            // A consumer group needs a stream; with `mode=pubsub` publishes would never reach it.
            return Err(self.unsupported(Capability::CompetingConsumers));
        }
        let refused = if !config.filter.is_empty() {
            Some("subject filters")
        } else if config.dead_letter.is_some() || config.max_deliveries > 0 {
            Some("dead-letter topics or delivery limits")
        } else if config.sets_backoff() {
            Some("redelivery backoff (an unacked entry is claimed again once the URL's ack_deadline passes)")
        } else if config.sets_max_lease() {
            Some(
                "longest lease (an entry is held until the URL's ack_deadline passes; `pubsub extend` is refused)",
            )
        } else {
            None
        };
        if let Some(what) = refused {
            return Err(BrokerError::Invalid(format!(
                "Redis consumer groups have no {what}; create the subscription without them"
            )));
        }
        let key = config.topic.to_string();
        let start = self.start_after(&key, config.start).await?;
        let created: redis::RedisResult<String> =
            xgroup_create(&key, config.name.as_str(), &start).query_async(&mut self.conn.clone()).await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {
                return Err(BrokerError::Invalid(format!(
                    "subscription \"{}\" already exists on stream \"{key}\"",
                    config.name
                )));
            }
            Err(e) => return Err(error(&self.url, e)),
        }
        self.subscription_info(&config.name).await
    }

    pub(super) async fn destroy_group(&self, name: &Name) -> Result<(), BrokerError> {
        let key = self.stream_of_group(name).await?;
        let _: u64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&key)
            .arg(name.as_str())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        Ok(())
    }

    pub(super) async fn browse_stream(
        &self,
        topic: &Name,
        from: BrowseFrom,
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let mut conn = self.conn.clone();
        let value: Value = match from {
            BrowseFrom::Last(n) => {
                let v: Value = redis::cmd("XREVRANGE")
                    .arg(topic.as_str())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(n.min(max as u64))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| error(&self.url, e))?;
                let mut list = entries(topic, &v);
                list.reverse();
                return Ok(list.into_iter().map(|(_, m)| m).collect());
            }
            BrowseFrom::Seq(_) | BrowseFrom::At { .. } | BrowseFrom::Time(_) => {
                let start = match from {
                    BrowseFrom::Seq(s) | BrowseFrom::At { seq: s, .. } if s > 1 => id_of(s),
                    BrowseFrom::Time(t) => format!("{}", t.as_micros().max(0) / 1000),
                    _ => "-".to_string(),
                };
                redis::cmd("XRANGE")
                    .arg(topic.as_str())
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| error(&self.url, e))?
            }
        };
        Ok(entries(topic, &value).into_iter().map(|(_, m)| m).collect())
    }

    pub(super) async fn seek_group(
        &self,
        subscription: &Name,
        target: SeekTarget,
    ) -> Result<u64, BrokerError> {
        let key = self.stream_of_group(subscription).await?;
        let id = match target {
            SeekTarget::Start => "0".to_string(),
            SeekTarget::End => "$".to_string(),
            SeekTarget::Seq { seq, .. } | SeekTarget::Each(seq) => id_of(seq.saturating_sub(1)),
            SeekTarget::Time(t) => format!("{}-0", (t.as_micros().max(0) / 1000).saturating_sub(1)),
        };
        let _: String = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&key)
            .arg(subscription.as_str())
            .arg(&id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| error(&self.url, e))?;
        // The next seq it delivers: from the start, the oldest entry's; at the end, one past the newest
        // (`$` is no entry id: reading it as one said "from seq 1").
        let stream = self.stream_info(&Name::new(&key)?).await?;
        Ok(match target {
            SeekTarget::Start => stream.first_seq.max(1),
            SeekTarget::End => stream.head_seq + 1,
            _ => seq_of(&id) + 1,
        })
    }
}

fn info_for(name: Name, messages: u64, first: u64, head: u64) -> TopicInfo {
    TopicInfo::external(name, messages, None).with_positions(first, head)
}

fn sub_info(topic: &Name, g: &GroupInfo) -> SubscriptionInfo {
    let name = Name::new(&g.name).unwrap_or_else(|_| topic.clone());
    let lag = g.lag.unwrap_or(0);
    let mut info = SubscriptionInfo::external(name, topic.clone());
    info.delivered_seq = seq_of(&g.last_delivered);
    info.pending = lag;
    info.in_flight = g.pending;
    info.backlog = lag + g.pending;
    info.offset_lag = lag + g.pending;
    info
}
