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

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::frame::{self, Reader, sync_dir};
use super::{StoreError, SyncGate};
use crate::model::{Durability, MessageExtra, Name, Timestamp};

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

/// A segment's open files. The active segment's stay open; a sealed segment's are opened when a reader
/// needs them (one sealed segment at a time is kept open), so thousands of segments do not hold
/// thousands of descriptors.
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

/// Encodes one record onto `out`; returns its content size.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    time: Timestamp,
    subject: Option<&Name>,
    extra: Option<&MessageExtra>,
    payload: &[u8],
) -> Result<u64, String> {
    if extra.is_none() && subject.is_none() {
        // The common plain message: the header is known up front and written in one piece.
        let len = FIXED_AFTER_CRC + payload.len();
        if len > MAX_RECORD {
            return Err("record larger than 1 GiB".into());
        }
        let start = out.len();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&time.as_micros().to_le_bytes());
        out.extend_from_slice(&[0; 7]); // flags, key_len, hdr_len
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        return Ok(payload.len() as u64);
    }
    let key = extra.and_then(|e| e.key.as_ref());
    let msg_id = extra.and_then(|e| e.msg_id.as_deref());
    let key_len = u16::try_from(key.map_or(0, |k| k.len())).map_err(|_| "key longer than 65535 bytes")?;
    let mut flags = 0;
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER as usize]);
    if let Some(key) = key {
        flags |= FLAG_KEY;
        out.extend_from_slice(key);
    }
    let hdr_start = out.len();
    for (flag, text) in [(FLAG_SUBJECT, subject.map(Name::as_str)), (FLAG_MSG_ID, msg_id)] {
        if let Some(text) = text {
            flags |= flag;
            let len = u16::try_from(text.len()).map_err(|_| "subject or msg_id longer than 65535 bytes")?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    for (k, v) in extra.map(|e| &e.headers).into_iter().flatten() {
        let klen = u16::try_from(k.len()).map_err(|_| "header name longer than 65535 bytes")?;
        out.extend_from_slice(&klen.to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let hdr_len = (out.len() - hdr_start) as u32;
    out.extend_from_slice(payload);
    let len = out.len() - start - 8;
    if len > MAX_RECORD {
        out.truncate(start);
        return Err("record larger than 1 GiB".into());
    }
    let header = &mut out[start..start + RECORD_HEADER as usize];
    header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..24].copy_from_slice(&time.as_micros().to_le_bytes());
    header[24] = flags;
    header[25..27].copy_from_slice(&key_len.to_le_bytes());
    header[27..31].copy_from_slice(&hdr_len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok((len - FIXED_AFTER_CRC) as u64)
}

/// Decodes the record at `pos` of `data`; returns it and the frame's total length. Payload and key
/// share `data`'s buffer.
pub(crate) fn decode(data: &Bytes, pos: usize) -> Result<(StoredRecord, usize), &'static str> {
    let head = data.get(pos..pos + 8).ok_or("incomplete record header")?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(FIXED_AFTER_CRC..=MAX_RECORD).contains(&len) {
        return Err("record length out of bounds");
    }
    let body = data.get(pos + 8..pos + 8 + len).ok_or("incomplete record")?;
    if crc32c::crc32c(body) != crc {
        return Err("CRC mismatch");
    }
    let mut r = Reader::new(body);
    let bad = "malformed record fields";
    let (seq, time, flags) = (r.u64().ok_or(bad)?, r.i64().ok_or(bad)?, r.u8().ok_or(bad)?);
    let (key_len, hdr_len) = (r.u16().ok_or(bad)? as usize, r.u32().ok_or(bad)? as usize);
    let key_at = pos + 8 + FIXED_AFTER_CRC;
    let key = r.bytes(key_len).ok_or(bad)?;
    let key = (flags & FLAG_KEY != 0).then(|| data.slice(key_at..key_at + key.len()));
    let mut h = Reader::new(r.bytes(hdr_len).ok_or(bad)?);
    let mut text = |flag: u8| -> Result<Option<String>, &'static str> {
        if flags & flag == 0 {
            return Ok(None);
        }
        let n = h.u16().ok_or(bad)? as usize;
        let raw = h.bytes(n).ok_or(bad)?;
        String::from_utf8(raw.to_vec()).map(Some).map_err(|_| "invalid UTF-8 in a record field")
    };
    let subject = match text(FLAG_SUBJECT)? {
        Some(s) => Some(Name::new(&s).map_err(|_| "invalid subject in a record")?),
        None => None,
    };
    let msg_id = text(FLAG_MSG_ID)?;
    let mut headers = crate::model::Headers::new();
    while !h.is_empty() {
        let k = h.u16().ok_or(bad)? as usize;
        let k = h.bytes(k).ok_or(bad)?;
        let v = h.u32().ok_or(bad)? as usize;
        let v = h.bytes(v).ok_or(bad)?;
        let k = String::from_utf8(k.to_vec()).map_err(|_| "invalid UTF-8 in a header")?;
        let v = String::from_utf8(v.to_vec()).map_err(|_| "invalid UTF-8 in a header")?;
        headers.insert(k, v);
    }
    let payload_at = key_at + key_len + hdr_len;
    let payload = data.slice(payload_at..pos + 8 + len);
    let record = StoredRecord {
        seq,
        time: Timestamp::from_micros(time),
        subject,
        extra: MessageExtra::pack(key, msg_id, headers),
        payload,
        content: (len - FIXED_AFTER_CRC) as u64,
    };
    Ok((record, 8 + len))
}

/// Whether a valid record for seq `expected` or `expected + 1` starts anywhere after `from`: if so, the
/// damage at `from` is not a torn tail but corruption in the middle of readable data.
fn readable_after(data: &Bytes, from: usize, expected: u64) -> Option<usize> {
    (from + 1..data.len().saturating_sub(RECORD_HEADER as usize - 1)).find(|&p| {
        let seq = data.get(p + 8..p + 16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        matches!(seq, Some(s) if s == expected || s == expected + 1)
            && decode(data, p).is_ok_and(|(r, _)| r.seq == expected || r.seq == expected + 1)
    })
}

/// A segment read record by record around its damage, for `store repair`.
#[derive(Debug)]
pub(crate) struct Rescan {
    /// A dense index: one entry per seq, damaged records included (readers then skip them).
    pub index: Vec<u8>,
    /// The seq after the last record.
    pub next_seq: u64,
    /// Where the last record (whole or damaged, followed by readable ones) ends; beyond is a torn tail.
    pub end: u64,
    /// Damaged stretches inside the readable range: (offset, what was wrong).
    pub damaged: Vec<(u64, String)>,
}

/// Reads a segment whose first seq is `base`, indexing every record and passing over damage that has
/// readable records after it: a damaged record whose neighbours are readable keeps its seq (its entry
/// points at it, and readers count it unreadable), stray bytes between records are skipped.
pub(crate) fn rescan(log_path: &Path, base: u64) -> Result<Rescan, StoreError> {
    let data = fs::read(log_path).map(Bytes::from).map_err(|e| StoreError::io(log_path, e))?;
    let mut out = Rescan { index: Vec::new(), next_seq: base, end: 0, damaged: Vec::new() };
    let mut pos = 0;
    // A damaged record's entry takes the time of the record before it, so times stay in order.
    let mut last_time = Timestamp::from_micros(0);
    while pos < data.len() {
        match decode(&data, pos) {
            Ok((record, frame)) if record.seq == out.next_seq => {
                push_entry(&mut out.index, record.seq - base, pos as u64, record.time);
                last_time = record.time;
                out.next_seq += 1;
                pos += frame;
                out.end = pos as u64;
            }
            outcome => {
                let Some(at) = readable_after(&data, pos, out.next_seq) else {
                    break;
                };
                let why = match outcome {
                    Ok((r, _)) => format!("expected seq {}, found {}", out.next_seq, r.seq),
                    Err(why) => why.to_string(),
                };
                out.damaged.push((pos as u64, why));
                let next_is_following = data
                    .get(at + 8..at + 16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .is_some_and(|seq| seq == out.next_seq + 1);
                if next_is_following {
                    // The damaged stretch is the record of the seq in between: keep its place.
                    push_entry(&mut out.index, out.next_seq - base, pos as u64, last_time);
                    out.next_seq += 1;
                }
                pos = at;
            }
        }
    }
    Ok(out)
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
    active_files: Files,
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

impl Partition {
    /// Creates an empty partition whose first record will be `first_seq`.
    pub fn create(dir: &Path, first_seq: u64, opts: PartitionOptions) -> Result<Self, StoreError> {
        frame::create_dirs(dir).map_err(|e| StoreError::io(dir, e))?;
        let (active, active_files) = Self::new_segment(dir, first_seq, 0)?;
        // The new directories' entries must survive a power loss too: `<p>`, `topics/<t>`, `topics`.
        let mut synced = Some(dir);
        for _ in 0..3 {
            let Some(d) = synced else { break };
            sync_dir(d).map_err(|e| StoreError::io(d, e))?;
            synced = d.parent();
        }
        Ok(Self::assemble(dir, Vec::new(), active, active_files, opts))
    }

    /// A partition over opened segments, with nothing staged.
    fn assemble(
        dir: &Path,
        sealed: Vec<Segment>,
        active: Segment,
        active_files: Files,
        opts: PartitionOptions,
    ) -> Partition {
        let gate = SyncGate::new(active_files.log.clone(), active.log_path.clone());
        Partition {
            dir: dir.to_path_buf(),
            sealed,
            active,
            active_files,
            open_sealed: std::sync::Mutex::new(None),
            staged: Vec::new(),
            staged_idx: Vec::new(),
            staged_count: 0,
            opts,
            gate,
            written: 0,
            closed: false,
        }
    }

    /// Refuses a segment that does not start where the one before it ends.
    fn check_continuity(previous: Option<&Segment>, next: &Segment) -> Result<(), StoreError> {
        match previous.map(Segment::end) {
            Some(end) if end != next.base => Err(StoreError::corrupt(
                &next.log_path,
                0,
                &format!("segment starts at seq {} but the one before it ends at {}", next.base, end - 1),
            )),
            _ => Ok(()),
        }
    }

    fn new_segment(dir: &Path, base: u64, cum_before: u64) -> Result<(Segment, Files), StoreError> {
        let (log_path, idx_path) = segment_paths(dir, base);
        let log = open_rw(&log_path, true)?;
        let idx = open_rw(&idx_path, true)?;
        log.set_len(0).map_err(|e| StoreError::io(&log_path, e))?;
        idx.set_len(0).map_err(|e| StoreError::io(&idx_path, e))?;
        let files = Files { log: Arc::new(log), idx: Arc::new(idx) };
        Ok((Segment { base, count: 0, len: 0, cum_before, log_path, idx_path }, files))
    }

    /// Opens an existing partition, repairing what SEMANTICS.md §9.10 says to repair. Returns the records
    /// of the active segment, which the engine keeps in memory.
    pub fn open(
        dir: &Path,
        opts: PartitionOptions,
    ) -> Result<(Self, Vec<StoredRecord>, PartitionReport), StoreError> {
        let mut report = PartitionReport::default();
        let mut bases = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| StoreError::io(dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let parsed = name.split_once('.').and_then(|(stem, ext)| Some((stem.parse::<u64>().ok()?, ext)));
            match parsed {
                Some((base, "log")) if name.len() == 24 => bases.push(base),
                Some((base, "idx")) if name.len() == 24 && segment_paths(dir, base).0.exists() => {}
                _ => report.ignored.push(path),
            }
        }
        bases.sort_unstable();
        let Some(&last) = bases.last() else {
            // An empty directory (a crash between mkdir and the first segment): start it afresh.
            let partition = Self::create(dir, 1, opts)?;
            return Ok((partition, Vec::new(), report));
        };
        let mut sealed = Vec::new();
        let mut cum = 0;
        for &base in &bases[..bases.len() - 1] {
            let segment = Self::open_sealed(dir, base, cum, &mut report)?;
            Self::check_continuity(sealed.last(), &segment)?;
            cum += segment.content();
            sealed.push(segment);
        }
        let (active, active_files, records) = Self::open_active(dir, last, cum, &mut report)?;
        Self::check_continuity(sealed.last(), &active)?;
        let partition = Self::assemble(dir, sealed, active, active_files, opts);
        Ok((partition, records, report))
    }

    /// Opens a sealed segment by checking its index's last entry against the log's length: O(1) when
    /// the index is intact, a scan that rebuilds it otherwise.
    fn open_sealed(
        dir: &Path,
        base: u64,
        cum_before: u64,
        report: &mut PartitionReport,
    ) -> Result<Segment, StoreError> {
        let (log_path, idx_path) = segment_paths(dir, base);
        let log = open_rw(&log_path, false)?;
        let idx = open_rw(&idx_path, true)?;
        let len = file_len(&log, &log_path)?;
        let idx_len = file_len(&idx, &idx_path)?;
        let files = Files { log: Arc::new(log), idx: Arc::new(idx) };
        let mut segment = Segment { base, count: idx_len / IDX_ENTRY, len, cum_before, log_path, idx_path };
        if idx_len.is_multiple_of(IDX_ENTRY) && segment.count > 0 && Self::index_ends_at(&segment, &files)? {
            return Ok(segment);
        }
        let data =
            fs::read(&segment.log_path).map(Bytes::from).map_err(|e| StoreError::io(&segment.log_path, e))?;
        let mut idx_bytes = Vec::new();
        let mut pos = 0;
        let mut expected = base;
        while pos < data.len() {
            match decode(&data, pos) {
                Ok((record, frame)) if record.seq == expected => {
                    push_entry(&mut idx_bytes, expected - base, pos as u64, record.time);
                    pos += frame;
                    expected += 1;
                }
                Ok((record, _)) => {
                    return Err(StoreError::corrupt(
                        &segment.log_path,
                        pos as u64,
                        &format!("expected seq {expected}, found {}", record.seq),
                    ));
                }
                Err(why) => return Err(StoreError::corrupt(&segment.log_path, pos as u64, why)),
            }
        }
        files.idx.set_len(0).map_err(|e| StoreError::io(&segment.idx_path, e))?;
        files.idx.write_all_at(&idx_bytes, 0).map_err(|e| StoreError::io(&segment.idx_path, e))?;
        files.idx.sync_data().map_err(|e| StoreError::io(&segment.idx_path, e))?;
        segment.count = expected - base;
        report.rebuilt_indexes.push(segment.idx_path.clone());
        Ok(segment)
    }

    /// Whether the index's last entry names a record that ends exactly where the log ends.
    fn index_ends_at(segment: &Segment, files: &Files) -> Result<bool, StoreError> {
        let rel = segment.count.saturating_sub(1);
        let (pos, _) = segment.entry(files, rel)?;
        let mut head = [0u8; 16];
        if files.log.read_exact_at(&mut head, pos).is_err() {
            return Ok(false);
        }
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let seq = u64::from_le_bytes([
            head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
        ]);
        Ok(pos + 8 + len == segment.len && seq == segment.base + rel)
    }

    /// Reads the active segment whole, cuts a torn tail, and rewrites its index when it does not match.
    fn open_active(
        dir: &Path,
        base: u64,
        cum_before: u64,
        report: &mut PartitionReport,
    ) -> Result<(Segment, Files, Vec<StoredRecord>), StoreError> {
        let (log_path, idx_path) = segment_paths(dir, base);
        let log = open_rw(&log_path, false)?;
        let idx = open_rw(&idx_path, true)?;
        let data = fs::read(&log_path).map(Bytes::from).map_err(|e| StoreError::io(&log_path, e))?;
        let mut records = Vec::new();
        let mut idx_bytes = Vec::new();
        let mut pos = 0;
        let mut expected = base;
        while pos < data.len() {
            match decode(&data, pos) {
                Ok((record, frame)) if record.seq == expected => {
                    push_entry(&mut idx_bytes, expected - base, pos as u64, record.time);
                    records.push(record);
                    pos += frame;
                    expected += 1;
                }
                outcome => {
                    if let Some(at) = readable_after(&data, pos, expected) {
                        let why = match outcome {
                            Ok((r, _)) => format!("expected seq {expected}, found {}", r.seq),
                            Err(why) => why.to_string(),
                        };
                        return Err(StoreError::corrupt(
                            &log_path,
                            pos as u64,
                            &format!(
                                "{why}; readable records follow at offset {at}, so this is not a torn tail"
                            ),
                        ));
                    }
                    let cut = (data.len() - pos) as u64;
                    log.set_len(pos as u64).map_err(|e| StoreError::io(&log_path, e))?;
                    log.sync_data().map_err(|e| StoreError::io(&log_path, e))?;
                    report.truncated = Some((log_path.clone(), pos as u64, cut));
                    break;
                }
            }
        }
        let on_disk = fs::read(&idx_path).map_err(|e| StoreError::io(&idx_path, e))?;
        if on_disk != idx_bytes {
            idx.set_len(0).map_err(|e| StoreError::io(&idx_path, e))?;
            idx.write_all_at(&idx_bytes, 0).map_err(|e| StoreError::io(&idx_path, e))?;
            report.rebuilt_indexes.push(idx_path.clone());
        }
        let segment =
            Segment { base, count: expected - base, len: pos as u64, cum_before, log_path, idx_path };
        Ok((segment, Files { log: Arc::new(log), idx: Arc::new(idx) }, records))
    }

    /// The first seq on disk.
    pub fn first_seq(&self) -> u64 {
        self.sealed.first().unwrap_or(&self.active).base
    }

    /// The first seq of the active segment (the engine's in-memory window starts here).
    pub fn active_base(&self) -> u64 {
        self.active.base
    }

    /// Content bytes of every segment before the active one, counted from the partition's start.
    pub fn active_cum_before(&self) -> u64 {
        self.active.cum_before
    }

    /// Adds a record to the pending write; nothing reaches the file before [`Partition::commit`].
    pub fn stage(
        &mut self,
        seq: u64,
        time: Timestamp,
        subject: Option<&Name>,
        extra: Option<&MessageExtra>,
        payload: &[u8],
    ) -> Result<u64, StoreError> {
        let expected = self.active.end() + self.staged_count;
        if seq != expected {
            return Err(StoreError::corrupt(
                &self.active.log_path,
                self.active.len,
                &format!("append of seq {seq} where seq {expected} belongs"),
            ));
        }
        let pos = self.active.len + self.staged.len() as u64;
        if pos >= MAX_SEGMENT_BYTES {
            return Err(StoreError::Full(format!(
                "segment {} would exceed 1 GiB; commit before staging more",
                self.active.log_path.display()
            )));
        }
        let content = encode(&mut self.staged, seq, time, subject, extra, payload)
            .map_err(|why| StoreError::Invalid(format!("cannot store seq {seq}: {why}")))?;
        push_entry(&mut self.staged_idx, seq - self.active.base, pos, time);
        self.staged_count += 1;
        Ok(content)
    }

    /// Forgets the staged records (their publish failed before commit).
    pub fn discard_staged(&mut self) {
        self.staged.clear();
        self.staged_idx.clear();
        self.staged_count = 0;
    }

    /// Writes the staged records (one write for the log, one for the index) and rolls the segment when
    /// it is full. On failure nothing staged stays in the files.
    pub fn commit(&mut self) -> Result<Commit, StoreError> {
        if self.closed {
            self.discard_staged();
            return Err(StoreError::Closed(self.dir.clone()));
        }
        if self.staged_count == 0 {
            return Ok(Commit { sync: self.sync_plan(), rolled_to: None });
        }
        let seg = &mut self.active;
        let files = &self.active_files;
        let written = files
            .log
            .write_all_at(&self.staged, seg.len)
            .map_err(|e| StoreError::io(&seg.log_path, e))
            .and_then(|()| {
                files
                    .idx
                    .write_all_at(&self.staged_idx, seg.count * IDX_ENTRY)
                    .map_err(|e| StoreError::io(&seg.idx_path, e))
            });
        if let Err(e) = written {
            // Best effort: leave the files as they were, so a later append lands where it belongs.
            let _ = files.log.set_len(seg.len);
            let _ = files.idx.set_len(seg.count * IDX_ENTRY);
            self.discard_staged();
            return Err(e);
        }
        seg.len += self.staged.len() as u64;
        seg.count += self.staged_count;
        self.written += self.staged.len() as u64;
        self.gate.mark_written(self.written);
        self.discard_staged();
        // The records are written: a roll that fails now (no descriptors, no room for a new file) must
        // not undo them. The segment stays active and the roll is tried again at the next commit.
        let rolled_to = if self.active.len >= self.opts.segment_bytes.min(MAX_SEGMENT_BYTES) {
            match self.roll() {
                Ok(()) => Some(self.active.base),
                Err(e) => {
                    tracing::warn!("segment not rolled, will retry: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Commit { sync: self.sync_plan(), rolled_to })
    }

    fn sync_plan(&self) -> Option<(Arc<SyncGate>, u64)> {
        match self.opts.durability {
            Durability::Always | Durability::Batch { .. } => Some((self.gate.clone(), self.written)),
            Durability::Interval(_) | Durability::Never => None,
        }
    }

    /// Cuts the active segment back to what the last fsync covered (a simulated power loss).
    pub fn drop_unsynced(&self) -> Result<(PathBuf, u64), StoreError> {
        self.gate.drop_unsynced()
    }

    /// The gate a background syncer drives for `Interval` durability.
    pub fn gate(&self) -> Arc<SyncGate> {
        self.gate.clone()
    }

    /// Seals the active segment (synced, so a sealed segment is always whole) and starts the next.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.sync_files()?;
        let (next, next_files) =
            Self::new_segment(&self.dir, self.active.end(), self.active.cum_before + self.active.content())?;
        sync_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        self.gate.switch_file(next_files.log.clone(), next.log_path.clone());
        let old = std::mem::replace(&mut self.active, next);
        self.active_files = next_files;
        self.sealed.push(old);
        Ok(())
    }

    /// Flushes the active segment's records to disk (its index is rebuilt from them if it is short).
    pub fn sync_log(&self) -> Result<(), StoreError> {
        self.active_files.log.sync_data().map_err(|e| StoreError::io(&self.active.log_path, e))
    }

    /// Flushes the active segment and its index to disk.
    /// Syncs the active segment and refuses every later write: the engine is closing its directory.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.closed = true;
        self.discard_staged();
        self.sync_files()
    }

    pub fn sync_files(&self) -> Result<(), StoreError> {
        self.active_files.log.sync_data().map_err(|e| StoreError::io(&self.active.log_path, e))?;
        self.active_files.idx.sync_data().map_err(|e| StoreError::io(&self.active.idx_path, e))
    }

    fn sealed_for(&self, seq: u64) -> Option<&Segment> {
        let i = self.sealed.partition_point(|s| s.end() <= seq);
        self.sealed.get(i).filter(|s| s.base <= seq)
    }

    /// The open files of a sealed segment (the one kept open before is closed).
    fn files_of(&self, s: &Segment) -> Result<Arc<Files>, StoreError> {
        let mut open = self.open_sealed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((base, files)) = open.as_ref()
            && *base == s.base
        {
            return Ok(files.clone());
        }
        let files = Arc::new(Files::open(&s.log_path, &s.idx_path)?);
        *open = Some((s.base, files.clone()));
        Ok(files)
    }

    /// Reads a record of a sealed segment.
    pub fn read(&self, seq: u64) -> Result<Option<StoredRecord>, StoreError> {
        self.sealed_for(seq).map(|s| s.read(&*self.files_of(s)?, seq)).transpose()
    }

    /// Publish time of a record of a sealed segment, from the index.
    pub fn time_of(&self, seq: u64) -> Result<Option<Timestamp>, StoreError> {
        self.sealed_for(seq).map(|s| s.entry(&*self.files_of(s)?, seq - s.base).map(|(_, t)| t)).transpose()
    }

    /// Content bytes from the partition's start through `seq` (a seq in a sealed segment).
    pub fn cum_through(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        self.sealed_for(seq)
            .map(|s| s.content_through(&*self.files_of(s)?, seq).map(|c| s.cum_before + c))
            .transpose()
    }

    /// The first seq at or after `from` in the sealed segments whose publish time is at or after `t`;
    /// `None` when no sealed record qualifies.
    pub fn seq_at_time(&self, from: u64, t: Timestamp) -> Result<Option<u64>, StoreError> {
        for s in self.sealed.iter().filter(|s| s.end() > from) {
            let f = self.files_of(s)?;
            let (_, last) = s.entry(&f, s.count.saturating_sub(1))?;
            if last < t {
                continue;
            }
            let (mut lo, mut hi) = (from.saturating_sub(s.base), s.count - 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if s.entry(&f, mid)?.1 < t {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            return Ok(Some(s.base + lo));
        }
        Ok(None)
    }

    /// Deletes sealed segments that hold nothing at or after `first_seq`.
    pub fn drop_before(&mut self, first_seq: u64) -> Result<(), StoreError> {
        let gone = self.sealed.partition_point(|s| s.end() <= first_seq);
        if gone == 0 {
            return Ok(());
        }
        *self.open_sealed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        for s in self.sealed.drain(..gone) {
            fs::remove_file(&s.log_path).map_err(|e| StoreError::io(&s.log_path, e))?;
            fs::remove_file(&s.idx_path).map_err(|e| StoreError::io(&s.idx_path, e))?;
        }
        sync_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))
    }

    /// Deletes every segment and starts an empty one whose first record will be `next_seq`.
    pub fn purge(&mut self, next_seq: u64) -> Result<(), StoreError> {
        // The old active segment is made whole first: if the deletions below do not all reach the disk
        // before a power loss, what comes back is complete rather than torn in the middle of the topic.
        self.sync_files()?;
        let cum = self.active.cum_before + self.active.content();
        let (next, next_files) = Self::new_segment(&self.dir, next_seq, cum)?;
        *self.open_sealed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.active_files = next_files;
        for s in self.sealed.drain(..).chain(std::iter::once(std::mem::replace(&mut self.active, next))) {
            if s.base == next_seq {
                continue; // the new segment took over this name
            }
            fs::remove_file(&s.log_path).map_err(|e| StoreError::io(&s.log_path, e))?;
            fs::remove_file(&s.idx_path).map_err(|e| StoreError::io(&s.idx_path, e))?;
        }
        self.gate.switch_file(self.active_files.log.clone(), self.active.log_path.clone());
        sync_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))
    }
}

fn push_entry(out: &mut Vec<u8>, rel: u64, pos: u64, time: Timestamp) {
    out.extend_from_slice(&(rel as u32).to_le_bytes());
    out.extend_from_slice(&(pos as u32).to_le_bytes());
    out.extend_from_slice(&time.as_micros().to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Headers;

    #[test]
    fn records_round_trip_with_every_field() {
        let mut headers = Headers::new();
        headers.insert("trace".into(), "abc".into());
        let extra =
            MessageExtra { key: Some(Bytes::from_static(b"k\0")), msg_id: Some("m-1".into()), headers };
        let subject = Name::new("orders.eu").unwrap();
        let mut out = Vec::new();
        let content =
            encode(&mut out, 7, Timestamp::from_micros(42), Some(&subject), Some(&extra), b"\xffpay")
                .unwrap();
        let (record, frame) = decode(&Bytes::from(out.clone()), 0).unwrap();
        assert_eq!(frame, out.len());
        assert_eq!(content, out.len() as u64 - RECORD_HEADER);
        assert_eq!((record.seq, record.time.as_micros()), (7, 42));
        assert_eq!(record.subject, Some(subject));
        assert_eq!(record.extra.as_deref(), Some(&extra));
        assert_eq!(&record.payload[..], b"\xffpay");
    }

    #[test]
    fn plain_records_encode_like_the_general_layout() {
        let mut fast = Vec::new();
        encode(&mut fast, 9, Timestamp::from_micros(5), None, None, b"abc").unwrap();
        let (record, len) = decode(&Bytes::from(fast.clone()), 0).unwrap();
        assert_eq!((record.seq, record.content, len), (9, 3, fast.len()));
        assert!(record.extra.is_none() && record.subject.is_none());
        assert_eq!(&record.payload[..], b"abc");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, 1, Timestamp::ZERO, None, None, b"payload").unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            assert!(decode(&Bytes::from(bad), 0).is_err(), "flip at {i} went unnoticed");
        }
    }
}
