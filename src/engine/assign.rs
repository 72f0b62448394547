//! Assignment (SEMANTICS.md §9.5): which consumers of a subscription may be handed which messages.
//!
//! - `Shared`: any consumer gets any message.
//! - `PartitionExclusive` (the Kafka consumer-group model): each partition is owned by at most one
//!   consumer. Ownership is a range assignment over the consumers sorted by id: with `n` partitions and
//!   `m` consumers the first `n % m` consumers get `⌈n/m⌉` consecutive partitions and the rest `⌊n/m⌋`;
//!   consumers beyond the `n`-th own nothing and stand by. Sorting by id rather than by arrival makes
//!   the assignment a function of who is attached, so it comes out the same after a restart whatever
//!   order the consumers reconnect in.
//! - `SingleActive` (RabbitMQ's single active consumer): the consumer attached longest receives
//!   everything; the others stand by and the next in attach order takes over when it detaches.
//!
//! Ownership is runtime state: it is recomputed ([`SubState::rebalance`]) whenever the set of consumers
//! or the number of partitions changes, never written to disk. Push consumers are told what changed for
//! them ([`AssignmentChange`]): `Assigned` when they attach owning partitions (under `SingleActive`: all
//! of them, for the active consumer) and whenever a rebalance gives them more, `Revoked` when one takes
//! some away. A rebalance announces every revocation before any assignment, so that, read in the order
//! the engine made them, no partition is ever announced as owned by two consumers at once. A consumer
//! that detaches is told nothing; `Shared` subscriptions announce nothing. A rebalance that moves a partition away
//! from a consumer that is still attached returns that consumer's in-flight messages of the partition
//! to AVAILABLE (without counting a failure: the consumer did nothing wrong), so the new owner gets them
//! next, from the committed floor up; the old owner's leases on them are stale from then on. A consumer
//! that detaches gives back what it held as any detach does (T7).

use std::collections::BTreeMap;

use super::consumer::AssignmentChange;
use super::subscription::{Effects, SubState};
use crate::model::DeliveryState;
use crate::model::clock::Timestamp;
use crate::model::config::Assignment;
use crate::model::message::ConsumerId;
use crate::store::journal::partition_keys;

/// The range assignment of `parts` partitions over `members` consumers: for each partition, the rank
/// (in the sorted member list) of its owner, `None` when there are no members.
pub(crate) fn range_assign(parts: usize, members: usize) -> Vec<Option<usize>> {
    if members == 0 {
        return vec![None; parts];
    }
    let base = parts / members;
    let extra = parts % members;
    let mut out = Vec::with_capacity(parts);
    for rank in 0..members {
        let n = base + usize::from(rank < extra);
        out.extend(std::iter::repeat_n(Some(rank), n));
    }
    out
}

/// What a change of ownership from `before` to `after` (per partition, its owner) means for each
/// consumer, in the order to announce it: every revocation first, then every assignment. `fresh` was
/// told nothing yet (it just attached), so everything it owns after counts as given, and nothing is
/// taken from it.
pub(crate) fn ownership_changes(
    before: &[Option<ConsumerId>],
    after: &[Option<ConsumerId>],
    fresh: Option<&ConsumerId>,
) -> Vec<(ConsumerId, AssignmentChange)> {
    let mut revoked: BTreeMap<&ConsumerId, Vec<u32>> = BTreeMap::new();
    let mut assigned: BTreeMap<&ConsumerId, Vec<u32>> = BTreeMap::new();
    for p in 0..before.len().max(after.len()) {
        let old = before.get(p).and_then(Option::as_ref);
        let new = after.get(p).and_then(Option::as_ref);
        let partition = u32::try_from(p).unwrap_or(u32::MAX);
        if old != new
            && let Some(old) = old
            && Some(old) != fresh
        {
            revoked.entry(old).or_default().push(partition);
        }
        if let Some(new) = new
            && (old != Some(new) || fresh == Some(new))
        {
            assigned.entry(new).or_default().push(partition);
        }
    }
    let revocations = revoked.into_iter().map(|(c, parts)| (c.clone(), AssignmentChange::Revoked(parts)));
    let assignments = assigned.into_iter().map(|(c, parts)| (c.clone(), AssignmentChange::Assigned(parts)));
    revocations.chain(assignments).collect()
}

impl SubState {
    /// Whether consumer `c` may be handed messages of partition `p` now.
    pub(super) fn may_receive(&self, c: usize, p: usize) -> bool {
        match self.config.assignment {
            Assignment::Shared => true,
            Assignment::SingleActive => c == 0,
            Assignment::PartitionExclusive => {
                match (self.owners.get(p).and_then(Option::as_ref), self.consumers.get(c)) {
                    (Some(owner), Some(consumer)) => *owner == consumer.id,
                    _ => false,
                }
            }
        }
    }

    /// Whether consumer `c` may be handed anything at all (it owns a partition, or is the active one).
    pub(super) fn may_receive_any(&self, c: usize) -> bool {
        match self.config.assignment {
            Assignment::Shared => true,
            Assignment::SingleActive => c == 0,
            Assignment::PartitionExclusive => {
                self.consumers.get(c).is_some_and(|me| self.owners.iter().flatten().any(|o| *o == me.id))
            }
        }
    }

    /// The consumer that reads partition `p` alone: its owner under `PartitionExclusive`, the active
    /// consumer under `SingleActive`, nobody under `Shared`.
    pub(crate) fn owner_of(&self, p: usize) -> Option<&ConsumerId> {
        match self.config.assignment {
            Assignment::Shared => None,
            Assignment::SingleActive => self.consumers.first().map(|c| &c.id),
            Assignment::PartitionExclusive => self.owners.get(p).and_then(Option::as_ref),
        }
    }

    /// Whether consumer `c` stands by: attached, but handed nothing under the assignment in force.
    pub(crate) fn standby(&self, c: usize) -> bool {
        !self.may_receive_any(c)
    }

    /// Recomputes partition ownership after the consumers or the partitions changed. Every partition
    /// whose owner changed while its old owner stays attached has that owner's in-flight messages
    /// returned to AVAILABLE. Push consumers are told what they gained and lost. Returns how many
    /// messages were taken back.
    pub(crate) fn rebalance(&mut self, now: Timestamp, effects: &mut Effects) -> u64 {
        self.rebalance_announcing(now, effects, None)
    }

    /// [`SubState::rebalance`] after consumer `fresh` attached: it is told everything it owns, not
    /// only what changed.
    pub(crate) fn rebalance_announcing(
        &mut self,
        now: Timestamp,
        effects: &mut Effects,
        fresh: Option<&ConsumerId>,
    ) -> u64 {
        let new: Vec<Option<ConsumerId>> = match self.config.assignment {
            Assignment::Shared => Vec::new(),
            // The active consumer reads every partition alone: kept as the owner of each, so that a
            // takeover is announced like any change of owner.
            Assignment::SingleActive => {
                let active = self.consumers.first().map(|c| c.id.clone());
                vec![active; self.parts.len()]
            }
            Assignment::PartitionExclusive => {
                let mut sorted: Vec<ConsumerId> = self.consumers.iter().map(|c| c.id.clone()).collect();
                sorted.sort();
                range_assign(self.parts.len(), sorted.len())
                    .into_iter()
                    .map(|rank| rank.and_then(|r| sorted.get(r).cloned()))
                    .collect()
            }
        };
        let old = std::mem::replace(&mut self.owners, new);
        self.announce(&old, fresh);
        let mut revoked = 0;
        for (p, before) in old.iter().enumerate() {
            let Some(before) = before else {
                continue;
            };
            let after = self.owners.get(p).and_then(Option::as_ref);
            if after == Some(before) || !self.consumers.iter().any(|c| c.id == *before) {
                continue;
            }
            revoked += self.revoke(u32::try_from(p).unwrap_or(u32::MAX), before, now);
        }
        if revoked > 0 || old != self.owners {
            effects.wake = true;
        }
        revoked
    }

    /// Tells the push consumers still attached what the change from `old` to the current owners gave
    /// and took from them.
    /// A group member that joins owning nothing is told so (an empty `Assigned`, as a Kafka member
    /// of a group with more members than partitions hears), so that it knows it stands by; a
    /// `SingleActive` standby hears nothing until it takes over.
    fn announce(&self, old: &[Option<ConsumerId>], fresh: Option<&ConsumerId>) {
        if old.is_empty() && self.owners.is_empty() {
            return;
        }
        let changes = ownership_changes(old, &self.owners, fresh);
        let push_of =
            |id: &ConsumerId| self.consumers.iter().find(|c| c.id == *id).and_then(|c| c.push.as_ref());
        if let Some(fresh) = fresh
            && self.config.assignment == Assignment::PartitionExclusive
            && !changes.iter().any(|(id, _)| id == fresh)
            && let Some(push) = push_of(fresh)
        {
            push.notes.push(AssignmentChange::Assigned(Vec::new()));
        }
        for (id, change) in changes {
            if let Some(push) = push_of(&id) {
                push.notes.push(change);
            }
        }
    }

    /// Takes back every message of partition `p` that `from` holds in flight: AVAILABLE again at once,
    /// with its attempt kept (it was delivered), ahead of new messages.
    fn revoke(&mut self, p: u32, from: &ConsumerId, now: Timestamp) -> u64 {
        let keys: Vec<u64> = self
            .entries
            .range(partition_keys(p))
            .filter(|(_, e)| e.state == DeliveryState::InFlight && e.consumer.as_ref() == Some(from))
            .map(|(k, _)| *k)
            .collect();
        for &key in &keys {
            self.release(key);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.state = DeliveryState::Available;
                entry.consumer = None;
                entry.not_before = now;
                self.ready.insert(key);
            }
        }
        keys.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{ownership_changes, range_assign};
    use crate::engine::{
        AssignmentChange, AttachOptions, Engine, EngineConfig, ManualClock, PublishRequest, PushConsumer,
        PushItem, SubscriptionConfig, Timestamp, TopicConfig,
    };
    use crate::model::config::Assignment;
    use crate::model::message::ConsumerId;
    use crate::model::name::Name;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    /// An engine with topic `t` of `partitions` partitions and subscription `s` on it.
    fn engine_with(partitions: u32, assignment: Assignment) -> Engine {
        let e = Engine::with_clock(
            ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000)),
            EngineConfig::default(),
        );
        let mut topic = TopicConfig::new(name("t"));
        topic.partitions = partitions;
        e.create_topic(topic).unwrap();
        let mut sub = SubscriptionConfig::new(name("s"), name("t"));
        sub.assignment = assignment;
        e.create_subscription(sub).unwrap();
        e
    }

    fn attach(e: &Engine, id: &str) -> PushConsumer {
        e.attach(&name("s"), AttachOptions { consumer: Some(id.into()), ..AttachOptions::default() }).unwrap()
    }

    /// What the consumer has waiting, deliveries shown by partition and seq.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Delivery(u32, u64),
        Assigned(Vec<u32>),
        Revoked(Vec<u32>),
    }

    fn drain(c: &mut PushConsumer) -> Vec<Seen> {
        std::iter::from_fn(|| c.try_recv_item())
            .map(|item| match item {
                PushItem::Delivery(d) => Seen::Delivery(d.message.partition, d.message.seq),
                PushItem::Assignment(AssignmentChange::Assigned(p)) => Seen::Assigned(p),
                PushItem::Assignment(AssignmentChange::Revoked(p)) => Seen::Revoked(p),
            })
            .collect()
    }

    fn owners_now(e: &Engine) -> Vec<Option<String>> {
        e.subscription_info(&name("s")).unwrap().partitions.iter().map(|p| p.owner.clone()).collect()
    }

    #[test]
    fn partition_exclusive_consumers_hear_exactly_what_each_rebalance_gives_and_takes() {
        let e = engine_with(4, Assignment::PartitionExclusive);
        let mut a = attach(&e, "a");
        assert_eq!(drain(&mut a), vec![Seen::Assigned(vec![0, 1, 2, 3])]);
        for p in 0..4 {
            let mut req = PublishRequest::new(name("t"), format!("m{p}"));
            req.options.partition = Some(p);
            e.publish(req).unwrap();
        }
        let mut b = attach(&e, "b");
        // a had its four deliveries queued before b came: the revocation comes after them, where it
        // happened. b hears its assignment before anything of those partitions.
        assert_eq!(
            drain(&mut a),
            vec![
                Seen::Delivery(0, 1),
                Seen::Delivery(1, 1),
                Seen::Delivery(2, 1),
                Seen::Delivery(3, 1),
                Seen::Revoked(vec![2, 3]),
            ]
        );
        assert_eq!(
            drain(&mut b),
            vec![Seen::Assigned(vec![2, 3]), Seen::Delivery(2, 1), Seen::Delivery(3, 1)]
        );
        assert_eq!(owners_now(&e), [Some("a"), Some("a"), Some("b"), Some("b")].map(|o| o.map(String::from)));
        drop(a);
        // a is gone (it hears nothing); b takes its partitions, and their message comes back to it.
        assert_eq!(
            drain(&mut b),
            vec![Seen::Assigned(vec![0, 1]), Seen::Delivery(0, 1), Seen::Delivery(1, 1)]
        );
        assert_eq!(owners_now(&e), vec![Some("b".to_string()); 4]);
        // A new member takes the upper half from b, with the message b held there.
        let mut c = attach(&e, "c");
        assert_eq!(drain(&mut b), vec![Seen::Revoked(vec![2, 3])]);
        assert_eq!(
            drain(&mut c),
            vec![Seen::Assigned(vec![2, 3]), Seen::Delivery(2, 1), Seen::Delivery(3, 1)]
        );
    }

    #[test]
    fn a_member_left_without_a_partition_is_told_it_holds_none() {
        let e = engine_with(1, Assignment::PartitionExclusive);
        let mut a = attach(&e, "a");
        let mut b = attach(&e, "b");
        assert_eq!(drain(&mut a), vec![Seen::Assigned(vec![0])]);
        assert_eq!(drain(&mut b), vec![Seen::Assigned(vec![])]);
        drop(a);
        assert_eq!(drain(&mut b), vec![Seen::Assigned(vec![0])]);
    }

    #[test]
    fn announced_changes_never_show_a_partition_owned_twice() {
        // Membership over time; each step's changes applied in the order given must keep every
        // partition with at most one holder after every single change.
        let ids: Vec<ConsumerId> = ["a", "b", "c"].iter().map(|s| ConsumerId::from(*s)).collect();
        let steps: [&[usize]; 6] = [&[0], &[0, 1], &[0, 1, 2], &[1, 2], &[2], &[0, 2]];
        let mut held: BTreeMap<u32, ConsumerId> = BTreeMap::new();
        let mut before: Vec<Option<ConsumerId>> = vec![None; 7];
        let mut members: Vec<usize> = Vec::new();
        for step in steps {
            // Who left takes what it held with it (it is told nothing).
            held.retain(|_, holder| step.iter().any(|&m| ids[m] == *holder));
            let fresh = step.iter().find(|m| !members.contains(m)).map(|&m| ids[m].clone());
            let after: Vec<Option<ConsumerId>> =
                range_assign(7, step.len()).into_iter().map(|r| r.map(|r| ids[step[r]].clone())).collect();
            let before_left: Vec<Option<ConsumerId>> =
                before.iter().map(|o| o.clone().filter(|o| step.iter().any(|&m| ids[m] == *o))).collect();
            for (id, change) in ownership_changes(&before_left, &after, fresh.as_ref()) {
                match change {
                    AssignmentChange::Revoked(parts) => {
                        for p in parts {
                            assert_eq!(
                                held.remove(&p).as_ref(),
                                Some(&id),
                                "{id} gave back {p} it did not hold"
                            );
                        }
                    }
                    AssignmentChange::Assigned(parts) => {
                        for p in parts {
                            let other = held.insert(p, id.clone());
                            assert!(
                                other.is_none(),
                                "partition {p} announced to {id} while {other:?} holds it"
                            );
                        }
                    }
                }
            }
            let now: BTreeMap<u32, ConsumerId> = after
                .iter()
                .enumerate()
                .filter_map(|(p, o)| o.clone().map(|o| (u32::try_from(p).unwrap(), o)))
                .collect();
            assert_eq!(held, now, "what was announced is the assignment in force");
            before = after;
            members = step.to_vec();
        }
    }

    #[test]
    fn single_active_tells_the_active_consumer_everything_and_a_standby_on_takeover() {
        let e = engine_with(3, Assignment::SingleActive);
        let mut a = attach(&e, "a");
        let mut b = attach(&e, "b");
        assert_eq!(drain(&mut a), vec![Seen::Assigned(vec![0, 1, 2])]);
        assert_eq!(drain(&mut b), vec![], "a standby hears nothing");
        drop(a);
        assert_eq!(drain(&mut b), vec![Seen::Assigned(vec![0, 1, 2])]);
        // Partitions added later go to the active consumer.
        e.set_partitions(&name("t"), 4).unwrap();
        assert_eq!(drain(&mut b), vec![Seen::Assigned(vec![3])]);
    }

    #[test]
    fn shared_subscriptions_announce_nothing() {
        let e = engine_with(2, Assignment::Shared);
        let mut a = attach(&e, "a");
        let mut b = attach(&e, "b");
        drop(a);
        assert_eq!(drain(&mut b), vec![]);
        a = attach(&e, "a");
        assert_eq!(drain(&mut a), vec![]);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_an_assignment_change() {
        let e = engine_with(2, Assignment::PartitionExclusive);
        let mut a = attach(&e, "a");
        assert!(matches!(a.recv_item().await, Some(PushItem::Assignment(AssignmentChange::Assigned(_)))));
        let waiting = tokio::spawn(async move { a.recv_item().await });
        tokio::task::yield_now().await;
        let _b = attach(&e, "b");
        let item = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap();
        assert_eq!(item, Some(PushItem::Assignment(AssignmentChange::Revoked(vec![1]))));
    }

    #[tokio::test]
    async fn a_reader_waiting_at_a_takeover_hears_the_assignment_before_the_message() {
        let e = engine_with(1, Assignment::SingleActive);
        let a = attach(&e, "a");
        let mut b = attach(&e, "b");
        e.publish(PublishRequest::new(name("t"), "x")).unwrap();
        // b waits with nothing to read; the takeover then queues its assignment and the message a held
        // (still unread in a's channel) together.
        let waiting = tokio::spawn(async move {
            let first = b.recv_item().await;
            let second = b.recv_item().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        drop(a);
        let (first, second) =
            tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap();
        assert_eq!(first, Some(PushItem::Assignment(AssignmentChange::Assigned(vec![0]))));
        assert!(matches!(second, Some(PushItem::Delivery(d)) if d.message.seq == 1));
    }

    #[test]
    fn a_reader_of_deliveries_only_passes_changes_over() {
        let e = engine_with(2, Assignment::PartitionExclusive);
        let mut a = attach(&e, "a");
        e.publish(PublishRequest::new(name("t"), "x")).unwrap();
        let d = a.try_recv().unwrap();
        assert_eq!(d.message.seq, 1);
        assert!(a.try_recv_item().is_none(), "the assignment was passed over by try_recv");
    }

    #[test]
    fn range_assignment_gives_consecutive_runs_the_first_ones_longer() {
        assert_eq!(range_assign(2, 2), vec![Some(0), Some(1)]);
        assert_eq!(range_assign(5, 2), vec![Some(0), Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(range_assign(2, 3), vec![Some(0), Some(1)]);
        assert_eq!(range_assign(3, 0), vec![None, None, None]);
        assert_eq!(range_assign(0, 4), Vec::<Option<usize>>::new());
        for parts in 0..20 {
            for members in 1..8 {
                let a = range_assign(parts, members);
                assert_eq!(a.len(), parts);
                assert!(a.windows(2).all(|w| w[0] <= w[1]));
                assert!(a.iter().flatten().all(|&r| r < members));
            }
        }
    }
}
