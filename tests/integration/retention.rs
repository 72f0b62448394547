//! Retention modes (issue 24 point 5): Interest, WorkQueue, `max_msgs_per_key` with LastPerKey starts,
//! per-subscription `message_retention`, `retain_acked` and `dead_letter_on_expiry`, in memory and in
//! the durable store, on the manual clock; and through the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pubsub::engine::{
    BrowseFrom, Engine, EngineConfig, EngineError, ManualClock, Pattern, PublishRequest, RetentionPolicy,
    StartPosition, SubscriptionConfig, Timestamp, TopicConfig,
};

use crate::support::{Home, engine, fetch, name, publish, seqs, subscribe};

fn create(e: &Engine, topic: &str, tweak: impl FnOnce(&mut TopicConfig)) {
    let mut config = TopicConfig::new(name(topic));
    tweak(&mut config);
    e.create_topic(config).unwrap();
}

fn keyed(e: &Engine, topic: &str, key: Option<&str>, payload: &str) -> u64 {
    let mut req = PublishRequest::new(name(topic), payload.to_string());
    req.key = key.map(|k| Bytes::from(k.to_string()));
    e.publish(req).unwrap().seq
}

fn ack_all(e: &Engine, sub: &str, batch: &[pubsub::engine::Delivery]) {
    for d in batch {
        e.ack(&name(sub), d.lease.unwrap()).unwrap();
    }
}

fn retained(e: &Engine, topic: &str) -> Vec<u64> {
    e.browse(&name(topic), BrowseFrom::Seq(0), usize::MAX).unwrap().iter().map(|m| m.seq).collect()
}

fn payloads(batch: &[pubsub::engine::Delivery]) -> Vec<String> {
    batch.iter().map(|d| String::from_utf8_lossy(&d.message.payload).into_owned()).collect()
}

#[test]
fn scenario_14_interest_deletes_once_every_subscription_settled_and_work_queue_refuses_overlap() {
    let (e, _) = engine();
    // Interest, no subscription: the publish gets its seq, and the message is gone at once.
    create(&e, "events", |c| c.retention = RetentionPolicy::Interest);
    assert_eq!(publish(&e, "events", "nobody listens"), 1);
    let info = e.topic_info(&name("events")).unwrap();
    assert_eq!((info.messages, info.first_seq, info.head_seq), (0, 2, 1), "stored 0 times");
    assert_eq!(info.counters.deleted_settled, 1);
    assert_eq!(info.retention, RetentionPolicy::Interest);

    // Two subscriptions: deleted only once both have acked.
    subscribe(&e, "a", "events", |_| {});
    subscribe(&e, "b", "events", |_| {});
    assert_eq!(publish(&e, "events", "for both"), 2);
    assert_eq!(retained(&e, "events"), vec![2]);
    let got = fetch(&e, "a", "c", 10);
    assert_eq!(seqs(&got), vec![2]);
    ack_all(&e, "a", &got);
    assert_eq!(retained(&e, "events"), vec![2], "b has not settled it yet");
    let got = fetch(&e, "b", "c", 10);
    ack_all(&e, "b", &got);
    assert_eq!(retained(&e, "events"), Vec::<u64>::new());
    let info = e.topic_info(&name("events")).unwrap();
    assert_eq!((info.messages, info.first_seq, info.counters.deleted_settled), (0, 3, 2));

    // WorkQueue: a second subscription whose filter overlaps the first's is refused.
    create(&e, "jobs", |c| {
        c.retention = RetentionPolicy::WorkQueue;
        c.subjects = vec![Pattern::parse("jobs.>").unwrap()];
    });
    subscribe(&e, "workers", "jobs", |c| c.filter = vec![Pattern::parse("jobs.email.*").unwrap()]);
    let mut second = SubscriptionConfig::new(name("auditors"), name("jobs"));
    second.filter = vec![Pattern::parse("jobs.*.urgent").unwrap()];
    let err = e.create_subscription(second.clone()).unwrap_err();
    assert!(matches!(err, EngineError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("work queue") && err.to_string().contains("workers"), "{err}");
    let mut everything = second.clone();
    everything.filter.clear();
    assert!(e.create_subscription(everything).is_err(), "no filter overlaps every filter");
    // A filter that does not overlap is a second queue on the same topic.
    second.filter = vec![Pattern::parse("jobs.sms.*").unwrap()];
    e.create_subscription(second).unwrap();
}

#[test]
fn work_queue_deletes_on_ack_and_keeps_what_is_unsettled() {
    let (e, _) = engine();
    create(&e, "jobs", |c| c.retention = RetentionPolicy::WorkQueue);
    subscribe(&e, "w", "jobs", |_| {});
    for i in 1..=4 {
        publish(&e, "jobs", &format!("job {i}"));
    }
    let got = fetch(&e, "w", "c", 4);
    e.ack(&name("w"), got[0].lease.unwrap()).unwrap();
    e.ack(&name("w"), got[2].lease.unwrap()).unwrap();
    // 1 goes; 3 is acked but 2 is not, so the front stops at 2 (deletion is from the front).
    assert_eq!(retained(&e, "jobs"), vec![2, 3, 4]);
    e.ack(&name("w"), got[1].lease.unwrap()).unwrap();
    assert_eq!(retained(&e, "jobs"), vec![4]);
    // A term settles too.
    e.term(&name("w"), got[3].lease.unwrap(), "bad").unwrap();
    assert_eq!(e.topic_info(&name("jobs")).unwrap().messages, 0);
    // Deleting the subscription frees the topic: nothing holds messages any more.
    publish(&e, "jobs", "late");
    assert_eq!(e.topic_info(&name("jobs")).unwrap().messages, 1);
    e.delete_subscription(&name("w")).unwrap();
    assert_eq!(e.topic_info(&name("jobs")).unwrap().messages, 0);
}

#[test]
fn interest_with_a_retain_acked_subscription_keeps_messages_until_the_limits_remove_them() {
    let (e, _) = engine();
    create(&e, "audit", |c| {
        c.retention = RetentionPolicy::Interest;
        c.limits.max_msgs = Some(3);
    });
    subscribe(&e, "keeper", "audit", |c| c.retain_acked = true);
    subscribe(&e, "plain", "audit", |_| {});
    for i in 1..=2 {
        publish(&e, "audit", &format!("{i}"));
    }
    for sub in ["keeper", "plain"] {
        let got = fetch(&e, sub, "c", 10);
        ack_all(&e, sub, &got);
    }
    assert_eq!(retained(&e, "audit"), vec![1, 2], "the retain_acked subscription's acks delete nothing");
    // It can go back over what it acked.
    e.seek(&name("keeper"), pubsub::engine::SeekTarget::Start).unwrap();
    assert_eq!(seqs(&fetch(&e, "keeper", "c", 10)), vec![1, 2]);
    for i in 3..=5 {
        publish(&e, "audit", &format!("{i}"));
    }
    assert_eq!(retained(&e, "audit"), vec![3, 4, 5], "the limits still apply");
}

#[test]
fn max_msgs_per_key_keeps_the_newest_of_each_key_and_expires_unsettled_older_ones() {
    let (e, _) = engine();
    create(&e, "prices", |c| c.limits.max_msgs_per_key = Some(1));
    subscribe(&e, "slow", "prices", |_| {});
    keyed(&e, "prices", Some("eur"), "1.08"); // 1
    keyed(&e, "prices", Some("gbp"), "0.85"); // 2
    keyed(&e, "prices", None, "no key"); // 3
    let got = fetch(&e, "slow", "c", 1);
    assert_eq!(seqs(&got), vec![1]);
    keyed(&e, "prices", Some("eur"), "1.09"); // 4: 1 goes (in flight in `slow`: expired there)
    keyed(&e, "prices", Some("gbp"), "0.86"); // 5: 2 goes (never delivered to `slow`)
    assert_eq!(retained(&e, "prices"), vec![3, 4, 5]);
    let info = e.topic_info(&name("prices")).unwrap();
    assert_eq!((info.messages, info.first_seq, info.counters.expired), (3, 3, 2));
    let sub = e.subscription_info(&name("slow")).unwrap();
    assert_eq!(sub.counters.expired_unacked, 2);
    // The lease of the deleted message settles nothing, and the rest comes in order.
    e.ack(&name("slow"), got[0].lease.unwrap()).unwrap();
    assert_eq!(seqs(&fetch(&e, "slow", "c", 10)), vec![3, 4, 5]);
    // Deleted out of order, in the middle: the key's older message goes even when it is not the front.
    keyed(&e, "prices", Some("eur"), "1.10"); // 6: 4 goes, 3 (unkeyed) stays
    assert_eq!(retained(&e, "prices"), vec![3, 5, 6]);
    assert_eq!(e.topic_info(&name("prices")).unwrap().messages, 3);
    // Gaps are not pending: a new reader from the start has three messages to read, not four.
    subscribe(&e, "late", "prices", |_| {});
    let late = e.subscription_info(&name("late")).unwrap();
    assert_eq!((late.pending, late.backlog), (3, 3));
    assert_eq!(seqs(&fetch(&e, "late", "c", 10)), vec![3, 5, 6]);
}

#[test]
fn last_per_key_start_reads_a_compacted_topic_as_a_table() {
    let (e, _) = engine();
    create(&e, "table", |c| c.limits.max_msgs_per_key = Some(2));
    for (k, v) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1"), ("a", "a3"), ("b", "b2")] {
        keyed(&e, "table", Some(k), v);
    }
    keyed(&e, "table", None, "unkeyed");
    subscribe(&e, "view", "table", |c| c.start = StartPosition::LastPerKey);
    let got = fetch(&e, "view", "c", 10);
    assert_eq!(payloads(&got), vec!["c1", "a3", "b2"], "one row per key, unkeyed messages skipped");
    let info = e.subscription_info(&name("view")).unwrap();
    assert_eq!(info.start, StartPosition::LastPerKey);
    ack_all(&e, "view", &got);
    // Then every new message, keyed or not.
    keyed(&e, "table", Some("a"), "a4");
    keyed(&e, "table", None, "later");
    assert_eq!(payloads(&fetch(&e, "view", "c", 10)), vec!["a4", "later"]);
}

#[test]
fn message_retention_expires_unacked_messages_in_that_subscription_only() {
    let (e, clock) = engine();
    subscribe(&e, "short", "t", |c| c.message_retention = Some(Duration::from_secs(60)));
    subscribe(&e, "long", "t", |_| {});
    publish(&e, "t", "old 1");
    publish(&e, "t", "old 2");
    let held = fetch(&e, "short", "c", 1); // seq 1 in flight, seq 2 pending
    assert_eq!(seqs(&held), vec![1]);
    clock.advance(Duration::from_secs(30));
    publish(&e, "t", "young");
    clock.advance(Duration::from_secs(31));
    e.tick();
    let info = e.subscription_info(&name("short")).unwrap();
    assert_eq!(info.counters.expired_unacked, 2);
    assert_eq!((info.ack_floor, info.backlog), (2, 1));
    assert_eq!(seqs(&fetch(&e, "short", "c", 10)), vec![3]);
    assert_eq!(seqs(&fetch(&e, "long", "c", 10)), vec![1, 2, 3], "the topic keeps them for others");
    // The old lease settles nothing now.
    e.ack(&name("short"), held[0].lease.unwrap()).unwrap();
    assert_eq!(e.subscription_info(&name("short")).unwrap().counters.acked, 0);
}

#[test]
fn dead_letter_on_expiry_copies_expired_messages_with_reason_expired() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| {
        c.message_retention = Some(Duration::from_secs(10));
        c.dead_letter = Some(name("t.dlq"));
        c.dead_letter_on_expiry = true;
    });
    publish(&e, "t", "one");
    let _held = fetch(&e, "s", "c", 1);
    publish(&e, "t", "two");
    clock.advance(Duration::from_secs(11));
    e.tick();
    let copies = e.browse(&name("t.dlq"), BrowseFrom::Seq(0), 10).unwrap();
    let got: Vec<(String, String, String)> = copies
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.headers().get("x-dead-letter-reason").cloned().unwrap_or_default(),
                m.headers().get("x-dead-letter-seq").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("one".into(), "expired".into(), "1".into()), ("two".into(), "expired".into(), "2".into())]
    );
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.counters.dead_lettered, info.counters.expired_unacked, info.backlog), (2, 0, 0));
    // Without a dead-letter topic the setting is refused.
    let mut bad = SubscriptionConfig::new(name("bad"), name("t"));
    bad.dead_letter_on_expiry = true;
    assert!(e.create_subscription(bad).unwrap_err().to_string().contains("dead-letter topic"));
}

#[test]
fn limits_retention_dead_letters_unsettled_victims_when_asked() {
    let (e, _) = engine();
    create(&e, "t", |c| c.limits.max_msgs = Some(2));
    subscribe(&e, "s", "t", |c| {
        c.dead_letter = Some(name("t.dlq"));
        c.dead_letter_on_expiry = true;
    });
    for i in 1..=3 {
        publish(&e, "t", &format!("m{i}"));
    }
    let copies = e.browse(&name("t.dlq"), BrowseFrom::Seq(0), 10).unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].headers().get("x-dead-letter-reason").map(String::as_str), Some("expired"));
    assert_eq!(&copies[0].payload[..], b"m1");
}

// ----- the durable store --------------------------------------------------------------------------

struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> DataDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pubsub-retention-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn clock() -> Arc<ManualClock> {
    ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000))
}

fn open_at(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    let (engine, report) = Engine::open(dir, clock.clone(), EngineConfig::default()).unwrap();
    assert!(report.findings().is_empty(), "{:?}", report.findings());
    engine
}

/// Builds the same state in a data directory, then checks it after a clean close and after a crash
/// (the engine dropped without closing, as a kill -9 leaves it).
fn durable_state(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    let e = open_at(dir, clock);
    create(&e, "queue", |c| {
        c.retention = RetentionPolicy::WorkQueue;
        c.segment_bytes = 200; // several sealed segments, so that whole files go
    });
    subscribe(&e, "w", "queue", |_| {});
    for i in 1..=20 {
        publish(&e, "queue", &format!("job number {i:02}"));
    }
    let got = fetch(&e, "w", "c", 12);
    ack_all(&e, "w", &got[..10]);
    create(&e, "quiet", |c| c.retention = RetentionPolicy::Interest);
    publish(&e, "quiet", "nobody");
    create(&e, "table", |c| c.limits.max_msgs_per_key = Some(1));
    for (k, v) in [("a", "a1"), ("b", "b1"), ("a", "a2")] {
        keyed(&e, "table", Some(k), v);
    }
    subscribe(&e, "view", "table", |c| c.start = StartPosition::LastPerKey);
    subscribe(&e, "short", "table", |c| {
        c.message_retention = Some(Duration::from_secs(3600));
        c.retain_acked = true;
        c.dead_letter = Some(name("table.dlq"));
        c.dead_letter_on_expiry = true;
    });
    e
}

fn check_durable_state(e: &Engine) {
    let queue = e.topic_info(&name("queue")).unwrap();
    assert_eq!(queue.retention, RetentionPolicy::WorkQueue);
    assert_eq!((queue.first_seq, queue.head_seq, queue.messages), (11, 20, 10), "the advanced first_seq");
    assert_eq!(retained(e, "queue"), (11..=20).collect::<Vec<_>>());
    let quiet = e.topic_info(&name("quiet")).unwrap();
    assert_eq!((quiet.retention, quiet.messages, quiet.head_seq), (RetentionPolicy::Interest, 0, 1));
    let table = e.topic_info(&name("table")).unwrap();
    assert_eq!(table.limits.max_msgs_per_key, Some(1));
    assert_eq!(retained(e, "table"), vec![2, 3]);
    let view = e.subscription_info(&name("view")).unwrap();
    assert_eq!(view.start, StartPosition::LastPerKey);
    let short = e.subscription_info(&name("short")).unwrap();
    assert_eq!(short.message_retention, Some(Duration::from_secs(3600)));
    assert!(short.retain_acked && short.dead_letter_on_expiry);
    // The LastPerKey start survived: one row per key, then new messages.
    let got = fetch(e, "view", "c", 10);
    assert_eq!(payloads(&got), vec!["b1", "a2"]);
    // The work queue still refuses a second reader.
    let err = e.create_subscription(SubscriptionConfig::new(name("w2"), name("queue"))).unwrap_err();
    assert!(err.to_string().contains("work queue"), "{err}");
}

#[test]
fn retention_settings_and_the_advanced_first_seq_survive_a_clean_restart() {
    let dir = DataDir::new("clean");
    let clock = clock();
    let e = durable_state(&dir.0, &clock);
    e.close().unwrap();
    drop(e);
    assert_eq!(pubsub::store::verify(&dir.0).unwrap(), Vec::<String>::new(), "store verify accepts them");
    let e = open_at(&dir.0, &clock);
    check_durable_state(&e);
    // Sealed segments below first_seq are gone from the disk.
    let part = dir.0.join("topics").join("queue").join("0");
    let files = std::fs::read_dir(part)
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"));
    assert!(files.count() < 20, "whole segments below first_seq were deleted");
}

#[test]
fn retention_settings_and_the_advanced_first_seq_survive_a_crash() {
    let dir = DataDir::new("crash");
    let clock = clock();
    drop(durable_state(&dir.0, &clock)); // no close: what kill -9 leaves
    let e = open_at(&dir.0, &clock);
    check_durable_state(&e);
    // Interest with a restored subscription: what it acks after the restart goes too.
    let got = fetch(&e, "w", "c", 20);
    assert_eq!(seqs(&got), (11..=20).collect::<Vec<_>>());
    ack_all(&e, "w", &got);
    assert_eq!(e.topic_info(&name("queue")).unwrap().messages, 0);
}

// ----- through the real binary --------------------------------------------------------------------

#[test]
fn cli_work_queue_refuses_a_second_overlapping_subscription_and_survives_kill_9() {
    let home = Home::new("retention-wq");
    let (code, _, stderr) = home.run(&["topic", "create", "jobs", "--retention", "work-queue"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["subs", "create", "workers", "--topic", "jobs", "--from", "start"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = home.run(&["subs", "create", "more", "--topic", "jobs"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("work queue") && stderr.contains("workers"), "{stderr}");
    for i in 1..=3 {
        let (code, _, stderr) = home.run(&["pub", "jobs", &format!("job{i}")]);
        assert_eq!(code, 0, "{stderr}");
    }
    let (code, stdout, stderr) = home.run(&["sub", "jobs", "--subscription", "workers", "--count", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("job1") && stdout.contains("job2"), "{stdout}");
    let (code, stdout, stderr) = home.run(&["topic", "info", "jobs", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(info["retention"], "work_queue");
    assert_eq!((info["first_seq"].as_u64(), info["messages"].as_u64()), (Some(3), Some(1)), "{info}");

    let daemons = crate::support::daemons_under(&home.0);
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let killed = Command::new("kill").args(["-KILL", &daemons[0].to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::support::is_running(daemons[0]) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A new daemon recovers the policy, the first seq and the refusal.
    let (code, stdout, stderr) = home.run(&["topic", "info", "jobs"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("work-queue") && stdout.contains("3..3"), "{stdout}");
    let (code, _, stderr) = home.run(&["subs", "create", "more", "--topic", "jobs"]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn cli_last_per_key_subscription_reads_a_compacted_topic_as_a_table() {
    let home = Home::new("retention-table");
    let (code, _, stderr) = home.run(&["topic", "create", "prices", "--max-msgs-per-key", "1"]);
    assert_eq!(code, 0, "{stderr}");
    for (k, v) in [("eur", "1.08"), ("gbp", "0.85"), ("eur", "1.09"), ("usd", "1.00"), ("gbp", "0.86")] {
        let (code, _, stderr) = home.run(&["pub", "prices", v, "--key", k]);
        assert_eq!(code, 0, "{stderr}");
    }
    let (code, stdout, stderr) = home.run(&["topics"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 per key"), "{stdout}");
    let (code, _, stderr) =
        home.run(&["subs", "create", "view", "--topic", "prices", "--from", "last-per-key"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = home.run(&["sub", "prices", "--subscription", "view", "--exit-at-end"]);
    assert_eq!(code, 0, "{stderr}");
    let values: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(values, vec!["1.09", "1.00", "0.86"], "{stdout}");
    let (code, stdout, stderr) = home.run(&["sub-info", "view"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("last message per key"), "{stdout}");
}

// ----- snapshots pin retention (SEMANTICS.md §9.8) -------------------------------------------------

/// A snapshot keeps what `seek --snapshot` could bring back (everything above its floor) from every
/// kind of retention: WorkQueue and Interest deletion on ack, the limits and `max_msgs_per_key`.
/// Removing the snapshot lets retention catch up at once.
#[test]
fn a_snapshot_pins_what_it_could_seek_back_to_against_every_retention() {
    let (e, _) = engine();
    // WorkQueue: acked messages above the snapshot's floor stay, so seeking back redelivers them.
    create(&e, "jobs", |c| c.retention = RetentionPolicy::WorkQueue);
    subscribe(&e, "w", "jobs", |_| {});
    for i in 1..=5 {
        publish(&e, "jobs", &format!("job {i}"));
    }
    ack_all(&e, "w", &fetch(&e, "w", "c", 2));
    assert_eq!(retained(&e, "jobs"), vec![3, 4, 5], "1 and 2 go as usual");
    let snap = e.create_snapshot(name("before-3"), &name("w")).unwrap();
    assert_eq!(snap.partitions[0].ack_floor, 2);
    ack_all(&e, "w", &fetch(&e, "w", "c", 3));
    assert_eq!(retained(&e, "jobs"), vec![3, 4, 5], "acked, but the snapshot could seek back to them");
    e.seek_snapshot(&name("w"), &name("before-3")).unwrap();
    let again = fetch(&e, "w", "c", 10);
    assert_eq!(payloads(&again), ["job 3", "job 4", "job 5"]);
    ack_all(&e, "w", &again);
    publish(&e, "jobs", "job 6");
    ack_all(&e, "w", &fetch(&e, "w", "c", 10));
    assert_eq!(retained(&e, "jobs"), vec![3, 4, 5, 6]);
    e.delete_snapshot(&name("before-3")).unwrap();
    assert_eq!(retained(&e, "jobs"), Vec::<u64>::new(), "removing the snapshot frees them at once");

    // Interest: the same.
    create(&e, "events", |c| c.retention = RetentionPolicy::Interest);
    subscribe(&e, "i", "events", |_| {});
    publish(&e, "events", "one");
    publish(&e, "events", "two");
    e.create_snapshot(name("at-start"), &name("i")).unwrap();
    ack_all(&e, "i", &fetch(&e, "i", "c", 10));
    assert_eq!(retained(&e, "events"), vec![1, 2]);
    e.delete_snapshot(&name("at-start")).unwrap();
    assert_eq!(retained(&e, "events"), Vec::<u64>::new());

    // The limits: the topic holds more than max_msgs while a snapshot needs the oldest.
    create(&e, "capped", |c| c.limits.max_msgs = Some(3));
    subscribe(&e, "r", "capped", |_| {});
    for i in 1..=3 {
        publish(&e, "capped", &format!("m{i}"));
    }
    ack_all(&e, "r", &fetch(&e, "r", "c", 1));
    e.create_snapshot(name("capped-snap"), &name("r")).unwrap();
    publish(&e, "capped", "m4");
    publish(&e, "capped", "m5");
    assert_eq!(retained(&e, "capped"), vec![2, 3, 4, 5], "1 (at the floor) goes, 2 and 3 are pinned");
    e.delete_snapshot(&name("capped-snap")).unwrap();
    assert_eq!(retained(&e, "capped"), vec![3, 4, 5], "back within max_msgs");

    // max_msgs_per_key: an older message of a key stays while a snapshot could seek back to it.
    create(&e, "table", |c| c.limits.max_msgs_per_key = Some(1));
    subscribe(&e, "t", "table", |_| {});
    keyed(&e, "table", Some("a"), "a1");
    keyed(&e, "table", Some("a"), "a2");
    assert_eq!(retained(&e, "table"), vec![2]);
    e.create_snapshot(name("table-snap"), &name("t")).unwrap();
    keyed(&e, "table", Some("a"), "a3");
    keyed(&e, "table", Some("b"), "b1");
    assert_eq!(retained(&e, "table"), vec![2, 3, 4], "a2 is pinned");
    e.seek_snapshot(&name("t"), &name("table-snap")).unwrap();
    assert_eq!(payloads(&fetch(&e, "t", "c", 10)), ["a2", "a3", "b1"]);
    e.delete_snapshot(&name("table-snap")).unwrap();
    assert_eq!(retained(&e, "table"), vec![3, 4], "the newest of each key");
}

/// The pin is part of the snapshot, so it holds after a restart and after a crash: the deletions the
/// engine makes again at open leave what the snapshot could seek back to.
#[test]
fn a_snapshot_s_pin_survives_a_restart_and_a_crash() {
    for crash in [false, true] {
        let dir = DataDir::new(if crash { "pin-crash" } else { "pin-clean" });
        let clock = clock();
        let e = open_at(&dir.0, &clock);
        create(&e, "jobs", |c| c.retention = RetentionPolicy::WorkQueue);
        subscribe(&e, "w", "jobs", |_| {});
        for i in 1..=4 {
            publish(&e, "jobs", &format!("job {i}"));
        }
        ack_all(&e, "w", &fetch(&e, "w", "c", 1));
        e.create_snapshot(name("snap"), &name("w")).unwrap();
        ack_all(&e, "w", &fetch(&e, "w", "c", 3));
        assert_eq!(retained(&e, "jobs"), vec![2, 3, 4]);
        if !crash {
            e.close().unwrap();
        }
        drop(e);
        let e = open_at(&dir.0, &clock);
        assert_eq!(retained(&e, "jobs"), vec![2, 3, 4], "crash {crash}: still pinned after the open");
        e.seek_snapshot(&name("w"), &name("snap")).unwrap();
        let again = fetch(&e, "w", "c", 10);
        assert_eq!(seqs(&again), vec![2, 3, 4]);
        ack_all(&e, "w", &again);
        assert_eq!(retained(&e, "jobs"), vec![2, 3, 4]);
        e.delete_snapshot(&name("snap")).unwrap();
        assert_eq!(retained(&e, "jobs"), Vec::<u64>::new(), "crash {crash}: freed with the snapshot");
    }
}

/// `message_retention` tells watchers, as the other expiries do: one `$sys.sub.NAME.expired` event per
/// sweep with how many messages expired there.
#[test]
fn message_retention_expiry_emits_an_event() {
    use pubsub::engine::{TapItem, TapOptions};
    let (e, clock) = engine();
    let mut events = e.tap(vec![Pattern::parse("$sys.sub.short.>").unwrap()], TapOptions::default()).unwrap();
    subscribe(&e, "short", "t", |c| c.message_retention = Some(Duration::from_secs(60)));
    publish(&e, "t", "old 1");
    publish(&e, "t", "old 2");
    fetch(&e, "short", "c", 1);
    clock.advance(Duration::from_secs(61));
    e.tick();
    e.tick();
    let mut got = Vec::new();
    while let Some(TapItem::Message(m)) = events.try_recv() {
        got.push((m.subject().to_string(), serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()));
    }
    let expired: Vec<_> = got.iter().filter(|(s, _)| s == "$sys.sub.short.expired").collect();
    assert_eq!(expired.len(), 1, "one event for the sweep, none for a sweep with nothing to expire: {got:?}");
    assert_eq!(expired[0].1["count"], 2);
    assert_eq!(expired[0].1["reason"], "message_retention");
}

// ----- Interest: only the subscriptions that existed at the publish hold a message ----------------

/// Builds the Interest scenario of the next two tests: `old` exists before anything is published,
/// `late` is created after 1..=3 and reads from the start, then 4 and 5 are published.
fn interest_with_a_late_reader(e: &Engine) {
    create(e, "events", |c| c.retention = RetentionPolicy::Interest);
    subscribe(e, "old", "events", |_| {});
    for i in 1..=3 {
        publish(e, "events", &format!("m{i}"));
    }
    subscribe(e, "late", "events", |c| c.start = StartPosition::All);
    publish(e, "events", "m4");
    publish(e, "events", "m5");
    assert_eq!(retained(e, "events"), vec![1, 2, 3, 4, 5], "old has settled nothing yet");
}

/// The issue's rule: a message lives until every subscription that existed at its publish has settled
/// it. A subscription created later that reads from the start does not keep the older messages alive
/// (it loses them, EXPIRED, when the others have settled them), while the existing one still holds the
/// newer ones; a seek back does not bring that hold back either.
#[test]
fn a_later_subscription_reading_from_earliest_does_not_keep_older_messages_alive_on_an_interest_topic() {
    let (e, _) = engine();
    interest_with_a_late_reader(&e);
    let got = fetch(&e, "old", "c", 3);
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    ack_all(&e, "old", &got);
    assert_eq!(retained(&e, "events"), vec![4, 5], "late did not exist when 1..=3 were published");
    // old still holds 4 and 5; late holds them too (they came after it).
    e.seek(&name("late"), pubsub::engine::SeekTarget::Start).unwrap();
    assert_eq!(retained(&e, "events"), vec![4, 5]);
    ack_all(&e, "old", &fetch(&e, "old", "c", 10));
    assert_eq!(retained(&e, "events"), vec![4, 5], "late has not settled 4 and 5");
    let late = fetch(&e, "late", "c", 10);
    assert_eq!(seqs(&late), vec![4, 5], "1..=3 went with old's acks");
    assert_eq!(e.subscription_info(&name("late")).unwrap().counters.expired_unacked, 3);
    ack_all(&e, "late", &late);
    assert_eq!(retained(&e, "events"), Vec::<u64>::new());
}

/// Where each subscription began holding is part of its record, so the rule holds after a clean
/// restart and after a crash (the engine dropped without closing, as kill -9 leaves it).
#[test]
fn a_later_subscription_holds_nothing_older_after_a_restart_and_a_crash() {
    for crash in [false, true] {
        let dir = DataDir::new(if crash { "late-crash" } else { "late-clean" });
        let clock = clock();
        let e = open_at(&dir.0, &clock);
        interest_with_a_late_reader(&e);
        if !crash {
            e.close().unwrap();
        }
        drop(e);
        let findings = pubsub::store::verify(&dir.0).unwrap();
        assert!(findings.is_empty(), "crash {crash}: verify accepts the records: {findings:?}");
        let e = open_at(&dir.0, &clock);
        assert_eq!(retained(&e, "events"), vec![1, 2, 3, 4, 5], "crash {crash}: old still holds them all");
        let got = fetch(&e, "old", "c", 3);
        assert_eq!(seqs(&got), vec![1, 2, 3]);
        ack_all(&e, "old", &got);
        assert_eq!(retained(&e, "events"), vec![4, 5], "crash {crash}: late does not hold 1..=3");
        e.close().unwrap();
        drop(e);
        let e = open_at(&dir.0, &clock);
        assert_eq!(retained(&e, "events"), vec![4, 5], "crash {crash}: and the deletion is made again");
    }
}

// ----- max_msgs_per_key deletions made again at open are not counted again -------------------------

fn expired_unacked(e: &Engine, sub: &str) -> u64 {
    e.subscription_info(&name(sub)).unwrap().counters.expired_unacked
}

/// `max_msgs_per_key` deletions are not recorded: an open makes them again from the keys in the log.
/// A lagging subscription counted each of them as expired when it happened, and that count is in its
/// checkpoint; the open must not count them a second time — after a clean restart, and after a crash
/// (the engine dropped without closing), when the deletions since the last checkpoint are counted once
/// more because the crash took the counters back to it.
#[test]
fn expired_unacked_of_per_key_deletions_is_not_counted_again_after_a_restart_or_a_crash() {
    let dir = DataDir::new("per-key-count");
    let clock = clock();
    let e = open_at(&dir.0, &clock);
    create(&e, "table", |c| c.limits.max_msgs_per_key = Some(1));
    subscribe(&e, "lag", "table", |_| {});
    for (k, v) in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("b", "b2")] {
        keyed(&e, "table", Some(k), v);
    }
    assert_eq!(retained(&e, "table"), vec![3, 5]);
    assert_eq!(expired_unacked(&e, "lag"), 3, "a1, a2 and b1 expired in the lagging subscription");
    e.close().unwrap();
    drop(e);

    let e = open_at(&dir.0, &clock);
    assert_eq!(retained(&e, "table"), vec![3, 5]);
    assert_eq!(expired_unacked(&e, "lag"), 3, "after a clean restart");
    keyed(&e, "table", Some("a"), "a4");
    keyed(&e, "table", Some("b"), "b3");
    assert_eq!(retained(&e, "table"), vec![6, 7]);
    let before_crash = expired_unacked(&e, "lag");
    assert_eq!(before_crash, 5);
    drop(e); // no close: what kill -9 leaves

    let e = open_at(&dir.0, &clock);
    assert_eq!(retained(&e, "table"), vec![6, 7]);
    assert_eq!(expired_unacked(&e, "lag"), before_crash, "after a crash");
    let got = fetch(&e, "lag", "c", 10);
    assert_eq!(payloads(&got), ["a4", "b3"]);
    assert_eq!(expired_unacked(&e, "lag"), before_crash, "the cursor passes the gaps without counting");
    e.close().unwrap();
}

// ----- snapshots expire (SEMANTICS.md §9.8: "until they expire (default lifetime 7 days)") ----------

/// On the manual clock: a snapshot pins retention until its ttl runs out; the timer tick then removes
/// it and retention takes what it held; `seek --snapshot` on it fails saying it expired (also when the
/// seek comes before the tick). The default lifetime is 7 days; `never` stays; a ttl of 0 is refused.
#[test]
fn snapshots_expire_on_the_timer_releasing_their_pin_and_seek_on_one_fails_clearly() {
    let (e, clock) = engine();
    create(&e, "jobs", |c| c.retention = RetentionPolicy::WorkQueue);
    subscribe(&e, "w", "jobs", |_| {});
    for i in 1..=3 {
        publish(&e, "jobs", &format!("job {i}"));
    }
    let hour = Duration::from_secs(3600);
    let short = e.create_snapshot_for(name("short"), &name("w"), Some(hour)).unwrap();
    assert_eq!(short.expires, Some(short.created.plus(hour)));
    let default = e.create_snapshot(name("default"), &name("w")).unwrap();
    assert_eq!(default.expires, Some(default.created.plus(pubsub::engine::SNAPSHOT_TTL)));
    let kept = e.create_snapshot_for(name("kept"), &name("w"), None).unwrap();
    assert_eq!(kept.expires, None);
    let zero = e.create_snapshot_for(name("zero"), &name("w"), Some(Duration::ZERO)).unwrap_err();
    assert!(matches!(zero, EngineError::InvalidConfig(_)), "{zero}");
    ack_all(&e, "w", &fetch(&e, "w", "c", 10));
    assert_eq!(retained(&e, "jobs"), vec![1, 2, 3], "pinned by three snapshots");

    clock.advance(hour - Duration::from_secs(1));
    e.tick();
    assert_eq!(e.snapshots().len(), 3, "not yet");
    clock.advance(Duration::from_secs(1));
    e.tick();
    let names: Vec<String> = e.snapshots().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["default", "kept"]);
    let err = e.seek_snapshot(&name("w"), &name("short")).unwrap_err();
    assert!(matches!(err, EngineError::SnapshotExpired { .. }), "{err}");
    assert!(err.to_string().contains("snapshot \"short\" expired at 2026-"), "{err}");

    // The default lifetime: 7 days after it was taken. A seek that comes before the tick fails too,
    // and removes it.
    clock.advance(pubsub::engine::SNAPSHOT_TTL);
    let err = e.seek_snapshot(&name("w"), &name("default")).unwrap_err();
    assert!(matches!(err, EngineError::SnapshotExpired { .. }), "{err}");
    assert_eq!(e.snapshots().len(), 1, "only kept is left");
    assert_eq!(retained(&e, "jobs"), vec![1, 2, 3], "kept still pins them");
    e.tick();
    assert_eq!(e.snapshots().len(), 1, "never expires");
    e.seek_snapshot(&name("w"), &name("kept")).unwrap();
    e.delete_snapshot(&name("kept")).unwrap();
    ack_all(&e, "w", &fetch(&e, "w", "c", 10));
    assert_eq!(retained(&e, "jobs"), Vec::<u64>::new());
    let err = e.seek_snapshot(&name("w"), &name("kept")).unwrap_err();
    assert!(matches!(err, EngineError::NoSuchSnapshot(_)), "removed by hand is no such snapshot: {err}");
}

/// Expiry times are part of the snapshot's record: after a clean restart and after a crash each keeps
/// its own (a `never` one too), and one whose time ran out while the engine was down goes at the
/// first tick, releasing its pin.
#[test]
fn snapshot_expiry_survives_a_restart_and_a_crash() {
    for crash in [false, true] {
        let dir = DataDir::new(if crash { "snap-ttl-crash" } else { "snap-ttl-clean" });
        let clock = clock();
        let e = open_at(&dir.0, &clock);
        create(&e, "jobs", |c| c.retention = RetentionPolicy::WorkQueue);
        subscribe(&e, "w", "jobs", |_| {});
        publish(&e, "jobs", "job 1");
        let hour = Duration::from_secs(3600);
        let short = e.create_snapshot_for(name("short"), &name("w"), Some(hour)).unwrap();
        let kept = e.create_snapshot_for(name("kept"), &name("w"), None).unwrap();
        let default = e.create_snapshot(name("default"), &name("w")).unwrap();
        ack_all(&e, "w", &fetch(&e, "w", "c", 10));
        if !crash {
            e.close().unwrap();
        }
        drop(e);
        let findings = pubsub::store::verify(&dir.0).unwrap();
        assert!(findings.is_empty(), "crash {crash}: {findings:?}");
        let e = open_at(&dir.0, &clock);
        let mut got = e.snapshots();
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got, vec![default.clone(), kept.clone(), short.clone()], "crash {crash}");
        e.close().unwrap();
        drop(e);
        clock.advance(hour * 2);
        let e = open_at(&dir.0, &clock);
        assert_eq!(retained(&e, "jobs"), vec![1], "crash {crash}: pinned until the tick");
        e.tick();
        let names: Vec<String> = e.snapshots().iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["default", "kept"], "crash {crash}");
        e.delete_snapshot(&name("kept")).unwrap();
        e.delete_snapshot(&name("default")).unwrap();
        assert_eq!(retained(&e, "jobs"), Vec::<u64>::new(), "crash {crash}");
        e.close().unwrap();
    }
}
