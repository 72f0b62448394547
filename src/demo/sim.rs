//! The simulator: publishers, consumers and timed events of a scenario, stepped every 10 ms. On an
//! in-process engine with a manual clock it runs in virtual time and is fully deterministic for a seed;
//! on any other broker it runs in real time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::report::{ConsumerReport, Report, SubscriptionReport};
use super::scenario::{EventAction, Mode, Scenario};
use crate::broker::{AckToken, BrokerError, Settle, SharedBroker};
use crate::engine::Engine;
use crate::model::{
    Backoff, FetchOptions, ManualClock, Name, Pattern, PublishRequest, Schedule, StartPosition,
    SubscriptionConfig, TopicConfig,
};

/// One simulation step.
pub const TICK: Duration = Duration::from_millis(10);

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
    done_at: Duration,
    poison: bool,
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
}

/// A running scenario.
pub struct Sim {
    scenario: Scenario,
    broker: SharedBroker,
    pace: Pace,
    rng: u64,
    now: Duration,
    published: Vec<u64>,
    consumers: Vec<ConsumerState>,
    fired: usize,
    /// Which consumer holds each (subscription, seq), to prove competing consumers never share one.
    holders: HashMap<(Name, u64), usize>,
    report: Report,
    /// Where narrated lines also go while the demo runs live.
    narration: Option<tokio::sync::mpsc::Sender<String>>,
}

fn name(text: &str) -> Result<Name, BrokerError> {
    Name::new(text).map_err(BrokerError::from)
}

impl Sim {
    /// Sets up the scenario's topics and subscriptions on `broker`.
    pub async fn new(
        scenario: Scenario,
        broker: SharedBroker,
        pace: Pace,
        seed: u64,
    ) -> Result<Sim, BrokerError> {
        for t in &scenario.topics {
            let mut config = TopicConfig::new(name(&t.name)?);
            config.subjects = t.subjects.iter().map(|s| Pattern::parse(s)).collect::<Result<_, _>>()?;
            if let Some(n) = t.max_msgs {
                config.limits.max_msgs = Some(n);
            }
            match broker.create_topic(config).await {
                Ok(_) | Err(BrokerError::Engine(crate::model::EngineError::TopicExists(_))) => {}
                Err(e) => return Err(e),
            }
        }
        for s in &scenario.subscriptions {
            let mut config = SubscriptionConfig::new(name(&s.name)?, name(&s.topic)?);
            config.start = StartPosition::New;
            config.filter = s.filter.iter().map(|f| Pattern::parse(f)).collect::<Result<_, _>>()?;
            config.ack_deadline = s.ack_deadline;
            config.max_deliveries = s.max_deliveries;
            config.dead_letter = s.dead_letter.as_deref().map(name).transpose()?;
            config.backoff =
                if s.backoff.is_empty() { Backoff::Immediate } else { Backoff::List(s.backoff.clone()) };
            config.max_in_flight = 10_000;
            broker.create_subscription(config).await?;
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
            ..Report::default()
        };
        Ok(Sim {
            published: vec![0; scenario.publishers.len()],
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

    fn narrate(&mut self, text: String) {
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
        let started = tokio::time::Instant::now();
        for _ in 0..steps {
            self.step().await?;
            match &self.pace {
                Pace::Virtual(engine, clock) => {
                    clock.advance(TICK);
                    engine.tick();
                }
                Pace::Real => tokio::time::sleep_until(started + self.now + TICK).await,
            }
            self.now += TICK;
            if self.now.as_millis().is_multiple_of(1000) {
                self.sample().await?;
            }
        }
        self.finish().await
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
                    let c = &mut self.consumers[i];
                    c.alive = false;
                    c.crashed = true;
                    let lost = c.held.len();
                    c.held.clear();
                    let who = c.name.clone();
                    self.narrate(format!(
                        "{who} CRASHED holding {lost} message(s); their leases will run out"
                    ));
                }
                (EventAction::Resume, Some(i)) => {
                    self.consumers[i].alive = true;
                    let who = self.consumers[i].name.clone();
                    self.narrate(format!("{who} is back"));
                }
                (EventAction::Seek, _) => {
                    let sub = name(event.subscription.as_deref().unwrap_or_default())?;
                    let target = match event.target.as_deref().unwrap_or("start") {
                        "start" => crate::model::SeekTarget::Start,
                        "end" => crate::model::SeekTarget::End,
                        seq => crate::model::SeekTarget::Seq { partition: 0, seq: seq.parse().unwrap_or(1) },
                    };
                    let next = self.broker.seek(&sub, target).await?;
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
        for (i, p) in self.scenario.publishers.clone().iter().enumerate() {
            if self.now < p.start {
                continue;
            }
            // Each tick sends what is due by its end as one batch, on the pacing arithmetic `pub --rate`
            // uses. A demo publisher's first message comes one gap after it starts (5/s: at 0.2 s), so
            // the schedule's message at zero is not one of its own.
            let due = Schedule::rate(p.rate)
                .due(self.now + TICK - p.start)
                .saturating_sub(1)
                .min(p.count.unwrap_or(u64::MAX));
            let mut batch = Vec::new();
            while self.published[i] < due {
                self.published[i] += 1;
                let n = self.published[i];
                let subject = &p.subjects[usize::try_from(n - 1).unwrap_or(0) % p.subjects.len()];
                let mut payload = p
                    .payload
                    .replace("{{seq}}", &n.to_string())
                    .replace("{{publisher}}", &p.name)
                    .replace("{{subject}}", subject);
                if p.poison_every > 0 && n.is_multiple_of(p.poison_every) {
                    payload = format!(r#"{{"from":"{}","n":{n},"poison":true}}"#, p.name);
                }
                batch.push(PublishRequest::new(name(subject)?, payload));
            }
            if !batch.is_empty() {
                let count = batch.len() as u64;
                self.broker.publish_batch(batch).await?;
                self.report.publishers[i].1 += count;
            }
        }
        Ok(())
    }

    async fn consume(&mut self, i: usize) -> Result<(), BrokerError> {
        let now = self.now;
        if !self.consumers[i].alive || now < self.consumers[i].start {
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
            let fail = h.poison || self.random() < self.consumers[i].fail_rate;
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
        let batch = self.broker.fetch(&sub, &who, opts).await?;
        for d in batch {
            let seq = d.message.seq;
            if let Some(&other) = self.holders.get(&(sub.clone(), seq))
                && other != i
                && !self.consumers[other].crashed
            {
                self.report.double_holds += 1;
            }
            self.holders.insert((sub.clone(), seq), i);
            let attempt = d.attempt.unwrap_or(1);
            let c = &mut self.consumers[i];
            c.report.received += 1;
            if attempt > 1 {
                c.report.redelivered += 1;
            }
            c.busy_until = c.busy_until.max(now) + c.process;
            let poison = String::from_utf8_lossy(&d.message.payload).contains("poison");
            let done_at = c.busy_until;
            c.held.push(Held { token: d.token, seq, done_at, poison });
            if attempt > 1 {
                self.narrate(format!("#{seq} redelivered to {who} (attempt {attempt})"));
            }
        }
        Ok(())
    }

    async fn sample(&mut self) -> Result<(), BrokerError> {
        for s in &mut self.report.subscriptions {
            let info = self.broker.subscription_info(&name(&s.name)?).await?;
            s.lag.push(info.backlog);
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Report, BrokerError> {
        for s in &mut self.report.subscriptions {
            let info = self.broker.subscription_info(&name(&s.name)?).await?;
            s.delivered = info.counters.delivered;
            s.acked = info.counters.acked;
            s.redeliveries = info.counters.redeliveries;
            s.dead_lettered = info.counters.dead_lettered;
            s.terminated = info.counters.terminated;
            s.backlog = info.backlog;
        }
        self.report.consumers = self.consumers.into_iter().map(|c| c.report).collect();
        Ok(self.report)
    }
}
