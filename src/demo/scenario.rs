//! Scenario files: what a demo sets up (topics, subscriptions), who publishes and consumes at what pace,
//! and what happens when (a consumer slows down, crashes, comes back; a subscription seeks). The built-in
//! scenarios are such files, embedded at build time.

use std::time::Duration;

use serde::Deserialize;

/// The built-in scenarios, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("fan-out", include_str!("scenarios/fan-out.toml")),
    ("fan-in", include_str!("scenarios/fan-in.toml")),
    ("many-to-many", include_str!("scenarios/many-to-many.toml")),
    ("work-queue", include_str!("scenarios/work-queue.toml")),
    ("slow-consumer", include_str!("scenarios/slow-consumer.toml")),
    ("poison-message", include_str!("scenarios/poison-message.toml")),
    ("push-vs-pull", include_str!("scenarios/push-vs-pull.toml")),
    ("replay", include_str!("scenarios/replay.toml")),
    ("crash", include_str!("scenarios/crash.toml")),
    ("offline-subscriber", include_str!("scenarios/offline-subscriber.toml")),
    ("ordering-keys", include_str!("scenarios/ordering-keys.toml")),
    ("job-queue", include_str!("scenarios/job-queue.toml")),
];

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// One line: what it shows.
    pub summary: String,
    /// A paragraph for the audience: the concept and what to watch.
    #[serde(default)]
    pub explain: String,
    /// Simulated length.
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// Topics to create.
    #[serde(default, rename = "topic")]
    pub topics: Vec<TopicSpec>,
    /// Subscriptions to create.
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<SubscriptionSpec>,
    /// Simulated publishers.
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<PublisherSpec>,
    /// Simulated consumers.
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<ConsumerSpec>,
    /// Timed events.
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Captured subjects (default: the name).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Most messages kept.
    pub max_msgs: Option<u64>,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Name.
    pub name: String,
    /// Topic.
    pub topic: String,
    /// Subject filter.
    #[serde(default)]
    pub filter: Vec<String>,
    /// Lease length.
    #[serde(default = "thirty_seconds", with = "humantime_serde_compat")]
    pub ack_deadline: Duration,
    /// Deliveries before giving up (0 = unlimited).
    #[serde(default)]
    pub max_deliveries: u32,
    /// Dead-letter topic.
    pub dead_letter: Option<String>,
    /// Retry delays, one per failed attempt (the last repeats); empty = immediate.
    #[serde(default, with = "humantime_serde_list")]
    pub backoff: Vec<Duration>,
    /// Delivery order among competing consumers: `none` (default) or `per-key` (a key's next message
    /// waits until its previous one is acked).
    #[serde(default)]
    pub ordering: Option<String>,
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

/// A simulated publisher.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherSpec {
    /// Name (shown in the topology).
    pub name: String,
    /// Subjects, used in turn.
    pub subjects: Vec<String>,
    /// Messages per second.
    pub rate: f64,
    /// Stop after this many (default: until the end).
    pub count: Option<u64>,
    /// Start after this long.
    #[serde(default, with = "humantime_serde_compat")]
    pub start: Duration,
    /// Payload template: `{{seq}}`, `{{publisher}}`, `{{subject}}`.
    #[serde(default = "default_payload")]
    pub payload: String,
    /// Every Nth message carries the word "poison" (0 = never).
    #[serde(default)]
    pub poison_every: u64,
    /// Ordering keys used in turn (`k1`, `k2`, … `kN`, message n gets key n mod N); 0 = no keys.
    #[serde(default)]
    pub keys: u32,
}

pub(crate) fn default_payload() -> String {
    r#"{"from":"{{publisher}}","n":{{seq}}}"#.to_string()
}

/// How a simulated consumer receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Messages are handed over as soon as there is credit.
    #[default]
    Push,
    /// The consumer asks for a batch every `poll` interval.
    Pull,
}

/// A simulated consumer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Name.
    pub name: String,
    /// Subscription it consumes.
    pub subscription: String,
    /// Push or pull.
    #[serde(default)]
    pub mode: Mode,
    /// Time to process one message.
    #[serde(default = "ten_ms", with = "humantime_serde_compat")]
    pub process: Duration,
    /// Most messages held at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// For pull: how often it asks.
    #[serde(default = "quarter_second", with = "humantime_serde_compat")]
    pub poll: Duration,
    /// Probability that processing a message fails (nack).
    #[serde(default)]
    pub fail_rate: f64,
    /// Start after this long (0 = at once).
    #[serde(default, with = "humantime_serde_compat")]
    pub start: Duration,
}

fn ten_ms() -> Duration {
    Duration::from_millis(10)
}

fn quarter_second() -> Duration {
    Duration::from_millis(250)
}

fn default_prefetch() -> u32 {
    10
}

/// What an event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// Set a consumer's processing time (`process`).
    Pace,
    /// A consumer dies with whatever it holds.
    Crash,
    /// A crashed consumer comes back.
    Resume,
    /// Move a subscription (`target`: start, end, or a seq).
    Seek,
    /// A consumer goes away cleanly (finishes what it holds and disconnects); on a broker without
    /// durable subscriptions what is published meanwhile does not wait for it.
    Offline,
    /// An offline consumer connects again.
    Online,
}

/// A timed event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// When.
    #[serde(with = "humantime_serde_compat")]
    pub at: Duration,
    /// What.
    pub action: EventAction,
    /// The consumer (pace, crash, resume).
    pub consumer: Option<String>,
    /// The subscription (seek).
    pub subscription: Option<String>,
    /// New processing time (pace).
    #[serde(default, with = "humantime_serde_option")]
    pub process: Option<Duration>,
    /// Seek target.
    pub target: Option<String>,
}

impl Scenario {
    /// A built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, String> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::parse(text, name_or_path);
        }
        let path = std::path::Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "no scenario \"{name_or_path}\": built-ins are {}, or give a path to a .toml file",
            names.join(", ")
        ))
    }

    /// Parses and checks a scenario; errors name `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        for c in &s.consumers {
            if !s.subscriptions.iter().any(|sub| sub.name == c.subscription) {
                return Err(format!(
                    "{origin}: consumer \"{}\" reads subscription \"{}\", which the scenario does not define",
                    c.name, c.subscription
                ));
            }
            if !(0.0..=1.0).contains(&c.fail_rate) {
                return Err(format!("{origin}: consumer \"{}\": fail_rate must be within 0..=1", c.name));
            }
        }
        for sub in &s.subscriptions {
            if !matches!(sub.ordering.as_deref(), None | Some("none" | "per-key")) {
                return Err(format!(
                    "{origin}: subscription \"{}\": ordering must be none or per-key",
                    sub.name
                ));
            }
        }
        for p in &s.publishers {
            if p.subjects.is_empty() || !(p.rate.is_finite() && p.rate > 0.0) {
                return Err(format!("{origin}: publisher \"{}\" needs subjects and a positive rate", p.name));
            }
        }
        for e in &s.events {
            let named = match e.action {
                EventAction::Seek => e.subscription.is_some() && e.target.is_some(),
                EventAction::Pace => e.consumer.is_some() && e.process.is_some(),
                EventAction::Crash | EventAction::Resume | EventAction::Offline | EventAction::Online => {
                    e.consumer.is_some()
                }
            };
            if !named {
                return Err(format!(
                    "{origin}: event at {:?} ({:?}) lacks the fields it needs",
                    e.at, e.action
                ));
            }
        }
        Ok(s)
    }
}

/// Durations written as `500ms`, `2s`, `1m` in scenario files.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// An optional duration.
mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

/// A list of durations.
mod humantime_serde_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts.iter().map(|t| humantime::parse_duration(t).map_err(serde::de::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, *name);
            assert!(!s.publishers.is_empty(), "{name}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let err = Scenario::parse(
            "name='x'\nsummary='y'\nduration='1s'\n[[consumer]]\nname='c'\nsubscription='nope'\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(Scenario::load("volcano").unwrap_err().contains("fan-out"));
        assert!(
            Scenario::parse("name='x'\nsummary='y'\nduration='soon'\n", "t.toml")
                .unwrap_err()
                .contains("t.toml")
        );
    }
}
