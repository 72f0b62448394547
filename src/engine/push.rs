//! The engine's side of HTTP push: which subscriptions push, and a board where the pusher (which does
//! the HTTP, outside the engine: the broker layer's `push` module) writes what it did, for `subs info`, `peek` and the TUI.
//! A pusher is an ordinary push consumer of its subscription; the engine gives it nothing special.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Engine, Name, SubscriptionConfig, lock};
use crate::model::PushInfo;

/// What a pusher has done for one subscription, updated as it goes. Counts restart with the process.
#[derive(Debug, Default)]
pub struct PushStatus {
    attempts: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    consecutive_failures: AtomicU32,
    slowdown_ms: AtomicU64,
    /// The last status code + 1 (0 = none yet).
    last_status: AtomicU32,
    last_error: Mutex<Option<String>>,
}

impl PushStatus {
    /// A request is starting.
    pub fn started(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended with a 2xx: failures in a row start again from zero.
    pub fn succeeded(&self, status: u16) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        self.last_status.store(u32::from(status) + 1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.slowdown_ms.store(0, Ordering::Relaxed);
    }

    /// A request failed: with `status` if an answer came, described by `error`; `slowdown` is the pause
    /// the pusher now keeps between pushes. Returns the failures in a row, this one included.
    pub fn failed(&self, status: Option<u16>, error: String) -> u32 {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(status) = status {
            self.last_status.store(u32::from(status) + 1, Ordering::Relaxed);
        }
        *lock(&self.last_error) = Some(error);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Records the pause between pushes now in force.
    pub fn set_slowdown(&self, ms: u64) {
        self.slowdown_ms.store(ms, Ordering::Relaxed);
    }

    /// The pause between pushes now in force, milliseconds.
    pub fn slowdown_ms(&self) -> u64 {
        self.slowdown_ms.load(Ordering::Relaxed)
    }

    fn fill(&self, info: &mut PushInfo) {
        info.attempts = self.attempts.load(Ordering::Relaxed);
        info.succeeded = self.succeeded.load(Ordering::Relaxed);
        info.failed = self.failed.load(Ordering::Relaxed);
        info.in_flight = self.in_flight.load(Ordering::Relaxed);
        info.consecutive_failures = self.consecutive_failures.load(Ordering::Relaxed);
        info.slowdown_ms = self.slowdown_ms.load(Ordering::Relaxed);
        info.last_status =
            self.last_status.load(Ordering::Relaxed).checked_sub(1).and_then(|s| u16::try_from(s).ok());
        info.last_error = lock(&self.last_error).clone();
    }
}

/// An engine handle that does not keep the engine alive (the push host's watch holds one between
/// looks, so that dropping the broker that hosts an engine releases its data directory at once).
#[derive(Debug, Clone)]
pub struct WeakEngine(std::sync::Weak<super::Inner>);

impl WeakEngine {
    /// The engine, while something else still holds it.
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

/// Every push subscription's status.
#[derive(Debug, Default)]
pub(super) struct PushBoard(Mutex<HashMap<Name, Arc<PushStatus>>>);

impl Engine {
    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// The configuration of every subscription that pushes to an HTTP endpoint.
    pub fn push_subscriptions(&self) -> Vec<SubscriptionConfig> {
        let cells: Vec<_> = self.registry().topics.values().cloned().collect();
        let mut out = Vec::new();
        for cell in cells {
            let state = lock(&cell.state);
            out.extend(state.subs.iter().filter(|s| s.config.push.is_some()).map(|s| s.config.clone()));
        }
        out
    }

    /// The status a pusher of `sub` writes to (made on first use).
    pub fn push_status(&self, sub: &Name) -> Arc<PushStatus> {
        lock(&self.inner.push.0).entry(sub.clone()).or_default().clone()
    }

    /// Fills a push subscription's figures in `info` from the board.
    pub(super) fn fill_push(&self, sub: &Name, info: Option<&mut PushInfo>) {
        if let Some(info) = info
            && let Some(status) = lock(&self.inner.push.0).get(sub)
        {
            status.fill(info);
        }
    }

    /// Forgets a deleted subscription's status.
    pub(super) fn forget_push(&self, sub: &Name) {
        lock(&self.inner.push.0).remove(sub);
    }
}
