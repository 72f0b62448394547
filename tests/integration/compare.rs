//! `pubsub demo NAME --compare URL,URL…`: one scenario on several brokers at once. mem:// always runs;
//! the live columns (Redis on 6379, NATS with JetStream on 4222) are skipped with the reason printed
//! when the service is absent, and fail the test instead under PUBSUB_REQUIRE_BROKERS=1. Each column's
//! names carry a prefix of their own and are deleted when the column ends; the tests check that nothing
//! of theirs is left on the shared brokers.

use std::time::Duration;

use pubsub::demo::Scenario;
use pubsub::demo::compare::{compare, compare_named, render};

use crate::support::Home;

/// A short offline-subscriber: 10 messages a second, the phone away from 1 s to 3 s of a 4.5 s run.
const SHORT_OFFLINE: &str = r#"
name = "offline-short"
summary = "The phone is away for 2 s."
duration = "4500ms"

[[topic]]
name = "alerts"

[[subscription]]
name = "dashboard"
topic = "alerts"

[[subscription]]
name = "phone"
topic = "alerts"

[[publisher]]
name = "monitor"
subjects = ["alerts"]
rate = 10

[[consumer]]
name = "screen"
subscription = "dashboard"
process = "5ms"

[[consumer]]
name = "app"
subscription = "phone"
process = "5ms"

[[event]]
at = "1s"
action = "offline"
consumer = "app"

[[event]]
at = "3s"
action = "online"
consumer = "app"
"#;

/// Whether the service on `port` answers; otherwise the reason is printed (or, under
/// PUBSUB_REQUIRE_BROKERS=1, the test fails).
fn up(port: u16, what: &str) -> bool {
    let addr = format!("127.0.0.1:{port}");
    let ok = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)).is_ok();
    if !ok {
        let reason = format!("{what} is not running on {addr}");
        assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "live compare tests required: {reason}");
        eprintln!("skipping the {what} columns: {reason}");
    }
    ok
}

#[tokio::test]
async fn compare_on_two_engines_gives_two_equal_columns_with_nothing_marked() {
    let scenario = Scenario::parse(SHORT_OFFLINE, "short").unwrap();
    let cmp = compare(scenario, &["mem://".into(), "mem://".into()], 7).await;
    let text = render(&cmp, false);
    for c in &cmp.columns {
        let phone = c.check("phone").unwrap_or_else(|| panic!("{text}"));
        assert!(phone.expected >= 40, "{text}");
        assert_eq!((phone.lost, phone.delivered), (0, phone.expected), "{text}");
    }
    assert_eq!(cmp.columns[1].label, "mem:// #2");
    assert!(!text.contains(" *"), "equal columns, nothing marked:\n{text}");
}

/// The lesson of offline-subscriber, on real brokers: the live-only columns (Redis PUB/SUB, NATS core)
/// lose the phone's offline window while the dashboard loses nothing; the durable ones lose nothing.
#[tokio::test]
async fn compare_offline_subscriber_loses_the_window_only_where_nothing_is_kept() {
    let mut urls = vec!["mem://".to_string()];
    let redis = up(6379, "Redis");
    if redis {
        urls.push("redis://127.0.0.1:6379?mode=pubsub".into());
        urls.push("redis://127.0.0.1:6379".into());
    }
    let nats = up(4222, "NATS");
    if nats {
        urls.push("nats://127.0.0.1:4222?mode=core".into());
        urls.push("nats://127.0.0.1:4222?mode=jetstream".into());
    }
    let (cmp, text) = run_printed(SHORT_OFFLINE, &urls).await;
    for c in &cmp.columns {
        let report = c.outcome.as_ref().unwrap_or_else(|e| panic!("{}: {e}\n{text}", c.url));
        let phone = c.check("phone").unwrap();
        let screen = c.check("dashboard").unwrap();
        assert_eq!(phone.expected, report.published(), "{text}");
        assert_eq!(screen.lost, 0, "{}: the dashboard listened all along\n{text}", c.url);
        if c.url.contains("mode=pubsub") || c.url.contains("mode=core") {
            // 2 s away at 10/s: about 20 messages, less what the re-subscription takes to arrive.
            assert!(phone.lost >= 15, "{}: the offline window is gone\n{text}", c.url);
            assert!(c.notes.iter().any(|n| n.contains("no acks")), "{:?}", c.notes);
        } else {
            assert_eq!(phone.lost, 0, "{}: a durable subscription keeps the window\n{text}", c.url);
            assert_eq!(phone.delivered, phone.expected, "{text}");
        }
    }
    if redis {
        let line = text.lines().find(|l| l.trim_start().starts_with("lost") && l.contains('*'));
        assert!(line.is_some(), "the PUB/SUB column's loss is marked:\n{text}");
        assert_nothing_left("redis://127.0.0.1:6379", "alerts").await;
    }
    if nats {
        assert_nothing_left("nats://127.0.0.1:4222?mode=jetstream", "alerts").await;
    }
}

/// Runs the scenario `toml` on `urls` with seed 42, and prints the table for a failing test's output.
async fn run_printed(toml: &str, urls: &[String]) -> (pubsub::demo::compare::Comparison, String) {
    let cmp = compare(Scenario::parse(toml, "short").unwrap(), urls, 42).await;
    let text = render(&cmp, false);
    eprintln!("{text}");
    (cmp, text)
}

/// No topic (stream, stream key) named `topic` of this process's compare runs is left on the broker at
/// `url`. Only that topic's: the tests of one process run at once, and another test's run may still be
/// going on under the same process prefix.
async fn assert_nothing_left(url: &str, topic: &str) {
    let broker = pubsub::broker::url::connect(url).await.unwrap();
    let ours = format!("pubsub_cmp_{}_", std::process::id());
    let suffix = format!("_{topic}");
    let left: Vec<String> = broker
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .filter(|n| n.starts_with(&ours) && n.ends_with(&suffix))
        .collect();
    broker.close().await;
    assert!(left.is_empty(), "left on {url}: {left:?}");
}

/// The command line: a scenario file, --compare and --duration, the table on stdout.
#[test]
fn demo_compare_on_the_command_line_prints_the_table() {
    let home = Home::new("demo-compare");
    std::fs::create_dir_all(&home.0).unwrap();
    let file = home.0.join("short.toml");
    std::fs::write(&file, SHORT_OFFLINE).unwrap();
    let (code, out, err) = home.run(&[
        "demo",
        file.to_str().unwrap(),
        "--compare",
        "mem://",
        "--duration",
        "1500ms",
        "--seed",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo offline-short --compare"), "{out}");
    assert!(out.contains("seed 3, 1.5 s on each broker"), "{out}");
    assert!(out.contains("[1] mem://"), "{out}");
    for row in [
        "published",
        "phone",
        "delivered",
        "lost",
        "waiting at end",
        "redelivered",
        "duplicates",
        "order",
        "max lag",
    ] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(row)), "{row}: {out}");
    }
    // --duration also ends a plain headless run sooner, on its virtual clock.
    let (code, out, err) = home.run(&["demo", "offline-subscriber", "--headless", "--duration", "2s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("seed 42, 2.0 s simulated"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("monitor") && l.trim_end().ends_with(" 10")),
        "{out}"
    );
    let (code, _, err) = home.run(&["demo", "fan-out", "--duration", "1ms"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = home.run(&["demo", "fan-out", "--compare", "gopher://x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--compare"), "{err}");
    let _ = std::fs::remove_dir_all(&home.0);
}

/// A short job-queue: worker-1 is slow and always holds jobs when it crashes at 1.5 s; leases are 1 s.
const SHORT_JOBS: &str = r#"
name = "jobs-short"
summary = "A worker crashes holding jobs."
duration = "4500ms"

[[topic]]
name = "jobs"

[[subscription]]
name = "workers"
topic = "jobs"
ack_deadline = "1s"

[[publisher]]
name = "scheduler"
subjects = ["jobs"]
rate = 10

[[consumer]]
name = "worker-1"
subscription = "workers"
process = "1s"
prefetch = 4

[[consumer]]
name = "worker-2"
subscription = "workers"
process = "20ms"
prefetch = 2

[[event]]
at = "1500ms"
action = "crash"
consumer = "worker-1"
"#;

/// The lesson of job-queue: with acks and leases a crashed worker's jobs come back and nothing is lost;
/// without (Redis PUB/SUB, NATS core) what it held is gone.
#[tokio::test]
async fn compare_job_queue_loses_a_crashed_workers_jobs_only_without_acks() {
    let mut urls = vec!["mem://".to_string()];
    if up(6379, "Redis") {
        urls.push("redis://127.0.0.1:6379?mode=pubsub".into());
        urls.push("redis://127.0.0.1:6379?ack_deadline=1s".into());
    }
    if up(4222, "NATS") {
        urls.push("nats://127.0.0.1:4222?mode=core".into());
        urls.push("nats://127.0.0.1:4222?mode=jetstream&ack_wait=1s".into());
    }
    let (cmp, text) = run_printed(SHORT_JOBS, &urls).await;
    for c in &cmp.columns {
        assert!(c.outcome.is_ok(), "{}: {:?}\n{text}", c.url, c.outcome);
        let jobs = c.check("workers").unwrap();
        if c.url.contains("mode=pubsub") || c.url.contains("mode=core") {
            assert!(jobs.lost > 0, "{}: the crashed worker's jobs are gone\n{text}", c.url);
            assert!(c.notes.iter().any(|n| n.contains("not delivered again")), "{:?}", c.notes);
        } else {
            assert_eq!(jobs.lost, 0, "{}: leases bring the jobs back\n{text}", c.url);
            assert!(jobs.redelivered > 0, "{}\n{text}", c.url);
        }
    }
    for url in &urls[1..] {
        if !url.contains("mode=pubsub") && !url.contains("mode=core") {
            assert_nothing_left(url, "jobs").await;
        }
    }
}

/// The job-queue lesson on Kafka (Tansu, started by this test process): a crashed member's partition
/// moves at the group's rebalance and what it had not committed is read again; what the run did not get
/// to is kept in the log past the committed offset. Nothing is lost, however slowly the group rebalances.
#[tokio::test]
async fn compare_job_queue_on_kafka_loses_nothing() {
    let Some(kafka) = crate::kafka_live::tansu_url() else { return };
    // A group's first assignment takes about 3 s on Tansu, and every join or leave another stop-the-world
    // rebalance: the crash comes at 5 s, once the group has had time to work.
    let jobs = SHORT_JOBS.replace("4500ms", "10s").replace("1500ms", "5s");
    let urls = vec!["mem://".to_string(), kafka.clone()];
    let (cmp, text) = run_printed(&jobs, &urls).await;
    let column = cmp.column(&kafka).unwrap();
    assert!(column.outcome.is_ok(), "{:?}\n{text}", column.outcome);
    let jobs = column.check("workers").unwrap();
    assert_eq!(jobs.expected, 100, "{text}");
    assert_eq!(jobs.lost, 0, "Kafka keeps what the group did not commit\n{text}");
    assert!(jobs.delivered > 0, "{text}");
    assert!(
        !column.notes.iter().any(|n| n.contains("not delivered again")),
        "a crashed member's uncommitted messages are delivered again: {:?}",
        column.notes
    );
    assert_nothing_left(&kafka, "jobs").await;
}

/// Drops its PostgreSQL schema when the test ends.
struct PgSchema(String);

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "root", "-d", "test", "-AtX", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0))
            .output();
    }
}

/// job-queue on the brokers with acks but other ways of giving a crashed worker's jobs back: RabbitMQ
/// requeues what an unacked channel held when it closes, PostgreSQL's lease runs out. Their notes say
/// so instead of "not delivered again", and their columns lose nothing.
#[tokio::test]
async fn compare_job_queue_on_rabbitmq_and_postgres_redelivers_a_crashed_workers_jobs() {
    let mut urls = vec!["mem://".to_string()];
    if up(5672, "RabbitMQ") {
        urls.push("amqp://guest:guest@127.0.0.1:5672/%2f".into());
    }
    let schema = PgSchema(format!("pubsub_cmp_test_{}", std::process::id()));
    if up(5432, "PostgreSQL") {
        urls.push(format!("postgres://root@127.0.0.1:5432/test?schema={}&ack_deadline=1s", schema.0));
    }
    let (cmp, text) = run_printed(SHORT_JOBS, &urls).await;
    for c in &cmp.columns {
        assert!(c.outcome.is_ok(), "{}: {:?}\n{text}", c.url, c.outcome);
        let jobs = c.check("workers").unwrap();
        assert_eq!(jobs.lost, 0, "{}\n{text}", c.url);
        assert!(jobs.redelivered > 0, "{}: the crashed worker's jobs came back\n{text}", c.url);
        assert!(!c.notes.iter().any(|n| n.contains("not delivered again")), "{}: {:?}", c.url, c.notes);
        if c.url.starts_with("amqp") {
            assert!(c.notes.iter().any(|n| n.contains("connection closes")), "{:?}", c.notes);
        }
    }
    for url in &urls[1..] {
        assert_nothing_left(url, "jobs").await;
    }
    drop(schema);
}

/// A short slow-consumer: 30 a second for 2 s, a consumer that takes 100 ms each (10 a second): about
/// 40 behind when the publisher stops, well past a listener buffer of 16.
const SHORT_SLOW: &str = r#"
name = "slow-short"
summary = "A consumer half as fast as its publisher."
duration = "3s"

[[topic]]
name = "orders"

[[subscription]]
name = "reports"
topic = "orders"

[[publisher]]
name = "shop"
subjects = ["orders"]
rate = 30
count = 60

[[consumer]]
name = "report-job"
subscription = "reports"
process = "100ms"
prefetch = 1
"#;

/// slow-consumer on real brokers: where the subscription is durable the backlog is late, not lost
/// (what the run did not get to is still waiting); a live listener with a bounded buffer (Redis PUB/SUB
/// behind its client buffer, NATS core with `?pending=4`) drops the overflow and counts it lost.
#[tokio::test]
async fn compare_slow_consumer_keeps_the_backlog_only_where_the_subscription_is_durable() {
    let mut urls = vec!["mem://".to_string()];
    if up(6379, "Redis") {
        urls.push("redis://127.0.0.1:6379?mode=pubsub".into());
        urls.push("redis://127.0.0.1:6379".into());
    }
    if up(4222, "NATS") {
        urls.push("nats://127.0.0.1:4222?mode=core&pending=4".into());
        urls.push("nats://127.0.0.1:4222?mode=jetstream".into());
    }
    let (cmp, text) = run_printed(SHORT_SLOW, &urls).await;
    for c in &cmp.columns {
        assert!(c.outcome.is_ok(), "{}: {:?}\n{text}", c.url, c.outcome);
        let r = c.check("reports").unwrap();
        assert_eq!(r.expected, 60, "{text}");
        if c.url.contains("mode=pubsub") || c.url.contains("mode=core") {
            assert!(r.lost > 0, "{}: a live listener drops what it cannot take\n{text}", c.url);
            assert!(r.dropped > 0, "{}: and says so\n{text}", c.url);
        } else {
            assert_eq!(r.lost, 0, "{}: late, not lost\n{text}", c.url);
            assert!(r.waiting > 0, "{}: the backlog is still there at the end\n{text}", c.url);
        }
    }
    if urls.iter().any(|u| u.starts_with("redis")) {
        assert_nothing_left("redis://127.0.0.1:6379", "orders").await;
    }
    if urls.iter().any(|u| u.starts_with("nats")) {
        assert_nothing_left("nats://127.0.0.1:4222?mode=jetstream", "orders").await;
    }
}

/// A short ordering-keys: two keys, 20 a second, a fast and a slow worker on each subscription.
const SHORT_KEYS: &str = r#"
name = "keys-short"
summary = "Per-key order with competing workers."
duration = "4s"

[[topic]]
name = "accounts"

[[subscription]]
name = "any-order"
topic = "accounts"

[[subscription]]
name = "per-key"
topic = "accounts"
ordering = "per-key"

[[publisher]]
name = "bank"
subjects = ["accounts"]
rate = 20
keys = 2

[[consumer]]
name = "fast-a"
subscription = "any-order"
process = "20ms"
prefetch = 4

[[consumer]]
name = "slow-a"
subscription = "any-order"
process = "400ms"
prefetch = 2

[[consumer]]
name = "fast-k"
subscription = "per-key"
process = "20ms"
prefetch = 4

[[consumer]]
name = "slow-k"
subscription = "per-key"
process = "400ms"
prefetch = 2
"#;

/// ordering-keys on real brokers: the engine keeps each key's order on the per-key subscription and
/// breaks it on the other; Redis Streams and JetStream have no per-key ordering, say so, and run the
/// per-key subscription without it. Nothing is lost anywhere: ordering is about when, not whether.
#[tokio::test]
async fn compare_ordering_keys_keeps_per_key_order_only_where_the_broker_orders_keys() {
    let mut urls = vec!["mem://".to_string()];
    if up(6379, "Redis") {
        urls.push("redis://127.0.0.1:6379".into());
    }
    if up(4222, "NATS") {
        urls.push("nats://127.0.0.1:4222?mode=jetstream".into());
    }
    let (cmp, text) = run_printed(SHORT_KEYS, &urls).await;
    for c in &cmp.columns {
        assert!(c.outcome.is_ok(), "{}: {:?}\n{text}", c.url, c.outcome);
        let any = c.check("any-order").unwrap();
        let keyed = c.check("per-key").unwrap();
        assert_eq!((any.lost, keyed.lost), (0, 0), "{}\n{text}", c.url);
        assert!(any.out_of_order > 0, "{}: the fast worker overtakes the slow one\n{text}", c.url);
        if c.url == "mem://" {
            assert_eq!(keyed.out_of_order, 0, "per-key order kept\n{text}");
        } else {
            assert!(
                c.notes.iter().any(|n| n.contains("has no per-key ordering")),
                "{}: {:?}",
                c.url,
                c.notes
            );
        }
    }
    if urls.iter().any(|u| u.starts_with("redis")) {
        assert_nothing_left("redis://127.0.0.1:6379", "accounts").await;
    }
    if urls.iter().any(|u| u.starts_with("nats")) {
        assert_nothing_left("nats://127.0.0.1:4222?mode=jetstream", "accounts").await;
    }
}

/// offline-subscriber on MQTT: a persistent session keeps the offline window when the messages are
/// published at QoS 1; at QoS 0 the broker does not queue them for an offline session and the window is
/// lost. A scenario with competing consumers does not run there (no shared subscriptions). The
/// sessions the run made are gone afterwards.
#[tokio::test]
async fn compare_offline_subscriber_on_mqtt_keeps_the_window_at_qos_1_only() {
    if !up(1883, "Mosquitto") {
        return;
    }
    let (qos0, qos1) = ("mqtt://127.0.0.1:1883".to_string(), "mqtt://127.0.0.1:1883?qos=1".to_string());
    let urls = vec!["mem://".to_string(), qos0.clone(), qos1.clone()];
    const NONCE: u32 = 77;
    let cmp = compare_named(Scenario::parse(SHORT_OFFLINE, "short").unwrap(), &urls, 42, NONCE).await;
    let text = render(&cmp, false);
    eprintln!("{text}");
    for c in &cmp.columns {
        assert!(c.outcome.is_ok(), "{}: {:?}\n{text}", c.url, c.outcome);
        assert_eq!(c.check("dashboard").unwrap().lost, 0, "{}\n{text}", c.url);
    }
    assert!(cmp.column(&qos0).unwrap().check("phone").unwrap().lost >= 15, "{text}");
    assert_eq!(cmp.column(&qos1).unwrap().check("phone").unwrap().lost, 0, "{text}");
    assert_eq!(cmp.columns[2].label, "mqtt qos 1");
    // No session of the run is left on Mosquitto.
    for k in 1..=2 {
        for sub in ["dashboard", "phone"] {
            let id = format!("pubsub_cmp_{}_{NONCE}_{k}_{sub}", std::process::id());
            assert!(!mqtt_session_present(&id), "session {id} left on Mosquitto");
        }
    }
    let jobs = compare(Scenario::parse(SHORT_JOBS, "short").unwrap(), std::slice::from_ref(&qos1), 42).await;
    let refused = jobs.columns[0].outcome.as_ref().unwrap_err();
    assert!(refused.contains("competing"), "{refused}");
}

/// Whether Mosquitto keeps a session for `client_id`: an MQTT 5 CONNECT that asks to resume it (clean
/// start off) with a session expiry of 0, so the probe itself leaves nothing; the CONNACK says whether a
/// session was there.
fn mqtt_session_present(client_id: &str) -> bool {
    use std::io::{Read, Write};
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 10, 0];
    body.extend_from_slice(&u16::try_from(client_id.len()).unwrap().to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    assert!(body.len() < 128, "one length byte");
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend(body);
    let mut conn = std::net::TcpStream::connect("127.0.0.1:1883").unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(&packet).unwrap();
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).unwrap();
    assert_eq!((head[0], head[3]), (0x20, 0), "CONNACK, accepted: {head:?}");
    let _ = conn.write_all(&[0xE0, 0]);
    head[2] & 1 == 1
}

/// The names on the broker at `url` that start with `prefix`.
async fn names_with(url: &str, prefix: &str) -> Vec<String> {
    let broker = pubsub::broker::url::connect(url).await.unwrap();
    let names = broker
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    broker.close().await;
    names
}

/// Found by trying it: a headless `--compare` killed by Ctrl-C, or by its terminal closing (SIGHUP),
/// died on the spot and left its stream keys on Redis. Now every column stops, counts what it has and
/// deletes what it made; the table is printed and the exit code is 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_compare_stopped_by_a_signal_cleans_up_and_exits_130() {
    if !up(6379, "redis") {
        return;
    }
    let home = Home::new("compare-hup");
    std::fs::create_dir_all(&home.0).unwrap();
    let url = "redis://127.0.0.1:6379";
    for signal in ["-HUP", "-INT"] {
        let child = home
            .cmd()
            .args(["demo", "offline-subscriber", "--compare", &format!("mem://,{url}"), "--duration", "60s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let prefix = format!("pubsub_cmp_{}_", child.id());
        let started = std::time::Instant::now();
        while names_with(url, &prefix).await.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{signal}: the Redis column never made its topic"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("stopping every column"), "{signal}: {stderr}");
        assert!(stdout.contains("delivered"), "{signal}: the table is printed:\n{stdout}");
        assert_eq!(names_with(url, &prefix).await, Vec::<String>::new(), "{signal}: left on Redis");
    }
}
