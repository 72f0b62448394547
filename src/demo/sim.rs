//! The simulator: publishers, consumers and timed events of a scenario, stepped every 10 ms. On an
//! in-process engine with a manual clock it runs in virtual time and is fully deterministic for a seed;
//! on any other broker it runs in real time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;

use super::check::Tracker;
use super::progress::{Hold, Phase, Progress};
use super::report::{ConsumerReport, Report, SubscriptionReport};
use super::scenario::{EventAction, Mode, Scenario};
use crate::broker::{
    AckToken, BrokerDelivery, BrokerError, Capability, DeliveryStream, Settle, SharedBroker, StreamItem,
    SubscribeRequest,
};
use crate::engine::Engine;
use crate::model::config::Ordering;
use crate::model::{
    AckMode, Backoff, FetchOptions, ManualClock, Name, Pattern, PublishRequest, Schedule, StartPosition,
    SubscriptionConfig, TopicConfig,
};

/// One simulation step.
pub const TICK: Duration = Duration::from_millis(10);

/// How long the final read of a durable subscription waits for more before it counts.
const DRAIN_IDLE: Duration = Duration::from_millis(1500);

/// How long a real-time run goes on after its end, publishers stopped, before it counts.
const GRACE: Duration = Duration::from_millis(500);

/// How time passes.
pub enum Pace {
    /// Virtual time on this engine's manual clock (headless, deterministic).
    Virtual(Engine, Arc<ManualClock>),
    /// Real time (live demos, other brokers).
    Real,
}

struct Held {
    token: Option<AckToken>,
    seq: u64,
    /// Which sent message it is, for the delivery check.
    msg: Option<usize>,
    done_at: Duration,
    poison: bool,
}

/// A publisher while it runs: its settings, and the phase of its schedule (a rate change or the end
/// of the script starts a new phase, so the new pace applies from then on without a burst).
struct PubState {
    spec: super::scenario::PublisherSpec,
    /// When the current phase began.
    phase_start: Duration,
    /// Sent in the current phase.
    phase_sent: u64,
    /// Most the current phase may send.
    phase_limit: Option<u64>,
    /// Sent in all.
    sent: u64,
    /// Taken off by the teacher.
    removed: bool,
}

/// A subscription the simulation made.
struct SubState {
    name: String,
    topic: String,
    ack_deadline: Duration,
    max_deliveries: u32,
    dead_letter: Option<String>,
    backoff: Vec<Duration>,
    removed: bool,
    /// A durable subscription on the broker; otherwise (a broker without acks) a live subscription
    /// that exists only while someone listens.
    durable: bool,
    /// What a live subscription listens to.
    patterns: Vec<Pattern>,
    /// Live narration: backlog at the last sample, dead letters seen, when it was last spoken of.
    last_backlog: u64,
    last_dead: u64,
    last_told: Option<Duration>,
}

struct ConsumerState {
    name: String,
    subscription: Name,
    mode: Mode,
    process: Duration,
    prefetch: u32,
    poll: Duration,
    fail_rate: f64,
    start: Duration,
    alive: bool,
    crashed: bool,
    last_poll: Option<Duration>,
    busy_until: Duration,
    held: Vec<Held>,
    report: ConsumerReport,
    /// Messages it will fail on purpose (a live control).
    fail_next: u32,
    /// Taken off by the teacher.
    removed: bool,
    /// Received at the last sample, for its rate.
    last_received: u64,
    /// Messages per second over the last simulated second.
    rate: f64,
    /// Away on purpose (an `offline` event) until an `online` one.
    offline: bool,
    /// Its own connection to a durable subscription, when the run reads through streams.
    stream: Option<Conn>,
}

/// A running scenario.
pub struct Sim {
    scenario: Scenario,
    broker: SharedBroker,
    pace: Pace,
    rng: u64,
    now: Duration,
    pubs: Vec<PubState>,
    subs: Vec<SubState>,
    /// Topics and the subjects they capture, for finding what a publisher feeds.
    topics: Vec<(String, Vec<Pattern>)>,
    consumers: Vec<ConsumerState>,
    fired: usize,
    /// Which consumer holds each (subscription, seq), to prove competing consumers never share one.
    holders: HashMap<(Name, u64), usize>,
    report: Report,
    /// Where narrated lines also go while the demo runs live.
    narration: Option<tokio::sync::mpsc::Sender<String>>,
    /// Live: the script does not end the run, and the narration also tells of backlogs and quiet spells.
    live: bool,
    /// When the last line was narrated.
    last_line: Duration,
    /// The delivery check's bookkeeping (headless runs; a live demo runs on and does not count).
    track: Option<Tracker>,
    /// Consumers read through subscribe streams (real time, any broker) rather than fetch (virtual
    /// time on the engine).
    streaming: bool,
    /// Messages carry their ordering keys (the broker has somewhere to put them).
    send_keys: bool,
    /// The one live stream of each live (non-durable) subscription, shared by its consumers.
    live_streams: HashMap<String, Conn>,
    /// Where the counts so far go while a counted real-time run goes on (a `--compare` view).
    on_progress: Option<ProgressFn>,
    /// Pause and stop from outside, for a real-time run.
    hold: Option<tokio::sync::watch::Receiver<Hold>>,
}

/// Receives a counted run's state every [`PROGRESS_EVERY`].
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How often a watched run reports its counts so far.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A stream the simulation owns. The lock is never contended (only `&mut self` reaches it); it makes
/// the simulation shareable between threads as the live runner needs, which a bare stream is not.
type Conn = std::sync::Mutex<DeliveryStream>;

fn conn(stream: DeliveryStream) -> Conn {
    std::sync::Mutex::new(stream)
}

/// The stream inside, also after a panic elsewhere poisoned the lock (a stream has no invariant to break).
fn inner(c: &mut Conn) -> &mut DeliveryStream {
    c.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn into_inner(c: Conn) -> DeliveryStream {
    c.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn name(text: &str) -> Result<Name, BrokerError> {
    Name::new(text).map_err(BrokerError::from)
}

/// What the broker says of subscription `sub`: `None` for a live one (no backlog the broker can
/// tell) and on a broker that reports none (MQTT).
async fn durable_info(
    broker: &SharedBroker,
    subs: &[SubState],
    sub: &str,
) -> Result<Option<crate::model::SubscriptionInfo>, BrokerError> {
    if !subs.iter().any(|x| x.name == sub && x.durable) {
        return Ok(None);
    }
    match broker.subscription_info(&name(sub)?).await {
        Ok(info) => Ok(Some(info)),
        Err(BrokerError::Unsupported { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Sim {
    /// Sets up the scenario's topics and subscriptions on `broker`.
    pub async fn new(
        scenario: Scenario,
        broker: SharedBroker,
        pace: Pace,
        seed: u64,
    ) -> Result<Sim, BrokerError> {
        let caps = broker.capabilities();
        let durable = caps.has(Capability::Ack);
        let mut notes = Vec::new();
        if !durable {
            notes.push(format!(
                "{} has no acks or durable subscriptions: each subscription here is a live one, open while a consumer listens; nothing is redelivered and what is published while nobody listens is not kept",
                broker.kind()
            ));
        }
        let mut topics = Vec::new();
        for t in &scenario.topics {
            let mut config = TopicConfig::new(name(&t.name)?);
            config.subjects = t.subjects.iter().map(|s| Pattern::parse(s)).collect::<Result<_, _>>()?;
            let captures = if config.subjects.is_empty() {
                vec![Pattern::parse(&t.name)?]
            } else {
                config.subjects.clone()
            };
            topics.push((t.name.clone(), captures));
            if let Some(n) = t.max_msgs {
                config.limits.max_msgs = Some(n);
            }
            if !caps.has(Capability::TopicAdmin) {
                // Channels and core subjects exist as soon as someone publishes to them.
                continue;
            }
            match broker.create_topic(config).await {
                Ok(_) | Err(BrokerError::Engine(crate::model::EngineError::TopicExists(_))) => {}
                Err(e) => return Err(e),
            }
        }
        let mut tracker = Tracker::default();
        let mut patterns = Vec::new();
        for s in &scenario.subscriptions {
            let captures = match topics.iter().find(|(t, _)| *t == s.topic) {
                Some((_, captures)) => captures.clone(),
                None => vec![Pattern::parse(&s.topic)?],
            };
            let filter = s.filter.iter().map(|f| Pattern::parse(f)).collect::<Result<Vec<_>, _>>()?;
            tracker.add_subscription(&s.name, captures.clone(), filter.clone());
            if !durable {
                tracker.listen_only(&s.name);
            }
            patterns.push(if filter.is_empty() { captures } else { filter });
            if !durable {
                continue;
            }
            let mut config = SubscriptionConfig::new(name(&s.name)?, name(&s.topic)?);
            config.start = StartPosition::New;
            config.filter = s.filter.iter().map(|f| Pattern::parse(f)).collect::<Result<_, _>>()?;
            config.ack_deadline = s.ack_deadline;
            config.max_deliveries = s.max_deliveries;
            config.dead_letter = s.dead_letter.as_deref().map(name).transpose()?;
            config.backoff =
                if s.backoff.is_empty() { Backoff::Immediate } else { Backoff::List(s.backoff.clone()) };
            config.max_in_flight = 10_000;
            if s.ordering.as_deref() == Some("per-key") {
                // Per-key ordering is the pubsub engine's own (in process or behind `pubsub serve`); the
                // other backends take the setting without honouring it, so it is not asked of them.
                if matches!(broker.kind(), "mem" | "ws") {
                    config.ordering = Ordering::PerKey;
                } else {
                    notes.push(format!(
                        "subscription {}: {} has no per-key ordering (the pubsub engine's); it runs without",
                        s.name,
                        broker.kind()
                    ));
                }
            }
            // A broker that refuses a setting runs without it, and the report says so: per-key
            // ordering first, then immediate redelivery (Redis, say, has its own timing).
            loop {
                let Err(e) = broker.create_subscription(config.clone()).await else { break };
                if matches!(e, BrokerError::Unsupported { .. }) && !caps.has(Capability::Lag) {
                    // A subscription the broker makes itself when its consumer first connects (an MQTT
                    // persistent session), and of which it tells nothing.
                    notes.push(format!(
                        "subscription {}: made by its consumer's first connection (the broker's own session); no lag is reported",
                        s.name
                    ));
                    break;
                }
                if config.ordering != Ordering::None {
                    notes.push(format!(
                        "subscription {}: per-key ordering refused ({e}); it runs without",
                        s.name
                    ));
                    config.ordering = Ordering::None;
                } else if s.backoff.is_empty() && config.backoff == Backoff::Immediate {
                    let note = format!("immediate redelivery refused, the broker's own timing applies: {e}");
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                    config.backoff = Backoff::default();
                } else {
                    return Err(e);
                }
            }
        }
        let needs_keys = scenario.publishers.iter().any(|p| p.keys > 0);
        let send_keys = caps.has(Capability::Headers);
        if needs_keys && !send_keys {
            notes.push(format!(
                "{} carries no message keys: the keys live only in the demo's bookkeeping",
                broker.kind()
            ));
        }
        let consumers = scenario
            .consumers
            .iter()
            .map(|c| {
                Ok(ConsumerState {
                    name: c.name.clone(),
                    subscription: name(&c.subscription)?,
                    mode: c.mode,
                    process: c.process,
                    prefetch: c.prefetch.max(1),
                    poll: c.poll,
                    fail_rate: c.fail_rate,
                    start: c.start,
                    alive: true,
                    crashed: false,
                    last_poll: None,
                    busy_until: Duration::ZERO,
                    held: Vec::new(),
                    report: ConsumerReport {
                        name: c.name.clone(),
                        subscription: c.subscription.clone(),
                        ..ConsumerReport::default()
                    },
                    fail_next: 0,
                    removed: false,
                    last_received: 0,
                    rate: 0.0,
                    offline: false,
                    stream: None,
                })
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        let report = Report {
            scenario: scenario.name.clone(),
            summary: scenario.summary.clone(),
            explain: scenario.explain.clone(),
            seed,
            duration: scenario.duration,
            publishers: scenario.publishers.iter().map(|p| (p.name.clone(), 0)).collect(),
            subscriptions: scenario
                .subscriptions
                .iter()
                .map(|s| SubscriptionReport {
                    name: s.name.clone(),
                    topic: s.topic.clone(),
                    ..SubscriptionReport::default()
                })
                .collect(),
            notes,
            ..Report::default()
        };
        let pubs = scenario
            .publishers
            .iter()
            .map(|p| PubState {
                spec: p.clone(),
                phase_start: p.start,
                phase_sent: 0,
                phase_limit: p.count,
                sent: 0,
                removed: false,
            })
            .collect();
        let subs = scenario
            .subscriptions
            .iter()
            .zip(patterns)
            .map(|(s, patterns)| SubState {
                durable,
                patterns,
                name: s.name.clone(),
                topic: s.topic.clone(),
                ack_deadline: s.ack_deadline,
                max_deliveries: s.max_deliveries,
                dead_letter: s.dead_letter.clone(),
                backoff: s.backoff.clone(),
                removed: false,
                last_backlog: 0,
                last_dead: 0,
                last_told: None,
            })
            .collect();
        let streaming = matches!(pace, Pace::Real) || !durable;
        Ok(Sim {
            track: Some(tracker),
            streaming,
            send_keys,
            live_streams: HashMap::new(),
            pubs,
            subs,
            topics,
            live: false,
            last_line: Duration::ZERO,
            scenario,
            broker,
            pace,
            rng: seed.max(1),
            now: Duration::ZERO,
            consumers,
            fired: 0,
            holders: HashMap::new(),
            report,
            narration: None,
            on_progress: None,
            hold: None,
        })
    }

    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Also sends narrated lines to `tx` as they happen (live demos show them in the TUI).
    pub fn narrating(mut self, tx: tokio::sync::mpsc::Sender<String>) -> Self {
        self.narration = Some(tx);
        self
    }

    /// Also reports the counts so far to `f` every [`PROGRESS_EVERY`] while a counted run goes on, and
    /// once more when it starts counting at the end.
    pub fn watched(mut self, f: ProgressFn) -> Self {
        self.on_progress = Some(f);
        self
    }

    /// A real-time run pauses while `hold` says so (publishers and consumers stand still, the run's
    /// end moves on by as long) and ends early, counting what there is, when it says stop.
    pub fn held(mut self, hold: tokio::sync::watch::Receiver<Hold>) -> Self {
        self.hold = Some(hold);
        self
    }

    /// Hands the counts so far to whoever watches.
    fn report_progress(&mut self, phase: Phase) {
        let (Some(f), Some(track)) = (&self.on_progress, &mut self.track) else { return };
        let published = self.pubs.iter().map(|p| p.sent).sum();
        f(Progress { now: self.now, phase, published, subs: track.progress(self.now) });
    }

    /// Waits while the run is held paused; how long it waited (the run's end moves on by as much).
    /// `None` when it is told to stop.
    async fn held_back(&mut self) -> Option<Duration> {
        let Some(hold) = &mut self.hold else { return Some(Duration::ZERO) };
        let since = tokio::time::Instant::now();
        loop {
            let now = *hold.borrow_and_update();
            if now.stop {
                return None;
            }
            if !now.paused {
                return Some(since.elapsed());
            }
            if hold.changed().await.is_err() {
                // Nobody holds it any more: run on.
                self.hold = None;
                return Some(since.elapsed());
            }
        }
    }

    /// Live: runs until stopped; after the script the publishers carry on, and the narration also tells
    /// of backlogs, dead letters and quiet spells.
    pub fn live(mut self) -> Self {
        self.live = true;
        self.track = None;
        let line = format!("{}: {}", self.scenario.name, self.scenario.summary);
        self.narrate(line);
        self
    }

    fn narrate(&mut self, text: String) {
        self.last_line = self.now;
        let line = format!("{:>6.2}s  {text}", self.now.as_secs_f64());
        if let Some(tx) = &self.narration {
            // A full channel means nobody reads fast enough; the report still keeps the line.
            let _ = tx.try_send(line.clone());
        }
        // The narrative is for people: keep it to a readable length.
        if self.report.narrative.len() < 400 {
            self.report.narrative.push(line);
        }
    }

    /// Runs to the end of the scenario and returns what happened.
    pub async fn run(mut self) -> Result<Report, BrokerError> {
        let steps = self.scenario.duration.as_millis() / TICK.as_millis();
        if self.streaming {
            // Subscribing is not instant on every broker (a SUBSCRIBE is answered later): the streams
            // of those present from the start open before anyone publishes.
            for i in 0..self.consumers.len() {
                if self.consumers[i].start.is_zero() {
                    self.ensure_stream(i).await?;
                }
            }
            if matches!(self.pace, Pace::Real) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let mut started = tokio::time::Instant::now();
        for _ in 0..steps {
            if matches!(self.pace, Pace::Real) {
                match self.held_back().await {
                    Some(paused) => started += paused,
                    None => {
                        self.narrate("stopped before the end of the scenario".into());
                        self.report.duration = self.now;
                        break;
                    }
                }
                self.step().await?;
                tokio::time::sleep_until(started + self.now + TICK).await;
                self.after_step().await?;
            } else {
                self.tick().await?;
            }
        }
        self.report_progress(Phase::Counting);
        if matches!(self.pace, Pace::Real) && self.track.is_some() {
            // Half a second more in which nobody publishes, so what is on its way arrives before the
            // count (virtual time has nothing on its way).
            for p in &mut self.pubs {
                p.removed = true;
            }
            for _ in 0..GRACE.as_millis() / TICK.as_millis() {
                self.step().await?;
                tokio::time::sleep_until(started + self.now + TICK).await;
                self.now += TICK;
            }
        }
        self.finish().await
    }

    /// Simulated time so far.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// One step of `TICK`; on a virtual pace the clock moves by as much (on a real one the caller waits).
    pub async fn tick(&mut self) -> Result<(), BrokerError> {
        self.step().await?;
        if let Pace::Virtual(engine, clock) = &self.pace {
            clock.advance(TICK);
            engine.tick();
        }
        self.after_step().await
    }

    async fn after_step(&mut self) -> Result<(), BrokerError> {
        self.now += TICK;
        if self.now.as_millis().is_multiple_of(1000) {
            self.sample().await?;
        }
        if self.now.as_millis().is_multiple_of(PROGRESS_EVERY.as_millis()) {
            self.report_progress(Phase::Running);
        }
        if self.live && self.now == self.scenario.duration {
            self.encore();
        }
        Ok(())
    }

    /// Live, at the end of the script: every publisher carries on at its rate with no count.
    fn encore(&mut self) {
        let now = self.now;
        for p in self.pubs.iter_mut().filter(|p| !p.removed) {
            p.phase_start = now.max(p.spec.start);
            p.phase_sent = 0;
            p.phase_limit = None;
        }
        self.narrate(
            "the script is over; publishers keep going until you quit (press ? for the controls)".into(),
        );
    }

    async fn step(&mut self) -> Result<(), BrokerError> {
        self.fire_events().await?;
        self.publish().await?;
        // Consumers take turns going first, so competing consumers share fairly rather than by list order.
        let n = self.consumers.len();
        let first = usize::try_from(self.now.as_millis() / TICK.as_millis()).unwrap_or(0) % n.max(1);
        for k in 0..n {
            self.consume((first + k) % n).await?;
        }
        Ok(())
    }

    async fn fire_events(&mut self) -> Result<(), BrokerError> {
        while let Some(event) = self.scenario.events.get(self.fired).filter(|e| e.at <= self.now).cloned() {
            self.fired += 1;
            let consumer =
                event.consumer.as_deref().and_then(|n| self.consumers.iter().position(|c| c.name == n));
            match (event.action, consumer) {
                (EventAction::Pace, Some(i)) => {
                    let process = event.process.unwrap_or(self.consumers[i].process);
                    self.consumers[i].process = process;
                    let who = self.consumers[i].name.clone();
                    self.narrate(format!("{who} now takes {process:?} per message"));
                }
                (EventAction::Crash, Some(i)) => {
                    // On a live subscription nobody will deliver what it held again.
                    if self.sub_of(i).is_some_and(|s| !self.subs[s].durable)
                        && let Some(track) = &mut self.track
                    {
                        let sub = self.consumers[i].subscription.as_str();
                        for msg in self.consumers[i].held.iter().filter_map(|h| h.msg) {
                            track.gone(sub, msg);
                        }
                    }
                    let c = &mut self.consumers[i];
                    c.alive = false;
                    c.crashed = true;
                    let lost = c.held.len();
                    c.held.clear();
                    // Its connection dies with it.
                    c.stream = None;
                    let who = c.name.clone();
                    self.close_idle_live_stream(i);
                    self.narrate(format!(
                        "{who} CRASHED holding {lost} message(s); their leases will run out"
                    ));
                }
                (EventAction::Resume, Some(i)) => {
                    self.consumers[i].alive = true;
                    let who = self.consumers[i].name.clone();
                    self.narrate(format!("{who} is back"));
                }
                (EventAction::Offline, Some(i)) => self.go_offline(i).await?,
                (EventAction::Online, Some(i)) => {
                    self.consumers[i].offline = false;
                    self.consumers[i].busy_until = self.now;
                    let who = self.consumers[i].name.clone();
                    let durable = self.sub_of(i).is_none_or(|s| self.subs[s].durable);
                    self.narrate(if durable {
                        format!("{who} is back online: what was published meanwhile waits for it")
                    } else {
                        format!(
                            "{who} is back online and listens again: what was published meanwhile is gone"
                        )
                    });
                }
                (EventAction::Seek, _) => {
                    let sub = name(event.subscription.as_deref().unwrap_or_default())?;
                    let target = match event.target.as_deref().unwrap_or("start") {
                        "start" => crate::model::SeekTarget::Start,
                        "end" => crate::model::SeekTarget::End,
                        seq => crate::model::SeekTarget::Seq { partition: 0, seq: seq.parse().unwrap_or(1) },
                    };
                    let next = match self.broker.seek(&sub, target).await {
                        Ok(next) => next,
                        Err(e) => {
                            self.narrate(format!("{sub} cannot seek here: {e}"));
                            continue;
                        }
                    };
                    for c in self.consumers.iter_mut().filter(|c| c.subscription == sub) {
                        // Leases from before the seek are void; what the consumer holds is forgotten.
                        c.held.clear();
                    }
                    self.holders.retain(|(s, _), _| *s != sub);
                    self.narrate(format!(
                        "{sub} SEEKS back: everything from seq {next} will be delivered again"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn publish(&mut self) -> Result<(), BrokerError> {
        for i in 0..self.pubs.len() {
            let p = &self.pubs[i];
            if p.removed || self.now < p.phase_start {
                continue;
            }
            // Each tick sends what is due by its end as one batch, on the pacing arithmetic `pub --rate`
            // uses. A demo publisher's first message comes one gap after it starts (5/s: at 0.2 s), so
            // the schedule's message at zero is not one of its own.
            let due = Schedule::rate(p.spec.rate)
                .due(self.now + TICK - p.phase_start)
                .saturating_sub(1)
                .min(p.phase_limit.unwrap_or(u64::MAX));
            let todo = due.saturating_sub(p.phase_sent);
            self.send(i, todo).await?;
            self.pubs[i].phase_sent += todo;
        }
        Ok(())
    }

    /// Publisher `i` sends `n` messages now.
    async fn send(&mut self, i: usize, n: u64) -> Result<(), BrokerError> {
        if n == 0 {
            return Ok(());
        }
        let mut batch = Vec::new();
        for _ in 0..n {
            let p = &mut self.pubs[i];
            p.sent += 1;
            let n = p.sent;
            let subject = &p.spec.subjects[usize::try_from(n - 1).unwrap_or(0) % p.spec.subjects.len()];
            let mut payload = p
                .spec
                .payload
                .replace("{{seq}}", &n.to_string())
                .replace("{{publisher}}", &p.spec.name)
                .replace("{{subject}}", subject);
            if p.spec.poison_every > 0 && n.is_multiple_of(p.spec.poison_every) {
                payload = format!(r#"{{"from":"{}","n":{n},"poison":true}}"#, p.spec.name);
            }
            // Keys k1..kN in turn.
            let keys = u64::from(p.spec.keys);
            let key = (keys > 0).then(|| u32::try_from((n - 1) % keys).unwrap_or(0) + 1);
            let payload = Bytes::from(payload);
            let subject = name(subject)?;
            if let Some(track) = &mut self.track {
                track.published(i, n, key, subject.clone(), payload.clone(), self.now);
                // A live subscription nobody listens to is not there: the message is gone for it.
                for sub in self.subs.iter().filter(|s| !s.durable && !s.removed) {
                    if !self.live_streams.contains_key(&sub.name) {
                        track.unheard(&sub.name);
                    }
                }
            }
            let mut request = PublishRequest::new(subject, payload);
            if self.send_keys {
                request.key = key.map(|k| Bytes::from(format!("k{k}")));
            }
            batch.push(request);
        }
        let who = self.pubs[i].spec.name.clone();
        self.broker.publish_batch(batch).await?;
        match self.report.publishers.iter_mut().find(|(name, _)| *name == who) {
            Some(entry) => entry.1 += n,
            None => self.report.publishers.push((who, n)),
        }
        Ok(())
    }

    async fn consume(&mut self, i: usize) -> Result<(), BrokerError> {
        let now = self.now;
        let c = &self.consumers[i];
        if !c.alive || c.removed || c.offline || now < c.start {
            return Ok(());
        }
        // Finish what is done.
        let done: Vec<Held> = {
            let c = &mut self.consumers[i];
            let (done, keep): (Vec<Held>, Vec<Held>) =
                std::mem::take(&mut c.held).into_iter().partition(|h| h.done_at <= now);
            c.held = keep;
            done
        };
        for h in done {
            // A failure asked for by the teacher comes before the dice (which are then not thrown, so a
            // run without live controls draws the same numbers as ever).
            let forced = self.consumers[i].fail_next > 0;
            if forced {
                self.consumers[i].fail_next -= 1;
            }
            let fail = h.poison || forced || self.random() < self.consumers[i].fail_rate;
            let sub = self.consumers[i].subscription.clone();
            self.holders.remove(&(sub.clone(), h.seq));
            if let Some(token) = &h.token {
                let how = if fail { Settle::Nack(None) } else { Settle::Ack };
                // A lease that went stale (seek, expiry) is refused; that is the point of leases.
                let _ = self.broker.settle(token, how).await;
            }
            let who = self.consumers[i].name.clone();
            if fail {
                self.consumers[i].report.nacked += 1;
                self.narrate(format!("{who} failed #{} and nacked it", h.seq));
            } else {
                self.consumers[i].report.acked += 1;
                if let (Some(track), Some(msg)) = (&mut self.track, h.msg) {
                    track.completed(sub.as_str(), msg);
                }
            }
        }
        // Ask for more when there is room (push: at once; pull: on its poll interval).
        let c = &self.consumers[i];
        let room = c.prefetch.saturating_sub(u32::try_from(c.held.len()).unwrap_or(u32::MAX));
        let due = match c.mode {
            Mode::Push => true,
            Mode::Pull => c.last_poll.is_none_or(|last| now >= last + c.poll),
        };
        if room == 0 || !due {
            return Ok(());
        }
        self.consumers[i].last_poll = Some(now);
        let opts = FetchOptions {
            max_msgs: room as usize,
            max_bytes: u64::MAX,
            wait: None,
            prefetch: Some(self.consumers[i].prefetch),
        };
        let (sub, who) = (self.consumers[i].subscription.clone(), self.consumers[i].name.clone());
        let batch = if self.streaming {
            self.ensure_stream(i).await?;
            self.take(i, room as usize)
        } else {
            self.broker.fetch(&sub, &who, opts).await?
        };
        for d in batch {
            let seq = d.message.seq;
            let msg = self.track.as_ref().and_then(|t| t.identify(&d.message.payload));
            if let (Some(track), Some(msg)) = (&mut self.track, msg) {
                track.received(sub.as_str(), msg, now);
            }
            // Only leased deliveries can be held twice; a live message has no lease (nor, on some
            // brokers, a position).
            if d.token.is_some() {
                if let Some(&other) = self.holders.get(&(sub.clone(), seq))
                    && other != i
                    && !self.consumers[other].crashed
                {
                    self.report.double_holds += 1;
                }
                self.holders.insert((sub.clone(), seq), i);
            }
            let attempt = d.attempt.unwrap_or(1);
            let c = &mut self.consumers[i];
            c.report.received += 1;
            if attempt > 1 {
                c.report.redelivered += 1;
            }
            c.busy_until = c.busy_until.max(now) + c.process;
            let poison = String::from_utf8_lossy(&d.message.payload).contains("poison");
            let done_at = c.busy_until;
            c.held.push(Held { token: d.token, seq, msg, done_at, poison });
            if attempt > 1 {
                self.narrate(format!("#{seq} redelivered to {who} (attempt {attempt})"));
            }
        }
        Ok(())
    }

    /// The index of consumer `i`'s subscription among the simulation's.
    fn sub_of(&self, i: usize) -> Option<usize> {
        let sub = self.consumers[i].subscription.as_str();
        self.subs.iter().position(|s| s.name == sub && !s.removed)
    }

    /// Opens consumer `i`'s connection when it reads through streams and has none: its own member
    /// stream of a durable subscription, or its subscription's shared live stream.
    async fn ensure_stream(&mut self, i: usize) -> Result<(), BrokerError> {
        let Some(s) = self.sub_of(i) else { return Ok(()) };
        let sub = &self.subs[s];
        if sub.durable {
            if self.consumers[i].stream.is_some() {
                return Ok(());
            }
            let c = &self.consumers[i];
            let req = SubscribeRequest {
                subscription: Some(name(&sub.name)?),
                ack: AckMode::Explicit,
                consumer: Some(c.name.clone()),
                prefetch: Some(c.prefetch),
                ..SubscribeRequest::live(vec![Pattern::parse(&sub.topic)?])
            };
            let stream = self.broker.subscribe(req).await?;
            self.consumers[i].stream = Some(conn(stream));
            return Ok(());
        }
        if self.live_streams.contains_key(&sub.name) {
            return Ok(());
        }
        let prefetch = self
            .consumers
            .iter()
            .filter(|c| c.subscription.as_str() == sub.name)
            .map(|c| c.prefetch)
            .max()
            .unwrap_or(10);
        let req =
            SubscribeRequest { prefetch: Some(prefetch), ..SubscribeRequest::live(sub.patterns.clone()) };
        let name = sub.name.clone();
        let stream = self.broker.subscribe(req).await?;
        self.live_streams.insert(name, conn(stream));
        Ok(())
    }

    /// Up to `room` deliveries ready on consumer `i`'s stream now.
    fn take(&mut self, i: usize, room: usize) -> Vec<BrokerDelivery> {
        let sub = self.consumers[i].subscription.to_string();
        let durable = self.sub_of(i).is_none_or(|s| self.subs[s].durable);
        let stream =
            if durable { self.consumers[i].stream.as_mut() } else { self.live_streams.get_mut(&sub) };
        let Some(stream) = stream else { return Vec::new() };
        let (out, dropped, failed) = drain_ready(inner(stream), room);
        if let Some(e) = failed {
            // The connection broke: it opens again on the next step.
            if durable {
                self.consumers[i].stream = None;
            } else {
                self.live_streams.remove(&sub);
            }
            self.narrate(format!("{sub}: the broker ended the stream ({e}); subscribing again"));
        }
        if dropped > 0 {
            if let Some(track) = &mut self.track {
                track.dropped(&sub, dropped);
            }
            self.narrate(format!("{sub}: {dropped} message(s) DROPPED before reaching the consumer"));
        }
        out
    }

    /// A live subscription's stream closes when none of its consumers listens any more.
    fn close_idle_live_stream(&mut self, i: usize) {
        let sub = self.consumers[i].subscription.clone();
        let listening =
            self.consumers.iter().any(|c| c.subscription == sub && c.alive && !c.offline && !c.removed);
        if !listening {
            self.live_streams.remove(sub.as_str());
        }
    }

    /// Consumer `i` goes away cleanly: it finishes (acks) what it holds and what its connection had
    /// already received, then disconnects.
    async fn go_offline(&mut self, i: usize) -> Result<(), BrokerError> {
        let held = std::mem::take(&mut self.consumers[i].held);
        let sub = self.consumers[i].subscription.clone();
        let mut finished: Vec<(Option<AckToken>, Option<usize>)> =
            held.into_iter().map(|h| (h.token, h.msg)).collect();
        if self.streaming {
            let durable = self.sub_of(i).is_none_or(|s| self.subs[s].durable);
            let others = self
                .consumers
                .iter()
                .enumerate()
                .any(|(k, c)| k != i && c.subscription == sub && c.alive && !c.offline && !c.removed);
            // What its connection already received is read off (the connection stays open until it is
            // all acked: a broker refuses acks on a closed one and delivers them again).
            let buffered = if durable {
                self.consumers[i].stream.as_mut().map(|s| drain_ready(inner(s), usize::MAX).0)
            } else if !others {
                self.live_streams.get_mut(sub.as_str()).map(|s| drain_ready(inner(s), usize::MAX).0)
            } else {
                None
            };
            for d in buffered.unwrap_or_default() {
                let msg = self.track.as_ref().and_then(|t| t.identify(&d.message.payload));
                if let (Some(track), Some(msg)) = (&mut self.track, msg) {
                    track.received(sub.as_str(), msg, self.now);
                }
                self.consumers[i].report.received += 1;
                finished.push((d.token, msg));
            }
        }
        for (token, msg) in &finished {
            if let Some(token) = token {
                let _ = self.broker.settle(token, Settle::Ack).await;
            }
            if let (Some(track), Some(msg)) = (&mut self.track, msg) {
                track.completed(sub.as_str(), *msg);
            }
            self.consumers[i].report.acked += 1;
        }
        self.holders.retain(|(s, _), holder| !(*s == sub && *holder == i));
        self.consumers[i].offline = true;
        self.consumers[i].stream = None;
        self.close_idle_live_stream(i);
        let c = &mut self.consumers[i];
        let who = c.name.clone();
        let durable = self.sub_of(i).is_none_or(|s| self.subs[s].durable);
        self.narrate(if durable {
            format!(
                "{who} goes OFFLINE (finished its {} message(s)); its subscription keeps what comes",
                finished.len()
            )
        } else {
            format!("{who} goes OFFLINE and stops listening: nobody keeps what is published now")
        });
        Ok(())
    }

    /// At the end of a counted run: what each subscription still keeps, read off quickly (no
    /// processing time) and acked, so the check can tell "late" from "lost".
    async fn drain(&mut self) -> Result<(), BrokerError> {
        let Some(mut track) = self.track.take() else { return Ok(()) };
        for c in self.consumers.iter().filter(|c| c.alive && !c.removed) {
            for msg in c.held.iter().filter_map(|h| h.msg) {
                track.in_hand(c.subscription.as_str(), msg);
            }
        }
        let mut found: Vec<(String, BrokerDelivery)> = Vec::new();
        if self.streaming {
            for c in &mut self.consumers {
                if let Some(stream) = c.stream.take() {
                    let sub = c.subscription.to_string();
                    let ready = drain_ready(&mut into_inner(stream), usize::MAX).0;
                    found.extend(ready.into_iter().map(|d| (sub.clone(), d)));
                }
            }
            for (sub, stream) in std::mem::take(&mut self.live_streams) {
                let ready = drain_ready(&mut into_inner(stream), usize::MAX).0;
                found.extend(ready.into_iter().map(|d| (sub.clone(), d)));
            }
        }
        // A log whose subscriptions are one committed offset per partition (Kafka): what it keeps for a
        // subscription is everything from each partition's committed offset on, read as history. Joining
        // the group to find out would wait for a rebalance (seconds, longer while members that just left
        // are still counted) and could end before the group assigns anything.
        let caps = self.broker.capabilities();
        let log_floors = caps.has(Capability::CumulativeAck) && caps.has(Capability::Replay);
        for s in self.subs.iter().filter(|s| s.durable && !s.removed) {
            let sub = name(&s.name)?;
            if self.streaming && log_floors {
                let topic = name(&s.topic)?;
                found.extend(
                    kept_past_floors(&self.broker, &sub, &topic)
                        .await?
                        .into_iter()
                        .map(|m| (s.name.clone(), BrokerDelivery::untracked(m))),
                );
            } else if self.streaming {
                let req = SubscribeRequest {
                    subscription: Some(sub.clone()),
                    ack: AckMode::Explicit,
                    consumer: Some("drain".into()),
                    prefetch: Some(500),
                    ..SubscribeRequest::live(vec![Pattern::parse(&s.topic)?])
                };
                let Ok(mut stream) = self.broker.subscribe(req).await else { continue };
                // Until nothing more comes for DRAIN_IDLE (at most five seconds in all). Long enough for
                // a reader that claims what a dead consumer left pending (Redis, once a second) to do so.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let mut idle = tokio::time::Instant::now() + DRAIN_IDLE;
                loop {
                    let until = idle.min(deadline);
                    match tokio::time::timeout_at(until, stream.next()).await {
                        Ok(Some(Ok(StreamItem::Delivery(d)))) => {
                            if let Some(token) = &d.token {
                                let _ = self.broker.settle(token, Settle::Ack).await;
                            }
                            found.push((s.name.clone(), d));
                            idle = tokio::time::Instant::now() + DRAIN_IDLE;
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => break,
                    }
                }
            } else {
                // Virtual time on the engine: what the topic still holds is read without consuming it,
                // so the run's end state (shown in the topology) stays as the scenario left it.
                // The log also holds what was acked or given up on: what is kept is at most the backlog.
                if let Some(r) = self.report.subscriptions.iter().find(|r| r.name == s.name) {
                    track.waiting_at_most(&s.name, r.backlog);
                }
                let topic = name(&s.topic)?;
                let mut from = 1;
                for _ in 0..1000 {
                    let batch = self.broker.browse(&topic, crate::model::BrowseFrom::Seq(from), 500).await?;
                    let Some(last) = batch.last().map(|m| m.seq) else { break };
                    from = last + 1;
                    found.extend(batch.into_iter().map(|m| (s.name.clone(), BrokerDelivery::untracked(m))));
                }
            }
        }
        for (sub, d) in found {
            if let Some(msg) = track.identify(&d.message.payload) {
                track.waiting(&sub, msg);
            }
        }
        self.report.checks = track.checks();
        Ok(())
    }

    async fn sample(&mut self) -> Result<(), BrokerError> {
        let mut infos = Vec::new();
        for s in &mut self.report.subscriptions {
            let Some(info) = durable_info(&self.broker, &self.subs, &s.name).await? else {
                continue;
            };
            s.lag.push(info.backlog);
            infos.push(info);
        }
        for c in &mut self.consumers {
            c.rate = (c.report.received - c.last_received) as f64;
            c.last_received = c.report.received;
        }
        if self.live {
            self.tell_backlogs(&infos);
        }
        Ok(())
    }

    /// Live narration, once a simulated second: backlogs that build up, drain or clear, dead letters,
    /// and a word about the flow when nothing else was said for a while.
    fn tell_backlogs(&mut self, infos: &[crate::model::SubscriptionInfo]) {
        const BEHIND: u64 = 10;
        let now = self.now;
        let mut lines = Vec::new();
        for info in infos {
            let Some(s) = self.subs.iter_mut().find(|s| s.name == info.name.as_str() && !s.removed) else {
                continue;
            };
            let (was, is) = (s.last_backlog, info.backlog);
            let dead = info.counters.dead_lettered + info.counters.terminated;
            if dead > s.last_dead {
                let n = dead - s.last_dead;
                let whither =
                    s.dead_letter.as_deref().map_or("dropped".to_string(), |d| format!("moved to {d}"));
                lines.push(format!(
                    "{n} message(s) of {} failed {} times and were {whither} (dead letter)",
                    s.name, s.max_deliveries
                ));
            }
            let quiet_for = s.last_told.map_or(Duration::MAX, |t| now.saturating_sub(t));
            if is >= BEHIND && was < BEHIND {
                lines.push(format!("{} is falling behind: {is} messages waiting", s.name));
                s.last_told = Some(now);
            } else if is >= BEHIND && quiet_for >= Duration::from_secs(3) {
                let how = if is > was {
                    "and falling further behind"
                } else if is < was {
                    "and catching up"
                } else {
                    "and holding"
                };
                lines.push(format!("{} is {is} behind {how}", s.name));
                s.last_told = Some(now);
            } else if is < BEHIND && was >= BEHIND {
                lines.push(format!("{} has caught up ({is} waiting)", s.name));
                s.last_told = Some(now);
            }
            s.last_backlog = is;
            s.last_dead = dead;
        }
        if lines.is_empty() && now.saturating_sub(self.last_line) >= Duration::from_secs(5) {
            let rate: f64 = self.pubs.iter().filter(|p| self.publishing(p)).map(|p| p.spec.rate).sum();
            let backlog: u64 = infos.iter().map(|i| i.backlog).sum();
            lines.push(if rate > 0.0 {
                format!("steady: {rate:.0} msgs/s published, {backlog} waiting in all")
            } else {
                format!(
                    "no publisher is sending; {backlog} waiting in all (w adds a publisher, b sends a burst)"
                )
            });
        }
        for line in lines {
            self.narrate(line);
        }
    }

    /// Whether `p` sends at this moment.
    fn publishing(&self, p: &PubState) -> bool {
        !p.removed && self.now >= p.phase_start && p.phase_limit.is_none_or(|l| p.phase_sent < l)
    }

    async fn finish(mut self) -> Result<Report, BrokerError> {
        for s in &mut self.report.subscriptions {
            let Some(info) = durable_info(&self.broker, &self.subs, &s.name).await? else {
                continue;
            };
            s.delivered = info.counters.delivered;
            s.acked = info.counters.acked;
            s.redeliveries = info.counters.redeliveries;
            s.dead_lettered = info.counters.dead_lettered;
            s.terminated = info.counters.terminated;
            s.backlog = info.backlog;
        }
        self.drain().await?;
        self.report.consumers = self.consumers.into_iter().map(|c| c.report).collect();
        Ok(self.report)
    }
}

/// A node of the topology, as the teacher picked it: controls act on it or on the nearest node of the
/// kind they need (crash on a subscription crashes its first consumer; a rate change on a consumer
/// changes the publisher feeding its topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A simulated publisher.
    Publisher(String),
    /// A topic.
    Topic(String),
    /// A subscription.
    Subscription(String),
    /// A simulated consumer.
    Consumer(String),
}

/// What the teacher can change while a demo runs. Time controls (pause, speed, step, restart) belong to
/// the live runner; these act on the simulation itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A copy of the nearest publisher (or one on the nearest topic) starts publishing.
    AddPublisher,
    /// The nearest publisher stops for good.
    RemovePublisher,
    /// A new subscription on the nearest topic.
    AddSubscription,
    /// The nearest subscription is deleted with its consumers.
    RemoveSubscription,
    /// A new consumer competes on the nearest subscription.
    AddConsumer,
    /// The nearest consumer leaves cleanly: what it holds goes back at once.
    RemoveConsumer,
    /// The nearest publisher sends twice as fast.
    RateUp,
    /// The nearest publisher sends half as fast.
    RateDown,
    /// The nearest consumer takes twice as long per message.
    SlowDown,
    /// The nearest consumer takes half as long per message.
    SpeedUp,
    /// The nearest consumer crashes (or, when crashed, comes back).
    Crash,
    /// The nearest consumer fails its next `FAIL_COUNT` messages.
    Fail,
    /// The nearest publisher sends `BURST` messages at once.
    Burst,
    /// The nearest subscription seeks back to the start of its topic.
    Rewind,
}

/// Messages a `Fail` control makes a consumer fail.
pub const FAIL_COUNT: u32 = 3;
/// Messages a `Burst` sends.
pub const BURST: u64 = 100;

/// A publisher as the live view shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublisherStatus {
    /// Name.
    pub name: String,
    /// Subjects it publishes to.
    pub subjects: Vec<String>,
    /// Messages per second it sends now (0 when done or not started).
    pub rate: f64,
    /// Sent in all.
    pub sent: u64,
}

/// A consumer as the live view shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsumerStatus {
    /// Name.
    pub name: String,
    /// Its subscription.
    pub subscription: String,
    /// Time per message.
    #[serde(with = "crate::model::clock::millis")]
    pub process: Duration,
    /// Crashed (and not back).
    pub crashed: bool,
    /// Messages it holds.
    pub held: usize,
    /// Received in all.
    pub received: u64,
    /// Of which redeliveries.
    pub redelivered: u64,
    /// Nacked in all.
    pub nacked: u64,
    /// Failures still to come on purpose.
    pub fail_next: u32,
    /// Messages received over the last simulated second.
    pub rate: f64,
}

fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 { format!("{s:.0} s") } else { format!("{s:.1} s") }
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 10.0 || r.fract() == 0.0 { format!("{r:.0}/s") } else { format!("{r:.1}/s") }
}

impl Sim {
    /// The scenario being run.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Publishers as they are now.
    pub fn publisher_status(&self) -> Vec<PublisherStatus> {
        self.pubs
            .iter()
            .filter(|p| !p.removed)
            .map(|p| PublisherStatus {
                name: p.spec.name.clone(),
                subjects: p.spec.subjects.clone(),
                rate: if self.publishing(p) { p.spec.rate } else { 0.0 },
                sent: p.sent,
            })
            .collect()
    }

    /// Consumers as they are now.
    pub fn consumer_status(&self) -> Vec<ConsumerStatus> {
        self.consumers
            .iter()
            .filter(|c| !c.removed)
            .map(|c| ConsumerStatus {
                name: c.name.clone(),
                subscription: c.subscription.to_string(),
                process: c.process,
                crashed: c.crashed && !c.alive,
                held: c.held.len(),
                received: c.report.received,
                redelivered: c.report.redelivered,
                nacked: c.report.nacked,
                fail_next: c.fail_next,
                rate: c.rate,
            })
            .collect()
    }

    fn topic_of_subject(&self, subject: &str) -> Option<String> {
        self.topics.iter().find(|(_, pats)| pats.iter().any(|p| p.matches(subject))).map(|(t, _)| t.clone())
    }

    fn topics_of_pub(&self, p: &PubState) -> Vec<String> {
        p.spec.subjects.iter().filter_map(|s| self.topic_of_subject(s)).collect()
    }

    fn sub_index(&self, sub: &str) -> Option<usize> {
        self.subs.iter().position(|s| s.name == sub && !s.removed)
    }

    /// The topic nearest `near`.
    fn topic_near(&self, near: Option<&Node>) -> Option<String> {
        let first = || self.topics.first().map(|(t, _)| t.clone());
        match near {
            Some(Node::Topic(t)) => Some(t.clone()),
            Some(Node::Subscription(s)) => self.sub_index(s).map(|i| self.subs[i].topic.clone()),
            Some(Node::Consumer(c)) => {
                let i = self.consumer_index(c)?;
                let sub = self.consumers[i].subscription.to_string();
                self.sub_index(&sub).map(|i| self.subs[i].topic.clone())
            }
            Some(Node::Publisher(p)) => self
                .pubs
                .iter()
                .find(|x| x.spec.name == *p)
                .and_then(|p| self.topics_of_pub(p).into_iter().next()),
            None => first(),
        }
        .or_else(first)
    }

    fn consumer_index(&self, name: &str) -> Option<usize> {
        self.consumers.iter().position(|c| c.name == name && !c.removed)
    }

    /// The consumer nearest `near`: it, or the first (preferably running) consumer downstream.
    fn consumer_near(&self, near: Option<&Node>) -> Option<usize> {
        if let Some(Node::Consumer(c)) = near {
            return self.consumer_index(c);
        }
        let subs: Vec<String> = match near {
            Some(Node::Subscription(s)) => vec![s.clone()],
            _ => {
                let topic = self.topic_near(near);
                self.subs
                    .iter()
                    .filter(|s| !s.removed && Some(&s.topic) == topic.as_ref())
                    .map(|s| s.name.clone())
                    .collect()
            }
        };
        let candidates: Vec<usize> = (0..self.consumers.len())
            .filter(|&i| {
                !self.consumers[i].removed
                    && subs.iter().any(|s| self.consumers[i].subscription.as_str() == s)
            })
            .collect();
        candidates.iter().copied().find(|&i| self.consumers[i].alive).or_else(|| candidates.first().copied())
    }

    /// The subscription nearest `near`.
    fn subscription_near(&self, near: Option<&Node>) -> Option<usize> {
        match near {
            Some(Node::Subscription(s)) => self.sub_index(s),
            Some(Node::Consumer(c)) => {
                let i = self.consumer_index(c)?;
                let sub = self.consumers[i].subscription.to_string();
                self.sub_index(&sub)
            }
            _ => {
                let topic = self.topic_near(near);
                self.subs.iter().position(|s| !s.removed && Some(&s.topic) == topic.as_ref())
            }
        }
    }

    /// The publisher nearest `near`: it, or the first one feeding the nearest topic.
    fn publisher_near(&self, near: Option<&Node>) -> Option<usize> {
        if let Some(Node::Publisher(p)) = near {
            return self.pubs.iter().position(|x| x.spec.name == *p && !x.removed);
        }
        let topic = self.topic_near(near);
        let live = |i: &usize| !self.pubs[*i].removed;
        (0..self.pubs.len())
            .filter(live)
            .find(|&i| topic.as_ref().is_some_and(|t| self.topics_of_pub(&self.pubs[i]).contains(t)))
            .or_else(|| (0..self.pubs.len()).find(live))
    }

    /// `base`, or `base-2`, `base-3`… whichever no publisher, subscription or consumer has.
    fn fresh_name(&self, base: &str) -> String {
        let taken = |n: &str| {
            self.pubs.iter().any(|p| p.spec.name == n)
                || self.subs.iter().any(|s| s.name == n)
                || self.consumers.iter().any(|c| c.name == n)
        };
        if !taken(base) {
            return base.to_string();
        }
        let stem = match base.rsplit_once('-') {
            Some((stem, n)) if n.parse::<u32>().is_ok() => stem,
            _ => base,
        };
        (2..).map(|k| format!("{stem}-{k}")).find(|n| !taken(n)).unwrap_or_else(|| base.to_string())
    }

    /// Applies a live change to what `near` is (or the nearest node it needs), and narrates it.
    pub async fn apply(&mut self, change: Change, near: Option<&Node>) -> Result<(), BrokerError> {
        let now = self.now;
        match change {
            Change::AddPublisher => {
                let spec = match self.publisher_near(near) {
                    Some(i) => super::scenario::PublisherSpec {
                        count: None,
                        start: now,
                        ..self.pubs[i].spec.clone()
                    },
                    None => {
                        let Some(topic) = self.topic_near(near) else {
                            self.narrate("there is no topic to publish to".into());
                            return Ok(());
                        };
                        super::scenario::PublisherSpec {
                            name: "publisher".into(),
                            subjects: vec![topic],
                            rate: 2.0,
                            count: None,
                            start: now,
                            payload: super::scenario::default_payload(),
                            poison_every: 0,
                            keys: 0,
                        }
                    }
                };
                let name = self.fresh_name(&spec.name);
                let topics =
                    spec.subjects.iter().filter_map(|s| self.topic_of_subject(s)).collect::<Vec<_>>();
                self.narrate(format!(
                    "new publisher {name} sends {} to {}",
                    fmt_rate(spec.rate),
                    if topics.is_empty() { spec.subjects.join(", ") } else { topics.join(", ") }
                ));
                self.pubs.push(PubState {
                    spec: super::scenario::PublisherSpec { name, ..spec },
                    phase_start: now,
                    phase_sent: 0,
                    phase_limit: None,
                    sent: 0,
                    removed: false,
                });
            }
            Change::RemovePublisher => {
                let Some(i) = self.publisher_near(near) else {
                    self.narrate("there is no publisher to remove".into());
                    return Ok(());
                };
                self.pubs[i].removed = true;
                let who = self.pubs[i].spec.name.clone();
                self.narrate(format!("{who} stopped publishing and left; what it sent stays in the topic"));
            }
            Change::AddSubscription => {
                let Some(topic) = self.topic_near(near) else {
                    self.narrate("there is no topic to subscribe to".into());
                    return Ok(());
                };
                let sub = self.fresh_name(&format!("{topic}-reader"));
                let mut config = SubscriptionConfig::new(name(&sub)?, name(&topic)?);
                config.start = StartPosition::New;
                config.ack_deadline = Duration::from_secs(10);
                config.max_in_flight = 10_000;
                self.broker.create_subscription(config).await?;
                self.subs.push(SubState {
                    name: sub.clone(),
                    topic: topic.clone(),
                    ack_deadline: Duration::from_secs(10),
                    max_deliveries: 0,
                    dead_letter: None,
                    backoff: Vec::new(),
                    removed: false,
                    durable: true,
                    patterns: Vec::new(),
                    last_backlog: 0,
                    last_dead: 0,
                    last_told: Some(now),
                });
                self.report.subscriptions.push(SubscriptionReport {
                    name: sub.clone(),
                    topic: topic.clone(),
                    ..SubscriptionReport::default()
                });
                self.narrate(format!(
                    "new subscription {sub} on {topic}: from now on it gets every message too; with no consumer its backlog grows (c adds one)"
                ));
            }
            Change::RemoveSubscription => {
                let Some(i) = self.subscription_near(near) else {
                    self.narrate("there is no subscription to remove".into());
                    return Ok(());
                };
                let sub = self.subs[i].name.clone();
                self.broker.delete_subscription(&name(&sub)?).await?;
                self.subs[i].removed = true;
                self.report.subscriptions.retain(|s| s.name != sub);
                let mut gone = 0;
                for c in self.consumers.iter_mut().filter(|c| c.subscription.as_str() == sub && !c.removed) {
                    c.removed = true;
                    c.alive = false;
                    c.held.clear();
                    gone += 1;
                }
                self.holders.retain(|(s, _), _| s.as_str() != sub);
                self.narrate(format!(
                    "subscription {sub} deleted with its {gone} consumer(s); the topic and the other subscriptions are untouched"
                ));
            }
            Change::AddConsumer => {
                let Some(si) = self.subscription_near(near) else {
                    self.narrate("there is no subscription to consume from".into());
                    return Ok(());
                };
                let sub = self.subs[si].name.clone();
                let template = self
                    .consumers
                    .iter()
                    .find(|c| c.subscription.as_str() == sub && !c.removed)
                    .map(|c| (c.name.clone(), c.mode, c.process, c.prefetch, c.poll));
                let (base, mode, process, prefetch, poll) = template.unwrap_or((
                    format!("{sub}-worker"),
                    Mode::Push,
                    Duration::from_millis(50),
                    10,
                    Duration::from_millis(250),
                ));
                let who = self.fresh_name(&base);
                let others =
                    self.consumers.iter().filter(|c| c.subscription.as_str() == sub && !c.removed).count();
                self.consumers.push(ConsumerState {
                    name: who.clone(),
                    subscription: name(&sub)?,
                    mode,
                    process,
                    prefetch,
                    poll,
                    fail_rate: 0.0,
                    start: now,
                    alive: true,
                    crashed: false,
                    last_poll: None,
                    busy_until: now,
                    held: Vec::new(),
                    report: ConsumerReport {
                        name: who.clone(),
                        subscription: sub.clone(),
                        ..ConsumerReport::default()
                    },
                    fail_next: 0,
                    removed: false,
                    last_received: 0,
                    rate: 0.0,
                    offline: false,
                    stream: None,
                });
                self.narrate(if others == 0 {
                    format!("{who} starts consuming {sub}, {} per message", fmt_duration(process))
                } else {
                    format!("{who} joins {sub}: {} consumers now compete for its messages", others + 1)
                });
            }
            Change::RemoveConsumer => {
                let Some(i) = self.consumer_near(near) else {
                    self.narrate("there is no consumer to remove".into());
                    return Ok(());
                };
                let held = std::mem::take(&mut self.consumers[i].held);
                for h in &held {
                    if let Some(token) = &h.token {
                        let _ = self.broker.settle(token, Settle::Nack(None)).await;
                    }
                }
                let c = &mut self.consumers[i];
                c.removed = true;
                c.alive = false;
                let (who, sub) = (c.name.clone(), c.subscription.clone());
                self.holders.retain(|(s, _), holder| !(*s == sub && *holder == i));
                self.narrate(format!(
                    "{who} left {sub} cleanly: it handed back the {} message(s) it held, to be delivered again at once",
                    held.len()
                ));
            }
            Change::RateUp | Change::RateDown => {
                let Some(i) = self.publisher_near(near) else {
                    self.narrate("there is no publisher to change".into());
                    return Ok(());
                };
                let p = &mut self.pubs[i];
                let was = p.spec.rate;
                let rate =
                    if change == Change::RateUp { was * 2.0 } else { was / 2.0 }.clamp(0.125, 20_000.0);
                p.spec.rate = rate;
                // A new phase: the new pace counts from now, with what is left of its count.
                p.phase_limit = p.phase_limit.map(|l| l.saturating_sub(p.phase_sent));
                p.phase_start = now.max(p.phase_start);
                p.phase_sent = 0;
                let who = p.spec.name.clone();
                self.narrate(format!("{who} now publishes {} (was {})", fmt_rate(rate), fmt_rate(was)));
            }
            Change::SlowDown | Change::SpeedUp => {
                let Some(i) = self.consumer_near(near) else {
                    self.narrate("there is no consumer to change".into());
                    return Ok(());
                };
                let c = &mut self.consumers[i];
                let was = c.process;
                let process = if change == Change::SlowDown { was * 2 } else { was / 2 }
                    .clamp(Duration::from_millis(1), Duration::from_secs(20));
                c.process = process;
                let who = c.name.clone();
                let most = 1.0 / process.as_secs_f64();
                self.narrate(format!(
                    "{who} now takes {} per message (was {}): at most {} on its own",
                    fmt_duration(process),
                    fmt_duration(was),
                    fmt_rate(most)
                ));
            }
            Change::Crash => {
                let Some(i) = self.consumer_near(near) else {
                    self.narrate("there is no consumer to crash".into());
                    return Ok(());
                };
                let deadline = {
                    let sub = self.consumers[i].subscription.to_string();
                    self.sub_index(&sub).map_or(Duration::from_secs(30), |s| self.subs[s].ack_deadline)
                };
                let c = &mut self.consumers[i];
                let who = c.name.clone();
                if c.crashed && !c.alive {
                    c.alive = true;
                    c.crashed = false;
                    c.busy_until = now;
                    self.narrate(format!("{who} is back and takes messages again"));
                } else {
                    c.alive = false;
                    c.crashed = true;
                    let held = c.held.len();
                    c.held.clear();
                    self.narrate(if held == 0 {
                        format!("{who} crashed holding nothing; the others carry on (x brings it back)")
                    } else {
                        format!(
                            "{who} crashed holding {held} message(s); they return within {} as their leases run out",
                            fmt_duration(deadline)
                        )
                    });
                }
            }
            Change::Fail => {
                let Some(i) = self.consumer_near(near) else {
                    self.narrate("there is no consumer to fail".into());
                    return Ok(());
                };
                self.consumers[i].fail_next += FAIL_COUNT;
                let who = self.consumers[i].name.clone();
                let sub = self.consumers[i].subscription.to_string();
                let after = match self.sub_index(&sub).map(|s| &self.subs[s]) {
                    Some(s) if s.max_deliveries > 0 => format!(
                        "each is nacked, retried{}, and after {} deliveries {}",
                        s.backoff.first().map_or(String::new(), |b| format!(" after {}", fmt_duration(*b))),
                        s.max_deliveries,
                        s.dead_letter.as_deref().map_or("dropped".to_string(), |d| format!("moved to {d}"))
                    ),
                    _ => "each is nacked and delivered again (no delivery limit here)".to_string(),
                };
                self.narrate(format!("{who} will fail its next {FAIL_COUNT} message(s): {after}"));
            }
            Change::Burst => {
                let Some(i) = self.publisher_near(near) else {
                    self.narrate("there is no publisher for a burst".into());
                    return Ok(());
                };
                self.send(i, BURST).await?;
                let who = self.pubs[i].spec.name.clone();
                self.narrate(format!("{who} sent a burst of {BURST} messages at once"));
            }
            Change::Rewind => {
                let Some(i) = self.subscription_near(near) else {
                    self.narrate("there is no subscription to rewind".into());
                    return Ok(());
                };
                let sub = name(&self.subs[i].name)?;
                let next = self.broker.seek(&sub, crate::model::SeekTarget::Start).await?;
                for c in self.consumers.iter_mut().filter(|c| c.subscription == sub) {
                    c.held.clear();
                }
                self.holders.retain(|(s, _), _| *s != sub);
                self.narrate(format!(
                    "{sub} seeks back to the start: everything from seq {next} is delivered again"
                ));
            }
        }
        Ok(())
    }
}

/// Every message of `topic` at or past `sub`'s committed floor in each partition, up to the partition's
/// head: what a log keeps for a subscription that commits one offset per partition. Read without joining
/// the subscription, so nothing is committed and no rebalance is waited for.
async fn kept_past_floors(
    broker: &SharedBroker,
    sub: &Name,
    topic: &Name,
) -> Result<Vec<crate::model::Message>, BrokerError> {
    let info = broker.subscription_info(sub).await?;
    let mut kept = Vec::new();
    for p in &info.partitions {
        let mut from = p.ack_floor + 1;
        // Bounded: at most 1,000 reads of 500 per partition.
        for _ in 0..1000 {
            if from > p.head_seq {
                break;
            }
            let at = crate::model::BrowseFrom::At { partition: p.partition, seq: from };
            let batch = broker.browse(topic, at, 500).await?;
            let Some(last) = batch.iter().filter(|m| m.partition == p.partition).map(|m| m.seq).max() else {
                break;
            };
            from = last + 1;
            kept.extend(batch);
        }
    }
    Ok(kept)
}

/// What a stream has ready now, up to `room` deliveries: the deliveries, how many messages it said were
/// dropped, and the error that ended it, if one did.
fn drain_ready(stream: &mut DeliveryStream, room: usize) -> (Vec<BrokerDelivery>, u64, Option<BrokerError>) {
    let mut out = Vec::new();
    let mut dropped = 0;
    while out.len() < room {
        // A source that fetches on demand (a JetStream pull) only asks when `next` finds it empty, so
        // when nothing is ready `next` is polled once: it asks, and the answer is there on a later step.
        // Polling once and dropping is safe: every source waits on a channel receive, which loses
        // nothing when dropped.
        let item = match stream.try_next() {
            Some(item) => Some(item),
            None => stream.next().now_or_never().flatten(),
        };
        match item {
            Some(Ok(StreamItem::Delivery(d))) => out.push(d),
            Some(Ok(StreamItem::Lagged { skipped })) => dropped += skipped,
            Some(Ok(_)) => {}
            Some(Err(e)) => return (out, dropped, Some(e)),
            None => break,
        }
    }
    (out, dropped, None)
}
