//! The broker abstraction over the in-process backend (`mem://`).

use std::time::Duration;

use pubsub::broker::local::LocalBroker;
use pubsub::broker::{Broker, BrokerError, Capability, Settle, StreamItem, SubscribeRequest, url};
use pubsub::engine::{
    AckMode, Engine, FetchOptions, Pattern, PublishRequest, StartPosition, SubscriptionConfig,
};

use crate::support::name;

#[tokio::test]
async fn mem_url_opens_an_in_process_engine_with_its_capabilities() {
    let broker = url::connect("mem://").await.unwrap();
    assert_eq!(broker.kind(), "mem");
    let caps = broker.capabilities();
    assert!(caps.has(Capability::Ack) && caps.has(Capability::Replay) && caps.has(Capability::Lag));
    assert!(!caps.has(Capability::Persistence), "mem:// keeps nothing across restarts");
}

#[tokio::test]
async fn unknown_backends_and_unreachable_kafka_are_clear_errors() {
    let err = url::connect("gopher://x").await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownScheme { .. }), "{err}");
    assert_eq!(err.exit_code(), 2);
    // Port 1 on loopback: nothing listens, and librdkafka's refusal is reported at once.
    let err = url::connect("kafka://127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, BrokerError::Unreachable { .. }), "{err}");
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test]
async fn live_subscribe_receives_what_is_published_after_it() {
    let broker = LocalBroker::new(Engine::new(), "mem://");
    broker.publish(PublishRequest::new(name("orders.eu"), "before")).await.unwrap();
    let mut stream =
        broker.subscribe(SubscribeRequest::live(vec![Pattern::parse("orders.*").unwrap()])).await.unwrap();
    let receipt = broker.publish(PublishRequest::new(name("orders.us"), "after")).await.unwrap();
    assert_eq!(receipt.taps, 1);
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let StreamItem::Delivery(d) = item else { panic!("expected a delivery, got {item:?}") };
    assert_eq!(d.message.payload.as_ref(), b"after");
    assert!(d.token.is_none(), "live taps have nothing to ack");
}

#[tokio::test]
async fn durable_subscription_streams_with_acks_and_history() {
    let broker = LocalBroker::new(Engine::new(), "mem://");
    for i in 0..3 {
        broker.publish(PublishRequest::new(name("jobs"), format!("job {i}"))).await.unwrap();
    }
    let mut req = SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()]);
    req.subscription = Some(name("workers"));
    req.from = Some(StartPosition::All);
    req.ack = AckMode::Explicit;
    let mut stream = broker.subscribe(req).await.unwrap();
    for expected in 1..=3 {
        let item =
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        let StreamItem::Delivery(d) = item else { panic!("expected a delivery") };
        assert_eq!(d.message.seq, expected);
        broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    }
    let info = broker.subscription_info(&name("workers")).await.unwrap();
    assert_eq!((info.ack_floor, info.backlog), (3, 0));
}

/// The server batches what a stream has ready into one frame; a durable stream must hand over waiting
/// deliveries without a wait (one message per frame made the served engine four times slower).
#[tokio::test]
async fn durable_stream_hands_over_waiting_deliveries_without_waiting() {
    let broker = LocalBroker::new(Engine::new(), "mem://");
    let mut config = SubscriptionConfig::new(name("batch"), name("jobs"));
    config.start = StartPosition::All;
    broker.create_subscription(config).await.unwrap();
    let msgs = (0..50).map(|i| PublishRequest::new(name("jobs"), format!("job {i}"))).collect();
    broker.publish_batch(msgs).await.unwrap();
    let mut req = SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()]);
    req.subscription = Some(name("batch"));
    req.prefetch = Some(100);
    let mut stream = broker.subscribe(req).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let mut seqs = vec![first];
    while let Some(item) = stream.try_next() {
        seqs.push(item.unwrap());
    }
    let seqs: Vec<u64> = seqs
        .into_iter()
        .map(|item| match item {
            StreamItem::Delivery(d) => d.message.seq,
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>(), "all 50 waiting deliveries, in order, without a wait");
}

#[tokio::test]
async fn pull_fetch_long_polls_until_a_message_arrives() {
    let broker = std::sync::Arc::new(LocalBroker::new(Engine::new(), "mem://"));
    let mut config = SubscriptionConfig::new(name("pull"), name("q"));
    config.start = StartPosition::All;
    broker.create_subscription(config).await.unwrap();
    let waiter = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let opts =
                FetchOptions { max_msgs: 10, wait: Some(Duration::from_secs(10)), ..FetchOptions::default() };
            broker.fetch(&name("pull"), "c1", opts).await
        })
    };
    tokio::task::yield_now().await;
    broker.publish(PublishRequest::new(name("q"), "wake up")).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].message.payload.as_ref(), b"wake up");
}

#[tokio::test(start_paused = true)]
async fn pull_fetch_returns_empty_when_the_wait_ends() {
    let broker = LocalBroker::new(Engine::new(), "mem://");
    let config = SubscriptionConfig::new(name("idle"), name("quiet"));
    broker.create_subscription(config).await.unwrap();
    let opts = FetchOptions { max_msgs: 10, wait: Some(Duration::from_secs(30)), ..FetchOptions::default() };
    let batch = broker.fetch(&name("idle"), "c1", opts).await.unwrap();
    assert!(batch.is_empty());
}

#[tokio::test]
async fn push_consumers_compete_and_a_dropped_one_gives_its_messages_back() {
    let engine = Engine::new();
    let mut config = SubscriptionConfig::new(name("pool"), name("tasks"));
    config.start = StartPosition::All;
    engine.create_subscription(config).unwrap();
    let mut a = engine
        .attach(
            &name("pool"),
            pubsub::engine::AttachOptions { consumer: Some("a".into()), prefetch: Some(2), limit: None },
        )
        .unwrap();
    let b = engine
        .attach(
            &name("pool"),
            pubsub::engine::AttachOptions { consumer: Some("b".into()), prefetch: Some(2), limit: None },
        )
        .unwrap();
    for i in 0..4 {
        engine.publish(PublishRequest::new(name("tasks"), format!("t{i}"))).unwrap();
    }
    let info = engine.subscription_info(&name("pool")).unwrap();
    assert_eq!(info.in_flight, 4, "both consumers filled their prefetch");
    assert!(info.consumers.iter().all(|c| c.in_flight == 2), "{:?}", info.consumers);
    drop(b);
    let info = engine.subscription_info(&name("pool")).unwrap();
    assert_eq!((info.in_flight, info.redeliverable), (2, 2), "b's two went back");
    for _ in 0..2 {
        let d = a.recv().await.unwrap();
        engine.ack(&name("pool"), d.lease.unwrap()).unwrap();
    }
    // Acking freed credit, so a now holds b's two. b never read them (they sat in its queue), so they
    // come back without a spent attempt (issue 19: a reader that leaves early costs nothing it did not see).
    let mut attempts = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), a.recv()).await.unwrap().unwrap();
        attempts.push(d.attempt);
        engine.ack(&name("pool"), d.lease.unwrap()).unwrap();
    }
    assert_eq!(attempts, vec![1, 1]);
    assert_eq!(engine.subscription_info(&name("pool")).unwrap().backlog, 0);
}
