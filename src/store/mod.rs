//! The durable store under a data directory (SEMANTICS.md §9.10): one writer per directory (an exclusive
//! lock on `LOCK`), a CRC-framed journal of topic and subscription metadata, per-partition segment files,
//! and per-subscription ack journals with atomic checkpoints.
//!
//! The store does no engine logic: the engine decides what to append and settle and hands the store
//! bytes to keep; on open the store hands back what it kept, repaired where the spec says to repair and
//! refused with an error naming the file and offset where it cannot be repaired without losing data.

mod frame;
pub(crate) mod journal;
pub(crate) mod segment;
mod verify;

pub use verify::verify;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::{Name, SubscriptionConfig, TopicConfig};
pub use segment::PartitionReport;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the directory.
    #[error("data directory {dir} is in use by process {holder}; stop it or choose another --data-dir")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as its lock file says.
        holder: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Data that cannot be read back as written.
    #[error("{path}: corrupt at offset {offset}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The disk (or a segment) has no room.
    #[error("no space to store the message: {0}")]
    Full(String),
    /// Something the store cannot represent.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(28) {
            return StoreError::Full(format!("{}: {source}", path.display()));
        }
        StoreError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, why: &str) -> Self {
        StoreError::Corrupt { path: path.to_path_buf(), offset, why: why.to_string() }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Group commit for one file: writers record how far they have written, and a waiter fsyncs once for
/// everyone who wrote before it. Marks count bytes written in this process and only grow.
#[derive(Debug)]
pub(crate) struct SyncGate {
    file: Mutex<(Arc<File>, PathBuf)>,
    written: AtomicU64,
    synced: Mutex<u64>,
    /// Length of the current file that the last fsync covered (what a power loss would leave).
    synced_len: AtomicU64,
}

impl SyncGate {
    pub fn new(file: Arc<File>, path: PathBuf) -> Arc<Self> {
        let synced_len = AtomicU64::new(file.metadata().map_or(0, |m| m.len()));
        Arc::new(SyncGate {
            file: Mutex::new((file, path)),
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            synced_len,
        })
    }

    pub fn mark_written(&self, mark: u64) {
        self.written.fetch_max(mark, Ordering::AcqRel);
    }

    /// Points the gate at a new file; the caller has synced the old one.
    pub fn switch_file(&self, file: Arc<File>, path: PathBuf) {
        self.synced_len.store(file.metadata().map_or(0, |m| m.len()), Ordering::Release);
        *lock(&self.file) = (file, path);
    }

    /// Returns once everything written up to `mark` is on disk; one fdatasync serves every waiter that
    /// queued behind it.
    pub fn wait(&self, mark: u64) -> Result<(), StoreError> {
        let mut synced = lock(&self.synced);
        if *synced >= mark {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        let (file, path) = lock(&self.file).clone();
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        file.sync_data().map_err(|e| StoreError::io(&path, e))?;
        *synced = target.max(mark);
        self.synced_len.fetch_max(len, Ordering::AcqRel);
        Ok(())
    }

    /// Cuts the current file back to what the last fsync covered, as a power loss would; returns the
    /// file and its new length. For crash tests only.
    pub(crate) fn drop_unsynced(&self) -> Result<(PathBuf, u64), StoreError> {
        let _synced = lock(&self.synced);
        let (file, path) = lock(&self.file).clone();
        let len = self.synced_len.load(Ordering::Acquire);
        file.set_len(len).map_err(|e| StoreError::io(&path, e))?;
        Ok((path, len))
    }

    /// Syncs whatever has been written.
    pub fn sync_now(&self) -> Result<(), StoreError> {
        self.wait(self.written.load(Ordering::Acquire))
    }
}

/// Metadata changes, journaled in `meta.log` and compacted into `meta.snap` at open.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum MetaOp {
    CreateTopic { config: TopicConfig },
    DeleteTopic { name: Name },
    CreateSubscription { config: SubscriptionConfig },
    DeleteSubscription { name: Name },
}

/// What the metadata journal describes after replay, in creation order.
#[derive(Debug, Default)]
pub(crate) struct MetaState {
    pub topics: Vec<TopicConfig>,
    pub subscriptions: Vec<SubscriptionConfig>,
}

impl MetaState {
    fn apply(&mut self, op: MetaOp) {
        match op {
            MetaOp::CreateTopic { config } => {
                self.topics.retain(|t| t.name != config.name);
                self.topics.push(config);
            }
            MetaOp::DeleteTopic { name } => {
                self.topics.retain(|t| t.name != name);
                self.subscriptions.retain(|s| s.topic != name);
            }
            MetaOp::CreateSubscription { config } => {
                self.subscriptions.retain(|s| s.name != config.name);
                self.subscriptions.push(config);
            }
            MetaOp::DeleteSubscription { name } => self.subscriptions.retain(|s| s.name != name),
        }
    }

    fn ops(&self) -> impl Iterator<Item = MetaOp> + '_ {
        let topics = self.topics.iter().map(|c| MetaOp::CreateTopic { config: c.clone() });
        topics.chain(self.subscriptions.iter().map(|c| MetaOp::CreateSubscription { config: c.clone() }))
    }
}

/// What opening a data directory found, for the daemon's log and `pubsub store check`.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Torn tails cut, per file: (file, offset, bytes removed).
    pub truncated: Vec<(PathBuf, u64, u64)>,
    /// Index files rebuilt.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Files the store does not know, left in place.
    pub ignored: Vec<PathBuf>,
    /// Subscriptions whose checkpoint was missing: their state was rebuilt from the journal alone, so
    /// messages they had acked before the last checkpoint may be delivered again.
    pub missing_checkpoints: Vec<Name>,
    /// Time from the start of open to ready.
    pub elapsed: Duration,
}

impl RecoveryReport {
    pub(crate) fn add_partition(&mut self, p: PartitionReport) {
        self.truncated.extend(p.truncated);
        self.rebuilt_indexes.extend(p.rebuilt_indexes);
        self.ignored.extend(p.ignored);
    }

    /// One line per finding; empty when the directory was clean.
    pub fn findings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (path, offset, bytes) in &self.truncated {
            lines.push(format!("cut a torn tail of {bytes} bytes at offset {offset} of {}", path.display()));
        }
        for path in &self.rebuilt_indexes {
            lines.push(format!("rebuilt index {}", path.display()));
        }
        for path in &self.ignored {
            lines.push(format!("ignored unknown file {}", path.display()));
        }
        for name in &self.missing_checkpoints {
            lines.push(format!(
                "subscription {name}: checkpoint missing; state rebuilt from its journal, some messages may be delivered again"
            ));
        }
        lines
    }
}

/// The files a subscription's and a topic's state live in, by name. Names may hold characters a file
/// system treats specially (`:` on some, `%` for us), so anything outside `[A-Za-z0-9._-]` is escaped.
pub(crate) fn dir_name(name: &Name) -> String {
    let mut out = String::with_capacity(name.as_str().len());
    for b in name.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug)]
struct IntervalGate {
    gate: Weak<SyncGate>,
    every: Duration,
    due: Instant,
}

#[derive(Debug)]
struct StoreInner {
    dir: PathBuf,
    /// Held for the store's life: the exclusive lock is released when this file closes.
    _lock: File,
    meta: Mutex<File>,
    meta_path: PathBuf,
    interval: Mutex<Vec<IntervalGate>>,
    syncer_started: std::sync::Once,
}

/// A data directory opened for writing. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

const KNOWN_TOP: [&str; 6] = ["LOCK", "meta.log", "meta.snap", "topics", "subs", "snapshots"];

impl Store {
    /// Takes the directory's lock and replays its metadata. A second process gets
    /// [`StoreError::Locked`] naming the holder's pid.
    pub(crate) fn open(dir: &Path, report: &mut RecoveryReport) -> Result<(Store, MetaState), StoreError> {
        for sub in ["", "topics", "subs", "snapshots"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        let lock_path = dir.join("LOCK");
        let mut lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        if lock_file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = lock_file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "unknown".to_string() } else { holder.to_string() };
            return Err(StoreError::Locked { dir: dir.to_path_buf(), holder });
        }
        lock_file.set_len(0).map_err(|e| StoreError::io(&lock_path, e))?;
        lock_file
            .write_all_at(std::process::id().to_string().as_bytes(), 0)
            .map_err(|e| StoreError::io(&lock_path, e))?;

        for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let path = entry.map_err(|e| StoreError::io(dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !KNOWN_TOP.contains(&name) && !name.ends_with(".tmp") {
                report.ignored.push(path);
            }
        }

        let mut state = MetaState::default();
        let snap_path = dir.join("meta.snap");
        if snap_path.exists() {
            let data = fs::read(&snap_path).map_err(|e| StoreError::io(&snap_path, e))?;
            let frames = frame::read_frames(&data);
            if frames.valid_len != data.len() {
                // The snapshot is written atomically, so damage here is not a torn write.
                return Err(StoreError::corrupt(&snap_path, frames.valid_len as u64, "invalid frame"));
            }
            for (i, body) in frames.bodies.iter().enumerate() {
                let op = serde_json::from_slice(body)
                    .map_err(|e| StoreError::corrupt(&snap_path, i as u64, &format!("record {i}: {e}")))?;
                state.apply(op);
            }
        }
        let meta_path = dir.join("meta.log");
        let data = match fs::read(&meta_path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io(&meta_path, e)),
        };
        let frames = frame::read_frames(&data);
        for body in &frames.bodies {
            // A record that passed its CRC but does not parse was written by a newer version.
            let op = serde_json::from_slice(body).map_err(|e| {
                StoreError::corrupt(&meta_path, 0, &format!("unreadable metadata record: {e}"))
            })?;
            state.apply(op);
        }
        if frames.valid_len != data.len() {
            report.truncated.push((
                meta_path.clone(),
                frames.valid_len as u64,
                (data.len() - frames.valid_len) as u64,
            ));
        }
        // Compact: the snapshot becomes the whole state and the journal starts empty. This is an
        // optimisation, so on a full disk the directory still opens with the journal kept as it is.
        let mut compacted = data.is_empty();
        if !compacted {
            let mut snap = Vec::new();
            for op in state.ops() {
                let body = serde_json::to_vec(&op).map_err(|e| StoreError::Invalid(e.to_string()))?;
                frame::put_frame(&mut snap, &body);
            }
            match frame::write_atomic(&snap_path, &snap) {
                Ok(()) => compacted = true,
                Err(e) => tracing::warn!("metadata not compacted: {e}"),
            }
        }
        let meta = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&meta_path)
            .map_err(|e| StoreError::io(&meta_path, e))?;
        let keep = if compacted { 0 } else { frames.valid_len as u64 };
        meta.set_len(keep).map_err(|e| StoreError::io(&meta_path, e))?;
        meta.sync_all().map_err(|e| StoreError::io(&meta_path, e))?;
        frame::sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;

        let inner = StoreInner {
            dir: dir.to_path_buf(),
            _lock: lock_file,
            meta: Mutex::new(meta),
            meta_path,
            interval: Mutex::new(Vec::new()),
            syncer_started: std::sync::Once::new(),
        };
        Ok((Store { inner: Arc::new(inner) }, state))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends a metadata change and syncs it before returning.
    pub(crate) fn record(&self, op: &MetaOp) -> Result<(), StoreError> {
        let body = serde_json::to_vec(op).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut buf = Vec::with_capacity(body.len() + 8);
        frame::put_frame(&mut buf, &body);
        let mut file = lock(&self.inner.meta);
        let path = &self.inner.meta_path;
        let before = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // A partial frame would hide every later record at the next open: cut it off.
            let _ = file.set_len(before);
            return Err(StoreError::io(path, e));
        }
        Ok(())
    }

    /// Where a topic partition's segments live.
    pub(crate) fn partition_dir(&self, topic: &Name, partition: u32) -> PathBuf {
        self.inner.dir.join("topics").join(dir_name(topic)).join(partition.to_string())
    }

    /// Where a subscription's journal and checkpoint live.
    pub(crate) fn subscription_dir(&self, name: &Name) -> PathBuf {
        self.inner.dir.join("subs").join(dir_name(name))
    }

    /// Removes a deleted topic's files.
    pub(crate) fn remove_topic_files(&self, topic: &Name) -> Result<(), StoreError> {
        remove_dir(&self.inner.dir.join("topics").join(dir_name(topic)))
    }

    /// Removes a deleted subscription's files.
    pub(crate) fn remove_subscription_files(&self, name: &Name) -> Result<(), StoreError> {
        remove_dir(&self.subscription_dir(name))
    }

    /// Directories under `topics/` and `subs/` that no topic or subscription owns.
    pub(crate) fn orphans(&self, state: &MetaState) -> Vec<PathBuf> {
        let topics: Vec<String> = state.topics.iter().map(|t| dir_name(&t.name)).collect();
        let subs: Vec<String> = state.subscriptions.iter().map(|s| dir_name(&s.name)).collect();
        let mut out = Vec::new();
        for (sub, known) in [("topics", &topics), ("subs", &subs)] {
            let Ok(entries) = fs::read_dir(self.inner.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    out.push(entry.path());
                }
            }
        }
        out
    }

    /// Registers a gate for `Interval` durability: a background thread fsyncs it every `every`.
    pub(crate) fn sync_every(&self, gate: &Arc<SyncGate>, every: Duration) {
        let every = every.max(Duration::from_millis(1));
        lock(&self.inner.interval).push(IntervalGate {
            gate: Arc::downgrade(gate),
            every,
            due: Instant::now() + every,
        });
        self.inner.syncer_started.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("pubsub-store-sync".into())
                .spawn(move || interval_syncer(weak));
            if let Err(e) = spawned {
                tracing::error!("cannot start the interval sync thread: {e}");
            }
        });
    }
}

fn remove_dir(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Ok(()) => match path.parent() {
            Some(parent) => frame::sync_dir(parent).map_err(|e| StoreError::io(parent, e)),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Fsyncs each registered `Interval` gate when it is due, until the store is dropped.
fn interval_syncer(store: Weak<StoreInner>) {
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut next = now + Duration::from_millis(100);
        let due: Vec<Arc<SyncGate>> = {
            let mut gates = lock(&inner.interval);
            gates.retain(|g| g.gate.strong_count() > 0);
            let mut due = Vec::new();
            for g in gates.iter_mut() {
                if g.due <= now {
                    due.extend(g.gate.upgrade());
                    g.due = now + g.every;
                }
                next = next.min(g.due);
            }
            due
        };
        drop(inner);
        for gate in due {
            if let Err(e) = gate.sync_now() {
                tracing::warn!("interval sync failed: {e}");
            }
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_directory_names() {
        assert_eq!(dir_name(&Name::new("orders.eu").unwrap()), "orders.eu");
        assert_eq!(dir_name(&Name::new("graphql:user:42").unwrap()), "graphql%3Auser%3A42");
    }
}
