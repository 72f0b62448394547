//! `pubsub replay`: re-publish a range of a topic, or a recorded NDJSON file, with the original timing
//! scaled by `--speed`, at a fixed `--rate`, or as fast as possible.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use crate::broker::SharedBroker;
use crate::cli::output::note;
use crate::cli::pace::PacedRun;
use crate::cli::parse::parse_rate;
use crate::cli::{CliError, Context};
use crate::model::Position;
use crate::model::{
    BrowseFrom, Clock, Message, Name, PublishRequest, Schedule, SystemClock, Timestamp, TopicInfo,
};
use crate::protocol::Envelope;

/// Options of `pubsub replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Topic to replay from (or use --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub topic: Option<String>,
    /// A recorded NDJSON file (from `record` or `sub --json`).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// First message: start, a seq, PARTITION:SEQ (that partition only), an RFC 3339 time, or -5m
    /// (default: start; every partition).
    #[arg(long, value_name = "POSITION", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Last message: a seq, PARTITION:SEQ, an RFC 3339 time, or -5m (default: the newest when the
    /// replay starts).
    #[arg(long, value_name = "POSITION", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Publish to this subject instead of each message's own.
    #[arg(long, value_name = "SUBJECT")]
    pub into: Option<String>,
    /// Keep the original gaps between messages, divided by this factor (1 = as they happened, 2 = twice
    /// as fast); without --speed or --rate a replay goes as fast as it can.
    #[arg(long, conflicts_with = "rate")]
    pub speed: Option<f64>,
    /// Publish at a fixed rate, e.g. 100/s (paced as `pub --rate` is: a batch of what is due every 2 ms).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

/// Runs `pubsub replay`.
pub async fn run(ctx: &Context, args: ReplayArgs) -> Result<(), CliError> {
    let now = SystemClock.now();
    let position = |p: &Option<String>| {
        p.as_deref().map(|t| Position::parse(t, now)).transpose().map_err(CliError::Usage)
    };
    let (from, to) = (position(&args.from)?, position(&args.to)?);
    let into = args.into.as_deref().map(Name::new).transpose().map_err(|e| CliError::Usage(e.to_string()))?;
    if args.speed.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        return Err(CliError::Usage("--speed must be a positive number".into()));
    }
    let broker = ctx.connect().await?;
    let messages: Vec<(Option<Timestamp>, PublishRequest)> = match (&args.topic, &args.file) {
        (Some(topic), _) => {
            let topic = Name::new(topic).map_err(|e| CliError::Usage(e.to_string()))?;
            let info = broker.topic_info(&topic).await?;
            history(&broker, &topic, &info, from, to)
                .await?
                .into_iter()
                .map(|m| (Some(m.publish_time), request_of(&m)))
                .collect()
        }
        (None, Some(path)) => read_file(path)?,
        (None, None) => return Err(CliError::Usage("replay needs a TOPIC or --file".into())),
    };
    replay(&broker, messages, into, args.speed, args.rate).await
}

/// What `replay TOPIC` sends: each partition read from `from` up to its head as it was when the replay
/// started (or up to `to`), merged by publish time. `P:SEQ` reads that partition only.
async fn history(
    broker: &SharedBroker,
    topic: &Name,
    info: &TopicInfo,
    from: Option<Position>,
    to: Option<Position>,
) -> Result<Vec<Message>, CliError> {
    let partitions: Vec<(u32, u64, u64)> =
        info.positions().iter().map(|p| (p.partition, p.first_seq, p.head_seq)).collect();
    if let Some(p) = from.and_then(Position::partition)
        && !partitions.iter().any(|(q, ..)| *q == p)
    {
        return Err(CliError::Usage(format!("topic {topic} has no partition {p}")));
    }
    let several = partitions.len() > 1;
    let mut out = Vec::new();
    for (partition, first, head) in partitions {
        if from.and_then(Position::partition).is_some_and(|p| p != partition) {
            continue;
        }
        let start = match from {
            None | Some(Position::Start) => first,
            Some(Position::Seq(s) | Position::At { seq: s, .. }) => s,
            Some(Position::End) => head + 1,
            // Read from the start of each partition and skip what is older: a time has no position per
            // partition to start from.
            Some(Position::Time(_)) if several => first,
            Some(Position::Time(t)) => {
                out.extend(read_from(broker, topic, BrowseFrom::Time(t), 0, head, to).await?);
                continue;
            }
        };
        let at = if several { BrowseFrom::At { partition, seq: start } } else { BrowseFrom::Seq(start) };
        let mut got = read_from(broker, topic, at, partition, head, to).await?;
        if let Some(Position::Time(t)) = from {
            got.retain(|m| m.publish_time >= t);
        }
        out.extend(got);
    }
    if several {
        out.sort_by_key(|m| (m.publish_time, m.partition, m.seq));
    }
    Ok(out)
}

/// One partition's messages from `at` up to `head` (or `to`), a page at a time.
async fn read_from(
    broker: &SharedBroker,
    topic: &Name,
    mut at: BrowseFrom,
    partition: u32,
    head: u64,
    to: Option<Position>,
) -> Result<Vec<Message>, CliError> {
    let mut out = Vec::new();
    loop {
        let chunk = broker.browse(topic, at, 1000).await?;
        let Some(last) = chunk.last().map(|m| m.seq) else { return Ok(out) };
        for m in chunk {
            if m.seq > head || past(&m, to) {
                return Ok(out);
            }
            out.push(m);
        }
        at = match at {
            BrowseFrom::At { .. } => BrowseFrom::At { partition, seq: last + 1 },
            _ => BrowseFrom::Seq(last + 1),
        };
    }
}

fn past(m: &Message, to: Option<Position>) -> bool {
    match to {
        Some(Position::Seq(s)) => m.seq > s,
        Some(Position::At { partition, seq }) => m.partition == partition && m.seq > seq,
        Some(Position::Time(t)) => m.publish_time > t,
        _ => false,
    }
}

fn request_of(m: &Message) -> PublishRequest {
    PublishRequest {
        subject: m.subject().clone(),
        key: m.key().cloned(),
        msg_id: None,
        headers: m.headers().clone(),
        payload: m.payload.clone(),
        options: Default::default(),
    }
}

/// The longest line a recording may hold: the envelope of the largest message a server takes (16 MiB
/// frames, payload in base64) with room to spare. Anything longer is not a recording, and reading it
/// whole first (`replay --file /dev/zero`) would only fill memory.
const MAX_LINE_BYTES: usize = 64 << 20;

fn read_file(path: &PathBuf) -> Result<Vec<(Option<Timestamp>, PublishRequest)>, CliError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::new(file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    for number in 1.. {
        let bad = |e: String| {
            CliError::Failed(format!("{}: line {number}: {e}; nothing was published", path.display()))
        };
        if !read_line(&mut reader, &mut line).map_err(|e| bad(e.to_string()))? {
            break;
        }
        let line = std::str::from_utf8(&line).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let envelope: Envelope =
            serde_json::from_str(line).map_err(|e| bad(format!("not an envelope: {e}")))?;
        let time = envelope.time().map_err(|e| bad(e.to_string()))?;
        let mut req = envelope.to_request().map_err(|e| bad(e.to_string()))?;
        // A recorded msg_id would make the topic's dedup window swallow the replay.
        req.msg_id = None;
        out.push((time, req));
    }
    Ok(out)
}

/// Reads the next line into `line` (without its newline), refusing one longer than `MAX_LINE_BYTES`.
/// False at the end of the input.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
    let n = reader.take(limit).read_until(b'\n', line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "longer than {} MiB without a line break, which no recording holds (record writes one envelope per line)",
                MAX_LINE_BYTES >> 20
            ),
        ));
    }
    Ok(n > 0)
}

/// Most messages per publish call.
const BATCH: usize = 256;

/// Publishes `messages` in order: as fast as the broker takes them, at a fixed `rate`, or at their
/// original times scaled by `speed`. Paced, each wake-up sends everything due by then as one batch.
async fn replay(
    broker: &crate::broker::SharedBroker,
    messages: Vec<(Option<Timestamp>, PublishRequest)>,
    into: Option<Name>,
    speed: Option<f64>,
    rate: Option<f64>,
) -> Result<(), CliError> {
    let total = messages.len();
    let progress = std::io::stderr().is_terminal() && total > 1000;
    let schedule = match (speed, rate) {
        (Some(speed), _) => Some(scaled_times(&messages, speed)),
        (None, Some(rate)) => Some(Schedule::rate(rate)),
        (None, None) => None,
    };
    // The replay starts once its schedule is worked out (for millions of messages, tens of ms).
    let started = Instant::now();
    let mut paced = schedule.map(PacedRun::start);
    let mut last_progress = started;
    let mut requests = messages.into_iter().map(|(_, mut req)| {
        if let Some(into) = &into {
            req.subject = into.clone();
        }
        req
    });
    let mut done = 0usize;
    let interrupted = crate::cli::signal::interrupted();
    tokio::pin!(interrupted);
    let stop = |done: usize| {
        note(&format!("replay interrupted after {done} of {total} message(s)"));
        CliError::Interrupted
    };
    while done < total {
        let limit = match &paced {
            Some(run) => run.ready(BATCH),
            None => BATCH,
        };
        if let (0, Some(run)) = (limit, &paced) {
            tokio::select! {
                () = &mut interrupted => return Err(stop(done)),
                () = run.next_tick() => {}
            }
            continue;
        }
        // Between batches, an interrupt that came meanwhile stops the replay.
        if futures_util::poll!(&mut interrupted).is_ready() {
            return Err(stop(done));
        }
        let batch: Vec<PublishRequest> = requests.by_ref().take(limit).collect();
        let n = batch.len();
        if n == 0 {
            break;
        }
        broker.publish_batch(batch).await.map_err(|e| failed(done, e))?;
        done += n;
        if let Some(run) = &mut paced {
            run.count_sent(n);
        }
        if progress && last_progress.elapsed() > Duration::from_millis(100) {
            last_progress = Instant::now();
            let _ = write!(std::io::stderr(), "\rreplayed {done}/{total}");
        }
    }
    if progress {
        let _ = writeln!(std::io::stderr(), "\rreplayed {done}/{total}");
    }
    note(&format!("replayed {done} message(s) in {:.3}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// `--speed`: each message at its original time since the first, divided by `speed`. A message
/// without a time goes right after the one before it.
fn scaled_times(messages: &[(Option<Timestamp>, PublishRequest)], speed: f64) -> Schedule {
    let first = messages.iter().find_map(|(t, _)| *t);
    Schedule::times(messages.iter().map(|(time, _)| match (time, first) {
        // A huge gap over a tiny speed saturates rather than overflows.
        (Some(t), Some(first)) => {
            Duration::try_from_secs_f64(t.since(first).as_secs_f64() / speed).unwrap_or(Duration::MAX)
        }
        // Zero: the schedule keeps every message at or after the one before.
        _ => Duration::ZERO,
    }))
}

fn failed(done: usize, e: crate::broker::BrokerError) -> CliError {
    CliError::Failed(format!("replay stopped after {done} message(s): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: Option<i64>) -> (Option<Timestamp>, PublishRequest) {
        let time = millis.map(|ms| Timestamp::from_micros(1_000_000_000 + ms * 1000));
        (time, PublishRequest::new(Name::new("t").unwrap(), "m"))
    }

    #[test]
    fn speed_divides_the_original_gaps_and_an_untimed_message_follows_its_predecessor() {
        let messages = [at(Some(0)), at(Some(1000)), at(None), at(Some(4000))];
        let schedule = scaled_times(&messages, 2.0);
        let ms = Duration::from_millis;
        assert_eq!(schedule.at(1), Some(ms(500)));
        assert_eq!(schedule.at(2), Some(ms(500)), "no time of its own: right after the one before");
        assert_eq!(schedule.at(3), Some(ms(2000)));
        assert_eq!(schedule.due(ms(500)), 3, "everything due by a wake-up goes in one batch");
        let slowest = scaled_times(&messages, f64::MIN_POSITIVE);
        assert_eq!(slowest.at(3), Some(Duration::MAX), "saturates instead of overflowing");
    }
}
