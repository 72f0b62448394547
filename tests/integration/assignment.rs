//! Assignment modes (issue 24, point 3): PartitionExclusive (partitions owned one consumer each,
//! rebalanced as consumers come and go) and SingleActive (one active consumer, the rest standing by),
//! on the engine by pull and by push, across a restart of a durable engine, and on the command line.
//! Scenario 11 itself is in `scenarios.rs`; the rebalance properties in `properties.rs`. The
//! assignment changes consumers are told (`assigned`/`revoked`) are checked here over ws:// and on
//! the command line, and in `engine/assign.rs` on the engine.

use std::collections::BTreeSet;
use std::time::Duration;

use pubsub::broker::{Broker, StreamItem, SubscribeRequest};
use pubsub::engine::{
    AckMode, Assignment, AttachOptions, Engine, EngineError, ManualClock, Pattern, PublishRequest,
    SubscriptionInfo, Timestamp, TopicConfig,
};
use pubsub::server::ServeConfig;

use crate::support::{DataDir, Home, engine, fetch, name, open_engine, seqs, stdout_lines, subscribe};

fn topic_of(e: &Engine, topic: &str, partitions: u32) {
    let mut config = TopicConfig::new(name(topic));
    config.partitions = partitions;
    e.create_topic(config).unwrap();
}

fn to_partition(e: &Engine, topic: &str, partition: u32, payload: &str) {
    let mut req = PublishRequest::new(name(topic), payload.to_string());
    req.options.partition = Some(partition);
    e.publish(req).unwrap();
}

fn info(e: &Engine, sub: &str) -> SubscriptionInfo {
    e.subscription_info(&name(sub)).unwrap()
}

fn owners(e: &Engine, sub: &str) -> Vec<Option<String>> {
    info(e, sub).partitions.iter().map(|p| p.owner.clone()).collect()
}

fn standby(e: &Engine, sub: &str) -> Vec<(String, bool)> {
    info(e, sub).consumers.iter().map(|c| (c.id.to_string(), c.standby)).collect()
}

#[test]
fn single_active_one_consumer_receives_and_a_standby_takes_over_what_it_held() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.assignment = Assignment::SingleActive);
    for i in 1..=5 {
        e.publish(PublishRequest::new(name("t"), format!("m{i}"))).unwrap();
    }
    let first = fetch(&e, "s", "a", 3);
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    // b stands by: nothing for it while a is attached, however much waits.
    assert!(fetch(&e, "s", "b", 10).is_empty());
    assert!(fetch(&e, "s", "c", 10).is_empty());
    assert_eq!(standby(&e, "s"), vec![("a".into(), false), ("b".into(), true), ("c".into(), true)]);
    assert_eq!(info(&e, "s").assignment, Assignment::SingleActive);
    e.ack(&name("s"), first[0].lease.unwrap()).unwrap();
    // a detaches: b (next in attach order) takes over, first with what a held, then the rest.
    e.detach(&name("s"), "a");
    assert_eq!(standby(&e, "s"), vec![("b".into(), false), ("c".into(), true)]);
    let taken = fetch(&e, "s", "b", 10);
    assert_eq!(seqs(&taken), vec![2, 3, 4, 5]);
    assert_eq!(taken.iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2, 2, 1, 1]);
    assert!(fetch(&e, "s", "c", 10).is_empty());
    // a's leases are stale: the message is b's now.
    assert!(matches!(e.ack(&name("s"), first[1].lease.unwrap()), Err(EngineError::StaleLease { .. })));
}

#[tokio::test]
async fn single_active_push_consumers_stand_by_until_the_active_one_is_dropped() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.assignment = Assignment::SingleActive);
    let attach = |id: &str| {
        e.attach(&name("s"), AttachOptions { consumer: Some(id.into()), ..AttachOptions::default() }).unwrap()
    };
    let mut a = attach("a");
    let mut b = attach("b");
    for i in 1..=4 {
        e.publish(PublishRequest::new(name("t"), format!("m{i}"))).unwrap();
    }
    let mut got_a = Vec::new();
    while let Some(d) = a.try_recv() {
        got_a.push(d);
    }
    assert_eq!(seqs(&got_a), vec![1, 2, 3, 4]);
    assert!(b.try_recv().is_none(), "b stands by");
    e.ack(&name("s"), got_a[0].lease.unwrap()).unwrap();
    drop(a);
    // The session ended: b takes over 2..=4 (a saw them, so they count as redeliveries).
    let mut got_b = Vec::new();
    while let Some(d) = b.try_recv() {
        got_b.push(d);
    }
    assert_eq!(seqs(&got_b), vec![2, 3, 4]);
    assert!(got_b.iter().all(|d| d.attempt == 2));
}

#[test]
fn partition_exclusive_a_joiner_takes_partitions_and_the_moved_in_flight_comes_back_to_it() {
    let (e, _) = engine();
    topic_of(&e, "t", 4);
    subscribe(&e, "g", "t", |c| c.assignment = Assignment::PartitionExclusive);
    // Alone, b owns every partition.
    assert!(fetch(&e, "g", "b", 100).is_empty());
    assert_eq!(owners(&e, "g"), vec![Some("b".into()); 4]);
    for p in 0..4 {
        for i in 0..3 {
            to_partition(&e, "t", p, &format!("p{p}-{i}"));
        }
    }
    let held = fetch(&e, "g", "b", 100);
    assert_eq!(held.len(), 12);
    // a joins: sorted by id, a gets partitions 0 and 1, b keeps 2 and 3. b's leases in 0 and 1 go back.
    let joined = fetch(&e, "g", "a", 100);
    assert_eq!(owners(&e, "g"), vec![Some("a".into()), Some("a".into()), Some("b".into()), Some("b".into())]);
    assert_eq!(joined.len(), 6);
    assert!(joined.iter().all(|d| d.message.partition < 2 && d.attempt == 2), "{joined:?}");
    // b's old leases on moved partitions are stale; on its own partitions they still settle.
    for d in &held {
        let outcome = e.ack(&name("g"), d.lease.unwrap());
        if d.message.partition < 2 {
            assert!(matches!(outcome, Err(EngineError::StaleLease { .. })), "{outcome:?}");
        } else {
            outcome.unwrap();
        }
    }
    for d in &joined {
        e.ack(&name("g"), d.lease.unwrap()).unwrap();
    }
    let i = info(&e, "g");
    assert_eq!(i.backlog, 0);
    assert!(i.partitions.iter().all(|p| p.ack_floor == 3), "{:?}", i.partitions);
    // A fifth consumer on four partitions owns nothing and stands by.
    for id in ["c", "d", "z"] {
        assert!(fetch(&e, "g", id, 100).is_empty());
    }
    let s = standby(&e, "g");
    assert_eq!(s.iter().filter(|(_, standby)| *standby).count(), 1, "{s:?}");
    assert!(s.contains(&("z".into(), true)), "{s:?}");
    // Growing the topic hands the new partition to someone.
    e.set_partitions(&name("t"), 5).unwrap();
    let o = owners(&e, "g");
    assert_eq!(o.len(), 5);
    assert!(o.iter().all(Option::is_some), "{o:?}");
    let distinct: BTreeSet<_> = o.iter().flatten().collect();
    assert_eq!(distinct.len(), 5, "five consumers, five partitions, one each: {o:?}");
}

#[tokio::test]
async fn partition_exclusive_push_consumers_each_receive_only_their_partitions() {
    let (e, _) = engine();
    topic_of(&e, "t", 4);
    subscribe(&e, "g", "t", |c| {
        c.assignment = Assignment::PartitionExclusive;
        c.ack = AckMode::Cumulative;
    });
    let attach = |id: &str| {
        e.attach(&name("g"), AttachOptions { consumer: Some(id.into()), ..AttachOptions::default() }).unwrap()
    };
    let mut one = attach("one");
    let mut two = attach("two");
    for i in 0..20 {
        to_partition(&e, "t", i % 4, &format!("m{i}"));
    }
    let drain = |c: &mut pubsub::engine::PushConsumer| {
        let mut parts = BTreeSet::new();
        let mut n = 0;
        while let Some(d) = c.try_recv() {
            parts.insert(d.message.partition);
            n += 1;
        }
        (parts, n)
    };
    assert_eq!(drain(&mut one), (BTreeSet::from([0, 1]), 10));
    assert_eq!(drain(&mut two), (BTreeSet::from([2, 3]), 10));
    // `one` goes; `two` gets its partitions from the committed floor (nothing was acked: all of them).
    drop(one);
    assert_eq!(drain(&mut two), (BTreeSet::from([0, 1]), 10));
    assert_eq!(owners(&e, "g"), vec![Some("two".into()); 4]);
}

#[test]
fn assignment_and_committed_floors_survive_a_restart_and_a_crash_and_ownership_is_rebuilt() {
    let dir = DataDir::new("restart");
    let clock = ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000));
    {
        let e = open_engine(&dir.0, &clock);
        let mut topic = TopicConfig::new(name("t"));
        topic.partitions = 2;
        topic.storage = pubsub::engine::StorageKind::File;
        e.create_topic(topic).unwrap();
        subscribe(&e, "g", "t", |c| {
            c.assignment = Assignment::PartitionExclusive;
            c.ack = AckMode::Cumulative;
        });
        subscribe(&e, "s", "t", |c| c.assignment = Assignment::SingleActive);
        assert!(fetch(&e, "g", "a", 10).is_empty());
        assert!(fetch(&e, "g", "b", 10).is_empty());
        for i in 0..6 {
            to_partition(&e, "t", i % 2, &format!("m{i}"));
        }
        fetch(&e, "g", "a", 10);
        fetch(&e, "g", "b", 10);
        assert_eq!(e.ack_cumulative(&name("g"), "a", 0, 2).unwrap(), 2);
        e.close().unwrap();
    }
    {
        let e = open_engine(&dir.0, &clock);
        assert_eq!(info(&e, "g").assignment, Assignment::PartitionExclusive);
        assert_eq!(info(&e, "s").assignment, Assignment::SingleActive);
        // Nobody is attached after a restart: nobody owns anything until consumers come back.
        assert_eq!(owners(&e, "g"), vec![None, None]);
        // They come back in the other order; ownership is by id, so it is the same as before.
        assert!(!fetch(&e, "g", "b", 10).is_empty());
        assert_eq!(owners(&e, "g"), vec![Some("b".into()), Some("b".into())]);
        let a = fetch(&e, "g", "a", 10);
        assert_eq!(owners(&e, "g"), vec![Some("a".into()), Some("b".into())]);
        // a resumes partition 0 above its committed floor: seq 3 only.
        assert_eq!(seqs(&a), vec![3]);
        assert!(a.iter().all(|d| d.message.partition == 0));
        e.ack_cumulative(&name("g"), "a", 0, 3).unwrap();
        let _ = e.simulate_power_loss();
    }
    let e = open_engine(&dir.0, &clock);
    let i = info(&e, "g");
    assert_eq!(i.assignment, Assignment::PartitionExclusive);
    assert_eq!(i.partitions[0].ack_floor, 3);
    assert_eq!(i.partitions[1].ack_floor, 0);
    e.close().unwrap();
    drop(e);
    let findings = pubsub::store::verify(&dir.0).unwrap();
    assert!(findings.is_empty(), "{findings:?}");
}

/// Waits until `sub-info` of `sub` shows `n` consumers.
fn wait_for_consumers(home: &Home, sub: &str, n: usize) {
    for _ in 0..200 {
        let (code, out, _) = home.run(&["sub-info", sub, "--json"]);
        if code == 0
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(out.trim())
            && v["consumers"].as_array().map(Vec::len) == Some(n)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{sub} never had {n} consumers");
}

#[test]
fn cli_partition_exclusive_consumers_each_receive_only_their_partition() {
    let home = Home::with_daemon("assignment-cli");
    let ok = |args: &[&str]| {
        let (code, out, err) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        (out, err)
    };
    ok(&["topic", "create", "orders", "--partitions", "2"]);
    ok(&["subs", "create", "grp", "--topic", "orders", "--assignment", "partition-exclusive"]);
    ok(&["subs", "create", "one", "--topic", "orders", "--assignment", "single-active"]);
    let (code, _, err) = home.run(&["subs", "create", "bad", "--topic", "orders", "--assignment", "sticky"]);
    assert_eq!(code, 2, "{err}");
    let (out, _) = ok(&["sub-info", "grp"]);
    assert!(out.contains("assignment") && out.contains("partition-exclusive"), "{out}");
    let (out, _) = ok(&["subs"]);
    assert!(out.contains("partition-exclusive") && out.contains("single-active"), "{out}");
    let spawn = |consumer: &str| {
        let mut child = home
            .cmd()
            .args([
                "sub",
                "orders",
                "--subscription",
                "grp",
                "--consumer",
                consumer,
                "--count",
                "3",
                "--json",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = stdout_lines(&mut child);
        (child, lines)
    };
    let (mut a, a_lines) = spawn("a");
    wait_for_consumers(&home, "grp", 1);
    let (mut b, b_lines) = spawn("b");
    wait_for_consumers(&home, "grp", 2);
    let (out, _) = ok(&["sub-info", "grp", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["assignment"], "partition_exclusive");
    let owners: Vec<&str> =
        v["partitions"].as_array().unwrap().iter().map(|p| p["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, vec!["a", "b"]);
    let (out, _) = ok(&["sub-info", "grp"]);
    assert!(out.contains("OWNER"), "{out}");
    for i in 0..3 {
        ok(&["pub", "orders", &format!("zero-{i}"), "--partition", "0"]);
        ok(&["pub", "orders", &format!("one-{i}"), "--partition", "1"]);
    }
    let collect = |rx: &std::sync::mpsc::Receiver<String>| -> Vec<(u64, String)> {
        (0..3)
            .map(|_| {
                let line = rx.recv_timeout(Duration::from_secs(20)).expect("a message");
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                (v["partition"].as_u64().unwrap(), v["payload"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let got_a = collect(&a_lines);
    let got_b = collect(&b_lines);
    assert_eq!(got_a, (0..3).map(|i| (0, format!("zero-{i}"))).collect::<Vec<_>>());
    assert_eq!(got_b, (0..3).map(|i| (1, format!("one-{i}"))).collect::<Vec<_>>());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    // The setting is kept across a stop of the daemon.
    ok(&["serve", "stop"]);
    let (out, _) = ok(&["sub-info", "one", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["assignment"], "single_active");
    ok(&["serve", "stop"]);
}

/// The next item of a remote stream, within a deadline (an open stream, not an error).
async fn next_item(stream: &mut pubsub::broker::DeliveryStream) -> StreamItem {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap()
}

/// A durable-subscription stream of `g` on topic `t` for `consumer`.
fn group_request(consumer: &str) -> SubscribeRequest {
    let mut req = SubscribeRequest::live(vec![Pattern::parse("t").unwrap()]);
    req.subscription = Some(name("g"));
    req.ack = AckMode::Explicit;
    req.consumer = Some(consumer.into());
    req
}

#[tokio::test]
async fn remote_consumers_hear_their_assignments_over_ws_as_local_ones_do() {
    let server = crate::server::start(ServeConfig::default()).await;
    topic_of(&server.engine, "t", 4);
    subscribe(&server.engine, "g", "t", |c| c.assignment = Assignment::PartitionExclusive);
    let (first, second) = (crate::server::client(&server).await, crate::server::client(&server).await);
    let mut a = first.subscribe(group_request("a")).await.unwrap();
    assert_eq!(next_item(&mut a).await, StreamItem::Assigned { partitions: vec![0, 1, 2, 3] });
    let mut b = second.subscribe(group_request("b")).await.unwrap();
    assert_eq!(next_item(&mut a).await, StreamItem::Revoked { partitions: vec![2, 3] });
    assert_eq!(next_item(&mut b).await, StreamItem::Assigned { partitions: vec![2, 3] });
    // Each then receives its own partitions' messages.
    for p in 0..4 {
        to_partition(&server.engine, "t", p, &format!("m{p}"));
    }
    let partitions = |items: [StreamItem; 2]| {
        items
            .iter()
            .map(|i| match i {
                StreamItem::Delivery(d) => d.message.partition,
                other => panic!("expected a delivery, got {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    let got_a = [next_item(&mut a).await, next_item(&mut a).await];
    let got_b = [next_item(&mut b).await, next_item(&mut b).await];
    assert_eq!(partitions(got_a), vec![0, 1]);
    assert_eq!(partitions(got_b), vec![2, 3]);
    // b leaves: a is given its partitions back, then what b left unacked there.
    drop(b);
    assert_eq!(next_item(&mut a).await, StreamItem::Assigned { partitions: vec![2, 3] });
    let again = [next_item(&mut a).await, next_item(&mut a).await];
    assert_eq!(partitions(again), vec![2, 3]);
}

#[tokio::test]
async fn only_clients_that_ask_in_hello_get_assignment_frames() {
    use crate::server::Raw;
    let server = crate::server::start(ServeConfig::default()).await;
    topic_of(&server.engine, "t", 2);
    subscribe(&server.engine, "g", "t", |c| c.assignment = Assignment::SingleActive);
    // A client from before these frames: its first pushed frame is the delivery.
    let mut old = Raw::hello(&server.url).await;
    old.send(r#"{"op":"subscribe","id":2,"patterns":["t"],"subscription":"g","consumer":"old"}"#).await;
    let sid = old.recv().await["result"]["sid"].as_u64().unwrap();
    to_partition(&server.engine, "t", 1, "one");
    let frame = old.recv().await;
    assert_eq!((frame["op"].as_str(), frame["sid"].as_u64()), (Some("deliver"), Some(sid)), "{frame}");
    // A client that asks hears that it is the active consumer when it takes over.
    let mut new = Raw::connect(&server.url).await;
    new.send(r#"{"op":"hello","id":1,"version":1,"assignments":true}"#).await;
    let welcome = new.recv().await;
    assert_eq!(welcome["assignments"].as_bool(), Some(true), "{welcome}");
    new.send(r#"{"op":"subscribe","id":2,"patterns":["t"],"subscription":"g","consumer":"new"}"#).await;
    let sid = new.recv().await["result"]["sid"].as_u64().unwrap();
    old.send(&format!(r#"{{"op":"unsubscribe","id":3,"sid":{}}}"#, frame["sid"])).await;
    assert_eq!(
        new.recv().await,
        serde_json::json!({"op": "assigned", "sid": sid, "partitions": [0, 1]}),
        "the standby took over"
    );
    let frame = new.recv().await;
    assert_eq!(frame["op"], "deliver", "then what the old consumer left unacked: {frame}");
}

#[test]
fn cli_sub_tells_its_assignment_on_stderr_and_keeps_stdout_for_messages() {
    let home = Home::with_daemon("assignment-notes");
    let ok = |args: &[&str]| {
        let (code, out, err) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    ok(&["topic", "create", "orders", "--partitions", "2"]);
    ok(&["subs", "create", "grp", "--topic", "orders", "--assignment", "partition-exclusive"]);
    for json in [false, true] {
        let mut args = vec!["sub", "orders", "--subscription", "grp", "--consumer", "a", "--count", "1"];
        if json {
            args.push("--json");
        }
        let child = home
            .cmd()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_consumers(&home, "grp", 1);
        ok(&["pub", "orders", &format!("hello-{json}"), "--partition", "1"]);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(stderr.lines().any(|l| l == "pubsub: assigned partitions 0, 1"), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "only the message on stdout: {stdout}");
        assert!(lines[0].contains(&format!("hello-{json}")), "{stdout}");
        if json {
            let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(v["partition"], 1);
        }
        // Gone before the next round, so the next `a` is a fresh member again.
        wait_for_consumers(&home, "grp", 0);
    }
}
