//! `pubsub tail`: the last N retained messages of a topic, then (with `-f`) what follows.

use clap::Args;
use std::io::IsTerminal;

use super::subscribe::{OutputArgs, SettleMode, Sink, StopArgs, Work, receive};
use crate::broker::{Capability, SubscribeRequest};
use crate::cli::output::Stdout;
use crate::cli::{CliError, Context};
use crate::model::{AckMode, BrowseFrom, Clock, Name, Pattern, StartPosition, SystemClock};

/// Options of `pubsub tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic.
    pub topic: String,
    /// How many of the newest messages to show.
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    pub last: u64,
    /// Keep following new messages.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How messages are printed.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `pubsub tail`.
pub async fn run(ctx: &Context, args: TailArgs) -> Result<(), CliError> {
    let topic = Name::new(&args.topic).map_err(|e| CliError::Usage(e.to_string()))?;
    let broker = ctx.connect().await?;
    let started = SystemClock.now();
    let info = broker.topic_info(&topic).await?;
    let renderer = args.output.renderer(ctx.color, std::io::stdout().is_terminal()).with_partitions(
        broker.capabilities().has(Capability::Partitions)
            && (info.partitions > 1 || !super::topics::keeps_totals(&broker)),
    );
    let mut out = Stdout::new();
    let mut buf = Vec::new();
    // Following resumes right after the last message shown, so nothing published in between is shown
    // twice or skipped.
    let mut follow_from = info.head_seq + 1;
    if args.last > 0 {
        for m in broker
            .browse(&topic, BrowseFrom::Last(args.last), usize::try_from(args.last).unwrap_or(usize::MAX))
            .await?
        {
            follow_from = m.seq + 1;
            renderer.render(&m, None, None, &mut buf);
        }
        out.write(&buf)?;
        out.flush()?;
    }
    if !args.follow {
        return Ok(());
    }
    let pattern = Pattern::parse(topic.as_str()).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut request = SubscribeRequest::live(vec![pattern]);
    // A seq is a position in one partition: on a topic with several, following starts at what was
    // published since tail started, in each.
    request.from = Some(if info.partition_info.len() > 1 {
        StartPosition::Time(started)
    } else {
        StartPosition::Seq(follow_from)
    });
    request.ack = AckMode::None;
    let stream = broker.subscribe(request).await?;
    receive(
        broker,
        stream,
        Sink::Stdout(out),
        renderer,
        SettleMode::Auto,
        Work::default(),
        &StopArgs::default(),
        None,
    )
    .await
}
