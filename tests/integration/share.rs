//! A shared demo (`pubsub demo NAME --share`): attendees watch it in their own terminal (`pubsub join`)
//! or a browser (the page at `/`), and take part as competing consumers (`pubsub sub TOPIC -s SUB`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pubsub::broker::url::{ConnectOptions, connect_with};
use pubsub::broker::{Settle, SharedBroker, StreamItem, SubscribeRequest};
use pubsub::demo::share::{STATUS_SUBJECT, Shared, attendees};
use pubsub::model::{AckMode, Name, Pattern};

use crate::support::{Home, stdout_lines, wait_until_listening};
use crate::tui_e2e::Tmux;

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pubsub demo SCENARIO --share` without a terminal (it serves until killed); its URL with the
/// token, read from the invitation it prints.
fn shared_demo(home: &Home, scenario: &str) -> (Killed, String) {
    let mut child = home
        .cmd()
        .args(["--token", "s3cret", "demo", scenario, "--share", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut child);
    let child = Killed(child);
    let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    let addr = first.split(" on ").nth(1).and_then(|r| r.split(';').next()).unwrap().to_string();
    assert!(first.starts_with(&format!("sharing {scenario} on 127.0.0.1:")), "{first}");
    let invitation: Vec<String> =
        (0..4).map(|_| lines.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
    let url = format!("ws://{addr}?token=s3cret");
    assert!(invitation[0].contains(&format!("pubsub join '{url}'")), "{invitation:?}");
    (child, url)
}

async fn connect(url: &str) -> SharedBroker {
    connect_with(url, &ConnectOptions { autostart: false, token: None }).await.unwrap().broker
}

/// The next shared state a watcher's stream carries.
async fn next_state(stream: &mut pubsub::broker::DeliveryStream) -> Shared {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap();
        if let Some(Ok(StreamItem::Delivery(d))) = item {
            return serde_json::from_slice(&d.message.payload).unwrap();
        }
        assert!(item.is_some(), "the watcher's stream ended");
    }
}

/// Thirty watchers and ten consumers on one shared demo: every watcher keeps receiving states whose
/// virtual time advances, every consumer gets work, and the states name all ten consumers with their
/// share. Progress and correctness only; no timing threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_demo_serves_thirty_watchers_and_ten_consumers() {
    let home = Home::new("share-load");
    let (_demo, url) = shared_demo(&home, "work-queue");
    let mut watchers = Vec::new();
    for _ in 0..30 {
        let broker = connect(&url).await;
        let stream = broker
            .subscribe(SubscribeRequest::live(vec![Pattern::parse(STATUS_SUBJECT).unwrap()]))
            .await
            .unwrap();
        watchers.push((broker, stream));
    }
    let mut consumers = tokio::task::JoinSet::new();
    for i in 0..10 {
        let broker = connect(&url).await;
        let request = SubscribeRequest {
            subscription: Some(Name::new("workers").unwrap()),
            ack: AckMode::Explicit,
            consumer: Some(format!("attendee-{i}")),
            prefetch: Some(1),
            ..SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()])
        };
        let mut stream = broker.subscribe(request).await.unwrap();
        // Each takes three jobs, acking each, then keeps its place (so it stays in the topology).
        consumers.spawn(async move {
            let mut got = 0;
            while got < 3 {
                let item = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap();
                if let Some(Ok(StreamItem::Delivery(d))) = item {
                    broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
                    got += 1;
                }
            }
            (broker, stream, got)
        });
    }
    // Every watcher sees the teacher's virtual time move on across several states.
    let mut watching = tokio::task::JoinSet::new();
    for (broker, mut stream) in watchers {
        watching.spawn(async move {
            let first = next_state(&mut stream).await;
            let mut last = first.clone();
            for _ in 0..4 {
                let next = next_state(&mut stream).await;
                assert!(next.status.now >= last.status.now, "virtual time never runs back");
                last = next;
            }
            assert!(last.status.now > first.status.now, "the demo advanced: {:?}", last.status.now);
            (broker, stream, last.status.now)
        });
    }
    let mut watchers: Vec<(SharedBroker, pubsub::broker::DeliveryStream, Duration)> =
        watching.join_all().await;
    let first_now = watchers.iter().map(|w| w.2).max().unwrap();
    let held: Vec<_> = consumers.join_all().await;
    assert!(held.iter().all(|(_, _, got)| *got == 3), "every consumer got its work");
    // Every watcher goes on receiving after the consumers took their work: a state later than every
    // state any watcher had seen before. States queued for a watcher come in order, so the loop ends.
    for (_broker, stream, _) in &mut watchers {
        let mut state = next_state(stream).await;
        for _ in 0..1000 {
            if state.status.now > first_now {
                break;
            }
            state = next_state(stream).await;
        }
        assert!(state.status.now > first_now, "the demo advanced past {first_now:?}");
    }
    // A state after the consumers' acks counts them all, each attendee with its share of the work.
    let stream = &mut watchers[0].1;
    let took = |state: &Shared| attendees(&state.status).iter().map(|a| a.delivered).sum::<u64>();
    let mut state = next_state(stream).await;
    for _ in 0..1000 {
        if took(&state) >= 30 {
            break;
        }
        state = next_state(stream).await;
    }
    assert!(took(&state) >= 30, "the states count what the attendees took: {}", took(&state));
    let found: HashMap<String, f64> =
        attendees(&state.status).into_iter().map(|a| (a.name, a.share)).collect();
    for i in 0..10 {
        let share = found.get(&format!("attendee-{i}")).copied();
        assert!(share.is_some_and(|s| s > 0.0), "attendee-{i} in {found:?}");
    }
    drop(held);
}

#[test]
fn a_shared_demo_in_three_terminals_shows_the_attendee_to_the_teacher_and_the_watcher() {
    let home = Home::new("share-e2e");
    std::fs::create_dir_all(&home.0).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}?token=s3cret");
    let env = format!("PUBSUB_HOME={} NO_COLOR=1", home.0.display());
    let teacher = format!(
        "{env} {} --token s3cret demo fan-out --share --listen 127.0.0.1:{port}; echo EXITED=$?; sleep 30",
        bin.display()
    );
    let Some(teacher) = Tmux::start("share-teacher", 170, 50, &teacher) else { return };
    teacher.wait_for("billing-svc");
    wait_until_listening(port, "the shared demo");
    let watcher = format!("{env} {} join '{url}'; echo EXITED=$?; sleep 30", bin.display());
    let Some(watcher) = Tmux::start("share-watcher", 170, 50, &watcher) else { return };
    // The watcher draws the teacher's topology: the scenario's publisher and consumers.
    watcher.wait_for("shop");
    watcher.wait_for("shipping-svc");
    let consumer = format!(
        "{env} {} --broker '{url}' sub orders -s billing --name ada-laptop; echo EXITED=$?; sleep 30",
        bin.display()
    );
    let Some(attendee) = Tmux::start("share-attendee", 120, 20, &consumer) else { return };
    attendee.wait_for("orders #");
    // The teacher sees the attendee among billing's consumers, with its share of the work; so does the
    // watcher.
    teacher.wait_for("ada-laptop");
    teacher.wait_for("of the work");
    watcher.wait_for("ada-laptop");
    // Ctrl-C ends each: the consumer as an interrupted command (130), the two views cleanly.
    attendee.keys(&["C-c"]);
    attendee.wait_for("EXITED=130");
    for t in [&watcher, &teacher] {
        t.keys(&["C-c"]);
        t.wait_for("EXITED=0");
    }
}

/// Chromium and its WebDriver, when installed; `None` (after saying why) otherwise, which fails instead
/// under PUBSUB_REQUIRE_BROKERS.
pub(crate) fn chromedriver() -> Option<(Killed, u16)> {
    let have = |bin: &str| Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have("chromedriver") || !have("chromium") {
        assert!(
            std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(),
            "chromium and chromedriver are required for the web page test"
        );
        eprintln!("skipping the web page test: chromium or chromedriver is not installed");
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    wait_until_listening(port, "chromedriver");
    Some((child, port))
}

/// One WebDriver request (plain HTTP/1.1, one per connection): the JSON answer's `value`.
pub(crate) fn webdriver(port: u16, method: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let body = body.to_string();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        socket,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open whatever the request says: read the head, then as many
    // bytes as it announces.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(socket.read(&mut byte).unwrap(), 1, "chromedriver closed mid-answer");
        answer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{method} {path}: {head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    let mut json = vec![0u8; length];
    socket.read_exact(&mut json).unwrap();
    serde_json::from_slice::<serde_json::Value>(&json).unwrap()["value"].clone()
}

/// A headless chromium session of chromedriver on `port`, ended when dropped (chromedriver, killed,
/// would leave the browser running): the port and the session's path, `/session/ID`.
pub(crate) struct Session(pub u16, pub String);

impl Session {
    pub(crate) fn open(port: u16) -> Session {
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        }}}});
        let session = webdriver(port, "POST", "/session", &caps)["sessionId"].as_str().unwrap().to_string();
        Session(port, format!("/session/{session}"))
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub(crate) fn run(&self, script: &str) -> serde_json::Value {
        let body = serde_json::json!({ "script": script, "args": [] });
        webdriver(self.0, "POST", &format!("{}/execute/sync", self.1), &body)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        webdriver(self.0, "DELETE", &self.1, &serde_json::json!({}));
    }
}

#[test]
fn the_shared_demos_web_page_draws_the_topology_live_in_a_real_browser() {
    let Some((_driver, port)) = chromedriver() else { return };
    let home = Home::new("share-page");
    let (_demo, url) = shared_demo(&home, "fan-out");
    let page = url.replace("ws://", "http://").replace("?token=", "/?token=");
    let session = Session::open(port);
    let base = session.1.clone();
    webdriver(port, "POST", &format!("{base}/url"), &serde_json::json!({ "url": page }));
    let read = || {
        let script = serde_json::json!({
            "script": "return [document.getElementById('now').textContent, document.body.innerText]",
            "args": []
        });
        let got = webdriver(port, "POST", &format!("{base}/execute/sync"), &script);
        let now: f64 = got[0].as_str().unwrap().parse().unwrap();
        (now, got[1].as_str().unwrap().to_string())
    };
    // The page connects back over WebSocket and fills in the scenario's names.
    let started = Instant::now();
    let (first, text) = loop {
        let (now, text) = read();
        if now > 0.0 && ["shop", "orders", "billing", "shipping-svc"].iter().all(|n| text.contains(n)) {
            break (now, text);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the page never drew the demo:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("fan-out"), "{text}");
    assert!(text.contains("One publisher"), "the narration shows:\n{text}");
    // And its clock moves on as the teacher's demo runs.
    let started = Instant::now();
    loop {
        let (now, text) = read();
        if now > first {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the counter never moved from {first}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
