//! `pubsub store`: look after a data directory without opening it for writing.

use std::path::PathBuf;

use clap::Subcommand;

use crate::cli::CliError;
use crate::cli::output::{Stdout, note};
use crate::config::paths::Paths;

/// `pubsub store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check every record, index, journal and checkpoint of a data directory against its CRC (read-only;
    /// exit 1 when anything is damaged).
    Verify {
        /// The data directory (default: the local daemon's).
        dir: Option<PathBuf>,
    },
}

/// Runs `pubsub store …`.
pub fn run(command: StoreCommand) -> Result<(), CliError> {
    match command {
        StoreCommand::Verify { dir } => {
            let dir = match dir {
                Some(dir) => dir,
                None => Paths::discover().map_err(CliError::Usage)?.data.join("engine"),
            };
            if !dir.is_dir() {
                return Err(CliError::Usage(format!("{} is not a data directory", dir.display())));
            }
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
                Err(CliError::Failed(format!("{}: {} problem(s) found", dir.display(), findings.len())))
            }
        }
    }
}
