//! `pubsub serve` over a real socket: every operation through the remote backend, auth and limits,
//! malformed input, slow readers and reconnects. Servers bind port 0.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_util::sync::CancellationToken;

use pubsub::broker::local::LocalBroker;
use pubsub::broker::remote::RemoteBroker;
use pubsub::broker::{Broker, BrokerError, ConnectionEvent, Settle, StreamItem, SubscribeRequest};
use pubsub::engine::{
    AckMode, BrowseFrom, Engine, FetchOptions, Pattern, PublishRequest, SeekTarget, StartPosition,
    SubscriptionConfig, TopicConfig,
};
use pubsub::server::{self, ServeConfig, ServeLimits};

use crate::support::name;

/// A server on a free loopback port; dropping it stops the server.
pub struct TestServer {
    pub url: String,
    pub engine: Engine,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(config: ServeConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, config, Engine::new()).await
}

/// [`start`] with an engine of these settings (on the system clock).
pub async fn start_with_engine(config: ServeConfig, engine: pubsub::engine::EngineConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock = Arc::new(pubsub::engine::SystemClock);
    start_on(listener, config, Engine::with_clock(clock, engine)).await
}

async fn start_on(listener: TcpListener, config: ServeConfig, engine: Engine) -> TestServer {
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let broker = Arc::new(LocalBroker::new(engine.clone(), "mem://"));
    let stop = CancellationToken::new();
    tokio::spawn(server::run(listener, broker, config, stop.clone()));
    TestServer { url, engine, stop }
}

pub async fn client(server: &TestServer) -> RemoteBroker {
    RemoteBroker::connect(&server.url, None).await.unwrap()
}

async fn next_delivery(stream: &mut pubsub::broker::DeliveryStream) -> pubsub::broker::BrokerDelivery {
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap() {
        StreamItem::Delivery(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn every_operation_round_trips_over_the_socket() {
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;

    let mut topic = TopicConfig::new(name("orders"));
    topic.subjects = vec![Pattern::parse("orders.>").unwrap()];
    topic.limits.max_msgs = Some(1000);
    let info = c.create_topic(topic).await.unwrap();
    assert_eq!(info.subjects, vec!["orders.>".to_string()]);

    let receipt = c
        .publish(
            PublishRequest::new(name("orders.eu"), vec![0u8, 255, 1]).with_key("k1").with_header("h", "v"),
        )
        .await
        .unwrap();
    assert_eq!((receipt.seq, receipt.topic.as_ref().map(|t| t.as_str())), (1, Some("orders")));
    let receipts = c
        .publish_batch((0..4).map(|i| PublishRequest::new(name("orders.us"), format!("m{i}"))).collect())
        .await
        .unwrap();
    assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3, 4, 5]);

    let topics = c.topics().await.unwrap();
    assert_eq!((topics.len(), topics[0].messages), (1, 5));
    let browsed = c.browse(&name("orders"), BrowseFrom::Seq(1), 2).await.unwrap();
    assert_eq!(browsed[0].payload.as_ref(), &[0u8, 255, 1], "binary payload survives the wire");
    assert_eq!(browsed[0].key().map(|k| k.as_ref()), Some(&b"k1"[..]));
    assert_eq!(browsed[0].headers().get("h").map(String::as_str), Some("v"));
    assert_eq!(browsed[0].subject().as_str(), "orders.eu");

    let mut sub = SubscriptionConfig::new(name("audit"), name("orders"));
    sub.start = StartPosition::All;
    sub.ack_deadline = Duration::from_secs(10);
    c.create_subscription(sub).await.unwrap();
    let batch =
        c.fetch(&name("audit"), "c1", FetchOptions { max_msgs: 3, ..FetchOptions::default() }).await.unwrap();
    assert_eq!(batch.iter().map(|d| d.message.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    c.settle(batch[0].token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    c.settle(batch[1].token.as_ref().unwrap(), Settle::Extend(Duration::from_secs(20))).await.unwrap();
    c.settle(batch[2].token.as_ref().unwrap(), Settle::Nack(Some(Duration::ZERO))).await.unwrap();
    let again = c.settle(batch[0].token.as_ref().unwrap(), Settle::Ack).await;
    assert!(again.is_ok(), "double ack is idempotent: {again:?}");
    let info = c.subscription_info(&name("audit")).await.unwrap();
    assert_eq!((info.ack_floor, info.in_flight, info.redeliverable, info.pending), (1, 1, 1, 2));
    let peek = c.peek(&name("audit"), 0, 10).await.unwrap();
    assert_eq!(peek.messages.len(), 4);
    c.settle(batch[1].token.as_ref().unwrap(), Settle::Term("done with it".into())).await.unwrap();
    assert_eq!(c.seek(&name("audit"), SeekTarget::Start).await.unwrap(), 1);
    assert_eq!(c.subscriptions(None).await.unwrap().len(), 1);
    c.delete_subscription(&name("audit")).await.unwrap();
    assert_eq!(c.purge_topic(&name("orders")).await.unwrap(), 5);
    c.delete_topic(&name("orders")).await.unwrap();
    assert!(c.topics().await.unwrap().is_empty());
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.connections, 1);
}

#[tokio::test]
async fn engine_refusals_arrive_as_numbered_errors() {
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;
    let err = c.topic_info(&name("missing")).await.unwrap_err();
    assert!(matches!(err, BrokerError::Remote { code: 2001, .. }), "{err}");
    assert!(err.to_string().contains("no topic named \"missing\""), "{err}");
}

#[tokio::test]
async fn durable_subscription_streams_with_leases_and_live_taps_stream_without() {
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;
    let mut live =
        c.subscribe(SubscribeRequest::live(vec![Pattern::parse("jobs.*").unwrap()])).await.unwrap();
    let mut req = SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()]);
    req.subscription = Some(name("workers"));
    req.from = Some(StartPosition::All);
    req.ack = AckMode::Explicit;
    req.prefetch = Some(10);
    let mut durable = c.subscribe(req).await.unwrap();
    c.publish(PublishRequest::new(name("jobs"), "job-1")).await.unwrap();
    c.publish(PublishRequest::new(name("jobs.x"), "tap-1")).await.unwrap();
    let d = next_delivery(&mut durable).await;
    assert_eq!((d.message.payload.as_ref(), d.attempt), (&b"job-1"[..], Some(1)));
    c.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    let t = next_delivery(&mut live).await;
    assert_eq!(t.message.payload.as_ref(), b"tap-1");
    assert!(t.token.is_none());
    let info = c.subscription_info(&name("workers")).await.unwrap();
    assert_eq!((info.ack_floor, info.in_flight), (1, 0));
}

/// A stream ends when the client it came from is dropped, instead of waiting for ever for deliveries
/// that no connection will bring (found while load-testing shared demos).
#[tokio::test]
async fn a_remote_stream_ends_when_its_client_is_dropped() {
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;
    let mut live = c.subscribe(SubscribeRequest::live(vec![Pattern::parse("news").unwrap()])).await.unwrap();
    c.publish(PublishRequest::new(name("news"), "first")).await.unwrap();
    assert_eq!(next_delivery(&mut live).await.message.payload.as_ref(), b"first");
    drop(c);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match live.next().await {
                None => return,
                Some(Ok(StreamItem::Delivery(d))) => panic!("a delivery after the client went: {d:?}"),
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream of a dropped client is still open after 5 s");
}

#[tokio::test]
async fn long_poll_fetch_waits_for_a_message() {
    let server = start(ServeConfig::default()).await;
    let c = Arc::new(client(&server).await);
    c.create_subscription(SubscriptionConfig::new(name("q"), name("work"))).await.unwrap();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let opts =
                FetchOptions { max_msgs: 5, wait: Some(Duration::from_secs(10)), ..FetchOptions::default() };
            c.fetch(&name("q"), "c1", opts).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Other requests on the same connection are not held up by the long poll.
    c.publish(PublishRequest::new(name("work"), "now")).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(batch.len(), 1);
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused() {
    let config = ServeConfig { token: Some("s3cret".into()), ..ServeConfig::default() };
    let server = start(config).await;
    let err = RemoteBroker::connect(&server.url, Some("wrong".into())).await.unwrap_err();
    assert!(matches!(err, BrokerError::Auth { .. }), "{err}");
    assert_eq!(err.exit_code(), 5);
    let err = RemoteBroker::connect(&server.url, None).await.unwrap_err();
    assert!(err.to_string().contains("needs a token"), "{err}");
    let ok = RemoteBroker::connect(&format!("{}?token=s3cret", server.url), None).await.unwrap();
    assert!(ok.topics().await.unwrap().is_empty());
}

#[test]
fn exposing_beyond_loopback_needs_a_token_or_insecure() {
    let public: std::net::SocketAddr = "0.0.0.0:7077".parse().unwrap();
    let err = server::check_exposure(&public, None, false).unwrap_err();
    assert!(err.contains("--token") && err.contains("--insecure"), "{err}");
    assert!(server::check_exposure(&public, Some("t"), false).is_ok());
    let err = server::check_exposure(&public, Some(""), false).unwrap_err();
    assert!(err.contains("an empty token is none"), "an empty token is no token: {err}");
    assert!(server::check_exposure(&public, None, true).is_ok());
    assert!(server::check_exposure(&"127.0.0.1:0".parse().unwrap(), None, false).is_ok());
}

/// A raw WebSocket client that speaks JSON text by hand.
pub struct Raw {
    pub ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Raw { ws }
    }

    pub async fn hello(url: &str) -> Raw {
        let mut raw = Raw::connect(url).await;
        raw.send(r#"{"op":"hello","id":1,"version":1}"#).await;
        assert_eq!(raw.recv().await["op"], "welcome");
        raw
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Ws::Text(text.to_string().into())).await.unwrap();
    }

    /// The next JSON frame, or `null` when the server closed.
    pub async fn recv(&mut self) -> serde_json::Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.unwrap() {
                Some(Ok(Ws::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => return serde_json::Value::Null,
                Some(Ok(_)) => {}
            }
        }
    }
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_server_keeps_serving() {
    let limits = ServeLimits { max_frame_bytes: 4096, max_message_bytes: 1024, ..ServeLimits::default() };
    let server = start(ServeConfig { limits, ..ServeConfig::default() }).await;
    let mut raw = Raw::hello(&server.url).await;
    for (frame, code) in [
        ("{not json", 1000),
        ("[1, 2, 3]", 1000),
        (r#"{"op":"teleport","id":9}"#, 1001),
        (r#"{"op":"ack","id":10,"subscription":"s","seq":"x","lease":1}"#, 1002),
        (r#"{"op":"topic_info","id":11,"topic":"bad..name"}"#, 1002),
        (r#"{"op":"hello","id":12,"version":1}"#, 1002),
        (r#"{"op":"unsubscribe","id":13,"sid":99}"#, 1012),
    ] {
        raw.send(frame).await;
        let answer = raw.recv().await;
        assert_eq!((answer["op"].as_str(), answer["code"].as_u64()), (Some("error"), Some(code)), "{frame}");
    }
    let big_payload = "x".repeat(2000);
    raw.send(&format!(r#"{{"op":"publish","id":14,"message":{{"subject":"t","payload":"{big_payload}"}}}}"#))
        .await;
    assert_eq!(raw.recv().await["code"], 1007, "message over max_message_bytes");
    raw.send(&format!(r#"{{"op":"ping","id":15,"pad":"{}"}}"#, "y".repeat(5000))).await;
    assert_eq!(raw.recv().await["code"], 1006, "frame over max_frame_bytes");
    raw.ws.send(Ws::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    assert_eq!(raw.recv().await["code"], 1011);
    raw.send(r#"{"op":"ping","id":16}"#).await;
    assert_eq!(raw.recv().await, serde_json::json!({"op":"ok","id":16}), "the connection still works");

    // A frame far over the limit (beyond twice the limit plus 64 KiB) closes that connection only.
    raw.send(&"z".repeat(100_000)).await;
    assert_eq!(raw.recv().await, serde_json::Value::Null);
    let other = client(&server).await;
    assert!(other.topics().await.is_ok(), "other clients are still served");
}

#[tokio::test]
async fn first_frame_must_be_hello_with_a_known_version() {
    let server = start(ServeConfig::default()).await;
    let mut raw = Raw::connect(&server.url).await;
    raw.send(r#"{"op":"topics","id":1}"#).await;
    assert_eq!(raw.recv().await["code"], 1004);
    assert_eq!(raw.recv().await, serde_json::Value::Null, "closed after refusing");
    let mut raw = Raw::connect(&server.url).await;
    raw.send(r#"{"op":"hello","id":1,"version":99}"#).await;
    assert_eq!(raw.recv().await["code"], 1003);
}

#[tokio::test]
async fn stream_and_in_flight_limits_are_enforced_per_connection() {
    let limits = ServeLimits { max_subscriptions: 2, max_in_flight: 100, ..ServeLimits::default() };
    let server = start(ServeConfig { limits, ..ServeConfig::default() }).await;
    let c = client(&server).await;
    let tap = || SubscribeRequest::live(vec![Pattern::parse("a").unwrap()]);
    let mut greedy = tap();
    greedy.prefetch = Some(101);
    let err = c.subscribe(greedy).await.unwrap_err();
    assert!(matches!(err, BrokerError::Remote { code: 1010, .. }), "{err}");
    let _a = c.subscribe(tap()).await.map(|_| ()).err();
    let mut small = tap();
    small.prefetch = Some(10);
    let _one = c.subscribe(small.clone()).await.unwrap();
    let _two = c.subscribe(small.clone()).await.unwrap();
    let err = c.subscribe(small).await.unwrap_err();
    assert!(matches!(err, BrokerError::Remote { code: 1009, .. }), "{err}");
}

#[tokio::test]
async fn connections_over_the_limit_are_told_and_closed() {
    let limits = ServeLimits { max_connections: 1, ..ServeLimits::default() };
    let server = start(ServeConfig { limits, ..ServeConfig::default() }).await;
    let _first = client(&server).await;
    let err = RemoteBroker::connect(&server.url, None).await.unwrap_err();
    assert!(matches!(err, BrokerError::Remote { code: 1008, .. }), "{err}");
}

#[tokio::test]
async fn a_client_that_stops_reading_lags_its_tap_then_is_closed_and_its_leases_return() {
    let config = ServeConfig {
        write_timeout: Duration::from_millis(300),
        limits: ServeLimits { queue_frames: 4, ..ServeLimits::default() },
        ..ServeConfig::default()
    };
    let server = start(config).await;
    let engine = server.engine.clone();
    let mut sub = SubscriptionConfig::new(name("held"), name("firehose"));
    sub.start = StartPosition::All;
    engine.create_subscription(sub).unwrap();
    // A raw client subscribes to a tap and to the durable subscription, then never reads again.
    let mut raw = Raw::hello(&server.url).await;
    raw.send(r#"{"op":"subscribe","id":2,"patterns":["firehose"]}"#).await;
    raw.send(r#"{"op":"subscribe","id":3,"patterns":["firehose"],"subscription":"held","ack":"explicit","prefetch":50}"#)
        .await;
    let payload = "p".repeat(16 * 1024);
    for _ in 0..2000 {
        engine.publish(PublishRequest::new(name("firehose"), payload.clone())).unwrap();
        tokio::task::yield_now().await;
    }
    // The durable subscription holds at most its prefetch in flight; the rest waits as lag.
    let info = engine.subscription_info(&name("held")).unwrap();
    assert!(info.in_flight <= 50, "in flight {}", info.in_flight);
    assert!(info.pending >= 1900, "backlog shows as lag: pending {}", info.pending);
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info = engine.subscription_info(&name("held")).unwrap();
        if info.consumers.is_empty() {
            assert_eq!(info.in_flight, 0, "leases came back when the connection closed");
            closed = true;
            break;
        }
    }
    assert!(closed, "the stuck connection was closed after the write timeout");
    drop(raw);
}

/// Two acking consumers on one connection, each with a large prefetch: a consumer waits for its ack's
/// answer while deliveries for the other pile up. The socket reader must never wait for a stream's
/// reader, or the answers behind it on the socket never arrive (this took 30 s per ack before).
#[tokio::test]
async fn acking_consumers_with_full_streams_do_not_stall_their_answers() {
    let server = start(ServeConfig::default()).await;
    let broker = Arc::new(client(&server).await);
    let mut config = SubscriptionConfig::new(name("workers"), name("jobs"));
    config.ack = AckMode::Explicit;
    config.max_in_flight = 10_000;
    broker.create_subscription(config).await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut req = SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()]);
        req.subscription = Some(name("workers"));
        req.ack = AckMode::Explicit;
        req.prefetch = Some(4096);
        let mut stream = broker.subscribe(req).await.unwrap();
        let broker = broker.clone();
        readers.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while let Ok(Some(Ok(StreamItem::Delivery(d)))) =
                tokio::time::timeout(Duration::from_secs(2), stream.next()).await
            {
                broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
                acked += 1;
            }
            acked
        }));
    }
    for chunk in 0..40 {
        let msgs = (0..250).map(|i| PublishRequest::new(name("jobs"), format!("{chunk}-{i}"))).collect();
        broker.publish_batch(msgs).await.unwrap();
    }
    let mut acked = 0;
    for reader in readers {
        acked += tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap();
    }
    assert_eq!(acked, 10_000, "every job acked once");
    let info = broker.subscription_info(&name("workers")).await.unwrap();
    assert_eq!((info.ack_floor, info.in_flight), (10_000, 0));
}

/// A stream of a new durable subscription `sub` on `topic` without acks.
async fn unacked_stream(
    broker: &RemoteBroker,
    sub: &str,
    topic: &str,
    prefetch: u32,
) -> pubsub::broker::DeliveryStream {
    let mut config = SubscriptionConfig::new(name(sub), name(topic));
    config.ack = AckMode::None;
    broker.create_subscription(config).await.unwrap();
    let mut req = SubscribeRequest::live(vec![Pattern::parse(topic).unwrap()]);
    req.subscription = Some(name(sub));
    req.prefetch = Some(prefetch);
    broker.subscribe(req).await.unwrap()
}

/// A remote stream's reader that takes nothing leaves the backlog in the server, where it shows as lag:
/// the server sends no more than the stream's credit (its prefetch) until the reader takes some.
#[tokio::test]
async fn a_remote_reader_that_takes_nothing_holds_back_at_most_its_credit() {
    let server = start(ServeConfig::default()).await;
    let broker = client(&server).await;
    let mut stream = unacked_stream(&broker, "slow", "feed", 100).await;
    for chunk in 0..20 {
        let msgs = (0..250).map(|i| PublishRequest::new(name("feed"), format!("{chunk}-{i}"))).collect();
        broker.publish_batch(msgs).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // At most the credit in the client plus the engine's own push buffer (also the prefetch) left.
    let info = broker.subscription_info(&name("slow")).await.unwrap();
    assert!(info.backlog >= 5000 - 200, "the backlog stays in the server: {}", info.backlog);
    // Taking everything hands room back, and the rest follows, in order.
    let mut seqs = Vec::new();
    while seqs.len() < 5000 {
        seqs.push(next_delivery(&mut stream).await.message.seq);
    }
    assert_eq!(seqs, (1..=5000).collect::<Vec<u64>>());
}

/// A publish batch larger than the server's frame limit goes as several frames, and deliveries of large
/// messages come in frames the client can read (300 × 64 KiB is 19 MiB: over the 4 MiB frame limit and
/// over the client's 16 MiB message limit if sent as one).
#[tokio::test]
async fn large_batches_and_large_deliveries_fit_the_frame_limits() {
    let server = start(ServeConfig::default()).await;
    let broker = client(&server).await;
    let mut stream = unacked_stream(&broker, "big", "blobs", 1000).await;
    let msgs: Vec<PublishRequest> =
        (0..300u32).map(|i| PublishRequest::new(name("blobs"), vec![(i % 251) as u8; 64 * 1024])).collect();
    let receipts = broker.publish_batch(msgs).await.unwrap();
    assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=300).collect::<Vec<u64>>());
    for i in 0..300u32 {
        let d = next_delivery(&mut stream).await;
        assert_eq!(d.message.seq, u64::from(i) + 1);
        assert!(d.message.payload.len() == 64 * 1024 && d.message.payload[0] == (i % 251) as u8);
    }
}

#[tokio::test]
async fn a_slow_tap_reader_is_told_how_many_messages_it_missed() {
    let config = ServeConfig {
        limits: ServeLimits { queue_frames: 4, ..ServeLimits::default() },
        ..ServeConfig::default()
    };
    let server = start(config).await;
    let engine = server.engine.clone();
    let mut raw = Raw::hello(&server.url).await;
    raw.send(r#"{"op":"subscribe","id":2,"patterns":["burst"]}"#).await;
    assert_eq!(raw.recv().await["result"]["sid"], 1);
    // Far more than the tap ring (1024) plus the connection queue can hold, while the client reads nothing.
    for i in 0..20_000 {
        engine.publish(PublishRequest::new(name("burst"), format!("{i:08}"))).unwrap();
    }
    let (mut delivered, mut skipped) = (0u64, 0u64);
    while delivered + skipped < 20_000 {
        let frame = raw.recv().await;
        match frame["op"].as_str() {
            Some("deliver") => delivered += frame["messages"].as_array().map_or(0, |m| m.len() as u64),
            Some("lagged") => skipped += frame["skipped"].as_u64().unwrap(),
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
    assert!(skipped > 0, "lagged frames report the drops");
    assert_eq!(delivered + skipped, 20_000, "every message is either delivered or counted as skipped");
    assert_eq!(engine.stats().tap_lagged, skipped);
}

#[tokio::test]
async fn client_reconnects_and_resumes_its_durable_subscription() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = Engine::new();
    let server = start_on(listener, ServeConfig::default(), engine.clone()).await;
    let c = client(&server).await;
    let mut events = c.connection_events();
    let mut req = SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()]);
    req.subscription = Some(name("w"));
    req.ack = AckMode::Explicit;
    let mut stream = c.subscribe(req).await.unwrap();
    engine.publish(PublishRequest::new(name("jobs"), "before")).unwrap();
    let d = next_delivery(&mut stream).await;
    c.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();

    drop(server); // stops accepting and closes connections
    let down = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
    assert!(matches!(down, ConnectionEvent::Disconnected { .. }), "{down:?}");
    engine.publish(PublishRequest::new(name("jobs"), "while away")).unwrap();
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _server = start_on(listener, ServeConfig::default(), engine.clone()).await;
    let up = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    assert_eq!(up, ConnectionEvent::Reconnected);
    let d = next_delivery(&mut stream).await;
    assert_eq!(d.message.payload.as_ref(), b"while away", "resumed after the acked message");
}

#[tokio::test]
async fn thousands_of_random_frames_on_one_connection_leave_the_server_serving() {
    let server = start(ServeConfig::default()).await;
    let mut raw = Raw::hello(&server.url).await;
    let seeds = [
        r#"{"op":"publish","id":2,"message":{"subject":"a.b","payload":"aGk=","payload_encoding":"base64"}}"#,
        r#"{"op":"subscribe","id":3,"patterns":["a.>"],"prefetch":5}"#,
        r#"{"op":"ack","id":4,"subscription":"s","seq":1,"lease":2}"#,
        r#"{"op":"browse","id":7,"topic":"a.b","from":{"last":3},"max":3}"#,
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..3000u64 {
        let mut bytes = seeds[(next() % 4) as usize].as_bytes().to_vec();
        for _ in 0..(next() % 4) {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 3 {
                0 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, b"{}[]\":,0a.*#"[(next() % 12) as usize]),
                _ => bytes.truncate(at),
            }
        }
        if i % 10 == 0 {
            bytes = (0..(next() % 40)).map(|_| next() as u8).collect();
        }
        raw.send(&String::from_utf8_lossy(&bytes)).await;
    }
    raw.send(r#"{"op":"ping","id":999999}"#).await;
    loop {
        let frame = raw.recv().await;
        assert!(!frame.is_null(), "the connection was closed");
        if frame["id"] == 999_999 {
            assert_eq!(frame["op"], "ok");
            break;
        }
    }
    let other = client(&server).await;
    assert!(other.topics().await.is_ok());
}

#[tokio::test]
async fn a_stream_opened_right_after_connecting_is_subscribed_once() {
    let server = start(ServeConfig::default()).await;
    for round in 0..20 {
        let c = client(&server).await;
        let topic = format!("once{round}");
        let mut stream =
            c.subscribe(SubscribeRequest::live(vec![Pattern::parse(&topic).unwrap()])).await.unwrap();
        let receipt = c.publish(PublishRequest::new(name(&topic), "x")).await.unwrap();
        assert_eq!(receipt.taps, 1, "round {round}: exactly one listener");
        next_delivery(&mut stream).await;
        let extra = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(extra.is_err(), "round {round}: a second copy arrived");
    }
}

#[tokio::test]
async fn binary_frames_publish_and_deliver_when_offered_and_bad_ones_are_refused() {
    use bytes::Bytes;
    use pubsub::protocol::binary;
    let server = start(ServeConfig::default()).await;
    let mut raw = Raw::connect(&server.url).await;
    raw.send(r#"{"op":"hello","id":1,"version":1,"binary":true}"#).await;
    let welcome = raw.recv().await;
    assert_eq!((welcome["op"].as_str(), welcome["binary"].as_bool()), (Some("welcome"), Some(true)));
    raw.send(r#"{"op":"subscribe","id":2,"patterns":["bin.>"]}"#).await;
    assert_eq!(raw.recv().await["op"], "ok");
    let msgs = vec![
        PublishRequest::new(pubsub::engine::Name::new("bin.a").unwrap(), Bytes::from_static(b"\x00\x01")),
        PublishRequest::new(pubsub::engine::Name::new("bin.b").unwrap(), "two")
            .with_header("h", "v")
            .with_key("k"),
    ];
    raw.ws.send(Ws::Binary(binary::encode_publish_batch(7, &msgs).into())).await.unwrap();
    // The tap's deliveries and the receipts both come back as binary frames, in either order.
    let (mut receipts, mut delivered) = (None, Vec::new());
    while receipts.is_none() || delivered.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), raw.ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) => {
                let b = Bytes::from(b.to_vec());
                match b[0] {
                    binary::RECEIPTS => receipts = Some(binary::decode_receipts(&b).unwrap()),
                    binary::DELIVER => delivered.extend(binary::decode_deliver(&b).unwrap().1),
                    other => panic!("unexpected binary frame kind {other}"),
                }
            }
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
    let (id, receipts) = receipts.unwrap();
    assert_eq!(id, 7);
    assert_eq!(receipts.len(), 2);
    assert_eq!(delivered[0].message.payload.as_ref(), b"\x00\x01");
    assert_eq!(delivered[1].message.headers().get("h").map(String::as_str), Some("v"));
    assert_eq!(delivered[1].message.key().map(|k| k.as_ref()), Some(&b"k"[..]));
    // A truncated batch is refused with its id, and nothing of it is published.
    let mut cut = binary::encode_publish_batch(8, &msgs);
    cut.truncate(cut.len() - 3);
    raw.ws.send(Ws::Binary(cut.into())).await.unwrap();
    let answer = raw.recv().await;
    assert_eq!((answer["id"].as_u64(), answer["code"].as_u64()), (Some(8), Some(1000)), "{answer}");
    raw.send(r#"{"op":"ping","id":9}"#).await;
    match tokio::time::timeout(Duration::from_secs(5), raw.ws.next()).await.unwrap() {
        Some(Ok(Ws::Text(t))) => assert_eq!(t.as_str(), r#"{"op":"ok","id":9}"#, "nothing was delivered"),
        other => panic!("expected the ping's answer and no delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_clearly_at_every_size_and_a_raised_limit_carries_it() {
    // Found by a new user: 2 MB got a clear error, 10 MB a transport error that cost the connection.
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;
    for size in [2_000_000, 10_000_000, 40_000_000] {
        let err =
            c.publish(PublishRequest::new(name("big"), vec![b'a'; size])).await.unwrap_err().to_string();
        assert!(err.contains(&format!("message of {size} bytes is larger than the server's limit")), "{err}");
        let batch = vec![
            PublishRequest::new(name("big"), "small"),
            PublishRequest::new(name("big"), vec![b'a'; size]),
        ];
        let err = c.publish_batch(batch).await.unwrap_err().to_string();
        assert!(err.contains("larger than the server's limit"), "{err}");
    }
    // The connection is still there, and the small message before the large one was published.
    c.publish(PublishRequest::new(name("big"), "after")).await.unwrap();
    assert_eq!(server.engine.topic_info(&name("big")).unwrap().head_seq, 4);

    let limits =
        ServeLimits { max_message_bytes: 16 << 20, max_frame_bytes: 24 << 20, ..ServeLimits::default() };
    let server = start(ServeConfig { limits, ..ServeConfig::default() }).await;
    let c = client(&server).await;
    let mut topic = pubsub::engine::TopicConfig::new(name("large"));
    topic.max_msg_bytes = 16 << 20;
    c.create_topic(topic).await.unwrap();
    let payload: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
    c.publish(PublishRequest::new(name("large"), payload.clone())).await.unwrap();
    let mut stream = c
        .subscribe(SubscribeRequest {
            from: Some(pubsub::engine::StartPosition::All),
            ..SubscribeRequest::live(vec![pubsub::engine::Pattern::parse("large").unwrap()])
        })
        .await
        .unwrap();
    let got = next_delivery(&mut stream).await;
    assert!(got.message.payload[..] == payload[..], "the 10 MB payload came back changed");
}

/// Issue 19: a remote consumer with a total (`sub --count N` against the daemon) is leased no more than
/// N, and a delivery it gives back with `release` returns without counting as an attempt.
#[tokio::test]
async fn a_remote_consumer_takes_no_more_than_its_total_and_releases_without_an_attempt() {
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;
    let mut config = SubscriptionConfig::new(name("w"), name("orders"));
    config.start = StartPosition::All;
    config.max_deliveries = 1;
    config.dead_letter = Some(name("dlq"));
    c.create_subscription(config).await.unwrap();
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        c.publish(PublishRequest::new(name("orders"), m)).await.unwrap();
    }
    let mut req = SubscribeRequest::live(vec![Pattern::parse("orders").unwrap()]);
    req.subscription = Some(name("w"));
    req.ack = AckMode::Explicit;
    req.prefetch = Some(4);
    req.limit = Some(2);
    let mut stream = c.subscribe(req).await.unwrap();
    let first = next_delivery(&mut stream).await;
    let second = next_delivery(&mut stream).await;
    c.settle(first.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    let info = c.subscription_info(&name("w")).await.unwrap();
    assert_eq!((info.in_flight, info.counters.delivered), (1, 2), "{info:?}");
    // Given back unseen: available again as if never delivered, so max_deliveries 1 does not bite.
    c.settle(second.token.as_ref().unwrap(), Settle::Release).await.unwrap();
    drop(stream);
    let peek = c.peek(&name("w"), 0, 10).await.unwrap();
    let m2 = peek.messages.iter().find(|m| m.seq == 2).unwrap();
    assert_eq!((m2.state, m2.attempt), (pubsub::engine::DeliveryState::Available, 0), "{peek:?}");
    assert!(c.topic_info(&name("dlq")).await.is_err(), "nothing was dead-lettered");
}

/// Issue 20: acks sent over one connection to a durable engine are answered once on disk, while the
/// connection goes on with the next requests (so acks in flight together share a sync). All of 300
/// pipelined acks are applied, in order with what follows them, and kept across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_acks_to_a_durable_engine_are_all_applied_and_kept() {
    use pubsub::engine::EngineConfig;
    use pubsub::model::SystemClock;
    let dir = std::env::temp_dir().join(format!("pubsub-server-acks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (engine, _) = Engine::open(&dir, Arc::new(SystemClock), EngineConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = start_on(listener, ServeConfig::default(), engine.clone()).await;
    let c = client(&server).await;
    c.create_topic(TopicConfig::new(name("jobs"))).await.unwrap();
    let mut sub = SubscriptionConfig::new(name("workers"), name("jobs"));
    sub.start = StartPosition::All;
    sub.max_in_flight = 1000;
    c.create_subscription(sub).await.unwrap();
    c.publish_batch((0..300).map(|i| PublishRequest::new(name("jobs"), format!("j{i}"))).collect())
        .await
        .unwrap();
    let batch = c
        .fetch(&name("workers"), "w1", FetchOptions { max_msgs: 300, ..FetchOptions::default() })
        .await
        .unwrap();
    assert_eq!(batch.len(), 300);
    let acks = batch.iter().map(|d| c.settle(d.token.as_ref().unwrap(), Settle::Ack));
    for outcome in futures_util::future::join_all(acks).await {
        outcome.unwrap();
    }
    let info = c.subscription_info(&name("workers")).await.unwrap();
    assert_eq!((info.ack_floor, info.in_flight, info.backlog), (300, 0, 0));
    // An ack owes a sync on a durable engine (it is answered after it), none in memory.
    engine.publish(PublishRequest::new(name("jobs"), "one more")).unwrap();
    let d = engine.try_fetch(&name("workers"), "w2", &FetchOptions::default()).unwrap().remove(0);
    let r = d.lease.unwrap();
    let pending = engine.ack_deferred(&name("workers"), r).unwrap();
    assert!(!pending.is_empty(), "a sync ack on a durable engine owes an fdatasync");
    pending.wait().unwrap();
    let memory = Engine::new();
    memory.create_topic(TopicConfig::new(name("t"))).unwrap();
    let mut s = SubscriptionConfig::new(name("s"), name("t"));
    s.start = StartPosition::All;
    memory.create_subscription(s).unwrap();
    memory.publish(PublishRequest::new(name("t"), "x")).unwrap();
    let d = memory.try_fetch(&name("s"), "c", &FetchOptions::default()).unwrap().remove(0);
    let r = d.lease.unwrap();
    assert!(memory.ack_deferred(&name("s"), r).unwrap().is_empty(), "memory owes no sync");
    drop(c);
    drop(server);
    engine.close().unwrap();
    let (reopened, _) = Engine::open(&dir, Arc::new(SystemClock), EngineConfig::default()).unwrap();
    let info = reopened.subscription_info(&name("workers")).unwrap();
    assert_eq!((info.ack_floor, info.backlog), (301, 0), "the acks are on disk");
    reopened.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn binary_settle_frames_answer_every_lease_and_need_to_be_offered() {
    use bytes::Bytes;
    use pubsub::protocol::binary::{self, SettleItem, SettleOp};
    let server = start(ServeConfig::default()).await;
    let mut sub = SubscriptionConfig::new(name("workers"), name("jobs"));
    sub.start = StartPosition::All;
    server.engine.create_topic(TopicConfig::new(name("jobs"))).unwrap();
    server.engine.create_subscription(sub).unwrap();
    for i in 0..3 {
        server.engine.publish(PublishRequest::new(name("jobs"), format!("j{i}"))).unwrap();
    }
    let leases: Vec<(u64, u64)> = server
        .engine
        .try_fetch(&name("workers"), "w1", &FetchOptions { max_msgs: 3, ..FetchOptions::default() })
        .unwrap()
        .into_iter()
        .map(|d| d.lease.map(|l| (l.seq, l.lease)).unwrap())
        .collect();
    let item =
        |id: u64, (seq, lease): (u64, u64), delay_ms| SettleItem { id, partition: 0, seq, lease, delay_ms };

    // Offered: the welcome says so, and one frame settles every lease, each answered under its own id.
    let mut raw = Raw::connect(&server.url).await;
    raw.send(r#"{"op":"hello","id":1,"version":1,"binary":true,"binary_settle":true}"#).await;
    let welcome = raw.recv().await;
    assert_eq!(welcome["binary_settle"].as_bool(), Some(true), "{welcome}");
    let stale = (leases[2].0, leases[2].1 + 100);
    let acks = [item(10, leases[0], None), item(11, stale, None), item(12, leases[1], None)];
    raw.ws
        .send(Ws::Binary(binary::encode_settle(SettleOp::Ack, &name("workers"), &acks).into()))
        .await
        .unwrap();
    let settled = match tokio::time::timeout(Duration::from_secs(5), raw.ws.next()).await.unwrap() {
        Some(Ok(Ws::Binary(b))) => binary::decode_settled(&Bytes::from(b.to_vec())).unwrap(),
        other => panic!("expected a settled frame, got {other:?}"),
    };
    assert_eq!(settled.len(), 3);
    assert_eq!((settled[0].0, &settled[0].1), (10, &Ok(())));
    assert_eq!((settled[2].0, &settled[2].1), (12, &Ok(())));
    let (id, refused) = &settled[1];
    assert_eq!(*id, 11);
    assert!(refused.is_err(), "a stale lease is refused without stopping the others: {refused:?}");
    // A nack frame gives the third message back at once.
    let nack = [item(13, leases[2], Some(0))];
    raw.ws
        .send(Ws::Binary(binary::encode_settle(SettleOp::Nack, &name("workers"), &nack).into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), raw.ws.next()).await.unwrap() {
        Some(Ok(Ws::Binary(b))) => {
            assert_eq!(binary::decode_settled(&Bytes::from(b.to_vec())).unwrap(), vec![(13, Ok(()))]);
        }
        other => panic!("expected a settled frame, got {other:?}"),
    }
    let info = server.engine.subscription_info(&name("workers")).unwrap();
    assert_eq!((info.ack_floor, info.in_flight, info.backlog), (2, 0, 1), "two acked, one given back");

    // Not offered: a settle or credit frame is refused, and nothing is settled.
    let mut plain = Raw::connect(&server.url).await;
    plain.send(r#"{"op":"hello","id":1,"version":1,"binary":true}"#).await;
    let welcome = plain.recv().await;
    assert_eq!(welcome["binary_settle"].as_bool(), None, "{welcome}");
    let again = server
        .engine
        .try_fetch(&name("workers"), "w2", &FetchOptions::default())
        .unwrap()
        .remove(0)
        .lease
        .map(|l| (l.seq, l.lease))
        .unwrap();
    let frame = binary::encode_settle(SettleOp::Ack, &name("workers"), &[item(20, again, None)]);
    plain.ws.send(Ws::Binary(frame.into())).await.unwrap();
    let refused = plain.recv().await;
    assert_eq!((refused["id"].as_u64(), refused["code"].as_u64()), (Some(20), Some(1000)), "{refused}");
    plain.ws.send(Ws::Binary(binary::encode_credit(1, 1).into())).await.unwrap();
    assert_eq!(plain.recv().await["code"].as_u64(), Some(1000));
    assert_eq!(
        server.engine.subscription_info(&name("workers")).unwrap().in_flight,
        1,
        "the ack was not applied"
    );
}

#[tokio::test]
async fn a_remote_consumer_nacks_and_acks_through_binary_frames() {
    let server = start(ServeConfig::default()).await;
    let c = client(&server).await;
    c.create_topic(TopicConfig::new(name("jobs"))).await.unwrap();
    let mut sub = SubscriptionConfig::new(name("workers"), name("jobs"));
    sub.start = StartPosition::All;
    c.create_subscription(sub).await.unwrap();
    c.publish(PublishRequest::new(name("jobs"), "j")).await.unwrap();
    let workers = name("workers");
    let fetch = || c.fetch(&workers, "w", FetchOptions::default());
    let first = fetch().await.unwrap().remove(0);
    c.settle(first.token.as_ref().unwrap(), Settle::Nack(Some(Duration::ZERO))).await.unwrap();
    let again = fetch().await.unwrap().remove(0);
    assert_eq!((again.message.seq, again.attempt), (1, Some(2)), "the nacked message comes back");
    let stale = c.settle(first.token.as_ref().unwrap(), Settle::Ack).await;
    assert!(matches!(stale, Err(BrokerError::Remote { .. })), "an old lease is refused: {stale:?}");
    c.settle(again.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    let info = c.subscription_info(&name("workers")).await.unwrap();
    assert_eq!((info.ack_floor, info.in_flight), (1, 0));
    // A run of acks goes in one frame and comes back with an outcome each, in order.
    c.publish_batch((0..3).map(|i| PublishRequest::new(name("jobs"), format!("k{i}"))).collect())
        .await
        .unwrap();
    let batch =
        c.fetch(&workers, "w", FetchOptions { max_msgs: 3, ..FetchOptions::default() }).await.unwrap();
    let mut tokens: Vec<_> = batch.iter().map(|d| d.token.clone().unwrap()).collect();
    let mut stale = tokens[1].clone();
    stale.lease += 1000;
    tokens.insert(1, stale);
    let outcomes = c.ack_all(&tokens).await;
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
    assert!(matches!(outcomes[1], Err(BrokerError::Remote { .. })), "the stale one alone is refused");
    let info = c.subscription_info(&name("workers")).await.unwrap();
    assert_eq!((info.ack_floor, info.in_flight), (4, 0));
    assert!(c.ack_all(&[]).await.is_empty());
}
