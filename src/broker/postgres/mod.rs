//! PostgreSQL, on `tokio-postgres`. Two kinds of topic: a name without a table is a channel (`pub` is
//! `pg_notify`, `sub` is `LISTEN`: live, text only, no history); `topic create NAME` makes a table-backed
//! topic in pubsub's schema (default `pubsub`), with history, durable subscriptions whose workers claim
//! with `FOR UPDATE SKIP LOCKED`, leases, retries, dead letters and a status view anyone can read with
//! SQL. README "On PostgreSQL" has the mapping and the SQL.
//!
//! The rooms: `url.rs` (the URL, errors), `schema.rs` (migrations: tables, triggers, the view),
//! `publish.rs` (routing, NOTIFY and INSERT), `listen.rs` (dedicated LISTEN connections, live readers of
//! channels and tables), `worker.rs` (claims and settles), `admin.rs` (topics, subscriptions, history).
//!
//! Connections: one command connection (publishes, settles, administration) behind a mutex, opened again
//! when it dies, and one dedicated connection per subscription stream (LISTEN needs a session of its own,
//! and a worker's claims must not queue behind other work). No general pool: pubsub is one process per
//! command, and these two roles are all it has.

mod acks;
mod admin;
mod listen;
mod publish;
mod schema;
mod tls;
mod url;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio_postgres::Client;

use super::{
    AckToken, Broker, BrokerError, Capabilities, Capability, ConnectionEvent, DeliveryStream, Settle,
    SubscribeRequest,
};
use crate::model::{
    BrowseFrom, Message, Name, PeekReport, PublishReceipt, PublishRequest, SeekTarget, SubscriptionConfig,
    SubscriptionInfo, TopicConfig, TopicInfo,
};
use url::{Target, error};

/// What pubsub can do on PostgreSQL: everything on table topics; channels are live only
/// (`topic_capabilities`).
const CAPS: Capabilities = Capabilities::of(&[
    Capability::Ack,
    Capability::Nack,
    Capability::NackDelay,
    Capability::Extend,
    Capability::Term,
    Capability::AckDeadline,
    Capability::DetachedSettle,
    Capability::Replay,
    Capability::Seek,
    Capability::Lag,
    Capability::Peek,
    Capability::Headers,
    Capability::Persistence,
    Capability::CompetingConsumers,
    Capability::DeadLetter,
    Capability::TopicAdmin,
]);

/// What a channel (a name without a table) can do.
const CHANNEL_CAPS: Capabilities = Capabilities::of(&[Capability::TopicAdmin]);

/// A PostgreSQL database used as a broker.
pub struct PostgresBroker {
    target: Target,
    /// The command connection; opened again when it died.
    client: tokio::sync::Mutex<Client>,
    events: broadcast::Sender<ConnectionEvent>,
    /// This process's workers by id, woken when one of their deliveries is settled (room for more).
    workers: Arc<Mutex<HashMap<String, Arc<worker::Refill>>>>,
    next_id: AtomicU64,
    /// Acks waiting to be written together.
    acks: acks::AckQueue,
}

impl std::fmt::Debug for PostgresBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBroker").field("url", &self.target.shown).finish()
    }
}

/// Opens a connection whose messages a task drives (for commands, not LISTEN).
async fn open(target: &Target) -> Result<Client, BrokerError> {
    let (client, connection) = target.connect().await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl PostgresBroker {
    /// Connects to `postgres[ql]://…` and creates or migrates pubsub's schema.
    pub async fn connect(url: &str) -> Result<PostgresBroker, BrokerError> {
        let target = Target::parse(url.trim())?;
        let mut client = open(&target).await?;
        schema::migrate(&mut client, &target).await?;
        let (events, _) = broadcast::channel(64);
        Ok(PostgresBroker {
            target,
            client: tokio::sync::Mutex::new(client),
            events,
            workers: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            acks: acks::AckQueue::default(),
        })
    }

    /// The command connection, opened again (and the outage reported) when it closed.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, BrokerError> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            let _ = self
                .events
                .send(ConnectionEvent::Disconnected { reason: "the connection to PostgreSQL closed".into() });
            *client = open(&self.target).await?;
            let _ = self.events.send(ConnectionEvent::Reconnected);
        }
        Ok(client)
    }

    fn fail(&self, e: &tokio_postgres::Error) -> BrokerError {
        error(&self.target.shown, e)
    }

    /// Wakes this process's worker `id`, if it is one of ours.
    fn wake_worker(&self, id: Option<&str>) {
        if let Some(id) = id
            && let Some(n) = self.workers.lock().unwrap_or_else(PoisonError::into_inner).get(id)
        {
            n.settled();
        }
    }
}

#[async_trait]
impl Broker for PostgresBroker {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn url(&self) -> String {
        self.target.shown.clone()
    }

    fn capabilities(&self) -> Capabilities {
        CAPS
    }

    async fn topic_capabilities(&self, topic: &Name) -> Result<Capabilities, BrokerError> {
        if self.table_exists(topic).await? { Ok(CAPS) } else { Ok(CHANNEL_CAPS) }
    }

    fn why_not(&self, capability: Capability) -> &'static str {
        match capability {
            Capability::Patterns => {
                "LISTEN takes one channel name, no wildcards: subscribe to each name, or publish to one table topic"
            }
            Capability::Partitions => "a table topic is one ordered log",
            Capability::Retain => "PostgreSQL keeps no last message per channel; a table topic keeps history",
            Capability::RequestReply => "not offered on PostgreSQL",
            Capability::CumulativeAck => "each job is settled by its own row",
            Capability::Ack
            | Capability::Nack
            | Capability::NackDelay
            | Capability::Extend
            | Capability::Term
            | Capability::AckDeadline
            | Capability::Replay
            | Capability::Seek
            | Capability::Lag
            | Capability::Peek
            | Capability::Headers
            | Capability::Persistence
            | Capability::CompetingConsumers
            | Capability::DeadLetter => {
                "a channel (NOTIFY) is live only: `topic create NAME` makes a table topic with history and job queues"
            }
            _ => "",
        }
    }

    async fn publish(&self, msg: PublishRequest) -> Result<PublishReceipt, BrokerError> {
        self.check_options(&msg)?;
        let mut receipts = self.publish_all(std::slice::from_ref(&msg)).await.map_err(|e| match e {
            BrokerError::Batch { source, .. } => *source,
            other => other,
        })?;
        receipts.pop().ok_or_else(|| BrokerError::Protocol("PostgreSQL returned no receipt".into()))
    }

    async fn publish_batch(&self, msgs: Vec<PublishRequest>) -> Result<Vec<PublishReceipt>, BrokerError> {
        for msg in &msgs {
            self.check_options(msg)?;
        }
        self.publish_all(&msgs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<DeliveryStream, BrokerError> {
        if req.subscription.is_some() {
            self.subscribe_worker(req).await
        } else {
            self.subscribe_reader(req).await
        }
    }

    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BrokerError> {
        self.check_settle(&how)?;
        match how {
            Settle::Ack => self.ack_grouped(token).await?,
            how => self.settle_row(token, how).await?,
        }
        self.wake_worker(token.reply.as_deref());
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, BrokerError> {
        self.list_topics(None).await
    }

    async fn topic_info(&self, name: &Name) -> Result<TopicInfo, BrokerError> {
        let mut found = self.list_topics(Some(name)).await?;
        found.pop().ok_or_else(|| BrokerError::Engine(crate::model::EngineError::NoSuchTopic(name.clone())))
    }

    async fn create_topic(&self, config: TopicConfig) -> Result<TopicInfo, BrokerError> {
        super::engine_only_topic_settings(&config, "PostgreSQL", super::Honours::default())?;
        self.create_table_topic(&config).await?;
        self.topic_info(&config.name).await
    }

    async fn delete_topic(&self, name: &Name) -> Result<(), BrokerError> {
        self.drop_topic(name).await
    }

    async fn purge_topic(&self, name: &Name) -> Result<u64, BrokerError> {
        self.purge(name).await
    }

    async fn subscriptions(&self, topic: Option<&Name>) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.list_subscriptions(topic, None).await
    }

    async fn subscription_info(&self, name: &Name) -> Result<SubscriptionInfo, BrokerError> {
        let mut found = self.list_subscriptions(None, Some(name)).await?;
        found
            .pop()
            .ok_or_else(|| BrokerError::Engine(crate::model::EngineError::NoSuchSubscription(name.clone())))
    }

    async fn create_subscription(&self, config: SubscriptionConfig) -> Result<SubscriptionInfo, BrokerError> {
        super::no_attribute_filter(&config, "PostgreSQL")?;
        super::engine_only_subscription_settings(&config, "PostgreSQL", super::Honours::default())?;
        self.make_subscription(&config).await?;
        self.subscription_info(&config.name).await
    }

    async fn delete_subscription(&self, name: &Name) -> Result<(), BrokerError> {
        self.drop_subscription(name).await
    }

    async fn browse(&self, topic: &Name, from: BrowseFrom, max: usize) -> Result<Vec<Message>, BrokerError> {
        let from = self.one_partition(topic, from)?;
        self.read_table(topic, from, max).await
    }

    async fn seek(&self, subscription: &Name, target: SeekTarget) -> Result<u64, BrokerError> {
        self.seek_subscription(subscription, target).await
    }

    async fn peek(&self, subscription: &Name, from: u64, limit: usize) -> Result<PeekReport, BrokerError> {
        self.peek_states(subscription, from, limit).await
    }

    fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }
}
