//! `pubsub store`: look after a data directory without opening it for writing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;

use crate::cli::CliError;
use crate::cli::output::{Stdout, note};
use crate::config::paths::Paths;
use crate::engine::{Engine, EngineConfig};
use crate::model::{SharedClock, SystemClock};

/// `pubsub store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check every record, index, journal and checkpoint of a data directory against its CRC (read-only;
    /// exit 1 when anything is damaged).
    Verify {
        /// The data directory (default: the local daemon's).
        dir: Option<PathBuf>,
    },
    /// Move what recovery cannot read aside (under DIR/quarantine/, never deleted) so the rest opens:
    /// damaged metadata, journals and checkpoints, segments with damaged records, files that no topic or
    /// subscription names. Stop the daemon first (`pubsub serve stop`).
    Repair {
        /// The data directory (default: the local daemon's).
        dir: Option<PathBuf>,
    },
}

fn data_dir(dir: Option<PathBuf>) -> Result<PathBuf, CliError> {
    let dir = match dir {
        Some(dir) => dir,
        None => Paths::discover().map_err(CliError::Usage)?.data.join("engine"),
    };
    if !dir.is_dir() {
        return Err(CliError::Usage(format!("{} is not a data directory", dir.display())));
    }
    Ok(dir)
}

/// Runs `pubsub store …`.
pub fn run(command: StoreCommand) -> Result<(), CliError> {
    match command {
        StoreCommand::Verify { dir } => {
            let dir = data_dir(dir)?;
            let findings = crate::store::verify(&dir).map_err(|e| CliError::Failed(e.to_string()))?;
            let mut out = Stdout::new();
            for finding in &findings {
                out.line(finding)?;
            }
            out.flush()?;
            if findings.is_empty() {
                note(&format!("{}: every record and journal is intact", dir.display()));
                Ok(())
            } else {
                Err(CliError::Failed(format!(
                    "{}: {} problem(s) found; `pubsub store repair {}` moves what cannot be read aside",
                    dir.display(),
                    findings.len(),
                    dir.display()
                )))
            }
        }
        StoreCommand::Repair { dir } => repair(&data_dir(dir)?),
    }
}

/// Repairs, then opens the directory as the daemon would to show that it opens.
fn repair(dir: &Path) -> Result<(), CliError> {
    let done = crate::store::repair(dir).map_err(|e| CliError::Failed(e.to_string()))?;
    let mut out = Stdout::new();
    for line in &done {
        out.line(line)?;
    }
    out.flush()?;
    let clock: SharedClock = Arc::new(SystemClock);
    let (engine, report) = Engine::open(dir, clock, EngineConfig::default())
        .map_err(|e| CliError::Failed(format!("{}: still does not open after repair: {e}", dir.display())))?;
    for finding in report.findings() {
        note(&format!("recovery: {finding}"));
    }
    engine.close().map_err(|e| CliError::Failed(e.to_string()))?;
    if done.is_empty() {
        note(&format!("{}: nothing needed repair; it opens", dir.display()));
    } else {
        note(&format!("{}: repaired; it opens", dir.display()));
    }
    Ok(())
}
