//! `pubsub reply`: answer requests (as `nats reply` does): each message on the subject that names a
//! reply subject gets an answer, a fixed body or what a command prints.

use std::process::Stdio;

use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncWriteExt;

use crate::broker::{BrokerError, StreamItem, SubscribeRequest};
use crate::cli::commands::subscribe::parse_patterns;
use crate::cli::output::note;
use crate::cli::{CliError, Context};
use crate::model::{Message, Name, PublishRequest};

/// Options of `pubsub reply`.
#[derive(Debug, Args)]
pub struct ReplyArgs {
    /// Subject (or pattern) whose requests to answer.
    pub subject: String,
    /// A fixed answer to every request (empty when neither this nor --exec is given).
    #[arg(conflicts_with = "exec")]
    pub body: Option<String>,
    /// Answer with what this command (`sh -c`) prints: the request on stdin, PUBSUB_SUBJECT and
    /// PUBSUB_REPLY in the environment; a command that fails sends no answer.
    #[arg(long, short = 'e', value_name = "CMD")]
    pub exec: Option<String>,
    /// Share the requests with other responders of this queue group, each answered once.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: Option<String>,
    /// Stop after answering N requests.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
}

/// Runs `pubsub reply` until Ctrl-C, --count, or the broker closes the subscription.
pub async fn run(ctx: &Context, args: ReplyArgs) -> Result<(), CliError> {
    let patterns = parse_patterns(std::slice::from_ref(&args.subject))?;
    let mut request = SubscribeRequest::live(patterns);
    request.subscription =
        args.queue.as_deref().map(Name::new).transpose().map_err(|e| CliError::Usage(e.to_string()))?;
    let broker = ctx.connect().await?;
    let mut stream = broker.subscribe(request).await?;
    let interrupt = crate::cli::signal::interrupted();
    tokio::pin!(interrupt);
    let mut answered = 0u64;
    while args.count.is_none_or(|n| answered < n) {
        let item = tokio::select! {
            biased;
            _ = &mut interrupt => return Err(CliError::Interrupted),
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        let StreamItem::Delivery(d) = item? else { continue };
        let Some(reply) = d.message.reply_to().map(str::to_string) else {
            // A plain publish, not a request: nobody waits for an answer.
            continue;
        };
        let body = match (&args.exec, &args.body) {
            (Some(command), _) => match answer_of(command, &d.message, &reply).await {
                Some(body) => body,
                None => {
                    note(&format!(
                        "the command failed for a request on {}: no answer sent",
                        d.message.subject()
                    ));
                    continue;
                }
            },
            (None, Some(body)) => Bytes::from(body.clone()),
            (None, None) => Bytes::new(),
        };
        let to = Name::system(&reply).map_err(|e| {
            CliError::Broker(BrokerError::Invalid(format!("cannot answer to \"{reply}\": {e}")))
        })?;
        broker.publish(PublishRequest::new(to, body)).await?;
        answered += 1;
    }
    Ok(())
}

/// What `command` prints for the request, or `None` when it cannot run or exits non-zero.
async fn answer_of(command: &str, m: &Message, reply: &str) -> Option<Bytes> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.kill_on_drop(true)
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env("PUBSUB_SUBJECT", m.subject().as_str())
        .env("PUBSUB_REPLY", reply);
    let mut child = cmd.spawn().ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read the request is fine.
        let _ = stdin.write_all(&m.payload).await;
    }
    let out = child.wait_with_output().await.ok()?;
    out.status.success().then(|| Bytes::from(out.stdout))
}
