//! A `--compare` run as it goes, for the live view: each column's counts so far, its narration, and the
//! controls the view sends back (pause, stop). The numbers so far are a running estimate; the final
//! table, counted after the run and a last read of what each broker still keeps, is the count.

use std::time::Duration;

use super::compare::{Column, Comparison};
use super::report::DeliveryCheck;

/// Where a column's run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Connecting and setting the scenario up.
    #[default]
    Connecting,
    /// Publishers and consumers at work.
    Running,
    /// The scenario is over: what is on its way arrives, and what the broker still keeps is read.
    Counting,
    /// Counted and cleaned up.
    Done,
    /// It could not run (or stopped midway).
    Failed,
}

/// One subscription of a column, so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubProgress {
    /// The counts so far, with two fields meaning something else than at the end: `lost` is what is
    /// already known to be gone (a live listener had no one listening, a crashed consumer of a broker
    /// without acks held it, a newer message arrived on a live stream before it), and `waiting` is
    /// what is not handled yet (in the broker, on its way, or in a consumer's hands).
    pub check: DeliveryCheck,
    /// How long the oldest message the subscription still expects has waited (zero when it has
    /// everything published so far).
    pub lag_now: Duration,
}

/// A column's state at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Time into the run.
    pub now: Duration,
    /// Where the run is.
    pub phase: Phase,
    /// Messages the publishers sent so far.
    pub published: u64,
    /// Per subscription, in the scenario's order.
    pub subs: Vec<SubProgress>,
}

/// What a live view asks of the runs: every column pauses, resumes and stops together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hold {
    /// Publishers and consumers stand still (the brokers' own clocks, such as lease deadlines, do not).
    pub paused: bool,
    /// End now: count what there is, clean up, and report.
    pub stop: bool,
}

/// A message from the runs to the live view.
#[derive(Debug, Clone)]
pub enum Update {
    /// Column `column` is connected; `notes` are what it cannot do of what the scenario asks.
    Connected {
        /// Its index.
        column: usize,
        /// Its capability notes.
        notes: Vec<String>,
    },
    /// Column `column`'s counts so far.
    Progress(usize, Progress),
    /// Column `column` narrates ("app goes OFFLINE …").
    Line(usize, String),
    /// Column `column` ended with this outcome.
    Done(usize, Box<Column>),
    /// Every column ended: the comparison as `render` prints it.
    Finished(Comparison),
}
