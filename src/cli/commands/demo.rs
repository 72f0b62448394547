//! `pubsub demo SCENARIO`: a workshop scenario, live in the TUI on a terminal, or headless to a report.

mod share;

pub use share::user_at_host;

use clap::Args;
use std::io::IsTerminal;
use std::net::SocketAddr;

use crate::cli::output::{Stdout, note};
use crate::cli::{CliError, Context};
use crate::demo::live::Live;
use crate::demo::{Pace, Scenario, Sim, run_virtual, scenario::BUILT_IN};

/// Options of `pubsub demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A built-in scenario (fan-out, fan-in, many-to-many, work-queue, slow-consumer, poison-message,
    /// push-vs-pull, replay, crash, offline-subscriber, ordering-keys, job-queue) or a path to a
    /// scenario .toml file.
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
    /// Share the live demo with attendees: serve its engine (with --token, or a fresh token) and a
    /// read-only web page, and print the commands they type to watch and to take part. Without a
    /// terminal it serves until interrupted.
    #[arg(long, conflicts_with_all = ["list", "show"])]
    pub share: bool,
    /// Where a shared demo listens (0.0.0.0:PORT for a room; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7078")]
    pub listen: SocketAddr,
    /// Run the scenario on these brokers at once (comma-separated URLs, mem:// for an in-process
    /// engine), in real time with the same seed, and print them side by side (on a terminal, live in
    /// a view with a column per broker first).
    #[arg(long, value_name = "URL,URL…")]
    pub compare: Option<String>,
    /// End a headless run (and each --compare column) after this long instead of the scenario's own
    /// length (e.g. 5s, 1m).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

/// The TUI of a live demo: the projector theme with `--workshop` (else `PUBSUB_THEME` or the default).
fn demo_tui_options(args: &DemoArgs) -> crate::tui::TuiOptions {
    let theme = if args.workshop {
        "high-contrast".to_string()
    } else {
        std::env::var("PUBSUB_THEME").unwrap_or_else(|_| "default".into())
    };
    watching(theme, args.workshop, args.snapshot.clone())
}

/// A demo's TUI, a teacher's or a watcher's (`theme`, `workshop` mode, the view saved to `snapshot` on
/// quit), with the user's themes and the usual stream buffer.
pub(super) fn watching(
    theme: String,
    workshop: bool,
    snapshot: Option<std::path::PathBuf>,
) -> crate::tui::TuiOptions {
    crate::tui::TuiOptions {
        theme,
        config_dir: crate::config::paths::Paths::discover().ok().map(|p| p.config),
        stream_count: 10_000,
        stream_bytes: 64 << 20,
        mouse: true,
        workshop,
        snapshot,
    }
}

/// `--compare` on a terminal: the runs go on behind the live compare view. Quitting before they end
/// stops them (each column still counts what it has and cleans up); the comparison is returned either
/// way, for the table printed after the view.
async fn compare_live(
    args: &DemoArgs,
    scenario: Scenario,
    urls: Vec<String>,
) -> Result<crate::demo::compare::Comparison, CliError> {
    use crate::demo::compare::{Watch, compare_watched};
    use crate::demo::progress::{Hold, Update};
    let opts = demo_tui_options(args);
    let state = crate::tui::compare::CompareState::new(&scenario, &urls, args.seed, Default::default());
    let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(4096);
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(Hold::default());
    let watch = Watch { updates_tx: updates_tx.clone(), hold_rx };
    let seed = args.seed;
    let runs = tokio::spawn(async move {
        let cmp = compare_watched(scenario, &urls, seed, Some(watch)).await;
        let _ = updates_tx.send(Update::Finished(cmp.clone())).await;
        cmp
    });
    let ui = crate::tui::run_compare(opts, state, updates_rx, hold_tx.clone()).await;
    // However the view ended, the runs stop (a no-op when they are done) and clean up before the table.
    let _ = hold_tx.send(Hold { paused: false, stop: true });
    if !runs.is_finished() {
        note("stopping every column: counting what there is and cleaning up…");
    }
    let cmp = runs.await.map_err(|e| CliError::Failed(format!("the comparison stopped: {e}")))?;
    ui.map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(cmp)
}

/// `--compare` without a terminal. Ctrl-C, SIGTERM or SIGHUP stops every column early: each still counts
/// what it has and deletes what it made on its broker (killed outright, a run left its topics behind).
/// Returns the comparison and whether a signal cut it short.
async fn compare_headless(
    scenario: Scenario,
    urls: Vec<String>,
    seed: u64,
) -> (crate::demo::compare::Comparison, bool) {
    use crate::demo::compare::{Watch, compare_watched};
    use crate::demo::progress::Hold;
    let (updates_tx, mut updates_rx) = tokio::sync::mpsc::channel(64);
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(Hold::default());
    // Nobody shows the progress here; the updates are read only so that no column waits for room.
    let drain = tokio::spawn(async move { while updates_rx.recv().await.is_some() {} });
    let signal = crate::cli::signal::interrupted();
    let stopper = tokio::spawn(async move {
        signal.await;
        note("stopping every column: counting what there is and cleaning up…");
        let _ = hold_tx.send(Hold { paused: false, stop: true });
    });
    let held = hold_rx.clone();
    let cmp = compare_watched(scenario, &urls, seed, Some(Watch { updates_tx, hold_rx })).await;
    let interrupted = held.borrow().stop;
    stopper.abort();
    let _ = drain.await;
    (cmp, interrupted)
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
    let mut scenario = Scenario::load(&args.scenario).map_err(CliError::Usage)?;
    if let Some(d) = args.duration {
        if d < crate::demo::sim::TICK {
            return Err(CliError::Usage(format!("--duration {d:?} is shorter than one step (10 ms)")));
        }
        scenario.duration = d;
    }
    if let Some(list) = &args.compare {
        let urls = crate::demo::compare::parse_urls(list).map_err(CliError::Usage)?;
        note(&format!(
            "running {} on {} broker(s) at once, in real time ({:?})",
            scenario.name,
            urls.len(),
            scenario.duration
        ));
        let live = !args.headless && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
        let (cmp, interrupted) = if live {
            (compare_live(&args, scenario, urls).await?, false)
        } else {
            compare_headless(scenario, urls, args.seed).await
        };
        out.write(crate::demo::compare::render(&cmp, ctx.color).as_bytes())?;
        out.flush()?;
        return if interrupted {
            Err(CliError::Interrupted)
        } else if cmp.columns.iter().all(|c| c.outcome.is_err()) {
            Err(CliError::Failed("no broker could run the scenario".into()))
        } else {
            Ok(())
        };
    }
    let live = !args.headless && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if args.share {
        return share::run(ctx, &args, scenario, live).await;
    }
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
    let opts = demo_tui_options(&args);
    let publishers = scenario.publishers.iter().map(|p| (p.name.clone(), p.subjects.clone())).collect();
    let (narration_tx, narration_rx) = tokio::sync::mpsc::channel(1024);
    if ctx.broker_explicit {
        // On a broker of its own the scenario plays in real time, without live controls.
        let broker = ctx.connect().await?;
        let sim = Sim::new(scenario, broker.clone(), Pace::Real, args.seed).await?.narrating(narration_tx);
        let running = tokio::spawn(sim.run());
        let demo = crate::tui::DemoFeed { publishers, narration: Some(narration_rx), ..Default::default() };
        let ui = crate::tui::run_with_view(broker, opts, crate::tui::app::View::Topology, demo).await;
        running.abort();
        return ui.map_err(|e| CliError::Failed(e.to_string()));
    }
    // Live: the scenario runs on a private engine in virtual time, paced by the wall clock at the speed
    // the teacher sets, and keeps running (past its script) until the teacher quits.
    let live = Live::new(scenario, args.seed, Some(narration_tx)).await?;
    let broker = live.broker();
    let (controls_tx, controls_rx) = tokio::sync::mpsc::channel(64);
    let (status_tx, status_rx) = tokio::sync::watch::channel(live.status().await);
    let running = tokio::spawn(live.run(controls_rx, status_tx));
    let demo = crate::tui::DemoFeed {
        publishers,
        narration: Some(narration_rx),
        controls: Some(controls_tx),
        status: Some(status_rx),
    };
    let ui = crate::tui::run_with_view(broker, opts, crate::tui::app::View::Topology, demo).await;
    running.abort();
    ui.map_err(|e| CliError::Failed(e.to_string()))
}
