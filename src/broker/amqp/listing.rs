//! What only the management API tells: topics (stream queues) and subscriptions (durable queues)
//! listed, with ready and unacked counts, consumers, rates and the routing key each queue is bound by.

use serde_json::Value;

use super::AmqpBroker;
use super::management::{count, get, rate, segment};
use crate::broker::BrokerError;
use crate::model::{ConsumerInfo, Name, SubscriptionInfo, TopicInfo};

impl AmqpBroker {
    /// Every queue of the vhost as the management API lists it.
    async fn queues(&self, what: &str) -> Result<Vec<Value>, BrokerError> {
        let path = format!(
            "/api/queues/{}?columns=name,type,messages,messages_ready,messages_unacknowledged,message_bytes,consumers,exclusive,message_stats",
            segment(&self.target.vhost)
        );
        let listed = get(&self.target, &path).await.map_err(|why| {
            BrokerError::Invalid(format!("listing {what} needs RabbitMQ's management API: {why}"))
        })?;
        Ok(listed.as_array().cloned().unwrap_or_default())
    }

    /// `topics`: the stream queues (topics with history) of the vhost.
    pub(super) async fn list_streams(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        let mut topics = Vec::new();
        for q in self.queues("topics").await? {
            if q.get("type").and_then(Value::as_str) != Some("stream") {
                continue;
            }
            let Some(name) = q.get("name").and_then(Value::as_str).and_then(|n| Name::new(n).ok()) else {
                continue;
            };
            let mut info = TopicInfo::external(
                name,
                count(&q, "messages"),
                q.get("message_bytes").and_then(Value::as_u64),
            );
            info.subscriptions = u32::try_from(count(&q, "consumers")).unwrap_or(u32::MAX);
            info.publish_rate = rate(&q, "publish");
            topics.push(info);
        }
        Ok(topics)
    }

    /// `subs`: the durable queues (subscriptions) of the vhost, of one topic when given.
    pub(super) async fn list_queues(
        &self,
        topic: Option<&Name>,
    ) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        let mut subs = Vec::new();
        for q in self.queues("subscriptions").await? {
            let stream = q.get("type").and_then(Value::as_str) == Some("stream");
            let exclusive = q.get("exclusive").and_then(Value::as_bool).unwrap_or(false);
            let Some(name) = q.get("name").and_then(Value::as_str).and_then(|n| Name::new(n).ok()) else {
                continue;
            };
            if stream || exclusive {
                continue; // topics, and live subscribers' private queues
            }
            let bound = self.bound_key(&name).await;
            if topic.is_some_and(|t| bound.as_ref() != Some(t)) {
                continue;
            }
            subs.push(self.sub_from(name, bound, &q));
        }
        Ok(subs)
    }

    /// The management API's view of one queue, when it is reachable.
    pub(super) async fn queue_details(&self, name: &Name) -> Option<Value> {
        let path = format!("/api/queues/{}/{}", segment(&self.target.vhost), segment(name.as_str()));
        get(&self.target, &path).await.ok()
    }

    /// The routing key a queue is bound to the exchange by (its topic), when the API says.
    pub(super) async fn bound_key(&self, queue: &Name) -> Option<Name> {
        let path =
            format!("/api/queues/{}/{}/bindings", segment(&self.target.vhost), segment(queue.as_str()));
        let bindings = get(&self.target, &path).await.ok()?;
        bindings
            .as_array()?
            .iter()
            .filter(|b| b.get("source").and_then(Value::as_str) == Some(self.target.exchange.as_str()))
            .find_map(|b| b.get("routing_key").and_then(Value::as_str).and_then(|k| Name::new(k).ok()))
    }

    /// A subscription from the API's figures for its queue.
    pub(super) fn sub_from(&self, name: Name, topic: Option<Name>, q: &Value) -> SubscriptionInfo {
        let topic = topic.or_else(|| Name::new(&self.target.exchange).ok()).unwrap_or_else(|| name.clone());
        let mut info = SubscriptionInfo::external(name, topic);
        let (ready, unacked) = (count(q, "messages_ready"), count(q, "messages_unacknowledged"));
        info.pending = ready;
        info.in_flight = unacked;
        info.backlog = ready + unacked;
        info.offset_lag = ready + unacked;
        info.max_in_flight = u32::from(self.target.prefetch);
        info.publish_rate = rate(q, "publish");
        info.deliver_rate = rate(q, "deliver_get");
        info.ack_rate = rate(q, "ack");
        info.consumers = consumers(count(q, "consumers"), u32::from(self.target.prefetch));
        info.with_one_partition(None)
    }
}

/// `n` consumers that the broker counts but does not describe.
pub(super) fn consumers(n: u64, prefetch: u32) -> Vec<ConsumerInfo> {
    (1..=n)
        .map(|i| ConsumerInfo { push: true, prefetch, ..ConsumerInfo::external(&format!("consumer-{i}")) })
        .collect()
}
