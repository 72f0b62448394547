//! Topics and consumer groups: listing with watermarks, create/delete/purge, group lag per partition
//! with each partition's owner, and resetting a group's offsets while it has no members.

use std::collections::BTreeMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaBroker, REQUEST_TIMEOUT, blocking, convert};
use crate::broker::BrokerError;
use crate::model::{
    ConsumerInfo, EngineError, Name, PartitionInfo, PartitionLag, SeekTarget, SubscriptionInfo, TopicConfig,
    TopicInfo,
};

/// Each topic's partitions with their leaders.
type Layout = Vec<(String, Vec<(u32, Option<String>)>)>;

/// One member of a group as the broker lists it, with the partitions it was assigned.
struct GroupMember {
    id: String,
    partitions: Vec<(String, i32)>,
}

impl KafkaBroker {
    /// The admin client, made on first use.
    async fn admin(&self) -> Result<&AdminClient<convert::Context>, BrokerError> {
        self.admin
            .get_or_try_init(|| async {
                self.target
                    .config()
                    .create_with_context(self.context.clone())
                    .map_err(|e| BrokerError::Invalid(format!("Kafka admin settings: {e}")))
            })
            .await
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)).operation_timeout(Some(REQUEST_TIMEOUT))
    }

    /// A topic with its partitions' watermarks and leaders.
    async fn topic_from(
        &self,
        name: Name,
        partitions: Vec<(u32, Option<String>)>,
    ) -> Result<TopicInfo, BrokerError> {
        let mut infos = Vec::with_capacity(partitions.len());
        for (p, leader) in partitions {
            let (low, high) = self.watermarks(&name, p).await?;
            let (first, head) = (convert::seq_of(low), u64::try_from(high).unwrap_or(0));
            infos.push(PartitionInfo {
                partition: p,
                first_seq: first,
                head_seq: head,
                messages: head.saturating_sub(first.saturating_sub(1)),
                bytes: None,
                leader,
            });
        }
        let messages = infos.iter().map(|p| p.messages).sum();
        let mut info = TopicInfo::external(name, messages, None);
        info.partitions = u32::try_from(infos.len()).unwrap_or(u32::MAX);
        info.first_seq = infos.iter().map(|p| p.first_seq).min().unwrap_or(1);
        info.head_seq = infos.iter().map(|p| p.head_seq).max().unwrap_or(0);
        info.partition_info = infos;
        Ok(info)
    }

    /// Partitions (with their leaders) of every topic in `md`, internal ones left out.
    fn partitions_of(md: &rdkafka::metadata::Metadata, only: Option<&str>) -> Layout {
        md.topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .filter(|t| only.map_or(!t.name().starts_with("__"), |o| o == t.name()))
            .map(|t| {
                let mut ps: Vec<(u32, Option<String>)> = t
                    .partitions()
                    .iter()
                    .map(|p| (u32::try_from(p.id()).unwrap_or(0), Some(format!("broker {}", p.leader()))))
                    .collect();
                ps.sort_by_key(|p| p.0);
                (t.name().to_string(), ps)
            })
            .collect()
    }

    /// `topics`: every topic but Kafka's internal ones.
    pub(super) async fn list_topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        let md = self.metadata(None).await?;
        let mut out = Vec::new();
        for (name, ps) in Self::partitions_of(&md, None) {
            let Ok(name) = Name::new(&name) else { continue };
            out.push(self.topic_from(name, ps).await?);
        }
        out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(out)
    }

    /// `topic info`: one topic, per partition.
    pub(super) async fn describe_topic(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        let md = self.metadata(Some(name.as_str())).await?;
        let Some((_, ps)) = Self::partitions_of(&md, Some(name.as_str())).into_iter().next() else {
            return Err(convert::no_topic(name));
        };
        self.topic_from(name.clone(), ps).await
    }

    /// The topic's `max.message.bytes`, when the broker says.
    pub(super) async fn max_message_bytes(&self, topic: &Name) -> Option<u32> {
        let spec = rdkafka::admin::ResourceSpecifier::Topic(topic.as_str());
        let found = self.admin().await.ok()?.describe_configs([&spec], &self.options()).await.ok()?;
        let resource = found.into_iter().next()?.ok()?;
        let value = resource.get("max.message.bytes")?.value.clone()?;
        value.parse().ok()
    }

    /// `subs create GROUP --topic T`: a consumer group with committed offsets at the start or end of every
    /// partition of T, so it exists (and shows its lag) before any member runs.
    pub(super) async fn make_group(
        &self,
        config: &crate::model::SubscriptionConfig,
    ) -> Result<(), BrokerError> {
        let Some(count) = self.partition_count(&config.topic).await? else {
            return Err(convert::no_topic(&config.topic));
        };
        if self.group_members(&config.name).await.ok().flatten().is_some()
            || !self.committed(&config.name).await?.is_empty()
        {
            return Err(BrokerError::Engine(EngineError::SubscriptionExists(config.name.clone())));
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..count {
            let (low, high) = self.watermarks(&config.topic, p).await?;
            let offset = match config.start {
                crate::model::StartPosition::All => low,
                crate::model::StartPosition::Seq(seq) => convert::offset_of(seq).clamp(low, high),
                _ => high,
            };
            tpl.add_partition_offset(
                config.topic.as_str(),
                i32::try_from(p).unwrap_or(0),
                Offset::Offset(offset),
            )
            .map_err(|e| convert::error(&self.target.shown, &e))?;
        }
        let client = self.group_client(&config.name)?;
        let shown = self.target.shown.clone();
        blocking(move || client.commit(&tpl, CommitMode::Sync)).await?.map_err(|e| convert::error(&shown, &e))
    }

    /// `subs delete GROUP`: deletes the group and its committed offsets (refused by Kafka while it has
    /// members).
    pub(super) async fn remove_group(&self, group: &Name) -> Result<(), BrokerError> {
        let results = self
            .admin()
            .await?
            .delete_groups(&[group.as_str()], &self.options())
            .await
            .map_err(|e| convert::error(&self.target.shown, &e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::GroupIdNotFound)) => {
                    return Err(BrokerError::Engine(EngineError::NoSuchSubscription(group.clone())));
                }
                Err((_, rdkafka::types::RDKafkaErrorCode::NonEmptyGroup)) => {
                    return Err(BrokerError::Invalid(format!(
                        "group \"{group}\" has live members: Kafka deletes a group only while none runs"
                    )));
                }
                Err((_, code)) => {
                    return Err(convert::error_code(
                        &self.target.shown,
                        code,
                        &format!("deleting group {group}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `topic create`: partitions from `--partitions`, the broker's default replication, retention from
    /// `--max-age` and `--max-bytes` (per partition in Kafka).
    pub(super) async fn make_topic(&self, config: &TopicConfig) -> Result<(), BrokerError> {
        convert::kafka_topic(config.name.as_str())?;
        let retention_ms = config.limits.max_age.map(|d| d.as_millis().to_string());
        let retention_bytes = config.limits.max_bytes.map(|b| b.to_string());
        let max_message = (config.max_msg_bytes != TopicConfig::new(config.name.clone()).max_msg_bytes)
            .then(|| config.max_msg_bytes.to_string());
        let partitions = i32::try_from(config.partitions.max(1)).unwrap_or(i32::MAX);
        let mut topic =
            NewTopic::new(config.name.as_str(), partitions, TopicReplication::Fixed(self.target.replication));
        if let Some(v) = &retention_ms {
            topic = topic.set("retention.ms", v);
        }
        if let Some(v) = &retention_bytes {
            topic = topic.set("retention.bytes", v);
        }
        if let Some(v) = &max_message {
            topic = topic.set("max.message.bytes", v);
        }
        let results = self
            .admin()
            .await?
            .create_topics([&topic], &self.options())
            .await
            .map_err(|e| convert::error(&self.target.shown, &e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    return Err(BrokerError::Engine(EngineError::TopicExists(config.name.clone())));
                }
                Err((_, code)) => {
                    return Err(convert::error_code(
                        &self.target.shown,
                        code,
                        &format!("creating {}: {code}", config.name),
                    ));
                }
            }
        }
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(config.name.as_str());
        Ok(())
    }

    /// `topic delete`.
    pub(super) async fn remove_topic(&self, name: &Name) -> Result<(), BrokerError> {
        if self.partition_count(name).await?.is_none() {
            return Err(convert::no_topic(name));
        }
        let results = self
            .admin()
            .await?
            .delete_topics(&[name.as_str()], &self.options())
            .await
            .map_err(|e| convert::error(&self.target.shown, &e))?;
        for r in results {
            if let Err((_, code)) = r {
                return Err(convert::error_code(
                    &self.target.shown,
                    code,
                    &format!("deleting {name}: {code}"),
                ));
            }
        }
        self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name.as_str());
        Ok(())
    }

    /// `topic purge`: deletes every partition's records up to its high watermark; returns how many.
    pub(super) async fn purge(&self, name: &Name) -> Result<u64, BrokerError> {
        let Some(count) = self.partition_count(name).await? else { return Err(convert::no_topic(name)) };
        let mut tpl = TopicPartitionList::new();
        let mut removed = 0u64;
        for p in 0..count {
            let (low, high) = self.watermarks(name, p).await?;
            if high > low {
                removed += u64::try_from(high - low).unwrap_or(0);
                tpl.add_partition_offset(name.as_str(), i32::try_from(p).unwrap_or(0), Offset::Offset(high))
                    .map_err(|e| convert::error(&self.target.shown, &e))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(0);
        }
        let done = self
            .admin()
            .await?
            .delete_records(&tpl, &self.options())
            .await
            .map_err(|e| match convert::error(&self.target.shown, &e) {
                // The broker hung up on the request rather than answering it.
                BrokerError::Unreachable { .. } => BrokerError::Invalid(format!(
                    "the broker dropped the connection on DeleteRecords ({e}): it may not implement deleting records (Tansu does not)"
                )),
                other => other,
            })?;
        for e in done.elements() {
            if let Err(err) = e.error() {
                return Err(match err.rdkafka_error_code() {
                    // Tansu hangs up on the request; librdkafka's mock cluster says it has no such feature.
                    Some(
                        rdkafka::types::RDKafkaErrorCode::UnsupportedFeature
                        | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                        | rdkafka::types::RDKafkaErrorCode::UnsupportedVersion,
                    ) => BrokerError::Invalid(format!(
                        "this broker does not implement DeleteRecords, which purging needs ({err}); nothing was deleted"
                    )),
                    _ => convert::error(&self.target.shown, &err),
                });
            }
        }
        Ok(removed)
    }

    /// A consumer that speaks for group `group` without joining it: to read and commit its offsets.
    fn group_client(&self, group: &Name) -> Result<BaseConsumer<convert::Context>, BrokerError> {
        self.target
            .config()
            .set("group.id", group.as_str())
            .set("enable.auto.commit", "false")
            .create_with_context(self.context.clone())
            .map_err(|e| BrokerError::Invalid(format!("Kafka consumer settings: {e}")))
    }

    /// Every group the broker lists (or only `group`): name, state, protocol type and members.
    async fn groups(
        &self,
        group: Option<&Name>,
    ) -> Result<Vec<(String, String, String, Vec<GroupMember>)>, BrokerError> {
        let meta = self.meta.clone();
        let g = group.map(Name::to_string);
        let shown = self.target.shown.clone();
        blocking(move || {
            let list = meta
                .fetch_group_list(g.as_deref(), REQUEST_TIMEOUT)
                .map_err(|e| convert::error(&shown, &e))?;
            Ok(list
                .groups()
                .iter()
                .map(|info| {
                    let members = info
                        .members()
                        .iter()
                        .map(|m| GroupMember {
                            id: member_name(m.id(), m.client_id(), m.client_host()),
                            partitions: m.assignment().map(parse_assignment).unwrap_or_default(),
                        })
                        .collect();
                    (
                        info.name().to_string(),
                        info.state().to_string(),
                        info.protocol_type().to_string(),
                        members,
                    )
                })
                .collect())
        })
        .await?
    }

    /// The group's state and members as the broker lists them; `None` when the broker does not know it.
    async fn group_members(&self, group: &Name) -> Result<Option<(String, Vec<GroupMember>)>, BrokerError> {
        let found = self.groups(Some(group)).await?.into_iter().find(|(name, ..)| name == group.as_str());
        Ok(found.filter(|(_, state, ..)| state != "Dead").map(|(_, state, _, members)| (state, members)))
    }

    /// The group's committed offsets, over every partition of every topic (Kafka answers for the ones
    /// the group committed).
    async fn committed(&self, group: &Name) -> Result<BTreeMap<(String, i32), i64>, BrokerError> {
        let md = self.metadata(None).await?;
        let mut tpl = TopicPartitionList::new();
        for (t, ps) in Self::partitions_of(&md, None) {
            for (p, _) in ps {
                tpl.add_partition(&t, i32::try_from(p).unwrap_or(0));
            }
        }
        if tpl.count() == 0 {
            return Ok(BTreeMap::new());
        }
        let client = self.group_client(group)?;
        let shown = self.target.shown.clone();
        let found = blocking(move || client.committed_offsets(tpl, REQUEST_TIMEOUT))
            .await?
            .map_err(|e| convert::error(&shown, &e))?;
        Ok(found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// `sub-info GROUP`: per partition the committed offset, the high watermark, the lag and the owner.
    pub(super) async fn describe_group(&self, group: &Name) -> Result<SubscriptionInfo, BrokerError> {
        // A broker that cannot list groups (librdkafka's mock cluster) still answers committed offsets.
        let listed = self.group_members(group).await.ok().flatten();
        let mut committed = self.committed(group).await?;
        let members = listed.as_ref().map(|(_, m)| m.as_slice()).unwrap_or_default();
        // Partitions a member holds count too, committed or not.
        for m in members {
            for tp in &m.partitions {
                committed.entry(tp.clone()).or_insert(-1);
            }
        }
        if listed.is_none() && committed.is_empty() {
            return Err(BrokerError::Engine(EngineError::NoSuchSubscription(group.clone())));
        }
        let topic = committed.keys().next().map(|(t, _)| t.clone()).unwrap_or_else(|| group.to_string());
        let mut info = SubscriptionInfo::external(group.clone(), Name::new(&topic)?);
        for ((t, p), offset) in &committed {
            let Ok(name) = Name::new(t) else { continue };
            let partition = u32::try_from(*p).unwrap_or(0);
            let (low, high) = self.watermarks(&name, partition).await?;
            // No commit yet: a new member starts at the log's start or end; counted from the start.
            let floor = u64::try_from(if *offset < 0 { low } else { *offset }).unwrap_or(0);
            let head = u64::try_from(high).unwrap_or(0);
            let owner =
                members.iter().find(|m| m.partitions.contains(&(t.clone(), *p))).map(|m| m.id.clone());
            info.partitions.push(PartitionLag {
                partition,
                ack_floor: floor,
                head_seq: head,
                lag: head.saturating_sub(floor),
                owner,
            });
        }
        info.ack_floor = info.partitions.iter().map(|p| p.ack_floor).min().unwrap_or(0);
        info.head_seq = info.partitions.iter().map(|p| p.head_seq).max().unwrap_or(0);
        info.offset_lag = info.partitions.iter().map(|p| p.lag).sum();
        info.backlog = info.offset_lag;
        info.pending = info.offset_lag;
        info.consumers = members.iter().map(|m| ConsumerInfo::external(&m.id)).collect();
        Ok(info)
    }

    /// `subs`: the consumer groups the broker lists (of one topic when given).
    pub(super) async fn list_groups(
        &self,
        topic: Option<&Name>,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let names: Vec<String> = self
            .groups(None)
            .await?
            .into_iter()
            .filter(|(_, _, protocol, _)| protocol == "consumer" || protocol.is_empty())
            .map(|(name, ..)| name)
            .collect();
        let mut out = Vec::new();
        for name in names {
            let Ok(name) = Name::new(&name) else { continue };
            let Ok(info) = self.describe_group(&name).await else { continue };
            if topic.is_none_or(|t| *t == info.topic) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// `seek GROUP TARGET`: commits new offsets for every partition the group has, refused while the
    /// group has members (as Kafka's own tools refuse). Returns the next seq of the first partition.
    pub(super) async fn reset_group(&self, group: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        if let Some((state, members)) = self.group_members(group).await?
            && !members.is_empty()
        {
            return Err(BrokerError::Invalid(format!(
                "group \"{group}\" has {} live member(s) (state {state}): Kafka moves a group's offsets only while none runs; stop its consumers first",
                members.len()
            )));
        }
        let committed = self.committed(group).await?;
        if committed.is_empty() {
            return Err(BrokerError::Engine(EngineError::NoSuchSubscription(group.clone())));
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in committed.keys() {
            let Ok(name) = Name::new(t) else { continue };
            let (low, high) = self.watermarks(&name, u32::try_from(*p).unwrap_or(0)).await?;
            let offset = match target {
                SeekTarget::Start => low,
                SeekTarget::End => high,
                SeekTarget::Seq { seq, .. } | SeekTarget::Each(seq) => {
                    convert::offset_of(seq).clamp(low, high)
                }
                SeekTarget::Time(t) => super::consume::millis(t),
            };
            tpl.add_partition_offset(t, *p, Offset::Offset(offset))
                .map_err(|e| convert::error(&self.target.shown, &e))?;
        }
        if let SeekTarget::Time(_) = target {
            tpl = self.offsets_for_times(tpl).await?;
            // Nothing at or after the time: the end.
            let found: Vec<(String, i32, Offset)> =
                tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect();
            let mut ends = TopicPartitionList::new();
            for (topic, partition, offset) in found {
                let offset = match offset {
                    Offset::Offset(o) => o,
                    _ => {
                        let name = Name::new(&topic)?;
                        self.watermarks(&name, u32::try_from(partition).unwrap_or(0)).await?.1
                    }
                };
                ends.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| convert::error(&self.target.shown, &e))?;
            }
            tpl = ends;
        }
        let first = tpl.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(convert::seq_of(o)),
            _ => None,
        });
        let client = self.group_client(group)?;
        let shown = self.target.shown.clone();
        blocking(move || client.commit(&tpl, CommitMode::Sync))
            .await?
            .map_err(|e| convert::error(&shown, &e))?;
        Ok(first.unwrap_or(1))
    }
}

/// How a member is shown: its client id and host where the broker says them, else its member id.
fn member_name(id: &str, client: &str, host: &str) -> String {
    match (client.is_empty(), host.trim_start_matches('/')) {
        (true, _) => id.to_string(),
        (false, "") => client.to_string(),
        (false, host) => format!("{client} ({host})"),
    }
}

/// The partitions in a consumer-protocol member assignment: version (i16), then per topic its name
/// (i16 length + bytes) and partitions (i32 count + i32 each), then user data.
fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let mut at = 2usize;
    let i16_at = |at: usize| bytes.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    let i32_at = |at: usize| bytes.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let Some(topics) = i32_at(at) else { return out };
    at += 4;
    for _ in 0..topics.max(0) {
        let Some(len) = i16_at(at).and_then(|l| usize::try_from(l).ok()) else { return out };
        at += 2;
        let Some(name) = bytes.get(at..at + len).map(|b| String::from_utf8_lossy(b).into_owned()) else {
            return out;
        };
        at += len;
        let Some(n) = i32_at(at) else { return out };
        at += 4;
        for _ in 0..n.max(0) {
            let Some(p) = i32_at(at) else { return out };
            at += 4;
            out.push((name.clone(), p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_assignments_parse_and_truncation_is_harmless() {
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 6];
        b.extend_from_slice(b"orders");
        b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(parse_assignment(&b), vec![("orders".to_string(), 0), ("orders".to_string(), 3)]);
        assert_eq!(parse_assignment(&b[..b.len() - 2]), vec![("orders".to_string(), 0)]);
        assert!(parse_assignment(&[0]).is_empty());
    }
}
