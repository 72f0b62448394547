//! Behaviour pinned after a review of the engine: each test names the failure it guards against.

use std::time::Duration;

use pubsub::engine::{
    AckMode, AttachOptions, Discard, EngineError, Lifetime, Pattern, PublishRequest, SeekTarget, TopicConfig,
};

use crate::support::{engine, fetch, name, publish, subscribe};

#[tokio::test]
async fn push_consumer_without_acks_keeps_receiving_past_its_prefetch() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.ack = AckMode::None);
    for i in 0..50 {
        publish(&e, "t", &format!("{i}"));
    }
    let mut consumer =
        e.attach(&name("s"), AttachOptions { consumer: None, prefetch: Some(4), limit: None }).unwrap();
    for expected in 1..=50 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await.unwrap().unwrap();
        assert_eq!(d.message.seq, expected);
    }
}

#[tokio::test]
async fn push_consumers_take_turns_on_messages_that_arrive_one_at_a_time_with_acks_between() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.ack = AckMode::Explicit);
    let attach = |id: &str| {
        let opts = AttachOptions { consumer: Some(id.into()), prefetch: Some(8), limit: None };
        e.attach(&name("s"), opts).unwrap()
    };
    let mut consumers = [attach("a"), attach("b"), attach("c")];
    // Each message is published alone and acked before the next: whoever got it, the next one goes to
    // the consumer after it (an ack with nothing to hand out moves nobody's turn).
    let mut order = Vec::new();
    for i in 0..7 {
        publish(&e, "t", &format!("{i}"));
        let (who, d) = consumers
            .iter_mut()
            .enumerate()
            .find_map(|(k, c)| c.try_recv().map(|d| (k, d)))
            .expect("the message was pushed to one consumer");
        e.ack(&name("s"), d.lease.unwrap()).unwrap();
        order.push(who);
    }
    let first = order[0];
    let expected: Vec<usize> = (0..7).map(|k| (first + k) % 3).collect();
    assert_eq!(order, expected);
    assert!(consumers.iter_mut().all(|c| c.try_recv().is_none()), "each message went to one consumer");
}

#[test]
fn dead_letter_copy_lands_in_a_topic_whose_captures_exclude_its_name() {
    let (e, _) = engine();
    let mut dlq = TopicConfig::new(name("dlq"));
    dlq.subjects = vec![Pattern::parse("dlq.>").unwrap()];
    e.create_topic(dlq).unwrap();
    subscribe(&e, "s", "t", |c| c.dead_letter = Some(name("dlq")));
    publish(&e, "t", "poison");
    let d = fetch(&e, "s", "c", 1).remove(0);
    e.term(&name("s"), d.lease.unwrap(), "bad").unwrap();
    assert_eq!(e.topic_info(&name("dlq")).unwrap().messages, 1);
    assert_eq!(e.subscription_info(&name("s")).unwrap().counters.dead_lettered, 1);
}

#[test]
fn dead_letter_copy_that_cannot_be_kept_is_counted_as_terminated() {
    let (e, _) = engine();
    let mut dlq = TopicConfig::new(name("tiny-dlq"));
    dlq.max_msg_bytes = 10;
    e.create_topic(dlq).unwrap();
    subscribe(&e, "s", "t", |c| c.dead_letter = Some(name("tiny-dlq")));
    publish(&e, "t", "too big for the dead-letter topic once headers are added");
    let d = fetch(&e, "s", "c", 1).remove(0);
    e.term(&name("s"), d.lease.unwrap(), "bad").unwrap();
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.counters.dead_lettered, info.counters.terminated), (0, 1));
    assert_eq!(e.topic_info(&name("tiny-dlq")).unwrap().messages, 0);
}

#[test]
fn a_second_live_push_consumer_with_the_same_id_is_refused() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |_| {});
    let opts = || AttachOptions { consumer: Some("w".into()), prefetch: None, limit: None };
    let _first = e.attach(&name("s"), opts()).unwrap();
    let err = e.attach(&name("s"), opts()).unwrap_err();
    assert!(matches!(err, EngineError::ConsumerExists { .. }), "{err}");
}

#[test]
fn lenient_leases_apply_to_acks_only() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| {
        c.strict_leases = false;
        c.ack_deadline = Duration::from_secs(1);
        c.backoff = pubsub::engine::Backoff::Immediate;
    });
    publish(&e, "t", "x");
    let a = fetch(&e, "s", "a", 1).remove(0);
    clock.advance(Duration::from_secs(1));
    e.tick();
    let b = fetch(&e, "s", "b", 1).remove(0);
    assert_eq!(b.attempt, 2);
    let err = e.nack(&name("s"), a.lease.unwrap(), None).unwrap_err();
    assert!(
        matches!(err, EngineError::StaleLease { .. }),
        "a stale holder cannot take B's lease away: {err}"
    );
    assert!(fetch(&e, "s", "c", 1).is_empty(), "B still holds it");
}

#[test]
fn uncovered_messages_above_the_cursor_are_settled_at_once() {
    let (e, _) = engine();
    let mut t = TopicConfig::new(name("orders"));
    t.subjects = vec![Pattern::parse("orders.>").unwrap()];
    e.create_topic(t).unwrap();
    subscribe(&e, "eu", "orders", |c| c.filter = vec![Pattern::parse("orders.eu.*").unwrap()]);
    publish(&e, "orders.eu.a", "1");
    let d = fetch(&e, "eu", "c", 1).remove(0);
    publish(&e, "orders.us.b", "2");
    e.ack(&name("eu"), d.lease.unwrap()).unwrap();
    let info = e.subscription_info(&name("eu")).unwrap();
    assert_eq!((info.ack_floor, info.offset_lag, info.counters.filtered), (2, 0, 1));
}

#[test]
fn ephemeral_subscription_read_by_pull_expires_after_its_last_fetch() {
    let (e, clock) = engine();
    subscribe(&e, "eph", "t", |c| c.lifetime = Lifetime::Ephemeral { inactive_ttl: Duration::from_secs(5) });
    fetch(&e, "eph", "puller", 1);
    clock.advance(Duration::from_secs(6));
    e.tick();
    assert!(matches!(e.subscription_info(&name("eph")), Err(EngineError::NoSuchSubscription(_))));
}

#[test]
fn leases_of_a_deleted_subscription_do_not_settle_its_namesake() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |_| {});
    publish(&e, "t", "x");
    let old = fetch(&e, "s", "c", 1).remove(0);
    e.delete_subscription(&name("s")).unwrap();
    subscribe(&e, "s", "t", |_| {});
    let new = fetch(&e, "s", "c", 1).remove(0);
    assert_eq!(new.message.seq, old.message.seq);
    assert!(e.ack(&name("s"), old.lease.unwrap()).is_err());
    e.ack(&name("s"), new.lease.unwrap()).unwrap();
}

#[test]
fn discard_new_makes_room_by_age_before_refusing() {
    let (e, clock) = engine();
    let mut t = TopicConfig::new(name("t"));
    t.limits.max_msgs = Some(2);
    t.limits.max_age = Some(Duration::from_secs(10));
    t.discard = Discard::New;
    e.create_topic(t).unwrap();
    publish(&e, "t", "a");
    publish(&e, "t", "b");
    clock.advance(Duration::from_secs(11));
    e.publish(PublishRequest::new(name("t"), "c")).unwrap();
    assert_eq!(e.topic_info(&name("t")).unwrap().messages, 1);
}

#[test]
fn seek_voids_leases_even_for_messages_below_the_new_cursor() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |_| {});
    for i in 0..5 {
        publish(&e, "t", &format!("{i}"));
    }
    let held = fetch(&e, "s", "c", 5);
    e.seek(&name("s"), SeekTarget::Seq { partition: 0, seq: 2 }).unwrap();
    for d in &held {
        let r = e.ack(&name("s"), d.lease.unwrap());
        assert!(matches!(r, Err(EngineError::StaleLease { .. })), "seq {}: {r:?}", d.message.seq);
    }
}

#[tokio::test]
async fn deliveries_a_consumer_never_read_come_back_without_spending_an_attempt() {
    // Issue 19: `sub -s --count 1` with max_deliveries 1 and a dead-letter topic used to dead-letter the
    // messages queued for it but never printed.
    let (e, _) = engine();
    subscribe(&e, "w", "orders", |c| {
        c.max_deliveries = 1;
        c.dead_letter = Some(name("dlq"));
    });
    for m in ["m1", "m2", "m3", "m4"] {
        publish(&e, "orders", m);
    }
    for want in ["m1", "m2", "m3"] {
        let opts = AttachOptions { prefetch: Some(4), ..AttachOptions::default() };
        let mut consumer = e.attach(&name("w"), opts).unwrap();
        let d = consumer.recv().await.unwrap();
        assert_eq!(&d.message.payload[..], want.as_bytes());
        assert_eq!(d.attempt, 1, "{want} was not delivered before");
        e.ack(&name("w"), d.lease.unwrap()).unwrap();
        // The rest were pushed to this consumer's queue and never read.
        drop(consumer);
    }
    let dlq = e.topic_info(&name("dlq")).map(|t| t.messages).unwrap_or(0);
    assert_eq!(dlq, 0, "nothing was dead-lettered");
    let peek = e.peek(&name("w"), 0, 10).unwrap();
    let m4 = peek.messages.iter().find(|m| m.seq == 4).unwrap();
    assert_eq!((m4.state, m4.attempt), (pubsub::engine::DeliveryState::Available, 0), "{peek:?}");
}

#[tokio::test]
async fn a_consumer_with_a_total_is_never_leased_more_than_it_asked_for() {
    // Issue 19: `sub -s NAME --count N` took more than N (its credit came back with each ack) and gave
    // the rest back on exit. A total caps what the consumer is ever handed.
    let (e, _) = engine();
    subscribe(&e, "w", "orders", |_| {});
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        publish(&e, "orders", m);
    }
    let opts = AttachOptions { prefetch: Some(4), limit: Some(2), ..AttachOptions::default() };
    let mut consumer = e.attach(&name("w"), opts).unwrap();
    for want in ["m1", "m2"] {
        let d = consumer.recv().await.unwrap();
        assert_eq!(&d.message.payload[..], want.as_bytes());
        e.ack(&name("w"), d.lease.unwrap()).unwrap();
    }
    assert!(consumer.try_recv().is_none(), "nothing past the total was pushed");
    let info = e.subscription_info(&name("w")).unwrap();
    assert_eq!((info.in_flight, info.counters.delivered), (0, 2), "{info:?}");
}

#[tokio::test]
async fn a_released_delivery_comes_back_at_once_without_spending_an_attempt() {
    let (e, _) = engine();
    subscribe(&e, "w", "orders", |c| {
        c.max_deliveries = 1;
        c.dead_letter = Some(name("dlq"));
    });
    publish(&e, "orders", "m1");
    let d = fetch(&e, "w", "c", 1).remove(0);
    e.release(&name("w"), d.lease.unwrap()).unwrap();
    let again = fetch(&e, "w", "c", 1).remove(0);
    assert_eq!((again.message.seq, again.attempt), (1, 1), "released, not failed");
    // The first lease is no longer current: releasing it again changes nothing.
    e.release(&name("w"), d.lease.unwrap()).unwrap();
    assert!(e.topic_info(&name("dlq")).is_err(), "nothing was dead-lettered");
}
