//! The partition's writer (stage, commit, roll, purge) and its cold reader (records, times and sizes
//! from sealed segments, one segment's files open at a time).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    Commit, FileSlot, Files, IDX_ENTRY, MAX_SEGMENT_BYTES, Partition, PartitionOptions, Segment,
    StoredRecord, encode, open_rw, push_entry, segment_paths,
};
use crate::model::{Durability, MessageExtra, Name, Timestamp};
use crate::store::frame::{self, sync_dir};
use crate::store::{StoreError, SyncGate};

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
    pub(super) fn assemble(
        dir: &Path,
        sealed: Vec<Segment>,
        active: Segment,
        active_files: Files,
        opts: PartitionOptions,
    ) -> Partition {
        let active_files =
            FileSlot::new(opts.budget, active.log_path.clone(), active.idx_path.clone(), active_files);
        let gate = SyncGate::for_slot(active_files.clone());
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

    fn new_segment(dir: &Path, base: u64, cum_before: u64) -> Result<(Segment, Files), StoreError> {
        let (log_path, idx_path) = segment_paths(dir, base);
        let log = open_rw(&log_path, true)?;
        let idx = open_rw(&idx_path, true)?;
        log.set_len(0).map_err(|e| StoreError::io(&log_path, e))?;
        idx.set_len(0).map_err(|e| StoreError::io(&idx_path, e))?;
        let files = Files { log: Arc::new(log), idx: Arc::new(idx) };
        Ok((Segment { base, count: 0, len: 0, cum_before, log_path, idx_path }, files))
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
        let files = match self.active_files.files() {
            Ok(files) => files,
            Err(e) => {
                self.discard_staged();
                return Err(e);
            }
        };
        let seg = &mut self.active;
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
        self.active_files.replace(&next.log_path, &next.idx_path, next_files);
        self.gate.switched();
        let old = std::mem::replace(&mut self.active, next);
        self.sealed.push(old);
        Ok(())
    }

    /// Flushes the active segment's records to disk (its index is rebuilt from them if it is short).
    pub fn sync_log(&self) -> Result<(), StoreError> {
        self.active_files.files()?.log.sync_data().map_err(|e| StoreError::io(&self.active.log_path, e))
    }

    /// Syncs the active segment and refuses every later write: the engine is closing its directory.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.closed = true;
        self.discard_staged();
        self.sync_files()
    }

    /// Flushes the active segment and its index to disk.
    pub fn sync_files(&self) -> Result<(), StoreError> {
        let files = self.active_files.files()?;
        files.log.sync_data().map_err(|e| StoreError::io(&self.active.log_path, e))?;
        files.idx.sync_data().map_err(|e| StoreError::io(&self.active.idx_path, e))
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
        self.active_files.replace(&next.log_path, &next.idx_path, next_files);
        for s in self.sealed.drain(..).chain(std::iter::once(std::mem::replace(&mut self.active, next))) {
            if s.base == next_seq {
                continue; // the new segment took over this name
            }
            fs::remove_file(&s.log_path).map_err(|e| StoreError::io(&s.log_path, e))?;
            fs::remove_file(&s.idx_path).map_err(|e| StoreError::io(&s.idx_path, e))?;
        }
        self.gate.switched();
        sync_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))
    }
}
