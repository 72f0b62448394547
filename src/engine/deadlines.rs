//! The in-flight messages of a subscription ordered by lease deadline.
//!
//! A lease's deadline is the lease time plus the subscription's ack deadline, so leases taken one after
//! the other almost always arrive in deadline order, and a consumer that keeps up acks the oldest lease
//! first. A sorted ring fits that: an insert in order is a push at the back, the ack of the oldest a pop
//! at the front. Anything else (an extension, an ack out of order) finds its place by binary search; a
//! removal inside the ring leaves a tombstone, dropped when it reaches the front or when tombstones
//! outnumber the live entries. The front is never a tombstone, so [`DeadlineQueue::first`] is O(1).
//!
//! Equal deadlines are ordered by lease number, not by seq: leases are numbered in the order they are
//! taken, so a batch leased in one instant is in order even when it hops between partitions (whose
//! seqs interleave), and acks in delivery order pop at the front.

use std::collections::VecDeque;

use crate::model::Timestamp;

/// One lease in the queue: its deadline, its lease number (unique within the subscription), the seq
/// (entry key) it leases, and `false` once removed.
#[derive(Debug, Clone, Copy)]
struct Slot {
    deadline: Timestamp,
    lease: u64,
    seq: u64,
    live: bool,
}

impl Slot {
    fn key(&self) -> (Timestamp, u64) {
        (self.deadline, self.lease)
    }
}

/// Leases in ascending `(deadline, lease)` order, like a `BTreeMap<(Timestamp, u64), u64>` for the
/// calls the subscription makes.
#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    /// Sorted by `(deadline, lease)`.
    ring: VecDeque<Slot>,
    live: usize,
}

impl DeadlineQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds lease `lease` of `seq`, due at `deadline`; returns false when `(deadline, lease)` was already
    /// there.
    pub fn insert(&mut self, deadline: Timestamp, lease: u64, seq: u64) -> bool {
        let key = (deadline, lease);
        let slot = Slot { deadline, lease, seq, live: true };
        if self.ring.back().is_none_or(|last| last.key() < key) {
            self.ring.push_back(slot);
            self.live += 1;
            return true;
        }
        match self.ring.binary_search_by(|s| s.key().cmp(&key)) {
            Ok(i) => {
                let found = &mut self.ring[i];
                if found.live {
                    return false;
                }
                *found = slot;
            }
            Err(i) => self.ring.insert(i, slot),
        }
        self.live += 1;
        true
    }

    /// Removes the lease `lease` due at `deadline`; returns whether it was there.
    pub fn remove(&mut self, deadline: Timestamp, lease: u64) -> bool {
        let key = (deadline, lease);
        let found = match self.ring.front() {
            Some(first) if first.key() == key => Some(0),
            _ => self.ring.binary_search_by(|s| s.key().cmp(&key)).ok(),
        };
        let Some(i) = found.filter(|&i| self.ring[i].live) else { return false };
        self.ring[i].live = false;
        self.live -= 1;
        while self.ring.front().is_some_and(|s| !s.live) {
            self.ring.pop_front();
        }
        if self.ring.len() > 2 * self.live + 64 {
            self.ring.retain(|s| s.live);
        }
        true
    }

    /// The earliest deadline and the seq leased with it.
    pub fn first(&self) -> Option<(Timestamp, u64)> {
        self.ring.front().map(|s| (s.deadline, s.seq))
    }

    /// How many entries are in the queue.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_micros(ms * 1000)
    }

    #[test]
    fn in_order_leases_and_acks_stay_at_the_ends() {
        let mut q = DeadlineQueue::new();
        for seq in 1..=5 {
            assert!(q.insert(t(seq as i64), seq, seq));
        }
        assert_eq!(q.first(), Some((t(1), 1)));
        assert!(q.remove(t(1), 1));
        assert!(!q.remove(t(1), 1), "a second removal finds nothing");
        assert_eq!(q.first(), Some((t(2), 2)));
        // An ack in the middle leaves the front alone; acking the front then skips the gap.
        assert!(q.remove(t(3), 3));
        assert!(q.remove(t(2), 2));
        assert_eq!(q.first(), Some((t(4), 4)));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn an_extension_moves_a_lease_behind_later_ones() {
        let mut q = DeadlineQueue::new();
        q.insert(t(10), 1, 1);
        q.insert(t(20), 2, 2);
        assert!(q.remove(t(10), 1));
        assert!(q.insert(t(30), 1, 1));
        assert!(q.insert(t(15), 3, 3), "a shorter deadline lands inside");
        assert!(!q.insert(t(15), 3, 3));
        let mut order = Vec::new();
        while let Some((deadline, seq)) = q.first() {
            // In these tests the lease number is the seq.
            q.remove(deadline, seq);
            order.push(seq);
        }
        assert_eq!(order, [3, 2, 1]);
    }

    #[test]
    fn a_batch_leased_in_one_instant_keeps_lease_order_across_partitions() {
        let mut q = DeadlineQueue::new();
        // Seqs from two partitions (entry keys interleave), leased at the same instant in this order.
        let seqs = [(1u64 << 40) + 1, 1, (1u64 << 40) + 2, 2];
        for (lease, &seq) in (10u64..).zip(&seqs) {
            assert!(q.insert(t(5), lease, seq));
        }
        let mut order = Vec::new();
        for lease in 10u64..14 {
            order.push(q.first().map(|(_, seq)| seq));
            assert!(q.remove(t(5), lease), "acks in delivery order come off the front");
        }
        assert_eq!(order, seqs.map(Some));
        assert_eq!((q.len(), q.ring.len()), (0, 0));
    }

    /// The queue answers like the ordered set it replaces, for any mix of inserts and removals (the
    /// lease number is the seq here).
    #[test]
    fn behaves_like_an_ordered_set() {
        let mut q = DeadlineQueue::new();
        let mut model: BTreeSet<(Timestamp, u64)> = BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly in order, as leases are; now and then a deadline out of order or a removal inside.
            let key =
                if x.is_multiple_of(5) { (t((x % 500) as i64), x % 97) } else { (t(step as i64), step) };
            if x.is_multiple_of(3) {
                let victim =
                    if x.is_multiple_of(2) { model.first().copied() } else { model.iter().nth(3).copied() };
                if let Some(v) = victim {
                    assert_eq!(q.remove(v.0, v.1), model.remove(&v));
                }
                assert_eq!(q.remove(key.0, key.1), model.remove(&key));
            } else {
                assert_eq!(q.insert(key.0, key.1, key.1), model.insert(key));
            }
            assert_eq!(q.first(), model.first().copied());
            assert_eq!(q.len(), model.len());
        }
    }
}
