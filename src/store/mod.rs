//! The durable store under a data directory (SEMANTICS.md §9.10): one writer per directory (an exclusive
//! lock on `LOCK`), a CRC-framed journal of topic and subscription metadata, per-partition segment files,
//! and per-subscription ack journals with atomic checkpoints.
//!
//! The store does no engine logic: the engine decides what to append and settle and hands the store
//! bytes to keep; on open the store hands back what it kept, repaired where the spec says to repair and
//! refused with an error naming the file and offset where it cannot be repaired without losing data.

mod frame;
#[cfg(test)]
mod fuzz;
pub(crate) mod journal;
mod repair;
pub(crate) mod segment;
mod verify;

pub use repair::repair;
pub use verify::verify;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use nix::fcntl::fcntl;
use nix::libc;
use serde::{Deserialize, Serialize};

use crate::model::{Name, SnapshotInfo, SubscriptionConfig, Timestamp, TopicConfig};
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
    #[error(
        "{path}: corrupt at offset {offset}: {why}; `pubsub store repair` on its data directory moves what cannot be read aside"
    )]
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
    /// Files with data that no topic or subscription names: their metadata was lost or damaged.
    #[error(
        "{dir}: {} hold{} messages or subscription state that no topic or subscription names (the metadata in meta.snap/meta.log is missing or damaged): {}; nothing was changed. Run `pubsub store repair {dir}` to recover them, or move them away",
        count(paths.len(), "directory", "directories"),
        if paths.len() == 1 { "s" } else { "" },
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Unowned {
        /// The data directory.
        dir: PathBuf,
        /// The directories nothing owns.
        paths: Vec<PathBuf>,
    },
    /// The engine closed its data directory; nothing more is written to it.
    #[error("{0}: the engine was closed and no longer writes to its data directory")]
    Closed(PathBuf),
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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

/// The file a gate syncs.
#[derive(Debug)]
enum GateFile {
    /// A file held open for the gate's life (a subscription's journal).
    Open(Arc<File>, PathBuf),
    /// A partition's active log, which the file budget may close while it is idle (reopened to sync).
    Slot(Arc<segment::FileSlot>),
}

impl GateFile {
    fn get(&self) -> Result<(Arc<File>, PathBuf), StoreError> {
        match self {
            GateFile::Open(file, path) => Ok((file.clone(), path.clone())),
            GateFile::Slot(slot) => slot.log(),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            GateFile::Open(_, path) => path.clone(),
            GateFile::Slot(slot) => slot.log_path(),
        }
    }
}

/// Group commit for one file: writers record how far they have written, and a waiter fsyncs once for
/// everyone who wrote before it. Marks count bytes written in this process and only grow.
#[derive(Debug)]
pub(crate) struct SyncGate {
    file: GateFile,
    written: AtomicU64,
    synced: Mutex<u64>,
    /// Length of the current file that the last fsync covered (what a power loss would leave).
    synced_len: AtomicU64,
    /// The synced mark, for waiters on async tasks ([`SyncGate::wait_async`]).
    synced_watch: tokio::sync::watch::Sender<u64>,
    /// Whether an async waiter's fdatasync is running on the blocking pool.
    syncing: std::sync::atomic::AtomicBool,
}

impl SyncGate {
    pub fn new(file: Arc<File>, path: PathBuf) -> Arc<Self> {
        Self::over(GateFile::Open(file, path))
    }

    /// A gate over a partition's active log, followed through rolls (see [`SyncGate::switched`]).
    pub(crate) fn for_slot(slot: Arc<segment::FileSlot>) -> Arc<Self> {
        Self::over(GateFile::Slot(slot))
    }

    fn over(file: GateFile) -> Arc<Self> {
        let synced_len =
            AtomicU64::new(file.get().ok().and_then(|(f, _)| f.metadata().ok()).map_or(0, |m| m.len()));
        Arc::new(SyncGate {
            file,
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            synced_len,
            synced_watch: tokio::sync::watch::Sender::new(0),
            syncing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn mark_written(&self, mark: u64) {
        self.written.fetch_max(mark, Ordering::AcqRel);
    }

    /// The partition's slot now holds a new segment's files; the caller has synced the old one.
    pub fn switched(&self) {
        let len = self.file.get().ok().and_then(|(f, _)| f.metadata().ok()).map_or(0, |m| m.len());
        self.synced_len.store(len, Ordering::Release);
    }

    /// Returns once everything written up to `mark` is on disk; one fdatasync serves every waiter that
    /// queued behind it.
    pub fn wait(&self, mark: u64) -> Result<(), StoreError> {
        let mut synced = lock(&self.synced);
        if *synced >= mark {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        let (file, path) = self.file.get()?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        file.sync_data().map_err(|e| StoreError::io(&path, e))?;
        *synced = target.max(mark);
        self.synced_len.fetch_max(len, Ordering::AcqRel);
        self.synced_watch.send_replace(*synced);
        Ok(())
    }

    /// [`SyncGate::wait`] for an async task: one task at a time runs the fdatasync on the blocking pool
    /// for everyone written so far, and the others wait for the synced mark to pass theirs, instead of
    /// each taking a blocking thread of its own.
    pub async fn wait_async(self: Arc<Self>, mark: u64) -> Result<(), StoreError> {
        let mut synced = self.synced_watch.subscribe();
        loop {
            if *synced.borrow_and_update() >= mark {
                return Ok(());
            }
            if !self.syncing.swap(true, Ordering::AcqRel) {
                let gate = self.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let written = gate.written.load(Ordering::Acquire);
                    let r = gate.wait(written.max(mark));
                    // Then the waiters are told once more, after the flag is down: one that `wait` woke
                    // short of its mark (its record came after this sync began) starts the next sync
                    // instead of waiting for nobody.
                    gate.syncing.store(false, Ordering::Release);
                    gate.synced_watch.send_modify(|_| {});
                    r
                })
                .await;
                match outcome {
                    Ok(r) => r?,
                    Err(e) => {
                        self.syncing.store(false, Ordering::Release);
                        self.synced_watch.send_modify(|_| {});
                        return Err(StoreError::io(&self.file.path(), std::io::Error::other(e.to_string())));
                    }
                }
                continue;
            }
            if synced.changed().await.is_err() {
                // The gate is being dropped: nothing left to sync to.
                return Ok(());
            }
        }
    }

    /// Cuts the current file back to what the last fsync covered, as a power loss would; returns the
    /// file and its new length. For crash tests only.
    pub(crate) fn drop_unsynced(&self) -> Result<(PathBuf, u64), StoreError> {
        let _synced = lock(&self.synced);
        let (file, path) = self.file.get()?;
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
    /// `created` is when the topic was made (absent in records written before it was kept, and for
    /// topics `store repair` brings back), so that a restart keeps it.
    CreateTopic {
        config: TopicConfig,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<Timestamp>,
    },
    DeleteTopic {
        name: Name,
    },
    /// `created` as for topics. `created_heads` is each partition's head seq when the subscription
    /// was made (Interest retention lets it hold only what was published after); absent in records
    /// written before it was kept, which means 0 in every partition: such a subscription holds what is
    /// above its ack floor, as it did then.
    CreateSubscription {
        config: SubscriptionConfig,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created_heads: Option<Vec<u64>>,
    },
    DeleteSubscription {
        name: Name,
    },
    /// A snapshot of a subscription's ack state (`snapshot create`). `never_expires` tells a snapshot
    /// taken with `--ttl never` from one of a record written before snapshots expired: both lack
    /// `expires`, and the older one expires `created` + 7 days.
    CreateSnapshot {
        snapshot: SnapshotInfo,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        never_expires: bool,
    },
    DeleteSnapshot {
        name: Name,
    },
}

/// What the metadata journal describes after replay, in creation order.
#[derive(Debug, Default)]
pub(crate) struct MetaState {
    pub topics: Vec<TopicConfig>,
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Names deleted by the journal replayed (and not created again): their files may still be on disk
    /// if the process stopped between the record and the removal.
    pub deleted_topics: BTreeSet<Name>,
    pub deleted_subs: BTreeSet<Name>,
    /// When each topic and subscription was created, where the records say.
    pub topics_created: BTreeMap<Name, Timestamp>,
    pub subs_created: BTreeMap<Name, Timestamp>,
    /// Each subscription's partition heads when it was created, where the records say.
    pub subs_created_heads: BTreeMap<Name, Vec<u64>>,
    /// Snapshots, in creation order.
    pub snapshots: Vec<SnapshotInfo>,
}

impl MetaState {
    fn apply(&mut self, op: MetaOp) {
        match op {
            MetaOp::CreateTopic { config, created } => {
                self.deleted_topics.remove(&config.name);
                match created {
                    Some(at) => self.topics_created.insert(config.name.clone(), at),
                    None => self.topics_created.remove(&config.name),
                };
                self.topics.retain(|t| t.name != config.name);
                self.topics.push(config);
            }
            MetaOp::DeleteTopic { name } => {
                self.topics.retain(|t| t.name != name);
                let deleted_subs = &mut self.deleted_subs;
                self.subscriptions.retain(|s| {
                    let keep = s.topic != name;
                    if !keep {
                        deleted_subs.insert(s.name.clone());
                    }
                    keep
                });
                self.snapshots.retain(|s| s.topic != name);
                self.deleted_topics.insert(name);
            }
            MetaOp::CreateSubscription { config, created, created_heads } => {
                self.deleted_subs.remove(&config.name);
                match created {
                    Some(at) => self.subs_created.insert(config.name.clone(), at),
                    None => self.subs_created.remove(&config.name),
                };
                match created_heads {
                    Some(heads) => self.subs_created_heads.insert(config.name.clone(), heads),
                    None => self.subs_created_heads.remove(&config.name),
                };
                self.subscriptions.retain(|s| s.name != config.name);
                self.subscriptions.push(config);
            }
            MetaOp::DeleteSubscription { name } => {
                self.subscriptions.retain(|s| s.name != name);
                self.deleted_subs.insert(name);
            }
            MetaOp::CreateSnapshot { mut snapshot, never_expires } => {
                if snapshot.expires.is_none() && !never_expires {
                    snapshot.expires = Some(snapshot.created.plus(crate::model::SNAPSHOT_TTL));
                }
                self.snapshots.retain(|s| s.name != snapshot.name);
                self.snapshots.push(snapshot);
            }
            MetaOp::DeleteSnapshot { name } => self.snapshots.retain(|s| s.name != name),
        }
    }

    fn ops(&self) -> impl Iterator<Item = MetaOp> + '_ {
        let topics = self.topics.iter().map(|c| MetaOp::CreateTopic {
            config: c.clone(),
            created: self.topics_created.get(&c.name).copied(),
        });
        let subs = self.subscriptions.iter().map(|c| MetaOp::CreateSubscription {
            config: c.clone(),
            created: self.subs_created.get(&c.name).copied(),
            created_heads: self.subs_created_heads.get(&c.name).cloned(),
        });
        let snapshots = self
            .snapshots
            .iter()
            .map(|s| MetaOp::CreateSnapshot { snapshot: s.clone(), never_expires: s.expires.is_none() });
        topics.chain(subs).chain(snapshots)
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
    /// Subscriptions whose journal was missing: acks since their last checkpoint may be delivered again.
    pub missing_journals: Vec<Name>,
    /// Directories of deleted topics or subscriptions that a stop had left behind, now removed.
    pub finished_deletes: Vec<PathBuf>,
    /// Topics whose files were missing: they were created again, empty.
    pub recreated: Vec<Name>,
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
        for name in &self.missing_journals {
            lines.push(format!(
                "subscription {name}: journal missing; state taken from its checkpoint, messages acked since it may be delivered again"
            ));
        }
        for path in &self.finished_deletes {
            lines.push(format!("removed {}, left by a delete that had not finished", path.display()));
        }
        for name in &self.recreated {
            lines.push(format!("topic {name}: its files were missing; created again, empty"));
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
/// Escaping can triple a name's length, past what a file name may hold (255 bytes), so an escaped name
/// longer than [`DIR_NAME_MAX`] is cut at a character boundary and given a hash of the whole name; the
/// real name is in the metadata and in the directory's `NAME` file.
pub(crate) fn dir_name(name: &Name) -> String {
    let mut out = String::with_capacity(name.as_str().len());
    // Where a long name is cut: the first character boundary of the escaped text past the kept part.
    let mut cut = None;
    for ch in name.as_str().chars() {
        if out.len() > DIR_NAME_KEEP && cut.is_none() {
            cut = Some(out.len());
        }
        let mut buf = [0u8; 4];
        for &b in ch.encode_utf8(&mut buf).as_bytes() {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.len() <= DIR_NAME_MAX {
        return out;
    }
    let bytes = name.as_str().as_bytes();
    let reversed: Vec<u8> = bytes.iter().rev().copied().collect();
    let hash = (u64::from(crc32c::crc32c(bytes)) << 32) | u64::from(crc32c::crc32c(&reversed));
    out.truncate(cut.unwrap_or(out.len()));
    out.push_str(&format!("~{hash:016x}"));
    out
}

/// The longest directory name used as is (what a file name may hold, so every directory an earlier
/// version could make keeps its name); longer ones are cut and hashed (see [`dir_name`]).
const DIR_NAME_MAX: usize = 255;
/// How much of a long escaped name is kept before its hash (at most 12 bytes more, then 17 of hash).
const DIR_NAME_KEEP: usize = 200;

/// Records a topic's or subscription's real name beside its files (its directory name may be cut), so
/// `store repair` can name what it recovers.
pub(crate) fn write_name_file(dir: &Path, name: &Name) -> Result<(), StoreError> {
    frame::write_atomic(&dir.join("NAME"), name.as_str().as_bytes())
}

#[derive(Debug)]
struct IntervalGate {
    gate: Weak<SyncGate>,
    every: Duration,
    due: Instant,
}

/// What the interval sync thread shares with the store: the gates it drives and the stop signal.
#[derive(Debug, Default)]
struct SyncerShared {
    gates: Mutex<Vec<IntervalGate>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

#[derive(Debug)]
struct Syncer {
    shared: Arc<SyncerShared>,
    thread: std::thread::JoinHandle<()>,
}

/// Data directories open in this process: the file lock is the process's own, so it cannot refuse a
/// second open in the same process.
static OPEN_DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

#[derive(Debug)]
struct StoreInner {
    dir: PathBuf,
    /// Directories whose topic or subscription was deleted (so their files may go), by path.
    removable: Mutex<BTreeSet<PathBuf>>,
    /// Held while the store is open; dropping it releases the directory.
    lock: Mutex<Option<DirLock>>,
    meta: Mutex<File>,
    meta_path: PathBuf,
    syncer: Mutex<Option<Syncer>>,
    closed: std::sync::atomic::AtomicBool,
}

impl StoreInner {
    /// Stops and joins the sync thread (after its last sync), then releases the lock. Idempotent.
    fn release(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(syncer) = lock(&self.syncer).take() {
            *lock(&syncer.shared.stop) = true;
            syncer.shared.wake.notify_all();
            if syncer.thread.join().is_err() {
                tracing::error!("the interval sync thread panicked");
            }
        }
        drop(lock(&self.lock).take());
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.release();
    }
}

/// A data directory opened for writing. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

const KNOWN_TOP: [&str; 7] = ["LOCK", "meta.log", "meta.snap", "topics", "subs", "snapshots", "quarantine"];

impl Store {
    /// Takes the directory's lock and replays its metadata. A second process gets
    /// [`StoreError::Locked`] naming the holder's pid.
    pub(crate) fn open(dir: &Path, report: &mut RecoveryReport) -> Result<(Store, MetaState), StoreError> {
        for sub in ["", "topics", "subs", "snapshots"] {
            let path = dir.join(sub);
            frame::create_dirs(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        // A directory made by an older version (or by hand) is closed to other users too.
        let private = fs::Permissions::from_mode(frame::DIR_MODE);
        fs::set_permissions(dir, private).map_err(|e| StoreError::io(dir, e))?;
        // An early return from here on releases the directory with `dir_lock`.
        let dir_lock = take_lock(dir)?;
        for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let path = entry.map_err(|e| StoreError::io(dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !KNOWN_TOP.contains(&name) && !name.ends_with(".tmp") {
                report.ignored.push(path);
            }
        }

        let meta_path = dir.join("meta.log");
        let read = read_meta(dir)?;
        if let Some(torn) = read.torn {
            report.truncated.push((meta_path.clone(), read.valid_len as u64, torn));
        }
        let mut state = read.state;
        settle_leftovers(dir, &state, report)?;
        state.deleted_topics.clear();
        state.deleted_subs.clear();
        // Compact: the snapshot becomes the whole state and the journal starts empty. This is an
        // optimisation, so on a full disk the directory still opens with the journal kept as it is.
        let snap_path = dir.join("meta.snap");
        let mut compacted = read.log_len == 0 && snap_path.exists();
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
        let meta = frame::options()
            .create(true)
            .append(true)
            .open(&meta_path)
            .map_err(|e| StoreError::io(&meta_path, e))?;
        let keep = if compacted { 0 } else { read.valid_len as u64 };
        meta.set_len(keep).map_err(|e| StoreError::io(&meta_path, e))?;
        meta.sync_all().map_err(|e| StoreError::io(&meta_path, e))?;
        frame::sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;

        let inner = StoreInner {
            dir: dir.to_path_buf(),
            removable: Mutex::new(BTreeSet::new()),
            lock: Mutex::new(Some(dir_lock)),
            meta: Mutex::new(meta),
            meta_path,
            syncer: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((Store { inner: Arc::new(inner) }, state))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops the interval sync thread (after its last sync) and releases the directory's lock, so the
    /// directory can be opened again at once; every later metadata change is refused. The engine closes
    /// its partitions and journals first.
    pub(crate) fn close(&self) {
        self.inner.release();
    }

    /// Whether [`Store::close`] ran.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Appends a metadata change and syncs it before returning.
    pub(crate) fn record(&self, op: &MetaOp) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed(self.inner.dir.clone()));
        }
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
        self.remove_owned(self.topic_dir(topic))
    }

    fn remove_owned(&self, path: PathBuf) -> Result<(), StoreError> {
        remove_dir(&path)?;
        lock(&self.inner.removable).remove(&path);
        Ok(())
    }

    /// Removes a deleted subscription's files.
    pub(crate) fn remove_subscription_files(&self, name: &Name) -> Result<(), StoreError> {
        self.remove_owned(self.subscription_dir(name))
    }

    /// Makes way for a new topic's or subscription's files at `path`: nothing there, or files whose
    /// owner was deleted (they go), or files without data. Files with data that nothing owns are never
    /// overwritten: they are a topic or subscription whose metadata was lost, which `store repair`
    /// recovers.
    pub(crate) fn make_way(&self, path: &Path) -> Result<(), StoreError> {
        if !path.exists() {
            return Ok(());
        }
        let deleted = lock(&self.inner.removable).remove(path);
        if !deleted && holds_data(path) {
            return Err(StoreError::Unowned { dir: self.inner.dir.clone(), paths: vec![path.to_path_buf()] });
        }
        remove_dir(path)
    }

    /// Notes that `path` belongs to something whose deletion is recorded, so its files may go.
    pub(crate) fn mark_removable(&self, path: PathBuf) {
        lock(&self.inner.removable).insert(path);
    }

    /// The directory a topic's partitions live in.
    pub(crate) fn topic_dir(&self, topic: &Name) -> PathBuf {
        self.inner.dir.join("topics").join(dir_name(topic))
    }

    /// Registers a gate for `Interval` durability: a background thread fsyncs it every `every`. The
    /// thread holds no reference to the store; closing or dropping the store stops and joins it.
    pub(crate) fn sync_every(&self, gate: &Arc<SyncGate>, every: Duration) {
        let every = every.max(Duration::from_millis(1));
        let mut syncer = lock(&self.inner.syncer);
        if self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        if syncer.is_none() {
            let shared = Arc::new(SyncerShared::default());
            let for_thread = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("pubsub-store-sync".into())
                .spawn(move || interval_syncer(&for_thread));
            match spawned {
                Ok(thread) => *syncer = Some(Syncer { shared, thread }),
                Err(e) => {
                    tracing::error!("cannot start the interval sync thread: {e}");
                    return;
                }
            }
        }
        if let Some(syncer) = syncer.as_ref() {
            lock(&syncer.shared.gates).push(IntervalGate {
                gate: Arc::downgrade(gate),
                every,
                due: Instant::now() + every,
            });
            syncer.shared.wake.notify_all();
        }
    }
}

/// A data directory taken by this process: its lock file, and its place in [`OPEN_DIRS`]. Dropping it
/// closes the file first (which releases the lock), then gives up the place.
#[derive(Debug)]
pub(crate) struct DirLock {
    file: Option<File>,
    canonical: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        drop(self.file.take());
        lock(&OPEN_DIRS).remove(&self.canonical);
    }
}

/// Takes the directory's exclusive lock and writes this process's pid into it. The lock is a POSIX
/// record lock on `LOCK` (`fcntl(F_SETLK)`): it belongs to this process and, unlike an `flock`, is not
/// shared with a child while the child holds a copy of the descriptor between its fork and its exec, so
/// a directory is free again the moment its store lets go of it. Such locks do not tell two opens in one
/// process apart (and closing any descriptor of the file would release them), so [`OPEN_DIRS`] refuses
/// a second open in this process before the file is even opened.
pub(crate) fn take_lock(dir: &Path) -> Result<DirLock, StoreError> {
    let canonical = fs::canonicalize(dir).map_err(|e| StoreError::io(dir, e))?;
    let own = std::process::id().to_string();
    if !lock(&OPEN_DIRS).insert(canonical.clone()) {
        return Err(StoreError::Locked { dir: dir.to_path_buf(), holder: own });
    }
    let mut taken = DirLock { file: None, canonical };
    let lock_path = dir.join("LOCK");
    let lock_file = frame::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| StoreError::io(&lock_path, e))?;
    if let Err(e) = fcntl(&lock_file, nix::fcntl::FcntlArg::F_SETLK(&whole_file(libc::F_WRLCK))) {
        if !matches!(e, nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) {
            return Err(StoreError::io(&lock_path, e.into()));
        }
        let mut probe = whole_file(libc::F_WRLCK);
        let holder = match fcntl(&lock_file, nix::fcntl::FcntlArg::F_GETLK(&mut probe)) {
            Ok(_) if probe.l_type != libc::F_UNLCK as libc::c_short => probe.l_pid.to_string(),
            _ => {
                let mut written = String::new();
                let _ = (&lock_file).read_to_string(&mut written);
                let written = written.trim();
                if written.is_empty() { "unknown".to_string() } else { written.to_string() }
            }
        };
        return Err(StoreError::Locked { dir: dir.to_path_buf(), holder });
    }
    lock_file.set_len(0).map_err(|e| StoreError::io(&lock_path, e))?;
    lock_file.write_all_at(own.as_bytes(), 0).map_err(|e| StoreError::io(&lock_path, e))?;
    taken.file = Some(lock_file);
    Ok(taken)
}

/// A record lock of kind `kind` over the whole file.
fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// The metadata as recovery reads it, and how much of `meta.log` is whole.
pub(crate) struct MetaRead {
    pub state: MetaState,
    /// Bytes of `meta.log` on disk.
    pub log_len: usize,
    /// Bytes of `meta.log` made of whole, valid frames.
    pub valid_len: usize,
    /// A torn tail (bytes) that recovery cuts.
    pub torn: Option<u64>,
}

/// Reads `meta.snap` and `meta.log` without changing anything. Damage that is not a torn tail of the
/// log (the snapshot is written atomically, so any damage there) is refused, naming file and offset.
pub(crate) fn read_meta(dir: &Path) -> Result<MetaRead, StoreError> {
    let mut state = MetaState::default();
    let snap_path = dir.join("meta.snap");
    if let Some(data) = read_optional(&snap_path)? {
        let frames = frame::read_frames(&data);
        if frames.valid_len != data.len() {
            return Err(StoreError::corrupt(
                &snap_path,
                frames.valid_len as u64,
                "invalid frame in a file written atomically",
            ));
        }
        for (i, body) in frames.bodies.iter().enumerate() {
            let op = serde_json::from_slice(body).map_err(|e| {
                StoreError::corrupt(&snap_path, 0, &format!("record {i} is not a metadata record: {e}"))
            })?;
            state.apply(op);
        }
    }
    let meta_path = dir.join("meta.log");
    let data = read_optional(&meta_path)?.unwrap_or_default();
    let frames = frame::read_journal(&meta_path, &data)?;
    for (i, body) in frames.bodies.iter().enumerate() {
        // A record that passed its CRC but does not parse was written by a newer version.
        let op = serde_json::from_slice(body).map_err(|e| {
            StoreError::corrupt(&meta_path, 0, &format!("record {i} is not a metadata record: {e}"))
        })?;
        state.apply(op);
    }
    let torn = (frames.valid_len != data.len()).then_some((data.len() - frames.valid_len) as u64);
    Ok(MetaRead { state, log_len: data.len(), valid_len: frames.valid_len, torn })
}

/// A file's bytes, or `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// What lies under `topics/` and `subs/` that the metadata does not name.
#[derive(Debug, Default)]
pub(crate) struct Leftovers {
    /// Files of deleted topics and subscriptions (the delete is recorded; the removal had not finished).
    pub deleted: Vec<PathBuf>,
    /// Directories with data that nothing names: lost metadata.
    pub unowned: Vec<PathBuf>,
    /// Entries without data that nothing names (left alone).
    pub empty: Vec<PathBuf>,
}

/// Sorts what `topics/` and `subs/` hold beyond what `state` names.
pub(crate) fn leftovers(dir: &Path, state: &MetaState) -> Leftovers {
    let mut out = Leftovers::default();
    let dirs = |names: &mut dyn Iterator<Item = &Name>| -> BTreeSet<String> { names.map(dir_name).collect() };
    let kinds = [
        ("topics", dirs(&mut state.topics.iter().map(|t| &t.name)), dirs(&mut state.deleted_topics.iter())),
        (
            "subs",
            dirs(&mut state.subscriptions.iter().map(|s| &s.name)),
            dirs(&mut state.deleted_subs.iter()),
        ),
    ];
    for (sub, live, deleted) in &kinds {
        let Ok(entries) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if live.contains(&name) || name.ends_with(".tmp") {
                continue;
            }
            if deleted.contains(&name) {
                out.deleted.push(path);
            } else if holds_data(&path) {
                out.unowned.push(path);
            } else {
                out.empty.push(path);
            }
        }
    }
    out
}

/// Removes what deletes left behind and refuses to open when data that nothing names is found.
fn settle_leftovers(dir: &Path, state: &MetaState, report: &mut RecoveryReport) -> Result<(), StoreError> {
    let found = leftovers(dir, state);
    if !found.unowned.is_empty() {
        return Err(StoreError::Unowned { dir: dir.to_path_buf(), paths: found.unowned });
    }
    for path in found.deleted {
        remove_dir(&path)?;
        report.finished_deletes.push(path);
    }
    report.ignored.extend(found.empty);
    Ok(())
}

/// Whether a topic or subscription directory holds anything worth keeping: a non-empty segment, or a
/// subscription's checkpoint or journal.
pub(crate) fn holds_data(path: &Path) -> bool {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.len() > 0 {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".log") || name == "checkpoint" {
                return true;
            }
        }
    }
    false
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

/// Every partition directory under `dir/topics/`, in order (what verify and repair walk).
pub(crate) fn partition_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for topic in sub_dirs(&dir.join("topics"))? {
        out.extend(sub_dirs(&topic)?);
    }
    Ok(out)
}

/// The directories directly inside `dir`, sorted; none when `dir` does not exist.
fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    out.sort();
    Ok(out)
}

/// Fsyncs each registered `Interval` gate when it is due, until the store stops it; a last sync of
/// every gate then covers what was written since.
fn interval_syncer(shared: &SyncerShared) {
    let mut stop = lock(&shared.stop);
    loop {
        let stopping = *stop;
        let now = Instant::now();
        let mut next = now + Duration::from_millis(100);
        let due: Vec<Arc<SyncGate>> = {
            let mut gates = lock(&shared.gates);
            gates.retain(|g| g.gate.strong_count() > 0);
            let mut due = Vec::new();
            for g in gates.iter_mut() {
                if stopping || g.due <= now {
                    due.extend(g.gate.upgrade());
                    g.due = now + g.every;
                }
                next = next.min(g.due);
            }
            due
        };
        drop(stop);
        for gate in due {
            if let Err(e) = gate.sync_now() {
                tracing::warn!("interval sync failed: {e}");
            }
        }
        if stopping {
            return;
        }
        stop = lock(&shared.stop);
        if !*stop {
            let wait = next.saturating_duration_since(Instant::now());
            stop = shared.wake.wait_timeout(stop, wait).map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `create_snapshot` record written before snapshots expired has no `expires`: it expires 7 days
    /// after it was taken. One taken with `--ttl never` says so, and compaction keeps both apart.
    #[test]
    fn snapshot_records_without_expires_get_seven_days_and_never_stays_never() {
        let snapshot = SnapshotInfo {
            name: Name::new("old").unwrap(),
            subscription: Name::new("s").unwrap(),
            topic: Name::new("t").unwrap(),
            created: Timestamp::from_micros(1_000_000),
            expires: None,
            partitions: Vec::new(),
        };
        let mut old =
            serde_json::to_value(MetaOp::CreateSnapshot { snapshot: snapshot.clone(), never_expires: false })
                .unwrap();
        old["snapshot"].as_object_mut().unwrap().remove("expires");
        assert!(old.get("never_expires").is_none(), "{old}");
        let mut state = MetaState::default();
        state.apply(serde_json::from_value(old).unwrap());
        let never = SnapshotInfo { name: Name::new("never").unwrap(), ..snapshot.clone() };
        state.apply(MetaOp::CreateSnapshot { snapshot: never, never_expires: true });
        let seven_days = Timestamp::from_micros(1_000_000).plus(crate::model::SNAPSHOT_TTL);
        assert_eq!(state.snapshots[0].expires, Some(seven_days));
        assert_eq!(state.snapshots[1].expires, None);
        let mut again = MetaState::default();
        for op in state.ops() {
            again.apply(serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap());
        }
        assert_eq!(again.snapshots, state.snapshots);
    }

    /// A `create_subscription` record written before `created_heads` was kept still reads (the
    /// subscription then holds from 0 in every partition, as it did), and a compacted snapshot keeps
    /// the field of a newer record.
    #[test]
    fn subscription_records_without_created_heads_still_read_and_new_ones_keep_them() {
        let config = SubscriptionConfig::new(Name::new("s").unwrap(), Name::new("t").unwrap());
        // What an older binary wrote: the record without the field at all.
        let mut old = serde_json::to_value(MetaOp::CreateSubscription {
            config: config.clone(),
            created: Some(Timestamp::from_micros(5)),
            created_heads: None,
        })
        .unwrap();
        assert!(old.get("created_heads").is_none(), "{old}");
        old["created"] = serde_json::json!(5);
        let op: MetaOp = serde_json::from_value(old).unwrap();
        let mut state = MetaState::default();
        state.apply(op);
        assert_eq!(state.subscriptions.len(), 1);
        assert!(state.subs_created_heads.is_empty());
        let mut config = config;
        config.name = Name::new("n").unwrap();
        let new = MetaOp::CreateSubscription { config, created: None, created_heads: Some(vec![7, 0, 3]) };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains(r#""created_heads":[7,0,3]"#), "{json}");
        state.apply(serde_json::from_str(&json).unwrap());
        let again: Vec<String> = state.ops().map(|op| serde_json::to_string(&op).unwrap()).collect();
        assert!(again.iter().any(|j| j.contains(r#""created_heads":[7,0,3]"#)), "{again:?}");
        assert!(!again[0].contains("created_heads"), "{again:?}");
    }

    #[test]
    fn names_become_safe_directory_names() {
        assert_eq!(dir_name(&Name::new("orders.eu").unwrap()), "orders.eu");
        assert_eq!(dir_name(&Name::new("graphql:user:42").unwrap()), "graphql%3Auser%3A42");
    }

    #[test]
    fn long_non_ascii_names_get_bounded_distinct_directory_names() {
        let long = "ü".repeat(120); // 240 bytes, 720 escaped
        let other = format!("{}x", "ü".repeat(119));
        let a = dir_name(&Name::new(&long).unwrap());
        let b = dir_name(&Name::new(&other).unwrap());
        assert!(a.len() <= 255 && b.len() <= 255, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, dir_name(&Name::new(&long).unwrap()), "stable");
        let short = "ü".repeat(30);
        assert_eq!(dir_name(&Name::new(&short).unwrap()), "%C3%BC".repeat(30), "short names unchanged");
    }

    /// Async waiters of one file share fdatasyncs, and one whose record was written after a sync began
    /// (woken short of its mark) starts the next sync rather than waiting for nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_waiters_share_syncs_and_a_late_one_is_never_stranded() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("pubsub-gate-{}", std::process::id()));
        let mut f = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        let gate = SyncGate::new(Arc::new(f.try_clone().unwrap()), path.clone());
        let mut waiters = Vec::new();
        for i in 1..=200u64 {
            f.write_all(b"x").unwrap();
            gate.mark_written(i);
            waiters.push(tokio::spawn(gate.clone().wait_async(i)));
        }
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert!(*lock(&gate.synced) >= 200);
        // One at a time, each written after the previous sync: every one is answered.
        for i in 201..=260u64 {
            f.write_all(b"y").unwrap();
            gate.mark_written(i);
            // A hang guard, not a speed check: a stranded waiter would never return.
            let done = tokio::time::timeout(Duration::from_secs(30), gate.clone().wait_async(i)).await;
            assert!(matches!(done, Ok(Ok(()))), "waiter {i} was stranded: {done:?}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
