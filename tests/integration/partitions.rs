//! Partitions and keys (issue 24, point 1): where messages land, positions that carry their partition,
//! lag per partition, growing a topic, and all of it across a restart of a durable engine and on the
//! command line.

use std::collections::BTreeMap;

use bytes::Bytes;
use pubsub::engine::{
    BrowseFrom, Engine, EngineError, ManualClock, PublishRequest, SeekTarget, StartPosition,
    SubscriptionConfig, Timestamp, TopicConfig,
};

use crate::support::{DataDir, Home, engine, fetch, name, open_engine};

fn topic_of(e: &Engine, topic: &str, partitions: u32) {
    let mut config = TopicConfig::new(name(topic));
    config.partitions = partitions;
    e.create_topic(config).unwrap();
}

fn keyed(topic: &str, key: &str, payload: &str) -> PublishRequest {
    let mut req = PublishRequest::new(name(topic), payload.to_string());
    req.key = Some(Bytes::from(key.to_string()));
    req
}

fn to_partition(topic: &str, partition: u32, payload: &str) -> PublishRequest {
    let mut req = PublishRequest::new(name(topic), payload.to_string());
    req.options.partition = Some(partition);
    req
}

fn sub_all(e: &Engine, sub: &str, topic: &str) {
    let mut config = SubscriptionConfig::new(name(sub), name(topic));
    config.start = StartPosition::All;
    e.create_subscription(config).unwrap();
}

#[test]
fn a_key_always_lands_in_the_partition_its_murmur2_hash_names() {
    let (e, _) = engine();
    topic_of(&e, "t", 8);
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..3 {
        for k in 0..40 {
            let key = format!("user-{k}");
            let receipt = e.publish(keyed("t", &key, &format!("{round}"))).unwrap();
            assert_eq!(receipt.partition, TopicConfig::partition_of_key(key.as_bytes(), 8));
            if let Some(p) = seen.insert(key.clone(), receipt.partition) {
                assert_eq!(p, receipt.partition, "{key} moved");
            }
        }
    }
    // 40 keys over 8 partitions: every partition gets some.
    let used: std::collections::BTreeSet<u32> = seen.values().copied().collect();
    assert_eq!(used.len(), 8, "{seen:?}");
    // Kafka's default partitioner puts "foobar" here too: (murmur2 & 0x7fffffff) % 8.
    assert_eq!(TopicConfig::partition_of_key(b"foobar", 8), ((-790_332_482_i32 as u32) & 0x7fff_ffff) % 8);
    let info = e.topic_info(&name("t")).unwrap();
    assert_eq!(info.partitions, 8);
    assert_eq!(info.messages, 120);
    assert_eq!(info.partition_info.iter().map(|p| p.messages).sum::<u64>(), 120);
}

#[test]
fn unkeyed_messages_take_turns_and_an_explicit_partition_wins() {
    let (e, _) = engine();
    topic_of(&e, "t", 3);
    let parts: Vec<(u32, u64)> = (0..6)
        .map(|i| {
            let r = e.publish(PublishRequest::new(name("t"), format!("m{i}"))).unwrap();
            (r.partition, r.seq)
        })
        .collect();
    assert_eq!(parts, vec![(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]);
    // --partition overrides the key too.
    let mut req = keyed("t", "foobar", "x");
    req.options.partition = Some(2);
    assert_eq!(e.publish(req).unwrap().partition, 2);
    let err = e.publish(to_partition("t", 3, "x")).unwrap_err();
    assert!(matches!(err, EngineError::NoSuchPartition { partition: 3, .. }), "{err}");
    assert!(err.to_string().contains("has no partition 3"), "{err}");
    // A topic of one partition takes partition 0 and refuses any other.
    assert_eq!(e.publish(to_partition("one", 0, "x")).unwrap().partition, 0);
    assert!(e.publish(to_partition("one", 1, "x")).is_err());
}

#[test]
fn a_subscription_reads_every_partition_and_reports_lag_in_each_and_in_total() {
    let (e, _) = engine();
    topic_of(&e, "t", 4);
    sub_all(&e, "s", "t");
    for p in 0..4u32 {
        for i in 0..=p {
            e.publish(to_partition("t", p, &format!("{p}-{i}"))).unwrap();
        }
    }
    // 1 + 2 + 3 + 4 = 10 messages; deliver all, ack those of partitions 0 and 2.
    let batch = fetch(&e, "s", "c", 100);
    assert_eq!(batch.len(), 10);
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for d in &batch {
        per_partition.entry(d.message.partition).or_default().push(d.message.seq);
        let lease = d.lease.unwrap();
        assert_eq!((lease.partition, lease.seq), (d.message.partition, d.message.seq));
    }
    assert_eq!(per_partition[&3], vec![1, 2, 3, 4], "seq order within a partition");
    for d in batch.iter().filter(|d| d.message.partition % 2 == 0) {
        e.ack(&name("s"), d.lease.unwrap()).unwrap();
    }
    let info = e.subscription_info(&name("s")).unwrap();
    let lags: Vec<(u32, u64, u64, u64)> =
        info.partitions.iter().map(|p| (p.partition, p.ack_floor, p.head_seq, p.lag)).collect();
    assert_eq!(lags, vec![(0, 1, 1, 0), (1, 0, 2, 2), (2, 3, 3, 0), (3, 0, 4, 4)]);
    assert_eq!(info.offset_lag, 6);
    assert_eq!((info.in_flight, info.backlog, info.pending), (6, 6, 0));
    // An ack naming a partition the topic lacks is refused.
    let mut bad = batch[1].lease.unwrap();
    bad.partition = 9;
    assert!(matches!(e.ack(&name("s"), bad), Err(EngineError::NoSuchPartition { partition: 9, .. })));
}

#[test]
fn seek_to_a_partitions_seq_moves_only_that_partition() {
    let (e, _) = engine();
    topic_of(&e, "t", 2);
    sub_all(&e, "s", "t");
    for i in 0..3 {
        e.publish(to_partition("t", 0, &format!("a{i}"))).unwrap();
        e.publish(to_partition("t", 1, &format!("b{i}"))).unwrap();
    }
    for d in fetch(&e, "s", "c", 100) {
        e.ack(&name("s"), d.lease.unwrap()).unwrap();
    }
    let moved = e.seek_partitions(&name("s"), SeekTarget::Seq { partition: 1, seq: 2 }).unwrap();
    assert_eq!(moved, vec![(1, 2)]);
    let again: Vec<(u32, u64)> =
        fetch(&e, "s", "c", 100).iter().map(|d| (d.message.partition, d.message.seq)).collect();
    assert_eq!(again, vec![(1, 2), (1, 3)]);
    // A plain seq moves every partition.
    e.seek(&name("s"), SeekTarget::Each(3)).unwrap();
    let mut both: Vec<(u32, u64)> =
        fetch(&e, "s", "c", 100).iter().map(|d| (d.message.partition, d.message.seq)).collect();
    both.sort_unstable();
    assert_eq!(both, vec![(0, 3), (1, 3)]);
    assert!(e.seek(&name("s"), SeekTarget::Seq { partition: 2, seq: 1 }).is_err());
    // Browsing one partition, and all of them in publish order.
    let one = e.browse(&name("t"), BrowseFrom::At { partition: 1, seq: 2 }, 10).unwrap();
    assert_eq!(one.iter().map(|m| (m.partition, m.seq)).collect::<Vec<_>>(), vec![(1, 2), (1, 3)]);
    assert_eq!(e.browse(&name("t"), BrowseFrom::Seq(1), 100).unwrap().len(), 6);
    assert_eq!(e.browse(&name("t"), BrowseFrom::Last(2), 100).unwrap().len(), 2);
}

#[test]
fn partitions_grow_and_never_shrink() {
    let (e, _) = engine();
    topic_of(&e, "t", 2);
    sub_all(&e, "s", "t");
    e.publish(to_partition("t", 1, "before")).unwrap();
    let err = e.set_partitions(&name("t"), 1).unwrap_err().to_string();
    assert!(err.contains("never removed"), "{err}");
    let info = e.set_partitions(&name("t"), 4).unwrap();
    assert_eq!((info.partitions, info.partition_info.len()), (4, 4));
    e.publish(to_partition("t", 3, "after")).unwrap();
    let got: Vec<(u32, u64)> =
        fetch(&e, "s", "c", 10).iter().map(|d| (d.message.partition, d.message.seq)).collect();
    assert_eq!(got, vec![(1, 1), (3, 1)]);
    assert_eq!(e.subscription_info(&name("s")).unwrap().partitions.len(), 4);
    let mut too_many = TopicConfig::new(name("huge"));
    too_many.partitions = 100_000;
    assert!(e.create_topic(too_many).unwrap_err().to_string().contains("1 to 1024"));
}

#[test]
fn a_durable_partitioned_topic_keeps_its_partitions_positions_and_growth_across_restarts() {
    let dir = DataDir::new("restart");
    let clock = ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000));
    {
        let e = open_engine(&dir.0, &clock);
        topic_of(&e, "t", 3);
        sub_all(&e, "s", "t");
        for i in 0..9 {
            e.publish(keyed("t", &format!("k{i}"), &format!("m{i}"))).unwrap();
        }
        // Ack everything of partition 0, leave the rest in flight.
        for d in fetch(&e, "s", "c", 100) {
            if d.message.partition == 0 {
                e.ack(&name("s"), d.lease.unwrap()).unwrap();
            }
        }
        e.close().unwrap();
    }
    let before;
    {
        let e = open_engine(&dir.0, &clock);
        let info = e.topic_info(&name("t")).unwrap();
        assert_eq!(info.partitions, 3);
        let sub = e.subscription_info(&name("s")).unwrap();
        before = sub.partitions.iter().map(|p| (p.partition, p.ack_floor, p.head_seq)).collect::<Vec<_>>();
        assert_eq!(sub.partitions[0].lag, 0, "{before:?}");
        assert_eq!(sub.offset_lag, 9 - sub.partitions[0].head_seq);
        // What was in flight comes back; nothing of partition 0 does.
        let again = fetch(&e, "s", "c", 100);
        assert_eq!(again.len() as u64, sub.offset_lag);
        assert!(again.iter().all(|d| d.message.partition != 0));
        for d in again.iter().filter(|d| d.message.partition == 1) {
            e.ack(&name("s"), d.lease.unwrap()).unwrap();
        }
        e.set_partitions(&name("t"), 5).unwrap();
        e.publish(to_partition("t", 4, "new")).unwrap();
        // A crash: nothing is closed or checkpointed.
        let _ = e.simulate_power_loss();
    }
    let e = open_engine(&dir.0, &clock);
    let info = e.topic_info(&name("t")).unwrap();
    assert_eq!(info.partitions, 5);
    let sub = e.subscription_info(&name("s")).unwrap();
    let lags: Vec<(u32, u64)> = sub.partitions.iter().map(|p| (p.partition, p.lag)).collect();
    assert_eq!(lags.len(), 5);
    assert_eq!((lags[0].1, lags[1].1, lags[3].1), (0, 0, 0), "{lags:?}");
    assert_eq!(lags[4].1, 1, "{lags:?}");
    assert_eq!(sub.partitions[2].ack_floor, before[2].1);
    let left: Vec<u32> = fetch(&e, "s", "c", 100).iter().map(|d| d.message.partition).collect();
    assert!(left.iter().all(|&p| p == 2 || p == 4), "{left:?}");
    assert!(left.contains(&4));
    e.close().unwrap();
    drop(e);
    let findings = pubsub::store::verify(&dir.0).unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    // A partition's directory gone by hand is a finding.
    std::fs::remove_dir_all(dir.0.join("topics").join("t").join("3")).unwrap();
    let findings = pubsub::store::verify(&dir.0).unwrap();
    assert!(findings.iter().any(|f| f.contains("partition 3 of 5")), "{findings:?}");
}

#[test]
fn cli_partitions_keys_and_positions() {
    let home = Home::with_daemon("partitions-cli");
    let ok = |args: &[&str]| {
        let (code, out, err) = home.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        (out, err)
    };
    ok(&["topic", "create", "orders", "--partitions", "4"]);
    let (out, _) = ok(&["topic", "info", "orders", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["partitions"], 4);
    // A key picks its partition (the same as Kafka's for four partitions); --partition overrides.
    let want = TopicConfig::partition_of_key(b"customer-7", 4);
    ok(&["pub", "orders", "first", "--key", "customer-7"]);
    ok(&["pub", "orders", "second", "--key", "customer-7"]);
    let pinned = (want + 1) % 4;
    ok(&["pub", "orders", "pinned", "--partition", &pinned.to_string()]);
    let (code, _, err) = home.run(&["pub", "orders", "nowhere", "--partition", "4"]);
    assert_ne!(code, 0);
    assert!(err.contains("no partition 4"), "{err}");
    let (out, _) = ok(&["sub", "orders", "--from", "start", "--count", "3", "--json"]);
    let got: Vec<(u64, u64, String)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["partition"].as_u64().unwrap(),
                v["seq"].as_u64().unwrap(),
                v["payload"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(got.contains(&(u64::from(want), 1, "first".into())), "{got:?}");
    assert!(got.contains(&(u64::from(want), 2, "second".into())), "{got:?}");
    assert!(got.contains(&(u64::from(pinned), 1, "pinned".into())), "{got:?}");
    // Seqs count per partition: the listing and `topic info` give a range per partition, none summed.
    let (out, _) = ok(&["topic", "info", "orders"]);
    let row = |p: u32, messages: &str, range: &str| {
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().starts_with(&[&p.to_string(), messages, range]))
    };
    assert!(out.contains("per partition") && out.contains("PARTITION") && !out.contains("LEADER"), "{out}");
    assert!(row(want, "2", "1..2") && row(pinned, "1", "1..1"), "{out}");
    let (out, _) = ok(&["topics"]);
    assert!(out.lines().any(|l| l.starts_with("orders") && l.contains("per partition")), "{out}");
    // Replay of one partition from a seq: that partition's messages only, keys kept.
    let (_, err) = ok(&["replay", "orders", "--from", &format!("{want}:2"), "--into", "copy"]);
    assert!(err.contains("replayed 1 message"), "{err}");
    let (out, _) = ok(&["tail", "copy", "-n", "5"]);
    assert!(out.contains("second") && out.contains("key=customer-7") && !out.contains("first"), "{out}");
    // P:SEQ reads one partition from that seq; the text format shows #P:SEQ.
    let from = format!("{want}:2");
    let (out, _) = ok(&["sub", "orders", "--from", &from, "--count", "1"]);
    assert!(out.contains(&format!("#{want}:2")) && out.contains("second"), "{out}");
    let (code, _, err) = home.run(&["sub", "orders", "--from", "9:1", "--count", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("no partition 9"), "{err}");
    // A subscription: per-partition lag, seek of one partition.
    let (code, _, err) = home.run(&["subs", "create", "billing", "--topic", "orders", "--from", "2:5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("names one partition") && err.contains("pubsub seek billing 2:5"), "{err}");
    ok(&["subs", "create", "billing", "--topic", "orders", "--from", "start"]);
    let (out, _) = ok(&["sub-info", "billing"]);
    assert!(out.contains("PARTITION") && out.contains("4 partitions"), "{out}");
    let (_, err) = ok(&["seek", "billing", &format!("{pinned}:2")]);
    assert!(err.contains(&format!("partition {pinned} from seq 2")), "{err}");
    let (out, _) = ok(&["peek", "billing"]);
    assert!(out.contains(&format!("{want}:1")), "{out}");
    // Ordering is a subscription setting, kept with it.
    ok(&["subs", "create", "ordered", "--topic", "orders", "--ordering", "per-key"]);
    let (out, _) = ok(&["sub-info", "ordered"]);
    assert!(out.contains("per-key"), "{out}");
    let (code, _, err) =
        home.run(&["subs", "create", "bad", "--topic", "orders", "--ordering", "strict", "--ack", "none"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs acks"), "{err}");
    // Growing is allowed, shrinking refused with a reason.
    let (_, err) = ok(&["topic", "alter", "orders", "--partitions", "6"]);
    assert!(err.contains("6 partition"), "{err}");
    let (code, _, err) = home.run(&["topic", "alter", "orders", "--partitions", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never removed"), "{err}");
    let (code, _, err) = home.run(&["topic", "create", "zero", "--partitions", "0"]);
    assert_eq!(code, 2, "{err}");
    // The partitions survive a stop of the daemon.
    ok(&["serve", "stop"]);
    let (out, _) = ok(&["topic", "info", "orders", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["partitions"], 6);
    let (out, _) = ok(&["sub-info", "ordered", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ordering"], "per_key");
    assert_eq!(v["partitions"].as_array().map(Vec::len), Some(6));
    ok(&["serve", "stop"]);
}

/// A snapshot of a subscription over three partitions keeps each partition's floor and acked seqs, and
/// restoring it moves every partition back (the other subscription gets the same state).
#[test]
fn a_snapshot_keeps_and_restores_every_partitions_ack_state() {
    let (e, _) = engine();
    topic_of(&e, "t", 3);
    sub_all(&e, "a", "t");
    sub_all(&e, "b", "t");
    for i in 0..12 {
        e.publish(to_partition("t", i % 3, &format!("m{i}"))).unwrap();
    }
    // Partition p holds seqs 1..=4; ack seqs 1 and 3 in every partition, and also 2 in partition 1.
    let held = fetch(&e, "a", "c1", 100);
    assert_eq!(held.len(), 12);
    for d in &held {
        let (p, seq) = (d.message.partition, d.message.seq);
        if seq == 1 || seq == 3 || (p == 1 && seq == 2) {
            e.ack(&name("a"), d.lease.unwrap()).unwrap();
        }
    }
    let snap = e.create_snapshot(name("snap"), &name("a")).unwrap();
    let state: Vec<(u32, u64, Vec<[u64; 2]>)> =
        snap.partitions.iter().map(|p| (p.partition, p.ack_floor, p.acked.clone())).collect();
    assert_eq!(state, vec![(0, 1, vec![[3, 3]]), (1, 3, vec![]), (2, 1, vec![[3, 3]])]);

    // Everything settled, then back to the snapshot: what it had not settled comes again.
    for d in held.iter().filter(|d| {
        !(d.message.seq == 1 || d.message.seq == 3 || (d.message.partition == 1 && d.message.seq == 2))
    }) {
        e.ack(&name("a"), d.lease.unwrap()).unwrap();
    }
    assert_eq!(e.subscription_info(&name("a")).unwrap().backlog, 0);
    for sub in ["a", "b"] {
        e.seek_snapshot(&name(sub), &name("snap")).unwrap();
        let mut again: Vec<(u32, u64)> =
            fetch(&e, sub, "c2", 100).iter().map(|d| (d.message.partition, d.message.seq)).collect();
        again.sort_unstable();
        assert_eq!(again, vec![(0, 2), (0, 4), (1, 4), (2, 2), (2, 4)], "{sub}");
    }
}
