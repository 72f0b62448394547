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
//! or the number of partitions changes, never written to disk. A rebalance that moves a partition away
//! from a consumer that is still attached returns that consumer's in-flight messages of the partition
//! to AVAILABLE (without counting a failure: the consumer did nothing wrong), so the new owner gets them
//! next, from the committed floor up; the old owner's leases on them are stale from then on. A consumer
//! that detaches gives back what it held as any detach does (T7).

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
    /// returned to AVAILABLE. Returns how many messages were taken back.
    pub(crate) fn rebalance(&mut self, now: Timestamp, effects: &mut Effects) -> u64 {
        if self.config.assignment != Assignment::PartitionExclusive {
            self.owners.clear();
            return 0;
        }
        let mut sorted: Vec<ConsumerId> = self.consumers.iter().map(|c| c.id.clone()).collect();
        sorted.sort();
        let new: Vec<Option<ConsumerId>> = range_assign(self.parts.len(), sorted.len())
            .into_iter()
            .map(|rank| rank.and_then(|r| sorted.get(r).cloned()))
            .collect();
        let old = std::mem::replace(&mut self.owners, new);
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
    use super::range_assign;

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
