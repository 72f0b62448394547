//! `pubsub pub`: publish from arguments, a file, stdin lines (or NUL-separated records), NDJSON
//! envelopes, or a counted template; optionally paced to a rate.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;

use crate::broker::{BrokerError, SharedBroker};
use crate::cli::output::note;
use crate::cli::pace::PacedRun;
use crate::cli::parse::{
    Delimiter, check_publish_template, expand_publish_template, parse_delimiter, parse_header, parse_rate,
    seed,
};
use crate::cli::{CliError, Context};
use crate::model::{Clock, Headers, Name, PublishOptions, PublishRequest, Schedule, SystemClock};
use crate::protocol::Envelope;

/// Options of `pubsub pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Subject to publish to (with `--json`, optional: each envelope's own subject is used).
    pub topic: Option<String>,
    /// Messages, one per argument. Without any, stdin is read (line by line when piped).
    pub messages: Vec<String>,
    /// Read stdin line by line (the default when stdin is not a terminal).
    #[arg(long, conflicts_with_all = ["null", "file"])]
    pub lines: bool,
    /// Read stdin as NUL-separated records (for payloads with newlines: `find -print0 | pubsub pub t -0`).
    #[arg(long, short = '0', conflicts_with = "delimiter")]
    pub null: bool,
    /// Stdin records end with DELIM instead of a newline (several bytes allowed; escapes \n \t \0 \xHH).
    #[arg(long, short = 'D', value_parser = parse_delimiter, value_name = "DELIM")]
    pub delimiter: Option<Delimiter>,
    /// Each stdin record is KEY, DELIM, VALUE (kcat's -K): the key is cut at the first DELIM; a record
    /// without one is all value.
    #[arg(long, short = 'K', value_parser = parse_delimiter, value_name = "DELIM", conflicts_with_all = ["key", "json"])]
    pub key_delimiter: Option<Delimiter>,
    /// Publish the whole file as one message (with --json: read the file's NDJSON envelopes instead).
    #[arg(long, value_name = "PATH", conflicts_with = "messages")]
    pub file: Option<PathBuf>,
    /// Ordering / partition key for every message.
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// A header NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_parser = parse_header, value_name = "NAME=VALUE")]
    pub headers: Vec<(String, String)>,
    /// Publisher idempotency key (a repeat within the topic's dedup window is not stored twice).
    #[arg(long)]
    pub msg_id: Option<String>,
    /// Publish the MESSAGE template N times, expanding {{seq}}, {{now}}, {{uuid}}, {{random A B}}.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// Pace publishing, e.g. 500/s, 30/m: what is due goes out as one batch every 2 ms, and messages
    /// further apart than that one at a time, each at its moment.
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub rate: Option<f64>,
    /// Input lines are NDJSON envelopes (what `sub --json` prints): keys, headers and bytes are kept.
    #[arg(long)]
    pub json: bool,
    /// Report what was published (count, seqs) on stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// MQTT: the broker keeps the message as the topic's retained one (an empty payload clears it).
    #[arg(long)]
    pub retain: bool,
    /// MQTT: quality of service 0, 1 or 2 (default: the URL's `?qos=`, else 0).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2), value_name = "0|1|2")]
    pub qos: Option<u8>,
    /// AMQP: message priority 0 to 255 (a priority queue delivers higher ones first).
    #[arg(long, value_name = "N")]
    pub priority: Option<u8>,
    /// AMQP: the broker drops the message if it is not delivered within this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ttl: Option<std::time::Duration>,
    /// Kafka: publish to this partition instead of the one the key (or Kafka's partitioner) picks.
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
}

/// One message to publish and where it came from (for error messages).
struct Input {
    origin: String,
    req: PublishRequest,
}

/// Most messages per publish call.
const BATCH: usize = 256;

/// Runs `pubsub pub`.
pub async fn run(ctx: &Context, args: PubArgs) -> Result<(), CliError> {
    let subject = match &args.topic {
        Some(t) => Some(Name::new(t).map_err(|e| CliError::Usage(e.to_string()))?),
        None if args.json => None,
        None => {
            return Err(CliError::Usage(
                "pub needs a TOPIC (or --json with envelopes that name their subjects)".into(),
            ));
        }
    };
    let mut headers = Headers::new();
    headers.extend(args.headers.iter().cloned());
    let broker = ctx.connect().await?;
    let options = PublishOptions {
        qos: args.qos,
        retain: args.retain,
        priority: args.priority,
        ttl: args.ttl,
        partition: args.partition,
    };
    if let Some(option) = options.first_unhonoured(broker.publish_options()) {
        return Err(CliError::Usage(format!(
            "{} is not available on this broker ({}): --retain and --qos are MQTT settings, --priority and --ttl AMQP ones, --partition a Kafka one",
            option.flag(),
            broker.kind(),
        )));
    }
    let template = Template {
        subject,
        key: args.key.clone().map(Bytes::from),
        msg_id: args.msg_id.clone(),
        headers,
        options,
    };
    let rx = spawn_source(&args, template)?;
    publish_all(broker, rx, args.rate, args.verbose).await
}

#[derive(Clone)]
struct Template {
    subject: Option<Name>,
    key: Option<Bytes>,
    msg_id: Option<String>,
    headers: Headers,
    options: PublishOptions,
}

impl Template {
    fn request(&self, payload: Bytes) -> Result<PublishRequest, String> {
        let subject = self.subject.clone().ok_or("no subject")?;
        Ok(PublishRequest {
            subject,
            key: self.key.clone(),
            msg_id: self.msg_id.clone(),
            headers: self.headers.clone(),
            payload,
            options: self.options.clone(),
        })
    }

    fn envelope_request(&self, line: &str) -> Result<PublishRequest, String> {
        let envelope: Envelope = serde_json::from_str(line).map_err(|e| format!("not an envelope: {e}"))?;
        let mut req = envelope.to_request_or(self.subject.as_ref()).map_err(|e| e.to_string())?;
        if self.key.is_some() {
            req.key = self.key.clone();
        }
        req.headers.extend(self.headers.clone());
        Ok(req)
    }
}

/// Produces the messages on a thread (stdin reads block), handing them over through a bounded channel.
fn spawn_source(
    args: &PubArgs,
    template: Template,
) -> Result<mpsc::Receiver<Result<Input, String>>, CliError> {
    let (tx, rx) = mpsc::channel(read_ahead(args.rate));
    if !args.messages.is_empty() {
        if args.json {
            return Err(CliError::Usage("--json reads envelopes from stdin, not from arguments".into()));
        }
        if args.count.is_some() {
            for text in &args.messages {
                check_publish_template(text).map_err(CliError::Usage)?;
            }
        }
        let messages = args.messages.clone();
        let count = args.count;
        std::thread::spawn(move || {
            let mut rng = seed();
            let clock = SystemClock;
            let total = count.unwrap_or(1);
            for seq in 1..=total {
                for (i, text) in messages.iter().enumerate() {
                    let payload = if count.is_some() {
                        expand_publish_template(text, seq, clock.now(), &mut rng)
                    } else {
                        text.clone()
                    };
                    let origin = if count.is_some() {
                        format!("message {seq}")
                    } else {
                        format!("argument {}", i + 1)
                    };
                    let item = template.request(Bytes::from(payload)).map(|req| Input { origin, req });
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                }
            }
        });
        return Ok(rx);
    }
    if args.count.is_some() {
        return Err(CliError::Usage("--count repeats a MESSAGE template; give one as an argument".into()));
    }
    if let Some(path) = args.file.as_ref().filter(|_| !args.json) {
        let bytes = std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let origin = path.display().to_string();
        let item = template.request(Bytes::from(bytes)).map(|req| Input { origin, req });
        let _ = tx.try_send(item);
        return Ok(rx);
    }
    // Lines come from stdin, or from the file given with --json --file.
    let source: Box<dyn std::io::Read + Send> = match &args.file {
        Some(path) => Box::new(
            std::fs::File::open(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() && !args.lines && !args.json && !args.null {
                return Err(CliError::Usage(
                    "nothing to publish: give MESSAGE arguments, --file PATH, or pipe lines into stdin"
                        .into(),
                ));
            }
            Box::new(stdin)
        }
    };
    let json = args.json;
    let separator = match (&args.delimiter, args.null) {
        (_, true) => vec![0u8],
        (Some(Delimiter(d)), false) if d.is_empty() => {
            return Err(CliError::Usage("--delimiter needs at least one byte".into()));
        }
        (Some(Delimiter(d)), false) => d.clone(),
        (None, false) => vec![b'\n'],
    };
    let lines = separator == b"\n";
    let key_delimiter = args.key_delimiter.clone().map(|d| d.0).filter(|d| !d.is_empty());
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(source);
        let mut line_no = 0usize;
        loop {
            let mut buf = Vec::new();
            match read_record(&mut reader, &separator, &mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("reading stdin: {e}")));
                    return;
                }
            }
            line_no += 1;
            if buf.ends_with(&separator) {
                buf.truncate(buf.len() - separator.len());
                if lines && buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            }
            let origin = format!("{} {line_no}", if lines { "line" } else { "record" });
            let item = if json {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match std::str::from_utf8(&buf) {
                    Ok(text) => template.envelope_request(text),
                    Err(_) => Err("not UTF-8 text".to_string()),
                }
            } else {
                match &key_delimiter {
                    Some(d) => {
                        let (key, value) = split_key(buf, d);
                        template.request(Bytes::from(value)).map(|mut req| {
                            req.key = key.map(Bytes::from);
                            req
                        })
                    }
                    None => template.request(Bytes::from(buf)),
                }
            };
            let item =
                item.map(|req| Input { origin: origin.clone(), req }).map_err(|e| format!("{origin}: {e}"));
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// How many messages the source may read ahead of the publisher: four batches, or with a rate, 20 ms of
/// it (at most 65,536). Paced, the publisher sleeps between ticks and then takes a tick's worth at
/// once; with only four batches read ahead, the reading thread stood idle during the sleep and the
/// publisher waited for it after, which cost a fifth of the rate near the unpaced maximum.
fn read_ahead(rate: Option<f64>) -> usize {
    let paced = rate.map_or(0.0, |r| (r * 0.020).min(65_536.0)) as usize;
    paced.max(4 * BATCH)
}

/// Reads one record ending with `separator` (several bytes allowed) into `buf`, the separator
/// included when found; 0 at the end of input.
fn read_record(reader: &mut impl BufRead, separator: &[u8], buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let Some(&last) = separator.last() else { return reader.read_to_end(buf) };
    let mut total = 0;
    loop {
        let n = reader.read_until(last, buf)?;
        total += n;
        if n == 0 || buf.ends_with(separator) {
            return Ok(total);
        }
    }
}

/// Cuts a record at the first `delimiter`: the key before it and the value after; no key when the
/// record holds no delimiter.
fn split_key(record: Vec<u8>, delimiter: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
    match record.windows(delimiter.len()).position(|w| w == delimiter) {
        Some(at) => {
            let value = record.get(at + delimiter.len()..).unwrap_or_default().to_vec();
            let mut key = record;
            key.truncate(at);
            (Some(key), value)
        }
        None => (None, record),
    }
}

async fn publish_all(
    broker: SharedBroker,
    mut rx: mpsc::Receiver<Result<Input, String>>,
    rate: Option<f64>,
    verbose: bool,
) -> Result<(), CliError> {
    let mut tally = Tally { offsets: broker.kind() == "kafka", ..Tally::default() };
    let mut batch: Vec<Input> = Vec::with_capacity(BATCH);
    let mut input_error = None;
    let interrupted = crate::cli::signal::interrupted();
    tokio::pin!(interrupted);
    // With a rate, each wake-up sends what is due by then as one batch (one message at a time when
    // they are more than a tick apart); without, whatever is ready goes together.
    let mut paced = rate.map(|r| PacedRun::start(Schedule::rate(r)));
    'outer: loop {
        let limit = match &paced {
            Some(run) => run.ready(BATCH),
            None => BATCH,
        };
        if let (0, Some(run)) = (limit, &paced) {
            // Ctrl-C or SIGTERM stops between publishes: what was published is reported, then exit 130.
            tokio::select! {
                () = &mut interrupted => {
                    tally.report(verbose);
                    return Err(CliError::Interrupted);
                }
                () = run.next_tick() => {}
            }
            continue;
        }
        let next = tokio::select! {
            () = &mut interrupted => None,
            next = rx.recv() => Some(next),
        };
        let Some(next) = next else {
            tally.report(verbose);
            return Err(CliError::Interrupted);
        };
        let Some(first) = next else { break };
        match first {
            Ok(input) => batch.push(input),
            Err(e) => {
                input_error = Some(e);
                break;
            }
        }
        while batch.len() < limit {
            match rx.try_recv() {
                Ok(Ok(input)) => batch.push(input),
                Ok(Err(e)) => {
                    input_error = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(run) = &mut paced {
            run.count_sent(batch.len());
        }
        let origins: Vec<String> = batch.iter().map(|i| i.origin.clone()).collect();
        let reqs = batch.drain(..).map(|i| i.req).collect();
        match broker.publish_batch(reqs).await {
            Ok(receipts) => tally.count(&receipts),
            Err(BrokerError::Batch { index, source }) => {
                tally.published += index as u64;
                tally.report(verbose);
                let origin = origins.get(index).cloned().unwrap_or_default();
                return Err(CliError::Failed(format!(
                    "{origin} was not published: {source}; the {} message(s) before it were published",
                    tally.published
                )));
            }
            Err(e) => {
                tally.report(verbose);
                let origin = origins.first().cloned().unwrap_or_default();
                return Err(CliError::Failed(format!(
                    "{origin} was not published: {e}; the {} message(s) before it were published",
                    tally.published
                )));
            }
        }
        if input_error.is_some() {
            break 'outer;
        }
    }
    tally.report(verbose);
    if let (true, Some(run), Some(asked)) = (verbose, &paced, rate) {
        note(&pace_summary(asked, tally.published, run.elapsed()));
    }
    match input_error {
        Some(e) => {
            Err(CliError::Failed(format!("{e}; {} message(s) before it were published", tally.published)))
        }
        None => Ok(()),
    }
}

/// `-v` with `--rate`: the rate asked and the rate kept, from the first publish to the last answer.
fn pace_summary(asked: f64, published: u64, took: std::time::Duration) -> String {
    let secs = took.as_secs_f64();
    let achieved = if secs > 0.0 { published as f64 / secs } else { 0.0 };
    format!("paced at {asked}/s asked, {achieved:.1}/s achieved ({published} message(s) in {secs:.3}s)")
}

/// What a run of `pub` did, for `-v`.
#[derive(Default)]
struct Tally {
    published: u64,
    /// Messages the broker dropped because their --msg-id was seen within its dedup window.
    duplicates: u64,
    /// Messages the broker said no queue took (AMQP mandatory returns).
    unrouted: u64,
    /// The seq range of the last topic stored to, and that topic.
    stored: Option<(u64, u64, Option<crate::model::Name>)>,
    /// Every topic stored to with its first and last seq: `sub --json | pub --json` spans subjects,
    /// and naming only the last topic hid the others.
    topics: std::collections::BTreeMap<crate::model::Name, (u64, u64)>,
    /// Whether the broker's positions are Kafka offsets (seq − 1) in partitions, said as such.
    offsets: bool,
    /// The partitions stored to, and the last one.
    partitions: std::collections::BTreeSet<u32>,
    last_partition: u32,
}

impl Tally {
    /// Takes in the receipts of a published batch.
    fn count(&mut self, receipts: &[crate::model::PublishReceipt]) {
        for r in receipts {
            if r.unrouted {
                self.unrouted += 1;
            }
            if r.duplicate {
                self.duplicates += 1;
                continue;
            }
            // Only stored messages have seqs (core NATS, Redis PUB/SUB and MQTT keep nothing).
            if let Some(topic) = &r.topic
                && r.seq > 0
            {
                let first = self.stored.as_ref().map_or(r.seq, |(first, _, _)| *first);
                self.stored = Some((first, r.seq, Some(topic.clone())));
                let range = self.topics.entry(topic.clone()).or_insert((r.seq, r.seq));
                range.0 = range.0.min(r.seq);
                range.1 = range.1.max(r.seq);
                self.partitions.insert(r.partition);
                self.last_partition = r.partition;
            }
        }
        self.published += receipts.len() as u64;
    }

    /// `-v`: how many, and where they were stored (the topic and the seq range of the last one stored to).
    fn report(&self, verbose: bool) {
        if verbose {
            note(&self.summary());
        }
    }

    /// The `-v` line.
    fn summary(&self) -> String {
        let published = self.published;
        let mut dropped = match self.duplicates {
            0 => String::new(),
            n => format!(", {n} of them duplicates by --msg-id that the broker dropped"),
        };
        if self.unrouted > 0 {
            dropped.push_str(&format!(", {} of them not routed: no queue matched", self.unrouted));
        }
        match &self.stored {
            _ if published == 0 => "nothing was published: there was no message (stdin was empty)".into(),
            Some(_) if self.topics.len() > 1 => {
                const NAMED: usize = 5;
                let mut places: Vec<String> = self
                    .topics
                    .iter()
                    .take(NAMED)
                    .map(|(topic, (first, last))| match (self.offsets, first == last) {
                        (true, _) => format!("{topic}"),
                        (false, true) => format!("{topic} seq {first}"),
                        (false, false) => format!("{topic} seq {first}..={last}"),
                    })
                    .collect();
                if self.topics.len() > NAMED {
                    places.push(format!("and {} more", self.topics.len() - NAMED));
                }
                format!(
                    "published {published} message(s){dropped}, stored in {} topics: {}",
                    self.topics.len(),
                    places.join(", ")
                )
            }
            Some((first, last, topic)) if self.offsets => {
                let topic = topic.as_ref().map_or(String::new(), ToString::to_string);
                let (p, o) = (self.last_partition, last.saturating_sub(1));
                let place = match self.partitions.len() {
                    1 if first == last => format!("in {topic} partition {p} at offset {o} (#{p}:{last})"),
                    1 => format!(
                        "in {topic} partition {p} at offsets {}..={o} (#{p}:{first}..={last})",
                        first.saturating_sub(1)
                    ),
                    n => format!(
                        "in {topic} across {n} partitions, the last in partition {p} at offset {o} (#{p}:{last})"
                    ),
                };
                format!("published {published} message(s){dropped}, stored {place}")
            }
            Some((first, last, topic)) => {
                let place = topic.as_ref().map_or(String::new(), |t| format!(" in {t}"));
                format!("published {published} message(s){dropped}, stored{place} as seq {first}..={last}")
            }
            None => format!("published {published} message(s){dropped}, not stored (live subscribers only)"),
        }
    }
}

#[cfg(test)]
mod tally_tests {
    use super::Tally;
    use crate::model::{Name, PublishReceipt};

    fn receipt(topic: &str, seq: u64) -> PublishReceipt {
        PublishReceipt {
            topic: Some(Name::new(topic).unwrap()),
            partition: 0,
            seq,
            taps: 0,
            duplicate: false,
            unrouted: false,
        }
    }

    #[test]
    fn a_run_across_topics_names_every_topic_it_stored_to() {
        // Issue 19: `sub --json | pub --json -v` across subjects named only the last one.
        let mut tally = Tally::default();
        tally.count(&[receipt("orders.eu", 4), receipt("users.new", 9), receipt("orders.eu", 5)]);
        assert_eq!(
            tally.summary(),
            "published 3 message(s), stored in 2 topics: orders.eu seq 4..=5, users.new seq 9"
        );
        let mut one = Tally::default();
        one.count(&[receipt("orders", 1), receipt("orders", 2)]);
        assert_eq!(one.summary(), "published 2 message(s), stored in orders as seq 1..=2");
    }
}
