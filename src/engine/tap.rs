//! Taps: live, at-most-once pattern listeners (Redis PSUBSCRIBE, core NATS, LISTEN) with bounded
//! buffers that tell a slow listener how much it missed instead of dropping silently (§9.12).

use std::collections::HashMap;

use tokio::sync::broadcast;

use super::Engine;
use crate::model::message::Message;
use crate::model::name::Pattern;

/// What a tap hands its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapItem {
    /// A message that matched.
    Message(Message),
    /// The listener fell behind and this many messages were dropped (oldest first).
    Lagged {
        /// How many.
        skipped: u64,
    },
}

/// Options for a new tap.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// Buffer size in messages (rounded up to a power of two); 0 takes the engine default (1024).
    pub buffer: usize,
    /// Members of one group share the flow: each message reaches one of them (NATS queue groups).
    pub group: Option<String>,
}

#[derive(Debug)]
struct TapEntry {
    id: u64,
    patterns: Vec<Pattern>,
    group: Option<String>,
    tx: broadcast::Sender<Message>,
}

/// All taps of an engine.
#[derive(Debug, Default)]
pub(crate) struct TapRegistry {
    taps: Vec<TapEntry>,
    /// Round-robin position per group, so a group spreads messages evenly and deterministically.
    cursors: HashMap<String, usize>,
}

impl TapRegistry {
    pub fn add(
        &mut self,
        id: u64,
        patterns: Vec<Pattern>,
        group: Option<String>,
        buffer: usize,
    ) -> broadcast::Receiver<Message> {
        let (tx, rx) = broadcast::channel(buffer.max(1));
        self.taps.push(TapEntry { id, patterns, group, tx });
        rx
    }

    pub fn remove(&mut self, id: u64) {
        self.taps.retain(|t| t.id != id);
    }

    pub fn len(&self) -> usize {
        self.taps.len()
    }

    /// Offers a message to every matching tap, once per tap; returns how many taps took it.
    pub fn deliver(&mut self, message: &Message) -> u32 {
        let subject = message.subject().as_str();
        let mut reached = 0u32;
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, tap) in self.taps.iter().enumerate() {
            if !tap.patterns.iter().any(|p| tap_matches(p, subject)) {
                continue;
            }
            match &tap.group {
                None => {
                    // A send fails only when the receiver is gone; the tap is removed when it drops.
                    if tap.tx.send(message.clone()).is_ok() {
                        reached += 1;
                    }
                }
                Some(g) => match groups.iter_mut().find(|(name, _)| *name == g.as_str()) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((g.as_str(), vec![i])),
                },
            }
        }
        let picks: Vec<(String, usize)> = groups
            .into_iter()
            .filter_map(|(name, members)| {
                let cursor = self.cursors.get(name).copied().unwrap_or(0);
                members.get(cursor % members.len()).map(|&i| (name.to_string(), i))
            })
            .collect();
        for (name, i) in picks {
            if let Some(tap) = self.taps.get(i)
                && tap.tx.send(message.clone()).is_ok()
            {
                reached += 1;
            }
            *self.cursors.entry(name).or_insert(0) += 1;
        }
        reached
    }
}

/// Reserved `$…` subjects are matched only by patterns that name them explicitly, so `#` or `>` do not
/// flood a listener with engine events (the MQTT rule for `$` topics).
fn tap_matches(pattern: &Pattern, subject: &str) -> bool {
    if subject.starts_with('$') {
        let text = pattern.as_str();
        let text = text.strip_prefix("glob:").unwrap_or(text);
        if !text.starts_with('$') {
            return false;
        }
    }
    pattern.matches(subject)
}

/// The listening end of a tap; dropping it removes the tap.
#[derive(Debug)]
pub struct TapReceiver {
    pub(crate) engine: Engine,
    pub(crate) id: u64,
    pub(crate) rx: broadcast::Receiver<Message>,
}

impl TapReceiver {
    /// This tap's id (as used in `$sys.tap.<id>.lagged`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next item; `None` when the engine is gone.
    pub async fn recv(&mut self) -> Option<TapItem> {
        match self.rx.recv().await {
            Ok(m) => Some(TapItem::Message(m)),
            Err(broadcast::error::RecvError::Lagged(skipped)) => Some(self.lagged(skipped)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// An item if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<TapItem> {
        match self.rx.try_recv() {
            Ok(m) => Some(TapItem::Message(m)),
            Err(broadcast::error::TryRecvError::Lagged(skipped)) => Some(self.lagged(skipped)),
            Err(_) => None,
        }
    }

    fn lagged(&self, skipped: u64) -> TapItem {
        self.engine.note_tap_lagged(self.id, skipped);
        TapItem::Lagged { skipped }
    }
}

impl Drop for TapReceiver {
    fn drop(&mut self) {
        self.engine.remove_tap(self.id);
    }
}
