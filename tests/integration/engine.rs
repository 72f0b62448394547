//! Engine behaviour beyond the numbered scenarios: cumulative acks, backoff lists, events, ephemeral
//! subscriptions, dedup, filters, browse, captures, limits.

use std::time::Duration;

use pubsub::engine::{
    AckMode, Backoff, BrowseFrom, Clock, DeliveryState, EngineConfig, EngineError, Lifetime, Pattern,
    PublishRequest, SeekTarget, StartPosition, SubscriptionConfig, TapItem, TapOptions, TopicConfig,
};

use crate::support::{engine, engine_with, fetch, name, publish, seqs, subscribe};

#[test]
fn cumulative_ack_settles_everything_the_consumer_holds_up_to_the_seq() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.ack = AckMode::Cumulative);
    for i in 0..6 {
        publish(&e, "t", &format!("{i}"));
    }
    let mine = fetch(&e, "s", "c1", 4);
    let theirs = fetch(&e, "s", "c2", 2);
    assert_eq!((seqs(&mine), seqs(&theirs)), (vec![1, 2, 3, 4], vec![5, 6]));
    assert_eq!(e.ack_cumulative(&name("s"), "c1", 0, 3).unwrap(), 3);
    let info = e.subscription_info(&name("s")).unwrap();
    assert_eq!((info.ack_floor, info.in_flight), (3, 3));
    // Another consumer's messages are not touched by c1's cumulative ack.
    assert_eq!(e.ack_cumulative(&name("s"), "c1", 0, 6).unwrap(), 1);
    assert_eq!(e.subscription_info(&name("s")).unwrap().in_flight, 2);
}

#[test]
fn cumulative_ack_on_an_explicit_subscription_is_refused() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |_| {});
    let err = e.ack_cumulative(&name("s"), "c1", 0, 1).unwrap_err();
    assert!(matches!(err, EngineError::WrongAckMode { .. }), "{err}");
}

#[test]
fn backoff_list_uses_its_last_entry_once_exhausted() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |c| {
        c.backoff = Backoff::List(vec![Duration::from_secs(2), Duration::from_secs(5)]);
    });
    publish(&e, "t", "x");
    let mut waits = Vec::new();
    for _ in 0..3 {
        let d = fetch(&e, "s", "c", 1).remove(0);
        e.nack(&name("s"), d.lease.unwrap(), None).unwrap();
        let wait = e.peek(&name("s"), 1, 1).unwrap().messages[0].not_before.unwrap().since(clock.now());
        waits.push(wait.as_secs());
        clock.advance(wait);
        e.tick();
    }
    assert_eq!(waits, vec![2, 5, 5]);
}

#[tokio::test]
async fn engine_events_reach_taps_on_sys_subjects_but_not_catch_all_taps() {
    let (e, clock) = engine();
    let mut events = e.tap(vec![Pattern::parse("$sys.sub.s.>").unwrap()], TapOptions::default()).unwrap();
    let mut everything = e.tap(vec![Pattern::parse("#").unwrap()], TapOptions::default()).unwrap();
    subscribe(&e, "s", "t", |c| {
        c.ack_deadline = Duration::from_secs(1);
        c.max_deliveries = 1;
    });
    publish(&e, "t", "x");
    fetch(&e, "s", "c1", 1);
    clock.advance(Duration::from_secs(2));
    e.tick();
    let mut subjects = Vec::new();
    while let Some(TapItem::Message(m)) = events.try_recv() {
        subjects.push(m.subject().to_string());
    }
    assert_eq!(
        subjects,
        vec![
            "$sys.sub.s.created",
            "$sys.sub.s.consumer_attached",
            "$sys.sub.s.deadline_expired",
            "$sys.sub.s.max_deliveries",
            "$sys.sub.s.terminated",
        ]
    );
    let mut plain = Vec::new();
    while let Some(TapItem::Message(m)) = everything.try_recv() {
        plain.push(m.subject().to_string());
    }
    assert_eq!(plain, vec!["t"], "`#` does not match reserved $ subjects");
}

#[test]
fn ephemeral_subscription_is_deleted_after_its_idle_time() {
    let (e, clock) = engine();
    subscribe(&e, "eph", "t", |c| c.lifetime = Lifetime::Ephemeral { inactive_ttl: Duration::from_secs(5) });
    fetch(&e, "eph", "c1", 1);
    e.detach(&name("eph"), "c1");
    clock.advance(Duration::from_secs(4));
    e.tick();
    assert!(e.subscription_info(&name("eph")).is_ok(), "still inside its idle time");
    clock.advance(Duration::from_secs(1));
    e.tick();
    assert!(matches!(e.subscription_info(&name("eph")), Err(EngineError::NoSuchSubscription(_))));
}

#[test]
fn subject_filter_skips_and_counts_what_it_does_not_cover() {
    let (e, _) = engine();
    let mut topic = TopicConfig::new(name("orders"));
    topic.subjects = vec![Pattern::parse("orders.>").unwrap()];
    e.create_topic(topic).unwrap();
    subscribe(&e, "eu", "orders", |c| c.filter = vec![Pattern::parse("orders.eu.*").unwrap()]);
    for subject in ["orders.eu.new", "orders.us.new", "orders.eu.paid", "orders.us.paid"] {
        publish(&e, subject, subject);
    }
    let info = e.subscription_info(&name("eu")).unwrap();
    assert_eq!((info.pending, info.backlog), (2, 2), "pending counts only covered messages");
    let batch = fetch(&e, "eu", "c", 10);
    assert_eq!(seqs(&batch), vec![1, 3]);
    assert_eq!(batch[1].message.subject().as_str(), "orders.eu.paid");
    for d in batch {
        e.ack(&name("eu"), d.lease.unwrap()).unwrap();
    }
    let info = e.subscription_info(&name("eu")).unwrap();
    assert_eq!((info.ack_floor, info.counters.filtered, info.backlog), (4, 2, 0));
}

#[test]
fn overlapping_captures_are_refused_with_both_topics_named() {
    let (e, _) = engine();
    let mut a = TopicConfig::new(name("a"));
    a.subjects = vec![Pattern::parse("orders.*").unwrap()];
    e.create_topic(a).unwrap();
    let mut b = TopicConfig::new(name("b"));
    b.subjects = vec![Pattern::parse("orders.#").unwrap()];
    let err = e.create_topic(b).unwrap_err().to_string();
    assert!(err.contains("\"orders.#\"") && err.contains("\"orders.*\"") && err.contains("\"a\""), "{err}");
}

#[test]
fn captures_overlapping_a_literal_topic_are_refused_either_way_round() {
    let (e, _) = engine();
    e.create_topic(TopicConfig::new(name("orders.eu"))).unwrap();
    e.create_topic(TopicConfig::new(name("orders.us"))).unwrap();
    // A wildcard over an existing literal capture, a literal under an existing wildcard, and the same
    // literal captured twice, are each refused naming the capture they overlap.
    let mut wide = TopicConfig::new(name("all"));
    wide.subjects = vec![Pattern::parse("orders.>").unwrap()];
    let err = e.create_topic(wide).unwrap_err().to_string();
    assert!(err.contains("\"orders.>\"") && err.contains("\"orders."), "{err}");
    let mut star = TopicConfig::new(name("stars"));
    star.subjects = vec![Pattern::parse("events.*").unwrap()];
    e.create_topic(star).unwrap();
    let err = e.create_topic(TopicConfig::new(name("events.x"))).unwrap_err().to_string();
    assert!(err.contains("\"events.*\"") && err.contains("\"stars\""), "{err}");
    let mut twice = TopicConfig::new(name("copy"));
    twice.subjects = vec![Pattern::parse("orders.us").unwrap()];
    let err = e.create_topic(twice).unwrap_err().to_string();
    assert!(err.contains("\"orders.us\""), "{err}");
    // Captures that share no subject are all accepted.
    e.create_topic(TopicConfig::new(name("events"))).unwrap();
    let mut deeper = TopicConfig::new(name("deep"));
    deeper.subjects = vec![Pattern::parse("events.*.x").unwrap()];
    e.create_topic(deeper).unwrap();
    assert_eq!(e.topics().len(), 5);
}

#[test]
fn oversized_message_is_refused_and_nothing_is_appended() {
    let (e, _) = engine();
    let mut t = TopicConfig::new(name("small"));
    t.max_msg_bytes = 8;
    e.create_topic(t).unwrap();
    let err = e.publish(PublishRequest::new(name("small"), "123456789")).unwrap_err();
    assert!(matches!(err, EngineError::MessageTooLarge { size: 9, max: 8, .. }), "{err}");
    assert_eq!(e.topic_info(&name("small")).unwrap().messages, 0);
}

#[test]
fn browse_reads_without_touching_subscriptions() {
    let (e, clock) = engine();
    subscribe(&e, "s", "t", |_| {});
    let mut times = Vec::new();
    for i in 0..10 {
        times.push(clock.now());
        publish(&e, "t", &format!("{i}"));
        clock.advance(Duration::from_secs(1));
    }
    let seqs_of = |from| e.browse(&name("t"), from, 3).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs_of(BrowseFrom::Seq(0)), vec![1, 2, 3]);
    assert_eq!(seqs_of(BrowseFrom::Last(2)), vec![9, 10]);
    assert_eq!(seqs_of(BrowseFrom::Time(times[4])), vec![5, 6, 7]);
    assert_eq!(e.subscription_info(&name("s")).unwrap().pending, 10);
}

#[test]
fn seek_to_start_and_end() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.ack = AckMode::None);
    for i in 0..5 {
        publish(&e, "t", &format!("{i}"));
    }
    assert_eq!(fetch(&e, "s", "c", 10).len(), 5);
    assert_eq!(e.seek(&name("s"), SeekTarget::Start).unwrap(), 1);
    assert_eq!(fetch(&e, "s", "c", 10).len(), 5);
    assert_eq!(e.seek(&name("s"), SeekTarget::End).unwrap(), 6);
    assert!(fetch(&e, "s", "c", 10).is_empty());
}

#[test]
fn start_positions_resolve_against_the_log() {
    let (e, clock) = engine();
    let mut times = Vec::new();
    for i in 0..5 {
        times.push(clock.now());
        publish(&e, "t", &format!("{i}"));
        clock.advance(Duration::from_secs(1));
    }
    let first_of = |start| {
        let n = format!("s{}", e.stats().subscriptions);
        let mut config = SubscriptionConfig::new(name(&n), name("t"));
        config.start = start;
        config.ack = AckMode::None;
        e.create_subscription(config).unwrap();
        fetch(&e, &n, "c", 1).first().map(|d| d.message.seq)
    };
    assert_eq!(first_of(StartPosition::All), Some(1));
    assert_eq!(first_of(StartPosition::Last), Some(5));
    assert_eq!(first_of(StartPosition::New), None);
    assert_eq!(first_of(StartPosition::Seq(3)), Some(3));
    assert_eq!(first_of(StartPosition::Time(times[3])), Some(4));
}

#[test]
fn auto_create_off_refuses_unknown_topics_for_subscriptions_too() {
    let (e, _) = engine_with(EngineConfig { auto_create: false, ..EngineConfig::default() });
    let err = e.create_subscription(SubscriptionConfig::new(name("s"), name("nowhere"))).unwrap_err();
    assert!(matches!(err, EngineError::NoSuchTopic(_)), "{err}");
}

#[test]
fn settings_out_of_range_are_refused_rather_than_ignored() {
    let (e, _) = engine();
    let mut config = SubscriptionConfig::new(name("s"), name("t"));
    config.dead_letter_on_expiry = true;
    let err = e.create_subscription(config).unwrap_err().to_string();
    assert!(err.contains("needs a dead-letter topic"), "{err}");
    let mut topic = TopicConfig::new(name("p"));
    topic.partitions = 3000;
    assert!(e.create_topic(topic).unwrap_err().to_string().contains("partitions"));
}

#[test]
fn peek_reports_every_state_from_the_floor_up() {
    let (e, _) = engine();
    subscribe(&e, "s", "t", |c| c.backoff = Backoff::Immediate);
    for i in 0..4 {
        publish(&e, "t", &format!("{i}"));
    }
    let batch = fetch(&e, "s", "c1", 3);
    e.ack(&name("s"), batch[1].lease.unwrap()).unwrap();
    e.nack(&name("s"), batch[2].lease.unwrap(), None).unwrap();
    let peek = e.peek(&name("s"), 0, 10).unwrap();
    let states: Vec<_> = peek.messages.iter().map(|m| (m.seq, m.state, m.attempt)).collect();
    assert_eq!(
        states,
        vec![
            (1, DeliveryState::InFlight, 1),
            (2, DeliveryState::Acked, 0),
            (3, DeliveryState::Available, 1),
            (4, DeliveryState::Available, 0),
        ]
    );
    assert_eq!(peek.messages[0].consumer.as_deref(), Some("c1"));
}

#[test]
fn leases_fit_in_a_double_and_one_never_handed_out_says_so() {
    // Found by a new user: `jq -r .lease` rounded leases above 2^53, and `pubsub ack` then blamed a
    // redelivery that never happened.
    let (e, _) = engine();
    subscribe(&e, "s", "t", |_| {});
    publish(&e, "t", "one");
    let got = fetch(&e, "s", "c", 1);
    let lease = got[0].lease.unwrap();
    assert!(lease.lease < 1 << 53, "lease {} does not survive a double", lease.lease);
    assert_eq!(lease.lease as f64 as u64, lease.lease);
    let mut wrong = lease;
    wrong.lease += 1_000;
    let err = e.ack(&name("s"), wrong).unwrap_err();
    assert!(matches!(err, EngineError::UnknownLease { .. }), "{err}");
    assert!(err.to_string().contains("never handed out"), "{err}");
    e.ack(&name("s"), lease).unwrap();
}
