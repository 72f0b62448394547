//! `pubsub snapshot create|ls|rm`: named copies of a subscription's ack state, given back with
//! `pubsub seek SUB --snapshot NAME` (SEMANTICS.md §9.9).

use clap::{Args, Subcommand};

use std::time::Duration;

use crate::cli::output::{Stdout, note, table};
use crate::cli::parse::parse_duration;
use crate::cli::{CliError, Context};
use crate::human::duration;
use crate::model::{Clock, Name, SNAPSHOT_TTL, SnapshotInfo, SystemClock, Timestamp};

/// `pubsub snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Capture a subscription's ack state (its ack floor and what is acked above it) under a name.
    ///
    /// While it exists, retention keeps every message above its floor; it expires after 7 days
    /// unless --ttl says otherwise.
    Create(CreateSnapshotArgs),
    /// List snapshots, with when each expires.
    Ls {
        /// One JSON object per snapshot (NDJSON).
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot.
    Rm {
        /// Its name.
        name: String,
    },
}

/// Options of `pubsub snapshot create`.
#[derive(Debug, Args)]
pub struct CreateSnapshotArgs {
    /// The snapshot's name.
    pub name: String,
    /// The subscription whose ack state it captures.
    #[arg(long, short = 's')]
    pub subscription: String,
    /// How long it lives (e.g. 1h, 30d; default 7d): the engine then removes it and retention takes
    /// what it held. `never` keeps it until `snapshot rm`; 0 is refused.
    #[arg(long, value_name = "DUR|never", value_parser = parse_ttl)]
    pub ttl: Option<Ttl>,
}

/// A snapshot's lifetime as `--ttl` gives it: a duration, or `None` for never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Option<Duration>);

/// Parses `--ttl`: `never`, or a positive duration such as `1h` or `30d`.
pub fn parse_ttl(text: &str) -> Result<Ttl, String> {
    if text.trim() == "never" {
        return Ok(Ttl(None));
    }
    let d = parse_duration(text.trim())?;
    if d.is_zero() {
        return Err(format!(
            "a ttl of \"{text}\" would expire the snapshot at once; give a duration such as 1h or 30d, or never"
        ));
    }
    Ok(Ttl(Some(d)))
}

/// When a snapshot expires, for `ls` and `create`: `in 6d 23h`, `never`, or `expired` (the timer
/// removes it at its next tick).
fn expiry(s: &SnapshotInfo, now: Timestamp) -> String {
    match s.expires {
        None => "never".to_string(),
        Some(at) if at <= now => "expired".to_string(),
        Some(at) => format!("in {}", duration(at.since(now))),
    }
}

fn name(s: &str) -> Result<Name, CliError> {
    Name::new(s).map_err(|e| CliError::Usage(e.to_string()))
}

/// Acked messages above the floor, counted from the ranges.
fn acked_above(s: &SnapshotInfo) -> u64 {
    s.partitions.iter().flat_map(|p| p.acked.iter()).map(|r| r[1] + 1 - r[0]).sum()
}

fn floors(s: &SnapshotInfo) -> String {
    match s.partitions.as_slice() {
        [one] if one.partition == 0 => one.ack_floor.to_string(),
        parts => {
            parts.iter().map(|p| format!("{}:{}", p.partition, p.ack_floor)).collect::<Vec<_>>().join(" ")
        }
    }
}

/// Runs `pubsub snapshot`.
pub async fn run(ctx: &Context, cmd: SnapshotCommand) -> Result<(), CliError> {
    let broker = ctx.connect().await?;
    match cmd {
        SnapshotCommand::Create(a) => {
            let ttl = a.ttl.map_or(Some(SNAPSHOT_TTL), |t| t.0);
            let s = broker.create_snapshot(&name(&a.name)?, &name(&a.subscription)?, ttl).await?;
            note(&format!(
                "snapshot {} of {} on {}: ack floor {}, {} acked above it; expires {}",
                s.name,
                s.subscription,
                s.topic,
                floors(&s),
                acked_above(&s),
                expiry(&s, s.created)
            ));
            Ok(())
        }
        SnapshotCommand::Rm { name: n } => {
            broker.delete_snapshot(&name(&n)?).await?;
            note(&format!("removed snapshot {n}"));
            Ok(())
        }
        SnapshotCommand::Ls { json } => {
            let snapshots = broker.snapshots().await?;
            let mut out = Stdout::new();
            if json {
                for s in &snapshots {
                    out.line(&serde_json::to_string(s).unwrap_or_default())?;
                }
                return Ok(());
            }
            if snapshots.is_empty() {
                note("no snapshots; `pubsub snapshot create NAME --subscription SUB` takes one");
                return Ok(());
            }
            let now = SystemClock.now();
            let mut rows = vec![
                ["SNAPSHOT", "SUBSCRIPTION", "TOPIC", "ACK-FLOOR", "ACKED-ABOVE", "AGE", "EXPIRES"]
                    .map(String::from)
                    .to_vec(),
            ];
            for s in &snapshots {
                rows.push(vec![
                    s.name.to_string(),
                    s.subscription.to_string(),
                    s.topic.to_string(),
                    floors(s),
                    acked_above(s).to_string(),
                    duration(now.since(s.created)),
                    expiry(s, now),
                ]);
            }
            out.write(table(&rows).as_bytes())?;
            out.flush()
        }
    }
}
