//! The ordering gates of SEMANTICS.md §9.6. Under `PerKey` a message with a key is handed out only once
//! every earlier message with that key in its partition is settled (I6): one message of a key is
//! released (in flight, delayed or ready), and the later ones the cursor passes wait in line behind it,
//! so other keys go on while one key is stuck. Under `Strict` the partition is the line: one message in
//! flight per partition, and the cursor waits. Messages without a key are not ordered under `PerKey`
//! (as Pub/Sub ordering keys). Settling the released message (ack, term, dead letter, expiry) releases
//! the next of its line.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

/// Messages held in lines at most, per subscription: past it the cursor waits instead of passing more
/// messages of busy keys, so that memory stays bounded when one key is stuck for long.
pub(crate) const MAX_HELD: u64 = 100_000;

/// The line of one key in one partition (or of a partition under `Strict`, with an empty key).
pub(crate) type LineKey = (u32, Bytes);

#[derive(Debug, Default)]
struct Line {
    /// The message of this line released to dispatch, by entry key.
    active: Option<u64>,
    /// Later messages the cursor passed, in seq order, each an entry AVAILABLE with attempt 0.
    waiting: VecDeque<u64>,
}

/// A hasher for `u64` keys: one multiply by a 64-bit odd constant, high bits folded down.
#[derive(Debug, Default)]
pub(crate) struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }
}

/// Every line of a subscription.
#[derive(Debug, Default)]
pub(crate) struct OrderGate {
    lines: HashMap<LineKey, Line>,
    /// Entry key → its line, for every message active or waiting in one. The keys are the engine's own
    /// (partition and seq), so a multiply hash does (the lines, keyed by message keys users choose, keep
    /// the standard hasher).
    member: HashMap<u64, LineKey, BuildHasherDefault<U64Hasher>>,
    /// Messages waiting in lines.
    held: u64,
}

impl OrderGate {
    /// Messages waiting in lines (never delivered yet, passed by the cursor).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether the line has a message released.
    pub fn is_busy(&self, line: &LineKey) -> bool {
        self.lines.get(line).is_some_and(|l| l.active.is_some())
    }

    /// `entry` is the line's released message.
    pub fn activate(&mut self, line: LineKey, entry: u64) {
        self.lines.entry(line.clone()).or_default().active = Some(entry);
        self.member.insert(entry, line);
    }

    /// `entry` waits behind the line's released message.
    pub fn hold(&mut self, line: LineKey, entry: u64) {
        self.lines.entry(line.clone()).or_default().waiting.push_back(entry);
        self.member.insert(entry, line);
        self.held += 1;
    }

    /// `entry` was settled or went away: it leaves its line, and when it was the released one the next
    /// of the line is released and returned (the caller makes it ready).
    pub fn settled(&mut self, entry: u64) -> Option<u64> {
        let line_key = self.member.remove(&entry)?;
        let line = self.lines.get_mut(&line_key)?;
        let mut next = None;
        if line.active == Some(entry) {
            line.active = line.waiting.pop_front();
            if line.active.is_some() {
                self.held = self.held.saturating_sub(1);
            }
            next = line.active;
        } else if let Some(i) = line.waiting.iter().position(|&e| e == entry) {
            line.waiting.remove(i);
            self.held = self.held.saturating_sub(1);
        }
        if line.active.is_none() && line.waiting.is_empty() {
            self.lines.remove(&line_key);
        }
        next
    }

    /// Forgets every line of partition `p` (a seek or purge dropped its entries).
    pub fn clear_partition(&mut self, p: u32) {
        let held = &mut self.held;
        self.lines.retain(|(q, _), line| {
            if *q == p {
                *held = held.saturating_sub(line.waiting.len() as u64);
            }
            *q != p
        });
        let lines = &self.lines;
        self.member.retain(|_, line| lines.contains_key(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(k: &str) -> LineKey {
        (0, Bytes::from(k.to_string()))
    }

    #[test]
    fn a_line_releases_its_messages_one_by_one_in_order() {
        let mut g = OrderGate::default();
        g.activate(line("k"), 1);
        g.hold(line("k"), 2);
        g.hold(line("k"), 5);
        g.activate(line("j"), 3);
        assert!(g.is_busy(&line("k")) && g.is_busy(&line("j")));
        assert_eq!(g.held(), 2);
        assert_eq!(g.settled(3), None);
        assert!(!g.is_busy(&line("j")));
        // A waiting message that goes away (expired) leaves the line without releasing anything.
        assert_eq!(g.settled(5), None);
        assert_eq!(g.settled(1), Some(2));
        assert_eq!(g.held(), 0);
        assert_eq!(g.settled(2), None);
        assert!(!g.is_busy(&line("k")));
        g.hold((1, Bytes::new()), 9);
        g.clear_partition(1);
        assert_eq!((g.held(), g.settled(9)), (0, None));
    }
}
