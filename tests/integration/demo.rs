//! Every built-in workshop scenario, headless with a fixed seed, asserting the concept it teaches.

use pubsub::demo::{Report, Scenario, run_virtual};
use pubsub::engine::{BrowseFrom, Engine};

use crate::support::name;

async fn run(scenario: &str) -> (Report, Engine) {
    run_virtual(Scenario::load(scenario).unwrap(), 42).await.unwrap()
}

#[tokio::test]
async fn fan_out_every_subscription_gets_every_message() {
    let (r, _) = run("fan-out").await;
    assert_eq!(r.published(), 60);
    for s in &r.subscriptions {
        assert_eq!((s.delivered, s.acked, s.backlog), (60, 60, 0), "{}", s.name);
    }
}

#[tokio::test]
async fn fan_in_one_log_holds_every_publishers_messages() {
    let (r, e) = run("fan-in").await;
    assert_eq!(r.published(), 60);
    assert_eq!(r.subscription("dashboard").unwrap().acked, 60);
    let log = e.browse(&name("sensors"), BrowseFrom::Seq(1), 100).unwrap();
    assert_eq!(log.len(), 60);
    assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1), "one gap-free sequence");
    let subjects: std::collections::BTreeSet<_> = log.iter().map(|m| m.subject().to_string()).collect();
    assert_eq!(subjects.len(), 3, "each message keeps the subject it was published to");
}

#[tokio::test]
async fn many_to_many_each_subscription_processes_each_message_once() {
    let (r, _) = run("many-to-many").await;
    assert_eq!(r.published(), 70);
    for sub in ["search-index", "audit-log"] {
        assert_eq!(r.subscription(sub).unwrap().acked, 70, "{sub}");
        let by_consumers: u64 = r.consumers.iter().filter(|c| c.subscription == sub).map(|c| c.acked).sum();
        assert_eq!(by_consumers, 70, "{sub}: its consumers split the work");
    }
    assert_eq!(r.double_holds, 0);
}

#[tokio::test]
async fn work_queue_union_is_everything_and_no_job_is_held_twice() {
    let (r, _) = run("work-queue").await;
    let received: u64 = r.consumers.iter().map(|c| c.received).sum();
    assert_eq!((received, r.published()), (200, 200));
    assert_eq!(r.double_holds, 0, "no message was held by two consumers at once");
    assert!(r.consumers.iter().all(|c| c.received > 0), "every worker got work: {:?}", r.consumers);
    let fast = r.consumer("worker-fast").unwrap().received;
    let slow = r.consumer("worker-slow").unwrap().received;
    assert!(fast > slow, "the faster worker takes more");
}

#[tokio::test]
async fn slow_consumer_lag_peaks_then_drains_to_zero() {
    let (r, _) = run("slow-consumer").await;
    let lag = &r.subscription("reports").unwrap().lag;
    let peak = lag.iter().copied().max().unwrap();
    assert!(peak > 20, "lag grew while the consumer was slow: {lag:?}");
    assert_eq!(lag.last(), Some(&0), "and drained after it sped up: {lag:?}");
    assert_eq!(r.subscription("reports").unwrap().acked, 100);
}

#[tokio::test]
async fn poison_message_ends_in_the_dead_letter_topic_with_its_history() {
    let (r, e) = run("poison-message").await;
    let processor = r.subscription("processor").unwrap();
    assert_eq!((processor.dead_lettered, processor.acked, processor.backlog), (4, 36, 0));
    let dead = e.browse(&name("payments-dlq"), BrowseFrom::Seq(1), 10).unwrap();
    assert_eq!(dead.len(), 4);
    let h = dead[0].headers();
    assert_eq!(h.get("x-dead-letter-delivery-count").map(String::as_str), Some("3"));
    assert_eq!(h.get("x-dead-letter-reason").map(String::as_str), Some("max_deliveries"));
    assert_eq!(h.get("x-dead-letter-seq").map(String::as_str), Some("10"));
    assert!(String::from_utf8_lossy(&dead[0].payload).contains("poison"));
}

#[tokio::test]
async fn crash_in_flight_messages_are_redelivered_to_the_survivor() {
    let (r, _) = run("crash").await;
    let b = r.consumer("worker-b").unwrap();
    assert!(b.redelivered > 0, "worker-b received the crashed worker's messages again");
    assert_eq!(r.subscription("pool").unwrap().acked, 80, "nothing was lost");
    assert_eq!(r.double_holds, 0);
    assert!(r.narrative.iter().any(|l| l.contains("CRASHED")));
}

#[tokio::test]
async fn replay_seek_back_processes_the_history_again() {
    let (r, _) = run("replay").await;
    assert_eq!(r.published(), 30);
    assert_eq!(r.consumer("auditor").unwrap().received, 60, "30 live, then all 30 again after the seek");
}

#[tokio::test]
async fn push_delivers_sooner_than_a_once_a_second_pull() {
    let (r, _) = run("push-vs-pull").await;
    let peak = |s: &str| r.subscription(s).unwrap().lag.iter().copied().max().unwrap_or(0);
    assert!(
        peak("pulled") > peak("pushed"),
        "pulled waits for its poll: {} vs {}",
        peak("pulled"),
        peak("pushed")
    );
    assert_eq!(r.subscription("pulled").unwrap().acked, 120);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_run() {
    let one = run("work-queue").await.0.render();
    let two = run("work-queue").await.0.render();
    assert_eq!(one, two);
}

#[tokio::test]
async fn topology_of_every_scenario_at_its_end() {
    use pubsub::broker::Capabilities;
    use pubsub::tui::app::{App, View};
    use pubsub::tui::theme::Theme;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let _guard = settings.bind_to_scope();
    for (scenario_name, _) in pubsub::demo::scenario::BUILT_IN {
        let scenario = Scenario::load(scenario_name).unwrap();
        let publishers = scenario.publishers.iter().map(|p| (p.name.clone(), p.subjects.clone())).collect();
        let (_, engine) = run_virtual(scenario, 42).await.unwrap();
        let mut app =
            App::new(format!("demo {scenario_name}"), Capabilities::all(), Theme::default(), 100, 1 << 20);
        app.publishers = publishers;
        app.now = engine.now();
        app.stats(Some(engine.topics()), Some(engine.subscriptions(None)));
        app.view = View::Topology;
        let rows = pubsub::tui::views::topology::rows(&app);
        assert!(!rows.is_empty(), "{scenario_name}");
        // Issue 19: rows were cut at 120 columns. Every row fits inside the pane's borders.
        for row in &rows {
            let width: usize = row.spans.iter().map(|(text, _)| text.chars().count()).sum();
            assert!(width <= 118, "{scenario_name}: a row of {width} columns is cut at 120");
        }
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|f| pubsub::tui::views::draw(f, &app)).unwrap();
        insta::assert_snapshot!(format!("topology_{scenario_name}"), terminal.backend());
    }
}

/// The flow view of every built-in scenario, live after 6 s of demo time, with 3 and with 12 consumers
/// (added or removed with the live controls), at 80×24, 120×40 and 200×60.
#[tokio::test]
async fn flow_view_of_every_scenario_at_three_sizes_with_3_and_12_consumers() {
    use pubsub::broker::Capabilities;
    use pubsub::demo::live::{Control, Live};
    use pubsub::demo::sim::{Change, Node};
    use pubsub::tui::app::{App, View};
    use pubsub::tui::theme::Theme;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use std::time::Duration;

    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let _guard = settings.bind_to_scope();
    for (scenario_name, _) in pubsub::demo::scenario::BUILT_IN {
        for consumers in [3usize, 12] {
            let mut live = Live::new(Scenario::load(scenario_name).unwrap(), 42, None).await.unwrap();
            live.advance(Duration::from_secs(6)).await.unwrap();
            let subs: Vec<String> =
                live.status().await.subscriptions.iter().map(|s| s.name.to_string()).collect();
            let mut k = 0;
            while live.status().await.consumers.len() < consumers {
                let near = Some(Node::Subscription(subs[k % subs.len()].clone()));
                live.control(Control::Change(Change::AddConsumer, near)).await.unwrap();
                k += 1;
            }
            while live.status().await.consumers.len() > consumers {
                live.control(Control::Change(Change::RemoveConsumer, None)).await.unwrap();
            }
            live.advance(Duration::from_secs(1)).await.unwrap();
            let status = live.status().await;
            assert_eq!(status.consumers.len(), consumers, "{scenario_name}");
            let mut app = App::new(
                format!("demo {scenario_name} (in-process)"),
                Capabilities::all(),
                Theme::default(),
                100,
                1 << 20,
            );
            app.view = View::Topology;
            app.note(format!("{:>6.2}s  narration stands here", status.now.as_secs_f64()));
            app.demo = Some(status);
            for (w, h) in [(80u16, 24u16), (120, 40), (200, 60)] {
                let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
                terminal.draw(|f| pubsub::tui::views::draw(f, &app)).unwrap();
                let screen = format!("{:?}", terminal.backend());
                // Every consumer is on screen from 120×40 up.
                if w >= 120 {
                    for c in &app.demo.as_ref().unwrap().consumers {
                        assert!(
                            screen.contains(c.name.as_str()),
                            "{scenario_name} {w}x{h}: {} missing",
                            c.name
                        );
                    }
                }
                insta::assert_snapshot!(
                    format!("flow_{scenario_name}_{consumers}c_{w}x{h}"),
                    terminal.backend()
                );
            }
        }
    }
}

/// WCAG relative luminance of an sRGB colour.
fn luminance(r: u8, g: u8, b: u8) -> f64 {
    let channel = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.039_28 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
    };
    0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
}

/// Every cell of `buffer` (`w`×`h`) has the theme's painted RGB background and, where something is
/// written, an RGB foreground of at least WCAG AA contrast (4.5:1) against it.
fn assert_readable(buffer: &ratatui::buffer::Buffer, w: u16, h: u16, what: &str) {
    use ratatui::style::Color;
    for y in 0..h {
        for x in 0..w {
            let cell = &buffer[(x, y)];
            let at = format!("{what} {w}x{h} at ({x},{y}) {:?}", cell.symbol());
            let Color::Rgb(br, bg, bb) = cell.bg else {
                panic!("{at}: background {:?} is not the theme's RGB", cell.bg)
            };
            if cell.symbol().trim().is_empty() {
                continue;
            }
            let Color::Rgb(fr, fg, fb) = cell.fg else { panic!("{at}: foreground {:?} is not RGB", cell.fg) };
            let (a, b) = (luminance(fr, fg, fb), luminance(br, bg, bb));
            let ratio = (a.max(b) + 0.05) / (a.min(b) + 0.05);
            assert!(ratio >= 4.5, "{at}: contrast {ratio:.2} of {:?} on {:?}", cell.fg, cell.bg);
        }
    }
}

/// The projector theme (`demo --workshop`) must read the same in a bright room and a dark one, whatever
/// the attendees' or the projector laptop's terminal palette: every cell of the flow view, for every
/// built-in scenario, and of the `--compare` view (running and final, 2 and 4 brokers, differing cells
/// highlighted), has the theme's own RGB background painted (never the terminal's default, which a
/// light palette makes white under white text) and an RGB foreground (named colours are remapped by
/// terminal palettes) with at least WCAG AA contrast (4.5:1) against its background.
#[tokio::test]
async fn the_workshop_theme_paints_every_cell_in_rgb_with_readable_contrast() {
    use pubsub::broker::Capabilities;
    use pubsub::demo::live::Live;
    use pubsub::tui::app::{App, View};
    use pubsub::tui::theme::Theme;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use std::time::Duration;

    let theme = Theme::load("high-contrast", None).unwrap();
    for (scenario_name, _) in pubsub::demo::scenario::BUILT_IN {
        let mut live = Live::new(Scenario::load(scenario_name).unwrap(), 42, None).await.unwrap();
        live.advance(Duration::from_secs(6)).await.unwrap();
        let mut app =
            App::new(format!("demo {scenario_name}"), Capabilities::all(), theme.clone(), 100, 1 << 20);
        app.view = View::Topology;
        app.workshop = true;
        app.note("narration stands here".to_string());
        app.demo = Some(live.status().await);
        for (w, h) in [(80u16, 24u16), (140, 40)] {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
            terminal.draw(|f| pubsub::tui::views::draw(f, &app)).unwrap();
            assert_readable(terminal.backend().buffer(), w, h, scenario_name);
        }
    }
    for columns in [2usize, 4] {
        let states = [
            ("compare running", crate::compare_tui::running(columns, theme.clone())),
            ("compare final", crate::compare_tui::finished(columns, theme.clone())),
        ];
        for (what, state) in states {
            for (w, h) in [(80u16, 24u16), (140, 40), (200, 60)] {
                let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
                terminal.draw(|f| pubsub::tui::views::compare::draw(f, &state)).unwrap();
                assert_readable(terminal.backend().buffer(), w, h, &format!("{what} {columns}"));
            }
        }
    }
}

/// The scenarios made for `--compare` also run headless on mem:// in virtual time, to a report that is
/// the same text for the same seed (snapshots/demo_report_NAME.snap), with their lesson visible in it.
#[tokio::test]
async fn compare_scenarios_report_the_same_text_for_the_same_seed() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let _guard = settings.bind_to_scope();
    for scenario in ["offline-subscriber", "ordering-keys", "job-queue", "slow-consumer"] {
        let text = run(scenario).await.0.render();
        assert_eq!(text, run(scenario).await.0.render(), "{scenario}");
        insta::assert_snapshot!(format!("demo_report_{scenario}"), text);
    }
}

#[tokio::test]
async fn offline_subscriber_on_the_engine_keeps_the_window_for_the_phone() {
    let (r, _) = run("offline-subscriber").await;
    let phone = r.checks.iter().find(|c| c.subscription == "phone").unwrap();
    let screen = r.checks.iter().find(|c| c.subscription == "dashboard").unwrap();
    assert_eq!(r.published(), 100, "5/s for 20 s");
    assert_eq!((phone.expected, phone.delivered, phone.lost), (100, 100, 0), "{phone:?}");
    assert_eq!((screen.delivered, screen.lost), (100, 0));
    assert!(phone.max_lag >= std::time::Duration::from_secs(9), "late, not lost: {phone:?}");
    assert!(screen.max_lag < std::time::Duration::from_secs(1), "{screen:?}");
    assert!(r.narrative.iter().any(|l| l.contains("OFFLINE")));
}

#[tokio::test]
async fn ordering_keys_breaks_order_without_per_key_ordering_only() {
    let (r, _) = run("ordering-keys").await;
    let any = r.checks.iter().find(|c| c.subscription == "any-order").unwrap();
    let keyed = r.checks.iter().find(|c| c.subscription == "per-key").unwrap();
    assert!(any.out_of_order > 0, "competing workers finish a key's messages out of order: {any:?}");
    assert_eq!(keyed.out_of_order, 0, "{keyed:?}");
    assert_eq!((any.lost, keyed.lost), (0, 0));
}

#[tokio::test]
async fn job_queue_crash_redelivers_and_loses_nothing_on_the_engine() {
    let (r, _) = run("job-queue").await;
    let c = &r.checks[0];
    assert!(c.redelivered > 0, "the crashed worker's jobs came back: {c:?}");
    assert_eq!(c.lost, 0, "{c:?}");
    assert_eq!(r.double_holds, 0);
}
