//! Property tests: random sequences of publish / fetch / ack / nack / extend / expire / seek / detach
//! against a model of what the test was told, asserting invariants I1–I5 and I7 of SEMANTICS.md §9.4.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use pubsub::engine::{
    AckRef, Assignment, Backoff, Clock, DeliveryState, Engine, EngineError, FetchOptions, ManualClock,
    PublishRequest, SeekTarget, TopicConfig,
};

use crate::support::{engine, name, publish};

#[derive(Debug, Clone)]
enum Op {
    Publish(u8),
    Fetch { consumer: u8, max: u8 },
    Ack(u8),
    Nack { pick: u8, delay_ms: u16 },
    Extend(u8),
    Expire(u16),
    Seek(u8),
    Detach(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..8).prop_map(Op::Publish),
        4 => (0u8..3, 1u8..6).prop_map(|(consumer, max)| Op::Fetch { consumer, max }),
        4 => any::<u8>().prop_map(Op::Ack),
        2 => (any::<u8>(), prop_oneof![Just(0u16), 1u16..1500]).prop_map(|(pick, delay_ms)| Op::Nack { pick, delay_ms }),
        1 => any::<u8>().prop_map(Op::Extend),
        2 => (1u16..2500).prop_map(Op::Expire),
        1 => any::<u8>().prop_map(Op::Seek),
        1 => (0u8..3).prop_map(Op::Detach),
    ]
}

/// What the test knows from the answers it got.
#[derive(Default)]
struct Model {
    /// Leases the test holds and believes current: seq → (consumer, lease, deadline µs).
    valid: BTreeMap<u64, (u8, AckRef, i64)>,
    /// Leases that were superseded, expired or given back.
    stale: Vec<AckRef>,
    /// Seqs acked since the last seek (I7: never delivered again).
    acked: HashSet<u64>,
    /// Highest attempt seen per seq since the last seek (I2).
    attempts: BTreeMap<u64, u32>,
    /// Seqs the subscription's attribute filter excludes (FILTERED: never delivered, passed by the floor).
    filtered: HashSet<u64>,
}

impl Model {
    fn pick(&self, i: u8) -> Option<u64> {
        let n = self.valid.len();
        (n > 0).then(|| *self.valid.keys().nth(usize::from(i) % n).unwrap())
    }

    fn forget_below(&mut self, first_seq: u64) {
        let gone: Vec<u64> = self.valid.range(..first_seq).map(|(s, _)| *s).collect();
        for seq in gone {
            let (_, lease, _) = self.valid.remove(&seq).unwrap();
            self.stale.push(lease);
        }
    }

    /// Leases whose deadline has passed are no longer current (the engine expires them on its next step).
    fn expire(&mut self, now: i64) {
        let due: Vec<u64> = self.valid.iter().filter(|(_, v)| v.2 <= now).map(|(s, _)| *s).collect();
        for seq in due {
            let (_, lease, _) = self.valid.remove(&seq).unwrap();
            self.stale.push(lease);
        }
    }
}

const MAX_IN_FLIGHT: u32 = 6;
const PREFETCH: u32 = 6;

/// The attribute filter of the filtered runs: messages published with a `skip` header are FILTERED.
const FILTER: &str = r#"NOT attributes:skip OR attributes.skip = "no""#;

fn setup(filtered: bool, assignment: Assignment) -> (Engine, std::sync::Arc<ManualClock>) {
    let (e, clock) = engine();
    let mut topic = TopicConfig::new(name("t"));
    topic.limits.max_msgs = Some(40);
    e.create_topic(topic).unwrap();
    let mut config = pubsub::engine::SubscriptionConfig::new(name("s"), name("t"));
    config.start = pubsub::engine::StartPosition::All;
    config.ack_deadline = Duration::from_secs(1);
    config.max_lease = Duration::from_secs(3);
    config.max_in_flight = MAX_IN_FLIGHT;
    config.backoff = Backoff::List(vec![Duration::from_millis(300), Duration::from_millis(700)]);
    if filtered {
        config.attribute_filter = Some(FILTER.into());
    }
    config.assignment = assignment;
    e.create_subscription(config).unwrap();
    (e, clock)
}

fn run(ops: Vec<Op>, filtered: bool, assignment: Assignment) -> Result<(), TestCaseError> {
    let (e, clock) = setup(filtered, assignment);
    let sub = name("s");
    let mut model = Model::default();
    for op in ops {
        model.expire(clock.now().as_micros());
        // Retention (max_msgs 40) removes old messages; their leases are no longer current.
        let first_seq = e.topic_info(&name("t")).unwrap().first_seq;
        model.forget_below(first_seq);
        match op {
            Op::Publish(n) => {
                for i in 0..n {
                    if filtered && i % 3 == 1 {
                        let mut req = PublishRequest::new(name("t"), format!("m{i}"));
                        req.headers.insert("skip".into(), "yes".into());
                        model.filtered.insert(e.publish(req).unwrap().seq);
                    } else {
                        publish(&e, "t", &format!("m{i}"));
                    }
                }
            }
            Op::Fetch { consumer, max } => {
                let opts = FetchOptions { max_msgs: usize::from(max), ..FetchOptions::default() };
                let batch = e.try_fetch(&sub, &format!("c{consumer}"), &opts).unwrap();
                if assignment == Assignment::PartitionExclusive {
                    // A consumer that joins may take the partition over: what its old owner held came
                    // back to be handed out again, and the old leases are stale.
                    let info = e.subscription_info(&sub).unwrap();
                    prop_assert_eq!(
                        info.partitions[0].owner.as_deref(),
                        info.consumers.iter().map(|c| c.id.as_ref()).min()
                    );
                    if !batch.is_empty() {
                        prop_assert_eq!(info.partitions[0].owner.clone(), Some(format!("c{consumer}")));
                    }
                    let owner = info.partitions[0].owner.clone();
                    let moved: Vec<u64> = model
                        .valid
                        .iter()
                        .filter(|(_, v)| Some(format!("c{}", v.0)) != owner)
                        .map(|(s, _)| *s)
                        .collect();
                    for seq in moved {
                        let (_, lease, _) = model.valid.remove(&seq).unwrap();
                        model.stale.push(lease);
                    }
                }
                if assignment == Assignment::SingleActive && !batch.is_empty() {
                    // Only the consumer attached longest is handed anything.
                    let info = e.subscription_info(&sub).unwrap();
                    prop_assert_eq!(info.consumers[0].id.to_string(), format!("c{consumer}"));
                    prop_assert!(info.consumers.iter().skip(1).all(|c| c.standby && c.in_flight == 0));
                }
                for d in batch {
                    let seq = d.message.seq;
                    let lease = d.lease.unwrap();
                    prop_assert!(!model.filtered.contains(&seq), "filtered seq {seq} delivered");
                    // I1: nobody else may hold a current lease on this message.
                    prop_assert!(
                        !model.valid.contains_key(&seq),
                        "seq {seq} leased while a lease is current"
                    );
                    // I7: an acked message is never delivered again (until a seek).
                    prop_assert!(!model.acked.contains(&seq), "acked seq {seq} redelivered");
                    // I2: attempts never go down.
                    let before = model.attempts.insert(seq, d.attempt).unwrap_or(0);
                    prop_assert!(d.attempt > before, "attempt of {seq} went {before} -> {}", d.attempt);
                    let deadline = d.deadline.unwrap().as_micros();
                    model.valid.insert(seq, (consumer, lease, deadline));
                }
            }
            Op::Ack(i) => {
                if let Some(seq) = model.pick(i) {
                    let (_, lease, _) = model.valid.remove(&seq).unwrap();
                    e.ack(&sub, lease)
                        .map_err(|err| TestCaseError::fail(format!("current lease refused: {err}")))?;
                    model.acked.insert(seq);
                } else if let Some(lease) = model.stale.pop() {
                    // A superseded lease must not settle a message that was leased again.
                    let result = e.ack(&sub, lease);
                    if let Err(err) = &result {
                        prop_assert!(
                            matches!(err, EngineError::StaleLease { .. } | EngineError::NotDelivered { .. }),
                            "unexpected error {err}"
                        );
                    }
                    if result.is_ok() && model.valid.contains_key(&lease.seq) {
                        return Err(TestCaseError::fail("stale lease settled a re-leased message"));
                    }
                }
            }
            Op::Nack { pick, delay_ms } => {
                if let Some(seq) = model.pick(pick) {
                    let (_, lease, _) = model.valid.remove(&seq).unwrap();
                    let delay = (delay_ms > 0).then(|| Duration::from_millis(u64::from(delay_ms)));
                    e.nack(&sub, lease, delay).unwrap();
                    model.stale.push(lease);
                }
            }
            Op::Extend(i) => {
                if let Some(seq) = model.pick(i) {
                    let (c, lease, _) = model.valid[&seq];
                    let deadline = e.extend(&sub, lease, Duration::from_secs(2)).unwrap();
                    model.valid.insert(seq, (c, lease, deadline.as_micros()));
                }
            }
            Op::Expire(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms)));
                e.tick();
                model.expire(clock.now().as_micros());
            }
            Op::Seek(s) => {
                let info = e.topic_info(&name("t")).unwrap();
                let span = (info.head_seq + 2).saturating_sub(info.first_seq).max(1);
                let target = info.first_seq + u64::from(s) % span;
                let next = e.seek(&sub, SeekTarget::Seq { partition: 0, seq: target }).unwrap();
                model.stale.extend(model.valid.values().map(|v| v.1));
                model.valid.clear();
                model.acked.clear();
                model.attempts.clear();
                // Everything below the target now counts as acked (I7 holds from here).
                model.acked.extend(1..next);
            }
            Op::Detach(c) => {
                e.detach(&sub, &format!("c{c}"));
                let gone: Vec<u64> = model.valid.iter().filter(|(_, v)| v.0 == c).map(|(s, _)| *s).collect();
                for seq in gone {
                    let (_, lease, _) = model.valid.remove(&seq).unwrap();
                    model.stale.push(lease);
                }
            }
        }
        check_invariants(&e, &model)?;
        if assignment == Assignment::SingleActive {
            check_single_active(&e)?;
        }
    }
    Ok(())
}

/// Every message in flight is held by the active consumer (SingleActive): the others only stand by.
fn check_single_active(e: &Engine) -> Result<(), TestCaseError> {
    let info = e.subscription_info(&name("s")).unwrap();
    for m in e.peek(&name("s"), 0, 1000).unwrap().messages {
        if m.state == DeliveryState::InFlight {
            prop_assert_eq!(
                m.consumer.as_ref(),
                info.consumers.first().map(|c| &c.id),
                "{} held by a standby",
                m.seq
            );
        }
    }
    Ok(())
}

fn check_invariants(e: &Engine, model: &Model) -> Result<(), TestCaseError> {
    let sub = name("s");
    let info = e.subscription_info(&sub).unwrap();
    // I4: floor ≤ cursor ≤ head, floor ≥ first_seq − 1.
    prop_assert!(info.ack_floor <= info.delivered_seq && info.delivered_seq <= info.head_seq, "{info:?}");
    prop_assert!(info.ack_floor + 1 >= info.first_seq, "floor below first_seq - 1: {info:?}");
    // I5: credit limits.
    prop_assert!(info.in_flight <= u64::from(MAX_IN_FLIGHT), "in_flight {}", info.in_flight);
    for c in &info.consumers {
        prop_assert!(c.in_flight <= PREFETCH.max(c.prefetch), "consumer {} over prefetch", c.id);
    }
    let per_consumer: u64 = info.consumers.iter().map(|c| u64::from(c.in_flight)).sum();
    prop_assert_eq!(per_consumer, info.in_flight, "consumer in-flight counts add up");
    let peek = e.peek(&sub, 0, 1000).unwrap();
    let in_flight: Vec<_> = peek.messages.iter().filter(|m| m.state == DeliveryState::InFlight).collect();
    prop_assert_eq!(in_flight.len() as u64, info.in_flight);
    // The engine's in-flight set is exactly the leases the test believes current (I1 from both sides).
    let engine_leased: Vec<u64> = in_flight.iter().map(|m| m.seq).collect();
    let model_leased: Vec<u64> = model.valid.keys().copied().filter(|&s| s >= info.first_seq).collect();
    prop_assert_eq!(engine_leased, model_leased);
    // I3: the message just above the floor is unsettled, unless nothing is above it.
    if let Some(first) = peek.messages.first() {
        prop_assert_eq!(first.seq, info.ack_floor + 1);
        prop_assert!(!first.state.is_terminal(), "settled message above the floor: {first:?}");
    }
    // I3 from the model's side: every retained seq at or below the floor was acked by the test.
    for seq in info.first_seq..=info.ack_floor {
        prop_assert!(
            model.acked.contains(&seq) || model.filtered.contains(&seq),
            "floor {} passes unacked seq {seq}",
            info.ack_floor
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn delivery_invariants_hold_under_random_operations(ops in prop::collection::vec(op(), 1..80)) {
        run(ops, false, Assignment::Shared)?;
    }

    #[test]
    fn delivery_invariants_hold_with_an_attribute_filter(ops in prop::collection::vec(op(), 1..80)) {
        run(ops, true, Assignment::Shared)?;
    }

    #[test]
    fn delivery_invariants_hold_with_a_single_active_consumer(ops in prop::collection::vec(op(), 1..80)) {
        run(ops, false, Assignment::SingleActive)?;
    }

    #[test]
    fn delivery_invariants_hold_on_one_partition_owned_exclusively(ops in prop::collection::vec(op(), 1..80)) {
        run(ops, false, Assignment::PartitionExclusive)?;
    }
}

// ----- PerKey ordering (issue 24) ------------------------------------------------------------------

#[derive(Debug, Clone)]
enum KeyOp {
    /// Publish a message with key `KEYS[k]`, or without a key (k = KEYS.len()).
    Publish(u8),
    Fetch {
        consumer: u8,
        max: u8,
    },
    Ack(u8),
    Nack {
        pick: u8,
        delay_ms: u16,
    },
    Expire(u16),
    Detach(u8),
}

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

fn key_op() -> impl Strategy<Value = KeyOp> {
    prop_oneof![
        4 => (0u8..5).prop_map(KeyOp::Publish),
        4 => (0u8..3, 1u8..6).prop_map(|(consumer, max)| KeyOp::Fetch { consumer, max }),
        4 => any::<u8>().prop_map(KeyOp::Ack),
        3 => (any::<u8>(), prop_oneof![Just(0u16), 1u16..1500]).prop_map(|(pick, delay_ms)| KeyOp::Nack { pick, delay_ms }),
        2 => (1u16..2500).prop_map(KeyOp::Expire),
        1 => (0u8..3).prop_map(KeyOp::Detach),
    ]
}

/// Runs the ops on a PerKey subscription of a topic with two partitions, checking after every delivery
/// that every earlier message of its key in its partition was acked (I6: so no key ever has two in
/// flight, and a key's order survives nacks, expiries and detaches), then that everything drains.
fn run_per_key(ops: Vec<KeyOp>) -> Result<(), TestCaseError> {
    let (e, clock) = engine();
    let mut topic = TopicConfig::new(name("t"));
    topic.partitions = 2;
    e.create_topic(topic).unwrap();
    let mut config = pubsub::engine::SubscriptionConfig::new(name("s"), name("t"));
    config.start = pubsub::engine::StartPosition::All;
    config.ack_deadline = Duration::from_secs(1);
    config.max_in_flight = MAX_IN_FLIGHT;
    config.ordering = pubsub::engine::OrderingMode::PerKey;
    config.backoff = Backoff::List(vec![Duration::from_millis(300), Duration::from_millis(700)]);
    e.create_subscription(config).unwrap();
    let sub = name("s");
    // (partition, seq) → key of every published message; acked ones; current leases.
    let mut keys: BTreeMap<(u32, u64), Option<&str>> = BTreeMap::new();
    let mut acked: HashSet<(u32, u64)> = HashSet::new();
    let mut valid: BTreeMap<(u32, u64), (u8, AckRef, i64)> = BTreeMap::new();
    let check = |d: &pubsub::engine::Delivery,
                 keys: &BTreeMap<(u32, u64), Option<&str>>,
                 acked: &HashSet<(u32, u64)>,
                 valid: &BTreeMap<(u32, u64), (u8, AckRef, i64)>|
     -> Result<(), TestCaseError> {
        let at = (d.message.partition, d.message.seq);
        prop_assert!(!acked.contains(&at), "acked {at:?} redelivered");
        prop_assert!(!valid.contains_key(&at), "{at:?} leased twice");
        if let Some(Some(k)) = keys.get(&at) {
            for (earlier, key) in keys.range((at.0, 0)..at) {
                if *key == Some(*k) {
                    prop_assert!(
                        acked.contains(earlier),
                        "{at:?} (key {k}) delivered before {earlier:?} was settled"
                    );
                }
            }
        }
        Ok(())
    };
    let expire = |valid: &mut BTreeMap<(u32, u64), (u8, AckRef, i64)>, now: i64| {
        valid.retain(|_, v| v.2 > now);
    };
    for op in ops {
        expire(&mut valid, clock.now().as_micros());
        match op {
            KeyOp::Publish(k) => {
                let key = KEYS.get(usize::from(k)).copied();
                let mut req = pubsub::engine::PublishRequest::new(name("t"), "x".to_string());
                req.key = key.map(|k| bytes::Bytes::from(k.to_string()));
                let r = e.publish(req).unwrap();
                keys.insert((r.partition, r.seq), key);
            }
            KeyOp::Fetch { consumer, max } => {
                let opts = FetchOptions { max_msgs: usize::from(max), ..FetchOptions::default() };
                for d in e.try_fetch(&sub, &format!("c{consumer}"), &opts).unwrap() {
                    check(&d, &keys, &acked, &valid)?;
                    valid.insert(
                        (d.message.partition, d.message.seq),
                        (consumer, d.lease.unwrap(), d.deadline.unwrap().as_micros()),
                    );
                }
            }
            KeyOp::Ack(i) => {
                if let Some(&at) = valid.keys().nth(usize::from(i) % valid.len().max(1)) {
                    let (_, lease, _) = valid.remove(&at).unwrap();
                    e.ack(&sub, lease).map_err(|err| TestCaseError::fail(format!("ack refused: {err}")))?;
                    acked.insert(at);
                }
            }
            KeyOp::Nack { pick, delay_ms } => {
                if let Some(&at) = valid.keys().nth(usize::from(pick) % valid.len().max(1)) {
                    let (_, lease, _) = valid.remove(&at).unwrap();
                    let delay = (delay_ms > 0).then(|| Duration::from_millis(u64::from(delay_ms)));
                    e.nack(&sub, lease, delay).unwrap();
                }
            }
            KeyOp::Expire(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms)));
                e.tick();
            }
            KeyOp::Detach(c) => {
                e.detach(&sub, &format!("c{c}"));
                valid.retain(|_, v| v.0 != c);
            }
        }
        expire(&mut valid, clock.now().as_micros());
        let info = e.subscription_info(&sub).unwrap();
        prop_assert!(info.in_flight <= u64::from(MAX_IN_FLIGHT));
        prop_assert_eq!(info.in_flight, valid.len() as u64, "in flight: engine vs test");
    }
    // Everything drains: no key stays stuck.
    for _ in 0..(keys.len() * 4 + 10) {
        clock.advance(Duration::from_secs(2));
        e.tick();
        valid.clear();
        let opts = FetchOptions { max_msgs: 100, ..FetchOptions::default() };
        for d in e.try_fetch(&sub, "drain", &opts).unwrap() {
            check(&d, &keys, &acked, &valid)?;
            e.ack(&sub, d.lease.unwrap()).unwrap();
            acked.insert((d.message.partition, d.message.seq));
        }
        if acked.len() == keys.len() {
            break;
        }
    }
    prop_assert_eq!(acked.len(), keys.len(), "messages left undelivered");
    let info = e.subscription_info(&sub).unwrap();
    prop_assert_eq!(info.backlog, 0, "{:?}", info);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn per_key_ordering_holds_under_random_operations(ops in prop::collection::vec(key_op(), 1..80)) {
        run_per_key(ops)?;
    }
}

// ----- PartitionExclusive rebalances (issue 24, point 3) -------------------------------------------

#[derive(Debug, Clone)]
enum GroupOp {
    Publish {
        partition: u8,
        n: u8,
    },
    /// A fetch; a consumer not attached yet joins the group (a rebalance).
    Fetch {
        consumer: u8,
        max: u8,
    },
    Ack(u8),
    /// A cumulative ack by `consumer` of its in-flight messages of `partition` up to the `through`-th
    /// of them.
    AckThrough {
        consumer: u8,
        partition: u8,
        through: u8,
    },
    Nack(u8),
    Expire(u16),
    /// The consumer leaves (a rebalance).
    Detach(u8),
}

const GROUP_PARTITIONS: u32 = 3;

fn group_op() -> impl Strategy<Value = GroupOp> {
    prop_oneof![
        3 => (0u8..3, 1u8..5).prop_map(|(partition, n)| GroupOp::Publish { partition, n }),
        4 => (0u8..4, 1u8..6).prop_map(|(consumer, max)| GroupOp::Fetch { consumer, max }),
        2 => any::<u8>().prop_map(GroupOp::Ack),
        3 => (0u8..4, 0u8..3, any::<u8>()).prop_map(|(consumer, partition, through)| GroupOp::AckThrough { consumer, partition, through }),
        1 => any::<u8>().prop_map(GroupOp::Nack),
        1 => (1u16..2500).prop_map(GroupOp::Expire),
        2 => (0u8..4).prop_map(GroupOp::Detach),
    ]
}

/// Runs the ops on a PartitionExclusive + Cumulative subscription of a three-partition topic, checking
/// after every step that no partition has two owners and that every message in flight is held by its
/// partition's owner (so a partition is never read by two consumers at once); that every delivery is
/// of a partition its consumer owns; that nothing acked (or below a committed floor) comes again; and
/// finally that everything above the committed floors is still delivered: a rebalance loses nothing.
fn run_group(ops: Vec<GroupOp>) -> Result<(), TestCaseError> {
    let (e, clock) = engine();
    let mut topic = TopicConfig::new(name("t"));
    topic.partitions = GROUP_PARTITIONS;
    e.create_topic(topic).unwrap();
    let mut config = pubsub::engine::SubscriptionConfig::new(name("g"), name("t"));
    config.start = pubsub::engine::StartPosition::All;
    config.ack_deadline = Duration::from_secs(1);
    config.ack = pubsub::engine::AckMode::Cumulative;
    config.assignment = pubsub::engine::Assignment::PartitionExclusive;
    config.backoff = Backoff::Immediate;
    e.create_subscription(config).unwrap();
    let sub = name("g");
    let mut published: HashSet<(u32, u64)> = HashSet::new();
    let mut acked: HashSet<(u32, u64)> = HashSet::new();
    // (partition, seq) → (consumer, lease, deadline µs): what the test believes each consumer holds.
    let mut valid: BTreeMap<(u32, u64), (u8, AckRef, i64)> = BTreeMap::new();
    let owners = |e: &Engine| -> Vec<Option<String>> {
        e.subscription_info(&name("g")).unwrap().partitions.iter().map(|p| p.owner.clone()).collect()
    };
    for op in ops {
        let now = clock.now().as_micros();
        valid.retain(|_, v| v.2 > now);
        match op {
            GroupOp::Publish { partition, n } => {
                for _ in 0..n {
                    let mut req = PublishRequest::new(name("t"), "x".to_string());
                    req.options.partition = Some(u32::from(partition));
                    let r = e.publish(req).unwrap();
                    published.insert((r.partition, r.seq));
                }
            }
            GroupOp::Fetch { consumer, max } => {
                let id = format!("c{consumer}");
                let opts = FetchOptions { max_msgs: usize::from(max), ..FetchOptions::default() };
                let batch = e.try_fetch(&sub, &id, &opts).unwrap();
                let owned = owners(&e);
                // A consumer that joins rebalances before it is served: what moved is no longer held.
                valid.retain(|at, v| owned[at.0 as usize].as_deref() == Some(format!("c{}", v.0).as_str()));
                for d in batch {
                    let at = (d.message.partition, d.message.seq);
                    prop_assert!(!acked.contains(&at), "acked {at:?} delivered again");
                    prop_assert!(!valid.contains_key(&at), "{at:?} leased twice");
                    prop_assert_eq!(
                        owned[at.0 as usize].as_deref(),
                        Some(id.as_str()),
                        "{:?} delivered to {} which does not own its partition",
                        at,
                        id
                    );
                    valid.insert(at, (consumer, d.lease.unwrap(), d.deadline.unwrap().as_micros()));
                }
            }
            GroupOp::Ack(i) => {
                if let Some(&at) = valid.keys().nth(usize::from(i) % valid.len().max(1)) {
                    let (_, lease, _) = valid.remove(&at).unwrap();
                    e.ack(&sub, lease).map_err(|err| TestCaseError::fail(format!("ack refused: {err}")))?;
                    acked.insert(at);
                }
            }
            GroupOp::AckThrough { consumer, partition, through } => {
                let p = u32::from(partition);
                let mine: Vec<u64> =
                    valid.iter().filter(|(at, v)| at.0 == p && v.0 == consumer).map(|(at, _)| at.1).collect();
                let upto = mine.get(usize::from(through) % mine.len().max(1)).copied().unwrap_or(0);
                let n = e.ack_cumulative(&sub, &format!("c{consumer}"), p, upto).unwrap();
                let settled: Vec<u64> = mine.into_iter().filter(|&s| s <= upto).collect();
                prop_assert_eq!(n, settled.len() as u64, "cumulative ack count");
                for s in settled {
                    valid.remove(&(p, s));
                    acked.insert((p, s));
                }
            }
            GroupOp::Nack(i) => {
                if let Some(&at) = valid.keys().nth(usize::from(i) % valid.len().max(1)) {
                    let (_, lease, _) = valid.remove(&at).unwrap();
                    e.nack(&sub, lease, None).unwrap();
                }
            }
            GroupOp::Expire(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms)));
                e.tick();
            }
            GroupOp::Detach(c) => {
                e.detach(&sub, &format!("c{c}"));
                valid.retain(|_, v| v.0 != c);
            }
        }
        let now = clock.now().as_micros();
        valid.retain(|_, v| v.2 > now);
        // A rebalance takes back what a consumer held in a partition it no longer owns.
        let owned = owners(&e);
        valid.retain(|at, v| owned[at.0 as usize].as_deref() == Some(format!("c{}", v.0).as_str()));
        let info = e.subscription_info(&sub).unwrap();
        let attached: HashSet<String> = info.consumers.iter().map(|c| c.id.to_string()).collect();
        for owner in owned.iter().flatten() {
            prop_assert!(attached.contains(owner), "{owner} owns a partition without being attached");
        }
        prop_assert_eq!(owned.iter().all(Option::is_some), !attached.is_empty(), "owners {:?}", owned);
        // Every message in flight is held by its partition's owner: never two readers of one partition.
        for m in e.peek(&sub, 0, 1000).unwrap().messages {
            if m.state == DeliveryState::InFlight {
                let holder = m.consumer.as_deref().map(str::to_string);
                prop_assert_eq!(
                    &holder,
                    &owned[m.partition as usize],
                    "{}:{} held by a non-owner",
                    m.partition,
                    m.seq
                );
            }
        }
        prop_assert_eq!(info.in_flight, valid.len() as u64, "in flight: engine vs test");
        // Nothing at or below a committed floor is unacked by the test.
        for p in &info.partitions {
            for s in 1..=p.ack_floor {
                prop_assert!(
                    acked.contains(&(p.partition, s)),
                    "{}:{} below the floor but never acked",
                    p.partition,
                    s
                );
            }
        }
    }
    // Everyone leaves; one consumer drains the rest: everything above the committed floors comes.
    for c in 0..4u8 {
        e.detach(&sub, &format!("c{c}"));
    }
    for _ in 0..(published.len() + 10) {
        clock.advance(Duration::from_secs(2));
        e.tick();
        let opts = FetchOptions { max_msgs: 100, ..FetchOptions::default() };
        for d in e.try_fetch(&sub, "drain", &opts).unwrap() {
            let at = (d.message.partition, d.message.seq);
            prop_assert!(!acked.contains(&at), "acked {at:?} delivered again");
            e.ack(&sub, d.lease.unwrap()).unwrap();
            acked.insert(at);
        }
        if acked.len() == published.len() {
            break;
        }
    }
    prop_assert_eq!(&acked, &published, "messages lost");
    prop_assert_eq!(e.subscription_info(&sub).unwrap().backlog, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn partition_exclusive_rebalances_never_share_a_partition_or_lose_a_message(ops in prop::collection::vec(group_op(), 1..80)) {
        run_group(ops)?;
    }
}
