//! The in-memory log of one topic partition: a dense deque of compact records indexed by seq.
//!
//! A record stores only what a reader cannot derive: the seq is its position, the topic and partition are
//! the log's, and the subject is omitted when it equals the topic name. Small payloads are copied into
//! shared 64 KiB arena chunks, so a retained 16-byte message costs one record and no allocation of its
//! own (see docs/BENCHMARKS.md for the measured overhead).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::blocks::BlockDeque;
use super::clock::Timestamp;
use super::message::{Message, MessageExtra};
use super::name::Name;

/// Payloads up to this size are packed into the arena; larger ones keep their own buffer (no copy).
const ARENA_MAX_PAYLOAD: usize = 512;
/// Size of one arena chunk.
const ARENA_CHUNK: usize = 64 * 1024;

/// One stored message, without the parts the log already knows.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub publish_time: Timestamp,
    /// Total bytes appended to this log up to and including this record; differences give range sizes.
    pub end_bytes: u64,
    /// `None` when the subject is the topic's own name.
    pub subject: Option<Name>,
    pub extra: Option<Arc<MessageExtra>>,
    pub payload: Bytes,
}

impl Record {
    /// Size counted against limits.
    pub fn size(&self) -> u64 {
        (self.payload.len() + self.extra.as_ref().map_or(0, |e| e.size())) as u64
    }

    /// Whether the subject this was published to is the topic's name.
    pub fn subject_or<'a>(&'a self, topic: &'a Name) -> &'a Name {
        self.subject.as_ref().unwrap_or(topic)
    }
}

/// A partition's retained messages, `first_seq ..= head_seq`.
#[derive(Debug)]
pub(crate) struct Log {
    records: BlockDeque<Record>,
    first_seq: u64,
    /// `end_bytes` of the record just before `first_seq` (0 at the start).
    base_bytes: u64,
    arena: BytesMut,
}

impl Log {
    pub fn new() -> Self {
        Log { records: BlockDeque::new(), first_seq: 1, base_bytes: 0, arena: BytesMut::new() }
    }

    /// Oldest retained seq; `head_seq + 1` when empty.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Last appended seq; 0 before the first append.
    pub fn head_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64 - 1
    }

    pub fn len(&self) -> u64 {
        self.records.len() as u64
    }

    /// Bytes retained.
    pub fn bytes(&self) -> u64 {
        self.records.back().map_or(0, |r| r.end_bytes - self.base_bytes)
    }

    /// Bytes of the retained messages with seq in `(after, through]`.
    pub fn bytes_between(&self, after: u64, through: u64) -> u64 {
        if through <= after {
            return 0;
        }
        self.end_bytes_at(through).saturating_sub(self.end_bytes_at(after))
    }

    fn end_bytes_at(&self, seq: u64) -> u64 {
        if seq < self.first_seq {
            return self.base_bytes;
        }
        match self.get(seq) {
            Some(r) => r.end_bytes,
            None => self.records.back().map_or(self.base_bytes, |r| r.end_bytes),
        }
    }

    pub fn get(&self, seq: u64) -> Option<&Record> {
        let index = seq.checked_sub(self.first_seq)?;
        self.records.get(usize::try_from(index).ok()?)
    }

    /// Records from `seq` on, with their seqs.
    pub fn iter_from(&self, seq: u64) -> impl Iterator<Item = (u64, &Record)> {
        let start = seq.max(self.first_seq);
        let index = usize::try_from(start - self.first_seq).unwrap_or(usize::MAX);
        (start..).zip(self.records.iter_from(index))
    }

    /// Appends and returns the new seq. The payload is packed into the arena when small.
    pub fn append(
        &mut self,
        publish_time: Timestamp,
        subject: Option<Name>,
        extra: Option<Arc<MessageExtra>>,
        payload: &Bytes,
    ) -> u64 {
        let payload = self.pack(payload);
        let size = (payload.len() + extra.as_ref().map_or(0, |e| e.size())) as u64;
        let end_bytes = self.records.back().map_or(self.base_bytes, |r| r.end_bytes) + size;
        self.records.push_back(Record { publish_time, end_bytes, subject, extra, payload });
        self.head_seq()
    }

    fn pack(&mut self, payload: &Bytes) -> Bytes {
        if payload.len() > ARENA_MAX_PAYLOAD || payload.is_empty() {
            return payload.clone();
        }
        if self.arena.capacity() - self.arena.len() < payload.len() {
            self.arena = BytesMut::with_capacity(ARENA_CHUNK);
        }
        self.arena.extend_from_slice(payload);
        self.arena.split().freeze()
    }

    /// Removes the oldest record, returning its seq.
    pub fn pop_front(&mut self) -> Option<(u64, Record)> {
        let record = self.records.pop_front()?;
        let seq = self.first_seq;
        self.first_seq += 1;
        self.base_bytes = record.end_bytes;
        Some((seq, record))
    }

    /// The oldest record, if any.
    pub fn front(&self) -> Option<&Record> {
        self.records.front()
    }

    /// First seq whose publish time is at or after `t`; `head_seq + 1` when none is.
    pub fn seq_at_time(&self, t: Timestamp) -> u64 {
        // Publish times never decrease within a partition, so the deque is sorted by time.
        self.first_seq + self.records.partition_point(|r| r.publish_time < t) as u64
    }

    /// The publish time of the newest record.
    pub fn last_time(&self) -> Option<Timestamp> {
        self.records.back().map(|r| r.publish_time)
    }

    /// A reader's view of the record at `seq`.
    pub fn message(&self, topic: &Name, partition: u32, seq: u64) -> Option<Message> {
        self.get(seq).map(|r| to_message(topic, partition, seq, r))
    }
}

/// Builds a reader's view of a record; cheap (reference-count increments only).
pub(crate) fn to_message(topic: &Name, partition: u32, seq: u64, record: &Record) -> Message {
    Message {
        topic: topic.clone(),
        partition,
        seq,
        publish_time: record.publish_time,
        subject: record.subject.clone(),
        extra: record.extra.clone(),
        payload: record.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: u64) -> Log {
        let mut log = Log::new();
        for i in 0..n {
            log.append(Timestamp::from_micros(i as i64 * 10), None, None, &Bytes::from(vec![b'x'; 4]));
        }
        log
    }

    #[test]
    fn seqs_start_at_one_and_are_dense() {
        let mut log = log_with(3);
        assert_eq!((log.first_seq(), log.head_seq()), (1, 3));
        assert_eq!(log.pop_front().map(|(s, _)| s), Some(1));
        assert_eq!((log.first_seq(), log.head_seq(), log.len()), (2, 3, 2));
        assert!(log.get(1).is_none());
        assert!(log.get(2).is_some());
    }

    #[test]
    fn empty_log_has_head_zero() {
        let log = Log::new();
        assert_eq!((log.first_seq(), log.head_seq(), log.bytes()), (1, 0, 0));
    }

    #[test]
    fn byte_ranges_follow_retention() {
        let mut log = log_with(5);
        assert_eq!(log.bytes(), 20);
        assert_eq!(log.bytes_between(2, 4), 8);
        log.pop_front();
        assert_eq!(log.bytes(), 16);
        assert_eq!(log.bytes_between(0, 5), 16);
    }

    #[test]
    fn time_lookup_finds_first_at_or_after() {
        let log = log_with(5); // times 0, 10, 20, 30, 40
        assert_eq!(log.seq_at_time(Timestamp::from_micros(15)), 3);
        assert_eq!(log.seq_at_time(Timestamp::from_micros(20)), 3);
        assert_eq!(log.seq_at_time(Timestamp::from_micros(99)), 6);
    }

    #[test]
    fn small_payloads_are_copied_exactly() {
        let mut log = Log::new();
        let a = Bytes::from_static(b"hello");
        let b = Bytes::from(vec![7u8; 2000]);
        log.append(Timestamp::ZERO, None, None, &a);
        log.append(Timestamp::ZERO, None, None, &b);
        assert_eq!(log.get(1).map(|r| r.payload.clone()), Some(a));
        assert_eq!(log.get(2).map(|r| r.payload.clone()), Some(b));
    }
}

#[cfg(test)]
mod size_tests {
    use super::Record;

    #[test]
    fn record_stays_compact() {
        // Memory per retained message is a product target (docs/BENCHMARKS.md); keep the record small.
        assert!(std::mem::size_of::<Record>() <= 72, "Record is {} bytes", std::mem::size_of::<Record>());
    }
}
