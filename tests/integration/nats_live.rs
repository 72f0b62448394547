//! The NATS backend against the real nats-server on 127.0.0.1:4222 (JetStream on), with the
//! independent Python client `nats-py` on the other side, and against nats-servers the restart and
//! auth tests start themselves. Skips (with the reason printed) when the server, the binary or nats-py
//! is missing; fails instead when PUBSUB_REQUIRE_BROKERS=1.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pubsub::broker::{Settle, url};
use pubsub::engine::{FetchOptions, Name, PublishRequest, StartPosition, SubscriptionConfig, TopicConfig};

use crate::support::{Home, outcome};

const URL: &str = "nats://127.0.0.1:4222";

fn skip(reason: &str) -> bool {
    assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "live NATS tests required: {reason}");
    eprintln!("skipping live NATS test: {reason}");
    false
}

/// Whether nats-server answers on 4222; panics when it must.
fn nats_here() -> bool {
    let addr = "127.0.0.1:4222".parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        || skip("nats-server is not running on 127.0.0.1:4222")
}

/// Whether the Python client is importable too.
fn nats_py_here() -> bool {
    nats_here()
        && (Command::new("python3").args(["-c", "import nats"]).output().is_ok_and(|o| o.status.success())
            || skip("the Python package nats-py is not installed (pip install nats-py)"))
}

/// A name unique to this test run (stream names take no dots).
fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id())
}

/// Deletes a NATS stream when dropped, so a failing test leaves nothing on the shared server.
struct DeleteOnDrop(String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let home = Home::new("nats-cleanup");
        let _ = outcome(&mut home.at(URL, &["topic", "delete", &self.0, "-y"]));
    }
}

/// Runs a nats-py script (asyncio; `nc` is connected to `url`) and returns what it printed.
fn python(url: &str, body: &str) -> String {
    let script = format!(
        "import asyncio, json, nats\nasync def main():\n    nc = await nats.connect({url:?})\n    js = nc.jetstream()\n{}\n    await nc.drain()\nasyncio.run(main())\n",
        body.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "nats-py script failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A nats-py script started in the background (for subscribers that wait).
fn python_spawn(url: &str, body: &str) -> Child {
    let script = format!(
        "import asyncio, json, nats, sys\nasync def main():\n    nc = await nats.connect({url:?})\n    js = nc.jetstream()\n{}\n    await nc.drain()\nasyncio.run(main())\n",
        body.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

#[test]
fn nats_py_and_pubsub_exchange_core_messages_with_headers() {
    if !nats_py_here() {
        return;
    }
    let home = Home::new("nats-core");
    let subject = unique("core.");
    // nats-py listens; pubsub publishes with a header.
    let listener = python_spawn(
        URL,
        &format!(
            "sub = await nc.subscribe({subject:?} + '.>')\nprint('ready', flush=True)\nmsg = await sub.next_msg(timeout=15)\nprint(msg.subject, msg.data.decode(), (msg.headers or {{}}).get('region'), flush=True)"
        ),
    );
    let mut listener = listener;
    let mut ready = String::new();
    {
        use std::io::BufRead;
        let stdout = listener.stdout.as_mut().unwrap();
        std::io::BufReader::new(stdout).read_line(&mut ready).unwrap();
    }
    assert_eq!(ready.trim(), "ready");
    let (code, _, err) =
        outcome(&mut home.at(URL, &["pub", &format!("{subject}.eu"), "hello", "-H", "region=eu"]));
    assert_eq!(code, 0, "{err}");
    let out = listener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{subject}.eu hello eu"));

    // pubsub listens; nats-py publishes with headers until pubsub has one.
    let sub = home
        .at(URL, &["sub", &format!("{subject}.*"), "-n", "1", "--timeout", "15s", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let publisher = python_spawn(
        URL,
        &format!(
            "for i in range(100):\n    await nc.publish({subject:?} + '.us', b'from-python', headers={{'trace': 't-1'}})\n    await nc.flush()\n    await asyncio.sleep(0.1)"
        ),
    );
    let out = sub.wait_with_output().unwrap();
    let mut publisher = publisher;
    let _ = publisher.kill();
    let _ = publisher.wait();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["subject"], format!("{subject}.us"));
    assert_eq!(v["payload"], "from-python");
    assert_eq!(v["headers"]["trace"], "t-1", "{line}");
}

#[test]
fn nats_py_and_pubsub_share_a_jetstream_stream() {
    if !nats_py_here() {
        return;
    }
    let home = Home::new("nats-js");
    let stream = unique("PYJS");
    let subject = stream.to_lowercase();
    // nats-py makes the stream and stores three messages, one with a header and a msg id.
    let printed = python(
        URL,
        &format!(
            "await js.add_stream(name={stream:?}, subjects=[{subject:?} + '.>'])\nfor i in range(3):\n    ack = await js.publish({subject:?} + '.in', f'py-{{i}}'.encode(), headers={{'Nats-Msg-Id': f'id-{{i}}', 'origin': 'python'}})\n    print(ack.seq)"
        ),
    );
    assert_eq!(lines(&printed), ["1", "2", "3"]);
    // pubsub sees the stream as a topic and reads its history with seqs, headers and msg ids.
    let (code, out, err) = outcome(&mut home.at(URL, &["topics"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with(&stream) && l.contains(" 3 ")), "{out}");
    let (code, out, err) = outcome(
        &mut home.at(URL, &["sub", &format!("{subject}.in"), "--from", "start", "--exit-at-end", "--json"]),
    );
    assert_eq!(code, 0, "{err}");
    let got: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 3, "{out}");
    assert_eq!(got[2]["seq"], 3);
    assert_eq!(got[2]["payload"], "py-2");
    assert_eq!(got[2]["headers"]["origin"], "python");
    assert_eq!(got[2]["msg_id"], "id-2", "{out}");
    // pubsub stores two more (one repeating a msg id: JetStream keeps it once); nats-py reads all four.
    let (code, _, err) = outcome(&mut home.at(URL, &["pub", &format!("{subject}.in"), "from-pubsub", "-v"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("seq 4"), "{err}");
    let (code, _, err) =
        outcome(&mut home.at(URL, &["pub", &format!("{subject}.in"), "again", "--msg-id", "id-0", "-v"]));
    assert_eq!(code, 0, "{err}");
    let printed = python(
        URL,
        &format!(
            "psub = await js.pull_subscribe({subject:?} + '.>', durable='pyreader', stream={stream:?})\nmsgs = await psub.fetch(10, timeout=3)\nfor m in msgs:\n    await m.ack_sync()\n    print(m.metadata.sequence.stream, m.data.decode())"
        ),
    );
    assert_eq!(lines(&printed), ["1 py-0", "2 py-1", "3 py-2", "4 from-pubsub"]);
    // The Python consumer's ack state, as pubsub reports it.
    let (code, out, err) = outcome(&mut home.at(URL, &["sub-info", "pyreader"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("delivered 4, ack floor 4"), "{out}");
    let (code, _, err) = outcome(&mut home.at(URL, &["topic", "delete", &stream, "-y"]));
    assert_eq!(code, 0, "{err}");
}

/// Starts `n` `pubsub sub` processes with these arguments.
fn subscribers(home: &Home, n: usize, args: &[&str]) -> Vec<Child> {
    (0..n)
        .map(|_| home.at(URL, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect()
}

/// Long enough for started subscribers to have made their subscriptions.
fn settle_in() {
    std::thread::sleep(Duration::from_millis(1500));
}

fn outputs(children: Vec<Child>) -> Vec<Vec<String>> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            lines(&String::from_utf8_lossy(&out.stdout))
        })
        .collect()
}

#[test]
fn queue_group_members_share_messages_while_a_plain_subscriber_gets_all() {
    if !nats_here() {
        return;
    }
    let home = Home::new("nats-queue");
    let subject = unique("queue.");
    let pattern = format!("{subject}.>");
    let common = ["--format", "{{payload}}", "--until-idle", "4s", "--timeout", "30s"];
    let mut group_args = vec!["sub", "-s", "workers", &pattern];
    group_args.extend(common);
    let mut all_args = vec!["sub", &pattern];
    all_args.extend(common);
    let group = subscribers(&home, 2, &group_args);
    let tap = subscribers(&home, 1, &all_args);
    settle_in();
    let (code, _, err) =
        outcome(&mut home.at(URL, &["pub", &format!("{subject}.jobs"), "-n", "200", "job-{{seq}}"]));
    assert_eq!(code, 0, "{err}");
    let members = outputs(group);
    let union: BTreeSet<&String> = members.iter().flatten().collect();
    let total: usize = members.iter().map(Vec::len).sum();
    assert_eq!(total, 200, "each message goes to one member");
    assert_eq!(union.len(), 200, "no message lost or repeated");
    assert!(
        members.iter().all(|m| !m.is_empty()),
        "both members got work: {:?}",
        members.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let everything = outputs(tap);
    assert_eq!(everything[0].len(), 200, "a plain subscriber gets a copy of each");
}

#[test]
fn jetstream_competing_consumers_get_every_message_once() {
    if !nats_here() {
        return;
    }
    let home = Home::new("nats-compete");
    let stream = unique("WORK");
    let subject = format!("{}.jobs", stream.to_lowercase());
    let (code, _, err) = outcome(
        &mut home
            .at(URL, &["topic", "create", &stream, "--subject", &format!("{}.>", stream.to_lowercase())]),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        outcome(&mut home.at(URL, &["subs", "create", "crew", "--topic", &subject, "--from", "start"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = outcome(&mut home.at(URL, &["pub", &subject, "-n", "300", "job-{{seq}}"]));
    assert_eq!(code, 0, "{err}");
    let args =
        ["sub", "-s", "crew", &subject, "--format", "{{payload}}", "--until-idle", "4s", "--timeout", "30s"];
    let crew = subscribers(&home, 2, &args);
    settle_in();
    let crew = outputs(crew);
    let union: BTreeSet<&String> = crew.iter().flatten().collect();
    assert_eq!(union.len(), 300, "every message reached a member");
    assert_eq!(crew.iter().map(Vec::len).sum::<usize>(), 300, "and only one, once");
    let (code, out, err) = outcome(&mut home.at(URL, &["sub-info", "crew"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("delivered 300, ack floor 300"), "all acked: {out}");
    let (code, _, err) = outcome(&mut home.at(URL, &["topic", "delete", &stream, "-y"]));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn nak_redelivers_with_the_attempt_count_and_max_deliver_stops_with_an_advisory() {
    if !nats_here() {
        return;
    }
    let broker = url::connect(URL).await.unwrap();
    let stream = unique("NAK");
    let subject = format!("{}.task", stream.to_lowercase());
    let mut topic = TopicConfig::new(Name::new(&stream).unwrap());
    topic.subjects = vec![pubsub::engine::Pattern::parse(&format!("{}.>", stream.to_lowercase())).unwrap()];
    broker.create_topic(topic).await.unwrap();
    let sub = Name::new(&format!("{stream}c")).unwrap();
    let mut config = SubscriptionConfig::new(sub.clone(), Name::new(&subject).unwrap());
    config.start = StartPosition::All;
    config.max_deliveries = 3;
    broker.create_subscription(config).await.unwrap();
    let mut events = broker.connection_events();
    broker.publish(PublishRequest::new(Name::new(&subject).unwrap(), "poison")).await.unwrap();
    let wait = FetchOptions { max_msgs: 1, wait: Some(Duration::from_secs(3)), ..FetchOptions::default() };
    let now = FetchOptions { max_msgs: 1, wait: Some(Duration::from_millis(300)), ..FetchOptions::default() };

    let first = broker.fetch(&sub, "c1", wait).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, Some(1));
    assert_eq!(first[0].message.seq, 1);
    broker.settle(first[0].token.as_ref().unwrap(), Settle::Nack(None)).await.unwrap();
    let second = broker.fetch(&sub, "c1", wait).await.unwrap();
    assert_eq!(second[0].attempt, Some(2), "a nak redelivers at once");
    // A nak with a delay holds it back for that long.
    broker
        .settle(second[0].token.as_ref().unwrap(), Settle::Nack(Some(Duration::from_secs(2))))
        .await
        .unwrap();
    assert!(broker.fetch(&sub, "c1", now).await.unwrap().is_empty(), "held back by the delay");
    let third =
        broker.fetch(&sub, "c1", FetchOptions { wait: Some(Duration::from_secs(5)), ..wait }).await.unwrap();
    assert_eq!(third[0].attempt, Some(3));
    let info = broker.subscription_info(&sub).await.unwrap();
    assert_eq!((info.in_flight, info.redelivered, info.max_deliveries), (1, 1, 3));
    broker.settle(third[0].token.as_ref().unwrap(), Settle::Nack(None)).await.unwrap();
    // The third failure was the last: no fourth delivery, and the advisory says so.
    assert!(
        broker
            .fetch(&sub, "c1", FetchOptions { wait: Some(Duration::from_secs(1)), ..wait })
            .await
            .unwrap()
            .is_empty()
    );
    let info = broker.subscription_info(&sub).await.unwrap();
    assert_eq!(info.in_flight, 0, "{info:?}");
    // The advisory reaches `sub`, which prints it.
    drop(events.try_recv());
    let home = Home::new("nats-nak");
    broker.publish(PublishRequest::new(Name::new(&subject).unwrap(), "poison-2")).await.unwrap();
    let (code, _, err) = outcome(&mut home.at(
        URL,
        &["sub", "-s", sub.as_str(), &subject, "--exec", "exit 1", "--until-idle", "3s", "--timeout", "20s"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reached max deliver (3 deliveries)"), "{err}");
    assert_eq!(err.matches("the command failed").count(), 3, "{err}");
    broker.delete_topic(&Name::new(&stream).unwrap()).await.unwrap();
}

#[tokio::test]
async fn browse_seek_and_lag_follow_the_stream() {
    if !nats_here() {
        return;
    }
    let broker = url::connect(URL).await.unwrap();
    let stream = unique("SEEK");
    let subject = format!("{}.e", stream.to_lowercase());
    let mut topic = TopicConfig::new(Name::new(&stream).unwrap());
    topic.subjects = vec![pubsub::engine::Pattern::parse(&subject).unwrap()];
    broker.create_topic(topic).await.unwrap();
    let batch: Vec<PublishRequest> =
        (1..=10).map(|i| PublishRequest::new(Name::new(&subject).unwrap(), format!("m{i}"))).collect();
    let receipts = broker.publish_batch(batch).await.unwrap();
    assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<u64>>());
    let name = Name::new(&stream).unwrap();
    let last = broker.browse(&name, pubsub::engine::BrowseFrom::Last(3), 100).await.unwrap();
    assert_eq!(last.iter().map(|m| m.seq).collect::<Vec<_>>(), [8, 9, 10]);
    let from = broker.browse(&name, pubsub::engine::BrowseFrom::Seq(4), 2).await.unwrap();
    assert_eq!(from.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), [&b"m4"[..], b"m5"]);

    let sub = Name::new(&format!("{stream}c")).unwrap();
    let mut config = SubscriptionConfig::new(sub.clone(), name.clone());
    config.start = StartPosition::All;
    broker.create_subscription(config).await.unwrap();
    let info = broker.subscription_info(&sub).await.unwrap();
    assert_eq!((info.pending, info.backlog, info.head_seq), (10, 10, 10));
    let opts = FetchOptions { max_msgs: 4, wait: Some(Duration::from_secs(2)), ..FetchOptions::default() };
    for d in broker.fetch(&sub, "c", opts).await.unwrap() {
        broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    }
    let info = broker.subscription_info(&sub).await.unwrap();
    assert_eq!((info.pending, info.ack_floor, info.delivered_seq), (6, 4, 4));
    // Seek back to 2: the consumer is made again and delivers 2 next.
    let next = broker.seek(&sub, pubsub::engine::SeekTarget::Seq { partition: 0, seq: 2 }).await.unwrap();
    assert_eq!(next, 2);
    let again = broker.fetch(&sub, "c", FetchOptions { max_msgs: 1, ..opts }).await.unwrap();
    assert_eq!(again[0].message.seq, 2);
    let next = broker.seek(&sub, pubsub::engine::SeekTarget::End).await.unwrap();
    assert_eq!(next, 11);
    assert_eq!(broker.subscription_info(&sub).await.unwrap().pending, 0);
    broker.delete_topic(&name).await.unwrap();
}

#[test]
fn request_reply_answers_and_no_responders_exits_6() {
    if !nats_py_here() {
        return;
    }
    let home = Home::new("nats-request");
    let subject = unique("svc.");
    let mut responder = python_spawn(
        URL,
        &format!(
            "async def answer(msg):\n    await msg.respond(b'pong:' + msg.data)\nawait nc.subscribe({subject:?}, cb=answer)\nprint('ready', flush=True)\nawait asyncio.sleep(15)"
        ),
    );
    {
        use std::io::BufRead;
        let mut ready = String::new();
        std::io::BufReader::new(responder.stdout.as_mut().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
    }
    let (code, out, err) = outcome(&mut home.at(URL, &["request", &subject, "ping", "--format", "raw"]));
    // A body piped in is the request, as with `pub`.
    let (piped_code, piped, piped_err) =
        home.sh(&format!("printf piped | pubsub -b {URL} request {subject} --format raw"));
    let _ = responder.kill();
    let _ = responder.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "pong:ping");
    assert_eq!((piped_code, piped.trim()), (0, "pong:piped"), "{piped_err}");
    let (code, _, err) = outcome(&mut home.at(URL, &["request", &format!("{subject}.nobody"), "ping"]));
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("no responders"), "{err}");
}

/// A nats-server of the test's own on a free port, with JetStream in a temp directory.
struct OwnNats {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl OwnNats {
    fn start(tag: &str, extra: &[&str]) -> Option<OwnNats> {
        if Command::new("nats-server").arg("--version").output().is_err() {
            skip("the nats-server binary is not installed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("pubsub-nats-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut own =
            OwnNats { child: None, port, dir, extra: extra.iter().map(|s| s.to_string()).collect() };
        own.run();
        Some(own)
    }

    fn run(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        crate::support::wait_until_listening(self.port, "nats-server");
    }

    /// Kills it with SIGKILL: no goodbye to clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_jetstream_subscriber_resumes_after_the_server_restarts_without_loss() {
    let Some(mut server) = OwnNats::start("restart", &[]) else {
        return;
    };
    let home = Home::new("nats-restart");
    let url = server.url();
    let (code, _, err) = outcome(&mut home.at(&url, &["topic", "create", "EVENTS", "--subject", "events.>"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        outcome(&mut home.at(&url, &["subs", "create", "keeper", "--topic", "EVENTS", "--from", "start"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = outcome(&mut home.at(&url, &["pub", "events.a", "-n", "50", "before-{{seq}}"]));
    assert_eq!(code, 0, "{err}");
    let sub = home
        .at(
            &url,
            &["sub", "-s", "keeper", "EVENTS", "--format", "{{payload}}", "-n", "100", "--timeout", "60s"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    server.run();
    // Published after the restart, by a fresh process.
    let started = Instant::now();
    loop {
        let (code, _, err) = outcome(&mut home.at(&url, &["pub", "events.b", "-n", "50", "after-{{seq}}"]));
        if code == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "JetStream never came back: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = sub.wait_with_output().unwrap();
    let got = lines(&String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 100, "all 100 arrived: {got:?}\n{stderr}");
    assert!(got.contains(&"before-1".to_string()) && got.contains(&"after-50".to_string()));
    assert!(
        stderr.contains("disconnected") && stderr.contains("reconnected"),
        "the outage was told: {stderr}"
    );
    let (code, out, err) = outcome(&mut home.at(&url, &["sub-info", "keeper"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ack floor 100"), "{out}");
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    if !nats_here() {
        return;
    }
    let home = Home::new("nats-bad");
    let (code, _, err) = outcome(&mut home.at("nats://127.0.0.1:1", &["pub", "x", "y"]));
    assert_eq!(code, 3, "unreachable: {err}");
    let (code, _, err) = outcome(&mut home.at(URL, &["topic", "info", "NOSUCHSTREAM"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no JetStream stream is named \"NOSUCHSTREAM\""), "{err}");
    // A pattern NATS cannot express is a bad argument: exit 2 (issue 19).
    let (code, _, err) = outcome(&mut home.at(URL, &["sub", "a.#.b", "--timeout", "1s"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("use * for one token"), "{err}");
    let (code, _, err) = outcome(&mut home.at(URL, &["pub", "bad subject", "x"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = outcome(&mut home.at(URL, &["topic", "create", "orders.eu"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--subject orders.eu"), "{err}");
    let (code, _, err) = outcome(&mut home.at("nats://127.0.0.1:4222?mode=fast", &["topics"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn refused_credentials_exit_5_and_good_ones_work() {
    let Some(server) = OwnNats::start("auth", &["--user", "tester", "--pass", "secret"]) else {
        return;
    };
    let home = Home::new("nats-auth");
    let port = server.port;
    let (code, _, err) =
        outcome(&mut home.at(&format!("nats://tester:wrong@127.0.0.1:{port}"), &["pub", "x", "y"]));
    assert_eq!(code, 5, "{err}");
    assert!(!err.contains("wrong"), "the password is not echoed: {err}");
    let (code, _, err) = outcome(&mut home.at(&format!("nats://127.0.0.1:{port}"), &["pub", "x", "y"]));
    assert_eq!(code, 5, "no credentials: {err}");
    let (code, _, err) =
        outcome(&mut home.at(&format!("nats://tester:secret@127.0.0.1:{port}"), &["pub", "x", "y"]));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_slow_core_subscriber_is_told_what_it_lost() {
    if !nats_here() {
        return;
    }
    // A listener that holds at most 16 messages and does not read while 500 arrive.
    let broker = url::connect(&format!("{URL}?pending=16")).await.unwrap();
    let subject = unique("slow.");
    let pattern = pubsub::engine::Pattern::parse(&subject).unwrap();
    let mut stream = broker.subscribe(pubsub::broker::SubscribeRequest::live(vec![pattern])).await.unwrap();
    let batch: Vec<PublishRequest> =
        (0..500).map(|i| PublishRequest::new(Name::new(&subject).unwrap(), format!("{i}"))).collect();
    broker.publish_batch(batch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut delivered, mut skipped) = (0u64, 0u64);
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        match item.unwrap() {
            pubsub::broker::StreamItem::Delivery(_) => delivered += 1,
            pubsub::broker::StreamItem::Lagged { skipped: n } => skipped += n,
            other => panic!("a core subscription has no partitions to assign: {other:?}"),
        }
    }
    assert!(skipped > 0, "drops are reported");
    assert_eq!(delivered + skipped, 500, "every message is either delivered or counted as dropped");
}

#[test]
fn tls_checks_the_server_certificate_and_accepts_a_private_ca() {
    if Command::new("openssl").arg("version").output().is_err() {
        skip("openssl is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("pubsub-nats-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = crate::support::test_certificates(&dir);
    let Some(server) = OwnNats::start("tls", &["--tls", "--tlscert", &certs.cert, "--tlskey", &certs.key])
    else {
        return;
    };
    let home = Home::new("nats-tls");
    let port = server.port;
    let (unknown, _, unknown_err) =
        outcome(&mut home.at(&format!("tls://127.0.0.1:{port}"), &["pub", "secure.t", "x"]));
    let trusted = format!("tls://127.0.0.1:{port}?ca={}", certs.ca);
    let (known, _, known_err) = outcome(&mut home.at(&trusted, &["pub", "secure.t", "x"]));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(unknown, 3, "a certificate from an unknown CA was accepted: {unknown_err}");
    assert_eq!(known, 0, "{known_err}");
}

#[test]
fn count_takes_exactly_n_and_manual_acks_settle_from_another_process() {
    if !nats_here() {
        return;
    }
    let home = Home::new("nats-count");
    let stream = unique("COUNT");
    // Names of its own, and the stream removed even when an assertion fails: the server is shared, and
    // a leftover consumer of the same name made `sub-info` ambiguous for every later run.
    let _cleanup = DeleteOnDrop(stream.clone());
    let counter = unique("counter");
    let fresh_name = unique("fresh");
    let subject = format!("{}.a", stream.to_lowercase());
    let capture = format!("{}.>", stream.to_lowercase());
    let ok = |args: &[&str]| {
        let (code, out, err) = outcome(&mut home.at(URL, args));
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    ok(&["topic", "create", &stream, "--subject", &capture]);
    ok(&["subs", "create", &counter, "--topic", &stream, "--from", "start"]);
    ok(&["pub", &subject, "-n", "6", "m{{seq}}"]);
    let take = |n: &str| ok(&["sub", "-s", &counter, &stream, "--count", n, "--format", "{{seq}}"]);
    assert_eq!(lines(&take("2")), ["1", "2"]);
    assert_eq!(lines(&take("2")), ["3", "4"], "nothing beyond the count was held back in flight");
    let info = ok(&["sub-info", &counter]);
    assert!(info.contains("in flight 0"), "{info}");
    // --ack manual leaves #5 in flight; `pubsub ack` from another process settles it.
    let held = ok(&[
        "sub",
        "-s",
        &counter,
        &stream,
        "--count",
        "1",
        "--ack",
        "manual",
        "--format",
        "{{seq}} {{lease}}",
    ]);
    let (seq, lease) = held.trim().split_once(' ').unwrap();
    assert_eq!(seq, "5");
    assert!(ok(&["sub-info", &counter]).contains("in flight 1"));
    ok(&["ack", &counter, seq, lease]);
    let info = ok(&["sub-info", &counter]);
    assert!(info.contains("in flight 0") && info.contains("ack floor 5"), "{info}");
    assert_eq!(lines(&take("1")), ["6"]);
    // The subject of an existing consumer is checked, not ignored.
    let (code, _, err) =
        outcome(&mut home.at(URL, &["sub", "-s", &counter, &subject, "--count", "1", "--timeout", "2s"]));
    assert_eq!(code, 1);
    assert!(err.contains("reads everything of stream"), "{err}");
    // A consumer made by `sub -s --count 1` keeps the default limit, not the reader's prefetch.
    ok(&["sub", "-s", &fresh_name, &stream, "--from", "start", "--count", "1"]);
    let fresh: serde_json::Value = serde_json::from_str(&ok(&["sub-info", &fresh_name, "--json"])).unwrap();
    assert_eq!(fresh["max_in_flight"], 1000, "{fresh}");
    // --exit-at-end on one subject of a stream stops at that subject's newest message.
    ok(&["pub", &format!("{}.b", stream.to_lowercase()), "other"]);
    let out = ok(&["sub", &subject, "--from", "start", "--exit-at-end", "--format", "{{seq}}"]);
    assert_eq!(lines(&out).len(), 6, "{out}");
    ok(&["topic", "delete", &stream, "-y"]);
}

#[test]
fn an_empty_server_says_how_to_make_a_stream_not_that_pub_makes_one() {
    if !nats_here() {
        return;
    }
    let Some(server) = OwnNats::start("empty", &[]) else {
        return;
    };
    let home = Home::new("nats-empty");
    let (code, _, err) = outcome(&mut home.at(&server.url(), &["topics"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no streams yet") && err.contains("topic create"), "{err}");
    assert!(!err.contains("pub TOPIC MESSAGE` creates one"), "{err}");
}

#[test]
fn pubsub_reply_answers_requests_with_what_its_command_prints() {
    // `pubsub reply SUBJECT --exec CMD`, as `nats reply --command`: the request on stdin, the reply
    // subject in PUBSUB_REPLY, and in the `reply-to` header that `sub --json` shows.
    if !nats_here() {
        return;
    }
    let home = Home::new("nats-reply");
    let subject = unique("svc.upper.");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let mut responder = Command::new(&bin)
        .env("PUBSUB_HOME", &home.0)
        .args(["-b", URL, "reply", &subject, "-e", r#"printf '%s|%s' "$(tr a-z A-Z)" "${PUBSUB_REPLY%%.*}""#])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _responder = Kill(&mut responder);
    // First the responder: ask until it answers (until it has subscribed, NATS says "no responders").
    // Only then the watcher: a plain subscriber that never answers would make a request wait for its
    // timeout instead of being told there are no responders.
    let started = Instant::now();
    let answer = loop {
        let (code, out, err) = outcome(&mut home.at(URL, &["request", &subject, "hello", "--format", "raw"]));
        if code == 0 {
            break out;
        }
        assert_eq!(code, 6, "only 'no responders' while the responder starts: {err}");
        assert!(started.elapsed() < Duration::from_secs(15), "the responder never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut watcher = home
        .at(URL, &["sub", &subject, "--count", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The watcher subscribes in its own time: ask again until it has seen a request.
    while watcher.try_wait().unwrap().is_none() {
        let (code, _, err) = outcome(&mut home.at(URL, &["request", &subject, "again", "--format", "raw"]));
        assert_eq!(code, 0, "the responder is up: {err}");
        assert!(started.elapsed() < Duration::from_secs(30), "the watcher never saw a request");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answer.trim(), "HELLO|_INBOX");
    let seen = watcher.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    let reply = v["headers"]["reply-to"].as_str().unwrap_or_default();
    assert!(reply.starts_with("_INBOX."), "{v}");
}
