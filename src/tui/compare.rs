//! The state of the `demo --compare` view: one column per broker, filled from the runs' updates while
//! they go on, then the final table. Plain data with its transitions (updates in, keys in, the hold the
//! runs should follow out); `views::compare` draws it.

use std::collections::VecDeque;
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::demo::Scenario;
use crate::demo::compare::{Comparison, TableRow, labels, table};
use crate::demo::progress::{Hold, Phase, Progress, Update};
use crate::demo::report::{lag_text, order_word};
use crate::tui::theme::Theme;

/// Narrated lines kept per column.
const LINES_KEPT: usize = 8;
/// Rate samples kept per column (one per progress report, every 250 ms: a minute).
const RATE_KEPT: usize = 240;

/// What a key does in the compare view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareAction {
    /// Leave (stopping the runs when they still go on).
    Quit,
    /// Show or hide the keys.
    Help,
    /// Pause or resume every column.
    Pause,
    /// Show the next broker column (the first stays).
    Right,
    /// Show the previous broker column.
    Left,
    /// Scroll the rows down.
    Down,
    /// Scroll the rows up.
    Up,
}

/// The view's keys: handling, footer and help all read this list (key, its name, what it does).
pub const KEYS: &[(KeyCode, CompareAction, &str, &str)] = &[
    (KeyCode::Char('q'), CompareAction::Quit, "q", "quit"),
    (KeyCode::Esc, CompareAction::Quit, "Esc", "quit"),
    (KeyCode::Char('?'), CompareAction::Help, "?", "help"),
    (KeyCode::Char(' '), CompareAction::Pause, "Space", "pause/resume"),
    (KeyCode::Right, CompareAction::Right, "→", "next broker"),
    (KeyCode::Char('l'), CompareAction::Right, "l", "next broker"),
    (KeyCode::Left, CompareAction::Left, "←", "previous broker"),
    (KeyCode::Char('h'), CompareAction::Left, "h", "previous broker"),
    (KeyCode::Down, CompareAction::Down, "↓", "scroll down"),
    (KeyCode::Char('j'), CompareAction::Down, "j", "scroll down"),
    (KeyCode::Up, CompareAction::Up, "↑", "scroll up"),
    (KeyCode::Char('k'), CompareAction::Up, "k", "scroll up"),
];

/// One broker's column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnState {
    /// URL without a password.
    pub url: String,
    /// Header name (`redis pubsub`, `mem:// #2`).
    pub label: String,
    /// Where its run is.
    pub phase: Phase,
    /// What it cannot do of what the scenario asks (and, at the end, what the run did instead).
    pub notes: Vec<String>,
    /// Why it did not run, when it did not.
    pub error: Option<String>,
    /// Its counts so far.
    pub progress: Option<Progress>,
    /// What it narrated, newest last.
    pub lines: VecDeque<String>,
    /// Messages its consumers received per report interval, oldest first.
    pub rate: VecDeque<u64>,
    /// Deliveries at the previous report, for the rate.
    last_deliveries: u64,
}

/// The whole view.
#[derive(Debug, Clone)]
pub struct CompareState {
    /// Scenario name.
    pub scenario: String,
    /// Its summary.
    pub summary: String,
    /// Seed.
    pub seed: u64,
    /// How long each column runs.
    pub duration: Duration,
    /// Subscriptions, in the scenario's order (rows exist before any count arrives).
    pub subscriptions: Vec<String>,
    /// One per broker, in the order given.
    pub columns: Vec<ColumnState>,
    /// The comparison, once every column ended.
    pub finished: Option<Comparison>,
    /// Every column stands still.
    pub paused: bool,
    /// The user asked the runs to stop.
    pub stopping: bool,
    /// The keys are shown.
    pub help: bool,
    /// The first broker column shown after the first (which always stays).
    pub scroll: usize,
    /// The first table row shown.
    pub top: usize,
    /// The user quit.
    pub quit: bool,
    /// Colours.
    pub theme: Theme,
}

impl CompareState {
    /// The view of `scenario` about to run on `urls`.
    pub fn new(scenario: &Scenario, urls: &[String], seed: u64, theme: Theme) -> CompareState {
        let columns = urls
            .iter()
            .zip(labels(urls))
            .map(|(url, label)| ColumnState {
                url: crate::broker::url::redact(url),
                label,
                phase: Phase::Connecting,
                notes: Vec::new(),
                error: None,
                progress: None,
                lines: VecDeque::new(),
                rate: VecDeque::new(),
                last_deliveries: 0,
            })
            .collect();
        CompareState {
            scenario: scenario.name.clone(),
            summary: scenario.summary.clone(),
            seed,
            duration: scenario.duration,
            subscriptions: scenario.subscriptions.iter().map(|s| s.name.clone()).collect(),
            columns,
            finished: None,
            paused: false,
            stopping: false,
            help: false,
            scroll: 0,
            top: 0,
            quit: false,
            theme,
        }
    }

    /// Takes in what a run reported.
    pub fn absorb(&mut self, update: Update) {
        match update {
            Update::Connected { column, notes } => {
                if let Some(c) = self.columns.get_mut(column) {
                    c.notes = notes;
                    c.phase = Phase::Running;
                    c.say(Duration::ZERO, "connected; the scenario starts".into());
                }
            }
            Update::Progress(column, p) => {
                let Some(c) = self.columns.get_mut(column) else { return };
                if p.phase == Phase::Counting && c.phase != Phase::Counting {
                    let what = if self.stopping { "stopped" } else { "the scenario is over" };
                    c.say(p.now, format!("{what}: counting what arrived and what the broker still keeps"));
                }
                let deliveries: u64 = p.subs.iter().map(|s| s.check.delivered + s.check.redelivered).sum();
                if p.phase == Phase::Running {
                    c.rate.push_back(deliveries.saturating_sub(c.last_deliveries));
                    if c.rate.len() > RATE_KEPT {
                        c.rate.pop_front();
                    }
                }
                c.last_deliveries = deliveries;
                c.phase = p.phase;
                c.progress = Some(p);
            }
            Update::Line(column, line) => {
                if let Some(c) = self.columns.get_mut(column) {
                    c.push(line);
                }
            }
            Update::Done(column, done) => {
                let Some(c) = self.columns.get_mut(column) else { return };
                let now = c.progress.as_ref().map_or(Duration::ZERO, |p| p.now);
                let done = *done;
                c.notes = done.notes;
                match done.outcome {
                    Ok(report) => {
                        c.phase = Phase::Done;
                        let lost: u64 = report.checks.iter().map(|x| x.lost).sum();
                        let waiting: u64 = report.checks.iter().map(|x| x.waiting).sum();
                        c.say(now, format!("counted and cleaned up: {lost} lost, {waiting} waiting at end"));
                    }
                    Err(e) => {
                        c.phase = Phase::Failed;
                        c.say(now, format!("did not run: {e}"));
                        c.error = Some(e);
                    }
                }
            }
            Update::Finished(cmp) => {
                for (c, done) in self.columns.iter_mut().zip(&cmp.columns) {
                    c.label.clone_from(&done.label);
                    c.notes.clone_from(&done.notes);
                }
                self.finished = Some(cmp);
                self.paused = false;
            }
        }
    }

    /// Carries out a key; returns the hold the runs should follow when it changed.
    pub fn key(&mut self, key: KeyEvent) -> Option<Hold> {
        if self.help {
            self.help = false;
            return None;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return self.act(CompareAction::Quit);
        }
        let action = KEYS.iter().find(|(code, ..)| *code == key.code).map(|(_, action, ..)| *action)?;
        self.act(action)
    }

    /// Carries out `action`; returns the hold the runs should follow when it changed.
    pub fn act(&mut self, action: CompareAction) -> Option<Hold> {
        let running = self.finished.is_none();
        match action {
            CompareAction::Quit => {
                self.quit = true;
                if running {
                    self.stopping = true;
                    return Some(self.hold());
                }
            }
            CompareAction::Help => self.help = true,
            CompareAction::Pause if running && !self.stopping => {
                self.paused = !self.paused;
                return Some(self.hold());
            }
            CompareAction::Pause => {}
            CompareAction::Right => {
                self.scroll = (self.scroll + 1).min(self.columns.len().saturating_sub(2));
            }
            CompareAction::Left => self.scroll = self.scroll.saturating_sub(1),
            CompareAction::Down => self.top = (self.top + 1).min(self.rows().len().saturating_sub(1)),
            CompareAction::Up => self.top = self.top.saturating_sub(1),
        }
        None
    }

    /// What the runs should do now.
    pub fn hold(&self) -> Hold {
        Hold { paused: self.paused, stop: self.stopping }
    }

    /// Time into the run: the furthest column's.
    pub fn elapsed(&self) -> Duration {
        self.columns.iter().filter_map(|c| c.progress.as_ref()).map(|p| p.now).max().unwrap_or_default()
    }

    /// The rows shown: the final table once every column ended, else the counts so far.
    pub fn rows(&self) -> Vec<TableRow> {
        match &self.finished {
            Some(cmp) => table(cmp),
            None => self.live_rows(),
        }
    }

    /// The counts so far, in the final table's shape, with differences from the first column marked
    /// only past the columns' timing noise (see [`differs_live`]).
    fn live_rows(&self) -> Vec<TableRow> {
        let cell = |c: &ColumnState, f: &dyn Fn(&Progress) -> Option<String>| -> Option<String> {
            match (&c.progress, c.phase) {
                (_, Phase::Failed) => None,
                (None, _) => Some("…".into()),
                (Some(p), _) => f(p).or_else(|| Some("…".into())),
            }
        };
        let mut rows = vec![live_row(
            "published",
            self.columns.iter().map(|c| cell(c, &|p| Some(p.published.to_string()))).collect(),
        )];
        type Field = fn(&crate::demo::progress::SubProgress) -> String;
        let fields: [(&str, Field); 7] = [
            ("delivered", |s| s.check.delivered.to_string()),
            ("lost so far", |s| s.check.lost.to_string()),
            ("not done yet", |s| s.check.waiting.to_string()),
            ("redelivered", |s| s.check.redelivered.to_string()),
            ("duplicates", |s| s.check.duplicates.to_string()),
            ("order", |s| order_word(s.check.out_of_order).to_string()),
            ("lag now", |s| lag_text(s.lag_now)),
        ];
        for sub in &self.subscriptions {
            rows.push(TableRow { label: sub.clone(), cells: Vec::new(), differs: Vec::new() });
            for (label, field) in fields {
                let cells = self
                    .columns
                    .iter()
                    .map(|c| cell(c, &|p| p.subs.iter().find(|s| s.check.subscription == *sub).map(field)))
                    .collect();
                rows.push(live_row(&format!("  {label}"), cells));
            }
        }
        rows
    }
}

impl ColumnState {
    fn push(&mut self, line: String) {
        self.lines.push_back(line.trim_start().to_string());
        if self.lines.len() > LINES_KEPT {
            self.lines.pop_front();
        }
    }

    /// A line of the view's own, in the narration's shape.
    fn say(&mut self, at: Duration, text: String) {
        self.push(format!("{:.2}s  {text}", at.as_secs_f64()));
    }
}

fn live_row(label: &str, cells: Vec<Option<String>>) -> TableRow {
    let base = cells.first().cloned().flatten();
    let differs = cells
        .iter()
        .enumerate()
        .map(|(k, cell)| {
            k > 0 && matches!((&base, cell), (Some(b), Some(t)) if differs_live(label.trim(), b, t))
        })
        .collect();
    TableRow { label: label.to_string(), cells, differs }
}

/// Whether two cells of a row differ enough to mark while the runs go on. The columns run at once but
/// not in lockstep, so counts a message or two apart (or under a tenth apart) are timing, not a
/// difference, and lags are marked a second apart; words (order) differ when they differ. The final
/// table marks every difference.
pub fn differs_live(row: &str, a: &str, b: &str) -> bool {
    if a == "…" || b == "…" {
        return false;
    }
    if row == "lag now" {
        let ms = |t: &str| match t.split_once(' ') {
            Some((n, "ms")) => n.parse::<f64>().unwrap_or(0.0),
            Some((n, "s")) => n.parse::<f64>().unwrap_or(0.0) * 1000.0,
            _ => 0.0,
        };
        return (ms(a) - ms(b)).abs() >= 1000.0;
    }
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.abs_diff(y) > 2.max(x.max(y) / 10),
        _ => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::DeliveryCheck;
    use crate::demo::progress::SubProgress;

    fn state() -> CompareState {
        let scenario = Scenario::load("offline-subscriber").unwrap();
        let urls = ["mem://".to_string(), "redis://h?mode=pubsub".into(), "mem://".into()];
        CompareState::new(&scenario, &urls, 42, Theme::default())
    }

    fn progress(delivered: u64, lost: u64) -> Progress {
        let sub = |name: &str, lost| SubProgress {
            check: DeliveryCheck {
                subscription: name.into(),
                expected: 50,
                delivered,
                lost,
                ..DeliveryCheck::default()
            },
            lag_now: Duration::from_millis(20),
        };
        Progress {
            now: Duration::from_secs(10),
            phase: Phase::Running,
            published: 50,
            subs: vec![sub("dashboard", 0), sub("phone", lost)],
        }
    }

    #[test]
    fn labels_are_known_before_the_runs_start_and_twins_are_numbered() {
        let s = state();
        let labels: Vec<&str> = s.columns.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["mem://", "redis pubsub", "mem:// #2"]);
        assert!(s.rows().iter().any(|r| r.label == "phone"), "rows exist before any count");
    }

    #[test]
    fn keys_pause_and_stop_every_run_and_scroll_the_columns() {
        let mut s = state();
        let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(s.key(key(KeyCode::Char(' '))), Some(Hold { paused: true, stop: false }));
        assert_eq!(s.key(key(KeyCode::Char(' '))), Some(Hold { paused: false, stop: false }));
        assert_eq!(s.key(key(KeyCode::Right)), None);
        assert_eq!(s.scroll, 1);
        s.key(key(KeyCode::Right));
        assert_eq!(s.scroll, 1, "the last broker is shown: no further");
        s.key(key(KeyCode::Char('?')));
        assert!(s.help);
        assert_eq!(s.key(key(KeyCode::Char('q'))), None, "a key first closes the help");
        assert!(!s.help && !s.quit);
        assert_eq!(s.key(key(KeyCode::Char('q'))), Some(Hold { paused: false, stop: true }));
        assert!(s.quit);
    }

    #[test]
    fn differing_cells_are_marked_only_past_the_timing_noise() {
        let mut s = state();
        s.absorb(Update::Connected { column: 1, notes: vec!["no acks here".into()] });
        s.absorb(Update::Progress(0, progress(50, 0)));
        s.absorb(Update::Progress(1, progress(49, 20)));
        let rows = s.rows();
        let row = |label: &str, nth: usize| {
            rows.iter().filter(|r| r.label.trim() == label).nth(nth).cloned().unwrap()
        };
        assert_eq!(row("lost so far", 1).cells[1].as_deref(), Some("20"));
        assert_eq!(row("lost so far", 1).differs, [false, true, false], "the phone's loss is marked");
        assert_eq!(row("lost so far", 0).differs, [false, false, false], "the dashboard lost nothing");
        assert_eq!(row("delivered", 0).differs, [false, false, false], "one apart is timing");
        assert_eq!(row("delivered", 0).cells[2].as_deref(), Some("…"), "the third has no count yet");
        assert_eq!(s.columns[1].notes, ["no acks here"]);
        assert!(differs_live("lag now", "20 ms", "9.5 s"));
        assert!(!differs_live("lag now", "20 ms", "400 ms"));
        assert!(differs_live("order", "kept", "broken"));
        assert!(differs_live("redelivered", "0", "3") && !differs_live("redelivered", "0", "2"));
    }

    #[test]
    fn the_rate_is_what_arrived_since_the_last_report() {
        let mut s = state();
        s.absorb(Update::Progress(0, progress(10, 0)));
        s.absorb(Update::Progress(0, progress(15, 0)));
        assert_eq!(s.columns[0].rate, [20, 10], "two subscriptions, each 10 then 5 more");
    }
}
