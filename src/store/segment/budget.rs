//! How many partitions may hold their active segment's files open at once.
//!
//! Every partition writes to two files (the active `.log` and its `.idx`). Ten thousand topics would
//! hold twenty thousand descriptors and meet the process's limit, so the open files of an active
//! segment live in a [`FileSlot`] that a shared [`FileBudget`] may close when too many are open; the
//! slot reopens them on its next use. Which slot gives its files up is chosen the CLOCK way (a second
//! chance for every slot used since the last sweep), so the hot path marks a flag and takes no shared
//! lock; only opening a closed slot goes through the budget.
//!
//! Closing a descriptor loses nothing: what was written is in the page cache, and an fdatasync on the
//! descriptor opened next flushes the same file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use super::{Files, open_rw};
use crate::store::StoreError;

/// Descriptors kept back from the budget for sockets, journals, sealed-segment readers and the rest.
const RESERVED: u64 = 512;
/// The fewest partitions the budget lets hold files, however low the limit.
const FLOOR: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process's budget of partitions with open files.
#[derive(Debug)]
pub(crate) struct FileBudget {
    /// How many slots may hold files at once.
    cap: usize,
    next_id: AtomicU64,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    /// The slots holding files, by id.
    open: HashMap<u64, Weak<FileSlot>>,
    /// The order the sweep visits them in (ids of closed or dropped slots are skipped).
    ring: VecDeque<u64>,
}

impl FileBudget {
    /// A budget of `cap` partitions.
    pub(crate) fn new(cap: usize) -> Self {
        FileBudget { cap: cap.max(1), next_id: AtomicU64::new(0), state: Mutex::new(BudgetState::default()) }
    }

    /// The process's budget: `PUBSUB_MAX_OPEN_PARTITIONS` when set, else half of the descriptors the
    /// limit allows beyond a reserve, two a partition.
    pub(crate) fn global() -> &'static FileBudget {
        static GLOBAL: OnceLock<FileBudget> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            if let Some(cap) = std::env::var("PUBSUB_MAX_OPEN_PARTITIONS").ok().and_then(|v| v.parse().ok()) {
                return FileBudget::new(cap);
            }
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft);
            let partitions = (limit.saturating_sub(RESERVED) / 4).min(1 << 20) as usize;
            FileBudget::new(partitions.max(FLOOR))
        })
    }

    /// How many slots hold files now.
    #[cfg(test)]
    fn open_slots(&self) -> usize {
        lock(&self.state).open.len()
    }

    /// Records that `slot` holds files now, closing other slots' files while more than the cap do.
    fn admit(&self, slot: &Arc<FileSlot>) {
        let mut state = lock(&self.state);
        if state.open.insert(slot.id, Arc::downgrade(slot)).is_none() {
            state.ring.push_back(slot.id);
        }
        // Each visit either closes a slot, gives one its second chance, or drops a stale id, so two
        // turns of the ring are enough; a slot busy right now is passed over.
        let mut visits = 2 * state.ring.len();
        while state.open.len() > self.cap && visits > 0 {
            visits -= 1;
            let Some(id) = state.ring.pop_front() else { break };
            let Some(victim) = state.open.get(&id).and_then(Weak::upgrade) else {
                state.open.remove(&id);
                continue;
            };
            if id == slot.id || victim.used.swap(false, Ordering::AcqRel) {
                state.ring.push_back(id);
                continue;
            }
            match victim.files.try_lock() {
                Ok(mut files) => {
                    *files = None;
                    state.open.remove(&id);
                }
                Err(_) => state.ring.push_back(id),
            }
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.state).open.remove(&id);
    }
}

/// The active segment's files of one partition, open or closed by the budget.
#[derive(Debug)]
pub(crate) struct FileSlot {
    id: u64,
    budget: &'static FileBudget,
    /// The active segment's log and index paths.
    paths: Mutex<(PathBuf, PathBuf)>,
    files: Mutex<Option<Arc<Files>>>,
    /// Set on every use; the budget's sweep clears it (the second chance).
    used: AtomicBool,
}

impl FileSlot {
    /// A slot holding `files`, the open files of the segment at `log` and `idx`.
    pub(super) fn new(budget: &'static FileBudget, log: PathBuf, idx: PathBuf, files: Files) -> Arc<Self> {
        let slot = Arc::new(FileSlot {
            id: budget.next_id.fetch_add(1, Ordering::Relaxed),
            budget,
            paths: Mutex::new((log, idx)),
            files: Mutex::new(Some(Arc::new(files))),
            used: AtomicBool::new(true),
        });
        budget.admit(&slot);
        slot
    }

    /// The files, reopened when the budget had closed them.
    pub(super) fn files(self: &Arc<Self>) -> Result<Arc<Files>, StoreError> {
        self.used.store(true, Ordering::Release);
        let mut held = lock(&self.files);
        if let Some(files) = held.as_ref() {
            return Ok(files.clone());
        }
        let (log_path, idx_path) = lock(&self.paths).clone();
        let files = Arc::new(Files {
            log: Arc::new(open_rw(&log_path, false)?),
            idx: Arc::new(open_rw(&idx_path, false)?),
        });
        *held = Some(files.clone());
        drop(held);
        self.budget.admit(self);
        Ok(files)
    }

    /// The log file and its path, for a sync.
    pub(crate) fn log(self: &Arc<Self>) -> Result<(Arc<File>, PathBuf), StoreError> {
        let files = self.files()?;
        Ok((files.log.clone(), lock(&self.paths).0.clone()))
    }

    /// The log's path.
    pub(crate) fn log_path(&self) -> PathBuf {
        lock(&self.paths).0.clone()
    }

    /// Points the slot at a new segment's files (the active segment rolled or was purged).
    pub(super) fn replace(self: &Arc<Self>, log: &Path, idx: &Path, files: Files) {
        *lock(&self.paths) = (log.to_path_buf(), idx.to_path_buf());
        *lock(&self.files) = Some(Arc::new(files));
        self.used.store(true, Ordering::Release);
        self.budget.admit(self);
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.budget.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A scratch directory removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pubsub-budget-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn slot(budget: &'static FileBudget, dir: &Path, n: u32) -> Arc<FileSlot> {
        let (log, idx) = (dir.join(format!("{n}.log")), dir.join(format!("{n}.idx")));
        let files = Files {
            log: Arc::new(open_rw(&log, true).unwrap()),
            idx: Arc::new(open_rw(&idx, true).unwrap()),
        };
        FileSlot::new(budget, log, idx, files)
    }

    fn is_open(slot: &FileSlot) -> bool {
        lock(&slot.files).is_some()
    }

    #[test]
    fn past_the_cap_the_least_recently_used_slot_gives_its_files_up_and_reopens_on_use() {
        let dir = Scratch::new("cap");
        let budget: &'static FileBudget = Box::leak(Box::new(FileBudget::new(2)));
        let a = slot(budget, dir.path(), 0);
        let b = slot(budget, dir.path(), 1);
        // A sweep clears every second chance, then b is used again: a is the one to go.
        a.used.store(false, Ordering::Release);
        b.files().unwrap();
        let c = slot(budget, dir.path(), 2);
        assert_eq!(budget.open_slots(), 2);
        assert!(!is_open(&a) && is_open(&b) && is_open(&c));

        // a's file still holds what was written through it, and a write after reopening lands there.
        a.files().unwrap().log.write_all_at(b"after", 0).unwrap();
        assert!(is_open(&a));
        assert_eq!(budget.open_slots(), 2);
        assert_eq!(std::fs::read(dir.path().join("0.log")).unwrap(), b"after");
    }

    #[test]
    fn a_dropped_slot_frees_its_place() {
        let dir = Scratch::new("drop");
        let budget: &'static FileBudget = Box::leak(Box::new(FileBudget::new(4)));
        let slots: Vec<_> = (0..3).map(|n| slot(budget, dir.path(), n)).collect();
        assert_eq!(budget.open_slots(), 3);
        drop(slots);
        assert_eq!(budget.open_slots(), 0);
    }

    #[test]
    fn many_slots_under_a_small_cap_never_hold_more_than_the_cap() {
        let dir = Scratch::new("many");
        let budget: &'static FileBudget = Box::leak(Box::new(FileBudget::new(8)));
        let slots: Vec<_> = (0..100).map(|n| slot(budget, dir.path(), n)).collect();
        for round in 0..3 {
            for (n, s) in slots.iter().enumerate() {
                s.files().unwrap().log.write_all_at(&[round], n as u64 % 7).unwrap();
                assert!(budget.open_slots() <= 8, "{} open", budget.open_slots());
            }
        }
        assert_eq!(slots.iter().filter(|s| is_open(s)).count(), budget.open_slots());
    }
}
