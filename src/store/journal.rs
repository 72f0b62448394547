//! A subscription's durable state: a journal of what happened since the last checkpoint, and the
//! checkpoint itself (written whole and atomically).
//!
//! The state kept is exactly what the engine needs to resume: the cursor (highest seq handed out or
//! passed over), the ack floor, and for each unsettled seq between them its attempt count and, when it
//! waits for a backoff, its wall-clock not-before. Seqs between floor and cursor without an entry are
//! settled. Journal records are ordered so that a torn tail can only lose the newest facts: an
//! `Attempt` is always written before the `Cursor` that passes it, so a crash never turns an unsettled
//! message into a settled one.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, Reader};
use super::{StoreError, SyncGate};
use crate::model::{AckDurability, SubCounters, Timestamp};

/// Records between checkpoints by default; a checkpoint then truncates the journal. The trade (a
/// checkpoint's write and sync against the journal an open after a crash replays) is measured in
/// docs/BENCHMARKS.md, "Checkpoint frequency".
const CHECKPOINT_EVERY: u64 = 50_000;

/// Records between checkpoints in this process: `PUBSUB_CHECKPOINT_EVERY` when it is set to a positive
/// number (read once), else [`CHECKPOINT_EVERY`].
fn checkpoint_every() -> u64 {
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("PUBSUB_CHECKPOINT_EVERY")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(CHECKPOINT_EVERY)
    })
}

/// Bits of a journal key that hold the seq. A key names a message of any partition in one `u64`: the
/// partition sits above these bits, so partition 0's keys are its seqs and the records of a topic of
/// one partition read the same as before partitions existed.
pub(crate) const SEQ_BITS: u32 = 44;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// The key of (partition, seq) (see [`SEQ_BITS`]).
pub(crate) fn pos_key(partition: u32, seq: u64) -> u64 {
    (u64::from(partition) << SEQ_BITS) | (seq & SEQ_MASK)
}

/// The (partition, seq) a key names.
pub(crate) fn split_key(key: u64) -> (u32, u64) {
    (u32::try_from(key >> SEQ_BITS).unwrap_or(u32::MAX), key & SEQ_MASK)
}

/// Every key of one partition.
pub(crate) fn partition_keys(partition: u32) -> std::ops::Range<u64> {
    pos_key(partition, 0)..pos_key(partition, 0).saturating_add(1 << SEQ_BITS)
}

/// One fact about a subscription. Every `seq` here is a key of [`pos_key`]: partition and seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubOp {
    /// `seq` was handed out; this is its `attempt`-th delivery.
    Attempt { seq: u64, attempt: u32 },
    /// `seq` is settled (acked, terminated or dead-lettered).
    Settle { seq: u64 },
    /// `seq` waits until `not_before` (wall clock) before it is delivered again.
    Delay { seq: u64, not_before: Timestamp },
    /// Every seq up to here has been handed out or passed over.
    Cursor { seq: u64 },
    /// A seek: everything before `next` is settled, everything from it on is pending.
    Seek { next: u64 },
    /// `max_msgs_per_key` deleted `seq` before this subscription's cursor reached it, and it was
    /// counted as expired: the count survives a crash (recovery makes the deletion again but does not
    /// count it again, see `TopicState::rebuild_keys`).
    Expired { seq: u64 },
}

const TAG_GEN: u8 = 0;
const TAG_ATTEMPT: u8 = 1;
const TAG_SETTLE: u8 = 2;
const TAG_DELAY: u8 = 3;
const TAG_CURSOR: u8 = 4;
const TAG_SEEK: u8 = 5;
const TAG_EXPIRED: u8 = 6;

impl SubOp {
    fn encode(self, out: &mut Vec<u8>) {
        let mut body = [0u8; 21];
        let len = match self {
            SubOp::Attempt { seq, attempt } => {
                body[0] = TAG_ATTEMPT;
                body[1..9].copy_from_slice(&seq.to_le_bytes());
                body[9..13].copy_from_slice(&attempt.to_le_bytes());
                13
            }
            SubOp::Settle { seq }
            | SubOp::Cursor { seq }
            | SubOp::Seek { next: seq }
            | SubOp::Expired { seq } => {
                body[0] = match self {
                    SubOp::Settle { .. } => TAG_SETTLE,
                    SubOp::Cursor { .. } => TAG_CURSOR,
                    SubOp::Expired { .. } => TAG_EXPIRED,
                    _ => TAG_SEEK,
                };
                body[1..9].copy_from_slice(&seq.to_le_bytes());
                9
            }
            SubOp::Delay { seq, not_before } => {
                body[0] = TAG_DELAY;
                body[1..9].copy_from_slice(&seq.to_le_bytes());
                body[9..17].copy_from_slice(&not_before.as_micros().to_le_bytes());
                17
            }
        };
        frame::put_frame(out, &body[..len]);
    }

    pub(crate) fn decode(body: &[u8]) -> Option<SubOp> {
        let mut r = Reader::new(body);
        let op = match r.u8()? {
            TAG_ATTEMPT => SubOp::Attempt { seq: r.u64()?, attempt: r.u32()? },
            TAG_SETTLE => SubOp::Settle { seq: r.u64()? },
            TAG_DELAY => SubOp::Delay { seq: r.u64()?, not_before: Timestamp::from_micros(r.i64()?) },
            TAG_CURSOR => SubOp::Cursor { seq: r.u64()? },
            TAG_SEEK => SubOp::Seek { next: r.u64()? },
            TAG_EXPIRED => SubOp::Expired { seq: r.u64()? },
            _ => return None,
        };
        Some(op)
    }
}

/// One unsettled message as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    pub attempt: u32,
    pub not_before: Option<Timestamp>,
}

/// A subscription's durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SubSnapshot {
    /// Partition 0's cursor and floor.
    pub cursor: u64,
    pub floor: u64,
    /// Cursor and floor of partitions 1, 2, … (empty for a topic of one partition).
    pub parts: Vec<(u64, u64)>,
    /// Keyed by [`pos_key`].
    pub pending: BTreeMap<u64, Pending>,
    /// The running totals when the checkpoint was taken (a clean shutdown takes one): `None` in
    /// checkpoints written before they were kept. The journal does not record them, so after a crash
    /// they resume from the last checkpoint.
    pub counters: Option<SubCounters>,
    /// Each partition's head when the checkpoint was taken (empty in checkpoints written before it was
    /// kept). Recovery makes `max_msgs_per_key` deletions again from the log instead of reading them
    /// back; those that appends up to these heads made are already in `counters`, so they are not
    /// counted again.
    pub heads: Vec<u64>,
    /// The victims of `Expired` records replayed from the journal (never in a checkpoint): counted in
    /// `counters` already.
    pub expired: std::collections::BTreeSet<u64>,
}

/// Marks the counters block after the pending entries of a checkpoint.
const COUNTERS_BLOCK: u8 = 1;
/// Marks the block of the cursors and floors of partitions 1, 2, ….
const PARTS_BLOCK: u8 = 2;
/// Marks the block of each partition's head when the checkpoint was taken.
const HEADS_BLOCK: u8 = 3;

impl SubSnapshot {
    /// A new subscription of a one-partition topic that starts at `start_seq`.
    #[cfg(test)]
    pub fn starting_at(start_seq: u64) -> Self {
        SubSnapshot::starting_at_each(&[start_seq])
    }

    /// A new subscription that starts at `starts[p]` in partition `p`.
    pub fn starting_at_each(starts: &[u64]) -> Self {
        let floor = starts.first().copied().unwrap_or(1).saturating_sub(1);
        let parts = starts.iter().skip(1).map(|s| (s.saturating_sub(1), s.saturating_sub(1))).collect();
        SubSnapshot { cursor: floor, floor, parts, ..SubSnapshot::default() }
    }

    /// How many partitions the state covers.
    pub fn partitions(&self) -> u32 {
        u32::try_from(self.parts.len() + 1).unwrap_or(u32::MAX)
    }

    /// Cursor and floor of partition `p` (zero for one it does not know yet).
    pub fn at(&self, p: u32) -> (u64, u64) {
        match p {
            0 => (self.cursor, self.floor),
            _ => self.parts.get(p as usize - 1).copied().unwrap_or((0, 0)),
        }
    }

    fn at_mut(&mut self, p: u32) -> (&mut u64, &mut u64) {
        if p == 0 {
            return (&mut self.cursor, &mut self.floor);
        }
        let i = p as usize - 1;
        if self.parts.len() <= i {
            self.parts.resize(i + 1, (0, 0));
        }
        let (cursor, floor) = &mut self.parts[i];
        (cursor, floor)
    }

    pub fn apply(&mut self, op: SubOp) {
        if let SubOp::Expired { seq } = op {
            self.counters.get_or_insert_with(SubCounters::default).expired_unacked += 1;
            self.expired.insert(seq);
            return;
        }
        let key = match op {
            SubOp::Attempt { seq, .. }
            | SubOp::Settle { seq }
            | SubOp::Delay { seq, .. }
            | SubOp::Cursor { seq }
            | SubOp::Seek { next: seq }
            | SubOp::Expired { seq } => seq,
        };
        let (p, s) = split_key(key);
        match op {
            SubOp::Attempt { attempt, .. } if s > self.at(p).1 => {
                self.pending.insert(key, Pending { attempt, not_before: None });
                let (cursor, _) = self.at_mut(p);
                *cursor = (*cursor).max(s);
            }
            SubOp::Settle { .. } => {
                self.pending.remove(&key);
            }
            SubOp::Delay { not_before, .. } => {
                if let Some(p) = self.pending.get_mut(&key) {
                    p.not_before = Some(not_before);
                }
            }
            SubOp::Cursor { .. } => {
                let (cursor, _) = self.at_mut(p);
                *cursor = (*cursor).max(s);
            }
            SubOp::Seek { .. } => {
                let keys = partition_keys(p);
                self.pending.retain(|k, _| !keys.contains(k));
                let (cursor, floor) = self.at_mut(p);
                *cursor = s.saturating_sub(1);
                *floor = s.saturating_sub(1);
            }
            SubOp::Attempt { .. } | SubOp::Expired { .. } => {}
        }
        let first = self.pending.range(partition_keys(p)).next().map(|(&k, _)| split_key(k).1);
        let (cursor, floor) = self.at_mut(p);
        *floor = first.map_or(*cursor, |first| first - 1).max(*floor);
    }

    /// Drops what lies beyond each partition's head (messages that no longer exist); `heads[p]` is
    /// partition `p`'s, and the last one given stands for every partition after it.
    pub fn clamp(&mut self, heads: &[u64]) {
        let head_of = |p: u32| heads.get(p as usize).or(heads.last()).copied().unwrap_or(u64::MAX);
        for p in 0..self.partitions() {
            let head = head_of(p);
            let (cursor, floor) = self.at_mut(p);
            *cursor = (*cursor).min(head);
            *floor = (*floor).min(*cursor);
        }
        self.pending.retain(|&key, _| {
            let (p, seq) = split_key(key);
            seq <= head_of(p)
        });
        // Seqs a power loss took back are used again by new messages, whose deletions count anew.
        for (p, counted) in self.heads.iter_mut().enumerate() {
            *counted = (*counted).min(head_of(u32::try_from(p).unwrap_or(u32::MAX)));
        }
    }

    pub(crate) fn encode(&self, generation: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(28 + self.pending.len() * 21);
        body.extend_from_slice(&generation.to_le_bytes());
        body.extend_from_slice(&self.cursor.to_le_bytes());
        body.extend_from_slice(&self.floor.to_le_bytes());
        body.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        for (seq, p) in &self.pending {
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&p.attempt.to_le_bytes());
            body.push(u8::from(p.not_before.is_some()));
            body.extend_from_slice(&p.not_before.map_or(0, Timestamp::as_micros).to_le_bytes());
        }
        if let Some(c) = &self.counters {
            body.push(COUNTERS_BLOCK);
            for n in counter_fields(c) {
                body.extend_from_slice(&n.to_le_bytes());
            }
        }
        if !self.parts.is_empty() {
            body.push(PARTS_BLOCK);
            body.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
            for (cursor, floor) in &self.parts {
                body.extend_from_slice(&cursor.to_le_bytes());
                body.extend_from_slice(&floor.to_le_bytes());
            }
        }
        if !self.heads.is_empty() {
            body.push(HEADS_BLOCK);
            body.extend_from_slice(&(self.heads.len() as u32).to_le_bytes());
            for head in &self.heads {
                body.extend_from_slice(&head.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(body.len() + 8);
        frame::put_frame(&mut out, &body);
        out
    }

    pub(crate) fn decode(data: &[u8]) -> Option<(u64, SubSnapshot)> {
        let frames = frame::read_frames(data);
        if frames.bodies.len() != 1 || frames.valid_len != data.len() {
            return None;
        }
        let mut r = Reader::new(frames.bodies[0]);
        let generation = r.u64()?;
        let mut snap = SubSnapshot {
            cursor: r.u64()?,
            floor: r.u64()?,
            parts: Vec::new(),
            pending: BTreeMap::new(),
            ..SubSnapshot::default()
        };
        for _ in 0..r.u32()? {
            let seq = r.u64()?;
            let attempt = r.u32()?;
            let delayed = r.u8()? == 1;
            let at = r.i64()?;
            snap.pending
                .insert(seq, Pending { attempt, not_before: delayed.then(|| Timestamp::from_micros(at)) });
        }
        while !r.is_empty() {
            match r.u8()? {
                COUNTERS_BLOCK if snap.counters.is_none() => {
                    let mut fields = [0u64; 9];
                    for f in &mut fields {
                        *f = r.u64()?;
                    }
                    snap.counters = Some(counters_from(fields));
                }
                PARTS_BLOCK if snap.parts.is_empty() => {
                    for _ in 0..r.u32()? {
                        snap.parts.push((r.u64()?, r.u64()?));
                    }
                }
                HEADS_BLOCK if snap.heads.is_empty() => {
                    for _ in 0..r.u32()? {
                        snap.heads.push(r.u64()?);
                    }
                }
                _ => return None,
            }
        }
        Some((generation, snap))
    }
}

/// Each partition's cursor.
fn cursors_of(state: &SubSnapshot) -> Vec<u64> {
    (0..state.partitions()).map(|p| state.at(p).0).collect()
}

/// The counters in the order a checkpoint stores them.
fn counter_fields(c: &SubCounters) -> [u64; 9] {
    [
        c.delivered,
        c.redeliveries,
        c.acked,
        c.nacked,
        c.deadline_expired,
        c.dead_lettered,
        c.terminated,
        c.expired_unacked,
        c.filtered,
    ]
}

/// The counters from the fields of [`counter_fields`], in the same order.
fn counters_from(fields: [u64; 9]) -> SubCounters {
    let [
        delivered,
        redeliveries,
        acked,
        nacked,
        deadline_expired,
        dead_lettered,
        terminated,
        expired_unacked,
        filtered,
    ] = fields;
    SubCounters {
        delivered,
        redeliveries,
        acked,
        nacked,
        deadline_expired,
        dead_lettered,
        terminated,
        expired_unacked,
        filtered,
    }
}

/// The open journal of one subscription.
#[derive(Debug)]
pub(crate) struct SubJournal {
    journal_path: PathBuf,
    checkpoint_path: PathBuf,
    file: Arc<File>,
    len: u64,
    generation: u64,
    staged: Vec<u8>,
    /// A settle is staged: with `Sync` ack durability the operation waits for the fsync.
    staged_settle: bool,
    since_checkpoint: u64,
    durability: AckDurability,
    gate: Arc<SyncGate>,
    written: u64,
    /// The mark of the last write that held a settle: an ack that finds its message already settled
    /// still waits for this, so it never returns before the settle that beat it is on disk.
    last_settle_mark: u64,
    /// A checkpoint was written but the journal could not be reset to its generation: nothing may be
    /// appended to the old one (it would be ignored at open) until the reset succeeds.
    needs_reset: bool,
    /// The cursor of each partition the journal last recorded (or holds staged).
    pub recorded_cursors: Vec<u64>,
    /// Set by [`SubJournal::close`]: the directory is being released, nothing more is written.
    closed: bool,
}

/// What reading a subscription's files found, before anything is changed.
#[derive(Debug)]
pub(crate) struct Inspected {
    pub state: SubSnapshot,
    /// The checkpoint's generation (0 without one).
    generation: u64,
    /// The journal's generation, when its header is readable.
    journal_gen: Option<u64>,
    /// The journal's records were applied on top of the checkpoint.
    replayed: bool,
    /// The checkpoint was missing and the state was rebuilt from the journal alone.
    pub missing_checkpoint: bool,
    /// The journal was missing: what happened since the checkpoint is lost (acks come back).
    pub missing_journal: bool,
    valid_len: u64,
    /// A torn tail that opening cuts: (file, offset, bytes).
    pub truncated: Option<(PathBuf, u64, u64)>,
}

/// What opening a journal found.
#[derive(Debug)]
pub(crate) struct Opened {
    pub journal: SubJournal,
    pub state: SubSnapshot,
    /// The checkpoint was missing and the state was rebuilt from the journal alone.
    pub missing_checkpoint: bool,
    /// The journal was missing.
    pub missing_journal: bool,
    /// A torn tail was cut: (offset, bytes).
    pub truncated: Option<(PathBuf, u64, u64)>,
}

impl SubJournal {
    /// Creates the files of a new subscription that starts at `starts[p]` in partition `p`; `heads`
    /// are the partitions' heads now (what was deleted before it existed is none of its counting).
    pub fn create(
        dir: &Path,
        starts: &[u64],
        heads: &[u64],
        durability: AckDurability,
    ) -> Result<SubJournal, StoreError> {
        frame::create_dirs(dir).map_err(|e| StoreError::io(dir, e))?;
        let state = SubSnapshot { heads: heads.to_vec(), ..SubSnapshot::starting_at_each(starts) };
        let checkpoint_path = dir.join("checkpoint");
        frame::write_atomic(&checkpoint_path, &state.encode(0))?;
        let mut journal = Self::open_file(dir, 0, durability, cursors_of(&state))?;
        journal.reset(0)?;
        // The new directory's entry must survive a power loss too.
        if let Some(parent) = dir.parent() {
            frame::sync_dir(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        Ok(journal)
    }

    fn open_file(
        dir: &Path,
        generation: u64,
        durability: AckDurability,
        cursors: Vec<u64>,
    ) -> Result<SubJournal, StoreError> {
        let journal_path = dir.join("journal.log");
        let file = frame::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&journal_path)
            .map_err(|e| StoreError::io(&journal_path, e))?;
        let len = file.metadata().map(|m| m.len()).map_err(|e| StoreError::io(&journal_path, e))?;
        let file = Arc::new(file);
        let gate = SyncGate::new(file.clone(), journal_path.clone());
        Ok(SubJournal {
            checkpoint_path: dir.join("checkpoint"),
            journal_path,
            file,
            len,
            generation,
            staged: Vec::new(),
            staged_settle: false,
            since_checkpoint: 0,
            durability,
            gate,
            written: 0,
            last_settle_mark: 0,
            needs_reset: false,
            recorded_cursors: cursors,
            closed: false,
        })
    }

    /// Reads a subscription's files as recovery does, changing nothing: the checkpoint, then the journal
    /// records of the same generation on top of it. A torn tail of the journal is left out (recovery cuts
    /// it); damage with readable records after it, an unreadable checkpoint, or a record that is not a
    /// journal record is refused, naming the file and offset.
    /// `first` and `head` are the retained range of each partition of the topic after its own recovery
    /// (the last one given stands for the partitions after it): state beyond a head (messages a power
    /// loss took back) is dropped, so those seqs are delivered when they are reused.
    pub fn inspect(dir: &Path, first: &[u64], head: &[u64]) -> Result<Inspected, StoreError> {
        let checkpoint_path = dir.join("checkpoint");
        let (generation, mut state, missing_checkpoint) = match super::read_optional(&checkpoint_path)? {
            Some(data) => {
                let (generation, state) = SubSnapshot::decode(&data).ok_or_else(|| {
                    let why =
                        if data.is_empty() { "empty file" } else { "checkpoint fails its CRC or layout" };
                    StoreError::corrupt(&checkpoint_path, 0, why)
                })?;
                (generation, state, false)
            }
            None => (0, SubSnapshot::default(), true),
        };
        let journal_path = dir.join("journal.log");
        let read = super::read_optional(&journal_path)?;
        let missing_journal = read.is_none();
        let data = read.unwrap_or_default();
        let frames = frame::read_journal(&journal_path, &data)?;
        let mut bodies = frames.bodies.iter();
        let journal_gen = bodies.next().and_then(|b| {
            let mut r = Reader::new(b);
            (r.u8()? == TAG_GEN).then(|| r.u64()).flatten()
        });
        // A journal older than the checkpoint was superseded by it (a crash between the two steps of
        // a checkpoint). Without a checkpoint, the journal alone is the state only if it goes back to
        // the subscription's creation (generation 0); otherwise start again from the oldest retained
        // message (at-least-once: some acked messages come back, none is lost).
        if missing_checkpoint && journal_gen.is_some_and(|g| g > 0) {
            state = SubSnapshot::starting_at_each(first);
        } else if journal_gen.is_some_and(|g| g >= generation || missing_checkpoint) {
            let mut offset = frames.bodies.first().map_or(0, |b| frame::FRAME_HEADER + b.len());
            for (i, body) in bodies.enumerate() {
                let op = SubOp::decode(body).ok_or_else(|| {
                    StoreError::corrupt(
                        &journal_path,
                        offset as u64,
                        &format!("record {} is not a journal record", i + 1),
                    )
                })?;
                state.apply(op);
                offset += frame::FRAME_HEADER + body.len();
            }
        }
        let truncated = (frames.valid_len != data.len())
            .then(|| (journal_path.clone(), frames.valid_len as u64, (data.len() - frames.valid_len) as u64));
        state.clamp(head);
        let replayed = journal_gen.is_some_and(|g| g >= generation || missing_checkpoint);
        Ok(Inspected {
            state,
            generation,
            journal_gen,
            replayed,
            missing_checkpoint,
            missing_journal: missing_journal && !missing_checkpoint,
            valid_len: frames.valid_len as u64,
            truncated,
        })
    }

    /// Opens an existing subscription's files (see [`SubJournal::inspect`]), cutting a torn tail.
    pub fn open(
        dir: &Path,
        durability: AckDurability,
        first: &[u64],
        head: &[u64],
    ) -> Result<Opened, StoreError> {
        let found = Self::inspect(dir, first, head)?;
        let state = found.state;
        let journal_path = dir.join("journal.log");
        let mut journal = Self::open_file(
            dir,
            found.journal_gen.unwrap_or(found.generation),
            durability,
            cursors_of(&state),
        )?;
        // Start a fresh generation from the recovered state, so the repaired journal is never replayed
        // twice. If the checkpoint cannot be written (a full disk), the old journal goes on from its last
        // valid record; once the new checkpoint is in place the journal must be reset.
        let next = journal.generation.max(found.generation) + 1;
        match frame::write_atomic(&journal.checkpoint_path, &state.encode(next)) {
            Ok(()) => journal.reset(next)?,
            Err(e) if found.replayed && !found.missing_checkpoint => {
                tracing::warn!("subscription checkpoint not written, continuing its journal: {e}");
                journal.file.set_len(found.valid_len).map_err(|e| StoreError::io(&journal_path, e))?;
                journal.len = found.valid_len;
            }
            Err(e) => return Err(e),
        }
        journal.recorded_cursors = cursors_of(&state);
        Ok(Opened {
            journal,
            state,
            missing_checkpoint: found.missing_checkpoint,
            missing_journal: found.missing_journal,
            truncated: found.truncated,
        })
    }

    /// Refuses every later write: the engine is closing its directory (after its last checkpoint).
    pub fn close(&mut self) {
        self.closed = true;
        self.staged.clear();
    }

    /// Empties the journal and stamps it with `generation`.
    fn reset(&mut self, generation: u64) -> Result<(), StoreError> {
        let mut header = Vec::new();
        frame::put_frame(&mut header, &[&[TAG_GEN][..], &generation.to_le_bytes()].concat());
        let path = &self.journal_path;
        self.file.set_len(0).map_err(|e| StoreError::io(path, e))?;
        self.file.write_all_at(&header, 0).map_err(|e| StoreError::io(path, e))?;
        self.file.sync_data().map_err(|e| StoreError::io(path, e))?;
        self.len = header.len() as u64;
        self.generation = generation;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Queues a record; it reaches the file at the next [`SubJournal::commit`].
    pub fn stage(&mut self, op: SubOp) {
        if let SubOp::Cursor { seq } = op {
            let (p, seq) = split_key(seq);
            let p = p as usize;
            if self.recorded_cursors.len() <= p {
                self.recorded_cursors.resize(p + 1, 0);
            }
            self.recorded_cursors[p] = seq;
        }
        if matches!(op, SubOp::Settle { .. } | SubOp::Seek { .. }) {
            self.staged_settle = true;
        }
        op.encode(&mut self.staged);
        self.since_checkpoint += 1;
    }

    /// Whether enough records piled up that the caller should take a checkpoint.
    pub fn wants_checkpoint(&self) -> bool {
        self.since_checkpoint >= checkpoint_every()
    }

    /// Writes the staged records. Returns what to wait on when an ack must be synced before it returns.
    pub fn commit(&mut self) -> Result<Option<(Arc<SyncGate>, u64)>, StoreError> {
        if self.closed {
            self.staged.clear();
            return Err(StoreError::Closed(self.journal_path.clone()));
        }
        if self.needs_reset {
            self.reset(self.generation)?;
            self.needs_reset = false;
        }
        if !self.staged.is_empty() {
            if let Err(e) = self.file.write_all_at(&self.staged, self.len) {
                // Keep what was staged: the next commit writes it again, in order, before anything newer.
                let _ = self.file.set_len(self.len);
                return Err(StoreError::io(&self.journal_path, e));
            }
            self.len += self.staged.len() as u64;
            self.written += self.staged.len() as u64;
            self.staged.clear();
            self.gate.mark_written(self.written);
            if std::mem::take(&mut self.staged_settle) {
                self.last_settle_mark = self.written;
            }
        }
        let sync = self.durability == AckDurability::Sync && self.last_settle_mark > 0;
        Ok(sync.then(|| (self.gate.clone(), self.last_settle_mark)))
    }

    /// Writes `state` as the new checkpoint and starts an empty journal of the next generation.
    pub fn checkpoint(&mut self, state: &SubSnapshot) -> Result<(), StoreError> {
        if self.closed {
            return Err(StoreError::Closed(self.journal_path.clone()));
        }
        self.staged.clear();
        self.staged_settle = false;
        let next = self.generation + 1;
        frame::write_atomic(&self.checkpoint_path, &state.encode(next))?;
        self.generation = next;
        self.recorded_cursors = cursors_of(state);
        if let Err(e) = self.reset(next) {
            self.needs_reset = true;
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn checkpoints_keep_counters_and_older_ones_without_them_still_open() {
        let mut snap = SubSnapshot::starting_at(5);
        snap.apply(SubOp::Attempt { seq: 5, attempt: 2 });
        let old = snap.encode(3);
        assert_eq!(SubSnapshot::decode(&old), Some((3, snap.clone())));
        snap.counters =
            Some(SubCounters { delivered: 7, acked: 5, nacked: 2, filtered: 1, ..SubCounters::default() });
        assert_eq!(SubSnapshot::decode(&snap.encode(4)), Some((4, snap.clone())));
        // A seek keeps the totals.
        snap.apply(SubOp::Seek { next: 9 });
        assert_eq!(snap.counters.as_ref().map(|c| c.delivered), Some(7));
    }

    /// Issue 24: a checkpoint keeps the heads its counters cover (a checkpoint without them still
    /// opens), and an `Expired` journal record counts a per-key victim and names it for recovery.
    #[test]
    fn checkpoints_keep_their_heads_and_expired_records_count_once() {
        let mut snap = SubSnapshot::starting_at(1);
        let without = snap.encode(1);
        assert_eq!(SubSnapshot::decode(&without).map(|(_, s)| s.heads), Some(Vec::new()));
        snap.heads = vec![12, 0, 4];
        assert_eq!(SubSnapshot::decode(&snap.encode(2)), Some((2, snap.clone())));
        let mut body = Vec::new();
        SubOp::Expired { seq: pos_key(1, 3) }.encode(&mut body);
        let frames = frame::read_frames(&body);
        let op = SubOp::decode(frames.bodies[0]).unwrap();
        assert_eq!(op, SubOp::Expired { seq: pos_key(1, 3) });
        snap.apply(op);
        assert_eq!(snap.counters.as_ref().map(|c| c.expired_unacked), Some(1));
        assert!(snap.expired.contains(&pos_key(1, 3)));
        assert_eq!((snap.cursor, snap.floor), (0, 0), "an expiry moves no cursor");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pubsub-journal-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_survives_reopen_and_settled_stays_settled() {
        let dir = temp_dir("reopen");
        let mut j = SubJournal::create(&dir, &[1], &[0], AckDurability::Sync).unwrap();
        for op in [
            SubOp::Attempt { seq: 1, attempt: 1 },
            SubOp::Attempt { seq: 2, attempt: 1 },
            SubOp::Cursor { seq: 3 },
            SubOp::Settle { seq: 1 },
            SubOp::Attempt { seq: 2, attempt: 2 },
            SubOp::Delay { seq: 2, not_before: Timestamp::from_micros(99) },
        ] {
            j.stage(op);
        }
        j.commit().unwrap();
        drop(j);
        let opened = SubJournal::open(&dir, AckDurability::Sync, &[1], &[100]).unwrap();
        let want = Pending { attempt: 2, not_before: Some(Timestamp::from_micros(99)) };
        assert_eq!(opened.state.pending.into_iter().collect::<Vec<_>>(), vec![(2, want)]);
        assert_eq!((opened.state.cursor, opened.state.floor), (3, 1));
        assert!(!opened.missing_checkpoint);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_loses_only_the_newest_records() {
        let dir = temp_dir("torn");
        let mut j = SubJournal::create(&dir, &[1], &[0], AckDurability::Async).unwrap();
        j.stage(SubOp::Attempt { seq: 1, attempt: 1 });
        j.stage(SubOp::Cursor { seq: 1 });
        j.commit().unwrap();
        j.stage(SubOp::Settle { seq: 1 });
        j.commit().unwrap();
        drop(j);
        let path = dir.join("journal.log");
        let len = fs::metadata(&path).unwrap().len();
        frame::options().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let opened = SubJournal::open(&dir, AckDurability::Async, &[1], &[100]).unwrap();
        assert!(opened.truncated.is_some());
        // The settle was torn off: the message is unsettled again (at-least-once), never lost.
        assert_eq!(opened.state.pending.get(&1).map(|p| p.attempt), Some(1));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_journal_is_not_replayed_over_a_newer_checkpoint() {
        let dir = temp_dir("stale");
        let mut j = SubJournal::create(&dir, &[1], &[0], AckDurability::Sync).unwrap();
        j.stage(SubOp::Attempt { seq: 1, attempt: 1 });
        j.commit().unwrap();
        let old_journal = fs::read(dir.join("journal.log")).unwrap();
        let mut state = SubSnapshot::starting_at(1);
        state.apply(SubOp::Attempt { seq: 1, attempt: 1 });
        state.apply(SubOp::Settle { seq: 1 });
        j.checkpoint(&state).unwrap();
        drop(j);
        // A crash after the checkpoint's rename but before the journal reset leaves the old journal.
        fs::write(dir.join("journal.log"), old_journal).unwrap();
        let opened = SubJournal::open(&dir, AckDurability::Sync, &[1], &[100]).unwrap();
        assert!(opened.state.pending.is_empty(), "acked seq 1 came back: {:?}", opened.state);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_beyond_the_recovered_head_is_dropped_and_stays_dropped() {
        let dir = temp_dir("clamp");
        let mut j = SubJournal::create(&dir, &[1], &[0], AckDurability::Sync).unwrap();
        j.stage(SubOp::Attempt { seq: 9, attempt: 1 });
        j.stage(SubOp::Attempt { seq: 12, attempt: 3 });
        j.stage(SubOp::Cursor { seq: 12 });
        j.commit().unwrap();
        drop(j);
        // A power loss took the topic back to seq 10.
        let opened = SubJournal::open(&dir, AckDurability::Sync, &[1], &[10]).unwrap();
        assert_eq!((opened.state.cursor, opened.state.pending.len()), (10, 1));
        drop(opened);
        // Reopened with the head grown again, the old cursor does not come back.
        let opened = SubJournal::open(&dir, AckDurability::Sync, &[1], &[20]).unwrap();
        assert_eq!(opened.state.cursor, 10);
        assert!(!opened.state.pending.contains_key(&12));
        fs::remove_dir_all(&dir).unwrap();
    }
}
