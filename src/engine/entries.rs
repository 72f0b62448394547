//! A subscription's unsettled deliveries, ordered by position (partition, then seq).
//!
//! Deliveries are leased in seq order within a partition and a consumer that keeps up acks the oldest
//! first, so each partition's entries form a sorted ring: a new lease is a push at the back, the ack of
//! the oldest a pop at the front, and a lookup a binary search over contiguous memory. Anything else (an
//! ack out of order, a restore, a seek) finds its place by binary search; a removal inside the ring leaves
//! a tombstone, dropped when it reaches either end or when tombstones outnumber the live entries. Neither
//! end is ever a tombstone. One ring per partition keeps the partitions, which are leased in turn, from
//! inserting into each other's middle.
//!
//! It replaces a `BTreeMap<u64, Entry>` whose node shifts and rebalancing were a visible share of the
//! server's time per acked message; the calls mirror the map's so the subscription code reads the same.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use super::subscription::Entry;
use crate::store::journal::split_key;

/// Entries keyed by [`pos_key`], iterated in key order.
#[derive(Debug, Default)]
pub(crate) struct EntryMap {
    /// Indexed by partition.
    parts: Vec<Ring>,
    len: usize,
}

/// One partition's entries: `(key, entry)` sorted by key, `None` for a removed one.
#[derive(Debug, Default)]
struct Ring {
    slots: VecDeque<(u64, Option<Entry>)>,
    live: usize,
}

impl Ring {
    fn find(&self, key: u64) -> Result<usize, usize> {
        match self.slots.front() {
            Some(&(k, _)) if k == key => Ok(0),
            _ => self.slots.binary_search_by(|&(k, _)| k.cmp(&key)),
        }
    }

    /// Drops tombstones at both ends, and everywhere once they outnumber the live entries.
    fn tidy(&mut self) {
        while self.slots.front().is_some_and(|(_, e)| e.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|(_, e)| e.is_none()) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.live + 64 {
            self.slots.retain(|(_, e)| e.is_some());
        }
    }

    /// The index of the first slot whose key is not below `bound`.
    fn lower(&self, bound: Bound<&u64>) -> usize {
        match bound {
            Bound::Unbounded => 0,
            Bound::Included(&k) => self.slots.partition_point(|&(s, _)| s < k),
            Bound::Excluded(&k) => self.slots.partition_point(|&(s, _)| s <= k),
        }
    }

    /// The index one past the last slot whose key is not above `bound`.
    fn upper(&self, bound: Bound<&u64>) -> usize {
        match bound {
            Bound::Unbounded => self.slots.len(),
            Bound::Included(&k) => self.slots.partition_point(|&(s, _)| s <= k),
            Bound::Excluded(&k) => self.slots.partition_point(|&(s, _)| s < k),
        }
    }
}

impl EntryMap {
    pub fn new() -> Self {
        Self::default()
    }

    fn ring(&self, key: u64) -> Option<&Ring> {
        self.parts.get(split_key(key).0 as usize)
    }

    fn ring_mut(&mut self, key: u64) -> Option<&mut Ring> {
        self.parts.get_mut(split_key(key).0 as usize)
    }

    pub fn get(&self, key: &u64) -> Option<&Entry> {
        let ring = self.ring(*key)?;
        let i = ring.find(*key).ok()?;
        ring.slots[i].1.as_ref()
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut Entry> {
        let ring = self.ring_mut(*key)?;
        let i = ring.find(*key).ok()?;
        ring.slots[i].1.as_mut()
    }

    /// Puts `entry` at `key`, returning the entry it replaced.
    pub fn insert(&mut self, key: u64, entry: Entry) -> Option<Entry> {
        let p = split_key(key).0 as usize;
        if self.parts.len() <= p {
            self.parts.resize_with(p + 1, Ring::default);
        }
        let ring = &mut self.parts[p];
        if ring.slots.back().is_none_or(|&(k, _)| k < key) {
            ring.slots.push_back((key, Some(entry)));
            ring.live += 1;
            self.len += 1;
            return None;
        }
        match ring.find(key) {
            Ok(i) => {
                let old = ring.slots[i].1.replace(entry);
                if old.is_none() {
                    ring.live += 1;
                    self.len += 1;
                }
                old
            }
            Err(i) => {
                ring.slots.insert(i, (key, Some(entry)));
                ring.live += 1;
                self.len += 1;
                None
            }
        }
    }

    /// The entry at `key`, made with `make` when there is none.
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> Entry) -> &mut Entry {
        let p = split_key(key).0 as usize;
        if self.parts.len() <= p {
            self.parts.resize_with(p + 1, Ring::default);
        }
        let ring = &mut self.parts[p];
        let i = match ring.find(key) {
            Ok(i) => i,
            Err(i) => {
                ring.slots.insert(i, (key, None));
                i
            }
        };
        if ring.slots[i].1.is_none() {
            ring.live += 1;
            self.len += 1;
        }
        ring.slots[i].1.get_or_insert_with(make)
    }

    pub fn remove(&mut self, key: &u64) -> Option<Entry> {
        let ring = self.ring_mut(*key)?;
        let i = ring.find(*key).ok()?;
        let old = ring.slots[i].1.take()?;
        ring.live -= 1;
        ring.tidy();
        self.len -= 1;
        Some(old)
    }

    pub fn clear(&mut self) {
        self.parts.clear();
        self.len = 0;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The entries whose keys fall in `range`, in key order.
    pub fn range<R: RangeBounds<u64>>(&self, range: R) -> impl Iterator<Item = (&u64, &Entry)> + '_ {
        let first = match range.start_bound() {
            Bound::Included(&k) | Bound::Excluded(&k) => split_key(k).0 as usize,
            Bound::Unbounded => 0,
        };
        let last = match range.end_bound() {
            Bound::Included(&k) | Bound::Excluded(&k) => split_key(k).0 as usize,
            Bound::Unbounded => usize::MAX,
        };
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.parts
            .iter()
            .enumerate()
            .skip(first)
            .take_while(move |&(p, _)| p <= last)
            .flat_map(move |(_, ring)| {
                let (lo, hi) = (ring.lower(start.as_ref()), ring.upper(end.as_ref()));
                ring.slots.range(lo..hi.max(lo))
            })
            .filter_map(|(k, e)| e.as_ref().map(|e| (k, e)))
    }

    /// Partition `p`'s lowest entry (never a tombstone: the ends of a ring are live).
    pub fn first_in(&self, p: u32) -> Option<(u64, &Entry)> {
        let (key, entry) = self.parts.get(p as usize)?.slots.front()?;
        entry.as_ref().map(|e| (*key, e))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Entry)> + '_ {
        self.range(..)
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.iter().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;
    use crate::store::journal::{partition_keys, pos_key as key};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(bytes: u64) -> Entry {
        Entry::unleased(Timestamp::from_micros(0), bytes)
    }

    #[test]
    fn in_order_leases_and_acks_stay_at_the_ends() {
        let mut m = EntryMap::new();
        for seq in 1..=5 {
            assert!(m.insert(key(0, seq), entry(seq)).is_none());
        }
        assert_eq!(m.remove(&key(0, 1)).map(|e| e.bytes), Some(1));
        assert!(m.remove(&key(0, 1)).is_none(), "a second removal finds nothing");
        assert_eq!(m.remove(&key(0, 3)).map(|e| e.bytes), Some(3));
        let left: Vec<u64> = m.iter().map(|(k, _)| split_key(*k).1).collect();
        assert_eq!(left, [2, 4, 5]);
        assert_eq!(m.range(partition_keys(0)).next().map(|(k, _)| *k), Some(key(0, 2)));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn partitions_keep_their_own_order_and_ranges_stay_inside_one() {
        let mut m = EntryMap::new();
        for seq in 1..=3 {
            for p in [2, 0] {
                m.insert(key(p, seq), entry(u64::from(p) * 10 + seq));
            }
        }
        let all: Vec<u64> = m.values().map(|e| e.bytes).collect();
        assert_eq!(all, [1, 2, 3, 21, 22, 23]);
        let p2: Vec<u64> = m.range(key(2, 2)..=key(2, 9)).map(|(_, e)| e.bytes).collect();
        assert_eq!(p2, [22, 23]);
        assert_eq!(m.range(partition_keys(1)).count(), 0, "a partition with no ring is empty");
        assert!(m.get(&key(7, 1)).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64),
        Remove(u32, u64),
        Touch(u32, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let pos = (0u32..3, 0u64..64);
        prop_oneof![
            3 => pos.clone().prop_map(|(p, s)| Op::Insert(p, s)),
            3 => pos.clone().prop_map(|(p, s)| Op::Remove(p, s)),
            1 => pos.prop_map(|(p, s)| Op::Touch(p, s)),
        ]
    }

    proptest! {
        /// Behaves as the `BTreeMap` it replaces for every call the subscription makes.
        #[test]
        fn agrees_with_a_btreemap(ops in proptest::collection::vec(op(), 1..400), lo in 0u64..64, hi in 0u64..64) {
            let mut m = EntryMap::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(p, s) => {
                        let k = key(p, s);
                        let bytes = k ^ 0x55;
                        prop_assert_eq!(m.insert(k, entry(bytes)).map(|e| e.bytes), model.insert(k, bytes));
                    }
                    Op::Remove(p, s) => {
                        let k = key(p, s);
                        prop_assert_eq!(m.remove(&k).map(|e| e.bytes), model.remove(&k));
                    }
                    Op::Touch(p, s) => {
                        let k = key(p, s);
                        let e = m.get_or_insert_with(k, || entry(7));
                        e.attempt += 1;
                        model.entry(k).or_insert(7);
                    }
                }
                prop_assert_eq!(m.len(), model.len());
            }
            let got: Vec<(u64, u64)> = m.iter().map(|(k, e)| (*k, e.bytes)).collect();
            let want: Vec<(u64, u64)> = model.iter().map(|(k, b)| (*k, *b)).collect();
            prop_assert_eq!(got, want);
            for p in 0..3 {
                let got: Vec<u64> = m.range(key(p, lo)..=key(p, hi)).map(|(k, _)| *k).collect();
                let want: Vec<u64> = if lo <= hi {
                    model.range(key(p, lo)..=key(p, hi)).map(|(k, _)| *k).collect()
                } else {
                    Vec::new()
                };
                prop_assert_eq!(got, want);
                let got: Vec<u64> = m.range(key(p, lo)..key(p, hi)).map(|(k, _)| *k).collect();
                let want: Vec<u64> = if lo < hi {
                    model.range(key(p, lo)..key(p, hi)).map(|(k, _)| *k).collect()
                } else {
                    Vec::new()
                };
                prop_assert_eq!(got, want);
                for s in 0..64 {
                    prop_assert_eq!(m.get(&key(p, s)).map(|e| e.bytes), model.get(&key(p, s)).copied());
                }
            }
        }
    }
}
