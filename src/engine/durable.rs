//! Opening an engine on a data directory (recovery in the order SEMANTICS.md §9.10 lists) and closing
//! it cleanly.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::log::Log;
use super::subscription::{Ctx, Effects, SubState};
use super::topic::{TopicCell, TopicState};
use super::{Durability, Engine, EngineConfig, EngineError, Lifetime, SharedClock, lock, partition_options};
use crate::store::journal::{SubJournal, SubSnapshot};
use crate::store::segment::Partition;
use crate::store::{RecoveryReport, Store};

impl Engine {
    /// Opens (creating when new) the data directory `dir`: takes its lock, replays metadata, opens every
    /// partition (cutting torn tails, rebuilding indexes), restores every durable subscription, runs the
    /// retention sweep, and returns the engine ready to serve with a report of what recovery found.
    pub fn open(
        dir: &Path,
        clock: SharedClock,
        config: EngineConfig,
    ) -> Result<(Engine, RecoveryReport), EngineError> {
        let started = Instant::now();
        let mut report = RecoveryReport::default();
        let (store, meta) = Store::open(dir, &mut report)?;
        // Lease tokens must not repeat those of an earlier run (a client may still hold one), so ids
        // start from the wall clock in seconds, which grows across restarts (lease bases keep 21 bits of
        // it: a repeat needs a restart a multiple of about 24 days later to the second).
        let first_id =
            u64::try_from(clock.now().as_micros() / 1_000_000).unwrap_or(1).clamp(1, u64::from(u32::MAX));
        let engine = Engine::build(clock, config, Some(store.clone()), first_id);
        let now = engine.now();

        for mut topic in meta.topics {
            topic.storage = super::StorageKind::File;
            let opts = partition_options(&topic);
            let mut logs = Vec::new();
            for p in 0..topic.partitions.max(1) {
                let dir = store.partition_dir(&topic.name, p);
                let (disk, hot) = if dir.exists() {
                    let (disk, hot, found) = Partition::open(&dir, opts)?;
                    report.add_partition(found);
                    (disk, hot)
                } else {
                    // Created but its files never made (a stop between the two), or removed by hand.
                    if !report.recreated.contains(&topic.name) {
                        report.recreated.push(topic.name.clone());
                    }
                    (Partition::create(&dir, 1, opts)?, Vec::new())
                };
                if let Durability::Interval(every) = topic.durability {
                    store.sync_every(&disk.gate(), every);
                }
                logs.push(Log::on_disk(disk, hot));
            }
            let created = meta.topics_created.get(&topic.name).copied();
            let mut state = TopicState::with_logs(topic, logs, now);
            // When it was made survives a restart; records from before it was kept say nothing.
            state.created = created.unwrap_or(now);
            state.counters.published = state.heads().iter().sum();
            state.rebuild_dedup(now);
            let mut reg = engine.registry_mut();
            engine.insert_recovered(&mut reg, state)?;
        }

        for config in meta.subscriptions {
            if config.lifetime != Lifetime::Durable {
                continue;
            }
            let Some(cell) = engine.registry().topics.get(&config.topic).cloned() else {
                continue;
            };
            let dir = store.subscription_dir(&config.name);
            let mut state = lock(&cell.state);
            let first = state.firsts();
            let head = state.heads();
            let (journal, snapshot) = if dir.exists() {
                let opened = SubJournal::open(&dir, config.ack_durability, &first, &head)?;
                if opened.missing_checkpoint {
                    report.missing_checkpoints.push(config.name.clone());
                }
                if opened.missing_journal {
                    report.missing_journals.push(config.name.clone());
                }
                report.truncated.extend(opened.truncated);
                (opened.journal, opened.state)
            } else {
                // Its files are gone: start over from the oldest retained message (at-least-once).
                report.missing_checkpoints.push(config.name.clone());
                (
                    SubJournal::create(&dir, &first, &[], config.ack_durability)?,
                    SubSnapshot::starting_at_each(&first),
                )
            };
            let name = config.name.clone();
            let lease_base = engine.next_lease_base();
            let created = meta.subs_created.get(&config.name).copied();
            let starts: Vec<u64> = (0..state.partitions()).map(|p| snapshot.at(p).1 + 1).collect();
            let mut sub = SubState::new(config, &starts, now, lease_base);
            sub.created = created.unwrap_or(now);
            // A record from before they were kept: 0 everywhere, it holds what is above its floor.
            sub.created_heads = meta.subs_created_heads.get(&sub.config.name).cloned().unwrap_or_default();
            sub.restore(&snapshot, &head, now);
            sub.journal = Some(journal);
            // Messages retention removed while the engine was down are simply gone (I4).
            for (p, &first) in first.iter().enumerate() {
                let p = u32::try_from(p).unwrap_or(u32::MAX);
                if let Some(floor) = sub.parts.get(p as usize).map(|x| x.ack_floor)
                    && floor + 1 < first
                {
                    sub.on_purged(p, floor + 1, first - 1);
                }
            }
            state.subs.push(sub);
            drop(state);
            engine.registry_mut().subs.insert(name, cell);
        }

        for snapshot in meta.snapshots {
            let mut reg = engine.registry_mut();
            if let Some(cell) = reg.topics.get(&snapshot.topic) {
                // Pinned before the deletions below are made again: they keep what it could seek to.
                lock(&cell.state).pin(&snapshot);
                reg.snapshots.insert(snapshot.name.clone(), snapshot);
            }
        }

        let cells: Vec<Arc<TopicCell>> = engine.registry().topics.values().cloned().collect();
        for cell in cells {
            let mut effects = Effects::default();
            {
                let mut state = lock(&cell.state);
                // Deletions that follow from the log and the subscriptions' floors (the limits,
                // max_msgs_per_key, Interest/WorkQueue) are made again rather than recorded.
                state.rebuild_keys(&mut effects);
                state.enforce_limits(now, &mut effects);
                let state = &mut *state;
                let ctx = Ctx { topic: &state.config.name, logs: &state.logs, now };
                for sub in &mut state.subs {
                    sub.forget_counted();
                    sub.rebuild_order(&ctx);
                    sub.settle_exhausted(&ctx, &mut effects);
                }
                state.persist_subs()?;
            }
            engine.apply(effects);
        }
        report.elapsed = started.elapsed();
        Ok((engine, report))
    }

    fn insert_recovered(&self, reg: &mut super::Registry, state: TopicState) -> Result<(), EngineError> {
        let name = state.config.name.clone();
        let captured = state.config.captured();
        let cell = TopicCell::new(state);
        for pattern in captured {
            match pattern.literal().map(super::Name::new) {
                Some(Ok(literal)) => {
                    reg.exact.insert(literal, cell.clone());
                }
                _ => reg.wildcard.push((pattern, cell.clone())),
            }
        }
        reg.topics.insert(name, cell);
        Ok(())
    }

    /// Syncs every segment and journal, checkpoints every durable subscription (so the next open replays
    /// nothing), stops and joins the store's sync thread and releases the directory's lock, all before it
    /// returns: the directory can be opened again, moved or verified at once. After it, every operation
    /// that would write (publish, settle, create) fails with a storage error naming the directory; reads
    /// of what is in memory still work. The daemon calls it on shutdown; a crash instead is what
    /// recovery is for. Closing twice is harmless; an in-memory engine has nothing to close.
    pub fn close(&self) -> Result<(), EngineError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        // The registry's write lock keeps topics and subscriptions from being created meanwhile.
        let reg = self.registry_mut();
        if store.is_closed() {
            return Ok(());
        }
        let mut first_error = None;
        for cell in reg.topics.values() {
            let mut state = lock(&cell.state);
            for log in &mut state.logs {
                if let Err(e) = log.close_disk() {
                    first_error.get_or_insert(EngineError::from(e));
                }
            }
            let heads = state.heads();
            for sub in &mut state.subs {
                if let Err(e) = sub.close_journal(&heads) {
                    first_error.get_or_insert(EngineError::from(e));
                }
            }
        }
        store.close();
        drop(reg);
        first_error.map_or(Ok(()), Err)
    }

    /// Simulates a power loss for crash tests: every active segment is cut back to what its last fsync
    /// covered, then this handle is dropped. Returns each file and the length it was cut to.
    #[doc(hidden)]
    pub fn simulate_power_loss(self) -> Vec<(std::path::PathBuf, u64)> {
        let cells: Vec<Arc<TopicCell>> = self.registry().topics.values().cloned().collect();
        let mut cut = Vec::new();
        for cell in cells {
            let state = lock(&cell.state);
            for log in &state.logs {
                if let Some(Ok(found)) = log.disk().map(|d| d.drop_unsynced()) {
                    cut.push(found);
                }
            }
        }
        cut
    }

    /// The data directory, when the engine is durable.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.store.as_ref().map(Store::dir)
    }
}
