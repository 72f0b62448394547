//! The command line: the clap definition, dispatch to one file per subcommand, exit codes.
//!
//! Exit codes (also in `--help` and the README): 0 ok, 1 error, 2 usage, 3 broker unreachable,
//! 4 timeout with nothing received, 5 auth refused, 130 interrupted; a broken pipe counts as success.

pub mod commands;
pub mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::broker::BrokerError;

const AFTER_HELP: &str = "\
Broker URLs: mem:// (in-process engine), local (your engine daemon), ws://HOST:PORT, redis://,
nats://, mqtt://, amqp://, postgres://, kafka://. Set one with --broker or PUBSUB_BROKER.

Exit codes: 0 ok, 1 error, 2 usage, 3 broker unreachable, 4 timeout with nothing received,
5 authentication refused, 130 interrupted. A closed pipe (`| head`) ends quietly with 0.";

/// A terminal workbench for publish/subscribe.
#[derive(Debug, Parser)]
#[command(name = "pubsub", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Broker to talk to: `local` (your engine daemon, started on demand), `mem://`, `ws://HOST:PORT`, …
    #[arg(long, global = true, env = "PUBSUB_BROKER", default_value = "local", value_name = "URL")]
    pub broker: String,

    /// Access token: what `serve` requires of clients, and what a client sends to a `ws://` server.
    #[arg(long, global = true, env = "PUBSUB_TOKEN", value_name = "T", hide_env_values = true)]
    pub token: Option<String>,

    /// With `--broker local`, fail (exit 3) instead of starting a daemon when none runs.
    #[arg(long, global = true, env = "PUBSUB_NO_AUTOSTART")]
    pub no_autostart: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure publish-to-delivery throughput and latency against a broker.
    Bench(commands::bench::BenchArgs),
    /// Run the engine as a WebSocket server (`serve status`, `serve stop` manage the local daemon).
    Serve(commands::serve::ServeArgs),
}

/// Parses the arguments, runs the command and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version itself, to stdout, with exit code 0.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

/// What every command gets: the global options and a way to open the broker they name.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--broker`.
    pub broker: String,
    /// `--token`.
    pub token: Option<String>,
    /// Not `--no-autostart`.
    pub autostart: bool,
}

impl Context {
    /// Opens the broker, telling the user on stderr when a daemon had to be started.
    pub async fn connect(&self) -> Result<crate::broker::SharedBroker, CliError> {
        let opts =
            crate::broker::url::ConnectOptions { autostart: self.autostart, token: self.token.clone() };
        let connected = crate::broker::url::connect_with(&self.broker, &opts).await?;
        if let Some(notice) = &connected.notice {
            output::note(notice);
        }
        Ok(connected.broker)
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let ctx = Context { broker: cli.broker.clone(), token: cli.token.clone(), autostart: !cli.no_autostart };
    match cli.command {
        Some(Command::Bench(args)) => commands::bench::run(&ctx, args).await,
        Some(Command::Serve(args)) => commands::serve::run(&ctx, args).await,
        None => {
            use clap::CommandFactory;
            let help = Cli::command().render_help().to_string();
            output::Stdout::new().line(&help)
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The reader of stdout went away; not an error for the user.
    #[error("broken pipe")]
    BrokenPipe,
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Io(std::io::Error),
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Broker(e) => e.exit_code(),
            CliError::BrokenPipe => 0,
            CliError::Io(_) => 1,
            CliError::Usage(_) => 2,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe { CliError::BrokenPipe } else { CliError::Io(e) }
    }
}
