//! The RabbitMQ backend against the machine's RabbitMQ on 127.0.0.1:5672 (guest/guest, vhost `/`),
//! with independent clients on the other side: `amqp-publish`/`amqp-consume` (amqp-tools, C) and the
//! Python `pika` package. Skips with the reason when RabbitMQ or a client is missing; fails instead when
//! PUBSUB_REQUIRE_BROKERS=1. Every queue a test makes is deleted when it ends, also when it fails.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Home, outcome};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const RAW: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn skip(reason: &str) -> bool {
    assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "live RabbitMQ tests required: {reason}");
    eprintln!("skipping live RabbitMQ test: {reason}");
    false
}

fn rabbit_here() -> bool {
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    up || skip("RabbitMQ is not running on 127.0.0.1:5672")
}

fn tools_here() -> bool {
    rabbit_here()
        && (Command::new("amqp-publish").arg("--help").output().is_ok()
            || skip("amqp-publish/amqp-consume (amqp-tools) are not installed"))
}

fn pika_here() -> bool {
    rabbit_here()
        && (Command::new("python3").args(["-c", "import pika"]).output().is_ok_and(|o| o.status.success())
            || skip("the Python package pika is not installed (pip install pika)"))
}

/// A routing key unique to this test run.
fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("pubsub-test.{tag}.p{}n{n}", std::process::id())
}

/// Deletes queues (topics' stream queues and subscriptions' queues) when dropped.
struct Queues(Vec<String>);

impl Drop for Queues {
    fn drop(&mut self) {
        let home = Home::new("amqp-cleanup");
        for q in &self.0 {
            let _ = outcome(&mut home.at(URL, &["subs", "delete", q]));
        }
    }
}

/// Runs `publish` every 100 ms until `child` exits (a live subscriber has no other way to say it is bound).
fn publish_until_exit(child: Child, mut publish: impl FnMut()) -> Output {
    let mut child = child;
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the subscriber never received anything");
        publish();
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sub(home: &Home, args: &[&str]) -> Child {
    home.at(URL, &["sub"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Runs a pika script (`conn`/`ch` are open on the local broker) and returns what it printed.
fn pika(body: &str) -> Output {
    let script = format!(
        "import pika, sys, json, base64\nconn = pika.BlockingConnection(pika.URLParameters('{RAW}'))\nch = conn.channel()\n{body}\nconn.close()\n"
    );
    Command::new("python3").args(["-c", &script]).output().unwrap()
}

#[test]
fn amqp_tools_and_pubsub_exchange_messages_both_ways() {
    if !tools_here() {
        return;
    }
    let home = Home::new("amqp-tools");
    let key = unique("tools");
    // amqp-publish → pubsub sub: payload, content type and a header arrive.
    let child = sub(&home, &[&key, "--count", "1", "--format", "json", "--timeout", "20s"]);
    let out = publish_until_exit(child, || {
        let status = Command::new("amqp-publish")
            .args([
                "-u",
                RAW,
                "-e",
                "amq.topic",
                "-r",
                &key,
                "-C",
                "text/plain",
                "-H",
                "trace: t-1",
                "-b",
                "hello",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("\"payload\":\"hello\""), "{text}");
    assert!(text.contains("\"content-type\":\"text/plain\""), "{text}");
    assert!(text.contains("\"trace\":\"t-1\""), "{text}");
    assert!(text.contains(&format!("\"subject\":\"{key}\"")), "{text}");
    // pubsub pub → amqp-consume (which runs `cat` for each message it takes).
    let consumer = Command::new("amqp-consume")
        .args(["-u", RAW, "-e", "amq.topic", "-r", &key, "-x", "-c", "1", "cat"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = publish_until_exit(consumer, || {
        let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &key, "from pubsub"]));
        assert_eq!(code, 0, "{stderr}");
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from pubsub");
}

#[test]
fn pika_and_pubsub_keep_properties_headers_and_binary_payloads_intact() {
    if !pika_here() {
        return;
    }
    let home = Home::new("amqp-pika");
    let key = unique("pika");
    // pubsub → pika: an envelope with binary payload, a binary key, headers and a message id.
    let reader = format!(
        "q = ch.queue_declare('', exclusive=True).method.queue\nch.queue_bind(q, 'amq.topic', '{key}')\nprint('ready', flush=True)\nfor m, p, body in ch.consume(q, auto_ack=True, inactivity_timeout=20):\n    if m is None: sys.exit(3)\n    h = {{k: (v.decode('latin-1') if isinstance(v, bytes) else v) for k, v in (p.headers or {{}}).items()}}\n    print(json.dumps({{'body': body.hex(), 'id': p.message_id, 'ct': p.content_type, 'corr': p.correlation_id, 'h': h}}), flush=True)\n    break"
    );
    let script = format!(
        "import pika, sys, json\nconn = pika.BlockingConnection(pika.URLParameters('{RAW}'))\nch = conn.channel()\n{reader}\nconn.close()\n"
    );
    let mut py = Command::new("python3").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(py.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let envelope = format!(
        "{{\"subject\":\"{key}\",\"payload\":\"AP8Afw==\",\"payload_encoding\":\"base64\",\"key\":\"k-1\",\"msg_id\":\"m-1\",\"headers\":{{\"content-type\":\"application/octet-stream\",\"correlation-id\":\"c-9\",\"trace\":\"t-2\"}}}}"
    );
    let mut publish = home.at(URL, &["pub", "--json"]).stdin(Stdio::piped()).spawn().unwrap();
    writeln!(publish.stdin.take().unwrap(), "{envelope}").unwrap();
    assert!(publish.wait().unwrap().success());
    let got = lines.next().unwrap().unwrap();
    assert!(py.wait().unwrap().success());
    assert!(got.contains("\"body\": \"00ff007f\""), "{got}");
    assert!(got.contains("\"id\": \"m-1\""), "{got}");
    assert!(got.contains("\"ct\": \"application/octet-stream\""), "{got}");
    assert!(got.contains("\"corr\": \"c-9\""), "{got}");
    assert!(got.contains("\"trace\": \"t-2\"") && got.contains("\"pubsub-key\": \"k-1\""), "{got}");
    // pika → pubsub: binary body, properties and headers arrive byte for byte.
    let child = sub(&home, &[&key, "--count", "1", "--json", "--timeout", "20s"]);
    let out = publish_until_exit(child, || {
        let sent = pika(&format!(
            "ch.basic_publish('amq.topic', '{key}', bytes([0, 255, 1]), pika.BasicProperties(message_id='m-2', correlation_id='c-2', headers={{'h': 'v'}}))"
        ));
        assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"payload\":\"AP8B\"") && text.contains("\"payload_encoding\":\"base64\""),
        "{text}"
    );
    assert!(text.contains("\"msg_id\":\"m-2\"") && text.contains("\"correlation-id\":\"c-2\""), "{text}");
    assert!(text.contains("\"h\":\"v\""), "{text}");
}

#[test]
fn topic_exchange_wildcards_route_as_rabbitmq_does() {
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-wild");
    let base = unique("wild");
    let one = format!("{base}.orders.eu");
    let deeper = format!("{base}.orders.eu.north");
    let other = format!("{base}.billing.eu");
    let star = sub(
        &home,
        &[&format!("{base}.orders.*"), "--count", "3", "--format", "{{subject}}", "--timeout", "20s"],
    );
    let out = publish_until_exit(star, || {
        for k in [&deeper, &other, &one] {
            let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", k, "x"]));
            assert_eq!(code, 0, "{stderr}");
        }
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().all(|l| l == one), "`*` is one word only: {text}");
    let hash =
        sub(&home, &[&format!("{base}.>"), "--count", "3", "--format", "{{subject}}", "--timeout", "20s"]);
    let out = publish_until_exit(hash, || {
        let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &deeper, "x"]));
        assert_eq!(code, 0, "{stderr}");
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().all(|l| l == deeper) && text.lines().count() == 3, "`>` is any words: {text}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["sub", "glob:orders*", "--count", "1"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no globs"), "{stderr}");
}

#[test]
fn an_unacked_message_comes_back_after_its_consumer_is_killed() {
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-kill");
    let key = unique("jobs");
    let queue = unique("jobq");
    let _cleanup = Queues(vec![queue.clone()]);
    let (code, _, stderr) = outcome(&mut home.at(URL, &["subs", "create", &queue, "--topic", &key]));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &key, "job-1"]));
    assert_eq!(code, 0, "{stderr}");
    let marker = std::env::temp_dir().join(format!("{queue}.started"));
    let _ = std::fs::remove_file(&marker);
    // The job's sleep writes its pid next to the marker, so the test can end it after killing the worker.
    let exec = format!("sleep 30 & echo $! > {0}.pid; touch {0}; wait", marker.display());
    let mut worker = home.at(URL, &["sub", "-s", &queue, &key, "--exec", &exec]).spawn().unwrap();
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "the worker never took the job");
        std::thread::sleep(Duration::from_millis(50));
    }
    worker.kill().unwrap(); // SIGKILL: no ack, no goodbye
    worker.wait().unwrap();
    let pidfile = format!("{}.pid", marker.display());
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_file(&marker);
    let (code, out, stderr) = outcome(
        &mut home.at(URL, &["sub", "-s", &queue, &key, "--count", "1", "--json", "--timeout", "20s"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("\"payload\":\"job-1\""), "{out}");
    assert!(out.contains("\"attempt\":2"), "a redelivery: {out}");
}

#[test]
fn a_quorum_queue_dead_letters_after_max_deliveries() {
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-dlq");
    let key = unique("work");
    let dead_key = unique("dead");
    let (queue, dead_queue) = (unique("workq"), unique("deadq"));
    let _cleanup = Queues(vec![queue.clone(), dead_queue.clone()]);
    let (code, _, stderr) =
        outcome(&mut home.at(URL, &["subs", "create", &dead_queue, "--topic", &dead_key]));
    assert_eq!(code, 0, "{stderr}");
    let create =
        ["subs", "create", &queue, "--topic", &key, "--max-deliveries", "2", "--dead-letter", &dead_key];
    let (code, _, stderr) = outcome(&mut home.at(URL, &create));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &key, "poison"]));
    assert_eq!(code, 0, "{stderr}");
    // The worker fails every time: nack, requeue, and past the limit RabbitMQ dead-letters it.
    let (_, out, _) =
        outcome(&mut home.at(
            URL,
            &["sub", "-s", &queue, &key, "--exec", "false", "--until-idle", "3s", "--timeout", "20s"],
        ));
    let _ = out;
    let (code, out, stderr) = outcome(
        &mut home
            .at(URL, &["sub", "-s", &dead_queue, &dead_key, "--count", "1", "--json", "--timeout", "20s"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("\"payload\":\"poison\""), "{out}");
    let (code, out, stderr) = outcome(&mut home.at(URL, &["sub-info", &queue]));
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("backlog") && out.contains("0"), "{out}");
}

#[test]
fn stream_topics_keep_history_from_start_and_by_time() {
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-stream");
    let topic = unique("hist");
    let _cleanup = Queues(vec![topic.clone()]);
    let (code, _, stderr) = outcome(&mut home.at(URL, &["topic", "create", &topic, "--max-age", "1h"]));
    assert_eq!(code, 0, "{stderr}");
    for m in ["one", "two", "three"] {
        let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &topic, m]));
        assert_eq!(code, 0, "{stderr}");
    }
    let (code, out, stderr) =
        outcome(&mut home.at(URL, &["tail", "-n", "2", &topic, "--format", "{{seq}} {{payload}}"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, "2 two\n3 three\n");
    let from = |position: &str| {
        let args = [
            "sub",
            &topic,
            "--from",
            position,
            "--count",
            "3",
            "--format",
            "{{payload}}",
            "--timeout",
            "20s",
        ];
        outcome(&mut home.at(URL, &args))
    };
    let (code, out, stderr) = from("start");
    assert_eq!((code, out.as_str()), (0, "one\ntwo\nthree\n"), "{stderr}");
    let (code, out, stderr) = from("-10m");
    assert_eq!((code, out.as_str()), (0, "one\ntwo\nthree\n"), "{stderr}");
    let (code, out, stderr) = outcome(&mut home.at(URL, &["topic", "info", &topic]));
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains(&topic), "{out}");
    let plain = unique("nohistory");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["tail", "-n", "1", &plain]));
    assert_ne!(code, 0);
    assert!(stderr.contains("keeps no history") || stderr.contains("history"), "{stderr}");
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-bad");
    let (code, _, stderr) =
        outcome(&mut home.at("amqp://guest:s3cret-pw@127.0.0.1:5672/%2f", &["pub", "x", "y"]));
    assert_eq!(code, 5, "{stderr}");
    assert!(
        !stderr.contains("s3cret-pw") && stderr.contains("***"),
        "the password is never printed: {stderr}"
    );
    let (code, _, stderr) =
        outcome(&mut home.at(&format!("{URL}?exchange=no-such-exchange"), &["pub", "x", "y"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("exchange \"no-such-exchange\" does not exist"), "{stderr}");
    let (code, _, stderr) =
        outcome(&mut home.at("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", &["pub", "x", "y"]));
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("vhost") || stderr.contains("not allowed") || stderr.contains("NOT_ALLOWED"),
        "{stderr}"
    );
    let (code, _, stderr) = outcome(&mut home.at("amqp://127.0.0.1:1", &["pub", "x", "y"]));
    assert_eq!(code, 3, "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(&format!("{URL}?colour=red"), &["pub", "x", "y"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown option \"colour\""), "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", "x", "y", "--retain"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--retain is not available on this broker (amqp)"), "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &unique("nobody"), "lost?", "-v"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("1 of them not routed: no queue matched"), "{stderr}");
}

#[test]
fn a_durable_subscriber_survives_its_connection_being_closed() {
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-reconnect");
    let key = unique("rc");
    let queue = unique("rcq");
    let _cleanup = Queues(vec![queue.clone()]);
    let (code, _, stderr) = outcome(&mut home.at(URL, &["subs", "create", &queue, "--topic", &key]));
    assert_eq!(code, 0, "{stderr}");
    let child = home
        .at(URL, &["sub", "-s", &queue, &key, "--count", "2", "--format", "{{payload}}", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &key, "before"]));
    assert_eq!(code, 0, "{stderr}");
    // Close the subscriber's own connection from the broker side, as an operator or a failover would.
    let name = format!("pubsub {}", child.id());
    let started = Instant::now();
    loop {
        let listed = Command::new("rabbitmqctl")
            .args(["list_connections", "pid", "client_properties"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("\"{name}\"")))
            .filter_map(|l| l.split('\t').next())
            .collect();
        if !ours.is_empty() {
            for conn in ours {
                let _ =
                    Command::new("rabbitmqctl").args(["close_connection", conn, "test closes it"]).output();
            }
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the subscriber's connection never showed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &key, "after"]));
    assert_eq!(code, 0, "{stderr}");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}: {stdout} {stderr}", out.status);
    assert!(stdout.contains("before") && stdout.contains("after"), "{stdout} {stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
}

/// Whether RabbitMQ's management API answers on 15672 (the listings need it).
fn management_here() -> bool {
    rabbit_here()
        && (std::net::TcpStream::connect_timeout(&"127.0.0.1:15672".parse().unwrap(), Duration::from_secs(1))
            .is_ok()
            || skip(
                "RabbitMQ's management API is not on 127.0.0.1:15672 (rabbitmq-plugins enable rabbitmq_management)",
            ))
}

#[test]
fn the_management_api_lists_topics_and_subscriptions_with_unacked_counts() {
    if !management_here() {
        return;
    }
    let home = Home::new("amqp-mgmt");
    let (topic, key, queue) = (unique("listed"), unique("lkey"), unique("lq"));
    let _cleanup = Queues(vec![topic.clone(), queue.clone()]);
    let (code, _, stderr) = outcome(&mut home.at(URL, &["topic", "create", &topic]));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = outcome(&mut home.at(URL, &["subs", "create", &queue, "--topic", &key]));
    assert_eq!(code, 0, "{stderr}");
    for m in ["a", "b", "c"] {
        let (code, _, stderr) = outcome(&mut home.at(URL, &["pub", &key, m]));
        assert_eq!(code, 0, "{stderr}");
    }
    let (code, out, stderr) = outcome(&mut home.at(URL, &["topics"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(out.lines().any(|l| l.starts_with(&topic)), "the stream queue is a topic: {out}");
    assert!(!out.contains(&queue), "a subscription's queue is not a topic: {out}");
    // A consumer holding all three unacked: the listing shows them in flight, bound to their topic.
    let mut holder = home
        .at(URL, &["sub", "-s", &queue, &key, "--ack", "manual", "--count", "4", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let (code, out, stderr) = outcome(&mut home.at(URL, &["subs"]));
        assert_eq!(code, 0, "{stderr}");
        let row = out.lines().find(|l| l.starts_with(&queue)).unwrap_or_default().to_string();
        let cells: Vec<&str> = row.split_whitespace().collect();
        // SUBSCRIPTION TOPIC BACKLOG PENDING IN-FLIGHT …
        if cells.len() > 4 && cells[1] == key && cells[4] == "3" {
            assert_eq!((cells[2], cells[3]), ("3", "0"), "{out}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never shown in flight: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, out, stderr) = outcome(&mut home.at(URL, &["sub-info", &queue]));
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains(&format!("on {key}")) && out.contains("in flight 3"), "{out}");
    let _ = holder.kill();
    let _ = holder.wait();
    let off = format!("{URL}?management=http://127.0.0.1:1");
    let (code, _, stderr) = outcome(&mut home.at(&off, &["subs"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("needs RabbitMQ's management API") && stderr.contains("not reachable"),
        "{stderr}"
    );
}

#[test]
fn a_port_where_something_else_answers_is_exit_3_not_amqp() {
    // A server of another protocol: it answers the AMQP greeting with an HTTP error and hangs up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut greeting = [0u8; 8];
            let _ = std::io::Read::read(&mut conn, &mut greeting);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let home = Home::new("amqp-notamqp");
    let (code, _, stderr) = outcome(&mut home.at(&format!("amqp://127.0.0.1:{port}"), &["pub", "x", "y"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("does not speak AMQP 0-9-1"), "{stderr}");
    server.join().unwrap();
}

/// A private RabbitMQ node with a TLS listener only, certificates from a CA made for it; stopped and
/// removed when dropped.
struct TlsNode {
    dir: std::path::PathBuf,
    node: String,
    port: u16,
    server: Option<Child>,
}

impl TlsNode {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Starts the node, or says why it cannot (with the reason printed, failing under
    /// PUBSUB_REQUIRE_BROKERS=1).
    fn start() -> Option<TlsNode> {
        let server = Command::new("sh").args(["-c", "command -v rabbitmq-server"]).output().unwrap();
        if !server.status.success() {
            skip("rabbitmq-server is not installed, so no private TLS node can start");
            return None;
        }
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("pubsub-rtls-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let mut node = TlsNode {
            node: format!("pubsubtls{pid}@localhost"),
            port: TlsNode::free_port(),
            dir,
            server: None,
        };
        let d = node.dir.display().to_string();
        let certs = format!(
            "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj '/CN=pubsub test CA' \
             && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=localhost' \
             && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf \
             && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf \
             && chmod 644 server.key && chmod 755 . && chown -R rabbitmq . "
        );
        let made = Command::new("sh").args(["-c", &certs]).output().unwrap();
        assert!(made.status.success(), "certificates: {}", String::from_utf8_lossy(&made.stderr));
        let conf = format!(
            "listeners.tcp = none\nlisteners.ssl.default = {}\nssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.pem\nssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\nloopback_users = none\n",
            node.port
        );
        std::fs::write(node.dir.join("rabbit.conf"), conf).unwrap();
        let _ = Command::new("chown").args(["-R", "rabbitmq", &d]).output();
        let log = std::fs::File::create(node.dir.join("server.out")).unwrap();
        let server = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node.node)
            .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbit"))
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_MNESIA_DIR", format!("{d}/mnesia/node"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", format!("{d}/feature_flags"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_DIST_PORT", TlsNode::free_port().to_string())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/plugins"))
            .env("RABBITMQ_PID_FILE", format!("{d}/pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.server = Some(server);
        let started = Instant::now();
        let addr = format!("127.0.0.1:{}", node.port);
        while std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(60) {
                let out = std::fs::read_to_string(node.dir.join("server.out")).unwrap_or_default();
                panic!("the private TLS node did not start: {out}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Some(node)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-n", &self.node, "stop"]).output();
        let _ = Command::new("pkill").args(["-f", &self.node]).output();
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn amqps_checks_the_broker_against_a_private_ca() {
    if !rabbit_here() {
        return;
    }
    let Some(node) = TlsNode::start() else { return };
    let home = Home::new("amqp-tls");
    let ca = node.dir.join("ca.pem");
    let with_ca = format!("amqps://guest:guest@localhost:{}/%2f?ca={}", node.port, ca.display());
    let child = home
        .at(
            &with_ca,
            &["sub", "tls.*", "--count", "1", "--format", "{{subject}} {{payload}}", "--timeout", "30s"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = publish_until_exit(child, || {
        let (code, _, stderr) = outcome(&mut home.at(&with_ca, &["pub", "tls.x", "over-tls"]));
        assert_eq!(code, 0, "{stderr}");
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().next(), Some("tls.x over-tls"));
    // Without the CA the broker's certificate is not trusted: refused, exit 3, naming why.
    let without = format!("amqps://guest:guest@localhost:{}/%2f", node.port);
    let (code, _, stderr) = outcome(&mut home.at(&without, &["pub", "tls.x", "y"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains("guest:guest"), "{stderr}");
}

#[test]
fn sub_count_takes_n_from_a_durable_queue_and_leaves_the_rest_unredelivered() {
    // Issue 19 point 1: with a prefetch above one, `sub -s Q --count 1` was sent more than it printed,
    // and what it left came back marked redelivered.
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-count");
    let q = unique("count");
    let _cleanup = Queues(vec![q.clone()]);
    let at = |args: &[&str]| outcome(&mut home.at(URL, args));
    let created = at(&["subs", "create", &q, "--topic", &q]);
    assert_eq!(created.0, 0, "{}", created.2);
    assert_eq!(at(&["pub", &q, "m1", "m2", "m3", "m4"]).0, 0);
    let mut printed = String::new();
    for n in ["1", "1", "2"] {
        let (code, out, err) = at(&[
            "sub",
            &q,
            "-s",
            &q,
            "--count",
            n,
            "--prefetch",
            "4",
            "--format",
            "{{payload}}:{{attempt}}",
        ]);
        assert_eq!(code, 0, "{err}");
        printed.push_str(&out);
    }
    assert_eq!(printed, "m1:1\nm2:1\nm3:1\nm4:1\n");
}

#[test]
fn subs_create_refuses_a_backoff_rabbitmq_cannot_honour() {
    // Issue 19: `subs create --backoff` was accepted and ignored on RabbitMQ.
    if !rabbit_here() {
        return;
    }
    let home = Home::new("amqp-backoff");
    let queue = unique("backoff");
    let _cleanup = Queues(vec![queue.clone()]);
    let (code, _, stderr) =
        outcome(&mut home.at(URL, &["subs", "create", &queue, "--topic", &queue, "--backoff", "1s..10s"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no redelivery backoff") && stderr.contains("--backoff"), "{stderr}");
    let (code, _, stderr) =
        outcome(&mut home.at(URL, &["subs", "create", &queue, "--topic", &queue, "--max-lease", "10m"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no lease to cap") && stderr.contains("--max-lease"), "{stderr}");
    let (code, _, _) = outcome(&mut home.at(URL, &["sub-info", &queue]));
    assert_ne!(code, 0, "no queue was declared");
}
