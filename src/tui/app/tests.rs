//! State transitions of the TUI without rendering: keys in, state and effects out.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::*;
use crate::model::{Discard, Limits, TopicCounters};

fn app() -> App {
    let mut app = App::new("mem://".into(), Capabilities::all(), Theme::default(), 100, 1 << 20);
    app.now = Timestamp::from_micros(1_780_000_000_000_000);
    app
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn press(app: &mut App, keys: &str) -> Vec<Effect> {
    keys.chars().flat_map(|c| app.key(key(c))).collect()
}

fn topic(name: &str, messages: u64, rate: f64) -> TopicInfo {
    TopicInfo {
        name: Name::new(name).unwrap(),
        subjects: vec![name.to_string()],
        partitions: 1,
        first_seq: 1,
        head_seq: messages,
        messages,
        bytes: Some(messages * 10),
        last_publish: None,
        limits: Limits::default(),
        discard: Discard::Old,
        retention: Default::default(),
        subscriptions: 0,
        counters: TopicCounters::default(),
        publish_rate: Some(rate),
        publish_series: vec![],
        created: None,
        partition_info: vec![],
        storage: None,
        durability: None,
    }
}

fn message(subject: &str, seq: u64) -> Message {
    let name = Name::new(subject).unwrap();
    Message::new(name.clone(), 0, seq, Timestamp::ZERO, name, None, bytes::Bytes::from(format!("m{seq}")))
}

#[test]
fn number_keys_and_tab_switch_views() {
    let mut a = app();
    press(&mut a, "2");
    assert_eq!(a.view, View::Stream);
    a.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(a.view, View::Subscriptions);
    press(&mut a, "q");
    assert_eq!(a.view, View::Topics, "q goes back before it quits");
    press(&mut a, "q");
    assert!(a.quit);
}

#[test]
fn ctrl_c_quits_even_while_typing() {
    let mut a = app();
    press(&mut a, "/ab");
    assert!(a.prompt.is_some());
    a.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(a.quit);
}

#[test]
fn ctrl_u_clears_a_prompt_instead_of_typing_u() {
    // Issue 19 point 11: Ctrl+U typed `u` in prompts.
    let mut a = app();
    press(&mut a, "/ord");
    a.key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    assert_eq!(a.prompt.as_ref().map(|(_, text)| text.as_str()), Some(""));
    a.key(KeyEvent::new(KeyCode::Char('w'), KeyModifiers::CONTROL));
    press(&mut a, "us");
    assert_eq!(a.prompt.as_ref().map(|(_, text)| text.as_str()), Some("us"));
}

#[test]
fn topic_filter_applies_while_typing_and_sort_cycles() {
    let mut a = app();
    a.stats(Some(vec![topic("orders", 5, 1.0), topic("users", 50, 9.0), topic("orders.eu", 7, 3.0)]), None);
    press(&mut a, "/ord");
    assert_eq!(a.visible_topics().len(), 2);
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(a.prompt.is_none());
    assert_eq!(a.topic_filter, "ord");
    press(&mut a, "s");
    assert_eq!(a.topic_sort, TopicSort::Rate);
    assert_eq!(a.visible_topics()[0].name.as_str(), "orders.eu");
}

#[test]
fn enter_on_a_topic_opens_its_stream_and_esc_widens_it_again() {
    let mut a = app();
    a.stats(Some(vec![topic("a", 1, 0.0), topic("b", 1, 0.0)]), None);
    for seq in 1..=3 {
        a.ingest(message("a", seq));
        a.ingest(message("b", seq));
    }
    press(&mut a, "j");
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!((a.view, a.stream.shown_len()), (View::Stream, 3));
    assert!(a.stream.selected_entry().is_some_and(|e| e.message.topic.as_str() == "b"));
    a.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert_eq!(a.stream.shown_len(), 6);
}

#[test]
fn space_pauses_the_stream_and_counts_what_arrives() {
    let mut a = app();
    press(&mut a, "2");
    a.ingest(message("t", 1));
    press(&mut a, " ");
    a.ingest(message("t", 2));
    a.ingest(message("t", 3));
    assert_eq!((a.stream.shown_len(), a.stream.new_while_paused()), (1, 2));
    press(&mut a, " ");
    assert_eq!(a.stream.shown_len(), 3);
}

#[test]
fn composer_publishes_what_was_typed() {
    let mut a = app();
    press(&mut a, "P");
    assert!(a.composer.is_some());
    press(&mut a, "jobs");
    a.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    press(&mut a, "k1");
    a.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    press(&mut a, "a=b");
    a.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    press(&mut a, "line1");
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    press(&mut a, "line2");
    let effects = a.key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL));
    let [Effect::Publish(req)] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!((req.subject.as_str(), req.payload.as_ref()), ("jobs", &b"line1\nline2"[..]));
    assert_eq!(req.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(req.headers.get("a").map(String::as_str), Some("b"));
    assert!(a.composer.is_none());
}

#[test]
fn composer_refuses_a_bad_topic_and_stays_open() {
    let mut a = app();
    press(&mut a, "P");
    press(&mut a, "bad..topic");
    let effects = a.key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL));
    assert!(effects.is_empty());
    assert!(
        a.composer.as_ref().is_some_and(|c| c.error.as_deref().is_some_and(|e| e.contains("bad..topic")))
    );
}

#[test]
fn palette_commands_switch_views_and_ask_for_effects() {
    let mut a = app();
    press(&mut a, ":subs");
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(a.view, View::Subscriptions);
    assert_eq!(a.command("theme light"), vec![Effect::Theme("light".into())]);
    assert_eq!(a.command("seek s start"), vec![Effect::Seek(Name::new("s").unwrap(), SeekTarget::Start)]);
    a.command("teleport");
    assert!(a.flash.as_ref().is_some_and(|(_, t)| t.contains("unknown command")));
}

#[test]
fn field_filter_narrows_the_stream() {
    let mut a = app();
    press(&mut a, "2");
    for seq in 1..=4 {
        a.ingest(message(if seq % 2 == 0 { "x.even" } else { "x.odd" }, seq));
    }
    press(&mut a, "\\x.even");
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(a.stream.shown_len(), 2);
}

#[test]
fn help_opens_on_question_mark_and_any_key_closes_it() {
    let mut a = app();
    press(&mut a, "?");
    assert!(a.help);
    press(&mut a, "2");
    assert!(!a.help);
    assert_eq!(a.view, View::Topics, "the closing key is not also acted on");
}

#[tokio::test]
async fn every_demo_key_sends_its_control_aimed_at_the_selected_node() {
    use crate::demo::live::{Control, Live};
    use crate::demo::sim::{Change, Node};
    let live = Live::new(crate::demo::Scenario::load("fan-out").unwrap(), 42, None).await.unwrap();
    let mut app = app();
    app.view = View::Topology;
    // Without a demo the keys say where they work, and send nothing.
    assert!(press(&mut app, "x").is_empty());
    assert!(app.flash.as_ref().is_some_and(|(_, t)| t.contains("pubsub demo")));
    app.demo = Some(live.status().await);
    // Nodes: shop, orders, its subscriptions by name (analytics, billing, shipping), then the consumers.
    press(&mut app, "jjj");
    let near = Some(Node::Subscription("billing".into()));
    let cases: &[(char, Control)] = &[
        (' ', Control::Pause),
        ('-', Control::Slower),
        ('+', Control::Faster),
        ('=', Control::Faster),
        ('.', Control::Step),
        ('r', Control::Restart),
        ('w', Control::Change(Change::AddPublisher, near.clone())),
        ('W', Control::Change(Change::RemovePublisher, near.clone())),
        ('s', Control::Change(Change::AddSubscription, near.clone())),
        ('S', Control::Change(Change::RemoveSubscription, near.clone())),
        ('c', Control::Change(Change::AddConsumer, near.clone())),
        ('C', Control::Change(Change::RemoveConsumer, near.clone())),
        (']', Control::Change(Change::RateUp, near.clone())),
        ('[', Control::Change(Change::RateDown, near.clone())),
        ('}', Control::Change(Change::SlowDown, near.clone())),
        ('{', Control::Change(Change::SpeedUp, near.clone())),
        ('x', Control::Change(Change::Crash, near.clone())),
        ('f', Control::Change(Change::Fail, near.clone())),
        ('b', Control::Change(Change::Burst, near.clone())),
        ('z', Control::Change(Change::Rewind, near.clone())),
    ];
    for (k, control) in cases {
        assert_eq!(press(&mut app, &k.to_string()), vec![Effect::Demo(control.clone())], "key {k:?}");
    }
    // Every control is listed in the help (and the pairs in the footer).
    let help = app.keymap.help();
    let demo = help.iter().find(|(title, _)| title.starts_with("Live demo")).unwrap();
    for (k, _) in cases {
        assert!(demo.1.iter().any(|(key, _)| *key == k.to_string().replace(' ', "Space")), "{k:?} in help");
    }
    press(&mut app, "G");
    assert_eq!(
        crate::tui::views::topology::selected_node(&app),
        Some(Node::Consumer("shipping-svc".into())),
        "the last node is the last consumer"
    );
}
