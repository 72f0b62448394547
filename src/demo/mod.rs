//! Workshop demos: scenarios (TOML, built-ins embedded), a simulator of publishers and consumers with
//! rates, processing times, failures and timed events, and a plain-text report.

pub mod check;
pub mod compare;
pub mod live;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod share;
pub mod sim;

pub use report::{DeliveryCheck, Report};
pub use scenario::Scenario;
pub use sim::{Pace, Sim};

use std::sync::Arc;

use crate::broker::BrokerError;
use crate::broker::local::LocalBroker;
use crate::engine::{Engine, EngineConfig};
use crate::model::{ManualClock, Timestamp};

/// Runs a scenario headless on a private in-process engine in virtual time: deterministic for a seed.
/// The engine is returned too, so what the run left behind can be inspected.
pub async fn run_virtual(scenario: Scenario, seed: u64) -> Result<(Report, Engine), BrokerError> {
    // A fixed start time keeps reports identical from run to run.
    let clock = ManualClock::new(Timestamp::from_micros(1_767_258_000_000_000));
    let engine = Engine::with_clock(clock.clone(), EngineConfig::default());
    let broker = Arc::new(LocalBroker::new(engine.clone(), "mem://"));
    let report = Sim::new(scenario, broker, Pace::Virtual(engine.clone(), clock), seed).await?.run().await?;
    Ok((report, engine))
}
