//! TUI benchmarks: how fast the app absorbs messages (ingest is decoupled from drawing, so this is the
//! rate the TUI process keeps up with) and how long one frame takes at 200×60.
//! Run with `cargo bench --bench tui`.

#![expect(
    clippy::print_stdout,
    clippy::panic,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::time::Instant;

use bytes::Bytes;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use pubsub::broker::Capabilities;
use pubsub::engine::{Message, MessageExtra, Name, Timestamp};
use pubsub::tui::action::Action;
use pubsub::tui::app::{App, View};
use pubsub::tui::theme::Theme;
use pubsub::tui::views;

fn main() {
    let names: Vec<Name> =
        (0..50).map(|i| Name::new(&format!("orders.region{i}")).unwrap_or_else(|e| panic!("{e}"))).collect();
    let topic = Name::new("orders").unwrap_or_else(|e| panic!("{e}"));
    let messages: Vec<Message> = (0..1_000_000u64)
        .map(|i| {
            let payload = format!(r#"{{"id":{i},"total":{}.5,"status":"paid"}}"#, i % 1000);
            let extra =
                MessageExtra::pack(Some(Bytes::from(format!("c{}", i % 64))), None, Default::default());
            Message::new(
                topic.clone(),
                0,
                i + 1,
                Timestamp::from_micros(i as i64),
                names[(i % 50) as usize].clone(),
                extra,
                Bytes::from(payload),
            )
        })
        .collect();
    let cap_bytes = 64 << 20;
    let mut app = App::new("mem://".into(), Capabilities::all(), Theme::default(), 10_000, cap_bytes);
    let started = Instant::now();
    for m in messages {
        app.ingest(m);
    }
    let elapsed = started.elapsed();
    println!(
        "ingest: {:.0} msgs/s into the stream ring (1,000,000 messages; kept {}, {} KiB of a {} KiB cap, {} dropped from view)",
        1_000_000.0 / elapsed.as_secs_f64(),
        app.stream.ring.len(),
        app.stream.ring.bytes() / 1024,
        cap_bytes / 1024,
        app.stream.ring.dropped
    );
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap_or_else(|e| panic!("{e}"));
    for (label, view) in
        [("stream", View::Stream), ("topics", View::Topics), ("subscriptions", View::Subscriptions)]
    {
        app.update(Action::SetView(view));
        let frames = 300;
        let started = Instant::now();
        for _ in 0..frames {
            terminal.draw(|f| views::draw(f, &app)).unwrap_or_else(|e| panic!("{e}"));
        }
        println!(
            "frame at 200x60, {label} view: {:.0} µs",
            started.elapsed().as_micros() as f64 / f64::from(frames)
        );
    }
    app.update(Action::SetView(View::Stream));
    app.update(Action::Enter);
    let started = Instant::now();
    for _ in 0..300 {
        terminal.draw(|f| views::draw(f, &app)).unwrap_or_else(|e| panic!("{e}"));
    }
    println!("frame at 200x60, stream + JSON detail: {:.0} µs", started.elapsed().as_micros() as f64 / 300.0);
}
