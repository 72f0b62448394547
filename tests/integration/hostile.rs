//! `pubsub serve` against clients that do not play along: a subscriber that never reads (the server's
//! memory stays within its byte caps and comes back when it leaves), floods of idle sockets and half-sent
//! frames before `hello` (an authenticated client still gets in; the idle ones are closed at their
//! deadlines), an empty token, and binary frames where they do not belong. Loopback only, port 0.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;

use pubsub::broker::Broker;
use pubsub::broker::remote::RemoteBroker;
use pubsub::engine::{PublishRequest, TopicConfig};
use pubsub::server::{ServeConfig, ServeLimits};

use crate::server::{Raw, TestServer, client, start};
use crate::support::name;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Polls the server's `stats` until `done` holds for them, for at most 10 s; returns the last ones.
async fn stats_until(
    c: &RemoteBroker,
    done: impl Fn(&pubsub::protocol::ServerStats) -> bool,
) -> pubsub::protocol::ServerStats {
    let mut last = c.stats().await.unwrap();
    for _ in 0..200 {
        if done(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = c.stats().await.unwrap();
    }
    last
}

/// A subscriber that subscribes to a durable subscription, an acking one and a tap, each with a large
/// prefetch, and then never reads its socket: whatever is published, the bytes the server holds for it
/// stay within the connection cap (plus at most a message or two per stream), the backlog waits in
/// the subscriptions as lag, and everything held comes back when the client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_bounded_bytes_that_come_back_when_it_leaves() {
    let limits =
        ServeLimits { max_stream_bytes: MIB, max_connection_bytes: 2 * MIB, ..ServeLimits::default() };
    let server = start(ServeConfig { limits, ..ServeConfig::default() }).await;
    let publisher = client(&server).await;
    let mut topic = TopicConfig::new(name("flood"));
    topic.limits.max_bytes = Some(64 * MIB as u64);
    publisher.create_topic(topic).await.unwrap();

    let mut raw = Raw::connect(&server.url).await;
    raw.send(r#"{"op":"hello","id":1,"version":1}"#).await;
    let welcome = raw.recv().await;
    assert_eq!(welcome["limits"]["max_stream_bytes"], MIB, "{welcome}");
    assert_eq!(welcome["limits"]["max_connection_bytes"], 2 * MIB, "{welcome}");
    for (id, spec) in [
        (2, r#""subscription":"lazy","from":"all","ack":"none","prefetch":40000"#),
        (3, r#""subscription":"leased","from":"all","ack":"explicit","prefetch":40000"#),
        (4, r#""prefetch":20000"#),
    ] {
        raw.send(&format!(r#"{{"op":"subscribe","id":{id},"patterns":["flood"],{spec}}}"#)).await;
        assert_eq!(raw.recv().await["op"], "ok");
    }
    // From here on the client reads nothing. 600 × 64 KiB is 37.5 MiB for each of the three streams.
    let payload = vec![b'x'; 64 * KIB];
    let mut most = 0;
    for _ in 0..600 / 16 {
        let batch = (0..16).map(|_| PublishRequest::new(name("flood"), payload.clone())).collect();
        publisher.publish_batch(batch).await.unwrap();
        most = most.max(publisher.stats().await.unwrap().held_bytes);
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        most = most.max(publisher.stats().await.unwrap().held_bytes);
    }
    // The cap, plus for each of the three streams the message the engine may push past it and the
    // JSON around a frame's messages.
    let bound = (2 * MIB + 3 * (64 * KIB + 16 * KIB)) as u64;
    assert!(most <= bound, "held {most} bytes, over the bound of {bound}");
    assert!(most >= MIB as u64, "the client's budget was reached ({most} bytes), so the bound was tested");
    let lazy = publisher.subscription_info(&name("lazy")).await.unwrap();
    // What the socket's buffers took is delivered; at least half of it all waits as lag.
    assert!(lazy.backlog >= 300, "the backlog waits in the subscription: {}", lazy.backlog);

    drop(raw);
    let after = stats_until(&publisher, |s| s.held_bytes == 0 && s.connections == 1).await;
    assert_eq!(after.held_bytes, 0, "everything held for the client came back when it left");
    let leased = publisher.subscription_info(&name("leased")).await.unwrap();
    assert_eq!(leased.in_flight, 0, "its leases came back too");
}

/// A served process (`pubsub serve`) that feeds a subscriber with a prefetch of 100,000 that never
/// reads: its resident memory grows by far less than what was published to that subscriber (before
/// byte caps, everything published stayed in the server: +170 MB for 150 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_process_feeding_a_client_that_never_reads_stays_small() {
    let child = ServeProcess::start();
    let publisher = RemoteBroker::connect(&child.url, None).await.unwrap();
    let mut topic = TopicConfig::new(name("flood"));
    topic.limits.max_bytes = Some(4 * MIB as u64);
    publisher.create_topic(topic).await.unwrap();
    let mut raw = Raw::hello(&child.url).await;
    raw.send(r#"{"op":"subscribe","id":2,"patterns":["flood"],"subscription":"lazy","from":"all","ack":"none","prefetch":100000}"#)
        .await;
    assert_eq!(raw.recv().await["op"], "ok");
    let payload = vec![b'x'; 64 * KIB];
    // Warm up (runtime, allocator, topic at its retention limit) before the baseline.
    for _ in 0..8 {
        let batch = (0..16).map(|_| PublishRequest::new(name("flood"), payload.clone())).collect();
        publisher.publish_batch(batch).await.unwrap();
    }
    let baseline = child.rss();
    let mut peak = baseline;
    // 1,600 × 64 KiB: 100 MiB for the subscriber that reads nothing.
    for _ in 0..100 {
        let batch = (0..16).map(|_| PublishRequest::new(name("flood"), payload.clone())).collect();
        publisher.publish_batch(batch).await.unwrap();
        peak = peak.max(child.rss());
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!("served process: {baseline} bytes resident before, {peak} at most while flooding");
    // Default caps: 8 MiB per stream, 32 MiB per connection; the rest is the allocator's slack.
    assert!(growth < 64 * MIB as u64, "resident memory grew by {growth} bytes");
    let held = publisher.stats().await.unwrap().held_bytes;
    assert!(held <= (8 * MIB + 2 * 64 * KIB) as u64, "held {held} bytes for one stream");
    drop(raw);
    let after = stats_until(&publisher, |s| s.held_bytes == 0).await;
    assert_eq!(after.held_bytes, 0);
}

/// A `pubsub serve` child on a free loopback port, killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    url: String,
    _home: tempdir::Scratch,
}

mod tempdir {
    /// A scratch directory removed when dropped.
    pub struct Scratch(pub std::path::PathBuf);

    impl Scratch {
        pub fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("pubsub-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ServeProcess {
    fn start() -> ServeProcess {
        use std::io::BufRead;
        let home = tempdir::Scratch::new("hostile-serve");
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("pubsub"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PUBSUB_HOME", &home.0)
            .env_remove("PUBSUB_TOKEN")
            .env_remove("PUBSUB_BROKER")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("ws://127.0.0.1:"), "serve printed {url:?}");
        ServeProcess { child, url, _home: home }
    }

    /// Resident memory, bytes (VmRSS).
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap();
        kib * 1024
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bytes of a WebSocket upgrade request.
fn upgrade_request() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec()
}

/// The header of a masked binary frame announcing `len` bytes.
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

/// Whether the server closes `socket` within 10 s (whatever it sends first).
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(until, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn host(server: &TestServer) -> String {
    server.url.trim_start_matches("ws://").to_string()
}

/// Sixty idle sockets and twenty that send an upgrade and then part of an 8 MiB frame, against a server
/// with a token and room for four connections: a client with the token still gets in (the sockets
/// before `hello` have a share of their own, and a newcomer closes the oldest of them), and every one
/// of the flood is closed.
#[tokio::test]
async fn idle_sockets_and_half_sent_frames_cannot_keep_an_authenticated_client_out() {
    let limits = ServeLimits {
        max_connections: 4,
        handshake_timeout: Duration::from_secs(2),
        hello_timeout: Duration::from_secs(2),
        ..ServeLimits::default()
    };
    let server = start(ServeConfig { token: Some("s3cret".into()), limits, ..ServeConfig::default() }).await;
    let url = format!("{}?token=s3cret", server.url);
    let first = RemoteBroker::connect(&url, None).await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(TcpStream::connect(host(&server)).await.unwrap());
    }
    for _ in 0..20 {
        let mut socket = TcpStream::connect(host(&server)).await.unwrap();
        // The server may already have closed it for a newer one; then these writes fail, as they may.
        let _ = socket.write_all(&upgrade_request()).await;
        let _ = socket.write_all(&frame_header(8 * MIB as u64)).await;
        let _ = socket.write_all(&vec![0u8; 32 * KIB]).await;
        flood.push(socket);
    }
    let second = tokio::time::timeout(Duration::from_secs(10), RemoteBroker::connect(&url, None))
        .await
        .expect("connecting took more than 10 s")
        .expect("an authenticated client gets in during the flood");
    assert!(second.topics().await.is_ok());
    for (i, socket) in flood.iter_mut().enumerate() {
        assert!(closed_by_server(socket).await, "flood socket {i} is still open");
    }
    let stats = stats_until(&first, |s| s.pending_connections == 0).await;
    assert_eq!((stats.pending_connections, stats.connections), (0, 2));
    assert!(first.topics().await.is_ok(), "the first client was served throughout");
}

/// Connections that stop before their handshake or before `hello` hold their pending slot until their
/// deadline, and are closed then (the WebSocket ones told why, with error 1004).
#[tokio::test]
async fn idle_connections_are_closed_at_the_handshake_and_hello_deadlines() {
    let limits = ServeLimits {
        max_connections: 40,
        handshake_timeout: Duration::from_secs(2),
        hello_timeout: Duration::from_secs(2),
        ..ServeLimits::default()
    };
    let server = start(ServeConfig { token: Some("s3cret".into()), limits, ..ServeConfig::default() }).await;
    let observer = RemoteBroker::connect(&format!("{}?token=s3cret", server.url), None).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(host(&server)).await.unwrap());
    }
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(Raw::connect(&server.url).await);
    }
    let stats = stats_until(&observer, |s| s.pending_connections == 6).await;
    assert_eq!(stats.pending_connections, 6, "none was closed before its deadline");
    for socket in &mut idle {
        assert!(closed_by_server(socket).await, "an idle socket outlived the handshake deadline");
    }
    for raw in &mut silent {
        assert_eq!(raw.recv().await["code"], 1004, "told that hello did not come");
        assert_eq!(raw.recv().await, serde_json::Value::Null, "then closed");
    }
    let stats = stats_until(&observer, |s| s.pending_connections == 0).await;
    assert_eq!((stats.pending_connections, stats.connections), (0, 1));
}

/// Before `hello` a client may send only a little (`max_hello_bytes`): a larger frame is refused with
/// error 1006 and the connection closes as soon as the allowance is spent, whatever the frame limit.
#[tokio::test]
async fn more_than_the_hello_allowance_before_hello_closes_the_connection() {
    let server = start(ServeConfig::default()).await;
    let mut raw = Raw::connect(&server.url).await;
    raw.ws.send(Ws::Text("x".repeat(100 * KIB).into())).await.unwrap();
    let answer = raw.recv().await;
    assert_eq!(answer["code"], 1006, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("before hello"), "{answer}");
    assert_eq!(raw.recv().await, serde_json::Value::Null, "closed");
    // A hello within the allowance still works, and after it the frame limit is the usual one.
    let mut raw = Raw::hello(&server.url).await;
    raw.send(&format!(r#"{{"op":"ping","id":2,"pad":"{}"}}"#, "y".repeat(100 * KIB))).await;
    assert_eq!(raw.recv().await, serde_json::json!({"op":"ok","id":2}));
}

/// A binary frame first is answered like any other first frame that is not `hello` (error 1004), and
/// the connection closes, as docs/PROTOCOL.md says.
#[tokio::test]
async fn a_binary_frame_before_hello_is_refused_with_1004_and_closes() {
    let server = start(ServeConfig::default()).await;
    let mut raw = Raw::connect(&server.url).await;
    let batch = pubsub::protocol::binary::encode_publish_batch(
        5,
        &[PublishRequest::new(name("sneaky"), "before hello")],
    );
    raw.ws.send(Ws::Binary(batch.into())).await.unwrap();
    assert_eq!(raw.recv().await["code"], 1004);
    assert_eq!(raw.recv().await, serde_json::Value::Null, "closed after refusing");
    let c = client(&server).await;
    assert!(c.topics().await.unwrap().is_empty(), "nothing was published");
}

/// A binary frame of a kind the server does not know is refused with the id it carries (every client
/// binary frame starts with its kind and a u64 id); one too short to carry an id gets an error without.
#[tokio::test]
async fn an_unknown_binary_frame_kind_is_answered_with_its_id() {
    let server = start(ServeConfig::default()).await;
    let mut raw = Raw::connect(&server.url).await;
    raw.send(r#"{"op":"hello","id":1,"version":1,"binary":true}"#).await;
    assert_eq!(raw.recv().await["binary"], true);
    let mut frame = vec![9u8];
    frame.extend_from_slice(&77u64.to_be_bytes());
    frame.extend_from_slice(b"whatever follows");
    raw.ws.send(Ws::Binary(frame.into())).await.unwrap();
    let answer = raw.recv().await;
    assert_eq!((answer["id"].as_u64(), answer["code"].as_u64()), (Some(77), Some(1000)), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("kind 9"), "{answer}");
    raw.ws.send(Ws::Binary(vec![9u8, 1, 2].into())).await.unwrap();
    let answer = raw.recv().await;
    assert_eq!((answer.get("id"), answer["code"].as_u64()), (None, Some(1000)), "{answer}");
    raw.send(r#"{"op":"ping","id":3}"#).await;
    assert_eq!(raw.recv().await, serde_json::json!({"op":"ok","id":3}), "the connection still works");
}

fn serve_on_all_interfaces() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("pubsub").unwrap();
    cmd.args(["serve", "--listen", "0.0.0.0:0"])
        .env("PUBSUB_HOME", std::env::temp_dir().join(format!("pubsub-empty-token-{}", std::process::id())))
        .env_remove("PUBSUB_BROKER")
        .env_remove("PUBSUB_TOKEN")
        // Were it to serve, the test fails instead of waiting forever.
        .timeout(Duration::from_secs(20));
    cmd
}

/// An empty token (`--token ''` or `PUBSUB_TOKEN=`) is no token: `serve` refuses to listen beyond
/// loopback with it, as it does without one.
#[test]
fn an_empty_token_is_no_token_and_serve_will_not_expose_the_engine_with_it() {
    let by_flag = serve_on_all_interfaces().args(["--token", ""]).assert().code(2);
    let by_env = serve_on_all_interfaces().env("PUBSUB_TOKEN", "").assert().code(2);
    for out in [by_flag.get_output(), by_env.get_output()] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without a token"), "{stderr}");
        assert!(out.stdout.is_empty(), "no URL was printed: nothing listened");
    }
}

/// In-process too: a server given an empty token lets clients in as a server without one does
/// (rather than asking every client for the empty string).
#[tokio::test]
async fn a_server_given_an_empty_token_has_none() {
    let server = start(ServeConfig { token: Some(String::new()), ..ServeConfig::default() }).await;
    let c = RemoteBroker::connect(&server.url, None).await.unwrap();
    assert!(c.topics().await.is_ok());
}
