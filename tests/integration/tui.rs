//! Snapshots of every TUI view in its meaningful states at 80×24 and 120×40, from fixed data on the
//! manual clock, plus every built-in theme applied to one view.

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use pubsub::broker::{Capabilities, Capability};
use pubsub::engine::{
    AckMode, Clock, FetchOptions, Pattern, PublishRequest, StartPosition, SubscriptionConfig, TopicConfig,
};
use pubsub::tui::action::Action;
use pubsub::tui::app::{App, Composer, View};
use pubsub::tui::theme::{BUILT_IN, Theme};
use pubsub::tui::views;

use crate::support::{engine, name};

/// An app filled from a real engine on a manual clock: topics, a stream, subscriptions with lag,
/// consumers and ack state.
fn fixture(theme: &str) -> App {
    let (e, clock) = engine();
    let mut orders = TopicConfig::new(name("orders"));
    orders.subjects = vec![Pattern::parse("orders.>").unwrap()];
    orders.limits.max_msgs = Some(10_000);
    e.create_topic(orders).unwrap();
    let mut work = SubscriptionConfig::new(name("billing"), name("orders"));
    work.start = StartPosition::All;
    work.max_deliveries = 3;
    work.dead_letter = Some(name("orders-dlq"));
    e.create_subscription(work).unwrap();
    let mut audit = SubscriptionConfig::new(name("audit"), name("orders"));
    audit.ack = AckMode::None;
    audit.start = StartPosition::All;
    e.create_subscription(audit).unwrap();
    let mut app = App::new(
        "ws://127.0.0.1:7077".into(),
        Capabilities::all(),
        Theme::load(theme, None).unwrap(),
        1000,
        1 << 20,
    );
    for i in 0..40u64 {
        let subject = if i % 3 == 0 { "orders.eu" } else { "orders.us" };
        let body = format!(
            r#"{{"id":{i},"total":{}.50,"status":"{}"}}"#,
            10 + i,
            if i % 2 == 0 { "paid" } else { "open" }
        );
        let req = PublishRequest::new(name(subject), body)
            .with_key(format!("c{}", i % 4))
            .with_header("source", "shop");
        let seq = e.publish(req).unwrap().seq;
        e.publish(PublishRequest::new(name("users.signup"), format!("user-{i}"))).unwrap();
        app.ingest(e.browse(&name("orders"), pubsub::engine::BrowseFrom::Seq(seq), 1).unwrap().remove(0));
        clock.advance(Duration::from_millis(250));
    }
    let opts = FetchOptions { max_msgs: 12, ..FetchOptions::default() };
    let a = e.try_fetch(&name("billing"), "worker-a", &opts).unwrap();
    let b = e.try_fetch(&name("billing"), "worker-b", &FetchOptions { max_msgs: 6, ..opts }).unwrap();
    for d in &a[..8] {
        e.ack(&name("billing"), d.lease.unwrap()).unwrap();
    }
    e.nack(&name("billing"), b[0].lease.unwrap(), Some(Duration::from_secs(5))).unwrap();
    e.try_fetch(&name("audit"), "auditor", &FetchOptions { max_msgs: 40, ..FetchOptions::default() })
        .unwrap();
    clock.advance(Duration::from_secs(2));
    app.now = clock.now();
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.peek = Some(e.peek(&name("billing"), 0, 50).unwrap());
    app.note("$sys.sub.billing.consumer_attached {\"consumer\":\"worker-a\"}".into());
    app.note("connected".into());
    app
}

fn render(app: &App, width: u16, height: u16) -> TestBackend {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| views::draw(f, app)).unwrap();
    terminal.backend().clone()
}

fn snapshot(state: &str, app: &App) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let _guard = settings.bind_to_scope();
    for (w, h) in [(80, 24), (120, 40)] {
        insta::assert_snapshot!(format!("tui_{state}_{w}x{h}"), render(app, w, h));
    }
}

#[test]
fn topics_view() {
    let mut app = fixture("default");
    snapshot("topics", &app);
    app.update(Action::ToggleTree);
    app.update(Action::CycleSort);
    snapshot("topics_tree_by_rate", &app);
}

#[test]
fn topics_view_empty() {
    let app = App::new("mem://".into(), Capabilities::all(), Theme::default(), 10, 1 << 20);
    snapshot("topics_empty", &app);
}

#[test]
fn stream_view_following_paused_and_detail() {
    let mut app = fixture("default");
    app.update(Action::SetView(View::Stream));
    snapshot("stream_following", &app);
    app.update(Action::TogglePause);
    for d in 0..3 {
        let mut m = app.stream.entry(d).unwrap().message.clone();
        m.seq += 100;
        app.ingest(m);
    }
    app.update(Action::Up);
    app.update(Action::Enter);
    snapshot("stream_paused_detail_json", &app);
    app.update(Action::CyclePayload);
    app.update(Action::CyclePayload);
    snapshot("stream_detail_hex", &app);
}

#[test]
fn subscriptions_view_with_consumers_and_ack_state() {
    let mut app = fixture("default");
    app.update(Action::SetView(View::Subscriptions));
    app.update(Action::Down);
    snapshot("subscriptions_consumers", &app);
    app.update(Action::ToggleAckState);
    snapshot("subscriptions_ack_state", &app);
}

#[test]
fn subscriptions_view_on_a_broker_without_lag() {
    let mut app = fixture("default");
    app.caps = Capabilities::of(&[Capability::Patterns]);
    app.update(Action::SetView(View::Subscriptions));
    snapshot("subscriptions_unavailable", &app);
}

#[test]
fn events_help_composer_and_prompt() {
    let mut app = fixture("default");
    app.update(Action::SetView(View::Log));
    snapshot("events", &app);
    app.update(Action::SetView(View::Topics));
    app.update(Action::Help);
    snapshot("help", &app);
    app.help = false;
    app.composer = Some(Composer {
        topic: "orders.eu".into(),
        key: "c1".into(),
        headers: "source=tui".into(),
        payload: "{\n  \"id\": 99\n}".into(),
        field: 3,
        error: None,
    });
    snapshot("composer", &app);
    app.composer = None;
    app.update(Action::SetView(View::Subscriptions));
    app.update(Action::SeekPrompt);
    app.key(crossterm::event::KeyEvent::new(
        crossterm::event::KeyCode::Char('5'),
        crossterm::event::KeyModifiers::NONE,
    ));
    snapshot("seek_prompt", &app);
}

#[test]
fn every_built_in_theme_renders() {
    for (theme, _) in BUILT_IN {
        let mut app = fixture(theme);
        app.update(Action::SetView(View::Subscriptions));
        let backend = render(&app, 100, 30);
        let text = format!("{backend:?}");
        assert!(text.contains("billing"), "{theme}");
    }
}

#[test]
fn topics_view_on_mqtt_builds_a_slash_tree_from_the_stream() {
    // MQTT cannot list topics: the view counts what the stream shows and splits names on '/'.
    let caps = Capabilities::of(&[Capability::Ack, Capability::Patterns, Capability::Persistence]);
    let mut app = App::new("mqtt://127.0.0.1:1883".into(), caps, Theme::default(), 100, 1 << 20);
    let (e, clock) = engine();
    for (i, subject) in ["home/kitchen/temp", "home/kitchen/humidity", "home/hall/temp", "home/kitchen/temp"]
        .iter()
        .enumerate()
    {
        e.publish(PublishRequest::new(name(subject), format!("{}", 20 + i))).unwrap();
        let topic = name(subject);
        app.ingest(e.browse(&topic, pubsub::engine::BrowseFrom::Seq(0), 10).unwrap().remove(0));
        clock.advance(Duration::from_millis(100));
    }
    app.now = clock.now();
    app.stats(Some(Vec::new()), None);
    assert_eq!(app.topics.len(), 3);
    app.update(Action::ToggleTree);
    snapshot("topics_mqtt_tree", &app);
}

#[test]
fn topics_view_on_rabbitmq_builds_a_dot_tree_from_the_stream_when_listing_fails() {
    // RabbitMQ without its management API lists nothing: after the first failed listing the view counts
    // what the stream shows and splits routing keys on '.', the words of a topic exchange.
    let caps = Capabilities::of(&[Capability::Ack, Capability::Patterns, Capability::TopicAdmin]);
    let mut app =
        App::new("amqp://guest:***@127.0.0.1:5672/%2f".into(), caps, Theme::default(), 100, 1 << 20);
    app.stats(None, None);
    let (e, clock) = engine();
    for (i, subject) in
        ["orders.eu.paid", "orders.eu.new", "orders.us.new", "orders.eu.paid"].iter().enumerate()
    {
        e.publish(PublishRequest::new(name(subject), format!("{}", 20 + i))).unwrap();
        let topic = name(subject);
        app.ingest(e.browse(&topic, pubsub::engine::BrowseFrom::Seq(0), 10).unwrap().remove(0));
        clock.advance(Duration::from_millis(100));
    }
    app.now = clock.now();
    app.stats(None, None);
    assert_eq!(app.topics.len(), 3);
    assert_eq!(app.level_separator(), '.');
    app.update(Action::ToggleTree);
    snapshot("topics_amqp_tree", &app);
}

/// The subscriptions view of an app that has read `e`'s topics and subscriptions once.
fn subscriptions_view_of(e: &pubsub::engine::Engine) -> App {
    let mut app = App::new(
        "ws://127.0.0.1:7077".into(),
        Capabilities::all(),
        Theme::load("default", None).unwrap(),
        1000,
        1 << 20,
    );
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.update(Action::SetView(View::Subscriptions));
    app
}

#[test]
fn a_subscription_without_consumers_is_blocked_by_no_consumers_in_words() {
    // Issue 19 point 11: the detail pane said "blocked by NoConsumers" where the CLI says "no consumers".
    let (e, _) = engine();
    let mut idle = SubscriptionConfig::new(name("idle"), name("jobs"));
    idle.start = StartPosition::All;
    e.publish(PublishRequest::new(name("jobs"), "waiting")).unwrap();
    e.create_subscription(idle).unwrap();
    let app = subscriptions_view_of(&e);
    let screen = render(&app, 120, 40).to_string();
    assert!(screen.contains("blocked by no consumers"), "{screen}");
}

#[test]
fn subscriptions_view_shows_a_push_subscriptions_endpoint_and_pusher_figures() {
    let (e, _) = engine();
    let mut hook = SubscriptionConfig::new(name("hooks"), name("orders"));
    hook.push = Some(pubsub::model::PushConfig::new("http://127.0.0.1:8080/orders"));
    e.create_subscription(hook).unwrap();
    // What a pusher would have written: two successes, then a 500.
    let status = e.push_status(&name("hooks"));
    for _ in 0..2 {
        status.started();
        status.succeeded(204);
    }
    status.started();
    status.failed(Some(500), "HTTP 500".into());
    status.set_slowdown(100);
    let app = subscriptions_view_of(&e);
    let screen = render(&app, 120, 40).to_string();
    assert!(screen.contains("POST http://127.0.0.1:8080/orders"), "{screen}");
    assert!(screen.contains("attempts 3 (ok 2, failed 1), last status 500"), "{screen}");
    snapshot("subscriptions_push", &app);
}

#[test]
fn at_60_columns_the_subscriptions_table_keeps_name_and_topic() {
    // Issue 19 point 11: at 60 columns the fixed columns took every cell and NAME and TOPIC vanished.
    let mut app = fixture("default");
    app.update(Action::SetView(View::Subscriptions));
    let screen = render(&app, 60, 20).to_string();
    let header = screen.lines().find(|l| l.contains("BACKLOG")).unwrap_or_default();
    assert!(header.contains("NAME") && header.contains("TOPIC"), "{screen}");
    assert!(
        screen.lines().any(|l| l.contains("billing") && l.contains("orders") && !l.contains("consumers")),
        "{screen}"
    );
    snapshot_at("subscriptions_60_columns", &app, 60, 20);
}

#[test]
fn a_binary_payload_shows_as_hex_in_pretty_mode() {
    // Issue 19 point 11: pretty mode printed binary payloads through a lossy UTF-8 decode.
    let (e, _) = engine();
    let mut app = App::new("ws://127.0.0.1:7077".into(), Capabilities::all(), Theme::default(), 100, 1 << 20);
    let payload = vec![0x00u8, 0x9f, 0x92, 0x96, 0xff, b'h', b'i', 0x1b, b'[', b'2', b'J'];
    e.publish(PublishRequest::new(name("blobs"), payload)).unwrap();
    app.ingest(e.browse(&name("blobs"), pubsub::engine::BrowseFrom::Seq(0), 1).unwrap().remove(0));
    app.update(Action::SetView(View::Stream));
    app.update(Action::Enter);
    let screen = render(&app, 80, 24).to_string();
    assert!(screen.contains("00 9f 92 96 ff 68 69 1b 5b 32 4a"), "{screen}");
    assert!(screen.contains("binary"), "{screen}");
    assert!(!screen.contains('\u{fffd}'), "{screen}");
    snapshot("stream_binary_pretty", &app);
}

#[test]
fn the_tree_view_has_a_row_for_every_parent_level() {
    // Issue 19 point 11: `grp.x` was drawn as a child of the topic above it (`alpha`).
    let (e, _) = engine();
    for subject in ["alpha", "grp.x", "grp.y", "home.kitchen.temp", "home.hall.temp"] {
        e.publish(PublishRequest::new(name(subject), "1")).unwrap();
    }
    let mut app = App::new("ws://127.0.0.1:7077".into(), Capabilities::all(), Theme::default(), 100, 1 << 20);
    app.stats(Some(e.topics()), None);
    app.update(Action::ToggleTree);
    let labels: Vec<String> =
        app.topic_rows().iter().map(|r| format!("{}{}", "  ".repeat(r.depth), r.label)).collect();
    assert_eq!(
        labels,
        ["alpha", "grp", "  x", "  y", "home", "  hall", "    temp", "  kitchen", "    temp"],
        "parents come before their children, each level once"
    );
    let parents: Vec<bool> = app.topic_rows().iter().map(|r| r.topic.is_none()).collect();
    assert_eq!(parents, [false, true, false, false, true, true, false, true, false]);
    // A parent row opens the stream of everything under it.
    app.update(Action::Down);
    app.update(Action::Enter);
    assert_eq!(app.view, View::Stream);
    assert_eq!(app.stream.filter.text, "glob:grp.*");
    snapshot("topics_tree_parents", &app_with_tree(&e));
}

fn app_with_tree(e: &pubsub::engine::Engine) -> App {
    let mut app = App::new("ws://127.0.0.1:7077".into(), Capabilities::all(), Theme::default(), 100, 1 << 20);
    app.stats(Some(e.topics()), None);
    app.update(Action::ToggleTree);
    app
}

fn snapshot_at(state: &str, app: &App, w: u16, h: u16) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let _guard = settings.bind_to_scope();
    insta::assert_snapshot!(format!("tui_{state}_{w}x{h}"), render(app, w, h));
}

/// A Kafka-like broker (issue 23): a topic of three partitions, a group whose two members own them, and
/// messages from every partition. Every view shows the partitions: a PARTS column, `#P:SEQ` in the stream,
/// the group's partitions with owner and lag bars, and the topology with what each member holds.
#[test]
fn views_of_a_broker_with_partitions() {
    use pubsub::model::{
        ConsumerInfo, Message, Name, PartitionInfo, PartitionLag, SubscriptionInfo, TopicInfo,
    };
    let caps = pubsub::broker::kafka::CAPS;
    let mut app = App::new("kafka://127.0.0.1:9092".into(), caps, Theme::default(), 100, 1 << 20);
    app.now = pubsub::model::Timestamp::from_micros(1_780_000_000_000_000);
    let orders = name("orders");
    let heads = [(0u32, 41u64), (1, 17), (2, 30)];
    let mut topic = TopicInfo::external(orders.clone(), 88, Some(8800));
    topic.partitions = 3;
    topic.head_seq = 41;
    topic.partition_info = heads
        .iter()
        .map(|&(partition, head)| PartitionInfo {
            partition,
            first_seq: 1,
            head_seq: head,
            messages: head,
            bytes: Some(head * 100),
            leader: Some("1".into()),
        })
        .collect();
    let mut group = SubscriptionInfo::external(name("billing"), orders.clone());
    let owners = ["billing-a", "billing-b", "billing-a"];
    let floors = [41u64, 5, 22];
    group.partitions = heads
        .iter()
        .zip(owners.iter().zip(floors))
        .map(|(&(partition, head), (owner, floor))| PartitionLag {
            partition,
            ack_floor: floor,
            head_seq: head,
            lag: head - floor,
            owner: Some((*owner).to_string()),
        })
        .collect();
    group.offset_lag = group.partitions.iter().map(|p| p.lag).sum();
    group.backlog = group.offset_lag;
    group.pending = group.offset_lag;
    group.head_seq = 41;
    group.consumers = vec![ConsumerInfo::external("billing-a"), ConsumerInfo::external("billing-b")];
    app.stats(Some(vec![topic]), Some(vec![group]));
    for (i, (partition, seq)) in [(0u32, 40u64), (2, 29), (1, 16), (0, 41), (2, 30)].into_iter().enumerate() {
        let at = pubsub::model::Timestamp::from_micros(1_780_000_000_000_000 + i as i64 * 250_000);
        let body = bytes::Bytes::from(format!("order {i}"));
        app.ingest(Message::new(
            orders.clone(),
            partition,
            seq,
            at,
            Name::new("orders").unwrap(),
            None,
            body,
        ));
    }
    snapshot("partitions_topics", &app);
    app.update(Action::SetView(View::Stream));
    snapshot("partitions_stream", &app);
    app.update(Action::SetView(View::Subscriptions));
    snapshot("partitions_subscriptions", &app);
    app.update(Action::SetView(View::Topology));
    snapshot("partitions_topology", &app);
}

/// The local engine with a topic of four partitions (issue 24): the subscriptions view shows the lag
/// of each partition (no owner: the subscription is shared) next to the total, from real engine data.
#[test]
fn engine_subscription_over_partitions_shows_lag_per_partition() {
    let (e, clock) = engine();
    let mut orders = TopicConfig::new(name("orders"));
    orders.partitions = 4;
    e.create_topic(orders).unwrap();
    let mut billing = SubscriptionConfig::new(name("billing"), name("orders"));
    billing.start = StartPosition::All;
    e.create_subscription(billing).unwrap();
    for i in 0..40u64 {
        let req = PublishRequest::new(name("orders"), format!("order {i}")).with_key(format!("customer-{i}"));
        e.publish(req).unwrap();
        clock.advance(Duration::from_millis(100));
    }
    // Settle everything of partitions 0 and 1 and half of partition 2.
    let all =
        e.try_fetch(&name("billing"), "worker", &FetchOptions { max_msgs: 100, ..FetchOptions::default() });
    let all = all.unwrap();
    let mut half = 0;
    for d in &all {
        let p = d.message.partition;
        if p < 2 || (p == 2 && half < 3) {
            half += u32::from(p == 2);
            e.ack(&name("billing"), d.lease.unwrap()).unwrap();
        }
    }
    clock.advance(Duration::from_secs(1));
    let mut app = App::new("local".into(), Capabilities::all(), Theme::default(), 100, 1 << 20);
    app.now = clock.now();
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.update(Action::SetView(View::Subscriptions));
    snapshot("engine_partitions_subscriptions", &app);
}

/// The local engine's assignment modes (issue 24, point 3): a PartitionExclusive subscription over four
/// partitions with three consumers shows which consumer owns which partitions; a SingleActive one shows
/// the active consumer and the others standing by.
#[test]
fn engine_assignment_shows_partition_owners_and_standby_consumers() {
    let (e, clock) = engine();
    let mut orders = TopicConfig::new(name("orders"));
    orders.partitions = 4;
    e.create_topic(orders).unwrap();
    for (sub, assignment) in [
        ("billing", pubsub::engine::Assignment::PartitionExclusive),
        ("ledger", pubsub::engine::Assignment::SingleActive),
    ] {
        let mut config = SubscriptionConfig::new(name(sub), name("orders"));
        config.start = StartPosition::All;
        config.assignment = assignment;
        e.create_subscription(config).unwrap();
    }
    let opts = FetchOptions { max_msgs: 0, ..FetchOptions::default() };
    for consumer in ["worker-a", "worker-b", "worker-c"] {
        for sub in ["billing", "ledger"] {
            e.try_fetch(&name(sub), consumer, &opts).unwrap();
        }
    }
    for i in 0..40u64 {
        let req = PublishRequest::new(name("orders"), format!("order {i}")).with_key(format!("customer-{i}"));
        e.publish(req).unwrap();
        clock.advance(Duration::from_millis(100));
    }
    let some = FetchOptions { max_msgs: 4, ..FetchOptions::default() };
    for consumer in ["worker-a", "worker-b", "worker-c"] {
        for sub in ["billing", "ledger"] {
            for d in e.try_fetch(&name(sub), consumer, &some).unwrap().into_iter().take(3) {
                e.ack(&name(sub), d.lease.unwrap()).unwrap();
            }
        }
    }
    clock.advance(Duration::from_secs(1));
    let mut app = App::new("local".into(), Capabilities::all(), Theme::default(), 100, 1 << 20);
    app.now = clock.now();
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.stats(Some(e.topics()), Some(e.subscriptions(None)));
    app.update(Action::SetView(View::Subscriptions));
    snapshot("engine_partition_owners_subscriptions", &app);
    app.update(Action::Down);
    snapshot("engine_single_active_subscriptions", &app);
}
