//! `pubsub demo NAME --compare URL,URL…`: one scenario on several brokers at once. mem:// always runs;
//! the live columns (Redis on 6379, NATS with JetStream on 4222) are skipped with the reason printed
//! when the service is absent, and fail the test instead under PUBSUB_REQUIRE_BROKERS=1. Each column's
//! names carry a prefix of their own and are deleted when the column ends; the tests check that nothing
//! of theirs is left on the shared brokers.

use std::time::Duration;

use pubsub::demo::Scenario;
use pubsub::demo::compare::{compare, render};

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
    let scenario = Scenario::parse(SHORT_OFFLINE, "short").unwrap();
    let cmp = compare(scenario, &urls, 42).await;
    let text = render(&cmp, false);
    eprintln!("{text}");
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
    let cmp = compare(Scenario::parse(SHORT_JOBS, "short").unwrap(), &urls, 42).await;
    let text = render(&cmp, false);
    eprintln!("{text}");
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
