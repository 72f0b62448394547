//! `pubsub snapshot create|ls|rm`: named copies of a subscription's ack state, given back with
//! `pubsub seek SUB --snapshot NAME` (SEMANTICS.md §9.9).

use clap::{Args, Subcommand};

use crate::cli::output::{Stdout, note, table};
use crate::cli::{CliError, Context};
use crate::human::duration;
use crate::model::{Clock, Name, SnapshotInfo, SystemClock};

/// `pubsub snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Capture a subscription's ack state (its ack floor and what is acked above it) under a name.
    Create(CreateSnapshotArgs),
    /// List snapshots.
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
            let s = broker.create_snapshot(&name(&a.name)?, &name(&a.subscription)?).await?;
            note(&format!(
                "snapshot {} of {} on {}: ack floor {}, {} acked above it",
                s.name,
                s.subscription,
                s.topic,
                floors(&s),
                acked_above(&s)
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
                ["SNAPSHOT", "SUBSCRIPTION", "TOPIC", "ACK-FLOOR", "ACKED-ABOVE", "AGE"]
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
                ]);
            }
            out.write(table(&rows).as_bytes())?;
            out.flush()
        }
    }
}
