//! The TUI's edge: terminal setup and restore (also on panic and SIGTERM), input on its own thread,
//! broker tasks for ingest, events and polling, and a render loop throttled to 30 frames per second.
//! Ingest never waits for rendering: messages are drained into the app's bounded ring between frames.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use crossterm::event::{DisableMouseCapture, EnableMouseCapture, Event};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::app::{App, Effect, Link, View};
use super::theme::Theme;
use super::views;
use crate::broker::{Capability, ConnectionEvent, SharedBroker, StreamItem, SubscribeRequest};
use crate::model::{Clock, Name, Pattern, PeekReport, SubscriptionInfo, SystemClock, TopicInfo};
use crate::protocol::Envelope;

/// How the TUI starts.
#[derive(Debug, Clone)]
pub struct TuiOptions {
    /// Theme name.
    pub theme: String,
    /// Where user themes live (`<config>/themes/NAME.toml`).
    pub config_dir: Option<PathBuf>,
    /// Most messages kept in the stream buffer.
    pub stream_count: usize,
    /// Most bytes kept in the stream buffer.
    pub stream_bytes: usize,
    /// Capture the mouse at start.
    pub mouse: bool,
    /// Workshop mode: projector-friendly spacing, engine-internal events hidden.
    pub workshop: bool,
    /// On quit, write the last view as text to this file.
    pub snapshot: Option<PathBuf>,
}

/// What a demo hands the TUI: its publishers (for the topology) and its narration.
#[derive(Debug, Default)]
pub struct DemoFeed {
    /// Simulated publishers and their subjects.
    pub publishers: Vec<(String, Vec<String>)>,
    /// Narrated events ("#42 redelivered to worker-b").
    pub narration: Option<mpsc::Receiver<String>>,
    /// Where live controls go (a demo on its own engine).
    pub controls: Option<mpsc::Sender<crate::demo::live::Control>>,
    /// The demo's state as it runs.
    pub status: Option<tokio::sync::watch::Receiver<crate::demo::live::DemoStatus>>,
}

/// Errors that end the TUI.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// The theme could not be loaded.
    #[error("{0}")]
    Theme(String),
    /// The broker refused to stream.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
}

/// Data arriving from broker tasks.
enum Feed {
    Items(Vec<StreamItem>),
    Event(String),
    Stats(Option<Vec<TopicInfo>>, Option<Vec<SubscriptionInfo>>, Option<PeekReport>),
    /// A change of the link, with the broker's URL after it (a reconnect may have found the local
    /// daemon on another port).
    Link(ConnectionEvent, String),
    Flash(String),
    Narration(String),
}

/// Runs the TUI until the user quits.
pub async fn run(broker: SharedBroker, opts: TuiOptions) -> Result<(), TuiError> {
    run_with_view(broker, opts, View::Topics, DemoFeed::default()).await
}

/// Runs the TUI starting on `view`; `publishers` names simulated publishers (demos) for the topology.
pub async fn run_with_view(
    broker: SharedBroker,
    opts: TuiOptions,
    view: View,
    demo: DemoFeed,
) -> Result<(), TuiError> {
    let theme = Theme::load(&opts.theme, opts.config_dir.as_deref()).map_err(TuiError::Theme)?;
    let mut app = App::new(broker.url(), broker.capabilities(), theme, opts.stream_count, opts.stream_bytes);
    app.mouse = opts.mouse;
    app.view = view;
    app.keymap = super::keymap::Keymap::load(opts.config_dir.as_deref()).map_err(TuiError::Theme)?;
    app.publishers = demo.publishers;
    app.workshop = opts.workshop;
    app.now = SystemClock.now();
    let (feed_tx, mut feed_rx) = mpsc::channel::<Feed>(1024);
    spawn_ingest(&broker, &feed_tx).await?;
    spawn_links(&broker, &feed_tx);
    if let Some(mut narration) = demo.narration {
        let feed = feed_tx.clone();
        tokio::spawn(async move {
            while let Some(line) = narration.recv().await {
                if feed.send(Feed::Narration(line)).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut key_rx = spawn_key_reader();

    // ratatui::init puts the terminal in raw mode on the alternate screen and installs a panic hook
    // that restores it; every way out below goes through `restore`.
    let mut terminal = ratatui::init();
    if app.mouse {
        let _ = crossterm::execute!(std::io::stdout(), EnableMouseCapture);
    }
    let live = Live { controls: demo.controls, status: demo.status };
    let result = event_loop(
        &mut terminal,
        &mut app,
        &broker,
        (&feed_tx, &mut feed_rx),
        &mut key_rx,
        opts.config_dir,
        live,
    )
    .await;
    let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
    let size = terminal.size().ok();
    ratatui::restore();
    if let (Some(path), Some(size)) = (&opts.snapshot, size) {
        std::fs::write(path, snapshot_text(&app, size.width, size.height))?;
    }
    result
}

/// Waits for the demo's next state; forever when there is no demo.
async fn demo_changed(
    status: &mut Option<tokio::sync::watch::Receiver<crate::demo::live::DemoStatus>>,
) -> bool {
    match status {
        Some(s) => s.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The channels of a live demo.
struct Live {
    controls: Option<mpsc::Sender<crate::demo::live::Control>>,
    status: Option<tokio::sync::watch::Receiver<crate::demo::live::DemoStatus>>,
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    broker: &SharedBroker,
    (feed_tx, feed_rx): (&mpsc::Sender<Feed>, &mut mpsc::Receiver<Feed>),
    key_rx: &mut mpsc::Receiver<Event>,
    config_dir: Option<PathBuf>,
    mut live: Live,
) -> Result<(), TuiError> {
    let frame = Duration::from_millis(33);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut last_draw = Instant::now() - frame;
    let mut dirty = true;
    // Set while a poll is out, so a slow broker never has several piling up.
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let terminate = first_signal(&[SignalKind::terminate()]);
    tokio::pin!(terminate);
    loop {
        if dirty && last_draw.elapsed() >= frame {
            app.now = SystemClock.now();
            if app.flash.as_ref().is_some_and(|(at, _)| app.now.since(*at) > Duration::from_secs(4)) {
                app.flash = None;
            }
            terminal.draw(|f| views::draw(f, app))?;
            last_draw = Instant::now();
            dirty = false;
        }
        let redraw_at = last_draw + frame;
        tokio::select! {
            () = &mut terminate => break,
            Some(event) = key_rx.recv() => {
                let effects = match event {
                    Event::Key(key) if key.kind != crossterm::event::KeyEventKind::Release => app.key(key),
                    // The wheel scrolls whatever list is shown.
                    Event::Mouse(m) if m.kind == crossterm::event::MouseEventKind::ScrollDown => {
                        app.update(super::action::Action::Down)
                    }
                    Event::Mouse(m) if m.kind == crossterm::event::MouseEventKind::ScrollUp => {
                        app.update(super::action::Action::Up)
                    }
                    _ => Vec::new(),
                };
                perform(app, broker, feed_tx, effects, config_dir.as_deref(), terminal, live.controls.as_ref());
                dirty = true;
            }
            Some(feed) = feed_rx.recv() => {
                absorb(app, feed);
                // Drain what else is waiting so a burst costs one frame, not one per batch.
                for _ in 0..256 {
                    match feed_rx.try_recv() {
                        Ok(feed) => absorb(app, feed),
                        Err(_) => break,
                    }
                }
                dirty = true;
            }
            _ = poll.tick() => {
                if !polling.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    spawn_poll(app, broker, feed_tx, polling.clone());
                }
                dirty = true;
            }
            ok = demo_changed(&mut live.status) => {
                match (ok, &live.status) {
                    (true, Some(s)) => app.demo = Some(s.borrow().clone()),
                    // The demo stopped (its error, if any, is reported when the TUI ends).
                    _ => live.status = None,
                }
                dirty = true;
            }
            () = tokio::time::sleep_until(redraw_at), if dirty => {}
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}

/// Runs the `demo --compare` view until the user quits: `updates_rx` brings the runs' progress, and the
/// pause and stop keys go out on `hold_tx`. Returns the view's last state (with the comparison, when the
/// runs ended before the user quit).
pub async fn run_compare(
    opts: TuiOptions,
    mut state: super::compare::CompareState,
    mut updates_rx: mpsc::Receiver<crate::demo::progress::Update>,
    hold_tx: tokio::sync::watch::Sender<crate::demo::progress::Hold>,
) -> Result<super::compare::CompareState, TuiError> {
    state.theme = Theme::load(&opts.theme, opts.config_dir.as_deref()).map_err(TuiError::Theme)?;
    let mut key_rx = spawn_key_reader();
    let mut terminal = ratatui::init();
    let result = compare_loop(&mut terminal, &mut state, &mut updates_rx, &mut key_rx, &hold_tx).await;
    let size = terminal.size().ok();
    ratatui::restore();
    if let (Some(path), Some(size)) = (&opts.snapshot, size) {
        std::fs::write(path, views::compare::text(&state, size.width, size.height))?;
    }
    result.map(|()| state)
}

async fn compare_loop(
    terminal: &mut ratatui::DefaultTerminal,
    state: &mut super::compare::CompareState,
    updates_rx: &mut mpsc::Receiver<crate::demo::progress::Update>,
    key_rx: &mut mpsc::Receiver<Event>,
    hold_tx: &tokio::sync::watch::Sender<crate::demo::progress::Hold>,
) -> Result<(), TuiError> {
    let frame = Duration::from_millis(33);
    let mut last_draw = Instant::now() - frame;
    let mut dirty = true;
    // SIGTERM, or SIGHUP when the terminal goes away under the view: either ends the view, and the
    // caller then stops the runs, which clean up what they made on the brokers.
    let terminate = first_signal(&[SignalKind::terminate(), SignalKind::hangup()]);
    tokio::pin!(terminate);
    let mut updates_open = true;
    loop {
        if dirty && last_draw.elapsed() >= frame {
            terminal.draw(|f| views::compare::draw(f, state))?;
            last_draw = Instant::now();
            dirty = false;
        }
        let redraw_at = last_draw + frame;
        tokio::select! {
            () = &mut terminate => break,
            Some(event) = key_rx.recv() => {
                if let Event::Key(key) = event
                    && key.kind != crossterm::event::KeyEventKind::Release
                    && let Some(hold) = state.key(key)
                {
                    let _ = hold_tx.send(hold);
                }
                dirty = true;
            }
            update = updates_rx.recv(), if updates_open => {
                match update {
                    Some(update) => state.absorb(update),
                    None => updates_open = false,
                }
                for _ in 0..256 {
                    match updates_rx.try_recv() {
                        Ok(update) => state.absorb(update),
                        Err(_) => break,
                    }
                }
                dirty = true;
            }
            () = tokio::time::sleep_until(redraw_at), if dirty => {}
        }
        if state.quit {
            break;
        }
    }
    Ok(())
}

/// The view as plain text, one line per terminal row (for `--snapshot`).
pub fn snapshot_text(app: &App, width: u16, height: u16) -> String {
    let Ok(mut terminal) = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height));
    if terminal.draw(|f| views::draw(f, app)).is_err() {
        return String::new();
    }
    views::buffer_text(terminal.backend().buffer())
}

/// Reads the terminal's events on a thread of its own (crossterm's read blocks) until the receiver
/// is dropped.
fn spawn_key_reader() -> mpsc::Receiver<Event> {
    let (key_tx, key_rx) = mpsc::channel::<Event>(256);
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if key_tx.blocking_send(event).is_err() {
                return;
            }
        }
    });
    key_rx
}

/// Resolves at the first delivery of any of `kinds`; never, when none of them can be watched. The
/// handlers are installed when this is called.
fn first_signal(kinds: &[SignalKind]) -> impl std::future::Future<Output = ()> + use<> {
    let mut watched: Vec<Signal> = kinds.iter().filter_map(|&kind| signal(kind).ok()).collect();
    async move {
        if watched.is_empty() {
            return std::future::pending().await;
        }
        futures_util::future::select_all(watched.iter_mut().map(|s| Box::pin(s.recv()))).await;
    }
}

fn absorb(app: &mut App, feed: Feed) {
    match feed {
        Feed::Items(items) => {
            for item in items {
                match item {
                    StreamItem::Delivery(d) => app.ingest(d.message),
                    StreamItem::Lagged { skipped } => app.lagged(skipped),
                    StreamItem::Assigned { partitions } => {
                        app.note(format!("assigned partitions {partitions:?}"))
                    }
                    StreamItem::Revoked { partitions } => {
                        app.note(format!("partitions {partitions:?} were revoked"))
                    }
                }
            }
        }
        // Engine-internal events are hidden in workshop mode; the demo's narration says it in words.
        Feed::Event(line) if app.workshop => drop(line),
        Feed::Event(line) => app.note(line),
        Feed::Narration(line) => app.note(line),
        Feed::Stats(topics, subs, peek) => {
            app.stats(topics, subs);
            if peek.is_some() {
                app.peek = peek;
            }
        }
        Feed::Link(event, url) => {
            if event == ConnectionEvent::Reconnected {
                app.broker = url;
            }
            let line = match &event {
                ConnectionEvent::Connected => "connected".to_string(),
                ConnectionEvent::Disconnected { reason } => format!("disconnected: {reason}"),
                ConnectionEvent::Reconnected => "reconnected".to_string(),
                ConnectionEvent::SlowConsumer { dropped } => {
                    format!("the broker dropped {dropped} message(s) for this slow consumer")
                }
                ConnectionEvent::Advisory { text } => text.clone(),
            };
            app.link = match event {
                ConnectionEvent::Disconnected { reason } => Link::Down(reason),
                _ => Link::Up,
            };
            app.note(line);
        }
        Feed::Flash(text) => {
            app.flash = Some((app.now, text.clone()));
            app.note(text);
        }
    }
}

/// Subscribes to everything (the stream) and to engine events (the log).
async fn spawn_ingest(broker: &SharedBroker, tx: &mpsc::Sender<Feed>) -> Result<(), TuiError> {
    let all = Pattern::parse("#").map_err(|e| TuiError::Theme(e.to_string()))?;
    let mut stream = broker.subscribe(SubscribeRequest::live(vec![all])).await?;
    let feed = tx.clone();
    tokio::spawn(async move {
        while let Some(first) = stream.next().await {
            let mut items = Vec::with_capacity(64);
            if let Ok(item) = first {
                items.push(item);
            }
            while items.len() < 1024 {
                match stream.try_next() {
                    Some(Ok(item)) => items.push(item),
                    Some(Err(_)) => {}
                    None => break,
                }
            }
            // A full channel makes this wait; the broker then holds or drops (and reports) upstream.
            if feed.send(Feed::Items(items)).await.is_err() {
                return;
            }
        }
    });
    if let Ok(sys) = Pattern::parse("$sys.>")
        && let Ok(mut events) = broker.subscribe(SubscribeRequest::live(vec![sys])).await
    {
        let feed = tx.clone();
        tokio::spawn(async move {
            while let Some(item) = events.next().await {
                if let Ok(StreamItem::Delivery(d)) = item {
                    let line =
                        format!("{} {}", d.message.subject(), String::from_utf8_lossy(&d.message.payload));
                    if feed.send(Feed::Event(line)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    Ok(())
}

fn spawn_links(broker: &SharedBroker, tx: &mpsc::Sender<Feed>) {
    let mut events = broker.connection_events();
    let feed = tx.clone();
    let broker = broker.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if feed.send(Feed::Link(event, broker.url())).await.is_err() {
                return;
            }
        }
    });
}

/// Polls topics, subscriptions and (when shown) the selected subscription's ack state.
fn spawn_poll(
    app: &App,
    broker: &SharedBroker,
    tx: &mpsc::Sender<Feed>,
    busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let broker = broker.clone();
    let feed = tx.clone();
    let lag = app.caps.has(Capability::Lag);
    let peek_sub: Option<Name> = (app.view == View::Subscriptions && app.show_ack_state)
        .then(|| app.selected_sub().map(|s| s.name.clone()))
        .flatten();
    tokio::spawn(async move {
        let topics = broker.topics().await.ok();
        let subs = if lag { broker.subscriptions(None).await.ok() } else { None };
        let peek = match peek_sub {
            Some(name) => broker.peek(&name, 0, 200).await.ok(),
            None => None,
        };
        let _ = feed.send(Feed::Stats(topics, subs, peek)).await;
        busy.store(false, std::sync::atomic::Ordering::Release);
    });
}

/// Carries out what the app asked for.
fn perform(
    app: &mut App,
    broker: &SharedBroker,
    tx: &mpsc::Sender<Feed>,
    effects: Vec<Effect>,
    config_dir: Option<&std::path::Path>,
    terminal: &mut ratatui::DefaultTerminal,
    controls: Option<&mpsc::Sender<crate::demo::live::Control>>,
) {
    for effect in effects {
        match effect {
            Effect::Publish(req) => {
                let broker = broker.clone();
                let feed = tx.clone();
                tokio::spawn(async move {
                    let text = match broker.publish(req).await {
                        Ok(r) => format!(
                            "published as {}#{}",
                            r.topic.map(|t| t.to_string()).unwrap_or_default(),
                            r.seq
                        ),
                        Err(e) => format!("publish failed: {e}"),
                    };
                    let _ = feed.send(Feed::Flash(text)).await;
                });
            }
            Effect::Seek(sub, target) => {
                let broker = broker.clone();
                let feed = tx.clone();
                tokio::spawn(async move {
                    let text = match broker.seek(&sub, target).await {
                        Ok(next) => format!("{sub} will deliver from seq {next}"),
                        Err(e) => format!("seek failed: {e}"),
                    };
                    let _ = feed.send(Feed::Flash(text)).await;
                });
            }
            Effect::Copy(text) => {
                // OSC 52 asks the terminal (even over SSH) to put the text on the clipboard.
                let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                let backend = terminal.backend_mut();
                let _ = write!(backend, "\x1b]52;c;{encoded}\x07");
                let _ = backend.flush();
            }
            Effect::Export(path) => {
                let path = if path.is_empty() {
                    format!("pubsub-export-{}.ndjson", app.now.as_micros())
                } else {
                    path
                };
                let mut out = String::new();
                for e in app.stream.ring.iter() {
                    out.push_str(
                        &serde_json::to_string(&Envelope::from_message(&e.message, None)).unwrap_or_default(),
                    );
                    out.push('\n');
                }
                let text = match std::fs::write(&path, out) {
                    Ok(()) => format!("exported {} message(s) to {path}", app.stream.ring.len()),
                    Err(e) => format!("export failed: {path}: {e}"),
                };
                app.flash = Some((app.now, text));
            }
            Effect::Theme(name) => match Theme::load(&name, config_dir) {
                Ok(theme) => {
                    app.theme = theme;
                    app.flash = Some((app.now, format!("theme {name}")));
                }
                Err(e) => app.flash = Some((app.now, e)),
            },
            Effect::Demo(control) => {
                let sent = controls.is_some_and(|c| c.try_send(control).is_ok());
                if !sent {
                    app.flash = Some((app.now, "the demo is not taking controls right now".into()));
                }
            }
            Effect::Mouse(on) => {
                let _ = if on {
                    crossterm::execute!(std::io::stdout(), EnableMouseCapture)
                } else {
                    crossterm::execute!(std::io::stdout(), DisableMouseCapture)
                };
            }
        }
    }
}
