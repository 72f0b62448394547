//! `pubsub demo SCENARIO`: a workshop scenario, live in the TUI on a terminal, or headless to a report.

use std::io::IsTerminal;
use std::sync::Arc;

use clap::Args;

use crate::broker::local::LocalBroker;
use crate::cli::output::{Stdout, note};
use crate::cli::{CliError, Context};
use crate::demo::{Pace, Scenario, Sim, run_virtual, scenario::BUILT_IN};
use crate::engine::Engine;

/// Options of `pubsub demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A built-in scenario (fan-out, fan-in, many-to-many, work-queue, slow-consumer, poison-message,
    /// push-vs-pull, replay, crash) or a path to a scenario .toml file.
    #[arg(default_value = "fan-out")]
    pub scenario: String,
    /// Run to completion without the TUI and print a report (the default when stdout is not a terminal).
    #[arg(long)]
    pub headless: bool,
    /// Seed for failures and jitter: the same seed gives the same run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// List the built-in scenarios.
    #[arg(long)]
    pub list: bool,
    /// Print a built-in scenario's file, to copy and edit.
    #[arg(long)]
    pub show: bool,
    /// Workshop mode: the high-contrast theme, more spacing, engine-internal events hidden.
    #[arg(long)]
    pub workshop: bool,
    /// On quit, write the last view as text to this file.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<std::path::PathBuf>,
}

/// Runs `pubsub demo`.
pub async fn run(ctx: &Context, args: DemoArgs) -> Result<(), CliError> {
    let mut out = Stdout::new();
    if args.list {
        for (name, text) in BUILT_IN {
            let summary = Scenario::parse(text, name).map(|s| s.summary).unwrap_or_default();
            out.line(&format!("{name:<16} {summary}"))?;
        }
        return Ok(());
    }
    if args.show {
        let text = BUILT_IN.iter().find(|(n, _)| *n == args.scenario).map(|(_, t)| *t).ok_or_else(|| {
            CliError::Usage(format!("--show takes a built-in scenario name, not \"{}\"", args.scenario))
        })?;
        return out.write(text.as_bytes()).and_then(|()| out.flush());
    }
    let scenario = Scenario::load(&args.scenario).map_err(CliError::Usage)?;
    let live = !args.headless && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if !live {
        let report = if ctx.broker_explicit {
            // On a real broker the scenario runs in real time (attendees can watch it).
            note(&format!(
                "running {} on {} in real time ({:?})",
                scenario.name, ctx.broker, scenario.duration
            ));
            let broker = ctx.connect().await?;
            Sim::new(scenario, broker, Pace::Real, args.seed).await?.run().await?
        } else {
            run_virtual(scenario, args.seed).await?.0
        };
        out.write(report.render().as_bytes())?;
        return out.flush();
    }
    // Live: the scenario runs in real time on a private engine (or the broker named), and the TUI shows it.
    let broker: crate::broker::SharedBroker = if ctx.broker_explicit {
        ctx.connect().await?
    } else {
        Arc::new(LocalBroker::new(Engine::new(), format!("demo {} (in-process)", scenario.name)))
    };
    let publishers = scenario.publishers.iter().map(|p| (p.name.clone(), p.subjects.clone())).collect();
    let (narration_tx, narration_rx) = tokio::sync::mpsc::channel(256);
    let sim = Sim::new(scenario, broker.clone(), Pace::Real, args.seed).await?.narrating(narration_tx);
    let running = tokio::spawn(sim.run());
    let theme = if args.workshop {
        "high-contrast".to_string()
    } else {
        std::env::var("PUBSUB_THEME").unwrap_or_else(|_| "default".into())
    };
    let opts = crate::tui::TuiOptions {
        theme,
        config_dir: crate::config::paths::Paths::discover().ok().map(|p| p.config),
        stream_count: 10_000,
        stream_bytes: 64 << 20,
        mouse: true,
        workshop: args.workshop,
        snapshot: args.snapshot.clone(),
    };
    let demo = crate::tui::DemoFeed { publishers, narration: Some(narration_rx) };
    let ui = crate::tui::run_with_view(broker, opts, crate::tui::app::View::Topology, demo).await;
    running.abort();
    ui.map_err(|e| CliError::Failed(e.to_string()))
}
