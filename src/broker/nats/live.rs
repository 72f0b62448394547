//! Live subscriptions: core subscriptions and queue groups merged into one stream, pumped without ever
//! waiting for the reader, each message naming the stream that captures its subject.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_nats::Subscriber;
use async_nats::jetstream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::NatsBroker;
use super::info::to_message;
use super::subjects::nats_subjects;
use crate::broker::kit::{Forwarder, Offer};
use crate::broker::{BrokerDelivery, BrokerError, ChannelSource, DeliveryStream, StreamItem};
use crate::model::{Clock, Name, Pattern, SystemClock};

impl NatsBroker {
    /// Core subscriptions (plain, or in the queue group `group`) merged into one stream.
    pub(super) async fn listen(
        &self,
        patterns: &[Pattern],
        group: Option<&Name>,
    ) -> Result<DeliveryStream, BrokerError> {
        let mut subjects = Vec::new();
        for p in patterns {
            subjects.extend(nats_subjects(p)?);
        }
        // A wire tap (`>`) would also see the JetStream API and reply inboxes, this tool's own requests
        // among them; those show only when asked for by name.
        let hide_internal = !subjects.iter().any(|s| s.starts_with(['$', '_']));
        let mut subs = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let made = match group {
                Some(g) => self.client.queue_subscribe(subject.clone(), g.to_string()).await,
                None => self.client.subscribe(subject.clone()).await,
            };
            subs.push(made.map_err(|e| BrokerError::Invalid(format!("subscribe to \"{subject}\": {e}")))?);
        }
        // The SUBs reach the server before this returns, so a publish right after is seen.
        self.flush().await?;
        let (tx, rx) = mpsc::channel::<Result<StreamItem, BrokerError>>(self.pending);
        let captures = if self.has_jetstream() {
            let captures = SharedCaptures::default();
            tokio::spawn(refresh_captures(self.js.clone(), captures.clone(), tx.downgrade()));
            Some(captures)
        } else {
            None
        };
        let task = tokio::spawn(core_pump(subs, tx, self.dropped.clone(), hide_internal, captures));
        Ok(DeliveryStream::new(Box::new(ChannelSource { rx, task: task.abort_handle() })))
    }
}

/// Which streams capture which subjects, so that live messages name the stream that stores them (the
/// TUI's per-topic views follow topics); kept fresh while a live subscription runs.
#[derive(Default)]
struct Captures {
    generation: u64,
    streams: Vec<(Name, Vec<Pattern>)>,
}

type SharedCaptures = Arc<std::sync::RwLock<Captures>>;

/// Reloads the streams' subjects every few seconds until the subscriber or its pump is gone (a weak
/// sender, so that this task never keeps the stream open).
async fn refresh_captures(
    js: jetstream::Context,
    captures: SharedCaptures,
    tx: mpsc::WeakSender<Result<StreamItem, BrokerError>>,
) {
    loop {
        let mut streams = Vec::new();
        let mut list = js.streams();
        while let Some(Ok(info)) = list.next().await {
            let Ok(name) = Name::system(&info.config.name) else { continue };
            let patterns = info.config.subjects.iter().filter_map(|s| Pattern::parse(s).ok()).collect();
            streams.push((name, patterns));
        }
        {
            let mut c = captures.write().unwrap_or_else(PoisonError::into_inner);
            c.generation += 1;
            c.streams = streams;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        if tx.upgrade().is_none_or(|tx| tx.is_closed()) {
            return;
        }
    }
}

/// The stream that captures `subject`, from the latest captures (remembered per subject until they change).
fn captured_by(
    captures: &SharedCaptures,
    cache: &mut (u64, HashMap<String, Option<Name>>),
    subject: &str,
) -> Option<Name> {
    let c = captures.read().unwrap_or_else(PoisonError::into_inner);
    if cache.0 != c.generation {
        *cache = (c.generation, HashMap::new());
    }
    if let Some(found) = cache.1.get(subject) {
        return found.clone();
    }
    let found =
        c.streams.iter().find(|(_, ps)| ps.iter().any(|p| p.matches(subject))).map(|(n, _)| n.clone());
    cache.1.insert(subject.to_string(), found.clone());
    found
}

/// Forwards core messages without ever waiting for the reader: core NATS is at-most-once, and a
/// reader that falls behind loses the newest messages, counted and reported, never silently.
async fn core_pump(
    subs: Vec<Subscriber>,
    tx: mpsc::Sender<Result<StreamItem, BrokerError>>,
    dropped: Arc<AtomicU64>,
    hide_internal: bool,
    captures: Option<SharedCaptures>,
) {
    let mut merged = futures_util::stream::select_all(subs);
    let mut cache = (0u64, HashMap::new());
    let mut forward = Forwarder::new(tx, None);
    loop {
        // While drops are unreported, the report goes out as soon as the reader makes room, even when
        // no further message comes.
        let next = tokio::select! {
            m = merged.next() => m,
            alive = forward.catch_up(), if forward.owes_report() => {
                if !alive {
                    return;
                }
                continue;
            }
        };
        let Some(m) = next else { return };
        if hide_internal && (m.subject.starts_with('$') || m.subject.starts_with("_INBOX.")) {
            continue;
        }
        let now = SystemClock.now();
        let stream = captures.as_ref().and_then(|c| captured_by(c, &mut cache, m.subject.as_str()));
        let Some(mut message) =
            to_message(stream.as_ref(), m.subject.as_str(), m.headers.as_ref(), m.payload, 0, now)
        else {
            continue;
        };
        // A request: its reply subject travels as a header (shown by --json, `pubsub reply` answers it).
        if let Some(reply) = &m.reply {
            message = message.with_header(crate::model::message::REPLY_TO, reply.as_str());
        }
        match forward.offer(StreamItem::Delivery(BrokerDelivery::untracked(message))) {
            Offer::Sent => {}
            Offer::Dropped => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Gone => return,
        }
    }
}
