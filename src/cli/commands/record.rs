//! `pubsub record`: the lossless NDJSON envelope of every message, to a file or stdout, ready for
//! `pubsub replay --file` or `pubsub pub --json`.

use std::path::PathBuf;

use clap::Args;

use super::subscribe::{EndAt, SettleMode, Sink, StopArgs, Work, parse_patterns, reading, receive};
use crate::broker::SubscribeRequest;
use crate::cli::output::{Stdout, note};
use crate::cli::render::{Format, Renderer};
use crate::cli::{CliError, Context};
use crate::model::Position;
use crate::model::{AckMode, Clock, SystemClock};

/// Options of `pubsub record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// A topic, subjects or patterns (one topic with --from).
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Write to this file instead of stdout (`-` is stdout).
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Record history from: start, end, a seq, PARTITION:SEQ, an RFC 3339 time, or -5m (default: live
    /// only).
    #[arg(long, value_name = "POSITION", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// When to stop.
    #[command(flatten)]
    pub stop: StopArgs,
}

/// Runs `pubsub record`.
pub async fn run(ctx: &Context, args: RecordArgs) -> Result<(), CliError> {
    let patterns = parse_patterns(&args.patterns)?;
    let from = args
        .from
        .as_deref()
        .map(|f| Position::parse(f, SystemClock.now()))
        .transpose()
        .map_err(CliError::Usage)?;
    let broker = ctx.connect().await?;
    let mut request = SubscribeRequest::live(patterns);
    request.from = from.map(Position::start);
    request.ack = AckMode::None;
    let end = match reading(&broker, &mut request, from, args.stop.exit_at_end).await? {
        EndAt::NothingToRead => return Ok(()),
        EndAt::Heads(ends) => Some(ends),
        EndAt::Open => None,
    };
    let stream = broker.subscribe(request).await?;
    let sink = match args.output.as_deref().filter(|path| *path != std::path::Path::new("-")) {
        Some(path) => {
            note(&format!("recording to {}", path.display()));
            Sink::file(&path.to_path_buf())?
        }
        None => Sink::Stdout(Stdout::new()),
    };
    let renderer = Renderer::new(Format::Json, false);
    receive(broker, stream, sink, renderer, SettleMode::Auto, Work::default(), &args.stop, end).await
}
