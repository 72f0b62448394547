//! The in-memory log of one topic partition: a dense deque of compact records indexed by seq.
//!
//! A record stores only what a reader cannot derive: the seq is its position, the topic and partition are
//! the log's, and the subject is omitted when it equals the topic name. Small payloads are copied into
//! shared 64 KiB arena chunks, so a retained 16-byte message costs one record and no allocation of its
//! own (see docs/BENCHMARKS.md for the measured overhead).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::blocks::BlockDeque;
use crate::model::clock::Timestamp;
use crate::model::message::{Message, MessageExtra};
use crate::model::name::Name;
use crate::store::segment::{Partition, StoredRecord};
use crate::store::{StoreError, SyncGate};

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

/// A record as a reader gets it: borrowed from memory, or read back from a sealed segment on disk.
#[derive(Debug)]
pub(crate) enum RecordRef<'a> {
    Hot(&'a Record),
    Cold(Box<Record>),
}

impl std::ops::Deref for RecordRef<'_> {
    type Target = Record;

    fn deref(&self) -> &Record {
        match self {
            RecordRef::Hot(r) => r,
            RecordRef::Cold(r) => r,
        }
    }
}

/// A partition's retained messages, `first_seq ..= head_seq`.
///
/// In memory only, every retained record is hot (held in `records`). With a durable store, only the
/// active segment's records are hot; older ones (`first_seq .. hot_first`) are cold and read from their
/// sealed segment when asked for, so memory stays bounded by the segment size and opening a directory
/// does not read every retained message.
#[derive(Debug)]
pub(crate) struct Log {
    records: BlockDeque<Record>,
    first_seq: u64,
    /// Seq of `records[0]`; equal to `first_seq` unless older records are cold.
    hot_first: u64,
    /// `end_bytes` of the record just before `first_seq` (0 at the start).
    base_bytes: u64,
    arena: BytesMut,
    disk: Option<Partition>,
    /// Cold reads that failed (damaged or unreadable records).
    unreadable: std::sync::atomic::AtomicU64,
    /// Seqs above `first_seq` deleted out of order (`max_msgs_per_key`), with their sizes: they read
    /// as absent, count nowhere, and go for good when `first_seq` passes them. Never `first_seq` itself.
    gaps: BTreeMap<u64, u64>,
    /// Sum of the sizes in `gaps`.
    gap_bytes: u64,
}

impl Log {
    pub fn new() -> Self {
        Log {
            records: BlockDeque::new(),
            first_seq: 1,
            hot_first: 1,
            base_bytes: 0,
            arena: BytesMut::new(),
            disk: None,
            unreadable: std::sync::atomic::AtomicU64::new(0),
            gaps: BTreeMap::new(),
            gap_bytes: 0,
        }
    }

    /// A log kept in `disk`, with the active segment's records (read at open) hot.
    pub fn on_disk(disk: Partition, hot: Vec<StoredRecord>) -> Self {
        let first_seq = disk.first_seq();
        let hot_first = disk.active_base();
        let mut end_bytes = disk.active_cum_before();
        let mut records = BlockDeque::new();
        for r in hot {
            end_bytes += r.content;
            records.push_back(Record {
                publish_time: r.time,
                end_bytes,
                subject: r.subject,
                extra: r.extra,
                payload: r.payload,
            });
        }
        Log {
            records,
            first_seq,
            hot_first,
            base_bytes: 0,
            arena: BytesMut::new(),
            disk: Some(disk),
            unreadable: std::sync::atomic::AtomicU64::new(0),
            gaps: BTreeMap::new(),
            gap_bytes: 0,
        }
    }

    /// Whether the log is kept on disk.
    pub fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    pub fn disk(&self) -> Option<&Partition> {
        self.disk.as_ref()
    }

    /// How many reads of stored records failed.
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The first seq held in memory.
    pub fn hot_first(&self) -> u64 {
        self.hot_first
    }

    /// Oldest retained seq; `head_seq + 1` when empty.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Last appended seq; 0 before the first append.
    pub fn head_seq(&self) -> u64 {
        self.hot_first + self.records.len() as u64 - 1
    }

    pub fn len(&self) -> u64 {
        (self.head_seq() + 1 - self.first_seq).saturating_sub(self.gaps.len() as u64)
    }

    /// Bytes retained.
    pub fn bytes(&self) -> u64 {
        self.end_bytes_at(self.head_seq()).saturating_sub(self.base_bytes).saturating_sub(self.gap_bytes)
    }

    /// Bytes of the retained messages with seq in `(after, through]`.
    pub fn bytes_between(&self, after: u64, through: u64) -> u64 {
        if through <= after {
            return 0;
        }
        let gone: u64 = self.gaps.range(after + 1..=through).map(|(_, size)| size).sum();
        self.end_bytes_at(through).saturating_sub(self.end_bytes_at(after)).saturating_sub(gone)
    }

    /// How many seqs in `(after, through]` were deleted out of order.
    pub fn gaps_between(&self, after: u64, through: u64) -> u64 {
        if through <= after || self.gaps.is_empty() {
            return 0;
        }
        self.gaps.range(after + 1..=through).count() as u64
    }

    /// Whether `seq` was deleted out of order (it reads as absent).
    pub fn is_gap(&self, seq: u64) -> bool {
        self.gaps.contains_key(&seq)
    }

    /// Deletes the retained message at `seq` out of order (`max_msgs_per_key`): it reads as absent from
    /// now on. Returns `None` when there is nothing to delete there, else the record when `want` is set.
    /// At `first_seq` this is [`Log::pop_front`].
    pub fn remove_at(&mut self, seq: u64, want: bool) -> Option<Option<Record>> {
        if seq < self.first_seq || seq > self.head_seq() || self.is_gap(seq) {
            return None;
        }
        if seq == self.first_seq {
            return self.pop_front(want).map(|(_, record)| record);
        }
        let record = if want { self.get(seq).map(|r| (*r).clone()) } else { None };
        let size = self.end_bytes_at(seq).saturating_sub(self.end_bytes_at(seq - 1));
        self.gaps.insert(seq, size);
        self.gap_bytes += size;
        Some(record)
    }

    fn end_bytes_at(&self, seq: u64) -> u64 {
        if seq < self.first_seq {
            return self.base_bytes;
        }
        if seq < self.hot_first {
            return self.cold_end_bytes(seq).unwrap_or(self.base_bytes);
        }
        match self.hot(seq) {
            Some(r) => r.end_bytes,
            None => self.records.back().map_or_else(|| self.hot_base_bytes(), |r| r.end_bytes),
        }
    }

    /// `end_bytes` just before the first hot record.
    fn hot_base_bytes(&self) -> u64 {
        match &self.disk {
            Some(_) if self.first_seq < self.hot_first => {
                self.cold_end_bytes(self.hot_first - 1).unwrap_or(self.base_bytes)
            }
            _ => self.base_bytes,
        }
    }

    fn cold_end_bytes(&self, seq: u64) -> Option<u64> {
        let disk = self.disk.as_ref()?;
        match disk.cum_through(seq) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("cannot size seq {seq}: {e}");
                None
            }
        }
    }

    fn hot(&self, seq: u64) -> Option<&Record> {
        let index = seq.checked_sub(self.hot_first)?;
        self.records.get(usize::try_from(index).ok()?)
    }

    pub fn get(&self, seq: u64) -> Option<RecordRef<'_>> {
        if seq < self.first_seq || (!self.gaps.is_empty() && self.is_gap(seq)) {
            return None;
        }
        if seq >= self.hot_first {
            return self.hot(seq).map(RecordRef::Hot);
        }
        self.cold(seq).map(|r| RecordRef::Cold(Box::new(r)))
    }

    fn cold(&self, seq: u64) -> Option<Record> {
        match self.disk.as_ref()?.read(seq) {
            Ok(Some(r)) => Some(Record {
                publish_time: r.time,
                end_bytes: 0,
                subject: r.subject,
                extra: r.extra,
                payload: r.payload,
            }),
            Ok(None) => None,
            Err(e) => {
                // Unreadable data is counted, never passed on as if it were the message.
                tracing::error!("seq {seq} cannot be read: {e}");
                self.unreadable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    }

    /// Records from `seq` on, with their seqs.
    pub fn iter_from(&self, seq: u64) -> impl Iterator<Item = (u64, RecordRef<'_>)> {
        let start = seq.max(self.first_seq);
        let cold = (start..self.hot_first)
            .filter(move |s| !self.is_gap(*s))
            .filter_map(move |s| self.cold(s).map(|r| (s, RecordRef::Cold(Box::new(r)))));
        let hot_start = start.max(self.hot_first);
        let index = usize::try_from(hot_start - self.hot_first).unwrap_or(usize::MAX);
        let gaps = !self.gaps.is_empty();
        cold.chain(
            (hot_start..)
                .zip(self.records.iter_from(index).map(RecordRef::Hot))
                .filter(move |(s, _)| !gaps || !self.is_gap(*s)),
        )
    }

    /// Appends and returns the new seq. The payload is packed into the arena when small. On a durable
    /// log the record is staged for the next [`Log::commit`], and a record the store cannot hold is
    /// refused before anything changes.
    pub fn append(
        &mut self,
        publish_time: Timestamp,
        subject: Option<Name>,
        extra: Option<Arc<MessageExtra>>,
        payload: &Bytes,
    ) -> Result<u64, StoreError> {
        let seq = self.head_seq() + 1;
        let size = match &mut self.disk {
            Some(disk) => disk.stage(seq, publish_time, subject.as_ref(), extra.as_deref(), payload)?,
            None => (payload.len() + extra.as_ref().map_or(0, |e| e.size())) as u64,
        };
        let payload = self.pack(payload);
        let end_bytes = self.records.back().map_or_else(|| self.hot_base_bytes(), |r| r.end_bytes) + size;
        self.records.push_back(Record { publish_time, end_bytes, subject, extra, payload });
        Ok(self.head_seq())
    }

    /// Writes what [`Log::append`] staged. Returns what to wait on before the publish may return. When
    /// the active segment rolls, the records of the one just sealed leave memory (they stay readable).
    pub fn commit(&mut self) -> Result<Option<(Arc<SyncGate>, u64)>, StoreError> {
        let Some(disk) = &mut self.disk else {
            return Ok(None);
        };
        let commit = disk.commit()?;
        if let Some(base) = commit.rolled_to {
            // `first_seq` and `base_bytes` stay: the records are still retained, only no longer in memory.
            while self.hot_first < base && self.records.pop_front().is_some() {
                self.hot_first += 1;
            }
        }
        Ok(commit.sync)
    }

    /// Syncs the partition's files and refuses every later write (the engine is closing).
    pub fn close_disk(&mut self) -> Result<(), StoreError> {
        match &mut self.disk {
            Some(disk) => disk.close(),
            None => Ok(()),
        }
    }

    /// Takes back appends after `head` that were never committed (their publish failed).
    pub fn rollback(&mut self, head: u64) {
        while self.head_seq() > head && self.records.pop_back().is_some() {}
        if self.head_seq() > head {
            // Retention inside the same run removed records of it too: the log is empty at `head`.
            self.hot_first = head + 1;
            self.first_seq = self.hot_first;
        }
        let above: Vec<u64> = self.gaps.range(head + 1..).map(|(s, _)| *s).collect();
        for seq in above {
            self.gap_bytes -= self.gaps.remove(&seq).unwrap_or(0);
        }
        if let Some(disk) = &mut self.disk {
            disk.discard_staged();
        }
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

    /// Removes the oldest record, returning its seq and, when `want` is set, the record (a cold record
    /// is only read back when wanted). Gaps it uncovers go with it, so `first_seq` is never a gap.
    pub fn pop_front(&mut self, want: bool) -> Option<(u64, Option<Record>)> {
        let popped = self.pop_raw(want);
        while let Some(size) = self.gaps.remove(&self.first_seq) {
            self.gap_bytes -= size;
            if self.pop_raw(false).is_none() {
                break;
            }
        }
        popped
    }

    fn pop_raw(&mut self, want: bool) -> Option<(u64, Option<Record>)> {
        let seq = self.first_seq;
        if seq > self.head_seq() {
            return None;
        }
        if seq < self.hot_first {
            let record = if want { self.cold(seq) } else { None };
            self.base_bytes = self.cold_end_bytes(seq).unwrap_or(self.base_bytes);
            self.first_seq += 1;
            if let Some(disk) = &mut self.disk
                && let Err(e) = disk.drop_before(self.first_seq)
            {
                tracing::warn!("cannot delete an expired segment: {e}");
            }
            return Some((seq, record));
        }
        let record = self.records.pop_front()?;
        self.first_seq += 1;
        self.hot_first += 1;
        self.base_bytes = record.end_bytes;
        if let Some(disk) = &mut self.disk
            && let Err(e) = disk.drop_before(self.first_seq)
        {
            tracing::warn!("cannot delete an expired segment: {e}");
        }
        Some((seq, Some(record)))
    }

    /// Drops every retained record at once (`topic purge` on a durable log); returns how many.
    pub fn purge_durable(&mut self) -> Result<u64, StoreError> {
        let head = self.head_seq();
        let removed = self.len();
        self.base_bytes = self.end_bytes_at(head);
        if let Some(disk) = &mut self.disk {
            disk.purge(head + 1)?;
        }
        while self.records.pop_front().is_some() {}
        self.gaps.clear();
        self.gap_bytes = 0;
        self.first_seq = head + 1;
        self.hot_first = head + 1;
        Ok(removed)
    }

    /// Publish time of the oldest record.
    pub fn front_time(&self) -> Option<Timestamp> {
        if self.first_seq > self.head_seq() {
            return None;
        }
        if self.first_seq < self.hot_first {
            return self.disk.as_ref().and_then(|d| d.time_of(self.first_seq).ok().flatten());
        }
        self.records.front().map(|r| r.publish_time)
    }

    /// First seq whose publish time is at or after `t`; `head_seq + 1` when none is.
    pub fn seq_at_time(&self, t: Timestamp) -> u64 {
        if self.first_seq < self.hot_first
            && let Some(disk) = &self.disk
        {
            match disk.seq_at_time(self.first_seq, t) {
                Ok(Some(seq)) => return seq.max(self.first_seq),
                Ok(None) => {}
                Err(e) => tracing::warn!("time lookup fell back to memory: {e}"),
            }
        }
        // Publish times never decrease within a partition, so the deque is sorted by time.
        self.hot_first + self.records.partition_point(|r| r.publish_time < t) as u64
    }

    /// The publish time of the newest record.
    pub fn last_time(&self) -> Option<Timestamp> {
        match self.records.back() {
            Some(r) => Some(r.publish_time),
            None if self.first_seq <= self.head_seq() => {
                self.disk.as_ref().and_then(|d| d.time_of(self.head_seq()).ok().flatten())
            }
            None => None,
        }
    }

    /// A reader's view of the record at `seq`.
    pub fn message(&self, topic: &Name, partition: u32, seq: u64) -> Option<Message> {
        self.get(seq).map(|r| to_message(topic, partition, seq, &r))
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
            log.append(Timestamp::from_micros(i as i64 * 10), None, None, &Bytes::from(vec![b'x'; 4]))
                .unwrap();
        }
        log
    }

    #[test]
    fn seqs_start_at_one_and_are_dense() {
        let mut log = log_with(3);
        assert_eq!((log.first_seq(), log.head_seq()), (1, 3));
        assert_eq!(log.pop_front(false).map(|(s, _)| s), Some(1));
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
        log.pop_front(false);
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
    fn gaps_read_as_absent_and_go_with_the_front() {
        let mut log = log_with(5);
        assert!(log.remove_at(3, false).is_some());
        assert!(log.remove_at(3, false).is_none(), "a gap is not deleted twice");
        assert!(log.get(3).is_none());
        assert_eq!((log.len(), log.bytes(), log.bytes_between(0, 5)), (4, 16, 16));
        assert_eq!(log.iter_from(1).map(|(s, _)| s).collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        // Popping 1 and 2 passes the gap at 3: the front is 4.
        log.pop_front(false);
        log.pop_front(false);
        assert_eq!((log.first_seq(), log.len(), log.bytes()), (4, 2, 8));
        // At the front, remove_at pops.
        assert!(log.remove_at(4, false).is_some());
        assert_eq!((log.first_seq(), log.len()), (5, 1));
    }

    #[test]
    fn small_payloads_are_copied_exactly() {
        let mut log = Log::new();
        let a = Bytes::from_static(b"hello");
        let b = Bytes::from(vec![7u8; 2000]);
        log.append(Timestamp::ZERO, None, None, &a).unwrap();
        log.append(Timestamp::ZERO, None, None, &b).unwrap();
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
