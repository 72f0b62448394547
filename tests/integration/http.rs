//! Plain HTTP on `pubsub serve`'s port: publishing with `POST /topics/NAME`, Server-Sent Events read by
//! a real `curl -N` and by Python's standard library, subscription info as JSON, every refusal as a
//! status with a JSON error, and clients that send a request slowly or too large. Loopback, port 0.

use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pubsub::engine::{BrowseFrom, StartPosition, SubscriptionConfig, TopicConfig};
use pubsub::server::{ServeConfig, ServeLimits};

use crate::server::{TestServer, start, start_with_engine};
use crate::support::{name, stdout_lines};

/// `host:port` of a test server.
fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("ws://").to_string()
}

fn base(server: &TestServer) -> String {
    format!("http://{}", addr(server))
}

/// An HTTP answer: status, header lines (names lower-cased) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (lines without the final blank line) and `body` on a fresh connection with
/// `Connection: close` and reads the whole answer.
async fn request(server: &TestServer, head: &str, body: &[u8]) -> Answer {
    let mut socket = TcpStream::connect(addr(server)).await.unwrap();
    let mut raw =
        format!("{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    if body.is_empty() && head.starts_with("GET") {
        raw = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    }
    raw.extend_from_slice(body);
    socket.write_all(&raw).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut all))
        .await
        .unwrap_or_else(|_| panic!("no answer to {head:?} within 10 s: {}", String::from_utf8_lossy(&all)))
        .unwrap();
    parse_answer(&all)
}

fn parse_answer(all: &[u8]) -> Answer {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {all:?}"));
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: all[end + 4..].to_vec() }
}

/// Waits (at most 10 s) until `topic` exists and has `n` subscriptions: an event stream has attached.
async fn subscriptions_reach(server: &TestServer, topic: &str, n: u32) {
    for _ in 0..500 {
        if server.engine.topic_info(&name(topic)).is_ok_and(|t| t.subscriptions >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no event stream attached to {topic}");
}

/// Lines from a child's stdout up to and including the one `done` accepts, within 10 s.
fn lines_until(lines: &Receiver<String>, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no more output; so far: {got:?}"));
        let last = done(&line);
        got.push(line);
        if last {
            return got;
        }
    }
}

/// SSE lines from a child's stdout up to the `n`-th event's data line, within 10 s each.
async fn events_read(lines: Receiver<String>, n: usize) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut seen = 0;
        lines_until(&lines, |l| {
            seen += usize::from(l.starts_with("data: "));
            seen == n
        })
    })
    .await
    .unwrap()
}

/// The `(id, envelope)` of every event among SSE lines.
fn events(lines: &[String]) -> Vec<(u64, serde_json::Value)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in lines {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("data: ") {
            out.push((id.take().unwrap(), serde_json::from_str(v).unwrap()));
        }
    }
    out
}

/// A child process killed and reaped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> Option<Child> {
    let child = Command::new("curl").args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn();
    match child {
        Ok(child) => Some(Child(child)),
        Err(e) => {
            assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "curl cannot run: {e}");
            eprintln!("skipping: curl cannot run: {e}");
            None
        }
    }
}

#[tokio::test]
async fn http_post_publishes_the_body_with_headers_and_key_and_answers_the_receipt() {
    let server = start(ServeConfig::default()).await;
    let body = [0u8, 159, 146, 150, b'\n', 255];
    let answer = request(
        &server,
        "POST /topics/orders.eu?key=cust%2F42&msg_id=m-1 HTTP/1.1\r\nHost: x\r\nUser-Agent: test/1\r\n\
         Content-Type: application/octet-stream\r\nX-Trace: abc\r\nX-Trace: def",
        &body,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let receipt = answer.json();
    assert_eq!(
        (receipt["topic"].as_str(), receipt["seq"].as_u64()),
        (Some("orders.eu"), Some(1)),
        "{receipt}"
    );
    let stored = server.engine.browse(&name("orders.eu"), BrowseFrom::Seq(1), 10).unwrap();
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(&m.payload[..], &body, "the body byte for byte");
    assert_eq!(m.key().map(|k| &k[..]), Some(&b"cust/42"[..]));
    assert_eq!(m.msg_id(), Some("m-1"));
    let headers: Vec<(&str, &str)> = m.headers().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(headers, [("content-type", "application/octet-stream"), ("x-trace", "abc, def")]);
    // The same msg_id again is a duplicate with the original seq.
    let again = request(&server, "POST /topics/orders.eu?msg_id=m-1 HTTP/1.1\r\nHost: x", b"other").await;
    assert_eq!((again.json()["seq"].as_u64(), again.json()["duplicate"].as_bool()), (Some(1), Some(true)));
}

#[tokio::test]
async fn http_refusals_have_their_status_and_a_json_error() {
    let limits = ServeLimits { max_message_bytes: 1000, ..ServeLimits::default() };
    let server = start(ServeConfig { token: Some("s3cret".into()), limits, ..ServeConfig::default() }).await;
    let auth = "Authorization: Bearer s3cret";
    let mut captured = TopicConfig::new(name("captured"));
    captured.subjects = vec![pubsub::engine::Pattern::parse("captured.>").unwrap()];
    server.engine.create_topic(captured).unwrap();
    let cases: Vec<(String, Vec<u8>, u16, u64)> = vec![
        (format!("POST /topics/big HTTP/1.1\r\n{auth}"), vec![b'x'; 1001], 413, 1007),
        (
            format!("POST /topics/small HTTP/1.1\r\n{auth}\r\nX-Pad: {}", "p".repeat(990)),
            b"1234567890".to_vec(),
            413,
            1007,
        ),
        (format!("POST /topics/bad%20name HTTP/1.1\r\n{auth}"), b"x".to_vec(), 400, 2011),
        (format!("POST /topics/t HTTP/1.1\r\n{auth}\r\nX-Bin: \u{0}"), b"x".to_vec(), 400, 1000),
        ("POST /topics/t HTTP/1.1\r\nAuthorization: Bearer nope".to_string(), b"x".to_vec(), 401, 1005),
        ("POST /topics/t HTTP/1.1".to_string(), b"x".to_vec(), 401, 1005),
        ("GET /topics/t/events?token=wrong HTTP/1.1".to_string(), vec![], 401, 1005),
        (format!("GET /nowhere HTTP/1.1\r\n{auth}"), vec![], 404, 1001),
        (format!("DELETE /topics/t HTTP/1.1\r\n{auth}"), vec![], 405, 1001),
        // A subject inside another topic's subjects is not a topic to stream (see the last case below).
        (format!("GET /topics/captured.eu/events HTTP/1.1\r\n{auth}"), vec![], 404, 2001),
        (format!("GET /subscriptions/missing HTTP/1.1\r\n{auth}"), vec![], 404, 2004),
        (format!("GET /topics/t/events?from=soon HTTP/1.1\r\n{auth}"), vec![], 400, 1002),
    ];
    for (head, body, status, code) in cases {
        let answer = request(&server, &head, &body).await;
        let error = answer.json();
        assert_eq!((answer.status, error["code"].as_u64()), (status, Some(code)), "{head}: {error}");
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{error}");
    }
    // A header value with a byte that is not UTF-8.
    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    let mut raw = format!("POST /topics/t HTTP/1.1\r\n{auth}\r\nX-Bin: ").into_bytes();
    raw.extend_from_slice(b"\xff\xfe\r\nContent-Length: 1\r\n\r\nx");
    socket.write_all(&raw).await.unwrap();
    let mut all = Vec::new();
    socket.read_to_end(&mut all).await.unwrap();
    let answer = parse_answer(&all);
    assert_eq!((answer.status, answer.json()["code"].as_u64()), (400, Some(1002)), "{answer:?}");
    assert!(answer.json()["error"].as_str().unwrap().contains("x-bin"));
    // A chunked upload is refused, with 411.
    let answer =
        request(&server, &format!("POST /topics/t HTTP/1.1\r\n{auth}\r\nTransfer-Encoding: chunked"), b"")
            .await;
    assert_eq!(answer.status, 411, "{answer:?}");
    // 405 says which method would do; 401 how to authenticate.
    let answer = request(&server, &format!("GET /topics/t HTTP/1.1\r\n{auth}"), b"").await;
    assert_eq!(answer.header("allow"), Some("POST"));
    let answer = request(&server, "GET /subscriptions/x HTTP/1.1", b"").await;
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert!(server.engine.topics().iter().all(|t| t.messages == 0), "nothing refused was published");
    // With the token in the query, as a browser's EventSource must send it, it works.
    let ok = request(&server, "POST /topics/t?token=s3cret HTTP/1.1", b"fine").await;
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[tokio::test]
async fn http_subscription_info_is_the_protocol_s_json() {
    let server = start(ServeConfig::default()).await;
    server.engine.create_topic(TopicConfig::new(name("jobs"))).unwrap();
    let mut config = SubscriptionConfig::new(name("workers"), name("jobs"));
    config.start = StartPosition::All;
    server.engine.create_subscription(config).unwrap();
    for i in 0..3 {
        let answer = request(&server, "POST /topics/jobs HTTP/1.1", format!("job {i}").as_bytes()).await;
        assert_eq!(answer.status, 200);
    }
    let answer = request(&server, "GET /subscriptions/workers HTTP/1.1", b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let info = answer.json();
    assert_eq!((info["name"].as_str(), info["topic"].as_str()), (Some("workers"), Some("jobs")), "{info}");
    assert_eq!(info["backlog"].as_u64(), Some(3), "{info}");
    let same = serde_json::to_value(server.engine.subscription_info(&name("workers")).unwrap()).unwrap();
    assert_eq!(info["head_seq"], same["head_seq"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_server_sent_events_and_resumes_with_last_event_id() {
    let server = start(ServeConfig::default()).await;
    server.engine.create_topic(TopicConfig::new(name("orders"))).unwrap();
    request(&server, "POST /topics/orders HTTP/1.1", b"before the stream").await;
    let url = format!("{}/topics/orders/events", base(&server));
    let Some(mut live) = curl(&["-sN", &url]) else { return };
    let lines = stdout_lines(&mut live.0);
    subscriptions_reach(&server, "orders", 1).await;
    for body in ["first", "two\nlines", "third"] {
        let answer = request(&server, "POST /topics/orders?key=k HTTP/1.1\r\nX-N: 1", body.as_bytes()).await;
        assert_eq!(answer.status, 200);
    }
    let got =
        tokio::task::spawn_blocking(move || lines_until(&lines, |l| l.contains("third"))).await.unwrap();
    let got = events(&got);
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [2, 3, 4], "a fresh stream starts with new messages, ids are seqs");
    assert_eq!(got[1].1["payload"], "two\nlines");
    assert_eq!((got[0].1["key"].as_str(), got[0].1["headers"]["x-n"].as_str()), (Some("k"), Some("1")));
    drop(live);

    // Resuming after id 2 sends 3 and 4 at once, then whatever comes next.
    let Some(mut resumed) = curl(&["-sN", "-H", "Last-Event-ID: 2", &url]) else { return };
    let lines = stdout_lines(&mut resumed.0);
    let got = tokio::task::spawn_blocking(move || {
        let first = lines_until(&lines, |l| l.contains("third"));
        (first, lines)
    })
    .await
    .unwrap();
    let (first, lines) = got;
    assert_eq!(events(&first).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [3, 4]);
    request(&server, "POST /topics/orders HTTP/1.1", b"fifth").await;
    let more =
        tokio::task::spawn_blocking(move || lines_until(&lines, |l| l.contains("fifth"))).await.unwrap();
    assert_eq!(events(&more).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [5]);
    drop(resumed);
    // A stream's subscription goes with it.
    for _ in 0..500 {
        if server.engine.topic_info(&name("orders")).unwrap().subscriptions == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the event streams' subscriptions outlived them");
}

/// `curl -N …/topics/NAME/events` started before anything was published: the topic is made as the
/// first publish would make it, and the stream gets that publish. With auto-create off it is a 404.
#[tokio::test]
async fn an_event_stream_may_start_before_its_topic_exists() {
    let server = start(ServeConfig::default()).await;
    assert!(server.engine.topic_info(&name("fresh")).is_err());
    let url = format!("{}/topics/fresh/events", base(&server));
    let Some(mut live) = curl(&["-sN", &url]) else { return };
    let lines = stdout_lines(&mut live.0);
    subscriptions_reach(&server, "fresh", 1).await;
    let answer = request(&server, "POST /topics/fresh HTTP/1.1", b"first ever").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let got = events(&events_read(lines, 1).await);
    assert_eq!((got[0].0, got[0].1["payload"].as_str()), (1, Some("first ever")));
    drop(live);

    let config = pubsub::engine::EngineConfig { auto_create: false, ..Default::default() };
    let strict = start_with_engine(ServeConfig::default(), config).await;
    let answer = request(&strict, "GET /topics/fresh/events HTTP/1.1", b"").await;
    assert_eq!((answer.status, answer.json()["code"].as_u64()), (404, Some(2001)), "{answer:?}");
    assert!(strict.engine.topics().is_empty(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_over_several_partitions_resume_every_partition_exactly() {
    let server = start(ServeConfig::default()).await;
    let mut config = TopicConfig::new(name("clicks"));
    config.partitions = 3;
    server.engine.create_topic(config).unwrap();
    for i in 0..6 {
        let answer = request(
            &server,
            &format!("POST /topics/clicks?key=user{i} HTTP/1.1"),
            format!("m{i}").as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let url = format!("{}/topics/clicks/events?from=all", base(&server));
    let Some(mut all) = curl(&["-sN", &url]) else { return };
    let lines = stdout_lines(&mut all.0);
    let first = events_read(lines, 6).await;
    drop(all);
    let got = positioned_events(&first);
    assert_eq!(got.len(), 6);
    let mut partitions_used = std::collections::BTreeSet::new();
    for (id, envelope) in &got {
        let (p, seq) = (envelope["partition"].as_u64().unwrap(), envelope["seq"].as_u64().unwrap());
        partitions_used.insert(p);
        assert_eq!(id.len(), 3, "every id names all three partitions: {id:?}");
        assert_eq!(id[&p], seq, "the id's entry for the event's own partition is its seq: {id:?}");
    }
    assert!(partitions_used.len() > 1, "six keys spread over the partitions: {partitions_used:?}");

    // Resuming after the third event sends exactly the three not covered by its id.
    let raw_id = first.iter().filter_map(|l| l.strip_prefix("id: ")).nth(2).unwrap().to_string();
    let Some(mut resumed) = curl(&["-sN", "-H", &format!("Last-Event-ID: {raw_id}"), &url]) else { return };
    let lines = stdout_lines(&mut resumed.0);
    let rest = events_read(lines, 3).await;
    let payloads = |events: &[(std::collections::BTreeMap<u64, u64>, serde_json::Value)]| {
        events
            .iter()
            .map(|(_, e)| e["payload"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let resumed_payloads = payloads(&positioned_events(&rest));
    assert_eq!(resumed_payloads, payloads(&got[3..]), "the resumed stream sends what the id does not cover");
    drop(resumed);

    // One partition alone: plain seq ids, only its messages.
    let one = format!("{}/topics/clicks/events?from=all&partition=1", base(&server));
    let in_one = got.iter().filter(|(_, e)| e["partition"] == 1).count();
    if in_one > 0 {
        let Some(mut single) = curl(&["-sN", &one]) else { return };
        let lines = stdout_lines(&mut single.0);
        let only = events_read(lines, in_one).await;
        let only = events(&only);
        assert!(only.iter().all(|(id, e)| e["partition"] == 1 && e["seq"] == *id), "{only:?}");
    }
    let answer = request(&server, "GET /topics/clicks/events?partition=3 HTTP/1.1", b"").await;
    assert_eq!(answer.status, 404, "{}", String::from_utf8_lossy(&answer.body));
    assert!(answer.json()["error"].as_str().unwrap().contains("partitions 0 to 2"), "{:?}", answer.json());
}

/// The `(positions, envelope)` of every event among SSE lines whose ids are `P:SEQ,…` lists.
fn positioned_events(lines: &[String]) -> Vec<(std::collections::BTreeMap<u64, u64>, serde_json::Value)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in lines {
        if let Some(v) = line.strip_prefix("id: ") {
            let positions = v
                .split(',')
                .map(|item| {
                    let (p, seq) = item.split_once(':').unwrap_or_else(|| panic!("not P:SEQ: {v}"));
                    (p.parse().unwrap(), seq.parse().unwrap())
                })
                .collect();
            id = Some(positions);
        } else if let Some(v) = line.strip_prefix("data: ") {
            out.push((id.take().unwrap(), serde_json::from_str(v).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_s_standard_library_publishes_and_reads_events() {
    let has_python = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_python {
        assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "python3 is missing");
        eprintln!("skipping: python3 is missing");
        return;
    }
    let server = start(ServeConfig { token: Some("tok".into()), ..ServeConfig::default() }).await;
    server.engine.create_topic(TopicConfig::new(name("py"))).unwrap();
    for i in 1..=5 {
        let answer = request(
            &server,
            "POST /topics/py HTTP/1.1\r\nAuthorization: Bearer tok",
            format!("m{i}").as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let args = [base(&server), "py".into(), "tok".into(), "5".into()];
    crate::support::python_script_says_ok("sse.py", args.to_vec()).await;
    let stored = server.engine.browse(&name("py"), BrowseFrom::Seq(6), 1).unwrap();
    assert_eq!(stored[0].headers().get("x-from").map(String::as_str), Some("python"));
}

#[tokio::test]
async fn an_idle_event_stream_gets_keep_alive_comments() {
    let config = ServeConfig { keep_alive: Duration::from_millis(100), ..ServeConfig::default() };
    let server = start(config).await;
    server.engine.create_topic(TopicConfig::new(name("quiet"))).unwrap();
    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    socket.write_all(b"GET /topics/quiet/events HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(": keep-alive\n\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/event-stream\r\n"), "{text}");
}

#[tokio::test]
async fn event_streams_count_among_the_connections_and_the_limit_answers_503() {
    let limits = ServeLimits { max_connections: 1, ..ServeLimits::default() };
    let server = start(ServeConfig { limits, ..ServeConfig::default() }).await;
    server.engine.create_topic(TopicConfig::new(name("full"))).unwrap();
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream.write_all(b"GET /topics/full/events HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "the stream is open");
    let refused = request(&server, "POST /topics/full HTTP/1.1", b"x").await;
    assert_eq!((refused.status, refused.json()["code"].as_u64()), (503, Some(1008)), "{refused:?}");
    drop(stream);
    // Its place comes back when it ends.
    for _ in 0..500 {
        if request(&server, "POST /topics/full HTTP/1.1", b"x").await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the stream's place never came back");
}

/// Whether the server closes `socket` within 10 s; what it sent meanwhile.
async fn closed_by_server(socket: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(until, socket.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0) | Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Slowloris (part of a head, then nothing) is closed at the handshake deadline, and header blocks
/// over the allowance before authentication or with too many lines are refused with 431 and closed;
/// meanwhile a client with the token is served.
#[tokio::test]
async fn slow_and_oversized_http_requests_are_closed_without_keeping_others_out() {
    let limits = ServeLimits { handshake_timeout: Duration::from_secs(1), ..ServeLimits::default() };
    let server = start(ServeConfig { token: Some("s3cret".into()), limits, ..ServeConfig::default() }).await;
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
        socket.write_all(b"GET /topics/t/events HTTP/1.1\r\nHost: x\r\nX-Wait: ").await.unwrap();
        slow.push(socket);
    }
    let mut big = Vec::new();
    for (lines, width) in [(40, 2000), (2000, 10)] {
        let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
        let mut head = b"POST /topics/t HTTP/1.1\r\n".to_vec();
        for i in 0..lines {
            head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "z".repeat(width)).as_bytes());
        }
        // The server may stop reading (and close) before all of it is written.
        let _ = socket.write_all(&head).await;
        big.push(socket);
    }
    let auth = "POST /topics/t HTTP/1.1\r\nAuthorization: Bearer s3cret";
    let ok = request(&server, auth, b"still served").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    for socket in &mut big {
        let (closed, answer) = closed_by_server(socket).await;
        assert!(closed, "an oversized head was closed");
        // The answer may be lost to a reset when the server closes with the client's bytes unread.
        if !answer.is_empty() {
            let answer = parse_answer(&answer);
            assert_eq!((answer.status, answer.json()["code"].as_u64()), (431, Some(1006)));
        }
    }
    let started = std::time::Instant::now();
    for (i, socket) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(socket).await.0, "slow request {i} is still open");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "closed at the 1 s deadline");
    let ok = request(&server, auth, b"after").await;
    assert_eq!(ok.status, 200);
    assert_eq!(server.engine.topic_info(&name("t")).unwrap().messages, 2);
}

/// With `allow_origin`, answers and event streams carry the CORS header and a preflight is answered
/// without a token; without it, neither (and `OPTIONS` is a wrong method).
#[tokio::test]
async fn cors_headers_are_sent_only_when_an_origin_is_allowed() {
    let config = ServeConfig {
        token: Some("tok".into()),
        allow_origin: Some("http://localhost:8000".into()),
        ..ServeConfig::default()
    };
    let server = start(config).await;
    let preflight = request(
        &server,
        "OPTIONS /topics/t HTTP/1.1\r\nOrigin: http://localhost:8000\r\nAccess-Control-Request-Method: POST",
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("http://localhost:8000"));
    assert_eq!(preflight.header("access-control-allow-methods"), Some("POST"));
    let published = request(&server, "POST /topics/t HTTP/1.1\r\nAuthorization: Bearer tok", b"x").await;
    assert_eq!(published.status, 200);
    assert_eq!(published.header("access-control-allow-origin"), Some("http://localhost:8000"));
    let refused = request(&server, "POST /topics/t HTTP/1.1", b"x").await;
    assert_eq!((refused.status, refused.header("access-control-allow-origin").is_some()), (401, true));
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream.write_all(b"GET /topics/t/events?token=tok HTTP/1.1\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.contains("\r\nAccess-Control-Allow-Origin: http://localhost:8000\r\n"), "{head}");

    let plain = start(ServeConfig::default()).await;
    let answer = request(&plain, "POST /topics/t HTTP/1.1", b"x").await;
    assert_eq!((answer.status, answer.header("access-control-allow-origin")), (200, None));
    let options = request(&plain, "OPTIONS /topics/t HTTP/1.1", b"").await;
    assert_eq!(options.status, 405);
}

/// `serve --http ADDR` answers on a second address too, as the same server: what is published there
/// is in the engine the main address serves.
#[test]
fn serve_with_http_answers_on_the_second_address_too() {
    use std::io::{BufRead, BufReader, Read, Write};
    let home = crate::support::Home::new("http-extra");
    let child = home
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    // Read by a thread of its own, so that a line that never comes fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let announced = lines_until(&rx, |l| l.contains("also answering HTTP on http://"));
    let http = announced.last().unwrap().rsplit("http://").next().unwrap().trim().to_string();
    let mut ws = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut ws).unwrap();
    let main = ws.trim().trim_start_matches("ws://").to_string();
    assert_ne!(main, http);
    let ask = |addr: &str, raw: &str| {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        socket.write_all(raw.as_bytes()).unwrap();
        let mut all = Vec::new();
        socket.read_to_end(&mut all).unwrap();
        parse_answer(&all)
    };
    let published =
        ask(&http, "POST /topics/extra HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    assert_eq!(published.status, 200, "{published:?}");
    let on_main =
        ask(&main, "POST /topics/extra HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nho");
    assert_eq!(on_main.json()["seq"].as_u64(), Some(2), "one engine behind both addresses");
}

/// Reads one answer from a connection that stays open: the head, then as many body bytes as it
/// announces. `pending` holds bytes already read past the previous answer (pipelined answers).
async fn next_answer(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Answer {
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = parse_answer(&pending[..end + 4]);
                let length: usize = head.header("content-length").map_or(0, |v| v.parse().unwrap());
                if pending.len() >= end + 4 + length {
                    let answer = parse_answer(&pending[..end + 4 + length]);
                    pending.drain(..end + 4 + length);
                    return answer;
                }
            }
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed mid-answer: {}", String::from_utf8_lossy(pending));
            pending.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no answer within 10 s"))
}

/// One connection carries several requests: sent one by one, pipelined in one write (answered in
/// order), a refusal without a body (the connection stays), then `Connection: close`, after which the
/// server closes. Each request is checked for its token.
#[tokio::test]
async fn a_keep_alive_connection_answers_requests_in_order_until_connection_close() {
    let server = start(ServeConfig { token: Some("s3cret".into()), ..ServeConfig::default() }).await;
    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    let mut pending = Vec::new();
    let post = |body: &str| {
        format!(
            "POST /topics/kept HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    socket.write_all(post("one").as_bytes()).await.unwrap();
    let first = next_answer(&mut socket, &mut pending).await;
    assert_eq!((first.status, first.json()["seq"].as_u64()), (200, Some(1)), "{first:?}");
    assert_eq!(first.header("connection"), None, "the connection stays open");
    socket.write_all(post("two").as_bytes()).await.unwrap();
    assert_eq!(next_answer(&mut socket, &mut pending).await.json()["seq"].as_u64(), Some(2));
    // Pipelined: three publishes and a lookup in one write, answered in the order sent.
    let mut batch = String::new();
    for body in ["three", "four", "five"] {
        batch.push_str(&post(body));
    }
    batch.push_str("GET /subscriptions/missing HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n");
    socket.write_all(batch.as_bytes()).await.unwrap();
    for seq in 3..=5 {
        let answer = next_answer(&mut socket, &mut pending).await;
        assert_eq!((answer.status, answer.json()["seq"].as_u64()), (200, Some(seq)), "{answer:?}");
    }
    let missing = next_answer(&mut socket, &mut pending).await;
    assert_eq!((missing.status, missing.json()["code"].as_u64()), (404, Some(2004)), "{missing:?}");
    assert_eq!(missing.header("connection"), None, "a refusal with no body keeps the connection");
    // Every request needs the token, not only the first.
    socket.write_all(b"GET /subscriptions/missing HTTP/1.1\r\n\r\n").await.unwrap();
    let refused = next_answer(&mut socket, &mut pending).await;
    assert_eq!((refused.status, refused.header("connection")), (401, Some("close")), "{refused:?}");
    assert!(closed_by_server(&mut socket).await.0, "a request without the token ends the connection");

    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    socket.write_all(post("six").as_bytes()).await.unwrap();
    assert_eq!(next_answer(&mut socket, &mut pending).await.json()["seq"].as_u64(), Some(6));
    let last = post("seven").replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
    socket.write_all(last.as_bytes()).await.unwrap();
    let (closed, rest) = closed_by_server(&mut socket).await;
    assert!(closed, "Connection: close is honoured");
    let answer = parse_answer(&rest);
    assert_eq!((answer.json()["seq"].as_u64(), answer.header("connection")), (Some(7), Some("close")));
    assert_eq!(server.engine.topic_info(&name("kept")).unwrap().messages, 7);
}

/// A persistent connection keeps the limits: a body over the message limit is refused with 413 before
/// it is read, and the connection closes (its unread body cannot be taken for the next request); a
/// malformed second request gets 400 and a close; an idle connection is closed after `idle_timeout`.
#[tokio::test]
async fn a_keep_alive_connection_keeps_the_limits_and_closes_when_idle() {
    let limits = ServeLimits { max_message_bytes: 100, ..ServeLimits::default() };
    let config = ServeConfig { limits, idle_timeout: Duration::from_millis(300), ..ServeConfig::default() };
    let server = start(config).await;
    let ok = "POST /topics/lim HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
    let mut pending = Vec::new();
    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    socket.write_all(ok.as_bytes()).await.unwrap();
    assert_eq!(next_answer(&mut socket, &mut pending).await.status, 200);
    let big = format!("POST /topics/lim HTTP/1.1\r\nContent-Length: 101\r\n\r\n{}", "x".repeat(101));
    socket.write_all(big.as_bytes()).await.unwrap();
    let (closed, rest) = closed_by_server(&mut socket).await;
    let answer = parse_answer(&rest);
    assert_eq!((answer.status, answer.json()["code"].as_u64()), (413, Some(1007)), "{answer:?}");
    assert!(closed && answer.header("connection") == Some("close"), "{answer:?}");

    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    socket.write_all(ok.as_bytes()).await.unwrap();
    assert_eq!(next_answer(&mut socket, &mut pending).await.status, 200);
    socket.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
    let (closed, rest) = closed_by_server(&mut socket).await;
    let answer = parse_answer(&rest);
    assert_eq!((closed, answer.status, answer.json()["code"].as_u64()), (true, 400, Some(1000)));

    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    socket.write_all(ok.as_bytes()).await.unwrap();
    assert_eq!(next_answer(&mut socket, &mut pending).await.status, 200);
    let (closed, rest) = closed_by_server(&mut socket).await;
    assert!(closed && rest.is_empty(), "an idle connection is closed: {rest:?}");
    assert_eq!(server.engine.topic_info(&name("lim")).unwrap().messages, 3);
}

/// `curl URL URL` sends both requests on one connection.
#[tokio::test]
async fn curl_reuses_one_connection_for_several_requests() {
    let server = start(ServeConfig::default()).await;
    let url = format!("{}/topics/reuse", base(&server));
    let (a, b) = (format!("{url}?key=a"), format!("{url}?key=b"));
    let args = ["-sv", "--max-time", "20", "--data-binary", "x", a.as_str(), b.as_str()].map(String::from);
    let run = tokio::task::spawn_blocking(move || Command::new("curl").args(args).output()).await.unwrap();
    let output = match run {
        Ok(output) => output,
        Err(e) => {
            assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "curl cannot run: {e}");
            eprintln!("skipping: curl cannot run: {e}");
            return;
        }
    };
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(err.contains("Re-using existing connection"), "curl -v said:\n{err}");
    assert_eq!(out.matches("\"seq\"").count(), 2, "two receipts: {out}");
    assert_eq!(server.engine.topic_info(&name("reuse")).unwrap().messages, 2);
}

/// The page of the browser test: it opens an `EventSource` on the topic `live` of the server that
/// served it (same origin, so no CORS header is needed) and notes every event's id and seq.
const EVENTS_PAGE: &str = r#"<!doctype html><title>events</title><pre id="log"></pre><script>
const token = new URLSearchParams(location.search).get("token");
window.seen = [];
window.opened = 0;
const source = new EventSource("/topics/live/events?from=all&token=" + encodeURIComponent(token));
source.onopen = () => { window.opened += 1; };
source.onmessage = (e) => {
  const m = JSON.parse(e.data);
  window.seen.push([e.lastEventId, m.seq]);
  document.getElementById("log").textContent += e.lastEventId + " " + m.seq + "\n";
};
</script>"#;

/// A TCP proxy in front of `target` that keeps what clients send on each connection and can cut every
/// open connection at once (as a network failure would), for a browser's reconnect.
struct Proxy {
    port: u16,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sent_in, open_in) = (sent.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                let index = {
                    let mut sent = sent_in.lock().unwrap();
                    sent.push(Vec::new());
                    sent.len() - 1
                };
                let sent = sent_in.clone();
                let forward = tokio::spawn(async move {
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = from_client.read(&mut buf).await {
                            if n == 0 || to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                        }
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        () = up => {}
                        _ = down => {}
                    }
                });
                open_in.lock().unwrap().push(forward);
            }
        });
        Proxy { port, sent, open }
    }

    /// Closes every connection open now, both ways; when it returns, nothing more passes on them.
    async fn cut(&self) {
        let open: Vec<_> = self.open.lock().unwrap().drain(..).collect();
        for forward in open {
            forward.abort();
            let _ = forward.await;
        }
    }

    /// What clients sent, all connections together.
    fn sent(&self) -> String {
        let sent = self.sent.lock().unwrap();
        sent.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\n--\n")
    }
}

/// A real browser's `EventSource` reads `GET /topics/NAME/events`: headless chromium (driven through
/// chromedriver, as the shared demo's page test) opens a page the server serves, sees the messages
/// published before and after it connected, and when its connection is cut (by a proxy in between)
/// reconnects on its own with `Last-Event-ID` and resumes exactly after the last event it had: every
/// message once, in order, including those published while it was away.
#[test]
fn a_browser_s_event_source_reads_events_and_resumes_with_last_event_id_after_a_cut() {
    let Some((_driver, driver_port)) = crate::share::chromedriver() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = ServeConfig { token: Some("tok".into()), page: Some(EVENTS_PAGE), ..ServeConfig::default() };
    let server = rt.block_on(start(config));
    let proxy = rt.block_on(Proxy::start(addr(&server)));
    let publish = |body: &str| {
        let answer = rt.block_on(request(
            &server,
            "POST /topics/live HTTP/1.1\r\nAuthorization: Bearer tok",
            body.as_bytes(),
        ));
        assert_eq!(answer.status, 200, "{answer:?}");
    };
    publish("before the page");
    let session = crate::share::Session::open(driver_port);
    let url = format!("http://127.0.0.1:{}/?token=tok", proxy.port);
    crate::share::webdriver(
        driver_port,
        "POST",
        &format!("{}/url", session.1),
        &serde_json::json!({ "url": url }),
    );
    let state = || {
        let got =
            session.run("return [window.opened || 0, window.seen || [], document.documentElement.outerHTML]");
        let seen = got[1].as_array().cloned().unwrap_or_default();
        let seqs: Vec<u64> = seen.iter().map(|e| e[1].as_u64().unwrap()).collect();
        let ids: Vec<String> = seen.iter().map(|e| e[0].as_str().unwrap().to_string()).collect();
        (got[0].as_u64().unwrap_or(0), seqs, ids, got[2].as_str().unwrap_or_default().to_string())
    };
    let wait_for = |what: &str, done: &dyn Fn(u64, &[u64]) -> bool| {
        let started = std::time::Instant::now();
        loop {
            let (opened, seqs, ids, page) = state();
            if done(opened, &seqs) {
                return (opened, seqs, ids);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what}: opened {opened}, seen {seqs:?}, page:\n{page}\nsent:\n{}",
                proxy.sent()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the page connects", &|opened, seqs| opened >= 1 && seqs.len() == 1);
    publish("two");
    publish("three");
    let (_, seqs, ids) = wait_for("the live events arrive", &|_, seqs| seqs.len() == 3);
    assert_eq!((seqs, ids), (vec![1, 2, 3], vec!["1".to_string(), "2".into(), "3".into()]));
    rt.block_on(proxy.cut());
    publish("four, while the page is away");
    publish("five");
    let (opened, seqs, _) = wait_for("the page reconnects and resumes", &|_, seqs| seqs.len() >= 5);
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "every message once, in order");
    assert_eq!(opened, 2, "one reconnect");
    let sent = proxy.sent().to_ascii_lowercase();
    assert!(sent.contains("\r\nlast-event-id: 3\r\n"), "the reconnect names the last event:\n{sent}");
    drop(session);
    drop(server);
}

/// HTTP/1.0 keeps a connection only when it asks with `Connection: keep-alive`, and is then told so in
/// every answer (an HTTP/1.0 client takes an answer without it as the last one); HTTP/1.0 without it,
/// or with `close` as well, gets one answer and a close.
#[tokio::test]
async fn http_1_0_keeps_the_connection_only_when_it_asks_for_keep_alive() {
    let server = start(ServeConfig::default()).await;
    let post = |body: &str, connection: &str| {
        format!("POST /topics/old HTTP/1.0\r\n{connection}Content-Length: {}\r\n\r\n{body}", body.len())
    };
    let mut pending = Vec::new();
    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    for (seq, body) in [(1, "one"), (2, "two")] {
        socket.write_all(post(body, "Connection: Keep-Alive\r\n").as_bytes()).await.unwrap();
        let answer = next_answer(&mut socket, &mut pending).await;
        assert_eq!((answer.status, answer.json()["seq"].as_u64()), (200, Some(seq)), "{answer:?}");
        assert_eq!(answer.header("connection"), Some("keep-alive"), "{answer:?}");
    }
    let lookup = "GET /subscriptions/missing HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    socket.write_all(lookup.as_bytes()).await.unwrap();
    let missing = next_answer(&mut socket, &mut pending).await;
    assert_eq!((missing.status, missing.header("connection")), (404, Some("keep-alive")), "{missing:?}");
    // Without keep-alive the request is the connection's last.
    socket.write_all(post("three", "").as_bytes()).await.unwrap();
    let (closed, rest) = closed_by_server(&mut socket).await;
    let answer = parse_answer(&rest);
    assert!(closed, "closed after an HTTP/1.0 request without keep-alive");
    assert_eq!((answer.json()["seq"].as_u64(), answer.header("connection")), (Some(3), Some("close")));
    for connection in ["", "Connection: keep-alive, close\r\n"] {
        let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
        socket.write_all(post("once", connection).as_bytes()).await.unwrap();
        let (closed, rest) = closed_by_server(&mut socket).await;
        assert!(closed, "{connection:?}");
        assert_eq!(parse_answer(&rest).header("connection"), Some("close"), "{connection:?}");
    }
    assert_eq!(server.engine.topic_info(&name("old")).unwrap().messages, 5);
}

/// `serve --http-idle-timeout` sets how long a kept connection may wait for its next request; a value
/// that is no duration, or zero, is refused.
#[test]
fn serve_http_idle_timeout_closes_a_kept_connection_after_that_long() {
    use std::io::{BufRead, BufReader, Read, Write};
    let home = crate::support::Home::new("http-idle");
    for bad in ["soon", "0s"] {
        let (code, _, err) = home.run(&["serve", "--listen", "127.0.0.1:0", "--http-idle-timeout", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(&format!("\"{bad}\"")), "the bad value is quoted: {err}");
    }
    let child = home
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--http-idle-timeout", "300ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let mut ws = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut ws).unwrap();
    let addr = ws.trim().trim_start_matches("ws://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let asked = std::time::Instant::now();
    socket.write_all(b"POST /topics/idle HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").unwrap();
    // The answer, then the close: read to the end, which a server keeping the default 30 s would
    // not reach within the 10 s read timeout.
    let mut all = Vec::new();
    socket.read_to_end(&mut all).expect("the server closed the idle connection within 10 s");
    let answer = parse_answer(&all);
    assert_eq!((answer.status, answer.header("connection")), (200, None), "{answer:?}");
    assert!(asked.elapsed() >= Duration::from_millis(300), "closed after the idle time, not at once");
}
