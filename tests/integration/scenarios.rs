//! SEMANTICS.md §11 acceptance scenarios, each a named test on the manual clock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pubsub::engine::{
    AckMode, Assignment, Backoff, Clock, DeliveryState, Discard, EngineConfig, EngineError, Name,
    OrderingMode, Pattern, PublishRequest, SeekTarget, TapItem, TapOptions, TopicConfig,
};

use crate::support::{engine, engine_with, fetch, name, publish, seqs, subscribe};

#[test]
fn scenario_01_fan_out_every_subscription_sees_every_message() {
    let (e, _) = engine();
    for s in ["a", "b", "c"] {
        subscribe(&e, s, "t", |_| {});
    }
    for i in 0..10 {
        publish(&e, "t", &format!("m{i}"));
    }
    for s in ["a", "b", "c"] {
        let batch = fetch(&e, s, "c1", 100);
        assert_eq!(seqs(&batch), (1..=10).collect::<Vec<_>>());
        for d in batch {
            e.ack(&name(s), d.lease.unwrap()).unwrap();
        }
        let info = e.subscription_info(&name(s)).unwrap();
        assert_eq!((info.ack_floor, info.counters.acked, info.backlog), (10, 10, 0));
    }
}

#[test]
fn scenario_02_fan_in_captures_many_subjects_into_one_gap_free_log() {
    let (e, _) = engine_with(EngineConfig { auto_create: false, ..EngineConfig::default() });
    let mut config = TopicConfig::new(name("t"));
    config.subjects = vec![Pattern::parse("a.>").unwrap(), Pattern::parse("b.*").unwrap()];
    e.create_topic(config).unwrap();
    let mut per_subject: HashMap<&str, Vec<u64>> = HashMap::new();
    for i in 0..10 {
        for subject in ["a.x", "a.y.z", "b.q"] {
            let seq = publish(&e, subject, &format!("{subject}-{i}"));
            per_subject.entry(subject).or_default().push(seq);
        }
    }
    let all: Vec<u64> = e
        .browse(&name("t"), pubsub::engine::BrowseFrom::Seq(1), 100)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(all, (1..=30).collect::<Vec<_>>());
    for seqs in per_subject.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "per-publisher order kept: {seqs:?}");
    }
    let err = e.publish(PublishRequest::new(name("c.d"), "x")).unwrap_err();
    assert!(matches!(err, EngineError::Unroutable(_)), "{err}");
    assert_eq!(e.stats().unroutable, 1);
}

#[test]
fn scenario_03_competing_consumers_never_share_a_lease() {
    let (e, _) = engine();
    subscribe(&e, "work", "jobs", |c| c.max_in_flight = 30);
    for i in 0..300 {
        publish(&e, "jobs", &format!("job {i}"));
    }
    let consumers = ["c1", "c2", "c3"];
    let mut held: HashMap<u64, (&str, pubsub::engine::AckRef)> = HashMap::new();
    let mut acked = HashSet::new();
    let mut round = 0;
    while acked.len() < 300 {
        round += 1;
        assert!(round < 1000, "work queue did not drain");
        for c in consumers {
            for d in fetch(&e, "work", c, 7) {
                let seq = d.message.seq;
                let previous = held.insert(seq, (c, d.lease.unwrap()));
                assert!(previous.is_none(), "seq {seq} leased to {c} while {previous:?} holds it");
            }
        }
        // Settle about half of what is held, so leases of different consumers overlap in time.
        let settle: Vec<u64> = held.keys().copied().filter(|s| (s + round) % 2 == 0).collect();
        for seq in settle {
            let (_, lease) = held.remove(&seq).unwrap();
            e.ack(&name("work"), lease).unwrap();
            assert!(acked.insert(seq), "seq {seq} acked twice");
        }
        if held.len() >= 30 {
            for (seq, (_, lease)) in held.drain() {
                e.ack(&name("work"), lease).unwrap();
                acked.insert(seq);
            }
        }
    }
    let info = e.subscription_info(&name("work")).unwrap();
    assert_eq!((info.ack_floor, info.backlog, info.in_flight), (300, 0, 0));
    let per_consumer: Vec<u64> = info.consumers.iter().map(|c| c.delivered).collect();
    assert_eq!(per_consumer.iter().sum::<u64>(), 300, "no message delivered twice while leases were valid");
    assert!(per_consumer.iter().all(|&n| n > 0), "every consumer got work: {per_consumer:?}");
}

#[test]
fn scenario_04_deadline_expiry_redelivers_and_stale_lease_is_refused() {
    for strict in [true, false] {
        let (e, clock) = engine();
        subscribe(&e, "s", "t", |c| {
            c.ack_deadline = Duration::from_secs(1);
            c.backoff = Backoff::Immediate;
            c.strict_leases = strict;
        });
        publish(&e, "t", "hello");
        let first = fetch(&e, "s", "c1", 1);
        assert_eq!(first[0].attempt, 1);
        clock.advance(Duration::from_millis(999));
        e.tick();
        assert!(fetch(&e, "s", "c2", 1).is_empty(), "still leased before the deadline");
        clock.advance(Duration::from_millis(1));
        e.tick();
        let second = fetch(&e, "s", "c2", 1);
        assert_eq!((second[0].message.seq, second[0].attempt), (1, 2));
        let stale = e.ack(&name("s"), first[0].lease.unwrap());
        if strict {
            assert!(matches!(stale, Err(EngineError::StaleLease { seq: 1, .. })), "{stale:?}");
            e.ack(&name("s"), second[0].lease.unwrap()).unwrap();
        } else {
            stale.unwrap();
        }
        let info = e.subscription_info(&name("s")).unwrap();
        assert_eq!((info.counters.deadline_expired, info.ack_floor, info.in_flight), (1, 1, 0));
    }
}

#[test]
fn scenario_05_extend_postpones_redelivery_up_to_max_lease() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| {
        c.ack_deadline = Duration::from_secs(1);
        c.max_lease = Duration::from_secs(3);
        c.backoff = Backoff::Immediate;
    });
    publish(&e, "t", "slow job");
    let d = fetch(&e, "s", "c1", 1).remove(0);
    let start = d.deadline.unwrap().minus(Duration::from_secs(1));
    clock.advance(Duration::from_millis(800));
    let deadline = e.extend(&name("s"), d.lease.unwrap(), Duration::from_secs(2)).unwrap();
    assert_eq!(deadline, start.plus(Duration::from_millis(2800)));
    clock.advance(Duration::from_millis(200));
    e.tick();
    assert!(fetch(&e, "s", "c2", 1).is_empty(), "extended lease still holds at 1 s");
    clock.advance(Duration::from_millis(1700)); // t = 2.7 s, just before the extended deadline
    let capped = e.extend(&name("s"), d.lease.unwrap(), Duration::from_secs(2)).unwrap();
    assert_eq!(capped, start.plus(Duration::from_secs(3)), "max_lease caps the extension");
    clock.advance(Duration::from_millis(300)); // t = 3.0 s
    e.tick();
    let again = fetch(&e, "s", "c2", 1);
    assert_eq!(again[0].attempt, 2);
}

#[test]
fn scenario_06_exponential_backoff_doubles_to_its_cap_and_explicit_delay_wins() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| {
        c.backoff = Backoff::Exponential {
            min: Duration::from_secs(1),
            max: Duration::from_secs(4),
            factor: 2.0,
            jitter: 0.0,
        };
    });
    publish(&e, "t", "flaky");
    let mut offsets = Vec::new();
    for _ in 0..4 {
        let d = fetch(&e, "s", "c1", 1).remove(0);
        e.nack(&name("s"), d.lease.unwrap(), None).unwrap();
        let peek = e.peek(&name("s"), 1, 1).unwrap();
        let state = &peek.messages[0];
        assert_eq!(state.state, DeliveryState::Delayed);
        let offset = state.not_before.unwrap().since(clock.now());
        offsets.push(offset.as_secs());
        assert!(fetch(&e, "s", "c1", 1).is_empty(), "not redelivered before not_before");
        clock.advance(offset);
        e.tick();
    }
    assert_eq!(offsets, vec![1, 2, 4, 4]);
    let d = fetch(&e, "s", "c1", 1).remove(0);
    e.nack(&name("s"), d.lease.unwrap(), Some(Duration::ZERO)).unwrap();
    let again = fetch(&e, "s", "c1", 1);
    assert_eq!(again[0].attempt, 6, "nack(delay = 0) makes it available at once");
}

#[test]
fn scenario_07_max_deliveries_moves_the_message_to_the_dead_letter_topic() {
    let (e, _) = engine();
    subscribe(&e, "dlq-reader", "dead", |_| {});
    subscribe(&e, "s", "orders", |c| {
        c.max_deliveries = 3;
        c.dead_letter = Some(name("dead"));
    });
    e.publish(PublishRequest::new(name("orders"), "poison").with_header("kind", "bad")).unwrap();
    for attempt in 1..=3 {
        let d = fetch(&e, "s", "c1", 1).remove(0);
        assert_eq!(d.attempt, attempt);
        e.nack(&name("s"), d.lease.unwrap(), Some(Duration::ZERO)).unwrap();
    }
    assert!(fetch(&e, "s", "c1", 1).is_empty(), "never redelivered after dead-lettering");
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.ack_floor, info.counters.dead_lettered, info.backlog), (1, 1, 0));
    let dead = fetch(&e, "dlq-reader", "c1", 10);
    assert_eq!(dead.len(), 1);
    let h = dead[0].message.headers();
    assert_eq!(dead[0].message.payload.as_ref(), b"poison");
    assert_eq!(h.get("kind").map(String::as_str), Some("bad"));
    assert_eq!(h.get("x-dead-letter-delivery-count").map(String::as_str), Some("3"));
    assert_eq!(h.get("x-dead-letter-reason").map(String::as_str), Some("max_deliveries"));
    assert_eq!(h.get("x-dead-letter-source-topic").map(String::as_str), Some("orders"));
    assert_eq!(h.get("x-dead-letter-subscription").map(String::as_str), Some("s"));
    assert_eq!(h.get("x-dead-letter-seq").map(String::as_str), Some("1"));
}

#[test]
fn scenario_08_term_without_dead_letter_topic_terminates() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| c.ack_deadline = Duration::from_secs(1));
    publish(&e, "t", "fine");
    publish(&e, "t", "unprocessable");
    let batch = fetch(&e, "s", "c1", 2);
    e.term(&name("s"), batch[1].lease.unwrap(), "schema mismatch").unwrap();
    let peek = e.peek(&name("s"), 1, 2).unwrap();
    let states: Vec<_> = peek.messages.iter().map(|m| m.state).collect();
    assert_eq!(states, vec![DeliveryState::InFlight, DeliveryState::Terminated]);
    e.ack(&name("s"), batch[0].lease.unwrap()).unwrap();
    clock.advance(Duration::from_secs(120));
    e.tick();
    assert!(fetch(&e, "s", "c1", 10).is_empty(), "a terminated message is never redelivered");
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.counters.terminated, info.ack_floor), (1, 2));
}

#[test]
fn scenario_10_lag_arithmetic_matches_the_definitions() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| c.max_in_flight = 1000);
    let mut times = Vec::new();
    for i in 0..100 {
        publish(&e, "t", &format!("{i:04}"));
        times.push(clock.now());
        clock.advance(Duration::from_millis(10));
    }
    let batch = fetch(&e, "s", "c1", 40);
    for d in &batch[..30] {
        e.ack(&name("s"), d.lease.unwrap()).unwrap();
    }
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!(info.pending, 60);
    assert_eq!(info.in_flight, 10);
    assert_eq!(info.backlog, 70);
    assert_eq!(info.ack_floor, 30);
    assert_eq!(info.offset_lag, 70);
    assert_eq!(info.delivered_seq, 40);
    assert_eq!(info.backlog_bytes, Some(70 * 4));
    assert_eq!(info.oldest_unacked_age, Some(clock.now().since(times[30])), "age of seq 31");
    assert_eq!(info.oldest_pending_age, Some(clock.now().since(times[40])), "age of seq 41");
}

#[test]
fn scenario_12_seek_by_time_replays_from_that_moment() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| c.max_in_flight = 1000);
    let mut times = Vec::new();
    for i in 0..100 {
        times.push(clock.now());
        publish(&e, "t", &format!("{i}"));
        clock.advance(Duration::from_millis(5));
    }
    for d in fetch(&e, "s", "c1", 95) {
        e.ack(&name("s"), d.lease.unwrap()).unwrap();
    }
    let held = fetch(&e, "s", "c1", 5);
    assert_eq!(seqs(&held), vec![96, 97, 98, 99, 100]);
    let next = e.seek(&name("s"), SeekTarget::Time(times[49])).unwrap();
    assert_eq!(next, 50);
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.ack_floor, info.delivered_seq, info.in_flight, info.pending), (49, 49, 0, 51));
    let stale = e.ack(&name("s"), held[0].lease.unwrap());
    assert!(stale.is_err(), "leases from before the seek are invalid: {stale:?}");
    let replay = fetch(&e, "s", "c1", 100);
    assert_eq!(replay.first().map(|d| (d.message.seq, d.attempt)), Some((50, 1)));
    assert_eq!(replay.len(), 51);
}

#[test]
fn scenario_12_snapshot_restores_the_floor_and_applies_to_another_subscription() {
    let (e, _) = engine();
    subscribe(&e, "a", "t", |_| {});
    subscribe(&e, "b", "t", |_| {});
    for i in 0..40 {
        publish(&e, "t", &format!("{i}"));
    }
    let held = fetch(&e, "a", "c1", 30);
    for d in &held {
        let seq = d.message.seq;
        if seq <= 20 || seq == 25 {
            e.ack(&name("a"), d.lease.unwrap()).unwrap();
        }
    }
    let snap = e.create_snapshot(name("snap"), &name("a")).unwrap();
    assert_eq!((snap.topic.as_str(), snap.subscription.as_str()), ("t", "a"));
    let part = snap.partition(0).unwrap();
    assert_eq!((part.ack_floor, part.acked.clone()), (20, vec![[25, 25]]), "floor 20 plus the acked 25");
    let again = e.create_snapshot(name("snap"), &name("b")).unwrap_err();
    assert!(matches!(again, EngineError::SnapshotExists(_)), "{again}");

    // Settle everything, so the floor moves to 40; then go back to the snapshot.
    for d in held.iter().filter(|d| d.message.seq > 20 && d.message.seq != 25) {
        e.ack(&name("a"), d.lease.unwrap()).unwrap();
    }
    for d in fetch(&e, "a", "c1", 100) {
        e.ack(&name("a"), d.lease.unwrap()).unwrap();
    }
    assert_eq!(e.subscription_info(&name("a")).unwrap().ack_floor, 40);
    let in_flight = fetch(&e, "b", "c9", 1);
    assert_eq!(e.seek_snapshot(&name("a"), &name("snap")).unwrap(), 21);
    let info = e.subscription_info(&name("a")).unwrap();
    assert_eq!(
        (info.ack_floor, info.backlog, info.in_flight),
        (20, 19, 0),
        "floor back to 20; 25 stays acked"
    );
    let expected: Vec<u64> = (21..=40).filter(|&s| s != 25).collect();
    let replay = fetch(&e, "a", "c1", 100);
    assert_eq!(seqs(&replay), expected);
    assert!(replay.iter().all(|d| d.attempt == 1), "attempts start over after the restore");

    // Applied to another subscription of the same topic: its leases are void, it gets the same state.
    assert_eq!(e.seek_snapshot(&name("b"), &name("snap")).unwrap(), 21);
    assert!(e.ack(&name("b"), in_flight[0].lease.unwrap()).is_err(), "leases before the restore are void");
    assert_eq!(seqs(&fetch(&e, "b", "c1", 100)), expected);

    // Not across topics.
    subscribe(&e, "other", "u", |_| {});
    let err = e.seek_snapshot(&name("other"), &name("snap")).unwrap_err();
    assert!(err.to_string().contains("applies only to subscriptions of its own topic"), "{err}");
    assert_eq!(e.snapshots().len(), 1);
    e.delete_snapshot(&name("snap")).unwrap();
    let err = e.seek_snapshot(&name("a"), &name("snap")).unwrap_err();
    assert!(matches!(err, EngineError::NoSuchSnapshot(_)), "{err}");
}

#[test]
fn scenario_13_retention_expires_lagging_messages_or_refuses_when_discarding_new() {
    let (e, _) = engine();
    let mut config = TopicConfig::new(name("old"));
    config.limits.max_msgs = Some(5);
    e.create_topic(config).unwrap();
    subscribe(&e, "lagging", "old", |_| {});
    for i in 0..10 {
        publish(&e, "old", &format!("{i}"));
    }
    let topic = e.topic_info(&name("old")).unwrap();
    assert_eq!((topic.first_seq, topic.head_seq, topic.messages), (6, 10, 5));
    let info = e.subscription_info(&name("lagging")).unwrap();
    assert_eq!(info.counters.expired_unacked, 5);
    assert_eq!((info.ack_floor, info.pending), (5, 5), "floor and cursor move to first_seq - 1");
    assert_eq!(seqs(&fetch(&e, "lagging", "c1", 10)), vec![6, 7, 8, 9, 10]);

    let mut config = TopicConfig::new(name("new"));
    config.limits.max_msgs = Some(5);
    config.discard = Discard::New;
    e.create_topic(config).unwrap();
    for i in 0..5 {
        publish(&e, "new", &format!("{i}"));
    }
    let err = e.publish(PublishRequest::new(name("new"), "sixth")).unwrap_err();
    assert!(matches!(err, EngineError::TopicFull { .. }), "{err}");
    assert!(err.to_string().contains("max_msgs 5"), "{err}");
    assert_eq!(e.topic_info(&name("new")).unwrap().counters.rejected_full, 1);
}

/// Scenario 13 with the limits crossed inside one publish batch (they are enforced once at its end):
/// the same victims, counts and floors as publishing one by one, per partition, and a filtered
/// subscription still settles what it does not cover.
#[test]
fn scenario_13_a_batch_over_the_limit_expires_the_same_messages_as_single_publishes() {
    let (e, _) = engine();
    let mut config = TopicConfig::new(name("batched"));
    config.limits.max_msgs = Some(5);
    config.partitions = 2;
    e.create_topic(config).unwrap();
    subscribe(&e, "lagging", "batched", |_| {});
    subscribe(&e, "evens", "batched", |c| c.attribute_filter = Some(r#"attributes.kind = "even""#.into()));
    let batch = (0..24)
        .map(|i| {
            let kind = if i % 2 == 0 { "even" } else { "odd" };
            let mut req = PublishRequest::new(name("batched"), format!("{i}")).with_header("kind", kind);
            req.options.partition = Some(i % 2);
            req
        })
        .collect();
    let receipts = e.publish_batch(batch).unwrap();
    assert_eq!(receipts.len(), 24);
    let topic = e.topic_info(&name("batched")).unwrap();
    assert_eq!(topic.messages, 10, "five kept in each partition");
    assert_eq!(topic.partition_info.len(), 2);
    for p in &topic.partition_info {
        assert_eq!((p.first_seq, p.head_seq), (8, 12), "partition {}", p.partition);
    }
    let lagging = e.subscription_info(&name("lagging")).unwrap();
    assert_eq!((lagging.counters.expired_unacked, lagging.pending), (14, 10));
    let evens = e.subscription_info(&name("evens")).unwrap();
    assert_eq!(evens.pending, 5, "only partition 0 holds even messages");
    let delivered = fetch(&e, "evens", "c1", 20);
    assert_eq!(delivered.len(), 5);
    assert!(delivered.iter().all(|d| d.message.partition == 0 && d.message.seq >= 8));
}

#[test]
fn scenario_15_attribute_filter_settles_non_matching_messages_as_filtered() {
    let (e, _) = engine();
    let expr = r#"attributes.region = "eu" AND NOT hasPrefix(attributes.kind, "test")"#;
    subscribe(&e, "eu", "orders", |c| c.attribute_filter = Some(expr.into()));
    subscribe(&e, "all", "orders", |_| {});
    let cases = [("eu", "order"), ("us", "order"), ("eu", "test-run"), ("eu", "refund"), ("", "order")];
    for (i, (region, kind)) in cases.iter().enumerate() {
        let mut req = PublishRequest::new(name("orders"), format!("{i}"));
        if !region.is_empty() {
            req.headers.insert("region".into(), (*region).into());
        }
        req.headers.insert("kind".into(), (*kind).into());
        e.publish(req).unwrap();
    }
    let info = e.subscription_info(&name("eu")).unwrap();
    assert_eq!(info.attribute_filter.as_deref(), Some(expr));
    assert_eq!((info.backlog, info.pending), (2, 2), "only seqs 1 and 4 are covered");
    let batch = fetch(&e, "eu", "c1", 10);
    assert_eq!(seqs(&batch), vec![1, 4]);
    for d in batch {
        e.ack(&name("eu"), d.lease.unwrap()).unwrap();
    }
    let info = e.subscription_info(&name("eu")).unwrap();
    assert_eq!(
        (info.ack_floor, info.backlog, info.counters.filtered),
        (5, 0, 3),
        "the floor passes FILTERED"
    );
    let peek = e.peek(&name("all"), 1, 10).unwrap();
    assert_eq!(peek.messages.len(), 5, "an unfiltered subscription covers all five");
    assert_eq!(e.subscription_info(&name("all")).unwrap().backlog, 5);

    let mut bad = pubsub::engine::SubscriptionConfig::new(name("bad"), name("orders"));
    bad.attribute_filter = Some(r#"attributes.region = eu"#.into());
    let err = e.create_subscription(bad).unwrap_err();
    assert!(matches!(err, EngineError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("column 21: expected a string in double quotes, found `eu`"), "{err}");
}

#[tokio::test]
async fn scenario_19_lagging_tap_is_told_what_it_missed_and_groups_share() {
    let (e, _) = engine();
    let mut tap = e.tap(vec![Pattern::parse("t").unwrap()], TapOptions { buffer: 4, group: None }).unwrap();
    for i in 0..10 {
        publish(&e, "t", &format!("{i}"));
    }
    assert_eq!(tap.recv().await, Some(TapItem::Lagged { skipped: 6 }));
    let mut got = Vec::new();
    for _ in 0..4 {
        match tap.try_recv() {
            Some(TapItem::Message(m)) => got.push(m.seq),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(got, vec![7, 8, 9, 10]);
    assert_eq!(e.stats().tap_lagged, 6);

    let group = || TapOptions { buffer: 64, group: Some("workers".into()) };
    let mut a = e.tap(vec![Pattern::parse("g.*").unwrap()], group()).unwrap();
    let mut b = e.tap(vec![Pattern::parse("g.*").unwrap()], group()).unwrap();
    for i in 0..10 {
        let receipt = e.publish(PublishRequest::new(name("g.x"), format!("{i}"))).unwrap();
        assert_eq!(receipt.taps, 1, "a group counts as one listener per message");
    }
    let mut seen = drain(&mut a);
    seen.extend(drain(&mut b));
    seen.sort_unstable();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "each message reached exactly one member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_20_push_http_204_acks_500_nacks_with_push_backoff_and_silence_nacks_at_the_deadline() {
    use crate::push::{Reply, Seen, Server, hosted, publish, push_sub, wait_info};
    // "ok" is answered 204; "fail" 500 on its first attempt; "silent" not before its ack deadline on
    // its first attempt. Every retry is answered 204.
    let server = Server::start(|s| match (s.payload().as_str(), s.attempt()) {
        ("fail", 1) => Reply::status(500),
        ("silent", 1) => Reply { status: 204, delay: Duration::from_secs(30), location: None },
        _ => Reply::status(204),
    })
    .await;
    let (e, _host) = hosted();
    push_sub(&e, "hook", &server.url("/push"), |c| {
        c.ack_deadline = Duration::from_millis(400);
        c.backoff = Backoff::List(vec![Duration::from_millis(100)]);
    });
    publish(&e, "ok");
    let info = wait_info(&e, "hook", |i| i.ack_floor == 1).await;
    assert_eq!(info.push.as_ref().map(|p| (p.succeeded, p.last_status)), Some((1, Some(204))));

    publish(&e, "fail");
    let info = wait_info(&e, "hook", |i| i.push.as_ref().is_some_and(|p| p.failed == 1)).await;
    let push = info.push.unwrap();
    assert_eq!(push.last_status, Some(500));
    assert!(push.slowdown_ms >= 100, "the push backoff is engaged: {push:?}");
    let info = wait_info(&e, "hook", |i| i.ack_floor == 2).await;
    assert_eq!(info.push.as_ref().map(|p| p.slowdown_ms), Some(0));

    publish(&e, "silent");
    let info = wait_info(&e, "hook", |i| i.ack_floor == 3).await;
    let push = info.push.unwrap();
    assert_eq!((push.attempts, push.succeeded, push.failed), (5, 3, 2));
    assert!(push.last_error.is_some_and(|e| e.contains("ack deadline")));
    let seen = server.seen();
    let attempts: Vec<(String, u64)> = seen.iter().map(|s| (s.payload(), s.attempt())).collect();
    let expected = [("ok", 1), ("fail", 1), ("fail", 2), ("silent", 1), ("silent", 2)];
    assert_eq!(attempts, expected.map(|(p, a)| (p.to_string(), a)));
    let silent: Vec<&Seen> = seen.iter().filter(|s| s.payload() == "silent").collect();
    assert!(silent[1].at - silent[0].at >= Duration::from_millis(400), "nacked before the ack deadline");
}

/// Scenario 18, on one partition and on several: a repeated msg_id inside the window answers with the
/// first publish's position and appends nothing; after the window it is a new message.
#[test]
fn scenario_18_dedup_within_the_window_returns_the_original_position_and_after_it_appends() {
    let (e, clock) = engine();
    let first = e.publish(PublishRequest::new(name("t"), "a").with_msg_id("order-1")).unwrap();
    let again = e.publish(PublishRequest::new(name("t"), "a").with_msg_id("order-1")).unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    assert_eq!(e.topic_info(&name("t")).unwrap().messages, 1, "one record appended");

    let mut config = TopicConfig::new(name("parts"));
    config.partitions = 4;
    e.create_topic(config).unwrap();
    let keyed = || PublishRequest::new(name("parts"), "b").with_key("customer-7").with_msg_id("order-2");
    let original = e.publish(keyed()).unwrap();
    let mut unkeyed = PublishRequest::new(name("parts"), "b").with_msg_id("order-2");
    unkeyed.options.partition = Some((original.partition + 1) % 4);
    for repeat in [keyed(), unkeyed] {
        let receipt = e.publish(repeat).unwrap();
        assert_eq!(
            (receipt.partition, receipt.seq, receipt.duplicate),
            (original.partition, original.seq, true)
        );
    }
    assert_eq!(e.topic_info(&name("parts")).unwrap().messages, 1);

    clock.advance(Duration::from_secs(121));
    let later = e.publish(PublishRequest::new(name("t"), "a").with_msg_id("order-1")).unwrap();
    assert_eq!((later.seq, later.duplicate), (2, false));
    assert_eq!(e.topic_info(&name("t")).unwrap().messages, 2, "two records after the window");
    assert!(!e.publish(keyed()).unwrap().duplicate);
    assert_eq!(e.topic_info(&name("parts")).unwrap().messages, 2);
}

#[test]
fn ack_none_subscription_settles_at_dispatch() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.ack = AckMode::None);
    for i in 0..5 {
        publish(&e, "t", &format!("{i}"));
    }
    let batch = fetch(&e, "s", "c1", 10);
    assert!(batch.iter().all(|d| d.lease.is_none()));
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.ack_floor, info.in_flight, info.backlog), (5, 0, 0));
}

#[test]
fn reserved_and_malformed_names_are_refused_with_the_name_quoted() {
    let err = Name::new("a..b").unwrap_err().to_string();
    assert!(err.contains("\"a..b\""), "{err}");
    let err = Name::new("$sys.x").unwrap_err().to_string();
    assert!(err.contains("$sys.x"), "{err}");
}

fn drain(tap: &mut pubsub::engine::TapReceiver) -> Vec<u64> {
    std::iter::from_fn(|| tap.try_recv())
        .filter_map(|i| match i {
            TapItem::Message(m) => Some(m.seq),
            TapItem::Lagged { .. } => None,
        })
        .collect()
}

#[test]
fn scenario_09_per_key_ordering_a_nack_blocks_only_its_own_key() {
    let (e, _) = engine();
    let keyed = |key: &str, payload: &str| {
        PublishRequest::new(name("t"), payload.to_string()).with_key(key.to_string())
    };
    for sub in ["s", "d"] {
        subscribe(&e, sub, "t", |c| {
            c.ordering = OrderingMode::PerKey;
            c.backoff = Backoff::Immediate;
            if sub == "d" {
                c.max_deliveries = 2;
                c.dead_letter = Some(name("dlq"));
            }
        });
    }
    e.publish(keyed("k", "m1")).unwrap();
    e.publish(keyed("k", "m2")).unwrap();
    e.publish(keyed("j", "m3")).unwrap();
    // m2 waits behind m1; m3, another key, goes.
    let first = fetch(&e, "s", "c", 10);
    assert_eq!(seqs(&first), vec![1, 3]);
    e.nack(&name("s"), first[0].lease.unwrap(), None).unwrap();
    // m1 comes back, m2 still waits, m3 is unaffected.
    let again = fetch(&e, "s", "c", 10);
    assert_eq!(seqs(&again), vec![1]);
    assert_eq!(again[0].attempt, 2);
    e.ack(&name("s"), first[1].lease.unwrap()).unwrap();
    assert!(fetch(&e, "s", "c", 10).is_empty(), "m2 must wait for m1");
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.in_flight, info.pending, info.backlog), (1, 1, 2));
    e.ack(&name("s"), again[0].lease.unwrap()).unwrap();
    let last = fetch(&e, "s", "c", 10);
    assert_eq!(seqs(&last), vec![2]);
    e.ack(&name("s"), last[0].lease.unwrap()).unwrap();
    assert_eq!(e.subscription_info(&name("s")).unwrap().ack_floor, 3);

    // Dead-lettering m1 unblocks its key too.
    let d = fetch(&e, "d", "c", 10);
    assert_eq!(seqs(&d), vec![1, 3]);
    e.nack(&name("d"), d[0].lease.unwrap(), None).unwrap();
    let d2 = fetch(&e, "d", "c", 10);
    assert_eq!(seqs(&d2), vec![1]);
    e.nack(&name("d"), d2[0].lease.unwrap(), None).unwrap();
    let d3 = fetch(&e, "d", "c", 10);
    assert_eq!(seqs(&d3), vec![2], "m1 was dead-lettered: m2 is next");
    assert_eq!(e.subscription_info(&name("d")).unwrap().counters.dead_lettered, 1);
}

#[test]
fn strict_ordering_keeps_one_message_in_flight_per_partition() {
    let (e, _) = engine();
    let mut topic = TopicConfig::new(name("t"));
    topic.partitions = 2;
    e.create_topic(topic).unwrap();
    subscribe(&e, "s", "t", |c| {
        c.ordering = OrderingMode::Strict;
        c.backoff = Backoff::Immediate;
    });
    for i in 0..6 {
        e.publish(PublishRequest::new(name("t"), format!("m{i}"))).unwrap();
    }
    let mut order: HashMap<u32, Vec<u64>> = HashMap::new();
    for round in 0..4 {
        let batch = fetch(&e, "s", "c", 10);
        assert_eq!(batch.len(), 2, "one per partition (round {round})");
        let parts: HashSet<u32> = batch.iter().map(|d| d.message.partition).collect();
        assert_eq!(parts.len(), 2);
        if round == 0 {
            // A nack keeps the partition's turn: the same message comes back first.
            e.nack(&name("s"), batch[0].lease.unwrap(), None).unwrap();
            e.nack(&name("s"), batch[1].lease.unwrap(), None).unwrap();
            continue;
        }
        for d in batch {
            order.entry(d.message.partition).or_default().push(d.message.seq);
            e.ack(&name("s"), d.lease.unwrap()).unwrap();
        }
    }
    assert_eq!(order[&0], vec![1, 2, 3]);
    assert_eq!(order[&1], vec![1, 2, 3]);
    assert!(fetch(&e, "s", "c", 10).is_empty());
}

#[test]
fn ordering_needs_acks() {
    let (e, _) = engine();
    let mut config = pubsub::engine::SubscriptionConfig::new(name("s"), name("t"));
    config.ordering = OrderingMode::PerKey;
    config.ack = AckMode::None;
    let err = e.create_subscription(config).unwrap_err().to_string();
    assert!(err.contains("ordering") && err.contains("ack"), "{err}");
}

/// Cumulative / Kafka mode (SEMANTICS.md §9.5, scenario 11): PartitionExclusive + Cumulative over two
/// partitions and two consumers; each owns one partition; a cumulative ack through 10 commits 11; when
/// the owner of partition 0 leaves, the survivor takes it over, resumes at 11, and what was in flight
/// above 10 is redelivered.
#[test]
fn scenario_11_cumulative_kafka_mode_rebalance_resumes_at_the_committed_offset() {
    let (e, _) = engine();
    let mut topic = TopicConfig::new(name("t"));
    topic.partitions = 2;
    e.create_topic(topic).unwrap();
    subscribe(&e, "g", "t", |c| {
        c.assignment = Assignment::PartitionExclusive;
        c.ack = AckMode::Cumulative;
    });
    // Both consumers join before anything is published: a owns partition 0, b partition 1.
    assert!(fetch(&e, "g", "a", 100).is_empty());
    assert!(fetch(&e, "g", "b", 100).is_empty());
    let owners = |e: &pubsub::engine::Engine| -> Vec<Option<String>> {
        e.subscription_info(&name("g")).unwrap().partitions.iter().map(|p| p.owner.clone()).collect()
    };
    assert_eq!(owners(&e), vec![Some("a".into()), Some("b".into())]);
    for i in 0..15 {
        for p in 0..2 {
            let mut req = PublishRequest::new(name("t"), format!("p{p}-m{i}"));
            req.options.partition = Some(p);
            e.publish(req).unwrap();
        }
    }
    let a = fetch(&e, "g", "a", 100);
    let b = fetch(&e, "g", "b", 100);
    assert!(a.iter().all(|d| d.message.partition == 0), "a owns partition 0 only");
    assert!(b.iter().all(|d| d.message.partition == 1), "b owns partition 1 only");
    assert_eq!(seqs(&a), (1..=15).collect::<Vec<_>>());
    assert_eq!(seqs(&b), (1..=15).collect::<Vec<_>>());

    // ack_cumulative(p0, 10): committed = 11 (the ack floor is 10).
    assert_eq!(e.ack_cumulative(&name("g"), "a", 0, 10).unwrap(), 10);
    let info = e.subscription_info(&name("g")).unwrap();
    assert_eq!(info.partitions[0].ack_floor, 10);
    assert_eq!(info.partitions[1].ack_floor, 0);

    // a leaves: b owns both partitions and resumes partition 0 at 11, 11..=15 redelivered.
    e.detach(&name("g"), "a");
    assert_eq!(owners(&e), vec![Some("b".into()), Some("b".into())]);
    let again = fetch(&e, "g", "b", 100);
    assert_eq!(seqs(&again), vec![11, 12, 13, 14, 15]);
    assert!(again.iter().all(|d| d.message.partition == 0 && d.attempt == 2), "{again:?}");
    // b's own partition was not disturbed: nothing of partition 1 came back.
    assert_eq!(e.ack_cumulative(&name("g"), "b", 1, 15).unwrap(), 15);
    assert_eq!(e.ack_cumulative(&name("g"), "b", 0, 15).unwrap(), 5);
    let info = e.subscription_info(&name("g")).unwrap();
    assert_eq!((info.partitions[0].ack_floor, info.partitions[1].ack_floor), (15, 15));
    assert_eq!(info.backlog, 0);
}
