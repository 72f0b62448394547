//! `pubsub demo NAME --compare URL,URL…`: one scenario, the same seed, the same publishers and consumers,
//! run on several brokers at once, and a table that puts them side by side with what differs marked.
//!
//! Every column runs in real time (a remote broker cannot run in virtual time, so `mem://` does not
//! either: the columns stay comparable). Each column's topics and subscriptions get names of their own
//! (a prefix unique to the run and column), which are deleted again when the column ends, also when it
//! failed. A broker that lacks something the scenario needs (acks, say, on Redis PUB/SUB) still runs it
//! as well as it can, and its column says what it could not do; a broker that cannot be reached or
//! fails midway gets a column that says so, and the others carry on.

use std::fmt::Write;
use std::time::Duration;

use super::progress::{Hold, Progress, Update};
use super::report::{DeliveryCheck, Report, lag_text, order_word};
use super::scenario::{EventAction, Scenario};
use super::sim::{Pace, Sim};
use crate::broker::url::{BackendKind, backend_for, redact};
use crate::broker::{Capability, SharedBroker};
use crate::model::Name;

/// The longest a broker may take to connect, or to delete one name when a column ends.
const PATIENCE: Duration = Duration::from_secs(10);

/// One broker's column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The URL, without any password.
    pub url: String,
    /// A short name for the header: `mem://`, `redis pubsub`, `nats jetstream`, …
    pub label: String,
    /// What the scenario needs that this broker lacks, and what the run did instead.
    pub notes: Vec<String>,
    /// The run's report, or why there is none.
    pub outcome: Result<Report, String>,
}

/// A scenario run on several brokers.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// Its summary.
    pub summary: String,
    /// Seed.
    pub seed: u64,
    /// How long each column ran.
    pub duration: Duration,
    /// One per broker, in the order given.
    pub columns: Vec<Column>,
}

impl Comparison {
    /// The column whose URL is `url` (as given, without a password).
    pub fn column(&self, url: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.url == redact(url))
    }
}

impl Column {
    /// This column's delivery check for `subscription`, when it ran.
    pub fn check(&self, subscription: &str) -> Option<&DeliveryCheck> {
        self.outcome.as_ref().ok()?.checks.iter().find(|c| c.subscription == subscription)
    }
}

/// The brokers of a `--compare` list: comma-separated URLs (`mem://` for an in-process engine), each
/// checked to name a backend.
pub fn parse_urls(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> =
        list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    if urls.is_empty() {
        return Err(
            "--compare needs broker URLs separated by commas, e.g. mem://,redis://127.0.0.1:6379".into()
        );
    }
    for url in &urls {
        backend_for(url).map_err(|e| format!("--compare: {e}"))?;
    }
    Ok(urls)
}

/// A short column name for `url`.
pub fn label(url: &str) -> String {
    let mode = url
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("mode=")).map(str::to_ascii_lowercase));
    match backend_for(url) {
        Ok(BackendKind::Memory) => "mem://".into(),
        Ok(BackendKind::Local) => "local".into(),
        Ok(BackendKind::Remote) => "pubsub serve".into(),
        Ok(BackendKind::Redis) => match mode.as_deref() {
            Some("pubsub") => "redis pubsub".into(),
            _ => "redis streams".into(),
        },
        Ok(BackendKind::Nats) => match mode.as_deref() {
            Some("core") => "nats core".into(),
            _ => "nats jetstream".into(),
        },
        Ok(BackendKind::Mqtt) => {
            let qos = url
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("qos=")))
                .unwrap_or("0");
            format!("mqtt qos {qos}")
        }
        Ok(BackendKind::Amqp) => "rabbitmq".into(),
        Ok(BackendKind::Postgres) => "postgres".into(),
        Ok(BackendKind::Kafka) => "kafka".into(),
        Err(_) => redact(url),
    }
}

/// What a scenario asks of a broker beyond publishing and live listening, and what for.
pub fn needs(scenario: &Scenario) -> Vec<(Capability, &'static str)> {
    let mut needs = Vec::new();
    let fails = scenario.consumers.iter().any(|c| c.fail_rate > 0.0)
        || scenario.publishers.iter().any(|p| p.poison_every > 0);
    if fails {
        needs.push((Capability::Nack, "a failed message is not tried again"));
    }
    if scenario.events.iter().any(|e| e.action == EventAction::Crash) {
        needs.push((Capability::AckDeadline, "what a crashed consumer held is not delivered again"));
    }
    if scenario.events.iter().any(|e| e.action == EventAction::Seek) {
        needs.push((Capability::Seek, "the scenario's seek is skipped"));
    }
    let shared = scenario
        .subscriptions
        .iter()
        .any(|s| scenario.consumers.iter().filter(|c| c.subscription == s.name).count() > 1);
    if shared {
        needs.push((
            Capability::CompetingConsumers,
            "its consumers take turns on one live stream instead of a broker-side group",
        ));
    }
    if scenario.subscriptions.iter().any(|s| s.dead_letter.is_some()) {
        needs.push((Capability::DeadLetter, "nothing goes to a dead-letter topic"));
    }
    needs
}

/// What lacking `cap` does to the run on a broker that has acks, where it differs from what it does on
/// one without (`needs` says the latter). A broker with acks but no lease (RabbitMQ, Kafka, MQTT) still
/// gives a crashed consumer's unacked messages back: when it sees the consumer gone, not on a deadline.
fn consequence(cap: Capability, acks: bool) -> Option<&'static str> {
    match cap {
        Capability::AckDeadline if acks => Some(
            "what a crashed consumer held comes back when the broker sees it gone (its connection closes or its session times out), not when a lease runs out: a consumer that hangs keeps it",
        ),
        _ => None,
    }
}

/// The column names for `urls`, in order: [`label`], with `#2`, `#3` after a name seen before.
pub fn labels(urls: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashMap::new();
    urls.iter()
        .map(|url| {
            let label = label(url);
            let n = seen.entry(label.clone()).or_insert(0);
            *n += 1;
            if *n > 1 { format!("{label} #{n}") } else { label }
        })
        .collect()
}

/// Runs `scenario` on every broker of `urls` at once, each in real time with the same seed.
pub async fn compare(scenario: Scenario, urls: &[String], seed: u64) -> Comparison {
    compare_watched(scenario, urls, seed, None).await
}

/// How a live view follows a comparison: where the updates go, and the pause and stop it sends back.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Progress, narration and outcomes, each tagged with its column. Bounded: the counts so far are
    /// offered without waiting (the next ones, 250 ms later, say it again), outcomes wait for room.
    pub updates_tx: tokio::sync::mpsc::Sender<Update>,
    /// Pause and stop, for every column at once.
    pub hold_rx: tokio::sync::watch::Receiver<Hold>,
}

/// [`compare`], reporting to `watch` as the columns run. A stop ends every column early (each still
/// counts what it has and cleans up); the comparison then says how long they ran.
pub async fn compare_watched(
    scenario: Scenario,
    urls: &[String],
    seed: u64,
    watch: Option<Watch>,
) -> Comparison {
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    compare_named_watched(scenario, urls, seed, nonce, watch).await
}

/// [`compare`] with the names the run gives column `k`'s topics and subscriptions made from `nonce`:
/// `pubsub_cmp_PID_NONCE_K_NAME` (an MQTT session's client id is its subscription's name), so a test
/// can look for them afterwards.
pub async fn compare_named(scenario: Scenario, urls: &[String], seed: u64, nonce: u32) -> Comparison {
    compare_named_watched(scenario, urls, seed, nonce, None).await
}

async fn compare_named_watched(
    scenario: Scenario,
    urls: &[String],
    seed: u64,
    nonce: u32,
    watch: Option<Watch>,
) -> Comparison {
    let names = labels(urls);
    let runs = urls.iter().zip(&names).enumerate().map(|(k, (url, label))| {
        let prefix = format!("pubsub_cmp_{}_{nonce}_{k}_", std::process::id());
        let (scenario, url, label) = (scenario.clone(), url.clone(), label.clone());
        let watch = watch.clone().map(|w| (k, w));
        tokio::spawn(async move {
            let mut column = run_column(scenario, &url, seed, &prefix, watch.clone()).await;
            column.label = label;
            if let Some((k, w)) = watch {
                let _ = w.updates_tx.send(Update::Done(k, Box::new(column.clone()))).await;
            }
            column
        })
    });
    let mut columns = Vec::new();
    for ((run, url), label) in futures_util::future::join_all(runs).await.into_iter().zip(urls).zip(names) {
        columns.push(run.unwrap_or_else(|e| Column {
            url: redact(url),
            label,
            notes: Vec::new(),
            outcome: Err(format!("the run stopped: {e}")),
        }));
    }
    let stopped = watch.as_ref().is_some_and(|w| w.hold_rx.borrow().stop);
    let ran = columns.iter().filter_map(|c| c.outcome.as_ref().ok()).map(|r| r.duration).max();
    Comparison {
        scenario: scenario.name.clone(),
        summary: scenario.summary.clone(),
        seed,
        duration: if stopped { ran.unwrap_or_default() } else { scenario.duration },
        columns,
    }
}

async fn run_column(
    scenario: Scenario,
    url: &str,
    seed: u64,
    prefix: &str,
    watch: Option<(usize, Watch)>,
) -> Column {
    let mut column =
        Column { url: redact(url), label: label(url), notes: Vec::new(), outcome: Err(String::new()) };
    let broker = match tokio::time::timeout(PATIENCE, crate::broker::url::connect(url)).await {
        Ok(Ok(broker)) => broker,
        Ok(Err(e)) => {
            column.outcome = Err(format!("cannot connect: {e}"));
            return column;
        }
        Err(_) => {
            column.outcome = Err(format!("cannot connect: no answer within {PATIENCE:?}"));
            return column;
        }
    };
    let caps = broker.capabilities();
    if caps.has(Capability::Ack)
        && !caps.has(Capability::CompetingConsumers)
        && needs(&scenario).iter().any(|(c, _)| *c == Capability::CompetingConsumers)
    {
        // Its durable subscription is one session, not a group: several consumers of one would take it
        // from each other.
        let why = broker.why_not(Capability::CompetingConsumers);
        column.outcome = Err(format!(
            "this scenario has consumers competing on one subscription, and {} has no competing consumers ({why})",
            broker.kind()
        ));
        broker.close().await;
        return column;
    }
    for (cap, what) in needs(&scenario) {
        if !caps.has(cap) {
            let why = broker.why_not(cap);
            let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
            let what = consequence(cap, caps.has(Capability::Ack)).unwrap_or(what);
            column.notes.push(format!("no {} here{why}: {what}", cap.label()));
        }
    }
    if let Some((k, w)) = &watch {
        let _ = w.updates_tx.send(Update::Connected { column: *k, notes: column.notes.clone() }).await;
    }
    let own = match prefixed(&scenario, prefix) {
        Ok(own) => own,
        Err(e) => {
            column.outcome = Err(e);
            return column;
        }
    };
    let outcome = match Sim::new(own.clone(), broker.clone(), Pace::Real, seed).await {
        Ok(sim) => watched(sim, watch, prefix).run().await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot set the scenario up: {e}")),
    };
    clean_up(&broker, &own).await;
    column.outcome = outcome.map(|mut report| {
        unprefix(&mut report, prefix);
        column.notes.append(&mut report.notes);
        report
    });
    column
}

/// `sim`, reporting its progress and narration to `watch` (names without the column's prefix).
fn watched(sim: Sim, watch: Option<(usize, Watch)>, prefix: &str) -> Sim {
    let Some((k, w)) = watch else { return sim };
    let tx = w.updates_tx.clone();
    let own = prefix.to_string();
    let progress = move |mut p: Progress| {
        for s in &mut p.subs {
            if let Some(rest) = s.check.subscription.strip_prefix(&own) {
                s.check.subscription = rest.to_string();
            }
        }
        let _ = tx.try_send(Update::Progress(k, p));
    };
    // Narrated lines pass through a bounded channel (the simulator never waits on it) to the view.
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<String>(256);
    let (tx, own) = (w.updates_tx.clone(), prefix.to_string());
    tokio::spawn(async move {
        while let Some(line) = line_rx.recv().await {
            if tx.send(Update::Line(k, line.replace(&own, ""))).await.is_err() {
                return;
            }
        }
    });
    sim.watched(std::sync::Arc::new(progress)).narrating(line_tx).held(w.hold_rx)
}

/// `scenario` with every topic, subject and subscription name prefixed, so that a run on a shared
/// broker meets nothing of anyone else's and leaves nothing that could be taken for theirs.
fn prefixed(scenario: &Scenario, prefix: &str) -> Result<Scenario, String> {
    let p = |text: &str| -> Result<String, String> {
        let own = format!("{prefix}{text}");
        if text.starts_with(['*', '>']) || crate::model::Pattern::parse(&own).is_err() {
            return Err(format!(
                "cannot give \"{text}\" a name of its own for this run; start it with a word"
            ));
        }
        Ok(own)
    };
    let mut s = scenario.clone();
    for t in &mut s.topics {
        t.name = p(&t.name)?;
        t.subjects = t.subjects.iter().map(|x| p(x)).collect::<Result<_, _>>()?;
    }
    for sub in &mut s.subscriptions {
        sub.name = p(&sub.name)?;
        sub.topic = p(&sub.topic)?;
        sub.filter = sub.filter.iter().map(|x| p(x)).collect::<Result<_, _>>()?;
        sub.dead_letter = sub.dead_letter.as_deref().map(p).transpose()?;
    }
    for pb in &mut s.publishers {
        pb.subjects = pb.subjects.iter().map(|x| p(x)).collect::<Result<_, _>>()?;
    }
    for c in &mut s.consumers {
        c.subscription = p(&c.subscription)?;
    }
    for e in &mut s.events {
        e.subscription = e.subscription.as_deref().map(p).transpose()?;
    }
    Ok(s)
}

/// The report with the run's own prefix taken off every name again.
fn unprefix(report: &mut Report, prefix: &str) {
    let strip = |s: &mut String| {
        if let Some(rest) = s.strip_prefix(prefix) {
            *s = rest.to_string();
        }
    };
    for s in &mut report.subscriptions {
        strip(&mut s.name);
        strip(&mut s.topic);
    }
    for c in &mut report.consumers {
        strip(&mut c.subscription);
    }
    for c in &mut report.checks {
        strip(&mut c.subscription);
    }
    for line in report.narrative.iter_mut().chain(report.notes.iter_mut()) {
        *line = line.replace(prefix, "");
    }
}

/// Deletes what the column made: its subscriptions, then its topics (and dead-letter topics). Errors
/// are ignored: a broker that cannot delete could not create either.
async fn clean_up(broker: &SharedBroker, scenario: &Scenario) {
    for s in &scenario.subscriptions {
        if let Ok(name) = Name::new(&s.name) {
            let _ = tokio::time::timeout(PATIENCE, broker.delete_subscription(&name)).await;
        }
    }
    let topics = scenario
        .topics
        .iter()
        .map(|t| t.name.clone())
        .chain(scenario.subscriptions.iter().filter_map(|s| s.dead_letter.clone()));
    for t in topics {
        if let Ok(name) = Name::new(&t) {
            let _ = tokio::time::timeout(PATIENCE, broker.delete_topic(&name)).await;
        }
    }
    broker.close().await;
}

/// One row of the side-by-side table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow {
    /// A subscription's name, or one of its figures indented under it ("  lost").
    pub label: String,
    /// One cell per column (`None` where the column did not run); none at all on a name row.
    pub cells: Vec<Option<String>>,
    /// Per cell: whether it differs from the first column's.
    pub differs: Vec<bool>,
}

/// The table's rows: published, then per subscription its figures, each cell compared with the first
/// column's (a lag only by its order of magnitude: real time is never the same twice).
pub fn table(cmp: &Comparison) -> Vec<TableRow> {
    let reports: Vec<Option<&Report>> = cmp.columns.iter().map(|c| c.outcome.as_ref().ok()).collect();
    let mut rows =
        vec![row("published".into(), reports.iter().map(|r| r.map(|r| r.published().to_string())).collect())];
    let mut subs: Vec<String> = Vec::new();
    for r in reports.iter().flatten() {
        for c in &r.checks {
            if !subs.contains(&c.subscription) {
                subs.push(c.subscription.clone());
            }
        }
    }
    type Cell = fn(&DeliveryCheck) -> String;
    let fields: [(&str, Cell); 7] = [
        ("delivered", |c| c.delivered.to_string()),
        ("lost", |c| c.lost.to_string()),
        ("waiting at end", |c| c.waiting.to_string()),
        ("redelivered", |c| c.redelivered.to_string()),
        ("duplicates", |c| c.duplicates.to_string()),
        ("order", |c| order_word(c.out_of_order).to_string()),
        ("max lag", |c| lag_text(c.max_lag)),
    ];
    for sub in &subs {
        rows.push(TableRow { label: sub.clone(), cells: Vec::new(), differs: Vec::new() });
        for (label, cell) in fields {
            let cells = reports
                .iter()
                .map(|r| r.and_then(|r| r.checks.iter().find(|c| c.subscription == *sub)).map(cell))
                .collect();
            rows.push(row(format!("  {label}"), cells));
        }
    }
    rows
}

/// A row with each cell compared with the first.
fn row(label: String, cells: Vec<Option<String>>) -> TableRow {
    let lag = label.trim() == "max lag";
    let base = cells.first().cloned().flatten();
    let differs = cells
        .iter()
        .enumerate()
        .map(|(k, cell)| {
            k > 0
                && matches!((&base, cell), (Some(b), Some(t))
                    if if lag { magnitude(b) != magnitude(t) } else { b != t })
        })
        .collect();
    TableRow { label, cells, differs }
}

/// The side-by-side table as text; with `colour`, cells that differ from the first column are also
/// shown in bold yellow.
pub fn render(cmp: &Comparison, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "demo {} --compare — {}", cmp.scenario, cmp.summary);
    let _ = writeln!(
        out,
        "seed {}, {:.1} s on each broker at once, in real time\n",
        cmp.seed,
        cmp.duration.as_secs_f64()
    );
    let rows = table(cmp);
    let heads: Vec<String> =
        cmp.columns.iter().enumerate().map(|(k, c)| format!("[{}] {}", k + 1, c.label)).collect();
    let first = rows.iter().map(|r| r.label.chars().count()).max().unwrap_or(0).max(9) + 2;
    let widths: Vec<usize> = heads.iter().map(|h| h.chars().count().max(10) + 2).collect();
    let _ = write!(out, "{:first$}", "");
    for (h, w) in heads.iter().zip(&widths) {
        let _ = write!(out, "{h:>w$}");
    }
    let _ = writeln!(out);
    let marked = rows.iter().any(|r| r.differs.contains(&true));
    for row in &rows {
        let _ = write!(out, "{:first$}", row.label);
        for ((cell, differs), w) in row.cells.iter().zip(&row.differs).zip(&widths) {
            let text = match cell {
                None => "—".to_string(),
                Some(t) if *differs => format!("{t} *"),
                Some(t) => format!("{t}  "),
            };
            let padded = format!("{text:>w$}");
            if colour && *differs {
                let _ = write!(out, "\x1b[1;33m{padded}\x1b[0m");
            } else {
                let _ = write!(out, "{padded}");
            }
        }
        let _ = writeln!(out);
    }
    if marked {
        let _ = writeln!(out, "\n* differs from [1]");
    }
    let _ = writeln!(out);
    for (k, c) in cmp.columns.iter().enumerate() {
        let _ = writeln!(out, "[{}] {}", k + 1, c.url);
        if let Err(e) = &c.outcome {
            let _ = writeln!(out, "    did not run: {e}");
        }
        for note in &c.notes {
            let _ = writeln!(out, "    note: {note}");
        }
    }
    out
}

/// A lag's order of magnitude, as its text tells: under 100 ms, under a second, seconds, tens of seconds.
pub fn magnitude(text: &str) -> u8 {
    let ms = match text.split_once(' ') {
        Some((n, "ms")) => n.parse::<f64>().unwrap_or(0.0),
        Some((n, "s")) => n.parse::<f64>().unwrap_or(0.0) * 1000.0,
        _ => 0.0,
    };
    match ms {
        m if m < 100.0 => 0,
        m if m < 1000.0 => 1,
        m if m < 10_000.0 => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_checked_and_labelled() {
        let urls = parse_urls("mem://, redis://127.0.0.1:6379?mode=pubsub,nats://h?mode=core").unwrap();
        assert_eq!(urls.len(), 3);
        let labels: Vec<String> = urls.iter().map(|u| label(u)).collect();
        assert_eq!(labels, ["mem://", "redis pubsub", "nats core"]);
        assert_eq!(label("redis://h"), "redis streams");
        assert_eq!(label("nats://h"), "nats jetstream");
        assert!(parse_urls(" , ").unwrap_err().contains("--compare"));
        assert!(parse_urls("mem://,gopher://x").is_err());
    }

    #[test]
    fn every_name_gets_the_prefix_and_loses_it_again() {
        let s = Scenario::load("job-queue").unwrap();
        let own = prefixed(&s, "px_").unwrap();
        assert!(own.topics.iter().all(|t| t.name.starts_with("px_")));
        assert!(own.subscriptions.iter().all(|x| x.name.starts_with("px_") && x.topic.starts_with("px_")));
        assert!(own.publishers.iter().flat_map(|p| &p.subjects).all(|x| x.starts_with("px_")));
        assert!(own.consumers.iter().all(|c| c.subscription.starts_with("px_")));
        let mut wild = s.clone();
        wild.topics[0].subjects = vec![">".into()];
        assert!(prefixed(&wild, "px_").unwrap_err().contains("\">\""));
    }

    #[test]
    fn what_a_scenario_needs_follows_from_its_parts() {
        let caps = |name: &str| {
            needs(&Scenario::load(name).unwrap()).into_iter().map(|(c, _)| c).collect::<Vec<_>>()
        };
        assert!(caps("job-queue").contains(&Capability::AckDeadline));
        assert!(caps("job-queue").contains(&Capability::CompetingConsumers));
        assert!(caps("offline-subscriber").is_empty());
    }

    #[test]
    fn the_table_marks_what_differs_from_the_first_column() {
        let check = |delivered, lost| DeliveryCheck {
            subscription: "inbox".into(),
            expected: 10,
            delivered,
            lost,
            max_lag: Duration::from_millis(20),
            ..DeliveryCheck::default()
        };
        let report = |c| Report { publishers: vec![("p".into(), 10)], checks: vec![c], ..Report::default() };
        let column =
            |url: &str, outcome| Column { url: url.into(), label: label(url), notes: Vec::new(), outcome };
        let cmp = Comparison {
            scenario: "x".into(),
            summary: "y".into(),
            seed: 1,
            duration: Duration::from_secs(2),
            columns: vec![
                column("mem://", Ok(report(check(10, 0)))),
                column("redis://h?mode=pubsub", Ok(report(check(6, 4)))),
                column("nats://h", Err("cannot connect: refused".into())),
            ],
        };
        let text = render(&cmp, false);
        let line =
            |label: &str| text.lines().find(|l| l.trim_start().starts_with(label)).unwrap().to_string();
        assert!(line("lost").contains("4 *"), "{text}");
        assert!(line("lost").contains('—'), "{text}");
        assert!(!line("max lag").contains('*'), "{text}");
        assert!(!line("published").contains('*'), "{text}");
        assert!(text.contains("did not run: cannot connect: refused"), "{text}");
        assert!(render(&cmp, true).contains("\x1b[1;33m"));
        assert_eq!(cmp.column("mem://").unwrap().check("inbox").unwrap().lost, 0);
    }
}
