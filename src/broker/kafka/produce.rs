//! Publishing: one record per message (key → Kafka key, so the default partitioner puts a key where
//! Kafka's own clients would; headers → Kafka headers), a batch handed to librdkafka at once and its
//! delivery reports awaited in order.

use std::sync::PoisonError;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::url::Target;
use super::{KafkaBroker, blocking, convert};
use crate::broker::BrokerError;
use crate::model::{EngineError, Name, PublishReceipt, PublishRequest};

/// The producer of a broker: acks and compression from the URL, idempotent with `acks=all`.
pub(super) fn make(
    target: &Target,
    context: &convert::Context,
) -> Result<FutureProducer<convert::Context>, BrokerError> {
    let mut c = target.config();
    c.set("acks", target.acks)
        .set("compression.type", target.compression)
        .set("linger.ms", "1")
        .set("batch.num.messages", target.batch.to_string())
        // A record that cannot be delivered fails within this long instead of five minutes.
        .set("message.timeout.ms", "30000");
    if target.acks == "all" {
        c.set("enable.idempotence", "true");
    }
    c.create_with_context(context.clone())
        .map_err(|e| BrokerError::Invalid(format!("Kafka producer settings: {e}")))
}

impl KafkaBroker {
    /// Refuses a message for a topic the broker does not have, or a partition the topic does not have.
    async fn check_target(&self, msg: &PublishRequest) -> Result<(), BrokerError> {
        let topic = msg.subject.as_str();
        let known = self.partitions.lock().unwrap_or_else(PoisonError::into_inner).get(topic).copied();
        let (count, max) = match known {
            Some(known) => known,
            None => {
                convert::kafka_topic(topic)?;
                let Some(n) = self.created_on_first_use(&msg.subject).await? else {
                    return Err(BrokerError::Invalid(format!(
                        "topic \"{topic}\" does not exist on this Kafka cluster, which does not create topics on first use: `pubsub topic create {topic} --partitions N` makes it"
                    )));
                };
                let max = self.max_message_bytes(&msg.subject).await;
                self.partitions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(topic.to_string(), (n, max));
                (n, max)
            }
        };
        // Checked here too: not every Kafka-protocol broker enforces the topic's limit (Tansu does not).
        if let Some(max) = max
            && msg.size() > usize::try_from(max).unwrap_or(usize::MAX)
        {
            return Err(BrokerError::Engine(EngineError::MessageTooLarge {
                topic: msg.subject.clone(),
                size: msg.size(),
                max,
            }));
        }
        match msg.options.partition {
            Some(p) if p >= count => Err(BrokerError::Invalid(format!(
                "topic \"{topic}\" has {count} partition(s), numbered 0 to {}: there is no partition {p}",
                count.saturating_sub(1)
            ))),
            _ => Ok(()),
        }
    }

    /// The partition count of `topic`, asking through the producer when the topic is missing: a broker
    /// that creates topics on first use (Kafka's default) makes it then, as it would for any producer.
    /// `None` when it stays missing.
    async fn created_on_first_use(&self, topic: &Name) -> Result<Option<u32>, BrokerError> {
        if let Some(n) = self.partition_count(topic).await? {
            return Ok(Some(n));
        }
        let producer = self.producer.clone();
        let name = topic.to_string();
        let shown = self.target.shown.clone();
        // A new topic's partitions need a moment to get leaders; a few asks, then it is missing.
        for _ in 0..10 {
            let (p, n) = (producer.clone(), name.clone());
            let md = blocking(move || {
                rdkafka::producer::Producer::client(&p).fetch_metadata(Some(&n), super::REQUEST_TIMEOUT)
            })
            .await?
            .map_err(|e| convert::error(&shown, &e))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else { return Ok(None) };
            match t.error() {
                None if !t.partitions().is_empty() => {
                    return Ok(Some(u32::try_from(t.partitions().len()).unwrap_or(u32::MAX)));
                }
                Some(e)
                    if rdkafka::types::RDKafkaErrorCode::from(e)
                        == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition =>
                {
                    return Ok(None);
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(None)
    }

    /// Publishes `msgs` in order; the receipts name partition and seq (offset + 1).
    pub(super) async fn produce(&self, msgs: &[PublishRequest]) -> Result<Vec<PublishReceipt>, BrokerError> {
        let batch = |index: usize, e: BrokerError| {
            if msgs.len() == 1 { e } else { BrokerError::Batch { index, source: Box::new(e) } }
        };
        for (index, m) in msgs.iter().enumerate() {
            self.check_target(m).await.map_err(|e| batch(index, e))?;
        }
        let producer = &self.producer;
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(msgs.len());
        let mut receipts = Vec::with_capacity(msgs.len());
        for m in msgs {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            loop {
                let mut record =
                    FutureRecord::to(m.subject.as_str()).payload(&m.payload[..]).headers(headers.clone());
                if let Some(key) = &m.key {
                    record = record.key(&key[..]);
                }
                if let Some(p) = m.options.partition {
                    record = record.partition(i32::try_from(p).unwrap_or(i32::MAX));
                }
                match producer.send_result(record) {
                    Ok(future) => {
                        pending.push(future);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // librdkafka's queue is full: take in what was sent, then try again.
                        self.settle_reports(&mut pending, &mut receipts, msgs).await?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        return Err(batch(
                            receipts.len() + pending.len(),
                            convert::error(&self.target.shown, &e),
                        ));
                    }
                }
            }
        }
        self.settle_reports(&mut pending, &mut receipts, msgs).await?;
        Ok(receipts)
    }

    /// Awaits the delivery reports of `pending`, in order, into `receipts`.
    async fn settle_reports(
        &self,
        pending: &mut Vec<DeliveryFuture>,
        receipts: &mut Vec<PublishReceipt>,
        msgs: &[PublishRequest],
    ) -> Result<(), BrokerError> {
        let total = msgs.len();
        for future in pending.drain(..) {
            let index = receipts.len();
            let wrap = |e: BrokerError| {
                if total == 1 { e } else { BrokerError::Batch { index, source: Box::new(e) } }
            };
            match future.await {
                Ok(Ok(d)) => receipts.push(PublishReceipt {
                    partition: u32::try_from(d.partition).unwrap_or(0),
                    seq: convert::seq_of(d.offset),
                    topic: msgs.get(index).map(|m| m.subject.clone()),
                    ..PublishReceipt::default()
                }),
                Ok(Err((e, _))) => return Err(wrap(convert::error(&self.target.shown, &e))),
                Err(_) => return Err(wrap(BrokerError::Protocol("the Kafka producer went away".into()))),
            }
        }
        Ok(())
    }
}
