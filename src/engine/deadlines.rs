//! The in-flight messages of a subscription ordered by lease deadline.
//!
//! A lease's deadline is the lease time plus the subscription's ack deadline, so leases taken one after
//! the other almost always arrive in deadline order, and a consumer that keeps up acks the oldest lease
//! first. A sorted ring fits that: an insert in order is a push at the back, the ack of the oldest a pop
//! at the front. Anything else (an extension, an ack out of order) finds its place by binary search; a
//! removal inside the ring leaves a tombstone, dropped when it reaches the front or when tombstones
//! outnumber the live entries. The front is never a tombstone, so [`DeadlineQueue::first`] is O(1).

use std::collections::VecDeque;

use crate::model::Timestamp;

/// `(deadline, seq)` pairs in ascending order, like a `BTreeSet<(Timestamp, u64)>` for the calls the
/// subscription makes.
#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    /// Sorted by `(deadline, seq)`; `false` marks a removed entry.
    ring: VecDeque<(Timestamp, u64, bool)>,
    live: usize,
}

impl DeadlineQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `(deadline, seq)`; returns false when it was already there.
    pub fn insert(&mut self, (deadline, seq): (Timestamp, u64)) -> bool {
        let key = (deadline, seq);
        if self.ring.back().is_none_or(|&(t, s, _)| (t, s) < key) {
            self.ring.push_back((deadline, seq, true));
            self.live += 1;
            return true;
        }
        match self.ring.binary_search_by(|&(t, s, _)| (t, s).cmp(&key)) {
            Ok(i) => {
                let slot = &mut self.ring[i];
                if slot.2 {
                    return false;
                }
                slot.2 = true;
            }
            Err(i) => self.ring.insert(i, (deadline, seq, true)),
        }
        self.live += 1;
        true
    }

    /// Removes `(deadline, seq)`; returns whether it was there.
    pub fn remove(&mut self, &(deadline, seq): &(Timestamp, u64)) -> bool {
        let key = (deadline, seq);
        let found = match self.ring.front() {
            Some(&(t, s, _)) if (t, s) == key => Some(0),
            _ => self.ring.binary_search_by(|&(t, s, _)| (t, s).cmp(&key)).ok(),
        };
        let Some(i) = found.filter(|&i| self.ring[i].2) else { return false };
        self.ring[i].2 = false;
        self.live -= 1;
        while self.ring.front().is_some_and(|&(_, _, live)| !live) {
            self.ring.pop_front();
        }
        if self.ring.len() > 2 * self.live + 64 {
            self.ring.retain(|&(_, _, live)| live);
        }
        true
    }

    /// The earliest deadline and its seq.
    pub fn first(&self) -> Option<(Timestamp, u64)> {
        self.ring.front().map(|&(t, s, _)| (t, s))
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
            assert!(q.insert((t(seq as i64), seq)));
        }
        assert_eq!(q.first(), Some((t(1), 1)));
        assert!(q.remove(&(t(1), 1)));
        assert!(!q.remove(&(t(1), 1)), "a second removal finds nothing");
        assert_eq!(q.first(), Some((t(2), 2)));
        // An ack in the middle leaves the front alone; acking the front then skips the gap.
        assert!(q.remove(&(t(3), 3)));
        assert!(q.remove(&(t(2), 2)));
        assert_eq!(q.first(), Some((t(4), 4)));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn an_extension_moves_a_lease_behind_later_ones() {
        let mut q = DeadlineQueue::new();
        q.insert((t(10), 1));
        q.insert((t(20), 2));
        assert!(q.remove(&(t(10), 1)));
        assert!(q.insert((t(30), 1)));
        assert!(q.insert((t(15), 3)), "a shorter deadline lands inside");
        assert!(!q.insert((t(15), 3)));
        let mut order = Vec::new();
        while let Some(first) = q.first() {
            q.remove(&first);
            order.push(first.1);
        }
        assert_eq!(order, [3, 2, 1]);
    }

    /// The queue answers like the ordered set it replaces, for any mix of inserts and removals.
    #[test]
    fn behaves_like_an_ordered_set() {
        let mut q = DeadlineQueue::new();
        let mut model = BTreeSet::new();
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
                    assert_eq!(q.remove(&v), model.remove(&v));
                }
                assert_eq!(q.remove(&key), model.remove(&key));
            } else {
                assert_eq!(q.insert(key), model.insert(key));
            }
            assert_eq!(q.first(), model.first().copied());
            assert_eq!(q.len(), model.len());
        }
    }
}
