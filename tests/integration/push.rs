//! HTTP push against a real HTTP server the test starts (a small keep-alive HTTP/1.1 server on tokio):
//! what 2xx, other statuses, silence, refused connections, redirects and a slow endpoint do, the
//! headers and body sent, the refusal of other URLs, and a push subscription that outlives the daemon.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pubsub::broker::local::LocalBroker;
use pubsub::engine::{Backoff, Engine, EngineError, PublishRequest, SubscriptionInfo};
use pubsub::model::{PushConfig, SubscriptionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Home, name};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The message payload, decoded from the envelope's base64 `data`.
    pub fn payload(&self) -> String {
        let data = self.body["message"]["data"].as_str().unwrap_or_default();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap()
    }

    pub fn attempt(&self) -> u64 {
        self.body["deliveryAttempt"].as_u64().unwrap_or(0)
    }
}

/// How the server answers one request.
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub location: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, delay: Duration::ZERO, location: None }
    }
}

type Decide = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A local HTTP server that records what it receives and answers as `decide` says.
pub struct Server {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(decide: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let decide: Arc<Decide> = Arc::new(decide);
        let (s, p) = (seen.clone(), peak.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, decide.clone(), s.clone(), p.clone(), now.clone()));
            }
        });
        Server { port, seen, peak, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    decide: Arc<Decide>,
    seen: Arc<Mutex<Vec<Seen>>>,
    peak: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        // The head.
        let (head_len, path, headers, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let path = req.path.unwrap_or("").to_string();
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let length = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                break (n, path, headers, length);
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = serde_json::from_slice(&buf[head_len..head_len + length]).unwrap_or_default();
        buf.drain(..head_len + length);
        let request = Seen { path, headers, body, at: Instant::now() };
        let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(at_once, Ordering::SeqCst);
        seen.lock().unwrap().push(request.clone());
        let reply = decide(&request);
        tokio::time::sleep(reply.delay).await;
        now.fetch_sub(1, Ordering::SeqCst);
        let location = reply.location.map(|l| format!("location: {l}\r\n")).unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 {} X\r\ncontent-length: 2\r\n{location}content-type: text/plain\r\n\r\nok",
            reply.status
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An in-memory engine hosted as `mem://` hosts it (timers and pushers running).
pub fn hosted() -> (Engine, LocalBroker) {
    let engine = Engine::new();
    let broker = LocalBroker::new(engine.clone(), "mem://");
    (engine, broker)
}

/// A push subscription `sub` on topic `t` to `url`, tweaked.
pub fn push_sub(engine: &Engine, sub: &str, url: &str, tweak: impl FnOnce(&mut SubscriptionConfig)) {
    let mut c = SubscriptionConfig::new(name(sub), name("t"));
    c.push = Some(PushConfig::new(url));
    tweak(&mut c);
    engine.create_subscription(c).unwrap();
}

pub fn publish(engine: &Engine, payload: &str) {
    engine.publish(PublishRequest::new(name("t"), payload.to_string())).unwrap();
}

/// Waits (up to 10 s) until `what` holds for the subscription's info, and returns that info.
pub async fn wait_info(
    engine: &Engine,
    sub: &str,
    what: impl Fn(&SubscriptionInfo) -> bool,
) -> SubscriptionInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = engine.subscription_info(&name(sub)).unwrap();
        if what(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "condition not reached: {info:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_2xx_acks_with_the_pubsub_envelope_and_the_configured_headers() {
    let server = Server::start(|_| Reply::status(200)).await;
    let (e, _host) = hosted();
    push_sub(&e, "hook", &server.url("/hook?x=1"), |c| {
        if let Some(p) = &mut c.push {
            p.headers.insert("authorization".into(), "Bearer s3cret".into());
        }
    });
    for i in 0..5 {
        publish(&e, &format!("m{i}"));
    }
    let info = wait_info(&e, "hook", |i| i.ack_floor == 5).await;
    let push = info.push.unwrap();
    assert_eq!((push.attempts, push.succeeded, push.failed, push.last_status), (5, 5, 0, Some(200)));
    assert_eq!(push.endpoint, server.url("/hook?x=1"));
    // Pushed concurrently: in any order.
    let mut seen = server.seen();
    seen.sort_by_key(Seen::payload);
    assert_eq!(seen.iter().map(Seen::payload).collect::<Vec<_>>(), ["m0", "m1", "m2", "m3", "m4"]);
    for s in &seen {
        assert_eq!(s.path, "/hook?x=1");
        assert_eq!(s.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert_eq!(s.header("host"), Some(format!("127.0.0.1:{}", server.port).as_str()));
        assert_eq!(s.body["subscription"], "hook");
        assert_eq!(s.attempt(), 1);
        assert_eq!(s.body["message"]["topic"], "t");
        assert!(s.body["message"]["publishTime"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(seen[2].body["message"]["messageId"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_500_nacks_redelivers_after_the_backoff_and_slows_down_until_a_success() {
    // The first three attempts fail; the fourth is acked.
    let server = Server::start(|s| Reply::status(if s.attempt() <= 3 { 500 } else { 204 })).await;
    let (e, _host) = hosted();
    push_sub(&e, "hook", &server.url("/"), |c| c.backoff = Backoff::List(vec![Duration::from_millis(150)]));
    publish(&e, "m");
    let failing = wait_info(&e, "hook", |i| i.push.as_ref().is_some_and(|p| p.failed >= 1)).await;
    let push = failing.push.unwrap();
    assert_eq!(push.last_status, Some(500));
    assert_eq!(push.last_error.as_deref(), Some("HTTP 500"));
    assert!(push.consecutive_failures >= 1 && push.slowdown_ms >= 100, "{push:?}");
    let done = wait_info(&e, "hook", |i| i.ack_floor == 1).await;
    let push = done.push.unwrap();
    assert_eq!((push.attempts, push.failed, push.succeeded), (4, 3, 1));
    assert_eq!((push.consecutive_failures, push.slowdown_ms), (0, 0), "a success resets the slowdown");
    let seen = server.seen();
    assert_eq!(seen.iter().map(Seen::attempt).collect::<Vec<_>>(), [1, 2, 3, 4]);
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(150), "redelivered after {gap:?}, before the 150 ms backoff");
    }
    assert_eq!(done.counters.nacked, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_without_an_answer_by_the_ack_deadline_nacks() {
    let server = Server::start(|s| Reply {
        status: 200,
        delay: if s.attempt() == 1 { Duration::from_secs(30) } else { Duration::ZERO },
        location: None,
    })
    .await;
    let (e, _host) = hosted();
    push_sub(&e, "hook", &server.url("/"), |c| {
        c.ack_deadline = Duration::from_millis(300);
        c.backoff = Backoff::List(vec![Duration::from_millis(50)]);
    });
    publish(&e, "m");
    let info = wait_info(&e, "hook", |i| i.ack_floor == 1).await;
    let push = info.push.unwrap();
    assert_eq!((push.attempts, push.failed, push.succeeded), (2, 1, 1));
    let seen = server.seen();
    assert_eq!(seen.iter().map(Seen::attempt).collect::<Vec<_>>(), [1, 2]);
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(300), "retried before the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_refused_connection_nacks_and_says_why() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (e, _host) = hosted();
    push_sub(&e, "hook", &format!("http://127.0.0.1:{port}/"), |c| {
        c.backoff = Backoff::List(vec![Duration::from_millis(20)]);
    });
    publish(&e, "m");
    let info = wait_info(&e, "hook", |i| i.push.as_ref().is_some_and(|p| p.failed >= 2)).await;
    let push = info.push.unwrap();
    assert_eq!((push.succeeded, push.last_status), (0, None));
    let error = push.last_error.unwrap();
    assert!(error.contains("connect to 127.0.0.1") && error.contains("refused"), "{error}");
    assert_eq!(info.ack_floor, 0);
    assert!(info.counters.nacked >= 2, "{:?}", info.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_slow_endpoint_keeps_at_most_max_in_flight_requests_open() {
    let server =
        Server::start(|_| Reply { status: 200, delay: Duration::from_millis(50), location: None }).await;
    let (e, _host) = hosted();
    push_sub(&e, "hook", &server.url("/"), |c| c.max_in_flight = 4);
    for i in 0..40 {
        publish(&e, &format!("m{i}"));
    }
    let info = wait_info(&e, "hook", |i| i.ack_floor == 40).await;
    assert_eq!(info.push.unwrap().succeeded, 40);
    assert_eq!(server.peak.load(Ordering::SeqCst), 4, "peak concurrency the endpoint saw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_does_not_follow_redirects() {
    let server = Server::start(|s| {
        if s.path == "/moved" {
            Reply { status: 302, delay: Duration::ZERO, location: Some("/elsewhere".into()) }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let (e, _host) = hosted();
    push_sub(&e, "hook", &server.url("/moved"), |c| c.backoff = Backoff::List(vec![Duration::from_secs(60)]));
    publish(&e, "m");
    let info = wait_info(&e, "hook", |i| i.push.as_ref().is_some_and(|p| p.failed == 1)).await;
    assert_eq!(info.push.unwrap().last_status, Some(302));
    assert_eq!(info.ack_floor, 0);
    // Give a follower every chance to show itself: the endpoint is asked again only after the backoff.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.seen().iter().all(|s| s.path == "/moved"), "{:?}", server.seen());
}

#[test]
fn push_endpoints_other_than_http_and_https_are_refused_at_create() {
    let e = Engine::new();
    for url in ["ftp://example.com/x", "ws://127.0.0.1:1/", "example.com/hook", "file:///tmp/x"] {
        let mut c = SubscriptionConfig::new(name("s"), name("t"));
        c.push = Some(PushConfig::new(url));
        let err = e.create_subscription(c).unwrap_err();
        assert!(matches!(err, EngineError::InvalidConfig(_)), "{url}: {err}");
    }
    let mut c = SubscriptionConfig::new(name("s"), name("t"));
    c.push = Some(PushConfig::new("http://127.0.0.1:1/"));
    c.ack = pubsub::engine::AckMode::None;
    assert!(
        matches!(e.create_subscription(c), Err(EngineError::InvalidConfig(_))),
        "push needs explicit acks"
    );
    assert!(e.subscriptions(None).is_empty());
    let home = Home::new("push-refused");
    let (code, _, stderr) = home.run(&[
        "--broker",
        "mem://",
        "subs",
        "create",
        "s",
        "--topic",
        "t",
        "--push-endpoint",
        "ftp://example.com/x",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("http:// or https://"), "{stderr}");
    let (code, _, stderr) =
        home.run(&["--broker", "mem://", "subs", "create", "s", "--topic", "t", "--push-header", "a=b"]);
    assert_eq!(code, 2, "--push-header needs --push-endpoint: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_subscription_survives_kill_9_and_the_restarted_daemon_pushes_again() {
    let server = Server::start(|_| Reply::status(200)).await;
    let home = Home::with_daemon("push-restart");
    let url = server.url("/hook");
    let run = |args: &[&str]| {
        let (code, stdout, stderr) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout
    };
    run(&["subs", "create", "hook", "--topic", "orders", "--push-endpoint", &url, "--push-header", "x-k=v"]);
    run(&["pub", "orders", "before"]);
    // Acked (and, with the default sync durability, on disk) before the kill.
    wait_for(|| {
        let (_, stdout, _) = home.run(&["sub-info", "hook", "--json"]);
        serde_json::from_str::<serde_json::Value>(&stdout).is_ok_and(|v| v["ack_floor"] == 1)
    })
    .await;
    for pid in crate::support::daemons_under(&home.0) {
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).output().unwrap();
    }
    // The next command starts a new daemon on the same data directory; its pusher picks up.
    run(&["pub", "orders", "after"]);
    wait_for(|| server.seen().len() == 2).await;
    let seen = server.seen();
    assert_eq!(seen.iter().map(Seen::payload).collect::<Vec<_>>(), ["before", "after"]);
    assert_eq!(seen[1].header("x-k"), Some("v"));
    let info: serde_json::Value = serde_json::from_str(&run(&["sub-info", "hook", "--json"])).unwrap();
    assert_eq!(info["push"]["endpoint"], url.as_str());
    let text = run(&["sub-info", "hook"]);
    assert!(text.contains(&format!("POST {url}")), "{text}");
    let peek = run(&["peek", "hook"]);
    assert!(peek.contains(&format!("push to {url}")), "{peek}");
    run(&["serve", "stop"]);
    let (code, _, stderr) =
        home.run(&["store", "verify", &home.0.join("data").join("engine").display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
}

async fn wait_for(what: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !what() {
        assert!(Instant::now() < deadline, "condition not reached in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
