//! What each scenario runs (publishers, subscribers, shared or not, acking), and the refusal of
//! `--pubs`/`--subs` a scenario would ignore.

use super::{BenchArgs, Scenario};
use crate::cli::CliError;

/// One scenario as run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) name: &'static str,
    pub(super) pubs: u32,
    pub(super) subs: u32,
    /// Consumers share one subscription (each message once in total).
    pub(super) shared: bool,
    pub(super) ack: bool,
}

/// Refuses `--pubs`/`--subs` a scenario would ignore or could not honour.
pub(super) fn check_shape(args: &BenchArgs) -> Result<(), CliError> {
    let refuse = |what: &str| Err(CliError::Usage(what.to_string()));
    let (pubs, subs) = (args.pubs.filter(|&n| n != 1), args.subs);
    if args.topics > 1 && matches!(args.scenario, Some(Scenario::Queue | Scenario::All)) {
        return refuse(
            "--topics spreads messages over topics that one shared subscription cannot read: use --scenario pub, 1:1, fanout or fanin",
        );
    }
    match args.scenario {
        Some(Scenario::OneToOne) if pubs.is_some() || subs.is_some_and(|n| n != 1) => refuse(
            "--scenario 1:1 has one publisher and one subscriber; for more use fanout (--subs), fanin (--pubs) or no --scenario",
        ),
        Some(Scenario::Pub) if subs.is_some_and(|n| n != 0) => {
            refuse("--scenario pub has no subscribers; drop --subs, or use fanout")
        }
        Some(Scenario::Fanout | Scenario::Queue) if pubs.is_some() => {
            refuse("fanout and queue have one publisher; drop --pubs, or run without --scenario")
        }
        Some(Scenario::Fanout | Scenario::Queue) if subs == Some(0) => {
            refuse("fanout and queue need at least one subscriber; --scenario pub measures publishing alone")
        }
        Some(Scenario::Fanin) if subs.is_some_and(|n| n != 1) => {
            refuse("--scenario fanin has one subscriber; drop --subs, or run without --scenario")
        }
        _ => Ok(()),
    }
}

pub(super) fn plans(args: &BenchArgs) -> Vec<Plan> {
    let plan = |name, pubs, subs, shared| Plan { name, pubs, subs, shared, ack: args.ack || shared };
    let one = |s: Scenario| match s {
        Scenario::Pub => plan("pub", args.pubs.unwrap_or(1), 0, false),
        Scenario::OneToOne => plan("1:1", 1, 1, false),
        Scenario::Fanout => plan("fanout", 1, args.subs.filter(|&n| n > 0).unwrap_or(10), false),
        Scenario::Fanin => plan("fanin", args.pubs.unwrap_or(10), 1, false),
        Scenario::Queue => plan("queue", 1, args.subs.filter(|&n| n > 0).unwrap_or(4), true),
        Scenario::All => plan("custom", 1, 1, false),
    };
    match args.scenario {
        None => vec![plan("custom", args.pubs.unwrap_or(1), args.subs.unwrap_or(1), false)],
        Some(Scenario::All) => {
            [Scenario::Pub, Scenario::OneToOne, Scenario::Fanout, Scenario::Fanin, Scenario::Queue]
                .into_iter()
                .map(one)
                .collect()
        }
        Some(s) => vec![one(s)],
    }
}
