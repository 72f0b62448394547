//! The stream buffer: the newest messages, bounded by count and by bytes, with a count of what fell out.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::model::Message;

/// Payload bytes kept per message for display; the true size is kept beside it.
pub const DISPLAY_BYTES: usize = 16 * 1024;

/// One message as the TUI keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message, its payload cut to [`DISPLAY_BYTES`].
    pub message: Message,
    /// The payload's real size.
    pub size: usize,
}

impl Entry {
    /// Keeps `message`, truncating a large payload.
    pub fn new(mut message: Message) -> Entry {
        let size = message.payload.len();
        if size > DISPLAY_BYTES {
            message.payload = Bytes::copy_from_slice(&message.payload[..DISPLAY_BYTES]);
        }
        Entry { message, size }
    }

    /// Whether the kept payload is shorter than the real one.
    pub fn truncated(&self) -> bool {
        self.size > self.message.payload.len()
    }

    fn cost(&self) -> usize {
        // What a kept message really costs: the payload plus its headers and bookkeeping.
        self.message.payload.len()
            + self.message.headers().iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + 160
    }
}

/// A ring of entries with count and byte caps.
#[derive(Debug, Clone)]
pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
    /// Entries pushed out by the caps since the start.
    pub dropped: u64,
}

impl Ring {
    /// An empty ring.
    pub fn new(max_count: usize, max_bytes: usize) -> Ring {
        Ring { entries: VecDeque::new(), bytes: 0, max_count: max_count.max(1), max_bytes, dropped: 0 }
    }

    /// Adds the newest entry, dropping the oldest while over a cap.
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.entries.len() > self.max_count || (self.bytes > self.max_bytes && self.entries.len() > 1) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes = self.bytes.saturating_sub(old.cost());
                self.dropped += 1;
            }
        }
    }

    /// Entries, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.entries.iter()
    }

    /// Entry at `i` (0 = oldest).
    pub fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes kept (estimated).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets everything (the drop counter too).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Name, Timestamp};

    fn entry(seq: u64, size: usize) -> Entry {
        let name = Name::new("t").unwrap();
        Entry::new(Message::new(
            name.clone(),
            0,
            seq,
            Timestamp::ZERO,
            name,
            None,
            Bytes::from(vec![b'x'; size]),
        ))
    }

    #[test]
    fn count_cap_drops_oldest_and_counts_them() {
        let mut ring = Ring::new(3, usize::MAX);
        for seq in 1..=5 {
            ring.push(entry(seq, 1));
        }
        assert_eq!(ring.iter().map(|e| e.message.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(ring.dropped, 2);
    }

    #[test]
    fn byte_cap_bounds_memory_but_keeps_the_newest() {
        let mut ring = Ring::new(1000, 10_000);
        for seq in 1..=100 {
            ring.push(entry(seq, 1000));
        }
        assert!(ring.bytes() <= 10_000, "{}", ring.bytes());
        assert_eq!(ring.iter().last().map(|e| e.message.seq), Some(100));
        assert_eq!(ring.dropped as usize + ring.len(), 100);
    }

    #[test]
    fn large_payloads_are_cut_for_display_with_their_size_kept() {
        let e = entry(1, DISPLAY_BYTES * 3);
        assert!(e.truncated());
        assert_eq!((e.size, e.message.payload.len()), (DISPLAY_BYTES * 3, DISPLAY_BYTES));
    }
}
