//! A shared demo on the wire: what `pubsub demo NAME --share` publishes for the attendees who watch it,
//! and the watching end (`pubsub join`) that turns it back into the state the topology view draws.
//!
//! The teacher's process publishes a [`Shared`] snapshot as JSON on the reserved subject
//! [`STATUS_SUBJECT`] (`$demo.status`) a few times a second. Reserved subjects have no topic: the engine
//! stores nothing of it, only live taps receive it, a restart of the demo leaves it alone and the
//! topology never shows it. Narration rides along as the last lines said plus a running count of all
//! lines said, so a watcher that joins late still sees the recent lines and nobody sees a line twice.
//! The web page ([`PAGE`]) reads the same subject over the WebSocket protocol.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::live::DemoStatus;
use crate::broker::{BrokerError, SharedBroker, StreamItem, SubscribeRequest};
use crate::engine::Engine;
use crate::model::{Name, Pattern, PublishRequest};

/// The reserved subject a shared demo's state is published on.
pub const STATUS_SUBJECT: &str = "$demo.status";

/// How many recent narration lines each state carries.
pub const NARRATION_KEPT: usize = 30;

/// How often the state goes out (wall clock).
pub const EVERY: Duration = Duration::from_millis(250);

/// The read-only web page a shared demo serves at `/`: plain HTML and JavaScript, no build step, no
/// third-party code; it connects back over the WebSocket protocol and draws [`Shared`] states.
pub const PAGE: &str = include_str!("page.html");

/// One state of a shared demo as watchers receive it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Shared {
    /// What the teacher's view shows (topics and subscriptions with their consumers included).
    pub status: DemoStatus,
    /// Narration lines said since the demo started.
    pub said: u64,
    /// The last of them (at most [`NARRATION_KEPT`]), oldest first.
    pub narration: Vec<String>,
}

impl Shared {
    /// The lines a watcher that has shown `seen` lines so far has not shown yet (those that are still
    /// kept; a watcher far behind skips the rest).
    pub fn unseen(&self, seen: u64) -> &[String] {
        let new = usize::try_from(self.said.saturating_sub(seen)).unwrap_or(usize::MAX);
        let from = self.narration.len().saturating_sub(new);
        &self.narration[from..]
    }
}

/// Narration as it is said, the recent lines kept for the wire; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Narration(Arc<Mutex<(u64, VecDeque<String>)>>);

impl Narration {
    /// Records a line.
    pub fn say(&self, line: String) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.0 += 1;
        kept.1.push_back(line);
        while kept.1.len() > NARRATION_KEPT {
            kept.1.pop_front();
        }
    }

    /// Lines said so far, and the recent ones.
    pub fn recent(&self) -> (u64, Vec<String>) {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (kept.0, kept.1.iter().cloned().collect())
    }
}

/// Passes each narrated line from `said` on to `view` (the teacher's own view, when there is one),
/// recording it in `narration`; ends when `said` closes.
pub async fn tee(mut said: mpsc::Receiver<String>, view: Option<mpsc::Sender<String>>, narration: Narration) {
    while let Some(line) = said.recv().await {
        narration.say(line.clone());
        if let Some(view) = &view {
            // The view takes what it can; a full channel drops a line rather than holding the demo.
            let _ = view.try_send(line);
        }
    }
}

/// An attendee's consumer: one the engine pushes to on a subscription (the scenario's consumers all
/// fetch, and one the teacher removed may still be known to the engine as a pull consumer) that is none
/// of the scenario's.
#[derive(Debug, Clone, PartialEq)]
pub struct Attendee {
    /// Consumer name (`user@host` or the attendee's `--name`).
    pub name: String,
    /// Its subscription.
    pub subscription: String,
    /// Messages it holds.
    pub held: u32,
    /// Deliveries it got.
    pub delivered: u64,
    /// Its share of the subscription's deliveries, 0 to 1.
    pub share: f64,
}

/// The consumers of `status`'s subscriptions that the scenario does not run: attendees who joined
/// (`pubsub sub TOPIC -s SUB`), with their share of the work each subscription handed out.
pub fn attendees(status: &DemoStatus) -> Vec<Attendee> {
    let mut out = Vec::new();
    for s in &status.subscriptions {
        let total: u64 = s.consumers.iter().map(|c| c.delivered).sum();
        for c in &s.consumers {
            let ours = status.consumers.iter().any(|d| d.name == *c.id && d.subscription == s.name.as_str());
            if ours || !c.push {
                continue;
            }
            out.push(Attendee {
                name: c.id.to_string(),
                subscription: s.name.to_string(),
                held: c.in_flight,
                delivered: c.delivered,
                share: if total == 0 { 0.0 } else { c.delivered as f64 / total as f64 },
            });
        }
    }
    out
}

/// The share of a subscription's deliveries that consumer `name` got, 0 to 1 (0 when none went out).
pub fn share_of(status: &DemoStatus, subscription: &str, name: &str) -> f64 {
    let Some(s) = status.subscriptions.iter().find(|s| s.name.as_str() == subscription) else { return 0.0 };
    let total: u64 = s.consumers.iter().map(|c| c.delivered).sum();
    let mine = s.consumers.iter().find(|c| *c.id == *name).map_or(0, |c| c.delivered);
    if total == 0 { 0.0 } else { mine as f64 / total as f64 }
}

/// Publishes the demo's state on `engine` every [`EVERY`] until `status` closes (the demo ended).
pub async fn broadcast(engine: Engine, mut status: watch::Receiver<DemoStatus>, narration: Narration) {
    let Ok(subject) = Name::system(STATUS_SUBJECT) else { return };
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if status.has_changed().is_err() {
            return;
        }
        let (said, lines) = narration.recent();
        let shared = Shared { status: status.borrow_and_update().clone(), said, narration: lines };
        match serde_json::to_vec(&shared) {
            // With no watcher the message reaches nobody, which is no error on a reserved subject.
            Ok(body) => {
                let _ = engine.publish(PublishRequest::new(subject.clone(), body));
            }
            Err(e) => tracing::warn!(error = %e, "encoding the shared demo's state"),
        }
    }
}

/// Watches a shared demo on `broker`: each state goes to `status`, each narration line not yet shown
/// to `narration`. Ends when the teacher's demo (or the connection) ends, or the receivers are gone.
pub async fn watch(
    broker: SharedBroker,
    status: watch::Sender<DemoStatus>,
    narration: mpsc::Sender<String>,
) -> Result<(), BrokerError> {
    let pattern = Pattern::parse(STATUS_SUBJECT)?;
    let mut stream = broker.subscribe(SubscribeRequest::live(vec![pattern])).await?;
    let mut seen = 0u64;
    while let Some(item) = stream.next().await {
        let StreamItem::Delivery(d) = item? else { continue };
        let Ok(shared) = serde_json::from_slice::<Shared>(&d.message.payload) else { continue };
        for line in shared.unseen(seen) {
            if narration.send(line.clone()).await.is_err() {
                return Ok(());
            }
        }
        seen = shared.said;
        if status.send(shared.status).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::local::LocalBroker;
    use crate::demo::Scenario;
    use crate::demo::live::Live;

    #[test]
    fn a_watcher_sees_each_line_once_and_a_late_one_the_recent_lines() {
        let n = Narration::default();
        for i in 0..40 {
            n.say(format!("line {i}"));
        }
        let (said, narration) = n.recent();
        let shared = Shared { status: DemoStatus::default(), said, narration };
        assert_eq!(shared.said, 40);
        assert_eq!(shared.unseen(38), ["line 38", "line 39"]);
        assert_eq!(shared.unseen(40).len(), 0);
        let late = shared.unseen(0);
        assert_eq!((late.len(), late[0].as_str()), (NARRATION_KEPT, "line 10"), "the kept lines only");
    }

    #[tokio::test]
    async fn the_state_goes_out_on_the_reserved_subject_and_comes_back_whole() {
        let (tx, rx) = mpsc::channel(100);
        let mut live = Live::new(Scenario::load("work-queue").unwrap(), 42, Some(tx)).await.unwrap();
        let narration = Narration::default();
        tokio::spawn(tee(rx, None, narration.clone()));
        live.advance(Duration::from_secs(2)).await.unwrap();
        let (status_tx, status_rx) = watch::channel(live.status().await);
        tokio::spawn(broadcast(live.engine().clone(), status_rx, narration));
        // A watcher over the same engine, as `pubsub join` is over ws://.
        let broker: SharedBroker = Arc::new(LocalBroker::new(live.engine().clone(), "mem://"));
        let (seen_tx, mut seen_rx) = watch::channel(DemoStatus::default());
        let (lines_tx, mut lines_rx) = mpsc::channel(100);
        tokio::spawn(watch(broker, seen_tx, lines_tx));
        seen_rx.changed().await.unwrap();
        let got = seen_rx.borrow().clone();
        let sent = live.status().await;
        // Everything but what the engine measures against the wall clock (rates, idle times).
        assert_eq!(
            (&got.scenario, got.now, &got.publishers, &got.consumers),
            (&sent.scenario, sent.now, &sent.publishers, &sent.consumers)
        );
        let topics =
            |s: &DemoStatus| s.topics.iter().map(|t| (t.name.clone(), t.messages)).collect::<Vec<_>>();
        assert_eq!(topics(&got), topics(&sent));
        let subs = |s: &DemoStatus| {
            s.subscriptions
                .iter()
                .map(|x| {
                    (x.name.clone(), x.backlog, x.consumers.iter().map(|c| c.delivered).collect::<Vec<_>>())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(subs(&got), subs(&sent), "subscriptions with their consumers");
        assert_eq!(got.now, Duration::from_secs(2));
        let first = lines_rx.recv().await.unwrap();
        assert!(first.contains("work-queue"), "{first}");
        assert!(
            live.engine().topic_info(&Name::system(STATUS_SUBJECT).unwrap()).is_err(),
            "nothing is stored for it"
        );
        drop(status_tx);
    }

    #[tokio::test]
    async fn an_attendee_is_a_consumer_the_scenario_does_not_run_with_its_share_of_the_work() {
        use crate::broker::Broker;
        let mut live = Live::new(Scenario::load("work-queue").unwrap(), 42, None).await.unwrap();
        let broker = live.local_broker();
        let mut stream = broker
            .subscribe(SubscribeRequest {
                subscription: Some(Name::new("workers").unwrap()),
                ack: crate::model::AckMode::Explicit,
                consumer: Some("ada@laptop".into()),
                prefetch: Some(1),
                ..SubscribeRequest::live(vec![Pattern::parse("jobs").unwrap()])
            })
            .await
            .unwrap();
        let mut got = 0u64;
        for _ in 0..30 {
            live.advance(Duration::from_millis(100)).await.unwrap();
            while let Some(Ok(StreamItem::Delivery(d))) = stream.try_next() {
                got += 1;
                broker.settle(d.token.as_ref().unwrap(), crate::broker::Settle::Ack).await.unwrap();
            }
        }
        let status = live.status().await;
        let found = attendees(&status);
        assert_eq!(found.len(), 1, "{found:?}");
        let ada = &found[0];
        assert_eq!((ada.name.as_str(), ada.subscription.as_str()), ("ada@laptop", "workers"));
        assert!(got > 0 && ada.delivered >= got, "it got work: {got}, {ada:?}");
        let total: u64 = status.subscriptions[0].consumers.iter().map(|c| c.delivered).sum();
        assert_eq!(ada.share, ada.delivered as f64 / total as f64);
        assert!(ada.share > 0.0 && ada.share < 1.0, "the workers got some too");
        assert_eq!(share_of(&status, "workers", "ada@laptop"), ada.share);
    }
}
