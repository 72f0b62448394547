//! One topic partition on disk: a run of segment files, each a `.log` of CRC-32C framed records with a
//! dense `.idx` beside it (16 bytes per record: `rel_seq u32 | pos u32 | publish_time_us i64`).
//!
//! Record layout (little-endian): `len u32 | crc32c u32 | seq u64 | publish_time_us i64 | flags u8 |
//! key_len u16 | hdr_len u32 | key | headers | payload`. `len` counts everything after the CRC, and the
//! CRC covers the same bytes. The headers section holds the subject (when it differs from the topic
//! name), the msg_id, then `key u16-len | value u32-len` pairs; `flags` says which of them are present.
//!
//! The newest segment is active: appends go there and it is read whole at open (its records are the
//! engine's in-memory window). Sealed segments are never read at open beyond one index entry, so opening
//! costs the same for a million retained messages as for ten million; the engine reads them on demand.
//!
//! The rooms: this file holds the layout's constants and the types the others share (a segment, its
//! files, the partition's fields); `record` encodes and decodes one record; `partition` is the writer
//! and the cold reader; `recovery` opens a partition from disk and rescans a damaged segment for repair.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::frame::{self, Reader};
use super::{StoreError, SyncGate};
use crate::model::{Durability, MessageExtra, Name, Timestamp};

mod budget;
mod partition;
mod record;
mod recovery;

pub(crate) use budget::{FileBudget, FileSlot};
pub(crate) use record::{decode, encode};
pub(crate) use recovery::rescan;

/// Bytes of a record before its key: len, crc, seq, time, flags, key_len, hdr_len.
pub(crate) const RECORD_HEADER: u64 = 31;
/// Bytes of the fixed part counted by `len` (everything after the CRC up to the key).
const FIXED_AFTER_CRC: usize = 23;
/// One index entry.
pub(crate) const IDX_ENTRY: u64 = 16;
/// The largest record accepted; a `len` above this marks damage.
const MAX_RECORD: usize = 1 << 30;
/// Segments are capped so that positions fit the index's `u32`.
pub(crate) const MAX_SEGMENT_BYTES: u64 = 1 << 30;

const FLAG_KEY: u8 = 1;
const FLAG_SUBJECT: u8 = 2;
const FLAG_MSG_ID: u8 = 4;

/// A record read back from disk.
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    pub seq: u64,
    pub time: Timestamp,
    pub subject: Option<Name>,
    pub extra: Option<Arc<MessageExtra>>,
    pub payload: Bytes,
    /// Key + headers section + payload: the bytes this record counts for size limits.
    pub content: u64,
}

/// What opening a partition found and repaired.
#[derive(Debug, Default, Clone)]
pub struct PartitionReport {
    /// A torn tail cut off the active segment: the file, the offset it was cut at, and the bytes removed.
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Index files rebuilt from their segment because they were missing, short or inconsistent.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Files in the partition directory that the store does not know and left alone.
    pub ignored: Vec<PathBuf>,
}

/// A segment's open files. The active segment's are held in a [`FileSlot`], open unless the process's
/// [`FileBudget`] closed them while idle; a sealed segment's are opened when a reader needs them (one
/// sealed segment at a time is kept open), so thousands of segments do not hold thousands of descriptors.
#[derive(Debug)]
struct Files {
    log: Arc<File>,
    idx: Arc<File>,
}

impl Files {
    fn open(log_path: &Path, idx_path: &Path) -> Result<Files, StoreError> {
        let open = |path: &Path| File::open(path).map_err(|e| StoreError::io(path, e));
        Ok(Files { log: Arc::new(open(log_path)?), idx: Arc::new(open(idx_path)?) })
    }
}

#[derive(Debug)]
struct Segment {
    base: u64,
    count: u64,
    /// Bytes of whole records in the log file.
    len: u64,
    /// Content bytes of every earlier segment (absolute since the partition began), for range sizes.
    cum_before: u64,
    log_path: PathBuf,
    idx_path: PathBuf,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.count
    }

    fn content(&self) -> u64 {
        self.len - RECORD_HEADER * self.count
    }

    fn entry(&self, f: &Files, rel: u64) -> Result<(u64, Timestamp), StoreError> {
        let mut buf = [0u8; IDX_ENTRY as usize];
        f.idx.read_exact_at(&mut buf, rel * IDX_ENTRY).map_err(|e| StoreError::io(&self.idx_path, e))?;
        let mut r = Reader::new(&buf);
        let (Some(_), Some(pos), Some(time)) = (r.u32(), r.u32(), r.i64()) else {
            return Err(StoreError::corrupt(&self.idx_path, rel * IDX_ENTRY, "short index entry"));
        };
        Ok((u64::from(pos), Timestamp::from_micros(time)))
    }

    fn read(&self, f: &Files, seq: u64) -> Result<StoredRecord, StoreError> {
        let rel = seq - self.base;
        let (pos, _) = self.entry(f, rel)?;
        let mut head = [0u8; 4];
        f.log.read_exact_at(&mut head, pos).map_err(|e| StoreError::io(&self.log_path, e))?;
        let len = u32::from_le_bytes(head) as usize;
        if !(FIXED_AFTER_CRC..=MAX_RECORD).contains(&len) || pos + 8 + len as u64 > self.len {
            return Err(StoreError::corrupt(&self.log_path, pos, "record length out of bounds"));
        }
        let mut frame = vec![0u8; 8 + len];
        f.log.read_exact_at(&mut frame, pos).map_err(|e| StoreError::io(&self.log_path, e))?;
        let frame = Bytes::from(frame);
        match decode(&frame, 0) {
            Ok((record, _)) if record.seq == seq => Ok(record),
            Ok((record, _)) => Err(StoreError::corrupt(
                &self.log_path,
                pos,
                &format!("index points at seq {} where seq {seq} belongs", record.seq),
            )),
            Err(why) => Err(StoreError::corrupt(&self.log_path, pos, why)),
        }
    }

    /// Content bytes from the start of this segment through `seq`.
    fn content_through(&self, f: &Files, seq: u64) -> Result<u64, StoreError> {
        let rel = seq - self.base;
        let next_pos = if rel + 1 < self.count { self.entry(f, rel + 1)?.0 } else { self.len };
        Ok(next_pos.saturating_sub(RECORD_HEADER * (rel + 1)))
    }
}

/// The paths of the segment of `dir` that starts at `base`.
pub(crate) fn segment_files(dir: &Path, base: u64) -> (PathBuf, PathBuf) {
    segment_paths(dir, base)
}

fn segment_paths(dir: &Path, base: u64) -> (PathBuf, PathBuf) {
    (dir.join(format!("{base:020}.log")), dir.join(format!("{base:020}.idx")))
}

fn open_rw(path: &Path, create: bool) -> Result<File, StoreError> {
    frame::options().read(true).write(true).create(create).open(path).map_err(|e| StoreError::io(path, e))
}

fn file_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    file.metadata().map(|m| m.len()).map_err(|e| StoreError::io(path, e))
}

/// Settings of one partition's files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionOptions {
    pub segment_bytes: u64,
    pub durability: Durability,
    /// The budget of open active segments this partition counts against.
    pub budget: &'static FileBudget,
}

/// What a commit left to do once the topic lock is released.
#[derive(Debug)]
pub(crate) struct Commit {
    /// The gate to wait on and the mark to wait for, when the durability mode asks for a sync.
    pub sync: Option<(Arc<SyncGate>, u64)>,
    /// Set when the active segment rolled: the first seq of the new one.
    pub rolled_to: Option<u64>,
}

/// A partition's files and the writer's position in them.
#[derive(Debug)]
pub(crate) struct Partition {
    dir: PathBuf,
    sealed: Vec<Segment>,
    active: Segment,
    active_files: Arc<FileSlot>,
    /// The one sealed segment kept open for readers, by base seq.
    open_sealed: std::sync::Mutex<Option<(u64, Arc<Files>)>>,
    staged: Vec<u8>,
    staged_idx: Vec<u8>,
    staged_count: u64,
    opts: PartitionOptions,
    gate: Arc<SyncGate>,
    /// Bytes written over the partition's life in this process; the marks the gate counts in.
    written: u64,
    /// Set by [`Partition::close`]: the directory's lock is about to be released, so nothing more may
    /// be written here by this process.
    closed: bool,
}

fn push_entry(out: &mut Vec<u8>, rel: u64, pos: u64, time: Timestamp) {
    out.extend_from_slice(&(rel as u32).to_le_bytes());
    out.extend_from_slice(&(pos as u32).to_le_bytes());
    out.extend_from_slice(&time.as_micros().to_le_bytes());
}
