//! `pubsub config path|show`, `pubsub completions SHELL`, `pubsub man`.

use clap::{CommandFactory, Subcommand};

use crate::cli::output::Stdout;
use crate::cli::{Cli, CliError, Context};
use crate::config::file::ConfigFile;
use crate::config::paths::Paths;

/// `pubsub config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration file's path.
    Path,
    /// Print the configuration in effect: broker, autostart, profiles and directories.
    Show,
}

/// Runs `pubsub config …`.
pub fn run(ctx: &Context, command: ConfigCommand) -> Result<(), CliError> {
    let paths = Paths::discover().map_err(CliError::Usage)?;
    let mut out = Stdout::new();
    match command {
        ConfigCommand::Path => out.line(&paths.config_file().display().to_string()),
        ConfigCommand::Show => {
            let file = ConfigFile::load(&paths.config_file()).map_err(CliError::Usage)?;
            let value = serde_json::json!({
                "config_file": paths.config_file(),
                "broker": ctx.broker,
                "autostart": ctx.autostart,
                "profiles": file.profiles.keys().collect::<Vec<_>>(),
                "data_dir": paths.data,
                "runtime_dir": paths.runtime,
                "log_dir": paths.logs,
            });
            out.line(&serde_json::to_string_pretty(&value).unwrap_or_default())
        }
    }
}

/// Runs `pubsub completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pubsub", &mut buf);
    let mut out = Stdout::new();
    out.write(&buf)?;
    out.flush()
}

/// Runs `pubsub man`.
pub fn man() -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    let mut out = Stdout::new();
    out.write(&buf)?;
    out.flush()
}
