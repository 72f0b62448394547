//! `pubsub bench`: throughput, loss and latency against any broker URL, through the same `Broker`
//! interface every command uses, so one harness compares the engine, a `pubsub serve`, NATS, Redis and
//! MQTT.
//!
//! Scenarios: `pub` (publishers only), `1:1`, `fanout` (every subscriber gets every message), `fanin`
//! (several publishers, one subscriber) and `queue` (competing consumers of one subscription, acking).
//! A run is closed loop (publish as fast as the broker takes it: throughput) or, with `--rate`, open loop
//! (messages are due at fixed times and stamped with the time they were due, so a stalled publisher
//! shows up as latency instead of hiding it). Latency is from that stamp, carried in the first 8 bytes of
//! each payload, to arrival, into an HDR histogram. Loss is what should have arrived and did not:
//! published × subscribers − delivered (published − delivered for `queue`), counted, never hidden.
//!
//! The rooms: `args` (the options), `scenarios` (what each scenario runs), `measure` (one scenario on a
//! topic of its own: subscribers, receivers, progress), `publish` (one publisher's loop) and `report`
//! (the figures and the text, JSON and CSV rows); this file runs the scenarios one after another.

use tokio_util::sync::CancellationToken;

use crate::broker::SharedBroker;
use crate::cli::CliError;
use crate::cli::output::{Stdout, note, table};

mod args;
mod measure;
mod publish;
mod report;
mod scenarios;

pub use args::{BenchArgs, Scenario};
use measure::measure;
use report::{CSV_HEADER, TEXT_HEADER, csv_row, json_row, text_row};
use scenarios::{Plan, check_shape, plans};

/// Runs `pubsub bench`.
pub async fn run(ctx: &crate::cli::Context, args: BenchArgs) -> Result<(), CliError> {
    if args.size < 8 {
        return Err(CliError::Usage(format!(
            "--size {} is too small: it must be at least 8 bytes",
            args.size
        )));
    }
    if args.batch == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    if args.pubs == Some(0) {
        return Err(CliError::Usage("--pubs must be at least 1: a run needs a publisher".into()));
    }
    if args.rate.is_some_and(|r| r <= 0.0) {
        return Err(CliError::Usage("--rate must be above zero".into()));
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(CliError::Usage("--duration must be above zero".into()));
    }
    check_shape(&args)?;
    let plans = plans(&args);
    let broker = ctx.connect().await?;
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_interrupts(stop.clone()));
    let outcome = run_plans(&broker, plans, &args, &stop).await;
    watcher.abort();
    outcome?;
    if stop.is_cancelled() {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

/// The first Ctrl-C stops publishing: the scenario under way reports what it measured and removes its
/// topic, and no further scenario starts. A second one quits at once.
async fn watch_interrupts(stop: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    note("interrupted: reporting what was measured and removing the run's topic (Ctrl-C again quits now)");
    stop.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

async fn run_plans(
    broker: &SharedBroker,
    plans: Vec<Plan>,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<(), CliError> {
    let mut out = Stdout::new();
    if args.csv {
        out.line(CSV_HEADER)?;
    }
    let mut rows = Vec::new();
    for plan in plans {
        if stop.is_cancelled() {
            break;
        }
        let report = measure(broker.clone(), &plan, args, stop).await?;
        if report.dropped > 0 {
            note(&format!(
                "{}: the broker or client dropped {} message(s) for slow subscribers (counted as lost)",
                plan.name, report.dropped
            ));
        }
        if args.json {
            out.line(&json_row(broker, args, &report).to_string())?;
        } else if args.csv {
            out.line(&csv_row(broker, args, &report))?;
        } else {
            rows.push(text_row(&report, args));
        }
    }
    if !rows.is_empty() {
        let loop_kind = match args.rate {
            Some(r) => format!("open loop at {r:.0} msgs/s"),
            None => "closed loop".into(),
        };
        let mut shape = String::new();
        if args.partitions > 1 {
            shape.push_str(&format!("  {} partitions", args.partitions));
        }
        if args.keys > 0 {
            shape.push_str(&format!("  {} keys", args.keys));
        }
        out.line(&format!(
            "broker {}  size {} B  batch {}{shape}  {loop_kind}",
            broker.url(),
            args.size,
            args.batch
        ))?;
        let mut all = vec![TEXT_HEADER.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        all.extend(rows);
        out.write(table(&all).as_bytes())?;
    }
    out.flush()
}
