//! Reading a partition back from disk: [`Partition::open`] with its torn-tail repair and index
//! rebuilds (one shared pass over a segment's records), and [`rescan`], which `store repair` uses to
//! index a segment around its damage.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::{
    Files, IDX_ENTRY, Partition, PartitionOptions, PartitionReport, RECORD_HEADER, Segment, StoredRecord,
    decode, file_len, open_rw, push_entry, segment_paths,
};
use crate::model::Timestamp;
use crate::store::StoreError;

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

/// How a pass over a segment's records from its first seq ended.
struct Walk {
    /// A dense index of the records read.
    index: Vec<u8>,
    /// The seq after the last record read.
    next_seq: u64,
    /// Where the last record read ends: the end of the data, or the start of what stopped the pass.
    end: usize,
    /// Why the pass stopped before the end of the data: the record at `end` is damaged or out of
    /// sequence.
    stopped: Option<String>,
}

/// Reads the records of `data` (a segment whose first seq is `base`) in order while each is whole and
/// the next in sequence, indexing each and handing it to `each`; stops at the first that is not.
fn walk(data: &Bytes, base: u64, mut each: impl FnMut(StoredRecord)) -> Walk {
    let mut out = Walk { index: Vec::new(), next_seq: base, end: 0, stopped: None };
    while out.end < data.len() {
        match decode(data, out.end) {
            Ok((record, frame)) if record.seq == out.next_seq => {
                push_entry(&mut out.index, out.next_seq - base, out.end as u64, record.time);
                each(record);
                out.end += frame;
                out.next_seq += 1;
            }
            Ok((record, _)) => {
                out.stopped = Some(format!("expected seq {}, found {}", out.next_seq, record.seq));
                break;
            }
            Err(why) => {
                out.stopped = Some(why.to_string());
                break;
            }
        }
    }
    out
}

impl Partition {
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
        let scan = walk(&data, base, |_| {});
        if let Some(why) = scan.stopped {
            return Err(StoreError::corrupt(&segment.log_path, scan.end as u64, &why));
        }
        files.idx.set_len(0).map_err(|e| StoreError::io(&segment.idx_path, e))?;
        files.idx.write_all_at(&scan.index, 0).map_err(|e| StoreError::io(&segment.idx_path, e))?;
        files.idx.sync_data().map_err(|e| StoreError::io(&segment.idx_path, e))?;
        segment.count = scan.next_seq - base;
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
        let scan = walk(&data, base, |record| records.push(record));
        let pos = scan.end;
        if let Some(why) = scan.stopped {
            if let Some(at) = readable_after(&data, pos, scan.next_seq) {
                return Err(StoreError::corrupt(
                    &log_path,
                    pos as u64,
                    &format!("{why}; readable records follow at offset {at}, so this is not a torn tail"),
                ));
            }
            let cut = (data.len() - pos) as u64;
            log.set_len(pos as u64).map_err(|e| StoreError::io(&log_path, e))?;
            log.sync_data().map_err(|e| StoreError::io(&log_path, e))?;
            report.truncated = Some((log_path.clone(), pos as u64, cut));
        }
        let on_disk = fs::read(&idx_path).map_err(|e| StoreError::io(&idx_path, e))?;
        if on_disk != scan.index {
            idx.set_len(0).map_err(|e| StoreError::io(&idx_path, e))?;
            idx.write_all_at(&scan.index, 0).map_err(|e| StoreError::io(&idx_path, e))?;
            report.rebuilt_indexes.push(idx_path.clone());
        }
        let segment =
            Segment { base, count: scan.next_seq - base, len: pos as u64, cum_before, log_path, idx_path };
        Ok((segment, Files { log: Arc::new(log), idx: Arc::new(idx) }, records))
    }
}
