//! What a demo run did, and its plain-text form for terminals, CI logs and handouts.

use std::fmt::Write;
use std::time::Duration;

/// One subscription's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionReport {
    /// Name.
    pub name: String,
    /// Topic.
    pub topic: String,
    /// Deliveries made (first and re-).
    pub delivered: u64,
    /// Messages acked.
    pub acked: u64,
    /// Redeliveries.
    pub redeliveries: u64,
    /// Messages moved to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages given up on without a dead-letter topic.
    pub terminated: u64,
    /// Backlog at the end.
    pub backlog: u64,
    /// Backlog once per simulated second.
    pub lag: Vec<u64>,
}

/// One simulated consumer's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    /// Name.
    pub name: String,
    /// Its subscription.
    pub subscription: String,
    /// Messages it received.
    pub received: u64,
    /// Of which were redeliveries.
    pub redelivered: u64,
    /// Messages it acked.
    pub acked: u64,
    /// Messages it nacked.
    pub nacked: u64,
}

/// What one subscription's consumers got of what the publishers sent, counted from the publishers'
/// own numbering (the same on every broker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCheck {
    /// Subscription.
    pub subscription: String,
    /// Messages published to subjects it reads.
    pub expected: u64,
    /// Distinct messages its consumers received.
    pub delivered: u64,
    /// Messages not received by the end but still kept for it (found by a final drain).
    pub waiting: u64,
    /// Messages neither received nor kept: gone.
    pub lost: u64,
    /// Deliveries beyond a message's first.
    pub redelivered: u64,
    /// Messages handled to the end more than once.
    pub duplicates: u64,
    /// Messages handled after a later one of the same publisher and key.
    pub out_of_order: u64,
    /// Longest time from publish to first delivery.
    pub max_lag: Duration,
    /// Messages the broker or client said it dropped (part of `lost`).
    pub dropped: u64,
}

/// A demo run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Its summary line.
    pub summary: String,
    /// Its explanation.
    pub explain: String,
    /// Seed used.
    pub seed: u64,
    /// Simulated length.
    pub duration: Duration,
    /// Messages published, per publisher.
    pub publishers: Vec<(String, u64)>,
    /// Per subscription.
    pub subscriptions: Vec<SubscriptionReport>,
    /// Per consumer.
    pub consumers: Vec<ConsumerReport>,
    /// Times a message was delivered to a consumer while another live consumer still held it.
    pub double_holds: u64,
    /// What happened, in order.
    pub narrative: Vec<String>,
    /// Per subscription, what reached it of what was sent (empty for live demos, which do not count).
    pub checks: Vec<DeliveryCheck>,
    /// What this broker could not do of what the scenario asks, and what the run did instead.
    pub notes: Vec<String>,
}

impl Report {
    /// The subscription named `name`.
    pub fn subscription(&self, name: &str) -> Option<&SubscriptionReport> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    /// The consumer named `name`.
    pub fn consumer(&self, name: &str) -> Option<&ConsumerReport> {
        self.consumers.iter().find(|c| c.name == name)
    }

    /// Total published.
    pub fn published(&self) -> u64 {
        self.publishers.iter().map(|(_, n)| n).sum()
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "demo {} — {}", self.scenario, self.summary);
        let _ = writeln!(out, "seed {}, {:.1} s simulated\n", self.seed, self.duration.as_secs_f64());
        for line in self.explain.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(out, "  {}", line.trim());
        }
        let _ = writeln!(out, "\npublished");
        for (name, n) in &self.publishers {
            let _ = writeln!(out, "  {name:<16} {n:>6}");
        }
        let _ = writeln!(
            out,
            "\nsubscriptions       delivered  acked  redelivered  dead-lettered  backlog at end"
        );
        for s in &self.subscriptions {
            let _ = writeln!(
                out,
                "  {:<16} {:>10} {:>6} {:>12} {:>14} {:>15}",
                s.name, s.delivered, s.acked, s.redeliveries, s.dead_lettered, s.backlog
            );
        }
        let _ = writeln!(out, "\nconsumers           received  acked  nacked  redelivered-to-it");
        for c in &self.consumers {
            let _ = writeln!(
                out,
                "  {:<16} {:>9} {:>6} {:>7} {:>18}",
                c.name, c.received, c.acked, c.nacked, c.redelivered
            );
        }
        if !self.checks.is_empty() {
            let _ = writeln!(
                out,
                "\ndelivery            expected  delivered  lost  waiting  redelivered  duplicates  order  max lag"
            );
            for c in &self.checks {
                let _ = writeln!(
                    out,
                    "  {:<16} {:>9} {:>10} {:>5} {:>8} {:>12} {:>11}  {:<6} {}",
                    c.subscription,
                    c.expected,
                    c.delivered,
                    c.lost,
                    c.waiting,
                    c.redelivered,
                    c.duplicates,
                    order_word(c.out_of_order),
                    lag_text(c.max_lag)
                );
            }
        }
        let _ = writeln!(out, "\nlag over time (backlog per subscription, one column per second)");
        for s in &self.subscriptions {
            let peak = s.lag.iter().copied().max().unwrap_or(0);
            let _ = writeln!(out, "  {:<16} {}  peak {peak}", s.name, crate::human::sparkline(&s.lag));
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        if !self.narrative.is_empty() {
            let _ = writeln!(out, "\nwhat happened");
            for line in self.narrative.iter().take(40) {
                let _ = writeln!(out, "  {line}");
            }
            if self.narrative.len() > 40 {
                let _ = writeln!(out, "  … and {} more", self.narrative.len() - 40);
            }
        }
        out
    }
}

/// "kept", or "broken" when any message was handled out of order.
pub fn order_word(out_of_order: u64) -> &'static str {
    if out_of_order == 0 { "kept" } else { "broken" }
}

/// A lag as people read it: `40 ms`, `3.2 s`.
pub fn lag_text(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
