//! Helpers shared by the integration tests.

use std::sync::Arc;

use pubsub::engine::{
    Delivery, Engine, EngineConfig, FetchOptions, ManualClock, Name, PublishRequest, SubscriptionConfig,
    Timestamp,
};

/// An engine on a manual clock standing at a fixed, realistic time.
pub fn engine() -> (Engine, Arc<ManualClock>) {
    engine_with(EngineConfig::default())
}

pub fn engine_with(config: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = ManualClock::new(Timestamp::from_micros(1_780_000_000_000_000));
    (Engine::with_clock(clock.clone(), config), clock)
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub fn publish(engine: &Engine, subject: &str, payload: &str) -> u64 {
    engine.publish(PublishRequest::new(name(subject), payload.to_string())).unwrap().seq
}

pub fn subscribe(engine: &Engine, sub: &str, topic: &str, tweak: impl FnOnce(&mut SubscriptionConfig)) {
    let mut config = SubscriptionConfig::new(name(sub), name(topic));
    config.start = pubsub::engine::StartPosition::All;
    tweak(&mut config);
    engine.create_subscription(config).unwrap();
}

pub fn fetch(engine: &Engine, sub: &str, consumer: &str, max: usize) -> Vec<Delivery> {
    engine
        .try_fetch(&name(sub), consumer, &FetchOptions { max_msgs: max, ..FetchOptions::default() })
        .unwrap()
}

pub fn seqs(batch: &[Delivery]) -> Vec<u64> {
    batch.iter().map(|d| d.message.seq).collect()
}
