//! `pubsub request`: send one request and print the first reply (NATS request/reply).

use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;

use crate::cli::commands::subscribe::OutputArgs;
use crate::cli::output::Stdout;
use crate::cli::parse::{parse_duration, parse_header};
use crate::cli::{CliError, Context};
use crate::model::{Headers, Name};

/// Options of `pubsub request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Subject to send the request to.
    pub subject: String,
    /// The request body (`-`, or left out with stdin piped, reads stdin; empty otherwise).
    pub payload: Option<String>,
    /// A header NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_parser = parse_header, value_name = "NAME=VALUE")]
    pub headers: Vec<(String, String)>,
    /// How long to wait for the reply; exit 4 when none comes.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub timeout: Duration,
    /// How the reply is printed.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `pubsub request`; exit 6 when nothing listens on the subject, 4 when no reply comes in time.
pub async fn run(ctx: &Context, args: RequestArgs) -> Result<(), CliError> {
    let subject = Name::new(&args.subject).map_err(|e| CliError::Usage(e.to_string()))?;
    // Like `pub`, a body piped in is the request when none is given on the command line.
    let piped = args.payload.is_none() && !std::io::stdin().is_terminal();
    let payload = match args.payload.as_deref() {
        Some("-") => read_stdin()?,
        None if piped => read_stdin()?,
        Some(text) => Bytes::from(text.to_string()),
        None => Bytes::new(),
    };
    let headers: Headers = args.headers.into_iter().collect();
    let broker = ctx.connect().await?;
    let reply = broker.request(&subject, payload, headers, args.timeout).await?;
    let mut buf = Vec::new();
    let terminal = std::io::stdout().is_terminal();
    args.output.renderer(ctx.color, terminal).render(&reply, None, None, &mut buf);
    let mut out = Stdout::new();
    out.write(&buf)?;
    out.flush()
}

fn read_stdin() -> Result<Bytes, CliError> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
    Ok(Bytes::from(buf))
}
