//! The PostgreSQL backend against the machine's PostgreSQL on 127.0.0.1:5432 (trust auth, database
//! `test`), with `psql` on the other side. Each test works in a schema of its own
//! (`pubsub_test_<pid>_<n>`), dropped when the test ends, also when it fails. Skips with the reason when
//! PostgreSQL or psql is missing; fails instead under PUBSUB_REQUIRE_BROKERS=1.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pubsub::broker::{Settle, SharedBroker, StreamItem, SubscribeRequest, url};
use pubsub::model::{AckMode, Name, Pattern, PublishRequest, StartPosition, SubscriptionConfig, TopicConfig};

use crate::support::{Home, outcome};

const WAIT: Duration = Duration::from_secs(20);

fn here() -> bool {
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:5432".parse().unwrap(), Duration::from_secs(1))
        .is_ok()
        && Command::new("psql").arg("--version").output().is_ok();
    if !up {
        let reason = "PostgreSQL is not running on 127.0.0.1:5432 (or psql is not installed)";
        assert!(std::env::var("PUBSUB_REQUIRE_BROKERS").is_err(), "live PostgreSQL tests required: {reason}");
        eprintln!("skipping live PostgreSQL test: {reason}");
    }
    up
}

/// A throwaway schema, dropped when the test ends.
struct Schema(String);

impl Schema {
    fn new() -> Schema {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Schema(format!("pubsub_test_{}_{n}", std::process::id()))
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:5432/test?schema={}", self.0)
    }

    fn url_with(&self, options: &str) -> String {
        format!("{}&{options}", self.url())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}

/// Runs SQL with psql; its unaligned, tuples-only output.
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "root", "-d", "test", "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `sql` until its output is `want`.
fn psql_until(sql: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = psql(sql);
        if got.trim() == want {
            return;
        }
        assert!(started.elapsed() < WAIT, "{sql}: stayed {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

async fn next_delivery(stream: &mut pubsub::broker::DeliveryStream) -> pubsub::broker::BrokerDelivery {
    loop {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(StreamItem::Delivery(d)))) => return d,
            Ok(Some(Ok(_))) => {}
            other => panic!("no delivery: {other:?}"),
        }
    }
}

fn worker_request(topic: &str, sub: &str, consumer: &str) -> SubscribeRequest {
    let mut req = SubscribeRequest::live(vec![Pattern::parse(topic).unwrap()]);
    req.subscription = Some(name(sub));
    req.ack = AckMode::Explicit;
    req.consumer = Some(consumer.into());
    req.prefetch = Some(4);
    req
}

#[test]
fn a_job_inserted_with_sql_reaches_a_worker_and_pub_shows_in_psql() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-jobs");
    let (code, _, err) = outcome(&mut home.at(&schema.url(), &["topic", "create", "jobs"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = outcome(
        &mut home.at(&schema.url(), &["subs", "create", "workers", "--topic", "jobs", "--from", "start"]),
    );
    assert_eq!(code, 0, "{err}");
    // The documented SQL: an INSERT; the triggers number it, fan it out and NOTIFY.
    psql(&format!("INSERT INTO {}.messages (topic, payload) VALUES ('jobs', 'resize photo 7')", schema.0));
    psql_until(
        &format!("SELECT state, attempts FROM {}.status WHERE subscription = 'workers'", schema.0),
        "available|0",
    );
    let (code, out, err) = outcome(
        &mut home.at(&schema.url(), &["sub", "jobs", "-s", "workers", "--count", "1", "--format", "raw"]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resize photo 7"), "{out}");
    psql_until(
        &format!("SELECT state, attempts FROM {}.status WHERE subscription = 'workers'", schema.0),
        "done|1",
    );
    // And the other way: what pubsub publishes is a row anyone can read.
    let (code, _, err) = outcome(&mut home.at(&schema.url(), &["pub", "jobs", "from pubsub"]));
    assert_eq!(code, 0, "{err}");
    let rows = psql(&format!(
        "SELECT seq, convert_from(payload, 'UTF8') FROM {}.messages WHERE topic = 'jobs' ORDER BY seq",
        schema.0
    ));
    assert_eq!(rows.trim(), "1|resize photo 7\n2|from pubsub");
}

#[test]
fn channels_interoperate_with_psql_listen_and_notify() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-chan");
    let channel = format!("chan_{}", schema.0);
    // psql NOTIFY reaches `pubsub sub`.
    let child = home
        .at(&schema.url(), &["sub", &channel, "--count", "1", "--format", "raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < WAIT, "pubsub sub never saw psql's NOTIFY");
        psql(&format!("NOTIFY {channel}, 'hello from psql'"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from psql"));
    // psql LISTEN sees pubsub's channel messages and the status announcements of a table topic.
    let mut listener = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "root", "-d", "test", "-X"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = listener.stdin.take().unwrap();
    writeln!(stdin, "LISTEN {channel}; LISTEN {}_status;", schema.0).unwrap();
    assert_eq!(outcome(&mut home.at(&schema.url(), &["topic", "create", "jobs"])).0, 0);
    assert_eq!(outcome(&mut home.at(&schema.url(), &["subs", "create", "w", "--topic", "jobs"])).0, 0);
    for _ in 0..10 {
        assert_eq!(outcome(&mut home.at(&schema.url(), &["pub", &channel, "hello from pubsub"])).0, 0);
        writeln!(stdin, "SELECT 1;").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(outcome(&mut home.at(&schema.url(), &["pub", "jobs", "job"])).0, 0);
    writeln!(stdin, "SELECT pg_sleep(0.2); SELECT 1;").unwrap();
    drop(stdin);
    let out = listener.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("notification \"{channel}\" with payload \"hello from pubsub\"")),
        "{text}"
    );
    assert!(text.contains("\"state\" : \"available\""), "status announcement missing: {text}");
}

#[test]
fn refusals_read_clearly() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-bad");
    // An empty schema says how a table topic is made (a publish alone makes none).
    let (code, _, err) = outcome(&mut home.at(&schema.url(), &["topics"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no table topics yet; `pubsub topic create NAME`"), "{err}");
    let (code, _, err) = outcome(&mut home.at(&schema.url(), &["sub", "a.*"]));
    assert_ne!(code, 0);
    assert!(err.contains("LISTEN takes one channel name"), "{err}");
    let (code, _, err) = outcome(&mut home.at(&schema.url(), &["pub", "chan", &"x".repeat(9000)]));
    assert_ne!(code, 0);
    assert!(err.contains("larger than"), "{err}");
    let (code, _, err) =
        outcome(&mut home.at("postgres://root:hunter2@127.0.0.1:5432/no_such_db_pubsub", &["topics"]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("does not exist") && !err.contains("hunter2"), "{err}");
    let (code, _, err) = outcome(&mut home.at("postgres://root:hunter2@127.0.0.1:1/test", &["topics"]));
    assert_eq!(code, 3, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn concurrent_migrations_leave_one_schema_version() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-migrate");
    let children: Vec<_> = (0..4)
        .map(|_| {
            home.at(&schema.url(), &["topics"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(
        psql(&format!("SELECT string_agg(version::text, ',' ORDER BY version) FROM {}.migrations", schema.0))
            .trim(),
        "1,2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_jobs_none_twice() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let admin = url::connect(&schema.url()).await.unwrap();
    admin.create_topic(TopicConfig::new(name("jobs"))).await.unwrap();
    let mut config = SubscriptionConfig::new(name("pool"), name("jobs"));
    config.start = StartPosition::All;
    admin.create_subscription(config).await.unwrap();
    let m = 200;
    let batch = (0..m).map(|i| PublishRequest::new(name("jobs"), format!("job-{i}"))).collect();
    admin.publish_batch(batch).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let broker: SharedBroker = url::connect(&schema.url()).await.unwrap();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream =
                broker.subscribe(worker_request("jobs", "pool", &format!("w{w}"))).await.unwrap();
            loop {
                let d = next_delivery(&mut stream).await;
                broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
                if tx.send(String::from_utf8_lossy(&d.message.payload).into_owned()).is_err() {
                    return;
                }
            }
        }));
    }
    let mut seen = BTreeSet::new();
    while seen.len() < m {
        let job = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert!(seen.insert(job.clone()), "{job} done twice");
    }
    drop(rx);
    for t in &tasks {
        t.abort();
    }
    let want: BTreeSet<String> = (0..m).map(|i| format!("job-{i}")).collect();
    assert_eq!(seen, want);
    let states = psql(&format!(
        "SELECT state, attempts, count(*), count(DISTINCT worker) > 1 FROM {}.status GROUP BY 1, 2",
        schema.0
    ));
    assert_eq!(states.trim(), format!("done|1|{m}|t"), "every job done once, by more than one worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_comes_back_after_its_lease() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let url = schema.url_with("ack_deadline=1s");
    let home = Home::new("pg-kill");
    let admin = url::connect(&url).await.unwrap();
    admin.create_topic(TopicConfig::new(name("jobs"))).await.unwrap();
    let mut child = home
        .at(&url, &["sub", "jobs", "-s", "pool", "--ack", "manual", "--consumer", "doomed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let view = format!("SELECT state, attempts, worker FROM {}.status WHERE subscription = 'pool'", schema.0);
    // The worker made the subscription when it started; wait for it, then publish.
    psql_until(&format!("SELECT count(*) FROM {}.subscriptions", schema.0), "1");
    admin.publish(PublishRequest::new(name("jobs"), "fragile")).await.unwrap();
    let started = Instant::now();
    while !psql(&view).starts_with("in_flight|1|doomed") && !psql(&view).starts_with("expired|1|doomed") {
        assert!(started.elapsed() < WAIT, "the worker never claimed the job: {}", psql(&view));
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let mut stream = admin.subscribe(worker_request("jobs", "pool", "rescuer")).await.unwrap();
    let d = next_delivery(&mut stream).await;
    assert_eq!(d.message.payload.as_ref(), b"fragile");
    assert_eq!(d.attempt, Some(2));
    psql_until(&view, "in_flight|2|rescuer");
    admin.settle(d.token.as_ref().unwrap(), Settle::Ack).await.unwrap();
    psql_until(&view, "done|2|rescuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_max_deliveries_is_dead_lettered_with_its_reason() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let broker = url::connect(&schema.url()).await.unwrap();
    broker.create_topic(TopicConfig::new(name("jobs"))).await.unwrap();
    let mut config = SubscriptionConfig::new(name("pool"), name("jobs"));
    config.max_deliveries = 2;
    config.dead_letter = Some(name("jobs.dead"));
    broker.create_subscription(config).await.unwrap();
    let view = format!(
        "SELECT state, attempts, coalesce(last_error, '') FROM {}.status WHERE subscription = 'pool'",
        schema.0
    );
    broker.publish(PublishRequest::new(name("jobs"), "poison").with_key(&b"k1"[..])).await.unwrap();
    psql_until(&view, "available|0|");
    let mut stream = broker.subscribe(worker_request("jobs", "pool", "w")).await.unwrap();
    let first = next_delivery(&mut stream).await;
    psql_until(&view, "in_flight|1|");
    broker.settle(first.token.as_ref().unwrap(), Settle::Nack(None)).await.unwrap();
    let second = next_delivery(&mut stream).await;
    assert_eq!(second.attempt, Some(2));
    psql_until(&view, "in_flight|2|nacked");
    broker.settle(second.token.as_ref().unwrap(), Settle::Nack(None)).await.unwrap();
    psql_until(&view, "dead|2|nacked");
    let dead = broker.browse(&name("jobs.dead"), pubsub::model::BrowseFrom::Seq(1), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.as_ref(), b"poison");
    assert_eq!(dead[0].key().map(|k| k.as_ref()), Some(&b"k1"[..]));
    assert_eq!(dead[0].headers().get("x-dead-letter-attempts").map(String::as_str), Some("2"));
    assert_eq!(dead[0].headers().get("x-dead-letter-reason").map(String::as_str), Some("nacked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listen_connection_reconnects_and_catches_up_from_the_table() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let broker = url::connect(&schema.url()).await.unwrap();
    broker.create_topic(TopicConfig::new(name("events"))).await.unwrap();
    let mut stream =
        broker.subscribe(SubscribeRequest::live(vec![Pattern::parse("events").unwrap()])).await.unwrap();
    broker.publish(PublishRequest::new(name("events"), "before")).await.unwrap();
    assert_eq!(next_delivery(&mut stream).await.message.payload.as_ref(), b"before");
    // The reader's connection is the one whose last statement read this schema's messages table.
    let killed = psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE query LIKE 'SELECT m.topic%' AND query LIKE '%{}%' AND pid <> pg_backend_pid()",
        schema.0
    ));
    assert_eq!(killed.trim(), "1");
    broker.publish(PublishRequest::new(name("events"), "during")).await.unwrap();
    broker.publish(PublishRequest::new(name("events"), "after")).await.unwrap();
    assert_eq!(next_delivery(&mut stream).await.message.payload.as_ref(), b"during");
    assert_eq!(next_delivery(&mut stream).await.message.payload.as_ref(), b"after");
}

#[test]
fn sql_publishing_in_bulk_numbers_every_row_once_and_keeps_retention() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-bulk");
    let (code, _, err) =
        outcome(&mut home.at(&schema.url(), &["topic", "create", "bulk", "--max-msgs", "1000"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = outcome(
        &mut home.at(&schema.url(), &["subs", "create", "audit", "--topic", "bulk", "--from", "start"]),
    );
    assert_eq!(code, 0, "{err}");
    // The documented function, with text arguments; it returns the seq.
    let seq = psql(&format!(
        "SELECT {}.publish('bulk', 'by function', 'k1', '{{\"origin\": \"psql\"}}')",
        schema.0
    ));
    assert_eq!(seq.trim(), "1");
    let (code, out, err) = outcome(
        &mut home
            .at(&schema.url(), &["tail", "bulk", "-n", "1", "--format", "{{key}} {{headers}} {{payload}}"]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("k1 ") && out.contains("origin") && out.trim_end().ends_with("by function"),
        "{out}"
    );
    // One statement of 5,000 rows and another of 3 in one transaction: every row numbered once, in
    // order, and retention (1,000 messages) applied once the statement's rows are known.
    psql(&format!(
        "BEGIN;
         INSERT INTO {s}.messages (topic, payload) SELECT 'bulk', int4send(g) FROM generate_series(1, 5000) g;
         INSERT INTO {s}.messages (topic, payload) SELECT 'bulk', int4send(g) FROM generate_series(5001, 5003) g;
         COMMIT",
        s = schema.0
    ));
    let kept = psql(&format!(
        "SELECT count(*), min(seq), max(seq), bool_and(get_byte(payload, 3) + 256 * get_byte(payload, 2) + 65536 * get_byte(payload, 1) = seq - 1)
         FROM {}.messages WHERE topic = 'bulk'",
        schema.0
    ));
    // Seq 1 is the function's message; row g of the inserts is seq g + 1.
    assert_eq!(kept.trim(), "1000|4005|5004|t", "the last 1,000 kept, each with the seq of its place");
    let topic = psql(&format!("SELECT last_seq, bytes FROM {}.topics WHERE name = 'bulk'", schema.0));
    assert_eq!(topic.trim(), "5004|4000", "last_seq and the kept bytes (1,000 × 4) are the table's own");
    // The subscription has a delivery for each kept message, and none for the ones retention took.
    let pending = psql(&format!(
        "SELECT count(*), min(seq) FROM {}.deliveries WHERE subscription = 'audit' AND state = 'available'",
        schema.0
    ));
    assert_eq!(pending.trim(), "1000|4005");
}

/// Whether the server offers TLS (Debian's PostgreSQL does, with its snakeoil certificate for
/// `localhost`); the TLS test says so and skips when it does not.
fn server_has_tls() -> bool {
    let on = psql("SHOW ssl").trim() == "on";
    if !on {
        eprintln!("skipping the PostgreSQL TLS test: the server has ssl = off");
    }
    on
}

#[test]
fn sslmodes_encrypt_check_the_certificate_when_asked_and_refuse_a_wrong_name() {
    if !here() || !server_has_tls() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-tls");
    // A live reader connected as each mode asks; the server's own view says whether it is encrypted.
    for (mode, want) in
        [("sslmode=require", "true"), ("sslmode=disable", "false"), ("sslmode=prefer", "true")]
    {
        let url = schema.url_with(mode);
        let mut child =
            home.at(&url, &["sub", "tls_probe"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let app = format!("pubsub {}", child.id());
        let sql = format!(
            "SELECT string_agg(DISTINCT s.ssl::text, ',') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = '{app}'"
        );
        let started = Instant::now();
        let mut seen = String::new();
        while started.elapsed() < WAIT {
            seen = psql(&sql).trim().to_string();
            // The reader's LISTEN connection stays open; wait until it is there.
            if !seen.is_empty() && psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND query LIKE 'LISTEN%'")).trim() != "0" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        let _ = child.wait();
        assert_eq!(seen, want, "{mode}: ssl of the reader's connections");
    }
    // verify-full checks the name: the snakeoil certificate is for localhost, not 127.0.0.1.
    let ca = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let wrong =
        format!("postgres://root@127.0.0.1:5432/test?schema={}&sslmode=verify-full&ca={ca}", schema.0);
    let (code, _, err) = outcome(&mut home.at(&wrong, &["topics"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
    if std::path::Path::new(ca).exists() {
        let right =
            format!("postgres://root@localhost:5432/test?schema={}&sslmode=verify-full&ca={ca}", schema.0);
        let (code, _, err) = outcome(&mut home.at(&right, &["topic", "create", "checked"]));
        assert_eq!(code, 0, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_connection_dropped_mid_claim_loses_nothing() {
    if !here() {
        return;
    }
    let schema = Schema::new();
    let url = schema.url_with("ack_deadline=1s");
    let broker = url::connect(&url).await.unwrap();
    broker.create_topic(TopicConfig::new(name("jobs"))).await.unwrap();
    let mut config = SubscriptionConfig::new(name("pool"), name("jobs"));
    config.start = StartPosition::All;
    config.ack_deadline = Duration::from_secs(1);
    broker.create_subscription(config).await.unwrap();
    let batch = (0..4).map(|i| PublishRequest::new(name("jobs"), format!("job-{i}"))).collect();
    broker.publish_batch(batch).await.unwrap();
    let mut stream = broker.subscribe(worker_request("jobs", "pool", "cut")).await.unwrap();
    let first = next_delivery(&mut stream).await;
    assert_eq!(first.attempt, Some(1));
    // Every connection of this process goes: the worker's (holding 4 claimed jobs) and the command one.
    let app = format!("pubsub {}", std::process::id());
    let killed = psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
    ));
    assert!(killed.trim().parse::<u32>().unwrap() >= 2, "terminated {killed}");
    // The worker reconnects; the jobs it held come back when their lease ends, each to be done once.
    let mut done = BTreeSet::new();
    let started = Instant::now();
    while done.len() < 4 {
        assert!(started.elapsed() < WAIT, "done so far: {done:?}");
        let d = next_delivery(&mut stream).await;
        let job = String::from_utf8_lossy(&d.message.payload).into_owned();
        match broker.settle(d.token.as_ref().unwrap(), Settle::Ack).await {
            Ok(()) => assert!(done.insert(job.clone()), "{job} acked twice"),
            // A delivery handed over before the cut whose lease has since ended.
            Err(e) => assert!(e.to_string().contains("stale"), "{job}: {e}"),
        }
    }
    let states = psql(&format!("SELECT state, count(*) FROM {}.status GROUP BY 1", schema.0));
    assert_eq!(states.trim(), "done|4");
    assert!(
        broker.settle(first.token.as_ref().unwrap(), Settle::Ack).await.is_ok(),
        "an ack of a job already done by the same lease is not an error"
    );
}

#[test]
fn sub_count_claims_only_n_jobs() {
    // Issue 19 point 1: a worker asked for N jobs claims no more than N, so none is left in flight on a
    // worker that has gone (to come back only after the lease, as attempt 2).
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-count");
    let at = |args: &[&str]| outcome(&mut home.at(&schema.url(), args));
    assert_eq!(at(&["topic", "create", "jobs"]).0, 0);
    let created = at(&["subs", "create", "w", "--topic", "jobs", "--from", "start", "--max-deliveries", "1"]);
    assert_eq!(created.0, 0, "{}", created.2);
    assert_eq!(at(&["pub", "jobs", "j1", "j2", "j3", "j4"]).0, 0);
    let (code, out, err) = at(&["sub", "jobs", "-s", "w", "--count", "2", "--format", "raw"]);
    assert_eq!((code, out.as_str()), (0, "j1\nj2\n"), "{err}");
    let states = psql(&format!(
        "SELECT string_agg(state || ':' || attempts, ' ' ORDER BY seq) FROM {}.deliveries WHERE subscription = 'w'",
        schema.0
    ));
    assert_eq!(states.trim(), "done:1 done:1 available:0 available:0");
}

#[test]
fn subs_create_refuses_a_backoff_it_cannot_honour() {
    // Issue 19: `subs create --backoff` was accepted and ignored on PostgreSQL.
    if !here() {
        return;
    }
    let schema = Schema::new();
    let home = Home::new("pg-backoff");
    assert_eq!(outcome(&mut home.at(&schema.url(), &["topic", "create", "jobs"])).0, 0);
    let (code, _, err) = outcome(
        &mut home
            .at(&schema.url(), &["subs", "create", "workers", "--topic", "jobs", "--backoff", "1s,5s,30s"]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no redelivery backoff") && err.contains("--backoff"), "{err}");
    let (code, _, err) = outcome(
        &mut home.at(&schema.url(), &["subs", "create", "workers", "--topic", "jobs", "--max-lease", "10m"]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no longest lease") && err.contains("--max-lease"), "{err}");
    let (code, out, _) = outcome(&mut home.at(&schema.url(), &["subs", "--json"]));
    assert_eq!(code, 0);
    assert!(!out.contains("workers"), "nothing was created: {out}");
}
