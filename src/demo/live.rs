//! A demo running live: the simulation on a private engine in virtual time, driven by the wall clock at
//! a scale the teacher sets, with pause, single step, restart and the changes of [`Change`]. Everything
//! but the wall clock is here and testable: `advance` moves virtual time by hand.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::scenario::Scenario;
use super::sim::{Change, ConsumerStatus, Node, Pace, PublisherStatus, Sim, TICK};
use crate::broker::local::LocalBroker;
use crate::broker::{BrokerError, SharedBroker};
use crate::engine::{Engine, EngineConfig};
use crate::model::{Clock, ManualClock, SubscriptionInfo, SystemClock, TopicInfo};

/// What the teacher asks of a live demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Pause, or resume when paused.
    Pause,
    /// Virtual time runs at the next lower scale.
    Slower,
    /// Virtual time runs at the next higher scale.
    Faster,
    /// Pause, and move virtual time on by `STEP`.
    Step,
    /// Start the scenario over with the same seed.
    Restart,
    /// A change to the simulation, near the node the teacher picked.
    Change(Change, Option<Node>),
}

/// How far a single step moves virtual time.
pub const STEP: Duration = Duration::from_millis(100);

/// The speeds offered, as multiples of real time.
pub const SCALES: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0];

/// What a live demo looks like at one moment, for the view (and, in JSON, for a shared demo's watchers).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DemoStatus {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Virtual time since the (re)start.
    #[serde(with = "crate::model::clock::millis")]
    pub now: Duration,
    /// Virtual seconds per real second.
    pub scale: f64,
    /// Paused.
    pub paused: bool,
    /// The scenario's own length (its script is over after it).
    #[serde(with = "crate::model::clock::millis")]
    pub script: Duration,
    /// Publishers.
    pub publishers: Vec<PublisherStatus>,
    /// Consumers.
    pub consumers: Vec<ConsumerStatus>,
    /// Topics on the demo's engine.
    pub topics: Vec<TopicInfo>,
    /// Subscriptions on the demo's engine.
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// A live demo.
pub struct Live {
    scenario: Scenario,
    seed: u64,
    engine: Engine,
    clock: Arc<ManualClock>,
    local: Arc<LocalBroker>,
    broker: SharedBroker,
    sim: Sim,
    scale_index: usize,
    paused: bool,
    narration: Option<mpsc::Sender<String>>,
}

impl Live {
    /// Sets the scenario up on a fresh private engine whose clock starts at the wall clock's time.
    pub async fn new(
        scenario: Scenario,
        seed: u64,
        narration: Option<mpsc::Sender<String>>,
    ) -> Result<Live, BrokerError> {
        let clock = ManualClock::new(SystemClock.now());
        let engine = Engine::with_clock(clock.clone(), EngineConfig::default());
        let local =
            Arc::new(LocalBroker::new(engine.clone(), format!("demo {} (in-process)", scenario.name)));
        let broker: SharedBroker = local.clone();
        let sim = Self::start_sim(&scenario, seed, &engine, &clock, &broker, narration.clone()).await?;
        let scale_index = SCALES.iter().position(|s| *s == 1.0).unwrap_or(0);
        Ok(Live { scenario, seed, engine, clock, local, broker, sim, scale_index, paused: false, narration })
    }

    async fn start_sim(
        scenario: &Scenario,
        seed: u64,
        engine: &Engine,
        clock: &Arc<ManualClock>,
        broker: &SharedBroker,
        narration: Option<mpsc::Sender<String>>,
    ) -> Result<Sim, BrokerError> {
        let sim =
            Sim::new(scenario.clone(), broker.clone(), Pace::Virtual(engine.clone(), clock.clone()), seed)
                .await?;
        let sim = match narration {
            Some(tx) => sim.narrating(tx),
            None => sim,
        };
        Ok(sim.live())
    }

    /// The broker the demo runs on (the TUI watches it).
    pub fn broker(&self) -> SharedBroker {
        self.broker.clone()
    }

    /// The same broker as its concrete type, for serving it (`demo --share`).
    pub fn local_broker(&self) -> Arc<LocalBroker> {
        self.local.clone()
    }

    /// The engine the demo runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The simulation.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// Virtual seconds per real second.
    pub fn scale(&self) -> f64 {
        SCALES.get(self.scale_index).copied().unwrap_or(1.0)
    }

    /// Whether time stands still.
    pub fn paused(&self) -> bool {
        self.paused
    }

    fn say(&self, line: String) {
        if let Some(tx) = &self.narration {
            let _ = tx.try_send(format!("{:>6.2}s  {line}", self.sim.now().as_secs_f64()));
        }
    }

    /// Carries out a control and narrates it.
    pub async fn control(&mut self, control: Control) -> Result<(), BrokerError> {
        match control {
            Control::Pause => {
                self.paused = !self.paused;
                self.say(if self.paused {
                    "paused: nothing moves until you press Space again (. steps 0.1 s)".into()
                } else {
                    format!("running again at {}", scale_text(self.scale()))
                });
            }
            Control::Slower | Control::Faster => {
                let was = self.scale_index;
                self.scale_index = if control == Control::Faster {
                    (was + 1).min(SCALES.len() - 1)
                } else {
                    was.saturating_sub(1)
                };
                let now = scale_text(self.scale());
                self.say(if was == self.scale_index {
                    format!(
                        "already at {} — the {} there is",
                        now,
                        if control == Control::Faster { "fastest" } else { "slowest" }
                    )
                } else {
                    format!("time now runs at {now}")
                });
            }
            Control::Step => {
                self.paused = true;
                self.advance(STEP).await?;
                self.say(format!("stepped {} ms (paused; Space resumes)", STEP.as_millis()));
            }
            Control::Restart => self.restart().await?,
            Control::Change(change, near) => self.sim.apply(change, near.as_ref()).await?,
        }
        Ok(())
    }

    /// Deletes what the run made and starts the scenario over with the same seed (virtual time
    /// restarts at zero; the engine's clock goes on).
    async fn restart(&mut self) -> Result<(), BrokerError> {
        for s in self.broker.subscriptions(None).await? {
            let _ = self.broker.delete_subscription(&s.name).await;
        }
        for t in self.broker.topics().await? {
            if !t.name.is_reserved() {
                let _ = self.broker.delete_topic(&t.name).await;
            }
        }
        self.sim = Self::start_sim(
            &self.scenario,
            self.seed,
            &self.engine,
            &self.clock,
            &self.broker,
            self.narration.clone(),
        )
        .await?;
        self.say(format!("restarted {} with the same seed ({})", self.scenario.name, self.seed));
        Ok(())
    }

    /// Moves virtual time on by `d` (rounded down to whole ticks), whether paused or not.
    pub async fn advance(&mut self, d: Duration) -> Result<(), BrokerError> {
        let ticks = d.as_micros() / TICK.as_micros();
        for _ in 0..ticks {
            self.sim.tick().await?;
        }
        Ok(())
    }

    /// The state for the view.
    pub async fn status(&self) -> DemoStatus {
        DemoStatus {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            now: self.sim.now(),
            scale: self.scale(),
            paused: self.paused,
            script: self.scenario.duration,
            publishers: self.sim.publisher_status(),
            consumers: self.sim.consumer_status(),
            topics: self.broker.topics().await.unwrap_or_default(),
            subscriptions: self.broker.subscriptions(None).await.unwrap_or_default(),
        }
    }

    /// Runs on the wall clock until `controls` closes, sending the state to `status` about 30 times a
    /// second. Virtual time owed by the wall clock is caught up in ticks, at most 20 s of it per round
    /// (a slow machine then runs slower than asked rather than never drawing).
    pub async fn run(
        mut self,
        mut controls: mpsc::Receiver<Control>,
        status: watch::Sender<DemoStatus>,
    ) -> Result<(), BrokerError> {
        let round = Duration::from_millis(33);
        let mut last = tokio::time::Instant::now();
        let mut owed = Duration::ZERO;
        loop {
            tokio::select! {
                c = controls.recv() => match c {
                    Some(c) => self.control(c).await?,
                    None => return Ok(()),
                },
                () = tokio::time::sleep(round) => {}
            }
            let now = tokio::time::Instant::now();
            if !self.paused {
                owed += (now - last).mul_f64(self.scale());
                owed = owed.min(Duration::from_secs(20));
            }
            last = now;
            while owed >= TICK {
                self.sim.tick().await?;
                owed -= TICK;
            }
            let _ = status.send(self.status().await);
        }
    }
}

/// "1×", "0.25×", "10×".
pub fn scale_text(scale: f64) -> String {
    format!("{scale}× real time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Name;

    async fn live(scenario: &str) -> (Live, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(10_000);
        let live = Live::new(Scenario::load(scenario).unwrap(), 42, Some(tx)).await.unwrap();
        (live, rx)
    }

    fn said(rx: &mut mpsc::Receiver<String>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn sub(l: &Live, name: &str) -> SubscriptionInfo {
        l.engine().subscription_info(&Name::new(name).unwrap()).unwrap()
    }

    fn consumer(s: &DemoStatus, name: &str) -> ConsumerStatus {
        s.consumers.iter().find(|c| c.name == name).cloned().unwrap()
    }

    fn change(c: Change, node: Node) -> Control {
        Control::Change(c, Some(node))
    }

    #[tokio::test]
    async fn pause_step_and_speed_change_virtual_time_as_told() {
        let (mut l, mut rx) = live("fan-out").await;
        assert!(said(&mut rx)[0].contains("fan-out: One publisher"), "the summary opens the narration");
        l.control(Control::Pause).await.unwrap();
        assert!(l.paused());
        assert!(said(&mut rx).iter().any(|s| s.contains("paused")));
        l.control(Control::Step).await.unwrap();
        l.control(Control::Step).await.unwrap();
        let s = l.status().await;
        assert_eq!(
            (s.now, s.paused),
            (Duration::from_millis(200), true),
            "two steps of 100 ms, still paused"
        );
        assert!(said(&mut rx).iter().any(|s| s.contains("stepped 100 ms")));
        l.control(Control::Pause).await.unwrap();
        assert!(!l.paused());
        assert!(said(&mut rx).iter().any(|s| s.contains("running again at 1× real time")));
        l.control(Control::Faster).await.unwrap();
        assert_eq!(l.scale(), 2.0);
        assert!(said(&mut rx).iter().any(|s| s.contains("time now runs at 2× real time")));
        for _ in 0..20 {
            l.control(Control::Slower).await.unwrap();
        }
        assert_eq!(l.scale(), SCALES[0], "the scale stops at the slowest");
        assert!(said(&mut rx).last().unwrap().contains("slowest"));
    }

    #[tokio::test]
    async fn restart_runs_the_same_scenario_again_from_zero_with_the_same_seed() {
        let (mut l, mut rx) = live("work-queue").await;
        l.advance(Duration::from_secs(4)).await.unwrap();
        let first = l.status().await;
        l.control(Control::Restart).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("restarted work-queue with the same seed (42)")));
        let fresh = l.status().await;
        assert_eq!(fresh.now, Duration::ZERO);
        assert_eq!(fresh.topics.iter().map(|t| t.messages).sum::<u64>(), 0, "the old messages are gone");
        l.advance(Duration::from_secs(4)).await.unwrap();
        let again = l.status().await;
        assert_eq!(again.publishers, first.publishers);
        assert_eq!(again.consumers, first.consumers, "the same seed gives the same run");
    }

    #[tokio::test]
    async fn publishers_are_added_removed_and_change_rate() {
        let (mut l, mut rx) = live("work-queue").await;
        l.control(change(Change::AddPublisher, Node::Publisher("scheduler".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("new publisher scheduler-2 sends 15/s to jobs")));
        l.advance(Duration::from_secs(2)).await.unwrap();
        let s = l.status().await;
        let sent = |s: &DemoStatus, n: &str| s.publishers.iter().find(|p| p.name == n).map(|p| p.sent);
        assert_eq!(sent(&s, "scheduler-2"), Some(30), "15/s for 2 s");
        l.control(change(Change::RemovePublisher, Node::Publisher("scheduler-2".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("scheduler-2 stopped publishing")));
        // A rate change on a topic reaches the publisher feeding it.
        l.control(change(Change::RateUp, Node::Topic("jobs".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("scheduler now publishes 30/s (was 15/s)")));
        let before = sent(&l.status().await, "scheduler").unwrap();
        l.advance(Duration::from_secs(1)).await.unwrap();
        let s = l.status().await;
        assert_eq!(sent(&s, "scheduler-2"), None, "a removed publisher is gone");
        assert_eq!(sent(&s, "scheduler").unwrap() - before, 30, "30/s from the change on");
        l.control(change(Change::RateDown, Node::Publisher("scheduler".into()))).await.unwrap();
        l.control(change(Change::RateDown, Node::Publisher("scheduler".into()))).await.unwrap();
        assert_eq!(l.status().await.publishers[0].rate, 7.5);
    }

    #[tokio::test]
    async fn a_subscription_is_added_fills_up_without_a_consumer_and_is_removed() {
        let (mut l, mut rx) = live("fan-out").await;
        l.control(change(Change::AddSubscription, Node::Topic("orders".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("new subscription orders-reader on orders")));
        l.advance(Duration::from_secs(3)).await.unwrap();
        assert_eq!(sub(&l, "orders-reader").backlog, 15, "5/s for 3 s, nobody reading");
        l.control(change(Change::AddConsumer, Node::Subscription("orders-reader".into()))).await.unwrap();
        assert!(
            said(&mut rx).iter().any(|s| s.contains("orders-reader-worker starts consuming orders-reader"))
        );
        l.advance(Duration::from_secs(2)).await.unwrap();
        assert!(sub(&l, "orders-reader").backlog <= 1, "its new consumer drained it (but the one in hand)");
        l.control(change(Change::RemoveSubscription, Node::Consumer("orders-reader-worker".into())))
            .await
            .unwrap();
        assert!(
            said(&mut rx)
                .iter()
                .any(|s| s.contains("subscription orders-reader deleted with its 1 consumer"))
        );
        assert!(l.engine().subscription_info(&Name::new("orders-reader").unwrap()).is_err());
        l.advance(Duration::from_secs(1)).await.unwrap();
        assert!(l.status().await.consumers.iter().all(|c| c.subscription != "orders-reader"));
    }

    #[tokio::test]
    async fn consumers_join_leave_and_change_pace() {
        let (mut l, mut rx) = live("work-queue").await;
        l.control(change(Change::AddConsumer, Node::Subscription("workers".into()))).await.unwrap();
        assert!(
            said(&mut rx).iter().any(|s| s.contains("worker-fast-2 joins workers: 4 consumers now compete"))
        );
        l.advance(Duration::from_secs(3)).await.unwrap();
        let s = l.status().await;
        assert!(consumer(&s, "worker-fast-2").received > 0, "the new worker gets work");
        let held = consumer(&s, "worker-fast-2").held;
        let in_flight = sub(&l, "workers").in_flight;
        l.control(change(Change::RemoveConsumer, Node::Consumer("worker-fast-2".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains(&format!("handed back the {held} message(s)"))));
        assert_eq!(sub(&l, "workers").in_flight, in_flight - held as u64, "what it held went back at once");
        assert!(l.status().await.consumers.iter().all(|c| c.name != "worker-fast-2"));
        l.control(change(Change::SlowDown, Node::Consumer("worker-fast".into()))).await.unwrap();
        assert!(
            said(&mut rx).iter().any(|s| s.contains("worker-fast now takes 200 ms per message (was 100 ms)"))
        );
        l.control(change(Change::SpeedUp, Node::Consumer("worker-slow".into()))).await.unwrap();
        let s = l.status().await;
        assert_eq!(consumer(&s, "worker-fast").process, Duration::from_millis(200));
        assert_eq!(consumer(&s, "worker-slow").process, Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_crashed_consumers_messages_return_after_the_deadline_to_the_others() {
        let (mut l, mut rx) = live("work-queue").await;
        l.advance(Duration::from_secs(2)).await.unwrap();
        let held = consumer(&l.status().await, "worker-slow").held;
        assert!(held > 0);
        l.control(change(Change::Crash, Node::Consumer("worker-slow".into()))).await.unwrap();
        let lines = said(&mut rx);
        assert!(
            lines.iter().any(|s| s
                .contains(&format!("worker-slow crashed holding {held} message(s); they return within 5 s"))),
            "{lines:?}"
        );
        assert!(consumer(&l.status().await, "worker-slow").crashed);
        l.advance(Duration::from_secs(1)).await.unwrap();
        assert_eq!(sub(&l, "workers").counters.redeliveries, 0, "not before the deadline");
        l.advance(Duration::from_secs(5)).await.unwrap();
        assert_eq!(sub(&l, "workers").counters.redeliveries, held as u64, "after it, every one");
        let s = l.status().await;
        let again: u64 = s.consumers.iter().map(|c| c.redelivered).sum();
        assert_eq!(again, held as u64, "and the others received them");
        assert!(said(&mut rx).iter().any(|s| s.contains("redelivered to worker-")));
        l.control(change(Change::Crash, Node::Consumer("worker-slow".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("worker-slow is back")));
        assert!(!consumer(&l.status().await, "worker-slow").crashed);
    }

    #[tokio::test]
    async fn failing_on_purpose_nacks_backs_off_and_dead_letters() {
        let (mut l, mut rx) = live("poison-message").await;
        l.control(change(Change::Fail, Node::Subscription("processor".into()))).await.unwrap();
        let lines = said(&mut rx);
        assert!(
            lines.iter().any(|s| s.contains(
                "processor-svc will fail its next 3 message(s): each is nacked, retried after 500 ms, and after 3 deliveries moved to payments-dlq"
            )),
            "{lines:?}"
        );
        assert_eq!(consumer(&l.status().await, "processor-svc").fail_next, 3);
        l.advance(Duration::from_secs(5)).await.unwrap();
        let s = l.status().await;
        assert_eq!(consumer(&s, "processor-svc").fail_next, 0);
        // The first message failed three times over its backoff (0.5 s, 1 s) and was given up on; the
        // scripted poison message at #10 is still in its retries at 5 s.
        assert_eq!(sub(&l, "processor").counters.dead_lettered, 1);
        let lines = said(&mut rx);
        assert!(lines.iter().any(|s| s.contains("failed #1 and nacked it")), "{lines:?}");
        assert!(lines.iter().any(|s| s.contains("moved to payments-dlq (dead letter)")), "{lines:?}");
    }

    #[tokio::test]
    async fn a_burst_and_a_rewind_show_in_the_backlog() {
        let (mut l, mut rx) = live("fan-out").await;
        l.control(change(Change::Burst, Node::Topic("orders".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("shop sent a burst of 100 messages")));
        assert_eq!(sub(&l, "shipping").backlog, 100);
        l.advance(Duration::from_secs(3)).await.unwrap();
        let lines = said(&mut rx);
        assert!(lines.iter().any(|s| s.contains("shipping is falling behind")), "{lines:?}");
        l.advance(Duration::from_secs(40)).await.unwrap();
        let lines = said(&mut rx);
        assert!(lines.iter().any(|s| s.contains("shipping is 87 behind and catching up")), "{lines:?}");
        assert!(lines.iter().any(|s| s.contains("shipping has caught up")), "{lines:?}");
        let received = consumer(&l.status().await, "billing-svc").received;
        l.control(change(Change::Rewind, Node::Consumer("billing-svc".into()))).await.unwrap();
        assert!(said(&mut rx).iter().any(|s| s.contains("billing seeks back to the start")));
        assert!(sub(&l, "billing").backlog >= received, "everything is due again");
    }

    #[tokio::test]
    async fn after_the_script_the_publishers_carry_on() {
        let (mut l, mut rx) = live("crash").await;
        l.advance(Duration::from_secs(20)).await.unwrap();
        assert_eq!(l.status().await.publishers[0].sent, 80, "the script's count");
        assert!(said(&mut rx).iter().any(|s| s.contains("the script is over")));
        l.advance(Duration::from_secs(2)).await.unwrap();
        let s = l.status().await;
        assert_eq!(s.publishers[0].sent, 96, "8/s from the end of the script on");
        assert_eq!(s.publishers[0].rate, 8.0);
    }
}
