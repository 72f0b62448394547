//! The command line: the clap definition, dispatch to one file per subcommand, exit codes.
//!
//! Exit codes (also in `--help` and the README): 0 ok, 1 error, 2 usage, 3 broker unreachable,
//! 4 timeout with nothing received, 5 auth refused, 130 interrupted; a broken pipe counts as success.

pub mod commands;
pub mod output;
pub mod pace;
pub mod parse;
pub mod render;
pub mod signal;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::broker::BrokerError;

const AFTER_HELP: &str = "\
Broker URLs: mem:// (in-process engine), local (your engine daemon), ws://HOST:PORT, redis://,
nats://, mqtt://, amqp://, postgres://, kafka://. Set one with --broker or PUBSUB_BROKER.

Exit codes: 0 ok, 1 error, 2 usage, 3 broker unreachable, 4 timeout with nothing received,
5 authentication refused, 6 no responders (request), 130 interrupted. A closed pipe (`| head`)
ends quietly with 0.";

/// A terminal workbench for publish/subscribe.
#[derive(Debug, Parser)]
#[command(name = "pubsub", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Broker: `local` (your engine daemon, started on demand; the default), `mem://`, `ws://HOST:PORT`,
    /// `redis://`, `nats://`, `mqtt://`, `amqp://`, `postgres://`, `kafka://` URLs, or a profile name
    /// from the config file.
    #[arg(long, short = 'b', global = true, env = "PUBSUB_BROKER", value_name = "URL")]
    pub broker: Option<String>,

    /// Colour: auto (when stdout is a terminal and NO_COLOR is unset), always, never.
    #[arg(long, global = true, value_enum, default_value_t = render::ColorChoice::Auto, value_name = "WHEN")]
    pub color: render::ColorChoice,

    /// Access token: what `serve` requires of clients, and what a client sends to a `ws://` server.
    #[arg(long, global = true, env = "PUBSUB_TOKEN", value_name = "T", hide_env_values = true)]
    pub token: Option<String>,

    /// With `--broker local`, fail (exit 3) instead of starting a daemon when none runs.
    #[arg(long, global = true, env = "PUBSUB_NO_AUTOSTART", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_autostart: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages: arguments, stdin lines, a file, NDJSON envelopes or a counted template.
    #[command(name = "pub")]
    Pub(commands::publish::PubArgs),
    /// Receive messages: live, from history (--from), or as a consumer of a durable subscription.
    Sub(commands::subscribe::SubArgs),
    /// Send a request and print the first reply (NATS request/reply; exit 6 when nobody listens).
    Request(commands::request::RequestArgs),
    /// Answer requests on a subject with a fixed body or what a command prints (like `nats reply`).
    Reply(commands::reply::ReplyArgs),
    /// Show the last N messages of a topic, then follow with -f.
    Tail(commands::tail::TailArgs),
    /// Write the lossless NDJSON envelope of every message to a file or stdout.
    Record(commands::record::RecordArgs),
    /// Re-publish a topic range or a recorded file: as fast as it can, with the original timing scaled by
    /// --speed, or at a --rate.
    Replay(commands::replay::ReplayArgs),
    /// List topics with counts, rates, sizes and retention.
    Topics(commands::topics::TopicsArgs),
    /// Create, inspect, delete or purge a topic.
    #[command(subcommand)]
    Topic(commands::topics::TopicCommand),
    /// List subscriptions with backlog, in-flight and redelivery counts (create and delete them too).
    Subs(commands::subs::SubsArgs),
    /// Show one subscription: lag, in-flight, redelivered, dead-lettered, per consumer.
    SubInfo(commands::subs::SubInfoArgs),
    /// Show the ack state of each message above a subscription's ack floor.
    Peek(commands::subs::PeekArgs),
    /// Move a subscription to start, end, a seq, a time or -5m, or to a snapshot (replays or skips
    /// messages).
    Seek(commands::subs::SeekArgs),
    /// Capture, list and remove snapshots of subscriptions' ack state (`seek --snapshot` restores one).
    #[command(subcommand)]
    Snapshot(commands::snapshot::SnapshotCommand),
    /// Ack a message received with `sub --ack manual`.
    Ack(commands::subs::SettleArgs),
    /// Give a message back for redelivery (optionally after --delay).
    Nack(commands::subs::SettleArgs),
    /// Keep a message leased longer (a slow worker), up to the subscription's max lease.
    Extend(commands::subs::ExtendArgs),
    /// Give up on a message for good: dead-lettered when the subscription has a dead-letter topic.
    Term(commands::subs::TermArgs),
    /// Run a workshop scenario (fan-out, work-queue, poison-message, crash, …) live or headless.
    Demo(commands::demo::DemoArgs),
    /// Watch a shared demo (`demo NAME --share`) in your own terminal, read-only.
    Join(commands::join::JoinArgs),
    /// Open the terminal UI (also what `pubsub` alone does on a terminal).
    Tui(commands::tui::TuiArgs),
    /// Measure publish-to-delivery throughput and latency against a broker.
    Bench(commands::bench::BenchArgs),
    /// Run the engine as a WebSocket and HTTP server (`serve status`, `serve stop` manage the local daemon).
    Serve(commands::serve::ServeArgs),
    /// Check or repair a data directory of the durable store (`store verify`, `store repair`).
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// Show where the configuration lives and what is in effect.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    Man,
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
    if let Some(Command::Serve(commands::serve::ServeArgs { daemon: true, .. })) = &cli.command {
        // Before the runtime opens descriptors of its own, while this is the only thread.
        commands::serve::close_inherited_descriptors();
    }
    raise_descriptor_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(Command::Serve(commands::serve::ServeArgs { threads: Some(n), .. })) = &cli.command {
        builder.worker_threads(usize::from(*n));
    }
    let runtime = match builder.enable_all().build() {
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
        Err(CliError::Interrupted) => ExitCode::from(130),
        Err(e) => {
            output::error(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit. A durable topic holds its active
/// segment's two files open, and the distributions' default soft limit (often 1,024) would otherwise
/// stop an engine at a few hundred topics while the hard limit allows far more; servers such as the Go
/// runtime's do the same at start. Failing to raise it is not an error: the limit stays as it was.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// What every command gets: the global options and a way to open the broker they name.
#[derive(Debug, Clone)]
pub struct Context {
    /// The broker URL in effect (flag, environment, config file or `local`; profiles resolved).
    pub broker: String,
    /// Whether the broker was named (flag, environment or config) rather than defaulted.
    pub broker_explicit: bool,
    /// Whether to colour stdout.
    pub color: bool,
    /// `--token`.
    pub token: Option<String>,
    /// Not `--no-autostart`.
    pub autostart: bool,
    /// Brokers this command opened, closed cleanly when it ends.
    pub opened: std::sync::Arc<std::sync::Mutex<Vec<crate::broker::SharedBroker>>>,
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
        self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(connected.broker.clone());
        Ok(connected.broker)
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let paths = crate::config::paths::Paths::discover().map_err(CliError::Usage)?;
    let file = crate::config::file::ConfigFile::load(&paths.config_file()).map_err(CliError::Usage)?;
    let (broker, profile_token) = file.resolve(cli.broker.as_deref());
    let broker_explicit = cli.broker.is_some() || file.broker.is_some();
    let ctx = Context {
        broker,
        broker_explicit,
        color: cli.color.enabled(),
        // An empty token (`--token ''`, `PUBSUB_TOKEN=`) is no token.
        token: cli.token.clone().filter(|t| !t.is_empty()).or(profile_token).filter(|t| !t.is_empty()),
        autostart: !cli.no_autostart && file.autostart.unwrap_or(true),
        opened: Default::default(),
    };
    let result = run_command(&ctx, cli.command).await;
    let opened = std::mem::take(&mut *ctx.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for broker in opened {
        broker.close().await;
    }
    result
}

async fn run_command(ctx: &Context, command: Option<Command>) -> Result<(), CliError> {
    let ctx = ctx.clone();
    match command {
        Some(Command::Pub(args)) => commands::publish::run(&ctx, args).await,
        Some(Command::Sub(args)) => commands::subscribe::run(&ctx, args).await,
        Some(Command::Request(args)) => commands::request::run(&ctx, args).await,
        Some(Command::Reply(args)) => commands::reply::run(&ctx, args).await,
        Some(Command::Tail(args)) => commands::tail::run(&ctx, args).await,
        Some(Command::Record(args)) => commands::record::run(&ctx, args).await,
        Some(Command::Replay(args)) => commands::replay::run(&ctx, args).await,
        Some(Command::Topics(args)) => commands::topics::list(&ctx, args).await,
        Some(Command::Topic(command)) => commands::topics::run(&ctx, command).await,
        Some(Command::Subs(args)) => commands::subs::run(&ctx, args).await,
        Some(Command::SubInfo(args)) => commands::subs::info(&ctx, args).await,
        Some(Command::Peek(args)) => commands::subs::peek(&ctx, args).await,
        Some(Command::Seek(args)) => commands::subs::seek(&ctx, args).await,
        Some(Command::Snapshot(cmd)) => commands::snapshot::run(&ctx, cmd).await,
        Some(Command::Ack(args)) => commands::subs::settle(&ctx, args, false).await,
        Some(Command::Nack(args)) => commands::subs::settle(&ctx, args, true).await,
        Some(Command::Extend(args)) => commands::subs::extend(&ctx, args).await,
        Some(Command::Term(args)) => commands::subs::term(&ctx, args).await,
        Some(Command::Tui(args)) => commands::tui::run(&ctx, args).await,
        Some(Command::Demo(args)) => commands::demo::run(&ctx, args).await,
        Some(Command::Join(args)) => commands::join::run(&ctx, args).await,
        Some(Command::Bench(args)) => commands::bench::run(&ctx, args).await,
        Some(Command::Serve(args)) => commands::serve::run(&ctx, args).await,
        Some(Command::Config(command)) => commands::config::run(&ctx, command),
        Some(Command::Store(command)) => commands::store::run(command),
        Some(Command::Completions { shell }) => commands::config::completions(shell),
        Some(Command::Man) => commands::config::man(),
        None => {
            use std::io::IsTerminal;
            // On a terminal the bare command opens the TUI; in a pipe it prints help (exit 0).
            if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
                return commands::tui::run(&ctx, commands::tui::TuiArgs::default()).await;
            }
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
    /// The command could not do what it was asked (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Ctrl-C (exit 130).
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Broker(e) => e.exit_code(),
            CliError::BrokenPipe => 0,
            CliError::Io(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
            CliError::Interrupted => 130,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe { CliError::BrokenPipe } else { CliError::Io(e) }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Catches clashing short options and similar mistakes in every subcommand.
        super::Cli::command().debug_assert();
    }
}
