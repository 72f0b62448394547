//! The Redis backend against the real Redis on 127.0.0.1:6379, with the real `redis-cli` on the other
//! side. Skips (with the reason printed) when Redis is not running; fails instead when
//! PUBSUB_REQUIRE_BROKERS=1.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pubsub::broker::redis::RedisBroker;
use pubsub::broker::{Broker, Settle, StreamItem, SubscribeRequest};
use pubsub::engine::{AckMode, Pattern, StartPosition};

use crate::support::{Home, name};

const URL: &str = "redis://127.0.0.1:6379";

/// Whether Redis and redis-cli are here; panics when they must be.
fn redis_here() -> bool {
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    let cli = Command::new("redis-cli").arg("--version").output().is_ok();
    if up && cli {
        return true;
    }
    let reason = if up { "redis-cli is not installed" } else { "Redis is not running on 127.0.0.1:6379" };
    assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "live Redis tests required: {reason}");
    eprintln!("skipping live Redis test: {reason}");
    false
}

fn key(tag: &str) -> String {
    format!("pubsub-test.{tag}.{}", std::process::id())
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_cli_publish_reaches_pubsub_sub_and_pubsub_pub_reaches_redis_cli_subscribe() {
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-pubsub");
    let channel = key("chat");
    let bin = assert_cmd::cargo::cargo_bin("pubsub");
    let sub = Command::new(&bin)
        .args([
            "--broker",
            URL,
            "sub",
            &channel,
            "--count",
            "1",
            "--format",
            "{{subject}} {{payload}}",
            "--timeout",
            "10s",
        ])
        .env("PUBSUB_HOME", &home.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the subscriber is listening (PUBLISH answers how many received it).
    let started = Instant::now();
    while redis_cli(&["PUBLISH", &channel, "hello from redis-cli"]) == "0" {
        assert!(started.elapsed() < Duration::from_secs(10), "pubsub sub never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{channel} hello from redis-cli"));

    let mut cli =
        Command::new("redis-cli").args(["SUBSCRIBE", &channel]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    // "subscribe", channel, count: the subscription is active once these three lines arrive.
    for _ in 0..3 {
        lines.next().unwrap().unwrap();
    }
    // While redis-cli listens, `topics` lists the channel with its listener count (PUBSUB NUMSUB).
    let (code, listed, stderr) = home.run(&["--broker", URL, "topics", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let row = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|t| t["name"] == channel.as_str())
        .unwrap_or_else(|| panic!("{channel} not listed: {listed}"));
    assert_eq!(row["subscriptions"], 1, "{row}");
    let (code, _, stderr) = home.run(&["--broker", URL, "pub", &channel, "hello from pubsub", "-v"]);
    assert_eq!(code, 0, "{stderr}");
    let seen: Vec<String> = lines.by_ref().take(3).map(|l| l.unwrap()).collect();
    let _ = cli.kill();
    let _ = cli.wait();
    assert_eq!(seen, vec!["message".to_string(), channel.clone(), "hello from pubsub".to_string()]);
}

#[test]
fn entries_added_with_xadd_show_in_tail_and_group_acks_show_in_xpending() {
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-streams");
    let stream = key("orders");
    redis_cli(&["XADD", &stream, "*", "payload", "first", "key", "k1", "h:region", "eu"]);
    redis_cli(&["XADD", &stream, "*", "payload", "second"]);
    let (code, out, stderr) =
        home.run(&["--broker", URL, "tail", &stream, "--format", "{{payload}} {{key}} {{header.region}}"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, "first k1 eu\nsecond  \n");
    let (code, out, stderr) = home.run(&[
        "--broker", URL, "sub", &stream, "-s", "billing", "--from", "start", "--count", "2", "--format",
        "raw",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, "first\nsecond\n");
    let pending = redis_cli(&["XPENDING", &stream, "billing"]);
    assert!(pending.starts_with('0'), "both entries acked: {pending}");
    redis_cli(&["DEL", &stream]);
}

#[test]
fn subs_create_makes_a_consumer_group_and_sub_info_shows_its_consumers() {
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-groups");
    let stream = key("ledger");
    for p in ["one", "two", "three"] {
        redis_cli(&["XADD", &stream, "*", "payload", p]);
    }
    let create = |group: &str, extra: &[&str]| {
        let mut args = vec!["--broker", URL, "subs", "create", group, "--topic", stream.as_str()];
        args.extend_from_slice(extra);
        home.run(&args)
    };
    let (code, _, stderr) = create("from-start", &["--from", "start"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = create("from-now", &[]);
    assert_eq!(code, 0, "{stderr}");
    let groups = redis_cli(&["XINFO", "GROUPS", &stream]);
    assert!(groups.contains("from-start") && groups.contains("from-now"), "{groups}");
    // Creating it again, or with what Redis groups lack, is an error that says why.
    let (code, _, stderr) = create("from-start", &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = create("with-dlq", &["--dead-letter", "dlq"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no dead-letter topics"), "{stderr}");
    // The group reads from where it was created: all three, or nothing yet.
    let read = |group: &str| {
        home.run(&[
            "--broker",
            URL,
            "sub",
            &stream,
            "-s",
            group,
            "--consumer",
            "w1",
            "--ack",
            "manual",
            "--count",
            "3",
            "--timeout",
            "2s",
            "--format",
            "raw",
        ])
    };
    let (code, out, stderr) = read("from-start");
    assert_eq!((code, out.as_str()), (0, "one\ntwo\nthree\n"), "{stderr}");
    let (code, out, _) = read("from-now");
    assert_eq!((code, out.as_str()), (4, ""));
    // Unacked (manual ack, never sent) entries are held by consumer w1, as sub-info shows.
    let (code, out, stderr) = home.run(&["--broker", URL, "sub-info", "from-start", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["in_flight"], 3, "{info}");
    let consumers = info["consumers"].as_array().cloned().unwrap_or_default();
    assert!(consumers.iter().any(|c| c["id"] == "w1" && c["in_flight"] == 3), "{info}");
    // Purging empties the stream and keeps its groups.
    let (code, _, stderr) = home.run(&["--broker", URL, "topic", "purge", &stream]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(redis_cli(&["XLEN", &stream]), "0");
    assert!(redis_cli(&["XINFO", "GROUPS", &stream]).contains("from-start"));
    redis_cli(&["DEL", &stream]);
}

#[test]
fn topic_create_makes_an_empty_stream_and_refuses_what_redis_cannot_keep() {
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-topics");
    let stream = key("made");
    let (code, _, stderr) = home.run(&["--broker", URL, "topic", "create", &stream]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((redis_cli(&["TYPE", &stream]), redis_cli(&["XLEN", &stream])), ("stream".into(), "0".into()));
    assert_eq!(redis_cli(&["XINFO", "GROUPS", &stream]), "", "the helper group is gone");
    // Now a stream, so a publish is an XADD.
    let (code, _, stderr) = home.run(&["--broker", URL, "pub", &stream, "kept"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(redis_cli(&["XLEN", &stream]), "1");
    for (args, says) in
        [(vec![stream.as_str()], "already exists"), (vec!["other-made", "--max-msgs", "10"], "maxlen")]
    {
        let mut all = vec!["--broker", URL, "topic", "create"];
        all.extend(args);
        let (code, _, stderr) = home.run(&all);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    let plain = key("plain-key");
    redis_cli(&["SET", &plain, "x"]);
    let (code, _, stderr) = home.run(&["--broker", URL, "topic", "create", &plain]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("holds a Redis string"), "{stderr}");
    redis_cli(&["DEL", &stream, &plain]);
}

#[tokio::test]
async fn competing_consumers_on_a_group_share_the_stream_without_duplicates() {
    if !redis_here() {
        return;
    }
    let stream = key("jobs");
    let broker = RedisBroker::connect(&format!("{URL}?mode=streams")).await.unwrap();
    let request = |consumer: &str| SubscribeRequest {
        patterns: vec![Pattern::parse(&stream).unwrap()],
        subscription: Some(name("workers")),
        from: Some(StartPosition::All),
        ack: AckMode::Explicit,
        consumer: Some(consumer.to_string()),
        prefetch: Some(5),
        ..SubscribeRequest::live(Vec::new())
    };
    let mut a = broker.subscribe(request("a")).await.unwrap();
    let mut b = broker.subscribe(request("b")).await.unwrap();
    let reqs =
        (0..40).map(|i| pubsub::engine::PublishRequest::new(name(&stream), format!("job {i}"))).collect();
    broker.publish_batch(reqs).await.unwrap();
    let mut seen = HashSet::new();
    let mut per_consumer = [0u32; 2];
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 40 && Instant::now() < deadline {
        for (i, stream) in [&mut a, &mut b].into_iter().enumerate() {
            if let Ok(Some(Ok(StreamItem::Delivery(d)))) =
                tokio::time::timeout(Duration::from_millis(100), stream.next()).await
            {
                assert!(seen.insert(d.message.seq), "seq {} delivered twice", d.message.seq);
                per_consumer[i] += 1;
                broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
            }
        }
    }
    assert_eq!(seen.len(), 40, "the union is every job");
    assert!(per_consumer.iter().all(|&n| n > 0), "both consumers got work: {per_consumer:?}");
    redis_cli(&["DEL", &stream]);
}

#[tokio::test]
async fn unacked_entries_are_redelivered_to_another_consumer_after_the_ack_deadline() {
    if !redis_here() {
        return;
    }
    let stream = key("deadline");
    let broker = RedisBroker::connect(&format!("{URL}?mode=streams&ack_deadline=300ms")).await.unwrap();
    let request = |consumer: &str| SubscribeRequest {
        patterns: vec![Pattern::parse(&stream).unwrap()],
        subscription: Some(name("slow")),
        from: Some(StartPosition::All),
        ack: AckMode::Explicit,
        consumer: Some(consumer.to_string()),
        prefetch: Some(10),
        ..SubscribeRequest::live(Vec::new())
    };
    broker.publish_batch(vec![pubsub::engine::PublishRequest::new(name(&stream), "held")]).await.unwrap();
    // `a` takes the entry and never settles it.
    let mut a = broker.subscribe(request("a")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), a.next()).await;
    let Ok(Some(Ok(StreamItem::Delivery(held)))) = first else { panic!("a got nothing: {first:?}") };
    assert_eq!(held.attempt, Some(1));
    drop(a);
    // `b` joins later and, once the deadline has passed, gets the same entry as a second attempt.
    let mut b = broker.subscribe(request("b")).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), b.next()).await;
    let Ok(Some(Ok(StreamItem::Delivery(redelivered)))) = again else { panic!("no redelivery: {again:?}") };
    assert_eq!(redelivered.message.seq, held.message.seq);
    assert_eq!(redelivered.message.payload.as_ref(), b"held");
    assert_eq!(redelivered.attempt, Some(2));
    broker.settle(redelivered.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    let pending = redis_cli(&["XPENDING", &stream, "slow"]);
    assert!(pending.starts_with('0'), "acked after redelivery, XPENDING says: {pending}");
    redis_cli(&["DEL", &stream]);
}

#[tokio::test]
async fn maxlen_in_the_url_trims_streams_on_publish() {
    if !redis_here() {
        return;
    }
    let stream = key("trimmed");
    let broker = RedisBroker::connect(&format!("{URL}?mode=streams&maxlen=100")).await.unwrap();
    let reqs =
        (0..5000).map(|i| pubsub::engine::PublishRequest::new(name(&stream), format!("m{i}"))).collect();
    broker.publish_batch(reqs).await.unwrap();
    let len: u64 = redis_cli(&["XLEN", &stream]).trim().parse().unwrap();
    // Approximate trimming keeps at least 100 and drops whole nodes (100 entries each by default).
    assert!((100..=300).contains(&len), "XLEN after 5000 adds with maxlen=100: {len}");
    let newest = redis_cli(&["XREVRANGE", &stream, "+", "-", "COUNT", "1"]);
    assert!(newest.contains("m4999"), "the newest entry is kept: {newest}");
    redis_cli(&["DEL", &stream]);
}

#[test]
fn bad_redis_input_has_clear_errors_and_exit_codes() {
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-bad");
    let (code, _, stderr) = home.run(&["--broker", "redis://127.0.0.1:1", "topics"]);
    assert_eq!(code, 3, "{stderr}");
    // Another service on the port (a WebSocket server answering with HTTP): unreachable, said plainly.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    let answering = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = other.accept() {
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let (code, _, stderr) = home.run(&["--broker", &format!("redis://127.0.0.1:{port}"), "topics"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("does not speak Redis"), "{stderr}");
    let _ = answering.join();
    let (code, _, stderr) = home.run(&["--broker", "redis://:wrong-password@127.0.0.1:6379", "topics"]);
    assert_eq!(code, 5, "{stderr}");
    // PUBLISH has no room for a key or headers: refused, not dropped.
    let channel = key("channel");
    for extra in [&["--key", "k"][..], &["--header", "a=b"][..]] {
        let args = [&["--broker", URL, "pub", &channel, "x"][..], extra].concat();
        let (code, _, stderr) = home.run(&args);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("PUBLISH carries only the payload") && stderr.contains(extra[0]), "{stderr}");
    }
    let plain = key("plain");
    redis_cli(&["SET", &plain, "x"]);
    let (code, _, stderr) = home.run(&["--broker", URL, "tail", &plain]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("WRONGTYPE"), "{stderr}");
    redis_cli(&["DEL", &plain]);
    // A pattern Redis cannot express is a bad argument: exit 2 (issue 19).
    let (code, _, stderr) = home.run(&["--broker", URL, "sub", "a.*.b", "--timeout", "1s"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("glob:a.*.b"), "{stderr}");
    // A group reads a stream, which mode=pubsub never writes: refused, not an empty stream.
    let pubsub_url = format!("{URL}?mode=pubsub");
    let (code, _, stderr) =
        home.run(&["--broker", &pubsub_url, "sub", &key("q"), "-s", "workers", "--timeout", "1s"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("competing consumers"), "{stderr}");
    let (code, out, stderr) = home.run(&["--broker", &pubsub_url, "bench", "-n", "100", "--csv"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("redis://127.0.0.1:6379?mode=pubsub"), "the report keeps the mode: {out}");
}

#[tokio::test]
async fn non_utf8_payloads_survive_pub_sub() {
    if !redis_here() {
        return;
    }
    let channel = key("bin");
    let broker = RedisBroker::connect(URL).await.unwrap();
    let mut sub =
        broker.subscribe(SubscribeRequest::live(vec![Pattern::parse(&channel).unwrap()])).await.unwrap();
    let payload = vec![0u8, 159, 146, 150, 255];
    let started = Instant::now();
    loop {
        let receipt = broker
            .publish(pubsub::engine::PublishRequest::new(name(&channel), payload.clone()))
            .await
            .unwrap();
        if receipt.taps > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(Ok(StreamItem::Delivery(d))) =
        tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap()
    else {
        panic!("no delivery")
    };
    assert_eq!(d.message.payload.as_ref(), payload.as_slice());
}

#[test]
fn rediss_urls_talk_tls() {
    if !redis_here() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pubsub-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-keyout", key_file.to_str().unwrap(), "-out", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port_arg, cert_arg, key_arg) =
        (port.to_string(), cert.to_str().unwrap(), key_file.to_str().unwrap());
    let mut redis = OwnRedis::spawn(
        &[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--tls-cert-file",
            cert_arg,
            "--tls-key-file",
            key_arg,
            "--tls-ca-cert-file",
            cert_arg,
            "--tls-auth-clients",
            "no",
        ],
        port,
        &dir,
    );
    let home = Home::new("redis-tls");
    let tls = format!("rediss://127.0.0.1:{port}/?mode=streams#insecure");
    let (code, out, stderr) = home.run(&["--broker", &tls, "pub", "secure", "over tls"]);
    assert_eq!(code, 0, "{out}{stderr}");
    let (code, out, stderr) = home.run(&["--broker", &tls, "tail", "secure", "--format", "raw"]);
    assert_eq!((code, out.as_str()), (0, "over tls\n"), "{stderr}");
    // Without `#insecure` the self-signed certificate is refused, as it should be.
    let checked = format!("rediss://127.0.0.1:{port}/?mode=streams");
    let (code, _, stderr) = home.run(&["--broker", &checked, "topics"]);
    assert_ne!(code, 0, "a self-signed certificate was accepted: {stderr}");
    // Plain redis:// on the TLS port does not get an answer it can use.
    let (code, _, _) = home.run(&["--broker", &format!("redis://127.0.0.1:{port}"), "topics"]);
    assert_ne!(code, 0);
    redis.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redis-server of this test's own, on a free port, persisting to a scratch directory.
struct OwnRedis {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl OwnRedis {
    /// A persisting (append-only, fsync always) server on `port`.
    fn start(port: u16, dir: &std::path::Path) -> OwnRedis {
        let port_arg = port.to_string();
        let args = ["--port", &port_arg, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"];
        OwnRedis::spawn(&[&args[..], &["--appendfsync", "always"]].concat(), port, dir)
    }

    /// Starts redis-server with `args` in `dir` and waits until `port` accepts connections.
    fn spawn(args: &[&str], port: u16, dir: &std::path::Path) -> OwnRedis {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        crate::support::wait_until_listening(port, &format!("redis-server {args:?}"));
        OwnRedis { dir: dir.to_path_buf(), child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_survives_a_redis_restart_without_losing_entries() {
    if !redis_here() || Command::new("redis-server").arg("--version").output().is_err() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("pubsub-redis-restart-{}", std::process::id()));
    let mut redis = OwnRedis::start(port, &dir);
    let url = format!("redis://127.0.0.1:{port}?mode=streams");
    let broker = RedisBroker::connect(&url).await.unwrap();
    let mut events = broker.connection_events();
    let mut req = SubscribeRequest::live(vec![Pattern::parse("restart.jobs").unwrap()]);
    req.subscription = Some(name("survivors"));
    req.from = Some(StartPosition::All);
    req.ack = AckMode::Explicit;
    let mut stream = broker.subscribe(req).await.unwrap();
    let live_channel = Pattern::parse("restart.chat").unwrap();
    let mut live = RedisBroker::connect(&format!("redis://127.0.0.1:{port}?mode=pubsub"))
        .await
        .unwrap()
        .subscribe(SubscribeRequest::live(vec![live_channel]))
        .await
        .unwrap();
    broker.publish(pubsub::engine::PublishRequest::new(name("restart.jobs"), "before")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    let StreamItem::Delivery(d) = first else { panic!("expected a delivery") };
    assert_eq!(d.message.payload.as_ref(), b"before");
    broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();

    redis.stop();
    let down = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    assert!(matches!(down, pubsub::broker::ConnectionEvent::Disconnected { .. }), "{down:?}");
    let _redis = OwnRedis::start(port, &redis.dir);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(15), events.recv()).await.unwrap().unwrap();
        if event == pubsub::broker::ConnectionEvent::Reconnected {
            break;
        }
    }
    redis_cli(&["-p", &port.to_string(), "XADD", "restart.jobs", "*", "payload", "after"]);
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    let StreamItem::Delivery(d) = item else { panic!("expected a delivery") };
    assert_eq!(
        d.message.payload.as_ref(),
        b"after",
        "resumed from the group's position: nothing lost, nothing repeated"
    );
    // The PUB/SUB listener listens again too (what was published while Redis was down is gone, by design).
    let started = Instant::now();
    while redis_cli(&["-p", &port.to_string(), "PUBLISH", "restart.chat", "back"]) == "0" {
        assert!(started.elapsed() < Duration::from_secs(15), "the PUB/SUB listener never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let item = tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap().unwrap();
    let StreamItem::Delivery(d) = item else { panic!("expected a delivery") };
    assert_eq!(d.message.payload.as_ref(), b"back");
    // Commands work again on the same broker handle.
    broker.publish(pubsub::engine::PublishRequest::new(name("restart.jobs"), "again")).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `pubsub` with `args` until it ends by itself, and returns its stderr.
fn stderr_of(home: &Home, url: &str, args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = crate::support::outcome(&mut home.at(url, args));
    (code, stderr)
}

#[test]
fn an_idle_stream_reader_never_reports_a_disconnect() {
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-idle");
    let stream = key("idle");
    let (code, _, stderr) = home.run(&["--broker", URL, "topic", "create", &stream]);
    assert_eq!(code, 0, "{stderr}");
    // Several XREADGROUP / XREAD blocks come back empty in 4 s; none of them may look like an outage.
    let (code, stderr) = stderr_of(&home, URL, &["sub", &stream, "-s", "idlers", "--timeout", "4s"]);
    assert_eq!(code, 4, "timed out with nothing received: {stderr}");
    assert!(!stderr.contains("connected"), "an idle group reader flapped: {stderr}");
    let (code, stderr) = stderr_of(&home, URL, &["sub", &stream, "--from", "end", "--timeout", "3s"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(!stderr.contains("connected"), "an idle XREAD reader flapped: {stderr}");
    redis_cli(&["DEL", &stream]);
}

/// A value Redis cannot compress, so the snapshot is large enough to load slowly.
fn incompressible(seed: u64, len: usize) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[test]
fn a_group_reader_on_the_command_line_survives_a_restart_while_redis_loads() {
    if !redis_here() || Command::new("redis-server").arg("--version").output().is_err() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("pubsub-redis-cli-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port_arg = port.to_string();
    let plain = ["--port", &port_arg, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    let mut redis = OwnRedis::spawn(&plain, port, &dir);
    let cli = |args: &[&str]| redis_cli(&[&["-p", port_arg.as_str()], args].concat());
    let home = Home::new("redis-cli-restart");
    let url = format!("redis://127.0.0.1:{port}");
    let mut sub = home
        .at(&url, &["sub", "jobs", "-s", "workers", "--from", "start", "--format", "raw", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = crate::support::stdout_lines(&mut sub);
    let stderr = sub.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    cli(&["XADD", "jobs", "*", "payload", "before"]);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).as_deref(), Ok("before"));

    // A snapshot big enough that the restarted server answers LOADING for about a second (50 ms per
    // key, with events processed every KiB) before it serves commands again.
    for i in 0..20 {
        cli(&["SET", &format!("filler{i}"), &incompressible(i, 4096)]);
    }
    assert_eq!(cli(&["SAVE"]), "OK");
    redis.stop();
    let slow_load = ["--key-load-delay", "50000", "--loading-process-events-interval-bytes", "1024"];
    let _redis = OwnRedis::spawn(&[&plain[..], &slow_load[..]].concat(), port, &dir);
    let started = Instant::now();
    while cli(&["XADD", "jobs", "*", "payload", "after"]).starts_with("LOADING") {
        assert!(started.elapsed() < Duration::from_secs(20), "the restarted Redis never finished loading");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = rx.recv_timeout(Duration::from_secs(20));
    // The entry read after the restart is acked on the restarted server (the first ack there used to
    // fail with "broken pipe" and end the command with exit 3).
    let started = Instant::now();
    while seen.is_ok() && !cli(&["XPENDING", "jobs", "workers"]).starts_with('0') {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pending = cli(&["XPENDING", "jobs", "workers"]);
    let still_running = sub.try_wait().unwrap().is_none();
    let _ = sub.kill();
    let _ = sub.wait();
    let stderr = stderr.join().unwrap();
    assert_eq!(seen.as_deref(), Ok("after"), "the reader resumed after the restart: {stderr}");
    assert!(still_running, "the reader exited: {stderr}");
    assert!(pending.starts_with('0'), "the ack after the restart never arrived: {pending}; {stderr}");
    assert_eq!(stderr.matches("disconnected").count(), 1, "one outage, told once: {stderr}");
    assert_eq!(stderr.matches("reconnected").count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sub_on_a_stream_reads_it_live_from_its_end() {
    // Found by a new user: `sub STREAM` sent SUBSCRIBE (a channel nobody publishes to), even with
    // `?mode=streams`, so a live read of a stream never printed anything.
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-live-stream");
    for url in [URL.to_string(), format!("{URL}?mode=streams")] {
        let stream = key("live");
        redis_cli(&["XADD", &stream, "*", "payload", "old"]);
        let mut sub = home
            .at(&url, &["sub", &stream, "--count", "1", "--format", "raw", "--timeout", "20s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = crate::support::stdout_lines(&mut sub);
        // Added until the reader prints one: it reads from the end, so only what comes after it joined.
        let started = Instant::now();
        let seen = loop {
            redis_cli(&["XADD", &stream, "*", "payload", "new"]);
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
                break line;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{url}: the live reader printed nothing");
        };
        let status = sub.wait().unwrap();
        redis_cli(&["DEL", &stream]);
        assert_eq!(seen, "new", "{url}: a live read starts at the end, not at the old entry");
        assert!(status.success(), "{url}: {status:?}");
    }
}

#[test]
fn sub_count_reads_only_n_entries_through_a_group() {
    // Issue 19 point 1: `sub -s G --count 1` read 3 entries, printed 1 and left 2 pending on a consumer
    // that had exited (back only after the ack deadline, out of order).
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-count");
    let stream = key("count");
    struct Del<'a>(&'a str);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            redis_cli(&["DEL", self.0]);
        }
    }
    let _del = Del(&stream);
    for p in ["e1", "e2", "e3", "e4"] {
        redis_cli(&["XADD", &stream, "*", "payload", p]);
    }
    let mut printed = String::new();
    for n in ["1", "2"] {
        let (code, out, stderr) = home.run(&[
            "--broker", URL, "sub", &stream, "-s", "takers", "--from", "start", "--count", n, "--format",
            "raw",
        ]);
        assert_eq!(code, 0, "{stderr}");
        printed.push_str(&out);
        let pending = redis_cli(&["XPENDING", &stream, "takers"]);
        assert!(pending.starts_with('0'), "nothing left pending after --count {n}: {pending}");
    }
    assert_eq!(printed, "e1\ne2\ne3\n");
    let group = redis_cli(&["XINFO", "GROUPS", &stream]);
    assert!(group.contains("entries-read\n3") || group.contains("3"), "{group}");
}

#[test]
fn redis_groups_show_their_deadline_and_positions_and_leave_no_consumers_behind() {
    // Issue 19 point 12: `sub-info` said "deadline 0ms" with every position 0; each `sub -s` left a
    // consumer `pubsub-PID-N` in the group for ever; `seek G end` said "will deliver from seq 1";
    // `topic delete` of a missing key said "deleted"; `subs create --backoff` was silently ignored.
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-groups");
    let stream = key("groups");
    let plain = key("groups-string");
    struct Del<'a>(&'a str, &'a str);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            redis_cli(&["DEL", self.0, self.1]);
        }
    }
    let _del = Del(&stream, &plain);
    let ids: Vec<String> =
        ["e1", "e2", "e3"].iter().map(|p| redis_cli(&["XADD", &stream, "*", "payload", p])).collect();
    let seq = |id: &str| {
        let (ms, n) = id.split_once('-').unwrap();
        ms.parse::<u64>().unwrap() * 1000 + n.parse::<u64>().unwrap()
    };
    let url = format!("{URL}?ack_deadline=45s");
    let (code, _, stderr) =
        home.run(&["--broker", &url, "subs", "create", "readers", "--topic", &stream, "--backoff", "1s..5s"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("redelivery backoff"), "{stderr}");
    let (code, _, stderr) =
        home.run(&["--broker", &url, "subs", "create", "readers", "--topic", &stream, "--max-lease", "10m"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("longest lease"), "{stderr}");
    let (code, _, stderr) =
        home.run(&["--broker", &url, "subs", "create", "readers", "--topic", &stream, "--from", "start"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, out, stderr) =
        home.run(&["--broker", &url, "sub", &stream, "-s", "readers", "--count", "1", "--format", "raw"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, "e1\n");
    let consumers = redis_cli(&["XINFO", "CONSUMERS", &stream, "readers"]);
    assert!(!consumers.contains("pubsub-"), "the consumer `sub` made is gone: {consumers}");
    let (code, out, stderr) = home.run(&["--broker", &url, "sub-info", "readers", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["ack_deadline"], 45_000, "{out}");
    assert_eq!(info["first_seq"], seq(&ids[0]), "{out}");
    assert_eq!(info["head_seq"], seq(&ids[2]), "{out}");
    assert_eq!(info["delivered_seq"], seq(&ids[0]), "{out}");
    assert_eq!(info["ack_floor"], seq(&ids[0]), "{out}");
    let (code, out, _) = home.run(&["--broker", &url, "sub-info", "readers"]);
    assert_eq!(code, 0);
    assert!(out.contains("deadline 45.0s") || out.contains("deadline 45s"), "{out}");
    let (code, _, stderr) = home.run(&["--broker", &url, "seek", "readers", "end"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("only what is published from now on") && !stderr.contains("seq 1"), "{stderr}");
    let (code, _, stderr) = home.run(&["--broker", &url, "seek", "readers", "start"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("from seq {}", seq(&ids[0]))), "{stderr}");
    let missing = key("groups-missing");
    let (code, _, stderr) = home.run(&["--broker", &url, "topic", "delete", &missing, "-y"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("deleted topic"), "{stderr}");
    redis_cli(&["SET", &plain, "keep me"]);
    let (code, _, stderr) = home.run(&["--broker", &url, "topic", "delete", &plain, "-y"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a stream"), "{stderr}");
    assert_eq!(redis_cli(&["GET", &plain]), "keep me");
    let (code, _, stderr) = home.run(&["--broker", &url, "topic", "delete", &stream, "-y"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(redis_cli(&["EXISTS", &stream]), "0");
}

#[test]
fn a_group_reader_sweeps_consumers_that_killed_subs_left_behind() {
    // Issue 19 point 12: a `sub -s` killed before it could delete its consumer left `pubsub-PID-N` in
    // the group for ever. The next reader deletes such consumers once they hold nothing and have been
    // silent past the ack deadline (1 ms here); consumers named by users are never touched.
    if !redis_here() {
        return;
    }
    let home = Home::new("redis-sweep");
    let stream = key("sweep");
    struct Del<'a>(&'a str);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            redis_cli(&["DEL", self.0]);
        }
    }
    let _del = Del(&stream);
    redis_cli(&["XGROUP", "CREATE", &stream, "sweepers", "0", "MKSTREAM"]);
    redis_cli(&["XGROUP", "CREATECONSUMER", &stream, "sweepers", "pubsub-999999-1"]);
    redis_cli(&["XGROUP", "CREATECONSUMER", &stream, "sweepers", "worker-keep"]);
    redis_cli(&["XADD", &stream, "*", "payload", "one"]);
    let url = format!("{URL}?ack_deadline=1ms");
    let (code, out, stderr) =
        home.run(&["--broker", &url, "sub", &stream, "-s", "sweepers", "--count", "1", "--format", "raw"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, "one\n");
    let consumers = redis_cli(&["XINFO", "CONSUMERS", &stream, "sweepers"]);
    assert!(consumers.contains("worker-keep"), "{consumers}");
    assert!(!consumers.contains("pubsub-"), "{consumers}");
}
