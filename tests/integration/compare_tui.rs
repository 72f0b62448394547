//! The `demo --compare` view: snapshots while the runs go on and of the final table, at 80×24, 120×40
//! and 200×60 with 2 and 4 broker columns, from constructed values (no broker, no clock); the marks
//! of differing cells; and the final table of a real run on two engines, the same numbers `render`
//! prints.

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use pubsub::demo::compare::{Column, Comparison, Watch, compare_watched, render, table};
use pubsub::demo::progress::{Hold, Phase, Progress, SubProgress, Update};
use pubsub::demo::{DeliveryCheck, Report, Scenario};
use pubsub::tui::compare::CompareState;
use pubsub::tui::theme::Theme;

pub(crate) const URLS: [&str; 4] = [
    "mem://",
    "redis://127.0.0.1:6379?mode=pubsub",
    "redis://127.0.0.1:6379",
    "nats://127.0.0.1:4222?mode=core",
];

/// Whether column `k` keeps nothing for an absent listener (Redis PUB/SUB, NATS core).
fn live_only(k: usize) -> bool {
    URLS[k].contains("mode=")
}

fn check(sub: &str, expected: u64, delivered: u64, lost: u64, waiting: u64) -> DeliveryCheck {
    DeliveryCheck { subscription: sub.into(), expected, delivered, lost, waiting, ..DeliveryCheck::default() }
}

/// Column `k` 12 s into offline-subscriber: the phone went offline at 5 s; a live-only column lost
/// what came since, a durable one keeps it for the phone (and its lag grows).
fn progress(k: usize) -> Progress {
    let phone = if live_only(k) { check("phone", 60, 25, 35, 0) } else { check("phone", 60, 25, 0, 35) };
    Progress {
        now: Duration::from_millis(12_000 + 10 * k as u64),
        phase: Phase::Running,
        published: 60 + k as u64 % 2,
        subs: vec![
            SubProgress { check: check("dashboard", 60, 60 + k as u64 % 2, 0, 0), lag_now: Duration::ZERO },
            SubProgress {
                check: phone,
                lag_now: if live_only(k) { Duration::ZERO } else { Duration::from_millis(7000) },
            },
        ],
    }
}

fn notes(k: usize) -> Vec<String> {
    if live_only(k) {
        vec!["the broker has no acks or durable subscriptions: each subscription here is a live one, open while a consumer listens".into()]
    } else {
        Vec::new()
    }
}

/// The view of `columns` brokers while they run.
pub(crate) fn running(columns: usize, theme: Theme) -> CompareState {
    let scenario = Scenario::load("offline-subscriber").unwrap();
    let urls: Vec<String> = URLS[..columns].iter().map(|u| u.to_string()).collect();
    let mut s = CompareState::new(&scenario, &urls, 42, theme);
    for k in 0..columns {
        s.absorb(Update::Connected { column: k, notes: notes(k) });
        // Four reports a second; the phone's deliveries stop when it goes offline at 5 s.
        for step in 1..=48u64 {
            let mut p = progress(k);
            let at = |n: u64, upto: u64| n * step.min(upto) / upto;
            p.subs[0].check.delivered = at(p.subs[0].check.delivered, 48);
            p.subs[1].check.delivered = at(p.subs[1].check.delivered, 20);
            if step < 48 {
                p.now = Duration::from_millis(250 * step);
            }
            s.absorb(Update::Progress(k, p));
        }
        let line = if live_only(k) {
            "5.00s  app goes OFFLINE and stops listening: nobody keeps what is published now"
        } else {
            "5.00s  app goes OFFLINE (finished its 1 message(s)); its subscription keeps what comes"
        };
        s.absorb(Update::Line(k, line.into()));
    }
    s
}

/// The same brokers at the end of a 20 s run.
pub(crate) fn finished(columns: usize, theme: Theme) -> CompareState {
    let mut s = running(columns, theme);
    let cols: Vec<Column> = (0..columns)
        .map(|k| {
            let phone =
                if live_only(k) { check("phone", 100, 50, 50, 0) } else { check("phone", 100, 100, 0, 0) };
            let mut phone = phone;
            phone.max_lag =
                if live_only(k) { Duration::from_millis(8) } else { Duration::from_millis(10_200) };
            let report = Report {
                publishers: vec![("monitor".into(), 100)],
                checks: vec![check("dashboard", 100, 100, 0, 0), phone],
                ..Report::default()
            };
            Column { url: URLS[k].into(), label: String::new(), notes: notes(k), outcome: Ok(report) }
        })
        .collect();
    let urls: Vec<String> = URLS[..columns].iter().map(|u| u.to_string()).collect();
    let mut cmp = Comparison {
        scenario: "offline-subscriber".into(),
        summary: s.summary.clone(),
        seed: 42,
        duration: Duration::from_secs(20),
        columns: cols,
    };
    for (c, label) in cmp.columns.iter_mut().zip(pubsub::demo::compare::labels(&urls)) {
        c.label = label;
    }
    for (k, c) in cmp.columns.clone().into_iter().enumerate() {
        s.absorb(Update::Done(k, Box::new(c)));
    }
    s.absorb(Update::Finished(cmp));
    s
}

fn draw(s: &CompareState, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| pubsub::tui::views::compare::draw(f, s)).unwrap();
    terminal
}

#[test]
fn the_compare_view_at_three_sizes_with_2_and_4_brokers_running_and_finished() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let _guard = settings.bind_to_scope();
    for columns in [2usize, 4] {
        for (w, h) in [(80u16, 24u16), (120, 40), (200, 60)] {
            for (when, s) in [
                ("running", running(columns, Theme::default())),
                ("final", finished(columns, Theme::default())),
            ] {
                let terminal = draw(&s, w, h);
                let screen = format!("{:?}", terminal.backend());
                assert!(
                    screen.contains("[1] mem://"),
                    "{when} {columns} {w}x{h}: the reference column stays"
                );
                // The phone's loss on the live-only column is on screen and marked at every size.
                assert!(
                    screen.contains(if when == "running" { "35 *" } else { "50 *" }),
                    "{when} {w}x{h}\n{screen}"
                );
                if w >= 120 || columns == 2 {
                    assert!(screen.contains(&format!("[{columns}]")), "{when} {w}x{h}: every broker fits");
                } else {
                    assert!(screen.contains("←→"), "{when} {w}x{h}: the others scroll\n{screen}");
                }
                insta::assert_snapshot!(format!("compare_{when}_{columns}b_{w}x{h}"), terminal.backend());
            }
        }
    }
}

/// A cell that differs from the first column is marked `*` and painted in the highlight; its twin in a
/// column that agrees is not. The final table is `compare::table`, the rows `render` prints.
#[test]
fn differing_cells_are_highlighted_and_the_final_rows_are_the_printed_tables() {
    let theme = Theme::load("high-contrast", None).unwrap();
    let s = finished(4, theme.clone());
    let rows = s.rows();
    assert_eq!(rows, table(s.finished.as_ref().unwrap()));
    let lost = rows.iter().filter(|r| r.label.trim() == "lost").nth(1).unwrap();
    assert_eq!(lost.differs, [false, true, false, true]);
    let terminal = draw(&s, 200, 60);
    let buffer = terminal.backend().buffer();
    let line = |y: u16| -> String { (0..200).map(|x| buffer[(x, y)].symbol().to_string()).collect() };
    let y = (0..60).filter(|&y| line(y).trim_start().starts_with("lost")).nth(1).unwrap();
    let text = line(y);
    let marked = text.find("50 *").unwrap();
    let x = text[..marked].chars().count() as u16;
    assert_eq!(buffer[(x, y)].bg, theme.warn, "a differing cell is highlighted: {text}");
    let zero = text.find(" 0 ").unwrap();
    let x = text[..zero].chars().count() as u16 + 1;
    assert_eq!(buffer[(x, y)].bg, theme.bg, "the reference cell is not: {text}");
    let printed = render(s.finished.as_ref().unwrap(), false);
    assert!(printed.lines().any(|l| l.trim_start().starts_with("lost") && l.contains("50 *")), "{printed}");
}

/// A real run on two engines, followed as the view follows it: progress arrives while it runs, every
/// column ends, and the final rows are the comparison's table, with nothing marked between equals.
#[tokio::test]
async fn a_run_on_two_engines_fills_the_view_and_ends_in_the_final_table() {
    let text = r#"
name = "tiny"
summary = "Two subscribers, one away for a while."
duration = "1500ms"
[[topic]]
name = "alerts"
[[subscription]]
name = "dashboard"
topic = "alerts"
[[subscription]]
name = "phone"
topic = "alerts"
[[publisher]]
name = "monitor"
subjects = ["alerts"]
rate = 20
[[consumer]]
name = "screen"
subscription = "dashboard"
process = "5ms"
[[consumer]]
name = "app"
subscription = "phone"
process = "5ms"
[[event]]
at = "500ms"
action = "offline"
consumer = "app"
[[event]]
at = "1s"
action = "online"
consumer = "app"
"#;
    let scenario = Scenario::parse(text, "tiny").unwrap();
    let urls = vec!["mem://".to_string(), "mem://".to_string()];
    let mut s = CompareState::new(&scenario, &urls, 7, Theme::default());
    let (updates_tx, mut updates_rx) = tokio::sync::mpsc::channel(4096);
    let (_hold_tx, hold_rx) = tokio::sync::watch::channel(Hold::default());
    let cmp = compare_watched(scenario, &urls, 7, Some(Watch { updates_tx, hold_rx })).await;
    let mut progressed = false;
    while let Ok(u) = updates_rx.try_recv() {
        progressed |= matches!(u, Update::Progress(_, ref p) if p.phase == Phase::Running && p.published > 0);
        s.absorb(u);
    }
    assert!(progressed, "counts arrived while the columns ran");
    assert!(s.columns.iter().all(|c| c.phase == Phase::Done), "{:?}", s.columns);
    assert!(s.columns.iter().all(|c| c.lines.iter().any(|l| l.contains("OFFLINE"))), "narrated");
    s.absorb(Update::Finished(cmp.clone()));
    assert_eq!(s.rows(), table(&cmp));
    assert!(s.rows().iter().all(|r| !r.differs.contains(&true)), "{}", render(&cmp, false));
    let screen = pubsub::tui::views::compare::text(&s, 120, 40);
    assert!(screen.contains("done in 1.5 s: the final table"), "{screen}");
}
